//! Properties of the heartbeat core over random inputs.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use assim_probe::{Action, Applied, Heartbeats, Timing};
use assim_wire::NodeId;
use assim_wire::msg::{Heartbeat, ReportKind};
use common::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
enum Op {
    /// Apply a peer set; node 0 (ourselves) may be in it.
    Apply {
        epoch: u64,
        peers: Vec<u8>,
        timing: usize,
    },
    /// A heartbeat from node `from` (0..8: ourselves, peers, strangers), maybe from elsewhere.
    Beat {
        from: u8,
        elsewhere: bool,
    },
    /// Time passes; the driver calls `handle_timeout` if due (or anyway, when `early`).
    Advance {
        ms: u64,
        early: bool,
    },
    /// A driver that oversleeps: `handle_timeout` far past every deadline.
    Oversleep {
        secs: u64,
    },
    Forget,
}

const TIMINGS: [(u64, u64, u64); 3] = [(1000, 3000, 5000), (250, 750, 1250), (100, 100, 101)];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..8, proptest::collection::vec(0u8..6, 0..6), 0..TIMINGS.len())
            .prop_map(|(epoch, peers, timing)| Op::Apply { epoch, peers, timing }),
        6 => (0u8..8, any::<bool>()).prop_map(|(from, elsewhere)| Op::Beat { from, elsewhere }),
        6 => (0u64..7000, any::<bool>()).prop_map(|(ms, early)| Op::Advance { ms, early }),
        1 => (1u64..100_000).prop_map(|secs| Op::Oversleep { secs }),
        1 => Just(Op::Forget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_inputs_keep_the_invariants(ops in proptest::collection::vec(op(), 1..200)) {
        let start = std::time::Instant::now();
        let mut now = start;
        let mut hb = Heartbeats::new(id(0));
        // Peers reported Dead and not since back alive or reset by a peer-set change.
        let mut dead: HashSet<NodeId> = HashSet::new();
        // Peers ever reported Dead: only they can be back alive (late is never reported).
        let mut ever_dead: HashSet<NodeId> = HashSet::new();
        for op in ops {
            let mut timed_out = false;
            match op {
                Op::Apply { epoch, peers, timing } => {
                    let (i, w, d) = TIMINGS[timing];
                    let mut set = desired(epoch, &[], Timing::from_millis(i, w, d));
                    for n in peers {
                        if set.peers.iter().all(|p| p.node_id != id(n)) {
                            set.peers.push(info(n));
                        }
                    }
                    let before = hb.epoch();
                    let applied = hb.apply(set, now);
                    let expected = match epoch.cmp(&before) {
                        std::cmp::Ordering::Less => Applied::Stale,
                        std::cmp::Ordering::Equal => Applied::Unchanged,
                        std::cmp::Ordering::Greater => Applied::Updated,
                    };
                    prop_assert_eq!(applied, expected);
                    if applied == Applied::Updated {
                        dead.clear();
                        prop_assert!(hb.peers().all(|(p, _)| p.node_id != id(0)));
                    }
                }
                Op::Beat { from, elsewhere } => {
                    let from_addr = if elsewhere { addr(200) } else { addr(from) };
                    let beat = Heartbeat { epoch: 1, interval_ms: 1000 };
                    hb.heartbeat_received(id(from), from_addr, &beat, now);
                }
                Op::Advance { ms, early } => {
                    now += Duration::from_millis(ms);
                    if early || hb.poll_timeout().is_some_and(|t| t <= now) {
                        hb.handle_timeout(now);
                        timed_out = true;
                    }
                }
                Op::Oversleep { secs } => {
                    now += Duration::from_secs(secs);
                    hb.handle_timeout(now);
                    timed_out = true;
                }
                Op::Forget => {
                    hb.forget_all();
                    dead.clear();
                }
            }
            if timed_out {
                // No livelock: nothing left to do at `now`.
                if let Some(t) = hb.poll_timeout() {
                    prop_assert!(t > now, "poll_timeout {:?} <= now {:?}", t - start, now - start);
                }
            }
            let peers: HashSet<NodeId> = hb.peers().map(|(p, _)| p.node_id).collect();
            let mut sends = 0;
            while let Some(action) = hb.poll_action() {
                match action {
                    Action::SendHeartbeat { to, heartbeat, .. } => {
                        sends += 1;
                        prop_assert!(peers.contains(&to));
                        prop_assert_eq!(heartbeat.epoch, hb.epoch());
                    }
                    Action::Report(r) => {
                        prop_assert_eq!(r.epoch, hb.epoch());
                        let peer = NodeId::from_slice(&r.peer).unwrap();
                        match ReportKind::try_from(r.kind).unwrap() {
                            ReportKind::Dead => {
                                prop_assert!(peers.contains(&peer));
                                prop_assert!(dead.insert(peer), "Dead twice for {peer}");
                                ever_dead.insert(peer);
                                prop_assert!(r.silent_ms >= hb.timing().dead.as_millis() as u64);
                            }
                            ReportKind::BackAlive => {
                                prop_assert!(peers.contains(&peer));
                                prop_assert!(ever_dead.contains(&peer), "back alive, never dead");
                                dead.remove(&peer);
                            }
                            ReportKind::Late => prop_assert!(false, "late is never reported"),
                            ReportKind::Martian => prop_assert!(!peers.contains(&peer)),
                            ReportKind::Unspecified => prop_assert!(false, "unspecified report"),
                        }
                    }
                    Action::Status(s) => prop_assert_eq!(s.epoch, hb.epoch()),
                }
            }
            // At most one round per call, however late.
            prop_assert!(sends <= peers.len());
        }
    }
}

