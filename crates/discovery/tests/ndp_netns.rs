//! Issue 19 item 4: the IPv6 neighbours read through rtnetlink equal what `ip -6 -j neigh`
//! shows, in a network namespace of our own (root) with a veth pair and neighbour entries in
//! several NUD states. The namespace is deleted even when the test fails.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use assim_util::testing::skip;

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ndp_matches_ip_6_neigh_in_a_namespace() {
    if !nix::unistd::geteuid().is_root() {
        skip("network namespaces need root");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        skip("iproute2 (`ip`) is not installed");
        return;
    }
    let ns = Netns(format!("assim-ndp-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    let n = |args: &[&str]| {
        let mut a = vec!["-n", ns.0.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    };
    n(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    n(&["link", "set", "v0", "up"]);
    n(&["link", "set", "v1", "up"]);
    n(&["-6", "addr", "add", "2001:db8::1/64", "dev", "v0", "nodad"]);
    let entries = [
        ("2001:db8::10", "02:00:00:00:10:01", "permanent", "v0"),
        ("2001:db8::11", "02:00:00:00:10:02", "stale", "v0"),
        ("fe80::12", "02:00:00:00:10:03", "reachable", "v1"),
    ];
    for (addr, mac, nud, dev) in entries {
        n(&["-6", "neigh", "add", addr, "lladdr", mac, "dev", dev, "nud", nud]);
    }
    // Neither shows a noarp entry (like the kernel's multicast mappings, ff02::16 on every
    // link), nor one without a link-layer address.
    n(&[
        "-6",
        "neigh",
        "add",
        "2001:db8::13",
        "lladdr",
        "02:00:00:00:10:04",
        "dev",
        "v1",
        "nud",
        "noarp",
    ]);
    let _ = Command::new("ip")
        .args(["-n", &ns.0, "-6", "neigh", "add", "2001:db8::14", "dev", "v0", "nud", "incomplete"])
        .output();

    let name = ns.0.clone();
    let ours = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).expect("namespace file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        assim_discovery::ndp::collect_ndp().expect("netlink dump")
    })
    .join()
    .expect("the namespace thread");
    let ours: BTreeSet<(IpAddr, String, String)> =
        ours.into_iter().map(|n| (n.ip, n.interface, n.mac)).collect();

    let json: serde_json::Value = serde_json::from_str(&n(&["-6", "-j", "neigh"])).unwrap();
    let theirs: BTreeSet<(IpAddr, String, String)> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let states: Vec<&str> = e["state"]
                .as_array()
                .map(|s| s.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            !states.iter().any(|s| matches!(*s, "INCOMPLETE" | "FAILED" | "NONE"))
        })
        .filter_map(|e| {
            Some((
                e["dst"].as_str()?.parse().ok()?,
                e["dev"].as_str()?.to_string(),
                e["lladdr"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(ours, theirs, "ours vs `ip -6 -j neigh`: {json}");
    assert_eq!(ours.len(), entries.len(), "{ours:?}");
}
