//! [`Schedule`]: when each discovery collector runs next (sans-IO: `now` comes in, deadlines go
//! out). It starts from built-in defaults ([`DEFAULT_INTERVALS`]) and takes the CMA's
//! `DiscoverySchedule` as desired state: a higher epoch replaces the entries, a lower or equal
//! one is ignored, so replays are harmless.
//!
//! Rules:
//! - An entry's interval 0 disables that collector; a collector without an entry keeps its
//!   built-in default. `agent.*` sets the interval of agents without their own entry
//!   (default [`DEFAULT_AGENT_INTERVAL`]).
//! - A collector runs first as soon as it is known, then every interval after its last run.
//!   When an interval changes, the next run is re-counted from the last run.
//! - Names that are neither built-in collectors nor `agent.…` are reported by
//!   [`Schedule::apply`] once each, so the driver can log them once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Built-in intervals in seconds, used until the CMA sends a schedule and for collectors it
/// does not mention.
pub const DEFAULT_INTERVALS: [(&str, u64); 14] = [
    ("interfaces", 60),
    ("neighbours", 60),
    ("sockets", 60),
    (L2_COLLECTOR, 30),
    ("mounts", 600),
    ("os", 3600),
    ("cpu", 3600),
    ("memory", 3600),
    ("packages", 3600),
    ("ssh_host_keys", 3600),
    ("raid", 60),
    ("block_devices", 600),
    ("file_integrity", 3600),
    ("security", 3600),
];

/// Interval of an external agent without its own entry (and without `agent.*`).
pub const DEFAULT_AGENT_INTERVAL: Duration = Duration::from_secs(300);

/// The name of the passive LLDP/CDP listener's results (the daemon runs the listener; the
/// store derives the wiring topology from them).
pub const L2_COLLECTOR: &str = "l2neighbors";

/// The prefix of external agents' collector names.
pub const AGENT_PREFIX: &str = "agent.";

/// One collector's schedule entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Seconds between runs; 0 disables.
    pub interval_s: u64,
    /// Parameters (agents get them as `ASSIM_PARAM_<KEY>`).
    pub params: BTreeMap<String, String>,
}

/// What [`Schedule::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The schedule is now the one of this epoch. `unknown` lists names this probe has no
    /// collector for, each reported once per schedule lifetime.
    Applied { unknown: Vec<String> },
    /// The epoch was not newer than the current one; nothing changed.
    Stale { current: u64 },
}

#[derive(Clone, Debug, Default)]
struct Slot {
    last: Option<Instant>,
    next: Option<Instant>,
}

/// See the module doc.
#[derive(Clone, Debug)]
pub struct Schedule {
    epoch: u64,
    entries: BTreeMap<String, Entry>,
    /// Collectors this probe can run (built-in names and the agents found).
    slots: BTreeMap<String, Slot>,
    reported_unknown: BTreeSet<String>,
}

fn is_builtin(name: &str) -> bool {
    DEFAULT_INTERVALS.iter().any(|(n, _)| *n == name)
}

impl Schedule {
    /// The built-in schedule (epoch 0): every built-in collector is due at `now`.
    pub fn new(now: Instant) -> Self {
        let mut s = Schedule {
            epoch: 0,
            entries: BTreeMap::new(),
            slots: BTreeMap::new(),
            reported_unknown: BTreeSet::new(),
        };
        for (name, _) in DEFAULT_INTERVALS {
            s.slots.insert(name.to_string(), Slot::default());
        }
        s.recompute(now);
        s
    }

    /// The epoch of the schedule in force (0: built-in).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The interval of `name` (`None`: disabled or unknown).
    pub fn interval(&self, name: &str) -> Option<Duration> {
        let secs = match self.entries.get(name) {
            Some(e) => e.interval_s,
            None if name.starts_with(AGENT_PREFIX) => match self.entries.get("agent.*") {
                Some(e) => e.interval_s,
                None => DEFAULT_AGENT_INTERVAL.as_secs(),
            },
            None => DEFAULT_INTERVALS.iter().find(|(n, _)| *n == name)?.1,
        };
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// True if `name` is known and not disabled.
    pub fn enabled(&self, name: &str) -> bool {
        self.slots.contains_key(name) && self.interval(name).is_some()
    }

    /// The parameters of `name` (an agent's own entry, else those of `agent.*`).
    pub fn params(&self, name: &str) -> BTreeMap<String, String> {
        match self.entries.get(name) {
            Some(e) => e.params.clone(),
            None if name.starts_with(AGENT_PREFIX) => {
                self.entries.get("agent.*").map(|e| e.params.clone()).unwrap_or_default()
            }
            None => BTreeMap::new(),
        }
    }

    /// Applies the CMA's schedule of `epoch` if it is newer.
    pub fn apply(&mut self, epoch: u64, entries: BTreeMap<String, Entry>, now: Instant) -> Applied {
        if epoch <= self.epoch {
            return Applied::Stale { current: self.epoch };
        }
        self.epoch = epoch;
        let mut unknown = Vec::new();
        for name in entries.keys() {
            if !is_builtin(name)
                && !name.starts_with(AGENT_PREFIX)
                && self.reported_unknown.insert(name.clone())
            {
                unknown.push(name.clone());
            }
        }
        self.entries = entries;
        self.recompute(now);
        Applied::Applied { unknown }
    }

    /// Sets the external agents present (their names with the `agent.` prefix): new ones are
    /// due at once, vanished ones are dropped.
    pub fn set_agents<'a>(&mut self, agents: impl IntoIterator<Item = &'a str>, now: Instant) {
        let agents: BTreeSet<&str> = agents.into_iter().collect();
        self.slots
            .retain(|name, _| !name.starts_with(AGENT_PREFIX) || agents.contains(name.as_str()));
        for a in agents {
            self.slots.entry(a.to_string()).or_default();
        }
        self.recompute(now);
    }

