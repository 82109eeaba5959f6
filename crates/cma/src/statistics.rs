//! Statistics at the CMA (issue 17 item 5), without IO: what a received `Statistics` batch
//! becomes — points for Graphite and the latest values for Prometheus.
//!
//! **Checking a batch** ([`Authority::handle_statistics`]). A batch from a registered node is
//! checked again with the nanoprobe's rules (`assim_wire::stat_rules`): a series with an invalid
//! name, tag or value is dropped and counted (the others are kept); more than
//! [`MAX_SERIES`] series refuse the whole batch (a conforming nanoprobe never sends that many).
//! Time: the batch's `at` (the end of its interval in the nanoprobe's clock) is kept as it is,
//! however old — a batch spooled through a CMA outage arrives late with its original time. A
//! batch stamped more than [`MAX_FUTURE`] after the CMA's clock is *clamped* to the CMA's time
//! (not refused: the values are real, only the host's clock is wrong; carbon would drop points
//! in the future anyway) and counted; an `at` before 2000 is not a time and refuses the batch.
//!
//! **Graphite naming** ([`graphite_path`]): `<prefix>.<host>.<name>` followed by each tag as two
//! more segments `.<key>.<value>`, keys in order — `assim.web1.backup.bytes.role.db`. The host
//! segment is the host name made path-safe ([`host_segment`]: `.` and anything outside
//! `[A-Za-z0-9_-]` become `_`, so `web1.example.com` is `web1_example_com`). Tags are folded into
//! the path rather than sent as Graphite tagged series (`name;k=v`) because plain carbon-cache
//! (Debian's graphite-carbon 1.1) stores tagged series under `_tagged/` in files named by a hash
//! of the name, readable only through graphite-web's tag database. A name that happens to end
//! in `key.value` segments can meet a tagged series of a shorter name; choose names so it does
//! not. The value is a gauge's last value or a counter's sum over the interval; the timestamp
//! the batch's (seconds). [`carbon_line`] builds the plaintext line.
//!
//! **Prometheus** ([`Latest`]): per host and series the latest value, bounded by
//! [`MAX_EXPOSED_SERIES`]. Names: `assim_stat_` + the name with `.` and `-` as `_`; a counter
//! is exposed as a Prometheus counter `…_total` holding the sum of every increment the CMA
//! received since it started (so `rate()` works; it restarts from 0 with the CMA, which
//! Prometheus treats as a counter reset); a gauge as its latest value. Labels: `host` (the host
//! name) and the series' tags (a tag key `host`, or one starting with `__` or a digit, becomes
//! `tag_<key>`). A series not updated for three of its intervals (at least
//! [`MIN_EXPOSED_AGE`]) is no longer exposed, so a silent host's values go stale in Prometheus
//! instead of staying flat.
//!
//! **The carbon link** ([`CarbonLink`]): the driver's connection to carbon as a state machine —
//! the retry delay after failures (1 s doubling to [`MAX_BACKOFF`]), one warning when carbon
//! goes away and one notice when it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use assim_wire::msg;
use assim_wire::stat_rules::{MAX_SERIES, valid_name, valid_tag, valid_value};
use assim_wire::{NodeId, Timestamp};

use crate::desired::Authority;

/// A batch stamped later than the CMA's clock plus this is clamped to the CMA's clock.
pub const MAX_FUTURE: Duration = Duration::from_secs(60);
/// The earliest batch time accepted (2000-01-01, seconds).
pub const MIN_TIME_S: u64 = 946_684_800;
/// The longest host segment of a Graphite path.
pub const MAX_HOST_SEGMENT: usize = 128;
/// Series the Prometheus exposition keeps at most (every host together).
pub const MAX_EXPOSED_SERIES: usize = 100_000;
/// The shortest time a series stays exposed without an update.
pub const MIN_EXPOSED_AGE: Duration = Duration::from_secs(300);
/// The longest wait between attempts to reach carbon.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One checked series of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub counter: bool,
    /// A gauge's last value or a counter's sum over the interval.
    pub value: f64,
}

