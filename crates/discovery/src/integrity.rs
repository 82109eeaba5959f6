//! File integrity (the `file_integrity` collector): content hashes and metadata of configured
//! paths, the Debian package that owns each and whether dpkg's own checksum agrees, and the
//! `file.changed` decisions the nanoprobe raises as local events.
//!
//! Paths come from the schedule's parameters (`paths`: a comma-separated list replacing
//! [`DEFAULT_PATHS`]; `add`: paths added to it). A trailing `/` means every regular file
//! directly inside the directory (at most [`MAX_DIR_FILES`]). Per file: SHA-256 of its content
//! (not for the [`METADATA_ONLY`] files such as `/etc/shadow`, whose content is secret: their
//! size and modification time stand in), mode, owner, group, size; the package whose
//! `/var/lib/dpkg/info/PKG.md5sums` lists it, and whether the file's MD5 matches that list.
//! Conffiles (`/etc/...`) are not in the md5sums lists, so they have no dpkg verdict.
//!
//! Files are read through the discovery root (`root/usr/bin/ls`), symlinks followed
//! (`/bin/ls` on a merged-/usr system); a file larger than [`MAX_HASH_BYTES`] is reported
//! with its metadata and `hash_skipped`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DiscoveryError;
use crate::host_events::{HostEvent, clip};

/// Watched when the schedule names no paths: the binaries intruders replace first, the
/// account files, and the sshd and sudo configuration.
pub const DEFAULT_PATHS: &[&str] = &[
    "/usr/bin/ls",
    "/usr/bin/ps",
    "/usr/bin/ss",
    "/usr/bin/netstat",
    "/usr/bin/top",
    "/usr/bin/find",
    "/usr/bin/lsof",
    "/usr/bin/who",
    "/usr/bin/w",
    "/usr/bin/login",
    "/usr/bin/su",
    "/usr/bin/sudo",
    "/usr/bin/passwd",
    "/usr/bin/crontab",
    "/usr/bin/ssh",
    "/usr/sbin/sshd",
    "/usr/sbin/ip",
    "/usr/sbin/ifconfig",
    "/usr/lib/systemd/systemd",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d/",
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/",
    "/etc/pam.d/sshd",
    "/etc/pam.d/common-auth",
];

/// Files whose content is never hashed or sent (secrets): size and mtime stand in.
pub const METADATA_ONLY: &[&str] =
    &["/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-"];

/// The most paths one run looks at (after expanding directories).
pub const MAX_PATHS: usize = 4096;
/// The most files taken from one watched directory.
pub const MAX_DIR_FILES: usize = 256;
/// Larger files are not hashed (`hash_skipped`).
pub const MAX_HASH_BYTES: u64 = 256 << 20;
/// The longest accepted path.
const MAX_PATH: usize = 4096;

/// dpkg's verdict on a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpkgVerdict {
    /// The file's MD5 is the one in its package's md5sums list.
    Match,
    /// It is not: the file differs from what the package installed.
    Mismatch,
}

/// One watched file.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileState {
    /// The path as watched (absolute, on the host).
    pub path: String,
    /// False when the file is absent (or not a regular file).
    pub exists: bool,
    /// SHA-256 of the content, hex (`None`: absent, metadata-only, too large or unreadable).
    pub sha256: Option<String>,
    /// Mode bits (permissions, setuid…), octal text.
    pub mode: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// Modification time (seconds), only for metadata-only files (where it stands in for the
    /// content).
    pub mtime: Option<i64>,
    /// Content not hashed because it is secret (`/etc/shadow`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metadata_only: bool,
    /// Content not hashed because it is larger than [`MAX_HASH_BYTES`] or unreadable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hash_skipped: bool,
    /// The Debian package whose md5sums list names the file.
    pub package: Option<String>,
    /// dpkg's checksum verdict (`None`: no package lists it, or not hashed).
    pub dpkg: Option<DpkgVerdict>,
}

