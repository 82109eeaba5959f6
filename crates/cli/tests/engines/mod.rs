//! Helpers shared by the cluster tests (`cluster_postgres.rs`, `cluster_jetstream.rs`): the
//! PostgreSQL URL of a throwaway cluster, a second `cma` engine beside a [`Cluster`]'s, waits
//! and signals.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assim::client::Client;
use assim::cluster::Cluster;
use assim_util::testing::Postgres;

/// A `postgres://` URL for database `db` over the cluster's Unix socket.
pub fn url(pg: &Postgres, db: &str) -> String {
    format!(
        "postgres://{}@/{db}?host={}&port={}",
        Postgres::USER,
        pg.socket_dir().display(),
        pg.port
    )
}

pub fn engine(c: &Client) -> assim_api::EngineView {
    c.status().expect("status").engine.expect("the status names the engine")
}

/// A second `cma` with the first one's identity, on the same database and UDP address.
pub struct Standby {
    pub child: Option<Child>,
    pub client: Client,
    pub api: std::net::SocketAddr,
    pub dir: PathBuf,
}

impl Standby {
    pub fn start(c: &Cluster, store: &str, lease: &str) -> Standby {
        Self::start_with(c, store, lease, &[])
    }

    /// Like [`Standby::start`], with more arguments for `cma`.
    pub fn start_with(c: &Cluster, store: &str, lease: &str, extra: &[&str]) -> Standby {
        let dir = c.dir.join("cma-b");
        {
            use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
            std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
            for f in ["node_id", "node.key"] {
                std::fs::copy(c.dir.join("cma").join(f), dir.join(f)).unwrap();
                std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }
        }
        let api = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = std::fs::File::create(c.dir.join("cma-b.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_assim"))
            .arg("cma")
            .args(["--listen", &c.cma_listen.to_string(), "--api", &api.to_string()])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--store", store, "--engine-lease", lease])
            .args(extra)
            .args(["--heartbeat-interval", "1s", "--warn-time", "3s", "--dead-time", "5s"])
            .env_remove("ASSIM_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let client = Client::new(&format!("http://{api}"), None);
        let mut s = Standby { child: Some(child), client, api, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.client.status().is_err() {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the second CMA exited ({status}): {}", s.log(c));
            }
            assert!(Instant::now() < deadline, "the second CMA's API never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn log(&self, c: &Cluster) -> String {
        std::fs::read_to_string(c.dir.join("cma-b.log")).unwrap_or_default()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

pub fn holder_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("engine-id")).unwrap().trim().to_owned()
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(ok.success(), "kill {sig}");
}
