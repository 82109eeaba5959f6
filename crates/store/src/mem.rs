//! [`MemStore`]: the engine's store and the join tokens in memory (the simulator, tests).

use std::collections::BTreeMap;

use assim_cma::ring::{RingKey, RingRecord};
use assim_cma::wiring::NodeWiring;
use assim_cma::{Change, Event, NodeRecord, Snapshot};
use assim_wire::NodeId;

use crate::batch::{DiscoveryRecord, InboxProgress, TokenRecord};
use crate::desired::{SOCKETS, StoredDesired};
use crate::engine::{EngineStore, Loaded, StoreFailed, Tokens};
use crate::services::{
    CheckSetRecord, ManualChange, ManualCheck, RememberedService, ServiceStateRecord,
};
use assim_cma::schedule::StoredSchedule;

/// An [`EngineStore`] and [`Tokens`] in memory: the simulator's store, and tests'.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub ring: Vec<NodeId>,
    pub next_epoch: u64,
    pub next_event_id: u64,
    pub position: u64,
    pub applied: BTreeMap<NodeId, u64>,
    /// Per node, the spool incarnation (issue 16 item 9).
    pub incarnations: BTreeMap<NodeId, u64>,
    pub events: u64,
    pub discovery: BTreeMap<(NodeId, String), DiscoveryRecord>,
    pub tokens: BTreeMap<[u8; 16], TokenRecord>,
    /// The discovery schedule last decided.
    pub schedule: Option<StoredSchedule>,
    pub check_sets: BTreeMap<NodeId, CheckSetRecord>,
    /// The last state per (node, check); `since` is kept while the state stays the same.
    pub states: BTreeMap<(NodeId, String), ServiceStateRecord>,
    pub manual: BTreeMap<(NodeId, String), ManualCheck>,
    pub remembered: BTreeMap<NodeId, Vec<RememberedService>>,
    /// Each node's wiring (its ring and what it was derived from).
    pub wiring: BTreeMap<NodeId, NodeWiring>,
    /// Each ring's last written description (members, representatives, watchers).
    pub rings: BTreeMap<RingKey, RingRecord>,
    /// Nodes whose `host.new` is not raised yet → its deadline (µs).
    pub host_new: BTreeMap<NodeId, u64>,
    /// The statistics queue for Graphite: (id, point), oldest first; its cap (0: the default)
    /// and the points dropped beyond it.
    pub statistics: std::collections::VecDeque<(u64, assim_cma::statistics::StatPoint)>,
    pub statistics_cap: u64,
    pub statistics_dropped: u64,
    /// The last id given to a queued point (ids are never reused).
    pub statistics_last_id: u64,
    /// How many batches were applied.
    pub batches: u64,
    /// When set, the next `n` batches fail (fault injection).
    pub fail_next: u32,
}

impl MemStore {
    /// What [`EngineStore::load`] would return.
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

impl EngineStore for MemStore {
    fn load(&mut self) -> Result<Loaded, StoreFailed> {
        // Each node's latest payload of one collector.
        let latest = |name: &str| -> Vec<(NodeId, String)> {
            self.discovery
                .values()
                .filter(|d| d.name == name)
                .map(|d| (d.node, d.payload.clone()))
                .collect()
        };
        Ok(Loaded {
            snapshot: self.snapshot(),
            position: self.position,
            applied: self.applied.clone(),
            incarnations: self.incarnations.clone(),
            desired: crate::desired::snapshot(StoredDesired {
                schedule: self.schedule.clone(),
                check_sets: self.check_sets.values().cloned().collect(),
                states: self.states.values().cloned().collect(),
                manual: self.manual.values().cloned().collect(),
                remembered: self.remembered.iter().map(|(n, l)| (*n, l.clone())).collect(),
                sockets: latest(SOCKETS),
                host_keys: latest(assim_cma::host_keys::COLLECTOR),
                security: latest(assim_cma::audit_watch::COLLECTOR),
                host_new: self
                    .host_new
                    .iter()
                    .map(|(node, due_at)| {
                        let payload = |name: &str| {
                            self.discovery.get(&(*node, name.to_owned())).map(|d| d.payload.clone())
                        };
                        assim_cma::host_new::StoredWaiting {
                            node: *node,
                            due_at: *due_at,
                            os: payload("os"),
                            ssh_host_keys: payload("ssh_host_keys"),
                        }
                    })
                    .collect(),
            }),
        })
    }

    fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), StoreFailed> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(StoreFailed("injected store failure".into()));
        }
        for c in changes {
            match c {
                Change::Node(rec) => {
                    self.nodes.insert(rec.id, rec.clone());
                }
                Change::Ring(order) => self.ring = order.clone(),
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
        self.events += events.len() as u64;
        if let Some(p) = progress.position {
            self.position = p;
        }
        for (node, (through, _)) in &progress.applied {
            self.applied.insert(*node, *through);
        }
        for (node, inc) in &progress.incarnations {
            self.incarnations.insert(*node, inc.incarnation);
            if inc.reset {
                let through = progress.applied.get(node).map_or(0, |a| a.0);
                self.applied.insert(*node, through);
            }
        }
        for d in &progress.discovery {
            self.discovery.insert((d.node, d.name.clone()), d.clone());
        }
        if let Some(s) = &progress.schedule {
            self.schedule = Some(s.clone());
        }
        for c in &progress.host_new {
            match c {
                assim_cma::host_new::HostNewChange::Waiting { node, due_at } => {
                    self.host_new.insert(*node, *due_at);
                }
                assim_cma::host_new::HostNewChange::Raised(node) => {
                    self.host_new.remove(node);
                }
            }
        }
        let b = &progress.services;
        for c in &b.check_sets {
            self.check_sets.insert(c.node, c.clone());
            let names: Vec<&str> = c.checks.iter().map(|k| k.name.as_str()).collect();
            self.states.retain(|(n, k), _| *n != c.node || names.contains(&k.as_str()));
        }
        for st in &b.states {
            let key = (st.node, st.check.clone());
            let mut st = st.clone();
            if let Some(old) = self.states.get(&key).filter(|o| o.state == st.state) {
                st.since = old.since;
            }
            self.states.insert(key, st);
        }
        for m in &b.manual {
            match m {
                ManualChange::Put(m) => {
                    self.manual.insert((m.node, m.check.name.clone()), m.clone());
                }
                ManualChange::Remove { node, name } => {
                    self.manual.remove(&(*node, name.clone()));
                }
            }
        }
        for (node, list) in &b.remembered {
            if list.is_empty() {
                self.remembered.remove(node);
            } else {
                self.remembered.insert(*node, list.clone());
            }
        }
        for p in &progress.statistics {
            self.statistics_last_id += 1;
            self.statistics.push_back((self.statistics_last_id, p.clone()));
        }
        let cap = match self.statistics_cap {
            0 => crate::statistics::DEFAULT_QUEUE_MAX,
            n => n,
        };
        while self.statistics.len() as u64 > cap {
            self.statistics.pop_front();
            self.statistics_dropped += 1;
        }
        self.batches += 1;
        Ok(())
    }
}

impl crate::StatisticsOutbox for MemStore {
    fn oldest(&mut self, limit: usize) -> Result<Vec<crate::QueuedPoint>, crate::QueryError> {
        Ok(self
            .statistics
            .iter()
            .take(limit)
            .map(|(id, p)| crate::QueuedPoint { id: *id, point: p.clone() })
            .collect())
    }

    fn remove_through(&mut self, id: u64) -> Result<(), crate::QueryError> {
        while self.statistics.front().is_some_and(|(i, _)| *i <= id) {
            self.statistics.pop_front();
        }
        Ok(())
    }

    fn state(&mut self) -> Result<crate::OutboxState, crate::QueryError> {
        Ok(crate::OutboxState {
            queued: self.statistics.len() as u64,
            dropped: self.statistics_dropped,
        })
    }
}

impl Tokens for MemStore {
    fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, StoreFailed> {
        Ok(<[u8; 16]>::try_from(id).ok().and_then(|id| self.tokens.get(&id).cloned()))
    }

    fn use_token(&mut self, id: &[u8]) -> Result<(), StoreFailed> {
        if let Some(t) = <[u8; 16]>::try_from(id).ok().and_then(|id| self.tokens.get_mut(&id)) {
            t.uses += 1;
        }
        Ok(())
    }

    fn registered_key(&self, node: NodeId) -> Result<Option<[u8; 32]>, StoreFailed> {
        Ok(self.nodes.get(&node).map(|n| n.public_key))
    }
}
