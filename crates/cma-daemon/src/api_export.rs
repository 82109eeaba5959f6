//! The export routes of the HTTP API (issue 17), behind the same guard as every route
//! ([`crate::api_access`]: Host header, and a token for reads when one is configured), so hosts
//! can fetch them (`curl -o /etc/ssh/ssh_known_hosts …`):
//!
//! - `GET /api/v1/export/inventory`: the rows every export is made from, JSON
//!   (`assim_api::InventoryHost`); `assim export nagios|icinga2` render them.
//! - `GET /api/v1/export/known-hosts?hashed=true`: an `ssh_known_hosts` file — every name and
//!   address of each host, one line per key; hashed names with `hashed=true`.
//! - `GET /api/v1/export/sshfp`: DNS SSHFP records (zone file lines).
//! - `GET /api/v1/export/prometheus-sd`: Prometheus HTTP SD — the exporters discovery found
//!   listening, labelled host, node, exporter, os, switch, subnet (`assim_export::prometheus`,
//!   with the CMA's `[[exporters]]` rules). Prometheus sends the API token with its
//!   `http_sd_configs` `authorization` block when reads need one.
//!
//! The rows come from one read of the store ([`inventory`]); `assim-export` renders them. Hashed
//! names get 20 random bytes of salt each, as `ssh-keygen -H` does.

use assim_export::Inventory;
use assim_store::{Queries, QueryError};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::ApiState;

/// The export routes (merged into the protected part of [`crate::api::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/export/inventory", get(inventory_route))
        .route("/api/v1/export/known-hosts", get(known_hosts))
        .route("/api/v1/export/sshfp", get(sshfp))
        .route("/api/v1/export/prometheus-sd", get(prometheus_sd))
}

impl ApiState {
    /// The API with these exporter rules (validated by the caller:
    /// `assim_export::prometheus::rules_with`).
    pub fn with_exporter_rules(
        mut self,
        rules: Vec<assim_export::prometheus::ExporterRule>,
    ) -> ApiState {
        self.exporter_rules = std::sync::Arc::new(rules);
        self
    }
}

async fn prometheus_sd(State(state): State<ApiState>) -> Response {
    let rules = state.exporter_rules.clone();
    match state.read(inventory).await {
        Ok(inv) => Json(assim_export::prometheus::http_sd(&inv.hosts, &rules)).into_response(),
        Err(e) => crate::api_limits::failed(e),
    }
}

/// Everything the exports need, in one read of the store.
pub fn inventory(q: &dyn Queries) -> Result<Inventory, QueryError> {
    Ok(assim_export::inventory(assim_export::Sources {
        nodes: q.nodes()?,
        discovery: q.latest_discovery(&assim_export::inventory::COLLECTORS)?,
        ports: q.switch_ports(None)?,
        services: q.services(None, None)?,
    }))
}

async fn inventory_route(State(state): State<ApiState>) -> Response {
    match state.read(inventory).await {
        Ok(inv) => Json(inv.hosts).into_response(),
        Err(e) => crate::api_limits::failed(e),
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Query of `/api/v1/export/known-hosts`.
#[derive(Debug, Deserialize)]
pub struct KnownHostsQuery {
    #[serde(default)]
    pub hashed: bool,
}

async fn known_hosts(State(state): State<ApiState>, Query(q): Query<KnownHostsQuery>) -> Response {
    let inv = match state.read(inventory).await {
        Ok(inv) => inv,
        Err(e) => return crate::api_limits::failed(e),
    };
    let mut salt = || rand::random::<[u8; 20]>();
    let salt: Option<&mut dyn FnMut() -> [u8; 20]> = if q.hashed { Some(&mut salt) } else { None };
    text(assim_export::known_hosts(&inv.hosts, salt))
}

async fn sshfp(State(state): State<ApiState>) -> Response {
    match state.read(inventory).await {
        Ok(inv) => text(assim_export::sshfp(&inv.hosts)),
        Err(e) => crate::api_limits::failed(e),
    }
}
