//! Store-level tests of the topology graph: ordering of reports, replacement, history,
//! migration, queries, and a property test of the dependency edges against a naive model.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use assim_cma::{Change, NodeRecord, NodeState};
use assim_wire::{NodeId, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::query::{MonitorRecord, PackagePattern};
use crate::{DiscoveryRecord, InboxProgress, Store};

struct Db {
    _dir: tempfile::TempDir,
    store: Store,
    path: std::path::PathBuf,
    t: u64,
}

fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cma.db");
    let store = Store::open(&path).unwrap();
    Db { _dir: dir, store, path, t: 1_000_000 }
}

fn record(id: NodeId, name: &str, state: NodeState) -> NodeRecord {
    NodeRecord {
        id,
        hostname: name.to_string(),
        version: "test".into(),
        listen_addr: "127.0.0.1:1984".parse().unwrap(),
        public_key: [7; 32],
        addresses: vec![],
        state,
        since: Timestamp(5),
        registered_at: Timestamp(1),
        peer_epoch: 0,
        peers: vec![],
    }
}

impl Db {
    fn node(&mut self, name: &str) -> NodeId {
        let id = NodeId::new_v7();
        self.set_state(id, name, NodeState::Up);
        id
    }

    fn set_state(&mut self, id: NodeId, name: &str, state: NodeState) {
        self.store
            .apply(&[Change::Node(record(id, name, state))], &[], &InboxProgress::default())
            .unwrap();
    }

    fn put(&mut self, node: NodeId, name: &str, payload: &Value) {
        self.t += 1;
        let payload = payload.to_string();
        let progress = InboxProgress {
            discovery: vec![DiscoveryRecord {
                node,
                name: name.to_string(),
                hash: format!("{:x}", fxhash(&payload)),
                payload,
                collected_at: self.t,
                updated_at: self.t,
            }],
            ..Default::default()
        };
        self.store.apply(&[], &[], &progress).unwrap();
    }

