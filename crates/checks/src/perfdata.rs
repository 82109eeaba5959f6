//! Nagios performance data: the text after `|` in a plugin's output.
//!
//! Grammar (Nagios plugin guidelines), items separated by spaces:
//!
//! ```text
//! item   = label "=" value [uom] [";" [warn] [";" [crit] [";" [min] [";" [max]]]]]
//! label  = bare | "'" (any char but "'", or "''" for a literal quote)* "'"
//! bare   = any chars but space, "=" and "'"
//! value  = number | "U"                      (U: the plugin could not determine it)
//! uom    = letters and "%" and "/" (s, ms, us, %, B, KB, MB, TB, c, …)
//! warn, crit = a range: [@] [~ | number] [":" [number]]
//! min, max   = number
//! ```
//!
//! [`parse`] is strict and returns the first problem with its byte offset; [`parse_lenient`]
//! keeps the items that parse and skips the rest (what the runner uses, since one odd item must
//! not hide the others). Both are pure functions of the text and never panic.

use std::fmt;

/// One performance datum.
#[derive(Clone, Debug, PartialEq)]
pub struct PerfDatum {
    pub label: String,
    /// `None` when the plugin printed `U` (undetermined).
    pub value: Option<f64>,
    /// Unit of measurement; empty when none.
    pub uom: String,
    /// Warning range as printed (e.g. `10`, `10:`, `~:10`, `@5:10`).
    pub warn: Option<String>,
    /// Critical range as printed.
    pub crit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Why performance data did not parse. Offsets are byte offsets into the input.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PerfError {
    /// A quoted label has no closing quote: the text ends inside it (truncated output).
    #[error("label quoted at byte {at} is never closed (truncated output?)")]
    UnterminatedQuote { at: usize },
    /// An item has no `=` between label and value, or nothing after it.
    #[error("item at byte {at} has no '=value'")]
    MissingValue { at: usize },
    /// The label is empty (`=5`, `''=5`).
    #[error("item at byte {at} has an empty label")]
    EmptyLabel { at: usize },
    /// The value is neither a number nor `U`.
    #[error("item at byte {at}: value {text:?} is not a number")]
    BadValue { at: usize, text: String },
    /// The unit contains characters a unit cannot have.
    #[error("item at byte {at}: unit {text:?} is not a unit of measurement")]
    BadUnit { at: usize, text: String },
    /// A warn/crit range is not `[@][~|n][:[n]]`.
    #[error("item at byte {at}: threshold {text:?} is not a range")]
    BadRange { at: usize, text: String },
    /// A min/max field is not a number.
    #[error("item at byte {at}: min/max {text:?} is not a number")]
    BadLimit { at: usize, text: String },
    /// More than five `;`-separated fields.
    #[error("item at byte {at} has more than 5 fields")]
    TooManyFields { at: usize },
    /// Characters after a quoted label other than `=`.
    #[error("item at byte {at}: expected '=' after the quoted label")]
    JunkAfterLabel { at: usize },
}

impl PerfError {
    /// True when the text ended in the middle of an item (more bytes could have completed it),
    /// as opposed to being malformed.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, PerfError::UnterminatedQuote { .. } | PerfError::MissingValue { .. })
    }
}

/// Parses performance data strictly.
pub fn parse(text: &str) -> Result<Vec<PerfDatum>, PerfError> {
    let mut out = Vec::new();
    let mut p = 0;
    while let Some((datum, next)) = item(text, p)? {
        out.push(datum);
        p = next;
    }
    Ok(out)
}

/// Parses performance data, skipping items that do not parse. Returns the items and the errors.
pub fn parse_lenient(text: &str) -> (Vec<PerfDatum>, Vec<PerfError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut p = 0;
    loop {
        match item(text, p) {
            Ok(Some((d, next))) => {
                out.push(d);
                p = next;
            }
            Ok(None) => break,
            Err(e) => {
                errors.push(e);
                // Skip to the next space outside quotes; an unterminated quote ends the text.
                match skip_item(text, p) {
                    Some(next) if next > p => p = next,
                    _ => break,
                }
            }
        }
    }
    (out, errors)
}

fn skip_ws(text: &str, mut p: usize) -> usize {
    let b = text.as_bytes();
    while p < b.len() && b[p].is_ascii_whitespace() {
        p += 1;
    }
    p
}

