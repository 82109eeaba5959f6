//! Messages of both directions.
//!
//! [`Message`] travels over reliable delivery (nanoprobe ⇄ CMA). [`Direct`] travels in single
//! unreliable datagrams: heartbeats between ring neighbours, and the CMA's liveness probe with its
//! reply. Both are Protocol Buffers: decoders skip unknown fields, and a message whose `oneof`
//! variant is unknown decodes with `body == None`, which receivers count and ignore.
//!
//! Node ids travel as 16 raw bytes, public keys as 32, times as microseconds since the Unix epoch,
//! durations as milliseconds, addresses as text (`"127.0.0.1:1984"`, `"[::1]:1984"`).

use prost::Message as _;

/// A reliable message. `record` is the sender's durable record number (spool or outbox), used by
/// the receiver to acknowledge durable acceptance and to drop duplicates after a restart; 0
/// means the message is not spooled.
///
/// Tag 2 is reserved: a CMA packet reader appends it (the reader that took the message) to the
/// message's bytes on the way into a shared inbox, and decoding skips it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(uint64, tag = "1")]
    pub record: u64,
    #[prost(
        oneof = "Body",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 40, 41, 42, 43, 44, 45, 46, 47"
    )]
    pub body: Option<Body>,
}

/// The body of a reliable message. Tags 10–39 flow nanoprobe → CMA, 40–69 CMA → nanoprobe.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    // --- nanoprobe -> CMA ---
    #[prost(message, tag = "10")]
    Hello(Hello),
    #[prost(message, tag = "11")]
    Goodbye(Goodbye),
    #[prost(message, tag = "12")]
    NetConfig(NetConfig),
    #[prost(message, tag = "13")]
    HeartbeatReport(HeartbeatReport),
    #[prost(message, tag = "14")]
    PeerStatus(PeerStatus),
    #[prost(message, tag = "15")]
    CommandResult(CommandResult),
    #[prost(message, tag = "16")]
    DiscoveryResult(DiscoveryResult),
    #[prost(message, tag = "17")]
    CheckStateChange(CheckStateChange),
    #[prost(message, tag = "18")]
    LocalEvent(LocalEvent),
    #[prost(message, tag = "19")]
    ArpDelta(ArpDelta),
    #[prost(message, tag = "20")]
    Statistics(Statistics),
    /// The answer to a [`ProbeRequest`].
    #[prost(message, tag = "21")]
    ProbeResult(ProbeResult),
    // --- CMA -> nanoprobe ---
    #[prost(message, tag = "40")]
    Config(Config),
    #[prost(message, tag = "41")]
    PeerSet(PeerSet),
    #[prost(message, tag = "42")]
    DiscoverySchedule(DiscoverySchedule),
    #[prost(message, tag = "43")]
    CheckSet(CheckSet),
    #[prost(message, tag = "44")]
    RunNow(RunNow),
    #[prost(message, tag = "45")]
    ProbeRequest(ProbeRequest),
    #[prost(message, tag = "46")]
    Shutdown(Shutdown),
    #[prost(message, tag = "47")]
    Ack(Ack),
}

impl Body {
    /// A short stable name for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Hello(_) => "hello",
            Body::Goodbye(_) => "goodbye",
            Body::NetConfig(_) => "net_config",
            Body::HeartbeatReport(_) => "heartbeat_report",
            Body::PeerStatus(_) => "peer_status",
            Body::CommandResult(_) => "command_result",
            Body::DiscoveryResult(_) => "discovery_result",
            Body::CheckStateChange(_) => "check_state_change",
            Body::LocalEvent(_) => "local_event",
            Body::ArpDelta(_) => "arp_delta",
            Body::Statistics(_) => "statistics",
            Body::ProbeResult(_) => "probe_result",
            Body::Config(_) => "config",
            Body::PeerSet(_) => "peer_set",
            Body::DiscoverySchedule(_) => "discovery_schedule",
            Body::CheckSet(_) => "check_set",
            Body::RunNow(_) => "run_now",
            Body::ProbeRequest(_) => "probe_request",
            Body::Shutdown(_) => "shutdown",
            Body::Ack(_) => "ack",
        }
    }
}

impl Message {
    /// A message with no durable record number.
    pub fn new(body: Body) -> Self {
        Message { record: 0, body: Some(body) }
    }

