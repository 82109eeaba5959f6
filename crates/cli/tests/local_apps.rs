//! Issue 17 item 6 against real processes: a CMA and a nanoprobe on loopback, programs beating
//! through `assim app heartbeat` and the plain-text socket protocol.
//!
//! What it shows: a program's registration reaches the CMA once (the list of names, not the
//! beats), so `assim export nagios` declares its passive service `app:NAME` before any alarm;
//! while it beats, the CMA receives no datagram at all (counted from its
//! `assim_cma_datagrams_received_total` over the window); a program that stops gives
//! exactly one `service.critical` for `app:NAME` within its TTL plus one beat interval; its
//! next beat one `service.ok`; `assim app done` ends it without alarm; a registration whose
//! program died while the nanoprobe was down still alarms after the restart.
//!
//! The window is short (TTL 2 s, beats every 0.5 s, 8 s of beating) to keep the test fast. It
//! generalises because a beat is handled entirely inside the nanoprobe (no message is built
//! for it); the probe-shell test `issue_17_item_6_a_beating_program_costs_no_traffic…` runs an
//! hour of beats in virtual time with the same result.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterSpec};
use assim_api::Event;
use assim_cma::EventKind;

fn assim(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    c.run_cli(env!("CARGO_BIN_EXE_assim"), args)
}

