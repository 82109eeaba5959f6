//! The passive LLDP/CDP listener against a real peer: Debian's `lldpd` in one network namespace
//! sends LLDP and CDPv2 on a veth; `assim decode-l2 --listen` in the other namespace must report
//! both neighbours with lldpd's system name and port (the veth's name), exactly as the
//! nanoprobe's `l2neighbors` collector would. Needs root (namespaces, AF_PACKET) and lldpd
//! (`scripts/install-deps`).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out =
        Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("{args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces joined by a veth pair; removed (with everything in them) on drop.
struct Netns {
    a: String,
    b: String,
    children: Vec<Child>,
    /// lldpd's config, control socket and pid file.
    dir: std::path::PathBuf,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.a]);
        let _ = sh(&["ip", "netns", "del", &self.b]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mac_of(ns: &str, iface: &str) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(&sh(&["ip", "-n", ns, "-j", "link", "show", iface])?)?;
    Ok(v[0]["address"].as_str().context("no address")?.to_string())
}

#[test]
fn lldpd_neighbours_are_seen_across_a_veth() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        assim_util::testing::skip("needs root for network namespaces and AF_PACKET");
        return Ok(());
    }
    let lldpd = ["/usr/sbin/lldpd", "/usr/bin/lldpd"].into_iter().find(|p| Path::new(p).exists());
    let Some(lldpd) = lldpd else {
        bail!("lldpd is not installed: run scripts/install-deps (Debian package lldpd)");
    };
    let id = std::process::id();
    let (va, vb) = (format!("asl{id}a"), format!("asl{id}b"));
    let mut ns = Netns {
        a: format!("assim-l2-{id}-sw"),
        b: format!("assim-l2-{id}-host"),
        children: vec![],
        dir: std::env::temp_dir().join(format!("assim-l2-netns-{id}")),
    };
    sh(&["ip", "netns", "add", &ns.a])?;
    sh(&["ip", "netns", "add", &ns.b])?;
    sh(&[
        "ip", "-n", &ns.a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &ns.b,
    ])?;
    sh(&["ip", "-n", &ns.a, "link", "set", &va, "up"])?;
    sh(&["ip", "-n", &ns.b, "link", "set", &vb, "up"])?;
    let host_mac = mac_of(&ns.b, &vb)?;

    // The listener first, so lldpd's first PDUs are not missed.
    let mut listener = in_ns(&ns.b, env!("CARGO_BIN_EXE_assim"))
        .args(["decode-l2", "--listen", &vb, "--count", "1000", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = listener.stdout.take().context("stdout")?;
    ns.children.push(listener);

    let dir = ns.dir.clone();
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("lldpd.conf");
    std::fs::write(
        &conf,
        "configure system hostname assim-test-switch\n\
         configure lldp tx-interval 1\n\
         configure lldp portidsubtype ifname\n",
    )?;
    let ctl = dir.join("lldpd.ctl");
    let pid = dir.join("lldpd.pid");
    let lldpd = in_ns(&ns.a, lldpd)
        // -d: foreground; -l: LLDP forced (otherwise lldpd sends LLDP only while it sends
        // nothing else); -ccccc: CDPv2 forced, CDPv1 off; its own socket and pid file.
        .args(["-d", "-l", "-ccccc", "-I", &va])
        .arg("-u")
        .arg(&ctl)
        .arg("-p")
        .arg(&pid)
        .arg("-O")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    ns.children.push(lldpd);

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(45);
    let (mut lldp, mut cdp) = (None, None);
    while lldp.is_none() || cdp.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => bail!(
                "within 45 s the listener saw LLDP: {}, CDP: {}",
                lldp.is_some(),
                cdp.is_some()
            ),
        };
        let v: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
        match v["protocol"].as_str() {
            Some("lldp") => lldp = Some(v["neighbor"].clone()),
            Some("cdp") => cdp = Some(v["neighbor"].clone()),
            _ => {}
        }
    }
    let (lldp, cdp) = (lldp.unwrap(), cdp.unwrap());
    let switch_mac = mac_of(&ns.a, &va)?;
    for n in [&lldp, &cdp] {
        assert_eq!(n["interface"], vb.as_str(), "{n}");
        assert_eq!(n["mac"], host_mac.as_str(), "the local NIC's MAC: {n}");
        assert_eq!(n["source_mac"], switch_mac.as_str(), "{n}");
    }
    assert_eq!(lldp["system_name"], "assim-test-switch", "{lldp}");
    assert_eq!(lldp["port_id"], va.as_str(), "{lldp}");
    assert_eq!(lldp["chassis_id"], switch_mac.as_str(), "lldpd's chassis id is its MAC: {lldp}");
    assert_eq!(cdp["chassis_id"], "assim-test-switch", "{cdp}");
    assert_eq!(cdp["port_id"], va.as_str(), "{cdp}");
    assert!(cdp["platform"].as_str().is_some_and(|p| !p.is_empty()), "{cdp}");
    Ok(())
}

/// `ip netns exec NS PROGRAM`: add the program's arguments to the result.
fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}
