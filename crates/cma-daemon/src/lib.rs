//! The CMA daemon: the tokio driver that puts the CMA core on the network, its HTTP API and
//! metrics, the event bus runner, plus the `cma` binary's settings.
//!
//! The driver is one task that owns its cores outright (no mutex around protocol state): it
//! reads datagrams, opens them with `assim-seal`, feeds frames to `assim-reliable` connections
//! and messages to the core, drains the core's actions, writes what must be durable, and sends
//! what must be sent. Timers are the cores' `poll_timeout`s. This is the crate that picks the
//! storage engine ([`store`]: SQLite, `assim-store-sqlite`, by default; PostgreSQL,
//! `assim-store-postgres`, with `--store postgres://…`).
//!
//! Layout:
//! - [`cma`]: the CMA driver: UDP endpoint, timers, the CMA shell (enrollment, inbox, the
//!   decision core `assim_cma::Authority`, the store); `cma::checks_cma` carries the API's
//!   service-monitoring requests to the shell and keeps their reply channels.
//! - [`api`]: the HTTP API (status, events with long-poll) and Prometheus `/metrics`.
//! - [`api_access`]: who may call the API (Host header, the operator's token file) and which
//!   programs checks set through it may run.
//! - [`api_topology`]: the topology query routes of the HTTP API.
//! - [`api_checks`]: the service routes of the HTTP API (`services`, `checks/run`).
//! - [`api_export`]: the export routes (known hosts, SSHFP, the inventory of `assim export`).
//! - [`api_fleet`]: the fleet questions (shared SSH keys, processes, OS and kernel, MAC
//!   vendors, addresses without DNS names) and the Graphviz export; [`reverse_dns`] is its
//!   resolver.
//! - [`api_audit`]: the security audit (`assim audit`): scores per host, rule and category.
//! - [`api_bus`]: the event bus routes of the HTTP API (filters, SSE, durable subscriptions).
//! - [`api_web`]: the web page (`assim-web`) on the API's listener and guard.
//! - [`api_session`]: the web page's sign-in (`/login`, `/logout`): browser sessions opened
//!   with the operator token, and the same-origin rule for the page's form posts.
//! - [`api_limits`]: what one API client can hold (connections, held requests, store calls,
//!   answer sizes) and the `503`/`422` answers past each bound.
//! - [`metrics`]: counters shared between the CMA task and the API.
//! - [`ping`]: ICMP pings of switch management addresses for the core's switch checks.
//! - [`graphite`]: the Graphite forwarder (the durable statistics queue into carbon) and the
//!   statistics settings; [`api_statistics`]: their Prometheus exposition.
//! - [`retention`]: the bound on the topology history (age and rows).
//! - [`inbox`]: the engine's inbox, local (`DATA_DIR/inbox`) or on JetStream (`--queue`).
//! - [`store`]: `--store` (SQLite file or PostgreSQL URL, the password never printed), the
//!   engine's store and the handles the API, the bus and retention open.
//! - [`import`]: `cma import`, an embedded CMA's SQLite store moved into PostgreSQL.
//! - [`settings`]: flags/env/file resolution, `--print-config`, `cma token create`;
//!   `src/main.rs` is the binary.

pub mod api;
pub mod api_access;
pub mod api_audit;
pub mod api_bus;
pub mod api_checks;
pub mod api_export;
pub mod api_fleet;
pub mod api_limits;
pub mod api_session;
pub mod api_statistics;
pub mod api_topology;
pub mod api_web;
pub mod cma;
pub mod graphite;
pub mod import;
pub mod inbox;
pub mod metrics;
pub mod ping;
pub mod reader;
pub mod retention;
pub mod reverse_dns;
pub mod settings;
pub mod store;
