//! The heartbeat state machine.
//!
//! Inputs: [`Heartbeats::apply`] (a desired peer set), [`Heartbeats::heartbeat_received`] (an
//! authenticated heartbeat), [`Heartbeats::handle_timeout`] (the deadline from
//! [`Heartbeats::poll_timeout`] passed). Outputs: [`Action`]s drained with
//! [`Heartbeats::poll_action`]. Every input takes `now`; the core never reads a clock.
//!
//! Per peer liveness (`last_heard` is the last heartbeat, or the start of the grace period for a
//! peer that joined the set):
//!
//! ```text
//! Unknown --heartbeat--> Alive                       (no report: the grace period ends)
//! Unknown --silent ≥ dead--> Dead                    Report(Dead)   (no Late during grace)
//! Alive   --silent ≥ warn--> Late                    nothing sent (kept here, see below)
//! Alive   --silent ≥ dead--> Dead                    Report(Dead) only, if both passed at once
//! Late    --silent ≥ dead--> Dead                    Report(Dead)
//! Late    --heartbeat--> Alive                       nothing sent
//! Dead    --heartbeat--> Alive                       Report(BackAlive)
//! ```
//!
//! **Late stays here unless it turns into dead** (issue 18). A heartbeat lost by chance makes a
//! peer late (with the default 2.5 s dead time and 1.5 s warn time, one lost heartbeat is
//! enough); telling the CMA would cost a report, a status and a back-alive for every lost
//! datagram, while the CMA acts only on dead words. So a late peer sends nothing, and its
//! return from late sends nothing: statuses do not go out for a change between Alive and Late
//! alone. A status that goes out for another reason carries the true liveness, Late included
//! (the CMA reads a neighbour's "late" as the withdrawal of its "alive").
//!
//! Invariants:
//! - A peer is reported Dead at most once until it comes back alive or the peer set changes.
//! - After `handle_timeout(now)`, `poll_timeout()` is `None` or strictly after `now` (every
//!   deadline that was due has been acted on and `interval > 0`), so a driver cannot spin.
//! - However late `handle_timeout` is called, it sends at most one round of heartbeats and
//!   schedules the next round one interval after `now`.
//! - A `PeerStatus` goes out when (epoch, each peer's liveness, Late counted as Alive) differs
//!   from the last one sent, at most once per interval; a change inside the window is sent when
//!   it closes, newest state.
//! - Memory: the peers (≤ [`MAX_PEERS`]), at most [`crate::MARTIAN_MEMORY`] martian senders, and
//!   the actions not yet drained. Nothing else grows.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_wire::NodeId;
use assim_wire::msg::{
    Heartbeat, HeartbeatReport, PeerLiveness, PeerState, PeerStatus, ReportKind,
};

use crate::martian::MartianLimiter;
use crate::peer_set::{DesiredPeers, MAX_PEERS, PeerInfo};
use crate::timing::{Timing, millis};

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Seal and send this heartbeat to `to` at `addr` (unreliable, one datagram).
    SendHeartbeat { to: NodeId, addr: SocketAddr, heartbeat: Heartbeat },
    /// Spool and deliver this report to the CMA.
    Report(HeartbeatReport),
    /// Spool and deliver this peer status to the CMA.
    Status(PeerStatus),
}

/// The outcome of [`Heartbeats::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The set was newer than ours and is now the one we run.
    Updated,
    /// The set is older than ours and was ignored (counted in [`Stats::stale_peer_sets`]).
    Stale,
    /// The set has our epoch (a re-send) and was ignored.
    Unchanged,
}

/// Counters since the core was created. Monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `SendHeartbeat` actions emitted.
    pub heartbeats_sent: u64,
    /// Heartbeats passed to `heartbeat_received`, from peers and martians alike.
    pub heartbeats_received: u64,
    /// Heartbeats from nodes that are not peers (reported or rate-limited).
    pub martians: u64,
    /// `Report` actions emitted, martian reports included.
    pub reports_emitted: u64,
    /// Times a peer's heartbeats started to come from an address other than the expected one
    /// (counted once per switch, not per heartbeat).
    pub address_changes: u64,
    /// Peer sets ignored because their epoch was older than ours.
    pub stale_peer_sets: u64,
}

