//! Group commit on the real filesystem: 200-byte records appended in batches of 1, 64 and
//! 1024, one `sync` (one fdatasync) per batch, against a peer doing the same with a bare
//! `std::fs::File` (one `write_all` + `sync_data` per batch, no framing, no CRC).
//!
//! Run with `cargo bench -p assim-log`. The log lives in a temporary directory under the
//! target directory (a real disk, not tmpfs). Each case runs for about 1.5 s and prints:
//! records/s, MB/s of payload (10^6 bytes), and the latency of the per-batch sync (p50, p99).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use assim_log::{FileStorage, Log, LogConfig};

const RECORD: usize = 200;
const TARGET: Duration = Duration::from_millis(1500);

struct Figures {
    records: u64,
    elapsed: Duration,
    syncs: Vec<Duration>,
}

impl Figures {
    fn print(mut self, name: &str, batch: usize) {
        self.syncs.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.syncs.len() as f64 * p).ceil() as usize).clamp(1, self.syncs.len());
            self.syncs[i - 1].as_secs_f64() * 1e6
        };
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{name:<10} batch {batch:>5}: {:>10.0} records/s {:>8.2} MB/s   sync p50 {:>7.0} µs  p99 {:>7.0} µs  ({} syncs)",
            self.records as f64 / secs,
            (self.records as usize * RECORD) as f64 / secs / 1e6,
            pct(0.50),
            pct(0.99),
            self.syncs.len()
        );
    }
}

fn bench_log(dir: &Path, batch: usize) -> Figures {
    let mut log = Log::open(FileStorage::open(dir).unwrap(), LogConfig::default()).unwrap();
    let payload = vec![0x5a; RECORD];
    let mut syncs = Vec::new();
    let mut records = 0;
    let mut busy = Duration::ZERO;
    while busy < TARGET {
        let start = Instant::now();
        for _ in 0..batch {
            log.append(&payload).unwrap();
        }
        let before_sync = Instant::now();
        log.sync().unwrap();
        let end = Instant::now();
        syncs.push(end - before_sync);
        busy += end - start;
        records += batch as u64;
        if syncs.len() % 256 == 0 {
            // Keep the disk footprint small, outside the timed part.
            log.remove_through(log.durable_lsn()).unwrap();
        }
    }
    Figures { records, elapsed: busy, syncs }
}

fn bench_raw(dir: &Path, batch: usize) -> Figures {
    let path = dir.join("raw");
    let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let buf = vec![0x5a; RECORD * batch];
    let mut syncs = Vec::new();
    let mut records = 0;
    let mut busy = Duration::ZERO;
    while busy < TARGET {
        let start = Instant::now();
        file.write_all(&buf).unwrap();
        let before_sync = Instant::now();
        file.sync_data().unwrap();
        let end = Instant::now();
        syncs.push(end - before_sync);
        busy += end - start;
        records += batch as u64;
        if syncs.len() % 256 == 0 {
            file.set_len(0).unwrap();
        }
    }
    Figures { records, elapsed: busy, syncs }
}

fn main() {
    let base = tempfile::Builder::new()
        .prefix("assim-log-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    println!("assim-log group commit, {RECORD}-byte records, in {}", base.path().display());
    for batch in [1, 64, 1024] {
        let dir = base.path().join(format!("log-{batch}"));
        bench_log(&dir, batch).print("assim-log", batch);
        let dir = base.path().join(format!("raw-{batch}"));
        std::fs::create_dir_all(&dir).unwrap();
        bench_raw(&dir, batch).print("raw file", batch);
    }
}
