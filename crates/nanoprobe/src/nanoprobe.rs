//! The nanoprobe driver: pins the CMA's key, then drives the nanoprobe shell
//! ([`assim_probe_shell::Shell`]) until it is told to stop, and leaves with a goodbye on
//! shutdown.
//!
//! The shell decides (registration, heartbeats, the spool, check and discovery schedules,
//! limits); this driver only owns IO: it feeds the shell datagrams, timer expiries, local
//! events, check and collector results with `now`, sends what it transmits, re-arms one timer
//! at its `poll_timeout`, and carries out its events (run a check or collector, stop). The
//! spool is the shell's, over the real disk ([`assim_log::FileStorage`] in `DATA_DIR/spool`).
//!
//! The CMA key comes from a join token (`--token`), from the pin file written at the first
//! enrollment (`cma.pin` in the data directory), or — only when explicitly asked for with
//! `--trust-on-first-use` — from the CMA itself on first contact. Reliable frames (commands) are
//! accepted from the pinned CMA only; heartbeats from nodes whose keys the CMA handed out.
//!
//! The CMA's addresses (issue 14): `--cma` (repeatable, or the config key `cma`) if given, else
//! those of the pin file, which the join token filled at enrolment (up to 16, in the token's
//! order). The shell sends to one and moves to the next when the CMA is silent there
//! ([`assim_probe_shell::cma_addrs`]); the metrics file names the current one and counts the
//! moves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use assim_log::FileStorage;
use assim_probe_shell::{Event, Shell, ShellConfig, Spool, WallClock};
use assim_seal::{Identity, JoinToken, Sealer};
use assim_wire::msg;
use assim_wire::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::checks_probe::{CheckRunner, Done};
use crate::discovery::Collectors;

/// How the nanoprobe learns the CMA's key.
#[derive(Clone, Debug)]
pub enum Enrollment {
    /// A join token from `cma token create` (pins the key, proves the secret).
    Token(String),
    /// Ask the CMA for its key on first contact and pin it (labs and demos).
    TrustOnFirstUse,
    /// Use the pin written by an earlier enrollment; fail if there is none.
    PinnedOnly,
}

/// Everything a nanoprobe needs to run.
#[derive(Clone, Debug)]
pub struct NanoprobeOptions {
    /// The CMA's UDP addresses, in order (empty: those in the token or pin), validated
    /// ([`assim_probe_shell::cma_addrs::validate`]).
    pub cma: Vec<SocketAddr>,
    /// Local UDP address for heartbeats and CMA traffic.
    pub listen: SocketAddr,
    /// The address to tell the CMA and peers (default: derived from `listen` and the route to the CMA).
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub enrollment: Enrollment,
    /// The host name to report (default: the kernel's host name).
    pub hostname: Option<String>,
    /// The spool's size limit in bytes (see [`assim_probe_shell`] for what happens when it is full).
    pub spool_max_bytes: u64,
    /// Discovery agents directory and limits.
    pub discovery: crate::discovery::DiscoveryOptions,
    /// Where plugins of checks declared by local programs must live (empty: the defaults,
    /// [`crate::local_checks::DEFAULT_PLUGIN_DIRS`]).
    pub check_plugin_dirs: Vec<PathBuf>,
    /// Whether local programs may send statistics (issue 17 item 5; off: nothing is sent).
    pub statistics: bool,
    /// How often the statistics batch is sent.
    pub statistics_interval: Duration,
    /// Whether check perfdata is sent as statistics (needs `statistics`).
    pub statistics_perfdata: bool,
    /// Whether host figures (load, memory, root filesystem) are sent as statistics (needs
    /// `statistics`).
    pub statistics_host: bool,
}

/// The default spool limit: 64 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The CMA a nanoprobe is pinned to, kept as `cma.pin` in its data directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CmaPin {
    pub node_id: NodeId,
    /// Hex of the X25519 public key.
    pub public_key: String,
    /// The CMA's addresses from the join token (or the one first contacted, trusted on first
    /// use), in order.
    #[serde(default)]
    pub addrs: Vec<SocketAddr>,
}

impl CmaPin {
    /// The pinned public key.
    pub fn key(&self) -> anyhow::Result<[u8; 32]> {
        let bytes = hex::decode(&self.public_key).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
        bytes.context("the CMA key in the pin file is not 64 hex digits")
    }
}

