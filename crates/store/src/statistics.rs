//! The durable queue of statistics on their way to Graphite (issue 17 item 5).
//!
//! The engine appends a batch's points ([`crate::InboxProgress::statistics`]) in the same
//! transaction as the inbox position that consumed the `Statistics` message, so a point is
//! queued exactly once. The forwarder reads the oldest points ([`StatisticsOutbox::oldest`]),
//! writes them to carbon, and removes them ([`StatisticsOutbox::remove_through`]) only after
//! carbon took them; a crash in between sends them again (carbon keeps the last value per
//! timestamp, so a repeat changes nothing).
//!
//! Invariants: ids grow and are never reused; points are only ever removed from the oldest
//! end (by the forwarder, or by the engine's store when the queue holds more than its cap —
//! then the oldest beyond it are dropped and counted in [`OutboxState::dropped`]). So the queue
//! is always one run of consecutive ids, and its length is `newest - oldest + 1`.

use assim_cma::statistics::StatPoint;

use crate::QueryError;

/// The queue holds this many points at most unless configured otherwise (about 100 bytes
/// each on disk).
pub const DEFAULT_QUEUE_MAX: u64 = 1_000_000;

/// A queued point and its id.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedPoint {
    pub id: u64,
    pub point: StatPoint,
}

/// The queue's length and what it dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxState {
    pub queued: u64,
    /// Points dropped (the oldest) because the queue was full, since the store was created.
    pub dropped: u64,
}

/// The forwarder's side of the queue.
pub trait StatisticsOutbox: Send {
    /// The oldest `limit` points, oldest first.
    fn oldest(&mut self, limit: usize) -> Result<Vec<QueuedPoint>, QueryError>;
    /// Removes every point up to and including `id` (they reached carbon).
    fn remove_through(&mut self, id: u64) -> Result<(), QueryError>;
    fn state(&mut self) -> Result<OutboxState, QueryError>;
}
