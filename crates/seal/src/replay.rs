//! The anti-replay window kept for each peer.
//!
//! A sender numbers its datagrams with `(session, counter)`: the session grows across restarts,
//! the counter grows within a session. The receiver remembers, per peer, the newest session it
//! has authenticated, the highest counter seen in it, and a bitmap of which of the
//! [`ReplayWindow::WINDOW`] counters at and below the highest were seen:
//!
//! ```text
//! bit i of the bitmap = counter (highest - i) was accepted      (bit 0 = highest itself)
//! ```
//!
//! Rules, in order:
//! - no session known yet: accept (first contact);
//! - `session > current`: the peer restarted; accept, and start a fresh window;
//! - `session < current`: refuse as stale;
//! - `counter > highest`: accept, slide the window;
//! - `highest - counter >= WINDOW`: refuse (too old to tell whether it is a replay);
//! - the counter's bit is set: refuse (a replay); otherwise accept.
//!
//! [`ReplayWindow::check`] never changes state; [`ReplayWindow::commit`] records a datagram and is
//! called only after the AEAD authenticated it, so forged datagrams cannot move the window.
//!
//! The window is 256 counters wide (more than the usual 128) because a sender's counter is shared
//! by all its peers: a CMA sending to many nodes advances its counter between two datagrams to
//! the same node, so the window spans fewer datagrams per receiver than counters. A datagram
//! refused as too old is indistinguishable from a lost one, which every user tolerates.
//!
//! # One identity, several senders: [`SourceWindows`]
//!
//! The CMA's packet readers (issue 14) share one identity but each has its own session and its
//! own address, and a nanoprobe hears from several of them: its current reader's frames, and
//! CMA probes from any reader. One window per identity would refuse every reader but the newest
//! (`session < current`). [`SourceWindows`] keeps one window per *session*, each in a *slot*:
//! one slot per listed address (the nanoprobe's CMA address list, at most
//! [`MAX_SOURCES`]) and one shared by every address not listed. Rules for `(session, counter)`
//! from `src`, in order:
//!
//! 1. a slot holds `session`: that window's rules above (whatever `src` is: the same reader
//!    may answer from another of its addresses);
//! 2. `session` is *retired* (a slot held it and gave it up for a newer one) or at or below the
//!    *floor*: refuse as stale;
//! 3. `src` is listed: refuse as stale if its slot holds a newer session (a restart at that
//!    address is always newer); else accept, and the slot takes `session` with a fresh window,
//!    retiring the session it held;
//! 4. `src` is not listed: accept only a session newer than every session held (the rule of a
//!    single window: following the CMA's newest word to an unlisted address), into the shared
//!    slot.
//!
//! Safety: every `(session, counter)` ever accepted is in the window of the one slot that holds
//! `session` (sessions are held by one slot at a time), or `session` is retired or at or below
//! the floor, since a slot gives up a session only by retiring it. So a captured datagram
//! replayed later, from its own address or spoofed from any other, meets the window that
//! already counted it (rule 1) or is stale (rule 2): refused. The retired set keeps the
//! [`SourceWindows::RETIRED`] newest; an older one moves into the floor (the highest session
//! dropped from the set), so memory stays bounded. The cost of the bound: a reader this node has
//! never heard from, whose session is at or below the floor (more than 64 newer sessions
//! retired since it started), is refused until it restarts; a nanoprobe hears of a reader's
//! restart only from that reader, so that takes 64 observed restarts of other readers.

use std::collections::BTreeSet;
use std::net::SocketAddr;

/// Why [`ReplayWindow::check`] refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The counter was already accepted, or is too old for the window.
    Replayed,
    /// The session is older than the newest one seen from this peer.
    StaleSession,
}

const WORDS: usize = 4;

/// Per-peer replay state. Starts empty (accepts anything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// `(session, highest counter)` once a datagram was committed.
    current: Option<(u64, u64)>,
    bitmap: [u64; WORDS],
}

impl ReplayWindow {
    /// How many counters (the highest included) the window remembers.
    pub const WINDOW: u64 = (WORDS * 64) as u64;

    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// The session of the last committed datagram, if any.
    pub fn session(&self) -> Option<u64> {
        self.current.map(|(s, _)| s)
    }

