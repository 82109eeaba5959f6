//! CDP (Cisco Discovery Protocol) v1 and v2 PDUs, after the LLC/SNAP header.
//!
//! The checksum is verified but a mismatch is *reported* (`checksum_valid: false`), not
//! treated as a failure: real switches get it wrong, above all on odd-length PDUs, where
//! Cisco's implementation puts the last byte in the low half of the final 16-bit word and adds
//! it as a sign-extended `char`. Both the RFC 1071 sum and that variant are accepted; which one
//! matched is in `checksum_method`.
//!
//! A TLV whose length runs past the buffer is [`Error::Incomplete`]; a TLV length below 4 is
//! [`Error::Malformed`]. A known TLV whose value does not parse is kept raw in `unknown` with
//! the reason, as are unknown TLVs.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::common::{Address, Cursor, Error, Result, bit_names, hex, text};

const CAPS: [(u32, &str); 11] = [
    (0x001, "router"),
    (0x002, "transparent_bridge"),
    (0x004, "source_route_bridge"),
    (0x008, "switch"),
    (0x010, "host"),
    (0x020, "igmp"),
    (0x040, "repeater"),
    (0x080, "voip_phone"),
    (0x100, "remotely_managed"),
    (0x200, "cvta"),
    (0x400, "two_port_mac_relay"),
];

/// One entry of the appliance VLAN TLV (0x000e): the voice VLAN a phone should use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplianceVlan {
    /// Appliance id (1 is a Cisco IP phone).
    pub appliance_id: u8,
    /// The VLAN.
    pub vlan: u16,
}

/// A TLV kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CdpUnknownTlv {
    /// TLV type.
    pub tlv_type: u16,
    /// Value, hex.
    pub value_hex: String,
    /// Why a known TLV was kept raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A decoded CDP PDU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CdpPdu {
    /// CDP version (1 or 2).
    pub version: u8,
    /// Hold time in seconds.
    pub ttl: u8,
    /// The checksum as sent.
    pub checksum: u16,
    /// Whether it verified (a mismatch is not an error; see the module doc).
    pub checksum_valid: bool,
    /// `rfc1071` or `cisco_odd_length`, when it verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum_method: Option<&'static str>,
    /// Device id (0x0001).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Addresses (0x0002).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Address>,
    /// Port id (0x0003): the sender's interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    /// Capability bits (0x0004).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<u32>,
    /// Their names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capability_names: Vec<&'static str>,
    /// Software version (0x0005).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software_version: Option<String>,
    /// Platform (0x0006).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// IP prefixes (0x0007), `a.b.c.d/len`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_prefixes: Vec<String>,
    /// VTP management domain (0x0009).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtp_domain: Option<String>,
    /// Native VLAN (0x000a).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_vlan: Option<u16>,
    /// Duplex (0x000b): `full` or `half`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplex: Option<&'static str>,
    /// Appliance (voice) VLANs (0x000e).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub appliance_vlans: Vec<ApplianceVlan>,
    /// The voice VLAN: the first appliance VLAN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_vlan: Option<u16>,
    /// Power consumption in mW (0x0010).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_mw: Option<u16>,
    /// MTU (0x0011).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Trust bitmap (0x0012).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_bitmap: Option<u8>,
    /// Untrusted port CoS (0x0013).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untrusted_cos: Option<u8>,
    /// System name (0x0014).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_name: Option<String>,
    /// Management addresses (0x0016).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub management_addresses: Vec<Address>,
    /// Everything else, raw (protocol hello, system OID, location, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<CdpUnknownTlv>,
    /// The frame was cut short by the capture's snap length ([`parse_truncated`]): every
    /// whole TLV is here; the checksum cannot be checked.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Fold a one's complement sum to 16 bits.
fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Which checksum convention, if any, `pdu` (from the version byte on) satisfies. The sum is
/// computed with the checksum field as zero and compared to the field.
pub fn checksum_method(pdu: &[u8]) -> Option<&'static str> {
    if pdu.len() < 4 {
        return None;
    }
    let sent = u16::from_be_bytes([pdu[2], pdu[3]]);
    let word = |i: usize| -> u32 {
        if i == 2 { 0 } else { u32::from(u16::from_be_bytes([pdu[i], pdu[i + 1]])) }
    };
    let even_len = pdu.len() & !1;
    // Cisco accumulates into 32 bits; 32-bit wrapping is part of its behaviour.
    let sum = (0..even_len).step_by(2).fold(0u32, |acc, i| acc.wrapping_add(word(i)));
    let last = (pdu.len() % 2 == 1).then(|| pdu[pdu.len() - 1]);
    let rfc = sum.wrapping_add(last.map_or(0, |b| u32::from(b) << 8));
    if !fold(u64::from(rfc)) == sent {
        return Some("rfc1071");
    }
    // Cisco, odd length: the last byte as a signed char, sign-extended into the accumulator.
    let b = last?;
    let cisco = sum.wrapping_add(i32::from(b as i8) as u32);
    (!fold(u64::from(cisco)) == sent).then_some("cisco_odd_length")
}

fn parse_addresses(v: &[u8]) -> Result<Vec<Address>> {
    const W: &str = "CDP addresses";
    let mut c = Cursor::new(v, W);
    let n = c.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let ptype = c.u8()?;
        let plen = c.u8()? as usize;
        let proto = c.take(plen)?;
        let alen = c.u16()? as usize;
        let a = c.take(alen)?;
        let addr = match (ptype, proto, a.len()) {
            (1, [0xcc], 4) => Address::Ipv4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            (2, [0xaa, 0xaa, 0x03, 0, 0, 0, 0x86, 0xdd], 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(a);
                Address::Ipv6(Ipv6Addr::from(b))
            }
            _ => Address::Other { family: format!("p{ptype}-{}", hex(proto)), hex: hex(a) },
        };
        out.push(addr);
    }
    Ok(out)
}

