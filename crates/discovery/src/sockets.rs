//! Sockets: listening TCP/UDP sockets and established TCP connections from
//! `/proc/net/{tcp,tcp6,udp,udp6}`, with the owning process found by matching
//! socket inodes against the `socket:[inode]` links in `/proc/<pid>/fd/`.
//!
//! Processes that cannot be read (other users, raced exits) leave their
//! sockets without an owner; that is never an error.
//!
//! The result carries every connection (the CMA derives dependencies from them), but its
//! content hash covers only [`Sockets::stable_view`]: the listeners and the service-level view
//! of the connections, without ephemeral ports, inodes or pids. So a busy host whose clients
//! come and go on new ports sends a new result only when a listener, a dependency (program →
//! remote address and service port) or a client host of one of its services changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_optional, read_text};
use crate::interfaces::parse_hex_ipv4;

/// Transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One line of `/proc/net/{tcp,udp}[6]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSocket {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Kernel state number (`0A` = TCP LISTEN, `01` = ESTABLISHED, `07` = CLOSE).
    pub state: u8,
    /// Owning uid as the kernel recorded it.
    pub uid: u32,
    /// Socket inode (0 for sockets in TIME_WAIT and the like).
    pub inode: u64,
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_CLOSE: u8 = 0x07;
const TCP_LISTEN: u8 = 0x0A;

/// The process that holds a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessOwner {
    /// Lowest pid holding the socket (children often inherit listeners).
    pub pid: u32,
    /// `readlink /proc/<pid>/exe`, if readable.
    pub exe: Option<String>,
    /// Command line, split at NULs.
    pub cmdline: Vec<String>,
}

/// A socket with its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketEntry {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Local end.
    pub local: SocketAddr,
    /// Remote end (unspecified for listeners).
    pub remote: SocketAddr,
    /// Socket owner uid.
    pub uid: u32,
    /// User name for `uid`, if it resolves.
    pub user: Option<String>,
    /// Socket inode.
    pub inode: u64,
    /// Owning process, when readable.
    pub owner: Option<ProcessOwner>,
}

/// Result of the sockets collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sockets {
    /// TCP LISTEN sockets and unconnected bound UDP sockets, sorted.
    pub listening: Vec<SocketEntry>,
    /// Established TCP connections, sorted.
    pub established: Vec<SocketEntry>,
}

/// What an operator cares about in a [`Sockets`] result: its content hash covers this only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StableView {
    /// Listeners: protocol, address, user and program (not the inode or the pid).
    pub listening: std::collections::BTreeSet<StableListener>,
    /// Outbound connections as dependencies: program → remote address and service port.
    pub outbound: std::collections::BTreeSet<(Option<String>, IpAddr, u16)>,
    /// Inbound connections as clients of a service: local service port ← remote host.
    pub inbound: std::collections::BTreeSet<(u16, IpAddr)>,
}

/// One listener in the [`StableView`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct StableListener {
    pub protocol: Protocol,
    pub local: SocketAddr,
    pub uid: u32,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
}

impl Sockets {
    /// The result as the collector sends it: every socket in the payload, the hash over
    /// [`Sockets::stable_view`] only.
    pub fn to_discovery(&self) -> Result<crate::collector::Discovery, DiscoveryError> {
        Ok(crate::collector::Discovery {
            name: "sockets".to_string(),
            hash: crate::hash::try_content_hash(&self.stable_view())?,
            payload: serde_json::to_value(self)?,
        })
    }

    /// The stable part of this result (see the module doc).
    pub fn stable_view(&self) -> StableView {
        let mut v = StableView::default();
        let mut tcp_ports = std::collections::BTreeSet::new();
        for e in &self.listening {
            if e.protocol == Protocol::Tcp {
                tcp_ports.insert(e.local.port());
            }
            v.listening.insert(StableListener {
                protocol: e.protocol,
                local: e.local,
                uid: e.uid,
                exe: e.owner.as_ref().and_then(|o| o.exe.clone()),
                cmdline: e.owner.as_ref().map(|o| o.cmdline.clone()).unwrap_or_default(),
            });
        }
        for e in &self.established {
            if tcp_ports.contains(&e.local.port()) {
                v.inbound.insert((e.local.port(), e.remote.ip()));
            } else {
                let exe = e.owner.as_ref().and_then(|o| o.exe.clone());
                v.outbound.insert((exe, e.remote.ip(), e.remote.port()));
            }
        }
        v
    }
}