    /// Whether a datagram numbered `(session, counter)` would be accepted. Changes nothing.
    pub fn check(&self, session: u64, counter: u64) -> Result<(), ReplayError> {
        let Some((cur_session, highest)) = self.current else {
            return Ok(());
        };
        if session > cur_session {
            return Ok(());
        }
        if session < cur_session {
            return Err(ReplayError::StaleSession);
        }
        if counter > highest {
            return Ok(());
        }
        let age = highest - counter;
        if age >= Self::WINDOW || self.bit(age) {
            return Err(ReplayError::Replayed);
        }
        Ok(())
    }

    /// Records an authenticated datagram. Call only after [`check`](Self::check) accepted it.
    pub fn commit(&mut self, session: u64, counter: u64) {
        match self.current {
            Some((cur_session, highest)) if cur_session == session => {
                if counter > highest {
                    self.shift(counter - highest);
                    self.bitmap[0] |= 1;
                    self.current = Some((session, counter));
                } else {
                    let age = highest - counter;
                    if age < Self::WINDOW {
                        self.bitmap[(age / 64) as usize] |= 1 << (age % 64);
                    }
                }
            }
            // First contact or a newer session: a fresh window holding just this counter.
            _ => {
                self.current = Some((session, counter));
                self.bitmap = [0; WORDS];
                self.bitmap[0] = 1;
            }
        }
    }

    fn bit(&self, age: u64) -> bool {
        self.bitmap[(age / 64) as usize] & (1 << (age % 64)) != 0
    }

    /// Ages every bit by `by` positions (towards higher indices); bits that fall off are dropped.
    fn shift(&mut self, by: u64) {
        if by >= Self::WINDOW {
            self.bitmap = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        let old = self.bitmap;
        for i in (0..WORDS).rev() {
            let mut w = 0u64;
            if i >= words {
                w = old[i - words] << bits;
                if bits > 0 && i > words {
                    w |= old[i - words - 1] >> (64 - bits);
                }
            }
            self.bitmap[i] = w;
        }
    }
}

/// The most listed addresses of a [`SourceWindows`] (as many as a join token carries).
pub const MAX_SOURCES: usize = crate::token::MAX_ADDRS;

/// Replay state for one identity that sends from several addresses, each sender with its own
/// session (the CMA's packet readers). See the module doc for the rules and why they are safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceWindows {
    /// The listed addresses; slot `i` belongs to `listed[i]`, slot `listed.len()` to every
    /// address not listed.
    listed: Vec<SocketAddr>,
    slots: Vec<ReplayWindow>,
    /// Sessions given up by a slot for a newer one (the newest [`Self::RETIRED`]).
    retired: BTreeSet<u64>,
    /// The highest session dropped from `retired`: it and every session below, unless held,
    /// are refused.
    floor: Option<u64>,
}

impl SourceWindows {
    /// How many retired sessions are remembered exactly (8 bytes each).
    pub const RETIRED: usize = 64;

    /// Empty windows for `listed` (duplicates count once; at most [`MAX_SOURCES`], else
    /// `None`).
    pub fn new(listed: &[SocketAddr]) -> Option<SourceWindows> {
        let mut l: Vec<SocketAddr> = Vec::with_capacity(listed.len());
        for a in listed {
            if !l.contains(a) {
                l.push(*a);
            }
        }
        if l.len() > MAX_SOURCES {
            return None;
        }
        let slots = vec![ReplayWindow::new(); l.len() + 1];
        Some(SourceWindows { listed: l, slots, retired: BTreeSet::new(), floor: None })
    }

