//! The assim simulator: many nanoprobes against one CMA, in virtual time, deterministically.
//!
//! This crate owns the discrete-event simulation that drives the *real* sans-IO cores — the
//! nanoprobe's heartbeat core (`assim-probe`), the CMA's decision core (`assim-cma`) and reliable
//! delivery (`assim-reliable`, one connection per nanoprobe at each end) — over a simulated
//! network with per-link latency, random loss, duplication and partitions, wired the way the
//! daemon's drivers wire them. Everything random comes from one seed, printed first, so any run
//! replays exactly. It injects failures (crashes, switch crashes, partitions, graceful leaves,
//! restarts, CMA restarts from the persisted snapshot), checks what an operator cares about
//! (every crash reported within `dead + 2×interval + slack`, no false `host.down`, a consistent
//! ring, every report applied exactly once, ~0 packets per node at the CMA in steady state) and
//! reports figures as a human summary or JSON. `assim sim` is its command line.
//!
//! Layout:
//! - [`scenario`]: [`Scenario`] and its steps, from TOML ([`Scenario::from_file`]) or flags.
//! - [`net`]: the network model (latency, loss, duplication, partition groups).
//! - [`engine`]: [`Sim`], the event queue and the drivers of the cores.
//! - [`report`]: [`Report`], the checks, the human summary and the JSON form.
//! - [`mem`]: RSS figures and the CMA-memory-per-node estimate.
//! - [`SimArgs`] / [`run_cli`]: the `assim sim` flags and entry point.

#![forbid(unsafe_code)]

pub mod engine;
pub mod mem;
pub mod net;
pub mod report;
pub mod scenario;
pub mod wire;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

pub use engine::Sim;
pub use report::Report;
pub use scenario::{NetworkSpec, Scenario, Step, StepKind, Timing};

