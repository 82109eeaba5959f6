//! Restarting the core from a snapshot (or from what a store built out of `Persist` actions).

mod support;

use std::time::Duration;

use assim_cma::model::confirm_gap;
use assim_cma::{Action, Change, CmaConfig, EventKind, NodeState, Snapshot, Timing};
use assim_wire::msg::ReportKind;
use support::*;

fn busy() -> Harness {
    let mut h = Harness::new();
    h.join_all(1..=12);
    h.cma.handle_goodbye(h.now, id(4));
    let b = id(7);
    let nb = h.cma.neighbours(b);
    h.report(nb[0], ReportKind::Dead, b, 5000);
    h.report(nb[1], ReportKind::Dead, b, 5000);
    h.advance(Duration::from_secs(3));
    h.take();
    h
}

#[test]
fn snapshot_restores_ring_nodes_and_counters() {
    let h = busy();
    let snap = h.cma.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let snap: Snapshot = serde_json::from_str(&json).unwrap();
    let later = h.now + Duration::from_secs(60);
    let r = Harness::with(CmaConfig::default(), snap.clone(), later);
    assert_eq!(r.cma.ring(), h.cma.ring());
    assert_eq!(r.cma.nodes().collect::<Vec<_>>(), h.cma.nodes().collect::<Vec<_>>());
    let rs = r.cma.snapshot();
    assert_eq!((rs.next_epoch, rs.next_event_id), (snap.next_epoch, snap.next_event_id));
    assert!(r.log.is_empty(), "a consistent snapshot restores silently: {:?}", r.log);
    assert_eq!(r.cma.poll_timeout(), None);
    check_ring(&r.cma);
}

#[test]
fn the_store_built_from_actions_restores_the_same_core() {
    let mut h = busy();
    h.advance(Duration::from_secs(2)); // ring write-behind done
    let from_store = h.store.snapshot();
    let direct = h.cma.snapshot();
    assert_eq!(from_store.ring, direct.ring);
    assert_eq!(from_store.nodes, direct.nodes);
    assert_eq!(from_store.next_epoch, direct.next_epoch);
    assert_eq!(from_store.next_event_id, direct.next_event_id);
}

#[test]
fn next_ids_continue_after_restart() {
    let mut h = busy();
    let snap = h.cma.snapshot();
    let max_event = snap.next_event_id;
    let mut r = Harness::with(CmaConfig::default(), snap, h.now);
    r.join(50);
    let acts = r.take();
    assert!(events(&acts).iter().all(|e| e.id >= max_event));
    let old_max_epoch = h.cma.nodes().map(|n| n.peer_epoch).max().unwrap();
    assert!(sends(&acts).iter().all(|s| s.1.epoch > old_max_epoch));
    h.take();
}

#[test]
fn stale_stored_ring_is_repaired_from_node_states() {
    let h = busy();
    let mut snap = h.cma.snapshot();
    // The ring as stored before the last changes: it still lists the Down and Left nodes and
    // misses one member.
    snap.ring.push(id(4));
    snap.ring.push(id(7));
    let missing = snap.ring.remove(0);
    let r = Harness::with(CmaConfig::default(), snap, h.now);
    assert_eq!(r.cma.ring(), h.cma.ring());
    assert!(r.cma.ring().contains(&missing));
    let acts = &r.log;
    assert!(
        acts.iter().any(|a| matches!(a, Action::Persist(Change::Ring(x)) if *x == h.cma.ring()))
    );
    let ev = events(acts);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventKind::RingChanged);
    assert_eq!(ev[0].tags["added"], "1");
    assert_eq!(ev[0].tags["removed"], "2");
    assert!(sends(acts).is_empty(), "records were right; nobody needs a new set");
}

#[test]
fn inconsistent_peers_are_repaired_with_new_epochs() {
    let h = busy();
    let mut snap = h.cma.snapshot();
    let victim = snap.nodes.iter_mut().find(|n| n.state == NodeState::Up).unwrap();
    victim.peers.reverse();
    victim.peers.pop();
    let vid = victim.id;
    let r = Harness::with(CmaConfig::default(), snap, h.now);
    let s = sends(&r.log);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, vid);
    check_ring(&r.cma);
}

#[test]
fn a_suspicion_survives_a_restart_and_is_decided() {
    for answered in [false, true] {
        let mut h = Harness::new();
        h.join_all(1..=6);
        let b = id(2);
        let a = h.cma.neighbours(b)[0];
        h.report(a, ReportKind::Dead, b, 5000);
        let snap = h.cma.snapshot();
        assert_eq!(h.state(b), NodeState::Suspect);

        let restart = h.now + Duration::from_secs(30);
        let mut r = Harness::with(CmaConfig::default(), snap, restart);
        assert_eq!(r.state(b), NodeState::Suspect);
        let nonce = probes(&r.log)[0];
        assert!(kinds(&r.log).is_empty(), "no event just for restarting");
        assert_eq!(r.cma.poll_timeout(), Some(restart + confirm_gap(&Timing::default())));
        r.take();
        if answered {
            r.cma.handle_probe_reply(r.now, b, nonce);
        }
        r.advance(Duration::from_millis(1999));
        assert_eq!(r.state(b), NodeState::Suspect);
        r.advance(Duration::from_millis(1));
        let acts = r.take();
        if answered {
            assert_eq!(r.state(b), NodeState::Up);
            assert_eq!(kinds(&acts), vec![EventKind::PathSuspect]);
        } else {
            assert_eq!(r.state(b), NodeState::Down);
            assert_eq!(kinds(&acts), vec![EventKind::HostDown, EventKind::RingChanged]);
            assert!(events(&acts)[0].text.contains("suspect when the CMA restarted"));
        }
        check_ring(&r.cma);
    }
}

#[test]
fn a_restored_suspicion_needs_two_new_reports() {
    let mut h = Harness::new();
    h.join_all(1..=6);
    let b = id(2);
    let nb = h.cma.neighbours(b);
    h.report(nb[0], ReportKind::Dead, b, 5000);
    let mut r = Harness::with(CmaConfig::default(), h.cma.snapshot(), h.now);
    // The original reporter's report is replayed from its spool: it alone does not confirm.
    r.report(nb[0], ReportKind::Dead, b, 5000);
    assert_eq!(r.state(b), NodeState::Suspect);
    r.report(nb[1], ReportKind::Dead, b, 5000);
    r.advance(Duration::from_millis(500)); // the CMA's own probe goes unanswered
    assert_eq!(r.state(b), NodeState::Down);
}
