//! `assim demo --cluster`: the CMA beyond one machine, as real processes on loopback — a
//! throwaway PostgreSQL 15, three clustered NATS servers (the JetStream inbox with 3
//! replicas), two packet readers (`cma --role reader`), two CMA engines (`--role engine`: one
//! active, one standing by) and eight nanoprobes. While local programs send numbered reports
//! through the nanoprobes, the active engine is killed with SIGKILL together with one
//! nanoprobe, then one packet reader, then one NATS server. Narrated with timings; exits 0
//! only if the standby took over, the crash during the takeover was reported, the killed
//! reader's nanoprobes moved to the other one, and every report was applied exactly once with
//! event ids free of gaps and repeats.
//!
//! PostgreSQL and NATS are started as the tests start them (`assim_util::testing`): PostgreSQL
//! in a directory under the temp dir on a Unix socket only (as `nobody` when run as root), the
//! NATS servers on loopback ports; all are stopped and deleted at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use assim_cma::EventKind;
use assim_util::testing::{Nats, Postgres};

use crate::cluster::{Cluster, ClusterSpec};

/// The engine lease of the demo's engines: a takeover within about two seconds.
const LEASE: &str = "2s";

/// Runs the cluster demo with `nodes` nanoprobes.
pub fn run(nodes: usize, keep: bool, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let started = Instant::now();
    let say = |text: &str| println!("[{:>5.1}s] {text}", started.elapsed().as_secs_f64());
    let check_stop = || -> anyhow::Result<()> {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted; stopping every process and removing the working directories");
        }
        Ok(())
    };
    if !Path::new(Postgres::BIN).join("postgres").exists() {
        bail!(
            "the cluster demo needs PostgreSQL 15 in {} (Debian's postgresql-15; \
             scripts/install-deps installs it)",
            Postgres::BIN
        );
    }
    if Nats::program().is_none() {
        bail!(
            "the cluster demo needs nats-server 2.10 or later (scripts/install-deps installs \
             2.15 in /opt/assim-nats)"
        );
    }
    println!(
        "assim demo --cluster: the CMA on PostgreSQL with its inbox on NATS JetStream, two \
         packet readers, two engines (one active, one standing by) and {nodes} nanoprobes, as \
         real processes on loopback.\n"
    );
    say("Starting PostgreSQL 15 (a throwaway cluster) and three NATS servers (JetStream) ...");
    let pg = Postgres::start().context("PostgreSQL did not start")?;
    pg.create_database("assim");
    let nats = Nats::cluster().context("NATS did not start")?;
    let store = pg.url("assim");
    let queue = nats.url();
    say(&format!("PostgreSQL on {}, NATS at {queue}", pg.socket_dir().display()));
    let spec = ClusterSpec {
        cma_args: ["--store", &store, "--engine-lease", LEASE, "--queue", &queue]
            .map(String::from)
            .to_vec(),
        readers: 2,
        ..ClusterSpec::from_current_exe(nodes)?
    };
    say(&format!("Starting CMA engine A (engine lease {LEASE}) and two packet readers ..."));
    let mut c = Cluster::new(spec, keep)?;
    let result = script(&mut c, nats, nodes, &say, &check_stop);
    match &result {
        Ok(()) => {
            println!();
            say("All of it happened as expected. Stopping every process and cleaning up.");
        }
        Err(e) => {
            println!();
            say(&format!("The demo did not go as expected: {e:#}"));
            c.keep = true;
            say(&format!("Logs kept in {}", c.dir.display()));
        }
    }
    drop(c);
    drop(pg);
    result
}

