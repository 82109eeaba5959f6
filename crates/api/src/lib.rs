//! The answers of the CMA's HTTP API, as both sides see them: `assim-cma-daemon` serves these
//! types and `assim` (the CLI) reads them. Serde only: no IO, no storage engine, no HTTP.
//!
//! One spelling of every event type everywhere: `"type": "host.down"` in the API, in
//! `assim events --json`, in sinks and on NATS (reading still accepts the old
//! `"kind": "HostDown"` for one release).
//!
//! Layout:
//! - [`events`]: [`Event`], an event as the API and every sink give it.
//! - [`status`]: `/api/v1/status` ([`StatusView`], [`NodeView`], [`CmaInfo`]).
//! - [`discovery`]: `/api/v1/discovery` ([`DiscoveryView`]).
//! - [`bus`]: the durable subscriptions ([`SubscriptionView`], [`SubscriptionBatch`],
//!   [`AckBody`]).
//! - [`services`]: `/api/v1/services` and `/api/v1/checks` ([`ServiceView`],
//!   [`CheckListEntry`], [`StoredCheck`]).
//! - [`topology`]: the rows of the topology queries under `/api/v1/topology/…` ([`DownHost`],
//!   [`Service`], [`Dependency`], [`IpSighting`], [`MacSighting`], [`SwitchPortLink`],
//!   [`PackageHit`], [`UnknownIp`], [`Subnet`], [`HistoryEntry`]).
//! - [`export`]: `/api/v1/export/inventory` ([`InventoryHost`]), what `assim export …` renders.
//! - [`audit`]: the security audit under `/api/v1/audit…` ([`AuditSummary`], [`AuditResult`]).
//! - [`fleet`]: the fleet questions under `/api/v1/fleet/…` ([`KeyUse`], [`ProcessRow`],
//!   [`OsRow`], [`MacRow`], [`AddressName`]).
//! - [`rings`]: the network-aware rings and the switches ([`RingView`], [`RingMember`],
//!   [`SwitchView`], [`SwitchHost`]).
//!
//! The read side of the storage engines (`assim_store::Queries`) answers with these types, so
//! the HTTP API serves what the engine returns and the CLI reads it back unchanged.

pub mod audit;
pub mod bus;
pub mod discovery;
pub mod events;
pub mod export;
pub mod fleet;
pub mod rings;
pub mod services;
pub mod status;
pub mod topology;

pub use audit::{AuditHost, AuditResult, AuditRuleInfo, AuditScore, AuditSummary};
pub use bus::{AckBody, SubscriptionBatch, SubscriptionView};
pub use discovery::DiscoveryView;
pub use events::Event;
pub use export::{HostKey, InventoryHost, Listener, SwitchUplink};
pub use fleet::{AddressName, KeyUse, MacRow, OsRow, ProcessRow};
pub use rings::{RingMember, RingView, SwitchHost, SwitchView};
pub use services::{CheckListEntry, CheckRun, ServiceView, StoredCheck};
pub use status::{CmaInfo, EngineView, NodeView, StatusView};
pub use topology::{
    Dependency, DownHost, HistoryEntry, IpSighting, MacSighting, PackageHit, Service, Subnet,
    SwitchPortLink, UnknownIp,
};
