//! The CMA driver: one task owning the sealer, a reliable connection per nanoprobe, the CMA
//! core and the store.
//!
//! Per loop turn: receive a batch of datagrams (or wake for a deadline), open and dispatch them,
//! drain the core's actions, write the turn's changes and events to SQLite in one transaction,
//! then send. Enrollment of unknown nodes is decided here (token proof or open enrollment),
//! before the core ever sees them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assim_cma::{Action, Change, Cma, CmaConfig, Event, NodeState, Timing};
use assim_reliable::{Connection, Event as RelEvent};
use assim_seal::{Identity, OpenError, Sealer};
use assim_store::Store;
use assim_wire::msg::{self, Body, Direct, DirectBody, Message};
use assim_wire::{DatagramKind, NodeId, Timestamp};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::metrics::{CmaMetrics, SharedMetrics};
use crate::timers::Timers;

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
    open_enrollment: bool,
    seed: u64,
    last_publish: Instant,
}

/// Runs the CMA until `shutdown` resolves.
pub async fn run(
    opts: CmaOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let identity = Identity::load_or_create(&opts.data_dir)?;
    let mut store = Store::open(&store_path(&opts.data_dir))?;
    store.set_meta("listen", &opts.listen.to_string())?;
    let snapshot = store.load_snapshot()?;
    let socket = UdpSocket::bind(opts.listen)
        .await
        .with_context(|| format!("cannot bind UDP {}: is another CMA running?", opts.listen))?;
    let now = Timestamp::now();
    let session = crate::next_session(&opts.data_dir)?;
    let mut sealer = Sealer::new(identity.clone(), session);
    sealer.set_accept_unknown(true);
    for n in &snapshot.nodes {
        sealer.add_peer(n.id, n.public_key);
    }
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
            version: crate::VERSION.to_string(),
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
    let api_task = tokio::spawn(crate::api::serve(api_listener, api_state));

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
        open_enrollment: opts.open_enrollment,
        seed: session,
        last_publish: Instant::now() - Duration::from_secs(10),
    };
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
                        let datagram = rbuf[..len].to_vec();
                        d.handle_datagram(&datagram, src);
                        // Drain whatever else is already queued, bounded, before acting.
                        for _ in 0..256 {
                            match d.socket.try_recv_from(&mut rbuf) {
                                Ok((len, src)) => {
                                    let datagram = rbuf[..len].to_vec();
                                    d.handle_datagram(&datagram, src);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "UDP receive failed"),
                }
            }
            _ = sleep_until(deadline) => d.handle_timeouts(),
            _ = &mut shutdown => break,
        }
        d.drain_core();
        d.flush().await;
    }
    info!("CMA stopping");
    d.drain_core();
    d.flush().await;
    api_task.abort();
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
        [core, conns, publish].into_iter().flatten().min()
    }

    fn handle_timeouts(&mut self) {
        let now = Instant::now();
        for id in self.timers.expired(now) {
            if let Some(p) = self.conns.get_mut(&id) {
                p.conn.handle_timeout(now);
                self.dirty.insert(id);
            }
        }
        self.core.handle_timeout(Timestamp::now());
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
                        Ok(m) => self.handle_message(sender, opened.new_peer, m),
                        Err(_) => self.reject("decode"),
                    }
                }
                if opened.new_peer && self.core.node(sender).is_none() {
                    // A first datagram that did not enroll the node: forget its key again.
                    self.forget(sender);
                }
            }
        }
    }

    fn forget(&mut self, node: NodeId) {
        self.sealer.remove_peer(node);
        self.conns.remove(&node);
        self.timers.set(node, None);
    }

    fn handle_message(&mut self, sender: NodeId, _new_peer: bool, m: Message) {
        let now = Timestamp::now();
        let Some(body) = m.body else {
            self.reject("unknown_message");
            return;
        };
        if let Body::Hello(hello) = &body {
            if self.core.node(sender).is_none() && !self.enroll(sender, hello) {
                return;
            }
            let key = self.sealer.peer_key(sender).expect("an opened sender has a key");
            if let Err(e) = self.core.handle_hello(now, sender, key, hello) {
                warn!(node = %sender, error = %e, "hello refused");
                self.reject("bad_hello");
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
            other => {
                debug!(node = %sender, kind = other.name(), "message not handled yet; ignored")
            }
        }
    }

    /// Decides whether an unknown node may join: a valid token proof, or open enrollment.
    fn enroll(&mut self, node: NodeId, hello: &msg::Hello) -> bool {
        let key = self.sealer.peer_key(node).expect("an opened sender has a key");
        if let Some(proof) = &hello.token_proof {
            let now = Timestamp::now();
            match self.store.token(&proof.token_id) {
                Ok(Some(t))
                    if t.usable(now) && assim_seal::verify_proof(&t.secret, node, &key, proof) =>
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
                Action::Emit(e) => {
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

    /// Writes the turn's changes, then transmits, then re-arms the timers.
    async fn flush(&mut self) {
        if !self.changes.is_empty() || !self.events.is_empty() {
            match self.store.apply(&self.changes, &self.events) {
                Ok(()) => {
                    if let Some(last) = self.events.last() {
                        let _ = self.last_event.send(last.id);
                    }
                    self.changes.clear();
                    self.events.clear();
                }
                Err(e) => {
                    // Keep the batch and retry on the next turn; an operator must look.
                    self.metrics.store_errors += 1;
                    error!(error = %e, pending = self.changes.len() + self.events.len(), "cannot write to the store; will retry");
                }
            }
        }
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
