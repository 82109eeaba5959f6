//! Checks set by hand with the real CLI against a real CMA and nanoprobe: `assim check add` of a
//! built-in TCP check on a closed port gives exactly one `service.critical`; `assim check list`
//! shows it as `manual`; bad requests are refused with the reason; the check survives a CMA
//! crash (SIGKILL right after it was added) without a second event; `assim check remove` takes
//! it off the list and off the host.

use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use assim_api::{CheckListEntry, ServiceView};
use assim_cma::EventKind;

/// Runs `assim --api … ARGS`; returns (success, stdout, stderr).
fn assim(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    c.run_cli(env!("CARGO_BIN_EXE_assim"), args)
}

fn list(c: &Cluster) -> Vec<CheckListEntry> {
    let (ok, out, err) = assim(c, &["check", "list", "--host", "n1", "--json"]);
    assert!(ok, "check list failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("check list --json: {e}: {out}"))
}

fn services(c: &Cluster) -> Vec<ServiceView> {
    c.client.get_json("/api/v1/services?host=n1", "services").unwrap_or_default()
}

fn closed_port() -> u16 {
    // Bound and released at once: nothing listens there afterwards.
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn criticals(c: &Cluster, name: &str) -> usize {
    c.events_since(0)
        .unwrap()
        .iter()
        .filter(|e| {
            e.kind == EventKind::ServiceCritical
                && e.tags.get("service").map(String::as_str) == Some(name)
        })
        .count()
}

#[test]
fn a_hand_set_check_is_monitored_listed_kept_across_a_crash_and_removed() {
    let rules = tempfile::tempdir().unwrap();
    // Host-level checks would only add noise here.
    std::fs::write(
        rules.path().join("quiet.toml"),
        "[[host_check]]\nname = \"load\"\ndisabled = true\n\
         [[host_check]]\nname = \"disk:/\"\ndisabled = true\n",
    )
    .unwrap();
    let spec = ClusterSpec {
        interval: Duration::from_millis(300),
        warn: Duration::from_millis(900),
        dead: Duration::from_millis(1500),
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        cma_args: vec!["--check-rules".into(), rules.path().display().to_string()],
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1)
    };
    let mut c = Cluster::new(spec, false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let port = closed_port().to_string();

    // Refused requests name the cause and change nothing.
    let (ok, _, err) =
        assim(&c, &["check", "add", "nope", "x", "--kind", "tcp", "--", "127.0.0.1", "1"]);
    assert!(!ok);
    assert!(
        err.contains("404")
            && err.contains("no host named \"nope\"")
            && err.contains("assim status"),
        "{err}"
    );
    let (ok, _, err) =
        assim(&c, &["check", "add", "n1", "x", "--kind", "tcp", "--", "127.0.0.1", "notaport"]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("port \"notaport\" is not 1-65535"), "{err}");
    let (ok, _, err) = assim(&c, &["check", "add", "n1", "x", "--kind", "nope", "--", "a"]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("unknown kind \"nope\""), "{err}");
    let (ok, _, err) = assim(&c, &["check", "remove", "n1", "x"]);
    assert!(!ok);
    assert!(err.contains("404") && err.contains("no hand-set check named \"x\""), "{err}");
    assert!(!list(&c).iter().any(|e| e.check.name == "x"));

    // Add a TCP check on a closed port: it goes critical at once (1 attempt), one event.
    let base = c.last_event_id().unwrap();
    let (ok, out, err) = assim(
        &c,
        &[
            "check",
            "add",
            "n1",
            "closed",
            "--kind",
            "tcp",
            "--interval",
            "1s",
            "--retry-interval",
            "1s",
            "--attempts",
            "1",
            "--timeout",
            "1s",
            "--",
            "127.0.0.1",
            &port,
        ],
    );
    assert!(ok, "check add failed: {err}");
    assert!(out.contains("added closed on n1"), "{out}");
    let mine = list(&c);
    let entry = mine.iter().find(|e| e.check.name == "closed").expect("listed");
    assert_eq!(entry.source, "manual");
    assert_eq!(
        (entry.check.kind.as_str(), entry.check.argv.clone()),
        ("tcp", vec!["127.0.0.1".to_owned(), port.clone()])
    );
    let epoch = entry.epoch;
    // The table form shows the source too.
    let (ok, out, _) = assim(&c, &["check", "list"]);
    assert!(ok && out.lines().any(|l| l.contains("closed") && l.contains("manual")), "{out}");

    // A hard kill right after the add: the check was durable when the CLI got its answer.
    c.stop_cma(true).unwrap();
    c.start_cma().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let after = list(&c);
    let entry = after.iter().find(|e| e.check.name == "closed").expect("kept across the crash");
    assert_eq!((entry.source.as_str(), entry.epoch), ("manual", epoch), "same set, same epoch");

    let crit = c
        .wait_event(base, Duration::from_secs(30), "service.critical for the hand-set check", |e| {
            e.kind == EventKind::ServiceCritical
                && e.tags.get("service").map(String::as_str) == Some("closed")
        })
        .unwrap();
    assert_eq!(crit.hostname, "n1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = services(&c);
        if s.iter().any(|v| v.check == "closed" && v.state == "critical") {
            break;
        }
        assert!(Instant::now() < deadline, "the hand-set check is not critical: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // An observation window of several more runs (1 s interval): they add no event.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(criticals(&c, "closed"), 1, "one event per HARD change");

    // Remove it: gone from the list and from the services.
    let (ok, out, err) = assim(&c, &["check", "remove", "n1", "closed"]);
    assert!(ok, "check remove failed: {err}");
    assert!(out.contains("removed closed from n1"), "{out}");
    let new_epoch: u64 = out
        .trim()
        .strip_suffix(')')
        .and_then(|o| o.rsplit(' ').next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {out:?}"));
    assert!(new_epoch > epoch, "the set's epoch went up: {epoch} -> {new_epoch}");
    let removed = list(&c);
    assert!(!removed.iter().any(|e| e.check.name == "closed"), "{removed:?}");
    assert!(!services(&c).iter().any(|v| v.check == "closed"));
    // And it stays removed across a restart.
    c.stop_cma(false).unwrap();
    c.start_cma().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    assert!(!list(&c).iter().any(|e| e.check.name == "closed"));
    assert_eq!(criticals(&c, "closed"), 1);
}
