//! The quick start's main job: `assim demo` runs to the end and exits 0.

#[test]
fn demo_runs_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["demo", "--nodes", "5"])
        .output()
        .expect("run assim demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "assim demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "The ring is formed",
        "host.suspect",
        "host.down",
        "host.left",
        "host.up",
        "All of it happened as expected",
    ] {
        assert!(stdout.contains(needle), "demo output lacks {needle:?}:\n{stdout}");
    }
}

/// `assim demo --cluster` (issue 14): PostgreSQL, three NATS servers, two engines; the active
/// one and a nanoprobe are killed together, then a NATS server; every report is applied once.
#[test]
fn demo_cluster_takes_over_and_applies_every_report_once() {
    if !std::path::Path::new(assim_util::testing::Postgres::BIN).join("postgres").exists()
        || assim_util::testing::Nats::program().is_none()
    {
        assim_util::testing::skip(
            "PostgreSQL 15 or nats-server is not installed (scripts/install-deps installs them)",
        );
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["demo", "--cluster", "--nodes", "5"])
        .output()
        .expect("run assim demo --cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "assim demo --cluster failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Engine B started: standby",
        "engine B holds the lease",
        "host.down node3, from engine B",
        "reports are applied again",
        "applied exactly once",
        "All of it happened as expected",
    ] {
        assert!(stdout.contains(needle), "demo output lacks {needle:?}:\n{stdout}");
    }
}

/// `assim demo --serve` keeps the cluster running after the narration, prints the web page's
/// address, serves it, and stops cleanly on Ctrl-C (SIGINT).
#[test]
fn demo_serve_prints_the_page_and_stops_on_ctrl_c() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["demo", "--nodes", "4", "--serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run assim demo --serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let url = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no web page address within 120 s:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.split("Web page: ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        seen.push(line);
    };
    let page = ureq::get(&url).call().expect("the page answers").into_string().unwrap();
    assert!(page.contains("<h1>Problems</h1>"), "{page}");
    // Still serving a moment later: the cluster was not torn down after the narration.
    std::thread::sleep(Duration::from_secs(1));
    let hosts = ureq::get(&format!("{url}hosts")).call().expect("still serving");
    assert_eq!(hosts.status(), 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let stop = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < stop, "assim demo --serve did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    assert!(ureq::get(&url).call().is_err(), "the CMA is gone after Ctrl-C");
}
