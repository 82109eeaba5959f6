//! What local programs registered, kept across nanoprobe restarts: `DATA_DIR/local.json`.
//!
//! The file holds the heartbeat registrations (name, TTL, whether the miss was reported) and
//! the checks local programs declared (issue 17 item 6). It is small (bounded by the shell's
//! limits) and written only when a registration changes, never per beat: written to
//! `local.json.tmp`, fsync'd, renamed over `local.json`, and the directory fsync'd, so a crash
//! leaves the old file or the new one. A file that cannot be read as JSON (a damaged disk, a
//! hand edit) is moved aside to `local.json.damaged` with an ERROR in the log and the nanoprobe
//! starts with no registrations: the programs register again with their next beat, and nothing
//! is lost silently.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use assim_probe_shell::apps::Registration;
use serde::{Deserialize, Serialize};
use tracing::error;

/// The file name inside the data directory.
pub const FILE_NAME: &str = "local.json";
/// A larger file is not read (the limits keep a real one far below).
pub const MAX_FILE: u64 = 4 << 20;

/// One heartbeat registration on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedApp {
    pub name: String,
    pub ttl_ms: u64,
    #[serde(default)]
    pub missed: bool,
}

/// The file's content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalState {
    #[serde(default)]
    pub apps: Vec<SavedApp>,
    /// The declared checks, with the user who declared each.
    #[serde(default)]
    pub checks: Vec<crate::local_checks::Declared>,
}

impl LocalState {
    /// The shell's registrations.
    pub fn registrations(&self) -> Vec<Registration> {
        self.apps
            .iter()
            .map(|a| Registration {
                name: a.name.clone(),
                ttl: Duration::from_millis(a.ttl_ms),
                missed: a.missed,
            })
            .collect()
    }

    /// From the shell's registrations.
    pub fn from_registrations(regs: &[Registration]) -> LocalState {
        LocalState {
            checks: Vec::new(),
            apps: regs
                .iter()
                .map(|r| SavedApp {
                    name: r.name.clone(),
                    ttl_ms: r.ttl.as_millis() as u64,
                    missed: r.missed,
                })
                .collect(),
        }
    }
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the file; none is an empty state, a damaged one is moved aside (see the module doc).
pub fn load(data_dir: &Path) -> LocalState {
    let p = path(data_dir);
    let read = || -> anyhow::Result<Option<LocalState>> {
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("cannot open it"),
        };
        let len = f.metadata()?.len();
        anyhow::ensure!(len <= MAX_FILE, "it is {len} bytes, more than {MAX_FILE}");
        Ok(Some(serde_json::from_reader(std::io::BufReader::new(f)).context("not valid JSON")?))
    };
    match read() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            let aside = data_dir.join(format!("{FILE_NAME}.damaged"));
            let moved = std::fs::rename(&p, &aside).is_ok();
            error!(
                file = %p.display(), error = format!("{e:#}"), moved_to = %aside.display(), moved,
                "cannot read the local programs' registrations; starting without them (they \
                 register again with their next heartbeat; declared checks must be declared again)"
            );
            LocalState::default()
        }
    }
}

/// Writes the file atomically and durably.
pub fn save(data_dir: &Path, state: &LocalState) -> anyhow::Result<()> {
    let p = path(data_dir);
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(state)?)?;
    f.write_all(b"\n")?;
    f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, &p).with_context(|| format!("cannot replace {}", p.display()))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", data_dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(what: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("assim-local-state-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_missing_file() {
        let d = dir("rt");
        assert_eq!(load(&d), LocalState::default());
        let regs = vec![Registration {
            name: "backup".into(),
            ttl: Duration::from_secs(30),
            missed: true,
        }];
        save(&d, &LocalState::from_registrations(&regs)).unwrap();
        assert_eq!(load(&d).registrations(), regs);
        assert!(!d.join("local.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_truncated_file_is_moved_aside_not_fatal() {
        let d = dir("trunc");
        let regs =
            vec![Registration { name: "web".into(), ttl: Duration::from_secs(5), missed: false }];
        save(&d, &LocalState::from_registrations(&regs)).unwrap();
        let full = std::fs::read(path(&d)).unwrap();
        std::fs::write(path(&d), &full[..full.len() / 2]).unwrap();
        assert_eq!(load(&d), LocalState::default());
        assert!(d.join("local.json.damaged").exists());
        assert!(!path(&d).exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
