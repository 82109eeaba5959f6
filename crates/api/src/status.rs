//! `GET /api/v1/status`: the CMA and every node.

use std::collections::HashMap;
use std::net::SocketAddr;

use assim_wire::NodeId;
use serde::{Deserialize, Serialize};

/// Facts about the CMA shown by `/api/v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CmaInfo {
    pub node_id: NodeId,
    pub fingerprint: String,
    pub listen: SocketAddr,
    pub version: String,
}

/// One node as `/api/v1/status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub hostname: String,
    pub state: String,
    /// When the node entered its state, µs since the epoch.
    pub since: u64,
    pub version: String,
    pub listen_addr: String,
    pub addresses: Vec<String>,
    /// Hostnames of its ring neighbours.
    pub neighbours: Vec<String>,
    pub peer_epoch: u64,
}

/// The body of `/api/v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub cma: CmaInfo,
    pub nodes: Vec<NodeView>,
    /// This CMA's engine: which store, and whether it applies records or stands by (issue 14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineView>,
}

/// The engine of the CMA that answered `/api/v1/status` (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineView {
    /// `sqlite` or `postgresql`.
    pub store: String,
    /// `active` (it applies records), `standby` (another engine holds the lease; this one
    /// waits for it to lapse) or `stopped` (it lost the lease and is exiting).
    pub role: String,
    /// This engine's name in the lease (`HOST/ID`; PostgreSQL only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The lease term: this engine's when active, the holder's when standing by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// The active engine, as a standby last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Anything the operator should know (the database is unreachable, why it stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl NodeView {
    /// The status rows of `nodes`, in the given order; ring neighbours are named by their host
    /// names (a neighbour not among `nodes` by its node id).
    pub fn list(nodes: Vec<assim_cma::NodeRecord>) -> Vec<NodeView> {
        let names: HashMap<NodeId, String> =
            nodes.iter().map(|n| (n.id, n.hostname.clone())).collect();
        nodes
            .into_iter()
            .map(|n| NodeView {
                id: n.id,
                state: n.state.name().to_string(),
                since: n.since.0,
                version: n.version,
                listen_addr: n.listen_addr.to_string(),
                addresses: n.addresses,
                neighbours: n
                    .peers
                    .iter()
                    .map(|p| names.get(p).cloned().unwrap_or_else(|| p.to_string()))
                    .collect(),
                peer_epoch: n.peer_epoch,
                hostname: n.hostname,
            })
            .collect()
    }
}
