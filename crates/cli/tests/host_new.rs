//! Issue 17 item 3, the first-boot hook, with a real CMA and a real nanoprobe: the first start
//! of a nanoprobe gives exactly one `host.new` (with its OS and SSH host keys: `complete=true`,
//! so it waited for both discovery results, well inside the wait), delivered to an exec sink
//! whose script is the "register with the backup system" example of docs/automation.md;
//! restarting the nanoprobe gives none, and neither does a `kill -9` and restart of the CMA.
//!
//! Absence is shown with a window after the re-registration is known to be applied (the
//! `host.up` of the revived node; the nanoprobe's "registering again" after the CMA restart):
//! a CMA that took the node for new would hold it in `assim_cma_host_new_waiting` (published
//! every second) for the whole wait, or raise `host.new` as soon as the results arrive.

use std::path::Path;
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterSpec};
use assim_api::Event;

/// The wait configured for the test (the default is 60 s).
const WAIT: &str = "4s";

fn host_new(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| e.kind.name() == "host.new").collect()
}

fn waiting_gauge(c: &Cluster) -> anyhow::Result<u64> {
    let text = c.client.metrics()?;
    text.lines()
        .find_map(|l| l.strip_prefix("assim_cma_host_new_waiting "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no assim_cma_host_new_waiting in /metrics:\n{text}"))
}

/// For `window`: no `host.new` after `since` and nobody waiting.
fn nothing_new_for(c: &Cluster, since: u64, window: Duration, when: &str) -> anyhow::Result<()> {
    let end = Instant::now() + window;
    while Instant::now() < end {
        anyhow::ensure!(waiting_gauge(c)? == 0, "{when}: the CMA took the host for new");
        let evs = c.events_since(since)?;
        anyhow::ensure!(host_new(&evs).is_empty(), "{when}: host.new again: {:?}", host_new(&evs));
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn wait_log(path: &Path, needle: &str, count: usize, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < end, "no {needle:?} in {}:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn host_new_once_on_first_start_never_on_a_nanoprobe_or_cma_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The exec sink: the worked example of docs/automation.md, with its registry in the test
    // directory instead of /var/lib/backup.
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let registry = dir.path().join("backup-clients");
    let script = scripts.join("10-backup-register");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # Registers a host with the backup system the first time it comes up.\n\
             set -eu\n\
             [ \"$ASSIM_EVENT_TYPE\" = host.new ] || exit 0\n\
             registry={registry}\n\
             grep -q \"^$ASSIM_EVENT_NODE \" \"$registry\" 2>/dev/null && exit 0   # at least once: de-duplicate\n\
             printf '%s %s %s os=%s keys=%s\\n' \"$ASSIM_EVENT_NODE\" \"$ASSIM_EVENT_HOST\" \
             \"${{ASSIM_EVENT_TAG_ADDRESSES:-}}\" \"${{ASSIM_EVENT_TAG_OS:-unknown}}\" \
             \"${{ASSIM_EVENT_TAG_SSH_KEY_TYPES:-}}\" >> \"$registry\"\n",
            registry = registry.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let config = dir.path().join("cma.toml");
    std::fs::write(
        &config,
        format!(
            "[[bus.sinks]]\nname = \"first-boot\"\nfilter = \"type:host.new\"\ntype = \"exec\"\n\
             dir = \"{}\"\n",
            scripts.display()
        ),
    )?;

    let mut spec = ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1);
    spec.cma_args = vec![
        "--config".into(),
        config.display().to_string(),
        "--host-new-wait".into(),
        WAIT.into(),
    ];
    let mut c = Cluster::new(spec, false)?;
    c.start_all()?;
    let name = c.nodes[0].name.clone();

    // First start: exactly one host.new, with everything (it waited for the results).
    let e =
        c.wait_event(0, Duration::from_secs(30), "host.new", |e| e.kind.name() == "host.new")?;
    assert_eq!(e.hostname, name);
    assert_eq!(e.tags["complete"], "true", "the OS and keys arrived inside the wait: {e:?}");
    assert!(e.tags.contains_key("os"), "{e:?}");
    let body = e.body.clone().unwrap();
    assert_eq!(body["hostname"], name.as_str());
    assert!(body["os"]["id"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    assert!(body["ssh_host_keys"].is_array(), "{body}");
    assert!(body["addresses"].as_array().is_some_and(|a| !a.is_empty()), "{body}");
    // The exec sink ran the script once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&registry).unwrap_or_default().lines().count() < 1 {
        anyhow::ensure!(Instant::now() < deadline, "the exec sink did not run; see {:?}", c.dir());
        std::thread::sleep(Duration::from_millis(100));
    }
    let node = e.host.unwrap().to_string();
    let line = std::fs::read_to_string(&registry)?;
    assert!(line.starts_with(&format!("{node} {name} ")), "{line}");
    assert_eq!(host_new(&c.events_since(0)?).len(), 1);

    // The nanoprobe restarts (a goodbye, then a hello of the known node id): none.
    let cursor = c.last_event_id()?;
    c.stop_node(0)?;
    c.start_node(0)?;
    c.wait_event(cursor, Duration::from_secs(30), "host.up after the restart", |e| {
        e.kind.name() == "host.up" && e.hostname == name
    })?;
    nothing_new_for(&c, cursor, Duration::from_secs(2), "after a nanoprobe restart")?;

    // The CMA is killed and restarts; the nanoprobe registers again: none.
    let cursor = c.last_event_id()?;
    c.stop_cma(true)?;
    c.start_cma()?;
    let log = c.dir().join(format!("{name}.log"));
    wait_log(&log, "the CMA restarted; registering again", 1, Duration::from_secs(30))?;
    nothing_new_for(&c, cursor, Duration::from_secs(2), "after a CMA restart")?;

    assert_eq!(host_new(&c.events_since(0)?).len(), 1);
    assert_eq!(std::fs::read_to_string(&registry)?.lines().count(), 1);
    Ok(())
}
