//! Pings of switch management addresses (issue 13): an ICMP echo from the CMA's host to the
//! address a switch announced over LLDP/CDP, asked for by the core when it checks the switch's
//! ring (`assim_cma_shell::Note::ProbeManagement`). The answer only adds evidence to that one
//! decision ("the switch is alive but forwards for none of its hosts" against "down or cut
//! off"), so a ping runs on a blocking thread, a few tries within the check's timeout, and
//! reports one bit.
//!
//! Sockets, in the order tried:
//! 1. an unprivileged ICMP datagram socket (`SOCK_DGRAM`, `IPPROTO_ICMP`/`IPPROTO_ICMPV6`),
//!    which Linux allows when the process's group is in `net.ipv4.ping_group_range` (systemd
//!    sets `0 2147483647`; the kernel default `1 0` allows nobody). The kernel sets the echo
//!    identifier and delivers this socket's replies only;
//! 2. a raw ICMP socket, which needs `CAP_NET_RAW`. It sees every ICMP packet the host
//!    receives: a reply counts only with our identifier, one of our sequence numbers and the
//!    pinged address as its source (the socket is connected to it).
//!
//! With neither, [`Pinger::open`] says why and how to allow it, and the CMA runs without
//! management probes (the core is told so and never asks).
//!
//! A hostile reply cannot do much: a forged echo reply from the management address would only
//! turn a `switch.down` into a `switch.unreachable` (the hosts are unreachable either way), and
//! the address itself is the one most of the ring's hosts heard the switch announce.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Echo requests sent per ping at most (spread over its timeout).
pub const TRIES: u32 = 3;
/// Pings in flight at most; a check beyond that goes without (its decision does not wait).
pub const MAX_IN_FLIGHT: usize = 64;

/// Which socket kind this process may open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// Unprivileged ICMP datagram socket (`net.ipv4.ping_group_range`).
    Datagram,
    /// Raw ICMP socket (`CAP_NET_RAW`).
    Raw,
}

/// Pings management addresses with the socket kind found at start.
#[derive(Clone, Copy, Debug)]
pub struct Pinger {
    pub kind: SocketKind,
}

/// Echo identifiers of raw sockets (the kernel picks them for datagram sockets).
static NEXT_ID: AtomicU16 = AtomicU16::new(0);

impl Pinger {
    /// Finds a socket kind this process may open (IPv4), or says how to allow one.
    pub fn open() -> Result<Pinger, String> {
        let dgram = open_socket(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), SocketKind::Datagram);
        if dgram.is_ok() {
            return Ok(Pinger { kind: SocketKind::Datagram });
        }
        match open_socket(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), SocketKind::Raw) {
            Ok(_) => Ok(Pinger { kind: SocketKind::Raw }),
            Err(raw) => Err(format!(
                "cannot open an ICMP socket ({}; raw: {raw}): allow the CMA's group in \
                 net.ipv4.ping_group_range (sysctl; systemd's default allows every group) or \
                 give cma CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW)",
                dgram.err().map_or_else(String::new, |e| e.to_string())
            )),
        }
    }

    /// Pings `address` up to [`TRIES`] times within `timeout`. True as soon as one echo is
    /// answered; false when none is, or when no socket could be opened for it.
    pub fn ping(&self, address: IpAddr, timeout: Duration) -> bool {
        let Ok(socket) = open_socket(address, self.kind) else { return false };
        if socket.connect(&SockAddr::from(SocketAddr::new(address, 0))).is_err() {
            return false;
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
        let end = Instant::now() + timeout;
        let step = timeout / TRIES;
        let mut buf = [0u8; 1500];
        for seq in 0..TRIES as u16 {
            let request = echo_request(address.is_ipv4(), id, seq);
            // A send error (no route yet, a full queue) is a try that went unanswered.
            let _ = socket.send(&request);
            let slot_end = (Instant::now() + step).min(end);
            loop {
                let left = slot_end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if socket.set_read_timeout(Some(left)).is_err() {
                    return false;
                }
                let Ok(n) = (&socket).read(&mut buf) else { break };
                if is_our_reply(&buf[..n], address.is_ipv4(), self.kind, id, seq) {
                    return true;
                }
            }
            if Instant::now() >= end {
                break;
            }
        }
        false
    }
}

