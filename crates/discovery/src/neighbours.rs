//! Neighbours: the IPv4 ARP cache from `/proc/net/arp`, the IPv6 neighbours (NDP) through
//! rtnetlink ([`crate::ndp`]), and [`ArpTracker`], a pure delta engine over successive
//! snapshots.
//!
//! The tracker takes `now` from its caller and never reads a clock: an entry
//! is `added` the first time it is seen (or when its MAC changes) and
//! `removed` once it has not been seen for `expiry`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_text};

/// ATF_COM: the entry is complete (has a hardware address).
const ATF_COM: u32 = 0x2;

/// One resolved neighbour.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Neighbour {
    /// Interface the neighbour was learnt on.
    pub interface: String,
    /// Its IP address.
    pub ip: IpAddr,
    /// Its hardware address, lowercase.
    pub mac: String,
}

/// Result of the neighbours collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbours {
    /// Complete entries, IPv4 and IPv6, sorted.
    pub neighbours: Vec<Neighbour>,
    /// Why the IPv6 (NDP) dump failed, if it did; the IPv4 entries are still there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ndp_error: Option<String>,
}

/// Complete entries from the text of `/proc/net/arp`. Incomplete entries
/// (flag ATF_COM clear, or an all-zero MAC) are skipped.
pub fn parse_proc_arp(text: &str) -> Vec<Neighbour> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let Ok(ip) = f[0].parse::<Ipv4Addr>() else {
            continue;
        };
        let flags =
            f[2].strip_prefix("0x").and_then(|h| u32::from_str_radix(h, 16).ok()).unwrap_or(0);
        let mac = f[3].to_ascii_lowercase();
        if flags & ATF_COM == 0 || mac.bytes().all(|b| b == b'0' || b == b':') {
            continue;
        }
        out.push(Neighbour { interface: f[5].to_string(), ip: IpAddr::V4(ip), mac });
    }
    out.sort();
    out.dedup();
    out
}

/// Reads the IPv4 neighbour cache and the IPv6 neighbour table.
pub fn collect_neighbours() -> Result<Neighbours, DiscoveryError> {
    let mut neighbours = parse_proc_arp(&read_text("/proc/net/arp")?);
    let ndp_error = match crate::ndp::collect_ndp() {
        Ok(v6) => {
            neighbours.extend(v6);
            None
        }
        Err(e) => Some(e.to_string()),
    };
    neighbours.sort();
    neighbours.dedup();
    Ok(Neighbours { neighbours, ndp_error })
}

/// Changes between the tracker's view and a new snapshot (or the passage of time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpDelta {
    /// Newly seen neighbours, or ones whose MAC changed (new MAC), sorted.
    pub added: Vec<Neighbour>,
    /// Expired neighbours, or the old MAC of a changed one, sorted.
    pub removed: Vec<Neighbour>,
}

impl ArpDelta {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Tracks neighbours across snapshots; see the module doc.
#[derive(Debug, Clone)]
pub struct ArpTracker {
    expiry: Duration,
    /// (interface, ip) → (mac, last seen).
    entries: BTreeMap<(String, IpAddr), (String, Instant)>,
}

impl ArpTracker {
    /// A tracker that forgets entries not seen for `expiry`.
    pub fn new(expiry: Duration) -> Self {
        Self { expiry, entries: BTreeMap::new() }
    }

    /// Feeds one snapshot taken at `now`; returns what changed, including
    /// entries that expired by `now`.
    pub fn observe(&mut self, now: Instant, snapshot: &[Neighbour]) -> ArpDelta {
        let mut delta = ArpDelta::default();
        for n in snapshot {
            let key = (n.interface.clone(), n.ip);
            match self.entries.get_mut(&key) {
                Some((mac, seen)) if *mac == n.mac => *seen = now,
                Some((mac, seen)) => {
                    delta.removed.push(Neighbour {
                        interface: n.interface.clone(),
                        ip: n.ip,
                        mac: std::mem::replace(mac, n.mac.clone()),
                    });
                    *seen = now;
                    delta.added.push(n.clone());
                }
                None => {
                    self.entries.insert(key, (n.mac.clone(), now));
                    delta.added.push(n.clone());
                }
            }
        }
        delta.removed.extend(self.expire(now));
        delta.added.sort();
        delta.added.dedup();
        delta.removed.sort();
        delta.removed.dedup();
        delta
    }

