//! Events through JetStream in cluster mode (issue 14): events/s to 1, 100 and 1,000 durable
//! subscribers through the CMA's own JetStream path, on one nats-server (R1) and on a cluster of
//! three on loopback (R3, `[bus] nats_replicas = 3`), beside the embedded bus, in one run.
//!
//! JetStream, per configuration and subscriber count:
//! - **Stream**: made by [`assim_bus::nats::JetStream::connect`] with the default `[bus]`
//!   retention and 1 or 3 replicas, as the CMA makes `ASSIM_EVENTS`.
//! - **Consumers**: one durable subscription per subscriber (`bench<i>`, the filter of
//!   subscriber `i`, shared with the `bus` bench). Each gets its consumer from
//!   [`assim_bus::nats::JetStream::ensure_consumer`], called one after the other as the CMA's
//!   subscription scan does: a durable pull consumer `assim-bench<i>` with explicit acks and the
//!   stream's replicas. One filter in four (`type:host.* and severity>=warning`) narrows its
//!   consumer to `assim.events.host.*.*` (half the events); the other three get every event.
//! - **Publisher**: the events are made before the clock starts (the CMA reads them from its
//!   store), then one task publishes them with [`assim_bus::nats::JetStream::publish`] in
//!   batches of 1,000, each batch pipelined and every ack awaited before the next, as the CMA's
//!   bus task does with its store's batches (`events_since(cursor, 1000)`).
//! - **Subscribers**: each an external subscriber on its own connection (in R3, to server
//!   `i % 3`), reading its consumer with a pull stream (batches of 200). It takes what has
//!   arrived (at most 200 messages), decodes each event's JSON, applies its whole filter (NATS
//!   cannot filter on tags or text), then acks every message of that chunk (explicit acks are
//!   per message; the client writes them out together).
//! - The subscribers run on their own runtime, the CMA side (stream, consumers, publisher) on
//!   another, as they are different processes in a deployment.
//!
//! Under load JetStream can be late: a batch whose acks do not all come within async-nats's 5 s
//! is sent again after 200 ms on a new connection, as the CMA's bus task does (*resent/dup*:
//! batches sent again, events JetStream dropped as duplicates); a message whose ack came after
//! the consumer's 30 s ack wait comes again and is acked and counted once (*redelivered*); an
//! error the pull stream reports, such as no responders while an R3 consumer elects a leader,
//! is counted and the stream goes on (*pull errors*).
//!
//! The time runs from the first publish until every subscriber has taken the last message its
//! consumer gets. *events/s* is the run's events over that time (each subscriber keeps up with
//! it); *deliveries/s* is the messages JetStream delivered to all consumers over that time,
//! before the subscribers' own filtering. Afterwards every consumer must report nothing pending
//! and nothing unacknowledged, every subscriber must have had exactly the messages of its
//! subject, and the matches must equal the plain filter evaluator's.
//!
//! The embedded columns are the `bus` bench's runs with the same events (more of them:
//! `ASSIM_BENCH_EMBEDDED_EVENTS`, since 2,000 take it a few milliseconds), filters and subscriber
//! counts: *delivery* (the events already in the SQLite log, through the fan-out) and *end to
//! end* (8 publishers, fsync'd SQLite append, fan-out). The ratio is embedded delivery over the
//! row's JetStream events/s: both start from stored events.
//!
//! ```sh
//! cargo bench -p assim-bus --bench jetstream
//! # ASSIM_BENCH_EVENTS=N (default 2000), ASSIM_BENCH_SUBSCRIBERS=S (one row only),
//! # ASSIM_BENCH_REPLICAS=1|3 (one configuration only), ASSIM_BENCH_EMBEDDED_EVENTS=N (100000),
//! # ASSIM_BENCH_PUBLISHERS=P (8, embedded end to end)
//! ```

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assim_bus::nats::{JetStream, PREFIX, STREAM, consumer_subject, subject};
use assim_bus::{BusConfig, Filter};
use assim_cma::Event;
use assim_util::testing::Nats;
use async_nats::jetstream::consumer::PullConsumer;
use common::{delivery, embedded, env_or, event, filter};
use futures_util::StreamExt as _;

/// The messages a subscriber's pull stream asks for at a time (async-nats's default).
const PULL_BATCH: usize = 200;
/// The CMA's publishing batch (`events_since(cursor, 1000)` in the bus task).
const PUBLISH_BATCH: usize = 1000;

