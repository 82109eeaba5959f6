//! The decision engine's half: inbox records in order → the CMA core → one batch to the
//! [`EngineStore`].
//!
//! Every record carries its inbox position; the batch carries the last one, so the stored state
//! and the stored position always match. A spool record at or below the node's applied record is
//! skipped (applied before a restart). Events go to the store at once (subscribers wait for
//! them); a batch of changes alone may wait up to [`crate::ShellConfig::commit_interval`].
//!
//! The core is [`Authority`]: every record goes through its `handle_*` inputs, and its outputs
//! are carried out in order — `Core(Action)` (peer sets, probes, the liveness core's changes,
//! events), `Persist(DesiredChange)` into the batch (`assim_store::desired::add_change`),
//! `Send` queued on the node's reliable connection. A batch is stored before the turn's sends
//! go out only when it is due; otherwise the inbox holds the records durably meanwhile and a
//! restart replays them, so nothing sent is ever lost from the store's point of view.
//!
//! **A store that keeps failing** (issue 16 item 15): a failed batch is kept and retried every
//! commit interval, and the engine is *stalled* from the first failure to the next success.
//! While it is, the reader takes no spool record (nothing new is acknowledged, so the
//! nanoprobes keep their records in their spools and resend them later), and messages without
//! a record number (hellos, goodbyes, command results, which the transport already
//! acknowledged) stay in the inbox, unapplied, until the store works again; so the batch grows
//! only with what the core decides on its own (timers, operator requests), bounded by the
//! fleet, never by the traffic. One ERROR line says when it starts, a reminder with counts
//! follows every [`STALL_REMINDER`], an INFO line when it ends; [`Stall`] is what the driver
//! shows (metrics, health).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_cma::{Action, Authority, Change, DesiredChange, Event, Output};
use assim_wire::msg::{Body, Message};
use assim_wire::{NodeId, Timestamp};
use tracing::{debug, error, info, warn};

use crate::reader::{Incarnation, incarnation_change};
use crate::{EventTagger, Metrics, Note};
use assim_store::{EngineStore, InboxProgress};

/// How often a stalled engine tries its batch again (at least; or the commit interval).
pub const STALL_RETRY: Duration = Duration::from_secs(1);
/// How often a stalled engine repeats its ERROR line.
pub const STALL_REMINDER: Duration = Duration::from_secs(60);

/// The store refuses batches (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// When the first batch failed.
    pub since: Instant,
    /// Failed attempts so far.
    pub failures: u64,
    /// The store's last error.
    pub error: String,
    /// Spool records refused meanwhile (they wait in the nanoprobes' spools).
    pub refused: u64,
    /// Messages kept in the inbox meanwhile, applied once the store works again.
    pub deferred: u64,
    last_reminder: Instant,
}

/// What the engine asks the shell to send.
#[derive(Debug)]
pub(crate) enum Send {
    /// A message on the node's reliable connection.
    Reliable { to: NodeId, addr: Option<SocketAddr>, body: Body },
    /// A direct probe.
    Probe { to: NodeId, addr: SocketAddr, nonce: u64 },
}

/// Everything a step of the engine produced besides its batch.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) sends: Vec<Send>,
    pub(crate) notes: Vec<Note>,
}

/// The batch being built.
#[derive(Debug, Default)]
struct Batch {
    changes: Vec<Change>,
    events: Vec<Event>,
    progress: InboxProgress,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.events.is_empty()
            && self.progress == InboxProgress::default()
    }
}

#[derive(Debug)]
pub(crate) struct Engine<S> {
    pub(crate) core: Authority,
    pub(crate) store: S,
    /// Per node: the highest spool record applied (stored or in the batch).
    pub(crate) applied: HashMap<NodeId, u64>,
    /// Per node: the spool incarnation `applied` counts in (stored or in the batch).
    pub(crate) incarnations: HashMap<NodeId, u64>,
    batch: Batch,
    commit_interval: Duration,
    last_commit: Option<Instant>,
    /// Store the batch at the end of this turn (an operator waits for it).
    pub(crate) commit_soon: bool,
    /// Tags events before they are stored (the driver's configuration).
    tagger: Option<EventTagger>,
    /// The store refuses batches (issue 16 item 15).
    pub(crate) stall: Option<Stall>,
    /// Statistics are queued for Graphite under this prefix (issue 17 item 5).
    graphite_prefix: Option<String>,
}

