//! The seams between the CMA and its storage engines. No engine lives here: this crate names no
//! SQL dialect and no database client, so the daemon, the simulator, the HTTP API and the event
//! bus can depend on it without pulling one in.
//!
//! Seams (traits named for what the caller needs; engines implement them side by side):
//! - `Inbox`: the CMA's durable inbox of authenticated records (append, sync, read from a
//!   position, remove through). Embedded: the `assim-log` record log; at scale: JetStream.
//! - `EngineStore`: what the CMA engine writes (apply one batch atomically together with the
//!   inbox position) and reads back at start (the snapshot).
//! - [`Queries`]: what the HTTP API and the CLI read (status, discovery, services, the
//!   topology's canned queries), answered with `assim-api` types.
//! - [`EventLog`]: the event log and the durable subscription cursors of the event bus (the
//!   API's events and subscriptions read and write through it).
//!
//! Embedded engine: `assim-store-sqlite` (the only crate that names rusqlite). A PostgreSQL or
//! JetStream engine is a new crate beside it that implements the same traits; the wiring crate
//! (`assim-cma-daemon`) picks one.
//!
//! Layout:
//! - [`inbox`]: [`Inbox`], [`InboxError`], [`LogInbox`] (the `assim-log` inbox).
//! - [`engine`]: [`EngineStore`], [`Tokens`], [`Loaded`], [`StoreFailed`].
//! - [`batch`]: what a batch carries besides the core's changes and events —
//!   [`InboxProgress`], [`DiscoveryRecord`] — and [`TokenRecord`].
//! - [`desired`]: the core's desired-state changes into a batch, and its snapshot from what
//!   an engine store loaded.
//! - [`services`]: the service-monitoring part of a batch ([`services::ServicesBatch`]).
//! - [`mem`]: [`MemStore`], the in-memory engine store and tokens (and a subset of
//!   [`Queries`]).
//! - [`queries`]: [`Queries`], [`OpenQueries`], [`HostRef`], [`PackagePattern`],
//!   [`normalize_mac`].
//! - [`event_log`]: [`EventLog`], its records ([`SubscriptionRecord`], [`DeadLetter`],
//!   [`Pruned`]) and [`OpenEventLog`], how the bus opens its own handles.
//! - [`statistics`]: [`StatisticsOutbox`], the durable queue of statistics on their way to
//!   Graphite (filled by engine batches, emptied by the forwarder).
//! - [`QueryError`]: the one error of the read-side seams.

pub mod batch;
pub mod desired;
pub mod engine;
pub mod event_log;
pub mod inbox;
pub mod mem;
pub mod queries;
pub mod services;
pub mod statistics;

pub use crate::batch::{DiscoveryRecord, InboxProgress, SpoolIncarnation, TokenRecord};
pub use crate::engine::{EngineStore, Loaded, StoreFailed, Tokens};
pub use crate::event_log::{DeadLetter, EventLog, OpenEventLog, Pruned, SubscriptionRecord};
pub use crate::inbox::{Inbox, InboxError, LogInbox, RecordId};
pub use crate::mem::MemStore;
pub use crate::queries::{
    HostRef, OpenQueries, PackagePattern, Queries, RingDesc, normalize_mac, ring_views,
};
pub use crate::statistics::{OutboxState, QueuedPoint, StatisticsOutbox};

/// Why a read-side or event-log call failed. Engines apply each call atomically, so a failed
/// call changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The storage engine failed (IO, corruption, a lost connection); nothing was changed. The
    /// source names the engine's own error.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The answer would have more than [`MAX_ANSWER_ROWS`] rows; nothing was returned. Engines
    /// stop reading at the bound, so no query holds more than that in memory.
    #[error(
        "the answer has more than {} rows; narrow the query (a host, a --prefix, a tighter regex)",
        MAX_ANSWER_ROWS
    )]
    TooLarge,
    /// The caller's capacity for store calls is used up (the HTTP API's readers are busy and
    /// its queue is full); nothing was read. Try again shortly.
    #[error("the CMA's API is busy ({0}); try again in a few seconds")]
    Busy(&'static str),
}

/// The most rows one read-side query answers with (issue 16 item 12): an unbounded query (every
/// package of every host matching a loose regex, every dependency) is refused with
/// [`QueryError::TooLarge`] instead of being built in memory.
pub const MAX_ANSWER_ROWS: usize = 50_000;

impl QueryError {
    /// Wraps an engine's error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> QueryError {
        QueryError::Backend(Box::new(e))
    }
}
