//! Pure derivation: one collector's JSON payload → the graph rows it owns for one node, and the
//! difference between two such row sets (for the history table). No SQL here.
//!
//! Every row type has a human-readable [`Row::label`] that names it completely; two rows are the
//! same iff their labels are equal, so a changed attribute shows up in the history as the old
//! row removed and the new one added.

use std::collections::BTreeSet;
use std::net::IpAddr;

use assim_discovery::{
    L2_COLLECTOR,
    hw::{CpuInfo, MemInfo},
    interfaces::Interfaces,
    neighbours::Neighbours,
    os::OsInfo,
    packages::Packages,
    sockets::{Protocol, SocketEntry, Sockets},
    sshkeys::SshHostKeys,
};
use serde::Deserialize;

/// A payload that does not have the shape its collector name promises.
#[derive(Debug, thiserror::Error)]
#[error("discovery result {collector:?} is not in the expected format: {source}")]
pub struct DeriveError {
    pub collector: String,
    #[source]
    pub source: serde_json::Error,
}

/// A graph row: something with a complete human-readable identity.
pub trait Row {
    /// The history kind, e.g. `nic`.
    const KIND: &'static str;
    /// Names the row completely (all attributes that matter).
    fn label(&self) -> String;
}

/// `/etc/os-release` and `uname` facts of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsRow {
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel: String,
    pub machine: String,
    pub fqdn: Option<String>,
    pub machine_id: Option<String>,
    pub virtualisation: String,
    pub boot_time_unix: Option<u64>,
}

/// CPU facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuRow {
    pub model: Option<String>,
    pub logical_cpus: u64,
}

/// Memory facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRow {
    pub mem_total_kib: Option<u64>,
    pub swap_total_kib: Option<u64>,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicRow {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub speed_mbps: Option<u32>,
    pub duplex: Option<String>,
    pub state: Option<String>,
}

/// Where an address is meaningful. Only `global` and `link` addresses identify a host to others;
/// loopback (`host`) addresses exist on every host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Host,
    Link,
    Global,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Host => "host",
            Scope::Link => "link",
            Scope::Global => "global",
        }
    }

    pub fn of(ip: IpAddr) -> Scope {
        match ip {
            IpAddr::V4(v4) if v4.is_loopback() => Scope::Host,
            IpAddr::V4(v4) if v4.is_link_local() => Scope::Link,
            IpAddr::V6(v6) if v6.is_loopback() => Scope::Host,
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Scope::Link,
            _ => Scope::Global,
        }
    }
}

/// An address on a NIC, with the subnet it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRow {
    pub nic: String,
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// Network address and prefix, e.g. `192.0.2.0/24`.
    pub subnet: String,
    pub scope: Scope,
}

/// An entry of the host's ARP cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpRow {
    pub interface: String,
    pub ip: IpAddr,
    pub mac: String,
}

/// A process that owns a listening or connected socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRow {
    pub pid: u32,
    pub exe: Option<String>,
    pub cmdline: String,
    pub user: Option<String>,
}

/// A listening socket: `protocol ip:port` and its process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    pub protocol: &'static str,
    /// The bound address; `0.0.0.0` or `::` for a wildcard listener.
    pub ip: IpAddr,
    pub port: u16,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub cmdline: String,
    pub user: Option<String>,
}

/// An established TCP connection. `inbound` when its local end is one of the host's own
/// listeners (the server side of someone else's dependency).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRow {
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub inbound: bool,
}

/// An installed package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageRow {
    pub name: String,
    pub version: String,
    pub arch: Option<String>,
    pub manager: String,
}

/// An SSH host key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshKeyRow {
    pub key_type: String,
    pub fingerprint: String,
    pub key: String,
    pub file: String,
}

/// One LLDP/CDP neighbour heard on a host NIC: the switch, its port, and the wire between — the
/// shared parser's own type (`assim_discovery::wiring`), the same rows the CMA's rings use.
pub type WiringRow = assim_discovery::wiring::L2Link;

