//! A CMA and nanoprobes as real processes on loopback, each nanoprobe on its own 127.0.0.x
//! address. Used by `assim demo`, the integration tests and the ring benchmark.
//!
//! Everything lives in one temporary directory (data directories and one log file per process);
//! dropping the [`Cluster`] kills every process it started and removes the directory.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use assim_api::Event;
use assim_api::StatusView;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::Client;
use assim_util::duration::format_duration;

/// A program to run: a binary and the arguments that select the role (`assim cma …` or `cma …`).
#[derive(Clone, Debug)]
pub struct Program {
    pub path: PathBuf,
    pub prefix: Vec<String>,
}

impl Program {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.args(&self.prefix);
        c
    }
}

/// How nanoprobes enroll in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterEnrollment {
    /// `cma token create`, then `nanoprobe --token`.
    Token,
    /// `cma --open-enrollment` and `nanoprobe --trust-on-first-use`.
    TrustOnFirstUse,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub cma: Program,
    pub nanoprobe: Program,
    pub nodes: usize,
    pub interval: Duration,
    pub warn: Duration,
    pub dead: Duration,
    pub enrollment: ClusterEnrollment,
    /// Host name prefix: nodes are `{prefix}1`, `{prefix}2`, …
    pub name_prefix: String,
    /// Extra arguments for the CMA (e.g. `--config FILE`).
    pub cma_args: Vec<String>,
    /// Packet reader processes (`cma --role reader`; needs `--store postgres://…` and
    /// `--queue nats://…` in `cma_args`). With any, the CMA and every engine run with
    /// `--role engine`, and the nanoprobes are given the readers' addresses.
    pub readers: usize,
}

impl ClusterSpec {
    /// `nodes` nanoprobes from the standalone `cma` and `nanoprobe` binaries, with the default
    /// timing (the CMA's, 1 s / 1.5 s / 2.5 s), enrolled with a join token, named `n1`, `n2`, …
    pub fn with_binaries(
        cma: impl Into<PathBuf>,
        nanoprobe: impl Into<PathBuf>,
        nodes: usize,
    ) -> ClusterSpec {
        ClusterSpec {
            cma: Program { path: cma.into(), prefix: vec![] },
            nanoprobe: Program { path: nanoprobe.into(), prefix: vec![] },
            nodes,
            interval: assim_cma::Timing::default().interval,
            warn: assim_cma::Timing::default().warn,
            dead: assim_cma::Timing::default().dead,
            enrollment: ClusterEnrollment::Token,
            name_prefix: "n".into(),
            cma_args: Vec::new(),
            readers: 0,
        }
    }

    /// Like [`ClusterSpec::with_binaries`], but both roles run from the `assim` multicall binary
    /// at `assim` (`assim cma …`, `assim nanoprobe …`). The integration tests use this: the
    /// standalone binaries belong to other packages, which `CARGO_BIN_EXE_*` cannot name.
    pub fn multicall(assim: impl Into<PathBuf>, nodes: usize) -> ClusterSpec {
        let assim = assim.into();
        ClusterSpec {
            cma: Program { path: assim.clone(), prefix: vec!["cma".into()] },
            nanoprobe: Program { path: assim, prefix: vec!["nanoprobe".into()] },
            ..ClusterSpec::with_binaries("", "", nodes)
        }
    }

    /// The running executable (the `assim` multicall binary) in both roles.
    pub fn from_current_exe(nodes: usize) -> anyhow::Result<ClusterSpec> {
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        Ok(ClusterSpec { name_prefix: "node".into(), ..ClusterSpec::multicall(exe, nodes) })
    }
}

/// One nanoprobe of the cluster.
#[derive(Debug)]
pub struct NodeProc {
    pub name: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
}

/// A second CMA engine of the cluster ([`Cluster::spawn_engine`]); killed when dropped.
#[derive(Debug)]
pub struct EngineProc {
    pub name: String,
    pub child: Option<Child>,
    pub api: SocketAddr,
    pub dir: PathBuf,
    /// Its API, with its operator token.
    pub client: Client,
}

impl EngineProc {
    /// Its log so far.
    pub fn log(&self) -> String {
        self.dir.parent().map_or_else(String::new, |d| {
            std::fs::read_to_string(d.join(format!("{}.log", self.name))).unwrap_or_default()
        })
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = stop_child(child, true);
        }
    }
}

