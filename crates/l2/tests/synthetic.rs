//! Hand-built frames and captures (no fixtures needed), error kinds, and proptest: no parser
//! panics on arbitrary bytes or on mutated valid frames.

use assim_l2::pcap::{Format, Reader};
use assim_l2::{Error, Pdu, cdp, decode_frame, decode_pcap_to_json_lines, ether, lldp};
use proptest::prelude::*;

fn tlv(ty: u8, v: &[u8]) -> Vec<u8> {
    let h = (u16::from(ty) << 9) | v.len() as u16;
    [&h.to_be_bytes()[..], v].concat()
}

/// An 802.1Q-tagged LLDP frame with MED policy, MED inventory, an IPv4 management address
/// with an OID, and an unknown organizational TLV.
fn lldp_frame() -> Vec<u8> {
    let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 0x02, 0, 0, 0, 0, 0x01];
    f.extend([0x81, 0x00, 0xa0, 0x64, 0x88, 0xcc]); // PCP 5, VID 100
    f.extend(tlv(1, &[7, b's', b'w', b'1']));
    f.extend(tlv(2, &[3, 0x02, 0, 0, 0, 0, 0x01]));
    f.extend(tlv(3, &[0, 30]));
    f.extend(tlv(8, &[5, 1, 10, 0, 0, 1, 2, 0, 0, 0, 7, 6, 0x2b, 6, 1, 4, 1, 9]));
    f.extend(tlv(127, &[0x00, 0x12, 0xbb, 1, 0x00, 0x33, 4]));
    f.extend(tlv(127, &[0x00, 0x12, 0xbb, 2, 1, 0x40, 0x64 << 1, 0x2e]));
    f.extend(tlv(127, &[0x00, 0x12, 0xbb, 10, b'X', b'1']));
    f.extend(tlv(127, &[0xaa, 0xbb, 0xcc, 9, 0xde, 0xad]));
    f.extend(tlv(0, &[]));
    f
}

fn cdp_tlv(ty: u16, v: &[u8]) -> Vec<u8> {
    [&ty.to_be_bytes()[..], &(v.len() as u16 + 4).to_be_bytes(), v].concat()
}

/// A CDP v2 frame with a voice VLAN, IPv6 address and a deliberately wrong checksum.
fn cdp_frame() -> Vec<u8> {
    let mut pdu = vec![2, 180, 0x12, 0x34];
    pdu.extend(cdp_tlv(1, b"sw2"));
    pdu.extend(cdp_tlv(0x0e, &[1, 0x00, 0x96]));
    let mut a = vec![0, 0, 0, 1, 2, 8, 0xaa, 0xaa, 3, 0, 0, 0, 0x86, 0xdd, 0, 16];
    a.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    pdu.extend(cdp_tlv(0x16, &a));
    let mut f = vec![0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc, 0x02, 0, 0, 0, 0, 0x02];
    f.extend((pdu.len() as u16 + 8).to_be_bytes());
    f.extend([0xaa, 0xaa, 0x03, 0, 0, 0x0c, 0x20, 0x00]);
    f.extend(pdu);
    f
}

#[test]
fn lldp_synthetic_fields() {
    let d = decode_frame(&lldp_frame()).unwrap();
    assert_eq!(d.vlan_tags.len(), 1);
    assert_eq!((d.vlan_tags[0].vid, d.vlan_tags[0].pcp), (100, 5));
    let Pdu::Lldp(l) = d.pdu else { panic!() };
    assert_eq!((l.chassis_id.kind, l.chassis_id.value.as_str()), ("locally_assigned", "sw1"));
    assert_eq!((l.port_id.kind, l.port_id.value.as_str()), ("mac_address", "02:00:00:00:00:01"));
    assert_eq!(l.ttl, 30);
    let m = &l.management_addresses[0];
    assert_eq!(m.address.to_string(), "10.0.0.1");
    assert_eq!(m.oid.as_deref(), Some("1.3.6.1.4.1.9"));
    let med = l.med.unwrap();
    assert_eq!(med.capabilities, Some(0x33));
    assert_eq!(med.device_class, Some(4));
    assert_eq!(med.model.as_deref(), Some("X1"));
    let p = &med.network_policies[0];
    assert_eq!((p.app_name, p.tagged, p.vid, p.dscp), ("voice", true, 100, 46));
    assert_eq!(l.unknown.len(), 1);
    assert_eq!(l.unknown[0].oui.as_deref(), Some("aabbcc"));
    assert_eq!((l.unknown[0].subtype, l.unknown[0].value_hex.as_str()), (Some(9), "dead"));
}

#[test]
fn cdp_synthetic_fields_and_bad_checksum_is_a_flag() {
    let Pdu::Cdp(c) = decode_frame(&cdp_frame()).unwrap().pdu else { panic!() };
    assert!(!c.checksum_valid);
    assert_eq!(c.voice_vlan, Some(150));
    assert_eq!(c.management_addresses[0].to_string(), "2001:db8::1");
    assert_eq!(c.device_id.as_deref(), Some("sw2"));
}