impl<S: EngineStore> Engine<S> {
    pub(crate) fn new(
        core: Authority,
        store: S,
        applied: HashMap<NodeId, u64>,
        commit_interval: Duration,
        tagger: Option<EventTagger>,
    ) -> Self {
        Engine {
            core,
            store,
            applied,
            incarnations: HashMap::new(),
            batch: Batch::default(),
            commit_interval,
            last_commit: None,
            commit_soon: false,
            tagger,
            stall: None,
            graphite_prefix: None,
        }
    }

    /// Queue statistics for Graphite under `prefix` (`None`: not at all).
    pub(crate) fn with_graphite_prefix(mut self, prefix: Option<String>) -> Self {
        self.graphite_prefix = prefix;
        self
    }

    /// The spool incarnations stored with `applied`.
    pub(crate) fn with_incarnations(mut self, incarnations: HashMap<NodeId, u64>) -> Self {
        self.incarnations = incarnations;
        self
    }

    /// A hello's spool incarnation (issue 16 item 9, see [`crate::reader`]): remembered in the
    /// batch, and a new one resets the node's applied record there too.
    fn note_hello(&mut self, node: NodeId, m: &Message) {
        let Some(Body::Hello(h)) = &m.body else { return };
        let inc = h.spool_incarnation;
        let reset = match incarnation_change(self.incarnations.get(&node).copied(), inc) {
            Incarnation::Same => return,
            Incarnation::Adopt => false,
            Incarnation::Reset => true,
        };
        self.incarnations.insert(node, inc);
        let entry = self.batch.progress.incarnations.entry(node).or_default();
        entry.incarnation = inc;
        if reset {
            entry.reset = true;
            let old = self.applied.insert(node, 0).unwrap_or(0);
            let a = self.batch.progress.applied.entry(node).or_insert((0, 0));
            a.0 = 0;
            info!(
                node = %node, old_through = old, incarnation = format_args!("{inc:016x}"),
                "the node's spool was lost or reset; taking its records from 1 again"
            );
        }
    }

