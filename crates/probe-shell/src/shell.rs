//! [`Shell`]: one nanoprobe's logic above the cores, without IO.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_checks::runner::clip;
use assim_checks::{ApplyOutcome, Check, CheckResult, Scheduler};
use assim_discovery::schedule::{Applied as ScheduleApplied, Entry};
use assim_discovery::{ChangeFilter, Discovery, HostEvents, Schedule};
use assim_probe::{Action as HbAction, Applied, DesiredPeers, Heartbeats, PeerSetError};
use assim_probe::{PeerProbeOutput, PeerProbes};
use assim_reliable::{Connection, Event as RelEvent, SendError};
use assim_seal::Sealer;
use assim_wire::msg::{self, Body, CheckState, Direct, DirectBody, Message};
use assim_wire::{DatagramKind, NodeId};
use tracing::{debug, error, info, warn};

use crate::apps::{self, AppError, Apps};
use crate::backlog::{Backlog, Pushed, Subject};
use crate::cma_addrs::{CmaAddrs, CmaAddrsError};
use crate::limits::{MAX_MESSAGE, fit, fit_body};
use crate::spool::{Refused, Spool, SpoolStorage};

/// How long unacknowledged records wait, with the connection idle, before they are sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);
/// How long a leaving nanoprobe waits for its goodbye to be acknowledged.
pub const LEAVE_WAIT: Duration = Duration::from_secs(3);
/// Checks running at once, at most.
pub const MAX_CONCURRENT_CHECKS: usize = 32;
pub use assim_checks::{LOCAL_CHECK_PREFIX, LOCAL_CHECKS_RESULT};
/// Local checks at most.
pub const MAX_LOCAL_CHECKS: usize = 64;
/// How many sealer keys of nodes that are not heartbeat peers (probe targets the CMA named,
/// probers that reached us) are kept; the oldest is forgotten beyond this.
pub const MAX_TRANSIENT_PEERS: usize = 64;
/// The collector name of the LLDP/CDP listener's table.
pub use assim_discovery::L2_COLLECTOR;

/// What a shell is built from.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// This node.
    pub node_id: NodeId,
    /// The CMA this node obeys.
    pub cma_id: NodeId,
    /// Where to reach it (updated from the source of its frames). More addresses to fail over
    /// to: [`Shell::with_cma_addrs`].
    pub cma_addr: SocketAddr,
    /// The reliable session (a new one per process start) and the seed of its randomness.
    pub session: u64,
    pub seed: u64,
    /// The hello to send on start and after a CMA restart (`peer_epoch` is filled in).
    pub hello: msg::Hello,
    /// The reliable layer's settings. Its `max_message_size` is capped at [`MAX_MESSAGE`],
    /// which is also the spool's record limit.
    pub reliable: assim_reliable::Config,
    /// Run discovery on the built-in schedule until the CMA sends one (the daemon), or run
    /// none until then (the simulator, whose CMA sends none).
    pub discovery_defaults: bool,
    /// The reporter's own clock, read once by the driver (the shell reads no clock).
    pub wall_clock: WallClock,
}

/// The nanoprobe's wall clock without reading it: at `at` the clock said `micros` (µs since
/// the Unix epoch); later instants count on from there. The daemon moves the anchor each turn
/// ([`Shell::set_wall_clock`]) so a stepped clock is followed; the simulator sets it once from
/// its virtual clock. The shell stamps with it what the CMA orders by the reporter's time
/// (heartbeat reports and peer status, issue 12 item 6), and check and discovery results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    at: Instant,
    micros: u64,
}

impl WallClock {
    /// At `at` the wall clock read `micros`.
    pub fn new(at: Instant, micros: u64) -> WallClock {
        WallClock { at, micros }
    }

    /// The wall clock at `now`, µs since the Unix epoch.
    pub fn micros(&self, now: Instant) -> u64 {
        if now >= self.at {
            let d = u64::try_from(now.duration_since(self.at).as_micros()).unwrap_or(u64::MAX);
            self.micros.saturating_add(d)
        } else {
            let d = u64::try_from(self.at.duration_since(now).as_micros()).unwrap_or(u64::MAX);
            self.micros.saturating_sub(d)
        }
    }
}

/// A datagram to send, before sealing.
#[derive(Clone, Debug, PartialEq)]
pub enum Transmit {
    /// A heartbeat to a ring neighbour.
    Heartbeat { to: NodeId, addr: SocketAddr, heartbeat: msg::Heartbeat },
    /// The answer to a probe: the CMA's (`to` is the CMA) or a prober's on another switch.
    ProbeReply { to: NodeId, addr: SocketAddr, probe: msg::Probe },
    /// A probe of another node that the CMA asked for (`ProbeRequest`); sealed with our key
    /// in the header, since the target may not know us.
    PeerProbe { to: NodeId, addr: SocketAddr, probe: msg::Probe },
    /// A reliable frame for the CMA.
    Cma { addr: SocketAddr, frame: Vec<u8> },
}

/// A sealed datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub to: NodeId,
    pub addr: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What the driver must do, or may want to know.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The CMA asked this nanoprobe to stop.
    Stop { reason: String },
    /// The goodbye was acknowledged: stop now.
    Left,
    /// The goodbye was not acknowledged within [`LEAVE_WAIT`]: stop anyway.
    LeaveTimedOut,
    /// Run this check (scheduled); hand the result to [`Shell::check_done`].
    RunCheck(Check),
    /// Run this check now for a `RunNow` command; hand the result to [`Shell::check_now_done`].
    RunCheckNow { command_id: u64, check: Check },
    /// Run this discovery collector (an agent, a built-in, or the LLDP/CDP table for
    /// [`L2_COLLECTOR`]); hand the result to [`Shell::collector_done`].
    RunCollector { name: String, params: BTreeMap<String, String> },
    /// A hello was queued (`restart`: after a CMA restart); `id` is its reliable id.
    HelloSent { id: u64, restart: bool },
    /// A control message (hello, goodbye, command result) was delivered to the CMA.
    Delivered(u64),
    /// A peer set arrived.
    PeerSet(Result<Applied, PeerSetError>),
    /// A heartbeat report was spooled (`record` 0: sent without the spool).
    Reported { kind: i32, record: u64 },
    /// A message was spooled with this record number.
    Spooled { record: u64, kind: &'static str },
    /// A message from the CMA this version does not act on, or cannot decode.
    Ignored { kind: &'static str },
}

/// Why a message for the CMA did not get a spool record ([`Shell::submit_spooled`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotSpooled {
    /// The spool is full: the message waits in the in-memory backlog, coalesced with older
    /// news on the same subject, until the spool takes it (see `crate::backlog`).
    Backlogged,
    /// The spool is unavailable (its disk failed): sent without its protection (record 0).
    Unspooled,
    /// Refused, nothing sent: the spool is full and the message cannot be coalesced (a local
    /// event) or the backlog has no room. The reason, for the submitter.
    Refused(String),
    /// An oversized message with no error form: nothing to send.
    Empty,
}

/// Counters of the shell besides the spool's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShellStats {
    /// Datagrams dropped (authentication, replay, unexpected kind or sender, a CMA frame of a
    /// stale session).
    pub rejected: u64,
    /// Reliable frames from the CMA that the connection refused.
    pub bad_frames: u64,
    /// Hellos sent again after a CMA restart.
    pub rehellos: u64,
    /// Messages replaced by their error form because they exceeded [`MAX_MESSAGE`].
    pub oversized: u64,
    /// Messages the reliable layer refused to queue (full queue).
    pub queue_refused: u64,
    /// Moves to another CMA address after a silence ([`crate::cma_addrs`]).
    pub cma_failovers: u64,
}

