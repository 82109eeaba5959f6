//! Service-check benchmark with real processes: N nanoprobes (default 3), each running S checks
//! (default 100, built-in TCP connects to a listener this process holds open) every second.
//! Once every check has reported its first state, it measures the datagrams the CMA receives in
//! a window where nothing changes and prints CMA packets per monitored service per hour (the
//! target is 0: checks that keep passing cost no network traffic).
//!
//! Run: `cargo bench -p assim --bench checks` (env: ASSIM_BENCH_NODES, ASSIM_BENCH_SERVICES,
//! ASSIM_BENCH_WINDOW_SECS).

mod common;

use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use assim_api::ServiceView;
use common::{datagrams_received, env_or};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes = env_or("ASSIM_BENCH_NODES", 3);
    let per_node = env_or("ASSIM_BENCH_SERVICES", 100);
    let window = env_or("ASSIM_BENCH_WINDOW_SECS", 60) as u64;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    // Accept and drop connections so the backlog never fills.
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s)
        }
    });
    let rules = tempfile::tempdir().expect("tempdir");
    let mut text = String::from(
        "[[host_check]]\nname = \"load\"\ndisabled = true\n[[host_check]]\nname = \"disk:/\"\ndisabled = true\n",
    );
    for i in 0..per_node {
        text.push_str(&format!(
            "[[host_check]]\nname = \"svc{i}\"\nkind = \"tcp\"\nargv = [\"127.0.0.1\", \"{port}\"]\n\
             interval = \"1s\"\nretry_interval = \"1s\"\nmax_attempts = 3\ntimeout = \"1s\"\n"
        ));
    }
    std::fs::write(rules.path().join("bench.toml"), text).expect("rules");
    let spec = ClusterSpec {
        name_prefix: "c".into(),
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        cma_args: vec!["--check-rules".into(), rules.path().display().to_string()],
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), nodes)
    };
    let services = nodes * per_node;
    println!(
        "checks benchmark: {nodes} nanoprobes x {per_node} checks (tcp, every 1 s) = {services} services"
    );
    let mut c = Cluster::new(spec, false).expect("start the CMA");
    c.start_all().expect("start nanoprobes");
    c.wait_ring(Duration::from_secs(60)).expect("ring");
    let t = Instant::now();
    loop {
        let list: Vec<ServiceView> =
            c.client.get_json("/api/v1/services", "services").unwrap_or_default();
        if list.len() == services && list.iter().all(|s| s.state == "ok") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "services not all OK after 120 s");
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "every service reported its first state (OK) after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (r0, t0) = (datagrams_received(&c), Instant::now());
    std::thread::sleep(Duration::from_secs(window));
    let (r1, dt) = (datagrams_received(&c), t0.elapsed().as_secs_f64());
    let packets = r1 - r0;
    let per_service_hour = packets as f64 / services as f64 / (dt / 3600.0);
    println!(
        "quiet window: {dt:.1} s, about {:.0} check runs, CMA received {packets} datagrams \
         = {per_service_hour:.4} packets per monitored service per hour",
        services as f64 * dt
    );
}
