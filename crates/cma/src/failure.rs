//! The failure-disambiguation FSM: suspicions, their probes and their deadlines.
//!
//! ```text
//! UP --dead report (neighbour A)------------------> SUSPECT{reporters={A}, deadline=now+2*interval}
//!                                                   probe now, then every interval/2
//! SUSPECT --dead report (neighbour C != A)--------> DOWN            (unless alive was proven;
//!                                                   once the CMA's first probe has gone
//!                                                   unanswered for interval/2)
//! SUSPECT --deadline, alive proven----------------> UP + path.suspect(A -> B)
//! SUSPECT --deadline, no proof of life------------> DOWN            (the CMA's own probe failed)
//! SUSPECT --back-alive from every reporter--------> UP              (host.up, reason=resumed)
//! ```
//!
//! Proof of life is a probe reply carrying a nonce issued for this suspicion, any other
//! authenticated message from the node, or a neighbour that is not a reporter hearing its
//! heartbeats (back-alive, martian, a peer status saying alive). Once alive is proven the CMA
//! stops probing, and a second dead report no longer makes the node Down: two neighbours that
//! cannot hear a node the CMA can reach is path trouble, decided at the deadline.
//!
//! **Ordering evidence** (issue 16 item 0). Reports can be old when they arrive: a nanoprobe
//! spools them while the CMA is down and they are replayed after its restart, each reporter's
//! stream in its own order. So the suspicion keeps every witness's *latest word* about the node
//! ([`Word`]: dead, late or alive, with the reporter's epoch and its own clock `at`):
//! - a witness's word replaces its previous one unless it is older (smaller epoch, or the same
//!   epoch and an earlier `at`; words without `at`, from older nanoprobes, count in arrival
//!   order, which is the reporter's spool order);
//! - a neighbour's "heard it" counts as proof of life only while it is that neighbour's latest
//!   word, and only if it is newer than the silence it would contradict: its `at` after every
//!   reporter's silence start (`at - silent_ms` in the reporter's clock), when both are known.
//!   A neighbour that said "alive" and then "late" or "dead" has withdrawn its proof;
//! - when every proof is withdrawn the CMA probes again, and decides at the deadline on its own
//!   probe: a host is never left up when every neighbour and the CMA's probe say otherwise.
//!
//! Probe replies and the node's own messages are the CMA's first-hand evidence and are never
//! withdrawn.
//!
//! **The CMA's own probe decides** (issue 16 item 4). Two neighbours' dead words are not enough
//! on their own: the node goes down only once the CMA's first probe has gone unanswered for
//! [`probe_every`] (half an interval). Two colluding neighbours can therefore not take down a
//! host the CMA can reach; a second report that arrives sooner arms a confirmation timer.
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
    /// A nanoprobe on another switch that the CMA asked to probe it got an answer
    /// (`ProbeResult`, issue 13). First-hand like a probe reply: the CMA asked for it.
    PeerProbe(NodeId),
}

/// What a witness last said about a suspect node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saw {
    /// No heartbeats for at least the dead time.
    Dead,
    /// No heartbeats for at least the warn time.
    Late,
    /// Its heartbeats arrive (back-alive, martian, peer status "alive").
    Alive,
}

/// One witness's word about a node, stamped with the witness's own epoch and clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Word {
    pub saw: Saw,
    /// The witness's peer-set epoch when it made the observation.
    pub epoch: u64,
    /// When it made the observation, µs since the Unix epoch in the witness's clock; 0 if the
    /// nanoprobe did not say (older versions).
    pub at: u64,
    /// For `Dead` and `Late`: how long the node had been silent, in ms.
    pub silent_ms: u64,
}

impl Word {
    /// A word without the witness's time (ordered by arrival).
    pub fn untimed(saw: Saw, epoch: u64, silent_ms: u64) -> Word {
        Word { saw, epoch, at: 0, silent_ms }
    }

    /// When the silence this word reports began, in the witness's clock, if known (a peer
    /// status says "dead" without saying for how long: unknown).
    pub fn silent_since(&self) -> Option<u64> {
        (self.at > 0 && self.silent_ms > 0 && self.saw != Saw::Alive)
            .then(|| self.at.saturating_sub(self.silent_ms.saturating_mul(1000)))
    }