/// A checked batch of one host's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct StatBatch {
    pub node: NodeId,
    /// The host name as registered (empty: the node id is used).
    pub hostname: String,
    /// The batch's time, seconds since the epoch (after clamping).
    pub at_s: u64,
    /// The interval's length in seconds (as sent; 0 if not said).
    pub interval_s: u64,
    /// The batch's own time when it was clamped (seconds).
    pub clamped_from_s: Option<u64>,
    pub series: Vec<Series>,
    /// Series dropped as invalid, and why the first one was.
    pub refused: usize,
    pub first_refusal: Option<String>,
}

/// One value on its way to Graphite: what the durable queue keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct StatPoint {
    /// A Graphite path ([`graphite_path`]).
    pub path: String,
    pub value: f64,
    /// Seconds since the epoch.
    pub at_s: u64,
}

/// Why a batch was refused as a whole (nothing of it is kept).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatisticsError {
    #[error("statistics from node {0}, which is not registered")]
    UnknownNode(NodeId),
    #[error("{0} series in one batch, more than the {MAX_SERIES} a nanoprobe sends; refused")]
    TooManySeries(usize),
    #[error("the batch's time ({0} µs since the epoch) is before 2000; refused")]
    BadTime(u64),
}

/// Checks one series; `Err` says why it is dropped.
fn check_series(s: &msg::StatSeries) -> Result<Series, String> {
    if !valid_name(&s.name) {
        return Err(format!("name {:?} is not a Graphite path", truncate(&s.name, 80)));
    }
    if !valid_value(s.value, s.counter) {
        return Err(format!("{}: value {} is not valid", s.name, s.value));
    }
    if s.tags.len() > assim_wire::stat_rules::MAX_TAGS {
        return Err(format!("{}: {} tags", s.name, s.tags.len()));
    }
    let mut tags = BTreeMap::new();
    for t in &s.tags {
        if !valid_tag(&t.key, &t.value) {
            return Err(format!("{}: tag {:?} is not valid", s.name, truncate(&t.key, 64)));
        }
        if tags.insert(t.key.clone(), t.value.clone()).is_some() {
            return Err(format!("{}: tag {} given twice", s.name, t.key));
        }
    }
    Ok(Series { name: s.name.clone(), tags, counter: s.counter, value: s.value })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Checks a batch from `node` named `hostname` (see the module doc); `Ok(None)` when it carries
/// no series (the nanoprobe's own counters only).
pub fn check_batch(
    now: Timestamp,
    node: NodeId,
    hostname: &str,
    s: &msg::Statistics,
) -> Result<Option<StatBatch>, StatisticsError> {
    if s.series.is_empty() {
        return Ok(None);
    }
    if s.series.len() > MAX_SERIES {
        return Err(StatisticsError::TooManySeries(s.series.len()));
    }
    let at_s = s.at / 1_000_000;
    if at_s < MIN_TIME_S {
        return Err(StatisticsError::BadTime(s.at));
    }
    let now_s = now.micros() / 1_000_000;
    let (at_s, clamped_from_s) =
        if at_s > now_s + MAX_FUTURE.as_secs() { (now_s, Some(at_s)) } else { (at_s, None) };
    let mut batch = StatBatch {
        node,
        hostname: hostname.to_owned(),
        at_s,
        interval_s: s.interval_s,
        clamped_from_s,
        series: Vec::with_capacity(s.series.len()),
        refused: 0,
        first_refusal: None,
    };
    for x in &s.series {
        match check_series(x) {
            Ok(ok) => batch.series.push(ok),
            Err(why) => {
                batch.refused += 1;
                batch.first_refusal.get_or_insert(why);
            }
        }
    }
    Ok(Some(batch))
}

impl Authority {
    /// A `Statistics` message from `node`, checked (see the module doc). Changes nothing in
    /// the core: what to do with the batch (queue it for Graphite, expose it) is the caller's.
    pub fn handle_statistics(
        &self,
        now: Timestamp,
        node: NodeId,
        s: &msg::Statistics,
    ) -> Result<Option<StatBatch>, StatisticsError> {
        let Some(rec) = self.cma().node(node) else {
            return Err(StatisticsError::UnknownNode(node));
        };
        check_batch(now, node, &rec.hostname, s)
    }
}

/// The host name as one Graphite path segment: `.` and every byte outside `[A-Za-z0-9_-]`
/// become `_`, at most [`MAX_HOST_SEGMENT`] bytes; the node id when the name is empty.
pub fn host_segment(hostname: &str, node: NodeId) -> String {
    if hostname.is_empty() {
        return node.to_string();
    }
    hostname
        .chars()
        .take(MAX_HOST_SEGMENT)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect()
}

/// `<prefix>.<host>.<name>[.<key>.<value>…]` (see the module doc); `prefix` is a valid name,
/// `host` a [`host_segment`], the series checked.
pub fn graphite_path(prefix: &str, host: &str, s: &Series) -> String {
    let mut p = format!("{prefix}.{host}.{}", s.name);
    for (k, v) in &s.tags {
        p.push('.');
        p.push_str(k);
        p.push('.');
        p.extend(v.chars().map(|c| if c == '.' { '_' } else { c }));
    }
    p
}

/// The points of a batch for Graphite under `prefix`.
pub fn graphite_points(prefix: &str, b: &StatBatch) -> Vec<StatPoint> {
    let host = host_segment(&b.hostname, b.node);
    b.series
        .iter()
        .map(|s| StatPoint { path: graphite_path(prefix, &host, s), value: s.value, at_s: b.at_s })
        .collect()
}

/// One carbon plaintext line, `path value timestamp\n`. The path comes from
/// [`graphite_path`] (no whitespace); a value that is not finite is sent as 0 (never the case
/// for a checked series).
pub fn carbon_line(p: &StatPoint) -> String {
    let v = if p.value.is_finite() { p.value } else { 0.0 };
    format!("{} {} {}\n", p.path, v, p.at_s)
}

// ----------------------------------------------------------------------------------------------
// Prometheus

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LatestKey {
    hostname: String,
    name: String,
    tags: BTreeMap<String, String>,
    counter: bool,
}

#[derive(Clone, Debug)]
struct LatestValue {
    /// A gauge's latest value, or a counter's sum since the CMA started.
    value: f64,
    /// When it stops being exposed (seconds, CMA clock).
    expires_s: u64,
}

/// The latest value of every series of every host, for the Prometheus exposition (see the
/// module doc).
#[derive(Clone, Debug, Default)]
pub struct Latest {
    series: BTreeMap<LatestKey, LatestValue>,
    /// New series refused because [`MAX_EXPOSED_SERIES`] were exposed.
    pub refused: u64,
}

impl Latest {
    /// Series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Takes a batch in at `now_s` (the CMA's clock, seconds).
    pub fn apply(&mut self, b: &StatBatch, now_s: u64) {
        self.apply_bounded(b, now_s, MAX_EXPOSED_SERIES)
    }

    fn apply_bounded(&mut self, b: &StatBatch, now_s: u64, max: usize) {
        let keep = (3 * b.interval_s).max(MIN_EXPOSED_AGE.as_secs());
        let mut pruned = false;
        for s in &b.series {
            let key = LatestKey {
                hostname: if b.hostname.is_empty() {
                    b.node.to_string()
                } else {
                    b.hostname.clone()
                },
                name: s.name.clone(),
                tags: s.tags.clone(),
                counter: s.counter,
            };
            if let Some(v) = self.series.get_mut(&key) {
                v.value = if s.counter { v.value + s.value } else { s.value };
                v.expires_s = now_s + keep;
                continue;
            }
            if self.series.len() >= max && !pruned {
                self.expire(now_s);
                pruned = true;
            }
            if self.series.len() >= max {
                self.refused += 1;
                continue;
            }
            self.series.insert(key, LatestValue { value: s.value, expires_s: now_s + keep });
        }
    }

    /// Forgets the series that expired by `now_s`.
    pub fn expire(&mut self, now_s: u64) {
        self.series.retain(|_, v| v.expires_s > now_s);
    }

    /// The Prometheus text exposition (format 0.0.4) of the series alive at `now_s`.
    pub fn render(&self, now_s: u64) -> String {
        // family → (type, first name, label sets seen, lines)
        type Family<'a> = (&'static str, &'a str, BTreeSet<String>, String);
        let mut families: BTreeMap<String, Family<'_>> = BTreeMap::new();
        for (k, v) in &self.series {
            if v.expires_s <= now_s {
                continue;
            }
            let mut family = prometheus_name(&k.name);
            let kind = if k.counter {
                family.push_str("_total");
                "counter"
            } else {
                "gauge"
            };
            let labels = prometheus_labels(&k.hostname, &k.tags);
            let entry = families
                .entry(family)
                .or_insert_with(|| (kind, k.name.as_str(), BTreeSet::new(), String::new()));
            // Two names that sanitize alike: the first one's type and series win.
            if entry.0 != kind || !entry.2.insert(labels.clone()) {
                continue;
            }
            let _ = writeln!(entry.3, "{{{labels}}} {}", v.value);
        }
        let mut out = String::new();
        for (name, (kind, first, _, lines)) in families {
            let what = if kind == "counter" {
                "the sum of its increments since the CMA started"
            } else {
                "its latest value"
            };
            let _ = writeln!(out, "# HELP {name} Statistic {first} put on the hosts: {what}.");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for l in lines.lines() {
                let _ = writeln!(out, "{name}{l}");
            }
        }
        out
    }
}

/// `assim_stat_` + the name with every byte outside `[A-Za-z0-9_]` as `_`.
pub fn prometheus_name(name: &str) -> String {
    let mut n = String::from("assim_stat_");
    n.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    n
}

/// A label name for a tag key (see the module doc).
pub fn prometheus_label_name(key: &str) -> String {
    let clean: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if clean.is_empty()
        || clean == "host"
        || clean.starts_with("__")
        || clean.starts_with(|c: char| c.is_ascii_digit())
    {
        format!("tag_{clean}")
    } else {
        clean
    }
}

fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn prometheus_labels(hostname: &str, tags: &BTreeMap<String, String>) -> String {
    let mut labels = BTreeMap::new();
    labels.insert("host".to_owned(), escape_label_value(hostname));
    for (k, v) in tags {
        labels.entry(prometheus_label_name(k)).or_insert_with(|| escape_label_value(v));
    }
    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect::<Vec<_>>().join(",")
}

// ----------------------------------------------------------------------------------------------
// The carbon link

/// What the driver should say about the link after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkNote {
    /// Nothing new.
    Quiet,
    /// Carbon just became unreachable (one warning).
    Down,
    /// Carbon is reachable again after `down` and `failures` failed attempts (one notice).
    Back { down: Duration, failures: u64 },
}

