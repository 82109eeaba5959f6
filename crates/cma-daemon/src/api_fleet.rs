//! The fleet routes of the HTTP API (issue 19 item 5), behind the same guard as every route:
//!
//! - `GET /api/v1/fleet/keys[?shared=true]`: every SSH host key and the hosts presenting it
//!   (`assim keys`).
//! - `GET /api/v1/fleet/processes[?exe=GLOB]`: processes that own sockets, per host
//!   (`assim processes --exe`).
//! - `GET /api/v1/fleet/os[?os=GLOB&kernel=GLOB]`: hosts by OS and kernel (`assim os`).
//! - `GET /api/v1/fleet/macs[?status=unknown,unexpected&expect=GLOB,GLOB]`: MAC addresses on
//!   NICs and in neighbour tables with their IEEE vendor (`assim macs`); the registry is read
//!   from `[fleet] oui_dir` on first use.
//! - `GET /api/v1/fleet/addresses[?missing=true]`: every host address and its reverse DNS name
//!   (`assim addresses`); off with `[fleet] reverse_dns = false`.
//! - `GET /api/v1/export/dot[?host=H&depth=N]`: a Graphviz picture (`assim export dot`).
//!
//! The answers are computed from one read of the latest discovery results
//! (`assim_export::fleet`); nothing new is stored.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use assim_api::AddressName;
use assim_export::fleet::{self, MacFilter};
use assim_export::oui::Registry;
use assim_util::glob::Glob;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::ApiState;
use crate::reverse_dns::Resolver;

/// The `[fleet]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Where the IEEE MAC registry is (Debian `ieee-data`).
    pub oui_dir: PathBuf,
    /// Whether the CMA does reverse DNS lookups of host addresses (`assim addresses`).
    pub reverse_dns: bool,
    /// The DNS servers asked; empty: `/etc/resolv.conf`'s.
    pub dns_servers: Vec<SocketAddr>,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            oui_dir: assim_export::oui::DEFAULT_DIR.into(),
            reverse_dns: true,
            dns_servers: Vec::new(),
        }
    }
}

/// What the fleet routes keep between requests.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    registry: Mutex<Option<Arc<Registry>>>,
    resolver: Resolver,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Fleet {
        let servers = if config.dns_servers.is_empty() {
            crate::reverse_dns::resolv_conf_servers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            )
        } else {
            config.dns_servers.clone()
        };
        Fleet { resolver: Resolver::new(servers), registry: Mutex::new(None), config }
    }

    /// The MAC registry, read on first use (a failure is not remembered: installing
    /// `ieee-data` later works without a restart).
    fn registry(&self) -> Result<Arc<Registry>, String> {
        let mut slot = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        let r = Arc::new(Registry::load(&self.config.oui_dir).map_err(|e| e.to_string())?);
        *slot = Some(r.clone());
        Ok(r)
    }
}

/// The fleet routes (merged into the protected part of [`crate::api::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/fleet/keys", get(keys))
        .route("/api/v1/fleet/processes", get(processes))
        .route("/api/v1/fleet/os", get(os))
        .route("/api/v1/fleet/macs", get(macs))
        .route("/api/v1/fleet/addresses", get(addresses))
        .route("/api/v1/export/dot", get(dot))
}

fn bad(why: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", why.into())).into_response()
}

/// A comma-separated list of globs (empty items ignored), at most 64.
fn globs(text: Option<&str>) -> Result<Vec<Glob>, String> {
    let items: Vec<Glob> = text
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Glob::new)
        .collect();
    if items.len() > 64 || items.iter().any(|g| g.as_str().len() > 256) {
        return Err("at most 64 patterns of at most 256 characters".into());
    }
    Ok(items)
}

fn one_glob(text: Option<&str>) -> Result<Option<Glob>, String> {
    Ok(globs(text)?.into_iter().next())
}

#[derive(Debug, Deserialize)]
struct KeysQuery {
    #[serde(default)]
    shared: bool,
}

async fn keys(State(state): State<ApiState>, Query(q): Query<KeysQuery>) -> Response {
    crate::api_topology::answer(
        state
            .read(crate::api_export::inventory)
            .await
            .map(|inv| fleet::key_uses(&inv.hosts, q.shared)),
    )
}

#[derive(Debug, Deserialize)]
struct ProcessesQuery {
    exe: Option<String>,
}

async fn processes(State(state): State<ApiState>, Query(q): Query<ProcessesQuery>) -> Response {
    let exe = match one_glob(q.exe.as_deref()) {
        Ok(g) => g,
        Err(why) => return bad(why),
    };
    let read = state
        .read(move |q| {
            let nodes = q.nodes()?;
            let docs = q.latest_discovery(&["sockets"])?;
            Ok(fleet::processes(&nodes, &docs, exe.as_ref()))
        })
        .await;
    crate::api_topology::answer(read)
}

