//! What the CMA reads for the fleet questions from outside: a DNS server's answer to a PTR query
//! (`assim_export::dns::parse_ptr_answer`, for an IPv4 and an IPv6 address, and behind a valid
//! header) and the IEEE MAC registry CSV (`assim_export::oui::Registry::add_csv`). None may
//! panic; an accepted name has at most 255 bytes; the registry holds no more prefixes than the
//! text has lines, and every vendor lookup is bounded.
#![no_main]

use std::net::IpAddr;

use assim_export::dns::{PtrAnswer, parse_ptr_answer, ptr_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let v4: IpAddr = "192.0.2.17".parse().unwrap();
    let v6: IpAddr = "2001:db8::17".parse().unwrap();
    let id = data.first().map_or(0, |b| u16::from(*b));
    for ip in [v4, v6] {
        check(parse_ptr_answer(data, id, ip));
        let mut m = ptr_query(id, ip);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = data.get(1).copied().unwrap_or(1);
        m.extend_from_slice(data);
        check(parse_ptr_answer(&m, id, ip));
    }
    let text = String::from_utf8_lossy(data);
    let mut reg = assim_export::oui::Registry::default();
    reg.add_csv(&text);
    assert!(reg.len() <= text.lines().count() + 1);
    for line in text.lines().take(8) {
        if let Some(v) = reg.vendor(line) {
            assert!(v.chars().count() <= assim_export::oui::MAX_NAME);
        }
    }
});

fn check(r: Result<PtrAnswer, assim_export::dns::DnsError>) {
    if let Ok(PtrAnswer::Name { name, .. }) = r {
        assert!(!name.is_empty() && name.len() <= 255, "{name}");
    }
}
