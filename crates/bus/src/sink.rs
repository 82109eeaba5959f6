//! Delivering one event to one sink. Each function makes exactly one attempt and says whether it
//! worked; retries, backoff and dead letters are the [`crate::runner`]'s job.
//!
//! - webhook: `POST url` with the event as JSON, headers `Content-Type: application/json`,
//!   `X-Assim-Event-Id: ID` (receivers de-duplicate by it: delivery is at least once, and exactly
//!   once unless the CMA dies between the receiver's 2xx and the cursor update) and, with a
//!   secret, `X-Assim-Signature: sha256=HEX(HMAC-SHA256(secret, body))`. 2xx is success.
//! - exec: every executable regular file in the directory, in name order, with the event as
//!   JSON on stdin and in the environment: `ASSIM_EVENT_ID`, `_TYPE`, `_SEVERITY`, `_HOST`,
//!   `_NODE`, `_TIME` (µs), `_TEXT`, `_JSON`, and `ASSIM_EVENT_TAG_<KEY>` per tag (key upper-case,
//!   other characters than letters and digits become `_`), and nothing else of the CMA's
//!   environment but a fixed `PATH`. Exit 0 is success; a script that outlives the timeout is
//!   killed with its whole process group.
//! - nagios: one external command line per event (see [`nagios_command`]) appended to the command
//!   file (usually a FIFO that Nagios/Icinga reads).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assim_cma::{Event, EventKind, Severity};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One failed attempt, in words for the log and the dead-letter record.
pub type DeliveryError = String;

/// `sha256=HEX` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON document sinks deliver: the event as the HTTP API gives it ([`assim_api::Event`],
/// `type` as its dotted name).
pub fn event_json(e: &Event) -> serde_json::Value {
    serde_json::to_value(assim_api::Event::from(e.clone())).expect("events serialize")
}

/// One webhook attempt (blocking).
pub fn webhook(
    url: &str,
    secret: Option<&str>,
    e: &Event,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(&event_json(e)).expect("JSON");
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let mut req = agent
        .post(url)
        .set("Content-Type", "application/json")
        .set("X-Assim-Event-Id", &e.id.to_string());
    if let Some(s) = secret {
        req = req.set("X-Assim-Signature", &signature(s.as_bytes(), &body));
    }
    match req.send_bytes(&body) {
        Ok(r) if (200..300).contains(&r.status()) => Ok(()),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(ureq::Error::Status(code, _)) => Err(format!("{url} answered {code}")),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// The environment an exec sink's scripts get.
pub fn exec_env(e: &Event) -> Vec<(String, String)> {
    let mut env = vec![
        ("ASSIM_EVENT_ID".to_string(), e.id.to_string()),
        ("ASSIM_EVENT_TYPE".into(), e.kind.name().into()),
        ("ASSIM_EVENT_SEVERITY".into(), e.severity.name().into()),
        ("ASSIM_EVENT_HOST".into(), e.hostname.clone()),
        ("ASSIM_EVENT_NODE".into(), e.host.map(|h| h.to_string()).unwrap_or_default()),
        ("ASSIM_EVENT_TIME".into(), e.time.0.to_string()),
        ("ASSIM_EVENT_TEXT".into(), e.text.clone()),
        ("ASSIM_EVENT_JSON".into(), event_json(e).to_string()),
    ];
    for (k, v) in &e.tags {
        let key: String = k
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
            .collect();
        env.push((format!("ASSIM_EVENT_TAG_{key}"), v.clone()));
    }
    env
}

/// The `PATH` exec-sink scripts run with (the CMA's own environment is not passed on).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The pipe, switched to non-blocking writes.
fn nonblocking(pipe: std::process::ChildStdin) -> std::io::Result<std::process::ChildStdin> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::fd::AsRawFd as _;
    let fd = pipe.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(pipe)
}

/// Runs every script of `dir` for `e` (blocking); the first failure is the error. Scripts get
/// a cleared environment: `PATH` ([`SAFE_PATH`]) and the event's variables only.
pub fn exec(dir: &Path, e: &Event, timeout: Duration) -> Result<(), DeliveryError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut scripts: Vec<_> = std::fs::read_dir(dir)
        .map_err(|err| format!("cannot read the script directory {}: {err}", dir.display()))?
        .filter_map(|d| d.ok().map(|d| d.path()))
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    scripts.sort();
    let json = serde_json::to_vec(&event_json(e)).expect("JSON");
    let env = exec_env(e);
    for script in scripts {
        use std::os::unix::process::CommandExt as _;
        let mut child = Command::new(&script)
            // Its own process group, so a timeout kills whatever the script started too.
            .process_group(0)
            // Nothing of the CMA's environment (its API token among it) reaches a script.
            .env_clear()
            .env("PATH", SAFE_PATH)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        // Written without blocking, between checks of the deadline: a script that never reads
        // its stdin cannot hold the delivery past its timeout.
        let mut stdin = child.stdin.take().and_then(|s| nonblocking(s).ok());
        let mut written = 0;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(pipe) = stdin.as_mut() {
                match pipe.write(&json[written..]) {
                    Ok(n) => written += n,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    // A script that does not read its stdin is fine.
                    Err(_) => written = json.len(),
                }
                if written >= json.len() {
                    stdin = None;
                }
            }
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not finish within {timeout:?}; killed",
                        script.display()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(err) => return Err(format!("cannot wait for {}: {err}", script.display())),
            }
        };
        if !status.success() {
            return Err(format!("{} failed: {status}", script.display()));
        }
    }
    Ok(())
}

