//! Wire mode (`assim sim --wire`): M simulated nanoprobes in this process, over real UDP on
//! loopback, against a real `cma` process.
//!
//! Each simulated node is one tokio task with its own UDP socket on 127.0.0.1 (so the kernel
//! demultiplexes: the sealed header names the sender, not the receiver), its own X25519
//! identity and [`Sealer`], and trust-on-first-use enrollment (a `KeyRequest` to the CMA, whose
//! `KeyReply` key is pinned). It then runs the real nanoprobe shell (`assim-probe-shell`, the
//! daemon's own logic) with that sealer: hello, heartbeats to the ring neighbours the CMA
//! assigns (their keys come with the peer set), reports and peer status through a spool in
//! memory that the CMA's acknowledgements drain, probe replies. The task only carries bytes.
//!
//! The run: start the CMA (`cma --open-enrollment` on a free loopback port, default timing) unless
//! `--cma`/`--cma-api` name a running one; start every node at once (the registration storm)
//! and poll `/api/v1/status` until all are `up` with two neighbours; let it settle; measure the
//! CMA's datagrams in and out per node per second from `/metrics` over `--steady`; then stop K
//! nodes at once (`--crash K`: their tasks end and their sockets close, like `kill -9`) and
//! wait for each one's `host.down` on `/api/v1/events`. One socket per node: RLIMIT_NOFILE is
//! raised as far as the hard limit allows (root may raise that too).

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use assim_log::MemStorage;
use assim_probe_shell::{Event, Shell, ShellConfig, Spool, WallClock};
use assim_reliable::Config as RelConfig;
use assim_seal::{Identity, Sealer};
use assim_wire::msg;
use assim_wire::{DatagramKind, NodeId, Timestamp};
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
    heartbeats_sent: AtomicU64,
    heartbeats_received: AtomicU64,
    reports: AtomicU64,
    rejected: AtomicU64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
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
}

async fn enroll(
    socket: &UdpSocket,
    sealer: &mut Sealer,
    cma: SocketAddr,
) -> anyhow::Result<(NodeId, [u8; 32])> {
    let mut req = Vec::new();
    let mut buf = vec![0u8; 2048];
    for attempt in 0u32..40 {
        sealer.key_request(&mut req);
        socket.send_to(&req, cma).await?;
        // Spread retries: a storm of 20k key requests overflows the CMA's socket buffer.
        let wait = Duration::from_millis(500 + (rand::random::<u64>() % 500))
            .saturating_mul(1 << attempt.min(3));
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((len, src))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            if src == cma
                && let Ok(o) = sealer.open(&buf[..len])
                && o.header.kind == DatagramKind::KeyReply
                && let Some(key) = o.header.sender_key
            {
                return Ok((o.header.sender, key));
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
    let socket = UdpSocket::bind("127.0.0.1:0").await.context("bind")?;
    let session = assim_seal::new_session(Timestamp::now().millis(), rand::random());
    let mut sealer = Sealer::new(identity.clone(), session);
    let (cma_id, key) = tokio::select! {
        r = enroll(&socket, &mut sealer, cma) => r?,
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
        },
        reliable: RelConfig::default(),
        // Simulated nanoprobes run no collectors.
        discovery_defaults: false,
        wall_clock: WallClock::new(now, Timestamp::now().micros()),
    };
    let mut shell = Shell::new(cfg, spool, Some(sealer), now);
    shell.start(now);
    let mut n = Node { socket, shell, shared, hb_sent: 0, hb_received: 0, rejected: 0 };
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
            _ = &mut stop => return Ok(()),
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

/// (up, up with two neighbours) among our nodes.
fn count_up(api: SocketAddr) -> anyhow::Result<(usize, usize)> {
    let v: serde_json::Value = serde_json::from_str(&http_get(api, "/api/v1/status")?)?;
    let mut up = 0;
    let mut ring = 0;
    for n in v["nodes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if n["hostname"].as_str().is_some_and(|h| h.starts_with("wire-")) && n["state"] == "up" {
            up += 1;
            if n["neighbours"].as_array().is_some_and(|a| a.len() == 2) {
                ring += 1;
            }
        }
    }
    Ok((up, ring))
}

/// An event as `/api/v1/events` serves it (the fields wire mode reads). The API's JSON names
/// the type `type`, not the core's `kind`.
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
    pub enrolled_s: f64,
    pub all_up_s: f64,
    pub registrations_per_s: f64,
    pub ring_formed_s: Option<f64>,
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

/// Runs wire mode; prints progress on stderr and returns the figures.
pub fn run(opts: WireOptions) -> anyhow::Result<WireReport> {
    let m = opts.nodes;
    let limit = raise_nofile(m as u64 + 1024);
    let (cma_proc, cma, api) = start_cma(&opts)?;
    eprintln!("wire: CMA at {cma} (API {api}); starting {m} simulated nanoprobes");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let shared = Arc::new(Shared::default());
    // One socket per node: this process takes what its open-file limit allows, worker
    // processes (`--wire-worker`, each with its own limit) the rest.
    let cap = (limit as usize).saturating_sub(512).clamp(1, 15_000);
    let local = m.min(cap);
    let t0 = Instant::now();
    let mut stops = spawn_nodes(&rt, 0, local, cma, &shared);
    let mut workers = Workers(Vec::new());
    let mut first = local;
    while first < m {
        let count = (m - first).min(cap);
        workers.0.push((first, count, spawn_worker(first, count, cma, api)?));
        first += count;
    }
    if !workers.0.is_empty() {
        eprintln!(
            "wire: {local} nodes in this process, {} in {} worker processes (open-file limit {limit})",
            m - local,
            workers.0.len()
        );
    }
    let mut report =
        WireReport { nodes: m, nofile_limit: limit, local_nodes: local, ..WireReport::default() };
    // Registration storm: until every node is up (and then until the ring is whole).
    let mut last_print = Instant::now();
    let mut enrolled_at = None;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if enrolled_at.is_none() && shared.enrolled.load(Ordering::Relaxed) as usize == local {
            enrolled_at = Some(t0.elapsed().as_secs_f64());
        }
        let (up, ring) = count_up(api).unwrap_or((0, 0));
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "wire: {:.0} s: {} enrolled, {up} up, {ring} with two neighbours",
                t0.elapsed().as_secs_f64(),
                shared.enrolled.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
        if up == m && report.all_up_s == 0.0 {
            report.all_up_s = t0.elapsed().as_secs_f64();
            report.registrations_per_s = m as f64 / report.all_up_s;
            eprintln!(
                "wire: all {m} up after {:.1} s = {:.0} registrations/s",
                report.all_up_s, report.registrations_per_s
            );
        }
        if up == m && ring == m {
            report.ring_formed_s = Some(t0.elapsed().as_secs_f64());
            break;
        }
        if t0.elapsed() > opts.form_timeout {
            if report.all_up_s == 0.0 {
                bail!("only {up} of {m} nodes up after {:?}", opts.form_timeout);
            }
            eprintln!(
                "wire: ring not whole after {:?} ({ring} of {m}); going on",
                opts.form_timeout
            );
            break;
        }
    }
    report.enrolled_s = enrolled_at.unwrap_or(f64::NAN);

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
        } else if let Some((_, _, w)) =
            workers.0.iter_mut().find(|(f, c, _)| (*f..*f + *c).contains(&i))
            && let Some(stdin) = w.stdin.as_mut()
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

