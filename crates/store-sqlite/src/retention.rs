//! Retention of the topology history (`topo_history`): every change of a host's graph adds a
//! row, so without a bound a busy fleet fills the disk. [`Store::prune_topo_history`] deletes
//! rows older than a cut-off, then the oldest rows beyond a maximum count, a bounded batch per
//! call (one short write transaction, so the engine's writer never waits long); the CMA calls
//! it periodically with `topology_history_max_age` / `topology_history_max_rows`.

use assim_store::Pruned;
use assim_wire::Timestamp;
use rusqlite::params;

use crate::{Store, StoreError};

/// Default age limit of topology history rows.
pub const DEFAULT_MAX_AGE_DAYS: u64 = 90;
/// Default row limit of the topology history.
pub const DEFAULT_MAX_ROWS: u64 = 1_000_000;

impl Store {
    /// Deletes at most `batch` history rows: first those older than `older_than`, then the
    /// oldest beyond `keep` rows. Call again while it deletes a full batch.
    pub fn prune_topo_history(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        self.prune_table("topo_history", older_than, keep, batch)
    }

    /// One retention step over `table` (its `id` grows with its `time`): deletes at most `batch`
    /// rows older than `older_than`, then the oldest beyond the newest `keep`. One short write
    /// transaction per call. Shared by the event log and the topology history.
    pub(crate) fn prune_table(
        &mut self,
        table: &'static str,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        let mut out = Pruned::default();
        // Ids grow with time: the old rows are a prefix of the id order.
        let n = self
            .conn
            .execute(
                &format!(
                    "DELETE FROM {table} WHERE id IN
                     (SELECT id FROM {table} WHERE time < ?1 ORDER BY id LIMIT ?2)"
                ),
                params![older_than.0 as i64, batch as i64],
            )
            .map_err(|e| self.sql(e))?;
        out.by_age = n as u64;
        let left = batch.saturating_sub(n);
        if left > 0 {
            let total: i64 = self
                .conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            let excess = (total.max(0) as u64).saturating_sub(keep).min(left as u64);
            if excess > 0 {
                let n = self
                    .conn
                    .execute(
                        &format!(
                            "DELETE FROM {table} WHERE id IN
                             (SELECT id FROM {table} ORDER BY id LIMIT ?1)"
                        ),
                        [excess as i64],
                    )
                    .map_err(|e| self.sql(e))?;
                out.by_count = n as u64;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_13_topology_history_is_bounded_by_age_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db")).unwrap();
        for t in 1..=10i64 {
            s.conn
                .execute(
                    "INSERT INTO topo_history (time, node, collector, kind, added, removed, detail)
                     VALUES (?1, 'n', 'sockets', 'services', 1, 0, '{}')",
                    [t * 1000],
                )
                .unwrap();
        }
        let times = |s: &Store| -> Vec<i64> {
            let mut st = s.conn.prepare("SELECT time FROM topo_history ORDER BY id").unwrap();
            st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        // Age: everything before t=3000 goes.
        let p = s.prune_topo_history(Timestamp(3000), 1_000_000, 1000).unwrap();
        assert_eq!((p.by_age, p.by_count), (2, 0));
        // Count: keep the newest 5, in batches of 2.
        let mut removed = 0;
        loop {
            let p = s.prune_topo_history(Timestamp(0), 5, 2).unwrap();
            removed += p.by_count;
            if p.by_count < 2 {
                break;
            }
        }
        assert_eq!(removed, 3);
        assert_eq!(times(&s), vec![6000, 7000, 8000, 9000, 10000]);
    }
}
