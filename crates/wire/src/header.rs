//! The datagram header.
//!
//! Every assim datagram starts with this fixed header. It travels in clear text but is
//! authenticated as the AEAD's associated data, so nobody can change a byte of it unnoticed.
//!
//! ```text
//! offset size field
//!  0      2   magic "AS"
//!  2      1   protocol version (2)
//!  3      1   datagram kind (DatagramKind)
//!  4      1   flags: bit 0 = the sender's X25519 public key (32 bytes) follows the header
//!                    bit 1 = the datagram ends with a 16-byte mac1 (see below)
//!                    bits 2-7 reserved, sent as zero, ignored on receipt
//!  5      3   reserved, sent as zero, ignored on receipt
//!  8     16   sender node id (UUIDv7)
//! 24      8   sender session (big endian; a new, larger value after every restart)
//! 32      8   counter within the session (big endian; strictly increasing, never reused)
//! 40    [32]  sender public key, only when flag bit 0 is set
//!  …          body
//! end-16 [16] mac1, only when flag bit 1 is set
//! ```
//!
//! The body is the sealed payload plus a 16-byte AEAD tag, except for the clear-text kinds: the
//! two key-discovery kinds (a `KeyRequest`'s body is zero padding, see below) and `Busy`, the
//! CMA's answer to a key request it will not serve yet, whose body is [`BUSY_BODY_LEN`] bytes:
//! the milliseconds the requester should wait before it asks again (big endian `u32`). A `Busy`
//! carries no key and ends with a mac1 for the requester ([`BUSY_LEN`] = 60 bytes, less than the
//! request it answers).
//!
//! # mac1 (version 2)
//!
//! A cheap pre-authentication in the manner of WireGuard's mac1: a MAC keyed by the
//! *receiver's* public key over every byte before it, so that a receiver can refuse garbage
//! before it spends an X25519 operation on it. `assim-seal` computes and checks it (HMAC-SHA256
//! truncated to 16 bytes, key = SHA-256("assim mac1" ‖ receiver public key)). It is carried by
//! every datagram whose opening may cost the receiver a Diffie-Hellman: the sealed kinds when
//! they carry the sender's key (a first contact at the CMA) and every `KeyReply`. A `KeyRequest`
//! carries the requester's key (so that the reply can carry a mac1 for it) and is padded to
//! [`KEY_REQUEST_LEN`], the length of the reply, so that answering it reflects no more bytes
//! than it received. Datagrams between peers that already hold each other's keys carry no key
//! and no mac1: opening them costs a table lookup, the replay check and one AEAD, no DH.
//!
//! Version 1 (no mac1, 40-byte key requests) is refused as `UnsupportedVersion(1)`.

use crate::NodeId;
use crate::limits::MAX_DATAGRAM_SIZE;

/// The first two bytes of every assim datagram.
pub const MAGIC: [u8; 2] = *b"AS";
/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Length of the optional sender public key after the header.
pub const PUBKEY_LEN: usize = 32;
/// Flag bit: the sender's public key follows the header.
pub const FLAG_PUBKEY: u8 = 0x01;
/// Flag bit: the datagram ends with a [`MAC1_LEN`]-byte mac1.
pub const FLAG_MAC1: u8 = 0x02;
/// Length of the mac1 trailer.
pub const MAC1_LEN: usize = 16;
/// Length of a `KeyRequest` and of a `KeyReply` (header, key, then padding or mac1): equal, so
/// that the answer to a request is no larger than the request.
pub const KEY_REQUEST_LEN: usize = HEADER_LEN + PUBKEY_LEN + MAC1_LEN;
/// Length of a `Busy` body: the wait in milliseconds, big endian.
pub const BUSY_BODY_LEN: usize = 4;
/// Length of a `Busy` datagram: header, body and mac1 (no key).
pub const BUSY_LEN: usize = HEADER_LEN + BUSY_BODY_LEN + MAC1_LEN;
/// The most bytes sealing adds around a payload: header, key, AEAD tag and mac1.
pub const MAX_OVERHEAD: usize = HEADER_LEN + PUBKEY_LEN + crate::limits::AEAD_TAG_LEN + MAC1_LEN;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DatagramKind {
    /// Clear text: "tell me your public key" (trust-on-first-use enrollment only).
    KeyRequest = 1,
    /// Clear text: the answer to a key request; the key is in the header.
    KeyReply = 2,
    /// Sealed: a reliable-delivery frame (message fragments or acknowledgements).
    Reliable = 3,
    /// Sealed: one unreliable message (`msg::Direct`): heartbeat, probe, probe reply.
    Direct = 4,
    /// Clear text: "ask again after this many milliseconds", the CMA's answer to a key request
    /// beyond its registration budget (the pace of a registration storm is the CMA's).
    Busy = 5,
}

