//! The HTTP API over the in-memory engine: the read routes go through the `assim_store`
//! seams only (`Queries`, `EventLog`), so the API answers from `MemStore` without SQLite.

use std::collections::BTreeMap;
use std::sync::Arc;

use assim_cma::{NodeRecord, NodeState};
use assim_cma_daemon::api::{ApiState, CmaInfo};
use assim_cma_daemon::metrics::SharedMetrics;
use assim_store::{
    DeadLetter, DiscoveryRecord, EventLog, MemStore, OpenEventLog, OpenQueries, Pruned, Queries,
    QueryError, SubscriptionRecord,
};
use assim_wire::{NodeId, Timestamp};
use serde_json::Value;

/// An event log that holds nothing (the in-memory engine keeps no events).
struct NoEvents;

impl EventLog for NoEvents {
    fn events_since(&self, _: u64, _: usize) -> Result<Vec<assim_cma::Event>, QueryError> {
        Ok(Vec::new())
    }
    fn last_event_id(&self) -> Result<u64, QueryError> {
        Ok(0)
    }
    fn prune_events(&mut self, _: Timestamp, _: u64, _: usize) -> Result<Pruned, QueryError> {
        Ok(Pruned::default())
    }
    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, QueryError> {
        Ok(Vec::new())
    }
    fn subscription(&self, _: &str) -> Result<Option<SubscriptionRecord>, QueryError> {
        Ok(None)
    }
    fn put_subscription(
        &mut self,
        name: &str,
        filter: &str,
        sink: Option<&str>,
        start: u64,
        now: Timestamp,
    ) -> Result<SubscriptionRecord, QueryError> {
        Ok(SubscriptionRecord {
            name: name.into(),
            filter: filter.into(),
            sink: sink.map(Into::into),
            cursor: start,
            created_at: now.0,
            updated_at: now.0,
        })
    }
    fn delete_subscription(&mut self, _: &str) -> Result<bool, QueryError> {
        Ok(false)
    }
    fn ack_subscription(
        &mut self,
        _: &str,
        _: u64,
        _: Timestamp,
    ) -> Result<Option<u64>, QueryError> {
        Ok(None)
    }
    fn add_dead_letter(
        &mut self,
        _: &str,
        _: u64,
        _: u64,
        _: &str,
        _: Timestamp,
    ) -> Result<(), QueryError> {
        Ok(())
    }
    fn dead_letters(&self, _: &str, _: usize) -> Result<Vec<DeadLetter>, QueryError> {
        Ok(Vec::new())
    }
    fn bus_state(&self, _: &str) -> Result<Option<String>, QueryError> {
        Ok(None)
    }
    fn set_bus_state(&mut self, _: &str, _: &str) -> Result<(), QueryError> {
        Ok(())
    }
}

fn node(n: u8, hostname: &str, state: NodeState, peers: Vec<NodeId>) -> NodeRecord {
    NodeRecord {
        id: NodeId::from_slice(&[n; 16]).unwrap(),
        hostname: hostname.into(),
        version: "test".into(),
        listen_addr: format!("127.0.0.1:{}", 1000 + u16::from(n)).parse().unwrap(),
        public_key: [n; 32],
        addresses: vec!["127.0.0.1".into()],
        state,
        since: Timestamp(u64::from(n) * 1_000_000),
        registered_at: Timestamp(1),
        peer_epoch: 3,
        peers,
    }
}

