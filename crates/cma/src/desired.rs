//! [`Authority`]: the whole CMA decision core — the liveness core ([`Cma`]) plus every piece of
//! desired state a nanoprobe is sent (discovery schedule, check set, run-now), the check sets'
//! rules and memory, and what must be stored for them. Sans-IO like [`Cma`]: every input takes
//! `now`; outputs are queued [`Output`]s drained with [`Authority::poll_output`].
//!
//! The CMA shell owns one `Authority` and calls, per inbox record or request:
//!
//! The driver code each input replaced (deleted when the shell adopted the `Authority`) was in
//! `crates/cma-daemon/src/` (`cma.rs`, `cma/checks_cma.rs`, `discovery.rs`).
//!
//! | input | replaced |
//! |---|---|
//! | [`Authority::new`] | `discovery::schedule_message` (epoch in store meta), `CmaChecks::load`, and the loop in `cma::run` that re-sends every member's peer set after a start |
//! | [`Authority::handle_hello`] | `Driver::handle_message`'s `Body::Hello` branch: sending the `DiscoverySchedule`, `checks_on_hello` |
//! | [`Authority::handle_discovery`] | `Driver::store_discovery` (validation, the `DiscoveryRecord`) and `checks_on_sockets` |
//! | [`Authority::handle_check_state_change`] | `Driver::check_change` (known states, the `ServiceStateRecord`) |
//! | [`Authority::run_check`], [`Authority::command_result`], [`Authority::cancel_command`] | `Driver::run_request`, `Driver::command_result` (the shell keeps only the reply channels, keyed by command id) |
//! | [`Authority::add_manual_check`], [`Authority::remove_manual_check`], [`Authority::list_checks`] | `add_manual`, `remove_manual`, the `List` request (the shell commits the batch before answering, as `commit_now` did) |
//! | [`Authority::handle_goodbye`], `handle_report`, `handle_peer_status`, `handle_probe_reply`, `handle_alive`, `handle_local_event`, `handle_timeout`, `poll_timeout` | the same calls on [`Cma`], unchanged |
//!
//! What the shell still does: authenticate, enrol, dedupe, ack, and for each [`Output`]:
//! `Core(Action)` as today (peer sets, probes, `Persist(Change)`, events); `Send` — encode
//! `Message::new(body)` and send it over the node's reliable connection; `Persist` — add the
//! [`DesiredChange`] to the batch written with the inbox position. At start it builds a
//! [`DesiredSnapshot`] from the store (the schedule's two meta keys, `check_sets`,
//! `service_states`, `manual_checks`, `remembered_services`, and each node's latest `sockets`
//! discovery payload).
//!
//! Epochs: the check set's epoch is the stored one + 1 on every change (the daemon used
//! `max(previous + 1, now in seconds)`; stored epochs from it simply continue), the schedule's
//! the stored one + 1 on a configuration change. Both survive a restart through the snapshot.
//!
//! Why a layer over [`Cma`] rather than new [`Action`] variants: the simulator, the daemon and
//! the store match `Action` and `Change` exhaustively and build `CmaConfig` by its fields, so
//! new variants would break them until the shells adopt this API. Once they do, the two output
//! types can be folded into one.
//!
//! Order of outputs for one input: the liveness core's actions first (its own order: persist,
//! peer sets, probes, events), then this layer's `Persist`s, then its `Send`s — a driver that
//! applies them in order never sends what it has not stored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use assim_checks::RuleSet;
use assim_wire::msg::{self, Body, CheckState, CheckStateChange, Hello};
use assim_wire::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Cma;
use crate::check_sets::{CheckListEntry, CheckSetRecord, CheckSets, ManualChange, ManualCheck};
use crate::check_sets::{RememberedService, listeners_of};
use crate::host_keys::{HostKeys, keys_of};
use crate::host_new::{HostNew, HostNewChange, StoredWaiting};
use crate::model::{Action, CmaConfig, EventKind, HelloError, Snapshot};
use crate::schedule::{ScheduleConfig, StoredSchedule, default_schedule_config};
use crate::services::{CheckChangeError, KnownState};

