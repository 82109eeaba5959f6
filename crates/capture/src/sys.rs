//! One of the two `unsafe` modules in assim (the other is `assim-nanoprobe`'s `memory`): the
//! AF_PACKET socket calls that neither `nix` nor `socket2` wrap safely. Each block passes a pointer to a local, correctly sized `#[repr(C)]` value
//! (from `libc`) and its size, and checks the return code; no pointer outlives its call.
//!
//! - [`open`]: `socket(AF_PACKET, SOCK_RAW, 0)` (protocol 0 receives nothing yet), attach the
//!   BPF filter, then `bind` to all interfaces with `ETH_P_ALL`, so no frame reaches the socket
//!   before the filter is in place.
//! - [`add_membership`]: `PACKET_ADD_MEMBERSHIP` for one multicast MAC on one interface, so a
//!   NIC with a hardware multicast filter delivers LLDP and CDP frames. The kernel drops the
//!   membership when the interface goes away or the socket is closed.
//! - [`register`]: hands the socket to the tokio reactor (`AsyncFd::register` is `unsafe`).
//! - [`recv`]: `recvfrom` into a buffer, returning the length, the interface index and the
//!   packet type from the `sockaddr_ll`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::filter::Insn;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live reference to a `#[repr(C)]` libc struct and the length is its
    // size; the kernel copies it before returning.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
}

/// A non-blocking, close-on-exec AF_PACKET socket with `prog` attached, bound to every
/// interface. Fails with `PermissionDenied` without CAP_NET_RAW.
pub(crate) fn open(prog: &[Insn]) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let raw = unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    check(raw)?;
    // SAFETY: `raw` is a fresh descriptor we own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut code: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
        .collect();
    let fprog = libc::sock_fprog { len: code.len() as libc::c_ushort, filter: code.as_mut_ptr() };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
    drop(code);

    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = 0; // every interface
    // SAFETY: pointer and size of a live local sockaddr_ll.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Joins the link-layer multicast group `mac` on interface `ifindex`.
pub(crate) fn add_membership(fd: &OwnedFd, ifindex: i32, mac: [u8; 6]) -> io::Result<()> {
    let mut address = [0u8; 8];
    address[..6].copy_from_slice(&mac);
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex,
        mr_type: libc::PACKET_MR_MULTICAST as libc::c_ushort,
        mr_alen: 6,
        mr_address: address,
    };
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
}

/// One received frame's metadata.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    /// The frame's full length (`MSG_TRUNC`): more than the buffer when the frame was cut.
    pub len: usize,
    /// The interface it arrived on (or left by, for outgoing frames).
    pub ifindex: i32,
    /// `PACKET_HOST`, `PACKET_MULTICAST`, `PACKET_OUTGOING`, ...
    pub pkttype: u8,
}

/// Reads one frame; `WouldBlock` when none is queued. With `MSG_TRUNC` the kernel returns the
/// frame's real length even when the buffer held less.
pub(crate) fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut sll_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `sll` are live for the call and their sizes are passed with them.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            (&mut sll as *mut libc::sockaddr_ll).cast(),
            &mut sll_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Received { len: n as usize, ifindex: sll.sll_ifindex, pkttype: sll.sll_pkttype })
}

/// `PACKET_OUTGOING`: a frame this host sent (seen on ETH_P_ALL sockets).
pub(crate) const PACKET_OUTGOING: u8 = 4;

/// Registers the socket with the tokio reactor.
pub(crate) fn register(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is a valid descriptor owned by the `AsyncFd` from here on; nothing
    // else closes or replaces it while it is registered.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
