//! The nanoprobe's link to its CMA: sealing, reliable delivery and the spool.
//!
//! Everything bound for the CMA that must not be lost (heartbeat reports, peer status, and later
//! discovery and check results and local events) goes through [`CmaLink::send_spooled`]: it is
//! appended to the spool (an `assim-log` in `DATA_DIR/spool`) with the spool LSN as its record
//! number, made durable by the group commit in [`CmaLink::commit`], and only then sent. The CMA
//! answers `Ack { through }` once its inbox holds every record up to `through` durably; the link
//! then deletes them ([`CmaLink::handle_ack`]).
//!
//! Unacknowledged records are sent again:
//! - after a nanoprobe restart (everything past the `acked` position, in order);
//! - when the CMA restarted (its reliable session changed);
//! - when nothing was acknowledged for [`RESEND_AFTER`] while the reliable connection is idle
//!   (the CMA accepted the datagrams but could not store them, e.g. its disk was full).
//!
//! The CMA drops duplicates by (node id, record), so resending is always harmless.
//!
//! # When the spool is full
//!
//! The spool holds at most `spool_max_bytes` (default 64 MiB). When an append does not fit:
//! - *droppable* records — peer status and statistics, which the next change or interval
//!   replaces anyway — are dropped (counted in `spool_dropped`, one WARN line per 100);
//! - every other record (heartbeat reports, and later check results and local events) is never
//!   dropped: it is sent without the spool's protection (counted in `spool_unspooled`, ERROR
//!   line), so it still reaches the CMA unless the nanoprobe also restarts before it is
//!   delivered.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assim_log::{FileStorage, Log, LogConfig, LogError};
use assim_reliable::{Connection, Event as RelEvent};
use assim_seal::Sealer;
use assim_wire::msg::{Body, Message};
use assim_wire::{DatagramKind, NodeId};
use tracing::{debug, error, info, warn};

/// How long unacknowledged records wait, with the connection idle, before they are sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);

/// The spool's reader position: every record up to it was acknowledged by the CMA.
const ACKED: &str = "acked";

/// Counters of the link, exported in the nanoprobe's metrics file.
#[derive(Clone, Debug, Default)]
pub struct LinkStats {
    pub spooled: u64,
    pub acked_through: u64,
    pub resent: u64,
    pub spool_dropped: u64,
    pub spool_unspooled: u64,
    pub spool_errors: u64,
}

/// What the CMA told us, for the driver to act on.
#[derive(Debug)]
pub enum FromCma {
    /// A command (peer set, shutdown, …).
    Message(Message),
    /// The CMA restarted: register again.
    Restarted,
    /// A reliable message of ours was delivered (id from [`CmaLink::send_control`]).
    Delivered(u64),
}

/// The link to the CMA. Owned by one task.
#[derive(Debug)]
pub struct CmaLink {
    pub sealer: Sealer,
    pub cma_id: NodeId,
    pub cma_addr: SocketAddr,
    conn: Connection,
    spool: Log<FileStorage>,
    /// Records appended since the last commit, to send once durable.
    unsent: Vec<(u64, Vec<u8>)>,
    last_ack_progress: Instant,
    pub stats: LinkStats,
}

fn is_droppable(body: &Body) -> bool {
    matches!(body, Body::PeerStatus(_) | Body::Statistics(_))
}

