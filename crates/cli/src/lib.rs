//! The `assim` program: the operator's CLI, the demo, the simulator, and the process harness.
//!
//! `assim` is multicall: `assim cma …` and `assim nanoprobe …` run the same code as the
//! standalone `cma` (package `assim-cma-daemon`) and `nanoprobe` (package `assim-nanoprobe`)
//! binaries, so one binary is enough for the demo and the integration tests.
//!
//! The binary is thin: flags, logging and signals; the work is done by the daemon packages, the
//! HTTP API (through [`client`]) and `assim-sim`. Every query command (status, events, services,
//! checks, the topology) reads the CMA's HTTP API and decodes the `assim-api` answer types; the
//! CLI opens no store itself, so no storage engine is named here (the SQLite engine comes in
//! only with the embedded `cma` of the multicall, through `assim-cma-daemon`).
//!
//! Layout:
//! - [`client`]: the HTTP client behind `assim status` and `assim events`.
//! - [`cluster`]: starts and stops a CMA and nanoprobes as real processes on loopback (the demo,
//!   the integration tests and the ring benchmark).
//! - [`demo`]: `assim demo`; [`demo_cluster`]: `assim demo --cluster`.
//! - [`app_cli`]: `assim app heartbeat|done|list` (heartbeats from local programs).
//! - [`bus`]: the event bus commands (`event send`, `events --filter`, `subscribe`,
//!   `subscriptions`).
//! - [`checks_cli`]: `assim services` and `assim check run`.
//! - [`query`]: the topology queries (`assim hosts`, `host`, `find`, `ports`, `packages`, …).
//! - [`export_cli`]: `assim export …` (known hosts, SSHFP).
//! - [`listen_l2`]: `assim decode-l2 --listen`.
//! - [`loadgen`]: `assim loadgen`, simulated senders pushing spooled reports at a CMA
//!   (durability tests, ingest benchmark).
//! - [`fleet_cli`]: `assim keys|processes|os|macs|addresses`, the fleet questions.
//! - [`flood`]: `assim flood`, a first-contact flood from random identities and loopback
//!   sources (the flood benchmark).

pub mod app_cli;
pub mod bus;
pub mod checks_cli;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod demo_cluster;
pub mod export_cli;
pub mod fleet_cli;
pub mod flood;
pub mod listen_l2;
pub mod loadgen;
pub mod query;
