//! [`inventory`]: the rows every export is made from ([`InventoryHost`]), built from the answer
//! types the CMA's read side gives — the nodes, the latest `ssh_host_keys`, `os` and `sockets`
//! discovery documents, the switch ports, the configured checks, the checks local programs
//! declared (`local_checks`) and the programs registered for heartbeats (`local_apps`, as the
//! services `app:NAME`).
//!
//! Rules:
//! - One row per host name: of several nodes with one name (a re-installed host has a new node
//!   id) the row is the running one, else the one that changed state last; the others are left
//!   out, so an old host key never stays valid under the name.
//! - An address belongs to one row only (the same preference), so a renumbered host does not
//!   lend its old address to the keys of another.
//! - Names that are not plain host names ([`crate::names::valid_host_name`]) are left out and
//!   counted in [`Inventory::refused`].
//! - Documents that do not have their collector's shape are ignored (the row lacks that part).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use assim_api::{
    DiscoveryView, HostKey, InventoryHost, Listener, NodeView, ServiceView, SwitchPortLink,
    SwitchUplink,
};
use base64::Engine as _;

use crate::names::{subnet_of, usable_address, valid_host_name};

/// The discovery collectors the inventory reads (`local_checks`: the checks local programs
/// declared on the host, `assim app check`; `local_apps`: the programs registered for
/// heartbeats, `assim app heartbeat`).
pub const COLLECTORS: [&str; 5] = ["ssh_host_keys", "os", "sockets", "local_checks", "local_apps"];

/// The services of the programs in a `local_apps` document (`{"apps": [{"name": …}, …]}`, as
/// the nanoprobe reports them): `app:NAME`, the check name their missed beats are reported
/// under. Names that are not application names (`[A-Za-z0-9._-]{1,64}`, starting with a
/// letter or digit) are skipped; at most 256.
pub fn local_app_services(doc: &serde_json::Value) -> Vec<String> {
    let valid = |n: &str| {
        (1..=64).contains(&n.len())
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    doc.get("apps")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("name")?.as_str().filter(|n| valid(n)))
                .take(256)
                .map(|n| format!("app:{n}"))
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the checks in a `local_checks` document (`{"checks": [{"name": …}, …]}`, as
/// the nanoprobe reports them: `local:NAME`); anything else in it is ignored.
pub fn local_check_names(doc: &serde_json::Value) -> Vec<String> {
    doc.get("checks")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter().filter_map(|c| c.get("name")?.as_str().map(str::to_owned)).take(256).collect()
        })
        .unwrap_or_default()
}

/// What the inventory is built from (everything as the read side answers it).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub nodes: Vec<NodeView>,
    /// The latest result of each of [`COLLECTORS`] per node: (node id, result).
    pub discovery: Vec<(String, DiscoveryView)>,
    pub ports: Vec<SwitchPortLink>,
    pub services: Vec<ServiceView>,
}

/// The rows, and the hosts left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// By host name.
    pub hosts: Vec<InventoryHost>,
    /// Node ids of hosts left out because their name is not a plain host name.
    pub refused: Vec<String>,
}

fn state_rank(state: &str) -> u8 {
    match state {
        "up" | "suspect" => 0,
        "unreachable" => 1,
        "down" => 2,
        _ => 3,
    }
}

/// Builds the rows (see the module doc for the rules).
pub fn inventory(src: Sources) -> Inventory {
    let mut nodes = src.nodes;
    nodes.sort_by(|a, b| {
        (state_rank(&a.state), std::cmp::Reverse(a.since), a.id).cmp(&(
            state_rank(&b.state),
            std::cmp::Reverse(b.since),
            b.id,
        ))
    });
    let mut docs: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    for (node, d) in src.discovery {
        docs.insert((node, d.name), d.payload);
    }
    let mut ports: BTreeMap<String, BTreeSet<SwitchUplink>> = BTreeMap::new();
    for p in src.ports {
        ports.entry(p.node).or_default().insert(SwitchUplink {
            chassis_id: p.chassis_id,
            switch_name: p.switch_name,
            management_addresses: p.management_addresses,
            port_id: p.port_id,
            nic: p.nic,
        });
    }
    let mut checks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in src.services {
        checks.entry(s.node.to_string()).or_default().insert(s.check);
    }
    let mut out = Inventory::default();
    let mut names = HashSet::new();
    let mut taken = HashSet::new();
    for n in nodes {
        let node = n.id.to_string();
        if !valid_host_name(&n.hostname) {
            out.refused.push(node);
            continue;
        }
        if !names.insert(n.hostname.clone()) {
            continue;
        }
        let doc = |name: &str| docs.get(&(node.clone(), name.to_string()));
        let mut addresses = Vec::new();
        let mut subnets = BTreeSet::new();
        for a in &n.addresses {
            let Some((ip, prefix)) = usable_address(a) else { continue };
            if let Some(p) = prefix {
                subnets.insert(subnet_of(ip, p));
            }
            if taken.insert(ip) {
                addresses.push(ip);
            }
        }
        addresses.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        let os = doc("os")
            .and_then(|v| serde_json::from_value::<assim_discovery::os::OsInfo>(v.clone()).ok());
        let fqdn = os
            .as_ref()
            .and_then(|o| o.fqdn.clone())
            .filter(|f| f.starts_with(&format!("{}.", n.hostname)) && valid_host_name(f));
        out.hosts.push(InventoryHost {
            host: n.hostname.clone(),
            node: node.clone(),
            state: n.state.clone(),
            fqdn,
            addresses: addresses.iter().map(ToString::to_string).collect(),
            subnets: subnets.into_iter().collect(),
            os: os.as_ref().and_then(|o| o.os_release.get("ID").cloned()),
            os_name: os.as_ref().and_then(|o| o.os_release.get("PRETTY_NAME").cloned()),
            ssh_host_keys: doc("ssh_host_keys").map(host_keys).unwrap_or_default(),
            switches: ports.remove(&node).map(|s| s.into_iter().collect()).unwrap_or_default(),
            checks: {
                let mut c = checks.remove(&node).unwrap_or_default();
                c.extend(doc("local_checks").map(local_check_names).unwrap_or_default());
                c.extend(doc("local_apps").map(local_app_services).unwrap_or_default());
                c.into_iter().collect()
            },
            listeners: doc("sockets").map(listeners).unwrap_or_default(),
        });
    }
    out.hosts.sort_by(|a, b| a.host.cmp(&b.host));
    out
}

