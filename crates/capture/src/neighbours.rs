//! [`L2Neighbours`]: the sans-IO table of what the switches announce, fed with
//! `(interface, now, frame bytes)`. It keeps the latest PDU per (interface, protocol, chassis)
//! and forgets it when the PDU's TTL (LLDP TTL, CDP holdtime) runs out, or at once on an LLDP
//! shutdown PDU (TTL 0). Malformed frames are counted and ignored.
//!
//! [`L2Neighbours::report`] is the `l2neighbors` discovery payload. It holds no timestamps or
//! countdowns, so it hashes the same for as long as the neighbours say the same thing:
//!
//! ```json
//! {"neighbors":[{"interface":"eth0","mac":"52:54:00:12:34:56","protocol":"lldp",
//!   "chassis_id":"00:11:22:33:44:55","port_id":"Gi1/0/7","port_description":"uplink",
//!   "system_name":"sw1","system_description":"...","platform":null,
//!   "capabilities":["bridge","router"],"management_addresses":["192.0.2.1"],"vlan":10,
//!   "chassis_id_kind":"mac_address","port_id_kind":"interface_name",
//!   "source_mac":"00:11:22:33:44:56"}]}
//! ```
//!
//! sorted by (interface, protocol, chassis_id, port_id).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use assim_l2::{Pdu, decode_captured};
use serde::{Deserialize, Serialize};

/// One neighbour as reported. The first twelve fields are a contract with the CMA's topology
/// graph; fields may be added, never renamed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Neighbor {
    /// The local interface the PDU arrived on.
    pub interface: String,
    /// The local interface's MAC (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// `lldp` or `cdp`.
    pub protocol: String,
    /// The switch's chassis id (LLDP) or device id (CDP), as it gives it.
    pub chassis_id: String,
    /// The switch port.
    pub port_id: String,
    pub port_description: Option<String>,
    pub system_name: Option<String>,
    /// LLDP system description; CDP software version.
    pub system_description: Option<String>,
    /// CDP platform (LLDP has none).
    pub platform: Option<String>,
    /// Capability names (LLDP: system capabilities; CDP: capabilities).
    pub capabilities: Vec<String>,
    /// Management (and, for CDP, device) addresses, sorted.
    pub management_addresses: Vec<String>,
    /// LLDP port VLAN id; CDP native VLAN.
    pub vlan: Option<u16>,
    /// LLDP chassis id subtype name (`mac_address`, `local`, ...); `device_id` for CDP.
    pub chassis_id_kind: String,
    /// LLDP port id subtype name (`interface_name`, `mac_address`, ...); `port_id` for CDP.
    pub port_id_kind: String,
    /// The frame's source MAC (the switch port or switch).
    pub source_mac: String,
}

/// The `l2neighbors` discovery payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Report {
    /// Every live neighbour, sorted.
    pub neighbors: Vec<Neighbor>,
}

/// What one frame did to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameOutcome {
    /// A neighbour not seen before (on this interface, protocol and chassis).
    New,
    /// A known neighbour now says something different.
    Changed,
    /// A known neighbour said the same again (its expiry moved).
    Refreshed,
    /// A TTL-0 PDU withdrew a neighbour (or one we did not know).
    Withdrawn,
    /// Not LLDP or CDP.
    Ignored,
    /// LLDP or CDP that does not parse (counted).
    Malformed,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    interface: String,
    protocol: &'static str,
    chassis: String,
}

#[derive(Clone, Debug)]
struct Entry {
    /// The neighbour without the local MAC (filled in at report time).
    neighbor: Neighbor,
    expires: Instant,
}

/// Counters a user can look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames accepted (LLDP or CDP that parsed).
    pub frames: u64,
    /// LLDP/CDP frames that did not parse.
    pub malformed: u64,
    /// Frames that were neither.
    pub ignored: u64,
    /// Neighbours forgotten because their TTL ran out.
    pub expired: u64,
    /// Frames cut short by the snap length (decoded as far as their TLVs were whole).
    pub truncated: u64,
}

/// The neighbour table. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct L2Neighbours {
    entries: BTreeMap<Key, Entry>,
    local_macs: BTreeMap<String, String>,
    counters: Counters,
}