#[derive(Debug, Deserialize)]
struct OsQuery {
    os: Option<String>,
    kernel: Option<String>,
}

async fn os(State(state): State<ApiState>, Query(q): Query<OsQuery>) -> Response {
    let (os, kernel) = match (one_glob(q.os.as_deref()), one_glob(q.kernel.as_deref())) {
        (Ok(o), Ok(k)) => (o, k),
        (Err(why), _) | (_, Err(why)) => return bad(why),
    };
    let read = state
        .read(move |q| {
            let nodes = q.nodes()?;
            let docs = q.latest_discovery(&["os"])?;
            Ok(fleet::os_rows(&nodes, &docs, os.as_ref(), kernel.as_ref()))
        })
        .await;
    crate::api_topology::answer(read)
}

/// The statuses `?status=` accepts.
const MAC_STATUSES: [&str; 5] = ["unknown", "unexpected", "local", "known", "multicast"];

#[derive(Debug, Deserialize)]
struct MacsQuery {
    status: Option<String>,
    expect: Option<String>,
}

async fn macs(State(state): State<ApiState>, Query(q): Query<MacsQuery>) -> Response {
    let expect = match globs(q.expect.as_deref()) {
        Ok(g) => g,
        Err(why) => return bad(why),
    };
    let status: Vec<String> = q
        .status
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(s) = status.iter().find(|s| !MAC_STATUSES.contains(&s.as_str())) {
        return bad(format!("unknown MAC status {s:?} (use {})", MAC_STATUSES.join(", ")));
    }
    let fleet = state.fleet.clone();
    let registry = match tokio::task::spawn_blocking(move || fleet.registry()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let filter = MacFilter { expect, status };
    let read = state
        .read(move |q| {
            let nodes = q.nodes()?;
            let docs = q.latest_discovery(&["interfaces", "neighbours"])?;
            Ok(fleet::mac_rows(&nodes, &docs, &registry, &filter))
        })
        .await;
    crate::api_topology::answer(read)
}

#[derive(Debug, Deserialize)]
struct AddressesQuery {
    #[serde(default)]
    missing: bool,
}

/// The most addresses one request looks up.
pub const MAX_ADDRESSES: usize = 20_000;

async fn addresses(State(state): State<ApiState>, Query(q): Query<AddressesQuery>) -> Response {
    if !state.fleet.config.reverse_dns {
        return (
            StatusCode::CONFLICT,
            "reverse DNS lookups are off on this CMA ([fleet] reverse_dns = false, or \
             --no-reverse-dns)\n",
        )
            .into_response();
    }
    let inv = match state.read(crate::api_export::inventory).await {
        Ok(inv) => inv,
        Err(e) => return crate::api_limits::failed(e),
    };
    let mut rows: Vec<(IpAddr, &str, &str)> = Vec::new();
    for h in &inv.hosts {
        for a in &h.addresses {
            if let Ok(ip) = a.parse::<IpAddr>() {
                rows.push((ip, &h.host, &h.node));
            }
        }
    }
    if rows.len() > MAX_ADDRESSES {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} addresses; at most {MAX_ADDRESSES} are looked up at once\n", rows.len()),
        )
            .into_response();
    }
    let ips: Vec<IpAddr> = rows.iter().map(|r| r.0).collect::<BTreeSet<_>>().into_iter().collect();
    let names = state.fleet.resolver.lookup_all(&ips).await;
    let out: Vec<AddressName> = rows
        .into_iter()
        .map(|(ip, host, node)| {
            let l = names.get(&ip).cloned().unwrap_or(crate::reverse_dns::Lookup::NoAnswer);
            AddressName {
                address: ip.to_string(),
                host: host.to_string(),
                node: node.to_string(),
                lookup: l.word(),
                name: match l {
                    crate::reverse_dns::Lookup::Name(n) => Some(n),
                    _ => None,
                },
            }
        })
        .filter(|r| !q.missing || r.name.is_none())
        .collect();
    Json(out).into_response()
}

#[derive(Debug, Deserialize)]
struct DotQuery {
    host: Option<String>,
    depth: Option<usize>,
}

async fn dot(State(state): State<ApiState>, Query(q): Query<DotQuery>) -> Response {
    if q.depth.is_some_and(|d| d > 16) {
        return bad("depth is at most 16");
    }
    let read = state.read(|q| Ok((crate::api_export::inventory(q)?, q.all_dependencies()?))).await;
    let (inv, deps) = match read {
        Ok(r) => r,
        Err(e) => return crate::api_limits::failed(e),
    };
    let opts = assim_export::dot::DotOptions { focus: q.host, depth: q.depth };
    match assim_export::dot::dot(&inv.hosts, &deps, &opts) {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")], text).into_response()
        }
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}