/// The valid keys of an `ssh_host_keys` document, sorted, without duplicates.
pub fn host_keys(doc: &serde_json::Value) -> Vec<HostKey> {
    let Ok(keys) = serde_json::from_value::<assim_discovery::sshkeys::SshHostKeys>(doc.clone())
    else {
        return Vec::new();
    };
    let set: BTreeSet<HostKey> = keys
        .keys
        .into_iter()
        .filter(|k| valid_key(&k.key_type, &k.key))
        .map(|k| HostKey { key_type: k.key_type, key: k.key, fingerprint: k.fingerprint })
        .collect();
    set.into_iter().collect()
}

/// Whether `key` is base64 of an SSH public key blob whose type string is `key_type` (so a
/// host cannot put text of its choosing into a `known_hosts` line).
pub fn valid_key(key_type: &str, key: &str) -> bool {
    if key_type.is_empty()
        || key_type.len() > 64
        || !key_type.bytes().all(|b| b.is_ascii_alphanumeric() || b"-@.".contains(&b))
        || key.len() > 16 * 1024
    {
        return false;
    }
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(key) else { return false };
    let Some(len) = blob.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return false;
    };
    blob.get(4..4 + len) == Some(key_type.as_bytes())
}

/// The TCP listeners of a `sockets` document, sorted, without duplicates.
pub fn listeners(doc: &serde_json::Value) -> Vec<Listener> {
    let Ok(s) = serde_json::from_value::<assim_discovery::sockets::Sockets>(doc.clone()) else {
        return Vec::new();
    };
    let set: BTreeSet<Listener> = s
        .listening
        .into_iter()
        .filter(|e| e.protocol == assim_discovery::sockets::Protocol::Tcp)
        .map(|e| Listener {
            ip: e.local.ip().to_string(),
            port: e.local.port(),
            exe: e.owner.and_then(|o| o.exe),
        })
        .collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_checks_are_services_of_their_host() {
        let id = assim_wire::NodeId::from_slice(&[1; 16]).unwrap();
        let node = NodeView {
            id,
            hostname: "web1".into(),
            state: "up".into(),
            since: 1,
            version: "0".into(),
            listen_addr: "192.0.2.7:1984".into(),
            addresses: vec![],
            neighbours: vec![],
            peer_epoch: 0,
        };
        let named = |name: &str, payload: serde_json::Value| {
            (
                id.to_string(),
                DiscoveryView {
                    name: name.into(),
                    hash: String::new(),
                    collected_at: 0,
                    updated_at: 0,
                    payload,
                },
            )
        };
        // Programs registered for heartbeats are the services `app:NAME`; hostile names are
        // skipped.
        let inv = inventory(Sources {
            nodes: vec![node.clone()],
            discovery: vec![
                named(
                    "local_apps",
                    serde_json::json!({"apps": [
                        {"name": "backup", "ttl_s": 30.0}, {"name": "bad;name"}, {"name": ""},
                        {"name": "-x"}, {"ttl_s": 1}, {"name": 5}
                    ]}),
                ),
                named("local_checks", serde_json::json!({"checks": [{"name": "local:queue"}]})),
            ],
            ..Default::default()
        });
        assert_eq!(inv.hosts[0].checks, ["app:backup", "local:queue"]);
        let inv = inventory(Sources {
            nodes: vec![node.clone()],
            discovery: vec![named(
                "local_checks",
                serde_json::json!({"checks": [
                    {"name": "local:queue", "kind": "nagios", "argv": ["check_dummy", "0"]},
                    {"kind": "nagios"}, {"name": 7}, "local:x"
                ]}),
            )],
            ..Default::default()
        });
        assert_eq!(inv.hosts[0].checks, vec!["local:queue".to_string()]);
        // Not the expected shape: no checks, no failure.
        let inv = inventory(Sources {
            nodes: vec![node],
            discovery: vec![named("local_checks", serde_json::json!(["local:queue"]))],
            ..Default::default()
        });
        assert!(inv.hosts[0].checks.is_empty());
    }
}
