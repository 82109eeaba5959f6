//! The nanoprobe's heartbeat core, with no IO.
//!
//! This crate owns heartbeat send/expect between ring neighbours: which peers to heartbeat (the
//! CMA's desired peer set, converged by epoch), when to send, when a silent peer is late or dead,
//! when it is back, which heartbeats are martians, and when to tell the CMA (reports, and a
//! periodic-on-change peer status). It is a sans-IO state machine in the style of quinn-proto:
//! inputs take `now`, [`Heartbeats::poll_timeout`] says when to call back, and
//! [`Heartbeats::poll_action`] yields what to send. No clocks, sockets, threads or randomness,
//! so the daemon and the 100,000-node simulator run the same code. Sealing heartbeats and
//! delivering reports reliably are the driver's business (`assim-seal`, `assim-reliable`).
//!
//! Layout:
//! - [`heartbeats`]: [`Heartbeats`], the state machine, with [`Action`], [`Applied`], [`Stats`].
//! - [`peer_set`]: [`DesiredPeers`] and [`PeerInfo`], validated from the wire `PeerSet`, and
//!   [`PeerSetError`].
//! - [`timing`]: [`Timing`] (interval / warn / dead) and its validation.
//! - [`peer_probe`]: [`PeerProbes`], the probes of other nodes the CMA asks for
//!   (`ProbeRequest` → `ProbeResult`, issue 13).
//! - `martian`: the bounded per-sender rate limiter for martian reports.

#![forbid(unsafe_code)]

pub mod heartbeats;
mod martian;
pub mod peer_probe;
pub mod peer_set;
pub mod timing;

pub use heartbeats::{Action, Applied, Heartbeats, Stats};
pub use martian::MARTIAN_MEMORY;
pub use peer_probe::{PeerProbeOutput, PeerProbes};
pub use peer_set::{DesiredPeers, MAX_PEERS, PeerInfo, PeerSetError};
pub use timing::{MAX_DEAD, Timing};
