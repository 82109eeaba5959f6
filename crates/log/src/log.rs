//! [`Log`]: appends, group commit, rollover, removal, reader positions and recovery on open.
//! The rules it implements are in the crate documentation.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use tracing::{debug, error, warn};

use crate::error::LogError;
use crate::format::{
    Frame, MAX_POSITION_NAME, POSITIONS_FILE, POSITIONS_TMP, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
    check_segment_header, decode_positions, encode_positions, encode_record, encode_segment_header,
    parse_record, parse_segment_name, segment_name,
};
use crate::storage::Storage;

/// Bytes of records between two entries of a segment's sparse LSN → offset index.
const INDEX_STRIDE: u64 = 64 * 1024;
/// Bytes read at a time when scanning a segment.
const CHUNK: u64 = 64 * 1024;

/// Tuning of a [`Log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is closed and a new one started when the next record would take it past this
    /// many bytes (a segment holding a single larger record may exceed it). Default 16 MiB.
    pub segment_size: u64,
    /// Largest payload accepted by [`Log::append`] and believed when read back. At most
    /// `u32::MAX`. Default 4 MiB.
    pub max_record_size: usize,
    /// Limit on [`Log::disk_bytes`]: [`Log::append`] fails with [`LogError::Full`] rather than
    /// exceed it. Should be at least twice `segment_size`, so that removing consumed records can
    /// always make room. [`Log::remove_through`] replacing a consumed active segment creates the
    /// new one before deleting the old, so a crash between the two can leave the log one segment
    /// header (16 bytes) over the limit until the next removal. Default: none.
    pub max_disk_bytes: Option<u64>,
    /// [`Log::append`] buffers records in memory and writes them out (without fsync) when the
    /// next one would take the buffer past this many bytes; [`Log::sync`] writes the rest.
    /// Default 256 KiB.
    pub write_buffer_size: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size: 16 << 20,
            max_record_size: 4 << 20,
            max_disk_bytes: None,
            write_buffer_size: 256 << 10,
        }
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), LogError> {
        let bad = |detail: String| Err(LogError::InvalidConfig { detail });
        if self.segment_size < SEGMENT_HEADER_LEN + RECORD_HEADER_LEN {
            return bad(format!("segment_size {} is below 24 bytes", self.segment_size));
        }
        if u32::try_from(self.max_record_size).is_err() {
            return bad(format!("max_record_size {} exceeds u32::MAX", self.max_record_size));
        }
        if let Some(limit) = self.max_disk_bytes
            && limit < 2 * SEGMENT_HEADER_LEN + RECORD_HEADER_LEN
        {
            return bad(format!("max_disk_bytes {limit} is too small to hold any record"));
        }
        Ok(())
    }
}

/// What recovery on open cut off the end of the last segment: the torn tail of writes that
/// were never reported durable (see the crate documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The segment that was repaired, as [`Storage::describe`] names it.
    pub segment: String,
    /// Where the tail was cut (the segment's new length).
    pub offset: u64,
    /// Bytes removed.
    pub truncated_bytes: u64,
    /// Records lost with them, estimated from the average record size of the segment (at least
    /// 1 when anything of a record was removed; 0 for a torn segment header).
    pub dropped_records_estimate: u64,
    /// What was found at `offset`.
    pub detail: String,
}

#[derive(Debug)]
struct Segment {
    first_lsn: u64,
    name: String,
    /// Bytes in the file, plus, for the active (last) segment, bytes still buffered.
    len: u64,
    /// Sparse, ascending `(lsn, offset)` record index; empty when the segment was not scanned.
    index: Vec<(u64, u64)>,
}

/// A durable append-only record log in one directory. See the crate documentation.
pub struct Log<S: Storage> {
    storage: S,
    config: LogConfig,
    /// Ascending by first LSN; never empty; the last one is the active segment.
    segments: Vec<Segment>,
    /// Records appended to the active segment but not yet written to it.
    buf: Vec<u8>,
    /// Bytes written to the active segment file.
    written: u64,
    /// Bytes of the active segment file covered by a successful sync.
    synced: u64,
    next_lsn: u64,
    durable_lsn: u64,
    /// Lowest LSN readable (raised by `remove_through`).
    first_lsn: u64,
    disk_bytes: u64,
    positions: BTreeMap<String, u64>,
    positions_dirty: bool,
    /// Message of the failure that poisoned the log.
    poisoned: Option<String>,
    recovery: Option<Recovery>,
}

