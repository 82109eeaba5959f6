//! Frame encoding and decoding; the byte layouts are in the crate documentation.
//!
//! [`decode`] is a pure function over `&[u8]`: it checks everything that does not depend on
//! configuration or connection state (lengths, `frag_index < frag_count`, the fragment limit,
//! sequence arithmetic, range ordering, the entries of a packed frame) and allocates at most the
//! 255 ranges of an ack.

use assim_wire::limits::MAX_FRAGMENTS;

use crate::FrameError;

/// Type byte of a data frame.
pub(crate) const TYPE_DATA: u8 = 1;
/// Type byte of an ack frame.
pub(crate) const TYPE_ACK: u8 = 2;
/// Type byte of a packed data frame (several whole messages under one seq).
pub(crate) const TYPE_PACKED: u8 = 3;
/// Length of a data frame's header; the payload follows.
pub const DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 2 + 2;
/// Length of a packed data frame's header; the entries (u16 length, then bytes) follow.
pub(crate) const PACKED_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 2;
/// Bytes in front of each message in a packed data frame.
pub(crate) const PACKED_ENTRY_LEN: usize = 2;
/// Length of an ack frame's header; the selective ranges follow.
pub const ACK_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 1;
/// Length of one selective range in an ack frame.
pub const ACK_RANGE_LEN: usize = 16;

/// One fragment of a message (type 1), or one packed frame of whole messages (type 3).
///
/// A packed frame occupies one seq like a single-fragment message: it is decoded with
/// `frag_index` 0, `frag_count` 1, `packed` set, and `payload` holding its entries (each a u16
/// length and that many bytes), already checked by [`decode`] to be at least one and to fill
/// the payload exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DataFrame<'a> {
    pub(crate) session: u64,
    pub(crate) base: u64,
    pub(crate) seq: u64,
    pub(crate) frag_index: u16,
    pub(crate) frag_count: u16,
    pub(crate) packed: bool,
    pub(crate) payload: &'a [u8],
}

impl DataFrame<'_> {
    /// The seq of the first fragment of this fragment's message.
    pub(crate) fn message_start(&self) -> u64 {
        self.seq - u64::from(self.frag_index)
    }

    /// One past the seq of the last fragment of this fragment's message.
    pub(crate) fn message_end(&self) -> u64 {
        self.message_start() + u64::from(self.frag_count)
    }
}

/// Cumulative and selective acknowledgement of one data sender's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AckFrame {
    pub(crate) acked_session: u64,
    pub(crate) acker_session: u64,
    pub(crate) cumulative: u64,
    pub(crate) ranges: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Data(DataFrame<'a>),
    Ack(AckFrame),
}

/// The most selective ranges an ack frame of at most `max_frame_size` bytes can carry.
pub(crate) fn max_ack_ranges(max_frame_size: usize) -> usize {
    (max_frame_size.saturating_sub(ACK_HEADER_LEN) / ACK_RANGE_LEN).min(usize::from(u8::MAX))
}

pub(crate) fn encode_data(f: &DataFrame<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_HEADER_LEN + f.payload.len());
    out.push(TYPE_DATA);
    out.extend_from_slice(&f.session.to_be_bytes());
    out.extend_from_slice(&f.base.to_be_bytes());
    out.extend_from_slice(&f.seq.to_be_bytes());
    out.extend_from_slice(&f.frag_index.to_be_bytes());
    out.extend_from_slice(&f.frag_count.to_be_bytes());
    out.extend_from_slice(f.payload);
    out
}

/// Encodes a packed data frame of `count` messages (1..=u16::MAX; the caller keeps the frame
/// within its size limit and every message within u16::MAX bytes).
pub(crate) fn encode_packed<'m>(
    session: u64,
    base: u64,
    seq: u64,
    count: usize,
    messages: impl Iterator<Item = &'m [u8]>,
    frame_len: usize,
) -> Vec<u8> {
    let count = u16::try_from(count).expect("caller limits packed messages to u16::MAX");
    let mut out = Vec::with_capacity(frame_len);
    out.push(TYPE_PACKED);
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&base.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for m in messages {
        let len = u16::try_from(m.len()).expect("caller packs only messages of u16 length");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// The messages of a packed frame's entries, as checked by [`decode`].
pub(crate) fn packed_messages(mut entries: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_be_bytes(entries.get(..2)?.try_into().ok()?));
        let m = entries.get(2..2 + len)?;
        entries = &entries[2 + len..];
        Some(m)
    })
}

