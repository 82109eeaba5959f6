//! Quiet-minute benchmark: a CMA and N nanoprobes (default 5) with discovery on, on loopback.
//! Waits until every node's first discovery results are stored, then counts what the CMA
//! receives over a quiet minute: datagrams, bytes and discovery results, per node per minute.
//! An unchanged host should send no discovery at all after its first report.
//!
//! Run: `cargo bench -p assim --bench quiet` (env: ASSIM_BENCH_NODES, ASSIM_BENCH_QUIET_SECS).

mod common;

use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterSpec};
use common::{env_or, metric};

/// (datagrams received, bytes received, discovery results stored).
fn counters(c: &Cluster) -> (u64, u64, u64) {
    let m = c.client.metrics().expect("metrics");
    let find = |name: &str| metric(&m, name) as u64;
    (
        find("assim_cma_datagrams_received_total"),
        find("assim_cma_received_bytes_total"),
        find("assim_cma_messages_stored_total{kind=\"discovery_result\"}"),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes = env_or("ASSIM_BENCH_NODES", 5) as usize;
    let quiet = env_or("ASSIM_BENCH_QUIET_SECS", 60);
    let spec = ClusterSpec {
        name_prefix: "q".into(),
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), nodes)
    };
    println!("quiet-minute benchmark: {nodes} nanoprobes with discovery on, {quiet} s measured");
    let mut c = Cluster::new(spec, false).expect("start the CMA");
    c.start_all().expect("start nanoprobes");
    c.wait_ring(Duration::from_secs(60)).expect("ring");

    // The first results of the collectors that run at start (all built-in ones).
    let t = Instant::now();
    let wanted = ["interfaces", "neighbours", "sockets", "os", "packages", "ssh_host_keys"];
    for n in &c.nodes {
        loop {
            let names: Vec<String> = c
                .client
                .discovery(&n.name)
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.name)
                .collect();
            if wanted.iter().all(|w| names.iter().any(|n| n == w)) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{}: only {names:?} after 60 s", n.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("first discovery results from every node after {:.1} s", t.elapsed().as_secs_f64());
    // Let acknowledgements and the last first-round results drain.
    std::thread::sleep(Duration::from_secs(5));

    let (d0, b0, r0) = counters(&c);
    let m0 = c.client.metrics().expect("metrics");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(quiet));
    let (d1, b1, r1) = counters(&c);
    let m1 = c.client.metrics().expect("metrics");
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let per = |x: u64| x as f64 / nodes as f64 / minutes;
    println!(
        "quiet minute: CMA received {} datagrams ({} bytes) and {} discovery results from {nodes} nodes in {:.1} s",
        d1 - d0,
        b1 - b0,
        r1 - r0,
        minutes * 60.0
    );
    println!(
        "per node per minute: {:.2} datagrams total, {:.0} bytes, {:.2} discovery results",
        per(d1 - d0),
        per(b1 - b0),
        per(r1 - r0)
    );
    // Which CMA counters moved, to tell what the datagrams were.
    let value = |m: &str, key: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    for line in m1.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, v1)) = line.rsplit_once(' ') else { continue };
        let v1: f64 = v1.parse().unwrap_or(0.0);
        let v0 = value(&m0, &format!("{key} "));
        if key.contains("_total") && v1 != v0 {
            println!("  {key}: +{}", v1 - v0);
        }
    }
    for n in &c.nodes {
        let changed: Vec<String> = c
            .client
            .discovery(&n.name)
            .unwrap_or_default()
            .into_iter()
            .filter(|d| {
                d.updated_at / 1_000_000
                    >= (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                        .saturating_sub(quiet + 1))
            })
            .map(|d| d.name)
            .collect();
        if !changed.is_empty() {
            println!("  {} sent during the quiet minute: {}", n.name, changed.join(", "));
        }
    }
}
