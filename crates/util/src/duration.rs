//! Durations as people write them: in flags (`--dead-time 5s`), config files
//! (`retention_max_age = "30d"`), simulator scenarios (`local_latency = ["100us", "2ms"]`), bus
//! sink settings (`backoff = "500ms"`) and check rules (`interval = "1m30s"`).
//!
//! # Grammar
//!
//! ```text
//! duration = number                 a bare number is seconds: "2", "1.5", "0"
//!          | term { [space] term }  "500ms", "1m30s", "1h 30m", "1.5h"
//! term     = number [space] unit
//! number   = digits [ "." [digits] ] | "." digits      no sign, no exponent
//! unit     = "d" | "h" | "m" | "min" | "s" | "ms" | "us" | "µs" | "ns"
//! ```
//!
//! - Units: `d` = 24 h, `h` = 60 min, `m` (or `min`) = 60 s, `s`, `ms`, `us` (or `µs`), `ns`.
//!   Units are lower case; there is no `M`, `y` or `w` (months and years have no fixed length).
//! - In a combined form each unit appears once, largest first (`1h30m`, `1s500ms`); `30m1h` and
//!   `1m1m` are refused as the typos they usually are. A bare number is seconds only on its
//!   own: `1m30` is refused.
//! - Numbers are exact decimals in any term (`1.5s` is exactly 1,500 ms, `0.1h` is 6 min);
//!   what is finer than a nanosecond is dropped (and fraction digits past the 20th are ignored).
//! - White space around the whole value, between a number and its unit and between terms is
//!   allowed.
//! - The range is zero to [`MAX`] (3,650 days). A larger value is an error, never a wrap-around
//!   or a panic, whatever the input.
//!
//! [`format_duration`] writes the canonical form, the nonzero units largest first in whole
//! numbers (`1h30m`, `1s500ms`, `100us`, `0s`); [`parse_duration`] reads it back to exactly the
//! same value for every duration up to [`MAX`].
//!
//! This grammar replaced three parsers with different rules (one took `d`, one `us`, one
//! neither); it is their union, plus combined forms and `ns` so that formatting round-trips.

use std::fmt;
use std::time::Duration;

/// The longest duration [`parse_duration`] accepts: 3,650 days.
pub const MAX: Duration = Duration::from_secs(3650 * 86_400);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The units, largest first, with their length in nanoseconds. The first spelling is the one
/// [`format_duration`] writes.
const UNITS: [(&[&str], u128); 7] = [
    (&["d"], 86_400 * NANOS_PER_SEC),
    (&["h"], 3_600 * NANOS_PER_SEC),
    (&["m", "min"], 60 * NANOS_PER_SEC),
    (&["s"], NANOS_PER_SEC),
    (&["ms"], 1_000_000),
    (&["us", "µs"], 1_000),
    (&["ns"], 1),
];

/// Fraction digits past this many are ignored (keeps the arithmetic inside `u128`).
const MAX_FRACTION_DIGITS: usize = 20;

/// Examples shown in error messages.
const EXAMPLES: &str = "examples: 500ms, 30s, 1m30s, 2h, 7d";

/// Why a text is not a duration. Displays as a sentence that quotes the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    input: String,
    kind: DurationErrorKind,
}

/// The cases of [`DurationError`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DurationErrorKind {
    /// The text is empty or only white space.
    Empty,
    /// Where a number should start there is something else.
    NotANumber,
    /// A number without a unit in a combined form (`1m30`).
    MissingUnit,
    /// A unit that is not in the grammar.
    UnknownUnit(String),
    /// A unit that is not smaller than the one before it (`30m1h`, `1m1m`).
    Order(String),
    /// More than [`MAX`].
    OutOfRange,
    /// Only for [`parse_whole_seconds`]: zero, or not a whole number of seconds.
    NotWholeSeconds,
}

impl DurationError {
    /// Which case this is.
    pub fn kind(&self) -> &DurationErrorKind {
        &self.kind
    }

