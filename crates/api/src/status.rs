//! `GET /api/v1/status`: the CMA and every node.

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
}