/// The most `RunNow` commands awaiting an answer; the oldest is forgotten beyond this.
pub const MAX_PENDING_COMMANDS: usize = 4096;

/// The longest discovery collector name accepted.
pub const MAX_DISCOVERY_NAME: usize = 64;

/// Configuration of the whole core.
#[derive(Clone, Debug)]
pub struct AuthorityConfig {
    pub core: CmaConfig,
    /// Discovery intervals sent to every nanoprobe that registers.
    pub discovery: ScheduleConfig,
    /// Compiled monitoring rules (the shell loads the files: `RuleSet::load`).
    pub rules: RuleSet,
    /// The security audit rules (shipped, plus the operator's; `assim_audit::RuleSet::build`).
    pub audit: assim_audit::RuleSet,
    /// How long a new node's `host.new` waits for its OS and SSH host keys
    /// ([`crate::host_new`]).
    pub host_new_wait: std::time::Duration,
}

impl Default for AuthorityConfig {
    /// Default timing, the built-in discovery schedule, the shipped rules.
    fn default() -> Self {
        AuthorityConfig {
            core: CmaConfig::default(),
            discovery: default_schedule_config(),
            rules: RuleSet::defaults(),
            audit: assim_audit::RuleSet::defaults(),
            host_new_wait: crate::host_new::DEFAULT_WAIT,
        }
    }
}

/// The last reported state of one check (persisted; `service_states`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStateRecord {
    pub node: NodeId,
    pub check: String,
    /// "ok", "warning", "critical", "unknown".
    pub state: String,
    pub output: String,
    pub perfdata: String,
    pub flapping: bool,
    /// When the state was entered (the nanoprobe's time, else `now`), µs since the epoch. The
    /// store keeps the older value while the state stays the same.
    pub since: u64,
    /// When it was last reported, µs since the epoch.
    pub updated_at: u64,
}

/// A collector's latest result for one node (persisted; `discovery`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryRecord {
    pub node: NodeId,
    pub name: String,
    /// Hex of the content hash the nanoprobe computed.
    pub hash: String,
    /// The collector's JSON document.
    pub payload: String,
    /// When the nanoprobe collected it, µs since the epoch.
    pub collected_at: u64,
    /// When the CMA accepted it (`now`), µs since the epoch.
    pub updated_at: u64,
}

/// A change to durable desired state, carried out by the shell in the current batch.
#[derive(Clone, Debug, PartialEq)]
pub enum DesiredChange {
    /// The discovery schedule's configuration and epoch (meta `discovery_schedule`,
    /// `discovery_epoch`).
    Schedule(StoredSchedule),
    /// Replace the node's check set (and its monitors).
    CheckSet(CheckSetRecord),
    /// Upsert a check's last state.
    ServiceState(ServiceStateRecord),
    /// Add or remove a hand-set check.
    Manual(ManualChange),
    /// Replace the node's remembered services.
    Remembered { node: NodeId, services: Vec<RememberedService> },
    /// Replace the node's latest result of one collector.
    Discovery(DiscoveryRecord),
    /// A node waits for its `host.new`, or it was raised ([`crate::host_new`]).
    HostNew(HostNewChange),
}

/// What [`Authority::new`] restores from, besides the liveness [`Snapshot`].
#[derive(Clone, Debug, Default)]
pub struct DesiredSnapshot {
    pub schedule: Option<StoredSchedule>,
    pub check_sets: Vec<CheckSetRecord>,
    pub states: Vec<ServiceStateRecord>,
    pub manual: Vec<ManualCheck>,
    pub remembered: Vec<(NodeId, Vec<RememberedService>)>,
    /// Each node's latest `sockets` discovery payload (JSON), for its check set.
    pub sockets: Vec<(NodeId, Vec<u8>)>,
    /// Each node's latest `ssh_host_keys` discovery payload (JSON), for `host.key_changed`.
    pub host_keys: Vec<(NodeId, Vec<u8>)>,
    /// Each node's latest `security` discovery payload (JSON), for the audit events.
    pub security: Vec<(NodeId, Vec<u8>)>,
    /// The nodes whose `host.new` is not raised yet, with what arrived for it.
    pub host_new: Vec<StoredWaiting>,
}

