//! The CMA's HTTP API and Prometheus endpoint.
//!
//! - `GET /api/v1/status`: the CMA and every node (state, since, ring neighbours, version).
//! - `GET /api/v1/events?since=ID&limit=N&wait=SECONDS`: events after `since`, oldest first; with
//!   `wait`, the request is held until at least one event exists (long-poll, at most 60 s).
//! - `GET /api/v1/discovery?host=NAME`: the latest result of every discovery collector on a
//!   host (by host name or node id).
//! - The event bus: `?filter=` on the events route, an SSE stream, durable subscriptions —
//!   see [`crate::api_bus`].
//! - The topology graph's canned queries under `/api/v1/topology/…` — see
//!   [`crate::api_topology`].
//! - `GET /metrics`: Prometheus text format.
//! - `GET /healthz`: `ok`.
//!
//! Reads go to the SQLite file through the API's own connection, on tokio's blocking threads
//! ([`ApiState::with_store`]), so neither the CMA task nor the async workers ever wait for a
//! store call. Who may call what is [`crate::api_access`]: every request must name this API in
//! its `Host` header, requests that change state need the operator's token even on loopback,
//! and reads need it too when a token is configured with `--api-token`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use assim_api::{CmaInfo, DiscoveryView, NodeView, StatusView};
use assim_store_sqlite::Store;
use assim_wire::NodeId;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;

use crate::metrics::SharedMetrics;

/// Shared state of the API handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub(crate) store: Arc<Mutex<Store>>,
    metrics: Arc<SharedMetrics>,
    pub(crate) last_event: watch::Receiver<u64>,
    pub(crate) access: crate::api_access::ApiAccess,
    info: CmaInfo,
    /// Where `check run` requests go (the CMA task); `None` outside a running CMA.
    pub(crate) check_runner: Option<crate::cma::checks_cma::RunSender>,
}

impl ApiState {
    /// Opens the API's own connection to the store.
    pub fn new(
        store_path: PathBuf,
        metrics: Arc<SharedMetrics>,
        last_event: watch::Receiver<u64>,
        access: crate::api_access::ApiAccess,
        info: CmaInfo,
    ) -> anyhow::Result<ApiState> {
        let store = Store::open(&store_path)?;
        Ok(ApiState {
            store: Arc::new(Mutex::new(store)),
            metrics,
            last_event,
            access,
            info,
            check_runner: None,
        })
    }

    /// Runs `f` with the API's store connection on a blocking thread: store calls do disk IO
    /// and may wait for the writer's lock, so they never run on the async workers.
    pub(crate) async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&mut store.lock().expect("store lock")))
            .await
            .expect("a store call panicked")
    }
}

/// Query of `/api/v1/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    pub since: u64,
    pub limit: Option<usize>,
    pub wait: Option<u64>,
    /// Only events matching this filter (see [`crate::api_bus`]).
    pub filter: Option<String>,
}

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

/// The API's routes, every one behind [`crate::api_access`]'s guard (Host header, token).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/status", get(status))
        .route("/api/v1/events", get(events))
        .route("/api/v1/discovery", get(discovery))
        .route("/metrics", get(metrics))
        .merge(crate::api_bus::routes())
        .merge(crate::api_topology::routes())
        .merge(crate::api_checks::routes())
        .layer(middleware::from_fn_with_state(state.clone(), crate::api_access::guard))
        .with_state(state)
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn status(State(state): State<ApiState>) -> Response {
    let nodes = match state.with_store(|s| s.nodes()).await {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    let names: HashMap<NodeId, String> = nodes.iter().map(|n| (n.id, n.hostname.clone())).collect();
    let view = StatusView {
        cma: state.info.clone(),
        nodes: nodes
            .into_iter()
            .map(|n| NodeView {
                id: n.id,
                state: n.state.name().to_string(),
                since: n.since.0,
                version: n.version,
                listen_addr: n.listen_addr.to_string(),
                addresses: n.addresses,
                neighbours: n
                    .peers
                    .iter()
                    .map(|p| names.get(p).cloned().unwrap_or_else(|| p.to_string()))
                    .collect(),
                peer_epoch: n.peer_epoch,
                hostname: n.hostname,
            })
            .collect(),
    };
    Json(view).into_response()
}

async fn events(State(state): State<ApiState>, Query(q): Query<EventsQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(60));
    if q.filter.is_some() {
        return crate::api_bus::filtered_events(state, q.filter.as_deref(), q.since, limit, wait)
            .await;
    }
    let mut rx = state.last_event.clone();
    if !wait.is_zero() && *rx.borrow_and_update() <= q.since {
        let _ = tokio::time::timeout(wait, rx.wait_for(|last| *last > q.since)).await;
    }
    let since = q.since;
    let list = state.with_store(move |s| s.events_since(since, limit)).await;
    match list {
        Ok(list) => {
            Json(list.into_iter().map(assim_api::Event::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => internal(e),
    }
}

/// Query of `/api/v1/discovery`.
#[derive(Debug, Deserialize)]
pub struct DiscoveryQuery {
    pub host: String,
}

async fn discovery(State(state): State<ApiState>, Query(q): Query<DiscoveryQuery>) -> Response {
    state.with_store(move |store| discovery_answer(store, &q)).await
}

fn discovery_answer(store: &Store, q: &DiscoveryQuery) -> Response {
    let nodes = match store.nodes() {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    let Some(node) = nodes.iter().find(|n| n.hostname == q.host || n.id.to_string() == q.host)
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no host named {:?}; see `assim status`\n", q.host),
        )
            .into_response();
    };
    match store.discovery(node.id) {
        Ok(list) => Json(
            list.into_iter()
                .map(|d| DiscoveryView {
                    payload: serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::Null),
                    name: d.name,
                    hash: d.hash,
                    collected_at: d.collected_at,
                    updated_at: d.updated_at,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let body = crate::metrics::render(&state.metrics.get());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
