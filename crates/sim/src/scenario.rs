//! What to simulate: the fleet, the network, the timing and the steps of a scenario, from a
//! small TOML file and from command-line flags (flags override the file).
//!
//! ```toml
//! nodes = 2000
//! switches = 20
//! duration = "3m"          # virtual time after the warm-up and the steady-state window
//! seed = 7
//! loss = 1.0               # percent of datagrams dropped, every link
//! dup = 0.5                # percent of datagrams delivered twice
//!
//! [timing]                 # what the CMA pushes with every peer set (defaults 1s/1.5s/2.5s)
//! interval = "1s"
//! warn = "1.5s"
//! dead = "2.5s"
//!
//! [network]                # one-way latency, uniform in [min, max]
//! local_latency = ["100us", "2ms"]   # same switch
//! remote_latency = ["1ms", "5ms"]    # across switches, and to the CMA
//!
//! [[step]]
//! at = "10s"               # relative to the start of the scenario phase
//! crash = 20               # random running nodes stop, no goodbye
//! [[step]]
//! at = "20s"
//! crash_switch = 3         # every node under switch 3 stops
//! [[step]]
//! at = "30s"
//! partition = [4, 5]       # switches 4 and 5 are cut off from the rest (and the CMA)...
//! for = "20s"              # ...for this long
//! [[step]]
//! at = "60s"
//! leave = 10               # random running nodes say goodbye and stop
//! [[step]]
//! at = "70s"
//! restart = 10             # that many crashed nodes come back (fresh core, new session, hello)
//! [[step]]
//! at = "80s"
//! cma_restart = "2s"       # the CMA stops for 2 s and resumes from its last snapshot
//! [[step]]
//! at = "85s"
//! lose_spool = 3           # that many crashed nodes lose their spool (their disk)
//! [[step]]
//! at = "90s"
//! loss = 5.0               # change the random loss from now on
//! ```

use std::path::Path;
use std::time::Duration;

use assim_util::parse_duration;
use serde::Deserialize;

use crate::SimError;

/// Heartbeat timing (interval / warn / dead), pushed by the CMA to every nanoprobe.
pub use assim_probe::Timing;

/// Latency and loss of the simulated network.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    /// One-way latency between two nodes under the same switch, uniform in `[min, max]`.
    pub local_latency: (Duration, Duration),
    /// One-way latency across switches and between a node and the CMA.
    pub remote_latency: (Duration, Duration),
    /// Fraction of datagrams dropped (0.0–1.0), every link.
    pub loss: f64,
    /// Fraction of datagrams delivered twice (the copy a little later).
    pub dup: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            local_latency: (Duration::from_micros(100), Duration::from_millis(2)),
            remote_latency: (Duration::from_millis(1), Duration::from_millis(5)),
            loss: 0.0,
            dup: 0.0,
        }
    }
}

/// One thing that happens during the scenario phase.
#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    /// This many random running nodes crash (stop processing, no goodbye), spread uniformly over
    /// `over` (all at once when zero).
    Crash { count: u32, over: Duration },
    /// These nodes (by index) crash.
    CrashNodes(Vec<u32>),
    /// Every running node under this switch crashes at once.
    CrashSwitch(u32),
    /// These switches are cut off from the rest of the network and from the CMA for `for_`;
    /// nodes inside still reach each other.
    Partition { switches: Vec<u32>, for_: Duration },
    /// This many random running nodes say goodbye and stop.
    Leave(u32),
    /// This many crashed nodes come back (random among the crashed ones), each with a fresh
    /// core and a new session; they say hello.
    Restart(u32),
    /// Every crashed node comes back `after` its crash (for crashes from this step on).
    RestartAfter(Duration),
    /// The CMA stops (loses its memory and its reliable connections) and resumes from its last
    /// persisted snapshot after this downtime.
    CmaRestart { down_for: Duration },
    /// Random loss changes to this fraction (0.0–1.0).
    Loss(f64),
    /// This many crashed nodes (random among them) lose their spool's disk: their next start
    /// opens an empty spool, numbered from 1 under a new incarnation (issue 16 item 9).
    LoseSpool(u32),
}

