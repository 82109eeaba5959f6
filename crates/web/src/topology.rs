//! The topology picture (`/topology`), laid out on the server as SVG: each ring is a circle of
//! its members (who heartbeats whom: an edge between ring neighbours) with its switch in the
//! middle, the upper ring's edges join the representatives of the rings, and client → service
//! dependencies are dashed arrows. Hosts in no ring (down, left, not placed yet) sit in a
//! cluster of their own. Every host is a link to its page, every shape is coloured by state
//! (the state is in its tooltip and in the tables below too), and a switch that is down is one
//! red square with its ring's members unreachable around it.
//!
//! Large fleets get a summary by default: beyond [`SUMMARY_ABOVE`] hosts each ring is one
//! shape with its counts by state, only the hosts that are not up are drawn one by one, and
//! the upper ring and the dependencies join rings rather than hosts ([`summary_layout`]); the
//! whole picture stays one click away (`/topology?full=1`). At 10,000 hosts that is the
//! difference between a page of a few hundred KB and one of 3.5 MB.
//!
//! [`layout`] and [`summary_layout`] are pure functions of the answer types, so tests count
//! their shapes.

use std::collections::{HashMap, HashSet};
use std::f64::consts::PI;
use std::fmt::Write as _;

use assim_api::{Dependency, NodeView, RingView, SwitchView};
use assim_store::{Queries, QueryError};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use crate::WebSource;
use crate::layout::{self, Nav, Page, badge, enc, host_link, state_class};
use crate::operator::Viewer;

/// Distance between neighbours on a ring's circle.
const SPACING: f64 = 16.0;
/// Smallest ring radius.
const MIN_RADIUS: f64 = 28.0;
/// Room around a cluster for its labels.
const MARGIN: f64 = 46.0;
/// Host names are written beside their dots in rings up to this size.
const MAX_LABELLED: usize = 24;
/// Dependency arrows drawn at most.
pub const MAX_DEPENDENCY_EDGES: usize = 2000;
/// Above this many hosts the page draws the summary unless asked for the full picture.
pub const SUMMARY_ABOVE: usize = 2000;
/// A ring's radius in the summary (its hosts are not drawn one by one).
const SUMMARY_RADIUS: f64 = 34.0;

/// The anchor of a switch on the topology page (also its row in the switch table).
pub(crate) fn switch_anchor(name: &str) -> String {
    format!("sw-{}", enc(name))
}

/// A host's place.
#[derive(Clone, Debug, PartialEq)]
pub struct Dot {
    pub host: String,
    pub state: String,
    pub x: f64,
    pub y: f64,
    pub labelled: bool,
    /// Its cluster (index into [`Layout::clusters`]).
    pub cluster: usize,
}

/// One ring (or the hosts in none) as a circle.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub label: String,
    /// The switch in its middle: (name, state).
    pub switch: Option<(String, String)>,
    pub cx: f64,
    pub cy: f64,
    pub r: f64,
    /// Its hosts by state, most hosts first.
    pub counts: Vec<(String, usize)>,
}

/// A line between two dots (indices into [`Layout::dots`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Edge(pub usize, pub usize);

/// The picture.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub clusters: Vec<Cluster>,
    pub dots: Vec<Dot>,
    /// Heartbeat edges inside rings.
    pub ring_edges: Vec<Edge>,
    /// Heartbeat edges of the upper ring (between the representatives of the rings).
    pub upper_edges: Vec<Edge>,
    /// Client → server edges.
    pub dependency_edges: Vec<Edge>,
    /// The summary: only hosts that are not up are in `dots`, there are no host edges, and
    /// these join clusters instead (indices into `clusters`).
    pub summary: bool,
    pub cluster_upper_edges: Vec<Edge>,
    pub cluster_dependency_edges: Vec<Edge>,
}

/// The edges of a ring of `n` members in ring order: each member heartbeats its successor.
fn ring_pairs(n: usize) -> Vec<(usize, usize)> {
    match n {
        0 | 1 => Vec::new(),
        2 => vec![(0, 1)],
        _ => (0..n).map(|i| (i, (i + 1) % n)).collect(),
    }
}

