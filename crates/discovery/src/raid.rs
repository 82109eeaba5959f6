//! Linux software RAID (md) arrays from `/proc/mdstat` and `/sys/block/mdN/md/`, and the
//! `raid.degraded` / `raid.recovered` decisions the nanoprobe raises as local events.
//!
//! `/proc/mdstat` names the arrays, their members with flags (`(F)` faulty, `(S)` spare,
//! `(W)` write-mostly, `(R)` replacement, `(J)` journal), the `[n/m] [UU_]` health and a
//! progress line while an array resyncs or rebuilds. Sysfs, where present, is preferred for
//! the same facts (`level`, `array_state`, `degraded`, `raid_disks`, `sync_action`,
//! `dev-*/state`, `dev-*/slot`). The result holds no progress figures or speeds, so it hashes
//! the same while nothing but the rebuild percentage moves: a quiet host sends nothing.
//!
//! Both parsers are pure functions over text with bounds ([`MAX_ARRAYS`], [`MAX_MEMBERS`]):
//! hostile input yields fewer arrays, never a panic. [`raid_events`] compares two results.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_bounded};
pub use crate::host_events::HostEvent;
use crate::host_events::clip;

/// The most arrays one result holds; more are ignored.
pub const MAX_ARRAYS: usize = 1024;
/// The most members one array holds; more are ignored.
pub const MAX_MEMBERS: usize = 256;
/// Longest name (array, member, level, state word) kept; longer ones make the line unparsed.
const MAX_NAME: usize = 64;

/// One member device of an array.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// Kernel device name (`sdb1`, `loop0`).
    pub device: String,
    /// Its role number in the array (`None`: a spare or a failed device without a slot).
    pub slot: Option<u32>,
    /// Sysfs `state` words (`in_sync`, `faulty`, `spare`, `write_mostly`, …), or those
    /// `/proc/mdstat`'s flags imply; sorted.
    pub states: Vec<String>,
}

impl Member {
    /// Marked faulty.
    pub fn faulty(&self) -> bool {
        self.states.iter().any(|s| s == "faulty")
    }
}

/// One md array.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Array {
    /// `md0`, `md127`.
    pub name: String,
    /// `raid1`, `raid5`, … (empty for an inactive array that does not say).
    pub level: String,
    /// Sysfs `array_state` (`clean`, `active`, `inactive`, `broken`, …), else `active` or
    /// `inactive` from `/proc/mdstat`.
    pub state: String,
    /// Devices the array is built for (`n` of `[n/m]`).
    pub raid_disks: Option<u32>,
    /// Devices working (`m` of `[n/m]`).
    pub working_disks: Option<u32>,
    /// Devices missing or failed (sysfs `degraded`, else `n - m`).
    pub missing: u32,
    /// True when a device is missing or a member is faulty.
    pub degraded: bool,
    /// Sysfs `sync_action` (`idle`, `resync`, `recover`, `reshape`, `check`, `repair`), else
    /// the action of `/proc/mdstat`'s progress line, else `idle`.
    pub sync_action: String,
    /// A resync, recovery or reshape is running (or pending): redundancy is being rebuilt.
    pub rebuilding: bool,
    /// Members, sorted by device.
    pub members: Vec<Member>,
    /// Faulty members' devices, sorted.
    pub failed: Vec<String>,
}

/// Result of the `raid` collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raid {
    /// Whether the kernel offers md at all (`/proc/mdstat` exists).
    pub md_available: bool,
    /// Arrays sorted by name.
    pub arrays: Vec<Array>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Parses one member token of an mdstat array line: `sdb1[1](F)`.
fn parse_member(tok: &str) -> Option<Member> {
    let open = tok.find('[')?;
    let close = open + tok[open..].find(']')?;
    let device = &tok[..open];
    let index: u32 = tok[open + 1..close].parse().ok()?;
    if !is_name(device) {
        return None;
    }
    let mut states = BTreeSet::new();
    let mut rest = &tok[close + 1..];
    while let Some(r) = rest.strip_prefix('(') {
        let end = r.find(')')?;
        match &r[..end] {
            "F" => states.insert("faulty"),
            "S" => states.insert("spare"),
            "W" => states.insert("write_mostly"),
            "R" => states.insert("replacement"),
            "J" => states.insert("journal"),
            _ => return None,
        };
        rest = &r[end + 1..];
    }
    if !rest.is_empty() {
        return None;
    }
    let spare = states.contains("spare") || states.contains("faulty");
    if !spare {
        states.insert("in_sync");
    }
    Some(Member {
        device: device.to_string(),
        slot: (!spare).then_some(index),
        states: states.into_iter().map(str::to_string).collect(),
    })
}