/// One peer we send heartbeats to and expect heartbeats from.
#[derive(Debug)]
struct PeerEntry {
    info: PeerInfo,
    liveness: PeerLiveness,
    /// The last heartbeat from this peer, or when it joined our set (grace period).
    last_heard: Instant,
    /// Its last heartbeat came from an address other than `info.addr`.
    elsewhere: bool,
}

impl PeerEntry {
    /// When this peer's liveness next degrades if it stays silent.
    fn deadline(&self, t: &Timing) -> Option<Instant> {
        match self.liveness {
            PeerLiveness::Alive => Some(self.last_heard + t.warn),
            PeerLiveness::Unknown | PeerLiveness::Late => Some(self.last_heard + t.dead),
            PeerLiveness::Dead => None,
        }
    }

    /// The liveness this peer degrades to at `now`, if it does.
    fn degraded(&self, t: &Timing, now: Instant) -> Option<PeerLiveness> {
        let silent = now.saturating_duration_since(self.last_heard);
        match self.liveness {
            PeerLiveness::Dead => None,
            _ if silent >= t.dead => Some(PeerLiveness::Dead),
            PeerLiveness::Alive if silent >= t.warn => Some(PeerLiveness::Late),
            _ => None,
        }
    }
}

/// "Periodic on change": when the last status went out and what it said.
#[derive(Debug, Default)]
struct StatusGate {
    /// When the last status was emitted with a known `now`.
    last_at: Option<Instant>,
    /// Fingerprint of the last status emitted.
    last_sent: Option<u64>,
    /// Something changed since the last status.
    pending: bool,
}