/// One nanoprobe's shell. See the crate doc.
#[derive(Debug)]
pub struct Shell<S: SpoolStorage> {
    cfg: ShellConfig,
    hb: Heartbeats,
    conn: Connection,
    spool: Spool<S>,
    sealer: Option<Sealer>,
    /// The CMA's addresses, the current one, and when to move ([`crate::cma_addrs`]).
    addrs: CmaAddrs,
    last_ack_progress: Instant,
    /// The goodbye's reliable id while leaving (None once acknowledged).
    goodbye: Option<u64>,
    leave_by: Option<Instant>,
    leaving: bool,
    /// A hello went out with the last move to another CMA address ([`Shell::fail_over`]).
    hello_after_move: bool,
    /// The last hello, until the CMA's connection acknowledged it.
    hello_in_flight: Option<u64>,
    done: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    checks: Scheduler,
    checks_waiting: VecDeque<Check>,
    checks_running: usize,
    discovery: Schedule,
    /// Whether the discovery schedule runs (see [`ShellConfig::discovery_defaults`]).
    discovery_active: bool,
    filter: ChangeFilter,
    /// Events raised from changed results (`raid.degraded`, …), spooled as local events.
    host_events: HostEvents,
    collectors_running: HashSet<String>,
    stats: ShellStats,
    /// Whether peer sets are applied (see [`Shell::without_heartbeats`]).
    heartbeats_on: bool,
    /// What the full spool could not take yet (issue 16 item 10).
    backlog: Backlog,
    /// Heartbeats from local programs (issue 17 item 6).
    apps: Apps,
    /// The registered names and TTLs (ms) last told the CMA ([`apps::APPS_RESULT`]).
    apps_reported: Option<Vec<(String, u64)>>,
    /// Statistics from local programs (issue 17 item 5); off unless the driver enables them.
    statistics: crate::stats::Aggregator,
    /// Check perfdata becomes statistics; the driver adds host figures before each batch
    /// ([`crate::stat_sources`]); what was left out.
    stat_perfdata: bool,
    stat_host: bool,
    stat_dropped: crate::stat_sources::Dropped,
    /// The CMA's check set (newest epoch) and the checks local programs declared: the
    /// scheduler runs their union, under a generation of its own.
    cma_checks: Vec<Check>,
    cma_check_epoch: u64,
    local_checks: BTreeMap<String, Check>,
    check_generation: u64,
    /// The local registrations (apps, local checks) changed since the driver last saved them.
    local_changed: bool,
    /// Probes of other nodes the CMA asked for (issue 13).
    peer_probes: PeerProbes,
    /// Sealer keys held for nodes that are not heartbeat peers, oldest first.
    transient_peers: VecDeque<NodeId>,
}

impl<S: SpoolStorage> Shell<S> {
    /// A shell over an opened spool. `sealer`: `Some` for the drivers that seal (daemon, wire
    /// mode), `None` for the virtual-time simulator, which exchanges [`Transmit`]s directly.
    /// Call [`Shell::start`] next.
    pub fn new(
        mut cfg: ShellConfig,
        spool: Spool<S>,
        mut sealer: Option<Sealer>,
        now: Instant,
    ) -> Shell<S> {
        if let Some(s) = sealer.as_mut() {
            // The CMA's datagrams are replay-checked per sender session (its packet readers),
            // with a slot per CMA address ([`Shell::with_cma_addrs`]).
            s.set_peer_sources(cfg.cma_id, &[cfg.cma_addr]).expect("one address");
        }
        let max = spool.max_record().min(MAX_MESSAGE);
        cfg.reliable.max_message_size = cfg.reliable.max_message_size.min(max);
        let conn = Connection::new(cfg.reliable.clone(), cfg.session, cfg.seed);
        Shell {
            hb: Heartbeats::new(cfg.node_id),
            conn,
            spool,
            sealer,
            addrs: CmaAddrs::single(cfg.cma_addr),
            last_ack_progress: now,
            goodbye: None,
            leave_by: None,
            leaving: false,
            hello_after_move: false,
            hello_in_flight: None,
            done: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            checks: Scheduler::new(cfg.seed ^ 0xc4ec),
            checks_waiting: VecDeque::new(),
            checks_running: 0,
            discovery: Schedule::new(now),
            discovery_active: cfg.discovery_defaults,
            filter: ChangeFilter::new(),
            host_events: HostEvents::new(),
            collectors_running: HashSet::new(),
            stats: ShellStats::default(),
            heartbeats_on: true,
            backlog: Backlog::default(),
            apps: Apps::default(),
            apps_reported: None,
            statistics: crate::stats::Aggregator::new(false, crate::stats::DEFAULT_INTERVAL, now),
            stat_perfdata: false,
            stat_host: false,
            stat_dropped: Default::default(),
            cma_checks: Vec::new(),
            cma_check_epoch: 0,
            local_checks: BTreeMap::new(),
            check_generation: 0,
            local_changed: false,
            peer_probes: PeerProbes::new(cfg.node_id, cfg.seed ^ 0x9e3779b97f4a7c15),
            transient_peers: VecDeque::new(),
            cfg,
        }
    }

    /// A shell that never applies a peer set: it sends no heartbeats and spools no heartbeat
    /// reports or peer status, so its spool holds only what the driver sends (`assim
    /// loadgen`'s senders, whose record numbers are their report numbers).
    pub fn without_heartbeats(mut self) -> Shell<S> {
        self.heartbeats_on = false;
        self
    }

    /// The CMA's addresses to fail over between, in order (call before [`Shell::start`]); the
    /// first becomes current, replacing [`ShellConfig::cma_addr`]. Refused (see
    /// [`crate::cma_addrs::validate`]): none, more than [`crate::cma_addrs::MAX_CMA_ADDRS`], one
    /// twice, an unspecified IP or port 0.
    pub fn with_cma_addrs(mut self, addrs: Vec<SocketAddr>) -> Result<Shell<S>, CmaAddrsError> {
        self.addrs = CmaAddrs::new(addrs)?;
        self.cfg.cma_addr = self.addrs.current();
        if let Some(s) = self.sealer.as_mut() {
            s.set_peer_sources(self.cfg.cma_id, self.addrs.list())
                .expect("a valid list has at most as many addresses as the sealer keeps");
        }
        Ok(self)
    }

    /// Registers with the CMA and sends what the spool still holds from earlier runs.
    pub fn start(&mut self, now: Instant) {
        if self.spool.unacked() > 0 {
            info!(
                records = self.spool.unacked(),
                "the spool holds records the CMA has not acknowledged yet"
            );
        }
        self.send_hello(false, now);
        self.resend_unacked(now);
    }

    // --------------------------------------------------------------------------------------
    // accessors

