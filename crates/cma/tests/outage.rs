//! Hosts that die while the CMA is down (issue 16, item 0).
//!
//! The neighbours' reports wait in their spools and reach the restarted CMA in spool order,
//! each stream after the other: first what the nanoprobe said before the host died (peer
//! status "alive", a back-alive from an earlier flap), then "late", then "dead". Old evidence of
//! life must not outweigh the newer silence it predates.

mod support;

use std::time::Duration;

use assim_cma::{CmaConfig, EventKind, NodeState};
use assim_wire::NodeId;
use assim_wire::msg::{PeerLiveness, PeerState, PeerStatus, ReportKind};
use support::*;

/// One spooled record of a neighbour, as the restarted CMA receives it.
#[derive(Clone, Debug)]
enum Spooled {
    Report(ReportKind, u64),
    Status(PeerLiveness),
}

/// What a neighbour `me` of `dead` (its other neighbour `other`) had in its spool: a back-alive
/// from an earlier flap and a peer status from before the death, then late and dead.
fn spool_of_a_neighbour() -> Vec<Spooled> {
    vec![
        Spooled::Report(ReportKind::BackAlive, 4000),
        Spooled::Status(PeerLiveness::Alive),
        Spooled::Report(ReportKind::Late, 3000),
        Spooled::Status(PeerLiveness::Late),
        Spooled::Report(ReportKind::Dead, 5000),
        Spooled::Status(PeerLiveness::Dead),
    ]
}

fn deliver(h: &mut Harness, me: NodeId, dead: NodeId, other: NodeId, rec: &Spooled) {
    let epoch = h.cma.node(me).unwrap().peer_epoch;
    match rec {
        Spooled::Report(kind, silent_ms) => {
            let mut r = report(*kind, 0, *silent_ms);
            r.peer = dead.as_bytes().to_vec();
            r.epoch = epoch;
            h.cma.handle_report(h.now, me, &r);
        }
        Spooled::Status(l) => {
            let s = PeerStatus {
                epoch,
                expecting: vec![
                    PeerState {
                        peer: other.as_bytes().to_vec(),
                        liveness: PeerLiveness::Alive as i32,
                    },
                    PeerState { peer: dead.as_bytes().to_vec(), liveness: *l as i32 },
                ],
                sending_to: vec![other.as_bytes().to_vec(), dead.as_bytes().to_vec()],
                ..Default::default()
            };
            h.cma.handle_peer_status(h.now, me, &s);
        }
    }
    h.drain();
}

/// 5 nanoprobes up; the CMA is killed; one nanoprobe is killed; 8 s later the CMA starts again
/// from what it had stored. The live nanoprobes say hello again, then both neighbours' spools
/// are replayed in spool order, one stream after the other; the CMA's probe goes unanswered.
#[test]
fn item0_host_dead_during_cma_outage_ends_down() {
    let mut h = Harness::new();
    h.join_all(1..=5);
    h.advance(Duration::from_secs(2)); // the ring write-behind is stored too
    h.take();
    let dead = id(3);
    let nb = h.cma.neighbours(dead);
    let (b, d) = (nb[0], nb[1]);
    let other_of =
        |h: &Harness, n: NodeId| h.cma.neighbours(n).into_iter().find(|x| *x != dead).unwrap();
    let (b_other, d_other) = (other_of(&h, b), other_of(&h, d));

    // kill -9 the CMA: only what it stored survives.
    let snapshot = h.store.snapshot();
    let restart = h.now + Duration::from_secs(8);
    let mut r = Harness::with(CmaConfig::default(), snapshot, restart);
    for n in [1, 2, 4, 5] {
        r.join(n); // each live nanoprobe noticed the restart and registered again
    }
    r.take();
    let spool = spool_of_a_neighbour();
    for rec in &spool {
        deliver(&mut r, b, dead, b_other, rec);
    }
    for rec in &spool {
        deliver(&mut r, d, dead, d_other, rec);
    }
    // The CMA's probes go unanswered; give it well past every deadline.
    r.advance(Duration::from_secs(10));
    let acts = r.take();
    assert_eq!(r.state(dead), NodeState::Down, "events: {:#?}", events(&acts));
    let k = kinds(&acts);
    assert!(k.contains(&EventKind::HostDown), "{k:?}");
    assert!(!k.contains(&EventKind::PathSuspect), "old evidence is no proof of life: {k:?}");
    assert!(!r.cma.ring().contains(&dead));
    check_ring(&r.cma);
    // And it stays down.
    r.advance(Duration::from_secs(30));
    assert_eq!(r.state(dead), NodeState::Down);
}

/// Nanoprobes that stamp their reports with their own clock (`at`): an "alive" older than the
/// silence it would contradict is no proof of life even when the same neighbour's newer words
/// have not arrived yet; one that is newer still is (path trouble, not down).
#[test]
fn item0_alive_evidence_older_than_the_silence_is_ignored_by_reporter_time() {
    let setup = || {
        let mut h = Harness::new();
        h.join_all(1..=5);
        h.take();
        let dead = id(3);
        let nb = h.cma.neighbours(dead);
        (h, dead, nb[0], nb[1])
    };
    let clock = 1_800_000_000_000_000u64; // the reporters' clocks, µs
    for (alive_at, want) in [
        (clock - 7_000_000, NodeState::Down), // heard 7 s before the report: before the silence
        (clock - 1_000_000, NodeState::Up),   // heard 1 s before: after the silence began
    ] {
        let (mut h, dead, b, d) = setup();
        let mut dead_report = report(ReportKind::Dead, 0, 5000);
        dead_report.peer = dead.as_bytes().to_vec();
        dead_report.epoch = h.cma.node(b).unwrap().peer_epoch;
        dead_report.at = clock;
        h.cma.handle_report(h.now, b, &dead_report);
        let mut back = report(ReportKind::BackAlive, 0, 4000);
        back.peer = dead.as_bytes().to_vec();
        back.epoch = h.cma.node(d).unwrap().peer_epoch;
        back.at = alive_at;
        h.cma.handle_report(h.now, d, &back);
        h.drain();
        h.advance(Duration::from_secs(5));
        let acts = h.take();
        assert_eq!(h.state(dead), want, "alive at {alive_at}: {:#?}", events(&acts));
        let k = kinds(&acts);
        match want {
            NodeState::Down => {
                assert!(!k.contains(&EventKind::PathSuspect), "{k:?}");
                assert_eq!(h.cma.stats().reports_stale, 1);
            }
            _ => assert!(k.contains(&EventKind::PathSuspect), "{k:?}"),
        }
    }
}
