//! Wire mode (`assim sim --wire`): M simulated nanoprobes in this process, over real UDP on
//! loopback, against a real `cma` process.
//!
//! Each simulated node is one tokio task with its own UDP socket on loopback (so the kernel
//! demultiplexes: the sealed header names the sender, not the receiver; 20,000 nodes per
//! loopback address, because the ephemeral port range is per address), its own X25519
//! identity and [`Sealer`], and trust-on-first-use enrollment through the nanoprobe's own
//! key-fetch core ([`KeyFetch`]: backoff, and the CMA's `Busy` answers honoured). It then runs
//! the real nanoprobe shell (`assim-probe-shell`, the daemon's own logic) with that sealer:
//! hello, heartbeats to the ring neighbours the CMA assigns (their keys come with the peer
//! set), reports and peer status through a spool in memory that the CMA's acknowledgements
//! drain, probe replies. The task only carries bytes.
//!
//! The run: start the CMA (`cma --open-enrollment` on a free loopback port) unless
//! `--cma`/`--cma-api` name a running one; start every node at once (the registration storm)
//! until every node is up at the CMA, in its ring, and hears both its neighbours (the
//! registration time; progress from the nodes and the CMA's `/metrics`, which unlike
//! `/api/v1/status` does not list 100,000 nodes); let it settle; measure the CMA's datagrams
//! in and out per node per second from `/metrics` over `--steady`; then stop K nodes at once
//! (`--crash K`: their tasks end and their sockets close, like `kill -9`) and wait for each
//! one's `host.down` on `/api/v1/events`. One socket per node: RLIMIT_NOFILE is raised as far
//! as the hard limit allows, and nodes beyond 15,000 run in worker processes
//! (`--wire-worker`) that report their progress on stdout.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use assim_log::MemStorage;
use assim_probe_shell::{Event, Shell, ShellConfig, Spool, WallClock};
use assim_reliable::Config as RelConfig;
use assim_seal::key_fetch::Answer;
use assim_seal::{Identity, KeyFetch, Sealer};
use assim_wire::msg;
use assim_wire::{NodeId, Timestamp};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// What to run.
#[derive(Clone, Debug)]
pub struct WireOptions {
    pub nodes: usize,
    /// Nodes stopped at once in the failure burst.
    pub crash: usize,
    /// Steady-state measurement window.
    pub steady: Duration,
    /// A running CMA (UDP) and its API; when `None`, a `cma` process is started.
    pub cma: Option<(SocketAddr, SocketAddr)>,
    /// The program that runs the CMA: a binary and its role prefix (`assim cma` or `cma`).
    pub cma_program: (PathBuf, Vec<String>),
    /// Heartbeat timing given to a started CMA (None: its defaults, 1 s / 3 s / 5 s).
    pub timing: Option<(Duration, Duration, Duration)>,
    /// How long to wait for all nodes to be up.
    pub form_timeout: Duration,
}

