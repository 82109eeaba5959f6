//! LLDP (IEEE 802.1AB) PDUs: the mandatory and basic TLVs, IEEE 802.1 and 802.3 organizational
//! TLVs, and LLDP-MED (ANSI/TIA-1057). Anything not understood, or an optional TLV whose value
//! does not parse, lands in [`LldpPdu::unknown`] with its raw bytes, so nothing is lost.
//!
//! Rules: chassis id, port id and TTL are required (their absence or a bad value is
//! [`Error::Malformed`]); their order is not enforced. A TLV whose length runs past the buffer
//! is [`Error::Incomplete`]. Parsing stops at the End TLV; a PDU without one is accepted and
//! reported with `end_seen: false`.

use serde::Serialize;

use crate::common::{Address, Cursor, Error, MacAddr, Result, bit_names, hex, text};

const OUI_8021: [u8; 3] = [0x00, 0x80, 0xc2];
const OUI_8023: [u8; 3] = [0x00, 0x12, 0x0f];
const OUI_MED: [u8; 3] = [0x00, 0x12, 0xbb];

/// A chassis or port id: the subtype, its name, and the value rendered for humans (a MAC or
/// network address as an address, textual subtypes as text, the rest as hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LldpId {
    /// Subtype number from the TLV.
    pub subtype: u8,
    /// Its name (`mac_address`, `interface_name`, ...), or `reserved`.
    pub kind: &'static str,
    /// The value.
    pub value: String,
}

/// System capabilities (TLV 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Capability bits.
    pub system: u16,
    /// Enabled bits.
    pub enabled: u16,
    /// Names of the capability bits.
    pub system_names: Vec<&'static str>,
    /// Names of the enabled bits.
    pub enabled_names: Vec<&'static str>,
}

/// A management address (TLV 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagementAddress {
    /// The address.
    pub address: Address,
    /// Interface numbering subtype: 1 unknown, 2 ifIndex, 3 system port number.
    pub interface_subtype: u8,
    /// Its name.
    pub interface_numbering: &'static str,
    /// The interface number.
    pub interface_number: u32,
    /// The object identifier, dotted when it decodes as BER, else hex; absent when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
}

/// A VLAN name (IEEE 802.1 subtype 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VlanName {
    /// VLAN id.
    pub vid: u16,
    /// Its name.
    pub name: String,
}

/// Port and protocol VLAN id (IEEE 802.1 subtype 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtocolVlan {
    /// Flags: bit 1 supported, bit 2 enabled.
    pub flags: u8,
    /// The VLAN id.
    pub vid: u16,
}

/// MAC/PHY configuration/status (IEEE 802.3 subtype 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MacPhy {
    /// Auto-negotiation supported.
    pub autoneg_supported: bool,
    /// Auto-negotiation enabled.
    pub autoneg_enabled: bool,
    /// PMD auto-negotiation advertised capability bits (RFC 3636 order, bit 0 is the MSB).
    pub pmd_capability: u16,
    /// Their names.
    pub pmd_capability_names: Vec<&'static str>,
    /// Operational MAU type (RFC 4836 dot3MauType).
    pub mau_type: u16,
    /// Its name, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mau_name: Option<&'static str>,
    /// Speed in Mb/s, where the MAU type says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
    /// `full` or `half`, where the MAU type says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplex: Option<&'static str>,
}

/// Power via MDI (IEEE 802.3 subtype 2), the 3-byte base form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerViaMdi {
    /// MDI power support bits.
    pub mdi_support: u8,
    /// PSE power pair.
    pub pse_power_pair: u8,
    /// Power class.
    pub power_class: u8,
}

/// Link aggregation (IEEE 802.3 subtype 3, also 802.1 subtype 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkAggregation {
    /// Status bits: 0 capable, 1 enabled.
    pub status: u8,
    /// Aggregated port id.
    pub port_id: u32,
}

/// An LLDP-MED network policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPolicy {
    /// Application type (1 voice, 2 voice signaling, ...).
    pub app_type: u8,
    /// Its name.
    pub app_name: &'static str,
    /// Policy unknown flag.
    pub unknown: bool,
    /// Tagged flag.
    pub tagged: bool,
    /// VLAN id.
    pub vid: u16,
    /// Layer 2 priority.
    pub l2_priority: u8,
    /// DSCP value.
    pub dscp: u8,
}

