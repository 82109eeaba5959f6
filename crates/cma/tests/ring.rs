//! Ring maintenance over random join / leave / failure / return sequences.
//!
//! After every step: the ring is one cycle holding every Up and Suspect node exactly once; each
//! member of a ring of three or more has two distinct neighbours; the relation is symmetric;
//! records match the ring; the store built from `Persist` actions matches the core; a change
//! sent new peer sets to at most the node itself and its two neighbours; epochs only grow.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use assim_cma::{EventKind, NodeState};
use assim_wire::NodeId;
use assim_wire::msg::ReportKind;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::*;

#[derive(Clone, Copy, Debug)]
enum Op {
    Join,
    Goodbye(usize),
    Kill(usize),
    Return(usize),
    Restart(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Join),
        2 => any::<usize>().prop_map(Op::Goodbye),
        2 => any::<usize>().prop_map(Op::Kill),
        2 => any::<usize>().prop_map(Op::Return),
        1 => any::<usize>().prop_map(Op::Restart),
    ]
}

struct Run {
    h: Harness,
    next: u32,
    /// Highest epoch each node has been sent (strictly increasing across changes).
    last_epoch: std::collections::BTreeMap<NodeId, u64>,
}

impl Run {
    fn new() -> Self {
        Run { h: Harness::new(), next: 1, last_epoch: Default::default() }
    }

    fn members(&self) -> Vec<NodeId> {
        self.h.cma.ring()
    }

    fn outside(&self) -> Vec<NodeId> {
        self.h.cma.nodes().filter(|n| !n.state.in_ring()).map(|n| n.id).collect()
    }

    fn number(id: NodeId) -> u32 {
        u32::from_be_bytes(id.0[..4].try_into().unwrap())
    }