    /// (client host, server host, server ip, port) of every edge.
    fn edges(&self) -> BTreeSet<(String, String, String, u16)> {
        self.store
            .all_dependencies()
            .unwrap()
            .into_iter()
            .map(|d| (d.client_host, d.server_host, d.server_ip, d.port))
            .collect()
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

fn interfaces(addrs: &[(&str, &str, u8)]) -> Value {
    // (nic, ip, prefix)
    let mut by_nic: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for (nic, ip, len) in addrs {
        by_nic.entry(nic).or_default().push(json!({"address": ip, "prefix_len": len}));
    }
    let ifs: Vec<Value> = by_nic
        .into_iter()
        .enumerate()
        .map(|(i, (nic, addresses))| {
            json!({"name": nic, "mac": format!("02:00:00:00:00:{i:02x}"), "mtu": 1500,
                   "operstate": "up", "speed_mbps": null, "duplex": null, "addresses": addresses})
        })
        .collect();
    json!({"interfaces": ifs, "default_gateways": []})
}

fn sock(protocol: &str, local: &str, remote: &str, exe: &str, pid: u32) -> Value {
    json!({"protocol": protocol, "local": local, "remote": remote, "uid": 0, "user": "root",
           "inode": pid, "owner": {"pid": pid, "exe": exe, "cmdline": [exe]}})
}

fn sockets(listening: Vec<Value>, established: Vec<Value>) -> Value {
    json!({"listening": listening, "established": established})
}

fn edge(c: &str, s: &str, ip: &str, port: u16) -> (String, String, String, u16) {
    (c.to_string(), s.to_string(), ip.to_string(), port)
}

#[test]
fn dependency_edge_whichever_host_reports_first() {
    // web connects to db's postgres (db listens on the wildcard); three report orders.
    let web_sockets = sockets(
        vec![sock("tcp", "0.0.0.0:80", "0.0.0.0:0", "/usr/sbin/nginx", 10)],
        vec![
            sock("tcp", "10.0.0.1:40000", "10.0.0.2:5432", "/usr/bin/app", 11),
            sock("tcp", "10.0.0.1:40001", "10.0.0.2:5432", "/usr/bin/app", 11),
            // An inbound client of web itself: not a dependency of web.
            sock("tcp", "10.0.0.1:80", "10.0.0.9:51000", "/usr/sbin/nginx", 10),
        ],
    );
    let db_sockets = sockets(
        vec![sock("tcp", "0.0.0.0:5432", "0.0.0.0:0", "/usr/lib/postgresql/postgres", 20)],
        vec![sock("tcp", "10.0.0.2:5432", "10.0.0.1:40000", "/usr/lib/postgresql/postgres", 21)],
    );
    let orders: [&[usize]; 3] = [&[0, 1, 2, 3], &[2, 3, 0, 1], &[1, 3, 0, 2]];
    for order in orders {
        let mut d = db();
        let web = d.node("web");
        let dbn = d.node("db");
        let reports = [
            (web, "interfaces", interfaces(&[("eth0", "10.0.0.1", 24), ("lo", "127.0.0.1", 8)])),
            (web, "sockets", web_sockets.clone()),
            (dbn, "interfaces", interfaces(&[("eth0", "10.0.0.2", 24), ("lo", "127.0.0.1", 8)])),
            (dbn, "sockets", db_sockets.clone()),
        ];
        for &i in order {
            let (n, name, p) = &reports[i];
            d.put(*n, name, p);
        }
        assert_eq!(d.edges(), BTreeSet::from([edge("web", "db", "10.0.0.2", 5432)]), "{order:?}");
        let deps = d.store.dependencies(&web.to_string()).unwrap();
        assert_eq!(deps.len(), 1);
        assert_eq!(deps[0].client_exe.as_deref(), Some("/usr/bin/app"));
        assert_eq!(deps[0].server_exe.as_deref(), Some("/usr/lib/postgresql/postgres"));
        assert_eq!(deps[0].service_ip, "0.0.0.0");
        assert_eq!(deps[0].connections, 2);
        let rdeps = d.store.dependents(&dbn.to_string()).unwrap();
        assert_eq!(rdeps, deps);
        assert!(d.store.dependents(&web.to_string()).unwrap().is_empty());
        let services = d.store.host_services(&dbn.to_string()).unwrap();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].client_hosts, 1);

        // The client closes its connections: the edge goes, and the history says so.
        d.put(web, "sockets", &sockets(vec![], vec![]));
        assert!(d.edges().is_empty());
        let h = d.store.topology_history(Some(&web.to_string()), 10).unwrap();
        let gone = h.iter().find(|h| h.kind == "dependency" && h.removed == 1).unwrap();
        assert_eq!(gone.removed_labels, vec!["web (/usr/bin/app) -> db 10.0.0.2:5432"]);
    }
}

#[test]
fn specific_listener_and_ip_moves() {
    let mut d = db();
    let a = d.node("a");
    let b = d.node("b");
    d.put(
        a,
        "sockets",
        &sockets(
            vec![],
            vec![sock("tcp", "[2001:db8::1]:50000", "[2001:db8::2]:443", "/usr/bin/curl", 5)],
        ),
    );
    // b listens on one specific IPv6 address and on 0.0.0.0:443 (IPv4 only).
    d.put(
        b,
        "sockets",
        &sockets(
            vec![
                sock("tcp", "[2001:db8::3]:443", "[::]:0", "/usr/sbin/haproxy", 7),
                sock("tcp", "0.0.0.0:443", "0.0.0.0:0", "/usr/sbin/haproxy", 7),
            ],
            vec![],
        ),
    );
    d.put(
        b,
        "interfaces",
        &interfaces(&[("eth0", "2001:db8::2", 64), ("eth0", "2001:db8::3", 64)]),
    );
    assert!(d.edges().is_empty(), "0.0.0.0 does not take IPv6, [2001:db8::3] is another address");
    // a now connects to b's specific listener address; b then drops ::2.
    d.put(
        a,
        "sockets",
        &sockets(
            vec![],
            vec![sock("tcp", "[2001:db8::1]:50000", "[2001:db8::3]:443", "/usr/bin/curl", 5)],
        ),
    );
    d.put(b, "interfaces", &interfaces(&[("eth0", "2001:db8::3", 64)]));
    assert_eq!(d.edges(), BTreeSet::from([edge("a", "b", "2001:db8::3", 443)]));
}

