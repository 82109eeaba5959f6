//! Heartbeats from local programs (issue 17 item 6), without IO.
//!
//! A program on the host registers under a name with a time to live (`assim app heartbeat
//! backup --ttl 30s`, or the `app.heartbeat` request on `events.sock`) and beats again before
//! the TTL runs out. Every beat moves its deadline to `now + ttl`; nothing goes to the CMA while
//! it beats. At the deadline the registration is *missed*: the shell reports the check
//! `app:NAME` CRITICAL once (through the spool, so the CMA raises one `service.critical`). The
//! next beat is a *recovery* (one `service.ok`). `assim app done NAME` removes a registration
//! without alarm; if it was missed, the shell reports OK so the CMA's alarm clears.
//!
//! Bounds: at most [`MAX_APPS`] registrations, names of 1–[`MAX_APP_NAME`] bytes of
//! `[A-Za-z0-9._-]` that start with a letter or digit, TTLs from [`MIN_TTL`] to [`MAX_TTL`]. A
//! beat over the limit, with a bad name or a bad TTL is refused and changes nothing.
//!
//! The CMA hears the registered names and TTLs (the discovery result [`APPS_RESULT`]) when
//! they change — a new registration, another TTL, `done` — never on a beat, so the Nagios and
//! Icinga exports can declare the service before its first alarm.
//!
//! Restarts: the registrations (name, TTL, whether missed) are kept by the driver in the data
//! directory ([`Apps::registrations`], [`Apps::restore`]); beat times are not (a beat writes
//! nothing to disk). A restored registration's deadline is the restart plus its TTL, so a
//! program that died while the nanoprobe was down is reported one TTL after the restart, and
//! one that keeps beating is never reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Registrations at most.
pub const MAX_APPS: usize = 256;
/// The longest application name, in bytes.
pub const MAX_APP_NAME: usize = 64;
/// The shortest TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest TTL (a week).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The check name an application's state is reported under: `app:NAME`.
pub const CHECK_PREFIX: &str = "app:";
/// The discovery result the registered names go to the CMA as, when they change:
/// `{"apps": [{"name": "backup", "ttl_s": 30}, …]}` (`assim export nagios|icinga2` declares a
/// passive service `app:NAME` for each, so the first missed beat has a service to land on).
pub const APPS_RESULT: &str = "local_apps";

/// Why a request was refused. The registrations are unchanged in every case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppError {
    /// The name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    BadName(String),
    /// The TTL is out of bounds.
    BadTtl(Duration),
    /// [`MAX_APPS`] programs are registered already.
    TooMany,
    /// `done` for a name that is not registered.
    Unknown(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::BadName(n) => write!(
                f,
                "application name {n:?} is not valid: use 1-{MAX_APP_NAME} letters, digits, '.', \
                 '_' or '-', starting with a letter or digit"
            ),
            AppError::BadTtl(t) => write!(
                f,
                "a TTL of {} ms is out of range: use 1 s to 7 days (e.g. --ttl 30s)",
                t.as_millis()
            ),
            AppError::TooMany => write!(
                f,
                "{MAX_APPS} applications are registered on this host already; end one with \
                 `assim app done NAME`"
            ),
            AppError::Unknown(n) => write!(
                f,
                "no application named {n:?} is registered on this host (`assim app list` shows \
                 them)"
            ),
        }
    }
}

impl std::error::Error for AppError {}

/// Checks an application name (see the module doc).
pub fn validate_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_APP_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(AppError::BadName(name.chars().take(80).collect())) }
}

/// Checks a TTL.
pub fn validate_ttl(ttl: Duration) -> Result<(), AppError> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) { Ok(()) } else { Err(AppError::BadTtl(ttl)) }
}

/// A registration as kept on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub ttl: Duration,
    /// The miss was reported and no beat came since.
    pub missed: bool,
}

/// A registration in memory.
#[derive(Clone, Debug)]
struct App {
    ttl: Duration,
    deadline: Instant,
    missed: bool,
}

/// What a beat did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// A new registration.
    pub registered: bool,
    /// It had been missed: report the recovery.
    pub recovered: bool,
    /// The registrations to keep on disk changed (new, another TTL, or recovered).
    pub changed: bool,
}

/// A registration whose deadline passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missed {
    pub name: String,
    pub ttl: Duration,
}

/// The registrations of one host.
#[derive(Clone, Debug, Default)]
pub struct Apps {
    apps: BTreeMap<String, App>,
}

impl Apps {
    /// The registrations after a restart at `now`: each gets a whole TTL from `now`. Invalid
    /// entries (a damaged file) and those beyond [`MAX_APPS`] are skipped.
    pub fn restore(regs: impl IntoIterator<Item = Registration>, now: Instant) -> Apps {
        let mut apps = BTreeMap::new();
        for r in regs {
            if apps.len() >= MAX_APPS
                || validate_name(&r.name).is_err()
                || validate_ttl(r.ttl).is_err()
            {
                continue;
            }
            apps.insert(r.name, App { ttl: r.ttl, deadline: now + r.ttl, missed: r.missed });
        }
        Apps { apps }
    }

