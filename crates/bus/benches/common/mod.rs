//! What the bus benches share: the events (four types, six severities, three tags, every
//! seventh a RAID text), the subscribers' filters, and the embedded bus's two runs (delivery
//! through the fan-out, and end to end through the SQLite log), with their checked counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use assim_bus::Filter;
use assim_bus::fanout::{Fanout, Next, Prepared};
use assim_cma::{Event, EventKind, Severity};
use assim_store_sqlite::{InboxProgress, Store};
use assim_wire::Timestamp;

/// The number in environment variable `key`, or `default`.
pub fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Event `id` of a run: the same for every bus and every run.
pub fn event(id: u64) -> Event {
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
pub fn filter(i: usize) -> Filter {
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
pub struct Seen {
    pub hits: AtomicU64,
    pub bytes: AtomicU64,
    pub lags: AtomicU64,
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
pub fn delivery(events: u64, subscribers: usize) -> (f64, Arc<Seen>) {
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
pub fn embedded(events: u64, publishers: u64, subscribers: usize) -> (f64, Arc<Seen>) {
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
