//! Arbitrary text to the event bus's filter parser, then the parsed filter over a fixed event,
//! and the printed form parsed again. Nothing may panic; errors must point inside the text;
//! printing and parsing again must give the same filter.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match assim_bus::Filter::parse(text) {
        Ok(f) => {
            let e = assim_cma::Event {
                id: 1,
                time: assim_wire::Timestamp(0),
                kind: assim_cma::EventKind::LocalEvent,
                host: None,
                hostname: "db1".into(),
                tags: [("cluster".to_string(), "Compute1".to_string())].into(),
                text: "RAID STATUS CHANGE".into(),
                severity: assim_cma::Severity::Critical,
                body: None,
            };
            let hit = f.matches(&e);
            let printed = f.expr().to_string();
            let again = assim_bus::Filter::parse(&printed).expect("a printed filter parses");
            assert_eq!(again.expr(), f.expr(), "{printed}");
            assert_eq!(again.matches(&e), hit);
        }
        Err(e) => {
            assert!(e.pos() <= text.len());
            let _ = e.render(text);
        }
    }
});