#[test]
fn replacing_a_result_removes_stale_rows_and_records_history() {
    let mut d = db();
    let h = d.node("h1");
    let pkgs = |v: &str| {
        json!({"packages": [
            {"name": "openssl", "version": v, "architecture": "amd64", "manager": "dpkg"},
            {"name": "openssh-server", "version": "1:9.2", "architecture": "amd64", "manager": "dpkg"},
            {"name": "bash", "version": "5.2", "architecture": "amd64", "manager": "dpkg"}]})
    };
    d.put(h, "packages", &pkgs("3.0.1"));
    d.put(h, "packages", &pkgs("3.0.2"));
    let hits = d.store.search_packages(PackagePattern::Exact("openssl")).unwrap();
    assert_eq!(hits.len(), 1, "the old version is gone: {hits:?}");
    assert_eq!(hits[0].version, "3.0.2");
    assert_eq!(hits[0].host, "h1");
    let hist = d.store.topology_history(None, 10).unwrap();
    assert_eq!(hist.len(), 2, "{hist:?}");
    assert_eq!((hist[0].kind.as_str(), hist[0].added, hist[0].removed), ("package", 1, 1));
    assert_eq!(hist[0].added_labels, vec!["openssl 3.0.2 amd64"]);
    assert_eq!(hist[0].removed_labels, vec!["openssl 3.0.1 amd64"]);
    assert_eq!((hist[1].added, hist[1].removed), (3, 0));

    // The same payload again changes nothing and adds no history.
    d.put(h, "packages", &pkgs("3.0.2"));
    assert_eq!(d.store.topology_history(None, 10).unwrap().len(), 2);

    // Interfaces: a NIC disappears with its addresses.
    d.put(h, "interfaces", &interfaces(&[("eth0", "10.1.0.5", 16), ("eth1", "10.2.0.5", 24)]));
    d.put(h, "interfaces", &interfaces(&[("eth0", "10.1.0.5", 16)]));
    assert!(d.store.find_ip("10.2.0.5".parse().unwrap()).unwrap().is_empty());
    let found = d.store.find_ip("10.1.0.5".parse().unwrap()).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].subnet.as_deref(), Some("10.1.0.0/16"));
    let counts = d.store.topology_counts().unwrap();
    assert_eq!(counts["topo_nics"], 1);
    assert_eq!(counts["topo_ips"], 1);

    // Prefix and regex searches.
    let names =
        |p| d.store.search_packages(p).unwrap().into_iter().map(|h| h.name).collect::<Vec<_>>();
    assert_eq!(names(PackagePattern::Prefix("openss")), vec!["openssh-server", "openssl"]);
    assert!(names(PackagePattern::Prefix("zz")).is_empty());
    let re = regex::Regex::new("^(bash|openssl)$").unwrap();
    assert_eq!(names(PackagePattern::Regex(&re)), vec!["bash", "openssl"]);

    // An unparsable payload leaves the rows alone.
    d.put(h, "packages", &json!({"packages": "nope"}));
    assert_eq!(d.store.search_packages(PackagePattern::Prefix("")).unwrap().len(), 3);
}