/// Result of the `file_integrity` collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIntegrity {
    /// Files sorted by path.
    pub files: Vec<FileState>,
}

/// The `file.changed` event type.
pub const FILE_CHANGED: &str = "file.changed";

fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= MAX_PATH
        && !p.split('/').any(|c| c == "..")
        && !p.chars().any(char::is_control)
}

/// The watched paths from the schedule's parameters (see the module doc). Invalid entries
/// (relative, `..`, control characters) are dropped.
pub fn watched_paths(params: &BTreeMap<String, String>) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',').map(str::trim).filter(|p| valid_path(p)).map(str::to_string).collect()
    };
    let mut paths: Vec<String> = match params.get("paths") {
        Some(list) => split(list),
        None => DEFAULT_PATHS.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(add) = params.get("add") {
        paths.extend(split(add));
    }
    paths.sort();
    paths.dedup();
    paths.truncate(MAX_PATHS);
    paths
}

/// Parses one dpkg `md5sums` list (`<32 hex>  <path without leading />`) into path → md5.
pub fn parse_md5sums(text: &str) -> Vec<(String, [u8; 16])> {
    text.lines()
        .filter_map(|line| {
            let (sum, path) = line.split_once("  ")?;
            let mut md5 = [0u8; 16];
            hex::decode_to_slice(sum.trim(), &mut md5).ok()?;
            let path = format!("/{}", path.trim_start_matches('/'));
            valid_path(&path).then_some((path, md5))
        })
        .collect()
}

/// Under `root`, the host path `p`.
fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// The names a file may have in dpkg's lists: as watched, and where it really is (symlinks
/// resolved within `root`), with the merged-/usr aliases of both (`/bin/x` ↔ `/usr/bin/x`).
fn dpkg_names(root: &Path, p: &str) -> Vec<String> {
    let mut names = vec![p.to_string()];
    if let Ok(real) = std::fs::canonicalize(under(root, p))
        && let Ok(rel) = real.strip_prefix(std::fs::canonicalize(root).unwrap_or(root.into()))
    {
        names.push(format!("/{}", rel.display()));
    }
    let mut out = Vec::new();
    for n in names {
        for (a, b) in [("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib/", "/lib/")] {
            if let Some(rest) = n.strip_prefix(a) {
                out.push(format!("{b}{rest}"));
            } else if let Some(rest) = n.strip_prefix(b) {
                out.push(format!("{a}{rest}"));
            }
        }
        out.push(n);
    }
    out.sort();
    out.dedup();
    out
}

/// Finds, for every wanted name, the package and md5 that dpkg recorded
/// (`root/var/lib/dpkg/info/*.md5sums`).
fn dpkg_lookup(root: &Path, wanted: &BTreeSet<String>) -> BTreeMap<String, (String, [u8; 16])> {
    let mut found = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(under(root, "/var/lib/dpkg/info")) else { return found };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pkg) = name.strip_suffix(".md5sums") else { continue };
        let Some(text) = crate::error::read_bounded(e.path()) else { continue };
        for (path, md5) in parse_md5sums(&text) {
            if wanted.contains(&path) {
                let pkg = pkg.split(':').next().unwrap_or(pkg).to_string();
                found.entry(path).or_insert((pkg, md5));
            }
        }
    }
    found
}

fn hash_file(path: &Path) -> Option<([u8; 32], [u8; 16])> {
    let mut f = std::fs::File::open(path).ok()?;
    let (mut sha, mut md5) = (Sha256::new(), crate::md5::Md5::new());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
    }
    Some((sha.finalize().into(), md5.finish()))
}

