//! IPv6 neighbours (NDP) through rtnetlink: one `RTM_GETNEIGH` dump request for `AF_INET6`,
//! the `RTM_NEWNEIGH` answers parsed into [`Neighbour`]s (the `neighbours` collector's entries,
//! beside IPv4 ARP). The kernel offers NDP only this way, not in `/proc`.
//!
//! Kept: unicast entries with a link-layer address in a usable state (reachable, stale, delay,
//! probe, permanent) — what `ip -6 neigh` shows. Incomplete, failed and noarp entries (the
//! kernel's multicast mappings such as `ff02::16`), and those without a MAC are left out; the
//! NUD state itself is not reported, so an entry going reachable → stale → reachable does not
//! change the result (a quiet host sends nothing).
//!
//! [`request`] builds the dump request and [`parse_dump`] parses answers: pure functions,
//! bounded ([`MAX_ENTRIES`]), distinct errors for a truncated message and a malformed one.
//! [`collect_ndp`] is the thin socket part (nix, no `unsafe`).

use std::net::{IpAddr, Ipv6Addr};

use crate::neighbours::Neighbour;

/// The most entries one dump yields; more are ignored.
pub const MAX_ENTRIES: usize = 65_536;
/// The most bytes read from the kernel for one dump.
const MAX_DUMP_BYTES: usize = 64 << 20;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET6: u8 = 10;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// NUD states with a usable link-layer address (not NOARP 0x40: multicast mappings).
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;

/// Why a netlink answer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NdpError {
    /// A length field points past the end of the buffer.
    #[error("netlink message truncated: {0}")]
    Incomplete(&'static str),
    /// The bytes contradict the format.
    #[error("netlink message malformed: {0}")]
    Malformed(String),
    /// The kernel answered the request with an error.
    #[error("the kernel refused the neighbour dump: errno {0}")]
    Kernel(i32),
}

/// The `RTM_GETNEIGH` dump request for IPv6 with sequence number `seq`.
pub fn request(seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend(28u32.to_ne_bytes());
    b.extend(RTM_GETNEIGH.to_ne_bytes());
    b.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend(seq.to_ne_bytes());
    b.extend(0u32.to_ne_bytes());
    // struct ndmsg: family, pad, pad, ifindex, state, flags, type
    b.extend([AF_INET6, 0, 0, 0]);
    b.extend(0i32.to_ne_bytes());
    b.extend([0u8; 4]);
    b
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn mac_text(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// What one buffer of netlink messages held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Neighbours found (not sorted).
    pub neighbours: Vec<Neighbour>,
    /// `NLMSG_DONE` was seen: the dump is complete.
    pub done: bool,
}

/// Parses one buffer of netlink messages answering [`request`]. `name_of` maps an interface
/// index to its name (entries of unknown interfaces are left out). Appends to `out` at most
/// up to [`MAX_ENTRIES`].
pub fn parse_dump(
    buf: &[u8],
    name_of: &dyn Fn(u32) -> Option<String>,
    out: &mut Parsed,
) -> Result<(), NdpError> {
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < 16 {
            return Err(NdpError::Incomplete("netlink header"));
        }
        let len = u32_at(rest, 0) as usize;
        let ty = u16_at(rest, 4);
        if len < 16 {
            return Err(NdpError::Malformed(format!("message length {len}")));
        }
        if len > rest.len() {
            return Err(NdpError::Incomplete("netlink message"));
        }
        let body = &rest[16..len];
        match ty {
            NLMSG_DONE => {
                out.done = true;
                return Ok(());
            }
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err(NdpError::Incomplete("netlink error"));
                }
                let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                if errno != 0 {
                    return Err(NdpError::Kernel(-errno));
                }
            }
            RTM_NEWNEIGH => {
                if let Some(n) = parse_neigh(body, name_of)?
                    && out.neighbours.len() < MAX_ENTRIES
                {
                    out.neighbours.push(n);
                }
            }
            _ => {}
        }
        let aligned = len.div_ceil(4) * 4;
        rest = rest.get(aligned..).unwrap_or(&[]);
    }
    Ok(())
}

fn parse_neigh(
    body: &[u8],
    name_of: &dyn Fn(u32) -> Option<String>,
) -> Result<Option<Neighbour>, NdpError> {
    if body.len() < 12 {
        return Err(NdpError::Incomplete("ndmsg"));
    }
    let family = body[0];
    let ifindex = u32_at(body, 4);
    let state = u16_at(body, 8);
    let mut attrs = &body[12..];
    let (mut dst, mut lladdr) = (None, None);
    while attrs.len() >= 4 {
        let alen = u16_at(attrs, 0) as usize;
        let aty = u16_at(attrs, 2) & 0x3fff;
        if alen < 4 {
            return Err(NdpError::Malformed(format!("attribute length {alen}")));
        }
        if alen > attrs.len() {
            return Err(NdpError::Incomplete("netlink attribute"));
        }
        let v = &attrs[4..alen];
        match aty {
            NDA_DST => dst = Some(v),
            NDA_LLADDR => lladdr = Some(v),
            _ => {}
        }
        attrs = attrs.get(alen.div_ceil(4) * 4..).unwrap_or(&[]);
    }
    if family != AF_INET6 || state & NUD_USABLE == 0 {
        return Ok(None);
    }
    let (Some(dst), Some(ll)) = (dst, lladdr) else { return Ok(None) };
    let Ok(octets) = <[u8; 16]>::try_from(dst) else {
        return Err(NdpError::Malformed(format!("IPv6 destination of {} bytes", dst.len())));
    };
    if ll.is_empty() || ll.len() > 32 || ll.iter().all(|b| *b == 0) || octets[0] == 0xff {
        return Ok(None);
    }
    let Some(interface) = name_of(ifindex) else { return Ok(None) };
    Ok(Some(Neighbour { interface, ip: IpAddr::V6(Ipv6Addr::from(octets)), mac: mac_text(ll) }))
}

