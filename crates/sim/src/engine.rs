//! The discrete-event engine: one event queue in virtual time, the nanoprobes (each the real
//! nanoprobe shell, `assim-probe-shell`: heartbeat core, reliable connection and a spool in an
//! `assim-log` over `MemStorage`), the CMA (the real CMA shell, `assim-cma-shell`: reader,
//! enrolment, the inbox's next-record rule and group commit in an `assim-log` over
//! `MemStorage`, the `assim-cma` core, the in-memory engine store) and the network.
//!
//! Both sides only feed their shell (start, datagrams, timers, a leave) and carry out what it
//! emits: the hello/goodbye/CMA-restart rules, the spool and its resends, peer-set handling,
//! enrolment, the next-record rule (a record is taken only if it is the next of its sender;
//! record 0, hellos and goodbyes, always), `Ack { through }` only after the inbox sync, the
//! engine's batches and the replay after a CMA restart are the daemons' own code. A node's
//! spool storage (its disk) survives its crashes and restarts, so a restarted node resends what
//! the CMA had not acknowledged; the CMA's inbox disk and store survive CMA restarts.
//! Enrollment is open: every hello is accepted. Heartbeats, probes and probe replies are single
//! datagrams; nothing is sealed: the nanoprobes drive their shell's layer below sealing (see the
//! `assim-probe-shell` doc for why) and the CMA shell runs with `PlainSeal`, the same header
//! and key bookkeeping without cryptography.
//!
//! Determinism: one `ChaCha8Rng` from the seed draws every random choice in event order; the
//! queue orders by (time, insertion sequence); no hash map is ever iterated. Virtual time is
//! microseconds since the start; `Instant` = a base instant + that, `Timestamp` = a fixed epoch
//! plus that. Deadlines from the cores are rounded up to the microsecond.
//!
//! Timers are lazy: each endpoint remembers the earliest wake it has queued (`armed`); a wake
//! that no longer matches is ignored. The cores tolerate early or late calls anyway.
//!
//! Message accounting: spool records are numbered by the spool (dense per node, across
//! restarts; a `lose_spool` step starts a node's numbers again at 1 under a new incarnation,
//! and the model follows at the CMA's next applied hello of that node). The CMA shell's notes say what its engine applied and what its reader refused: a
//! record at or below the last taken is dropped (counted as a redelivery: resends after a
//! restart, idle resends, or the reliable layer's documented redelivery to a restarted CMA), one
//! that skips ahead is a gap (a violation), and a record the engine applies twice or out of
//! order fails the `CMA inbox rule` check. At
//! the end every node's spool is read back and compared with what the simulation saw spooled
//! (`spool_check`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use assim_cma::{Cma, CmaConfig, EventKind};
use assim_cma_shell::{LogInbox, MemStore, Note, Now, PlainSeal, ShellConfig as CmaShellConfig};
use assim_log::MemStorage;
use assim_probe_shell::{Event, Shell, ShellConfig, Spool, Transmit, WallClock};
use assim_reliable::Config as RelConfig;
use assim_wire::msg::{self, Body, Direct, DirectBody, Heartbeat, Message};
use assim_wire::{DatagramKind, NodeId, Timestamp};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::net::{Fate, Network, Place};
use crate::report::{self, Report};
use crate::scenario::{Scenario, StepKind};

/// "Not armed".
const NONE: u64 = u64::MAX;
/// The CMA's endpoint number.
const CMA: u32 = u32::MAX;
/// The virtual epoch: 2026-01-01T00:00:00Z in µs.
pub const EPOCH_US: u64 = 1_767_225_600_000_000;
/// The spool's size limit of a simulated nanoprobe (the daemon's default).
const SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Virtual time conversions. One clock, two views.
#[derive(Clone, Copy, Debug)]
struct Clock {
    base: Instant,
}

impl Clock {
    fn instant(&self, t: u64) -> Instant {
        self.base + Duration::from_micros(t)
    }
    fn timestamp(t: u64) -> Timestamp {
        Timestamp(EPOCH_US + t)
    }
    fn of_instant(&self, i: Instant) -> u64 {
        let ns = i.saturating_duration_since(self.base).as_nanos();
        u64::try_from(ns.div_ceil(1000)).unwrap_or(NONE - 1)
    }
}

/// A datagram in flight.
#[derive(Clone, Debug)]
enum Packet {
    Heartbeat(Heartbeat),
    Frame(Vec<u8>),
    Probe(u64),
    ProbeReply(u64),
}

/// Why a node crashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CrashCause {
    Random,
    Switch,
    /// A leaving node stopped without its goodbye reaching the CMA (partition, loss).
    GoodbyeLost,
}

#[derive(Debug)]
enum Ev {
    Start(u32),
    NodeWake(u32),
    CmaWake,
    Deliver { from: u32, to: u32, packet: Packet },
    Step(u32),
    Crash(u32, CrashCause),
    PartitionEnd(u32),
    CmaUp,
    Tick,
}

#[derive(Debug)]
struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest (time, seq) first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The kinds of nanoprobe → CMA message, for accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MsgKind {
    Hello = 0,
    Report = 1,
    Status = 2,
    Goodbye = 3,
}

impl MsgKind {
    fn of(body: &Body) -> Option<MsgKind> {
        match body {
            Body::Hello(_) => Some(MsgKind::Hello),
            Body::HeartbeatReport(_) => Some(MsgKind::Report),
            Body::PeerStatus(_) => Some(MsgKind::Status),
            Body::Goodbye(_) => Some(MsgKind::Goodbye),
            _ => None,
        }
    }

    /// The kind of a message by its wire name (`Body::name`).
    fn of_name(name: &str) -> Option<MsgKind> {
        match name {
            "hello" => Some(MsgKind::Hello),
            "heartbeat_report" => Some(MsgKind::Report),
            "peer_status" => Some(MsgKind::Status),
            "goodbye" => Some(MsgKind::Goodbye),
            _ => None,
        }
    }
}

/// Width of a bucket of the event queue's wheel, in µs.
const BUCKET_US: u64 = 1000;
/// Buckets in the wheel (16 s of virtual time at 1 ms).
const WHEEL: u64 = 1 << 14;

/// The event queue: pops entries in (time, insertion sequence) order, exactly like one binary
/// heap would, but keeps the heap small: a wheel of 1 ms buckets holds entries up to 16 s ahead
/// unordered, and a bucket is heapified only when time reaches it; entries further ahead wait
/// in an overflow heap. (One heap of ~300k entries spent a fifth of the run in cache misses.)
#[derive(Debug)]
struct Queue {
    wheel: Vec<Vec<Entry>>,
    in_wheel: usize,
    /// The bucket time has reached; `current` holds its entries (and any pushed for earlier).
    cur: u64,
    current: BinaryHeap<Entry>,
    far: BinaryHeap<Entry>,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            wheel: (0..WHEEL).map(|_| Vec::new()).collect(),
            in_wheel: 0,
            cur: 0,
            current: BinaryHeap::new(),
            far: BinaryHeap::new(),
        }
    }

    fn push(&mut self, e: Entry) {
        let b = e.at / BUCKET_US;
        if b <= self.cur {
            self.current.push(e);
        } else if b < self.cur + WHEEL {
            self.wheel[(b % WHEEL) as usize].push(e);
            self.in_wheel += 1;
        } else {
            self.far.push(e);
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        loop {
            if let Some(e) = self.current.pop() {
                return Some(e);
            }
            if self.in_wheel == 0 {
                // Nothing within the horizon: jump to the earliest far entry.
                self.cur = self.far.peek()?.at / BUCKET_US;
            } else {
                self.cur += 1;
            }
            let slot = std::mem::take(&mut self.wheel[(self.cur % WHEEL) as usize]);
            self.in_wheel -= slot.len();
            self.current = BinaryHeap::from(slot);
            while self.far.peek().is_some_and(|f| f.at / BUCKET_US <= self.cur) {
                let e = self.far.pop().expect("peeked");
                self.current.push(e);
            }
        }
    }
}

/// Queue, clock, rng and network: what every handler needs besides its own endpoint.
#[derive(Debug)]
struct World {
    now: u64,
    seq: u64,
    queue: Queue,
    rng: ChaCha8Rng,
    net: Network,
    clock: Clock,
    switch_of: Vec<u32>,
    steady: (u64, u64),
    counters: report::Counters,
}

