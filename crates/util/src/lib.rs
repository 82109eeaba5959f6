//! Small grammars that several crates read the same way: durations (flags, config files,
//! simulator scenarios, bus settings) and `*`/`?` globs (event filters, tagging rules, check
//! rules), plus the one rule for tests that cannot run on this host. One definition each, so a
//! value written in one place means the same everywhere. No dependencies beyond `std`.
//!
//! Layout:
//! - [`duration`]: [`parse_duration`] and [`format_duration`], and the grammar they share.
//! - [`glob`]: [`Glob`], a compiled shell-style glob, and [`glob::matches`] for one-off use.
//! - [`testing`]: [`testing::skip`], how a test gives up when the host lacks a tool or root
//!   (and why that fails under CI).

#![forbid(unsafe_code)]

pub mod duration;
pub mod glob;
pub mod testing;

pub use crate::duration::{DurationError, format_duration, parse_duration};
pub use crate::glob::Glob;
