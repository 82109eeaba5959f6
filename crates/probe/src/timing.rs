//! Heartbeat timing: how often we send, when a silent peer is late, when it is dead.
//!
//! Invariant (checked by [`Timing::validate`]): `0 < interval ≤ warn < dead ≤ MAX_DEAD`. The core
//! relies on `interval > 0` for progress (every deadline it schedules lies strictly after `now`).

use std::time::Duration;

use crate::PeerSetError;

/// The longest dead time a peer set may ask for. Longer than this and "no news" stops meaning
/// anything; it also bounds the martian rate-limit window.
pub const MAX_DEAD: Duration = Duration::from_secs(3600);

/// Heartbeat timing of one peer set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Time between two heartbeats to each peer.
    pub interval: Duration,
    /// Silence after which a peer is reported late.
    pub warn: Duration,
    /// Silence after which a peer is reported dead.
    pub dead: Duration,
}

impl Default for Timing {
    /// 1 s / 1.5 s / 2.5 s: two heartbeats missed, with half an interval to spare, make a peer
    /// dead; one makes it late (kept at the nanoprobe). The CMA's corroboration (a second
    /// neighbour and its own probes) is what makes so short a dead time safe (issue 18;
    /// docs/benchmarks.md, "Detection time against dead time").
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(1),
            warn: Duration::from_millis(1500),
            dead: Duration::from_millis(2500),
        }
    }
}

impl Timing {
    /// Timing from the millisecond fields of a wire `PeerSet`.
    pub fn from_millis(interval_ms: u64, warn_ms: u64, dead_ms: u64) -> Self {
        Timing {
            interval: Duration::from_millis(interval_ms),
            warn: Duration::from_millis(warn_ms),
            dead: Duration::from_millis(dead_ms),
        }
    }

    /// Checks `0 < interval ≤ warn < dead ≤ 1 hour`.
    pub fn validate(&self) -> Result<(), PeerSetError> {
        if self.interval.is_zero() {
            return Err(PeerSetError::ZeroInterval);
        }
        if self.warn < self.interval {
            return Err(PeerSetError::WarnBeforeInterval {
                interval: self.interval,
                warn: self.warn,
            });
        }
        if self.dead <= self.warn {
            return Err(PeerSetError::DeadNotAfterWarn { warn: self.warn, dead: self.dead });
        }
        if self.dead > MAX_DEAD {
            return Err(PeerSetError::DeadTooLong { dead: self.dead, max: MAX_DEAD });
        }
        Ok(())
    }

    /// The nearest valid timing: used by `Heartbeats::apply` so that a hand-built, unvalidated
    /// `DesiredPeers` can never stall the core (a zero interval would schedule the next round at
    /// `now` forever). Valid timings are returned unchanged.
    pub(crate) fn clamped(self) -> Timing {
        const MIN_STEP: Duration = Duration::from_millis(1);
        let dead = self.dead.clamp(MIN_STEP * 3, MAX_DEAD);
        let warn = self.warn.clamp(MIN_STEP * 2, dead - MIN_STEP);
        let interval = self.interval.clamp(MIN_STEP, warn);
        Timing { interval, warn, dead }
    }

    /// The interval in whole milliseconds, as carried in heartbeats.
    pub(crate) fn interval_ms(&self) -> u64 {
        millis(self.interval)
    }
}

/// Whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: u64, w: u64, d: u64) -> Timing {
        Timing::from_millis(i, w, d)
    }

    #[test]
    fn default_is_valid() {
        let d = Timing::default();
        assert_eq!(d, t(1000, 1500, 2500));
        d.validate().unwrap();
    }

    #[test]
    fn validate_rejects_each_case() {
        assert!(matches!(t(0, 3000, 5000).validate(), Err(PeerSetError::ZeroInterval)));
        assert!(matches!(
            t(1000, 999, 5000).validate(),
            Err(PeerSetError::WarnBeforeInterval { .. })
        ));
        assert!(matches!(
            t(1000, 3000, 3000).validate(),
            Err(PeerSetError::DeadNotAfterWarn { .. })
        ));
        assert!(matches!(
            t(1000, 3000, 3_600_001).validate(),
            Err(PeerSetError::DeadTooLong { .. })
        ));
        // Boundaries that are allowed.
        t(1000, 1000, 1001).validate().unwrap();
        t(1, 1, 3_600_000).validate().unwrap();
    }

    #[test]
    fn clamped_is_valid_and_identity_on_valid() {
        for x in [t(0, 0, 0), t(5, 1, 0), t(10, 10, 10), t(1, 2, u64::MAX), t(9, 3, 2)] {
            x.clamped().validate().unwrap();
        }
        let ok = t(250, 750, 1250);
        assert_eq!(ok.clamped(), ok);
    }
}