    /// Encodes to a fresh buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes, skipping unknown fields.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }
}

/// An unreliable single-datagram message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Direct {
    #[prost(oneof = "DirectBody", tags = "1, 2, 3")]
    pub body: Option<DirectBody>,
}

/// The body of an unreliable message.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DirectBody {
    /// "I am alive", sent every interval to each ring neighbour.
    #[prost(message, tag = "1")]
    Heartbeat(Heartbeat),
    /// The CMA asks a suspect node to answer (failure disambiguation).
    #[prost(message, tag = "2")]
    Probe(Probe),
    /// A node's answer to [`Probe`].
    #[prost(message, tag = "3")]
    ProbeReply(Probe),
}

impl Direct {
    /// Encodes to a fresh buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes, skipping unknown fields.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }
}

// ----------------------------------------------------------------------------------------------
// nanoprobe -> CMA

/// Registration: sent on start-up and again whenever the nanoprobe sees the CMA restart.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// The nanoprobe's software version.
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub hostname: String,
    /// Where this nanoprobe receives heartbeats and commands (its UDP listen address).
    #[prost(string, tag = "3")]
    pub listen_addr: String,
    /// The host's interface addresses with prefix ("192.0.2.7/24").
    #[prost(string, repeated, tag = "4")]
    pub addresses: Vec<String>,
    /// When this nanoprobe process started (µs since the epoch).
    #[prost(uint64, tag = "5")]
    pub started_at: u64,
    /// Proof of a join token, on first enrollment.
    #[prost(message, optional, tag = "6")]
    pub token_proof: Option<TokenProof>,
    /// The heartbeat epoch the nanoprobe currently runs (0 after a fresh start).
    #[prost(uint64, tag = "7")]
    pub peer_epoch: u64,
    /// The spool's incarnation: a random number made when the spool was created (kept in its
    /// directory). A new one means the spool was lost or reset and its record numbers start at
    /// 1 again, so the CMA forgets the node's old high-water mark (issue 16 item 9). 0: a
    /// sender without this field (never resets anything).
    #[prost(uint64, tag = "8")]
    pub spool_incarnation: u64,
    /// The highest spool record of this incarnation the CMA acknowledged (0: none, or a sender
    /// without this field). A packet reader that has not seen the node's latest records (the
    /// node moved to it from another reader of the same CMA, issue 14) continues its
    /// next-record rule from here. A node that claims too much only loses its own records.
    #[prost(uint64, tag = "9")]
    pub acked_through: u64,
}

/// Proves knowledge of a join token's secret. It travels only inside the sealed `Hello`,
/// encrypted to the CMA key the token pins.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenProof {
    /// Identifies the token (derived from its secret; not secret itself).
    #[prost(bytes = "vec", tag = "1")]
    pub token_id: Vec<u8>,
    /// HMAC-SHA256 keyed by the secret over the node id and the node's public key.
    #[prost(bytes = "vec", tag = "2")]
    pub mac: Vec<u8>,
    /// The token's secret itself, so that the CMA needs to keep only its SHA-256 (a copy of the
    /// CMA's database then enrolls nobody). Empty from nanoprobes before this field existed.
    #[prost(bytes = "vec", tag = "3")]
    pub secret: Vec<u8>,
}

/// Why a nanoprobe says goodbye.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum GoodbyeReason {
    Unspecified = 0,
    Shutdown = 1,
    Suspend = 2,
}

/// Graceful leave: the CMA heals the ring and raises no alarm.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Goodbye {
    #[prost(enumeration = "GoodbyeReason", tag = "1")]
    pub reason: i32,
}

/// The host's network configuration changed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetConfig {
    #[prost(string, tag = "1")]
    pub listen_addr: String,
    #[prost(string, repeated, tag = "2")]
    pub addresses: Vec<String>,
}

/// What a nanoprobe observed about a heartbeat peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ReportKind {
    Unspecified = 0,
    /// No heartbeat for the dead time.
    Dead = 1,
    /// No heartbeat for the warn time.
    Late = 2,
    /// Heartbeats resumed after late or dead.
    BackAlive = 3,
    /// A heartbeat from a node that is not an expected peer.
    Martian = 4,
}

