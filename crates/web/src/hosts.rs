//! The host table (`/hosts?q=…`: searchable on the server, and as you type with JavaScript) and
//! the host page (`/hosts/{host}`: state and its history, checks with their last output and
//! perfdata, listening services found by discovery, what it depends on and who depends on it,
//! NICs and the switch ports they are wired to, packages (searchable), SSH host keys, recent
//! discovery changes). Both re-render live.

use std::collections::HashMap;

use assim_api::{
    Dependency, DiscoveryView, HistoryEntry, NodeView, Service, ServiceView, SwitchPortLink,
};
use assim_cma::Event;
use assim_store::{EventLog, Queries, QueryError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use crate::WebSource;
use crate::layout::{self, Nav, Page, age, badge, host_link, time};
use crate::operator::Viewer;

/// Rows the host table shows at most (the rest are counted; narrow the search).
pub(crate) const MAX_ROWS: usize = 2000;
/// Longest search text accepted.
const MAX_QUERY: usize = 256;
/// Packages listed on a host page at most.
const MAX_PACKAGES: usize = 5000;
/// Events examined for a host's history, and shown.
const HISTORY_SCAN: usize = 5000;
const HISTORY_SHOWN: usize = 30;

/// Query of `/hosts`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TableQuery {
    #[serde(default)]
    q: String,
}

#[derive(Debug)]
struct TableData {
    nodes: Vec<NodeView>,
    /// Node id → "switch port" text.
    ports: HashMap<String, String>,
    /// Node id → (state → count).
    checks: HashMap<String, Vec<(String, usize)>>,
    /// The services query was too large to answer.
    checks_missing: bool,
    /// Node id → operating system (the `os` collector's `PRETTY_NAME`).
    os: HashMap<String, String>,
}

fn gather_table(q: &dyn Queries) -> Result<TableData, QueryError> {
    let nodes = q.nodes()?;
    let mut ports: HashMap<String, String> = HashMap::new();
    match q.switch_ports(None) {
        Ok(rows) => {
            for p in rows {
                let e = ports.entry(p.node).or_default();
                if !e.is_empty() {
                    e.push_str(", ");
                }
                e.push_str(&format!(
                    "{} → {} {}",
                    p.nic,
                    p.switch_name.as_deref().unwrap_or(&p.chassis_id),
                    p.port_id
                ));
            }
        }
        Err(QueryError::TooLarge) => {}
        Err(e) => return Err(e),
    }
    let (checks, checks_missing) = match q.services(None, None) {
        Ok(list) => {
            let mut by: HashMap<String, HashMap<String, usize>> = HashMap::new();
            for s in list {
                *by.entry(s.node.to_string()).or_default().entry(s.state).or_default() += 1;
            }
            let by = by
                .into_iter()
                .map(|(k, v)| {
                    let mut v: Vec<(String, usize)> = v.into_iter().collect();
                    v.sort_by_key(|(s, _)| state_rank(s));
                    (k, v)
                })
                .collect();
            (by, false)
        }
        Err(QueryError::TooLarge) => (HashMap::new(), true),
        Err(e) => return Err(e),
    };
    // One read for every host's OS (an engine answers it in one query).
    let os = match q.latest_discovery(&["os"]) {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|(node, d)| {
                let pretty = d.payload.get("os_release").map(|r| s(r, "PRETTY_NAME"))?;
                (!pretty.is_empty()).then_some((node, pretty))
            })
            .collect(),
        Err(QueryError::TooLarge) => HashMap::new(),
        Err(e) => return Err(e),
    };
    Ok(TableData { nodes, ports, checks, checks_missing, os })
}

/// Worst first.
fn state_rank(s: &str) -> u8 {
    match s {
        "critical" => 0,
        "warning" => 1,
        "unknown" => 2,
        "pending" => 3,
        _ => 4,
    }
}