/// LLDP-MED (TIA-1057) contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Med {
    /// Capability bits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<u16>,
    /// Their names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capability_names: Vec<&'static str>,
    /// Device class (1..3 endpoint class, 4 network connectivity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<u8>,
    /// Network policies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_policies: Vec<NetworkPolicy>,
    /// Hardware revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_revision: Option<String>,
    /// Firmware revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_revision: Option<String>,
    /// Software revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software_revision: Option<String>,
    /// Serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Manufacturer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Model name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Asset id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
}

/// A TLV kept as bytes: unknown, or known but not parseable (then `error` says why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownTlv {
    /// TLV type (127 for organizational).
    pub tlv_type: u8,
    /// The OUI of an organizational TLV, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oui: Option<String>,
    /// The subtype of an organizational TLV.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtype: Option<u8>,
    /// The value (after OUI and subtype for organizational TLVs), hex.
    pub value_hex: String,
    /// Why a known TLV was kept raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A decoded LLDPDU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LldpPdu {
    /// Chassis id (TLV 1).
    pub chassis_id: LldpId,
    /// Port id (TLV 2).
    pub port_id: LldpId,
    /// Time to live in seconds (TLV 3); 0 means "forget me".
    pub ttl: u16,
    /// Port description (TLV 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_description: Option<String>,
    /// System name (TLV 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_name: Option<String>,
    /// System description (TLV 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_description: Option<String>,
    /// System capabilities (TLV 7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Management addresses (TLV 8).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub management_addresses: Vec<ManagementAddress>,
    /// IEEE 802.1 port VLAN id (the untagged VLAN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_vlan_id: Option<u16>,
    /// IEEE 802.1 port and protocol VLAN ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocol_vlans: Vec<ProtocolVlan>,
    /// IEEE 802.1 VLAN names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vlan_names: Vec<VlanName>,
    /// IEEE 802.1 protocol identities, hex.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocol_identities: Vec<String>,
    /// IEEE 802.3 MAC/PHY configuration/status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_phy: Option<MacPhy>,
    /// IEEE 802.3 power via MDI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_via_mdi: Option<PowerViaMdi>,
    /// IEEE 802.3 (or 802.1) link aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_aggregation: Option<LinkAggregation>,
    /// IEEE 802.3 maximum frame size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_size: Option<u16>,
    /// LLDP-MED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub med: Option<Med>,
    /// Everything else, raw.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<UnknownTlv>,
    /// Whether an End of LLDPDU TLV was found.
    pub end_seen: bool,
    /// The frame was cut short by the capture's snap length ([`parse_truncated`]): every
    /// whole TLV is here, the cut one and anything after it are not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

const CHASSIS_KINDS: [&str; 8] = [
    "reserved",
    "chassis_component",
    "interface_alias",
    "port_component",
    "mac_address",
    "network_address",
    "interface_name",
    "locally_assigned",
];
const PORT_KINDS: [&str; 8] = [
    "reserved",
    "interface_alias",
    "port_component",
    "mac_address",
    "network_address",
    "interface_name",
    "agent_circuit_id",
    "locally_assigned",
];

const SYS_CAPS: [(u32, &str); 11] = [
    (0x0001, "other"),
    (0x0002, "repeater"),
    (0x0004, "bridge"),
    (0x0008, "wlan_access_point"),
    (0x0010, "router"),
    (0x0020, "telephone"),
    (0x0040, "docsis_cable_device"),
    (0x0080, "station_only"),
    (0x0100, "c_vlan"),
    (0x0200, "s_vlan"),
    (0x0400, "two_port_mac_relay"),
];

const PMD_CAPS: [(u32, &str); 16] = [
    (0x8000, "other"),
    (0x4000, "10base-t"),
    (0x2000, "10base-tfd"),
    (0x1000, "100base-t4"),
    (0x0800, "100base-tx"),
    (0x0400, "100base-txfd"),
    (0x0200, "100base-t2"),
    (0x0100, "100base-t2fd"),
    (0x0080, "pause"),
    (0x0040, "asym_pause"),
    (0x0020, "sym_pause"),
    (0x0010, "asym_and_sym_pause"),
    (0x0008, "1000base-x"),
    (0x0004, "1000base-xfd"),
    (0x0002, "1000base-t"),
    (0x0001, "1000base-tfd"),
];

