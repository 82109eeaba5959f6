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
//! away than [`HORIZON`] is not handed out, so a flood cannot push the queue
//! arbitrarily far: the requester is told a wait spread over the horizon's second half (all
//! told the horizon itself, the 80,000 of a 100,000-node storm came back in the same quarter
//! second, a second storm).
//!
//! The slots follow the rate at which registrations complete ([`Pacer::completed`]: the
//! window's size over the mean time a registration is in flight, at least [`MIN_RATE`], at
//! most the budget's share): spaced at the budget's rate alone, a storm that the CMA registers
//! at a fraction of that rate came back faster than places freed, and every requester was told
//! `Busy` again and again (nine times each in a 20,000-node storm), each answer more load on
//! the socket the registrations need.
//!
//! **The window** ([`Window`]): a fixed rate cannot know how fast the machine is (the CMA
//! shares it, or the fleet answers slowly), and registrations admitted faster than they
//! complete pile up as retransmissions on both sides. So the CMA also counts the
//! registrations in flight — nodes it gave its key whose `Hello` it has not applied yet (the
//! first contact's X25519, the inbox append and commit, the ring join) — and answers further
//! key requests with `Busy` while [`WINDOW`] are in flight. Applying a node's `Hello` opens
//! its place again, so the pace follows what the CMA actually manages. What follows the
//! `Hello` (the peer set, the discovery schedule, the check set) is not counted: the reliable
//! connections bound it on their own, and a node whose ring neighbours keep changing during
//! the storm would otherwise hold its place for as long as the storm lasts. An entry that does
//! not complete within [`STALE`] is dropped (its node may be gone), so a sender that asks and
//! never registers holds a place for that long at most.
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

