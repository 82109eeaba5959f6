//! The service-monitoring routes of the CMA's HTTP API.
//!
//! - `GET /api/v1/services?host=H&state=S`: every configured check with its last HARD state
//!   (`pending` before the first report), optionally for one host (name or node id) and one state.
//! - `POST /api/v1/checks/run` with `{"host": H, "check": C}`: asks the host's nanoprobe to run
//!   the check now and answers with its result `{host, check, state, output, long_output,
//!   perfdata, duration_ms, exit_code}`. The request goes to the CMA task over a channel; the
//!   answer comes back when the nanoprobe replies, or the route answers 504 after the timeout.
//!   The web page's "Run now" button goes through the same function ([`run_now`]).
//! - `GET /api/v1/checks?host=H`: the desired check sets, each check with its `source`
//!   (`rule:NAME`, `host`, `config` or `manual`) and its set's epoch, plus the checks local
//!   programs declared on each host (source `local`, epoch 0; from its `local_checks` result).
//! - `POST /api/v1/checks` with `{"host": H, "check": {name, kind, argv, params, interval_s,
//!   retry_interval_s, max_attempts, timeout_s}}`: adds (or replaces) a hand-set check; answers
//!   its list entry. 404 names an unknown host, 400 gives the reason an invalid check is refused
//!   (a program outside the CMA's `check_plugin_dirs` among them, see [`crate::api_access`]).
//! - `DELETE /api/v1/checks` with `{"host": H, "name": N}`: removes a hand-set check; answers
//!   `{"host", "name", "epoch"}` (the node's new set epoch).
//!
//! All of these go to the CMA task over one channel ([`ChecksRequest`]).

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::ApiState;
use assim_api::StoredCheck;

use crate::cma::checks_cma::{ChecksError, ChecksRequest, RunRequest, RunSender};

/// How long `checks/run` waits for the nanoprobe (a check's own timeout is at most this minus a
/// margin for delivery).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(75);

impl ApiState {
    /// Connects `checks/run` to the CMA task.
    pub fn with_check_runner(mut self, tx: RunSender) -> ApiState {
        self.check_runner = Some(tx);
        self
    }
}

/// The routes, merged into the API's protected router.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/checks/run", post(run))
        .route("/api/v1/checks", get(list).post(add))
        .route("/api/v1/checks", delete(remove))
}

/// Query of `/api/v1/services`.
#[derive(Debug, Deserialize)]
pub struct ServicesQuery {
    pub host: Option<String>,
    pub state: Option<String>,
}

const STATES: [&str; 5] = ["ok", "warning", "critical", "unknown", "pending"];

async fn services(State(state): State<ApiState>, Query(q): Query<ServicesQuery>) -> Response {
    if let Some(s) = &q.state
        && !STATES.contains(&s.to_ascii_lowercase().as_str())
    {
        return (
            StatusCode::BAD_REQUEST,
            format!("state {s:?} is not one of {}\n", STATES.join(", ")),
        )
            .into_response();
    }
    let list = state.read(move |s| s.services(q.host.as_deref(), q.state.as_deref())).await;
    match list {
        Ok(list) => Json(list).into_response(),
        Err(e) => crate::api_limits::failed(e),
    }
}

/// Body of `POST /api/v1/checks/run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunBody {
    pub host: String,
    pub check: String,
}

async fn run(State(state): State<ApiState>, Json(body): Json<RunBody>) -> Response {
    match run_now(&state, body.host, body.check).await {
        Ok(v) => Json(v).into_response(),
        Err((status, text)) => (status, format!("{text}\n")).into_response(),
    }
}

/// Runs a check now: the one code path behind the API's `POST /api/v1/checks/run` and the web
/// page's "Run now". Asks the CMA task, waits at most [`RUN_TIMEOUT`] for the nanoprobe, and
/// answers its result with `host` and `check` added, or the status and text of the failure.
pub(crate) async fn run_now(
    state: &ApiState,
    host: String,
    check: String,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let Some(tx) = state.check_runner.clone() else {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "this API is not connected to a CMA".into()));
    };
    let (reply, rx) = tokio::sync::oneshot::channel();
    let req = ChecksRequest::Run(RunRequest { host: host.clone(), check: check.clone(), reply });
    if tx.send(req).await.is_err() {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "the CMA is stopping".into()));
    }
    match tokio::time::timeout(RUN_TIMEOUT, rx).await {
        Ok(Ok(Ok(mut v))) => {
            if let Some(o) = v.as_object_mut() {
                o.insert("host".into(), host.into());
                o.insert("check".into(), check.into());
            }
            Ok(v)
        }
        Ok(Ok(Err(e))) => Err((StatusCode::NOT_FOUND, e)),
        Ok(Err(_)) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the CMA dropped the request (restarting?)".into(),
        )),
        Err(_) => Err((
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "host {host} did not answer within {} s: is its nanoprobe running and reachable? \
                 (`assim status`)",
                RUN_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Query of `GET /api/v1/checks`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub host: Option<String>,
}

/// Body of `POST /api/v1/checks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddBody {
    pub host: String,
    pub check: StoredCheck,
}

/// Body of `DELETE /api/v1/checks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoveBody {
    pub host: String,
    pub name: String,
}

/// Sends a request to the CMA task and waits for its answer.
async fn ask<T: Serialize>(
    state: &ApiState,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, ChecksError>>) -> ChecksRequest,
) -> Response {
    let Some(tx) = state.check_runner.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "this API is not connected to a CMA\n")
            .into_response();
    };
    let (reply, rx) = tokio::sync::oneshot::channel();
    if tx.send(make(reply)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the CMA is stopping\n").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(v))) => Json(v).into_response(),
        Ok(Ok(Err(ChecksError::NotFound(e)))) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Ok(Ok(Err(ChecksError::Invalid(e)))) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Ok(Err(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "the CMA dropped the request (restarting?)\n")
                .into_response()
        }
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "the CMA task did not answer within 10 s\n")
            .into_response(),
    }
}

async fn list(State(state): State<ApiState>, Query(q): Query<ListQuery>) -> Response {
    ask(&state, |reply| ChecksRequest::List { host: q.host, reply }).await
}

async fn add(State(state): State<ApiState>, Json(body): Json<AddBody>) -> Response {
    if let Err(e) = state.access.check_program(&body.check) {
        return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
    }
    ask(&state, |reply| ChecksRequest::Add { host: body.host, check: body.check, reply }).await
}

async fn remove(State(state): State<ApiState>, Json(body): Json<RemoveBody>) -> Response {
    ask(&state, |reply| ChecksRequest::Remove { host: body.host, name: body.name, reply }).await
}
