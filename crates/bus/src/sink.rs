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
//! - nagios: the external command lines of an event (see [`nagios_commands`]: one per host it
//!   concerns) appended to the command file (usually a FIFO that Nagios/Icinga reads).

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

/// The longest external command line written, newline included: a write of at most
/// `PIPE_BUF` (4096 on Linux) bytes to a FIFO is atomic, so two writers never interleave and a
/// retried event never leaves half a line. Longer texts are cut (Nagios takes 8192).
pub const NAGIOS_MAX_LINE: usize = 4096;

/// The longest host or service name a command is written for (longer: no command).
pub const NAGIOS_MAX_NAME: usize = 255;

/// A name as one field of a command: no `;` (the field separator), no line breaks or other
/// control characters (a second command, or a truncated one); `None` when nothing is left or
/// it is longer than [`NAGIOS_MAX_NAME`] bytes.
fn nagios_field(s: &str) -> Option<String> {
    let f: String = s.chars().map(|c| if c == ';' || c.is_control() { ' ' } else { c }).collect();
    (!f.trim().is_empty() && f.len() <= NAGIOS_MAX_NAME).then_some(f)
}

/// The plugin output field (the last one, so `;` is fine): no control characters.
fn nagios_output(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Nagios host states of `PROCESS_HOST_CHECK_RESULT`.
const UP: u8 = 0;
const DOWN: u8 = 1;
const UNREACHABLE: u8 = 2;

/// The Nagios external commands for an event, in order, each without its trailing newline;
/// none for an event that concerns no host (ring changes) or a switch event without a switch
/// or hosts. `T` is the event time in seconds.
///
/// | event | commands |
/// |---|---|
/// | `host.up`, `host.suspect` | `[T] PROCESS_HOST_CHECK_RESULT;HOST;0;TEXT` (suspect stays UP until confirmed) |
/// | `host.down` | `…;HOST;1;…` (DOWN) |
/// | `host.unreachable` | `…;HOST;2;…` (UNREACHABLE: its switch is down or cut off) |
/// | `switch.down` | the switch DOWN (1), then each host of the body's `hosts` UNREACHABLE (2) |
/// | `switch.unreachable` | the switch UP (0) when some of its hosts still answer the CMA (body `answering`: it forwards for them) or it answers on its management address (`management_probe.answered`), else UNREACHABLE (2: it forwards, the path from the CMA to it is broken); then each host of `hosts` UNREACHABLE |
/// | `switch.up` | the switch UP, then each host of `hosts` (those back with it) UP; those not back get their own `host.down` next |
/// | an event with a `service` tag | `[T] PROCESS_SERVICE_CHECK_RESULT;HOST;SERVICE;CODE;TEXT`: `service.ok/warning/critical/unknown` give 0/1/2/3, other kinds map the severity (debug/info/notice 0, warning 1, error/critical 2) |
/// | any other event with a host | the same with the sink's default service name |
///
/// The switch's host name is [`assim_export::monitoring::switch_host_name`] of the body's
/// `switch` (its LLDP/CDP name, else chassis id), as `assim export nagios` names it; a segment
/// or pinned ring (no `switch` in the body) gives host commands only. The tag `nagios_host`
/// overrides the event's host (for a switch event: the switch's).
///
/// Service results are sent with their real state also when the CMA suppressed the alarm
/// (`suppressed=SWITCH`, severity info, the host unreachable): Nagios stores the state and, its
/// host being UNREACHABLE, sends no notification; the CMA's "still CRITICAL" re-raise after
/// `switch.up` then reaches a host that is UP again, and Nagios notifies.
///
/// Names lose `;` and control characters, texts lose control characters, and every line is cut
/// to [`NAGIOS_MAX_LINE`] bytes: one host is always one well-formed command.
pub fn nagios_commands(e: &Event, default_service: &str) -> Vec<String> {
    let t = e.time.0 / 1_000_000;
    let line = |body: String| {
        let mut l = format!("[{t}] {body}");
        if l.len() >= NAGIOS_MAX_LINE {
            let mut cut = NAGIOS_MAX_LINE - 1;
            while !l.is_char_boundary(cut) {
                cut -= 1;
            }
            l.truncate(cut);
        }
        l
    };
    let host_result = |host: &str, state: u8, text: &str| {
        let host = nagios_field(host)?;
        Some(line(format!("PROCESS_HOST_CHECK_RESULT;{host};{state};{}", nagios_output(text))))
    };
    let override_host = e.tags.get("nagios_host").map(String::as_str);
    match e.kind {
        EventKind::SwitchDown | EventKind::SwitchUnreachable | EventKind::SwitchUp => {
            return switch_commands(e, override_host, &host_result);
        }
        _ => {}
    }
    let host = override_host.unwrap_or(&e.hostname);
    let state = match e.kind {
        EventKind::HostUp | EventKind::HostSuspect => Some(UP),
        EventKind::HostDown => Some(DOWN),
        EventKind::HostUnreachable => Some(UNREACHABLE),
        _ => None,
    };
    if let Some(state) = state {
        return host_result(host, state, &e.text).into_iter().collect();
    }
    let Some(host) = nagios_field(host) else { return Vec::new() };
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
    let Some(service) = nagios_field(e.tags.get("service").map_or(default_service, String::as_str))
    else {
        return Vec::new();
    };
    vec![line(format!(
        "PROCESS_SERVICE_CHECK_RESULT;{host};{service};{code};{}",
        nagios_output(&e.text)
    ))]
}

/// The commands of a `switch.*` event (see [`nagios_commands`]): the switch's own result, then
/// one per host its body lists.
fn switch_commands(
    e: &Event,
    override_host: Option<&str>,
    host_result: &dyn Fn(&str, u8, &str) -> Option<String>,
) -> Vec<String> {
    let body = e.body.as_ref();
    let field = |name: &str| body.and_then(|b| b.get(name));
    let switch = field("switch").filter(|s| s.is_object()).map(|s| {
        assim_export::monitoring::switch_host_name(
            s.get("system_name").and_then(serde_json::Value::as_str),
            s.get("chassis_id").and_then(serde_json::Value::as_str).unwrap_or_default(),
        )
    });
    let switch = override_host.map(str::to_owned).or(switch);
    let hosts = |name: &str| -> Vec<&str> {
        field(name)
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(|h| h.get("host")?.as_str()).collect())
            .unwrap_or_default()
    };
    let (switch_state, host_state, host_words) = match e.kind {
        EventKind::SwitchDown => (DOWN, UNREACHABLE, "is unreachable"),
        // It forwards for some hosts, or it answers on its management address: alive, UP.
        EventKind::SwitchUnreachable
            if !hosts("answering").is_empty()
                || field("management_probe").and_then(|m| m.get("answered"))
                    == Some(&serde_json::Value::Bool(true)) =>
        {
            (UP, UNREACHABLE, "is unreachable")
        }
        EventKind::SwitchUnreachable => (UNREACHABLE, UNREACHABLE, "is unreachable"),
        _ => (UP, UP, "is back"),
    };
    let mut out = Vec::new();
    out.extend(switch.and_then(|s| host_result(&s, switch_state, &e.text)));
    for h in hosts("hosts") {
        out.extend(host_result(h, host_state, &format!("{h} {host_words}: {}", e.text)));
    }
    out
}

