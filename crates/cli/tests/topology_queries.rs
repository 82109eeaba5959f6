//! The topology queries through the real `assim` CLI and the CMA's API, against a CMA and two
//! nanoprobes on loopback: services with their processes, package search (checked against
//! `dpkg-query`), unknown-host errors, subnets, and crashed vs. left hosts.
//!
//! All nanoprobes run on this one machine, so their host collectors see the same machine; the
//! assertions only use what differs per node (its own listening socket) or what every node
//! shares (packages).

use std::process::Command;
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use serde_json::Value;

fn spec() -> ClusterSpec {
    ClusterSpec {
        interval: Duration::from_millis(300),
        warn: Duration::from_millis(900),
        dead: Duration::from_millis(1500),
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 3)
    }
}

/// Runs `assim --api … ARGS`; returns (success, stdout, stderr).
fn assim(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    c.run_cli(env!("CARGO_BIN_EXE_assim"), args)
}

fn assim_json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = assim(c, &a);
    assert!(ok, "assim {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("assim {args:?}: {e}: {out}"))
}

/// Polls `assim ARGS --json` until `pred` holds.
fn wait_json(c: &Cluster, args: &[&str], what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = assim_json(c, args);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A package installed here, per dpkg-query (the independent source), with its version.
fn some_dpkg_package() -> Option<(String, String)> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n", "coreutils", "bash"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim_end().ends_with("ii")).find_map(
        |l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        },
    )
}

#[test]
fn topology_queries_through_cli_and_api() {
    let mut c = Cluster::new(spec(), false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();

    // n1's own UDP listener shows up among its services, with the nanoprobe as its process.
    let n1 = c.nodes[0].listen;
    let services = wait_json(&c, &["host", "n1", "services"], "n1's services", |v| {
        v.as_array().unwrap().iter().any(|s| {
            s["protocol"] == "udp" && s["ip"] == n1.ip().to_string() && s["port"] == n1.port()
        })
    });
    let own = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["protocol"] == "udp" && s["port"] == n1.port())
        .unwrap();
    assert!(
        // The test cluster runs the nanoprobe as `assim nanoprobe` (the multicall binary).
        own["exe"].as_str().unwrap_or("").contains(env!("CARGO_BIN_EXE_assim")),
        "the listener's process should be the nanoprobe: {own}"
    );
    assert_eq!(own["host"], "n1");
    let (ok, table, _) = assim(&c, &["host", "n1", "services"]);
    assert!(ok);
    assert!(table.starts_with("HOST"), "a table by default: {table}");
    assert!(table.contains(&n1.to_string()), "{table}");

    // Packages: every host has what dpkg-query says is installed, at that version.
    if let Some((name, version)) = some_dpkg_package() {
        let hits = wait_json(&c, &["packages", &name], "packages on all hosts", |v| {
            v.as_array().unwrap().len() == 3
        });
        for h in hits.as_array().unwrap() {
            assert_eq!(h["name"], name.as_str());
            assert_eq!(h["version"], version.as_str());
        }
        let prefix = &name[..name.len() - 1];
        let by_prefix = assim_json(&c, &["packages", "--prefix", prefix]);
        assert!(by_prefix.as_array().unwrap().iter().any(|h| h["name"] == name.as_str()));
        let re = format!("^{}$", regex_escape(&name));
        let by_regex = assim_json(&c, &["packages", "--regex", &re]);
        assert_eq!(by_regex.as_array().unwrap().len(), 3, "{by_regex}");
        let (ok, _, err) = assim(&c, &["packages", "--regex", "(unclosed"]);
        assert!(!ok && err.contains("invalid regular expression"), "{err}");
    } else {
        assim_util::testing::skip("package search part: dpkg-query not available");
    }

    // Unknown hosts and bad addresses are named, with the way out.
    let (ok, _, err) = assim(&c, &["host", "no-such-host", "deps"]);
    assert!(!ok);
    assert!(err.contains("no-such-host") && err.contains("assim status"), "{err}");
    let (ok, _, err) = assim(&c, &["find", "ip", "not-an-ip"]);
    assert!(!ok && err.contains("not an IP address"), "{err}");
    let (ok, _, err) = assim(&c, &["find", "mac", "01:02"]);
    assert!(!ok && err.contains("not a MAC address"), "{err}");

    // Crash n2, stop n3 cleanly: both are down, only n2 crashed.
    c.kill_node(1).unwrap();
    c.stop_node(2).unwrap();
    wait_json(&c, &["hosts", "--down"], "n2 and n3 down", |v| {
        let mut names: Vec<&str> =
            v.as_array().unwrap().iter().filter_map(|h| h["host"].as_str()).collect();
        names.sort();
        names == ["n2", "n3"]
    });
    let crashed = assim_json(&c, &["hosts", "--crashed"]);
    let crashed = crashed.as_array().unwrap();
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert_eq!(crashed[0]["host"], "n2");
    assert_eq!(crashed[0]["state"], "down");
    let (ok, table, _) = assim(&c, &["hosts", "--crashed"]);
    assert!(ok && table.contains("n2") && !table.contains("n3"), "{table}");

    // The history has the first reports of n1 (its packages at least).
    let hist = assim_json(&c, &["host", "n1", "history", "--limit", "100"]);
    assert!(
        hist.as_array().unwrap().iter().any(|h| h["kind"] == "service" && h["added"] != 0),
        "{hist}"
    );
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] })
        .collect()
}
