//! Issue 14: the CMA's inbox on NATS JetStream, with real processes — a throwaway PostgreSQL
//! 15 cluster, three clustered `nats-server`s (`assim_util::testing::Nats`), two
//! `cma --store postgres://… --queue nats://…` engines and three nanoprobes.
//!
//! Local programs send numbered events through the nanoprobes. The active engine acknowledges
//! some that it cannot commit (PostgreSQL is stopped) and is killed with SIGKILL; later one
//! NATS server of three is killed while events stream in. Every event is applied exactly once
//! (none that the dead engine acknowledged is lost — with the local inbox they are — none is
//! applied twice), and the event ids run on without gap or repeat.
//!
//! Without PostgreSQL or nats-server installed the test prints `SKIP:` (a failure under
//! `CI=true`). `ASSIM_KEEP=1` keeps the directories (the processes' logs).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use assim::cluster::{Cluster, ClusterSpec};
use assim_cma::EventKind;
use assim_util::testing::{Nats, Postgres};
use engines::{engine, wait_for};

mod engines;

/// `assim event send` through node `dir`'s nanoprobe; panics unless it spooled or confirmed.
fn send(dir: &Path, extra: &[&str], text: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["event", "send", "--data-dir"])
        .arg(dir)
        .args(extra)
        .arg(text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "event send {text}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_socket(dir: &Path) {
    wait_for("the nanoprobe's events.sock", Duration::from_secs(20), || {
        dir.join("events.sock").exists()
    });
}

/// How many times each local event's text was applied (`None` while the API cannot read the
/// store: its handles reconnect at the call after a PostgreSQL restart).
fn counts(c: &Cluster) -> Option<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for e in c.events_since(0).ok()? {
        if e.kind == EventKind::LocalEvent {
            *counts.entry(e.text).or_default() += 1;
        }
    }
    Some(counts)
}

