//! Event bus throughput: events/s from many publishers through filtering to 1, 10, 100 and
//! 1000 subscribers, on the embedded bus and through a real nats-server JetStream, in the same
//! run.
//!
//! Embedded, two columns:
//! - **delivery**: the events are already in the SQLite log; committed batches of 4096 go
//!   through [`assim_bus::Fanout`] (compiled filters, the (type, severity) and tag index,
//!   subscribers with the same filter sharing one evaluation) to the subscriber tasks, which
//!   touch every match's JSON (encoded once, shared);
//! - **end to end**: publisher threads → the writer, which appends batches to the SQLite event
//!   log (one transaction, fsync'd, per batch — as the CMA does) and hands each committed batch
//!   to the fan-out → the same subscriber tasks.
//!
//! A subscriber told it lagged reads what it missed from the log, as one resuming with `since`.
//!
//! JetStream: publisher tasks publish to a file-backed stream with `Nats-Msg-Id` (pipelined,
//! every ack awaited) → subscribers are ordered consumers of the whole stream, each evaluating
//! the same filter on the decoded event (tags are not in subjects, so NATS cannot filter on
//! them). The ratio is end to end against JetStream: both include publishing.
//!
//! The time runs from the first publish until every subscriber has seen the last event. Every
//! column must deliver exactly what the plain filter evaluator matches.
//!
//! ```sh
//! cargo bench -p assim-bus --bench bus
//! # ASSIM_BENCH_EVENTS=N (default 20000), ASSIM_BENCH_PUBLISHERS=P (8),
//! # ASSIM_BENCH_SUBSCRIBERS=S (one row only), ASSIM_BENCH_NATS_MAX=S (100: JetStream rows up
//! # to S subscribers), ASSIM_BENCH_ONLY=delivery|end-to-end (one embedded column, no NATS: for
//! # perf)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assim_bus::Filter;
use assim_bus::fanout::{Fanout, Next, Prepared};
use assim_cma::{Event, EventKind, Severity};
use assim_store_sqlite::{InboxProgress, Store};
use assim_wire::Timestamp;
use futures_util::StreamExt as _;

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event(id: u64) -> Event {
    let kinds =
        [EventKind::LocalEvent, EventKind::HostUp, EventKind::ServiceWarning, EventKind::HostDown];
    let sev = Severity::ALL[(id % 6) as usize];
    let tags: BTreeMap<String, String> = [
        ("cluster".to_string(), format!("Compute{}", id % 10)),
        ("host".to_string(), format!("n{}", id % 1000)),
        ("fqdn".to_string(), format!("n{}.example.com", id % 1000)),
    ]
    .into();
    Event {
        id,
        time: Timestamp::now(),
        kind: kinds[(id % 4) as usize],
        host: None,
        hostname: format!("n{}", id % 1000),
        tags,
        text: if id.is_multiple_of(7) {
            format!("RAID STATUS CHANGE for VolumeID {id}")
        } else {
            format!("event {id}")
        },
        severity: sev,
        body: None,
    }
}

/// Subscriber `i`'s filter: a mix of tag, type, severity and regex conditions.
fn filter(i: usize) -> Filter {
    let f = match i % 4 {
        0 => format!("cluster=Compute{}", i % 10),
        1 => "type:host.* and severity>=warning".to_string(),
        2 => "fqdn=*.example.com and /RAID STATUS CHANGE/".to_string(),
        _ => format!("has:cluster and not cluster=Compute{} and severity<error", i % 10),
    };
    Filter::parse(&f).unwrap()
}

/// What the embedded subscribers saw: matching events, bytes of their shared JSON, and how
/// often one lagged and caught up from the log.
#[derive(Default)]
struct Seen {
    hits: AtomicU64,
    bytes: AtomicU64,
    lags: AtomicU64,
}