impl ReportKind {
    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            ReportKind::Unspecified => "unspecified",
            ReportKind::Dead => "dead",
            ReportKind::Late => "late",
            ReportKind::BackAlive => "back_alive",
            ReportKind::Martian => "martian",
        }
    }
}

/// A heartbeat observation about one peer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatReport {
    #[prost(enumeration = "ReportKind", tag = "1")]
    pub kind: i32,
    /// The peer the report is about.
    #[prost(bytes = "vec", tag = "2")]
    pub peer: Vec<u8>,
    /// The address the peer's heartbeats came from (martian) or were expected from.
    #[prost(string, tag = "3")]
    pub peer_addr: String,
    /// Milliseconds since the last heartbeat from the peer (0 if never heard).
    #[prost(uint64, tag = "4")]
    pub silent_ms: u64,
    /// The reporter's peer-set epoch when it made the report.
    #[prost(uint64, tag = "5")]
    pub epoch: u64,
    /// When the reporter made the observation, µs since the Unix epoch in the reporter's own
    /// clock (the nanoprobe stamps it when it spools the report); 0 = not said (older
    /// nanoprobes). The CMA orders evidence with it: a report may reach it long after it was
    /// made (spooled through a CMA outage).
    #[prost(uint64, tag = "6")]
    pub at: u64,
}

/// Liveness of one peer as a nanoprobe sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PeerLiveness {
    Unknown = 0,
    Alive = 1,
    Late = 2,
    Dead = 3,
}

/// One expected peer in a [`PeerStatus`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerState {
    #[prost(bytes = "vec", tag = "1")]
    pub peer: Vec<u8>,
    #[prost(enumeration = "PeerLiveness", tag = "2")]
    pub liveness: i32,
}

/// "Whom I expect heartbeats from and their state; whom I send to" — sent when it changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerStatus {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(message, repeated, tag = "2")]
    pub expecting: Vec<PeerState>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub sending_to: Vec<Vec<u8>>,
    /// When the status was made, µs since the Unix epoch in the reporter's clock; 0 = not said.
    /// See [`HeartbeatReport::at`].
    #[prost(uint64, tag = "4")]
    pub at: u64,
}

/// Acknowledges (or refuses) a command from the CMA.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommandResult {
    #[prost(uint64, tag = "1")]
    pub command_id: u64,
    #[prost(bool, tag = "2")]
    pub ok: bool,
    #[prost(string, tag = "3")]
    pub error: String,
    /// Command-specific result (e.g. a check's output), JSON.
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
}

/// A discovery collector's result, sent only when its content hash changed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryResult {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content_hash: Vec<u8>,
    /// JSON document.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub collected_at: u64,
    /// True when `payload` is a delta against the previous result.
    #[prost(bool, tag = "5")]
    pub delta: bool,
}

/// Service check states (Nagios numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CheckState {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl CheckState {
    /// The lowercase name ("ok", "warning", "critical", "unknown"), as events, the API and the
    /// CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            CheckState::Ok => "ok",
            CheckState::Warning => "warning",
            CheckState::Critical => "critical",
            CheckState::Unknown => "unknown",
        }
    }
}

/// A check's HARD state changed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckStateChange {
    #[prost(string, tag = "1")]
    pub check: String,
    #[prost(enumeration = "CheckState", tag = "2")]
    pub state: i32,
    #[prost(string, tag = "3")]
    pub output: String,
    #[prost(string, tag = "4")]
    pub perfdata: String,
    #[prost(uint64, tag = "5")]
    pub at: u64,
    #[prost(bool, tag = "6")]
    pub flapping: bool,
    /// The check's first HARD state since it was configured or the nanoprobe started (the CMA
    /// records an initial OK without raising an event).
    #[prost(bool, tag = "7")]
    pub initial: bool,
}

/// A `key=value` tag.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Tag {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// An event submitted by a program on the host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LocalEvent {
    #[prost(string, tag = "1")]
    pub event_type: String,
    #[prost(string, tag = "2")]
    pub severity: String,
    #[prost(string, tag = "3")]
    pub text: String,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
    #[prost(uint64, tag = "5")]
    pub at: u64,
}

/// One neighbour-table entry.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ArpEntry {
    #[prost(string, tag = "1")]
    pub ip: String,
    #[prost(string, tag = "2")]
    pub mac: String,
    #[prost(string, tag = "3")]
    pub interface: String,
}