impl<S: Storage> fmt::Debug for Log<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("storage", &self.storage)
            .field("segments", &self.segments.len())
            .field("first_lsn", &self.first_lsn)
            .field("durable_lsn", &self.durable_lsn)
            .field("next_lsn", &self.next_lsn)
            .field("disk_bytes", &self.disk_bytes)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

fn io_error(file: String, op: &'static str, source: io::Error) -> LogError {
    if is_disk_full(&source) {
        LogError::DiskFull { file, op, source }
    } else {
        LogError::Io { file, op, source }
    }
}

/// Writes all of `data` at the end of `name`; on failure returns how much was written.
fn append_all<S: Storage>(
    storage: &mut S,
    name: &str,
    data: &[u8],
) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < data.len() {
        match storage.append(name, &data[done..]) {
            Ok(0) => return Err((done, io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// A window onto one file, read `CHUNK` bytes at a time.
#[derive(Debug, Default)]
struct Chunk {
    start: u64,
    data: Vec<u8>,
}

impl Chunk {
    /// Bytes from `offset` on, holding at least `offset..min(end, file_len)`.
    fn load<S: Storage>(
        &mut self,
        storage: &S,
        name: &str,
        file_len: u64,
        offset: u64,
        end: u64,
    ) -> io::Result<&[u8]> {
        let end = end.min(file_len).max(offset);
        let have = self.start + self.data.len() as u64;
        if offset < self.start || end > have {
            let want = (end - offset).max(CHUNK).min(file_len.saturating_sub(offset));
            let want = usize::try_from(want).map_err(io::Error::other)?;
            self.data.resize(want, 0);
            self.start = offset;
            let mut done = 0;
            while done < want {
                match storage.read_at(name, offset + done as u64, &mut self.data[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.data.clear();
                        return Err(e);
                    }
                }
            }
            self.data.truncate(done);
        }
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX).min(self.data.len());
        Ok(&self.data[from..])
    }

    /// The record frame at `offset`; `Incomplete` only when the file ends inside it.
    fn frame<S: Storage>(
        &mut self,
        storage: &S,
        name: &str,
        file_len: u64,
        offset: u64,
        max: usize,
    ) -> io::Result<Frame> {
        let f = parse_record(self.load(storage, name, file_len, offset, offset + 8)?, max);
        match f {
            Frame::Incomplete { total: Some(t) } if offset + t <= file_len => {
                Ok(parse_record(self.load(storage, name, file_len, offset, offset + t)?, max))
            }
            f => Ok(f),
        }
    }

    fn payload(&self, offset: u64, len: usize) -> &[u8] {
        let at = (offset - self.start) as usize + RECORD_HEADER_LEN as usize;
        &self.data[at..at + len]
    }
}

impl<S: Storage> Log<S> {
    /// Opens the log kept in `storage`, creating an empty one if it holds no segment.
    ///
    /// Recovery: checks every segment header, scans the last segment, cuts a torn tail off it
    /// (reported by [`Log::last_recovery`]) and syncs it, so that everything it holds is
    /// durable. Fails with [`LogError::Corrupt`] on damage that a crash cannot explain, without
    /// changing anything.
    pub fn open(mut storage: S, config: LogConfig) -> Result<Self, LogError> {
        config.validate()?;
        let names = storage.list().map_err(|e| io_error(storage.describe(""), "listing", e))?;
        let mut firsts = Vec::new();
        for name in &names {
            if name == POSITIONS_TMP {
                // An interrupted positions update; the previous file is intact.
                storage
                    .remove(name)
                    .map_err(|e| io_error(storage.describe(name), "removing", e))?;
            } else if let Some(lsn) = parse_segment_name(name) {
                if lsn == 0 {
                    return Err(LogError::Corrupt {
                        segment: storage.describe(name),
                        offset: 0,
                        detail: "segment named for LSN 0, but LSNs start at 1".into(),
                    });
                }
                firsts.push(lsn);
            }
        }
        firsts.sort_unstable();
        let mut log = Log {
            storage,
            config,
            segments: Vec::new(),
            buf: Vec::new(),
            written: 0,
            synced: 0,
            next_lsn: 1,
            durable_lsn: 0,
            first_lsn: 1,
            disk_bytes: 0,
            positions: BTreeMap::new(),
            positions_dirty: false,
            poisoned: None,
            recovery: None,
        };
        if firsts.is_empty() {
            log.create_segment(1)?;
        } else {
            for (i, &first) in firsts.iter().enumerate() {
                let name = segment_name(first);
                let len = log.storage.file_len(&name).map_err(|e| {
                    io_error(log.storage.describe(&name), "reading the length of", e)
                })?;
                if i + 1 < firsts.len() {
                    log.check_header(&name, first, len)?;
                }
                log.segments.push(Segment { first_lsn: first, name, len, index: Vec::new() });
            }
            log.recover_last()?;
        }
        // Names created or removed before a crash of this process (not of the machine) may be
        // visible yet not durable: make them durable before relying on them.
        log.storage.sync_dir().map_err(|source| LogError::SyncFailed {
            file: log.storage.describe(""),
            op: "syncing the directory during recovery",
            durable_lsn: log.next_lsn - 1,
            source,
        })?;
        log.first_lsn = log.segments[0].first_lsn;
        log.disk_bytes = log.segments.iter().map(|s| s.len).sum();
        log.load_positions()?;
        debug!(
            dir = %log.storage.describe(""),
            segments = log.segments.len(),
            first_lsn = log.first_lsn,
            next_lsn = log.next_lsn,
            "log opened"
        );
        Ok(log)
    }

    fn check_header(&self, name: &str, first: u64, len: u64) -> Result<(), LogError> {
        let mut chunk = Chunk::default();
        let head = chunk
            .load(&self.storage, name, len, 0, SEGMENT_HEADER_LEN)
            .map_err(|e| io_error(self.storage.describe(name), "reading", e))?;
        check_segment_header(head, first).map_err(|detail| LogError::Corrupt {
            segment: self.storage.describe(name),
            offset: 0,
            detail,
        })
    }

    /// Scans the last segment, cuts off a torn tail, syncs it and sets the append state.
    fn recover_last(&mut self) -> Result<(), LogError> {
        let i = self.segments.len() - 1;
        let (name, first) = (self.segments[i].name.clone(), self.segments[i].first_lsn);
        let file = self.storage.describe(&name);
        let file_len = self.segments[i].len;
        let max = self.config.max_record_size;
        let mut index = vec![(first, SEGMENT_HEADER_LEN)];
        let mut offset = SEGMENT_HEADER_LEN;
        let mut lsn = first;
        if file_len < SEGMENT_HEADER_LEN {
            // The segment's creation was interrupted: its header is synced before any record
            // is written to it, so it holds nothing. Write the header again.
            self.storage.truncate(&name, 0).map_err(|e| io_error(file.clone(), "truncating", e))?;
            append_all(&mut self.storage, &name, &encode_segment_header(first))
                .map_err(|(_, e)| io_error(file.clone(), "writing the header of", e))?;
            self.recovery = Some(Recovery {
                segment: file.clone(),
                offset: 0,
                truncated_bytes: file_len,
                dropped_records_estimate: 0,
                detail: format!("incomplete segment header ({file_len} of 16 bytes)"),
            });
        } else {
            self.check_header(&name, first, file_len)?;
            let mut chunk = Chunk::default();
            let mut bad = None;
            while offset < file_len {
                let frame = chunk
                    .frame(&self.storage, &name, file_len, offset, max)
                    .map_err(|e| io_error(file.clone(), "reading", e))?;
                match frame {
                    Frame::Valid { payload_len } => {
                        if offset - index.last().map_or(0, |e| e.1) >= INDEX_STRIDE {
                            index.push((lsn, offset));
                        }
                        offset += RECORD_HEADER_LEN + payload_len as u64;
                        lsn += 1;
                    }
                    Frame::Incomplete { total: None } => {
                        bad = Some(format!(
                            "incomplete record header ({} of 8 bytes)",
                            file_len - offset
                        ));
                        break;
                    }
                    Frame::Incomplete { total: Some(t) } => {
                        bad =
                            Some(format!("record cut short ({} of {t} bytes)", file_len - offset));
                        break;
                    }
                    Frame::Malformed(detail) => {
                        bad = Some(detail);
                        break;
                    }
                }
            }
            if let Some(detail) = bad {
                // A torn tail only if no valid record follows anywhere after the bad one.
                let tail = chunk
                    .load(&self.storage, &name, file_len, offset, file_len)
                    .map_err(|e| io_error(file.clone(), "reading", e))?;
                if let Some(p) = (1..tail.len())
                    .find(|&p| matches!(parse_record(&tail[p..], max), Frame::Valid { .. }))
                {
                    return Err(LogError::Corrupt {
                        segment: file,
                        offset,
                        detail: format!(
                            "{detail} at LSN {lsn}, yet a valid record follows at byte {}",
                            offset + p as u64
                        ),
                    });
                }
                let truncated = file_len - offset;
                let records = lsn - first;
                // Average frame size of the records kept; with none, count one record.
                let estimate = (offset - SEGMENT_HEADER_LEN)
                    .checked_div(records)
                    .map_or(1, |avg| truncated.div_ceil(avg.max(1)).max(1));
                self.storage
                    .truncate(&name, offset)
                    .map_err(|e| io_error(file.clone(), "truncating the torn tail of", e))?;
                warn!(
                    segment = %file,
                    offset,
                    truncated_bytes = truncated,
                    dropped_records_estimate = estimate,
                    first_lost_lsn = lsn,
                    %detail,
                    "log recovery cut off a torn tail (records never reported durable)"
                );
                self.recovery = Some(Recovery {
                    segment: file.clone(),
                    offset,
                    truncated_bytes: truncated,
                    dropped_records_estimate: estimate,
                    detail,
                });
            }
        }
        // What the scan found may so far live only in the page cache (a process crash):
        // make it durable before calling it so.
        self.storage.sync(&name).map_err(|source| LogError::SyncFailed {
            file,
            op: "syncing during recovery",
            durable_lsn: lsn - 1,
            source,
        })?;
        let seg = &mut self.segments[i];
        seg.len = offset;
        seg.index = index;
        self.written = offset;
        self.synced = offset;
        self.next_lsn = lsn;
        self.durable_lsn = lsn - 1;
        Ok(())
    }

    fn load_positions(&mut self) -> Result<(), LogError> {
        let file = self.storage.describe(POSITIONS_FILE);
        match self.storage.read_all(POSITIONS_FILE) {
            Ok(bytes) => {
                self.positions = decode_positions(&bytes).map_err(|detail| LogError::Corrupt {
                    segment: file,
                    offset: 0,
                    detail,
                })?;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(file, "reading", e)),
        }
    }

    fn check_poisoned(&self) -> Result<(), LogError> {
        match &self.poisoned {
            None => Ok(()),
            Some(cause) => {
                Err(LogError::Poisoned { dir: self.storage.describe(""), cause: cause.clone() })
            }
        }
    }

    /// Poisons the log after a failed sync (or a failed clean-up), and drops what was written
    /// after the last good sync from the active segment, so that a reopen does not read back
    /// records that may never reach the disk.
    fn poison(&mut self, op: &'static str, name: &str, source: io::Error) -> LogError {
        let err = LogError::SyncFailed {
            file: self.storage.describe(name),
            op,
            durable_lsn: self.durable_lsn,
            source,
        };
        error!(error = %err, durable_lsn = self.durable_lsn, "log poisoned; records after durable_lsn may be lost");
        self.poisoned = Some(err.to_string());
        let active = &self.segments[self.segments.len() - 1].name;
        if self.written > self.synced {
            let _ = self.storage.truncate(active, self.synced);
        }
        err
    }

    fn active(&self) -> &Segment {
        &self.segments[self.segments.len() - 1]
    }

    /// Creates segment `first`: header written and synced, then the directory synced.
    fn create_segment(&mut self, first: u64) -> Result<(), LogError> {
        let name = segment_name(first);
        let file = self.storage.describe(&name);
        self.storage.create(&name).map_err(|e| io_error(file.clone(), "creating", e))?;
        if let Err((_, e)) = append_all(&mut self.storage, &name, &encode_segment_header(first)) {
            // The log goes on appending to the active segment, so this name must not come back
            // in a crash: an empty segment named for a smaller LSN than the active one's end
            // would become the last segment and hand out those LSNs again.
            if let Err(re) = self.storage.remove(&name) {
                return Err(self.poison("removing a half-created segment", &name, re));
            }
            if let Err(re) = self.storage.sync_dir() {
                return Err(self.poison("syncing the directory after removing", &name, re));
            }
            return Err(io_error(file, "writing the header of", e));
        }
        if let Err(e) = self.storage.sync(&name) {
            // The header may never reach the disk even if a later sync succeeds: do not leave
            // the file for a reopen to trust.
            let _ = self.storage.remove(&name);
            return Err(self.poison("syncing the new segment", &name, e));
        }
        if let Err(e) = self.storage.sync_dir() {
            return Err(self.poison("syncing the directory after creating", &name, e));
        }
        self.segments.push(Segment {
            first_lsn: first,
            name,
            len: SEGMENT_HEADER_LEN,
            index: vec![(first, SEGMENT_HEADER_LEN)],
        });
        self.written = SEGMENT_HEADER_LEN;
        self.synced = SEGMENT_HEADER_LEN;
        self.disk_bytes += SEGMENT_HEADER_LEN;
        Ok(())
    }

    /// Writes the buffer to the active segment (no sync). On failure, cuts any partial write
    /// off again and keeps the buffer: nothing changed.
    fn flush(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let name = self.active().name.clone();
        if let Err((done, e)) = append_all(&mut self.storage, &name, &self.buf) {
            if done > 0
                && let Err(te) = self.storage.truncate(&name, self.written)
            {
                return Err(self.poison("cutting off a partial write to", &name, te));
            }
            return Err(io_error(self.storage.describe(&name), "appending to", e));
        }
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Syncs the (flushed) active segment; everything appended is then durable.
    fn sync_active(&mut self) -> Result<(), LogError> {
        debug_assert!(self.buf.is_empty());
        if self.synced < self.written {
            let name = self.active().name.clone();
            if let Err(e) = self.storage.sync(&name) {
                return Err(self.poison("syncing", &name, e));
            }
            self.synced = self.written;
        }
        self.durable_lsn = self.next_lsn - 1;
        Ok(())
    }

    /// Closes the active segment (flushed and synced) and starts a new one at `next_lsn`.
    fn roll(&mut self) -> Result<(), LogError> {
        self.flush()?;
        self.sync_active()?;
        self.create_segment(self.next_lsn)
    }

    /// Appends a record and returns its LSN. The record is buffered or written, not synced:
    /// it becomes durable, and visible to readers, with the next successful [`Log::sync`].
    ///
    /// Errors: [`LogError::RecordTooLarge`], [`LogError::Full`], [`LogError::Poisoned`] and,
    /// when the append had to write out the buffer or roll over to a new segment,
    /// [`LogError::DiskFull`] or [`LogError::Io`] (nothing changed) or
    /// [`LogError::SyncFailed`] (poisoned). On error the record was not appended.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        self.check_poisoned()?;
        if payload.len() > self.config.max_record_size {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max: self.config.max_record_size,
            });
        }
        let frame = RECORD_HEADER_LEN + payload.len() as u64;
        let active = self.active();
        let roll =
            self.next_lsn > active.first_lsn && active.len + frame > self.config.segment_size;
        let needed = frame + if roll { SEGMENT_HEADER_LEN } else { 0 };
        if let Some(limit) = self.config.max_disk_bytes
            && self.disk_bytes + needed > limit
        {
            return Err(LogError::Full {
                dir: self.storage.describe(""),
                disk_bytes: self.disk_bytes,
                needed,
                limit,
            });
        }
        if roll {
            self.roll()?;
        }
        if !self.buf.is_empty()
            && self.buf.len() as u64 + frame > self.config.write_buffer_size as u64
        {
            self.flush()?;
        }
        encode_record(payload, &mut self.buf);
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.disk_bytes += frame;
        let seg = self.segments.last_mut().expect("never empty");
        if seg.index.last().is_none_or(|e| seg.len - e.1 >= INDEX_STRIDE) {
            seg.index.push((lsn, seg.len));
        }
        seg.len += frame;
        Ok(lsn)
    }

    /// Makes every record appended so far durable (one write and one fsync for all of them:
    /// group commit), then persists reader positions changed since the last sync. Returns
    /// [`Log::durable_lsn`].
    ///
    /// Errors: [`LogError::DiskFull`] or [`LogError::Io`] while writing (nothing changed, the
    /// records stay buffered: retry), [`LogError::SyncFailed`] (poisoned: `durable_lsn` did
    /// not advance, reopen), [`LogError::Poisoned`].
    pub fn sync(&mut self) -> Result<u64, LogError> {
        self.check_poisoned()?;
        self.flush()?;
        self.sync_active()?;
        if self.positions_dirty {
            self.write_positions()?;
        }
        Ok(self.durable_lsn)
    }

    /// `positions.tmp` written and synced, renamed over `positions`, directory synced.
    fn write_positions(&mut self) -> Result<(), LogError> {
        let data = encode_positions(&self.positions);
        if let Err(e) = self.storage.write_file(POSITIONS_TMP, &data) {
            let _ = self.storage.remove(POSITIONS_TMP);
            return Err(io_error(self.storage.describe(POSITIONS_TMP), "writing", e));
        }
        if let Err(e) = self.storage.sync(POSITIONS_TMP) {
            return Err(self.poison("syncing", POSITIONS_TMP, e));
        }
        if let Err(e) = self.storage.rename(POSITIONS_TMP, POSITIONS_FILE) {
            return Err(io_error(self.storage.describe(POSITIONS_FILE), "renaming over", e));
        }
        if let Err(e) = self.storage.sync_dir() {
            return Err(self.poison("syncing the directory after replacing", POSITIONS_FILE, e));
        }
        self.positions_dirty = false;
        Ok(())
    }

    /// Records that reader `name` has consumed everything through `lsn` (0: nothing). The
    /// position is visible to [`Log::position`] at once and made durable by the next
    /// successful [`Log::sync`]. `lsn` must be below [`Log::next_lsn`].
    pub fn set_position(&mut self, name: &str, lsn: u64) -> Result<(), LogError> {
        self.check_poisoned()?;
        if name.is_empty() || name.len() > MAX_POSITION_NAME {
            return Err(LogError::InvalidPositionName { name: name.to_owned() });
        }
        if lsn >= self.next_lsn {
            return Err(self.out_of_range(lsn));
        }
        if self.positions.get(name) != Some(&lsn) {
            self.positions.insert(name.to_owned(), lsn);
            self.positions_dirty = true;
        }
        Ok(())
    }

    /// The position last set for reader `name` (surviving restarts once synced).
    pub fn position(&self, name: &str) -> Option<u64> {
        self.positions.get(name).copied()
    }

    /// All reader positions, by name.
    pub fn positions(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.positions.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Removes records through `lsn` (clamped to [`Log::durable_lsn`]): they are no longer
    /// readable, and every segment whose records are all removed is deleted (directory synced
    /// after each deletion). The active segment is kept, so LSNs continue after a restart,
    /// unless all its records are removed and it has grown past half the segment size or half
    /// `max_disk_bytes`: then a new empty segment replaces it. Returns the bytes freed.
    ///
    /// Removal from the middle of a segment is logical and lasts until the process ends; after
    /// a reopen [`Log::first_lsn`] is the first LSN of the oldest remaining segment, so readers
    /// resume from their own [`Log::position`].
    ///
    /// Errors: [`LogError::Io`] / [`LogError::DiskFull`] (the log is consistent; some segments
    /// may already be deleted), [`LogError::SyncFailed`] (poisoned), [`LogError::Poisoned`].
    pub fn remove_through(&mut self, lsn: u64) -> Result<u64, LogError> {
        self.check_poisoned()?;
        let lsn = lsn.min(self.durable_lsn);
        self.first_lsn = self.first_lsn.max(lsn + 1);
        let mut freed = 0;
        let active = self.active();
        let half = self.config.max_disk_bytes.map_or(u64::MAX, |l| l / 2);
        if self.next_lsn > active.first_lsn
            && self.next_lsn - 1 <= lsn
            && active.len >= (self.config.segment_size / 2).min(half)
        {
            self.roll()?;
        }
        while self.segments.len() > 1 && self.segments[1].first_lsn - 1 <= lsn {
            let name = self.segments[0].name.clone();
            match self.storage.remove(&name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(self.storage.describe(&name), "removing", e)),
            }
            let seg = self.segments.remove(0);
            self.disk_bytes -= seg.len;
            freed += seg.len;
            if let Err(e) = self.storage.sync_dir() {
                return Err(self.poison("syncing the directory after removing", &name, e));
            }
            debug!(segment = %self.storage.describe(&name), through_lsn = lsn, "log segment removed");
        }
        Ok(freed)
    }

    fn out_of_range(&self, lsn: u64) -> LogError {
        LogError::LsnOutOfRange {
            lsn,
            first: self.first_lsn,
            durable: self.durable_lsn,
            next: self.next_lsn,
        }
    }

    /// Iterates over the durable records from `lsn` on, in LSN order, up to the
    /// [`Log::durable_lsn`] of this moment. `lsn` may be anything from [`Log::first_lsn`] to
    /// [`Log::next_lsn`]; past `durable_lsn` the iterator is empty. Every record's CRC is
    /// checked; damage yields one [`LogError::Corrupt`] and ends the iteration.
    pub fn read_from(&self, lsn: u64) -> Result<Reader<'_, S>, LogError> {
        if lsn < self.first_lsn || lsn > self.next_lsn {
            return Err(self.out_of_range(lsn));
        }
        let mut r = Reader {
            log: self,
            seg: 0,
            offset: SEGMENT_HEADER_LEN,
            next: lsn,
            target: lsn,
            end: self.durable_lsn,
            chunk: Chunk::default(),
            done: false,
        };
        if lsn <= self.durable_lsn {
            let i = self.segments.partition_point(|s| s.first_lsn <= lsn).saturating_sub(1);
            let seg = &self.segments[i];
            let at = seg.index.partition_point(|e| e.0 <= lsn);
            let (start, offset) =
                if at == 0 { (seg.first_lsn, SEGMENT_HEADER_LEN) } else { seg.index[at - 1] };
            r.seg = i;
            r.next = start;
            r.offset = offset;
        }
        Ok(r)
    }

    /// Reads every durable record and checks it (CRC, lengths, segment boundaries), returning
    /// how many there are. Costs a full read of the log.
    pub fn verify(&self) -> Result<u64, LogError> {
        for (i, s) in self.segments.iter().enumerate() {
            let len = if i + 1 == self.segments.len() { self.written } else { s.len };
            self.check_header(&s.name, s.first_lsn, len)?;
        }
        let mut n = 0;
        for r in self.read_from(self.first_lsn)? {
            r?;
            n += 1;
        }
        Ok(n)
    }

    /// Every LSN up to this one survives a crash, and readers see exactly these. 0: none.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    /// The LSN the next [`Log::append`] will return.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The lowest readable LSN (equal to [`Log::next_lsn`] when nothing is readable).
    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    /// Bytes the segments take (headers and frames, including those appended but not yet
    /// written). The positions file, a few bytes, is not counted.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// What recovery on open cut off, if anything.
    pub fn last_recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// Whether a failed sync poisoned the log (see [`LogError::SyncFailed`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// The configuration in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }
}

