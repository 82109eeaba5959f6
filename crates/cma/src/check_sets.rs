//! Every node's desired check set: rules × discovered listeners, plus host-level, config and
//! hand-set checks, with the memory of stopped services. Pure data in, records out; driven by
//! [`crate::Authority`].
//!
//! - **Automatic configuration.** When a node's `sockets` discovery result changes (and when
//!   it registers), its listening processes go through the rules ([`RuleSet`]: shipped defaults
//!   plus the operator's files), together with host-level and hand-set checks. If the result
//!   differs from the stored set, the set's epoch becomes the stored epoch + 1 (persisted with
//!   the set, so a restart continues from it; no clock is read).
//! - **Stopped services.** The listeners that matched a rule are remembered with when they were
//!   last seen, so a service that stops listening keeps its check (that is what the check is
//!   for) until it has been gone for [`FORGET_AFTER`], also across a CMA restart: the memory is
//!   persisted when its members change, and its "last seen" times at most every
//!   [`STORE_SEEN_EVERY`] (a restart then forgets a stopped service at most that much early).
//! - **Hand-set checks** (`assim check add/remove`) win over same-named checks from rules and
//!   config files.
//! - **States.** The last HARD state per check, so repeats raise no event; the states of checks
//!   that left a node's set are forgotten with it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use assim_checks::{Listener, RuleSet};
use assim_wire::msg::CheckSpec;
use assim_wire::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::services::KnownState;

/// How long a monitored service may be gone (not listening) before its check is removed.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How stale the stored "last seen" time of a remembered service may get.
pub const STORE_SEEN_EVERY: Duration = Duration::from_secs(3600);

/// A listener's identity: (protocol, address, port).
type ListenerKey = (String, IpAddr, u16);

/// A node's desired check set, and the services (listeners) its checks watch. Persisted
/// (`check_sets` and the topology's `monitors`); restored through [`crate::DesiredSnapshot`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckSetRecord {
    pub node: NodeId,
    /// Grows by one whenever the set changes.
    pub epoch: u64,
    pub checks: Vec<CheckSpec>,
    /// Replaces the node's rows in the topology's `monitors` table.
    pub monitors: Vec<Monitor>,
}

/// One service a check watches (the store's `MonitorRecord`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Monitor {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The service address it checks; `None` covers the port on every address of the node.
    pub service_ip: Option<IpAddr>,
    pub port: u16,
    pub check_name: String,
}

/// A listener that matched a rule, as remembered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedService {
    pub protocol: String,
    pub ip: IpAddr,
    pub port: u16,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub user: Option<String>,
    /// When it was last seen listening, µs since the epoch.
    pub seen: u64,
}

impl RememberedService {
    fn of(l: &Listener, seen: Timestamp) -> Self {
        RememberedService {
            protocol: l.protocol.clone(),
            ip: l.ip,
            port: l.port,
            exe: l.exe.clone(),
            cmdline: l.cmdline.clone(),
            user: l.user.clone(),
            seen: seen.micros(),
        }
    }

    fn listener(&self) -> Listener {
        Listener {
            protocol: self.protocol.clone(),
            ip: self.ip,
            port: self.port,
            exe: self.exe.clone(),
            cmdline: self.cmdline.clone(),
            user: self.user.clone(),
        }
    }
}

/// A check set by hand for one node (`assim check add`).
#[derive(Clone, Debug, PartialEq)]
pub struct ManualCheck {
    pub node: NodeId,
    pub check: CheckSpec,
    /// When it was added, µs since the epoch.
    pub added_at: u64,
}

/// A change to the hand-set checks: add (or replace) one, or remove one by name.
#[derive(Clone, Debug, PartialEq)]
pub enum ManualChange {
    Put(ManualCheck),
    Remove { node: NodeId, name: String },
}

/// One entry of `assim check list`: a check of a node's desired set and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckListEntry {
    pub host: String,
    pub node: NodeId,
    /// The epoch of the node's check set.
    pub epoch: u64,
    /// `rule:NAME`, `host` (a host-level check), `config` (a `[[check]]` in a rules file),
    /// `manual` (`assim check add`), or `unknown`.
    pub source: String,
    pub check: CheckSpec,
}

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

