//! The backlog: what a full spool could not take, in memory and bounded (issue 16 item 10).
//!
//! When the spool is full (or unavailable while the reliable queue to the CMA is also full),
//! a message that states *state* waits here instead of being dropped or sent without the
//! spool's protection, and a newer message about the same subject replaces the older one
//! (coalescing): the CMA needs the latest word, not every word.
//!
//! | message | subject (one entry each) |
//! |---|---|
//! | heartbeat report | the peer it is about |
//! | peer status, statistics | the node (one entry) |
//! | check state change | the check (a HARD-state change: the latest state suffices) |
//! | discovery result | the collector |
//!
//! Local events (and any other kind) cannot be coalesced: they are *refused* at the source,
//! and the submitter sees the error (`events.sock` answers "spool full"). A discovery result
//! that does not fit in [`MAX_BYTES`] is refused too; the shell then forgets its change hash,
//! so the next collection sends it again.
//!
//! Entries move into the spool, oldest first, as soon as it takes them (after the CMA's
//! acknowledgements free room). A subject waiting here takes every newer message about it,
//! even when the spool would take that one: the CMA never sees an older word after a newer.
//! Bounds: one entry per subject (peers, checks and collectors are bounded sets), at most
//! [`MAX_ENTRIES`] entries and [`MAX_BYTES`] bytes of encoded messages.

use std::collections::VecDeque;

use assim_wire::msg::Body;

/// Entries at most.
pub const MAX_ENTRIES: usize = 4096;
/// Bytes of encoded messages at most.
pub const MAX_BYTES: usize = 8 << 20;

/// What a message is about, for coalescing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    Report(Vec<u8>),
    Status,
    Statistics,
    Check(String),
    Discovery(String),
}

impl Subject {
    /// The subject of `body`, or `None` when it cannot be coalesced (local events).
    pub(crate) fn of(body: &Body) -> Option<Subject> {
        Some(match body {
            Body::HeartbeatReport(r) => Subject::Report(r.peer.clone()),
            Body::PeerStatus(_) => Subject::Status,
            Body::Statistics(_) => Subject::Statistics,
            Body::CheckStateChange(c) => Subject::Check(c.check.clone()),
            Body::DiscoveryResult(d) => Subject::Discovery(d.name.clone()),
            _ => return None,
        })
    }
}

/// What [`Backlog::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// A new entry.
    Added,
    /// It replaced an older message about the same subject.
    Coalesced,
    /// No room (bytes or entries).
    NoRoom,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    entries: VecDeque<(Subject, Body, usize)>,
    bytes: usize,
}

impl Backlog {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn holds(&self, subject: &Subject) -> bool {
        self.entries.iter().any(|(s, _, _)| s == subject)
    }

    /// Keeps `body` (about `subject`, `size` bytes encoded), replacing an older message about
    /// the same subject; the entry moves to the back (it is the newest word).
    pub(crate) fn push(&mut self, subject: Subject, body: Body, size: usize) -> Pushed {
        let old = self.entries.iter().position(|(s, _, _)| *s == subject);
        let freed = old.map_or(0, |i| self.entries[i].2);
        if self.bytes - freed + size > MAX_BYTES
            || (old.is_none() && self.entries.len() >= MAX_ENTRIES)
        {
            return Pushed::NoRoom;
        }
        if let Some(i) = old {
            self.entries.remove(i);
        }
        self.bytes = self.bytes - freed + size;
        self.entries.push_back((subject, body, size));
        if old.is_some() { Pushed::Coalesced } else { Pushed::Added }
    }

    /// The oldest entry.
    pub(crate) fn front(&self) -> Option<&Body> {
        self.entries.front().map(|(_, b, _)| b)
    }

    /// Removes the oldest entry.
    pub(crate) fn pop(&mut self) -> Option<Body> {
        let (_, body, size) = self.entries.pop_front()?;
        self.bytes -= size;
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_wire::msg;

    fn report(peer: u8, ms: u64) -> Body {
        Body::HeartbeatReport(msg::HeartbeatReport {
            peer: vec![peer; 16],
            silent_ms: ms,
            ..Default::default()
        })
    }

    #[test]
    fn coalesces_per_subject_and_keeps_the_newest_last() {
        let mut b = Backlog::default();
        let s = |p| Subject::of(&report(p, 0)).unwrap();
        assert_eq!(b.push(s(1), report(1, 1), 10), Pushed::Added);
        assert_eq!(b.push(s(2), report(2, 1), 10), Pushed::Added);
        assert_eq!(b.push(s(1), report(1, 2), 12), Pushed::Coalesced);
        assert_eq!((b.len(), b.bytes()), (2, 22));
        assert_eq!(b.pop(), Some(report(2, 1)));
        assert_eq!(b.pop(), Some(report(1, 2)));
        assert!(b.is_empty() && b.bytes() == 0);
        assert_eq!(Subject::of(&Body::LocalEvent(msg::LocalEvent::default())), None);
    }

    #[test]
    fn bounded_in_bytes_and_entries() {
        let mut b = Backlog::default();
        assert_eq!(b.push(Subject::Status, report(1, 1), MAX_BYTES), Pushed::Added);
        assert_eq!(b.push(Subject::Statistics, report(1, 1), 1), Pushed::NoRoom);
        // Replacing frees the old entry's bytes first.
        assert_eq!(b.push(Subject::Status, report(1, 2), MAX_BYTES), Pushed::Coalesced);
        let mut b = Backlog::default();
        for i in 0..MAX_ENTRIES {
            assert_eq!(b.push(Subject::Check(i.to_string()), report(1, 1), 1), Pushed::Added);
        }
        assert_eq!(b.push(Subject::Check("x".into()), report(1, 1), 1), Pushed::NoRoom);
        assert_eq!(b.push(Subject::Check("0".into()), report(1, 1), 1), Pushed::Coalesced);
    }
}
