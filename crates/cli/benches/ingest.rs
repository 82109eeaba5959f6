//! Ingest benchmark: acknowledged, fsync-durable reports per second at a real CMA process, and
//! the spool-append → acknowledgement latency, with N senders (default 50) that each keep a
//! window of unacknowledged reports and spool them in batches, as a busy nanoprobe would.
//!
//! Run: `cargo bench -p assim --bench ingest` (env: ASSIM_BENCH_SENDERS, ASSIM_BENCH_REPORTS
//! per sender, ASSIM_BENCH_WINDOW, ASSIM_BENCH_BATCH).

mod common;

use std::time::Duration;

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use assim::loadgen::{LoadOptions, run};
use common::{env_or, metric};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let senders = env_or("ASSIM_BENCH_SENDERS", 50) as usize;
    let reports = env_or("ASSIM_BENCH_REPORTS", 4000);
    let window = env_or("ASSIM_BENCH_WINDOW", 2048);
    let batch = env_or("ASSIM_BENCH_BATCH", 256);
    let spec = ClusterSpec {
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 0)
    };
    let c = Cluster::new(spec, false).expect("start the CMA");
    println!(
        "ingest benchmark: {senders} senders x {reports} reports (window {window}, batch {batch}), \
         one CMA process, inbox fsync per turn"
    );
    let opts = LoadOptions {
        cma: c.cma_listen,
        senders,
        reports,
        window,
        batch,
        data_dir: c.dir.join("senders"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(run(opts)).expect("senders");
    std::thread::sleep(Duration::from_millis(1200));
    let m = c.client.metrics().expect("metrics");
    let syncs = metric(&m, "assim_cma_inbox_syncs_total");
    let records = metric(&m, "assim_cma_inbox_records_total");
    let sync_secs = metric(&m, "assim_cma_inbox_sync_seconds_total");
    let secs = r.elapsed.as_secs_f64();
    println!(
        "acknowledged durable reports: {} in {secs:.2} s = {:.0} reports/s",
        r.acked,
        r.acked as f64 / secs
    );
    println!(
        "ack latency (spool append -> CMA ack): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.percentile(0.5) as f64 / 1000.0,
        r.percentile(0.99) as f64 / 1000.0,
        r.percentile(1.0) as f64 / 1000.0
    );
    println!(
        "CMA inbox: {records:.0} records in {syncs:.0} fsyncs ({:.0} records/fsync, {:.2} ms/fsync, {:.0}% of the run in fsync)",
        records / syncs.max(1.0),
        sync_secs * 1000.0 / syncs.max(1.0),
        100.0 * sync_secs / secs
    );
}
