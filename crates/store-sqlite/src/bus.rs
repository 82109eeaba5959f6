//! The event bus's tables: durable named subscriptions, dead letters, and event retention.
//!
//! A **subscription** is a name, a filter (text in the `assim-bus` filter language; the store
//! does not parse it), an optional sink configuration (JSON text, interpreted by `assim-bus`)
//! and a **cursor**: the id of the last event the subscriber acknowledged. The cursor only moves
//! forward ([`Store::ack_subscription`] keeps the maximum), so a late or repeated ack is
//! harmless, and after any restart the subscriber resumes exactly after the last acknowledged
//! event.
//!
//! A **dead letter** records an event a sink gave up on after its retries, with the last error;
//! the sink's cursor moves past it so one bad event cannot stall the subscription.
//!
//! **Retention** deletes the oldest events, in small batches so the CMA's writer is never held
//! up for long: everything older than a cut-off time, and everything beyond the newest N.
//! Retention wins over slow subscribers: a cursor that points below the oldest kept event
//! resumes at the oldest kept event.
//!
//! ```text
//! subscriptions(name TEXT PK, filter TEXT, sink TEXT NULL, cursor INT, created_at INT µs, updated_at INT µs)
//! dead_letters(id INT PK, subscription TEXT, event_id INT, attempts INT, error TEXT, at INT µs)
//! events(..., severity TEXT NOT NULL DEFAULT 'info', body TEXT NULL)   -- columns added in v2
//! ```

use assim_wire::Timestamp;
use rusqlite::{OptionalExtension, params};

pub use assim_store::event_log::{DeadLetter, Pruned, SubscriptionRecord};

use assim_store::QueryError;

use crate::{Store, StoreError};

/// Schema version 2 (see `MIGRATIONS` in the crate root).
pub(crate) const MIGRATION_2: &str = "
ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'info';
ALTER TABLE events ADD COLUMN body TEXT;
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    filter TEXT NOT NULL,
    sink TEXT,
    cursor INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_subscription ON dead_letters (subscription, id);
";

fn row_to_subscription(r: &rusqlite::Row<'_>) -> rusqlite::Result<SubscriptionRecord> {
    Ok(SubscriptionRecord {
        name: r.get(0)?,
        filter: r.get(1)?,
        sink: r.get(2)?,
        cursor: r.get::<_, i64>(3)? as u64,
        created_at: r.get::<_, i64>(4)? as u64,
        updated_at: r.get::<_, i64>(5)? as u64,
    })
}

impl Store {
    /// Creates the subscription (its cursor at `start`) or, if it exists, replaces its filter
    /// and sink and keeps its cursor. Returns the stored record.
    pub fn put_subscription(
        &mut self,
        name: &str,
        filter: &str,
        sink: Option<&str>,
        start: u64,
        now: Timestamp,
    ) -> Result<SubscriptionRecord, StoreError> {
        self.conn
            .execute(
                "INSERT INTO subscriptions (name, filter, sink, cursor, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT(name) DO UPDATE SET filter = excluded.filter, sink = excluded.sink,
                 updated_at = excluded.updated_at",
                params![name, filter, sink, start as i64, now.0 as i64],
            )
            .map_err(|e| self.sql(e))?;
        self.subscription(name)?.ok_or_else(|| StoreError::Corrupt {
            table: "subscriptions",
            detail: format!("{name} vanished right after it was written"),
        })
    }