/// Whether NATS subject `s` matches the pattern `p` (`*` one token, `>` the rest).
fn subject_matches(p: &str, s: &str) -> bool {
    let (mut p, mut s) = (p.split('.'), s.split('.'));
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One JetStream run's figures.
struct Run {
    /// Time from the first publish until every subscriber took its last message.
    elapsed: Duration,
    /// Time from the first publish until JetStream acknowledged the last.
    published: Duration,
    /// Messages delivered to all consumers.
    deliveries: u64,
    /// Of those, the ones the subscribers' filters matched.
    hits: u64,
    /// Messages delivered again (not acked within the ack wait), beyond `deliveries`.
    again: u64,
    /// Errors the subscribers' pull streams reported (and went on after).
    errors: u64,
    /// Time to make the stream, the consumers and the subscribers' connections.
    setup: Duration,
    /// Batches the publisher had to send again (an ack timed out), and the events JetStream
    /// dropped as duplicates then.
    retries: u64,
    dups: u64,
}

/// One subscriber: takes `expected` messages from its consumer, filtering and acking them, says
/// so on `taken`, then acks what comes again until `stop`. Returns how many came again and how
/// many errors the pull stream reported.
async fn subscribe(
    sub: Subscriber,
    ready: Arc<AtomicU64>,
    taken: tokio::sync::oneshot::Sender<Taken>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(u64, u64), String> {
    let Subscriber { url, name, filter: f, expected, events } = sub;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(url.as_str())
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(STREAM).await.map_err(|e| format!("stream: {e}"))?;
    let consumer: PullConsumer = stream
        .get_consumer(&format!("assim-{name}"))
        .await
        .map_err(|e| format!("consumer assim-{name}: {e}"))?;
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await
        .map_err(|e| format!("pull from assim-{name}: {e}"))?
        .ready_chunks(PULL_BATCH);
    ready.fetch_add(1, Ordering::Relaxed);
    // A message not acked within the consumer's ack wait (30 s) comes again: it is acked again
    // and counted once. After the last new message the subscriber goes on acking what comes
    // again until told to stop.
    let mut seen = vec![false; events + 1];
    let (mut got, mut hits, mut again, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut taken = Some(taken);
    loop {
        let chunk = tokio::select! {
            c = msgs.next() => c.ok_or("the pull stream ended")?,
            _ = stop.wait_for(|s| *s) => break,
        };
        let mut batch = Vec::with_capacity(chunk.len());
        for m in chunk {
            // The pull stream reports what went wrong (no responders while a consumer's R3
            // group elects a leader, a missed heartbeat) and goes on pulling.
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    errors += 1;
                    if errors == 1 {
                        eprintln!("    assim-{name}: {e} (the pull stream goes on)");
                    }
                    assert!(errors <= 1000, "assim-{name}: the pull stream keeps failing: {e}");
                    continue;
                }
            };
            let e: assim_api::Event = serde_json::from_slice(&m.payload)
                .map_err(|e| format!("assim-{name}: bad event JSON: {e}"))?;
            let first = seen
                .get_mut(e.id as usize)
                .map(|s| !std::mem::replace(s, true))
                .ok_or_else(|| format!("assim-{name}: event {} is not of this run", e.id))?;
            if first {
                got += 1;
                hits += u64::from(f.matches(&Event::from(e)));
            } else {
                again += 1;
            }
            batch.push(m);
        }
        for m in batch {
            m.ack().await.map_err(|e| format!("ack on assim-{name}: {e}"))?;
        }
        if got >= expected
            && let Some(t) = taken.take()
        {
            let _ = t.send(Taken { got, hits, done: Instant::now() });
        }
    }
    client.flush().await.map_err(|e| format!("flush: {e}"))?;
    Ok((again, errors))
}

/// One subscriber: its server, subscription name and filter, how many messages its consumer
/// gets, and the run's number of events.
struct Subscriber {
    url: String,
    name: String,
    filter: Filter,
    expected: u64,
    events: usize,
}

/// What one subscriber took: distinct messages, their matches, and when it had the last.
struct Taken {
    got: u64,
    hits: u64,
    done: Instant,
}

/// Waits until every consumer has nothing pending and nothing unacknowledged.
async fn check_consumers(js: &JetStream, subscribers: usize) {
    let stream = js.js.get_stream(STREAM).await.expect("stream");
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..subscribers {
        let mut c: PullConsumer = stream.get_consumer(&format!("assim-bench{i}")).await.unwrap();
        if (i + 1) % 100 == 0 {
            eprintln!("    {} consumers checked", i + 1);
        }
        loop {
            let info = c.info().await.expect("consumer info");
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "consumer assim-bench{i}: {} pending, {} unacknowledged after the run",
                info.num_pending,
                info.num_ack_pending
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One run through JetStream: `urls[0]` takes the publisher and makes the stream and the
/// consumers; subscriber `i` connects to `urls[i % urls.len()]`.
fn jetstream(urls: &[String], replicas: usize, events: &[Event], subscribers: usize) -> Run {
    // The subscribers' runtime, and the CMA's (the stream, the consumers, the publisher) on
    // this thread: separate, as the subscribers are other processes than the CMA.
    let subscribers_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cma_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    cma_rt.block_on(async {
        let setup_started = Instant::now();
        let config = BusConfig { nats_replicas: replicas, ..BusConfig::default() };
        config.validate().expect("bus configuration");
        let js = JetStream::connect(
            &urls[0],
            config.max_age(),
            config.retention_max_events,
            config.nats_replicas,
        )
        .await
        .expect("the events stream");
        let ready = Arc::new(AtomicU64::new(0));
        let mut subs = Vec::new();
        let mut expected_total = 0;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for i in 0..subscribers {
            let f = filter(i);
            let name = format!("bench{i}");
            js.ensure_consumer(&name, &f).await.expect("consumer");
            let narrowed = consumer_subject(&f);
            let expected =
                events.iter().filter(|e| subject_matches(&narrowed, &subject(PREFIX, e))).count()
                    as u64;
            expected_total += expected;
            let sub = Subscriber {
                url: urls[i % urls.len()].clone(),
                name,
                filter: f,
                expected,
                events: events.len(),
            };
            let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
            let task =
                subscribers_rt.spawn(subscribe(sub, ready.clone(), taken_tx, stop_rx.clone()));
            subs.push((expected, taken_rx, task));
            if (i + 1) % 100 == 0 {
                eprintln!("    {} consumers made ({:.1?})", i + 1, setup_started.elapsed());
            }
        }
        // Every subscriber connected and pulling before the clock starts (one that failed
        // has finished: its error shows below).
        while ready.load(Ordering::Relaxed) < subscribers as u64
            && !subs.iter().any(|(_, _, task)| task.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let setup = setup_started.elapsed();
        eprintln!("    set up in {setup:.1?}; publishing {} events", events.len());
        let started = Instant::now();
        // As the CMA's bus task: a failed batch (an ack not back within async-nats's 5 s) is
        // sent again on a new connection after 200 ms; JetStream drops what it already had.
        let (mut js, mut retries, mut dups) = (js, 0u64, 0u64);
        for batch in events.chunks(PUBLISH_BATCH) {
            loop {
                match js.publish(batch).await {
                    Ok(d) => {
                        dups += d;
                        break;
                    }
                    Err(e) => {
                        retries += 1;
                        assert!(retries <= 100, "publishing keeps failing: {e}");
                        eprintln!("    publish failed, again in 200 ms: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        js = JetStream::connect(
                            &urls[0],
                            config.max_age(),
                            config.retention_max_events,
                            config.nats_replicas,
                        )
                        .await
                        .expect("reconnect");
                    }
                }
            }
        }
        let published = started.elapsed();
        eprintln!("    published in {published:.1?}");
        let (mut deliveries, mut hits, mut last) = (0, 0, started);
        let mut tasks = Vec::new();
        for (expected, taken, task) in subs {
            let Ok(t) = taken.await else {
                panic!("a subscriber failed: {:?}", task.await.unwrap());
            };
            assert_eq!(t.got, expected, "every subscriber gets exactly its subject's events");
            deliveries += t.got;
            hits += t.hits;
            last = last.max(t.done);
            tasks.push(task);
        }
        assert_eq!(deliveries, expected_total);
        let elapsed = last - started;
        eprintln!(
            "    every subscriber has every event after {elapsed:.1?}; checking the consumers"
        );
        check_consumers(&js, subscribers).await;
        stop_tx.send(true).expect("subscribers listen");
        let (mut again, mut errors) = (0, 0);
        for task in tasks {
            let (a, e) = task.await.unwrap().expect("subscriber");
            again += a;
            errors += e;
        }
        // Deleting a stream with 1,000 R3 consumers can take longer than a request's 5 s: ask
        // again until it is gone.
        for attempt in 1.. {
            match js.js.delete_stream(STREAM).await {
                Ok(_) => break,
                Err(e) if attempt < 30 => {
                    eprintln!("    deleting the stream: {e}; again in 2 s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if let Err(e) = js.js.get_stream(STREAM).await
                        && e.to_string().contains("not found")
                    {
                        break;
                    }
                }
                Err(e) => panic!("cannot delete the stream: {e}"),
            }
        }
        Run { elapsed, published, deliveries, hits, again, errors, setup, retries, dups }
    })
}

fn main() {
    let events = env_or("ASSIM_BENCH_EVENTS", 2_000);
    let embedded_events = env_or("ASSIM_BENCH_EMBEDDED_EVENTS", 100_000);
    let publishers = env_or("ASSIM_BENCH_PUBLISHERS", 8).max(1);
    let only: Option<usize> =
        std::env::var("ASSIM_BENCH_SUBSCRIBERS").ok().and_then(|v| v.parse().ok());
    let replicas: Vec<usize> = match std::env::var("ASSIM_BENCH_REPLICAS").ok().as_deref() {
        None => vec![1, 3],
        Some("1") => vec![1],
        Some("3") => vec![3],
        Some(other) => panic!("ASSIM_BENCH_REPLICAS must be 1 or 3, not {other:?}"),
    };
    // Servers: one for R1, a cluster of three for R3 (started once, a fresh stream per run).
    let single = replicas.contains(&1).then(Nats::single).flatten();
    let cluster = replicas.contains(&3).then(Nats::cluster).flatten();
    if single.is_none() && cluster.is_none() {
        println!("nats-server is not installed: nothing to measure (scripts/install-deps)");
        return;
    }
    let configs: Vec<(usize, Vec<String>)> = [(1, &single), (3, &cluster)]
        .into_iter()
        .filter_map(|(r, n)| {
            n.as_ref().map(|n| (r, (0..n.len()).map(|i| n.server_url(i)).collect()))
        })
        .collect();
    println!(
        "{events} events through JetStream (the CMA's stream, consumers and publisher), {embedded_events} through the embedded bus; filters as in the bus bench; {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let all: Vec<Event> = (1..=events).map(event).collect();
    let all_embedded: Vec<Event> = (1..=embedded_events).map(event).collect();
    // What each filter matches, by the plain evaluator: the answer every run must give.
    let mut counts = HashMap::new();
    let mut reference = |run: &[Event], subscribers: usize| -> u64 {
        (0..subscribers)
            .map(|i| {
                let f = filter(i);
                *counts
                    .entry((run.len(), f.text().to_owned()))
                    .or_insert_with(|| run.iter().filter(|e| f.matches(e)).count() as u64)
            })
            .sum()
    };
    let mut rows = Vec::new();
    for subscribers in [1usize, 100, 1000] {
        if only.is_some_and(|o| o != subscribers) {
            continue;
        }
        eprintln!("{subscribers} subscribers: embedded");
        let expected = reference(&all_embedded, subscribers);
        let (del, seen_d) = delivery(embedded_events, subscribers);
        let (emb, seen_e) = embedded(embedded_events, publishers, subscribers);
        assert_eq!(seen_d.hits.load(Ordering::Relaxed), expected, "embedded delivery");
        assert_eq!(seen_e.hits.load(Ordering::Relaxed), expected, "embedded end to end");
        let reference = reference(&all, subscribers);
        let mut js = Vec::new();
        for (r, urls) in &configs {
            eprintln!("{subscribers} subscribers: JetStream R{r}");
            let run = jetstream(urls, *r, &all, subscribers);
            assert_eq!(run.hits, reference, "JetStream subscribers get exactly their matches");
            js.push((*r, run));
        }
        rows.push((subscribers, del, emb, reference, js));
    }
    println!(
        "{:>11}  {:>14}  {:>14}  {:>4}  {:>10}  {:>13}  {:>12}  {:>9}  {:>7}  {:>10}  {:>7}  {:>11}  {:>11}",
        "subscribers",
        "delivery ev/s",
        "end-to-end",
        "JS",
        "JS ev/s",
        "deliveries/s",
        "publish ev/s",
        "setup",
        "ratio",
        "matches",
        "resent/dup",
        "redelivered",
        "pull errors"
    );
    for (subscribers, del, emb, hits, js) in rows {
        for (r, run) in js {
            let secs = run.elapsed.as_secs_f64();
            let rate = events as f64 / secs;
            println!(
                "{subscribers:>11}  {del:>14.0}  {emb:>14.0}  {:>4}  {rate:>10.0}  {:>13.0}  {:>12.0}  {:>9}  {:>7}  {hits:>10}  {:>7}  {:>11}  {:>11}",
                format!("R{r}"),
                run.deliveries as f64 / secs,
                events as f64 / run.published.as_secs_f64(),
                format!("{:.1?}", run.setup),
                format!("{:.1}x", del / rate),
                format!("{}/{}", run.retries, run.dups),
                run.again,
                run.errors,
            );
        }
    }
}
