//! The packet reader's half: decide what goes into the inbox, make it durable, acknowledge it.
//!
//! - **Next-record rule.** Spool records are numbered densely per node and `Ack { through }`
//!   covers everything up to `through`, so the inbox only takes a node's *next* record: one at
//!   or below the highest seen is a duplicate (dropped, but acknowledged again), one beyond the
//!   next is a gap (an earlier record was refused, e.g. the disk was full) and waits for the
//!   resend. Messages without a record number (hello, goodbye, unspooled reports) always go in.
//! - **Spool incarnation** (issue 16 item 9). A hello carries the node's spool incarnation.
//!   One that replaces a known one means the node's spool was lost or reset and numbers its
//!   records from 1 again: the node's seen record drops to 0 at that point of the node's
//!   stream, so its new records are taken. The engine does the same when it applies the hello
//!   (in inbox order, so a replay after a restart resets at the same point) and stores the
//!   incarnation in the same batch as the applied record it resets. The order is sound because
//!   a node's messages arrive in the order it sent them (one reliable session delivers in
//!   order, and datagrams of an older session are refused once a newer one was seen), and a
//!   node says hello before it sends any record of a new incarnation; records before the hello
//!   count in the old incarnation. `Ack`s carry the incarnation they count in, so an old
//!   acknowledgement that reaches a new spool (the reliable layer resends to a restarted
//!   node what it had not delivered) deletes nothing. An unknown incarnation (0, or a node
//!   that never sent one) is adopted without a reset: an upgraded node keeps its numbers.
//! - **Group commit.** Everything appended in a turn is made durable by one sync; only then is
//!   any `Ack` sent. A failed sync acknowledges nothing: spooled records are resent by their
//!   senders; messages without a record number were already acknowledged by the transport, so
//!   they are handed to the engine without the inbox rather than lost. A packet reader
//!   (issue 14), which has no engine to hand them to, keeps them and appends them again before
//!   anything else ([`MAX_RETRY`] at most, the oldest dropped beyond).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use assim_wire::NodeId;
use assim_wire::msg::{Body, Message};
use tracing::error;

use crate::Metrics;
use crate::record;
use assim_store::{Inbox, RecordId};

/// Messages without a record number a packet reader keeps for another append, at most.
pub const MAX_RETRY: usize = 4096;

/// A message without a record number that a packet reader could not make durable: appended
/// again before anything else.
#[derive(Debug)]
struct Retry {
    encoded: Vec<u8>,
    node: NodeId,
    key: [u8; 32],
    message: Message,
}

/// A message accepted this turn, waiting for the group commit.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Its inbox position; `None`: the inbox refused it (a message without a record number).
    pub(crate) lsn: Option<u64>,
    pub(crate) node: NodeId,
    pub(crate) key: [u8; 32],
    pub(crate) message: Message,
    /// A packet reader's message without a record number: its inbox record, to append again
    /// if the sync fails.
    encoded: Option<Vec<u8>>,
}

/// What a group commit hands on.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    /// Records for the engine, in inbox order; `None` position: not in the inbox (see above).
    pub(crate) apply: Vec<(Option<u64>, NodeId, [u8; 32], Message)>,
    /// `Ack { through, incarnation }` to send, per node.
    pub(crate) acks: Vec<(NodeId, u64, u64)>,
    /// A record was refused as a gap this turn: a shared inbox may hold records this engine
    /// did not append (issue 14), so the shell has it look.
    pub(crate) gaps: bool,
}

/// What a hello's spool incarnation means for a node whose known one is `known` (issue 16
/// item 9; see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Incarnation {
    /// The same, or the hello carries none (0): nothing changes.
    Same,
    /// None was known: remember it, keep the node's record numbers.
    Adopt,
    /// Another one was known: the node's records start again at 1.
    Reset,
}

pub(crate) fn incarnation_change(known: Option<u64>, hello: u64) -> Incarnation {
    match known {
        _ if hello == 0 => Incarnation::Same,
        Some(k) if k == hello => Incarnation::Same,
        None | Some(0) => Incarnation::Adopt,
        Some(_) => Incarnation::Reset,
    }
}

/// Why a message was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotTaken {
    Duplicate,
    Gap,
    InboxFull,
    /// The engine's store fails: no spool record is taken (issue 16 item 15).
    StoreUnavailable,
}

