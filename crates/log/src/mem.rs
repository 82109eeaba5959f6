//! [`MemStorage`]: an in-memory [`Storage`] that injects faults and simulates crashes, for
//! tests of this crate and of its users (the nanoprobe spool, the CMA inbox).
//!
//! It models what a POSIX filesystem promises and no more:
//! - each file has a *current* content (what reads return: the page cache) and a *durable*
//!   content (what survives a crash: the disk), updated by a successful [`Storage::sync`];
//! - names (create, remove, rename, and the creation of a file by `write_file`) are pending
//!   until [`Storage::sync_dir`]; a crash keeps a random prefix of the pending name operations,
//!   in order (as a metadata journal does), or none of them;
//! - [`MemStorage::crash`] drops everything not made durable, optionally keeping a random prefix
//!   of each file's unsynced appended bytes (a torn tail);
//! - a failed `sync` behaves like Linux after an `fsync` error ("fsyncgate"): the unsynced pages
//!   are marked clean without reaching the disk, so a later `sync` succeeds but those bytes read
//!   as zeros after a crash — unless the file is first truncated below them.
//!
//! Faults: short writes ([`MemStorage::set_short_writes`]), a capacity after which writes fail
//! with `ENOSPC` ([`MemStorage::set_capacity`]), and failing file or directory syncs
//! ([`MemStorage::fail_next_syncs`], [`MemStorage::fail_next_dir_syncs`]). All randomness comes
//! from the seed given to [`MemStorage::new`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::Storage;

/// Fault-injecting in-memory storage. Clones share the same files, so a test keeps one clone
/// to inject faults and crash while the log owns another.
#[derive(Debug, Clone)]
pub struct MemStorage {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Debug)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What a crash leaves.
    durable: Vec<u8>,
    /// After a failed sync: byte range whose pages were dropped as clean without being written.
    lost: Option<(usize, usize)>,
    /// Length of the prefix that `data` and `durable` are known to share, so that a sync copies
    /// only what changed since the last one (an inbox syncs its active segment every turn).
    synced: usize,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename(String, String),
}

fn apply(dir: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Link(name, ino) => {
            dir.insert(name.clone(), *ino);
        }
        DirOp::Unlink(name) => {
            dir.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = dir.remove(from) {
                dir.insert(to.clone(), ino);
            }
        }
    }
}

#[derive(Debug)]
struct MemState {
    inodes: HashMap<u64, Inode>,
    dir: BTreeMap<String, u64>,
    durable_dir: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
    next_ino: u64,
    rng: u64,
    short_writes: bool,
    capacity: Option<u64>,
    fail_syncs: u32,
    fail_dir_syncs: u32,
    syncs: u64,
}

impl MemState {
    /// splitmix64.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=n`.
    fn upto(&mut self, n: usize) -> usize {
        (self.next_u64() % (n as u64 + 1)) as usize
    }

    fn ino(&self, name: &str) -> io::Result<u64> {
        self.dir.get(name).copied().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("mem: no file named {name}"))
        })
    }

    fn used(&self) -> u64 {
        self.dir.values().map(|ino| self.inodes[ino].data.len() as u64).sum()
    }

    fn space(&self) -> u64 {
        self.capacity.map_or(u64::MAX, |c| c.saturating_sub(self.used()))
    }

    fn gc(&mut self) {
        let (dir, durable) = (&self.dir, &self.durable_dir);
        self.inodes
            .retain(|ino, _| dir.values().any(|i| i == ino) || durable.values().any(|i| i == ino));
    }

    fn new_inode(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes
            .insert(ino, Inode { data: Vec::new(), durable: Vec::new(), lost: None, synced: 0 });
        ino
    }
}

fn no_space() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "mem: no space left on device (injected)")
}

