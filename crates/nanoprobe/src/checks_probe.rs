//! The nanoprobe's check IO: runs the checks the shell asks for, as tasks (the loop never
//! waits for a check), and hands the results back.
//!
//! The check set, its schedule (SOFT/HARD, flapping), the concurrency limit
//! ([`assim_probe_shell::MAX_CONCURRENT_CHECKS`]) and what the CMA is told live in the shell:
//! [`Event::RunCheck`](assim_probe_shell::Event) results go to `Shell::check_done`,
//! `RunCheckNow` results to `Shell::check_now_done`.

use std::sync::Arc;

use assim_checks::runner::{self, RunnerConfig};
use assim_checks::{Check, CheckResult};
use tokio::sync::mpsc;

/// A finished run.
#[derive(Debug)]
pub enum Done {
    /// A scheduled run: `Shell::check_done`.
    Scheduled { name: String, result: CheckResult },
    /// A `RunNow` run: `Shell::check_now_done`.
    RunNow { command_id: u64, name: String, result: CheckResult },
}

/// Runs checks for the shell.
#[derive(Debug)]
pub struct CheckRunner {
    cfg: Arc<RunnerConfig>,
    tx: mpsc::UnboundedSender<Done>,
    rx: mpsc::UnboundedReceiver<Done>,
}

impl CheckRunner {
    pub fn new(cfg: RunnerConfig) -> CheckRunner {
        let (tx, rx) = mpsc::unbounded_channel();
        CheckRunner { cfg: Arc::new(cfg), tx, rx }
    }

    /// Starts a scheduled run.
    pub fn run(&self, check: Check) {
        let (tx, cfg) = (self.tx.clone(), self.cfg.clone());
        tokio::spawn(async move {
            let result = runner::run(&check, &cfg).await;
            let _ = tx.send(Done::Scheduled { name: check.name, result });
        });
    }

    /// Starts a `RunNow` run.
    pub fn run_now(&self, command_id: u64, check: Check) {
        let (tx, cfg) = (self.tx.clone(), self.cfg.clone());
        tokio::spawn(async move {
            let result = runner::run(&check, &cfg).await;
            let _ = tx.send(Done::RunNow { command_id, name: check.name, result });
        });
    }

    /// The next finished run (pending forever while nothing runs; cancel-safe).
    pub async fn next(&mut self) -> Done {
        match self.rx.recv().await {
            Some(d) => d,
            // We hold a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }
}
