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
//! 3. **Engine** ([`engine`]): the new inbox records in order into the CMA core
//!    ([`Authority`]: liveness, discovery schedule, check sets, run-now), as one batch per turn
//!    (joins of a turn are one ring change per ring, one peer set per node whose peers changed;
//!    `assim_cma::Cma::begin_batch`); its changes, desired
//!    state, events and the inbox position go to the [`EngineStore`] as one batch, its
//!    desired-state messages onto the nodes' reliable connections.
//! 4. Reliable frames out ([`conns`]), sealed.
//!
//! **Roles** (issue 14, [`Role`]): the embedded CMA runs both halves in one shell
//! ([`Role::Whole`]). A cluster may split them into processes: packet readers
//! ([`Role::Reader`]) take datagrams, append to a shared inbox and acknowledge, and apply
//! nothing; an engine without a socket ([`Role::Engine`]) applies what the readers appended
//! ([`Shell::apply_records`]) and hands its messages for nanoprobes to them as [`Outbound`]
//! ([`Shell::poll_outbound`], [`Shell::deliver`]), addressed to the reader that took the node's
//! latest record ([`record::with_via`]).
//!
//! At start the engine builds the [`Authority`] from the stored snapshot and desired state
//! ([`Loaded::desired`]), which queues every ring member's desired peer set again (this also
//! tells the nanoprobes to resend what they have not seen acknowledged), then replays the inbox
//! from the stored position (records already applied are skipped).
//!
//! Requests from an operator (run a check now, add/remove/list hand-set checks) are shell
//! methods ([`Shell::run_check`], [`Shell::add_manual_check`], …) that call the [`Authority`];
//! a `RunNow`'s answer comes back as [`Note::CommandAnswer`], so a driver keeps only its reply
//! channels, keyed by command id. The driver's only say in decisions is configuration:
//! [`ShellConfig::authority`] (timing, discovery schedule, check rules) and an optional
//! [`EventTagger`].
//!
//! Layout:
//! - [`seal`]: the [`Seal`] trait over [`assim_seal::Sealer`], and [`PlainSeal`] for simulators.
//! - [`enroll`]: the enrolment decision.
//! - [`pace`]: the registration pace: `Busy` answers to key requests beyond the budget.
//! - [`reader`]: next-record rule, inbox appends, group commit, acknowledgements.
//! - [`engine`]: records → core → batch.
//! - [`conns`]: reliable connections and their timers.
//! - [`record`]: the inbox record's byte layout.
//! - [`lease`]: the engine lease decision (which of several engines on one database applies
//!   records; issue 14).

#![forbid(unsafe_code)]

pub mod conns;
pub mod engine;
pub mod enroll;
pub mod lease;
pub mod pace;
pub mod reader;
pub mod record;
pub mod seal;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use assim_cma::check_sets::CheckListEntry;
use assim_cma::{
    Authority, AuthorityConfig, ChecksError, Cma, CmaConfig, CommandAnswer, Event, EventKind,
};
use assim_seal::{OpenError, Throttle};
use assim_wire::msg::{self, Body, Direct, DirectBody, Message};
use assim_wire::{DatagramKind, NodeId, Timestamp};
use tracing::{debug, error, info, warn};

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

/// Which halves of the shell run in this process (issue 14; see the crate doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Reader and engine: the embedded CMA, and a cluster engine that reads its own socket.
    #[default]
    Whole,
    /// A packet reader: authenticates, enrols, appends to the shared inbox with its `id`
    /// (nonzero; unique among the cluster's readers), acknowledges after the inbox's sync, and
    /// delivers the engine's [`Outbound`] messages. It applies nothing and runs no timers of the
    /// core.
    Reader { id: u64 },
    /// An engine that reads no datagrams: it applies the shared inbox's records in order
    /// ([`Shell::apply_records`]) and sends through the readers ([`Shell::poll_outbound`]).
    Engine,
}

/// A message for a nanoprobe from an engine without a socket, for the packet reader that holds
/// the node's connection (issue 14). [`Outbound::encode`] is its form between processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub to: NodeId,
    /// The reader that took the node's latest record, as far as this engine knows. That reader
    /// opens a connection to the node if it has none; any other reader delivers only on a
    /// connection it already has.
    pub via: Option<u64>,
    /// The node's registered address, if the core named one.
    pub addr: Option<SocketAddr>,
    pub what: OutboundKind,
}

/// What an [`Outbound`] carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundKind {
    /// An encoded [`Message`] for the node's reliable connection.
    Message(Vec<u8>),
    /// A direct probe with this nonce.
    Probe { nonce: u64 },
}

