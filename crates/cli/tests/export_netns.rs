//! Issue 17, known hosts, end to end with a real OpenSSH server (needs root, as in CI):
//!
//! ```text
//!   [cma] br0 10.79.0.1 ── veth ── eth0 10.79.0.11 [h1]
//!          cma, assim, ssh client                   sshd (its own config and host key),
//!                                                   nanoprobe (/etc/ssh = the sshd's key dir)
//! ```
//!
//! The nanoprobe runs in a private mount namespace with the sshd's key directory bound over
//! `/etc/ssh`, so its `ssh_host_keys` collector reads that sshd's keys. The test exports the
//! CMA's `ssh_known_hosts` with the real `assim export known-hosts` and runs the real `ssh`
//! (`StrictHostKeyChecking=yes`, `UserKnownHostsFile=` the export, `BatchMode=yes` with a
//! client key the sshd accepts), by name (an `/etc/hosts` bound in the client's mount
//! namespace) and by address, plain and hashed: both log in. The SSHFP export matches what
//! `ssh-keygen -r` prints for the key. Then the host key is replaced and sshd restarted: ssh
//! with the old export fails on the host key, the restarted nanoprobe's discovery makes the
//! CMA raise one critical `host.key_changed`, and a fresh export logs in again. Last, the
//! `assim export nagios|icinga2` files of the same CMA pass `nagios4 -v` and `icinga2 daemon
//! -C`, and `--reload-cmd` runs only when the file changed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod netns;
use netns::{Lab, assim_in, have, ip, query, wait_for, write};

const CMA_IP: &str = "10.79.0.1";
const H1_IP: &str = "10.79.0.11";

