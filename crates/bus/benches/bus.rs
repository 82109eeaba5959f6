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

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assim_cma::Event;
use common::{Seen, delivery, embedded, env_or, event, filter};
use futures_util::StreamExt as _;

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
