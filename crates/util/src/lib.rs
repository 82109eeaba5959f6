//! Small things several crates must do the same way: the duration grammar (flags, config
//! files, simulator scenarios, bus settings), `*`/`?` globs (event filters, tagging rules, check
//! rules), the rule for tests that cannot run on this host, and (feature `daemon`) the process
//! plumbing of the three programs. One definition each, so a value written in one place means
//! the same everywhere. Without the `daemon` feature it depends on `std` only.
//!
//! Layout:
//! - [`duration`]: [`parse_duration`] and [`format_duration`], and the grammar they share.
//! - [`glob`]: [`Glob`], a compiled shell-style glob, and [`glob::matches`] for one-off use.
//! - [`url`]: [`redact_url`], a connection URL with its password hidden (the store's and the
//!   queue's URLs in logs, errors and `--print-config`).
//! - [`testing`]: [`testing::skip`], how a test gives up when the host lacks a tool or root
//!   (and why that fails under CI).
//! - `daemon` (feature `daemon`): process plumbing of the three programs: logging to stderr,
//!   SIGTERM/SIGINT, the tokio runtime, reading a TOML config file.

#![forbid(unsafe_code)]

pub mod duration;
pub mod glob;
pub mod testing;
pub mod url;

#[cfg(feature = "daemon")]
pub mod daemon;

pub use crate::duration::{DurationError, format_duration, parse_duration};
pub use crate::glob::Glob;
pub use crate::url::redact_url;
