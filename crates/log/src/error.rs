//! [`LogError`]: every way a log operation can fail, and what it did to the log's state.

use std::io;

/// A failed log operation. Each variant says whether the log's state changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The payload is larger than [`LogConfig::max_record_size`](crate::LogConfig). Checked
    /// before anything is allocated or written: nothing changed.
    #[error(
        "record of {len} bytes exceeds the log's maximum record size of {max} bytes; split the \
         payload or raise max_record_size"
    )]
    RecordTooLarge {
        /// Payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },

    /// Appending would take the log over [`LogConfig::max_disk_bytes`](crate::LogConfig).
    /// Nothing changed; the caller applies its drop policy or frees space with
    /// [`Log::remove_through`](crate::Log::remove_through).
    #[error(
        "log in {dir} is full: {disk_bytes} bytes used, {needed} more needed, limit {limit}; \
         remove consumed records or drop this one"
    )]
    Full {
        /// The log directory.
        dir: String,
        /// [`Log::disk_bytes`](crate::Log::disk_bytes) now.
        disk_bytes: u64,
        /// Bytes the append would add (frame, plus a segment header on rollover).
        needed: u64,
        /// The configured limit.
        limit: u64,
    },

    /// The device ran out of space (`ENOSPC` or a quota). Nothing changed: a partial write
    /// was cut off again, records not yet synced are still buffered and the call can be
    /// retried once space is freed.
    #[error(
        "no space left on the device while {op} {file}: free disk space or remove consumed records, then retry"
    )]
    DiskFull {
        /// The file being written.
        file: String,
        /// What the log was doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Any other I/O error that did not endanger durability (opening, reading, listing,
    /// writing before an fsync). Nothing changed: like [`LogError::DiskFull`], a partial write
    /// was cut off again and the call can be retried.
    #[error("I/O error while {op} {file}: {source}; check the device and permissions, then retry")]
    Io {
        /// The file (or directory) concerned.
        file: String,
        /// What the log was doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An `fsync` (of a segment, the directory or the positions file), or the clean-up of a
    /// failed write, failed. The kernel may already have dropped the unwritten pages, so the
    /// log cannot tell what is on disk: it did NOT advance [`Log::durable_lsn`](crate::Log)
    /// and is now poisoned (every later mutation fails with [`LogError::Poisoned`]). Records
    /// after `durable_lsn` may be lost; drop the log and reopen it.
    #[error(
        "{op} {file} failed: {source}; records after LSN {durable_lsn} may be lost and the log \
         is poisoned: drop it and reopen the directory (check the device first)"
    )]
    SyncFailed {
        /// The file (or directory) concerned.
        file: String,
        /// What the log was doing.
        op: &'static str,
        /// The last LSN known durable.
        durable_lsn: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An earlier [`LogError::SyncFailed`] poisoned the log. Nothing changed; reads of records
    /// up to `durable_lsn` still work.
    #[error("log in {dir} is poisoned by an earlier failure ({cause}); drop it and reopen")]
    Poisoned {
        /// The log directory.
        dir: String,
        /// The message of the failure that poisoned it.
        cause: String,
    },

    /// Bytes on disk are not what the log wrote: a bad record followed by valid data, a bad
    /// record in a segment that is not the last, a bad segment header or positions file. Found
    /// on open or on read; nothing was changed or truncated.
    #[error(
        "corrupt log file {segment} at byte {offset}: {detail}; the log will not guess past \
         it: copy the directory for analysis, then restore or remove the damaged file and reopen"
    )]
    Corrupt {
        /// The damaged file.
        segment: String,
        /// Byte offset of the damage in it.
        offset: u64,
        /// What is wrong.
        detail: String,
    },

    /// A read or position named an LSN outside the log. Nothing changed.
    #[error(
        "LSN {lsn} is outside the log's range (first readable {first}, durable through {durable}, next {next})"
    )]
    LsnOutOfRange {
        /// The LSN asked for.
        lsn: u64,
        /// [`Log::first_lsn`](crate::Log::first_lsn).
        first: u64,
        /// [`Log::durable_lsn`](crate::Log::durable_lsn).
        durable: u64,
        /// [`Log::next_lsn`](crate::Log::next_lsn).
        next: u64,
    },

    /// A reader position name is empty or longer than 255 bytes. Nothing changed.
    #[error("invalid reader position name {name:?}: it must be 1 to 255 bytes long")]
    InvalidPositionName {
        /// The rejected name.
        name: String,
    },

    /// The configuration is inconsistent. Nothing was opened.
    #[error("invalid log configuration: {detail}")]
    InvalidConfig {
        /// What is wrong.
        detail: String,
    },
}
