//! Service monitoring records in a batch: check sets with their epochs, service states,
//! hand-set checks, remembered (stopped) services, and the monitors of the topology graph.

use std::net::IpAddr;

use assim_wire::NodeId;
use serde::{Deserialize, Serialize};

pub use assim_api::StoredCheck;

/// A check set by hand for one node (`assim check add`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualCheck {
    pub node: NodeId,
    pub check: StoredCheck,
    /// When it was added, µs since the epoch.
    pub added_at: u64,
}

/// A change to the hand-set checks: add (or replace) one, or remove one by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManualChange {
    Put(ManualCheck),
    Remove { node: NodeId, name: String },
}

/// A listener that matched a rule, as remembered (the `sockets` collector's fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedService {
    pub protocol: String,
    pub ip: std::net::IpAddr,
    pub port: u16,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub user: Option<String>,
    /// When it was last seen listening, µs since the epoch.
    pub seen: u64,
}

/// A node's desired check set, and the services (listeners) its checks watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSetRecord {
    pub node: NodeId,
    pub epoch: u64,
    pub checks: Vec<StoredCheck>,
    /// Replaces the node's rows in the topology's `monitors` table.
    pub monitors: Vec<MonitorRecord>,
}

/// The last reported state of one check: the core's record.
pub use assim_cma::ServiceStateRecord;

/// What one CMA batch changes in service monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicesBatch {
    pub check_sets: Vec<CheckSetRecord>,
    pub states: Vec<ServiceStateRecord>,
    /// Hand-set checks added or removed, in order.
    pub manual: Vec<ManualChange>,
    /// Per node: replaces its remembered services.
    pub remembered: Vec<(NodeId, Vec<RememberedService>)>,
}

impl ServicesBatch {
    pub fn is_empty(&self) -> bool {
        self.check_sets.is_empty()
            && self.states.is_empty()
            && self.manual.is_empty()
            && self.remembered.is_empty()
    }
}

/// A check watching a service (the topology's `monitors` rows of a node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRecord {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The service address it checks; `None` covers the port on every address of the node.
    pub service_ip: Option<IpAddr>,
    pub port: u16,
    /// The check's name, shown next to the service.
    pub check_name: String,
}
