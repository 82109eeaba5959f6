//! The CMA's bus task: retention, and one delivery worker per durable subscription that has a
//! sink. It runs beside the CMA core and talks to it only through the store (its own SQLite
//! connections) and a `watch` of the last stored event id, so a slow or dead sink can never
//! hold up the core. It reads and writes through the [`EventLog`] seam (handles opened with an
//! [`OpenEventLog`], each used from blocking threads), so it works with any storage engine.
//!
//! A worker reads the events after its subscription's cursor, and for each one that matches
//! the filter tries the sink up to `max_attempts` times, waiting `backoff`, 2×`backoff`, … (at
//! most `max_backoff`) in between. Then it moves the cursor past the event: on success, or after
//! writing a dead-letter record. Deliveries are therefore at least once, and exactly once unless
//! the CMA stops between a sink's success and the cursor update (webhooks carry
//! `X-Assim-Event-Id` for that case).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assim_cma::Event;
use assim_store::{EventLog, OpenEventLog, SubscriptionRecord};
use assim_wire::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::{BusConfig, SinkConfig, SinkKind};
use crate::filter::Filter;

/// How often the set of subscriptions is re-read (new, changed or deleted sinks).
const RESCAN: Duration = Duration::from_secs(2);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Events deleted per retention transaction.
const RETENTION_BATCH: usize = 5000;

type SharedStore = Arc<Mutex<Box<dyn EventLog>>>;

async fn blocking<T: Send + 'static>(
    store: &SharedStore,
    f: impl FnOnce(&mut dyn EventLog) -> T + Send + 'static,
) -> T {
    let s = store.clone();
    match tokio::task::spawn_blocking(move || f(&mut **s.lock().expect("store lock"))).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime shuts down (an engine that lost its lease exits), and this
        // task goes with it.
        Err(_) => std::future::pending().await,
    }
}

/// The store key listing the sinks the config file declared at the last start.
const CONFIG_SINKS: &str = "bus_config_sinks";

/// Creates or updates the sinks declared in the config as durable subscriptions (a new one
/// starts after the newest stored event), and deletes the ones an earlier config declared
/// that this one no longer does (sinks created through the API are left alone). Call before
/// [`run`].
pub fn install_config_sinks(store: &mut dyn EventLog, config: &BusConfig) -> anyhow::Result<()> {
    let last = store.last_event_id()?;
    let before: Vec<String> = match store.bus_state(CONFIG_SINKS)? {
        Some(v) => serde_json::from_str(&v).unwrap_or_default(),
        None => Vec::new(),
    };
    for name in before.iter().filter(|n| !config.sinks.iter().any(|s| &s.name == *n)) {
        if store.delete_subscription(name)? {
            info!(subscription = %name, "sink removed from the config file; deleted");
        }
    }
    for s in &config.sinks {
        let sink = serde_json::to_string(&s.sink)?;
        store.put_subscription(&s.name, &s.filter, Some(&sink), last, Timestamp::now())?;
    }
    let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    store.set_bus_state(CONFIG_SINKS, &serde_json::to_string(&names)?)?;
    Ok(())
}

/// Runs retention and the sink workers until the task is aborted.
pub async fn run(open: OpenEventLog, config: BusConfig, last_event: watch::Receiver<u64>) {
    let store = match open() {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            error!(error = %e, "the event bus cannot open the store; no sinks and no retention");
            return;
        }
    };
    let _jetstream = config.nats.clone().map(|url| {
        AbortOnDrop(tokio::spawn(jetstream_publisher(
            open.clone(),
            url,
            config.clone(),
            last_event.clone(),
        )))
    });
    let mut workers: HashMap<String, (SubscriptionRecord, JoinHandle<()>)> = HashMap::new();
    // Subscriptions already refused (logged once, not every rescan).
    let mut refused: HashMap<String, Option<String>> = HashMap::new();
    let mut next_retention = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_retention {
            retention(&store, &config).await;
            next_retention = tokio::time::Instant::now() + RETENTION_EVERY;
        }
        let subs = blocking(&store, |s| s.subscriptions()).await;
        match subs {
            Ok(subs) => {
                let wanted: HashMap<String, SubscriptionRecord> = subs
                    .into_iter()
                    .filter(|s| s.sink.is_some())
                    .filter(|s| match sink_allowed(&config, s) {
                        Ok(()) => true,
                        Err(why) => {
                            if refused.get(&s.name) != Some(&s.sink) {
                                error!(subscription = %s.name, "{why}");
                                refused.insert(s.name.clone(), s.sink.clone());
                            }
                            false
                        }
                    })
                    .map(|s| (s.name.clone(), s))
                    .collect();
                workers.retain(|name, (rec, handle)| {
                    let keep = wanted
                        .get(name)
                        .is_some_and(|w| w.filter == rec.filter && w.sink == rec.sink)
                        && !handle.is_finished();
                    if !keep {
                        handle.abort();
                    }
                    keep
                });
                for (name, rec) in wanted {
                    if workers.contains_key(&name) {
                        continue;
                    }
                    let handle =
                        tokio::spawn(worker(open.clone(), rec.clone(), last_event.clone()));
                    workers.insert(name, (rec, handle));
                }
            }
            Err(e) => warn!(error = %e, "cannot read the subscriptions"),
        }
        tokio::time::sleep(RESCAN).await;
    }
}

