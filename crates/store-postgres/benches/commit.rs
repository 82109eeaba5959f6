//! Engine batch commits per second: the SQLite store (WAL, `synchronous=FULL`) against the
//! PostgreSQL store (a throwaway local cluster, default durability: `fsync=on`,
//! `synchronous_commit=on`), same batches, same disk (the temp dir).
//!
//! A batch is what the engine commits after one turn: `size` node records, the counters, `size`
//! events and the inbox progress (`size` nodes' applied records and the position) — one
//! transaction, one durable commit.
//!
//! ```text
//! cargo bench -p assim-store-postgres --profile test
//! ```

use std::time::{Duration, Instant};

use assim_cma::{Change, Event, EventKind, NodeRecord, NodeState};
use assim_store::{EngineStore, InboxProgress};
use assim_util::testing::Postgres;
use assim_wire::{NodeId, Timestamp};

fn node(n: u32, t: u64) -> NodeRecord {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    NodeRecord {
        id: NodeId(id),
        hostname: format!("host{n:05}"),
        version: "bench".into(),
        listen_addr: "10.0.0.1:1984".parse().unwrap(),
        public_key: [7; 32],
        addresses: vec!["10.0.0.1".into()],
        state: if t.is_multiple_of(2) { NodeState::Up } else { NodeState::Suspect },
        since: Timestamp(t),
        registered_at: Timestamp(1),
        peer_epoch: t,
        peers: vec![],
    }
}

/// Commits `batches` batches of `size`; returns (commits/s, the time taken).
fn run(
    store: &mut dyn EngineStore,
    batches: u64,
    size: u32,
    next_event: &mut u64,
) -> (f64, Duration) {
    let start = Instant::now();
    for b in 0..batches {
        let mut changes: Vec<Change> =
            (0..size).map(|i| Change::Node(node((b as u32 * 7 + i) % 1000, b))).collect();
        let mut events = Vec::with_capacity(size as usize);
        let mut progress = InboxProgress { position: Some(*next_event), ..Default::default() };
        for i in 0..size {
            let n = node((b as u32 * 7 + i) % 1000, b);
            events.push(Event {
                id: *next_event,
                time: Timestamp(*next_event),
                kind: EventKind::HostUp,
                host: Some(n.id),
                hostname: n.hostname.clone(),
                tags: [("host".to_string(), n.hostname.clone())].into(),
                text: format!("{} is up", n.hostname),
                severity: EventKind::HostUp.default_severity(),
                body: None,
            });
            progress.applied.insert(n.id, (*next_event, 1));
            *next_event += 1;
        }
        changes.push(Change::Counters { next_epoch: b + 1, next_event_id: *next_event });
        store.apply(&changes, &events, &progress).expect("commit");
    }
    let took = start.elapsed();
    (batches as f64 / took.as_secs_f64(), took)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = assim_store_sqlite::Store::open(&dir.path().join("cma.sqlite")).unwrap();
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("bench");
    let mut postgres = assim_store_postgres::Store::open(&pg.conninfo("bench")).unwrap();
    pg.create_database("bench_fenced");
    let mut fenced = assim_store_postgres::Store::open(&pg.conninfo("bench_fenced")).unwrap();
    fenced.acquire_lease("bench", Duration::from_secs(3600)).unwrap();
    println!("engine batch commits (one durable transaction each), {} batches per row", BATCHES);
    println!("{:<28} {:>6} {:>12} {:>14}", "store", "size", "commits/s", "records/s");
    let (mut e1, mut e2, mut e3) = (1, 1, 1);
    for size in [1u32, 10, 100] {
        let rows: [(&str, &mut dyn EngineStore, &mut u64); 3] = [
            ("sqlite (WAL, FULL)", &mut sqlite, &mut e1),
            ("postgres (fsync, sync commit)", &mut postgres, &mut e2),
            ("postgres + fencing term", &mut fenced, &mut e3),
        ];
        for (name, store, next) in rows {
            // Warm up (statement caches, the first pages), then measure.
            run(store, 20, size, next);
            let (per_s, _) = run(store, BATCHES, size, next);
            println!("{name:<28} {size:>6} {per_s:>12.0} {:>14.0}", per_s * f64::from(size));
        }
    }
}

const BATCHES: u64 = 300;
