//! Ingest benchmark: acknowledged, fsync-durable reports per second at a real CMA process, and
//! the spool-append → acknowledgement latency, with N senders (default 50) that each keep a
//! window of unacknowledged reports and spool them in batches, as a busy nanoprobe would.
//!
//! Then, in the same run, the same number of publishers push the same number of 250-byte
//! messages with the same window of unacknowledged ones into a real nats-server JetStream
//! stream with file storage: once with JetStream's default (a message is acknowledged once
//! written, fsync'd every 2 minutes) and, on nats-server 2.10 or later, once with
//! `sync_interval: always` (acknowledged after its fsync, as the CMA does). The server is
//! `$ASSIM_NATS_SERVER`, else `/opt/assim-nats/bin/nats-server` (the current release that
//! `scripts/install-deps` installs from PyPI), else `nats-server` on the PATH.
//!
//! The CMA runs three times: embedded (the default: SQLite, local inbox), in cluster mode
//! (`--store postgres://… --queue nats://…`: a throwaway PostgreSQL 15, three clustered
//! nats-servers, the inbox stream with 3 replicas; skipped with a note when either is missing)
//! with one engine that reads its own socket, and in cluster mode with two packet readers
//! (`cma --role reader`) in front of an engine (`--role engine`), the senders spread over both.
//!
//! Run: `cargo bench -p assim --bench ingest` (env: ASSIM_BENCH_SENDERS, ASSIM_BENCH_REPORTS
//! per sender, ASSIM_BENCH_WINDOW, ASSIM_BENCH_BATCH; ASSIM_BENCH_CLUSTER=0 leaves the cluster
//! mode out; ASSIM_BENCH_NATS=0 leaves the bare JetStream comparison out;
//! ASSIM_BENCH_ASSIM=PATH runs the CMA from another `assim` binary, e.g. an older build).

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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
    let assim = std::env::var_os("ASSIM_BENCH_ASSIM")
        .map_or_else(|| env!("CARGO_BIN_EXE_assim").into(), std::path::PathBuf::from);
    println!(
        "ingest benchmark: {senders} senders x {reports} reports (window {window}, batch {batch})"
    );
    let load = Load { senders, reports, window, batch };
    ingest(
        &assim,
        "embedded (one CMA process, SQLite, local inbox, fsync per turn)",
        &[],
        0,
        &load,
    );
    if env_or("ASSIM_BENCH_CLUSTER", 1) != 0 {
        cluster_mode(&assim, &load);
    }
    if env_or("ASSIM_BENCH_NATS", 1) == 0 {
        return;
    }
    let Some(server) = nats_server() else {
        println!("JetStream: no nats-server found (scripts/install-deps installs one); skipped");
        return;
    };
    let version = std::process::Command::new(&server)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let always = !version.contains("v2.9.") && !version.contains("v2.8.");
    for sync_always in [false, true] {
        if sync_always && !always {
            println!(
                "JetStream with sync_interval always: needs nats-server 2.10 or later ({version})"
            );
            continue;
        }
        let (acked, secs) = jetstream(&server, sync_always, senders, reports, window as usize);
        println!(
            "JetStream ({version}, file storage, {}): {acked} acknowledged messages in {secs:.2} s = {:.0} messages/s",
            if sync_always {
                "sync_interval always: acked after fsync"
            } else {
                "default: fsync every 2 min"
            },
            acked as f64 / secs
        );
    }
}

/// The load every run gets.
struct Load {
    senders: usize,
    reports: u64,
    window: u64,
    batch: u64,
}

