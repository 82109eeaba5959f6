//! Runs one check and turns what happened into a [`CheckResult`].
//!
//! External checks (Nagios plugins, OCF agents, LSB scripts, `systemctl`) run as child
//! processes with these guarantees:
//! - **Own process group.** The child is the leader of a new process group; at the timeout the
//!   whole group gets SIGTERM, then SIGKILL after a grace period, so a plugin's children die
//!   with it. After a normal exit, anything the plugin left in its group is killed too.
//! - **Output cap.** stdout and stderr are read concurrently; the first `output_cap` bytes of
//!   each are kept, the rest is read and discarded, so a chatty plugin never blocks on a full
//!   pipe and never costs more memory than the cap. Invalid UTF-8 is replaced (lossy).
//! - **No inherited environment.** Only `PATH` (a fixed system path), `LANG=C`, `LC_ALL=C`
//!   and the kind's own variables (`OCF_*`) are set: no secrets from the nanoprobe's
//!   environment reach a plugin.
//! - **Never a crash.** A missing or non-executable plugin, a failed spawn or a timeout is an
//!   UNKNOWN result whose output says what went wrong and what to do.
//!
//! Built-in kinds (`tcp`, `process`) run in the runtime (the `/proc` scan on the blocking pool).
//! Every function here is async and never blocks the caller's task.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assim_wire::msg::CheckState;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::spec::{Check, Kind};

/// The `PATH` plugins run with.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where things are, and the limits of a run.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Where Nagios plugins named without a `/` are found.
    pub plugin_dir: PathBuf,
    /// `OCF_ROOT`: agents are `<ocf_root>/resource.d/<provider>/<agent>`.
    pub ocf_root: PathBuf,
    /// Where LSB scripts named without a `/` are found.
    pub init_dir: PathBuf,
    /// Bytes of stdout and of stderr kept per run.
    pub output_cap: usize,
    /// Between SIGTERM and SIGKILL at a timeout.
    pub kill_grace: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            plugin_dir: PathBuf::from("/usr/lib/nagios/plugins"),
            ocf_root: PathBuf::from("/usr/lib/ocf"),
            init_dir: PathBuf::from("/etc/init.d"),
            output_cap: 64 * 1024,
            kill_grace: Duration::from_secs(1),
        }
    }
}

pub use crate::result::{CheckResult, MAX_OUTPUT, MAX_PERFDATA};

