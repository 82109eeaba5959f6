//! The engine lease decision (issue 14), sans-IO: which CMA engine may apply records, when a
//! standby tries to take over, when the active one renews, and when it must stop.
//!
//! Several `cma` processes share one database (PostgreSQL); exactly one of them — the one
//! holding the lease row — applies inbox records. The store does the atomic part (take the
//! lease if it lapsed, renew it only under the same term, refuse every batch of a term that
//! is no longer current); this module decides when to ask and what an answer means. The
//! driver calls [`Lease::poll`] at [`Lease::poll_timeout`], asks the store what it returned,
//! and feeds the answer to [`Lease::handle`], which says what to do.
//!
//! Rules:
//! - **Standby** asks to take the lease every [`LeaseConfig::retry`]. Granted: it becomes
//!   **active** with that term ([`Decision::TakeOver`]: load the state, start applying).
//! - **Active** renews every [`LeaseConfig::renew`] (a third of the lease). Renewed: nothing
//!   changes. Another holder has it (it lapsed and was taken, or this engine was stopped, e.g.
//!   SIGSTOP, for longer than the lease): [`Decision::Stop`] — stop applying at once; the
//!   engine's in-memory state is stale. A store that cannot be reached does not depose: the
//!   engine keeps trying every retry interval, its batches fail (and stall) meanwhile, and
//!   fencing refuses them if another engine took over; [`Lease::in_doubt`] says since when the
//!   lease is unconfirmed, for the status page.
//! - A term that changes under an active engine is a stop too (another engine held the lease
//!   in between).
//!
//! The takeover time after a crash of the active engine is at most the lease plus one retry
//! interval (the lease lapses on the database's clock; the standby notices at its next try).

use std::time::{Duration, Instant};

/// The lease's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a granted or renewed lease lasts (on the database's clock).
    pub ttl: Duration,
}

impl LeaseConfig {
    /// The shortest lease accepted: renewals and retries must fit in it several times over.
    pub const MIN_TTL: Duration = Duration::from_secs(1);
    /// The longest lease accepted (a longer one only delays every takeover).
    pub const MAX_TTL: Duration = Duration::from_secs(600);

    /// How often the active engine renews: a third of the lease, so two renewals may fail
    /// (a slow query, a reconnect) before it lapses.
    pub fn renew(&self) -> Duration {
        self.ttl / 3
    }

    /// How often a standby tries to take over, and an active engine retries a failed renewal:
    /// a fifth of the lease, at least 100 ms.
    pub fn retry(&self) -> Duration {
        (self.ttl / 5).max(Duration::from_millis(100))
    }

    /// Checks the bounds ([`Self::MIN_TTL`], [`Self::MAX_TTL`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl < Self::MIN_TTL || self.ttl > Self::MAX_TTL {
            return Err(format!(
                "the engine lease must be between {} s and {} s (got {} ms)",
                Self::MIN_TTL.as_secs(),
                Self::MAX_TTL.as_secs(),
                self.ttl.as_millis()
            ));
        }
        Ok(())
    }
}

/// What to ask the store now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Take the lease if nobody holds it (or it lapsed); renew it if this engine holds it.
    Acquire,
    /// Extend the lease of this term; never take it.
    Renew { term: u64 },
}

/// The store's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// This engine holds the lease with this term.
    Mine { term: u64 },
    /// Another engine holds it (`holder`, `term`), for `expires_in` more.
    Other { holder: String, term: u64, expires_in: Duration },
    /// The store could not be asked (unreachable, an error); the text says why.
    Failed(String),
}

/// What the driver must do after an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes.
    Continue,
    /// This engine is now the active one, with `term`: load the state and start applying.
    TakeOver { term: u64 },
    /// This engine must stop applying at once: it lost the lease.
    Stop { reason: String },
}

/// This engine's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lease; `holder` (and its term) has it, as last seen.
    Standby { holder: Option<(String, u64)> },
    /// Applying records under `term`, active since `since`.
    Active { term: u64, since: Instant },
    /// Lost the lease; applies nothing more.
    Stopped { reason: String },
}

