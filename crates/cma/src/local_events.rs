//! Events submitted by programs on a host (`assim event send`), forwarded by its nanoprobe
//! through the spool as `LocalEvent` messages.
//!
//! The CMA turns each into one `local.event` event: the host's tags (`host`, `node`), then the
//! submitted tags (which may not replace `host` or `node`), the submitted type as the tag
//! `event_type`, and the submitted severity. The nanoprobe validates submissions already; the
//! core checks again, because the wire is an external input.

use assim_wire::msg::LocalEvent;
use assim_wire::{NodeId, Timestamp};

use crate::cma::Cma;
use crate::model::{EventKind, Severity};

/// The longest text accepted, in bytes.
pub const MAX_TEXT: usize = 8192;
/// The most tags accepted per event.
pub const MAX_TAGS: usize = 32;
/// The longest tag value, in bytes.
pub const MAX_TAG_VALUE: usize = 256;
/// The longest event type, in bytes.
pub const MAX_TYPE: usize = 64;

/// Why a local event was refused. The core's state is unchanged in every case.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum LocalEventError {
    #[error("local event from an unknown node {0}")]
    UnknownNode(NodeId),
    #[error("local event: {0}")]
    Invalid(String),
}

/// Checks a submission; returns its severity. Shared by the nanoprobe (before spooling) and
/// the core.
pub fn validate_local_event(ev: &LocalEvent) -> Result<Severity, String> {
    if ev.text.trim().is_empty() {
        return Err("the text is empty".into());
    }
    if ev.text.len() > MAX_TEXT {
        return Err(format!(
            "the text is {} bytes; at most {MAX_TEXT} are accepted",
            ev.text.len()
        ));
    }
    if ev.event_type.len() > MAX_TYPE || !ev.event_type.chars().all(is_name_char) {
        return Err(format!(
            "the type {:?} is not valid (at most {MAX_TYPE} of letters, digits, _ . -)",
            ev.event_type
        ));
    }
    if ev.tags.len() > MAX_TAGS {
        return Err(format!("{} tags; at most {MAX_TAGS} are accepted", ev.tags.len()));
    }
    for t in &ev.tags {
        if t.key.is_empty() || t.key.len() > 64 || !t.key.chars().all(is_name_char) {
            return Err(format!(
                "tag name {:?} is not valid (1 to 64 of letters, digits, _ . -)",
                t.key
            ));
        }
        if matches!(t.key.as_str(), "host" | "node") {
            return Err(format!("tag {:?} is set by the CMA and cannot be submitted", t.key));
        }
        if t.value.len() > MAX_TAG_VALUE || t.value.chars().any(char::is_control) {
            return Err(format!(
                "the value of tag {:?} is not valid (at most {MAX_TAG_VALUE} bytes, no control characters)",
                t.key
            ));
        }
    }
    if ev.severity.is_empty() {
        return Ok(Severity::Info);
    }
    ev.severity.parse().map_err(|_| {
        format!(
            "unknown severity {:?} (use debug, info, notice, warning, error or critical)",
            ev.severity
        )
    })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

impl Cma {
    /// A `LocalEvent` from `node`: emits one `local.event` and returns its id.
    pub fn handle_local_event(
        &mut self,
        now: Timestamp,
        node: NodeId,
        ev: &LocalEvent,
    ) -> Result<u64, LocalEventError> {
        if self.node(node).is_none() {
            return Err(LocalEventError::UnknownNode(node));
        }
        let severity = validate_local_event(ev).map_err(LocalEventError::Invalid)?;
        let mut extra: Vec<(&'static str, String)> = Vec::new();
        if !ev.event_type.is_empty() {
            extra.push(("event_type", ev.event_type.clone()));
        }
        if ev.at > 0 {
            extra.push(("submitted_at", ev.at.to_string()));
        }
        let e = self.event(now, EventKind::LocalEvent, Some(node), extra, ev.text.clone());
        e.severity = severity;
        for t in &ev.tags {
            e.tags.entry(t.key.clone()).or_insert_with(|| t.value.clone());
        }
        let id = e.id;
        self.flush();
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, CmaConfig, Snapshot};
    use assim_wire::msg::{Hello, Tag};

    fn cma_with_node() -> (Cma, NodeId) {
        let now = Timestamp(1_000_000);
        let mut c = Cma::new(CmaConfig::default(), Snapshot::default(), now);
        let id = NodeId([1; 16]);
        let hello = Hello {
            version: "t".into(),
            hostname: "db1".into(),
            listen_addr: "127.0.0.1:1986".into(),
            ..Default::default()
        };
        c.handle_hello(now, id, [9; 32], &hello).unwrap();
        while c.poll_action().is_some() {}
        (c, id)
    }

    fn local(text: &str, sev: &str, tags: &[(&str, &str)]) -> LocalEvent {
        LocalEvent {
            event_type: "raid".into(),
            severity: sev.into(),
            text: text.into(),
            tags: tags
                .iter()
                .map(|(k, v)| Tag { key: k.to_string(), value: v.to_string() })
                .collect(),
            at: 5,
        }
    }

    #[test]
    fn becomes_one_local_event_with_host_and_submitted_tags() {
        let (mut c, id) = cma_with_node();
        let ev = local("RAID STATUS CHANGE for VolumeID 2", "critical", &[("cluster", "Compute1")]);
        let eid = c.handle_local_event(Timestamp(2_000_000), id, &ev).unwrap();
        let emitted: Vec<_> = std::iter::from_fn(|| c.poll_action())
            .filter_map(|a| if let Action::Emit(e) = a { Some(e) } else { None })
            .collect();
        assert_eq!(emitted.len(), 1);
        let e = &emitted[0];
        assert_eq!((e.id, e.kind, e.severity), (eid, EventKind::LocalEvent, Severity::Critical));
        assert_eq!(e.tags["host"], "db1");
        assert_eq!(e.tags["node"], id.to_string());
        assert_eq!(e.tags["cluster"], "Compute1");
        assert_eq!(e.tags["event_type"], "raid");
        assert_eq!(e.text, "RAID STATUS CHANGE for VolumeID 2");
    }

    #[test]
    fn invalid_submissions_are_refused_without_an_event() {
        let (mut c, id) = cma_with_node();
        let bad = [
            local("", "info", &[]),
            local("x", "loud", &[]),
            local("x", "info", &[("host", "forged")]),
            local("x", "info", &[("bad key", "v")]),
            local("x", "info", &[("k", "line\nbreak")]),
            local(&"x".repeat(MAX_TEXT + 1), "info", &[]),
        ];
        for ev in &bad {
            assert!(c.handle_local_event(Timestamp(2), id, ev).is_err(), "{ev:?}");
        }
        assert!(c.poll_action().is_none());
        let unknown = c.handle_local_event(Timestamp(2), NodeId([2; 16]), &local("x", "", &[]));
        assert_eq!(unknown, Err(LocalEventError::UnknownNode(NodeId([2; 16]))));
    }
}