/// The nanoprobe's heartbeat core. See the module documentation for the state machine.
#[derive(Debug)]
pub struct Heartbeats {
    self_id: NodeId,
    epoch: u64,
    timing: Timing,
    peers: Vec<PeerEntry>,
    /// The next round of heartbeats; `None` when we have no peers.
    next_send: Option<Instant>,
    status: StatusGate,
    martians: MartianLimiter,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Heartbeats {
    /// A core with no peers, epoch 0, default timing and nothing scheduled.
    pub fn new(self_id: NodeId) -> Heartbeats {
        Heartbeats {
            self_id,
            epoch: 0,
            timing: Timing::default(),
            peers: Vec::new(),
            next_send: None,
            status: StatusGate::default(),
            martians: MartianLimiter::default(),
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Our own node id.
    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    /// The epoch of the peer set we run (0 before the first one).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The timing we run.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Our peers, in the order of the peer set, with their liveness.
    pub fn peers(&self) -> impl Iterator<Item = (&PeerInfo, PeerLiveness)> {
        self.peers.iter().map(|p| (&p.info, p.liveness))
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Converges to `desired` if its epoch is newer than ours.
    ///
    /// Peers in both the old and the new set keep their liveness and last-heard time (their
    /// address and key are updated); a new peer starts `Unknown` with a grace period counted
    /// from `now`, so it is not reported before `dead` has elapsed; removed peers are forgotten.
    /// Our own id in the set is ignored. The first heartbeat round to the new set is due at
    /// `now`, and a `PeerStatus` follows the change (subject to the once-per-interval gate).
    ///
    /// `desired` is expected to be valid (see [`DesiredPeers::validate`]); if it is not, its
    /// timing is clamped to the nearest valid one and duplicate or excess peers are dropped.
    pub fn apply(&mut self, desired: DesiredPeers, now: Instant) -> Applied {
        if desired.epoch < self.epoch {
            self.stats.stale_peer_sets += 1;
            return Applied::Stale;
        }
        if desired.epoch == self.epoch {
            return Applied::Unchanged;
        }
        let mut old = std::mem::take(&mut self.peers);
        let mut peers: Vec<PeerEntry> = Vec::with_capacity(desired.peers.len().min(MAX_PEERS));
        for info in desired.peers {
            if info.node_id == self.self_id
                || peers.len() >= MAX_PEERS
                || peers.iter().any(|p| p.info.node_id == info.node_id)
            {
                continue;
            }
            match old.iter().position(|p| p.info.node_id == info.node_id) {
                Some(i) => {
                    let mut kept = old.swap_remove(i);
                    if kept.info.addr != info.addr {
                        kept.elsewhere = false;
                    }
                    kept.info = info;
                    peers.push(kept);
                }
                None => peers.push(PeerEntry {
                    info,
                    liveness: PeerLiveness::Unknown,
                    last_heard: now,
                    elsewhere: false,
                }),
            }
        }
        self.peers = peers;
        self.epoch = desired.epoch;
        self.timing = desired.timing.clamped();
        self.next_send = (!self.peers.is_empty()).then_some(now);
        self.status.pending = true;
        self.emit_status_if_due(now);
        Applied::Updated
    }

    /// An authenticated heartbeat arrived from `from` at `from_addr`.
    ///
    /// From a peer: it is alive (whatever address it came from — identity is the node id; a
    /// switch of source address is counted in [`Stats::address_changes`]). From anyone else: a
    /// martian, reported at most once per sender per dead time.
    pub fn heartbeat_received(
        &mut self,
        from: NodeId,
        from_addr: SocketAddr,
        heartbeat: &Heartbeat,
        now: Instant,
    ) {
        // The sender's epoch and interval are informational; our own peer set decides.
        let _ = heartbeat;
        self.stats.heartbeats_received += 1;
        let Some(peer) = self.peers.iter_mut().find(|p| p.info.node_id == from) else {
            self.martian(from, from_addr, now);
            return;
        };
        let moved = !same_endpoint(from_addr, peer.info.addr);
        if moved && !peer.elsewhere {
            self.stats.address_changes += 1;
        }
        peer.elsewhere = moved;
        let silent = now.saturating_duration_since(peer.last_heard);
        // Never move last_heard backwards if inputs arrive out of order.
        peer.last_heard = peer.last_heard.max(now);
        let was = std::mem::replace(&mut peer.liveness, PeerLiveness::Alive);
        match was {
            // Late was never reported: nothing to take back.
            PeerLiveness::Alive | PeerLiveness::Late => {}
            PeerLiveness::Unknown => self.status.pending = true,
            PeerLiveness::Dead => {
                let addr = peer_addr_of(peer);
                let report = self.report(ReportKind::BackAlive, from, addr, silent);
                self.push_report(report);
                self.status.pending = true;
            }
        }
        if self.status.pending {
            self.emit_status_if_due(now);
        }
    }

    /// Acts on every deadline that has passed at `now`: late and dead peers, the heartbeat round,
    /// a pending status. Safe to call at any time, early or very late.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timing = self.timing;
        for i in 0..self.peers.len() {
            let peer = &mut self.peers[i];
            let Some(to) = peer.degraded(&timing, now) else { continue };
            peer.liveness = to;
            if to == PeerLiveness::Late {
                // Kept here unless it turns into dead (module documentation).
                continue;
            }
            let silent = now.saturating_duration_since(peer.last_heard);
            let (id, addr) = (peer.info.node_id, peer_addr_of(peer));
            let report = self.report(ReportKind::Dead, id, addr, silent);
            self.push_report(report);
            self.status.pending = true;
        }
        if self.next_send.is_some_and(|t| t <= now) {
            let heartbeat = Heartbeat { epoch: self.epoch, interval_ms: timing.interval_ms() };
            for p in &self.peers {
                self.actions.push_back(Action::SendHeartbeat {
                    to: p.info.node_id,
                    addr: p.info.addr,
                    heartbeat: heartbeat.clone(),
                });
            }
            self.stats.heartbeats_sent += self.peers.len() as u64;
            // One round only, however late we are; the next one interval from now.
            self.next_send = Some(now + timing.interval);
        }
        self.emit_status_if_due(now);
    }

    /// The earliest instant at which `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.iter().filter_map(|p| p.deadline(&self.timing));
        peers.chain(self.next_send).chain(self.status_due()).min()
    }

    /// The next action for the driver, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whom we expect heartbeats from (with their liveness) and whom we send to, as of our epoch.
    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            epoch: self.epoch,
            expecting: self
                .peers
                .iter()
                .map(|p| PeerState {
                    peer: p.info.node_id.as_bytes().to_vec(),
                    liveness: p.liveness as i32,
                })
                .collect(),
            sending_to: self.peers.iter().map(|p| p.info.node_id.as_bytes().to_vec()).collect(),
            // This core has no wall clock: the shell stamps `at` when it spools the status.
            at: 0,
        }
    }