impl CheckResult {
    fn unknown(output: String, duration: Duration) -> CheckResult {
        CheckResult {
            state: CheckState::Unknown,
            output: clip(&output, MAX_OUTPUT),
            long_output: String::new(),
            perfdata: String::new(),
            duration,
            exit_code: None,
            truncated: false,
            timed_out: false,
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Runs `check` once.
pub async fn run(check: &Check, cfg: &RunnerConfig) -> CheckResult {
    let started = Instant::now();
    let mut r = match &check.kind {
        Kind::Nagios { argv } => {
            let program = resolve(&cfg.plugin_dir, &argv[0]);
            let out = exec(&program, &argv[1..], &[], check.timeout, cfg).await;
            out.map(|o| nagios_result(&o))
        }
        Kind::Ocf { provider, agent, params } => {
            let program = cfg.ocf_root.join("resource.d").join(provider).join(agent);
            let mut env = vec![
                ("OCF_ROOT".to_owned(), cfg.ocf_root.display().to_string()),
                ("OCF_RA_VERSION_MAJOR".to_owned(), "1".to_owned()),
                ("OCF_RA_VERSION_MINOR".to_owned(), "0".to_owned()),
                ("OCF_RESOURCE_INSTANCE".to_owned(), check.name.clone()),
                ("OCF_RESOURCE_TYPE".to_owned(), agent.clone()),
                ("OCF_RESOURCE_PROVIDER".to_owned(), provider.clone()),
            ];
            env.extend(params.iter().map(|(k, v)| (format!("OCF_RESKEY_{k}"), v.clone())));
            let out = exec(&program, &["monitor".to_owned()], &env, check.timeout, cfg).await;
            out.map(|o| ocf_result(&format!("{provider}:{agent}"), &o))
        }
        Kind::Lsb { script } => {
            let program = resolve(&cfg.init_dir, script);
            let out = exec(&program, &["status".to_owned()], &[], check.timeout, cfg).await;
            out.map(|o| lsb_result(script, &o))
        }
        Kind::Systemd { unit } => match which("systemctl") {
            None => Err("systemctl is not installed: systemd checks need systemd".to_owned()),
            Some(program) => {
                let args = ["is-active".to_owned(), "--".to_owned(), unit.clone()];
                let out = exec(&program, &args, &[], check.timeout, cfg).await;
                out.map(|o| systemd_result(unit, &o))
            }
        },
        Kind::Tcp { host, port } => Ok(tcp_check(host, *port, check.timeout).await),
        Kind::Process { pattern } => {
            let p = pattern.clone();
            match tokio::task::spawn_blocking(move || process_check(&p)).await {
                Ok(r) => Ok(r),
                Err(e) => Err(format!("the process scan failed: {e}")),
            }
        }
    }
    .unwrap_or_else(|msg| CheckResult::unknown(msg, Duration::ZERO));
    r.duration = started.elapsed();
    r
}

fn resolve(dir: &Path, name: &str) -> PathBuf {
    if name.contains('/') { PathBuf::from(name) } else { dir.join(name) }
}

/// Finds `name` in [`SAFE_PATH`].
fn which(name: &str) -> Option<PathBuf> {
    SAFE_PATH.split(':').map(|d| Path::new(d).join(name)).find(|p| is_executable(p).is_ok())
}

fn is_executable(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} not found: install the plugin (e.g. Debian's monitoring-plugins) or fix the check's argv",
            p.display()
        )),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
        Ok(m) if !m.is_file() => Err(format!("{} is not a file", p.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("{} is not executable: chmod +x it or fix the check's argv", p.display()))
        }
        Ok(_) => Ok(()),
    }
}

/// What a child process did.
#[derive(Debug, Default)]
struct Output {
    code: Option<i32>,
    /// Killed by a signal (not by us at the timeout).
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    truncated: bool,
    timed_out: bool,
    timeout: Duration,
}

/// Runs `program args` in its own process group with a cleared environment and a timeout.
/// `Err` carries an UNKNOWN message (the process did not run).
async fn exec(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    timeout: Duration,
    cfg: &RunnerConfig,
) -> Result<Output, String> {
    is_executable(program)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let Some(pid) = child.id() else {
        return Err(format!("{} exited before it could be watched", program.display()));
    };
    let pgid = Pid::from_raw(pid as i32);
    let cap = cfg.output_cap;
    let out = tokio::spawn(read_capped(child.stdout.take(), cap));
    let err = tokio::spawn(read_capped(child.stderr.take(), cap));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut timed_out = false;
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            timed_out = true;
            let _ = killpg(pgid, Signal::SIGTERM);
            match tokio::time::timeout(cfg.kill_grace, child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    // Whatever the plugin left in its group (a child holding the pipes, a stray daemon) dies now,
    // unless the pipes close on their own before the deadline.
    let readers = async { (out.await, err.await) };
    tokio::pin!(readers);
    let (o, e) = match tokio::time::timeout_at(deadline, &mut readers).await {
        Ok(r) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            r
        }
        Err(_) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            // A process that escaped the group could keep a pipe open forever: bound the wait.
            match tokio::time::timeout(cfg.kill_grace, &mut readers).await {
                Ok(r) => r,
                Err(_) => (Ok((Vec::new(), true)), Ok((Vec::new(), true))),
            }
        }
    };
    let (stdout, t1) = o.unwrap_or_default();
    let (stderr, t2) = e.unwrap_or_default();
    use std::os::unix::process::ExitStatusExt as _;
    Ok(Output {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        truncated: t1 || t2,
        timed_out,
        timeout,
    })
}