impl World {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry { at, seq: self.seq, ev });
    }

    fn place(&self, e: u32) -> Place {
        if e == CMA { Place::Cma } else { Place::Switch(self.switch_of[e as usize]) }
    }

    fn send(&mut self, from: u32, to: u32, packet: Packet) {
        if matches!(packet, Packet::Heartbeat(_))
            && (self.steady.0..self.steady.1).contains(&self.now)
        {
            self.counters.steady_heartbeats += 1;
            if self.switch_of[from as usize] != self.switch_of[to as usize] {
                self.counters.steady_heartbeats_cross += 1;
            }
        }
        if from == CMA {
            self.counters.cma_datagrams_out += 1;
            if (self.steady.0..self.steady.1).contains(&self.now) {
                self.counters.steady_cma_out += 1;
            }
        }
        let (a, b) = (self.place(from), self.place(to));
        match self.net.route(&mut self.rng, a, b) {
            Fate::Deliver(first, second) => {
                if let Some(second) = second {
                    let copy = packet.clone();
                    self.push(self.now + second, Ev::Deliver { from, to, packet: copy });
                }
                self.push(self.now + first, Ev::Deliver { from, to, packet });
            }
            Fate::Cut | Fate::Lost => {}
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    Idle,
    Running,
    Leaving,
    Crashed,
    Left,
}

/// A running nanoprobe: the real shell (heartbeat core, reliable connection, spool).
#[derive(Debug)]
struct Probe {
    shell: Shell<MemStorage>,
    /// Control messages (hello, goodbye) queued and not yet acknowledged: (reliable id, kind).
    controls: VecDeque<(u64, MsgKind)>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) id: NodeId,
    addr: SocketAddr,
    pub(crate) switch: u32,
    pub(crate) life: Life,
    incarnation: u32,
    armed: u64,
    probe: Option<Box<Probe>>,
    /// The node's spool storage (its disk): kept across crashes and restarts.
    spool: Option<MemStorage>,
    /// Spooled records not yet acknowledged, as the simulation saw them spooled (record, kind,
    /// virtual time):
    /// the model the spool is checked against at the end.
    spooled: VecDeque<(u64, MsgKind, u64)>,
    /// The crash (index in `Obs::crashes`) not yet detected.
    pub(crate) crash: Option<usize>,
    /// When it last sent a heartbeat, and when the CMA last made it suspect (virtual µs): a
    /// `host.up` that ends a suspicion is true if a heartbeat was sent after the suspicion
    /// opened, even if the node crashed before the word of it reached the CMA.
    last_heartbeat: u64,
    suspect_at: u64,
    /// Control messages (hello, goodbye) of earlier incarnations unacknowledged when they
    /// stopped.
    lost_candidates: Vec<MsgKind>,
    /// The spool's disk was lost ([`StepKind::LoseSpool`]): its unacknowledged records, until
    /// the CMA applies the next hello (the new incarnation restarts its next-record rule);
    /// then those it never applied count as lost with the disk.
    lost_spool: Option<Vec<(u64, MsgKind)>>,
    lost_with_disk: [u64; 4],
}

/// One crash and what became of it.
#[derive(Clone, Debug)]
pub(crate) struct CrashRec {
    pub(crate) node: u32,
    pub(crate) at: u64,
    pub(crate) cause: CrashCause,
    pub(crate) detected_at: Option<u64>,
    /// Resolved without a host.down: it said hello again (restart) before the CMA confirmed
    /// the crash, or (`GoodbyeLost`) its goodbye arrived after all.
    pub(crate) restarted_first: bool,
    /// The CMA's ring neighbours of the node when it crashed.
    pub(crate) neighbours: Vec<u32>,
    /// Resolved as UNREACHABLE by a switch incident (switch.down / switch.unreachable /
    /// host.unreachable) rather than by host.down.
    pub(crate) unreachable: bool,
}

/// A switch incident event (switch.down, switch.unreachable, switch.up) as observed.
#[derive(Clone, Debug)]
pub(crate) struct SwitchEvent {
    pub(crate) at: u64,
    pub(crate) kind: EventKind,
    /// The simulated switch (from the ring key `switch:sw<N>`).
    pub(crate) switch: Option<u32>,
    /// The hosts it lists.
    pub(crate) hosts: Vec<u32>,
}

/// A host.down the simulator did not expect from a crash.
#[derive(Clone, Debug)]
pub(crate) struct UnexpectedDown {
    pub(crate) node: u32,
    pub(crate) at: u64,
    pub(crate) life: Life,
    pub(crate) text: String,
}

#[derive(Clone, Debug)]
pub(crate) struct PartitionRec {
    pub(crate) switches: Vec<u32>,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) nodes_inside: u64,
    pub(crate) downs_inside: u64,
    pub(crate) ups_inside_after: u64,
    /// `path.suspect` after the heal whose subject or reporter was inside: the words the cut
    /// off hosts spooled, wrongly taken as news (issue 13).
    pub(crate) path_suspects_after: u64,
}

/// What the simulator observed, for the report.
#[derive(Debug, Default)]
pub(crate) struct Obs {
    pub(crate) crashes: Vec<CrashRec>,
    pub(crate) false_downs: Vec<UnexpectedDown>,
    pub(crate) cut_off_downs: Vec<UnexpectedDown>,
    /// host.up for a node that is not running (crashed, left, never started).
    pub(crate) false_ups: Vec<UnexpectedDown>,
    /// host.down again for a node that is crashed and whose crash was already reported.
    pub(crate) repeat_downs: u64,
    /// host.up ending a suspicion of a node that sent heartbeats after the suspicion opened and
    /// crashed before the word of them reached the CMA (not false; see `Node::suspect_at`).
    pub(crate) ups_raced_by_crash: u64,
    pub(crate) partitions: Vec<PartitionRec>,
    pub(crate) registered_at: Option<u64>,
    pub(crate) registered_wall: Option<Duration>,
    pub(crate) cma_restarts: u64,
    /// When the CMA was stopped and when it was due back (virtual µs): nobody can decide a
    /// crash while the CMA is down, so the detection bound does not count that time.
    pub(crate) cma_outages: Vec<(u64, u64)>,
    pub(crate) store_mismatches: u64,
    pub(crate) leaves: u64,
    pub(crate) restarts: u64,
    pub(crate) spools_lost: u64,
    /// switch.* events, in order.
    pub(crate) switch_events: Vec<SwitchEvent>,
    /// Nodes ever made UNREACHABLE.
    pub(crate) unreachable: std::collections::BTreeSet<u32>,
    /// UNREACHABLE for a node that was running and not cut off.
    pub(crate) false_unreachable: Vec<UnexpectedDown>,
    /// When each crashed switch crashed.
    pub(crate) switch_crashed_at: Vec<(u32, u64)>,
}

/// The CMA's shell with the simulator's parts: plain (unsealed) datagrams, an `assim-log` inbox
/// over `MemStorage`, the in-memory engine store.
type CmaShell = assim_cma_shell::Shell<PlainSeal, LogInbox<MemStorage>, MemStore>;

/// Per node: the last spool record the engine applied and the CMA incarnation that applied it
/// (the simulation's model of the inbox, fed by the shell's notes).
type Inbox = HashMap<u32, (u64, u32)>;

#[derive(Debug)]
struct CmaSide {
    /// The running CMA: the real shell around the real core.
    shell: Option<Box<CmaShell>>,
    config: CmaConfig,
    /// CMA incarnation (also its reliable session).
    generation: u32,
    armed: u64,
    /// The engine's store while the CMA is down (the shell owns it while it runs).
    store: MemStore,
    /// The inbox's disk: survives CMA restarts.
    inbox_disk: MemStorage,
    inbox: Inbox,
    /// Inbox counters summed over CMA incarnations (syncs, records, replayed, refusals).
    metrics: assim_cma_shell::Metrics,
}

impl CmaSide {
    fn core(&self) -> Option<&Cma> {
        self.shell.as_ref().map(|s| s.core())
    }
}

/// The simulation. Build with [`Sim::new`], run with [`Sim::run`].
#[derive(Debug)]
pub struct Sim {
    sc: Scenario,
    w: World,
    nodes: Vec<Node>,
    cma: CmaSide,
    obs: Obs,
    progress: bool,
    restart_after: Option<u64>,
    next_group: u32,
    end: u64,
    wall_start: Instant,
    last_progress: Instant,
    cma_bytes_per_node: Option<f64>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(NONE - 1)
}

fn index_of(id: NodeId) -> u32 {
    u32::from_be_bytes(id.0[12..16].try_into().expect("4 bytes"))
}

fn public_key(id: NodeId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&id.0);
    k[16..].copy_from_slice(&id.0);
    k
}

fn hostname(i: u32, switch: u32) -> String {
    format!("sw{switch}-n{i}")
}

fn hello_of(i: u32, n: &Node, now: u64, epoch: u64) -> msg::Hello {
    msg::Hello {
        version: "sim".into(),
        hostname: hostname(i, n.switch),
        listen_addr: n.addr.to_string(),
        addresses: vec![format!("{}/8", n.addr.ip())],
        started_at: Clock::timestamp(now).micros(),
        token_proof: None,
        peer_epoch: epoch,
        spool_incarnation: 0,
        acked_through: 0,
    }
}