/// Sends `texts` round-robin through the nodes; `sent` counts them as they go.
fn send_all(dirs: &[&Path], texts: &[String], sent: &AtomicUsize) {
    for (i, text) in texts.iter().enumerate() {
        send(dirs[i % dirs.len()], &[], text);
        sent.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits until every text was applied, then checks each was applied once and the event ids
/// are 1, 2, 3, … Returns how long the wait took.
/// Records the active engine made durable in its inbox so far (`assim_cma_inbox_records_total`).
fn inbox_records(c: &Cluster) -> u64 {
    let m = c.client.metrics().unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("assim_cma_inbox_records_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("assim_cma_inbox_records_total in /metrics")
}

fn applied_once(c: &Cluster, texts: &[String], what: &str) -> Duration {
    let took = wait_for(what, Duration::from_secs(60), || {
        counts(c).is_some_and(|counts| texts.iter().all(|t| counts.contains_key(t)))
    });
    let counts = counts(c).expect("the events");
    for t in texts {
        assert_eq!(counts.get(t), Some(&1), "{t} applied {:?} times ({what})", counts.get(t));
    }
    let events = c.events_since(0).unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1, "event ids 1, 2, 3, … ({what})");
    }
    took
}

#[test]
fn records_acknowledged_by_a_killed_engine_or_through_a_lost_nats_server_are_applied_once() {
    let Some(mut pg) = Postgres::start() else { return };
    let Some(mut nats) = Nats::cluster() else { return };
    pg.create_database("queue");
    let store = pg.url("queue");
    let queue = nats.url();
    let keep = std::env::var_os("ASSIM_KEEP").is_some();
    // The events go to JetStream too (`[bus] nats`), with 3 replicas, through a server that is
    // never killed (the client learns the others, but starts with this one).
    let config = std::env::temp_dir().join(format!("assim-cluster-js-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[bus]\nnats = \"{}\"\nnats_replicas = 3\n", nats.server_url(2)),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let spec = ClusterSpec {
        cma_args: [
            "--store",
            &store,
            "--engine-lease",
            "2s",
            "--queue",
            &queue,
            "--config",
            &config,
        ]
        .map(String::from)
        .to_vec(),
        // Late after 3 s, dead after 5 s: a takeover on a loaded machine is not a crash.
        warn: Duration::from_secs(3),
        dead: Duration::from_secs(5),
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 3)
    };
    let mut c = Cluster::new(spec, keep).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let dirs: Vec<_> = c.nodes.iter().map(|n| n.data_dir.clone()).collect();
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    for d in &dirs {
        wait_socket(d);
    }
    let log_a = c.dir.join("cma.log");
    assert!(
        std::fs::read_to_string(&log_a).unwrap().contains("the inbox is on NATS JetStream"),
        "{}",
        std::fs::read_to_string(&log_a).unwrap()
    );
    let mut b = c.spawn_engine("cma-b").unwrap();
    assert_eq!(engine(&b.client).role, "standby");

    // 1. The active engine acknowledges records it cannot commit (PostgreSQL is down: the
    //    first batch's records are in the inbox and acknowledged, then it takes no more) and
    //    is killed with SIGKILL. With a local inbox those records would die with it; here the
    //    engine that takes over applies them from the stream.
    //    Every node's `host.new` first: a batch of its own failing before these records arrive
    //    would make the engine refuse them all (it takes no records while its store fails),
    //    and nothing would be acknowledged and left to replay.
    wait_for("every node's host.new", Duration::from_secs(30), || {
        c.events_since(0).unwrap().iter().filter(|e| e.kind.name() == "host.new").count() == 3
    });
    let synced_before = inbox_records(&c);
    pg.stop_server();
    let texts: Vec<String> = (0..12).map(|i| format!("seq-{i}")).collect();
    send_all(&dirs, &texts, &AtomicUsize::new(0));
    wait_for("engine A to fail a commit", Duration::from_secs(20), || {
        std::fs::read_to_string(&log_a).unwrap().contains("cannot write to the store")
    });
    std::thread::sleep(Duration::from_millis(500));
    let acknowledged = inbox_records(&c) - synced_before;
    assert!(
        acknowledged > 0,
        "engine A made no record durable after PostgreSQL stopped, so there is nothing to \
         replay: {}",
        std::fs::read_to_string(&log_a).unwrap()
    );
    c.stop_cma(true).unwrap();
    pg.start_again();
    wait_for("the standby to take over", Duration::from_secs(30), || {
        b.client.status().ok().and_then(|s| s.engine).is_some_and(|e| e.role == "active")
    });
    c.adopt_engine(&mut b);
    let took = applied_once(&c, &texts, "after the engine's SIGKILL");
    println!("all 12 events applied once, {} ms after the takeover", took.as_millis());
    let log = b.log();
    assert!(log.contains("replaying inbox records not yet applied"), "{log}");

    // 2. One NATS server of three killed while events stream in: the stream keeps a quorum.
    let more: Vec<String> = (0..30).map(|i| format!("after-nats-{i}")).collect();
    let sent = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| send_all(&dirs, &more, &sent));
        wait_for("10 events sent", Duration::from_secs(60), || sent.load(Ordering::SeqCst) >= 10);
        nats.kill(0);
    });
    let took = applied_once(&c, &more, "after a NATS server's SIGKILL");
    println!("all 30 events applied once, {} ms after the last was sent", took.as_millis());
    c.wait_ring(Duration::from_secs(20)).unwrap();
    let log = b.log();
    assert!(!log.contains("panicked"), "{log}");

    // 3. The event stream on JetStream holds every stored event once, across the takeover and
    //    the lost server: the new engine's bus resumed from the position the old one stored.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = rt.enter();
    let js =
        async_nats::jetstream::new(rt.block_on(async_nats::connect(nats.server_url(2))).unwrap());
    wait_for("every event in ASSIM_EVENTS", Duration::from_secs(30), || {
        let stored = c.events_since(0).map_or(0, |e| e.len() as u64);
        let in_stream = rt.block_on(async {
            let mut s = js.get_stream("ASSIM_EVENTS").await.ok()?;
            Some(s.info().await.ok()?.state.messages)
        });
        assert!(in_stream.unwrap_or(0) <= stored, "duplicates: {in_stream:?} > {stored}");
        in_stream == Some(stored)
    });
    let _ = std::fs::remove_file(&config);
}

