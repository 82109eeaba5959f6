//! The CMA's side of service monitoring, plugged into the CMA shell as part of its extension
//! ([`super::DaemonExt`]); every method gets the shell's context ([`Cx`]: the core, the batch,
//! sends). Until the check-set decisions move into `assim-cma`, they live here:
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
//! - **Hand-set checks.** `assim check add/remove` reach the driver as [`ChecksRequest`]s; a
//!   valid check is stored (`manual_checks`, in the batch transaction) and the node's set is
//!   recomputed at once. Hand-set checks win over same-named checks from rules and config files.
//! - **Stopped services.** The listeners that matched a rule are remembered with when they were
//!   last seen, in memory and in the store (`remembered_services`), so a CMA restart keeps the
//!   check of a service that is down until it has been gone for [`FORGET_AFTER`].
//! - **Run now.** The API sends a [`RunRequest`]; the driver sends `RunNow` to the node and
//!   answers the API when the node's `CommandResult` arrives (the API times out on its own).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use assim_checks::{Listener, RuleSet};
use assim_cma::services::KnownState;
use assim_store_sqlite::services::{
    CheckListEntry, CheckSetRecord, ManualChange, ManualCheck, RememberedService,
    ServiceStateRecord, StoredCheck,
};
use assim_store_sqlite::topology::query::MonitorRecord;
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

/// Why a checks request was refused; the API maps it to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksError {
    /// No such host or check (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid (400).
    #[error("{0}")]
    Invalid(String),
}

/// A request from the API to the CMA task's service monitoring.
#[derive(Debug)]
pub enum ChecksRequest {
    /// `assim check run`.
    Run(RunRequest),
    /// `assim check add`: add or replace a hand-set check.
    Add {
        host: String,
        check: StoredCheck,
        reply: oneshot::Sender<Result<CheckListEntry, ChecksError>>,
    },
    /// `assim check remove`: remove a hand-set check.
    /// Answers `{"host", "name", "epoch"}` (the node's new set epoch).
    Remove {
        host: String,
        name: String,
        reply: oneshot::Sender<Result<serde_json::Value, ChecksError>>,
    },
    /// `assim check list`: the desired check sets with where each check came from.
    List { host: Option<String>, reply: oneshot::Sender<Result<Vec<CheckListEntry>, ChecksError>> },
}

/// A listener's identity: (protocol, address, port).
type ListenerKey = (String, IpAddr, u16);

/// The sending half the API holds.
pub type RunSender = mpsc::Sender<ChecksRequest>;

/// Service-monitoring state of the CMA driver.
#[derive(Debug)]
pub(super) struct CmaChecks {
    /// A reader of the store, for a node's stored `sockets` result when it registers.
    pub(super) reader: Option<Store>,
    rules: RuleSet,
    /// Per node: the epoch and checks last decided (and stored).
    sets: HashMap<NodeId, (u64, Vec<CheckSpec>)>,
    /// Per node: the listeners of its latest `sockets` result (loaded lazily from the store).
    listeners: HashMap<NodeId, Vec<Listener>>,
    /// Per node: listeners that matched a rule, keyed by (protocol, ip, port), with when they
    /// were last seen. A monitored service that stops listening keeps its check (that is what
    /// the check is for) until it has been gone for [`FORGET_AFTER`].
    remembered: HashMap<NodeId, HashMap<ListenerKey, (Listener, Timestamp)>>,
    /// Per node: when its remembered services were last written to the store.
    remembered_stored: HashMap<NodeId, Timestamp>,
    /// Per node: hand-set checks by name (`assim check add`).
    manual: HashMap<NodeId, BTreeMap<String, CheckSpec>>,
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
        let mut manual: HashMap<NodeId, BTreeMap<String, CheckSpec>> = HashMap::new();
        for m in store.manual_checks()? {
            manual.entry(m.node).or_default().insert(m.check.name.clone(), m.check.to_spec());
        }
        let remembered = store
            .remembered_services()?
            .into_iter()
            .map(|(node, list)| {
                let map = list
                    .into_iter()
                    .map(|r| {
                        let l = Listener {
                            protocol: r.protocol,
                            ip: r.ip,
                            port: r.port,
                            exe: r.exe,
                            cmdline: r.cmdline,
                            user: r.user,
                        };
                        ((l.protocol.clone(), l.ip, l.port), (l, Timestamp(r.seen)))
                    })
                    .collect();
                (node, map)
            })
            .collect();
        info!(
            hand_set_by_cli = manual.values().map(BTreeMap::len).sum::<usize>(),
            rules = rules.rules.len(),
            host_checks = rules.host_checks.len(),
            hand_set = rules.checks.len(),
            dir = ?rules_dir,
            "check rules loaded"
        );
        Ok(CmaChecks {
            reader: None,
            rules,
            sets,
            listeners: HashMap::new(),
            remembered,
            remembered_stored: HashMap::new(),
            manual,
            states,
            pending: HashMap::new(),
            next_command: 1,
        })
    }
}