/// A well-mixed 64-bit seed for one connection.
/// Every this many nodes one reports a synthetic `sockets` discovery result.
const SOCKETS_EVERY: u32 = 8;

/// Whether node `i` reports a `sockets` result (sshd listening on port 22).
fn reports_sockets(i: u32) -> bool {
    i.is_multiple_of(SOCKETS_EVERY)
}

/// The listeners of the synthetic `sockets` result.
fn sockets_payload() -> serde_json::Value {
    serde_json::json!({
        "listening": [{
            "protocol": "tcp", "local": "0.0.0.0:22", "remote": "0.0.0.0:0", "uid": 0,
            "user": "root", "inode": 1,
            "owner": {"pid": 10, "exe": "/usr/sbin/sshd", "cmdline": ["sshd", "-D"]}
        }],
        "established": []
    })
}

/// The synthetic `l2neighbors` result of node `i` under `switch`: one LLDP neighbour, the
/// switch's chassis `sw<N>` on port `swp<i>`.
fn l2_result(i: u32, switch: u32) -> assim_discovery::Discovery {
    let payload = serde_json::json!({"neighbors": [{
        "interface": "eth0", "mac": "", "protocol": "lldp",
        "chassis_id": format!("sw{switch}"), "port_id": format!("swp{i}"),
        "port_description": null, "system_name": format!("sw{switch}"),
        "system_description": null, "platform": null, "capabilities": ["bridge"],
        "management_addresses": [], "vlan": null, "chassis_id_kind": "local",
        "port_id_kind": "interface_name", "source_mac": ""
    }]});
    assim_discovery::Discovery::from_value(assim_discovery::schedule::L2_COLLECTOR, payload)
}

/// The synthetic `sockets` result, as the collector would hand it to the shell.
fn sockets_result() -> assim_discovery::Discovery {
    assim_discovery::Discovery::from_value("sockets", sockets_payload())
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut x =
        seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// The node ids of a run: random from the seed, UUIDv7-shaped, the index in the last 4 bytes.
fn node_ids(seed: u64, n: u32) -> Vec<NodeId> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, 0x1d5, 0));
    (0..n)
        .map(|i| {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            b[6] = 0x70 | (b[6] & 0x0f);
            b[8] = 0x80 | (b[8] & 0x3f);
            b[12..16].copy_from_slice(&i.to_be_bytes());
            NodeId(b)
        })
        .collect()
}

/// The endpoint behind an address of [`addr_of`].
fn index_of_addr(a: SocketAddr) -> Option<u32> {
    match a.ip() {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            (u32::from(o[1]) << 16 | u32::from(o[2]) << 8 | u32::from(o[3])).checked_sub(1)
        }
        std::net::IpAddr::V6(_) => None,
    }
}

/// Adds one CMA incarnation's shell counters to the run's.
fn add_metrics(sum: &mut assim_cma_shell::Metrics, m: &assim_cma_shell::Metrics) {
    sum.inbox_syncs += m.inbox_syncs;
    sum.inbox_records += m.inbox_records;
    sum.replayed += m.replayed;
    sum.store_errors += m.store_errors;
    for (k, v) in &m.rejects {
        *sum.rejects.entry(k).or_insert(0) += v;
    }
    for (k, v) in &m.sent {
        *sum.sent.entry(k).or_insert(0) += v;
    }
}

fn addr_of(i: u32) -> SocketAddr {
    let v = i + 1;
    let ip = Ipv4Addr::new(10, (v >> 16) as u8, (v >> 8) as u8, v as u8);
    SocketAddr::new(ip.into(), 1984)
}