/// Parses `[n/m]` anywhere in a status line.
fn parse_counts(line: &str) -> Option<(u32, u32)> {
    line.split_whitespace().find_map(|w| {
        let inner = w.strip_prefix('[')?.strip_suffix(']')?;
        let (n, m) = inner.split_once('/')?;
        Some((n.parse().ok()?, m.parse().ok()?))
    })
}

/// The action of a progress line (`recovery = 8.5% …`, `resync=DELAYED`, `check = …`).
fn parse_progress(line: &str) -> Option<&'static str> {
    let word = line.trim_start_matches(|c: char| c.is_whitespace() || "[=>.]".contains(c));
    let action = word.split(|c: char| c == '=' || c.is_whitespace()).next()?;
    Some(match action {
        "recovery" => "recover",
        "resync" => "resync",
        "reshape" => "reshape",
        "check" => "check",
        "repair" => "repair",
        _ => return None,
    })
}

/// Parses `/proc/mdstat`. Arrays whose first line does not parse are left out; at most
/// [`MAX_ARRAYS`] arrays and [`MAX_MEMBERS`] members each are kept. Pure, never panics.
pub fn parse_mdstat(text: &str) -> Vec<Array> {
    let mut arrays: Vec<Array> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            current = None;
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            current = None;
            let Some((name, rest)) = line.split_once(" : ") else { continue };
            let name = name.trim();
            if !name.starts_with("md") || !is_name(name) || arrays.len() >= MAX_ARRAYS {
                continue;
            }
            let mut words = rest.split_whitespace().peekable();
            let state = match words.next() {
                Some(s @ ("active" | "inactive")) => s.to_string(),
                _ => continue,
            };
            // `(read-only)` / `(auto-read-only)` may follow the state.
            while words.peek().is_some_and(|w| w.starts_with('(')) {
                words.next();
            }
            let mut level = String::new();
            if words.peek().is_some_and(|w| !w.contains('[') && is_name(w)) {
                level = words.next().unwrap_or_default().to_string();
            }
            let mut members = Vec::new();
            let mut ok = true;
            for w in words {
                match parse_member(w) {
                    Some(m) if members.len() < MAX_MEMBERS => members.push(m),
                    Some(_) => {}
                    None => ok = false,
                }
            }
            if !ok {
                continue;
            }
            members.sort();
            arrays.push(Array {
                name: name.to_string(),
                level,
                state,
                sync_action: "idle".into(),
                members,
                ..Array::default()
            });
            current = Some(arrays.len() - 1);
            continue;
        }
        let Some(a) = current.map(|i| &mut arrays[i]) else { continue };
        if let Some((n, m)) = parse_counts(line) {
            a.raid_disks = Some(n);
            a.working_disks = Some(m);
        }
        if let Some(action) = parse_progress(line) {
            a.sync_action = action.to_string();
        }
    }
    for a in &mut arrays {
        finish(a);
    }
    arrays.sort_by(|x, y| x.name.cmp(&y.name));
    arrays.dedup_by(|x, y| x.name == y.name);
    arrays
}

/// Derives `missing`, `degraded`, `rebuilding` and `failed` from the other fields.
fn finish(a: &mut Array) {
    if let (Some(n), Some(m)) = (a.raid_disks, a.working_disks) {
        a.missing = a.missing.max(n.saturating_sub(m));
    }
    a.failed = a.members.iter().filter(|m| m.faulty()).map(|m| m.device.clone()).collect();
    a.failed.sort();
    a.degraded = a.missing > 0 || !a.failed.is_empty();
    a.rebuilding = matches!(a.sync_action.as_str(), "resync" | "recover" | "reshape");
}

/// What one array's sysfs directory (`/sys/block/mdN/md`) says; `None` for absent files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SysfsArray {
    pub level: Option<String>,
    pub array_state: Option<String>,
    pub degraded: Option<u32>,
    pub raid_disks: Option<u32>,
    pub sync_action: Option<String>,
    /// Member device → (`state` words, `slot`).
    pub members: BTreeMap<String, (Vec<String>, Option<u32>)>,
}

