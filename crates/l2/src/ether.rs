//! Ethernet framing: Ethernet II and IEEE 802.3 + LLC/SNAP, with up to four VLAN tags.

use serde::Serialize;

use crate::common::{Cursor, Error, MacAddr, Result};

/// EtherType of LLDP.
pub const ETHERTYPE_LLDP: u16 = 0x88cc;
/// Cisco's SNAP OUI.
pub const OUI_CISCO: [u8; 3] = [0x00, 0x00, 0x0c];
/// SNAP protocol id of CDP (under the Cisco OUI).
pub const SNAP_PID_CDP: u16 = 0x2000;

const TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const MAX_TAGS: usize = 4;

/// One 802.1Q (or 802.1ad) tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VlanTag {
    /// Tag protocol identifier (0x8100, 0x88a8 or 0x9100).
    pub tpid: u16,
    /// Priority code point.
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN id.
    pub vid: u16,
}

/// What the frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// EtherType 0x88cc.
    Lldp,
    /// 802.3 length, LLC/SNAP AA AA 03, OUI 00 00 0C, PID 0x2000.
    Cdp,
    /// An Ethernet II frame of another EtherType.
    OtherEthertype {
        /// The EtherType.
        ethertype: u16,
    },
    /// An 802.3 frame with SNAP but not CDP (DTP, VTP, PAgP, UDLD, ...).
    OtherSnap {
        /// The SNAP OUI, hex.
        #[serde(serialize_with = "crate::common::serialize_hex")]
        oui: [u8; 3],
        /// The SNAP protocol id.
        pid: u16,
    },
    /// An 802.3 frame with plain LLC (for example STP).
    OtherLlc {
        /// Destination service access point.
        dsap: u8,
        /// Source service access point.
        ssap: u8,
    },
}

/// A parsed Ethernet header; `body` is what follows it (for CDP, the CDP PDU itself, without
/// LLC/SNAP and without trailing padding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EthernetFrame<'a> {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// VLAN tags, outermost first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vlan_tags: Vec<VlanTag>,
    /// What the frame carries.
    pub payload: Payload,
    /// The bytes after the headers.
    #[serde(skip)]
    pub body: &'a [u8],
}

/// Parse an Ethernet frame (without FCS). 802.3 frames are cut to their length field, so
/// trailing padding never reaches the payload parser.
pub fn parse(frame: &[u8]) -> Result<EthernetFrame<'_>> {
    parse_with(frame, false)
}

/// [`parse`] for a frame the capture cut short: an 802.3 length field longer than what was
/// captured takes what there is (the payload parser then sees the cut). The Ethernet header
/// itself (and the LLC/SNAP header) must be whole.
pub fn parse_truncated(frame: &[u8]) -> Result<EthernetFrame<'_>> {
    parse_with(frame, true)
}

fn parse_with(frame: &[u8], truncated: bool) -> Result<EthernetFrame<'_>> {
    let mut c = Cursor::new(frame, "ethernet header");
    let dst = MacAddr(c.array()?);
    let src = MacAddr(c.array()?);
    let mut vlan_tags = Vec::new();
    let mut ty = c.u16()?;
    while TPIDS.contains(&ty) {
        if vlan_tags.len() == MAX_TAGS {
            return Err(Error::malformed("ethernet header", "more than 4 VLAN tags"));
        }
        let tci = c.u16()?;
        vlan_tags.push(VlanTag {
            tpid: ty,
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        });
        ty = c.u16()?;
    }
    if ty >= 0x0600 {
        let payload = if ty == ETHERTYPE_LLDP {
            Payload::Lldp
        } else {
            Payload::OtherEthertype { ethertype: ty }
        };
        return Ok(EthernetFrame { dst, src, vlan_tags, payload, body: c.rest() });
    }
    if ty > 1500 {
        return Err(Error::malformed(
            "ethernet header",
            format!("type/length {ty:#06x} is neither"),
        ));
    }
    let len = if truncated { (ty as usize).min(c.remaining()) } else { ty as usize };
    let mut llc = Cursor::new(c.take(len)?, "802.3 LLC");
    let (dsap, ssap, control) = (llc.u8()?, llc.u8()?, llc.u8()?);
    if dsap == 0xaa && ssap == 0xaa && control == 0x03 {
        let oui: [u8; 3] = llc.array()?;
        let pid = llc.u16()?;
        let payload = if oui == OUI_CISCO && pid == SNAP_PID_CDP {
            Payload::Cdp
        } else {
            Payload::OtherSnap { oui, pid }
        };
        Ok(EthernetFrame { dst, src, vlan_tags, payload, body: llc.rest() })
    } else {
        Ok(EthernetFrame {
            dst,
            src,
            vlan_tags,
            payload: Payload::OtherLlc { dsap, ssap },
            body: llc.rest(),
        })
    }
}
