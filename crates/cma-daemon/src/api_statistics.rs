//! `GET /api/v1/statistics/prometheus` (issue 17 item 5): the latest statistics value of every
//! series of every host in the Prometheus text format (0.0.4), as
//! `assim_stat_<name>{host="…",<tags>}` — counters as `…_total` — kept and named by
//! `assim_cma::statistics::Latest` (bounded, stale series dropped). Behind the same guard as
//! `/metrics`: when the API has a token (`--api-token`), Prometheus sends it
//! (`authorization: { credentials_file: … }` in its scrape config).

use std::sync::{Arc, Mutex};

use assim_cma::statistics::Latest;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::ApiState;

/// The latest values: written by the CMA task, read by the API.
pub type SharedLatest = Arc<Mutex<Latest>>;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/statistics/prometheus", get(prometheus))
}

impl ApiState {
    /// The same API exposing `latest` (the CMA task's).
    pub fn with_statistics(mut self, latest: SharedLatest) -> ApiState {
        self.statistics = latest;
        self
    }
}

async fn prometheus(State(state): State<ApiState>) -> Response {
    let now_s = assim_wire::Timestamp::now().micros() / 1_000_000;
    let body = state.statistics.lock().expect("statistics lock").render(now_s);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