    /// Drops and returns entries last seen `expiry` or more before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Neighbour> {
        let expiry = self.expiry;
        let mut gone = Vec::new();
        self.entries.retain(|(interface, ip), (mac, seen)| {
            let keep = now.saturating_duration_since(*seen) < expiry;
            if !keep {
                gone.push(Neighbour { interface: interface.clone(), ip: *ip, mac: mac.clone() });
            }
            keep
        });
        gone
    }

    /// When the next entry will expire, if any: the driver's next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries.values().map(|(_, seen)| *seen + self.expiry).min()
    }

    /// Neighbours currently known, sorted.
    pub fn current(&self) -> Vec<Neighbour> {
        self.entries
            .iter()
            .map(|((interface, ip), (mac, _))| Neighbour {
                interface: interface.clone(),
                ip: *ip,
                mac: mac.clone(),
            })
            .collect()
    }

    /// Number of neighbours known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no neighbour is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP: &str = "IP address       HW type     Flags       HW address            Mask     Device\n\
        192.0.2.1        0x1         0x2         02:FC:00:00:00:05     *        eth0\n\
        192.0.2.9        0x1         0x0         00:00:00:00:00:00     *        eth0\n\
        10.0.0.7         0x1         0x6         aa:bb:cc:dd:ee:ff     *        br0\n";

    fn n(iface: &str, ip: &str, mac: &str) -> Neighbour {
        Neighbour { interface: iface.into(), ip: ip.parse().unwrap(), mac: mac.into() }
    }

    #[test]
    fn parses_complete_entries_only() {
        assert_eq!(
            parse_proc_arp(ARP),
            vec![
                n("br0", "10.0.0.7", "aa:bb:cc:dd:ee:ff"),
                n("eth0", "192.0.2.1", "02:fc:00:00:00:05"),
            ]
        );
    }

    #[test]
    fn tracker_adds_changes_and_expires() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = ArpTracker::new(Duration::from_secs(60));
        let a = n("eth0", "192.0.2.1", "02:00:00:00:00:01");
        let b = n("eth0", "192.0.2.2", "02:00:00:00:00:02");

        let d = t.observe(t0, &[a.clone(), b.clone()]);
        assert_eq!(d.added, vec![a.clone(), b.clone()]);
        assert!(d.removed.is_empty());

        // Seen again: no delta.
        assert!(t.observe(t0 + 10 * s, &[a.clone(), b.clone()]).is_empty());

        // b missing but not yet expired.
        assert!(t.observe(t0 + 30 * s, std::slice::from_ref(&a)).is_empty());
        assert_eq!(t.poll_timeout(), Some(t0 + 70 * s));

        // b expires 60 s after it was last seen (t0 + 10 s).
        let d = t.observe(t0 + 70 * s, std::slice::from_ref(&a));
        assert_eq!(d.removed, vec![b.clone()]);
        assert!(d.added.is_empty());
        assert_eq!(t.len(), 1);

        // MAC change: old removed, new added.
        let a2 = n("eth0", "192.0.2.1", "02:00:00:00:00:99");
        let d = t.observe(t0 + 71 * s, std::slice::from_ref(&a2));
        assert_eq!(d.added, vec![a2.clone()]);
        assert_eq!(d.removed, vec![a]);
        assert_eq!(t.current(), vec![a2.clone()]);

        // Time alone expires the rest.
        assert_eq!(t.expire(t0 + 200 * s), vec![a2]);
        assert!(t.is_empty());
        assert_eq!(t.poll_timeout(), None);
    }
}
