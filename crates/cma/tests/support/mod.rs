//! In-memory harness for the CMA core: virtual time, a model store that applies `Persist`
//! actions, and helpers to build messages.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use assim_cma::{
    Action, Change, Cma, CmaConfig, Event, EventKind, NodeRecord, NodeState, Snapshot,
};
use assim_wire::msg::{HeartbeatReport, Hello, PeerSet, ReportKind};
use assim_wire::{NodeId, Timestamp};

/// Deterministic node id for test node `n`.
pub fn id(n: u32) -> NodeId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[6] = 0x70; // looks like a UUIDv7
    b[8] = 0x80;
    NodeId(b)
}

pub fn hostname(n: u32) -> String {
    format!("web{n}")
}

pub fn key(n: u32) -> [u8; 32] {
    let mut k = [7u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn addr(n: u32) -> String {
    format!("10.{}.{}.{}:1984", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

pub fn hello(n: u32) -> Hello {
    Hello {
        version: "1.0.0".into(),
        hostname: hostname(n),
        listen_addr: addr(n),
        addresses: vec![format!("10.0.0.{}/24", n & 0xff)],
        started_at: 0,
        token_proof: None,
        peer_epoch: 0,
        spool_incarnation: 0,
        acked_through: 0,
    }
}

pub fn report(kind: ReportKind, about: u32, silent_ms: u64) -> HeartbeatReport {
    HeartbeatReport {
        kind: kind as i32,
        peer: id(about).as_bytes().to_vec(),
        peer_addr: addr(about),
        silent_ms,
        epoch: 0,
        at: 0,
    }
}

/// What a store would hold after applying every `Persist` action in order.
#[derive(Debug, Default, Clone)]
pub struct ModelStore {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub ring: Vec<NodeId>,
    pub next_epoch: u64,
    pub next_event_id: u64,
    pub wiring: BTreeMap<NodeId, assim_cma::wiring::NodeWiring>,
    pub rings: BTreeMap<assim_cma::ring::RingKey, assim_cma::ring::RingRecord>,
}

impl ModelStore {
    pub fn apply(&mut self, a: &Action) {
        if let Action::Persist(c) = a {
            match c {
                Change::Node(r) => {
                    self.nodes.insert(r.id, r.clone());
                }
                Change::Ring(r) => self.ring = r.clone(),
                Change::Counters { next_epoch, next_event_id } => {
                    self.next_epoch = *next_epoch;
                    self.next_event_id = *next_event_id;
                }
                Change::Wiring(w) => {
                    self.wiring.insert(w.node, w.clone());
                }
                Change::Rings(rings) => {
                    for r in rings {
                        if r.members.is_empty() {
                            self.rings.remove(&r.key);
                        } else {
                            self.rings.insert(r.key.clone(), r.clone());
                        }
                    }
                }
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.values().cloned().collect(),
            ring: self.ring.clone(),
            next_epoch: self.next_epoch,
            next_event_id: self.next_event_id,
            wiring: self.wiring.values().cloned().collect(),
        }
    }
}

/// A CMA under virtual time, with every action it produced applied to a model store and kept
/// for inspection.
#[derive(Debug)]
pub struct Harness {
    pub cma: Cma,
    pub now: Timestamp,
    pub store: ModelStore,
    /// Every action produced since the last [`Harness::take`].
    pub log: Vec<Action>,
    /// The highest epoch sent to each node so far (must strictly increase).
    pub epochs: BTreeMap<NodeId, u64>,
}

pub const T0: Timestamp = Timestamp(1_700_000_000_000_000);

impl Harness {
    pub fn new() -> Self {
        Self::with(CmaConfig::default(), Snapshot::default(), T0)
    }

    pub fn with(config: CmaConfig, snapshot: Snapshot, now: Timestamp) -> Self {
        let mut h = Harness {
            cma: Cma::new(config, snapshot, now),
            now,
            store: ModelStore::default(),
            log: Vec::new(),
            epochs: BTreeMap::new(),
        };
        h.drain();
        h
    }

    /// Drains the core's actions into the log and the store; checks epochs only grow.
    pub fn drain(&mut self) {
        while let Some(a) = self.cma.poll_action() {
            self.store.apply(&a);
            if let Action::SendPeerSet { to, set, .. } = &a {
                let prev = self.epochs.insert(*to, set.epoch);
                // Equal is allowed: a resend of the current set (after a restart hello).
                assert!(
                    prev.is_none_or(|p| p <= set.epoch),
                    "epoch for {to} went from {prev:?} to {}",
                    set.epoch
                );
            }
            self.log.push(a);
        }
    }

    /// Returns and clears the action log.
    pub fn take(&mut self) -> Vec<Action> {
        self.drain();
        std::mem::take(&mut self.log)
    }

    pub fn join(&mut self, n: u32) {
        self.cma.handle_hello(self.now, id(n), key(n), &hello(n)).unwrap();
        self.drain();
    }

    pub fn join_all(&mut self, ns: impl IntoIterator<Item = u32>) {
        for n in ns {
            self.join(n);
        }
    }

    pub fn report(&mut self, reporter: NodeId, kind: ReportKind, about: NodeId, silent_ms: u64) {
        let r = HeartbeatReport {
            kind: kind as i32,
            peer: about.as_bytes().to_vec(),
            peer_addr: String::new(),
            silent_ms,
            // A converged reporter reports under the newest epoch the CMA sent it.
            epoch: self.cma.node(reporter).map_or(0, |n| n.peer_epoch),
            at: 0,
        };
        self.cma.handle_report(self.now, reporter, &r);
        self.drain();
    }

    /// Moves virtual time to `t`, firing every timer on the way (bounded, to catch livelock).
    pub fn advance_to(&mut self, t: Timestamp) {
        for _ in 0..100_000 {
            match self.cma.poll_timeout() {
                Some(due) if due <= t => {
                    assert!(due >= self.now || due < t, "timer in the past must still fire");
                    self.now = due.max(self.now);
                    self.cma.handle_timeout(self.now);
                    self.drain();
                }
                _ => {
                    self.now = t;
                    return;
                }
            }
        }
        panic!("timers did not settle before {t:?}");
    }

    pub fn advance(&mut self, d: Duration) {
        self.advance_to(self.now + d);
    }

    /// Answers the latest probe the CMA sent `n` (as a live nanoprobe would). False if none.
    pub fn answer_probe(&mut self, n: NodeId) -> bool {
        self.drain();
        let nonce = self.log.iter().rev().find_map(|a| match a {
            Action::Probe { node, nonce, .. } if *node == n => Some(*nonce),
            _ => None,
        });
        let Some(nonce) = nonce else { return false };
        self.cma.handle_probe_reply(self.now, n, nonce);
        self.drain();
        true
    }

    pub fn state(&self, n: NodeId) -> NodeState {
        self.cma.node(n).unwrap().state
    }
}

pub fn events(actions: &[Action]) -> Vec<&Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e),
            _ => None,
        })
        .collect()
}

pub fn kinds(actions: &[Action]) -> Vec<EventKind> {
    events(actions).iter().map(|e| e.kind).collect()
}

pub fn sends(actions: &[Action]) -> Vec<(NodeId, &PeerSet)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendPeerSet { to, set, .. } => Some((*to, set)),
            _ => None,
        })
        .collect()
}

