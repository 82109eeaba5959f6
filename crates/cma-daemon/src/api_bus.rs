//! The event bus routes of the CMA's HTTP API.
//!
//! - `GET /api/v1/events?filter=EXPR&since=ID&limit=N&wait=S`: like the plain route, but only
//!   events matching the filter (see `assim_bus::filter`). The answer is the JSON array of
//!   matching events; the header `X-Assim-Cursor` is the id of the last event *examined*, the
//!   `since` to use next (it moves past non-matching events, so a follower never re-scans them).
//! - `GET /api/v1/events/stream?filter=EXPR&since=ID`: Server-Sent Events, one `event: TYPE`,
//!   `id: ID`, `data: JSON` per matching event; reconnecting with `Last-Event-ID` resumes. It
//!   catches up from the log, then follows the CMA's live fan-out (`assim_bus::Fanout`).
//! - `PUT /api/v1/subscriptions/NAME` `{"filter": EXPR, "sink": {...}?, "start": "now" |
//!   "beginning" | ID}`: creates a durable subscription (its cursor at `start`, default "now")
//!   or changes its filter and sink (keeping the cursor). `exec` and `nagios` sinks act on the CMA
//!   host (programs, files) and come only from the config file: the API refuses them (400).
//! - `GET /api/v1/subscriptions`, `GET|DELETE /api/v1/subscriptions/NAME`.
//! - `GET /api/v1/subscriptions/NAME/events?limit=N&wait=S`: `{"cursor", "through", "events"}`
//!   — the matching events after the cursor; after handling them, acknowledge `through`.
//! - `POST /api/v1/subscriptions/NAME/ack` `{"through": ID}`: moves the cursor (never back).
//! - `GET /api/v1/subscriptions/NAME/dead-letters`: events its sink gave up on.
//!
//! A filter that does not parse is a 400 whose text points at the problem.

use std::convert::Infallible;
use std::time::Duration;

pub use assim_api::{AckBody, SubscriptionBatch, SubscriptionView};
use assim_bus::{Filter, SinkConfig};
use assim_cma::Event;
use assim_store::{EventLog, QueryError, SubscriptionRecord};
use assim_wire::Timestamp;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::ApiState;
use crate::api_limits::SCAN_PER_CALL;

/// Events examined per request at most (a very selective filter then answers with what it
/// found so far and a cursor to continue from), in store calls of at most [`SCAN_PER_CALL`].
const MAX_SCAN: usize = 100_000;
/// Rows read per store query while scanning.
const SCAN_BATCH: usize = 1000;
/// Longest long-poll.
const MAX_WAIT: u64 = 60;

/// The bus routes (merged into the protected part of [`crate::api::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/events/stream", get(stream))
        .route("/api/v1/subscriptions", get(list))
        .route("/api/v1/subscriptions/{name}", get(show).put(put).delete(delete))
        .route("/api/v1/subscriptions/{name}/events", get(sub_events))
        .route("/api/v1/subscriptions/{name}/ack", axum::routing::post(ack))
        .route("/api/v1/subscriptions/{name}/dead-letters", get(dead_letters))
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

fn not_found(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no subscription named {name:?}; create it with PUT /api/v1/subscriptions/{name}\n"
        ),
    )
        .into_response()
}

/// The filter, or the 400 answer's text.
fn parse_filter(text: Option<&str>) -> Result<Filter, String> {
    let text = text.unwrap_or("");
    Filter::parse(text).map_err(|e| format!("filter: {}", e.render(text)))
}

/// What one [`scan`] found.
#[derive(Debug)]
pub struct Scanned {
    /// Matching events, oldest first.
    pub events: Vec<Event>,
    /// The id of the last event examined: where the next scan starts.
    pub through: u64,
    /// Events examined.
    pub examined: usize,
    /// True when the scan reached the newest event.
    pub at_end: bool,
}

/// Matching events after `since`, at most `limit`, examining at most `max_examined` events.
pub fn scan(
    store: &dyn EventLog,
    since: u64,
    limit: usize,
    filter: &Filter,
    max_examined: usize,
) -> Result<Scanned, QueryError> {
    let mut out = Scanned { events: Vec::new(), through: since, examined: 0, at_end: false };
    while out.events.len() < limit && out.examined < max_examined {
        let want = SCAN_BATCH.min(max_examined - out.examined);
        let batch = store.events_since(out.through, want)?;
        let n = batch.len();
        for e in batch {
            out.through = e.id;
            out.examined += 1;
            if filter.matches(&e) {
                out.events.push(e);
                if out.events.len() >= limit {
                    break;
                }
            }
        }
        if n < want {
            out.at_end = true;
            break;
        }
    }
    Ok(out)
}

