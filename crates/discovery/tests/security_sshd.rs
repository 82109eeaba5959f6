//! The `security` collector's reading of sshd's files against the real sshd: for Debian's
//! shipped `sshd_config` (`/usr/share/openssh/sshd_config`, package openssh-server) and for a
//! hardened one, every keyword the collector reports from the files equals what
//! `sshd -T -f FILE` (OpenSSH's own parser) prints — so the audit judges what sshd will run.

use std::path::Path;
use std::process::Command;

use assim_discovery::security::{SSHD_DEFAULTS, collect_security_in, parse_sshd_t};

const SHIPPED: &str = "/usr/share/openssh/sshd_config";

/// A hardened drop-in, the way operators write one.
pub const HARDENED: &str = "PermitRootLogin no\nPasswordAuthentication no\nX11Forwarding no\n\
    MaxAuthTries 3\nClientAliveInterval 300\nLoginGraceTime 60\nAllowAgentForwarding no\n\
    AllowTcpForwarding no\nKbdInteractiveAuthentication no\n";

fn root_with(config: &str, dropin: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("etc/ssh");
    std::fs::create_dir_all(ssh.join("sshd_config.d")).unwrap();
    std::fs::write(ssh.join("sshd_config"), config).unwrap();
    // The shipped file includes /etc/ssh/sshd_config.d/*.conf, which the collector resolves
    // under the root; sshd itself needs the test root's directory named.
    let for_sshd =
        config.replace("/etc/ssh/sshd_config.d", &ssh.join("sshd_config.d").display().to_string());
    std::fs::write(dir.path().join("sshd_config.for-sshd"), for_sshd).unwrap();
    if let Some(d) = dropin {
        std::fs::write(ssh.join("sshd_config.d/50-hardening.conf"), d).unwrap();
    }
    dir
}

fn sshd_t(root: &Path) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("/usr/sbin/sshd")
        .arg("-T")
        .arg("-f")
        .arg(root.join("sshd_config.for-sshd"))
        .args(["-C", "user=root,host=localhost,addr=127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sshd -T: {}", String::from_utf8_lossy(&out.stderr));
    parse_sshd_t(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn the_files_read_as_sshd_reads_them() {
    if !Path::new("/usr/sbin/sshd").exists() || !Path::new(SHIPPED).exists() {
        assim_util::testing::skip(
            "openssh-server is not installed (scripts/install-deps installs it)",
        );
        return;
    }
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    let mut results = Vec::new();
    for dropin in [None, Some(HARDENED)] {
        let root = root_with(&shipped, dropin);
        let ours = collect_security_in(root.path()).unwrap();
        assert_eq!(ours.sshd_source, "files");
        let theirs = sshd_t(root.path());
        for (k, _) in SSHD_DEFAULTS {
            assert_eq!(
                ours.sshd.get(*k).map(|v| v.to_ascii_lowercase()),
                theirs.get(*k).map(|v| v.to_ascii_lowercase()),
                "{k} (hardened: {})",
                dropin.is_some()
            );
        }
        results.push(ours.sshd);
    }
    // And the two differ where the drop-in says so.
    assert_eq!(results[0]["permitrootlogin"], "without-password");
    assert_eq!(results[1]["permitrootlogin"], "no");
    assert_eq!(results[0]["x11forwarding"], "yes");
    assert_eq!(results[1]["x11forwarding"], "no");
}