    /// Whether this word was made before `other`, by the same witness.
    pub fn older_than(&self, other: &Word) -> bool {
        if self.epoch != other.epoch {
            return self.epoch < other.epoch;
        }
        self.at > 0 && other.at > 0 && self.at < other.at
    }
}

/// One open suspicion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspicion {
    /// Distinct neighbours whose latest word is "dead", in report order. Empty for a suspicion
    /// restored after a CMA restart until a new report arrives.
    pub reporters: Vec<NodeId>,
    /// The longest silence any reporter stated, in ms.
    pub silent_ms: u64,
    pub started: Timestamp,
    pub deadline: Timestamp,
    /// When the next probe is due; `None` once probing stopped.
    next_probe: Option<Timestamp>,
    /// Nonces issued for this suspicion.
    nonces: Vec<u64>,
    /// The current proof of life, if any: the first-hand one, else the first neighbour whose
    /// latest word still proves it.
    pub alive: Option<AliveProof>,
    /// Restored from a snapshot rather than started by a report.
    pub restored: bool,
    /// When the first probe has gone unanswered long enough to confirm a corroborated
    /// suspicion.
    probe_failed_at: Timestamp,
    /// Two reporters and no proof of life before `probe_failed_at`: decide then.
    confirm_pending: bool,
    /// A probe reply or a message from the node itself (never withdrawn).
    first_hand: Option<AliveProof>,
    /// Neighbours whose "alive" counted, in arrival order (valid while their latest word).
    heard_by: Vec<NodeId>,
    /// Each witness's latest word.
    words: BTreeMap<NodeId, Word>,
}

impl Suspicion {
    fn wake(&self) -> Timestamp {
        let wake = self.next_probe.map_or(self.deadline, |p| p.min(self.deadline));
        if self.confirm_pending { wake.min(self.probe_failed_at) } else { wake }
    }

    /// Corroborated by two reporters with nothing proving the node alive.
    fn corroborated(&self) -> bool {
        self.alive.is_none() && self.reporters.len() >= 2
    }

    /// Each witness's latest word about the node.
    pub fn words(&self) -> &BTreeMap<NodeId, Word> {
        &self.words
    }

    /// Whether `w`'s "alive" is newer than every reporter's silence it would contradict.
    fn contradicts_silence(&self, w: &Word) -> bool {
        if w.at == 0 {
            return true;
        }
        self.reporters
            .iter()
            .filter_map(|r| self.words.get(r).and_then(Word::silent_since))
            .all(|since| w.at > since)
    }

    /// Recomputes `alive` from the first-hand proof and the neighbours' latest words.
    fn refresh_alive(&mut self) {
        let heard = self.heard_by.iter().copied().find(|n| {
            self.words.get(n).is_some_and(|w| w.saw == Saw::Alive && self.contradicts_silence(w))
        });
        self.alive = self.first_hand.or(heard.map(AliveProof::HeardBy));
    }
}

