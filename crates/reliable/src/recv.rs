//! The receiving half for one peer session: duplicate suppression, the out-of-order buffer,
//! reassembly and in-order delivery.
//!
//! Invariants:
//! - Every seq below `expected` was received and consumed; `expected` is the cumulative ack.
//! - `partial`, when present, is the message being reassembled: its fragments
//!   `[start, expected)` are in `data`, and `start < expected < start + count`. When absent,
//!   `expected` is the first seq of a message.
//! - `ooo` holds fragments with seqs in `(expected, expected + window)`, each consistent with
//!   its neighbours and with `partial` (checked before insertion), so consuming them in order
//!   never finds a contradiction.
//!
//! A packed frame (several whole messages under one seq) behaves like a single-fragment message
//! here: it spans one seq, and consuming it delivers its messages in order.
//!
//! Two fragments are consistent when they claim the same message `[start, end)` or disjoint
//! ones. Checking a new fragment against its nearest neighbours in seq order suffices: the
//! relation is transitive along sorted seqs.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::FrameError;
use crate::frame::{DataFrame, packed_messages};

#[derive(Debug)]
struct Partial {
    start: u64,
    count: u16,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Buffered {
    index: u16,
    count: u16,
    packed: bool,
    payload: Vec<u8>,
}

impl Buffered {
    fn span(&self, seq: u64) -> (u64, u64) {
        let start = seq - u64::from(self.index);
        (start, start + u64::from(self.count))
    }
}

/// What to do with a data frame that passed [`Receiver::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Received before: drop, but acknowledge at once.
    Duplicate,
    /// Beyond the receive window: drop.
    BeyondWindow,
    /// New: buffer or consume.
    Accept,
}

fn consistent(a: (u64, u64), b: (u64, u64)) -> bool {
    a == b || a.1 <= b.0 || b.1 <= a.0
}

#[derive(Debug)]
pub(crate) struct Receiver {
    expected: u64,
    partial: Option<Partial>,
    ooo: BTreeMap<u64, Buffered>,
    window: u64,
    max_payload: usize,
    max_message: usize,
}

impl Receiver {
    pub(crate) fn new(start: u64, window: usize, max_payload: usize, max_message: usize) -> Self {
        Receiver {
            expected: start,
            partial: None,
            ooo: BTreeMap::new(),
            window: window as u64,
            max_payload,
            max_message,
        }
    }

    /// Decides what to do with `f`, or rejects it if it contradicts what was received. The
    /// view is the state after skipping to `f.base` when that is above `expected`.
    pub(crate) fn check(&self, f: &DataFrame<'_>) -> Result<Disposition, FrameError> {
        let skip = f.base > self.expected;
        let floor = self.expected.max(f.base);
        if f.seq < floor {
            return Ok(Disposition::Duplicate);
        }
        // `f.seq - floor`, not `floor + window`: the peer chooses `base`, and a floor within a
        // window of u64::MAX must not overflow (a panic in debug builds, a wrap that refuses
        // every frame in release builds).
        if f.seq - floor >= self.window {
            return Ok(Disposition::BeyondWindow);
        }
        let span = (f.message_start(), f.message_end());
        match self.partial.as_ref().filter(|_| !skip) {
            Some(p) => {
                if !consistent(span, (p.start, p.start + u64::from(p.count))) {
                    return Err(FrameError::Malformed(
                        "fragment disagrees with the message being reassembled",
                    ));
                }
            }
            None => {
                if span.0 < floor {
                    return Err(FrameError::Malformed(
                        "fragment's message starts before the receive point",
                    ));
                }
            }
        }
        if let Some(b) = self.ooo.get(&f.seq) {
            return if (b.index, b.count, b.packed) == (f.frag_index, f.frag_count, f.packed) {
                Ok(Disposition::Duplicate)
            } else {
                Err(FrameError::Malformed("fragment disagrees with an earlier copy"))
            };
        }
        let pred = self.ooo.range(floor..f.seq).next_back();
        let succ = self.ooo.range(f.seq + 1..).next();
        for (&seq, b) in pred.into_iter().chain(succ) {
            if !consistent(span, b.span(seq)) {
                return Err(FrameError::Malformed(
                    "fragment disagrees with a neighbouring fragment",
                ));
            }
        }
        Ok(Disposition::Accept)
    }

