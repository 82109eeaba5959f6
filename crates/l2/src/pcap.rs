//! Capture files over `&[u8]`: classic pcap (both byte orders, microsecond and nanosecond
//! magic) and pcapng (section header, interface description with `if_tsresol`, enhanced and
//! simple packet blocks; other blocks are skipped).

use serde::Serialize;

use crate::common::{Cursor, Error, Result};

/// Link type of Ethernet.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Which file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Classic pcap with microsecond timestamps.
    PcapMicro,
    /// Classic pcap with nanosecond timestamps.
    PcapNano,
    /// pcapng.
    Pcapng,
}

/// A capture timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: u64,
    /// Nanoseconds.
    pub nanos: u32,
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packet<'a> {
    /// 1-based, as Wireshark numbers frames.
    pub number: u64,
    /// When it was captured.
    pub timestamp: Timestamp,
    /// Link type of its interface.
    pub link_type: u32,
    /// Length on the wire.
    pub orig_len: u32,
    /// The captured bytes.
    #[serde(skip)]
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct Iface {
    link_type: u32,
    snaplen: u32,
    /// Timestamp units per second.
    units: u64,
}

/// Iterates the frames of a capture. After an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    format: Format,
    big_endian: bool,
    ifaces: Vec<Iface>,
    next_number: u64,
    done: bool,
}

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BOM: u32 = 0x1a2b_3c4d;

fn u16_at(b: &[u8], big: bool) -> u16 {
    let a = [b[0], b[1]];
    if big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) }
}