    /// The heartbeat core.
    pub fn heartbeats(&self) -> &Heartbeats {
        &self.hb
    }
    /// The spool.
    pub fn spool(&self) -> &Spool<S> {
        &self.spool
    }
    /// The reliable connection to the CMA.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
    /// The sealer (drivers that seal).
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_ref()
    }
    /// Counters.
    pub fn stats(&self) -> &ShellStats {
        &self.stats
    }
    /// Messages waiting in the backlog for room in the spool, and their encoded bytes.
    pub fn backlog(&self) -> (usize, usize) {
        (self.backlog.len(), self.backlog.bytes())
    }
    /// The CMA's id and current address.
    pub fn cma(&self) -> (NodeId, SocketAddr) {
        (self.cfg.cma_id, self.addrs.current())
    }
    /// The CMA's addresses, the current one and the moves between them.
    pub fn cma_addrs(&self) -> &CmaAddrs {
        &self.addrs
    }
    /// Whether a goodbye was sent.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }
    /// The epoch of the applied check set.
    pub fn check_epoch(&self) -> u64 {
        self.cma_check_epoch
    }

    /// The discovery schedule (interval of a collector, e.g. to start the LLDP/CDP listener).
    pub fn discovery_schedule(&self) -> &Schedule {
        &self.discovery
    }
    /// The reporter's wall clock at `now`, µs since the Unix epoch.
    pub fn wall_micros(&self, now: Instant) -> u64 {
        self.cfg.wall_clock.micros(now)
    }
    /// The driver read the wall clock: at `now` it said `micros`.
    pub fn set_wall_clock(&mut self, now: Instant, micros: u64) {
        self.cfg.wall_clock = WallClock::new(now, micros);
    }

    // --------------------------------------------------------------------------------------
    // inputs

    /// A sealed datagram from `src` (drivers that seal).
    pub fn handle_datagram(&mut self, datagram: &[u8], src: SocketAddr, now: Instant) {
        let Some(sealer) = self.sealer.as_mut() else {
            self.stats.rejected += 1;
            return;
        };
        // A probe from a node on another switch that the CMA asked to probe us (issue 13)
        // carries its key: opened as a first contact, under the sealer's first-contact budget
        // (one X25519 per admitted datagram), and answered only if it is a probe.
        let first_contact = assim_wire::Header::decode(datagram).is_ok_and(|(h, _)| {
            h.kind == DatagramKind::Direct
                && h.sender_key.is_some()
                && h.sender != self.cfg.cma_id
                && sealer.peer_key(h.sender).is_none()
        });
        let result = if first_contact {
            sealer.set_accept_unknown(true);
            let r = sealer.open_from(now, src, datagram);
            sealer.set_accept_unknown(false);
            r
        } else {
            sealer.open_at(datagram, src)
        };
        let opened = match result {
            Ok(o) => o,
            Err(e) => {
                self.stats.rejected += 1;
                debug!(%src, reason = e.reason(), "datagram rejected");
                return;
            }
        };
        let sender = opened.header.sender;
        if opened.new_peer {
            // A first contact: a probe is answered, anything else refused and forgotten.
            match Direct::from_bytes(&opened.plaintext) {
                Ok(Direct { body: Some(DirectBody::Probe(p)) }) => {
                    self.remember_transient(sender);
                    self.handle_peer_probe(sender, p, src);
                }
                _ => {
                    if let Some(s) = self.sealer.as_mut() {
                        s.remove_peer(sender);
                    }
                    self.stats.rejected += 1;
                    debug!(%src, node = %sender, "a first contact that is not a probe; refused");
                }
            }
            return;
        }
        match opened.header.kind {
            DatagramKind::Reliable if sender == self.cfg.cma_id => {
                self.handle_cma_frame(&opened.plaintext, src, now)
            }
            DatagramKind::Reliable => {
                self.stats.rejected += 1;
                warn!(%src, node = %sender, "a command from a node that is not our CMA; ignored");
            }
            DatagramKind::Direct => match Direct::from_bytes(&opened.plaintext) {
                Ok(Direct { body: Some(DirectBody::Heartbeat(hb)) }) => {
                    self.handle_heartbeat(sender, src, &hb, now)
                }
                Ok(Direct { body: Some(DirectBody::Probe(p)) }) if sender == self.cfg.cma_id => {
                    self.handle_probe(p, src)
                }
                Ok(Direct { body: Some(DirectBody::Probe(p)) }) => {
                    self.handle_peer_probe(sender, p, src)
                }
                Ok(Direct { body: Some(DirectBody::ProbeReply(p)) })
                    if sender != self.cfg.cma_id =>
                {
                    self.handle_peer_probe_reply(sender, p, now)
                }
                _ => self.stats.rejected += 1,
            },
            DatagramKind::KeyRequest | DatagramKind::KeyReply | DatagramKind::Busy => {
                self.stats.rejected += 1
            }
        }
    }

    /// A heartbeat from a ring neighbour (already authenticated).
    pub fn handle_heartbeat(
        &mut self,
        from: NodeId,
        src: SocketAddr,
        hb: &msg::Heartbeat,
        now: Instant,
    ) {
        self.hb.heartbeat_received(from, src, hb, now);
        self.drain_heartbeats(now);
    }

    /// The CMA's probe (already authenticated as coming from the CMA): answer it.
    pub fn handle_probe(&mut self, probe: msg::Probe, src: SocketAddr) {
        self.transmits.push_back(Transmit::ProbeReply { to: self.cfg.cma_id, addr: src, probe });
    }

    /// A probe from `from`, a nanoprobe the CMA asked to probe us (already authenticated):
    /// answer it, to where it came from. Sealed drivers admit these under the sealer's
    /// first-contact budget; the answer is smaller than the probe and says only that this
    /// node is alive.
    pub fn handle_peer_probe(&mut self, from: NodeId, probe: msg::Probe, src: SocketAddr) {
        self.transmits.push_back(Transmit::ProbeReply { to: from, addr: src, probe });
    }

    /// A reply to one of our peer probes (already authenticated).
    pub fn handle_peer_probe_reply(&mut self, from: NodeId, probe: msg::Probe, now: Instant) {
        if !self.peer_probes.reply(from, probe.nonce, now) {
            debug!(node = %from, "a probe reply that answers no request of ours; ignored");
        }
        self.drain_peer_probes(now);
    }

    /// Probes of other nodes the CMA asked for: counters.
    pub fn peer_probe_stats(&self) -> &assim_probe::peer_probe::PeerProbeStats {
        self.peer_probes.stats()
    }

    /// Sends the peer probes due, and each result to the CMA (not spooled: evidence for a
    /// decision due within seconds, worthless after a restart).
    fn drain_peer_probes(&mut self, now: Instant) {
        while let Some(o) = self.peer_probes.poll_output() {
            match o {
                PeerProbeOutput::Send { to, addr, nonce } => {
                    let probe = msg::Probe { nonce };
                    self.transmits.push_back(Transmit::PeerProbe { to, addr, probe });
                }
                PeerProbeOutput::Result(r) => {
                    debug!(command_id = r.command_id, answered = r.answered, "peer probe result");
                    self.send_control(Body::ProbeResult(r), now);
                }
            }
        }
    }

    /// Keeps the sealer key of a node that is not a heartbeat peer, forgetting the oldest
    /// beyond [`MAX_TRANSIENT_PEERS`] (unless it became a heartbeat peer since).
    fn remember_transient(&mut self, node: NodeId) {
        if self.transient_peers.contains(&node) {
            return;
        }
        self.transient_peers.push_back(node);
        while self.transient_peers.len() > MAX_TRANSIENT_PEERS {
            let old = self.transient_peers.pop_front().expect("non-empty");
            let heartbeat_peer = self.hb.peers().any(|(p, _)| p.node_id == old);
            if !heartbeat_peer && let Some(s) = self.sealer.as_mut() {
                s.remove_peer(old);
            }
        }
    }

    /// A reliable frame from the CMA (already authenticated). One the connection accepts
    /// makes `src` the current CMA address: from the current address, the session the
    /// connection follows, or, first after a move ([`crate::cma_addrs`]), any session (another
    /// packet reader: a restart, so the hello and everything unacknowledged go to it); from
    /// another address, only the newest session (a new engine writing to its ring members).
    /// A bad frame, or a stale one (the reader left behind, a deposed engine), moves nothing,
    /// disturbs nothing and is counted in [`ShellStats::rejected`].
    pub fn handle_cma_frame(&mut self, frame: &[u8], src: SocketAddr, now: Instant) {
        let stale = self.conn.stats().stale_frames;
        let result = if src == self.addrs.current() {
            self.conn.handle_frame(frame, now)
        } else {
            self.conn.handle_frame_off_path(frame, now)
        };
        match result {
            Ok(()) if self.conn.stats().stale_frames == stale => {
                if src != self.addrs.current() {
                    info!(from = %self.addrs.current(), to = %src, "the CMA answers from another address; sending there");
                }
                self.addrs.heard(src);
                self.cfg.cma_addr = src;
            }
            Ok(()) => {
                self.stats.rejected += 1;
                debug!(%src, "a frame of an older CMA session; ignored");
            }
            Err(e) => {
                self.stats.bad_frames += 1;
                debug!(error = %e, "bad frame from the CMA");
            }
        }
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                RelEvent::Delivered(bytes) => match Message::from_bytes(&bytes) {
                    Ok(Message { body: Some(Body::Ack(a)), .. }) => self.handle_ack(a, now),
                    Ok(m) => self.handle_command(m, now),
                    Err(e) => {
                        warn!(error = %e, "undecodable message from the CMA");
                        self.events.push_back(Event::Ignored { kind: "undecodable" });
                    }
                },
                RelEvent::PeerRestarted { old, new } => {
                    // While leaving, the goodbye (resent by the reliable layer) is what the
                    // restarted CMA must see; a hello would register us again just before we
                    // stop, and our neighbours would then report us down. (A new session is
                    // also another of the CMA's packet readers after a move: it holds nothing
                    // for us either.) Operators and tests look for this message.
                    if std::mem::take(&mut self.hello_after_move) {
                        // Said when the node moved here; the frames resent below follow it.
                    } else if !self.leaving {
                        info!(old, new, "the CMA restarted; registering again");
                        self.stats.rehellos += 1;
                        self.send_hello(true, now);
                    }
                    self.resend_unacked(now);
                }
                RelEvent::Acked(id) => {
                    self.events.push_back(Event::Delivered(id));
                    if self.hello_in_flight == Some(id) {
                        self.hello_in_flight = None;
                    }
                    if self.goodbye == Some(id) {
                        self.goodbye = None;
                        if !self.done {
                            self.done = true;
                            info!("goodbye acknowledged");
                            self.events.push_back(Event::Left);
                        }
                    }
                }
            }
        }
        self.drain_heartbeats(now);
    }

    fn handle_command(&mut self, m: Message, now: Instant) {
        match m.body {
            Some(Body::PeerSet(_)) if !self.heartbeats_on => {
                debug!("peer set ignored: this shell sends no heartbeats");
                self.events.push_back(Event::Ignored { kind: "peer_set" });
            }
            Some(Body::PeerSet(set)) => match DesiredPeers::try_from(&set) {
                Ok(desired) => {
                    if let Some(s) = self.sealer.as_mut() {
                        for p in &desired.peers {
                            s.add_peer(p.node_id, p.public_key);
                        }
                    }
                    let (epoch, n) = (desired.epoch, desired.peers.len());
                    let outcome = self.hb.apply(desired, now);
                    debug!(epoch, peers = n, ?outcome, "peer set received");
                    self.events.push_back(Event::PeerSet(Ok(outcome)));
                }
                Err(e) => {
                    warn!(error = %e, epoch = set.epoch, "invalid peer set from the CMA; ignored");
                    self.events.push_back(Event::PeerSet(Err(e)));
                }
            },
            Some(Body::Shutdown(s)) => {
                info!(reason = %s.reason, "the CMA asked this nanoprobe to stop");
                self.events.push_back(Event::Stop { reason: s.reason });
            }
            Some(Body::DiscoverySchedule(s)) => self.apply_schedule(s, now),
            Some(Body::CheckSet(set)) => self.apply_check_set(&set, now),
            Some(Body::RunNow(r)) => self.run_now(&r, now),
            Some(Body::ProbeRequest(r)) => match self.peer_probes.request(&r, now) {
                Ok(Some(t)) => {
                    let unknown =
                        self.sealer.as_ref().is_some_and(|s| s.peer_key(t.node).is_none());
                    if let Some(s) = self.sealer.as_mut() {
                        s.add_peer(t.node, t.public_key);
                    }
                    if unknown {
                        self.remember_transient(t.node);
                    }
                    debug!(command_id = r.command_id, target = %t.node, "probing for the CMA");
                    self.drain_peer_probes(now);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "invalid probe request from the CMA; ignored");
                    self.events.push_back(Event::Ignored { kind: "probe_request" });
                }
            },
            Some(other) => {
                debug!(kind = other.name(), "command not handled yet; ignored");
                self.events.push_back(Event::Ignored { kind: other.name() });
            }
            None => {
                debug!("a message of a kind this version does not know; ignored");
                self.events.push_back(Event::Ignored { kind: "unknown" });
            }
        }
    }

    /// The CMA durably holds every record up to `through`: delete them from the spool.
    fn handle_ack(&mut self, ack: msg::Ack, now: Instant) {
        if ack.incarnation != 0 && ack.incarnation != self.spool.incarnation() {
            // It counts the records of a spool this node lost (issue 16 item 9).
            debug!(
                through = ack.through,
                "an acknowledgement for another spool incarnation; ignored"
            );
            return;
        }
        if self.spool.ack(ack.through, now) {
            self.last_ack_progress = now;
            self.drain_backlog(now);
        }
    }

    /// Says goodbye: the driver stops on [`Event::Left`] or [`Event::LeaveTimedOut`].
    /// Checks and discovery stop being scheduled. Returns the goodbye's reliable id.
    pub fn leave(&mut self, now: Instant) -> Option<u64> {
        if self.leaving {
            return self.goodbye;
        }
        self.leaving = true;
        self.leave_by = Some(now + LEAVE_WAIT);
        let body = Body::Goodbye(msg::Goodbye { reason: msg::GoodbyeReason::Shutdown as i32 });
        self.goodbye = self.send_control(body, now);
        self.goodbye
    }

    /// Sends a message that must not be lost through the spool (reports, results, local
    /// events). Returns its record number, or `None` when it did not get one (see
    /// [`Shell::submit_spooled`] for why).
    pub fn send_spooled(&mut self, body: Body, now: Instant) -> Option<u64> {
        self.submit_spooled(body, now).ok()
    }

    /// [`Shell::send_spooled`], saying why a message got no record. When the spool is full,
    /// state (heartbeat reports, peer status, statistics, check results, discovery results)
    /// waits in the backlog, the latest word per subject (see `crate::backlog`); local events
    /// are refused and the submitter must be told. Nothing is dropped silently.
    pub fn submit_spooled(&mut self, body: Body, now: Instant) -> Result<u64, NotSpooled> {
        let mut body = body;
        // The CMA orders liveness evidence by the reporter's own time (issue 16 item 0).
        match &mut body {
            Body::HeartbeatReport(r) if r.at == 0 => r.at = self.wall_micros(now),
            Body::PeerStatus(s) if s.at == 0 => s.at = self.wall_micros(now),
            _ => {}
        }
        let kind = body.name();
        let max = self.spool.max_record();
        // Refuse oversized messages at the source (issue 16 item 2): the error form takes
        // the record instead, so nothing in the spool is too large to send.
        let (body, replaced) = fit_body(body, max);
        if replaced {
            self.stats.oversized += 1;
            error!(
                kind,
                limit = max,
                "a message for the CMA is over the size limit; sending an error result instead"
            );
        }
        let body = body.ok_or(NotSpooled::Empty)?;
        self.drain_backlog(now);
        let subject = Subject::of(&body);
        if let Some(s) = &subject
            && self.backlog.holds(s)
        {
            // Older news on this subject waits: this one replaces it, never overtakes it.
            return self.hold(subject, body, "older news on it waits in the backlog".into());
        }
        match self.spool.append(Message { record: 0, body: Some(body.clone()) }) {
            Ok(record) => {
                self.events.push_back(Event::Spooled { record, kind });
                Ok(record)
            }
            Err(Refused::Full(e)) => self.hold(subject, body, e.to_string()),
            Err(Refused::Failed(e)) => {
                let (bytes, _) = fit(Message { record: 0, body: Some(body.clone()) }, max);
                match self.conn.send(bytes, now) {
                    Ok(_) => {
                        self.spool.stats.unspooled += 1;
                        error!(error = %e, kind, "cannot spool a message for the CMA; sent it without disk protection");
                        Err(NotSpooled::Unspooled)
                    }
                    Err(q) => {
                        self.stats.queue_refused += 1;
                        self.hold(
                            subject,
                            body,
                            format!("{e}, and the queue to the CMA is full: {q}"),
                        )
                    }
                }
            }
        }
    }

    /// Keeps `body` in the backlog, or refuses it (see `crate::backlog`).
    fn hold(
        &mut self,
        subject: Option<Subject>,
        body: Body,
        why: String,
    ) -> Result<u64, NotSpooled> {
        let kind = body.name();
        let refuse = |this: &mut Self, why: String| {
            this.spool.stats.refused += 1;
            if this.spool.stats.refused % 100 == 1 {
                error!(kind, refused = this.spool.stats.refused, reason = %why, "the spool is full: a message for the CMA is refused (local events: the submitter is told)");
            }
            Err(NotSpooled::Refused(why))
        };
        let Some(subject) = subject else { return refuse(self, why) };
        let size = Message { record: 0, body: Some(body.clone()) }.to_bytes().len();
        let pushed = self.backlog.push(subject.clone(), body, size);
        if pushed != Pushed::NoRoom {
            self.spool.stats.backlogged += 1;
        }
        match pushed {
            Pushed::Added => {
                if self.backlog.len() == 1 {
                    warn!(kind, reason = %why, "the spool is full: keeping the latest news per subject in memory until it has room");
                }
                Err(NotSpooled::Backlogged)
            }
            Pushed::Coalesced => {
                self.spool.stats.coalesced += 1;
                Err(NotSpooled::Backlogged)
            }
            Pushed::NoRoom => {
                if let Subject::Discovery(name) = &subject {
                    // Collected again (and sent) at its next run.
                    self.filter.forget(name);
                }
                refuse(self, format!("{why}; the in-memory backlog is full too"))
            }
        }
    }

    /// Moves backlog entries into the spool, oldest first, while it takes them.
    fn drain_backlog(&mut self, now: Instant) {
        while let Some(body) = self.backlog.front() {
            let kind = body.name();
            match self.spool.append(Message { record: 0, body: Some(body.clone()) }) {
                Ok(record) => {
                    self.backlog.pop();
                    self.events.push_back(Event::Spooled { record, kind });
                    if self.backlog.is_empty() {
                        info!("the spool took the backlog");
                    }
                }
                Err(Refused::Full(_)) => return,
                Err(Refused::Failed(_)) => {
                    let max = self.spool.max_record();
                    let (bytes, _) = fit(Message { record: 0, body: Some(body.clone()) }, max);
                    if self.conn.send(bytes, now).is_err() {
                        return;
                    }
                    self.backlog.pop();
                    self.spool.stats.unspooled += 1;
                }
            }
        }
    }

    /// Sends a message that is not spooled (hello, goodbye, command results); returns its
    /// reliable id. An oversized command result is replaced by its error form.
    pub fn send_control(&mut self, body: Body, now: Instant) -> Option<u64> {
        let (bytes, replaced) = fit(Message::new(body), self.spool.max_record());
        if replaced {
            self.stats.oversized += 1;
        }
        self.queue(bytes, now)
    }

    fn queue(&mut self, bytes: Vec<u8>, now: Instant) -> Option<u64> {
        match self.conn.send(bytes, now) {
            Ok(id) => Some(id),
            Err(e) => {
                self.stats.queue_refused += 1;
                warn!(error = %e, "cannot queue a message for the CMA");
                None
            }
        }
    }

    fn send_hello(&mut self, restart: bool, now: Instant) {
        self.cfg.hello.peer_epoch = self.hb.epoch();
        self.cfg.hello.spool_incarnation = self.spool.incarnation();
        // Tells a packet reader that did not take our latest records where to go on (issue 14).
        self.cfg.hello.acked_through = self.spool.stats().acked_through;
        let hello = Body::Hello(self.cfg.hello.clone());
        if let Some(id) = self.send_control(hello, now) {
            self.hello_in_flight = Some(id);
            self.events.push_back(Event::HelloSent { id, restart });
        }
    }

    /// Sends every durable record past the acknowledged position again, in order.
    fn resend_unacked(&mut self, now: Instant) {
        let records = self.spool.unacked_records();
        self.last_ack_progress = now;
        if records.is_empty() {
            return;
        }
        info!(records = records.len(), "sending unacknowledged spool records again");
        let max = self.spool.max_record();
        for bytes in records {
            // A record from an older version that is too large to send goes out in its error
            // form under the same number, so it cannot block the records after it.
            let bytes = if bytes.len() > max {
                self.stats.oversized += 1;
                fit(Message::from_bytes(&bytes).unwrap_or_default(), max).0
            } else {
                bytes
            };
            match self.conn.send(bytes, now) {
                Ok(_) => self.spool.stats.resent += 1,
                Err(SendError::QueueFull { .. }) => {
                    // The rest goes out with the next idle resend.
                    self.stats.queue_refused += 1;
                    break;
                }
                Err(e) => {
                    self.stats.queue_refused += 1;
                    warn!(error = %e, "cannot queue a spooled record");
                }
            }
        }
    }

    fn drain_heartbeats(&mut self, now: Instant) {
        while let Some(action) = self.hb.poll_action() {
            match action {
                HbAction::SendHeartbeat { to, addr, heartbeat } => {
                    self.transmits.push_back(Transmit::Heartbeat { to, addr, heartbeat })
                }
                HbAction::Report(r) => {
                    debug!(
                        kind = msg::ReportKind::try_from(r.kind).map(|k| k.name()).unwrap_or("?"),
                        peer = %NodeId::from_slice(&r.peer).unwrap_or_default(),
                        silent_ms = r.silent_ms,
                        "reporting a peer"
                    );
                    let kind = r.kind;
                    let record = self.send_spooled(Body::HeartbeatReport(r), now).unwrap_or(0);
                    self.events.push_back(Event::Reported { kind, record });
                }
                HbAction::Status(s) => {
                    self.send_spooled(Body::PeerStatus(s), now);
                }
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // checks

    fn apply_check_set(&mut self, set: &msg::CheckSet, now: Instant) {
        let mut checks = Vec::with_capacity(set.checks.len());
        let mut names = HashSet::new();
        for spec in set.checks.iter().take(assim_checks::spec::MAX_CHECKS) {
            match Check::try_from(spec) {
                Ok(c) if names.insert(c.name.clone()) => checks.push(c),
                Ok(c) => {
                    warn!(check = %c.name, "a check appears twice in the check set; the first wins")
                }
                Err(e) => {
                    warn!(epoch = set.epoch, error = %e, "invalid check from the CMA; skipped")
                }
            }
        }
        if set.epoch <= self.cma_check_epoch {
            debug!(epoch = set.epoch, current = self.cma_check_epoch, "older check set ignored");
            return;
        }
        self.cma_check_epoch = set.epoch;
        self.cma_checks = checks;
        if let ApplyOutcome::Applied { added, kept, removed } = self.apply_checks(now) {
            info!(epoch = set.epoch, added, kept, removed, "check set applied")
        }
    }

    /// Gives the scheduler the CMA's checks plus the local ones (a CMA check of the same name
    /// wins, which cannot happen unless the CMA names checks `local:…`).
    fn apply_checks(&mut self, now: Instant) -> ApplyOutcome {
        let mut all = self.cma_checks.clone();
        for (name, c) in &self.local_checks {
            if all.iter().any(|x| &x.name == name) {
                warn!(check = %name, "a check from the CMA has a local check's name; the CMA's runs");
            } else {
                all.push(c.clone());
            }
        }
        self.check_generation += 1;
        self.checks.apply(self.check_generation, all, now)
    }

    fn start_waiting_checks(&mut self) {
        while self.checks_running < MAX_CONCURRENT_CHECKS
            && let Some(check) = self.checks_waiting.pop_front()
        {
            self.checks_running += 1;
            self.events.push_back(Event::RunCheck(check));
        }
    }

    /// A scheduled check finished (stamped with the wall clock at `now`).
    pub fn check_done(&mut self, name: &str, result: &CheckResult, now: Instant) {
        self.checks_running = self.checks_running.saturating_sub(1);
        if !self.leaving {
            self.start_waiting_checks();
        }
        debug!(check = %name, state = result.state.name(), output = %result.output, "check ran");
        if self.stat_perfdata && self.statistics.enabled() && !result.perfdata.is_empty() {
            let samples = crate::stat_sources::perfdata_samples(
                name,
                &result.perfdata,
                &mut self.stat_dropped,
            );
            for s in samples {
                if self.statistics.put(s).is_err() {
                    self.stat_dropped.refused += 1;
                }
            }
        }
        let Some(report) = self.checks.handle_result(name, result, now) else { return };
        info!(
            check = %report.check, state = report.state.name(), flapping = report.flapping,
            initial = report.initial, output = %report.output, "check state changed; telling the CMA"
        );
        let body = Body::CheckStateChange(msg::CheckStateChange {
            check: report.check,
            state: report.state as i32,
            output: report.output,
            perfdata: report.perfdata,
            at: self.wall_micros(now),
            flapping: report.flapping,
            initial: report.initial,
        });
        self.send_spooled(body, now);
    }

    fn run_now(&mut self, r: &msg::RunNow, now: Instant) {
        let Some(entry) = self.checks.get(&r.check) else {
            let mut known: Vec<&str> =
                self.checks.entries().map(|e| e.check.name.as_str()).collect();
            known.truncate(20);
            let error = format!(
                "no check named {:?} on this host (it has: {})",
                r.check,
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            );
            let body = Body::CommandResult(msg::CommandResult {
                command_id: r.command_id,
                ok: false,
                error,
                payload: Vec::new(),
            });
            self.send_control(body, now);
            return;
        };
        info!(check = %entry.check.name, command_id = r.command_id, "running a check now, as the CMA asked");
        self.events
            .push_back(Event::RunCheckNow { command_id: r.command_id, check: entry.check.clone() });
    }

    /// A `RunNow` check finished: answer the command (not spooled: nobody waits for it after a
    /// restart). The payload is JSON `{check, state, output, long_output, perfdata,
    /// duration_ms, exit_code}`.
    pub fn check_now_done(
        &mut self,
        command_id: u64,
        name: &str,
        result: &CheckResult,
        now: Instant,
    ) {
        let payload = serde_json::json!({
            "check": name,
            "state": result.state.name(),
            "output": result.output,
            "long_output": clip(&result.long_output, 8 * 1024),
            "perfdata": result.perfdata,
            "duration_ms": result.duration.as_millis() as u64,
            "exit_code": result.exit_code,
        });
        let body = Body::CommandResult(msg::CommandResult {
            command_id,
            ok: true,
            error: String::new(),
            payload: serde_json::to_vec(&payload).unwrap_or_default(),
        });
        self.send_control(body, now);
    }

    // --------------------------------------------------------------------------------------
    // local programs (issue 17 item 6)

    /// A heartbeat from the local program `name` (registering it if new). Nothing goes to the
    /// CMA unless it had missed a beat: then its recovery (`app:NAME` OK) is spooled.
    pub fn app_heartbeat(
        &mut self,
        name: &str,
        ttl: Duration,
        now: Instant,
    ) -> Result<apps::Beat, AppError> {
        let beat = self.apps.beat(name, ttl, now)?;
        if beat.registered {
            info!(app = %name, ttl_s = ttl.as_secs_f64(), "a local program registered for heartbeats");
        }
        if beat.recovered {
            info!(app = %name, "a local program is beating again; telling the CMA");
            let output = format!("{name} is beating again");
            self.report_app(name, CheckState::Ok, output, now);
        }
        self.local_changed |= beat.changed;
        if beat.changed {
            self.report_apps(now);
        }
        Ok(beat)
    }

    /// The local program `name` finished cleanly: its registration is removed without alarm
    /// (an alarm raised for it clears with an OK).
    pub fn app_done(&mut self, name: &str, now: Instant) -> Result<(), AppError> {
        let missed = self.apps.done(name)?;
        info!(app = %name, "a local program ended its heartbeats");
        if missed {
            let output = format!("{name} finished (`assim app done`)");
            self.report_app(name, CheckState::Ok, output, now);
        }
        self.local_changed = true;
        self.report_apps(now);
        Ok(())
    }

    /// Tells the CMA the registered names and TTLs ([`apps::APPS_RESULT`]) if they differ
    /// from what it last heard in this run.
    fn report_apps(&mut self, now: Instant) {
        let regs: Vec<(String, u64)> = self
            .apps
            .registrations()
            .into_iter()
            .map(|r| (r.name, u64::try_from(r.ttl.as_millis()).unwrap_or(u64::MAX)))
            .collect();
        if self.apps_reported.as_ref() == Some(&regs) {
            return;
        }
        let apps: Vec<serde_json::Value> = regs
            .iter()
            .map(|(name, ttl_ms)| serde_json::json!({ "name": name, "ttl_s": *ttl_ms as f64 / 1000.0 }))
            .collect();
        let d = Discovery::from_value(apps::APPS_RESULT, serde_json::json!({ "apps": apps }));
        self.apps_reported = Some(regs);
        let Ok(payload) = serde_json::to_vec(&d.payload) else { return };
        let body = self.discovery_body(d, payload, now);
        self.send_spooled(body, now);
    }

    /// A local program declared a check (issue 17 item 6): `check.name` must start with
    /// [`LOCAL_CHECK_PREFIX`]. Adds or replaces it (a replaced check with the same command
    /// keeps its state), tells the CMA the local set, and marks the registrations changed.
    pub fn declare_local_check(&mut self, check: Check, now: Instant) -> Result<(), String> {
        if !check.name.starts_with(LOCAL_CHECK_PREFIX) {
            return Err(format!("a local check's name starts with {LOCAL_CHECK_PREFIX:?}"));
        }
        if !self.local_checks.contains_key(&check.name)
            && self.local_checks.len() >= MAX_LOCAL_CHECKS
        {
            return Err(format!(
                "{MAX_LOCAL_CHECKS} local checks are declared on this host already; remove one first"
            ));
        }
        if self.local_checks.get(&check.name) == Some(&check) {
            return Ok(());
        }
        info!(check = %check.name, "a local program declared a check");
        self.local_checks.insert(check.name.clone(), check);
        self.local_checks_changed(now);
        Ok(())
    }

    /// Removes a declared check; `false` if there was none of that name.
    pub fn remove_local_check(&mut self, name: &str, now: Instant) -> bool {
        if self.local_checks.remove(name).is_none() {
            return false;
        }
        info!(check = %name, "a local check was removed");
        self.local_checks_changed(now);
        true
    }

    /// The declared checks.
    pub fn local_checks(&self) -> impl Iterator<Item = &Check> {
        self.local_checks.values()
    }

    /// Replaces the declared checks with those saved by an earlier run (before
    /// [`Shell::start`]); the CMA hears the set again.
    pub fn restore_local_checks(&mut self, checks: Vec<Check>, now: Instant) {
        self.local_checks =
            checks.into_iter().take(MAX_LOCAL_CHECKS).map(|c| (c.name.clone(), c)).collect();
        if !self.local_checks.is_empty() {
            self.apply_checks(now);
            self.report_local_checks(now);
        }
    }

    fn local_checks_changed(&mut self, now: Instant) {
        self.apply_checks(now);
        self.local_changed = true;
        self.report_local_checks(now);
    }

    /// Tells the CMA the declared checks, as the discovery result [`LOCAL_CHECKS_RESULT`] (the
    /// CMA keeps the latest durably; `assim check list` shows them with source `local`).
    fn report_local_checks(&mut self, now: Instant) {
        let checks: Vec<serde_json::Value> = self
            .local_checks
            .values()
            .map(|c| {
                let (kind, argv) = match &c.kind {
                    assim_checks::Kind::Nagios { argv } => ("nagios", argv.clone()),
                    other => (other.name(), Vec::new()),
                };
                serde_json::json!({
                    "name": c.name,
                    "kind": kind,
                    "argv": argv,
                    "interval_s": c.interval.as_secs(),
                    "retry_interval_s": c.retry_interval.as_secs(),
                    "max_attempts": c.max_attempts,
                    "timeout_s": c.timeout.as_secs(),
                })
            })
            .collect();
        let d = Discovery::from_value(LOCAL_CHECKS_RESULT, serde_json::json!({ "checks": checks }));
        let Ok(payload) = serde_json::to_vec(&d.payload) else { return };
        let body = self.discovery_body(d, payload, now);
        self.send_spooled(body, now);
    }

    /// A `DiscoveryResult` of `d` with its payload serialized, stamped now.
    fn discovery_body(&self, d: Discovery, payload: Vec<u8>, now: Instant) -> Body {
        Body::DiscoveryResult(msg::DiscoveryResult {
            name: d.name,
            content_hash: d.hash.to_vec(),
            payload,
            collected_at: self.wall_micros(now),
            delta: false,
        })
    }

    /// Turns statistics from local programs on or off, with their batch interval (issue 17
    /// item 5). Off (the default): every sample is refused and nothing is sent.
    pub fn set_statistics(&mut self, enabled: bool, interval: Duration, now: Instant) {
        self.statistics = crate::stats::Aggregator::new(enabled, interval, now);
    }

    /// Which statistics the nanoprobe makes itself (issue 17 item 5, [`crate::stat_sources`]):
    /// `perfdata`: each scheduled check result's performance data as gauges; `host`: the
    /// driver reads the host figures when [`Shell::host_figures_due`] says so and hands them
    /// to [`Shell::put_host_figures`]. Both need statistics on ([`Shell::set_statistics`]);
    /// while they are off, nothing is made.
    pub fn set_statistics_sources(&mut self, perfdata: bool, host: bool) {
        self.stat_perfdata = perfdata;
        self.stat_host = host;
    }

    /// Whether the driver should read the host figures now: host figures are on and the
    /// statistics interval ends at or before `now` (call before [`Shell::handle_timeout`],
    /// which makes the batch).
    pub fn host_figures_due(&self, now: Instant) -> bool {
        self.stat_host && !self.leaving && self.statistics.poll_timeout().is_some_and(|t| t <= now)
    }

    /// The host figures the driver read, as gauges of the current interval.
    pub fn put_host_figures(&mut self, figures: &crate::stat_sources::HostFigures) {
        if !self.stat_host || !self.statistics.enabled() {
            return;
        }
        for s in crate::stat_sources::host_samples(figures) {
            if self.statistics.put(s).is_err() {
                self.stat_dropped.refused += 1;
            }
        }
    }

    /// Statistics the nanoprobe made itself and left out, by reason.
    pub fn statistics_dropped(&self) -> &crate::stat_sources::Dropped {
        &self.stat_dropped
    }

    /// A sample from a local program, aggregated until the end of the interval.
    pub fn stat_put(
        &mut self,
        sample: crate::stats::Sample,
    ) -> Result<(), crate::stats::StatError> {
        self.statistics.put(sample)
    }

    /// Spools the interval's batch, if anything was put in it.
    fn flush_stats(&mut self, now: Instant) {
        let interval_s = self.statistics.interval().as_secs();
        let clock = self.cfg.wall_clock;
        let Some(batch) = self.statistics.flush(now, |t| clock.micros(t)) else { return };
        debug!(series = batch.series.len(), "statistics batch; spooling it");
        let series = batch
            .series
            .into_iter()
            .map(|a| msg::StatSeries {
                name: a.name,
                tags: a.tags.into_iter().map(|(key, value)| msg::Tag { key, value }).collect(),
                counter: a.kind == crate::stats::Kind::Counter,
                value: a.value,
            })
            .collect();
        let body = Body::Statistics(msg::Statistics {
            counters: Vec::new(),
            series,
            at: batch.at_micros,
            interval_s,
        });
        self.send_spooled(body, now);
    }

    /// The local programs' registrations.
    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// Replaces the registrations with those saved by an earlier run (call before
    /// [`Shell::start`]): each gets a whole TTL from `now`.
    pub fn restore_apps(&mut self, regs: Vec<apps::Registration>, now: Instant) {
        self.apps = Apps::restore(regs, now);
        if !self.apps.is_empty() {
            self.report_apps(now);
        }
    }

    /// Whether the local registrations changed since the last call (the driver saves them).
    pub fn take_local_changed(&mut self) -> bool {
        std::mem::take(&mut self.local_changed)
    }

    fn report_app(&mut self, name: &str, state: CheckState, output: String, now: Instant) {
        let body = Body::CheckStateChange(msg::CheckStateChange {
            check: format!("{}{name}", apps::CHECK_PREFIX),
            state: state as i32,
            output,
            perfdata: String::new(),
            at: self.wall_micros(now),
            flapping: false,
            initial: false,
        });
        self.send_spooled(body, now);
    }

    // --------------------------------------------------------------------------------------
    // discovery

    fn apply_schedule(&mut self, s: msg::DiscoverySchedule, now: Instant) {
        let entries: BTreeMap<String, Entry> = s
            .entries
            .into_iter()
            .map(|e| {
                let params = e.params.into_iter().map(|t| (t.key, t.value)).collect();
                (e.name, Entry { interval_s: e.interval_s, params })
            })
            .collect();
        let n = entries.len();
        match self.discovery.apply(s.epoch, entries, now) {
            ScheduleApplied::Applied { unknown } => {
                self.discovery_active = true;
                info!(epoch = s.epoch, entries = n, "discovery schedule from the CMA applied");
                for name in unknown {
                    warn!(collector = %name, "the CMA schedules a discovery collector this nanoprobe does not have; ignored");
                }
            }
            ScheduleApplied::Stale { current } => {
                debug!(epoch = s.epoch, current, "an older discovery schedule; ignored")
            }
        }
    }

    /// The external agents the driver found (names), so the schedule covers them.
    pub fn set_agents<'a>(&mut self, agents: impl IntoIterator<Item = &'a str>, now: Instant) {
        self.discovery.set_agents(agents, now);
    }

    /// A collector finished (or the LLDP/CDP table changed, `name` = [`L2_COLLECTOR`]):
    /// spools its result if its content changed (stamped with the wall clock at `now`).
    pub fn collector_done(&mut self, name: &str, result: Result<Discovery, String>, now: Instant) {
        self.collectors_running.remove(name);
        if name != L2_COLLECTOR && !self.discovery.enabled(name) {
            return; // disabled (or the agent vanished) while it ran
        }
        let d = match result {
            Ok(d) => d,
            Err(e) => {
                warn!(collector = %name, error = %e, "discovery collector failed");
                return;
            }
        };
        if !self.filter.changed(&d) {
            return;
        }
        let payload = match serde_json::to_vec(&d.payload) {
            Ok(p) => p,
            Err(e) => {
                warn!(collector = %d.name, error = %e, "cannot encode a discovery result");
                return;
            }
        };
        debug!(collector = %d.name, bytes = payload.len(), "discovery changed; sending");
        let raised = self.host_events.observe(&d);
        let body = self.discovery_body(d, payload, now);
        self.send_spooled(body, now);
        // Raised at the host and spooled like any local event (issue 19: raid.degraded).
        for e in raised {
            let ev = msg::LocalEvent {
                event_type: e.event_type,
                severity: e.severity,
                text: e.text,
                tags: e.tags.into_iter().map(|(key, value)| msg::Tag { key, value }).collect(),
                at: self.wall_micros(now),
            };
            let kind = ev.event_type.clone();
            if let Err(why) = self.submit_spooled(Body::LocalEvent(ev), now) {
                error!(event_type = %kind, ?why, "a host event could not be spooled; it is lost");
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // time and outputs

    /// The next time [`Shell::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let resend = (self.spool.unacked() > 0).then_some(self.last_ack_progress + RESEND_AFTER);
        let checks = (!self.leaving && self.checks_running < MAX_CONCURRENT_CHECKS)
            .then(|| self.checks.poll_timeout())
            .flatten();
        let discovery = (!self.leaving && self.discovery_active)
            .then(|| self.discovery.poll_timeout())
            .flatten();
        [
            self.hb.poll_timeout(),
            self.conn.poll_timeout(),
            resend,
            self.spool.retry_at(),
            self.leave_by.filter(|_| !self.done),
            checks,
            discovery,
            (!self.leaving).then(|| self.apps.poll_timeout()).flatten(),
            self.statistics.poll_timeout(),
            self.peer_probes.poll_timeout(),
            self.addrs.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now` (early or late calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.hb.poll_timeout().is_some_and(|t| t <= now) {
            self.hb.handle_timeout(now);
        }
        self.fail_over(now);
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        if self.spool.unacked() > 0 && now >= self.last_ack_progress + RESEND_AFTER {
            if self.conn.is_idle() {
                self.resend_unacked(now);
            } else {
                self.last_ack_progress = now;
            }
        }
        if self.peer_probes.poll_timeout().is_some_and(|t| t <= now) {
            self.peer_probes.handle_timeout(now);
            self.drain_peer_probes(now);
        }
        if let Some(by) = self.leave_by
            && now >= by
            && !self.done
        {
            self.done = true;
            warn!("the CMA did not acknowledge the goodbye in time; stopping anyway");
            self.events.push_back(Event::LeaveTimedOut);
        }
        if !self.leaving {
            if self.checks.poll_timeout().is_some_and(|t| t <= now) {
                let due = self.checks.due(now);
                self.checks_waiting.extend(due);
                self.start_waiting_checks();
            }
            if self.discovery_active && self.discovery.poll_timeout().is_some_and(|t| t <= now) {
                for name in self.discovery.due(now) {
                    if name != L2_COLLECTOR && !self.collectors_running.insert(name.clone()) {
                        debug!(collector = %name, "still running from its last turn; skipped");
                        continue;
                    }
                    let params = self.discovery.params(&name);
                    self.events.push_back(Event::RunCollector { name, params });
                }
            }
            if self.statistics.poll_timeout().is_some_and(|t| t <= now) {
                self.flush_stats(now);
            }
            if self.apps.poll_timeout().is_some_and(|t| t <= now) {
                for m in self.apps.due(now) {
                    let secs = m.ttl.as_secs_f64();
                    warn!(app = %m.name, ttl_s = secs, "a local program missed its heartbeat; telling the CMA");
                    let output = format!(
                        "{} sent no heartbeat within its TTL of {secs} s (`assim app heartbeat`)",
                        m.name
                    );
                    self.report_app(&m.name, CheckState::Critical, output, now);
                    self.local_changed = true;
                }
            }
        }
        self.drain_heartbeats(now);
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Commits the spool (one fsync for everything appended since the last call), queues the
    /// now-durable records, and returns the next datagram to send, unsealed. Drivers call it
    /// after each batch of inputs until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        if !self.backlog.is_empty() {
            self.drain_backlog(now);
        }
        if self.spool.uncommitted() > 0 || self.spool.retry_at().is_some_and(|t| t <= now) {
            let committed = self.spool.commit(now);
            if self.spool.incarnation() != self.cfg.hello.spool_incarnation && !self.leaving {
                // The spool was lost and reopened under a new incarnation (issue 16 item 9):
                // the CMA must hear of it before the first record numbered under it.
                info!("the spool restarted its record numbers; registering again");
                self.send_hello(true, now);
            }
            for bytes in committed {
                if let Err(e) = self.conn.send(bytes, now) {
                    self.stats.queue_refused += 1;
                    warn!(error = %e, "cannot queue a spooled record; it stays in the spool and is resent later");
                }
            }
        }
        let frame = self.conn.poll_transmit(now);
        self.addrs.set_waiting(self.owes_cma(), now);
        Some(Transmit::Cma { addr: self.addrs.current(), frame: frame? })
    }

    /// Whether something sent to the CMA awaits its acknowledgement (the silence that counts).
    fn owes_cma(&self) -> bool {
        self.conn.stats().queued_messages > 0
    }

    /// Moves to the CMA's next address if the current one was silent too long
    /// ([`crate::cma_addrs`]), and sends what is unacknowledged there at once.
    fn fail_over(&mut self, now: Instant) {
        self.addrs.set_waiting(self.owes_cma(), now);
        let Some(m) = self.addrs.handle_timeout(now) else { return };
        self.cfg.cma_addr = m.to;
        self.stats.cma_failovers += 1;
        warn!(
            from = %m.from, to = %m.to, silent_ms = m.silent.as_millis() as u64,
            next_try_s = m.next_dwell.as_secs(), failovers = self.stats.cma_failovers,
            "the CMA does not answer at this address; trying its next one"
        );
        self.conn.path_changed(now);
        if !self.leaving {
            // The CMA there may not know this node: a packet reader that never saw it, whose
            // hello to the last reader never became durable (issue 14). A hello now (unless one
            // not yet acknowledged goes there anyway) lets it enrol the node or find it
            // registered; the restart its first frame shows then needs no second one.
            if self.hello_in_flight.is_none() {
                self.stats.rehellos += 1;
                self.send_hello(true, now);
            }
            self.hello_after_move = true;
        }
    }

    /// [`Shell::poll_transmit`], sealed. Needs a sealer; datagrams that cannot be sealed (no
    /// key for the peer) are skipped and counted.
    pub fn poll_datagram(&mut self, now: Instant) -> Option<Datagram> {
        loop {
            let t = self.poll_transmit(now)?;
            let (to, addr, kind, include_key, plaintext) = match t {
                Transmit::Heartbeat { to, addr, heartbeat } => {
                    let d = Direct { body: Some(DirectBody::Heartbeat(heartbeat)) };
                    (to, addr, DatagramKind::Direct, false, d.to_bytes())
                }
                Transmit::ProbeReply { to, addr, probe } => {
                    let d = Direct { body: Some(DirectBody::ProbeReply(probe)) };
                    (to, addr, DatagramKind::Direct, false, d.to_bytes())
                }
                Transmit::PeerProbe { to, addr, probe } => {
                    let d = Direct { body: Some(DirectBody::Probe(probe)) };
                    (to, addr, DatagramKind::Direct, true, d.to_bytes())
                }
                Transmit::Cma { addr, frame } => {
                    (self.cfg.cma_id, addr, DatagramKind::Reliable, true, frame)
                }
            };
            let sealer = self.sealer.as_mut()?;
            let mut bytes = Vec::with_capacity(plaintext.len() + 96);
            match sealer.seal(to, kind, include_key, &plaintext, &mut bytes) {
                Ok(()) => return Some(Datagram { to, addr, bytes }),
                Err(e) => {
                    self.stats.rejected += 1;
                    debug!(node = %to, error = %e, "cannot seal a datagram");
                }
            }
        }
    }
}