/// Lays out every host of `nodes` once: in its first ring that is not the upper ring, or in
/// the "not in a ring" cluster.
pub fn layout(
    nodes: &[NodeView],
    rings: &[RingView],
    switches: &[SwitchView],
    deps: &[Dependency],
) -> Layout {
    layout_with(nodes, rings, switches, deps, false)
}

/// The summary of a large fleet: the clusters of [`layout`], each ring drawn small with its
/// counts by state; only hosts that are not `up` are dots (so every failed host is still
/// visible and a link); the upper ring and the dependencies join clusters.
pub fn summary_layout(
    nodes: &[NodeView],
    rings: &[RingView],
    switches: &[SwitchView],
    deps: &[Dependency],
) -> Layout {
    layout_with(nodes, rings, switches, deps, true)
}

fn layout_with(
    nodes: &[NodeView],
    rings: &[RingView],
    switches: &[SwitchView],
    deps: &[Dependency],
    summary: bool,
) -> Layout {
    let state: HashMap<String, &str> =
        nodes.iter().map(|n| (n.id.to_string(), n.state.as_str())).collect();
    let name: HashMap<String, &str> =
        nodes.iter().map(|n| (n.id.to_string(), n.hostname.as_str())).collect();
    let switch_by_ring: HashMap<&str, &SwitchView> =
        switches.iter().filter_map(|s| s.ring.as_deref().map(|r| (r, s))).collect();
    // Groups of node ids in ring order.
    // (label, the switch in the middle: (name, state), node ids in ring order)
    type Group = (String, Option<(String, String)>, Vec<String>);
    let mut groups: Vec<Group> = Vec::new();
    let mut placed: HashSet<String> = HashSet::new();
    for r in rings.iter().filter(|r| r.kind != "upper") {
        let members: Vec<String> = r
            .members
            .iter()
            .filter(|m| placed.insert(m.node.clone()))
            .map(|m| m.node.clone())
            .collect();
        let sw = switch_by_ring.get(r.ring.as_str()).map(|s| {
            (
                s.name.clone().unwrap_or_else(|| s.chassis_id.clone()),
                s.state.clone().unwrap_or_else(|| "up".into()),
            )
        });
        let label = match (&sw, &r.switch_name) {
            (Some((n, _)), _) | (None, Some(n)) => format!("{} ring: {n}", r.kind),
            _ => format!("{} ring: {}", r.kind, r.ring),
        };
        groups.push((label, sw, members));
    }
    for s in switches.iter().filter(|s| s.ring.is_none()) {
        let sname = s.name.clone().unwrap_or_else(|| s.chassis_id.clone());
        groups.push((
            format!("switch {sname} (no ring)"),
            Some((sname, s.state.clone().unwrap_or_else(|| "up".into()))),
            Vec::new(),
        ));
    }
    let rest: Vec<String> =
        nodes.iter().map(|n| n.id.to_string()).filter(|id| !placed.contains(id)).collect();
    if !rest.is_empty() {
        groups.push(("not in a ring".into(), None, rest));
    }
    // Shelf packing of the clusters, biggest first, into a width that makes a squarish picture.
    // The hosts drawn one by one in a group: all, or in the summary those not up.
    let drawn = |members: &[String]| {
        if summary {
            members.iter().filter(|id| state.get(*id).is_none_or(|s| *s != "up")).count()
        } else {
            members.len()
        }
    };
    let min = if summary { SUMMARY_RADIUS } else { MIN_RADIUS };
    let radius = |n: usize| (n as f64 * SPACING / (2.0 * PI)).max(min);
    // Wide enough for the ring and for its label (12 px text, about 7 px a character).
    let side = |label: &str, n: usize| {
        (2.0 * (radius(n) + MARGIN)).max(label.chars().count() as f64 * 7.0 + 16.0)
    };
    let area: f64 = groups.iter().map(|g| side(&g.0, drawn(&g.2)).powi(2)).sum();
    let widest = groups.iter().map(|g| side(&g.0, drawn(&g.2))).fold(0.0, f64::max);
    let width = (area.sqrt() * 1.2).max(widest).max(480.0);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| groups[b].2.len().cmp(&groups[a].2.len()).then(a.cmp(&b)));
    let mut out = Layout { width, ..Layout::default() };
    let mut index: HashMap<String, usize> = HashMap::new();
    let (mut x, mut y, mut shelf) = (0.0_f64, 0.0_f64, 0.0_f64);
    for gi in order {
        let (label, sw, members) = &groups[gi];
        let shown = drawn(members);
        let r = radius(shown);
        let size = side(label, shown);
        if x > 0.0 && x + size > width {
            x = 0.0;
            y += shelf;
            shelf = 0.0;
        }
        let (cx, cy) = (x + size / 2.0, y + size / 2.0);
        x += size;
        shelf = shelf.max(size);
        let first = out.dots.len();
        let n = members.len();
        let ci = out.clusters.len();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        // In the summary the dots that stay (not up) are spread around the circle.
        let mut k = 0;
        for id in members {
            let st = state.get(id).map_or("unknown", |s| s);
            let of = if summary { shown } else { n };
            let a = 2.0 * PI * k as f64 / of.max(1) as f64 - PI / 2.0;
            if !summary || st != "up" {
                k += 1;
            }
            *counts.entry(st).or_default() += 1;
            index.insert(id.clone(), out.dots.len());
            out.dots.push(Dot {
                host: name.get(id).map_or_else(|| id.clone(), |s| (*s).to_string()),
                state: st.to_string(),
                x: cx + r * a.cos(),
                y: cy + r * a.sin(),
                labelled: n <= MAX_LABELLED,
                cluster: ci,
            });
        }
        let mut counts: Vec<(String, usize)> =
            counts.into_iter().map(|(s, c)| (s.to_string(), c)).collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if label != "not in a ring" {
            out.ring_edges
                .extend(ring_pairs(n).into_iter().map(|(a, b)| Edge(first + a, first + b)));
        }
        out.clusters.push(Cluster { label: label.clone(), switch: sw.clone(), cx, cy, r, counts });
    }
    out.height = (y + shelf).max(120.0);
    // The upper ring, between representatives already placed in their own rings.
    for r in rings.iter().filter(|r| r.kind == "upper") {
        let at: Vec<usize> = r.members.iter().filter_map(|m| index.get(&m.node).copied()).collect();
        out.upper_edges.extend(ring_pairs(at.len()).into_iter().map(|(a, b)| Edge(at[a], at[b])));
    }
    let mut seen = HashSet::new();
    for d in deps {
        if out.dependency_edges.len() >= MAX_DEPENDENCY_EDGES {
            break;
        }
        if let (Some(&a), Some(&b)) = (index.get(&d.client_node), index.get(&d.server_node))
            && a != b
            && seen.insert((a, b))
        {
            out.dependency_edges.push(Edge(a, b));
        }
    }
    if summary {
        summarize(&mut out);
    }
    out
}

