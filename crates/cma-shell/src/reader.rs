//! The packet reader's half: decide what goes into the inbox, make it durable, acknowledge it.
//!
//! - **Next-record rule.** Spool records are numbered densely per node and `Ack { through }`
//!   covers everything up to `through`, so the inbox only takes a node's *next* record: one at
//!   or below the highest seen is a duplicate (dropped, but acknowledged again), one beyond the
//!   next is a gap (an earlier record was refused, e.g. the disk was full) and waits for the
//!   resend. Messages without a record number (hello, goodbye, unspooled reports) always go in.
//! - **Group commit.** Everything appended in a turn is made durable by one sync; only then is
//!   any `Ack` sent. A failed sync acknowledges nothing: spooled records are resent by their
//!   senders; messages without a record number were already acknowledged by the transport, so
//!   they are handed to the engine without the inbox rather than lost.

use std::collections::{BTreeSet, HashMap, HashSet};

use assim_wire::NodeId;
use assim_wire::msg::Message;
use tracing::error;

use crate::Metrics;
use crate::record;
use assim_store::Inbox;

/// A message accepted this turn, waiting for the group commit.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Its inbox position; `None`: the inbox refused it (a message without a record number).
    pub(crate) lsn: Option<u64>,
    pub(crate) node: NodeId,
    pub(crate) key: [u8; 32],
    pub(crate) message: Message,
}

/// What a group commit hands on.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    /// Records for the engine, in inbox order; `None` position: not in the inbox (see above).
    pub(crate) apply: Vec<(Option<u64>, NodeId, [u8; 32], Message)>,
    /// `Ack { through }` to send, per node.
    pub(crate) acks: Vec<(NodeId, u64)>,
}

/// Why a message was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotTaken {
    Duplicate,
    Gap,
    InboxFull,
}

#[derive(Debug)]
pub(crate) struct Reader<I> {
    pub(crate) inbox: I,
    /// Per node: the highest spool record in the inbox (durable, or pending in this turn).
    pub(crate) seen: HashMap<NodeId, u64>,
    /// Nodes enrolled by a hello pending in this turn (not yet known to the core).
    pub(crate) enrolled: HashSet<NodeId>,
    acks_due: BTreeSet<NodeId>,
    /// In arrival order, including messages without a record number that the inbox refused.
    pending: Vec<Pending>,
}

impl<I: Inbox> Reader<I> {
    pub(crate) fn new(inbox: I, seen: HashMap<NodeId, u64>) -> Self {
        Reader {
            inbox,
            seen,
            enrolled: HashSet::new(),
            acks_due: BTreeSet::new(),
            pending: Vec::new(),
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
        if record > 0 {
            self.acks_due.insert(node);
            let seen = self.seen.get(&node).copied().unwrap_or(0);
            if record <= seen {
                return Err(NotTaken::Duplicate);
            }
            if record > seen + 1 {
                return Err(NotTaken::Gap);
            }
        }
        match self.inbox.append(&record::encode(node, &key, bytes)) {
            Ok(lsn) => {
                if record > 0 {
                    self.seen.insert(node, record);
                }
                self.pending.push(Pending { lsn: Some(lsn), node, key, message });
                Ok(())
            }
            Err(e) => {
                if record == 0 {
                    error!(node = %node, error = %e, "cannot append to the inbox; a message without a record number is applied without it");
                    self.pending.push(Pending { lsn: None, node, key, message });
                } else {
                    error!(node = %node, error = %e, "cannot append to the inbox; the record is not acknowledged and will be resent");
                }
                Err(NotTaken::InboxFull)
            }
        }
    }

    /// The group commit: one sync, then acknowledgements. `applied` is the engine's record per
    /// node, to which `seen` falls back when the sync fails.
    pub(crate) fn commit(
        &mut self,
        applied: &HashMap<NodeId, u64>,
        metrics: &mut Metrics,
    ) -> Committed {
        let mut out = Committed::default();
        let pending = std::mem::take(&mut self.pending);
        self.enrolled.clear();
        let logged = pending.iter().filter(|p| p.lsn.is_some()).count();
        let synced = logged == 0
            || {
                match self.inbox.sync() {
                    Ok(()) => {
                        metrics.inbox_syncs += 1;
                        metrics.inbox_records += logged as u64;
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
                out.acks.push((node, self.seen.get(&node).copied().unwrap_or(0)));
            }
            out.apply.extend(pending.into_iter().map(|p| (p.lsn, p.node, p.key, p.message)));
        } else {
            self.acks_due.clear();
            self.seen = applied.clone();
            // Already acknowledged by the transport and never resent: apply without the inbox.
            out.apply.extend(
                pending
                    .into_iter()
                    .filter(|p| p.message.record == 0)
                    .map(|p| (None, p.node, p.key, p.message)),
            );
        }
        out
    }
}