#[test]
fn incomplete_and_malformed_are_distinct() {
    let f = lldp_frame();
    assert!(decode_frame(&f[..10]).unwrap_err().is_incomplete());
    // Cut inside a TLV: incomplete.
    assert!(decode_frame(&f[..25]).unwrap_err().is_incomplete());
    // TTL TLV of length 1: malformed.
    let bad = [tlv(1, &[7, b'a']), tlv(2, &[7, b'b']), tlv(3, &[1]), tlv(0, &[])].concat();
    assert!(matches!(lldp::parse(&bad), Err(Error::Malformed { .. })));
    // No chassis id but an End TLV: malformed.
    let bad = [tlv(2, &[7, b'b']), tlv(3, &[0, 1]), tlv(0, &[])].concat();
    assert!(matches!(lldp::parse(&bad), Err(Error::Malformed { .. })));
    // CDP TLV length below 4: malformed; CDP TLV running past the end: incomplete.
    assert!(matches!(cdp::parse(&[2, 180, 0, 0, 0, 1, 0, 2]), Err(Error::Malformed { .. })));
    assert!(cdp::parse(&[2, 180, 0, 0, 0, 1, 0, 9, b'x']).unwrap_err().is_incomplete());
    // 802.3 length larger than the frame: incomplete.
    let c = cdp_frame();
    assert!(ether::parse(&c[..c.len() - 1]).unwrap_err().is_incomplete());
}

fn classic(magic: u32, big: bool, frames: &[&[u8]]) -> Vec<u8> {
    let w = |x: u32| if big { x.to_be_bytes() } else { x.to_le_bytes() };
    let mut out = w(magic).to_vec();
    out.extend(if big { [0, 2, 0, 4] } else { [2, 0, 4, 0] });
    for x in [0, 0, 65535, 1] {
        out.extend(w(x));
    }
    for (i, f) in frames.iter().enumerate() {
        for x in [1000 + i as u32, 500, f.len() as u32, f.len() as u32] {
            out.extend(w(x));
        }
        out.extend(*f);
    }
    out
}

fn pcapng(frames: &[&[u8]]) -> Vec<u8> {
    let block = |ty: u32, body: &[u8]| {
        let mut b = body.to_vec();
        b.resize(body.len().div_ceil(4) * 4, 0);
        let len = (b.len() + 12) as u32;
        [&ty.to_le_bytes()[..], &len.to_le_bytes(), &b, &len.to_le_bytes()].concat()
    };
    let mut out = block(
        0x0a0d0d0a,
        &[0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    // Interface: Ethernet, if_tsresol = 10^-9.
    out.extend(block(1, &[1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]));
    for f in frames {
        let ts: u64 = 1_700_000_000_123_456_789;
        let mut b = vec![0, 0, 0, 0];
        b.extend(((ts >> 32) as u32).to_le_bytes());
        b.extend((ts as u32).to_le_bytes());
        b.extend((f.len() as u32).to_le_bytes());
        b.extend((f.len() as u32).to_le_bytes());
        b.extend(*f);
        out.extend(block(6, &b));
    }
    out
}

#[test]
fn capture_formats_and_endianness() {
    let (l, c) = (lldp_frame(), cdp_frame());
    for (magic, big, fmt, nanos) in [
        (0xa1b2c3d4, false, Format::PcapMicro, 500_000),
        (0xa1b2c3d4, true, Format::PcapMicro, 500_000),
        (0xa1b23c4d, false, Format::PcapNano, 500),
        (0xa1b23c4d, true, Format::PcapNano, 500),
    ] {
        let file = classic(magic, big, &[&l, &c]);
        let r = Reader::new(&file).unwrap();
        assert_eq!(r.format(), fmt);
        let p: Vec<_> = r.map(Result::unwrap).collect();
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].number, p[1].timestamp.secs, p[1].timestamp.nanos), (2, 1001, nanos));
        assert_eq!(p[1].data, &c[..]);
    }
    let file = pcapng(&[&l, &c]);
    let r = Reader::new(&file).unwrap();
    assert_eq!(r.format(), Format::Pcapng);
    let p: Vec<_> = r.map(Result::unwrap).collect();
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].timestamp.secs, p[0].timestamp.nanos), (1_700_000_000, 123_456_789));
    let lines = decode_pcap_to_json_lines(&file).unwrap();
    assert!(
        lines[0].contains("\"protocol\":\"lldp\"") && lines[1].contains("\"protocol\":\"cdp\"")
    );
    assert!(matches!(Reader::new(b"not a capture"), Err(Error::Malformed { .. })));
    assert!(Reader::new(&[0xd4, 0xc3]).unwrap_err().is_incomplete());
}

fn exercise(b: &[u8]) {
    let _ = decode_frame(b);
    let _ = lldp::parse(b);
    let _ = cdp::parse(b);
    if let Ok(r) = Reader::new(b) {
        for _ in r {}
    }
    let _ = decode_pcap_to_json_lines(b);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&b);
        let mut with_lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc];
        with_lldp.extend(&b);
        exercise(&with_lldp);
    }

    #[test]
    fn mutated_frames_never_panic(
        which in 0usize..4,
        muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let (l, c) = (lldp_frame(), cdp_frame());
        let mut b = match which {
            0 => l,
            1 => c,
            2 => classic(0xa1b2c3d4, which == 2, &[&l, &c]),
            _ => pcapng(&[&l, &c]),
        };
        for (i, v) in muts {
            let n = b.len();
            b[i % n] = v;
        }
        exercise(&b);
        b.truncate(cut % (b.len() + 1));
        exercise(&b);
    }
}
