//! The event bus's tables on PostgreSQL ([`assim_store::EventLog`]): durable subscriptions
//! with cursors that only move forward, dead letters, and event retention in bounded batches —
//! the SQLite store's `bus` module is the spec. Each call is one statement or one short
//! transaction.

use assim_store::QueryError;
use assim_store::event_log::{DeadLetter, Pruned, SubscriptionRecord};
use assim_wire::Timestamp;
use postgres::{Error, Row};

use crate::{Store, StoreError, t};

fn subscription(r: &Row) -> Result<SubscriptionRecord, Error> {
    Ok(SubscriptionRecord {
        name: r.try_get(0)?,
        filter: r.try_get(1)?,
        sink: r.try_get(2)?,
        cursor: r.try_get::<_, i64>(3)? as u64,
        created_at: r.try_get::<_, i64>(4)? as u64,
        updated_at: r.try_get::<_, i64>(5)? as u64,
    })
}

const SUBSCRIPTION: &str =
    "SELECT name, filter, sink, cursor, created_at, updated_at FROM subscriptions";

impl Store {
    /// Creates the subscription (its cursor at `start`) or replaces an existing one's filter
    /// and sink, keeping its cursor.
    pub fn put_subscription(
        &mut self,
        name: &str,
        filter: &str,
        sink: Option<&str>,
        start: u64,
        now: Timestamp,
    ) -> Result<SubscriptionRecord, StoreError> {
        let row = self.row(
            "writing a subscription",
            "INSERT INTO subscriptions (name, filter, sink, cursor, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (name) DO UPDATE SET filter = EXCLUDED.filter, sink = EXCLUDED.sink,
               updated_at = EXCLUDED.updated_at
             RETURNING name, filter, sink, cursor, created_at, updated_at",
            &[&t(name), &t(filter), &sink.map(t), &(start as i64), &(now.0 as i64)],
            subscription,
        )?;
        row.ok_or_else(|| StoreError::Corrupt {
            table: "subscriptions",
            detail: format!("{name} was not returned by its own upsert"),
        })
    }

    /// One subscription by name.
    pub fn subscription(&self, name: &str) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.row(
            "reading a subscription",
            &format!("{SUBSCRIPTION} WHERE name = $1"),
            &[&t(name)],
            subscription,
        )
    }

    /// Every subscription, by name.
    pub fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        self.rows(
            "reading subscriptions",
            &format!("{SUBSCRIPTION} ORDER BY name"),
            &[],
            subscription,
        )
    }

    /// Deletes a subscription and its dead letters (one transaction); false if there was none.
    pub fn delete_subscription(&mut self, name: &str) -> Result<bool, StoreError> {
        let what = "deleting a subscription";
        self.transaction(what, |tx| {
            let n = tx
                .exec("DELETE FROM subscriptions WHERE name = $1", &[&t(name)])
                .map_err(crate::pg(what))?;
            tx.exec("DELETE FROM dead_letters WHERE subscription = $1", &[&t(name)])
                .map_err(crate::pg(what))?;
            Ok(n > 0)
        })
    }

    /// Moves the cursor forward to `through` (never back): the cursor now stored, or `None`
    /// without such a subscription.
    pub fn ack_subscription(
        &mut self,
        name: &str,
        through: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let cursor = self.row(
            "acknowledging events",
            "UPDATE subscriptions SET cursor = GREATEST(cursor, $2), updated_at = $3
             WHERE name = $1 RETURNING cursor",
            &[&t(name), &(through as i64), &(now.0 as i64)],
            |r| r.try_get::<_, i64>(0),
        )?;
        Ok(cursor.map(|c| c as u64))
    }

    /// Records an event a sink gave up on.
    pub fn add_dead_letter(
        &mut self,
        subscription: &str,
        event_id: u64,
        attempts: u64,
        error: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.exec(
            "recording a dead letter",
            "INSERT INTO dead_letters (subscription, event_id, attempts, error, at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&t(subscription), &(event_id as i64), &(attempts as i64), &t(error), &(now.0 as i64)],
        )
        .map(drop)
    }

    /// The newest `limit` dead letters of a subscription, oldest first.
    pub fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.rows(
            "reading dead letters",
            "SELECT id, subscription, event_id, attempts, error, at FROM
             (SELECT * FROM dead_letters WHERE subscription = $1 ORDER BY id DESC LIMIT $2) d
             ORDER BY id",
            &[&t(subscription), &(limit.min(i64::MAX as usize) as i64)],
            |r| {
                Ok(DeadLetter {
                    id: r.try_get::<_, i64>(0)? as u64,
                    subscription: r.try_get(1)?,
                    event_id: r.try_get::<_, i64>(2)? as u64,
                    attempts: r.try_get::<_, i64>(3)? as u64,
                    error: r.try_get(4)?,
                    at: r.try_get::<_, i64>(5)? as u64,
                })
            },
        )
    }

    /// The number of stored events.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        let n = self.row("counting events", "SELECT COUNT(*) FROM events", &[], |r| {
            r.try_get::<_, i64>(0)
        })?;
        Ok(n.unwrap_or(0) as u64)
    }

    /// One retention step over the events (see [`Store::prune_table`]).
    pub fn prune_events(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        self.prune_table("events", older_than, keep, batch)
    }

    /// One retention step over the topology history.
    pub fn prune_topo_history(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        self.prune_table("topo_history", older_than, keep, batch)
    }

    /// Deletes at most `batch` rows of `table` (its `id` grows with its `time`): older than
    /// `older_than` first, then the oldest beyond the newest `keep`. One short transaction.
    fn prune_table(
        &mut self,
        table: &'static str,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        let what = "pruning";
        let e = crate::pg(what);
        let batch = batch.min(i64::MAX as usize) as i64;
        self.transaction(what, |tx| {
            let mut out = Pruned::default();
            let n = tx
                .exec(
                    &format!(
                        "DELETE FROM {table} WHERE id IN
                         (SELECT id FROM {table} WHERE time < $1 ORDER BY id LIMIT $2)"
                    ),
                    &[&(older_than.0 as i64), &batch],
                )
                .map_err(&e)?;
            out.by_age = n;
            let left = (batch as u64).saturating_sub(n);
            if left > 0 {
                let total: i64 =
                    tx.query(&format!("SELECT COUNT(*) FROM {table}"), &[]).map_err(&e)?[0]
                        .try_get(0)
                        .map_err(&e)?;
                let excess = (total.max(0) as u64).saturating_sub(keep).min(left);
                if excess > 0 {
                    out.by_count = tx
                        .exec(
                            &format!(
                                "DELETE FROM {table} WHERE id IN
                                 (SELECT id FROM {table} ORDER BY id LIMIT $1)"
                            ),
                            &[&(excess as i64)],
                        )
                        .map_err(&e)?;
                }
            }
            Ok(out)
        })
    }
}