/// Which services a check set watches: a check made by a rule for a listener watches that
/// listener's port; a wildcard listener covers every address.
pub fn monitors_of(rules: &RuleSet, host: &str, listeners: &[Listener]) -> Vec<Monitor> {
    let mut out = Vec::new();
    for l in listeners {
        for spec in rules.desired(host, std::slice::from_ref(l)) {
            if rules.host_checks.iter().any(|h| h.spec.name == spec.name)
                || rules.checks.iter().any(|h| h.spec.name == spec.name)
            {
                continue;
            }
            out.push(Monitor {
                protocol: l.protocol.clone(),
                service_ip: (!l.ip.is_unspecified()).then_some(l.ip),
                port: l.port,
                check_name: spec.name,
            });
        }
    }
    out.sort_by(|a, b| (a.port, &a.check_name).cmp(&(b.port, &b.check_name)));
    out.dedup();
    out
}

/// What one recomputation decided.
#[derive(Debug, Default)]
pub(crate) struct Decided {
    /// The node's remembered services changed (or their "last seen" is due to be stored).
    pub remembered: Option<Vec<RememberedService>>,
    /// The set changed: the new record, to persist.
    pub set: Option<CheckSetRecord>,
}

/// Service-monitoring state. See the module doc.
#[derive(Debug)]
pub struct CheckSets {
    rules: RuleSet,
    /// Per node: the epoch and checks last decided (and persisted).
    sets: BTreeMap<NodeId, (u64, Vec<CheckSpec>)>,
    /// Per node: the listeners of its latest `sockets` result.
    listeners: HashMap<NodeId, Vec<Listener>>,
    /// Per node: listeners that matched a rule, with when they were last seen.
    remembered: HashMap<NodeId, BTreeMap<ListenerKey, (Listener, Timestamp)>>,
    /// Per node: when its remembered services were last persisted.
    remembered_stored: HashMap<NodeId, Timestamp>,
    /// Per node: hand-set checks by name.
    manual: HashMap<NodeId, BTreeMap<String, CheckSpec>>,
    states: HashMap<(NodeId, String), KnownState>,
}