fn get(base: &str, path: &str) -> (u16, String) {
    match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn json(base: &str, path: &str) -> Value {
    let (code, body) = get(base, path);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_from_the_in_memory_store() {
    let db = node(2, "db1", NodeState::Down, Vec::new());
    let web = node(1, "web1", NodeState::Up, vec![db.id, NodeId::from_slice(&[9; 16]).unwrap()]);
    let mut mem = MemStore::default();
    mem.discovery.insert(
        (web.id, "os".into()),
        DiscoveryRecord {
            node: web.id,
            name: "os".into(),
            hash: "h1".into(),
            payload: r#"{"kernel": "6.1"}"#.into(),
            collected_at: 5,
            updated_at: 6,
        },
    );
    let web_id = web.id;
    mem.ring = vec![web.id];
    mem.nodes = BTreeMap::from([(web.id, web), (db.id, db)]);
    let queries: OpenQueries = Arc::new(move || Ok(Box::new(mem.clone()) as Box<dyn Queries>));
    let events: OpenEventLog = Arc::new(|| Ok(Box::new(NoEvents) as Box<dyn EventLog>));
    let (_tx, last_event) = tokio::sync::watch::channel(0);
    let info = CmaInfo {
        node_id: NodeId::from_slice(&[7; 16]).unwrap(),
        fingerprint: "fp".into(),
        listen: "127.0.0.1:1984".parse().unwrap(),
        version: "test".into(),
    };
    let metrics = Arc::new(SharedMetrics::default());
    let state = ApiState::with_engine(
        queries,
        events,
        metrics.clone(),
        last_event,
        // The operator token guards writes; this test only reads.
        assim_cma_daemon::api_access::ApiAccess::new(
            "operator-token-for-writes",
            None,
            "127.0.0.1:0".parse().unwrap(),
            &[],
            &[],
        ),
        info,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(assim_cma_daemon::api::serve(listener, state));

    tokio::task::spawn_blocking(move || {
        let status = json(&base, "/api/v1/status");
        let nodes = status["nodes"].as_array().unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n["hostname"].as_str().unwrap()).collect();
        assert_eq!(names, ["db1", "web1"], "{status}");
        // Ring neighbours by host name; one not known by its node id.
        assert_eq!(nodes[1]["neighbours"][0], "db1");
        assert_eq!(nodes[1]["neighbours"][1], NodeId::from_slice(&[9; 16]).unwrap().to_string());
        assert_eq!(nodes[0]["state"], "down");

        let down = json(&base, "/api/v1/topology/hosts?state=down");
        assert_eq!(down.as_array().unwrap().len(), 1, "{down}");
        assert_eq!(down[0]["host"], "db1");
        assert_eq!(down[0]["last_event"], Value::Null);

        let discovery = json(&base, "/api/v1/discovery?host=web1");
        assert_eq!(discovery[0]["name"], "os");
        assert_eq!(discovery[0]["payload"]["kernel"], "6.1");
        let by_id = json(&base, &format!("/api/v1/discovery?host={web_id}"));
        assert_eq!(by_id, discovery);

        assert_eq!(json(&base, "/api/v1/topology/hosts/web1/services"), Value::Array(vec![]));
        assert_eq!(json(&base, "/api/v1/services"), Value::Array(vec![]));
        assert_eq!(json(&base, "/api/v1/events"), Value::Array(vec![]));
        let (code, body) = get(&base, "/api/v1/topology/hosts/nosuch/services");
        assert_eq!(code, 404, "{body}");
        assert!(body.contains("nosuch"), "{body}");
        let (code, _) = get(&base, "/api/v1/discovery?host=nosuch");
        assert_eq!(code, 404);

        // Issue 16 item 15: while the store refuses writes, /healthz says so (503, the reason).
        assert_eq!(get(&base, "/healthz"), (200, "ok\n".to_string()));
        metrics.publish(assim_cma_daemon::metrics::CmaMetrics {
            store_unavailable: Some("the store refuses writes since 5 s".into()),
            store_unavailable_seconds: 5,
            ..Default::default()
        });
        let (code, body) = get(&base, "/healthz");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("refuses writes"), "{body}");
        let (_, text) = get(&base, "/metrics");
        assert!(text.contains("assim_cma_store_unavailable 1"), "{text}");
        metrics.publish(Default::default());
        assert_eq!(get(&base, "/healthz").0, 200);

        // The rings, switches and unreachable hosts (the in-memory engine keeps no switches).
        let rings = json(&base, "/api/v1/topology/rings");
        assert_eq!(rings[0]["ring"], "all", "{rings}");
        assert_eq!(rings[0]["members"][0]["host"], "web1", "{rings}");
        assert_eq!(rings[0]["members"][0]["state"], "up", "{rings}");
        assert_eq!(json(&base, "/api/v1/topology/hosts?state=unreachable"), Value::Array(vec![]));
        assert_eq!(json(&base, "/api/v1/topology/switches"), Value::Array(vec![]));
        let (code, body) = get(&base, "/api/v1/topology/switches/tor9");
        assert_eq!(code, 404, "{body}");
        assert!(body.contains("tor9"), "{body}");
        let (code, body) = get(&base, &format!("/api/v1/topology/switches/{}", "x".repeat(300)));
        assert_eq!(code, 400, "{body}");
        let (code, body) = get(&base, "/api/v1/topology/hosts?state=sideways");
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("unreachable"), "{body}");
    })
    .await
    .unwrap();
    server.abort();
}
