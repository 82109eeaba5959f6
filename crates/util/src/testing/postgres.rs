//! [`Postgres`]: a throwaway PostgreSQL cluster for tests, started by the test itself.
//!
//! `initdb` makes a cluster in a fresh directory under the temp dir; `postgres` serves it on a
//! Unix socket in that directory only (no TCP: `listen_addresses = ''`), on a free port number
//! (the port names the socket file). PostgreSQL refuses to run as root, and tests run as root in
//! CI, so under root both run as `nobody` (through `setpriv`) and the directory is chowned to
//! it. The directory is mode 0700, so with `trust` authentication only its owner and root can
//! connect. Dropping the value (a panic included) stops the server (fast shutdown, then
//! SIGKILL) and deletes the directory; so does the end of the test process in any other way
//! (SIGKILL from a runner's timeout), through a pipe the server's supervising `sh` watches — only
//! the directory is then left in the temp dir.
//!
//! Debian's `postgresql-15` puts the programs in [`Postgres::BIN`] (`scripts/install-deps`
//! installs it); without them [`super::skip`] applies (a failure under CI). The system's own
//! cluster and service are never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A PostgreSQL server for one test: its own cluster, socket and superuser (`assim`).
#[derive(Debug)]
pub struct Postgres {
    /// The supervising sh (see [`SUPERVISE`]).
    child: Child,
    /// The write end of the sh's stdin; closing it stops the server.
    lifeline: Option<std::process::ChildStdin>,
    dir: PathBuf,
    /// The port number (the socket is `DIR/.s.PGSQL.PORT`).
    pub port: u16,
}

impl Postgres {
    /// Where Debian's `postgresql-15` installs `initdb`, `postgres` and `pg_isready`.
    pub const BIN: &'static str = "/usr/lib/postgresql/15/bin";
    /// The superuser `initdb` creates.
    pub const USER: &'static str = "assim";

