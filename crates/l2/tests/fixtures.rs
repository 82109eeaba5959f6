//! Decoding the real captures in `shared/fixtures/l2` (beside the checkout; see
//! `assim_util::testing::l2_fixtures`). Expected values were read off
//! `tshark -r FILE -V` for each file.

use std::path::Path;

use assim_l2::pcap::{Format, Reader};
use assim_l2::{Pdu, decode_frame, decode_pcap_to_json_lines};
use assim_util::testing::{l2_fixtures, skip};

fn fixture(name: &str) -> Option<Vec<u8>> {
    let Some(dir) = l2_fixtures(Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        skip("shared/fixtures/l2 not found beside the checkout (or set ASSIM_L2_FIXTURES)");
        return None;
    };
    Some(std::fs::read(dir.join(name)).expect("fixture present but unreadable"))
}

fn decoded(bytes: &[u8]) -> Vec<assim_l2::Decoded> {
    let r = Reader::new(bytes).unwrap();
    assert_eq!(r.format(), Format::PcapMicro);
    assert_eq!(r.link_type(), Some(1));
    r.map(|p| decode_frame(p.unwrap().data).unwrap()).collect()
}

#[test]
fn lldp_detailed_matches_tshark() {
    let Some(bytes) = fixture("lldp.detailed.pcap") else { return };
    let frames = decoded(&bytes);
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    assert_eq!(f.src.to_string(), "00:01:30:f9:ad:a0");
    assert_eq!(f.dst.to_string(), "01:80:c2:00:00:0e");
    let Pdu::Lldp(l) = &f.pdu else { panic!("not LLDP: {f:?}") };
    assert_eq!((l.chassis_id.subtype, l.chassis_id.kind), (4, "mac_address"));
    assert_eq!(l.chassis_id.value, "00:01:30:f9:ad:a0");
    assert_eq!((l.port_id.subtype, l.port_id.kind), (5, "interface_name"));
    assert_eq!(l.port_id.value, "1/1");
    assert_eq!(l.ttl, 120);
    assert_eq!(l.port_description.as_deref(), Some("Summit300-48-Port 1001"));
    assert_eq!(l.system_name.as_deref(), Some("Summit300-48"));
    assert_eq!(
        l.system_description.as_deref(),
        Some("Summit300-48 - Version 7.4e.1 (Build 5) by Release_Master 05/27/05 04:53:11")
    );
    let caps = l.capabilities.as_ref().unwrap();
    assert_eq!((caps.system, caps.enabled), (0x0014, 0x0014));
    assert_eq!(caps.enabled_names, ["bridge", "router"]);
    assert_eq!(l.management_addresses.len(), 1);
    let m = &l.management_addresses[0];
    assert_eq!(m.address.to_string(), "00:01:30:f9:ad:a0");
    assert_eq!((m.interface_subtype, m.interface_number, m.oid.as_deref()), (2, 1001, None));
    assert_eq!(l.port_vlan_id, Some(488));
    assert_eq!(l.vlan_names.len(), 1);
    assert_eq!((l.vlan_names[0].vid, l.vlan_names[0].name.as_str()), (488, "v2-0488-03-0505"));
    assert_eq!(l.protocol_vlans[0].flags, 1);
    assert_eq!(l.protocol_vlans[0].vid, 0);
    let mp = l.mac_phy.as_ref().unwrap();
    assert!(mp.autoneg_supported && mp.autoneg_enabled);
    assert_eq!(mp.pmd_capability, 0x6c00);
    assert_eq!(mp.pmd_capability_names, ["10base-t", "10base-tfd", "100base-tx", "100base-txfd"]);
    assert_eq!(mp.mau_type, 16);
    assert_eq!(
        (mp.mau_name, mp.speed_mbps, mp.duplex),
        (Some("100BaseTXFD"), Some(100), Some("full"))
    );
    let p = l.power_via_mdi.as_ref().unwrap();
    assert_eq!((p.mdi_support, p.pse_power_pair, p.power_class), (7, 1, 0));
    assert_eq!(l.link_aggregation.as_ref().map(|a| (a.status, a.port_id)), Some((1, 0)));
    assert_eq!(l.max_frame_size, Some(1522));
    assert!(l.unknown.is_empty(), "{:?}", l.unknown);
    assert!(l.end_seen);
}

#[test]
fn cdp_v1_matches_tshark() {
    let Some(bytes) = fixture("cdp.pcap") else { return };
    let frames = decoded(&bytes);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].src.to_string(), "00:e0:1e:d5:d5:15");
    assert_eq!(frames[0].dst.to_string(), "01:00:0c:cc:cc:cc");
    let Pdu::Cdp(c) = &frames[0].pdu else { panic!("not CDP") };
    assert_eq!((c.version, c.ttl, c.checksum), (1, 180, 0xdff0));
    assert!(c.checksum_valid);
    assert_eq!(c.device_id.as_deref(), Some("R1"));
    assert_eq!(c.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.168.10.1"]);
    assert_eq!(c.port_id.as_deref(), Some("Ethernet0"));
    assert_eq!(c.capabilities, Some(0x01));
    assert_eq!(c.capability_names, ["router"]);
    assert_eq!(c.platform.as_deref(), Some("cisco 1601"));
    let sw = c.software_version.as_deref().unwrap();
    assert!(sw.contains("IOS (tm) 1600 Software (C1600-NY-L), Version 11.2(12)P"), "{sw}");
    assert!(c.unknown.is_empty());
}

