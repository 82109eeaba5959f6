//! Automatic service monitoring with real processes: a web server started by the test is found
//! by the sockets discovery, gets its monitor from a rules directory the test writes (a real
//! `check_tcp` from Debian's monitoring-plugins), and when the test kills it exactly one
//! `service.critical` arrives (not one per check run); restarting it gives `service.ok`.
//! `assim check run` (the API route) runs the check at once on the nanoprobe. A service that
//! stopped keeps its check across a CMA restart (the memory of stopped services is stored).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use assim_api::ServiceView;
use assim_cma::EventKind;

const CHECK_TCP: &str = "/usr/lib/nagios/plugins/check_tcp";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_server(port: u16) -> Child {
    let child = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is needed for this test");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the test web server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn services(c: &Cluster) -> Vec<ServiceView> {
    c.client.get_json("/api/v1/services?host=n1", "services").unwrap_or_default()
}

#[test]
fn a_discovered_server_is_monitored_and_its_crash_is_one_event() {
    if !std::path::Path::new(CHECK_TCP).exists() {
        assim_util::testing::skip(format!("{CHECK_TCP} is not installed (scripts/install-deps)"));
        return;
    }
    let port = free_port();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("test.toml"),
        format!(
            r#"
            [[rule]]
            name = "web"
            args = "*http.server*"
            ports = [{port}]
            kind = "nagios"
            argv = ["check_tcp", "-H", "{{ip}}", "-p", "{{port}}"]
            interval = "1s"
            retry_interval = "1s"
            max_attempts = 2
            timeout = "1s"

            # Host-level checks would only add noise here.
            [[host_check]]
            name = "load"
            disabled = true
            [[host_check]]
            name = "disk:/"
            disabled = true
            "#
        ),
    )
    .unwrap();
    // The server runs before the nanoprobe, so the first sockets discovery finds it.
    let mut server = Server(start_server(port));
    let spec = ClusterSpec {
        interval: Duration::from_millis(300),
        warn: Duration::from_millis(900),
        dead: Duration::from_millis(1500),
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        cma_args: vec![
            "--check-rules".into(),
            rules.path().display().to_string(),
            "--discovery".into(),
            "sockets=2s".into(),
        ],
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1)
    };
    let mut c = Cluster::new(spec, false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let name = format!("web:{port}");

    // The monitor appears by itself, and its first result (OK) is recorded without an event.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = services(&c);
        if list.iter().any(|s| s.check == name && s.state == "ok") {
            assert_eq!(list.len(), 1, "only the rule's check: {list:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no OK monitor {name} on n1 after 60 s: {list:?}; logs in {}",
            c.dir().display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let base = c.last_event_id().unwrap();
    assert!(
        !c.events_since(0).unwrap().iter().any(|e| e.kind == EventKind::ServiceOk),
        "an initial OK raises no event"
    );

    // Run it now through the API.
    let r: serde_json::Value = c
        .client
        .post_json("/api/v1/checks/run", &serde_json::json!({"host": "n1", "check": name}), "run")
        .unwrap();
    assert_eq!(r["state"], "ok", "{r}");
    assert!(r["output"].as_str().unwrap().starts_with("TCP OK"), "{r}");
    let err = c
        .client
        .post_json::<serde_json::Value>(
            "/api/v1/checks/run",
            &serde_json::json!({"host": "n1", "check": "nope"}),
            "run",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no check named \"nope\""), "{err}");

    // Kill the server: one service.critical.
    drop(server);
    let crit = c
        .wait_event(base, Duration::from_secs(30), "service.critical", |e| {
            e.kind == EventKind::ServiceCritical && e.tags.get("service") == Some(&name)
        })
        .unwrap();
    assert_eq!(crit.hostname, "n1");
    assert_eq!(crit.tags["state"], "critical");
    // Several more check runs (1 s interval) while it stays down must add nothing.
    std::thread::sleep(Duration::from_secs(4));
    let down = services(&c);
    assert_eq!(down.iter().find(|s| s.check == name).unwrap().state, "critical");

    // Restart it: service.ok.
    server = Server(start_server(port));
    c.wait_event(crit.id, Duration::from_secs(30), "service.ok", |e| {
        e.kind == EventKind::ServiceOk && e.tags.get("service") == Some(&name)
    })
    .unwrap();
    let events = c.events_since(base).unwrap();
    let mine: Vec<&str> = events
        .iter()
        .filter(|e| e.tags.get("service") == Some(&name))
        .map(|e| e.kind.name())
        .collect();
    assert_eq!(mine, ["service.critical", "service.ok"], "one event per HARD change");

    // Stop it again and let the sockets discovery (every 2 s) store that it is gone; then
    // restart the CMA. The check of the stopped service must still be there afterwards.
    let ok = events.last().unwrap().id;
    drop(server);
    c.wait_event(ok, Duration::from_secs(30), "service.critical", |e| {
        e.kind == EventKind::ServiceCritical && e.tags.get("service") == Some(&name)
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    c.stop_cma(false).unwrap();
    c.start_cma().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    // Give the node time to send fresh discovery results (without the listener) too.
    std::thread::sleep(Duration::from_secs(5));
    let list: Vec<assim_api::CheckListEntry> =
        c.client.get_json("/api/v1/checks?host=n1", "checks").unwrap();
    let kept = list.iter().find(|e| e.check.name == name);
    assert_eq!(kept.map(|e| e.source.as_str()), Some("rule:web"), "kept after restart: {list:?}");
    assert_eq!(services(&c).iter().find(|s| s.check == name).unwrap().state, "critical");
}