const MED_CAPS: [(u32, &str); 6] = [
    (0x01, "capabilities"),
    (0x02, "network_policy"),
    (0x04, "location_identification"),
    (0x08, "extended_power_pse"),
    (0x10, "extended_power_pd"),
    (0x20, "inventory"),
];

/// RFC 4836 dot3MauType: (type, name, Mb/s, duplex). Types without a stated duplex carry `None`.
const MAU_TYPES: &[(u16, &str, u32, Option<&str>)] = &[
    (1, "AUI", 10, None),
    (2, "10Base5", 10, Some("half")),
    (3, "FOIRL", 10, Some("half")),
    (4, "10Base2", 10, Some("half")),
    (5, "10BaseT", 10, None),
    (6, "10BaseFP", 10, Some("half")),
    (7, "10BaseFB", 10, Some("half")),
    (8, "10BaseFL", 10, None),
    (9, "10Broad36", 10, Some("half")),
    (10, "10BaseTHD", 10, Some("half")),
    (11, "10BaseTFD", 10, Some("full")),
    (12, "10BaseFLHD", 10, Some("half")),
    (13, "10BaseFLFD", 10, Some("full")),
    (14, "100BaseT4", 100, Some("half")),
    (15, "100BaseTXHD", 100, Some("half")),
    (16, "100BaseTXFD", 100, Some("full")),
    (17, "100BaseFXHD", 100, Some("half")),
    (18, "100BaseFXFD", 100, Some("full")),
    (19, "100BaseT2HD", 100, Some("half")),
    (20, "100BaseT2FD", 100, Some("full")),
    (21, "1000BaseXHD", 1000, Some("half")),
    (22, "1000BaseXFD", 1000, Some("full")),
    (23, "1000BaseLXHD", 1000, Some("half")),
    (24, "1000BaseLXFD", 1000, Some("full")),
    (25, "1000BaseSXHD", 1000, Some("half")),
    (26, "1000BaseSXFD", 1000, Some("full")),
    (27, "1000BaseCXHD", 1000, Some("half")),
    (28, "1000BaseCXFD", 1000, Some("full")),
    (29, "1000BaseTHD", 1000, Some("half")),
    (30, "1000BaseTFD", 1000, Some("full")),
    (31, "10GigBaseX", 10000, Some("full")),
    (32, "10GigBaseLX4", 10000, Some("full")),
    (33, "10GigBaseR", 10000, Some("full")),
    (34, "10GigBaseER", 10000, Some("full")),
    (35, "10GigBaseLR", 10000, Some("full")),
    (36, "10GigBaseSR", 10000, Some("full")),
    (37, "10GigBaseW", 10000, Some("full")),
    (38, "10GigBaseEW", 10000, Some("full")),
    (39, "10GigBaseLW", 10000, Some("full")),
    (40, "10GigBaseSW", 10000, Some("full")),
    (41, "10GigBaseCX4", 10000, Some("full")),
    (42, "2BaseTL", 2, Some("full")),
    (43, "10PassTS", 10, Some("full")),
    (44, "100BaseBX10D", 100, Some("full")),
    (45, "100BaseBX10U", 100, Some("full")),
    (46, "100BaseLX10", 100, Some("full")),
    (47, "1000BaseBX10D", 1000, Some("full")),
    (48, "1000BaseBX10U", 1000, Some("full")),
    (49, "1000BaseLX10", 1000, Some("full")),
    (50, "1000BasePX10D", 1000, Some("full")),
    (51, "1000BasePX10U", 1000, Some("full")),
    (52, "1000BasePX20D", 1000, Some("full")),
    (53, "1000BasePX20U", 1000, Some("full")),
    (54, "10GbaseT", 10000, Some("full")),
    (55, "10GbaseLRM", 10000, Some("full")),
    (56, "1000baseKX", 1000, Some("full")),
    (57, "10GbaseKX4", 10000, Some("full")),
    (58, "10GbaseKR", 10000, Some("full")),
];

/// Look up an operational MAU type: (name, Mb/s, duplex).
pub fn mau_type(t: u16) -> Option<(&'static str, u32, Option<&'static str>)> {
    MAU_TYPES.iter().find(|m| m.0 == t).map(|m| (m.1, m.2, m.3))
}

