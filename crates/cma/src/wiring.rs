//! Wiring: which ring a host belongs in, derived from its discovery results (sans-IO).
//!
//! Inputs, per node, kept as [`WiringInputs`] (and persisted with the result, so a restarted
//! CMA derives the same thing without the payloads):
//! - the `l2neighbors` result: the LLDP/CDP neighbours heard on each NIC
//!   ([`assim_discovery::wiring::l2_links`], the rules the topology graph uses too);
//! - the `interfaces` result: the host's primary route — the NIC of its lowest-metric IPv4
//!   default route (then IPv6), else its first NIC with a global address — with that NIC's
//!   subnet and gateway ([`assim_discovery::wiring::primary_route`]);
//! - the operator's pin ([`crate::CmaConfig::pins`], by host name or node id).
//!
//! Rule ([`derive()`]), first that applies:
//!
//! | evidence | ring | source |
//! |---|---|---|
//! | a pin names the host | `pinned:<name>` | `pinned` |
//! | an LLDP/CDP neighbour on the primary NIC (or on any NIC while the primary NIC is not known yet) | `switch:<chassis id>` | `lldp` / `cdp` |
//! | the primary NIC's subnet (and gateway) | `segment:<subnet>@<gateway>` (`segment:<subnet>` without a gateway) | `segment` |
//! | nothing yet | `unwired` (the fallback ring, watched like any other) | `unknown` |
//!
//! **Hosts with several NICs on several switches**: the host heartbeats (and reaches the CMA)
//! through its primary NIC, so that NIC's switch is the one whose failure cuts it off; it joins
//! that switch's ring only. Neighbours heard on other NICs are kept (in the inputs, and in the
//! topology graph) but do not place the host. When several neighbours are heard on the primary
//! NIC (LLDP and CDP from one switch, or a hub), the first in (protocol, chassis id, port)
//! order wins — deterministic, so a re-report never moves the host. A host whose primary NIC
//! announces nothing falls back to its segment even if another NIC hears a switch: that switch
//! is not on its path.

use assim_discovery::wiring::{L2Link, PrimaryRoute};
use assim_wire::NodeId;
use serde::{Deserialize, Serialize};

use crate::ring::RingKey;

/// Where a node's ring came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WiringSource {
    /// The operator's pin.
    Pinned,
    /// An LLDP neighbour on the primary NIC.
    Lldp,
    /// A CDP neighbour on the primary NIC.
    Cdp,
    /// The primary NIC's subnet and gateway.
    Segment,
    /// Nothing yet: the fallback ring.
    #[default]
    Unknown,
}

impl WiringSource {
    /// The stable lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            WiringSource::Pinned => "pinned",
            WiringSource::Lldp => "lldp",
            WiringSource::Cdp => "cdp",
            WiringSource::Segment => "segment",
            WiringSource::Unknown => "unknown",
        }
    }
}

/// The switch a host's primary NIC is plugged into, as it announces itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchPort {
    pub chassis_id: String,
    /// The switch's system name (LLDP) or device id (CDP), if given.
    pub system_name: Option<String>,
    pub port_id: String,
    /// Where the switch can be reached for management, if it says.
    pub management_addresses: Vec<String>,
}

/// A node's wiring: its ring and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wiring {
    /// The ring it heartbeats in (`switch:…`, `segment:…`, `pinned:…`, `unwired`).
    pub ring: RingKey,
    pub source: WiringSource,
    /// The NIC that placed it (the primary NIC), if known.
    pub nic: Option<String>,
    /// The switch, when the ring is a switch ring.
    pub switch: Option<SwitchPort>,
    /// `subnet@gateway` (or `subnet`), when the primary route is known.
    pub segment: Option<String>,
}

/// What a wiring was derived from. `None` = never reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WiringInputs {
    pub l2: Option<Vec<L2Link>>,
    pub route: Option<PrimaryRoute>,
}

/// One node's wiring as persisted ([`crate::Change::Wiring`], [`crate::Snapshot::wiring`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWiring {
    pub node: NodeId,
    pub wiring: Wiring,
    pub inputs: WiringInputs,
}