fn script(
    c: &mut Cluster,
    mut nats: Nats,
    nodes: usize,
    say: &dyn Fn(&str),
    check_stop: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    say(&format!("Working directory (data and one log per process): {}", c.dir.display()));
    c.start_all()?;
    let t0 = Instant::now();
    c.wait_ring(Duration::from_secs(30))?;
    say(&format!("{nodes} nanoprobes registered; the ring formed in {}.", secs(t0.elapsed())));
    let a = engine_view(c)?;
    say(&format!(
        "Engine A is {} (term {}); the packet readers at {} take the nanoprobes' datagrams, \
         append them to the JetStream stream ASSIM_INBOX (3 replicas) and acknowledge; engine A \
         applies the stream and sends through the readers.",
        a.role,
        a.term.unwrap_or(0),
        c.node_cma()
    ));
    let mut b = c.spawn_engine("cma-b")?;
    let mut view = b.client.status()?.engine.context("no engine view")?;
    // A standby names the active engine once it has asked for the lease.
    let _ = wait_until(Duration::from_secs(5), || {
        match b.client.status().ok().and_then(|s| s.engine) {
            Some(v) if v.active.is_some() => {
                view = v;
                true
            }
            _ => false,
        }
    });
    say(&format!(
        "Engine B started: {} behind {}; it applies nothing until the lease lapses.",
        view.role,
        view.active.as_deref().unwrap_or("?")
    ));
    check_stop()?;

    // Reports: numbered local events through every nanoprobe but the one that will crash.
    let victim = 2;
    let vname = c.nodes[victim].name.clone();
    let dirs: Vec<PathBuf> = c
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.data_dir.clone())
        .collect();
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let sent = AtomicUsize::new(0);
    let sending = AtomicBool::new(true);
    let failed: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    println!();
    say("Local programs now send numbered reports through the nanoprobes (assim event send).");
    let outcome = std::thread::scope(
        |s| -> anyhow::Result<(Duration, Duration, Duration, Duration)> {
            s.spawn(|| {
                let mut i = 0;
                while sending.load(Ordering::SeqCst) {
                    let text = format!("report-{i}");
                    if let Err(e) = send(&exe, &dirs[i % dirs.len()], &text) {
                        *failed.lock().expect("lock") = Some(e);
                        return;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                    // About 100 reports a second: a steady flow, not a benchmark.
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let result = (|| {
                wait_until(Duration::from_secs(30), || sent.load(Ordering::SeqCst) >= 20)
                    .context("the reports did not start")?;
                check_stop()?;
                let since = c.last_event_id()?;
                say(&format!(
                    "SIGKILL of engine A and, at the same instant, of nanoprobe {vname} ({} reports \
                 sent so far).",
                    sent.load(Ordering::SeqCst)
                ));
                let killed = Instant::now();
                c.stop_cma(true)?;
                c.kill_node(victim)?;
                wait_until(Duration::from_secs(30), || {
                    b.client
                        .status()
                        .ok()
                        .and_then(|s| s.engine)
                        .is_some_and(|e| e.role == "active")
                })
                .context("engine B did not take over")?;
                let took_over = killed.elapsed();
                let replayed = replayed_records(&b.log());
                c.adopt_engine(&mut b);
                let e = engine_view(c)?;
                say(&format!(
                    "+{} engine B holds the lease (term {}), follows the stream and {}.",
                    secs(took_over),
                    e.term.unwrap_or(0),
                    match replayed {
                        Some(n) => format!(
                            "applied {n} record{} from the stream that engine A had taken in (and \
                         acknowledged) but not committed",
                            if n == 1 { "" } else { "s" }
                        ),
                        None =>
                            "found nothing in the stream that engine A had not committed".into(),
                    }
                ));
                let down =
                    c.wait_event(since, Duration::from_secs(30), "host.down of the victim", |e| {
                        e.kind == EventKind::HostDown && e.hostname == vname
                    })?;
                let reported = killed.elapsed();
                say(&format!(
                    "+{} host.down {vname}, from engine B: the crash during the takeover is reported.",
                    secs(reported)
                ));
                check_stop()?;
                std::thread::sleep(Duration::from_secs(1));
                println!();
                let before = sent.load(Ordering::SeqCst);
                let reader = c.readers[0].name.clone();
                say(&format!("SIGKILL of packet reader {reader} ({before} reports sent so far)."));
                let reader_killed = Instant::now();
                let since = c.last_event_id()?;
                c.kill_reader(0)?;
                let next = format!("report-{}", before + 2 * dirs.len());
                c.wait_event(
                    since,
                    Duration::from_secs(60),
                    "a report after the reader's loss",
                    |e| e.kind == EventKind::LocalEvent && e.text == next,
                )?;
                let moved = reader_killed.elapsed();
                say(&format!(
                    "+{} reports are applied again: the nanoprobes that sent to {reader} heard \
                 nothing for a few seconds, moved to the other reader and sent again what it had \
                 not acknowledged.",
                    secs(moved)
                ));
                check_stop()?;
                std::thread::sleep(Duration::from_secs(1));
                println!();
                let before = sent.load(Ordering::SeqCst);
                say(&format!("SIGKILL of NATS server 1 of 3 ({before} reports sent so far)."));
                let nats_killed = Instant::now();
                nats.kill(0);
                let next = format!("report-{}", before + dirs.len());
                c.wait_event(
                    down.id,
                    Duration::from_secs(60),
                    "a report after the NATS loss",
                    |e| e.kind == EventKind::LocalEvent && e.text == next,
                )?;
                let resumed = nats_killed.elapsed();
                say(&format!(
                    "+{} reports are applied again: the stream kept a quorum of two (a lost stream \
                 leader is replaced within seconds; meanwhile the nanoprobes keep the reports).",
                    secs(resumed)
                ));
                std::thread::sleep(Duration::from_secs(1));
                Ok((took_over, reported, moved, resumed))
            })();
            sending.store(false, Ordering::SeqCst);
            result
        },
    );
    let (took_over, reported, moved, resumed) = outcome?;
    if let Some(e) = failed.lock().expect("lock").take() {
        bail!("a report could not be sent: {e}");
    }
    let total = sent.load(Ordering::SeqCst);
    println!();
    say(&format!("Stopped sending after {total} reports; checking every one was applied once ..."));
    let mut counts = BTreeMap::new();
    wait_until(Duration::from_secs(60), || {
        counts = local_counts(c).unwrap_or_default();
        (0..total).all(|i| counts.contains_key(&format!("report-{i}")))
    })
    .with_context(|| {
        let missing: Vec<_> =
            (0..total).filter(|i| !counts.contains_key(&format!("report-{i}"))).collect();
        format!("{} reports were never applied: {missing:?}", missing.len())
    })?;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(t, _)| t.clone()).collect();
    if !twice.is_empty() {
        bail!("reports applied more than once: {twice:?}");
    }
    let events = c.events_since(0)?;
    for (i, e) in events.iter().enumerate() {
        if e.id != i as u64 + 1 {
            bail!("event ids jump from {} to {}", i, e.id);
        }
    }
    let downs: Vec<_> =
        events.iter().filter(|e| e.kind == EventKind::HostDown).map(|e| &e.hostname).collect();
    if downs != [&vname] {
        bail!("expected one host.down ({vname}), saw {downs:?}");
    }
    say(&format!(
        "Checked: {total} reports applied exactly once, event ids 1 to {} without gap or repeat, \
         one host.down ({vname}).",
        events.len()
    ));
    say(&format!(
        "Takeover {} after the kill, crash reported {} after it; reports flowing {} after a \
         packet reader and {} after a NATS server was lost.",
        secs(took_over),
        secs(reported),
        secs(moved),
        secs(resumed)
    ));
    Ok(())
}

/// How many records an engine's log says it replayed from the inbox at its start.
fn replayed_records(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("replaying inbox records not yet applied"))?;
    let at = line.find("records=")? + "records=".len();
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn engine_view(c: &Cluster) -> anyhow::Result<assim_api::EngineView> {
    c.client.status()?.engine.context("the CMA's status names no engine")
}

/// `assim event send` through the nanoprobe whose data directory is `dir`.
fn send(exe: &Path, dir: &Path, text: &str) -> Result<(), String> {
    let out = std::process::Command::new(exe)
        .args(["event", "send", "--data-dir"])
        .arg(dir)
        .arg(text)
        .output()
        .map_err(|e| format!("cannot run assim event send: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{text}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// How many times each local event's text was applied.
fn local_counts(c: &Cluster) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for e in c.events_since(0)? {
        if e.kind == EventKind::LocalEvent {
            *counts.entry(e.text).or_default() += 1;
        }
    }
    Ok(counts)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
