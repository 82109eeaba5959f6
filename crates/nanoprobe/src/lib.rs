//! The nanoprobe: the tokio driver of the nanoprobe shell (`assim-probe-shell`: heartbeat core,
//! reliable link to the CMA, spool, check and discovery schedules) on one host, plus the
//! `nanoprobe` binary's settings.
//!
//! The driver is one task that owns the shell outright (no mutex around protocol state): it
//! feeds it datagrams, timer expiries, local events and check and collector results with
//! `now`, sends the datagrams it seals, re-arms one timer at its `poll_timeout`, and carries
//! out its events (run a check or collector, stop). Every decision is the shell's, so the
//! simulator runs the same logic. This package goes on every host: its dependency tree has no
//! SQLite, HTTP server or NATS client.
//!
//! Layout:
//! - [`nanoprobe`]: the driver: CMA pinning, the shell over the disk spool (also used by
//!   `assim loadgen`), the event loop, the metrics file.
//! - [`local_socket`]: `events.sock`, where local programs submit events and heartbeats.
//! - [`local_checks`]: checks declared by local programs: plugin validation, run-as user.
//! - [`local_state`]: `local.json`, the local programs' registrations across restarts.
//! - [`discovery`]: runs collectors and agents, the LLDP/CDP listener, lists the agents.
//! - [`checks_probe`]: runs service checks.
//! - [`host_figures`]: reads the host figures sent as statistics (load, memory, root
//!   filesystem).
//! - [`settings`]: flags/env/file resolution, `--print-config`; `src/main.rs` is the binary.
//! - [`memory`]: the allocator settings that keep the idle agent small (glibc `mallopt`), and
//!   the name sources of a statically linked build.

pub mod checks_probe;
pub mod discovery;
pub mod host_figures;
pub mod local_checks;
pub mod local_socket;
pub mod local_state;
pub mod memory;
pub mod nanoprobe;
pub mod settings;
