//! Installed packages: dpkg (parsing `/var/lib/dpkg/status`) and rpm (only if
//! an `rpm` binary is on `PATH`, via `rpm -qa --qf` under a timeout).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_optional};

/// Which package database a package came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    /// Debian dpkg.
    Dpkg,
    /// RPM.
    Rpm,
}

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version string as the manager prints it.
    pub version: String,
    /// Architecture (`amd64`, `x86_64`, `all`, …), if given.
    pub architecture: Option<String>,
    /// Source database.
    pub manager: PackageManager,
}

/// Result of the packages collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packages {
    /// Installed packages, sorted.
    pub packages: Vec<Package>,
}

/// How long `rpm -qa` may run.
pub const RPM_TIMEOUT: Duration = Duration::from_secs(60);

/// Installed packages from the text of `/var/lib/dpkg/status`. Stanzas are
/// separated by blank lines; continuation lines (leading space or tab) belong
/// to the previous field; only `Status: … installed` stanzas count.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut status) = (None, None, None, None);
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Package" => name = Some(value),
                "Version" => version = Some(value),
                "Architecture" => arch = Some(value),
                "Status" => status = Some(value),
                _ => {}
            }
        }
        let installed =
            status.and_then(|s| s.split_whitespace().nth(2)).is_some_and(|s| s == "installed");
        if let (Some(name), Some(version), true) = (name, version, installed) {
            out.push(Package {
                name: name.to_string(),
                version: version.to_string(),
                architecture: arch.map(str::to_string),
                manager: PackageManager::Dpkg,
            });
        }
    }
    out
}

/// The `--qf` format [`parse_rpm_qa`] expects.
pub const RPM_QUERY_FORMAT: &str = "%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n";

/// Parses `rpm -qa --qf "%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n"` output.
pub fn parse_rpm_qa(text: &str) -> Vec<Package> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let name = f.next()?.trim();
            let version = f.next()?.trim();
            let arch = f.next().map(str::trim).filter(|a| !a.is_empty() && *a != "(none)");
            (!name.is_empty()).then(|| Package {
                name: name.to_string(),
                version: version.to_string(),
                architecture: arch.map(str::to_string),
                manager: PackageManager::Rpm,
            })
        })
        .collect()
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(binary)).find(|p| p.is_file())
}

/// Runs `rpm -qa` with a deadline; kills it on timeout.
fn run_rpm(rpm: &PathBuf, timeout: Duration) -> Result<String, DiscoveryError> {
    let command = format!("{} -qa --qf {RPM_QUERY_FORMAT}", rpm.display());
    let err = |reason: String| DiscoveryError::Command { command: command.clone(), reason };
    let mut child = Command::new(rpm)
        .args(["-qa", "--qf", RPM_QUERY_FORMAT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    // Read stdout on a thread so a full pipe cannot block the child.
    let mut stdout = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("timed out after {timeout:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(err(format!("wait failed: {e}"))),
        }
    };
    let out = reader
        .join()
        .map_err(|_| err("reader thread panicked".into()))?
        .map_err(|e| err(format!("reading output: {e}")))?;
    if !status.success() {
        return Err(err(format!("exited with {status}")));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads dpkg and (if present) rpm package lists. Neither being present is
/// not an error: the list is empty.
pub fn collect_packages() -> Result<Packages, DiscoveryError> {
    let mut packages =
        read_optional("/var/lib/dpkg/status").map(|t| parse_dpkg_status(&t)).unwrap_or_default();
    if let Some(rpm) = find_on_path("rpm") {
        packages.extend(parse_rpm_qa(&run_rpm(&rpm, RPM_TIMEOUT)?));
    }
    packages.sort();
    packages.dedup();
    Ok(Packages { packages })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: libc6\n\
Status: install ok installed\n\
Priority: optional\n\
Architecture: amd64\n\
Multi-Arch: same\n\
Version: 2.36-9+deb12u4\n\
Depends: libgcc-s1\n\
Description: GNU C Library: Shared libraries\n \
Contains the standard libraries that are used by nearly all programs on\n \
the system.\n\
 .\n \
Package: fake-continuation-must-be-ignored\n\
\n\
Package: oldpkg\n\
Status: deinstall ok config-files\n\
Architecture: all\n\
Version: 1.0\n\
\n\
Package: purged\n\
Status: purge ok not-installed\n\
Architecture: amd64\n\
\n\
Package: tzdata\n\
Status: install ok installed\n\
Architecture: all\n\
Version: 2024a-0+deb12u1\n\
Conffiles:\n /etc/timezone abc123\n";

    #[test]
    fn dpkg_status_stanzas() {
        let p = parse_dpkg_status(STATUS);
        let names: Vec<(&str, &str, Option<&str>)> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.architecture.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("libc6", "2.36-9+deb12u4", Some("amd64")),
                ("tzdata", "2024a-0+deb12u1", Some("all")),
            ]
        );
    }

    #[test]
    fn rpm_lines() {
        let p = parse_rpm_qa("bash\t5.1.8-6.el9\tx86_64\ngpg-pubkey\tabc-def\t(none)\n\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].architecture.as_deref(), Some("x86_64"));
        assert_eq!(p[1].architecture, None);
    }
}
