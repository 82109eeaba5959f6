//! The daemon's spool path: the shell over the real disk spool that `nanoprobe` opens
//! ([`assim_nanoprobe::nanoprobe::open_shell`], files in `DATA_DIR/spool`), with a storage
//! that fails chosen fsyncs (a real filesystem cannot be told to).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use assim_log::{FileStorage, Log, LogConfig, Storage};
use assim_probe_shell::{Shell, ShellConfig, Spool, SpoolStorage, Transmit, WallClock};
use assim_wire::NodeId;
use assim_wire::msg::{self, Body, Message};

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("assim-np-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// [`FileStorage`] whose next `fail` fsyncs fail (shared across reopens, like a disk).
#[derive(Debug)]
struct FailingDisk {
    inner: FileStorage,
    fail: Arc<AtomicU32>,
}

impl Storage for FailingDisk {
    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&mut self, name: &str) -> io::Result<()> {
        self.inner.create(name)
    }
    fn append(&mut self, name: &str, buf: &[u8]) -> io::Result<usize> {
        self.inner.append(name, buf)
    }
    fn write_file(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.inner.write_file(name, data)
    }
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(name, offset, buf)
    }
    fn file_len(&self, name: &str) -> io::Result<u64> {
        self.inner.file_len(name)
    }
    fn sync(&mut self, name: &str) -> io::Result<()> {
        if self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        self.inner.sync(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

impl SpoolStorage for FailingDisk {
    type Reopen = (PathBuf, Arc<AtomicU32>);
    fn reopen_token(&self) -> Self::Reopen {
        (self.inner.reopen_token(), self.fail.clone())
    }
    fn reopen((dir, fail): &Self::Reopen) -> io::Result<FailingDisk> {
        // The daemon's reopen: the directory again (its lock is free once the old log is gone).
        Ok(FailingDisk { inner: FileStorage::reopen(dir)?, fail: fail.clone() })
    }
}

fn shell(dir: &Path, fail: &Arc<AtomicU32>, now: Instant) -> Shell<FailingDisk> {
    let storage =
        FailingDisk { inner: FileStorage::open(dir.join("spool")).unwrap(), fail: fail.clone() };
    let spool = Spool::open(storage, 64 << 20, assim_probe_shell::limits::MAX_MESSAGE).unwrap();
    let cma: SocketAddr = "127.0.0.1:1984".parse().unwrap();
    let cfg = ShellConfig {
        node_id: NodeId([1; 16]),
        cma_id: NodeId([2; 16]),
        cma_addr: cma,
        session: 1,
        seed: 1,
        hello: msg::Hello::default(),
        reliable: Default::default(),
        discovery_defaults: false,
        wall_clock: WallClock::new(now, 1),
    };
    Shell::new(cfg, spool, None, now)
}

fn report(n: u64) -> Body {
    Body::HeartbeatReport(msg::HeartbeatReport {
        peer: vec![9; 16],
        kind: msg::ReportKind::Dead as i32,
        silent_ms: n,
        ..Default::default()
    })
}

/// Spool records (numbers) sent to the CMA by `shell` so far.
fn sent_records(shell: &mut Shell<FailingDisk>, now: Instant) -> usize {
    let mut n = 0;
    while let Some(t) = shell.poll_transmit(now) {
        n += usize::from(matches!(t, Transmit::Cma { .. }));
    }
    n
}

/// Issue 16 item 8, on the daemon's disk spool: a failed fsync used to poison `link.rs`'s
/// spool until the nanoprobe restarted (every later record went out unprotected). Now the
/// directory is reopened in place and the records that waited for the commit are spooled
/// again; they are on disk and later records are spooled normally.
#[test]
fn item_8_daemon_spool_reopens_its_directory_after_a_failed_fsync() {
    let dir = temp_dir("item8");
    let fail = Arc::new(AtomicU32::new(0));
    let now = Instant::now();
    let mut s = shell(&dir, &fail, now);
    s.start(now);
    sent_records(&mut s, now);
    fail.store(1, Ordering::SeqCst);
    assert_eq!(s.send_spooled(report(1), now), Some(1));
    sent_records(&mut s, now); // the commit fails: the spool reopens
    assert_eq!(s.spool().stats().reopened, 1);
    let later = now + assim_probe_shell::spool::RETRY_AFTER;
    sent_records(&mut s, later);
    assert_eq!(s.send_spooled(report(2), later), Some(2), "the spool takes records again");
    sent_records(&mut s, later);
    assert_eq!(s.spool().stats().unspooled, 0, "nothing went out without the spool");
    drop(s);
    // Both reports are on disk once each, in order, under their own record numbers: the write
    // of report 1 reached the file before the fsync failed, so the reopened log holds it and
    // it is synced again rather than spooled (and delivered) twice.
    let log =
        Log::open(FileStorage::open(dir.join("spool")).unwrap(), LogConfig::default()).unwrap();
    let records: Vec<(u64, u64)> = log
        .read_from(1)
        .unwrap()
        .map(|r| {
            let (lsn, bytes) = r.unwrap();
            let Some(Body::HeartbeatReport(h)) = Message::from_bytes(&bytes).unwrap().body else {
                panic!("record {lsn} is not a report")
            };
            (lsn, h.silent_ms)
        })
        .collect();
    assert_eq!(records, [(1, 1), (2, 2)]);
    let _ = std::fs::remove_dir_all(&dir);
}
