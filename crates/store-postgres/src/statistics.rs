//! The durable queue of statistics for Graphite on PostgreSQL (`stat_outbox`, issue 17 item 5,
//! issue 14): the same queue as the SQLite store's, with the same invariants
//! (`assim_store::statistics`): the engine appends in its batch transaction ([`append`], with
//! the cap), the forwarder of the active engine reads the oldest points and removes what carbon
//! took ([`assim_store::StatisticsOutbox`]).
//!
//! Ids come from the meta counter `stat_outbox_next`, advanced in the batch's own transaction,
//! not from a PostgreSQL sequence: a sequence keeps the numbers a rolled-back transaction took
//! (a fenced or failed batch), and the queue's length is read as `max(id) - min(id) + 1`, which
//! needs ids without holes. Points dropped beyond the cap are counted in
//! `meta.stat_outbox_dropped`.

use assim_cma::statistics::StatPoint;
use assim_store::{OutboxState, QueryError, QueuedPoint, StatisticsOutbox};

use crate::{Store, StoreError, Tx, pg, t};

/// (oldest id, newest id) of the queue, if it holds anything.
fn ends(tx: &mut Tx<'_>) -> Result<Option<(i64, i64)>, postgres::Error> {
    let rows = tx.query("SELECT MIN(id), MAX(id) FROM stat_outbox", &[])?;
    let (lo, hi): (Option<i64>, Option<i64>) = (rows[0].try_get(0)?, rows[0].try_get(1)?);
    Ok(lo.zip(hi))
}

/// Appends `points` in the engine's transaction, then drops the oldest beyond `max` and
/// counts them.
pub(crate) fn append(
    tx: &mut Tx<'_>,
    points: &[StatPoint],
    max: u64,
) -> Result<(), postgres::Error> {
    if points.is_empty() {
        return Ok(());
    }
    let n = points.len() as i64;
    // The next id after this batch; the batch takes the `n` ids before it.
    let next: String = tx.query(
        "INSERT INTO meta (key, value) VALUES ('stat_outbox_next', ($1::bigint + 1)::text)
         ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + $1::bigint)::text
         RETURNING value",
        &[&n],
    )?[0]
        .try_get(0)?;
    let next: i64 = next.parse().unwrap_or(n + 1);
    let first = next - n;
    tx.exec(
        "INSERT INTO stat_outbox (id, path, value, at)
         SELECT $1::bigint + u.i - 1, u.path, u.value, u.at
         FROM unnest($2::text[], $3::float8[], $4::bigint[]) WITH ORDINALITY
              AS u(path, value, at, i)",
        &[
            &first,
            &points.iter().map(|p| t(&p.path).into_owned()).collect::<Vec<_>>(),
            &points.iter().map(|p| p.value).collect::<Vec<_>>(),
            &points.iter().map(|p| p.at_s.min(i64::MAX as u64) as i64).collect::<Vec<_>>(),
        ],
    )?;
    if let Some((lo, hi)) = ends(tx)? {
        let len = (hi - lo + 1) as u64;
        if len > max {
            let cut = hi - max.min(i64::MAX as u64) as i64;
            let dropped = tx.exec("DELETE FROM stat_outbox WHERE id <= $1", &[&cut])? as i64;
            tx.exec(
                "INSERT INTO meta (key, value) VALUES ('stat_outbox_dropped', $1::bigint::text)
                 ON CONFLICT (key) DO UPDATE
                 SET value = (meta.value::bigint + $1::bigint)::text",
                &[&dropped],
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
        let limit = limit.min(assim_store::MAX_ANSWER_ROWS) as i64;
        self.rows(
            "reading the statistics queue",
            "SELECT id, path, value, at FROM stat_outbox ORDER BY id LIMIT $1",
            &[&limit],
            |r| {
                Ok(QueuedPoint {
                    id: r.try_get::<_, i64>(0)? as u64,
                    point: StatPoint {
                        path: r.try_get(1)?,
                        value: r.try_get(2)?,
                        at_s: r.try_get::<_, i64>(3)? as u64,
                    },
                })
            },
        )
    }

    /// Removes the points up to and including `id`.
    pub fn statistics_remove_through(&mut self, id: u64) -> Result<(), StoreError> {
        let id = id.min(i64::MAX as u64) as i64;
        self.exec("removing forwarded statistics", "DELETE FROM stat_outbox WHERE id <= $1", &[&id])
            .map(drop)
    }

    /// The queue's length and the points dropped so far.
    pub fn statistics_state(&self) -> Result<OutboxState, StoreError> {
        let what = "reading the statistics queue's state";
        let (queued, dropped) = self.transaction(what, |tx| {
            let queued = ends(tx).map_err(pg(what))?.map_or(0, |(lo, hi)| hi - lo + 1);
            let rows = tx
                .query("SELECT value FROM meta WHERE key = 'stat_outbox_dropped'", &[])
                .map_err(pg(what))?;
            let dropped: Option<String> = match rows.first() {
                Some(r) => Some(r.try_get(0).map_err(pg(what))?),
                None => None,
            };
            Ok((queued, dropped))
        })?;
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

impl StatisticsOutbox for crate::Handle {
    fn oldest(&mut self, limit: usize) -> Result<Vec<QueuedPoint>, QueryError> {
        self.call(move |s| Ok(s.statistics_oldest(limit)?))
    }

    fn remove_through(&mut self, id: u64) -> Result<(), QueryError> {
        self.call(move |s| Ok(s.statistics_remove_through(id)?))
    }

    fn state(&mut self) -> Result<OutboxState, QueryError> {
        self.call(|s| Ok(s.statistics_state()?))
    }
}