/// Changes to the neighbour (ARP/NDP) table since the last delta.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArpDelta {
    #[prost(message, repeated, tag = "1")]
    pub added: Vec<ArpEntry>,
    #[prost(message, repeated, tag = "2")]
    pub removed: Vec<ArpEntry>,
}

/// A named counter.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub value: u64,
}

/// The nanoprobe's own counters, and (issue 17 item 5) one interval's batch of the statistics
/// local programs put. Senders without the batch fields leave them empty; decoders that do not
/// know them skip them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Statistics {
    #[prost(message, repeated, tag = "1")]
    pub counters: Vec<Counter>,
    /// The aggregated series of the interval.
    #[prost(message, repeated, tag = "2")]
    pub series: Vec<StatSeries>,
    /// The end of the interval, µs since the Unix epoch in the nanoprobe's clock (the
    /// timestamp Graphite gets).
    #[prost(uint64, tag = "3")]
    pub at: u64,
    /// The interval's length in seconds.
    #[prost(uint64, tag = "4")]
    pub interval_s: u64,
}

/// One aggregated statistic: a counter's sum over the interval or a gauge's last value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatSeries {
    /// A Graphite path (`backup.bytes`).
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub tags: Vec<Tag>,
    /// A counter (else a gauge).
    #[prost(bool, tag = "3")]
    pub counter: bool,
    #[prost(double, tag = "4")]
    pub value: f64,
}

// ----------------------------------------------------------------------------------------------
// CMA -> nanoprobe

/// General nanoprobe settings pushed by the CMA.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Config {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// How often to send [`Statistics`], in seconds (0 = never).
    #[prost(uint64, tag = "2")]
    pub statistics_interval_s: u64,
}

/// One heartbeat peer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(bytes = "vec", tag = "1")]
    pub node_id: Vec<u8>,
    #[prost(string, tag = "2")]
    pub addr: String,
    #[prost(bytes = "vec", tag = "3")]
    pub public_key: Vec<u8>,
}

/// The whole desired heartbeat set of a node, as of `epoch`. A node applies the newest epoch it
/// has seen and ignores older ones, so re-sending is harmless.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerSet {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(message, repeated, tag = "2")]
    pub peers: Vec<Peer>,
    #[prost(uint64, tag = "3")]
    pub interval_ms: u64,
    #[prost(uint64, tag = "4")]
    pub warn_ms: u64,
    #[prost(uint64, tag = "5")]
    pub dead_ms: u64,
}

/// One scheduled discovery collector.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryEntry {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub interval_s: u64,
    #[prost(message, repeated, tag = "3")]
    pub params: Vec<Tag>,
}

/// The desired discovery schedule, as of `epoch`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoverySchedule {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<DiscoveryEntry>,
}

/// One service check.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckSpec {
    #[prost(string, tag = "1")]
    pub name: String,
    /// "nagios", "ocf", "lsb", "systemd", "tcp", "process".
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, repeated, tag = "3")]
    pub argv: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub params: Vec<Tag>,
    #[prost(uint64, tag = "5")]
    pub interval_s: u64,
    #[prost(uint64, tag = "6")]
    pub retry_interval_s: u64,
    #[prost(uint32, tag = "7")]
    pub max_attempts: u32,
    #[prost(uint64, tag = "8")]
    pub timeout_s: u64,
}

/// The desired check set, as of `epoch`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckSet {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(message, repeated, tag = "2")]
    pub checks: Vec<CheckSpec>,
}

/// Run a check now and answer with a [`CommandResult`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunNow {
    #[prost(uint64, tag = "1")]
    pub command_id: u64,
    #[prost(string, tag = "2")]
    pub check: String,
}

/// Ask a nanoprobe to probe another node directly and report (disambiguation, issue 13): the
/// nanoprobe sends the target a [`Probe`] (sealed, carrying its own key, since the target may
/// not know it) up to three times within `timeout_ms` and answers with a [`ProbeResult`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProbeRequest {
    #[prost(uint64, tag = "1")]
    pub command_id: u64,
    /// The target's node id (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub target: Vec<u8>,
    /// The target's listen address ("192.0.2.7:1984").
    #[prost(string, tag = "3")]
    pub addr: String,
    /// The target's public key (32 bytes), to seal the probe to it.
    #[prost(bytes = "vec", tag = "4")]
    pub public_key: Vec<u8>,
    /// How long to wait for the target's answer, in ms (0: the nanoprobe's default).
    #[prost(uint64, tag = "5")]
    pub timeout_ms: u64,
}