/// Scans, and with `wait` holds the request until a matching event exists or time is up. One
/// store call examines at most [`SCAN_PER_CALL`] events and a request at most [`MAX_SCAN`]
/// before it answers with what it found and the cursor to continue from; a request that waits
/// takes one of the [`crate::api_limits::MAX_HELD`] places (unless the caller `holds_place`,
/// as an event stream does for its whole life).
async fn scan_wait(
    state: &ApiState,
    since: u64,
    limit: usize,
    filter: &Filter,
    wait: Duration,
    holds_place: bool,
) -> Result<(Vec<Event>, u64), Response> {
    let mut place = None;
    let deadline = tokio::time::Instant::now() + wait;
    let mut cursor = since;
    let mut rx = state.last_event.clone();
    let mut examined = 0;
    loop {
        rx.borrow_and_update();
        let f = filter.clone();
        let found = state
            .with_events(move |s| scan(s, cursor, limit, &f, SCAN_PER_CALL))
            .await
            .map_err(crate::api_limits::failed)?;
        cursor = found.through;
        examined += found.examined;
        if !found.events.is_empty() {
            return Ok((found.events, cursor));
        }
        if !found.at_end && examined < MAX_SCAN {
            continue;
        }
        if tokio::time::Instant::now() >= deadline || !found.at_end {
            return Ok((found.events, cursor));
        }
        if !holds_place && place.is_none() {
            place = Some(state.held.hold(filter.regexes())?);
        }
        examined = 0;
        if *rx.borrow() <= cursor {
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|last| *last > cursor)).await;
        }
    }
}

/// `GET /api/v1/events` with a filter (called by [`crate::api`]'s handler).
pub async fn filtered_events(
    state: ApiState,
    filter: Option<&str>,
    since: u64,
    limit: usize,
    wait: Duration,
) -> Response {
    let filter = match parse_filter(filter) {
        Ok(f) => f,
        Err(r) => return bad_request(r),
    };
    match scan_wait(&state, since, limit, &filter, wait, false).await {
        Ok((events, through)) => {
            let events: Vec<assim_api::Event> = events.into_iter().map(Into::into).collect();
            ([("x-assim-cursor", through.to_string())], Json(events)).into_response()
        }
        Err(answer) => answer,
    }
}

/// Query of the SSE stream.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    pub filter: Option<String>,
    pub since: Option<u64>,
}

impl ApiState {
    /// Connects the event streams to the CMA task's live fan-out (see [`stream`]).
    pub fn with_fanout(mut self, fanout: assim_bus::Fanout) -> ApiState {
        self.fanout = Some(fanout);
        self
    }
}

/// One SSE event from an event's shared JSON.
fn sse_event(id: u64, kind: &str, json: &[u8]) -> sse::Event {
    let data = std::str::from_utf8(json).expect("serde_json writes UTF-8");
    sse::Event::default().id(id.to_string()).event(kind).data(data)
}

/// One SSE event from an event read from the log, encoded as the fan-out encodes it.
fn logged_event(e: Event) -> sse::Event {
    let p = assim_bus::fanout::Prepared::new(e);
    sse_event(p.event().id, p.event().kind.name(), p.json())
}

