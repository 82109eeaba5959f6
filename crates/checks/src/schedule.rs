//! The check scheduler and state machine (sans-IO): when each check runs, SOFT/HARD states,
//! flapping, and which results are worth telling the CMA.
//!
//! Time comes in as `now`; randomness (the initial spreading) from a seed. The driver asks
//! [`Scheduler::due`] for the checks to start, runs them however it likes, and feeds each result
//! to [`Scheduler::handle_result`], which returns a [`Report`] only when the CMA must hear it.
//!
//! # States, as Nagios operators know them
//! - A new check is PENDING until its first result. A first OK is HARD OK at once; a first
//!   problem goes through the SOFT attempts like any other. The first HARD state is reported
//!   (`initial`), so the CMA knows it; the CMA raises no event for an initial OK.
//! - HARD OK + a problem → SOFT, attempt 1, re-checked every `retry_interval`; after
//!   `max_attempts` consecutive problems it becomes HARD (reported). Back to OK while SOFT is a
//!   soft recovery: HARD OK stays, nothing reported.
//! - HARD problem + OK → HARD OK at once (a recovery, reported). HARD problem + a different
//!   problem (CRITICAL → WARNING) → HARD at once (reported).
//! - Only HARD changes are reported.
//!
//! # Flapping
//! The last [`FLAP_WINDOW`] results are kept. The state-change percentage weighs each of the 20
//! possible transitions linearly from 0.8 (oldest) to 1.2 (newest), as Nagios does. At
//! [`FLAP_HIGH`] % or more the check starts flapping: one report (`flapping: true`) and, while it
//! flaps, no HARD change is reported. Below [`FLAP_LOW`] % it stops: one report with the HARD
//! state it has then.
//!
//! # No drift
//! A check's next run is its previous *scheduled* time plus the interval (or retry interval),
//! never the completion time plus the interval, so late results do not shift the phase. A run
//! that overran whole intervals skips the missed slots. New checks start at a random offset
//! within their first interval, so 500 checks do not fire at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use assim_wire::msg::CheckState;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::result::CheckResult;
use crate::spec::Check;

/// Results kept for flap detection.
pub const FLAP_WINDOW: usize = 21;
/// A check starts flapping at this state-change percentage or more.
pub const FLAP_HIGH: f64 = 30.0;
/// A flapping check stops flapping below this percentage.
pub const FLAP_LOW: f64 = 20.0;

/// HARD or SOFT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateType {
    Soft,
    Hard,
}

/// What the CMA must hear about a check.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub check: String,
    /// The HARD state.
    pub state: CheckState,
    pub output: String,
    pub perfdata: String,
    /// The check is flapping (true when it starts; false in the report when it stops).
    pub flapping: bool,
    /// The check's first HARD state since it was configured (or the nanoprobe started).
    pub initial: bool,
}

/// A check's state as the scheduler keeps it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub check: Check,
    /// The scheduled time of the next run (the slot, not when it actually starts).
    pub next: Instant,
    pub running: bool,
    /// `None` while pending (no HARD state yet).
    pub hard: Option<CheckState>,
    /// The latest result's state.
    pub current: Option<CheckState>,
    pub state_type: StateType,
    /// Consecutive problem results while SOFT (1-based).
    pub attempt: u32,
    pub flapping: bool,
    history: VecDeque<CheckState>,
    pub last_output: String,
    /// Runs completed.
    pub runs: u64,
}

impl Entry {
    /// The state-change percentage over the kept results (0–100).
    pub fn flap_percent(&self) -> f64 {
        flap_percent(&self.history)
    }
}

/// Weighted state-change percentage: each of the 20 transitions in a 21-result window weighs
/// 0.8 (oldest) … 1.2 (newest); the sum of the weights of actual changes over 20, in percent.
pub fn flap_percent(history: &VecDeque<CheckState>) -> f64 {
    let n = FLAP_WINDOW - 1;
    let offset = n.saturating_sub(history.len().saturating_sub(1));
    let mut sum = 0.0;
    for (i, (a, b)) in history.iter().zip(history.iter().skip(1)).enumerate() {
        if a != b {
            let k = (i + offset) as f64;
            sum += 0.8 + 0.4 * k / (n as f64 - 1.0);
        }
    }
    sum / n as f64 * 100.0
}

