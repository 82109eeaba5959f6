//! Issue 16 item 7: nothing in a CMA's data directory is readable by other local users. A fresh
//! CMA with a join token and an enrolled nanoprobe (so the database, its WAL and shared-memory
//! files, the inbox and the session file all exist) has every directory 0700 and every file 0600.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assim::cluster::{Cluster, ClusterSpec};

/// Every path below `dir` (itself included) with its permission bits.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, u32, bool)>) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    out.push((dir.to_owned(), meta.permissions().mode() & 0o7777, meta.is_dir()));
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            walk(&e.unwrap().path(), out);
        }
    }
}

#[test]
fn item7_fresh_cma_data_dir_is_0700_and_0600_everywhere() {
    let mut c =
        Cluster::new(ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1), false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let mut entries = Vec::new();
    walk(&c.dir.join("cma"), &mut entries);
    let names: Vec<String> = entries
        .iter()
        .map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["cma.sqlite", "cma.sqlite-wal", "cma.sqlite-shm", "inbox", "session", "node.key"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let wrong: Vec<String> = entries
        .iter()
        .filter(|(_, mode, is_dir)| *mode != if *is_dir { 0o700 } else { 0o600 })
        .map(|(p, mode, _)| format!("{} {mode:04o}", p.display()))
        .collect();
    assert!(wrong.is_empty(), "not private: {wrong:#?}");
}