/// The Nagios external command for an event, without the trailing newline:
///
/// - `host.up` / `host.down` / `host.suspect`: `[T] PROCESS_HOST_CHECK_RESULT;HOST;CODE;TEXT`
///   with 0 = UP, 1 = DOWN (suspect is reported as UP until confirmed);
/// - events with a `service` tag: `PROCESS_SERVICE_CHECK_RESULT;HOST;SERVICE;CODE;TEXT`;
///   `service.ok/warning/critical/unknown` give 0/1/2/3, others map the severity
///   (debug/info/notice 0, warning 1, error/critical 2);
/// - any other event: the same, with the sink's default service name.
///
/// `T` is the event time in seconds. Newlines and `;` in names are replaced, so one event is
/// always one well-formed command. `None` for events without a host (ring changes).
pub fn nagios_command(e: &Event, default_service: &str) -> Option<String> {
    let clean = |s: &str| s.replace(['\n', '\r', ';'], " ");
    let host = clean(e.tags.get("nagios_host").unwrap_or(&e.hostname));
    if host.is_empty() {
        return None;
    }
    let t = e.time.0 / 1_000_000;
    let text = e.text.replace(['\n', '\r'], " ");
    match e.kind {
        EventKind::HostUp | EventKind::HostSuspect => {
            return Some(format!("[{t}] PROCESS_HOST_CHECK_RESULT;{host};0;{text}"));
        }
        EventKind::HostDown => {
            return Some(format!("[{t}] PROCESS_HOST_CHECK_RESULT;{host};1;{text}"));
        }
        _ => {}
    }
    let code = match e.kind {
        EventKind::ServiceOk => 0,
        EventKind::ServiceWarning => 1,
        EventKind::ServiceCritical => 2,
        EventKind::ServiceUnknown => 3,
        _ => match e.severity {
            Severity::Debug | Severity::Info | Severity::Notice => 0,
            Severity::Warning => 1,
            Severity::Error | Severity::Critical => 2,
        },
    };
    let service = clean(e.tags.get("service").map_or(default_service, String::as_str));
    Some(format!("[{t}] PROCESS_SERVICE_CHECK_RESULT;{host};{service};{code};{text}"))
}

