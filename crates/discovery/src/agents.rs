//! External discovery agents: every executable file in a directory is a collector named
//! `agent.<filename>`. This module finds them and runs one (blocking: the nanoprobe calls it on
//! a blocking thread).
//!
//! Contract with an agent:
//! - environment: cleared, except `PATH`, `ASSIM_NODE_ID`, `ASSIM_HOSTNAME`,
//!   `ASSIM_COLLECTOR` (its collector name) and `ASSIM_PARAM_<KEY>` for each schedule
//!   parameter (key upper-cased, anything but `A-Z0-9_` turned into `_`);
//! - stdin is `/dev/null`; the working directory is the agent directory;
//! - stdout must be exactly one JSON value, at most `max_output` bytes;
//! - it must exit 0 within `timeout`, or its whole process group is killed.
//!
//! Whatever goes wrong becomes the result `{"error": "...", "exit": CODE|null}`, so the CMA
//! sees the failure; the error texts hold nothing volatile (no pid, no time), so a failing
//! agent that keeps failing the same way sends nothing new. Its stderr (first 4 KiB) is
//! returned for the log only.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::collector::Discovery;
use crate::schedule::AGENT_PREFIX;

/// Limits for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentLimits {
    /// Wall-clock limit (default 30 s).
    pub timeout: Duration,
    /// Stdout size limit in bytes (default 1 MiB); more is an error.
    pub max_output: usize,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits { timeout: Duration::from_secs(30), max_output: 1 << 20 }
    }
}

/// Who is asking, for the agent's environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentContext {
    /// `ASSIM_NODE_ID`.
    pub node_id: String,
    /// `ASSIM_HOSTNAME`.
    pub hostname: String,
}

/// One run's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRun {
    /// The result to send (an error payload when `error` is set).
    pub discovery: Discovery,
    /// What went wrong, for the log.
    pub error: Option<String>,
    /// The first 4 KiB of stderr, for the log.
    pub stderr: String,
}

/// The agents in `dir`: executable regular files (hidden files and editor backups ending in
/// `~` skipped), as `(collector name, path)` sorted by name. A missing directory has none.
pub fn list_agents(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(file) = e.file_name().to_str().map(str::to_string) else { continue };
        if file.starts_with('.') || file.ends_with('~') {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            out.push((format!("{AGENT_PREFIX}{file}"), path));
        }
    }
    out.sort();
    out
}

/// The environment variable carrying parameter `key`.
pub fn param_var(key: &str) -> String {
    let key: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("ASSIM_PARAM_{key}")
}

fn error_result(name: &str, error: String, exit: Option<i32>, stderr: String) -> AgentRun {
    let payload = json!({ "error": error, "exit": exit });
    AgentRun { discovery: Discovery::from_value(name, payload), error: Some(error), stderr }
}

enum Out {
    Done(Vec<u8>),
    Oversize,
    Failed(std::io::Error),
}

/// Runs the agent at `path` as collector `name`. Never panics and never leaves a process
/// behind in its group when it times out or prints too much.
pub fn run_agent(
    name: &str,
    path: &Path,
    params: &BTreeMap<String, String>,
    ctx: &AgentContext,
    limits: AgentLimits,
) -> AgentRun {
    let started = Instant::now();
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("ASSIM_NODE_ID", &ctx.node_id)
        .env("ASSIM_HOSTNAME", &ctx.hostname)
        .env("ASSIM_COLLECTOR", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in params {
        cmd.env(param_var(k), v);
    }
    if let Some(dir) = path.parent() {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return error_result(name, format!("cannot start: {e}"), None, String::new()),
    };
    let pgid = Pid::from_raw(child.id() as i32);
    let kill_group = || {
        let _ = killpg(pgid, Signal::SIGKILL);
    };

    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().expect("piped");
    let max = limits.max_output;
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = (&mut stdout).take(max as u64 + 1).read_to_end(&mut buf);
        let _ = tx.send(match r {
            Err(e) => Out::Failed(e),
            Ok(_) if buf.len() > max => Out::Oversize,
            Ok(_) => Out::Done(buf),
        });
    });
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr_pipe).take(4096).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr_pipe, &mut std::io::sink());
        String::from_utf8_lossy(&buf).trim_end().to_string()
    });

    let deadline = started + limits.timeout;
    let timeout_text =
        format!("timed out after {} s; process group killed", limits.timeout.as_secs_f64());
    let out = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(o) => o,
        Err(_) => {
            kill_group();
            let _ = child.wait();
            let stderr = stderr_thread.join().unwrap_or_default();
            return error_result(name, timeout_text, None, stderr);
        }
    };
    if !matches!(out, Out::Done(_)) {
        kill_group();
    }
    // Stdout is closed: wait for the exit, still within the deadline.
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                kill_group();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let stderr = stderr_thread.join().unwrap_or_default();
    let exit = status.and_then(|s| s.code());
    let bytes = match out {
        Out::Oversize => {
            return error_result(name, format!("output larger than {max} bytes"), exit, stderr);
        }
        Out::Failed(e) => {
            return error_result(name, format!("cannot read output: {e}"), exit, stderr);
        }
        Out::Done(b) => b,
    };
    let Some(status) = status else {
        return error_result(name, timeout_text, None, stderr);
    };
    if !status.success() {
        let why = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "killed by a signal".to_string(),
        };
        return error_result(name, why, exit, stderr);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => AgentRun { discovery: Discovery::from_value(name, v), error: None, stderr },
        Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => error_result(
            name,
            "printed nothing (stdout must be one JSON value)".into(),
            exit,
            stderr,
        ),
        Err(e) => error_result(name, format!("stdout is not one JSON value: {e}"), exit, stderr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_names_are_safe_variable_names() {
        assert_eq!(param_var("zone"), "ASSIM_PARAM_ZONE");
        assert_eq!(param_var("db-host.1"), "ASSIM_PARAM_DB_HOST_1");
        assert_eq!(param_var("x=y;rm"), "ASSIM_PARAM_X_Y_RM");
    }
}
