//! Small simulations (hundreds to a few thousand nodes, a few virtual minutes) that run in
//! seconds in a debug build. Each prints its report when it fails, with the seed to replay it.

use std::time::Duration;

use assim_sim::{Report, Scenario, StepKind, run};

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn go(sc: Scenario) -> Report {
    sc.validate().expect("valid scenario");
    run(sc, false, false)
}

fn check(r: &Report, name: &str) -> bool {
    r.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}")).passed
}

fn assert_checks(r: &Report, names: &[&str]) {
    for n in names {
        assert!(check(r, n), "check {n:?} failed (seed {}):\n{}", r.seed, r.human());
    }
}

const CORE_CHECKS: &[&str] = &[
    "registered",
    "crashes detected",
    "detection bound",
    "no false host.down",
    "ring consistent",
    "nanoprobes converged",
    "CMA state matches",
    "applied exactly once",
    "store matches core",
    "spool",
];

#[test]
fn crashes_are_detected_within_the_bound_without_false_positives() {
    let sc = Scenario::new(11, 1000)
        .step(s(0), StepKind::Crash { count: 30, over: s(10) })
        .step(s(20), StepKind::Leave(10));
    let r = go(sc);
    assert_checks(&r, CORE_CHECKS);
    assert_eq!(r.detection.crashes, 30);
    assert_eq!(r.detection.detected, 30);
    assert_eq!(r.false_down.count, 0);
    assert_eq!(r.events_emitted.host_left, 10);
    assert!(r.detection.latency.max_ms <= r.detection.bound_ms, "{}", r.human());
    // No news is good news.
    assert!(r.steady.in_per_node_per_s < 0.001, "{}", r.human());
    assert!(r.passed, "{}", r.human());
}

#[test]
fn five_percent_loss_raises_no_false_down() {
    let mut sc = Scenario::new(5, 1000);
    sc.network.loss = 0.05;
    sc.network.dup = 0.01;
    sc.duration = s(180);
    let sc = sc.step(s(60), StepKind::Crash { count: 10, over: s(5) });
    let r = go(sc);
    assert_checks(&r, CORE_CHECKS);
    assert_eq!(r.false_down.count, 0, "{}", r.human());
    assert!(r.network.lost > 0 && r.network.duplicated > 0);
    assert_eq!(r.detection.detected, 10);
}

#[test]
fn same_seed_same_report() {
    let sc = || {
        let mut sc = Scenario::new(42, 300)
            .step(s(0), StepKind::Crash { count: 5, over: s(3) })
            .step(s(10), StepKind::CmaRestart { down_for: s(1) });
        sc.network.loss = 0.02;
        sc.network.dup = 0.02;
        sc
    };
    let a = go(sc()).deterministic_json();
    let b = go(sc()).deterministic_json();
    assert_eq!(a, b);
    let mut other = sc();
    other.seed = 43;
    assert_ne!(a, go(other).deterministic_json());
}

#[test]
fn cma_restart_mid_run_loses_nothing() {
    let sc = Scenario::new(7, 800)
        .step(s(0), StepKind::Crash { count: 5, over: s(2) })
        .step(s(3), StepKind::CmaRestart { down_for: s(2) })
        .step(s(20), StepKind::Crash { count: 5, over: s(2) })
        .step(s(30), StepKind::Leave(5));
    let r = go(sc);
    assert_checks(&r, CORE_CHECKS);
    assert_eq!(r.cma_restarts, 1);
    assert_eq!(r.detection.detected, 10, "{}", r.human());
    assert_eq!(r.events_emitted.host_left, 5);
    assert_eq!(r.store_mismatches, 0);
}

/// Issue 12 / issue 16 item 0: hosts crash while the CMA is down; their neighbours' dead
/// reports wait in the spools and reach the CMA when it is back. Every such host must end down
/// (the detection bound does not apply: nobody could decide while the CMA was down).
#[test]
fn hosts_that_crash_while_the_cma_is_down_end_down() {
    let sc = Scenario::new(12, 300)
        .step(s(0), StepKind::CmaRestart { down_for: s(20) })
        .step(s(2), StepKind::Crash { count: 6, over: s(3) });
    let r = go(sc);
    assert_checks(
        &r,
        &["registered", "crashes detected", "CMA state matches", "no false host.down", "spool"],
    );
    assert_eq!(r.detection.crashes, 6);
    assert_eq!(r.detection.detected, 6, "{}", r.human());
    assert_eq!(r.ring.down, 6, "{}", r.human());
    assert!(r.delivery.reports_dead >= 6, "{}", r.human());
}

