//! The CMA driver: one task owning the sealer, a reliable connection per nanoprobe, the CMA
//! core and the store.
//!
//! Per loop turn:
//! 1. receive a batch of datagrams (or wake for a deadline) and open them; enrollment of unknown
//!    nodes is decided here (token proof or open enrollment), before the core ever sees them;
//! 2. append every authenticated reliable message to the **inbox** (an `assim-log` in
//!    `DATA_DIR/inbox`), dropping spool records already accepted (dedupe by node id + record);
//! 3. one fsync for the whole batch (group commit), then `Ack { through }` to each sender: only
//!    now is anything acknowledged, so an acknowledged record survives `kill -9`;
//! 4. the decision engine (the CMA core) applies the new inbox records in order;
//! 5. the core's changes, events and the inbox position are written to SQLite in one
//!    transaction, so the engine's position always matches the state it produced;
//! 6. the reliable layer's frames are sent (its acknowledgements included).
//!
//! After a crash the driver replays the inbox from the stored position; records whose effects
//! are already stored are skipped, event ids continue from the stored counter (a subscriber never
//! sees an id twice or a gap), and every node is sent its desired peer set again, which also tells
//! the nanoprobes to resend what they have not seen acknowledged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assim_cma::{Action, Change, Cma, CmaConfig, Event, NodeState, Timing};
use assim_log::{FileStorage, Log, LogConfig};
use assim_reliable::{Connection, Event as RelEvent};
use assim_seal::{Identity, OpenError, Sealer};
use assim_store_sqlite::{InboxProgress, Store};
use assim_wire::msg::{self, Body, Direct, DirectBody, Message};
use assim_wire::{DatagramKind, NodeId, Timestamp};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::metrics::{CmaMetrics, SharedMetrics};
use crate::timers::Timers;

pub mod checks_cma;

/// Everything the CMA needs to run.
#[derive(Clone, Debug)]
pub struct CmaOptions {
    /// UDP address for nanoprobes.
    pub listen: SocketAddr,
    /// HTTP API address.
    pub api: SocketAddr,
    /// Bearer token required by the API (mandatory when `api` is not loopback).
    pub api_token: Option<String>,
    pub data_dir: PathBuf,
    pub timing: Timing,
    /// Accept nanoprobes that present no join token (labs and the demo only).
    pub open_enrollment: bool,
    /// The event bus: retention, tagging rules, sinks, NATS (the `[bus]` config section).
    pub bus: assim_bus::BusConfig,
    /// Discovery intervals sent to every nanoprobe that registers (the `[discovery]` table).
    pub discovery: crate::discovery::ScheduleConfig,
    /// Operator rules for automatic service checks (`--check-rules DIR`; see docs/checks.md).
    pub check_rules: Option<PathBuf>,
}

/// The CMA's database file inside its data directory.
pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("cma.sqlite")
}

struct PeerConn {
    conn: Connection,
    addr: SocketAddr,
}

struct Driver {
    sealer: Sealer,
    core: Cma,
    store: Store,
    socket: Arc<UdpSocket>,
    conns: HashMap<NodeId, PeerConn>,
    timers: Timers<NodeId>,
    dirty: HashSet<NodeId>,
    changes: Vec<Change>,
    events: Vec<Event>,
    metrics: CmaMetrics,
    shared: Arc<SharedMetrics>,
    last_event: watch::Sender<u64>,
    /// Sent to every nanoprobe when it registers ([`crate::discovery::schedule_message`]).
    discovery_schedule: msg::DiscoverySchedule,
    /// Tagging rules, applied to every event before it is stored.
    tagger: assim_bus::Tagger,
    /// Service monitoring: check sets, states, run-now commands ([`checks_cma`]).
    checks: checks_cma::CmaChecks,
    open_enrollment: bool,
    seed: u64,
    last_publish: Instant,
    last_store_commit: Instant,
    /// Changes wait for the next store commit (at most [`STORE_COMMIT_INTERVAL`]).
    store_commit_due: bool,
    inbox: Log<FileStorage>,
    inbox_dir: PathBuf,
    /// Inbox records appended this turn, applied after the group commit.
    to_apply: Vec<(u64, NodeId, [u8; 32], Message)>,
    /// Nodes enrolled by a hello in this turn's inbox records (not yet known to the core).
    enrolled: HashSet<NodeId>,
    /// Per node: the highest spool record stored in the inbox (durable or in this turn's batch).
    seen: HashMap<NodeId, u64>,
    /// Per node: the highest spool record whose effects are committed to the store.
    applied: HashMap<NodeId, u64>,
    /// Nodes owed an `Ack` after this turn's commit.
    acks_due: HashSet<NodeId>,
    progress: InboxProgress,
}

