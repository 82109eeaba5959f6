//! Statistics from local programs (issue 17 item 5), without IO: the line protocol's parser
//! and the per-interval aggregator.
//!
//! Opt-in: with statistics off (the default) every sample is refused with the reason and
//! nothing is ever sent. With them on, programs put counters and gauges (`assim stat put NAME
//! VALUE [--tag k=v]`, or the plain-text line `put NAME VALUE [counter|gauge] [KEY=VALUE…]` on
//! `events.sock`); the aggregator keeps, per series (name + tags), the sum of a counter's
//! increments and a gauge's last value within the interval, and at the end of each interval
//! ([`Aggregator::poll_timeout`], default [`DEFAULT_INTERVAL`]) hands back one batch of the
//! series that were put during it ([`Aggregator::flush`]); the shell spools it. An interval in
//! which nothing was put sends nothing.
//!
//! Names are Graphite paths: 1–[`MAX_NAME`] bytes of `[A-Za-z0-9_-]` segments joined by `.`
//! (no empty segment). Tags: at most [`MAX_TAGS`], keys `[A-Za-z0-9_]{1,64}`, values
//! `[A-Za-z0-9_.-]{1,128}` (safe in Graphite's tagged names and Prometheus labels). Values are
//! finite numbers; a counter increment is not negative. At most [`MAX_SERIES`] series per
//! interval: a new series beyond that is refused (the ones already put keep aggregating).
//!
//! The shell owns one aggregator (`Shell::set_statistics`, `Shell::stat_put`) and spools each
//! batch as a `Statistics` message (`series`, `at`, `interval_s`). The CMA checks it again
//! with the same rules (`assim_wire::stat_rules`), forwards it to Graphite and exposes it for
//! Prometheus (`assim_cma::statistics`). Check perfdata and host figures, by config, are put
//! into the same aggregator by the shell ([`crate::stat_sources`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The default batch interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
pub use assim_wire::stat_rules::{MAX_NAME, MAX_SERIES, MAX_TAGS};
use assim_wire::stat_rules::{valid_name, valid_tag, valid_value};

/// Counter (increments, summed per interval) or gauge (the last value wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One sample as put.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub kind: Kind,
    pub value: f64,
}

/// Why a sample was refused. Nothing is changed in every case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatError {
    /// Statistics are off on this host.
    Off,
    /// The line is not `put NAME VALUE [counter|gauge] [KEY=VALUE…]`.
    Syntax(String),
    BadName(String),
    BadValue(String),
    BadTag(String),
    /// [`MAX_SERIES`] series were put in this interval already.
    TooManySeries,
}

impl std::fmt::Display for StatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatError::Off => write!(
                f,
                "statistics are off on this host; enable them in the nanoprobe's config \
                 (statistics = true) to send them"
            ),
            StatError::Syntax(s) => {
                write!(f, "{s}: send `put NAME VALUE [counter|gauge] [KEY=VALUE...]`")
            }
            StatError::BadName(n) => write!(
                f,
                "metric name {n:?} is not valid: use dot-separated segments of letters, digits, \
                 '_' and '-', at most {MAX_NAME} bytes"
            ),
            StatError::BadValue(v) => write!(
                f,
                "value {v:?} is not valid: a finite number (a counter's increment is not negative)"
            ),
            StatError::BadTag(t) => write!(
                f,
                "tag {t:?} is not valid: KEY=VALUE with a key of [A-Za-z0-9_] (1-64) and a value \
                 of [A-Za-z0-9_.-] (1-128), at most {MAX_TAGS} tags"
            ),
            StatError::TooManySeries => write!(
                f,
                "{MAX_SERIES} series were put in this interval already; use fewer names or tags"
            ),
        }
    }
}

impl std::error::Error for StatError {}

/// Validates a sample (name, value, tags).
pub fn validate(s: &Sample) -> Result<(), StatError> {
    if !valid_name(&s.name) {
        return Err(StatError::BadName(s.name.chars().take(MAX_NAME + 8).collect()));
    }
    if !valid_value(s.value, s.kind == Kind::Counter) {
        return Err(StatError::BadValue(s.value.to_string()));
    }
    if s.tags.len() > MAX_TAGS {
        return Err(StatError::BadTag(format!("{} tags", s.tags.len())));
    }
    if let Some((k, v)) = s.tags.iter().find(|(k, v)| !valid_tag(k, v)) {
        return Err(StatError::BadTag(format!("{k}={v}").chars().take(200).collect()));
    }
    Ok(())
}