/// Whether the runner may deliver `sub`'s sink: `exec` and `nagios` sinks act on the CMA host, so
/// they run only when the config file declares this very subscription with this very sink (an
/// API client, or an older CMA that let one create them, cannot make the CMA run a program).
fn sink_allowed(config: &BusConfig, sub: &SubscriptionRecord) -> Result<(), String> {
    let Some(text) = sub.sink.as_deref() else { return Ok(()) };
    let Ok(sink) = serde_json::from_str::<SinkConfig>(text) else {
        // The worker reports an unreadable sink itself.
        return Ok(());
    };
    if sink.kind.api_may_create() {
        return Ok(());
    }
    let declared = config
        .sinks
        .iter()
        .any(|s| s.name == sub.name && serde_json::to_string(&s.sink).is_ok_and(|t| t == text));
    if declared {
        Ok(())
    } else {
        Err(format!(
            "subscription {:?} has a {} sink that the config file does not declare; not \
             delivering (such sinks come only from [[bus.sinks]]; delete it with DELETE \
             /api/v1/subscriptions/{})",
            sub.name,
            sink.kind_name(),
            sub.name
        ))
    }
}

/// Aborts a task when dropped (so aborting [`run`] stops its helpers too).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The store key of the last event id published to JetStream.
pub const NATS_POSITION: &str = "nats_published";

/// Publishes every stored event to JetStream in id order (see [`crate::nats`]), and keeps a
/// durable consumer per subscription. Reconnects with backoff; never gives up.
async fn jetstream_publisher(
    open: OpenEventLog,
    url: String,
    config: BusConfig,
    mut last_event: watch::Receiver<u64>,
) {
    let store = match open() {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            error!(error = %e, "the JetStream publisher cannot open the store");
            return;
        }
    };
    let mut backoff = Duration::from_millis(200);
    'connect: loop {
        let js = match crate::nats::JetStream::connect(
            &url,
            config.max_age(),
            config.retention_max_events,
            config.nats_replicas,
        )
        .await
        {
            Ok(js) => js,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "JetStream unavailable; events are kept and published when it is back");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        info!(%url, stream = crate::nats::STREAM, "publishing events to NATS JetStream");
        let mut cursor: u64 = match blocking(&store, |s| s.bus_state(NATS_POSITION)).await {
            Ok(v) => v.and_then(|v| v.parse().ok()).unwrap_or(0),
            Err(e) => {
                warn!(error = %e, "cannot read the JetStream position");
                0
            }
        };
        let mut consumers: HashMap<String, String> = HashMap::new();
        let mut next_scan = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_scan {
                next_scan = tokio::time::Instant::now() + RESCAN;
                if let Ok(subs) = blocking(&store, |s| s.subscriptions()).await {
                    for sub in subs {
                        if consumers.get(&sub.name) == Some(&sub.filter) {
                            continue;
                        }
                        let Ok(f) = Filter::parse(&sub.filter) else { continue };
                        match js.ensure_consumer(&sub.name, &f).await {
                            Ok(()) => {
                                consumers.insert(sub.name.clone(), sub.filter.clone());
                            }
                            Err(e) => {
                                warn!(subscription = %sub.name, error = %e, "cannot create the JetStream consumer")
                            }
                        }
                    }
                }
            }
            let batch = match blocking(&store, move |s| s.events_since(cursor, 1000)).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot read events for JetStream");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                let _ = tokio::time::timeout(RESCAN, last_event.wait_for(|l| *l > cursor)).await;
                continue;
            }
            match js.publish(&batch).await {
                Ok(dups) => {
                    if dups > 0 {
                        debug!(dups, "JetStream dropped events it already had");
                    }
                    cursor = batch.last().map_or(cursor, |e| e.id);
                    let v = cursor.to_string();
                    if let Err(e) =
                        blocking(&store, move |s| s.set_bus_state(NATS_POSITION, &v)).await
                    {
                        warn!(error = %e, "cannot store the JetStream position (duplicates are dropped by NATS)");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "publishing to JetStream failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    continue 'connect;
                }
            }
        }
    }
}

