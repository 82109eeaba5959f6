//! [`Queries`]: the read side of a storage engine — everything the HTTP API and the CLI read
//! (node status, discovery results, monitored services, the topology graph's canned queries),
//! answered with the `assim-api` types the API serves unchanged. The events and the durable
//! subscriptions are the other read side, [`crate::EventLog`].
//!
//! A handle is blocking and need not be shareable between threads (an SQLite connection is
//! not): callers open handles with an [`OpenQueries`] and call them from blocking threads,
//! never from async workers. Every call reads one consistent state of the store.
//!
//! Engines: `assim-store-sqlite` (SQL over the topology tables it derives from discovery
//! results); [`crate::MemStore`] answers a documented subset (see its impl below), enough to
//! exercise the HTTP API without a database.

use std::net::IpAddr;
use std::sync::Arc;

use assim_api::{
    Dependency, DiscoveryView, DownHost, HistoryEntry, IpSighting, MacSighting, NodeView,
    PackageHit, RingMember, RingView, Service, ServiceView, Subnet, SwitchPortLink, SwitchView,
    UnknownIp,
};
use assim_cma::NodeState;
use assim_wire::NodeId;

use crate::{DiscoveryRecord, MemStore, QueryError};

/// A node found by host name or node id ([`Queries::resolve_host`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRef {
    /// The node id, as the topology queries take it.
    pub node: String,
    pub hostname: String,
    /// The node's state name (`up`, `down`, …).
    pub state: String,
}

/// How [`Queries::search_packages`] matches package names.
#[derive(Clone, Copy, Debug)]
pub enum PackagePattern<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    /// A compiled regular expression (`Regex::as_str` gives its text to an engine that
    /// matches in the database).
    Regex(&'a regex::Regex),
}

