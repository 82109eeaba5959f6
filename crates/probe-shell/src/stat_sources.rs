//! Statistics the nanoprobe makes itself (issue 17 item 5), without IO: check perfdata and a
//! few host figures turned into gauges for the aggregator ([`crate::stats`]).
//!
//! Both are off unless configured (`statistics_perfdata`, `statistics_host`, each needing
//! `statistics = true`).
//!
//! **Perfdata** ([`perfdata_samples`]): every scheduled check result's performance data
//! (parsed leniently, [`assim_checks::perfdata::parse_lenient`]) gives one gauge per item,
//! named `check.<check>.<label>`, with the tag `unit=<unit>` when the item has a unit. The
//! check name and the label are each reduced to one Graphite segment by [`segment`] (`http:80`
//! → `http_80`, `/var/log` → `_var_log`, `used space` → `used_space`); the unit by
//! [`unit_tag`] (`%` → `percent`, `/` → `_per_`). What is left out, counted by reason in
//! [`Dropped`]: items whose value is `U` (undetermined), items that do not parse, items
//! beyond the first [`MAX_PERF_ITEMS`] of one result, and a second item whose name reduces to
//! the same series as an earlier one of the same result. A gauge keeps the last value put in
//! the interval, so a check that runs more often than the interval sends its latest figures.
//!
//! **Host figures** ([`host_samples`]), read by the driver once per interval just before the
//! batch is made: `host.load.1`, `host.load.5`, `host.load.15` (`/proc/loadavg`, parsed by
//! [`parse_loadavg`]); `host.memory.total_bytes` and `host.memory.available_bytes`
//! (`MemTotal` and `MemAvailable` of `/proc/meminfo`, [`parse_meminfo`]);
//! `host.fs.root.size_bytes`, `host.fs.root.free_bytes` (free blocks, root's reserve included)
//! and `host.fs.root.available_bytes` (what unprivileged users can still write, `df`'s
//! "Avail") of the root filesystem (`statvfs("/")`, [`FsUsage::from_statvfs`]). A figure that
//! could not be read is left out of that interval.
//!
//! The parsers are pure functions over bytes: truncated input gives
//! [`FigureError::Incomplete`], anything else that is not the kernel's format
//! [`FigureError::Malformed`]; neither panics.

use std::collections::BTreeMap;

use assim_wire::stat_rules::valid_name;

use crate::stats::{Kind, Sample};

/// Perfdata items turned into gauges per check result, at most.
pub const MAX_PERF_ITEMS: usize = 32;
/// The longest segment [`segment`] makes, in bytes.
pub const MAX_SEGMENT: usize = 64;
/// The longest unit tag [`unit_tag`] makes, in bytes.
pub const MAX_UNIT: usize = 32;

/// One Graphite segment from any text: ASCII letters, digits, `_` and `-` are kept; each run
/// of other characters becomes one `_`; at most [`MAX_SEGMENT`] bytes; `_` if nothing is left.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SEGMENT));
    let mut replaced = false;
    for c in text.chars() {
        if out.len() >= MAX_SEGMENT {
            break;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
            replaced = false;
        } else if !replaced {
            out.push('_');
            replaced = true;
        }
    }
    if out.is_empty() { "_".into() } else { out }
}