#[test]
fn crashed_nodes_restart_and_rejoin() {
    let sc = Scenario::new(8, 500)
        .step(s(0), StepKind::RestartAfter(s(20)))
        .step(s(1), StepKind::Crash { count: 10, over: s(2) });
    let r = go(sc);
    assert_checks(&r, CORE_CHECKS);
    assert_eq!(r.restarts, 10);
    assert_eq!(r.ring.up, 500, "{}", r.human());
    assert_eq!(r.delivery.hello.applied, 510);
}

#[test]
fn switch_crash_is_one_switch_event_and_its_hosts_unreachable() {
    let mut sc = Scenario::new(9, 2000).step(s(5), StepKind::CrashSwitch(3));
    sc.switches = 20;
    let r = go(sc);
    // Issue 13: rings per switch and an upper ring: the switch's 100 hosts go silent together,
    // its representatives are reported from outside, the CMA probes the whole ring and raises
    // one switch.down; the hosts are unreachable, none is down.
    assert_eq!(r.detection.switch_crashes, 100);
    assert_eq!(r.detection.detected, 100, "{}", r.human());
    assert_eq!(r.switch_down_events, 1, "{}", r.human());
    assert_eq!(r.host_down_events, 0, "{}", r.human());
    assert_eq!(r.unreachable_hosts, 100);
    assert_eq!(r.ring.unreachable, 100);
    assert!(r.detection_ms.switches.max > 0.0);
    assert_checks(&r, CORE_CHECKS);
    assert_checks(&r, &["switch sw3 crashed: one switch event"]);
}

#[test]
fn partition_cuts_off_a_switch_and_heals() {
    let mut sc =
        Scenario::new(10, 1000).step(s(5), StepKind::Partition { switches: vec![2], for_: s(30) });
    sc.switches = 20;
    let r = go(sc);
    let p = &r.partitions[0];
    assert_eq!(p.nodes_inside, 50);
    // Issue 13: the 50 hosts cut off are one switch event and unreachable, not down; one
    // switch.up when the partition heals, and they are up again.
    assert_eq!(p.host_down_inside, 0, "{}", r.human());
    assert_eq!(r.false_down.cut_off, 0);
    assert_eq!(r.false_host_down, 0);
    assert_eq!(r.switch_down_events, 1, "{}", r.human());
    assert_eq!(r.unreachable_hosts, 50);
    assert_eq!(r.ring.unreachable, 0, "all back after the heal");
    assert_checks(
        &r,
        &[
            "registered",
            "no false host.down",
            "switch sw2 partitioned: one switch event",
            "ring consistent",
            "nanoprobes converged",
            "CMA state matches",
            "applied exactly once",
        ],
    );
}

#[test]
fn heartbeats_stay_inside_switches_except_the_upper_ring() {
    let mut sc = Scenario::new(12, 400);
    sc.switches = 8;
    sc.duration = s(5);
    let flat = go(Scenario { wiring: false, ..sc.clone() });
    let rings = go(sc);
    // One flat ring: a neighbour is on another switch 7 times in 8. Rings per switch: only the
    // upper ring crosses (one pair of directions per switch).
    assert!(flat.heartbeats.cross_switch_share > 0.7, "{}", flat.human());
    assert!(rings.heartbeats.cross_switch_share < 0.1, "{}", rings.human());
    assert_eq!(rings.ring.home_rings, 8);
    assert_eq!(rings.ring.upper_ring, 16);
    assert_checks(&rings, &["registered", "ring consistent", "nanoprobes converged"]);
}

#[test]
fn scenario_file_drives_a_run() {
    let sc = Scenario::from_toml(
        r#"
        nodes = 200
        switches = 4
        seed = 3
        duration = "40s"
        [[step]]
        at = "1s"
        crash = 4
        [[step]]
        at = "2s"
        leave = 2
        "#,
    )
    .unwrap();
    let r = go(sc);
    assert_checks(&r, CORE_CHECKS);
    assert_eq!(r.detection.detected, 4);
    assert_eq!(r.events_emitted.host_left, 2);
}

