//! The write-side seams the shell works through, and their embedded implementations.
//!
//! - [`Inbox`]: the durable FIFO the packet reader appends authenticated records to and the
//!   decision engine consumes. [`LogInbox`] is the `assim-log` implementation (over
//!   [`assim_log::FileStorage`] in the daemon, [`assim_log::MemStorage`] in the simulator).
//! - [`EngineStore`]: where the engine's state lives — loaded once at start, then written one
//!   batch at a time, atomically with the inbox position. [`MemStore`] keeps it in memory (the
//!   simulator and tests); the SQLite store implements it in its own crate.
//! - [`Tokens`]: the join tokens the enrolment decision checks proofs against.
//!
//! A distributed engine plugs in here: a JetStream stream behind [`Inbox`], PostgreSQL behind
//! [`EngineStore`]. Nothing above these traits names a storage engine.

use std::collections::BTreeMap;

use assim_cma::{Change, Event, NodeRecord, Snapshot};
use assim_log::{Log, LogConfig, LogError, Storage};
use assim_wire::NodeId;

pub use assim_store::{DiscoveryRecord, InboxProgress, TokenRecord};

/// Why an inbox operation failed, and what it did to the inbox.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The inbox is full (its size limit or the device): nothing was appended; the caller may
    /// retry after the engine consumed records.
    #[error("the inbox is full: {0}")]
    Full(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A sync failed: nothing appended since the last successful sync is durable, and the inbox
    /// has forgotten those records (as a crash would).
    #[error("the inbox could not make its records durable: {0}")]
    SyncFailed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Any other failure of the underlying storage; nothing changed.
    #[error("inbox storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The CMA's durable inbox: records in, positions out.
///
/// Positions are dense and increasing. A record is durable — and may be acknowledged to its
/// sender — only after a [`sync`](Inbox::sync) that returned `Ok` following its append.
pub trait Inbox {
    /// Buffers one record and returns its position. Not durable yet.
    fn append(&mut self, record: &[u8]) -> Result<u64, InboxError>;
    /// Makes every appended record durable (one group commit).
    fn sync(&mut self) -> Result<(), InboxError>;
    /// The durable records at positions `from` and above, in order.
    fn read_from(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, InboxError>;
    /// Deletes the records through `position`: the engine has stored their effects.
    fn remove_through(&mut self, position: u64) -> Result<(), InboxError>;
}

/// The [`Inbox`] over an `assim-log`. After a failed sync the log is poisoned (its bytes on disk
/// are unknown), so it is dropped and reopened with `reopen`.
pub struct LogInbox<S: Storage> {
    log: Option<Log<S>>,
    reopen: Box<dyn FnMut() -> Result<S, LogError> + Send>,
    config: LogConfig,
}

impl<S: Storage> std::fmt::Debug for LogInbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogInbox").field("log", &self.log).finish()
    }
}

impl<S: Storage> LogInbox<S> {
    /// Opens the log from the storage `open` returns; `open` is called again after a failed sync.
    pub fn open(
        mut open: impl FnMut() -> Result<S, LogError> + Send + 'static,
        config: LogConfig,
    ) -> Result<Self, LogError> {
        let log = Log::open(open()?, config.clone())?;
        if let Some(r) = log.last_recovery() {
            tracing::warn!(segment = %r.segment, truncated_bytes = r.truncated_bytes,
                "inbox recovered from a torn tail (records never acknowledged): {}", r.detail);
        }
        Ok(LogInbox { log: Some(log), reopen: Box::new(open), config })
    }

    /// The log (for metrics and tests).
    pub fn log(&self) -> Option<&Log<S>> {
        self.log.as_ref()
    }

    fn log_mut(&mut self) -> Result<&mut Log<S>, InboxError> {
        if self.log.is_none() {
            let storage = (self.reopen)().map_err(|e| InboxError::Storage(e.into()))?;
            let log = Log::open(storage, self.config.clone())
                .map_err(|e| InboxError::Storage(e.into()))?;
            self.log = Some(log);
        }
        Ok(self.log.as_mut().expect("just opened"))
    }
}

impl<S: Storage> Inbox for LogInbox<S> {
    fn append(&mut self, record: &[u8]) -> Result<u64, InboxError> {
        self.log_mut()?.append(record).map_err(|e| match e {
            LogError::Full { .. } | LogError::DiskFull { .. } => InboxError::Full(e.into()),
            e => InboxError::Storage(e.into()),
        })
    }