impl Sim {
    /// Prepares a run (the scenario must be valid). `progress`: a `\r` progress line on stderr.
    /// `measure_memory`: estimate the CMA's memory per node first (see [`crate::mem`]).
    pub fn new(sc: Scenario, progress: bool, measure_memory: bool) -> Sim {
        let n = sc.nodes;
        let ids = node_ids(sc.seed, n);
        let mut placement_key = [0u8; 32];
        ChaCha8Rng::seed_from_u64(mix(sc.seed, 0x51ace, 0)).fill_bytes(&mut placement_key);
        let config = CmaConfig { timing: sc.timing, placement_key, ..CmaConfig::default() };
        let cma_bytes_per_node = if measure_memory {
            let hellos = ids.iter().enumerate().map(|(i, &id)| {
                let i = i as u32;
                let hello = msg::Hello {
                    version: "sim".into(),
                    hostname: hostname(i, i % sc.switches),
                    listen_addr: addr_of(i).to_string(),
                    addresses: vec![format!("{}/8", addr_of(i).ip())],
                    started_at: EPOCH_US,
                    token_proof: None,
                    peer_epoch: 0,
                    spool_incarnation: 0,
                    acked_through: 0,
                };
                (id, public_key(id), hello)
            });
            crate::mem::cma_bytes_per_node(&config, hellos, Clock::timestamp(0))
        } else {
            None
        };
        let mut rng = ChaCha8Rng::seed_from_u64(sc.seed);
        let per_switch = n.div_ceil(sc.switches);
        let nodes: Vec<Node> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| Node {
                id,
                addr: addr_of(i as u32),
                switch: (i as u32 / per_switch).min(sc.switches - 1),
                life: Life::Idle,
                incarnation: 0,
                armed: NONE,
                probe: None,
                spool: None,
                spooled: VecDeque::new(),
                crash: None,
                last_heartbeat: 0,
                suspect_at: 0,
                lost_candidates: Vec::new(),
                lost_spool: None,
                lost_with_disk: [0; 4],
            })
            .collect();
        let switch_of = nodes.iter().map(|n| n.switch).collect();
        let warm = micros(sc.warmup_end());
        let steady = (warm, warm + micros(sc.steady));
        let end = micros(sc.end());
        let mut w = World {
            now: 0,
            seq: 0,
            queue: Queue::new(),
            rng: ChaCha8Rng::seed_from_u64(rng.next_u64()),
            net: Network::new(sc.network.clone(), sc.switches),
            clock: Clock { base: Instant::now() },
            switch_of,
            steady,
            counters: report::Counters::default(),
        };
        let join = micros(sc.join_over).max(1);
        for i in 0..n {
            let at = w.rng.gen_range(0..join);
            w.push(at, Ev::Start(i));
        }
        let s0 = micros(sc.scenario_start());
        for (k, s) in sc.steps.iter().enumerate() {
            w.push(s0 + micros(s.at), Ev::Step(k as u32));
        }
        w.push(1_000_000, Ev::Tick);
        let cma = CmaSide {
            shell: None,
            config,
            generation: 0,
            armed: NONE,
            store: MemStore::default(),
            inbox_disk: MemStorage::new(mix(sc.seed ^ 0x1b0, 0, 0)),
            inbox: HashMap::new(),
            metrics: assim_cma_shell::Metrics::default(),
        };
        let now = Instant::now();
        Sim {
            sc,
            w,
            nodes,
            cma,
            obs: Obs::default(),
            progress,
            restart_after: None,
            next_group: 1,
            end,
            wall_start: now,
            last_progress: now,
            cma_bytes_per_node,
        }
    }

    /// Runs to the end of the scenario and returns the report.
    pub fn run(mut self) -> Report {
        self.wall_start = Instant::now();
        self.cma_start();
        while let Some(e) = self.w.queue.pop() {
            if e.at > self.end {
                break;
            }
            self.w.now = e.at;
            self.w.counters.events += 1;
            self.dispatch(e.ev);
        }
        self.w.now = self.end;
        if self.progress {
            eprint!("\r{:100}\r", "");
        }
        let wall = self.wall_start.elapsed();
        self.finish(wall)
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(i) => self.start_node(i),
            Ev::NodeWake(i) => self.node_wake(i),
            Ev::CmaWake => {
                if self.cma.armed == self.w.now {
                    self.cma.armed = NONE;
                    let now = self.cma_now();
                    if let Some(shell) = self.cma.shell.as_mut() {
                        shell.handle_timeout(now);
                    }
                    self.cma_after();
                }
            }
            Ev::Deliver { from, to, packet } => {
                if to == CMA {
                    self.cma_receive(from, packet);
                } else {
                    self.node_receive(to, from, packet);
                }
            }
            Ev::Step(k) => self.step(k as usize),
            Ev::Crash(i, cause) => self.crash_node(i, cause),
            Ev::PartitionEnd(p) => {
                let sw = self.obs.partitions[p as usize].switches.clone();
                self.w.net.set_group(&sw, 0);
            }
            Ev::CmaUp => self.cma_start(),
            Ev::Tick => self.tick(),
        }
    }

    // ------------------------------------------------------------------------------------------
    // nanoprobes

    fn start_node(&mut self, i: u32) {
        let now = self.w.now;
        let inst = self.w.clock.instant(now);
        let n = &mut self.nodes[i as usize];
        match n.life {
            Life::Running | Life::Leaving => return,
            Life::Idle => {}
            Life::Crashed | Life::Left => {
                n.incarnation += 1;
                self.obs.restarts += 1;
            }
        }
        let session = u64::from(n.incarnation) + 1;
        // The node's disk: it survives crashes and restarts (a kill -9 keeps the page cache).
        let storage = n
            .spool
            .get_or_insert_with(|| MemStorage::new(mix(self.sc.seed ^ 0x5b0, i.into(), 0)))
            .clone();
        // A new spool (a lost disk) draws its incarnation from the seed, per start.
        let spool = Spool::open_seeded(
            storage,
            SPOOL_MAX_BYTES,
            assim_probe_shell::limits::MAX_MESSAGE,
            mix(self.sc.seed ^ 0x1c4, i.into(), session),
        )
        .expect("an in-memory spool opens");
        let cfg = ShellConfig {
            node_id: n.id,
            cma_id: NodeId::default(),
            cma_addr: addr_of(0),
            session,
            seed: mix(self.sc.seed, i.into(), session),
            hello: hello_of(i, n, now, 0),
            reliable: RelConfig::default(),
            discovery_defaults: false,
            // The node's own clock is the virtual one.
            wall_clock: WallClock::new(inst, Clock::timestamp(now).micros()),
        };
        let mut shell = Shell::new(cfg, spool, None, inst);
        shell.start(inst);
        n.probe = Some(Box::new(Probe { shell, controls: VecDeque::new() }));
        n.life = Life::Running;
        self.node_after(i);
    }

    fn node_wake(&mut self, i: u32) {
        let now = self.w.now;
        let n = &mut self.nodes[i as usize];
        if n.armed != now {
            return;
        }
        n.armed = NONE;
        let inst = self.w.clock.instant(now);
        let Some(p) = n.probe.as_mut() else { return };
        p.shell.handle_timeout(inst);
        self.node_after(i);
    }

    fn node_receive(&mut self, i: u32, from: u32, packet: Packet) {
        let now = self.w.now;
        let inst = self.w.clock.instant(now);
        let (id, addr) = if from == CMA {
            (NodeId::default(), addr_of(0))
        } else {
            let f = &self.nodes[from as usize];
            (f.id, f.addr)
        };
        let Some(p) = self.nodes[i as usize].probe.as_mut() else {
            self.w.net.stats.to_dead_endpoint += 1;
            return;
        };
        match packet {
            Packet::Heartbeat(hb) => p.shell.handle_heartbeat(id, addr, &hb, inst),
            Packet::Frame(bytes) => {
                let bad = p.shell.stats().bad_frames;
                p.shell.handle_cma_frame(&bytes, addr, inst);
                if p.shell.stats().bad_frames > bad {
                    self.w.counters.bad_frames += 1;
                }
            }
            Packet::Probe(nonce) if from == CMA => {
                p.shell.handle_probe(msg::Probe { nonce }, addr);
            }
            // A nanoprobe on another switch probing for the CMA (issue 13), and the answer.
            Packet::Probe(nonce) => p.shell.handle_peer_probe(id, msg::Probe { nonce }, addr),
            Packet::ProbeReply(nonce) => {
                p.shell.handle_peer_probe_reply(id, msg::Probe { nonce }, inst)
            }
        }
        self.node_after(i);
    }

    /// Drains node `i`'s shell (events, then datagrams), then re-arms its timer.
    fn node_after(&mut self, i: u32) {
        let now = self.w.now;
        let inst = self.w.clock.instant(now);
        let mut stop = None;
        {
            let n = &mut self.nodes[i as usize];
            let Some(p) = n.probe.as_mut() else { return };
            let c = &mut self.w.counters;
            while let Some(ev) = p.shell.poll_event() {
                match ev {
                    Event::HelloSent { id, restart } => {
                        c.sent[MsgKind::Hello as usize] += 1;
                        p.controls.push_back((id, MsgKind::Hello));
                        if restart {
                            c.rehellos += 1;
                        }
                    }
                    Event::Delivered(id) => {
                        if let Some(k) = p.controls.iter().position(|u| u.0 == id) {
                            let (_, kind) = p.controls.remove(k).expect("found");
                            c.acked[kind as usize] += 1;
                        }
                    }
                    Event::Spooled { record, kind } => {
                        let kind = match kind {
                            "heartbeat_report" => MsgKind::Report,
                            "peer_status" => MsgKind::Status,
                            _ => continue,
                        };
                        c.sent[kind as usize] += 1;
                        n.spooled.push_back((record, kind, now));
                    }
                    Event::Reported { kind, .. } => {
                        let k = usize::try_from(kind).unwrap_or(0).min(4);
                        c.report_kinds[k] += 1;
                    }
                    Event::PeerSet(Ok(_)) => c.peer_sets_applied += 1,
                    Event::PeerSet(Err(_)) => c.peer_sets_invalid += 1,
                    Event::Ignored { kind: "undecodable" } => c.decode_errors += 1,
                    Event::Ignored { .. } | Event::Stop { .. } => c.commands_ignored += 1,
                    Event::Left => stop = Some(true),
                    Event::LeaveTimedOut => stop = Some(false),
                    // Simulated nanoprobes run no checks and only one collector: every
                    // `SOCKETS_EVERY`th node reports a synthetic `sockets` result (sshd on port
                    // 22) when the CMA's discovery schedule first runs it; after that the
                    // change filter keeps it quiet (no news is good news).
                    Event::RunCollector { name, .. } if name == "sockets" => {
                        if reports_sockets(i) {
                            p.shell.collector_done("sockets", Ok(sockets_result()), inst);
                        }
                    }
                    // Every node hears its switch's LLDP (issue 13), unless the scenario is
                    // flat (one ring, as before).
                    Event::RunCollector { name, .. }
                        if name == assim_discovery::schedule::L2_COLLECTOR =>
                    {
                        if self.sc.wiring {
                            let r = l2_result(i, n.switch);
                            p.shell.collector_done(
                                assim_discovery::schedule::L2_COLLECTOR,
                                Ok(r),
                                inst,
                            );
                        }
                    }
                    Event::RunCheck(_) | Event::RunCheckNow { .. } | Event::RunCollector { .. } => {
                    }
                }
            }
            // Records the CMA acknowledged left the spool.
            let acked = p.shell.spool().stats().acked_through;
            while n.spooled.front().is_some_and(|r| r.0 <= acked) {
                let (_, kind, _) = n.spooled.pop_front().expect("peeked");
                c.acked[kind as usize] += 1;
            }
            while let Some(t) = p.shell.poll_transmit(inst) {
                match t {
                    Transmit::Heartbeat { to, heartbeat, .. } => {
                        let j = index_of(to);
                        n.last_heartbeat = now;
                        if (j as usize) < self.w.switch_of.len() {
                            self.w.send(i, j, Packet::Heartbeat(heartbeat));
                        }
                    }
                    Transmit::ProbeReply { to, probe, .. } if to == NodeId::default() => {
                        self.w.send(i, CMA, Packet::ProbeReply(probe.nonce))
                    }
                    Transmit::ProbeReply { to, probe, .. } => {
                        let j = index_of(to);
                        if (j as usize) < self.w.switch_of.len() {
                            self.w.send(i, j, Packet::ProbeReply(probe.nonce));
                        }
                    }
                    Transmit::PeerProbe { to, probe, .. } => {
                        let j = index_of(to);
                        if (j as usize) < self.w.switch_of.len() {
                            self.w.counters.peer_probes += 1;
                            self.w.send(i, j, Packet::Probe(probe.nonce));
                        }
                    }
                    Transmit::Cma { frame, .. } => self.w.send(i, CMA, Packet::Frame(frame)),
                }
            }
        }
        match stop {
            Some(true) => {
                self.obs.leaves += 1;
                self.stop_node(i, Life::Left);
                return;
            }
            Some(false) => {
                // Gave up waiting for the acknowledgement (as the daemon does after 3 s). If
                // the goodbye never reached the CMA, this is a silent stop as far as it can
                // tell: a host.down is expected, so it is accounted as a crash.
                self.w.counters.goodbyes_unacknowledged += 1;
                if self.cma_saw_goodbye(i) {
                    self.stop_node(i, Life::Left);
                } else {
                    self.crash_node(i, CrashCause::GoodbyeLost);
                }
                return;
            }
            None => {}
        }
        let n = &mut self.nodes[i as usize];
        let Some(p) = n.probe.as_ref() else { return };
        if let Some(d) = p.shell.poll_timeout().map(|t| self.w.clock.of_instant(t)) {
            let d = d.max(now);
            if d < n.armed {
                n.armed = d;
                self.w.push(d, Ev::NodeWake(i));
            }
        }
    }

    /// Whether the CMA (running, or in its persisted store while down) has node `i` as left.
    fn cma_saw_goodbye(&self, i: u32) -> bool {
        let id = self.nodes[i as usize].id;
        let state = match self.cma.core() {
            Some(core) => core.node(id).map(|r| r.state),
            None => self.cma.store.nodes.get(&id).map(|r| r.state),
        };
        state == Some(assim_cma::NodeState::Left)
    }

    /// Stops node `i` (crash or leave): its shell is dropped, its spool stays; control
    /// messages it had not seen acknowledged are remembered for the final accounting.
    fn stop_node(&mut self, i: u32, life: Life) {
        let n = &mut self.nodes[i as usize];
        if let Some(p) = n.probe.take() {
            n.lost_candidates.extend(p.controls.iter().map(|&(_, k)| k));
        }
        n.life = life;
        n.armed = NONE;
    }

    fn crash_node(&mut self, i: u32, cause: CrashCause) {
        let life = self.nodes[i as usize].life;
        if !matches!(life, Life::Running | Life::Leaving) {
            return;
        }
        let neighbours = match self.cma.core() {
            Some(core) => {
                core.neighbours(self.nodes[i as usize].id).into_iter().map(index_of).collect()
            }
            None => Vec::new(),
        };
        self.obs.crashes.push(CrashRec {
            node: i,
            at: self.w.now,
            cause,
            detected_at: None,
            restarted_first: false,
            neighbours,
            unreachable: false,
        });
        self.nodes[i as usize].crash = Some(self.obs.crashes.len() - 1);
        self.stop_node(i, Life::Crashed);
        if let Some(d) = self.restart_after
            && cause != CrashCause::GoodbyeLost
        {
            self.w.push(self.w.now + d, Ev::Start(i));
        }
    }

    // ------------------------------------------------------------------------------------------
    // the CMA

    /// The CMA's view of the current virtual time.
    fn cma_now(&self) -> Now {
        Now { mono: self.w.clock.instant(self.w.now), wall: Clock::timestamp(self.w.now) }
    }

    /// Starts the CMA: the shell loads the store, replays the inbox from the stored position and
    /// queues every ring member's peer set.
    fn cma_start(&mut self) {
        self.cma.generation += 1;
        if self.cma.generation > 1 {
            self.obs.cma_restarts += 1;
        }
        let generation = u64::from(self.cma.generation);
        let mut cfg =
            CmaShellConfig::new(self.cma.config.clone(), mix(self.sc.seed ^ 0xc3a, 0, generation));
        cfg.open_enrollment = true;
        // Every turn is stored at once, so the store always equals the core between turns (the
        // `store matches core` check); the shell's unit tests cover a lagging store's replay.
        cfg.commit_interval = Duration::ZERO;
        let seal = PlainSeal::new(NodeId::default(), [0; 32], generation);
        let disk = self.cma.inbox_disk.clone();
        let inbox = LogInbox::open(move || Ok(disk.clone()), assim_log::LogConfig::default())
            .expect("an in-memory inbox opens");
        let store = std::mem::take(&mut self.cma.store);
        let shell = CmaShell::start(cfg, seal, inbox, store, self.cma_now())
            .expect("the in-memory store loads");
        self.cma.shell = Some(Box::new(shell));
        self.cma_after();
    }

    /// Stops the CMA as `kill -9` would: the shell and its connections are gone; the store and
    /// the inbox's disk stay.
    fn cma_stop(&mut self, down_for: Duration) {
        let Some(shell) = self.cma.shell.take() else { return };
        // The store must hold exactly what the core would resume from (nodes and counters; the
        // ring order is write-behind and rebuilt from node states anyway).
        let snap = shell.core().snapshot();
        let m = shell.metrics();
        let (_, _, store) = shell.into_parts();
        let mut mismatches = 0;
        for rec in &snap.nodes {
            if store.nodes.get(&rec.id) != Some(rec) {
                mismatches += 1;
            }
        }
        mismatches += store.nodes.len().saturating_sub(snap.nodes.len()) as u64;
        if (store.next_epoch, store.next_event_id) != (snap.next_epoch, snap.next_event_id) {
            mismatches += 1;
        }
        self.obs.store_mismatches += mismatches;
        self.cma.store = store;
        self.cma.inbox_disk.crash(false);
        add_metrics(&mut self.cma.metrics, &m);
        self.cma.armed = NONE;
        self.obs.cma_outages.push((self.w.now, self.w.now + micros(down_for)));
        self.w.push(self.w.now + micros(down_for), Ev::CmaUp);
    }

    /// A datagram for the CMA: the simulated network carries frames and probe replies; the
    /// shell takes datagrams, so they are framed as a nanoprobe would (header, key, plaintext).
    fn cma_receive(&mut self, from: u32, packet: Packet) {
        if self.cma.shell.is_none() {
            self.w.net.stats.to_dead_endpoint += 1;
            return;
        }
        let now = self.w.now;
        self.w.counters.cma_datagrams_in += 1;
        if (self.w.steady.0..self.w.steady.1).contains(&now) {
            self.w.counters.steady_cma_in += 1;
        }
        let n = &self.nodes[from as usize];
        let (id, key, session) = (n.id, public_key(n.id), u64::from(n.incarnation) + 1);
        let datagram = match packet {
            Packet::Frame(frame) => {
                PlainSeal::datagram(DatagramKind::Reliable, id, session, 0, Some(key), &frame)
            }
            Packet::ProbeReply(nonce) => {
                let reply = Direct { body: Some(DirectBody::ProbeReply(msg::Probe { nonce })) };
                PlainSeal::datagram(
                    DatagramKind::Direct,
                    id,
                    session,
                    0,
                    Some(key),
                    &reply.to_bytes(),
                )
            }
            Packet::Heartbeat(_) | Packet::Probe(_) => {
                self.w.counters.unexpected_datagrams += 1;
                return;
            }
        };
        let now = self.cma_now();
        let shell = self.cma.shell.as_mut().expect("checked above");
        shell.handle_datagram(now, addr_of(from), &datagram);
        self.cma_after();
    }

    /// The last spool record of node `j` the CMA's engine applied.
    fn cma_applied_through(&self, j: u32) -> u64 {
        self.cma.inbox.get(&j).map_or(0, |e| e.0)
    }

    /// Ends the CMA's turn: the shell's group commit, engine and store; then its datagrams go
    /// out, its notes are accounted and its timer is re-armed.
    fn cma_after(&mut self) {
        let now = self.w.now;
        let cma_now = self.cma_now();
        let Some(shell) = self.cma.shell.as_mut() else { return };
        shell.flush(cma_now);
        let mut out = Vec::new();
        while let Some(t) = shell.poll_transmit() {
            out.push(t);
        }
        let mut notes = Vec::new();
        while let Some(n) = shell.poll_note() {
            notes.push(n);
        }
        let next = shell.poll_timeout().map(|t| self.w.clock.of_instant(t));
        for t in out {
            let Some(j) = index_of_addr(t.to) else { continue };
            let Some((header, plaintext)) = PlainSeal::parse(&t.datagram) else { continue };
            let packet = match header.kind {
                DatagramKind::Reliable => Packet::Frame(plaintext.to_vec()),
                DatagramKind::Direct => match Direct::from_bytes(plaintext) {
                    Ok(Direct { body: Some(DirectBody::Probe(p)) }) => Packet::Probe(p.nonce),
                    _ => continue,
                },
                DatagramKind::KeyRequest | DatagramKind::KeyReply | DatagramKind::Busy => continue,
            };
            self.w.send(CMA, j, packet);
        }
        if let Some(d) = next {
            let d = d.max(now);
            if d < self.cma.armed {
                self.cma.armed = d;
                self.w.push(d, Ev::CmaWake);
            }
        }
        for n in notes {
            self.cma_note(n);
        }
    }

    /// Accounting of what the shell did (the simulator's model of the inbox and of crashes).
    fn cma_note(&mut self, note: Note) {
        let generation = self.cma.generation;
        match note {
            Note::Event(e) => self.on_event(e),
            Note::Stored { .. } => {}
            Note::Applied { node, record, kind } => {
                let j = index_of(node);
                let kind_name = kind;
                if record > 0 {
                    let entry = self.cma.inbox.entry(j).or_insert((0, generation));
                    if record <= entry.0 {
                        self.w.counters.inbox_applied_twice += 1;
                        return;
                    }
                    if record != entry.0 + 1 {
                        self.w.counters.inbox_applied_out_of_order += 1;
                    }
                    *entry = (record, generation);
                }
                if kind_name == "discovery_result" {
                    self.w.counters.discovery_applied += 1;
                    return;
                }
                let Some(kind) = MsgKind::of_name(kind_name) else {
                    self.w.counters.unexpected_messages += 1;
                    return;
                };
                self.w.counters.applied[kind as usize] += 1;
                let n = &mut self.nodes[j as usize];
                if kind == MsgKind::Hello
                    && let Some(lost) = n.lost_spool.take()
                {
                    // The first hello of a node whose disk was lost: the CMA restarts its
                    // next-record rule here; what the old spool held and the CMA never
                    // applied went with the disk.
                    let through = self.cma.inbox.get(&j).map_or(0, |e| e.0);
                    for (r, k) in lost {
                        if r > through {
                            n.lost_with_disk[k as usize] += 1;
                        }
                    }
                    self.cma.inbox.insert(j, (0, generation));
                }
                match kind {
                    // A crashed node that came back before its crash was confirmed: the hello
                    // makes it Up without a host.down (documented core behaviour), so the crash
                    // is never reported.
                    MsgKind::Hello => {
                        if let Some(c) = n.crash
                            && n.life == Life::Running
                            && self.obs.crashes[c].node == j
                        {
                            self.obs.crashes[c].restarted_first = true;
                            n.crash = None;
                        }
                    }
                    // The goodbye of a node that gave up waiting arrived after all: Left, no
                    // host.down.
                    MsgKind::Goodbye => {
                        if let Some(c) = n.crash
                            && self.obs.crashes[c].cause == CrashCause::GoodbyeLost
                        {
                            self.obs.crashes[c].restarted_first = true;
                            n.crash = None;
                        }
                    }
                    _ => {}
                }
            }
            Note::Refused { node, record, kind, reason } => {
                let j = index_of(node);
                match reason {
                    "duplicate_record" => {
                        let entry = self.cma.inbox.get(&j).copied().unwrap_or((0, generation));
                        let kind = MsgKind::of_name(kind).unwrap_or(MsgKind::Report) as usize;
                        if entry.1 == generation && record <= entry.0 {
                            self.w.counters.duplicates_applied[kind] += 1;
                        } else {
                            self.w.counters.redelivered_after_cma_restart[kind] += 1;
                        }
                    }
                    "record_gap" => self.w.counters.gaps += 1,
                    "unregistered" => self.w.counters.unregistered += 1,
                    _ => self.w.counters.inbox_refused += 1,
                }
            }
            Note::HelloRefused { .. } => self.w.counters.hellos_refused += 1,
            Note::Unregistered { .. } => self.w.counters.unregistered += 1,
            Note::CommandAnswer(_) | Note::Statistics(_) => {}
            // The simulator's switches announce no management address, and its CMA is whole
            // (no packet reader hands probe answers on).
            Note::ProbeManagement { .. } | Note::ProbeReply { .. } => {}
        }
    }

    fn on_event(&mut self, e: assim_cma::Event) {
        let now = self.w.now;
        let c = &mut self.w.counters;
        match e.kind {
            EventKind::HostUp => c.host_up += 1,
            EventKind::HostSuspect => c.host_suspect += 1,
            EventKind::HostLeft => c.host_left += 1,
            EventKind::PathSuspect => c.path_suspect += 1,
            EventKind::RingChanged => c.ring_changed += 1,
            EventKind::HostDown => c.host_down += 1,
            EventKind::SwitchDown | EventKind::SwitchUnreachable | EventKind::SwitchUp => {
                let hosts: Vec<u32> = e
                    .body
                    .as_ref()
                    .and_then(|b| b["hosts"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|h| h["node"].as_str()?.parse::<NodeId>().ok())
                    .map(index_of)
                    .filter(|j| (*j as usize) < self.nodes.len())
                    .collect();
                let switch =
                    e.tags.get("switch").and_then(|s| s.strip_prefix("sw")?.parse::<u32>().ok());
                self.obs.switch_events.push(SwitchEvent {
                    at: now,
                    kind: e.kind,
                    switch,
                    hosts: hosts.clone(),
                });
                if e.kind != EventKind::SwitchUp {
                    for j in hosts {
                        self.on_unreachable(j, &e.text);
                    }
                }
                return;
            }
            EventKind::HostUnreachable => {
                if let Some(j) = e.host.map(index_of).filter(|j| (*j as usize) < self.nodes.len()) {
                    self.on_unreachable(j, &e.text);
                }
                return;
            }
            // Simulated nanoprobes run no checks, discovery or local events.
            _ => {}
        }
        let Some(host) = e.host else { return };
        let j = index_of(host);
        if j as usize >= self.nodes.len() {
            return;
        }
        let sw = self.nodes[j as usize].switch;
        if e.kind == EventKind::PathSuspect {
            // Subject or reporter inside a partition that has healed.
            let reporter =
                e.tags.get("a_node").and_then(|a| a.parse::<NodeId>().ok()).map(index_of);
            let switches: Vec<u32> = [Some(j), reporter]
                .into_iter()
                .flatten()
                .filter(|k| (*k as usize) < self.nodes.len())
                .map(|k| self.nodes[k as usize].switch)
                .collect();
            for p in &mut self.obs.partitions {
                if now >= p.end && switches.iter().any(|s| p.switches.contains(s)) {
                    p.path_suspects_after += 1;
                }
            }
        }
        let cut_recently = |obs: &Obs| {
            let bound = micros(self.sc.detection_bound());
            obs.partitions
                .iter()
                .position(|p| p.switches.contains(&sw) && p.start <= now && now <= p.end + bound)
        };
        match e.kind {
            EventKind::HostSuspect => self.nodes[j as usize].suspect_at = now,
            EventKind::HostUp => {
                let n = &self.nodes[j as usize];
                let life = n.life;
                if n.crash.is_some() && n.suspect_at > 0 && n.last_heartbeat >= n.suspect_at {
                    // It was alive after the suspicion opened and crashed while a neighbour's
                    // word of its heartbeats was on the way: true when made. Its crash must
                    // still be reported (`crash` stays set).
                    self.obs.ups_raced_by_crash += 1;
                } else if !matches!(life, Life::Running | Life::Leaving) {
                    self.obs.false_ups.push(UnexpectedDown {
                        node: j,
                        at: now,
                        life,
                        text: e.text,
                    });
                } else if let Some(p) = cut_recently(&self.obs)
                    && now >= self.obs.partitions[p].end
                {
                    self.obs.partitions[p].ups_inside_after += 1;
                }
            }
            EventKind::HostDown => {
                let n = &mut self.nodes[j as usize];
                if let Some(c) = n.crash.take() {
                    self.obs.crashes[c].detected_at = Some(now);
                    return;
                }
                let life = n.life;
                if life == Life::Crashed {
                    // Made unreachable with its switch, then down because it did not come back
                    // with it: expected (issue 13). Otherwise a repeat.
                    if !self.obs.unreachable.contains(&j) {
                        self.obs.repeat_downs += 1;
                    }
                    return;
                }
                let down = UnexpectedDown { node: j, at: now, life, text: e.text };
                match cut_recently(&self.obs) {
                    Some(p) if matches!(life, Life::Running | Life::Leaving) => {
                        self.obs.partitions[p].downs_inside += 1;
                        self.obs.cut_off_downs.push(down);
                    }
                    _ => self.obs.false_downs.push(down),
                }
            }
            _ => {}
        }
    }

    /// Node `j` was made UNREACHABLE: a crash resolved (its switch is down), expected for a
    /// node cut off by a partition, false for a running node that is not.
    fn on_unreachable(&mut self, j: u32, text: &str) {
        let now = self.w.now;
        self.obs.unreachable.insert(j);
        let n = &mut self.nodes[j as usize];
        if let Some(c) = n.crash.take() {
            self.obs.crashes[c].detected_at = Some(now);
            self.obs.crashes[c].unreachable = true;
            return;
        }
        if n.life == Life::Running && !self.w.net.is_cut_off(n.switch) {
            let d = UnexpectedDown { node: j, at: now, life: n.life, text: text.to_owned() };
            self.obs.false_unreachable.push(d);
        }
    }

    // ------------------------------------------------------------------------------------------
    // scenario

    fn pick(&mut self, want: Life, count: u32) -> Vec<u32> {
        let mut pool: Vec<u32> =
            (0..self.nodes.len() as u32).filter(|&i| self.nodes[i as usize].life == want).collect();
        let k = (count as usize).min(pool.len());
        let (chosen, _) = pool.partial_shuffle(&mut self.w.rng, k);
        chosen.to_vec()
    }

    fn step(&mut self, k: usize) {
        let now = self.w.now;
        let kind = self.sc.steps[k].kind.clone();
        match kind {
            StepKind::Crash { count, over } => {
                let over = micros(over);
                for i in self.pick(Life::Running, count) {
                    let at = if over == 0 { now } else { now + self.w.rng.gen_range(0..over) };
                    self.w.push(at, Ev::Crash(i, CrashCause::Random));
                }
            }
            StepKind::CrashNodes(list) => {
                for i in list {
                    self.crash_node(i, CrashCause::Random);
                }
            }
            StepKind::CrashSwitch(s) => {
                self.obs.switch_crashed_at.push((s, now));
                for i in 0..self.nodes.len() as u32 {
                    if self.nodes[i as usize].switch == s {
                        self.crash_node(i, CrashCause::Switch);
                    }
                }
            }
            StepKind::Partition { switches, for_ } => {
                let group = self.next_group;
                self.next_group += 1;
                self.w.net.set_group(&switches, group);
                let inside = self
                    .nodes
                    .iter()
                    .filter(|n| switches.contains(&n.switch) && n.life == Life::Running)
                    .count() as u64;
                self.obs.partitions.push(PartitionRec {
                    switches,
                    start: now,
                    end: now + micros(for_),
                    nodes_inside: inside,
                    downs_inside: 0,
                    ups_inside_after: 0,
                    path_suspects_after: 0,
                });
                let p = self.obs.partitions.len() as u32 - 1;
                self.w.push(now + micros(for_), Ev::PartitionEnd(p));
            }
            StepKind::Leave(count) => {
                for i in self.pick(Life::Running, count) {
                    let inst = self.w.clock.instant(now);
                    let n = &mut self.nodes[i as usize];
                    n.life = Life::Leaving;
                    let p = n.probe.as_mut().expect("running");
                    if let Some(id) = p.shell.leave(inst) {
                        p.controls.push_back((id, MsgKind::Goodbye));
                        self.w.counters.sent[MsgKind::Goodbye as usize] += 1;
                    }
                    self.node_after(i);
                }
            }
            StepKind::Restart(count) => {
                for i in self.pick(Life::Crashed, count) {
                    self.start_node(i);
                }
            }
            StepKind::RestartAfter(d) => self.restart_after = Some(micros(d)),
            StepKind::CmaRestart { down_for } => self.cma_stop(down_for),
            StepKind::Loss(l) => self.w.net.set_loss(l),
            StepKind::LoseSpool(count) => {
                for i in self.pick(Life::Crashed, count) {
                    let n = &mut self.nodes[i as usize];
                    n.spool = None;
                    let lost = n.lost_spool.get_or_insert_with(Vec::new);
                    lost.extend(n.spooled.drain(..).map(|(r, k, _)| (r, k)));
                    self.obs.spools_lost += 1;
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = self.w.now;
        if self.obs.registered_at.is_none()
            && now >= micros(self.sc.join_over)
            && self.all_converged()
        {
            self.obs.registered_at = Some(now);
            self.obs.registered_wall = Some(self.wall_start.elapsed());
        }
        if self.progress && self.last_progress.elapsed() >= Duration::from_millis(250) {
            self.last_progress = Instant::now();
            let wall = self.wall_start.elapsed().as_secs_f64().max(1e-9);
            let ev = self.w.counters.events as f64;
            let members = self.cma.core().map_or(0, |c| c.rings().all().len());
            eprint!(
                "\r[sim] virtual {:>7.1}s / {:.0}s  ring {:>7}  crashed {:>6}  host.down {:>6}  \
                 events {:>6.1}M  {:>5.2}M ev/s ",
                now as f64 / 1e6,
                self.end as f64 / 1e6,
                members,
                self.obs.crashes.len(),
                self.w.counters.host_down,
                ev / 1e6,
                ev / wall / 1e6,
            );
        }
        self.w.push(now + 1_000_000, Ev::Tick);
    }

    /// Every node has started, is Up at the CMA, and runs the peer set the CMA last sent it.
    fn all_converged(&self) -> bool {
        let Some(core) = self.cma.core() else { return false };
        self.nodes.iter().all(|n| match (&n.probe, core.node(n.id)) {
            (Some(p), Some(rec)) => {
                // A suspect is still a ring member being watched: with loss on every link and a
                // short dead time some node is always briefly suspect.
                rec.state.in_ring()
                    && rec.peer_epoch > 0
                    && p.shell.heartbeats().epoch() == rec.peer_epoch
            }
            _ => false,
        })
    }

    // ------------------------------------------------------------------------------------------
    // the end

    fn finish(mut self, wall: Duration) -> Report {
        if let Some(shell) = &self.cma.shell {
            add_metrics(&mut self.cma.metrics, &shell.metrics());
        }
        let m = &self.cma.metrics;
        let c = &mut self.w.counters;
        c.inbox_syncs = m.inbox_syncs;
        c.inbox_records = m.inbox_records;
        c.inbox_replayed = m.replayed;
        c.peer_sets_sent = m.sent.get("peer_set").copied().unwrap_or(0);
        // Message accounting: every message sent was applied, or waits in the spool of a
        // stopped sender (spooled kinds) / was unacknowledged when its sender stopped (hello,
        // goodbye), or is still in flight.
        let mut lost = [0u64; 4];
        let mut in_flight = [0u64; 4];
        for (i, n) in self.nodes.iter().enumerate() {
            let applied = self.cma_applied_through(i as u32);
            let running = n.probe.is_some();
            for &(r, k, _) in &n.spooled {
                if r > applied {
                    if running {
                        in_flight[k as usize] += 1;
                    } else {
                        lost[k as usize] += 1;
                    }
                }
            }
            for &k in &n.lost_candidates {
                lost[k as usize] += 1;
            }
            for (k, l) in n.lost_with_disk.iter().enumerate() {
                lost[k] += l;
            }
            for &(r, k) in n.lost_spool.iter().flatten() {
                if r > applied {
                    lost[k as usize] += 1;
                }
            }
            if let Some(p) = &n.probe {
                for &(_, k) in &p.controls {
                    in_flight[k as usize] += 1;
                }
            }
        }
        self.w.counters.lost_with_sender = lost;
        self.w.counters.in_flight_at_end = in_flight;
        let spool = self.spool_check();
        let ring = self.ring_check();
        let check_sets = self.check_sets_check();
        let inputs = report::Inputs {
            scenario: &self.sc,
            end: self.end,
            counters: &self.w.counters,
            net: &self.w.net.stats,
            obs: &self.obs,
            nodes: &self.nodes,
            cma_stats: self.cma.core().map(|c| *c.stats()),
            ring,
            wall,
            cma_bytes_per_node: self.cma_bytes_per_node,
            spool,
            check_sets,
        };
        report::build(inputs)
    }

    /// Every node's spool against the simulation's model of it: what the CMA acknowledged is
    /// gone from the spool and was applied; what it did not is still there, in order, with the
    /// kind that was spooled; nothing waits long in the spool of a live, reachable node.
    fn spool_check(&self) -> report::SpoolCheck {
        let mut sc = report::SpoolCheck::default();
        let settle = micros(assim_probe_shell::RESEND_AFTER + self.sc.detection_bound() * 2);
        let cma_up = self.cma.core().is_some();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(storage) = &n.spool else { continue };
            // A stopped node's spool as its restart would find it.
            let reopened;
            let spool = match &n.probe {
                Some(p) => p.shell.spool(),
                None => match Spool::open(
                    storage.clone(),
                    SPOOL_MAX_BYTES,
                    assim_probe_shell::limits::MAX_MESSAGE,
                ) {
                    Ok(s) => {
                        reopened = s;
                        &reopened
                    }
                    Err(e) => {
                        sc.problems.push(format!("{}: the spool does not open: {e}", n.id));
                        continue;
                    }
                },
            };
            let Some(log) = spool.log() else { continue };
            let acked = spool.stats().acked_through;
            let spooled = log.next_lsn() - 1;
            sc.spooled += spooled;
            sc.acked += acked;
            if acked > self.cma_applied_through(i as u32) {
                sc.acked_not_applied += 1;
            }
            // Acknowledged records are gone. Only a running spool can say so: removal from the
            // middle of a segment is logical until the process ends (see `Log::remove_through`),
            // so a reopened spool shows them again and its reader resumes after `acked`.
            if n.probe.is_some()
                && let Ok(mut r) = log.read_from(log.first_lsn())
                && r.next().is_some_and(|x| x.is_ok_and(|(lsn, _)| lsn <= acked))
            {
                sc.not_removed += 1;
            }
            // The rest is exactly the model's pending records.
            let mut model = n.spooled.iter();
            let from = (acked + 1).max(log.first_lsn());
            let records: Vec<(u64, Vec<u8>)> = match log.read_from(from) {
                Ok(r) => r.filter_map(Result::ok).collect(),
                Err(e) => {
                    sc.problems.push(format!("{}: the spool cannot be read: {e}", n.id));
                    continue;
                }
            };
            for (lsn, bytes) in &records {
                let body = Message::from_bytes(bytes).ok().and_then(|m| m.body);
                if matches!(body, Some(Body::DiscoveryResult(_))) {
                    continue; // the synthetic `sockets` results are not in the model
                }
                let kind = body.and_then(|b| MsgKind::of(&b));
                match model.next() {
                    Some(&(r, k, _)) if r == *lsn && Some(k) == kind => {}
                    other => {
                        sc.lost += 1;
                        if sc.problems.len() < 10 {
                            sc.problems.push(format!(
                                "{}: spool record {lsn} ({kind:?}) where the simulation expected {other:?}",
                                n.id
                            ));
                        }
                    }
                }
            }
            sc.lost += model.count() as u64;
            let waiting = records.len() as u64;
            match n.life {
                Life::Running | Life::Leaving => {
                    sc.in_flight += waiting;
                    // A live, reachable node whose records wait long while the CMA is up.
                    let old =
                        n.spooled.iter().any(|&(r, _, at)| r > acked && at + settle < self.end);
                    if cma_up && !self.w.net.is_cut_off(n.switch) && old {
                        sc.stuck += 1;
                        if sc.problems.len() < 10 {
                            sc.problems.push(format!(
                                "{}: {waiting} records wait in the spool of a live node",
                                n.id
                            ));
                        }
                    }
                }
                _ => sc.waiting_stopped += waiting,
            }
        }
        for n in &self.nodes {
            if let Some(p) = &n.probe {
                let st = p.shell.spool().stats();
                sc.resent += st.resent;
                sc.unspooled += st.unspooled;
                sc.dropped += st.dropped;
            }
        }
        sc
    }

    /// Desired state beyond the ring: every live, reachable node the CMA has Up runs the CMA's
    /// discovery schedule (its epoch) and the check set the CMA decided for it (its epoch); the
    /// nodes that reported `sockets` have exactly the checks the rules imply for those
    /// listeners (host-level checks, and a rule's check for sshd), the others the host-level
    /// checks alone.
    fn check_sets_check(&self) -> report::CheckSetsCheck {
        let mut cs = report::CheckSetsCheck::default();
        let Some(shell) = &self.cma.shell else {
            cs.problems
                .push("the CMA is down at the end of the run; check sets not checked".into());
            return cs;
        };
        let a = shell.authority();
        let rules = a.check_sets().rules();
        let listeners =
            assim_cma::check_sets::listeners_of(sockets_payload().to_string().as_bytes())
                .expect("the synthetic sockets payload parses");
        let schedule_epoch = a.discovery_schedule().epoch;
        let problem = |cs: &mut report::CheckSetsCheck, text: String| {
            cs.diverged += 1;
            if cs.problems.len() < 10 {
                cs.problems.push(text);
            }
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(p) = &n.probe else { continue };
            if n.life != Life::Running || self.w.net.is_cut_off(n.switch) {
                continue;
            }
            let Some(rec) = a.cma().node(n.id) else { continue };
            if rec.state != assim_cma::NodeState::Up {
                continue;
            }
            cs.nodes += 1;
            if p.shell.discovery_schedule().epoch() != schedule_epoch {
                let got = p.shell.discovery_schedule().epoch();
                problem(
                    &mut cs,
                    format!("{}: discovery schedule epoch {got}, the CMA's {schedule_epoch}", n.id),
                );
                continue;
            }
            let Some((epoch, checks)) = a.check_sets().set(n.id) else {
                problem(&mut cs, format!("{}: the CMA decided no check set", n.id));
                continue;
            };
            if p.shell.check_epoch() != epoch {
                problem(
                    &mut cs,
                    format!(
                        "{}: runs check set epoch {}, the CMA's is {epoch}",
                        n.id,
                        p.shell.check_epoch()
                    ),
                );
                continue;
            }
            let reported = reports_sockets(i as u32);
            let implied = rules.desired(&rec.hostname, if reported { &listeners } else { &[] });
            let mut want: Vec<&str> = implied.iter().map(|c| c.name.as_str()).collect();
            let mut got: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                problem(&mut cs, format!("{}: checks {got:?}, the rules imply {want:?}", n.id));
                continue;
            }
            if reported {
                cs.with_sockets += 1;
            }
            cs.checks += got.len() as u64;
        }
        cs
    }

    /// The ring as the CMA holds it, against node states and against what the nanoprobes run.
    fn ring_check(&self) -> report::RingCheck {
        let mut rc = report::RingCheck::default();
        let Some(core) = self.cma.core() else {
            rc.problems.push("the CMA is down at the end of the run; ring not checked".into());
            return rc;
        };
        let order = core.ring();
        rc.members = order.len() as u64;
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != order.len() {
            rc.problems.push(format!("{} ring entries are duplicates", order.len() - sorted.len()));
        }
        for rec in core.nodes() {
            let member = sorted.binary_search(&rec.id).is_ok();
            match rec.state {
                assim_cma::NodeState::Up => rc.up += 1,
                assim_cma::NodeState::Suspect => rc.suspect += 1,
                assim_cma::NodeState::Down => rc.down += 1,
                assim_cma::NodeState::Left => rc.left += 1,
                assim_cma::NodeState::Unreachable => rc.unreachable += 1,
            }
            if member != rec.state.in_ring() {
                rc.problems.push(format!(
                    "{} is {} but {} the ring",
                    rec.display_name(),
                    rec.state,
                    if member { "in" } else { "not in" }
                ));
            }
        }
        // Each member: its stored peers are its ring neighbours (home ring ∪ upper ring),
        // the relation is mutual, and nobody is unwatched (issue 13: rings per switch).
        let rings = core.rings();
        let len = order.len();
        for &a in &order {
            let na = core.neighbours(a);
            let mut distinct = na.clone();
            distinct.sort();
            distinct.dedup();
            if distinct.len() != na.len() {
                rc.problems.push(format!("{a} has a neighbour twice"));
            }
            if len >= 2 && na.is_empty() {
                rc.problems.push(format!("{a} is unwatched"));
            }
            match rings.home_of(a).and_then(|h| rings.ring(h.as_str()).map(|r| (h, r))) {
                Some((home, ring)) => {
                    if ring.neighbours(a).iter().any(|n| !na.contains(n)) {
                        rc.problems
                            .push(format!("{a} does not heartbeat its neighbours in {home}"));
                    }
                }
                None => rc.problems.push(format!("{a} is a member without a home ring")),
            }
            for b in &na {
                if !core.neighbours(*b).contains(&a) {
                    rc.problems.push(format!("{a} and {b} are not mutual neighbours"));
                }
            }
            if let Some(rec) = core.node(a) {
                let mut stored = rec.peers.clone();
                stored.sort();
                if stored != distinct {
                    rc.problems.push(format!("{a}: stored peers differ from its ring neighbours"));
                }
            }
        }
        rc.home_rings = rings.home_rings().count() as u64;
        rc.upper_ring = rings.upper_order().len() as u64;
        // The nanoprobes' side: live nodes run the CMA's current peer set.
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(p) = &n.probe else { continue };
            if n.life != Life::Running || self.w.net.is_cut_off(n.switch) {
                continue;
            }
            let Some(rec) = core.node(n.id) else {
                rc.probes_diverged.push(i as u32);
                continue;
            };
            let hb = p.shell.heartbeats();
            let mut running: Vec<NodeId> = hb.peers().map(|(pi, _)| pi.node_id).collect();
            running.sort();
            let mut wanted = rec.peers.clone();
            wanted.sort();
            if hb.epoch() == rec.peer_epoch && running == wanted {
                rc.probes_converged += 1;
            } else {
                rc.probes_diverged.push(i as u32);
            }
        }
        // The CMA's view against the truth of the simulation.
        for (i, n) in self.nodes.iter().enumerate() {
            if self.w.net.is_cut_off(n.switch) {
                continue;
            }
            let state = core.node(n.id).map(|r| r.state);
            use assim_cma::NodeState as S;
            // A suspicion still open at the end (younger than its window) is not a verdict.
            let deciding = core.node(n.id).is_some_and(|r| {
                r.state == S::Suspect
                    && self.w.now.saturating_sub(r.since.0)
                        < micros(assim_cma::model::suspect_window(&self.sc.timing))
            });
            let ok = match n.life {
                Life::Idle => state.is_none(),
                Life::Running => matches!(state, Some(S::Up)) || deciding,
                Life::Leaving | Life::Left => matches!(state, Some(S::Left)),
                // Behind a crashed switch: unreachable, not down (issue 13).
                Life::Crashed => {
                    matches!(state, Some(S::Down))
                        || (matches!(state, Some(S::Unreachable))
                            && self.obs.switch_crashed_at.iter().any(|(s, _)| *s == n.switch))
                }
            };
            if !ok {
                rc.state_disagreements.push((i as u32, n.life, state));
            }
        }
        rc
    }
}
