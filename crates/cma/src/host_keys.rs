//! `host.key_changed` (issue 17): the CMA remembers each host's SSH host keys (its latest
//! `ssh_host_keys` discovery result) and decides, when a new result arrives, whether a key
//! changed.
//!
//! - Same node id, a key gone or replaced: **critical** — the machine is the same install (its
//!   nanoprobe identity survived) yet its host key changed: regenerated keys, a restored image,
//!   or someone else answering ssh under its name. Only keys added: **notice**.
//! - A new node id reporting keys for a host name another node reported other keys for: the
//!   host was re-installed (a new node id is a new install): **info**, tagged
//!   `reason=reinstalled` with the previous node id.
//! - The first keys ever seen for a host name, or the same keys again: no event.
//!
//! [`HostKeys`] is the memory (restored from each node's stored `ssh_host_keys` result at
//! start, so a CMA restart neither forgets nor re-announces); [`Cma::host_keys_changed`] emits
//! the event. O(log n) per result: keys by node, and by host name the last node that reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use assim_wire::{NodeId, Timestamp};

use crate::Cma;
use crate::model::{EventKind, Severity};

/// One key: (type, base64 blob).
pub type Key = (String, String);

/// The collector whose results carry the keys.
pub const COLLECTOR: &str = "ssh_host_keys";

/// The keys of an `ssh_host_keys` document; `None` if it does not have the collector's shape.
pub fn keys_of(payload: &[u8]) -> Option<BTreeSet<Key>> {
    let doc: assim_discovery::sshkeys::SshHostKeys = serde_json::from_slice(payload).ok()?;
    Some(doc.keys.into_iter().map(|k| (k.key_type, k.key)).collect())
}

/// What changed, for the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    pub severity: Severity,
    /// The node that reported these names' keys before, when it is another node (re-install).
    pub previous_node: Option<NodeId>,
    pub added: Vec<Key>,
    pub removed: Vec<Key>,
}

/// The remembered keys. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct HostKeys {
    by_node: BTreeMap<NodeId, BTreeSet<Key>>,
    /// Host name → the node that last reported keys under it.
    by_name: HashMap<String, NodeId>,
}

impl HostKeys {
    /// Restores from stored results: (node, its host name, its keys); of several nodes with one
    /// name, the later in the list is the name's current one.
    pub fn restore(stored: impl IntoIterator<Item = (NodeId, String, BTreeSet<Key>)>) -> HostKeys {
        let mut h = HostKeys::default();
        for (node, name, keys) in stored {
            h.by_node.insert(node, keys);
            if !name.is_empty() {
                h.by_name.insert(name, node);
            }
        }
        h
    }

    /// A new result from `node` (named `hostname`): remembers it and says what changed.
    pub fn observe(
        &mut self,
        node: NodeId,
        hostname: &str,
        keys: BTreeSet<Key>,
    ) -> Option<KeyChange> {
        let previous_node = self.by_name.get(hostname).copied().filter(|n| *n != node);
        let (before, previous_node) = match self.by_node.get(&node) {
            Some(own) => (Some(own.clone()), None),
            None => (previous_node.and_then(|n| self.by_node.get(&n).cloned()), previous_node),
        };
        if !hostname.is_empty() {
            self.by_name.insert(hostname.to_owned(), node);
        }
        self.by_node.insert(node, keys.clone());
        let before = before?;
        if before == keys || (keys.is_empty() && previous_node.is_none()) {
            // No keys at all this time (sshd removed, /etc/ssh unreadable) is not a new key.
            return None;
        }
        let added: Vec<Key> = keys.difference(&before).cloned().collect();
        let removed: Vec<Key> = before.difference(&keys).cloned().collect();
        let severity = if previous_node.is_some() {
            Severity::Info
        } else if removed.is_empty() {
            Severity::Notice
        } else {
            Severity::Critical
        };
        Some(KeyChange { severity, previous_node, added, removed })
    }

