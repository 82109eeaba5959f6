//! The runner against real plugins and agents from Debian (monitoring-plugins, resource-agents)
//! and against misbehaving scripts: hanging with children, megabytes of output, invalid UTF-8,
//! missing and non-executable plugins.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use assim_checks::runner::{self, RunnerConfig};
use assim_checks::{Check, CheckState, Kind};

const PLUGINS: &str = "/usr/lib/nagios/plugins";

fn check(kind: Kind, timeout: Duration) -> Check {
    Check {
        name: "t".into(),
        kind,
        interval: Duration::from_secs(60),
        retry_interval: Duration::from_secs(10),
        max_attempts: 3,
        timeout,
    }
}

fn nagios(argv: &[&str]) -> Kind {
    Kind::Nagios { argv: argv.iter().map(|s| s.to_string()).collect() }
}

fn run(kind: Kind, timeout: Duration) -> assim_checks::CheckResult {
    scripts();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(runner::run(&check(kind, timeout), &RunnerConfig::default()))
}

fn need(path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assim_util::testing::skip(format!(
        "{path} is not installed (scripts/install-deps installs it)"
    ));
    false
}

/// Test scripts, written once before any test starts a process (writing an executable while
/// another thread forks can make exec fail with ETXTBSY).
fn scripts() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("assim-checks-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let put = |name: &str, body: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put("hang", "#!/bin/sh\nsleep 1000 &\necho $! > \"$1\"\necho started\nwait\n", 0o755);
        put("flood", "#!/bin/sh\nhead -c 5000000 /dev/zero | tr '\\0' a\necho\nexit 1\n", 0o755);
        put("binary", "#!/bin/sh\nprintf 'OK caf\\351 \\377\\376 | a=1s;;;0\\nmore\\n'\n", 0o755);
        put("env", "#!/bin/sh\nenv\n", 0o755);
        put("noexec", "#!/bin/sh\necho hi\n", 0o644);
        put("exit9", "#!/bin/sh\necho weird\nexit 9\n", 0o755);
        put(
            "lsb-stopped",
            "#!/bin/sh\n[ \"$1\" = status ] && { echo 'x is not running'; exit 3; }\nexit 2\n",
            0o755,
        );
        put("orphan", "#!/bin/sh\n(sleep 1000; echo late) &\necho $! > \"$1\"\necho OK\n", 0o755);
        dir
    })
}

#[test]
fn check_dummy_exit_codes_and_text() {
    if !need(&format!("{PLUGINS}/check_dummy")) {
        return;
    }
    let r = run(nagios(&["check_dummy", "0", "all good"]), Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Ok);
    assert_eq!(r.output, "OK: all good");
    assert_eq!(
        run(nagios(&["check_dummy", "1"]), Duration::from_secs(5)).state,
        CheckState::Warning
    );
    assert_eq!(
        run(nagios(&["check_dummy", "2"]), Duration::from_secs(5)).state,
        CheckState::Critical
    );
    assert_eq!(
        run(nagios(&["check_dummy", "3"]), Duration::from_secs(5)).state,
        CheckState::Unknown
    );
}

