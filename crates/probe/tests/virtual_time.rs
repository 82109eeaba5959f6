//! Scenarios of the heartbeat core under virtual time (see `common` for the harness).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use assim_probe::{Action, Applied, DesiredPeers, Timing};
use assim_wire::msg::{PeerLiveness, PeerSet, PeerStatus, ReportKind};
use common::*;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// The timing these scenarios are written for: 1 s / 3 s / 5 s.
fn default_timing() -> Timing {
    Timing::from_millis(1000, 3000, 5000)
}

/// `t` lies in `[expected, expected + one interval]`.
fn within_interval(t: Duration, expected: Duration, timing: Timing) {
    assert!(
        t >= expected && t <= expected + timing.interval,
        "{t:?} not within one interval after {expected:?}"
    );
}

#[test]
fn steady_peers_are_never_reported() {
    let mut h = Harness::new(0);
    assert_eq!(h.apply(desired(1, &[1, 2, 3], default_timing())), Applied::Updated);
    h.add_remote(1, S, 100 * MS);
    h.add_remote(2, S, 700 * MS);
    // Slower than us but always inside the warn time.
    h.add_remote(3, 2900 * MS, 2900 * MS);
    h.run_until(120 * S);

    assert!(h.reports().is_empty(), "{:?}", h.reports());
    for n in 1..=3 {
        assert_eq!(h.liveness(n), Some(PeerLiveness::Alive));
    }
    // One heartbeat per peer per interval, starting at once.
    let sends = h.send_times(1);
    assert_eq!(sends.len(), 121);
    assert_eq!(sends[0], Duration::ZERO);
    assert!(sends.windows(2).all(|w| w[1] - w[0] == S));
    assert_eq!(h.hb.stats().heartbeats_sent, 3 * 121);
    // Status: the initial set, then the peers as they came alive; nothing in steady state.
    let statuses = h.statuses();
    assert!((2..=4).contains(&statuses.len()), "{statuses:?}");
    assert!(statuses.last().unwrap().0 <= 4 * S);
    assert_eq!(statuses.last().unwrap().1, h.hb.status());
}