    /// Makes and starts a cluster; `None` (after [`super::skip`]) when PostgreSQL is not
    /// installed. Panics when it does not start within 60 s.
    pub fn start() -> Option<Postgres> {
        let bin = Path::new(Self::BIN);
        if !bin.join("initdb").exists() || !bin.join("postgres").exists() {
            super::skip(format!(
                "PostgreSQL 15 is not installed in {} (scripts/install-deps installs postgresql)",
                Self::BIN
            ));
            return None;
        }
        let dir = super::unique_temp_path("pg");
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new().mode(0o700).create(&dir).expect("postgres test directory");
        }
        let root = is_root();
        if root {
            // nobody:nogroup owns the cluster; root can still reach the socket.
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown to nobody");
        }
        let data = dir.join("data");
        let run = |program: &Path| {
            let mut c = if root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
                c.arg(program);
                c
            } else {
                Command::new(program)
            };
            // initdb and postgres refuse a working directory they cannot read.
            c.current_dir(&dir);
            c
        };
        let out = run(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", Self::USER, "--auth=trust", "--encoding=UTF8", "--locale=C"])
            .args(["--no-instructions", "--no-sync"])
            .output()
            .expect("cannot run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let (child, lifeline) = spawn(&dir, &data, port, root);
        let mut server = Postgres { child, lifeline: Some(lifeline), dir, port };
        server.wait_ready();
        Some(server)
    }

    /// Waits until the server accepts connections; panics when it exited or after 60 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited at start-up ({status}): {}", self.log());
            }
            let ready = Command::new(Path::new(Self::BIN).join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-U", Self::USER, "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: connections are closed) and waits until it is gone;
    /// the cluster stays. [`Postgres::start_again`] serves it again on the same socket.
    pub fn stop_server(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "postgres did not stop: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped server again on the same cluster, socket and port.
    pub fn start_again(&mut self) {
        assert!(self.lifeline.is_none(), "the server still runs");
        let (child, lifeline) = spawn(&self.dir, &self.dir.join("data"), self.port, is_root());
        self.child = child;
        self.lifeline = Some(lifeline);
        self.wait_ready();
    }

    /// The socket directory (the `host` of a connection string).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection string (libpq key-value form) for database `dbname`.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={dbname}",
            self.dir.display(),
            self.port,
            Self::USER
        )
    }

    /// A `postgres://` URL for database `dbname` over the Unix socket (what `cma --store`
    /// takes).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://{}@/{dbname}?host={}&port={}",
            Self::USER,
            self.dir.display(),
            self.port
        )
    }

    /// Creates an empty database `name` (one per test case keeps cases apart in one cluster).
    pub fn create_database(&self, name: &str) {
        let out = Command::new(Path::new(Self::BIN).join("createdb"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", Self::USER, name])
            .output()
            .expect("cannot run createdb");
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The server's process id while it runs (from `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // EOF on the supervisor's stdin: it sends SIGINT, PostgreSQL's fast shutdown (backends
        // are told to exit, then the server), and exits when the server has.
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = self.postmaster_pid() {
            // Still running after 10 s: no more waiting.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The supervisor: `$@` is the postgres command line. The server's stdin is /dev/null (an
/// asynchronous list's), its fd 3 closed; a background reader of the original stdin (fd 3)
/// sends SIGINT at EOF.
const SUPERVISE: &str =
    "exec 3<&0; \"$@\" 3<&- & pid=$!; { read -r _ <&3; kill -INT $pid; } & wait $pid";

/// Starts `postgres` on the cluster in `data` under the supervising sh ([`SUPERVISE`]);
/// returns the sh and the write end of its stdin. The server's log is appended to
/// `DIR/postgres.log`.
fn spawn(dir: &Path, data: &Path, port: u16, root: bool) -> (Child, std::process::ChildStdin) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .expect("postgres log file");
    if root {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(65534), Some(65534))
            .expect("chown the log");
    }
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh"]);
        c
    } else {
        Command::new("/bin/sh")
    };
    // postgres refuses a working directory it cannot read.
    c.current_dir(dir);
    // postgres runs under a small sh that holds the read end of a pipe whose write end only
    // this process has: when this process ends in any way (a panic, SIGKILL from a test
    // runner's timeout), the pipe reaches EOF and the sh stops the server (fast shutdown). The
    // sh exits when the server does.
    let mut child = c
        .arg("-c")
        .arg(SUPERVISE)
        .arg("assim-pg-supervisor")
        .arg(Path::new(Postgres::BIN).join("postgres"))
        .arg("-D")
        .arg(data)
        .arg("-k")
        .arg(dir)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=", "-c", "max_connections=40"])
        .args(["-c", "shared_buffers=16MB", "-c", "unix_socket_permissions=0700"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot start postgres");
    let lifeline = child.stdin.take().expect("piped stdin");
    (child, lifeline)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A TCP port number nobody listens on now (the socket file name; a TCP listener on it would
/// not conflict, but a second test cluster with the same number in another directory would
/// not either).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster starts, accepts a new database, and is gone (process and directory) after
    /// the drop.
    #[test]
    fn a_throwaway_cluster_starts_and_is_removed() {
        let Some(pg) = Postgres::start() else { return };
        pg.create_database("t1");
        let psql = Command::new(Path::new(Postgres::BIN).join("psql"))
            .args(["-X", "-A", "-t", "-c", "SELECT current_user"])
            .arg(pg.conninfo("t1"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), Postgres::USER);
        let pid = pg.postmaster_pid().expect("postgres runs");
        let dir = pg.dir.clone();
        drop(pg);
        assert!(!dir.exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "postgres {pid} still runs");
    }

    /// A stopped server starts again on the same socket with its databases.
    #[test]
    fn a_stopped_server_starts_again_with_its_databases() {
        let Some(mut pg) = Postgres::start() else { return };
        pg.create_database("kept");
        let pid = pg.postmaster_pid().expect("postgres runs");
        pg.stop_server();
        assert_eq!(pg.postmaster_pid(), None, "stopped");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "postgres {pid} still runs");
        pg.start_again();
        let psql = Command::new(Path::new(Postgres::BIN).join("psql"))
            .args(["-X", "-A", "-t", "-c", "SELECT current_database()"])
            .arg(pg.conninfo("kept"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "kept");
    }

    /// What a SIGKILLed test process does to the pipe (its write end closes) stops the server
    /// too, without the drop.
    #[test]
    fn the_server_stops_when_its_owner_is_gone() {
        let Some(mut pg) = Postgres::start() else { return };
        let pid = pg.postmaster_pid().expect("postgres runs");
        drop(pg.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "postgres {pid} outlived its owner's pipe");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