/// The lease decision of one engine (see the module doc).
#[derive(Clone, Debug)]
pub struct Lease {
    config: LeaseConfig,
    role: Role,
    next: Instant,
    /// When an active engine's lease was last confirmed (granted or renewed).
    confirmed: Option<Instant>,
    /// The last store failure, while the store cannot be asked.
    failing: Option<String>,
}

impl Lease {
    /// A standby that tries at once.
    pub fn new(config: LeaseConfig, now: Instant) -> Lease {
        Lease {
            config,
            role: Role::Standby { holder: None },
            next: now,
            confirmed: None,
            failing: None,
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// When to ask the store next ([`Lease::poll`]); `None` once stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.role {
            Role::Stopped { .. } => None,
            _ => Some(self.next),
        }
    }

    /// What to ask the store, if it is time (`now` at or after [`Lease::poll_timeout`]).
    pub fn poll(&mut self, now: Instant) -> Option<Request> {
        if now < self.next {
            return None;
        }
        match self.role {
            Role::Standby { .. } => Some(Request::Acquire),
            Role::Active { term, .. } => Some(Request::Renew { term }),
            Role::Stopped { .. } => None,
        }
    }

    /// The store's answer to the request [`Lease::poll`] returned.
    pub fn handle(&mut self, now: Instant, answer: Answer) -> Decision {
        let retry = now + self.config.retry();
        match (&self.role, answer) {
            (Role::Stopped { .. }, _) => Decision::Continue,
            (_, Answer::Failed(why)) => {
                self.failing = Some(why);
                self.next = retry;
                Decision::Continue
            }
            (Role::Standby { .. }, Answer::Mine { term }) => {
                self.failing = None;
                self.role = Role::Active { term, since: now };
                self.confirmed = Some(now);
                self.next = now + self.config.renew();
                Decision::TakeOver { term }
            }
            (Role::Standby { .. }, Answer::Other { holder, term, expires_in }) => {
                self.failing = None;
                self.role = Role::Standby { holder: Some((holder, term)) };
                // Try again at the next retry, or just after the lease lapses if that is sooner.
                self.next = retry.min(now + expires_in + Duration::from_millis(20)).max(now);
                Decision::Continue
            }
            (Role::Active { term: held, .. }, Answer::Mine { term }) if term == *held => {
                self.failing = None;
                self.confirmed = Some(now);
                self.next = now + self.config.renew();
                Decision::Continue
            }
            (Role::Active { term: held, .. }, Answer::Mine { term }) => self.stop(format!(
                "the engine lease changed term under this engine ({held} → {term}): another \
                     engine held it in between, so this engine's state is stale"
            )),
            (Role::Active { term: held, .. }, Answer::Other { holder, term, .. }) => {
                let held = *held;
                self.stop(format!(
                    "another engine ({holder}, term {term}) took the engine lease from this one \
                     (term {held})"
                ))
            }
        }
    }

    fn stop(&mut self, reason: String) -> Decision {
        self.role = Role::Stopped { reason: reason.clone() };
        Decision::Stop { reason }
    }

    /// For an active engine: how long its lease has gone unconfirmed, when that is longer than
    /// the lease (the store cannot be reached; another engine may have taken over, and fencing
    /// then refuses this one's batches). `None` otherwise.
    pub fn in_doubt(&self, now: Instant) -> Option<Duration> {
        match (&self.role, self.confirmed) {
            (Role::Active { .. }, Some(c)) if now.duration_since(c) > self.config.ttl => {
                Some(now.duration_since(c))
            }
            _ => None,
        }
    }