#[test]
fn switch_ports_are_shared_and_collected() {
    let mut d = db();
    let a = d.node("a");
    let b = d.node("b");
    let l2 = |port: &str| {
        json!({"neighbors": [{"interface": "eth0", "mac": "02:00:00:00:00:0a", "protocol": "lldp",
            "chassis_id": "00:11:22:33:44:55", "port_id": port, "port_description": "to host",
            "system_name": "tor1", "system_description": "a switch", "platform": null,
            "capabilities": ["bridge"], "management_addresses": ["192.0.2.250"], "vlan": 10}]})
    };
    d.put(a, "l2neighbors", &l2("swp1"));
    d.put(b, "l2neighbors", &l2("swp2"));
    let all = d.store.switch_ports(None).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].host, "a");
    assert_eq!(all[0].switch_name.as_deref(), Some("tor1"));
    assert_eq!(all[0].port_id, "swp1");
    assert_eq!(all[0].vlan.as_deref(), Some("10"));
    assert_eq!(all[0].management_addresses, vec!["192.0.2.250"]);
    let only_b = d.store.switch_ports(Some(&b.to_string())).unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].port_id, "swp2");
    let macs = d.store.find_mac("00:11:22:33:44:55").unwrap();
    assert_eq!(macs.len(), 1);
    assert_eq!((macs[0].how.as_str(), macs[0].detail.as_str()), ("switch", "tor1"));

    // a is recabled to another port; the old port disappears, the switch stays for b.
    d.put(a, "l2neighbors", &l2("swp9"));
    let counts = d.store.topology_counts().unwrap();
    assert_eq!((counts["topo_switches"], counts["topo_switch_ports"]), (1, 2));
    d.put(a, "l2neighbors", &json!({"neighbors": []}));
    d.put(b, "l2neighbors", &json!({"neighbors": []}));
    let counts = d.store.topology_counts().unwrap();
    assert_eq!((counts["topo_switches"], counts["topo_switch_ports"]), (0, 0));
    let h = d.store.topology_history(Some(&a.to_string()), 10).unwrap();
    assert_eq!(h[0].removed_labels, vec!["eth0 -> tor1 port swp9 (lldp, vlan 10)"]);
}

#[test]
fn down_crashed_unknown_ips_macs_and_monitors() {
    let mut d = db();
    let a = d.node("a");
    let b = d.node("b");
    let c = d.node("c");
    d.set_state(b, "b", NodeState::Down);
    d.set_state(c, "c", NodeState::Left);
    let down: Vec<String> =
        d.store.down_hosts(false).unwrap().into_iter().map(|h| h.host).collect();
    assert_eq!(down, vec!["b", "c"]);
    let crashed: Vec<String> =
        d.store.down_hosts(true).unwrap().into_iter().map(|h| h.host).collect();
    assert_eq!(crashed, vec!["b"]);

    d.put(a, "interfaces", &interfaces(&[("eth0", "10.0.0.1", 24)]));
    d.put(b, "interfaces", &interfaces(&[("eth0", "10.0.0.2", 24)]));
    d.put(
        a,
        "neighbours",
        &json!({"neighbours": [
            {"interface": "eth0", "ip": "10.0.0.2", "mac": "02:00:00:00:00:00"},
            {"interface": "eth0", "ip": "10.0.0.10", "mac": "02:AB:00:00:00:01"},
            {"interface": "eth0", "ip": "10.0.0.9", "mac": "02:ab:00:00:00:02"}]}),
    );
    let unknown: Vec<String> = d.store.unknown_ips().unwrap().into_iter().map(|u| u.ip).collect();
    assert_eq!(unknown, vec!["10.0.0.9", "10.0.0.10"], "known 10.0.0.2 left out, numeric order");
    let found = d.store.find_ip("10.0.0.2".parse().unwrap()).unwrap();
    let how: Vec<(&str, &str)> = found.iter().map(|f| (f.how.as_str(), f.host.as_str())).collect();
    assert_eq!(how, vec![("address", "b"), ("arp", "a")]);
    let macs = d.store.find_mac("02:ab:00:00:00:01").unwrap();
    assert_eq!((macs[0].how.as_str(), macs[0].detail.as_str()), ("arp", "10.0.0.10"));
    let nic = d.store.find_mac("02:00:00:00:00:00").unwrap();
    assert_eq!(
        nic.iter().filter(|m| m.how == "nic").count(),
        2,
        "both hosts' eth0 in this fixture"
    );

    d.put(
        a,
        "sockets",
        &sockets(
            vec![
                sock("tcp", "0.0.0.0:22", "0.0.0.0:0", "/usr/sbin/sshd", 1),
                sock("tcp", "127.0.0.1:25", "0.0.0.0:0", "/usr/sbin/exim4", 2),
                sock("tcp", "10.0.0.1:80", "0.0.0.0:0", "/usr/sbin/nginx", 3),
                sock("udp", "0.0.0.0:53", "0.0.0.0:0", "/usr/sbin/named", 4),
            ],
            vec![],
        ),
    );
    let unmonitored = |d: &Db| {
        d.store
            .unmonitored_services()
            .unwrap()
            .into_iter()
            .map(|s| format!("{} {}", s.protocol, s.port))
            .collect::<Vec<_>>()
    };
    assert_eq!(unmonitored(&d), vec!["tcp 22", "tcp 80", "udp 53"], "loopback left out");
    d.store
        .set_monitors(
            &a.to_string(),
            &[
                MonitorRecord {
                    protocol: "tcp".into(),
                    service_ip: None,
                    port: 22,
                    check_name: "ssh".into(),
                },
                MonitorRecord {
                    protocol: "tcp".into(),
                    service_ip: Some("10.0.0.99".parse().unwrap()),
                    port: 80,
                    check_name: "http-other-ip".into(),
                },
            ],
        )
        .unwrap();
    assert_eq!(unmonitored(&d), vec!["tcp 80", "udp 53"], "a monitor on another IP does not count");
    let services = d.store.host_services(&a.to_string()).unwrap();
    assert_eq!(services.iter().find(|s| s.port == 22).unwrap().monitors, vec!["ssh"]);
}

