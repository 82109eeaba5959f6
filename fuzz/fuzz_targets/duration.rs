//! Arbitrary text to the one duration grammar (`assim_util::parse_duration`, used by flags,
//! config files, scenarios and the bus). It may refuse anything but must not panic; whatever it
//! accepts is at most `duration::MAX`, and formatting that value and parsing again gives it back.
#![no_main]

use assim_util::duration::{MAX, format_duration, parse_duration, parse_whole_seconds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_whole_seconds(&text);
    if let Ok(d) = parse_duration(&text) {
        assert!(d <= MAX, "{text:?} parsed to {d:?}, over MAX");
        assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{text:?}");
    }
});
