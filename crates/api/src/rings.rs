//! The network-aware rings and the switches (`/api/v1/topology/rings`,
//! `/api/v1/topology/switches[/{switch}]`, `assim rings`, `assim switches`, `assim switch SW`):
//! which hosts heartbeat each other, who watches each ring from outside, and which hosts sit
//! behind each switch. Every answer is a JSON array of these rows.

use serde::{Deserialize, Serialize};

/// A host as a ring or a switch lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    pub host: String,
    pub node: String,
    /// The node's state (`up`, `suspect`, `down`, `left`, `unreachable`).
    pub state: String,
}

/// One ring: its members in ring order (each heartbeats its predecessor and successor), its
/// representatives in the upper ring, and the hosts outside it that watch it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingView {
    /// The ring's key: `switch:<chassis id>`, `segment:<subnet>@<gateway>`, `pinned:<name>`,
    /// `unwired` (hosts whose wiring is not known yet) or `upper`; `all` for the single ring
    /// of a CMA without network-aware rings.
    pub ring: String,
    /// `switch`, `segment`, `pinned`, `unwired`, `upper` (or `all`).
    pub kind: String,
    /// For a switch ring, the name the switch announces (LLDP system name, CDP device id),
    /// when a host heard it.
    pub switch_name: Option<String>,
    /// Members in ring order.
    pub members: Vec<RingMember>,
    /// Its members in the upper ring (empty for the upper ring itself, and while there is only
    /// one ring).
    pub representatives: Vec<RingMember>,
    /// Hosts outside the ring that heartbeat its representatives (their upper-ring
    /// neighbours), so a ring that goes silent as a whole is seen from outside.
    pub watchers: Vec<RingMember>,
}

/// A host wired to a switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchHost {
    pub host: String,
    pub node: String,
    /// The node's state (`up`, `suspect`, `down`, `left`, `unreachable`).
    pub state: String,
    pub nic: String,
    pub port_id: String,
    pub port_description: Option<String>,
    /// `lldp` or `cdp`.
    pub protocol: String,
    /// Whether the host heartbeats in this switch's ring (the switch is on its primary NIC's
    /// path); a host with another NIC on another switch may be wired here without it.
    pub in_ring: bool,
}

/// A switch (an LLDP/CDP chassis some host heard) and the hosts behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchView {
    pub chassis_id: String,
    /// The name it announces (LLDP system name, CDP device id).
    pub name: Option<String>,
    pub description: Option<String>,
    pub platform: Option<String>,
    pub management_addresses: Vec<String>,
    /// When a host last heard it, µs since the epoch.
    pub last_seen: u64,
    /// The CMA's verdict from its last switch event: `up`, `down` or `unreachable`; `None`
    /// when no incident was ever raised for it.
    pub state: Option<String>,
    /// The ring of the hosts behind it (`switch:<chassis id>`), when it has members.
    pub ring: Option<String>,
    /// Hosts wired to it, by host name then NIC.
    pub hosts: Vec<SwitchHost>,
}