/// What applying a check set did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied: how many checks were added, kept (with their state), and removed.
    Applied { added: usize, kept: usize, removed: usize },
    /// The epoch is not newer than the current one; nothing changed.
    Stale { current: u64 },
}

/// The scheduler for one host's checks.
#[derive(Debug)]
pub struct Scheduler {
    epoch: u64,
    entries: BTreeMap<String, Entry>,
    /// (next, name) of every entry that is not running.
    queue: BTreeSet<(Instant, String)>,
    rng: ChaCha8Rng,
}

impl Scheduler {
    /// An empty scheduler; `seed` drives the initial spreading.
    pub fn new(seed: u64) -> Scheduler {
        Scheduler {
            epoch: 0,
            entries: BTreeMap::new(),
            queue: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The epoch of the applied check set (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Applies a whole check set if `epoch` is newer. Checks whose command is unchanged keep
    /// their state and phase (only new timing applies from their next run); new or changed
    /// checks start PENDING at a random offset within their first interval.
    pub fn apply(&mut self, epoch: u64, checks: Vec<Check>, now: Instant) -> ApplyOutcome {
        if epoch <= self.epoch {
            return ApplyOutcome::Stale { current: self.epoch };
        }
        self.epoch = epoch;
        let mut old = std::mem::take(&mut self.entries);
        self.queue.clear();
        let (mut added, mut kept) = (0, 0);
        for check in checks {
            let entry = match old.remove(&check.name) {
                Some(mut e) if e.check.same_command(&check) => {
                    kept += 1;
                    // A shorter interval must not wait out the old, longer one.
                    e.next = e.next.min(now + check.interval);
                    e.check = check;
                    e
                }
                _ => {
                    added += 1;
                    let spread = check.interval.as_micros().max(1) as u64;
                    let offset = Duration::from_micros(self.rng.gen_range(0..spread));
                    Entry {
                        next: now + offset,
                        check,
                        running: false,
                        hard: None,
                        current: None,
                        state_type: StateType::Hard,
                        attempt: 0,
                        flapping: false,
                        history: VecDeque::with_capacity(FLAP_WINDOW),
                        last_output: String::new(),
                        runs: 0,
                    }
                }
            };
            if !entry.running {
                self.queue.insert((entry.next, entry.check.name.clone()));
            }
            self.entries.insert(entry.check.name.clone(), entry);
        }
        ApplyOutcome::Applied { added, kept, removed: old.len() }
    }

    /// The earliest time a check is due (none while every check is running or there are none).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// The checks due at `now`, marked running; each must later get [`Scheduler::handle_result`]
    /// (or [`Scheduler::handle_failure`]).
    pub fn due(&mut self, now: Instant) -> Vec<Check> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.queue.first() {
            if *t > now {
                break;
            }
            let (_, name) = self.queue.pop_first().expect("non-empty");
            if let Some(e) = self.entries.get_mut(&name) {
                e.running = true;
                out.push(e.check.clone());
            }
        }
        out
    }

    /// A result for a check started by [`Scheduler::due`]. Returns what the CMA must hear, if
    /// anything. Results for checks no longer in the set are ignored.
    pub fn handle_result(&mut self, name: &str, r: &CheckResult, now: Instant) -> Option<Report> {
        let e = self.entries.get_mut(name)?;
        if !e.running {
            return None;
        }
        e.running = false;
        e.runs += 1;
        e.current = Some(r.state);
        e.last_output = r.output.clone();
        if e.history.len() == FLAP_WINDOW {
            e.history.pop_front();
        }
        e.history.push_back(r.state);

        // SOFT/HARD.
        let before = e.hard;
        let ok = r.state == CheckState::Ok;
        match (e.hard, e.state_type) {
            (None, _) if ok => e.hard = Some(CheckState::Ok),
            (Some(h), StateType::Hard) if h == r.state => {}
            (Some(h), StateType::Hard) if ok || h != CheckState::Ok => {
                // Recovery, or one problem to another: HARD at once.
                e.hard = Some(r.state);
            }
            (_, StateType::Soft) if ok => {
                // Soft recovery: the HARD state (OK, or pending) is unchanged.
                e.state_type = StateType::Hard;
                e.attempt = 0;
                if e.hard.is_none() {
                    e.hard = Some(CheckState::Ok);
                }
            }
            _ => {
                // A problem while HARD OK/pending, or another one while SOFT.
                e.attempt = if e.state_type == StateType::Soft { e.attempt + 1 } else { 1 };
                if e.attempt >= e.check.max_attempts {
                    e.state_type = StateType::Hard;
                    e.attempt = 0;
                    e.hard = Some(r.state);
                } else {
                    e.state_type = StateType::Soft;
                }
            }
        }
        let hard_changed = e.hard != before;

        // Next run: previous slot + interval, skipping slots already past.
        let step =
            if e.state_type == StateType::Soft { e.check.retry_interval } else { e.check.interval };
        let step = step.max(Duration::from_millis(1));
        let mut next = e.next + step;
        if next <= now {
            let behind = now.duration_since(next).as_micros() / step.as_micros();
            next += step * (behind as u32 + 1);
        }
        e.next = next;
        self.queue.insert((e.next, name.to_owned()));

        // Flapping.
        let pct = flap_percent(&e.history);
        let report = |e: &Entry, flapping: bool, initial: bool| Report {
            check: e.check.name.clone(),
            state: e.hard.unwrap_or(CheckState::Unknown),
            output: r.output.clone(),
            perfdata: r.perfdata.clone(),
            flapping,
            initial,
        };
        if !e.flapping && pct >= FLAP_HIGH {
            e.flapping = true;
            return Some(report(e, true, false));
        }
        if e.flapping {
            if pct < FLAP_LOW {
                e.flapping = false;
                return Some(report(e, false, false));
            }
            return None;
        }
        hard_changed.then(|| report(e, false, before.is_none()))
    }

    /// A started check could not produce a result at all (its task died): treat as UNKNOWN.
    pub fn handle_failure(&mut self, name: &str, why: &str, now: Instant) -> Option<Report> {
        let r = CheckResult {
            state: CheckState::Unknown,
            output: why.to_owned(),
            long_output: String::new(),
            perfdata: String::new(),
            duration: Duration::ZERO,
            exit_code: None,
            truncated: false,
            timed_out: false,
        };
        self.handle_result(name, &r, now)
    }

    /// A check by name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Every check, by name.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Kind;

    fn check(name: &str, interval: u64, retry: u64, attempts: u32) -> Check {
        Check {
            name: name.into(),
            kind: Kind::Tcp { host: "127.0.0.1".into(), port: 1 },
            interval: Duration::from_secs(interval),
            retry_interval: Duration::from_secs(retry),
            max_attempts: attempts,
            timeout: Duration::from_secs(1),
        }
    }

    fn result(state: CheckState) -> CheckResult {
        CheckResult {
            state,
            output: format!("{state:?}"),
            long_output: String::new(),
            perfdata: String::new(),
            duration: Duration::ZERO,
            exit_code: None,
            truncated: false,
            timed_out: false,
        }
    }

    /// Runs the scheduler in virtual time: every due check gets the state `world(name, t)`
    /// instantly. Returns the reports with their times. Bounded step count catches livelock.
    fn simulate(
        s: &mut Scheduler,
        start: Instant,
        until: Duration,
        mut world: impl FnMut(&str, Duration) -> CheckState,
        mut on_run: impl FnMut(&str, Instant),
    ) -> Vec<(Duration, Report)> {
        let mut reports = Vec::new();
        let mut steps = 0u64;
        while let Some(t) = s.poll_timeout() {
            if t > start + until {
                break;
            }
            steps += 1;
            assert!(steps < 10_000_000, "livelock");
            for c in s.due(t) {
                on_run(&c.name, t);
                let st = world(&c.name, t - start);
                if let Some(r) = s.handle_result(&c.name, &result(st), t) {
                    reports.push((t - start, r));
                }
            }
        }
        reports
    }

    #[test]
    fn soft_then_hard_then_immediate_recovery() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(1);
        s.apply(1, vec![check("web", 60, 10, 3)], t0);
        // Up for 10 minutes, down from 10 to 20 minutes, then up.
        let reports = simulate(
            &mut s,
            t0,
            Duration::from_secs(3600),
            |_, t| {
                if (600..1200).contains(&t.as_secs()) {
                    CheckState::Critical
                } else {
                    CheckState::Ok
                }
            },
            |_, _| {},
        );
        let kinds: Vec<(CheckState, bool)> =
            reports.iter().map(|(_, r)| (r.state, r.initial)).collect();
        assert_eq!(
            kinds,
            [(CheckState::Ok, true), (CheckState::Critical, false), (CheckState::Ok, false)],
            "{reports:?}"
        );
        // HARD after the third attempt: first failing run + 2 retries of 10 s.
        let first_fail = reports[1].0.as_secs();
        assert!((620..=680).contains(&first_fail), "HARD CRITICAL at {first_fail}s");
        let recovered = reports[2].0.as_secs();
        assert!((1200..1260).contains(&recovered), "recovery at {recovered}s");
    }

    #[test]
    fn a_short_blip_stays_soft_and_is_never_reported() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(2);
        s.apply(1, vec![check("db", 60, 10, 3)], t0);
        let mut first_fail = None;
        let reports = simulate(
            &mut s,
            t0,
            Duration::from_secs(3600),
            |_, t| {
                // One failing result at ~600 s, then OK again by the first retry.
                if first_fail.is_none() && t.as_secs() >= 600 {
                    first_fail = Some(t);
                    CheckState::Critical
                } else {
                    CheckState::Ok
                }
            },
            |_, _| {},
        );
        assert_eq!(reports.len(), 1, "only the initial OK: {reports:?}");
        assert_eq!(s.get("db").unwrap().hard, Some(CheckState::Ok));
    }