impl Row for OsRow {
    const KIND: &'static str = "os";
    fn label(&self) -> String {
        format!(
            "{} {} kernel {} {} virt {} machine-id {} boot {}",
            self.os_name.as_deref().unwrap_or("?"),
            self.fqdn.as_deref().unwrap_or("-"),
            self.kernel,
            self.machine,
            self.virtualisation,
            self.machine_id.as_deref().unwrap_or("-"),
            self.boot_time_unix.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
        )
    }
}

impl Row for CpuRow {
    const KIND: &'static str = "cpu";
    fn label(&self) -> String {
        format!("{} x {}", self.logical_cpus, self.model.as_deref().unwrap_or("?"))
    }
}

impl Row for MemoryRow {
    const KIND: &'static str = "memory";
    fn label(&self) -> String {
        let f = |v: Option<u64>| v.map(|v| format!("{v} KiB")).unwrap_or_else(|| "?".into());
        format!("mem {} swap {}", f(self.mem_total_kib), f(self.swap_total_kib))
    }
}

impl Row for NicRow {
    const KIND: &'static str = "nic";
    fn label(&self) -> String {
        let mut s = self.name.clone();
        if let Some(m) = &self.mac {
            s.push_str(&format!(" {m}"));
        }
        if let Some(m) = self.mtu {
            s.push_str(&format!(" mtu {m}"));
        }
        if let Some(v) = self.speed_mbps {
            s.push_str(&format!(" {v} Mb/s"));
        }
        if let Some(d) = &self.duplex {
            s.push_str(&format!(" {d}"));
        }
        if let Some(st) = &self.state {
            s.push_str(&format!(" {st}"));
        }
        s
    }
}

impl Row for IpRow {
    const KIND: &'static str = "ip";
    fn label(&self) -> String {
        format!("{}/{} on {}", self.ip, self.prefix_len, self.nic)
    }
}

impl Row for ArpRow {
    const KIND: &'static str = "arp";
    fn label(&self) -> String {
        format!("{} at {} on {}", self.ip, self.mac, self.interface)
    }
}

impl Row for ProcessRow {
    const KIND: &'static str = "process";
    fn label(&self) -> String {
        format!("pid {} {}", self.pid, self.exe.as_deref().unwrap_or(&self.cmdline))
    }
}

impl Row for ServiceRow {
    const KIND: &'static str = "service";
    fn label(&self) -> String {
        format!(
            "{} {} {}",
            self.protocol,
            std::net::SocketAddr::new(self.ip, self.port),
            self.exe.as_deref().unwrap_or("?")
        )
    }
}

impl Row for ConnectionRow {
    const KIND: &'static str = "connection";
    fn label(&self) -> String {
        format!(
            "{} {} -> {}",
            if self.inbound { "in" } else { "out" },
            std::net::SocketAddr::new(self.local_ip, self.local_port),
            std::net::SocketAddr::new(self.remote_ip, self.remote_port)
        )
    }
}

impl Row for PackageRow {
    const KIND: &'static str = "package";
    fn label(&self) -> String {
        format!("{} {} {}", self.name, self.version, self.arch.as_deref().unwrap_or("-"))
    }
}

impl Row for SshKeyRow {
    const KIND: &'static str = "ssh_key";
    fn label(&self) -> String {
        format!("{} {}", self.key_type, self.fingerprint)
    }
}

impl Row for WiringRow {
    const KIND: &'static str = "switch_port";
    fn label(&self) -> String {
        format!(
            "{} -> {} port {} ({}{})",
            self.nic,
            self.system_name.as_deref().unwrap_or(&self.chassis_id),
            self.port_id,
            self.protocol,
            self.vlan.as_deref().map(|v| format!(", vlan {v}")).unwrap_or_default()
        )
    }
}

/// The rows one collector result yields. Only the fields of that collector are filled; the
/// others stay empty (and are not touched in the store).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    pub os: Vec<OsRow>,
    pub cpu: Vec<CpuRow>,
    pub memory: Vec<MemoryRow>,
    pub nics: Vec<NicRow>,
    pub ips: Vec<IpRow>,
    pub arp: Vec<ArpRow>,
    pub processes: Vec<ProcessRow>,
    pub services: Vec<ServiceRow>,
    pub connections: Vec<ConnectionRow>,
    pub packages: Vec<PackageRow>,
    pub ssh_keys: Vec<SshKeyRow>,
    pub wiring: Vec<WiringRow>,
}