/// `GET /api/v1/events/stream`.
///
/// With the CMA task's fan-out ([`ApiState::with_fanout`]) the stream first subscribes, then
/// catches up from the log from its position to the end, then takes the live deliveries,
/// skipping what the catch-up already sent (ids at or below its cursor). The CMA publishes a
/// batch only after storing it, so a batch is either in the log when the catch-up reads it or
/// published after the subscription: none is missed. A subscriber that falls more than the
/// fan-out's queue behind is told so and reads the gap from the log. Each event's JSON is made
/// once for all streams. Without the fan-out the stream polls the log after each stored batch.
async fn stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Response {
    let filter = match parse_filter(q.filter.as_deref()) {
        Ok(f) => f,
        Err(r) => return bad_request(r),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let since = match resume.or(q.since) {
        Some(s) => s,
        // No position: from now on.
        None => *state.last_event.borrow(),
    };
    // The stream holds one of the API's places for held requests for as long as it is open.
    let held = match state.held.hold(filter.regexes()) {
        Ok(p) => p,
        Err(busy) => return busy.into_response(),
    };
    let live = state.fanout.as_ref().map(|f| f.subscribe(&filter));
    let init = StreamState {
        state,
        filter,
        cursor: since,
        queue: std::collections::VecDeque::new(),
        live,
        caught_up: false,
        lagged_to: None,
        _held: held,
    };
    let s = futures_util::stream::unfold(init, |mut st| async move {
        loop {
            if let Some(ev) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(ev), st));
            }
            st.refill().await;
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// An open event stream: its position, the SSE events ready to send, its live subscription.
struct StreamState {
    state: ApiState,
    filter: Filter,
    /// The id of the last event examined (sent or filtered out).
    cursor: u64,
    queue: std::collections::VecDeque<sse::Event>,
    live: Option<assim_bus::fanout::Subscriber>,
    /// The catch-up from the log reached its end once (live deliveries are used from then on).
    caught_up: bool,
    /// The live subscription lagged: the events up to this id are read from the log first.
    lagged_to: Option<u64>,
    _held: tokio::sync::OwnedSemaphorePermit,
}

impl StreamState {
    /// Queues the next events, waiting for some: from the log until caught up or while a lag
    /// is being read, then from the live subscription.
    async fn refill(&mut self) {
        if self.live.is_none() {
            // No fan-out: wait on the log for the next matching events.
            let wait = Duration::from_secs(30);
            match scan_wait(&self.state, self.cursor, 500, &self.filter, wait, true).await {
                Ok((events, through)) => {
                    self.cursor = through;
                    self.queue.extend(events.into_iter().map(logged_event));
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            return;
        }
        if !self.caught_up {
            self.caught_up = self.read_log(None).await;
            return;
        }
        if let Some(upto) = self.lagged_to {
            let at_end = self.read_log(Some(upto)).await;
            if at_end || self.cursor >= upto {
                self.lagged_to = None;
            }
            return;
        }
        let next = self.live.as_ref().expect("checked").next().await;
        match next {
            assim_bus::fanout::Next::Events(d) => {
                for p in d.events() {
                    let e = p.event();
                    if e.id > self.cursor {
                        self.queue.push_back(sse_event(e.id, e.kind.name(), p.json()));
                    }
                }
                self.cursor = self.cursor.max(d.through);
            }
            assim_bus::fanout::Next::Lagged { through } => self.lagged_to = Some(through),
            // The CMA task ended: follow the log.
            assim_bus::fanout::Next::Closed => self.live = None,
        }
    }

    /// Reads one store call's worth of matching events after the cursor from the log (none
    /// after `upto`) without waiting; true when it reached the log's end.
    async fn read_log(&mut self, upto: Option<u64>) -> bool {
        let (f, cursor) = (self.filter.clone(), self.cursor);
        let found = self.state.with_events(move |s| scan(s, cursor, 500, &f, SCAN_PER_CALL)).await;
        let found = match found {
            Ok(found) => found,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return false;
            }
        };
        let limit = upto.unwrap_or(u64::MAX);
        let events = found.events.into_iter().take_while(|e| e.id <= limit);
        self.queue.extend(events.map(logged_event));
        self.cursor = self.cursor.max(found.through.min(limit));
        found.at_end
    }
}

/// Where a new subscription starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Start {
    /// "now" (after the newest event) or "beginning" (the oldest kept event).
    Word(String),
    /// After this event id.
    After(u64),
    #[default]
    #[serde(skip)]
    Now,
}

/// Body of `PUT /api/v1/subscriptions/NAME`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSubscription {
    #[serde(default)]
    pub filter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
}

/// A stored subscription as the API shows it.
fn view(r: SubscriptionRecord) -> SubscriptionView {
    SubscriptionView {
        sink: r.sink.as_deref().and_then(|s| serde_json::from_str(s).ok()).map(hide_secret),
        name: r.name,
        filter: r.filter,
        cursor: r.cursor,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn hide_secret(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut()
        && o.contains_key("secret")
    {
        o.insert("secret".into(), "(set)".into());
    }
    v
}

async fn put(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = assim_bus::valid_subscription_name(&name) {
        return bad_request(e);
    }
    let req: PutSubscription = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "the body is not a subscription ({e}); send {{\"filter\": \"…\", \"sink\": {{…}}, \"start\": \"now\"}}"
            ));
        }
    };
    if let Err(r) = parse_filter(Some(&req.filter)) {
        return bad_request(r);
    }
    if let Some(s) = &req.sink
        && let Err(e) = s.validate()
    {
        return bad_request(format!("sink: {e}"));
    }
    if let Some(s) = &req.sink
        && !s.kind.api_may_create()
    {
        return bad_request(format!(
            "sink: a {} sink acts on the CMA host itself, so it is set only in the CMA's config \
             file ([[bus.sinks]]), not through the API",
            s.kind_name()
        ));
    }
    state
        .with_events(move |store| Ok(put_answer(store, &name, &req)))
        .await
        .unwrap_or_else(internal)
}

