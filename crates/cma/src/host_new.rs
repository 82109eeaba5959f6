//! `host.new` (issue 17 item 3), the first-boot hook: one event the first time a node id ever
//! registers, carrying what a sink needs to register the machine elsewhere (a backup system, a
//! CMDB, DNS): its host name, addresses, OS and SSH host keys.
//!
//! Rules:
//! - A node id the CMA has never stored registers: it becomes *waiting*, with a deadline
//!   `registered + wait` ([`DEFAULT_WAIT`], `cma --host-new-wait`). A known node id saying
//!   hello again (a restarted nanoprobe, a nanoprobe that noticed a CMA restart, a host back
//!   from down or left) never is: the node records are the memory, and they are durable.
//! - It waits for the first results of the collectors in [`COLLECTORS`] (`os`,
//!   `ssh_host_keys`) that the discovery schedule runs (a collector disabled with interval 0 is
//!   not waited for). When the last one arrives, `host.new` is raised with everything
//!   (`complete=true`). At the deadline it is raised with what is known (`complete=false`, the
//!   tag `missing` naming what did not arrive). Either way exactly once.
//! - Durability: "waiting" is stored ([`HostNewChange::Waiting`], the store's
//!   `host_new_pending` table) in the batch of the hello that registered the node, and removed
//!   ([`HostNewChange::Raised`]) in the batch that holds the event — one transaction, so a
//!   crash between them replays the records and decides again, and no crash raises it twice.
//! - A CMA restart while a node waits: the store gives back the waiting nodes with the `os` and
//!   `ssh_host_keys` results stored for them ([`StoredWaiting`]); the deadline becomes the later
//!   of the stored one and `restart + wait`, because the nanoprobe resends its unacknowledged
//!   results only after it notices the restart: raising at once would announce a host without
//!   the OS its spool still holds.
//! - A node restored as waiting whose record is gone, or a result from a node that is not
//!   waiting: ignored. A result that does not have the collector's shape (hostile or from a
//!   newer nanoprobe) does not count as arrived; the deadline still bounds the wait.
//! - Bounds: at most [`MAX_KEYS`] keys and [`MAX_TEXT`] bytes per OS field go into the event.
//!
//! Stores created before this existed have no waiting rows: their nodes are not new and never
//! get `host.new`. O(log n) per input: the waiting nodes by id and by deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use assim_wire::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Cma;
use crate::model::EventKind;

/// How long a new node's `host.new` waits for its OS and SSH host keys by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The collectors whose first results `host.new` waits for.
pub const COLLECTORS: [&str; 2] = ["os", "ssh_host_keys"];

/// The most SSH host keys carried in one event.
pub const MAX_KEYS: usize = 32;

/// The longest OS field carried (longer ones are cut at a character boundary).
pub const MAX_TEXT: usize = 256;

/// A change to the stored waiting set, in the batch of the input that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostNewChange {
    /// The node registered for the first time; `host.new` is due by `due_at` (µs).
    Waiting { node: NodeId, due_at: u64 },
    /// `host.new` was raised (in the same batch): forget the node's row.
    Raised(NodeId),
}

/// A waiting node as the store gives it back: its deadline (µs) and the latest `os` and
/// `ssh_host_keys` payloads stored for it, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredWaiting {
    pub node: NodeId,
    pub due_at: u64,
    pub os: Option<String>,
    pub ssh_host_keys: Option<String>,
}

/// The OS as `host.new` carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsSummary {
    /// `ID` of os-release (`debian`).
    pub id: String,
    /// `VERSION_ID` (`13`).
    pub version_id: String,
    /// `PRETTY_NAME` (`Debian GNU/Linux 13 (trixie)`).
    pub pretty_name: String,
    /// `uname -r`.
    pub kernel: String,
    /// `uname -m`.
    pub machine: String,
    /// Fully qualified name, when the host has one.
    pub fqdn: Option<String>,
    /// `none`, `kvm`, `docker`, … as the collector says.
    pub virtualisation: String,
}

/// One SSH host key as `host.new` carries it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostKey {
    pub key_type: String,
    /// Base64 blob, as in `ssh_known_hosts`.
    pub key: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The OS of an `os` document; `None` if it does not have the collector's shape.