/// An IPv6 address as `/proc/net/tcp6` prints it: four native-endian 32-bit
/// words, each `%08X`.
pub fn parse_hex_ipv6_words(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let w = u32::from_str_radix(&hex[8 * i..8 * i + 8], 16).ok()?;
        bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

/// `ADDR:PORT` with the address in `/proc/net` hex and the port in host order.
pub fn parse_hex_socket_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(parse_hex_ipv4(addr)?),
        32 => IpAddr::V6(parse_hex_ipv6_words(addr)?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// All well-formed lines of a `/proc/net/{tcp,udp}[6]` table.
pub fn parse_proc_net(text: &str) -> Vec<RawSocket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote), Ok(state), Ok(uid), Ok(inode)) = (
            parse_hex_socket_addr(f[1]),
            parse_hex_socket_addr(f[2]),
            u8::from_str_radix(f[3], 16),
            f[7].parse(),
            f[9].parse(),
        ) else {
            continue;
        };
        out.push(RawSocket { local, remote, state, uid, inode });
    }
    out
}

/// The inode in an fd link target `socket:[12345]`.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// `/proc/<pid>/cmdline` split at NULs.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Socket inode → lowest pid holding it, for every process we may read.
fn socket_owners() -> BTreeMap<u64, u32> {
    let mut owners = BTreeMap::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = target.to_str().and_then(parse_socket_link) {
                let slot = owners.entry(inode).or_insert(pid);
                *slot = (*slot).min(pid);
            }
        }
    }
    owners
}

