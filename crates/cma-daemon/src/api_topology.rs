//! The topology routes of the HTTP API: canned queries over the graph the store derives from
//! discovery results, read through the `assim_store::Queries` seam. Every answer is a JSON array
//! of `assim_api::topology` rows.
//!
//! - `GET /api/v1/topology/hosts?state=down|crashed|unreachable`: hosts not running (`down` =
//!   crashed or left; `crashed` = down without a goodbye) or cut off (`unreachable`: behind a
//!   switch that is down or unreachable).
//! - `GET /api/v1/topology/hosts/{host}/services`: a host's listening sockets.
//! - `GET /api/v1/topology/hosts/{host}/dependencies`: what the host depends on (client side).
//! - `GET /api/v1/topology/hosts/{host}/dependents`: who depends on the host (server side).
//! - `GET /api/v1/topology/hosts/{host}/ports`: the switch ports its NICs are wired to.
//! - `GET /api/v1/topology/hosts/{host}/history?limit=N`: changes of its part of the graph.
//! - `GET /api/v1/topology/ports`: switch ports of every host.
//! - `GET /api/v1/topology/dependencies`: every client → service edge.
//! - `GET /api/v1/topology/ip/{addr}`, `GET /api/v1/topology/mac/{mac}`: where it is.
//! - `GET /api/v1/topology/unmonitored`: services no check watches.
//! - `GET /api/v1/topology/packages?pattern=P&match=exact|prefix|regex`: which hosts have it.
//! - `GET /api/v1/topology/unknown-ips`: ARP entries that belong to no known host.
//! - `GET /api/v1/topology/subnets`, `GET /api/v1/topology/history?limit=N`.
//! - `GET /api/v1/topology/rings`: every ring, its members in order, representatives, watchers.
//! - `GET /api/v1/topology/switches`: every switch with the hosts behind it.
//! - `GET /api/v1/topology/switches/{switch}`: one switch, by chassis id or announced name.
//!
//! `{host}` is a host name or a node id, `{switch}` a chassis id or a switch name; an unknown
//! one is a 404 that names it.

use std::net::IpAddr;

use assim_store::{PackagePattern, Queries, QueryError, normalize_mac};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::ApiState;

/// The topology routes (merged into the protected part of [`crate::api::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/topology/hosts", get(hosts))
        .route("/api/v1/topology/hosts/{host}/{what}", get(host_query))
        .route("/api/v1/topology/ports", get(all_ports))
        .route("/api/v1/topology/dependencies", get(all_dependencies))
        .route("/api/v1/topology/ip/{addr}", get(find_ip))
        .route("/api/v1/topology/mac/{mac}", get(find_mac))
        .route("/api/v1/topology/unmonitored", get(unmonitored))
        .route("/api/v1/topology/packages", get(packages))
        .route("/api/v1/topology/unknown-ips", get(unknown_ips))
        .route("/api/v1/topology/subnets", get(subnets))
        .route("/api/v1/topology/history", get(history))
        .route("/api/v1/topology/rings", get(rings))
        .route("/api/v1/topology/switches", get(switches))
        .route("/api/v1/topology/switches/{switch}", get(switch))
}

/// Longest package pattern accepted (a regex is compiled per request).
const MAX_PATTERN: usize = 256;

/// Longest switch name or chassis id accepted (LLDP bounds both to 255 bytes).
const MAX_SWITCH_NAME: usize = 255;

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

pub(crate) fn answer<T: Serialize>(r: Result<T, QueryError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => crate::api_limits::failed(e),
    }
}

/// Runs a query on a blocking thread and answers with its rows.
async fn with_store<T: Serialize + Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&dyn Queries) -> Result<T, QueryError> + Send + 'static,
) -> Response {
    answer(state.read(f).await)
}

pub(crate) fn unknown_host(host: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no host named {host:?}; `assim status` lists the known hosts\n"),
    )
        .into_response()
}

/// Query of `/api/v1/topology/hosts`.
#[derive(Debug, Deserialize)]
pub struct HostsQuery {
    /// `down` (crashed or left), `crashed` or `unreachable`.
    pub state: String,
}

async fn hosts(State(state): State<ApiState>, Query(q): Query<HostsQuery>) -> Response {
    let crashed = match q.state.as_str() {
        "down" => false,
        "crashed" => true,
        "unreachable" => return with_store(&state, |s| s.unreachable_hosts()).await,
        other => {
            return bad_request(format!(
                "state must be `down`, `crashed` or `unreachable`, not {other:?}"
            ));
        }
    };
    with_store(&state, move |s| s.down_hosts(crashed)).await
}

/// Query with an optional `limit`.
#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    pub limit: Option<usize>,
}

