//! Rate limiting of martian reports.
//!
//! A martian is an authenticated heartbeat from a node that is not one of our peers. We report
//! each sender at most once per window (the dead time). The memory is bounded: at most
//! [`MARTIAN_MEMORY`] senders are remembered; when full, the one reported longest ago is forgotten
//! (it may then be reported again early — the cost of a bound). Entries are kept in order of
//! their last report, so the front is always the oldest; expired entries are dropped from the
//! front as we go, and an idle limiter holds no heap memory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use assim_wire::NodeId;

/// How many martian senders are remembered for rate limiting.
pub const MARTIAN_MEMORY: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct MartianLimiter {
    /// (sender, when last reported), oldest report first.
    recent: VecDeque<(NodeId, Instant)>,
}

impl MartianLimiter {
    /// Whether a martian heartbeat from `from` at `now` should be reported; records it if so.
    pub(crate) fn should_report(&mut self, from: NodeId, now: Instant, window: Duration) -> bool {
        let expired = |at: Instant| now.saturating_duration_since(at) >= window;
        while self.recent.front().is_some_and(|&(_, at)| expired(at)) {
            self.recent.pop_front();
        }
        if let Some(i) = self.recent.iter().position(|&(id, _)| id == from) {
            if !expired(self.recent[i].1) {
                return false;
            }
            // Not at the front yet expired: only possible if time went backwards for an earlier
            // entry; refresh it all the same.
            self.recent.remove(i);
        }
        if self.recent.len() >= MARTIAN_MEMORY {
            self.recent.pop_front();
        }
        if self.recent.is_empty() && self.recent.capacity() > 16 {
            // A burst is over; give the memory back (100k cores share one simulator process).
            self.recent = VecDeque::new();
        }
        self.recent.push_back((from, now));
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(5);

    #[test]
    fn once_per_window_per_sender() {
        let t0 = Instant::now();
        let mut m = MartianLimiter::default();
        let a = NodeId([1; 16]);
        let b = NodeId([2; 16]);
        assert!(m.should_report(a, t0, W));
        assert!(m.should_report(b, t0, W));
        assert!(!m.should_report(a, t0 + Duration::from_millis(4999), W));
        assert!(m.should_report(a, t0 + W, W));
        assert!(!m.should_report(a, t0 + W + Duration::from_secs(1), W));
    }

    #[test]
    fn memory_is_bounded_and_evicts_oldest() {
        let t0 = Instant::now();
        let mut m = MartianLimiter::default();
        for i in 0..1000u32 {
            let mut id = [0; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            assert!(m.should_report(NodeId(id), t0 + Duration::from_micros(i.into()), W));
            assert!(m.len() <= MARTIAN_MEMORY);
        }
        // The newest are still remembered.
        let mut id = [0; 16];
        id[..4].copy_from_slice(&999u32.to_be_bytes());
        assert!(!m.should_report(NodeId(id), t0 + Duration::from_millis(1), W));
        // Everything expires.
        assert!(m.should_report(NodeId([9; 16]), t0 + W * 2, W));
        assert_eq!(m.len(), 1);
    }
}