/// Keeps the dots that are not up and turns host edges into cluster edges (each pair once).
fn summarize(l: &mut Layout) {
    l.summary = true;
    let between = |edges: &[Edge], dots: &[Dot]| {
        let mut seen = HashSet::new();
        edges
            .iter()
            .map(|e| Edge(dots[e.0].cluster, dots[e.1].cluster))
            .filter(|e| e.0 != e.1 && seen.insert(*e))
            .collect::<Vec<Edge>>()
    };
    l.cluster_upper_edges = between(&l.upper_edges, &l.dots);
    l.cluster_dependency_edges = between(&l.dependency_edges, &l.dots);
    l.ring_edges.clear();
    l.upper_edges.clear();
    l.dependency_edges.clear();
    l.dots.retain(|d| d.state != "up");
    let mut per: HashMap<usize, usize> = HashMap::new();
    for d in &l.dots {
        *per.entry(d.cluster).or_default() += 1;
    }
    for d in &mut l.dots {
        d.labelled = per[&d.cluster] <= MAX_LABELLED;
    }
}

/// The SVG of a layout. Numbers are written by this function; every name goes through maud's
/// escaping.
pub fn svg(l: &Layout) -> Markup {
    let line = |class: &str, e: &Edge| {
        let (a, b) = (&l.dots[e.0], &l.dots[e.1]);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<line class="{class}" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"></line>"#,
            a.x, a.y, b.x, b.y
        );
        s
    };
    let edges = |class: &str, list: &[Edge]| {
        let mut s = String::new();
        for e in list {
            s.push_str(&line(class, e));
        }
        layout::trusted(s)
    };
    let cluster_edges = |class: &str, list: &[Edge]| {
        let mut s = String::new();
        for e in list {
            let (a, b) = (&l.clusters[e.0], &l.clusters[e.1]);
            let _ = write!(
                s,
                r#"<line class="{class}" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"></line>"#,
                a.cx, a.cy, b.cx, b.cy
            );
        }
        layout::trusted(s)
    };
    html! {
        svg #topology-svg xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (format!("{:.0} {:.0}", l.width, l.height)) }
            width=(format!("{:.0}", l.width)) height=(format!("{:.0}", l.height))
            role="img" aria-label="Rings, switches and hosts" {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse" {
                    path.arrow d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            g.clusters {
                @for c in &l.clusters {
                    g.cluster {
                        circle.ring-outline cx=(format!("{:.1}", c.cx)) cy=(format!("{:.1}", c.cy)) r=(format!("{:.1}", c.r)) {}
                        text.cluster-label x=(format!("{:.1}", c.cx)) y=(format!("{:.1}", c.cy - c.r - 24.0)) text-anchor="middle" { (c.label) }
                        @if l.summary {
                            @let total: usize = c.counts.iter().map(|(_, n)| n).sum();
                            text.cluster-count x=(format!("{:.1}", c.cx)) y=(format!("{:.1}", c.cy + c.r + 16.0)) text-anchor="middle" {
                                (total) " hosts"
                                @for (st, n) in c.counts.iter().filter(|(st, _)| st != "up") { ", " (n) " " (st) }
                            }
                        }
                        @if let Some((name, state)) = &c.switch {
                            a href={ "#" (switch_anchor(name)) } {
                                rect class={ "switch " (state_class(state)) } x=(format!("{:.1}", c.cx - 10.0)) y=(format!("{:.1}", c.cy - 10.0)) width="20" height="20" rx="3" {
                                    title { "switch " (name) " (" (state) ")" }
                                }
                            }
                        }
                    }
                }
            }
            g.ring-edges { (edges("ring-edge", &l.ring_edges)) }
            g.upper-edges { (edges("upper-edge", &l.upper_edges)) }
            g.dependency-edges { (edges("dep-edge", &l.dependency_edges)) }
            @if l.summary {
                g.upper-edges { (cluster_edges("upper-edge", &l.cluster_upper_edges)) }
                g.dependency-edges { (cluster_edges("dep-edge", &l.cluster_dependency_edges)) }
            }
            g.hosts {
                @for d in &l.dots {
                    a href=(layout::host_href(&d.host)) {
                        circle class={ "host " (state_class(&d.state)) } cx=(format!("{:.1}", d.x)) cy=(format!("{:.1}", d.y)) r="6" {
                            title { (d.host) " (" (d.state) ")" }
                        }
                        @if d.labelled {
                            text.host-label x=(format!("{:.1}", d.x + 9.0)) y=(format!("{:.1}", d.y + 4.0)) { (d.host) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct Data {
    nodes: Vec<NodeView>,
    rings: Vec<RingView>,
    switches: Vec<SwitchView>,
    deps: Vec<Dependency>,
}

fn gather(q: &dyn Queries) -> Result<Data, QueryError> {
    let deps = match q.all_dependencies() {
        Ok(d) => d,
        Err(QueryError::TooLarge) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(Data { nodes: q.nodes()?, rings: q.rings()?, switches: q.switches(None)?, deps })
}

/// Query of `/topology`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TopologyQuery {
    /// `1`: draw every host even in a large fleet.
    #[serde(default)]
    full: String,
}

/// `GET /topology`.
pub(crate) async fn page<S: WebSource>(
    State(src): State<S>,
    req: Viewer,
    Query(q): Query<TopologyQuery>,
) -> Response {
    let d = match src.read(gather).await {
        Ok(d) => d,
        Err(e) => return layout::failed(&req, Nav::Topology, e, src.cma()),
    };
    let large = d.nodes.len() > SUMMARY_ABOVE;
    let l = if large && q.full != "1" {
        summary_layout(&d.nodes, &d.rings, &d.switches, &d.deps)
    } else {
        layout(&d.nodes, &d.rings, &d.switches, &d.deps)
    };
    let body = html! {
        h1 { "Topology" }
        p.summary #topology-summary {
            (d.nodes.len()) " hosts, " (d.switches.len()) " switches, "
            (d.rings.len()) " rings; " (l.ring_edges.len()) " heartbeat edges in rings, "
            (l.upper_edges.len()) " in the upper ring, " (l.dependency_edges.len()) " dependencies."
        }
        @if l.summary {
            p.summary #topology-mode {
                "A summary of " (d.nodes.len()) " hosts: each ring is one circle with its counts, "
                "only the hosts that are not up are drawn one by one, and lines join rings. "
                a href="/topology?full=1" { "Draw every host" } " (a large picture)."
            }
        } @else if large {
            p.summary #topology-mode { "Every host is drawn. " a href="/topology" { "Back to the summary" } "." }
        }
        p.legend {
            span.key.key-ring { "heartbeat (ring)" } " "
            span.key.key-upper { "upper ring" } " "
            span.key.key-dep { "client → service" } " "
            (badge("up")) " " (badge("suspect")) " " (badge("down")) " " (badge("unreachable")) " " (badge("left"))
        }
        div.svgbox { (svg(&l)) }
        h2 { "Switches" }
        @if d.switches.is_empty() { p.muted { "No switch heard yet (LLDP/CDP)." } } @else {
            div.scroll { table #switch-table {
                thead { tr { th { "Switch" } th { "State" } th { "Hosts" } th { "Ring" } } }
                tbody { @for s in &d.switches {
                    @let name = s.name.clone().unwrap_or_else(|| s.chassis_id.clone());
                    tr id=(switch_anchor(&name)) {
                        td { (name) br; span.muted { (s.chassis_id) } }
                        td { (badge(s.state.as_deref().unwrap_or("up"))) }
                        td {
                            @if l.summary {
                                // The summary names only the hosts that are not up.
                                a href={ "/hosts?q=" (enc(&name)) } { (s.hosts.len()) " hosts" }
                                @for h in s.hosts.iter().filter(|h| h.state != "up") { ", " (host_link(&h.host)) " " (badge(&h.state)) }
                            } @else {
                                @for (i, h) in s.hosts.iter().enumerate() { @if i > 0 { ", " } (host_link(&h.host)) " " span.muted { (h.port_id) } }
                            }
                        }
                        td { (s.ring.as_deref().unwrap_or("—")) }
                    }
                } }
            } }
        }
        h2 { "Rings" }
        div.scroll { table #ring-table {
            thead { tr { th { "Ring" } th { @if l.summary { "Members" } @else { "Members in order" } } th { "Representatives" } th { "Watched by" } } }
            tbody { @for r in &d.rings {
                tr {
                    td { (r.ring) @if let Some(n) = &r.switch_name { br; span.muted { (n) } } }
                    td {
                        @if l.summary {
                            (r.members.len()) " members"
                            @for m in r.members.iter().filter(|m| m.state != "up") { ", " (host_link(&m.host)) " " (badge(&m.state)) }
                        } @else {
                            @for (i, m) in r.members.iter().enumerate() { @if i > 0 { " → " } (host_link(&m.host)) }
                        }
                    }
                    td { @for (i, m) in r.representatives.iter().enumerate() { @if i > 0 { ", " } (host_link(&m.host)) } }
                    td { @for (i, m) in r.watchers.iter().enumerate() { @if i > 0 { ", " } (host_link(&m.host)) } }
                }
            } }
        } }
    };
    let page =
        Page { title: "Topology".into(), nav: Nav::Topology, live: Some(String::new()), body };
    layout::respond(&req, StatusCode::OK, page, src.cma())
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_api::RingMember;
    use assim_wire::NodeId;

    fn node(n: u8, state: &str) -> NodeView {
        NodeView {
            id: NodeId::from_slice(&[n; 16]).unwrap(),
            hostname: format!("h{n}"),
            state: state.into(),
            since: 1,
            version: "t".into(),
            listen_addr: "127.0.0.1:1".into(),
            addresses: vec![],
            neighbours: vec![],
            peer_epoch: 0,
        }
    }

    fn ring(key: &str, kind: &str, members: &[&NodeView]) -> RingView {
        RingView {
            ring: key.into(),
            kind: kind.into(),
            switch_name: None,
            members: members
                .iter()
                .map(|n| RingMember {
                    host: n.hostname.clone(),
                    node: n.id.to_string(),
                    state: n.state.clone(),
                })
                .collect(),
            representatives: vec![],
            watchers: vec![],
        }
    }

    #[test]
    fn every_host_once_and_every_ring_edge() {
        let nodes: Vec<NodeView> =
            (1..=9).map(|n| node(n, if n == 9 { "down" } else { "up" })).collect();
        let rings = vec![
            ring("switch:a", "switch", &[&nodes[0], &nodes[1], &nodes[2], &nodes[3]]),
            ring("switch:b", "switch", &[&nodes[4], &nodes[5], &nodes[6]]),
            ring("unwired", "unwired", &[&nodes[7]]),
            ring("upper", "upper", &[&nodes[0], &nodes[1], &nodes[4], &nodes[5]]),
        ];
        let l = layout(&nodes, &rings, &[], &[]);
        assert_eq!(l.dots.len(), 9, "every host once, h9 outside any ring");
        assert_eq!(l.ring_edges.len(), 4 + 3, "a ring of n ≥ 3 has n edges, of 1 none");
        assert_eq!(l.upper_edges.len(), 4);
        let svg = svg(&l).into_string();
        assert_eq!(svg.matches("<circle class=\"host ").count(), 9);
        assert_eq!(svg.matches("class=\"ring-edge\"").count(), 7);
        assert!(svg.contains("<circle class=\"host st-crit\""), "the down host is red");
    }

    #[test]
    fn a_large_fleet_is_summarised_with_every_failed_host_still_drawn() {
        let d = crate::fixture::fleet(3000, 40);
        let full = layout(&d.nodes, &d.rings, &d.switches, &d.dependencies);
        let sum = summary_layout(&d.nodes, &d.rings, &d.switches, &d.dependencies);
        assert_eq!(full.dots.len(), 3000);
        let failed = d.nodes.iter().filter(|n| n.state != "up").count();
        assert_eq!(failed, 30);
        assert_eq!(sum.dots.len(), failed, "only hosts that are not up are dots");
        assert!(sum.dots.iter().all(|dot| dot.state != "up"));
        assert_eq!(sum.clusters.len(), full.clusters.len(), "every ring is still there");
        assert!(sum.ring_edges.is_empty() && sum.upper_edges.is_empty());
        assert!(!sum.cluster_upper_edges.is_empty(), "the upper ring joins rings");
        let total: usize = sum.clusters.iter().flat_map(|c| &c.counts).map(|(_, n)| n).sum();
        assert_eq!(total, 3000, "the counts account for every host");
        let big = svg(&full).into_string();
        let small = svg(&sum).into_string();
        assert_eq!(small.matches("<circle class=\"host ").count(), failed);
        assert!(small.contains("<circle class=\"host st-crit\""), "down hosts are red");
        assert!(small.len() * 10 < big.len(), "{} vs {} bytes", small.len(), big.len());
    }
}
