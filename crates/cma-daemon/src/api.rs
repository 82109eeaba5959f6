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
//! - The web page at `/` (`/hosts`, `/topology`, `/events`, `/static/…`) — see
//!   [`crate::api_web`].
//! - The exports (known hosts, SSHFP, the inventory behind `assim export …`) under
//!   `/api/v1/export/…` — see [`crate::api_export`].
//! - `GET /metrics`: Prometheus text format.
//! - `GET /api/v1/statistics/prometheus`: the latest statistics of every host, for
//!   Prometheus — see [`crate::api_statistics`].
//! - `GET /healthz`: `ok`; 503 with the reason while the store refuses writes (the CMA then
//!   acknowledges no new records, issue 16 item 15).
//!
//! Reads go through the storage seams — [`Queries`] for status, discovery, services and the
//! topology, [`EventLog`] for events and subscriptions — on a few handles of the API's own
//! ([`Readers`]), called on tokio's blocking threads ([`ApiState::read`],
//! [`ApiState::with_events`]), so neither the CMA task nor the async workers ever wait for a
//! store call. [`ApiState::new`] opens them on the SQLite file; [`ApiState::with_engine`] takes
//! any engine's (the in-memory one in tests). Who may call what is [`crate::api_access`]: every
//! request must name this API in its `Host` header, requests that change state need the
//! operator's token even on loopback, and reads need it too when a token is configured with
//! `--api-token`. What one client can hold (connections, long-polls and streams, store calls,
//! answer sizes) is bounded by [`crate::api_limits`].

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use assim_api::{CmaInfo, DiscoveryView, NodeView, StatusView};
use assim_store::{EventLog, OpenEventLog, OpenQueries, Queries, QueryError};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;

use crate::api_limits::{
    API_HANDLES, BoundedListener, HeldGate, Limits, MAX_HELD, MAX_QUEUED_READS, ReadGate,
};
use crate::metrics::SharedMetrics;

/// Shared state of the API handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Handles on the read side of the store.
    pub(crate) queries: Arc<Readers<dyn Queries>>,
    /// Handles on the event log and the subscriptions.
    pub(crate) events: Arc<Readers<dyn EventLog>>,
    metrics: Arc<SharedMetrics>,
    pub(crate) last_event: watch::Receiver<u64>,
    pub(crate) access: crate::api_access::ApiAccess,
    pub(crate) info: CmaInfo,
    /// Where `check run` requests go (the CMA task); `None` outside a running CMA.
    pub(crate) check_runner: Option<crate::cma::checks_cma::RunSender>,
    /// The fleet questions' registry, resolver and settings ([`crate::api_fleet`]).
    pub(crate) fleet: Arc<crate::api_fleet::Fleet>,
    /// The audit rules in force ([`crate::api_audit`]).
    pub(crate) audit: Arc<assim_audit::RuleSet>,
    /// Store calls running and queued, per seam.
    query_gate: Arc<ReadGate>,
    events_gate: Arc<ReadGate>,
    /// Long-polls and event streams held open.
    pub(crate) held: HeldGate,
    limits: Limits,
    /// Which listeners are Prometheus exporters (`/api/v1/export/prometheus-sd`).
    pub(crate) exporter_rules: Arc<Vec<assim_export::prometheus::ExporterRule>>,
    /// The latest statistics values, shared with the CMA task (issue 17 item 5).
    pub(crate) statistics: crate::api_statistics::SharedLatest,
    /// The engine's store and role, shown by `/api/v1/status` (issue 14); `None` outside a
    /// running CMA.
    pub(crate) engine_view: Option<SharedEngineView>,
    /// Live delivery of stored events to event streams: the CMA task publishes each stored
    /// batch into it. `None` (an API without a CMA task in its process, or one that may stand
    /// by while another process's engine writes): streams follow the log alone.
    pub(crate) fanout: Option<assim_bus::Fanout>,
}

/// The engine's store and role (active or standby), written by the CMA task.
pub type SharedEngineView = Arc<Mutex<assim_api::EngineView>>;

impl ApiState {
    /// Opens the API's own handles on the SQLite store at `store_path` (the one place the API
    /// names its engine).
    pub fn new(
        store_path: PathBuf,
        metrics: Arc<SharedMetrics>,
        last_event: watch::Receiver<u64>,
        access: crate::api_access::ApiAccess,
        info: CmaInfo,
    ) -> anyhow::Result<ApiState> {
        ApiState::with_engine(
            assim_store_sqlite::queries::queries_opener(store_path.clone()),
            assim_store_sqlite::bus::event_log_opener(store_path),
            metrics,
            last_event,
            access,
            info,
        )
    }