#[test]
fn migration_from_schema_1_backfills_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let a = NodeId::new_v7();
    let b = NodeId::new_v7();
    {
        // A database as the previous release left it: schema 1 with stored discovery results.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(crate::SCHEMA).unwrap();
        for (id, name) in [(a, "a"), (b, "b")] {
            conn.execute(
                "INSERT INTO nodes (id, hostname, version, listen_addr, public_key, addresses,
                 state, since, registered_at, peer_epoch, peers)
                 VALUES (?1, ?2, 'v', '127.0.0.1:1', ?3, '[]', 'up', 1, 1, 0, '[]')",
                rusqlite::params![id.to_string(), name, hex::encode([1u8; 32])],
            )
            .unwrap();
        }
        let results = [
            (a, "interfaces", interfaces(&[("eth0", "10.0.0.1", 24)])),
            (b, "interfaces", interfaces(&[("eth0", "10.0.0.2", 24)])),
            (
                a,
                "sockets",
                sockets(
                    vec![],
                    vec![sock("tcp", "10.0.0.1:41000", "10.0.0.2:6379", "/usr/bin/app", 9)],
                ),
            ),
            (
                b,
                "sockets",
                sockets(
                    vec![sock("tcp", "[::]:6379", "[::]:0", "/usr/bin/redis-server", 8)],
                    vec![],
                ),
            ),
        ];
        for (id, name, payload) in results {
            conn.execute(
                "INSERT INTO discovery (node, name, hash, payload, collected_at, updated_at)
                 VALUES (?1, ?2, 'h', ?3, 1, 1)",
                rusqlite::params![id.to_string(), name, payload.to_string()],
            )
            .unwrap();
        }
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let store = Store::open(&path).unwrap();
    let deps = store.dependencies(&a.to_string()).unwrap();
    assert_eq!(deps.len(), 1, "{deps:?}");
    assert_eq!((deps[0].server_host.as_str(), deps[0].port), ("b", 6379));
    assert_eq!(deps[0].service_ip, "::");
    drop(store);
    // Opening again does not redo anything.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.topology_counts().unwrap()["topo_deps"], 1);
}

#[test]
fn reopen_keeps_graph() {
    let mut d = db();
    let a = d.node("a");
    d.put(a, "interfaces", &interfaces(&[("eth0", "10.0.0.1", 24)]));
    let path = d.path.clone();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.subnets().unwrap()[0].subnet, "10.0.0.0/24");
}

// --- property test: edges equal a naive reference -------------------------------------------

