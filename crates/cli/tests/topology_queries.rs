//! The topology queries through the real `assim` CLI and the CMA's API, against a CMA and two
//! nanoprobes on loopback: services with their processes, package search (checked against
//! `dpkg-query`), unknown-host errors, subnets, crashed vs. left hosts, and the fleet questions
//! (shared SSH keys, processes, OS and kernel, MAC vendors, reverse DNS through a real
//! `dnsmasq`, the Graphviz export through a real `dot`).
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

/// This machine's first global IPv4 address, per `ip -j addr` (the independent source).
fn global_ipv4() -> Option<String> {
    let out =
        Command::new("ip").args(["-j", "-4", "addr", "show", "scope", "global"]).output().ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .find_map(|a| a["local"].as_str().map(str::to_string))
}

#[test]
fn topology_queries_through_cli_and_api() {
    // A real DNS server naming this machine's address, for `assim addresses`.
    let ipv4 = global_ipv4();
    let hosts = ipv4.as_ref().map(|ip| format!("{ip} fleet-test.example\n")).unwrap_or_default();
    let dns = assim_util::testing::Dnsmasq::start(&hosts);
    let mut spec = spec();
    if let Some(d) = &dns {
        spec.cma_args = vec!["--dns-server".into(), d.addr.to_string()];
    }
    let mut c = Cluster::new(spec, false).unwrap();
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

    fleet_questions(&c, ipv4.as_deref(), dns.is_some());

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

/// `assim keys|processes|os|macs|addresses` and `assim export dot` on the running cluster. The
/// three nodes run on this one machine, so they present the same SSH host keys (what a cloned
/// image looks like), see the same processes and NICs, and run the same kernel.
fn fleet_questions(c: &Cluster, ipv4: Option<&str>, have_dns: bool) {
    // Keys: every host key file of this machine is one key shared by n1, n2 and n3.
    let pubs: Vec<_> = std::fs::read_dir("/etc/ssh")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    let pubs: Vec<_> =
        pubs.into_iter().filter(|p| p.to_string_lossy().ends_with("_key.pub")).collect();
    if let Some(first) = pubs.first() {
        let shared = wait_json(c, &["keys", "--shared"], "the shared host keys", |v| {
            v.as_array().unwrap().len() == pubs.len()
        });
        let keygen = Command::new("ssh-keygen").arg("-lf").arg(first).output().unwrap();
        let fp =
            String::from_utf8_lossy(&keygen.stdout).split_whitespace().nth(1).unwrap().to_string();
        let row = shared.as_array().unwrap().iter().find(|k| k["fingerprint"] == fp.as_str());
        let row = row.unwrap_or_else(|| panic!("{fp} (ssh-keygen -l) not in {shared}"));
        assert_eq!(row["hosts"], serde_json::json!(["n1", "n2", "n3"]), "{row}");
    } else {
        assim_util::testing::skip(
            "keys part: no /etc/ssh/*_key.pub (openssh-server, scripts/install-deps)",
        );
    }

    // Processes: n1's nanoprobe, found by its program, listening on n1's address.
    let pid = c.nodes[0].child.as_ref().unwrap().id();
    let listen = format!("udp {}", c.nodes[0].listen);
    let procs = wait_json(c, &["processes", "--exe", "assim"], "n1's nanoprobe process", |v| {
        v.as_array().unwrap().iter().any(|p| {
            p["pid"] == pid
                && p["listening"].as_array().unwrap().iter().any(|l| l == listen.as_str())
        })
    });
    assert!(
        procs.as_array().unwrap().iter().all(|p| p["exe"].as_str().unwrap().ends_with("assim"))
    );
    assert_eq!(assim_json(c, &["processes", "--exe", "no-such-program"]), serde_json::json!([]));

    // OS and kernel: three hosts on this machine's kernel (uname -r).
    let uname = Command::new("uname").arg("-r").output().unwrap();
    let kernel = String::from_utf8_lossy(&uname.stdout).trim().to_string();
    let os = wait_json(c, &["os", "--kernel", &kernel], "three hosts on this kernel", |v| {
        v.as_array().unwrap().len() == 3
    });
    assert!(os[0]["os"].is_string(), "{os}");
    assert_eq!(assim_json(c, &["os", "--kernel", "0.0.*"]), serde_json::json!([]));

    // MACs: this machine's NICs (sysfs, the independent source), each with a status; with a
    // vendor list no vendor matches, every registered MAC is unexpected.
    let nics: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "lo")
        .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
        .map(|m| m.trim().to_string())
        .filter(|m| m != "00:00:00:00:00:00" && m.len() == 17)
        .collect();
    let macs = wait_json(c, &["macs"], "this machine's MACs", |v| {
        nics.iter().all(|m| v.as_array().unwrap().iter().any(|r| r["mac"] == m.as_str()))
    });
    let rows = macs.as_array().unwrap();
    for r in rows {
        let known = r["status"] == "known";
        assert_eq!(known, r["vendor"].is_string(), "{r}");
    }
    let known = rows.iter().filter(|r| r["status"] == "known").count();
    let odd = assim_json(c, &["macs", "--unexpected", "--expect", "No Such Vendor*"]);
    assert_eq!(odd.as_array().unwrap().len(), known, "{odd}");
    let (ok, _, err) = assim(c, &["macs", "--json", "--expect", &"x".repeat(300)]);
    assert!(!ok && err.contains("256"), "{err}");

    // Addresses: the CMA asks the real DNS server; this machine's IPv4 has a name.
    match (ipv4, have_dns) {
        (Some(ip), true) => {
            let named = wait_json(c, &["addresses"], "the address's DNS name", |v| {
                v.as_array().unwrap().iter().any(|a| a["address"] == ip)
            });
            let row = named.as_array().unwrap().iter().find(|a| a["address"] == ip).unwrap();
            assert_eq!(row["name"], "fleet-test.example", "{row}");
            assert_eq!(row["lookup"], "ok");
            let missing = assim_json(c, &["addresses", "--no-dns"]);
            let missing = missing.as_array().unwrap();
            assert!(
                missing.iter().all(|a| a["address"] != ip && a["name"].is_null()),
                "{missing:?}"
            );
            assert_eq!(missing.len() + 1, named.as_array().unwrap().len());
        }
        _ => assim_util::testing::skip("addresses part: no global IPv4 address or no dnsmasq"),
    }

    // The Graphviz export parses in the real `dot`, with the three hosts.
    let (ok, text, err) = assim(c, &["export", "dot"]);
    assert!(ok, "{err}");
    if std::path::Path::new("/usr/bin/dot").exists() {
        let mut dot = Command::new("/usr/bin/dot")
            .arg("-Tcanon")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        dot.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = dot.wait_with_output().unwrap();
        assert!(out.status.success(), "dot refused: {text}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).matches("shape=ellipse").count(), 3);
    } else {
        assim_util::testing::skip("dot part: graphviz is not installed (scripts/install-deps)");
    }
    let (ok, one, _) = assim(c, &["export", "dot", "--host", "n1", "--depth", "1"]);
    assert!(ok && one.contains("\"host:n1\" [shape=ellipse"), "{one}");
    let (ok, _, err) = assim(c, &["export", "dot", "--host", "nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] })
        .collect()
}
