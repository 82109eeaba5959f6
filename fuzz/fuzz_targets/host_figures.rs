//! Arbitrary bytes to the `/proc/loadavg` and `/proc/meminfo` parsers of the host figures
//! sent as statistics, and arbitrary text to the perfdata-to-gauges conversion. None may
//! panic; what they accept is within their bounds.
#![no_main]

use assim_probe_shell::stat_sources::{
    Dropped, MAX_PERF_ITEMS, parse_loadavg, parse_meminfo, perfdata_samples,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = parse_loadavg(data) {
        assert!(l.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
    if let Ok(m) = parse_meminfo(data) {
        assert!(m.available_bytes <= m.total_bytes);
    }
    let text = String::from_utf8_lossy(data);
    let (check, perf) = text.split_once('|').unwrap_or(("c", &text));
    let mut dropped = Dropped::default();
    let samples = perfdata_samples(check, perf, &mut dropped);
    assert!(samples.len() <= MAX_PERF_ITEMS);
    for s in &samples {
        assert!(assim_probe_shell::stats::validate(s).is_ok());
    }
});