/// One sysfs word (first line, trimmed), if it is a plausible name.
pub fn parse_sys_word(text: &str) -> Option<String> {
    let w = text.lines().next()?.trim();
    is_name(w).then(|| w.to_string())
}

/// A member's sysfs `state`: comma-separated words, sorted; bad words dropped.
pub fn parse_member_state(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|w| is_name(w))
        .take(16)
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Overlays sysfs facts on an array parsed from `/proc/mdstat`.
pub fn apply_sysfs(a: &mut Array, s: &SysfsArray) {
    if let Some(l) = &s.level {
        a.level = l.clone();
    }
    if let Some(st) = &s.array_state {
        a.state = st.clone();
    }
    if let Some(n) = s.raid_disks {
        a.raid_disks = Some(n);
    }
    if let Some(d) = s.degraded {
        a.missing = d;
        if let Some(n) = a.raid_disks {
            a.working_disks = Some(n.saturating_sub(d));
        }
    }
    if let Some(act) = &s.sync_action {
        a.sync_action = act.clone();
    }
    for m in &mut a.members {
        if let Some((states, slot)) = s.members.get(&m.device) {
            if !states.is_empty() {
                m.states = states.clone();
            }
            m.slot = *slot;
        }
    }
    finish(a);
}

fn read_word(path: &Path) -> Option<String> {
    read_bounded(path).and_then(|t| parse_sys_word(&t))
}

fn read_u32(path: &Path) -> Option<u32> {
    read_word(path)?.parse().ok()
}

/// Reads an array's sysfs directory (`root/sys/block/NAME/md`).
pub fn read_sysfs_array(root: &Path, name: &str) -> SysfsArray {
    let dir = root.join("sys/block").join(name).join("md");
    let mut s = SysfsArray {
        level: read_word(&dir.join("level")),
        array_state: read_word(&dir.join("array_state")),
        degraded: read_u32(&dir.join("degraded")),
        raid_disks: read_u32(&dir.join("raid_disks")),
        sync_action: read_word(&dir.join("sync_action")),
        members: BTreeMap::new(),
    };
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten().take(MAX_MEMBERS * 2) {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(dev) = file.strip_prefix("dev-") else { continue };
            if !is_name(dev) {
                continue;
            }
            let states = read_bounded(e.path().join("state"))
                .map(|t| parse_member_state(&t))
                .unwrap_or_default();
            let slot = read_u32(&e.path().join("slot"));
            s.members.insert(dev.to_string(), (states, slot));
        }
    }
    s
}

/// Reads the arrays under `root` (`/` on a host; a fake root in tests).
pub fn collect_raid_in(root: &Path) -> Result<Raid, DiscoveryError> {
    let Some(text) = read_bounded(root.join("proc/mdstat")) else {
        // No md in this kernel: nothing to report, not an error.
        return Ok(Raid { md_available: false, arrays: Vec::new() });
    };
    let mut arrays = parse_mdstat(&text);
    for a in &mut arrays {
        let s = read_sysfs_array(root, &a.name);
        apply_sysfs(a, &s);
    }
    Ok(Raid { md_available: true, arrays })
}

/// The `raid.degraded` event type.
pub const RAID_DEGRADED: &str = "raid.degraded";
/// The `raid.recovered` event type.
pub const RAID_RECOVERED: &str = "raid.recovered";