    /// One subscription by name.
    pub fn subscription(&self, name: &str) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT name, filter, sink, cursor, created_at, updated_at FROM subscriptions
                 WHERE name = ?1",
                [name],
                row_to_subscription,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Every subscription, by name.
    pub fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, filter, sink, cursor, created_at, updated_at FROM subscriptions
                 ORDER BY name",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], row_to_subscription).map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Deletes a subscription and its dead letters; false if there was none.
    pub fn delete_subscription(&mut self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM subscriptions WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))?;
        self.conn
            .execute("DELETE FROM dead_letters WHERE subscription = ?1", [name])
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Moves the cursor forward to `through` (never back). Returns the cursor now stored, or
    /// `None` if there is no such subscription.
    pub fn ack_subscription(
        &mut self,
        name: &str,
        through: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        self.conn
            .execute(
                "UPDATE subscriptions SET cursor = MAX(cursor, ?2), updated_at = ?3
                 WHERE name = ?1",
                params![name, through as i64, now.0 as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.subscription(name)?.map(|s| s.cursor))
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
        self.conn
            .execute(
                "INSERT INTO dead_letters (subscription, event_id, attempts, error, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![subscription, event_id as i64, attempts as i64, error, now.0 as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The newest `limit` dead letters of a subscription, oldest first.
    pub fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, subscription, event_id, attempts, error, at FROM
                 (SELECT * FROM dead_letters WHERE subscription = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![subscription, limit as i64], |r| {
                Ok(DeadLetter {
                    id: r.get::<_, i64>(0)? as u64,
                    subscription: r.get(1)?,
                    event_id: r.get::<_, i64>(2)? as u64,
                    attempts: r.get::<_, i64>(3)? as u64,
                    error: r.get(4)?,
                    at: r.get::<_, i64>(5)? as u64,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// The number of stored events.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.sql(e))
    }

    /// One retention step: deletes at most `batch` events older than `older_than` or beyond the
    /// newest `keep`. Call it again while it deletes a full batch. Each call is one short
    /// transaction.
    pub fn prune_events(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        self.prune_table("events", older_than, keep, batch)
    }
}

/// The event bus's seam over this store (see [`assim_store::EventLog`]).
impl assim_store::EventLog for Store {
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<assim_cma::Event>, QueryError> {
        Store::events_since(self, after, limit).map_err(QueryError::backend)
    }
    fn last_event_id(&self) -> Result<u64, QueryError> {
        Store::last_event_id(self).map_err(QueryError::backend)
    }
    fn prune_events(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, QueryError> {
        Store::prune_events(self, older_than, keep, batch).map_err(QueryError::backend)
    }
    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, QueryError> {
        Store::subscriptions(self).map_err(QueryError::backend)
    }
    fn subscription(&self, name: &str) -> Result<Option<SubscriptionRecord>, QueryError> {
        Store::subscription(self, name).map_err(QueryError::backend)
    }
    fn put_subscription(
        &mut self,
        name: &str,
        filter: &str,
        sink: Option<&str>,
        start: u64,
        now: Timestamp,
    ) -> Result<SubscriptionRecord, QueryError> {
        Store::put_subscription(self, name, filter, sink, start, now).map_err(QueryError::backend)
    }
    fn delete_subscription(&mut self, name: &str) -> Result<bool, QueryError> {
        Store::delete_subscription(self, name).map_err(QueryError::backend)
    }
    fn ack_subscription(
        &mut self,
        name: &str,
        through: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, QueryError> {
        Store::ack_subscription(self, name, through, now).map_err(QueryError::backend)
    }
    fn add_dead_letter(
        &mut self,
        subscription: &str,
        event_id: u64,
        attempts: u64,
        error: &str,
        now: Timestamp,
    ) -> Result<(), QueryError> {
        Store::add_dead_letter(self, subscription, event_id, attempts, error, now)
            .map_err(QueryError::backend)
    }
    fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueryError> {
        Store::dead_letters(self, subscription, limit).map_err(QueryError::backend)
    }
    fn bus_state(&self, key: &str) -> Result<Option<String>, QueryError> {
        Store::meta(self, key).map_err(QueryError::backend)
    }
    fn set_bus_state(&mut self, key: &str, value: &str) -> Result<(), QueryError> {
        Store::set_meta(self, key, value).map_err(QueryError::backend)
    }
}

/// Opens a new connection to the SQLite file at `path` for every handle the bus asks for.
pub fn event_log_opener(path: std::path::PathBuf) -> assim_store::OpenEventLog {
    std::sync::Arc::new(move || {
        let store = Store::open(&path).map_err(QueryError::backend)?;
        Ok(Box::new(store) as Box<dyn assim_store::EventLog>)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use assim_cma::{Event, EventKind, Severity};
    use assim_wire::Timestamp;

    use crate::{InboxProgress, Store};

    fn ev(id: u64, time: u64) -> Event {
        Event {
            id,
            time: Timestamp(time),
            kind: EventKind::LocalEvent,
            host: None,
            hostname: "h".into(),
            tags: BTreeMap::from([("k".to_string(), "v".to_string())]),
            text: format!("event {id}"),
            severity: if id.is_multiple_of(2) { Severity::Critical } else { Severity::Info },
            body: (id == 3).then(|| serde_json::json!({"raid": [1, 2]})),
        }
    }

    #[test]
    fn severity_and_body_round_trip_and_retention_prunes_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db")).unwrap();
        let events: Vec<Event> = (1..=10).map(|i| ev(i, i * 1000)).collect();
        s.apply(&[], &events, &InboxProgress::default()).unwrap();
        assert_eq!(s.events_since(0, 100).unwrap(), events);
        // Age: everything before t=3000 goes (ids 1 and 2).
        let p = s.prune_events(Timestamp(3000), 1_000_000, 1000).unwrap();
        assert_eq!((p.by_age, p.by_count), (2, 0));
        // Count: keep the newest 5 (ids 6..=10), in batches of 2.
        let mut removed = 0;
        loop {
            let p = s.prune_events(Timestamp(0), 5, 2).unwrap();
            removed += p.by_count;
            if p.by_count < 2 {
                break;
            }
        }
        assert_eq!(removed, 3);
        let ids: Vec<u64> = s.events_since(0, 100).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![6, 7, 8, 9, 10]);
        assert_eq!(s.last_event_id().unwrap(), 10);
    }

    #[test]
    fn cursors_only_move_forward_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let mut s = Store::open(&path).unwrap();
            let sub =
                s.put_subscription("ops", "severity>=warning", None, 4, Timestamp(1)).unwrap();
            assert_eq!(sub.cursor, 4);
            assert_eq!(s.ack_subscription("ops", 9, Timestamp(2)).unwrap(), Some(9));
            assert_eq!(s.ack_subscription("ops", 5, Timestamp(3)).unwrap(), Some(9));
            assert_eq!(s.ack_subscription("nobody", 5, Timestamp(3)).unwrap(), None);
            // Changing the filter keeps the cursor.
            let sub =
                s.put_subscription("ops", "has:cluster", Some("{}"), 0, Timestamp(4)).unwrap();
            assert_eq!((sub.cursor, sub.filter.as_str()), (9, "has:cluster"));
            s.add_dead_letter("ops", 7, 5, "HTTP 500", Timestamp(5)).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.subscription("ops").unwrap().unwrap().cursor, 9);
        assert_eq!(s.dead_letters("ops", 10).unwrap()[0].event_id, 7);
        assert!(s.delete_subscription("ops").unwrap());
        assert!(s.subscriptions().unwrap().is_empty());
        assert!(s.dead_letters("ops", 10).unwrap().is_empty());
    }

    #[test]
    fn a_version_1_file_is_migrated_and_keeps_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(crate::SCHEMA).unwrap();
            c.execute(
                "INSERT INTO events (id, time, kind, host, hostname, tags, text)
                 VALUES (1, 5, 'host.up', NULL, 'a', '{}', 'a is up')",
                [],
            )
            .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let e = &s.events_since(0, 10).unwrap()[0];
        assert_eq!(
            (e.text.as_str(), e.severity, e.body.is_none()),
            ("a is up", Severity::Info, true)
        );
        drop(s);
        // Opening again is a no-op (the migration does not run twice).
        Store::open(&path).unwrap();
    }
}
