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
//! Safe against a hostile sender: a `Busy` costs no X25519 (the requester's key is only hashed
//! into the mac1), is smaller than the request (60 bytes against 88), and `Busy` answers have
//! their own budget ([`busy_limits`]); beyond it a refused request gets no answer, as before.
//! Requests over their *source's* allowance get no answer either: that source misbehaves.

use std::time::{Duration, Instant};

use assim_seal::Limits;

/// Slots handed out at this share of the key-request budget's rate (see the module doc).
pub const PACE_SHARE: f64 = 0.9;
/// The furthest slot handed out.
pub const HORIZON: Duration = Duration::from_secs(60);

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
            Some(t) if t >= now => t + Duration::from_secs_f64(self.spacing),
            _ => now,
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

    proptest! {
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
