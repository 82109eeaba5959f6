//! Shared pieces: the error type, a bounds-checked reader, MAC and network addresses.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// Why a parser gave up. `Incomplete` means more bytes would (or might) have helped: the
/// buffer ended before a length said it would. `Malformed` means the bytes present contradict
/// the format, so more input cannot fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ended early.
    #[error("{what}: incomplete, needs {need} byte(s) but only {have} remain")]
    Incomplete {
        /// The structure being read.
        what: &'static str,
        /// Bytes it needed.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// The input contradicts the format.
    #[error("{what}: malformed: {why}")]
    Malformed {
        /// The structure being read.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
    /// Well-formed, but outside what this crate decodes (for example a link type other than
    /// Ethernet).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> Self {
        Error::Malformed { what, why: why.into() }
    }

    /// Inside a TLV whose length was already checked, running out of bytes means the TLV's own
    /// length was too small for its content: that is malformed, not incomplete.
    pub(crate) fn in_tlv(self) -> Self {
        match self {
            Error::Incomplete { what, need, have } => Error::Malformed {
                what,
                why: format!("value too short: needs {need} more byte(s), {have} left"),
            },
            e => e,
        }
    }

    /// True for [`Error::Incomplete`].
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Error::Incomplete { .. })
    }
}

/// Shorthand used by every parser.
pub type Result<T> = std::result::Result<T, Error>;

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Incomplete { what: self.what, need: n, have: self.remaining() });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

/// A 48-bit MAC address; serializes as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A network address as LLDP and CDP carry them; serializes as its display string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// IPv4.
    Ipv4(Ipv4Addr),
    /// IPv6.
    Ipv6(Ipv6Addr),
    /// An IEEE 802 (MAC) address.
    Mac(MacAddr),
    /// Anything else: the family or protocol as the sender labelled it, and the raw bytes.
    Other {
        /// IANA address family (LLDP) or protocol tag (CDP), as text.
        family: String,
        /// Address bytes in lowercase hex.
        hex: String,
    },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ipv4(a) => a.fmt(f),
            Address::Ipv6(a) => a.fmt(f),
            Address::Mac(a) => a.fmt(f),
            Address::Other { family, hex } => write!(f, "{family}:{hex}"),
        }
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Address {
    /// An address tagged with an IANA address family number (LLDP chassis/port/management
    /// addresses): 1 IPv4, 2 IPv6, 6 IEEE 802. A wrong length for a known family is malformed.
    pub(crate) fn from_iana(family: u8, b: &[u8], what: &'static str) -> Result<Self> {
        match (family, b.len()) {
            (1, 4) => Ok(Address::Ipv4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            (2, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                Ok(Address::Ipv6(Ipv6Addr::from(a)))
            }
            (6, 6) => {
                let mut a = [0u8; 6];
                a.copy_from_slice(b);
                Ok(Address::Mac(MacAddr(a)))
            }
            (1 | 2 | 6, n) => {
                Err(Error::malformed(what, format!("address family {family} with {n} byte(s)")))
            }
            _ => Ok(Address::Other { family: format!("af{family}"), hex: hex(b) }),
        }
    }
}

/// Lowercase hex, no separators.
pub fn hex(b: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Serialize bytes as lowercase hex (for `#[serde(serialize_with)]`).
pub fn serialize_hex<S: Serializer>(b: &[u8; 3], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex(b))
}

/// Text as switches send it: lossy UTF-8 with trailing NUL bytes removed (several vendors
/// NUL-terminate LLDP and CDP strings).
pub fn text(b: &[u8]) -> String {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Names of the bits set in `bits`, from a table of (mask, name).
pub(crate) fn bit_names(bits: u32, table: &[(u32, &'static str)]) -> Vec<&'static str> {
    table.iter().filter(|(m, _)| bits & m != 0).map(|(_, n)| *n).collect()
}