/// Counters shared by the node tasks.
#[derive(Debug, Default)]
struct Shared {
    enrolled: AtomicU64,
    /// Nodes whose peer set names `want_peers` peers, all heard (alive): watched, since every
    /// ring member that hears both its neighbours is heard by both too.
    watched: AtomicI64,
    /// Peers each node should have (2, fewer in a ring of fewer than 3).
    want_peers: AtomicU64,
    key_requests: AtomicU64,
    busy: AtomicU64,
    heartbeats_sent: AtomicU64,
    heartbeats_received: AtomicU64,
    reports: AtomicU64,
    rejected: AtomicU64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

/// Nodes per loopback address: the ephemeral port range (32768–60999 by default) is per
/// address, so 100,000 sockets on 127.0.0.1 alone run out of ports.
const NODES_PER_ADDRESS: usize = 20_000;

/// Where node `i` binds: 127.0.0.1 for the first [`NODES_PER_ADDRESS`], then 127.0.1.1, … (all
/// of 127.0.0.0/8 is loopback on Linux).
fn node_bind_addr(i: usize) -> SocketAddr {
    let k = (i / NODES_PER_ADDRESS) as u8;
    SocketAddr::new(Ipv4Addr::new(127, 0, k, 1).into(), 0)
}

fn hostname(i: usize) -> String {
    format!("wire-{i}")
}

/// Raises the open-file limit to at least `want` if possible; returns the limit in force.
fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    if soft >= want {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return want;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    getrlimit(Resource::RLIMIT_NOFILE).map(|l| l.0).unwrap_or(soft)
}

// ---------------------------------------------------------------------------------------------
// One simulated nanoprobe

/// One simulated nanoprobe: a socket around the real nanoprobe shell.
struct Node {
    socket: UdpSocket,
    shell: Shell<MemStorage>,
    shared: Arc<Shared>,
    /// The shell's counters already added to `shared`.
    hb_sent: u64,
    hb_received: u64,
    rejected: u64,
    /// Counted in `shared.watched`.
    watched: bool,
}

async fn enroll(
    socket: &UdpSocket,
    sealer: &mut Sealer,
    cma: SocketAddr,
    shared: &Shared,
) -> anyhow::Result<(NodeId, [u8; 32])> {
    // The nanoprobe's key-fetch core: backoff, and the CMA's `Busy` answers honoured.
    let mut fetch = KeyFetch::new(cma, Instant::now(), rand::random());
    let mut buf = vec![0u8; 2048];
    let give_up = Instant::now() + Duration::from_secs(600);
    while let Some(due) = fetch.poll_timeout() {
        if Instant::now() > give_up {
            break;
        }
        if let Some(req) = fetch.poll_request(Instant::now(), sealer) {
            shared.key_requests.fetch_add(1, Ordering::Relaxed);
            socket.send_to(&req, cma).await?;
            continue;
        }
        if let Ok(Ok((len, src))) =
            tokio::time::timeout_at(due.into(), socket.recv_from(&mut buf)).await
        {
            match fetch.handle(Instant::now(), src, &buf[..len], sealer) {
                Answer::Key { id, key } => return Ok((id, key)),
                Answer::Busy(_) => {
                    shared.busy.fetch_add(1, Ordering::Relaxed);
                }
                Answer::Ignored => {}
            }
        }
    }
    bail!("node {}: the CMA never answered a key request", sealer.node_id())
}

async fn run_node(
    i: usize,
    cma: SocketAddr,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let identity = Identity::generate(&mut rand::rngs::OsRng);
    let socket = UdpSocket::bind(node_bind_addr(i)).await.context("bind")?;
    let session = assim_seal::new_session(Timestamp::now().millis(), rand::random());
    let mut sealer = Sealer::new(identity.clone(), session);
    let (cma_id, key) = tokio::select! {
        r = enroll(&socket, &mut sealer, cma, &shared) => r?,
        _ = &mut stop => return Ok(()),
    };
    sealer.add_peer(cma_id, key);
    shared.enrolled.fetch_add(1, Ordering::Relaxed);
    let listen = socket.local_addr()?;
    let now = Instant::now();
    // The spool in memory: wire mode exercises the network path, not the disk.
    let spool = Spool::open(
        MemStorage::new(session),
        64 * 1024 * 1024,
        assim_probe_shell::limits::MAX_MESSAGE,
    )
    .context("open the in-memory spool")?;
    let cfg = ShellConfig {
        node_id: identity.node_id(),
        cma_id,
        cma_addr: cma,
        session,
        seed: session ^ 0x9e37_79b9_7f4a_7c15,
        hello: msg::Hello {
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: hostname(i),
            listen_addr: listen.to_string(),
            addresses: Vec::new(),
            started_at: Timestamp::now().micros(),
            token_proof: None,
            peer_epoch: 0,
            spool_incarnation: 0,
            acked_through: 0,
        },
        reliable: RelConfig::default(),
        // Simulated nanoprobes run no collectors.
        discovery_defaults: false,
        wall_clock: WallClock::new(now, Timestamp::now().micros()),
    };
    let mut shell = Shell::new(cfg, spool, Some(sealer), now);
    shell.start(now);
    let mut n =
        Node { socket, shell, shared, hb_sent: 0, hb_received: 0, rejected: 0, watched: false };
    n.flush().await;
    let mut buf = vec![0u8; 65536];
    loop {
        let deadline = n.shell.poll_timeout();
        tokio::select! {
            r = n.socket.recv_from(&mut buf) => {
                if let Ok((len, src)) = r {
                    n.shell.handle_datagram(&buf[..len], src, Instant::now());
                    // Drain what else is queued.
                    while let Ok((len, src)) = n.socket.try_recv_from(&mut buf) {
                        n.shell.handle_datagram(&buf[..len], src, Instant::now());
                    }
                }
            }
            _ = sleep_until(deadline) => {}
            _ = &mut stop => {
                n.set_watched(false);
                return Ok(());
            }
        }
        n.shell.handle_timeout(Instant::now());
        n.flush().await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Node {
    /// Carries out what the shell emitted: counts, then sends its sealed datagrams.
    async fn flush(&mut self) {
        let now = Instant::now();
        while let Some(ev) = self.shell.poll_event() {
            if let Event::Reported { .. } = ev {
                self.shared.reports.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (cma_id, _) = self.shell.cma();
        while let Some(d) = self.shell.poll_datagram(now) {
            if d.to == cma_id {
                let _ = self.socket.send_to(&d.bytes, d.addr).await;
            } else {
                let _ = self.socket.try_send_to(&d.bytes, d.addr);
            }
        }
        let st = *self.shell.heartbeats().stats();
        let rejected = self.shell.stats().rejected;
        let add = |c: &AtomicU64, now: u64, seen: &mut u64| {
            c.fetch_add(now.saturating_sub(*seen), Ordering::Relaxed);
            *seen = now;
        };
        add(&self.shared.heartbeats_sent, st.heartbeats_sent, &mut self.hb_sent);
        add(&self.shared.heartbeats_received, st.heartbeats_received, &mut self.hb_received);
        add(&self.shared.rejected, rejected, &mut self.rejected);
        let want = self.shared.want_peers.load(Ordering::Relaxed) as usize;
        let hb = self.shell.heartbeats();
        let watched = hb.peers().count() == want
            && hb.peers().all(|(_, l)| l == assim_wire::msg::PeerLiveness::Alive);
        self.set_watched(watched);
    }

    fn set_watched(&mut self, watched: bool) {
        if watched != self.watched {
            self.watched = watched;
            self.shared.watched.fetch_add(if watched { 1 } else { -1 }, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The CMA and its API

struct CmaProc {
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Drop for CmaProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_port_udp() -> anyhow::Result<u16> {
    Ok(StdUdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn fmt_dur(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn start_cma(opts: &WireOptions) -> anyhow::Result<(CmaProc, SocketAddr, SocketAddr)> {
    if let Some((udp, api)) = opts.cma {
        return Ok((CmaProc { child: None, dir: None }, udp, api));
    }
    let dir = std::env::temp_dir().join(format!("assim-wire-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let udp = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port_udp()?);
    let api = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cmd = Command::new(&opts.cma_program.0);
    cmd.args(&opts.cma_program.1)
        .arg("--listen")
        .arg(udp.to_string())
        .arg("--api")
        .arg(api.to_string())
        .arg("--data-dir")
        .arg(dir.join("cma"))
        .arg("--open-enrollment");
    if let Some((i, w, d)) = opts.timing {
        cmd.arg("--heartbeat-interval").arg(fmt_dur(i));
        cmd.arg("--warn-time").arg(fmt_dur(w));
        cmd.arg("--dead-time").arg(fmt_dur(d));
    }
    cmd.env_remove("ASSIM_API_TOKEN");
    let log = std::fs::File::create(dir.join("cma.log"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start the CMA ({})", opts.cma_program.0.display()))?;
    let proc_ = CmaProc { child: Some(child), dir: Some(dir.clone()) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(api, "/api/v1/status").is_err() {
        if Instant::now() > deadline {
            bail!("the CMA API did not answer within 20 s; see {}", dir.join("cma.log").display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc_, udp, api))
}

fn http_get(api: SocketAddr, path: &str) -> anyhow::Result<String> {
    Ok(ureq::get(&format!("http://{api}{path}"))
        .timeout(Duration::from_secs(30))
        .call()?
        .into_string()?)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The values of a labelled counter, `name{label="value"} n`, as (value, n), largest first.
fn labelled(text: &str, name: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let label = labels.split_once('=')?.1.trim_matches('"').to_owned();
            Some((label, value.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// "reason n, reason n, …" (or "none").
fn reasons(r: &[(String, u64)]) -> String {
    if r.is_empty() {
        return "none".into();
    }
    r.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// An event as `/api/v1/events` serves it (the fields wire mode reads).
#[derive(Debug, serde::Deserialize)]
struct ApiEvent {
    id: u64,
    /// µs since the epoch.
    time: u64,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    hostname: String,
}

fn events_after(api: SocketAddr, since: u64) -> anyhow::Result<Vec<ApiEvent>> {
    Ok(serde_json::from_str(&http_get(
        api,
        &format!("/api/v1/events?since={since}&limit=10000&wait=1"),
    )?)?)
}

fn last_event_id(api: SocketAddr) -> anyhow::Result<u64> {
    let mut cursor = 0;
    loop {
        let b: Vec<ApiEvent> = serde_json::from_str(&http_get(
            api,
            &format!("/api/v1/events?since={cursor}&limit=10000"),
        )?)?;
        match b.last() {
            Some(e) => cursor = e.id,
            None => return Ok(cursor),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Figures of a wire-mode run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WireReport {
    pub nodes: usize,
    pub nofile_limit: u64,
    /// Nodes run in this process (the rest in worker processes).
    pub local_nodes: usize,
    /// Processes running nodes (this one and the workers).
    pub processes: usize,
    /// Every node enrolled (it holds the CMA's key).
    pub enrolled_s: f64,
    /// Every node up at the CMA.
    pub all_up_s: f64,
    /// The registration time: every node up, in its ring, and watched (it hears both its
    /// neighbours, so both hear it). `None`: not within the timeout.
    pub registration_s: Option<f64>,
    pub registrations_per_s: f64,
    /// Key requests the nodes sent, and `Busy` answers they honoured.
    pub key_requests: u64,
    pub busy_honoured: u64,
    /// During the storm: the system's UDP receive-buffer drops, the CMA's CPU seconds and the
    /// node processes' CPU seconds (the machine's other load is not in them).
    pub storm_udp_drops: u64,
    /// The CMA's `Busy` answers and reliable retransmissions during the storm.
    pub cma_busy_sent: u64,
    pub cma_retransmits: u64,
    pub storm_cma_cpu_s: f64,
    pub storm_nodes_cpu_s: f64,
    /// What the CMA refused during the storm, by reason (`assim_cma_rejected_total`), largest
    /// first: where registrations were lost.
    pub cma_rejects: Vec<(String, u64)>,
    /// Key requests the CMA's packet reader dropped unread while its loop was behind.
    pub cma_key_requests_shed: u64,
    pub steady_s: f64,
    pub cma_in_per_node_s: f64,
    pub cma_out_per_node_s: f64,
    pub cma_in_bytes_per_node_s: f64,
    pub heartbeats_per_node_s: f64,
    pub crashed: usize,
    pub detected: usize,
    pub down_median_ms: f64,
    pub down_max_ms: f64,
    pub false_downs: usize,
    pub sim_rss_mib: f64,
    pub workers_rss_mib: f64,
    pub cma_rss_mib: f64,
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat` (Linux counts them
/// in USER_HZ = 100 ticks per second there, whatever the kernel's own tick).
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The system's UDP receive-buffer drops so far (`RcvbufErrors` in `/proc/net/snmp`: every
/// socket's, the CMA's among them). The flood benchmark reads it too.
pub fn udp_rcvbuf_errors() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else { return 0 };
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Runs wire mode; prints progress on stderr and returns the figures.
pub fn run(opts: WireOptions) -> anyhow::Result<WireReport> {
    let m = opts.nodes;
    let limit = raise_nofile(m as u64 + 1024);
    let (cma_proc, cma, api) = start_cma(&opts)?;
    eprintln!("wire: CMA at {cma} (API {api}); starting {m} simulated nanoprobes");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let shared = Arc::new(Shared::default());
    shared.want_peers.store(want_peers(m), Ordering::Relaxed);
    // One socket per node: this process takes what its open-file limit allows, worker
    // processes (`--wire-worker`, each with its own limit) the rest.
    let cap = (limit as usize).saturating_sub(512).clamp(1, 15_000);
    let local = m.min(cap);
    let drops0 = udp_rcvbuf_errors();
    let cma_pid = cma_proc.child.as_ref().map(Child::id);
    let cma_cpu0 = cma_pid.map_or(0.0, cpu_s);
    let self_cpu0 = cpu_s(std::process::id());
    let t0 = Instant::now();
    let mut stops = spawn_nodes(&rt, 0, local, cma, &shared);
    let mut workers = Workers(Vec::new());
    let mut first = local;
    while first < m {
        let count = (m - first).min(cap);
        workers.0.push(spawn_worker(first, count, m, cma, api)?);
        first += count;
    }
    if !workers.0.is_empty() {
        eprintln!(
            "wire: {local} nodes in this process, {} in {} worker processes (open-file limit {limit})",
            m - local,
            workers.0.len()
        );
    }
    let mut report = WireReport {
        nodes: m,
        nofile_limit: limit,
        local_nodes: local,
        processes: 1 + workers.0.len(),
        ..WireReport::default()
    };
    // Registration storm: until every node is up at the CMA, in its ring and watched (it hears
    // both its neighbours, so both hear it). Progress comes from the node tasks (this process
    // and the workers' progress lines) and the CMA's /metrics; /api/v1/status, which lists
    // every node, is too heavy to poll at 100,000.
    let mut last_print = Instant::now();
    let mut enrolled_at = None;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let p = workers.progress(&shared);
        if enrolled_at.is_none() && p.enrolled as usize == m {
            enrolled_at = Some(t0.elapsed().as_secs_f64());
        }
        let metrics = http_get(api, "/metrics").unwrap_or_default();
        let up = metric(&metrics, "assim_cma_nodes{state=\"up\"}") as usize;
        let members = metric(&metrics, "assim_cma_ring_members") as usize;
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "wire: {:.0} s: {} enrolled ({} key requests, {} Busy answers honoured), {up} up, {members} ring members, {} watched",
                t0.elapsed().as_secs_f64(),
                p.enrolled,
                p.key_requests,
                p.busy,
                p.watched
            );
            last_print = Instant::now();
        }
        if up == m && report.all_up_s == 0.0 {
            report.all_up_s = t0.elapsed().as_secs_f64();
            eprintln!("wire: all {m} up at the CMA after {:.1} s", report.all_up_s);
        }
        if up == m && members == m && p.watched == m as i64 {
            let t = t0.elapsed().as_secs_f64();
            report.registration_s = Some(t);
            report.registrations_per_s = m as f64 / t;
            eprintln!(
                "wire: registration time {t:.1} s: all {m} registered, in their rings and watched = {:.0} registrations/s",
                report.registrations_per_s
            );
            break;
        }
        if t0.elapsed() > opts.form_timeout {
            if report.all_up_s == 0.0 {
                bail!(
                    "only {up} of {m} nodes up after {:?}; the CMA refused: {}; key requests \
                     dropped unread: {}",
                    opts.form_timeout,
                    reasons(&labelled(&metrics, "assim_cma_rejected_total")),
                    metric(&metrics, "assim_cma_key_requests_shed_total")
                );
            }
            eprintln!(
                "wire: not all watched after {:?} ({} of {m}; {members} ring members); going on",
                opts.form_timeout, p.watched
            );
            break;
        }
    }
    report.enrolled_s = enrolled_at.unwrap_or(f64::NAN);
    let p = workers.progress(&shared);
    (report.key_requests, report.busy_honoured) = (p.key_requests, p.busy);
    let metrics = http_get(api, "/metrics").unwrap_or_default();
    report.cma_busy_sent = metric(&metrics, "assim_cma_busy_sent_total") as u64;
    report.cma_retransmits = metric(&metrics, "assim_cma_retransmits_total") as u64;
    report.cma_rejects = labelled(&metrics, "assim_cma_rejected_total");
    report.cma_key_requests_shed = metric(&metrics, "assim_cma_key_requests_shed_total") as u64;
    report.storm_udp_drops = udp_rcvbuf_errors().saturating_sub(drops0);
    report.storm_cma_cpu_s = cma_pid.map_or(0.0, cpu_s) - cma_cpu0;
    report.storm_nodes_cpu_s = cpu_s(std::process::id()) - self_cpu0
        + workers.0.iter().map(|w| cpu_s(w.child.id())).sum::<f64>();

    // Steady state.
    std::thread::sleep(Duration::from_secs(5));
    let since_steady = last_event_id(api)?;
    let metrics0 = http_get(api, "/metrics")?;
    let hb0 = shared.heartbeats_sent.load(Ordering::Relaxed);
    let ts = Instant::now();
    std::thread::sleep(opts.steady);
    let metrics1 = http_get(api, "/metrics")?;
    let hb1 = shared.heartbeats_sent.load(Ordering::Relaxed);
    let dt = ts.elapsed().as_secs_f64();
    let per = |name: &str| (metric(&metrics1, name) - metric(&metrics0, name)) / m as f64 / dt;
    report.steady_s = dt;
    report.cma_in_per_node_s = per("assim_cma_datagrams_received_total");
    report.cma_out_per_node_s = per("assim_cma_datagrams_sent_total");
    report.cma_in_bytes_per_node_s = per("assim_cma_received_bytes_total");
    report.heartbeats_per_node_s = (hb1 - hb0) as f64 / local as f64 / dt;
    eprintln!(
        "wire: steady {dt:.1} s: CMA {:.4} datagrams in, {:.4} out per node per second; {:.2} heartbeats sent per node per second",
        report.cma_in_per_node_s, report.cma_out_per_node_s, report.heartbeats_per_node_s
    );
    report.sim_rss_mib = rss_mib(std::process::id());
    report.workers_rss_mib = workers.0.iter().map(|w| rss_mib(w.child.id())).sum();
    report.cma_rss_mib = cma_proc.child.as_ref().map(|c| rss_mib(c.id())).unwrap_or(0.0);

    // Failure burst: K nodes spread over the index space stop at once.
    let k = opts.crash.min(m / 2);
    let victims: Vec<usize> = (0..k).map(|j| j * (m / k.max(1))).collect();
    let names: std::collections::HashMap<String, usize> =
        victims.iter().map(|&i| (hostname(i), i)).collect();
    let since = last_event_id(api)?;
    // Unexpected host.down during the steady window and before the burst.
    report.false_downs = count_downs(api, since_steady, since)?;
    let killed_us = now_us();
    for &i in &victims {
        if i < local {
            if let Some(tx) = stops[i].take() {
                let _ = tx.send(());
            }
        } else if let Some(w) =
            workers.0.iter_mut().find(|w| (w.first..w.first + w.count).contains(&i))
            && let Some(stdin) = w.child.stdin.as_mut()
        {
            let _ = writeln!(stdin, "{i}");
            let _ = stdin.flush();
        }
    }
    eprintln!("wire: stopped {k} nodes; waiting for host.down");
    let mut lat: Vec<f64> = Vec::new();
    let mut cursor = since;
    let mut seen = std::collections::HashSet::new();
    let dead = opts.timing.map(|t| t.2).unwrap_or(Duration::from_secs(5));
    let deadline = Instant::now() + dead + Duration::from_secs(60);
    while seen.len() < k && Instant::now() < deadline {
        for e in events_after(api, cursor)? {
            cursor = e.id;
            if e.kind == "host.down" {
                if names.contains_key(&e.hostname) {
                    if seen.insert(e.hostname.clone()) {
                        lat.push(e.time.saturating_sub(killed_us) as f64 / 1000.0);
                    }
                } else {
                    report.false_downs += 1;
                }
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    report.crashed = k;
    report.detected = lat.len();
    report.down_median_ms = lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN);
    report.down_max_ms = lat.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "wire: {}/{k} host.down, median {:.0} ms, max {:.0} ms after the stop",
        report.detected, report.down_median_ms, report.down_max_ms
    );
    drop(stops);
    drop(workers);
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(cma_proc);
    Ok(report)
}

fn spawn_nodes(
    rt: &tokio::runtime::Runtime,
    first: usize,
    count: usize,
    cma: SocketAddr,
    shared: &Arc<Shared>,
) -> Vec<Option<oneshot::Sender<()>>> {
    let mut stops = Vec::with_capacity(count);
    for i in first..first + count {
        let (tx, rx) = oneshot::channel();
        stops.push(Some(tx));
        let shared = shared.clone();
        rt.spawn(async move {
            if let Err(e) = run_node(i, cma, shared, rx).await {
                eprintln!("wire: node {i}: {e:#}");
            }
        });
    }
    stops
}

/// Peers each node of an `m`-node ring has.
fn want_peers(m: usize) -> u64 {
    m.saturating_sub(1).min(2) as u64
}

/// Progress of a set of nodes (one process's, or all).
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    enrolled: u64,
    watched: i64,
    key_requests: u64,
    busy: u64,
}

impl Progress {
    fn of(s: &Shared) -> Progress {
        Progress {
            enrolled: s.enrolled.load(Ordering::Relaxed),
            watched: s.watched.load(Ordering::Relaxed),
            key_requests: s.key_requests.load(Ordering::Relaxed),
            busy: s.busy.load(Ordering::Relaxed),
        }
    }

    /// The worker's progress line.
    fn line(&self) -> String {
        format!("progress {} {} {} {}", self.enrolled, self.watched, self.key_requests, self.busy)
    }

    fn parse(line: &str) -> Option<Progress> {
        let mut f = line.strip_prefix("progress ")?.split(' ');
        let mut next = || f.next()?.parse::<i64>().ok();
        let (enrolled, watched, key_requests, busy) = (next()?, next()?, next()?, next()?);
        Some(Progress {
            enrolled: enrolled.try_into().ok()?,
            watched,
            key_requests: key_requests.try_into().ok()?,
            busy: busy.try_into().ok()?,
        })
    }

    fn add(&mut self, o: Progress) {
        self.enrolled += o.enrolled;
        self.watched += o.watched;
        self.key_requests += o.key_requests;
        self.busy += o.busy;
    }
}

/// A worker process: its nodes, and its latest progress line.
struct Worker {
    first: usize,
    count: usize,
    child: Child,
    progress: Arc<std::sync::Mutex<Progress>>,
}

/// Worker processes; killed when dropped.
struct Workers(Vec<Worker>);

impl Workers {
    /// This process's progress and every worker's.
    fn progress(&self, local: &Shared) -> Progress {
        let mut p = Progress::of(local);
        for w in &self.0 {
            p.add(*w.progress.lock().expect("progress lock"));
        }
        p
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

fn spawn_worker(
    first: usize,
    count: usize,
    total: usize,
    cma: SocketAddr,
    api: SocketAddr,
) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    if std::env::args().nth(1).as_deref() == Some("sim") {
        cmd.arg("sim");
    }
    cmd.args(["--wire", "--wire-worker", &format!("{first}:{count}")])
        .arg("--nodes")
        .arg(total.to_string())
        .arg("--cma")
        .arg(cma.to_string())
        .arg("--cma-api")
        .arg(api.to_string());
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let progress = Arc::new(std::sync::Mutex::new(Progress::default()));
    let stdout = child.stdout.take().context("the worker's stdout")?;
    let p = progress.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(now) = Progress::parse(&line) {
                *p.lock().expect("progress lock") = now;
            }
        }
    });
    Ok(Worker { first, count, child, progress })
}

/// `--wire-worker FIRST:COUNT`: runs nodes FIRST.. of a wire-mode run against `cma`; each line
/// on stdin is the index of a node to stop; ends at end of input.
pub fn worker(first: usize, count: usize, total: usize, cma: SocketAddr) -> anyhow::Result<()> {
    let limit = raise_nofile(count as u64 + 256);
    if limit < count as u64 + 64 {
        bail!("worker: {count} nodes need {} open files, the limit is {limit}", count + 64);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let shared = Arc::new(Shared::default());
    shared.want_peers.store(want_peers(total), Ordering::Relaxed);
    let mut stops = spawn_nodes(&rt, first, count, cma, &shared);
    // Progress lines for the command's process, until it stops reading.
    let reporter = shared.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{}", Progress::of(&reporter).line()).is_err() || out.flush().is_err()
            {
                break;
            }
        }
    });
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        if let Ok(i) = line.trim().parse::<usize>()
            && let Some(tx) = i.checked_sub(first).and_then(|j| stops.get_mut(j)?.take())
        {
            let _ = tx.send(());
        }
    }
    drop(stops);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn count_downs(api: SocketAddr, from: u64, to: u64) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut cursor = from;
    while cursor < to {
        let b: Vec<ApiEvent> = serde_json::from_str(&http_get(
            api,
            &format!("/api/v1/events?since={cursor}&limit=10000"),
        )?)?;
        let Some(last) = b.last() else { break };
        cursor = last.id;
        n += b.iter().filter(|e| e.id <= to && e.kind == "host.down").count();
    }
    Ok(n)
}

impl WireReport {
    /// The human summary.
    pub fn human(&self) -> String {
        let reg = self
            .registration_s
            .map(|s| format!("{s:.1} s = {:.0} registrations/s", self.registrations_per_s))
            .unwrap_or_else(|| "not reached".into());
        let nodes_rss = self.sim_rss_mib + self.workers_rss_mib;
        format!(
            "wire mode: {} simulated nanoprobes over real UDP (one socket each, {} processes, open-file limit {}) against a real cma\n\
             registration storm: all enrolled (TOFU) after {:.1} s ({} key requests, {} Busy answers honoured), all up at the CMA after {:.1} s\n\
             registration time (all registered, in their rings and watched): {reg}\n\
             during the storm: CMA {:.1} CPU s ({} Busy answers sent, {} retransmissions), node processes {:.1} CPU s, {} UDP receive-buffer drops (system-wide)\n\
             the CMA refused during the storm: {}; key requests dropped unread while its loop was behind: {}\n\
             steady state ({:.1} s): CMA {:.4} datagrams in and {:.4} out per node per second ({:.1} bytes in per node per second); {:.2} heartbeats sent per node per second\n\
             failure burst: {} nodes stopped at once, {} host.down, median {:.0} ms, max {:.0} ms after the stop; {} unexpected host.down\n\
             memory: simulator processes RSS {:.0} MiB for {} nodes ({:.1} KiB per node), CMA RSS {:.0} MiB ({:.1} KiB per node)\n",
            self.nodes,
            self.processes,
            self.nofile_limit,
            self.enrolled_s,
            self.key_requests,
            self.busy_honoured,
            self.all_up_s,
            self.storm_cma_cpu_s,
            self.cma_busy_sent,
            self.cma_retransmits,
            self.storm_nodes_cpu_s,
            self.storm_udp_drops,
            reasons(&self.cma_rejects),
            self.cma_key_requests_shed,
            self.steady_s,
            self.cma_in_per_node_s,
            self.cma_out_per_node_s,
            self.cma_in_bytes_per_node_s,
            self.heartbeats_per_node_s,
            self.crashed,
            self.detected,
            self.down_median_ms,
            self.down_max_ms,
            self.false_downs,
            nodes_rss,
            self.nodes,
            nodes_rss * 1024.0 / self.nodes.max(1) as f64,
            self.cma_rss_mib,
            self.cma_rss_mib * 1024.0 / self.nodes.max(1) as f64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_round_trip_and_refuse_garbage() {
        let p = Progress { enrolled: 15_000, watched: -3, key_requests: 40_000, busy: 25_000 };
        let back = Progress::parse(&p.line()).unwrap();
        assert_eq!(back.line(), p.line());
        for bad in [
            "",
            "progress",
            "progress 1 2 3",
            "progress 1 2 3 x",
            "progress -1 2 3 4",
            "hello 1 2 3 4",
        ] {
            assert!(Progress::parse(bad).is_none(), "{bad:?}");
        }
        let mut sum = Progress::default();
        sum.add(p);
        sum.add(p);
        assert_eq!((sum.enrolled, sum.watched, sum.busy), (30_000, -6, 50_000));
    }

    #[test]
    fn own_cpu_time_and_udp_counters_are_read() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_s(std::process::id()) > 0.0, "this process has used CPU");
        assert_eq!(cpu_s(u32::MAX), 0.0, "no such process");
        // Present on every Linux with IPv4; the value is whatever the system has seen.
        let _ = udp_rcvbuf_errors();
        assert!(std::fs::read_to_string("/proc/net/snmp").unwrap().contains("RcvbufErrors"));
    }

    #[test]
    fn nodes_spread_over_loopback_addresses() {
        assert_eq!(node_bind_addr(0).to_string(), "127.0.0.1:0");
        assert_eq!(node_bind_addr(NODES_PER_ADDRESS - 1).to_string(), "127.0.0.1:0");
        assert_eq!(node_bind_addr(NODES_PER_ADDRESS).to_string(), "127.0.1.1:0");
        assert_eq!(node_bind_addr(99_999).to_string(), "127.0.4.1:0");
    }

    #[test]
    fn the_cmas_refusals_are_read_from_its_metrics_largest_first() {
        let text = "# HELP assim_cma_rejected_total x\n\
                    assim_cma_rejected_total{reason=\"replayed\"} 3\n\
                    assim_cma_rejected_total_other{reason=\"x\"} 9\n\
                    assim_cma_rejected_total{reason=\"first_contact_budget\"} 120\n\
                    assim_cma_rejected_total{reason=\"bad\"} not-a-number\n\
                    assim_cma_rejected_total{reason=\"decode\"} 3\n";
        let r = labelled(text, "assim_cma_rejected_total");
        assert_eq!(
            r,
            [("first_contact_budget".into(), 120), ("decode".into(), 3), ("replayed".into(), 3)]
        );
        assert_eq!(reasons(&r), "first_contact_budget 120, decode 3, replayed 3");
        assert_eq!(reasons(&labelled("", "assim_cma_rejected_total")), "none");
    }

    #[test]
    fn a_ring_of_fewer_than_three_has_fewer_peers() {
        assert_eq!([1, 2, 3, 100_000].map(want_peers), [0, 1, 2, 2]);
    }
}