/// One run against a CMA started with `cma_args` (and `readers` packet readers).
fn ingest(assim: &std::path::Path, label: &str, cma_args: &[&str], readers: usize, load: &Load) {
    let spec = ClusterSpec {
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        cma_args: cma_args.iter().map(|a| a.to_string()).collect(),
        readers,
        ..ClusterSpec::multicall(assim, 0)
    };
    let c = Cluster::new(spec, false).expect("start the CMA");
    println!("{label}:");
    let cma = match readers {
        0 => vec![c.cma_listen],
        _ => c.readers.iter().map(|r| r.listen).collect(),
    };
    let opts = LoadOptions {
        cma,
        senders: load.senders,
        reports: load.reports,
        window: load.window,
        batch: load.batch,
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
        "  acknowledged durable reports: {} in {secs:.2} s = {:.0} reports/s",
        r.acked,
        r.acked as f64 / secs
    );
    println!(
        "  ack latency (spool append -> CMA ack): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.percentile(0.5) as f64 / 1000.0,
        r.percentile(0.99) as f64 / 1000.0,
        r.percentile(1.0) as f64 / 1000.0
    );
    if readers > 0 {
        // The inbox is the readers' (their counters are in their logs), not the engine's.
        return;
    }
    println!(
        "  CMA inbox: {records:.0} records in {syncs:.0} syncs ({:.0} records/sync, {:.2} ms/sync, {:.0}% of the run in syncs)",
        records / syncs.max(1.0),
        sync_secs * 1000.0 / syncs.max(1.0),
        100.0 * sync_secs / secs
    );
}

/// The same load against the cluster mode: `cma --store postgres://… --queue nats://…` with a
/// throwaway PostgreSQL 15 and three clustered nats-servers (the inbox stream with 3 replicas),
/// one active engine.
fn cluster_mode(assim: &std::path::Path, load: &Load) {
    use assim_util::testing::{Nats, Postgres};
    let Some(pg) = Postgres::start() else { return };
    let Some(nats) = Nats::cluster() else { return };
    pg.create_database("bench");
    let store = pg.url("bench");
    let queue = nats.url();
    ingest(
        assim,
        "cluster mode (one active engine, PostgreSQL 15, JetStream inbox with 3 replicas on 3 local nats-servers)",
        &["--store", &store, "--queue", &queue],
        0,
        load,
    );
    pg.create_database("bench_readers");
    let store = pg.url("bench_readers");
    // The same stream: a new database's engine starts at its end.
    ingest(
        assim,
        "cluster mode with 2 packet readers (cma --role reader) and one engine (--role engine), same PostgreSQL and NATS",
        &["--store", &store, "--queue", &queue],
        2,
        load,
    );
}

/// The nats-server to compare with (see the module doc).
fn nats_server() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("ASSIM_NATS_SERVER") {
        return Some(p.into());
    }
    let pinned = std::path::Path::new("/opt/assim-nats/bin/nats-server");
    if pinned.exists() {
        return Some(pinned.into());
    }
    std::process::Command::new("nats-server").arg("--version").output().ok()?;
    Some("nats-server".into())
}

/// Publishes `senders` x `reports` 250-byte messages into a file-backed stream, each publisher
/// keeping up to `window` acknowledgements outstanding; returns (acknowledged, seconds).
fn jetstream(
    server: &std::path::Path,
    sync_always: bool,
    senders: usize,
    reports: u64,
    window: usize,
) -> (u64, f64) {
    use async_nats::jetstream::{self, stream};
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.path().join("nats.conf");
    let store = dir.path().join("js");
    let sync = if sync_always { "\n  sync_interval: always" } else { "" };
    let text = format!(
        "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}{sync}\n}}\n",
        store.display().to_string()
    );
    std::fs::write(&conf, text).expect("write nats.conf");
    /// Stops the server however the run ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        std::process::Command::new(server)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let mut js = jetstream::new(client);
        // Up to senders x window acknowledgements wait on one fsync at a time with `always`.
        js.set_timeout(Duration::from_secs(120));
        js.get_or_create_stream(stream::Config {
            name: "INGEST".into(),
            subjects: vec!["ingest.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        let started = Instant::now();
        let mut pubs = Vec::new();
        for p in 0..senders {
            let js = js.clone();
            pubs.push(tokio::spawn(async move {
                let subject = format!("ingest.n{p}");
                let mut pending = VecDeque::new();
                let mut acked = 0u64;
                for i in 0..reports {
                    let mut payload = format!("report {p} {i} ").into_bytes();
                    payload.resize(250, b'x');
                    pending.push_back(js.publish(subject.clone(), payload.into()).await.unwrap());
                    if pending.len() >= window {
                        pending.pop_front().unwrap().await.unwrap();
                        acked += 1;
                    }
                }
                for a in pending {
                    a.await.unwrap();
                    acked += 1;
                }
                acked
            }));
        }
        let mut acked = 0;
        for p in pubs {
            acked += p.await.unwrap();
        }
        (acked, started.elapsed().as_secs_f64())
    })
}
