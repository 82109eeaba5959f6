//! [`Cma`]: node lifecycle, ring maintenance, failure decisions and event generation, as one
//! deterministic state machine.
//!
//! Every input (`handle_*`) takes `now`, updates memory, and queues actions in this order:
//! `Persist(Node)` for every node it changed (final record, once per node), `Persist(Counters)`
//! if an epoch or event id was used, `SendPeerSet`s, `Probe`s, then `Emit`s. The driver drains
//! them with [`Cma::poll_action`] and re-arms its timer from [`Cma::poll_timeout`].
//!
//! **Batches** (issue 18): between [`Cma::begin_batch`] and [`Cma::end_batch`] the inputs'
//! actions are gathered and flushed once, as if they were one input: each node changed is
//! persisted once, each node whose peers changed gets one peer set (its latest), and the joins
//! of the batch into one ring are one `ring.changed` (one join alone reads as before). The
//! CMA shell wraps each turn's inbox records in a batch, so a registration storm costs one ring
//! change, one set of peer-set sends and one store commit per turn, not per join.
//!
//! Invariants kept after every input:
//! - a node is a ring member (in exactly one home ring, and in the upper ring if it is a
//!   representative) iff its state is Up or Suspect;
//! - a member's `peers` are its current ring neighbours (home ring ∪ upper ring), and
//!   `peer_epoch` the epoch of the set that said so; non-members have no peers;
//! - a node has an open suspicion iff its state is Suspect, except while its `host.down` is
//!   held by a ring check ([`crate::incident`]);
//! - an Unreachable node belongs to one outage of its ring (after a restart: rebuilt from the
//!   states).
//!
//! Path trouble (issue 13): once a reporter's dead word about a node was found to be path
//! trouble (the CMA reaches the node), the same reporter's dead words under that epoch are not
//! news; and a Down node a neighbour hears again is probed by the CMA and rejoins only if it
//! answers — so a host only its neighbours cannot hear is neither downed nor revived in a loop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use assim_wire::msg::{
    HeartbeatReport, Hello, Peer, PeerLiveness, PeerSet, PeerStatus, ReportKind,
};
use assim_wire::{NodeId, Timestamp};

use crate::failure::{AliveProof, Due, Saw, Suspicion, Suspicions, Witnessed, Word};
use crate::incident::{Check, Held, IncidentDue, Incidents, Outage, OutageKind};
use crate::model::{
    Action, Change, CmaConfig, Event, EventKind, HelloError, NodeRecord, NodeState, Snapshot, Stats,
};
use crate::ring::{RingChange, RingManager};
use crate::wiring::{NodeWiring, WiringInputs};

/// What is queued by the input being handled, turned into actions by `flush`.
#[derive(Debug, Default)]
struct Pending {
    persist: BTreeSet<NodeId>,
    send: BTreeSet<NodeId>,
    probes: Vec<(NodeId, u64)>,
    /// Probes of a ring check, an outage or a revival: sent whatever the node's state.
    other_probes: Vec<(NodeId, u64)>,
    /// Peer probe requests of a ring check: (prober, target, command id).
    peer_requests: Vec<(NodeId, NodeId, u64)>,
    /// Pings of a checked switch's management address: (id, address).
    management_probes: Vec<(u64, std::net::IpAddr)>,
    events: Vec<Event>,
    counters: bool,
    /// Joins of a batch (reason `join`), told together when it ends: ring, joiner, and the
    /// change as it happened.
    joins: Vec<RingChange>,
}

/// How many nanoprobes on other switches are asked to probe the members of a checked ring.
pub const PEER_PROBERS: usize = 2;
/// How many members of a checked ring each of them probes (a sample of a large ring: the
/// question is whether the ring's hosts answer anyone, not which ones).
pub const PEER_PROBE_TARGETS: usize = 8;

/// How many windows of unreachability are kept per host.
pub const MAX_UNREACHABLE_WINDOWS: usize = 4;

/// A time a host was unreachable behind its ring's switch (CMA clock).
#[derive(Clone, Debug, PartialEq, Eq)]
struct UnreachableWindow {
    /// When the host went silent at the earliest: its `since` minus the longest detection
    /// (dead time + the suspicion window).
    from: Timestamp,
    /// When it was heard again (or declared down).
    to: Timestamp,
    ring: crate::ring::RingKey,
}

/// Why a service state change of a host must not raise an alarm (or must say it is late):
/// the host is (or was, when the check ran) unreachable behind its switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// The switch's ring.
    pub ring: crate::ring::RingKey,
    /// Whether the outage is still open (the host is unreachable, or its switch's return
    /// window has not closed with `switch.up`): then the alarm is suppressed (severity info)
    /// and held until `switch.up`. Otherwise the result was made inside the outage and
    /// delivered late: raised as usual, its text says so.
    pub open: bool,
}

/// A switch came back (`switch.up`): who came back with it, who did not (now down).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchReturn {
    pub ring: crate::ring::RingKey,
    pub back: Vec<NodeId>,
    pub not_back: Vec<NodeId>,
}

/// Why a Down or Left node is back.
#[derive(Clone, Copy, Debug)]
enum Revival {
    Hello,
    Message,
}

/// The CMA's decision core. See the crate docs.
#[derive(Debug)]
pub struct Cma {
    config: CmaConfig,
    nodes: BTreeMap<NodeId, NodeRecord>,
    rings: RingManager,
    /// Each node's wiring, when derived (issue 13).
    wiring: BTreeMap<NodeId, NodeWiring>,
    suspicions: Suspicions,
    /// Ring checks and switch outages (issue 13).
    incidents: Incidents,
    /// (subject, reporter) → the reporter's epoch when its dead report was found to be path
    /// trouble: the same reporter's dead word under that epoch or older is not news.
    path_trouble: BTreeSet<(NodeId, NodeId, u64)>,
    /// Down nodes a neighbour heard again: the nonce of the CMA's probe that must confirm it
    /// before the node rejoins, and when it was sent.
    revival_probes: BTreeMap<NodeId, (u64, Timestamp)>,
    next_revival_nonce: u64,
    /// Nodes that came back (from Down, Unreachable or Left) → the first epoch issued after
    /// their return: a dead or late word made under an older peer set, by them or about them,
    /// was made before the return (inside the outage) and is not news. In memory only; after
    /// a restart every word counts as before.
    returned_floor: BTreeMap<NodeId, u64>,
    /// Registered nodes still in the fallback ring because their wiring is not known yet: their
    /// first move out of it is one ring.changed (reason `placed`) instead of a leave and a
    /// join (issue 13).
    placing: BTreeSet<NodeId>,
    /// Each host's latest windows of unreachability behind its switch (at most
    /// [`MAX_UNREACHABLE_WINDOWS`] per host, in memory): check results made inside one are
    /// from the outage ([`Cma::service_suppression`]).
    unreachable_windows: BTreeMap<NodeId, VecDeque<UnreachableWindow>>,
    /// Switch returns (switch.up) not yet taken by [`Cma::take_switch_returns`].
    switch_returns: Vec<SwitchReturn>,
    next_epoch: u64,
    next_event_id: u64,
    /// When the write-behind `Persist(Ring)` is due; `None` when the stored ring is current.
    ring_flush_at: Option<Timestamp>,
    stats: Stats,
    actions: VecDeque<Action>,
    pending: Pending,
    /// Inside [`Cma::begin_batch`] .. [`Cma::end_batch`]: `flush` waits for the end.
    batching: bool,
}

impl Cma {
    /// Restores from `snapshot` (use `Snapshot::default()` for a fresh CMA).
    ///
    /// The ring is rebuilt from node states (Up and Suspect nodes are members); if that differs
    /// from `snapshot.ring`, the stored ring is replaced and a `ring.changed` event says so. A
    /// member whose stored peers differ from its neighbours gets a new peer set. Suspect nodes
    /// stay Suspect with a fresh deadline (`now + 2×interval`) and a new probe. Peer sets are
    /// not re-sent otherwise: nanoprobes say hello again when they notice the restart.
    pub fn new(config: CmaConfig, snapshot: Snapshot, now: Timestamp) -> Cma {
        let max_epoch = snapshot.nodes.iter().map(|n| n.peer_epoch).max().unwrap_or(0);
        let rings = RingManager::with_key(config.placement_key);
        let mut cma = Cma {
            config,
            nodes: BTreeMap::new(),
            rings,
            wiring: BTreeMap::new(),
            suspicions: Suspicions::new(now.micros()),
            incidents: Incidents::new(now.micros() ^ (1 << 62)),
            path_trouble: BTreeSet::new(),
            revival_probes: BTreeMap::new(),
            next_revival_nonce: now.micros() ^ (1 << 61),
            returned_floor: BTreeMap::new(),
            placing: BTreeSet::new(),
            unreachable_windows: BTreeMap::new(),
            switch_returns: Vec::new(),
            next_epoch: snapshot.next_epoch.max(max_epoch.saturating_add(1)).max(1),
            next_event_id: snapshot.next_event_id.max(1),
            ring_flush_at: None,
            stats: Stats::default(),
            actions: VecDeque::new(),
            pending: Pending::default(),
            batching: false,
        };
        for rec in snapshot.nodes {
            cma.nodes.insert(rec.id, rec);
        }
        for w in snapshot.wiring {
            if cma.nodes.contains_key(&w.node) {
                cma.rings.set_ring(w.node, w.wiring.ring.clone());
                cma.wiring.insert(w.node, w);
            }
        }
        let members: Vec<NodeId> =
            cma.nodes.values().filter(|n| n.state.in_ring()).map(|n| n.id).collect();
        for &id in &members {
            cma.rings.join(id);
        }
        let order = cma.rings.all().order();
        if order != snapshot.ring {
            cma.repair_event(now, &snapshot.ring, &order);
            cma.actions.push_back(Action::Persist(Change::Ring(order)));
        }
        let ids: Vec<NodeId> = cma.nodes.keys().copied().collect();
        for id in ids {
            if cma.nodes[&id].state.in_ring() {
                cma.refresh_peers(id, false);
            } else if !cma.nodes[&id].peers.is_empty() {
                cma.node_mut(id).peers.clear();
                cma.pending.persist.insert(id);
            }
            if cma.nodes[&id].state == NodeState::Suspect {
                let timing = cma.config.timing;
                let nonce = cma.suspicions.start(id, None, now, &timing);
                cma.pending.probes.push((id, nonce));
            }
        }
        // Unreachable hosts stay behind their switch: one outage per ring, as before the restart.
        let mut outages: BTreeMap<crate::ring::RingKey, Vec<NodeId>> = BTreeMap::new();
        for n in cma.nodes.values().filter(|n| n.state == NodeState::Unreachable) {
            outages.entry(cma.rings.wired_ring(n.id)).or_default().push(n.id);
        }
        let timing = cma.config.timing;
        for (ring, hosts) in outages {
            cma.incidents.start_outage(&ring, OutageKind::Down, hosts, now, &timing);
        }
        cma.flush();
        cma
    }

