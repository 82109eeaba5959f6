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

pub mod bus;
pub mod discovery;
pub mod events;
pub mod status;

pub use bus::{AckBody, SubscriptionBatch, SubscriptionView};
pub use discovery::DiscoveryView;
pub use events::Event;
pub use status::{CmaInfo, NodeView, StatusView};
