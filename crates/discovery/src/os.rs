//! Operating system facts: `/etc/os-release`, `uname(2)`, hostname and FQDN
//! (best effort, from `/etc/hosts`), `/etc/machine-id`, virtualisation (best
//! effort), and boot time.
//!
//! Uptime changes every second, which would change the content hash on every
//! run; the hashed [`OsInfo`] therefore carries the boot time (`btime` from
//! `/proc/stat`, stable) and [`read_uptime`] gives `/proc/uptime` on demand.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_optional};

/// Result of the os collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    /// All `/etc/os-release` fields (falls back to `/usr/lib/os-release`).
    pub os_release: BTreeMap<String, String>,
    /// `uname -s`.
    pub kernel_name: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// `uname -v`.
    pub kernel_version: String,
    /// `uname -m`.
    pub machine: String,
    /// `gethostname(2)`.
    pub hostname: String,
    /// Fully qualified name, if the hostname has a dot or `/etc/hosts` gives one.
    pub fqdn: Option<String>,
    /// `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// `none`, `docker`, `kvm`, … or `unknown` when unsure.
    pub virtualisation: String,
    /// Boot time in Unix seconds (`btime` in `/proc/stat`).
    pub boot_time_unix: Option<u64>,
}

/// Parses os-release text: `KEY=value`, with double or single quotes and
/// backslash escapes inside double quotes; comments and junk lines skipped.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.insert(key.to_string(), unquote(value.trim()));
    }
    out
}

fn unquote(v: &str) -> String {
    let mut chars = v.chars();
    match chars.next() {
        Some('"') => {
            let mut out = String::new();
            let mut escaped = false;
            for c in chars {
                if escaped {
                    out.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    break;
                } else {
                    out.push(c);
                }
            }
            out
        }
        Some('\'') => chars.take_while(|c| *c != '\'').collect(),
        _ => v.to_string(),
    }
}

/// First dotted name on an `/etc/hosts` line that also names `hostname`.
pub fn fqdn_from_hosts(hosts: &str, hostname: &str) -> Option<String> {
    if hostname.contains('.') {
        return Some(hostname.to_string());
    }
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let found = line
            .split_whitespace()
            .skip(1)
            .find(|n| n.contains('.') && n.split('.').next() == Some(hostname));
        if let Some(f) = found {
            return Some(f.to_string());
        }
    }
    None
}

/// `btime` from `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// First number of `/proc/uptime`, in seconds.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok().filter(|v: &f64| v.is_finite())
}

/// Uptime in seconds from `/proc/uptime`.
pub fn read_uptime() -> Option<f64> {
    read_optional("/proc/uptime").and_then(|t| parse_uptime(&t))
}

/// Evidence for [`classify_virtualisation`], all optional.
#[derive(Clone, Debug, Default)]
pub struct VirtEvidence {
    /// `/sys/class/dmi/id/product_name`.
    pub product_name: Option<String>,
    /// `/sys/class/dmi/id/sys_vendor`.
    pub sys_vendor: Option<String>,
    /// `/proc/1/cgroup`.
    pub pid1_cgroup: Option<String>,
    /// `/.dockerenv` exists.
    pub dockerenv: bool,
    /// `/run/.containerenv` exists (podman).
    pub containerenv: bool,
    /// `/proc/cpuinfo` flags contain `hypervisor`.
    pub cpu_hypervisor_flag: bool,
}

/// Best-effort virtualisation name; containers win over the VM below them.
pub fn classify_virtualisation(e: &VirtEvidence) -> String {
    if e.dockerenv {
        return "docker".into();
    }
    if e.containerenv {
        return "podman".into();
    }
    if let Some(cg) = &e.pid1_cgroup {
        for (needle, name) in
            [("kubepods", "kubernetes"), ("docker", "docker"), ("lxc", "lxc"), ("libpod", "podman")]
        {
            if cg.contains(needle) {
                return name.into();
            }
        }
    }
    let dmi = format!(
        "{} {}",
        e.product_name.as_deref().unwrap_or(""),
        e.sys_vendor.as_deref().unwrap_or("")
    )
    .to_ascii_lowercase();
    for (needle, name) in [
        ("kvm", "kvm"),
        ("qemu", "qemu"),
        ("vmware", "vmware"),
        ("virtualbox", "virtualbox"),
        ("xen", "xen"),
        ("amazon ec2", "amazon"),
        ("google compute engine", "google"),
        ("virtual machine", "hyperv"),
        ("bochs", "bochs"),
        ("parallels", "parallels"),
    ] {
        if dmi.contains(needle) {
            return name.into();
        }
    }
    if e.cpu_hypervisor_flag {
        return "vm".into();
    }
    if !dmi.trim().is_empty() {
        return "none".into();
    }
    "unknown".into()
}

