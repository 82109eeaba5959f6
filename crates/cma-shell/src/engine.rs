//! The decision engine's half: inbox records in order → the CMA core → one batch to the
//! [`EngineStore`].
//!
//! Every record carries its inbox position; the batch carries the last one, so the stored state
//! and the stored position always match. A spool record at or below the node's applied record is
//! skipped (applied before a restart). Events go to the store at once (subscribers wait for
//! them); a batch of changes alone may wait up to [`crate::ShellConfig::commit_interval`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_cma::{Action, Change, Cma, Event};
use assim_wire::msg::{self, Body, Message};
use assim_wire::{NodeId, Timestamp};
use tracing::{debug, error, warn};

use crate::{Extension, Metrics, Note};
use assim_store::{DiscoveryRecord, EngineStore, InboxProgress};

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

/// What an [`Extension`] may touch while it handles an input.
#[derive(Debug)]
pub struct Cx<'a> {
    pub now: Timestamp,
    pub core: &'a mut Cma,
    /// The batch being built; its services and discovery parts are the extension's to fill.
    pub progress: &'a mut InboxProgress,
    pub(crate) effects: &'a mut Effects,
    pub(crate) commit_soon: &'a mut bool,
    pub(crate) metrics: &'a mut Metrics,
}

impl Cx<'_> {
    /// Sends `body` to `node` on its reliable connection (desired state, commands).
    pub fn send(&mut self, node: NodeId, body: Body) {
        let addr = self.core.node(node).map(|n| n.listen_addr);
        self.effects.sends.push(Send::Reliable { to: node, addr, body });
    }

    /// Counts a refused input under `reason` (a metric label).
    pub fn reject(&mut self, reason: &'static str) {
        self.metrics.reject(reason);
    }

    /// Asks for the batch to be stored at the end of this turn rather than within the commit
    /// interval (an operator is waiting for it).
    pub fn commit_soon(&mut self) {
        *self.commit_soon = true;
    }
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
    pub(crate) core: Cma,
    pub(crate) store: S,
    /// Per node: the highest spool record applied (stored or in the batch).
    pub(crate) applied: HashMap<NodeId, u64>,
    batch: Batch,
    commit_interval: Duration,
    last_commit: Option<Instant>,
    commit_soon: bool,
}

impl<S: EngineStore> Engine<S> {
    pub(crate) fn new(
        core: Cma,
        store: S,
        applied: HashMap<NodeId, u64>,
        commit_interval: Duration,
    ) -> Self {
        Engine {
            core,
            store,
            applied,
            batch: Batch::default(),
            commit_interval,
            last_commit: None,
            commit_soon: false,
        }
    }