/// The `unit` tag's value for a perfdata unit (`s`, `ms`, `%`, `B`, `KB`, `c`, …): `%` becomes
/// `percent`, `/` `_per_`, other characters outside `[A-Za-z0-9_.-]` `_`; at most [`MAX_UNIT`]
/// bytes. `None` for an empty unit.
pub fn unit_tag(uom: &str) -> Option<String> {
    let mut out = String::new();
    for c in uom.chars() {
        match c {
            '%' => out.push_str("percent"),
            '/' => out.push_str("_per_"),
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') => out.push(c),
            _ => out.push('_'),
        }
        if out.len() >= MAX_UNIT {
            out.truncate(MAX_UNIT);
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Statistics the nanoprobe made itself and left out, by reason (counts since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The value was `U` (the plugin could not determine it).
    pub undetermined: u64,
    /// The item did not parse.
    pub malformed: u64,
    /// Beyond the first [`MAX_PERF_ITEMS`] items of one result.
    pub over_limit: u64,
    /// Its name reduced to a series an earlier item of the same result had.
    pub duplicate: u64,
    /// The aggregator refused it (its series limit for the interval was reached): a perfdata
    /// item or a host figure.
    pub refused: u64,
}

impl Dropped {
    /// `(reason, count)` for every reason, in a fixed order (for metrics).
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("undetermined", self.undetermined),
            ("malformed", self.malformed),
            ("over_limit", self.over_limit),
            ("duplicate", self.duplicate),
            ("refused", self.refused),
        ]
    }
}

/// The gauges of one check result's performance data (see the module doc); what is left out
/// is added to `dropped`.
pub fn perfdata_samples(check: &str, perfdata: &str, dropped: &mut Dropped) -> Vec<Sample> {
    let (items, errors) = assim_checks::perfdata::parse_lenient(perfdata);
    dropped.malformed += errors.len() as u64;
    let check = segment(check);
    let mut out: Vec<Sample> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if i >= MAX_PERF_ITEMS {
            dropped.over_limit += (items.len() - i) as u64;
            break;
        }
        let Some(value) = item.value else {
            dropped.undetermined += 1;
            continue;
        };
        let name = format!("check.{check}.{}", segment(&item.label));
        if !valid_name(&name) || !value.is_finite() {
            // Cannot happen (segments are valid, the parser keeps finite numbers); counted
            // rather than trusted.
            dropped.malformed += 1;
            continue;
        }
        if !names.insert(name.clone()) {
            dropped.duplicate += 1;
            continue;
        }
        let mut tags = BTreeMap::new();
        if let Some(u) = unit_tag(&item.uom) {
            tags.insert("unit".to_owned(), u);
        }
        out.push(Sample { name, tags, kind: Kind::Gauge, value });
    }
    out
}

/// Why a `/proc` file did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FigureError {
    /// The text ends before what is needed (a truncated read).
    Incomplete(&'static str),
    /// The text is not in the kernel's format.
    Malformed(String),
}

impl std::fmt::Display for FigureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FigureError::Incomplete(what) => write!(f, "the text ends early: {what}"),
            FigureError::Malformed(why) => write!(f, "not the kernel's format: {why}"),
        }
    }
}

impl std::error::Error for FigureError {}

/// The largest load average accepted (anything above is not a load average).
const MAX_LOAD: f64 = 1e9;

/// The 1, 5 and 15 minute load averages from `/proc/loadavg` (`0.52 0.58 0.59 2/1234
/// 56789`). Each of the three must be followed by whitespace (else the read was cut short).
pub fn parse_loadavg(bytes: &[u8]) -> Result<[f64; 3], FigureError> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(256)).unwrap_or(bytes))
        .map_err(|_| FigureError::Malformed("not UTF-8".into()))?;
    let mut out = [0.0; 3];
    let mut rest = text;
    for slot in &mut out {
        rest = rest.trim_start_matches([' ', '\t']);
        let end = rest.find(|c: char| c.is_ascii_whitespace());
        let Some(end) = end else {
            return Err(FigureError::Incomplete("fewer than three load averages"));
        };
        let word = &rest[..end];
        let v: f64 = word
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && (0.0..=MAX_LOAD).contains(v))
            .ok_or_else(|| {
                FigureError::Malformed(format!(
                    "{:?} is not a load average",
                    word.chars().take(40).collect::<String>()
                ))
            })?;
        *slot = v;
        rest = &rest[end..];
    }
    Ok(out)
}

/// Memory totals from `/proc/meminfo`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// `MemTotal` and `MemAvailable` from `/proc/meminfo` (`MemTotal:  16318480 kB`). Only whole
/// lines count (a last line without its newline is ignored); other keys are ignored. Either
/// key missing is [`FigureError::Incomplete`]; malformed are a key given twice, a value that
/// is not a number of `kB` (or bytes without a unit) or does not fit in 64 bits, and more
/// available than total.
pub fn parse_meminfo(bytes: &[u8]) -> Result<Memory, FigureError> {
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[][..],
    };
    let mut total = None;
    let mut available = None;
    for line in whole.split(|&b| b == b'\n') {
        let slot = if let Some(v) = line.strip_prefix(b"MemTotal:") {
            (&mut total, v)
        } else if let Some(v) = line.strip_prefix(b"MemAvailable:") {
            (&mut available, v)
        } else {
            continue;
        };
        let (slot, value) = slot;
        if slot.is_some() {
            return Err(FigureError::Malformed("a memory key is given twice".into()));
        }
        *slot = Some(meminfo_value(value)?);
    }
    match (total, available) {
        (Some(total_bytes), Some(available_bytes)) if available_bytes <= total_bytes => {
            Ok(Memory { total_bytes, available_bytes })
        }
        (Some(_), Some(_)) => {
            Err(FigureError::Malformed("MemAvailable is larger than MemTotal".into()))
        }
        // A cut at a line boundary looks like a whole file without the key; a kernel older
        // than 3.14 has no MemAvailable at all. Both are "the key is not there (yet)".
        _ => Err(FigureError::Incomplete(
            "MemTotal or MemAvailable is missing (a truncated read, or a kernel older than 3.14)",
        )),
    }
}

