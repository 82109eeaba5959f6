//! Helpers shared by the cluster tests (`cluster_postgres.rs`, `cluster_jetstream.rs`,
//! `cluster_addrs.rs`): an engine's view, waits and signals. A second engine is
//! `assim::cluster::Cluster::spawn_engine`; a database URL `Postgres::url`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use assim::client::Client;

pub fn engine(c: &Client) -> assim_api::EngineView {
    c.status().expect("status").engine.expect("the status names the engine")
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

pub fn holder_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("engine-id")).unwrap().trim().to_owned()
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(ok.success(), "kill {sig}");
}

/// The kill schedule's random numbers: from `ASSIM_TEST_SEED`, or a fresh seed, printed so a
/// failing run can be replayed.
pub fn seeded_rng() -> rand::rngs::StdRng {
    use rand::SeedableRng as _;
    let seed: u64 = std::env::var("ASSIM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (ASSIM_TEST_SEED={seed} replays the kill schedule)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Every one of `senders` senders' `reports` reports applied exactly once: through and count
/// `reports` each in the store's applied table.
pub fn assert_applied_once(
    applied: &std::collections::BTreeMap<assim_wire::NodeId, assim_store_sqlite::Applied>,
    senders: usize,
    reports: u64,
) {
    assert_eq!(applied.len(), senders, "every sender's reports were applied");
    for (node, a) in applied {
        assert_eq!(
            (a.through, a.count),
            (reports, reports),
            "sender {node}: applied through {} in {} applications",
            a.through,
            a.count
        );
    }
}