/// A step and when it happens, relative to the start of the scenario phase.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub at: Duration,
    pub kind: StepKind,
}

/// Everything one simulation run needs. Build it with [`Scenario::new`], [`Scenario::from_toml`]
/// or `SimArgs::scenario`.
///
/// Timeline: nodes start at random times in `[0, join_over)`; the warm-up ends
/// `join_over + 2 × dead` later; then comes the steady-state window (`steady`) in which packets
/// at the CMA are counted; then the scenario phase, `duration` long, in which the steps happen
/// (extended automatically so that the last step has time to settle).
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: u32,
    pub switches: u32,
    pub timing: Timing,
    pub network: NetworkSpec,
    pub join_over: Duration,
    pub steady: Duration,
    pub duration: Duration,
    /// Allowed detection time beyond `dead + 2 × interval` (network and scheduling slack).
    pub slack: Duration,
    pub steps: Vec<Step>,
    /// Nodes report their switch over LLDP (a synthetic `l2neighbors` result), so the CMA
    /// builds a ring per switch and an upper ring (issue 13). `false`: one flat ring, as
    /// before (for comparisons).
    pub wiring: bool,
}

impl Scenario {
    /// `nodes` nodes under `max(1, nodes / 50)` switches, default timing and network, no loss,
    /// 10 s to join, 10 s of steady state, 60 s of scenario, no steps.
    pub fn new(seed: u64, nodes: u32) -> Scenario {
        Scenario {
            seed,
            nodes,
            switches: (nodes / 50).max(1),
            timing: Timing::default(),
            network: NetworkSpec::default(),
            join_over: Duration::from_secs(10),
            steady: Duration::from_secs(10),
            duration: Duration::from_secs(60),
            slack: Duration::from_millis(500),
            steps: Vec::new(),
            wiring: true,
        }
    }

    /// Adds a step (builder style).
    pub fn step(mut self, at: Duration, kind: StepKind) -> Scenario {
        self.steps.push(Step { at, kind });
        self
    }

    /// When the warm-up ends (virtual time from the start).
    pub fn warmup_end(&self) -> Duration {
        self.join_over + self.timing.dead * 2
    }

    /// When the scenario phase starts (virtual time from the start).
    pub fn scenario_start(&self) -> Duration {
        self.warmup_end() + self.steady
    }

    /// The detection bound: `dead + 2 × interval + slack`.
    pub fn detection_bound(&self) -> Duration {
        self.timing.dead + self.timing.interval * 2 + self.slack
    }

    /// When the run ends (virtual time from the start): the end of the scenario phase, or later
    /// if the last step needs time to settle (its own length plus two detection bounds plus the
    /// reliable layer's longest retransmission timeout).
    pub fn end(&self) -> Duration {
        let settle = self.detection_bound() * 2 + Duration::from_secs(12);
        let last = self
            .steps
            .iter()
            .map(|s| {
                s.at + match &s.kind {
                    StepKind::Crash { over, .. } => *over,
                    StepKind::Partition { for_, .. } => *for_,
                    StepKind::CmaRestart { down_for } => *down_for,
                    StepKind::RestartAfter(d) => *d,
                    _ => Duration::ZERO,
                } + settle
            })
            .max()
            .unwrap_or_default();
        self.scenario_start() + self.duration.max(last)
    }

