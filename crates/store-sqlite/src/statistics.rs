//! The durable queue of statistics for Graphite (`stat_outbox`, issue 17 item 5): the engine
//! appends in its batch transaction ([`append`], with the cap), the forwarder reads the oldest
//! and removes what carbon took ([`assim_store::StatisticsOutbox`]). The invariants are
//! `assim_store::statistics`': ids are never reused and rows leave only from the oldest end,
//! so the queue's length is `max(id) - min(id) + 1`, read from the primary key's ends without
//! a scan. Points dropped beyond the cap are counted in `meta.stat_outbox_dropped`.

use assim_cma::statistics::StatPoint;
use assim_store::{OutboxState, QueryError, QueuedPoint, StatisticsOutbox};
use rusqlite::{OptionalExtension as _, Transaction, params};

use crate::{Store, StoreError};

/// (oldest id, newest id) of the queue, if it holds anything.
fn ends(conn: &rusqlite::Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.query_row("SELECT MIN(id), MAX(id) FROM stat_outbox", [], |r| {
        Ok(match (r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        })
    })
}

/// Appends `points` in the engine's transaction, then drops the oldest beyond `max` and
/// counts them.
pub(crate) fn append(tx: &Transaction<'_>, points: &[StatPoint], max: u64) -> rusqlite::Result<()> {
    let mut put =
        tx.prepare_cached("INSERT INTO stat_outbox (path, value, at) VALUES (?1, ?2, ?3)")?;
    for p in points {
        put.execute(params![p.path, p.value, p.at_s as i64])?;
    }
    if let Some((lo, hi)) = ends(tx)? {
        let len = (hi - lo + 1) as u64;
        if len > max {
            let cut = hi - max as i64;
            let n = tx.execute("DELETE FROM stat_outbox WHERE id <= ?1", params![cut])?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('stat_outbox_dropped', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?1",
                params![n as i64],
            )?;
        }
    }
    Ok(())
}

impl Store {
    /// The most statistics points the queue keeps (the oldest beyond it are dropped and
    /// counted); at least 1.
    pub fn set_statistics_queue_max(&mut self, max: u64) {
        self.statistics_max = max.max(1);
    }

    /// The queue's oldest `limit` points.
    pub fn statistics_oldest(&self, limit: usize) -> Result<Vec<QueuedPoint>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, path, value, at FROM stat_outbox ORDER BY id LIMIT ?1")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(QueuedPoint {
                    id: r.get::<_, i64>(0)? as u64,
                    point: StatPoint {
                        path: r.get(1)?,
                        value: r.get(2)?,
                        at_s: r.get::<_, i64>(3)? as u64,
                    },
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.sql(e))
    }

    /// Removes the points up to and including `id`.
    pub fn statistics_remove_through(&mut self, id: u64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM stat_outbox WHERE id <= ?1", params![id as i64])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The queue's length and the points dropped so far.
    pub fn statistics_state(&self) -> Result<OutboxState, StoreError> {
        let queued = ends(&self.conn).map_err(|e| self.sql(e))?.map_or(0, |(lo, hi)| hi - lo + 1);
        let dropped: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'stat_outbox_dropped'", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(OutboxState {
            queued: queued as u64,
            dropped: dropped.and_then(|d| d.parse().ok()).unwrap_or(0),
        })
    }
}

impl StatisticsOutbox for Store {
    fn oldest(&mut self, limit: usize) -> Result<Vec<QueuedPoint>, QueryError> {
        Ok(self.statistics_oldest(limit)?)
    }

    fn remove_through(&mut self, id: u64) -> Result<(), QueryError> {
        Ok(self.statistics_remove_through(id)?)
    }

    fn state(&mut self) -> Result<OutboxState, QueryError> {
        Ok(self.statistics_state()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_store::{EngineStore as _, InboxProgress};

    fn points(from: u64, n: u64) -> Vec<StatPoint> {
        (from..from + n)
            .map(|i| StatPoint {
                path: format!("assim.h.m{i}"),
                value: i as f64 + 0.5,
                at_s: 1_800_000_000 + i,
            })
            .collect()
    }

    fn batch(store: &mut Store, p: Vec<StatPoint>) {
        let progress = InboxProgress { statistics: p, ..Default::default() };
        assim_store::EngineStore::apply(store, &[], &[], &progress).unwrap();
    }

    #[test]
    fn issue_17_item_5_the_queue_survives_a_reopen_is_capped_and_counts_its_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cma.sqlite");
        let mut s = Store::open(&path).unwrap();
        s.set_statistics_queue_max(10);
        batch(&mut s, points(0, 4));
        batch(&mut s, points(4, 4));
        drop(s);
        // A second handle (the forwarder's) sees them, oldest first, with their times.
        let mut fwd = Store::open(&path).unwrap();
        let got = fwd.oldest(3).unwrap();
        assert_eq!(
            got.iter().map(|q| q.point.path.as_str()).collect::<Vec<_>>(),
            ["assim.h.m0", "assim.h.m1", "assim.h.m2"]
        );
        assert_eq!((got[2].point.value, got[2].point.at_s), (2.5, 1_800_000_002));
        fwd.remove_through(got[2].id).unwrap();
        assert_eq!(fwd.state().unwrap(), OutboxState { queued: 5, dropped: 0 });
        // Beyond the cap the oldest go, counted.
        let mut s = Store::open(&path).unwrap();
        s.set_statistics_queue_max(10);
        batch(&mut s, points(8, 8));
        assert_eq!(fwd.state().unwrap(), OutboxState { queued: 10, dropped: 3 });
        assert_eq!(fwd.oldest(1).unwrap()[0].point.path, "assim.h.m6");
        // Emptied and refilled: ids go on growing.
        let last = fwd.oldest(100).unwrap().last().unwrap().id;
        fwd.remove_through(last).unwrap();
        assert_eq!(fwd.state().unwrap().queued, 0);
        batch(&mut s, points(20, 1));
        let q = fwd.oldest(100).unwrap();
        assert_eq!((q.len(), q[0].id > last), (1, true));
        let _ = s.load().unwrap();
    }
}
