//! The seams between the CMA and its storage engines. No engine lives here: this crate names no
//! SQL dialect and no database client, so the daemon, the simulator, the HTTP API and the event
//! bus can depend on it without pulling one in.
//!
//! Seams (traits named for what the caller needs; engines implement them side by side):
//! - `Inbox`: the CMA's durable inbox of authenticated records (append, sync, read from a
//!   position, remove through). Embedded: the `assim-log` record log; at scale: JetStream.
//! - `EngineStore`: what the CMA engine writes (apply one batch atomically together with the
//!   inbox position) and reads back at start (the snapshot).
//! - `Queries`: what the HTTP API and the CLI read (status, events, topology, services).
//! - `EventLog`: the event log and the durable subscription cursors of the event bus.
//!
//! Embedded engine: `assim-store-sqlite` (the only crate that names rusqlite). In-memory
//! implementations for the simulator and tests live here.
//!
//! Layout: (the traits arrive with the shells; see issue 12.)