/// The UDP receive buffer the CMA asks for (bytes).
const RECV_BUFFER: usize = 32 << 20;

/// Datagrams handled per loop turn at most (one inbox fsync and one store commit per turn).
const MAX_DATAGRAMS_PER_TURN: usize = 4096;

/// How long the store commit may lag behind the inbox when no event is waiting.
const STORE_COMMIT_INTERVAL: Duration = Duration::from_millis(50);

/// One inbox record: who sent it, with which key, and the message as received.
///
/// ```text
/// offset size
///  0     16   sender node id
/// 16     32   sender public key (so a replay after a crash can apply a first hello)
/// 48      n   the encoded reliable message (its `record` field is the sender's spool record)
/// ```
fn inbox_record(node: NodeId, key: &[u8; 32], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + message.len());
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(message);
    out
}

fn parse_inbox_record(bytes: &[u8]) -> Option<(NodeId, [u8; 32], Message)> {
    let node = NodeId::from_slice(bytes.get(..16)?)?;
    let key: [u8; 32] = bytes.get(16..48)?.try_into().ok()?;
    let m = Message::from_bytes(bytes.get(48..)?).ok()?;
    Some((node, key, m))
}

fn open_inbox(dir: &std::path::Path) -> anyhow::Result<Log<FileStorage>> {
    let storage = FileStorage::open(dir)
        .with_context(|| format!("cannot open the inbox in {}", dir.display()))?;
    let log = Log::open(storage, LogConfig::default())
        .with_context(|| format!("cannot open the inbox in {}", dir.display()))?;
    if let Some(r) = log.last_recovery() {
        warn!(segment = %r.segment, truncated_bytes = r.truncated_bytes, "inbox recovered from a torn tail (records never acknowledged): {}", r.detail);
    }
    Ok(log)
}

