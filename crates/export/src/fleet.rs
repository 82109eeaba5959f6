//! The fleet questions (`/api/v1/fleet/…`, `assim keys|processes|os|macs`), answered from the
//! latest discovery results of every node: which hosts share an SSH host key, which processes
//! run a given program, hosts by OS and kernel, and MAC addresses by vendor. Sans-IO: answer
//! types in, rows out. Documents that do not have their collector's shape are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use assim_api::{DiscoveryView, InventoryHost, KeyUse, MacRow, NodeView, OsRow, ProcessRow};
use assim_discovery::interfaces::Interfaces;
use assim_discovery::neighbours::Neighbours;
use assim_discovery::os::OsInfo;
use assim_discovery::sockets::{Protocol, Sockets};
use assim_util::glob::Glob;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::oui::{Registry, locally_administered, multicast};

/// The collectors the fleet questions read.
pub const COLLECTORS: [&str; 4] = ["sockets", "os", "interfaces", "neighbours"];

/// Every SSH host key of the inventory and the hosts presenting it: keys on several hosts
/// first (most hosts first), then by type and fingerprint. `shared_only` keeps only those.
pub fn key_uses(hosts: &[InventoryHost], shared_only: bool) -> Vec<KeyUse> {
    let mut by_key: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for h in hosts {
        for k in &h.ssh_host_keys {
            by_key.entry((k.key_type.clone(), k.key.clone())).or_default().insert(h.host.clone());
        }
    }
    let mut out: Vec<KeyUse> = by_key
        .into_iter()
        .filter(|(_, hosts)| !shared_only || hosts.len() > 1)
        .map(|((key_type, key), hosts)| KeyUse {
            fingerprint: fingerprint(&key),
            key_type,
            hosts: hosts.into_iter().collect(),
        })
        .collect();
    out.sort_by(|a, b| {
        (std::cmp::Reverse(a.hosts.len()), &a.key_type, &a.fingerprint).cmp(&(
            std::cmp::Reverse(b.hosts.len()),
            &b.key_type,
            &b.fingerprint,
        ))
    });
    out
}

/// `SHA256:…` of a base64 public key blob, as `ssh-keygen -l` prints it.
pub fn fingerprint(key_base64: &str) -> String {
    let blob = base64::engine::general_purpose::STANDARD.decode(key_base64).unwrap_or_default();
    let digest = Sha256::digest(&blob);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

fn host_names(nodes: &[NodeView]) -> HashMap<String, &str> {
    nodes.iter().map(|n| (n.id.to_string(), n.hostname.as_str())).collect()
}

/// The payload of each node's `name` document, parsed as `T`.
fn docs<'a, T: serde::de::DeserializeOwned>(
    discovery: &'a [(String, DiscoveryView)],
    name: &'a str,
) -> impl Iterator<Item = (&'a str, T)> + 'a {
    discovery.iter().filter(move |(_, d)| d.name == name).filter_map(|(node, d)| {
        Some((node.as_str(), serde_json::from_value(d.payload.clone()).ok()?))
    })
}

/// The processes that own sockets, per host, whose executable matches `exe` (a glob, matched
/// against the whole path and against its file name), sorted by host and pid.
pub fn processes(
    nodes: &[NodeView],
    discovery: &[(String, DiscoveryView)],
    exe: Option<&Glob>,
) -> Vec<ProcessRow> {
    let names = host_names(nodes);
    let mut out = Vec::new();
    for (node, s) in docs::<Sockets>(discovery, "sockets") {
        let mut by_pid: BTreeMap<u32, ProcessRow> = BTreeMap::new();
        let entries =
            s.listening.iter().map(|e| (e, true)).chain(s.established.iter().map(|e| (e, false)));
        for (e, listening) in entries {
            let Some(owner) = &e.owner else { continue };
            let row = by_pid.entry(owner.pid).or_insert_with(|| ProcessRow {
                host: names.get(node).copied().unwrap_or(node).to_string(),
                node: node.to_string(),
                pid: owner.pid,
                exe: owner.exe.clone(),
                user: e.user.clone(),
                cmdline: owner.cmdline.clone(),
                listening: Vec::new(),
                established: 0,
            });
            if listening {
                let proto = match e.protocol {
                    Protocol::Tcp => "tcp",
                    _ => "udp",
                };
                row.listening.push(format!("{proto} {}", e.local));
            } else {
                row.established += 1;
            }
        }
        for (_, mut row) in by_pid {
            let keep = match (exe, &row.exe) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(g), Some(path)) => {
                    g.matches(path) || path.rsplit('/').next().is_some_and(|f| g.matches(f))
                }
            };
            if keep {
                row.listening.sort();
                row.listening.dedup();
                out.push(row);
            }
        }
    }
    out.sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
    out
}