fn meminfo_value(v: &[u8]) -> Result<u64, FigureError> {
    let bad = || {
        FigureError::Malformed(format!(
            "memory value {:?} is not a number of kB",
            String::from_utf8_lossy(&v[..v.len().min(40)])
        ))
    };
    let text = std::str::from_utf8(v).map_err(|_| bad())?;
    let mut words = text.split_ascii_whitespace();
    let n: u64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let scale = match words.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return Err(bad()),
    };
    if words.next().is_some() {
        return Err(bad());
    }
    n.checked_mul(scale).ok_or_else(bad)
}

/// The size and free space of a filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsUsage {
    pub size_bytes: u64,
    /// Free blocks, the reserve for root included.
    pub free_bytes: u64,
    /// Free to unprivileged users (`df`'s "Avail").
    pub available_bytes: u64,
}

impl FsUsage {
    /// From `statvfs` fields (`f_frsize`, `f_blocks`, `f_bfree`, `f_bavail`); `None` if the
    /// fragment size is 0, a product overflows 64 bits, or the counts are inconsistent
    /// (available > free > size).
    pub fn from_statvfs(frsize: u64, blocks: u64, bfree: u64, bavail: u64) -> Option<FsUsage> {
        if frsize == 0 || bfree > blocks || bavail > bfree {
            return None;
        }
        Some(FsUsage {
            size_bytes: blocks.checked_mul(frsize)?,
            free_bytes: bfree.checked_mul(frsize)?,
            available_bytes: bavail.checked_mul(frsize)?,
        })
    }
}

/// What the driver read this interval; a figure it could not read is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostFigures {
    pub load: Option<[f64; 3]>,
    pub memory: Option<Memory>,
    pub root_fs: Option<FsUsage>,
}