/// A longer run with crashes, restarts and packet loss, from a printed seed
/// (`ASSIM_SEED=<n>` replays one).
#[test]
fn seeded_crashes_and_loss_are_detected_in_time_without_false_deaths() {
    let seed: u64 = std::env::var("ASSIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    println!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // The timing this scenario is written for (its reports' silences are checked below).
    let t = Timing::from_millis(1000, 3000, 5000);
    let mut h = Harness::new(0);
    let peers: Vec<u8> = (1..=8).collect();
    h.apply(desired(1, &peers, t));
    for &n in &peers {
        h.add_remote(n, t.interval, Duration::from_millis(rng.gen_range(0..1000)));
    }
    // Each ten-second slice, a remote crashes or restarts with some probability. Loss is
    // modelled as a skipped heartbeat: a remote's next beat slips by one interval.
    let mut down: HashSet<u8> = HashSet::new();
    for slice in 1..=60u32 {
        for &n in &peers {
            if rng.gen_bool(0.1) {
                if down.remove(&n) {
                    h.resume(n);
                } else {
                    down.insert(n);
                    h.stop(n);
                }
            }
            if !down.contains(&n) && rng.gen_bool(0.05) {
                let r = h.remote(n);
                r.next = r.next.map(|x| x + t.interval);
            }
        }
        h.run_until(Duration::from_secs(10) * slice);
    }
    let mut dead: HashSet<Vec<u8>> = HashSet::new();
    let reports = h.reports();
    assert!(
        reports.iter().any(|(_, r)| r.kind == ReportKind::Dead as i32),
        "seed {seed}: no crash"
    );
    for (_, r) in reports {
        match ReportKind::try_from(r.kind).unwrap() {
            ReportKind::Dead => {
                assert!(dead.insert(r.peer.clone()), "seed {seed}: Dead twice");
                // Reported when the dead time elapsed, not later (the harness wakes on time).
                assert_eq!(r.silent_ms, 5000, "seed {seed}");
            }
            ReportKind::BackAlive => {
                dead.remove(&r.peer);
            }
            other => panic!("seed {seed}: unexpected {other:?}"),
        }
    }
    for &n in &peers {
        let reported_dead = dead.contains(id(n).as_bytes().as_slice());
        // Down for the last slice (10 s ≥ dead) ⇔ currently reported dead.
        assert_eq!(reported_dead, down.contains(&n), "seed {seed}: peer {n}");
    }
    assert!(h.steps < 60 * 10 * 20, "seed {seed}: {} steps", h.steps);
}