/// `GET /hosts`.
pub(crate) async fn table<S: WebSource>(
    State(src): State<S>,
    req: Viewer,
    Query(tq): Query<TableQuery>,
) -> Response {
    let query: String = tq.q.chars().take(MAX_QUERY).collect::<String>().trim().to_lowercase();
    let data = match src.read(gather_table).await {
        Ok(d) => d,
        Err(e) => return layout::failed(&req, Nav::Hosts, e, src.cma()),
    };
    let body = render_table(&data, &query, src.now_micros());
    let page = Page { title: "Hosts".into(), nav: Nav::Hosts, live: Some(String::new()), body };
    layout::respond(&req, StatusCode::OK, page, src.cma())
}

fn render_table(d: &TableData, query: &str, now: u64) -> Markup {
    let row_text = |n: &NodeView| {
        let id = n.id.to_string();
        format!(
            "{} {} {} {} {} {} {}",
            n.hostname,
            n.state,
            d.os.get(&id).map(String::as_str).unwrap_or(""),
            n.addresses.join(" "),
            n.neighbours.join(" "),
            d.ports.get(&id).map(String::as_str).unwrap_or(""),
            n.version
        )
        .to_lowercase()
    };
    let matching: Vec<&NodeView> =
        d.nodes.iter().filter(|n| query.is_empty() || row_text(n).contains(query)).collect();
    html! {
        h1 { "Hosts" }
        form.search method="get" action="/hosts" role="search" {
            label for="q" { "Search" }
            input #q type="search" name="q" value=(query) placeholder="name, state, OS, address, switch…"
                data-filter-for="hosts" autocomplete="off";
            button type="submit" { "Search" }
        }
        p.summary #hosts-summary {
            (matching.len()) " of " (d.nodes.len()) " hosts"
            @if !query.is_empty() { " match" }
            "."
            @if matching.len() > MAX_ROWS { " Showing the first " (MAX_ROWS) "; narrow the search." }
            @if d.checks_missing { " Too many checks to summarise here; see each host." }
        }
        div.scroll {
            table.hosts #hosts {
                thead { tr {
                    th { "Host" } th { "State" } th { "Since" } th { "OS" } th { "Addresses" }
                    th { "Ring neighbours" } th { "Switch port" } th { "Checks" } th { "Version" }
                } }
                tbody {
                    @for n in matching.iter().take(MAX_ROWS) {
                        @let id = n.id.to_string();
                        tr.host data-host=(n.hostname) data-state=(n.state) {
                            td { (host_link(&n.hostname)) }
                            td { (badge(&n.state)) }
                            td { (time(n.since)) br; span.age { (age(now, n.since)) } }
                            td { (d.os.get(&id).map(String::as_str).unwrap_or("—")) }
                            td { (n.addresses.join(", ")) }
                            td { @for (i, nb) in n.neighbours.iter().enumerate() { @if i > 0 { ", " } (host_link(nb)) } }
                            td { (d.ports.get(&id).map(String::as_str).unwrap_or("—")) }
                            td {
                                @match d.checks.get(&id) {
                                    Some(list) => {
                                        @for (i, (s, c)) in list.iter().enumerate() {
                                            @if i > 0 { ", " }
                                            span class=(layout::state_class(s)) { (c) " " (s) }
                                        }
                                    }
                                    None => { span.muted { "—" } }
                                }
                            }
                            td { (n.version) }
                        }
                    }
                }
            }
        }
    }
}

/// Query of `/hosts/{host}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct HostQuery {
    /// Only packages whose name contains this.
    #[serde(default)]
    pkg: String,
}

#[derive(Debug)]
struct HostData {
    node: NodeView,
    checks: Vec<ServiceView>,
    services: Vec<Service>,
    dependencies: Vec<Dependency>,
    dependents: Vec<Dependency>,
    ports: Vec<SwitchPortLink>,
    discovery: Vec<DiscoveryView>,
    history: Vec<HistoryEntry>,
}

fn gather_host(q: &dyn Queries, name: &str) -> Result<Option<HostData>, QueryError> {
    let Some(host) = q.resolve_host(name)? else { return Ok(None) };
    let Some(node) = q.nodes()?.into_iter().find(|n| n.id.to_string() == host.node) else {
        return Ok(None);
    };
    let id = host.node.as_str();
    Ok(Some(HostData {
        checks: q.services(Some(id), None)?,
        services: q.host_services(id)?,
        dependencies: q.dependencies(id)?,
        dependents: q.dependents(id)?,
        ports: q.switch_ports(Some(id))?,
        discovery: q.discovery(node.id)?,
        history: q.topology_history(Some(id), 20)?,
        node,
    }))
}