/// Subscriber `i` of the embedded bus: takes its deliveries until it has seen event `events`,
/// touching each match's JSON (as the HTTP API writes it, encoded once for every subscriber).
/// When it lagged, it reads what it missed from the log, as a subscriber resuming with `since`.
fn subscriber(
    rt: &tokio::runtime::Runtime,
    fanout: &Fanout,
    i: usize,
    events: u64,
    log: &std::path::Path,
    seen: &Arc<Seen>,
) -> tokio::task::JoinHandle<()> {
    let f = filter(i);
    let sub = fanout.subscribe(&f);
    let (seen, log) = (seen.clone(), log.to_owned());
    rt.spawn(async move {
        let (mut cursor, mut hits, mut bytes) = (0u64, 0u64, 0u64);
        let mut reader = None;
        while cursor < events {
            match sub.next().await {
                Next::Events(d) => {
                    for p in d.events() {
                        hits += 1;
                        bytes += p.json().len() as u64;
                    }
                    cursor = d.through;
                }
                Next::Lagged { through } => {
                    seen.lags.fetch_add(1, Ordering::Relaxed);
                    tokio::task::block_in_place(|| {
                        let store = reader.get_or_insert_with(|| Store::open(&log).unwrap());
                        while cursor < through {
                            let batch = store.events_since(cursor, 4096).unwrap();
                            for e in batch.into_iter().take_while(|e| e.id <= through) {
                                cursor = e.id;
                                if f.matches(&e) {
                                    hits += 1;
                                    bytes += Prepared::new(e).json().len() as u64;
                                }
                            }
                        }
                    });
                }
                Next::Closed => panic!("the fan-out closed"),
            }
        }
        seen.hits.fetch_add(hits, Ordering::Relaxed);
        seen.bytes.fetch_add(bytes, Ordering::Relaxed);
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Delivery alone: the events are already in the log; committed batches of 4096 go through
/// the fan-out to every subscriber. Timed from the first batch until every subscriber has seen
/// the last event. The whole run is published at once, faster than subscribers take it, so
/// each subscriber's queue holds the whole run here: this measures how fast events get
/// through, not how often a burst overflows a queue (the end-to-end run keeps the default).
fn delivery(events: u64, subscribers: usize) -> (f64, Arc<Seen>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sqlite");
    let mut store = Store::open(&path).unwrap();
    let all: Vec<Event> = (1..=events).map(event).collect();
    for chunk in all.chunks(4096) {
        store.apply(&[], chunk, &InboxProgress::default()).unwrap();
    }
    let batches: Vec<Vec<Event>> = all.chunks(4096).map(<[Event]>::to_vec).collect();
    drop(all);
    let rt = runtime();
    let fanout = Fanout::new(events as usize);
    let seen = Arc::new(Seen::default());
    let subs: Vec<_> =
        (0..subscribers).map(|i| subscriber(&rt, &fanout, i, events, &path, &seen)).collect();
    let started = Instant::now();
    for b in batches {
        fanout.publish(b);
    }
    rt.block_on(async {
        for s in subs {
            s.await.unwrap();
        }
    });
    (events as f64 / started.elapsed().as_secs_f64(), seen)
}

/// End to end: publisher threads make the events, the writer appends them in batches to the
/// SQLite log (one fsync'd transaction per batch, as in the CMA) and hands each committed batch
/// to the fan-out.
fn embedded(events: u64, publishers: u64, subscribers: usize) -> (f64, Arc<Seen>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sqlite");
    let mut store = Store::open(&path).unwrap();
    let rt = runtime();
    let fanout = Fanout::default();
    let seen = Arc::new(Seen::default());
    let subs: Vec<_> =
        (0..subscribers).map(|i| subscriber(&rt, &fanout, i, events, &path, &seen)).collect();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Event>(65_536);
    let started = Instant::now();
    let per = events / publishers;
    let next = Arc::new(AtomicU64::new(1));
    let pubs: Vec<_> = (0..publishers)
        .map(|p| {
            let tx = tx.clone();
            let next = next.clone();
            let n = if p == publishers - 1 { events - per * (publishers - 1) } else { per };
            std::thread::spawn(move || {
                for _ in 0..n {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    tx.send(event(id)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    // The writer: batches as large as what is queued (group commit), then fan-out.
    let mut written = 0;
    while written < events {
        let mut batch = vec![rx.recv().unwrap()];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        batch.sort_by_key(|e| e.id);
        store.apply(&[], &batch, &InboxProgress::default()).unwrap();
        written += batch.len() as u64;
        fanout.publish(batch);
    }
    for p in pubs {
        p.join().unwrap();
    }
    rt.block_on(async {
        for s in subs {
            s.await.unwrap();
        }
    });
    (events as f64 / started.elapsed().as_secs_f64(), seen)
}

/// The server process and its storage directory (removed when dropped).
struct NatsServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}
impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nats() -> Option<(NatsServer, String)> {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((NatsServer { child, _dir: dir }, format!("nats://127.0.0.1:{port}")))
}

fn jetstream(
    url: &str,
    events: u64,
    publishers: u64,
    subscribers: usize,
    round: usize,
) -> (f64, u64) {
    use async_nats::jetstream::{self, consumer, stream};
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client.clone());
        let name = format!("BENCH{round}");
        let prefix = format!("bench{round}");
        let s = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap();
        let matched = Arc::new(AtomicU64::new(0));
        let mut subs = Vec::new();
        for i in 0..subscribers {
            let c = s
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: format!("{prefix}.>"),
                    ..Default::default()
                })
                .await
                .unwrap();
            let f = filter(i);
            let matched = matched.clone();
            subs.push(tokio::spawn(async move {
                let mut msgs = c.messages().await.unwrap();
                let (mut seen, mut hits) = (0u64, 0u64);
                while seen < events {
                    let m = msgs.next().await.unwrap().unwrap();
                    let e: Event = serde_json::from_slice(&m.payload).unwrap();
                    seen += 1;
                    hits += u64::from(f.matches(&e));
                }
                matched.fetch_add(hits, Ordering::Relaxed);
            }));
        }
        let started = Instant::now();
        let per = events / publishers;
        let mut pubs = Vec::new();
        for p in 0..publishers {
            let js = js.clone();
            let prefix = prefix.clone();
            let (from, n) = (
                1 + p * per,
                if p == publishers - 1 { events - per * (publishers - 1) } else { per },
            );
            pubs.push(tokio::spawn(async move {
                let mut window = std::collections::VecDeque::new();
                for id in from..from + n {
                    let e = event(id);
                    let publish = jetstream::context::Publish::build()
                        .payload(serde_json::to_vec(&e).unwrap().into())
                        .message_id(id.to_string());
                    let subject = format!("{prefix}.{}.{}", e.kind.name(), e.hostname);
                    window.push_back(js.send_publish(subject, publish).await.unwrap());
                    if window.len() >= 256 {
                        window.pop_front().unwrap().await.unwrap();
                    }
                }
                for a in window {
                    a.await.unwrap();
                }
            }));
        }
        for p in pubs {
            p.await.unwrap();
        }
        for s in subs {
            s.await.unwrap();
        }
        let rate = events as f64 / started.elapsed().as_secs_f64();
        js.delete_stream(&name).await.unwrap();
        (rate, matched.load(Ordering::Relaxed))
    })
}

fn main() {
    let events = env_or("ASSIM_BENCH_EVENTS", 20_000);
    let publishers = env_or("ASSIM_BENCH_PUBLISHERS", 8).max(1);
    let nats_max = env_or("ASSIM_BENCH_NATS_MAX", 100) as usize;
    let only: Option<usize> =
        std::env::var("ASSIM_BENCH_SUBSCRIBERS").ok().and_then(|v| v.parse().ok());
    let only_mode = std::env::var("ASSIM_BENCH_ONLY").ok();
    let nats = start_nats().filter(|_| only_mode.is_none());
    if nats.is_none() {
        println!(
            "nats-server not found or not starting: JetStream column skipped (scripts/install-deps installs it)"
        );
    }
    println!(
        "{events} events from {publishers} publishers, filtered by each subscriber; {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "delivery: committed batches through the fan-out; end to end: publishers, SQLite append, fan-out; JetStream up to {nats_max} subscribers (ASSIM_BENCH_NATS_MAX)"
    );
    println!(
        "{:>11}  {:>14}  {:>14}  {:>14}  {:>7}  {:>10}  {:>5}",
        "subscribers",
        "delivery ev/s",
        "end-to-end",
        "JetStream ev/s",
        "ratio",
        "deliveries",
        "lags"
    );
    // What each filter matches, by the plain evaluator: the answer every run must give.
    let all: Vec<Event> = (1..=events).map(event).collect();
    let mut counts = std::collections::HashMap::new();
    for (round, subscribers) in [1usize, 10, 100, 1000].into_iter().enumerate() {
        if only.is_some_and(|o| o != subscribers) {
            continue;
        }
        // ASSIM_BENCH_ONLY=delivery or end-to-end runs one embedded column (for a profile).
        let (del, seen_d) = if only_mode.as_deref() == Some("end-to-end") {
            (0.0, None)
        } else {
            let (r, s) = delivery(events, subscribers);
            (r, Some(s))
        };
        let (emb, seen_e) = if only_mode.as_deref() == Some("delivery") {
            (0.0, None)
        } else {
            let (r, s) = embedded(events, publishers, subscribers);
            (r, Some(s))
        };
        let runs: Vec<&Arc<Seen>> = seen_d.iter().chain(seen_e.iter()).collect();
        let hits = runs[0].hits.load(Ordering::Relaxed);
        for s in &runs {
            assert_eq!(s.hits.load(Ordering::Relaxed), hits, "delivery and end to end agree");
        }
        let lags: u64 = runs.iter().map(|s| s.lags.load(Ordering::Relaxed)).sum();
        let reference: u64 = (0..subscribers)
            .map(|i| {
                let f = filter(i);
                *counts
                    .entry(f.text().to_owned())
                    .or_insert_with(|| all.iter().filter(|e| f.matches(e)).count() as u64)
            })
            .sum();
        assert_eq!(hits, reference, "every subscriber gets exactly its matches");
        let js = nats
            .as_ref()
            .filter(|_| subscribers <= nats_max)
            .map(|(_, url)| jetstream(url, events, publishers, subscribers, round));
        if let Some((_, hits_j)) = js {
            assert_eq!(hits, hits_j, "both backends must deliver the same matches");
        }
        println!(
            "{subscribers:>11}  {del:>14.0}  {emb:>14.0}  {:>14}  {:>7}  {hits:>10}  {:>5}",
            js.map_or("-".into(), |(r, _)| format!("{r:.0}")),
            js.map_or("-".into(), |(r, _)| format!("{:.1}x", emb / r)),
            lags,
        );
    }
}