fn put_answer(store: &mut dyn EventLog, name: &str, req: &PutSubscription) -> Response {
    let last = match store.last_event_id() {
        Ok(l) => l,
        Err(e) => return crate::api_limits::failed(e),
    };
    let start = match req.start.clone().unwrap_or_default() {
        Start::Now => last,
        Start::After(id) => id.min(last),
        Start::Word(w) if w == "now" => last,
        Start::Word(w) if w == "beginning" => 0,
        Start::Word(w) => {
            return bad_request(format!(
                "start {w:?} is not valid: use \"now\", \"beginning\" or an event id"
            ));
        }
    };
    let sink = req.sink.as_ref().map(|s| serde_json::to_string(s).expect("sink serializes"));
    let existed = matches!(store.subscription(name), Ok(Some(_)));
    match store.put_subscription(name, &req.filter, sink.as_deref(), start, Timestamp::now()) {
        Ok(rec) => {
            let code = if existed { StatusCode::OK } else { StatusCode::CREATED };
            (code, Json(view(rec))).into_response()
        }
        Err(e) => crate::api_limits::failed(e),
    }
}

async fn list(State(state): State<ApiState>) -> Response {
    match state.with_events(|s| s.subscriptions()).await {
        Ok(l) => Json(l.into_iter().map(view).collect::<Vec<_>>()).into_response(),
        Err(e) => crate::api_limits::failed(e),
    }
}

async fn show(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let n = name.clone();
    match state.with_events(move |s| s.subscription(&n)).await {
        Ok(Some(r)) => Json(view(r)).into_response(),
        Ok(None) => not_found(&name),
        Err(e) => crate::api_limits::failed(e),
    }
}

async fn delete(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let n = name.clone();
    match state.with_events(move |s| s.delete_subscription(&n)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&name),
        Err(e) => crate::api_limits::failed(e),
    }
}

/// Query of `GET /api/v1/subscriptions/NAME/events`.
#[derive(Debug, Deserialize)]
pub struct SubEventsQuery {
    pub limit: Option<usize>,
    pub wait: Option<u64>,
}

async fn sub_events(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<SubEventsQuery>,
) -> Response {
    let n = name.clone();
    let rec = match state.with_events(move |s| s.subscription(&n)).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&name),
        Err(e) => return crate::api_limits::failed(e),
    };
    let filter = match Filter::parse(&rec.filter) {
        Ok(f) => f,
        Err(e) => return internal(format!("the stored filter of {name} is not valid: {e}")),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT));
    match scan_wait(&state, rec.cursor, limit, &filter, wait, false).await {
        Ok((events, through)) => {
            let events = events.into_iter().map(Into::into).collect();
            Json(SubscriptionBatch { cursor: rec.cursor, through, events }).into_response()
        }
        Err(answer) => answer,
    }
}

async fn ack(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let req: AckBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!("the body is not an ack ({e}); send {{\"through\": ID}}"));
        }
    };
    state
        .with_events(move |store| Ok(ack_answer(store, &name, &req)))
        .await
        .unwrap_or_else(internal)
}

fn ack_answer(store: &mut dyn EventLog, name: &str, req: &AckBody) -> Response {
    match store.last_event_id() {
        Ok(last) if req.through > last => {
            return bad_request(format!(
                "event {} does not exist yet (the newest is {last}); acknowledge only events you received",
                req.through
            ));
        }
        Ok(_) => {}
        Err(e) => return crate::api_limits::failed(e),
    }
    match store.ack_subscription(name, req.through, Timestamp::now()) {
        Ok(Some(cursor)) => Json(serde_json::json!({ "cursor": cursor })).into_response(),
        Ok(None) => not_found(name),
        Err(e) => crate::api_limits::failed(e),
    }
}

async fn dead_letters(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.with_events(move |s| s.dead_letters(&name, 1000)).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => crate::api_limits::failed(e),
    }
}
