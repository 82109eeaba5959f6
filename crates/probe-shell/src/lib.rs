//! The nanoprobe *shell*, without IO: everything a nanoprobe decides above its cores, driven
//! alike by the tokio daemon, by the simulator in virtual time and by wire mode.
//!
//! A [`Shell`] owns the heartbeat core ([`assim_probe::Heartbeats`]), the reliable connection to
//! the CMA ([`assim_reliable::Connection`]), the spool ([`Spool`], an `assim-log` over any
//! [`assim_log::Storage`]: files in the daemon, [`assim_log::MemStorage`] in the simulator), the
//! hello/goodbye/CMA-restart rules, the resend rules of the spool, and the check and discovery
//! schedules ([`assim_checks::Scheduler`], [`assim_discovery::Schedule`]). Inputs take `now`;
//! outputs are datagrams ([`Shell::poll_transmit`], or sealed with [`Shell::poll_datagram`])
//! and [`Event`]s (run this check or collector, stop, …); [`Shell::poll_timeout`] gives the
//! next deadline. The driver owns sockets, timers and processes, and nothing else.
//!
//! The rules:
//! - **Hello** on [`Shell::start`] and whenever the reliable connection reports that the CMA
//!   restarted (its session changed), except while leaving: then the goodbye, which the
//!   reliable layer resends to the new CMA, is what it must see. The hello carries the epoch
//!   of the peer set in force.
//! - **Spool**: heartbeat reports, peer status, check state changes, discovery results and
//!   local events go through [`Shell::send_spooled`]: appended, made durable by the group
//!   commit in [`Shell::poll_transmit`] and only then sent; `Ack { through }` from the CMA
//!   deletes them. Unacknowledged records are sent again after a restart ([`Shell::start`]),
//!   after a CMA restart (after the new hello), and after [`RESEND_AFTER`] without progress while
//!   the connection is idle.
//! - **A full spool** (issue 16 item 10): state (heartbeat reports, peer status, statistics,
//!   check results, discovery results) waits in a bounded in-memory backlog, the latest word
//!   per subject (`backlog`), and goes into the spool as soon as it has room; local events are
//!   refused at the source ([`NotSpooled::Refused`]: `events.sock` tells the submitter). Only
//!   when the spool is *unavailable* (its disk failed) is a message sent without its
//!   protection (record 0); if the reliable queue to the CMA is full too, it waits in the
//!   backlog as well. Nothing is dropped silently; the counts are in [`SpoolStats`].
//! - **The reporter's time**: heartbeat reports and peer status are stamped (`at`) with the
//!   nanoprobe's own clock ([`WallClock`]) when they are spooled, unless already stamped; the
//!   CMA orders evidence that waited in a spool through an outage by it (issue 12 item 6).
//! - **Limits** ([`limits`]): one message limit for spool and reliable layer; an oversized
//!   message is replaced at the source by its error form (issue 16 item 2).
//! - **Failed fsync**: the spool is reopened and the pending records spooled again
//!   ([`spool`], issue 16 item 8).
//! - **Local programs** ([`apps`]): a registered program that misses its TTL is reported once
//!   as the check `app:NAME` CRITICAL, its next beat as OK; beats themselves cost no traffic.
//!   The registered names go to the CMA as the discovery result `local_apps` when they change
//!   (registered, another TTL, done), so the Nagios/Icinga exports declare their services.
//! - **Local checks**: checks declared by local programs (`local:NAME`) run beside the CMA's
//!   set; their list goes to the CMA as the discovery result `local_checks` when it changes.
//! - **Statistics** (opt-in, [`stats`], [`stat_sources`]): samples from local programs, each
//!   scheduled check's perfdata and the host figures the driver reads when
//!   [`Shell::host_figures_due`] say so are aggregated per interval and spooled as one batch.
//! - **Goodbye** ([`Shell::leave`]): checks and discovery stop; [`Event::Left`] once the CMA
//!   acknowledged it, [`Event::LeaveTimedOut`] after [`LEAVE_WAIT`].
//! - **Commands**: peer sets go to the heartbeat core (and their keys to the sealer), check sets
//!   and discovery schedules to their schedulers (newest epoch wins), `RunNow` becomes
//!   [`Event::RunCheckNow`], `Shutdown` [`Event::Stop`]; probes are answered at once.
//! - **Peer probes** (issue 13): a `ProbeRequest` makes this nanoprobe probe another node
//!   ([`assim_probe::PeerProbes`]: up to three probes within the request's timeout) and send
//!   the CMA a `ProbeResult` (not spooled: worthless after the decision it was for). The probe
//!   carries our key, since the target may not know us; a probe from a node we hold no key for
//!   is opened as a first contact under the sealer's first-contact budget (one X25519 per
//!   admitted datagram) and answered if it is a probe, nothing else. Keys of such non-peers
//!   are kept for the last [`MAX_TRANSIENT_PEERS`] only.
//! - **Several CMA addresses** (issue 14, [`cma_addrs`]): an authenticated frame of the CMA's
//!   newest session makes its source the current address; when something sent stays
//!   unacknowledged and the CMA is silent for [`cma_addrs::FAILOVER_AFTER`] (doubling per
//!   unanswered round of the list, at most [`cma_addrs::FAILOVER_MAX_DWELL`]), the shell moves
//!   to the next address ([`Shell::with_cma_addrs`]), sends what is unacknowledged there at once
//!   and logs the move once; [`ShellStats::cma_failovers`] counts the moves.
//! - **Packet readers** (issue 14, docs/cluster.md "Sessions"): the CMA's addresses may be
//!   readers of one identity, each with its own sealing and reliable session. The sealer keeps
//!   the CMA's replay state per sender session, a slot per listed address
//!   ([`assim_seal::Sealer::set_peer_sources`]), so probes from every reader are answered and
//!   no datagram is taken twice from any address. After a move the next frame from the new
//!   address is taken whatever its session (`Connection::path_changed`): an older reader's is a
//!   restart like a newer one's, so the hello and everything unacknowledged go to it. Frames
//!   from other addresses keep the session rules (`Connection::handle_frame_off_path`): the
//!   reader left behind, older, moves nothing and disturbs nothing.
//!
//! Sealing: [`Shell::handle_datagram`] and [`Shell::poll_datagram`] open and seal with an
//! [`assim_seal::Sealer`] (daemon, wire mode). The virtual-time simulator passes no sealer and
//! uses the layer below ([`Shell::handle_heartbeat`], [`Shell::handle_cma_frame`],
//! [`Shell::handle_probe`], [`Shell::poll_transmit`]): sealing costs an AEAD seal and open per
//! heartbeat plus an X25519 agreement per new peer (and 100,000 real identities to generate),
//! which proves nothing at that scale that wire mode does not. Not yet measured against the
//! simulator's per-heartbeat cost; measure with
//! `cargo test -p assim-probe-shell --release seal_cost -- --ignored --nocapture`.
//!
//! Layout:
//! - `shell`: [`Shell`], [`ShellConfig`], [`WallClock`], [`Transmit`], [`Datagram`], [`Event`].
//! - `spool`: [`Spool`], [`SpoolStorage`] (reopen after a failed fsync), [`SpoolStats`].
//! - `limits`: [`limits::MAX_MESSAGE`] and the error forms of oversized messages.
//! - `backlog`: what a full spool could not take, coalesced per subject and bounded.
//! - [`stats`]: statistics from local programs: the line protocol's parser and the
//!   per-interval aggregator (issue 17 item 5).
//! - [`stat_sources`]: statistics the nanoprobe makes itself, by config: check perfdata and
//!   host figures (load, memory, root filesystem) as gauges.
//! - [`cma_addrs`]: the CMA's addresses and the failover decision (issue 14).
//! - [`apps`]: heartbeats from local programs: registrations with a TTL, missed deadlines
//!   reported as the check `app:NAME` (issue 17 item 6).

#![forbid(unsafe_code)]

pub mod apps;
mod backlog;
pub mod cma_addrs;
pub mod limits;
mod shell;
pub mod spool;
pub mod stat_sources;
pub mod stats;

pub use crate::shell::{
    Datagram, Event, L2_COLLECTOR, LEAVE_WAIT, LOCAL_CHECK_PREFIX, LOCAL_CHECKS_RESULT,
    MAX_CONCURRENT_CHECKS, MAX_LOCAL_CHECKS, MAX_TRANSIENT_PEERS, NotSpooled, RESEND_AFTER, Shell,
    ShellConfig, ShellStats, Transmit, WallClock,
};
pub use crate::spool::{Spool, SpoolStats, SpoolStorage};

#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod tests;