/// How stale the stored "last seen" time of a remembered service may get.
const STORE_SEEN_EVERY: Duration = Duration::from_secs(3600);

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

impl CmaChecks {
    /// A node's sockets changed: recompute its checks.
    pub(super) fn on_sockets(&mut self, cx: &mut Cx<'_>, node: NodeId, payload: &[u8]) {
        match listeners_of(payload) {
            Ok(l) => {
                self.listeners.insert(node, l);
                self.update_check_set(cx, node, false);
            }
            Err(e) => {
                warn!(node = %node, error = %e, "sockets discovery result is not what the check rules expect")
            }
        }
    }

    /// A node registered: make sure its check set is current, and send it.
    pub(super) fn on_hello(&mut self, cx: &mut Cx<'_>, node: NodeId) {
        if !self.listeners.contains_key(&node) {
            let stored = self
                .reader
                .as_ref()
                .and_then(|r| r.discovery(node).ok())
                .and_then(|d| d.into_iter().find(|r| r.name == "sockets").map(|r| r.payload));
            let listeners =
                stored.and_then(|p| listeners_of(p.as_bytes()).ok()).unwrap_or_default();
            self.listeners.insert(node, listeners);
        }
        self.update_check_set(cx, node, true);
    }

    /// Recomputes the desired check set; stores and sends it when it changed (or when `resend`).
    fn update_check_set(&mut self, cx: &mut Cx<'_>, node: NodeId, resend: bool) {
        let Some(rec) = cx.core.node(node) else { return };
        let host = rec.hostname.clone();
        let now = Timestamp::now();
        let current = self.listeners.get(&node).cloned().unwrap_or_default();
        let remembered = self.remembered.entry(node).or_default();
        let mut before: Vec<ListenerKey> = remembered.keys().cloned().collect();
        before.sort();
        for l in &current {
            if self.rules.rules.iter().any(|r| r.matches(l)) {
                let key = (l.protocol.clone(), l.ip, l.port);
                remembered.insert(key, (l.clone(), now));
            }
        }
        remembered.retain(|_, (_, seen)| now.since(*seen) < FORGET_AFTER);
        // Store the memory when its members change, and refresh "last seen" at most hourly
        // (a restart then forgets a stopped service at most an hour early).
        let mut keys: Vec<ListenerKey> = remembered.keys().cloned().collect();
        keys.sort();
        let stored = self.remembered_stored.get(&node).copied();
        let stale = stored.is_none_or(|t| now.since(t) > STORE_SEEN_EVERY);
        if keys != before || (stale && !keys.is_empty()) {
            let list = remembered
                .values()
                .map(|(l, seen)| RememberedService {
                    protocol: l.protocol.clone(),
                    ip: l.ip,
                    port: l.port,
                    exe: l.exe.clone(),
                    cmdline: l.cmdline.clone(),
                    user: l.user.clone(),
                    seen: seen.micros(),
                })
                .collect();
            cx.progress.services.remembered.retain(|(n, _)| *n != node);
            cx.progress.services.remembered.push((node, list));
            self.remembered_stored.insert(node, now);
        }
        let mut listeners = current.clone();
        for (l, _) in remembered.values() {
            if !current.iter().any(|c| (&c.protocol, c.ip, c.port) == (&l.protocol, l.ip, l.port)) {
                listeners.push(l.clone());
            }
        }
        let desired = self.desired(node, &host, &listeners);
        let current = self.sets.get(&node);
        let changed = current.is_none_or(|(_, c)| *c != desired);
        if changed {
            let previous = current.map_or(0, |(e, _)| *e);
            let epoch = (previous + 1).max(Timestamp::now().micros() / 1_000_000);
            info!(
                node = %node, host = %host, epoch, checks = desired.len(),
                names = %desired.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(","),
                "check set changed"
            );
            cx.progress.services.check_sets.push(CheckSetRecord {
                node,
                epoch,
                checks: desired.iter().map(StoredCheck::from_spec).collect(),
                monitors: monitors_of(&self.rules, &host, &listeners),
            });
            let names: std::collections::HashSet<&str> =
                desired.iter().map(|c| c.name.as_str()).collect();
            self.states.retain(|(n, c), _| *n != node || names.contains(c.as_str()));
            self.sets.insert(node, (epoch, desired));
        }
        if changed || resend {
            let (epoch, checks) = self.sets[&node].clone();
            cx.send(node, Body::CheckSet(msg::CheckSet { epoch, checks }));
        }
    }