pub fn probes(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Probe { nonce, .. } => Some(*nonce),
            _ => None,
        })
        .collect()
}

/// Checks the ring invariants and that every record's peers match the ring.
pub fn check_ring(cma: &Cma) {
    let ring = cma.ring();
    let mut members: Vec<NodeId> =
        cma.nodes().filter(|n| n.state.in_ring()).map(|n| n.id).collect();
    let mut sorted = ring.clone();
    sorted.sort();
    members.sort();
    assert_eq!(sorted, members, "ring holds exactly the Up and Suspect nodes, once each");
    let n = ring.len();
    for (i, &x) in ring.iter().enumerate() {
        let nb = cma.neighbours(x);
        // Several home rings (issue 13): the order checks hold inside each home ring.
        let homes = cma.rings().home_rings().count();
        match if homes > 1 { usize::MAX } else { n } {
            usize::MAX => {
                let home = cma.rings().home_of(x).expect("a member has a home ring");
                let h = cma.rings().ring(home.as_str()).unwrap();
                for y in h.neighbours(x) {
                    assert!(nb.contains(&y), "home-ring neighbours are peers");
                }
                assert!(!nb.is_empty(), "no member is unwatched");
            }
            1 => assert!(nb.is_empty()),
            2 => assert_eq!(nb, vec![ring[1 - i]]),
            _ => {
                assert_eq!(nb.len(), 2, "two neighbours in a ring of {n}");
                assert_ne!(nb[0], nb[1]);
                assert_eq!(nb[0], ring[(i + n - 1) % n], "predecessor");
                assert_eq!(nb[1], ring[(i + 1) % n], "successor");
            }
        }
        for y in &nb {
            assert!(cma.neighbours(*y).contains(&x), "neighbour relation is symmetric");
        }
        let rec = cma.node(x).unwrap();
        let mut a = rec.peers.clone();
        let mut b = nb.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "record peers are the ring neighbours");
    }
    for rec in cma.nodes().filter(|n| !n.state.in_ring()) {
        assert!(rec.peers.is_empty(), "{} is {} but has peers", rec.hostname, rec.state);
        assert!(cma.neighbours(rec.id).is_empty());
    }
}