fn open_socket(address: IpAddr, kind: SocketKind) -> std::io::Result<Socket> {
    let (domain, protocol) = match address {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let ty = match kind {
        SocketKind::Datagram => Type::DGRAM,
        SocketKind::Raw => Type::RAW,
    };
    Socket::new(domain, ty, Some(protocol))
}

/// An ICMP (type 8) or ICMPv6 (type 128) echo request with a small fixed payload. The IPv4
/// checksum is ours (the kernel fills it for datagram sockets anyway); ICMPv6's is always the
/// kernel's.
pub fn echo_request(v4: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.push(if v4 { 8 } else { 128 });
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"assim-sw");
    if v4 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether a received packet is the echo reply to our request `seq` (or an earlier one of
/// this ping). A raw IPv4 socket delivers the IP header first; the others deliver the ICMP
/// message alone. Datagram sockets get their own replies only, so the identifier (the
/// kernel's) is not compared there.
pub fn is_our_reply(packet: &[u8], v4: bool, kind: SocketKind, id: u16, seq: u16) -> bool {
    let icmp = if v4 && kind == SocketKind::Raw {
        let Some(&first) = packet.first() else { return false };
        if first >> 4 != 4 {
            return false;
        }
        let header = usize::from(first & 0x0f) * 4;
        if header < 20 {
            return false;
        }
        match packet.get(header..) {
            Some(rest) => rest,
            None => return false,
        }
    } else {
        packet
    };
    if icmp.len() < 8 {
        return false;
    }
    let reply_type = if v4 { 0 } else { 129 };
    if icmp[0] != reply_type || icmp[1] != 0 {
        return false;
    }
    let their_id = u16::from_be_bytes([icmp[4], icmp[5]]);
    let their_seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    (kind == SocketKind::Datagram || their_id == id) && their_seq <= seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checksums_to_zero() {
        let p = echo_request(true, 0x1234, 7);
        assert_eq!(p[0], 8);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to 0");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(echo_request(false, 1, 2)[0], 128);
    }

    #[test]
    fn only_our_replies_count() {
        let reply = |t: u8, id: u16, seq: u16| {
            let mut p = vec![t, 0, 0, 0];
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&seq.to_be_bytes());
            p
        };
        let raw = |icmp: Vec<u8>| {
            let mut p = vec![0x45; 1];
            p.extend_from_slice(&[0; 19]);
            p.extend(icmp);
            p
        };
        assert!(is_our_reply(&raw(reply(0, 9, 1)), true, SocketKind::Raw, 9, 1));
        assert!(is_our_reply(&raw(reply(0, 9, 0)), true, SocketKind::Raw, 9, 2), "earlier try");
        assert!(!is_our_reply(&raw(reply(0, 8, 1)), true, SocketKind::Raw, 9, 1), "other id");
        assert!(!is_our_reply(&raw(reply(0, 9, 3)), true, SocketKind::Raw, 9, 1), "later seq");
        assert!(!is_our_reply(&raw(reply(8, 9, 1)), true, SocketKind::Raw, 9, 1), "a request");
        assert!(!is_our_reply(&reply(0, 9, 1), true, SocketKind::Raw, 9, 1), "no IP header");
        assert!(is_our_reply(&reply(0, 4242, 1), true, SocketKind::Datagram, 9, 1));
        assert!(is_our_reply(&reply(129, 9, 1), false, SocketKind::Raw, 9, 1), "ICMPv6");
        for len in 0..28 {
            // Truncated packets of every length are refused, never a panic.
            let p = raw(reply(0, 9, 1));
            let _ = is_our_reply(&p[..len.min(p.len())], true, SocketKind::Raw, 9, 1);
        }
        let mut bad_ihl = raw(reply(0, 9, 1));
        bad_ihl[0] = 0x4f;
        assert!(!is_our_reply(&bad_ihl, true, SocketKind::Raw, 9, 1));
    }

    /// Root (as in CI) may open a raw socket; loopback answers.
    #[test]
    fn loopback_answers_a_ping_when_a_socket_is_allowed() {
        let Ok(p) = Pinger::open() else {
            assert!(std::env::var_os("CI").is_none(), "no ICMP socket under CI");
            eprintln!("SKIP: no ICMP socket for this user (see Pinger::open's error)");
            return;
        };
        assert!(p.ping("127.0.0.1".parse().unwrap(), Duration::from_secs(2)));
        // Silence is tested in the switch lab (crates/cli/tests/switch_lab.rs), where the
        // test owns the network: no address here is sure to stay silent.
    }
}