/// Reads everything, keeping the first `cap` bytes. Returns the bytes and whether any were
/// discarded.
async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut r) = r else { return (Vec::new(), false) };
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

/// Splits Nagios plugin output into status line, long output and performance data:
/// `TEXT | PERF` on the first line; further lines are long output until a line with `|`, after
/// which everything is performance data.
pub fn split_nagios_output(stdout: &str) -> (String, String, String) {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or("");
    let (text, mut perf) = match first.split_once('|') {
        Some((t, p)) => (t.trim().to_owned(), p.trim().to_owned()),
        None => (first.trim().to_owned(), String::new()),
    };
    let mut long = Vec::new();
    let mut in_perf = false;
    for line in lines {
        if in_perf {
            push_perf(&mut perf, line);
        } else if let Some((t, p)) = line.split_once('|') {
            long.push(t);
            push_perf(&mut perf, p);
            in_perf = true;
        } else {
            long.push(line);
        }
    }
    (text, long.join("\n").trim_end().to_owned(), perf)
}

fn push_perf(perf: &mut String, more: &str) {
    let more = more.trim();
    if more.is_empty() {
        return;
    }
    if !perf.is_empty() {
        perf.push(' ');
    }
    perf.push_str(more);
}

fn killed_message(o: &Output, what: &str) -> Option<String> {
    if o.timed_out {
        return Some(format!(
            "{what} timed out after {} s and was killed with its process group",
            o.timeout.as_secs_f64()
        ));
    }
    o.signal.map(|s| format!("{what} was killed by signal {s}"))
}

fn finish(
    state: CheckState,
    o: &Output,
    output: String,
    long: String,
    perf: String,
) -> CheckResult {
    CheckResult {
        state,
        output: clip(&output, MAX_OUTPUT),
        long_output: long,
        perfdata: clip(&perf, MAX_PERFDATA),
        duration: Duration::ZERO,
        exit_code: o.code,
        truncated: o.truncated,
        timed_out: o.timed_out,
    }
}

/// Nagios: exit 0–3 are OK/WARNING/CRITICAL/UNKNOWN; anything else is UNKNOWN.
fn nagios_result(o: &Output) -> CheckResult {
    if let Some(msg) = killed_message(o, "the plugin") {
        return finish(CheckState::Unknown, o, msg, String::new(), String::new());
    }
    let (mut text, long, perf) = split_nagios_output(&o.stdout);
    if text.is_empty() {
        text = o.stderr.lines().next().unwrap_or("").trim().to_owned();
    }
    if text.is_empty() {
        text = format!("(no output, exit code {})", o.code.unwrap_or(-1));
    }
    let state = match o.code {
        Some(0) => CheckState::Ok,
        Some(1) => CheckState::Warning,
        Some(2) => CheckState::Critical,
        Some(3) => CheckState::Unknown,
        Some(c) => {
            text = format!("unexpected exit code {c} (plugins exit 0-3): {text}");
            CheckState::Unknown
        }
        None => CheckState::Unknown,
    };
    finish(state, o, text, long, perf)
}

/// OCF `monitor` exit codes (OCF resource agent API):
/// 0 running → OK; 7 not running → CRITICAL; 1 generic error → CRITICAL (the resource failed);
/// 8 running as promoted → OK; 9 failed as promoted → CRITICAL; 2 bad arguments,
/// 3 unimplemented, 4 insufficient privileges, 5 not installed, 6 not configured → UNKNOWN
/// (the agent cannot tell; fix the check); anything else → UNKNOWN.
pub fn ocf_state(code: i32) -> (CheckState, &'static str) {
    match code {
        0 => (CheckState::Ok, "running"),
        1 => (CheckState::Critical, "generic error"),
        2 => (CheckState::Unknown, "invalid arguments (OCF_ERR_ARGS)"),
        3 => (CheckState::Unknown, "action not implemented (OCF_ERR_UNIMPLEMENTED)"),
        4 => (CheckState::Unknown, "insufficient privileges (OCF_ERR_PERM)"),
        5 => (CheckState::Unknown, "not installed (OCF_ERR_INSTALLED)"),
        6 => (CheckState::Unknown, "not configured (OCF_ERR_CONFIGURED)"),
        7 => (CheckState::Critical, "not running"),
        8 => (CheckState::Ok, "running as promoted"),
        9 => (CheckState::Critical, "failed as promoted"),
        _ => (CheckState::Unknown, "unexpected exit code"),
    }
}