/// The segment name of a primary route: `subnet@gateway`, `subnet`, or `None` without a subnet.
pub fn segment_of(route: &PrimaryRoute) -> Option<String> {
    let subnet = route.subnet.as_ref()?;
    Some(match route.gateway {
        Some(gw) => format!("{subnet}@{gw}"),
        None => subnet.clone(),
    })
}

/// The wiring the inputs imply (see the module doc's table).
pub fn derive(pin: Option<&str>, inputs: &WiringInputs) -> Wiring {
    let nic = inputs.route.as_ref().map(|r| r.nic.clone());
    let segment = inputs.route.as_ref().and_then(segment_of);
    if let Some(name) = pin {
        return Wiring {
            ring: RingKey::pinned(name),
            source: WiringSource::Pinned,
            nic,
            switch: None,
            segment,
        };
    }
    let links = inputs.l2.as_deref().unwrap_or_default();
    let on_path = |l: &&L2Link| nic.as_ref().is_none_or(|n| *n == l.nic);
    let mut candidates: Vec<&L2Link> = links.iter().filter(on_path).collect();
    candidates.sort_by(|a, b| {
        (&a.protocol, &a.chassis_id, &a.port_id).cmp(&(&b.protocol, &b.chassis_id, &b.port_id))
    });
    if let Some(l) = candidates.first() {
        return Wiring {
            ring: RingKey::switch(&l.chassis_id),
            source: if l.protocol == "cdp" { WiringSource::Cdp } else { WiringSource::Lldp },
            nic: Some(l.nic.clone()),
            switch: Some(SwitchPort {
                chassis_id: l.chassis_id.clone(),
                system_name: l.system_name.clone(),
                port_id: l.port_id.clone(),
                management_addresses: l.management_addresses.clone(),
            }),
            segment,
        };
    }
    if let Some(seg) = &segment {
        return Wiring {
            ring: RingKey::segment(seg),
            source: WiringSource::Segment,
            nic,
            switch: None,
            segment,
        };
    }
    Wiring { ring: RingKey::unwired(), source: WiringSource::Unknown, nic, switch: None, segment }
}

/// The most bytes of a ring name taken from discovery (longer chassis ids are cut).
pub const MAX_RING_NAME: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    fn link(nic: &str, proto: &str, chassis: &str) -> L2Link {
        L2Link {
            nic: nic.into(),
            mac: None,
            protocol: proto.into(),
            chassis_id: chassis.into(),
            port_id: "p1".into(),
            port_description: None,
            vlan: None,
            system_name: Some(format!("{chassis}-name")),
            system_description: None,
            platform: None,
            capabilities: vec![],
            management_addresses: vec!["192.0.2.1".into()],
        }
    }

    fn route(nic: &str) -> PrimaryRoute {
        PrimaryRoute {
            nic: nic.into(),
            subnet: Some("10.0.1.0/24".into()),
            gateway: Some("10.0.1.1".parse().unwrap()),
        }
    }

    #[test]
    fn pin_then_switch_on_the_primary_nic_then_segment_then_unwired() {
        let both = WiringInputs {
            l2: Some(vec![link("eth1", "lldp", "sw-b"), link("eth0", "lldp", "sw-a")]),
            route: Some(route("eth0")),
        };
        assert_eq!(derive(Some("rack7"), &both).ring.0, "pinned:rack7");
        let w = derive(None, &both);
        assert_eq!(w.ring.0, "switch:sw-a", "the primary NIC's switch, not eth1's");
        assert_eq!(w.source, WiringSource::Lldp);
        assert_eq!(w.switch.unwrap().system_name.as_deref(), Some("sw-a-name"));
        // The primary NIC announces nothing: its segment, even though eth1 hears a switch.
        let other = WiringInputs { l2: Some(vec![link("eth1", "cdp", "sw-b")]), ..both.clone() };
        assert_eq!(derive(None, &other).ring.0, "segment:10.0.1.0/24@10.0.1.1");
        // No interfaces yet: any NIC's switch, deterministically.
        let early = WiringInputs { route: None, ..both.clone() };
        assert_eq!(derive(None, &early).ring.0, "switch:sw-a");
        assert_eq!(derive(None, &WiringInputs::default()).ring.0, "unwired");
        let cdp = WiringInputs { l2: Some(vec![link("eth0", "cdp", "tor")]), route: None };
        assert_eq!(derive(None, &cdp).source, WiringSource::Cdp);
    }
}
