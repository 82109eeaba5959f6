//! What one check run produced ([`CheckResult`]): plain data shared by the runner (which makes
//! it) and the scheduler (which turns it into SOFT/HARD states), so the scheduler needs no
//! runtime.

use std::time::Duration;

use assim_wire::msg::CheckState;

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    pub state: CheckState,
    /// The first line of output (the plugin's status text), at most [`MAX_OUTPUT`] bytes.
    pub output: String,
    /// Further lines of output, at most `output_cap` bytes.
    pub long_output: String,
    /// Performance data as printed (after `|`), at most [`MAX_PERFDATA`] bytes.
    pub perfdata: String,
    pub duration: Duration,
    /// The exit code, when the process exited normally.
    pub exit_code: Option<i32>,
    /// Output beyond the cap was discarded.
    pub truncated: bool,
    /// The run hit its timeout and its process group was killed.
    pub timed_out: bool,
}

/// The longest status line kept.
pub const MAX_OUTPUT: usize = 1024;
/// The longest performance data kept.
pub const MAX_PERFDATA: usize = 2048;