fn last_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).rfind(|l| !l.is_empty())
}

fn ocf_result(agent: &str, o: &Output) -> CheckResult {
    if let Some(msg) = killed_message(o, &format!("OCF agent {agent}")) {
        return finish(CheckState::Unknown, o, msg, String::new(), String::new());
    }
    let code = o.code.unwrap_or(-1);
    let (state, meaning) = ocf_state(code);
    let mut text = format!("OCF agent {agent}: {meaning} (exit {code})");
    if let Some(detail) = last_line(&o.stderr).or_else(|| last_line(&o.stdout)) {
        text.push_str(": ");
        text.push_str(detail);
    }
    finish(state, o, text, o.stdout.trim_end().to_owned(), String::new())
}

/// LSB `status` exit codes: 0 running → OK; 1 dead with pid file, 2 dead with lock file,
/// 3 not running → CRITICAL; 4 status unknown and anything else → UNKNOWN.
pub fn lsb_state(code: i32) -> (CheckState, &'static str) {
    match code {
        0 => (CheckState::Ok, "running"),
        1 => (CheckState::Critical, "dead, but the pid file exists"),
        2 => (CheckState::Critical, "dead, but the lock file exists"),
        3 => (CheckState::Critical, "not running"),
        4 => (CheckState::Unknown, "status unknown"),
        _ => (CheckState::Unknown, "unexpected exit code"),
    }
}

fn lsb_result(script: &str, o: &Output) -> CheckResult {
    if let Some(msg) = killed_message(o, &format!("init script {script}")) {
        return finish(CheckState::Unknown, o, msg, String::new(), String::new());
    }
    let code = o.code.unwrap_or(-1);
    let (state, meaning) = lsb_state(code);
    let mut text = format!("{script}: {meaning} (exit {code})");
    if let Some(l) = last_line(&o.stdout) {
        text.push_str(": ");
        text.push_str(l);
    }
    finish(state, o, text, String::new(), String::new())
}

/// `systemctl is-active`: exit 0 → OK; "activating"/"reloading" → WARNING;
/// "inactive"/"failed"/"deactivating" → CRITICAL; anything else (no systemd) → UNKNOWN.
fn systemd_result(unit: &str, o: &Output) -> CheckResult {
    if let Some(msg) = killed_message(o, "systemctl") {
        return finish(CheckState::Unknown, o, msg, String::new(), String::new());
    }
    let word = o.stdout.lines().next().unwrap_or("").trim().to_owned();
    let state = match (o.code, word.as_str()) {
        (Some(0), _) => CheckState::Ok,
        (_, "activating" | "reloading") => CheckState::Warning,
        (_, "inactive" | "failed" | "deactivating") => CheckState::Critical,
        _ => CheckState::Unknown,
    };
    let mut text = format!("unit {unit} is {}", if word.is_empty() { "?" } else { &word });
    if state == CheckState::Unknown
        && let Some(e) = last_line(&o.stderr)
    {
        text.push_str(": ");
        text.push_str(e);
    }
    finish(state, o, text, String::new(), String::new())
}