/// Registrations in flight at most (see the module doc): one second of the key-request
/// budget. With 1,000, a fleet slow to answer (each registration in flight for 5 s) was held
/// to 200 registrations per second while the CMA idled.
pub const WINDOW: usize = 4000;
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

    /// `node`'s `Hello` was applied at `now`: its registration is complete and its place free.
    /// Returns how long it was in flight, if it was.
    pub fn registered(&mut self, node: NodeId, now: Instant) -> Option<Duration> {
        let at = self.open.remove(&node)?;
        self.completed += 1;
        Some(now.saturating_duration_since(at))
    }

    /// The most registrations in flight.
    pub fn limit(&self) -> usize {
        self.limit
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

/// The slowest pace the completion rate can set: slots at least this many per second.
pub const MIN_RATE: f64 = 20.0;
/// Weight of one registration's time in flight in the running mean.
const TIME_WEIGHT: f64 = 0.02;
/// The golden ratio's fractional part, for [`Pacer::wait`]'s spread beyond the horizon.
const GOLDEN: f64 = 0.618_033_988_749_895;

/// Hands out the slots. See the module doc.
#[derive(Debug)]
pub struct Pacer {
    /// Seconds between slots now.
    spacing: f64,
    /// The fastest pace (the budget's share), in slots per second.
    max_rate: f64,
    horizon: Duration,
    /// The last slot handed out.
    last: Option<Instant>,
    told: u64,
    /// Running mean of a registration's time in flight, seconds (`None` before the first).
    mean_in_flight: Option<f64>,
    /// Requests told to come back beyond the queue so far.
    beyond: u64,
}

impl Pacer {
    /// Slots for a key-request budget of `limits`.
    pub fn new(limits: Limits) -> Pacer {
        Pacer::with_rate(limits.rate * PACE_SHARE, HORIZON)
    }

    /// Slots at most `rate` per second, none beyond `horizon`.
    pub fn with_rate(rate: f64, horizon: Duration) -> Pacer {
        let max_rate = rate.max(1e-3);
        Pacer {
            spacing: 1.0 / max_rate,
            max_rate,
            horizon,
            last: None,
            told: 0,
            mean_in_flight: None,
            beyond: 0,
        }
    }

    /// A registration completed after `in_flight` (key given → `Hello` applied) in a window
    /// of `window` places. By Little's law a full window frees `window / mean time in flight`
    /// places per second: the slots are spaced at that rate (at least [`MIN_RATE`], at most
    /// the budget's share), so a requester told to come back finds a free place instead of
    /// another `Busy`.
    pub fn completed(&mut self, in_flight: Duration, window: usize) {
        let t = in_flight.as_secs_f64();
        let mean = match self.mean_in_flight {
            Some(m) => m + TIME_WEIGHT * (t - m),
            None => t,
        };
        self.mean_in_flight = Some(mean);
        let rate = window as f64 / mean.max(1e-6);
        self.spacing = 1.0 / rate.clamp(MIN_RATE.min(self.max_rate), self.max_rate);
    }

    /// Slots per second now.
    pub fn rate(&self) -> f64 {
        1.0 / self.spacing
    }

    /// A request refused at `now`: how long its sender should wait before it asks again.
    pub fn wait(&mut self, now: Instant) -> Duration {
        let slot = match self.last {
            Some(t) => (t + Duration::from_secs_f64(self.spacing)).max(now),
            None => now,
        };
        let wait = slot - now;
        if wait > self.horizon {
            // Spread over the horizon's second half (a low-discrepancy sequence), so that the
            // requesters beyond the queue do not all come back at the same instant.
            self.beyond += 1;
            let f = (self.beyond as f64 * GOLDEN).fract();
            return self.horizon.mul_f64(0.5 + 0.5 * f);
        }
        self.last = Some(slot);
        self.told += 1;
        wait
    }

    /// Slots handed out so far.
    pub fn told(&self) -> u64 {
        self.told
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
    fn the_slots_follow_the_time_registrations_take() {
        let mut p = Pacer::with_rate(1000.0, HORIZON);
        // Fast registrations: the budget's share bounds the pace.
        p.completed(Duration::from_millis(5), 1000);
        assert!((p.rate() - 1000.0).abs() < 1e-9, "{}", p.rate());
        // Registrations taking 4 s each in a window of 1000 free 250 places per second.
        for _ in 0..2000 {
            p.completed(Duration::from_secs(4), 1000);
        }
        assert!((p.rate() - 250.0).abs() < 1.0, "{}", p.rate());
        let t0 = Instant::now();
        assert_eq!(p.wait(t0), Duration::ZERO);
        let w = p.wait(t0);
        assert!(w.abs_diff(Duration::from_millis(4)) < Duration::from_micros(100), "{w:?}");
        // Registrations that take forever: never slower than MIN_RATE.
        for _ in 0..2000 {
            p.completed(Duration::from_secs(3600), 1000);
        }
        assert!((p.rate() - MIN_RATE).abs() < 1e-9, "{}", p.rate());
        // One fast registration does not undo the mean at once ...
        p.completed(Duration::from_millis(1), 1000);
        assert!(p.rate() < 30.0);
        // ... but a run of them does.
        for _ in 0..2000 {
            p.completed(Duration::from_millis(1), 1000);
        }
        assert!((p.rate() - 1000.0).abs() < 1e-9, "{}", p.rate());
    }

    #[test]
    fn the_horizon_bounds_the_queue() {
        let mut p = Pacer::with_rate(8.0, Duration::from_secs(2));
        let t0 = Instant::now();
        for _ in 0..17 {
            assert!(p.wait(t0) <= Duration::from_secs(2));
        }
        // Slots 0 ..= 2 s are taken: the rest take no slot and are told waits spread over
        // the horizon's second half: every tenth of it holds about a tenth of them.
        let mut bins = [0u32; 5];
        for _ in 0..1000 {
            let w = p.wait(t0);
            assert!(w >= Duration::from_secs(1) && w <= Duration::from_secs(2), "{w:?}");
            bins[((w.as_secs_f64() - 1.0) * 5.0).min(4.0) as usize] += 1;
        }
        assert!(bins.iter().all(|&b| (180..=220).contains(&b)), "{bins:?}");
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
        w.registered(node(1), t0);
        w.registered(node(9), t0); // never admitted: nothing changes
        assert_eq!(w.len(), 2);
        assert!(w.admit(node(4), t0 + Duration::from_secs(1)));
        assert!(!w.admit(node(5), t0 + Duration::from_secs(4)));
        // Nodes 2 and 3 never completed: stale after 5 s, their places go to others.
        assert!(w.admit(node(5), t0 + Duration::from_secs(5)));
        assert!(w.admit(node(6), t0 + Duration::from_secs(5)));
        assert!(!w.admit(node(7), t0 + Duration::from_secs(5)), "4 is not stale yet");
        assert_eq!(w.counts(), (1, 2));
        for n in [4, 5, 6] {
            w.registered(node(n), t0);
        }
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
                    w.registered(node(n), now);
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