    fn sync(&mut self) -> Result<(), InboxError> {
        match self.log_mut()?.sync() {
            Ok(_) => Ok(()),
            Err(e) => {
                // Poisoned or in an unknown state: drop it; the next call reopens from storage.
                self.log = None;
                if let Err(e) = self.log_mut() {
                    tracing::error!(error = %e, "cannot reopen the inbox; will retry");
                }
                Err(InboxError::SyncFailed(e.into()))
            }
        }
    }

    fn read_from(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, InboxError> {
        let log = self.log_mut()?;
        let from = from.max(log.first_lsn());
        let reader = log.read_from(from).map_err(|e| InboxError::Storage(e.into()))?;
        reader.collect::<Result<_, _>>().map_err(|e| InboxError::Storage(e.into()))
    }

    fn remove_through(&mut self, position: u64) -> Result<(), InboxError> {
        self.log_mut()?
            .remove_through(position)
            .map(drop)
            .map_err(|e| InboxError::Storage(e.into()))
    }
}

/// Why the engine's store refused; nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
#[error("the engine's store failed: {0}")]
pub struct StoreFailed(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// What the engine resumes from at start.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    /// The last inbox position whose effects are stored (0: none).
    pub position: u64,
    /// Per node: the highest spool record whose effects are stored.
    pub applied: BTreeMap<NodeId, u64>,
}

/// The decision engine's state: loaded at start, then written one batch at a time.
pub trait EngineStore {
    /// The snapshot and inbox position to resume from.
    fn load(&mut self) -> Result<Loaded, StoreFailed>;
    /// Writes the changes, events and inbox progress atomically: all of it or nothing.
    fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), StoreFailed>;
}

/// The join tokens enrolment checks proofs against.
pub trait Tokens {
    /// The token with this id, if any.
    fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, StoreFailed>;
    /// Counts one use of the token (one node enrolled with it).
    fn use_token(&mut self, id: &[u8]) -> Result<(), StoreFailed>;
}

/// An [`EngineStore`] and [`Tokens`] in memory: the simulator's store, and tests'.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub ring: Vec<NodeId>,
    pub next_epoch: u64,
    pub next_event_id: u64,
    pub position: u64,
    pub applied: BTreeMap<NodeId, u64>,
    pub events: u64,
    pub discovery: BTreeMap<(NodeId, String), DiscoveryRecord>,
    pub tokens: BTreeMap<[u8; 16], TokenRecord>,
    /// How many batches were applied.
    pub batches: u64,
    /// When set, the next `n` batches fail (fault injection).
    pub fail_next: u32,
}

impl MemStore {
    /// What [`EngineStore::load`] would return.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.values().cloned().collect(),
            ring: self.ring.clone(),
            next_epoch: self.next_epoch,
            next_event_id: self.next_event_id,
        }
    }
}

impl EngineStore for MemStore {
    fn load(&mut self) -> Result<Loaded, StoreFailed> {
        Ok(Loaded {
            snapshot: self.snapshot(),
            position: self.position,
            applied: self.applied.clone(),
        })
    }

    fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), StoreFailed> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(StoreFailed("injected store failure".into()));
        }
        for c in changes {
            match c {
                Change::Node(rec) => {
                    self.nodes.insert(rec.id, rec.clone());
                }
                Change::Ring(order) => self.ring = order.clone(),
                Change::Counters { next_epoch, next_event_id } => {
                    self.next_epoch = *next_epoch;
                    self.next_event_id = *next_event_id;
                }
            }
        }
        self.events += events.len() as u64;
        if let Some(p) = progress.position {
            self.position = p;
        }
        for (node, (through, _)) in &progress.applied {
            self.applied.insert(*node, *through);
        }
        for d in &progress.discovery {
            self.discovery.insert((d.node, d.name.clone()), d.clone());
        }
        self.batches += 1;
        Ok(())
    }
}

impl Tokens for MemStore {
    fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, StoreFailed> {
        Ok(<[u8; 16]>::try_from(id).ok().and_then(|id| self.tokens.get(&id).cloned()))
    }

    fn use_token(&mut self, id: &[u8]) -> Result<(), StoreFailed> {
        if let Some(t) = <[u8; 16]>::try_from(id).ok().and_then(|id| self.tokens.get_mut(&id)) {
            t.uses += 1;
        }
        Ok(())
    }
}