impl DatagramKind {
    /// Decodes the kind byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => DatagramKind::KeyRequest,
            2 => DatagramKind::KeyReply,
            3 => DatagramKind::Reliable,
            4 => DatagramKind::Direct,
            5 => DatagramKind::Busy,
            _ => return None,
        })
    }

    /// Whether datagrams of this kind are sealed (encrypted and authenticated).
    pub fn is_sealed(self) -> bool {
        matches!(self, DatagramKind::Reliable | DatagramKind::Direct)
    }

    /// A short stable name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            DatagramKind::KeyRequest => "key_request",
            DatagramKind::KeyReply => "key_reply",
            DatagramKind::Reliable => "reliable",
            DatagramKind::Direct => "direct",
            DatagramKind::Busy => "busy",
        }
    }
}

/// A parsed datagram header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: DatagramKind,
    pub sender: NodeId,
    pub session: u64,
    pub counter: u64,
    /// The sender's X25519 public key, when it chose to include it (first contact with the CMA).
    pub sender_key: Option<[u8; 32]>,
    /// Whether the datagram ends with a mac1 (flag bit 1). [`Header::decode`] leaves it out of
    /// the body; [`split_mac1`] returns it with the bytes it covers.
    pub mac1: bool,
}

/// Why a header was refused. Nothing is allocated before these checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The datagram is larger than [`MAX_DATAGRAM_SIZE`].
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM_SIZE}-byte limit")]
    Oversized(usize),
    /// Fewer bytes than the header needs.
    #[error("datagram of {0} bytes is shorter than its header")]
    Truncated(usize),
    /// The first two bytes are not the assim magic.
    #[error("not an assim datagram (bad magic)")]
    BadMagic,
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// An unknown datagram kind.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
}

impl HeaderError {
    /// A short stable name for the reject counter.
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderError::Oversized(_) => "oversized",
            HeaderError::Truncated(_) => "truncated",
            HeaderError::BadMagic => "bad_magic",
            HeaderError::UnsupportedVersion(_) => "bad_version",
            HeaderError::UnknownKind(_) => "unknown_kind",
        }
    }
}

impl Header {
    /// Encoded length of this header (with the optional key).
    pub fn len(&self) -> usize {
        HEADER_LEN + if self.sender_key.is_some() { PUBKEY_LEN } else { 0 }
    }

    /// Always false: a header has a fixed minimum length. (Present for clippy's `len` rule.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(crate::PROTOCOL_VERSION);
        out.push(self.kind as u8);
        let key = if self.sender_key.is_some() { FLAG_PUBKEY } else { 0 };
        out.push(key | if self.mac1 { FLAG_MAC1 } else { 0 });
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        if let Some(key) = &self.sender_key {
            out.extend_from_slice(key);
        }
    }

    /// Parses the header at the start of `datagram`; returns it and the body that follows (the
    /// mac1 trailer, if flagged, is not part of the body).
    pub fn decode(datagram: &[u8]) -> Result<(Header, &[u8]), HeaderError> {
        if datagram.len() > MAX_DATAGRAM_SIZE {
            return Err(HeaderError::Oversized(datagram.len()));
        }
        if datagram.len() < HEADER_LEN {
            return Err(HeaderError::Truncated(datagram.len()));
        }
        if datagram[0..2] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if datagram[2] != crate::PROTOCOL_VERSION {
            return Err(HeaderError::UnsupportedVersion(datagram[2]));
        }
        let kind =
            DatagramKind::from_u8(datagram[3]).ok_or(HeaderError::UnknownKind(datagram[3]))?;
        let flags = datagram[4];
        let sender = NodeId::from_slice(&datagram[8..24]).expect("16 bytes");
        let session = u64::from_be_bytes(datagram[24..32].try_into().expect("8 bytes"));
        let counter = u64::from_be_bytes(datagram[32..40].try_into().expect("8 bytes"));
        let mac1 = flags & FLAG_MAC1 != 0;
        let end = if mac1 {
            let min = HEADER_LEN + MAC1_LEN + if flags & FLAG_PUBKEY != 0 { PUBKEY_LEN } else { 0 };
            if datagram.len() < min {
                return Err(HeaderError::Truncated(datagram.len()));
            }
            datagram.len() - MAC1_LEN
        } else {
            datagram.len()
        };
        let datagram = &datagram[..end];
        let (sender_key, body) = if flags & FLAG_PUBKEY != 0 {
            if datagram.len() < HEADER_LEN + PUBKEY_LEN {
                return Err(HeaderError::Truncated(datagram.len()));
            }
            let key: [u8; 32] =
                datagram[HEADER_LEN..HEADER_LEN + PUBKEY_LEN].try_into().expect("32 bytes");
            (Some(key), &datagram[HEADER_LEN + PUBKEY_LEN..])
        } else {
            (None, &datagram[HEADER_LEN..])
        };
        Ok((Header { kind, sender, session, counter, sender_key, mac1 }, body))
    }
}

