//! [`HostEvents`]: the events a nanoprobe raises about its own host from its collectors'
//! results (sans-IO). The probe shell feeds it every result that changed and spools what it
//! returns as local events, so they reach the CMA like any event, durable first.
//!
//! - `raid` results → [`crate::raid::raid_events`] (`raid.degraded`, `raid.recovered`);
//! - `file_integrity` results → [`crate::integrity::integrity_events`] (`file.changed`).
//!
//! The previous result is kept in memory only: after a restart the first result is compared
//! with "every array healthy" and "no baseline", so an array still degraded, or a file that
//! differs from its package, is reported again once.

use std::collections::BTreeMap;

use crate::collector::{Collector, Discovery};
use crate::integrity::{FileIntegrity, integrity_events};
use crate::raid::{Raid, raid_events};

/// An event the nanoprobe raises about its own host and spools like a local event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEvent {
    /// `raid.degraded`, `raid.recovered`, …
    pub event_type: String,
    /// `critical`, `notice`, … (the local event severities).
    pub severity: String,
    /// One plain sentence.
    pub text: String,
    /// Tags (names of letters, digits, `_ . -`; values without control characters).
    pub tags: BTreeMap<String, String>,
}

/// `s` cut to at most `max` bytes at a character boundary (event texts and tag values have
/// byte limits at the CMA).
pub(crate) fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// See the module doc.
#[derive(Clone, Debug, Default)]
pub struct HostEvents {
    raid: Option<Raid>,
    integrity: Option<FileIntegrity>,
}

impl HostEvents {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events `d` (a changed result) raises. A payload that does not decode as its
    /// collector's result raises nothing and is forgotten.
    pub fn observe(&mut self, d: &Discovery) -> Vec<HostEvent> {
        if d.name == Collector::Raid.name() {
            let Ok(cur) = serde_json::from_value::<Raid>(d.payload.clone()) else {
                return Vec::new();
            };
            let events = raid_events(self.raid.as_ref(), &cur);
            self.raid = Some(cur);
            events
        } else if d.name == Collector::FileIntegrity.name() {
            let Ok(cur) = serde_json::from_value::<FileIntegrity>(d.payload.clone()) else {
                return Vec::new();
            };
            let events = integrity_events(self.integrity.as_ref(), &cur);
            self.integrity = Some(cur);
            events
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raid::parse_mdstat;

    fn result(mdstat: &str) -> Discovery {
        let r = Raid { md_available: true, arrays: parse_mdstat(mdstat) };
        Discovery::from_value("raid", serde_json::to_value(r).unwrap())
    }

    #[test]
    fn raid_results_raise_events_once() {
        let mut h = HostEvents::new();
        let ok = result("md0 : active raid1 b[1] a[0]\n  1 blocks [2/2] [UU]\n");
        let bad = result("md0 : active raid1 b[1](F) a[0]\n  1 blocks [2/1] [U_]\n");
        assert!(h.observe(&ok).is_empty());
        assert_eq!(h.observe(&bad)[0].event_type, "raid.degraded");
        assert!(h.observe(&bad).is_empty());
        assert_eq!(h.observe(&ok)[0].event_type, "raid.recovered");
        let other = Discovery::from_value("mounts", serde_json::json!({"arrays": 1}));
        assert!(h.observe(&other).is_empty());
    }
}