    /// Forgets a node (deleted from the store).
    pub fn forget(&mut self, node: NodeId) {
        self.by_node.remove(&node);
        self.by_name.retain(|_, n| *n != node);
    }
}

impl Cma {
    /// Emits one `host.key_changed` about `node` for `change`.
    pub(crate) fn host_keys_changed(&mut self, now: Timestamp, node: NodeId, change: &KeyChange) {
        let name = self.node(node).map(|n| n.display_name()).unwrap_or_else(|| node.to_string());
        let list =
            |keys: &[Key]| keys.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(",");
        let mut tags = vec![("added", list(&change.added)), ("removed", list(&change.removed))];
        let text = match change.previous_node {
            Some(prev) => {
                tags.push(("reason", "reinstalled".into()));
                tags.push(("previous_node", prev.to_string()));
                format!("{name} was re-installed (new node id) with new SSH host keys")
            }
            None if change.removed.is_empty() => {
                tags.push(("reason", "added".into()));
                format!("{name} has new SSH host keys ({})", list(&change.added))
            }
            None => {
                tags.push(("reason", "replaced".into()));
                format!(
                    "the SSH host keys of {name} changed ({} replaced) without a re-install",
                    list(&change.removed)
                )
            }
        };
        let body = serde_json::json!({
            "added": change.added.iter().map(|(t, k)| serde_json::json!({"key_type": t, "key": k})).collect::<Vec<_>>(),
            "removed": change.removed.iter().map(|(t, k)| serde_json::json!({"key_type": t, "key": k})).collect::<Vec<_>>(),
        });
        let e = self.event(now, EventKind::HostKeyChanged, Some(node), tags, text);
        e.severity = change.severity;
        e.body = Some(body);
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, &str)]) -> BTreeSet<Key> {
        list.iter().map(|(t, k)| (t.to_string(), k.to_string())).collect()
    }

    #[test]
    fn first_keys_and_the_same_keys_are_quiet() {
        let mut h = HostKeys::default();
        let n = NodeId([1; 16]);
        assert_eq!(h.observe(n, "web1", keys(&[("ssh-ed25519", "A")])), None);
        assert_eq!(h.observe(n, "web1", keys(&[("ssh-ed25519", "A")])), None);
    }

    #[test]
    fn a_replaced_key_on_the_same_node_is_critical_an_added_one_notice() {
        let mut h = HostKeys::default();
        let n = NodeId([1; 16]);
        h.observe(n, "web1", keys(&[("ssh-ed25519", "A")]));
        let c = h.observe(n, "web1", keys(&[("ssh-ed25519", "B")])).unwrap();
        assert_eq!(c.severity, Severity::Critical);
        assert_eq!((c.added.len(), c.removed.len(), c.previous_node), (1, 1, None));
        let c = h.observe(n, "web1", keys(&[("ssh-ed25519", "B"), ("ssh-rsa", "R")])).unwrap();
        assert_eq!(c.severity, Severity::Notice);
        // Keys vanishing entirely (sshd removed) is not a key change.
        assert_eq!(h.observe(n, "web1", BTreeSet::new()), None);
    }

    #[test]
    fn a_new_node_id_under_the_name_is_a_reinstall() {
        let mut h =
            HostKeys::restore([(NodeId([1; 16]), "web1".into(), keys(&[("ssh-ed25519", "A")]))]);
        let c = h.observe(NodeId([2; 16]), "web1", keys(&[("ssh-ed25519", "B")])).unwrap();
        assert_eq!(c.severity, Severity::Info);
        assert_eq!(c.previous_node, Some(NodeId([1; 16])));
        // The new node's own keys are now the reference.
        assert_eq!(h.observe(NodeId([2; 16]), "web1", keys(&[("ssh-ed25519", "B")])), None);
        // A re-install that kept the keys says nothing.
        assert_eq!(h.observe(NodeId([3; 16]), "web1", keys(&[("ssh-ed25519", "B")])), None);
    }
}