#[derive(Clone, Debug)]
struct Host {
    ips: Vec<u8>,               // last octet of 10.9.0.x
    listeners: Vec<(u8, u16)>,  // (0 = wildcard, else last octet), port
    conns: Vec<(u8, u16, u16)>, // remote last octet, remote port, local port
}

fn ip(o: u8) -> IpAddr {
    IpAddr::from([10, 9, 0, o])
}

fn host_strategy() -> impl Strategy<Value = Host> {
    (
        proptest::collection::vec(1u8..8, 0..3),
        proptest::collection::vec((0u8..8, 1u16..4), 0..3),
        proptest::collection::vec((1u8..8, 1u16..4, 1u16..4), 0..4),
    )
        .prop_map(|(ips, listeners, conns)| Host { ips, listeners, conns })
}

fn reference(hosts: &[Host]) -> BTreeSet<(String, String, String, u16)> {
    let listens = |h: &Host, dest: u8, port: u16| {
        h.listeners.iter().any(|(l, p)| *p == port && (*l == 0 || *l == dest))
    };
    let mut out = BTreeSet::new();
    for (ai, a) in hosts.iter().enumerate() {
        for (remote, rport, lport) in &a.conns {
            // The connection's local address is a's first IP (or 10.9.0.100 if it has none).
            let local = a.ips.first().copied().unwrap_or(100);
            if listens(a, local, *lport) {
                continue; // inbound on a's own listener
            }
            for (bi, b) in hosts.iter().enumerate() {
                if bi != ai && b.ips.contains(remote) && listens(b, *remote, *rport) {
                    out.insert(edge(
                        &format!("h{ai}"),
                        &format!("h{bi}"),
                        &ip(*remote).to_string(),
                        *rport,
                    ));
                }
            }
        }
    }
    out
}

fn host_payloads(h: &Host) -> (Value, Value) {
    let addrs: Vec<(String, u8)> = h.ips.iter().map(|o| (ip(*o).to_string(), 24)).collect();
    let ifs = interfaces(&addrs.iter().map(|(a, l)| ("eth0", a.as_str(), *l)).collect::<Vec<_>>());
    let local = ip(h.ips.first().copied().unwrap_or(100));
    let listening = h
        .listeners
        .iter()
        .map(|(l, p)| {
            let addr = if *l == 0 { IpAddr::from([0, 0, 0, 0]) } else { ip(*l) };
            sock("tcp", &SocketAddr::new(addr, *p).to_string(), "0.0.0.0:0", "/srv", 1)
        })
        .collect();
    let established = h
        .conns
        .iter()
        .map(|(r, rp, lp)| {
            sock(
                "tcp",
                &SocketAddr::new(local, *lp).to_string(),
                &SocketAddr::new(ip(*r), *rp).to_string(),
                "/cli",
                2,
            )
        })
        .collect();
    (ifs, sockets(listening, established))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn edges_match_naive_reference(
        hosts in proptest::collection::vec(host_strategy(), 1..5),
        order in proptest::collection::vec(any::<u16>(), 0..10),
        replay in proptest::collection::vec(host_strategy(), 0..2),
    ) {
        let mut d = db();
        let ids: Vec<NodeId> = (0..hosts.len()).map(|i| d.node(&format!("h{i}"))).collect();
        // Every host's two reports, in a shuffled order.
        let mut reports: Vec<(usize, bool)> =
            (0..hosts.len()).flat_map(|i| [(i, false), (i, true)]).collect();
        for (k, o) in order.iter().enumerate() {
            let n = reports.len();
            reports.swap(k % n, *o as usize % n);
        }
        for (i, sockets_first) in &reports {
            let (ifs, socks) = host_payloads(&hosts[*i]);
            if *sockets_first { d.put(ids[*i], "sockets", &socks) } else { d.put(ids[*i], "interfaces", &ifs) }
        }
        prop_assert_eq!(d.edges(), reference(&hosts));
        // Some hosts change completely afterwards (full snapshots replace the old ones).
        let mut hosts = hosts;
        for (k, h) in replay.into_iter().enumerate() {
            let i = k % hosts.len();
            hosts[i] = h;
            let (ifs, socks) = host_payloads(&hosts[i]);
            d.put(ids[i], "sockets", &socks);
            d.put(ids[i], "interfaces", &ifs);
        }
        prop_assert_eq!(d.edges(), reference(&hosts));
    }
}