/// Runs a command, panicking with its output on failure.
fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ssh` from the CMA's namespace to `target` with only `known_hosts` trusted; its stdout, or
/// its stderr as the error.
fn ssh(cma_ns: &str, dir: &Path, known_hosts: &Path, target: &str) -> Result<String, String> {
    let script = format!(
        "mount --bind {hosts} /etc/hosts && exec ssh -F /dev/null -i {key} -o BatchMode=yes \
         -o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh} -o GlobalKnownHostsFile=/dev/null \
         -o ConnectTimeout=5 root@{target} echo logged-in",
        hosts = dir.join("hosts").display(),
        key = dir.join("client_key").display(),
        kh = known_hosts.display(),
    );
    let out = Command::new("ip")
        .args(["netns", "exec", cma_ns, "unshare", "-m", "sh", "-c", &script])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn netns_known_hosts_export_lets_real_ssh_in_and_a_replaced_key_is_refused_and_raised() {
    if !nix::unistd::geteuid().is_root() {
        assim_util::testing::skip("needs root for network namespaces (CI runs as root)");
        return;
    }
    for (cmd, pkg) in [
        ("/usr/sbin/sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("unshare", "util-linux"),
        ("nagios4", "nagios4-core"),
        ("icinga2", "icinga2-bin"),
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

    // The sshd: its own host key directory, config, and a client key it accepts.
    let dir = lab.dir.clone();
    let keys = dir.join("etc_ssh");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let host_key = keys.join("ssh_host_ed25519_key");
    let new_host_key = |lab: &Lab| {
        let _ = std::fs::remove_file(&host_key);
        let _ = std::fs::remove_file(host_key.with_extension("pub"));
        run(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "h1",
            "-f",
            host_key.to_str().unwrap(),
        ]);
        let _ = lab;
    };
    new_host_key(&lab);
    let client_key = dir.join("client_key");
    run(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", client_key.to_str().unwrap()]);
    std::fs::copy(client_key.with_extension("pub"), dir.join("authorized_keys")).unwrap();
    write(&dir.join("hosts"), &format!("127.0.0.1 localhost\n{H1_IP} h1\n"));
    let sshd_config = dir.join("sshd_config");
    write(
        &sshd_config,
        &format!(
            "ListenAddress {H1_IP}\nPort 22\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n",
            host_key.display(),
            dir.join("sshd.pid").display(),
            dir.join("authorized_keys").display()
        ),
    );
    let start_sshd = |lab: &mut Lab| {
        lab.spawn(
            "sshd",
            &h1,
            &["/usr/sbin/sshd", "-D", "-e", "-f", sshd_config.to_str().unwrap()],
            false,
        );
    };
    start_sshd(&mut lab);

    // CMA.
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

    // The nanoprobe, reading the sshd's keys as /etc/ssh.
    let nanoprobe = format!(
        "mount --bind {keys} /etc/ssh && exec {assim} nanoprobe --cma {cma_listen} --listen {H1_IP}:1990 \
         --data-dir {data} --hostname h1 --trust-on-first-use",
        keys = keys.display(),
        assim = env!("CARGO_BIN_EXE_assim"),
        data = dir.join("h1").display(),
    );
    let start_probe = |lab: &mut Lab| {
        lab.spawn("h1", &h1, &["unshare", "-m", "sh", "-c", &nanoprobe], false);
    };
    start_probe(&mut lab);

    let pubkey = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let blob = pubkey.split_whitespace().nth(1).unwrap().to_string();
    let export = |name: &str, hashed: bool| {
        let path = dir.join(name);
        let mut args = vec!["export", "known-hosts", "-o", path.to_str().unwrap()];
        if hashed {
            args.push("--hashed");
        }
        assim_in(&cma_ns, &api_url, &args).unwrap();
        (path.clone(), std::fs::read_to_string(&path).unwrap())
    };
    wait_for(&lab, "h1's host key in the export", Duration::from_secs(60), || {
        let (_, text) = export("known_hosts", false);
        if text.contains(&blob) { Ok(text.into()) } else { Err(text) }
    });
    let (plain, text) = export("known_hosts", false);
    assert!(text.contains(&format!("h1,{H1_IP} ssh-ed25519 {blob}")), "{text}");
    let (hashed, htext) = export("known_hosts.hashed", true);
    assert!(!htext.contains("h1,") && htext.contains("|1|"), "{htext}");

    for (file, target) in [(&plain, "h1"), (&plain, H1_IP), (&hashed, "h1"), (&hashed, H1_IP)] {
        let out = ssh(&cma_ns, &dir, file, target).unwrap_or_else(|e| {
            panic!("ssh {target} with {}: {e}\n{}", file.display(), lab.logs())
        });
        assert_eq!(out.trim(), "logged-in");
    }
    // Without the export the same ssh refuses: the file is what makes it work.
    let empty = dir.join("empty_known_hosts");
    write(&empty, "");
    let refused = ssh(&cma_ns, &dir, &empty, "h1").unwrap_err();
    assert!(refused.contains("Host key verification failed"), "{refused}");

    // SSHFP: the same records as `ssh-keygen -r` prints for the key.
    let sshfp = assim_in(&cma_ns, &api_url, &["export", "sshfp"]).unwrap();
    let expected =
        run(&["ssh-keygen", "-r", "h1", "-f", host_key.with_extension("pub").to_str().unwrap()]);
    for line in expected.lines() {
        assert!(sshfp.lines().any(|l| l == line), "{line:?} not in the SSHFP export:\n{sshfp}");
    }

    // The host key is replaced: the old export no longer lets ssh in.
    lab.kill("sshd");
    new_host_key(&lab);
    start_sshd(&mut lab);
    let changed = wait_for(&lab, "ssh refusing the replaced key", Duration::from_secs(20), || {
        match ssh(&cma_ns, &dir, &plain, "h1") {
            Ok(out) => Err(format!("ssh still logs in: {out}")),
            Err(e) if e.contains("Connection refused") => Err(e),
            Err(e) => Ok(e.into()),
        }
    });
    let changed = changed.as_str().unwrap();
    assert!(
        changed.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            && changed.contains("Host key verification failed"),
        "{changed}"
    );

    // The nanoprobe restarts (same identity): its discovery reports the new key and the CMA
    // raises host.key_changed, critical (same node id).
    lab.kill("h1");
    start_probe(&mut lab);
    let ev = wait_for(&lab, "host.key_changed", Duration::from_secs(60), || {
        let out = assim_in(
            &cma_ns,
            &api_url,
            &["events", "--json", "--filter", "type:host.key_changed"],
        )?;
        let events: Vec<serde_json::Value> =
            out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if events.is_empty() { Err("no host.key_changed yet".into()) } else { Ok(events.into()) }
    });
    let ev = ev.as_array().unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["severity"], "critical", "{ev:?}");
    assert_eq!(ev[0]["hostname"], "h1");
    assert_eq!(ev[0]["tags"]["reason"], "replaced");
    // A fresh export lets ssh in again.
    let new_blob = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let new_blob = new_blob.split_whitespace().nth(1).unwrap().to_string();
    wait_for(&lab, "the new key in the export", Duration::from_secs(30), || {
        let (_, text) = export("known_hosts.new", false);
        if text.contains(&new_blob) && !text.contains(&blob) { Ok(text.into()) } else { Err(text) }
    });
    let out = ssh(&cma_ns, &dir, &dir.join("known_hosts.new"), "h1").unwrap();
    assert_eq!(out.trim(), "logged-in");

    // The Nagios export of the same CMA through the CLI: written, the reload command run once,
    // not again while nothing changed, and Debian's nagios4 accepts it.
    let nagios_dir = dir.join("nagios");
    std::fs::create_dir_all(&nagios_dir).unwrap();
    let marker = dir.join("reloaded");
    let reload = format!("echo reload >> {}", marker.display());
    for _ in 0..2 {
        assim_in(
            &cma_ns,
            &api_url,
            &["export", "nagios", nagios_dir.to_str().unwrap(), "--reload-cmd", &reload],
        )
        .unwrap();
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "reload\n", "reloaded once");
    let cfg = std::fs::read_to_string(nagios_dir.join("assim.cfg")).unwrap();
    assert!(cfg.contains("host_name               h1\n"), "{cfg}");
    assert!(cfg.contains(&format!("address                 {H1_IP}\n")), "{cfg}");
    let d = nagios_dir.display();
    // The operator's side: Nagios wants at least one contact.
    write(
        &nagios_dir.join("contacts.cfg"),
        "define command {\n command_name notify-none\n command_line /bin/true\n}\n\
         define contact {\n contact_name ops1\n host_notifications_enabled 0\n\
         service_notifications_enabled 0\n host_notification_period assim-24x7\n\
         service_notification_period assim-24x7\n host_notification_options n\n\
         service_notification_options n\n host_notification_commands notify-none\n\
         service_notification_commands notify-none\n}\n",
    );
    write(
        &nagios_dir.join("nagios.cfg"),
        &format!(
            "cfg_file={d}/assim.cfg\ncfg_file={d}/contacts.cfg\nlog_file={d}/nagios.log\nstatus_file={d}/status.dat\n\
             object_cache_file={d}/objects.cache\nprecached_object_file={d}/objects.precache\n\
             command_file={d}/nagios.cmd\nlock_file={d}/nagios.lock\ntemp_file={d}/nagios.tmp\n\
             temp_path={d}\ncheck_result_path={d}\nnagios_user=root\nnagios_group=root\n\
             use_syslog=0\n"
        ),
    );
    let v = Command::new("nagios4").arg("-v").arg(nagios_dir.join("nagios.cfg")).output().unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(v.contains("Total Errors:   0"), "{v}");
    // And Icinga 2's.
    assim_in(&cma_ns, &api_url, &["export", "icinga2", nagios_dir.to_str().unwrap()]).unwrap();
    write(&nagios_dir.join("icinga2.conf"), "include \"assim.conf\"\n");
    let c = Command::new("icinga2")
        .args(["daemon", "-C", "-c"])
        .arg(nagios_dir.join("icinga2.conf"))
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
}
