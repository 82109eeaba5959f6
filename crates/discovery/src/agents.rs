//! External discovery agents: every executable file in a directory is a collector named
//! `agent.<filename>`. This module finds them and runs one (blocking: the nanoprobe calls it on
//! a blocking thread).
//!
//! Contract with an agent:
//! - it and its directory are owned by root or the nanoprobe's user and writable by nobody
//!   else, or it does not run (its result is the refusal, see [`refuse_reason`]);
//! - environment: cleared, except `PATH` (a fixed system path, [`SAFE_PATH`]), `ASSIM_NODE_ID`,
//!   `ASSIM_HOSTNAME`,
//!   `ASSIM_COLLECTOR` (its collector name) and `ASSIM_PARAM_<KEY>` for each schedule
//!   parameter (key upper-cased, anything but `A-Z0-9_` turned into `_`);
//! - stdin is `/dev/null`; the working directory is the agent directory;
//! - stdout must be exactly one JSON value, at most `max_output` bytes;
//! - it must exit 0 within `timeout`, or its whole process group is killed;
//! - its output is read without blocking: a process it leaves behind holding stdout or stderr
//!   is killed with its group after a short linger, and one that left the group (`setsid`) is
//!   given up on with an error result, so no thread ever waits on it.
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

/// The `PATH` agents run with (the daemon's own `PATH` is not passed on).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// After the agent exited, how long its output may stay open (something it started in the
/// background still holding stdout or stderr) before its process group is killed, and then how
/// long before the holder is taken to have left the group and is given up on.
const LINGER: Duration = Duration::from_millis(500);

/// Why the agent at `path` (or its directory) may not run, or `None`. Whoever can write to an
/// agent or its directory can run code as the nanoprobe, so both must be owned by root or by
/// the user the nanoprobe runs as, and be writable by nobody else. The text holds nothing
/// volatile (it is the agent's error result, sent again only when it changes).
pub fn refuse_reason(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = nix::unistd::geteuid().as_raw();
    let check = |what: &str, p: &Path| -> Option<String> {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return Some(format!("cannot inspect the {what} {}: {e}", p.display())),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.uid() != 0 && meta.uid() != me {
            return Some(format!(
                "refused: the {what} {} is owned by uid {}, not by root or the nanoprobe's user \
                 (uid {me}); chown it",
                p.display(),
                meta.uid()
            ));
        }
        if mode & 0o022 != 0 {
            return Some(format!(
                "refused: the {what} {} is writable by group or others (mode {mode:04o}); \
                 chmod go-w it",
                p.display()
            ));
        }
        None
    };
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Some(why) = check("agent directory", dir) {
            return Some(why);
        }
    }
    check("agent", path)
}

/// One output pipe of the agent, read without blocking.
struct Pipe<R> {
    /// `None` once it reached end-of-file (or failed).
    pipe: Option<R>,
    buf: Vec<u8>,
    /// Bytes kept; more are read and discarded (stderr) or make the run fail (stdout).
    keep: usize,
    /// Bytes seen beyond `keep`.
    over: bool,
    error: Option<std::io::Error>,
}

impl<R: Read + std::os::fd::AsRawFd> Pipe<R> {
    fn new(pipe: R, keep: usize) -> Pipe<R> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let fd = pipe.as_raw_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
        let error = flags
            .and_then(|f| fcntl(fd, FcntlArg::F_SETFL(f | OFlag::O_NONBLOCK)))
            .err()
            .map(std::io::Error::from);
        let failed = error.is_some();
        Pipe { pipe: (!failed).then_some(pipe), buf: Vec::new(), keep, over: false, error }
    }

    /// Reads what is there now; whether anything was read.
    fn drain(&mut self) -> bool {
        let Some(pipe) = self.pipe.as_mut() else { return false };
        let mut chunk = [0u8; 16 * 1024];
        let mut any = false;
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => {
                    self.pipe = None;
                    return any;
                }
                Ok(n) => {
                    any = true;
                    let room = self.keep.saturating_sub(self.buf.len());
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                    self.over |= n > room;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return any,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    self.pipe = None;
                    return any;
                }
            }
        }
    }

    fn open(&self) -> bool {
        self.pipe.is_some()
    }
}

/// How the wait for the agent ended.
enum End {
    /// It exited and closed its output.
    Done,
    /// Too much output: killed.
    Oversize,
    /// The deadline passed: killed.
    Timeout,
    /// It exited, but a process it started left its process group and keeps its output open.
    Escaped,
}

/// Runs the agent at `path` as collector `name`. Never panics, never blocks past its deadline
/// (plus a bounded linger when a process it started keeps its output open), and never leaves a
/// process behind in its group when it times out or prints too much. The agent and its
/// directory must pass [`refuse_reason`].
pub fn run_agent(
    name: &str,
    path: &Path,
    params: &BTreeMap<String, String>,
    ctx: &AgentContext,
    limits: AgentLimits,
) -> AgentRun {
    if let Some(why) = refuse_reason(path) {
        return error_result(name, why, None, String::new());
    }
    let started = Instant::now();
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .env("PATH", SAFE_PATH)
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
    let max = limits.max_output;
    let mut out = Pipe::new(child.stdout.take().expect("piped"), max);
    let mut err = Pipe::new(child.stderr.take().expect("piped"), 4096);

    let deadline = started + limits.timeout;
    let mut status = None;
    let mut exited_at: Option<Instant> = None;
    let mut leftovers_killed = false;
    let end = loop {
        let read = out.drain() | err.drain();
        if out.over {
            kill_group();
            break End::Oversize;
        }
        let now = Instant::now();
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    exited_at = Some(now);
                }
                Ok(None) => {}
                Err(_) => {
                    kill_group();
                    break End::Timeout;
                }
            }
        }
        if status.is_some() && !out.open() && !err.open() {
            break End::Done;
        }
        if now >= deadline {
            kill_group();
            break End::Timeout;
        }
        if let Some(t) = exited_at
            && now >= t + LINGER
        {
            if leftovers_killed {
                if now >= t + 2 * LINGER {
                    break End::Escaped;
                }
            } else {
                // Background processes it left in its group hold the output open: end them.
                kill_group();
                leftovers_killed = true;
            }
        }
        if !read {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    if status.is_none() {
        status = reap(child);
    }
    let stderr = String::from_utf8_lossy(&err.buf).trim_end().to_string();
    let exit = status.and_then(|s| s.code());
    let timeout_text =
        format!("timed out after {} s; process group killed", limits.timeout.as_secs_f64());
    match end {
        End::Done => {}
        End::Oversize => {
            return error_result(name, format!("output larger than {max} bytes"), exit, stderr);
        }
        End::Timeout => return error_result(name, timeout_text, None, stderr),
        End::Escaped => {
            return error_result(
                name,
                "exited, but a process it started left its process group and keeps its output \
                 open; not waited for (redirect a daemon's stdout and stderr)"
                    .into(),
                exit,
                stderr,
            );
        }
    }
    if let Some(e) = out.error {
        return error_result(name, format!("cannot read output: {e}"), exit, stderr);
    }
    let bytes = out.buf;
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

/// Waits for a killed child, at most a second; after that a thread reaps it when it dies (a
/// process in uninterruptible sleep dies late), so the caller never waits longer.
fn reap(mut child: std::process::Child) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                std::thread::spawn(move || child.wait());
                return None;
            }
            Err(_) => return None,
        }
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
