//! Passive host discovery for the nanoprobe: native collectors that read
//! `/proc`, `/sys` and `/etc` (and `getifaddrs`/`uname` through `nix`), never
//! sending anything on the network. Each collector returns a serialisable
//! struct; [`content_hash`] (SHA-256 of canonical JSON) lets the nanoprobe
//! send a result only when it changed. Parsing is split into pure functions
//! over text, tested with fixed inputs; the readers around them are thin.
//!
//! Layout:
//! - [`collector`] — the registry (name → collect fn), [`Discovery`] results, [`ChangeFilter`].
//! - [`hash`] — canonical JSON and [`content_hash`].
//! - [`interfaces`] — links, addresses/prefixes, default gateways.
//! - [`neighbours`] — IPv4 ARP cache and the [`ArpTracker`] delta engine.
//! - [`ndp`] — IPv6 neighbours through rtnetlink (`RTM_GETNEIGH`).
//! - [`sockets`] — listening sockets and established TCP with owning processes.
//! - [`os`] — os-release, uname, hostname/FQDN, machine-id, virtualisation, boot time.
//! - [`hw`] — CPU model/count, memory totals.
//! - [`packages`] — dpkg status and rpm.
//! - [`mounts`] — `/proc/self/mounts`.
//! - [`sshkeys`] — SSH host public keys and fingerprints.
//! - [`raid`] — md arrays (`/proc/mdstat`, sysfs) and the `raid.degraded`/`raid.recovered`
//!   decisions.
//! - [`block`] — block devices and partitions (`/sys/block`).
//! - [`security`] — sshd's effective settings, PAM, sudoers, login.defs, sysctl, auditd and
//!   the modes of sensitive files, for the CMA's audit rules.
//! - [`integrity`] — file integrity: hashes, owners, dpkg package and md5sum verdict, and
//!   the `file.changed` decisions; [`md5`] only for dpkg's lists.
//! - [`host_events`] — [`HostEvents`]: events the nanoprobe raises from its own results.
//! - [`schedule`] — [`Schedule`]: when each collector runs, from defaults or the CMA (sans-IO).
//! - [`wiring`] — how a host is wired (LLDP/CDP links, primary route): the rules the CMA's
//!   rings and the topology graph share.
//! - [`agents`] — external discovery agents (`agent.<file>`): listing and running one.
//! - [`error`] — [`DiscoveryError`].

pub mod agents;
pub mod block;
pub mod collector;
pub mod error;
pub mod hash;
pub mod host_events;
pub mod hw;
pub mod integrity;
pub mod interfaces;
pub mod md5;
pub mod mounts;
pub mod ndp;
pub mod neighbours;
pub mod os;
pub mod packages;
pub mod raid;
pub mod schedule;
pub mod security;
pub mod sockets;
pub mod sshkeys;
pub mod wiring;

pub use collector::{ChangeFilter, Collector, Discovery};
pub use error::DiscoveryError;
pub use hash::{canonical_json, content_hash, try_content_hash};
pub use host_events::HostEvents;
pub use neighbours::ArpTracker;
pub use schedule::{L2_COLLECTOR, Schedule};

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC*(\n\\PC*){0,8}") {
            let _ = crate::interfaces::parse_route_v4(&text);
            let _ = crate::interfaces::parse_route_v6(&text);
            let _ = crate::interfaces::parse_sys_u32(&text);
            let _ = crate::neighbours::parse_proc_arp(&text);
            let _ = crate::sockets::parse_proc_net(&text);
            let _ = crate::sockets::parse_hex_socket_addr(&text);
            let _ = crate::sockets::parse_socket_link(&text);
            let _ = crate::sockets::parse_cmdline(text.as_bytes());
            let _ = crate::os::parse_os_release(&text);
            let _ = crate::os::fqdn_from_hosts(&text, "h");
            let _ = crate::os::parse_btime(&text);
            let _ = crate::os::parse_uptime(&text);
            let _ = crate::hw::parse_cpuinfo(&text);
            let _ = crate::hw::parse_meminfo(&text);
            let _ = crate::packages::parse_dpkg_status(&text);
            let _ = crate::packages::parse_rpm_qa(&text);
            let _ = crate::mounts::parse_mounts(&text);
            let _ = crate::mounts::unescape_octal(&text);
            let _ = crate::sshkeys::parse_public_key("f", &text);
            let _ = crate::raid::parse_mdstat(&text);
            let _ = crate::raid::parse_sys_word(&text);
            let _ = crate::raid::parse_member_state(&text);
            let _ = crate::block::parse_sys_text(&text);
            let _ = crate::block::parse_sys_u64(&text);
            let _ = crate::integrity::parse_md5sums(&text);
        }

        #[test]
        fn structured_lines_never_panic(
            cols in proptest::collection::vec("[0-9A-Fa-f:x.*\\\\]{0,40}", 0..14)
        ) {
            let line = cols.join(" ");
            let text = format!("header\n{line}\n{line}");
            let _ = crate::interfaces::parse_route_v4(&text);
            let _ = crate::interfaces::parse_route_v6(&text);
            let _ = crate::neighbours::parse_proc_arp(&text);
            let _ = crate::sockets::parse_proc_net(&text);
            let _ = crate::mounts::parse_mounts(&text);
        }
    }
}
