//! The assim wire protocol, version 2, with no IO.
//!
//! This crate owns what travels between a nanoprobe and the CMA (and between two nanoprobes):
//! node identities, the fixed datagram header, the size limits every decoder checks before it
//! allocates, and the message types of both directions. Sealing (encryption and authentication)
//! lives in `assim-seal`, reliable delivery and fragmentation in `assim-reliable`; both build on
//! the types here.
//!
//! Messages are encoded as Protocol Buffers (via `prost` derives, no code generation): every field
//! has a tag, and a decoder skips tags it does not know, so a v1 node reads a v2 message and simply
//! ignores what it does not understand. Removing or renumbering a field is never allowed; adding
//! one is.
//!
//! Layout:
//! - [`id`]: [`NodeId`], the UUIDv7 that names a node forever (addresses change, ids do not).
//! - [`header`]: the 40-byte datagram header, the mac1 trailer and [`DatagramKind`].
//! - [`limits`]: datagram, fragment and message size limits.
//! - [`msg`]: the messages, [`msg::Message`] (reliable, both directions) and [`msg::Direct`]
//!   (unreliable: heartbeats and the CMA's liveness probes).
//! - [`time`]: [`Timestamp`], wall-clock microseconds used in messages and by the CMA core.
//! - [`stat_rules`]: what a statistic's name, tags and value may be (both ends check them).

pub mod header;
pub mod id;
pub mod limits;
pub mod msg;
pub mod stat_rules;
pub mod time;

pub use header::{DatagramKind, Header, HeaderError};
pub use id::NodeId;
pub use time::Timestamp;

/// This build's version, reported in hello messages and by the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol version this crate speaks, carried in every datagram header. Version 2 added
/// the mac1 trailer and the padded key request ([`header`]).
pub const PROTOCOL_VERSION: u8 = 2;