    /// Why the store could not be asked, while it cannot.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn lease() -> (Lease, Instant) {
        let t0 = Instant::now();
        (Lease::new(LeaseConfig { ttl: TTL }, t0), t0)
    }

    fn other(holder: &str, term: u64, ms: u64) -> Answer {
        Answer::Other { holder: holder.into(), term, expires_in: Duration::from_millis(ms) }
    }

    #[test]
    fn a_standby_waits_while_another_holds_the_lease_and_takes_over_when_granted() {
        let (mut l, t0) = lease();
        assert_eq!(l.poll_timeout(), Some(t0));
        assert_eq!(l.poll(t0), Some(Request::Acquire));
        assert_eq!(l.handle(t0, other("a", 4, 2500)), Decision::Continue);
        assert_eq!(l.role(), &Role::Standby { holder: Some(("a".into(), 4)) });
        // Next try at the retry interval (600 ms), not before.
        let next = l.poll_timeout().unwrap();
        assert_eq!(next, t0 + Duration::from_millis(600));
        assert_eq!(l.poll(next - Duration::from_millis(1)), None);
        assert_eq!(l.poll(next), Some(Request::Acquire));
        // The lease lapses in 100 ms: the standby tries just after, not a full retry later.
        assert_eq!(l.handle(next, other("a", 4, 100)), Decision::Continue);
        assert_eq!(l.poll_timeout(), Some(next + Duration::from_millis(120)));
        let t = next + Duration::from_millis(120);
        assert_eq!(l.poll(t), Some(Request::Acquire));
        assert_eq!(l.handle(t, Answer::Mine { term: 5 }), Decision::TakeOver { term: 5 });
        assert!(matches!(l.role(), Role::Active { term: 5, .. }));
        // Active: renews every third of the lease, with its term.
        assert_eq!(l.poll_timeout(), Some(t + Duration::from_secs(1)));
        assert_eq!(l.poll(t + Duration::from_secs(1)), Some(Request::Renew { term: 5 }));
    }

    #[test]
    fn an_active_engine_stops_when_another_took_the_lease_or_the_term_moved() {
        let (mut l, t0) = lease();
        l.poll(t0);
        assert_eq!(l.handle(t0, Answer::Mine { term: 1 }), Decision::TakeOver { term: 1 });
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.poll(t1), Some(Request::Renew { term: 1 }));
        assert_eq!(l.handle(t1, Answer::Mine { term: 1 }), Decision::Continue);
        let t2 = t1 + Duration::from_secs(1);
        l.poll(t2);
        let d = l.handle(t2, other("b", 2, 3000));
        let Decision::Stop { reason } = d else { panic!("{d:?}") };
        assert!(reason.contains("took the engine lease") && reason.contains("term 2"), "{reason}");
        assert_eq!(l.poll_timeout(), None, "a stopped engine asks nothing more");
        assert_eq!(l.poll(t2 + TTL), None);
        // Nothing revives it, not even a grant.
        assert_eq!(l.handle(t2, Answer::Mine { term: 3 }), Decision::Continue);
        assert!(matches!(l.role(), Role::Stopped { .. }));

        let (mut l, t0) = lease();
        l.poll(t0);
        l.handle(t0, Answer::Mine { term: 1 });
        let d = l.handle(t0 + Duration::from_secs(1), Answer::Mine { term: 3 });
        assert!(matches!(d, Decision::Stop { ref reason } if reason.contains("1 → 3")), "{d:?}");
    }

    #[test]
    fn an_unreachable_store_does_not_depose_but_puts_the_lease_in_doubt() {
        let (mut l, t0) = lease();
        l.poll(t0);
        l.handle(t0, Answer::Mine { term: 7 });
        let mut t = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(l.poll(t), Some(Request::Renew { term: 7 }));
            assert_eq!(
                l.handle(t, Answer::Failed("connection refused".into())),
                Decision::Continue
            );
            assert!(matches!(l.role(), Role::Active { term: 7, .. }));
            assert_eq!(l.poll_timeout(), Some(t + Duration::from_millis(600)), "retries sooner");
            t += Duration::from_millis(600);
        }
        assert_eq!(l.failing(), Some("connection refused"));
        assert_eq!(l.in_doubt(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.in_doubt(t), Some(t - t0));
        // The store is back and the lease is still this engine's: all is well again.
        assert_eq!(l.handle(t, Answer::Mine { term: 7 }), Decision::Continue);
        assert_eq!((l.in_doubt(t), l.failing()), (None, None));

        // A standby that cannot reach the store keeps trying, and stays standby.
        let (mut s, t0) = lease();
        s.poll(t0);
        assert_eq!(s.handle(t0, Answer::Failed("refused".into())), Decision::Continue);
        assert_eq!(s.role(), &Role::Standby { holder: None });
        assert_eq!(s.in_doubt(t0 + TTL * 2), None);
    }

    #[test]
    fn the_timing_is_bounded() {
        let c = LeaseConfig { ttl: Duration::from_secs(10) };
        assert_eq!((c.renew(), c.retry()), (Duration::new(3, 333_333_333), Duration::from_secs(2)));
        assert!(c.validate().is_ok());
        assert!(LeaseConfig { ttl: Duration::from_millis(999) }.validate().is_err());
        assert!(
            LeaseConfig { ttl: Duration::from_secs(601) }.validate().unwrap_err().contains("600")
        );
        assert_eq!(LeaseConfig { ttl: Duration::from_secs(1) }.retry(), Duration::from_millis(200));
    }
}

