//! The CMA shell, sans-IO: everything between the UDP socket and the CMA core, driven the same
//! way by the tokio daemon and by the simulator in virtual time.
//!
//! Per turn the driver feeds datagrams ([`Shell::handle_datagram`]) and expired timers
//! ([`Shell::handle_timeout`]), then calls [`Shell::flush`], sends what
//! [`Shell::poll_transmit`] returns, reads [`Shell::poll_note`] and re-arms one timer at
//! [`Shell::poll_timeout`]. Every input carries [`Now`]; the shell reads no clock and touches
//! no socket, file or database except through its seams, the [`Inbox`], [`EngineStore`] and
//! [`Tokens`] traits of `assim-store` (with [`LogInbox`] and [`MemStore`] there).
//!
//! 1. **Reader** ([`reader`]): open and authenticate ([`Seal`]); an unknown node may join only
//!    with a hello that passes the enrolment decision ([`enroll`]: token proof against
//!    [`Tokens`], or open enrollment) — otherwise its provisional key is forgotten again,
//!    whatever the datagram's kind, so nothing unauthenticated creates lasting state; the
//!    next-record rule; append to the [`Inbox`].
//! 2. **Group commit**: one inbox sync per turn, and only then `Ack { through }` to each sender.
//! 3. **Engine** ([`engine`]): the new inbox records in order into the CMA core; its changes,
//!    events and the inbox position go to the [`EngineStore`] as one batch.
//! 4. Reliable frames out ([`conns`]), sealed.
//!
//! At start the engine resumes from the stored snapshot, replays the inbox from the stored
//! position (records already applied are skipped), and sends every ring member its desired peer
//! set again, which also tells the nanoprobes to resend what they have not seen acknowledged.
//!
//! Decisions that belong to the driver's configuration (service checks, the discovery schedule,
//! event tagging) plug in through [`Extension`].
//!
//! Layout:
//! - [`seal`]: the [`Seal`] trait over [`assim_seal::Sealer`], and [`PlainSeal`] for simulators.
//! - [`enroll`]: the enrolment decision.
//! - [`reader`]: next-record rule, inbox appends, group commit, acknowledgements.
//! - [`engine`]: records → core → batch; the extension context [`Cx`].
//! - [`conns`]: reliable connections and their timers.
//! - [`record`]: the inbox record's byte layout.

#![forbid(unsafe_code)]

pub mod conns;
pub mod engine;
pub mod enroll;
pub mod reader;
pub mod record;
pub mod seal;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_cma::{Cma, CmaConfig, Event, EventKind};
use assim_seal::OpenError;
use assim_wire::msg::{self, Body, Direct, DirectBody, Message};
use assim_wire::{DatagramKind, NodeId, Timestamp};
use tracing::{debug, error, info, warn};

pub use crate::engine::Cx;
use crate::engine::{Effects, Engine, Send};
use crate::reader::{NotTaken, Reader};
pub use crate::seal::{PlainSeal, Seal};
pub use assim_store::{
    EngineStore, Inbox, InboxError, Loaded, LogInbox, MemStore, StoreFailed, Tokens,
};

/// The time of an input, in both clocks: monotonic for the reliable connections, wall clock for
/// the core (its records and events carry wall time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall: Timestamp,
}

/// How the shell runs.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    pub cma: CmaConfig,
    /// Accept nanoprobes that present no join token (labs, the demo, the simulator).
    pub open_enrollment: bool,
    pub reliable: assim_reliable::Config,
    /// Seeds the reliable connections' randomness (mixed with each node id).
    pub seed: u64,
    /// How long a batch of changes without events may wait before it is stored (the inbox holds
    /// its records durably meanwhile).
    pub commit_interval: Duration,
}