/// The connection to carbon as a state machine (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct CarbonLink {
    /// Since when attempts fail, and how many did.
    down: Option<(Instant, u64)>,
    next_try: Option<Instant>,
}

impl CarbonLink {
    /// Whether the last attempt failed.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// When the next attempt may be made (`None`: now).
    pub fn next_try(&self) -> Option<Instant> {
        self.next_try
    }

    /// An attempt failed at `now`.
    pub fn failed(&mut self, now: Instant) -> LinkNote {
        let (note, failures) = match &mut self.down {
            None => {
                self.down = Some((now, 1));
                (LinkNote::Down, 1)
            }
            Some((_, n)) => {
                *n += 1;
                (LinkNote::Quiet, *n)
            }
        };
        let exp = (failures - 1).min(16) as u32;
        let delay = Duration::from_secs(1u64 << exp).min(MAX_BACKOFF);
        self.next_try = Some(now + delay);
        note
    }

    /// An attempt succeeded at `now`.
    pub fn succeeded(&mut self, now: Instant) -> LinkNote {
        self.next_try = None;
        match self.down.take() {
            None => LinkNote::Quiet,
            Some((since, failures)) => {
                LinkNote::Back { down: now.saturating_duration_since(since), failures }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn node() -> NodeId {
        NodeId::from_slice(&[7; 16]).unwrap()
    }

    fn series(name: &str, value: f64, counter: bool, tags: &[(&str, &str)]) -> msg::StatSeries {
        msg::StatSeries {
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| msg::Tag { key: (*k).into(), value: (*v).into() })
                .collect(),
            counter,
            value,
        }
    }

    fn stats(at_s: u64, series: Vec<msg::StatSeries>) -> msg::Statistics {
        msg::Statistics { counters: vec![], series, at: at_s * 1_000_000, interval_s: 60 }
    }

    fn now() -> Timestamp {
        Timestamp(NOW * 1_000_000)
    }

    #[test]
    fn a_batch_is_checked_again_invalid_series_dropped_and_counted() {
        let s = stats(
            NOW - 3600,
            vec![
                series("backup.bytes", 12.0, true, &[("role", "db")]),
                series("a..b", 1.0, false, &[]),
                series("neg", -1.0, true, &[]),
                series("nan", f64::NAN, false, &[]),
                series("tag", 1.0, false, &[("k", "v;x")]),
                series("dup", 1.0, false, &[("k", "v"), ("k", "w")]),
                series("queue.depth", -3.5, false, &[]),
            ],
        );
        let b = check_batch(now(), node(), "web1", &s).unwrap().unwrap();
        let names: Vec<&str> = b.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["backup.bytes", "queue.depth"]);
        assert_eq!(b.refused, 5);
        assert!(b.first_refusal.unwrap().contains("a..b"));
        assert_eq!((b.at_s, b.clamped_from_s), (NOW - 3600, None), "old batches keep their time");
    }

    #[test]
    fn times_in_the_future_are_clamped_and_nonsense_refused() {
        let ok = stats(NOW + 60, vec![series("x", 1.0, false, &[])]);
        assert_eq!(check_batch(now(), node(), "h", &ok).unwrap().unwrap().at_s, NOW + 60);
        let future = stats(NOW + 3600, vec![series("x", 1.0, false, &[])]);
        let b = check_batch(now(), node(), "h", &future).unwrap().unwrap();
        assert_eq!((b.at_s, b.clamped_from_s), (NOW, Some(NOW + 3600)));
        let zero = stats(0, vec![series("x", 1.0, false, &[])]);
        assert_eq!(check_batch(now(), node(), "h", &zero), Err(StatisticsError::BadTime(0)));
        let empty = stats(0, vec![]);
        assert_eq!(check_batch(now(), node(), "h", &empty), Ok(None), "counters only");
        let many = stats(
            NOW,
            (0..=MAX_SERIES).map(|i| series(&format!("m{i}"), 1.0, false, &[])).collect(),
        );
        assert_eq!(
            check_batch(now(), node(), "h", &many),
            Err(StatisticsError::TooManySeries(MAX_SERIES + 1))
        );
    }

    #[test]
    fn graphite_names_fold_host_and_tags_into_the_path() {
        let s = stats(
            NOW,
            vec![series("backup.bytes", 5.0, true, &[("zone", "eu.west"), ("role", "db")])],
        );
        let b = check_batch(now(), node(), "web1.example.com", &s).unwrap().unwrap();
        let p = graphite_points("assim", &b);
        assert_eq!(p[0].path, "assim.web1_example_com.backup.bytes.role.db.zone.eu_west");
        assert_eq!(
            carbon_line(&p[0]),
            format!("assim.web1_example_com.backup.bytes.role.db.zone.eu_west 5 {NOW}\n")
        );
        assert_eq!(host_segment("", node()), node().to_string());
        assert_eq!(host_segment("a b\n;c/d", node()), "a_b__c_d");
    }

    #[test]
    fn prometheus_exposition_counters_add_gauges_replace_names_are_clean() {
        let mut l = Latest::default();
        let s = stats(
            NOW,
            vec![
                series("jobs.done", 3.0, true, &[("host", "x"), ("9k", "y")]),
                series("queue-depth", 7.0, false, &[]),
            ],
        );
        let b = check_batch(now(), node(), "web\"1", &s).unwrap().unwrap();
        l.apply(&b, NOW);
        l.apply(&b, NOW + 60);
        let text = l.render(NOW + 60);
        assert!(text.contains("# TYPE assim_stat_jobs_done_total counter\n"), "{text}");
        assert!(
            text.contains(
                "assim_stat_jobs_done_total{host=\"web\\\"1\",tag_9k=\"y\",tag_host=\"x\"} 6\n"
            ),
            "{text}"
        );
        assert!(text.contains("assim_stat_queue_depth{host=\"web\\\"1\"} 7\n"), "{text}");
        // Stale after three intervals (at least five minutes) without an update.
        assert!(l.render(NOW + 60 + 299).contains("queue_depth"));
        assert_eq!(l.render(NOW + 60 + 300), "");
    }

    #[test]
    fn prometheus_names_that_collide_keep_one_valid_family() {
        let mut l = Latest::default();
        let s = stats(
            NOW,
            vec![
                series("a.b", 1.0, false, &[]),
                series("a_b", 2.0, false, &[]),
                series("a-b_total", 3.0, false, &[]),
                series("a.b", 4.0, true, &[]),
            ],
        );
        l.apply(&check_batch(now(), node(), "h", &s).unwrap().unwrap(), NOW);
        let text = l.render(NOW);
        assert_eq!(text.matches("# TYPE assim_stat_a_b gauge").count(), 1, "{text}");
        assert_eq!(text.matches("assim_stat_a_b{").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE assim_stat_a_b_total").count(), 1, "{text}");
    }

    #[test]
    fn the_exposition_is_bounded() {
        let mut l = Latest::default();
        let s = stats(NOW, (0..10).map(|i| series(&format!("m{i}"), 1.0, false, &[])).collect());
        let b = check_batch(now(), node(), "h", &s).unwrap().unwrap();
        l.apply_bounded(&b, NOW, 4);
        assert_eq!((l.len(), l.refused), (4, 6));
        // Expired series make room.
        l.apply_bounded(&b, NOW + 10_000, 4);
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn the_link_backs_off_and_speaks_once_each_way() {
        let t0 = Instant::now();
        let mut link = CarbonLink::default();
        assert_eq!(link.succeeded(t0), LinkNote::Quiet);
        assert_eq!(link.failed(t0), LinkNote::Down);
        assert_eq!(link.next_try(), Some(t0 + Duration::from_secs(1)));
        let mut t = t0;
        for _ in 0..20 {
            t += Duration::from_secs(1);
            assert_eq!(link.failed(t), LinkNote::Quiet);
        }
        assert_eq!(link.next_try(), Some(t + MAX_BACKOFF));
        assert_eq!(link.succeeded(t), LinkNote::Back { down: t - t0, failures: 21 });
        assert!(!link.is_down());
    }

    proptest! {
        /// Whatever a hostile nanoprobe sends, every line for carbon is `path value ts\n` with
        /// exactly two spaces, one newline at the end, and a path of safe characters; every
        /// Prometheus line has the form `name{labels} value`.
        #[test]
        fn lines_are_always_well_formed(
            hostname in ".{0,80}",
            name in "([a-z0-9_-]{1,8}\\.){0,3}[a-z0-9_-]{1,8}|.{0,60}",
            tags in proptest::collection::vec(
                ("[A-Za-z0-9_]{1,6}|.{0,6}", "[A-Za-z0-9_.-]{1,8}|.{0,8}"), 0..4),
            value in any::<f64>(),
            counter in any::<bool>(),
            at in prop_oneof![any::<u64>(), (MIN_TIME_S..NOW + 10_000).prop_map(|s| s * 1_000_000)],
        ) {
            let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let s = stats(0, vec![series(&name, value, counter, &tags)]);
            let s = msg::Statistics { at, ..s };
            if let Ok(Some(b)) = check_batch(now(), node(), &hostname, &s) {
                prop_assert!(b.at_s <= NOW + MAX_FUTURE.as_secs());
                for p in graphite_points("assim", &b) {
                    let line = carbon_line(&p);
                    prop_assert!(line.ends_with('\n'));
                    prop_assert_eq!(line.matches('\n').count(), 1);
                    prop_assert_eq!(line.matches(' ').count(), 2);
                    prop_assert!(p.path.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)), "path {:?}", p.path);
                    prop_assert!(!p.path.contains(".."));
                }
                let mut l = Latest::default();
                l.apply(&b, NOW);
                for line in l.render(NOW).lines().filter(|l| !l.starts_with('#')) {
                    let (series, v) = line.rsplit_once(' ').unwrap();
                    prop_assert!(v.parse::<f64>().is_ok());
                    let (n, labels) = series.split_once('{').unwrap();
                    prop_assert!(n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
                    prop_assert!(labels.ends_with('}'), "labels {}", labels);
                }
            }
        }
    }
}
