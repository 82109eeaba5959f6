//! The nanoprobe: the tokio driver that puts the heartbeat core, the spool and the discovery and
//! check schedules of one host on the network, plus the `nanoprobe` binary's settings.
//!
//! The driver is one task that owns its cores outright (no mutex around protocol state): it
//! reads datagrams, opens them with `assim-seal`, feeds frames to its `assim-reliable`
//! connection to the CMA and heartbeats to the `assim-probe` core, drains the core's actions,
//! spools what the CMA must get, and sends what must be sent. Timers are the cores'
//! `poll_timeout`s. This package goes on every host: its dependency tree has no SQLite, HTTP
//! server or NATS client.
//!
//! Layout:
//! - [`nanoprobe`]: the driver: CMA pinning, registration, heartbeats, graceful leave.
//! - [`link`]: the spooled, reliable connection to the CMA (also used by `assim loadgen`).
//! - [`local_socket`]: `events.sock`, where local programs submit events.
//! - [`discovery`]: the discovery driver (schedule, collectors, agents, LLDP/CDP listener).
//! - [`checks_probe`]: service checks (schedule, runs, state changes, run-now).
//! - [`settings`]: flags/env/file resolution, `--print-config`; `src/main.rs` is the binary.

pub mod checks_probe;
pub mod discovery;
pub mod link;
pub mod local_socket;
pub mod nanoprobe;
pub mod settings;
