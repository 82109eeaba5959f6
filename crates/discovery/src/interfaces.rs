//! Network interfaces: link facts from `/sys/class/net/<if>/`, addresses and
//! prefixes from `getifaddrs(3)`, default gateways from `/proc/net/route` and
//! `/proc/net/ipv6_route`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_optional, read_text};

/// One address on an interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IfAddress {
    /// The local address.
    pub address: IpAddr,
    /// Prefix length derived from the netmask.
    pub prefix_len: u8,
}

/// One network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Hardware address as lowercase colon-separated hex, if it has one.
    pub mac: Option<String>,
    /// MTU in bytes.
    pub mtu: Option<u32>,
    /// `up`, `down`, `unknown`, … as the kernel reports it.
    pub operstate: Option<String>,
    /// Link speed in Mbit/s, where the driver reports one.
    pub speed_mbps: Option<u32>,
    /// `full` / `half`, where the driver reports it.
    pub duplex: Option<String>,
    /// Addresses, sorted.
    pub addresses: Vec<IfAddress>,
}

/// A default route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gateway {
    /// Outgoing interface.
    pub interface: String,
    /// Next hop.
    pub gateway: IpAddr,
    /// Route metric.
    pub metric: u32,
}

/// Result of the interfaces collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interfaces {
    /// Interfaces sorted by name.
    pub interfaces: Vec<Interface>,
    /// IPv4 and IPv6 default gateways, sorted.
    pub default_gateways: Vec<Gateway>,
}

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;
const RTF_REJECT: u32 = 0x200;

/// Prefix length of a netmask given as network-order bytes (leading ones).
pub fn prefix_len(mask: &[u8]) -> u8 {
    let mut n = 0u32;
    for b in mask {
        n += b.leading_ones();
        if *b != 0xff {
            break;
        }
    }
    n.min(u8::MAX as u32) as u8
}

/// An IPv4 address as `/proc/net/*` prints it: the network-order `__be32`
/// printed with `%08X` as a native-endian integer.
pub fn parse_hex_ipv4(hex: &str) -> Option<Ipv4Addr> {
    if hex.len() != 8 {
        return None;
    }
    let n = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(n.to_ne_bytes()))
}

/// Default IPv4 gateways from the text of `/proc/net/route`.
pub fn parse_route_v4(text: &str) -> Vec<Gateway> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Some(dest), Some(gw), Ok(flags), Some(mask)) = (
            parse_hex_ipv4(f[1]),
            parse_hex_ipv4(f[2]),
            u32::from_str_radix(f[3], 16),
            parse_hex_ipv4(f[7]),
        ) else {
            continue;
        };
        let metric = f[6].parse().unwrap_or(0);
        if dest.is_unspecified()
            && mask.is_unspecified()
            && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY
            && flags & RTF_REJECT == 0
        {
            out.push(Gateway { interface: f[0].to_string(), gateway: IpAddr::V4(gw), metric });
        }
    }
    out
}

/// An IPv6 address printed as 32 hex digits in network byte order
/// (`/proc/net/ipv6_route`, `/proc/net/if_inet6`).
pub fn parse_hex_ipv6_be(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(Ipv6Addr::from(bytes))
}

/// Default IPv6 gateways from the text of `/proc/net/ipv6_route`.
pub fn parse_route_v6(text: &str) -> Vec<Gateway> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(dest), Ok(plen), Some(hop), Ok(metric), Ok(flags)) = (
            parse_hex_ipv6_be(f[0]),
            u8::from_str_radix(f[1], 16),
            parse_hex_ipv6_be(f[4]),
            u32::from_str_radix(f[5], 16),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        if dest.is_unspecified()
            && plen == 0
            && !hop.is_unspecified()
            && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY
            && flags & RTF_REJECT == 0
        {
            out.push(Gateway { interface: f[9].to_string(), gateway: IpAddr::V6(hop), metric });
        }
    }
    out
}

