//! One conformance suite, two backends: the same batches, tokens, subscriptions and queries
//! run against the SQLite store and against the PostgreSQL store (a throwaway cluster from
//! `assim_util::testing::Postgres`), and every answer is compared. The suite also asserts what
//! the answers must be, so both backends being wrong the same way still fails.
//!
//! Without PostgreSQL the suite runs on SQLite alone and the comparison prints `SKIP:` (a
//! failure under `CI=true`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use assim_cma::ring::{RingKey, RingKind, RingRecord};
use assim_cma::statistics::StatPoint;
use assim_cma::wiring::{NodeWiring, Wiring, WiringInputs, WiringSource};
use assim_cma::{Change, Event, EventKind, NodeRecord, NodeState};
use assim_store::services::{
    CheckSetRecord, ManualChange, ManualCheck, MonitorRecord, RememberedService,
    ServiceStateRecord, ServicesBatch, StoredCheck,
};
use assim_store::{
    DiscoveryRecord, EngineStore, EventLog, InboxProgress, OutboxState, PackagePattern, Queries,
    SpoolIncarnation, StatisticsOutbox, TokenRecord, Tokens,
};
use assim_store_postgres::LeaseState;
use assim_util::testing::Postgres;
use assim_wire::{NodeId, Timestamp};
use serde_json::{Value, json};

/// What the suite needs beyond the four seams (writes the CMA makes outside a batch).
trait Backend: EngineStore + Tokens + Queries + EventLog + StatisticsOutbox {
    fn add_token(&mut self, t: &TokenRecord);
    fn set_statistics_queue_max(&mut self, max: u64);
    fn set_monitors(&mut self, node: &str, monitors: &[MonitorRecord]);
    fn prune_history(&mut self, older_than: Timestamp, keep: u64, batch: usize) -> (u64, u64);
}

impl Backend for assim_store_sqlite::Store {
    fn add_token(&mut self, t: &TokenRecord) {
        assim_store_sqlite::Store::add_token(self, t).unwrap()
    }
    fn set_statistics_queue_max(&mut self, max: u64) {
        assim_store_sqlite::Store::set_statistics_queue_max(self, max)
    }
    fn set_monitors(&mut self, node: &str, monitors: &[MonitorRecord]) {
        assim_store_sqlite::Store::set_monitors(self, node, monitors).unwrap()
    }
    fn prune_history(&mut self, older_than: Timestamp, keep: u64, batch: usize) -> (u64, u64) {
        let p = self.prune_topo_history(older_than, keep, batch).unwrap();
        (p.by_age, p.by_count)
    }
}

impl Backend for assim_store_postgres::Store {
    fn add_token(&mut self, t: &TokenRecord) {
        assim_store_postgres::Store::add_token(self, t).unwrap()
    }
    fn set_statistics_queue_max(&mut self, max: u64) {
        assim_store_postgres::Store::set_statistics_queue_max(self, max)
    }
    fn set_monitors(&mut self, node: &str, monitors: &[MonitorRecord]) {
        assim_store_postgres::Store::set_monitors(self, node, monitors).unwrap()
    }
    fn prune_history(&mut self, older_than: Timestamp, keep: u64, batch: usize) -> (u64, u64) {
        let p = self.prune_topo_history(older_than, keep, batch).unwrap();
        (p.by_age, p.by_count)
    }
}

fn id(n: u8) -> NodeId {
    NodeId([n; 16])
}

fn record(n: u8, name: &str, state: NodeState, since: u64) -> NodeRecord {
    NodeRecord {
        id: id(n),
        hostname: name.to_string(),
        version: "test".into(),
        listen_addr: format!("10.0.0.{n}:1984").parse().unwrap(),
        public_key: [n; 32],
        addresses: vec![format!("10.0.0.{n}")],
        state,
        since: Timestamp(since),
        registered_at: Timestamp(n as u64),
        peer_epoch: n as u64,
        peers: vec![id(n.wrapping_add(1))],
    }
}

fn event(eid: u64, kind: &str, host: Option<u8>, tags: &[(&str, &str)], text: &str) -> Event {
    let kind: EventKind = kind.parse().unwrap();
    Event {
        id: eid,
        time: Timestamp(eid * 1000),
        kind,
        host: host.map(id),
        hostname: host.map_or(String::new(), |h| format!("h{h}")),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        text: text.into(),
        severity: kind.default_severity(),
        body: eid
            .is_multiple_of(3)
            .then(|| json!({"n": eid, "list": [1, 2.5, "x"], "nested": {"b": 1, "a": null}})),
    }
}

