//! Arbitrary bytes to every assim-l2 parser: Ethernet+LLDP/CDP decoding, the bare LLDP and CDP
//! parsers, the pcap/pcapng reader and the JSON-lines decoder. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = assim_l2::decode_frame(data);
    let _ = assim_l2::lldp::parse(data);
    let _ = assim_l2::cdp::parse(data);
    if let Ok(r) = assim_l2::pcap::Reader::new(data) {
        for _ in r {}
    }
    let _ = assim_l2::decode_pcap_to_json_lines(data);
});