/// Expands directory entries (`/etc/sudoers.d/`) into their regular files.
fn expand(root: &Path, paths: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        if let Some(dir) = p.strip_suffix('/') {
            let mut names: Vec<String> = std::fs::read_dir(under(root, dir))
                .map(|it| {
                    it.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .take(MAX_DIR_FILES)
                        .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
                        .filter(|p| valid_path(p))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            out.extend(names);
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    out.truncate(MAX_PATHS);
    out
}

/// Reads the watched files under `root` (`/` on a host; a test root in tests).
pub fn collect_file_integrity_in(
    root: &Path,
    params: &BTreeMap<String, String>,
) -> Result<FileIntegrity, DiscoveryError> {
    let paths = expand(root, &watched_paths(params));
    let names: BTreeMap<&String, Vec<String>> =
        paths.iter().map(|p| (p, dpkg_names(root, p))).collect();
    let wanted: BTreeSet<String> = names.values().flatten().cloned().collect();
    let dpkg = dpkg_lookup(root, &wanted);
    let mut files = Vec::with_capacity(paths.len());
    for p in &paths {
        let mut st = FileState { path: p.clone(), ..FileState::default() };
        let Ok(meta) = std::fs::metadata(under(root, p)) else {
            files.push(st);
            continue;
        };
        if !meta.is_file() {
            files.push(st);
            continue;
        }
        st.exists = true;
        st.mode = Some(format!("{:o}", meta.mode() & 0o7777));
        st.uid = Some(meta.uid());
        st.gid = Some(meta.gid());
        st.size = Some(meta.size());
        let record = names[p].iter().find_map(|n| dpkg.get(n));
        st.package = record.map(|(pkg, _)| pkg.clone());
        if METADATA_ONLY.contains(&p.as_str()) {
            st.metadata_only = true;
            st.mtime = Some(meta.mtime());
        } else if meta.size() > MAX_HASH_BYTES {
            st.hash_skipped = true;
        } else {
            match hash_file(&under(root, p)) {
                Some((sha, md5)) => {
                    st.sha256 = Some(hex::encode(sha));
                    st.dpkg = record.map(|(_, want)| {
                        if *want == md5 { DpkgVerdict::Match } else { DpkgVerdict::Mismatch }
                    });
                }
                None => st.hash_skipped = true,
            }
        }
        files.push(st);
    }
    Ok(FileIntegrity { files })
}

fn describe(f: &FileState) -> (String, String) {
    let pkg = match &f.package {
        Some(p) => format!("package {p}"),
        None => "no package".to_string(),
    };
    let verdict = match f.dpkg {
        Some(DpkgVerdict::Match) => "dpkg's md5sum matches",
        Some(DpkgVerdict::Mismatch) => "dpkg's md5sum does NOT match",
        None => "no dpkg md5sum to compare",
    };
    (pkg, verdict.to_string())
}

fn event(f: &FileState, what: &str) -> HostEvent {
    let (pkg, verdict) = describe(f);
    let mut tags = BTreeMap::new();
    tags.insert("path".to_string(), clip(f.path.clone(), 256));
    if let Some(p) = &f.package {
        tags.insert("package".to_string(), clip(p.clone(), 256));
    }
    tags.insert(
        "dpkg".to_string(),
        match f.dpkg {
            Some(DpkgVerdict::Match) => "match",
            Some(DpkgVerdict::Mismatch) => "mismatch",
            None => "unknown",
        }
        .to_string(),
    );
    let severity = if f.dpkg == Some(DpkgVerdict::Mismatch) { "critical" } else { "warning" };
    HostEvent {
        event_type: FILE_CHANGED.into(),
        severity: severity.into(),
        text: clip(format!("{} {what} ({pkg}; {verdict})", f.path), 4096),
        tags,
    }
}

/// The events between two results (`prev`: `None` for the first result since the nanoprobe
/// started): one `file.changed` per file whose content, metadata or existence changed; on the
/// first result, one per file that differs from its package (dpkg mismatch), since a baseline
/// taken on a replaced binary must not hide it.
pub fn integrity_events(prev: Option<&FileIntegrity>, cur: &FileIntegrity) -> Vec<HostEvent> {
    let Some(prev) = prev else {
        return cur
            .files
            .iter()
            .filter(|f| f.dpkg == Some(DpkgVerdict::Mismatch))
            .map(|f| event(f, "differs from its package"))
            .collect();
    };
    let before: BTreeMap<&str, &FileState> =
        prev.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut out = Vec::new();
    for f in &cur.files {
        let Some(old) = before.get(f.path.as_str()) else { continue }; // newly watched
        if *old == f {
            continue;
        }
        let what = match (old.exists, f.exists) {
            (false, true) => "appeared".to_string(),
            (true, false) => "was removed".to_string(),
            _ => {
                let mut parts = Vec::new();
                if old.sha256 != f.sha256 || old.size != f.size || old.mtime != f.mtime {
                    parts.push("content");
                }
                if old.mode != f.mode {
                    parts.push("mode");
                }
                if old.uid != f.uid || old.gid != f.gid {
                    parts.push("owner");
                }
                if parts.is_empty() {
                    continue; // only the package bookkeeping moved (an upgrade's dpkg lists)
                }
                format!("changed: {}", parts.join(", "))
            }
        };
        out.push(event(f, &what));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(root: &Path, p: &str, content: &[u8]) {
        let p = under(root, p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn params_and_md5sums_parsing() {
        let mut params = BTreeMap::new();
        assert_eq!(watched_paths(&params).len(), DEFAULT_PATHS.len());
        params.insert("paths".into(), "/a, relative,/b/../c,/d\u{1}, /e/".into());
        params.insert("add".into(), "/z".into());
        assert_eq!(watched_paths(&params), ["/a", "/e/", "/z"]);
        let m = parse_md5sums(
            "d41d8cd98f00b204e9800998ecf8427e  usr/bin/ls\nnot hex  x\n0cc1  short\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "/usr/bin/ls");
    }

    #[test]
    fn a_replaced_binary_names_its_package_and_the_dpkg_mismatch() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        w(r, "/usr/bin/ls", b"the real ls");
        w(r, "/etc/shadow", b"root:secret:1::::::");
        w(r, "/etc/sudoers.d/ops", b"ops ALL=(ALL) ALL\n");
        let md5 = hex::encode(crate::md5::md5(b"the real ls"));
        w(r, "/var/lib/dpkg/info/coreutils:amd64.md5sums", format!("{md5}  bin/ls\n").as_bytes());
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        let mut params = BTreeMap::new();
        params.insert("paths".into(), "/bin/ls,/etc/shadow,/etc/sudoers.d/,/nope".into());
        let a = collect_file_integrity_in(r, &params).unwrap();
        let paths: Vec<&str> = a.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/bin/ls", "/etc/shadow", "/etc/sudoers.d/ops", "/nope"]);
        let ls = &a.files[0];
        assert_eq!(ls.package.as_deref(), Some("coreutils"));
        assert_eq!(ls.dpkg, Some(DpkgVerdict::Match));
        let shadow = &a.files[1];
        assert!(shadow.metadata_only && shadow.sha256.is_none() && shadow.mtime.is_some());
        assert!(!a.files[3].exists);
        assert!(integrity_events(None, &a).is_empty(), "a clean baseline raises nothing");
        assert!(integrity_events(Some(&a), &a).is_empty());

        w(r, "/usr/bin/ls", b"a trojan ls");
        let b = collect_file_integrity_in(r, &params).unwrap();
        let e = integrity_events(Some(&a), &b);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].event_type, FILE_CHANGED);
        assert_eq!(e[0].severity, "critical");
        assert_eq!(e[0].tags["package"], "coreutils");
        assert_eq!(e[0].tags["dpkg"], "mismatch");
        assert!(
            e[0].text.contains(
                "/bin/ls changed: content (package coreutils; dpkg's md5sum does NOT match)"
            ),
            "{}",
            e[0].text
        );
        // The first result after a restart still reports the replaced binary.
        assert_eq!(integrity_events(None, &b).len(), 1);
    }
}