pub fn os_of(payload: &[u8]) -> Option<OsSummary> {
    let doc: assim_discovery::os::OsInfo = serde_json::from_slice(payload).ok()?;
    let field = |k: &str| cut(doc.os_release.get(k).map(String::as_str).unwrap_or(""));
    Some(OsSummary {
        id: field("ID"),
        version_id: field("VERSION_ID"),
        pretty_name: field("PRETTY_NAME"),
        kernel: cut(&doc.kernel_release),
        machine: cut(&doc.machine),
        fqdn: doc.fqdn.as_deref().map(cut),
        virtualisation: cut(&doc.virtualisation),
    })
}

/// The keys of an `ssh_host_keys` document (at most [`MAX_KEYS`], sorted); `None` if it does
/// not have the collector's shape.
pub fn keys_of(payload: &[u8]) -> Option<Vec<HostKey>> {
    let doc: assim_discovery::sshkeys::SshHostKeys = serde_json::from_slice(payload).ok()?;
    let keys: BTreeSet<HostKey> = doc
        .keys
        .into_iter()
        .map(|k| HostKey { key_type: k.key_type, key: k.key, fingerprint: k.fingerprint })
        .collect();
    Some(keys.into_iter().take(MAX_KEYS).collect())
}

/// What is known about a waiting node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    pub os: Option<OsSummary>,
    pub keys: Option<Vec<HostKey>>,
}

#[derive(Clone, Debug)]
struct Waiting {
    due_at: Timestamp,
    known: Known,
}

/// The waiting nodes. See the module doc.
#[derive(Clone, Debug)]
pub struct HostNew {
    wait: Duration,
    /// The collectors of [`COLLECTORS`] the schedule runs.
    needs: Vec<&'static str>,
    waiting: BTreeMap<NodeId, Waiting>,
    due: BTreeSet<(Timestamp, NodeId)>,
}