async fn host_query(
    State(state): State<ApiState>,
    Path((host, what)): Path<(String, String)>,
    Query(q): Query<LimitQuery>,
) -> Response {
    match state.read(move |store| host_answer(store, &host, &what, q.limit)).await {
        Ok(r) => r,
        Err(e) => crate::api_limits::failed(e),
    }
}

fn host_answer(
    store: &dyn Queries,
    host: &str,
    what: &str,
    limit: Option<usize>,
) -> Result<Response, QueryError> {
    let Some(node) = store.resolve_host(host)? else { return Ok(unknown_host(host)) };
    let id = node.node.as_str();
    Ok(match what {
        "services" => answer(store.host_services(id)),
        "dependencies" => answer(store.dependencies(id)),
        "dependents" => answer(store.dependents(id)),
        "ports" => answer(store.switch_ports(Some(id))),
        "history" => answer(store.topology_history(Some(id), limit.unwrap_or(100).min(10_000))),
        other => (
            StatusCode::NOT_FOUND,
            format!(
                "no host query {other:?}; use services, dependencies, dependents, ports or history\n"
            ),
        )
            .into_response(),
    })
}

async fn all_ports(State(state): State<ApiState>) -> Response {
    with_store(&state, |s| s.switch_ports(None)).await
}

async fn all_dependencies(State(state): State<ApiState>) -> Response {
    with_store(&state, |s| s.all_dependencies()).await
}

async fn find_ip(State(state): State<ApiState>, Path(addr): Path<String>) -> Response {
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return bad_request(format!(
            "{addr:?} is not an IP address (give one like 192.0.2.7 or 2001:db8::7)"
        ));
    };
    with_store(&state, move |s| s.find_ip(ip)).await
}

async fn find_mac(State(state): State<ApiState>, Path(mac): Path<String>) -> Response {
    let Some(mac) = normalize_mac(&mac) else {
        return bad_request(format!(
            "{mac:?} is not a MAC address (give six hex bytes, e.g. 02:42:ac:11:00:02)"
        ));
    };
    with_store(&state, move |s| s.find_mac(&mac)).await
}

async fn unmonitored(State(state): State<ApiState>) -> Response {
    with_store(&state, |s| s.unmonitored_services()).await
}

/// Query of `/api/v1/topology/packages`.
#[derive(Debug, Deserialize)]
pub struct PackagesQuery {
    pub pattern: String,
    /// `exact` (default), `prefix` or `regex`.
    #[serde(rename = "match")]
    pub mode: Option<String>,
}

async fn packages(State(state): State<ApiState>, Query(q): Query<PackagesQuery>) -> Response {
    if q.pattern.len() > MAX_PATTERN {
        return bad_request(format!("the pattern is longer than {MAX_PATTERN} bytes"));
    }
    match q.mode.as_deref().unwrap_or("exact") {
        "exact" => {
            with_store(&state, move |s| s.search_packages(PackagePattern::Exact(&q.pattern))).await
        }
        "prefix" => {
            with_store(&state, move |s| s.search_packages(PackagePattern::Prefix(&q.pattern))).await
        }
        "regex" => {
            let re = match regex::RegexBuilder::new(&q.pattern).size_limit(1 << 20).build() {
                Ok(re) => re,
                Err(e) => return bad_request(format!("invalid regular expression: {e}")),
            };
            with_store(&state, move |s| s.search_packages(PackagePattern::Regex(&re))).await
        }
        other => bad_request(format!("match must be exact, prefix or regex, not {other:?}")),
    }
}

async fn unknown_ips(State(state): State<ApiState>) -> Response {
    with_store(&state, |s| s.unknown_ips()).await
}

async fn subnets(State(state): State<ApiState>) -> Response {
    with_store(&state, |s| s.subnets()).await
}

async fn history(State(state): State<ApiState>, Query(q): Query<LimitQuery>) -> Response {
    with_store(&state, move |s| s.topology_history(None, q.limit.unwrap_or(100).min(10_000))).await
}

async fn rings(State(state): State<ApiState>) -> Response {
    with_store(&state, |s| s.rings()).await
}

async fn switches(State(state): State<ApiState>) -> Response {
    with_store(&state, |s| s.switches(None)).await
}

async fn switch(State(state): State<ApiState>, Path(switch): Path<String>) -> Response {
    if switch.is_empty() || switch.len() > MAX_SWITCH_NAME {
        return bad_request(format!(
            "a switch is named by its chassis id or name, 1 to {MAX_SWITCH_NAME} bytes"
        ));
    }
    let name = switch.clone();
    match state.read(move |s| s.switches(Some(&name))).await {
        Ok(rows) if rows.is_empty() => (
            StatusCode::NOT_FOUND,
            format!(
                "no switch named {switch:?}; `assim switches` lists the switches the hosts hear\n"
            ),
        )
            .into_response(),
        r => answer(r),
    }
}