impl CmaLink {
    /// Opens the spool in `data_dir/spool` and prepares the reliable connection.
    pub fn open(
        sealer: Sealer,
        cma_id: NodeId,
        cma_addr: SocketAddr,
        data_dir: &Path,
        spool_max_bytes: u64,
        now: Instant,
    ) -> anyhow::Result<CmaLink> {
        let dir = data_dir.join("spool");
        let storage = FileStorage::open(&dir)
            .with_context(|| format!("cannot open the spool in {}", dir.display()))?;
        let config = LogConfig {
            max_disk_bytes: Some(spool_max_bytes),
            segment_size: (spool_max_bytes / 8).clamp(64 * 1024, 16 * 1024 * 1024),
            ..LogConfig::default()
        };
        let spool = Log::open(storage, config)
            .with_context(|| format!("cannot open the spool in {}", dir.display()))?;
        if let Some(r) = spool.last_recovery() {
            warn!(segment = %r.segment, truncated_bytes = r.truncated_bytes, "spool recovered from a torn tail: {}", r.detail);
        }
        let session = sealer.session();
        let seed = session ^ 0x9e37_79b9_7f4a_7c15;
        let acked = spool.position(ACKED).unwrap_or(0);
        Ok(CmaLink {
            sealer,
            cma_id,
            cma_addr,
            conn: Connection::new(assim_reliable::Config::default(), session, seed),
            spool,
            unsent: Vec::new(),
            last_ack_progress: now,
            stats: LinkStats { acked_through: acked, ..LinkStats::default() },
        })
    }