    /// The API over any storage engine: `queries` and `events` open its handles. One of each is
    /// opened now, so a store that cannot be opened fails here rather than on the first request.
    pub fn with_engine(
        queries: OpenQueries,
        events: OpenEventLog,
        metrics: Arc<SharedMetrics>,
        last_event: watch::Receiver<u64>,
        access: crate::api_access::ApiAccess,
        info: CmaInfo,
    ) -> anyhow::Result<ApiState> {
        Ok(ApiState {
            queries: Arc::new(Readers::new(queries, API_HANDLES)?),
            events: Arc::new(Readers::new(events, API_HANDLES)?),
            metrics,
            last_event,
            access,
            info,
            check_runner: None,
            fleet: Arc::new(crate::api_fleet::Fleet::new(crate::api_fleet::FleetConfig::default())),
            audit: Arc::new(assim_audit::RuleSet::defaults()),
            query_gate: Arc::new(ReadGate::new(API_HANDLES, MAX_QUEUED_READS)),
            events_gate: Arc::new(ReadGate::new(API_HANDLES, MAX_QUEUED_READS)),
            held: HeldGate::new(MAX_HELD),
            limits: Limits::default(),
            exporter_rules: Arc::new(assim_export::prometheus::default_rules()),
            statistics: Default::default(),
            engine_view: None,
            fanout: None,
        })
    }

    /// The same API showing the engine's store and role on `/api/v1/status`.
    pub fn with_engine_view(mut self, view: SharedEngineView) -> ApiState {
        self.engine_view = Some(view);
        self
    }

    /// The same API with other `[fleet]` settings (MAC registry, reverse DNS).
    pub fn with_fleet(mut self, config: crate::api_fleet::FleetConfig) -> ApiState {
        self.fleet = Arc::new(crate::api_fleet::Fleet::new(config));
        self
    }

    /// The same API judging with other audit rules.
    pub fn with_audit(mut self, rules: assim_audit::RuleSet) -> ApiState {
        self.audit = Arc::new(rules);
        self
    }

    /// The same API with other bounds (tests use small ones).
    pub fn with_limits(mut self, limits: Limits) -> ApiState {
        self.query_gate = Arc::new(ReadGate::new(API_HANDLES, limits.queued_reads));
        self.events_gate = Arc::new(ReadGate::new(API_HANDLES, limits.queued_reads));
        self.held = HeldGate::new(limits.held);
        self.limits = limits;
        self
    }

    /// Runs `f` with a read handle on a blocking thread: store calls do disk IO and may wait
    /// for the writer's lock, so they never run on the async workers. A call first waits
    /// (asynchronously) for one of the [`API_HANDLES`] places; with [`MAX_QUEUED_READS`]
    /// already waiting it is refused with [`QueryError::Busy`].
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Queries) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let Some(place) = self.query_gate.enter().await else {
            return Err(QueryError::Busy("every store reader is in use and the queue is full"));
        };
        let queries = self.queries.clone();
        tokio::task::spawn_blocking(move || {
            let _place = place;
            queries.run(|q| f(q))
        })
        .await
        .expect("a store call panicked")
    }

    /// Runs `f` with an event-log handle on a blocking thread (see [`ApiState::read`]).
    pub(crate) async fn with_events<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn EventLog) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let Some(place) = self.events_gate.enter().await else {
            return Err(QueryError::Busy("every event-log reader is in use and the queue is full"));
        };
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let _place = place;
            events.run(|e| f(e))
        })
        .await
        .expect("a store call panicked")
    }
}

/// Opens a blocking store handle of one seam.
type Open<T> = Arc<dyn Fn() -> Result<Box<T>, QueryError> + Send + Sync>;

/// A few blocking handles on one seam of the store (an SQLite connection is not shared between
/// threads): at most `max` open, each used by one blocking thread at a time and then kept for
/// the next call; a caller finding all in use waits for one.
pub struct Readers<T: ?Sized> {
    open: Open<T>,
    max: usize,
    pool: Mutex<Pool<T>>,
    free: Condvar,
}

struct Pool<T: ?Sized> {
    idle: Vec<Box<T>>,
    /// Handles open, idle or in use.
    open: usize,
}

impl<T: ?Sized> std::fmt::Debug for Readers<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").field("max", &self.max).finish_non_exhaustive()
    }
}

impl<T: ?Sized> Readers<T> {
    /// Opens the first handle now.
    pub fn new(open: Open<T>, max: usize) -> Result<Readers<T>, QueryError> {
        let first = open()?;
        Ok(Readers {
            open,
            max: max.max(1),
            pool: Mutex::new(Pool { idle: vec![first], open: 1 }),
            free: Condvar::new(),
        })
    }

