//! The read side over SQLite: [`assim_store::Queries`] for [`Store`], and [`queries_opener`],
//! which opens one connection per handle. Each call is one statement (or a few in one
//! connection's snapshot) against the WAL file, so readers work beside the CMA's writer.

use std::net::IpAddr;

use assim_api::{
    Dependency, DiscoveryView, DownHost, HistoryEntry, IpSighting, MacSighting, NodeView,
    PackageHit, RingView, Service, ServiceView, Subnet, SwitchPortLink, SwitchView, UnknownIp,
};
use assim_store::queries::discovery_view;
use assim_store::{HostRef, OpenQueries, PackagePattern, Queries, QueryError};
use assim_wire::NodeId;

use crate::Store;

/// Status, discovery, services and the topology graph, read from the SQLite file.
impl Queries for Store {
    fn nodes(&self) -> Result<Vec<NodeView>, QueryError> {
        Ok(NodeView::list(Store::nodes(self).map_err(QueryError::from)?))
    }
    fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryView>, QueryError> {
        let list = Store::discovery(self, node).map_err(QueryError::from)?;
        Ok(list.into_iter().map(discovery_view).collect())
    }
    fn latest_discovery(&self, names: &[&str]) -> Result<Vec<(String, DiscoveryView)>, QueryError> {
        let mut out = Vec::new();
        for name in names {
            for d in Store::discovery_named(self, name).map_err(QueryError::from)? {
                out.push((d.node.to_string(), discovery_view(d)));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        Ok(out)
    }
    fn services(
        &self,
        host: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<ServiceView>, QueryError> {
        Store::services(self, host, state).map_err(QueryError::from)
    }
    fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, QueryError> {
        Store::resolve_host(self, name).map_err(QueryError::from)
    }
    fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, QueryError> {
        Store::down_hosts(self, crashed_only).map_err(QueryError::from)
    }
    fn unreachable_hosts(&self) -> Result<Vec<DownHost>, QueryError> {
        Store::unreachable_hosts(self).map_err(QueryError::backend)
    }
    fn rings(&self) -> Result<Vec<RingView>, QueryError> {
        Store::ring_views(self).map_err(QueryError::backend)
    }
    fn switches(&self, switch: Option<&str>) -> Result<Vec<SwitchView>, QueryError> {
        Store::switch_views(self, switch).map_err(QueryError::backend)
    }
    fn host_services(&self, node: &str) -> Result<Vec<Service>, QueryError> {
        Store::host_services(self, node).map_err(QueryError::from)
    }
    fn dependencies(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        Store::dependencies(self, node).map_err(QueryError::from)
    }
    fn dependents(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        Store::dependents(self, node).map_err(QueryError::from)
    }
    fn all_dependencies(&self) -> Result<Vec<Dependency>, QueryError> {
        Store::all_dependencies(self).map_err(QueryError::from)
    }
    fn find_ip(&self, ip: IpAddr) -> Result<Vec<IpSighting>, QueryError> {
        Store::find_ip(self, ip).map_err(QueryError::from)
    }
    fn find_mac(&self, mac: &str) -> Result<Vec<MacSighting>, QueryError> {
        Store::find_mac(self, mac).map_err(QueryError::from)
    }
    fn switch_ports(&self, node: Option<&str>) -> Result<Vec<SwitchPortLink>, QueryError> {
        Store::switch_ports(self, node).map_err(QueryError::from)
    }
    fn unmonitored_services(&self) -> Result<Vec<Service>, QueryError> {
        Store::unmonitored_services(self).map_err(QueryError::from)
    }
    fn search_packages(&self, pattern: PackagePattern<'_>) -> Result<Vec<PackageHit>, QueryError> {
        Store::search_packages(self, pattern).map_err(QueryError::from)
    }
    fn unknown_ips(&self) -> Result<Vec<UnknownIp>, QueryError> {
        Store::unknown_ips(self).map_err(QueryError::from)
    }
    fn subnets(&self) -> Result<Vec<Subnet>, QueryError> {
        Store::subnets(self).map_err(QueryError::from)
    }
    fn topology_history(
        &self,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, QueryError> {
        Store::topology_history(self, node, limit).map_err(QueryError::from)
    }
}

/// Opens a new connection to the SQLite file at `path` for every read handle asked for.
pub fn queries_opener(path: std::path::PathBuf) -> OpenQueries {
    std::sync::Arc::new(move || {
        let store = Store::open(&path).map_err(QueryError::from)?;
        Ok(Box::new(store) as Box<dyn Queries>)
    })
}
