//! The topology graph's canned queries (`/api/v1/topology/…`, `assim hosts|host|find|ports|…`):
//! one row type per answer. Every answer is a JSON array of these rows. Addresses and node ids
//! are strings as the store keeps them (addresses canonical: IPv4-mapped IPv6 shown as IPv4).

use serde::{Deserialize, Serialize};

/// A host that is not running: `down` (crashed: no goodbye; the ring declared it dead) or
/// `left` (said goodbye).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownHost {
    pub host: String,
    pub node: String,
    pub state: String,
    /// When it entered the state, µs since the epoch.
    pub since: u64,
    /// The text of its last `host.down` / `host.left` event, if still stored.
    pub last_event: Option<String>,
}

/// A listening socket of a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub host: String,
    pub node: String,
    pub protocol: String,
    /// Bound address (`0.0.0.0` / `::` for every address).
    pub ip: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub cmdline: String,
    pub user: Option<String>,
    /// How many other hosts have connections to it.
    pub client_hosts: u64,
    /// Checks watching it (from the `monitors` table).
    pub monitors: Vec<String>,
}

/// A client → service edge between two hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub client_host: String,
    pub client_node: String,
    pub client_state: String,
    pub client_pid: Option<u32>,
    pub client_exe: Option<String>,
    pub server_host: String,
    pub server_node: String,
    pub server_state: String,
    /// The address the client connects to.
    pub server_ip: String,
    pub port: u16,
    /// The listener's bound address (may be a wildcard).
    pub service_ip: String,
    pub server_pid: Option<u32>,
    pub server_exe: Option<String>,
    /// Established connections behind the edge.
    pub connections: u64,
}

/// Where an IP address was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSighting {
    pub ip: String,
    /// `address`: configured on the host's NIC; `arp`: in the host's ARP cache.
    pub how: String,
    pub host: String,
    pub node: String,
    pub interface: String,
    /// The NIC's MAC (`address`) or the MAC the neighbour answered with (`arp`).
    pub mac: Option<String>,
    pub prefix_len: Option<u8>,
    pub subnet: Option<String>,
}

/// Where a MAC address was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacSighting {
    pub mac: String,
    /// `nic`: a host's NIC; `arp`: another host's ARP cache; `switch`: an LLDP chassis id.
    pub how: String,
    pub host: Option<String>,
    pub node: Option<String>,
    pub interface: Option<String>,
    /// NIC addresses (`nic`), the neighbour IP (`arp`), the switch name (`switch`).
    pub detail: String,
}

/// One host NIC wired to one switch port, as LLDP or CDP told the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchPortLink {
    pub host: String,
    pub node: String,
    pub nic: String,
    pub mac: Option<String>,
    pub protocol: String,
    pub chassis_id: String,
    pub switch_name: Option<String>,
    pub switch_description: Option<String>,
    pub platform: Option<String>,
    pub management_addresses: Vec<String>,
    pub port_id: String,
    pub port_description: Option<String>,
    pub vlan: Option<String>,
    /// When the switch was last heard, µs since the epoch.
    pub last_seen: u64,
}

/// An installed package on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageHit {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub manager: String,
    pub host: String,
    pub node: String,
}

/// An address in some host's ARP cache that is on no known host's NIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownIp {
    pub ip: String,
    pub mac: String,
    /// The host whose ARP cache has it.
    pub seen_by: String,
    pub node: String,
    pub interface: String,
}

/// A subnet and how many hosts have an address in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub subnet: String,
    pub family: u8,
    pub hosts: u64,
    pub addresses: u64,
}

/// One change of the graph: rows of one kind added and removed when a collector result of a
/// host changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: u64,
    /// µs since the epoch (when the CMA stored the result).
    pub time: u64,
    pub host: String,
    pub node: String,
    pub collector: String,
    /// `nic`, `ip`, `service`, `dependency`, `package`, `switch_port`, …
    pub kind: String,
    pub added: u64,
    pub removed: u64,
    /// Up to 50 labels of each (the counts are always complete).
    pub added_labels: Vec<String>,
    pub removed_labels: Vec<String>,
}
