//! The ring with real processes on loopback: a CMA and six nanoprobes.
//!
//! SIGKILL one nanoprobe → exactly one `host.down`, for it; SIGTERM another → `host.left` and no
//! `host.down`; the CMA killed and restarted mid-way → ring and node states intact; the crashed
//! node restarted → `host.up` and back in the ring.

use std::time::Duration;

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use assim_api::StatusView;
use assim_cma::EventKind;

fn spec(nodes: usize, enrollment: ClusterEnrollment) -> ClusterSpec {
    ClusterSpec {
        interval: Duration::from_millis(300),
        warn: Duration::from_millis(900),
        dead: Duration::from_millis(1500),
        enrollment,
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), nodes)
    }
}

fn state_of<'a>(s: &'a StatusView, host: &str) -> (&'a str, Vec<String>) {
    let n = s
        .nodes
        .iter()
        .find(|n| n.hostname == host)
        .unwrap_or_else(|| panic!("{host} not in status"));
    let mut nb = n.neighbours.clone();
    nb.sort();
    (n.state.as_str(), nb)
}

#[test]
fn crash_leave_cma_restart_and_rejoin() {
    let mut c = Cluster::new(spec(6, ClusterEnrollment::TrustOnFirstUse), false).unwrap();
    c.start_all().unwrap();
    let formed = c.wait_ring(Duration::from_secs(30)).unwrap();
    for n in &formed.nodes {
        assert_eq!(n.neighbours.len(), 2, "{} has neighbours {:?}", n.hostname, n.neighbours);
        assert!(!n.neighbours.contains(&n.hostname));
    }
    let start = c.last_event_id().unwrap();

    // Crash n2.
    c.kill_node(1).unwrap();
    c.wait_event(start, Duration::from_secs(20), "host.down n2", |e| {
        e.kind == EventKind::HostDown && e.hostname == "n2"
    })
    .unwrap();
    let healed = c
        .wait_status(Duration::from_secs(10), "ring of 5", |s| {
            s.nodes
                .iter()
                .filter(|n| n.state == "up")
                .all(|n| n.neighbours.len() == 2 && !n.neighbours.contains(&"n2".to_string()))
        })
        .unwrap();
    assert_eq!(state_of(&healed, "n2").0, "down");

    // Graceful leave of n4.
    let before_leave = c.last_event_id().unwrap();
    c.stop_node(3).unwrap();
    c.wait_event(before_leave, Duration::from_secs(10), "host.left n4", |e| {
        e.kind == EventKind::HostLeft && e.hostname == "n4"
    })
    .unwrap();
    let settled = c
        .wait_status(Duration::from_secs(10), "ring of 4", |s| {
            s.nodes.iter().filter(|n| n.state == "up").count() == 4
                && s.nodes.iter().filter(|n| n.state == "up").all(|n| n.neighbours.len() == 2)
        })
        .unwrap();

    // CMA crash and restart: state survives.
    c.stop_cma(true).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.start_cma().unwrap();
    let after = c.client.status().unwrap();
    for n in &settled.nodes {
        assert_eq!(
            state_of(&after, &n.hostname),
            state_of(&settled, &n.hostname),
            "{} changed across a CMA restart",
            n.hostname
        );
    }
    // ... and the ring keeps working after the restart: a second crash is still detected.
    let before_second = c.last_event_id().unwrap();
    c.kill_node(5).unwrap();
    c.wait_event(before_second, Duration::from_secs(20), "host.down n6 after CMA restart", |e| {
        e.kind == EventKind::HostDown && e.hostname == "n6"
    })
    .unwrap();

    // n2 comes back.
    let before_back = c.last_event_id().unwrap();
    c.start_node(1).unwrap();
    c.wait_event(before_back, Duration::from_secs(20), "host.up n2", |e| {
        e.kind == EventKind::HostUp && e.hostname == "n2"
    })
    .unwrap();
    let back = c
        .wait_status(Duration::from_secs(20), "n2 back in the ring", |s| {
            s.nodes.iter().filter(|n| n.state == "up").count() == 4
                && s.nodes.iter().filter(|n| n.state == "up").all(|n| n.neighbours.len() == 2)
                && s.nodes.iter().any(|n| n.hostname == "n2" && n.state == "up")
        })
        .unwrap();
    assert_eq!(state_of(&back, "n4").0, "left");

    // Exactly one host.down per crash, none for the node that left, none for survivors.
    let all = c.events_since(start).unwrap();
    let downs: Vec<&str> =
        all.iter().filter(|e| e.kind == EventKind::HostDown).map(|e| e.hostname.as_str()).collect();
    assert_eq!(downs, vec!["n2", "n6"], "host.down events: {downs:?}");
    assert_eq!(all.iter().filter(|e| e.kind == EventKind::HostLeft).count(), 1);
    // Event ids strictly increase with no gap (restart included).
    for w in all.windows(2) {
        assert_eq!(w[1].id, w[0].id + 1, "event ids must be consecutive");
    }
}