    fn step(&mut self, op: Op) {
        self.h.take();
        let before: BTreeSet<NodeId> = self.members().into_iter().collect();
        // The nodes allowed to get a new peer set in this step.
        let mut allowed: BTreeSet<NodeId> = BTreeSet::new();
        let mut restarted = None;
        match op {
            Op::Join => {
                let n = self.next;
                self.next += 1;
                self.h.join(n);
                let x = id(n);
                allowed.insert(x);
                allowed.extend(self.h.cma.neighbours(x));
            }
            Op::Goodbye(i) | Op::Kill(i) | Op::Restart(i) => {
                let m = self.members();
                if m.is_empty() {
                    return;
                }
                let x = m[i % m.len()];
                allowed.extend(self.h.cma.neighbours(x));
                match op {
                    Op::Goodbye(_) => {
                        self.h.cma.handle_goodbye(self.h.now, x);
                        self.h.drain();
                        assert_eq!(self.h.state(x), NodeState::Left);
                    }
                    Op::Kill(_) => {
                        let nb = self.h.cma.neighbours(x);
                        match nb.as_slice() {
                            [] => return,
                            [a] => {
                                self.h.report(*a, ReportKind::Dead, x, 5000);
                                self.h.advance(Duration::from_secs(2));
                            }
                            [a, b, ..] => {
                                self.h.report(*a, ReportKind::Dead, x, 5000);
                                self.h.report(*b, ReportKind::Dead, x, 5200);
                                // The CMA's own probe goes unanswered.
                                self.h.advance(Duration::from_millis(500));
                            }
                        }
                        assert_eq!(self.h.state(x), NodeState::Down);
                    }
                    _ => {
                        let n = Self::number(x);
                        self.h.join(n);
                        allowed = BTreeSet::from([x]);
                        restarted = Some(x);
                    }
                }
            }
            Op::Return(i) => {
                let o = self.outside();
                if o.is_empty() {
                    return;
                }
                let x = o[i % o.len()];
                if self.h.state(x) == NodeState::Down && i % 2 == 0 && !before.is_empty() {
                    // Revived by a heartbeat someone hears.
                    let reporter = *before.iter().next().unwrap();
                    self.h.report(reporter, ReportKind::Martian, x, 0);
                    // The CMA confirms with its own probe before the node rejoins.
                    assert_eq!(self.h.state(x), NodeState::Down);
                    assert!(self.h.answer_probe(x), "a heard-again Down node is probed");
                } else {
                    self.h.join(Self::number(x));
                }
                assert_eq!(self.h.state(x), NodeState::Up);
                allowed.insert(x);
                allowed.extend(self.h.cma.neighbours(x));
            }
        }
        // Let the write-behind ring persist happen.
        self.h.advance(Duration::from_secs(1));
        let actions = self.h.take();
        check_ring(&self.h.cma);

        let sent = sends(&actions);
        let targets: BTreeSet<NodeId> = sent.iter().map(|s| s.0).collect();
        assert!(targets.len() <= 3, "{op:?} sent peer sets to {} nodes", targets.len());
        assert!(targets.is_subset(&allowed), "{op:?} disturbed nodes beyond its neighbours");
        for (to, set) in &sent {
            let rec = self.h.cma.node(*to).unwrap();
            assert_eq!(set.epoch, rec.peer_epoch);
            let ids: Vec<NodeId> =
                set.peers.iter().map(|p| NodeId::from_slice(&p.node_id).unwrap()).collect();
            assert_eq!(ids, rec.peers);
            let last = self.last_epoch.insert(*to, set.epoch);
            if restarted == Some(*to) {
                assert_eq!(last.map_or(set.epoch, |l| l), set.epoch, "a resend keeps the epoch");
            } else {
                assert!(last.is_none_or(|l| l < set.epoch), "epochs strictly increase per node");
            }
        }
        let after: BTreeSet<NodeId> = self.members().into_iter().collect();
        let ring_events = kinds(&actions).iter().filter(|k| **k == EventKind::RingChanged).count();
        assert_eq!(ring_events, before.symmetric_difference(&after).count());

        // The store, fed only by Persist actions, agrees with the core.
        let snap = self.h.cma.snapshot();
        assert_eq!(self.h.store.nodes.values().cloned().collect::<Vec<_>>(), snap.nodes);
        assert_eq!(self.h.store.ring, snap.ring);
        assert_eq!(self.h.store.next_epoch, snap.next_epoch);
        assert_eq!(self.h.store.next_event_id, snap.next_event_id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ring_invariants_hold_for_any_sequence(ops in proptest::collection::vec(op_strategy(), 1..120)) {
        let mut run = Run::new();
        for op in ops {
            run.step(op);
        }
    }
}

#[test]
fn ring_invariants_hold_for_seeded_random_runs() {
    for seed in [1u64, 2, 3, 0xC0FFEE, 0x5EED_0001] {
        println!("ring run seed {seed:#x}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut run = Run::new();
        for _ in 0..400 {
            let op = match rng.gen_range(0..10) {
                0..=3 => Op::Join,
                4 | 5 => Op::Goodbye(rng.r#gen()),
                6 | 7 => Op::Kill(rng.r#gen()),
                8 => Op::Return(rng.r#gen()),
                _ => Op::Restart(rng.r#gen()),
            };
            run.step(op);
        }
    }
}

#[test]
fn joins_land_spread_out() {
    // Consecutive ids do not cluster: the ring order is by hash, so joining 1..=100 in order
    // does not always append next to the previous joiner.
    let mut h = Harness::new();
    h.join_all(1..=100);
    let ring = h.cma.ring();
    let adjacent_pairs = (1..100)
        .filter(|&n| {
            let nb = h.cma.neighbours(id(n));
            nb.contains(&id(n + 1))
        })
        .count();
    assert!(adjacent_pairs < 20, "{adjacent_pairs} consecutive ids are ring neighbours");
    assert_eq!(ring.len(), 100);
}

#[test]
fn small_rings_peer_sets() {
    let mut h = Harness::new();
    h.join(1);
    let a = h.take();
    let s = sends(&a);
    assert_eq!(s.len(), 1, "the first node gets an (empty) set with the timing");
    assert!(s[0].1.peers.is_empty());
    assert_eq!((s[0].1.interval_ms, s[0].1.warn_ms, s[0].1.dead_ms), (1000, 1500, 2500));
    h.join(2);
    assert_eq!(h.cma.neighbours(id(1)), vec![id(2)]);
    assert_eq!(h.cma.neighbours(id(2)), vec![id(1)]);
    let a = h.take();
    let s = sends(&a);
    assert_eq!(s.len(), 2);
    let to_1 = s.iter().find(|x| x.0 == id(1)).unwrap().1;
    assert_eq!(to_1.peers[0].addr, addr(2));
    assert_eq!(to_1.peers[0].public_key, key(2).to_vec());
    let text = &events(&a).last().unwrap().text;
    assert_eq!(text, "web2 joined the ring next to web1 (2 members)");
    h.join(3);
    let a = h.take();
    assert_eq!(sends(&a).len(), 3);
    let e = events(&a);
    assert!(e[1].text.starts_with("web3 joined the ring between web"), "{}", e[1].text);
    assert!(e[1].text.ends_with("(3 members)"));
}
