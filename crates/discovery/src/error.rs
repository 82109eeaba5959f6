//! The one error type of the crate.

use std::path::{Path, PathBuf};

/// What went wrong while discovering. No variant leaves any state behind:
/// collectors only read the host.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A file or directory the collector needs could not be read.
    #[error("cannot read {}: {source} (is /proc or /sys mounted and readable?)", path.display())]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The underlying IO error.
        source: std::io::Error,
    },
    /// A system call made through `nix` failed.
    #[error("system call {call} failed: {source}")]
    Sys {
        /// Which call (e.g. `getifaddrs`).
        call: &'static str,
        /// The errno.
        source: nix::Error,
    },
    /// An external command (e.g. `rpm`) failed or timed out.
    #[error("command `{command}` failed: {reason}")]
    Command {
        /// The command line, for the operator.
        command: String,
        /// Exit status, timeout or spawn error.
        reason: String,
    },
    /// A collector result could not be turned into JSON.
    #[error("cannot serialise discovery result: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// Reads a whole text file, naming the file in the error.
pub(crate) fn read_text(path: impl AsRef<Path>) -> Result<String, DiscoveryError> {
    let path = path.as_ref();
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|source| DiscoveryError::Read { path: path.to_path_buf(), source })
}

/// Reads a file that may legitimately be absent or unreadable; `None` then.
pub(crate) fn read_optional(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read(path.as_ref()).ok().map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// The most bytes [`read_bounded`] reads from one file.
pub(crate) const MAX_FILE: u64 = 1 << 20;

/// Reads at most [`MAX_FILE`] bytes of a file that may be absent or unreadable (`None` then),
/// so a hostile or runaway file (a fake `/proc`, a huge config) cannot exhaust memory.
pub(crate) fn read_bounded(path: impl AsRef<Path>) -> Option<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path.as_ref()).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