    /// Applies one inbox record (`lsn` is `None` for a message the inbox could not take, which
    /// is applied without it rather than lost after its transport acknowledgement).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &mut self,
        now: Timestamp,
        lsn: Option<u64>,
        sender: NodeId,
        key: [u8; 32],
        m: Message,
        effects: &mut Effects,
        metrics: &mut Metrics,
    ) {
        if let Some(lsn) = lsn {
            self.batch.progress.position = Some(lsn);
        }
        if m.record > 0 {
            if m.record <= self.applied.get(&sender).copied().unwrap_or(0) {
                return; // applied before a restart
            }
            self.applied.insert(sender, m.record);
            let e = self.batch.progress.applied.entry(sender).or_insert((0, 0));
            *e = (m.record, e.1 + 1);
        }
        self.note_hello(sender, &m);
        let Some(body) = m.body else {
            metrics.reject("unknown_message");
            return;
        };
        effects.notes.push(Note::Applied { node: sender, record: m.record, kind: body.name() });
        self.handle_message(now, sender, key, body, effects, metrics);
    }

    fn handle_message(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        key: [u8; 32],
        body: Body,
        effects: &mut Effects,
        metrics: &mut Metrics,
    ) {
        let core = &mut self.core;
        if let Body::Hello(hello) = &body {
            if let Err(e) = core.handle_hello(now, sender, key, hello) {
                warn!(node = %sender, error = %e, "hello refused");
                metrics.reject("bad_hello");
                effects.notes.push(Note::HelloRefused { node: sender });
            }
            return;
        }
        if core.cma().node(sender).is_none() {
            metrics.reject("unregistered");
            effects.notes.push(Note::Unregistered { node: sender, kind: body.name() });
            return;
        }
        core.handle_alive(now, sender);
        match body {
            Body::Goodbye(_) => core.handle_goodbye(now, sender),
            Body::HeartbeatReport(r) => {
                metrics.reports += 1;
                core.handle_report(now, sender, &r);
            }
            Body::PeerStatus(s) => core.handle_peer_status(now, sender, &s),
            Body::LocalEvent(ev) => {
                metrics.applied_other("local_event");
                if let Err(e) = core.handle_local_event(now, sender, &ev) {
                    warn!(node = %sender, error = %e, "local event refused");
                    metrics.reject("bad_local_event");
                }
            }
            Body::DiscoveryResult(d) => match core.handle_discovery(now, sender, &d) {
                Ok(()) => metrics.applied_other("discovery_result"),
                Err(e) => {
                    warn!(node = %sender, error = %e, "invalid discovery result; ignored");
                    metrics.reject("bad_discovery");
                }
            },
            Body::CheckStateChange(c) => {
                if let Err(e) = core.handle_check_state_change(now, sender, &c) {
                    warn!(node = %sender, error = %e, "check state change refused");
                    metrics.reject("bad_check_change");
                }
            }
            Body::ProbeResult(r) => {
                metrics.applied_other("probe_result");
                core.handle_probe_result(now, sender, &r);
            }
            Body::CommandResult(r) => match core.command_result(sender, &r) {
                Some(answer) => effects.notes.push(Note::CommandAnswer(answer)),
                None => {
                    debug!(node = %sender, command_id = r.command_id, "command result nobody waits for")
                }
            },
            Body::Statistics(s) => match core.handle_statistics(now, sender, &s) {
                Ok(None) => metrics.applied_other("statistics"),
                Ok(Some(b)) => {
                    metrics.statistics_batches += 1;
                    metrics.statistics_series += b.series.len() as u64;
                    if b.refused > 0 {
                        metrics.statistics_invalid += b.refused as u64;
                        warn!(
                            node = %sender, dropped = b.refused,
                            first = b.first_refusal.as_deref().unwrap_or(""),
                            "invalid statistics series dropped (the rest of the batch is kept)"
                        );
                    }
                    if let Some(from) = b.clamped_from_s {
                        metrics.statistics_clamped += 1;
                        warn!(
                            node = %sender, batch_time = from, cma_time = b.at_s,
                            "a statistics batch is stamped in the future; sent with the CMA's \
                             time instead (check the host's clock)"
                        );
                    }
                    if let Some(prefix) = &self.graphite_prefix {
                        self.batch
                            .progress
                            .statistics
                            .extend(assim_cma::statistics::graphite_points(prefix, &b));
                    }
                    effects.notes.push(Note::Statistics(b));
                }
                Err(e) => {
                    metrics.statistics_refused += 1;
                    warn!(node = %sender, error = %e, "statistics batch refused");
                    metrics.reject("bad_statistics");
                }
            },
            other => {
                let kind = other.name();
                metrics.applied_other(kind);
                debug!(node = %sender, kind, "message stored; nothing more to do with it yet");
            }
        }
    }

    /// Carries out the core's outputs in order: persistence and events into the batch, sends
    /// into `effects`.
    pub(crate) fn drain_core(&mut self, effects: &mut Effects, metrics: &mut Metrics) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Core(Action::SendPeerSet { to, addr, set }) => effects
                    .sends
                    .push(Send::Reliable { to, addr: Some(addr), body: Body::PeerSet(set) }),
                Output::Core(Action::Probe { node, addr, nonce }) => {
                    effects.sends.push(Send::Probe { to: node, addr, nonce })
                }
                Output::Core(Action::ProbeRequest { to, addr, request }) => {
                    effects.sends.push(Send::Reliable {
                        to,
                        addr: Some(addr),
                        body: Body::ProbeRequest(request),
                    })
                }
                Output::Core(Action::ProbeManagement { id, address, timeout }) => {
                    effects.notes.push(Note::ProbeManagement { id, address, timeout })
                }
                Output::Core(Action::Persist(c)) => self.batch.changes.push(c),
                Output::Core(Action::Emit(mut e)) => {
                    if let Some(t) = &self.tagger {
                        t.tag(&mut e);
                    }
                    info!(id = e.id, kind = e.kind.name(), host = %e.hostname, "{}", e.text);
                    metrics.event(&e);
                    effects.notes.push(Note::Event(e.clone()));
                    self.batch.events.push(e);
                }
                Output::Persist(change) => {
                    if let DesiredChange::CheckSet(set) = &change {
                        info!(
                            node = %set.node, epoch = set.epoch, checks = set.checks.len(),
                            names = %set.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(","),
                            "check set changed"
                        );
                    }
                    assim_store::desired::add_change(&mut self.batch.progress, change);
                }
                Output::Send { to, addr, body } => {
                    effects.sends.push(Send::Reliable { to, addr: Some(addr), body })
                }
            }
        }
    }

    /// What the batch being built holds: changes, events and per-node progress entries (a
    /// measure of the engine's memory that a failing store must not let grow with traffic).
    pub(crate) fn pending(&self) -> usize {
        let b = &self.batch;
        let p = &b.progress;
        b.changes.len()
            + b.events.len()
            + p.applied.len()
            + p.discovery.len()
            + p.incarnations.len()
            + p.host_new.len()
            + p.statistics.len()
            + p.services.check_sets.len()
            + p.services.states.len()
            + p.services.manual.len()
            + p.services.remembered.len()
    }

    /// The commit interval, or [`STALL_RETRY`] if longer once the store failed three times in
    /// a row (a passing hiccup is retried at once).
    fn retry_interval(&self) -> Duration {
        match &self.stall {
            Some(st) if st.failures >= 3 => self.commit_interval.max(STALL_RETRY),
            _ => self.commit_interval,
        }
    }

    /// When a waiting batch is due (`now` if it is due already).
    pub(crate) fn commit_due(&self, now: Instant) -> Option<Instant> {
        if self.batch.is_empty() {
            return None;
        }
        Some(self.last_commit.map_or(now, |t| (t + self.retry_interval()).max(now)))
    }

    /// Writes the batch if it holds events, was asked for, or waited the commit interval
    /// (`force`: at once). Returns the inbox position now stored, if it moved.
    pub(crate) fn commit(
        &mut self,
        now: Instant,
        force: bool,
        metrics: &mut Metrics,
        effects: &mut Effects,
    ) -> Option<u64> {
        if self.batch.is_empty() {
            return None;
        }
        let waited = self.last_commit.is_none_or(|t| now >= t + self.retry_interval());
        let eager = self.stall.is_none() && (self.commit_soon || !self.batch.events.is_empty());
        if !(force || waited || eager) {
            return None;
        }
        let b = &self.batch;
        match self.store.apply(&b.changes, &b.events, &b.progress) {
            Ok(()) => {
                self.last_commit = Some(now);
                self.commit_soon = false;
                if let Some(st) = self.stall.take() {
                    info!(
                        failures = st.failures,
                        down_s = now.saturating_duration_since(st.since).as_secs(),
                        refused = st.refused,
                        deferred = st.deferred,
                        "the store works again; acknowledging records again"
                    );
                }
                let b = std::mem::take(&mut self.batch);
                let last_event = b.events.last().map(|e| e.id);
                effects.notes.push(Note::Stored { last_event, events: b.events });
                b.progress.position
            }
            Err(e) => {
                // Keep the batch and retry after the commit interval; stop taking records
                // meanwhile (see the module doc); an operator must look.
                self.last_commit = Some(now);
                metrics.store_errors += 1;
                let pending = self.pending();
                match &mut self.stall {
                    None => {
                        error!(
                            error = %e, pending,
                            "cannot write to the store; acknowledging no new records until it works again (the nanoprobes keep them), retrying"
                        );
                        self.stall = Some(Stall {
                            since: now,
                            failures: 1,
                            error: e.to_string(),
                            refused: 0,
                            deferred: 0,
                            last_reminder: now,
                        });
                    }
                    Some(st) => {
                        st.failures += 1;
                        st.error = e.to_string();
                        if now >= st.last_reminder + STALL_REMINDER {
                            st.last_reminder = now;
                            error!(
                                error = %e, pending,
                                failures = st.failures,
                                down_s = now.saturating_duration_since(st.since).as_secs(),
                                refused = st.refused,
                                deferred = st.deferred,
                                "the store still fails; acknowledging no new records"
                            );
                        }
                    }
                }
                None
            }
        }
    }
}
