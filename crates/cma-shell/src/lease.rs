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
        assert_eq!((c.renew(), c.retry()), (Duration::from_millis(3333), Duration::from_secs(2)));
        assert!(c.validate().is_ok());
        assert!(LeaseConfig { ttl: Duration::from_millis(999) }.validate().is_err());
        assert!(
            LeaseConfig { ttl: Duration::from_secs(601) }.validate().unwrap_err().contains("600")
        );
        assert_eq!(LeaseConfig { ttl: Duration::from_secs(1) }.retry(), Duration::from_millis(200));
    }
}
