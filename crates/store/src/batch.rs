//! The batch the CMA engine hands its store: what one batch of inbox records changed besides
//! the core's [`assim_cma::Change`]s and events, and the records the enrolment decision reads.

use std::collections::BTreeMap;

use assim_wire::{NodeId, Timestamp};

use crate::services::ServicesBatch;

/// What the decision engine consumed from the inbox in one batch. It is committed in the same
/// transaction as the state it changed, so after a crash the engine resumes exactly after the
/// last record whose effects are stored, and never applies a record twice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboxProgress {
    /// The last inbox LSN applied; `None` leaves the stored position unchanged.
    pub position: Option<u64>,
    /// Per node: the highest spool record applied so far, and how many records of that node this
    /// batch applied.
    pub applied: BTreeMap<NodeId, (u64, u64)>,
    /// Discovery results to store (the latest per node and collector wins).
    pub discovery: Vec<DiscoveryRecord>,
    /// Check sets and service states to store .
    pub services: ServicesBatch,
    /// The discovery schedule's configuration and epoch, when the core decided a new one.
    pub schedule: Option<assim_cma::schedule::StoredSchedule>,
    /// Nodes whose spool incarnation this batch learnt (issue 16 item 9).
    pub incarnations: BTreeMap<NodeId, SpoolIncarnation>,
    /// Nodes that wait for their `host.new`, or got it (issue 17; applied in order).
    pub host_new: Vec<assim_cma::host_new::HostNewChange>,
    /// Statistics points for Graphite, appended to the durable queue that the forwarder
    /// empties (issue 17 item 5; see [`crate::statistics`]).
    pub statistics: Vec<assim_cma::statistics::StatPoint>,
}

/// A node's spool incarnation as a hello of this batch told it (issue 16 item 9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolIncarnation {
    /// The incarnation to store.
    pub incarnation: u64,
    /// It replaced another one: the node's spool was lost or reset and numbers its records
    /// from 1 again, so its applied record is *replaced* by this batch's entry in
    /// [`InboxProgress::applied`] (which the engine then always sets), not raised to it.
    pub reset: bool,
}

/// The latest result of one discovery collector on one node: the core's record.
pub use assim_cma::DiscoveryRecord;

/// An enrollment token as the CMA keeps it: the secret only as its SHA-256
/// (`assim_seal::secret_hash`), which a presented secret is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: [u8; 16],
    pub secret_hash: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// 0 = unlimited.
    pub max_uses: u64,
    pub uses: u64,
}

impl TokenRecord {
    /// Whether the token may enroll one more node at `now`.
    pub fn usable(&self, now: Timestamp) -> bool {
        now < self.expires_at && (self.max_uses == 0 || self.uses < self.max_uses)
    }
}