impl Outbound {
    /// The largest encoding [`Outbound::decode`] takes (a message fits a spooled record).
    pub const MAX_ENCODED: usize = 4 << 20;

    /// `node(16) via(8, 0: none) kind(1: message, 2: probe) addr_len(1) addr payload`.
    pub fn encode(&self) -> Vec<u8> {
        let addr = self.addr.map(|a| a.to_string()).unwrap_or_default();
        let payload_len = match &self.what {
            OutboundKind::Message(m) => m.len(),
            OutboundKind::Probe { .. } => 8,
        };
        let mut out = Vec::with_capacity(26 + addr.len() + payload_len);
        out.extend_from_slice(self.to.as_bytes());
        out.extend_from_slice(&self.via.unwrap_or(0).to_le_bytes());
        out.push(match self.what {
            OutboundKind::Message(_) => 1,
            OutboundKind::Probe { .. } => 2,
        });
        out.push(addr.len() as u8);
        out.extend_from_slice(addr.as_bytes());
        match &self.what {
            OutboundKind::Message(m) => out.extend_from_slice(m),
            OutboundKind::Probe { nonce } => out.extend_from_slice(&nonce.to_le_bytes()),
        }
        out
    }

    /// The inverse of [`Outbound::encode`]; `None` for anything malformed or too large.
    pub fn decode(bytes: &[u8]) -> Option<Outbound> {
        if bytes.len() > Self::MAX_ENCODED {
            return None;
        }
        let to = NodeId::from_slice(bytes.get(..16)?)?;
        let via = u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?);
        let kind = *bytes.get(24)?;
        let addr_len = *bytes.get(25)? as usize;
        let addr = match addr_len {
            0 => None,
            n => Some(std::str::from_utf8(bytes.get(26..26 + n)?).ok()?.parse().ok()?),
        };
        let payload = bytes.get(26 + addr_len..)?;
        let what = match kind {
            1 => OutboundKind::Message(payload.to_vec()),
            2 => OutboundKind::Probe { nonce: u64::from_le_bytes(payload.try_into().ok()?) },
            _ => return None,
        };
        Some(Outbound { to, via: (via != 0).then_some(via), addr, what })
    }
}

/// How the shell runs.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// Which halves run here (issue 14).
    pub role: Role,
    /// The core's configuration: liveness timing, the discovery schedule, the check rules.
    pub authority: AuthorityConfig,
    /// Accept nanoprobes that present no join token (labs, the demo, the simulator).
    pub open_enrollment: bool,
    pub reliable: assim_reliable::Config,
    /// Seeds the reliable connections' randomness (mixed with each node id).
    pub seed: u64,
    /// How long a batch of changes without events may wait before it is stored (the inbox holds
    /// its records durably meanwhile).
    pub commit_interval: Duration,
    /// Tags every event before it is stored (the bus's tagging rules), if set.
    pub tagger: Option<EventTagger>,
    /// Statistics batches are queued for Graphite under this path prefix (issue 17 item 5);
    /// `None`: no Graphite, nothing is queued (the batches still reach [`Note::Statistics`]).
    pub graphite_prefix: Option<String>,
}

/// The shortest retransmission timeout of the CMA's connections (the reliable layer's own
/// floor is 50 ms). A node's RTT on a LAN is well under a millisecond, so its RTO sits at the
/// floor; while a registration storm or a busy host delays its acknowledgements past it, the
/// CMA resends to every such node at once. In a 20,000-node wire-mode storm that was 161,604
/// retransmissions (8 per node) at 50 ms. 200 ms is the floor TCP uses on Linux.
pub const MIN_RTO: Duration = Duration::from_millis(200);

impl ShellConfig {
    /// The daemon's defaults around `cma`, with the built-in discovery schedule and check rules.
    pub fn new(cma: CmaConfig, seed: u64) -> ShellConfig {
        ShellConfig {
            role: Role::Whole,
            authority: AuthorityConfig { core: cma, ..AuthorityConfig::default() },
            open_enrollment: false,
            reliable: assim_reliable::Config {
                min_rto: MIN_RTO,
                ..assim_reliable::Config::default()
            },
            seed,
            commit_interval: Duration::from_millis(50),
            tagger: None,
            graphite_prefix: None,
        }
    }
}

/// Adds tags to an event before it is stored: configuration of the driver (the bus's tagging
/// rules), not a decision of the core.
#[derive(Clone)]
pub struct EventTagger(Arc<dyn Fn(&mut Event) + std::marker::Send + Sync>);