fn os_str(s: &std::ffi::OsStr) -> String {
    s.to_string_lossy().into_owned()
}

/// Reads the OS facts. Only `uname` can fail; everything else is best effort.
pub fn collect_os() -> Result<OsInfo, DiscoveryError> {
    let uts = nix::sys::utsname::uname()
        .map_err(|source| DiscoveryError::Sys { call: "uname", source })?;
    let os_release = read_optional("/etc/os-release")
        .or_else(|| read_optional("/usr/lib/os-release"))
        .map(|t| parse_os_release(&t))
        .unwrap_or_default();
    let hostname =
        nix::unistd::gethostname().map(|h| os_str(&h)).unwrap_or_else(|_| os_str(uts.nodename()));
    let fqdn = fqdn_from_hosts(&read_optional("/etc/hosts").unwrap_or_default(), &hostname);
    let trimmed =
        |p: &str| read_optional(p).map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    let evidence = VirtEvidence {
        product_name: trimmed("/sys/class/dmi/id/product_name"),
        sys_vendor: trimmed("/sys/class/dmi/id/sys_vendor"),
        pid1_cgroup: read_optional("/proc/1/cgroup"),
        dockerenv: Path::new("/.dockerenv").exists(),
        containerenv: Path::new("/run/.containerenv").exists(),
        cpu_hypervisor_flag: read_optional("/proc/cpuinfo").is_some_and(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|w| w == "hypervisor"))
        }),
    };
    Ok(OsInfo {
        os_release,
        kernel_name: os_str(uts.sysname()),
        kernel_release: os_str(uts.release()),
        kernel_version: os_str(uts.version()),
        machine: os_str(uts.machine()),
        hostname,
        fqdn,
        machine_id: trimmed("/etc/machine-id"),
        virtualisation: classify_virtualisation(&evidence),
        boot_time_unix: read_optional("/proc/stat").and_then(|t| parse_btime(&t)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        let text = "# comment\n\
            NAME=\"Debian GNU/Linux\"\n\
            VERSION_ID='12'\n\
            ID=debian\n\
            PRETTY_NAME=\"Say \\\"hi\\\" \\\\ there\"\n\
            HOME_URL=\"https://www.debian.org/\"\n\
            \n\
            not a pair\n\
            BAD KEY=x\n";
        let m = parse_os_release(text);
        assert_eq!(m["NAME"], "Debian GNU/Linux");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["PRETTY_NAME"], "Say \"hi\" \\ there");
        assert_eq!(m["HOME_URL"], "https://www.debian.org/");
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn fqdn_best_effort() {
        let hosts = "127.0.0.1 localhost\n10.0.0.5 web1.example.com web1 # main\n";
        assert_eq!(fqdn_from_hosts(hosts, "web1").as_deref(), Some("web1.example.com"));
        assert_eq!(fqdn_from_hosts(hosts, "db1"), None);
        assert_eq!(fqdn_from_hosts("", "a.b.c").as_deref(), Some("a.b.c"));
    }

    #[test]
    fn btime_and_uptime() {
        assert_eq!(parse_btime("cpu 1 2 3\nbtime 1700000000\n"), Some(1_700_000_000));
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735.47));
        assert_eq!(parse_uptime("nan 1"), None);
    }

    #[test]
    fn virtualisation() {
        let mut e = VirtEvidence::default();
        assert_eq!(classify_virtualisation(&e), "unknown");
        e.sys_vendor = Some("Dell Inc.".into());
        assert_eq!(classify_virtualisation(&e), "none");
        e.product_name = Some("KVM".into());
        assert_eq!(classify_virtualisation(&e), "kvm");
        e.pid1_cgroup = Some("0::/kubepods/besteffort/pod1".into());
        assert_eq!(classify_virtualisation(&e), "kubernetes");
        e.dockerenv = true;
        assert_eq!(classify_virtualisation(&e), "docker");
    }
}