/// Which part of the graph a collector owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Os,
    Cpu,
    Memory,
    Interfaces,
    Neighbours,
    Sockets,
    Packages,
    SshKeys,
    L2,
}

impl Part {
    /// The part a collector name feeds, if any (mounts, for instance, stay in the raw results).
    pub fn of(collector: &str) -> Option<Part> {
        Some(match collector {
            "os" => Part::Os,
            "cpu" => Part::Cpu,
            "memory" => Part::Memory,
            "interfaces" => Part::Interfaces,
            "neighbours" => Part::Neighbours,
            "sockets" => Part::Sockets,
            "packages" => Part::Packages,
            "ssh_host_keys" => Part::SshKeys,
            L2_COLLECTOR => Part::L2,
            _ => return None,
        })
    }
}

/// A change of one kind of row: labels added and removed, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindDiff {
    pub kind: &'static str,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Labels in `new` but not `old` and vice versa.
pub fn diff_rows<T: Row>(old: &[T], new: &[T]) -> KindDiff {
    let old: BTreeSet<String> = old.iter().map(Row::label).collect();
    let new: BTreeSet<String> = new.iter().map(Row::label).collect();
    KindDiff {
        kind: T::KIND,
        added: new.difference(&old).cloned().collect(),
        removed: old.difference(&new).cloned().collect(),
    }
}

impl Derived {
    /// Per kind of row this part owns, what changed from `old` to `self`; kinds without change
    /// are left out. Connections churn with every ephemeral port and are not recorded; the
    /// dependency edges they produce are.
    pub fn diff(&self, old: &Derived, part: Part) -> Vec<KindDiff> {
        let all = match part {
            Part::Os => vec![diff_rows(&old.os, &self.os)],
            Part::Cpu => vec![diff_rows(&old.cpu, &self.cpu)],
            Part::Memory => vec![diff_rows(&old.memory, &self.memory)],
            Part::Interfaces => {
                vec![diff_rows(&old.nics, &self.nics), diff_rows(&old.ips, &self.ips)]
            }
            Part::Neighbours => vec![diff_rows(&old.arp, &self.arp)],
            Part::Sockets => vec![
                diff_rows(&old.services, &self.services),
                diff_rows(&old.processes, &self.processes),
            ],
            Part::Packages => vec![diff_rows(&old.packages, &self.packages)],
            Part::SshKeys => vec![diff_rows(&old.ssh_keys, &self.ssh_keys)],
            Part::L2 => vec![diff_rows(&old.wiring, &self.wiring)],
        };
        all.into_iter().filter(|d| !d.added.is_empty() || !d.removed.is_empty()).collect()
    }
}

pub use assim_discovery::wiring::{canonical_ip, subnet_of};

/// Whether a listener bound to `listen` accepts connections addressed to `dest`.
pub fn listener_accepts(listen: IpAddr, dest: IpAddr) -> bool {
    let dest = canonical_ip(dest);
    match canonical_ip(listen) {
        IpAddr::V4(l) if l.is_unspecified() => dest.is_ipv4(),
        // `::` is dual-stack unless IPV6_V6ONLY, which /proc does not show; assume the default.
        IpAddr::V6(l) if l.is_unspecified() => true,
        l => l == dest,
    }
}