    /// Moves the receive point up to `base` (the sender says everything below was acknowledged,
    /// by an earlier incarnation of us), then delivers what became contiguous. Called for every
    /// checked frame, duplicates included, before [`Receiver::accept`].
    pub(crate) fn skip_to(&mut self, base: u64, delivered: &mut Vec<Vec<u8>>) {
        if base > self.expected {
            self.expected = base;
            self.partial = None;
            self.ooo = self.ooo.split_off(&base);
            self.drain(delivered);
        }
    }

    /// Applies an accepted fragment; pushes completed messages, in order, to `delivered`.
    /// Returns whether the fragment arrived out of order or filled a gap (ack at once).
    pub(crate) fn accept(&mut self, f: &DataFrame<'_>, delivered: &mut Vec<Vec<u8>>) -> bool {
        let urgent = f.seq != self.expected || !self.ooo.is_empty();
        if f.seq != self.expected {
            self.ooo.insert(
                f.seq,
                Buffered {
                    index: f.frag_index,
                    count: f.frag_count,
                    packed: f.packed,
                    payload: f.payload.to_vec(),
                },
            );
        } else {
            let (index, count, packed) = (f.frag_index, f.frag_count, f.packed);
            self.consume(index, count, packed, Cow::Borrowed(f.payload), delivered);
        }
        self.drain(delivered);
        urgent
    }

    fn drain(&mut self, delivered: &mut Vec<Vec<u8>>) {
        while let Some(entry) = self.ooo.first_entry()
            && *entry.key() == self.expected
        {
            let b = entry.remove();
            self.consume(b.index, b.count, b.packed, Cow::Owned(b.payload), delivered);
        }
    }

    fn consume(
        &mut self,
        index: u16,
        count: u16,
        packed: bool,
        payload: Cow<'_, [u8]>,
        delivered: &mut Vec<Vec<u8>>,
    ) {
        self.expected += 1;
        if packed {
            delivered.extend(packed_messages(&payload).map(<[u8]>::to_vec));
            return;
        }
        if count == 1 {
            delivered.push(payload.into_owned());
            return;
        }
        let p = self.partial.get_or_insert_with(|| {
            // Sized from limits already enforced on frag_count, not from the peer's word alone.
            let capacity = (usize::from(count) * self.max_payload).min(self.max_message);
            Partial { start: self.expected - 1, count, data: Vec::with_capacity(capacity) }
        });
        p.data.extend_from_slice(&payload);
        if index + 1 == count {
            let p = self.partial.take().expect("partial exists");
            delivered.push(p.data);
        }
    }