async fn retention(store: &SharedStore, config: &BusConfig) {
    let cutoff = Timestamp::now().micros().saturating_sub(config.max_age().as_micros() as u64);
    let keep = config.retention_max_events;
    let (mut by_age, mut by_count) = (0, 0);
    loop {
        let r = blocking(store, move |s| s.prune_events(Timestamp(cutoff), keep, RETENTION_BATCH))
            .await;
        match r {
            Ok(p) => {
                by_age += p.by_age;
                by_count += p.by_count;
                if ((p.by_age + p.by_count) as usize) < RETENTION_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                warn!(error = %e, "event retention failed; will retry");
                break;
            }
        }
    }
    if by_age + by_count > 0 {
        info!(by_age, by_count, "old events deleted (retention)");
    }
}

/// Delivers one subscription until aborted.
async fn worker(open: OpenEventLog, sub: SubscriptionRecord, mut last_event: watch::Receiver<u64>) {
    let name = sub.name.clone();
    let sink: SinkConfig = match sub.sink.as_deref().map(serde_json::from_str) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            error!(subscription = %name, error = %e, "the stored sink configuration is not valid; not delivering");
            return;
        }
        None => return,
    };
    let filter = match Filter::parse(&sub.filter) {
        Ok(f) => f,
        Err(e) => {
            error!(subscription = %name, error = %e, "the stored filter is not valid; not delivering");
            return;
        }
    };
    let store = match open() {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            error!(subscription = %name, error = %e, "cannot open the store");
            return;
        }
    };
    info!(subscription = %name, sink = sink.kind_name(), cursor = sub.cursor, "sink started");
    let mut cursor = sub.cursor;
    loop {
        let batch = blocking(&store, move |s| s.events_since(cursor, 200)).await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(subscription = %name, error = %e, "cannot read events; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                last_event.wait_for(|last| *last > cursor),
            )
            .await;
            continue;
        }
        let last_id = batch.last().map_or(cursor, |e| e.id);
        for e in batch {
            if filter.matches(&e) {
                deliver_with_retries(&store, &name, &sink, &e).await;
                cursor = e.id;
                ack(&store, &name, cursor).await;
            }
        }
        if last_id > cursor {
            cursor = last_id;
            ack(&store, &name, cursor).await;
        }
    }
}

async fn ack(store: &SharedStore, name: &str, through: u64) {
    let n = name.to_owned();
    if let Err(e) =
        blocking(store, move |s| s.ack_subscription(&n, through, Timestamp::now())).await
    {
        warn!(subscription = %name, error = %e, "cannot store the cursor; events may be delivered again");
    }
}

async fn deliver_with_retries(store: &SharedStore, name: &str, sink: &SinkConfig, e: &Event) {
    let (mut wait, max_wait, timeout) = sink.durations();
    let mut last_err = String::new();
    for attempt in 1..=sink.max_attempts {
        match deliver_once(sink, e, timeout).await {
            Ok(()) => {
                debug!(subscription = %name, event = e.id, attempt, "delivered");
                return;
            }
            Err(err) => {
                warn!(subscription = %name, event = e.id, attempt, error = %err, "delivery failed");
                last_err = err;
            }
        }
        if attempt < sink.max_attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(max_wait);
        }
    }
    error!(subscription = %name, event = e.id, attempts = sink.max_attempts, error = %last_err, "giving up on an event; recorded as a dead letter");
    let (n, id, attempts) = (name.to_owned(), e.id, u64::from(sink.max_attempts));
    if let Err(err) =
        blocking(store, move |s| s.add_dead_letter(&n, id, attempts, &last_err, Timestamp::now()))
            .await
    {
        error!(subscription = %name, event = e.id, error = %err, "cannot record a dead letter");
    }
}

