//! The spool: everything bound for the CMA that must not be lost, in an [`assim_log::Log`] over
//! any [`Storage`] ([`assim_log::FileStorage`] in the daemon, [`assim_log::MemStorage`] in the
//! simulator and the tests).
//!
//! Rules (the promises the CMA's next-record rule relies on):
//! - a record's number is its LSN; numbers are dense, so `Ack { through }` from the CMA covers
//!   every record up to `through` and the acknowledged prefix is deleted;
//! - a record is sent only once a group commit ([`Spool::commit`]) made it durable;
//! - no record is larger than [`Spool::max_record`], which is also the reliable layer's message
//!   limit: whatever is spooled can be sent (issue 16 item 2). Oversized messages are refused
//!   at the source by the shell (see `crate::limits`);
//! - a failed fsync poisons an `assim-log` (its state on disk is unknown). The spool then
//!   reopens the directory ([`SpoolStorage::reopen`]), as the CMA's inbox does, and appends the
//!   records that were waiting for that commit again, under the numbers the reopened log hands
//!   out; they were never sent, so nobody saw the old numbers (issue 16 item 8). If the
//!   directory cannot be reopened, the spool is *unavailable*: records are sent without its
//!   protection and the reopen is retried at [`Spool::retry_at`]. A pending record the reopened
//!   log already holds (its write reached the file before the fsync failed) keeps its number
//!   and is synced again rather than spooled twice.
//! - **Incarnation** (issue 16 item 9): a spool that holds no segment (new, or lost with its
//!   directory, or reset) gets a new random *incarnation*, kept in the file `incarnation` of
//!   its directory (`{:016x}` and a newline, written to `incarnation.tmp`, synced, renamed,
//!   directory synced) before the log creates its first segment. Its record numbers start at 1
//!   again; the hello carries the incarnation, and a CMA that knew another one forgets the
//!   node's old high-water mark instead of dropping the new records as duplicates. A spool
//!   that has segments keeps its incarnation (an older spool without the file gets one, which
//!   a CMA that knew none adopts). A reopen after a failed fsync that finds the directory
//!   empty makes a new one too; the shell then says hello again before it sends anything
//!   spooled under it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use assim_log::{FileStorage, Log, LogConfig, LogError, MemStorage, Storage};
use assim_wire::msg::Message;
use tracing::{error, info, warn};

/// The spool's reader position: every record up to it was acknowledged by the CMA.
const ACKED: &str = "acked";

/// The record limit of spools written before the limits agreed (issue 16 item 2): such a
/// spool may hold records up to this size, which must still be readable so they can be sent
/// in their error form instead of making the spool unreadable.
pub const LEGACY_MAX_RECORD: usize = 4 << 20;

/// The file holding the spool's incarnation.
const INCARNATION: &str = "incarnation";
/// The incarnation file while it is being written.
const INCARNATION_TMP: &str = "incarnation.tmp";

/// How long to wait before retrying a failed commit or reopen.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A [`Storage`] the spool can open again after a failed fsync poisoned its log.
pub trait SpoolStorage: Storage + Sized {
    /// What is needed to open the storage again once the old one is dropped.
    type Reopen: fmt::Debug;
    /// Remembers how to reopen this storage.
    fn reopen_token(&self) -> Self::Reopen;
    /// Opens the storage again (the old one has been dropped, so its lock is free).
    fn reopen(token: &Self::Reopen) -> io::Result<Self>;
}

impl SpoolStorage for FileStorage {
    type Reopen = PathBuf;
    fn reopen_token(&self) -> PathBuf {
        self.dir().to_path_buf()
    }
    fn reopen(dir: &PathBuf) -> io::Result<FileStorage> {
        FileStorage::open(dir.clone())
    }
}

impl SpoolStorage for MemStorage {
    type Reopen = MemStorage;
    fn reopen_token(&self) -> MemStorage {
        self.clone()
    }
    fn reopen(s: &MemStorage) -> io::Result<MemStorage> {
        Ok(s.clone())
    }
}