/// A packet reader of the cluster ([`ClusterSpec::readers`]); killed when dropped.
#[derive(Debug)]
pub struct ReaderProc {
    pub name: String,
    pub listen: SocketAddr,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

impl Drop for ReaderProc {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = stop_child(child, true);
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub dir: PathBuf,
    /// Keep the directory (logs) when dropped.
    pub keep: bool,
    pub cma_listen: SocketAddr,
    pub api: SocketAddr,
    pub cma: Option<Child>,
    pub nodes: Vec<NodeProc>,
    /// The packet readers ([`ClusterSpec::readers`]).
    pub readers: Vec<ReaderProc>,
    pub client: Client,
    token: Option<String>,
}

fn free_udp_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(UdpSocket::bind(SocketAddrV4::new(ip, 0))
        .with_context(|| format!("cannot bind {ip}"))?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Creates the directory and starts the CMA (not the nanoprobes). With `keep`, the directory
    /// (data and logs) stays when the cluster is dropped.
    pub fn new(spec: ClusterSpec, keep: bool) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "assim-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                % 1_000_000_000
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let cma_listen =
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_udp_port(Ipv4Addr::LOCALHOST)?);
        let api = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let client = Client::new(&format!("http://{api}"), None);
        let mut nodes = Vec::new();
        for i in 0..spec.nodes {
            let ip = Ipv4Addr::new(127, 0, 0, 11 + i as u8);
            let port = free_udp_port(ip)?;
            nodes.push(NodeProc {
                name: format!("{}{}", spec.name_prefix, i + 1),
                listen: SocketAddr::new(ip.into(), port),
                data_dir: dir.join(format!("{}{}", spec.name_prefix, i + 1)),
                child: None,
            });
        }
        let mut readers = Vec::new();
        for i in 0..spec.readers {
            let listen =
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_udp_port(Ipv4Addr::LOCALHOST)?);
            let name = format!("reader-{}", i + 1);
            readers.push(ReaderProc { dir: dir.join(&name), name, listen, child: None });
        }
        let mut c = Cluster {
            spec,
            dir,
            keep,
            cma_listen,
            api,
            cma: None,
            nodes,
            readers,
            client,
            token: None,
        };
        c.start_cma()?;
        for i in 0..c.readers.len() {
            c.start_reader(i)?;
        }
        if c.spec.enrollment == ClusterEnrollment::Token {
            c.token = Some(c.create_token()?);
        }
        Ok(c)
    }

    fn log_file(&self, name: &str) -> anyhow::Result<File> {
        let path = self.dir.join(format!("{name}.log"));
        File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    fn cma_args(&self, cmd: &mut Command) {
        self.engine_args(cmd, &self.dir.join("cma"), self.api);
    }

    /// The CMA's arguments with data directory `data_dir` and API address `api`.
    fn engine_args(&self, cmd: &mut Command, data_dir: &Path, api: SocketAddr) {
        cmd.arg("--listen").arg(self.cma_listen.to_string());
        cmd.arg("--api").arg(api.to_string());
        cmd.arg("--data-dir").arg(data_dir);
        cmd.arg("--heartbeat-interval").arg(format_duration(self.spec.interval));
        cmd.arg("--warn-time").arg(format_duration(self.spec.warn));
        cmd.arg("--dead-time").arg(format_duration(self.spec.dead));
        if self.spec.enrollment == ClusterEnrollment::TrustOnFirstUse {
            cmd.arg("--open-enrollment");
        }
        if self.spec.readers > 0 {
            cmd.args(["--role", "engine"]);
        }
        cmd.args(&self.spec.cma_args);
    }

    fn create_token(&self) -> anyhow::Result<String> {
        let mut cmd = self.spec.cma.command();
        self.cma_args(&mut cmd);
        cmd.args(["token", "create", "--ttl", "1h"]);
        let out = cmd.stderr(Stdio::piped()).output().context("cannot run `cma token create`")?;
        if !out.status.success() {
            bail!("`cma token create` failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Gives a directory the CMA's identity (`node_id`, `node.key`, mode 0600): every process
    /// of one CMA shares it.
    fn copy_identity(&self, dir: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for f in ["node_id", "node.key"] {
            std::fs::copy(self.dir.join("cma").join(f), dir.join(f))
                .with_context(|| format!("cannot copy the CMA identity file {f}"))?;
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// Starts (or restarts) packet reader `i` and waits until it says it started.
    pub fn start_reader(&mut self, i: usize) -> anyhow::Result<()> {
        let (name, listen, dir) =
            (self.readers[i].name.clone(), self.readers[i].listen, self.readers[i].dir.clone());
        self.copy_identity(&dir)?;
        let log_path = self.dir.join(format!("{name}.log"));
        let before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
        let mut cmd = self.spec.cma.command();
        cmd.args(["--role", "reader", "--listen"])
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(&dir);
        cmd.arg("--heartbeat-interval").arg(format_duration(self.spec.interval));
        cmd.arg("--warn-time").arg(format_duration(self.spec.warn));
        cmd.arg("--dead-time").arg(format_duration(self.spec.dead));
        if self.spec.enrollment == ClusterEnrollment::TrustOnFirstUse {
            cmd.arg("--open-enrollment");
        }
        cmd.args(&self.spec.cma_args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(&name)?)
            .spawn()
            .with_context(|| format!("cannot start the packet reader {name}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.get(before..).is_some_and(|l| l.contains("CMA packet reader started")) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("the packet reader {name} exited at start-up ({status}); see {name}.log");
            }
            if Instant::now() > deadline {
                let _ = stop_child(child, true);
                bail!("the packet reader {name} did not start within 30 s; see {name}.log");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.readers[i].child = Some(child);
        Ok(())
    }

    /// SIGKILL of packet reader `i`.
    pub fn kill_reader(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(c) = self.readers[i].child.take() {
            stop_child(c, true)?;
        }
        Ok(())
    }

    /// Where the nanoprobes send: the packet readers, or the CMA.
    pub fn node_cma(&self) -> String {
        if self.readers.is_empty() {
            return self.cma_listen.to_string();
        }
        self.readers.iter().map(|r| r.listen.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Starts (or restarts) the CMA and waits until its API answers.
    pub fn start_cma(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.spec.cma.command();
        self.cma_args(&mut cmd);
        cmd.env_remove("ASSIM_API_TOKEN");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("cma")?)
            .spawn()
            .context("cannot start the CMA")?;
        self.cma = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.cma.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "the CMA exited at start-up ({status}); see {}",
                    self.dir.join("cma.log").display()
                );
            }
            if self.client.status().is_ok() {
                // The CMA wrote its operator token before its API answered.
                self.client = Client::new(&format!("http://{}", self.api), None)
                    .with_token_file(&self.api_token_file());
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the CMA API did not answer within 20 s; see {}",
                    self.dir.join("cma.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts another CMA engine beside the cluster's (for a store several engines share, such
    /// as `--store postgres://…` in the CMA arguments): the same identity (`node_id` and
    /// `node.key` copied, mode 0600), UDP address and arguments, its own data directory
    /// `DIR/NAME` and API address, its log in `DIR/NAME.log`. Waits until its API answers.
    pub fn spawn_engine(&self, name: &str) -> anyhow::Result<EngineProc> {
        let dir = self.dir.join(name);
        self.copy_identity(&dir)?;
        let api = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cmd = self.spec.cma.command();
        self.engine_args(&mut cmd, &dir, api);
        let mut child = cmd
            .env_remove("ASSIM_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(name)?)
            .spawn()
            .with_context(|| format!("cannot start the CMA engine {name}"))?;
        let client = Client::new(&format!("http://{api}"), None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.status().is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("the CMA engine {name} exited at start-up ({status}); see {name}.log");
            }
            if Instant::now() > deadline {
                let _ = stop_child(child, true);
                bail!("the CMA engine {name}'s API did not answer within 20 s; see {name}.log");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = client.with_token_file(&dir.join("api.token"));
        Ok(EngineProc { name: name.into(), child: Some(child), api, dir, client })
    }

    /// Makes `engine` the cluster's CMA (after it took over from the one the cluster started):
    /// its process, API and client. A previous CMA process still running is killed.
    pub fn adopt_engine(&mut self, engine: &mut EngineProc) {
        self.api = engine.api;
        self.client = engine.client.clone();
        if let Some(old) = std::mem::replace(&mut self.cma, engine.child.take()) {
            let _ = stop_child(old, true);
        }
    }

    /// Stops the CMA: SIGKILL when `hard`, else SIGTERM and wait.
    pub fn stop_cma(&mut self, hard: bool) -> anyhow::Result<()> {
        if let Some(child) = self.cma.take() {
            stop_child(child, hard)?;
        }
        Ok(())
    }

    /// Starts nanoprobe `i` (0-based).
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = self.spec.nanoprobe.command();
        let n = &self.nodes[i];
        cmd.arg("--cma").arg(self.node_cma());
        cmd.arg("--listen").arg(n.listen.to_string());
        cmd.arg("--data-dir").arg(&n.data_dir);
        cmd.arg("--hostname").arg(&n.name);
        match &self.token {
            Some(t) => {
                cmd.arg("--token").arg(t);
            }
            None => {
                cmd.arg("--trust-on-first-use");
            }
        }
        cmd.env_remove("ASSIM_TOKEN");
        let log = self.log_file(&n.name)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a nanoprobe")?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Starts every nanoprobe that is not running.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    /// SIGKILL nanoprobe `i` (a crash).
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(c) = self.nodes[i].child.take() {
            stop_child(c, true)?;
        }
        Ok(())
    }

    /// SIGTERM nanoprobe `i` and wait for it to exit (a graceful leave).
    pub fn stop_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(c) = self.nodes[i].child.take() {
            stop_child(c, false)?;
        }
        Ok(())
    }

    /// Polls the status until `pred` holds.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&StatusView) -> bool,
    ) -> anyhow::Result<StatusView> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match self.client.status() {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => last = Some(s),
                Err(_) => {}
            }
            if Instant::now() > deadline {
                let summary = last
                    .map(|s| {
                        s.nodes
                            .iter()
                            .map(|n| format!("{}={}", n.hostname, n.state))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what} (last status: {summary}); logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running nanoprobe is up and the ring has them all with two neighbours each.
    pub fn wait_ring(&self, timeout: Duration) -> anyhow::Result<StatusView> {
        let running: Vec<String> =
            self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.name.clone()).collect();
        let want = running.len();
        self.wait_status(timeout, &format!("a ring of {want} nodes"), |s| {
            running.iter().all(|name| {
                s.nodes.iter().any(|n| {
                    &n.hostname == name
                        && n.state == "up"
                        && n.neighbours.len() == want.saturating_sub(1).min(2)
                })
            })
        })
    }

    /// Waits for the first event after `since` that matches `pred`.
    pub fn wait_event(
        &self,
        since: u64,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Event> {
        let deadline = Instant::now() + timeout;
        let mut cursor = since;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; logs in {}",
                    self.dir.display()
                );
            }
            let batch = self.client.events(cursor, 1000, Some(left.min(Duration::from_secs(1))))?;
            for e in batch {
                cursor = e.id;
                if pred(&e) {
                    return Ok(e);
                }
            }
        }
    }

    /// All events after `since`.
    pub fn events_since(&self, since: u64) -> anyhow::Result<Vec<Event>> {
        let mut out = Vec::new();
        let mut cursor = since;
        loop {
            let batch = self.client.events(cursor, 1000, None)?;
            if batch.is_empty() {
                return Ok(out);
            }
            cursor = batch.last().map(|e| e.id).unwrap_or(cursor);
            out.extend(batch);
        }
    }

    /// The id of the newest event.
    pub fn last_event_id(&self) -> anyhow::Result<u64> {
        Ok(self.events_since(0)?.last().map(|e| e.id).unwrap_or(0))
    }

    /// Runs the `assim` CLI at `assim_bin` against this cluster's API (without any token from
    /// the environment); returns (success, stdout, stderr).
    pub fn run_cli(&self, assim_bin: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(assim_bin)
            .arg("--api")
            .arg(format!("http://{}", self.api))
            .args(args)
            .env_remove("ASSIM_API_TOKEN")
            .env("ASSIM_API_TOKEN_FILE", self.api_token_file())
            .output()
            .expect("run assim");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The CMA's operator token file (requests that change state need its token).
    pub fn api_token_file(&self) -> PathBuf {
        self.dir.join("cma").join("api.token")
    }

    /// The CMA's operator token.
    pub fn api_token(&self) -> anyhow::Result<String> {
        crate::client::read_token_file(&self.api_token_file()).map_err(anyhow::Error::msg)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn stop_child(mut child: Child, hard: bool) -> anyhow::Result<()> {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, if hard { Signal::SIGKILL } else { Signal::SIGTERM });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {pid} did not exit within 10 s of SIGTERM; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut c) = self.cma.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.readers.clear();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
