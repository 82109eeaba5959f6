//! The nanoprobe driver: pins the CMA's key, registers, heartbeats its ring neighbours and
//! leaves with a goodbye on shutdown.
//!
//! The CMA key comes from a join token (`--token`), from the pin file written at the first
//! enrollment (`cma.pin` in the data directory), or — only when explicitly asked for with
//! `--trust-on-first-use` — from the CMA itself on first contact. Reliable frames (commands) are
//! accepted from the pinned CMA only; heartbeats from nodes whose keys the CMA handed out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use assim_probe::{Action as HbAction, DesiredPeers, Heartbeats};
use assim_seal::{Identity, JoinToken, Sealer};
use assim_wire::msg::{self, Body, Direct, DirectBody, Message};
use assim_wire::{DatagramKind, NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::link::{CmaLink, FromCma};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

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
    /// The CMA's UDP address (default: the first address in the token or pin).
    pub cma: Option<SocketAddr>,
    /// Local UDP address for heartbeats and CMA traffic.
    pub listen: SocketAddr,
    /// The address to tell the CMA and peers (default: derived from `listen` and the route to the CMA).
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub enrollment: Enrollment,
    /// The host name to report (default: the kernel's host name).
    pub hostname: Option<String>,
    /// The spool's size limit in bytes (see [`crate::link`] for what happens when it is full).
    pub spool_max_bytes: u64,
    /// Discovery agents directory and limits.
    pub discovery: crate::discovery::DiscoveryOptions,
}

/// The default spool limit: 64 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The CMA a nanoprobe is pinned to, kept as `cma.pin` in its data directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CmaPin {
    pub node_id: NodeId,
    /// Hex of the X25519 public key.
    pub public_key: String,
    pub addrs: Vec<SocketAddr>,
}

