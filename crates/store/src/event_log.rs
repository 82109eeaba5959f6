//! The event bus's seam: the stored events (read in id order, pruned by retention) and the
//! durable named subscriptions with their cursors and dead letters.
//!
//! Ids are the CMA's event ids: dense, increasing, never reused. A subscription's cursor is the
//! last event it acknowledged; it only moves forward. The bus runner and the HTTP API each open
//! their own handle ([`OpenEventLog`]) and call it from blocking threads.

use std::sync::Arc;

use assim_cma::Event;
use assim_wire::Timestamp;
use serde::{Deserialize, Serialize};

use crate::QueryError;

/// A durable named subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub name: String,
    /// The filter expression, as given.
    pub filter: String,
    /// The sink configuration (JSON), if the CMA delivers this subscription itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// The last acknowledged event id; the subscriber gets the events after it.
    pub cursor: u64,
    /// µs since the epoch.
    pub created_at: u64,
    /// µs since the epoch; changes with the filter, the sink and every ack.
    pub updated_at: u64,
}

/// An event a sink gave up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: u64,
    pub subscription: String,
    pub event_id: u64,
    pub attempts: u64,
    /// The last delivery error.
    pub error: String,
    /// µs since the epoch.
    pub at: u64,
}

/// What one retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted because they were older than the cut-off.
    pub by_age: u64,
    /// Events deleted because more than the maximum count were kept.
    pub by_count: u64,
}

/// The event log and the subscription cursors. Every call is atomic; none is async: call it
/// from a blocking thread.
pub trait EventLog: Send {
    /// The events after `after`, oldest first, at most `limit`.
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, QueryError>;
    /// The newest stored event id (0 when there is none).
    fn last_event_id(&self) -> Result<u64, QueryError>;
    /// Deletes up to `batch` events older than `older_than` or beyond the newest `keep`.
    fn prune_events(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, QueryError>;

    /// Every subscription, by name.
    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, QueryError>;
    /// One subscription.
    fn subscription(&self, name: &str) -> Result<Option<SubscriptionRecord>, QueryError>;
    /// Creates a subscription with its cursor at `start`, or changes an existing one's filter and
    /// sink (keeping its cursor).
    fn put_subscription(
        &mut self,
        name: &str,
        filter: &str,
        sink: Option<&str>,
        start: u64,
        now: Timestamp,
    ) -> Result<SubscriptionRecord, QueryError>;
    /// Deletes a subscription and its dead letters; `false` if there was none.
    fn delete_subscription(&mut self, name: &str) -> Result<bool, QueryError>;
    /// Moves the cursor to `through` (never back); the new cursor, or `None` if there is no such
    /// subscription.
    fn ack_subscription(
        &mut self,
        name: &str,
        through: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, QueryError>;
    /// Records an event a sink gave up on.
    fn add_dead_letter(
        &mut self,
        subscription: &str,
        event_id: u64,
        attempts: u64,
        error: &str,
        now: Timestamp,
    ) -> Result<(), QueryError>;
    /// The newest dead letters of a subscription, at most `limit`.
    fn dead_letters(&self, subscription: &str, limit: usize)
    -> Result<Vec<DeadLetter>, QueryError>;

    /// A value the bus keeps for itself (its JetStream position, the sinks its config declared).
    fn bus_state(&self, key: &str) -> Result<Option<String>, QueryError>;
    /// Sets a value the bus keeps for itself.
    fn set_bus_state(&mut self, key: &str, value: &str) -> Result<(), QueryError>;
}

/// Opens a new handle on the event log (the bus runner opens one per task).
pub type OpenEventLog = Arc<dyn Fn() -> Result<Box<dyn EventLog>, QueryError> + Send + Sync>;