/// One attempt at one sink.
pub async fn deliver_once(
    sink: &SinkConfig,
    e: &Event,
    timeout: Duration,
) -> Result<(), crate::sink::DeliveryError> {
    let e2 = e.clone();
    let kind = sink.kind.clone();
    match kind {
        SinkKind::Nats { url, subject } => {
            crate::nats::publish_core(
                &url,
                subject.as_deref().unwrap_or("assim.events"),
                e,
                timeout,
            )
            .await
        }
        kind => tokio::task::spawn_blocking(move || match kind {
            SinkKind::Webhook { url, secret } => {
                crate::sink::webhook(&url, secret.as_deref(), &e2, timeout)
            }
            SinkKind::Exec { dir } => crate::sink::exec(&dir, &e2, timeout),
            SinkKind::Nagios { command_file, service } => crate::sink::nagios(
                &command_file,
                service.as_deref().unwrap_or("assim"),
                &e2,
                timeout,
            ),
            SinkKind::Nats { .. } => unreachable!("handled above"),
        })
        .await
        .map_err(|err| format!("delivery task failed: {err}"))?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_store_sqlite::Store;

    #[test]
    fn config_sinks_are_installed_updated_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let sink = |name: &str, filter: &str| crate::config::SinkSubscription {
            name: name.into(),
            filter: filter.into(),
            sink: serde_json::from_str(r#"{"type":"exec","dir":"/x"}"#).unwrap(),
        };
        let mut config =
            BusConfig { sinks: vec![sink("a", "has:x"), sink("b", "")], ..Default::default() };
        install_config_sinks(&mut store, &config).unwrap();
        store.put_subscription("api", "", None, 0, Timestamp(1)).unwrap();
        store.ack_subscription("a", 0, Timestamp(2)).unwrap();
        config.sinks = vec![sink("a", "has:y")];
        install_config_sinks(&mut store, &config).unwrap();
        let names: Vec<String> =
            store.subscriptions().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["a", "api"]);
        assert_eq!(store.subscription("a").unwrap().unwrap().filter, "has:y");
    }

    #[test]
    fn item_6_exec_sinks_run_only_when_the_config_declares_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).unwrap();
        let script = scripts.join("record");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ntouch {}/ran-$ASSIM_EVENT_ID-$$\n", dir.path().display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sink: SinkConfig =
            serde_json::from_value(serde_json::json!({"type": "exec", "dir": scripts})).unwrap();
        let config = BusConfig {
            sinks: vec![crate::config::SinkSubscription {
                name: "declared".into(),
                filter: "".into(),
                sink: sink.clone(),
            }],
            ..Default::default()
        };
        {
            // Installed before any event exists, so every subscription starts at 0.
            let mut store = Store::open(&db).unwrap();
            install_config_sinks(&mut store, &config).unwrap();
            // As an API client (or an older CMA's API) would have stored it.
            let text = serde_json::to_string(&sink).unwrap();
            store.put_subscription("rogue", "", Some(&text), 0, Timestamp(1)).unwrap();
            // A config name with a sink the config does not declare is refused too.
            let mut other = sink.clone();
            other.max_attempts = 1;
            let text = serde_json::to_string(&other).unwrap();
            store.put_subscription("declared2", "", Some(&text), 0, Timestamp(1)).unwrap();
            let e = Event {
                id: 1,
                time: Timestamp::now(),
                kind: assim_cma::EventKind::LocalEvent,
                host: None,
                hostname: "h".into(),
                tags: Default::default(),
                text: "x".into(),
                severity: assim_cma::Severity::Info,
                body: None,
            };
            store.apply(&[], &[e], &Default::default()).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ran = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ran-"))
                .count()
        };
        rt.block_on(async {
            let (_tx, rx) = watch::channel(1);
            let task = tokio::spawn(run(
                assim_store_sqlite::bus::event_log_opener(db.clone()),
                config.clone(),
                rx,
            ));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while ran(dir.path()) == 0 {
                assert!(tokio::time::Instant::now() < deadline, "the declared sink never ran");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The other workers started in the same rescan; give them time to run too.
            tokio::time::sleep(Duration::from_millis(500)).await;
            task.abort();
        });
        assert_eq!(ran(dir.path()), 1, "only the declared exec sink ran");
    }
}