/// Something the shell must do, drained with [`Authority::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// From the liveness core: peer sets, probes, its persistence, events.
    Core(Action),
    /// Send this desired-state message (`DiscoverySchedule`, `CheckSet`, `RunNow`) to the node
    /// over reliable delivery: `Message::new(body)`.
    Send { to: NodeId, addr: SocketAddr, body: Body },
    /// Store this in the current batch.
    Persist(DesiredChange),
}

/// Why a discovery result was refused. Nothing changed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("discovery result from an unknown node {0}")]
    UnknownNode(NodeId),
    #[error("discovery result {name:?} from {node}: {why}")]
    Invalid { node: NodeId, name: String, why: &'static str },
}

/// Why a checks request from the API was refused. Nothing changed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ChecksError {
    /// No such host or check (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid (HTTP 400).
    #[error("{0}")]
    Invalid(String),
}

/// The answer to a `RunNow`, for whoever asked ([`Authority::command_result`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CommandAnswer {
    pub command_id: u64,
    /// The node's JSON payload, or why there is none.
    pub answer: Result<serde_json::Value, String>,
}

/// A `RunNow` waiting for its node's answer.
#[derive(Clone, Debug)]
struct PendingCommand {
    node: NodeId,
}

/// The whole CMA decision core. See the module doc.
#[derive(Debug)]
pub struct Authority {
    cma: Cma,
    schedule: msg::DiscoverySchedule,
    checks: CheckSets,
    commands: BTreeMap<u64, PendingCommand>,
    next_command: u64,
    out: VecDeque<Output>,
    persist: Vec<DesiredChange>,
    send: Vec<(NodeId, SocketAddr, Body)>,
    host_keys: HostKeys,
    audit: crate::audit_watch::AuditWatch,
    host_new: HostNew,
    /// Service alarms suppressed while their host was unreachable behind a switch and not OK
    /// when last reported: raised once when the switch is back (`switch.up`), if still so.
    /// In memory: after a CMA restart a held alarm stays suppressed (its info event and the
    /// stored state remain).
    held_alarms: BTreeMap<NodeId, BTreeSet<String>>,
}

impl Authority {
    /// Restores from the stores' snapshots. Decides the discovery schedule's epoch (persisting
    /// it when the configuration changed) and re-sends every ring member its peer set (no
    /// epoch change): desired state after a start, which also tells each nanoprobe the CMA
    /// restarted so it registers again and resends what it has not seen acknowledged.
    pub fn new(
        config: AuthorityConfig,
        snapshot: Snapshot,
        desired: DesiredSnapshot,
        now: Timestamp,
    ) -> Authority {
        let (schedule, persist) =
            crate::schedule::decide(&config.discovery, desired.schedule.as_ref());
        let runs = |name: &str| schedule.entries.iter().any(|e| e.name == name && e.interval_s > 0);
        let host_new = HostNew::new(config.host_new_wait, runs);
        let mut a = Authority {
            cma: Cma::new(config.core, snapshot, now),
            schedule,
            checks: CheckSets::new(config.rules, &desired),
            commands: BTreeMap::new(),
            next_command: 1,
            out: VecDeque::new(),
            persist: persist.map(DesiredChange::Schedule).into_iter().collect(),
            send: Vec::new(),
            host_keys: HostKeys::default(),
            audit: crate::audit_watch::AuditWatch::new(
                config.audit,
                desired.security.iter().filter_map(|(node, payload)| {
                    Some((*node, crate::audit_watch::document(payload)?))
                }),
            ),
            host_new,
            held_alarms: BTreeMap::new(),
        };
        // Each name's current node is the one registered last.
        let mut stored: Vec<_> = desired
            .host_keys
            .iter()
            .filter_map(|(node, payload)| {
                let rec = a.cma.node(*node)?;
                Some((rec.registered_at, *node, rec.hostname.clone(), keys_of(payload)?))
            })
            .collect();
        stored.sort_by_key(|(at, node, ..)| (*at, *node));
        a.host_keys = HostKeys::restore(stored.into_iter().map(|(_, n, h, k)| (n, h, k)));
        // Waiting nodes whose record is gone are dropped from the store too.
        let (known, gone): (Vec<_>, Vec<_>) =
            desired.host_new.into_iter().partition(|w| a.cma.node(w.node).is_some());
        a.host_new.restore(known, now);
        a.persist.extend(
            gone.into_iter().map(|w| DesiredChange::HostNew(HostNewChange::Raised(w.node))),
        );
        for node in a.cma.ring() {
            a.cma.resend_peer_set(node);
        }
        a.flush();
        a
    }