    fn recompute(&mut self, now: Instant) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let interval = self.interval(&name);
            let slot = self.slots.get_mut(&name).expect("listed");
            slot.next = interval.map(|i| match slot.last {
                Some(last) => (last + i).max(now),
                None => now,
            });
        }
    }

    /// The earliest next run, if any collector is enabled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.values().filter_map(|s| s.next).min()
    }

    /// The collectors due at `now`, in name order; each is counted as run at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let interval = self.interval(&name);
            let slot = self.slots.get_mut(&name).expect("listed");
            if let (Some(next), Some(i)) = (slot.next, interval)
                && next <= now
            {
                slot.last = Some(now);
                slot.next = Some(now + i);
                out.push(name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(&str, u64)]) -> BTreeMap<String, Entry> {
        list.iter()
            .map(|(n, s)| (n.to_string(), Entry { interval_s: *s, params: BTreeMap::new() }))
            .collect()
    }

    /// Runs the schedule in virtual time until `end`, counting runs per collector.
    fn run_until(s: &mut Schedule, from: Instant, end: Instant) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        let mut now = from;
        for _ in 0..100_000 {
            for name in s.due(now) {
                *counts.entry(name).or_insert(0) += 1;
            }
            match s.poll_timeout() {
                Some(t) if t <= end => now = t,
                _ => return counts,
            }
        }
        panic!("the schedule did not advance (livelock)");
    }

    #[test]
    fn defaults_run_at_once_then_at_their_intervals() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert_eq!(s.poll_timeout(), Some(t0));
        let counts = run_until(&mut s, t0, t0 + Duration::from_secs(3599));
        assert_eq!(counts["interfaces"], 60);
        assert_eq!(counts["l2neighbors"], 120);
        assert_eq!(counts["mounts"], 6);
        assert_eq!(counts["packages"], 1);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn a_newer_epoch_replaces_and_an_older_one_is_ignored() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.due(t0);
        let t1 = t0 + Duration::from_secs(10);
        let applied = s.apply(5, entries(&[("interfaces", 20), ("sockets", 0), ("bogus", 9)]), t1);
        assert_eq!(applied, Applied::Applied { unknown: vec!["bogus".into()] });
        assert_eq!(s.interval("sockets"), None, "0 disables");
        assert!(!s.enabled("sockets"));
        assert_eq!(s.interval("os"), Some(Duration::from_secs(3600)), "absent keeps the default");
        // interfaces last ran at t0: next run re-counted as t0 + 20 s.
        let next: Vec<String> = s.due(t0 + Duration::from_secs(20));
        assert!(next.contains(&"interfaces".to_string()), "{next:?}");
        assert!(!next.contains(&"sockets".to_string()));

        assert_eq!(s.apply(5, entries(&[("interfaces", 1)]), t1), Applied::Stale { current: 5 });
        assert_eq!(s.apply(3, entries(&[]), t1), Applied::Stale { current: 5 });
        assert_eq!(s.interval("interfaces"), Some(Duration::from_secs(20)));
        // The unknown name is reported once only.
        assert_eq!(s.apply(6, entries(&[("bogus", 9)]), t1), Applied::Applied { unknown: vec![] });
    }

    #[test]
    fn shortening_an_interval_runs_at_once_if_overdue() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.due(t0);
        let t1 = t0 + Duration::from_secs(120);
        s.apply(1, entries(&[("packages", 60)]), t1);
        assert!(s.due(t1).contains(&"packages".to_string()));
        assert_eq!(s.interval("packages"), Some(Duration::from_secs(60)));
    }

    #[test]
    fn agents_come_and_go_with_wildcard_and_own_entries() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.due(t0);
        s.set_agents(["agent.a", "agent.b"], t0);
        assert_eq!(s.due(t0), vec!["agent.a".to_string(), "agent.b".to_string()]);
        assert_eq!(s.interval("agent.a"), Some(DEFAULT_AGENT_INTERVAL));
        let mut e = entries(&[("agent.*", 100), ("agent.b", 0)]);
        e.get_mut("agent.*").unwrap().params.insert("ZONE".into(), "eu".into());
        s.apply(2, e, t0);
        assert_eq!(s.params("agent.a").get("ZONE").map(String::as_str), Some("eu"));
        assert!(!s.enabled("agent.b"));
        let counts = run_until(&mut s, t0, t0 + Duration::from_secs(1000));
        assert_eq!(counts.get("agent.a"), Some(&10));
        assert_eq!(counts.get("agent.b"), None);
        s.set_agents(["agent.b"], t0);
        assert!(!s.enabled("agent.a"), "a vanished agent is dropped");
    }
}