/// Counters of the spool, exported in the nanoprobe's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended (a record appended again after a reopen counts once more).
    pub spooled: u64,
    /// The highest record the CMA acknowledged.
    pub acked_through: u64,
    /// Records sent again (restart, CMA restart, idle resend).
    pub resent: u64,
    /// Records dropped because the spool was full: always 0 since the backlog (issue 16 item
    /// 10) keeps the latest peer status and statistics instead; kept for the metrics file.
    pub dropped: u64,
    /// Records sent without the spool (full, or unavailable).
    pub unspooled: u64,
    /// Failed syncs, removals and position writes.
    pub errors: u64,
    /// Times the spool was reopened after a failed sync.
    pub reopened: u64,
    /// Messages the spool could not take that were kept in memory instead (issue 16 item 10).
    pub backlogged: u64,
    /// Backlogged messages replaced by a newer word on the same subject (a peer's status, a
    /// check's state, a heartbeat report on the same peer) before the spool took them.
    pub coalesced: u64,
    /// Messages refused at the source because the spool and the backlog were full (local
    /// events: the submitter gets the error).
    pub refused: u64,
}

/// Why [`Spool::append`] did not take a record.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The spool is full (or the disk is).
    Full(LogError),
    /// Any other failure, or the spool is unavailable.
    Failed(String),
}

/// The spool. See the module doc.
#[derive(Debug)]
pub struct Spool<S: SpoolStorage> {
    log: Option<Log<S>>,
    token: S::Reopen,
    config: LogConfig,
    /// The largest record appended (the log reads up to [`LEGACY_MAX_RECORD`]).
    max_record: usize,
    /// Records appended since the last commit: (record, encoded message).
    unsent: Vec<(u64, Vec<u8>)>,
    retry_at: Option<Instant>,
    /// The incarnation (see the module doc).
    incarnation: u64,
    /// Draws the next new incarnation (splitmix64 state).
    rng: u64,
    pub(crate) stats: SpoolStats,
}

impl<S: SpoolStorage> Spool<S> {
    /// Opens the spool in `storage`; `max_record` is the largest encoded message it takes.
    /// Records up to [`LEGACY_MAX_RECORD`] written by older versions are still read (and sent
    /// in their error form, see `crate::limits`).
    /// A spool without segments gets a new incarnation drawn from the operating system's
    /// randomness ([`Spool::open_seeded`] takes a seed instead).
    pub fn open(storage: S, max_bytes: u64, max_record: usize) -> Result<Spool<S>, LogError> {
        Spool::open_seeded(storage, max_bytes, max_record, os_random())
    }

    /// [`Spool::open`] with the seed new incarnations are drawn from (the simulator's): give
    /// every spool a different one, or two spools of one node may draw the same incarnation.
    pub fn open_seeded(
        mut storage: S,
        max_bytes: u64,
        max_record: usize,
        seed: u64,
    ) -> Result<Spool<S>, LogError> {
        let mut rng = seed;
        let incarnation = load_incarnation(&mut storage, &mut rng)?;
        let config = LogConfig {
            max_disk_bytes: Some(max_bytes),
            segment_size: (max_bytes / 8).clamp(64 * 1024, 16 * 1024 * 1024),
            max_record_size: max_record.max(LEGACY_MAX_RECORD),
            ..LogConfig::default()
        };
        let token = storage.reopen_token();
        let log = Log::open(storage, config.clone())?;
        if let Some(r) = log.last_recovery() {
            warn!(segment = %r.segment, truncated_bytes = r.truncated_bytes, "spool recovered from a torn tail: {}", r.detail);
        }
        let acked = log.position(ACKED).unwrap_or(0);
        Ok(Spool {
            log: Some(log),
            token,
            config,
            max_record,
            unsent: Vec::new(),
            retry_at: None,
            incarnation,
            rng,
            stats: SpoolStats { acked_through: acked, ..SpoolStats::default() },
        })
    }

