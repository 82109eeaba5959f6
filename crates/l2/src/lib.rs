//! assim-l2: passive layer-2 neighbour discovery — what the switch says about the port a host
//! is plugged into, decoded from LLDP and CDP frames. Everything here is a pure parser over
//! `&[u8]`: no sockets, no clocks, no `unsafe`, no panics on any input. Each parser returns
//! [`Error::Incomplete`] when the bytes end early and [`Error::Malformed`] when they contradict
//! the format. The capturing side (an `AF_PACKET` listener) lives elsewhere.
//!
//! Layout:
//! - [`common`]: the error type, MAC and network address types, hex/text helpers.
//! - [`ether`]: Ethernet II and 802.3 LLC/SNAP framing, VLAN tags; tells LLDP and CDP apart.
//! - [`lldp`]: LLDPDUs, with IEEE 802.1, IEEE 802.3 and LLDP-MED organizational TLVs.
//! - [`cdp`]: CDP v1/v2 PDUs, with checksum verification reported as a flag.
//! - [`pcap`]: a classic pcap and pcapng reader, for fixtures and `assim decode-l2`.
//! - this file: [`decode_frame`] (Ethernet bytes to a [`Decoded`]) and
//!   [`decode_pcap_to_json_lines`].

pub mod cdp;
pub mod common;
pub mod ether;
pub mod lldp;
pub mod pcap;

use serde::Serialize;

pub use common::{Address, Error, MacAddr, Result};

/// The discovery protocol data a frame carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pdu {
    /// An LLDPDU (boxed: the PDUs are large next to `Other`).
    Lldp(Box<lldp::LldpPdu>),
    /// A CDP PDU.
    Cdp(Box<cdp::CdpPdu>),
    /// Neither; the frame's payload kind says what it was.
    Other,
}

/// A decoded Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decoded {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC: the switch port (LLDP) or switch (CDP) that sent it.
    pub src: MacAddr,
    /// VLAN tags, outermost first.
    pub vlan_tags: Vec<ether::VlanTag>,
    /// What the Ethernet header said it carries.
    pub payload: ether::Payload,
    /// The parsed PDU.
    pub pdu: Pdu,
    /// The frame was cut short by the capture (see [`decode_captured`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Decode one Ethernet frame (without FCS). Frames that are neither LLDP nor CDP decode to
/// [`Pdu::Other`]; errors come from the framing or from the LLDP/CDP parser.
pub fn decode_frame(frame: &[u8]) -> Result<Decoded> {
    decode_captured(frame, frame.len())
}

/// Decode a captured frame whose length on the wire was `orig_len` (pcap's `orig_len`, or
/// what `recvfrom(MSG_TRUNC)` returned). When the capture holds less (`frame.len() <
/// orig_len`, cut by a snap length), the frame is decoded as tshark does: every whole TLV,
/// then `truncated: true` on the frame and its PDU ([`lldp::parse_truncated`],
/// [`cdp::parse_truncated`]) instead of an error. A complete frame decodes as
/// [`decode_frame`].
pub fn decode_captured(frame: &[u8], orig_len: usize) -> Result<Decoded> {
    let truncated = orig_len > frame.len();
    let f = if truncated { ether::parse_truncated(frame)? } else { ether::parse(frame)? };
    let pdu = match (f.payload, truncated) {
        (ether::Payload::Lldp, false) => Pdu::Lldp(Box::new(lldp::parse(f.body)?)),
        (ether::Payload::Lldp, true) => Pdu::Lldp(Box::new(lldp::parse_truncated(f.body)?)),
        (ether::Payload::Cdp, false) => Pdu::Cdp(Box::new(cdp::parse(f.body)?)),
        (ether::Payload::Cdp, true) => Pdu::Cdp(Box::new(cdp::parse_truncated(f.body)?)),
        _ => Pdu::Other,
    };
    Ok(Decoded {
        dst: f.dst,
        src: f.src,
        vlan_tags: f.vlan_tags,
        payload: f.payload,
        pdu,
        truncated,
    })
}