/// The CMA addresses to use: `configured` (`--cma`, already validated) if any, else the pin's
/// (a repeated address counted once, as a token made with the same `--advertise` twice
/// would have it), checked with the fix named.
pub fn cma_addrs(
    configured: &[SocketAddr],
    pin: &CmaPin,
    data_dir: &Path,
) -> anyhow::Result<Vec<SocketAddr>> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(pin.addrs.len());
    for a in &pin.addrs {
        if !addrs.contains(a) {
            addrs.push(*a);
        }
    }
    if addrs.len() < pin.addrs.len() {
        warn!(addrs = ?pin.addrs, "the pinned CMA addresses repeat an address; using each once");
    }
    if addrs.is_empty() {
        bail!(
            "no CMA address: the join token (pin file {}) carries none; pass --cma ADDR:PORT \
             (repeatable) or set cma in the config file",
            pin_path(data_dir).display()
        );
    }
    assim_probe_shell::cma_addrs::validate(&addrs).map_err(|e| {
        anyhow::anyhow!(
            "the CMA addresses of the join token (pin file {}): {e}; pass --cma ADDR:PORT \
             (repeatable) to override them, or enroll again with a new token",
            pin_path(data_dir).display()
        )
    })?;
    Ok(addrs)
}

fn pin_path(dir: &Path) -> PathBuf {
    dir.join("cma.pin")
}