/// What can go wrong around a run. A run itself does not fail: it reports.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario file could not be read.
    #[error("cannot read scenario file {path}: {source}")]
    ReadScenario { path: PathBuf, source: std::io::Error },
    /// The scenario file is not valid TOML for a scenario.
    #[error("scenario{}: {message}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    ParseScenario { path: Option<PathBuf>, message: String },
    /// The scenario (file and flags together) cannot be simulated.
    #[error("invalid scenario: {0}")]
    InvalidScenario(String),
    /// A flag's value does not parse.
    #[error("--{flag}: {message}")]
    BadFlag { flag: &'static str, message: String },
    /// The run finished, but some of its checks failed (the report says which).
    #[error("simulation checks failed: {}", .0.join(", "))]
    ChecksFailed(Vec<String>),
    /// Wire mode could not run (CMA start-up, sockets, API).
    #[error("wire mode: {0}")]
    Wire(String),
    /// The report could not be written as JSON.
    #[error("cannot write the JSON report: {0}")]
    Json(#[from] serde_json::Error),
}

/// `assim sim`: simulate N nanoprobes and a CMA in virtual time and check failure detection.
///
/// Examples:
///   assim sim --nodes 100000 --crash 1000 --seed 1
///   assim sim --nodes 10000 --loss 5 --duration 10m
///   assim sim --scenario partition.toml --json
#[derive(clap::Args, Debug, Clone, Default)]
#[command(verbatim_doc_comment)]
pub struct SimArgs {
    /// Number of simulated nanoprobes [default: 1000, or the scenario file's].
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Number of switches the nodes are spread over [default: nodes / 50].
    #[arg(long)]
    pub switches: Option<u32>,
    /// Random crashes (no goodbye), spread over --crash-over from the start of the scenario.
    #[arg(long)]
    pub crash: Option<u32>,
    /// Window over which the --crash crashes happen.
    #[arg(long, default_value = "10s")]
    pub crash_over: String,
    /// Crash every node under this switch (at --crash-switch-at).
    #[arg(long)]
    pub crash_switch: Option<u32>,
    /// When the --crash-switch crash happens (from the start of the scenario phase).
    #[arg(long, default_value = "5s")]
    pub crash_switch_at: String,
    /// Cut this switch off from the rest and the CMA (at --partition-at, for --partition-for).
    #[arg(long)]
    pub partition_switch: Option<u32>,
    /// When the --partition-switch partition starts.
    #[arg(long, default_value = "5s")]
    pub partition_at: String,
    /// How long the --partition-switch partition lasts.
    #[arg(long, default_value = "30s")]
    pub partition_for: String,
    /// This many random nodes leave gracefully (goodbye) at --leave-at.
    #[arg(long)]
    pub leave: Option<u32>,
    /// When the --leave nodes leave.
    #[arg(long, default_value = "5s")]
    pub leave_at: String,
    /// Crashed nodes come back this long after their crash (fresh core, new session, hello).
    #[arg(long)]
    pub restart_after: Option<String>,
    /// Restart the CMA at this time (from its persisted snapshot; connections reset).
    #[arg(long)]
    pub cma_restart_at: Option<String>,
    /// How long the CMA stays down when restarted.
    #[arg(long, default_value = "2s")]
    pub cma_down_for: String,
    /// Random datagram loss in percent, every link, from the start.
    #[arg(long)]
    pub loss: Option<f64>,
    /// Random datagram duplication in percent.
    #[arg(long)]
    pub dup: Option<f64>,
    /// Seed of every random choice [default: random, printed first].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Virtual time of the scenario phase, after warm-up and the steady-state window.
    #[arg(long)]
    pub duration: Option<String>,
    /// Window over which the nodes start.
    #[arg(long)]
    pub join_over: Option<String>,
    /// Steady-state window in which CMA traffic is measured.
    #[arg(long)]
    pub steady: Option<String>,
    /// Heartbeat interval pushed by the CMA [default: 1s].
    #[arg(long)]
    pub interval: Option<String>,
    /// Silence after which a peer counts as late (kept at the nanoprobe) [default: 1.5s].
    #[arg(long)]
    pub warn: Option<String>,
    /// Silence after which a peer is reported dead [default: 2.5s].
    #[arg(long)]
    pub dead: Option<String>,
    /// Detection slack beyond dead + 2×interval.
    #[arg(long)]
    pub slack: Option<String>,
    /// Scenario file (TOML); flags override its values and add their steps.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Skip the CMA-memory-per-node measurement.
    #[arg(long)]
    pub no_memory: bool,
    /// Nodes announce no switch (no LLDP): one flat ring, as before issue 13 (to compare
    /// cross-switch heartbeat traffic and failure handling).
    #[arg(long)]
    pub flat: bool,
    /// Wire mode: simulated nanoprobes over real UDP on loopback against a real `cma` process
    /// (registration storm, steady state, a failure burst of --crash nodes [default 100]).
    #[arg(long)]
    pub wire: bool,
    /// Wire mode: use this running CMA (UDP address) instead of starting one; needs --cma-api.
    #[arg(long, requires = "cma_api")]
    pub cma: Option<std::net::SocketAddr>,
    /// Wire mode: the API address of the CMA given with --cma.
    #[arg(long)]
    pub cma_api: Option<std::net::SocketAddr>,
    /// Wire mode: the `cma` binary to start [default: `assim cma` when run as `assim`, else
    /// `cma` next to this executable].
    #[arg(long)]
    pub cma_bin: Option<PathBuf>,
    /// Internal: run nodes FIRST..FIRST+COUNT of a wire-mode run (a worker process).
    #[arg(long, hide = true, value_name = "FIRST:COUNT")]
    pub wire_worker: Option<String>,
}

fn flag(name: &'static str, v: &str) -> Result<Duration, SimError> {
    assim_util::parse_duration(v)
        .map_err(|e| SimError::BadFlag { flag: name, message: e.to_string() })
}

impl SimArgs {
    /// The scenario these flags describe (on top of `--scenario FILE`, if given). A missing
    /// seed is drawn from the clock.
    pub fn scenario(&self) -> Result<Scenario, SimError> {
        let mut sc = match &self.scenario {
            Some(p) => Scenario::from_file(p)?,
            None => Scenario::new(0, self.nodes.unwrap_or(1000)),
        };
        let from_file = self.scenario.is_some();
        if let Some(n) = self.nodes {
            sc.nodes = n;
            if self.switches.is_none() && !from_file {
                sc.switches = (n / 50).max(1);
            }
        }
        if let Some(s) = self.switches {
            sc.switches = s;
        }
        if self.flat {
            sc.wiring = false;
        }
        sc.seed = match self.seed {
            Some(s) => s,
            None if from_file => sc.seed,
            None => random_seed(),
        };
        if let Some(v) = &self.duration {
            sc.duration = flag("duration", v)?;
        }
        if let Some(v) = &self.join_over {
            sc.join_over = flag("join-over", v)?;
        }
        if let Some(v) = &self.steady {
            sc.steady = flag("steady", v)?;
        }
        if let Some(v) = &self.interval {
            sc.timing.interval = flag("interval", v)?;
        }
        if let Some(v) = &self.warn {
            sc.timing.warn = flag("warn", v)?;
        }
        if let Some(v) = &self.dead {
            sc.timing.dead = flag("dead", v)?;
        }
        if let Some(v) = &self.slack {
            sc.slack = flag("slack", v)?;
        }
        if let Some(l) = self.loss {
            sc.network.loss = l / 100.0;
        }
        if let Some(d) = self.dup {
            sc.network.dup = d / 100.0;
        }
        if let Some(v) = &self.restart_after {
            sc.steps.insert(
                0,
                Step {
                    at: Duration::ZERO,
                    kind: StepKind::RestartAfter(flag("restart-after", v)?),
                },
            );
        }
        if let Some(k) = self.crash {
            let over = flag("crash-over", &self.crash_over)?;
            sc.steps.push(Step { at: Duration::ZERO, kind: StepKind::Crash { count: k, over } });
        }
        if let Some(sw) = self.crash_switch {
            let at = flag("crash-switch-at", &self.crash_switch_at)?;
            sc.steps.push(Step { at, kind: StepKind::CrashSwitch(sw) });
        }
        if let Some(sw) = self.partition_switch {
            let at = flag("partition-at", &self.partition_at)?;
            let for_ = flag("partition-for", &self.partition_for)?;
            sc.steps.push(Step { at, kind: StepKind::Partition { switches: vec![sw], for_ } });
        }
        if let Some(k) = self.leave {
            let at = flag("leave-at", &self.leave_at)?;
            sc.steps.push(Step { at, kind: StepKind::Leave(k) });
        }
        if let Some(v) = &self.cma_restart_at {
            let at = flag("cma-restart-at", v)?;
            let down_for = flag("cma-down-for", &self.cma_down_for)?;
            sc.steps.push(Step { at, kind: StepKind::CmaRestart { down_for } });
        }
        sc.steps.sort_by_key(|s| s.at);
        sc.validate()?;
        Ok(sc)
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}

/// Runs a scenario and returns its report. `progress`: a `\r` line on stderr.
pub fn run(scenario: Scenario, progress: bool, measure_memory: bool) -> Report {
    Sim::new(scenario, progress, measure_memory).run()
}

/// `assim sim`: prints the seed (stderr) first, runs, prints the summary or JSON (stdout), and
/// fails with [`SimError::ChecksFailed`] if a check failed.
pub fn run_cli(args: SimArgs) -> Result<(), SimError> {
    if args.wire {
        return run_wire(&args);
    }
    let sc = args.scenario()?;
    eprintln!(
        "assim sim: seed {} ({} nodes, {} switches); replay with --seed {}",
        sc.seed, sc.nodes, sc.switches, sc.seed
    );
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let report = run(sc, progress, !args.no_memory);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    if report.passed {
        Ok(())
    } else {
        Err(SimError::ChecksFailed(
            report.checks.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect(),
        ))
    }
}

/// `assim sim --wire`.
fn run_wire(args: &SimArgs) -> Result<(), SimError> {
    if let Some(spec) = &args.wire_worker {
        let bad = || SimError::BadFlag { flag: "wire-worker", message: "FIRST:COUNT".into() };
        let (a, b) = spec.split_once(':').ok_or_else(bad)?;
        let first = a.parse().map_err(|_| bad())?;
        let count = b.parse().map_err(|_| bad())?;
        let cma = args.cma.ok_or_else(bad)?;
        return wire::worker(first, count, cma).map_err(|e| SimError::Wire(format!("{e:#}")));
    }
    let opt =
        |name: &'static str, v: &Option<String>| v.as_deref().map(|v| flag(name, v)).transpose();
    let timing = match (
        opt("interval", &args.interval)?,
        opt("warn", &args.warn)?,
        opt("dead", &args.dead)?,
    ) {
        (None, None, None) => None,
        (i, w, d) => {
            let default = Timing::default();
            Some((
                i.unwrap_or(default.interval),
                w.unwrap_or(default.warn),
                d.unwrap_or(default.dead),
            ))
        }
    };
    let cma_program = match &args.cma_bin {
        Some(p) => (p.clone(), Vec::new()),
        None => {
            let exe = std::env::current_exe().map_err(|e| SimError::Wire(e.to_string()))?;
            let multicall =
                exe.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("assim"));
            if multicall {
                (exe, vec!["cma".to_string()])
            } else {
                (exe.with_file_name("cma"), Vec::new())
            }
        }
    };
    let opts = wire::WireOptions {
        nodes: args.nodes.unwrap_or(1000) as usize,
        crash: args.crash.map(|c| c as usize).unwrap_or(100),
        steady: opt("steady", &args.steady)?.unwrap_or(Duration::from_secs(10)),
        cma: args.cma.zip(args.cma_api),
        cma_program,
        timing,
        form_timeout: Duration::from_secs(300),
    };
    let report = wire::run(opts).map_err(|e| SimError::Wire(format!("{e:#}")))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    if report.detected < report.crashed || report.false_downs > 0 {
        return Err(SimError::ChecksFailed(vec![format!(
            "{} of {} stopped nodes reported down, {} unexpected host.down",
            report.detected, report.crashed, report.false_downs
        )]));
    }
    Ok(())
}