fn process_owner(pid: u32) -> ProcessOwner {
    let base = format!("/proc/{pid}");
    ProcessOwner {
        pid,
        exe: std::fs::read_link(format!("{base}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        cmdline: std::fs::read(format!("{base}/cmdline"))
            .map(|b| parse_cmdline(&b))
            .unwrap_or_default(),
    }
}

fn user_name(uid: u32, cache: &mut BTreeMap<u32, Option<String>>) -> Option<String> {
    cache
        .entry(uid)
        .or_insert_with(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .clone()
}

/// Reads listening sockets and established TCP connections with their owners.
/// `/proc/net/tcp` must be readable; the other tables may be absent.
pub fn collect_sockets() -> Result<Sockets, DiscoveryError> {
    let mut raw: Vec<(Protocol, RawSocket)> = Vec::new();
    let tcp = read_text("/proc/net/tcp")?;
    raw.extend(parse_proc_net(&tcp).into_iter().map(|s| (Protocol::Tcp, s)));
    for (path, proto) in [
        ("/proc/net/tcp6", Protocol::Tcp),
        ("/proc/net/udp", Protocol::Udp),
        ("/proc/net/udp6", Protocol::Udp),
    ] {
        if let Some(text) = read_optional(path) {
            raw.extend(parse_proc_net(&text).into_iter().map(|s| (proto, s)));
        }
    }
    let owners = socket_owners();
    let mut process_cache: BTreeMap<u32, ProcessOwner> = BTreeMap::new();
    let mut users = BTreeMap::new();
    let mut result = Sockets::default();
    for (protocol, s) in raw {
        let listening = match protocol {
            Protocol::Tcp => s.state == TCP_LISTEN,
            Protocol::Udp => s.state == TCP_CLOSE && s.remote.port() == 0,
        };
        let established = protocol == Protocol::Tcp && s.state == TCP_ESTABLISHED;
        if !listening && !established {
            continue;
        }
        let owner = owners
            .get(&s.inode)
            .filter(|_| s.inode != 0)
            .map(|pid| process_cache.entry(*pid).or_insert_with(|| process_owner(*pid)).clone());
        let entry = SocketEntry {
            protocol,
            local: s.local,
            remote: s.remote,
            uid: s.uid,
            user: user_name(s.uid, &mut users),
            inode: s.inode,
            owner,
        };
        if listening {
            result.listening.push(entry);
        } else {
            result.established.push(entry);
        }
    }
    let key = |e: &SocketEntry| (e.protocol, e.local, e.remote, e.inode);
    result.listening.sort_by_key(key);
    result.established.sort_by_key(key);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp4_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 35 1 0000000091128e9d 100 0 0 10 0\n\
            \x20  1: 0100007F:A59F 0100007F:E130 01 00000000:00000000 03:000009AD 00000000  1000        0 4242 3 00000000d695f073\n\
            garbage line\n";
        let s = parse_proc_net(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, "0.0.0.0:2024".parse().unwrap());
        assert_eq!(s[0].state, TCP_LISTEN);
        assert_eq!(s[0].inode, 35);
        assert_eq!(s[1].local, "127.0.0.1:42399".parse().unwrap());
        assert_eq!(s[1].remote, "127.0.0.1:57648".parse().unwrap());
        assert_eq!(s[1].uid, 1000);
        assert_eq!(s[1].state, TCP_ESTABLISHED);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp6_lines() {
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            \x20  0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n\
            \x20  1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0\n\
            \x20  2: 0000000000000000FFFF00000100007F:0050 B80D0120000000000000000001000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 7 1 0000000000000000 100 0 0 10 0\n";
        let s = parse_proc_net(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].local, "[::]:22".parse().unwrap());
        assert_eq!(s[1].local, "[::1]:8080".parse().unwrap());
        assert_eq!(s[1].remote, "[::1]:50000".parse().unwrap());
        assert_eq!(s[2].local, "[::ffff:127.0.0.1]:80".parse().unwrap());
        assert_eq!(s[2].remote, "[2001:db8::1]:443".parse().unwrap());
    }

    fn entry(local: &str, remote: &str, inode: u64, pid: u32) -> SocketEntry {
        SocketEntry {
            protocol: Protocol::Tcp,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            user: Some("root".into()),
            inode,
            owner: Some(ProcessOwner {
                pid,
                exe: Some("/usr/sbin/app".into()),
                cmdline: vec!["app".into()],
            }),
        }
    }

    #[test]
    fn item_13_ephemeral_ports_inodes_and_pids_do_not_change_the_hash() {
        let busy = |round: u64| Sockets {
            listening: vec![entry("0.0.0.0:80", "0.0.0.0:0", 100 + round, 7 + round as u32)],
            established: vec![
                // Clients of the web service, each round from new ports (and sockets).
                entry("10.0.0.1:80", &format!("10.0.0.9:{}", 40000 + round), 200 + round, 8),
                entry("10.0.0.1:80", &format!("10.0.0.9:{}", 41000 + round), 300 + round, 8),
                // The app's connections to its database, from new ports each round.
                entry(&format!("10.0.0.1:{}", 50000 + round), "10.0.0.5:5432", 400 + round, 9),
            ],
        };
        let hash = |s: &Sockets| s.to_discovery().unwrap().hash;
        assert_eq!(hash(&busy(0)), hash(&busy(1)), "only volatile details changed");
        // What an operator cares about does change it.
        let mut new_listener = busy(1);
        new_listener.listening.push(entry("0.0.0.0:443", "0.0.0.0:0", 5, 7));
        assert_ne!(hash(&busy(0)), hash(&new_listener));
        let mut new_dependency = busy(1);
        new_dependency.established.push(entry("10.0.0.1:50999", "10.0.0.6:6379", 6, 9));
        assert_ne!(hash(&busy(0)), hash(&new_dependency));
        let mut new_client = busy(1);
        new_client.established.push(entry("10.0.0.1:80", "10.0.0.77:40000", 7, 8));
        assert_ne!(hash(&busy(0)), hash(&new_client));
        // The payload still carries every connection.
        let d = busy(1).to_discovery().unwrap();
        assert_eq!(d.payload["established"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn socket_links_and_cmdline() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_cmdline(b"sshd\0-D\0\0"), vec!["sshd", "-D"]);
    }
}
