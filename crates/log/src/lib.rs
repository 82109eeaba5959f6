//! A durable, append-only record log in one directory: the nanoprobe's spool (everything bound
//! for the CMA is appended before it is sent and removed once the CMA acknowledged it) and the
//! CMA's inbox (packet readers append authenticated messages and acknowledge them only after
//! the sync that covers them; the decision engine consumes them in order).
//!
//! This crate owns the bytes on disk and the promises below; it knows nothing of what the
//! records mean. It is synchronous and single-owner (`&mut self` to write): one task owns a
//! [`Log`]. All IO goes through the [`Storage`] trait: [`FileStorage`] for a real directory,
//! [`MemStorage`] for tests, which injects short writes, `ENOSPC`, fsync failures and crashes.
//!
//! Layout:
//! - `format`: byte layouts (segment names and headers, record frames, positions file); pure.
//! - `crc`: CRC-32C.
//! - `storage`: the [`Storage`] trait and [`FileStorage`].
//! - `mem`: [`MemStorage`], the fault-injecting in-memory storage.
//! - `log`: [`Log`], [`Reader`], [`LogConfig`], [`Recovery`].
//! - `error`: [`LogError`].
//!
//! # Files
//!
//! ```text
//! DIR/00000000000000000001.seg   segments, named {first_lsn:020}.seg (LSN of their first record)
//! DIR/00000000000000081235.seg   ... the last one is the active segment, appended to
//! DIR/positions                  named reader positions
//! DIR/positions.tmp              a positions update in progress (deleted on open)
//! DIR/LOCK                       flock(2) held by FileStorage: one process per directory
//! ```
//! Other names are ignored.
//!
//! # Byte layout (all integers little endian)
//!
//! ```text
//! Segment = header, then records back to back until the end of the file
//! header:  offset size field
//!           0      4   magic "ASLG"
//!           4      4   format version = 1
//!           8      8   first LSN (must equal the file name's)
//! record:   0      4   payload length n (≤ max_record_size, checked before allocating)
//!           4      4   CRC-32C (Castagnoli) of bytes 0..4 followed by the payload
//!           8      n   payload
//!
//! Positions file
//!           0      4   magic "ASLP"
//!           4      4   format version = 1
//!           8      4   count
//!          12          count × { name length u16, name (UTF-8, 1..=255 bytes), LSN u64 }
//!                      (sorted by name)
//!         end-4    4   CRC-32C of everything before it
//! ```
//!
//! LSNs are not stored in records: the k-th record (from 0) of segment `F.seg` has LSN `F + k`.
//! A segment's records therefore end where the next segment's name begins; readers check this.
//!
//! # Invariants
//!
//! - LSNs start at 1, are dense and increase by one per append; [`Log::next_lsn`] survives
//!   restarts because the active segment is never deleted while it holds the newest records.
//! - Every LSN ≤ [`Log::durable_lsn`] survives a crash with identical bytes, unless removed by
//!   [`Log::remove_through`]. Records appended after it may survive a crash or not, but always
//!   as a prefix: what survives is records `first..=k` for some `k ≥ durable_lsn`. LSNs above
//!   the recovered end are then handed out again; they were never durable, so no reader saw
//!   them.
//! - A reader never sees a record that is not durable: [`Log::read_from`] stops at
//!   `durable_lsn`.
//! - Group commit: [`Log::append`] only buffers (and writes out, without fsync, every
//!   [`LogConfig::write_buffer_size`] bytes);
//!   [`Log::sync`] writes the buffer and issues one fsync for all of it, then persists changed
//!   reader positions. `durable_lsn` advances only after that fsync succeeded.
//! - Segments: when the next record would take the active segment past
//!   [`LogConfig::segment_size`], the segment is written, synced (so a closed segment is always
//!   complete and durable), and a new one is created: header written and synced, then the
//!   directory synced, before any record goes into it. Every deletion and every positions
//!   rename is also followed by a directory sync. So at most the active segment has a torn
//!   tail, and no segment ever vanishes or reappears in a crash.
//! - Positions: written to `positions.tmp`, synced, renamed over `positions`, directory
//!   synced. After a crash a position reads back as it was at the last successful sync (or at
//!   a sync that failed while writing it).
//! - Size: [`Log::disk_bytes`] counts segment bytes, buffered ones included; with
//!   [`LogConfig::max_disk_bytes`] an append that would exceed it fails with
//!   [`LogError::Full`] and changes nothing, so the caller can apply its drop policy.
//!
//! # Recovery on open
//!
//! - Every segment header is checked (magic, version, LSN = file name): else
//!   [`LogError::Corrupt`].
//! - The last segment is scanned. Its first bad record — incomplete header, incomplete payload,
//!   length over the maximum or CRC mismatch — starts a *torn tail* if no valid record starts
//!   at any later byte: the tail is cut off, the segment synced, and the cut reported by
//!   [`Log::last_recovery`] ([`Recovery`]: segment, offset, truncated bytes, estimated records
//!   dropped) and a WARN event. A crash can produce nothing else, because only the active
//!   segment is ever written without a sync. A last segment shorter than its header (a crash
//!   while creating it) gets its header written again.
//! - A bad record followed by a valid one, or any bad record in an earlier segment (found
//!   when read, or by [`Log::verify`]), is [`LogError::Corrupt`] naming the file and byte
//!   offset: never a panic, never a silent truncation of data that was durable. (A payload
//!   that itself contains a well-formed record frame could make a genuine torn tail look like
//!   this; assim's payloads are sealed and do not.)
//! - Recovery syncs the last segment, so everything it kept is durable; `durable_lsn` is the
//!   last record found.
//!
//! # Failures
//!
//! Errors while writing without sync (short write then error, `ENOSPC`) cut the partial write
//! off again and keep the buffered records: nothing changed and the call may be retried
//! ([`LogError::DiskFull`], [`LogError::Io`]). A failed fsync is different: Linux may already
//! have dropped the dirty pages and cleared the error, so a retried fsync could succeed
//! without the data ever reaching the disk. As PostgreSQL does since 2018, the log then
//! refuses to go on: it returns [`LogError::SyncFailed`], does not advance `durable_lsn`,
//! truncates the active segment back to its last synced length (so a reopen cannot read back
//! bytes that may not be on disk) and is *poisoned*: every later mutation fails with
//! [`LogError::Poisoned`] while reads of durable records still work. The owner drops the log and
//! reopens the directory; records after the old `durable_lsn` are lost, as in a crash.

mod crc;
mod error;
mod format;
mod log;
mod mem;
mod storage;

pub use crate::error::LogError;
pub use crate::format::{MAX_POSITION_NAME, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use crate::log::{Log, LogConfig, Reader, Recovery};
pub use crate::mem::MemStorage;
pub use crate::storage::{FileStorage, Storage};