/// Encodes an ack. The caller passes at most 255 ranges.
pub(crate) fn encode_ack(a: &AckFrame) -> Vec<u8> {
    let n = u8::try_from(a.ranges.len()).expect("caller limits ranges to 255");
    let mut out = Vec::with_capacity(ACK_HEADER_LEN + a.ranges.len() * ACK_RANGE_LEN);
    out.push(TYPE_ACK);
    out.extend_from_slice(&a.acked_session.to_be_bytes());
    out.extend_from_slice(&a.acker_session.to_be_bytes());
    out.extend_from_slice(&a.cumulative.to_be_bytes());
    out.push(n);
    for &(start, end) in &a.ranges {
        out.extend_from_slice(&start.to_be_bytes());
        out.extend_from_slice(&end.to_be_bytes());
    }
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Parses a frame and checks what can be checked without configuration or state.
pub(crate) fn decode(b: &[u8]) -> Result<Frame<'_>, FrameError> {
    match b.first() {
        None => Err(FrameError::Truncated),
        Some(&TYPE_DATA) => decode_data(b).map(Frame::Data),
        Some(&TYPE_ACK) => decode_ack(b).map(Frame::Ack),
        Some(&TYPE_PACKED) => decode_packed(b).map(Frame::Data),
        Some(&t) => Err(FrameError::UnknownType(t)),
    }
}

fn decode_data(b: &[u8]) -> Result<DataFrame<'_>, FrameError> {
    if b.len() < DATA_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let f = DataFrame {
        session: u64_at(b, 1),
        base: u64_at(b, 9),
        seq: u64_at(b, 17),
        frag_index: u16_at(b, 25),
        frag_count: u16_at(b, 27),
        packed: false,
        payload: &b[DATA_HEADER_LEN..],
    };
    if f.frag_count == 0 {
        return Err(FrameError::Malformed("frag_count is zero"));
    }
    if f.frag_index >= f.frag_count {
        return Err(FrameError::Malformed("frag_index is not below frag_count"));
    }
    if usize::from(f.frag_count) > MAX_FRAGMENTS {
        return Err(FrameError::TooManyFragments(f.frag_count));
    }
    let Some(start) = f.seq.checked_sub(u64::from(f.frag_index)) else {
        return Err(FrameError::Malformed("seq is below frag_index"));
    };
    if start.checked_add(u64::from(f.frag_count)).is_none() {
        return Err(FrameError::Malformed("message extends past the last seq"));
    }
    if f.base > start {
        return Err(FrameError::Malformed("base is above the fragment's message"));
    }
    Ok(f)
}

fn decode_packed(b: &[u8]) -> Result<DataFrame<'_>, FrameError> {
    if b.len() < PACKED_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let count = u16_at(b, 25);
    if count == 0 {
        return Err(FrameError::Malformed("packed frame holds no message"));
    }
    let entries = &b[PACKED_HEADER_LEN..];
    let mut at = 0;
    for _ in 0..count {
        let Some(len) = entries.get(at..at + PACKED_ENTRY_LEN) else {
            return Err(FrameError::Malformed("packed entries overrun the frame"));
        };
        at += PACKED_ENTRY_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
        if at > entries.len() {
            return Err(FrameError::Malformed("packed entries overrun the frame"));
        }
    }
    if at != entries.len() {
        return Err(FrameError::Malformed("bytes after the last packed entry"));
    }
    let f = DataFrame {
        session: u64_at(b, 1),
        base: u64_at(b, 9),
        seq: u64_at(b, 17),
        frag_index: 0,
        frag_count: 1,
        packed: true,
        payload: entries,
    };
    if f.seq == u64::MAX {
        return Err(FrameError::Malformed("message extends past the last seq"));
    }
    if f.base > f.seq {
        return Err(FrameError::Malformed("base is above the fragment's message"));
    }
    Ok(f)
}

