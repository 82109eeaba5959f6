//! The registration pace, sans-IO: what the CMA answers a key request it will not serve now.
//!
//! A registration storm (a data centre back after a power cut, or wire mode's 100,000 nodes)
//! starts with every nanoprobe's `KeyRequest` at once. The sealer's key-request budget
//! (`assim_seal::Limits::KEY_REQUEST`) serves a burst and then its rate; before this module the
//! rest were dropped silently, and each requester backed off blindly (up to 8 s), so the storm
//! took far longer than the budget's rate allowed, in waves that overflowed the socket.
//!
//! Now a request the *global* budget refused gets a `Busy` telling the requester when to ask
//! again ([`Pacer::wait`]): the CMA hands out consecutive slots `1 / rate` apart, starting
//! now, so the requests come back spread at `rate` — a little below the budget's own rate, so
//! that the budget has tokens when they come and the jitter the nanoprobes add (always
//! later, never earlier, see `assim_seal::key_fetch`) does not make them miss. A slot further
//! away than [`Pacer::horizon`] is not handed out: the requester is told the horizon and is
//! not counted, so a flood cannot push the queue arbitrarily far.
//!
//! **The window** ([`Window`]): a fixed rate cannot know how fast the machine is (the CMA
//! shares it, or the fleet answers slowly), and registrations admitted faster than they
//! complete pile up as retransmissions on both sides. So the CMA also counts the
//! registrations in flight — nodes it gave its key whose registration is not complete yet
//! (not registered, or its connection still holds unacknowledged messages: the peer set, the
//! discovery schedule, the check set) — and answers further key requests with `Busy` while
//! [`WINDOW`] are in flight. Completions open the window again, so the pace follows what the
//! CMA and the fleet actually manage. An entry that does not complete within [`STALE`] is
//! dropped (its node may be gone), so a sender that asks and never registers holds a place for
//! that long at most.
//!
//! Safe against a hostile sender: a `Busy` costs no X25519 (the requester's key is only hashed
//! into the mac1), is smaller than the request (60 bytes against 88), and `Busy` answers have
//! their own budget ([`busy_limits`]); beyond it a refused request gets no answer, as before.
//! Requests over their *source's* allowance get no answer either: that source misbehaves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use assim_seal::Limits;
use assim_wire::NodeId;

/// Slots handed out at this share of the key-request budget's rate (see the module doc).
pub const PACE_SHARE: f64 = 0.9;
/// The furthest slot handed out.
pub const HORIZON: Duration = Duration::from_secs(60);

/// Registrations in flight at most (see the module doc).
pub const WINDOW: usize = 1000;
/// A registration in flight that has not completed after this long leaves the window.
pub const STALE: Duration = Duration::from_secs(5);

/// The registrations in flight. See the module doc.
#[derive(Debug)]
pub struct Window {
    limit: usize,
    stale: Duration,
    /// Node → when it was given the key.
    open: HashMap<NodeId, Instant>,
    completed: u64,
    expired: u64,
}

impl Window {
    pub fn new(limit: usize, stale: Duration) -> Window {
        Window { limit, stale, open: HashMap::new(), completed: 0, expired: 0 }
    }

    /// A key request from `node` at `now`: whether it may have the key now. A node already in
    /// flight may (its reply was lost); otherwise only while fewer than the limit are in
    /// flight. Stale entries leave first.
    pub fn admit(&mut self, node: NodeId, now: Instant) -> bool {
        if self.open.contains_key(&node) {
            return true;
        }
        if self.open.len() >= self.limit {
            let stale = self.stale;
            let before = self.open.len();
            self.open.retain(|_, at| now.saturating_duration_since(*at) < stale);
            self.expired += (before - self.open.len()) as u64;
            if self.open.len() >= self.limit {
                return false;
            }
        }
        self.open.insert(node, now);
        true
    }

    /// Removes every node in flight for which `complete` says its registration completed.
    pub fn complete(&mut self, mut complete: impl FnMut(NodeId) -> bool) {
        let before = self.open.len();
        self.open.retain(|n, _| !complete(*n));
        self.completed += (before - self.open.len()) as u64;
    }

    /// Registrations in flight now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Registrations completed, and dropped as stale, so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.completed, self.expired)
    }
}

/// The budget of `Busy` answers: ten per key request the budget serves, at most.
pub fn busy_limits(key_requests: Limits) -> Limits {
    Limits {
        rate: key_requests.rate * 10.0,
        burst: key_requests.burst * 10.0,
        source_rate: key_requests.source_rate,
        source_burst: key_requests.source_burst,
        sources: key_requests.sources,
    }
}

/// Hands out the slots. See the module doc.
#[derive(Debug)]
pub struct Pacer {
    /// Seconds between slots.
    spacing: f64,
    horizon: Duration,
    /// The last slot handed out.
    last: Option<Instant>,
    told: u64,
}

impl Pacer {
    /// Slots for a key-request budget of `limits`.
    pub fn new(limits: Limits) -> Pacer {
        Pacer::with_rate(limits.rate * PACE_SHARE, HORIZON)
    }

    /// Slots `1 / rate` seconds apart, none beyond `horizon`.
    pub fn with_rate(rate: f64, horizon: Duration) -> Pacer {
        Pacer { spacing: 1.0 / rate.max(1e-3), horizon, last: None, told: 0 }
    }

