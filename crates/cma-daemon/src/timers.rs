//! A set of deadlines keyed by peer: the driver re-arms one key whenever that peer's reliable
//! connection is touched, and pops the expired ones, without scanning every connection.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Deadlines by key; at most one per key.
#[derive(Debug)]
pub struct Timers<K: Ord + Hash + Copy> {
    by_time: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers { by_time: BTreeSet::new(), by_key: HashMap::new() }
    }
}

impl<K: Ord + Hash + Copy> Timers<K> {
    /// Sets (or clears, with `None`) the deadline of `key`.
    pub fn set(&mut self, key: K, at: Option<Instant>) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
        if let Some(at) = at {
            self.by_key.insert(key, at);
            self.by_time.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns the keys whose deadline is at or before `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(&(t, k)) = self.by_time.first() {
            if t > now {
                break;
            }
            self.by_time.pop_first();
            self.by_key.remove(&k);
            out.push(k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rearm_replaces_and_expired_pops_in_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.set(1, Some(t0 + Duration::from_secs(5)));
        t.set(2, Some(t0 + Duration::from_secs(1)));
        t.set(1, Some(t0 + Duration::from_secs(2)));
        t.set(3, Some(t0 + Duration::from_secs(9)));
        t.set(3, None);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.expired(t0 + Duration::from_secs(3)), vec![2, 1]);
        assert_eq!(t.next(), None);
    }
}
