//! The report of a run: figures, the built-in checks, the human summary and the JSON form.
//!
//! Everything outside `perf` is a function of the scenario (seed included): two runs with the
//! same scenario produce the same report minus `perf` (wall clock and memory).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::engine::{CrashCause, Life, Node, Obs, UnexpectedDown};
use crate::net::NetStats;
use crate::scenario::{Scenario, StepKind};

/// Raw counters kept by the engine.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub events: u64,
    pub cma_datagrams_in: u64,
    pub cma_datagrams_out: u64,
    pub steady_cma_in: u64,
    pub steady_cma_out: u64,
    /// Heartbeats sent in the steady window, and those between nodes of different switches.
    pub steady_heartbeats: u64,
    pub steady_heartbeats_cross: u64,
    /// Per message kind (hello, report, status, goodbye): queued by nanoprobes.
    pub sent: [u64; 4],
    /// Acknowledged to the nanoprobe by its reliable connection.
    pub acked: [u64; 4],
    /// Handed to the CMA core (once per record).
    pub applied: [u64; 4],
    /// Spool records delivered again within one CMA incarnation (a resend after a nanoprobe
    /// restart or an idle resend, or a reliable-layer failure); dropped by the inbox's
    /// next-record rule, never applied twice.
    pub duplicates_applied: [u64; 4],
    /// Delivered again to a restarted CMA (expected; de-duplicated by record, not applied).
    pub redelivered_after_cma_restart: [u64; 4],
    /// Never applied: the sender crashed or left first (spooled kinds: they wait in its spool).
    pub lost_with_sender: [u64; 4],
    /// Never applied: still unacknowledged at the end.
    pub in_flight_at_end: [u64; 4],
    pub gaps: u64,
    pub acked_not_applied: u64,
    /// The CMA shell's inbox: records applied again (at or below the node's last applied one),
    /// applied out of order (beyond the next), refused for another reason than a duplicate or
    /// gap (enrollment, a full inbox), group commits, records made durable, records replayed at
    /// CMA starts.
    pub inbox_applied_twice: u64,
    pub inbox_applied_out_of_order: u64,
    pub inbox_refused: u64,
    pub inbox_syncs: u64,
    pub inbox_records: u64,
    pub inbox_replayed: u64,
    /// Reports emitted by heartbeat cores, by `ReportKind` (unspecified, dead, late,
    /// back-alive, martian).
    pub report_kinds: [u64; 5],
    pub send_refused: u64,
    pub bad_frames: u64,
    pub decode_errors: u64,
    pub unexpected_datagrams: u64,
    /// Probes nanoprobes sent to nodes on other switches for the CMA (issue 13).
    pub peer_probes: u64,
    pub unexpected_messages: u64,
    pub unregistered: u64,
    pub hellos_refused: u64,
    pub rehellos: u64,
    pub peer_sets_sent: u64,
    pub peer_sets_applied: u64,
    pub peer_sets_invalid: u64,
    pub commands_ignored: u64,
    pub goodbyes_unacknowledged: u64,
    pub host_up: u64,
    pub host_down: u64,
    pub host_suspect: u64,
    pub host_left: u64,
    pub path_suspect: u64,
    pub ring_changed: u64,
    /// Discovery results the CMA's engine applied (the synthetic `sockets` results).
    pub discovery_applied: u64,
}

/// The ring at the end, as checked by the engine.
#[derive(Clone, Debug, Default)]
pub struct RingCheck {
    pub members: u64,
    pub up: u64,
    pub suspect: u64,
    pub down: u64,
    pub left: u64,
    pub unreachable: u64,
    pub home_rings: u64,
    pub upper_ring: u64,
    pub problems: Vec<String>,
    pub probes_converged: u64,
    pub probes_diverged: Vec<u32>,
    pub(crate) state_disagreements: Vec<(u32, Life, Option<assim_cma::NodeState>)>,
}

pub(crate) struct Inputs<'a> {
    pub scenario: &'a Scenario,
    pub end: u64,
    pub counters: &'a Counters,
    pub net: &'a NetStats,
    pub obs: &'a Obs,
    pub nodes: &'a [Node],
    pub cma_stats: Option<assim_cma::Stats>,
    pub ring: RingCheck,
    pub wall: Duration,
    pub cma_bytes_per_node: Option<f64>,
    pub spool: SpoolCheck,
    pub check_sets: CheckSetsCheck,
}

/// Desired state at the end: discovery schedules and check sets on the live nodes, against the
/// CMA's decisions and the rules.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CheckSetsCheck {
    /// Live, reachable nodes the CMA has Up (the ones checked).
    pub nodes: u64,
    /// Of those, nodes that reported a `sockets` result and run the checks the rules imply.
    pub with_sockets: u64,
    /// Checks in the sets of the nodes that agree.
    pub checks: u64,
    /// Nodes whose schedule or check set differs from the CMA's or from the rules.
    pub diverged: u64,
    pub problems: Vec<String>,
}

/// The nanoprobes' spools at the end of the run, against what the simulation saw spooled.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SpoolCheck {
    /// Records ever spooled (every node, every incarnation: the spool numbers them).
    pub spooled: u64,
    /// Records the CMA acknowledged.
    pub acked: u64,
    /// Acknowledged records still in a spool.
    pub not_removed: u64,
    /// Nodes whose acknowledged position is beyond what the CMA's inbox took.
    pub acked_not_applied: u64,
    /// Unacknowledged records in the spools of stopped nodes (sent when they restart).
    pub waiting_stopped: u64,
    /// Unacknowledged records in the spools of running nodes at the end.
    pub in_flight: u64,
    /// Running, reachable nodes whose records waited longer than the resend time plus two
    /// detection bounds while the CMA was up.
    pub stuck: u64,
    /// Records missing from a spool, or different from what was spooled.
    pub lost: u64,
    /// Of the nanoprobes running at the end: records resent, sent without the spool, dropped.
    pub resent: u64,
    pub unspooled: u64,
    pub dropped: u64,
    pub problems: Vec<String>,
}