impl L2Neighbours {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or updates) the MAC of a local interface, reported with its neighbours.
    pub fn set_interface_mac(&mut self, interface: &str, mac: &str) {
        self.local_macs.insert(interface.to_string(), mac.to_string());
    }

    /// Forgets an interface that disappeared and its neighbours. True if a neighbour went.
    pub fn remove_interface(&mut self, interface: &str) -> bool {
        self.local_macs.remove(interface);
        let before = self.entries.len();
        self.entries.retain(|k, _| k.interface != interface);
        self.entries.len() != before
    }

    /// Interfaces that have a known MAC.
    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.local_macs.keys().map(String::as_str)
    }

    /// Feeds one received Ethernet frame.
    pub fn handle_frame(&mut self, interface: &str, now: Instant, frame: &[u8]) -> FrameOutcome {
        self.handle_captured(interface, now, frame, frame.len())
    }

    /// Feeds one received frame that was `orig_len` bytes on the wire: when the capture cut
    /// it, its whole TLVs still count (counted in [`Counters::truncated`]).
    pub fn handle_captured(
        &mut self,
        interface: &str,
        now: Instant,
        frame: &[u8],
        orig_len: usize,
    ) -> FrameOutcome {
        if orig_len > frame.len() {
            self.counters.truncated += 1;
        }
        let decoded = match decode_captured(frame, orig_len) {
            Ok(d) => d,
            Err(_) => {
                // Only LLDP/CDP framing reaches here through the socket filter, so a failure
                // is a malformed PDU; frames with unparsable Ethernet headers count too.
                self.counters.malformed += 1;
                return FrameOutcome::Malformed;
            }
        };
        let source_mac = decoded.src.to_string();
        let (neighbor, ttl) = match decoded.pdu {
            Pdu::Lldp(l) => {
                let mut caps: Vec<String> = l
                    .capabilities
                    .as_ref()
                    .map(|c| c.system_names.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default();
                caps.sort();
                let mut mgmt: Vec<String> =
                    l.management_addresses.iter().map(|m| m.address.to_string()).collect();
                mgmt.sort();
                mgmt.dedup();
                let n = Neighbor {
                    interface: interface.to_string(),
                    mac: String::new(),
                    protocol: "lldp".into(),
                    chassis_id: l.chassis_id.value.clone(),
                    port_id: l.port_id.value.clone(),
                    port_description: l.port_description.clone(),
                    system_name: l.system_name.clone(),
                    system_description: l.system_description.clone(),
                    platform: None,
                    capabilities: caps,
                    management_addresses: mgmt,
                    vlan: l.port_vlan_id,
                    chassis_id_kind: l.chassis_id.kind.to_string(),
                    port_id_kind: l.port_id.kind.to_string(),
                    source_mac,
                };
                (n, u64::from(l.ttl))
            }
            Pdu::Cdp(c) => {
                let Some(device_id) = c.device_id.clone() else {
                    self.counters.malformed += 1;
                    return FrameOutcome::Malformed;
                };
                let mut caps: Vec<String> =
                    c.capability_names.iter().map(|s| s.to_string()).collect();
                caps.sort();
                let mut mgmt: Vec<String> = c
                    .management_addresses
                    .iter()
                    .chain(c.addresses.iter())
                    .map(|a| a.to_string())
                    .collect();
                mgmt.sort();
                mgmt.dedup();
                let n = Neighbor {
                    interface: interface.to_string(),
                    mac: String::new(),
                    protocol: "cdp".into(),
                    chassis_id: device_id.clone(),
                    port_id: c.port_id.clone().unwrap_or_default(),
                    port_description: None,
                    system_name: c.system_name.clone().or(Some(device_id)),
                    system_description: c.software_version.clone(),
                    platform: c.platform.clone(),
                    capabilities: caps,
                    management_addresses: mgmt,
                    vlan: c.native_vlan,
                    chassis_id_kind: "device_id".into(),
                    port_id_kind: "port_id".into(),
                    source_mac,
                };
                (n, u64::from(c.ttl))
            }
            Pdu::Other => {
                self.counters.ignored += 1;
                return FrameOutcome::Ignored;
            }
        };
        self.counters.frames += 1;
        let key = Key {
            interface: interface.to_string(),
            protocol: if neighbor.protocol == "lldp" { "lldp" } else { "cdp" },
            chassis: neighbor.chassis_id.clone(),
        };
        if ttl == 0 {
            self.entries.remove(&key);
            return FrameOutcome::Withdrawn;
        }
        let expires = now + Duration::from_secs(ttl);
        match self.entries.insert(key, Entry { neighbor: neighbor.clone(), expires }) {
            None => FrameOutcome::New,
            Some(old) if old.neighbor == neighbor => FrameOutcome::Refreshed,
            Some(_) => FrameOutcome::Changed,
        }
    }

    /// When the next neighbour expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.expires).min()
    }

    /// Forgets neighbours whose TTL ran out by `now`. True if any went.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.expires > now);
        let gone = before - self.entries.len();
        self.counters.expired += gone as u64;
        gone > 0
    }

    /// The payload: every live neighbour with its local MAC, sorted.
    pub fn report(&self) -> L2Report {
        let mut neighbors: Vec<Neighbor> = self
            .entries
            .values()
            .map(|e| {
                let mut n = e.neighbor.clone();
                n.mac = self.local_macs.get(&n.interface).cloned().unwrap_or_default();
                n
            })
            .collect();
        neighbors.sort_by(|a, b| {
            (&a.interface, &a.protocol, &a.chassis_id, &a.port_id).cmp(&(
                &b.interface,
                &b.protocol,
                &b.chassis_id,
                &b.port_id,
            ))
        });
        L2Report { neighbors }
    }

    /// Frame counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Number of live neighbours.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no neighbour is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An LLDPDU: chassis MAC, port ifname, TTL, optional system name, end.
    fn lldp(chassis: [u8; 6], port: &str, ttl: u16, name: Option<&str>) -> Vec<u8> {
        let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
        f.extend_from_slice(&chassis);
        f.extend_from_slice(&[0x88, 0xcc]);
        let tlv = |f: &mut Vec<u8>, t: u16, v: &[u8]| {
            let h = (t << 9) | v.len() as u16;
            f.extend_from_slice(&h.to_be_bytes());
            f.extend_from_slice(v);
        };
        let mut c = vec![4];
        c.extend_from_slice(&chassis);
        tlv(&mut f, 1, &c);
        let mut p = vec![5];
        p.extend_from_slice(port.as_bytes());
        tlv(&mut f, 2, &p);
        tlv(&mut f, 3, &ttl.to_be_bytes());
        if let Some(n) = name {
            tlv(&mut f, 5, n.as_bytes());
        }
        tlv(&mut f, 0, &[]);
        f
    }

    /// A CDPv2 frame: device id, port id, holdtime.
    fn cdp(device: &str, port: &str, holdtime: u8) -> Vec<u8> {
        let mut pdu = vec![2, holdtime, 0, 0];
        for (t, v) in [(1u16, device), (3u16, port)] {
            pdu.extend_from_slice(&t.to_be_bytes());
            pdu.extend_from_slice(&(v.len() as u16 + 4).to_be_bytes());
            pdu.extend_from_slice(v.as_bytes());
        }
        let mut f = vec![0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc, 0, 0x11, 0x22, 0x33, 0x44, 0x55];
        f.extend_from_slice(&((pdu.len() + 8) as u16).to_be_bytes());
        f.extend_from_slice(&[0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00]);
        f.extend_from_slice(&pdu);
        f
    }

    const SW: [u8; 6] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn learns_refreshes_changes_and_expires() {
        let t0 = Instant::now();
        let mut t = L2Neighbours::new();
        t.set_interface_mac("eth0", "52:54:00:00:00:01");
        assert_eq!(
            t.handle_frame("eth0", t0, &lldp(SW, "Gi1/0/7", 120, Some("sw1"))),
            FrameOutcome::New
        );
        assert_eq!(
            t.handle_frame("eth0", t0, &cdp("sw1.example", "Gi1/0/7", 180)),
            FrameOutcome::New
        );
        let r = t.report();
        assert_eq!(r.neighbors.len(), 2);
        let l = &r.neighbors[1];
        assert_eq!(
            (l.protocol.as_str(), l.chassis_id.as_str(), l.port_id.as_str(), l.mac.as_str()),
            ("lldp", "00:11:22:33:44:55", "Gi1/0/7", "52:54:00:00:00:01")
        );
        assert_eq!(l.system_name.as_deref(), Some("sw1"));
        assert_eq!(r.neighbors[0].chassis_id, "sw1.example");
        assert_eq!(r.neighbors[0].system_name.as_deref(), Some("sw1.example"));

        // The same PDU later: nothing in the report changes, the expiry moves.
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(
            t.handle_frame("eth0", t1, &lldp(SW, "Gi1/0/7", 120, Some("sw1"))),
            FrameOutcome::Refreshed
        );
        assert_eq!(t.report(), r);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(180)), "CDP holdtime first");
        assert!(t.handle_timeout(t0 + Duration::from_secs(180)));
        assert_eq!(t.len(), 1, "CDP expired after its holdtime");
        assert!(!t.handle_timeout(t0 + Duration::from_secs(200)));
        assert_eq!(t.poll_timeout(), Some(t1 + Duration::from_secs(120)));

        // A renamed switch is a change; a TTL-0 shutdown PDU withdraws it.
        assert_eq!(
            t.handle_frame("eth0", t1, &lldp(SW, "Gi1/0/7", 120, Some("sw2"))),
            FrameOutcome::Changed
        );
        assert_eq!(
            t.handle_frame("eth0", t1, &lldp(SW, "Gi1/0/7", 0, None)),
            FrameOutcome::Withdrawn
        );
        assert!(t.is_empty());
        assert_eq!(t.counters().expired, 1);
    }

    #[test]
    fn the_same_switch_on_two_interfaces_is_two_neighbours() {
        let now = Instant::now();
        let mut t = L2Neighbours::new();
        t.handle_frame("eth1", now, &lldp(SW, "Gi1/0/2", 120, None));
        t.handle_frame("eth0", now, &lldp(SW, "Gi1/0/1", 120, None));
        let r = t.report();
        assert_eq!(
            r.neighbors.iter().map(|n| n.interface.as_str()).collect::<Vec<_>>(),
            ["eth0", "eth1"]
        );
        assert!(t.remove_interface("eth0"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn malformed_frames_are_counted_and_ignored() {
        let now = Instant::now();
        let mut t = L2Neighbours::new();
        let good = lldp(SW, "p1", 120, None);
        assert_eq!(t.handle_frame("eth0", now, &good[..good.len() - 6]), FrameOutcome::Malformed);
        assert_eq!(t.handle_frame("eth0", now, &[0u8; 5]), FrameOutcome::Malformed);
        let mut ipv4 = good.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(t.handle_frame("eth0", now, &ipv4), FrameOutcome::Ignored);
        assert!(t.is_empty());
        assert_eq!(
            t.counters(),
            Counters { frames: 0, malformed: 2, ignored: 1, expired: 0, truncated: 0 }
        );
    }

    /// Issue 19 item 6: a frame the capture cut inside its system name still names the
    /// neighbour (the whole TLVs), without the cut field, and is counted as truncated.
    #[test]
    fn a_truncated_frame_keeps_its_whole_tlvs() {
        let now = Instant::now();
        let mut t = L2Neighbours::new();
        let good = lldp(SW, "p1", 120, Some("switch-one"));
        let cut = &good[..good.len() - 8];
        assert_eq!(t.handle_frame("eth0", now, cut), FrameOutcome::Malformed, "not said to be cut");
        assert_eq!(t.handle_captured("eth0", now, cut, good.len()), FrameOutcome::New);
        let n = &t.report().neighbors[0];
        assert_eq!((n.port_id.as_str(), n.system_name.as_deref()), ("p1", None));
        assert_eq!(t.counters().truncated, 1);
    }

    #[test]
    fn the_payload_has_the_contract_fields_and_no_times() {
        let mut t = L2Neighbours::new();
        t.handle_frame("eth0", Instant::now(), &lldp(SW, "p1", 120, None));
        let v = serde_json::to_value(t.report()).unwrap();
        let n = &v["neighbors"][0];
        for key in [
            "interface",
            "mac",
            "protocol",
            "chassis_id",
            "port_id",
            "port_description",
            "system_name",
            "system_description",
            "platform",
            "capabilities",
            "management_addresses",
            "vlan",
        ] {
            assert!(n.get(key).is_some(), "missing {key} in {n}");
        }
        assert!(n["platform"].is_null());
        assert!(!n.to_string().contains("ttl"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_handled(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut t = L2Neighbours::new();
            let now = Instant::now();
            let _ = t.handle_frame("eth0", now, &bytes);
            let mut lldp_frame = lldp(SW, "p", 120, Some("x"));
            lldp_frame.truncate(14);
            lldp_frame.extend_from_slice(&bytes);
            let _ = t.handle_frame("eth0", now, &lldp_frame);
            let _ = t.report();
            let _ = t.handle_timeout(now + Duration::from_secs(70_000));
            proptest::prop_assert!(t.is_empty());
        }
    }
}