/// What a nanoprobe found when it probed another node for a [`ProbeRequest`]. Not spooled:
/// it is evidence for a decision due within seconds, worthless later.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProbeResult {
    /// The request's `command_id`.
    #[prost(uint64, tag = "1")]
    pub command_id: u64,
    /// The probed node's id (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub target: Vec<u8>,
    /// Whether the target answered within the timeout.
    #[prost(bool, tag = "3")]
    pub answered: bool,
    /// Round-trip time of the answered probe, µs (0 when unanswered).
    #[prost(uint64, tag = "4")]
    pub rtt_us: u64,
    /// How many probes were sent.
    #[prost(uint32, tag = "5")]
    pub attempts: u32,
}

/// Stop the nanoprobe.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Shutdown {
    #[prost(string, tag = "1")]
    pub reason: String,
}

/// The CMA durably accepted every record up to and including `through`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(uint64, tag = "1")]
    pub through: u64,
    /// The spool incarnation `through` counts in (the one of the node's latest hello): a
    /// nanoprobe whose spool has another one ignores the ack, so an acknowledgement of a lost
    /// spool's records never deletes the new spool's (issue 16 item 9). 0: a CMA without this
    /// field, or a node that announced none.
    #[prost(uint64, tag = "2")]
    pub incarnation: u64,
}

/// A heartbeat.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    /// The sender's peer-set epoch.
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// The sender's heartbeat interval in ms (lets a receiver sanity-check its own settings).
    #[prost(uint64, tag = "2")]
    pub interval_ms: u64,
}

