//! What a statistic in a [`crate::msg::Statistics`] batch may look like (issue 17 item 5): the
//! one set of rules the nanoprobe checks when a program puts a value and the CMA checks again
//! when a batch arrives, so both sides refuse the same things.
//!
//! Names are Graphite paths: 1–[`MAX_NAME`] bytes of `[A-Za-z0-9_-]` segments joined by `.`
//! (no empty segment). Tags: at most [`MAX_TAGS`], keys `[A-Za-z0-9_]{1,64}`, values
//! `[A-Za-z0-9_.-]{1,128}` — none of them can carry a space, a newline, `;` or `=`, so they are
//! safe in a carbon plaintext line, a Graphite path and a Prometheus label. Values are finite
//! numbers; a counter's value is not negative. At most [`MAX_SERIES`] series per batch.

/// The longest metric name.
pub const MAX_NAME: usize = 200;
/// Tags per series at most.
pub const MAX_TAGS: usize = 8;
/// Series per batch (one interval of one host) at most.
pub const MAX_SERIES: usize = 10_000;

/// A valid metric name (see the module doc).
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.split('.').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        })
}

/// A valid tag (see the module doc).
pub fn valid_tag(k: &str, v: &str) -> bool {
    (1..=64).contains(&k.len())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && (1..=128).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A valid value: finite, and not negative for a counter.
pub fn valid_value(value: f64, counter: bool) -> bool {
    value.is_finite() && !(counter && value < 0.0)
}
