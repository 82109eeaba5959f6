//! The CMA's decision core, with no IO.
//!
//! This crate owns what the Collective Monitoring Authority decides about nodes: their lifecycle
//! (Up, Suspect, Down, Left), the heartbeat rings and every node's desired peer set with its
//! epoch, the corroboration of failure reports (one neighbour's report makes a node suspect; a
//! second neighbour, or the CMA's own unanswered probe, makes it down; a probe answer makes it
//! path trouble), and the events that tell operators about all of it.
//!
//! [`Cma`] is a deterministic state machine in the style of quinn-proto: every input carries
//! `now`; it returns nothing but queues [`Action`]s (persist, send a peer set, probe, emit an
//! event) drained with [`Cma::poll_action`], and reports its next deadline with
//! [`Cma::poll_timeout`]. It reads no clock, opens no socket and draws no randomness (probe
//! nonces count up from the start time), so the daemon and the 100k-node simulator run the same
//! logic. Every operation is O(log n) in the number of nodes; timers live in ordered sets, never
//! in a scan over nodes.
//!
//! Durability: the driver persists [`Change`]s; [`Cma::new`] resumes from a [`Snapshot`] of
//! them. Node records and counters are persisted in the same input that changed them. The ring
//! order is write-behind: a membership change schedules one `Persist(Change::Ring)` one heartbeat
//! interval later (coalescing every change in between), because the order is O(n) long and is
//! derivable from node states anyway — [`Cma::new`] rebuilds it from them and reports any
//! difference from the stored order.
//!
//! Layout:
//! - [`model`]: the data exchanged with drivers — [`Timing`], [`CmaConfig`], [`NodeRecord`],
//!   [`Event`], [`Snapshot`], [`Action`], [`Change`], [`HelloError`], [`Stats`].
//! - [`ring`]: [`ring::Ring`] (one cycle ordered by a hash of the node id) and
//!   [`ring::RingManager`] (rings by key; today the single ring "all").
//! - [`failure`]: the suspicion FSM — reporters, probe schedule, deadlines, proof of life.
//! - `cma`: [`Cma`] itself, tying lifecycle, rings, suspicions and events together.
//! - [`services`]: service check state changes into `service.*` events
//!   ([`Cma::handle_check_change`]).
//! - [`local_events`]: events submitted by programs on a host ([`Cma::handle_local_event`]).

#![forbid(unsafe_code)]

mod cma;
pub mod failure;
pub mod local_events;
pub mod model;
pub mod ring;
pub mod services;

pub use crate::cma::Cma;
pub use crate::model::{
    Action, Change, CmaConfig, Event, EventKind, HelloError, NodeRecord, NodeState, ParseNameError,
    Severity, Snapshot, Stats, Timing,
};