/// Parses one plain-text line: `put NAME VALUE [counter|gauge] [KEY=VALUE…]` (words separated
/// by spaces or tabs; the kind defaults to gauge). Pure; validates the sample.
pub fn parse_line(line: &str) -> Result<Sample, StatError> {
    let mut words = line.split_ascii_whitespace();
    match words.next() {
        Some("put") => {}
        _ => return Err(StatError::Syntax("not a put line".into())),
    }
    let (Some(name), Some(value)) = (words.next(), words.next()) else {
        return Err(StatError::Syntax("a name and a value are needed".into()));
    };
    let value: f64 =
        value.parse().map_err(|_| StatError::BadValue(value.chars().take(40).collect()))?;
    let mut kind = Kind::Gauge;
    let mut tags = BTreeMap::new();
    for (i, w) in words.enumerate() {
        match (i, w) {
            (0, "counter" | "c") => kind = Kind::Counter,
            (0, "gauge" | "g") => kind = Kind::Gauge,
            _ => {
                let Some((k, v)) = w.split_once('=') else {
                    return Err(StatError::BadTag(w.chars().take(200).collect()));
                };
                if tags.insert(k.to_owned(), v.to_owned()).is_some() {
                    return Err(StatError::BadTag(format!("{k} given twice")));
                }
            }
        }
    }
    let s = Sample { name: name.to_owned(), tags, kind, value };
    validate(&s)?;
    Ok(s)
}

/// A series' identity: kind, name and tags.
pub type SeriesKey = (Kind, String, BTreeMap<String, String>);

/// One aggregated series in a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregated {
    pub kind: Kind,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// Counter: the sum of the increments in the interval; gauge: the last value.
    pub value: f64,
}

/// What one interval produced: its series and the wall-clock time of its end (µs).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub at_micros: u64,
    pub series: Vec<Aggregated>,
}

/// The aggregator (see the module doc).
#[derive(Clone, Debug)]
pub struct Aggregator {
    enabled: bool,
    interval: Duration,
    next: Instant,
    series: BTreeMap<SeriesKey, f64>,
}

