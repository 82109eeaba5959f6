//! Service check state changes reported by nanoprobes (`CheckStateChange`, through the spool).
//!
//! The nanoprobe reports only HARD changes, a check's first HARD state, and flapping start and
//! stop; [`Cma::handle_check_change`] turns each into at most one event:
//! `service.ok/warning/critical/unknown` or `service.flapping`, tagged `host`, `node`, `service`
//! (= `check`), `state`, and `flapping` when it is about flapping. The driver passes the state
//! it has stored for the check, so repeats (a nanoprobe restart re-reports its first states, a
//! replayed record) raise nothing, and a first OK is recorded without an event.

use assim_wire::msg::{CheckState, CheckStateChange};
use assim_wire::{NodeId, Timestamp};

use crate::cma::Cma;
use crate::cma::describe_ring;
use crate::model::{EventKind, Severity};
use crate::ring::RingKey;

/// The longest check name accepted.
pub const MAX_CHECK_NAME: usize = 128;
/// The most service alarms held per unreachable host (a host has at most a few hundred
/// checks; beyond this a still-wrong check is raised by its next change only).
pub const MAX_HELD_PER_HOST: usize = 1024;
/// How much of the plugin output goes into the event text.
pub const MAX_EVENT_OUTPUT: usize = 512;

/// Why a check state change was refused. The core's state is unchanged in every case.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CheckChangeError {
    #[error("check state change from an unknown node {0}")]
    UnknownNode(NodeId),
    #[error("check state change: check name {0:?} is empty, too long or has control characters")]
    BadName(String),
    #[error("check state change for {check}: state {state} is not 0-3")]
    BadState { check: String, state: i32 },
}

/// What the CMA last knew about a check: its HARD state and whether it was flapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownState {
    pub state: CheckState,
    pub flapping: bool,
}

/// The event kind for a HARD state.
pub fn kind_of(state: CheckState) -> EventKind {
    match state {
        CheckState::Ok => EventKind::ServiceOk,
        CheckState::Warning => EventKind::ServiceWarning,
        CheckState::Critical => EventKind::ServiceCritical,
        CheckState::Unknown => EventKind::ServiceUnknown,
    }
}

fn upper(state: CheckState) -> &'static str {
    match state {
        CheckState::Ok => "OK",
        CheckState::Warning => "WARNING",
        CheckState::Critical => "CRITICAL",
        CheckState::Unknown => "UNKNOWN",
    }
}

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Validates a change: the check name and state.
pub fn validate_check_change(c: &CheckStateChange) -> Result<CheckState, CheckChangeError> {
    if c.check.is_empty() || c.check.len() > MAX_CHECK_NAME || c.check.chars().any(char::is_control)
    {
        return Err(CheckChangeError::BadName(clip(&c.check, MAX_CHECK_NAME).to_owned()));
    }
    CheckState::try_from(c.state)
        .map_err(|_| CheckChangeError::BadState { check: c.check.clone(), state: c.state })
}

impl Cma {
    /// A nanoprobe reported a check's state. `previous` is what the driver has stored for this
    /// check (`None` if never reported). Returns the kind of the event raised, if any.
    pub fn handle_check_change(
        &mut self,
        now: Timestamp,
        node: NodeId,
        change: &CheckStateChange,
        previous: Option<KnownState>,
    ) -> Result<Option<EventKind>, CheckChangeError> {
        if self.node(node).is_none() {
            return Err(CheckChangeError::UnknownNode(node));
        }
        let state = validate_check_change(change)?;
        let was_flapping = previous.is_some_and(|p| p.flapping);
        let output = clip(change.output.trim(), MAX_EVENT_OUTPUT).to_owned();
        let host = self.node(node).map(|n| n.display_name()).unwrap_or_default();
        let check = change.check.clone();
        let (kind, text, flapping_tag) = if change.flapping {
            if was_flapping {
                return Ok(None);
            }
            (
                EventKind::ServiceFlapping,
                format!("service {check} on {host} is flapping (last state {})", upper(state)),
                Some("started"),
            )
        } else if was_flapping {
            (
                kind_of(state),
                format!(
                    "service {check} on {host} stopped flapping and is {}: {output}",
                    upper(state)
                ),
                Some("stopped"),
            )
        } else {
            match previous {
                None if change.initial && state == CheckState::Ok => return Ok(None),
                Some(p) if p.state == state => return Ok(None),
                _ => {}
            }
            let verb =
                if previous.is_some_and(|p| p.state != CheckState::Ok) && state == CheckState::Ok {
                    "recovered: OK"
                } else {
                    upper(state)
                };
            (kind_of(state), format!("service {check} on {host} is {verb}: {output}"), None)
        };
        let mut tags =
            vec![("service", check.clone()), ("check", check), ("state", state.name().to_owned())];
        if let Some(f) = flapping_tag {
            tags.push(("flapping", f.to_owned()));
        }
        let suppression = self.service_suppression(node, change.at);
        let text = match &suppression {
            Some(s) if s.open => {
                tags.push(("suppressed", s.ring.name().to_owned()));
                tags.push(("ring", s.ring.0.clone()));
                format!(
                    "{text} (alarm suppressed: {host} is unreachable behind {}, which is down or \
                     cut off; raised again when the switch is back if it is still so)",
                    describe_ring(&s.ring)
                )
            }
            Some(s) => {
                tags.push(("made_while_unreachable", s.ring.name().to_owned()));
                tags.push(("ring", s.ring.0.clone()));
                format!(
                    "{text} (checked while {host} was unreachable behind {}, delivered late from \
                     its spool)",
                    describe_ring(&s.ring)
                )
            }
            None => text,
        };
        let e = self.event(now, kind, Some(node), tags, text);
        if suppression.is_some_and(|s| s.open) {
            e.severity = Severity::Info;
        }
        self.flush();
        Ok(Some(kind))
    }

