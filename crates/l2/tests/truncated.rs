//! Issue 19 item 6: frames cut short by a capture's snap length (pcap `incl_len < orig_len`)
//! decode every whole TLV and are marked truncated, as tshark does, instead of failing.
//!
//! The expectations of the fixture cuts were read off tshark 4.0.17 (`tshark -r CUT.pcap -V`
//! and `-T fields -e frame.len -e frame.cap_len -e lldp.… -e _ws.short`) on captures made the
//! way [`cut_capture`] makes them: for `lldp.detailed.pcap` cut to 100 bytes tshark shows the
//! chassis id, port id, TTL, port description and system name, then `[Packet size limited
//! during capture: LLDP truncated]`; cut to 64 the system name goes too; cut to 40 only the
//! three mandatory TLVs remain. For CDP, tshark 4.0 stops after the header (its checksum step
//! needs the whole PDU); this decoder goes on with every whole TLV and reports the checksum as
//! not verifiable.

use std::path::Path;

use assim_l2::{Pdu, cdp, decode_captured, decode_frame, decode_pcap_to_json_lines, lldp};
use assim_util::testing::{l2_fixtures, skip};
use proptest::prelude::*;

fn fixture(name: &str) -> Option<Vec<u8>> {
    let Some(dir) = l2_fixtures(Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        skip("shared/fixtures/l2 not found beside the checkout (or set ASSIM_L2_FIXTURES)");
        return None;
    };
    Some(std::fs::read(dir.join(name)).expect("fixture present but unreadable"))
}