fn med_app_name(t: u8) -> &'static str {
    match t {
        1 => "voice",
        2 => "voice_signaling",
        3 => "guest_voice",
        4 => "guest_voice_signaling",
        5 => "softphone_voice",
        6 => "video_conferencing",
        7 => "streaming_video",
        8 => "video_signaling",
        _ => "reserved",
    }
}

fn parse_id(
    v: &[u8],
    kinds: &[&'static str; 8],
    mac_sub: u8,
    net_sub: u8,
    what: &'static str,
) -> Result<LldpId> {
    let mut c = Cursor::new(v, what);
    let subtype = c.u8().map_err(Error::in_tlv)?;
    let b = c.rest();
    if b.is_empty() || b.len() > 255 {
        return Err(Error::malformed(what, format!("id of {} byte(s)", b.len())));
    }
    let kind = kinds.get(subtype as usize).copied().unwrap_or("reserved");
    let value = if subtype == mac_sub {
        if b.len() == 6 {
            MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]).to_string()
        } else {
            hex(b)
        }
    } else if subtype == net_sub {
        match b.split_first() {
            Some((fam, a)) => {
                Address::from_iana(*fam, a, what).map_or_else(|_| hex(b), |a| a.to_string())
            }
            None => hex(b),
        }
    } else if kind == "reserved" || kind == "agent_circuit_id" {
        hex(b)
    } else {
        text(b)
    };
    Ok(LldpId { subtype, kind, value })
}

/// Decode a BER object identifier into dotted form; `None` if it does not decode.
fn ber_oid(b: &[u8]) -> Option<String> {
    let (first, rest) = b.split_first()?;
    let mut parts = vec![u64::from(first / 40).min(2), 0];
    parts[1] = u64::from(*first) - parts[0] * 40;
    let mut acc: u64 = 0;
    for (i, &x) in rest.iter().enumerate() {
        acc = acc.checked_mul(128)? | u64::from(x & 0x7f);
        if x & 0x80 == 0 {
            parts.push(acc);
            acc = 0;
        } else if i + 1 == rest.len() {
            return None;
        }
    }
    Some(parts.iter().map(u64::to_string).collect::<Vec<_>>().join("."))
}

fn parse_mgmt(v: &[u8]) -> Result<ManagementAddress> {
    const W: &str = "LLDP management address";
    let mut c = Cursor::new(v, W);
    let len = c.u8()? as usize;
    if !(2..=32).contains(&len) {
        return Err(Error::malformed(W, format!("address string length {len}")));
    }
    let family = c.u8()?;
    let address = Address::from_iana(family, c.take(len - 1)?, W)?;
    let interface_subtype = c.u8()?;
    let interface_number = c.u32()?;
    let oid_len = c.u8()? as usize;
    let oid_bytes = c.take(oid_len)?;
    let oid = (!oid_bytes.is_empty()).then(|| ber_oid(oid_bytes).unwrap_or_else(|| hex(oid_bytes)));
    let interface_numbering = match interface_subtype {
        1 => "unknown",
        2 => "ifindex",
        3 => "system_port_number",
        _ => "reserved",
    };
    Ok(ManagementAddress { address, interface_subtype, interface_numbering, interface_number, oid })
}

fn fixed<'a>(v: &'a [u8], n: usize, what: &'static str) -> Result<Cursor<'a>> {
    if v.len() < n {
        return Err(Error::malformed(what, format!("{} byte(s), expected {n}", v.len())));
    }
    Ok(Cursor::new(v, what))
}