fn decode_ack(b: &[u8]) -> Result<AckFrame, FrameError> {
    if b.len() < ACK_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let n = usize::from(b[ACK_HEADER_LEN - 1]);
    if b.len() < ACK_HEADER_LEN + n * ACK_RANGE_LEN {
        return Err(FrameError::Truncated);
    }
    let cumulative = u64_at(b, 17);
    let mut ranges = Vec::with_capacity(n);
    let mut floor = cumulative; // every range must start above this
    for i in 0..n {
        let at = ACK_HEADER_LEN + i * ACK_RANGE_LEN;
        let (start, end) = (u64_at(b, at), u64_at(b, at + 8));
        if start >= end {
            return Err(FrameError::Malformed("empty or inverted ack range"));
        }
        if start <= floor {
            return Err(FrameError::Malformed(
                "ack ranges not ascending, overlapping, adjacent, or not above cumulative",
            ));
        }
        floor = end;
        ranges.push((start, end));
    }
    // Bytes after the ranges are reserved for extensions and skipped.
    Ok(AckFrame { acked_session: u64_at(b, 1), acker_session: u64_at(b, 9), cumulative, ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seq: u64, index: u16, count: u16) -> Vec<u8> {
        encode_data(&DataFrame {
            session: 7,
            base: 0,
            seq,
            frag_index: index,
            frag_count: count,
            packed: false,
            payload: b"xyz",
        })
    }

    #[test]
    fn data_round_trips() {
        let f = DataFrame {
            session: 1 << 40,
            base: 3,
            seq: 9,
            frag_index: 2,
            frag_count: 5,
            packed: false,
            payload: b"hello",
        };
        let bytes = encode_data(&f);
        assert_eq!(bytes.len(), DATA_HEADER_LEN + 5);
        assert_eq!(decode(&bytes), Ok(Frame::Data(f)));
    }

    #[test]
    fn packed_round_trips() {
        let msgs: [&[u8]; 3] = [b"one", b"", b"three"];
        let bytes = encode_packed(4, 2, 8, 3, msgs.iter().copied(), 64);
        assert_eq!(bytes.len(), PACKED_HEADER_LEN + 3 * PACKED_ENTRY_LEN + 8);
        let Ok(Frame::Data(f)) = decode(&bytes) else { panic!("decodes") };
        assert_eq!((f.session, f.base, f.seq, f.frag_index, f.frag_count), (4, 2, 8, 0, 1));
        assert!(f.packed);
        assert_eq!(packed_messages(f.payload).collect::<Vec<_>>(), msgs);
    }

    #[test]
    fn rejects_bad_packed_frames() {
        let good = encode_packed(4, 0, 1, 2, [&b"ab"[..], b"c"].into_iter(), 64);
        for len in 0..PACKED_HEADER_LEN {
            assert_eq!(decode(&good[..len]), Err(FrameError::Truncated));
        }
        for len in PACKED_HEADER_LEN..good.len() {
            assert!(matches!(decode(&good[..len]), Err(FrameError::Malformed(_))), "{len}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(FrameError::Malformed(_))));
        let mut zero = good.clone();
        zero[25..27].copy_from_slice(&0u16.to_be_bytes());
        assert!(matches!(decode(&zero), Err(FrameError::Malformed(_))));
        let high_base = encode_packed(4, 2, 1, 1, [&b"x"[..]].into_iter(), 64);
        assert!(matches!(decode(&high_base), Err(FrameError::Malformed(_))));
        let last_seq = encode_packed(4, 0, u64::MAX, 1, [&b"x"[..]].into_iter(), 64);
        assert!(matches!(decode(&last_seq), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn ack_round_trips_and_skips_trailing_extension_bytes() {
        let a = AckFrame {
            acked_session: 1,
            acker_session: 2,
            cumulative: 10,
            ranges: vec![(12, 14), (20, 21)],
        };
        let mut bytes = encode_ack(&a);
        assert_eq!(bytes.len(), ACK_HEADER_LEN + 2 * ACK_RANGE_LEN);
        assert_eq!(decode(&bytes), Ok(Frame::Ack(a.clone())));
        bytes.extend_from_slice(b"future field");
        assert_eq!(decode(&bytes), Ok(Frame::Ack(a)));
    }

    #[test]
    fn rejects_bad_fragment_numbers() {
        assert_eq!(decode(&data(0, 0, 0)), Err(FrameError::Malformed("frag_count is zero")));
        assert!(matches!(decode(&data(5, 3, 3)), Err(FrameError::Malformed(_))));
        assert_eq!(decode(&data(5, 0, u16::MAX)), Err(FrameError::TooManyFragments(u16::MAX)));
        assert!(matches!(decode(&data(1, 2, 3)), Err(FrameError::Malformed(_))));
        assert!(matches!(decode(&data(u64::MAX, 0, 2)), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn rejects_bad_ack_ranges() {
        let mk = |cumulative, ranges: Vec<(u64, u64)>| {
            encode_ack(&AckFrame { acked_session: 1, acker_session: 1, cumulative, ranges })
        };
        for bad in [
            mk(5, vec![(5, 7)]),
            mk(5, vec![(7, 7)]),
            mk(5, vec![(8, 7)]),
            mk(5, vec![(7, 9), (9, 10)]),
            mk(5, vec![(10, 12), (7, 9)]),
        ] {
            assert!(matches!(decode(&bad), Err(FrameError::Malformed(_))));
        }
        let good = mk(5, vec![(7, 9), (11, 12)]);
        assert_eq!(decode(&good[..good.len() - 1]), Err(FrameError::Truncated));
    }

    #[test]
    fn truncations_are_reported_as_truncated() {
        let d = data(0, 0, 1);
        for len in 0..DATA_HEADER_LEN {
            assert_eq!(decode(&d[..len]), Err(FrameError::Truncated));
        }
        assert_eq!(decode(&[9]), Err(FrameError::UnknownType(9)));
    }

    #[test]
    fn default_frame_carries_69_ranges() {
        assert_eq!(max_ack_ranges(1144), 69);
        const { assert!(ACK_HEADER_LEN + 69 * ACK_RANGE_LEN <= 1144) };
    }
}