/// Iterator over durable records, from [`Log::read_from`]: yields `(lsn, payload)`.
pub struct Reader<'a, S: Storage> {
    log: &'a Log<S>,
    /// Index of the current segment.
    seg: usize,
    /// Offset of the record `next` in it.
    offset: u64,
    next: u64,
    /// First LSN to yield (records before it are skipped by their headers).
    target: u64,
    /// Last LSN to yield.
    end: u64,
    chunk: Chunk,
    done: bool,
}

impl<S: Storage> fmt::Debug for Reader<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("next", &self.next.max(self.target))
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Reader<'_, S> {
    fn step(&mut self) -> Result<(u64, Vec<u8>), LogError> {
        let log = self.log;
        let max = log.config.max_record_size;
        loop {
            let last = self.seg + 1 == log.segments.len();
            let seg = &log.segments[self.seg];
            let file_len = if last { log.written } else { seg.len };
            let corrupt = |offset: u64, detail: String| LogError::Corrupt {
                segment: log.storage.describe(&seg.name),
                offset,
                detail,
            };
            let successor = log.segments.get(self.seg + 1);
            if self.offset >= file_len {
                match successor {
                    Some(n) if n.first_lsn == self.next => {
                        self.seg += 1;
                        self.offset = SEGMENT_HEADER_LEN;
                        self.chunk = Chunk::default();
                        continue;
                    }
                    Some(n) => {
                        return Err(corrupt(
                            self.offset,
                            format!(
                                "segment ends after LSN {} but the next segment {} starts at LSN {}",
                                self.next - 1,
                                n.name,
                                n.first_lsn
                            ),
                        ));
                    }
                    None => {
                        return Err(corrupt(
                            self.offset,
                            format!(
                                "segment ends after LSN {} although LSNs through {} are durable",
                                self.next - 1,
                                self.end
                            ),
                        ));
                    }
                }
            }
            if let Some(n) = successor
                && self.next >= n.first_lsn
            {
                return Err(corrupt(
                    self.offset,
                    format!(
                        "segment holds more records than fit before the next segment {} (LSN {})",
                        n.name, n.first_lsn
                    ),
                ));
            }
            let io = |e| io_error(log.storage.describe(&seg.name), "reading", e);
            if self.next < self.target {
                let offset = self.offset;
                let head = self
                    .chunk
                    .load(&log.storage, &seg.name, file_len, offset, offset + RECORD_HEADER_LEN)
                    .map_err(io)?;
                if head.len() < RECORD_HEADER_LEN as usize {
                    return Err(corrupt(
                        offset,
                        "record header cut short by the end of the segment".into(),
                    ));
                }
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
                if len > max as u64 {
                    return Err(corrupt(
                        offset,
                        format!("record length {len} exceeds the maximum record size {max}"),
                    ));
                }
                let end = offset + RECORD_HEADER_LEN + len;
                if end > file_len {
                    return Err(corrupt(offset, "record runs past the end of the segment".into()));
                }
                self.offset = end;
                self.next += 1;
                continue;
            }
            let offset = self.offset;
            match self.chunk.frame(&log.storage, &seg.name, file_len, offset, max).map_err(io)? {
                Frame::Valid { payload_len } => {
                    let payload = self.chunk.payload(offset, payload_len).to_vec();
                    let lsn = self.next;
                    self.offset += RECORD_HEADER_LEN + payload_len as u64;
                    self.next += 1;
                    return Ok((lsn, payload));
                }
                Frame::Incomplete { .. } => {
                    return Err(corrupt(
                        offset,
                        "record cut short by the end of the segment".into(),
                    ));
                }
                Frame::Malformed(detail) => return Err(corrupt(offset, detail)),
            }
        }
    }
}

impl<S: Storage> Iterator for Reader<'_, S> {
    type Item = Result<(u64, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next.max(self.target) > self.end {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}