/// Every host's OS and kernel, sorted by OS name, kernel, then host; `os`/`kernel` globs
/// narrow the rows (matched against `ID`, `PRETTY_NAME` and `uname -r`).
pub fn os_rows(
    nodes: &[NodeView],
    discovery: &[(String, DiscoveryView)],
    os: Option<&Glob>,
    kernel: Option<&Glob>,
) -> Vec<OsRow> {
    let names = host_names(nodes);
    let mut out: Vec<OsRow> = docs::<OsInfo>(discovery, "os")
        .map(|(node, info)| OsRow {
            host: names.get(node).copied().unwrap_or(node).to_string(),
            node: node.to_string(),
            os: info.os_release.get("ID").cloned(),
            version: info.os_release.get("VERSION_ID").cloned(),
            os_name: info.os_release.get("PRETTY_NAME").cloned(),
            kernel: info.kernel_release,
            machine: info.machine,
            virtualisation: info.virtualisation,
        })
        .filter(|r| {
            os.is_none_or(|g| {
                r.os.as_deref().is_some_and(|o| g.matches(o))
                    || r.os_name.as_deref().is_some_and(|o| g.matches(o))
            })
        })
        .filter(|r| kernel.is_none_or(|g| g.matches(&r.kernel)))
        .collect();
    out.sort_by(|a, b| (&a.os_name, &a.kernel, &a.host).cmp(&(&b.os_name, &b.kernel, &b.host)));
    out
}

/// What [`mac_rows`] keeps.
#[derive(Clone, Debug, Default)]
pub struct MacFilter {
    /// Vendor globs the operator expects (e.g. `Dell*`, `*Intel*`); a registered MAC whose
    /// vendor matches none is `unexpected`. Empty: every registered vendor is `known`.
    pub expect: Vec<Glob>,
    /// Keep only these statuses (`unknown`, `unexpected`, `local`, …); empty keeps all.
    pub status: Vec<String>,
}

/// The status of one MAC (see [`MacRow::status`]).
pub fn mac_status(mac: &str, vendor: Option<&str>, expect: &[Glob]) -> &'static str {
    if multicast(mac) {
        "multicast"
    } else if let Some(v) = vendor {
        if expect.is_empty() || expect.iter().any(|g| g.matches(v)) {
            "known"
        } else {
            "unexpected"
        }
    } else if locally_administered(mac) {
        "local"
    } else {
        "unknown"
    }
}

