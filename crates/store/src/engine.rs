//! [`EngineStore`]: where the CMA engine's state lives — loaded once at start, then written one
//! batch at a time, atomically with the inbox position; [`Tokens`]: the join tokens the
//! enrolment decision checks proofs against. The SQLite store implements both in
//! `assim-store-sqlite`; [`crate::MemStore`] keeps them in memory. PostgreSQL would be another.

use std::collections::BTreeMap;

use assim_cma::{Change, DesiredSnapshot, Event, Snapshot};
use assim_wire::NodeId;

use crate::batch::{InboxProgress, TokenRecord};

/// Why the engine's store refused; nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
#[error("the engine's store failed: {0}")]
pub struct StoreFailed(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// What the engine resumes from at start.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    /// The last inbox position whose effects are stored (0: none).
    pub position: u64,
    /// Per node: the highest spool record whose effects are stored.
    pub applied: BTreeMap<NodeId, u64>,
    /// Per node: the spool incarnation stored with it (issue 16 item 9; absent: none known).
    pub incarnations: BTreeMap<NodeId, u64>,
    /// The desired state the core restores from (schedule, check sets, states, hand-set
    /// checks, remembered services, latest `sockets` results).
    pub desired: DesiredSnapshot,
}

/// The decision engine's state: loaded at start, then written one batch at a time.
pub trait EngineStore {
    /// The snapshot and inbox position to resume from.
    fn load(&mut self) -> Result<Loaded, StoreFailed>;
    /// Writes the changes, events and inbox progress atomically: all of it or nothing.
    fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), StoreFailed>;
}

/// The join tokens enrolment checks proofs against.
pub trait Tokens {
    /// The token with this id, if any.
    fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, StoreFailed>;
    /// Counts one use of the token (one node enrolled with it).
    fn use_token(&mut self, id: &[u8]) -> Result<(), StoreFailed>;
    /// The public key a registered node is stored with, if it is registered: a packet reader
    /// that did not see the node register (another reader enrolled it, issue 14) admits it
    /// without a token when its key is this one.
    fn registered_key(&self, node: assim_wire::NodeId) -> Result<Option<[u8; 32]>, StoreFailed>;
}
