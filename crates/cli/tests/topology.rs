//! End to end with network namespaces (needs root, as in CI): the CMA's topology graph built
//! from what real nanoprobes discover.
//!
//! ```text
//!   [sw]  lldpd -I swp1 (LLDP + CDP, tx every 1 s)
//!     swp1 ─── veth ─── lldp0  [h1]  nanoprobe, python3 client ──┐
//!                        eth0 ─┐                                  │ TCP
//!   [cma] br0 10.77.0.1 ───────┤ veth                             │
//!          cma, assim (API)    └── eth0  [h2]  nanoprobe, python3 -m http.server 8080 (0.0.0.0)
//! ```
//!
//! The lldpd end is a direct veth peer of h1's `lldp0`, because Linux bridges do not forward
//! LLDP's 01:80:c2:00:00:0e. The test asks the CMA through the real `assim` CLI (run inside the
//! CMA's namespace) until (a) h1's `lldp0` is wired to the lldpd chassis (its system name, its
//! chassis MAC) on port `swp1`, by LLDP and by CDP, and (b) the edge h1 → h2:8080 exists.
//!
//! Every namespace has a name unique to this run and is deleted on drop, panics included
//! (`netns::Lab`, shared with `switch_lab.rs`).

use std::io::{BufRead as _, BufReader};
use std::time::Duration;

mod netns;
use netns::{Lab, have, ip, mac_of, query, wait_for, write};

const CMA_IP: &str = "10.77.0.1";
const H1_IP: &str = "10.77.0.11";
const H2_IP: &str = "10.77.0.12";
const HTTP_PORT: u16 = 8080;

