//! How a test gives up when this host lacks something it needs (root, a tool, a peer server,
//! fixture files): [`skip`] prints a `SKIP:` line and lets the test pass on a developer's
//! machine, but fails it in CI, where `scripts/install-deps` has installed every peer and the
//! tests run as root, so a skip there means a check silently stopped running.
//!
//! CI is recognised by the `CI` environment variable, as CI services set it: any value except
//! empty, `0` and `false` counts.

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Whether the tests run under CI (`CI` set, and not to empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Gives up on (part of) a test because of `reason`: prints `SKIP: reason` and returns, or
/// panics under CI. The caller returns after it.
///
/// ```no_run
/// # fn have_nagios() -> bool { false }
/// if !have_nagios() {
///     assim_util::testing::skip("nagios4 is not installed (scripts/install-deps installs it)");
///     return;
/// }
/// ```
#[track_caller]
pub fn skip(reason: impl Display) {
    if in_ci() {
        panic!(
            "a test would be skipped under CI: {reason}. \
             Install what it needs (scripts/install-deps) and run as root; CI must not skip"
        );
    }
    println!("SKIP: {reason}");
}

/// The shared L2 capture fixtures (`shared/fixtures/l2`, beside the checkout, where the
/// checkout is nested in worktrees too): `$ASSIM_L2_FIXTURES` if set, else the first
/// `shared/fixtures/l2` in `start` or one of its ancestors. `None` when there is none; the caller
/// then [`skip`]s.
pub fn l2_fixtures(start: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ASSIM_L2_FIXTURES") {
        return Some(PathBuf::from(dir));
    }
    start.ancestors().map(|a| a.join("shared/fixtures/l2")).find(|d| d.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test here that reads the real environment: it agrees with itself either way.
    #[test]
    fn skip_fails_exactly_under_ci() {
        let r = std::panic::catch_unwind(|| skip("nothing"));
        assert_eq!(r.is_err(), in_ci());
    }
}
