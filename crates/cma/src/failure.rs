//! The failure-disambiguation FSM: suspicions, their probes and their deadlines.
//!
//! ```text
//! UP --dead report (neighbour A)------------------> SUSPECT{reporters={A}, deadline=now+2*interval}
//!                                                   probe now, then every interval/2
//! SUSPECT --dead report (neighbour C != A)--------> DOWN            (unless alive was proven)
//! SUSPECT --deadline, alive proven----------------> UP + path.suspect(A -> B)
//! SUSPECT --deadline, no proof of life------------> DOWN            (the CMA's own probe failed)
//! SUSPECT --back-alive from every reporter--------> UP              (host.up, reason=resumed)
//! ```
//!
//! Proof of life is a probe reply carrying a nonce issued for this suspicion, any other
//! authenticated message from the node, or a neighbour that is not a reporter hearing its
//! heartbeats (back-alive, martian). Once alive is proven the CMA stops probing, and a second
//! dead report no longer makes the node Down: two neighbours that cannot hear a node the CMA can
//! reach is path trouble, decided at the deadline.
//!
//! This module only keeps suspicions and their timers; [`crate::Cma`] applies the lifecycle
//! consequences (state, ring, events). Timers live in one `BTreeSet<(wake, node)>`, so finding
//! the next deadline is O(log n) and nothing scans every node.

use std::collections::{BTreeMap, BTreeSet};

use assim_wire::{NodeId, Timestamp};

use crate::model::{Timing, probe_every, suspect_window};

/// The most nonces remembered per suspicion (2×interval / (interval/2) + 1 = 5 with the default
/// schedule; the bound only matters for odd timings).
const MAX_NONCES: usize = 8;

/// What showed that a suspect node is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliveProof {
    /// It answered the CMA's probe.
    ProbeReply,
    /// It sent the CMA an authenticated message.
    Message,
    /// A neighbour other than the reporters hears its heartbeats.
    HeardBy(NodeId),
}

/// One open suspicion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspicion {
    /// Distinct neighbours that reported the node dead, in report order. Empty for a
    /// suspicion restored after a CMA restart until a new report arrives.
    pub reporters: Vec<NodeId>,
    /// The longest silence any reporter stated, in ms.
    pub silent_ms: u64,
    pub started: Timestamp,
    pub deadline: Timestamp,
    /// When the next probe is due; `None` once probing stopped.
    next_probe: Option<Timestamp>,
    /// Nonces issued for this suspicion.
    nonces: Vec<u64>,
    /// The first proof of life, if any.
    pub alive: Option<AliveProof>,
    /// Restored from a snapshot rather than started by a report.
    pub restored: bool,
}

impl Suspicion {
    fn wake(&self) -> Timestamp {
        self.next_probe.map_or(self.deadline, |p| p.min(self.deadline))
    }
}

/// Result of a dead report about a node that is already suspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadOutcome {
    /// The reporter had already reported; nothing changed.
    Repeated,
    /// A second neighbour confirms and nothing proved the node alive: it is down. The
    /// suspicion is closed and returned by [`Suspicions::report_dead`].
    Confirmed,
    /// Another reporter, but the node was proven alive: recorded, decided at the deadline.
    Recorded,
}

/// Result of a neighbour hearing a suspect node's heartbeats again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// Every reporter hears it again: the suspicion is closed.
    Cleared,
    /// Counted as proof of life; other reporters still cannot hear it.
    ProofOfLife,
}

/// Work that fell due at [`Suspicions::poll_due`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send another probe with this nonce.
    Probe { node: NodeId, nonce: u64 },
    /// The deadline passed: decide. The suspicion is closed.
    Decide { node: NodeId, suspicion: Suspicion },
}

/// Every open suspicion and its timer.
#[derive(Clone, Debug)]
pub struct Suspicions {
    by_node: BTreeMap<NodeId, Suspicion>,
    timers: BTreeSet<(Timestamp, NodeId)>,
    next_nonce: u64,
}