#[test]
fn leaving_inside_a_partition_is_a_silent_stop() {
    // Leavers whose goodbye cannot reach the CMA give up after 3 s, like the daemon; to the CMA
    // that is a crash, so their host.down is expected, not false.
    let mut sc = Scenario::new(2, 600)
        .step(s(5), StepKind::Partition { switches: vec![4], for_: s(30) })
        .step(s(5), StepKind::Leave(60));
    sc.switches = 12;
    let r = go(sc);
    assert!(r.detection.goodbye_lost > 0, "{}", r.human());
    assert_eq!(r.false_down.count, 0, "{}", r.human());
    // After the partition heals, observations queued inside it ("sw4-n230 hears sw4-n223") are
    // made under an old peer-set epoch: the CMA does not let them revive the long-gone leaver.
    assert_eq!(r.false_down.false_up, 0, "{}", r.human());
    assert_eq!(r.false_down.repeat_down, 0, "{}", r.human());
    assert_checks(
        &r,
        &["crashes detected", "ring consistent", "CMA state matches", "applied exactly once"],
    );
}

/// Issue 16 item 9: crashed nodes that lose their spool come back numbering their records from
/// 1 under a new incarnation; the CMA takes them (it used to drop them as duplicates up to the
/// old high-water mark, so they stayed in the spool for good and never counted as applied).
#[test]
fn item_9_nodes_that_lose_their_spool_are_heard_again() {
    // Crash 4 nodes: their neighbours report them (records in their spools), they report their
    // peers until they die. Then 2 of them lose their disk and all come back.
    let sc = Scenario::new(19, 300)
        .step(s(0), StepKind::Crash { count: 4, over: s(1) })
        .step(s(10), StepKind::LoseSpool(2))
        .step(s(12), StepKind::Restart(4))
        .step(s(30), StepKind::Crash { count: 6, over: s(2) });
    let r = go(sc);
    assert_eq!(r.spools_lost, 2);
    assert_eq!(r.restarts, 4);
    assert_checks(&r, CORE_CHECKS);
    assert_checks(&r, &["CMA inbox rule"]);
    assert!(r.passed, "{}", r.human());
}

#[test]
fn a_crashed_switch_is_probed_from_other_switches_and_nobody_answers() {
    let mut sc = Scenario::new(21, 200).step(s(5), StepKind::CrashSwitch(1));
    sc.switches = 5;
    let r = go(sc);
    // Issue 13: the ring check of the dead switch asks nanoprobes on other switches to probe
    // its hosts (ProbeRequest); they do, and report that nobody answers (ProbeResult).
    let pp = &r.peer_probes;
    assert!(pp.requests > 0, "{}", r.human());
    assert!(pp.probes_sent >= pp.requests, "{}", r.human());
    assert_eq!(pp.answered, 0, "{}", r.human());
    assert!(pp.silent > 0, "{}", r.human());
    assert_eq!(r.switch_down_events, 1, "{}", r.human());
    assert_eq!(r.host_down_events, 0, "{}", r.human());
    assert_checks(&r, CORE_CHECKS);
}

#[test]
fn three_adjacent_switches_cut_off_together_are_three_switch_events() {
    // Four switches: any three are adjacent in the upper ring, so the middle one is watched
    // only by hosts of the other two, which are cut off with it.
    let mut sc = Scenario::new(22, 40)
        .step(s(5), StepKind::Partition { switches: vec![0, 1, 2], for_: s(40) });
    sc.switches = 4;
    let r = go(sc);
    assert_eq!(r.partitions.len(), 1);
    let p = &r.partitions[0];
    assert_eq!(p.nodes_inside, 30);
    assert_eq!(p.host_down_inside, 0, "{}", r.human());
    assert_eq!(r.false_host_down, 0, "{}", r.human());
    assert_eq!(r.switch_down_events, 3, "{}", r.human());
    assert_eq!(r.unreachable_hosts, 30, "{}", r.human());
    assert_eq!(r.ring.unreachable, 0, "all back after the heal");
    // The middle ring's watchers were cut off with it: its check opens when a neighbour's
    // switch goes down (8.3 s with seed 22, one dead time + two check windows), not a round
    // later (13.3 s before that rule).
    assert!(r.detection_ms.switches.max < 10_000.0, "{}", r.human());
    assert_checks(
        &r,
        &[
            "registered",
            "no false host.down",
            "switch sw0 partitioned: one switch event",
            "switch sw1 partitioned: one switch event",
            "switch sw2 partitioned: one switch event",
            "ring consistent",
            "nanoprobes converged",
            "CMA state matches",
            "applied exactly once",
        ],
    );
}