#[test]
fn check_tcp_against_a_real_listener_with_perfdata() {
    if !need(&format!("{PLUGINS}/check_tcp")) {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let r = run(nagios(&["check_tcp", "-H", "127.0.0.1", "-p", &port]), Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Ok, "{r:?}");
    let perf = assim_checks::perfdata::parse(&r.perfdata).unwrap();
    assert_eq!(perf[0].label, "time");
    assert_eq!(perf[0].uom, "s");
    drop(l);
    let r = run(nagios(&["check_tcp", "-H", "127.0.0.1", "-p", &port]), Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Critical, "{r:?}");
    // The built-in TCP check agrees.
    let r = run(
        Kind::Tcp { host: "127.0.0.1".into(), port: port.parse().unwrap() },
        Duration::from_secs(2),
    );
    assert_eq!(r.state, CheckState::Critical, "{r:?}");
}

#[test]
fn ocf_heartbeat_dummy_monitor() {
    if !need("/usr/lib/ocf/resource.d/heartbeat/Dummy") {
        return;
    }
    let state = scripts().join("dummy.state");
    let _ = std::fs::remove_file(&state);
    let params: BTreeMap<String, String> =
        [("state".to_owned(), state.display().to_string())].into();
    let kind = Kind::Ocf { provider: "heartbeat".into(), agent: "Dummy".into(), params };
    let r = run(kind.clone(), Duration::from_secs(10));
    assert_eq!(r.state, CheckState::Critical, "{r:?}");
    assert_eq!(r.exit_code, Some(7), "{r:?}");
    assert!(r.output.contains("not running"), "{}", r.output);
    std::fs::write(&state, "").unwrap();
    let r = run(kind, Duration::from_secs(10));
    assert_eq!((r.state, r.exit_code), (CheckState::Ok, Some(0)), "{r:?}");
    let missing = Kind::Ocf {
        provider: "heartbeat".into(),
        agent: "NoSuchAgent".into(),
        params: BTreeMap::new(),
    };
    let r = run(missing, Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Unknown);
    assert!(r.output.contains("NoSuchAgent not found"), "{}", r.output);
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for a reaper is dead too.
        Ok(s) => s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_hanging_plugin_is_killed_with_its_children_at_the_timeout() {
    let pidfile = scripts().join("hang.pid");
    let started = Instant::now();
    let hang = scripts().join("hang").display().to_string();
    let r = run(nagios(&[&hang, &pidfile.display().to_string()]), Duration::from_secs(1));
    let took = started.elapsed();
    assert_eq!(r.state, CheckState::Unknown);
    assert!(r.timed_out);
    assert!(r.output.contains("timed out after 1 s"), "{}", r.output);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let child: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(child) {
        assert!(Instant::now() < deadline, "the plugin's child {child} survived the timeout");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_child_left_behind_by_a_finished_plugin_is_killed() {
    let pidfile = scripts().join("orphan.pid");
    let orphan = scripts().join("orphan").display().to_string();
    let r = run(nagios(&[&orphan, &pidfile.display().to_string()]), Duration::from_secs(2));
    assert_eq!(r.state, CheckState::Ok, "{r:?}");
    let child: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(child) {
        assert!(Instant::now() < deadline, "the plugin's leftover child {child} survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn megabytes_of_output_are_capped_and_drained() {
    let flood = scripts().join("flood").display().to_string();
    let r = run(nagios(&[&flood]), Duration::from_secs(20));
    assert_eq!(r.state, CheckState::Warning, "exit 1 after 5 MB: {:?}", r.output.len());
    assert!(r.truncated);
    assert!(!r.timed_out);
    assert_eq!(r.output.len(), runner::MAX_OUTPUT);
    assert!(r.long_output.len() <= RunnerConfig::default().output_cap);
}

#[test]
fn invalid_utf8_is_replaced_and_perfdata_still_parsed() {
    let binary = scripts().join("binary").display().to_string();
    let r = run(nagios(&[&binary]), Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Ok);
    assert!(r.output.starts_with("OK caf\u{FFFD}"), "{:?}", r.output);
    assert_eq!(r.perfdata, "a=1s;;;0");
    assert_eq!(r.long_output, "more");
}

#[test]
fn missing_non_executable_and_odd_exit_codes_are_unknown() {
    let r = run(nagios(&["check_does_not_exist"]), Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Unknown);
    assert!(r.output.contains("check_does_not_exist not found"), "{}", r.output);
    let noexec = scripts().join("noexec").display().to_string();
    let r = run(nagios(&[&noexec]), Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Unknown);
    assert!(r.output.contains("is not executable"), "{}", r.output);
    let exit9 = scripts().join("exit9").display().to_string();
    let r = run(nagios(&[&exit9]), Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Unknown);
    assert!(r.output.contains("unexpected exit code 9"), "{}", r.output);
}

#[test]
fn plugins_get_no_inherited_environment() {
    let env = scripts().join("env").display().to_string();
    let r = run(nagios(&[&env]), Duration::from_secs(5));
    let all = format!("{}\n{}", r.output, r.long_output);
    let names: Vec<&str> = all.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    assert!(names.contains(&"PATH") && names.contains(&"LANG"), "{names:?}");
    // cargo runs tests with CARGO_* and HOME set; none of it may reach a plugin.
    for n in &names {
        assert!(["PATH", "LANG", "LC_ALL", "PWD", "SHLVL", "_"].contains(n), "leaked {n}");
    }
}

#[test]
fn lsb_status_and_process_checks() {
    let lsb = scripts().join("lsb-stopped").display().to_string();
    let r = run(Kind::Lsb { script: lsb }, Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Critical);
    assert!(r.output.contains("not running (exit 3)"), "{}", r.output);
    let mut child = std::process::Command::new("sleep").arg("4242.5").spawn().unwrap();
    let r = run(Kind::Process { pattern: "sleep 4242.5".into() }, Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Ok, "{}", r.output);
    child.kill().unwrap();
    child.wait().unwrap();
    let r = run(Kind::Process { pattern: "sleep 4242.5".into() }, Duration::from_secs(5));
    assert_eq!(r.state, CheckState::Critical, "{}", r.output);
}
