//! The simulated network: where each datagram goes, how long it takes, whether it arrives.
//!
//! Endpoints are nodes (under a switch) and the CMA (in the core, outside every switch). Every
//! datagram, of every kind, meets the same fate rules, drawn from the simulation's one seeded
//! rng in a fixed order: a partition drops it if the two ends are in different groups; then it
//! is lost with probability `loss`; otherwise it arrives after a uniform latency (same switch:
//! `local_latency`, otherwise `remote_latency`), and with probability `dup` a second copy
//! arrives up to one extra latency later.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::scenario::NetworkSpec;

/// Where an endpoint is: under a switch, or the CMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Switch(u32),
    Cma,
}

/// What happens to one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Arrives after the first latency (µs), and a second copy after the second, if any.
    Deliver(u64, Option<u64>),
    /// Dropped by a partition.
    Cut,
    /// Dropped by random loss.
    Lost,
}

/// Counters of the network, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped by a partition.
    pub cut: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Arrived at an endpoint that was not running (crashed, left, or the CMA while down).
    pub to_dead_endpoint: u64,
}

/// The network model. Partition groups are per switch: group 0 holds the CMA and every switch
/// not cut off; each partition step puts its switches in a new group.
#[derive(Debug)]
pub struct Network {
    spec: NetworkSpec,
    group: Vec<u32>,
    pub stats: NetStats,
}

impl Network {
    pub fn new(spec: NetworkSpec, switches: u32) -> Network {
        Network { spec, group: vec![0; switches as usize], stats: NetStats::default() }
    }

    pub fn set_loss(&mut self, loss: f64) {
        self.spec.loss = loss;
    }

    /// Puts `switches` in partition group `group` (0 = back with the CMA).
    pub fn set_group(&mut self, switches: &[u32], group: u32) {
        for &s in switches {
            self.group[s as usize] = group;
        }
    }

    /// Whether this switch is cut off from the CMA now.
    pub fn is_cut_off(&self, switch: u32) -> bool {
        self.group[switch as usize] != 0
    }

    fn group_of(&self, p: Place) -> u32 {
        match p {
            Place::Switch(s) => self.group[s as usize],
            Place::Cma => 0,
        }
    }

    /// Decides the fate of one datagram from `from` to `to`.
    pub fn route(&mut self, rng: &mut ChaCha8Rng, from: Place, to: Place) -> Fate {
        self.stats.sent += 1;
        if self.group_of(from) != self.group_of(to) {
            self.stats.cut += 1;
            return Fate::Cut;
        }
        if self.spec.loss > 0.0 && rng.gen_bool(self.spec.loss) {
            self.stats.lost += 1;
            return Fate::Lost;
        }
        let (lo, hi) = match (from, to) {
            (Place::Switch(a), Place::Switch(b)) if a == b => self.spec.local_latency,
            _ => self.spec.remote_latency,
        };
        let pick = |rng: &mut ChaCha8Rng| -> u64 {
            let (lo, hi) = (micros(lo), micros(hi));
            if lo >= hi { lo } else { rng.gen_range(lo..=hi) }
        };
        let first = pick(rng);
        let second = if self.spec.dup > 0.0 && rng.gen_bool(self.spec.dup) {
            self.stats.duplicated += 1;
            Some(first + pick(rng))
        } else {
            None
        };
        Fate::Deliver(first, second)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn partition_cuts_only_across_groups() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut n = Network::new(NetworkSpec::default(), 4);
        n.set_group(&[2], 1);
        assert_eq!(n.route(&mut rng, Place::Switch(2), Place::Cma), Fate::Cut);
        assert_eq!(n.route(&mut rng, Place::Switch(1), Place::Switch(2)), Fate::Cut);
        assert!(matches!(n.route(&mut rng, Place::Switch(2), Place::Switch(2)), Fate::Deliver(..)));
        n.set_group(&[2], 0);
        assert!(matches!(n.route(&mut rng, Place::Switch(2), Place::Cma), Fate::Deliver(..)));
    }

    #[test]
    fn latency_within_bounds_and_loss_rate() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let spec = NetworkSpec { loss: 0.1, ..NetworkSpec::default() };
        let mut n = Network::new(spec, 2);
        let mut lost = 0;
        for _ in 0..10_000 {
            match n.route(&mut rng, Place::Switch(0), Place::Switch(0)) {
                Fate::Deliver(us, None) => assert!((100..=2000).contains(&us)),
                Fate::Lost => lost += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!((800..1200).contains(&lost), "{lost}");
    }
}