/// A classic little-endian pcap with one frame: its first record cut to `cut` bytes, with
/// snap length `cut` in the file header and the record's `orig_len` kept.
fn cut_capture(pcap: &[u8], cut: u32) -> Vec<u8> {
    assert_eq!(&pcap[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian microsecond pcap");
    let mut out = pcap[..16].to_vec();
    out.extend(cut.to_le_bytes());
    out.extend(&pcap[20..24]);
    out.extend(&pcap[24..32]); // timestamp
    out.extend(cut.to_le_bytes()); // incl_len
    out.extend(&pcap[36..40]); // orig_len, unchanged
    out.extend(&pcap[40..40 + cut as usize]);
    out
}

fn json(pcap: &[u8]) -> serde_json::Value {
    let lines = decode_pcap_to_json_lines(pcap).unwrap();
    assert_eq!(lines.len(), 1);
    serde_json::from_str(&lines[0]).unwrap()
}

#[test]
fn lldp_fixture_cuts_match_tshark() {
    let Some(full) = fixture("lldp.detailed.pcap") else { return };
    let whole = json(&full);
    assert!(whole.get("truncated").is_none(), "a whole frame is not marked: {whole}");
    // (cut, port description, system name, system description) as tshark shows them.
    let cases = [(100, true, true, false), (64, true, false, false), (40, false, false, false)];
    for (cut, port_desc, sys_name, sys_desc) in cases {
        let r = json(&cut_capture(&full, cut));
        assert_eq!(r["protocol"], "lldp", "cut {cut}: {r}");
        assert!(r.get("error").is_none(), "cut {cut}: {r}");
        assert_eq!(r["truncated"], true);
        assert_eq!(r["orig_len"], 263, "frame.len");
        let l = &r["lldp"];
        assert_eq!(l["truncated"], true);
        assert_eq!(l["chassis_id"]["value"], "00:01:30:f9:ad:a0");
        assert_eq!(l["port_id"]["value"], "1/1");
        assert_eq!(l["ttl"], 120);
        assert_eq!(l["end_seen"], false);
        assert_eq!(l.get("port_description").is_some(), port_desc, "cut {cut}: {l}");
        if port_desc {
            assert_eq!(l["port_description"], "Summit300-48-Port 1001");
        }
        assert_eq!(l.get("system_name").is_some(), sys_name, "cut {cut}: {l}");
        if sys_name {
            assert_eq!(l["system_name"], "Summit300-48");
        }
        assert_eq!(l.get("system_description").is_some(), sys_desc, "cut {cut}: {l}");
    }
    // Cut inside a mandatory TLV: no neighbour can be named; an error, still marked truncated.
    let r = json(&cut_capture(&full, 30));
    assert_eq!(r["truncated"], true);
    assert!(r["error"].as_str().is_some_and(|e| e.contains("incomplete")), "{r}");
}

#[test]
fn cdp_fixture_cut_keeps_whole_tlvs() {
    let Some(full) = fixture("cdp.pcap") else { return };
    let r = json(&cut_capture(&full, 120));
    assert_eq!(r["protocol"], "cdp", "{r}");
    assert_eq!(r["truncated"], true);
    assert_eq!(r["orig_len"], 300);
    let c = &r["cdp"];
    assert_eq!((c["version"].as_u64(), c["ttl"].as_u64()), (Some(1), Some(180)));
    assert_eq!(c["truncated"], true);
    assert_eq!(c["checksum_valid"], false, "the checksum covers bytes not captured");
    assert_eq!(c["device_id"], "R1");
    assert!(c.get("software_version").is_none(), "cut TLV left out: {c}");
}

fn tlv(ty: u8, v: &[u8]) -> Vec<u8> {
    let h = (u16::from(ty) << 9) | v.len() as u16;
    [&h.to_be_bytes()[..], v].concat()
}

/// An LLDP frame with the mandatory TLVs, then three text TLVs; returns the frame and the end
/// offset of each TLV (mandatory last end, then the three texts).
fn lldp_frame(texts: &[String; 3]) -> (Vec<u8>, usize, [usize; 3]) {
    let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xcc];
    f.extend(tlv(1, &[7, b's', b'w']));
    f.extend(tlv(2, &[5, b'p', b'1']));
    f.extend(tlv(3, &[0, 120]));
    let mandatory = f.len();
    let mut ends = [0; 3];
    for (i, (ty, t)) in [4u8, 5, 6].iter().zip(texts).enumerate() {
        f.extend(tlv(*ty, t.as_bytes()));
        ends[i] = f.len();
    }
    f.extend(tlv(0, &[]));
    (f, mandatory, ends)
}

fn cdp_tlv(ty: u16, v: &[u8]) -> Vec<u8> {
    [&ty.to_be_bytes()[..], &(v.len() as u16 + 4).to_be_bytes(), v].concat()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any cut of an LLDP frame at or after its mandatory TLVs decodes exactly the TLVs that
    /// end at or before the cut, marked truncated; a cut before them is `Incomplete`.
    #[test]
    fn lldp_any_cut_keeps_exactly_the_whole_tlvs(
        texts in proptest::array::uniform3("[a-zA-Z0-9 ]{0,80}"),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let (frame, mandatory, ends) = lldp_frame(&texts);
        let cut = cut_at.index(frame.len());
        let d = decode_captured(&frame[..cut], frame.len());
        if cut < mandatory {
            prop_assert!(d.is_err());
            prop_assert!(d.unwrap_err().is_incomplete());
            return Ok(());
        }
        let d = d.unwrap();
        prop_assert!(d.truncated);
        let Pdu::Lldp(l) = d.pdu else { panic!("not LLDP") };
        prop_assert!(l.truncated && !l.end_seen);
        prop_assert_eq!((l.chassis_id.value.as_str(), l.port_id.value.as_str(), l.ttl), ("sw", "p1", 120));
        let got = [&l.port_description, &l.system_name, &l.system_description];
        for i in 0..3 {
            let want = (ends[i] <= cut).then(|| texts[i].clone());
            prop_assert_eq!(got[i], &want, "TLV {} ends at {}, cut at {}", i, ends[i], cut);
        }
    }

    /// The same cut of a CDP frame: every whole TLV, never an error after the header.
    #[test]
    fn cdp_any_cut_keeps_exactly_the_whole_tlvs(
        texts in proptest::array::uniform3("[a-zA-Z0-9 ]{0,60}"),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let mut pdu = vec![2, 180, 0, 0];
        let mut ends = [0; 3];
        for (i, (ty, t)) in [1u16, 3, 6].iter().zip(&texts).enumerate() {
            pdu.extend(cdp_tlv(*ty, t.as_bytes()));
            ends[i] = pdu.len();
        }
        let cut = cut_at.index(pdu.len());
        let r = cdp::parse_truncated(&pdu[..cut]);
        if cut < 4 {
            prop_assert!(r.unwrap_err().is_incomplete());
            return Ok(());
        }
        let c = r.unwrap();
        prop_assert!(c.truncated && !c.checksum_valid);
        let got = [&c.device_id, &c.port_id, &c.platform];
        for i in 0..3 {
            let want = (ends[i] <= cut).then(|| texts[i].clone());
            prop_assert_eq!(got[i], &want);
        }
    }

    /// A whole frame (`orig_len` = captured) decodes exactly as before, never marked; cut
    /// bytes without a capture saying so stay an error.
    #[test]
    fn whole_frames_are_unchanged_and_unmarked_cuts_stay_errors(
        texts in proptest::array::uniform3("[a-z]{1,40}"),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let (frame, mandatory, ends) = lldp_frame(&texts);
        let a = decode_captured(&frame, frame.len()).unwrap();
        prop_assert!(!a.truncated);
        prop_assert_eq!(&a, &decode_frame(&frame).unwrap());
        let cut = mandatory + 1 + cut_at.index(frame.len() - mandatory - 2);
        prop_assume!(!ends.contains(&cut)); // a cut between TLVs is a PDU without its End TLV
        prop_assert!(decode_frame(&frame[..cut]).is_err());
        prop_assert!(lldp::parse(&frame[14..cut]).is_err());
    }

    /// Hostile bytes with a claimed longer wire length never panic.
    #[test]
    fn truncated_decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400), extra in 1usize..2000) {
        let _ = decode_captured(&b, b.len() + extra);
        let _ = lldp::parse_truncated(&b);
        let _ = cdp::parse_truncated(&b);
        let mut with_lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc];
        with_lldp.extend(&b);
        let _ = decode_captured(&with_lldp, with_lldp.len() + extra);
        let mut with_cdp = vec![0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc, 2, 0, 0, 0, 0, 2, 0x05, 0xdc,
            0xaa, 0xaa, 0x03, 0, 0, 0x0c, 0x20, 0x00];
        with_cdp.extend(&b);
        let _ = decode_captured(&with_cdp, with_cdp.len() + extra);
    }
}