/// The mac1 of a datagram whose header has flag bit 1: the bytes it covers (everything before
/// it) and the mac. `None` when the flag is clear or the datagram is too short to hold it.
/// Call after [`Header::decode`] accepted the datagram.
pub fn split_mac1(datagram: &[u8]) -> Option<(&[u8], &[u8; MAC1_LEN])> {
    if datagram.len() < HEADER_LEN + MAC1_LEN || datagram[4] & FLAG_MAC1 == 0 {
        return None;
    }
    let (covered, mac) = datagram.split_at(datagram.len() - MAC1_LEN);
    Some((covered, mac.try_into().expect("16 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(key: bool) -> Header {
        Header {
            kind: DatagramKind::Reliable,
            sender: NodeId([7; 16]),
            session: 0x0102_0304_0506_0708,
            counter: 42,
            sender_key: key.then_some([9; 32]),
            mac1: false,
        }
    }

    #[test]
    fn round_trip_with_and_without_key() {
        for key in [false, true] {
            let h = sample(key);
            let mut buf = Vec::new();
            h.encode(&mut buf);
            assert_eq!(buf.len(), h.len());
            buf.extend_from_slice(b"body");
            let (back, body) = Header::decode(&buf).unwrap();
            assert_eq!(back, h);
            assert_eq!(body, b"body");
        }
    }

    #[test]
    fn mac1_trailer_is_not_part_of_the_body() {
        for key in [false, true] {
            let h = Header { mac1: true, ..sample(key) };
            let mut buf = Vec::new();
            h.encode(&mut buf);
            buf.extend_from_slice(b"body");
            buf.extend_from_slice(&[0xAA; MAC1_LEN]);
            let (back, body) = Header::decode(&buf).unwrap();
            assert_eq!(back, h);
            assert_eq!(body, b"body");
            let (covered, mac) = split_mac1(&buf).unwrap();
            assert_eq!(covered.len(), buf.len() - MAC1_LEN);
            assert_eq!(mac, &[0xAA; MAC1_LEN]);
            // Too short to hold the header, the key and the mac1.
            let cut = h.len() + MAC1_LEN - 1;
            assert_eq!(Header::decode(&buf[..cut]), Err(HeaderError::Truncated(cut)));
        }
        let mut plain = Vec::new();
        sample(false).encode(&mut plain);
        plain.extend_from_slice(&[0; 20]);
        assert_eq!(split_mac1(&plain), None);
        assert_eq!(KEY_REQUEST_LEN, 88);
        assert_eq!(MAX_OVERHEAD, 104);
        assert_eq!(BUSY_LEN, 60);
        const { assert!(BUSY_LEN <= KEY_REQUEST_LEN, "a Busy is never larger than the request") };
    }

    #[test]
    fn rejects_by_reason() {
        let mut buf = Vec::new();
        sample(true).encode(&mut buf);
        assert_eq!(Header::decode(&buf[..10]), Err(HeaderError::Truncated(10)));
        assert_eq!(Header::decode(&buf[..50]), Err(HeaderError::Truncated(50)));
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = buf.clone();
        bad[2] = 9;
        assert_eq!(Header::decode(&bad), Err(HeaderError::UnsupportedVersion(9)));
        bad[2] = 1;
        assert_eq!(Header::decode(&bad), Err(HeaderError::UnsupportedVersion(1)), "v1 is gone");
        let mut bad = buf.clone();
        bad[3] = 200;
        assert_eq!(Header::decode(&bad), Err(HeaderError::UnknownKind(200)));
        let big = vec![0u8; MAX_DATAGRAM_SIZE + 1];
        assert_eq!(Header::decode(&big), Err(HeaderError::Oversized(MAX_DATAGRAM_SIZE + 1)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Header::decode(&bytes);
            let _ = split_mac1(&bytes);
        }

        /// Any header that decodes, with any flags, leaves a body and mac1 inside the datagram.
        #[test]
        fn decode_splits_within_bounds(
            flags in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut bytes = vec![b'A', b'S', crate::PROTOCOL_VERSION, 3, flags, 0, 0, 0];
            bytes.extend_from_slice(&[1; 32]);
            bytes.extend_from_slice(&rest);
            if let Ok((h, body)) = Header::decode(&bytes) {
                let trailer = if h.mac1 { MAC1_LEN } else { 0 };
                prop_assert_eq!(h.len() + body.len() + trailer, bytes.len());
                prop_assert_eq!(h.mac1, split_mac1(&bytes).is_some());
            }
        }
    }
}
