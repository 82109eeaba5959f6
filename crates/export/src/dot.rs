//! A Graphviz `dot` picture of the fleet (`assim export dot`, `GET /api/v1/export/dot`):
//! switches (boxes), hosts (ellipses, filled by state), each host NIC's wire to its switch port
//! (solid lines labelled `nic → port`), and client → service dependencies (dashed arrows
//! labelled with the port and the server's program). With a focus host, only what lies within
//! `depth` steps of it (over wires and dependencies, either way) is drawn.
//!
//! Every name is hostile input: identifiers and labels are always quoted, with `"` and `\`
//! escaped and control characters dropped, so no name can end a string or add a statement.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use assim_api::{Dependency, InventoryHost};

/// What to draw.
#[derive(Clone, Debug, Default)]
pub struct DotOptions {
    /// Only the neighbourhood of this host (name or node id).
    pub focus: Option<String>,
    /// How many steps from the focus host (wire or dependency) to draw; default 1.
    pub depth: Option<usize>,
}

/// A quoted dot string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars().filter(|c| !c.is_control()).take(256) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn fill(state: &str) -> &'static str {
    match state {
        "up" => "palegreen",
        "suspect" => "gold",
        "unreachable" => "orange",
        "down" => "tomato",
        _ => "lightgrey",
    }
}

/// Graph vertex ids: `host:NAME`, `switch:CHASSIS`.
fn host_id(name: &str) -> String {
    format!("host:{name}")
}

fn switch_id(chassis: &str) -> String {
    format!("switch:{chassis}")
}

