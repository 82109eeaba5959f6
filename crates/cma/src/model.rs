//! The records the CMA core exchanges with its drivers: configuration, node records, events,
//! snapshots, actions, errors and counters.
//!
//! Everything here is plain data. The store persists [`NodeRecord`], the ring order and the
//! counters (via [`Change`]); the bus publishes [`Event`]; the daemon and the simulator execute
//! [`Action`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use assim_wire::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// Heartbeat timing, pushed to every nanoprobe with its peer set. One type for the whole
/// system: the nanoprobe's heartbeat core owns it (with its validation).
pub use assim_probe::Timing;

/// How long a suspicion waits for corroboration or a probe answer: two heartbeat intervals.
pub fn suspect_window(t: &Timing) -> Duration {
    t.interval * 2
}

/// How often the CMA re-sends its liveness probe to a suspect node once its confirmation probes
/// are out: half an interval, at least 1 ms.
pub fn probe_every(t: &Timing) -> Duration {
    (t.interval / 2).max(Duration::from_millis(1))
}

/// How many probes the CMA sends a suspect node, [`confirm_gap`] apart, before two neighbours'
/// dead words can take it down: all of them must go unanswered. At 5 % loss each way a probe
/// or its answer is lost 9.75 % of the time, all five 0.001 % of the time.
pub const CONFIRM_PROBES: u32 = 5;

/// The confirmation window: from the first probe until the last of the [`CONFIRM_PROBES`] has
/// gone unanswered for one [`confirm_gap`]. Two fifths of an interval (400 ms at the default
/// 1 s), at least [`CONFIRM_PROBES`] ms.
pub fn confirm_window(t: &Timing) -> Duration {
    confirm_gap(t) * CONFIRM_PROBES
}

/// Time between two confirmation probes, and how long the last one is given to be answered:
/// [`confirm_window`] / [`CONFIRM_PROBES`] (80 ms at the default 1 s interval), at least 1 ms.
pub fn confirm_gap(t: &Timing) -> Duration {
    (t.interval * 2 / (5 * CONFIRM_PROBES)).max(Duration::from_millis(1))
}

/// Configuration of the CMA core.
#[derive(Clone, Debug, Default)]
pub struct CmaConfig {
    pub timing: Timing,
    /// Secret mixed into every ring position (see [`crate::ring`]), so that a node cannot
    /// choose its neighbours by choosing its id. The daemon derives it from the CMA's identity
    /// ([`assim_seal`'s `Identity::derive_key`]); all zeros (the default) only in tests.
    pub placement_key: crate::ring::PlacementKey,
    /// Operator pins (issue 13): host name or node id → ring name. A pinned host heartbeats in
    /// the ring `pinned:<name>` whatever its discovery says (networks that announce nothing).
    pub pins: BTreeMap<String, String>,
    /// The driver can ping a switch's management address (an ICMP socket opened): a ring
    /// check then asks for one ping of the address LLDP/CDP gave
    /// ([`Action::ProbeManagement`]). Off in the simulator and wherever ICMP is not allowed.
    pub management_probes: bool,
}

/// Returned by the `FromStr` impls of [`NodeState`] and [`EventKind`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown {what} name {name:?}")]
pub struct ParseNameError {
    /// "node state", "event kind" or "severity".
    pub what: &'static str,
    /// The text that did not parse.
    pub name: String,
}

/// Where a node is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Registered and heartbeating; a ring member.
    Up,
    /// One neighbour reported it dead; the CMA is corroborating. Still a ring member.
    Suspect,
    /// Confirmed dead. Not a ring member.
    Down,
    /// Said goodbye. Not a ring member; never alarmed.
    Left,
    /// Behind a switch (or segment) that is down or cut off: the CMA cannot tell whether the
    /// host itself is up. Not a ring member; its service alarms are suppressed (Nagios
    /// `parents`). Back to Up when it is heard again, Down if it does not return with its switch.
    Unreachable,
}

impl NodeState {
    /// Every state, in declaration order.
    pub const ALL: [NodeState; 5] = [
        NodeState::Up,
        NodeState::Suspect,
        NodeState::Down,
        NodeState::Left,
        NodeState::Unreachable,
    ];

    /// The stable lowercase name ("up", "suspect", "down", "left", "unreachable").
    pub fn name(&self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
            NodeState::Left => "left",
            NodeState::Unreachable => "unreachable",
        }
    }

    /// Up and Suspect nodes are ring members; Down, Left and Unreachable nodes are not.
    pub fn in_ring(&self) -> bool {
        matches!(self, NodeState::Up | NodeState::Suspect)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NodeState {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseNameError { what: "node state", name: s.to_owned() })
    }
}

