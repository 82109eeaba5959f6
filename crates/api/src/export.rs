//! `GET /api/v1/export/inventory`: what the exports (`assim export …`: known hosts, SSHFP,
//! Nagios and Icinga 2 configuration, Prometheus service discovery) are made from — one row per
//! host with its names, addresses, SSH host keys, OS, switch ports, checks and listeners.
//! `assim-export` builds the rows from the other answer types and renders the files.

use serde::{Deserialize, Serialize};

/// One host as the exports see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryHost {
    /// The host name it registered with.
    pub host: String,
    pub node: String,
    /// `up`, `down`, `left`, …
    pub state: String,
    /// The fully qualified name its `os` discovery found, when it differs from `host`.
    #[serde(default)]
    pub fqdn: Option<String>,
    /// Its interface addresses without prefix (loopback and IPv6 link-local left out), IPv4
    /// first.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The subnets of those addresses (`192.0.2.0/24`).
    #[serde(default)]
    pub subnets: Vec<String>,
    /// os-release `ID` (`debian`), if discovered.
    #[serde(default)]
    pub os: Option<String>,
    /// os-release `PRETTY_NAME`, if discovered.
    #[serde(default)]
    pub os_name: Option<String>,
    /// Its SSH host public keys (discovery `ssh_host_keys`).
    #[serde(default)]
    pub ssh_host_keys: Vec<HostKey>,
    /// The switch ports its NICs are wired to (LLDP/CDP).
    #[serde(default)]
    pub switches: Vec<SwitchUplink>,
    /// The names of the checks the CMA runs on it (the Nagios sink's service names).
    #[serde(default)]
    pub checks: Vec<String>,
    /// Its listening TCP sockets (discovery `sockets`).
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// An SSH host public key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostKey {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …
    pub key_type: String,
    /// The base64 key blob.
    pub key: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// A switch a host's NIC is wired to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SwitchUplink {
    pub chassis_id: String,
    pub switch_name: Option<String>,
    /// The switch's management addresses, as it announces them.
    #[serde(default)]
    pub management_addresses: Vec<String>,
    pub port_id: String,
    pub nic: String,
}

/// A listening TCP socket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listener {
    /// Bound address (`0.0.0.0` / `::` for every address).
    pub ip: String,
    pub port: u16,
    /// The listening program's executable, if discovery saw it.
    pub exe: Option<String>,
}