/// Every MAC on a host's NIC or in a host's neighbour table, with its vendor; sorted by
/// status (unknown and unexpected first), MAC, host.
pub fn mac_rows(
    nodes: &[NodeView],
    discovery: &[(String, DiscoveryView)],
    registry: &Registry,
    filter: &MacFilter,
) -> Vec<MacRow> {
    let names = host_names(nodes);
    let host = |node: &str| names.get(node).copied().unwrap_or(node).to_string();
    let mut out = Vec::new();
    let mut row = |mac: &str, how: &str, node: &str, interface: &str, detail: String| {
        let Some(hex) = crate::oui::mac_hex(mac) else { return };
        if hex == "000000000000" {
            return;
        }
        let vendor = registry.vendor(mac);
        let status = mac_status(mac, vendor, &filter.expect);
        if !filter.status.is_empty() && !filter.status.iter().any(|s| s == status) {
            return;
        }
        out.push(MacRow {
            mac: mac.to_ascii_lowercase(),
            vendor: vendor.map(str::to_string),
            status: status.to_string(),
            how: how.to_string(),
            host: host(node),
            node: node.to_string(),
            interface: interface.to_string(),
            detail,
        });
    };
    for (node, ifs) in docs::<Interfaces>(discovery, "interfaces") {
        for i in &ifs.interfaces {
            if let Some(mac) = &i.mac {
                let addrs: Vec<String> =
                    i.addresses.iter().map(|a| a.address.to_string()).collect();
                row(mac, "nic", node, &i.name, addrs.join(" "));
            }
        }
    }
    for (node, n) in docs::<Neighbours>(discovery, "neighbours") {
        for e in &n.neighbours {
            row(&e.mac, "arp", node, &e.interface, e.ip.to_string());
        }
    }
    let rank = |s: &str| match s {
        "unknown" => 0,
        "unexpected" => 1,
        "local" => 2,
        "known" => 3,
        _ => 4,
    };
    out.sort_by(|a, b| {
        (rank(&a.status), &a.mac, &a.host, &a.how).cmp(&(rank(&b.status), &b.mac, &b.host, &b.how))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_api::HostKey;
    use assim_wire::NodeId;
    use serde_json::json;

    fn node(n: u8, name: &str) -> NodeView {
        NodeView {
            id: NodeId::from_slice(&[n; 16]).unwrap(),
            hostname: name.into(),
            state: "up".into(),
            since: 0,
            version: String::new(),
            listen_addr: String::new(),
            addresses: vec![],
            neighbours: vec![],
            peer_epoch: 0,
        }
    }

    fn doc(n: u8, name: &str, payload: serde_json::Value) -> (String, DiscoveryView) {
        (
            NodeId::from_slice(&[n; 16]).unwrap().to_string(),
            DiscoveryView {
                name: name.into(),
                hash: String::new(),
                collected_at: 0,
                updated_at: 0,
                payload,
            },
        )
    }

    // An ed25519 public key blob (type string + 32 bytes), base64.
    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHFyZWlubGVzcyBrZXkgZm9yIHRoZSB0ZXN0cyEh";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIGFub3RoZXIga2V5IGZvciB0aGUgdGVzdHMhISEh";

    #[test]
    fn a_key_on_several_hosts_comes_first() {
        let host = |name: &str, keys: &[&str]| InventoryHost {
            host: name.into(),
            ssh_host_keys: keys
                .iter()
                .map(|k| HostKey {
                    key_type: "ssh-ed25519".into(),
                    key: (*k).into(),
                    fingerprint: String::new(),
                })
                .collect(),
            ..InventoryHost::default()
        };
        let hosts = [host("a", &[KEY_B]), host("b", &[KEY_A]), host("c", &[KEY_A])];
        let all = key_uses(&hosts, false);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].hosts, ["b", "c"]);
        assert!(all[0].fingerprint.starts_with("SHA256:") && !all[0].fingerprint.ends_with('='));
        assert_eq!(key_uses(&hosts, true).len(), 1);
    }

    #[test]
    fn processes_by_program() {
        let nodes = [node(1, "web1")];
        let owner = |pid: u32, exe: &str| json!({"pid": pid, "exe": exe, "cmdline": [exe]});
        let entry = |local: &str, remote: &str, o: serde_json::Value| {
            json!({"protocol": "tcp", "local": local, "remote": remote, "uid": 0, "user": "root",
                   "inode": 1, "owner": o})
        };
        let sockets = json!({
            "listening": [entry("0.0.0.0:22", "0.0.0.0:0", owner(10, "/usr/sbin/sshd")),
                          entry("[::]:22", "[::]:0", owner(10, "/usr/sbin/sshd")),
                          entry("0.0.0.0:80", "0.0.0.0:0", owner(20, "/usr/sbin/nginx"))],
            "established": [entry("192.0.2.1:22", "192.0.2.9:5000", owner(10, "/usr/sbin/sshd"))],
        });
        let docs = [doc(1, "sockets", sockets), doc(1, "os", json!({"bad": "shape"}))];
        let all = processes(&nodes, &docs, None);
        assert_eq!(all.len(), 2, "{all:?}");
        let sshd = processes(&nodes, &docs, Some(&Glob::new("sshd")));
        assert_eq!(sshd.len(), 1);
        assert_eq!(sshd[0].host, "web1");
        assert_eq!(sshd[0].listening, ["tcp 0.0.0.0:22", "tcp [::]:22"]);
        assert_eq!(sshd[0].established, 1);
        assert_eq!(processes(&nodes, &docs, Some(&Glob::new("/usr/sbin/*"))).len(), 2);
        assert!(processes(&nodes, &docs, Some(&Glob::new("/bin/*"))).is_empty());
    }

    #[test]
    fn os_and_kernel_narrow() {
        let nodes = [node(1, "a"), node(2, "b")];
        let os = |id: &str, kernel: &str| {
            json!({"os_release": {"ID": id, "VERSION_ID": "12", "PRETTY_NAME": format!("{id} 12")},
                   "kernel_name": "Linux", "kernel_release": kernel, "kernel_version": "#1",
                   "machine": "x86_64", "hostname": "x", "fqdn": null, "machine_id": null,
                   "virtualisation": "kvm", "boot_time_unix": null})
        };
        let docs = [doc(1, "os", os("debian", "6.1.0-1")), doc(2, "os", os("ubuntu", "6.8.0-2"))];
        assert_eq!(os_rows(&nodes, &docs, None, None).len(), 2);
        let deb = os_rows(&nodes, &docs, Some(&Glob::new("debian")), None);
        assert_eq!(deb.len(), 1);
        assert_eq!((deb[0].host.as_str(), deb[0].kernel.as_str()), ("a", "6.1.0-1"));
        assert_eq!(os_rows(&nodes, &docs, None, Some(&Glob::new("6.8.*")))[0].host, "b");
    }

    #[test]
    fn macs_by_vendor_status() {
        let mut reg = Registry::default();
        reg.add_csv("MA-L,00000C,Cisco Systems,\nMA-L,001B21,Intel Corporate,\n");
        let nodes = [node(1, "a")];
        let ifs = json!({"interfaces": [
            {"name": "eth0", "mac": "00:1b:21:00:00:01", "mtu": 1500, "operstate": "up",
             "speed_mbps": null, "duplex": null, "addresses": [{"address": "192.0.2.1", "prefix_len": 24}]},
            {"name": "veth1", "mac": "02:42:ac:11:00:02", "mtu": 1500, "operstate": "up",
             "speed_mbps": null, "duplex": null, "addresses": []},
            {"name": "lo", "mac": "00:00:00:00:00:00", "mtu": 65536, "operstate": "unknown",
             "speed_mbps": null, "duplex": null, "addresses": []}],
            "default_gateways": []});
        let arp = json!({"neighbours": [
            {"interface": "eth0", "ip": "192.0.2.254", "mac": "00:00:0c:07:ac:01"},
            {"interface": "eth0", "ip": "192.0.2.77", "mac": "a4:00:00:00:00:01"}]});
        let docs = [doc(1, "interfaces", ifs), doc(1, "neighbours", arp)];
        let all = mac_rows(&nodes, &docs, &reg, &MacFilter::default());
        let status: Vec<(&str, &str)> =
            all.iter().map(|m| (m.mac.as_str(), m.status.as_str())).collect();
        assert_eq!(
            status,
            [
                ("a4:00:00:00:00:01", "unknown"),
                ("02:42:ac:11:00:02", "local"),
                ("00:00:0c:07:ac:01", "known"),
                ("00:1b:21:00:00:01", "known"),
            ]
        );
        assert_eq!(all[3].vendor.as_deref(), Some("Intel Corporate"));
        assert_eq!(all[3].detail, "192.0.2.1");
        let f = MacFilter { expect: vec![Glob::new("*Intel*")], status: vec!["unexpected".into()] };
        let odd = mac_rows(&nodes, &docs, &reg, &f);
        assert_eq!(odd.len(), 1);
        assert_eq!((odd[0].mac.as_str(), odd[0].how.as_str()), ("00:00:0c:07:ac:01", "arp"));
    }
}
