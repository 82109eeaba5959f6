//! What the CLI benchmarks share (each `mod common;`s this file; not every bench uses every
//! helper, hence the `dead_code` allowance).

#![allow(dead_code)]

use assim::cluster::Cluster;

/// The environment variable `name` parsed as a `T`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The value of the Prometheus sample `name` (with its labels, if any) in `text`, or 0.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The CMA's `assim_cma_datagrams_received_total`.
pub fn datagrams_received(c: &Cluster) -> u64 {
    let m = c.client.metrics().expect("metrics");
    metric(&m, "assim_cma_datagrams_received_total") as u64
}