#[test]
fn netns_lldp_wiring_and_dependency_edge() {
    if !nix::unistd::geteuid().is_root() {
        assim_util::testing::skip("needs root for network namespaces (CI runs as root)");
        return;
    }
    for (cmd, pkg) in [("lldpd", "lldpd"), ("python3", "python3")] {
        assert!(have(cmd), "{cmd} is missing: run scripts/install-deps (Debian package {pkg})");
    }
    let mut lab = Lab::new();
    let cma_ns = lab.add_ns("cma");
    let h1 = lab.add_ns("h1");
    let h2 = lab.add_ns("h2");
    let sw = lab.add_ns("sw");

    // The CMA's bridge and the two hosts on it.
    ip(&["-n", &cma_ns, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &cma_ns, "addr", "add", &format!("{CMA_IP}/24"), "dev", "br0"]);
    ip(&["-n", &cma_ns, "link", "set", "br0", "up"]);
    for (ns, port, addr) in [(&h1, "p1", H1_IP), (&h2, "p2", H2_IP)] {
        ip(&[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns",
            &cma_ns,
        ]);
        ip(&["-n", &cma_ns, "link", "set", port, "master", "br0", "up"]);
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }
    // The "switch": lldpd on swp1, a direct peer of h1's lldp0.
    ip(&[
        "link", "add", "lldp0", "netns", &h1, "type", "veth", "peer", "name", "swp1", "netns", &sw,
    ]);
    ip(&["-n", &h1, "link", "set", "lldp0", "up"]);
    ip(&["-n", &sw, "link", "set", "swp1", "up"]);
    let switch_name = format!("{}-switch", lab.tag);
    let chassis_mac = mac_of(&sw, "swp1");
    let h1_lldp_mac = mac_of(&h1, "lldp0");

    // CMA.
    let dir = lab.dir.clone();
    let api = "127.0.0.1:1985";
    let api_url = format!("http://{api}");
    let cma_listen = format!("{CMA_IP}:1984");
    lab.spawn(
        "cma",
        &cma_ns.clone(),
        &[
            env!("CARGO_BIN_EXE_assim"),
            "cma",
            "--listen",
            &cma_listen,
            "--api",
            api,
            "--data-dir",
            dir.join("cma").to_str().unwrap(),
            "--open-enrollment",
        ],
        false,
    );
    wait_for(&lab, "the CMA's API", Duration::from_secs(20), || {
        query(&cma_ns, &api_url, &["status"])
    });

    // Server on h2 (wildcard listener), client on h1 holding one connection open.
    lab.spawn(
        "http-server",
        &h2.clone(),
        &["python3", "-m", "http.server", &HTTP_PORT.to_string(), "--bind", "0.0.0.0"],
        false,
    );
    let client_py = format!(
        "import socket, time\n\
         for _ in range(200):\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(('{H2_IP}', {HTTP_PORT}), timeout=1)\n\
         \x20       break\n\
         \x20   except OSError:\n\
         \x20       time.sleep(0.1)\n\
         else:\n\
         \x20   raise SystemExit('cannot connect')\n\
         print('connected', flush=True)\n\
         time.sleep(3600)\n"
    );
    let client_script = dir.join("client.py");
    write(&client_script, &client_py);
    let client =
        lab.spawn("client", &h1.clone(), &["python3", client_script.to_str().unwrap()], true);
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected", "the client could not connect:\n{}", lab.logs());

    // lldpd: own control socket and pid file, LLDP and CDP every second, port id = ifname.
    let conf = dir.join("lldpd.conf");
    write(
        &conf,
        &format!(
            "configure lldp tx-interval 1\nconfigure system hostname {switch_name}\n\
             configure lldp portidsubtype ifname\n"
        ),
    );
    let (sock, pid) = (dir.join("lldpd.sock"), dir.join("lldpd.pid"));
    lab.spawn(
        "lldpd",
        &sw.clone(),
        &[
            "lldpd",
            "-d",
            // -cc forces CDPv1; lldpd then sends LLDP only as a fallback when no forced
            // protocol sent anything, so -l forces LLDP as well.
            "-l",
            "-cc",
            "-I",
            "swp1",
            "-u",
            sock.to_str().unwrap(),
            "-p",
            pid.to_str().unwrap(),
            "-O",
            conf.to_str().unwrap(),
        ],
        false,
    );

    // The nanoprobes (discovery runs at start, after the connection exists).
    for (ns, name, addr) in [(&h1, "h1", H1_IP), (&h2, "h2", H2_IP)] {
        let listen = format!("{addr}:1990");
        let data = dir.join(name);
        lab.spawn(
            name,
            &ns.clone(),
            &[
                env!("CARGO_BIN_EXE_assim"),
                "nanoprobe",
                "--cma",
                &cma_listen,
                "--listen",
                &listen,
                "--data-dir",
                data.to_str().unwrap(),
                "--hostname",
                name,
                "--trust-on-first-use",
            ],
            false,
        );
    }

    // (b) The dependency edge h1 → h2:8080.
    let deps = wait_for(&lab, "the edge h1 -> h2:8080", Duration::from_secs(60), || {
        let v = query(&cma_ns, &api_url, &["host", "h1", "deps"])?;
        let found = v
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d["server_host"] == "h2" && d["port"] == HTTP_PORT));
        if found { Ok(v) } else { Err(format!("h1's dependencies: {v}")) }
    });
    let edge = deps.as_array().unwrap().iter().find(|d| d["server_host"] == "h2").unwrap();
    assert_eq!(edge["client_host"], "h1");
    assert_eq!(edge["server_ip"], H2_IP);
    assert_eq!(edge["service_ip"], "0.0.0.0", "the server listens on the wildcard: {edge}");
    assert!(edge["client_exe"].as_str().unwrap_or("").contains("python"), "{edge}");
    assert!(edge["server_exe"].as_str().unwrap_or("").contains("python"), "{edge}");
    let rdeps = query(&cma_ns, &api_url, &["host", "h2", "rdeps"]).unwrap();
    assert!(
        rdeps
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["client_host"] == "h1" && d["port"] == HTTP_PORT),
        "h2's dependents: {rdeps}"
    );
    let services = query(&cma_ns, &api_url, &["host", "h2", "services"]).unwrap();
    let http = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["port"] == HTTP_PORT && s["protocol"] == "tcp")
        .unwrap_or_else(|| panic!("no :8080 among h2's services: {services}"));
    assert_eq!(http["client_hosts"], 1);

    // (a) h1's lldp0 wired to the lldpd chassis on port swp1, by LLDP and by CDP.
    let ports = wait_for(&lab, "h1's switch ports (LLDP and CDP)", Duration::from_secs(90), || {
        let v = query(&cma_ns, &api_url, &["host", "h1", "ports"])?;
        let protocols: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["protocol"].as_str()).collect())
            .unwrap_or_default();
        if protocols.contains(&"lldp") && protocols.contains(&"cdp") {
            Ok(v)
        } else {
            Err(format!("h1's ports: {v}"))
        }
    });
    for p in ports.as_array().unwrap() {
        assert_eq!(p["host"], "h1");
        assert_eq!(p["nic"], "lldp0", "{p}");
        assert_eq!(p["switch_name"], switch_name.as_str(), "{p}");
        assert_eq!(p["port_id"], "swp1", "{p}");
        assert_eq!(p["mac"], h1_lldp_mac.as_str(), "{p}");
    }
    let lldp = ports.as_array().unwrap().iter().find(|p| p["protocol"] == "lldp").unwrap();
    assert_eq!(lldp["chassis_id"], chassis_mac.as_str(), "LLDP chassis id is swp1's MAC: {lldp}");
    // The same through `assim ports` for all hosts, and the switch found by its MAC.
    let all = query(&cma_ns, &api_url, &["ports"]).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2, "only h1 hears a switch: {all}");
    let by_mac = query(&cma_ns, &api_url, &["find", "mac", &chassis_mac]).unwrap();
    assert!(
        by_mac
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["how"] == "switch" && m["detail"] == switch_name.as_str()),
        "{by_mac}"
    );
}
