//! Batches (issue 18): the joins of one shell turn are one ring change per ring, one peer set per
//! node whose peers changed, each node persisted once; the resulting ring and peers are those
//! of the same joins one by one.

mod support;

use std::collections::BTreeMap;

use assim_cma::{Action, EventKind};
use assim_wire::NodeId;
use proptest::prelude::*;
use support::*;

/// Joins `first..first+count` in one batch; returns the batch's actions.
fn join_batch(h: &mut Harness, ns: impl IntoIterator<Item = u32>) -> Vec<Action> {
    h.take();
    h.cma.begin_batch();
    for n in ns {
        h.cma.handle_hello(h.now, id(n), key(n), &hello(n)).unwrap();
        assert!(h.cma.poll_action().is_none(), "nothing comes out before the batch ends");
    }
    h.cma.end_batch(h.now);
    h.take()
}

#[test]
fn a_turn_of_joins_is_one_ring_change_and_one_peer_set_per_node() {
    let mut h = Harness::new();
    h.join_all(1..=3);
    let acts = join_batch(&mut h, 4..=50);
    check_ring(&h.cma);
    let ev = events(&acts);
    let up = ev.iter().filter(|e| e.kind == EventKind::HostUp).count();
    assert_eq!(up, 47, "every joiner is up");
    let rings: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::RingChanged).collect();
    assert_eq!(rings.len(), 1, "one ring.changed for the turn");
    let r = rings[0];
    assert_eq!(r.tags["joined"], "47");
    assert_eq!(r.tags["members"], "50");
    assert_eq!(r.tags["change"], "join");
    assert_eq!(r.text, "47 hosts joined the ring (50 members)");
    let listed = r.body.as_ref().unwrap()["joined"].as_array().unwrap().len();
    assert_eq!(listed, 47);
    // One peer set per node, and it is the node's final one.
    let mut sent: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (to, set) in sends(&acts) {
        *sent.entry(to).or_default() += 1;
        let peers: Vec<NodeId> =
            set.peers.iter().map(|p| NodeId::from_slice(&p.node_id).unwrap()).collect();
        assert_eq!(peers, h.cma.neighbours(to), "the set sent is the final one");
        assert_eq!(set.epoch, h.cma.node(to).unwrap().peer_epoch);
    }
    assert!(sent.values().all(|&c| c == 1), "one peer set per node: {sent:?}");
    for n in 4..=50 {
        assert!(sent.contains_key(&id(n)), "every joiner gets its set");
    }
    // Each node persisted once, with its final record.
    let mut persisted: BTreeMap<NodeId, usize> = BTreeMap::new();
    for a in &acts {
        if let Action::Persist(assim_cma::Change::Node(n)) = a {
            *persisted.entry(n.id).or_default() += 1;
            assert_eq!(n, h.cma.node(n.id).unwrap());
        }
    }
    assert!(persisted.values().all(|&c| c == 1));
    // Events come last, in id order (the documented action order).
    let first_event = acts.iter().position(|a| matches!(a, Action::Emit(_))).unwrap();
    assert!(acts[first_event..].iter().all(|a| matches!(a, Action::Emit(_))));
    assert!(ev.windows(2).all(|w| w[0].id < w[1].id));
}

#[test]
fn a_batch_of_one_join_reads_as_before() {
    let mut one = Harness::new();
    one.join_all(1..=3);
    one.take();
    one.join(4);
    let plain = one.take();
    let mut batched = Harness::new();
    batched.join_all(1..=3);
    let acts = join_batch(&mut batched, [4]);
    assert_eq!(acts, plain, "a batch of one input is that input");
    // An empty batch, and an end without a start, change nothing.
    batched.cma.begin_batch();
    batched.cma.end_batch(batched.now);
    batched.cma.end_batch(batched.now);
    assert!(batched.take().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// However joins are cut into batches, the ring and every node's peers end as with the
    /// same joins one by one, and each batch sends at most one peer set per node.
    #[test]
    fn batches_end_where_single_joins_end(cuts in proptest::collection::vec(1u32..12, 1..10)) {
        let mut single = Harness::new();
        let mut batched = Harness::new();
        let mut next = 1;
        for c in cuts {
            let ns: Vec<u32> = (next..next + c).collect();
            next += c;
            single.join_all(ns.iter().copied());
            let acts = join_batch(&mut batched, ns);
            let mut seen = std::collections::BTreeSet::new();
            for (to, _) in sends(&acts) {
                prop_assert!(seen.insert(to), "two peer sets for {} in one batch", to);
            }
            let rings = events(&acts).iter().filter(|e| e.kind == EventKind::RingChanged).count();
            prop_assert_eq!(rings, 1);
            check_ring(&batched.cma);
        }
        prop_assert_eq!(single.cma.ring(), batched.cma.ring());
        for n in single.cma.nodes() {
            prop_assert_eq!(&n.peers, &batched.cma.node(n.id).unwrap().peers);
        }
        // The stores built from the actions agree too.
        prop_assert_eq!(single.store.snapshot().ring, batched.store.snapshot().ring);
    }
}
