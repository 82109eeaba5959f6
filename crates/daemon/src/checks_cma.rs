//! The CMA's side of service monitoring (a child module of [`crate::cma`], so it extends the
//! driver directly):
//!
//! - **Automatic configuration.** When a node's `sockets` discovery result changes (and when it
//!   registers), its listening processes go through the rules ([`assim_checks::RuleSet`]:
//!   shipped defaults plus the operator's `--check-rules DIR`), together with host-level and
//!   hand-set checks. If the resulting check set differs from the stored one, its epoch goes up
//!   (`max(previous + 1, now in seconds)`, so it never goes backwards even if the store is
//!   replaced). The node is sent its current `CheckSet` on every registration, so re-sending is
//!   harmless desired state.
//! - **States.** `CheckStateChange` messages go to the core ([`Cma::handle_check_change`]),
//!   which raises at most one event each; the last state per check is stored.
//! - **Run now.** The API sends a [`RunRequest`]; the driver sends `RunNow` to the node and
//!   answers the API when the node's `CommandResult` arrives (the API times out on its own).

use std::collections::HashMap;
use std::net::IpAddr;

use assim_checks::{Listener, RuleSet};
use assim_cma::services::KnownState;
use assim_store::services::{CheckSetRecord, ServiceStateRecord, StoredCheck};
use assim_store::topology::query::MonitorRecord;
use assim_wire::msg::{CheckSpec, CheckState};
use tokio::sync::{mpsc, oneshot};

use super::*;

/// A `check run` request from the API.
#[derive(Debug)]
pub struct RunRequest {
    /// Host name or node id.
    pub host: String,
    pub check: String,
    /// The node's answer (JSON payload), or why there is none.
    pub reply: oneshot::Sender<Result<serde_json::Value, String>>,
}

/// A listener's identity: (protocol, address, port).
type ListenerKey = (String, IpAddr, u16);

/// The sending half the API holds.
pub type RunSender = mpsc::Sender<RunRequest>;

/// Service-monitoring state of the CMA driver.
#[derive(Debug)]
pub(super) struct CmaChecks {
    rules: RuleSet,
    /// Per node: the epoch and checks last decided (and stored).
    sets: HashMap<NodeId, (u64, Vec<CheckSpec>)>,
    /// Per node: the listeners of its latest `sockets` result (loaded lazily from the store).
    listeners: HashMap<NodeId, Vec<Listener>>,
    /// Per node: listeners that matched a rule, keyed by (protocol, ip, port), with when they
    /// were last seen. A monitored service that stops listening keeps its check (that is what
    /// the check is for) until it has been gone for [`FORGET_AFTER`].
    remembered: HashMap<NodeId, HashMap<ListenerKey, (Listener, Timestamp)>>,
    states: HashMap<(NodeId, String), KnownState>,
    pending: HashMap<u64, oneshot::Sender<Result<serde_json::Value, String>>>,
    next_command: u64,
}

impl CmaChecks {
    /// Loads the rules and the stored check sets and states.
    pub(super) fn load(store: &Store, rules_dir: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let rules = RuleSet::load(rules_dir).with_context(|| match rules_dir {
            Some(d) => {
                format!("cannot load the check rules in {} (see docs/checks.md)", d.display())
            }
            None => "the built-in check rules are invalid".to_owned(),
        })?;
        let sets = store
            .check_sets()?
            .into_iter()
            .map(|s| (s.node, (s.epoch, s.checks.iter().map(StoredCheck::to_spec).collect())))
            .collect();
        let states = store
            .service_states()?
            .into_iter()
            .filter_map(|s| {
                let state = assim_checks::parse_state(&s.state)?;
                Some(((s.node, s.check), KnownState { state, flapping: s.flapping }))
            })
            .collect();
        info!(
            rules = rules.rules.len(),
            host_checks = rules.host_checks.len(),
            hand_set = rules.checks.len(),
            dir = ?rules_dir,
            "check rules loaded"
        );
        Ok(CmaChecks {
            rules,
            sets,
            listeners: HashMap::new(),
            remembered: HashMap::new(),
            states,
            pending: HashMap::new(),
            next_command: 1,
        })
    }
}