#[test]
fn restart_faster_than_dead_time_raises_no_alarm() {
    let mut c = Cluster::new(spec(4, ClusterEnrollment::Token), false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let start = c.last_event_id().unwrap();
    c.kill_node(0).unwrap();
    c.start_node(0).unwrap();
    // Give the neighbours well over the dead time to (wrongly) report it.
    std::thread::sleep(Duration::from_millis(3000));
    c.wait_ring(Duration::from_secs(10)).unwrap();
    let all = c.events_since(start).unwrap();
    assert!(!all.iter().any(|e| e.kind == EventKind::HostDown), "unexpected host.down: {all:?}");
}

#[test]
fn enrollment_is_enforced() {
    let c = Cluster::new(spec(1, ClusterEnrollment::Token), false).unwrap();
    // No token and no trust-on-first-use: the nanoprobe refuses to start and says what to do.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assim"))
        .args([
            "nanoprobe",
            "--cma",
            &c.cma_listen.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(c.dir.join("untrusted"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token"), "stderr: {err}");

    // Trust-on-first-use against a CMA that requires tokens: the CMA refuses the node.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_assim"))
        .args([
            "nanoprobe",
            "--cma",
            &c.cma_listen.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--trust-on-first-use",
            "--hostname",
            "intruder",
            "--data-dir",
        ])
        .arg(c.dir.join("intruder"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = c.client.metrics().unwrap();
        if m.lines().any(|l| {
            l.starts_with("assim_cma_rejected_total{reason=\"enrollment\"}") && !l.ends_with(" 0")
        }) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the CMA never refused the node:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(c.client.status().unwrap().nodes.iter().all(|n| n.hostname != "intruder"));
}

#[test]
fn metrics_pass_promtool() {
    let c = Cluster::new(spec(3, ClusterEnrollment::TrustOnFirstUse), false).unwrap();
    let mut c = c;
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let text = c.client.metrics().unwrap();
    assert!(text.contains("assim_cma_nodes{state=\"up\"} 3"), "{text}");
    assert!(text.contains("assim_cma_datagrams_received_total"));
    // The inbox's fsyncs are counted and timed (the time was always 0 for a while after the
    // one-engine rework, and the ingest bench printed "0% of the run in fsync").
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value("assim_cma_inbox_syncs_total") > 0.0, "{text}");
    assert!(value("assim_cma_inbox_sync_seconds_total") > 0.0, "{text}");
    if std::process::Command::new("promtool").arg("--version").output().is_err() {
        assim_util::testing::skip(
            "promtool check: promtool is not installed (scripts/install-deps installs the prometheus package)",
        );
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let report =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}

#[test]
fn discovery_results_reach_the_cma() {
    let mut c = Cluster::new(spec(1, ClusterEnrollment::TrustOnFirstUse), false).unwrap();
    c.start_all().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let list = loop {
        let list = c.client.discovery("n1").unwrap_or_default();
        if ["interfaces", "os", "sockets", "packages"]
            .iter()
            .all(|n| list.iter().any(|d| d.name == *n))
        {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "discovery did not arrive: {list:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let interfaces = &list.iter().find(|d| d.name == "interfaces").unwrap().payload;
    assert!(interfaces.to_string().contains("\"lo\""), "loopback missing: {interfaces}");
    let os = &list.iter().find(|d| d.name == "os").unwrap().payload;
    let kernel = std::process::Command::new("uname").arg("-r").output().unwrap();
    let kernel = String::from_utf8_lossy(&kernel.stdout).trim().to_string();
    assert!(os.to_string().contains(&kernel), "kernel {kernel} not in {os}");
    // An unknown host is a clear 404.
    let err = c.client.discovery("no-such-host").unwrap_err().to_string();
    assert!(err.contains("no host named"), "{err}");
}
