//! How a host is wired, read from its discovery results: the one set of parsing rules shared by
//! the CMA core (which puts each host in the ring of its switch, `assim-cma`'s `wiring`) and the
//! topology graph (`assim-store-sqlite`'s `topology::derive`), so the two never disagree about
//! which switch a host hangs on.
//!
//! - [`l2_links`]: the `l2neighbors` payload, leniently — unknown fields are ignored, list
//!   fields may hold strings or objects (`{"address": …}`), entries without an interface,
//!   chassis id or port id are dropped; the result is sorted by (nic, protocol, chassis, port)
//!   and deduplicated.
//! - [`canonical_ip`], [`subnet_of`]: the address rules of the `interfaces` payload.
//! - [`primary_route`]: the NIC a host uses to reach the rest of the network (the interface of
//!   its lowest-metric IPv4 default route, else IPv6, else the first NIC with a global
//!   address), with that NIC's subnet and gateway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::interfaces::Interfaces;

/// One LLDP/CDP neighbour heard on a host NIC: the switch, its port, and the wire between.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Link {
    pub nic: String,
    /// The local NIC's MAC, lowercase.
    pub mac: Option<String>,
    /// `lldp` or `cdp` (lowercase).
    pub protocol: String,
    pub chassis_id: String,
    pub port_id: String,
    pub port_description: Option<String>,
    pub vlan: Option<String>,
    pub system_name: Option<String>,
    pub system_description: Option<String>,
    pub platform: Option<String>,
    pub capabilities: Vec<String>,
    pub management_addresses: Vec<String>,
}

/// The LLDP/CDP listener's payload as read here.
#[derive(Debug, Deserialize)]
struct L2Payload {
    #[serde(default)]
    neighbors: Vec<L2Neighbor>,
}