    /// The text that was not a duration.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.input;
        match &self.kind {
            DurationErrorKind::Empty => write!(f, "an empty value is not a duration ({EXAMPLES})"),
            DurationErrorKind::NotANumber => write!(f, "{s:?} is not a duration ({EXAMPLES})"),
            DurationErrorKind::MissingUnit => {
                write!(
                    f,
                    "{s:?} has a number without a unit (a bare number is seconds only on its own; {EXAMPLES})"
                )
            }
            DurationErrorKind::UnknownUnit(u) => {
                write!(f, "unknown unit {u:?} in {s:?} (use d, h, m, s, ms, us or ns)")
            }
            DurationErrorKind::Order(u) => write!(
                f,
                "{s:?} is not a duration: unit {u:?} comes after a unit as small or smaller (write each unit once, largest first, as in 1h30m)"
            ),
            DurationErrorKind::OutOfRange => {
                write!(f, "{s:?} is out of range (at most {})", format_duration(MAX))
            }
            DurationErrorKind::NotWholeSeconds => {
                write!(
                    f,
                    "{s:?} is not a whole number of seconds of at least 1 (examples: 30, 30s, 5m, 1h)"
                )
            }
        }
    }
}

impl std::error::Error for DurationError {}

/// Reads a duration in the grammar of the [module documentation](self).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = |kind| DurationError { input: text.to_owned(), kind };
    let s = text.trim();
    if s.is_empty() {
        return Err(err(DurationErrorKind::Empty));
    }
    let max = MAX.as_nanos();
    let mut total: u128 = 0;
    // The length of the previous term's unit: each unit must be smaller than the one before.
    let mut previous: Option<u128> = None;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len =
            rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number =
            parse_number(&rest[..number_len]).ok_or_else(|| err(DurationErrorKind::NotANumber))?;
        rest = rest[number_len..].trim_start();
        let unit_len = rest.find(|c: char| !c.is_alphabetic()).unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        let nanos_per_unit = if unit.is_empty() {
            if previous.is_none() && after.is_empty() {
                NANOS_PER_SEC
            } else {
                return Err(err(DurationErrorKind::MissingUnit));
            }
        } else {
            UNITS
                .iter()
                .find(|(names, _)| names.contains(&unit))
                .map(|(_, n)| *n)
                .ok_or_else(|| err(DurationErrorKind::UnknownUnit(unit.to_owned())))?
        };
        if previous.is_some_and(|p| nanos_per_unit >= p) {
            return Err(err(DurationErrorKind::Order(unit.to_owned())));
        }
        previous = Some(nanos_per_unit);
        total = number
            .nanos(nanos_per_unit)
            .and_then(|n| total.checked_add(n))
            .filter(|t| *t <= max)
            .ok_or_else(|| err(DurationErrorKind::OutOfRange))?;
        rest = after.trim_start();
    }
    Ok(from_nanos(total))
}

/// Reads a duration (same grammar) that must be a whole number of seconds, at least 1; returns
/// the seconds. For settings that the wire carries in seconds (check intervals and timeouts).
pub fn parse_whole_seconds(text: &str) -> Result<u64, DurationError> {
    let d = parse_duration(text)?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(DurationError {
            input: text.to_owned(),
            kind: DurationErrorKind::NotWholeSeconds,
        });
    }
    Ok(d.as_secs())
}

/// Writes `d` in the canonical form: its nonzero units largest first, in whole numbers
/// (`1h30m`, `1s500ms`, `100us`), or `0s`. [`parse_duration`] reads the result back exactly when
/// `d` is at most [`MAX`].
pub fn format_duration(d: Duration) -> String {
    let mut left = d.as_nanos();
    if left == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (names, per) in UNITS {
        let n = left / per;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(names[0]);
            left %= per;
        }
    }
    out
}

/// An exact decimal: the integer part and the fraction digits.
struct Decimal<'a> {
    whole: u128,
    fraction: &'a str,
}

impl Decimal<'_> {
    /// The value times `per` (nanoseconds per unit), rounded down; `None` on overflow.
    fn nanos(&self, per: u128) -> Option<u128> {
        let whole = self.whole.checked_mul(per)?;
        let digits = &self.fraction[..self.fraction.len().min(MAX_FRACTION_DIGITS)];
        // At most 20 digits (< 10^20) times at most 8.64e13 stays far below u128::MAX.
        let numerator: u128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
        let fraction = numerator * per / 10u128.pow(digits.len() as u32);
        whole.checked_add(fraction)
    }
}

