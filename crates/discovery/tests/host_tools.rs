//! Compares the collectors with independent tools on this host (`ip`, `ss`,
//! `dpkg-query`, `uname`). A test whose tool is absent prints a SKIP line and
//! passes, except under CI (`assim_util::testing::skip`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::Command;

use assim_discovery::interfaces::collect_interfaces;
use assim_discovery::neighbours::collect_neighbours;
use assim_discovery::os::{collect_os, parse_os_release};
use assim_discovery::packages::{PackageManager, collect_packages};
use assim_discovery::sockets::{Protocol, collect_sockets};
use assim_discovery::{Collector, content_hash};
use assim_util::testing::skip;
use serde_json::Value;

/// Runs a tool; `None` (with a SKIP line) if it is not installed or fails.
fn tool(program: &str, args: &[&str]) -> Option<String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            skip(format!(
                "`{program} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            None
        }
        Err(e) => {
            skip(format!("`{program}` not available: {e}"));
            None
        }
    }
}

#[test]
fn interfaces_match_ip_addr() {
    let Some(json) = tool("ip", &["-j", "addr"]) else {
        return;
    };
    let ip: Vec<Value> = serde_json::from_str(&json).unwrap();
    let ours = collect_interfaces().unwrap();
    for link in &ip {
        let name = link["ifname"].as_str().unwrap();
        let Some(mine) = ours.interfaces.iter().find(|i| i.name == name) else {
            panic!("interface {name} from `ip -j addr` missing: {ours:#?}");
        };
        assert_eq!(mine.mtu, link["mtu"].as_u64().map(|m| m as u32), "{name} MTU");
        let link_type = link["link_type"].as_str().unwrap_or("");
        if matches!(link_type, "ether" | "loopback")
            && let Some(mac) = link["address"].as_str()
        {
            assert_eq!(mine.mac.as_deref(), Some(mac), "{name} MAC");
        }
        let theirs: BTreeSet<(IpAddr, u8)> = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["local"].as_str().unwrap().parse().unwrap(),
                    a["prefixlen"].as_u64().unwrap() as u8,
                )
            })
            .collect();
        let mine: BTreeSet<(IpAddr, u8)> =
            mine.addresses.iter().map(|a| (a.address, a.prefix_len)).collect();
        assert_eq!(mine, theirs, "{name} addresses");
    }
}

#[test]
fn default_gateway_matches_ip_route() {
    let Some(json) = tool("ip", &["-j", "route", "show", "default"]) else {
        return;
    };
    let routes: Vec<Value> = serde_json::from_str(&json).unwrap();
    let ours = collect_interfaces().unwrap();
    for r in routes {
        let (Some(gw), Some(dev)) = (r["gateway"].as_str(), r["dev"].as_str()) else {
            continue;
        };
        let gw: IpAddr = gw.parse().unwrap();
        assert!(
            ours.default_gateways.iter().any(|g| g.gateway == gw && g.interface == dev),
            "default gateway {gw} via {dev} missing: {:?}",
            ours.default_gateways
        );
    }
}

/// Complete IPv4 entries of `ip -j neigh`.
fn ip_neigh_v4() -> Option<BTreeSet<(IpAddr, String, String)>> {
    let json = tool("ip", &["-j", "-4", "neigh"])?;
    let entries: Vec<Value> = serde_json::from_str(&json).unwrap();
    Some(
        entries
            .iter()
            .filter(|e| {
                let states: Vec<&str> =
                    e["state"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                !states.iter().any(|s| matches!(*s, "FAILED" | "INCOMPLETE"))
            })
            .filter_map(|e| {
                Some((
                    e["dst"].as_str()?.parse().ok()?,
                    e["dev"].as_str()?.to_string(),
                    e["lladdr"].as_str()?.to_ascii_lowercase(),
                ))
            })
            .collect(),
    )
}

#[test]
fn neighbours_match_ip_neigh() {
    let Some(before) = ip_neigh_v4() else {
        return;
    };
    let ours: BTreeSet<(IpAddr, String, String)> = collect_neighbours()
        .unwrap()
        .neighbours
        .into_iter()
        .map(|n| (n.ip, n.interface, n.mac))
        .collect();
    let after = ip_neigh_v4().unwrap_or_default();
    // Churn: only entries `ip` showed both before and after must be ours.
    for entry in before.intersection(&after) {
        assert!(ours.contains(entry), "{entry:?} missing from {ours:?}");
    }
}

/// Listening TCP ports per `ss -tlnH` (the `-p` columns are not needed).
fn ss_listening_ports() -> Option<BTreeSet<u16>> {
    let out = tool("ss", &["-tlnpH"])?;
    Some(
        out.lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|local| local.rsplit_once(':')?.1.parse().ok())
            .collect(),
    )
}

