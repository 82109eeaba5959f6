//! The topology picture (`/topology`), laid out on the server as SVG: each ring is a circle of
//! its members (who heartbeats whom: an edge between ring neighbours) with its switch in the
//! middle, the upper ring's edges join the representatives of the rings, and client → service
//! dependencies are dashed arrows. Hosts in no ring (down, left, not placed yet) sit in a
//! cluster of their own. Every host is a link to its page, every shape is coloured by state
//! (the state is in its tooltip and in the tables below too), and a switch that is down is one
//! red square with its ring's members unreachable around it.
//!
//! [`layout`] is a pure function of the answer types, so tests count its shapes.

use std::collections::{HashMap, HashSet};
use std::f64::consts::PI;
use std::fmt::Write as _;

use assim_api::{Dependency, NodeView, RingView, SwitchView};
use assim_store::{Queries, QueryError};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};

use crate::WebSource;
use crate::layout::{self, Nav, Page, badge, enc, host_link, state_class};

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
    let radius = |n: usize| (n as f64 * SPACING / (2.0 * PI)).max(MIN_RADIUS);
    // Wide enough for the ring and for its label (12 px text, about 7 px a character).
    let side = |label: &str, n: usize| {
        (2.0 * (radius(n) + MARGIN)).max(label.chars().count() as f64 * 7.0 + 16.0)
    };
    let area: f64 = groups.iter().map(|g| side(&g.0, g.2.len()).powi(2)).sum();
    let widest = groups.iter().map(|g| side(&g.0, g.2.len())).fold(0.0, f64::max);
    let width = (area.sqrt() * 1.2).max(widest).max(480.0);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| groups[b].2.len().cmp(&groups[a].2.len()).then(a.cmp(&b)));
    let mut out = Layout { width, ..Layout::default() };
    let mut index: HashMap<String, usize> = HashMap::new();
    let (mut x, mut y, mut shelf) = (0.0_f64, 0.0_f64, 0.0_f64);
    for gi in order {
        let (label, sw, members) = &groups[gi];
        let r = radius(members.len());
        let size = side(label, members.len());
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
        for (i, id) in members.iter().enumerate() {
            let a = 2.0 * PI * i as f64 / n.max(1) as f64 - PI / 2.0;
            index.insert(id.clone(), out.dots.len());
            out.dots.push(Dot {
                host: name.get(id).map_or_else(|| id.clone(), |s| (*s).to_string()),
                state: state.get(id).map_or("unknown", |s| s).to_string(),
                x: cx + r * a.cos(),
                y: cy + r * a.sin(),
                labelled: n <= MAX_LABELLED,
            });
        }
        if label != "not in a ring" {
            out.ring_edges
                .extend(ring_pairs(n).into_iter().map(|(a, b)| Edge(first + a, first + b)));
        }
        out.clusters.push(Cluster { label: label.clone(), switch: sw.clone(), cx, cy, r });
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
    out
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

/// `GET /topology`.
pub(crate) async fn page<S: WebSource>(State(src): State<S>, req: HeaderMap) -> Response {
    let d = match src.read(gather).await {
        Ok(d) => d,
        Err(e) => return layout::failed(&req, Nav::Topology, e, src.cma()),
    };
    let l = layout(&d.nodes, &d.rings, &d.switches, &d.deps);
    let body = html! {
        h1 { "Topology" }
        p.summary #topology-summary {
            (d.nodes.len()) " hosts, " (d.switches.len()) " switches, "
            (d.rings.len()) " rings; " (l.ring_edges.len()) " heartbeat edges in rings, "
            (l.upper_edges.len()) " in the upper ring, " (l.dependency_edges.len()) " dependencies."
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
                        td { @for (i, h) in s.hosts.iter().enumerate() { @if i > 0 { ", " } (host_link(&h.host)) " " span.muted { (h.port_id) } } }
                        td { (s.ring.as_deref().unwrap_or("—")) }
                    }
                } }
            } }
        }
        h2 { "Rings" }
        div.scroll { table #ring-table {
            thead { tr { th { "Ring" } th { "Members in order" } th { "Representatives" } th { "Watched by" } } }
            tbody { @for r in &d.rings {
                tr {
                    td { (r.ring) @if let Some(n) = &r.switch_name { br; span.muted { (n) } } }
                    td { @for (i, m) in r.members.iter().enumerate() { @if i > 0 { " → " } (host_link(&m.host)) } }
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
}