/// Runs the CMA until `shutdown` resolves.
pub async fn run(
    opts: CmaOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // 0700 before anything is written into it (the identity, the database, the inbox).
    assim_seal::create_private_dir(&opts.data_dir)?;
    let identity = Identity::load_or_create(&opts.data_dir)?;
    let mut store = Store::open(&store_path(&opts.data_dir))?;
    let tagger = assim_bus::Tagger::new(&opts.bus.tag_rules).context("invalid [bus] tag_rules")?;
    assim_bus::runner::install_config_sinks(&mut store, &opts.bus)
        .context("cannot install the [bus] sinks")?;
    store.set_meta("listen", &opts.listen.to_string())?;
    let discovery_schedule = crate::discovery::schedule_message(&mut store, &opts.discovery)?;
    let checks = checks_cma::CmaChecks::load(&store, opts.check_rules.as_deref())?;
    let (run_tx, mut run_rx) = tokio::sync::mpsc::channel::<checks_cma::ChecksRequest>(64);
    let snapshot = store.load_snapshot()?;
    let socket = UdpSocket::bind(opts.listen)
        .await
        .with_context(|| format!("cannot bind UDP {}: is another CMA running?", opts.listen))?;
    // A large receive buffer absorbs registration storms and report bursts between turns.
    // SO_RCVBUFFORCE (root) may exceed net.core.rmem_max; otherwise the kernel caps SO_RCVBUF.
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&socket, sockopt::RcvBufForce, &RECV_BUFFER).is_err()
        && let Err(e) = setsockopt(&socket, sockopt::RcvBuf, &RECV_BUFFER)
    {
        debug!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    let now = Timestamp::now();
    let session = assim_seal::next_session(&opts.data_dir)?;
    let mut sealer = Sealer::new(identity.clone(), session);
    sealer.set_accept_unknown(true);
    for n in &snapshot.nodes {
        sealer.add_peer(n.id, n.public_key);
    }
    let inbox_dir = opts.data_dir.join("inbox");
    let inbox = open_inbox(&inbox_dir)?;
    let inbox_position = store.inbox_position()?;
    let applied: HashMap<NodeId, u64> =
        store.applied()?.into_iter().map(|(n, a)| (n, a.through)).collect();
    let nodes = snapshot.nodes.len();
    let core = Cma::new(CmaConfig { timing: opts.timing }, snapshot, now);
    let last_id = store.last_event_id()?;
    let (last_event, last_event_rx) = watch::channel(last_id);
    let shared = Arc::new(SharedMetrics::default());

    let api_listener = tokio::net::TcpListener::bind(opts.api)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {}", opts.api))?;
    let api_state = crate::api::ApiState::new(
        store_path(&opts.data_dir),
        shared.clone(),
        last_event_rx,
        opts.api_token.clone(),
        crate::api::CmaInfo {
            node_id: identity.node_id(),
            fingerprint: identity.fingerprint(),
            listen: opts.listen,
            version: assim_wire::VERSION.to_string(),
        },
    )?;
    info!(
        listen = %opts.listen, api = %opts.api, node = %identity.node_id(),
        key = %identity.fingerprint(), nodes, open_enrollment = opts.open_enrollment,
        "CMA started"
    );
    if opts.api_token.is_some() {
        info!(api = %opts.api, "the HTTP API requires a bearer token (Authorization: Bearer …)");
    }
    let api_state = api_state.with_check_runner(run_tx);
    let api_task = tokio::spawn(crate::api::serve(api_listener, api_state));
    let bus_task = tokio::spawn(assim_bus::runner::run(
        store_path(&opts.data_dir),
        opts.bus.clone(),
        last_event.subscribe(),
    ));

    let mut d = Driver {
        sealer,
        core,
        store,
        socket: Arc::new(socket),
        conns: HashMap::new(),
        timers: Timers::default(),
        dirty: HashSet::new(),
        changes: Vec::new(),
        events: Vec::new(),
        metrics: CmaMetrics::default(),
        shared,
        last_event,
        discovery_schedule,
        tagger,
        checks,
        open_enrollment: opts.open_enrollment,
        seed: session,
        last_publish: Instant::now() - Duration::from_secs(10),
        last_store_commit: Instant::now() - Duration::from_secs(10),
        store_commit_due: false,
        inbox,
        inbox_dir,
        to_apply: Vec::new(),
        enrolled: HashSet::new(),
        seen: applied.clone(),
        applied,
        acks_due: HashSet::new(),
        progress: InboxProgress::default(),
    };
    d.replay_inbox(inbox_position)?;
    // Desired state is re-sent after every start: harmless (epochs), and it tells each nanoprobe
    // that the CMA restarted, so it resends what it has not seen acknowledged.
    let members = d.core.ring();
    for node in members {
        d.core.resend_peer_set(node);
    }
    d.drain_core();
    d.flush().await;
    tokio::pin!(shutdown);
    let mut rbuf = vec![0u8; 65536];
    loop {
        let deadline = d.next_deadline();
        tokio::select! {
            r = d.socket.recv_from(&mut rbuf) => {
                match r {
                    Ok((len, src)) => {
                        d.handle_datagram(&rbuf[..len], src);
                        // Drain whatever else is already queued, bounded, before acting:
                        // bigger turns mean fewer fsyncs per record.
                        for _ in 0..MAX_DATAGRAMS_PER_TURN {
                            match d.socket.try_recv_from(&mut rbuf) {
                                Ok((len, src)) => d.handle_datagram(&rbuf[..len], src),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "UDP receive failed"),
                }
            }
            Some(req) = run_rx.recv() => d.checks_request(req),
            _ = sleep_until(deadline) => {}
            _ = &mut shutdown => break,
        }
        // Timers run every turn, so a steady stream of datagrams cannot starve them.
        d.handle_timeouts();
        d.drain_core();
        d.flush().await;
    }
    info!("CMA stopping");
    d.drain_core();
    d.last_store_commit = Instant::now() - STORE_COMMIT_INTERVAL;
    d.flush().await;
    api_task.abort();
    bus_task.abort();
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Converts a core deadline (wall clock) to a monotonic instant.
fn instant_of(ts: Timestamp) -> Instant {
    let now_ts = Timestamp::now();
    let now = Instant::now();
    if ts <= now_ts { now } else { now + ts.since(now_ts) }
}

impl Driver {
    fn next_deadline(&self) -> Option<Instant> {
        let core = self.core.poll_timeout().map(instant_of);
        let conns = self.timers.next();
        let publish = Some(self.last_publish + Duration::from_secs(1));
        let store = self.store_commit_due.then_some(self.last_store_commit + STORE_COMMIT_INTERVAL);
        [core, conns, publish, store].into_iter().flatten().min()
    }

    fn handle_timeouts(&mut self) {
        let now = Instant::now();
        for id in self.timers.expired(now) {
            if let Some(p) = self.conns.get_mut(&id) {
                p.conn.handle_timeout(now);
                self.dirty.insert(id);
            }
        }
        let now = Timestamp::now();
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    fn reject(&mut self, reason: &'static str) {
        *self.metrics.rejects.entry(reason).or_insert(0) += 1;
    }

    fn handle_datagram(&mut self, datagram: &[u8], src: SocketAddr) {
        self.metrics.datagrams_in += 1;
        self.metrics.bytes_in += datagram.len() as u64;
        let opened = match self.sealer.open(datagram) {
            Ok(o) => o,
            Err(e) => {
                debug!(%src, reason = e.reason(), "datagram rejected");
                if let OpenError::KeyMismatch(id) = e {
                    warn!(%src, node = %id, "datagram claims a known node id with a different key; refused");
                }
                return;
            }
        };
        let sender = opened.header.sender;
        match opened.header.kind {
            DatagramKind::KeyRequest => {
                let mut out = Vec::new();
                self.sealer.key_reply(&mut out);
                self.send_now(out, src);
            }
            DatagramKind::KeyReply => self.reject("unexpected_kind"),
            DatagramKind::Direct => match Direct::from_bytes(&opened.plaintext) {
                Ok(Direct { body: Some(DirectBody::ProbeReply(p)) }) => {
                    self.core.handle_probe_reply(Timestamp::now(), sender, p.nonce);
                }
                Ok(_) => self.reject("unexpected_direct"),
                Err(_) => self.reject("decode"),
            },
            DatagramKind::Reliable => {
                let now = Instant::now();
                let seed =
                    self.seed ^ u64::from_le_bytes(sender.0[8..16].try_into().expect("8 bytes"));
                let session = self.sealer.session();
                let p = self.conns.entry(sender).or_insert_with(|| PeerConn {
                    conn: Connection::new(assim_reliable::Config::default(), session, seed),
                    addr: src,
                });
                p.addr = src;
                let bad_frame = p.conn.handle_frame(&opened.plaintext, now).is_err();
                let mut delivered = Vec::new();
                while let Some(ev) = p.conn.poll_event() {
                    match ev {
                        RelEvent::Delivered(bytes) => delivered.push(bytes),
                        RelEvent::PeerRestarted { .. } => {
                            debug!(node = %sender, "nanoprobe restarted its session")
                        }
                        RelEvent::Acked(_) => {}
                    }
                }
                self.dirty.insert(sender);
                if bad_frame {
                    self.reject("bad_frame");
                }
                for bytes in delivered {
                    match Message::from_bytes(&bytes) {
                        Ok(m) => self.accept(sender, &bytes, m),
                        Err(_) => self.reject("decode"),
                    }
                }
                if opened.new_peer
                    && self.core.node(sender).is_none()
                    && !self.enrolled.contains(&sender)
                {
                    // A first datagram that did not enroll the node: forget its key again.
                    self.forget(sender);
                }
            }
        }
    }

    /// The packet reader's half: authorize, de-duplicate and append to the inbox.
    fn accept(&mut self, sender: NodeId, bytes: &[u8], m: Message) {
        let known = self.core.node(sender).is_some() || self.enrolled.contains(&sender);
        if !known {
            match &m.body {
                Some(Body::Hello(hello)) => {
                    if !self.enroll(sender, hello) {
                        return;
                    }
                    self.enrolled.insert(sender);
                }
                _ => {
                    self.reject("unregistered");
                    return;
                }
            }
        }
        if m.record > 0 {
            self.acks_due.insert(sender);
            let seen = self.seen.get(&sender).copied().unwrap_or(0);
            if m.record <= seen {
                *self.metrics.rejects.entry("duplicate_record").or_insert(0) += 1;
                return;
            }
            // Spool records are numbered densely, and `Ack { through }` covers everything up
            // to `through`: so the inbox only ever takes the next record of a sender. A gap
            // (an earlier record was refused, e.g. the disk was full) waits for the resend.
            if m.record > seen + 1 {
                *self.metrics.rejects.entry("record_gap").or_insert(0) += 1;
                return;
            }
        }
        let key = self.sealer.peer_key(sender).expect("an opened sender has a key");
        match self.inbox.append(&inbox_record(sender, &key, bytes)) {
            Ok(lsn) => {
                if m.record > 0 {
                    self.seen.insert(sender, m.record);
                }
                self.to_apply.push((lsn, sender, key, m));
            }
            Err(e) => {
                self.reject("inbox_full");
                error!(node = %sender, error = %e, "cannot append to the inbox; the record is not acknowledged and will be resent");
            }
        }
    }

    /// Applies inbox records that were stored but whose effects were not committed before the
    /// last stop.
    fn replay_inbox(&mut self, position: u64) -> anyhow::Result<()> {
        let from = (position + 1).max(self.inbox.first_lsn());
        let records: Vec<(u64, Vec<u8>)> = self
            .inbox
            .read_from(from)
            .context("cannot read the inbox")?
            .collect::<Result<_, _>>()
            .context("cannot read the inbox")?;
        if records.is_empty() {
            return Ok(());
        }
        info!(records = records.len(), from, "replaying inbox records not yet applied");
        for (lsn, bytes) in records {
            let Some((node, key, m)) = parse_inbox_record(&bytes) else {
                error!(lsn, "an inbox record cannot be decoded; skipped");
                self.progress.position = Some(lsn);
                continue;
            };
            if self.sealer.peer_key(node).is_none() {
                self.sealer.add_peer(node, key);
            }
            if m.record > 0 {
                let seen = self.seen.entry(node).or_insert(0);
                *seen = (*seen).max(m.record);
            }
            self.apply(lsn, node, key, m);
        }
        self.drain_core();
        self.commit_store();
        Ok(())
    }

    /// The decision engine's half: one inbox record into the core.
    fn apply(&mut self, lsn: u64, sender: NodeId, key: [u8; 32], m: Message) {
        self.progress.position = Some(lsn);
        if m.record > 0 {
            if m.record <= self.applied.get(&sender).copied().unwrap_or(0) {
                return; // already applied before a restart
            }
            self.applied.insert(sender, m.record);
            let e = self.progress.applied.entry(sender).or_insert((0, 0));
            *e = (m.record, e.1 + 1);
        }
        self.handle_message(sender, key, m);
    }

    fn forget(&mut self, node: NodeId) {
        self.sealer.remove_peer(node);
        self.conns.remove(&node);
        self.timers.set(node, None);
    }

    fn handle_message(&mut self, sender: NodeId, key: [u8; 32], m: Message) {
        let now = Timestamp::now();
        let Some(body) = m.body else {
            self.reject("unknown_message");
            return;
        };
        if let Body::Hello(hello) = &body {
            if let Err(e) = self.core.handle_hello(now, sender, key, hello) {
                warn!(node = %sender, error = %e, "hello refused");
                self.reject("bad_hello");
            } else if let Some(n) = self.core.node(sender) {
                // Desired state: resent on every (re-)registration, the epoch makes it idempotent.
                let bytes = Message::new(Body::DiscoverySchedule(self.discovery_schedule.clone()))
                    .to_bytes();
                self.send_reliable(sender, n.listen_addr, bytes, Instant::now());
            }
            if self.core.node(sender).is_some() {
                self.checks_on_hello(sender);
            }
            return;
        }
        if self.core.node(sender).is_none() {
            self.reject("unregistered");
            return;
        }
        self.core.handle_alive(now, sender);
        match body {
            Body::Goodbye(_) => self.core.handle_goodbye(now, sender),
            Body::HeartbeatReport(r) => {
                self.metrics.reports += 1;
                self.core.handle_report(now, sender, &r);
            }
            Body::PeerStatus(s) => self.core.handle_peer_status(now, sender, &s),
            Body::DiscoveryResult(d) => {
                if d.name == "sockets" {
                    self.checks_on_sockets(sender, &d.payload);
                }
                self.store_discovery(sender, d, now)
            }
            Body::CheckStateChange(c) => {
                *self.metrics.applied_other.entry("check_state_change").or_insert(0) += 1;
                self.check_change(sender, c, now)
            }
            Body::CommandResult(r) => {
                *self.metrics.applied_other.entry("command_result").or_insert(0) += 1;
                self.command_result(sender, r)
            }
            Body::LocalEvent(ev) => {
                *self.metrics.applied_other.entry("local_event").or_insert(0) += 1;
                if let Err(e) = self.core.handle_local_event(now, sender, &ev) {
                    warn!(node = %sender, error = %e, "local event refused");
                    self.reject("bad_local_event");
                }
            }
            other => {
                *self.metrics.applied_other.entry(other.name()).or_insert(0) += 1;
                debug!(node = %sender, kind = other.name(), "message stored; nothing more to do with it yet");
            }
        }
    }

    /// Keeps the latest result of each collector per node (the topology graph builds on these).
    fn store_discovery(&mut self, sender: NodeId, d: msg::DiscoveryResult, now: Timestamp) {
        let valid = !d.name.is_empty()
            && d.name.len() <= 64
            && serde_json::from_slice::<serde_json::Value>(&d.payload).is_ok();
        let Ok(payload) = String::from_utf8(d.payload) else {
            self.reject("bad_discovery");
            return;
        };
        if !valid {
            warn!(node = %sender, name = %d.name, "invalid discovery result (not JSON, or a bad name); ignored");
            self.reject("bad_discovery");
            return;
        }
        *self.metrics.applied_other.entry("discovery_result").or_insert(0) += 1;
        self.progress.discovery.push(assim_store_sqlite::DiscoveryRecord {
            node: sender,
            name: d.name,
            hash: hex::encode(&d.content_hash),
            payload,
            collected_at: d.collected_at,
            updated_at: now.micros(),
        });
    }

    /// Decides whether an unknown node may join: a valid token proof, or open enrollment.
    fn enroll(&mut self, node: NodeId, hello: &msg::Hello) -> bool {
        let key = self.sealer.peer_key(node).expect("an opened sender has a key");
        if let Some(proof) = &hello.token_proof {
            let now = Timestamp::now();
            match self.store.token(&proof.token_id) {
                Ok(Some(t))
                    if t.usable(now)
                        && assim_seal::verify_proof(&t.secret_hash, node, &key, proof) =>
                {
                    if let Err(e) = self.store.use_token(&proof.token_id) {
                        error!(error = %e, "cannot count a token use");
                    }
                    info!(node = %node, host = %hello.hostname, "node enrolled with a join token");
                    return true;
                }
                Ok(Some(t)) if !t.usable(now) => {
                    warn!(node = %node, host = %hello.hostname, "join token expired or used up; node refused");
                }
                Ok(_) => {
                    warn!(node = %node, host = %hello.hostname, "invalid join token proof; node refused")
                }
                Err(e) => error!(error = %e, "cannot read join tokens"),
            }
        } else if self.open_enrollment {
            info!(node = %node, host = %hello.hostname, "node enrolled (open enrollment)");
            return true;
        } else {
            warn!(
                node = %node, host = %hello.hostname,
                "node without a join token refused: create one with `cma token create`"
            );
        }
        self.reject("enrollment");
        false
    }

    fn drain_core(&mut self) {
        let now = Instant::now();
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::SendPeerSet { to, addr, set } => {
                    let bytes = Message::new(Body::PeerSet(set)).to_bytes();
                    self.send_reliable(to, addr, bytes, now);
                }
                Action::Probe { node, addr, nonce } => {
                    let bytes =
                        Direct { body: Some(DirectBody::Probe(msg::Probe { nonce })) }.to_bytes();
                    let mut out = Vec::new();
                    if self.sealer.seal(node, DatagramKind::Direct, false, &bytes, &mut out).is_ok()
                    {
                        self.send_now(out, addr);
                    }
                }
                Action::Persist(c) => self.changes.push(c),
                Action::Emit(mut e) => {
                    self.tagger.apply(&mut e);
                    info!(id = e.id, kind = e.kind.name(), host = %e.hostname, "{}", e.text);
                    *self.metrics.events.entry(e.kind.name()).or_insert(0) += 1;
                    if e.kind == assim_cma::EventKind::RingChanged {
                        self.metrics.ring_changes += 1;
                    }
                    self.events.push(e);
                }
            }
        }
    }

    fn send_reliable(&mut self, to: NodeId, addr: SocketAddr, bytes: Vec<u8>, now: Instant) {
        let seed = self.seed ^ u64::from_le_bytes(to.0[8..16].try_into().expect("8 bytes"));
        let session = self.sealer.session();
        let p = self.conns.entry(to).or_insert_with(|| PeerConn {
            conn: Connection::new(assim_reliable::Config::default(), session, seed),
            addr,
        });
        if let Err(e) = p.conn.send(bytes, now) {
            warn!(node = %to, error = %e, "cannot queue a message for a nanoprobe");
        }
        self.dirty.insert(to);
    }

    fn send_now(&mut self, datagram: Vec<u8>, addr: SocketAddr) {
        self.metrics.datagrams_out += 1;
        self.metrics.bytes_out += datagram.len() as u64;
        if let Err(e) = self.socket.try_send_to(&datagram, addr) {
            debug!(%addr, error = %e, "UDP send failed");
        }
    }

    /// Group commit of the inbox, acks, the engine, the store; then transmits and re-arms timers.
    async fn flush(&mut self) {
        self.commit_inbox();
        self.drain_core();
        self.commit_store();
        let now = Instant::now();
        let dirty: Vec<NodeId> = self.dirty.drain().collect();
        for id in dirty {
            let Some(p) = self.conns.get_mut(&id) else { continue };
            let addr = p.addr;
            let mut frames = Vec::new();
            while let Some(frame) = p.conn.poll_transmit(now) {
                frames.push(frame);
            }
            let deadline = p.conn.poll_timeout();
            self.timers.set(id, deadline);
            for frame in frames {
                let mut out = Vec::with_capacity(frame.len() + 64);
                match self.sealer.seal(id, DatagramKind::Reliable, false, &frame, &mut out) {
                    Ok(()) => self.send_now(out, addr),
                    Err(e) => warn!(node = %id, error = %e, "cannot seal a frame"),
                }
            }
        }
        if self.last_publish.elapsed() >= Duration::from_secs(1) {
            self.publish_metrics();
        }
    }

    /// Makes this turn's inbox records durable, acknowledges them, and applies them.
    fn commit_inbox(&mut self) {
        if !self.to_apply.is_empty() {
            let started = Instant::now();
            if let Err(e) = self.inbox.sync() {
                // Nothing of this batch is acknowledged: the senders keep the records in their
                // spools and send them again. The log is poisoned after a failed sync (its state
                // on disk is unknown), so it is reopened from disk.
                error!(error = %e, records = self.to_apply.len(), "cannot make the inbox durable; nothing acknowledged, senders will resend");
                self.metrics.store_errors += 1;
                self.to_apply.clear();
                self.enrolled.clear();
                self.acks_due.clear();
                self.seen = self.applied.clone();
                match open_inbox(&self.inbox_dir) {
                    Ok(log) => self.inbox = log,
                    Err(e) => error!(error = %format!("{e:#}"), "cannot reopen the inbox"),
                }
                return;
            }
            self.metrics.inbox_syncs += 1;
            self.metrics.inbox_records += self.to_apply.len() as u64;
            self.metrics.inbox_sync_micros += started.elapsed().as_micros() as u64;
        }
        let now = Instant::now();
        for node in std::mem::take(&mut self.acks_due) {
            let through = self.seen.get(&node).copied().unwrap_or(0);
            let addr = match self.conns.get(&node) {
                Some(p) => p.addr,
                None => continue,
            };
            let bytes = Message::new(Body::Ack(msg::Ack { through })).to_bytes();
            self.send_reliable(node, addr, bytes, now);
        }
        for (lsn, node, key, m) in std::mem::take(&mut self.to_apply) {
            self.apply(lsn, node, key, m);
        }
        self.enrolled.clear();
    }

    /// Writes the turn's changes, events and inbox progress in one transaction.
    fn commit_store(&mut self) {
        if self.changes.is_empty()
            && self.events.is_empty()
            && self.progress == InboxProgress::default()
        {
            return;
        }
        // Records are durable in the inbox already, so the engine's position may lag a little:
        // after a crash the inbox is replayed from the stored position. Events go out at once.
        if self.events.is_empty() && self.last_store_commit.elapsed() < STORE_COMMIT_INTERVAL {
            self.store_commit_due = true;
            return;
        }
        self.store_commit_due = false;
        self.last_store_commit = Instant::now();
        match self.store.apply(&self.changes, &self.events, &self.progress) {
            Ok(()) => {
                if let Some(last) = self.events.last() {
                    let _ = self.last_event.send(last.id);
                }
                if let Some(pos) = self.progress.position
                    && let Err(e) = self.inbox.remove_through(pos)
                {
                    error!(error = %e, "cannot delete applied inbox records");
                }
                self.changes.clear();
                self.events.clear();
                self.progress = InboxProgress::default();
            }
            Err(e) => {
                // Keep the batch and retry on the next turn; an operator must look.
                self.metrics.store_errors += 1;
                error!(
                    error = %e,
                    pending = self.changes.len() + self.events.len(),
                    "cannot write to the store; will retry"
                );
            }
        }
    }

    fn publish_metrics(&mut self) {
        self.last_publish = Instant::now();
        let mut m = self.metrics.clone();
        for (reason, n) in self.sealer.rejects().iter() {
            *m.rejects.entry(reason).or_insert(0) += n;
        }
        let mut nodes: BTreeMap<&'static str, u64> =
            [NodeState::Up, NodeState::Suspect, NodeState::Down, NodeState::Left]
                .iter()
                .map(|s| (s.name(), 0))
                .collect();
        for n in self.core.nodes() {
            *nodes.entry(n.state.name()).or_insert(0) += 1;
        }
        m.nodes = nodes;
        m.ring_members = self.core.ring().len() as u64;
        let stats = self.core.stats();
        m.reports_ignored = stats.reports_ignored_not_neighbour + stats.reports_ignored_unknown;
        m.retransmits = self.conns.values().map(|p| p.conn.stats().retransmits).sum();
        self.shared.publish(m);
    }
}