    /// A request refused at `now`: how long its sender should wait before it asks again.
    pub fn wait(&mut self, now: Instant) -> Duration {
        let slot = match self.last {
            Some(t) => (t + Duration::from_secs_f64(self.spacing)).max(now),
            None => now,
        };
        let wait = slot - now;
        if wait > self.horizon {
            return self.horizon;
        }
        self.last = Some(slot);
        self.told += 1;
        wait
    }

    /// Slots handed out so far.
    pub fn told(&self) -> u64 {
        self.told
    }

    /// The furthest slot handed out (or the horizon).
    pub fn horizon(&self) -> Duration {
        self.horizon
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_storm_is_spread_at_the_rate() {
        let mut p = Pacer::with_rate(1000.0, HORIZON);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..5000).map(|_| p.wait(t0)).collect();
        assert_eq!(waits[0], Duration::ZERO);
        for (i, w) in waits.iter().enumerate() {
            let want = Duration::from_secs_f64(i as f64 / 1000.0);
            assert!(w.abs_diff(want) < Duration::from_micros(50), "slot {i}: {w:?}");
        }
        assert_eq!(p.told(), 5000);
        // Later refusals queue behind the slots already handed out ...
        let w = p.wait(t0 + Duration::from_secs(1));
        assert!(w.abs_diff(Duration::from_secs(4)) < Duration::from_millis(1), "{w:?}");
        // ... and once the queue has passed, a refusal is told to come back at once.
        assert_eq!(p.wait(t0 + Duration::from_secs(10)), Duration::ZERO);
        // ... but never closer than the spacing to the slot before.
        let w = p.wait(t0 + Duration::from_secs(10) + Duration::from_micros(1));
        assert_eq!(w, Duration::from_micros(999));
    }

    #[test]
    fn the_horizon_bounds_the_queue() {
        let mut p = Pacer::with_rate(8.0, Duration::from_secs(2));
        let t0 = Instant::now();
        for _ in 0..17 {
            assert!(p.wait(t0) <= Duration::from_secs(2));
        }
        // Slots 0 ..= 2 s are taken: the rest are told the horizon and take no slot.
        for _ in 0..1000 {
            assert_eq!(p.wait(t0), Duration::from_secs(2));
        }
        assert_eq!(p.told(), 17);
        assert_eq!(p.wait(t0 + Duration::from_secs(1)), Duration::from_millis(1125));
    }

    #[test]
    fn busy_budget_is_ten_times_the_key_request_budget() {
        let l = busy_limits(Limits::KEY_REQUEST);
        assert_eq!(l.rate, Limits::KEY_REQUEST.rate * 10.0);
        assert_eq!(l.source_rate, Limits::KEY_REQUEST.source_rate);
        let p = Pacer::new(Limits::KEY_REQUEST);
        assert!((p.spacing - 1.0 / (Limits::KEY_REQUEST.rate * PACE_SHARE)).abs() < 1e-12);
    }

    fn node(n: u32) -> NodeId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_be_bytes());
        NodeId(b)
    }

    #[test]
    fn the_window_holds_the_limit_until_registrations_complete_or_go_stale() {
        let mut w = Window::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(w.admit(node(1), t0) && w.admit(node(2), t0) && w.admit(node(3), t0));
        assert!(!w.admit(node(4), t0), "full");
        assert!(w.admit(node(2), t0), "a node in flight may ask again");
        w.complete(|n| n == node(1));
        assert_eq!(w.len(), 2);
        assert!(w.admit(node(4), t0 + Duration::from_secs(1)));
        assert!(!w.admit(node(5), t0 + Duration::from_secs(4)));
        // Nodes 2 and 3 never completed: stale after 5 s, their places go to others.
        assert!(w.admit(node(5), t0 + Duration::from_secs(5)));
        assert!(w.admit(node(6), t0 + Duration::from_secs(5)));
        assert!(!w.admit(node(7), t0 + Duration::from_secs(5)), "4 is not stale yet");
        assert_eq!(w.counts(), (1, 2));
        w.complete(|_| true);
        assert!(w.is_empty());
        assert_eq!(w.counts(), (4, 2));
    }

    proptest! {
        /// Whatever the requests and completions, the window never holds more than its limit.
        #[test]
        fn the_window_is_bounded(ops in proptest::collection::vec((0u32..50, any::<bool>(), 0u64..3000), 1..400)) {
            let mut w = Window::new(10, Duration::from_secs(1));
            let t0 = Instant::now();
            let mut now = t0;
            for (n, done, dt) in ops {
                now += Duration::from_millis(dt);
                if done {
                    w.complete(|x| x == node(n));
                } else {
                    let _ = w.admit(node(n), now);
                }
                prop_assert!(w.len() <= 10);
            }
        }

        /// Whatever the arrival times, no two slots are closer than the spacing and no wait
        /// exceeds the horizon.
        #[test]
        fn slots_never_crowd(gaps in proptest::collection::vec(0u64..5_000, 1..300)) {
            let mut p = Pacer::with_rate(500.0, Duration::from_millis(200));
            let t0 = Instant::now();
            let mut now = t0;
            let mut slots = Vec::new();
            for g in gaps {
                now += Duration::from_micros(g);
                let told = p.told();
                let w = p.wait(now);
                prop_assert!(w <= Duration::from_millis(200));
                if p.told() > told {
                    slots.push(now + w);
                }
            }
            for pair in slots.windows(2) {
                prop_assert!(pair[1] >= pair[0] + Duration::from_micros(1999));
            }
        }
    }
}
