//! The first screen: what is broken right now — switches and hosts down, unreachable or
//! suspect, services critical, warning or unknown — sorted by severity then age (newest first),
//! each with since-when, the reason in plain words and who depends on it; then what recovered
//! in the last hour. Live: the page re-renders on every event.
//!
//! A switch that is down is one problem: the hosts it cuts off are listed inside it, not as
//! problems of their own, and the service problems of a host that is down or cut off are
//! counted on the host (its checks cannot report), not listed.

use std::collections::{BTreeMap, HashMap, HashSet};

use assim_api::{DownHost, NodeView, ServiceView, SwitchView};
use assim_cma::{Event, EventKind};
use assim_store::{EventLog, Queries, QueryError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use crate::WebSource;
use crate::layout::{self, Nav, Page, age, host_link, time};
use crate::operator::Viewer;
use crate::topology;

/// Problems whose dependents are looked up (one store query each).
const MAX_DEPENDENT_LOOKUPS: usize = 100;
/// Dependents named per problem (the rest are counted).
const MAX_NAMED: usize = 8;
/// Recent events examined for recoveries.
const RECOVERY_SCAN: usize = 2000;
/// How far back a recovery is shown.
const RECOVERY_WINDOW_US: u64 = 3600 * 1_000_000;
/// Recoveries shown.
const MAX_RECOVERED: usize = 20;

/// What kind of problem, most severe first (the sort order of the page).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    SwitchDown,
    HostDown,
    SwitchUnreachable,
    HostUnreachable,
    ServiceCritical,
    HostSuspect,
    ServiceWarning,
    ServiceUnknown,
}

impl Kind {
    /// The event type that reports it (also the row's `data-kind`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::SwitchDown => "switch.down",
            Kind::HostDown => "host.down",
            Kind::SwitchUnreachable => "switch.unreachable",
            Kind::HostUnreachable => "host.unreachable",
            Kind::ServiceCritical => "service.critical",
            Kind::HostSuspect => "host.suspect",
            Kind::ServiceWarning => "service.warning",
            Kind::ServiceUnknown => "service.unknown",
        }
    }

    /// The severity class: `crit` (red), `warn`, `unreach`.
    fn class(self) -> &'static str {
        match self {
            Kind::SwitchDown | Kind::HostDown | Kind::ServiceCritical => "sev-crit",
            Kind::HostSuspect | Kind::ServiceWarning => "sev-warn",
            Kind::SwitchUnreachable | Kind::HostUnreachable | Kind::ServiceUnknown => "sev-unreach",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::SwitchDown => "switch down",
            Kind::HostDown => "host down",
            Kind::SwitchUnreachable => "switch unreachable",
            Kind::HostUnreachable => "host unreachable",
            Kind::ServiceCritical => "critical",
            Kind::HostSuspect => "host suspect",
            Kind::ServiceWarning => "warning",
            Kind::ServiceUnknown => "unknown",
        }
    }
}

/// One problem row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    /// The host or switch name.
    pub subject: String,
    /// The host's node id (host and service problems).
    pub node: Option<String>,
    /// The check (service problems).
    pub check: Option<String>,
    /// When it started, µs since the epoch.
    pub since: u64,
    /// In plain words.
    pub reason: String,
    /// Hosts a switch cuts off.
    pub cut_off: Vec<String>,
    /// Service problems not listed because the host is down or cut off.
    pub hidden_services: usize,
    /// Hosts that depend on it (from the dependency graph), by name.
    pub dependents: Vec<String>,
}