/// How long a monitored service may be gone (not listening) before its check is removed.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The listening sockets of a `sockets` discovery payload.
pub fn listeners_of(payload: &[u8]) -> Result<Vec<Listener>, serde_json::Error> {
    let s: assim_discovery::sockets::Sockets = serde_json::from_slice(payload)?;
    Ok(s.listening
        .into_iter()
        .map(|e| Listener {
            protocol: format!("{:?}", e.protocol).to_ascii_lowercase(),
            ip: e.local.ip(),
            port: e.local.port(),
            exe: e.owner.as_ref().and_then(|o| o.exe.clone()),
            cmdline: e.owner.map(|o| o.cmdline).unwrap_or_default(),
            user: e.user,
        })
        .collect())
}

/// Which services (protocol, port, address) a check set watches: a check made by a rule for a
/// listener watches that listener's port; a wildcard listener covers every address.
fn monitors_of(rules: &RuleSet, host: &str, listeners: &[Listener]) -> Vec<MonitorRecord> {
    let mut out = Vec::new();
    for l in listeners {
        let one = rules.desired(host, std::slice::from_ref(l));
        for spec in one {
            if rules.host_checks.iter().any(|h| h.spec.name == spec.name)
                || rules.checks.iter().any(|h| h.spec.name == spec.name)
            {
                continue;
            }
            let service_ip: Option<IpAddr> = (!l.ip.is_unspecified()).then_some(l.ip);
            out.push(MonitorRecord {
                protocol: l.protocol.clone(),
                service_ip,
                port: l.port,
                check_name: spec.name,
            });
        }
    }
    out.sort_by(|a, b| (a.port, &a.check_name).cmp(&(b.port, &b.check_name)));
    out.dedup();
    out
}

impl Driver {
    /// A node's sockets changed: recompute its checks.
    pub(super) fn checks_on_sockets(&mut self, node: NodeId, payload: &[u8]) {
        match listeners_of(payload) {
            Ok(l) => {
                self.checks.listeners.insert(node, l);
                self.update_check_set(node, false);
            }
            Err(e) => {
                warn!(node = %node, error = %e, "sockets discovery result is not what the check rules expect")
            }
        }
    }

    /// A node registered: make sure its check set is current, and send it.
    pub(super) fn checks_on_hello(&mut self, node: NodeId) {
        if !self.checks.listeners.contains_key(&node) {
            let stored = self
                .store
                .discovery(node)
                .ok()
                .and_then(|d| d.into_iter().find(|r| r.name == "sockets").map(|r| r.payload));
            let listeners =
                stored.and_then(|p| listeners_of(p.as_bytes()).ok()).unwrap_or_default();
            self.checks.listeners.insert(node, listeners);
        }
        self.update_check_set(node, true);
    }

    /// Recomputes the desired check set; stores and sends it when it changed (or when `resend`).
    fn update_check_set(&mut self, node: NodeId, resend: bool) {
        let Some(rec) = self.core.node(node) else { return };
        let host = rec.hostname.clone();
        let addr = rec.listen_addr;
        let now = Timestamp::now();
        let current = self.checks.listeners.get(&node).cloned().unwrap_or_default();
        let remembered = self.checks.remembered.entry(node).or_default();
        for l in &current {
            if self.checks.rules.rules.iter().any(|r| r.matches(l)) {
                let key = (l.protocol.clone(), l.ip, l.port);
                remembered.insert(key, (l.clone(), now));
            }
        }
        remembered.retain(|_, (_, seen)| now.since(*seen) < FORGET_AFTER);
        let mut listeners = current.clone();
        for (l, _) in remembered.values() {
            if !current.iter().any(|c| (&c.protocol, c.ip, c.port) == (&l.protocol, l.ip, l.port)) {
                listeners.push(l.clone());
            }
        }
        let desired = self.checks.rules.desired(&host, &listeners);
        let current = self.checks.sets.get(&node);
        let changed = current.is_none_or(|(_, c)| *c != desired);
        if changed {
            let previous = current.map_or(0, |(e, _)| *e);
            let epoch = (previous + 1).max(Timestamp::now().micros() / 1_000_000);
            info!(
                node = %node, host = %host, epoch, checks = desired.len(),
                names = %desired.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(","),
                "check set changed"
            );
            self.progress.services.check_sets.push(CheckSetRecord {
                node,
                epoch,
                checks: desired.iter().map(StoredCheck::from_spec).collect(),
                monitors: monitors_of(&self.checks.rules, &host, &listeners),
            });
            let names: std::collections::HashSet<&str> =
                desired.iter().map(|c| c.name.as_str()).collect();
            self.checks.states.retain(|(n, c), _| *n != node || names.contains(c.as_str()));
            self.checks.sets.insert(node, (epoch, desired));
        }
        if changed || resend {
            let (epoch, checks) = self.checks.sets[&node].clone();
            let bytes = Message::new(Body::CheckSet(msg::CheckSet { epoch, checks })).to_bytes();
            self.send_reliable(node, addr, bytes, Instant::now());
        }
    }