impl Aggregator {
    /// `interval` is clamped to at least a second.
    pub fn new(enabled: bool, interval: Duration, now: Instant) -> Aggregator {
        let interval = interval.max(Duration::from_secs(1));
        Aggregator { enabled, interval, next: now + interval, series: BTreeMap::new() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Adds a sample to the current interval.
    pub fn put(&mut self, s: Sample) -> Result<(), StatError> {
        if !self.enabled {
            return Err(StatError::Off);
        }
        validate(&s)?;
        let key = (s.kind, s.name, s.tags);
        let full = self.series.len() >= MAX_SERIES;
        match self.series.get_mut(&key) {
            Some(v) if key.0 == Kind::Counter => *v += s.value,
            Some(v) => *v = s.value,
            None if full => return Err(StatError::TooManySeries),
            None => {
                self.series.insert(key, s.value);
            }
        }
        Ok(())
    }

    /// The end of the current interval (none while statistics are off).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.enabled.then_some(self.next)
    }

    /// At or after the interval's end: the batch of what was put in it (`None` if nothing
    /// was), stamped with `wall_micros` of the interval's end; the next interval starts on the
    /// old one's phase (late calls skip whole missed intervals).
    pub fn flush(
        &mut self,
        now: Instant,
        wall_micros_at: impl Fn(Instant) -> u64,
    ) -> Option<Batch> {
        if !self.enabled || now < self.next {
            return None;
        }
        let end = self.next;
        while self.next <= now {
            self.next += self.interval;
        }
        if self.series.is_empty() {
            return None;
        }
        let series = std::mem::take(&mut self.series)
            .into_iter()
            .map(|((kind, name, tags), value)| Aggregated { kind, name, tags, value })
            .collect();
        Some(Batch { at_micros: wall_micros_at(end), series })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(name: &str, kind: Kind, value: f64) -> Sample {
        Sample { name: name.into(), tags: BTreeMap::new(), kind, value }
    }

    #[test]
    fn lines() {
        let p = parse_line("put backup.bytes 1234.5 counter host_role=db").unwrap();
        assert_eq!((p.name.as_str(), p.kind, p.value), ("backup.bytes", Kind::Counter, 1234.5));
        assert_eq!(p.tags["host_role"], "db");
        assert_eq!(parse_line("put q.depth 7").unwrap().kind, Kind::Gauge);
        assert_eq!(parse_line("put\tq.depth\t-7 g").unwrap().value, -7.0);
        for (bad, want) in [
            ("get x 1", "not a put line"),
            ("put x", "a name and a value"),
            ("put x nan", "not valid"),
            ("put x inf", "not valid"),
            ("put x -1 counter", "not valid"),
            ("put a..b 1", "metric name"),
            ("put .a 1", "metric name"),
            ("put a;b 1", "metric name"),
            ("put a 1 k=v k=w", "given twice"),
            ("put a 1 k=v;x", "tag"),
            ("put a 1 novalue", "tag"),
            ("put a 1 gauge a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1", "tag"),
        ] {
            let e = parse_line(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn off_means_nothing_is_kept_or_sent() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(false, DEFAULT_INTERVAL, t0);
        assert_eq!(a.put(s("x", Kind::Gauge, 1.0)), Err(StatError::Off));
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(a.flush(t0 + Duration::from_secs(3600), |_| 0), None);
    }

    #[test]
    fn one_batch_per_interval_counters_summed_gauges_last() {
        let t0 = Instant::now();
        let wall = |t: Instant| 1_000_000 + (t - t0).as_micros() as u64;
        let mut a = Aggregator::new(true, Duration::from_secs(60), t0);
        for i in 0..10 {
            a.put(s("jobs.done", Kind::Counter, 1.0)).unwrap();
            a.put(s("queue.depth", Kind::Gauge, f64::from(i))).unwrap();
        }
        assert_eq!(a.flush(t0 + Duration::from_secs(59), wall), None);
        let b = a.flush(t0 + Duration::from_secs(61), wall).unwrap();
        assert_eq!(b.at_micros, 1_000_000 + 60_000_000);
        let got: Vec<(&str, f64)> = b.series.iter().map(|x| (x.name.as_str(), x.value)).collect();
        assert_eq!(got, [("jobs.done", 10.0), ("queue.depth", 9.0)]);
        // Nothing put in the next interval: nothing sent.
        assert_eq!(a.flush(t0 + Duration::from_secs(121), wall), None);
        // A late flush skips missed intervals and keeps the phase.
        a.put(s("x", Kind::Gauge, 1.0)).unwrap();
        let b = a.flush(t0 + Duration::from_secs(400), wall).unwrap();
        assert_eq!(b.at_micros, 1_000_000 + 180_000_000);
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(420)));
    }

    #[test]
    fn series_are_bounded() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(true, DEFAULT_INTERVAL, t0);
        for i in 0..MAX_SERIES {
            a.put(s(&format!("m{i}"), Kind::Gauge, 1.0)).unwrap();
        }
        assert_eq!(a.put(s("one.more", Kind::Gauge, 1.0)), Err(StatError::TooManySeries));
        a.put(s("m0", Kind::Gauge, 2.0)).unwrap();
    }

    proptest! {
        /// Any text: a sample or an error, never a panic; a sample is always valid.
        #[test]
        fn any_line(line in ".{0,300}") {
            if let Ok(s) = parse_line(&line) {
                prop_assert!(validate(&s).is_ok());
            }
        }

        /// A valid sample printed as a line parses back to itself.
        #[test]
        fn round_trip(
            name in "[a-z0-9_-]{1,20}(\\.[a-z0-9_-]{1,20}){0,4}",
            value in -1e12f64..1e12,
            counter in any::<bool>(),
            tags in proptest::collection::btree_map("[A-Za-z0-9_]{1,10}", "[A-Za-z0-9_.-]{1,10}", 0..=MAX_TAGS),
        ) {
            let kind = if counter { Kind::Counter } else { Kind::Gauge };
            let value = if counter { value.abs() } else { value };
            let mut line = format!("put {name} {value} {}", if counter { "counter" } else { "gauge" });
            for (k, v) in &tags {
                line.push_str(&format!(" {k}={v}"));
            }
            let s = parse_line(&line).unwrap();
            prop_assert_eq!(s, Sample { name, tags, kind, value });
        }

        /// The batch's counters are the sums of what was put, whatever the order.
        #[test]
        fn counters_sum(incs in proptest::collection::vec((0usize..5, 0u32..1000), 0..200)) {
            let t0 = Instant::now();
            let mut a = Aggregator::new(true, DEFAULT_INTERVAL, t0);
            let mut want = BTreeMap::new();
            for (k, v) in &incs {
                a.put(s(&format!("c{k}"), Kind::Counter, f64::from(*v))).unwrap();
                *want.entry(format!("c{k}")).or_insert(0.0) += f64::from(*v);
            }
            let got: BTreeMap<String, f64> = a
                .flush(t0 + DEFAULT_INTERVAL, |_| 0)
                .map(|b| b.series.into_iter().map(|x| (x.name, x.value)).collect())
                .unwrap_or_default();
            prop_assert_eq!(got, want);
        }
    }
}