/// What is broken, from the answer types of the status, topology and services queries.
pub fn problems(
    nodes: &[NodeView],
    down: &[DownHost],
    unreachable: &[DownHost],
    switches: &[SwitchView],
    services: &[ServiceView],
) -> Vec<Problem> {
    let last_text: HashMap<&str, &str> = down
        .iter()
        .chain(unreachable)
        .filter_map(|d| d.last_event.as_deref().map(|t| (d.node.as_str(), t)))
        .collect();
    let mut out = Vec::new();
    // Switches, and the unreachable hosts each one accounts for.
    let mut folded: HashSet<&str> = HashSet::new();
    for sw in switches {
        let kind = match sw.state.as_deref() {
            Some("down") => Kind::SwitchDown,
            Some("unreachable") => Kind::SwitchUnreachable,
            _ => continue,
        };
        let cut: Vec<&assim_api::SwitchHost> =
            sw.hosts.iter().filter(|h| h.state == "unreachable").collect();
        folded.extend(cut.iter().map(|h| h.node.as_str()));
        let name = sw.name.clone().unwrap_or_else(|| sw.chassis_id.clone());
        let since = nodes
            .iter()
            .filter(|n| cut.iter().any(|h| h.node == n.id.to_string()))
            .map(|n| n.since)
            .min()
            .unwrap_or(sw.last_seen);
        let reason = match kind {
            Kind::SwitchDown => format!(
                "most of its ring went silent at once and nothing behind it answers: {} of {} \
                 hosts cut off",
                cut.len(),
                sw.hosts.len()
            ),
            _ => format!(
                "some hosts behind it still answer, {} of {} are cut off",
                cut.len(),
                sw.hosts.len()
            ),
        };
        out.push(Problem {
            kind,
            subject: name,
            node: None,
            check: None,
            since,
            reason,
            cut_off: cut.iter().map(|h| h.host.clone()).collect(),
            hidden_services: 0,
            dependents: Vec::new(),
        });
    }
    // Hosts.
    let mut silent: HashMap<String, usize> = HashMap::new();
    for n in nodes {
        let id = n.id.to_string();
        let kind = match n.state.as_str() {
            "down" => Kind::HostDown,
            "unreachable" => Kind::HostUnreachable,
            "suspect" => Kind::HostSuspect,
            _ => continue,
        };
        if kind != Kind::HostSuspect {
            silent.insert(id.clone(), out.len());
        }
        if kind == Kind::HostUnreachable && folded.contains(id.as_str()) {
            continue;
        }
        let reason = match (kind, last_text.get(id.as_str())) {
            (Kind::HostSuspect, _) => "a ring neighbour stopped hearing it; waiting for a \
                                        second neighbour or a direct probe to confirm"
                .to_string(),
            (_, Some(text)) => (*text).to_string(),
            (Kind::HostDown, None) => {
                "its ring neighbours stopped hearing it and it said no goodbye".to_string()
            }
            _ => "it is behind a switch or segment that is down: the CMA cannot tell whether it \
                  runs"
                .to_string(),
        };
        out.push(Problem {
            kind,
            subject: n.hostname.clone(),
            node: Some(id),
            check: None,
            since: n.since,
            reason,
            cut_off: Vec::new(),
            hidden_services: 0,
            dependents: Vec::new(),
        });
    }
    // Services of hosts that run and are reachable.
    let mut hidden: HashMap<String, usize> = HashMap::new();
    for s in services {
        let kind = match s.state.as_str() {
            "critical" => Kind::ServiceCritical,
            "warning" => Kind::ServiceWarning,
            "unknown" => Kind::ServiceUnknown,
            _ => continue,
        };
        let id = s.node.to_string();
        if silent.contains_key(&id) {
            *hidden.entry(id).or_default() += 1;
            continue;
        }
        let mut reason = s.output.clone();
        if s.flapping {
            reason = format!("flapping: {reason}");
        }
        out.push(Problem {
            kind,
            subject: s.host.clone(),
            node: Some(id),
            check: Some(s.check.clone()),
            since: s.since,
            reason,
            cut_off: Vec::new(),
            hidden_services: 0,
            dependents: Vec::new(),
        });
    }
    for p in &mut out {
        if p.check.is_none()
            && let Some(n) = p.node.as_ref().and_then(|id| hidden.get(id))
        {
            p.hidden_services = *n;
        }
    }
    out.sort_by(|a, b| {
        a.kind
            .cmp(&b.kind)
            .then(b.since.cmp(&a.since))
            .then_with(|| a.subject.cmp(&b.subject))
            .then_with(|| a.check.cmp(&b.check))
    });
    out
}