/// What the CMA knows about one node. Persisted on every change via [`Change::Node`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub hostname: String,
    pub version: String,
    pub listen_addr: SocketAddr,
    pub public_key: [u8; 32],
    pub addresses: Vec<String>,
    pub state: NodeState,
    /// When `state` was entered.
    #[serde(with = "micros")]
    pub since: Timestamp,
    /// When the node first registered.
    #[serde(with = "micros")]
    pub registered_at: Timestamp,
    /// Epoch of the last peer set sent to this node.
    pub peer_epoch: u64,
    /// Its current ring neighbours (desired), predecessor first; empty when not a ring member.
    pub peers: Vec<NodeId>,
}

impl NodeRecord {
    /// The name used in event texts: the hostname, or the id when the hostname is empty.
    pub fn display_name(&self) -> String {
        if self.hostname.is_empty() { self.id.to_string() } else { self.hostname.clone() }
    }
}

/// The kinds of event the CMA core publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    HostUp,
    HostSuspect,
    HostDown,
    HostLeft,
    PathSuspect,
    RingChanged,
    /// A service check's HARD state became OK (also: recovered).
    ServiceOk,
    ServiceWarning,
    ServiceCritical,
    ServiceUnknown,
    /// A check started flapping (reported once instead of as a storm of changes).
    ServiceFlapping,
    /// A host's discovered facts changed (a collector's result differs from the last one).
    DiscoveryChanged,
    /// An event submitted by a program on a host (`assim event send`).
    LocalEvent,
    /// Most of a switch ring went silent at once and nothing on the switch answers: one event
    /// for the switch, its hosts Unreachable (listed in the body).
    SwitchDown,
    /// The hosts of a switch that was down or unreachable are heard again (body: who came
    /// back, who did not).
    SwitchUp,
    /// Most of a switch ring went silent at once but some of its hosts still answer: the
    /// switch forwards, the silent hosts are cut off (Unreachable, listed in the body).
    SwitchUnreachable,
    /// One host became Unreachable on its own (its switch or segment was already down).
    HostUnreachable,
    /// A NIC or switch port is implicated (a host's only NIC went quiet while its switch works).
    LinkSuspect,
    /// A host's SSH host keys changed (critical unless it was re-installed: a new node id).
    HostKeyChanged,
    /// A node id registered for the first time ever (never on a restart): a new install.
    HostNew,
    /// A host's result for an audit rule became a failure (severity: the rule's).
    AuditFailed,
    /// A host passes an audit rule it failed before.
    AuditPassed,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 22] = [
        EventKind::HostUp,
        EventKind::HostSuspect,
        EventKind::HostDown,
        EventKind::HostLeft,
        EventKind::PathSuspect,
        EventKind::RingChanged,
        EventKind::ServiceOk,
        EventKind::ServiceWarning,
        EventKind::ServiceCritical,
        EventKind::ServiceUnknown,
        EventKind::ServiceFlapping,
        EventKind::DiscoveryChanged,
        EventKind::LocalEvent,
        EventKind::SwitchDown,
        EventKind::SwitchUp,
        EventKind::SwitchUnreachable,
        EventKind::HostUnreachable,
        EventKind::LinkSuspect,
        EventKind::HostKeyChanged,
        EventKind::HostNew,
        EventKind::AuditFailed,
        EventKind::AuditPassed,
    ];

    /// The stable dotted name ("host.up", …, "local.event").
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::HostUp => "host.up",
            EventKind::HostSuspect => "host.suspect",
            EventKind::HostDown => "host.down",
            EventKind::HostLeft => "host.left",
            EventKind::PathSuspect => "path.suspect",
            EventKind::RingChanged => "ring.changed",
            EventKind::ServiceOk => "service.ok",
            EventKind::ServiceWarning => "service.warning",
            EventKind::ServiceCritical => "service.critical",
            EventKind::ServiceUnknown => "service.unknown",
            EventKind::ServiceFlapping => "service.flapping",
            EventKind::DiscoveryChanged => "discovery.changed",
            EventKind::LocalEvent => "local.event",
            EventKind::SwitchDown => "switch.down",
            EventKind::SwitchUp => "switch.up",
            EventKind::SwitchUnreachable => "switch.unreachable",
            EventKind::HostUnreachable => "host.unreachable",
            EventKind::LinkSuspect => "link.suspect",
            EventKind::HostKeyChanged => "host.key_changed",
            EventKind::HostNew => "host.new",
            EventKind::AuditFailed => "audit.failed",
            EventKind::AuditPassed => "audit.passed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EventKind {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseNameError { what: "event kind", name: s.to_owned() })
    }
}