#[test]
fn rings_switches_and_unreachable_hosts() {
    let mut d = db();
    let (a, b, c) = (d.node("a"), d.node("b"), d.node("c"));
    let l2 = |port: &str, protocol: &str| {
        json!({"interface": "eth0", "mac": "02:00:00:00:00:0a", "protocol": protocol,
            "chassis_id": "00:11:22:33:44:55", "port_id": port, "port_description": null,
            "system_name": "tor1", "system_description": "a switch", "platform": null,
            "capabilities": ["bridge"], "management_addresses": ["192.0.2.250"], "vlan": null})
    };
    // a is heard by LLDP and CDP on one port: one row; b by LLDP; c hears nothing.
    d.put(a, "l2neighbors", &json!({"neighbors": [l2("swp1", "lldp"), l2("swp1", "cdp")]}));
    d.put(b, "l2neighbors", &json!({"neighbors": [l2("swp2", "lldp")]}));
    let all = d.store.switch_views(None).unwrap();
    assert_eq!(all.len(), 1);
    let sw = &all[0];
    assert_eq!((sw.chassis_id.as_str(), sw.name.as_deref()), ("00:11:22:33:44:55", Some("tor1")));
    assert_eq!(sw.management_addresses, vec!["192.0.2.250"]);
    let hosts: Vec<_> = sw
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.port_id.as_str(), h.protocol.as_str()))
        .collect();
    assert_eq!(hosts, [("a", "swp1", "cdp,lldp"), ("b", "swp2", "lldp")]);
    assert_eq!(sw.hosts[0].state, "up");
    // By name or chassis id; an unknown switch is an empty answer.
    assert_eq!(d.store.switch_views(Some("tor1")).unwrap(), all);
    assert_eq!(d.store.switch_views(Some("00:11:22:33:44:55")).unwrap(), all);
    assert!(d.store.switch_views(Some("tor9")).unwrap().is_empty());

    // The single ring of a CMA without network-aware rings, in ring order, named.
    assert!(d.store.ring_views().unwrap().is_empty());
    d.store.apply(&[Change::Ring(vec![c, a, b])], &[], &InboxProgress::default()).unwrap();
    let rings = d.store.ring_views().unwrap();
    assert_eq!(rings.len(), 1);
    assert_eq!((rings[0].ring.as_str(), rings[0].kind.as_str()), ("all", "all"));
    let members: Vec<_> = rings[0].members.iter().map(|m| m.host.as_str()).collect();
    assert_eq!(members, ["c", "a", "b"]);
    assert!(rings[0].watchers.is_empty());

    // Unreachable hosts (the state a switch incident gives them).
    assert!(d.store.unreachable_hosts().unwrap().is_empty());
    d.store
        .conn
        .execute("UPDATE nodes SET state = 'unreachable', since = 9 WHERE id = ?1", [b.to_string()])
        .unwrap();
    let un = d.store.unreachable_hosts().unwrap();
    assert_eq!(un.len(), 1);
    assert_eq!((un[0].host.as_str(), un[0].state.as_str(), un[0].since), ("b", "unreachable", 9));
    assert_eq!(d.store.switch_views(Some("tor1")).unwrap()[0].hosts[1].state, "unreachable");

    // Network-aware rings: the stored layout replaces the single ring; the switch knows its
    // ring, which of its hosts heartbeat in it, and the CMA's last verdict on it.
    use assim_cma::ring::{RingKey, RingKind, RingRecord};
    use assim_cma::wiring::{NodeWiring, Wiring, WiringInputs, WiringSource};
    let key = RingKey::switch("00:11:22:33:44:55");
    let wiring = |node, ring: RingKey| {
        Change::Wiring(NodeWiring {
            node,
            wiring: Wiring { ring, source: WiringSource::Lldp, ..Default::default() },
            inputs: WiringInputs::default(),
        })
    };
    let ring = |key: RingKey, kind, members: Vec<NodeId>, reps, watchers| RingRecord {
        key,
        kind,
        members,
        representatives: reps,
        watchers,
    };
    let changes = [
        wiring(a, key.clone()),
        wiring(b, key.clone()),
        wiring(c, RingKey::segment("192.0.2.0/24")),
        Change::Rings(vec![
            ring(key.clone(), RingKind::Switch, vec![b, a], vec![b, a], vec![c]),
            ring(RingKey::segment("192.0.2.0/24"), RingKind::Segment, vec![c], vec![c], vec![a]),
            ring(RingKey::upper(), RingKind::Upper, vec![b, a, c], vec![], vec![]),
        ]),
    ];
    let switch_event = |id, kind, ring: &RingKey| assim_cma::Event {
        id,
        time: Timestamp(id),
        kind,
        host: None,
        hostname: String::new(),
        tags: [("ring".to_string(), ring.0.clone())].into(),
        text: "switch".into(),
        severity: Default::default(),
        body: None,
    };
    let events = [
        switch_event(1, assim_cma::EventKind::SwitchDown, &key),
        switch_event(2, assim_cma::EventKind::SwitchUp, &RingKey::switch("other")),
    ];
    d.store.apply(&changes, &events, &InboxProgress::default()).unwrap();
    let rings = d.store.ring_views().unwrap();
    let shape: Vec<_> = rings
        .iter()
        .map(|r| {
            let hosts = |l: &[assim_api::RingMember]| {
                l.iter().map(|m| m.host.clone()).collect::<Vec<_>>().join(" ")
            };
            (
                r.ring.as_str(),
                r.kind.as_str(),
                r.switch_name.as_deref(),
                hosts(&r.members),
                hosts(&r.watchers),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("segment:192.0.2.0/24", "segment", None, "c".to_string(), "a".to_string()),
            ("switch:00:11:22:33:44:55", "switch", Some("tor1"), "b a".into(), "c".into()),
            ("upper", "upper", None, "b a c".into(), "".into()),
        ]
    );
    let sw = &d.store.switch_views(Some("tor1")).unwrap()[0];
    assert_eq!(sw.ring.as_deref(), Some(key.0.as_str()));
    assert_eq!(sw.state.as_deref(), Some("down"));
    assert!(sw.hosts.iter().all(|h| h.in_ring), "{:?}", sw.hosts);
    d.store
        .apply(
            &[],
            &[switch_event(3, assim_cma::EventKind::SwitchUp, &key)],
            &InboxProgress::default(),
        )
        .unwrap();
    assert_eq!(d.store.switch_views(None).unwrap()[0].state.as_deref(), Some("up"));
}