#[test]
fn cdp_v2_matches_tshark_including_odd_length_checksum() {
    let Some(bytes) = fixture("cdp_v2.pcap") else { return };
    let frames = decoded(&bytes);
    assert_eq!(frames.len(), 4);
    for f in &frames {
        assert_eq!(f.src.to_string(), "00:0b:be:18:9a:41");
        let Pdu::Cdp(c) = &f.pdu else { panic!("not CDP") };
        assert_eq!((c.version, c.ttl, c.checksum), (2, 180, 0x09a0));
        // 443-byte PDU: tshark says "correct" under Cisco's odd-length rule.
        assert!(c.checksum_valid);
        assert_eq!(c.checksum_method, Some("cisco_odd_length"));
        assert_eq!(c.device_id.as_deref(), Some("myswitch"));
        assert_eq!(c.port_id.as_deref(), Some("FastEthernet0/1"));
        assert_eq!(c.platform.as_deref(), Some("cisco WS-C2950-12"));
        assert_eq!(c.capabilities, Some(0x28));
        assert_eq!(c.vtp_domain.as_deref(), Some("MYDOMAIN"));
        assert_eq!(c.native_vlan, Some(1));
        assert_eq!(c.duplex, Some("full"));
        assert_eq!((c.trust_bitmap, c.untrusted_cos), (Some(0), Some(0)));
        let addrs: Vec<String> = c.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["192.168.0.253"]);
        let mgmt: Vec<String> = c.management_addresses.iter().map(ToString::to_string).collect();
        assert_eq!(mgmt, ["192.168.0.253"]);
        // Protocol hello (cluster management) is kept raw, not dropped.
        assert_eq!(c.unknown.len(), 1);
        assert_eq!(c.unknown[0].tlv_type, 0x0008);
        assert!(c.unknown[0].value_hex.starts_with("00000c0112"));
    }
}

#[test]
fn n0_eth2_dtp_then_cdp() {
    let Some(bytes) = fixture("n0.eth2.cdp.pcap") else { return };
    let frames = decoded(&bytes);
    assert_eq!(frames.len(), 2);
    // Frame 1 is DTP (SNAP PID 0x2004), padded to 60 bytes: not ours, but not an error.
    assert_eq!(frames[0].pdu, Pdu::Other);
    assert_eq!(
        frames[0].payload,
        assim_l2::ether::Payload::OtherSnap { oui: [0, 0, 0x0c], pid: 0x2004 }
    );
    let Pdu::Cdp(c) = &frames[1].pdu else { panic!("not CDP") };
    assert_eq!(frames[1].src.to_string(), "00:0f:23:b0:62:84");
    assert_eq!((c.version, c.checksum, c.checksum_valid), (2, 0x3dc6, true));
    assert_eq!(c.device_id.as_deref(), Some("csr706a.pbm.ihost.com"));
    assert_eq!(c.platform.as_deref(), Some("cisco WS-C3750G-24TS"));
    assert_eq!(c.port_id.as_deref(), Some("GigabitEthernet1/0/4"));
    assert_eq!(c.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), ["129.40.5.249"]);
    assert_eq!(c.capabilities, Some(0x29));
    assert_eq!(c.capability_names, ["router", "switch", "igmp"]);
    assert_eq!(c.vtp_domain.as_deref(), Some("spbm"));
    assert_eq!(c.native_vlan, Some(77));
    assert_eq!(c.duplex, Some("full"));
}

#[test]
fn json_lines_have_frame_time_protocol_and_source() {
    let Some(bytes) = fixture("n0.eth2.cdp.pcap") else { return };
    let lines = decode_pcap_to_json_lines(&bytes).unwrap();
    assert_eq!(lines.len(), 2);
    let v: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v[0]["frame"], 1);
    assert_eq!(v[0]["protocol"], "other");
    assert_eq!(v[0]["timestamp"], "1293473428.337032000");
    assert_eq!(v[1]["frame"], 2);
    assert_eq!(v[1]["protocol"], "cdp");
    assert_eq!(v[1]["timestamp"], "1293473458.331732000");
    assert_eq!(v[1]["src"], "00:0f:23:b0:62:84");
    assert_eq!(v[1]["cdp"]["device_id"], "csr706a.pbm.ihost.com");

    let Some(lldp) = fixture("lldp.detailed.pcap") else { return };
    let lines = decode_pcap_to_json_lines(&lldp).unwrap();
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["protocol"], "lldp");
    assert_eq!(v["timestamp"], "1121861869.183027000");
    assert_eq!(v["lldp"]["system_name"], "Summit300-48");
    assert_eq!(v["lldp"]["mac_phy"]["speed_mbps"], 100);
}

#[test]
fn truncated_capture_ends_with_an_error_record() {
    let Some(bytes) = fixture("cdp_v2.pcap") else { return };
    let lines = decode_pcap_to_json_lines(&bytes[..bytes.len() - 10]).unwrap();
    assert_eq!(lines.len(), 4);
    let last: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(last["frame"], 4);
    assert_eq!(last["protocol"], "error");
    assert!(last["error"].as_str().unwrap().contains("incomplete"));
}
