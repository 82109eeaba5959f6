//! External discovery agents as real shell scripts: the contract of docs/discovery.md.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assim_discovery::agents::{AgentContext, AgentLimits, AgentRun, list_agents, run_agent};

fn agent(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn ctx() -> AgentContext {
    AgentContext { node_id: "0192f0e0-0000-7000-8000-000000000001".into(), hostname: "web3".into() }
}

fn run(path: &Path, limits: AgentLimits) -> AgentRun {
    let name = format!("agent.{}", path.file_name().unwrap().to_str().unwrap());
    let mut params = BTreeMap::new();
    params.insert("zone".to_string(), "eu-west".to_string());
    run_agent(&name, path, &params, &ctx(), limits)
}

fn error_of(r: &AgentRun) -> (&str, &serde_json::Value) {
    let p = &r.discovery.payload;
    (p["error"].as_str().unwrap_or_else(|| panic!("not an error payload: {p}")), &p["exit"])
}

/// True once `pid` is gone or a zombie (reparented to a PID 1 that does not reap).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
    }
}

#[test]
fn good_json_with_parameters_and_a_cleared_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = agent(
        dir.path(),
        "inventory",
        r#"printf '{"zone":"%s","node":"%s","host":"%s","collector":"%s","home":"%s","path_set":%s}' \
            "$ASSIM_PARAM_ZONE" "$ASSIM_NODE_ID" "$ASSIM_HOSTNAME" "$ASSIM_COLLECTOR" "${HOME:-unset}" \
            "$( [ -n "$PATH" ] && echo true || echo false)""#,
    );
    let r = run(&p, AgentLimits::default());
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.discovery.name, "agent.inventory");
    let v = &r.discovery.payload;
    assert_eq!(v["zone"], "eu-west");
    assert_eq!(v["node"], "0192f0e0-0000-7000-8000-000000000001");
    assert_eq!(v["host"], "web3");
    assert_eq!(v["collector"], "agent.inventory");
    assert_eq!(v["home"], "unset", "the environment is cleared");
    assert_eq!(v["path_set"], true, "PATH is kept");
    // The same output twice hashes the same (so an unchanged agent sends nothing).
    assert_eq!(run(&p, AgentLimits::default()).discovery.hash, r.discovery.hash);
}

#[test]
fn invalid_json_and_failures_become_error_results() {
    let dir = tempfile::tempdir().unwrap();
    let bad = agent(dir.path(), "bad", "echo 'not json {'");
    let r = run(&bad, AgentLimits::default());
    let (error, exit) = error_of(&r);
    assert!(error.contains("not one JSON value"), "{error}");
    assert_eq!(exit, 0);

    let two = agent(dir.path(), "two", "echo '{}'; echo '{}'");
    assert!(error_of(&run(&two, AgentLimits::default())).0.contains("not one JSON value"));

    let empty = agent(dir.path(), "empty", "true");
    assert!(error_of(&run(&empty, AgentLimits::default())).0.contains("printed nothing"));

    let fails =
        agent(dir.path(), "fails", "echo '{\"partial\":1}'; echo 'disk on fire' >&2; exit 3");
    let r = run(&fails, AgentLimits::default());
    let (error, exit) = error_of(&r);
    assert_eq!((error, exit), ("exited with status 3", &serde_json::json!(3)));
    assert_eq!(r.stderr, "disk on fire");
    // Failing the same way again produces the same payload (nothing volatile in it).
    assert_eq!(run(&fails, AgentLimits::default()).discovery.hash, r.discovery.hash);
}

