//! The CMA's side of discovery: [`schedule_message`] turns the configured intervals into the
//! `DiscoverySchedule` sent to every nanoprobe that registers, with an epoch that grows whenever
//! the configuration changes (kept in the store's meta table).

use std::collections::BTreeMap;

use assim_discovery::schedule::Entry;
use assim_wire::msg;

/// The CMA's configured schedule: collector name → entry.
pub type ScheduleConfig = BTreeMap<String, Entry>;

/// The built-in schedule as a CMA configuration (what the CMA sends when not told otherwise).
pub fn default_schedule_config() -> ScheduleConfig {
    let mut c: ScheduleConfig = assim_discovery::schedule::DEFAULT_INTERVALS
        .iter()
        .map(|(n, s)| (n.to_string(), Entry { interval_s: *s, params: BTreeMap::new() }))
        .collect();
    c.insert(
        "agent.*".into(),
        Entry {
            interval_s: assim_discovery::schedule::DEFAULT_AGENT_INTERVAL.as_secs(),
            params: BTreeMap::new(),
        },
    );
    c
}

/// The `DiscoverySchedule` for `config`. Its epoch is the stored one when the configuration is
/// unchanged since the last start, else one more (both kept in the store's meta table).
pub fn schedule_message(
    store: &mut assim_store_sqlite::Store,
    config: &ScheduleConfig,
) -> anyhow::Result<msg::DiscoverySchedule> {
    let canonical = config
        .iter()
        .map(|(n, e)| format!("{n}={}{:?}", e.interval_s, e.params))
        .collect::<Vec<_>>()
        .join(";");
    let stored_epoch: u64 =
        store.meta("discovery_epoch")?.and_then(|s| s.parse().ok()).unwrap_or(0);
    let epoch = if store.meta("discovery_schedule")?.as_deref() == Some(canonical.as_str()) {
        stored_epoch.max(1)
    } else {
        let epoch = stored_epoch + 1;
        store.set_meta("discovery_schedule", &canonical)?;
        store.set_meta("discovery_epoch", &epoch.to_string())?;
        epoch
    };
    Ok(msg::DiscoverySchedule {
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
    })
}