/// Dumps the kernel's IPv6 neighbour table (this network namespace), sorted.
pub fn collect_ndp() -> Result<Vec<Neighbour>, crate::DiscoveryError> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
        setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd as _;
    let sys = |call: &'static str| move |source| crate::DiscoveryError::Sys { call, source };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(sys("socket(AF_NETLINK)"))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(5, 0))
        .map_err(sys("setsockopt(SO_RCVTIMEO)"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sys("bind(AF_NETLINK)"))?;
    let seq = 1;
    sendto(fd.as_raw_fd(), &request(seq), &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .map_err(sys("sendto(RTM_GETNEIGH)"))?;
    let name_of =
        |i: u32| nix::net::if_::if_indextoname(i).ok().map(|c| c.to_string_lossy().into_owned());
    let mut parsed = Parsed::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while !parsed.done && total < MAX_DUMP_BYTES {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(sys("recv(netlink)"))?;
        if n == 0 {
            break;
        }
        total += n;
        parse_dump(&buf[..n], &name_of, &mut parsed).map_err(|e| {
            crate::DiscoveryError::Command { command: "RTM_GETNEIGH".into(), reason: e.to_string() }
        })?;
    }
    let mut v = parsed.neighbours;
    v.sort();
    v.dedup();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neigh_msg(ifindex: u32, state: u16, dst: &[u8], ll: &[u8]) -> Vec<u8> {
        let mut body = vec![AF_INET6, 0, 0, 0];
        body.extend(ifindex.to_ne_bytes());
        body.extend(state.to_ne_bytes());
        body.extend([0, 1]);
        for (ty, v) in [(NDA_DST, dst), (NDA_LLADDR, ll)] {
            body.extend(((4 + v.len()) as u16).to_ne_bytes());
            body.extend(ty.to_ne_bytes());
            body.extend(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(RTM_NEWNEIGH.to_ne_bytes());
        m.extend(2u16.to_ne_bytes());
        m.extend([0u8; 8]);
        m.extend(body);
        m
    }

    fn done() -> Vec<u8> {
        let mut m = 20u32.to_ne_bytes().to_vec();
        m.extend(NLMSG_DONE.to_ne_bytes());
        m.extend([0u8; 14]);
        m
    }

    fn names(i: u32) -> Option<String> {
        (i == 2).then(|| "eth0".to_string())
    }

    #[test]
    fn parses_usable_entries_and_done() {
        let ip: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut buf = neigh_msg(2, 0x02, &ip.octets(), &[2, 0, 0, 0, 0, 1]);
        buf.extend(neigh_msg(2, 0x01, &ip.octets(), &[2, 0, 0, 0, 0, 2])); // incomplete
        buf.extend(neigh_msg(9, 0x80, &ip.octets(), &[2, 0, 0, 0, 0, 3])); // unknown ifindex
        buf.extend(neigh_msg(2, 0x04, &ip.octets(), &[0; 6])); // no MAC
        buf.extend(done());
        let mut p = Parsed::default();
        parse_dump(&buf, &names, &mut p).unwrap();
        assert!(p.done);
        assert_eq!(p.neighbours.len(), 1);
        assert_eq!(p.neighbours[0].mac, "02:00:00:00:00:01");
        assert_eq!(p.neighbours[0].ip, IpAddr::V6(ip));
        assert_eq!(request(7).len(), 28);
    }

    #[test]
    fn truncated_and_malformed_are_distinct() {
        let ip: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let m = neigh_msg(2, 0x02, &ip.octets(), &[2, 0, 0, 0, 0, 1]);
        let mut p = Parsed::default();
        assert!(matches!(
            parse_dump(&m[..m.len() - 3], &names, &mut p),
            Err(NdpError::Incomplete(_))
        ));
        let mut bad = m.clone();
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(parse_dump(&bad, &names, &mut p), Err(NdpError::Malformed(_))));
    }

    proptest::proptest! {
        #[test]
        fn hostile_dumps_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut p = Parsed::default();
            let _ = parse_dump(&b, &names, &mut p);
            let mut framed = ((16 + b.len()) as u32).to_ne_bytes().to_vec();
            framed.extend(RTM_NEWNEIGH.to_ne_bytes());
            framed.extend([0u8; 10]);
            framed.extend(&b);
            let _ = parse_dump(&framed, &names, &mut p);
        }
    }
}