    /// The liveness core (read-only): nodes, ring, suspicions, stats.
    pub fn cma(&self) -> &Cma {
        &self.cma
    }

    /// The check sets (read-only).
    pub fn check_sets(&self) -> &CheckSets {
        &self.checks
    }

    /// The discovery schedule every registering node is sent.
    pub fn discovery_schedule(&self) -> &msg::DiscoverySchedule {
        &self.schedule
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Authority::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match (self.cma.poll_timeout(), self.host_new.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The nodes whose `host.new` is not raised yet ([`crate::host_new`]).
    pub fn host_new_waiting(&self) -> &HostNew {
        &self.host_new
    }

    // ------------------------------------------------------------------------------------------
    // liveness inputs

    /// A nanoprobe registered: [`Cma::handle_hello`], then — if it is accepted — its discovery
    /// schedule; and, for any node the CMA knows, its check set (recomputed, stored if changed,
    /// sent either way: desired state, idempotent by epoch).
    pub fn handle_hello(
        &mut self,
        now: Timestamp,
        node: NodeId,
        public_key: [u8; 32],
        hello: &Hello,
    ) -> Result<(), HelloError> {
        let first = self.cma.node(node).is_none();
        let r = self.cma.handle_hello(now, node, public_key, hello);
        if first && r.is_ok() {
            // The first registration of this node id ever: its host.new (issue 17).
            let (change, raise) = self.host_new.registered(node, now);
            self.persist.push(DesiredChange::HostNew(change));
            if let Some(known) = raise {
                self.raise_host_new(now, node, &known);
            }
        }
        if r.is_ok()
            && let Some(n) = self.cma.node(node)
        {
            let body = Body::DiscoverySchedule(self.schedule.clone());
            self.send.push((node, n.listen_addr, body));
        }
        if self.cma.node(node).is_some() {
            self.update_check_set(now, node, true);
        }
        self.flush();
        r
    }

    /// Starts a batch of inputs flushed together ([`Cma::begin_batch`]): the shell's turn.
    pub fn begin_batch(&mut self) {
        self.cma.begin_batch();
    }

    /// Ends the batch ([`Cma::end_batch`]) and moves its outputs out.
    pub fn end_batch(&mut self, now: Timestamp) {
        self.cma.end_batch(now);
        self.flush();
    }

    /// See [`Cma::handle_goodbye`].
    pub fn handle_goodbye(&mut self, now: Timestamp, node: NodeId) {
        self.cma.handle_goodbye(now, node);
        self.flush();
    }

    /// See [`Cma::handle_report`].
    pub fn handle_report(&mut self, now: Timestamp, reporter: NodeId, r: &msg::HeartbeatReport) {
        self.cma.handle_report(now, reporter, r);
        self.flush();
    }

    /// See [`Cma::handle_peer_status`].
    pub fn handle_peer_status(&mut self, now: Timestamp, reporter: NodeId, s: &msg::PeerStatus) {
        self.cma.handle_peer_status(now, reporter, s);
        self.flush();
    }

    /// See [`Cma::handle_probe_reply`].
    pub fn handle_probe_reply(&mut self, now: Timestamp, node: NodeId, nonce: u64) {
        self.cma.handle_probe_reply(now, node, nonce);
        self.flush();
    }

    /// See [`Cma::handle_alive`].
    pub fn handle_alive(&mut self, now: Timestamp, node: NodeId) {
        self.cma.handle_alive(now, node);
        self.flush();
    }

    /// See [`Cma::handle_timeout`]; also raises every `host.new` whose wait is over.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.cma.handle_timeout(now);
        while let Some((node, known)) = self.host_new.poll_due(now) {
            self.raise_host_new(now, node, &known);
        }
        self.raise_held_alarms(now);
        self.flush();
    }

    /// After `switch.up`: each held service alarm of a host that came back is raised if the
    /// check is still not OK; those of hosts that did not come back are dropped (their
    /// `host.down` is the alarm).
    fn raise_held_alarms(&mut self, now: Timestamp) {
        for r in self.cma.take_switch_returns() {
            for n in &r.not_back {
                self.held_alarms.remove(n);
            }
            for n in &r.back {
                let Some(checks) = self.held_alarms.remove(n) else { continue };
                for check in checks {
                    match self.checks.known_state(*n, &check) {
                        Some(k) if k.state != CheckState::Ok || k.flapping => {
                            self.cma.raise_held_service(now, *n, &check, k, &r.ring);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Service alarms held until their host's switch is back, per host (`switch.up`).
    pub fn held_alarms(&self, node: NodeId) -> Vec<String> {
        self.held_alarms.get(&node).map(|c| c.iter().cloned().collect()).unwrap_or_default()
    }

    /// See [`Cma::handle_probe_result`].
    pub fn handle_probe_result(&mut self, now: Timestamp, node: NodeId, r: &msg::ProbeResult) {
        self.cma.handle_probe_result(now, node, r);
        self.flush();
    }

    /// See [`Cma::handle_management_probe`].
    pub fn handle_management_probe(&mut self, now: Timestamp, id: u64, answered: bool) {
        self.cma.handle_management_probe(now, id, answered);
        self.flush();
    }

    /// Emits `host.new` and forgets the stored waiting row, in the same batch.
    fn raise_host_new(&mut self, now: Timestamp, node: NodeId, known: &crate::host_new::Known) {
        let missing = self.host_new.missing(known);
        self.cma.host_new(now, node, known, &missing);
        self.persist.push(DesiredChange::HostNew(HostNewChange::Raised(node)));
    }

    /// See [`Cma::handle_local_event`].
    pub fn handle_local_event(
        &mut self,
        now: Timestamp,
        node: NodeId,
        ev: &msg::LocalEvent,
    ) -> Result<u64, crate::local_events::LocalEventError> {
        let r = self.cma.handle_local_event(now, node, ev);
        self.flush();
        r
    }

    // ------------------------------------------------------------------------------------------
    // desired-state inputs

    /// A collector's result: validated and stored (its latest per node and name); a `sockets`
    /// result also recomputes the node's check set; an `l2neighbors` or `interfaces` result
    /// re-derives the node's wiring ([`Cma::handle_wiring`]), which may move it to another ring.
    pub fn handle_discovery(
        &mut self,
        now: Timestamp,
        node: NodeId,
        d: &msg::DiscoveryResult,
    ) -> Result<(), DiscoveryError> {
        if self.cma.node(node).is_none() {
            return Err(DiscoveryError::UnknownNode(node));
        }
        let invalid = |why| DiscoveryError::Invalid { node, name: d.name.clone(), why };
        if d.name.is_empty() || d.name.len() > MAX_DISCOVERY_NAME {
            return Err(invalid("the name is empty or longer than 64 bytes"));
        }
        let Ok(payload) = std::str::from_utf8(&d.payload) else {
            return Err(invalid("the payload is not UTF-8"));
        };
        if serde_json::from_str::<serde::de::IgnoredAny>(payload).is_err() {
            return Err(invalid("the payload is not JSON"));
        }
        if d.name == "sockets" {
            // A payload that is JSON but not a sockets document keeps the old listeners.
            if let Ok(l) = listeners_of(&d.payload) {
                self.checks.set_listeners(node, l);
                self.update_check_set(now, node, false);
            }
        }
        // Issue 17: a changed SSH host key. A payload without the collector's shape is ignored.
        if d.name == crate::host_keys::COLLECTOR
            && let Some(keys) = keys_of(&d.payload)
        {
            let hostname = self.hostname(node);
            if let Some(change) = self.host_keys.observe(node, &hostname, keys) {
                self.cma.host_keys_changed(now, node, &change);
            }
        }
        // Issue 19: audit rules whose result on this host changed. A payload without the
        // collector's shape is ignored.
        if d.name == crate::audit_watch::COLLECTOR
            && let Some(doc) = crate::audit_watch::document(&d.payload)
        {
            let (changes, score) = self.audit.observe(node, &doc);
            for change in &changes {
                self.cma.audit_changed(now, node, change, score, self.audit.rules());
            }
        }
        // Issue 17: the first-boot hook waits for the OS and the SSH host keys.
        if let Some(known) = self.host_new.observe(node, &d.name, &d.payload) {
            self.raise_host_new(now, node, &known);
        }
        // The host's wiring (issue 13): which switch or segment ring it belongs in. A payload
        // that does not have the collector's shape keeps the old input.
        if d.name == assim_discovery::schedule::L2_COLLECTOR {
            if let Ok(links) = assim_discovery::wiring::l2_links(payload) {
                self.cma.handle_wiring(now, node, Some(links), None);
            }
        } else if d.name == "interfaces"
            && let Ok(route) = assim_discovery::wiring::primary_route_of(payload)
        {
            self.cma.handle_wiring(now, node, None, Some(route));
        }
        self.persist.push(DesiredChange::Discovery(DiscoveryRecord {
            node,
            name: d.name.clone(),
            hash: hex::encode(&d.content_hash),
            payload: payload.to_owned(),
            collected_at: d.collected_at,
            updated_at: now.micros(),
        }));
        self.flush();
        Ok(())
    }

    /// A nanoprobe reported a check's HARD state: at most one event ([`Cma::handle_check_change`]
    /// with the state last known), and the state stored.
    pub fn handle_check_state_change(
        &mut self,
        now: Timestamp,
        node: NodeId,
        c: &CheckStateChange,
    ) -> Result<Option<EventKind>, CheckChangeError> {
        let previous = self.checks.known_state(node, &c.check);
        let r = self.cma.handle_check_change(now, node, c, previous);
        if r.is_ok() {
            let state = CheckState::try_from(c.state).unwrap_or(CheckState::Unknown);
            if self.cma.service_suppression(node, c.at).is_some_and(|s| s.open) {
                let held = self.held_alarms.entry(node).or_default();
                if state == CheckState::Ok && !c.flapping {
                    held.remove(&c.check);
                } else if held.len() < crate::services::MAX_HELD_PER_HOST {
                    held.insert(c.check.clone());
                }
                if held.is_empty() {
                    self.held_alarms.remove(&node);
                }
            } else if let Some(held) = self.held_alarms.get_mut(&node) {
                // A later word about the check, judged as usual: nothing left to raise for it.
                held.remove(&c.check);
                if held.is_empty() {
                    self.held_alarms.remove(&node);
                }
            }
            self.checks.set_state(
                node,
                c.check.clone(),
                KnownState { state, flapping: c.flapping },
            );
            self.persist.push(DesiredChange::ServiceState(ServiceStateRecord {
                node,
                check: c.check.clone(),
                state: state.name().to_owned(),
                output: c.output.clone(),
                perfdata: c.perfdata.clone(),
                flapping: c.flapping,
                since: if c.at > 0 { c.at } else { now.micros() },
                updated_at: now.micros(),
            }));
        }
        self.flush();
        r
    }

    /// `assim check run`: sends the node `RunNow` and returns the command id its answer will
    /// carry. Refused (nothing sent) for an unknown host, a node that is not Up or Suspect, or
    /// a check not in its set; the error says what to do.
    pub fn run_check(&mut self, _now: Timestamp, host: &str, check: &str) -> Result<u64, String> {
        let Some(rec) = self.find(host) else {
            return Err(format!(
                "no host named {host:?}: see `assim status` for the hosts the CMA knows"
            ));
        };
        let (id, addr, state, name) = (rec.id, rec.listen_addr, rec.state, rec.display_name());
        if !state.in_ring() {
            return Err(format!("host {name} is {state}: its nanoprobe cannot run checks now"));
        }
        let names: Vec<String> = self
            .checks
            .set(id)
            .map(|(_, c)| c.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        if !names.iter().any(|n| n == check) {
            return Err(format!(
                "host {name} has no check named {check:?} (it has: {}); see `assim services --host {name}`",
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ));
        }
        let command_id = self.next_command;
        self.next_command += 1;
        if self.commands.len() >= MAX_PENDING_COMMANDS {
            self.commands.pop_first();
        }
        self.commands.insert(command_id, PendingCommand { node: id });
        let body = Body::RunNow(msg::RunNow { command_id, check: check.to_owned() });
        self.send.push((id, addr, body));
        self.flush();
        Ok(command_id)
    }

    /// A node's answer to a `RunNow`: the answer for whoever waits on `command_id`, or `None`
    /// if nobody does (unknown id, already answered or cancelled, or from another node).
    pub fn command_result(
        &mut self,
        node: NodeId,
        r: &msg::CommandResult,
    ) -> Option<CommandAnswer> {
        if self.commands.get(&r.command_id).is_none_or(|p| p.node != node) {
            return None;
        }
        self.commands.remove(&r.command_id);
        let answer = if r.ok {
            serde_json::from_slice(&r.payload)
                .map_err(|e| format!("the nanoprobe's answer is not JSON: {e}"))
        } else {
            Err(r.error.clone())
        };
        Some(CommandAnswer { command_id: r.command_id, answer })
    }

    /// Nobody waits for this command any more (the API timed out).
    pub fn cancel_command(&mut self, command_id: u64) {
        self.commands.remove(&command_id);
    }

    /// `assim check add`: validates, stores, recomputes and sends the node's set. Returns the
    /// check's list entry. The shell commits the batch before answering.
    pub fn add_manual_check(
        &mut self,
        now: Timestamp,
        host: &str,
        spec: msg::CheckSpec,
    ) -> Result<CheckListEntry, ChecksError> {
        let (node, name) = self.find_host(host)?;
        assim_checks::Check::try_from(&spec).map_err(|e| ChecksError::Invalid(e.to_string()))?;
        let count = self.checks.manual(node).map_or(0, BTreeMap::len);
        if count >= assim_checks::spec::MAX_CHECKS {
            return Err(ChecksError::Invalid(format!(
                "host {name} already has {count} hand-set checks: remove some first"
            )));
        }
        self.checks.put_manual(node, spec.clone());
        self.persist.push(DesiredChange::Manual(ManualChange::Put(ManualCheck {
            node,
            check: spec.clone(),
            added_at: now.micros(),
        })));
        self.update_check_set(now, node, false);
        self.flush();
        let host_name = self.hostname(node);
        self.checks
            .list_node(node, &host_name)
            .into_iter()
            .find(|e| e.check.name == spec.name)
            .ok_or_else(|| ChecksError::NotFound(format!("host {name} has no check set yet")))
    }

    /// `assim check remove`: removes a hand-set check (only those); recomputes and sends the
    /// node's set. Returns (host name, the set's new epoch).
    pub fn remove_manual_check(
        &mut self,
        now: Timestamp,
        host: &str,
        check: &str,
    ) -> Result<(String, u64), ChecksError> {
        let (node, name) = self.find_host(host)?;
        if self.checks.remove_manual(node, check).is_none() {
            let hand: Vec<String> =
                self.checks.manual(node).map(|m| m.keys().cloned().collect()).unwrap_or_default();
            let other = self.checks.sources(node, &self.hostname(node));
            let hint = match other.get(check) {
                Some(src) => format!(
                    "; {check:?} comes from {src}: change or disable it in the rules files (docs/checks.md)"
                ),
                None => String::new(),
            };
            return Err(ChecksError::NotFound(format!(
                "host {name} has no hand-set check named {check:?} (hand-set: {}){hint}; see `assim check list --host {name}`",
                if hand.is_empty() { "none".to_owned() } else { hand.join(", ") }
            )));
        }
        self.persist
            .push(DesiredChange::Manual(ManualChange::Remove { node, name: check.to_owned() }));
        self.update_check_set(now, node, false);
        self.flush();
        let epoch = self.checks.set(node).map_or(0, |(e, _)| e);
        Ok((name, epoch))
    }

    /// `assim check list`: the desired sets (of one host, or all), with each check's source,
    /// sorted by host and check name.
    pub fn list_checks(&self, host: Option<&str>) -> Result<Vec<CheckListEntry>, ChecksError> {
        let mut l = match host {
            Some(h) => {
                let (id, _) = self.find_host(h)?;
                self.checks.list_node(id, &self.hostname(id))
            }
            None => self
                .checks
                .nodes()
                .flat_map(|n| self.checks.list_node(n, &self.hostname(n)))
                .collect(),
        };
        l.sort_by(|a, b| (&a.host, &a.check.name).cmp(&(&b.host, &b.check.name)));
        Ok(l)
    }

    // ------------------------------------------------------------------------------------------
    // plumbing

    /// Recomputes a node's set; queues the persistence of what changed, and the `CheckSet`
    /// when it changed (or when `resend`).
    fn update_check_set(&mut self, now: Timestamp, node: NodeId, resend: bool) {
        let Some(rec) = self.cma.node(node) else { return };
        let (host, addr) = (rec.hostname.clone(), rec.listen_addr);
        let d = self.checks.update(node, &host, now);
        if let Some(services) = d.remembered {
            self.persist.push(DesiredChange::Remembered { node, services });
        }
        let changed = d.set.is_some();
        if let Some(set) = d.set {
            self.persist.push(DesiredChange::CheckSet(set));
        }
        if changed || resend {
            let (epoch, checks) = self.checks.set(node).expect("just decided");
            let body = Body::CheckSet(msg::CheckSet { epoch, checks: checks.to_vec() });
            self.send.push((node, addr, body));
        }
    }

    fn find(&self, host: &str) -> Option<&crate::NodeRecord> {
        self.cma.nodes().find(|n| n.hostname == host || n.id.to_string() == host)
    }

    /// A host by name or node id: its id and display name.
    fn find_host(&self, host: &str) -> Result<(NodeId, String), ChecksError> {
        self.find(host).map(|n| (n.id, n.display_name())).ok_or_else(|| {
            ChecksError::NotFound(format!(
                "no host named {host:?}: see `assim status` for the hosts the CMA knows"
            ))
        })
    }

    fn hostname(&self, node: NodeId) -> String {
        self.cma.node(node).map(|n| n.hostname.clone()).unwrap_or_default()
    }

    /// Moves the liveness core's actions, then this layer's persists and sends, to the output.
    fn flush(&mut self) {
        while let Some(a) = self.cma.poll_action() {
            match a {
                // A command to a nanoprobe like the others this layer sends.
                Action::ProbeRequest { to, addr, request } => {
                    self.out.push_back(Output::Send { to, addr, body: Body::ProbeRequest(request) })
                }
                a => self.out.push_back(Output::Core(a)),
            }
        }
        self.out.extend(self.persist.drain(..).map(Output::Persist));
        self.out.extend(self.send.drain(..).map(|(to, addr, body)| Output::Send {
            to,
            addr,
            body,
        }));
    }
}
