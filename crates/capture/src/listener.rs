//! The tokio driver: one AF_PACKET socket for every interface (frames are told apart by the
//! interface index the kernel reports), the BPF filter from [`crate::filter`], multicast
//! membership for the LLDP and CDP groups on every up, non-loopback Ethernet interface, and
//! non-blocking reads through [`AsyncFd`]. Interfaces that appear later are joined on the next
//! [`Listener::rescan`]; their neighbours are forgotten when they disappear.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::net::if_::InterfaceFlags;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::neighbours::{FrameOutcome, L2Neighbours, L2Report};
use crate::{filter, sys};

/// LLDP's "nearest bridge" group address.
pub const LLDP_MULTICAST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
/// Cisco's CDP/VTP/DTP group address.
pub const CDP_MULTICAST: [u8; 6] = [0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc];

/// Why the listener cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// No CAP_NET_RAW: nothing was opened.
    #[error(
        "opening an AF_PACKET socket needs CAP_NET_RAW (run as root, or grant it with \
         `setcap cap_net_raw+ep` or systemd's AmbientCapabilities=CAP_NET_RAW): {0}"
    )]
    Permission(io::Error),
    /// Any other failure of a socket call (nothing stays open).
    #[error("cannot open the LLDP/CDP capture socket: {0}")]
    Socket(io::Error),
}

/// A local interface the listener joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC.
    pub mac: String,
}

/// One captured LLDP or CDP frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The interface it arrived on.
    pub interface: String,
    /// The Ethernet frame, without FCS, as far as it was captured.
    pub bytes: Vec<u8>,
    /// Its length on the wire; more than `bytes.len()` when the receive buffer (the snap
    /// length, [`Listener::set_snaplen`]) cut it. Decode with [`assim_l2::decode_captured`].
    pub orig_len: usize,
}

/// The passive listener. See the module doc.
#[derive(Debug)]
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    /// Joined interfaces by ifindex.
    joined: BTreeMap<i32, Interface>,
    buf: Vec<u8>,
}

/// Up, non-loopback interfaces with an Ethernet (6-byte) address, by ifindex.
pub fn scan_interfaces() -> io::Result<BTreeMap<i32, Interface>> {
    let mut out = BTreeMap::new();
    for a in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if !a.flags.contains(InterfaceFlags::IFF_UP)
            || a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(link) = a.address.as_ref().and_then(|s| s.as_link_addr()) else { continue };
        let Some(mac) = link.addr() else { continue };
        if link.hatype() != libc::ARPHRD_ETHER {
            continue;
        }
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        out.insert(link.ifindex() as i32, Interface { name: a.interface_name.clone(), mac });
    }
    Ok(out)
}

impl Listener {
    /// Opens the socket (no interface joined yet: call [`Listener::rescan`]). Must run inside
    /// a tokio runtime.
    pub fn open() -> Result<Self, CaptureError> {
        let fd = sys::open(&filter::LLDP_CDP).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => CaptureError::Permission(e),
            _ => CaptureError::Socket(e),
        })?;
        let fd = sys::register(fd).map_err(CaptureError::Socket)?;
        Ok(Listener { fd, joined: BTreeMap::new(), buf: vec![0u8; filter::SNAPLEN as usize] })
    }

    /// Joins interfaces that appeared (or came up) and drops those that went. Returns the
    /// names that went, so their neighbours can be forgotten.
    pub fn rescan(&mut self) -> Vec<String> {
        let now = match scan_interfaces() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot list network interfaces; keeping the previous list");
                return Vec::new();
            }
        };
        let mut gone = Vec::new();
        self.joined.retain(|idx, i| {
            let keep = now.get(idx) == Some(i);
            if !keep {
                gone.push(i.name.clone());
            }
            keep
        });
        for (idx, i) in now {
            if self.joined.contains_key(&idx) {
                continue;
            }
            for group in [LLDP_MULTICAST, CDP_MULTICAST] {
                if let Err(e) = sys::add_membership(self.fd.get_ref(), idx, group) {
                    // Still useful: promiscuous or multicast-all NICs deliver anyway.
                    debug!(interface = %i.name, error = %e, "cannot join an LLDP/CDP multicast group");
                }
            }
            info!(interface = %i.name, mac = %i.mac, "listening for LLDP and CDP");
            self.joined.insert(idx, i);
        }
        gone
    }

    /// Captures at most `bytes` of each frame (clamped to 64..=[`filter::SNAPLEN`]; the
    /// default is the maximum, so no real frame is cut). Longer frames arrive truncated and
    /// are decoded as far as their TLVs are whole, as from a pcap with a snap length.
    pub fn set_snaplen(&mut self, bytes: usize) {
        self.buf = vec![0u8; bytes.clamp(64, filter::SNAPLEN as usize)];
    }

    /// The interfaces currently joined.
    pub fn interfaces(&self) -> impl Iterator<Item = &Interface> {
        self.joined.values()
    }

    /// Waits for the next LLDP/CDP frame received on a joined interface. Frames this host
    /// sent itself are skipped.
    pub async fn next_frame(&mut self) -> io::Result<Frame> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| sys::recv(fd.get_ref(), &mut self.buf));
            let Ok(r) = r else { continue }; // would block: readiness cleared, wait again
            let got = r?;
            if got.pkttype == sys::PACKET_OUTGOING {
                continue;
            }
            let Some(i) = self.joined.get(&got.ifindex) else { continue };
            let len = got.len.min(self.buf.len());
            return Ok(Frame {
                interface: i.name.clone(),
                bytes: self.buf[..len].to_vec(),
                orig_len: got.len,
            });
        }
    }

    /// Runs until every receiver of `tx` is gone: captures frames into an [`L2Neighbours`]
    /// table, rescans interfaces every `rescan_every`, expires neighbours by their TTL, and
    /// publishes the report whenever it changes.
    pub async fn run(mut self, rescan_every: Duration, tx: watch::Sender<L2Report>) {
        let mut table = L2Neighbours::new();
        let mut next_rescan = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_rescan {
                for name in self.rescan() {
                    table.remove_interface(&name);
                }
                for i in self.joined.values() {
                    table.set_interface_mac(&i.name, &i.mac);
                }
                next_rescan = now + rescan_every;
            }
            table.handle_timeout(now);
            tx.send_if_modified(|r| {
                let new = table.report();
                if *r == new {
                    return false;
                }
                *r = new;
                true
            });
            let deadline = table.poll_timeout().map_or(next_rescan, |t| t.min(next_rescan));
            tokio::select! {
                f = self.next_frame() => match f {
                    Ok(f) => match table.handle_captured(&f.interface, Instant::now(), &f.bytes, f.orig_len) {
                        FrameOutcome::Malformed => debug!(
                            interface = %f.interface, malformed = table.counters().malformed,
                            "a malformed LLDP/CDP frame; ignored"
                        ),
                        outcome => debug!(interface = %f.interface, ?outcome, "LLDP/CDP frame"),
                    },
                    Err(e) => {
                        warn!(error = %e, "LLDP/CDP capture failed; retrying at the next rescan");
                        tokio::time::sleep_until(next_rescan.into()).await;
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = tx.closed() => return,
            }
        }
    }
}