impl ShellConfig {
    /// The daemon's defaults around `cma`.
    pub fn new(cma: CmaConfig, seed: u64) -> ShellConfig {
        ShellConfig {
            cma,
            open_enrollment: false,
            reliable: assim_reliable::Config::default(),
            seed,
            commit_interval: Duration::from_millis(50),
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub datagram: Vec<u8>,
}

/// What happened, for drivers that watch (the simulator's accounting, the API's event feed).
/// Drain with [`Shell::poll_note`] after every turn.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// The core emitted an event (it is stored with the batch).
    Event(Event),
    /// A batch was stored; `last_event`: the id of its last event.
    Stored { last_event: Option<u64> },
    /// An inbox record reached the engine.
    Applied { node: NodeId, record: u64, kind: &'static str },
    /// A message was not taken into the inbox: `duplicate_record`, `record_gap`, `inbox_full`,
    /// `enrollment` or `unregistered`.
    Refused { node: NodeId, record: u64, kind: &'static str, reason: &'static str },
    /// The core refused a hello.
    HelloRefused { node: NodeId },
    /// A message from a node the core does not know reached the engine.
    Unregistered { node: NodeId, kind: &'static str },
}

/// Counters of the shell (the daemon publishes them as metrics).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Rejected datagrams and messages by reason (the sealer's reasons are added by
    /// [`Shell::metrics`]).
    pub rejects: BTreeMap<&'static str, u64>,
    /// Events emitted by kind since start.
    pub events: BTreeMap<&'static str, u64>,
    pub ring_changes: u64,
    pub reports: u64,
    pub store_errors: u64,
    /// Inbox group commits and records made durable.
    pub inbox_syncs: u64,
    pub inbox_records: u64,
    /// Inbox records applied after a restart (the replay).
    pub replayed: u64,
    /// Stored messages with no further effect yet, by kind.
    pub applied_other: BTreeMap<&'static str, u64>,
    pub retransmits: u64,
    /// Messages queued to nanoprobes, by kind.
    pub sent: BTreeMap<&'static str, u64>,
}

impl Metrics {
    pub(crate) fn reject(&mut self, reason: &'static str) {
        *self.rejects.entry(reason).or_insert(0) += 1;
    }
    pub(crate) fn applied_other(&mut self, kind: &'static str) {
        *self.applied_other.entry(kind).or_insert(0) += 1;
    }
    pub(crate) fn event(&mut self, e: &Event) {
        *self.events.entry(e.kind.name()).or_insert(0) += 1;
        if e.kind == EventKind::RingChanged {
            self.ring_changes += 1;
        }
    }
}

/// Decisions the driver plugs in (service checks, the discovery schedule, event tags). Every
/// method has a do-nothing default.
pub trait Extension {
    /// A hello reached the engine; `accepted`: the core registered the node.
    fn hello(&mut self, _cx: &mut Cx<'_>, _node: NodeId, _accepted: bool) {}
    /// A discovery result from a registered node (the shell stores it afterwards).
    fn discovery(&mut self, _cx: &mut Cx<'_>, _node: NodeId, _result: &msg::DiscoveryResult) {}
    /// Any other message from a registered node; returns whether it was handled.
    fn message(&mut self, _cx: &mut Cx<'_>, _node: NodeId, _body: Body) -> bool {
        false
    }
    /// An event before it is stored (tagging).
    fn event(&mut self, _event: &mut Event) {}
}

/// The [`Extension`] that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoExtension;

impl Extension for NoExtension {}

/// Why the shell could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine's store could not be loaded; nothing was changed.
    #[error("cannot load the engine's state: {0}")]
    Load(#[source] StoreFailed),
    /// The inbox could not be read for the replay; nothing was changed.
    #[error("cannot read the inbox: {0}")]
    Inbox(#[source] InboxError),
}

/// The CMA shell. See the crate documentation.
#[derive(Debug)]
pub struct Shell<A, I, S, X = NoExtension> {
    seal: A,
    conns: conns::Conns,
    reader: Reader<I>,
    engine: Engine<S>,
    ext: X,
    open_enrollment: bool,
    effects: Effects,
    transmits: VecDeque<Transmit>,
    notes: VecDeque<Note>,
    metrics: Metrics,
    last: Now,
}

impl<A: Seal, I: Inbox, S: EngineStore + Tokens, X: Extension> Shell<A, I, S, X> {
    /// Loads the engine's state, replays the inbox from the stored position and queues every
    /// ring member's desired peer set. `seal` should already hold the CMA's identity.
    pub fn start(
        config: ShellConfig,
        mut seal: A,
        mut inbox: I,
        mut store: S,
        ext: X,
        now: Now,
    ) -> Result<Self, StartError> {
        let loaded = store.load().map_err(StartError::Load)?;
        for n in &loaded.snapshot.nodes {
            seal.add_peer(n.id, n.public_key);
        }
        let replay = inbox.read_from(loaded.position + 1).map_err(StartError::Inbox)?;
        let applied: HashMap<NodeId, u64> = loaded.applied.into_iter().collect();
        let core = Cma::new(config.cma, loaded.snapshot, now.wall);
        let conns = conns::Conns::new(config.reliable, seal.session(), config.seed);
        let mut shell = Shell {
            seal,
            conns,
            reader: Reader::new(inbox, applied.clone()),
            engine: Engine::new(core, store, applied, config.commit_interval),
            ext,
            open_enrollment: config.open_enrollment,
            effects: Effects::default(),
            transmits: VecDeque::new(),
            notes: VecDeque::new(),
            metrics: Metrics::default(),
            last: now,
        };
        shell.replay(now, replay);
        // Desired state is re-sent after every start: harmless (epochs), and it tells each
        // nanoprobe that the CMA restarted, so it resends what it has not seen acknowledged.
        for node in shell.engine.core.ring() {
            shell.engine.core.resend_peer_set(node);
        }
        shell.flush(now);
        Ok(shell)
    }

    /// Applies inbox records that were stored but whose effects were not before the last stop.
    fn replay(&mut self, now: Now, records: Vec<(u64, Vec<u8>)>) {
        if records.is_empty() {
            return;
        }
        info!(
            records = records.len(),
            from = records[0].0,
            "replaying inbox records not yet applied"
        );
        let mut effects = std::mem::take(&mut self.effects);
        for (lsn, bytes) in records {
            let Some((node, key, m)) = record::decode(&bytes) else {
                error!(lsn, "an inbox record cannot be decoded; skipped");
                continue;
            };
            if self.seal.peer_key(node).is_none() {
                self.seal.add_peer(node, key);
            }
            if m.record > 0 {
                let seen = self.reader.seen.entry(node).or_insert(0);
                *seen = (*seen).max(m.record);
            }
            self.metrics.replayed += 1;
            self.engine.apply(
                now.wall,
                Some(lsn),
                node,
                key,
                m,
                &mut self.ext,
                &mut effects,
                &mut self.metrics,
            );
        }
        self.effects = effects;
        self.finish_turn(now, true);
    }

    /// One datagram from `src`. Call [`Shell::flush`] after a batch of them.
    pub fn handle_datagram(&mut self, now: Now, src: SocketAddr, datagram: &[u8]) {
        self.last = now;
        self.metrics.datagrams_in += 1;
        self.metrics.bytes_in += datagram.len() as u64;
        let opened = match self.seal.open(datagram) {
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
                self.seal.key_reply(&mut out);
                self.transmit(src, out);
            }
            DatagramKind::KeyReply => self.metrics.reject("unexpected_kind"),
            DatagramKind::Direct => match Direct::from_bytes(&opened.plaintext) {
                Ok(Direct { body: Some(DirectBody::ProbeReply(p)) }) => {
                    self.engine.core.handle_probe_reply(now.wall, sender, p.nonce);
                }
                Ok(_) => self.metrics.reject("unexpected_direct"),
                Err(_) => self.metrics.reject("decode"),
            },
            DatagramKind::Reliable => self.handle_frame(now, src, sender, &opened.plaintext),
        }
        if opened.new_peer
            && self.engine.core.node(sender).is_none()
            && !self.reader.enrolled.contains(&sender)
        {
            // A first datagram that did not enrol the node: forget its key again, whatever its
            // kind, so that nothing unauthenticated creates lasting state.
            self.forget(sender);
        }
    }

    fn handle_frame(&mut self, now: Now, src: SocketAddr, sender: NodeId, frame: &[u8]) {
        let conn = self.conns.from(sender, src);
        let bad_frame = conn.handle_frame(frame, now.mono).is_err();
        let mut delivered = Vec::new();
        while let Some(ev) = conn.poll_event() {
            match ev {
                assim_reliable::Event::Delivered(bytes) => delivered.push(bytes),
                assim_reliable::Event::PeerRestarted { .. } => {
                    debug!(node = %sender, "nanoprobe restarted its session")
                }
                assim_reliable::Event::Acked(_) => {}
            }
        }
        if bad_frame {
            self.metrics.reject("bad_frame");
        }
        for bytes in delivered {
            match Message::from_bytes(&bytes) {
                Ok(m) => self.accept(now, sender, &bytes, m),
                Err(_) => self.metrics.reject("decode"),
            }
        }
    }

    /// The reader's half for one delivered message: enrol if unknown, then the inbox.
    fn accept(&mut self, now: Now, sender: NodeId, bytes: &[u8], m: Message) {
        let key = self.seal.peer_key(sender).expect("an opened sender has a key");
        let record = m.record;
        let kind = m.body.as_ref().map_or("unknown", Body::name);
        let known =
            self.engine.core.node(sender).is_some() || self.reader.enrolled.contains(&sender);
        if !known {
            let Some(Body::Hello(hello)) = &m.body else {
                self.refuse(sender, record, kind, "unregistered");
                return;
            };
            let store = &mut self.engine.store;
            match enroll::decide(store, self.open_enrollment, now.wall, sender, &key, hello) {
                Ok(_) => {
                    self.reader.enrolled.insert(sender);
                }
                Err(r) => {
                    self.refuse(sender, record, kind, r.reason());
                    return;
                }
            }
        }
        match self.reader.accept(sender, key, bytes, m) {
            Ok(()) => {}
            Err(NotTaken::Duplicate) => self.refuse(sender, record, kind, "duplicate_record"),
            Err(NotTaken::Gap) => self.refuse(sender, record, kind, "record_gap"),
            Err(NotTaken::InboxFull) => self.refuse(sender, record, kind, "inbox_full"),
        }
    }

    fn refuse(&mut self, node: NodeId, record: u64, kind: &'static str, reason: &'static str) {
        self.metrics.reject(reason);
        self.notes.push_back(Note::Refused { node, record, kind, reason });
    }

    fn forget(&mut self, node: NodeId) {
        self.seal.remove_peer(node);
        self.conns.remove(node);
    }

    /// Runs the timers that are due (reliable retransmissions, the core's deadlines). Call
    /// [`Shell::flush`] afterwards.
    pub fn handle_timeout(&mut self, now: Now) {
        self.last = now;
        self.conns.handle_timeout(now.mono);
        if self.engine.core.poll_timeout().is_some_and(|t| t <= now.wall) {
            self.engine.core.handle_timeout(now.wall);
        }
    }

    /// Ends a turn: group commit of the inbox, acknowledgements, the engine, the store; then
    /// the frames to send.
    pub fn flush(&mut self, now: Now) {
        self.last = now;
        let committed = self.reader.commit(&self.engine.applied, &mut self.metrics);
        let mut effects = std::mem::take(&mut self.effects);
        for (node, through) in committed.acks {
            let body = Body::Ack(msg::Ack { through });
            effects.sends.push(Send::Reliable { to: node, addr: None, body });
        }
        for (lsn, node, key, m) in committed.apply {
            self.engine.apply(
                now.wall,
                lsn,
                node,
                key,
                m,
                &mut self.ext,
                &mut effects,
                &mut self.metrics,
            );
        }
        self.effects = effects;
        self.finish_turn(now, false);
    }

    /// Stores everything pending at once (a graceful stop).
    pub fn stop(&mut self, now: Now) {
        self.flush(now);
        self.finish_turn(now, true);
    }

    fn finish_turn(&mut self, now: Now, force: bool) {
        let mut effects = std::mem::take(&mut self.effects);
        self.engine.drain_core(&mut self.ext, &mut effects, &mut self.metrics);
        if let Some(pos) = self.engine.commit(now.mono, force, &mut self.metrics, &mut effects)
            && let Err(e) = self.reader.inbox.remove_through(pos)
        {
            error!(error = %e, "cannot delete applied inbox records");
        }
        for send in effects.sends.drain(..) {
            match send {
                Send::Reliable { to, addr, body } => {
                    let Some(addr) = addr.or_else(|| self.conns.addr(to)) else { continue };
                    *self.metrics.sent.entry(body.name()).or_insert(0) += 1;
                    let bytes = Message::new(body).to_bytes();
                    if let Err(e) = self.conns.to(to, addr).send(bytes, now.mono) {
                        warn!(node = %to, error = %e, "cannot queue a message for a nanoprobe");
                    }
                }
                Send::Probe { to, addr, nonce } => {
                    let bytes =
                        Direct { body: Some(DirectBody::Probe(msg::Probe { nonce })) }.to_bytes();
                    let mut out = Vec::new();
                    if self.seal.seal(to, DatagramKind::Direct, &bytes, &mut out).is_ok() {
                        self.transmit(addr, out);
                    }
                }
            }
        }
        self.notes.extend(effects.notes.drain(..));
        self.effects = effects;
        let mut frames = Vec::new();
        self.conns.transmit(now.mono, |id, addr, frame| frames.push((id, addr, frame)));
        for (id, addr, frame) in frames {
            let mut out = Vec::with_capacity(frame.len() + 64);
            match self.seal.seal(id, DatagramKind::Reliable, &frame, &mut out) {
                Ok(()) => self.transmit(addr, out),
                Err(e) => warn!(node = %id, error = %e, "cannot seal a frame"),
            }
        }
    }

    fn transmit(&mut self, to: SocketAddr, datagram: Vec<u8>) {
        self.metrics.datagrams_out += 1;
        self.metrics.bytes_out += datagram.len() as u64;
        self.transmits.push_back(Transmit { to, datagram });
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next note.
    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    /// The earliest deadline: reliable retransmissions, the core's timers, a waiting batch.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let last = self.last;
        let core = self
            .engine
            .core
            .poll_timeout()
            .map(|t| if t <= last.wall { last.mono } else { last.mono + t.since(last.wall) });
        let batch = self.engine.commit_due(last.mono);
        [core, self.conns.poll_timeout(), batch].into_iter().flatten().min()
    }

    /// Lets the extension act outside message handling (an API request); call
    /// [`Shell::flush`] afterwards.
    pub fn with_extension<R>(&mut self, now: Now, f: impl FnOnce(&mut X, &mut Cx<'_>) -> R) -> R {
        self.last = now;
        let mut effects = std::mem::take(&mut self.effects);
        let r = f(&mut self.ext, &mut self.engine.cx(now.wall, &mut effects, &mut self.metrics));
        self.effects = effects;
        r
    }

    /// The CMA core (read only: inputs go through the shell).
    pub fn core(&self) -> &Cma {
        &self.engine.core
    }

    pub fn seal(&self) -> &A {
        &self.seal
    }

    pub fn store(&self) -> &S {
        &self.engine.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.engine.store
    }

    pub fn inbox(&self) -> &I {
        &self.reader.inbox
    }

    pub fn extension(&self) -> &X {
        &self.ext
    }

    /// The counters, the sealer's refusals included.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.metrics.clone();
        for (reason, n) in self.seal.rejects() {
            *m.rejects.entry(reason).or_insert(0) += n;
        }
        m.retransmits = self.conns.retransmits();
        m
    }

    /// Gives the parts back (the simulator keeps the store and inbox across a CMA restart).
    pub fn into_parts(self) -> (A, I, S, X) {
        (self.seal, self.reader.inbox, self.engine.store, self.ext)
    }
}