/// The host's recent events (newest first), from the newest [`HISTORY_SCAN`] events.
fn host_events(log: &dyn EventLog, host: &str) -> Result<Vec<Event>, QueryError> {
    let last = log.last_event_id()?;
    let mut list: Vec<Event> = log
        .events_since(last.saturating_sub(HISTORY_SCAN as u64), HISTORY_SCAN)?
        .into_iter()
        .filter(|e| e.hostname == host)
        .collect();
    list.reverse();
    list.truncate(HISTORY_SHOWN);
    Ok(list)
}

/// `GET /hosts/{host}`.
pub(crate) async fn page<S: WebSource>(
    State(src): State<S>,
    req: Viewer,
    Path(name): Path<String>,
    Query(hq): Query<HostQuery>,
) -> Response {
    if name.is_empty() || name.len() > 255 {
        let body = html! { h1 { "No such host" } p { "A host is named by its host name or node id (1 to 255 bytes)." } };
        let page = Page { title: "No such host".into(), nav: Nav::Hosts, live: None, body };
        return layout::respond(&req, StatusCode::BAD_REQUEST, page, src.cma());
    }
    let lookup = name.clone();
    let data = match src.read(move |q| gather_host(q, &lookup)).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let body = html! {
                h1 { "No such host" }
                p { "No host is named " code { (name) } ". " a href="/hosts" { "All hosts" } }
            };
            let page = Page { title: "No such host".into(), nav: Nav::Hosts, live: None, body };
            return layout::respond(&req, StatusCode::NOT_FOUND, page, src.cma());
        }
        Err(e) => return layout::failed(&req, Nav::Hosts, e, src.cma()),
    };
    let hostname = data.node.hostname.clone();
    let events = src.events(move |l| host_events(l, &hostname)).await.unwrap_or_default();
    let pkg: String = hq.pkg.chars().take(MAX_QUERY).collect::<String>().trim().to_lowercase();
    let body = render_host(&data, &events, &pkg, src.now_micros(), req.operator.is_some());
    let page = Page {
        title: data.node.hostname.clone(),
        nav: Nav::Hosts,
        live: Some(format!("host:{}", filter_word(&data.node.hostname))),
        body,
    };
    layout::respond(&req, StatusCode::OK, page, src.cma())
}

/// A host name as one quoted value of the bus's filter language.
fn filter_word(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        // Glob characters would widen the match; a `?` in a host name matches itself too.
        out.push(c);
    }
    out.push('"');
    out
}

fn payload<'a>(d: &'a [DiscoveryView], name: &str) -> Option<&'a Value> {
    d.iter().find(|v| v.name == name).map(|v| &v.payload)
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn list<'a>(v: Option<&'a Value>, key: &str) -> &'a [Value] {
    v.and_then(|v| v.get(key)).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn deps_table(id: &str, rows: &[Dependency], client_side: bool) -> Markup {
    html! {
        @if rows.is_empty() { p.muted #(id) { "None known." } } @else {
            div.scroll { table #(id) {
                thead { tr {
                    th { @if client_side { "Server" } @else { "Client" } }
                    th { "State" } th { "Service" } th { "Program" } th { "Connections" }
                } }
                tbody { @for d in rows {
                    @let (other, state) = if client_side { (&d.server_host, &d.server_state) } else { (&d.client_host, &d.client_state) };
                    tr {
                        td { (host_link(other)) }
                        td { (badge(state)) }
                        td { (d.server_ip) ":" (d.port) }
                        td { @if client_side { (d.client_exe.as_deref().unwrap_or("")) " → " (d.server_exe.as_deref().unwrap_or("")) } @else { (d.client_exe.as_deref().unwrap_or("")) } }
                        td { (d.connections) }
                    }
                } }
            } }
        }
    }
}

