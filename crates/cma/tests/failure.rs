//! Failure disambiguation and node lifecycle, driven through the public API under virtual time.

mod support;

use std::time::Duration;

use assim_cma::model::confirm_window;
use assim_cma::{Action, EventKind, HelloError, NodeState, Timing};
use assim_wire::NodeId;
use assim_wire::msg::{PeerLiveness, PeerState, PeerStatus, ReportKind};
use support::*;

/// Five nodes; returns (harness, b, a, c) where a and c are b's neighbours.
fn five() -> (Harness, NodeId, NodeId, NodeId) {
    let mut h = Harness::new();
    h.join_all(1..=5);
    h.take();
    let b = id(3);
    let nb = h.cma.neighbours(b);
    (h, b, nb[0], nb[1])
}

fn name(h: &Harness, n: NodeId) -> String {
    h.cma.node(n).unwrap().hostname.clone()
}

#[test]
fn two_dead_reports_make_a_node_down() {
    let (mut h, b, a, c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    assert_eq!(h.state(b), NodeState::Suspect);
    let acts = h.take();
    assert_eq!(kinds(&acts), vec![EventKind::HostSuspect]);
    let ev = events(&acts)[0];
    assert_eq!(ev.tags["reporter"], name(&h, a));
    assert_eq!(ev.tags["host"], "web3");
    assert_eq!(ev.host, Some(b));
    assert_eq!(probes(&acts).len(), 1, "the CMA probes the suspect at once");
    assert!(sends(&acts).is_empty(), "a suspect stays in the ring");

    h.advance(Duration::from_millis(700));
    h.report(c, ReportKind::Dead, b, 5200);
    assert_eq!(h.state(b), NodeState::Down);
    let acts = h.take();
    assert_eq!(kinds(&acts), vec![EventKind::HostDown, EventKind::RingChanged]);
    let down = events(&acts)[0];
    assert_eq!(
        down.text,
        format!(
            "web3 is down: no heartbeats for 5.2 s, confirmed by {} and {}; it answered none of \
             the CMA's 5 probes",
            name(&h, a),
            name(&h, c)
        )
    );
    assert_eq!(down.tags["reason"], "corroborated");
    assert!(!h.cma.ring().contains(&b));
    let mut targets: Vec<NodeId> = sends(&acts).iter().map(|s| s.0).collect();
    targets.sort();
    let mut want = vec![a, c];
    want.sort();
    assert_eq!(targets, want, "only the two neighbours get new sets");
    assert_eq!(h.cma.node(b).unwrap().since, h.now);
    assert_eq!(h.cma.stats().downs_corroborated, 1);
    // Nothing further happens at the old deadline.
    h.advance(Duration::from_secs(10));
    assert!(kinds(&h.take()).is_empty());
    check_ring(&h.cma);
}

#[test]
fn one_report_and_a_probe_reply_is_path_trouble() {
    let (mut h, b, a, _c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    let nonce = probes(&h.take())[0];
    h.advance(Duration::from_millis(300));
    assert_eq!(probes(&h.take()).len(), 3, "the confirmation probes at 80, 160 and 240 ms");
    h.cma.handle_probe_reply(h.now, b, nonce);
    h.drain();
    assert_eq!(h.state(b), NodeState::Suspect, "decided at the deadline, not before");
    h.advance(Duration::from_millis(1699));
    assert_eq!(h.state(b), NodeState::Suspect);
    let acts = h.take();
    assert!(probes(&acts).is_empty(), "no more probes once it answered");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.state(b), NodeState::Up);
    let acts = h.take();
    assert_eq!(kinds(&acts), vec![EventKind::PathSuspect]);
    let ev = events(&acts)[0];
    assert_eq!(ev.tags["a"], name(&h, a));
    assert_eq!(ev.tags["b"], "web3");
    assert_eq!(
        ev.text,
        format!(
            "heartbeats from web3 do not reach {} although web3 is alive (it answered the CMA's probe)",
            name(&h, a)
        )
    );
    assert!(sends(&acts).is_empty(), "path trouble does not change the ring");
    assert!(h.cma.ring().contains(&b));
    assert_eq!(h.cma.stats().probe_replies, 1);
}

#[test]
fn one_report_and_no_reply_is_down_at_the_deadline_not_before() {
    let (mut h, b, a, _c) = five();
    let t0 = h.now;
    h.report(a, ReportKind::Dead, b, 5000);
    h.advance_to(t0 + Duration::from_micros(1_999_999));
    assert_eq!(h.state(b), NodeState::Suspect);
    let acts = h.take();
    assert_eq!(probes(&acts).len(), 8, "probes at 0, 80, 160, 240, 320, 820, 1320, 1820 ms");
    let mut nonces = probes(&acts);
    nonces.dedup();
    assert_eq!(nonces.len(), 8, "a fresh nonce each time");
    h.cma.handle_probe_reply(h.now, b, 12345);
    assert_eq!(h.cma.stats().probe_replies_unmatched, 1, "a nonce we never issued proves nothing");
    h.advance_to(t0 + Duration::from_secs(2));
    assert_eq!(h.state(b), NodeState::Down);
    let acts = h.take();
    assert_eq!(kinds(&acts), vec![EventKind::HostDown, EventKind::RingChanged]);
    assert_eq!(
        events(&acts)[0].text,
        format!(
            "web3 is down: no heartbeats for 5.0 s reported by {}, and no answer to the CMA's probes for 2.0 s",
            name(&h, a)
        )
    );
    assert_eq!(h.cma.stats().downs_probe_failed, 1);
    check_ring(&h.cma);
}

/// A second neighbour's dead word after the node proved itself alive makes the CMA ask again:
/// a node that answers is not down (path trouble to both); one that does not is (it may have
/// crashed after its answer).
#[test]
fn a_second_report_after_proof_of_life_is_not_down_if_it_answers_again() {
    let (mut h, b, a, c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    h.cma.handle_alive(h.now, b);
    h.report(c, ReportKind::Dead, b, 5000);
    assert_eq!(h.state(b), NodeState::Suspect);
    let probes_before = probes(&h.log).len();
    h.advance(Duration::from_millis(1));
    assert!(probes(&h.log).len() > probes_before, "asked again");
    assert!(h.answer_probe(b));
    h.advance(Duration::from_secs(2));
    assert_eq!(h.state(b), NodeState::Up);
    let acts = h.take();
    let ev = events(&acts);
    assert_eq!(
        kinds(&acts),
        vec![EventKind::HostSuspect, EventKind::PathSuspect, EventKind::PathSuspect]
    );
    assert_eq!(ev[1].tags["a"], name(&h, a));
    assert_eq!(ev[2].tags["a"], name(&h, c));

    // The same with a node that crashed after its message.
    let (mut h, b, a, c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    h.cma.handle_alive(h.now, b);
    h.report(c, ReportKind::Dead, b, 5000);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.state(b), NodeState::Down);
    check_ring(&h.cma);
}

#[test]
fn reports_from_non_neighbours_and_unknown_nodes_are_ignored_and_counted() {
    let (mut h, b, a, c) = five();
    let outsider = (1..=5).map(id).find(|x| *x != a && *x != b && *x != c).unwrap();
    h.report(outsider, ReportKind::Dead, b, 5000);
    assert_eq!(h.state(b), NodeState::Up);
    assert_eq!(h.cma.stats().reports_ignored_not_neighbour, 1);
    h.report(id(99), ReportKind::Dead, b, 5000);
    h.report(a, ReportKind::Dead, id(98), 5000);
    let mut bad = report(ReportKind::Dead, 3, 0);
    bad.peer = vec![1, 2, 3];
    h.cma.handle_report(h.now, a, &bad);
    assert_eq!(h.cma.stats().reports_ignored_unknown, 3);
    assert_eq!(h.state(b), NodeState::Up);
    assert!(h.take().is_empty(), "ignored reports produce no actions");
    assert_eq!(h.cma.stats().reports, 4);
}

#[test]
fn late_reports_and_martians_about_up_nodes_change_nothing() {
    let (mut h, b, a, _c) = five();
    h.report(a, ReportKind::Late, b, 3000);
    h.report(a, ReportKind::Martian, b, 0);
    h.report(a, ReportKind::BackAlive, b, 0);
    assert_eq!(h.state(b), NodeState::Up);
    assert!(h.take().is_empty());
    assert_eq!(h.cma.stats().reports_late, 1);
    assert_eq!(h.cma.stats().reports_no_effect, 2);
}

#[test]
fn back_alive_from_the_reporter_clears_the_suspicion_with_host_up() {
    let (mut h, b, a, _c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    h.take();
    h.report(a, ReportKind::BackAlive, b, 0);
    assert_eq!(h.state(b), NodeState::Up);
    let acts = h.take();
    assert_eq!(kinds(&acts), vec![EventKind::HostUp], "{acts:?}");
    assert!(!acts.iter().any(|a| matches!(a, Action::SendPeerSet { .. })), "the ring is unchanged");
    h.advance(Duration::from_secs(5));
    assert!(kinds(&h.take()).is_empty(), "no decision for a cleared suspicion");
    assert_eq!(h.cma.poll_timeout(), None);
}

#[test]
fn peer_status_dead_entries_count_as_reports() {
    let (mut h, b, a, c) = five();
    let status = |about: NodeId| PeerStatus {
        epoch: 1,
        expecting: vec![PeerState {
            peer: about.as_bytes().to_vec(),
            liveness: PeerLiveness::Dead as i32,
        }],
        sending_to: vec![],
        at: 0,
    };
    h.cma.handle_peer_status(h.now, a, &status(b));
    h.cma.handle_peer_status(h.now, c, &status(b));
    h.advance(confirm_window(&Timing::default())); // the CMA's own probes go unanswered
    assert_eq!(h.state(b), NodeState::Down);
    let acts = h.take();
    let text = &events(&acts)[1].text;
    assert!(text.contains("no heartbeats for at least 2.5 s"), "{text}");
}

#[test]
fn goodbye_is_left_and_never_down() {
    let (mut h, b, a, c) = five();
    h.cma.handle_goodbye(h.now, b);
    h.drain();
    assert_eq!(h.state(b), NodeState::Left);
    let acts = h.take();
    assert_eq!(kinds(&acts), vec![EventKind::HostLeft, EventKind::RingChanged]);
    assert_eq!(sends(&acts).len(), 2);
    // Its old neighbours notice the silence before their new sets arrive.
    h.report(a, ReportKind::Dead, b, 5000);
    h.report(c, ReportKind::Dead, b, 5000);
    h.advance(Duration::from_secs(30));
    assert!(kinds(&h.take()).is_empty());
    assert_eq!(h.state(b), NodeState::Left);
    check_ring(&h.cma);
}

#[test]
fn restart_faster_than_dead_time_resends_the_peer_set() {
    let (mut h, b, _a, _c) = five();
    let epoch = h.cma.node(b).unwrap().peer_epoch;
    let mut hi = hello(3);
    hi.peer_epoch = 0;
    hi.version = "1.0.1".into();
    h.cma.handle_hello(h.now, b, key(3), &hi).unwrap();
    h.drain();
    let acts = h.take();
    assert!(kinds(&acts).is_empty(), "no host.down, no host.up: {:?}", kinds(&acts));
    let s = sends(&acts);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, b);
    assert_eq!(s[0].1.epoch, epoch, "same desired set, same epoch");
    assert_eq!(h.cma.node(b).unwrap().version, "1.0.1");
    assert_eq!(h.state(b), NodeState::Up);
}

#[test]
fn hello_from_a_suspect_cancels_the_suspicion() {
    let (mut h, b, a, c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    h.take();
    h.join(3);
    assert_eq!(h.state(b), NodeState::Up);
    h.report(c, ReportKind::Dead, b, 5000);
    assert_eq!(h.state(b), NodeState::Suspect, "a new report starts a new suspicion");
    h.join(3);
    h.advance(Duration::from_secs(10));
    let k = kinds(&h.take());
    assert_eq!(k, vec![EventKind::HostSuspect], "no host.down, no path.suspect");
}

#[test]
fn hello_with_a_new_address_gives_neighbours_new_sets() {
    let (mut h, b, a, c) = five();
    let mut hi = hello(3);
    hi.listen_addr = "[2001:db8::3]:1984".into();
    h.cma.handle_hello(h.now, b, key(3), &hi).unwrap();
    h.drain();
    let acts = h.take();
    let s = sends(&acts);
    assert_eq!(s.len(), 3);
    for (to, set) in &s {
        if *to == a || *to == c {
            let p = set.peers.iter().find(|p| p.node_id == b.as_bytes().to_vec()).unwrap();
            assert_eq!(p.addr, "[2001:db8::3]:1984");
        }
    }
    assert!(kinds(&acts).is_empty());
}

#[test]
fn bad_hellos_are_refused_without_changing_state() {
    let mut h = Harness::new();
    let mut hi = hello(1);
    hi.listen_addr = "not an address".into();
    let e = h.cma.handle_hello(h.now, id(1), key(1), &hi).unwrap_err();
    assert!(matches!(e, HelloError::BadListenAddr { .. }), "{e}");
    hi.listen_addr = "0.0.0.0:1984".into();
    let e = h.cma.handle_hello(h.now, id(1), key(1), &hi).unwrap_err();
    assert!(matches!(e, HelloError::UnreachableListenAddr { .. }), "{e}");
    hi.listen_addr = "10.0.0.1:0".into();
    assert!(h.cma.handle_hello(h.now, id(1), key(1), &hi).is_err());
    assert!(h.take().is_empty());
    assert!(h.cma.node(id(1)).is_none());
    assert_eq!(h.cma.stats().hellos_rejected, 3);
}

fn down_b() -> (Harness, NodeId, NodeId, NodeId) {
    let (mut h, b, a, c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    h.report(c, ReportKind::Dead, b, 5000);
    // The CMA's five probes go unanswered: down 400 ms after the first.
    h.advance(confirm_window(&Timing::default()));
    assert_eq!(h.state(b), NodeState::Down);
    h.advance(Duration::from_secs(3));
    h.take();
    (h, b, a, c)
}

fn assert_rejoined(h: &mut Harness, b: NodeId, reason: &str) {
    assert_eq!(h.state(b), NodeState::Up);
    let acts = h.take();
    if reason == "message" {
        // Back without restarting (issue 13): its link was down, not the host.
        assert_eq!(
            kinds(&acts),
            vec![EventKind::HostUp, EventKind::LinkSuspect, EventKind::RingChanged]
        );
        let link = events(&acts)[1];
        assert!(link.text.contains("did not restart"), "{}", link.text);
    } else {
        assert_eq!(kinds(&acts), vec![EventKind::HostUp, EventKind::RingChanged]);
    }
    let up = events(&acts)[0];
    assert_eq!(up.tags["reason"], reason);
    assert_eq!(up.tags["was"], "down");
    assert!(up.text.starts_with("web3 is up again: "), "{}", up.text);
    assert!(up.text.ends_with("down for 3.0 s"), "{}", up.text);
    assert!(h.cma.ring().contains(&b));
    assert!(sends(&acts).iter().any(|s| s.0 == b), "the returning node gets a new set");
    check_ring(&h.cma);
}

#[test]
fn a_stale_epoch_observation_does_not_revive_a_down_node() {
    let (mut h, b, a, _) = down_b();
    // A back-alive that A made before it got its new peer set (it waited out a partition).
    let old_epoch = h.cma.node(a).unwrap().peer_epoch - 1;
    let r = assim_wire::msg::HeartbeatReport {
        kind: ReportKind::BackAlive as i32,
        peer: b.as_bytes().to_vec(),
        peer_addr: String::new(),
        silent_ms: 0,
        epoch: old_epoch,
        at: 0,
    };
    h.cma.handle_report(h.now, a, &r);
    h.drain();
    assert_eq!(h.state(b), NodeState::Down);
    assert!(kinds(&h.take()).is_empty());
    assert_eq!(h.cma.stats().reports_stale_epoch, 1);
}

#[test]
fn down_node_hello_rejoins() {
    let (mut h, b, _, _) = down_b();
    h.join(3);
    assert_rejoined(&mut h, b, "hello");
}

#[test]
fn down_node_heard_as_martian_rejoins() {
    let (mut h, b, _a, _c) = down_b();
    let other = h.cma.ring()[0];
    h.report(other, ReportKind::Martian, b, 0);
    // Issue 13: a neighbour's word alone no longer revives it (that was the revive/rejoin
    // flapping of a host only the neighbours could hear): the CMA probes, and its answer does.
    assert_eq!(h.state(b), NodeState::Down);
    assert_eq!(probes(&h.log).len(), 1);
    assert!(h.answer_probe(b));
    assert_rejoined(&mut h, b, "message");
}

#[test]
fn down_node_heard_back_alive_rejoins() {
    let (mut h, b, a, _c) = down_b();
    h.report(a, ReportKind::BackAlive, b, 0);
    assert_eq!(h.state(b), NodeState::Down, "not before the CMA's probe answers (issue 13)");
    assert!(h.answer_probe(b));
    assert_rejoined(&mut h, b, "message");
}

#[test]
fn down_node_message_rejoins() {
    let (mut h, b, _, _) = down_b();
    h.cma.handle_alive(h.now, b);
    h.drain();
    assert_rejoined(&mut h, b, "message");
}

#[test]
fn left_node_returns_only_by_hello() {
    let (mut h, b, _, _) = five();
    h.cma.handle_goodbye(h.now, b);
    h.cma.handle_alive(h.now, b);
    h.drain();
    assert_eq!(h.state(b), NodeState::Left);
    h.take();
    h.join(3);
    assert_eq!(h.state(b), NodeState::Up);
    let acts = h.take();
    assert_eq!(kinds(&acts), vec![EventKind::HostUp, EventKind::RingChanged]);
    assert_eq!(events(&acts)[0].text, "web3 is back: it registered again after leaving");
}

#[test]
fn events_have_monotonic_ids_and_counters_are_persisted() {
    let (mut h, b, a, c) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    h.report(c, ReportKind::Dead, b, 5000);
    let acts = h.take();
    let ids: Vec<u64> = events(&acts).iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    let snap = h.cma.snapshot();
    assert_eq!(snap.next_event_id, ids.last().unwrap() + 1);
    assert_eq!(h.store.next_event_id, snap.next_event_id);
    assert_eq!(h.store.next_epoch, snap.next_epoch);
    for e in events(&acts) {
        assert_eq!(e.time, h.now);
        assert_eq!(e.tags["node"], b.to_string());
        assert_eq!(e.tags["host"], e.hostname);
    }
    // Persist comes before the sends and the events of the same input.
    h.join(6);
    let acts = h.take();
    let first_emit = acts.iter().position(|a| matches!(a, Action::Emit(_))).unwrap();
    let last_persist = acts.iter().rposition(|a| matches!(a, Action::Persist(_))).unwrap();
    let first_send = acts.iter().position(|a| matches!(a, Action::SendPeerSet { .. })).unwrap();
    assert!(last_persist < first_send && first_send < first_emit);
}

#[test]
fn names_and_serde_round_trip() {
    use assim_cma::{Event, NodeRecord};
    for k in [
        EventKind::HostUp,
        EventKind::HostSuspect,
        EventKind::HostDown,
        EventKind::HostLeft,
        EventKind::PathSuspect,
        EventKind::RingChanged,
    ] {
        assert_eq!(k.name().parse::<EventKind>().unwrap(), k);
    }
    for s in [NodeState::Up, NodeState::Suspect, NodeState::Down, NodeState::Left] {
        assert_eq!(s.name().parse::<NodeState>().unwrap(), s);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.name()));
    }
    assert!("sideways".parse::<NodeState>().is_err());
    let (mut h, b, a, _) = five();
    h.report(a, ReportKind::Dead, b, 5000);
    let acts = h.take();
    let ev = events(&acts)[0].clone();
    let back: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
    assert_eq!(back, ev);
    let rec = h.cma.node(b).unwrap().clone();
    let back: NodeRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
    assert_eq!(back, rec);
}