    #[test]
    fn hard_problem_to_other_problem_is_immediate_and_max_attempts_one_is_immediate() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(3);
        s.apply(1, vec![check("x", 10, 5, 1)], t0);
        let t = s.poll_timeout().unwrap();
        s.due(t);
        let r = s.handle_result("x", &result(CheckState::Critical), t).unwrap();
        assert_eq!((r.state, r.initial), (CheckState::Critical, true));
        let t = s.poll_timeout().unwrap();
        s.due(t);
        let r = s.handle_result("x", &result(CheckState::Warning), t).unwrap();
        assert_eq!(r.state, CheckState::Warning);
        let t = s.poll_timeout().unwrap();
        s.due(t);
        assert_eq!(s.handle_result("x", &result(CheckState::Warning), t), None);
    }

    #[test]
    fn flapping_is_reported_once_when_it_starts_and_once_when_it_stops() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(4);
        s.apply(1, vec![check("f", 10, 10, 1)], t0);
        let mut n = 0u64;
        // OK for 20 runs, then alternating for 40 runs, then OK.
        let reports = simulate(
            &mut s,
            t0,
            Duration::from_secs(10 * 120),
            |_, _| {
                n += 1;
                if (21..=60).contains(&n) && n.is_multiple_of(2) {
                    CheckState::Critical
                } else {
                    CheckState::Ok
                }
            },
            |_, _| {},
        );
        let flaps: Vec<bool> = reports.iter().map(|(_, r)| r.flapping).collect();
        // initial OK, one or more HARD changes before the threshold, flapping start, stop.
        let starts = flaps.iter().filter(|f| **f).count();
        assert_eq!(starts, 1, "{reports:?}");
        let start_at = flaps.iter().position(|f| *f).unwrap();
        assert!(start_at <= 6, "flapping detected late: {reports:?}");
        let after: Vec<_> = reports[start_at + 1..].iter().map(|(_, r)| r).collect();
        assert_eq!(after.len(), 1, "one report when it stops, nothing in between: {after:?}");
        assert!(!after[0].flapping);
        assert_eq!(after[0].state, CheckState::Ok);
        assert!(reports.len() < 10, "a storm: {} reports", reports.len());
    }

    #[test]
    fn flap_percent_weights() {
        let steady: VecDeque<_> = std::iter::repeat_n(CheckState::Ok, 21).collect();
        assert_eq!(flap_percent(&steady), 0.0);
        let alternating: VecDeque<_> = (0..21)
            .map(|i| if i % 2 == 0 { CheckState::Ok } else { CheckState::Critical })
            .collect();
        assert!((flap_percent(&alternating) - 100.0).abs() < 1e-9);
        let mut newest_change = steady.clone();
        *newest_change.back_mut().unwrap() = CheckState::Critical;
        let mut oldest_change = steady.clone();
        *oldest_change.front_mut().unwrap() = CheckState::Critical;
        assert!(flap_percent(&newest_change) > flap_percent(&oldest_change));
        assert!((flap_percent(&newest_change) - 6.0).abs() < 1e-9);
        assert!((flap_percent(&oldest_change) - 4.0).abs() < 1e-9);
    }

    #[test]
    fn newer_epochs_win_and_unchanged_checks_keep_their_state() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(5);
        s.apply(5, vec![check("a", 60, 10, 1), check("b", 60, 10, 1)], t0);
        assert_eq!(s.apply(4, vec![], t0), ApplyOutcome::Stale { current: 5 });
        assert_eq!(s.len(), 2);
        let t = t0 + Duration::from_secs(61);
        for c in s.due(t) {
            s.handle_result(&c.name, &result(CheckState::Critical), t);
        }
        assert_eq!(s.get("a").unwrap().hard, Some(CheckState::Critical));
        let mut b2 = check("b", 30, 10, 1);
        b2.kind = Kind::Process { pattern: "x".into() };
        let out = s.apply(6, vec![check("a", 30, 10, 1), b2, check("c", 60, 10, 1)], t);
        assert_eq!(out, ApplyOutcome::Applied { added: 2, kept: 1, removed: 0 });
        assert_eq!(s.get("a").unwrap().hard, Some(CheckState::Critical));
        assert_eq!(s.get("a").unwrap().check.interval, Duration::from_secs(30));
        assert_eq!(s.get("b").unwrap().hard, None, "changed command starts pending");
        let out = s.apply(7, vec![check("c", 60, 10, 1)], t);
        assert_eq!(out, ApplyOutcome::Applied { added: 0, kept: 1, removed: 2 });
        assert!(s.due(t + Duration::from_secs(3600)).iter().all(|c| c.name == "c"));
    }

    #[test]
    fn late_results_skip_missed_slots_but_keep_the_phase() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(6);
        s.apply(1, vec![check("slow", 10, 10, 3)], t0);
        let first = s.poll_timeout().unwrap();
        s.due(first);
        // The run took 25 s.
        s.handle_result("slow", &result(CheckState::Ok), first + Duration::from_secs(25));
        assert_eq!(s.poll_timeout().unwrap(), first + Duration::from_secs(30));
        // Nothing is due while it runs.
        let t = s.poll_timeout().unwrap();
        assert_eq!(s.due(t).len(), 1);
        assert_eq!(s.poll_timeout(), None);
        assert!(s.due(t + Duration::from_secs(100)).is_empty());
    }

    /// 500 checks over a simulated day: every run happens exactly at start offset + k×interval
    /// (zero drift), the first runs are spread over the first interval, and nothing is reported
    /// after the initial states because nothing changed.
    #[test]
    fn five_hundred_checks_for_a_day_without_drift() {
        let seed = 500;
        println!("seed {seed}");
        let t0 = Instant::now();
        let mut s = Scheduler::new(seed);
        let checks: Vec<Check> =
            (0..500).map(|i| check(&format!("c{i}"), [10, 30, 60, 300][i % 4], 10, 3)).collect();
        s.apply(1, checks, t0);
        let first: BTreeMap<String, Instant> =
            s.entries().map(|e| (e.check.name.clone(), e.next)).collect();
        // Spread: every first run within the check's first interval, and no second holds more
        // than 8% of the checks (125 of them run every 10 s, so ~20 per second is expected).
        let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
        for (name, t) in &first {
            assert!(t.duration_since(t0) < s_interval(name));
            *per_second.entry(t.duration_since(t0).as_secs()).or_default() += 1;
        }
        assert!(per_second.values().all(|n| *n <= 40), "{per_second:?}");
        let mut runs: BTreeMap<String, u64> = BTreeMap::new();
        let mut max_drift = Duration::ZERO;
        let day = Duration::from_secs(86_400);
        let reports = simulate(
            &mut s,
            t0,
            day,
            |_, _| CheckState::Ok,
            |name, t| {
                let k = runs.entry(name.to_owned()).or_default();
                let interval = s_interval(name);
                let expected = first[name] + interval * (*k as u32);
                let drift = if t > expected { t - expected } else { expected - t };
                max_drift = max_drift.max(drift);
                *k += 1;
            },
        );
        assert_eq!(max_drift, Duration::ZERO);
        assert_eq!(reports.len(), 500, "one initial OK per check and nothing more");
        let total: u64 = runs.values().sum();
        let expected: u64 = (0..500u64).map(|i| 86_400 / [10, 30, 60, 300][(i % 4) as usize]).sum();
        assert!(total.abs_diff(expected) <= 500, "runs {total}, expected about {expected}");

        fn s_interval(name: &str) -> Duration {
            let i: usize = name[1..].parse().unwrap();
            Duration::from_secs([10, 30, 60, 300][i % 4])
        }
    }
}