/// `operator`: the viewer may run checks (a "Run now" button per check).
fn render_host(d: &HostData, events: &[Event], pkg: &str, now: u64, operator: bool) -> Markup {
    let n = &d.node;
    let os = payload(&d.discovery, "os");
    let pretty =
        os.and_then(|o| o.get("os_release")).map(|r| s(r, "PRETTY_NAME")).filter(|p| !p.is_empty());
    let nics = list(payload(&d.discovery, "interfaces"), "interfaces");
    let packages = list(payload(&d.discovery, "packages"), "packages");
    let keys = list(payload(&d.discovery, "ssh_host_keys"), "keys");
    let shown: Vec<&Value> = packages
        .iter()
        .filter(|p| pkg.is_empty() || s(p, "name").to_lowercase().contains(pkg))
        .take(MAX_PACKAGES)
        .collect();
    let href = layout::host_href(&n.hostname);
    html! {
        h1 { (n.hostname) " " (badge(&n.state)) }
        p.summary {
            (n.state) " since " (time(n.since)) " (" (age(now, n.since)) "). "
            @if let Some(p) = &pretty { (p) ". " }
            @if let Some(o) = os { "Kernel " (s(o, "kernel_release")) ". " }
            "Version " (n.version) ". Node " code { (n.id) } "."
        }
        nav.toc aria-label="Sections" {
            a href="#checks" { "Checks" } a href="#services" { "Services" } a href="#deps" { "Dependencies" }
            a href="#network" { "Network" } a href="#packages" { "Packages" } a href="#keys" { "SSH keys" }
            a href="#history" { "History" }
        }
        dl.facts {
            dt { "Addresses" } dd { (n.addresses.join(", ")) }
            dt { "Ring neighbours" } dd { @for (i, nb) in n.neighbours.iter().enumerate() { @if i > 0 { ", " } (host_link(nb)) } @if n.neighbours.is_empty() { "—" } }
            dt { "Listens on" } dd { (n.listen_addr) }
        }
        h2 #checks { "Checks" }
        @if d.checks.is_empty() { p.muted { "No checks configured." } } @else {
            @if !operator { p.muted #run-hint { "Operators can run a check now: " a href=(crate::operator::login_href(&href)) { "sign in" } "." } }
            div.scroll { table #check-table {
                thead { tr {
                    th { "Check" } th { "State" } th { "Since" } th { "Output" } th { "Perfdata" }
                    @if operator { th { "Run" } }
                } }
                tbody { @for c in &d.checks {
                    tr data-check=(c.check) data-state=(c.state) {
                        td { (c.check) br; span.muted { (c.kind) ", every " (c.interval_s) " s" } }
                        td { (badge(&c.state)) @if c.flapping { " " span.st.st-warn { "flapping" } } }
                        td { (time(c.since)) }
                        td.output { (c.output) }
                        td.output { (c.perfdata) }
                        @if operator { td { (crate::operator::run_button(&n.hostname, &c.check)) } }
                    }
                } }
            } }
        }
        h2 #services { "Services found by discovery" }
        @if d.services.is_empty() { p.muted { "No listening sockets known." } } @else {
            div.scroll { table #service-table {
                thead { tr { th { "Service" } th { "Program" } th { "User" } th { "Clients" } th { "Watched by" } } }
                tbody { @for sv in &d.services {
                    tr.service data-port=(sv.port) {
                        td { (sv.protocol) " " (sv.ip) ":" (sv.port) }
                        td { (sv.exe.as_deref().unwrap_or("")) br; span.muted.output { (sv.cmdline) } }
                        td { (sv.user.as_deref().unwrap_or("")) }
                        td { (sv.client_hosts) " host(s)" }
                        td { @if sv.monitors.is_empty() { span.st.st-warn { "unmonitored" } } @else { (sv.monitors.join(", ")) } }
                    }
                } }
            } }
        }
        h2 #deps { "Depends on" }
        (deps_table("depends-on", &d.dependencies, true))
        h2 { "Depended on by" }
        (deps_table("depended-on-by", &d.dependents, false))
        h2 #network { "NICs and switch ports" }
        @if nics.is_empty() && d.ports.is_empty() { p.muted { "No interfaces discovered yet." } } @else {
            div.scroll { table #nic-table {
                thead { tr { th { "NIC" } th { "MAC" } th { "State" } th { "Addresses" } th { "Switch port" } } }
                tbody {
                    @for nic in nics {
                        @let name = s(nic, "name");
                        tr {
                            td { (name) }
                            td { (s(nic, "mac")) }
                            td { (s(nic, "operstate")) }
                            td { @for (i, a) in list(Some(nic), "addresses").iter().enumerate() { @if i > 0 { ", " } (s(a, "address")) "/" (s(a, "prefix_len")) } }
                            td { @for p in d.ports.iter().filter(|p| p.nic == name) {
                                (p.switch_name.as_deref().unwrap_or(&p.chassis_id)) " port " (p.port_id)
                                @if let Some(desc) = &p.port_description { " (" (desc) ")" }
                                " via " (p.protocol)
                            } }
                        }
                    }
                    @for p in d.ports.iter().filter(|p| !nics.iter().any(|nic| s(nic, "name") == p.nic)) {
                        tr { td { (p.nic) } td { (p.mac.as_deref().unwrap_or("")) } td {} td {}
                             td { (p.switch_name.as_deref().unwrap_or(&p.chassis_id)) " port " (p.port_id) " via " (p.protocol) } }
                    }
                }
            } }
        }
        h2 #packages { "Packages" }
        form.search method="get" action=(href) role="search" {
            label for="pkg" { "Package" }
            input #pkg type="search" name="pkg" value=(pkg) placeholder="name contains…" data-filter-for="package-table" autocomplete="off";
            button type="submit" { "Search" }
        }
        p.summary { (shown.len()) " of " (packages.len()) " packages" @if shown.len() == MAX_PACKAGES { " (first " (MAX_PACKAGES) ")" } "." }
        @if !shown.is_empty() {
            div.scroll { table #package-table {
                thead { tr { th { "Name" } th { "Version" } th { "Arch" } th { "Manager" } } }
                tbody { @for p in &shown { tr { td { (s(p, "name")) } td { (s(p, "version")) } td { (s(p, "architecture")) } td { (s(p, "manager")) } } } }
            } }
        }
        h2 #keys { "SSH host keys" }
        @if keys.is_empty() { p.muted { "None discovered." } } @else {
            div.scroll { table #key-table {
                thead { tr { th { "Type" } th { "Fingerprint" } th { "File" } } }
                tbody { @for k in keys { tr { td { (s(k, "key_type")) } td.output { (s(k, "fingerprint")) } td { (s(k, "file")) } } } }
            } }
        }
        h2 #history { "Recent events" }
        @if events.is_empty() { p.muted { "No recent events about this host." } } @else {
            div.scroll { table.events {
                thead { tr { th { "Time" } th { "Type" } th { "Text" } } }
                tbody { @for e in events { tr { td { (time(e.time.0)) } td { (badge_kind(e)) } td { (e.text) } } } }
            } }
        }
        h2 { "Discovery changes" }
        @if d.history.is_empty() { p.muted { "No changes recorded." } } @else {
            div.scroll { table {
                thead { tr { th { "Time" } th { "Collector" } th { "Kind" } th { "Added" } th { "Removed" } } }
                tbody { @for h in &d.history { tr {
                    td { (time(h.time)) } td { (h.collector) } td { (h.kind) }
                    td.output { (h.added) ": " (h.added_labels.join(", ")) }
                    td.output { (h.removed) ": " (h.removed_labels.join(", ")) }
                } } }
            } }
        }
    }
}

/// An event's type, coloured by its severity.
pub(crate) fn badge_kind(e: &Event) -> Markup {
    let class = match e.severity {
        assim_cma::Severity::Critical | assim_cma::Severity::Error => "st-crit",
        assim_cma::Severity::Warning => "st-warn",
        assim_cma::Severity::Notice => "st-unreach",
        _ => "st-idle",
    };
    html! { span class={ "st " (class) } { (e.kind.name()) } }
}