/// Appends the event's command to the external command file (blocking). Events without a host
/// are skipped (success).
pub fn nagios(command_file: &Path, default_service: &str, e: &Event) -> Result<(), DeliveryError> {
    let Some(line) = nagios_command(e, default_service) else { return Ok(()) };
    // The command file is a FIFO while Nagios runs: opening it without a reader would block, so
    // it is opened non-blocking (ENXIO = Nagios is not reading: retry later).
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(command_file)
        .map_err(|err| format!("cannot open the command file {}: {err}", command_file.display()))?;
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(|err| format!("cannot write to {}: {err}", command_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ev(kind: EventKind, severity: Severity, tags: &[(&str, &str)]) -> Event {
        Event {
            id: 42,
            time: assim_wire::Timestamp(1_700_000_000_000_000),
            kind,
            host: None,
            hostname: "db1".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            text: "RAID STATUS CHANGE\nVolume 2".into(),
            severity,
            body: None,
        }
    }

    #[test]
    fn signature_is_the_rfc4231_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn nagios_commands() {
        let e = ev(EventKind::LocalEvent, Severity::Critical, &[("service", "RAID;x")]);
        assert_eq!(
            nagios_command(&e, "assim").unwrap(),
            "[1700000000] PROCESS_SERVICE_CHECK_RESULT;db1;RAID x;2;RAID STATUS CHANGE Volume 2"
        );
        let e = ev(EventKind::LocalEvent, Severity::Info, &[]);
        assert!(nagios_command(&e, "assim").unwrap().contains(";db1;assim;0;"));
        let e = ev(EventKind::HostDown, Severity::Critical, &[]);
        assert!(nagios_command(&e, "assim").unwrap().contains("PROCESS_HOST_CHECK_RESULT;db1;1;"));
        let e = ev(EventKind::ServiceUnknown, Severity::Warning, &[("service", "disk")]);
        assert!(nagios_command(&e, "assim").unwrap().contains(";db1;disk;3;"));
    }

    #[test]
    fn exec_runs_every_script_with_the_event_and_kills_slow_ones() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = |name: &str, body: &str| {
            let p = dir.path().join("scripts").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "10-log",
            &format!(
                "cat > {o}.json; echo \"$ASSIM_EVENT_ID $ASSIM_EVENT_TYPE $ASSIM_EVENT_TAG_FQDN\" > {o}.env",
                o = out.display()
            ),
        );
        // Not executable: ignored.
        std::fs::write(dir.path().join("scripts/README"), "not a script").unwrap();
        let e = ev(EventKind::LocalEvent, Severity::Warning, &[("fqdn", "db1.example.com")]);
        exec(&dir.path().join("scripts"), &e, Duration::from_secs(10)).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!((json["id"].as_u64(), json["type"].as_str()), (Some(42), Some("local.event")));
        assert_eq!(
            std::fs::read_to_string(out.with_extension("env")).unwrap(),
            "42 local.event db1.example.com\n"
        );
        script("20-fail", "exit 3");
        let err = exec(&dir.path().join("scripts"), &e, Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("20-fail failed"), "{err}");
        script("20-fail", "sleep 30");
        let started = Instant::now();
        let err = exec(&dir.path().join("scripts"), &e, Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("killed") && started.elapsed() < Duration::from_secs(10), "{err}");
    }

    #[test]
    fn item_14_exec_scripts_get_a_clean_environment() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).unwrap();
        let out = dir.path().join("env");
        let p = scripts.join("dump");
        std::fs::write(&p, format!("#!/bin/sh\nenv > {}\n", out.display())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ev(EventKind::LocalEvent, Severity::Warning, &[("fqdn", "db1")]);
        exec(&scripts, &e, Duration::from_secs(10)).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let names: Vec<&str> =
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
        // What the shell itself may set, the fixed PATH, and the event.
        let own = ["PWD", "OLDPWD", "SHLVL", "_"];
        for n in &names {
            assert!(
                n.starts_with("ASSIM_EVENT_") || *n == "PATH" || own.contains(n),
                "the script saw {n} from the CMA's environment:\n{text}"
            );
        }
        assert!(text.contains(&format!("PATH={SAFE_PATH}\n")), "{text}");
        assert!(names.contains(&"ASSIM_EVENT_TAG_FQDN"), "{text}");
    }

    #[test]
    fn item_14_a_script_that_never_reads_stdin_is_still_timed_out() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deaf");
        std::fs::write(&p, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        // An event larger than a pipe buffer (64 KiB), smaller than one environment string.
        let mut e = ev(EventKind::LocalEvent, Severity::Warning, &[]);
        e.text = "x".repeat(100_000);
        let started = Instant::now();
        let err = exec(dir.path(), &e, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn exec_env_names() {
        let e = ev(
            EventKind::LocalEvent,
            Severity::Warning,
            &[("fqdn", "db1.example.com"), ("rack-id", "7")],
        );
        let env: BTreeMap<_, _> = exec_env(&e).into_iter().collect();
        assert_eq!(env["ASSIM_EVENT_TYPE"], "local.event");
        assert_eq!(env["ASSIM_EVENT_SEVERITY"], "warning");
        assert_eq!(env["ASSIM_EVENT_TAG_FQDN"], "db1.example.com");
        assert_eq!(env["ASSIM_EVENT_TAG_RACK_ID"], "7");
    }
}
