//! The topology history's retention: a task beside the CMA that deletes `topo_history` rows
//! older than `topology_history_max_age` (default 90 days) and beyond
//! `topology_history_max_rows` (default 1,000,000) once a minute, a bounded batch per blocking
//! call through its own store connection (never on the async workers, never holding the
//! engine's writer for long). On SQLite or PostgreSQL alike ([`crate::store::HistoryPruner`]).

use std::time::Duration;

use assim_wire::Timestamp;
use tracing::{info, warn};

/// How often retention runs.
const EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per transaction.
const BATCH: usize = 5000;

/// Runs until the task is aborted.
pub async fn run(mut store: crate::store::HistoryPruner, max_age: Duration, max_rows: u64) {
    loop {
        let (mut by_age, mut by_count) = (0, 0);
        loop {
            let cutoff = Timestamp(Timestamp::now().0.saturating_sub(max_age.as_micros() as u64));
            let pass = tokio::task::spawn_blocking(move || {
                let r = store(cutoff, max_rows, BATCH);
                (store, r)
            })
            .await;
            let Ok((s, r)) = pass else { return };
            store = s;
            match r {
                Ok(p) => {
                    by_age += p.by_age;
                    by_count += p.by_count;
                    if ((p.by_age + p.by_count) as usize) < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "topology history retention failed; will retry");
                    break;
                }
            }
        }
        if by_age + by_count > 0 {
            info!(by_age, by_count, "old topology history deleted (retention)");
        }
        tokio::time::sleep(EVERY).await;
    }
}