fn skip_item(text: &str, p: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = skip_ws(text, p);
    let mut quoted = false;
    while i < b.len() {
        match b[i] {
            b'\'' => quoted = !quoted,
            c if c.is_ascii_whitespace() && !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    if quoted { None } else { Some(i) }
}

/// Parses one item starting at or after `p`; `None` at the end of the text.
fn item(text: &str, p: usize) -> Result<Option<(PerfDatum, usize)>, PerfError> {
    let b = text.as_bytes();
    let start = skip_ws(text, p);
    if start >= b.len() {
        return Ok(None);
    }
    let at = start;
    // Label.
    let (label, mut i) = if b[start] == b'\'' {
        let mut label = String::new();
        let mut i = start + 1;
        loop {
            let Some(rel) = text[i..].find('\'') else {
                return Err(PerfError::UnterminatedQuote { at });
            };
            label.push_str(&text[i..i + rel]);
            i += rel + 1;
            if b.get(i) == Some(&b'\'') {
                label.push('\'');
                i += 1;
            } else {
                break;
            }
        }
        match b.get(i) {
            Some(b'=') => {}
            None => return Err(PerfError::MissingValue { at }),
            Some(c) if c.is_ascii_whitespace() => return Err(PerfError::MissingValue { at }),
            Some(_) => return Err(PerfError::JunkAfterLabel { at }),
        }
        (label, i)
    } else {
        let end = text[start..]
            .find(|c: char| c == '=' || c.is_ascii_whitespace())
            .map_or(b.len(), |r| start + r);
        if b.get(end) != Some(&b'=') {
            return Err(PerfError::MissingValue { at });
        }
        (text[start..end].to_owned(), end)
    };
    if label.is_empty() {
        return Err(PerfError::EmptyLabel { at });
    }
    i += 1; // '='
    let end = text[i..].find(|c: char| c.is_ascii_whitespace()).map_or(b.len(), |r| i + r);
    let body = &text[i..end];
    if body.is_empty() {
        return Err(PerfError::MissingValue { at });
    }
    let fields: Vec<&str> = body.split(';').collect();
    if fields.len() > 5 {
        return Err(PerfError::TooManyFields { at });
    }
    // Value and unit.
    let vu = fields[0];
    let (value, uom) = if let Some(rest) = vu.strip_prefix('U') {
        (None, rest)
    } else {
        let n = number_prefix(vu);
        let num = &vu[..n];
        let v = num
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| PerfError::BadValue { at, text: num.to_owned() })?;
        (Some(v), &vu[n..])
    };
    if !uom.chars().all(|c| c.is_ascii_alphabetic() || c == '%' || c == '/') {
        return Err(PerfError::BadUnit { at, text: uom.to_owned() });
    }
    let range = |k: usize| -> Result<Option<String>, PerfError> {
        match fields.get(k) {
            None | Some(&"") => Ok(None),
            Some(r) if is_range(r) => Ok(Some((*r).to_owned())),
            Some(r) => Err(PerfError::BadRange { at, text: (*r).to_owned() }),
        }
    };
    let limit = |k: usize| -> Result<Option<f64>, PerfError> {
        match fields.get(k) {
            None | Some(&"") => Ok(None),
            Some(r) => r
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && number_prefix(r) == r.len())
                .map(Some)
                .ok_or_else(|| PerfError::BadLimit { at, text: (*r).to_owned() }),
        }
    };
    let datum = PerfDatum {
        label,
        value,
        uom: uom.to_owned(),
        warn: range(1)?,
        crit: range(2)?,
        min: limit(3)?,
        max: limit(4)?,
    };
    Ok(Some((datum, end)))
}

/// Length of the leading decimal number (`-1.5`, `3e-2`, `.5`).
fn number_prefix(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    // An exponent only when digits follow (so "5e" stays 5 with unit "e"… which is rejected
    // as no unit starts with e; "5eB" is not a thing).
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'-' || b[j] == b'+') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    i
}

fn is_num(s: &str) -> bool {
    !s.is_empty() && number_prefix(s) == s.len() && s.parse::<f64>().is_ok_and(f64::is_finite)
}

/// `[@][~|n][:[n]]`, not empty.
fn is_range(r: &str) -> bool {
    let r = r.strip_prefix('@').unwrap_or(r);
    if r.is_empty() {
        return false;
    }
    match r.split_once(':') {
        None => is_num(r),
        Some((lo, hi)) => {
            (lo.is_empty() || lo == "~" || is_num(lo)) && (hi.is_empty() || is_num(hi))
        }
    }
}

impl fmt::Display for PerfDatum {
    /// Renders in the canonical form [`parse`] reads back (labels quoted when needed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let needs_quotes = self.label.contains([' ', '=', '\''])
            || self.label.chars().any(|c| c.is_ascii_whitespace());
        if needs_quotes {
            write!(f, "'{}'=", self.label.replace('\'', "''"))?;
        } else {
            write!(f, "{}=", self.label)?;
        }
        match self.value {
            Some(v) => write!(f, "{v}{}", self.uom)?,
            None => write!(f, "U{}", self.uom)?,
        }
        let fields = [
            self.warn.clone(),
            self.crit.clone(),
            self.min.map(|v| v.to_string()),
            self.max.map(|v| v.to_string()),
        ];
        let last = fields.iter().rposition(Option::is_some);
        if let Some(last) = last {
            for field in &fields[..=last] {
                write!(f, ";{}", field.as_deref().unwrap_or(""))?;
            }
        }
        Ok(())
    }
}