/// The event bus's seam over this store.
impl assim_store::EventLog for Store {
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<assim_cma::Event>, QueryError> {
        Ok(Store::events_since(self, after, limit)?)
    }
    fn last_event_id(&self) -> Result<u64, QueryError> {
        Ok(Store::last_event_id(self)?)
    }
    fn prune_events(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, QueryError> {
        Ok(Store::prune_events(self, older_than, keep, batch)?)
    }
    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, QueryError> {
        Ok(Store::subscriptions(self)?)
    }
    fn subscription(&self, name: &str) -> Result<Option<SubscriptionRecord>, QueryError> {
        Ok(Store::subscription(self, name)?)
    }
    fn put_subscription(
        &mut self,
        name: &str,
        filter: &str,
        sink: Option<&str>,
        start: u64,
        now: Timestamp,
    ) -> Result<SubscriptionRecord, QueryError> {
        Ok(Store::put_subscription(self, name, filter, sink, start, now)?)
    }
    fn delete_subscription(&mut self, name: &str) -> Result<bool, QueryError> {
        Ok(Store::delete_subscription(self, name)?)
    }
    fn ack_subscription(
        &mut self,
        name: &str,
        through: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, QueryError> {
        Ok(Store::ack_subscription(self, name, through, now)?)
    }
    fn add_dead_letter(
        &mut self,
        subscription: &str,
        event_id: u64,
        attempts: u64,
        error: &str,
        now: Timestamp,
    ) -> Result<(), QueryError> {
        Ok(Store::add_dead_letter(self, subscription, event_id, attempts, error, now)?)
    }
    fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueryError> {
        Ok(Store::dead_letters(self, subscription, limit)?)
    }
    fn bus_state(&self, key: &str) -> Result<Option<String>, QueryError> {
        Ok(Store::meta(self, key)?)
    }
    fn set_bus_state(&mut self, key: &str, value: &str) -> Result<(), QueryError> {
        Ok(Store::set_meta(self, key, value)?)
    }
}

/// Opens a new connection, on a thread of its own ([`crate::Handle`]), for every handle the
/// bus asks for.
pub fn event_log_opener(conninfo: String) -> assim_store::OpenEventLog {
    std::sync::Arc::new(move || {
        let store = crate::Handle::open(&conninfo)?;
        Ok(Box::new(store) as Box<dyn assim_store::EventLog>)
    })
}