fn exact<'a>(v: &'a [u8], n: usize, what: &'static str) -> Result<Cursor<'a>> {
    if v.len() != n {
        return Err(Error::malformed(what, format!("{} byte(s), expected {n}", v.len())));
    }
    Ok(Cursor::new(v, what))
}

fn parse_tlv(pdu: &mut CdpPdu, ty: u16, v: &[u8]) -> Result<bool> {
    match ty {
        0x0001 => pdu.device_id = Some(text(v)),
        0x0002 => pdu.addresses = parse_addresses(v)?,
        0x0003 => pdu.port_id = Some(text(v)),
        0x0004 => {
            let caps = exact(v, 4, "CDP capabilities")?.u32()?;
            pdu.capabilities = Some(caps);
            pdu.capability_names = bit_names(caps, &CAPS);
        }
        0x0005 => pdu.software_version = Some(text(v)),
        0x0006 => pdu.platform = Some(text(v)),
        0x0007 => {
            if !v.len().is_multiple_of(5) {
                return Err(Error::malformed("CDP IP prefixes", "length not a multiple of 5"));
            }
            pdu.ip_prefixes = v
                .chunks_exact(5)
                .map(|p| format!("{}/{}", Ipv4Addr::new(p[0], p[1], p[2], p[3]), p[4]))
                .collect();
        }
        0x0009 => pdu.vtp_domain = Some(text(v)),
        0x000a => pdu.native_vlan = Some(exact(v, 2, "CDP native VLAN")?.u16()?),
        0x000b => {
            pdu.duplex = Some(if exact(v, 1, "CDP duplex")?.u8()? == 0 { "half" } else { "full" })
        }
        0x000e => {
            if v.is_empty() || !v.len().is_multiple_of(3) {
                return Err(Error::malformed("CDP appliance VLAN", "length not a multiple of 3"));
            }
            pdu.appliance_vlans = v
                .chunks_exact(3)
                .map(|e| ApplianceVlan {
                    appliance_id: e[0],
                    vlan: u16::from_be_bytes([e[1], e[2]]),
                })
                .collect();
            pdu.voice_vlan = pdu.appliance_vlans.first().map(|a| a.vlan);
        }
        0x0010 => pdu.power_mw = Some(exact(v, 2, "CDP power")?.u16()?),
        0x0011 => pdu.mtu = Some(exact(v, 4, "CDP MTU")?.u32()?),
        0x0012 => pdu.trust_bitmap = Some(exact(v, 1, "CDP trust bitmap")?.u8()?),
        0x0013 => pdu.untrusted_cos = Some(exact(v, 1, "CDP untrusted CoS")?.u8()?),
        0x0014 => pdu.system_name = Some(text(v)),
        0x0016 => pdu.management_addresses = parse_addresses(v)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Parse a CDP PDU (the bytes after LLC/SNAP, without Ethernet padding).
pub fn parse(buf: &[u8]) -> Result<CdpPdu> {
    parse_with(buf, false)
}

/// Parse a CDP PDU the capture cut short, as tshark does: the header and every whole TLV are
/// decoded, the TLV the cut falls into ends the PDU, `truncated` is set and the checksum is
/// reported invalid (it covers bytes that were not captured).
pub fn parse_truncated(buf: &[u8]) -> Result<CdpPdu> {
    parse_with(buf, true)
}

fn parse_with(buf: &[u8], truncated: bool) -> Result<CdpPdu> {
    let mut c = Cursor::new(buf, "CDP header");
    let version = c.u8()?;
    let ttl = c.u8()?;
    let checksum = c.u16()?;
    if !(1..=2).contains(&version) {
        return Err(Error::malformed("CDP header", format!("version {version}")));
    }
    let method = if truncated { None } else { checksum_method(buf) };
    let mut pdu = CdpPdu {
        version,
        ttl,
        checksum,
        checksum_valid: method.is_some(),
        checksum_method: method,
        device_id: None,
        addresses: Vec::new(),
        port_id: None,
        capabilities: None,
        capability_names: Vec::new(),
        software_version: None,
        platform: None,
        ip_prefixes: Vec::new(),
        vtp_domain: None,
        native_vlan: None,
        duplex: None,
        appliance_vlans: Vec::new(),
        voice_vlan: None,
        power_mw: None,
        mtu: None,
        trust_bitmap: None,
        untrusted_cos: None,
        system_name: None,
        management_addresses: Vec::new(),
        unknown: Vec::new(),
        truncated,
    };
    let mut c = Cursor::new(c.rest(), "CDP TLV");
    while !c.is_empty() {
        let head = c.u16().and_then(|ty| Ok((ty, c.u16()? as usize)));
        let (ty, len) = match head {
            Ok(h) => h,
            Err(e) if truncated && e.is_incomplete() => break, // the cut
            Err(e) => return Err(e),
        };
        if len < 4 {
            return Err(Error::malformed("CDP TLV", format!("type {ty:#06x} with length {len}")));
        }
        let v = match c.take(len - 4) {
            Ok(v) => v,
            Err(e) if truncated && e.is_incomplete() => break,
            Err(e) => return Err(e),
        };
        let (known, error) = match parse_tlv(&mut pdu, ty, v) {
            Ok(k) => (k, None),
            Err(e) => (false, Some(e.in_tlv().to_string())),
        };
        if !known {
            pdu.unknown.push(CdpUnknownTlv { tlv_type: ty, value_hex: hex(v), error });
        }
    }
    Ok(pdu)
}