/// How bad an event is, least to most severe. Ordered, so filters can say `severity>=warning`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Debug,
    #[default]
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// Every severity, least severe first.
    pub const ALL: [Severity; 6] = [
        Severity::Debug,
        Severity::Info,
        Severity::Notice,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// The stable lowercase name ("debug", …, "critical").
    pub fn name(&self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Severity {
    type Err = ParseNameError;
    /// The names, plus the common aliases "warn", "err" and "crit".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = match s {
            "warn" => "warning",
            "err" => "error",
            "crit" => "critical",
            other => other,
        };
        Severity::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseNameError { what: "severity", name: s.to_owned() })
    }
}

impl EventKind {
    /// The severity an event of this kind gets unless its producer says otherwise.
    pub fn default_severity(&self) -> Severity {
        match self {
            EventKind::HostDown
            | EventKind::ServiceCritical
            | EventKind::SwitchDown
            | EventKind::HostKeyChanged => Severity::Critical,
            EventKind::SwitchUnreachable => Severity::Error,
            EventKind::AuditFailed => Severity::Warning,
            EventKind::HostSuspect
            | EventKind::PathSuspect
            | EventKind::ServiceWarning
            | EventKind::ServiceUnknown
            | EventKind::ServiceFlapping
            | EventKind::HostUnreachable
            | EventKind::LinkSuspect => Severity::Warning,
            EventKind::HostLeft => Severity::Notice,
            EventKind::HostUp
            | EventKind::RingChanged
            | EventKind::ServiceOk
            | EventKind::DiscoveryChanged
            | EventKind::LocalEvent
            | EventKind::SwitchUp
            | EventKind::HostNew
            | EventKind::AuditPassed => Severity::Info,
        }
    }
}

/// A published event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic and deterministic (`next_event_id`, persisted); never reused.
    pub id: u64,
    #[serde(with = "micros")]
    pub time: Timestamp,
    pub kind: EventKind,
    pub host: Option<NodeId>,
    pub hostname: String,
    /// Always `host` and `node` when the event is about a host; plus kind-specific tags
    /// (`reporter`, `a`, `b`, `reason`, `change`, `members`, …).
    pub tags: BTreeMap<String, String>,
    /// One plain sentence.
    pub text: String,
    /// How bad it is; [`EventKind::default_severity`] unless the producer chose one (events
    /// stored before severities existed read as `info`).
    #[serde(default)]
    pub severity: Severity,
    /// Optional structured detail (any JSON), e.g. a check's perfdata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// The CMA core's durable state: what [`crate::Cma::new`] restores from.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub nodes: Vec<NodeRecord>,
    /// Ring order of the "all" ring.
    pub ring: Vec<NodeId>,
    pub next_epoch: u64,
    pub next_event_id: u64,
    /// Each node's wiring (issue 13): the ring it belongs in and what that was derived from.
    #[serde(default)]
    pub wiring: Vec<crate::wiring::NodeWiring>,
}

/// Something the driver must do, drained with [`crate::Cma::poll_action`].
///
/// Within one input the core queues persistence first, then transmissions, then events, so a
/// driver that applies actions in order never sends what it has not stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send the whole desired peer set over reliable delivery.
    SendPeerSet { to: NodeId, addr: SocketAddr, set: assim_wire::msg::PeerSet },
    /// Send a direct liveness probe datagram; the node answers with the nonce
    /// ([`crate::Cma::handle_probe_reply`]).
    Probe { node: NodeId, addr: SocketAddr, nonce: u64 },
    /// Ask the nanoprobe `to` (on another switch) to probe `request.target` directly and
    /// answer with a `ProbeResult` ([`crate::Cma::handle_probe_result`]); sent over reliable
    /// delivery (module `incident`).
    ProbeRequest { to: NodeId, addr: SocketAddr, request: assim_wire::msg::ProbeRequest },
    /// Ping a switch's management address (ICMP echo from the CMA's host, a few tries within
    /// `timeout`) and answer with [`crate::Cma::handle_management_probe`] (module `incident`).
    /// Only with [`CmaConfig::management_probes`].
    ProbeManagement { id: u64, address: std::net::IpAddr, timeout: Duration },
    /// Write this to the store.
    Persist(Change),
    /// Publish this event.
    Emit(Event),
}

/// A change to durable state.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Insert or replace the node's record.
    Node(NodeRecord),
    /// Replace the stored ring order. Write-behind: see the crate docs.
    Ring(Vec<NodeId>),
    /// Replace the stored counters.
    Counters { next_epoch: u64, next_event_id: u64 },
    /// Insert or replace a node's wiring (its ring and what it was derived from); written in
    /// the input that derived it.
    Wiring(crate::wiring::NodeWiring),
    /// Replace these rings' descriptions (members, representatives, watchers); a ring with no
    /// members is gone. Write-behind like [`Change::Ring`]: only rings changed since the last
    /// write.
    Rings(Vec<crate::ring::RingRecord>),
}