fn discovery(node: u8, name: &str, payload: &Value, t: u64) -> DiscoveryRecord {
    let payload = payload.to_string();
    DiscoveryRecord {
        node: id(node),
        name: name.into(),
        hash: format!("{:x}", fxhash(&payload)),
        payload,
        collected_at: t,
        updated_at: t,
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// A NIC: name, MAC, (address, prefix length) pairs.
type Nic<'a> = (&'a str, &'a str, &'a [(&'a str, u8)]);

fn interfaces(nics: &[Nic<'_>]) -> Value {
    let ifs: Vec<Value> = nics
        .iter()
        .map(|(nic, mac, addrs)| {
            let addresses: Vec<Value> =
                addrs.iter().map(|(ip, len)| json!({"address": ip, "prefix_len": len})).collect();
            json!({"name": nic, "mac": mac, "mtu": 1500, "operstate": "up", "speed_mbps": 1000,
                   "duplex": "full", "addresses": addresses})
        })
        .collect();
    json!({"interfaces": ifs, "default_gateways": []})
}

fn sock(protocol: &str, local: &str, remote: &str, exe: &str, pid: u32) -> Value {
    json!({"protocol": protocol, "local": local, "remote": remote, "uid": 0, "user": "root",
           "inode": pid, "owner": {"pid": pid, "exe": exe, "cmdline": [exe, "--flag"]}})
}

fn l2(port: &str, protocol: &str) -> Value {
    json!({"interface": "eth0", "mac": "02:00:00:00:00:0a", "protocol": protocol,
        "chassis_id": "00:11:22:33:44:55", "port_id": port, "port_description": "to host",
        "system_name": "tor1", "system_description": "a switch", "platform": null,
        "capabilities": ["bridge", "router"], "management_addresses": ["192.0.2.250"],
        "vlan": 10})
}

fn check(name: &str, port: &str) -> StoredCheck {
    StoredCheck {
        name: name.into(),
        kind: "tcp".into(),
        argv: vec!["127.0.0.1".into(), port.into()],
        params: BTreeMap::from([("warn".to_string(), "1".to_string())]),
        interval_s: 60,
        retry_interval_s: 10,
        max_attempts: 3,
        timeout_s: 5,
    }
}

fn state(node: u8, check: &str, state: &str, at: u64) -> ServiceStateRecord {
    ServiceStateRecord {
        node: id(node),
        check: check.into(),
        state: state.into(),
        output: format!("{state}: output"),
        perfdata: "time=0.1s".into(),
        flapping: state == "warning",
        since: at,
        updated_at: at,
    }
}

/// The answers, labelled, in the order asked.
type Answers = Vec<(String, String)>;

fn ask(out: &mut Answers, label: &str, answer: impl std::fmt::Debug) {
    out.push((label.to_string(), format!("{answer:#?}")));
}

/// The suite: writes through the seams, then asks every question, asserting the answers
/// that matter along the way.
fn suite<B: Backend>(b: &mut B) -> Answers {
    let mut out = Answers::new();
    let empty = InboxProgress::default();

    // Nodes, counters, the single ring and the first events.
    let nodes = [
        record(1, "web", NodeState::Up, 10),
        record(2, "db", NodeState::Up, 11),
        record(3, "old", NodeState::Down, 30),
        record(4, "gone", NodeState::Left, 20),
        record(5, "far", NodeState::Unreachable, 40),
        record(6, "web", NodeState::Up, 12),
    ];
    let mut changes: Vec<Change> = nodes.iter().cloned().map(Change::Node).collect();
    changes.push(Change::Ring(vec![id(2), id(1), id(6), id(5)]));
    changes.push(Change::Counters { next_epoch: 7, next_event_id: 11 });
    let events = vec![
        event(1, "host.up", Some(1), &[("host", "web")], "web is up"),
        event(2, "host.down", Some(3), &[("host", "old")], "old stopped answering"),
        event(3, "host.left", Some(4), &[("host", "gone")], "gone said goodbye"),
        event(4, "host.unreachable", Some(5), &[("host", "far")], "far is cut off"),
        event(5, "switch.unreachable", None, &[("ring", "switch:00:11:22:33:44:55")], "tor1"),
        event(6, "switch.down", None, &[("ring", "switch:other")], "other switch down"),
        event(7, "local.event", Some(1), &[("app", "x"), ("ünï", "cödé")], "hello 🌍"),
    ];
    let mut progress = InboxProgress { position: Some(42), ..InboxProgress::default() };
    progress.applied.insert(id(1), (500, 3));
    progress.applied.insert(id(2), (7, 1));
    progress
        .incarnations
        .insert(id(1), SpoolIncarnation { incarnation: u64::MAX - 1, reset: false });
    b.apply(&changes, &events, &progress).unwrap();
    // A late duplicate batch does not lower a mark; a reset does; a repeated event id is kept
    // once.
    let mut late = InboxProgress::default();
    late.applied.insert(id(1), (9, 1));
    b.apply(&[], &events[..1], &late).unwrap();
    let mut reset = InboxProgress::default();
    reset.applied.insert(id(2), (2, 1));
    reset.incarnations.insert(id(2), SpoolIncarnation { incarnation: 0xb, reset: true });
    b.apply(&[], &[], &reset).unwrap();

    // The topology: interfaces, sockets (a dependency edge), neighbours, packages, L2.
    let mut t = 1_000_000;
    let mut put = |b: &mut B, node: u8, name: &str, payload: Value| {
        t += 1;
        let p =
            InboxProgress { discovery: vec![discovery(node, name, &payload, t)], ..empty.clone() };
        b.apply(&[], &[], &p).unwrap();
    };
    put(
        b,
        1,
        "interfaces",
        interfaces(&[
            ("eth0", "02:00:00:00:00:01", &[("10.0.0.1", 24), ("2001:db8::1", 64)]),
            ("lo", "00:00:00:00:00:00", &[("127.0.0.1", 8)]),
        ]),
    );
    put(b, 2, "interfaces", interfaces(&[("eth0", "02:00:00:00:00:02", &[("10.0.0.2", 24)])]));
    put(b, 6, "interfaces", interfaces(&[("eth0", "02:00:00:00:00:06", &[("10.0.1.6", 24)])]));
    put(
        b,
        1,
        "sockets",
        json!({
        "listening": [
            sock("tcp", "0.0.0.0:80", "0.0.0.0:0", "/usr/sbin/nginx", 10),
            sock("tcp", "127.0.0.1:25", "0.0.0.0:0", "/usr/sbin/exim4", 12),
            sock("udp", "0.0.0.0:53", "0.0.0.0:0", "/usr/sbin/named", 13),
        ],
        "established": [
            sock("tcp", "10.0.0.1:40000", "10.0.0.2:5432", "/usr/bin/app", 11),
            sock("tcp", "10.0.0.1:40001", "10.0.0.2:5432", "/usr/bin/app", 11),
            sock("tcp", "10.0.0.1:80", "10.0.0.9:51000", "/usr/sbin/nginx", 10),
        ]}),
    );
    put(
        b,
        2,
        "sockets",
        json!({
        "listening": [sock("tcp", "0.0.0.0:5432", "0.0.0.0:0", "/usr/lib/postgresql/postgres", 20)],
        "established": [sock("tcp", "10.0.0.2:5432", "10.0.0.1:40000",
                             "/usr/lib/postgresql/postgres", 21)]}),
    );
    put(
        b,
        6,
        "sockets",
        json!({
        "listening": [],
        "established": [sock("tcp", "10.0.1.6:41000", "10.0.0.1:80", "/usr/bin/curl", 30)]}),
    );
    put(
        b,
        1,
        "neighbours",
        json!({"neighbours": [
        {"interface": "eth0", "ip": "10.0.0.2", "mac": "02:00:00:00:00:02"},
        {"interface": "eth0", "ip": "10.0.0.10", "mac": "02:AB:00:00:00:01"},
        {"interface": "eth0", "ip": "10.0.0.9", "mac": "02:ab:00:00:00:02"}]}),
    );
    let pkgs = |v: &str| {
        json!({"packages": [
        {"name": "openssl", "version": v, "architecture": "amd64", "manager": "dpkg"},
        {"name": "openssh-server", "version": "1:9.2", "architecture": "amd64", "manager": "dpkg"},
        {"name": "bash", "version": "5.2", "architecture": "amd64", "manager": "dpkg"},
        {"name": "Zlib", "version": "1", "architecture": null, "manager": "rpm"}]})
    };
    put(b, 1, "packages", pkgs("3.0.1"));
    put(b, 2, "packages", pkgs("3.0.1"));
    put(b, 1, "packages", pkgs("3.0.2"));
    put(b, 1, "packages", pkgs("3.0.2"));
    put(b, 2, "packages", json!({"packages": "not a list"}));
    put(b, 1, "l2neighbors", json!({"neighbors": [l2("swp1", "lldp"), l2("swp1", "cdp")]}));
    put(b, 2, "l2neighbors", json!({"neighbors": [l2("swp2", "lldp")]}));
    put(b, 6, "l2neighbors", json!({"neighbors": [l2("swp9", "lldp")]}));
    put(b, 6, "l2neighbors", json!({"neighbors": []}));
    put(b, 2, "sockets", json!({"listening": [], "established": []}));
    put(
        b,
        2,
        "sockets",
        json!({
        "listening": [sock("tcp", "0.0.0.0:5432", "0.0.0.0:0", "/usr/lib/postgresql/postgres", 20)],
        "established": []}),
    );
    put(b, 1, "os", json!("not an os result"));

    // Services, hand-set checks, remembered services, host.new, the schedule.
    let services = ServicesBatch {
        check_sets: vec![
            CheckSetRecord {
                node: id(1),
                epoch: 4,
                checks: vec![check("http:80", "80"), check("load", "0"), check("ssh", "22")],
                monitors: vec![
                    MonitorRecord {
                        protocol: "tcp".into(),
                        service_ip: None,
                        port: 80,
                        check_name: "http:80".into(),
                    },
                    MonitorRecord {
                        protocol: "tcp".into(),
                        service_ip: None,
                        port: 80,
                        check_name: "a-http".into(),
                    },
                    MonitorRecord {
                        protocol: "udp".into(),
                        service_ip: Some("0.0.0.0".parse().unwrap()),
                        port: 53,
                        check_name: "dns".into(),
                    },
                ],
            },
            CheckSetRecord {
                node: id(2),
                epoch: 2,
                checks: vec![check("pg", "5432")],
                monitors: vec![],
            },
        ],
        states: vec![
            state(1, "http:80", "ok", 10),
            state(1, "ssh", "critical", 11),
            state(2, "pg", "warning", 12),
        ],
        manual: vec![
            ManualChange::Put(ManualCheck { node: id(1), check: check("a", "1"), added_at: 7 }),
            ManualChange::Put(ManualCheck { node: id(1), check: check("b", "2"), added_at: 8 }),
            ManualChange::Put(ManualCheck { node: id(1), check: check("a", "3"), added_at: 9 }),
            ManualChange::Remove { node: id(1), name: "b".into() },
        ],
        remembered: vec![(
            id(2),
            vec![RememberedService {
                protocol: "tcp".into(),
                ip: "0.0.0.0".parse().unwrap(),
                port: 22,
                exe: Some("/usr/sbin/sshd".into()),
                cmdline: vec!["sshd".into(), "-D".into()],
                user: None,
                seen: 5,
            }],
        )],
    };
    let mut p = InboxProgress { services, ..InboxProgress::default() };
    p.schedule =
        Some(assim_cma::schedule::StoredSchedule { canonical: "sockets=60{}".into(), epoch: 3 });
    p.host_new = vec![
        assim_cma::host_new::HostNewChange::Waiting { node: id(1), due_at: 99 },
        assim_cma::host_new::HostNewChange::Waiting { node: id(2), due_at: 98 },
        assim_cma::host_new::HostNewChange::Raised(id(2)),
    ];
    b.apply(&[], &[], &p).unwrap();
    // OK again keeps `since`; critical → ok moves it.
    let again = ServicesBatch {
        states: vec![state(1, "http:80", "ok", 20), state(1, "ssh", "ok", 21)],
        ..ServicesBatch::default()
    };
    b.apply(&[], &[], &InboxProgress { services: again, ..InboxProgress::default() }).unwrap();

    // Network-aware rings and wiring.
    let key = RingKey::switch("00:11:22:33:44:55");
    let wiring = |node: u8, ring: RingKey| {
        Change::Wiring(NodeWiring {
            node: id(node),
            wiring: Wiring {
                ring,
                source: WiringSource::Lldp,
                nic: Some("eth0".into()),
                ..Default::default()
            },
            inputs: WiringInputs::default(),
        })
    };
    let ring = |key: RingKey, kind, members: Vec<NodeId>, reps: Vec<NodeId>| RingRecord {
        key,
        kind,
        members,
        representatives: reps,
        watchers: vec![id(6)],
    };
    b.apply(
        &[
            wiring(1, key.clone()),
            wiring(2, key.clone()),
            Change::Rings(vec![
                ring(key.clone(), RingKind::Switch, vec![id(2), id(1)], vec![id(1)]),
                ring(RingKey("upper".into()), RingKind::Upper, vec![id(1), id(6)], vec![]),
                ring(RingKey("gone".into()), RingKind::Upper, vec![id(3)], vec![]),
            ]),
            Change::Rings(vec![ring(RingKey("gone".into()), RingKind::Upper, vec![], vec![])]),
        ],
        &[],
        &empty,
    )
    .unwrap();
    b.set_monitors(
        &id(2).to_string(),
        &[MonitorRecord {
            protocol: "tcp".into(),
            service_ip: Some("10.0.0.99".parse().unwrap()),
            port: 5432,
            check_name: "pg-other-ip".into(),
        }],
    );

    // Tokens.
    let token = TokenRecord {
        id: [7; 16],
        secret_hash: [9; 32],
        created_at: Timestamp(1),
        expires_at: Timestamp(2),
        max_uses: 2,
        uses: 0,
    };
    b.add_token(&token);
    b.use_token(&[7; 16]).unwrap();
    b.use_token(&[8; 16]).unwrap();
    let got = b.token(&[7; 16]).unwrap().unwrap();
    assert_eq!((got.uses, got.secret_hash), (1, [9; 32]));
    ask(&mut out, "token", got);
    ask(&mut out, "token unknown", b.token(&[8; 16]).unwrap());
    ask(&mut out, "token short id", b.token(&[7; 3]).unwrap());

    // The event log: resume by id, subscriptions, dead letters.
    let ids = |v: Vec<Event>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(b.events_since(0, 100).unwrap()), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(ids(b.events_since(4, 2).unwrap()), [5, 6]);
    assert_eq!(b.events_since(0, 100).unwrap(), events, "events round-trip");
    ask(&mut out, "events since 2", b.events_since(2, 3).unwrap());
    ask(&mut out, "last event id", EventLog::last_event_id(b).unwrap());
    let sub = b.put_subscription("ops", "severity>=warning", None, 4, Timestamp(1)).unwrap();
    assert_eq!(sub.cursor, 4);
    assert_eq!(b.ack_subscription("ops", 6, Timestamp(2)).unwrap(), Some(6));
    assert_eq!(b.ack_subscription("ops", 5, Timestamp(3)).unwrap(), Some(6), "never back");
    assert_eq!(b.ack_subscription("nobody", 5, Timestamp(3)).unwrap(), None);
    let sub = b
        .put_subscription("ops", "has:ring", Some("{\"kind\":\"nats\"}"), 0, Timestamp(4))
        .unwrap();
    assert_eq!((sub.cursor, sub.filter.as_str()), (6, "has:ring"));
    b.put_subscription("audit", "kind=local.event", None, 0, Timestamp(5)).unwrap();
    b.put_subscription("tmp", "all", None, 0, Timestamp(5)).unwrap();
    for (ev, attempts) in [(5, 3), (6, 4), (7, 5)] {
        b.add_dead_letter("ops", ev, attempts, &format!("HTTP 50{ev}"), Timestamp(ev)).unwrap();
    }
    b.add_dead_letter("tmp", 1, 1, "x", Timestamp(1)).unwrap();
    assert!(b.delete_subscription("tmp").unwrap());
    assert!(!b.delete_subscription("tmp").unwrap());
    ask(&mut out, "subscriptions", b.subscriptions().unwrap());
    ask(&mut out, "subscription ops", b.subscription("ops").unwrap());
    ask(&mut out, "dead letters ops 2", b.dead_letters("ops", 2).unwrap());
    ask(&mut out, "dead letters tmp", b.dead_letters("tmp", 10).unwrap());
    b.set_bus_state("jetstream", "seq=9").unwrap();
    ask(&mut out, "bus state", (b.bus_state("jetstream").unwrap(), b.bus_state("none").unwrap()));

    // Every query.
    ask(&mut out, "nodes", b.nodes().unwrap());
    for n in [1, 2, 9] {
        ask(&mut out, &format!("discovery {n}"), b.discovery(id(n)).unwrap());
    }
    ask(&mut out, "latest discovery", b.latest_discovery(&["sockets", "packages", "os"]).unwrap());
    ask(&mut out, "services", Queries::services(b, None, None).unwrap());
    ask(&mut out, "services web", Queries::services(b, Some("web"), None).unwrap());
    ask(&mut out, "services OK", Queries::services(b, None, Some("OK")).unwrap());
    for name in ["web", "db", &id(3).to_string(), "nosuch"] {
        ask(&mut out, &format!("resolve {name}"), b.resolve_host(name).unwrap());
    }
    ask(&mut out, "down", b.down_hosts(false).unwrap());
    ask(&mut out, "crashed", b.down_hosts(true).unwrap());
    ask(&mut out, "unreachable", b.unreachable_hosts().unwrap());
    let rings = Queries::rings(b).unwrap();
    assert_eq!(rings.len(), 2, "{rings:?}");
    ask(&mut out, "rings", rings);
    let switches = b.switches(None).unwrap();
    assert_eq!(switches.len(), 1);
    assert_eq!(switches[0].state.as_deref(), Some("unreachable"));
    ask(&mut out, "switches", switches);
    ask(&mut out, "switch tor1", b.switches(Some("tor1")).unwrap());
    ask(&mut out, "switch unknown", b.switches(Some("tor9")).unwrap());
    for n in [1, 2, 6] {
        let node = id(n).to_string();
        ask(&mut out, &format!("host services {n}"), b.host_services(&node).unwrap());
        ask(&mut out, &format!("dependencies {n}"), b.dependencies(&node).unwrap());
        ask(&mut out, &format!("dependents {n}"), b.dependents(&node).unwrap());
    }
    let deps = b.all_dependencies().unwrap();
    let edges: Vec<_> =
        deps.iter().map(|d| (d.client_host.as_str(), d.server_host.as_str(), d.port)).collect();
    assert_eq!(edges, [("web", "db", 5432), ("web", "web", 80)], "{deps:?}");
    ask(&mut out, "all dependencies", deps);
    for ip in ["10.0.0.2", "10.0.0.1", "2001:db8::1", "::ffff:10.0.0.1", "10.9.9.9"] {
        ask(&mut out, &format!("find ip {ip}"), b.find_ip(ip.parse::<IpAddr>().unwrap()).unwrap());
    }
    for mac in ["02:ab:00:00:00:01", "02:00:00:00:00:01", "00:11:22:33:44:55", "02:00:00:00:00:0a"]
    {
        ask(&mut out, &format!("find mac {mac}"), b.find_mac(mac).unwrap());
    }
    ask(&mut out, "switch ports", b.switch_ports(None).unwrap());
    ask(&mut out, "switch ports 2", b.switch_ports(Some(&id(2).to_string())).unwrap());
    let unmonitored = b.unmonitored_services().unwrap();
    let ports: Vec<_> = unmonitored.iter().map(|s| (s.host.as_str(), s.port)).collect();
    assert_eq!(ports, [("db", 5432)], "a monitor on another IP does not count");
    ask(&mut out, "unmonitored", unmonitored);
    let re = regex::Regex::new("^(bash|openssl)$").unwrap();
    for (label, p) in [
        ("exact openssl", PackagePattern::Exact("openssl")),
        ("prefix openss", PackagePattern::Prefix("openss")),
        ("prefix empty", PackagePattern::Prefix("")),
        ("prefix Z", PackagePattern::Prefix("Z")),
        ("regex", PackagePattern::Regex(&re)),
    ] {
        ask(&mut out, &format!("packages {label}"), b.search_packages(p).unwrap());
    }
    let unknown: Vec<String> = b.unknown_ips().unwrap().into_iter().map(|u| u.ip).collect();
    assert_eq!(unknown, ["10.0.0.9", "10.0.0.10"]);
    ask(&mut out, "unknown ips", b.unknown_ips().unwrap());
    ask(&mut out, "subnets", b.subnets().unwrap());
    let history = b.topology_history(None, 1000).unwrap();
    assert!(history.iter().any(|h| h.kind == "dependency"), "{history:?}");
    ask(&mut out, "history", history);
    ask(&mut out, "history 1 limit 3", b.topology_history(Some(&id(1).to_string()), 3).unwrap());

    // The statistics queue for Graphite (issue 17 item 5): in the batch, capped from the
    // oldest end, read oldest first, emptied by the forwarder; ids keep growing.
    b.set_statistics_queue_max(5);
    let point = |i: u64| StatPoint {
        path: format!("assim.web.load.m{i}"),
        value: i as f64 + 0.25,
        at_s: 1_800_000_000 + i,
    };
    for points in [0..3u64, 3..7] {
        let progress = InboxProgress { statistics: points.map(point).collect(), ..empty.clone() };
        b.apply(&[], &[], &progress).unwrap();
    }
    let queued = StatisticsOutbox::oldest(b, 10).unwrap();
    let paths: Vec<&str> = queued.iter().map(|q| q.point.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "assim.web.load.m2",
            "assim.web.load.m3",
            "assim.web.load.m4",
            "assim.web.load.m5",
            "assim.web.load.m6"
        ]
    );
    assert_eq!((queued[0].point.value, queued[0].point.at_s), (2.25, 1_800_000_002));
    assert_eq!(StatisticsOutbox::state(b).unwrap(), OutboxState { queued: 5, dropped: 2 });
    ask(&mut out, "statistics queued", &queued);
    StatisticsOutbox::remove_through(b, queued[3].id).unwrap();
    let progress = InboxProgress { statistics: vec![point(7)], ..empty.clone() };
    b.apply(&[], &[], &progress).unwrap();
    let left = StatisticsOutbox::oldest(b, 10).unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(left[1].id, left[0].id + 1, "ids without holes");
    ask(&mut out, "statistics left", &left);
    ask(&mut out, "statistics state", StatisticsOutbox::state(b).unwrap());

    // The engine's view at start.
    let loaded = b.load().unwrap();
    assert_eq!(loaded.position, 42);
    assert_eq!(loaded.applied[&id(1)], 500);
    assert_eq!(loaded.applied[&id(2)], 2, "a reset replaces the mark");
    assert_eq!(loaded.incarnations[&id(1)], u64::MAX - 1, "u64 survives the signed column");
    assert_eq!(loaded.snapshot.next_event_id, 11);
    ask(&mut out, "loaded", loaded);

    // Retention (events, then the topology history).
    let p = b.prune_events(Timestamp(3000), 1_000_000, 1000).unwrap();
    assert_eq!((p.by_age, p.by_count), (2, 0));
    let p = b.prune_events(Timestamp(0), 3, 1).unwrap();
    assert_eq!((p.by_age, p.by_count), (0, 1));
    ask(&mut out, "events after pruning", ids(b.events_since(0, 100).unwrap()));
    ask(&mut out, "history pruned", b.prune_history(Timestamp(1_000_005), 4, 1000));
    ask(&mut out, "history left", b.topology_history(None, 1000).unwrap());
    out
}

#[test]
fn sqlite_and_postgres_answer_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = assim_store_sqlite::Store::open(&dir.path().join("cma.sqlite")).unwrap();
    let want = suite(&mut sqlite);
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("conformance");
    let mut store = assim_store_postgres::Store::open(&pg.conninfo("conformance")).unwrap();
    let got = suite(&mut store);
    assert_eq!(want.len(), got.len());
    for ((label, s), (_, p)) in want.iter().zip(&got) {
        assert_eq!(s, p, "`{label}` differs: SQLite (left) and PostgreSQL (right)");
    }
    // Handles opened as the HTTP API and the bus open them read the same.
    let queries =
        assim_store_postgres::query::queries_opener(pg.conninfo("conformance"))().unwrap();
    assert_eq!(
        format!("{:?}", queries.rings().unwrap()),
        format!("{:?}", Queries::rings(&sqlite).unwrap())
    );
    let log = assim_store_postgres::bus::event_log_opener(pg.conninfo("conformance"))().unwrap();
    assert_eq!(log.events_since(0, 100).unwrap(), sqlite.events_since(0, 100).unwrap());
    // A second handle reads the same, and reopening migrates nothing.
    let again = assim_store_postgres::Store::open(&pg.conninfo("conformance")).unwrap();
    assert_eq!(
        format!("{:?}", Queries::nodes(&again).unwrap()),
        format!("{:?}", Queries::nodes(&store).unwrap())
    );
}

/// Issue 14, fencing: an engine whose lease was taken over commits nothing, and the new holder
/// commits; a commit racing a takeover is ordered by the lease row's lock.
#[test]
fn a_deposed_engine_commits_nothing() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("fence");
    let info = pg.conninfo("fence");
    let mut a = assim_store_postgres::Store::open(&info).unwrap();
    let mut b = assim_store_postgres::Store::open(&info).unwrap();
    let ttl = std::time::Duration::from_millis(300);
    assert_eq!(a.acquire_lease("engine-a", ttl).unwrap(), Some(1));
    assert_eq!(b.acquire_lease("engine-b", ttl).unwrap(), None, "a's lease still runs");
    assert_eq!(b.fence(), None);
    let batch = |pos| InboxProgress { position: Some(pos), ..InboxProgress::default() };
    a.apply(&[], &[event(1, "host.up", Some(1), &[], "a")], &batch(1)).unwrap();
    // Renewing keeps the term.
    assert_eq!(a.acquire_lease("engine-a", ttl).unwrap(), Some(1));
    // a stalls past its lease (SIGSTOP in the real test); b takes over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let term = loop {
        if let Some(term) = b.acquire_lease("engine-b", ttl).unwrap() {
            break term;
        }
        assert!(std::time::Instant::now() < deadline, "b never got the lease");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(term, 2);
    b.apply(&[], &[event(2, "host.up", Some(2), &[], "b")], &batch(2)).unwrap();
    // a wakes up and tries to commit its next batch: refused, nothing of it stored (not its
    // statistics either).
    let stale = InboxProgress {
        statistics: vec![StatPoint { path: "assim.a.stale".into(), value: 1.0, at_s: 1 }],
        ..batch(3)
    };
    let err = a.apply(&[], &[event(3, "host.up", Some(3), &[], "stale")], &stale).unwrap_err();
    assert_eq!(StatisticsOutbox::state(&mut b).unwrap(), OutboxState { queued: 0, dropped: 0 });
    assert!(
        matches!(err, assim_store_postgres::StoreError::Deposed { held: 1, current: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("taken over"), "{err}");
    let ids: Vec<u64> = b.events_since(0, 10).unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(b.inbox_position().unwrap(), 2);
    // A failed attempt to take the lease back does not unfence a: still refused.
    assert_eq!(a.acquire_lease("engine-a", ttl).unwrap(), None);
    assert_eq!(a.fence(), Some(1));
    let err = a.apply(&[], &[event(3, "host.up", Some(3), &[], "stale")], &batch(3)).unwrap_err();
    assert!(matches!(err, assim_store_postgres::StoreError::Deposed { .. }), "{err}");
    // Renewing never takes the lease: a is told who has it; b renews under its term.
    let other = a.renew_lease("engine-a", ttl).unwrap();
    assert!(
        matches!(&other, LeaseState::Other { term: 2, holder, expires_in_ms }
            if holder == "engine-b" && *expires_in_ms <= 300),
        "{other:?}"
    );
    assert_eq!(b.renew_lease("engine-b", ttl).unwrap(), LeaseState::Mine { term: 2 });
    // b records itself as the inbox position's owner (fenced): the position becomes its
    // inbox's, once; then b releases the lease at a clean stop: a takes it at once, with a new
    // term, and b's claims are refused.
    let claim = |previous: Option<&str>, mine_through| assim_store_postgres::InboxClaim {
        previous: previous.map(str::to_owned),
        mine_through,
    };
    assert_eq!(b.claim_inbox("engine-b", 5).unwrap(), claim(None, None));
    assert_eq!(b.inbox_position().unwrap(), 5);
    assert_eq!(b.claim_inbox("engine-b", 9).unwrap(), claim(Some("engine-b"), None));
    assert_eq!(b.inbox_position().unwrap(), 5, "the owner's own position stays");
    b.apply(&[], &[], &batch(7)).unwrap();
    b.release_lease().unwrap();
    let mut c = assim_store_postgres::Store::open(&info).unwrap();
    assert_eq!(
        c.try_acquire_lease("engine-a", std::time::Duration::from_secs(30)).unwrap(),
        LeaseState::Mine { term: 3 }
    );
    assert_eq!(c.claim_inbox("engine-a", 0).unwrap(), claim(Some("engine-b"), None));
    assert_eq!(c.inbox_position().unwrap(), 0, "a position in a's inbox now");
    // When b claims it back one day, it learns that its inbox was applied through 7.
    assert_eq!(c.meta("inbox_position_of:engine-b").unwrap().as_deref(), Some("7"));
    let err = b.claim_inbox("engine-b", 9).unwrap_err();
    assert!(matches!(err, assim_store_postgres::StoreError::Deposed { held: 2, current: 3 }));
    let told = b.renew_lease("engine-b", ttl).unwrap();
    assert!(
        matches!(&told, LeaseState::Other { term: 3, holder, .. } if holder == "engine-a"),
        "{told:?}"
    );
    // A store without a term (a reader, `cma token create`) is not fenced.
    let mut plain = assim_store_postgres::Store::open(&info).unwrap();
    plain.set_meta("listen", "x").unwrap();
}

/// Issue 14: another process of the same engine (the same holder name: a restart while the
/// first process is stopped but alive, or a grant whose answer was lost) does not get a running
/// lease back; it waits for it to lapse and takes it under a new term, which fences the first.
#[test]
fn the_same_holder_in_another_process_waits_and_gets_a_new_term() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("holder");
    let info = pg.conninfo("holder");
    let mut a = assim_store_postgres::Store::open(&info).unwrap();
    let mut b = assim_store_postgres::Store::open(&info).unwrap();
    let ttl = std::time::Duration::from_millis(300);
    assert_eq!(a.acquire_lease("engine-a", ttl).unwrap(), Some(1));
    assert_eq!(b.acquire_lease("engine-a", ttl).unwrap(), None, "a's lease still runs");
    assert_eq!(a.acquire_lease("engine-a", ttl).unwrap(), Some(1), "a renews its own term");
    let batch = |pos| InboxProgress { position: Some(pos), ..InboxProgress::default() };
    a.apply(&[], &[event(1, "host.up", Some(1), &[], "a")], &batch(1)).unwrap();
    let t0 = std::time::Instant::now();
    let term = loop {
        if let Some(term) = b.acquire_lease("engine-a", ttl).unwrap() {
            break term;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "b never got the lease");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(t0.elapsed() >= std::time::Duration::from_millis(250), "{:?}", t0.elapsed());
    assert_eq!(term, 2);
    let err = a.apply(&[], &[event(2, "host.up", Some(2), &[], "stale")], &batch(2)).unwrap_err();
    assert!(
        matches!(err, assim_store_postgres::StoreError::Deposed { held: 1, current: 2 }),
        "{err}"
    );
    let other = a.renew_lease("engine-a", ttl).unwrap();
    assert!(matches!(other, LeaseState::Other { term: 2, .. }), "{other:?}");
    b.apply(&[], &[event(2, "host.up", Some(2), &[], "b")], &batch(2)).unwrap();
    let texts: Vec<String> = b.events_since(0, 10).unwrap().into_iter().map(|e| e.text).collect();
    assert_eq!(texts, ["a", "b"]);
}

/// Two engines asking for the lease at the same instant, on an empty table and then on a
/// lapsed lease, ten times: PostgreSQL orders the two upserts on the row and exactly one is
/// granted each time — with a term one above the last, unless the winner is the store that held
/// the lapsed term (nobody wrote in between, so it keeps it).
#[test]
fn two_engines_asking_at_the_same_instant_get_one_lease() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("race");
    let info = pg.conninfo("race");
    let ttl = std::time::Duration::from_millis(200);
    let mut stores: Vec<_> =
        (0..2).map(|_| assim_store_postgres::Store::open(&info).unwrap()).collect();
    let mut last: Option<(usize, u64)> = None;
    for round in 1..=10u64 {
        let barrier = std::sync::Barrier::new(2);
        let granted: Vec<Option<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = stores
                .iter_mut()
                .enumerate()
                .map(|(i, st)| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        st.acquire_lease(&format!("engine-{i}"), ttl).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<(usize, u64)> =
            granted.iter().enumerate().filter_map(|(i, g)| g.map(|t| (i, t))).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one grant: {granted:?}");
        let (winner, term) = won[0];
        let want = match last {
            None => 1,
            Some((w, t)) if w == winner => t,
            Some((_, t)) => t + 1,
        };
        assert_eq!(term, want, "round {round}: {granted:?} after {last:?}");
        last = Some((winner, term));
        // Let it lapse for the next round.
        std::thread::sleep(ttl + std::time::Duration::from_millis(50));
    }
}

/// An engine stopped (SIGSTOP) inside a batch's transaction holds the lease row `FOR SHARE`;
/// with the idle-in-transaction timeout the engine sets to its lease, the server ends that
/// session and a takeover goes through instead of waiting for the stopped engine.
#[test]
fn a_transaction_left_open_does_not_block_a_takeover_for_long() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("idle");
    let info = pg.conninfo("idle");
    let mut a = assim_store_postgres::Store::open(&info).unwrap();
    a.acquire_lease("engine-a", std::time::Duration::from_millis(300)).unwrap();
    a.set_idle_in_transaction_timeout(std::time::Duration::from_millis(500)).unwrap();
    // What a batch does first, then nothing (the engine is stopped).
    let mut stopped = postgres::Client::connect(&info, postgres::NoTls).unwrap();
    stopped.batch_execute("SET idle_in_transaction_session_timeout = 500").unwrap();
    let mut tx = stopped.transaction().unwrap();
    tx.query("SELECT term FROM engine_lease WHERE id = 1 FOR SHARE", &[]).unwrap();
    let mut b = assim_store_postgres::Store::open(&info).unwrap();
    let t0 = std::time::Instant::now();
    let term = loop {
        if let Some(term) = b.acquire_lease("engine-b", std::time::Duration::from_secs(5)).unwrap()
        {
            break term;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "b never got the lease");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(term, 2);
    assert!(t0.elapsed() < std::time::Duration::from_secs(3), "{:?}", t0.elapsed());
    // The stopped one wakes up: its transaction is gone.
    assert!(tx.commit().is_err(), "the server ended the idle transaction");
    // The engine's store (its other batches) is fenced.
    let err = a.apply(&[], &[], &InboxProgress { position: Some(1), ..Default::default() });
    assert!(matches!(err, Err(assim_store_postgres::StoreError::Deposed { .. })), "{err:?}");
}

/// A [`assim_store_postgres::Handle`] runs its store on its own thread: it can be opened, used
/// and dropped inside a tokio runtime, where the synchronous client itself panics.
#[test]
fn a_handle_works_inside_a_tokio_runtime() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("handle");
    let info = pg.conninfo("handle");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut h = assim_store_postgres::Handle::open(&info).unwrap();
        let state = h.acquire_lease("engine-a", std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(state, LeaseState::Mine { term: 1 });
        assert_eq!(h.fence(), Some(1));
        let batch = InboxProgress { position: Some(7), ..InboxProgress::default() };
        assim_store::EngineStore::apply(
            &mut h,
            &[],
            &[event(1, "host.up", Some(1), &[], "x")],
            &batch,
        )
        .unwrap();
        let loaded = assim_store::EngineStore::load(&mut h).unwrap();
        assert_eq!(loaded.position, 7);
        let q = assim_store_postgres::query::queries_opener(info.clone())().unwrap();
        assert!(q.nodes().unwrap().is_empty());
        let log = assim_store_postgres::bus::event_log_opener(info.clone())().unwrap();
        assert_eq!(log.last_event_id().unwrap(), 1);
        drop((h, q, log));
    });
    // A bad connection string fails before a thread is started, without the password.
    let err = assim_store_postgres::Handle::open("host=/nonexistent password=hunter2 port=x")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

/// A connection string that does not parse, or a server that is not there, is a clear error
/// that does not repeat the password.
#[test]
fn bad_connection_strings_are_refused_without_echoing_the_password() {
    for bad in ["postgres://u:s3cret@host:notaport/db", "host=/nonexistent port=1 password=s3cret"]
    {
        let err = assim_store_postgres::Store::open(bad).unwrap_err().to_string();
        assert!(err.contains("PostgreSQL") || err.contains("connection string"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}

/// PostgreSQL refuses NUL in text and jsonb; a hostile plugin output or payload with NUL must
/// not wedge the engine (a failed batch is retried forever). It is stored as U+FFFD. Also: a
/// database from a newer version is refused, and a lost connection (a server restart) is
/// reconnected.
#[test]
fn nul_characters_newer_schemas_and_a_lost_connection() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("nul");
    let info = pg.conninfo("nul");
    let mut s = assim_store_postgres::Store::open(&info).unwrap();
    let mut ev = event(1, "local.event", Some(1), &[("k\0", "v\0")], "text\0with nul");
    ev.body = Some(json!({"out\0": "a\0b"}));
    ev.hostname = "h\0".into();
    let d = DiscoveryRecord {
        payload: "{\"x\":\"\\u0000\"}\0".into(),
        ..discovery(1, "sockets", &json!({}), 1)
    };
    let states = ServicesBatch {
        states: vec![ServiceStateRecord { output: "bad\0".into(), ..state(1, "c", "ok", 1) }],
        ..ServicesBatch::default()
    };
    s.apply(
        &[Change::Node(NodeRecord { hostname: "n\0".into(), ..record(1, "x", NodeState::Up, 1) })],
        &[ev],
        &InboxProgress { discovery: vec![d], services: states, ..InboxProgress::default() },
    )
    .unwrap();
    let got = &s.events_since(0, 1).unwrap()[0];
    assert_eq!(got.text, "text\u{FFFD}with nul");
    assert_eq!(got.tags["k\u{FFFD}"], "v\u{FFFD}");
    assert_eq!(got.body, Some(json!({"out\u{FFFD}": "a\u{FFFD}b"})));
    assert_eq!(s.nodes().unwrap()[0].hostname, "n\u{FFFD}");

    // Too new: refused with the fix in the message.
    let mut c = postgres::Client::connect(&info, postgres::NoTls).unwrap();
    c.batch_execute("UPDATE schema_version SET version = 99").unwrap();
    let err = assim_store_postgres::Store::open(&info).unwrap_err();
    assert!(err.to_string().contains("upgrade assim"), "{err}");
    c.batch_execute("UPDATE schema_version SET version = 1").unwrap();
    drop(c);

    // The server's backends are terminated (as a restart does): the next call fails, the one
    // after reconnects and works.
    let mut admin = postgres::Client::connect(&info, postgres::NoTls).unwrap();
    admin
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = 'nul'")
        .unwrap();
    // Termination is asynchronous: wait until the backend is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = 'nul'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "the backend was not terminated");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let first = s.last_event_id();
    assert!(first.is_err(), "the call in flight fails: {first:?}");
    assert_eq!(s.last_event_id().unwrap(), 1, "the next call reconnects");
}

/// What a store answers, read only: the engine's view at start and every query the API makes,
/// over everything the suite wrote.
fn answers<B: Backend>(b: &mut B) -> Answers {
    let mut out = Answers::new();
    ask(&mut out, "loaded", b.load().unwrap());
    ask(&mut out, "nodes", b.nodes().unwrap());
    ask(&mut out, "discovery 1", b.discovery(id(1)).unwrap());
    ask(&mut out, "services", b.services(None, None).unwrap());
    ask(&mut out, "resolve web", b.resolve_host("web").unwrap());
    ask(&mut out, "down", b.down_hosts(false).unwrap());
    ask(&mut out, "crashed", b.down_hosts(true).unwrap());
    ask(&mut out, "unreachable", b.unreachable_hosts().unwrap());
    ask(&mut out, "rings", b.rings().unwrap());
    ask(&mut out, "switches", b.switches(None).unwrap());
    ask(&mut out, "host services", b.host_services(&id(1).to_string()).unwrap());
    ask(&mut out, "dependencies", b.all_dependencies().unwrap());
    ask(&mut out, "switch ports", b.switch_ports(None).unwrap());
    ask(&mut out, "unmonitored", b.unmonitored_services().unwrap());
    ask(&mut out, "packages", b.search_packages(PackagePattern::Prefix("")).unwrap());
    ask(&mut out, "unknown ips", b.unknown_ips().unwrap());
    ask(&mut out, "subnets", b.subnets().unwrap());
    ask(&mut out, "history", b.topology_history(None, 1000).unwrap());
    ask(&mut out, "events", b.events_since(0, 1000).unwrap());
    ask(&mut out, "last event", b.last_event_id().unwrap());
    let subs = b.subscriptions().unwrap();
    for s in &subs {
        ask(&mut out, &format!("dead letters {}", s.name), b.dead_letters(&s.name, 100).unwrap());
    }
    ask(&mut out, "subscriptions", subs);
    ask(&mut out, "token", b.token(&[7; 16]).unwrap());
    ask(&mut out, "statistics", StatisticsOutbox::oldest(b, 100).unwrap());
    ask(&mut out, "statistics state", StatisticsOutbox::state(b).unwrap());
    out
}

/// Issue 14, moving an embedded CMA to PostgreSQL: everything the suite wrote to SQLite is
/// copied into an empty PostgreSQL database, which then answers every query the same; the
/// sequences and the statistics queue's ids go on after the imported ones; a second import
/// into the now non-empty database is refused and writes nothing.
#[test]
fn an_sqlite_store_imported_into_postgresql_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cma.sqlite");
    let mut sqlite = assim_store_sqlite::Store::open(&path).unwrap();
    suite(&mut sqlite);
    let want = answers(&mut sqlite);
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("imported");
    let mut store = assim_store_postgres::Store::open(&pg.conninfo("imported")).unwrap();
    let mut told = Vec::new();
    let imported = assim_store_postgres::import::import_sqlite(&path, &store, |t, n| {
        told.push((t.to_owned(), n));
    })
    .unwrap();
    assert_eq!(imported.tables, told);
    let rows = |t: &str| imported.tables.iter().find(|(n, _)| n == t).map_or(0, |(_, n)| *n);
    assert!(rows("nodes") == 6 && rows("events") > 0 && rows("topo_history") > 0, "{told:?}");
    let got = answers(&mut store);
    assert_eq!(want.len(), got.len());
    for ((label, s), (_, p)) in want.iter().zip(&got) {
        assert_eq!(s, p, "`{label}` differs: SQLite (left) and imported PostgreSQL (right)");
    }
    // Ids go on after the imported ones.
    let before = StatisticsOutbox::oldest(&mut store, 100).unwrap();
    let progress = InboxProgress {
        statistics: vec![StatPoint { path: "assim.after.import".into(), value: 1.0, at_s: 9 }],
        ..InboxProgress::default()
    };
    store.apply(&[], &[], &progress).unwrap();
    let after = StatisticsOutbox::oldest(&mut store, 100).unwrap();
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(after.last().unwrap().id, before.last().unwrap().id + 1);
    store.add_dead_letter("ops", 9, 1, "after import", Timestamp(9)).unwrap();
    // A second import is refused: the database holds a CMA's state; nothing changes.
    let err = assim_store_postgres::import::import_sqlite(&path, &store, |_, _| {}).unwrap_err();
    assert!(
        matches!(err, assim_store_postgres::import::ImportError::NotEmpty { nodes: 6, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("empty database"), "{err}");
    assert_eq!(Queries::nodes(&store).unwrap().len(), 6);
    // An SQLite file that is not a store is refused with its reason.
    let bogus = dir.path().join("bogus.sqlite");
    std::fs::write(&bogus, b"not a database at all, just text").unwrap();
    pg.create_database("other");
    let other = assim_store_postgres::Store::open(&pg.conninfo("other")).unwrap();
    let err = assim_store_postgres::import::import_sqlite(&bogus, &other, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("cannot read the SQLite store"), "{err}");
    assert_eq!(Queries::nodes(&other).unwrap().len(), 0);
}