#[test]
fn silent_peer_is_late_here_then_reported_dead_exactly_once() {
    let t = default_timing();
    let mut h = Harness::new(0);
    h.apply(desired(4, &[1, 2], t));
    h.add_remote(1, S, 500 * MS);
    h.add_remote(2, S, 500 * MS);
    h.run_until(10 * S);
    let last_heard = 9500 * MS;
    h.stop(1);
    h.run_until(last_heard + t.warn + t.interval);
    // Late is kept here: the CMA hears nothing until the peer is dead.
    assert_eq!(h.liveness(1), Some(PeerLiveness::Late));
    assert!(h.reports().is_empty(), "{:?}", h.reports());
    h.run_until(60 * S);

    let dead = h.report_times(ReportKind::Dead, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    within_interval(dead[0], last_heard + t.dead, t);
    assert_eq!(h.liveness(1), Some(PeerLiveness::Dead));
    // The other peer is untouched; nothing else was reported.
    assert_eq!(h.reports().len(), 1);
    let (_, r) = h.reports().into_iter().find(|(_, r)| r.kind == ReportKind::Dead as i32).unwrap();
    assert_eq!(r.silent_ms, 5000);
    assert_eq!(r.peer_addr, "10.0.0.1:1984");
    assert_eq!(r.epoch, 4);
    // We keep heartbeating a dead peer: it may come back.
    assert!(h.send_times(1).iter().any(|&s| s > 50 * S));
}

#[test]
fn resumed_peer_is_back_alive_once() {
    let mut h = Harness::new(0);
    h.apply(desired(1, &[1], default_timing()));
    h.add_remote(1, S, 500 * MS);
    h.run_until(5 * S);
    h.stop(1);
    h.run_until(20 * S);
    assert_eq!(h.report_times(ReportKind::Dead, 1).len(), 1);
    h.resume(1);
    h.run_until(60 * S);

    assert_eq!(h.report_times(ReportKind::BackAlive, 1), vec![20 * S]);
    assert_eq!(h.report_times(ReportKind::Dead, 1).len(), 1);
    assert!(h.report_times(ReportKind::Late, 1).is_empty());
    assert_eq!(h.liveness(1), Some(PeerLiveness::Alive));
    let (_, back) =
        h.reports().into_iter().find(|(_, r)| r.kind == ReportKind::BackAlive as i32).unwrap();
    assert_eq!(back.silent_ms, 15_500);
}

#[test]
fn late_peer_that_resumes_sends_the_cma_nothing() {
    let mut h = Harness::new(0);
    h.apply(desired(1, &[1], default_timing()));
    h.add_remote(1, S, Duration::ZERO);
    h.run_until(2 * S);
    let statuses = h.statuses().len();
    h.stop(1);
    h.run_until(6 * S); // Late at 5 s.
    assert_eq!(h.liveness(1), Some(PeerLiveness::Late));
    h.resume(1);
    h.run_until(30 * S);
    assert_eq!(h.liveness(1), Some(PeerLiveness::Alive));
    // No report and no status: late and back again is the nanoprobe's own business.
    assert!(h.reports().is_empty(), "{:?}", h.reports());
    assert_eq!(h.statuses().len(), statuses);
}

#[test]
fn new_peer_gets_a_grace_period_until_dead() {
    let t = default_timing();
    let mut h = Harness::new(0);
    h.run_until(3 * S);
    h.apply(desired(1, &[1], t));
    h.run_until(30 * S);
    // Never heard: no Late during the grace period, Dead once `dead` after joining.
    assert!(h.report_times(ReportKind::Late, 1).is_empty());
    assert_eq!(h.report_times(ReportKind::Dead, 1), vec![3 * S + t.dead]);
    assert_eq!(h.reports()[0].1.silent_ms, 5000);
}

#[test]
fn martian_is_reported_and_rate_limited() {
    let t = default_timing();
    let mut h = Harness::new(0);
    h.apply(desired(1, &[1], t));
    h.add_remote(1, S, Duration::ZERO);
    h.add_remote(9, S, Duration::ZERO);
    h.add_remote(8, 300 * MS, Duration::ZERO);
    h.remote(8).from = "[2001:db8::8]:4000".parse().unwrap();
    h.run_until(20 * S);

    let m9 = h.report_times(ReportKind::Martian, 9);
    assert_eq!(m9, vec![Duration::ZERO, 5 * S, 10 * S, 15 * S, 20 * S]);
    let m8 = h.report_times(ReportKind::Martian, 8);
    assert_eq!(m8.len(), 4); // 0, 5.1, 10.2, 15.3
    assert!(m8.windows(2).all(|w| w[1] - w[0] >= t.dead));
    let (_, r) = h
        .reports()
        .into_iter()
        .find(|(_, r)| r.kind == ReportKind::Martian as i32 && r.peer == id(8).as_bytes())
        .unwrap();
    assert_eq!(r.peer_addr, "[2001:db8::8]:4000");
    assert_eq!(r.epoch, 1);
    assert_eq!(h.hb.stats().martians, 21 + 67);
    // Martians never enter the peer set or its status.
    assert_eq!(h.hb.peers().count(), 1);
    assert!(h.report_times(ReportKind::Late, 1).is_empty());
}

#[test]
fn peer_heard_from_a_new_address_stays_alive_and_is_counted() {
    let mut h = Harness::new(0);
    h.apply(desired(1, &[1], default_timing()));
    h.add_remote(1, S, Duration::ZERO);
    h.run_until(5 * S);
    h.remote(1).from = "192.0.2.77:1984".parse().unwrap();
    h.run_until(30 * S);
    assert!(h.reports().is_empty());
    assert_eq!(h.liveness(1), Some(PeerLiveness::Alive));
    assert_eq!(h.hb.stats().address_changes, 1);
    assert_eq!(h.hb.stats().martians, 0);
    // We keep sending to the address the CMA gave us.
    assert!(h.log.iter().all(|(_, a)| match a {
        Action::SendHeartbeat { addr, .. } => *addr == addr_of(1),
        _ => true,
    }));
}

fn addr_of(n: u8) -> SocketAddr {
    addr(n)
}

#[test]
fn epoch_convergence() {
    let t = default_timing();
    let mut h = Harness::new(0);
    assert_eq!(h.apply(desired(5, &[1, 2], t)), Applied::Updated);
    h.add_remote(1, S, 200 * MS);
    h.run_until(10 * S);
    assert_eq!(h.liveness(1), Some(PeerLiveness::Alive));
    assert_eq!(h.liveness(2), Some(PeerLiveness::Dead));
    assert_eq!(h.report_times(ReportKind::Dead, 2), vec![5 * S]);

    // Older: ignored and counted.
    assert_eq!(h.apply(desired(4, &[3], t)), Applied::Stale);
    assert_eq!(h.hb.stats().stale_peer_sets, 1);
    // Same epoch (a re-send, whatever it says): ignored, not stale.
    assert_eq!(h.apply(desired(5, &[3], t)), Applied::Unchanged);
    assert_eq!(h.hb.stats().stale_peer_sets, 1);
    assert_eq!(h.hb.epoch(), 5);
    let ids: Vec<_> = h.hb.peers().map(|(p, _)| p.node_id).collect();
    assert_eq!(ids, vec![id(1), id(2)]);

    // Newer: retained peers keep their state, the new one starts Unknown.
    let statuses_before = h.statuses().len();
    assert_eq!(h.apply(desired(6, &[1, 2, 3], t)), Applied::Updated);
    assert_eq!(h.hb.epoch(), 6);
    assert_eq!(h.liveness(1), Some(PeerLiveness::Alive));
    assert_eq!(h.liveness(2), Some(PeerLiveness::Dead));
    assert_eq!(h.liveness(3), Some(PeerLiveness::Unknown));
    h.run_until(12 * S);
    // The retained dead peer is not reported again; the change produced a status with epoch 6.
    assert_eq!(h.report_times(ReportKind::Dead, 2).len(), 1);
    let statuses = h.statuses();
    assert!(statuses.len() > statuses_before);
    assert!(
        statuses[statuses_before..].iter().any(|(_, s)| s.epoch == 6 && s.expecting.len() == 3)
    );
    // The new peer's first heartbeat went out at once.
    assert_eq!(h.send_times(3)[0], 10 * S);

    // Removed peers are forgotten: no sends, no reports; their heartbeats are martians.
    assert_eq!(h.apply(desired(7, &[1, 3], t)), Applied::Updated);
    let sends_to_2 = h.send_times(2).len();
    h.add_remote(2, S, Duration::ZERO);
    h.run_until(30 * S);
    assert_eq!(h.send_times(2).len(), sends_to_2);
    assert!(h.liveness(2).is_none());
    assert!(!h.report_times(ReportKind::Martian, 2).is_empty());
    assert!(h.report_times(ReportKind::BackAlive, 2).is_empty());
    assert_eq!(h.report_times(ReportKind::Dead, 3), vec![12 * S + 3 * S]);
    assert!(h.reports().iter().all(|(at, r)| *at < 10 * S || r.epoch >= 6));
}

#[test]
fn timing_from_the_peer_set_changes_the_send_interval() {
    let mut h = Harness::new(0);
    h.apply(desired(1, &[1], default_timing()));
    h.run_until(3500 * MS);
    let wire = PeerSet {
        epoch: 2,
        peers: vec![desired(0, &[1], default_timing()).to_wire().peers.remove(0)],
        interval_ms: 250,
        warn_ms: 750,
        dead_ms: 1250,
    };
    let d = DesiredPeers::try_from(&wire).unwrap();
    assert_eq!(h.apply(d), Applied::Updated);
    assert_eq!(h.hb.timing(), Timing::from_millis(250, 750, 1250));
    h.run_until(10 * S);

    let sends = h.send_times(1);
    let before: Vec<_> = sends.iter().copied().filter(|&t| t < 3500 * MS).collect();
    let after: Vec<_> = sends.iter().copied().filter(|&t| t >= 3500 * MS).collect();
    assert_eq!(before, vec![Duration::ZERO, S, 2 * S, 3 * S]);
    assert_eq!(after.len(), 27); // 3.50, 3.75, ..., 10.00
    assert!(after.windows(2).all(|w| w[1] - w[0] == 250 * MS));
    for (at, a) in &h.log {
        if let Action::SendHeartbeat { heartbeat, .. } = a {
            let expected = if *at - h.start >= 3500 * MS { (2, 250) } else { (1, 1000) };
            assert_eq!((heartbeat.epoch, heartbeat.interval_ms), expected);
        }
    }
}

#[test]
fn status_is_periodic_on_change() {
    let t = default_timing();
    let mut h = Harness::new(0);
    h.apply(desired(1, &[1, 2, 3, 4, 5, 6, 7], t));
    h.add_remote(1, S, Duration::ZERO);
    // Flaps: Late after 3 s of silence, back at 3.5 s, forever (never reported).
    h.add_remote(2, 3500 * MS, Duration::ZERO);
    // Flaps: Dead after 5 s of silence, back at 5.5 s, forever.
    h.add_remote(7, 5500 * MS, 100 * MS);
    h.run_until(60 * S);

    let statuses = h.statuses();
    // At most one per interval, each different from the one before, the newest state last
    // (lateness aside: a change between Alive and Late alone sends no status).
    let late_as_alive = |mut s: PeerStatus| {
        for p in &mut s.expecting {
            if p.liveness == PeerLiveness::Late as i32 {
                p.liveness = PeerLiveness::Alive as i32;
            }
        }
        s
    };
    assert!(statuses.windows(2).all(|w| w[1].0 - w[0].0 >= t.interval));
    assert!(statuses.windows(2).all(|w| w[1].1 != w[0].1));
    assert_eq!(late_as_alive(statuses.last().unwrap().1.clone()), late_as_alive(h.hb.status()));
    // Peers 3..6 all died at the same instant: one status says so.
    let dead_at_5s: Vec<_> = statuses.iter().filter(|(at, _)| *at == 5 * S).collect();
    assert_eq!(dead_at_5s.len(), 1);
    let dead = dead_at_5s[0]
        .1
        .expecting
        .iter()
        .filter(|p| p.liveness == PeerLiveness::Dead as i32)
        .count();
    assert_eq!(dead, 4);
    // The peer flapping between alive and dead was reported each time, and the status
    // followed; the one flapping between alive and late was not, and statuses did not follow.
    assert!(h.report_times(ReportKind::Dead, 7).len() >= 10);
    assert!(h.report_times(ReportKind::BackAlive, 7).len() >= 10);
    assert!(h.reports().iter().all(|(_, r)| r.peer != id(2).as_bytes()));
    assert!(statuses.len() >= 20);
    assert!(statuses.len() <= 2 * h.report_times(ReportKind::Dead, 7).len() + 4);
}

#[test]
fn suspended_process_sends_one_round_then_resumes_cadence() {
    let mut h = Harness::new(0);
    h.apply(desired(1, &[1, 2], default_timing()));
    h.add_remote(1, S, Duration::ZERO);
    h.add_remote(2, S, Duration::ZERO);
    h.run_until(10 * S);
    let sent = h.hb.stats().heartbeats_sent;
    // The process sleeps for an hour: the next call is far past every deadline.
    let wake = h.now + Duration::from_secs(3600);
    h.hb.handle_timeout(wake);
    assert_eq!(h.hb.stats().heartbeats_sent, sent + 2);
    assert_eq!(h.hb.poll_timeout(), Some(wake + S));
}