    /// Drops the peer set: no more heartbeats are sent or expected. The epoch is kept, so only
    /// a newer peer set is applied afterwards. Actions already queued stay queued; a status
    /// reflecting the empty set follows (immediately if none was ever sent, else when the
    /// once-per-interval gate opens — see `poll_timeout`).
    pub fn forget_all(&mut self) {
        self.peers = Vec::new();
        self.next_send = None;
        self.status.pending = true;
        if self.status.last_at.is_none() {
            self.emit_status();
        }
    }

    // --- internals ------------------------------------------------------------------------

    fn martian(&mut self, from: NodeId, from_addr: SocketAddr, now: Instant) {
        self.stats.martians += 1;
        if self.martians.should_report(from, now, self.timing.dead) {
            let report =
                self.report(ReportKind::Martian, from, from_addr.to_string(), Duration::ZERO);
            self.push_report(report);
        }
    }

    fn report(
        &self,
        kind: ReportKind,
        peer: NodeId,
        peer_addr: String,
        silent: Duration,
    ) -> HeartbeatReport {
        HeartbeatReport {
            kind: kind as i32,
            peer: peer.as_bytes().to_vec(),
            peer_addr,
            silent_ms: millis(silent),
            epoch: self.epoch,
            // This core has no wall clock: the shell stamps `at` when it spools the report.
            at: 0,
        }
    }

    fn push_report(&mut self, report: HeartbeatReport) {
        self.stats.reports_emitted += 1;
        self.actions.push_back(Action::Report(report));
    }

    /// When a pending status may go out.
    fn status_due(&self) -> Option<Instant> {
        if !self.status.pending {
            return None;
        }
        // With no `last_at` a pending status is emitted on the spot, so this is the only case
        // that waits.
        self.status.last_at.map(|t| t + self.timing.interval)
    }

    fn emit_status_if_due(&mut self, now: Instant) {
        if !self.status.pending {
            return;
        }
        if self.status.last_at.is_some_and(|t| now < t + self.timing.interval) {
            return;
        }
        if self.emit_status() {
            self.status.last_at = Some(now);
        }
    }

    /// Emits the current status unless it equals the last one sent. Returns whether it did.
    fn emit_status(&mut self) -> bool {
        self.status.pending = false;
        let fingerprint = self.fingerprint();
        if self.status.last_sent == Some(fingerprint) {
            return false;
        }
        self.status.last_sent = Some(fingerprint);
        self.actions.push_back(Action::Status(self.status()));
        true
    }

    /// A digest of (epoch, peers and their liveness, Late counted as Alive: a status never goes
    /// out for lateness alone). SipHash with fixed keys: deterministic across runs; 8 bytes
    /// instead of a copy of the last status.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.epoch.hash(&mut h);
        self.peers.len().hash(&mut h);
        for p in &self.peers {
            p.info.node_id.hash(&mut h);
            let liveness = match p.liveness {
                PeerLiveness::Late => PeerLiveness::Alive,
                l => l,
            };
            (liveness as i32).hash(&mut h);
        }
        h.finish()
    }
}

/// The address a report names for a peer: where we expect it.
fn peer_addr_of(peer: &PeerEntry) -> String {
    peer.info.addr.to_string()
}