/// The lease decision of several engines against a model of the PostgreSQL lease row, under
/// the faults issue 14 names: a step of the database's clock, an answer lost after the store
/// applied it (the connection dropped during the commit), engines asking at the same instant,
/// engines stopped (SIGSTOP) and continued, crashes, clean stops, and a second process of the
/// same engine.
///
/// The model mirrors the SQL of `assim_store_postgres::Store` (`try_acquire_lease`,
/// `renew_lease`, `release_lease` and the fence check of every commit); the store's own
/// conformance test checks that SQL against a real PostgreSQL. Every engine that believes it is
/// active tries to commit at each of its turns. What must hold:
/// - **Safety**: every commit the store lets through carries the lease row's current term, the
///   terms of accepted commits never go down, and all commits of one term come from one
///   process. Two live processes never both believe they are active under one term.
/// - **Liveness**: once the faults stop, within the lease plus what the clock stepped back,
///   exactly one process is active, it holds the row's term, and its commits go through.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(1);

    /// The lease row (`engine_lease`): its term, holder and expiry on the database's clock.
    #[derive(Clone, Debug)]
    struct Row {
        term: u64,
        holder: usize,
        expires_at: i64,
    }

    /// The database: its lease row, its clock (real time plus `offset_ms`, which steps) and
    /// the commits it accepted (process, term).
    #[derive(Debug, Default)]
    struct Db {
        row: Option<Row>,
        offset_ms: i64,
        commits: Vec<(usize, u64)>,
    }

    impl Db {
        fn now(&self, real_ms: u64) -> i64 {
            real_ms as i64 + self.offset_ms
        }

        fn state(&self, real_ms: u64) -> Answer {
            match &self.row {
                None => {
                    Answer::Other { holder: String::new(), term: 0, expires_in: Duration::ZERO }
                }
                Some(r) => Answer::Other {
                    holder: format!("h{}", r.holder),
                    term: r.term,
                    expires_in: Duration::from_millis(
                        (r.expires_at - self.now(real_ms)).max(0) as u64
                    ),
                },
            }
        }

        /// `try_acquire_lease`: granted when there is no row, when it lapsed (a new term), or
        /// as a renewal of the very term this store holds; otherwise who holds it.
        fn acquire(&mut self, real_ms: u64, holder: usize, fence: Option<u64>) -> Answer {
            let now = self.now(real_ms);
            let ttl = TTL.as_millis() as i64;
            match &mut self.row {
                None => {
                    self.row = Some(Row { term: 1, holder, expires_at: now + ttl });
                    Answer::Mine { term: 1 }
                }
                Some(r) => {
                    let renewal = r.holder == holder && Some(r.term) == fence;
                    if renewal || r.expires_at < now {
                        if !renewal {
                            r.term += 1;
                        }
                        r.holder = holder;
                        r.expires_at = now + ttl;
                        Answer::Mine { term: r.term }
                    } else {
                        self.state(real_ms)
                    }
                }
            }
        }

        /// `renew_lease`: extends the lease of the term this store holds; never takes it.
        fn renew(&mut self, real_ms: u64, holder: usize, fence: Option<u64>) -> Answer {
            let now = self.now(real_ms);
            match (&mut self.row, fence) {
                (Some(r), Some(f)) if r.term == f && r.holder == holder => {
                    r.expires_at = now + TTL.as_millis() as i64;
                    Answer::Mine { term: f }
                }
                _ => self.state(real_ms),
            }
        }

        /// `release_lease`: ends the lease of the term this store holds.
        fn release(&mut self, fence: Option<u64>) {
            if let (Some(r), Some(f)) = (&mut self.row, fence)
                && r.term == f
            {
                r.expires_at = 0;
            }
        }

        /// A fenced commit: through only while the row has the store's term.
        fn commit(&mut self, process: usize, fence: Option<u64>) -> bool {
            let current = self.row.as_ref().map_or(0, |r| r.term);
            let ok = fence.is_none_or(|f| f == current);
            if ok {
                self.commits.push((process, fence.unwrap_or(0)));
            }
            ok
        }
    }

    /// What happens to one request on its way.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        None,
        /// The store applied it, the answer was lost (the connection dropped during the commit).
        Lost,
        /// The store was not reached.
        Unreachable,
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Real time passes (ms).
        Advance(u64),
        /// One engine's turn: it asks what its lease decision asks, then commits if active.
        Turn(usize, Fault),
        /// Two engines' turns at the same instant, one right after the other.
        Together(usize, usize),
        /// SIGSTOP / SIGCONT.
        Pause(usize),
        Resume(usize),
        /// SIGKILL; the service manager starts a new process of the same engine.
        Crash(usize),
        /// SIGTERM: the lease is released, then a new process starts.
        CleanStop(usize),
        /// A second process of the same engine (same holder) beside a running one.
        Duplicate(usize),
        /// The database's clock steps (ms, either way).
        DbClock(i64),
    }

    /// One `cma` process.
    #[derive(Debug)]
    struct Proc {
        /// Its unique id (the commit log names it).
        id: usize,
        /// The engine it is (`DATA_DIR/engine-id`): processes of one engine share it.
        holder: usize,
        lease: Lease,
        /// What its store fences with (`Handle::fence`).
        fence: Option<u64>,
        paused: bool,
        gone: bool,
    }

    struct World {
        t0: Instant,
        real_ms: u64,
        db: Db,
        procs: Vec<Proc>,
        engines: usize,
    }

    impl World {
        fn new(engines: usize) -> World {
            let t0 = Instant::now();
            let mut w = World { t0, real_ms: 0, db: Db::default(), procs: Vec::new(), engines };
            for e in 0..engines {
                w.spawn(e);
            }
            w
        }

        fn now(&self) -> Instant {
            self.t0 + Duration::from_millis(self.real_ms)
        }

        fn spawn(&mut self, holder: usize) {
            let id = self.procs.len();
            let lease = Lease::new(LeaseConfig { ttl: TTL }, self.now());
            self.procs.push(Proc { id, holder, lease, fence: None, paused: false, gone: false });
        }

        /// The live processes of engine `e`.
        fn of(&self, e: usize) -> Vec<usize> {
            (0..self.procs.len())
                .filter(|&i| !self.procs[i].gone && self.procs[i].holder == e % self.engines)
                .collect()
        }

        fn turn(&mut self, i: usize, fault: Fault) {
            let now = self.now();
            let p = &mut self.procs[i];
            if p.gone || p.paused {
                return;
            }
            if matches!(p.lease.role(), Role::Stopped { .. }) {
                // The process exited; its service manager starts it again.
                p.gone = true;
                let holder = p.holder;
                self.spawn(holder);
                return;
            }
            if let Some(req) = p.lease.poll(now) {
                let applied = match fault {
                    Fault::Unreachable => None,
                    _ => Some(match req {
                        Request::Acquire => self.db.acquire(self.real_ms, p.holder, p.fence),
                        Request::Renew { term } => {
                            assert_eq!(Some(term), p.fence, "renewing the store's own term");
                            self.db.renew(self.real_ms, p.holder, p.fence)
                        }
                    }),
                };
                let answer = match (fault, applied) {
                    (Fault::None, Some(a)) => {
                        // `Handle::acquire_lease` records a granted term as its fence.
                        if let (Request::Acquire, Answer::Mine { term }) = (req, &a) {
                            p.fence = Some(*term);
                        }
                        a
                    }
                    _ => Answer::Failed("connection lost".into()),
                };
                p.lease.handle(now, answer);
            }
            if matches!(p.lease.role(), Role::Active { .. }) {
                self.db.commit(p.id, p.fence);
            }
        }

        fn step(&mut self, s: &Step) {
            match *s {
                Step::Advance(ms) => self.real_ms += ms,
                Step::Turn(e, fault) => {
                    for i in self.of(e) {
                        self.turn(i, fault);
                    }
                }
                Step::Together(a, b) => {
                    for i in self.of(a).into_iter().chain(self.of(b)) {
                        self.turn(i, Fault::None);
                    }
                }
                Step::Pause(e) => self.of(e).into_iter().for_each(|i| self.procs[i].paused = true),
                Step::Resume(e) => {
                    self.of(e).into_iter().for_each(|i| self.procs[i].paused = false)
                }
                Step::Crash(e) => {
                    if let Some(&i) = self.of(e).first() {
                        self.procs[i].gone = true;
                        self.spawn(e % self.engines);
                    }
                }
                Step::CleanStop(e) => {
                    if let Some(&i) = self.of(e).iter().find(|&&i| !self.procs[i].paused) {
                        if matches!(self.procs[i].lease.role(), Role::Active { .. }) {
                            self.db.release(self.procs[i].fence);
                        }
                        self.procs[i].gone = true;
                        self.spawn(e % self.engines);
                    }
                }
                Step::Duplicate(e) => {
                    if self.of(e).len() < 2 {
                        self.spawn(e % self.engines);
                    }
                }
                Step::DbClock(ms) => self.db.offset_ms += ms,
            }
            self.check_safety();
        }

        fn check_safety(&self) {
            let mut owner: std::collections::BTreeMap<u64, usize> = Default::default();
            let mut last = 0;
            for &(p, term) in &self.db.commits {
                assert!(term >= last, "a commit of term {term} after one of term {last}");
                last = term;
                let o = *owner.entry(term).or_insert(p);
                assert_eq!(o, p, "two processes committed under term {term}");
            }
            let mut active: std::collections::BTreeMap<u64, usize> = Default::default();
            for p in self.procs.iter().filter(|p| !p.gone) {
                if let Role::Active { term, .. } = p.lease.role() {
                    assert_eq!(
                        p.fence,
                        Some(*term),
                        "the decision and the store agree on the term"
                    );
                    if let Some(other) = active.insert(*term, p.id) {
                        panic!("processes {other} and {} both active under term {term}", p.id);
                    }
                }
            }
        }

        /// No more faults: everyone runs, every 50 ms, until the lease (stepped back or not)
        /// has surely lapsed and been taken.
        fn settle(&mut self) {
            for p in &mut self.procs {
                p.paused = false;
            }
            let left = self
                .db
                .row
                .as_ref()
                .map_or(0, |r| (r.expires_at - self.db.now(self.real_ms)).max(0));
            let rounds = (left as u64 + 3 * TTL.as_millis() as u64) / 50 + 1;
            for _ in 0..rounds {
                self.real_ms += 50;
                for i in 0..self.procs.len() {
                    self.turn(i, Fault::None);
                }
                self.check_safety();
            }
            let active: Vec<&Proc> = self
                .procs
                .iter()
                .filter(|p| !p.gone && matches!(p.lease.role(), Role::Active { .. }))
                .collect();
            assert_eq!(
                active.len(),
                1,
                "exactly one active engine once the faults stop: {:?}",
                self.procs
            );
            let row = self.db.row.clone().expect("a lease row");
            assert_eq!((active[0].fence, active[0].holder), (Some(row.term), row.holder));
            let n = self.db.commits.len();
            let id = active[0].id;
            self.turn(id, Fault::None);
            assert_eq!(self.db.commits.len(), n + 1, "the active engine's commits go through");
        }
    }

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![6 => Just(Fault::None), 1 => Just(Fault::Lost), 1 => Just(Fault::Unreachable)]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0u64..700).prop_map(Step::Advance),
            12 => (0usize..3, fault()).prop_map(|(e, f)| Step::Turn(e, f)),
            2 => (0usize..3, 0usize..3).prop_map(|(a, b)| Step::Together(a, b)),
            1 => (0usize..3).prop_map(Step::Pause),
            2 => (0usize..3).prop_map(Step::Resume),
            1 => (0usize..3).prop_map(Step::Crash),
            1 => (0usize..3).prop_map(Step::CleanStop),
            1 => (0usize..3).prop_map(Step::Duplicate),
            1 => (-3000i64..3000).prop_map(Step::DbClock),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn one_engine_commits_per_term_and_one_is_active_once_the_faults_stop(
            engines in 1usize..=3,
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let mut w = World::new(engines);
            for s in &steps {
                w.step(s);
            }
            w.settle();
        }
    }

    /// Two engines started at the same instant: the store orders their requests; one gets the
    /// lease, the other stands by and tries again just after the lease would lapse, not before.
    #[test]
    fn two_engines_starting_at_the_same_instant_get_one_lease() {
        let mut w = World::new(2);
        w.step(&Step::Together(0, 1));
        assert!(matches!(w.procs[0].lease.role(), Role::Active { term: 1, .. }));
        assert_eq!(w.procs[1].lease.role(), &Role::Standby { holder: Some(("h0".into(), 1)) });
        assert_eq!(w.procs[1].lease.poll_timeout(), Some(w.now() + TTL / 5));
    }

    /// The database's clock steps forward past the lease: a standby takes over while the old
    /// engine still runs; its commits are refused from then on and it stops at its next renewal.
    /// Stepped back, the lease lasts that much longer: a standby waits, and still takes over
    /// once it lapses.
    #[test]
    fn a_clock_step_moves_the_lease_not_the_fence() {
        let mut w = World::new(2);
        w.step(&Step::Turn(0, Fault::None));
        w.step(&Step::Turn(1, Fault::None));
        w.step(&Step::DbClock(2000));
        w.step(&Step::Advance(200));
        w.step(&Step::Turn(1, Fault::None));
        assert!(matches!(w.procs[1].lease.role(), Role::Active { term: 2, .. }));
        let n = w.db.commits.len();
        assert!(!w.db.commit(0, w.procs[0].fence), "the old engine's commit is fenced");
        assert_eq!(w.db.commits.len(), n);
        w.step(&Step::Advance(200));
        w.step(&Step::Turn(0, Fault::None));
        assert!(matches!(w.procs[0].lease.role(), Role::Stopped { .. }));

        // Stepped back by 5 s, then the active engine dies: the standby waits the lease plus
        // the step, then takes over.
        let mut w = World::new(2);
        w.step(&Step::Turn(0, Fault::None));
        w.step(&Step::DbClock(-5000));
        w.step(&Step::Crash(0));
        let mut waited = 0;
        while !w
            .procs
            .iter()
            .any(|p| p.holder == 1 && matches!(p.lease.role(), Role::Active { .. }))
        {
            w.step(&Step::Advance(50));
            w.step(&Step::Turn(1, Fault::None));
            waited += 50;
            assert!(waited < 10_000, "never took over");
        }
        assert!((6000..6000 + 300).contains(&waited), "took over after {waited} ms");
    }

    /// The answer to a granted takeover is lost (the connection dropped during its commit):
    /// the standby does not know it holds the lease, so it does not start; it gets a new term
    /// once that lease lapses. A lost renewal changes nothing (renewing is idempotent).
    #[test]
    fn a_lost_answer_costs_time_not_safety() {
        let mut w = World::new(1);
        w.step(&Step::Turn(0, Fault::Lost));
        assert_eq!(w.procs[0].lease.role(), &Role::Standby { holder: None });
        assert_eq!(w.db.row.as_ref().map(|r| r.term), Some(1));
        let mut waited = 0;
        while !matches!(w.procs[0].lease.role(), Role::Active { .. }) {
            w.step(&Step::Advance(50));
            w.step(&Step::Turn(0, Fault::None));
            waited += 50;
        }
        assert!(matches!(w.procs[0].lease.role(), Role::Active { term: 2, .. }));
        assert!((1000..=1300).contains(&waited), "{waited}");
        w.step(&Step::Advance(400));
        w.step(&Step::Turn(0, Fault::Lost));
        w.step(&Step::Advance(250));
        w.step(&Step::Turn(0, Fault::None));
        assert!(matches!(w.procs[0].lease.role(), Role::Active { term: 2, .. }));
        assert_eq!(w.db.commits.last(), Some(&(0, 2)));
    }
}