/// The gauges of the host figures (names in the module doc).
pub fn host_samples(f: &HostFigures) -> Vec<Sample> {
    let gauge = |name: &str, value: f64| Sample {
        name: name.to_owned(),
        tags: BTreeMap::new(),
        kind: Kind::Gauge,
        value,
    };
    let mut out = Vec::new();
    if let Some([l1, l5, l15]) = f.load {
        out.push(gauge("host.load.1", l1));
        out.push(gauge("host.load.5", l5));
        out.push(gauge("host.load.15", l15));
    }
    if let Some(m) = f.memory {
        out.push(gauge("host.memory.total_bytes", m.total_bytes as f64));
        out.push(gauge("host.memory.available_bytes", m.available_bytes as f64));
    }
    if let Some(fs) = f.root_fs {
        out.push(gauge("host.fs.root.size_bytes", fs.size_bytes as f64));
        out.push(gauge("host.fs.root.free_bytes", fs.free_bytes as f64));
        out.push(gauge("host.fs.root.available_bytes", fs.available_bytes as f64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::validate;
    use assim_wire::stat_rules::valid_tag;
    use proptest::prelude::*;

    fn names(s: &[Sample]) -> Vec<(String, f64, Option<String>)> {
        s.iter().map(|x| (x.name.clone(), x.value, x.tags.get("unit").cloned())).collect()
    }

    #[test]
    fn segments() {
        for (raw, want) in [
            ("load", "load"),
            ("http:80", "http_80"),
            ("disk:/", "disk_"),
            ("/", "_"),
            ("/var/log", "_var_log"),
            ("used space", "used_space"),
            ("a..b", "a_b"),
            ("a;  b", "a_b"),
            ("rta_ms-x", "rta_ms-x"),
            ("", "_"),
            ("é€", "_"),
            ("x\ny", "x_y"),
        ] {
            assert_eq!(segment(raw), want, "{raw:?}");
        }
        assert_eq!(segment(&"a".repeat(200)).len(), MAX_SEGMENT);
    }

    #[test]
    fn units() {
        assert_eq!(unit_tag(""), None);
        assert_eq!(unit_tag("s").as_deref(), Some("s"));
        assert_eq!(unit_tag("%").as_deref(), Some("percent"));
        assert_eq!(unit_tag("KB/s").as_deref(), Some("KB_per_s"));
        assert_eq!(unit_tag(&"%".repeat(50)).map(|u| u.len()), Some(MAX_UNIT));
    }

    #[test]
    fn perfdata_items_become_gauges() {
        let mut d = Dropped::default();
        let s = perfdata_samples(
            "http:80",
            "time=0.25s;1;2;0 'used space'=42%;80;90 size=1024B load1=0.5 bad=U junk /=2643MB",
            &mut d,
        );
        assert_eq!(
            names(&s),
            [
                ("check.http_80.time".into(), 0.25, Some("s".into())),
                ("check.http_80.used_space".into(), 42.0, Some("percent".into())),
                ("check.http_80.size".into(), 1024.0, Some("B".into())),
                ("check.http_80.load1".into(), 0.5, None),
                ("check.http_80._".into(), 2643.0, Some("MB".into())),
            ]
        );
        assert!(s.iter().all(|x| x.kind == Kind::Gauge && validate(x).is_ok()));
        assert_eq!(d, Dropped { undetermined: 1, malformed: 1, ..Default::default() });
    }

    #[test]
    fn perfdata_is_bounded_and_names_are_unique() {
        let mut d = Dropped::default();
        let text: Vec<String> = (0..MAX_PERF_ITEMS + 5).map(|i| format!("m{i}=1")).collect();
        let s = perfdata_samples("c", &text.join(" "), &mut d);
        assert_eq!(s.len(), MAX_PERF_ITEMS);
        assert_eq!(d.over_limit, 5);
        let mut d = Dropped::default();
        let s = perfdata_samples("c", "'a b'=1 a:b=2 a_b=3", &mut d);
        assert_eq!(names(&s), [("check.c.a_b".into(), 1.0, None)]);
        assert_eq!(d.duplicate, 2);
        let mut d = Dropped::default();
        assert!(perfdata_samples("c", "", &mut d).is_empty());
        assert_eq!(d, Dropped::default());
    }

    #[test]
    fn loadavg() {
        assert_eq!(parse_loadavg(b"0.52 0.58 0.59 2/1234 56789\n").unwrap(), [0.52, 0.58, 0.59]);
        assert_eq!(parse_loadavg(b"1.00 2.00 3.00\n").unwrap(), [1.0, 2.0, 3.0]);
        for bad in [&b""[..], b"0.52", b"0.52 0.58", b"0.52 0.58 0.59"] {
            assert!(
                matches!(parse_loadavg(bad), Err(FigureError::Incomplete(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [
            &b"x 1 2\n"[..],
            b"-1 0 0\n",
            b"nan 0 0\n",
            b"inf 0 0\n",
            b"1e300 0 0\n",
            b"\xff 1 2\n",
        ] {
            assert!(
                matches!(parse_loadavg(bad), Err(FigureError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    const MEMINFO: &str = "MemTotal:       16318480 kB\nMemFree:         1234567 kB\n\
                           MemAvailable:    8159240 kB\nBuffers:          123456 kB\n\
                           HugePages_Total:       0\n";

    #[test]
    fn meminfo() {
        let m = parse_meminfo(MEMINFO.as_bytes()).unwrap();
        assert_eq!(m, Memory { total_bytes: 16318480 * 1024, available_bytes: 8159240 * 1024 });
        // Cut anywhere before the MemAvailable line ends: incomplete.
        let cut = MEMINFO.find("Buffers").unwrap();
        for end in 0..cut {
            assert!(
                matches!(
                    parse_meminfo(&MEMINFO.as_bytes()[..end]),
                    Err(FigureError::Incomplete(_))
                ),
                "cut at {end}"
            );
        }
        assert!(matches!(
            parse_meminfo(b"MemTotal: 1 kB\nMemFree: 1 kB\n"),
            Err(FigureError::Incomplete(_))
        ));
        for bad in [
            "MemTotal: x kB\nMemAvailable: 1 kB\n",
            "MemTotal: 1 MB\nMemAvailable: 1 kB\n",
            "MemTotal: 1 kB 2\nMemAvailable: 1 kB\n",
            "MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB\n",
            "MemTotal: 18014398509481984 kB\nMemAvailable: 1 kB\n",
            "MemTotal: 1 kB\nMemAvailable: 2 kB\n",
            "MemTotal: 2 kB\nMemTotal: 2 kB\nMemAvailable: 1 kB\n",
        ] {
            assert!(
                matches!(parse_meminfo(bad.as_bytes()), Err(FigureError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn filesystem_usage() {
        let f = FsUsage::from_statvfs(4096, 1000, 300, 250).unwrap();
        assert_eq!(
            (f.size_bytes, f.free_bytes, f.available_bytes),
            (4_096_000, 1_228_800, 1_024_000)
        );
        assert_eq!(FsUsage::from_statvfs(0, 1, 1, 1), None);
        assert_eq!(FsUsage::from_statvfs(4096, 1, 2, 1), None);
        assert_eq!(FsUsage::from_statvfs(4096, 2, 1, 2), None);
        assert_eq!(FsUsage::from_statvfs(u64::MAX, 2, 1, 1), None);
    }

    #[test]
    fn host_figures_become_gauges() {
        let f = HostFigures {
            load: Some([0.5, 1.0, 1.5]),
            memory: Some(Memory { total_bytes: 100, available_bytes: 40 }),
            root_fs: FsUsage::from_statvfs(1, 10, 5, 4),
        };
        let s = host_samples(&f);
        assert_eq!(
            names(&s),
            [
                ("host.load.1".into(), 0.5, None),
                ("host.load.5".into(), 1.0, None),
                ("host.load.15".into(), 1.5, None),
                ("host.memory.total_bytes".into(), 100.0, None),
                ("host.memory.available_bytes".into(), 40.0, None),
                ("host.fs.root.size_bytes".into(), 10.0, None),
                ("host.fs.root.free_bytes".into(), 5.0, None),
                ("host.fs.root.available_bytes".into(), 4.0, None),
            ]
        );
        assert!(s.iter().all(|x| validate(x).is_ok()));
        assert!(host_samples(&HostFigures::default()).is_empty());
    }

    proptest! {
        /// Any text gives a valid segment; a valid segment is kept as it is; reducing twice
        /// changes nothing.
        #[test]
        fn segment_is_always_valid(text in "\\PC{0,100}|[a-z:/. ]{0,100}") {
            let s = segment(&text);
            prop_assert!(valid_name(&s) && !s.contains('.') && s.len() <= MAX_SEGMENT, "{:?}", s);
            prop_assert_eq!(segment(&s), s.clone());
            let name = ["check", &s, &s].join(".");
            prop_assert!(valid_name(&name), "{:?}", name);
        }

        #[test]
        fn valid_segments_are_kept(text in "[A-Za-z0-9_-]{1,64}") {
            prop_assert_eq!(segment(&text), text);
        }

        #[test]
        fn unit_tags_are_valid(uom in "\\PC{1,60}") {
            if let Some(u) = unit_tag(&uom) {
                prop_assert!(valid_tag("unit", &u), "{:?}", u);
            }
        }

        /// Any perfdata text: valid samples, at most the limit, never a panic.
        #[test]
        fn any_perfdata(check in "\\PC{0,40}", text in "\\PC{0,400}") {
            let mut d = Dropped::default();
            let s = perfdata_samples(&check, &text, &mut d);
            prop_assert!(s.len() <= MAX_PERF_ITEMS);
            for x in &s {
                prop_assert!(validate(x).is_ok(), "{:?}", x);
            }
        }

        /// Any bytes (and every prefix of a real file): a figure or an error, never a panic.
        #[test]
        fn any_proc_text(bytes in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..200) {
            let _ = parse_loadavg(&bytes);
            let _ = parse_meminfo(&bytes);
            let m = MEMINFO.as_bytes();
            let r = parse_meminfo(&m[..cut.min(m.len())]);
            prop_assert!(r.is_err() || cut >= MEMINFO.find("Buffers").unwrap());
            let l = b"0.52 0.58 0.59 2/1234 56789\n";
            if let Ok(v) = parse_loadavg(&l[..cut.min(l.len())]) {
                prop_assert_eq!(v, [0.52, 0.58, 0.59]);
            }
        }

        /// A loadavg line printed from three loads parses back to them.
        #[test]
        fn loadavg_round_trip(a in 0u32..100_000, b in 0u32..100_000, c in 0u32..100_000) {
            let v = [f64::from(a) / 100.0, f64::from(b) / 100.0, f64::from(c) / 100.0];
            let line = format!("{:.2} {:.2} {:.2} 1/100 4242\n", v[0], v[1], v[2]);
            prop_assert_eq!(parse_loadavg(line.as_bytes()).unwrap(), v);
        }
    }
}