/// Why a hello was refused. In every case the core's state is unchanged and no action queued.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// `listen_addr` is not an `ip:port` socket address.
    #[error("hello from {node}: listen address {addr:?} is not ip:port")]
    BadListenAddr { node: NodeId, addr: String },
    /// `listen_addr` has port 0 or an unspecified IP (0.0.0.0, ::), which peers cannot send to.
    /// A driver that wants to accept such nanoprobes substitutes the datagram's source IP first.
    #[error(
        "hello from {node}: listen address {addr} is not reachable by peers (unspecified IP or port 0)"
    )]
    UnreachableListenAddr { node: NodeId, addr: SocketAddr },
}

/// Counters, for metrics. Every field only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Heartbeat reports handled (PeerStatus entries about a peer count as one each).
    pub reports: u64,
    /// Dead/back-alive reports whose reporter is not (or no longer) a ring neighbour of the
    /// subject, or is not Up/Suspect itself.
    pub reports_ignored_not_neighbour: u64,
    /// Reports from or about a node the CMA does not know (or with a malformed peer id).
    pub reports_ignored_unknown: u64,
    /// Late reports (informational; never change state).
    pub reports_late: u64,
    /// Reports that changed nothing: a repeated dead report, a dead report about a Down or Left
    /// node, a martian or back-alive about an Up node, unspecified kinds.
    pub reports_no_effect: u64,
    /// Back-alive and martian reports made under an older peer-set epoch than the reporter's
    /// current one (delayed, e.g. queued through a partition): they may not revive a node.
    pub reports_stale_epoch: u64,
    /// Words about a suspect node older than what the CMA already had: older than the same
    /// reporter's last word (its epoch and clock), or an "alive" older than the silence it
    /// would contradict (e.g. replayed from a spool after a CMA outage). Ignored.
    #[serde(default)]
    pub reports_stale: u64,
    pub hellos: u64,
    pub hellos_rejected: u64,
    pub goodbyes: u64,
    pub probes_sent: u64,
    /// Probe replies that matched a nonce of the node's current suspicion.
    pub probe_replies: u64,
    /// Probe replies with a nonce the core did not issue for a current suspicion.
    pub probe_replies_unmatched: u64,
    pub peer_sets_sent: u64,
    /// Ring membership changes (joins and leaves) and repairs.
    pub ring_changes: u64,
    pub suspicions: u64,
    /// Suspect → Down because a second neighbour confirmed.
    pub downs_corroborated: u64,
    /// Suspect → Down because the CMA's own probe went unanswered until the deadline.
    pub downs_probe_failed: u64,
    pub path_suspects: u64,
    pub events: u64,
    /// Wiring derivations that moved a node to another ring.
    #[serde(default)]
    pub rewired: u64,
    /// Switch (or segment) incidents raised: `switch.down` and `switch.unreachable`.
    #[serde(default)]
    pub switch_incidents: u64,
    /// Hosts made Unreachable by a switch incident (instead of Down).
    #[serde(default)]
    pub unreachable: u64,
    /// Ring checks opened (every member of one ring probed at once).
    #[serde(default)]
    pub ring_checks: u64,
    /// Dead and late words made under a peer set older than the reporter's or the subject's
    /// return from Down, Unreachable or Left (spooled inside an outage, delivered after it):
    /// ignored.
    #[serde(default)]
    pub reports_before_return: u64,
    /// `ProbeRequest`s sent to nanoprobes on other switches while a ring was checked.
    #[serde(default)]
    pub peer_probe_requests: u64,
    /// Their `ProbeResult`s: the target answered the prober.
    #[serde(default)]
    pub peer_probe_answered: u64,
    /// Their `ProbeResult`s: the target did not answer the prober.
    #[serde(default)]
    pub peer_probe_silent: u64,
    /// `ProbeResult`s that matched no open request (late, or not ours): ignored.
    #[serde(default)]
    pub peer_probe_unmatched: u64,
    /// Pings of a checked switch's management address asked of the driver, answered ones,
    /// and answers that matched no open check (late).
    #[serde(default)]
    pub management_probes: u64,
    #[serde(default)]
    pub management_answered: u64,
    #[serde(default)]
    pub management_unmatched: u64,
}

/// Serde for [`Timestamp`] (which has no serde impl of its own): µs since the epoch as a number.
mod micros {
    use assim_wire::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.micros())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        u64::deserialize(d).map(Timestamp)
    }
}
