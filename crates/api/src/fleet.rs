//! The fleet questions under `/api/v1/fleet/…` (issue 19 item 5): SSH host keys and which hosts
//! share one, processes found by discovery, hosts by OS and kernel, MAC vendors, and addresses
//! without a DNS name. Each row is built at the CMA from the latest discovery results.

use serde::{Deserialize, Serialize};

/// One SSH host key and every host that presents it (`assim keys`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUse {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …
    pub key_type: String,
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The host names presenting it, sorted. More than one: a cloned image, or a copied key.
    pub hosts: Vec<String>,
}

/// One process that owns a socket, as the `sockets` discovery of its host saw it
/// (`assim processes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub host: String,
    pub node: String,
    pub pid: u32,
    /// `readlink /proc/PID/exe`, when it was readable.
    pub exe: Option<String>,
    pub user: Option<String>,
    /// Its command line, when it was readable.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// The addresses it listens on (`tcp 0.0.0.0:22`), sorted.
    #[serde(default)]
    pub listening: Vec<String>,
    /// How many established connections it has.
    pub established: u64,
}

/// One host's operating system and kernel (`assim os`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRow {
    pub host: String,
    pub node: String,
    /// os-release `ID` (`debian`).
    pub os: Option<String>,
    /// os-release `VERSION_ID` (`12`).
    pub version: Option<String>,
    /// os-release `PRETTY_NAME`.
    pub os_name: Option<String>,
    /// `uname -r`.
    pub kernel: String,
    /// `uname -m`.
    pub machine: String,
    /// `kvm`, `docker`, `none`, …
    pub virtualisation: String,
}

/// One MAC address seen in the fleet and its vendor from the IEEE registry (`assim macs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacRow {
    pub mac: String,
    /// The registered organisation, if the registry has the prefix.
    pub vendor: Option<String>,
    /// `known`; `unknown` (no registry entry); `local` (a locally administered address:
    /// virtual machines, containers, bonds — no vendor by design); `unexpected` (a vendor the
    /// caller did not list as expected); `multicast`.
    pub status: String,
    /// `nic`: on a host's interface; `arp`: in a host's neighbour table.
    pub how: String,
    pub host: String,
    pub node: String,
    pub interface: String,
    /// The neighbour's IP (`arp`) or the NIC's addresses (`nic`).
    pub detail: String,
}

/// One host address and the name its reverse lookup gave (`assim addresses`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressName {
    pub address: String,
    pub host: String,
    pub node: String,
    /// The PTR name, without the trailing dot; `None` when there is none.
    pub name: Option<String>,
    /// `ok`, `no-name` (the server answered: no PTR record), `no-answer` (no server answered
    /// in time), or `error: …`.
    pub lookup: String,
}