#[derive(Debug, Deserialize)]
struct L2Neighbor {
    interface: String,
    #[serde(default)]
    mac: Option<String>,
    protocol: String,
    chassis_id: String,
    port_id: String,
    #[serde(default)]
    port_description: Option<String>,
    #[serde(default)]
    system_name: Option<String>,
    #[serde(default)]
    system_description: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    capabilities: Vec<serde_json::Value>,
    #[serde(default)]
    management_addresses: Vec<serde_json::Value>,
    #[serde(default)]
    vlan: Option<serde_json::Value>,
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(m) => {
            // e.g. {"address": "192.0.2.1", …} or {"name": "router", "enabled": true}
            for key in ["address", "name", "id", "value"] {
                if let Some(serde_json::Value::String(s)) = m.get(key) {
                    return s.clone();
                }
                if let Some(n @ serde_json::Value::Number(_)) = m.get(key) {
                    return n.to_string();
                }
            }
            v.to_string()
        }
        other => other.to_string(),
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn sorted_dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

/// The links of an `l2neighbors` payload (see the module doc for the rules).
pub fn l2_links(payload: &str) -> Result<Vec<L2Link>, serde_json::Error> {
    let l2: L2Payload = serde_json::from_str(payload)?;
    let mut out = Vec::with_capacity(l2.neighbors.len());
    for n in l2.neighbors {
        if n.chassis_id.is_empty() || n.port_id.is_empty() || n.interface.is_empty() {
            continue;
        }
        out.push(L2Link {
            nic: n.interface,
            mac: non_empty(n.mac.map(|m| m.to_ascii_lowercase())),
            protocol: n.protocol.to_ascii_lowercase(),
            chassis_id: n.chassis_id,
            port_id: n.port_id,
            port_description: non_empty(n.port_description),
            vlan: n.vlan.as_ref().filter(|v| !v.is_null()).map(value_text),
            system_name: non_empty(n.system_name),
            system_description: non_empty(n.system_description),
            platform: non_empty(n.platform),
            capabilities: sorted_dedup(n.capabilities.iter().map(value_text).collect()),
            management_addresses: sorted_dedup(
                n.management_addresses.iter().map(value_text).collect(),
            ),
        });
    }
    let key =
        |l: &L2Link| (l.nic.clone(), l.protocol.clone(), l.chassis_id.clone(), l.port_id.clone());
    out.sort_by_key(key);
    out.dedup_by(|a, b| key(a) == key(b));
    Ok(out)
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged. Dual-stack sockets report IPv4 peers
/// this way, hosts report their IPv4 addresses plainly.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The network address of `ip/prefix_len` as `net/len` (the prefix is clamped to the family).
pub fn subnet_of(ip: IpAddr, prefix_len: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let len = prefix_len.min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            format!("{}/{len}", Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let len = prefix_len.min(128);
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            format!("{}/{len}", Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// The NIC a host reaches the network through, its subnet and its gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryRoute {
    pub nic: String,
    /// The subnet of the NIC's first global address of the gateway's family (`10.0.1.0/24`).
    pub subnet: Option<String>,
    /// The default route's next hop, if the host has one.
    pub gateway: Option<IpAddr>,
}

fn is_global(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unspecified()),
    }
}

/// The host's primary route from an `interfaces` payload: the interface of the lowest-metric
/// IPv4 default route (then IPv6; ties by interface name), else the first interface (by name)
/// with a global address. `None` when the host has no such interface.
pub fn primary_route(ifs: &Interfaces) -> Option<PrimaryRoute> {
    let mut gws: Vec<_> = ifs.default_gateways.iter().collect();
    gws.sort_by_key(|g| (!g.gateway.is_ipv4(), g.metric, g.interface.clone()));
    if let Some(g) = gws.first() {
        let subnet = ifs.interfaces.iter().find(|i| i.name == g.interface).and_then(|i| {
            i.addresses
                .iter()
                .find(|a| is_global(a.address) && a.address.is_ipv4() == g.gateway.is_ipv4())
                .map(|a| subnet_of(canonical_ip(a.address), a.prefix_len))
        });
        return Some(PrimaryRoute { nic: g.interface.clone(), subnet, gateway: Some(g.gateway) });
    }
    let mut named: Vec<_> = ifs.interfaces.iter().collect();
    named.sort_by(|a, b| a.name.cmp(&b.name));
    named.into_iter().find_map(|i| {
        let a = i.addresses.iter().find(|a| is_global(a.address))?;
        Some(PrimaryRoute {
            nic: i.name.clone(),
            subnet: Some(subnet_of(canonical_ip(a.address), a.prefix_len)),
            gateway: None,
        })
    })
}

/// [`primary_route`] of an `interfaces` payload's text.
pub fn primary_route_of(payload: &str) -> Result<Option<PrimaryRoute>, serde_json::Error> {
    let ifs: Interfaces = serde_json::from_str(payload)?;
    Ok(primary_route(&ifs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_links_are_lenient_sorted_and_deduplicated() {
        let p = r#"{"neighbors":[
            {"interface":"eth1","protocol":"LLDP","chassis_id":"c2","port_id":"p1",
             "management_addresses":[{"address":"192.0.2.1"}],"vlan":10,"extra":1},
            {"interface":"eth0","protocol":"cdp","chassis_id":"tor1","port_id":"swp7"},
            {"interface":"eth0","protocol":"cdp","chassis_id":"tor1","port_id":"swp7"},
            {"interface":"eth2","protocol":"lldp","chassis_id":"","port_id":"x"}]}"#;
        let l = l2_links(p).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].nic.as_str(), l[0].chassis_id.as_str()), ("eth0", "tor1"));
        assert_eq!(l[1].protocol, "lldp");
        assert_eq!(l[1].management_addresses, vec!["192.0.2.1"]);
        assert_eq!(l[1].vlan.as_deref(), Some("10"));
        assert!(l2_links("3").is_err());
        assert!(l2_links("{}").unwrap().is_empty());
    }

    #[test]
    fn primary_route_follows_the_default_gateway() {
        let p = r#"{"interfaces":[
            {"name":"eth0","addresses":[{"address":"10.0.1.5","prefix_len":24}]},
            {"name":"eth1","addresses":[{"address":"192.168.7.9","prefix_len":16},
                                        {"address":"fe80::1","prefix_len":64}]},
            {"name":"lo","addresses":[{"address":"127.0.0.1","prefix_len":8}]}],
            "default_gateways":[{"interface":"eth1","gateway":"192.168.0.1","metric":100},
                                {"interface":"eth0","gateway":"10.0.1.1","metric":200}]}"#;
        let r = primary_route_of(p).unwrap().unwrap();
        assert_eq!(r.nic, "eth1");
        assert_eq!(r.subnet.as_deref(), Some("192.168.0.0/16"));
        assert_eq!(r.gateway, Some("192.168.0.1".parse().unwrap()));
        let no_gw = r#"{"interfaces":[
            {"name":"lo","addresses":[{"address":"127.0.0.1","prefix_len":8}]},
            {"name":"eth3","addresses":[{"address":"10.9.0.2","prefix_len":20}]}],
            "default_gateways":[]}"#;
        let r = primary_route_of(no_gw).unwrap().unwrap();
        assert_eq!(
            (r.nic.as_str(), r.subnet.as_deref(), r.gateway),
            ("eth3", Some("10.9.0.0/20"), None)
        );
        assert_eq!(primary_route_of(r#"{"interfaces":[],"default_gateways":[]}"#).unwrap(), None);
    }
}