/// Organizational TLVs. Returns `Ok(false)` when the (OUI, subtype) is not one we decode.
fn parse_org(pdu: &mut LldpPdu, oui: [u8; 3], subtype: u8, v: &[u8]) -> Result<bool> {
    match (oui, subtype) {
        (OUI_8021, 1) => pdu.port_vlan_id = Some(fixed(v, 2, "802.1 port VLAN id")?.u16()?),
        (OUI_8021, 2) => {
            let mut c = fixed(v, 3, "802.1 port and protocol VLAN")?;
            pdu.protocol_vlans.push(ProtocolVlan { flags: c.u8()?, vid: c.u16()? });
        }
        (OUI_8021, 3) => {
            let mut c = Cursor::new(v, "802.1 VLAN name");
            let vid = c.u16()?;
            let n = c.u8()? as usize;
            let name = text(c.take(n)?);
            pdu.vlan_names.push(VlanName { vid, name });
        }
        (OUI_8021, 4) => {
            let mut c = Cursor::new(v, "802.1 protocol identity");
            let n = c.u8()? as usize;
            pdu.protocol_identities.push(hex(c.take(n)?));
        }
        (OUI_8021, 7) | (OUI_8023, 3) => {
            let mut c = fixed(v, 5, "link aggregation")?;
            pdu.link_aggregation = Some(LinkAggregation { status: c.u8()?, port_id: c.u32()? });
        }
        (OUI_8023, 1) => {
            let mut c = fixed(v, 5, "802.3 MAC/PHY")?;
            let an = c.u8()?;
            let pmd = c.u16()?;
            let mau = c.u16()?;
            let known = mau_type(mau);
            pdu.mac_phy = Some(MacPhy {
                autoneg_supported: an & 1 != 0,
                autoneg_enabled: an & 2 != 0,
                pmd_capability: pmd,
                pmd_capability_names: bit_names(pmd.into(), &PMD_CAPS),
                mau_type: mau,
                mau_name: known.map(|k| k.0),
                speed_mbps: known.map(|k| k.1),
                duplex: known.and_then(|k| k.2),
            });
        }
        (OUI_8023, 2) => {
            let mut c = fixed(v, 3, "802.3 power via MDI")?;
            pdu.power_via_mdi = Some(PowerViaMdi {
                mdi_support: c.u8()?,
                pse_power_pair: c.u8()?,
                power_class: c.u8()?,
            });
        }
        (OUI_8023, 4) => pdu.max_frame_size = Some(fixed(v, 2, "802.3 max frame size")?.u16()?),
        (OUI_MED, 1) => {
            let mut c = fixed(v, 3, "LLDP-MED capabilities")?;
            let caps = c.u16()?;
            let med = pdu.med.get_or_insert_with(Med::default);
            med.capabilities = Some(caps);
            med.capability_names = bit_names(caps.into(), &MED_CAPS);
            med.device_class = Some(c.u8()?);
        }
        (OUI_MED, 2) => {
            let mut c = fixed(v, 4, "LLDP-MED network policy")?;
            let app_type = c.u8()?;
            let b = c.take(3)?;
            let x = u32::from_be_bytes([0, b[0], b[1], b[2]]);
            pdu.med.get_or_insert_with(Med::default).network_policies.push(NetworkPolicy {
                app_type,
                app_name: med_app_name(app_type),
                unknown: x & 0x80_0000 != 0,
                tagged: x & 0x40_0000 != 0,
                vid: ((x >> 9) & 0x0fff) as u16,
                l2_priority: ((x >> 6) & 0x7) as u8,
                dscp: (x & 0x3f) as u8,
            });
        }
        (OUI_MED, 5..=11) => {
            let med = pdu.med.get_or_insert_with(Med::default);
            let slot = match subtype {
                5 => &mut med.hardware_revision,
                6 => &mut med.firmware_revision,
                7 => &mut med.software_revision,
                8 => &mut med.serial_number,
                9 => &mut med.manufacturer,
                10 => &mut med.model,
                _ => &mut med.asset_id,
            };
            *slot = Some(text(v));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Parse an LLDPDU (the Ethernet payload after EtherType 0x88cc).
pub fn parse(buf: &[u8]) -> Result<LldpPdu> {
    parse_with(buf, false)
}

/// Parse an LLDPDU the capture cut short (pcap `incl_len < orig_len`, or a live frame longer
/// than the receive buffer), as tshark does: every whole TLV is decoded, the TLV the cut
/// falls into ends the PDU, and the result says `truncated: true`. The mandatory chassis id,
/// port id and TTL must still be whole ([`Error::Incomplete`] otherwise: there is no neighbour
/// without them).
pub fn parse_truncated(buf: &[u8]) -> Result<LldpPdu> {
    parse_with(buf, true)
}

fn parse_with(buf: &[u8], truncated: bool) -> Result<LldpPdu> {
    let mut c = Cursor::new(buf, "LLDP TLV");
    let mut chassis = None;
    let mut port = None;
    let mut ttl = None;
    let mut pdu = LldpPdu {
        chassis_id: LldpId { subtype: 0, kind: "reserved", value: String::new() },
        port_id: LldpId { subtype: 0, kind: "reserved", value: String::new() },
        ttl: 0,
        port_description: None,
        system_name: None,
        system_description: None,
        capabilities: None,
        management_addresses: Vec::new(),
        port_vlan_id: None,
        protocol_vlans: Vec::new(),
        vlan_names: Vec::new(),
        protocol_identities: Vec::new(),
        mac_phy: None,
        power_via_mdi: None,
        link_aggregation: None,
        max_frame_size: None,
        med: None,
        unknown: Vec::new(),
        end_seen: false,
        truncated,
    };
    while !c.is_empty() {
        let whole = c.u16().and_then(|head| Ok((head, c.take((head & 0x01ff) as usize)?)));
        let (head, v) = match whole {
            Ok(tlv) => tlv,
            Err(e) if truncated && e.is_incomplete() => break, // the cut: keep what is whole
            Err(e) => return Err(e),
        };
        let ty = (head >> 9) as u8;
        let len = (head & 0x01ff) as usize;
        match ty {
            0 => {
                pdu.end_seen = true;
                break;
            }
            1 => chassis = Some(parse_id(v, &CHASSIS_KINDS, 4, 5, "LLDP chassis id")?),
            2 => port = Some(parse_id(v, &PORT_KINDS, 3, 4, "LLDP port id")?),
            3 => {
                if len != 2 {
                    return Err(Error::malformed("LLDP TTL", format!("length {len}, expected 2")));
                }
                ttl = Some(u16::from_be_bytes([v[0], v[1]]));
            }
            4 => pdu.port_description = Some(text(v)),
            5 => pdu.system_name = Some(text(v)),
            6 => pdu.system_description = Some(text(v)),
            7 | 8 => {
                let r = if ty == 7 {
                    fixed(v, 4, "LLDP capabilities").and_then(|mut c| {
                        let (system, enabled) = (c.u16()?, c.u16()?);
                        pdu.capabilities = Some(Capabilities {
                            system,
                            enabled,
                            system_names: bit_names(system.into(), &SYS_CAPS),
                            enabled_names: bit_names(enabled.into(), &SYS_CAPS),
                        });
                        Ok(())
                    })
                } else {
                    parse_mgmt(v).map(|m| pdu.management_addresses.push(m))
                };
                if let Err(e) = r {
                    pdu.unknown.push(UnknownTlv {
                        tlv_type: ty,
                        oui: None,
                        subtype: None,
                        value_hex: hex(v),
                        error: Some(e.in_tlv().to_string()),
                    });
                }
            }
            127 if len >= 4 => {
                let oui = [v[0], v[1], v[2]];
                let subtype = v[3];
                let body = &v[4..];
                let (known, error) = match parse_org(&mut pdu, oui, subtype, body) {
                    Ok(k) => (k, None),
                    Err(e) => (false, Some(e.in_tlv().to_string())),
                };
                if !known {
                    pdu.unknown.push(UnknownTlv {
                        tlv_type: ty,
                        oui: Some(hex(&oui)),
                        subtype: Some(subtype),
                        value_hex: hex(body),
                        error,
                    });
                }
            }
            _ => pdu.unknown.push(UnknownTlv {
                tlv_type: ty,
                oui: None,
                subtype: None,
                value_hex: hex(v),
                error: (ty == 127).then(|| "organizational TLV shorter than 4 bytes".to_string()),
            }),
        }
    }
    // A PDU that ends without its End TLV and without a mandatory TLV was cut short.
    let missing = |name: &str| {
        if pdu.end_seen {
            Error::malformed("LLDPDU", format!("no {name} TLV"))
        } else {
            Error::Incomplete { what: "LLDPDU", need: 2, have: 0 }
        }
    };
    let chassis_id = chassis.ok_or_else(|| missing("chassis id"))?;
    let port_id = port.ok_or_else(|| missing("port id"))?;
    let ttl = ttl.ok_or_else(|| missing("TTL"))?;
    pdu.chassis_id = chassis_id;
    pdu.port_id = port_id;
    pdu.ttl = ttl;
    Ok(pdu)
}