/// Worker processes; killed when dropped.
struct Workers(Vec<(usize, usize, Child)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_worker(
    first: usize,
    count: usize,
    cma: SocketAddr,
    api: SocketAddr,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    if std::env::args().nth(1).as_deref() == Some("sim") {
        cmd.arg("sim");
    }
    cmd.args(["--wire", "--wire-worker", &format!("{first}:{count}")])
        .arg("--cma")
        .arg(cma.to_string())
        .arg("--cma-api")
        .arg(api.to_string());
    Ok(cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?)
}

/// `--wire-worker FIRST:COUNT`: runs nodes FIRST.. of a wire-mode run against `cma`; each line
/// on stdin is the index of a node to stop; ends at end of input.
pub fn worker(first: usize, count: usize, cma: SocketAddr) -> anyhow::Result<()> {
    let limit = raise_nofile(count as u64 + 256);
    if limit < count as u64 + 64 {
        bail!("worker: {count} nodes need {} open files, the limit is {limit}", count + 64);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let shared = Arc::new(Shared::default());
    let mut stops = spawn_nodes(&rt, first, count, cma, &shared);
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
        let ring = self.ring_formed_s.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "no".into());
        format!(
            "wire mode: {} simulated nanoprobes over real UDP (one socket each, open-file limit {}) against a real cma\n\
             registration storm: this process's nodes enrolled (TOFU) after {:.1} s, all up after {:.1} s = {:.0} registrations/s; ring whole after {ring}\n\
             steady state ({:.1} s): CMA {:.4} datagrams in and {:.4} out per node per second ({:.1} bytes in per node per second); {:.2} heartbeats sent per node per second\n\
             failure burst: {} nodes stopped at once, {} host.down, median {:.0} ms, max {:.0} ms after the stop; {} unexpected host.down\n\
             memory: simulator RSS {:.0} MiB for its {} nodes ({:.1} KiB per node), CMA RSS {:.0} MiB\n",
            self.nodes,
            self.nofile_limit,
            self.enrolled_s,
            self.all_up_s,
            self.registrations_per_s,
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
            self.sim_rss_mib,
            self.local_nodes,
            self.sim_rss_mib * 1024.0 / self.local_nodes.max(1) as f64,
            self.cma_rss_mib,
        )
    }
}