impl EventTagger {
    pub fn new(f: impl Fn(&mut Event) + std::marker::Send + Sync + 'static) -> EventTagger {
        EventTagger(Arc::new(f))
    }

    pub(crate) fn tag(&self, e: &mut Event) {
        (self.0)(e)
    }
}

impl std::fmt::Debug for EventTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventTagger")
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
    /// A batch was stored; `last_event`: the id of its last event; `events`: the batch's
    /// events as stored (tagged, ids assigned, oldest first), for live delivery (the API's
    /// event fan-out). Moved out of the batch, not copied.
    Stored { last_event: Option<u64>, events: Vec<Event> },
    /// An inbox record reached the engine.
    Applied { node: NodeId, record: u64, kind: &'static str },
    /// A message was not taken into the inbox: `duplicate_record`, `record_gap`, `inbox_full`,
    /// `enrollment` or `unregistered`.
    Refused { node: NodeId, record: u64, kind: &'static str, reason: &'static str },
    /// The core refused a hello.
    HelloRefused { node: NodeId },
    /// A message from a node the core does not know reached the engine.
    Unregistered { node: NodeId, kind: &'static str },
    /// A node answered a `RunNow` someone waits for ([`Shell::run_check`]).
    CommandAnswer(CommandAnswer),
    /// A packet reader got a node's answer to a CMA probe: the driver hands it to the engine
    /// ([`Shell::probe_reply`]).
    ProbeReply { node: NodeId, nonce: u64 },
    /// Ping `address` (a checked switch's management address; ICMP echo, a few tries within
    /// `timeout`) and answer with [`Shell::management_probe_result`]. Only asked when
    /// [`assim_cma::CmaConfig::management_probes`] is on.
    ProbeManagement { id: u64, address: std::net::IpAddr, timeout: Duration },
    /// A checked statistics batch (issue 17 item 5): the driver keeps its latest values for
    /// the Prometheus exposition. Its Graphite points are in the batch being stored.
    Statistics(assim_cma::statistics::StatBatch),
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
    /// Inbox group commits, records made durable, and the time spent in the syncs (ns).
    pub inbox_syncs: u64,
    pub inbox_records: u64,
    pub inbox_sync_nanos: u64,
    /// Inbox records applied after a restart (the replay).
    pub replayed: u64,
    /// Stored messages with no further effect yet, by kind.
    pub applied_other: BTreeMap<&'static str, u64>,
    pub retransmits: u64,
    /// Retransmissions held back by the budget over all connections (`conns::RESENDS_PER_S`).
    pub retransmits_held: u64,
    /// X25519 operations done by the sealer (first contacts, key derivations).
    pub dh_ops: u64,
    /// `Busy` answers to key requests beyond the budget ([`pace`]), and refused key requests
    /// left unanswered because the `Busy` budget was used up too.
    pub busy_sent: u64,
    pub busy_dropped: u64,
    /// Messages queued to nanoprobes, by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Statistics (issue 17 item 5): batches taken, series taken, series dropped as invalid,
    /// batches whose time was clamped from the future, batches refused whole.
    pub statistics_batches: u64,
    pub statistics_series: u64,
    pub statistics_invalid: u64,
    pub statistics_clamped: u64,
    pub statistics_refused: u64,
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
pub struct Shell<A, I, S> {
    seal: A,
    conns: conns::Conns,
    reader: Reader<I>,
    engine: Engine<S>,
    open_enrollment: bool,
    enroll_log: enroll::RefusalLog,
    /// The registration pace ([`pace`]) and the budget of its `Busy` answers.
    pacer: pace::Pacer,
    window: pace::Window,
    busy_budget: assim_seal::Budget,
    effects: Effects,
    transmits: VecDeque<Transmit>,
    notes: VecDeque<Note>,
    metrics: Metrics,
    last: Now,
    /// The first inbox record deferred while the store failed (issue 16 item 15).
    deferred_from: Option<u64>,
    role: Role,
    /// A packet reader: nodes it admitted without the core (enrolled through it, or found
    /// registered in the store).
    admitted: HashSet<NodeId>,
    /// An engine: per node, the reader that took its latest record.
    via: HashMap<NodeId, u64>,
    /// An engine: the highest inbox position applied (or deferred).
    applied_through: u64,
    /// An engine: messages for the readers to deliver.
    outbound: VecDeque<Outbound>,
}

impl<A: Seal, I: Inbox, S: EngineStore + Tokens> Shell<A, I, S> {
    /// Loads the engine's state, queues every ring member's desired peer set and replays the
    /// inbox from the stored position. `seal` should already hold the CMA's identity.
    pub fn start(
        config: ShellConfig,
        mut seal: A,
        mut inbox: I,
        mut store: S,
        now: Now,
    ) -> Result<Self, StartError> {
        let loaded = store.load().map_err(StartError::Load)?;
        for n in &loaded.snapshot.nodes {
            seal.add_peer(n.id, n.public_key);
        }
        let role = config.role;
        let replay = match role {
            // A reader applies nothing, so it replays nothing.
            Role::Reader { .. } => Vec::new(),
            Role::Whole | Role::Engine => {
                inbox.read_from(loaded.position + 1).map_err(StartError::Inbox)?
            }
        };
        let position = loaded.position;
        let applied: HashMap<NodeId, u64> = loaded.applied.into_iter().collect();
        let incarnations: HashMap<NodeId, u64> = loaded.incarnations.into_iter().collect();
        // Queues the peer sets of every ring member (desired state after a start) and the
        // discovery schedule's new epoch if its configuration changed.
        let core = Authority::new(config.authority, loaded.snapshot, loaded.desired, now.wall);
        let conns = conns::Conns::new(config.reliable, seal.session(), config.seed);
        let mut reader = Reader::new(inbox, applied.clone(), incarnations.clone());
        if let Role::Reader { id } = role {
            reader.trust_acked_through = true;
            reader.via = id;
        }
        let mut shell = Shell {
            seal,
            conns,
            reader,
            engine: Engine::new(core, store, applied, config.commit_interval, config.tagger)
                .with_incarnations(incarnations)
                .with_graphite_prefix(config.graphite_prefix),
            open_enrollment: config.open_enrollment,
            enroll_log: enroll::RefusalLog::default(),
            pacer: pace::Pacer::new(assim_seal::Limits::KEY_REQUEST),
            window: pace::Window::new(pace::WINDOW, pace::STALE),
            busy_budget: assim_seal::Budget::new(pace::busy_limits(
                assim_seal::Limits::KEY_REQUEST,
            )),
            effects: Effects::default(),
            transmits: VecDeque::new(),
            notes: VecDeque::new(),
            metrics: Metrics::default(),
            last: now,
            deferred_from: None,
            role,
            admitted: HashSet::new(),
            via: HashMap::new(),
            applied_through: position,
            outbound: VecDeque::new(),
        };
        shell.replay(now, replay);
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
        self.metrics.replayed += self.apply_stored(now, records, &mut effects);
        self.effects = effects;
        self.finish_turn(now, true);
    }

    /// Applies records read back from the inbox, in order, as one batch of the core: at a
    /// start, after the store failed, or records another writer appended. Their senders count
    /// as seen by the reader (so their resends are duplicates) and their keys as known. Returns
    /// how many could be decoded.
    fn apply_stored(
        &mut self,
        now: Now,
        records: Vec<(u64, Vec<u8>)>,
        effects: &mut Effects,
    ) -> u64 {
        let mut applied = 0;
        self.engine.core.begin_batch();
        for (lsn, bytes) in records {
            let Some((node, key, m)) = record::decode(&bytes) else {
                error!(lsn, "an inbox record cannot be decoded; skipped");
                continue;
            };
            if self.seal.peer_key(node).is_none() {
                self.seal.add_peer(node, key);
            }
            self.applied_through = self.applied_through.max(lsn);
            if let Some(via) = record::via(&bytes) {
                self.via.insert(node, via);
            }
            self.reader.note_hello(node, &m);
            if m.record > 0 {
                let seen = self.reader.seen.entry(node).or_insert(0);
                *seen = (*seen).max(m.record);
            }
            applied += 1;
            self.engine.apply(now.wall, Some(lsn), node, key, m, effects, &mut self.metrics);
        }
        self.engine.core.end_batch(now.wall);
        applied
    }

    /// One datagram from `src`. Call [`Shell::flush`] after a batch of them.
    pub fn handle_datagram(&mut self, now: Now, src: SocketAddr, datagram: &[u8]) {
        self.last = now;
        self.metrics.datagrams_in += 1;
        self.metrics.bytes_in += datagram.len() as u64;
        let opened = match self.seal.open(now.mono, src, datagram) {
            Ok(o) => o,
            Err(e) => {
                debug!(%src, reason = e.reason(), "datagram rejected");
                match e {
                    OpenError::KeyMismatch(id) => {
                        warn!(%src, node = %id, "datagram claims a known node id with a different key; refused");
                    }
                    OpenError::Throttled(Throttle::KeyRequestBudget) => {
                        self.answer_busy(now, src, datagram)
                    }
                    _ => {}
                }
                return;
            }
        };
        let sender = opened.header.sender;
        match opened.header.kind {
            DatagramKind::KeyRequest => {
                // Opened means: well-formed (it carries the requester's key, padded to the
                // reply's length) and within the key-request budget.
                if let Some(key) = opened.header.sender_key {
                    let mut out = Vec::new();
                    if self.window.admit(sender, now.mono) {
                        self.seal.key_reply(&key, &mut out);
                    } else {
                        // Enough registrations in flight: come back later ([`pace`]).
                        let wait = self.pacer.wait(now.mono);
                        self.seal.busy(&key, wait, &mut out);
                        self.metrics.busy_sent += 1;
                    }
                    self.transmit(src, out);
                }
            }
            DatagramKind::KeyReply | DatagramKind::Busy => self.metrics.reject("unexpected_kind"),
            DatagramKind::Direct => match Direct::from_bytes(&opened.plaintext) {
                Ok(Direct { body: Some(DirectBody::ProbeReply(p)) }) => match self.role {
                    Role::Reader { .. } => {
                        self.notes.push_back(Note::ProbeReply { node: sender, nonce: p.nonce })
                    }
                    Role::Whole | Role::Engine => {
                        self.engine.core.handle_probe_reply(now.wall, sender, p.nonce)
                    }
                },
                Ok(_) => self.metrics.reject("unexpected_direct"),
                Err(_) => self.metrics.reject("decode"),
            },
            DatagramKind::Reliable => self.handle_frame(now, src, sender, &opened.plaintext),
        }
        if opened.new_peer && !self.is_known(sender) {
            // A first datagram that did not enrol the node: forget its key again, whatever its
            // kind, so that nothing unauthenticated creates lasting state.
            self.forget(sender);
        }
    }

    /// A key request the budget refused: a `Busy` with its slot ([`pace`]), if the `Busy`
    /// budget allows; otherwise no answer.
    fn answer_busy(&mut self, now: Now, src: SocketAddr, datagram: &[u8]) {
        let Ok((header, _)) = assim_wire::Header::decode(datagram) else { return };
        let Some(key) = header.sender_key else { return };
        if self.busy_budget.admit(now.mono, src.ip()).is_err() {
            self.metrics.busy_dropped += 1;
            return;
        }
        let wait = self.pacer.wait(now.mono);
        let mut out = Vec::new();
        self.seal.busy(&key, wait, &mut out);
        self.metrics.busy_sent += 1;
        self.transmit(src, out);
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

    /// Whether the sender may send more than a hello: the core knows it, a hello of this turn
    /// enrolled it, or (a packet reader) it was admitted earlier.
    fn is_known(&self, sender: NodeId) -> bool {
        self.engine.core.cma().node(sender).is_some()
            || self.reader.enrolled.contains(&sender)
            || self.admitted.contains(&sender)
    }

    /// A packet reader: whether the store holds `sender` registered with `key` (another reader
    /// enrolled it after this one started). Asked only for a sender that authenticated with a
    /// key the sealer did not hold, so first contacts' budget bounds the lookups.
    fn registered_elsewhere(&mut self, sender: NodeId, key: &[u8; 32]) -> bool {
        if !matches!(self.role, Role::Reader { .. }) {
            return false;
        }
        match self.engine.store.registered_key(sender) {
            Ok(Some(k)) if k == *key => {
                self.admitted.insert(sender);
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(node = %sender, error = %e, "cannot look up a node in the store");
                false
            }
        }
    }

    /// The reader's half for one delivered message: enrol if unknown, then the inbox.
    fn accept(&mut self, now: Now, sender: NodeId, bytes: &[u8], m: Message) {
        let key = self.seal.peer_key(sender).expect("an opened sender has a key");
        let record = m.record;
        let kind = m.body.as_ref().map_or("unknown", Body::name);
        let known = self.is_known(sender) || self.registered_elsewhere(sender, &key);
        if !known {
            let Some(Body::Hello(hello)) = &m.body else {
                self.refuse(sender, record, kind, "unregistered");
                return;
            };
            let (store, log) = (&mut self.engine.store, &mut self.enroll_log);
            match enroll::decide(store, log, self.open_enrollment, now.wall, sender, &key, hello) {
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
            Err(NotTaken::StoreUnavailable) => {
                if let Some(st) = self.engine.stall.as_mut() {
                    st.refused += 1;
                }
                self.refuse(sender, record, kind, "store_unavailable")
            }
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

    /// The driver's answer to [`Note::ProbeManagement`] `id`. Call [`Shell::flush`]
    /// afterwards.
    pub fn management_probe_result(&mut self, now: Now, id: u64, answered: bool) {
        self.last = now;
        self.engine.core.handle_management_probe(now.wall, id, answered);
    }

    /// Runs the timers that are due (reliable retransmissions, the core's deadlines). Call
    /// [`Shell::flush`] afterwards.
    pub fn handle_timeout(&mut self, now: Now) {
        self.last = now;
        self.conns.handle_timeout(now.mono);
        if matches!(self.role, Role::Reader { .. }) {
            return;
        }
        if self.engine.core.poll_timeout().is_some_and(|t| t <= now.wall) {
            self.engine.core.handle_timeout(now.wall);
        }
    }

    /// Ends a turn: group commit of the inbox, acknowledgements, the engine, the store; then
    /// the frames to send.
    pub fn flush(&mut self, now: Now) {
        self.last = now;
        self.enroll_log.tick(now.wall);
        let committed =
            self.reader.commit(&self.engine.applied, &self.engine.incarnations, &mut self.metrics);
        if let Role::Reader { .. } = self.role {
            self.reader_flush(now, committed);
            return;
        }
        if self.role == Role::Engine {
            // Every record is another process's: they come in through `apply_records`.
        } else if let Some(from) = self.reader.inbox.appended_elsewhere(committed.gaps) {
            // Records this engine did not append (another writer of a shared inbox, or a sync
            // that failed yet reached it): applied first, in inbox order, like deferred ones.
            warn!(from, "the inbox holds records this engine did not append; applying them first");
            self.deferred_from = Some(self.deferred_from.map_or(from, |d| d.min(from)));
        }
        let mut effects = std::mem::take(&mut self.effects);
        for (node, through, incarnation) in committed.acks {
            let body = Body::Ack(msg::Ack { through, incarnation });
            effects.sends.push(Send::Reliable { to: node, addr: None, body });
        }
        // The turn's records are one batch for the core: one ring change per ring, one peer
        // set per node whose peers changed, one store commit (issue 18).
        self.engine.core.begin_batch();
        for (lsn, node, key, m) in committed.apply {
            if let Some(lsn) = lsn
                && self.held()
            {
                // The store fails: the record waits in the inbox (issue 16 item 15).
                if let Some(st) = self.engine.stall.as_mut() {
                    st.deferred += 1;
                }
                self.deferred_from.get_or_insert(lsn);
                continue;
            }
            if matches!(m.body, Some(Body::Hello(_)))
                && let Some(in_flight) = self.window.registered(node, now.mono)
            {
                self.pacer.completed(in_flight, self.window.limit());
            }
            self.engine.apply(now.wall, lsn, node, key, m, &mut effects, &mut self.metrics);
        }
        self.engine.core.end_batch(now.wall);
        self.effects = effects;
        self.finish_turn(now, false);
    }

    /// A packet reader's end of a turn: acknowledgements for what the inbox took; the records
    /// themselves are the engine's.
    fn reader_flush(&mut self, now: Now, committed: reader::Committed) {
        // A reader's records are all durable here: one the inbox did not take is kept for
        // another append ([`reader`]), never handed on without a position.
        for (_, node, _, m) in committed.apply {
            if !matches!(m.body, Some(Body::Hello(_))) {
                continue;
            }
            self.admitted.insert(node);
            if let Some(in_flight) = self.window.registered(node, now.mono) {
                self.pacer.completed(in_flight, self.window.limit());
            }
        }
        for (node, through, incarnation) in committed.acks {
            let body = Body::Ack(msg::Ack { through, incarnation });
            self.effects.sends.push(Send::Reliable { to: node, addr: None, body });
        }
        self.finish_turn(now, false);
    }

    /// An engine without a socket ([`Role::Engine`]): the shared inbox's records from the
    /// packet readers, in inbox order (positions at or below those applied already are
    /// skipped). Applied as one batch of the core; while the store fails they wait in the
    /// inbox and are read again from there once it works. Sends what the batch decided as
    /// [`Outbound`].
    pub fn apply_records(&mut self, now: Now, records: Vec<(u64, Vec<u8>)>) {
        self.last = now;
        let through = self.applied_through;
        let records: Vec<_> = records.into_iter().filter(|(lsn, _)| *lsn > through).collect();
        let Some(&(first, _)) = records.first() else { return };
        let mut effects = std::mem::take(&mut self.effects);
        if self.held() {
            if let Some(st) = self.engine.stall.as_mut() {
                st.deferred += records.len() as u64;
            }
            self.deferred_from.get_or_insert(first);
            self.applied_through = records.last().map_or(through, |r| r.0);
        } else {
            self.apply_stored(now, records, &mut effects);
        }
        self.effects = effects;
        self.finish_turn(now, false);
    }

    /// The next inbox position an engine without a socket has not applied: where its follower
    /// of the shared inbox starts.
    pub fn next_position(&self) -> u64 {
        self.applied_through + 1
    }

    /// A node's answer to a CMA probe, which a packet reader received ([`Note::ProbeReply`]).
    pub fn probe_reply(&mut self, now: Now, node: NodeId, nonce: u64) {
        self.last = now;
        self.engine.core.handle_probe_reply(now.wall, node, nonce);
    }

    /// The next message for a packet reader to deliver ([`Role::Engine`]).
    pub fn poll_outbound(&mut self) -> Option<Outbound> {
        self.outbound.pop_front()
    }

    /// A packet reader: delivers an engine's message on the node's connection, if this reader
    /// holds it (or is the one named to). Returns whether it did. Call [`Shell::flush`]
    /// afterwards.
    pub fn deliver(&mut self, now: Now, out: Outbound) -> bool {
        self.last = now;
        let Role::Reader { id } = self.role else { return false };
        let addr = match (self.conns.addr(out.to), out.via == Some(id), out.addr) {
            (Some(a), _, _) => a,
            (None, true, Some(a)) if self.seal.peer_key(out.to).is_some() => a,
            _ => return false,
        };
        match out.what {
            OutboundKind::Message(bytes) => {
                let kind = Message::from_bytes(&bytes)
                    .ok()
                    .and_then(|m| m.body.map(|b| b.name()))
                    .unwrap_or("unknown");
                *self.metrics.sent.entry(kind).or_insert(0) += 1;
                if let Err(e) = self.conns.to(out.to, addr).send(bytes, now.mono) {
                    warn!(node = %out.to, error = %e, "cannot queue a message for a nanoprobe");
                }
            }
            OutboundKind::Probe { nonce } => {
                let bytes =
                    Direct { body: Some(DirectBody::Probe(msg::Probe { nonce })) }.to_bytes();
                let mut sealed = Vec::new();
                if self.seal.seal(out.to, DatagramKind::Direct, &bytes, &mut sealed).is_ok() {
                    self.transmit(addr, sealed);
                }
            }
        }
        true
    }

    /// Whether new records wait: the store fails, or records deferred while it did are not
    /// applied yet (they go first, in inbox order).
    fn held(&self) -> bool {
        self.engine.stall.is_some() || self.deferred_from.is_some()
    }

    /// Applies the inbox records deferred while the store failed, once it works again.
    fn catch_up(&mut self, now: Now, effects: &mut Effects) {
        let Some(from) = self.deferred_from else { return };
        let records = match self.reader.inbox.read_from(from) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, from, "cannot read the inbox records deferred while the store failed; retrying");
                return;
            }
        };
        self.deferred_from = None;
        info!(records = records.len(), from, "applying inbox records not applied yet");
        self.apply_stored(now, records, effects);
    }

    /// Whether the store fails, since when, and what it cost so far (issue 16 item 15): the
    /// CMA then acknowledges no new records (see [`engine`]).
    pub fn store_unavailable(&self) -> Option<&engine::Stall> {
        self.engine.stall.as_ref()
    }

    /// What the engine's batch in memory holds (changes, events, progress entries): bounded
    /// while the store fails, whatever the traffic.
    pub fn pending_batch(&self) -> usize {
        self.engine.pending()
    }

    /// Stores everything pending at once (a graceful stop).
    pub fn stop(&mut self, now: Now) {
        self.flush(now);
        self.finish_turn(now, true);
    }

    fn finish_turn(&mut self, now: Now, force: bool) {
        let mut effects = std::mem::take(&mut self.effects);
        if matches!(self.role, Role::Reader { .. }) {
            // A reader's only sends are its acknowledgements; the core is the engine's.
            self.send_all(now, &mut effects);
            return;
        }
        self.engine.drain_core(&mut effects, &mut self.metrics);
        if let Some(pos) = self.engine.commit(now.mono, force, &mut self.metrics, &mut effects)
            && let Err(e) = self.reader.inbox.remove_through(pos)
        {
            error!(error = %e, "cannot delete applied inbox records");
        }
        if self.engine.stall.is_none() && self.deferred_from.is_some() {
            // The store works again: the deferred records now, stored with the next batch.
            self.catch_up(now, &mut effects);
            self.engine.drain_core(&mut effects, &mut self.metrics);
            self.engine.commit_soon = true;
        }
        self.reader.paused = self.held();
        if self.role == Role::Engine {
            for send in effects.sends.drain(..) {
                let (to, addr, what) = match send {
                    Send::Reliable { to, addr, body } => {
                        *self.metrics.sent.entry(body.name()).or_insert(0) += 1;
                        (to, addr, OutboundKind::Message(Message::new(body).to_bytes()))
                    }
                    Send::Probe { to, addr, nonce } => {
                        (to, Some(addr), OutboundKind::Probe { nonce })
                    }
                };
                let via = self.via.get(&to).copied();
                self.outbound.push_back(Outbound { to, via, addr, what });
            }
        }
        self.send_all(now, &mut effects);
    }

    /// Carries out the sends (on the nodes' connections) and notes of a turn, then seals the
    /// frames due.
    fn send_all(&mut self, now: Now, effects: &mut Effects) {
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
        self.effects = std::mem::take(effects);
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
        if matches!(self.role, Role::Reader { .. }) {
            return self.conns.poll_timeout();
        }
        let last = self.last;
        let core = self
            .engine
            .core
            .poll_timeout()
            .map(|t| if t <= last.wall { last.mono } else { last.mono + t.since(last.wall) });
        let batch = self.engine.commit_due(last.mono);
        [core, self.conns.poll_timeout(), batch].into_iter().flatten().min()
    }

    // ------------------------------------------------------------------------------------------
    // operator requests (the API): each calls the core; call [`Shell::flush`] afterwards

    /// `assim check run`: sends the node `RunNow`; its answer comes back as
    /// [`Note::CommandAnswer`] with the returned command id. Refused (nothing sent) with a
    /// sentence saying what to do.
    pub fn run_check(&mut self, now: Now, host: &str, check: &str) -> Result<u64, String> {
        self.last = now;
        let id = self.engine.core.run_check(now.wall, host, check)?;
        info!(host, check, command_id = id, "asking a nanoprobe to run a check now");
        Ok(id)
    }

    /// Nobody waits for this command's answer any more.
    pub fn cancel_command(&mut self, command_id: u64) {
        self.engine.core.cancel_command(command_id);
    }

    /// `assim check add`: adds (or replaces) a hand-set check; the batch is stored at the end
    /// of this turn.
    pub fn add_manual_check(
        &mut self,
        now: Now,
        host: &str,
        spec: msg::CheckSpec,
    ) -> Result<CheckListEntry, ChecksError> {
        self.last = now;
        let (name, kind) = (spec.name.clone(), spec.kind.clone());
        let r = self.engine.core.add_manual_check(now.wall, host, spec)?;
        info!(host, check = %name, kind = %kind, "hand-set check added");
        self.engine.commit_soon = true;
        Ok(r)
    }

    /// `assim check remove`: removes a hand-set check; returns the host's name and its set's
    /// new epoch. The batch is stored at the end of this turn.
    pub fn remove_manual_check(
        &mut self,
        now: Now,
        host: &str,
        check: &str,
    ) -> Result<(String, u64), ChecksError> {
        self.last = now;
        let r = self.engine.core.remove_manual_check(now.wall, host, check)?;
        info!(host, check, "hand-set check removed");
        self.engine.commit_soon = true;
        Ok(r)
    }

    /// `assim check list`: the desired check sets (one host's, or all).
    pub fn list_checks(&self, host: Option<&str>) -> Result<Vec<CheckListEntry>, ChecksError> {
        self.engine.core.list_checks(host)
    }

    /// The CMA's liveness core (read only: inputs go through the shell).
    pub fn core(&self) -> &Cma {
        self.engine.core.cma()
    }

    /// The whole decision core (read only).
    pub fn authority(&self) -> &Authority {
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

    /// The counters, the sealer's refusals included.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.metrics.clone();
        for (reason, n) in self.seal.rejects() {
            *m.rejects.entry(reason).or_insert(0) += n;
        }
        m.retransmits = self.conns.retransmits();
        m.retransmits_held = self.conns.resends_held;
        m.dh_ops = self.seal.dh_ops();
        m
    }

    /// Gives the parts back (the simulator keeps the store and inbox across a CMA restart).
    pub fn into_parts(self) -> (A, I, S) {
        (self.seal, self.reader.inbox, self.engine.store)
    }
}