/// `digits [ "." [digits] ] | "." digits`; `None` when `s` is not of that shape. A whole part too
/// large for `u128` saturates (the range check refuses it afterwards).
fn parse_number(s: &str) -> Option<Decimal<'_>> {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let whole = whole.bytes().try_fold(0u128, |acc, b| {
        b.is_ascii_digit().then(|| acc.saturating_mul(10).saturating_add(u128::from(b - b'0')))
    })?;
    Some(Decimal { whole, fraction })
}

fn from_nanos(n: u128) -> Duration {
    // Callers pass at most MAX, so the seconds fit in a u64.
    Duration::new((n / NANOS_PER_SEC) as u64, (n % NANOS_PER_SEC) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_unit_and_form() {
        let cases = [
            ("2", Duration::from_secs(2)),
            ("1.5", ms(1500)),
            ("0", Duration::ZERO),
            ("500ms", ms(500)),
            ("1s", Duration::from_secs(1)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("30d", Duration::from_secs(30 * 86_400)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
            ("1m30s", Duration::from_secs(90)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1s500ms", ms(1500)),
            ("1.5h", Duration::from_secs(5400)),
            ("0.1h", Duration::from_secs(360)),
            (" 5 s ", Duration::from_secs(5)),
            (".5s", ms(500)),
            ("1.s", Duration::from_secs(1)),
            ("0.0000000015s", Duration::from_nanos(1)),
            ("3650d", MAX),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn refusals_name_the_text_and_the_fix() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("soon", "\"soon\" is not a duration"),
            ("5 parsecs", "unknown unit \"parsecs\""),
            ("10M", "unknown unit \"M\""),
            ("-1s", "not a duration"),
            ("1e3s", "unknown unit \"e\""),
            ("1..2s", "not a duration"),
            (".s", "not a duration"),
            ("1m30", "without a unit"),
            ("30m1h", "largest first"),
            ("1m1m", "largest first"),
            ("3651d", "out of range (at most 3650d)"),
            ("99999999999999999999999999999999999999999h", "out of range"),
        ];
        for (text, want) in cases {
            let e = parse_duration(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn canonical_form() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(ms(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_micros(100)), "100us");
        assert_eq!(format_duration(Duration::new(1, 1)), "1s1ns");
    }

    #[test]
    fn whole_seconds() {
        assert_eq!(parse_whole_seconds("90"), Ok(90));
        assert_eq!(parse_whole_seconds("1m30s"), Ok(90));
        assert_eq!(parse_whole_seconds("1h"), Ok(3600));
        for bad in ["0", "0s", "1.5s", "500ms", "x"] {
            assert!(parse_whole_seconds(bad).is_err(), "{bad:?}");
        }
        assert!(parse_whole_seconds("0").unwrap_err().to_string().contains("at least 1"));
    }

    proptest! {
        #[test]
        fn format_then_parse_is_the_identity(nanos in 0..=MAX.as_nanos() as u64) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn whole_units_round_trip(n in 0u64..=3650, unit in 0usize..4) {
            let (secs, name) = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")][unit];
            prop_assert_eq!(parse_duration(&format!("{n}{name}")), Ok(Duration::from_secs(n * secs)));
        }

        #[test]
        fn never_panics_on_any_text(s in "\\PC{0,40}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn never_panics_on_duration_like_text(s in "[0-9. µusmhdin]{0,30}") {
            if let Ok(d) = parse_duration(&s) {
                prop_assert!(d <= MAX);
            }
        }

        #[test]
        fn agrees_with_float_arithmetic_on_decimals(whole in 0u64..3000, frac in 0u32..1000, unit in 0usize..5) {
            let (per, name) = [(1e-3, "ms"), (1.0, "s"), (60.0, "m"), (3600.0, "h"), (86_400.0, "d")][unit];
            let text = format!("{whole}.{frac:03}{name}");
            let want = (whole as f64 + f64::from(frac) / 1000.0) * per;
            let got = parse_duration(&text).unwrap().as_secs_f64();
            prop_assert!((got - want).abs() <= want * 1e-12 + 1e-9, "{} -> {} vs {}", text, got, want);
        }
    }
}
