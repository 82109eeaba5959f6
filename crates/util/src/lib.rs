//! Small helpers every assim program shares; no heavy dependencies.
//!
//! Layout:
//! - [`duration`]: the duration grammar of flags and config files (parse and format).
//! - `daemon` (feature `daemon`): process plumbing of the three programs: logging to stderr,
//!   SIGTERM/SIGINT, the tokio runtime, reading a TOML config file.

pub mod duration;

#[cfg(feature = "daemon")]
pub mod daemon;
