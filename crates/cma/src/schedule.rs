//! The discovery schedule the CMA sends every nanoprobe that registers, and its epoch.
//!
//! The configured intervals (`[discovery]` table, `--discovery NAME=DURATION`) become one
//! `DiscoverySchedule`. Its epoch is persisted together with the configuration's canonical
//! text ([`StoredSchedule`], the store's meta keys `discovery_schedule` and `discovery_epoch`):
//! a restart with the same configuration sends the same epoch; a changed configuration gets
//! the stored epoch + 1, persisted before anything is sent. No clock is read.

use std::collections::BTreeMap;

use assim_discovery::schedule::{DEFAULT_AGENT_INTERVAL, DEFAULT_INTERVALS, Entry};
use assim_wire::msg;
use serde::{Deserialize, Serialize};

/// The CMA's configured schedule: collector name (or `agent.*`) → entry.
pub type ScheduleConfig = BTreeMap<String, Entry>;

/// What the store keeps about the schedule last sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSchedule {
    /// The configuration, as [`canonical`] writes it.
    pub canonical: String,
    pub epoch: u64,
}

/// The built-in schedule as a CMA configuration (what the CMA sends when not told otherwise).
pub fn default_schedule_config() -> ScheduleConfig {
    let mut c: ScheduleConfig = DEFAULT_INTERVALS
        .iter()
        .map(|(n, s)| (n.to_string(), Entry { interval_s: *s, params: BTreeMap::new() }))
        .collect();
    c.insert(
        "agent.*".into(),
        Entry { interval_s: DEFAULT_AGENT_INTERVAL.as_secs(), params: BTreeMap::new() },
    );
    c
}

/// The configuration as one comparable line (the format the daemon has always stored).
pub fn canonical(config: &ScheduleConfig) -> String {
    config
        .iter()
        .map(|(n, e)| format!("{n}={}{:?}", e.interval_s, e.params))
        .collect::<Vec<_>>()
        .join(";")
}

/// The schedule for `config` given what was stored: the message to send, and what to persist
/// if the epoch had to grow (a new or changed configuration).
pub fn decide(
    config: &ScheduleConfig,
    stored: Option<&StoredSchedule>,
) -> (msg::DiscoverySchedule, Option<StoredSchedule>) {
    let text = canonical(config);
    let stored_epoch = stored.map_or(0, |s| s.epoch);
    let (epoch, persist) = match stored {
        Some(s) if s.canonical == text => (stored_epoch.max(1), None),
        _ => {
            let epoch = stored_epoch + 1;
            (epoch, Some(StoredSchedule { canonical: text, epoch }))
        }
    };
    let message = msg::DiscoverySchedule {
        epoch,
        entries: config
            .iter()
            .map(|(name, e)| msg::DiscoveryEntry {
                name: name.clone(),
                interval_s: e.interval_s,
                params: e
                    .params
                    .iter()
                    .map(|(k, v)| msg::Tag { key: k.clone(), value: v.clone() })
                    .collect(),
            })
            .collect(),
    };
    (message, persist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_config_same_epoch_changed_config_next_epoch() {
        let c = default_schedule_config();
        let (m1, p1) = decide(&c, None);
        assert_eq!(m1.epoch, 1);
        let stored = p1.expect("a first schedule is persisted");
        let (m2, p2) = decide(&c, Some(&stored));
        assert_eq!((m2.epoch, p2), (1, None), "restart, same configuration");
        let mut changed = c.clone();
        changed.get_mut("sockets").unwrap().interval_s = 5;
        let (m3, p3) = decide(&changed, Some(&stored));
        assert_eq!(m3.epoch, 2);
        assert_eq!(p3.unwrap().epoch, 2);
        assert!(m3.entries.iter().any(|e| e.name == "sockets" && e.interval_s == 5));
    }
}