/// Something that was broken and is fine again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// `host`, `switch` or `service`.
    pub what: &'static str,
    pub subject: String,
    pub check: Option<String>,
    /// When the problem was reported, and its text.
    pub broke_at: u64,
    pub broke: String,
    /// When it recovered, and the recovery's text.
    pub at: u64,
    pub text: String,
}

/// The subject of a problem or recovery event, as a key: (what, name, check).
fn subject(e: &Event) -> Option<(&'static str, String, Option<String>)> {
    use EventKind as K;
    match e.kind {
        K::HostDown | K::HostUnreachable | K::HostSuspect | K::HostUp => {
            Some(("host", e.hostname.clone(), None))
        }
        K::SwitchDown | K::SwitchUnreachable | K::SwitchUp => {
            Some(("switch", e.tags.get("switch").cloned().unwrap_or_default(), None))
        }
        K::ServiceCritical | K::ServiceWarning | K::ServiceUnknown | K::ServiceOk => {
            Some(("service", e.hostname.clone(), e.tags.get("check").cloned()))
        }
        _ => None,
    }
}

/// Recoveries in `events` (oldest first) newer than `now - window`: a problem event followed by
/// the recovery of the same subject, whose subject is not among `current` problems now; newest
/// first, at most [`MAX_RECOVERED`].
pub fn recovered(events: &[Event], current: &[Problem], now: u64) -> Vec<Recovered> {
    let open_now: HashSet<(String, Option<String>)> = current
        .iter()
        .flat_map(|p| {
            let mut keys = vec![(p.subject.clone(), p.check.clone())];
            keys.extend(p.cut_off.iter().map(|h| (h.clone(), None)));
            keys
        })
        .collect();
    let mut broken: BTreeMap<(&'static str, String, Option<String>), &Event> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        let Some(key) = subject(e) else { continue };
        let recovery =
            matches!(e.kind, EventKind::HostUp | EventKind::SwitchUp | EventKind::ServiceOk);
        if !recovery {
            // The latest word on it (host.suspect, then host.down, …).
            broken.insert(key, e);
            continue;
        }
        let Some(b) = broken.remove(&key) else { continue };
        if e.time.0 + RECOVERY_WINDOW_US < now || open_now.contains(&(key.1.clone(), key.2.clone()))
        {
            continue;
        }
        out.push(Recovered {
            what: key.0,
            subject: key.1,
            check: key.2,
            broke_at: b.time.0,
            broke: b.text.clone(),
            at: e.time.0,
            text: e.text.clone(),
        });
    }
    out.reverse();
    out.truncate(MAX_RECOVERED);
    out
}

/// Everything the page shows.
#[derive(Debug)]
struct Data {
    problems: Vec<Problem>,
    hosts: usize,
    up: usize,
}

fn gather(q: &dyn Queries) -> Result<Data, QueryError> {
    let nodes = q.nodes()?;
    let down = q.down_hosts(true)?;
    let unreachable = q.unreachable_hosts()?;
    let switches = q.switches(None)?;
    let mut services = Vec::new();
    for state in ["critical", "warning", "unknown"] {
        services.extend(q.services(None, Some(state))?);
    }
    let mut problems = problems(&nodes, &down, &unreachable, &switches, &services);
    for p in problems.iter_mut().take(MAX_DEPENDENT_LOOKUPS) {
        let Some(node) = &p.node else { continue };
        let mut who: Vec<String> = q.dependents(node)?.into_iter().map(|d| d.client_host).collect();
        who.sort();
        who.dedup();
        p.dependents = who;
    }
    Ok(Data { problems, hosts: nodes.len(), up: nodes.iter().filter(|n| n.state == "up").count() })
}