    // ------------------------------------------------------------------------------------------
    // inputs

    /// A nanoprobe registered (start-up, or it noticed the CMA restart).
    ///
    /// New, Down or Left node: Up, `host.up`, joins the ring. Up or Suspect node (it restarted,
    /// perhaps faster than the dead time): Up without `host.down`, any suspicion cancelled
    /// without event, its details updated, and its current peer set re-sent; if its listen
    /// address or key changed, its neighbours get new peer sets.
    pub fn handle_hello(
        &mut self,
        now: Timestamp,
        node: NodeId,
        public_key: [u8; 32],
        hello: &Hello,
    ) -> Result<(), HelloError> {
        let listen_addr = match hello.listen_addr.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.stats.hellos_rejected += 1;
                return Err(HelloError::BadListenAddr { node, addr: hello.listen_addr.clone() });
            }
        };
        if listen_addr.port() == 0 || listen_addr.ip().is_unspecified() {
            self.stats.hellos_rejected += 1;
            return Err(HelloError::UnreachableListenAddr { node, addr: listen_addr });
        }
        self.stats.hellos += 1;
        let Some(old) = self.nodes.get(&node) else {
            let rec = NodeRecord {
                id: node,
                hostname: hello.hostname.clone(),
                version: hello.version.clone(),
                listen_addr,
                public_key,
                addresses: hello.addresses.clone(),
                state: NodeState::Up,
                since: now,
                registered_at: now,
                peer_epoch: 0,
                peers: Vec::new(),
            };
            self.nodes.insert(node, rec);
            self.pending.persist.insert(node);
            let text = format!(
                "{} registered and is up (version {}, listening on {})",
                self.name(node),
                hello.version,
                listen_addr
            );
            self.event(
                now,
                EventKind::HostUp,
                Some(node),
                vec![("reason", "registered".into()), ("version", hello.version.clone())],
                text,
            );
            if let Some(pin) = self.pin_of(node) {
                let inputs = WiringInputs::default();
                let wiring = crate::wiring::derive(Some(&pin), &inputs);
                self.rewire(now, node, NodeWiring { node, wiring, inputs });
            }
            if self.rings.wired_ring(node).0 == crate::ring::RingKey::UNWIRED {
                // It waits in the fallback ring for its wiring; its first placement is one
                // ring.changed (`rewire`).
                self.placing.insert(node);
            }
            self.join_ring(now, node);
            self.flush();
            return Ok(());
        };
        let old_state = old.state;
        let reachability_changed = old.listen_addr != listen_addr || old.public_key != public_key;
        let details_changed = reachability_changed
            || old.hostname != hello.hostname
            || old.version != hello.version
            || old.addresses != hello.addresses;
        if details_changed {
            let rec = self.node_mut(node);
            rec.hostname.clone_from(&hello.hostname);
            rec.version.clone_from(&hello.version);
            rec.listen_addr = listen_addr;
            rec.public_key = public_key;
            rec.addresses.clone_from(&hello.addresses);
            self.pending.persist.insert(node);
        }
        match old_state {
            NodeState::Up | NodeState::Suspect => {
                if old_state == NodeState::Suspect {
                    self.suspicions.cancel(node);
                    self.set_state(now, node, NodeState::Up);
                }
                if !self.rings.is_member(node) {
                    // Not expected (members are exactly the Up/Suspect nodes); heal rather than
                    // leave a live node without peers.
                    self.join_ring(now, node);
                }
                if reachability_changed {
                    for n in self.rings.neighbours(node) {
                        self.refresh_peers(n, true);
                    }
                }
                self.pending.send.insert(node);
            }
            NodeState::Down | NodeState::Left | NodeState::Unreachable => {
                self.revive(now, node, Revival::Hello)
            }
        }
        self.flush();
        Ok(())
    }

    /// The node said goodbye: Left, `host.left`, its neighbours get new peer sets. Never
    /// `host.down`.
    pub fn handle_goodbye(&mut self, now: Timestamp, node: NodeId) {
        self.stats.goodbyes += 1;
        let Some(state) = self.nodes.get(&node).map(|n| n.state) else { return };
        if state == NodeState::Left {
            return;
        }
        self.suspicions.cancel(node);
        self.incidents.forget(node);
        self.set_state(now, node, NodeState::Left);
        let text = format!("{} left: it said goodbye", self.name(node));
        self.event(now, EventKind::HostLeft, Some(node), vec![("reason", "goodbye".into())], text);
        self.leave_ring(now, node, "left");
        self.flush();
    }

    /// A heartbeat report from `reporter`.
    pub fn handle_report(&mut self, now: Timestamp, reporter: NodeId, report: &HeartbeatReport) {
        let kind = ReportKind::try_from(report.kind).unwrap_or(ReportKind::Unspecified);
        match NodeId::from_slice(&report.peer) {
            Some(peer) => {
                let ev =
                    Evidence { epoch: report.epoch, at: report.at, silent_ms: report.silent_ms };
                self.on_report(now, reporter, peer, kind, ev)
            }
            None => {
                self.stats.reports += 1;
                self.stats.reports_ignored_unknown += 1;
            }
        }
        self.flush();
    }

    /// A peer status from `reporter`: each expected peer with liveness Dead counts as a dead
    /// report, Alive as back-alive, Late as a late report.
    pub fn handle_peer_status(&mut self, now: Timestamp, reporter: NodeId, status: &PeerStatus) {
        for entry in &status.expecting {
            let kind = match PeerLiveness::try_from(entry.liveness) {
                Ok(PeerLiveness::Dead) => ReportKind::Dead,
                Ok(PeerLiveness::Alive) => ReportKind::BackAlive,
                Ok(PeerLiveness::Late) => ReportKind::Late,
                _ => ReportKind::Unspecified,
            };
            match NodeId::from_slice(&entry.peer) {
                Some(peer) => {
                    let ev = Evidence { epoch: status.epoch, at: status.at, silent_ms: 0 };
                    self.on_report(now, reporter, peer, kind, ev)
                }
                None => {
                    self.stats.reports += 1;
                    self.stats.reports_ignored_unknown += 1;
                }
            }
        }
        self.flush();
    }

    /// The answer to a [`Action::Probe`]. Proves a suspect node alive if `nonce` was issued for
    /// its current suspicion; otherwise counted and ignored.
    pub fn handle_probe_reply(&mut self, _now: Timestamp, node: NodeId, nonce: u64) {
        if self.suspicions.nonce_matches(node, nonce) {
            self.stats.probe_replies += 1;
            self.suspicions.proof_of_life(node, AliveProof::ProbeReply);
            self.heard(_now, node);
        } else if self.incidents.nonce_matches(node, nonce)
            || self.revival_probes.get(&node).is_some_and(|p| p.0 == nonce)
        {
            self.stats.probe_replies += 1;
            self.handle_alive(_now, node);
            return;
        } else {
            self.stats.probe_replies_unmatched += 1;
        }
        self.flush();
    }

    /// Any authenticated message from `node` (proof of life). A Suspect node counts as alive
    /// (decided at its deadline); a Down node is Up again (`host.up`) and rejoins the ring. Left
    /// nodes come back only by saying hello.
    pub fn handle_alive(&mut self, now: Timestamp, node: NodeId) {
        self.heard(now, node);
        match self.nodes.get(&node).map(|n| n.state) {
            Some(NodeState::Suspect) => self.alive_while_suspect(now, node),
            Some(NodeState::Down | NodeState::Unreachable) => {
                self.revive(now, node, Revival::Message)
            }
            _ => {}
        }
        self.flush();
    }

    /// Runs everything due at `now`: probes, suspicion deadlines, the ring write-behind.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let timing = self.config.timing;
        while let Some(due) = self.suspicions.poll_due(now, &timing) {
            match due {
                Due::Probe { node, nonce } => {
                    self.pending.probes.push((node, nonce));
                    self.suspect_missed_a_probe(now, node);
                }
                Due::Decide { node, suspicion } => self.decide(now, node, suspicion),
                Due::Confirmed { node, suspicion } => self.down_corroborated(now, node, suspicion),
            }
        }
        while let Some(due) = self.incidents.poll_due(now, &timing) {
            match due {
                IncidentDue::Probes(p) => self.pending.other_probes.extend(p),
                IncidentDue::CheckClosed { ring, check } => self.check_closed(now, ring, check),
                IncidentDue::Returned { ring, outage } => self.switch_returned(now, ring, outage),
            }
        }
        if self.ring_flush_at.is_some_and(|t| t <= now) {
            self.ring_flush_at = None;
            self.actions.push_back(Action::Persist(Change::Ring(self.rings.all().order())));
            let dirty = self.rings.take_dirty();
            if !dirty.is_empty() {
                self.actions.push_back(Action::Persist(Change::Rings(dirty)));
            }
        }
        self.flush();
    }

    /// When [`Cma::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [self.suspicions.next_wake(), self.ring_flush_at, self.incidents.next_wake()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Starts a batch: the inputs until [`Cma::end_batch`] are flushed together (see the
    /// module doc). Their actions appear only after the end.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends a batch: one `ring.changed` per ring for its joins, then its actions, in the
    /// documented order. Without a batch open it does nothing.
    pub fn end_batch(&mut self, now: Timestamp) {
        if !self.batching {
            return;
        }
        self.batching = false;
        self.tell_joins(now);
        self.flush();
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Re-sends the desired peer set to one node (e.g. after it re-registered); no epoch
    /// change. Nothing for a node that is not a ring member.
    pub fn resend_peer_set(&mut self, node: NodeId) {
        if self.nodes.get(&node).is_some_and(|n| n.state.in_ring()) {
            self.pending.send.insert(node);
        }
        self.flush();
    }

    /// New wiring inputs for a node (its `l2neighbors` or `interfaces` result, parsed by the
    /// caller; `None` keeps that input as it was): derives its wiring
    /// ([`crate::wiring::derive`], the operator's pin first) and, when it changed, persists it
    /// and moves the node to its new ring (`ring.changed`, reason `rewired`). Unknown nodes
    /// are ignored.
    pub fn handle_wiring(
        &mut self,
        now: Timestamp,
        node: NodeId,
        l2: Option<Vec<assim_discovery::wiring::L2Link>>,
        route: Option<Option<assim_discovery::wiring::PrimaryRoute>>,
    ) {
        if !self.nodes.contains_key(&node) {
            return;
        }
        let mut inputs = self.wiring.get(&node).map(|w| w.inputs.clone()).unwrap_or_default();
        if let Some(l2) = l2 {
            inputs.l2 = Some(l2);
        }
        if let Some(route) = route {
            inputs.route = route;
        }
        let pin = self.pin_of(node);
        let wiring = crate::wiring::derive(pin.as_deref(), &inputs);
        let old = self.wiring.get(&node);
        if old.is_some_and(|o| o.wiring == wiring && o.inputs == inputs) {
            return;
        }
        self.rewire(now, node, NodeWiring { node, wiring, inputs });
        self.flush();
    }

    /// A node's wiring: what ring it is in by its discovery, and why.
    pub fn wiring(&self, node: NodeId) -> Option<&NodeWiring> {
        self.wiring.get(&node)
    }

    /// The operator's pin for a node (by host name, then node id).
    fn pin_of(&self, node: NodeId) -> Option<String> {
        let pins = &self.config.pins;
        if pins.is_empty() {
            return None;
        }
        let rec = self.nodes.get(&node)?;
        pins.get(&rec.hostname).or_else(|| pins.get(&node.to_string())).cloned()
    }

    /// Stores a node's new wiring and moves it to its ring.
    fn rewire(&mut self, now: Timestamp, node: NodeId, w: NodeWiring) {
        let ring = w.wiring.ring.clone();
        let moved = self.rings.wired_ring(node) != ring;
        self.actions.push_back(Action::Persist(Change::Wiring(w.clone())));
        self.wiring.insert(node, w);
        if !moved {
            return;
        }
        self.stats.rewired += 1;
        let member = self.rings.is_member(node);
        let changes = self.rings.set_ring(node, ring);
        let placed = self.placing.remove(&node);
        if member {
            self.refresh_peers(node, false);
            let reason = if placed { "placed" } else { "rewired" };
            // Its first placement: the move out of the fallback ring is told by its join.
            let said = |c: &RingChange| {
                placed && c.node == node && !c.joined && c.ring.0 == crate::ring::RingKey::UNWIRED
            };
            self.apply_ring_changes(now, node, &changes, reason, &said);
        }
    }

    // ------------------------------------------------------------------------------------------
    // queries

    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// Every known node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// The "all" ring in ring order.
    pub fn ring(&self) -> Vec<NodeId> {
        self.rings.all().order()
    }

    /// The ring manager (read-only).
    pub fn rings(&self) -> &RingManager {
        &self.rings
    }

    /// The nodes `id` heartbeats now (empty for non-members).
    pub fn neighbours(&self, id: NodeId) -> Vec<NodeId> {
        self.rings.neighbours(id)
    }

    /// The open suspicion of a Suspect node.
    pub fn suspicion(&self, id: NodeId) -> Option<&Suspicion> {
        self.suspicions.get(id)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether a service check result of `node`, made at `made_at` (µs, the nanoprobe's clock;
    /// 0 = not said), comes from a time the host was unreachable behind its switch (Nagios
    /// `parents` semantics; see [`Suppression`] and `services`). The nanoprobe's clock is
    /// compared with the CMA's: a skew larger than the detection time (dead + 2 intervals)
    /// misplaces results made near the edges of the outage.
    pub fn service_suppression(&self, node: NodeId, made_at: u64) -> Option<Suppression> {
        let rec = self.nodes.get(&node)?;
        if rec.state == NodeState::Unreachable {
            let ring = self
                .incidents
                .outage_of(node)
                .cloned()
                .unwrap_or_else(|| self.rings.wired_ring(node));
            return Some(Suppression { ring, open: true });
        }
        if made_at == 0 {
            return None;
        }
        let w = self
            .unreachable_windows
            .get(&node)?
            .iter()
            .rev()
            .find(|w| (w.from.micros()..=w.to.micros()).contains(&made_at))?;
        let open = self.incidents.outage(&w.ring).is_some();
        Some(Suppression { ring: w.ring.clone(), open })
    }

    /// The switch returns (`switch.up`) since the last call, oldest first.
    pub fn take_switch_returns(&mut self) -> Vec<SwitchReturn> {
        std::mem::take(&mut self.switch_returns)
    }

    /// Everything [`Cma::new`] needs to resume.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.values().cloned().collect(),
            ring: self.ring(),
            next_epoch: self.next_epoch,
            next_event_id: self.next_event_id,
            wiring: self.wiring.values().cloned().collect(),
        }
    }

    pub fn config(&self) -> &CmaConfig {
        &self.config
    }

    // ------------------------------------------------------------------------------------------
    // reports

    fn on_report(
        &mut self,
        now: Timestamp,
        reporter: NodeId,
        subject: NodeId,
        kind: ReportKind,
        ev: Evidence,
    ) {
        self.stats.reports += 1;
        let (Some(rep), Some(subj)) = (self.nodes.get(&reporter), self.nodes.get(&subject)) else {
            self.stats.reports_ignored_unknown += 1;
            return;
        };
        let reporter_active = rep.state.in_ring();
        let is_neighbour = reporter_active && rep.peers.contains(&subject);
        let reporter_epoch = rep.peer_epoch;
        let state = subj.state;
        if reporter == subject {
            self.stats.reports_no_effect += 1;
            return;
        }
        if matches!(kind, ReportKind::Dead | ReportKind::Late)
            && self.made_before_return(reporter, subject, ev.epoch)
        {
            // Made before the reporter or the subject came back (e.g. spooled by a host that
            // was cut off with its switch, delivered after the switch returned): it describes
            // the outage, which the CMA has already decided, not the present.
            self.stats.reports_before_return += 1;
            return;
        }
        match kind {
            ReportKind::Unspecified => self.stats.reports_no_effect += 1,
            ReportKind::Late => {
                self.stats.reports_late += 1;
                if is_neighbour && state == NodeState::Suspect {
                    // Not proof of death, but it withdraws this neighbour's earlier "alive".
                    let word = ev.word(Saw::Late, ev.silent_ms);
                    self.witness(now, subject, reporter, word, false);
                }
            }
            ReportKind::Dead => {
                if !is_neighbour {
                    self.stats.reports_ignored_not_neighbour += 1;
                    return;
                }
                let word = ev.word(Saw::Dead, ev.silent_ms);
                if state == NodeState::Up && self.known_path_trouble(subject, reporter, ev.epoch) {
                    // Already decided: the CMA reaches it, this neighbour does not. Not news.
                    self.stats.reports_no_effect += 1;
                    return;
                }
                match state {
                    NodeState::Up => {
                        self.suspect(now, subject, reporter, word);
                    }
                    NodeState::Suspect => {
                        self.witness(now, subject, reporter, word, false);
                        if self.suspicions.get(subject).is_some_and(|s| s.missed_a_probe()) {
                            self.maybe_check(now, subject, reporter);
                        }
                    }
                    NodeState::Down | NodeState::Left | NodeState::Unreachable => {
                        self.stats.reports_no_effect += 1
                    }
                }
            }
            ReportKind::BackAlive | ReportKind::Martian => {
                if !reporter_active {
                    self.stats.reports_ignored_not_neighbour += 1;
                    return;
                }
                // An observation made under an older peer set than the reporter's current one
                // is old news (it may have waited out a partition): it must not revive a node.
                // Dead reports need no such rule: they count only from current neighbours.
                if ev.epoch < reporter_epoch
                    && matches!(state, NodeState::Down | NodeState::Unreachable)
                {
                    self.stats.reports_stale_epoch += 1;
                    return;
                }
                let martian = kind == ReportKind::Martian;
                if !martian {
                    let lo = (subject, reporter, 0);
                    let hi = (subject, reporter, u64::MAX);
                    let gone: Vec<_> = self.path_trouble.range(lo..=hi).copied().collect();
                    for g in gone {
                        self.path_trouble.remove(&g);
                    }
                }
                match state {
                    NodeState::Up | NodeState::Left => self.stats.reports_no_effect += 1,
                    NodeState::Down | NodeState::Unreachable => {
                        self.probe_before_revival(now, subject)
                    }
                    NodeState::Suspect => {
                        if !martian && !is_neighbour {
                            self.stats.reports_ignored_not_neighbour += 1;
                            return;
                        }
                        let word = ev.word(Saw::Alive, 0);
                        self.witness(now, subject, reporter, word, martian);
                    }
                }
            }
        }
    }

    /// A witness's word about a Suspect node: the suspicion's verdict, applied.
    fn witness(&mut self, now: Timestamp, node: NodeId, who: NodeId, word: Word, martian: bool) {
        match self.suspicions.witness(node, who, word, martian, now) {
            Some(Witnessed::Confirmed(s)) => self.down_corroborated(now, node, *s),
            Some(Witnessed::Cleared) => {
                // Heartbeats resumed: back to Up, and say so, so that a subscriber that saw
                // host.suspect sees it cleared.
                self.set_state(now, node, NodeState::Up);
                let text = format!(
                    "{} is up: heartbeats resumed before the suspicion was confirmed",
                    self.name(node)
                );
                let tags = vec![("reason", "resumed".to_string())];
                self.event(now, EventKind::HostUp, Some(node), tags, text);
            }
            Some(Witnessed::Repeated) => self.stats.reports_no_effect += 1,
            Some(Witnessed::Stale) => self.stats.reports_stale += 1,
            Some(Witnessed::Recorded | Witnessed::ProofOfLife) | None => {}
        }
    }

    /// Suspect → Down: two neighbours' dead words and the CMA's own probes unanswered.
    fn down_corroborated(&mut self, now: Timestamp, node: NodeId, s: Suspicion) {
        self.stats.downs_corroborated += 1;
        let names: Vec<String> = s.reporters.iter().map(|r| self.name(*r)).collect();
        let text = format!(
            "{} is down: no heartbeats for {}, confirmed by {}; it answered none of the CMA's {} \
             probes",
            self.name(node),
            self.silence(s.silent_ms),
            join_names(&names),
            s.probes_sent(),
        );
        let tags = vec![
            ("reason", "corroborated".into()),
            ("reporters", names.join(",")),
            ("silent_ms", s.silent_ms.to_string()),
        ];
        self.go_down(now, node, tags, text);
    }

    /// Up → Suspect on a first valid dead report.
    fn suspect(&mut self, now: Timestamp, node: NodeId, reporter: NodeId, word: Word) {
        let timing = self.config.timing;
        let silent_ms = word.silent_ms;
        let nonce = self.suspicions.start(node, Some((reporter, word)), now, &timing);
        self.pending.probes.push((node, nonce));
        self.stats.suspicions += 1;
        self.set_state(now, node, NodeState::Suspect);
        let text = format!(
            "{} is suspect: {} has had no heartbeats from it for {}; the CMA is probing it",
            self.name(node),
            self.name(reporter),
            self.silence(silent_ms),
        );
        let tags = vec![
            ("reporter", self.name(reporter)),
            ("reporter_node", reporter.to_string()),
            ("silent_ms", silent_ms.to_string()),
        ];
        self.event(now, EventKind::HostSuspect, Some(node), tags, text);
    }

    /// A suspicion's deadline passed.
    fn decide(&mut self, now: Timestamp, node: NodeId, s: Suspicion) {
        let b = self.name(node);
        match s.alive {
            Some(proof) => {
                self.set_state(now, node, NodeState::Up);
                let how = match proof {
                    AliveProof::ProbeReply => "it answered the CMA's probe".to_owned(),
                    AliveProof::Message => "it sent the CMA a message".to_owned(),
                    AliveProof::HeardBy(n) => format!("{} hears its heartbeats", self.name(n)),
                    AliveProof::PeerProbe(n) => {
                        format!(
                            "{} on another switch reached it when asked to probe it",
                            self.name(n)
                        )
                    }
                };
                let proof_tag = match proof {
                    AliveProof::ProbeReply => "probe-reply",
                    AliveProof::Message => "message",
                    AliveProof::HeardBy(_) => "heard-by-peer",
                    AliveProof::PeerProbe(_) => "peer-probe",
                };
                if s.reporters.is_empty() {
                    self.stats.path_suspects += 1;
                    let text = format!(
                        "{b} is alive ({how}) although a neighbour reported it dead before the \
                         CMA restarted; heartbeats from {b} may not reach that neighbour"
                    );
                    let tags = vec![("b", b.clone()), ("proof", proof_tag.into())];
                    self.event(now, EventKind::PathSuspect, Some(node), tags, text);
                }
                for &a in &s.reporters {
                    let epoch = s.words().get(&a).map_or(0, |w| w.epoch);
                    self.path_trouble.insert((node, a, epoch));
                    self.stats.path_suspects += 1;
                    let an = self.name(a);
                    let text = format!(
                        "heartbeats from {b} do not reach {an} although {b} is alive ({how})"
                    );
                    let tags = vec![
                        ("a", an),
                        ("a_node", a.to_string()),
                        ("b", b.clone()),
                        ("proof", proof_tag.into()),
                    ];
                    self.event(now, EventKind::PathSuspect, Some(node), tags, text);
                }
            }
            None => {
                self.stats.downs_probe_failed += 1;
                let window = crate::model::suspect_window(&self.config.timing);
                let text = if s.reporters.is_empty() {
                    format!(
                        "{b} is down: it was suspect when the CMA restarted and did not answer \
                         the CMA's probes for {}",
                        secs(window)
                    )
                } else {
                    let names: Vec<String> = s.reporters.iter().map(|r| self.name(*r)).collect();
                    format!(
                        "{b} is down: no heartbeats for {} reported by {}, and no answer to the \
                         CMA's probes for {}",
                        self.silence(s.silent_ms),
                        join_names(&names),
                        secs(window)
                    )
                };
                let names: Vec<String> = s.reporters.iter().map(|r| self.name(*r)).collect();
                let tags = vec![
                    ("reason", "probe-failed".into()),
                    ("reporters", names.join(",")),
                    ("silent_ms", s.silent_ms.to_string()),
                ];
                self.go_down(now, node, tags, text);
            }
        }
    }

    fn go_down(
        &mut self,
        now: Timestamp,
        node: NodeId,
        tags: Vec<(&'static str, String)>,
        text: String,
    ) {
        // Its ring is being checked: decided when the check closes (module `incident`).
        if self.incidents.hold(node, Held { tags: tags.clone(), text: text.clone() }) {
            return;
        }
        // Its switch is already down or cut off: unreachable, not down.
        let ring = self.rings.wired_ring(node);
        if ring.is_topological() && self.incidents.add_to_outage(&ring, node) {
            self.stats.unreachable += 1;
            self.set_state(now, node, NodeState::Unreachable);
            let text = format!(
                "{} is unreachable: it went silent while its {} is down or cut off, so the CMA \
                 cannot tell whether the host itself is down",
                self.name(node),
                describe_ring(&ring)
            );
            let tags = vec![("ring", ring.0.clone()), ("reason", "switch-down".into())];
            self.event(now, EventKind::HostUnreachable, Some(node), tags, text);
            self.leave_ring(now, node, "unreachable");
            return;
        }
        self.down_now(now, node, tags, text);
    }

    fn down_now(
        &mut self,
        now: Timestamp,
        node: NodeId,
        tags: Vec<(&'static str, String)>,
        text: String,
    ) {
        self.forget_path_trouble(node);
        self.revival_probes.remove(&node);
        self.set_state(now, node, NodeState::Down);
        self.event(now, EventKind::HostDown, Some(node), tags, text);
        self.leave_ring(now, node, "down");
    }

    /// Down or Left → Up, `host.up`, rejoin.
    fn revive(&mut self, now: Timestamp, node: NodeId, why: Revival) {
        let (was, since) = (self.nodes[&node].state, self.nodes[&node].since);
        self.revival_probes.remove(&node);
        // Every peer set from now on (its own, its new neighbours') has an epoch ≥ this.
        self.returned_floor.insert(node, self.next_epoch);
        if was == NodeState::Unreachable {
            let timing = self.config.timing;
            if self.incidents.returned(node, now, &timing).is_some() {
                // Back with its switch: reported once, by switch.up, when the window closes.
                self.set_state(now, node, NodeState::Up);
                self.join_ring(now, node);
                return;
            }
        }
        let away = secs(now.since(since));
        let name = self.name(node);
        let (reason, text) = match (was, why) {
            (NodeState::Left, _) => {
                ("hello", format!("{name} is back: it registered again after leaving"))
            }
            (_, Revival::Hello) => {
                ("hello", format!("{name} is up again: it registered after being down for {away}"))
            }
            (_, Revival::Message) => (
                "message",
                format!(
                    "{name} is up again: it sent the CMA a message after being down for {away}"
                ),
            ),
        };
        self.set_state(now, node, NodeState::Up);
        let tags = vec![("reason", reason.to_owned()), ("was", was.name().to_owned())];
        self.event(now, EventKind::HostUp, Some(node), tags, text);
        if was == NodeState::Down && matches!(why, Revival::Message) {
            // Its nanoprobe kept its session through the outage: it did not restart.
            self.stats.path_suspects += 1;
            let text = format!(
                "{name} was down for {away} but did not restart (its nanoprobe kept running and \
                 is sending again): its NIC, cable or switch port was down, not the host"
            );
            let tags = vec![("reason", "no-restart".to_owned()), ("down_for", away.clone())];
            self.event(now, EventKind::LinkSuspect, Some(node), tags, text);
        }
        self.join_ring(now, node);
    }

    /// A Down node was heard by a neighbour: the CMA probes it (at most once per interval) and
    /// it rejoins only if it answers — a node that neighbours hear but the CMA cannot reach is
    /// not revived and downed again every few seconds.
    fn probe_before_revival(&mut self, now: Timestamp, node: NodeId) {
        let interval = self.config.timing.interval;
        if self.revival_probes.get(&node).is_some_and(|p| now < p.1 + interval) {
            return;
        }
        let nonce = self.next_revival_nonce;
        self.next_revival_nonce = self.next_revival_nonce.wrapping_add(1);
        self.revival_probes.insert(node, (nonce, now));
        self.pending.other_probes.push((node, nonce));
    }

    fn forget_path_trouble(&mut self, node: NodeId) {
        let lo = (node, NodeId([0; 16]), 0);
        let hi = (node, NodeId([0xff; 16]), u64::MAX);
        let gone: Vec<_> = self.path_trouble.range(lo..=hi).copied().collect();
        for g in gone {
            self.path_trouble.remove(&g);
        }
    }

    /// Whether a word of `reporter` about `subject`, made under the reporter's peer set
    /// `epoch`, predates the return of either of them (epochs grow globally, so every peer
    /// set issued after a node came back has an epoch at or above its floor).
    fn made_before_return(&self, reporter: NodeId, subject: NodeId, epoch: u64) -> bool {
        [reporter, subject].iter().any(|n| self.returned_floor.get(n).is_some_and(|f| epoch < *f))
    }

    /// Whether `reporter`'s dead word about `subject` under `epoch` was already found to be
    /// path trouble.
    fn known_path_trouble(&self, subject: NodeId, reporter: NodeId, epoch: u64) -> bool {
        let lo = (subject, reporter, epoch);
        let hi = (subject, reporter, u64::MAX);
        self.path_trouble.range(lo..=hi).next().is_some()
    }

    /// A message from a Suspect node: proof of life for its suspicion, or — if its host.down
    /// was held by a ring check (which it has now answered) — back to Up at once.
    fn alive_while_suspect(&mut self, now: Timestamp, node: NodeId) {
        if self.suspicions.proof_of_life(node, AliveProof::Message) {
            return;
        }
        self.set_state(now, node, NodeState::Up);
        let text = format!(
            "{} is up: it sent the CMA a message while its switch was being checked",
            self.name(node)
        );
        let tags = vec![("reason", "message".to_string())];
        self.event(now, EventKind::HostUp, Some(node), tags, text);
    }

    // ------------------------------------------------------------------------------------------
    // switch incidents (module `incident`)

    /// `node` was heard (a message or a probe reply): counts for an open check of its ring.
    fn heard(&mut self, now: Timestamp, node: NodeId) {
        if let Some((ring, check)) = self.incidents.heard(node) {
            self.check_closed(now, ring, check);
        }
    }

    /// A probe of a suspect goes out: if it is the second, the first went unanswered (probing
    /// stops on proof of life), and now its ring is worth a look, once per suspicion (later
    /// reporters are looked at as they come). A suspicion raised by chance loss (a neighbour
    /// missed heartbeats) is answered by the first probe within milliseconds and opens no
    /// check; a host cut off with its switch answers none, and its ring's check opens one probe
    /// gap (80 ms at the default timing) after the first report instead of at once.
    fn suspect_missed_a_probe(&mut self, now: Timestamp, node: NodeId) {
        let Some(s) = self.suspicions.get(node) else { return };
        if s.probes_sent() != 2 {
            return;
        }
        for reporter in s.reporters.clone() {
            self.maybe_check(now, node, reporter);
        }
    }

    /// A member of a topological ring is suspect on `reporter`'s word and missed a probe: open a
    /// check of the ring when the word comes from outside it, or two members are suspect.
    fn maybe_check(&mut self, now: Timestamp, node: NodeId, reporter: NodeId) {
        let Some(ring) = self.rings.home_of(node).cloned() else { return };
        if !ring.is_topological() || self.incidents.check(&ring).is_some() {
            return;
        }
        let Some(members) = self.rings.ring(ring.as_str()) else { return };
        let outside = self.rings.home_of(reporter) != Some(&ring);
        let suspects = members
            .iter()
            .filter(|m| self.nodes.get(m).is_some_and(|n| n.state == NodeState::Suspect))
            .take(2)
            .count();
        if !outside && suspects < 2 {
            return;
        }
        self.open_ring_check(now, &ring, (node, reporter));
    }

    /// Opens a check of `ring` (module `incident`): probes every member, and asks nanoprobes
    /// outside it to probe a sample of them. No-op if one is open or the ring is down.
    fn open_ring_check(
        &mut self,
        now: Timestamp,
        ring: &crate::ring::RingKey,
        trigger: (NodeId, NodeId),
    ) {
        let Some(members) = self.rings.ring(ring.as_str()) else { return };
        let members = members.order();
        let timing = self.config.timing;
        let targets: Vec<NodeId> = sample(&members, PEER_PROBE_TARGETS);
        if let Some(p) = self.incidents.open_check(ring, members, trigger, now, &timing) {
            self.stats.ring_checks += 1;
            self.pending.other_probes.extend(p);
            let mut probers = self.pick_probers(ring);
            // The reporter outside the ring just spoke to the CMA: the surest prober.
            let reporter = trigger.1;
            if self.rings.home_of(reporter).is_some_and(|h| h != ring)
                && !probers.contains(&reporter)
                && self.nodes.get(&reporter).is_some_and(|r| r.state == NodeState::Up)
            {
                probers.insert(0, reporter);
                probers.truncate(PEER_PROBERS);
            }
            let pairs: Vec<(NodeId, NodeId)> =
                probers.iter().flat_map(|p| targets.iter().map(move |t| (*p, *t))).collect();
            let asked = self.incidents.ask_peers(ring, &pairs);
            self.pending.peer_requests.extend(asked);
            if self.config.management_probes
                && let Some(address) = self.management_address(ring)
                && let Some(id) = self.incidents.probe_management(ring, address)
            {
                self.stats.management_probes += 1;
                self.pending.management_probes.push((id, address));
            }
        }
    }

    /// The management address of a switch ring's switch, as its members' LLDP/CDP gave it:
    /// the one most members name (a host cannot out-vote the rest of its ring), the lowest on
    /// a tie. Addresses no ping should go to (loopback, unspecified, multicast, broadcast)
    /// are ignored.
    fn management_address(&self, ring: &crate::ring::RingKey) -> Option<std::net::IpAddr> {
        if ring.kind() != crate::ring::RingKind::Switch {
            return None;
        }
        let members = self.rings.ring(ring.as_str())?;
        let mut votes: BTreeMap<std::net::IpAddr, usize> = BTreeMap::new();
        for m in members.order() {
            let Some(sw) = self.wiring.get(&m).and_then(|w| w.wiring.switch.as_ref()) else {
                continue;
            };
            let mut mine: Vec<std::net::IpAddr> = sw
                .management_addresses
                .iter()
                .filter_map(|a| a.trim().parse().ok())
                .filter(|a: &std::net::IpAddr| pingable(a))
                .collect();
            mine.sort();
            mine.dedup();
            for a in mine {
                *votes.entry(a).or_insert(0) += 1;
            }
        }
        let most = votes.values().copied().max()?;
        votes.into_iter().find(|(_, v)| *v == most).map(|(a, _)| a)
    }

    /// The driver pinged a checked switch's management address (`id` from
    /// [`Action::ProbeManagement`]): the answer is recorded for the check's decision (module
    /// `incident`). A late answer (the check closed first) or an unknown id decides nothing.
    pub fn handle_management_probe(&mut self, _now: Timestamp, id: u64, answered: bool) {
        if self.incidents.management_result(id, answered) {
            if answered {
                self.stats.management_answered += 1;
            }
        } else {
            self.stats.management_unmatched += 1;
        }
        self.flush();
    }

    /// Up to [`PEER_PROBERS`] nanoprobes outside `ring` to probe its members: its watchers
    /// first (they heartbeat its representatives, so they are the nearest outside it), then
    /// the other representatives in upper-ring order; each Up, in a topological ring other
    /// than `ring` that is neither checked nor down (a prober behind a failed switch would
    /// answer nothing).
    fn pick_probers(&self, ring: &crate::ring::RingKey) -> Vec<NodeId> {
        let usable = |n: &NodeId| {
            self.nodes.get(n).is_some_and(|r| r.state == NodeState::Up)
                && self.rings.home_of(*n).is_some_and(|h| {
                    h != ring
                        && self.incidents.check(h).is_none()
                        && self.incidents.outage(h).is_none()
                })
        };
        let mut out = Vec::with_capacity(PEER_PROBERS);
        let watchers = self.rings.watchers(ring);
        for n in watchers.iter().chain(self.rings.upper_order().iter()) {
            if out.len() == PEER_PROBERS {
                break;
            }
            if usable(n) && !out.contains(n) {
                out.push(*n);
            }
        }
        out
    }

    /// A nanoprobe answered a `ProbeRequest` of a ring check: the evidence is recorded for the
    /// check's decision (module `incident`). Unmatched results (late, repeated, or naming
    /// another target) are counted and ignored.
    pub fn handle_probe_result(
        &mut self,
        _now: Timestamp,
        prober: NodeId,
        r: &assim_wire::msg::ProbeResult,
    ) {
        let target = NodeId::from_slice(&r.target);
        let matched =
            target.and_then(|t| self.incidents.peer_result(prober, r.command_id, t, r.answered));
        // It decides something only while the target's ring is checked or it is Suspect.
        let live = target.is_some_and(|t| {
            self.incidents.peer_command_live(t)
                || self.nodes.get(&t).is_some_and(|n| n.state == NodeState::Suspect)
        });
        match (matched, target) {
            (Some(true), Some(t)) if live => {
                self.stats.peer_probe_answered += 1;
                // Proof of life for a suspicion still open (its ring's check may have closed
                // already, the rest of the ring having answered the CMA).
                if self.nodes.get(&t).is_some_and(|n| n.state == NodeState::Suspect) {
                    self.suspicions.proof_of_life(t, AliveProof::PeerProbe(prober));
                }
            }
            (Some(false), Some(_)) if live => self.stats.peer_probe_silent += 1,
            // Late (its check closed and it decides nothing now), forged or repeated.
            _ => self.stats.peer_probe_unmatched += 1,
        }
        self.flush();
    }

    /// A ring check closed (module `incident`): blame the switch, or let the held decisions go.
    fn check_closed(&mut self, now: Timestamp, ring: crate::ring::RingKey, check: Check) {
        if !check.blames_switch() {
            for (node, held) in check.held {
                if !self.nodes.get(&node).is_some_and(|n| n.state == NodeState::Suspect)
                    || self.suspicions.get(node).is_some()
                {
                    continue;
                }
                match check.peer_answered.get(&node) {
                    // Its neighbours and the CMA cannot reach it, a nanoprobe on another
                    // switch can: path trouble, not a dead host.
                    Some(&prober) => self.reached_by_peer(now, node, prober),
                    None => self.down_now(now, node, held.tags, held.text),
                }
            }
            return;
        }
        let silent: Vec<NodeId> = check
            .silent()
            .into_iter()
            .filter(|n| self.nodes.get(n).is_some_and(|r| r.state.in_ring()))
            .collect();
        if silent.is_empty() {
            return;
        }
        let peer_heard: Vec<NodeId> =
            silent.iter().copied().filter(|n| check.peer_answered.contains_key(n)).collect();
        let peer_tried: Vec<NodeId> = silent
            .iter()
            .copied()
            .filter(|n| check.peer_answered.contains_key(n) || check.peer_silent.contains(n))
            .collect();
        // The switch's management address (the CMA's ping, when LLDP/CDP gave one): it
        // answering proves the switch alive even when no host behind it answers anyone.
        let management = check.management.as_ref().and_then(|m| m.answered.map(|a| (m.address, a)));
        let switch_alive = matches!(management, Some((_, true)));
        let kind = if check.answered.is_empty() && peer_heard.is_empty() && !switch_alive {
            OutageKind::Down
        } else {
            OutageKind::Unreachable
        };
        self.stats.switch_incidents += 1;
        // The rings next to this one in the upper ring were watched by its representatives,
        // which are now silent: check them at once rather than after their new watchers'
        // dead time (a ring between two failed ones is otherwise heard of one round later).
        let mut adjacent: Vec<(crate::ring::RingKey, (NodeId, NodeId))> = Vec::new();
        for &r in self.rings.representatives(&ring) {
            for n in self.rings.upper_neighbours(r) {
                if let Some(h) = self.rings.home_of(n)
                    && *h != ring
                    && h.is_topological()
                    && !adjacent.iter().any(|a| &a.0 == h)
                {
                    adjacent.push((h.clone(), (n, r)));
                }
            }
        }
        for &h in &silent {
            self.suspicions.cancel(h);
            self.stats.unreachable += 1;
            self.set_state(now, h, NodeState::Unreachable);
            self.leave_ring(now, h, "unreachable");
        }
        let timing = self.config.timing;
        let answered: Vec<NodeId> = check.answered.iter().copied().collect();
        let switch = self.wired_switch(&ring, silent.iter().chain(&answered));
        self.incidents.start_outage(&ring, kind, silent.clone(), now, &timing).switch =
            switch.clone();
        let what = describe_ring(&ring);
        let n = check.members.len();
        let window = secs(now.since(check.opened));
        let probers: Vec<String> = check.probers.iter().map(|p| self.name(*p)).collect();
        let on_others = format!("{} on other switches", join_names(&probers));
        // What the peers' probes added (issue 13): they ran from outside the ring, so an
        // answer proves the host alive and its switch forwarding.
        let peer_words = if peer_tried.is_empty() {
            String::new()
        } else if peer_heard.is_empty() {
            format!(", nor probes from {on_others}")
        } else {
            String::new()
        };
        let (ekind, text) = match kind {
            OutageKind::Down => (
                EventKind::SwitchDown,
                format!(
                    "{what} is down or cut off: all {n} of its hosts went silent together and \
                     none answered the CMA's probes for {window}{peer_words}{}; they are \
                     unreachable, not down (a dead switch and a cut uplink look the same from \
                     outside it)",
                    match management {
                        Some((a, _)) => format!(", nor did its management address {a}"),
                        None => String::new(),
                    }
                ),
            ),
            OutageKind::Unreachable
                if check.answered.is_empty() && peer_heard.is_empty() && switch_alive =>
            {
                let a = management.map(|m| m.0.to_string()).unwrap_or_default();
                (
                    EventKind::SwitchUnreachable,
                    format!(
                        "{what} is alive but forwards for none of its hosts: its management \
                         address {a} answers the CMA, while all {n} of its hosts went silent \
                         together and did not answer the CMA's probes for {window}{peer_words}; \
                         its host ports or its forwarding failed, or its hosts lost power \
                         together; they are unreachable, not down"
                    ),
                )
            }
            OutageKind::Unreachable if !peer_heard.is_empty() => (
                EventKind::SwitchUnreachable,
                format!(
                    "{what} is cut off from the CMA: {} of its {n} hosts did not answer the \
                     CMA's probes for {window}, but {} of them answer {on_others}, so the switch \
                     forwards and the path between it and the CMA is broken; the silent hosts \
                     are unreachable, not down",
                    silent.len(),
                    peer_heard.len()
                ),
            ),
            OutageKind::Unreachable => (
                EventKind::SwitchUnreachable,
                format!(
                    "{what} is partly cut off: {} of its {n} hosts went silent together and did \
                     not answer the CMA's probes for {window}{peer_words}, while {} still \
                     answer; the silent hosts are unreachable, not down",
                    silent.len(),
                    check.answered.len()
                ),
            ),
        };
        let mut tags = vec![
            ("ring", ring.0.clone()),
            ("switch", ring.name().to_owned()),
            ("hosts", silent.len().to_string()),
            ("members", n.to_string()),
            ("trigger", self.name(check.trigger.0)),
            ("reporter", self.name(check.trigger.1)),
        ];
        if let Some((_, answered)) = management {
            tags.push(("management", if answered { "answered" } else { "silent" }.into()));
        }
        if !check.probers.is_empty() {
            tags.push(("probers", probers.join(",")));
            tags.push(("peer_answered", peer_heard.len().to_string()));
            tags.push(("peer_tried", peer_tried.len().to_string()));
        }
        let mut body = self.incident_body(&ring, &silent, &answered, switch.as_ref());
        body["peer_probes"] = serde_json::json!({
            "probers": check.probers.iter().map(|p| self.host_json(*p)).collect::<Vec<_>>(),
            "answered": peer_heard.iter().map(|h| self.host_json(*h)).collect::<Vec<_>>(),
            "silent": check.peer_silent.iter().filter(|h| silent.contains(h))
                .map(|h| self.host_json(*h)).collect::<Vec<_>>(),
        });
        body["management_probe"] = match &check.management {
            Some(m) => serde_json::json!({
                "address": m.address.to_string(),
                "answered": m.answered,
            }),
            None => serde_json::Value::Null,
        };
        let e = self.event(now, ekind, None, tags, text);
        e.body = Some(body);
        for (r, trigger) in adjacent {
            self.open_ring_check(now, &r, trigger);
        }
    }

    /// A member whose host.down was held by a ring check answered a nanoprobe on another
    /// switch: Up, `path.suspect` (the CMA's and its neighbours' paths to it are broken).
    fn reached_by_peer(&mut self, now: Timestamp, node: NodeId, prober: NodeId) {
        self.stats.path_suspects += 1;
        self.set_state(now, node, NodeState::Up);
        let (b, p) = (self.name(node), self.name(prober));
        let text = format!(
            "{b} answers {p} on another switch but neither its ring neighbours nor the CMA \
             reach it: the paths to it are in trouble, not the host"
        );
        let tags = vec![("b", b), ("prober", p), ("proof", "peer-probe".to_owned())];
        self.event(now, EventKind::PathSuspect, Some(node), tags, text);
    }

    /// A switch's return window closed: one switch.up; hosts that did not come back are down.
    fn switch_returned(&mut self, now: Timestamp, ring: crate::ring::RingKey, o: Outage) {
        let back: Vec<NodeId> = o.back.iter().copied().collect();
        let missing: Vec<NodeId> = o
            .not_back()
            .into_iter()
            .filter(|n| self.nodes.get(n).is_some_and(|r| r.state == NodeState::Unreachable))
            .collect();
        let what = describe_ring(&ring);
        let away = secs(now.since(o.since));
        let text = if missing.is_empty() {
            format!("{what} is back: all {} of its hosts are heard again after {away}", back.len())
        } else {
            format!(
                "{what} is back after {away}: {} of its hosts are heard again, {} did not come \
                 back with it and are reported down one by one",
                back.len(),
                missing.len()
            )
        };
        let tags = vec![
            ("ring", ring.0.clone()),
            ("switch", ring.name().to_owned()),
            ("back", back.len().to_string()),
            ("not_back", missing.len().to_string()),
        ];
        let mut body = self.incident_body(&ring, &back, &[], o.switch.as_ref());
        body["not_back"] =
            serde_json::Value::Array(missing.iter().map(|n| self.host_json(*n)).collect());
        let e = self.event(now, EventKind::SwitchUp, None, tags, text);
        e.body = Some(body);
        self.switch_returns.push(SwitchReturn {
            ring: ring.clone(),
            back: back.clone(),
            not_back: missing.clone(),
        });
        for n in missing {
            let text = format!(
                "{} is down: it did not come back with its {what}, whose other hosts are heard \
                 again",
                self.name(n)
            );
            let tags = vec![("reason", "not-back-with-switch".into()), ("ring", ring.0.clone())];
            self.down_now(now, n, tags, text);
        }
    }

    fn host_json(&self, n: NodeId) -> serde_json::Value {
        serde_json::json!({ "node": n.to_string(), "host": self.name(n) })
    }

    /// The switch of `ring` as the wiring of the first of `hosts` still placed in it names it.
    fn wired_switch<'a>(
        &self,
        ring: &crate::ring::RingKey,
        hosts: impl IntoIterator<Item = &'a NodeId>,
    ) -> Option<crate::wiring::SwitchPort> {
        hosts.into_iter().find_map(|h| {
            self.wiring
                .get(h)
                .filter(|w| w.wiring.ring == *ring)
                .and_then(|w| w.wiring.switch.clone())
        })
    }

    /// An incident's body: the ring, the switch as it announces itself (its hosts' wiring, else
    /// `known`: as it was named when the outage began), the hosts.
    fn incident_body(
        &self,
        ring: &crate::ring::RingKey,
        hosts: &[NodeId],
        answering: &[NodeId],
        known: Option<&crate::wiring::SwitchPort>,
    ) -> serde_json::Value {
        let switch =
            self.wired_switch(ring, hosts.iter().chain(answering)).or_else(|| known.cloned());
        serde_json::json!({
            "ring": ring.0,
            "kind": ring.kind().name(),
            "switch": switch.map(|s| serde_json::json!({
                "chassis_id": s.chassis_id,
                "system_name": s.system_name,
                "management_addresses": s.management_addresses,
            })),
            "hosts": hosts.iter().map(|h| self.host_json(*h)).collect::<Vec<_>>(),
            "answering": answering.iter().map(|h| self.host_json(*h)).collect::<Vec<_>>(),
        })
    }

    // ------------------------------------------------------------------------------------------
    // ring

    fn join_ring(&mut self, now: Timestamp, node: NodeId) {
        let changes = self.rings.join(node);
        if !changes.is_empty() {
            // The joiner always gets a set: it may be running a stale one (rejoin) or none.
            self.refresh_peers(node, true);
        }
        self.apply_ring_changes(now, node, &changes, "join", &|_| false);
    }

    /// Refreshes the peers of everyone a ring change may have touched (other than `subject`,
    /// handled by the caller) and reports each change.
    fn apply_ring_changes(
        &mut self,
        now: Timestamp,
        subject: NodeId,
        changes: &[RingChange],
        reason: &str,
        said: &dyn Fn(&RingChange) -> bool,
    ) {
        for change in changes {
            if change.node != subject && self.rings.is_member(change.node) {
                self.refresh_peers(change.node, false);
            }
            for n in change.disturbed() {
                if n != subject && self.rings.is_member(n) {
                    self.refresh_peers(n, false);
                }
            }
            if said(change) {
                // Told elsewhere; the ring is still persisted (write-behind).
                self.ring_flush_at.get_or_insert(now + self.config.timing.interval);
            } else if self.batching && change.joined && reason == "join" {
                // Told with the batch's other joins into this ring (`tell_joins`).
                self.pending.joins.push(change.clone());
            } else {
                self.ring_event(now, change, reason);
            }
        }
    }

    fn leave_ring(&mut self, now: Timestamp, node: NodeId, reason: &'static str) {
        self.placing.remove(&node);
        if !self.nodes[&node].peers.is_empty() {
            self.node_mut(node).peers.clear();
            self.pending.persist.insert(node);
        }
        let changes = self.rings.leave(node);
        self.apply_ring_changes(now, node, &changes, reason, &|_| false);
    }

    /// Recomputes `node`'s peers; on a change (or `force`) gives it a new epoch and queues
    /// Persist + SendPeerSet.
    fn refresh_peers(&mut self, node: NodeId, force: bool) {
        let peers = self.rings.neighbours(node);
        let rec = self.nodes.get(&node).expect("ring members are known nodes");
        if !force && same_set(&rec.peers, &peers) {
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.pending.counters = true;
        let rec = self.node_mut(node);
        rec.peers = peers;
        rec.peer_epoch = epoch;
        self.pending.persist.insert(node);
        self.pending.send.insert(node);
    }

    fn ring_event(&mut self, now: Timestamp, c: &RingChange, reason: &str) {
        self.stats.ring_changes += 1;
        if self.ring_flush_at.is_none() {
            self.ring_flush_at = Some(now + self.config.timing.interval);
        }
        let name = self.name(c.node);
        let n = c.members;
        let the = if c.ring.0 == crate::ring::RingKey::UNWIRED {
            "the ring".to_owned()
        } else {
            format!("ring {}", c.ring)
        };
        let members = if n == 1 { "1 member".to_owned() } else { format!("{n} members") };
        let text = match (c.joined, c.predecessor, c.successor) {
            (true, None, _) | (true, _, None) => format!("{name} joined {the} ({members})"),
            (true, Some(p), Some(s)) if p == s => {
                format!("{name} joined {the} next to {} ({members})", self.name(p))
            }
            (true, Some(p), Some(s)) => format!(
                "{name} joined {the} between {} and {} ({members})",
                self.name(p),
                self.name(s)
            ),
            (false, None, _) | (false, _, None) => {
                format!("{name} left {the}, which is now empty ({members})")
            }
            (false, Some(p), Some(s)) if p == s => {
                format!("{name} left {the}; {} is its only member ({members})", self.name(p))
            }
            (false, Some(p), Some(s)) if n == 2 => format!(
                "{name} left {the}; {} and {} heartbeat each other ({members})",
                self.name(p),
                self.name(s)
            ),
            (false, Some(p), Some(s)) => format!(
                "{name} left {the}; {} and {} are now neighbours ({members})",
                self.name(p),
                self.name(s)
            ),
        };
        let text = if reason == "placed" && c.joined && c.ring.0 != crate::ring::RingKey::UPPER {
            format!("{text}, placed by its wiring (it waited in the fallback ring until then)")
        } else {
            text
        };
        let mut tags = vec![
            ("ring", c.ring.0.clone()),
            ("change", if c.joined { "join" } else { "leave" }.to_owned()),
            ("reason", reason.to_owned()),
            ("members", n.to_string()),
        ];
        if let Some(p) = c.predecessor {
            tags.push(("prev", self.name(p)));
        }
        if let Some(s) = c.successor {
            tags.push(("next", self.name(s)));
        }
        self.event(now, EventKind::RingChanged, Some(c.node), tags, text);
    }

    /// The batch's joins: one `ring.changed` per ring, in the order of each ring's first join;
    /// a ring joined once reads as an ordinary join.
    fn tell_joins(&mut self, now: Timestamp) {
        let joins = std::mem::take(&mut self.pending.joins);
        let mut rings: Vec<(crate::ring::RingKey, Vec<RingChange>)> = Vec::new();
        for c in joins {
            match rings.iter_mut().find(|(k, _)| *k == c.ring) {
                Some((_, v)) => v.push(c),
                None => rings.push((c.ring.clone(), vec![c])),
            }
        }
        for (ring, changes) in rings {
            if let [one] = changes.as_slice() {
                self.ring_event(now, one, "join");
                continue;
            }
            self.stats.ring_changes += 1;
            if self.ring_flush_at.is_none() {
                self.ring_flush_at = Some(now + self.config.timing.interval);
            }
            let members = changes.last().map_or(0, |c| c.members);
            let the = if ring.0 == crate::ring::RingKey::UNWIRED {
                "the ring".to_owned()
            } else {
                format!("ring {ring}")
            };
            let text = format!("{} hosts joined {the} ({members} members)", changes.len());
            let tags = vec![
                ("ring", ring.0.clone()),
                ("change", "join".to_owned()),
                ("reason", "join".to_owned()),
                ("members", members.to_string()),
                ("joined", changes.len().to_string()),
            ];
            let hosts: Vec<serde_json::Value> = changes
                .iter()
                .map(|c| serde_json::json!({ "node": c.node.to_string(), "host": self.name(c.node) }))
                .collect();
            let e = self.event(now, EventKind::RingChanged, None, tags, text);
            e.body = Some(serde_json::json!({ "ring": ring.0, "joined": hosts }));
        }
    }

    /// The ring.changed event for a restart whose stored ring disagreed with node states.
    fn repair_event(&mut self, now: Timestamp, stored: &[NodeId], derived: &[NodeId]) {
        self.stats.ring_changes += 1;
        let stored_set: BTreeSet<NodeId> = stored.iter().copied().collect();
        let derived_set: BTreeSet<NodeId> = derived.iter().copied().collect();
        let added = derived_set.difference(&stored_set).count();
        let removed = stored_set.difference(&derived_set).count();
        let text = format!(
            "the ring was rebuilt from node states on restart: {} members ({added} not in the \
             stored ring, {removed} stored but not Up or Suspect)",
            derived.len()
        );
        let tags = vec![
            ("ring", crate::ring::RingKey::ALL.to_owned()),
            ("change", "repair".to_owned()),
            ("reason", "restart".to_owned()),
            ("members", derived.len().to_string()),
            ("added", added.to_string()),
            ("removed", removed.to_string()),
        ];
        self.event(now, EventKind::RingChanged, None, tags, text);
    }

    // ------------------------------------------------------------------------------------------
    // plumbing

    fn node_mut(&mut self, id: NodeId) -> &mut NodeRecord {
        self.nodes.get_mut(&id).expect("known node")
    }

    fn name(&self, id: NodeId) -> String {
        self.nodes.get(&id).map_or_else(|| id.to_string(), NodeRecord::display_name)
    }

    fn silence(&self, silent_ms: u64) -> String {
        if silent_ms == 0 {
            format!("at least {}", secs(self.config.timing.dead))
        } else {
            secs(Duration::from_millis(silent_ms))
        }
    }

    fn set_state(&mut self, now: Timestamp, node: NodeId, state: NodeState) {
        let (old, since) = (self.nodes[&node].state, self.nodes[&node].since);
        if old == NodeState::Unreachable && state != NodeState::Unreachable {
            let t = &self.config.timing;
            let from = since - (t.dead + crate::model::suspect_window(t));
            let ring = self.rings.wired_ring(node);
            let w = self.unreachable_windows.entry(node).or_default();
            if w.len() == MAX_UNREACHABLE_WINDOWS {
                w.pop_front();
            }
            w.push_back(UnreachableWindow { from, to: now, ring });
        }
        let rec = self.node_mut(node);
        if rec.state != state {
            rec.state = state;
            rec.since = now;
            self.pending.persist.insert(node);
        }
    }

    pub(crate) fn event(
        &mut self,
        now: Timestamp,
        kind: EventKind,
        host: Option<NodeId>,
        extra: Vec<(&'static str, String)>,
        text: String,
    ) -> &mut Event {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.pending.counters = true;
        self.stats.events += 1;
        let hostname = host.map(|h| self.name(h)).unwrap_or_default();
        let mut tags = BTreeMap::new();
        if let Some(h) = host {
            tags.insert("host".to_owned(), hostname.clone());
            tags.insert("node".to_owned(), h.to_string());
        }
        for (k, v) in extra {
            tags.insert(k.to_owned(), v);
        }
        let severity = kind.default_severity();
        self.pending.events.push(Event {
            id,
            time: now,
            kind,
            host,
            hostname,
            tags,
            text,
            severity,
            body: None,
        });
        self.pending.events.last_mut().expect("just pushed")
    }

    fn peer_set(&self, rec: &NodeRecord) -> PeerSet {
        let t = &self.config.timing;
        PeerSet {
            epoch: rec.peer_epoch,
            peers: rec
                .peers
                .iter()
                .filter_map(|p| self.nodes.get(p))
                .map(|p| Peer {
                    node_id: p.id.as_bytes().to_vec(),
                    addr: p.listen_addr.to_string(),
                    public_key: p.public_key.to_vec(),
                })
                .collect(),
            interval_ms: t.interval.as_millis() as u64,
            warn_ms: t.warn.as_millis() as u64,
            dead_ms: t.dead.as_millis() as u64,
        }
    }

    /// Turns what the input queued into actions, in the documented order (inside a batch:
    /// nothing yet, see [`Cma::end_batch`]).
    pub(crate) fn flush(&mut self) {
        if self.batching {
            return;
        }
        let p = std::mem::take(&mut self.pending);
        for id in &p.persist {
            self.actions.push_back(Action::Persist(Change::Node(self.nodes[id].clone())));
        }
        if p.counters {
            self.actions.push_back(Action::Persist(Change::Counters {
                next_epoch: self.next_epoch,
                next_event_id: self.next_event_id,
            }));
        }
        for id in &p.send {
            let rec = &self.nodes[id];
            if !rec.state.in_ring() {
                continue;
            }
            self.stats.peer_sets_sent += 1;
            let set = self.peer_set(rec);
            self.actions.push_back(Action::SendPeerSet { to: *id, addr: rec.listen_addr, set });
        }
        for (node, nonce) in p.probes {
            // A suspicion may have been closed later in the same input.
            if self.nodes[&node].state != NodeState::Suspect {
                continue;
            }
            self.stats.probes_sent += 1;
            let addr = self.nodes[&node].listen_addr;
            self.actions.push_back(Action::Probe { node, addr, nonce });
        }
        for (node, nonce) in p.other_probes {
            let Some(rec) = self.nodes.get(&node) else { continue };
            if rec.state == NodeState::Left {
                continue;
            }
            self.stats.probes_sent += 1;
            self.actions.push_back(Action::Probe { node, addr: rec.listen_addr, nonce });
        }
        for (prober, target, command_id) in p.peer_requests {
            let (Some(pr), Some(t)) = (self.nodes.get(&prober), self.nodes.get(&target)) else {
                continue;
            };
            if !pr.state.in_ring() {
                continue;
            }
            self.stats.peer_probe_requests += 1;
            let request = assim_wire::msg::ProbeRequest {
                command_id,
                target: target.as_bytes().to_vec(),
                addr: t.listen_addr.to_string(),
                public_key: t.public_key.to_vec(),
                timeout_ms: self.config.timing.interval.as_millis() as u64,
            };
            self.actions.push_back(Action::ProbeRequest {
                to: prober,
                addr: pr.listen_addr,
                request,
            });
        }
        for (id, address) in p.management_probes {
            let timeout = self.config.timing.interval;
            self.actions.push_back(Action::ProbeManagement { id, address, timeout });
        }
        self.actions.extend(p.events.into_iter().map(Action::Emit));
    }
}

/// Whether a management address is one a ping may go to.
fn pingable(a: &std::net::IpAddr) -> bool {
    let bad = a.is_loopback() || a.is_unspecified() || a.is_multicast();
    let broadcast = matches!(a, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    !bad && !broadcast
}

/// A report's stamps: the reporter's epoch and clock, and the silence it stated.
#[derive(Clone, Copy, Debug)]
struct Evidence {
    epoch: u64,
    at: u64,
    silent_ms: u64,
}

impl Evidence {
    fn word(&self, saw: Saw, silent_ms: u64) -> Word {
        Word { saw, epoch: self.epoch, at: self.at, silent_ms }
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Up to `n` of `items`, evenly spaced (all of them when there are `n` or fewer).
fn sample(items: &[NodeId], n: usize) -> Vec<NodeId> {
    if items.len() <= n {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * items.len() / n]).collect()
}

/// "a", "a and b", "a, b and c".
fn join_names(names: &[String]) -> String {
    match names {
        [] => "nobody".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A ring in plain words: "switch tor1", "segment 10.0.1.0/24@10.0.1.1", "pinned group rack7".
pub(crate) fn describe_ring(ring: &crate::ring::RingKey) -> String {
    use crate::ring::RingKind;
    match ring.kind() {
        RingKind::Switch => format!("switch {}", ring.name()),
        RingKind::Segment => format!("segment {}", ring.name()),
        RingKind::Pinned => format!("pinned group {}", ring.name()),
        RingKind::Unwired | RingKind::Upper => format!("ring {ring}"),
    }
}