#[derive(Debug)]
pub(crate) struct Reader<I> {
    pub(crate) inbox: I,
    /// Per node: the highest spool record in the inbox (durable, or pending in this turn).
    pub(crate) seen: HashMap<NodeId, u64>,
    /// Nodes enrolled by a hello pending in this turn (not yet known to the core).
    pub(crate) enrolled: HashSet<NodeId>,
    /// Per node: the spool incarnation `seen` counts in (issue 16 item 9).
    pub(crate) incarnations: HashMap<NodeId, u64>,
    /// Take no spool record: the engine's store fails (issue 16 item 15).
    pub(crate) paused: bool,
    /// A packet reader of a cluster (issue 14): a hello's `acked_through` raises the node's
    /// seen record, since another reader may have taken (and acknowledged) its latest records.
    pub(crate) trust_acked_through: bool,
    /// Records go in with this reader's id ([`crate::record::with_via`]); 0: none.
    pub(crate) via: u64,
    acks_due: BTreeSet<NodeId>,
    /// A record was refused as a gap this turn.
    gaps: bool,
    /// In arrival order, including messages without a record number that the inbox refused.
    pending: Vec<Pending>,
    /// A packet reader's messages without a record number that are not durable yet.
    retry: VecDeque<Retry>,
}

impl<I: Inbox> Reader<I> {
    pub(crate) fn new(
        inbox: I,
        seen: HashMap<NodeId, u64>,
        incarnations: HashMap<NodeId, u64>,
    ) -> Self {
        Reader {
            inbox,
            seen,
            enrolled: HashSet::new(),
            incarnations,
            paused: false,
            trust_acked_through: false,
            via: 0,
            acks_due: BTreeSet::new(),
            gaps: false,
            pending: Vec::new(),
            retry: VecDeque::new(),
        }
    }

    /// Applies the next-record rule and appends `message` (encoded as `bytes`) to the inbox.
    pub(crate) fn accept(
        &mut self,
        node: NodeId,
        key: [u8; 32],
        bytes: &[u8],
        message: Message,
    ) -> Result<(), NotTaken> {
        let record = message.record;
        self.append_retries();
        if record > 0 && self.paused {
            // Not acknowledged: the sender keeps it in its spool and resends it later.
            return Err(NotTaken::StoreUnavailable);
        }
        if record > 0 {
            self.acks_due.insert(node);
            let seen = self.seen.get(&node).copied().unwrap_or(0);
            if record <= seen {
                return Err(NotTaken::Duplicate);
            }
            if record > seen + 1 {
                self.gaps = true;
                return Err(NotTaken::Gap);
            }
        }
        let id = (record > 0).then(|| RecordId {
            node,
            incarnation: self.incarnations.get(&node).copied().unwrap_or(0),
            record,
        });
        let encoded = match self.via {
            0 => record::encode(node, &key, bytes),
            via => record::with_via(node, &key, bytes, via),
        };
        let append = if self.retry.is_empty() {
            self.inbox.append(&encoded, id)
        } else {
            // Older messages wait for the inbox: none may overtake them.
            Err(assim_store::InboxError::Storage("earlier messages wait for the inbox".into()))
        };
        match append {
            Ok(lsn) => {
                if record > 0 {
                    self.seen.insert(node, record);
                }
                self.note_hello(node, &message);
                let encoded = (self.trust_acked_through && record == 0).then_some(encoded);
                self.pending.push(Pending { lsn: Some(lsn), node, key, message, encoded });
                Ok(())
            }
            Err(e) => {
                if record == 0 && self.trust_acked_through {
                    error!(node = %node, error = %e, "cannot append to the inbox; a message without a record number is kept and appended again");
                    self.note_hello(node, &message);
                    self.keep_for_retry(Retry { encoded, node, key, message });
                    return Ok(());
                }
                if record == 0 {
                    error!(node = %node, error = %e, "cannot append to the inbox; a message without a record number is applied without it");
                    self.note_hello(node, &message);
                    self.pending.push(Pending { lsn: None, node, key, message, encoded: None });
                } else {
                    error!(node = %node, error = %e, "cannot append to the inbox; the record is not acknowledged and will be resent");
                }
                Err(NotTaken::InboxFull)
            }
        }
    }