/// Same IP and port, treating IPv4-mapped IPv6 (as seen on a dual-stack socket) as IPv4.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timing;

    const S: Duration = Duration::from_secs(1);

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn info(n: u8) -> PeerInfo {
        PeerInfo {
            node_id: id(n),
            addr: format!("10.0.0.{n}:1984").parse().unwrap(),
            public_key: [n; 32],
        }
    }

    /// The timing these tests are written for: 1 s / 3 s / 5 s.
    fn timing() -> Timing {
        Timing::from_millis(1000, 3000, 5000)
    }

    fn desired(epoch: u64, peers: &[u8]) -> DesiredPeers {
        DesiredPeers { epoch, peers: peers.iter().map(|&n| info(n)).collect(), timing: timing() }
    }

    fn hb() -> Heartbeat {
        Heartbeat { epoch: 1, interval_ms: 1000 }
    }

    fn drain(h: &mut Heartbeats) -> Vec<Action> {
        std::iter::from_fn(|| h.poll_action()).collect()
    }

    fn reports(actions: &[Action]) -> Vec<(ReportKind, NodeId)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) => Some((
                    ReportKind::try_from(r.kind).unwrap(),
                    NodeId::from_slice(&r.peer).unwrap(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn new_core_is_idle() {
        let mut h = Heartbeats::new(id(0));
        assert_eq!(h.epoch(), 0);
        assert_eq!(h.timing(), Timing::default());
        assert_eq!(h.peers().count(), 0);
        assert_eq!(h.poll_timeout(), None);
        assert_eq!(h.poll_action(), None);
        h.handle_timeout(Instant::now());
        assert_eq!(h.poll_action(), None);
    }

    #[test]
    fn apply_schedules_first_round_now_and_emits_status() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        assert_eq!(h.apply(desired(3, &[1, 2]), t0), Applied::Updated);
        assert_eq!(h.poll_timeout(), Some(t0));
        let a = drain(&mut h);
        assert_eq!(a, vec![Action::Status(h.status())]);
        h.handle_timeout(t0);
        let a = drain(&mut h);
        assert_eq!(a.len(), 2);
        assert!(matches!(
            &a[0],
            Action::SendHeartbeat { to, heartbeat: Heartbeat { epoch: 3, interval_ms: 1000 }, .. }
                if *to == id(1)
        ));
        assert_eq!(h.poll_timeout(), Some(t0 + S));
    }

    #[test]
    fn own_id_is_ignored() {
        let mut h = Heartbeats::new(id(1));
        h.apply(desired(1, &[1, 2]), Instant::now());
        let ids: Vec<_> = h.peers().map(|(p, _)| p.node_id).collect();
        assert_eq!(ids, vec![id(2)]);
    }

    #[test]
    fn hand_built_duplicates_and_bad_timing_are_defused() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        let mut d = desired(1, &[1, 1, 2]);
        d.timing = Timing::from_millis(0, 0, 0);
        h.apply(d, t0);
        assert_eq!(h.peers().count(), 2);
        h.timing().validate().unwrap();
        h.handle_timeout(t0);
        assert!(h.poll_timeout().unwrap() > t0);
    }

    #[test]
    fn suspended_process_sends_one_round() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1, 2]), t0);
        drain(&mut h);
        let later = t0 + Duration::from_secs(3600);
        h.handle_timeout(later);
        let a = drain(&mut h);
        let sends = a.iter().filter(|a| matches!(a, Action::SendHeartbeat { .. })).count();
        assert_eq!(sends, 2);
        // Never heard: both dead, once, with no Late (grace period).
        assert_eq!(reports(&a), vec![(ReportKind::Dead, id(1)), (ReportKind::Dead, id(2))]);
        assert_eq!(h.poll_timeout(), Some(later + S));
    }

    #[test]
    fn alive_peer_past_dead_at_once_reports_dead_only() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1]), t0);
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0);
        drain(&mut h);
        h.handle_timeout(t0 + Duration::from_secs(60));
        let a = drain(&mut h);
        assert_eq!(reports(&a), vec![(ReportKind::Dead, id(1))]);
        let Some(Action::Report(r)) = a.iter().find(|a| matches!(a, Action::Report(_))) else {
            unreachable!()
        };
        assert_eq!(r.silent_ms, 60_000);
        assert_eq!(r.peer_addr, "10.0.0.1:1984");
        assert_eq!(r.epoch, 1);
    }

    #[test]
    fn address_change_counts_once_and_keeps_peer_alive() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1]), t0);
        let other: SocketAddr = "10.9.9.9:1984".parse().unwrap();
        for k in 0..3 {
            h.heartbeat_received(id(1), other, &hb(), t0 + S * k);
        }
        // Dual-stack socket view of the expected address is the expected address.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:1984".parse().unwrap();
        h.heartbeat_received(id(1), mapped, &hb(), t0 + S * 3);
        h.heartbeat_received(id(1), other, &hb(), t0 + S * 4);
        assert_eq!(h.stats().address_changes, 2);
        assert_eq!(h.stats().martians, 0);
        assert_eq!(h.peers().next().unwrap().1, PeerLiveness::Alive);
        assert!(reports(&drain(&mut h)).is_empty());
    }

    #[test]
    fn status_is_coalesced_and_newest_wins() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1, 2]), t0);
        assert_eq!(drain(&mut h).len(), 1); // status at once
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0 + Duration::from_millis(100));
        h.heartbeat_received(id(2), info(2).addr, &hb(), t0 + Duration::from_millis(200));
        assert!(drain(&mut h).is_empty(), "inside the window");
        assert_eq!(h.poll_timeout(), Some(t0)); // the round is still due
        h.handle_timeout(t0 + Duration::from_millis(300));
        let statuses: Vec<_> = drain(&mut h)
            .into_iter()
            .filter_map(|a| match a {
                Action::Status(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(statuses.is_empty());
        h.handle_timeout(t0 + S);
        let statuses: Vec<_> = drain(&mut h)
            .into_iter()
            .filter_map(|a| match a {
                Action::Status(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, vec![h.status()]);
        assert!(statuses[0].expecting.iter().all(|p| p.liveness == PeerLiveness::Alive as i32));
    }

    #[test]
    fn change_and_revert_inside_window_sends_nothing() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1]), t0);
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0);
        h.handle_timeout(t0);
        drain(&mut h);
        // Alive at t0+1 s (status window from t0 passed, status sent for Alive).
        h.handle_timeout(t0 + S);
        assert!(drain(&mut h).iter().any(|a| matches!(a, Action::Status(_))));
        // Dead at t0+5 s: report and status (window open).
        h.handle_timeout(t0 + S * 5);
        let a = drain(&mut h);
        assert_eq!(reports(&a), vec![(ReportKind::Dead, id(1))]);
        assert!(a.iter().any(|a| matches!(a, Action::Status(_))));
        // Back alive at 5.1 s and nothing else: the pending status is Alive, which differs from
        // Dead, so it goes out when the window closes at 6 s.
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0 + Duration::from_millis(5100));
        let a = drain(&mut h);
        assert_eq!(reports(&a), vec![(ReportKind::BackAlive, id(1))]);
        assert!(!a.iter().any(|a| matches!(a, Action::Status(_))));
        h.handle_timeout(t0 + S * 6);
        assert!(drain(&mut h).iter().any(|a| matches!(a, Action::Status(_))));
    }

    #[test]
    fn late_is_kept_here_unless_it_turns_into_dead() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1, 2]), t0);
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0);
        h.heartbeat_received(id(2), info(2).addr, &hb(), t0);
        h.handle_timeout(t0);
        h.handle_timeout(t0 + S);
        assert!(drain(&mut h).iter().any(|a| matches!(a, Action::Status(_))));
        // Peer 1 late at 3 s (warn time): nothing goes to the CMA, not even a status.
        h.heartbeat_received(id(2), info(2).addr, &hb(), t0 + S * 3);
        h.handle_timeout(t0 + S * 3);
        assert_eq!(h.peers().next().unwrap().1, PeerLiveness::Late);
        let a = drain(&mut h);
        assert!(a.iter().all(|a| matches!(a, Action::SendHeartbeat { .. })), "{a:?}");
        // Back before the dead time: still nothing, and no status later either.
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0 + Duration::from_millis(3500));
        h.handle_timeout(t0 + S * 4);
        h.handle_timeout(t0 + S * 5);
        let a = drain(&mut h);
        assert!(a.iter().all(|a| matches!(a, Action::SendHeartbeat { .. })), "{a:?}");
        assert_eq!(h.stats().reports_emitted, 0);
        // A status sent for another reason (peer 2 dead) tells the truth: peer 1 late.
        h.heartbeat_received(id(2), info(2).addr, &hb(), t0 + S * 5);
        h.handle_timeout(t0 + S * 8); // 1 silent 4.5 s (late), 2 silent 3 s (late)
        h.handle_timeout(t0 + S * 10); // 1 silent 6.5 s: dead; 2 silent 5 s: dead
        let a = drain(&mut h);
        assert_eq!(reports(&a), vec![(ReportKind::Dead, id(1)), (ReportKind::Dead, id(2))]);
        let st = h.status();
        assert!(st.expecting.iter().all(|p| p.liveness == PeerLiveness::Dead as i32));
        assert!(a.iter().any(|a| matches!(a, Action::Status(s) if *s == st)));
        // Late, then dead, then back: back-alive reported.
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0 + Duration::from_millis(10_100));
        assert_eq!(reports(&drain(&mut h)), vec![(ReportKind::BackAlive, id(1))]);
    }

    #[test]
    fn a_status_sent_for_another_reason_carries_late() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1, 2]), t0);
        h.heartbeat_received(id(1), info(1).addr, &hb(), t0);
        h.heartbeat_received(id(2), info(2).addr, &hb(), t0);
        h.handle_timeout(t0 + S);
        drain(&mut h);
        // Peer 1 goes late at 3 s; a new peer set (epoch 2, same peers) at 3.5 s sends a status.
        h.heartbeat_received(id(2), info(2).addr, &hb(), t0 + S * 3);
        h.handle_timeout(t0 + S * 3);
        h.apply(desired(2, &[1, 2]), t0 + Duration::from_millis(3500));
        let statuses: Vec<PeerStatus> = drain(&mut h)
            .into_iter()
            .filter_map(|a| match a {
                Action::Status(s) => Some(s),
                _ => None,
            })
            .collect();
        let [st] = &statuses[..] else { panic!("{statuses:?}") };
        let of = |n: u8| {
            st.expecting.iter().find(|p| p.peer == id(n).as_bytes().to_vec()).unwrap().liveness
        };
        assert_eq!(
            (st.epoch, of(1), of(2)),
            (2, PeerLiveness::Late as i32, PeerLiveness::Alive as i32)
        );
    }

    #[test]
    fn forget_all_keeps_epoch_and_stops_everything() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(5, &[1, 2]), t0);
        h.handle_timeout(t0);
        drain(&mut h);
        h.forget_all();
        assert_eq!(h.epoch(), 5);
        assert_eq!(h.peers().count(), 0);
        // The status of the empty set waits for the gate (a status went out at t0).
        assert_eq!(h.poll_timeout(), Some(t0 + S));
        h.handle_timeout(t0 + S);
        let a = drain(&mut h);
        assert_eq!(a.len(), 1);
        assert!(matches!(&a[0], Action::Status(s) if s.epoch == 5 && s.expecting.is_empty()));
        assert_eq!(h.poll_timeout(), None);
        assert_eq!(h.apply(desired(5, &[1]), t0 + S), Applied::Unchanged);
        assert_eq!(h.apply(desired(6, &[1]), t0 + S), Applied::Updated);
    }

    #[test]
    fn forget_all_before_any_status_emits_at_once() {
        let mut h = Heartbeats::new(id(0));
        h.forget_all();
        // Nothing changed from the (never sent) initial state except that it is now "sent".
        let a = drain(&mut h);
        assert!(matches!(&a[..], [Action::Status(s)] if s.epoch == 0 && s.expecting.is_empty()));
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn retained_peer_address_update_is_used_for_sends() {
        let t0 = Instant::now();
        let mut h = Heartbeats::new(id(0));
        h.apply(desired(1, &[1]), t0);
        let mut d = desired(2, &[1]);
        d.peers[0].addr = "10.1.1.1:2000".parse().unwrap();
        h.apply(d, t0);
        h.handle_timeout(t0);
        let a = drain(&mut h);
        assert!(a.iter().any(|a| matches!(a, Action::SendHeartbeat { addr, .. }
            if *addr == "10.1.1.1:2000".parse::<SocketAddr>().unwrap())));
    }

    #[test]
    fn footprint_is_small() {
        // 100k cores live in one simulator process.
        assert!(std::mem::size_of::<Heartbeats>() <= 320, "{}", std::mem::size_of::<Heartbeats>());
        assert!(std::mem::size_of::<PeerEntry>() <= 128, "{}", std::mem::size_of::<PeerEntry>());
    }
}