#[test]
fn a_hanging_agent_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let hang = agent(
        dir.path(),
        "hang",
        &format!("sleep 1000 & echo $! > {}\nsleep 1000", pidfile.display()),
    );
    let started = Instant::now();
    let r = run(&hang, AgentLimits { timeout: Duration::from_secs(1), ..AgentLimits::default() });
    let took = started.elapsed();
    let (error, exit) = error_of(&r);
    assert!(error.starts_with("timed out after 1 s"), "{error}");
    assert!(exit.is_null());
    assert!(took < Duration::from_secs(10), "returned after {took:?}");
    let child: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dead(child) {
        assert!(Instant::now() < deadline, "the agent's child {child} survived the timeout");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn oversized_output_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let limits = AgentLimits { max_output: 1 << 20, ..AgentLimits::default() };
    // Valid JSON, just too big.
    let big = agent(
        dir.path(),
        "big",
        "printf '\"'; head -c 2000000 /dev/zero | tr '\\0' a; printf '\"'",
    );
    let r = run(&big, limits);
    let (error, _) = error_of(&r);
    assert_eq!(error, "output larger than 1048576 bytes");
    // Never stops printing: killed, not waited for.
    let endless = agent(dir.path(), "endless", "yes");
    let started = Instant::now();
    let r = run(&endless, limits);
    let (error, _) = error_of(&r);
    assert_eq!(error, "output larger than 1048576 bytes");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Exactly at the limit is fine.
    let at =
        agent(dir.path(), "at", "printf '\"'; head -c 1048574 /dev/zero | tr '\\0' a; printf '\"'");
    let r = run(&at, limits);
    assert_eq!(r.error, None);
}

#[test]
fn only_executable_visible_files_are_agents() {
    let dir = tempfile::tempdir().unwrap();
    agent(dir.path(), "b-agent", "echo 1");
    agent(dir.path(), "a-agent", "echo 1");
    agent(dir.path(), ".hidden", "echo 1");
    agent(dir.path(), "backup~", "echo 1");
    std::fs::write(dir.path().join("README"), "not an agent").unwrap();
    std::fs::create_dir(dir.path().join("subdir")).unwrap();
    let names: Vec<String> = list_agents(dir.path()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["agent.a-agent", "agent.b-agent"]);
    assert!(list_agents(&dir.path().join("missing")).is_empty());
}

#[test]
fn item_14_an_agent_whose_child_left_its_group_does_not_hang_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    // The child starts its own session (so its own process group) and keeps stdout and stderr.
    let p = agent(
        dir.path(),
        "escape",
        &format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 60' &\nwhile [ ! -s {} ]; do sleep 0.01; done\necho '{{}}'",
            pidfile.display(),
            pidfile.display()
        ),
    );
    let started = Instant::now();
    let r = run(&p, AgentLimits { timeout: Duration::from_secs(20), ..AgentLimits::default() });
    let took = started.elapsed();
    let escaped: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(escaped), nix::sys::signal::SIGKILL);
    let (error, exit) = error_of(&r);
    assert!(error.contains("left its process group"), "{error}");
    assert_eq!(exit, 0);
    assert!(took < Duration::from_secs(5), "returned after {took:?}");

    // A background process that stayed in the group is ended, and the output counts.
    let bg = dir.path().join("bg.pid");
    let p = agent(
        dir.path(),
        "background",
        &format!("sleep 60 & echo $! > {}\necho '{{\"ok\":1}}'", bg.display()),
    );
    let started = Instant::now();
    let r = run(&p, AgentLimits { timeout: Duration::from_secs(20), ..AgentLimits::default() });
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.discovery.payload["ok"], 1);
    assert!(started.elapsed() < Duration::from_secs(5), "returned after {:?}", started.elapsed());
    let child: u32 = std::fs::read_to_string(&bg).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dead(child) {
        assert!(Instant::now() < deadline, "the agent's background child {child} survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn item_14_agents_writable_or_owned_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = agent(dir.path(), "inv", "echo '{}'");
    assert_eq!(run(&p, AgentLimits::default()).error, None);

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = run(&p, AgentLimits::default());
    let (error, exit) = error_of(&r);
    assert!(error.contains("agent directory") && error.contains("chmod go-w"), "{error}");
    assert!(exit.is_null());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o775)).unwrap();
    let r = run(&p, AgentLimits::default());
    let (error, _) = error_of(&r);
    assert!(error.contains("writable by group or others (mode 0775)"), "{error}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(run(&p, AgentLimits::default()).error, None);

    // Owned by another user (tests run as root in CI, which may give a file away).
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let r = run(&p, AgentLimits::default());
        let (error, _) = error_of(&r);
        assert!(error.contains("owned by uid 65534"), "{error}");
    } else {
        assim_util::testing::skip("giving a file to another user needs root");
    }
}

#[test]
fn item_14_agents_get_a_fixed_path_not_the_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let p = agent(dir.path(), "path", r#"printf '{"path":"%s"}' "$PATH""#);
    let r = run(&p, AgentLimits::default());
    assert_eq!(r.discovery.payload["path"], assim_discovery::agents::SAFE_PATH);
}