    /// A hello's spool incarnation, at its place in the node's stream (issue 16 item 9): a new
    /// one resets the node's seen record. Returns whether it did. A packet reader then takes
    /// the hello's `acked_through` as the node's mark: another reader took (and acknowledged)
    /// the records before it, and the node moved here.
    pub(crate) fn note_hello(&mut self, node: NodeId, message: &Message) -> bool {
        let Some(Body::Hello(h)) = &message.body else { return false };
        let inc = h.spool_incarnation;
        let reset = match incarnation_change(self.incarnations.get(&node).copied(), inc) {
            Incarnation::Same => false,
            Incarnation::Adopt => {
                self.incarnations.insert(node, inc);
                false
            }
            Incarnation::Reset => {
                self.incarnations.insert(node, inc);
                self.seen.insert(node, 0);
                true
            }
        };
        if self.trust_acked_through && h.acked_through > self.seen.get(&node).copied().unwrap_or(0)
        {
            self.seen.insert(node, h.acked_through);
        }
        reset
    }

    /// Keeps a packet reader's message without a record number for another append, the oldest
    /// dropped beyond [`MAX_RETRY`].
    fn keep_for_retry(&mut self, r: Retry) {
        if self.retry.len() >= MAX_RETRY
            && let Some(old) = self.retry.pop_front()
        {
            error!(node = %old.node, kept = MAX_RETRY, "too many messages wait for the inbox; the oldest is dropped");
        }
        self.retry.push_back(r);
    }

    /// Appends the kept messages again, in order, as far as the inbox takes them.
    fn append_retries(&mut self) {
        while let Some(r) = self.retry.front() {
            let Ok(lsn) = self.inbox.append(&r.encoded, None) else { return };
            let r = self.retry.pop_front().expect("just looked");
            self.pending.push(Pending {
                lsn: Some(lsn),
                node: r.node,
                key: r.key,
                message: r.message,
                encoded: Some(r.encoded),
            });
        }
    }

    /// The group commit: one sync, then acknowledgements. `applied` and `incarnations` are the
    /// engine's per node, to which `seen` and the reader's incarnations fall back when the sync
    /// fails.
    pub(crate) fn commit(
        &mut self,
        applied: &HashMap<NodeId, u64>,
        incarnations: &HashMap<NodeId, u64>,
        metrics: &mut Metrics,
    ) -> Committed {
        self.append_retries();
        let mut out = Committed { gaps: std::mem::take(&mut self.gaps), ..Committed::default() };
        let pending = std::mem::take(&mut self.pending);
        self.enrolled.clear();
        let logged = pending.iter().filter(|p| p.lsn.is_some()).count();
        let synced = logged == 0
            || {
                // Timed for the metric only (nothing is decided on it).
                let started = std::time::Instant::now();
                match self.inbox.sync() {
                    Ok(()) => {
                        metrics.inbox_syncs += 1;
                        metrics.inbox_records += logged as u64;
                        metrics.inbox_sync_nanos += started.elapsed().as_nanos() as u64;
                        true
                    }
                    Err(e) => {
                        error!(error = %e, records = logged, "cannot make the inbox durable; nothing acknowledged, senders will resend");
                        metrics.store_errors += 1;
                        false
                    }
                }
            };
        if synced {
            for node in std::mem::take(&mut self.acks_due) {
                let through = self.seen.get(&node).copied().unwrap_or(0);
                let incarnation = self.incarnations.get(&node).copied().unwrap_or(0);
                out.acks.push((node, through, incarnation));
            }
            out.apply.extend(pending.into_iter().map(|p| (p.lsn, p.node, p.key, p.message)));
        } else if self.trust_acked_through {
            // A packet reader: `applied` is only what the engine had stored when this reader
            // started, so the turn's records are taken back one by one instead.
            self.acks_due.clear();
            let mut kept = Vec::new();
            for p in pending {
                if p.message.record > 0 {
                    if let Some(seen) = self.seen.get_mut(&p.node) {
                        *seen = (*seen).min(p.message.record - 1);
                    }
                } else if let Some(encoded) = p.encoded {
                    kept.push(Retry { encoded, node: p.node, key: p.key, message: p.message });
                }
            }
            // This turn's were appended before those still waiting could be: they go first.
            for r in kept.into_iter().rev() {
                self.retry.push_front(r);
            }
            while self.retry.len() > MAX_RETRY {
                if let Some(old) = self.retry.pop_front() {
                    error!(node = %old.node, kept = MAX_RETRY, "too many messages wait for the inbox; the oldest is dropped");
                }
            }
        } else {
            self.acks_due.clear();
            self.seen = applied.clone();
            self.incarnations = incarnations.clone();
            // Already acknowledged by the transport and never resent: apply without the inbox
            // (a hello among them resets here as it will in the engine).
            for p in pending.into_iter().filter(|p| p.message.record == 0) {
                self.note_hello(p.node, &p.message);
                out.apply.push((None, p.node, p.key, p.message));
            }
        }
        out
    }
}