    /// These windows over another address list: the slots of addresses still listed are kept,
    /// the sessions of the others retired (so nothing they accepted can be accepted again);
    /// `None` for more than [`MAX_SOURCES`] addresses (nothing changed).
    pub fn relist(&mut self, listed: &[SocketAddr]) -> Option<()> {
        let mut next = SourceWindows::new(listed)?;
        next.retired = std::mem::take(&mut self.retired);
        next.floor = self.floor;
        let unlisted = self.slots.len() - 1;
        for (i, w) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            let keep = if i == unlisted {
                Some(next.listed.len())
            } else {
                next.listed.iter().position(|a| *a == self.listed[i])
            };
            match (keep, w.session()) {
                (Some(j), _) => next.slots[j] = w,
                (None, Some(s)) => next.retire(s),
                (None, None) => {}
            }
        }
        *self = next;
        Some(())
    }

    /// Windows that start from one window's state (a peer that had one), held in the shared
    /// slot.
    pub fn from_window(listed: &[SocketAddr], window: ReplayWindow) -> Option<SourceWindows> {
        let mut w = SourceWindows::new(listed)?;
        *w.slots.last_mut().expect("the shared slot") = window;
        Some(w)
    }

    /// The listed addresses.
    pub fn listed(&self) -> &[SocketAddr] {
        &self.listed
    }

    /// The session each slot holds: one per listed address, in order, then the shared slot's.
    pub fn sessions(&self) -> Vec<Option<u64>> {
        self.slots.iter().map(ReplayWindow::session).collect()
    }

    /// Retired sessions remembered, and the floor.
    pub fn retired(&self) -> (usize, Option<u64>) {
        (self.retired.len(), self.floor)
    }

    /// Whether `(session, counter)` from `src` (`None`: unknown, as an address not listed)
    /// would be accepted, and into which slot. Changes nothing.
    pub fn check(
        &self,
        src: Option<SocketAddr>,
        session: u64,
        counter: u64,
    ) -> Result<usize, ReplayError> {
        if let Some(i) = self.slots.iter().position(|w| w.session() == Some(session)) {
            return self.slots[i].check(session, counter).map(|()| i);
        }
        if self.retired.contains(&session) || self.floor.is_some_and(|f| session <= f) {
            return Err(ReplayError::StaleSession);
        }
        match src.and_then(|a| self.listed.iter().position(|l| *l == a)) {
            Some(i) => {
                if self.slots[i].session().is_some_and(|held| session < held) {
                    return Err(ReplayError::StaleSession);
                }
                Ok(i)
            }
            None => {
                if self.slots.iter().any(|w| w.session().is_some_and(|held| session < held)) {
                    return Err(ReplayError::StaleSession);
                }
                Ok(self.listed.len())
            }
        }
    }

    /// Records an authenticated datagram into the slot [`check`](Self::check) named.
    pub fn commit(&mut self, slot: usize, session: u64, counter: u64) {
        let Some(w) = self.slots.get_mut(slot) else { return };
        let old = w.session().filter(|s| *s != session);
        w.commit(session, counter);
        if let Some(old) = old {
            self.retire(old);
        }
    }

    fn retire(&mut self, session: u64) {
        self.retired.insert(session);
        while self.retired.len() > Self::RETIRED {
            let oldest = self.retired.pop_first().expect("non-empty");
            self.floor = Some(self.floor.map_or(oldest, |f| f.max(oldest)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_rules() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(5, 10), Ok(()));
        w.commit(5, 10);
        assert_eq!(w.check(5, 10), Err(ReplayError::Replayed));
        assert_eq!(w.check(5, 9), Ok(()));
        w.commit(5, 9);
        assert_eq!(w.check(5, 9), Err(ReplayError::Replayed));
        assert_eq!(w.check(5, 11), Ok(()));
        w.commit(5, 10 + ReplayWindow::WINDOW);
        assert_eq!(w.check(5, 10), Err(ReplayError::Replayed), "too old");
        assert_eq!(w.check(5, 11), Ok(()), "just inside the window");
        assert_eq!(w.check(4, 1_000_000), Err(ReplayError::StaleSession));
        assert_eq!(w.check(6, 1), Ok(()));
        w.commit(6, 1);
        assert_eq!(w.session(), Some(6));
        assert_eq!(w.check(6, 1), Err(ReplayError::Replayed));
        assert_eq!(w.check(5, 10_000), Err(ReplayError::StaleSession));
    }

    /// The trivial model: every accepted (session, counter) in a set, plus the same rules.
    #[derive(Default)]
    struct Model {
        session: Option<u64>,
        seen: BTreeSet<u64>,
    }

    impl Model {
        fn offer(&mut self, session: u64, counter: u64) -> Result<(), ReplayError> {
            match self.session {
                Some(s) if session < s => return Err(ReplayError::StaleSession),
                Some(s) if session == s => {
                    let highest = *self.seen.iter().next_back().unwrap();
                    if counter + ReplayWindow::WINDOW <= highest || self.seen.contains(&counter) {
                        return Err(ReplayError::Replayed);
                    }
                }
                _ => {
                    self.session = Some(session);
                    self.seen.clear();
                }
            }
            self.seen.insert(counter);
            Ok(())
        }
    }

    fn src(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 1984))
    }

    /// Readers X (at 1) and Y (at 2, an older session) both accepted; a datagram of X replayed
    /// from X's address, from Y's and from an unlisted one is refused; an unlisted address
    /// gets only the newest session; a restart retires the old session everywhere.
    #[test]
    fn source_windows_one_window_per_reader() {
        let mut w = SourceWindows::new(&[src(1), src(2)]).unwrap();
        let offer = |w: &mut SourceWindows, a: Option<SocketAddr>, s, c| {
            let slot = w.check(a, s, c)?;
            w.commit(slot, s, c);
            Ok::<usize, ReplayError>(slot)
        };
        assert_eq!(offer(&mut w, Some(src(1)), 100, 1), Ok(0));
        assert_eq!(offer(&mut w, Some(src(2)), 50, 1), Ok(1), "an older reader has its own");
        assert_eq!(offer(&mut w, Some(src(1)), 100, 2), Ok(0));
        for a in [Some(src(1)), Some(src(2)), Some(src(9)), None] {
            assert_eq!(w.check(a, 100, 1), Err(ReplayError::Replayed), "{a:?}");
            assert_eq!(w.check(a, 50, 1), Err(ReplayError::Replayed), "{a:?}");
        }
        // The same session from another address (a reader answering from another of its
        // addresses): the session's own window.
        assert_eq!(offer(&mut w, Some(src(2)), 100, 3), Ok(0));
        // Older than the address's own session: stale; unlisted: only the newest.
        assert_eq!(w.check(Some(src(2)), 40, 1), Err(ReplayError::StaleSession));
        assert_eq!(w.check(Some(src(9)), 60, 1), Err(ReplayError::StaleSession));
        assert_eq!(offer(&mut w, Some(src(9)), 150, 1), Ok(2));
        assert_eq!(w.sessions(), [Some(100), Some(50), Some(150)]);
        // X restarts at its address: 100 is retired, and a datagram of it never seen here is
        // refused from any address.
        assert_eq!(offer(&mut w, Some(src(1)), 200, 1), Ok(0));
        for a in [Some(src(1)), Some(src(2)), Some(src(9)), None] {
            assert_eq!(w.check(a, 100, 99), Err(ReplayError::StaleSession), "{a:?}");
        }
        assert_eq!(w.retired(), (1, None));
        // Y restarts with a session older than X's: its own slot takes it.
        assert_eq!(offer(&mut w, Some(src(2)), 80, 1), Ok(1));
        assert_eq!(w.check(Some(src(2)), 50, 2), Err(ReplayError::StaleSession));
        assert_eq!(w.sessions(), [Some(200), Some(80), Some(150)]);
        assert!(SourceWindows::new(&vec![src(1); 40]).is_some(), "duplicates count once");
        let many: Vec<SocketAddr> = (0..=MAX_SOURCES as u8).map(src).collect();
        assert!(SourceWindows::new(&many).is_none());
    }

    /// Past [`SourceWindows::RETIRED`] retired sessions the oldest move into the floor: refused
    /// with every session below, unless held; one above it that was never retired is new.
    #[test]
    fn source_windows_retired_sessions_are_bounded_by_a_floor() {
        let mut w = SourceWindows::new(&[src(1), src(2)]).unwrap();
        for s in (10..=1000).step_by(10) {
            let slot = w.check(Some(src(1)), s, 1).unwrap();
            w.commit(slot, s, 1);
        }
        // 99 retired (10..=990): the 64 newest kept (360..=990), the floor at 350.
        assert_eq!(w.retired(), (SourceWindows::RETIRED, Some(350)));
        assert_eq!(w.check(Some(src(2)), 350, 1), Err(ReplayError::StaleSession));
        assert_eq!(w.check(Some(src(2)), 20, 1), Err(ReplayError::StaleSession));
        assert_eq!(w.check(Some(src(2)), 360, 1), Err(ReplayError::StaleSession));
        assert_eq!(w.check(Some(src(2)), 355, 1), Ok(1));
        assert_eq!(w.check(Some(src(1)), 1000, 2), Ok(0));
    }

    /// Relisting keeps the slots of addresses still listed and retires the others' sessions.
    #[test]
    fn source_windows_relist_forgets_nothing_it_accepted() {
        let mut one = ReplayWindow::new();
        one.commit(7, 1);
        let mut w = SourceWindows::from_window(&[src(1)], one).unwrap();
        assert_eq!(w.check(Some(src(1)), 7, 1), Err(ReplayError::Replayed));
        let slot = w.check(Some(src(1)), 5, 1).unwrap();
        w.commit(slot, 5, 1);
        w.relist(&[src(2), src(3)]).unwrap();
        assert_eq!(w.listed(), [src(2), src(3)]);
        assert_eq!(w.sessions(), [None, None, Some(7)]);
        assert_eq!(w.check(Some(src(2)), 5, 2), Err(ReplayError::StaleSession), "retired");
        assert_eq!(w.check(None, 7, 1), Err(ReplayError::Replayed));
        let many: Vec<SocketAddr> = (0..=MAX_SOURCES as u8).map(src).collect();
        assert_eq!(w.relist(&many), None);
        assert_eq!(w.listed(), [src(2), src(3)], "unchanged");
    }

    /// The model of [`SourceWindows`] with unbounded memory: per slot the session and every
    /// counter accepted in it, every retired session, and every pair ever accepted.
    struct SourcesModel {
        slots: Vec<Option<(u64, BTreeSet<u64>)>>,
        retired: BTreeSet<u64>,
        ever: BTreeSet<(u64, u64)>,
    }

    impl SourcesModel {
        /// `listed`: the slot of the source, `None` for an unlisted one.
        fn offer(
            &mut self,
            listed: Option<usize>,
            session: u64,
            counter: u64,
        ) -> Result<(), ReplayError> {
            let held = self.slots.iter().position(|s| s.as_ref().is_some_and(|s| s.0 == session));
            if let Some(i) = held {
                let seen = &mut self.slots[i].as_mut().unwrap().1;
                let highest = *seen.iter().next_back().unwrap();
                if counter + ReplayWindow::WINDOW <= highest || seen.contains(&counter) {
                    return Err(ReplayError::Replayed);
                }
                seen.insert(counter);
                return Ok(());
            }
            if self.retired.contains(&session) {
                return Err(ReplayError::StaleSession);
            }
            let newer =
                |s: &Option<(u64, BTreeSet<u64>)>| s.as_ref().is_some_and(|s| s.0 > session);
            let slot = match listed {
                Some(i) if newer(&self.slots[i]) => return Err(ReplayError::StaleSession),
                Some(i) => i,
                None if self.slots.iter().any(newer) => return Err(ReplayError::StaleSession),
                None => self.slots.len() - 1,
            };
            if let Some((old, _)) = self.slots[slot].take() {
                self.retired.insert(old);
            }
            self.slots[slot] = Some((session, BTreeSet::from([counter])));
            Ok(())
        }
    }

    proptest! {
        /// Any schedule of datagrams from listed, unlisted and unknown sources, forged ones
        /// included: the windows decide as the model does, and no `(session, counter)` is
        /// ever accepted twice, whatever address it comes from.
        #[test]
        fn source_windows_match_the_model_and_never_accept_twice(
            n in 1usize..4,
            ops in proptest::collection::vec(
                (0usize..6, 0u64..8, 0u64..600, any::<bool>()), 1..400),
        ) {
            let listed: Vec<SocketAddr> = (1..=n as u8).map(src).collect();
            let mut w = SourceWindows::new(&listed).unwrap();
            let mut m = SourcesModel {
                slots: vec![None; n + 1],
                retired: BTreeSet::new(),
                ever: BTreeSet::new(),
            };
            for (from, session, counter, authentic) in ops {
                // 0..n: listed; n: unlisted; beyond: no address known.
                let addr = match from {
                    i if i < n => Some(listed[i]),
                    i if i == n => Some(src(200)),
                    _ => None,
                };
                let got = w.check(addr, session, counter);
                if !authentic {
                    continue;
                }
                let want = m.offer((from < n).then_some(from), session, counter);
                prop_assert_eq!(got.map(|_| ()), want, "from {} ({} {})", from, session, counter);
                if let Ok(slot) = got {
                    prop_assert!(m.ever.insert((session, counter)), "accepted twice");
                    w.commit(slot, session, counter);
                }
            }
        }

        #[test]
        fn matches_the_model(
            ops in proptest::collection::vec((0u64..3, 0u64..700, any::<bool>()), 1..400)
        ) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            for (session, counter, authentic) in ops {
                let got = w.check(session, counter);
                if !authentic {
                    // A forged datagram: checked, then the AEAD fails, so nothing is committed.
                    continue;
                }
                let want = m.offer(session, counter);
                prop_assert_eq!(got, want, "session {} counter {}", session, counter);
                if got.is_ok() {
                    w.commit(session, counter);
                }
            }
        }
    }
}
