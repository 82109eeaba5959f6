//! How a test gives up when this host lacks something it needs (root, a tool, a peer server,
//! fixture files): [`skip`] prints a `SKIP:` line and lets the test pass on a developer's
//! machine, but fails it in CI, where `scripts/install-deps` has installed every peer and the
//! tests run as root, so a skip there means a check silently stopped running.
//!
//! [`Dnsmasq`] is a real DNS server for the tests that need one; [`Postgres`] a throwaway
//! PostgreSQL cluster; [`Nats`] throwaway `nats-server`s with JetStream.
//!
//! CI is recognised by the `CI` environment variable, as CI services set it: any value except
//! empty, `0` and `false` counts.

mod nats;
mod postgres;

pub use nats::Nats;
pub use postgres::Postgres;

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Whether the tests run under CI (`CI` set, and not to empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Gives up on (part of) a test because of `reason`: prints `SKIP: reason` and returns, or
/// panics under CI. The caller returns after it.
///
/// ```no_run
/// # fn have_nagios() -> bool { false }
/// if !have_nagios() {
///     assim_util::testing::skip("nagios4 is not installed (scripts/install-deps installs it)");
///     return;
/// }
/// ```
#[track_caller]
pub fn skip(reason: impl Display) {
    if in_ci() {
        panic!(
            "a test would be skipped under CI: {reason}. \
             Install what it needs (scripts/install-deps) and run as root; CI must not skip"
        );
    }
    println!("SKIP: {reason}");
}

/// A path under the temp dir unique to this process and moment: `TEMP/assim-{what}-PID-NANOS`
/// (not created).
pub fn unique_temp_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "assim-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ))
}

/// The shared L2 capture fixtures (`shared/fixtures/l2`, beside the checkout, where the
/// checkout is nested in worktrees too): `$ASSIM_L2_FIXTURES` if set, else the first
/// `shared/fixtures/l2` in `start` or one of its ancestors. `None` when there is none; the caller
/// then [`skip`]s.
pub fn l2_fixtures(start: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ASSIM_L2_FIXTURES") {
        return Some(PathBuf::from(dir));
    }
    start.ancestors().map(|a| a.join("shared/fixtures/l2")).find(|d| d.is_dir())
}

/// A real DNS server for tests: Debian's `dnsmasq` on a free loopback UDP port, answering from
/// a hosts file only (forward and reverse) and NXDOMAIN for every other reverse name. Killed
/// when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    child: std::process::Child,
    /// Where it answers.
    pub addr: std::net::SocketAddr,
    _dir: std::path::PathBuf,
}

impl Dnsmasq {
    /// Where Debian installs it (package `dnsmasq-base`).
    pub const PROGRAM: &'static str = "/usr/sbin/dnsmasq";

    /// Starts it with `hosts` (lines of `ADDRESS NAME`); `None` (after [`skip`]) when dnsmasq
    /// is not installed. Panics when it does not start within 10 s.
    pub fn start(hosts: &str) -> Option<Dnsmasq> {
        use std::net::UdpSocket;
        if !Path::new(Self::PROGRAM).exists() {
            skip("dnsmasq is not installed (scripts/install-deps installs dnsmasq-base)");
            return None;
        }
        let dir = unique_temp_path("dnsmasq");
        std::fs::create_dir_all(&dir).expect("dnsmasq test directory");
        let file = dir.join("hosts");
        std::fs::write(&file, hosts).expect("dnsmasq hosts file");
        let user = std::process::Command::new("id").arg("-un").output().expect("id -un");
        let user = String::from_utf8_lossy(&user.stdout).trim().to_owned();
        // The port is free for UDP when chosen, but dnsmasq binds TCP on it too, which another
        // process may hold: then it exits at once (status 2) and another port is tried.
        for _ in 0..5 {
            let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new(Self::PROGRAM)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                ])
                .arg(format!("--addn-hosts={}", file.display()))
                .args(["--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file="])
                .args(["--local=/in-addr.arpa/", "--local=/ip6.arpa/"])
                .arg(format!("--port={port}"))
                .arg(format!("--user={user}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("cannot start dnsmasq");
            let mut child = child;
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            // Ready once it holds the port.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut exited = None;
            while UdpSocket::bind(addr).is_ok() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "dnsmasq did not bind {addr}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            match exited {
                None => return Some(Dnsmasq { child, addr, _dir: dir }),
                Some(status) if status.code() == Some(2) => continue,
                Some(status) => panic!("dnsmasq exited at start-up: {status}"),
            }
        }
        panic!("dnsmasq exited at start-up five times (a port in use each time?)");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test here that reads the real environment: it agrees with itself either way.
    #[test]
    fn skip_fails_exactly_under_ci() {
        let r = std::panic::catch_unwind(|| skip("nothing"));
        assert_eq!(r.is_err(), in_ci());
    }
}