impl MemStorage {
    /// Empty storage whose random choices (short write lengths, torn tails) follow `seed`.
    pub fn new(seed: u64) -> Self {
        MemStorage {
            inner: Arc::new(Mutex::new(MemState {
                inodes: HashMap::new(),
                dir: BTreeMap::new(),
                durable_dir: BTreeMap::new(),
                pending: Vec::new(),
                next_ino: 1,
                rng: seed,
                short_writes: false,
                capacity: None,
                fail_syncs: 0,
                fail_dir_syncs: 0,
                syncs: 0,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When on, every append writes a random non-empty prefix of what it was given.
    pub fn set_short_writes(&self, on: bool) {
        self.state().short_writes = on;
    }

    /// Total bytes all files may hold; writes beyond it are cut short, then fail with
    /// `ENOSPC` ([`io::ErrorKind::StorageFull`]). `None`: unlimited.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.state().capacity = capacity;
    }

    /// The next `n` file syncs fail with `EIO` (with Linux's page-dropping semantics).
    pub fn fail_next_syncs(&self, n: u32) {
        self.state().fail_syncs = n;
    }

    /// The next `n` directory syncs fail with `EIO`; the pending name operations stay pending.
    pub fn fail_next_dir_syncs(&self, n: u32) {
        self.state().fail_dir_syncs = n;
    }

    /// Turns every injected fault off.
    pub fn clear_faults(&self) {
        let mut s = self.state();
        s.short_writes = false;
        s.capacity = None;
        s.fail_syncs = 0;
        s.fail_dir_syncs = 0;
    }

    /// Simulates a power loss: every file and name reverts to its durable state. With `torn`,
    /// a random prefix of each file's unsynced appended bytes and of the pending name
    /// operations survives, as happens when the kernel wrote some of them back on its own.
    pub fn crash(&self, torn: bool) {
        let mut guard = self.state();
        let s = &mut *guard;
        let keep_ops = if torn { s.upto(s.pending.len()) } else { 0 };
        let mut dir = s.durable_dir.clone();
        for op in &s.pending[..keep_ops] {
            apply(&mut dir, op);
        }
        s.pending.clear();
        s.dir = dir.clone();
        s.durable_dir = dir;
        s.gc();
        let mut inos: Vec<u64> = s.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let coin = s.next_u64();
            let inode = &s.inodes[&ino];
            let (dl, cl) = (inode.durable.len(), inode.data.len());
            let new = if cl > dl && inode.data.starts_with(&inode.durable) && inode.lost.is_none() {
                let keep = if torn { (coin % (cl - dl + 1) as u64) as usize } else { 0 };
                inode.data[..dl + keep].to_vec()
            } else if cl < dl
                && inode.durable.starts_with(&inode.data)
                && torn
                && coin.is_multiple_of(2)
            {
                inode.data.clone() // the truncation reached the disk
            } else {
                inode.durable.clone()
            };
            let inode = s.inodes.get_mut(&ino).expect("listed above");
            inode.synced = new.len();
            inode.data = new.clone();
            inode.durable = new;
            inode.lost = None;
        }
    }

    /// Bytes held by all files (current content).
    pub fn used_bytes(&self) -> u64 {
        self.state().used()
    }

    /// Sorted names of all files.
    pub fn file_names(&self) -> Vec<String> {
        self.state().dir.keys().cloned().collect()
    }

    /// Successful file syncs so far.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// XORs `mask` into the byte at `offset` of `name`, on disk and in the cache (bit rot).
    pub fn corrupt(&self, name: &str, offset: usize, mask: u8) -> io::Result<()> {
        let mut s = self.state();
        let ino = s.ino(name)?;
        let inode = s.inodes.get_mut(&ino).expect("dir entry points to an inode");
        for buf in [&mut inode.data, &mut inode.durable] {
            if let Some(b) = buf.get_mut(offset) {
                *b ^= mask;
            }
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn describe(&self, name: &str) -> String {
        format!("mem:{name}")
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.file_names())
    }

    fn create(&mut self, name: &str) -> io::Result<()> {
        let mut s = self.state();
        if s.dir.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("mem: {name} exists"),
            ));
        }
        let ino = s.new_inode();
        s.dir.insert(name.to_owned(), ino);
        s.pending.push(DirOp::Link(name.to_owned(), ino));
        Ok(())
    }

    fn append(&mut self, name: &str, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.state();
        let ino = s.ino(name)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let space = s.space();
        if space == 0 {
            return Err(no_space());
        }
        let mut n = buf.len().min(usize::try_from(space).unwrap_or(usize::MAX));
        if s.short_writes && n > 1 {
            n = 1 + s.upto(n - 1);
        }
        s.inodes
            .get_mut(&ino)
            .expect("dir entry points to an inode")
            .data
            .extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_file(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut s = self.state();
        let ino = match s.dir.get(name) {
            Some(&ino) => ino,
            None => {
                let ino = s.new_inode();
                s.dir.insert(name.to_owned(), ino);
                s.pending.push(DirOp::Link(name.to_owned(), ino));
                ino
            }
        };
        let inode = s.inodes.get_mut(&ino).expect("just looked up");
        inode.data.clear();
        inode.synced = 0;
        let space = usize::try_from(s.space()).unwrap_or(usize::MAX);
        let n = data.len().min(space);
        s.inodes.get_mut(&ino).expect("just looked up").data.extend_from_slice(&data[..n]);
        if n < data.len() { Err(no_space()) } else { Ok(()) }
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.state();
        let data = &s.inodes[&s.ino(name)?].data;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn file_len(&self, name: &str) -> io::Result<u64> {
        let s = self.state();
        Ok(s.inodes[&s.ino(name)?].data.len() as u64)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut s = self.state();
        let ino = s.ino(name)?;
        if s.fail_syncs > 0 {
            s.fail_syncs -= 1;
            let inode = s.inodes.get_mut(&ino).expect("dir entry points to an inode");
            let from = inode.lost.map_or(inode.durable.len(), |(a, _)| a).min(inode.durable.len());
            inode.lost = Some((from, inode.data.len()));
            return Err(io::Error::other("mem: fsync failed: input/output error (injected)"));
        }
        s.syncs += 1;
        let inode = s.inodes.get_mut(&ino).expect("dir entry points to an inode");
        let same = inode.synced.min(inode.data.len()).min(inode.durable.len());
        inode.durable.truncate(same);
        inode.durable.extend_from_slice(&inode.data[same..]);
        inode.synced = inode.data.len();
        if let Some((a, b)) = inode.lost.take() {
            let b = b.min(inode.durable.len());
            if a < b {
                inode.durable[a..b].fill(0);
                inode.synced = a;
            }
        }
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut s = self.state();
        let ino = s.ino(name)?;
        let inode = s.inodes.get_mut(&ino).expect("dir entry points to an inode");
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if len > inode.data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "mem: truncate cannot extend"));
        }
        inode.data.truncate(len);
        inode.synced = inode.synced.min(len);
        if let Some((a, b)) = inode.lost {
            inode.lost = if a >= len { None } else { Some((a, b.min(len))) };
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut s = self.state();
        s.ino(name)?;
        s.dir.remove(name);
        s.pending.push(DirOp::Unlink(name.to_owned()));
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.state();
        let ino = s.ino(from)?;
        s.dir.remove(from);
        s.dir.insert(to.to_owned(), ino);
        s.pending.push(DirOp::Rename(from.to_owned(), to.to_owned()));
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut s = self.state();
        if s.fail_dir_syncs > 0 {
            s.fail_dir_syncs -= 1;
            return Err(io::Error::other("mem: directory fsync failed (injected)"));
        }
        s.durable_dir = s.dir.clone();
        s.pending.clear();
        s.gc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_data_and_names() {
        let mut m = MemStorage::new(1);
        m.create("a").unwrap();
        m.append("a", b"hello").unwrap();
        m.sync("a").unwrap();
        m.sync_dir().unwrap();
        m.append("a", b" world").unwrap();
        m.create("b").unwrap();
        m.crash(false);
        assert_eq!(m.file_names(), ["a"]);
        assert_eq!(m.read_all("a").unwrap(), b"hello");
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_unsynced_bytes() {
        for seed in 0..50 {
            let mut m = MemStorage::new(seed);
            m.create("a").unwrap();
            m.sync_dir().unwrap();
            m.append("a", b"abc").unwrap();
            m.sync("a").unwrap();
            m.append("a", b"defgh").unwrap();
            m.crash(true);
            let got = m.read_all("a").unwrap();
            assert!(b"abcdefgh".starts_with(&got) && got.len() >= 3, "{got:?}");
        }
    }

    #[test]
    fn failed_sync_drops_pages_even_if_a_later_sync_succeeds() {
        let mut m = MemStorage::new(1);
        m.create("a").unwrap();
        m.sync_dir().unwrap();
        m.append("a", b"abc").unwrap();
        m.fail_next_syncs(1);
        assert!(m.sync("a").is_err());
        m.append("a", b"d").unwrap();
        m.sync("a").unwrap();
        assert_eq!(m.read_all("a").unwrap(), b"abcd"); // the cache still has them
        m.crash(false);
        assert_eq!(m.read_all("a").unwrap(), b"\0\0\0d"); // the disk does not
    }

    #[test]
    fn a_sync_after_truncate_and_rewrite_makes_the_new_bytes_durable() {
        let mut m = MemStorage::new(1);
        m.create("a").unwrap();
        m.sync_dir().unwrap();
        m.append("a", b"abcdef").unwrap();
        m.sync("a").unwrap();
        m.truncate("a", 2).unwrap();
        m.append("a", b"XY").unwrap();
        m.sync("a").unwrap();
        m.write_file("a", b"q").unwrap();
        m.append("a", b"rs").unwrap();
        m.sync("a").unwrap();
        m.append("a", b"tu").unwrap();
        m.sync("a").unwrap();
        m.crash(false);
        assert_eq!(m.read_all("a").unwrap(), b"qrstu");
    }

    #[test]
    fn capacity_gives_short_write_then_enospc() {
        let mut m = MemStorage::new(1);
        m.create("a").unwrap();
        m.set_capacity(Some(4));
        assert_eq!(m.append("a", b"abcdef").unwrap(), 4);
        let e = m.append("a", b"ef").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }
}