    /// A beat from `name`, registering it if new.
    pub fn beat(&mut self, name: &str, ttl: Duration, now: Instant) -> Result<Beat, AppError> {
        validate_name(name)?;
        validate_ttl(ttl)?;
        let full = self.apps.len() >= MAX_APPS;
        match self.apps.get_mut(name) {
            Some(a) => {
                let recovered = a.missed;
                let changed = recovered || a.ttl != ttl;
                *a = App { ttl, deadline: now + ttl, missed: false };
                Ok(Beat { registered: false, recovered, changed })
            }
            None if full => Err(AppError::TooMany),
            None => {
                self.apps.insert(name.to_owned(), App { ttl, deadline: now + ttl, missed: false });
                Ok(Beat { registered: true, recovered: false, changed: true })
            }
        }
    }

    /// `name` finished cleanly: removed. Returns whether it was missed (its alarm must clear).
    pub fn done(&mut self, name: &str) -> Result<bool, AppError> {
        validate_name(name)?;
        self.apps.remove(name).map(|a| a.missed).ok_or_else(|| AppError::Unknown(name.to_owned()))
    }

    /// The earliest deadline of a registration not missed yet.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.apps.values().filter(|a| !a.missed).map(|a| a.deadline).min()
    }

    /// The registrations whose deadline is `now` or earlier, marked missed (each is returned
    /// once until it beats again).
    pub fn due(&mut self, now: Instant) -> Vec<Missed> {
        let mut out = Vec::new();
        for (name, a) in &mut self.apps {
            if !a.missed && a.deadline <= now {
                a.missed = true;
                out.push(Missed { name: name.clone(), ttl: a.ttl });
            }
        }
        out
    }

    /// What to keep on disk.
    pub fn registrations(&self) -> Vec<Registration> {
        self.apps
            .iter()
            .map(|(name, a)| Registration { name: name.clone(), ttl: a.ttl, missed: a.missed })
            .collect()
    }

    /// Each registration with the time left before its deadline (zero once missed).
    pub fn list(&self, now: Instant) -> Vec<(Registration, Duration)> {
        self.apps
            .iter()
            .map(|(name, a)| {
                (
                    Registration { name: name.clone(), ttl: a.ttl, missed: a.missed },
                    a.deadline.saturating_duration_since(now),
                )
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_beating_program_is_never_due_and_a_silent_one_is_due_once() {
        let t0 = Instant::now();
        let mut a = Apps::default();
        assert!(a.beat("backup", 3 * S, t0).unwrap().registered);
        // Beats every second for an hour: never due.
        for i in 1..3600 {
            let now = t0 + i * S;
            assert!(a.due(now).is_empty());
            assert!(!a.beat("backup", 3 * S, now).unwrap().changed);
        }
        let last = t0 + 3599 * S;
        assert_eq!(a.poll_timeout(), Some(last + 3 * S));
        assert!(a.due(last + 3 * S - Duration::from_millis(1)).is_empty());
        assert_eq!(a.due(last + 3 * S), vec![Missed { name: "backup".into(), ttl: 3 * S }]);
        assert!(a.due(last + 100 * S).is_empty(), "reported twice");
        assert_eq!(a.poll_timeout(), None);
        let b = a.beat("backup", 3 * S, last + 100 * S).unwrap();
        assert!(b.recovered && b.changed);
        assert!(a.done("backup").is_ok_and(|missed| !missed));
        assert!(a.is_empty());
        assert_eq!(a.done("backup"), Err(AppError::Unknown("backup".into())));
    }

    #[test]
    fn bounds_and_names() {
        let t0 = Instant::now();
        let mut a = Apps::default();
        for bad in ["", "-x", "a b", "a/b", "ä", &"x".repeat(65), "a\n"] {
            assert!(matches!(a.beat(bad, S, t0), Err(AppError::BadName(_))), "{bad:?}");
        }
        assert_eq!(
            a.beat("x", Duration::from_millis(999), t0),
            Err(AppError::BadTtl(Duration::from_millis(999)))
        );
        assert!(a.beat("x", MAX_TTL + S, t0).is_err());
        for i in 0..MAX_APPS {
            a.beat(&format!("app{i}"), S, t0).unwrap();
        }
        assert_eq!(a.beat("one-more", S, t0), Err(AppError::TooMany));
        // An existing one still beats.
        assert!(a.beat("app0", 2 * S, t0).unwrap().changed);
        assert_eq!(a.len(), MAX_APPS);
    }

    #[test]
    fn a_restart_gives_each_registration_a_whole_ttl_and_keeps_missed() {
        let t0 = Instant::now();
        let mut a = Apps::default();
        a.beat("web", 5 * S, t0).unwrap();
        a.beat("cron", 2 * S, t0).unwrap();
        assert_eq!(a.due(t0 + 2 * S).len(), 1);
        let mut regs = a.registrations();
        regs.push(Registration { name: "bad name".into(), ttl: S, missed: false });
        let t1 = t0 + 60 * S;
        let mut b = Apps::restore(regs, t1);
        assert_eq!(b.len(), 2);
        // "cron" stays missed (not reported again); "web" is due one TTL after the restart.
        assert_eq!(b.poll_timeout(), Some(t1 + 5 * S));
        assert_eq!(b.due(t1 + 5 * S), vec![Missed { name: "web".into(), ttl: 5 * S }]);
        assert!(b.beat("cron", 2 * S, t1).unwrap().recovered);
    }
}
