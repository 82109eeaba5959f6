//! Event bus throughput: events/s from many publishers through filtering to 1, 10 and 100
//! subscribers, on the embedded bus and through a real nats-server JetStream, in the same run.
//!
//! Embedded: publisher threads → the writer, which appends batches to the SQLite event log
//! (one transaction, fsync'd, per batch — as the CMA does) and then fans each committed batch
//! out in memory → subscriber tasks, each evaluating its own filter. JetStream: publisher tasks
//! publish to a file-backed stream with `Nats-Msg-Id` (pipelined, every ack awaited) →
//! subscribers are ordered consumers of the whole stream, each evaluating the same filter on
//! the decoded event (tags are not in subjects, so NATS cannot filter on them).
//!
//! The time runs from the first publish until every subscriber has seen the last event.
//!
//! ```sh
//! cargo bench -p assim-bus --bench bus      # ASSIM_BENCH_EVENTS=N (default 20000), ASSIM_BENCH_PUBLISHERS=P (8)
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assim_bus::Filter;
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

fn embedded(events: u64, publishers: u64, subscribers: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bus.sqlite")).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (fan_tx, _) = tokio::sync::broadcast::channel::<Arc<Vec<Arc<Event>>>>(4096);
    let matched = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut rx = fan_tx.subscribe();
        let f = filter(i);
        let matched = matched.clone();
        subs.push(rt.spawn(async move {
            let mut seen = 0u64;
            let mut hits = 0u64;
            while seen < events {
                match rx.recv().await {
                    Ok(batch) => {
                        for e in batch.iter() {
                            seen += 1;
                            hits += u64::from(f.matches(e));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("subscriber lagged by {n}")
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            matched.fetch_add(hits, Ordering::Relaxed);
        }));
    }
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
        let shared: Vec<Arc<Event>> = batch.into_iter().map(Arc::new).collect();
        let _ = fan_tx.send(Arc::new(shared));
    }
    for p in pubs {
        p.join().unwrap();
    }
    rt.block_on(async {
        for s in subs {
            s.await.unwrap();
        }
    });
    (events as f64 / started.elapsed().as_secs_f64(), matched.load(Ordering::Relaxed))
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
    let nats = start_nats();
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
        "{:>11}  {:>16}  {:>16}  {:>7}  {:>10}",
        "subscribers", "embedded ev/s", "JetStream ev/s", "ratio", "deliveries"
    );
    for (round, subscribers) in [1usize, 10, 100].into_iter().enumerate() {
        let (emb, hits_e) = embedded(events, publishers, subscribers);
        let js =
            nats.as_ref().map(|(_, url)| jetstream(url, events, publishers, subscribers, round));
        if let Some((_, hits_j)) = js {
            assert_eq!(hits_e, hits_j, "both backends must deliver the same matches");
        }
        println!(
            "{subscribers:>11}  {emb:>16.0}  {:>16}  {:>7}  {hits_e:>10}",
            js.map_or("-".into(), |(r, _)| format!("{r:.0}")),
            js.map_or("-".into(), |(r, _)| format!("{:.1}x", emb / r)),
        );
    }
}
