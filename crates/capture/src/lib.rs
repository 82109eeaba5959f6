//! assim-capture: the passive LLDP/CDP listener. It reads what switches announce on every up,
//! non-loopback Ethernet interface through one AF_PACKET socket with a classic BPF filter (no
//! libpcap), sends nothing, and keeps a sans-IO table of neighbours that the nanoprobe reports
//! as the `l2neighbors` discovery collector. Decoding is `assim-l2`'s.
//!
//! This is the one crate allowed `unsafe`, and only in `sys`: four socket calls for which no
//! safe wrapper exists. Without CAP_NET_RAW, [`Listener::open`] fails with
//! [`CaptureError::Permission`] and the caller carries on without LLDP/CDP.
//!
//! Layout:
//! - [`filter`]: the BPF program (LLDP ethertype, CDP multicast + SNAP) and an interpreter to
//!   test it.
//! - [`neighbours`]: [`L2Neighbours`], the neighbour table with TTL expiry, and the
//!   [`L2Report`] payload (sans-IO).
//! - [`listener`]: [`Listener`], the tokio driver: socket, multicast membership, interface
//!   rescans, [`Listener::run`].
//! - `sys`: the `unsafe` syscall wrappers.

pub mod filter;
pub mod listener;
pub mod neighbours;
mod sys;

pub use listener::{CaptureError, Frame, Interface, Listener, scan_interfaces};
pub use neighbours::{FrameOutcome, L2Neighbours, L2Report, Neighbor};