async fn tcp_check(host: &str, port: u16, timeout: Duration) -> CheckResult {
    let started = Instant::now();
    let r = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await;
    let secs = started.elapsed().as_secs_f64();
    let (state, output) = match r {
        Ok(Ok(_)) => (
            CheckState::Ok,
            format!("TCP OK - {secs:.3} second response time on {host} port {port}"),
        ),
        Ok(Err(e)) => (CheckState::Critical, format!("TCP CRITICAL - {host} port {port}: {e}")),
        Err(_) => (
            CheckState::Critical,
            format!(
                "TCP CRITICAL - no answer from {host} port {port} within {} s",
                timeout.as_secs_f64()
            ),
        ),
    };
    CheckResult {
        state,
        output,
        long_output: String::new(),
        perfdata: format!("time={secs:.6}s;;;0.000000;{:.6}", timeout.as_secs_f64()),
        duration: Duration::ZERO,
        exit_code: None,
        truncated: false,
        timed_out: false,
    }
}

/// Does a process with this comm, exe (path or basename) or cmdline substring exist?
pub fn process_matches(pattern: &str, comm: &str, exe: Option<&str>, cmdline: &str) -> bool {
    if comm == pattern {
        return true;
    }
    if let Some(exe) = exe {
        let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
        if exe == pattern || exe.rsplit('/').next() == Some(pattern) {
            return true;
        }
    }
    !cmdline.is_empty() && cmdline.contains(pattern)
}

fn process_check(pattern: &str) -> CheckResult {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let base = e.path();
            let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            let exe = std::fs::read_link(base.join("exe")).ok().map(|p| p.display().to_string());
            let cmdline = std::fs::read(base.join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
                .unwrap_or_default();
            if process_matches(pattern, comm.trim(), exe.as_deref(), &cmdline) {
                found.push(pid.to_owned());
            }
        }
    }
    let n = found.len();
    let (state, output) = if n == 0 {
        (CheckState::Critical, format!("PROCS CRITICAL: no process matches {pattern:?}"))
    } else {
        (
            CheckState::Ok,
            format!("PROCS OK: {n} process{} matching {pattern:?}", if n == 1 { "" } else { "es" }),
        )
    };
    CheckResult {
        state,
        output,
        long_output: String::new(),
        perfdata: format!("procs={n};;1:;0"),
        duration: Duration::ZERO,
        exit_code: None,
        truncated: false,
        timed_out: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nagios_output_is_split_into_status_long_output_and_perfdata() {
        let (t, l, p) = split_nagios_output(
            "DISK OK - free | /=2643MB;5948;5958;0;5968\n/ 15272 MB\n/boot 68 MB | /boot=68MB\n/home=69357MB",
        );
        assert_eq!(t, "DISK OK - free");
        assert_eq!(l, "/ 15272 MB\n/boot 68 MB");
        assert_eq!(p, "/=2643MB;5948;5958;0;5968 /boot=68MB /home=69357MB");
        assert_eq!(split_nagios_output(""), (String::new(), String::new(), String::new()));
    }

    #[test]
    fn exit_code_tables() {
        assert_eq!(ocf_state(0).0, CheckState::Ok);
        assert_eq!(ocf_state(7).0, CheckState::Critical);
        assert_eq!(ocf_state(1).0, CheckState::Critical);
        assert_eq!(ocf_state(5).0, CheckState::Unknown);
        assert_eq!(lsb_state(3).0, CheckState::Critical);
        assert_eq!(lsb_state(4).0, CheckState::Unknown);
        assert_eq!(lsb_state(150).0, CheckState::Unknown);
    }

    #[test]
    fn process_patterns() {
        assert!(process_matches("sshd", "sshd", None, ""));
        assert!(process_matches("nginx", "x", Some("/usr/sbin/nginx"), ""));
        assert!(process_matches("/usr/sbin/nginx", "x", Some("/usr/sbin/nginx (deleted)"), ""));
        assert!(process_matches(
            "http.server",
            "python3",
            Some("/usr/bin/python3.11"),
            "python3 -m http.server 8000"
        ));
        assert!(!process_matches("nginx", "python3", Some("/usr/bin/python3"), "python3 x"));
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("abc", 10), "abc");
    }
}