/// What a witness's word did to a suspicion ([`Suspicions::witness`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Witnessed {
    /// Older than what this witness said before, or an "alive" older than the silence it would
    /// contradict: ignored.
    Stale,
    /// The witness had already reported it dead; nothing changed.
    Repeated,
    /// A second neighbour confirms, nothing proves the node alive and the CMA's first probe
    /// has gone unanswered: it is down. The suspicion is closed and returned.
    Confirmed(Suspicion),
    /// Recorded; decided later (another reporter while alive is proven, the first report
    /// after a restart, a late word).
    Recorded,
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
    /// A corroborated suspicion's first probe went unanswered: down, as
    /// [`Witnessed::Confirmed`]. The suspicion is closed.
    Confirmed { node: NodeId, suspicion: Suspicion },
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

    /// Opens a suspicion (replacing any) on `first`'s dead word, or restored after a restart
    /// when `None`, and issues the first probe's nonce.
    pub fn start(
        &mut self,
        node: NodeId,
        first: Option<(NodeId, Word)>,
        now: Timestamp,
        timing: &Timing,
    ) -> u64 {
        self.cancel(node);
        let nonce = self.issue_nonce();
        let deadline = now + suspect_window(timing);
        let next = now + probe_every(timing);
        let s = Suspicion {
            reporters: first.iter().map(|f| f.0).collect(),
            silent_ms: first.map_or(0, |f| f.1.silent_ms),
            started: now,
            deadline,
            next_probe: (next < deadline).then_some(next),
            nonces: vec![nonce],
            alive: None,
            restored: first.is_none(),
            probe_failed_at: now + probe_every(timing),
            confirm_pending: false,
            first_hand: None,
            heard_by: Vec::new(),
            words: first.into_iter().collect(),
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

    /// A witness's word about a suspect node. `None` if the node is not suspect.
    ///
    /// `Dead` and `Late` words come from ring neighbours, `Alive` ones from neighbours
    /// (back-alive, peer status) or, with `martian`, from any active node that heard it.
    pub fn witness(
        &mut self,
        node: NodeId,
        who: NodeId,
        word: Word,
        martian: bool,
        now: Timestamp,
    ) -> Option<Witnessed> {
        let s = self.by_node.get_mut(&node)?;
        let old_wake = s.wake();
        if s.words.get(&who).is_some_and(|old| word.older_than(old)) {
            return Some(Witnessed::Stale);
        }
        let outcome = match word.saw {
            Saw::Dead => {
                if s.reporters.contains(&who) {
                    return Some(Witnessed::Repeated);
                }
                s.words.insert(who, word);
                s.reporters.push(who);
                s.silent_ms = s.silent_ms.max(word.silent_ms);
                s.refresh_alive();
                // A restored suspicion lost its first reporter; the first report after the
                // restart takes its place rather than confirming.
                if !s.corroborated() {
                    Witnessed::Recorded
                } else if now >= s.probe_failed_at {
                    let closed = self.cancel(node).expect("present");
                    return Some(Witnessed::Confirmed(closed));
                } else {
                    s.confirm_pending = true;
                    Witnessed::Recorded
                }
            }
            Saw::Late => {
                s.words.insert(who, word);
                s.refresh_alive();
                Witnessed::Recorded
            }
            Saw::Alive => {
                if !s.contradicts_silence(&word) {
                    return Some(Witnessed::Stale);
                }
                s.words.insert(who, word);
                let was_reporter = s.reporters.contains(&who);
                if !martian {
                    s.reporters.retain(|r| *r != who);
                    if s.reporters.is_empty() && (was_reporter || s.restored) {
                        self.cancel(node);
                        return Some(Witnessed::Cleared);
                    }
                }
                if !s.heard_by.contains(&who) {
                    s.heard_by.push(who);
                }
                s.refresh_alive();
                Witnessed::ProofOfLife
            }
        };
        self.retime(node, old_wake, now);
        Some(outcome)
    }

    /// Records first-hand proof of life (a probe reply, a message from the node) and stops
    /// probing. False if the node is not suspect. (A neighbour's word goes through
    /// [`Suspicions::witness`]; given here, it is recorded as its "alive" without a time.)
    pub fn proof_of_life(&mut self, node: NodeId, proof: AliveProof) -> bool {
        let Some(s) = self.by_node.get_mut(&node) else { return false };
        let old_wake = s.wake();
        match proof {
            AliveProof::HeardBy(n) => {
                s.words.insert(n, Word::untimed(Saw::Alive, 0, 0));
                if !s.heard_by.contains(&n) {
                    s.heard_by.push(n);
                }
            }
            first_hand => {
                s.first_hand.get_or_insert(first_hand);
            }
        }
        s.refresh_alive();
        let now = s.started;
        self.retime(node, old_wake, now);
        true
    }

    /// Probing stops while alive is proven and resumes (at `now`) when the proof is withdrawn;
    /// moves the node's timer to match.
    fn retime(&mut self, node: NodeId, old_wake: Timestamp, now: Timestamp) {
        let s = self.by_node.get_mut(&node).expect("present");
        if s.alive.is_some() {
            s.next_probe = None;
        } else if s.next_probe.is_none() && now < s.deadline {
            s.next_probe = Some(now);
        }
        let new_wake = s.wake();
        if new_wake != old_wake {
            self.timers.remove(&(old_wake, node));
            self.timers.insert((new_wake, node));
        }
    }

    /// Whether `nonce` was issued for the node's current suspicion.
    pub fn nonce_matches(&self, node: NodeId, nonce: u64) -> bool {
        self.by_node.get(&node).is_some_and(|s| s.nonces.contains(&nonce))
    }

    /// Pops the next piece of work due at `now`, if any. Call until `None`.
    pub fn poll_due(&mut self, now: Timestamp, timing: &Timing) -> Option<Due> {
        let &(wake, node) = self.timers.first()?;
        if wake > now {
            return None;
        }
        self.timers.pop_first();
        let s = self.by_node.get_mut(&node).expect("every timer belongs to a suspicion");
        if now >= s.deadline {
            let suspicion = self.by_node.remove(&node).expect("present");
            return Some(Due::Decide { node, suspicion });
        }
        if s.confirm_pending && now >= s.probe_failed_at {
            s.confirm_pending = false;
            if s.corroborated() {
                let suspicion = self.by_node.remove(&node).expect("present");
                return Some(Due::Confirmed { node, suspicion });
            }
            if s.next_probe.is_none_or(|p| p > now) {
                self.timers.insert((s.wake(), node));
                return self.poll_due(now, timing);
            }
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

    fn dead(silent_ms: u64) -> Word {
        Word::untimed(Saw::Dead, 1, silent_ms)
    }

    fn alive() -> Word {
        Word::untimed(Saw::Alive, 1, 0)
    }

    fn drain(s: &mut Suspicions, now: Timestamp, t: &Timing) -> Vec<Due> {
        std::iter::from_fn(|| s.poll_due(now, t)).collect()
    }

    #[test]
    fn probes_every_half_interval_until_the_deadline() {
        let t = Timing::default();
        let mut s = Suspicions::new(100);
        let t0 = Timestamp(1_000_000);
        assert_eq!(s.start(id(2), Some((id(1), dead(5000))), t0, &t), 100);
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
        let now = Timestamp(0);
        let mut s = Suspicions::new(0);
        s.start(id(2), Some((id(1), dead(5000))), now, &t);
        assert_eq!(s.witness(id(2), id(1), dead(6000), false, now), Some(Witnessed::Repeated));
        let later = now + probe_every(&t);
        let Some(Witnessed::Confirmed(closed)) = s.witness(id(2), id(3), dead(5500), false, later)
        else {
            panic!("not confirmed")
        };
        assert_eq!(closed.reporters, vec![id(1), id(3)]);
        assert!(s.next_wake().is_none());

        s.start(id(2), Some((id(1), dead(5000))), now, &t);
        assert!(s.proof_of_life(id(2), AliveProof::ProbeReply));
        assert_eq!(s.witness(id(2), id(3), dead(5500), false, now), Some(Witnessed::Recorded));
        assert_eq!(s.next_wake(), Some(Timestamp(2_000_000)), "probing stopped");
    }

    #[test]
    fn withdrawal_by_every_reporter_clears() {
        let t = Timing::default();
        let now = Timestamp(0);
        let mut s = Suspicions::new(0);
        s.start(id(2), Some((id(1), dead(5000))), now, &t);
        assert_eq!(s.witness(id(2), id(3), alive(), false, now), Some(Witnessed::ProofOfLife));
        assert_eq!(s.witness(id(2), id(1), alive(), false, now), Some(Witnessed::Cleared));
        assert!(s.get(id(2)).is_none() && s.next_wake().is_none());
        assert_eq!(s.witness(id(2), id(1), alive(), false, now), None);
    }

    #[test]
    fn a_neighbour_that_heard_it_and_then_reports_it_dead_withdraws_its_proof() {
        let t = Timing::default();
        let t0 = Timestamp(1_000_000);
        let mut s = Suspicions::new(0);
        s.start(id(2), Some((id(1), dead(5000))), t0, &t);
        // Neighbour 3's old "alive" arrives first (spool order), then its "dead".
        assert_eq!(s.witness(id(2), id(3), alive(), false, t0), Some(Witnessed::ProofOfLife));
        assert_eq!(s.get(id(2)).unwrap().alive, Some(AliveProof::HeardBy(id(3))));
        assert_eq!(s.witness(id(2), id(3), dead(5000), false, t0), Some(Witnessed::Recorded));
        let due = drain(&mut s, t0 + probe_every(&t), &t);
        let [Due::Confirmed { suspicion: c, .. }] = &due[..] else {
            panic!("two neighbours say dead and nothing else proves it alive: {due:?}")
        };
        assert_eq!(c.alive, None);
    }

    #[test]
    fn item_4_two_neighbours_cannot_take_down_a_host_that_answers_the_cma() {
        let t = Timing::default();
        let t0 = Timestamp(1_000_000);
        let mut s = Suspicions::new(0);
        // Two (colluding) neighbours say dead at once; the CMA's probe went out at t0.
        s.start(id(2), Some((id(1), dead(5000))), t0, &t);
        assert_eq!(s.witness(id(2), id(3), dead(5000), false, t0), Some(Witnessed::Recorded));
        assert_eq!(s.next_wake(), Some(t0 + probe_every(&t)), "decides when the probe has failed");
        // The host answers the probe in time: not down, and decided at the deadline as alive.
        assert!(s.proof_of_life(id(2), AliveProof::ProbeReply));
        let due = drain(&mut s, t0 + probe_every(&t), &t);
        assert!(due.is_empty(), "{due:?}");
        let due = drain(&mut s, t0 + suspect_window(&t), &t);
        let [Due::Decide { suspicion, .. }] = &due[..] else { panic!("{due:?}") };
        assert_eq!(suspicion.alive, Some(AliveProof::ProbeReply));
        // Without an answer, the same two words take it down once the probe has failed.
        s.start(id(2), Some((id(1), dead(5000))), t0, &t);
        s.witness(id(2), id(3), dead(5000), false, t0);
        assert!(drain(&mut s, t0 + probe_every(&t) - Duration::from_millis(1), &t).is_empty());
        let due = drain(&mut s, t0 + probe_every(&t), &t);
        assert!(matches!(&due[..], [Due::Confirmed { .. }]), "{due:?}");
    }

    #[test]
    fn a_late_word_withdraws_a_proof_and_probing_resumes() {
        let t = Timing::default();
        let t0 = Timestamp(1_000_000);
        let mut s = Suspicions::new(0);
        s.start(id(2), Some((id(1), dead(5000))), t0, &t);
        s.witness(id(2), id(3), alive(), false, t0);
        assert_eq!(s.next_wake(), Some(t0 + Duration::from_secs(2)), "probing stopped");
        let t1 = t0 + Duration::from_millis(300);
        let late = Word::untimed(Saw::Late, 1, 3000);
        assert_eq!(s.witness(id(2), id(3), late, false, t1), Some(Witnessed::Recorded));
        assert_eq!(s.get(id(2)).unwrap().alive, None);
        assert_eq!(s.next_wake(), Some(t1), "probing resumes at once");
        assert!(matches!(drain(&mut s, t1, &t).as_slice(), [Due::Probe { .. }]));
    }

    #[test]
    fn words_are_ordered_by_the_witness_epoch_and_clock() {
        let t = Timing::default();
        let t0 = Timestamp(1_000_000);
        let mut s = Suspicions::new(0);
        // Reporter 1: silent since 100 s (its clock).
        let d = Word { saw: Saw::Dead, epoch: 4, at: 105_000_000, silent_ms: 5000 };
        s.start(id(2), Some((id(1), d)), t0, &t);
        // Neighbour 3 heard it at 99 s: before the silence began, so no proof of life.
        let old = Word { saw: Saw::Alive, epoch: 4, at: 99_000_000, silent_ms: 0 };
        assert_eq!(s.witness(id(2), id(3), old, false, t0), Some(Witnessed::Stale));
        // ... at 101 s: after it began, so path trouble until the deadline.
        let new = Word { at: 101_000_000, ..old };
        assert_eq!(s.witness(id(2), id(3), new, false, t0), Some(Witnessed::ProofOfLife));
        // Its own older word (earlier clock, or older epoch) cannot replace it.
        let older = Word { saw: Saw::Dead, epoch: 4, at: 100_500_000, silent_ms: 5000 };
        assert_eq!(s.witness(id(2), id(3), older, false, t0), Some(Witnessed::Stale));
        let older_epoch = Word { epoch: 3, at: 200_000_000, ..older };
        assert_eq!(s.witness(id(2), id(3), older_epoch, false, t0), Some(Witnessed::Stale));
        assert_eq!(s.get(id(2)).unwrap().alive, Some(AliveProof::HeardBy(id(3))));
        // A second reporter whose silence began after 101 s: 3's word no longer contradicts
        // every silence, and two neighbours say dead.
        let d5 = Word { saw: Saw::Dead, epoch: 4, at: 107_000_000, silent_ms: 5000 };
        let t1 = t0 + probe_every(&t);
        assert!(matches!(s.witness(id(2), id(5), d5, false, t1), Some(Witnessed::Confirmed(_))));
    }
}
