//! Reads the host figures sent as statistics (`statistics_host`, issue 17 item 5): the IO
//! half of [`assim_probe_shell::stat_sources`], which parses and names them.
//!
//! Once per statistics interval, when the shell says they are due
//! ([`assim_probe_shell::Shell::host_figures_due`]): `/proc/loadavg` and `/proc/meminfo` (at
//! most [`MAX_READ`] bytes each) and `statvfs("/")`. A figure that cannot be read or parsed is
//! left out of that interval and counted ([`Reader::failures`], in the metrics file as
//! `assim_nanoprobe_statistics_dropped_total{reason="unreadable_…"}`); the first failure of
//! each figure is logged as a WARN, later ones at DEBUG, so a host without `MemAvailable`
//! does not fill the journal.

use std::io::Read as _;

use assim_probe_shell::stat_sources::{FsUsage, HostFigures, parse_loadavg, parse_meminfo};
use tracing::{debug, warn};

/// The most bytes read from one `/proc` file (`/proc/meminfo` is about 1.5 KiB).
pub const MAX_READ: u64 = 64 * 1024;

/// The figures, in the order of [`Reader::failures`].
const FIGURES: [&str; 3] = ["load", "memory", "root_fs"];

/// Reads the figures; counts what failed.
#[derive(Debug, Default)]
pub struct Reader {
    failed: [u64; 3],
}

impl Reader {
    /// The figures now; those that failed are `None`.
    pub fn read(&mut self) -> HostFigures {
        HostFigures {
            load: self.note(
                0,
                read_proc("/proc/loadavg")
                    .and_then(|b| parse_loadavg(&b).map_err(|e| e.to_string())),
            ),
            memory: self.note(
                1,
                read_proc("/proc/meminfo")
                    .and_then(|b| parse_meminfo(&b).map_err(|e| e.to_string())),
            ),
            root_fs: self.note(2, root_fs()),
        }
    }

    /// Failed reads per figure since start.
    pub fn failures(&self) -> [(&'static str, u64); 3] {
        [0, 1, 2].map(|i| (FIGURES[i], self.failed[i]))
    }

    fn note<T>(&mut self, i: usize, r: Result<T, String>) -> Option<T> {
        let (figure, count) = (FIGURES[i], &mut self.failed[i]);
        match r {
            Ok(v) => Some(v),
            Err(error) => {
                *count += 1;
                if *count == 1 {
                    warn!(figure, %error, "cannot read a host figure; it is left out of the statistics (logged once; the count is in the metrics file)");
                } else {
                    debug!(figure, %error, "cannot read a host figure");
                }
                None
            }
        }
    }
}

fn read_proc(path: &str) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    f.take(MAX_READ).read_to_end(&mut buf).map_err(|e| format!("{path}: {e}"))?;
    Ok(buf)
}

fn root_fs() -> Result<FsUsage, String> {
    let s = nix::sys::statvfs::statvfs("/").map_err(|e| format!("statvfs(\"/\"): {e}"))?;
    FsUsage::from_statvfs(
        s.fragment_size() as u64,
        s.blocks() as u64,
        s.blocks_free() as u64,
        s.blocks_available() as u64,
    )
    .ok_or_else(|| "statvfs(\"/\") gave inconsistent block counts".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's real files parse (Linux with a kernel ≥ 3.14).
    #[test]
    fn this_hosts_figures_are_read() {
        let mut r = Reader::default();
        let f = r.read();
        let load = f.load.expect("load");
        assert!(load.iter().all(|l| *l >= 0.0));
        let m = f.memory.expect("memory");
        assert!(m.total_bytes > 0 && m.available_bytes <= m.total_bytes);
        let fs = f.root_fs.expect("root fs");
        assert!(fs.size_bytes > 0 && fs.available_bytes <= fs.free_bytes);
        assert_eq!(r.failures().iter().map(|f| f.1).sum::<u64>(), 0);
    }
}
