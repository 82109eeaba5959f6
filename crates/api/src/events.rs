//! An event as the HTTP API, `assim events --json`, the sinks and NATS give it.
//!
//! ```json
//! {"id": 42, "time": 1700000000000000, "type": "host.down", "host": "…", "hostname": "web1",
//!  "tags": {"host": "web1", …}, "text": "…", "severity": "critical", "body": {…}}
//! ```
//!
//! `time` is µs since the epoch. `type` is the dotted name (`host.down`, `service.critical`,
//! `local.event`, and for network-aware rings `switch.down`, `switch.up`, `switch.unreachable`,
//! `host.unreachable`, `link.suspect`, …), the same the filter language matches with `type:host.*`. Reading also
//! accepts the spelling before it (`"kind": "HostDown"`).

use std::collections::BTreeMap;

use assim_cma::{EventKind, Severity};
use assim_wire::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// A published event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic; never reused.
    pub id: u64,
    /// When it happened, µs since the epoch.
    #[serde(with = "micros")]
    pub time: Timestamp,
    /// The event type (`host.down`, …).
    #[serde(rename = "type", alias = "kind", with = "dotted")]
    pub kind: EventKind,
    pub host: Option<NodeId>,
    pub hostname: String,
    /// Always `host` and `node` when the event is about a host; plus type-specific tags.
    pub tags: BTreeMap<String, String>,
    /// One plain sentence.
    pub text: String,
    #[serde(default)]
    pub severity: Severity,
    /// Optional structured detail (any JSON), e.g. a check's perfdata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

impl From<assim_cma::Event> for Event {
    fn from(e: assim_cma::Event) -> Self {
        Event {
            id: e.id,
            time: e.time,
            kind: e.kind,
            host: e.host,
            hostname: e.hostname,
            tags: e.tags,
            text: e.text,
            severity: e.severity,
            body: e.body,
        }
    }
}

impl From<Event> for assim_cma::Event {
    fn from(e: Event) -> Self {
        assim_cma::Event {
            id: e.id,
            time: e.time,
            kind: e.kind,
            host: e.host,
            hostname: e.hostname,
            tags: e.tags,
            text: e.text,
            severity: e.severity,
            body: e.body,
        }
    }
}

/// The dotted name of an event type; reading also accepts the old variant name (`HostDown`).
mod dotted {
    use assim_cma::EventKind;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(k: &EventKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventKind, D::Error> {
        let text = String::deserialize(d)?;
        if let Ok(k) = text.parse::<EventKind>() {
            return Ok(k);
        }
        // The spelling before one release: the Rust variant name.
        EventKind::ALL
            .into_iter()
            .find(|k| format!("{k:?}") == text)
            .ok_or_else(|| D::Error::custom(format!("unknown event type {text:?}")))
    }
}

/// [`Timestamp`] as µs since the epoch.
mod micros {
    use assim_wire::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.micros())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        u64::deserialize(d).map(Timestamp)
    }
}

/// A time of the API (µs since the Unix epoch) as UTC calendar fields: year, month, day, hour,
/// minute, second. The one conversion behind every printed time (the CLI's tables, the web
/// page), so they cannot disagree.
pub fn utc_fields(micros: u64) -> (i64, i64, i64, u64, u64, u64) {
    let secs = micros / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, (rem / 60) % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            id: 7,
            time: Timestamp(1_700_000_000_000_000),
            kind: EventKind::HostDown,
            host: None,
            hostname: "web1".into(),
            tags: BTreeMap::from([("host".to_string(), "web1".to_string())]),
            text: "web1 is down".into(),
            severity: Severity::Critical,
            body: None,
        }
    }

    #[test]
    fn one_spelling_type_host_down() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["type"], "host.down");
        assert!(v.get("kind").is_none(), "{v}");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn the_old_spelling_still_reads() {
        let mut v = serde_json::to_value(sample()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("type");
        o.insert("kind".into(), "HostDown".into());
        let e: Event = serde_json::from_value(v).unwrap();
        assert_eq!(e.kind, EventKind::HostDown);
        // The stored form of the core's event (same field names) converts both ways.
        let core: assim_cma::Event = e.clone().into();
        assert_eq!(Event::from(core), e);
    }

    #[test]
    fn issue_13_switch_and_unreachable_types_have_one_spelling() {
        for (kind, name) in [
            (EventKind::SwitchDown, "switch.down"),
            (EventKind::SwitchUp, "switch.up"),
            (EventKind::SwitchUnreachable, "switch.unreachable"),
            (EventKind::HostUnreachable, "host.unreachable"),
            (EventKind::LinkSuspect, "link.suspect"),
        ] {
            let e = Event { kind, ..sample() };
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["type"], name);
            assert_eq!(serde_json::from_value::<Event>(v).unwrap().kind, kind);
        }
    }
}
