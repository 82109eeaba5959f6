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
