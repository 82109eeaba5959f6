//! Service checks: running them, scheduling them, and deciding which ones a host needs.
//!
//! This crate owns everything about a check short of the network: the child-process runner for
//! Nagios plugins, OCF resource agents, LSB init scripts and systemd units (process-group kill at
//! the timeout, output cap, cleared environment) and the built-in TCP and process checks; the
//! Nagios performance-data parser; the sans-IO scheduler with Nagios SOFT/HARD states, flap
//! detection and drift-free timing; and the pure rule matching that turns a host's discovered
//! listening processes into its desired check set. The nanoprobe drives the runner and the
//! scheduler; the CMA uses the rules. See `docs/checks.md` for the operator's view.
//!
//! Layout:
//! - [`spec`]: [`Check`], a validated wire `CheckSpec`, and its [`Kind`]s.
//! - [`result`]: [`CheckResult`], what one run produced (plain data).
//! - [`runner`]: [`runner::run`] runs one check and returns a [`CheckResult`] (feature
//!   `runner`, on by default: tokio and nix; without it the crate is pure, for the CMA core).
//! - [`perfdata`]: the performance-data parser (strict and lenient), with distinct errors.
//! - [`schedule`]: [`Scheduler`]: intervals, retries, SOFT/HARD, flapping, epochs (sans-IO).
//! - [`rules`]: [`RuleSet`]: rules files, shipped defaults, matching listeners to checks.

#![forbid(unsafe_code)]

pub mod perfdata;
pub mod result;
pub mod rules;
#[cfg(feature = "runner")]
pub mod runner;
pub mod schedule;
pub mod spec;

pub use crate::result::CheckResult;
pub use crate::rules::{Listener, RuleSet, RulesError};
#[cfg(feature = "runner")]
pub use crate::runner::RunnerConfig;
pub use crate::schedule::{ApplyOutcome, Report, Scheduler};
pub use crate::spec::{Check, Kind, SpecError};
pub use assim_wire::msg::CheckState;

/// Checks declared by local programs on a host (issue 17 item 6) are named `local:NAME`.
pub const LOCAL_CHECK_PREFIX: &str = "local:";
/// The discovery result in which a nanoprobe tells the CMA its declared local checks
/// (`{"checks": [{name, kind, argv, interval_s, …}]}`); `assim check list` shows them with
/// source `local`.
pub const LOCAL_CHECKS_RESULT: &str = "local_checks";

/// Parses a state name (case-insensitive; `CheckState::name` writes them).
pub fn parse_state(s: &str) -> Option<CheckState> {
    match s.to_ascii_lowercase().as_str() {
        "ok" => Some(CheckState::Ok),
        "warning" | "warn" => Some(CheckState::Warning),
        "critical" | "crit" => Some(CheckState::Critical),
        "unknown" => Some(CheckState::Unknown),
        _ => None,
    }
}