    /// The spool's incarnation (never 0; see the module doc).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The largest encoded message the spool takes.
    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// Counters.
    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    /// Durable records not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.durable_lsn().saturating_sub(self.stats.acked_through))
    }

    /// Records appended and not yet durable (waiting for [`Spool::commit`]).
    pub fn uncommitted(&self) -> usize {
        self.unsent.len()
    }

    /// Bytes the spool uses.
    pub fn disk_bytes(&self) -> u64 {
        self.log.as_ref().map_or(0, Log::disk_bytes)
    }

    /// The number the next record gets.
    pub fn next_record(&self) -> u64 {
        self.log.as_ref().map_or(0, Log::next_lsn)
    }

    /// The log, for tests and metrics (`None` while the spool is unavailable).
    pub fn log(&self) -> Option<&Log<S>> {
        self.log.as_ref()
    }

    /// When a failed commit or reopen is retried.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Appends `message` with the next record number; returns (record, encoded bytes). The
    /// record is sent after the next successful [`Spool::commit`].
    pub(crate) fn append(&mut self, mut message: Message) -> Result<u64, Refused> {
        let Some(log) = self.log.as_mut() else {
            return Err(Refused::Failed("the spool is unavailable".into()));
        };
        let record = log.next_lsn();
        message.record = record;
        let bytes = message.to_bytes();
        match log.append(&bytes) {
            Ok(lsn) => {
                debug_assert_eq!(lsn, record);
                self.stats.spooled += 1;
                self.unsent.push((lsn, bytes));
                Ok(lsn)
            }
            Err(e @ (LogError::Full { .. } | LogError::DiskFull { .. })) => Err(Refused::Full(e)),
            Err(e) => Err(Refused::Failed(e.to_string())),
        }
    }

    /// Group commit: one fsync for everything appended since the last call. Returns the
    /// records now durable, to send (empty when there were none or the sync failed).
    pub(crate) fn commit(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if self.log.is_none() {
            self.try_reopen(now);
        }
        if self.unsent.is_empty() {
            return Vec::new();
        }
        let Some(log) = self.log.as_mut() else { return Vec::new() };
        if let Err(e) = log.sync() {
            self.stats.errors += 1;
            error!(error = %e, pending = self.unsent.len(), "cannot make the spool durable; reopening it and spooling the pending records again");
            self.reopen(now);
            return Vec::new();
        }
        self.retry_at = None;
        std::mem::take(&mut self.unsent).into_iter().map(|(_, b)| b).collect()
    }

    /// Drops the poisoned log, opens the directory again and re-appends the records that were
    /// waiting for the failed commit.
    fn reopen(&mut self, now: Instant) {
        self.log = None;
        self.retry_at = Some(now + RETRY_AFTER);
        self.try_reopen(now);
    }

    fn try_reopen(&mut self, now: Instant) {
        let mut rng = self.rng;
        let opened = S::reopen(&self.token).map_err(|e| e.to_string()).and_then(|mut s| {
            let incarnation = load_incarnation(&mut s, &mut rng).map_err(|e| e.to_string())?;
            let log = Log::open(s, self.config.clone()).map_err(|e| e.to_string())?;
            Ok((incarnation, log))
        });
        self.rng = rng;
        let (incarnation, log) = match opened {
            Ok(l) => l,
            Err(e) => {
                self.retry_at = Some(now + RETRY_AFTER);
                error!(error = %e, "cannot reopen the spool; records are sent without its protection until it opens");
                return;
            }
        };
        self.stats.reopened += 1;
        if incarnation == self.incarnation {
            self.stats.acked_through =
                self.stats.acked_through.max(log.position(ACKED).unwrap_or(0));
        } else {
            // The directory was lost: numbers start again under a new incarnation, and the
            // old acknowledged position means nothing for them.
            warn!(
                old = format_args!("{:016x}", self.incarnation),
                new = format_args!("{incarnation:016x}"),
                "the spool directory was lost; a new spool incarnation starts at record 1"
            );
            self.incarnation = incarnation;
            self.stats.acked_through = log.position(ACKED).unwrap_or(0);
        }
        info!(next = log.next_lsn(), pending = self.unsent.len(), "spool reopened");
        // On a real disk the writes usually reached the files before the fsync failed: the
        // reopened log finds those records under their own numbers. They keep them (the next
        // commit syncs them again) instead of being spooled a second time, which would deliver
        // them twice; the others are appended again.
        let pending = std::mem::take(&mut self.unsent);
        let (kept, again): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(lsn, bytes)| {
            *lsn < log.next_lsn() && read_one(&log, *lsn).as_deref() == Some(bytes.as_slice())
        });
        self.unsent = kept;
        self.log = Some(log);
        for (_, bytes) in again {
            let Ok(m) = Message::from_bytes(&bytes) else { continue };
            if let Err(e) = self.append(m) {
                // Counted by the caller's policy normally; here the record was already taken.
                self.stats.errors += 1;
                error!(error = ?e, "cannot spool a record again after the reopen; it is lost");
            }
        }
        // Commit them on the next turn.
        self.retry_at = (!self.unsent.is_empty()).then_some(now);
    }

    /// Every durable record past the acknowledged position, in order.
    pub(crate) fn unacked_records(&self) -> Vec<Vec<u8>> {
        let Some(log) = self.log.as_ref() else { return Vec::new() };
        let from = (self.stats.acked_through + 1).max(log.first_lsn());
        match log.read_from(from) {
            Ok(reader) => reader.filter_map(|r| r.ok().map(|(_, bytes)| bytes)).collect(),
            Err(e) => {
                error!(error = %e, "cannot read the spool");
                Vec::new()
            }
        }
    }

    /// The CMA holds every record up to `through`: delete them. Returns whether the
    /// acknowledged position moved.
    pub(crate) fn ack(&mut self, through: u64, now: Instant) -> bool {
        let Some(log) = self.log.as_mut() else { return false };
        let through = through.min(log.durable_lsn());
        if through <= self.stats.acked_through {
            return false;
        }
        self.stats.acked_through = through;
        if let Err(e) = log.set_position(ACKED, through) {
            self.stats.errors += 1;
            error!(error = %e, "cannot record the acknowledged spool position");
        }
        if let Err(e) = log.remove_through(through) {
            self.stats.errors += 1;
            error!(error = %e, "cannot delete acknowledged spool records");
        }
        // Persist the position with the next group commit (or now, if idle).
        if self.unsent.is_empty()
            && let Err(e) = log.sync()
        {
            self.stats.errors += 1;
            error!(error = %e, "cannot make the spool position durable; reopening the spool");
            self.reopen(now);
        }
        true
    }
}