/// The durability test of the cluster mode (issue 14): 50 senders (`assim loadgen`, the real
/// nanoprobe shell with its disk spool) push 100,000 reports while the active engine is killed
/// with SIGKILL three times (a standby takes over each time, and a new standby is started) and
/// one NATS server of three once, in an order and at moments drawn from a printed seed
/// (`ASSIM_TEST_SEED` replays it). Every report is applied exactly once — through and count
/// 2,000 for every sender in PostgreSQL — and the event ids run without gap or repeat.
#[test]
fn engine_and_nats_kills_under_load_lose_nothing_and_apply_nothing_twice() {
    use rand::Rng as _;
    use rand::seq::SliceRandom as _;
    const SENDERS: usize = 50;
    const REPORTS: u64 = 2000;
    let Some(pg) = Postgres::start() else { return };
    let Some(mut nats) = Nats::cluster() else { return };
    let mut rng = engines::seeded_rng();
    pg.create_database("load");
    let store = pg.url("load");
    let queue = nats.url();
    let spec = ClusterSpec {
        enrollment: assim::cluster::ClusterEnrollment::TrustOnFirstUse,
        cma_args: ["--store", &store, "--engine-lease", "2s", "--queue", &queue]
            .map(String::from)
            .to_vec(),
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 0)
    };
    let mut c = Cluster::new(spec, std::env::var_os("ASSIM_KEEP").is_some()).unwrap();
    let mut standby = c.spawn_engine("engine-2").unwrap();
    let mut senders = Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["loadgen", "--cma", &c.cma_listen.to_string()])
        .args(["--senders", &SENDERS.to_string(), "--reports", &REPORTS.to_string()])
        .args(["--window", "32", "--batch", "16"])
        .arg("--data-dir")
        .arg(c.dir.join("senders"))
        .env("ASSIM_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the senders");

    #[derive(Clone, Copy, Debug)]
    enum Kill {
        Engine,
        Nats,
    }
    let mut schedule = vec![Kill::Engine, Kill::Engine, Kill::Engine, Kill::Nats];
    schedule.shuffle(&mut rng);
    println!("kill schedule: {schedule:?}");
    let started = std::time::Instant::now();
    for (k, kill) in schedule.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        assert!(
            senders.try_wait().unwrap().is_none(),
            "the senders finished before kill {k}: make the load larger"
        );
        match kill {
            Kill::Engine => {
                c.stop_cma(true).unwrap();
                let took = wait_for("the standby to take over", Duration::from_secs(30), || {
                    standby
                        .client
                        .status()
                        .ok()
                        .and_then(|s| s.engine)
                        .is_some_and(|e| e.role == "active")
                });
                println!(
                    "{:>5.1}s engine killed; {} took over in {} ms",
                    started.elapsed().as_secs_f64(),
                    standby.name,
                    took.as_millis()
                );
                c.adopt_engine(&mut standby);
                standby = c.spawn_engine(&format!("engine-{}", k + 3)).unwrap();
            }
            Kill::Nats => {
                let server = rng.gen_range(0..nats.len());
                nats.kill(server);
                println!("{:>5.1}s NATS server {server} killed", started.elapsed().as_secs_f64());
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = senders.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the senders did not finish in 10 minutes");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = senders.wait_with_output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(status.success(), "the senders failed: {status}");
    println!("all reports acknowledged {:.1} s after the start", started.elapsed().as_secs_f64());

    // A takeover that could not finish starting within the lease (a NATS election under it)
    // is taken over in turn by the standby: read from whichever engine is active now.
    let active = |c: &assim::client::Client| {
        c.status().ok().and_then(|s| s.engine).is_some_and(|e| e.role == "active")
    };
    wait_for("an active engine", Duration::from_secs(30), || {
        active(&c.client) || active(&standby.client)
    });
    if !active(&c.client) {
        println!("{} took over from the last engine the test started", standby.name);
        c.adopt_engine(&mut standby);
    }

    // Every report applied once: the store's count per sender, and one event each.
    let db = assim_store_postgres::Store::open(&store).unwrap();
    let applied = wait_for("every report applied", Duration::from_secs(30), || {
        db.applied().unwrap().values().filter(|a| a.through == REPORTS).count() == SENDERS
    });
    println!("the last reports applied {} ms after their acknowledgement", applied.as_millis());
    engines::assert_applied_once(&db.applied().unwrap(), SENDERS, REPORTS);
    let last = db.last_event_id().unwrap();
    let events = c.events_since(0).unwrap();
    assert_eq!(events.len() as u64, last);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1, "event ids 1, 2, 3, … with no gap or repeat");
    }
    let reports = events.iter().filter(|e| e.kind == EventKind::LocalEvent).count();
    assert_eq!(reports as u64, SENDERS as u64 * REPORTS, "one event per report");
}