    /// Records in the spool not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.spool.durable_lsn().saturating_sub(self.stats.acked_through)
    }

    /// Bytes the spool uses on disk.
    pub fn spool_bytes(&self) -> u64 {
        self.spool.disk_bytes()
    }

    /// The next spool record number (how many records this node has ever spooled, plus one).
    pub fn next_record(&self) -> u64 {
        self.spool.next_lsn()
    }

    /// Sends a control message (hello, goodbye) that is not spooled; returns its reliable id.
    pub fn send_control(&mut self, body: Body, now: Instant) -> Option<u64> {
        match self.conn.send(Message::new(body).to_bytes(), now) {
            Ok(id) => Some(id),
            Err(e) => {
                warn!(error = %e, "cannot queue a message for the CMA");
                None
            }
        }
    }

    /// Appends a message to the spool; it is sent after the next [`CmaLink::commit`].
    pub fn send_spooled(&mut self, body: Body, now: Instant) {
        self.spool_record(body, now);
    }

    /// [`CmaLink::send_spooled`], returning the spool record number: the CMA holds the message
    /// durably once `stats.acked_through` reaches it. `None` when the message could not be
    /// spooled (dropped, or sent without disk protection because the spool is full).
    pub fn spool_record(&mut self, body: Body, now: Instant) -> Option<u64> {
        let droppable = is_droppable(&body);
        let record = self.spool.next_lsn();
        let bytes = Message { record, body: Some(body) }.to_bytes();
        match self.spool.append(&bytes) {
            Ok(lsn) => {
                debug_assert_eq!(lsn, record);
                self.stats.spooled += 1;
                self.unsent.push((lsn, bytes));
                Some(lsn)
            }
            Err(e) => {
                let full = matches!(e, LogError::Full { .. } | LogError::DiskFull { .. });
                if full && droppable {
                    self.stats.spool_dropped += 1;
                    if self.stats.spool_dropped % 100 == 1 {
                        warn!(
                            dropped = self.stats.spool_dropped,
                            "spool full: dropping peer status and statistics until the CMA catches up"
                        );
                    }
                    return None;
                }
                self.stats.spool_unspooled += 1;
                error!(error = %e, "cannot spool a message for the CMA; sending it without disk protection");
                let unspooled =
                    Message { record: 0, ..Message::from_bytes(&bytes).unwrap_or_default() };
                if let Err(e) = self.conn.send(unspooled.to_bytes(), now) {
                    error!(error = %e, "cannot queue a message for the CMA; it is lost");
                }
                None
            }
        }
    }

    /// Group commit: one fsync for everything appended since the last call, then sends it.
    pub fn commit(&mut self, now: Instant) {
        if self.unsent.is_empty() {
            return;
        }
        if let Err(e) = self.spool.sync() {
            self.stats.spool_errors += 1;
            error!(error = %e, pending = self.unsent.len(), "cannot make the spool durable; the records will be sent when it recovers (restart the nanoprobe if this persists)");
            return;
        }
        for (_, bytes) in std::mem::take(&mut self.unsent) {
            if let Err(e) = self.conn.send(bytes, now) {
                warn!(error = %e, "cannot queue a spooled record; it stays in the spool and is resent later");
            }
        }
    }

    /// Sends every durable record past the acknowledged position again.
    pub fn resend_unacked(&mut self, now: Instant) {
        let from = (self.stats.acked_through + 1).max(self.spool.first_lsn());
        let records: Vec<Vec<u8>> = match self.spool.read_from(from) {
            Ok(reader) => reader.filter_map(|r| r.ok().map(|(_, bytes)| bytes)).collect(),
            Err(e) => {
                error!(error = %e, "cannot read the spool");
                return;
            }
        };
        if records.is_empty() {
            return;
        }
        info!(records = records.len(), from, "sending unacknowledged spool records again");
        self.stats.resent += records.len() as u64;
        for bytes in records {
            if let Err(e) = self.conn.send(bytes, now) {
                warn!(error = %e, "cannot queue a spooled record; will retry");
                break;
            }
        }
        self.last_ack_progress = now;
    }

    /// The CMA durably holds every record up to `through`: delete them from the spool.
    pub fn handle_ack(&mut self, through: u64, now: Instant) {
        let through = through.min(self.spool.durable_lsn());
        if through <= self.stats.acked_through {
            return;
        }
        self.stats.acked_through = through;
        self.last_ack_progress = now;
        if let Err(e) = self.spool.set_position(ACKED, through) {
            error!(error = %e, "cannot record the acknowledged spool position");
        }
        if let Err(e) = self.spool.remove_through(through) {
            self.stats.spool_errors += 1;
            error!(error = %e, "cannot delete acknowledged spool records");
        }
        // Persist the position with the next group commit (or now, if idle).
        if self.unsent.is_empty()
            && let Err(e) = self.spool.sync()
        {
            self.stats.spool_errors += 1;
            error!(error = %e, "cannot make the spool position durable");
        }
    }

    /// Feeds a reliable frame from the CMA; returns what the driver must act on.
    pub fn handle_frame(&mut self, frame: &[u8], src: SocketAddr, now: Instant) -> Vec<FromCma> {
        self.cma_addr = src;
        if let Err(e) = self.conn.handle_frame(frame, now) {
            debug!(error = %e, "bad frame from the CMA");
        }
        let mut out = Vec::new();
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                RelEvent::Delivered(bytes) => match Message::from_bytes(&bytes) {
                    Ok(Message { body: Some(Body::Ack(a)), .. }) => self.handle_ack(a.through, now),
                    Ok(m) => out.push(FromCma::Message(m)),
                    Err(e) => warn!(error = %e, "undecodable message from the CMA"),
                },
                RelEvent::PeerRestarted { .. } => {
                    out.push(FromCma::Restarted);
                    self.resend_unacked(now);
                }
                RelEvent::Acked(id) => out.push(FromCma::Delivered(id)),
            }
        }
        out
    }

    /// The next time the link needs [`CmaLink::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let resend = (self.unacked() > 0).then_some(self.last_ack_progress + RESEND_AFTER);
        [self.conn.poll_timeout(), resend].into_iter().flatten().min()
    }

    /// Timers: retransmissions, and the idle resend of unacknowledged records.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        if self.unacked() > 0 && now >= self.last_ack_progress + RESEND_AFTER {
            if self.conn.is_idle() {
                self.resend_unacked(now);
            } else {
                self.last_ack_progress = now;
            }
        }
    }

    /// Seals the pending frames for the CMA.
    pub fn poll_datagrams(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = self.conn.poll_transmit(now) {
            let mut datagram = Vec::with_capacity(frame.len() + 96);
            match self.sealer.seal(self.cma_id, DatagramKind::Reliable, true, &frame, &mut datagram)
            {
                Ok(()) => out.push(datagram),
                Err(e) => warn!(error = %e, "cannot seal a frame for the CMA"),
            }
        }
        out
    }
}
