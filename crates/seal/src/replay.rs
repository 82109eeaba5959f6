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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

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

    proptest! {
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