/// What the HTTP API and the CLI read. Each call is blocking and reads one consistent state;
/// a failed call changed nothing ([`QueryError`]).
pub trait Queries: Send {
    /// Every node with its state and ring neighbours, by host name then node id
    /// (`/api/v1/status`).
    fn nodes(&self) -> Result<Vec<NodeView>, QueryError>;
    /// The latest result of every discovery collector of one node, by collector name
    /// (`/api/v1/discovery`).
    fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryView>, QueryError>;
    /// Every configured check with its last HARD state (`pending` before the first report),
    /// optionally of one host (name or node id) and in one state (any case), by host then
    /// check (`/api/v1/services`).
    fn services(
        &self,
        host: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<ServiceView>, QueryError>;

    /// Finds a node by node id or host name; of several nodes with one host name, the most
    /// recently registered.
    fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, QueryError>;
    /// Hosts not running: crashed (`down`) and, unless `crashed_only`, those that said goodbye
    /// (`left`); newest first.
    fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, QueryError>;
    /// Hosts behind a switch (or segment) that is down or cut off: the CMA cannot tell whether
    /// they run (state `unreachable`); newest first, with the text of the last event that made
    /// them so.
    fn unreachable_hosts(&self) -> Result<Vec<DownHost>, QueryError>;
    /// Every ring with its members in ring order, its representatives and its watchers, by
    /// ring key (`assim rings`). As of the CMA's last write: at most one heartbeat interval
    /// old, and the same after a CMA restart.
    fn rings(&self) -> Result<Vec<RingView>, QueryError>;
    /// Switches some host heard (LLDP/CDP) with the hosts wired to them and the CMA's last
    /// verdict on each, by chassis id; all, or the one whose chassis id or announced name is
    /// `switch` (`assim switches`, `assim switch SW`).
    fn switches(&self, switch: Option<&str>) -> Result<Vec<SwitchView>, QueryError>;
    /// The listening sockets of one node (by node id), by protocol and port.
    fn host_services(&self, node: &str) -> Result<Vec<Service>, QueryError>;
    /// What a node depends on: its edges as a client.
    fn dependencies(&self, node: &str) -> Result<Vec<Dependency>, QueryError>;
    /// Who depends on a node: its edges as a server.
    fn dependents(&self, node: &str) -> Result<Vec<Dependency>, QueryError>;
    /// Every client → service edge.
    fn all_dependencies(&self) -> Result<Vec<Dependency>, QueryError>;
    /// Where an address is configured, and which hosts have it in their ARP cache.
    fn find_ip(&self, ip: IpAddr) -> Result<Vec<IpSighting>, QueryError>;
    /// Where a MAC is: a host NIC, ARP caches, a switch chassis. `mac` is normalised
    /// ([`normalize_mac`]).
    fn find_mac(&self, mac: &str) -> Result<Vec<MacSighting>, QueryError>;
    /// Host NICs and the switch ports they are wired to; of one node or of all.
    fn switch_ports(&self, node: Option<&str>) -> Result<Vec<SwitchPortLink>, QueryError>;
    /// Services reachable from other hosts (not bound to loopback) that no check watches.
    fn unmonitored_services(&self) -> Result<Vec<Service>, QueryError>;
    /// Installed packages matching `pattern`, with hosts and versions, by name then host.
    fn search_packages(&self, pattern: PackagePattern<'_>) -> Result<Vec<PackageHit>, QueryError>;
    /// Addresses in some host's ARP cache that are configured on no known host.
    fn unknown_ips(&self) -> Result<Vec<UnknownIp>, QueryError>;
    /// Subnets with the number of hosts that have an address in them (loopback left out).
    fn subnets(&self) -> Result<Vec<Subnet>, QueryError>;
    /// The newest `limit` changes of the graph, of one node or of all, newest first.
    fn topology_history(
        &self,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, QueryError>;

    /// The latest result of each collector in `names` on every node: (node id, result), by
    /// node then collector (the exports, `assim export …`). The default asks [`Queries::discovery`]
    /// node by node; an engine can answer it in one read.
    fn latest_discovery(&self, names: &[&str]) -> Result<Vec<(String, DiscoveryView)>, QueryError> {
        let mut out = Vec::new();
        for n in self.nodes()? {
            for d in self.discovery(n.id)? {
                if names.contains(&d.name.as_str()) {
                    out.push((n.id.to_string(), d));
                }
            }
        }
        Ok(out)
    }
}

/// Opens a new read handle (the HTTP API keeps a few for its blocking threads).
pub type OpenQueries = Arc<dyn Fn() -> Result<Box<dyn Queries>, QueryError> + Send + Sync>;

/// A MAC in the stored form (lowercase, colon-separated), from `AA:BB:…`, `aa-bb-…` or
/// `aabb.ccdd.eeff`; `None` if it is not 6 bytes of hex.
pub fn normalize_mac(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    Some((0..6).map(|i| &hex[2 * i..2 * i + 2]).collect::<Vec<_>>().join(":"))
}

/// A stored discovery result as `/api/v1/discovery` shows it (a payload that is not JSON
/// shows as `null`).
pub fn discovery_view(d: DiscoveryRecord) -> DiscoveryView {
    DiscoveryView {
        payload: serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::Null),
        name: d.name,
        hash: d.hash,
        collected_at: d.collected_at,
        updated_at: d.updated_at,
    }
}

/// A ring as an engine stores it, by node ids ([`ring_views`] names the nodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingDesc {
    pub key: String,
    pub kind: String,
    /// In ring order.
    pub members: Vec<NodeId>,
    pub representatives: Vec<NodeId>,
    pub watchers: Vec<NodeId>,
}

impl From<assim_cma::ring::RingRecord> for RingDesc {
    fn from(r: assim_cma::ring::RingRecord) -> Self {
        RingDesc {
            key: r.key.0,
            kind: r.kind.name().to_string(),
            members: r.members,
            representatives: r.representatives,
            watchers: r.watchers,
        }
    }
}

impl RingDesc {
    /// The single ring of a CMA without network-aware rings (a store written before them):
    /// every member, key `all`.
    pub fn all(members: Vec<NodeId>) -> RingDesc {
        RingDesc {
            key: "all".into(),
            kind: "all".into(),
            members,
            representatives: Vec::new(),
            watchers: Vec::new(),
        }
    }
}

/// The rows of `assim rings`: each ring's node ids named by the host names and states in
/// `nodes` (a node not among them, e.g. one deleted since, shows by its id with state
/// `unknown`); a switch ring gets the switch's announced name from `switch_names` (chassis id
/// → name). Rings stay in the given order.
pub fn ring_views(
    rings: Vec<RingDesc>,
    nodes: &std::collections::HashMap<NodeId, (String, String)>,
    switch_names: &std::collections::HashMap<String, String>,
) -> Vec<RingView> {
    let member = |id: &NodeId| match nodes.get(id) {
        Some((host, state)) => {
            RingMember { host: host.clone(), node: id.to_string(), state: state.clone() }
        }
        None => RingMember { host: id.to_string(), node: id.to_string(), state: "unknown".into() },
    };
    rings
        .into_iter()
        .map(|r| RingView {
            switch_name: r
                .key
                .strip_prefix("switch:")
                .and_then(|chassis| switch_names.get(chassis).cloned()),
            members: r.members.iter().map(member).collect(),
            representatives: r.representatives.iter().map(member).collect(),
            watchers: r.watchers.iter().map(member).collect(),
            ring: r.key,
            kind: r.kind,
        })
        .collect()
}

/// The in-memory engine answers what it keeps: nodes (status, `resolve_host`, `down_hosts`
/// without the last event's text, since it keeps no events), the rings (without switch names)
/// and discovery results. It derives no topology graph and keeps no service states, so the
/// services, switches and other topology queries answer empty lists.
impl MemStore {
    /// The nodes in a state `keep` accepts, as [`DownHost`] rows, newest first.
    fn hosts_where(&self, keep: impl Fn(NodeState) -> bool) -> Vec<DownHost> {
        let mut out: Vec<_> = self
            .nodes
            .values()
            .filter(|n| keep(n.state))
            .map(|n| DownHost {
                host: n.hostname.clone(),
                node: n.id.to_string(),
                state: n.state.name().to_string(),
                since: n.since.0,
                last_event: None,
            })
            .collect();
        out.sort_by(|a, b| b.since.cmp(&a.since).then_with(|| a.host.cmp(&b.host)));
        out
    }
}

impl Queries for MemStore {
    fn nodes(&self) -> Result<Vec<NodeView>, QueryError> {
        let mut nodes: Vec<_> = self.nodes.values().cloned().collect();
        nodes.sort_by(|a, b| (&a.hostname, a.id).cmp(&(&b.hostname, b.id)));
        Ok(NodeView::list(nodes))
    }

    fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryView>, QueryError> {
        Ok(self
            .discovery
            .range((node, String::new())..)
            .take_while(|((n, _), _)| *n == node)
            .map(|(_, d)| discovery_view(d.clone()))
            .collect())
    }

    fn services(&self, _: Option<&str>, _: Option<&str>) -> Result<Vec<ServiceView>, QueryError> {
        Ok(Vec::new())
    }

    fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, QueryError> {
        let by_id = self.nodes.values().find(|n| n.id.to_string() == name);
        let by_name =
            || self.nodes.values().filter(|n| n.hostname == name).max_by_key(|n| n.registered_at);
        Ok(by_id.or_else(by_name).map(|n| HostRef {
            node: n.id.to_string(),
            hostname: n.hostname.clone(),
            state: n.state.name().to_string(),
        }))
    }

    fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, QueryError> {
        Ok(self.hosts_where(|s| s == NodeState::Down || (!crashed_only && s == NodeState::Left)))
    }

    fn unreachable_hosts(&self) -> Result<Vec<DownHost>, QueryError> {
        Ok(self.hosts_where(|s| s == NodeState::Unreachable))
    }

    fn rings(&self) -> Result<Vec<RingView>, QueryError> {
        let nodes = self
            .nodes
            .values()
            .map(|n| (n.id, (n.hostname.clone(), n.state.name().to_string())))
            .collect();
        let rings = if !self.rings.is_empty() {
            self.rings.values().cloned().map(RingDesc::from).collect()
        } else if !self.ring.is_empty() {
            vec![RingDesc::all(self.ring.clone())]
        } else {
            Vec::new()
        };
        Ok(ring_views(rings, &nodes, &Default::default()))
    }

    fn switches(&self, _: Option<&str>) -> Result<Vec<SwitchView>, QueryError> {
        Ok(Vec::new())
    }

