//! [`Inbox`]: the durable FIFO the CMA's packet reader appends authenticated records to and its
//! decision engine consumes; [`LogInbox`], the `assim-log` implementation (over
//! [`assim_log::FileStorage`] in the daemon, [`assim_log::MemStorage`] in the simulator).
//! `assim-inbox-jetstream` implements it on a replicated NATS JetStream stream, one inbox for
//! every engine of a cluster.

use assim_log::{Log, LogConfig, LogError, Storage};
use assim_wire::NodeId;

/// What identifies one spooled record across its resends: the node, the spool incarnation its
/// number counts in, and the number. An inbox shared by several writers drops a second append
/// of the same id (JetStream's `Nats-Msg-Id`); the local inbox needs none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordId {
    pub node: NodeId,
    pub incarnation: u64,
    pub record: u64,
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:016x}.{}", self.node, self.incarnation, self.record)
    }
}

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
    /// Buffers one record and returns its position. Not durable yet. `id` names a spooled
    /// record (`None` for a message without a record number).
    fn append(&mut self, record: &[u8], id: Option<RecordId>) -> Result<u64, InboxError>;
    /// Makes every appended record durable (one group commit).
    fn sync(&mut self) -> Result<(), InboxError>;
    /// The durable records at positions `from` and above, in order.
    fn read_from(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, InboxError>;
    /// Deletes the records through `position`: the engine has stored their effects.
    fn remove_through(&mut self, position: u64) -> Result<(), InboxError>;
    /// Where records begin that this inbox holds but this process did not append in its
    /// current view (another writer's, or its own from a sync that failed yet reached the
    /// store), if it found any since the last call: the engine applies them, in order, before
    /// anything else. `look`: the turn refused a record as a gap, which records appended
    /// elsewhere explain, so a shared inbox should look (it may bound how often). An inbox
    /// with one writer (the local one) never has any.
    fn appended_elsewhere(&mut self, look: bool) -> Option<u64> {
        let _ = look;
        None
    }
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
    fn append(&mut self, record: &[u8], _id: Option<RecordId>) -> Result<u64, InboxError> {
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