#[test]
fn listening_sockets_match_ss_and_own_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).unwrap();
    let (mut server_side, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();

    let ss_before = ss_listening_ports();
    let ours = collect_sockets().unwrap();
    let ss_after = ss_listening_ports();

    // Our own listener: this process, this executable.
    let mine = ours
        .listening
        .iter()
        .find(|s| s.protocol == Protocol::Tcp && s.local == addr)
        .unwrap_or_else(|| panic!("own listener {addr} missing"));
    let owner = mine.owner.as_ref().expect("own listener has an owner");
    assert_eq!(owner.pid, std::process::id());
    let exe = std::env::current_exe().unwrap();
    assert_eq!(owner.exe.as_deref(), Some(exe.to_str().unwrap()));
    assert!(!owner.cmdline.is_empty());

    // Our own connection, both ends, owned by us.
    for (local, remote) in [(client_addr, addr), (addr, client_addr)] {
        let conn = ours
            .established
            .iter()
            .find(|s| s.local == local && s.remote == remote)
            .unwrap_or_else(|| panic!("connection {local} -> {remote} missing"));
        assert_eq!(conn.owner.as_ref().map(|o| o.pid), Some(std::process::id()));
    }

    if let (Some(before), Some(after)) = (ss_before, ss_after) {
        let ours: BTreeSet<u16> = ours
            .listening
            .iter()
            .filter(|s| s.protocol == Protocol::Tcp)
            .map(|s| s.local.port())
            .collect();
        assert!(before.contains(&addr.port()), "ss does not see {addr}");
        for port in before.intersection(&after) {
            assert!(ours.contains(port), "ss port {port} missing from {ours:?}");
        }
    }

    // Keep the connection alive until here.
    server_side.write_all(b"x").unwrap();
    let mut buf = [0u8; 1];
    (&client).read_exact(&mut buf).unwrap();
}

#[test]
fn packages_match_dpkg_query() {
    let Some(out) =
        tool("dpkg-query", &["-W", "-f", "${db:Status-Status} ${Package} ${Version}\\n"])
    else {
        return;
    };
    let theirs: BTreeSet<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "installed").then_some(())?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect();
    let ours: BTreeSet<(String, String)> = collect_packages()
        .unwrap()
        .packages
        .into_iter()
        .filter(|p| p.manager == PackageManager::Dpkg)
        .map(|p| (p.name, p.version))
        .collect();
    assert!(!theirs.is_empty(), "dpkg-query listed no installed package");
    assert_eq!(ours, theirs);
}

#[test]
fn os_matches_uname_and_os_release() {
    let os = collect_os().unwrap();
    if let Some(release) = tool("uname", &["-r"]) {
        assert_eq!(os.kernel_release, release.trim());
    }
    if let Some(machine) = tool("uname", &["-m"]) {
        assert_eq!(os.machine, machine.trim());
    }
    match std::fs::read_to_string("/etc/os-release") {
        Ok(text) => {
            let expected = parse_os_release(&text);
            assert_eq!(os.os_release, expected);
            assert!(os.os_release.contains_key("ID"));
        }
        Err(e) => skip(format!("/etc/os-release unreadable: {e}")),
    }
    assert!(!os.hostname.is_empty());
    assert!(!os.virtualisation.is_empty());
}

#[test]
fn every_collector_runs_and_hash_is_stable() {
    for c in Collector::ALL {
        let d = c.collect().unwrap_or_else(|e| panic!("{}: {e}", c.name()));
        assert_eq!(d.name, c.name());
        if c == Collector::Sockets {
            // Hashed over its stable part only (issue 16, item 13).
            let s: assim_discovery::sockets::Sockets =
                serde_json::from_value(d.payload.clone()).unwrap();
            assert_eq!(d.hash, content_hash(&s.stable_view()));
        } else {
            assert_eq!(d.hash, content_hash(&d.payload));
        }
        if matches!(c, Collector::Os | Collector::Cpu | Collector::Memory | Collector::Mounts) {
            assert_eq!(c.collect().unwrap().hash, d.hash, "{} unstable", c.name());
        }
    }
}