    fn host_services(&self, _: &str) -> Result<Vec<Service>, QueryError> {
        Ok(Vec::new())
    }
    fn dependencies(&self, _: &str) -> Result<Vec<Dependency>, QueryError> {
        Ok(Vec::new())
    }
    fn dependents(&self, _: &str) -> Result<Vec<Dependency>, QueryError> {
        Ok(Vec::new())
    }
    fn all_dependencies(&self) -> Result<Vec<Dependency>, QueryError> {
        Ok(Vec::new())
    }
    fn find_ip(&self, _: IpAddr) -> Result<Vec<IpSighting>, QueryError> {
        Ok(Vec::new())
    }
    fn find_mac(&self, _: &str) -> Result<Vec<MacSighting>, QueryError> {
        Ok(Vec::new())
    }
    fn switch_ports(&self, _: Option<&str>) -> Result<Vec<SwitchPortLink>, QueryError> {
        Ok(Vec::new())
    }
    fn unmonitored_services(&self) -> Result<Vec<Service>, QueryError> {
        Ok(Vec::new())
    }
    fn search_packages(&self, _: PackagePattern<'_>) -> Result<Vec<PackageHit>, QueryError> {
        Ok(Vec::new())
    }
    fn unknown_ips(&self) -> Result<Vec<UnknownIp>, QueryError> {
        Ok(Vec::new())
    }
    fn subnets(&self) -> Result<Vec<Subnet>, QueryError> {
        Ok(Vec::new())
    }
    fn topology_history(&self, _: Option<&str>, _: usize) -> Result<Vec<HistoryEntry>, QueryError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_cma::NodeRecord;
    use assim_wire::Timestamp;

    fn node(n: u8, hostname: &str, state: NodeState, since: u64, registered: u64) -> NodeRecord {
        NodeRecord {
            id: NodeId::from_slice(&[n; 16]).unwrap(),
            hostname: hostname.into(),
            version: "t".into(),
            listen_addr: "127.0.0.1:1".parse().unwrap(),
            public_key: [n; 32],
            addresses: Vec::new(),
            state,
            since: Timestamp(since),
            registered_at: Timestamp(registered),
            peer_epoch: 0,
            peers: Vec::new(),
        }
    }

    #[test]
    fn the_in_memory_store_resolves_hosts_and_lists_the_down_ones() {
        let mut mem = MemStore::default();
        for n in [
            node(1, "web", NodeState::Up, 1, 1),
            node(2, "web", NodeState::Left, 5, 9),
            node(3, "db", NodeState::Down, 7, 2),
        ] {
            mem.nodes.insert(n.id, n);
        }
        let id1 = NodeId::from_slice(&[1; 16]).unwrap().to_string();
        // By name: the most recently registered; by id: that node.
        assert_eq!(mem.resolve_host("web").unwrap().unwrap().state, "left");
        assert_eq!(mem.resolve_host(&id1).unwrap().unwrap().node, id1);
        assert_eq!(mem.resolve_host("nosuch").unwrap(), None);
        let down: Vec<_> =
            mem.down_hosts(false).unwrap().into_iter().map(|d| (d.host, d.state)).collect();
        assert_eq!(down, [("db".to_string(), "down".to_string()), ("web".into(), "left".into())]);
        assert_eq!(mem.down_hosts(true).unwrap().len(), 1);
        let names: Vec<_> = mem.nodes().unwrap().into_iter().map(|n| n.hostname).collect();
        assert_eq!(names, ["db", "web", "web"]);
    }

    #[test]
    fn macs_normalise() {
        assert_eq!(normalize_mac("AA:BB:CC:DD:EE:0F").as_deref(), Some("aa:bb:cc:dd:ee:0f"));
        assert_eq!(normalize_mac("aa-bb-cc-dd-ee-0f").as_deref(), Some("aa:bb:cc:dd:ee:0f"));
        assert_eq!(normalize_mac("aabb.ccdd.ee0f").as_deref(), Some("aa:bb:cc:dd:ee:0f"));
        assert_eq!(normalize_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(normalize_mac("zz:bb:cc:dd:ee:0f"), None);
    }
}