/// One line of `assim decode-l2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrameRecord {
    /// 1-based frame number, as Wireshark counts.
    pub frame: u64,
    /// Capture time, `seconds.nanoseconds`.
    pub timestamp: String,
    /// `lldp`, `cdp`, `other` or `error`.
    pub protocol: &'static str,
    /// Source MAC, when the Ethernet header parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<MacAddr>,
    /// Destination MAC, when the Ethernet header parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<MacAddr>,
    /// VLAN tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vlan_tags: Vec<ether::VlanTag>,
    /// For `other`: what the frame carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<ether::Payload>,
    /// The LLDP fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lldp: Option<lldp::LldpPdu>,
    /// The CDP fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdp: Option<cdp::CdpPdu>,
    /// Why the frame did not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The capture holds less than the frame had on the wire (pcap `incl_len < orig_len`):
    /// the whole TLVs are decoded, as tshark does ("Packet size limited during capture").
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The frame's length on the wire, when it was truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orig_len: Option<u32>,
}

/// Decode a captured frame into its record (never fails: errors become `protocol: "error"`).
pub fn frame_record(p: &pcap::Packet<'_>) -> FrameRecord {
    let mut r = FrameRecord {
        frame: p.number,
        timestamp: p.timestamp.to_string(),
        protocol: "error",
        src: None,
        dst: None,
        vlan_tags: Vec::new(),
        payload: None,
        lldp: None,
        cdp: None,
        error: None,
        truncated: false,
        orig_len: None,
    };
    if (p.data.len() as u64) < u64::from(p.orig_len) {
        r.truncated = true;
        r.orig_len = Some(p.orig_len);
    }
    if p.link_type != pcap::LINKTYPE_ETHERNET {
        r.error = Some(Error::Unsupported(format!("link type {}", p.link_type)).to_string());
        return r;
    }
    let framed = if r.truncated { ether::parse_truncated(p.data) } else { ether::parse(p.data) };
    match framed {
        Err(e) => r.error = Some(e.to_string()),
        Ok(f) => {
            r.src = Some(f.src);
            r.dst = Some(f.dst);
            r.vlan_tags = f.vlan_tags;
            let parsed = match f.payload {
                ether::Payload::Lldp if r.truncated => lldp::parse_truncated(f.body).map(|l| {
                    r.protocol = "lldp";
                    r.lldp = Some(l);
                }),
                ether::Payload::Cdp if r.truncated => cdp::parse_truncated(f.body).map(|c| {
                    r.protocol = "cdp";
                    r.cdp = Some(c);
                }),
                ether::Payload::Lldp => lldp::parse(f.body).map(|l| {
                    r.protocol = "lldp";
                    r.lldp = Some(l);
                }),
                ether::Payload::Cdp => cdp::parse(f.body).map(|c| {
                    r.protocol = "cdp";
                    r.cdp = Some(c);
                }),
                other => {
                    r.protocol = "other";
                    r.payload = Some(other);
                    Ok(())
                }
            };
            if let Err(e) = parsed {
                r.error = Some(e.to_string());
            }
        }
    }
    r
}

/// Decode every frame of a pcap or pcapng file into one JSON object per frame. A bad file
/// header is an error; a damaged record ends the list with an `error` object for it.
pub fn decode_pcap_to_json_lines(bytes: &[u8]) -> Result<Vec<String>> {
    let reader = pcap::Reader::new(bytes)?;
    let mut out = Vec::new();
    let mut next = 1;
    for item in reader {
        let record = match item {
            Ok(p) => {
                next = p.number + 1;
                frame_record(&p)
            }
            Err(e) => FrameRecord {
                frame: next,
                timestamp: String::new(),
                protocol: "error",
                src: None,
                dst: None,
                vlan_tags: Vec::new(),
                payload: None,
                lldp: None,
                cdp: None,
                error: Some(e.to_string()),
                truncated: false,
                orig_len: None,
            },
        };
        out.push(
            serde_json::to_string(&record).map_err(|e| Error::malformed("JSON", e.to_string()))?,
        );
    }
    Ok(out)
}