#[test]
fn item_12_a_query_answers_at_most_max_answer_rows() {
    let mut d = db();
    let per_host = assim_store::MAX_ANSWER_ROWS / 2 + 1;
    let pkgs = json!({"packages": (0..per_host)
        .map(|i| json!({"name": format!("lib{i:06}"), "version": "1", "architecture": "amd64",
                        "manager": "dpkg"}))
        .collect::<Vec<_>>()});
    for name in ["h1", "h2"] {
        let h = d.node(name);
        d.put(h, "packages", &pkgs);
    }
    // Every package of every host: more rows than the bound, refused rather than built.
    for p in [PackagePattern::Prefix(""), PackagePattern::Prefix("lib")] {
        assert!(matches!(d.store.search_packages(p), Err(crate::StoreError::TooLarge)));
    }
    let loose = regex::Regex::new("^lib").unwrap();
    let err = d.store.search_packages(PackagePattern::Regex(&loose)).unwrap_err();
    assert!(matches!(err, crate::StoreError::TooLarge), "{err}");
    // The seam's error tells the caller to narrow the query.
    let seam: assim_store::QueryError = err.into();
    assert!(seam.to_string().contains("narrow the query"), "{seam}");
    // A narrower query is answered.
    assert_eq!(d.store.search_packages(PackagePattern::Prefix("lib00001")).unwrap().len(), 20);
}