fn u32_at(b: &[u8], big: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if big { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
}

fn incomplete(what: &'static str, need: usize, have: usize) -> Error {
    Error::Incomplete { what, need, have }
}

impl<'a> Reader<'a> {
    /// Read the file header. Errors: too short (incomplete), unknown magic (malformed).
    pub fn new(buf: &'a [u8]) -> Result<Self> {
        let mut c = Cursor::new(buf, "capture file header");
        let magic = c.take(4)?;
        let le = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
        let be = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
        let mut r = Reader {
            buf,
            pos: 0,
            format: Format::Pcapng,
            big_endian: false,
            ifaces: Vec::new(),
            next_number: 1,
            done: false,
        };
        if be == PCAPNG_SHB {
            // The section header block is read like any other block.
            return Ok(r);
        }
        let (format, big) = match (le, be) {
            (MAGIC_US, _) => (Format::PcapMicro, false),
            (_, MAGIC_US) => (Format::PcapMicro, true),
            (MAGIC_NS, _) => (Format::PcapNano, false),
            (_, MAGIC_NS) => (Format::PcapNano, true),
            _ => {
                return Err(Error::malformed(
                    "capture file header",
                    format!("magic {be:#010x} is neither pcap nor pcapng"),
                ));
            }
        };
        let h = c.take(20)?;
        let snaplen = u32_at(&h[12..16], big);
        let link_type = u32_at(&h[16..20], big) & 0x0fff_ffff;
        r.format = format;
        r.big_endian = big;
        r.pos = 24;
        let units = if format == Format::PcapNano { 1_000_000_000 } else { 1_000_000 };
        r.ifaces.push(Iface { link_type, snaplen, units });
        Ok(r)
    }

    /// The file format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Link type of the first interface (classic pcap: the file's), once known.
    pub fn link_type(&self) -> Option<u32> {
        self.ifaces.first().map(|i| i.link_type)
    }

    fn next_pcap(&mut self) -> Result<Option<Packet<'a>>> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest.len() < 16 {
            return Err(incomplete("pcap record header", 16, rest.len()));
        }
        let big = self.big_endian;
        let iface = self.ifaces[0];
        let secs = u32_at(&rest[0..4], big);
        let frac = u32_at(&rest[4..8], big);
        let incl = u32_at(&rest[8..12], big) as usize;
        let orig_len = u32_at(&rest[12..16], big);
        if incl > 0x0400_0000 {
            return Err(Error::malformed("pcap record header", format!("captured length {incl}")));
        }
        if rest.len() - 16 < incl {
            return Err(incomplete("pcap record", incl, rest.len() - 16));
        }
        let nanos = if iface.units == 1_000_000 { u64::from(frac) * 1000 } else { u64::from(frac) };
        let timestamp = Timestamp {
            secs: u64::from(secs) + nanos / 1_000_000_000,
            nanos: (nanos % 1_000_000_000) as u32,
        };
        self.pos += 16 + incl;
        Ok(Some(self.packet(timestamp, iface.link_type, orig_len, &rest[16..16 + incl])))
    }

    fn packet(
        &mut self,
        timestamp: Timestamp,
        link_type: u32,
        orig_len: u32,
        data: &'a [u8],
    ) -> Packet<'a> {
        let number = self.next_number;
        self.next_number += 1;
        Packet { number, timestamp, link_type, orig_len, data }
    }

    fn next_pcapng(&mut self) -> Result<Option<Packet<'a>>> {
        loop {
            let rest = &self.buf[self.pos..];
            if rest.is_empty() {
                return Ok(None);
            }
            if rest.len() < 12 {
                return Err(incomplete("pcapng block header", 12, rest.len()));
            }
            let be_type = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            if be_type == PCAPNG_SHB {
                let bom = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
                self.big_endian = match bom {
                    PCAPNG_BOM => false,
                    x if x.swap_bytes() == PCAPNG_BOM => true,
                    _ => {
                        return Err(Error::malformed(
                            "pcapng section header",
                            "bad byte-order magic",
                        ));
                    }
                };
                self.ifaces.clear();
            }
            let big = self.big_endian;
            let btype = u32_at(&rest[0..4], big);
            let blen = u32_at(&rest[4..8], big) as usize;
            if blen < 12 || !blen.is_multiple_of(4) {
                return Err(Error::malformed("pcapng block", format!("block length {blen}")));
            }
            if rest.len() < blen {
                return Err(incomplete("pcapng block", blen, rest.len()));
            }
            let body = &rest[8..blen - 4];
            self.pos += blen;
            match btype {
                1 => {
                    if body.len() < 8 {
                        return Err(Error::malformed("pcapng interface block", "too short"));
                    }
                    let link_type = u32::from(u16_at(&body[0..2], big));
                    let snaplen = u32_at(&body[4..8], big);
                    let units = if_tsresol(&body[8..], big)?;
                    self.ifaces.push(Iface { link_type, snaplen, units });
                }
                6 => {
                    if body.len() < 20 {
                        return Err(Error::malformed("pcapng enhanced packet block", "too short"));
                    }
                    let id = u32_at(&body[0..4], big) as usize;
                    let iface = *self.ifaces.get(id).ok_or_else(|| {
                        Error::malformed(
                            "pcapng enhanced packet block",
                            format!("no interface {id}"),
                        )
                    })?;
                    let ts = (u64::from(u32_at(&body[4..8], big)) << 32)
                        | u64::from(u32_at(&body[8..12], big));
                    let cap = u32_at(&body[12..16], big) as usize;
                    let orig_len = u32_at(&body[16..20], big);
                    if body.len() - 20 < cap {
                        return Err(Error::malformed(
                            "pcapng enhanced packet block",
                            "captured length exceeds block",
                        ));
                    }
                    let secs = ts / iface.units;
                    let frac = ts % iface.units;
                    let nanos = (u128::from(frac) * 1_000_000_000 / u128::from(iface.units)) as u32;
                    let ts = Timestamp { secs, nanos };
                    return Ok(Some(self.packet(
                        ts,
                        iface.link_type,
                        orig_len,
                        &body[20..20 + cap],
                    )));
                }
                3 => {
                    if body.len() < 4 {
                        return Err(Error::malformed("pcapng simple packet block", "too short"));
                    }
                    let iface = *self.ifaces.first().ok_or_else(|| {
                        Error::malformed("pcapng simple packet block", "no interface")
                    })?;
                    let orig_len = u32_at(&body[0..4], big);
                    let mut cap = (orig_len as usize).min(body.len() - 4);
                    if iface.snaplen != 0 {
                        cap = cap.min(iface.snaplen as usize);
                    }
                    let ts = Timestamp { secs: 0, nanos: 0 };
                    return Ok(Some(self.packet(ts, iface.link_type, orig_len, &body[4..4 + cap])));
                }
                _ => {}
            }
        }
    }
}

/// Timestamp units per second from an interface block's options (default microseconds).
fn if_tsresol(mut opts: &[u8], big: bool) -> Result<u64> {
    while opts.len() >= 4 {
        let code = u16_at(&opts[0..2], big);
        let len = u16_at(&opts[2..4], big) as usize;
        let padded = len.div_ceil(4) * 4;
        if opts.len() - 4 < padded {
            return Err(Error::malformed("pcapng interface options", "option runs past the block"));
        }
        if code == 0 {
            break;
        }
        if code == 9 && len == 1 {
            let v = opts[4];
            let exp = u32::from(v & 0x7f);
            let units = if v & 0x80 != 0 { 2u64.checked_pow(exp) } else { 10u64.checked_pow(exp) };
            return match units {
                Some(u) if u > 0 => Ok(u),
                _ => Err(Error::malformed(
                    "pcapng interface options",
                    format!("if_tsresol {v:#04x}"),
                )),
            };
        }
        opts = &opts[4 + padded..];
    }
    Ok(1_000_000)
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Packet<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = if self.format == Format::Pcapng { self.next_pcapng() } else { self.next_pcap() };
        match r {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