fn recent_events(log: &dyn EventLog) -> Result<Vec<Event>, QueryError> {
    let last = log.last_event_id()?;
    log.events_since(last.saturating_sub(RECOVERY_SCAN as u64), RECOVERY_SCAN)
}

/// `GET /`.
pub(crate) async fn page<S: WebSource>(State(src): State<S>, req: Viewer) -> Response {
    let data = match src.read(gather).await {
        Ok(d) => d,
        Err(e) => return layout::failed(&req, Nav::Problems, e, src.cma()),
    };
    let events = src.events(recent_events).await.unwrap_or_default();
    let now = src.now_micros();
    let rec = recovered(&events, &data.problems, now);
    let body = render(&data, &rec, now);
    let page =
        Page { title: "Problems".into(), nav: Nav::Problems, live: Some(String::new()), body };
    layout::respond(&req, StatusCode::OK, page, src.cma())
}

fn names(list: &[String]) -> Markup {
    html! {
        @for (i, h) in list.iter().take(MAX_NAMED).enumerate() {
            @if i > 0 { ", " }
            (host_link(h))
        }
        @if list.len() > MAX_NAMED { " and " (list.len() - MAX_NAMED) " more" }
    }
}

fn render(d: &Data, rec: &[Recovered], now: u64) -> Markup {
    let crit = d.problems.iter().filter(|p| p.kind.class() == "sev-crit").count();
    html! {
        h1 { "Problems" }
        p.summary #summary {
            @if d.problems.is_empty() {
                span.allclear { "Nothing is broken." }
                " "
            } @else {
                (d.problems.len()) " problem" @if d.problems.len() != 1 { "s" }
                " (" (crit) " critical). "
            }
            (d.up) " of " (d.hosts) " hosts up."
        }
        @if !d.problems.is_empty() {
            div.scroll {
                table.problems #problems {
                    thead { tr { th { "What" } th { "Where" } th { "Since" } th { "Reason" } th { "Affects" } } }
                    tbody {
                        @for p in &d.problems {
                            tr class={ "problem " (p.kind.class()) } data-kind=(p.kind.name()) data-subject=(p.subject) {
                                td { span class={ "sev " (p.kind.class()) } { (p.kind.label()) } }
                                td {
                                    @if p.node.is_some() { (host_link(&p.subject)) } @else {
                                        a href={ "/topology#" (topology::switch_anchor(&p.subject)) } { (p.subject) }
                                    }
                                    @if let Some(c) = &p.check { " · " span.check { (c) } }
                                }
                                td { (time(p.since)) br; span.age { "for " (age(now, p.since)) } }
                                td.reason {
                                    (p.reason)
                                    @if !p.cut_off.is_empty() {
                                        br; "Cut off: " (names(&p.cut_off))
                                    }
                                    @if p.hidden_services > 0 {
                                        br; span.muted { (p.hidden_services) " service problem(s) on it not listed: its checks cannot report" }
                                    }
                                }
                                td { @if p.dependents.is_empty() { span.muted { "—" } } @else { (names(&p.dependents)) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Recovered in the last hour" }
        @if rec.is_empty() {
            p.muted #recovered { "Nothing recovered in the last hour." }
        } @else {
            div.scroll {
                table.recovered #recovered {
                    thead { tr { th { "What" } th { "Was" } th { "Recovered" } th { "How" } } }
                    tbody {
                        @for r in rec {
                            tr.recovery data-subject=(r.subject) data-what=(r.what) {
                                td {
                                    @if r.what == "switch" { (r.subject) } @else { (host_link(&r.subject)) }
                                    @if let Some(c) = &r.check { " · " span.check { (c) } }
                                }
                                td { (r.broke) br; span.muted { (time(r.broke_at)) } }
                                td { (time(r.at)) br; span.age { (age(now, r.at)) " ago" } }
                                td { (r.text) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_api::SwitchHost;
    use assim_wire::NodeId;

    fn node(n: u8, name: &str, state: &str, since: u64) -> NodeView {
        NodeView {
            id: NodeId::from_slice(&[n; 16]).unwrap(),
            hostname: name.into(),
            state: state.into(),
            since,
            version: "t".into(),
            listen_addr: "127.0.0.1:1".into(),
            addresses: vec![],
            neighbours: vec![],
            peer_epoch: 0,
        }
    }

    fn svc(n: u8, host: &str, check: &str, state: &str, since: u64) -> ServiceView {
        ServiceView {
            host: host.into(),
            node: NodeId::from_slice(&[n; 16]).unwrap(),
            check: check.into(),
            kind: "nagios".into(),
            state: state.into(),
            output: format!("{check} is {state}"),
            perfdata: String::new(),
            flapping: false,
            since,
            interval_s: 60,
        }
    }

    #[test]
    fn sorted_by_severity_then_newest_and_a_switch_is_one_problem() {
        let nodes = vec![
            node(1, "a", "up", 1),
            node(2, "b", "down", 10),
            node(3, "c", "down", 20),
            node(4, "d", "unreachable", 30),
            node(5, "e", "unreachable", 31),
            node(6, "f", "suspect", 40),
        ];
        let id = |n: u8| NodeId::from_slice(&[n; 16]).unwrap().to_string();
        let sw = SwitchView {
            chassis_id: "aa:bb".into(),
            name: Some("sw1".into()),
            description: None,
            platform: None,
            management_addresses: vec![],
            last_seen: 5,
            state: Some("down".into()),
            ring: Some("switch:aa:bb".into()),
            hosts: ["d", "e"]
                .iter()
                .zip([4u8, 5])
                .map(|(h, n)| SwitchHost {
                    host: (*h).into(),
                    node: id(n),
                    state: "unreachable".into(),
                    nic: "eth0".into(),
                    port_id: "1".into(),
                    port_description: None,
                    protocol: "lldp".into(),
                    in_ring: true,
                })
                .collect(),
        };
        let services = vec![
            svc(1, "a", "http", "warning", 50),
            svc(1, "a", "ssh", "critical", 60),
            svc(2, "b", "db", "critical", 70),
            svc(1, "a", "disk", "ok", 80),
        ];
        let p = problems(&nodes, &[], &[], &[sw], &services);
        let got: Vec<(&str, &str)> =
            p.iter().map(|p| (p.kind.name(), p.subject.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("switch.down", "sw1"),
                ("host.down", "c"),
                ("host.down", "b"),
                ("service.critical", "a"),
                ("host.suspect", "f"),
                ("service.warning", "a"),
            ]
        );
        assert_eq!(p[0].cut_off, vec!["d", "e"]);
        assert_eq!(p[0].since, 30, "the switch broke when its first host was cut off");
        assert_eq!(p[2].hidden_services, 1, "b's critical check is counted on b");
    }

    #[test]
    fn a_recovery_needs_an_earlier_problem_and_is_not_current() {
        use assim_wire::Timestamp;
        let ev = |id: u64, kind: EventKind, host: &str, t: u64| Event {
            id,
            time: Timestamp(t),
            kind,
            host: None,
            hostname: host.into(),
            tags: Default::default(),
            text: format!("{host} {}", kind.name()),
            severity: Default::default(),
            body: None,
        };
        let now = 10_000_000_000;
        let events = vec![
            ev(1, EventKind::HostUp, "a", now - 100),
            ev(2, EventKind::HostDown, "b", now - 90),
            ev(3, EventKind::HostUp, "b", now - 80),
            ev(4, EventKind::HostDown, "c", now - 70),
            ev(5, EventKind::HostUp, "c", now - 60),
        ];
        let current = vec![Problem {
            kind: Kind::HostDown,
            subject: "c".into(),
            node: None,
            check: None,
            since: now - 10,
            reason: String::new(),
            cut_off: vec![],
            hidden_services: 0,
            dependents: vec![],
        }];
        let r = recovered(&events, &current, now);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].subject.as_str(), r[0].broke_at), ("b", now - 90));
    }
}