    /// The rules' checks for these listeners, with the node's hand-set checks on top.
    fn desired(&self, node: NodeId, host: &str, listeners: &[Listener]) -> Vec<CheckSpec> {
        let mut out: BTreeMap<String, CheckSpec> =
            self.rules.desired(host, listeners).into_iter().map(|c| (c.name.clone(), c)).collect();
        if let Some(m) = self.manual.get(&node) {
            out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out.into_values().collect()
    }

    /// The current and remembered listeners of a node (what its check set is made from).
    fn listeners_with_remembered(&self, node: NodeId) -> Vec<Listener> {
        let mut out = self.listeners.get(&node).cloned().unwrap_or_default();
        for (l, _) in self.remembered.get(&node).into_iter().flat_map(|m| m.values()) {
            if !out.iter().any(|c| (&c.protocol, c.ip, c.port) == (&l.protocol, l.ip, l.port)) {
                out.push(l.clone());
            }
        }
        out
    }

    /// Where each check of a node's set comes from: `manual`, `config`, `host` or `rule:NAME`.
    fn sources(&self, node: NodeId, host: &str) -> HashMap<String, String> {
        let rules = &self.rules;
        let mut out = HashMap::new();
        for l in self.listeners_with_remembered(node) {
            if let Some(rule) = rules.rules.iter().rev().find(|r| r.matches(&l)) {
                for c in rules.desired(host, std::slice::from_ref(&l)) {
                    out.entry(c.name).or_insert_with(|| format!("rule:{}", rule.name));
                }
            }
        }
        for c in rules.desired(host, &[]) {
            out.insert(c.name, "host".to_owned());
        }
        for t in rules.checks.iter().filter(|t| t.host.as_deref() == Some(host)) {
            out.insert(t.spec.name.clone(), "config".to_owned());
        }
        for name in self.manual.get(&node).into_iter().flat_map(|m| m.keys()) {
            out.insert(name.clone(), "manual".to_owned());
        }
        out
    }

    /// A host by name or node id: its id and display name.
    fn find_host(&self, cx: &Cx<'_>, host: &str) -> Result<(NodeId, String), ChecksError> {
        cx.core
            .nodes()
            .find(|n| n.hostname == host || n.id.to_string() == host)
            .map(|n| (n.id, n.display_name()))
            .ok_or_else(|| {
                ChecksError::NotFound(format!(
                    "no host named {host:?}: see `assim status` for the hosts the CMA knows"
                ))
            })
    }

    /// The list entries of one node's set.
    fn list_node(&self, cx: &Cx<'_>, node: NodeId) -> Vec<CheckListEntry> {
        let Some(rec) = cx.core.node(node) else { return Vec::new() };
        let host = rec.hostname.clone();
        let Some((epoch, checks)) = self.sets.get(&node) else { return Vec::new() };
        let sources = self.sources(node, &host);
        checks
            .iter()
            .map(|c| CheckListEntry {
                host: host.clone(),
                node,
                epoch: *epoch,
                source: sources.get(&c.name).cloned().unwrap_or_else(|| "unknown".to_owned()),
                check: StoredCheck::from_spec(c),
            })
            .collect()
    }

    /// A request from the API.
    pub(super) fn request(&mut self, cx: &mut Cx<'_>, req: ChecksRequest) {
        match req {
            ChecksRequest::Run(r) => self.run_request(cx, r),
            ChecksRequest::Add { host, check, reply } => {
                let _ = reply.send(self.add_manual(cx, &host, check));
            }
            ChecksRequest::Remove { host, name, reply } => {
                let _ = reply.send(self.remove_manual(cx, &host, &name));
            }
            ChecksRequest::List { host, reply } => {
                let answer = match host {
                    Some(h) => self.find_host(cx, &h).map(|(id, _)| self.list_node(cx, id)),
                    None => {
                        let mut nodes: Vec<NodeId> = self.sets.keys().copied().collect();
                        nodes.sort();
                        Ok(nodes.into_iter().flat_map(|n| self.list_node(cx, n)).collect())
                    }
                };
                let _ = reply.send(answer.map(|mut l| {
                    l.sort_by(|a, b| (&a.host, &a.check.name).cmp(&(&b.host, &b.check.name)));
                    l
                }));
            }
        }
    }

    /// `assim check add`: validate, store, recompute and send the node's set.
    fn add_manual(
        &mut self,
        cx: &mut Cx<'_>,
        host: &str,
        check: StoredCheck,
    ) -> Result<CheckListEntry, ChecksError> {
        let (node, name) = self.find_host(cx, host)?;
        let spec = check.to_spec();
        assim_checks::Check::try_from(&spec).map_err(|e| ChecksError::Invalid(e.to_string()))?;
        let count = self.manual.get(&node).map_or(0, BTreeMap::len);
        if count >= assim_checks::spec::MAX_CHECKS {
            return Err(ChecksError::Invalid(format!(
                "host {name} already has {count} hand-set checks: remove some first"
            )));
        }
        info!(node = %node, host = %name, check = %spec.name, kind = %spec.kind, "hand-set check added");
        self.manual.entry(node).or_default().insert(spec.name.clone(), spec.clone());
        cx.progress.services.manual.push(ManualChange::Put(ManualCheck {
            node,
            check: StoredCheck::from_spec(&spec),
            added_at: Timestamp::now().micros(),
        }));
        self.update_check_set(cx, node, false);
        cx.commit_soon();
        self.list_node(cx, node)
            .into_iter()
            .find(|e| e.check.name == spec.name)
            .ok_or_else(|| ChecksError::NotFound(format!("host {name} has no check set yet")))
    }

    /// `assim check remove`: only hand-set checks can be removed this way.
    fn remove_manual(
        &mut self,
        cx: &mut Cx<'_>,
        host: &str,
        check: &str,
    ) -> Result<serde_json::Value, ChecksError> {
        let (node, name) = self.find_host(cx, host)?;
        let removed = self.manual.get_mut(&node).and_then(|m| m.remove(check));
        if removed.is_none() {
            let hand: Vec<String> =
                self.manual.get(&node).map(|m| m.keys().cloned().collect()).unwrap_or_default();
            let other = self
                .sources(node, &cx.core.node(node).map(|n| n.hostname.clone()).unwrap_or_default());
            let hint = match other.get(check) {
                Some(src) => format!(
                    "; {check:?} comes from {src}: change or disable it in the rules files                      (docs/checks.md)"
                ),
                None => String::new(),
            };
            return Err(ChecksError::NotFound(format!(
                "host {name} has no hand-set check named {check:?} (hand-set: {}){hint}; see                  `assim check list --host {name}`",
                if hand.is_empty() { "none".to_owned() } else { hand.join(", ") }
            )));
        }
        info!(node = %node, host = %name, check = %check, "hand-set check removed");
        cx.progress.services.manual.push(ManualChange::Remove { node, name: check.to_owned() });
        self.update_check_set(cx, node, false);
        cx.commit_soon();
        let epoch = self.sets.get(&node).map_or(0, |(e, _)| *e);
        Ok(serde_json::json!({ "host": name, "name": check, "epoch": epoch }))
    }

    /// A nanoprobe reported a check's HARD state.
    pub(super) fn check_change(&mut self, cx: &mut Cx<'_>, node: NodeId, c: msg::CheckStateChange) {
        let now = cx.now;
        let key = (node, c.check.clone());
        let previous = self.states.get(&key).copied();
        match cx.core.handle_check_change(now, node, &c, previous) {
            Ok(_) => {
                let state = CheckState::try_from(c.state).unwrap_or(CheckState::Unknown);
                self.states.insert(key, KnownState { state, flapping: c.flapping });
                let at = if c.at > 0 { c.at } else { now.micros() };
                cx.progress.services.states.push(ServiceStateRecord {
                    node,
                    check: c.check,
                    state: state.name().to_owned(),
                    output: c.output,
                    perfdata: c.perfdata,
                    flapping: c.flapping,
                    since: at,
                    updated_at: now.micros(),
                });
            }
            Err(e) => {
                warn!(node = %node, error = %e, "check state change refused");
                cx.reject("bad_check_change");
            }
        }
    }

    /// The answer to a `RunNow`.
    pub(super) fn command_result(&mut self, node: NodeId, r: msg::CommandResult) {
        let Some(reply) = self.pending.remove(&r.command_id) else {
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
    pub(super) fn run_request(&mut self, cx: &mut Cx<'_>, req: RunRequest) {
        self.pending.retain(|_, tx| !tx.is_closed());
        let node = cx
            .core
            .nodes()
            .find(|n| n.hostname == req.host || n.id.to_string() == req.host)
            .map(|n| (n.id, n.state, n.display_name()));
        let Some((id, state, name)) = node else {
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
        let known = self.sets.get(&id).is_some_and(|(_, c)| c.iter().any(|c| c.name == req.check));
        if !known {
            let names: Vec<String> = self
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
        let command_id = self.next_command;
        self.next_command += 1;
        self.pending.insert(command_id, req.reply);
        info!(node = %id, host = %name, check = %req.check, command_id, "asking a nanoprobe to run a check now");
        cx.send(id, Body::RunNow(msg::RunNow { command_id, check: req.check }));
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