/// Renders items separated by single spaces.
pub fn render(items: &[PerfDatum]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn typical_plugin_output() {
        let d = parse("time=0.000213s;;;0.000000;10.000000 size=612B;;;0").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].label, "time");
        assert_eq!(d[0].value, Some(0.000213));
        assert_eq!(d[0].uom, "s");
        assert_eq!(d[0].warn, None);
        assert_eq!(d[0].min, Some(0.0));
        assert_eq!(d[0].max, Some(10.0));
        assert_eq!(d[1].uom, "B");
        let load = parse("load1=0.150;5.000;10.000;0; load5=0.2;4;8;0;").unwrap();
        assert_eq!(load[0].warn.as_deref(), Some("5.000"));
        assert_eq!(load[1].crit.as_deref(), Some("8"));
    }

    #[test]
    fn quoted_labels_with_spaces_and_escaped_quotes() {
        let d = parse("'/ used'=5MB;10:;@20:30;0;100 'it''s'=1%").unwrap();
        assert_eq!(d[0].label, "/ used");
        assert_eq!(d[0].warn.as_deref(), Some("10:"));
        assert_eq!(d[0].crit.as_deref(), Some("@20:30"));
        assert_eq!(d[1].label, "it's");
        assert_eq!(d[1].uom, "%");
    }

    #[test]
    fn undetermined_value_and_ranges() {
        let d = parse("rta=U;~:10;5:").unwrap();
        assert_eq!(d[0].value, None);
        assert_eq!(d[0].warn.as_deref(), Some("~:10"));
    }

    #[test]
    fn distinct_errors() {
        assert_eq!(parse("'abc=1").unwrap_err(), PerfError::UnterminatedQuote { at: 0 });
        assert!(parse("'abc=1").unwrap_err().is_incomplete());
        assert_eq!(parse("a=1 b").unwrap_err(), PerfError::MissingValue { at: 4 });
        assert_eq!(parse("=5").unwrap_err(), PerfError::EmptyLabel { at: 0 });
        assert_eq!(parse("''=5").unwrap_err(), PerfError::EmptyLabel { at: 0 });
        assert!(matches!(parse("a=x").unwrap_err(), PerfError::BadValue { .. }));
        assert!(matches!(parse("a=1,5").unwrap_err(), PerfError::BadUnit { .. }));
        assert!(matches!(parse("a=1;x").unwrap_err(), PerfError::BadRange { .. }));
        assert!(matches!(parse("a=1;;;z").unwrap_err(), PerfError::BadLimit { .. }));
        assert!(matches!(parse("a=1;;;;;").unwrap_err(), PerfError::TooManyFields { .. }));
        assert!(matches!(parse("'a'x=1").unwrap_err(), PerfError::JunkAfterLabel { .. }));
        assert!(!parse("a=x").unwrap_err().is_incomplete());
    }

    #[test]
    fn lenient_keeps_the_good_items() {
        let (d, errs) = parse_lenient("a=1 b=oops c=3s");
        assert_eq!(d.iter().map(|d| d.label.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(errs.len(), 1);
        let (d, errs) = parse_lenient("a=1 'broken=2");
        assert_eq!(d.len(), 1);
        assert_eq!(errs.len(), 1);
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_ '/=.-]{1,12}"
    }
    fn range() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            (0u32..1000).prop_map(|n| Some(n.to_string())),
            (0u32..100, 100u32..200).prop_map(|(a, b)| Some(format!("@{a}:{b}"))),
            (0u32..100).prop_map(|a| Some(format!("~:{a}"))),
            (0u32..100).prop_map(|a| Some(format!("{a}:"))),
        ]
    }
    fn datum() -> impl Strategy<Value = PerfDatum> {
        (
            label(),
            proptest::option::of(-1e9f64..1e9),
            "(|s|ms|us|%|B|KB|MB|c)",
            range(),
            range(),
            proptest::option::of(-1e6f64..1e6),
            proptest::option::of(-1e6f64..1e6),
        )
            .prop_map(|(label, value, uom, warn, crit, min, max)| PerfDatum {
                label,
                value,
                uom,
                warn,
                crit,
                min,
                max,
            })
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(items in proptest::collection::vec(datum(), 0..6)) {
            let text = render(&items);
            let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(parsed, items);
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = parse(&s);
            let _ = parse_lenient(&s);
        }

        #[test]
        fn never_panics_on_perfdata_like_text(s in "[a-z'= ;:@~.0-9U%-]{0,40}") {
            let strict = parse(&s);
            let (lenient, errors) = parse_lenient(&s);
            if let Ok(items) = strict {
                prop_assert_eq!(items, lenient);
                prop_assert!(errors.is_empty());
            }
        }
    }
}