    /// A nanoprobe reported a check's HARD state.
    pub(super) fn check_change(&mut self, node: NodeId, c: msg::CheckStateChange, now: Timestamp) {
        let key = (node, c.check.clone());
        let previous = self.checks.states.get(&key).copied();
        match self.core.handle_check_change(now, node, &c, previous) {
            Ok(_) => {
                let state = CheckState::try_from(c.state).unwrap_or(CheckState::Unknown);
                self.checks.states.insert(key, KnownState { state, flapping: c.flapping });
                let at = if c.at > 0 { c.at } else { now.micros() };
                self.progress.services.states.push(ServiceStateRecord {
                    node,
                    check: c.check,
                    state: assim_checks::state_name(state).to_owned(),
                    output: c.output,
                    perfdata: c.perfdata,
                    flapping: c.flapping,
                    since: at,
                    updated_at: now.micros(),
                });
            }
            Err(e) => {
                warn!(node = %node, error = %e, "check state change refused");
                self.reject("bad_check_change");
            }
        }
    }

    /// The answer to a `RunNow`.
    pub(super) fn command_result(&mut self, node: NodeId, r: msg::CommandResult) {
        let Some(reply) = self.checks.pending.remove(&r.command_id) else {
            debug!(node = %node, command_id = r.command_id, "command result nobody waits for");
            return;
        };
        let answer = if r.ok {
            serde_json::from_slice(&r.payload)
                .map_err(|e| format!("the nanoprobe's answer is not JSON: {e}"))
        } else {
            Err(r.error)
        };
        let _ = reply.send(answer);
    }

    /// `assim check run`: send `RunNow` to the node.
    pub(super) fn run_request(&mut self, req: RunRequest) {
        self.checks.pending.retain(|_, tx| !tx.is_closed());
        let node = self
            .core
            .nodes()
            .find(|n| n.hostname == req.host || n.id.to_string() == req.host)
            .map(|n| (n.id, n.listen_addr, n.state, n.display_name()));
        let Some((id, addr, state, name)) = node else {
            let _ = req.reply.send(Err(format!(
                "no host named {:?}: see `assim status` for the hosts the CMA knows",
                req.host
            )));
            return;
        };
        if !state.in_ring() {
            let _ = req
                .reply
                .send(Err(format!("host {name} is {state}: its nanoprobe cannot run checks now")));
            return;
        }
        let known =
            self.checks.sets.get(&id).is_some_and(|(_, c)| c.iter().any(|c| c.name == req.check));
        if !known {
            let names: Vec<String> = self
                .checks
                .sets
                .get(&id)
                .map(|(_, c)| c.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default();
            let _ = req.reply.send(Err(format!(
                "host {name} has no check named {:?} (it has: {}); see `assim services --host {name}`",
                req.check,
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )));
            return;
        }
        let command_id = self.checks.next_command;
        self.checks.next_command += 1;
        self.checks.pending.insert(command_id, req.reply);
        info!(node = %id, host = %name, check = %req.check, command_id, "asking a nanoprobe to run a check now");
        let bytes =
            Message::new(Body::RunNow(msg::RunNow { command_id, check: req.check })).to_bytes();
        self.send_reliable(id, addr, bytes, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_from_a_sockets_payload_and_their_monitors() {
        let payload = serde_json::json!({
            "listening": [{
                "protocol": "tcp", "local": "0.0.0.0:22", "remote": "0.0.0.0:0", "uid": 0,
                "user": "root", "inode": 1,
                "owner": {"pid": 10, "exe": "/usr/sbin/sshd", "cmdline": ["sshd", "-D"]}
            }, {
                "protocol": "tcp", "local": "127.0.0.1:9000", "remote": "0.0.0.0:0", "uid": 0,
                "user": "root", "inode": 2, "owner": null
            }],
            "established": []
        });
        let l = listeners_of(payload.to_string().as_bytes()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].protocol.as_str(), l[0].port), ("tcp", 22));
        assert_eq!(l[0].exe.as_deref(), Some("/usr/sbin/sshd"));
        let m = monitors_of(&RuleSet::defaults(), "h", &l);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!((m[0].port, m[0].service_ip, m[0].check_name.as_str()), (22, None, "ssh:22"));
        assert!(listeners_of(b"{\"nope\": 1}").is_err());
    }
}