impl HostNew {
    /// `runs(name)`: whether the discovery schedule runs that collector.
    pub fn new(wait: Duration, runs: impl Fn(&str) -> bool) -> HostNew {
        HostNew {
            wait,
            needs: COLLECTORS.into_iter().filter(|c| runs(c)).collect(),
            waiting: BTreeMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// Restores the waiting nodes after a start at `now` (see the module doc for the deadline).
    pub fn restore(&mut self, stored: impl IntoIterator<Item = StoredWaiting>, now: Timestamp) {
        for s in stored {
            let known = Known {
                os: s.os.as_deref().and_then(|p| os_of(p.as_bytes())),
                keys: s.ssh_host_keys.as_deref().and_then(|p| keys_of(p.as_bytes())),
            };
            let due_at = Timestamp(s.due_at).max(now + self.wait);
            self.insert(s.node, Waiting { due_at, known });
        }
    }

    fn insert(&mut self, node: NodeId, w: Waiting) {
        if let Some(old) = self.waiting.insert(node, w.clone()) {
            self.due.remove(&(old.due_at, node));
        }
        self.due.insert((w.due_at, node));
    }

    /// Whether `node` waits for its `host.new`.
    pub fn is_waiting(&self, node: NodeId) -> bool {
        self.waiting.contains_key(&node)
    }

    /// How many nodes wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no node waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// `node` registered for the first time at `now`: what to store, and — when the schedule
    /// runs none of the collectors — `Some` to raise at once.
    pub fn registered(&mut self, node: NodeId, now: Timestamp) -> (HostNewChange, Option<Known>) {
        let due_at = now + self.wait;
        let change = HostNewChange::Waiting { node, due_at: due_at.micros() };
        if self.needs.is_empty() {
            return (change, Some(Known::default()));
        }
        self.insert(node, Waiting { due_at, known: Known::default() });
        (change, None)
    }

    /// A result of `collector` from `node`: `Some` (and the node no longer waits) when it was
    /// the last one awaited.
    pub fn observe(&mut self, node: NodeId, collector: &str, payload: &[u8]) -> Option<Known> {
        let w = self.waiting.get_mut(&node)?;
        match collector {
            "os" => w.known.os = Some(os_of(payload)?),
            "ssh_host_keys" => w.known.keys = Some(keys_of(payload)?),
            _ => return None,
        }
        if missing(&self.needs, &w.known).is_empty() {
            return self.take(node);
        }
        None
    }

    /// The awaited collectors that have not arrived.
    pub fn missing(&self, known: &Known) -> Vec<&'static str> {
        missing(&self.needs, known)
    }

    fn take(&mut self, node: NodeId) -> Option<Known> {
        let w = self.waiting.remove(&node)?;
        self.due.remove(&(w.due_at, node));
        Some(w.known)
    }

    /// The next node whose deadline passed at `now`, with what is known.
    pub fn poll_due(&mut self, now: Timestamp) -> Option<(NodeId, Known)> {
        let &(at, node) = self.due.first()?;
        if at > now {
            return None;
        }
        self.take(node).map(|k| (node, k))
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Forgets a node (deleted from the store).
    pub fn forget(&mut self, node: NodeId) {
        self.take(node);
    }
}

fn missing(needs: &[&'static str], known: &Known) -> Vec<&'static str> {
    needs
        .iter()
        .copied()
        .filter(|c| match *c {
            "os" => known.os.is_none(),
            _ => known.keys.is_none(),
        })
        .collect()
}

impl Cma {
    /// Emits `host.new` about `node` with what is known; `missing` names the awaited
    /// collectors that did not arrive. Nothing if the node is unknown.
    pub(crate) fn host_new(
        &mut self,
        now: Timestamp,
        node: NodeId,
        known: &Known,
        missing: &[&str],
    ) {
        let Some(rec) = self.node(node) else { return };
        let name = rec.display_name();
        let addresses = rec.addresses.clone();
        let body = serde_json::json!({
            "node_id": node.to_string(),
            "hostname": rec.hostname,
            "fqdn": known.os.as_ref().and_then(|o| o.fqdn.clone()),
            "addresses": addresses,
            "listen_addr": rec.listen_addr.to_string(),
            "version": rec.version,
            "registered_at": rec.registered_at.micros(),
            "os": known.os,
            "ssh_host_keys": known.keys,
            "complete": missing.is_empty(),
            "missing": missing,
        });
        let os = known
            .os
            .as_ref()
            .map(|o| format!("{} {}", o.id, o.version_id).trim().to_owned())
            .filter(|s| !s.is_empty());
        let key_types = known
            .keys
            .as_ref()
            .map(|k| k.iter().map(|k| k.key_type.as_str()).collect::<Vec<_>>().join(","));
        let mut tags = vec![
            ("addresses", addresses.join(",")),
            ("complete", (missing.is_empty()).to_string()),
        ];
        if let Some(os) = &os {
            tags.push(("os", os.clone()));
        }
        if let Some(t) = &key_types {
            tags.push(("ssh_key_types", t.clone()));
        }
        if !missing.is_empty() {
            tags.push(("missing", missing.join(",")));
        }
        let mut text = format!(
            "{name} is new: first registration of node {node} ({}; {}; {})",
            os.as_deref().unwrap_or("OS unknown"),
            match &known.keys {
                Some(k) => format!("{} SSH host keys", k.len()),
                None => "SSH host keys unknown".to_owned(),
            },
            if addresses.is_empty() { "no addresses".to_owned() } else { addresses.join(", ") },
        );
        if !missing.is_empty() {
            text.push_str(&format!("; {} did not arrive in time", missing.join(" and ")));
        }
        let e = self.event(now, EventKind::HostNew, Some(node), tags, text);
        e.body = Some(body);
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OS: &str = r##"{"os_release":{"ID":"debian","VERSION_ID":"13","PRETTY_NAME":"Debian GNU/Linux 13 (trixie)"},
        "kernel_name":"Linux","kernel_release":"6.12.0","kernel_version":"#1","machine":"x86_64",
        "hostname":"web1","fqdn":"web1.example.com","machine_id":null,"virtualisation":"kvm","boot_time_unix":1}"##;
    const KEYS: &str = r#"{"keys":[{"file":"/etc/ssh/ssh_host_ed25519_key.pub","key_type":"ssh-ed25519","key":"AAAA","fingerprint":"SHA256:x"}]}"#;

    fn t(s: u64) -> Timestamp {
        Timestamp(s * 1_000_000)
    }

    #[test]
    fn waits_for_both_collectors_then_once() {
        let mut h = HostNew::new(DEFAULT_WAIT, |_| true);
        let n = NodeId([1; 16]);
        let (change, now) = h.registered(n, t(100));
        assert_eq!(change, HostNewChange::Waiting { node: n, due_at: t(160).micros() });
        assert!(now.is_none());
        assert_eq!(h.observe(n, "os", OS.as_bytes()), None);
        assert_eq!(h.observe(n, "interfaces", b"{}"), None);
        let k = h.observe(n, "ssh_host_keys", KEYS.as_bytes()).unwrap();
        assert_eq!(k.os.unwrap().pretty_name, "Debian GNU/Linux 13 (trixie)");
        assert_eq!(k.keys.unwrap()[0].key_type, "ssh-ed25519");
        // Never again: not waiting, nothing due.
        assert_eq!(h.observe(n, "ssh_host_keys", KEYS.as_bytes()), None);
        assert_eq!(h.poll_due(t(1000)), None);
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn the_deadline_raises_with_what_is_known() {
        let mut h = HostNew::new(Duration::from_secs(10), |_| true);
        let n = NodeId([1; 16]);
        h.registered(n, t(0));
        // A payload without the collector's shape does not count.
        assert_eq!(h.observe(n, "ssh_host_keys", br#"{"keys":"nope"}"#), None);
        assert_eq!(h.observe(n, "os", OS.as_bytes()), None);
        assert_eq!(h.poll_timeout(), Some(t(10)));
        assert_eq!(h.poll_due(t(9)), None);
        let (node, k) = h.poll_due(t(10)).unwrap();
        assert_eq!(node, n);
        assert_eq!(h.missing(&k), vec!["ssh_host_keys"]);
        assert_eq!(h.poll_due(t(100)), None);
    }

    #[test]
    fn a_disabled_collector_is_not_waited_for() {
        let mut h = HostNew::new(DEFAULT_WAIT, |c| c != "ssh_host_keys");
        let n = NodeId([1; 16]);
        h.registered(n, t(0));
        assert!(h.observe(n, "os", OS.as_bytes()).is_some());
        let mut none = HostNew::new(DEFAULT_WAIT, |_| false);
        assert!(none.registered(n, t(0)).1.is_some());
        assert!(!none.is_waiting(n));
    }

    #[test]
    fn a_restart_keeps_what_arrived_and_extends_the_deadline() {
        let n = NodeId([1; 16]);
        let mut h = HostNew::new(Duration::from_secs(60), |_| true);
        h.restore(
            [StoredWaiting {
                node: n,
                due_at: t(60).micros(),
                os: Some(OS.into()),
                ..Default::default()
            }],
            t(200),
        );
        assert_eq!(h.poll_timeout(), Some(t(260)));
        let k = h.observe(n, "ssh_host_keys", KEYS.as_bytes()).unwrap();
        assert_eq!(k.os.unwrap().id, "debian");
        // A stored deadline later than restart + wait is kept.
        let mut h = HostNew::new(Duration::from_secs(60), |_| true);
        h.restore(
            [StoredWaiting { node: n, due_at: t(500).micros(), ..Default::default() }],
            t(200),
        );
        assert_eq!(h.poll_timeout(), Some(t(500)));
    }

    #[test]
    fn hostile_documents_are_bounded() {
        let long = "x".repeat(10_000);
        let os = format!(
            r#"{{"os_release":{{"ID":"{long}"}},"kernel_name":"","kernel_release":"é{long}","kernel_version":"","machine":"","hostname":"","fqdn":null,"machine_id":null,"virtualisation":"","boot_time_unix":null}}"#
        );
        let s = os_of(os.as_bytes()).unwrap();
        assert!(s.id.len() <= MAX_TEXT && s.kernel.len() <= MAX_TEXT);
        let many: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"file":"f","key_type":"t","key":"k{i}","fingerprint":"f"}}"#))
            .collect();
        let keys = format!(r#"{{"keys":[{}]}}"#, many.join(","));
        assert_eq!(keys_of(keys.as_bytes()).unwrap().len(), MAX_KEYS);
    }
}