    /// The cumulative ack point and up to `max` selective ranges of buffered fragments.
    pub(crate) fn ack_state(&self, max: usize) -> (u64, Vec<(u64, u64)>) {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &seq in self.ooo.keys() {
            if let Some(r) = ranges.last_mut()
                && r.1 == seq
            {
                r.1 += 1;
            } else if ranges.len() == max {
                break;
            } else {
                ranges.push((seq, seq + 1));
            }
        }
        (self.expected, ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(seq: u64, index: u16, count: u16, payload: &[u8]) -> DataFrame<'_> {
        DataFrame {
            session: 1,
            base: 0,
            seq,
            frag_index: index,
            frag_count: count,
            packed: false,
            payload,
        }
    }

    fn feed(r: &mut Receiver, f: &DataFrame<'_>) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        let disposition = r.check(f)?;
        r.skip_to(f.base, &mut out);
        if disposition == Disposition::Accept {
            r.accept(f, &mut out);
        }
        Ok(out)
    }

    #[test]
    fn reassembles_out_of_order_and_delivers_in_order() {
        let mut r = Receiver::new(0, 16, 4, 1 << 20);
        // message A = seqs 0..3, message B = seq 3
        assert!(feed(&mut r, &frag(3, 0, 1, b"B")).unwrap().is_empty());
        assert!(feed(&mut r, &frag(1, 1, 3, b"bbbb")).unwrap().is_empty());
        assert_eq!(r.ack_state(10), (0, vec![(1, 2), (3, 4)]));
        assert!(feed(&mut r, &frag(0, 0, 3, b"aaaa")).unwrap().is_empty());
        let out = feed(&mut r, &frag(2, 2, 3, b"cc")).unwrap();
        assert_eq!(out, vec![b"aaaabbbbcc".to_vec(), b"B".to_vec()]);
        assert_eq!(r.ack_state(10), (4, vec![]));
        assert_eq!(r.check(&frag(2, 2, 3, b"cc")), Ok(Disposition::Duplicate));
    }

    #[test]
    fn rejects_contradicting_fragments_without_change() {
        let mut r = Receiver::new(0, 16, 4, 1 << 20);
        feed(&mut r, &frag(0, 0, 3, b"aaaa")).unwrap();
        feed(&mut r, &frag(5, 0, 2, b"xxxx")).unwrap();
        // claims seq 1 starts a new message while message 0..3 is in progress
        assert!(feed(&mut r, &frag(1, 0, 1, b"z")).is_err());
        // same seq as buffered, different numbering
        assert!(feed(&mut r, &frag(5, 1, 2, b"z")).is_err());
        // overlaps the buffered message 5..7 with a different span
        assert!(feed(&mut r, &frag(4, 0, 2, b"z")).is_err());
        assert!(feed(&mut r, &frag(6, 0, 1, b"z")).is_err());
        assert_eq!(r.ack_state(10), (1, vec![(5, 6)]));
        let out = feed(&mut r, &frag(1, 1, 3, b"bbbb")).unwrap();
        assert!(out.is_empty());
        assert_eq!(feed(&mut r, &frag(2, 2, 3, b"c")).unwrap(), vec![b"aaaabbbbc".to_vec()]);
    }

    #[test]
    fn window_bounds_the_buffer_and_base_skips_ahead() {
        let mut r = Receiver::new(0, 4, 4, 1 << 20);
        assert_eq!(r.check(&frag(4, 0, 1, b"")), Ok(Disposition::BeyondWindow));
        feed(&mut r, &frag(0, 0, 2, b"aaaa")).unwrap();
        feed(&mut r, &frag(3, 0, 1, b"d")).unwrap();
        let mut f = frag(5, 0, 1, b"f");
        f.base = 3;
        assert_eq!(feed(&mut r, &f).unwrap(), vec![b"d".to_vec()]);
        assert_eq!(r.ack_state(10), (4, vec![(5, 6)]));
    }

    /// Issue 16 item 16: `floor + window` overflowed when the peer's base or our receive point
    /// was within a window of `u64::MAX`.
    #[test]
    fn item16_window_near_u64_max_does_not_overflow() {
        let top = u64::MAX - 3;
        let mut r = Receiver::new(top, 16, 4, 1 << 20);
        assert_eq!(r.check(&frag(top + 1, 0, 1, b"b")), Ok(Disposition::Accept));
        assert_eq!(feed(&mut r, &frag(top, 0, 1, b"a")).unwrap(), vec![b"a".to_vec()]);
        assert_eq!(feed(&mut r, &frag(top + 1, 0, 1, b"b")).unwrap(), vec![b"b".to_vec()]);
        assert_eq!(r.ack_state(10), (top + 2, vec![]));
        // A fresh receiver told by the peer's base to skip up there.
        let mut r = Receiver::new(0, 16, 4, 1 << 20);
        let mut f = frag(top, 0, 1, b"x");
        f.base = top;
        assert_eq!(feed(&mut r, &f).unwrap(), vec![b"x".to_vec()]);
        assert_eq!(r.ack_state(10), (top + 1, vec![]));
    }

    #[test]
    fn ack_ranges_are_limited() {
        let mut r = Receiver::new(0, 64, 4, 1 << 20);
        for seq in (1..40).step_by(2) {
            feed(&mut r, &frag(seq, 0, 1, b"")).unwrap();
        }
        let (cum, ranges) = r.ack_state(3);
        assert_eq!(cum, 0);
        assert_eq!(ranges, vec![(1, 2), (3, 4), (5, 6)]);
    }
}
