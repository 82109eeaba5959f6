//! Arbitrary text to the Nagios performance-data parsers (strict and lenient) and the plugin
//! output splitter. None may panic; whatever the strict parser accepts, rendering it and parsing
//! again gives the same items.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = assim_checks::runner::split_nagios_output(&text);
    let (_, _) = assim_checks::perfdata::parse_lenient(&text);
    if let Ok(items) = assim_checks::perfdata::parse(&text) {
        let again = assim_checks::perfdata::parse(&assim_checks::perfdata::render(&items))
            .expect("rendered perfdata parses");
        assert_eq!(again.len(), items.len());
    }
});