/// The CMA pin in `dir` (`cma.pin`), if there is one.
pub fn read_pin(dir: &Path) -> anyhow::Result<Option<CmaPin>> {
    let path = pin_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let pin: CmaPin = serde_json::from_str(&s).with_context(|| {
                format!("{} is corrupt; remove it and enroll again with --token", path.display())
            })?;
            pin.key().with_context(|| format!("{} is corrupt", path.display()))?;
            Ok(Some(pin))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the CMA pin to `dir` (atomically, by rename).
pub fn write_pin(dir: &Path, pin: &CmaPin) -> anyhow::Result<()> {
    let path = pin_path(dir);
    let tmp = dir.join("cma.pin.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(pin)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The nanoprobe shell over the spool on disk.
pub type ProbeShell = Shell<FileStorage>;

/// Opens the spool in `DATA_DIR/spool` (at most `max_bytes`, records up to the one message
/// limit [`assim_probe_shell::limits::MAX_MESSAGE`]).
pub fn open_spool(data_dir: &Path, max_bytes: u64) -> anyhow::Result<Spool<FileStorage>> {
    let dir = data_dir.join("spool");
    let storage = FileStorage::open(&dir)
        .with_context(|| format!("cannot open the spool in {}", dir.display()))?;
    Spool::open(storage, max_bytes, assim_probe_shell::limits::MAX_MESSAGE)
        .with_context(|| format!("cannot open the spool in {}", dir.display()))
}

/// A shell for `sealer`'s node, pinned to `cma`, over the spool in `data_dir` (the daemon's
/// and `assim loadgen`'s). Call [`Shell::start`] next.
pub fn open_shell(
    sealer: Sealer,
    cma: (NodeId, SocketAddr),
    hello: msg::Hello,
    data_dir: &Path,
    spool_max_bytes: u64,
    discovery_defaults: bool,
    now: Instant,
) -> anyhow::Result<ProbeShell> {
    let spool = open_spool(data_dir, spool_max_bytes)?;
    let session = sealer.session();
    let cfg = ShellConfig {
        node_id: sealer.node_id(),
        cma_id: cma.0,
        cma_addr: cma.1,
        session,
        seed: session ^ 0x9e37_79b9_7f4a_7c15,
        hello,
        reliable: assim_reliable::Config::default(),
        discovery_defaults,
        wall_clock: WallClock::new(now, Timestamp::now().micros()),
    };
    Ok(Shell::new(cfg, spool, Some(sealer), now))
}

/// Runs a nanoprobe until `shutdown` resolves (then says goodbye) or the CMA tells it to stop.
pub async fn run(
    opts: NanoprobeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // 0700 before anything is written into it (the identity, the database, the inbox).
    assim_seal::create_private_dir(&opts.data_dir)?;
    let identity = Identity::load_or_create(&opts.data_dir)?;
    let socket = UdpSocket::bind(opts.listen).await.with_context(|| {
        format!("cannot bind UDP {}: is another nanoprobe using it?", opts.listen)
    })?;
    let session = assim_seal::next_session(&opts.data_dir)?;
    let mut sealer = Sealer::new(identity.clone(), session);

    // Which CMA do we obey?
    let token = match &opts.enrollment {
        Enrollment::Token(t) => Some(JoinToken::decode(t).context("the join token is not valid")?),
        _ => None,
    };
    let existing = read_pin(&opts.data_dir)?;
    let pin = match (&token, existing) {
        (Some(t), Some(p)) if p.key()? != t.cma_public_key => bail!(
            "this nanoprobe is pinned to CMA {} ({}), but the token is for CMA {} ({}); \
             remove {} to enroll with the new CMA",
            p.node_id,
            assim_seal::fingerprint(&p.key()?),
            t.cma_node_id,
            t.fingerprint(),
            pin_path(&opts.data_dir).display()
        ),
        (Some(t), _) => {
            let pin = CmaPin {
                node_id: t.cma_node_id,
                public_key: hex::encode(t.cma_public_key),
                addrs: t.cma_addrs.clone(),
            };
            write_pin(&opts.data_dir, &pin)?;
            pin
        }
        (None, Some(p)) => p,
        (None, None) => match opts.enrollment {
            Enrollment::TrustOnFirstUse => {
                // The key is asked of the addresses in turn until one answers; the pin keeps
                // them all.
                if opts.cma.is_empty() {
                    bail!("--trust-on-first-use needs --cma ADDR:PORT");
                }
                let mut pin = fetch_cma_key(&socket, &mut sealer, &opts.cma).await?;
                pin.addrs = opts.cma.clone();
                write_pin(&opts.data_dir, &pin)?;
                pin
            }
            _ => bail!(
                "no CMA is pinned in {}: enroll with --token TOKEN (run `cma token create` on the CMA) \
                 or, in a lab, --trust-on-first-use",
                opts.data_dir.display()
            ),
        },
    };
    let addrs = cma_addrs(&opts.cma, &pin, &opts.data_dir)?;
    let cma_addr = addrs[0];
    let cma_id = pin.node_id;
    sealer.add_peer(cma_id, pin.key()?);

    let advertise = match opts.advertise {
        Some(a) => a,
        None => advertised_addr(&socket, cma_addr)?,
    };
    let hostname = match &opts.hostname {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
    };
    info!(
        node = %identity.node_id(), host = %hostname, listen = %opts.listen, advertise = %advertise,
        cma = ?addrs, cma_key = %assim_seal::fingerprint(&pin.key()?), "nanoprobe started"
    );

    let started = Instant::now();
    let hello = msg::Hello {
        version: assim_wire::VERSION.to_string(),
        hostname: hostname.clone(),
        listen_addr: advertise.to_string(),
        addresses: local_addresses(),
        started_at: Timestamp::now().micros(),
        token_proof: token.as_ref().map(|t| t.proof(identity.node_id(), &identity.public_key())),
        peer_epoch: 0,
        spool_incarnation: 0,
        acked_through: 0,
    };
    let shell = open_shell(
        sealer,
        (cma_id, cma_addr),
        hello,
        &opts.data_dir,
        opts.spool_max_bytes,
        true,
        started,
    )?;
    let collectors = Collectors::new(
        opts.discovery.clone(),
        identity.node_id().to_string(),
        hostname.clone(),
        started,
    );
    let mut shell = shell.with_cma_addrs(addrs).context("the CMA addresses")?;
    // Registrations of local programs from the last run: each gets a whole TTL from now; the
    // declared checks are validated again.
    let saved = crate::local_state::load(&opts.data_dir);
    shell.restore_apps(saved.registrations(), started);
    let mut local_checks = crate::local_checks::LocalChecks::new(&opts.check_plugin_dirs);
    let mut restored = Vec::new();
    for d in saved.checks {
        match crate::local_checks::build(&d, &local_checks.dirs, local_checks.own_uid) {
            Ok(c) => {
                restored.push(c);
                local_checks.declared.insert(d.name.clone(), d);
            }
            Err(e) => {
                tracing::error!(check = %d.name, error = %e, "a declared local check is no longer valid; dropped (declare it again)")
            }
        }
    }
    shell.restore_local_checks(restored, started);
    shell.set_statistics(opts.statistics, opts.statistics_interval, started);
    shell.set_statistics_sources(opts.statistics_perfdata, opts.statistics_host);
    let (_local_events, mut local_rx) = crate::local_socket::start(&opts.data_dir)?;
    let mut p = Probe {
        shell,
        data_dir: opts.data_dir.clone(),
        local_checks,
        socket,
        metrics_path: opts.data_dir.join("nanoprobe.prom"),
        next_metrics: started,
        collectors,
        confirmations: Default::default(),
        checks: CheckRunner::new(Default::default()),
        host_figures: crate::host_figures::Reader::default(),
        stop: false,
    };
    // The agents directory is listed before the schedule first runs.
    p.collectors.handle_timeout(&mut p.shell, started);
    p.shell.start(started);
    p.carry_out();
    p.flush().await;

    tokio::pin!(shutdown);
    let mut rbuf = vec![0u8; 65536];
    loop {
        let leaving = p.shell.is_leaving();
        let deadline = [
            p.shell.poll_timeout(),
            Some(p.next_metrics),
            (!leaving).then(|| p.collectors.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            r = p.socket.recv_from(&mut rbuf) => match r {
                Ok((len, src)) => p.shell.handle_datagram(&rbuf[..len], src, Instant::now()),
                Err(e) => debug!(error = %e, "UDP receive failed"),
            },
            c = p.collectors.next() => p.shell.collector_done(&c.name, c.result, Instant::now()),
            done = p.checks.next() => {
                let now = Instant::now();
                match done {
                    Done::Scheduled { name, result } => p.shell.check_done(&name, &result, now),
                    Done::RunNow { command_id, name, result } => {
                        p.shell.check_now_done(command_id, &name, &result, now)
                    }
                }
            }
            Some(req) = local_rx.recv() => {
                let answer = crate::local_socket::handle(&mut p.shell, &mut p.confirmations, &mut p.local_checks, req, Instant::now());
                // A registration is on disk before its program hears "ok".
                p.save_local();
                if let Some((tx, reply)) = answer {
                    let _ = tx.send(reply);
                }
            }
            _ = sleep_until(deadline) => {}
            _ = &mut shutdown, if !leaving => {
                info!("stopping: saying goodbye to the CMA");
                p.shell.leave(Instant::now());
            }
        }
        // Timers run every turn, so a flood of datagrams cannot starve the heartbeats.
        let now = Instant::now();
        p.shell.set_wall_clock(now, Timestamp::now().micros());
        if !p.shell.is_leaving() {
            p.collectors.handle_timeout(&mut p.shell, now);
        }
        // The host figures go into the batch the shell makes in this turn.
        if p.shell.host_figures_due(now) {
            let figures = p.host_figures.read();
            p.shell.put_host_figures(&figures);
        }
        p.shell.handle_timeout(now);
        if now >= p.next_metrics {
            p.write_metrics();
            crate::memory::release_free_memory();
            p.next_metrics = now + METRICS_INTERVAL;
        }
        p.save_local();
        p.carry_out();
        p.flush().await;
        if p.stop {
            return Ok(());
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Asks the CMA for its key until it answers (trust on first use), at the pace the CMA sets:
/// [`assim_seal::KeyFetch`] backs off without an answer, goes round the CMA's addresses
/// (`cmas`, at least one) and honours the CMA's `Busy`.
pub async fn fetch_cma_key(
    socket: &UdpSocket,
    sealer: &mut Sealer,
    cmas: &[SocketAddr],
) -> anyhow::Result<CmaPin> {
    // Jitter seed: differs per node (its id) and per start (its session).
    let id = sealer.node_id();
    let seed = sealer.session() ^ u64::from_le_bytes(id.as_bytes()[8..].try_into().expect("8"));
    let mut fetch = assim_seal::KeyFetch::with_addresses(cmas.to_vec(), Instant::now(), seed);
    let mut buf = vec![0u8; 2048];
    let mut sent = 0u64;
    while let Some(due) = fetch.poll_timeout() {
        if let Some(req) = fetch.poll_request(Instant::now(), sealer) {
            let cma = fetch.target();
            socket
                .send_to(&req, cma)
                .await
                .with_context(|| format!("cannot send to the CMA at {cma}"))?;
            sent += 1;
            if sent.is_multiple_of(5) {
                info!(cma = %cma, attempts = sent, "still waiting for the CMA to answer a key request");
            }
            continue;
        }
        let Ok(Ok((len, src))) =
            tokio::time::timeout_at(due.into(), socket.recv_from(&mut buf)).await
        else {
            continue;
        };
        match fetch.handle(Instant::now(), src, &buf[..len], sealer) {
            assim_seal::key_fetch::Answer::Key { id, key } => {
                warn!(
                    cma = %src, key = %assim_seal::fingerprint(&key),
                    "trusting the CMA's key on first use; it is pinned from now on"
                );
                return Ok(CmaPin {
                    node_id: id,
                    public_key: hex::encode(key),
                    addrs: cmas.to_vec(),
                });
            }
            assim_seal::key_fetch::Answer::Busy(wait) => {
                debug!(cma = %src, wait_ms = wait.as_millis() as u64, "the CMA is busy registering others; asking again later");
            }
            assim_seal::key_fetch::Answer::Ignored => {}
        }
    }
    anyhow::bail!("the key fetch from {cmas:?} ended without a key")
}

/// The address peers and the CMA should use to reach `socket`: its own address if specific,
/// otherwise the local address of the route towards the CMA.
fn advertised_addr(socket: &UdpSocket, cma: SocketAddr) -> anyhow::Result<SocketAddr> {
    let local = socket.local_addr()?;
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let probe = std::net::UdpSocket::bind(if cma.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    probe.connect(cma).with_context(|| format!("no route to the CMA at {cma}"))?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), local.port()))
}

/// The host's interface addresses with prefix length, loopback excluded ("192.0.2.7/24").
/// Full interface discovery comes from the discovery collectors; this is the hello's summary.
fn local_addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out = Vec::new();
    for a in addrs {
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else { continue };
        if let (Some(ip), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let ip = ip.ip();
            if !ip.is_loopback() {
                out.push(format!("{ip}/{}", u32::from(m.ip()).count_ones()));
            }
        } else if let (Some(ip), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let ip = ip.ip();
            if !ip.is_loopback() {
                out.push(format!("{ip}/{}", u128::from(m.ip()).count_ones()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// How often the nanoprobe rewrites its metrics file.
const METRICS_INTERVAL: Duration = Duration::from_secs(10);

/// The driver's state: the shell and the IO around it. One task owns it.
struct Probe {
    shell: ProbeShell,
    data_dir: PathBuf,
    /// The checks local programs declared, with who declared them ([`crate::local_checks`]).
    local_checks: crate::local_checks::LocalChecks,
    socket: UdpSocket,
    metrics_path: PathBuf,
    next_metrics: Instant,
    /// Runs the collectors the shell asks for ([`crate::discovery`]).
    collectors: Collectors,
    /// Local events waiting for the CMA's acknowledgement ([`crate::local_socket`]).
    confirmations: crate::local_socket::Confirmations,
    /// Runs the checks the shell asks for ([`crate::checks_probe`]).
    checks: CheckRunner,
    /// Reads the host figures for statistics ([`crate::host_figures`]).
    host_figures: crate::host_figures::Reader,
    /// The shell said stop (the CMA's shutdown, or the goodbye is done).
    stop: bool,
}

impl Probe {
    /// Saves the local programs' registrations if they changed ([`crate::local_state`]).
    fn save_local(&mut self) {
        if !self.shell.take_local_changed() {
            return;
        }
        let mut state =
            crate::local_state::LocalState::from_registrations(&self.shell.apps().registrations());
        state.checks = self.local_checks.declared.values().cloned().collect();
        if let Err(e) = crate::local_state::save(&self.data_dir, &state) {
            tracing::error!(
                error = format!("{e:#}"),
                "cannot save the local programs' registrations; a restart would forget the changes"
            );
        }
    }

    /// Carries out the shell's events.
    fn carry_out(&mut self) {
        while let Some(ev) = self.shell.poll_event() {
            match ev {
                Event::Stop { reason } => {
                    info!(%reason, "the CMA asked this nanoprobe to stop");
                    self.stop = true;
                }
                Event::Left => {
                    info!("goodbye acknowledged; stopped");
                    self.stop = true;
                }
                Event::LeaveTimedOut => self.stop = true,
                Event::RunCheck(check) => self.checks.run(check),
                Event::RunCheckNow { command_id, check } => self.checks.run_now(command_id, check),
                Event::RunCollector { name, params } => self.collectors.run(name, params),
                Event::Reported { kind, record } => info!(
                    kind = msg::ReportKind::try_from(kind).map(|k| k.name()).unwrap_or("?"),
                    record, "reported a peer to the CMA"
                ),
                Event::HelloSent { .. }
                | Event::Delivered(_)
                | Event::PeerSet(_)
                | Event::Spooled { .. }
                | Event::Ignored { .. } => {}
            }
        }
        // A new discovery schedule may start or stop the LLDP/CDP listener.
        self.collectors.sync_l2(self.shell.discovery_schedule());
    }

    /// Sends what the shell transmits (commits the spool first) and answers the local events
    /// the CMA now holds.
    async fn flush(&mut self) {
        let now = Instant::now();
        let (cma_id, _) = self.shell.cma();
        while let Some(d) = self.shell.poll_datagram(now) {
            if d.to == cma_id {
                if let Err(e) = self.socket.send_to(&d.bytes, d.addr).await {
                    debug!(error = %e, "cannot send to the CMA");
                }
            } else {
                let _ = self.socket.try_send_to(&d.bytes, d.addr);
            }
        }
        // Durable position: what the spool's log has fsync'd (acknowledged records included).
        let spool = self.shell.spool();
        let acked = spool.stats().acked_through;
        let durable = spool.log().map_or(acked, |l| l.durable_lsn()).max(acked);
        self.confirmations.settle(durable, acked);
    }

    /// Writes the nanoprobe's counters in the Prometheus text format (for node_exporter's
    /// textfile collector), atomically.
    fn write_metrics(&self) {
        let spool = self.shell.spool();
        let s = spool.stats();
        let hb = self.shell.heartbeats().stats();
        let shell = self.shell.stats();
        let (backlog, backlog_bytes) = self.shell.backlog();
        let metrics: [(&str, &str, &str, u64); 18] = [
            (
                "spool_records",
                "gauge",
                "Records in the spool not yet acknowledged by the CMA.",
                spool.unacked(),
            ),
            ("spool_bytes", "gauge", "Bytes the spool uses on disk.", spool.disk_bytes()),
            ("spooled_total", "counter", "Records appended to the spool.", s.spooled),
            (
                "spool_dropped_total",
                "counter",
                "Records dropped because the spool was full (0: the backlog keeps them).",
                s.dropped,
            ),
            (
                "spool_unspooled_total",
                "counter",
                "Records sent without the spool because it was unavailable (its disk failed).",
                s.unspooled,
            ),
            (
                "spool_backlog_records",
                "gauge",
                "Messages waiting in memory for room in the full spool (latest per subject).",
                backlog as u64,
            ),
            (
                "spool_backlog_bytes",
                "gauge",
                "Bytes of the messages waiting in memory for room in the spool.",
                backlog_bytes as u64,
            ),
            (
                "spool_backlogged_total",
                "counter",
                "Messages the full spool could not take, kept in memory instead.",
                s.backlogged,
            ),
            (
                "spool_coalesced_total",
                "counter",
                "Waiting messages replaced by newer news on the same subject (peer, check, …).",
                s.coalesced,
            ),
            (
                "spool_refused_total",
                "counter",
                "Messages refused at the source because the spool was full (local events: the \
                 submitter got the error).",
                s.refused,
            ),
            (
                "spool_errors_total",
                "counter",
                "Failed spool syncs, removals and position writes.",
                s.errors,
            ),
            (
                "spool_reopened_total",
                "counter",
                "Times the spool was reopened after a failed sync.",
                s.reopened,
            ),
            ("resent_total", "counter", "Spool records sent again.", s.resent),
            (
                "oversized_total",
                "counter",
                "Messages over the size limit, replaced by their error form.",
                shell.oversized,
            ),
            (
                "heartbeats_sent_total",
                "counter",
                "Heartbeats sent to ring neighbours.",
                hb.heartbeats_sent,
            ),
            (
                "heartbeats_received_total",
                "counter",
                "Heartbeats received from ring neighbours.",
                hb.heartbeats_received,
            ),
            (
                "datagrams_rejected_total",
                "counter",
                "Datagrams dropped (authentication, replay, unexpected).",
                shell.rejected,
            ),
            (
                "cma_failovers_total",
                "counter",
                "Moves to the CMA's next address after it was silent at the current one.",
                shell.cma_failovers,
            ),
        ];
        let mut text = String::new();
        for (name, kind, help, value) in metrics {
            text.push_str(&format!(
                "# HELP assim_nanoprobe_{name} {help}\n# TYPE assim_nanoprobe_{name} {kind}\nassim_nanoprobe_{name} {value}\n"
            ));
        }
        let addrs = self.shell.cma_addrs();
        text.push_str(&format!(
            "# HELP assim_nanoprobe_cma_addresses The CMA addresses this nanoprobe knows.\n\
             # TYPE assim_nanoprobe_cma_addresses gauge\nassim_nanoprobe_cma_addresses {}\n\
             # HELP assim_nanoprobe_cma_address The CMA address the nanoprobe sends to (1).\n\
             # TYPE assim_nanoprobe_cma_address gauge\n\
             assim_nanoprobe_cma_address{{address=\"{}\"}} 1\n",
            addrs.list().len(),
            addrs.current()
        ));
        text.push_str(
            "# HELP assim_nanoprobe_statistics_dropped_total Check perfdata items and host \
             figures not sent as statistics, by reason.\n\
             # TYPE assim_nanoprobe_statistics_dropped_total counter\n",
        );
        for (reason, n) in self.shell.statistics_dropped().by_reason() {
            text.push_str(&format!(
                "assim_nanoprobe_statistics_dropped_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        for (figure, n) in self.host_figures.failures() {
            text.push_str(&format!(
                "assim_nanoprobe_statistics_dropped_total{{reason=\"unreadable_{figure}\"}} {n}\n"
            ));
        }
        let tmp = self.metrics_path.with_extension("prom.tmp");
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.metrics_path))
            .is_err()
        {
            debug!(path = %self.metrics_path.display(), "cannot write the metrics file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("assim-pin-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A pin file as earlier versions wrote it (one address from a token or first contact)
    /// reads as before; one without addresses reads too, and then needs --cma.
    #[test]
    fn pin_files_of_earlier_versions_still_read() {
        let d = dir("compat");
        let key = "ab".repeat(32);
        let old = format!(
            "{{\n  \"node_id\": \"0190b1a2-0000-7000-8000-000000000001\",\n  \"public_key\": \
             \"{key}\",\n  \"addrs\": [\n    \"192.0.2.10:1984\"\n  ]\n}}\n"
        );
        std::fs::write(d.join("cma.pin"), &old).unwrap();
        let pin = read_pin(&d).unwrap().unwrap();
        assert_eq!(pin.addrs, [a("192.0.2.10:1984")]);
        assert_eq!(cma_addrs(&[], &pin, &d).unwrap(), [a("192.0.2.10:1984")]);
        // Written back, it is the same file.
        write_pin(&d, &pin).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("cma.pin")).unwrap(), old);
        let bare = format!(
            "{{\"node_id\": \"0190b1a2-0000-7000-8000-000000000001\", \"public_key\": \"{key}\"}}"
        );
        std::fs::write(d.join("cma.pin"), bare).unwrap();
        let pin = read_pin(&d).unwrap().unwrap();
        assert!(pin.addrs.is_empty());
        let e = cma_addrs(&[], &pin, &d).unwrap_err().to_string();
        assert!(e.contains("no CMA address") && e.contains("--cma"), "{e}");
        assert_eq!(cma_addrs(&[a("192.0.2.7:1984")], &pin, &d).unwrap(), [a("192.0.2.7:1984")]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The pin's addresses in order, each once; --cma replaces them; an address nobody can
    /// send to is refused with the way out.
    #[test]
    fn the_pinned_addresses_are_used_in_order_unless_cma_is_given() {
        let d = dir("order");
        let mut pin = CmaPin {
            node_id: NodeId([3; 16]),
            public_key: "cd".repeat(32),
            addrs: vec![a("192.0.2.2:1984"), a("192.0.2.1:1984"), a("192.0.2.2:1984")],
        };
        assert_eq!(cma_addrs(&[], &pin, &d).unwrap(), [a("192.0.2.2:1984"), a("192.0.2.1:1984")]);
        let given = [a("198.51.100.1:1984")];
        assert_eq!(cma_addrs(&given, &pin, &d).unwrap(), given);
        pin.addrs = vec![a("0.0.0.0:1984")];
        let e = cma_addrs(&[], &pin, &d).unwrap_err().to_string();
        assert!(e.contains("0.0.0.0:1984") && e.contains("--cma") && e.contains("cma.pin"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
