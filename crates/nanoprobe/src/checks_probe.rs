//! The nanoprobe's service checks: applies the CMA's check set, runs due checks as tasks (the
//! loop never waits for a check), and turns results into messages for the CMA.
//!
//! Only what the [`Scheduler`] reports goes to the CMA (HARD changes, the first HARD state,
//! flapping start and stop), as `CheckStateChange` through the spool. `RunNow` runs a check at
//! once, outside its schedule (it does not change the check's state), and answers with a
//! `CommandResult` whose payload is JSON: `{state, output, long_output, perfdata, duration_ms,
//! exit_code}`.
//!
//! At most [`MAX_CONCURRENT`] checks run at a time; due checks beyond that wait their turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use assim_checks::runner::{self, RunnerConfig};
use assim_checks::{ApplyOutcome, Check, CheckResult, Scheduler};
use assim_wire::Timestamp;
use assim_wire::msg::{self, Body};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Checks running at once, at most.
pub const MAX_CONCURRENT: usize = 32;

/// A finished run.
#[derive(Debug)]
pub enum Done {
    Scheduled { name: String, result: CheckResult },
    RunNow { command_id: u64, name: String, result: CheckResult },
}

/// A message for the CMA and how to send it.
#[derive(Debug)]
pub enum Outgoing {
    /// Durable: through the spool.
    Spooled(Body),
    /// A command answer: reliable, not spooled (nobody waits for it after a restart).
    Control(Body),
}

/// The JSON payload of a `RunNow` answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunNowPayload {
    pub check: String,
    pub state: String,
    pub output: String,
    #[serde(default)]
    pub long_output: String,
    pub perfdata: String,
    pub duration_ms: u64,
    pub exit_code: Option<i32>,
}

/// Sends a message from [`ProbeChecks`] to the CMA.
pub fn send(link: &mut crate::link::CmaLink, out: Outgoing, now: Instant) {
    match out {
        Outgoing::Spooled(body) => link.send_spooled(body, now),
        Outgoing::Control(body) => {
            link.send_control(body, now);
        }
    }
}

/// The checks of one nanoprobe.
#[derive(Debug)]
pub struct ProbeChecks {
    sched: Scheduler,
    cfg: Arc<RunnerConfig>,
    tx: mpsc::UnboundedSender<Done>,
    rx: mpsc::UnboundedReceiver<Done>,
    waiting: VecDeque<Check>,
    running: usize,
}

impl ProbeChecks {
    pub fn new(seed: u64, cfg: RunnerConfig) -> ProbeChecks {
        let (tx, rx) = mpsc::unbounded_channel();
        ProbeChecks {
            sched: Scheduler::new(seed),
            cfg: Arc::new(cfg),
            tx,
            rx,
            waiting: VecDeque::new(),
            running: 0,
        }
    }

    /// Applies a check set from the CMA (the newest epoch wins). Invalid checks are skipped with
    /// a warning; the rest apply.
    pub fn apply_set(&mut self, set: &msg::CheckSet, now: Instant) {
        let mut checks = Vec::with_capacity(set.checks.len());
        let mut names = std::collections::HashSet::new();
        for spec in set.checks.iter().take(assim_checks::spec::MAX_CHECKS) {
            match Check::try_from(spec) {
                Ok(c) if names.insert(c.name.clone()) => checks.push(c),
                Ok(c) => {
                    warn!(check = %c.name, "a check appears twice in the check set; the first wins")
                }
                Err(e) => {
                    warn!(epoch = set.epoch, error = %e, "invalid check from the CMA; skipped")
                }
            }
        }
        match self.sched.apply(set.epoch, checks, now) {
            ApplyOutcome::Applied { added, kept, removed } => {
                // Checks waiting for a slot that were removed are dropped when they come up.
                info!(epoch = set.epoch, added, kept, removed, "check set applied")
            }
            ApplyOutcome::Stale { current } => {
                debug!(epoch = set.epoch, current, "older check set ignored")
            }
        }
    }

    /// The epoch of the applied check set.
    pub fn epoch(&self) -> u64 {
        self.sched.epoch()
    }

    /// When the next check is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.running >= MAX_CONCURRENT { None } else { self.sched.poll_timeout() }
    }

    /// Starts the checks due at `now` (as many as the concurrency limit allows).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.waiting.extend(self.sched.due(now));
        self.start_waiting();
    }

    fn start_waiting(&mut self) {
        while self.running < MAX_CONCURRENT
            && let Some(check) = self.waiting.pop_front()
        {
            self.running += 1;
            let tx = self.tx.clone();
            let cfg = self.cfg.clone();
            tokio::spawn(async move {
                let result = runner::run(&check, &cfg).await;
                let _ = tx.send(Done::Scheduled { name: check.name, result });
            });
        }
    }

    /// The next finished run (pending forever while nothing runs).
    pub async fn next(&mut self) -> Done {
        match self.rx.recv().await {
            Some(d) => d,
            // We hold a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// Takes a finished run; returns what the CMA must hear, if anything.
    pub fn accept(&mut self, done: Done, now: Instant) -> Option<Outgoing> {
        match done {
            Done::Scheduled { name, result } => {
                self.running = self.running.saturating_sub(1);
                self.start_waiting();
                debug!(check = %name, state = result.state.name(), output = %result.output, "check ran");
                let report = self.sched.handle_result(&name, &result, now)?;
                info!(
                    check = %report.check, state = report.state.name(), flapping = report.flapping,
                    initial = report.initial, output = %report.output, "check state changed; telling the CMA"
                );
                Some(Outgoing::Spooled(Body::CheckStateChange(msg::CheckStateChange {
                    check: report.check,
                    state: report.state as i32,
                    output: report.output,
                    perfdata: report.perfdata,
                    at: Timestamp::now().micros(),
                    flapping: report.flapping,
                    initial: report.initial,
                })))
            }
            Done::RunNow { command_id, name, result } => {
                let payload = RunNowPayload {
                    check: name,
                    state: result.state.name().to_owned(),
                    output: result.output,
                    long_output: runner::clip(&result.long_output, 8 * 1024),
                    perfdata: result.perfdata,
                    duration_ms: result.duration.as_millis() as u64,
                    exit_code: result.exit_code,
                };
                Some(Outgoing::Control(Body::CommandResult(msg::CommandResult {
                    command_id,
                    ok: true,
                    error: String::new(),
                    payload: serde_json::to_vec(&payload).unwrap_or_default(),
                })))
            }
        }
    }

    /// `RunNow`: starts the check at once; an unknown check is answered with an error at once.
    pub fn run_now(&mut self, r: &msg::RunNow) -> Option<Outgoing> {
        let Some(entry) = self.sched.get(&r.check) else {
            let mut known: Vec<&str> =
                self.sched.entries().map(|e| e.check.name.as_str()).collect();
            known.truncate(20);
            return Some(Outgoing::Control(Body::CommandResult(msg::CommandResult {
                command_id: r.command_id,
                ok: false,
                error: format!(
                    "no check named {:?} on this host (it has: {})",
                    r.check,
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
                payload: Vec::new(),
            })));
        };
        let check = entry.check.clone();
        let tx = self.tx.clone();
        let cfg = self.cfg.clone();
        let command_id = r.command_id;
        info!(check = %check.name, command_id, "running a check now, as the CMA asked");
        tokio::spawn(async move {
            let result = runner::run(&check, &cfg).await;
            let _ = tx.send(Done::RunNow { command_id, name: check.name, result });
        });
        None
    }
}