    /// A context for the extension outside message handling (API requests).
    pub(crate) fn cx<'a>(
        &'a mut self,
        now: Timestamp,
        effects: &'a mut Effects,
        metrics: &'a mut Metrics,
    ) -> Cx<'a> {
        Cx {
            now,
            core: &mut self.core,
            progress: &mut self.batch.progress,
            effects,
            commit_soon: &mut self.commit_soon,
            metrics,
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
        ext: &mut dyn Extension,
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
        let Some(body) = m.body else {
            metrics.reject("unknown_message");
            return;
        };
        effects.notes.push(Note::Applied { node: sender, record: m.record, kind: body.name() });
        self.handle_message(now, sender, key, body, ext, effects, metrics);
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_message(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        key: [u8; 32],
        body: Body,
        ext: &mut dyn Extension,
        effects: &mut Effects,
        metrics: &mut Metrics,
    ) {
        if let Body::Hello(hello) = &body {
            let accepted = match self.core.handle_hello(now, sender, key, hello) {
                Ok(()) => true,
                Err(e) => {
                    warn!(node = %sender, error = %e, "hello refused");
                    metrics.reject("bad_hello");
                    effects.notes.push(Note::HelloRefused { node: sender });
                    false
                }
            };
            ext.hello(&mut self.cx(now, effects, metrics), sender, accepted);
            return;
        }
        if self.core.node(sender).is_none() {
            metrics.reject("unregistered");
            effects.notes.push(Note::Unregistered { node: sender, kind: body.name() });
            return;
        }
        self.core.handle_alive(now, sender);
        match body {
            Body::Goodbye(_) => self.core.handle_goodbye(now, sender),
            Body::HeartbeatReport(r) => {
                metrics.reports += 1;
                self.core.handle_report(now, sender, &r);
            }
            Body::PeerStatus(s) => self.core.handle_peer_status(now, sender, &s),
            Body::LocalEvent(ev) => {
                metrics.applied_other("local_event");
                if let Err(e) = self.core.handle_local_event(now, sender, &ev) {
                    warn!(node = %sender, error = %e, "local event refused");
                    metrics.reject("bad_local_event");
                }
            }
            Body::DiscoveryResult(d) => {
                ext.discovery(&mut self.cx(now, effects, metrics), sender, &d);
                self.store_discovery(now, sender, d, metrics);
            }
            other => {
                let kind = other.name();
                metrics.applied_other(kind);
                if !ext.message(&mut self.cx(now, effects, metrics), sender, other) {
                    debug!(node = %sender, kind, "message stored; nothing more to do with it yet");
                }
            }
        }
    }

    /// Keeps the latest result of each collector per node (the topology graph builds on these).
    fn store_discovery(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        d: msg::DiscoveryResult,
        metrics: &mut Metrics,
    ) {
        let valid = !d.name.is_empty()
            && d.name.len() <= 64
            && serde_json::from_slice::<serde_json::Value>(&d.payload).is_ok();
        let Ok(payload) = String::from_utf8(d.payload) else {
            metrics.reject("bad_discovery");
            return;
        };
        if !valid {
            warn!(node = %sender, name = %d.name, "invalid discovery result (not JSON, or a bad name); ignored");
            metrics.reject("bad_discovery");
            return;
        }
        metrics.applied_other("discovery_result");
        self.batch.progress.discovery.push(DiscoveryRecord {
            node: sender,
            name: d.name,
            hash: hex::encode(&d.content_hash),
            payload,
            collected_at: d.collected_at,
            updated_at: now.micros(),
        });
    }

    /// Drains the core's actions: persistence and events into the batch, sends into `effects`.
    pub(crate) fn drain_core(
        &mut self,
        ext: &mut dyn Extension,
        effects: &mut Effects,
        metrics: &mut Metrics,
    ) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::SendPeerSet { to, addr, set } => effects.sends.push(Send::Reliable {
                    to,
                    addr: Some(addr),
                    body: Body::PeerSet(set),
                }),
                Action::Probe { node, addr, nonce } => {
                    effects.sends.push(Send::Probe { to: node, addr, nonce })
                }
                Action::Persist(c) => self.batch.changes.push(c),
                Action::Emit(mut e) => {
                    ext.event(&mut e);
                    tracing::info!(id = e.id, kind = e.kind.name(), host = %e.hostname, "{}", e.text);
                    metrics.event(&e);
                    effects.notes.push(Note::Event(e.clone()));
                    self.batch.events.push(e);
                }
            }
        }
    }

    /// When a waiting batch is due (`now` if it is due already).
    pub(crate) fn commit_due(&self, now: Instant) -> Option<Instant> {
        if self.batch.is_empty() {
            return None;
        }
        Some(self.last_commit.map_or(now, |t| (t + self.commit_interval).max(now)))
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
        let waited = self.last_commit.is_none_or(|t| now >= t + self.commit_interval);
        if !(force || waited || self.commit_soon || !self.batch.events.is_empty()) {
            return None;
        }
        let b = &self.batch;
        match self.store.apply(&b.changes, &b.events, &b.progress) {
            Ok(()) => {
                self.last_commit = Some(now);
                self.commit_soon = false;
                let b = std::mem::take(&mut self.batch);
                if let Some(last) = b.events.last() {
                    effects.notes.push(Note::Stored { last_event: Some(last.id) });
                } else {
                    effects.notes.push(Note::Stored { last_event: None });
                }
                b.progress.position
            }
            Err(e) => {
                // Keep the batch and retry after the commit interval; an operator must look.
                self.last_commit = Some(now);
                metrics.store_errors += 1;
                error!(
                    error = %e,
                    pending = self.batch.changes.len() + self.batch.events.len(),
                    "cannot write to the store; will retry"
                );
                None
            }
        }
    }
}