impl CheckSets {
    /// Restores from what the store holds.
    pub(crate) fn new(rules: RuleSet, snap: &crate::desired::DesiredSnapshot) -> CheckSets {
        let sets = snap.check_sets.iter().map(|s| (s.node, (s.epoch, s.checks.clone()))).collect();
        let states = snap
            .states
            .iter()
            .filter_map(|s| {
                let state = assim_checks::parse_state(&s.state)?;
                Some(((s.node, s.check.clone()), KnownState { state, flapping: s.flapping }))
            })
            .collect();
        let mut manual: HashMap<NodeId, BTreeMap<String, CheckSpec>> = HashMap::new();
        for m in &snap.manual {
            manual.entry(m.node).or_default().insert(m.check.name.clone(), m.check.clone());
        }
        let remembered = snap
            .remembered
            .iter()
            .map(|(node, list)| {
                let map = list
                    .iter()
                    .map(|r| {
                        let l = r.listener();
                        ((l.protocol.clone(), l.ip, l.port), (l, Timestamp(r.seen)))
                    })
                    .collect();
                (*node, map)
            })
            .collect();
        let listeners = snap
            .sockets
            .iter()
            .filter_map(|(node, payload)| Some((*node, listeners_of(payload).ok()?)))
            .collect();
        CheckSets {
            rules,
            sets,
            listeners,
            remembered,
            remembered_stored: HashMap::new(),
            manual,
            states,
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The node's current set and its epoch.
    pub fn set(&self, node: NodeId) -> Option<(u64, &[CheckSpec])> {
        self.sets.get(&node).map(|(e, c)| (*e, c.as_slice()))
    }

    /// Nodes with a set, by id.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.sets.keys().copied()
    }

    pub(crate) fn set_listeners(&mut self, node: NodeId, l: Vec<Listener>) {
        self.listeners.insert(node, l);
    }

    pub(crate) fn known_state(&self, node: NodeId, check: &str) -> Option<KnownState> {
        self.states.get(&(node, check.to_owned())).copied()
    }

    pub(crate) fn set_state(&mut self, node: NodeId, check: String, s: KnownState) {
        self.states.insert((node, check), s);
    }

    pub(crate) fn manual(&self, node: NodeId) -> Option<&BTreeMap<String, CheckSpec>> {
        self.manual.get(&node)
    }

    pub(crate) fn put_manual(&mut self, node: NodeId, spec: CheckSpec) {
        self.manual.entry(node).or_default().insert(spec.name.clone(), spec);
    }

    pub(crate) fn remove_manual(&mut self, node: NodeId, name: &str) -> Option<CheckSpec> {
        self.manual.get_mut(&node).and_then(|m| m.remove(name))
    }

    /// Recomputes a node's desired set from its listeners, its remembered services and its
    /// hand-set checks.
    pub(crate) fn update(&mut self, node: NodeId, host: &str, now: Timestamp) -> Decided {
        let mut out = Decided::default();
        let current = self.listeners.get(&node).cloned().unwrap_or_default();
        let remembered = self.remembered.entry(node).or_default();
        let before: Vec<(ListenerKey, Listener)> =
            remembered.iter().map(|(k, (l, _))| (k.clone(), l.clone())).collect();
        for l in &current {
            if self.rules.rules.iter().any(|r| r.matches(l)) {
                remembered.insert((l.protocol.clone(), l.ip, l.port), (l.clone(), now));
            }
        }
        remembered.retain(|_, (_, seen)| now.since(*seen) < FORGET_AFTER);
        let after: Vec<(ListenerKey, Listener)> =
            remembered.iter().map(|(k, (l, _))| (k.clone(), l.clone())).collect();
        let stale =
            self.remembered_stored.get(&node).is_none_or(|t| now.since(*t) > STORE_SEEN_EVERY);
        if after != before || (stale && !after.is_empty()) {
            out.remembered = Some(
                remembered.values().map(|(l, seen)| RememberedService::of(l, *seen)).collect(),
            );
            self.remembered_stored.insert(node, now);
        }
        let listeners = self.with_remembered(node);
        let desired = self.desired(node, host, &listeners);
        let stored = self.sets.get(&node);
        if stored.is_none_or(|(_, c)| *c != desired) {
            let epoch = stored.map_or(0, |(e, _)| *e) + 1;
            let names: std::collections::HashSet<&str> =
                desired.iter().map(|c| c.name.as_str()).collect();
            self.states.retain(|(n, c), _| *n != node || names.contains(c.as_str()));
            out.set = Some(CheckSetRecord {
                node,
                epoch,
                checks: desired.clone(),
                monitors: monitors_of(&self.rules, host, &listeners),
            });
            self.sets.insert(node, (epoch, desired));
        }
        out
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
    fn with_remembered(&self, node: NodeId) -> Vec<Listener> {
        let mut out = self.listeners.get(&node).cloned().unwrap_or_default();
        for (l, _) in self.remembered.get(&node).into_iter().flat_map(|m| m.values()) {
            if !out.iter().any(|c| (&c.protocol, c.ip, c.port) == (&l.protocol, l.ip, l.port)) {
                out.push(l.clone());
            }
        }
        out
    }

    /// Where each check of a node's set comes from: `manual`, `config`, `host` or `rule:NAME`.
    pub(crate) fn sources(&self, node: NodeId, host: &str) -> HashMap<String, String> {
        let rules = &self.rules;
        let mut out = HashMap::new();
        for l in self.with_remembered(node) {
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

    /// The list entries of one node's set.
    pub(crate) fn list_node(&self, node: NodeId, host: &str) -> Vec<CheckListEntry> {
        let Some((epoch, checks)) = self.sets.get(&node) else { return Vec::new() };
        let sources = self.sources(node, host);
        checks
            .iter()
            .map(|c| CheckListEntry {
                host: host.to_owned(),
                node,
                epoch: *epoch,
                source: sources.get(&c.name).cloned().unwrap_or_else(|| "unknown".to_owned()),
                check: c.clone(),
            })
            .collect()
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
