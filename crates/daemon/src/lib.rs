//! The tokio drivers that put the sans-IO cores on the network.
//!
//! Each driver is one task that owns its cores outright (no mutex around protocol state): it
//! reads datagrams, opens them with `assim-seal`, feeds frames to `assim-reliable` connections
//! and messages to the core, drains the core's actions, writes what must be durable, and sends
//! what must be sent. Timers are the cores' `poll_timeout`s.
//!
//! Layout:
//! - [`cma`]: the CMA driver: UDP endpoint, enrollment, the CMA core, the SQLite store.
//! - [`nanoprobe`]: the nanoprobe driver: CMA pinning, registration, heartbeats, graceful leave.
//! - [`api`]: the CMA's HTTP API (status, events with long-poll) and Prometheus `/metrics`.
//! - [`metrics`]: counters shared between the CMA task and the API.
//! - [`timers`]: a small deadline set keyed by peer, used for many reliable connections.

pub mod api;
pub mod cma;
pub mod metrics;
pub mod nanoprobe;
pub mod timers;

/// This build's version, reported in hello messages and by the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