impl CmaPin {
    /// The pinned public key.
    pub fn key(&self) -> anyhow::Result<[u8; 32]> {
        let bytes = hex::decode(&self.public_key).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
        bytes.context("the CMA key in the pin file is not 64 hex digits")
    }
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
                let cma = opts.cma.context("--trust-on-first-use needs --cma ADDR:PORT")?;
                let pin = fetch_cma_key(&socket, &mut sealer, cma).await?;
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
    let cma_addr = match opts.cma.or_else(|| pin.addrs.first().copied()) {
        Some(a) => a,
        None => bail!("no CMA address: pass --cma ADDR:PORT"),
    };
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
        cma = %cma_addr, cma_key = %assim_seal::fingerprint(&pin.key()?), "nanoprobe started"
    );

    let started = Instant::now();
    let link =
        CmaLink::open(sealer, cma_id, cma_addr, &opts.data_dir, opts.spool_max_bytes, started)?;
    if link.unacked() > 0 {
        info!(records = link.unacked(), "the spool holds records the CMA has not acknowledged yet");
    }
    let discovery = crate::discovery::DiscoveryDriver::new(
        opts.discovery.clone(),
        identity.node_id().to_string(),
        hostname.clone(),
        started,
    );
    let (_local_events, mut local_rx) = crate::local_socket::start(&opts.data_dir)?;
    let mut p = Probe {
        link,
        socket,
        heartbeats: Heartbeats::new(identity.node_id()),
        hello: msg::Hello {
            version: assim_wire::VERSION.to_string(),
            hostname,
            listen_addr: advertise.to_string(),
            addresses: local_addresses(),
            started_at: Timestamp::now().micros(),
            token_proof: token
                .as_ref()
                .map(|t| t.proof(identity.node_id(), &identity.public_key())),
            peer_epoch: 0,
        },
        goodbye_id: None,
        stop: None,
        dropped: 0,
        metrics_path: opts.data_dir.join("nanoprobe.prom"),
        next_metrics: started,
        discovery,
        confirmations: Default::default(),
        checks: crate::checks_probe::ProbeChecks::new(rand::random(), Default::default()),
    };
    p.send_hello(started);
    p.link.resend_unacked(started);
    p.flush().await;

    tokio::pin!(shutdown);
    let mut rbuf = vec![0u8; 65536];
    let mut leaving_deadline: Option<Instant> = None;
    loop {
        let deadline = [
            p.heartbeats.poll_timeout(),
            p.link.poll_timeout(),
            leaving_deadline,
            Some(p.next_metrics),
            if leaving_deadline.is_none() { p.discovery.poll_timeout() } else { None },
            if leaving_deadline.is_none() { p.checks.poll_timeout() } else { None },
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            r = p.socket.recv_from(&mut rbuf) => match r {
                Ok((len, src)) => {
                    let d = rbuf[..len].to_vec();
                    p.handle_datagram(&d, src);
                }
                Err(e) => debug!(error = %e, "UDP receive failed"),
            },
            c = p.discovery.next() => {
                if let Some(body) = p.discovery.accept(c) {
                    p.link.send_spooled(body, Instant::now());
                }
            }
            done = p.checks.next() => {
                let now = Instant::now();
                if let Some(out) = p.checks.accept(done, now) {
                    crate::checks_probe::send(&mut p.link, out, now);
                }
            }
            Some(req) = local_rx.recv() => {
                crate::local_socket::submit(&mut p.link, &mut p.confirmations, req, Instant::now());
            }
            _ = sleep_until(deadline) => {}
            _ = &mut shutdown, if leaving_deadline.is_none() => {
                info!("stopping: saying goodbye to the CMA");
                p.say_goodbye(Instant::now());
                leaving_deadline = Some(Instant::now() + Duration::from_secs(3));
            }
        }
        // Timers run every turn, so a flood of datagrams cannot starve the heartbeats.
        let now = Instant::now();
        if p.heartbeats.poll_timeout().is_some_and(|t| t <= now) {
            p.heartbeats.handle_timeout(now);
        }
        if p.link.poll_timeout().is_some_and(|t| t <= now) {
            p.link.handle_timeout(now);
        }
        if now >= p.next_metrics {
            p.write_metrics();
            p.next_metrics = now + METRICS_INTERVAL;
        }
        if leaving_deadline.is_none() && p.discovery.poll_timeout().is_some_and(|t| t <= now) {
            p.discovery.handle_timeout(now);
        }
        if leaving_deadline.is_none() && p.checks.poll_timeout().is_some_and(|t| t <= now) {
            p.checks.handle_timeout(now);
        }
        p.drain_heartbeats();
        p.flush().await;
        if let Some(reason) = p.stop.take() {
            info!(%reason, "the CMA asked this nanoprobe to stop");
            return Ok(());
        }
        if let Some(deadline) = leaving_deadline {
            if p.goodbye_id.is_none() {
                info!("goodbye acknowledged; stopped");
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!("the CMA did not acknowledge the goodbye within 3 s; stopping anyway");
                return Ok(());
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Asks the CMA for its key until it answers (trust on first use).
pub async fn fetch_cma_key(
    socket: &UdpSocket,
    sealer: &mut Sealer,
    cma: SocketAddr,
) -> anyhow::Result<CmaPin> {
    let mut req = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut attempt = 0u32;
    loop {
        sealer.key_request(&mut req);
        socket
            .send_to(&req, cma)
            .await
            .with_context(|| format!("cannot send to the CMA at {cma}"))?;
        let wait = Duration::from_millis(500).saturating_mul(1 << attempt.min(4));
        match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            Ok(Ok((len, src))) if src == cma => {
                if let Ok(o) = sealer.open(&buf[..len])
                    && o.header.kind == DatagramKind::KeyReply
                    && let Some(key) = o.header.sender_key
                {
                    warn!(
                        cma = %cma, key = %assim_seal::fingerprint(&key),
                        "trusting the CMA's key on first use; it is pinned from now on"
                    );
                    return Ok(CmaPin {
                        node_id: o.header.sender,
                        public_key: hex::encode(key),
                        addrs: vec![cma],
                    });
                }
            }
            _ => {}
        }
        attempt += 1;
        if attempt.is_multiple_of(5) {
            info!(cma = %cma, attempts = attempt, "still waiting for the CMA to answer a key request");
        }
    }
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

struct Probe {
    link: CmaLink,
    socket: UdpSocket,
    heartbeats: Heartbeats,
    hello: msg::Hello,
    goodbye_id: Option<u64>,
    stop: Option<String>,
    dropped: u64,
    metrics_path: PathBuf,
    next_metrics: Instant,
    /// Collectors on their schedule, agents, the LLDP/CDP listener ([`crate::discovery`]).
    discovery: crate::discovery::DiscoveryDriver,
    /// Local events waiting for the CMA's acknowledgement ([`crate::local_socket`]).
    confirmations: crate::local_socket::Confirmations,
    /// Service checks on their schedule ([`crate::checks_probe`]).
    checks: crate::checks_probe::ProbeChecks,
}

impl Probe {
    fn send_hello(&mut self, now: Instant) {
        self.hello.peer_epoch = self.heartbeats.epoch();
        let hello = self.hello.clone();
        self.link.send_control(Body::Hello(hello), now);
    }

    fn say_goodbye(&mut self, now: Instant) {
        let body = Body::Goodbye(msg::Goodbye { reason: msg::GoodbyeReason::Shutdown as i32 });
        self.goodbye_id = self.link.send_control(body, now);
    }

    fn handle_datagram(&mut self, datagram: &[u8], src: SocketAddr) {
        let now = Instant::now();
        let opened = match self.link.sealer.open(datagram) {
            Ok(o) => o,
            Err(e) => {
                self.dropped += 1;
                debug!(%src, reason = e.reason(), "datagram rejected");
                return;
            }
        };
        let sender = opened.header.sender;
        let cma_id = self.link.cma_id;
        match opened.header.kind {
            DatagramKind::Reliable if sender == cma_id => {
                for ev in self.link.handle_frame(&opened.plaintext, src, now) {
                    match ev {
                        FromCma::Message(m) => self.handle_command(m, now),
                        // While leaving, the goodbye (resent by the reliable layer) is what
                        // the restarted CMA must see; a hello would register us again.
                        FromCma::Restarted if self.goodbye_id.is_none() => {
                            info!("the CMA restarted; registering again");
                            self.send_hello(now);
                        }
                        FromCma::Restarted => {}
                        FromCma::Delivered(id) => {
                            if self.goodbye_id == Some(id) {
                                self.goodbye_id = None;
                            }
                        }
                    }
                }
            }
            DatagramKind::Reliable => {
                self.dropped += 1;
                warn!(%src, node = %sender, "a command from a node that is not our CMA; ignored");
            }
            DatagramKind::Direct => match Direct::from_bytes(&opened.plaintext) {
                Ok(Direct { body: Some(DirectBody::Heartbeat(hb)) }) => {
                    self.heartbeats.heartbeat_received(sender, src, &hb, now);
                }
                Ok(Direct { body: Some(DirectBody::Probe(p)) }) if sender == cma_id => {
                    let reply = Direct { body: Some(DirectBody::ProbeReply(p)) }.to_bytes();
                    self.send_direct(sender, src, &reply);
                }
                _ => self.dropped += 1,
            },
            DatagramKind::KeyRequest | DatagramKind::KeyReply => self.dropped += 1,
        }
    }

    fn handle_command(&mut self, m: Message, now: Instant) {
        match m.body {
            Some(Body::PeerSet(set)) => match DesiredPeers::try_from(&set) {
                Ok(desired) => {
                    for p in &desired.peers {
                        self.link.sealer.add_peer(p.node_id, p.public_key);
                    }
                    let epoch = desired.epoch;
                    let n = desired.peers.len();
                    let outcome = self.heartbeats.apply(desired, now);
                    debug!(epoch, peers = n, ?outcome, "peer set received");
                }
                Err(e) => {
                    warn!(error = %e, epoch = set.epoch, "invalid peer set from the CMA; ignored")
                }
            },
            Some(Body::Shutdown(s)) => self.stop = Some(s.reason),
            Some(Body::DiscoverySchedule(s)) => self.discovery.apply_schedule(s, now),
            Some(Body::CheckSet(set)) => self.checks.apply_set(&set, now),
            Some(Body::RunNow(r)) => {
                if let Some(out) = self.checks.run_now(&r) {
                    crate::checks_probe::send(&mut self.link, out, now);
                }
            }
            Some(other) => debug!(kind = other.name(), "command not handled yet; ignored"),
            None => debug!("a message of a kind this version does not know; ignored"),
        }
    }

    fn drain_heartbeats(&mut self) {
        let now = Instant::now();
        while let Some(action) = self.heartbeats.poll_action() {
            match action {
                HbAction::SendHeartbeat { to, addr, heartbeat } => {
                    let bytes = Direct { body: Some(DirectBody::Heartbeat(heartbeat)) }.to_bytes();
                    self.send_direct(to, addr, &bytes);
                }
                HbAction::Report(r) => {
                    info!(
                        kind = msg::ReportKind::try_from(r.kind).map(|k| k.name()).unwrap_or("?"),
                        peer = %NodeId::from_slice(&r.peer).unwrap_or_default(),
                        silent_ms = r.silent_ms,
                        "reporting a peer"
                    );
                    self.link.send_spooled(Body::HeartbeatReport(r), now);
                }
                HbAction::Status(s) => self.link.send_spooled(Body::PeerStatus(s), now),
            }
        }
    }

    fn send_direct(&mut self, to: NodeId, addr: SocketAddr, plaintext: &[u8]) {
        let mut out = Vec::new();
        match self.link.sealer.seal(to, DatagramKind::Direct, false, plaintext, &mut out) {
            Ok(()) => {
                let _ = self.socket.try_send_to(&out, addr);
            }
            Err(e) => debug!(node = %to, error = %e, "cannot seal a datagram"),
        }
    }

    async fn flush(&mut self) {
        let now = Instant::now();
        self.link.commit(now);
        // Durable position = acknowledged + durable but unacknowledged.
        let acked = self.link.stats.acked_through;
        self.confirmations.settle(acked + self.link.unacked(), acked);
        let addr = self.link.cma_addr;
        for datagram in self.link.poll_datagrams(now) {
            if let Err(e) = self.socket.send_to(&datagram, addr).await {
                debug!(error = %e, "cannot send to the CMA");
            }
        }
    }

    /// Writes the nanoprobe's counters in the Prometheus text format (for node_exporter's
    /// textfile collector), atomically.
    fn write_metrics(&self) {
        let s = &self.link.stats;
        let hb = self.heartbeats.stats();
        let text = format!(
            "# HELP assim_nanoprobe_spool_records Records in the spool not yet acknowledged by the CMA.\n\
             # TYPE assim_nanoprobe_spool_records gauge\nassim_nanoprobe_spool_records {}\n\
             # HELP assim_nanoprobe_spool_bytes Bytes the spool uses on disk.\n\
             # TYPE assim_nanoprobe_spool_bytes gauge\nassim_nanoprobe_spool_bytes {}\n\
             # HELP assim_nanoprobe_spooled_total Records appended to the spool.\n\
             # TYPE assim_nanoprobe_spooled_total counter\nassim_nanoprobe_spooled_total {}\n\
             # HELP assim_nanoprobe_spool_dropped_total Droppable records dropped because the spool was full.\n\
             # TYPE assim_nanoprobe_spool_dropped_total counter\nassim_nanoprobe_spool_dropped_total {}\n\
             # HELP assim_nanoprobe_spool_unspooled_total Records sent without the spool because it was full.\n\
             # TYPE assim_nanoprobe_spool_unspooled_total counter\nassim_nanoprobe_spool_unspooled_total {}\n\
             # HELP assim_nanoprobe_resent_total Spool records sent again.\n\
             # TYPE assim_nanoprobe_resent_total counter\nassim_nanoprobe_resent_total {}\n\
             # HELP assim_nanoprobe_heartbeats_sent_total Heartbeats sent to ring neighbours.\n\
             # TYPE assim_nanoprobe_heartbeats_sent_total counter\nassim_nanoprobe_heartbeats_sent_total {}\n\
             # HELP assim_nanoprobe_heartbeats_received_total Heartbeats received from ring neighbours.\n\
             # TYPE assim_nanoprobe_heartbeats_received_total counter\nassim_nanoprobe_heartbeats_received_total {}\n\
             # HELP assim_nanoprobe_datagrams_rejected_total Datagrams dropped (authentication, replay, unexpected).\n\
             # TYPE assim_nanoprobe_datagrams_rejected_total counter\nassim_nanoprobe_datagrams_rejected_total {}\n",
            self.link.unacked(),
            self.link.spool_bytes(),
            s.spooled,
            s.spool_dropped,
            s.spool_unspooled,
            s.resent,
            hb.heartbeats_sent,
            hb.heartbeats_received,
            self.dropped,
        );
        let tmp = self.metrics_path.with_extension("prom.tmp");
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.metrics_path))
            .is_err()
        {
            debug!(path = %self.metrics_path.display(), "cannot write the metrics file");
        }
    }
}
