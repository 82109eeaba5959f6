//! The event stream (`GET /api/v1/events/stream`) over the live fan-out (issue 18 goal 4): a
//! real API server over a real SQLite event log, fed the way the CMA task feeds it (store the
//! batch, publish it to the fan-out, then announce its last id). A stream that starts from an
//! old position catches up from the log and then follows the fan-out: every matching event
//! arrives exactly once and in order, whether it was stored before the stream opened, while it
//! caught up, or after, and also when the stream fell further behind than its fan-out queue
//! holds (it reads the gap from the log).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use assim_bus::Fanout;
use assim_cma::{Event, EventKind, Severity};
use assim_cma_daemon::api::{ApiState, CmaInfo};
use assim_cma_daemon::metrics::SharedMetrics;
use assim_store_sqlite::{InboxProgress, Store};
use assim_wire::{NodeId, Timestamp};

fn event(id: u64) -> Event {
    Event {
        id,
        time: Timestamp::now(),
        kind: if id.is_multiple_of(3) { EventKind::HostDown } else { EventKind::LocalEvent },
        host: None,
        hostname: format!("n{}", id % 10),
        tags: BTreeMap::from([("cluster".to_string(), format!("c{}", id % 2))]),
        text: format!("event {id}"),
        severity: Severity::Warning,
        body: None,
    }
}

/// What the stream's filter `cluster=c1` must let through.
fn matches(id: u64) -> bool {
    id % 2 == 1
}

/// The CMA task's side: the store, the fan-out, the last-id announcement.
struct Writer {
    store: Store,
    fanout: Fanout,
    last: tokio::sync::watch::Sender<u64>,
    next: u64,
}

impl Writer {
    /// Stores a batch of `n` events, publishes it, announces its last id.
    fn batch(&mut self, n: u64) {
        let events: Vec<Event> = (self.next..self.next + n).map(event).collect();
        self.next += n;
        self.store.apply(&[], &events, &InboxProgress::default()).unwrap();
        let last = events.last().unwrap().id;
        self.fanout.publish(events);
        let _ = self.last.send(last);
    }
}

/// Reads SSE frames until `want` events arrived; returns their ids (and checks each frame).
fn read_ids(reader: &mut impl std::io::BufRead, want: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut line = String::new();
    while ids.len() < want {
        line.clear();
        let n = reader.read_line(&mut line).expect("read the stream");
        assert!(n > 0, "the stream ended after {} events", ids.len());
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if let Some(id) = fields.get("id") {
                let id: u64 = id.parse().unwrap();
                let data: serde_json::Value = serde_json::from_str(&fields["data"]).unwrap();
                assert_eq!(data["id"], id, "{data}");
                assert_eq!(data["text"], format!("event {id}"));
                assert_eq!(fields["event"], data["type"].as_str().unwrap());
                ids.push(id);
            }
            fields.clear();
        } else if let Some((k, v)) = l.split_once(':')
            && !k.is_empty()
        {
            fields.insert(k.to_string(), v.trim_start().to_string());
        }
    }
    ids
}

#[test]
fn a_stream_catches_up_then_follows_the_fanout_and_reads_a_lag_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cma.sqlite");
    // A small queue, so a burst overflows it and the stream must read the gap from the log.
    let fanout = Fanout::new(64);
    let (last, last_rx) = tokio::sync::watch::channel(0);
    let mut w =
        Writer { store: Store::open(&path).unwrap(), fanout: fanout.clone(), last, next: 1 };
    let info = CmaInfo {
        node_id: NodeId::from_slice(&[7; 16]).unwrap(),
        fingerprint: "fp".into(),
        listen: "127.0.0.1:1984".parse().unwrap(),
        version: "test".into(),
    };
    let access = assim_cma_daemon::api_access::ApiAccess::new(
        "token-for-writes",
        None,
        "127.0.0.1:0".parse().unwrap(),
        &[],
        &[],
    );
    let state = ApiState::new(path, Arc::new(SharedMetrics::default()), last_rx, access, info)
        .unwrap()
        .with_fanout(fanout.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = rt.unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(assim_cma_daemon::api::serve(listener, state));

    // Stored before the stream opens: 1500 events (three store calls' worth of catch-up).
    for _ in 0..3 {
        w.batch(500);
    }
    let resp =
        ureq::get(&format!("http://{addr}/api/v1/events/stream?since=0&filter=cluster%3Dc1"))
            .timeout(Duration::from_secs(20))
            .call()
            .unwrap();
    let mut reader = std::io::BufReader::new(resp.into_reader());
    // Catch-up under way: read some, then store more while the rest is still to come.
    let mut ids = read_ids(&mut reader, 100);
    w.batch(10);
    w.batch(10);
    ids.extend(read_ids(&mut reader, 750 + 10 - 100));
    assert_eq!(fanout.subscribers(), 1, "the stream subscribed to the fan-out");
    // Live: small batches.
    for _ in 0..5 {
        w.batch(4);
    }
    ids.extend(read_ids(&mut reader, 10));
    // A burst far beyond the queue (64 matching events) before the stream reads any of it.
    for _ in 0..10 {
        w.batch(100);
    }
    ids.extend(read_ids(&mut reader, 500));
    // And live again after the lag.
    w.batch(6);
    ids.extend(read_ids(&mut reader, 3));

    let want: Vec<u64> = (1..w.next).filter(|id| matches(*id)).collect();
    assert_eq!(ids.len(), want.len(), "each matching event once");
    assert_eq!(ids, want, "in order, none missing, none twice");
}