    /// Checks what the simulator relies on.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::InvalidScenario(m));
        if self.nodes < 3 {
            return bad(format!("{} nodes: a ring needs at least 3", self.nodes));
        }
        if self.nodes > 1 << 24 {
            return bad(format!("{} nodes: at most 16,777,216", self.nodes));
        }
        if self.switches == 0 || self.switches > self.nodes {
            return bad(format!(
                "{} switches for {} nodes: need 1..=nodes",
                self.switches, self.nodes
            ));
        }
        if let Err(e) = self.timing.validate() {
            return bad(format!("timing: {e}"));
        }
        if !(0.0..=1.0).contains(&self.network.loss) || !(0.0..=1.0).contains(&self.network.dup) {
            return bad("loss and dup are percentages between 0 and 100".into());
        }
        let (lmin, lmax) = self.network.local_latency;
        let (rmin, rmax) = self.network.remote_latency;
        if lmin > lmax || rmin > rmax || lmin.is_zero() || rmin.is_zero() {
            return bad("latencies need 0 < min ≤ max".into());
        }
        for s in &self.steps {
            match &s.kind {
                StepKind::CrashSwitch(sw) if *sw >= self.switches => {
                    return bad(format!("crash_switch {sw}: switches are 0..{}", self.switches));
                }
                StepKind::Partition { switches, .. } => {
                    if switches.is_empty() {
                        return bad("partition: name at least one switch".into());
                    }
                    if let Some(sw) = switches.iter().find(|&&sw| sw >= self.switches) {
                        return bad(format!(
                            "partition switch {sw}: switches are 0..{}",
                            self.switches
                        ));
                    }
                }
                StepKind::CrashNodes(ns) => {
                    if let Some(n) = ns.iter().find(|&&n| n >= self.nodes) {
                        return bad(format!("crash node {n}: nodes are 0..{}", self.nodes));
                    }
                }
                StepKind::Loss(l) if !(0.0..=1.0).contains(l) => {
                    return bad("loss is a percentage between 0 and 100".into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads a scenario file (see the module documentation for its format).
    pub fn from_file(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SimError::ReadScenario { path: path.to_owned(), source })?;
        Scenario::from_toml(&text).map_err(|e| match e {
            SimError::ParseScenario { message, .. } => {
                SimError::ParseScenario { path: Some(path.to_owned()), message }
            }
            other => other,
        })
    }

    /// Parses a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Scenario, SimError> {
        let parse_err = |message: String| SimError::ParseScenario { path: None, message };
        let f: FileSpec = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        let d =
            |what: &str, s: &str| parse_duration(s).map_err(|e| parse_err(format!("{what}: {e}")));
        let mut sc = Scenario::new(f.seed.unwrap_or(1), f.nodes.unwrap_or(1000));
        if let Some(s) = f.switches {
            sc.switches = s;
        }
        if let Some(v) = &f.duration {
            sc.duration = d("duration", v)?;
        }
        if let Some(v) = &f.join_over {
            sc.join_over = d("join_over", v)?;
        }
        if let Some(v) = &f.steady {
            sc.steady = d("steady", v)?;
        }
        if let Some(v) = &f.slack {
            sc.slack = d("slack", v)?;
        }
        if let Some(v) = f.loss {
            sc.network.loss = v / 100.0;
        }
        if let Some(v) = f.dup {
            sc.network.dup = v / 100.0;
        }
        if let Some(t) = &f.timing {
            if let Some(v) = &t.interval {
                sc.timing.interval = d("timing.interval", v)?;
            }
            if let Some(v) = &t.warn {
                sc.timing.warn = d("timing.warn", v)?;
            }
            if let Some(v) = &t.dead {
                sc.timing.dead = d("timing.dead", v)?;
            }
        }
        if let Some(n) = &f.network {
            if let Some([a, b]) = &n.local_latency {
                sc.network.local_latency = (d("local_latency", a)?, d("local_latency", b)?);
            }
            if let Some([a, b]) = &n.remote_latency {
                sc.network.remote_latency = (d("remote_latency", a)?, d("remote_latency", b)?);
            }
        }
        for (i, s) in f.step.iter().enumerate() {
            let what = format!("step #{}", i + 1);
            let at = d(&format!("{what}.at"), &s.at)?;
            let mut kinds = Vec::new();
            if let Some(n) = s.crash {
                let over = match &s.over {
                    Some(v) => d(&format!("{what}.over"), v)?,
                    None => Duration::ZERO,
                };
                kinds.push(StepKind::Crash { count: n, over });
            }
            if let Some(ns) = &s.crash_nodes {
                kinds.push(StepKind::CrashNodes(ns.clone()));
            }
            if let Some(sw) = s.crash_switch {
                kinds.push(StepKind::CrashSwitch(sw));
            }
            if let Some(sws) = &s.partition {
                let for_ = match &s.for_ {
                    Some(v) => d(&format!("{what}.for"), v)?,
                    None => return Err(parse_err(format!("{what}: a partition needs `for`"))),
                };
                kinds.push(StepKind::Partition { switches: sws.clone(), for_ });
            }
            if let Some(n) = s.leave {
                kinds.push(StepKind::Leave(n));
            }
            if let Some(n) = s.restart {
                kinds.push(StepKind::Restart(n));
            }
            if let Some(v) = &s.restart_after {
                kinds.push(StepKind::RestartAfter(d(&format!("{what}.restart_after"), v)?));
            }
            if let Some(v) = &s.cma_restart {
                kinds
                    .push(StepKind::CmaRestart { down_for: d(&format!("{what}.cma_restart"), v)? });
            }
            if let Some(v) = s.loss {
                kinds.push(StepKind::Loss(v / 100.0));
            }
            if let Some(n) = s.lose_spool {
                kinds.push(StepKind::LoseSpool(n));
            }
            if kinds.len() != 1 {
                return Err(parse_err(format!(
                    "{what}: give exactly one of crash, crash_nodes, crash_switch, partition, \
                     leave, restart, restart_after, cma_restart, loss, lose_spool (found {})",
                    kinds.len()
                )));
            }
            sc.steps.push(Step { at, kind: kinds.remove(0) });
        }
        Ok(sc)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    nodes: Option<u32>,
    switches: Option<u32>,
    seed: Option<u64>,
    duration: Option<String>,
    join_over: Option<String>,
    steady: Option<String>,
    slack: Option<String>,
    loss: Option<f64>,
    dup: Option<f64>,
    timing: Option<TimingSpec>,
    network: Option<NetSpecFile>,
    #[serde(default)]
    step: Vec<StepSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimingSpec {
    interval: Option<String>,
    warn: Option<String>,
    dead: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetSpecFile {
    local_latency: Option<[String; 2]>,
    remote_latency: Option<[String; 2]>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    at: String,
    crash: Option<u32>,
    over: Option<String>,
    crash_nodes: Option<Vec<u32>>,
    crash_switch: Option<u32>,
    partition: Option<Vec<u32>>,
    #[serde(rename = "for")]
    for_: Option<String>,
    leave: Option<u32>,
    restart: Option<u32>,
    restart_after: Option<String>,
    cma_restart: Option<String>,
    loss: Option<f64>,
    lose_spool: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip() {
        let sc = Scenario::from_toml(
            r#"
            nodes = 300
            switches = 6
            loss = 5
            [timing]
            dead = "6s"
            [[step]]
            at = "10s"
            crash = 3
            over = "2s"
            [[step]]
            at = "20s"
            partition = [1]
            for = "15s"
            [[step]]
            at = "40s"
            cma_restart = "1s"
            "#,
        )
        .unwrap();
        assert_eq!(sc.nodes, 300);
        assert_eq!(sc.network.loss, 0.05);
        assert_eq!(sc.timing.dead, Duration::from_secs(6));
        assert_eq!(sc.steps.len(), 3);
        assert_eq!(
            sc.steps[1].kind,
            StepKind::Partition { switches: vec![1], for_: Duration::from_secs(15) }
        );
        sc.validate().unwrap();
    }

    #[test]
    fn toml_errors_name_the_step() {
        let e = Scenario::from_toml("[[step]]\nat = \"1s\"\ncrash = 1\nleave = 2\n").unwrap_err();
        assert!(e.to_string().contains("step #1"), "{e}");
        let e = Scenario::from_toml("nodez = 3").unwrap_err();
        assert!(e.to_string().contains("nodez"), "{e}");
    }
}