/// A sysfs number such as `speed`; `None` for `-1`, empty or garbage.
pub fn parse_sys_u32(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

/// A sysfs word such as `operstate` or `duplex`, trimmed; `None` when empty.
fn parse_sys_word(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Reads all interfaces, addresses and default gateways of this host.
pub fn collect_interfaces() -> Result<Interfaces, DiscoveryError> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    let sys = Path::new("/sys/class/net");
    if let Ok(dir) = std::fs::read_dir(sys) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let base = sys.join(&name);
            let read = |f: &str| read_optional(base.join(f));
            let iface = Interface {
                name: name.clone(),
                mac: read("address").and_then(|t| parse_sys_word(&t)),
                mtu: read("mtu").and_then(|t| parse_sys_u32(&t)),
                operstate: read("operstate").and_then(|t| parse_sys_word(&t)),
                speed_mbps: read("speed").and_then(|t| parse_sys_u32(&t)),
                duplex: read("duplex").and_then(|t| parse_sys_word(&t)).filter(|d| d != "unknown"),
                addresses: Vec::new(),
            };
            by_name.insert(name, iface);
        }
    }
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|source| DiscoveryError::Sys { call: "getifaddrs", source })?;
    for ifa in addrs {
        let iface = by_name.entry(ifa.interface_name.clone()).or_insert_with(|| Interface {
            name: ifa.interface_name.clone(),
            ..Interface::default()
        });
        let Some(addr) = ifa.address.as_ref() else {
            continue;
        };
        if let Some(link) = addr.as_link_addr() {
            if iface.mac.is_none()
                && let Some(mac) = link.addr()
            {
                iface.mac = Some(format_mac(&mac));
            }
        } else if let Some(v4) = addr.as_sockaddr_in() {
            let plen = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| prefix_len(&m.ip().octets()));
            iface.addresses.push(IfAddress { address: IpAddr::V4(v4.ip()), prefix_len: plen });
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let plen = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map_or(128, |m| prefix_len(&m.ip().octets()));
            iface.addresses.push(IfAddress { address: IpAddr::V6(v6.ip()), prefix_len: plen });
        }
    }
    let mut interfaces: Vec<Interface> = by_name.into_values().collect();
    for iface in &mut interfaces {
        iface.addresses.sort();
        iface.addresses.dedup();
    }
    let mut default_gateways =
        read_text("/proc/net/route").map(|t| parse_route_v4(&t)).unwrap_or_default();
    // No IPv6 on the host is not an error.
    if let Some(t) = read_optional("/proc/net/ipv6_route") {
        default_gateways.extend(parse_route_v6(&t));
    }
    default_gateways.sort();
    Ok(Interfaces { interfaces, default_gateways })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lengths() {
        assert_eq!(prefix_len(&[255, 255, 255, 0]), 24);
        assert_eq!(prefix_len(&[255, 255, 240, 0]), 20);
        assert_eq!(prefix_len(&[0, 0, 0, 0]), 0);
        assert_eq!(prefix_len(&[0xff; 16]), 128);
        let mut m = [0u8; 16];
        m[..8].fill(0xff);
        assert_eq!(prefix_len(&m), 64);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn route_v4_default_gateway() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_route_v4(text),
            vec![Gateway {
                interface: "eth0".into(),
                gateway: "192.0.2.1".parse().unwrap(),
                metric: 100,
            }]
        );
    }

    #[test]
    fn route_v6_default_gateway() {
        let text = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(
            parse_route_v6(text),
            vec![Gateway {
                interface: "eth0".into(),
                gateway: "fd00::1".parse().unwrap(),
                metric: 0x400,
            }]
        );
    }

    #[test]
    fn sysfs_numbers() {
        assert_eq!(parse_sys_u32("1000\n"), Some(1000));
        assert_eq!(parse_sys_u32("-1\n"), None);
        assert_eq!(parse_sys_u32(""), None);
    }
}