/// The events between two results of the `raid` collector (`prev`: `None` for the first
/// result since the nanoprobe started, taken as "every array healthy", so an array already
/// degraded at start is reported once).
///
/// - healthy → degraded: one `raid.degraded` (critical), naming failed members;
/// - degraded → degraded with a member newly faulty: one more `raid.degraded`;
/// - degraded → healthy: one `raid.recovered` (notice).
///
/// A rebuild starting or progressing raises nothing; an array that disappears (stopped)
/// raises nothing.
pub fn raid_events(prev: Option<&Raid>, cur: &Raid) -> Vec<HostEvent> {
    let before: BTreeMap<&str, &Array> =
        prev.map(|p| p.arrays.iter().map(|a| (a.name.as_str(), a)).collect()).unwrap_or_default();
    let mut out = Vec::new();
    for a in &cur.arrays {
        let old = before.get(a.name.as_str());
        let was_degraded = old.is_some_and(|o| o.degraded);
        let newly_failed: Vec<&String> =
            a.failed.iter().filter(|d| !old.is_some_and(|o| o.failed.contains(d))).collect();
        let mut tags = BTreeMap::new();
        tags.insert("array".to_string(), a.name.clone());
        if !a.level.is_empty() {
            tags.insert("level".to_string(), a.level.clone());
        }
        let working = match (a.working_disks, a.raid_disks) {
            (Some(m), Some(n)) => format!("{m} of {n} devices working"),
            _ => format!("{} device(s) missing", a.missing),
        };
        if a.degraded && (!was_degraded || !newly_failed.is_empty()) {
            let failed = if a.failed.is_empty() {
                String::new()
            } else {
                tags.insert("failed".to_string(), clip(a.failed.join(","), 256));
                format!("; failed: {}", a.failed.join(", "))
            };
            let level = if a.level.is_empty() { String::new() } else { format!(" ({})", a.level) };
            out.push(HostEvent {
                event_type: RAID_DEGRADED.into(),
                severity: "critical".into(),
                text: clip(
                    format!("RAID STATUS CHANGE: {}{level} is degraded: {working}{failed}", a.name),
                    4096,
                ),
                tags,
            });
        } else if !a.degraded && was_degraded {
            let level = if a.level.is_empty() { String::new() } else { format!(" ({})", a.level) };
            out.push(HostEvent {
                event_type: RAID_RECOVERED.into(),
                severity: "notice".into(),
                text: clip(
                    format!("RAID STATUS CHANGE: {}{level} has recovered: {working}", a.name),
                    4096,
                ),
                tags,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEGRADED: &str = "Personalities : [raid1] [raid6] [raid5] [raid4]
md1 : active raid5 sdd1[3] sdc1[1] sdb1[0]
      1953260544 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/2] [UU_]
      [=>...................]  recovery =  8.5% (83203840/976630272) finish=73.4min speed=202752K/sec
      bitmap: 0/8 pages [0KB], 65536KB chunk

md0 : active raid1 loop1[1](F) loop0[0]
      20416 blocks super 1.2 [2/1] [U_]

md2 : inactive sde1[0](S)
      976630464 blocks super 1.2

unused devices: <none>
";

    #[test]
    fn mdstat_degraded_rebuilding_and_inactive() {
        let a = parse_mdstat(DEGRADED);
        assert_eq!(a.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["md0", "md1", "md2"]);
        let md0 = &a[0];
        assert_eq!((md0.level.as_str(), md0.state.as_str()), ("raid1", "active"));
        assert_eq!((md0.raid_disks, md0.working_disks, md0.missing), (Some(2), Some(1), 1));
        assert!(md0.degraded && !md0.rebuilding);
        assert_eq!(md0.failed, ["loop1"]);
        assert_eq!(md0.members[1].states, ["faulty"]);
        assert_eq!(md0.members[1].slot, None);
        assert_eq!(md0.members[0].slot, Some(0));
        let md1 = &a[1];
        assert_eq!(md1.sync_action, "recover");
        assert!(md1.degraded && md1.rebuilding && md1.failed.is_empty());
        let md2 = &a[2];
        assert_eq!((md2.state.as_str(), md2.level.as_str()), ("inactive", ""));
        assert_eq!(md2.members[0].states, ["spare"]);
        assert!(!md2.degraded);
    }

    #[test]
    fn sysfs_overrides_mdstat() {
        let mut a = parse_mdstat("md0 : active raid1 loop1[1] loop0[0]\n  1 blocks [2/2] [UU]\n");
        assert!(!a[0].degraded);
        let mut s = SysfsArray {
            array_state: Some("clean".into()),
            degraded: Some(1),
            sync_action: Some("recover".into()),
            ..SysfsArray::default()
        };
        s.members.insert("loop1".into(), (vec!["faulty".into()], None));
        apply_sysfs(&mut a[0], &s);
        assert_eq!(a[0].state, "clean");
        assert_eq!(a[0].working_disks, Some(1));
        assert!(a[0].degraded && a[0].rebuilding);
        assert_eq!(a[0].failed, ["loop1"]);
        assert_eq!(parse_member_state("faulty,in_sync\n"), ["faulty", "in_sync"]);
        assert_eq!(parse_member_state("\u{0}bad word,spare"), ["spare"]);
    }

    fn raid(text: &str) -> Raid {
        Raid { md_available: true, arrays: parse_mdstat(text) }
    }

    #[test]
    fn events_on_transitions_only() {
        let ok = raid("md0 : active raid1 loop1[1] loop0[0]\n  1 blocks [2/2] [UU]\n");
        let failed = raid("md0 : active raid1 loop1[1](F) loop0[0]\n  1 blocks [2/1] [U_]\n");
        let removed = raid("md0 : active raid1 loop0[0]\n  1 blocks [2/1] [U_]\n");
        let rebuilding = raid(
            "md0 : active raid1 loop1[2] loop0[0]\n  1 blocks [2/1] [U_]\n  [==>..]  recovery = 12.6% (1/8) finish=0.1min speed=1K/sec\n",
        );
        assert!(raid_events(None, &ok).is_empty());
        assert!(raid_events(Some(&ok), &ok).is_empty());
        let e = raid_events(Some(&ok), &failed);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event_type, RAID_DEGRADED);
        assert_eq!(e[0].severity, "critical");
        assert_eq!(e[0].tags["failed"], "loop1");
        assert!(
            e[0].text.contains("md0 (raid1) is degraded: 1 of 2 devices working; failed: loop1")
        );
        assert!(raid_events(Some(&failed), &removed).is_empty(), "removing the failed member");
        assert!(raid_events(Some(&removed), &rebuilding).is_empty(), "a rebuild starting");
        let e = raid_events(Some(&rebuilding), &ok);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event_type, RAID_RECOVERED);
        // Degraded already when the nanoprobe starts: reported once.
        assert_eq!(raid_events(None, &failed).len(), 1);
        // A second member failing while degraded.
        let two = raid("md0 : active raid5 a[0](F) b[1](F) c[2]\n  1 blocks [3/1] [__U]\n");
        let one = raid("md0 : active raid5 a[0](F) b[1] c[2]\n  1 blocks [3/2] [_UU]\n");
        assert_eq!(raid_events(Some(&one), &two).len(), 1);
        assert!(raid_events(Some(&two), &two).is_empty());
    }

    #[test]
    fn hostile_lines_are_skipped() {
        let a = parse_mdstat(
            "md0 : active raid1 loop0[x]\nmd1 : weird raid1\nmd2 : active raid1 a[0](Q)\nmd3 : active raid1 ../../x[0]\n",
        );
        assert!(a.is_empty(), "{a:?}");
        let many: String = (0..2000).map(|i| format!("md{i} : active raid1 a[0]\n")).collect();
        assert_eq!(parse_mdstat(&many).len(), MAX_ARRAYS);
    }

    proptest::proptest! {
        /// Arbitrary mdstat-shaped input: the result keeps its invariants.
        #[test]
        fn mdstat_invariants(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "md[0-9]{1,3} : (active|inactive|odd)( raid[0-9])?( [a-z]{1,4}\\[[0-9x]{1,2}\\](\\([FSWRJQ]\\))?){0,5}",
                    "  [0-9]{1,9} blocks( super 1.2)? \\[[0-9]{1,2}/[0-9]{1,2}\\] \\[[U_]{0,4}\\]",
                    "  \\[[=>.]{0,20}\\]  (recovery|resync|reshape|check|bogus) = [0-9.]{1,5}%",
                    "",
                    "\\PC{0,40}",
                ],
                0..24,
            )
        ) {
            let text = lines.join("\n");
            let arrays = parse_mdstat(&text);
            let mut names: Vec<&str> = arrays.iter().map(|a| a.name.as_str()).collect();
            let n = names.len();
            names.dedup();
            proptest::prop_assert_eq!(names.len(), n, "names unique and sorted");
            for a in &arrays {
                proptest::prop_assert_eq!(a.degraded, a.missing > 0 || !a.failed.is_empty());
                proptest::prop_assert!(a.members.len() <= MAX_MEMBERS);
                proptest::prop_assert!(a.failed.iter().all(|f| a.members.iter().any(|m| &m.device == f)));
            }
            let r = Raid { md_available: true, arrays };
            // Events are only ever about present arrays and at most one per array.
            let events = raid_events(None, &r);
            proptest::prop_assert!(events.len() <= r.arrays.len());
            proptest::prop_assert!(raid_events(Some(&r), &r).is_empty());
        }
    }
}
