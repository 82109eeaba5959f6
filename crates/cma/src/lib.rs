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
//! [`Authority`] is the whole core a CMA shell drives: [`Cma`] plus every piece of desired
//! state a nanoprobe is sent besides its peer set — the discovery schedule and its epoch
//! ([`schedule`]), the check set computed from monitoring rules and `sockets` discovery with
//! the memory of stopped services ([`check_sets`]), run-now commands, hand-set checks — and
//! what must be stored for them ([`DesiredChange`], restored through [`DesiredSnapshot`]).
//! Its module doc ([`desired`]) lists each entry point and the daemon code it replaces. No
//! clock is read: epochs come from persisted state, times from `now`.
//!
//! Layout:
//! - [`desired`]: [`Authority`], its [`Output`]s, [`DesiredChange`], [`DesiredSnapshot`].
//! - [`schedule`]: the discovery schedule and its persisted epoch.
//! - [`check_sets`]: check sets from rules × listeners, stopped services, hand-set checks.
//! - [`model`]: the data exchanged with drivers — [`Timing`], [`CmaConfig`], [`NodeRecord`],
//!   [`Event`], [`Snapshot`], [`Action`], [`Change`], [`HelloError`], [`Stats`].
//! - [`ring`]: [`ring::Ring`] (one cycle ordered by a hash of the node id) and
//!   [`ring::RingManager`] (issue 13: a home ring per switch/segment/pin, the `unwired`
//!   fallback ring, an upper ring of two representatives per home ring, watchers).
//! - [`wiring`]: a node's ring from its `l2neighbors` and `interfaces` results and the
//!   operator's pins ([`wiring::derive()`]).
//! - [`failure`]: the suspicion FSM — reporters, probe schedule, deadlines, proof of life.
//! - [`incident`]: switch incidents — ring checks, `switch.down`/`switch.unreachable`, hosts
//!   UNREACHABLE, the return window and `switch.up`.
//! - `cma`: [`Cma`] itself, tying lifecycle, rings, suspicions and events together.
//! - [`services`]: service check state changes into `service.*` events
//!   ([`Cma::handle_check_change`]).
//! - [`audit_watch`]: audit rule results per host and `audit.failed` / `audit.passed`.
//! - [`host_keys`]: the SSH host keys each host reported and `host.key_changed`.
//! - [`host_new`]: the first-boot hook, `host.new`, once per node id, with its OS and keys.
//! - [`local_events`]: events submitted by programs on a host ([`Cma::handle_local_event`]).
//! - [`statistics`]: statistics batches checked ([`Authority::handle_statistics`]), named for
//!   Graphite, kept for Prometheus ([`statistics::Latest`]), and the carbon link's backoff.

#![forbid(unsafe_code)]

pub mod audit_watch;
pub mod check_sets;
mod cma;
pub mod desired;
pub mod failure;
pub mod host_keys;
pub mod host_new;
pub mod incident;
pub mod local_events;
pub mod model;
pub mod ring;
pub mod schedule;
pub mod services;
pub mod statistics;
pub mod wiring;

pub use crate::cma::{
    Cma, MAX_UNREACHABLE_WINDOWS, PEER_PROBE_TARGETS, PEER_PROBERS, Suppression, SwitchReturn,
};
pub use crate::desired::{
    Authority, AuthorityConfig, ChecksError, CommandAnswer, DesiredChange, DesiredSnapshot,
    DiscoveryError, DiscoveryRecord, Output, ServiceStateRecord,
};
pub use crate::model::{
    Action, Change, CmaConfig, Event, EventKind, HelloError, NodeRecord, NodeState, ParseNameError,
    Severity, Snapshot, Stats, Timing,
};