impl Suspicions {
    /// No suspicions; nonces count up from `nonce_base` (the core passes its start time in µs so
    /// nonces of an earlier incarnation do not match).
    pub fn new(nonce_base: u64) -> Self {
        Suspicions { by_node: BTreeMap::new(), timers: BTreeSet::new(), next_nonce: nonce_base }
    }

    pub fn get(&self, node: NodeId) -> Option<&Suspicion> {
        self.by_node.get(&node)
    }

    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// The earliest timer.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.timers.first().map(|t| t.0)
    }

    fn issue_nonce(&mut self) -> u64 {
        let n = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        n
    }

    /// Opens a suspicion (replacing none: the caller checks the node is not suspect) and issues
    /// the first probe's nonce.
    pub fn start(
        &mut self,
        node: NodeId,
        reporter: Option<NodeId>,
        silent_ms: u64,
        now: Timestamp,
        timing: &Timing,
    ) -> u64 {
        self.cancel(node);
        let nonce = self.issue_nonce();
        let deadline = now + suspect_window(timing);
        let next = now + probe_every(timing);
        let s = Suspicion {
            reporters: reporter.into_iter().collect(),
            silent_ms,
            started: now,
            deadline,
            next_probe: (next < deadline).then_some(next),
            nonces: vec![nonce],
            alive: None,
            restored: reporter.is_none(),
        };
        self.timers.insert((s.wake(), node));
        self.by_node.insert(node, s);
        nonce
    }

    /// Closes a suspicion without deciding (hello, goodbye, heartbeats resumed).
    pub fn cancel(&mut self, node: NodeId) -> Option<Suspicion> {
        let s = self.by_node.remove(&node)?;
        self.timers.remove(&(s.wake(), node));
        Some(s)
    }

    /// A dead report about a suspect node. `None` if the node is not suspect.
    pub fn report_dead(
        &mut self,
        node: NodeId,
        reporter: NodeId,
        silent_ms: u64,
    ) -> Option<(DeadOutcome, Option<Suspicion>)> {
        let s = self.by_node.get_mut(&node)?;
        if s.reporters.contains(&reporter) {
            return Some((DeadOutcome::Repeated, None));
        }
        s.reporters.push(reporter);
        s.silent_ms = s.silent_ms.max(silent_ms);
        if s.alive.is_some() {
            return Some((DeadOutcome::Recorded, None));
        }
        // A restored suspicion lost its first reporter; the first report after the restart
        // takes its place rather than confirming.
        if s.reporters.len() < 2 {
            return Some((DeadOutcome::Recorded, None));
        }
        Some((DeadOutcome::Confirmed, self.cancel(node)))
    }

    /// Records proof of life and stops probing. False if the node is not suspect.
    pub fn proof_of_life(&mut self, node: NodeId, proof: AliveProof) -> bool {
        let Some(s) = self.by_node.get_mut(&node) else { return false };
        if s.alive.is_none() {
            s.alive = Some(proof);
        }
        if s.next_probe.is_some() {
            let old = s.wake();
            s.next_probe = None;
            let new = s.wake();
            self.timers.remove(&(old, node));
            self.timers.insert((new, node));
        }
        true
    }

    /// Whether `nonce` was issued for the node's current suspicion.
    pub fn nonce_matches(&self, node: NodeId, nonce: u64) -> bool {
        self.by_node.get(&node).is_some_and(|s| s.nonces.contains(&nonce))
    }

    /// `reporter` hears the suspect node's heartbeats again. `None` if the node is not suspect.
    pub fn withdraw(&mut self, node: NodeId, reporter: NodeId) -> Option<Withdrawal> {
        let s = self.by_node.get_mut(&node)?;
        let was_reporter = s.reporters.contains(&reporter);
        s.reporters.retain(|r| *r != reporter);
        if s.reporters.is_empty() && (was_reporter || s.restored) {
            self.cancel(node);
            return Some(Withdrawal::Cleared);
        }
        self.proof_of_life(node, AliveProof::HeardBy(reporter));
        Some(Withdrawal::ProofOfLife)
    }

    /// Pops the next piece of work due at `now`, if any. Call until `None`.
    pub fn poll_due(&mut self, now: Timestamp, timing: &Timing) -> Option<Due> {
        let &(wake, node) = self.timers.first()?;
        if wake > now {
            return None;
        }
        self.timers.pop_first();
        let s = self.by_node.get(&node).expect("every timer belongs to a suspicion");
        if now >= s.deadline {
            let suspicion = self.by_node.remove(&node).expect("present");
            return Some(Due::Decide { node, suspicion });
        }
        let nonce = self.issue_nonce();
        let s = self.by_node.get_mut(&node).expect("present");
        if s.nonces.len() == MAX_NONCES {
            s.nonces.remove(0);
        }
        s.nonces.push(nonce);
        let next = s.next_probe.unwrap_or(now).max(now) + probe_every(timing);
        s.next_probe = (next < s.deadline).then_some(next);
        self.timers.insert((s.wake(), node));
        Some(Due::Probe { node, nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn drain(s: &mut Suspicions, now: Timestamp, t: &Timing) -> Vec<Due> {
        std::iter::from_fn(|| s.poll_due(now, t)).collect()
    }

    #[test]
    fn probes_every_half_interval_until_the_deadline() {
        let t = Timing::default();
        let mut s = Suspicions::new(100);
        let t0 = Timestamp(1_000_000);
        assert_eq!(s.start(id(2), Some(id(1)), 5000, t0, &t), 100);
        let mut probes = 1;
        let now = loop {
            let now = s.next_wake().unwrap();
            match drain(&mut s, now, &t).as_slice() {
                [Due::Probe { nonce, .. }] => {
                    probes += 1;
                    assert!(s.nonce_matches(id(2), *nonce));
                }
                [Due::Decide { suspicion, .. }] => {
                    assert_eq!(suspicion.deadline, t0 + Duration::from_secs(2));
                    break now;
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(now, t0 + Duration::from_secs(2));
        assert_eq!(probes, 4, "at 0, 0.5, 1.0 and 1.5 s");
        assert!(s.is_empty() && s.next_wake().is_none());
    }

    #[test]
    fn second_reporter_confirms_unless_alive() {
        let t = Timing::default();
        let mut s = Suspicions::new(0);
        s.start(id(2), Some(id(1)), 5000, Timestamp(0), &t);
        assert_eq!(s.report_dead(id(2), id(1), 6000).unwrap().0, DeadOutcome::Repeated);
        let (o, closed) = s.report_dead(id(2), id(3), 5500).unwrap();
        assert_eq!(o, DeadOutcome::Confirmed);
        assert_eq!(closed.unwrap().reporters, vec![id(1), id(3)]);
        assert!(s.next_wake().is_none());

        s.start(id(2), Some(id(1)), 5000, Timestamp(0), &t);
        assert!(s.proof_of_life(id(2), AliveProof::ProbeReply));
        assert_eq!(s.report_dead(id(2), id(3), 5500).unwrap().0, DeadOutcome::Recorded);
        assert_eq!(s.next_wake(), Some(Timestamp(2_000_000)), "probing stopped");
    }

    #[test]
    fn withdrawal_by_every_reporter_clears() {
        let t = Timing::default();
        let mut s = Suspicions::new(0);
        s.start(id(2), Some(id(1)), 5000, Timestamp(0), &t);
        assert_eq!(s.withdraw(id(2), id(3)), Some(Withdrawal::ProofOfLife));
        assert_eq!(s.withdraw(id(2), id(1)), Some(Withdrawal::Cleared));
        assert!(s.get(id(2)).is_none() && s.next_wake().is_none());
        assert_eq!(s.withdraw(id(2), id(1)), None);
    }
}