    /// A held alarm raised after `switch.up` ([`crate::Authority`]): the check of `node` is
    /// still in `known` now that its switch is back.
    pub(crate) fn raise_held_service(
        &mut self,
        now: Timestamp,
        node: NodeId,
        check: &str,
        known: KnownState,
        ring: &RingKey,
    ) -> EventKind {
        let host = self.node(node).map(|n| n.display_name()).unwrap_or_default();
        let (kind, what) = if known.flapping {
            (EventKind::ServiceFlapping, "still flapping".to_owned())
        } else {
            (kind_of(known.state), format!("still {}", upper(known.state)))
        };
        let text = format!(
            "service {check} on {host} is {what} now that {} is back (its alarm was held while \
             {host} was unreachable)",
            describe_ring(ring)
        );
        let tags = vec![
            ("service", check.to_owned()),
            ("check", check.to_owned()),
            ("state", known.state.name().to_owned()),
            ("held_while", ring.name().to_owned()),
            ("ring", ring.0.clone()),
        ];
        self.event(now, kind, Some(node), tags, text);
        self.flush();
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, CmaConfig, Snapshot};
    use assim_wire::msg::Hello;

    fn cma_with_node() -> (Cma, NodeId) {
        let now = Timestamp(1_000_000);
        let mut c = Cma::new(CmaConfig::default(), Snapshot::default(), now);
        let id = NodeId::from_slice(&[7; 16]).unwrap();
        let hello = Hello {
            hostname: "web1".into(),
            listen_addr: "127.0.0.1:1984".into(),
            ..Default::default()
        };
        c.handle_hello(now, id, [1; 32], &hello).unwrap();
        while c.poll_action().is_some() {}
        (c, id)
    }

    fn change(state: CheckState, initial: bool, flapping: bool) -> CheckStateChange {
        CheckStateChange {
            check: "http:80".into(),
            state: state as i32,
            output: "HTTP CRITICAL - connection refused".into(),
            initial,
            flapping,
            ..Default::default()
        }
    }

    fn events(c: &mut Cma) -> Vec<crate::model::Event> {
        std::iter::from_fn(|| c.poll_action())
            .filter_map(|a| if let Action::Emit(e) = a { Some(e) } else { None })
            .collect()
    }

    #[test]
    fn one_event_per_real_change_with_tags() {
        let (mut c, id) = cma_with_node();
        let now = Timestamp(2_000_000);
        let ok = |f| Some(KnownState { state: CheckState::Ok, flapping: f });
        let crit = Some(KnownState { state: CheckState::Critical, flapping: false });
        // A first OK is recorded silently.
        assert_eq!(
            c.handle_check_change(now, id, &change(CheckState::Ok, true, false), None),
            Ok(None)
        );
        assert!(events(&mut c).is_empty());
        // OK -> CRITICAL: one event with the tags.
        let k =
            c.handle_check_change(now, id, &change(CheckState::Critical, false, false), ok(false));
        assert_eq!(k, Ok(Some(EventKind::ServiceCritical)));
        let e = events(&mut c);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].tags["host"], "web1");
        assert_eq!(e[0].tags["service"], "http:80");
        assert_eq!(e[0].tags["state"], "critical");
        assert!(e[0].text.contains("is CRITICAL"), "{}", e[0].text);
        // A repeat (nanoprobe restart) raises nothing.
        assert_eq!(
            c.handle_check_change(now, id, &change(CheckState::Critical, true, false), crit),
            Ok(None)
        );
        // Recovery.
        let k = c.handle_check_change(now, id, &change(CheckState::Ok, false, false), crit);
        assert_eq!(k, Ok(Some(EventKind::ServiceOk)));
        assert!(events(&mut c)[0].text.contains("recovered"));
        // Flapping once, then its end.
        let k = c.handle_check_change(now, id, &change(CheckState::Ok, false, true), ok(false));
        assert_eq!(k, Ok(Some(EventKind::ServiceFlapping)));
        assert_eq!(
            c.handle_check_change(now, id, &change(CheckState::Critical, false, true), ok(true)),
            Ok(None)
        );
        let k = c.handle_check_change(now, id, &change(CheckState::Ok, false, false), ok(true));
        assert_eq!(k, Ok(Some(EventKind::ServiceOk)));
        let e = events(&mut c);
        assert_eq!(e.last().unwrap().tags["flapping"], "stopped");
    }

    #[test]
    fn invalid_changes_are_refused() {
        let (mut c, id) = cma_with_node();
        let now = Timestamp(2_000_000);
        let mut bad = change(CheckState::Ok, false, false);
        bad.state = 9;
        assert!(matches!(
            c.handle_check_change(now, id, &bad, None),
            Err(CheckChangeError::BadState { .. })
        ));
        bad.state = 0;
        bad.check = "a\nb".into();
        assert!(matches!(
            c.handle_check_change(now, id, &bad, None),
            Err(CheckChangeError::BadName(_))
        ));
        let stranger = NodeId::from_slice(&[9; 16]).unwrap();
        assert_eq!(
            c.handle_check_change(now, stranger, &change(CheckState::Ok, false, false), None),
            Err(CheckChangeError::UnknownNode(stranger))
        );
        assert!(events(&mut c).is_empty());
    }
}