/// Appends the event's commands to the external command file (blocking), one `write` per
/// line. Events without commands are skipped (success). A full FIFO (Nagios reading slowly) is
/// waited for until `timeout`; a failure part-way has written the first lines, and the retry
/// writes them again (a repeated passive result changes nothing in Nagios).
pub fn nagios(
    command_file: &Path,
    default_service: &str,
    e: &Event,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let lines = nagios_commands(e, default_service);
    if lines.is_empty() {
        return Ok(());
    }
    // The command file is a FIFO while Nagios runs: opening it without a reader would block, so
    // it is opened non-blocking (ENXIO = Nagios is not reading: retry later).
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(command_file)
        .map_err(|err| format!("cannot open the command file {}: {err}", command_file.display()))?;
    let deadline = Instant::now() + timeout;
    for l in lines {
        let bytes = format!("{l}\n").into_bytes();
        loop {
            match f.write(&bytes) {
                Ok(n) if n == bytes.len() => break,
                // Only a regular file (not a FIFO) writes part of a short line.
                Ok(n) => {
                    f.write_all(&bytes[n..]).map_err(|err| {
                        format!("cannot write to {}: {err}", command_file.display())
                    })?;
                    break;
                }
                Err(err)
                    if err.kind() == std::io::ErrorKind::WouldBlock
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => {
                    return Err(format!("cannot write to {}: {err}", command_file.display()));
                }
            }
        }
    }
    Ok(())
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

    fn one(e: &Event) -> String {
        let mut v = nagios_commands(e, "assim");
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    #[test]
    fn nagios_commands_of_host_and_service_events() {
        let e = ev(EventKind::LocalEvent, Severity::Critical, &[("service", "RAID;x")]);
        assert_eq!(
            one(&e),
            "[1700000000] PROCESS_SERVICE_CHECK_RESULT;db1;RAID x;2;RAID STATUS CHANGE Volume 2"
        );
        let e = ev(EventKind::LocalEvent, Severity::Info, &[]);
        assert!(one(&e).contains(";db1;assim;0;"));
        let e = ev(EventKind::HostDown, Severity::Critical, &[]);
        assert!(one(&e).contains("PROCESS_HOST_CHECK_RESULT;db1;1;"));
        let e = ev(EventKind::HostUp, Severity::Info, &[]);
        assert!(one(&e).contains("PROCESS_HOST_CHECK_RESULT;db1;0;"));
        let e = ev(EventKind::HostUnreachable, Severity::Warning, &[]);
        assert_eq!(
            one(&e),
            "[1700000000] PROCESS_HOST_CHECK_RESULT;db1;2;RAID STATUS CHANGE Volume 2"
        );
        let e = ev(EventKind::HostUnreachable, Severity::Warning, &[("nagios_host", "db1.lan")]);
        assert!(one(&e).contains(";db1.lan;2;"));
        let e = ev(EventKind::ServiceUnknown, Severity::Warning, &[("service", "disk")]);
        assert!(one(&e).contains(";db1;disk;3;"));
        // A suppressed alarm (its host unreachable behind a switch) keeps its real state:
        // Nagios holds back the notification itself while the host is UNREACHABLE.
        let e = ev(
            EventKind::ServiceCritical,
            Severity::Info,
            &[("service", "http"), ("suppressed", "tor7")],
        );
        assert!(one(&e).contains("PROCESS_SERVICE_CHECK_RESULT;db1;http;2;"));
        // No host: nothing (ring changes, a switch event without a body).
        let mut e = ev(EventKind::RingChanged, Severity::Info, &[]);
        e.hostname.clear();
        assert!(nagios_commands(&e, "assim").is_empty());
    }

    fn switch_event(kind: EventKind, body: serde_json::Value) -> Event {
        let mut e = ev(kind, Severity::Critical, &[("switch", "5e:2d:c5:37:09:20")]);
        e.hostname.clear();
        e.text = "switch tor7 is down or cut off".into();
        e.body = Some(body);
        e
    }

    fn hosts(names: &[&str]) -> serde_json::Value {
        names.iter().map(|h| serde_json::json!({"node": "00", "host": h})).collect()
    }

    const TOR7: &str = "[1700000000] PROCESS_HOST_CHECK_RESULT;switch-tor7;";

    #[test]
    fn nagios_switch_down_is_the_switch_down_and_one_unreachable_per_host() {
        let sw = serde_json::json!({"chassis_id": "5e:2d:c5:37:09:20", "system_name": "tor7",
            "management_addresses": []});
        let e = switch_event(
            EventKind::SwitchDown,
            serde_json::json!({"ring": "switch:5e:2d:c5:37:09:20", "kind": "switch", "switch": sw,
                "hosts": hosts(&["web1", "web2", "db1"]), "answering": []}),
        );
        assert_eq!(
            nagios_commands(&e, "assim"),
            vec![
                format!("{TOR7}1;switch tor7 is down or cut off"),
                "[1700000000] PROCESS_HOST_CHECK_RESULT;web1;2;web1 is unreachable: switch tor7 \
                 is down or cut off"
                    .to_string(),
                "[1700000000] PROCESS_HOST_CHECK_RESULT;web2;2;web2 is unreachable: switch tor7 \
                 is down or cut off"
                    .to_string(),
                "[1700000000] PROCESS_HOST_CHECK_RESULT;db1;2;db1 is unreachable: switch tor7 \
                 is down or cut off"
                    .to_string(),
            ]
        );
        // The name is the one `assim export nagios` gives the switch, also for a switch that
        // announces no name (its chassis id).
        for (name, chassis) in [(Some("tor7"), "5e:2d:c5:37:09:20"), (None, "5e:2d:c5:37:09:20")] {
            let uplink = assim_api::SwitchUplink {
                chassis_id: chassis.into(),
                switch_name: name.map(Into::into),
                management_addresses: Vec::new(),
                port_id: "swp1".into(),
                nic: "eth0".into(),
            };
            let e = switch_event(
                EventKind::SwitchDown,
                serde_json::json!({"switch": {"chassis_id": chassis, "system_name": name},
                    "hosts": []}),
            );
            let want = assim_export::monitoring::switch_host(&uplink);
            assert_eq!(
                one(&e),
                format!("[1700000000] PROCESS_HOST_CHECK_RESULT;{want};1;{}", e.text)
            );
        }
        assert_eq!(
            one(&switch_event(
                EventKind::SwitchDown,
                serde_json::json!({"switch": {"chassis_id": "5e:2d:c5:37:09:20"}, "hosts": []})
            )),
            "[1700000000] PROCESS_HOST_CHECK_RESULT;switch-5e_2d_c5_37_09_20;1;switch tor7 is \
             down or cut off"
        );
    }

    #[test]
    fn nagios_switch_unreachable_and_up() {
        let sw = serde_json::json!({"chassis_id": "c", "system_name": "tor7"});
        // Some hosts still answer the CMA through it: the switch forwards, it stays UP.
        let e = switch_event(
            EventKind::SwitchUnreachable,
            serde_json::json!({"switch": sw, "hosts": hosts(&["web1"]),
                "answering": hosts(&["web2"])}),
        );
        let v = nagios_commands(&e, "assim");
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].starts_with(&format!("{TOR7}0;")), "{v:?}");
        assert!(v[1].contains("PROCESS_HOST_CHECK_RESULT;web1;2;"), "{v:?}");
        // Nobody answers the CMA, a peer on another switch reaches them: cut off from the CMA,
        // so the switch itself is UNREACHABLE.
        let e = switch_event(
            EventKind::SwitchUnreachable,
            serde_json::json!({"switch": sw, "hosts": hosts(&["web1", "web2"]), "answering": [],
                "peer_probes": {"answered": hosts(&["web1"])}}),
        );
        let v = nagios_commands(&e, "assim");
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].starts_with(&format!("{TOR7}2;")), "{v:?}");
        assert!(v[1..].iter().all(|l| l.contains(";2;")), "{v:?}");
        // Nobody answers, but the switch answers on its management address: alive, UP.
        let e = switch_event(
            EventKind::SwitchUnreachable,
            serde_json::json!({"switch": sw, "hosts": hosts(&["web1", "web2"]), "answering": [],
                "management_probe": {"address": "192.0.2.7", "answered": true}}),
        );
        let v = nagios_commands(&e, "assim");
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].starts_with(&format!("{TOR7}0;")), "{v:?}");
        assert!(v[1..].iter().all(|l| l.contains(";2;")), "{v:?}");
        // Back: the switch and the hosts back with it UP; those not back get their host.down.
        let e = switch_event(
            EventKind::SwitchUp,
            serde_json::json!({"switch": sw, "hosts": hosts(&["web1", "web2"]),
                "not_back": hosts(&["db1"])}),
        );
        let v = nagios_commands(&e, "assim");
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].starts_with(&format!("{TOR7}0;")), "{v:?}");
        assert!(v[1].contains(";web1;0;web1 is back: "), "{v:?}");
        assert!(v[2].contains(";web2;0;"), "{v:?}");
        // A segment or pinned ring has no switch host: the hosts only.
        let e = switch_event(
            EventKind::SwitchDown,
            serde_json::json!({"switch": null, "kind": "segment", "hosts": hosts(&["web1"])}),
        );
        assert!(one(&e).contains(";web1;2;"));
        // `nagios_host` names the switch's host.
        let mut e = switch_event(EventKind::SwitchUp, serde_json::json!({"switch": sw}));
        e.tags.insert("nagios_host".into(), "core-sw".into());
        assert!(one(&e).contains("PROCESS_HOST_CHECK_RESULT;core-sw;0;"));
    }

    #[test]
    fn nagios_odd_switch_bodies_give_no_stray_commands() {
        // No body, an empty host list, hosts that are not objects or have no name, blank and
        // overlong names: only what names a host becomes a command.
        let mut e = switch_event(EventKind::SwitchDown, serde_json::Value::Null);
        e.body = None;
        assert!(nagios_commands(&e, "assim").is_empty());
        for body in [
            serde_json::json!({}),
            serde_json::json!({"switch": "tor7", "hosts": []}),
            serde_json::json!({"hosts": "web1"}),
            serde_json::json!({"hosts": [1, null, {"node": "n"}, {"host": 7}, {"host": " ;\n"},
                {"host": "x".repeat(NAGIOS_MAX_NAME + 1)}]}),
        ] {
            let e = switch_event(EventKind::SwitchDown, body.clone());
            assert!(nagios_commands(&e, "assim").is_empty(), "{body}");
        }
        // A text longer than a pipe's atomic write is cut on a character boundary.
        let mut e = switch_event(
            EventKind::SwitchDown,
            serde_json::json!({"switch": {"chassis_id": "c"}, "hosts": hosts(&["web1"])}),
        );
        e.text = "é".repeat(5000);
        for l in nagios_commands(&e, "assim") {
            assert!(l.len() < NAGIOS_MAX_LINE, "{}", l.len());
        }
    }

    proptest::proptest! {
        /// Whatever the names and texts, every host gets exactly one command, and each command
        /// reads back (as Nagios splits it: `;` fields, the output up to the newline) as that
        /// host with its state: no name or text ever starts a second command.
        #[test]
        fn nagios_hostile_names_never_inject_a_command(
            names in proptest::collection::vec("(?s).{0,40}", 0..6),
            switch in proptest::option::of("(?s).{0,40}"),
            text in "(?s).{0,200}",
            kind in 0..3u8,
        ) {
            let kind = [EventKind::SwitchDown, EventKind::SwitchUnreachable, EventKind::SwitchUp]
                [kind as usize];
            let mut e = switch_event(kind, serde_json::json!({
                "switch": {"chassis_id": "c", "system_name": switch},
                "hosts": hosts(&names.iter().map(String::as_str).collect::<Vec<_>>()),
            }));
            e.text = text;
            let lines = nagios_commands(&e, "assim");
            let named = names.iter().filter(|n| nagios_field(n).is_some()).count();
            proptest::prop_assert_eq!(lines.len(), named + 1);
            let written: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut seen = Vec::new();
            for l in written.split('\n').filter(|l| !l.is_empty()) {
                let rest = l.strip_prefix("[1700000000] PROCESS_HOST_CHECK_RESULT;");
                proptest::prop_assert!(rest.is_some(), "{l}");
                let mut f = rest.unwrap().splitn(3, ';');
                let host = f.next().unwrap().to_string();
                let code = f.next().unwrap_or_default();
                proptest::prop_assert!(matches!(code, "0" | "1" | "2"), "{l}");
                proptest::prop_assert!(!l.chars().any(char::is_control), "{l:?}");
                seen.push(host);
            }
            let mut want: Vec<String> = names.iter().filter_map(|n| nagios_field(n)).collect();
            want.insert(0, assim_export::monitoring::switch_host_name(switch.as_deref(), "c"));
            proptest::prop_assert_eq!(seen, want);
        }
    }

    #[test]
    fn nagios_writes_one_line_per_host_to_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("nagios.cmd");
        let e = switch_event(
            EventKind::SwitchDown,
            serde_json::json!({"switch": {"chassis_id": "c", "system_name": "tor7"},
                "hosts": hosts(&["web1", "web2\n[1] SHUTDOWN_PROGRAM"])}),
        );
        // Nagios not running (no file): an error, nothing created.
        let err = nagios(&fifo, "assim", &e, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("cannot open the command file"), "{err}");
        assert!(!fifo.exists());
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A FIFO nobody reads: ENXIO, retried later.
        let err = nagios(&fifo, "assim", &e, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("cannot open the command file"), "{err}");
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        // The reader opens the FIFO in its own time: retry until it does.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(err) = nagios(&fifo, "assim", &e, Duration::from_secs(1)) {
            assert!(Instant::now() < deadline, "{err}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = reader.join().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains(";switch-tor7;1;"), "{text}");
        assert!(lines[1].contains(";web1;2;"), "{text}");
        assert!(lines[2].contains(";web2 [1] SHUTDOWN_PROGRAM;2;"), "{text}");
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