    /// Runs `f` with a handle (blocking: call it on a blocking thread).
    pub fn run<R>(&self, f: impl FnOnce(&mut T) -> Result<R, QueryError>) -> Result<R, QueryError> {
        let mut handle = self.take()?;
        f(handle.handle.as_mut().expect("a handle in use"))
    }

    fn take(&self) -> Result<Handle<'_, T>, QueryError> {
        let mut pool = self.pool.lock().expect("readers lock");
        loop {
            if let Some(h) = pool.idle.pop() {
                return Ok(Handle { handle: Some(h), readers: self });
            }
            if pool.open < self.max {
                pool.open += 1;
                drop(pool);
                return match (self.open)() {
                    Ok(h) => Ok(Handle { handle: Some(h), readers: self }),
                    Err(e) => {
                        self.pool.lock().expect("readers lock").open -= 1;
                        self.free.notify_one();
                        Err(e)
                    }
                };
            }
            pool = self.free.wait(pool).expect("readers lock");
        }
    }
}

/// A handle in use; goes back to the pool when dropped. If the call panicked the handle may
/// be mid-call, so it is closed instead.
struct Handle<'a, T: ?Sized> {
    handle: Option<Box<T>>,
    readers: &'a Readers<T>,
}

impl<T: ?Sized> Drop for Handle<'_, T> {
    fn drop(&mut self) {
        let mut pool = self.readers.pool.lock().unwrap_or_else(|e| e.into_inner());
        match self.handle.take() {
            Some(h) if !std::thread::panicking() => pool.idle.push(h),
            _ => pool.open -= 1,
        }
        self.readers.free.notify_one();
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

/// Serves the API on `listener` until the task is aborted, with the state's [`Limits`] on
/// connections (by default [`crate::api_limits::MAX_CONNECTIONS`] at once, each closed after
/// [`crate::api_limits::IDLE_TIMEOUT`] without traffic).
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) {
    let limits = state.limits;
    let app = router(state);
    let listener = BoundedListener::new(listener, limits.connections, limits.idle);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

/// The API's routes, every one behind [`crate::api_access`]'s guard (Host header, token).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/events", get(events))
        .route("/api/v1/discovery", get(discovery))
        .route("/metrics", get(metrics))
        .merge(crate::api_bus::routes())
        .merge(crate::api_topology::routes())
        .merge(crate::api_checks::routes())
        .merge(assim_web::routes())
        .merge(crate::api_session::routes())
        .merge(crate::api_export::routes())
        .merge(crate::api_fleet::routes())
        .merge(crate::api_audit::routes())
        .merge(crate::api_statistics::routes())
        .layer(middleware::from_fn_with_state(state.clone(), crate::api_access::guard))
        .with_state(state)
}

async fn healthz(State(state): State<ApiState>) -> Response {
    match state.metrics.get().store_unavailable {
        None => "ok\n".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn status(State(state): State<ApiState>) -> Response {
    match state.read(|q| q.nodes()).await {
        Ok(nodes) => {
            let engine =
                state.engine_view.as_ref().map(|v| v.lock().expect("engine view lock").clone());
            Json(StatusView { cma: state.info.clone(), nodes, engine }).into_response()
        }
        Err(e) => crate::api_limits::failed(e),
    }
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
        let _held = match state.held.hold(0) {
            Ok(p) => p,
            Err(busy) => return busy.into_response(),
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|last| *last > q.since)).await;
    }
    let since = q.since;
    let list = state.with_events(move |s| s.events_since(since, limit)).await;
    match list {
        Ok(list) => {
            Json(list.into_iter().map(assim_api::Event::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => crate::api_limits::failed(e),
    }
}

/// Query of `/api/v1/discovery`.
#[derive(Debug, Deserialize)]
pub struct DiscoveryQuery {
    pub host: String,
}

async fn discovery(State(state): State<ApiState>, Query(q): Query<DiscoveryQuery>) -> Response {
    let answer = state
        .read(move |store| {
            let nodes = store.nodes()?;
            let Some(node) =
                nodes.iter().find(|n| n.hostname == q.host || n.id.to_string() == q.host)
            else {
                return Ok(Err(q.host));
            };
            store.discovery(node.id).map(Ok)
        })
        .await;
    match answer {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(host)) => {
            (StatusCode::NOT_FOUND, format!("no host named {host:?}; see `assim status`\n"))
                .into_response()
        }
        Err(e) => crate::api_limits::failed(e),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let body = crate::metrics::render(&state.metrics.get());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