fn parse<'a, T: Deserialize<'a>>(collector: &str, payload: &'a str) -> Result<T, DeriveError> {
    serde_json::from_str(payload)
        .map_err(|source| DeriveError { collector: collector.to_string(), source })
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn sorted_dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

/// Derives the rows of one collector result. Unknown collectors yield nothing.
pub fn derive(collector: &str, payload: &str) -> Result<Derived, DeriveError> {
    let mut d = Derived::default();
    let Some(part) = Part::of(collector) else { return Ok(d) };
    match part {
        Part::Os => {
            let os: OsInfo = parse(collector, payload)?;
            d.os.push(OsRow {
                os_name: os
                    .os_release
                    .get("PRETTY_NAME")
                    .or_else(|| os.os_release.get("NAME"))
                    .cloned(),
                os_version: os.os_release.get("VERSION_ID").cloned(),
                kernel: format!("{} {}", os.kernel_name, os.kernel_release).trim().to_string(),
                machine: os.machine,
                fqdn: os.fqdn,
                machine_id: os.machine_id,
                virtualisation: os.virtualisation,
                boot_time_unix: os.boot_time_unix,
            });
        }
        Part::Cpu => {
            let c: CpuInfo = parse(collector, payload)?;
            d.cpu.push(CpuRow { model: c.model, logical_cpus: c.logical_cpus as u64 });
        }
        Part::Memory => {
            let m: MemInfo = parse(collector, payload)?;
            d.memory.push(MemoryRow {
                mem_total_kib: m.mem_total_kib,
                swap_total_kib: m.swap_total_kib,
            });
        }
        Part::Interfaces => {
            let ifs: Interfaces = parse(collector, payload)?;
            for i in ifs.interfaces {
                for a in &i.addresses {
                    let ip = canonical_ip(a.address);
                    d.ips.push(IpRow {
                        nic: i.name.clone(),
                        ip,
                        prefix_len: a.prefix_len,
                        subnet: subnet_of(ip, a.prefix_len),
                        scope: Scope::of(ip),
                    });
                }
                d.nics.push(NicRow {
                    name: i.name,
                    mac: non_empty(i.mac.map(|m| m.to_ascii_lowercase())),
                    mtu: i.mtu,
                    speed_mbps: i.speed_mbps,
                    duplex: i.duplex,
                    state: i.operstate,
                });
            }
            d.nics.sort_by(|a, b| a.name.cmp(&b.name));
            d.nics.dedup_by(|a, b| a.name == b.name);
            d.ips.sort_by(|a, b| (&a.nic, a.ip).cmp(&(&b.nic, b.ip)));
            d.ips.dedup_by(|a, b| a.nic == b.nic && a.ip == b.ip);
        }
        Part::Neighbours => {
            let n: Neighbours = parse(collector, payload)?;
            let mut arp: Vec<(String, IpAddr, String)> = n
                .neighbours
                .into_iter()
                .map(|n| (n.interface, canonical_ip(n.ip), n.mac.to_ascii_lowercase()))
                .collect();
            arp = sorted_dedup(arp);
            arp.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            d.arp =
                arp.into_iter().map(|(interface, ip, mac)| ArpRow { interface, ip, mac }).collect();
        }
        Part::Sockets => derive_sockets(parse(collector, payload)?, &mut d),
        Part::Packages => {
            let p: Packages = parse(collector, payload)?;
            let mut rows: Vec<PackageRow> = p
                .packages
                .into_iter()
                .map(|p| PackageRow {
                    manager: serde_json::to_value(p.manager)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    name: p.name,
                    version: p.version,
                    arch: p.architecture,
                })
                .collect();
            rows.sort_by(|a, b| {
                (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version))
            });
            rows.dedup_by(|a, b| a.name == b.name && a.arch == b.arch && a.version == b.version);
            d.packages = rows;
        }
        Part::SshKeys => {
            let k: SshHostKeys = parse(collector, payload)?;
            let mut rows: Vec<SshKeyRow> = k
                .keys
                .into_iter()
                .map(|k| SshKeyRow {
                    key_type: k.key_type,
                    fingerprint: k.fingerprint,
                    key: k.key,
                    file: k.file,
                })
                .collect();
            rows.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
            rows.dedup_by(|a, b| a.fingerprint == b.fingerprint);
            d.ssh_keys = rows;
        }
        Part::L2 => {
            // The rules are shared with the CMA's rings (`assim_discovery::wiring`).
            let links = assim_discovery::wiring::l2_links(payload)
                .map_err(|source| DeriveError { collector: collector.to_string(), source })?;
            d.wiring = links;
        }
    }
    Ok(d)
}

fn cmdline(e: &SocketEntry) -> String {
    e.owner.as_ref().map(|o| o.cmdline.join(" ")).unwrap_or_default()
}

