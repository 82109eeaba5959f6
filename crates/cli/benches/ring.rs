//! Ring benchmark with real processes: N nanoprobes (default 20) on loopback with the default
//! timing (1 s / 3 s / 5 s). Prints the CMA's received packets per node per second in steady
//! state, then kills nodes one at a time and prints crash → `host.down` latency.
//!
//! Run: `cargo bench -p assim --bench ring` (env: ASSIM_BENCH_NODES, ASSIM_BENCH_KILLS,
//! ASSIM_BENCH_STEADY_SECS).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assim::cluster::{Cluster, ClusterSpec};
use assim_cma::EventKind;
use common::{datagrams_received, env_or};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes = env_or("ASSIM_BENCH_NODES", 20usize);
    let kills = env_or("ASSIM_BENCH_KILLS", 5).min(nodes.saturating_sub(3));
    let steady = env_or("ASSIM_BENCH_STEADY_SECS", 20) as u64;
    let spec = ClusterSpec {
        name_prefix: "b".into(),
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), nodes)
    };
    let (interval, warn, dead) = (spec.interval, spec.warn, spec.dead);
    println!(
        "ring benchmark: {nodes} nanoprobes, heartbeat {interval:?} / warn {warn:?} / dead \
         {dead:?}, {kills} crashes"
    );
    let mut c = Cluster::new(spec, false).expect("start the CMA");
    let t = Instant::now();
    c.start_all().expect("start nanoprobes");
    c.wait_ring(Duration::from_secs(60)).expect("ring");
    println!("ring formed in {:.2} s", t.elapsed().as_secs_f64());

    // Let registration traffic settle, then measure the quiet.
    std::thread::sleep(Duration::from_secs(3));
    let (r0, t0) = (datagrams_received(&c), Instant::now());
    std::thread::sleep(Duration::from_secs(steady));
    let (r1, dt) = (datagrams_received(&c), t0.elapsed().as_secs_f64());
    let per_node = (r1 - r0) as f64 / nodes as f64 / dt;
    println!(
        "steady state: CMA received {} datagrams in {dt:.1} s from {nodes} nodes = {per_node:.4} packets/node/s",
        r1 - r0
    );

    let mut latencies = Vec::new();
    for k in 0..kills {
        let i = k * (nodes / kills.max(1));
        let name = c.nodes[i].name.clone();
        let since = c.last_event_id().expect("events");
        let killed_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        c.kill_node(i).expect("kill");
        let e = c
            .wait_event(since, Duration::from_secs(30), "host.down", |e| {
                e.kind == EventKind::HostDown && e.hostname == name
            })
            .expect("host.down");
        let ms = (e.time.0.saturating_sub(killed_us)) as f64 / 1000.0;
        println!("  crash of {name}: host.down after {ms:.0} ms");
        latencies.push(ms);
        c.wait_ring(Duration::from_secs(30)).expect("ring heals");
    }
    if !latencies.is_empty() {
        latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = latencies[latencies.len() / 2];
        println!(
            "crash -> host.down: min {:.0} ms, median {med:.0} ms, max {:.0} ms over {} crashes (dead time {} ms)",
            latencies[0],
            latencies[latencies.len() - 1],
            latencies.len(),
            dead.as_millis()
        );
    }
}