fn datagrams_received(c: &Cluster) -> u64 {
    let m = c.client.metrics().unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("assim_cma_datagrams_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn wait_socket(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("events.sock").exists() {
        assert!(Instant::now() < deadline, "no events.sock in {}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One plain-text request on the socket; returns the answer line.
fn plain(dir: &Path, line: &str) -> String {
    let mut s = UnixStream::connect(dir.join("events.sock")).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    answer
}

fn app_events(c: &Cluster, app: &str, kind: EventKind) -> Vec<Event> {
    let service = format!("app:{app}");
    c.events_since(0)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind && e.tags.get("service") == Some(&service))
        .collect()
}

/// Waits until the CMA has received no datagram for `quiet` (the node's start-up traffic —
/// hello, discovery results, acknowledgements — is over), calling `tick` every 200 ms.
fn wait_quiet(c: &Cluster, quiet: Duration, mut tick: impl FnMut()) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = datagrams_received(c);
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        assert!(
            Instant::now() < deadline,
            "the CMA never got quiet; logs in {}",
            c.dir().display()
        );
        std::thread::sleep(Duration::from_millis(200));
        tick();
        let now = datagrams_received(c);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// A one-node cluster whose CMA configures no checks of its own (the shipped host checks and
/// rules are disabled), so the only service traffic is the programs'.
fn quiet_cluster(prefix: &str) -> (Cluster, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    let mut quiet = String::new();
    for h in ["load", "disk:/"] {
        quiet.push_str(&format!("[[host_check]]\nname = \"{h}\"\ndisabled = true\n"));
    }
    for r in ["ssh", "http", "postgres", "mysql", "redis", "smtp"] {
        quiet.push_str(&format!("[[rule]]\nname = \"{r}\"\ndisabled = true\n"));
    }
    std::fs::write(rules.path().join("quiet.toml"), quiet).unwrap();
    let c = Cluster::new(
        ClusterSpec {
            name_prefix: prefix.into(),
            cma_args: vec!["--check-rules".into(), rules.path().display().to_string()],
            ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1)
        },
        false,
    )
    .unwrap();
    (c, rules)
}

#[test]
fn issue_17_item_6_local_heartbeats_cost_nothing_and_silence_is_one_alarm() {
    let (mut c, _rules) = quiet_cluster("apps");
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let dir = c.nodes[0].data_dir.clone();
    let dir_s = dir.to_str().unwrap().to_owned();
    wait_socket(&dir);

    // Refusals name the problem and change nothing.
    let (ok, _, err) = assim(&c, &["app", "heartbeat", "a b", "--ttl", "2s", "--data-dir", &dir_s]);
    assert!(!ok && err.contains("not valid"), "{err}");
    let (ok, _, err) = assim(&c, &["app", "done", "never", "--data-dir", &dir_s]);
    assert!(!ok && err.contains("no application named"), "{err}");
    assert!(plain(&dir, "heartbeat x 0s").starts_with("error: "));

    let ttl = Duration::from_secs(2);
    let interval = Duration::from_millis(500);

    // The registration (the first beat, through the CLI) is news: the CMA hears the program's
    // name once, and `assim export nagios` declares its service `app:backup` before any alarm.
    let (ok, out, err) =
        assim(&c, &["app", "heartbeat", "backup", "--ttl", "2s", "--data-dir", &dir_s]);
    assert!(ok, "{out} {err}");
    let registered = Instant::now();
    let mut last_beat = Instant::now();
    let beat = |last: &mut Instant| {
        if last.elapsed() >= interval {
            assert_eq!(plain(&dir, "heartbeat backup 2s"), "ok\n");
            *last = Instant::now();
        }
    };
    let out_dir = tempfile::tempdir().unwrap();
    let cfg = out_dir.path().join("assim.cfg");
    loop {
        let (ok, _, err) = assim(&c, &["export", "nagios", out_dir.path().to_str().unwrap()]);
        assert!(ok, "{err}");
        let text = std::fs::read_to_string(&cfg).unwrap_or_default();
        if text.contains("service_description     app:backup\n") {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(20),
            "the export never declared app:backup:\n{text}"
        );
        beat(&mut last_beat);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The start-up traffic (and the list's delivery) settles while the program beats.
    wait_quiet(&c, Duration::from_secs(3), || beat(&mut last_beat));

    // 8 s of beats every 0.5 s (plain-text protocol): the CMA receives nothing.
    let before = datagrams_received(&c);
    let metrics_before = c.client.metrics().unwrap();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(8) {
        assert_eq!(plain(&dir, "heartbeat backup 2s"), "ok\n");
        last_beat = Instant::now();
        std::thread::sleep(interval);
    }
    let during = datagrams_received(&c) - before;
    println!(
        "while beating: the CMA received {during} datagrams in {:.1} s",
        window.elapsed().as_secs_f64()
    );
    if during != 0 {
        let after = c.client.metrics().unwrap();
        let old: std::collections::BTreeSet<&str> = metrics_before.lines().collect();
        let changed: Vec<&str> =
            after.lines().filter(|l| !l.starts_with('#') && !old.contains(l)).collect();
        let events: Vec<String> = c
            .events_since(0)
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {} {:?}", e.kind.name(), e.text, e.tags))
            .collect();
        panic!(
            "the CMA received {during} datagrams while the program beat; changed: {changed:#?}; events: {events:#?}"
        );
    }
    assert!(app_events(&c, "backup", EventKind::ServiceCritical).is_empty());
    let (ok, out, _) = assim(&c, &["app", "list", "--data-dir", &dir_s]);
    assert!(ok && out.contains("backup") && out.contains(" ok "), "{out}");

    // It stops: exactly one service.critical, within TTL + one interval of its last beat.
    let e = c
        .wait_event(
            0,
            ttl + interval + Duration::from_secs(5),
            "service.critical app:backup",
            |e| {
                e.kind == EventKind::ServiceCritical
                    && e.tags.get("service").map(String::as_str) == Some("app:backup")
            },
        )
        .unwrap();
    let took = last_beat.elapsed();
    println!(
        "service.critical {:.2} s after the last beat (TTL 2 s): {}",
        took.as_secs_f64(),
        e.text
    );
    assert!(took <= ttl + interval, "the alarm took {took:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(app_events(&c, "backup", EventKind::ServiceCritical).len(), 1);
    let (_, out, _) = assim(&c, &["app", "list", "--data-dir", &dir_s]);
    assert!(out.contains("missed"), "{out}");

    // It beats again: one service.ok. Then it finishes cleanly: nothing more.
    assert_eq!(plain(&dir, "heartbeat backup 2s"), "ok\n");
    c.wait_event(0, Duration::from_secs(10), "service.ok app:backup", |e| {
        e.kind == EventKind::ServiceOk
            && e.tags.get("service").map(String::as_str) == Some("app:backup")
    })
    .unwrap();
    let (ok, _, err) = assim(&c, &["app", "done", "backup", "--data-dir", &dir_s]);
    assert!(ok, "{err}");
    std::thread::sleep(ttl + Duration::from_secs(1));
    assert_eq!(app_events(&c, "backup", EventKind::ServiceCritical).len(), 1);
    assert_eq!(app_events(&c, "backup", EventKind::ServiceOk).len(), 1);

    // A registration survives a nanoprobe crash; its program died meanwhile: it still alarms.
    assert_eq!(plain(&dir, "heartbeat cron 2s"), "ok\n");
    c.kill_node(0).unwrap();
    c.start_node(0).unwrap();
    c.wait_event(0, Duration::from_secs(30), "service.critical app:cron", |e| {
        e.kind == EventKind::ServiceCritical
            && e.tags.get("service").map(String::as_str) == Some("app:cron")
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(app_events(&c, "cron", EventKind::ServiceCritical).len(), 1);
}

#[test]
fn issue_17_item_6_a_declared_local_check_runs_and_is_listed_with_source_local() {
    let (mut c, _rules) = quiet_cluster("lc");
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let dir = c.nodes[0].data_dir.clone();
    let dir_s = dir.to_str().unwrap().to_owned();
    wait_socket(&dir);

    // Only plugins inside the plugin directories, and only executables.
    let (ok, _, err) = assim(
        &c,
        &[
            "app",
            "check",
            "evil",
            "--interval",
            "5s",
            "--data-dir",
            &dir_s,
            "--",
            "/bin/sh",
            "-c",
            "id",
        ],
    );
    assert!(!ok && err.contains("outside the plugin directories"), "{err}");
    let (ok, _, err) = assim(
        &c,
        &["app", "check", "x", "--interval", "1s", "--data-dir", &dir_s, "--", "check_dummy", "0"],
    );
    assert!(!ok && err.contains("interval"), "{err}");

    // A check through the CLI, and one through the plain-text protocol.
    let (ok, out, err) = assim(
        &c,
        &[
            "app",
            "check",
            "queue",
            "--interval",
            "5s",
            "--attempts",
            "1",
            "--data-dir",
            &dir_s,
            "--",
            "check_dummy",
            "2",
            "queue stuck",
        ],
    );
    assert!(ok, "{out} {err}");
    assert_eq!(plain(&dir, "check fine 5s check_dummy 0 fine"), "ok\n");
    let (ok, out, _) = assim(&c, &["app", "checks", "--data-dir", &dir_s]);
    assert!(ok && out.contains("local:queue") && out.contains("local:fine"), "{out}");

    // The existing runner runs it: one service.critical for local:queue.
    let e = c
        .wait_event(0, Duration::from_secs(30), "service.critical local:queue", |e| {
            e.kind == EventKind::ServiceCritical
                && e.tags.get("service").map(String::as_str) == Some("local:queue")
        })
        .unwrap();
    assert!(e.text.contains("queue stuck"), "{}", e.text);

    // `assim check list` shows both with source `local`.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = assim(&c, &["check", "list", "--host", "lc1"]);
        assert!(ok, "{err}");
        let local: Vec<&str> = out.lines().filter(|l| l.contains(" local ")).collect();
        if local.len() == 2 && out.contains("local:queue") && out.contains("local:fine") {
            break;
        }
        assert!(Instant::now() < deadline, "check list: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Kept across a nanoprobe crash; removed on request.
    c.kill_node(0).unwrap();
    c.start_node(0).unwrap();
    wait_socket(&dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = UnixStream::connect(dir.join("events.sock")) {
            s.write_all(b"checks\n").unwrap();
            let _ = BufReader::new(&s).read_line(&mut String::new());
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, _) = assim(&c, &["app", "checks", "--data-dir", &dir_s, "--json"]);
    assert!(ok && out.contains("\"queue\"") && out.contains("\"fine\""), "{out}");
    let (ok, _, err) = assim(&c, &["app", "uncheck", "queue", "--data-dir", &dir_s]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = assim(&c, &["check", "list", "--host", "lc1"]);
        if !out.contains("local:queue") && out.contains("local:fine") {
            break;
        }
        assert!(Instant::now() < deadline, "check list after uncheck: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
