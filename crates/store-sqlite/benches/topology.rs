//! How long applying one changed `sockets` result takes (graph upkeep and dependency edges
//! included, one fsync'd transaction each) as the fleet grows: it must not grow with the number
//! of hosts. Also the same apply without topology-relevant data (`mounts`) as the floor.
//!
//! `cargo bench -p assim-store-sqlite --bench topology`

use std::time::Instant;

use assim_cma::{Change, NodeRecord, NodeState};
use assim_store_sqlite::{DiscoveryRecord, InboxProgress, Store};
use assim_wire::{NodeId, Timestamp};
use serde_json::{Value, json};

const SERVERS: usize = 20;
const ROUNDS: usize = 200;

fn node(id: NodeId, i: usize) -> NodeRecord {
    NodeRecord {
        id,
        hostname: format!("h{i}"),
        version: "bench".into(),
        listen_addr: "127.0.0.1:1984".parse().unwrap(),
        public_key: [1; 32],
        addresses: vec![],
        state: NodeState::Up,
        since: Timestamp(1),
        registered_at: Timestamp(1),
        peer_epoch: 0,
        peers: vec![],
    }
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256 + 1)
}

fn sock(local: String, remote: String, pid: usize) -> Value {
    json!({"protocol": "tcp", "local": local, "remote": remote, "uid": 0, "user": "root",
           "inode": pid, "owner": {"pid": pid, "exe": "/usr/bin/x", "cmdline": ["x"]}})
}

/// Host `i`: listens on :5432 if it is a server; 5 connections to servers (variant shifts ports).
fn sockets(i: usize, variant: usize) -> Value {
    let listening: Vec<Value> =
        if i < SERVERS { vec![sock("0.0.0.0:5432".into(), "0.0.0.0:0".into(), 1)] } else { vec![] };
    let established: Vec<Value> = (0..5)
        .map(|k| {
            let s = (i + k) % SERVERS;
            sock(format!("{}:{}", ip(i), 40000 + k + variant), format!("{}:5432", ip(s)), 2)
        })
        .collect();
    json!({"listening": listening, "established": established})
}

fn interfaces(i: usize) -> Value {
    json!({"interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1500,
        "operstate": "up", "speed_mbps": null, "duplex": null,
        "addresses": [{"address": ip(i), "prefix_len": 16}]}], "default_gateways": []})
}

fn rec(node: NodeId, name: &str, payload: &Value, t: u64) -> DiscoveryRecord {
    let payload = payload.to_string();
    DiscoveryRecord {
        node,
        name: name.into(),
        hash: format!("{t}-{}", payload.len()),
        payload,
        collected_at: t,
        updated_at: t,
    }
}

fn main() {
    println!("hosts  per sockets apply (mean)  per mounts apply (mean)  edges");
    for hosts in [100usize, 1000, 5000] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("bench.db")).unwrap();
        let ids: Vec<NodeId> = (0..hosts).map(|_| NodeId::new_v7()).collect();
        let changes: Vec<Change> =
            ids.iter().enumerate().map(|(i, id)| Change::Node(node(*id, i))).collect();
        let mut discovery = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            discovery.push(rec(*id, "interfaces", &interfaces(i), 1));
            discovery.push(rec(*id, "sockets", &sockets(i, 0), 1));
        }
        store.apply(&changes, &[], &InboxProgress { discovery, ..Default::default() }).unwrap();
        let edges = store.all_dependencies().unwrap().len();

        let target = hosts / 2;
        let mut time = |name: &str, payload: &dyn Fn(usize) -> Value| {
            let start = Instant::now();
            for r in 0..ROUNDS {
                let d = rec(ids[target], name, &payload(r), 10 + r as u64);
                store
                    .apply(&[], &[], &InboxProgress { discovery: vec![d], ..Default::default() })
                    .unwrap();
            }
            start.elapsed() / ROUNDS as u32
        };
        let sockets_t = time("sockets", &|r| sockets(target, 1 + r % 2));
        let mounts_t = time("mounts", &|r| json!({"mounts": [{"device": format!("d{r}")}]}));
        println!("{hosts:>5}  {sockets_t:>25.2?}  {mounts_t:>23.2?}  {edges}");
    }
}