/// The CMA's liveness probe, and the reply echoing its nonce.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Probe {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A future version of `Hello` with a field v1 does not know.
    #[derive(Clone, PartialEq, prost::Message)]
    struct HelloV2 {
        #[prost(string, tag = "1")]
        version: String,
        #[prost(string, tag = "2")]
        hostname: String,
        #[prost(string, tag = "99")]
        rack_location: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct MessageV2 {
        #[prost(uint64, tag = "1")]
        record: u64,
        #[prost(message, optional, tag = "10")]
        hello: Option<HelloV2>,
        #[prost(bytes = "vec", tag = "500")]
        future_envelope_field: Vec<u8>,
    }

    #[test]
    fn v1_decoder_skips_unknown_fields() {
        let v2 = MessageV2 {
            record: 5,
            hello: Some(HelloV2 {
                version: "2.0".into(),
                hostname: "db1".into(),
                rack_location: "row 7".into(),
            }),
            future_envelope_field: vec![1, 2, 3],
        };
        let bytes = v2.encode_to_vec();
        let v1 = Message::from_bytes(&bytes).unwrap();
        assert_eq!(v1.record, 5);
        match v1.body {
            Some(Body::Hello(h)) => {
                assert_eq!(h.hostname, "db1");
                assert_eq!(h.version, "2.0");
            }
            other => panic!("expected hello, got {other:?}"),
        }
    }

    #[test]
    fn item_9_hello_spool_incarnation_is_optional_on_the_wire() {
        // A hello of a sender that predates the field decodes with incarnation 0.
        let old = MessageV2 {
            record: 0,
            hello: Some(HelloV2 {
                version: "1.0".into(),
                hostname: "old".into(),
                ..Default::default()
            }),
            future_envelope_field: Vec::new(),
        };
        match Message::from_bytes(&old.encode_to_vec()).unwrap().body {
            Some(Body::Hello(h)) => {
                assert_eq!((h.hostname.as_str(), h.spool_incarnation), ("old", 0))
            }
            other => panic!("expected hello, got {other:?}"),
        }
        // A new one carries it, and an old decoder (HelloV2 has no tag 8) skips it.
        let new = Message::new(Body::Hello(Hello {
            hostname: "new".into(),
            spool_incarnation: 0xfeed_f00d_dead_beef,
            ..Default::default()
        }));
        let bytes = new.to_bytes();
        assert_eq!(Message::from_bytes(&bytes).unwrap(), new);
        let v2 = MessageV2::decode(bytes.as_slice()).unwrap();
        assert_eq!(v2.hello.unwrap().hostname, "new");
    }

    #[test]
    fn unknown_body_variant_decodes_to_none() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Future {
            #[prost(uint64, tag = "1")]
            record: u64,
            #[prost(string, tag = "69")]
            something_new: String,
        }
        let bytes = Future { record: 3, something_new: "x".into() }.encode_to_vec();
        let m = Message::from_bytes(&bytes).unwrap();
        assert_eq!(m.record, 3);
        assert!(m.body.is_none());
    }

    #[test]
    fn every_body_round_trips() {
        let bodies = vec![
            Body::Hello(Hello { hostname: "h".into(), ..Default::default() }),
            Body::Goodbye(Goodbye { reason: GoodbyeReason::Shutdown as i32 }),
            Body::NetConfig(NetConfig::default()),
            Body::HeartbeatReport(HeartbeatReport {
                kind: ReportKind::Dead as i32,
                ..Default::default()
            }),
            Body::PeerStatus(PeerStatus::default()),
            Body::CommandResult(CommandResult::default()),
            Body::DiscoveryResult(DiscoveryResult::default()),
            Body::CheckStateChange(CheckStateChange::default()),
            Body::LocalEvent(LocalEvent::default()),
            Body::ArpDelta(ArpDelta::default()),
            Body::Statistics(Statistics::default()),
            Body::ProbeResult(ProbeResult {
                command_id: 3,
                target: vec![1; 16],
                answered: true,
                rtt_us: 250,
                attempts: 1,
            }),
            Body::Config(Config::default()),
            Body::PeerSet(PeerSet { epoch: 9, ..Default::default() }),
            Body::DiscoverySchedule(DiscoverySchedule::default()),
            Body::CheckSet(CheckSet::default()),
            Body::RunNow(RunNow::default()),
            Body::ProbeRequest(ProbeRequest {
                command_id: 3,
                target: vec![1; 16],
                addr: "192.0.2.7:1984".into(),
                public_key: vec![2; 32],
                timeout_ms: 1000,
            }),
            Body::Shutdown(Shutdown::default()),
            Body::Ack(Ack { through: 4, incarnation: 9 }),
        ];
        for b in bodies {
            let m = Message { record: 1, body: Some(b) };
            assert_eq!(Message::from_bytes(&m.to_bytes()).unwrap(), m);
        }
        for d in [
            DirectBody::Heartbeat(Heartbeat { epoch: 1, interval_ms: 1000 }),
            DirectBody::Probe(Probe { nonce: 7 }),
            DirectBody::ProbeReply(Probe { nonce: 7 }),
        ] {
            let m = Direct { body: Some(d) };
            assert_eq!(Direct::from_bytes(&m.to_bytes()).unwrap(), m);
        }
    }

    #[test]
    fn issue_17_item_5_statistics_batches_are_compatible_both_ways() {
        /// `Statistics` as it was before the batch fields.
        #[derive(Clone, PartialEq, prost::Message)]
        struct StatisticsV1 {
            #[prost(message, repeated, tag = "1")]
            counters: Vec<Counter>,
        }
        let new = Statistics {
            counters: vec![Counter { name: "spooled".into(), value: 3 }],
            series: vec![StatSeries {
                name: "backup.bytes".into(),
                tags: vec![Tag { key: "role".into(), value: "db".into() }],
                counter: true,
                value: 1234.5,
            }],
            at: 1_700_000_060_000_000,
            interval_s: 60,
        };
        let bytes = new.encode_to_vec();
        assert_eq!(Statistics::decode(bytes.as_slice()).unwrap(), new);
        // An old decoder skips the batch and keeps the counters.
        let old = StatisticsV1::decode(bytes.as_slice()).unwrap();
        assert_eq!(old.counters, new.counters);
        // An old sender's message decodes with an empty batch.
        let from_old = Statistics::decode(old.encode_to_vec().as_slice()).unwrap();
        assert!(from_old.series.is_empty() && from_old.at == 0);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Message::from_bytes(&bytes);
            let _ = Direct::from_bytes(&bytes);
        }
    }
}