fn derive_sockets(s: Sockets, d: &mut Derived) {
    let mut processes = std::collections::BTreeMap::new();
    for e in s.listening.iter().chain(&s.established) {
        if let Some(o) = &e.owner {
            processes.entry(o.pid).or_insert_with(|| ProcessRow {
                pid: o.pid,
                exe: o.exe.clone(),
                cmdline: o.cmdline.join(" "),
                user: e.user.clone(),
            });
        }
    }
    d.processes = processes.into_values().collect();
    let mut services: Vec<ServiceRow> = s
        .listening
        .iter()
        .map(|e| ServiceRow {
            protocol: match e.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            },
            ip: canonical_ip(e.local.ip()),
            port: e.local.port(),
            pid: e.owner.as_ref().map(|o| o.pid),
            exe: e.owner.as_ref().and_then(|o| o.exe.clone()),
            cmdline: cmdline(e),
            user: e.user.clone(),
        })
        .collect();
    // Several sockets on one address (SO_REUSEPORT, pre-fork servers): keep the lowest pid.
    services.sort_by(|a, b| {
        (a.protocol, a.ip, a.port, a.pid.is_none(), a.pid).cmp(&(
            b.protocol,
            b.ip,
            b.port,
            b.pid.is_none(),
            b.pid,
        ))
    });
    services.dedup_by(|a, b| a.protocol == b.protocol && a.ip == b.ip && a.port == b.port);
    let tcp_listeners: Vec<(IpAddr, u16)> =
        services.iter().filter(|s| s.protocol == "tcp").map(|s| (s.ip, s.port)).collect();
    let mut conns: Vec<ConnectionRow> = s
        .established
        .iter()
        .filter(|e| e.protocol == Protocol::Tcp)
        .map(|e| {
            let local_ip = canonical_ip(e.local.ip());
            ConnectionRow {
                local_ip,
                local_port: e.local.port(),
                remote_ip: canonical_ip(e.remote.ip()),
                remote_port: e.remote.port(),
                pid: e.owner.as_ref().map(|o| o.pid),
                exe: e.owner.as_ref().and_then(|o| o.exe.clone()),
                inbound: tcp_listeners
                    .iter()
                    .any(|(ip, port)| *port == e.local.port() && listener_accepts(*ip, local_ip)),
            }
        })
        // Both ends on this host (loopback): not an edge between hosts.
        .filter(|c| Scope::of(c.remote_ip) != Scope::Host)
        .collect();
    conns.sort_by(|a, b| {
        (a.local_ip, a.local_port, a.remote_ip, a.remote_port).cmp(&(
            b.local_ip,
            b.local_port,
            b.remote_ip,
            b.remote_port,
        ))
    });
    conns.dedup_by(|a, b| {
        (a.local_ip, a.local_port, a.remote_ip, a.remote_port)
            == (b.local_ip, b.local_port, b.remote_ip, b.remote_port)
    });
    d.services = services;
    d.connections = conns;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sockets_json() -> String {
        json!({
            "listening": [
                {"protocol": "tcp", "local": "0.0.0.0:22", "remote": "0.0.0.0:0", "uid": 0,
                 "user": "root", "inode": 10,
                 "owner": {"pid": 500, "exe": "/usr/sbin/sshd", "cmdline": ["sshd", "-D"]}},
                {"protocol": "tcp", "local": "0.0.0.0:22", "remote": "0.0.0.0:0", "uid": 0,
                 "user": "root", "inode": 11,
                 "owner": {"pid": 400, "exe": "/usr/sbin/sshd", "cmdline": ["sshd", "-D"]}},
                {"protocol": "tcp", "local": "[::ffff:127.0.0.1]:5432", "remote": "[::]:0",
                 "uid": 105, "user": "postgres", "inode": 12, "owner": null},
                {"protocol": "udp", "local": "192.0.2.5:53", "remote": "0.0.0.0:0", "uid": 0,
                 "user": "root", "inode": 13,
                 "owner": {"pid": 600, "exe": "/usr/sbin/named", "cmdline": ["named"]}}
            ],
            "established": [
                {"protocol": "tcp", "local": "192.0.2.5:22", "remote": "198.51.100.9:50000",
                 "uid": 0, "user": "root", "inode": 20,
                 "owner": {"pid": 700, "exe": "/usr/sbin/sshd", "cmdline": ["sshd: alice"]}},
                {"protocol": "tcp", "local": "[::ffff:192.0.2.5]:41000",
                 "remote": "[::ffff:192.0.2.7]:5432", "uid": 1000, "user": "app", "inode": 21,
                 "owner": {"pid": 800, "exe": "/usr/bin/app", "cmdline": ["app", "--db"]}},
                {"protocol": "tcp", "local": "127.0.0.1:41001", "remote": "127.0.0.1:5432",
                 "uid": 1000, "user": "app", "inode": 22, "owner": null}
            ]
        })
        .to_string()
    }

    #[test]
    fn sockets_give_services_processes_and_connections() {
        let d = derive("sockets", &sockets_json()).unwrap();
        let labels: Vec<String> = d.services.iter().map(Row::label).collect();
        assert_eq!(
            labels,
            vec![
                "tcp 0.0.0.0:22 /usr/sbin/sshd",
                "tcp 127.0.0.1:5432 ?",
                "udp 192.0.2.5:53 /usr/sbin/named"
            ]
        );
        // Of two sockets on one address the lowest pid wins.
        assert_eq!(d.services[0].pid, Some(400));
        assert_eq!(d.services[0].cmdline, "sshd -D");
        assert_eq!(d.services[0].user.as_deref(), Some("root"));
        // The accepted ssh session is inbound; the app's database connection is outbound and
        // its mapped IPv4 addresses are plain IPv4; the loopback connection is dropped.
        assert_eq!(d.connections.len(), 2);
        let out = d.connections.iter().find(|c| !c.inbound).unwrap();
        assert_eq!(out.remote_ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(out.remote_port, 5432);
        assert_eq!(out.exe.as_deref(), Some("/usr/bin/app"));
        assert!(d.connections.iter().any(|c| c.inbound && c.local_port == 22));
        let pids: Vec<u32> = d.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![400, 500, 600, 700, 800]);
    }

    #[test]
    fn interfaces_give_nics_ips_and_subnets() {
        let payload = json!({
            "interfaces": [
                {"name": "eth0", "mac": "02:AA:BB:CC:DD:01", "mtu": 1500, "operstate": "up",
                 "speed_mbps": 10000, "duplex": "full",
                 "addresses": [{"address": "192.0.2.5", "prefix_len": 24},
                               {"address": "2001:db8:1::5", "prefix_len": 64},
                               {"address": "fe80::1", "prefix_len": 64}]},
                {"name": "lo", "mac": "00:00:00:00:00:00", "mtu": 65536, "operstate": "unknown",
                 "addresses": [{"address": "127.0.0.1", "prefix_len": 8}]}
            ],
            "default_gateways": []
        })
        .to_string();
        let d = derive("interfaces", &payload).unwrap();
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.nics[0].label(), "eth0 02:aa:bb:cc:dd:01 mtu 1500 10000 Mb/s full up");
        let ips: Vec<(String, &str, &str)> =
            d.ips.iter().map(|i| (i.ip.to_string(), i.subnet.as_str(), i.scope.name())).collect();
        assert_eq!(
            ips,
            vec![
                ("192.0.2.5".to_string(), "192.0.2.0/24", "global"),
                ("2001:db8:1::5".to_string(), "2001:db8:1::/64", "global"),
                ("fe80::1".to_string(), "fe80::/64", "link"),
                ("127.0.0.1".to_string(), "127.0.0.0/8", "host"),
            ]
        );
    }

    #[test]
    fn subnets_and_listeners() {
        assert_eq!(subnet_of("10.1.2.3".parse().unwrap(), 0), "0.0.0.0/0");
        assert_eq!(subnet_of("10.1.2.3".parse().unwrap(), 32), "10.1.2.3/32");
        assert_eq!(subnet_of("10.1.2.3".parse().unwrap(), 99), "10.1.2.3/32");
        assert_eq!(subnet_of("10.1.2.3".parse().unwrap(), 12), "10.0.0.0/12");
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(listener_accepts("0.0.0.0".parse().unwrap(), v4));
        assert!(!listener_accepts("0.0.0.0".parse().unwrap(), v6));
        assert!(listener_accepts("::".parse().unwrap(), v4));
        assert!(listener_accepts("::".parse().unwrap(), v6));
        assert!(listener_accepts("::ffff:10.0.0.1".parse().unwrap(), v4));
        assert!(!listener_accepts("10.0.0.2".parse().unwrap(), v4));
    }

    #[test]
    fn l2_neighbors_are_lenient() {
        let payload = json!({"neighbors": [
            {"interface": "eth0", "mac": "02:00:00:00:00:01", "protocol": "LLDP",
             "chassis_id": "00:11:22:33:44:55", "port_id": "swp7", "port_description": "uplink",
             "system_name": "tor1", "system_description": "Cumulus", "platform": null,
             "capabilities": ["bridge", {"name": "router", "enabled": true}],
             "management_addresses": [{"address": "192.0.2.250"}], "vlan": 42,
             "something_new": true},
            {"interface": "eth0", "protocol": "cdp", "chassis_id": "tor1", "port_id": "swp7",
             "vlan": null},
            {"interface": "eth1", "protocol": "lldp", "chassis_id": "", "port_id": "x"}
        ]})
        .to_string();
        let d = derive(L2_COLLECTOR, &payload).unwrap();
        assert_eq!(d.wiring.len(), 2, "the entry without a chassis id is dropped");
        let w = &d.wiring[1];
        assert_eq!(w.protocol, "lldp");
        assert_eq!(w.vlan.as_deref(), Some("42"));
        assert_eq!(w.capabilities, vec!["bridge", "router"]);
        assert_eq!(w.management_addresses, vec!["192.0.2.250"]);
        assert_eq!(w.label(), "eth0 -> tor1 port swp7 (lldp, vlan 42)");
        assert_eq!(d.wiring[0].vlan, None);
        assert_eq!(d.wiring[0].mac, None);
    }

    #[test]
    fn packages_keys_os_and_diff() {
        let old = derive(
            "packages",
            r#"{"packages":[{"name":"openssl","version":"3.0.1","architecture":"amd64","manager":"dpkg"},
                            {"name":"bash","version":"5.2","architecture":"amd64","manager":"dpkg"}]}"#,
        )
        .unwrap();
        let new = derive(
            "packages",
            r#"{"packages":[{"name":"openssl","version":"3.0.2","architecture":"amd64","manager":"dpkg"},
                            {"name":"bash","version":"5.2","architecture":"amd64","manager":"dpkg"}]}"#,
        )
        .unwrap();
        assert_eq!(new.packages[1].manager, "dpkg");
        let diff = new.diff(&old, Part::Packages);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].kind, "package");
        assert_eq!(diff[0].added, vec!["openssl 3.0.2 amd64"]);
        assert_eq!(diff[0].removed, vec!["openssl 3.0.1 amd64"]);
        assert!(new.diff(&new, Part::Packages).is_empty());

        let os = derive(
            "os",
            r#"{"os_release":{"PRETTY_NAME":"Debian GNU/Linux 12 (bookworm)","VERSION_ID":"12"},
                "kernel_name":"Linux","kernel_release":"6.1.0","kernel_version":"v1","machine":"x86_64",
                "hostname":"web1","fqdn":"web1.example.net","machine_id":"abc","virtualisation":"kvm",
                "boot_time_unix":1700000000}"#,
        )
        .unwrap();
        assert_eq!(os.os[0].os_name.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(os.os[0].kernel, "Linux 6.1.0");

        let keys = derive(
            "ssh_host_keys",
            r#"{"keys":[{"file":"/etc/ssh/ssh_host_ed25519_key.pub","key_type":"ssh-ed25519",
                         "key":"AAAA","fingerprint":"SHA256:xyz"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.ssh_keys[0].label(), "ssh-ed25519 SHA256:xyz");
    }

    #[test]
    fn bad_payloads_are_errors_unknown_collectors_nothing() {
        let e = derive("sockets", r#"{"listening": 5}"#).unwrap_err();
        assert!(e.to_string().contains("\"sockets\""), "{e}");
        assert_eq!(derive("mounts", "{}").unwrap(), Derived::default());
        assert_eq!(derive("something-new", "[1,2]").unwrap(), Derived::default());
    }

    #[test]
    fn arp_rows() {
        let d = derive(
            "neighbours",
            r#"{"neighbours":[{"interface":"eth0","ip":"192.0.2.1","mac":"02:FC:00:00:00:05"}]}"#,
        )
        .unwrap();
        assert_eq!(d.arp[0].label(), "192.0.2.1 at 02:fc:00:00:00:05 on eth0");
    }
}