/// The picture, as `dot` reads it. Errors only when the focus host is unknown.
pub fn dot(
    hosts: &[InventoryHost],
    deps: &[Dependency],
    opts: &DotOptions,
) -> Result<String, String> {
    // Edges of the whole graph, both kinds, by vertex.
    let mut adjacent: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut link = |a: &str, b: &str| {
        adjacent.entry(a.to_string()).or_default().insert(b.to_string());
        adjacent.entry(b.to_string()).or_default().insert(a.to_string());
    };
    let by_node: BTreeMap<&str, &str> =
        hosts.iter().map(|h| (h.node.as_str(), h.host.as_str())).collect();
    let dep_host = |name: &str, node: &str| -> String {
        by_node.get(node).map_or_else(
            || if name.is_empty() { node.to_string() } else { name.to_string() },
            |h| h.to_string(),
        )
    };
    for h in hosts {
        link(&host_id(&h.host), &host_id(&h.host));
        for s in &h.switches {
            link(&host_id(&h.host), &switch_id(&s.chassis_id));
        }
    }
    for d in deps {
        link(
            &host_id(&dep_host(&d.client_host, &d.client_node)),
            &host_id(&dep_host(&d.server_host, &d.server_node)),
        );
    }
    let keep: Option<BTreeSet<String>> = match &opts.focus {
        None => None,
        Some(focus) => {
            let start = hosts
                .iter()
                .find(|h| &h.host == focus || &h.node == focus)
                .map(|h| host_id(&h.host))
                .ok_or_else(|| {
                    format!("no host {focus:?} in the inventory (see `assim status`)")
                })?;
            let depth = opts.depth.unwrap_or(1);
            let mut seen = BTreeSet::from([start.clone()]);
            let mut queue = VecDeque::from([(start, 0)]);
            while let Some((v, d)) = queue.pop_front() {
                if d == depth {
                    continue;
                }
                for w in adjacent.get(&v).into_iter().flatten() {
                    if seen.insert(w.clone()) {
                        queue.push_back((w.clone(), d + 1));
                    }
                }
            }
            Some(seen)
        }
    };
    let shown = |v: &str| keep.as_ref().is_none_or(|k| k.contains(v));

    let mut out = String::from(
        "digraph assim {\n  graph [rankdir=LR, overlap=false];\n  node [style=filled, fontname=\"sans\"];\n",
    );
    let mut switches: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for h in hosts {
        for s in &h.switches {
            let name = switches.entry(&s.chassis_id).or_default();
            if name.is_none() {
                *name = s.switch_name.as_deref();
            }
        }
    }
    for (chassis, name) in &switches {
        let id = switch_id(chassis);
        if shown(&id) {
            let label = name.map_or_else(|| chassis.to_string(), |n| format!("{n}\n{chassis}"));
            let _ = writeln!(
                out,
                "  {} [shape=box, fillcolor=lightblue, label={}];",
                quote(&id),
                quote(&label)
            );
        }
    }
    for h in hosts {
        let id = host_id(&h.host);
        if shown(&id) {
            let label = format!("{}\n{}", h.host, h.state);
            let _ = writeln!(
                out,
                "  {} [shape=ellipse, fillcolor={}, label={}];",
                quote(&id),
                fill(&h.state),
                quote(&label)
            );
        }
    }
    for h in hosts {
        for s in &h.switches {
            let (a, b) = (host_id(&h.host), switch_id(&s.chassis_id));
            if shown(&a) && shown(&b) {
                let label = format!("{} → {}", s.nic, s.port_id);
                let _ = writeln!(
                    out,
                    "  {} -> {} [dir=none, label={}];",
                    quote(&a),
                    quote(&b),
                    quote(&label)
                );
            }
        }
    }
    let mut drawn = BTreeSet::new();
    for d in deps {
        let (a, b) = (
            host_id(&dep_host(&d.client_host, &d.client_node)),
            host_id(&dep_host(&d.server_host, &d.server_node)),
        );
        let prog = d.server_exe.as_deref().and_then(|e| e.rsplit('/').next()).unwrap_or("");
        let label = if prog.is_empty() { d.port.to_string() } else { format!("{} {prog}", d.port) };
        if shown(&a) && shown(&b) && drawn.insert((a.clone(), b.clone(), label.clone())) {
            let _ = writeln!(
                out,
                "  {} -> {} [style=dashed, label={}];",
                quote(&a),
                quote(&b),
                quote(&label)
            );
        }
    }
    out.push_str("}\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_api::SwitchUplink;

    pub(crate) fn host(
        name: &str,
        node: &str,
        state: &str,
        switch: Option<(&str, &str)>,
    ) -> InventoryHost {
        InventoryHost {
            host: name.into(),
            node: node.into(),
            state: state.into(),
            switches: switch
                .map(|(chassis, port)| SwitchUplink {
                    chassis_id: chassis.into(),
                    switch_name: Some(format!("sw-{chassis}")),
                    management_addresses: vec![],
                    port_id: port.into(),
                    nic: "eth0".into(),
                })
                .into_iter()
                .collect(),
            ..InventoryHost::default()
        }
    }

    pub(crate) fn dep(client: &str, server: &str, port: u16) -> Dependency {
        Dependency {
            client_host: client.into(),
            client_node: format!("n-{client}"),
            client_state: "up".into(),
            client_pid: None,
            client_exe: None,
            server_host: server.into(),
            server_node: format!("n-{server}"),
            server_state: "up".into(),
            server_ip: "192.0.2.1".into(),
            port,
            service_ip: "0.0.0.0".into(),
            server_pid: None,
            server_exe: Some("/usr/sbin/postgres".into()),
            connections: 1,
        }
    }

    #[test]
    fn draws_switches_hosts_wires_and_dependencies() {
        let hosts = [
            host("web1", "n-web1", "up", Some(("aa", "1"))),
            host("db1", "n-db1", "down", Some(("bb", "7"))),
            host("lone", "n-lone", "up", None),
        ];
        let g = dot(&hosts, &[dep("web1", "db1", 5432)], &DotOptions::default()).unwrap();
        assert!(g.contains("\"switch:aa\" [shape=box"), "{g}");
        assert!(g.contains("\"host:db1\" [shape=ellipse, fillcolor=tomato"), "{g}");
        assert!(g.contains("\"host:web1\" -> \"switch:aa\" [dir=none, label=\"eth0 → 1\"]"), "{g}");
        assert!(
            g.contains("\"host:web1\" -> \"host:db1\" [style=dashed, label=\"5432 postgres\"]"),
            "{g}"
        );
        assert!(g.contains("\"host:lone\""));
    }

    #[test]
    fn a_focus_keeps_the_neighbourhood() {
        let hosts = [
            host("web1", "n-web1", "up", Some(("aa", "1"))),
            host("web2", "n-web2", "up", Some(("aa", "2"))),
            host("db1", "n-db1", "up", Some(("bb", "7"))),
            host("far", "n-far", "up", Some(("cc", "1"))),
        ];
        let deps = [dep("web1", "db1", 5432)];
        let one = DotOptions { focus: Some("web1".into()), depth: Some(1) };
        let g = dot(&hosts, &deps, &one).unwrap();
        assert!(g.contains("\"switch:aa\"") && g.contains("\"host:db1\""), "{g}");
        assert!(
            !g.contains("\"host:web2\"") && !g.contains("\"switch:bb\"") && !g.contains("far"),
            "{g}"
        );
        let two = DotOptions { focus: Some("n-web1".into()), depth: Some(2) };
        let g = dot(&hosts, &deps, &two).unwrap();
        assert!(
            g.contains("\"host:web2\"") && g.contains("\"switch:bb\"") && !g.contains("far"),
            "{g}"
        );
        let e = dot(&hosts, &deps, &DotOptions { focus: Some("nope".into()), depth: None });
        assert!(e.unwrap_err().contains("assim status"));
    }

    #[test]
    fn hostile_names_stay_inside_their_quotes() {
        let hosts = [host("a\"];\nevil [label=\"x", "n1", "up", Some(("c\\\"h", "p\"1")))];
        let g = dot(&hosts, &[], &DotOptions::default()).unwrap();
        assert!(!g.contains("\nevil"), "{g}");
        assert!(g.contains("\\\"];evil"), "{g}");
        // Every line is one statement: quotes balance once escapes are taken out.
        for line in g.lines() {
            let unescaped = line.replace("\\\\", "").replace("\\\"", "");
            assert_eq!(unescaped.matches('"').count() % 2, 0, "{line}");
        }
    }
}
