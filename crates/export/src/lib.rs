//! Exports of what the CMA knows, as the files other systems read (issue 17). Sans-IO: answer
//! types (`assim-api`) in, text out; the CMA's HTTP API serves the results
//! (`crates/cma-daemon/src/api_export.rs`) and `assim export …` writes them.
//!
//! Layout:
//! - [`inventory`]: the rows every export is made from ([`assim_api::InventoryHost`]), from the
//!   nodes, their `ssh_host_keys`, `os` and `sockets` discovery, switch ports and checks.
//! - [`known_hosts`]: `ssh_known_hosts` (plain or hashed) and DNS SSHFP records.
//! - [`monitoring`]: Nagios and Icinga 2 configuration (hosts, parents/dependencies from the
//!   LLDP wiring, passive services, host groups by switch, subnet and OS).
//! - [`dns`]: reverse (PTR) lookups in DNS wire format, sans-IO.
//! - [`dot`]: a Graphviz picture of switches, hosts, wires and dependencies, or of one
//!   host's neighbourhood.
//! - [`fleet`]: the fleet questions — shared SSH keys, processes, OS and kernel, MAC vendors.
//! - [`oui`]: the IEEE MAC prefix registry (Debian `ieee-data`).
//! - [`prometheus`]: Prometheus HTTP SD (`file_sd` too): the exporters discovery found
//!   listening, by a rule table of exporter programs and ports, labelled host, switch, subnet, OS.
//! - [`names`]: what a name or address must be to be written anywhere (hostile input).
//! - [`sha1`]: SHA-1 and HMAC-SHA1, which the OpenSSH formats require.

pub mod dns;
pub mod dot;
pub mod fleet;
pub mod inventory;
pub mod known_hosts;
pub mod monitoring;
pub mod names;
pub mod oui;
pub mod prometheus;
pub mod sha1;

pub use inventory::{Inventory, Sources, inventory};
pub use known_hosts::{known_hosts, sshfp};
