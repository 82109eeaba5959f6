//! Issue 17 item 4, Prometheus service discovery, end to end with real Debian peers (needs
//! root, as in CI):
//!
//! ```text
//!   [cma] br0 10.81.0.1 ── veth ── eth0 10.81.0.11 [h1]
//!          cma (API with a token),                  prometheus-node-exporter on :9100,
//!          prometheus (http_sd_configs → the CMA)   nanoprobe
//! ```
//!
//! The nanoprobe's `sockets` discovery finds the node exporter listening; the CMA's
//! `/api/v1/export/prometheus-sd` lists it (refused without the token); a real `prometheus`
//! whose only scrape job is `http_sd_configs` with the CMA's URL and the token in its
//! `authorization` block (1 s refresh and scrape) scrapes it: its targets API lists the target
//! `up` at the host's address with the labels host, node, exporter, os and subnet.

use std::process::Command;
use std::time::Duration;

mod netns;
use netns::{Lab, have, ip, wait_for, write};

const CMA_IP: &str = "10.81.0.1";
const H1_IP: &str = "10.81.0.11";
const TOKEN: &str = "prometheus-sd-test-token";

/// `GET url` from inside namespace `ns` (Python's urllib, a listed test dependency): status
/// and body.
fn http_get(ns: &str, url: &str, token: Option<&str>) -> Result<(u16, String), String> {
    const SCRIPT: &str = "import sys,urllib.request,urllib.error\n\
        req=urllib.request.Request(sys.argv[1])\n\
        if len(sys.argv)>2: req.add_header('Authorization','Bearer '+sys.argv[2])\n\
        try:\n  r=urllib.request.urlopen(req,timeout=5); code=r.status; body=r.read()\n\
        except urllib.error.HTTPError as e:\n  code=e.code; body=e.read()\n\
        print(code); sys.stdout.write(body.decode())\n";
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "python3", "-c", SCRIPT, url]);
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text.split_once('\n').ok_or_else(|| format!("no status: {text}"))?;
    Ok((code.trim().parse().map_err(|_| format!("status {code:?}"))?, body.to_owned()))
}

#[test]
fn netns_prometheus_scrapes_the_node_exporter_discovery_found_through_http_sd() {
    if !nix::unistd::geteuid().is_root() {
        assim_util::testing::skip("needs root for network namespaces (CI runs as root)");
        return;
    }
    for (cmd, pkg) in [
        ("prometheus", "prometheus"),
        ("prometheus-node-exporter", "prometheus-node-exporter"),
        ("python3", "python3"),
    ] {
        assert!(have(cmd), "{cmd} is missing: run scripts/install-deps (Debian package {pkg})");
    }
    let mut lab = Lab::new();
    let cma_ns = lab.add_ns("cma");
    let h1 = lab.add_ns("h1");
    ip(&["-n", &cma_ns, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &cma_ns, "addr", "add", &format!("{CMA_IP}/24"), "dev", "br0"]);
    ip(&["-n", &cma_ns, "link", "set", "br0", "up"]);
    ip(&[
        "link", "add", "eth0", "netns", &h1, "type", "veth", "peer", "name", "p1", "netns", &cma_ns,
    ]);
    ip(&["-n", &cma_ns, "link", "set", "p1", "master", "br0", "up"]);
    ip(&["-n", &h1, "addr", "add", &format!("{H1_IP}/24"), "dev", "eth0"]);
    ip(&["-n", &h1, "link", "set", "eth0", "up"]);
    let dir = lab.dir.clone();

    // The exporter, listening on every address of h1 (as the Debian service does).
    lab.spawn(
        "node-exporter",
        &h1,
        &["prometheus-node-exporter", "--web.listen-address=:9100"],
        false,
    );

    // The CMA, whose API needs the token for reads; sockets discovery every 2 s.
    let api = "127.0.0.1:1985";
    let cma_listen = format!("{CMA_IP}:1984");
    lab.spawn(
        "cma",
        &cma_ns,
        &[
            env!("CARGO_BIN_EXE_assim"),
            "cma",
            "--listen",
            &cma_listen,
            "--api",
            api,
            "--api-token",
            TOKEN,
            "--data-dir",
            dir.join("cma").to_str().unwrap(),
            "--open-enrollment",
            "--discovery",
            "sockets=2s",
        ],
        false,
    );
    let sd_url = format!("http://{api}/api/v1/export/prometheus-sd");
    wait_for(&lab, "the CMA's API", Duration::from_secs(20), || {
        http_get(&cma_ns, &format!("http://{api}/healthz"), None).map(|_| serde_json::Value::Null)
    });
    lab.spawn(
        "h1",
        &h1,
        &[
            env!("CARGO_BIN_EXE_assim"),
            "nanoprobe",
            "--cma",
            &cma_listen,
            "--listen",
            &format!("{H1_IP}:1990"),
            "--data-dir",
            dir.join("h1").to_str().unwrap(),
            "--hostname",
            "h1",
            "--trust-on-first-use",
        ],
        false,
    );

    // The CMA lists the exporter discovery found, and only with the token.
    let target = format!("{H1_IP}:9100");
    let groups = wait_for(
        &lab,
        "the node exporter in the http_sd document",
        Duration::from_secs(60),
        || {
            let (code, body) = http_get(&cma_ns, &sd_url, Some(TOKEN))?;
            let v: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
            let found = v.as_array().is_some_and(|l| {
                l.iter().any(|g| {
                    g["targets"][0] == target.as_str() && g["labels"]["exporter"] == "node"
                })
            });
            if found { Ok(v) } else { Err(format!("{code} {body}")) }
        },
    );
    let g = groups.as_array().unwrap().iter().find(|g| g["targets"][0] == target.as_str()).unwrap();
    assert_eq!(g["labels"]["host"], "h1", "{g}");
    assert_eq!(g["labels"]["subnet"], "10.81.0.0/24", "{g}");
    let (code, _) = http_get(&cma_ns, &sd_url, None).unwrap();
    assert_eq!(code, 401, "the document needs the token like every read");

    // A real Prometheus with the CMA as its only source of targets.
    let token_file = dir.join("token");
    write(&token_file, TOKEN);
    let config = dir.join("prometheus.yml");
    write(
        &config,
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: assim\n    http_sd_configs:\n      - url: {sd_url}\n        \
             refresh_interval: 1s\n        authorization:\n          type: Bearer\n          \
             credentials_file: {}\n",
            token_file.display()
        ),
    );
    lab.spawn(
        "prometheus",
        &cma_ns,
        &[
            "prometheus",
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
        false,
    );
    let t =
        wait_for(&lab, "Prometheus scraping the node exporter", Duration::from_secs(60), || {
            let (code, body) =
                http_get(&cma_ns, "http://127.0.0.1:9090/api/v1/targets?state=active", None)?;
            let v: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
            let up = v["data"]["activeTargets"].as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["labels"]["instance"] == target.as_str() && t["health"] == "up")
                    .cloned()
            });
            up.ok_or(format!("{code} {body}"))
        });
    let labels = &t["labels"];
    assert_eq!(labels["job"], "assim", "{t}");
    assert_eq!(labels["host"], "h1", "{t}");
    assert_eq!(labels["exporter"], "node", "{t}");
    assert_eq!(labels["subnet"], "10.81.0.0/24", "{t}");
    assert!(labels["node"].as_str().is_some_and(|n| n.len() == 36), "{t}");
    assert!(labels["os"].as_str().is_some_and(|o| !o.is_empty()), "{t}");
    assert_eq!(t["scrapeUrl"], format!("http://{target}/metrics"), "{t}");
}