/// Milliseconds distribution.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Distribution {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Distribution {
    fn of(mut us: Vec<u64>) -> Distribution {
        if us.is_empty() {
            return Distribution::default();
        }
        us.sort_unstable();
        let q = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
        Distribution {
            count: us.len() as u64,
            min_ms: q(0.0),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: q(1.0),
        }
    }
}

/// A node named in the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeNote {
    pub node: u32,
    pub host: String,
    pub at_s: f64,
    pub note: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Detection {
    pub crashes: u64,
    /// Crashed by a switch crash step (a subset of `crashes`).
    pub switch_crashes: u64,
    /// Leavers that stopped without their goodbye reaching the CMA (a subset of `crashes`:
    /// indistinguishable from a crash, so a host.down is expected).
    pub goodbye_lost: u64,
    pub detected: u64,
    pub bound_ms: f64,
    /// Detected within the bound.
    pub within_bound: u64,
    /// Crash → host.down, every detected crash.
    pub latency: Distribution,
    /// Crashes with at least one live ring neighbour (these must meet the bound).
    pub with_live_neighbour: u64,
    /// Crashes whose ring neighbours had all crashed within one bound of it: nobody was left to
    /// report it until the ring healed around the dead neighbours, so it takes longer.
    pub all_neighbours_down: u64,
    pub all_neighbours_down_latency: Distribution,
    /// Came back (hello) before the CMA confirmed the crash, or a lost goodbye arrived after
    /// all: by design no host.down.
    pub restarted_before_detection: u64,
    /// Not detected by the end of the run (listed, at most 50).
    pub missed: Vec<NodeNote>,
    /// Detected later than the bound although a neighbour was alive (listed, at most 50).
    pub late: Vec<NodeNote>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FalseDowns {
    /// host.down for a node that was running (or had left) and was not cut off.
    pub count: u64,
    pub list: Vec<NodeNote>,
    /// host.down for running nodes inside a partition (alive but unreachable).
    pub cut_off: u64,
    pub cut_off_list: Vec<NodeNote>,
    /// host.up for a node that was not running (crashed or left): the CMA revived a dead node.
    pub false_up: u64,
    pub false_up_list: Vec<NodeNote>,
    /// host.down again for a crashed node already reported down (after a false host.up).
    pub repeat_down: u64,
    /// host.up ending the suspicion of a node that sent heartbeats after the suspicion opened
    /// and crashed while the word of them was on its way to the CMA: true when made, not
    /// counted as false (the crash must still be reported down).
    pub up_raced_by_crash: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PartitionReport {
    pub switches: Vec<u32>,
    pub start_s: f64,
    pub end_s: f64,
    pub nodes_inside: u64,
    pub host_down_inside: u64,
    pub host_up_inside_after_heal: u64,
    /// `path.suspect` after the heal about or from a host that was inside.
    pub path_suspect_after_heal: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ring {
    pub members: u64,
    pub up: u64,
    pub suspect: u64,
    pub down: u64,
    pub left: u64,
    /// Behind a switch that is down or cut off (issue 13).
    pub unreachable: u64,
    /// Home rings (one per switch when nodes announce their switch) and the upper ring's size.
    pub home_rings: u64,
    pub upper_ring: u64,
    pub consistent: bool,
    pub problems: Vec<String>,
    /// Live nanoprobes running exactly the CMA's current peer set and epoch.
    pub probes_converged: u64,
    pub probes_diverged: u64,
    /// Nodes whose CMA state disagrees with the simulation's truth (running → up, crashed →
    /// down, left → left), partitioned nodes excepted; at most 50 listed.
    pub state_disagreements: u64,
    pub state_disagreement_list: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KindDelivery {
    pub sent: u64,
    pub applied: u64,
    pub acked: u64,
    pub duplicates_applied: u64,
    pub redelivered_after_cma_restart: u64,
    pub lost_with_sender: u64,
    pub in_flight_at_end: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Delivery {
    pub hello: KindDelivery,
    pub report: KindDelivery,
    pub status: KindDelivery,
    pub goodbye: KindDelivery,
    /// Reports by kind as emitted by the heartbeat cores.
    pub reports_dead: u64,
    pub reports_late: u64,
    pub reports_back_alive: u64,
    pub reports_martian: u64,
    /// Records that skipped ahead (a message lost by the reliable layer).
    pub gaps: u64,
    /// Messages acknowledged to the sender but never applied.
    pub acked_not_applied: u64,
    /// Frames the reliable layer refused.
    pub bad_frames: u64,
    pub inbox: InboxReport,
}

/// The CMA shell's inbox: the next-record rule, group commits, replay.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InboxReport {
    /// Group commits (one sync each) and records they made durable.
    pub syncs: u64,
    pub records: u64,
    /// Records applied again after a CMA start (their effects were not stored yet).
    pub replayed: u64,
    /// Spool records the engine applied twice, or beyond the next one (violations).
    pub applied_twice: u64,
    pub applied_out_of_order: u64,
    /// Messages refused for enrollment or a full inbox (none expected: open enrollment, no
    /// disk faults).
    pub refused: u64,
}

/// p50 / p99 / max in ms.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Pct {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl From<&Distribution> for Pct {
    fn from(d: &Distribution) -> Pct {
        Pct { count: d.count, p50: d.p50_ms, p99: d.p99_ms, max: d.max_ms }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DetectionMs {
    pub hosts: Pct,
    pub switches: Pct,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Heartbeats {
    /// Nodes announce their switch (rings per switch); false: one flat ring (`--flat`).
    pub rings_per_switch: bool,
    pub per_node_per_s: f64,
    pub cross_switch_per_node_per_s: f64,
    /// Cross-switch share of all heartbeats.
    pub cross_switch_share: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Steady {
    pub window_s: f64,
    pub cma_datagrams_in: u64,
    pub cma_datagrams_out: u64,
    /// Datagrams received by the CMA per node per second in the window.
    pub in_per_node_per_s: f64,
    pub out_per_node_per_s: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Registration {
    /// Virtual time at which every node was Up at the CMA and ran the peer set the CMA last
    /// sent it (checked once per virtual second).
    pub converged_at_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Events {
    pub host_up: u64,
    pub host_suspect: u64,
    pub host_down: u64,
    pub host_left: u64,
    pub path_suspect: u64,
    pub ring_changed: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Wall clock and memory: the only part that differs between two runs of the same scenario.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Perf {
    pub wall_s: f64,
    pub events_per_s: f64,
    /// Virtual seconds per wall second.
    pub speedup: f64,
    pub registration_wall_s: Option<f64>,
    /// RSS delta of building a CMA core with every node registered, divided by the nodes.
    pub cma_bytes_per_node: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub peak_rss_bytes_per_node: Option<f64>,
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// switch.down and switch.unreachable events (issue 13: one per failed switch).
    pub switch_down_events: u64,
    /// host.down events.
    pub host_down_events: u64,
    /// host.down for nodes that were running (false alarms), cut-off nodes included.
    pub false_host_down: u64,
    /// Distinct hosts made UNREACHABLE during the run.
    pub unreachable_hosts: u64,
    /// Failure → event latency: crashed hosts → host.down, failed switches → switch event.
    pub detection_ms: DetectionMs,
    /// Heartbeat traffic in the steady window, and the part crossing switches.
    pub heartbeats: Heartbeats,
    /// Probes of checked rings by nanoprobes on other switches (`ProbeRequest`, issue 13).
    pub peer_probes: PeerProbes,
    pub seed: u64,
    pub nodes: u32,
    pub switches: u32,
    pub interval_ms: u64,
    pub warn_ms: u64,
    pub dead_ms: u64,
    pub loss_pct: f64,
    pub dup_pct: f64,
    pub steps: Vec<String>,
    pub virtual_s: f64,
    pub events: u64,
    pub registration: Registration,
    pub steady: Steady,
    pub detection: Detection,
    pub false_down: FalseDowns,
    pub partitions: Vec<PartitionReport>,
    pub ring: Ring,
    pub delivery: Delivery,
    pub spool: SpoolCheck,
    pub check_sets: CheckSetsCheck,
    pub events_emitted: Events,
    pub cma: Option<assim_cma::Stats>,
    pub cma_restarts: u64,
    pub rehellos: u64,
    pub store_mismatches: u64,
    pub leaves: u64,
    pub restarts: u64,
    /// Nodes whose spool's disk was lost (`lose_spool` steps, issue 16 item 9).
    pub spools_lost: u64,
    pub network: NetStats,
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub perf: Perf,
}

/// The `ProbeRequest`s of ring checks and what came of them (the CMA's counts are those of
/// its last incarnation).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerProbes {
    /// Requests the CMA sent to nanoprobes on other switches.
    pub requests: u64,
    /// Probe datagrams those nanoprobes sent.
    pub probes_sent: u64,
    /// Results: the target answered the prober / did not.
    pub answered: u64,
    pub silent: u64,
    /// Results that matched no open request.
    pub unmatched: u64,
}

const LIST_MAX: usize = 50;

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn host(nodes: &[Node], i: u32) -> String {
    let n = &nodes[i as usize];
    format!("sw{}-n{i}", n.switch)
}

fn note_of(nodes: &[Node], d: &UnexpectedDown) -> NodeNote {
    NodeNote {
        node: d.node,
        host: host(nodes, d.node),
        at_s: secs(d.at),
        note: format!("{:?} at the time: {}", d.life, d.text),
    }
}

fn kind(c: &Counters, k: usize) -> KindDelivery {
    KindDelivery {
        sent: c.sent[k],
        applied: c.applied[k],
        acked: c.acked[k],
        duplicates_applied: c.duplicates_applied[k],
        redelivered_after_cma_restart: c.redelivered_after_cma_restart[k],
        lost_with_sender: c.lost_with_sender[k],
        in_flight_at_end: c.in_flight_at_end[k],
    }
}

fn describe(s: &crate::scenario::Step) -> String {
    let at = format!("+{:.1}s", s.at.as_secs_f64());
    match &s.kind {
        StepKind::Crash { count, over } => {
            format!("{at}: crash {count} random nodes over {:.1}s", over.as_secs_f64())
        }
        StepKind::CrashNodes(n) => format!("{at}: crash nodes {n:?}"),
        StepKind::CrashSwitch(sw) => format!("{at}: crash switch {sw}"),
        StepKind::Partition { switches, for_ } => {
            format!("{at}: partition switches {switches:?} for {:.1}s", for_.as_secs_f64())
        }
        StepKind::Leave(n) => format!("{at}: {n} random nodes leave (goodbye)"),
        StepKind::Restart(n) => format!("{at}: restart {n} crashed nodes"),
        StepKind::RestartAfter(d) => {
            format!("{at}: from now on crashed nodes restart {:.1}s later", d.as_secs_f64())
        }
        StepKind::CmaRestart { down_for } => {
            format!("{at}: CMA restart ({:.1}s down)", down_for.as_secs_f64())
        }
        StepKind::Loss(l) => format!("{at}: random loss now {:.2}%", l * 100.0),
        StepKind::LoseSpool(n) => format!("{at}: {n} crashed nodes lose their spool"),
    }
}

/// How long the CMA was down between `from` and `to` (virtual µs): the detection bound counts
/// only time in which the CMA could decide.
fn cma_down_between(outages: &[(u64, u64)], from: u64, to: u64) -> u64 {
    outages.iter().map(|&(down, up)| up.min(to).saturating_sub(down.max(from))).sum()
}

pub(crate) fn build(i: Inputs<'_>) -> Report {
    let sc = i.scenario;
    let c = i.counters;
    let n = f64::from(sc.nodes);
    let bound = sc.detection_bound().as_micros() as u64;

    // Detection.
    let crash_times: Vec<Vec<u64>> = {
        let mut v = vec![Vec::new(); i.nodes.len()];
        for cr in &i.obs.crashes {
            v[cr.node as usize].push(cr.at);
        }
        v
    };
    let mut lat = Vec::new();
    let mut lat_alone = Vec::new();
    let (mut within, mut with_live, mut all_down, mut restarted_first) = (0, 0, 0, 0);
    let mut missed = Vec::new();
    let mut late = Vec::new();
    for cr in &i.obs.crashes {
        let neighbours_down = !cr.neighbours.is_empty()
            && cr.neighbours.iter().all(|&nb| {
                crash_times[nb as usize].iter().any(|&t| t + bound >= cr.at && t <= cr.at + bound)
            });
        if neighbours_down {
            all_down += 1;
        } else {
            with_live += 1;
        }
        if cr.restarted_first {
            restarted_first += 1;
            continue;
        }
        match cr.detected_at {
            Some(t) => {
                let l = t - cr.at;
                if !cr.unreachable {
                    lat.push(l);
                }
                if neighbours_down {
                    lat_alone.push(l);
                }
                if l.saturating_sub(cma_down_between(&i.obs.cma_outages, cr.at, t)) <= bound {
                    within += 1;
                } else if !neighbours_down && late.len() < LIST_MAX {
                    late.push(NodeNote {
                        node: cr.node,
                        host: host(i.nodes, cr.node),
                        at_s: secs(cr.at),
                        note: format!("host.down after {:.3}s", secs(l)),
                    });
                }
            }
            None => {
                if missed.len() < LIST_MAX {
                    missed.push(NodeNote {
                        node: cr.node,
                        host: host(i.nodes, cr.node),
                        at_s: secs(cr.at),
                        note: format!(
                            "crashed ({:?}), no host.down by the end; CMA neighbours at crash {:?}",
                            cr.cause, cr.neighbours
                        ),
                    });
                }
            }
        }
    }
    let undetected =
        i.obs.crashes.iter().filter(|cr| cr.detected_at.is_none() && !cr.restarted_first).count()
            as u64;
    let late_live = i
        .obs
        .crashes
        .iter()
        .filter(|cr| {
            cr.detected_at.is_some_and(|t| {
                (t - cr.at).saturating_sub(cma_down_between(&i.obs.cma_outages, cr.at, t)) > bound
            }) && !cr.unreachable
                && !cr.neighbours.is_empty()
                && !cr.neighbours.iter().all(|&nb| {
                    crash_times[nb as usize]
                        .iter()
                        .any(|&t| t + bound >= cr.at && t <= cr.at + bound)
                })
        })
        .count() as u64;
    let detection = Detection {
        crashes: i.obs.crashes.len() as u64,
        switch_crashes: i.obs.crashes.iter().filter(|c| c.cause == CrashCause::Switch).count()
            as u64,
        goodbye_lost: i.obs.crashes.iter().filter(|c| c.cause == CrashCause::GoodbyeLost).count()
            as u64,
        detected: i.obs.crashes.iter().filter(|c| c.detected_at.is_some()).count() as u64,
        bound_ms: bound as f64 / 1000.0,
        within_bound: within,
        latency: Distribution::of(lat),
        with_live_neighbour: with_live,
        all_neighbours_down: all_down,
        all_neighbours_down_latency: Distribution::of(lat_alone),
        restarted_before_detection: restarted_first,
        missed,
        late,
    };

    let false_down = FalseDowns {
        count: i.obs.false_downs.len() as u64,
        list: i.obs.false_downs.iter().take(LIST_MAX).map(|d| note_of(i.nodes, d)).collect(),
        cut_off: i.obs.cut_off_downs.len() as u64,
        cut_off_list: i
            .obs
            .cut_off_downs
            .iter()
            .take(LIST_MAX)
            .map(|d| note_of(i.nodes, d))
            .collect(),
        false_up: i.obs.false_ups.len() as u64,
        up_raced_by_crash: i.obs.ups_raced_by_crash,
        false_up_list: i.obs.false_ups.iter().take(LIST_MAX).map(|d| note_of(i.nodes, d)).collect(),
        repeat_down: i.obs.repeat_downs,
    };
    let partitions: Vec<PartitionReport> = i
        .obs
        .partitions
        .iter()
        .map(|p| PartitionReport {
            switches: p.switches.clone(),
            start_s: secs(p.start),
            end_s: secs(p.end),
            nodes_inside: p.nodes_inside,
            host_down_inside: p.downs_inside,
            host_up_inside_after_heal: p.ups_inside_after,
            path_suspect_after_heal: p.path_suspects_after,
        })
        .collect();

    let rc = &i.ring;
    let ring = Ring {
        members: rc.members,
        up: rc.up,
        suspect: rc.suspect,
        down: rc.down,
        left: rc.left,
        unreachable: rc.unreachable,
        home_rings: rc.home_rings,
        upper_ring: rc.upper_ring,
        consistent: rc.problems.is_empty(),
        problems: rc.problems.iter().take(LIST_MAX).cloned().collect(),
        probes_converged: rc.probes_converged,
        probes_diverged: rc.probes_diverged.len() as u64,
        state_disagreements: rc.state_disagreements.len() as u64,
        state_disagreement_list: rc
            .state_disagreements
            .iter()
            .take(LIST_MAX)
            .map(|(n, life, st)| {
                let st = st.map_or("unknown".to_owned(), |s| s.to_string());
                format!("{} is {life:?} in the simulation but {st} at the CMA", host(i.nodes, *n))
            })
            .collect(),
    };

    let delivery = Delivery {
        hello: kind(c, 0),
        report: kind(c, 1),
        status: kind(c, 2),
        goodbye: kind(c, 3),
        reports_dead: c.report_kinds[1],
        reports_late: c.report_kinds[2],
        reports_back_alive: c.report_kinds[3],
        reports_martian: c.report_kinds[4],
        gaps: c.gaps,
        acked_not_applied: c.acked_not_applied,
        bad_frames: c.bad_frames,
        inbox: InboxReport {
            syncs: c.inbox_syncs,
            records: c.inbox_records,
            replayed: c.inbox_replayed,
            applied_twice: c.inbox_applied_twice,
            applied_out_of_order: c.inbox_applied_out_of_order,
            refused: c.inbox_refused,
        },
    };

    let window = sc.steady.as_secs_f64();
    let steady = Steady {
        window_s: window,
        cma_datagrams_in: c.steady_cma_in,
        cma_datagrams_out: c.steady_cma_out,
        in_per_node_per_s: if window > 0.0 { c.steady_cma_in as f64 / n / window } else { 0.0 },
        out_per_node_per_s: if window > 0.0 { c.steady_cma_out as f64 / n / window } else { 0.0 },
    };

    // Notes: what the current core does, said plainly.
    let mut notes = Vec::new();
    if detection.switch_crashes > 0 && !sc.wiring {
        notes.push(format!(
            "switch crash: {} nodes went silent at once and were reported host.down one by one \
             ({} host.down); the core has one ring ordered by node-id hash and no topology-aware \
             disambiguation yet, so there is no single switch.down / UNREACHABLE event",
            detection.switch_crashes, detection.detected
        ));
    }
    for p in partitions.iter().filter(|_| !sc.wiring) {
        notes.push(format!(
            "partition of switches {:?} ({} running nodes inside, {:.0}s): {} of them reported \
             host.down although alive (the CMA cannot reach them and has no topology-aware \
             disambiguation yet); {} host.up for them after the partition healed",
            p.switches,
            p.nodes_inside,
            p.end_s - p.start_s,
            p.host_down_inside,
            p.host_up_inside_after_heal
        ));
    }
    if detection.all_neighbours_down > 0 {
        notes.push(format!(
            "{} crashes had every ring neighbour crash within one bound; they are detected only \
             after the ring heals around the dead neighbours (latency {:.1}–{:.1}s) and are held \
             to no bound",
            detection.all_neighbours_down,
            detection.all_neighbours_down_latency.min_ms / 1000.0,
            detection.all_neighbours_down_latency.max_ms / 1000.0
        ));
    }
    let redelivered: u64 = c.redelivered_after_cma_restart.iter().sum();
    if redelivered > 0 {
        notes.push(format!(
            "{redelivered} messages were delivered again to the restarted CMA (documented \
             reliable-layer behaviour across a receiver restart) and de-duplicated by record \
             number, as a durable inbox would"
        ));
    }

    // Checks.
    let mut checks = Vec::new();
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check { name: name.into(), passed, detail });
    };
    let registered = i.obs.registered_at.map(secs);
    check(
        "registered",
        registered.is_some(),
        match registered {
            Some(t) => format!("all {} nodes up and running their peer sets at {t:.0}s", sc.nodes),
            None => "the fleet never converged (all up, peer sets applied)".into(),
        },
    );
    check(
        "crashes detected",
        undetected == 0,
        format!(
            "{} of {} crashes reported host.down ({} restarted before detection, {} missed)",
            detection.detected, detection.crashes, restarted_first, undetected
        ),
    );
    check(
        "detection bound",
        late_live == 0,
        format!(
            "{} detected within {:.1}s (dead + 2×interval + slack, time the CMA was down not \
             counted); {} with a live neighbour were late",
            within,
            bound as f64 / 1e6,
            late_live
        ),
    );
    if sc.wiring {
        check(
            "no false host.down",
            false_down.count == 0 && false_down.cut_off == 0 && i.obs.false_unreachable.is_empty(),
            format!(
                "{} host.down for live nodes outside partitions, {} for nodes cut off by a \
                 partition (they must be unreachable instead), {} running nodes made unreachable",
                false_down.count,
                false_down.cut_off,
                i.obs.false_unreachable.len()
            ),
        );
        // Issue 13: one event per failed switch, its hosts unreachable and none down.
        let mut failed: Vec<(u32, u64, Option<u64>)> =
            i.obs.switch_crashed_at.iter().map(|(s, at)| (*s, *at, None)).collect();
        for p in &i.obs.partitions {
            failed.extend(p.switches.iter().map(|s| (*s, p.start, Some(p.end))));
        }
        for (sw, at, end) in failed {
            let during = |e: &&crate::engine::SwitchEvent| {
                e.switch == Some(sw) && e.at >= at && end.is_none_or(|t| e.at <= t + bound)
            };
            let downs = i
                .obs
                .switch_events
                .iter()
                .filter(during)
                .filter(|e| e.kind != assim_cma::EventKind::SwitchUp)
                .count();
            let listed: u64 = i
                .obs
                .switch_events
                .iter()
                .filter(during)
                .filter(|e| e.kind != assim_cma::EventKind::SwitchUp)
                .map(|e| e.hosts.len() as u64)
                .sum();
            let inside = i.nodes.iter().filter(|n| n.switch == sw).count() as u64;
            let host_downs = i
                .obs
                .crashes
                .iter()
                .filter(|c| c.cause == CrashCause::Switch && i.nodes[c.node as usize].switch == sw)
                .filter(|c| c.detected_at.is_some() && !c.unreachable)
                .count()
                + i.obs
                    .cut_off_downs
                    .iter()
                    .filter(|d| i.nodes[d.node as usize].switch == sw)
                    .count();
            let ups = i
                .obs
                .switch_events
                .iter()
                .filter(|e| e.switch == Some(sw) && e.kind == assim_cma::EventKind::SwitchUp)
                .filter(|e| e.at >= at)
                .count();
            let what = if end.is_some() { "partitioned" } else { "crashed" };
            let recovered = end.is_none() || ups == 1;
            check(
                &format!("switch sw{sw} {what}: one switch event"),
                downs == 1 && host_downs == 0 && recovered,
                format!(
                    "{downs} switch.down/unreachable events listing {listed} of its {inside} \
                     hosts, {host_downs} host.down for them{}",
                    if end.is_some() {
                        format!(", {ups} switch.up after it healed")
                    } else {
                        String::new()
                    }
                ),
            );
        }
        // Issue 13: what the cut-off hosts spooled about their peers is not news after the
        // heal (the CMA discounts words made before a return).
        for p in &partitions {
            check(
                &format!("partition {:?}: no stray path.suspect after the heal", p.switches),
                p.path_suspect_after_heal == 0,
                format!(
                    "{} path.suspect about or from its {} hosts after it healed",
                    p.path_suspect_after_heal, p.nodes_inside
                ),
            );
        }
    } else {
        check(
            "no false host.down",
            false_down.count == 0,
            format!(
                "{} host.down for live nodes outside partitions ({} more for nodes cut off by a \
                 partition: one flat ring (--flat) cannot tell them from crashes)",
                false_down.count, false_down.cut_off
            ),
        );
    }
    check(
        "no false host.up",
        false_down.false_up == 0,
        format!(
            "{} host.up for nodes that were not running ({} repeated host.down for them; {} \
             for nodes alive after their suspicion opened that crashed before the word reached \
             the CMA, not counted)",
            false_down.false_up, false_down.repeat_down, false_down.up_raced_by_crash
        ),
    );
    check(
        "ring consistent",
        ring.consistent,
        format!(
            "{} members; every Up/Suspect node in the ring once with two distinct, mutual \
             neighbours{}",
            ring.members,
            if ring.consistent { String::new() } else { format!(": {}", ring.problems.join("; ")) }
        ),
    );
    check(
        "nanoprobes converged",
        ring.probes_diverged == 0,
        format!(
            "{} live nanoprobes run the CMA's current peer set, {} do not",
            ring.probes_converged, ring.probes_diverged
        ),
    );
    check(
        "CMA state matches",
        ring.state_disagreements == 0,
        format!("{} nodes whose CMA state disagrees with the simulation", ring.state_disagreements),
    );
    let dup: u64 = c.duplicates_applied.iter().sum();
    // Spooled kinds (reports, statuses) balance exactly; hellos and goodbyes carry no record
    // number (as in the daemon), so a redelivery to a restarted CMA cannot be told apart.
    let balance = [1, 2]
        .iter()
        .all(|&k| c.sent[k] == c.applied[k] + c.lost_with_sender[k] + c.in_flight_at_end[k]);
    check(
        "applied exactly once",
        c.gaps == 0 && c.acked_not_applied == 0 && balance,
        format!(
            "reports: {} sent, {} applied, {} lost with a crashed sender, {} in flight at the \
             end; {} duplicates dropped by record, {} gaps, {} acked but not applied, spooled kinds balanced: {}",
            c.sent[1],
            c.applied[1],
            c.lost_with_sender[1],
            c.in_flight_at_end[1],
            dup,
            c.gaps,
            c.acked_not_applied,
            balance
        ),
    );
    check(
        "CMA inbox rule",
        c.inbox_applied_twice == 0
            && c.inbox_applied_out_of_order == 0
            && c.inbox_refused == 0
            && c.gaps == 0
            && c.inbox_syncs > 0,
        format!(
            "{} group commits made {} records durable before any acknowledgement; {} replayed at \
             CMA starts; {} duplicates and {} gaps refused by the next-record rule; {} spool \
             records applied twice, {} out of order, {} refused otherwise",
            c.inbox_syncs,
            c.inbox_records,
            c.inbox_replayed,
            dup,
            c.gaps,
            c.inbox_applied_twice,
            c.inbox_applied_out_of_order,
            c.inbox_refused
        ),
    );
    check(
        "store matches core",
        i.obs.store_mismatches == 0,
        format!(
            "{} records differed between the persisted store and the core at CMA restarts",
            i.obs.store_mismatches
        ),
    );
    let sp = &i.spool;
    check(
        "spool",
        sp.lost == 0 && sp.not_removed == 0 && sp.acked_not_applied == 0 && sp.stuck == 0,
        format!(
            "{} records spooled, {} acknowledged and removed, {} waiting in spools of stopped \
             nodes, {} in flight at the end; {} lost, {} acknowledged but not removed, {} \
             acknowledged beyond the inbox, {} live nodes with records stuck{}",
            sp.spooled,
            sp.acked,
            sp.waiting_stopped,
            sp.in_flight,
            sp.lost,
            sp.not_removed,
            sp.acked_not_applied,
            sp.stuck,
            if sp.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", sp.problems.join("; "))
            }
        ),
    );
    let cs = &i.check_sets;
    check(
        "check sets",
        cs.diverged == 0 && cs.problems.is_empty(),
        format!(
            "{} live nodes run the CMA's discovery schedule and check set ({} checks), {} of them \
             with the rules' checks for a reported `sockets` result; {} diverged{}",
            cs.nodes,
            cs.checks,
            cs.with_sockets,
            cs.diverged,
            if cs.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", cs.problems.join("; "))
            }
        ),
    );
    let passed = checks.iter().all(|c| c.passed);

    let wall = i.wall.as_secs_f64().max(1e-9);
    let peak = crate::mem::peak_rss();
    let perf = Perf {
        wall_s: wall,
        events_per_s: c.events as f64 / wall,
        speedup: secs(i.end) / wall,
        registration_wall_s: i.obs.registered_wall.map(|d| d.as_secs_f64()),
        cma_bytes_per_node: i.cma_bytes_per_node,
        peak_rss_mb: peak.map(|b| b as f64 / (1024.0 * 1024.0)),
        peak_rss_bytes_per_node: peak.map(|b| b as f64 / n),
    };

    // Switch incidents: each crashed or partitioned switch → its first switch event.
    let mut sw_lat = Vec::new();
    let mut starts: Vec<(u32, u64)> = i.obs.switch_crashed_at.clone();
    for p in &i.obs.partitions {
        starts.extend(p.switches.iter().map(|s| (*s, p.start)));
    }
    for (sw, at) in &starts {
        if let Some(e) = i.obs.switch_events.iter().find(|e| {
            e.switch == Some(*sw) && e.at >= *at && e.kind != assim_cma::EventKind::SwitchUp
        }) {
            sw_lat.push(e.at - at);
        }
    }
    let switch_down_events =
        i.obs.switch_events.iter().filter(|e| e.kind != assim_cma::EventKind::SwitchUp).count()
            as u64;
    let hb_window = sc.steady.as_secs_f64() * n;
    let heartbeats = Heartbeats {
        rings_per_switch: sc.wiring,
        per_node_per_s: if hb_window > 0.0 { c.steady_heartbeats as f64 / hb_window } else { 0.0 },
        cross_switch_per_node_per_s: if hb_window > 0.0 {
            c.steady_heartbeats_cross as f64 / hb_window
        } else {
            0.0
        },
        cross_switch_share: if c.steady_heartbeats > 0 {
            c.steady_heartbeats_cross as f64 / c.steady_heartbeats as f64
        } else {
            0.0
        },
    };
    let peer_probes = PeerProbes {
        requests: i.cma_stats.map_or(0, |s| s.peer_probe_requests),
        probes_sent: c.peer_probes,
        answered: i.cma_stats.map_or(0, |s| s.peer_probe_answered),
        silent: i.cma_stats.map_or(0, |s| s.peer_probe_silent),
        unmatched: i.cma_stats.map_or(0, |s| s.peer_probe_unmatched),
    };
    Report {
        peer_probes,
        switch_down_events,
        host_down_events: c.host_down,
        false_host_down: (i.obs.false_downs.len() + i.obs.cut_off_downs.len()) as u64,
        unreachable_hosts: i.obs.unreachable.len() as u64,
        detection_ms: DetectionMs {
            hosts: Pct::from(&detection.latency),
            switches: Pct::from(&Distribution::of(sw_lat)),
        },
        heartbeats,
        seed: sc.seed,
        nodes: sc.nodes,
        switches: sc.switches,
        interval_ms: sc.timing.interval.as_millis() as u64,
        warn_ms: sc.timing.warn.as_millis() as u64,
        dead_ms: sc.timing.dead.as_millis() as u64,
        loss_pct: sc.network.loss * 100.0,
        dup_pct: sc.network.dup * 100.0,
        steps: sc.steps.iter().map(describe).collect(),
        virtual_s: secs(i.end),
        events: c.events,
        registration: Registration { converged_at_s: registered },
        steady,
        detection,
        false_down,
        partitions,
        ring,
        delivery,
        spool: i.spool.clone(),
        check_sets: i.check_sets.clone(),
        events_emitted: Events {
            host_up: c.host_up,
            host_suspect: c.host_suspect,
            host_down: c.host_down,
            host_left: c.host_left,
            path_suspect: c.path_suspect,
            ring_changed: c.ring_changed,
        },
        cma: i.cma_stats,
        cma_restarts: i.obs.cma_restarts,
        rehellos: c.rehellos,
        store_mismatches: i.obs.store_mismatches,
        leaves: i.obs.leaves,
        restarts: i.obs.restarts,
        spools_lost: i.obs.spools_lost,
        network: *i.net,
        notes,
        checks,
        passed,
        perf,
    }
}

impl Report {
    /// The JSON value without `perf` (wall clock and memory): equal for equal scenarios.
    pub fn deterministic_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a report serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("perf");
        }
        v
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let d = &self.detection;
        let _ = writeln!(
            s,
            "assim sim: seed {}, {} nodes under {} switches, timing {}/{}/{} ms, loss {:.2}%, dup {:.2}%",
            self.seed,
            self.nodes,
            self.switches,
            self.interval_ms,
            self.warn_ms,
            self.dead_ms,
            self.loss_pct,
            self.dup_pct
        );
        for st in &self.steps {
            let _ = writeln!(s, "  step {st}");
        }
        let _ = writeln!(
            s,
            "virtual time {:.1}s, {} events, wall {:.1}s ({:.2}M events/s, {:.0}× real time)",
            self.virtual_s,
            self.events,
            self.perf.wall_s,
            self.perf.events_per_s / 1e6,
            self.perf.speedup
        );
        match (self.registration.converged_at_s, self.perf.registration_wall_s) {
            (Some(v), Some(w)) => {
                let _ = writeln!(
                    s,
                    "registration: all {} nodes up and in the ring, peer sets applied, at {v:.0}s virtual ({w:.1}s wall)",
                    self.nodes
                );
            }
            _ => {
                let _ = writeln!(s, "registration: NOT converged");
            }
        }
        if self.peer_probes.requests > 0 {
            let pp = &self.peer_probes;
            let _ = writeln!(
                s,
                "peer probes (ring checks): {} requests to nanoprobes on other switches, {} probes sent, {} answered, {} silent, {} unmatched",
                pp.requests, pp.probes_sent, pp.answered, pp.silent, pp.unmatched
            );
        }
        let _ = writeln!(
            s,
            "steady state ({:.0}s window): CMA received {:.4} and sent {:.4} datagrams per node per second",
            self.steady.window_s, self.steady.in_per_node_per_s, self.steady.out_per_node_per_s
        );
        let _ = writeln!(
            s,
            "detection: {} crashes ({} by switch crash, {} leavers whose goodbye never arrived), {} host.down, {} within {:.1}s; latency min {:.0} / p50 {:.0} / p99 {:.0} / max {:.0} ms",
            d.crashes,
            d.switch_crashes,
            d.goodbye_lost,
            d.detected,
            d.within_bound,
            d.bound_ms / 1000.0,
            d.latency.min_ms,
            d.latency.p50_ms,
            d.latency.p99_ms,
            d.latency.max_ms
        );
        if d.all_neighbours_down > 0 || d.restarted_before_detection > 0 {
            let _ = writeln!(
                s,
                "  {} crashes with every ring neighbour also crashed (max {:.1}s); {} restarted before detection",
                d.all_neighbours_down,
                d.all_neighbours_down_latency.max_ms / 1000.0,
                d.restarted_before_detection
            );
        }
        for m in d.missed.iter().chain(&d.late) {
            let _ = writeln!(s, "  {} (node {}) at {:.1}s: {}", m.host, m.node, m.at_s, m.note);
        }
        let sw = &self.detection_ms.switches;
        let _ = writeln!(
            s,
            "switches: {} switch.down/unreachable events, {} hosts made unreachable, {} host.down in all; switch detection p50 {:.0} / p99 {:.0} / max {:.0} ms",
            self.switch_down_events,
            self.unreachable_hosts,
            self.host_down_events,
            sw.p50,
            sw.p99,
            sw.max
        );
        let hb = &self.heartbeats;
        let _ = writeln!(
            s,
            "heartbeats ({}): {:.3} per node per second, {:.4} crossing switches ({:.2}%)",
            if hb.rings_per_switch { "rings per switch" } else { "one flat ring" },
            hb.per_node_per_s,
            hb.cross_switch_per_node_per_s,
            hb.cross_switch_share * 100.0
        );
        let f = &self.false_down;
        let _ = writeln!(
            s,
            "false host.down: {} (live, not cut off); {} for nodes cut off by a partition",
            f.count, f.cut_off
        );
        if f.false_up > 0 {
            let _ = writeln!(
                s,
                "false host.up: {} (node not running), {} repeated host.down",
                f.false_up, f.repeat_down
            );
        }
        for m in f.list.iter().chain(&f.false_up_list).take(10) {
            let _ = writeln!(s, "  {} (node {}) at {:.1}s: {}", m.host, m.node, m.at_s, m.note);
        }
        let r = &self.ring;
        let _ = writeln!(
            s,
            "ring: {} members; CMA says {} up, {} suspect, {} down, {} left; consistent: {}; nanoprobes converged {} / diverged {}",
            r.members,
            r.up,
            r.suspect,
            r.down,
            r.left,
            r.consistent,
            r.probes_converged,
            r.probes_diverged
        );
        let e = &self.events_emitted;
        let _ = writeln!(
            s,
            "events: host.up {}, host.suspect {}, host.down {}, host.left {}, path.suspect {}, ring.changed {}",
            e.host_up, e.host_suspect, e.host_down, e.host_left, e.path_suspect, e.ring_changed
        );
        let dl = &self.delivery;
        let _ = writeln!(
            s,
            "delivery: reports {} sent / {} applied ({} dead, {} late, {} back-alive, {} martian), statuses {} / {}, hellos {} / {}, goodbyes {} / {}; {} re-hellos after CMA restarts",
            dl.report.sent,
            dl.report.applied,
            dl.reports_dead,
            dl.reports_late,
            dl.reports_back_alive,
            dl.reports_martian,
            dl.status.sent,
            dl.status.applied,
            dl.hello.sent,
            dl.hello.applied,
            dl.goodbye.sent,
            dl.goodbye.applied,
            self.rehellos
        );
        let nw = &self.network;
        let _ = writeln!(
            s,
            "network: {} datagrams, {} lost, {} cut by partitions, {} duplicated, {} to stopped endpoints",
            nw.sent, nw.lost, nw.cut, nw.duplicated, nw.to_dead_endpoint
        );
        if let Some(b) = self.perf.cma_bytes_per_node {
            let _ = writeln!(s, "memory: CMA core ≈ {b:.0} bytes per node (RSS delta)");
        }
        if let (Some(mb), Some(b)) = (self.perf.peak_rss_mb, self.perf.peak_rss_bytes_per_node) {
            let _ = writeln!(
                s,
                "memory: simulator peak RSS {mb:.0} MB ({b:.0} bytes per node: both ends, all cores)"
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let _ = writeln!(s, "checks:");
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  [{}] {}: {}",
                if c.passed { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        let _ = writeln!(s, "{}", if self.passed { "PASSED" } else { "FAILED" });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::cma_down_between;

    #[test]
    fn only_the_cma_outage_inside_the_window_is_discounted() {
        let outages = [(10, 20), (30, 40)];
        assert_eq!(cma_down_between(&outages, 0, 5), 0, "before any outage");
        assert_eq!(cma_down_between(&outages, 0, 15), 5, "detected during one");
        assert_eq!(cma_down_between(&outages, 12, 25), 8, "crashed during one");
        assert_eq!(cma_down_between(&outages, 0, 50), 20, "both, whole");
        assert_eq!(cma_down_between(&outages, 22, 28), 0, "between them");
        assert_eq!(cma_down_between(&[], 0, 50), 0);
    }
}