/// The spool's incarnation in `storage`: the stored one while the spool has segments, else a
/// new one, made durable before the log creates its first segment (see the module doc).
fn load_incarnation<S: Storage>(storage: &mut S, rng: &mut u64) -> Result<u64, LogError> {
    let io = |storage: &S, name: &str, op: &'static str| {
        let file = storage.describe(name);
        move |source| LogError::Io { file, op, source }
    };
    let names = storage.list().map_err(io(storage, "", "listing"))?;
    let has_segments = names.iter().any(|n| n.ends_with(".seg"));
    if has_segments && names.iter().any(|n| n == INCARNATION) {
        let bytes = storage.read_all(INCARNATION).map_err(io(storage, INCARNATION, "reading"))?;
        match parse_incarnation(&bytes) {
            Some(i) => return Ok(i),
            None => warn!(
                file = %storage.describe(INCARNATION),
                "the spool's incarnation file is damaged; making a new one (the CMA will take the spool's records from 1 again)"
            ),
        }
    }
    let incarnation = loop {
        let i = splitmix64(rng);
        if i != 0 {
            break i;
        }
    };
    let text = format!("{incarnation:016x}\n");
    storage.write_file(INCARNATION_TMP, text.as_bytes()).map_err(io(
        storage,
        INCARNATION_TMP,
        "writing",
    ))?;
    storage.sync(INCARNATION_TMP).map_err(io(storage, INCARNATION_TMP, "syncing"))?;
    storage.rename(INCARNATION_TMP, INCARNATION).map_err(io(
        storage,
        INCARNATION,
        "renaming over",
    ))?;
    storage.sync_dir().map_err(io(storage, "", "syncing the directory of"))?;
    if has_segments {
        info!(
            incarnation = format_args!("{incarnation:016x}"),
            "the spool had no incarnation; made one"
        );
    } else {
        info!(incarnation = format_args!("{incarnation:016x}"), "new spool");
    }
    Ok(incarnation)
}

fn parse_incarnation(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?.trim_end_matches('\n');
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok().filter(|&i| i != 0)
}

/// splitmix64: the next number of the sequence in `state`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random seed from the operating system (std's hash keys come from it).
fn os_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// The record `lsn` of `log`, if it is there.
fn read_one<S: Storage>(log: &Log<S>, lsn: u64) -> Option<Vec<u8>> {
    let (found, bytes) = log.read_from(lsn).ok()?.next()?.ok()?;
    (found == lsn).then_some(bytes)
}
