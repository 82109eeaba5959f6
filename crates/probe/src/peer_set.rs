//! The desired heartbeat peer set, validated from the wire.
//!
//! A `PeerSet` from the CMA is checked once, here, at the edge: node ids are 16 bytes, addresses
//! parse and are usable as destinations, keys are 32 bytes, the timing is valid, no node appears
//! twice and there are at most [`MAX_PEERS`] peers. Whether the set names ourselves is a question
//! only the core can answer; `Heartbeats::apply` drops our own id.

use std::net::{AddrParseError, SocketAddr};
use std::time::Duration;

use assim_wire::NodeId;
use assim_wire::msg::{Peer, PeerSet};

use crate::timing::{Timing, millis};

/// The most peers one nanoprobe heartbeats. Rings give 2; a few more for cross-links.
pub const MAX_PEERS: usize = 64;

/// One heartbeat peer: who, where to send, and the key its heartbeats are sealed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    pub public_key: [u8; 32],
}

/// The whole heartbeat configuration the CMA wants this node to run, as of `epoch`.
///
/// Built from the wire with `TryFrom<&PeerSet>` (validated). A value built by hand should pass
/// [`DesiredPeers::validate`]; `Heartbeats::apply` defends against one that does not (clamps the
/// timing, drops duplicates and peers beyond [`MAX_PEERS`]) but does not report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPeers {
    pub epoch: u64,
    pub peers: Vec<PeerInfo>,
    pub timing: Timing,
}

/// Why a peer set (or a timing) was refused. In every case nothing was applied: the node keeps
/// running its previous peer set.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PeerSetError {
    /// The heartbeat interval is zero.
    #[error("heartbeat interval is 0 ms; the CMA must send an interval of at least 1 ms")]
    ZeroInterval,
    /// The warn time is shorter than one interval, so every peer would be late between beats.
    #[error(
        "warn time {warn:?} is shorter than the heartbeat interval {interval:?}; \
         the CMA must send warn ≥ interval"
    )]
    WarnBeforeInterval { interval: Duration, warn: Duration },
    /// The dead time does not come after the warn time.
    #[error(
        "dead time {dead:?} is not longer than warn time {warn:?}; the CMA must send dead > warn"
    )]
    DeadNotAfterWarn { warn: Duration, dead: Duration },
    /// The dead time exceeds the allowed maximum.
    #[error("dead time {dead:?} exceeds the maximum of {max:?}; the CMA must send a shorter one")]
    DeadTooLong { dead: Duration, max: Duration },
    /// More peers than a nanoprobe heartbeats.
    #[error(
        "peer set has {count} peers, more than the maximum of {max}; the CMA's ring manager is misconfigured"
    )]
    TooManyPeers { count: usize, max: usize },
    /// A peer's node id is not 16 bytes.
    #[error("peer #{index}: node id is {len} bytes, expected 16")]
    BadNodeId { index: usize, len: usize },
    /// A peer's address does not parse as `ip:port`.
    #[error("peer #{index}: address {addr:?} is not an `ip:port` socket address: {source}")]
    BadAddr { index: usize, addr: String, source: AddrParseError },
    /// A peer's address parses but cannot be sent to (unspecified IP or port 0).
    #[error("peer #{index}: address {addr} cannot be sent to (unspecified IP or port 0)")]
    UnusableAddr { index: usize, addr: SocketAddr },
    /// A peer's public key is not 32 bytes.
    #[error("peer #{index}: public key is {len} bytes, expected 32")]
    BadPublicKey { index: usize, len: usize },
    /// The same node id appears twice.
    #[error("peer #{index}: node {node_id} appears more than once in the peer set")]
    DuplicatePeer { index: usize, node_id: NodeId },
}

impl DesiredPeers {
    /// Checks what `TryFrom<&PeerSet>` checks, for a value built by hand.
    pub fn validate(&self) -> Result<(), PeerSetError> {
        self.timing.validate()?;
        if self.peers.len() > MAX_PEERS {
            return Err(PeerSetError::TooManyPeers { count: self.peers.len(), max: MAX_PEERS });
        }
        for (index, p) in self.peers.iter().enumerate() {
            check_addr(index, p.addr)?;
            if self.peers[..index].iter().any(|q| q.node_id == p.node_id) {
                return Err(PeerSetError::DuplicatePeer { index, node_id: p.node_id });
            }
        }
        Ok(())
    }

    /// The wire form (timing in whole milliseconds).
    pub fn to_wire(&self) -> PeerSet {
        PeerSet {
            epoch: self.epoch,
            peers: self
                .peers
                .iter()
                .map(|p| Peer {
                    node_id: p.node_id.as_bytes().to_vec(),
                    addr: p.addr.to_string(),
                    public_key: p.public_key.to_vec(),
                })
                .collect(),
            interval_ms: millis(self.timing.interval),
            warn_ms: millis(self.timing.warn),
            dead_ms: millis(self.timing.dead),
        }
    }
}

fn check_addr(index: usize, addr: SocketAddr) -> Result<(), PeerSetError> {
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(PeerSetError::UnusableAddr { index, addr });
    }
    Ok(())
}

impl TryFrom<&PeerSet> for DesiredPeers {
    type Error = PeerSetError;

    fn try_from(set: &PeerSet) -> Result<Self, PeerSetError> {
        let timing = Timing::from_millis(set.interval_ms, set.warn_ms, set.dead_ms);
        timing.validate()?;
        if set.peers.len() > MAX_PEERS {
            return Err(PeerSetError::TooManyPeers { count: set.peers.len(), max: MAX_PEERS });
        }
        let mut peers: Vec<PeerInfo> = Vec::with_capacity(set.peers.len());
        for (index, p) in set.peers.iter().enumerate() {
            let node_id = NodeId::from_slice(&p.node_id)
                .ok_or(PeerSetError::BadNodeId { index, len: p.node_id.len() })?;
            let addr: SocketAddr = p.addr.parse().map_err(|source| PeerSetError::BadAddr {
                index,
                addr: p.addr.clone(),
                source,
            })?;
            check_addr(index, addr)?;
            let public_key: [u8; 32] = p
                .public_key
                .as_slice()
                .try_into()
                .map_err(|_| PeerSetError::BadPublicKey { index, len: p.public_key.len() })?;
            if peers.iter().any(|q| q.node_id == node_id) {
                return Err(PeerSetError::DuplicatePeer { index, node_id });
            }
            peers.push(PeerInfo { node_id, addr, public_key });
        }
        Ok(DesiredPeers { epoch: set.epoch, peers, timing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Peer {
        Peer { node_id: vec![n; 16], addr: format!("10.0.0.{n}:1984"), public_key: vec![n; 32] }
    }

    fn set(peers: Vec<Peer>) -> PeerSet {
        PeerSet { epoch: 7, peers, interval_ms: 1000, warn_ms: 3000, dead_ms: 5000 }
    }

    fn err(s: &PeerSet) -> PeerSetError {
        DesiredPeers::try_from(s).unwrap_err()
    }

    #[test]
    fn valid_set_round_trips() {
        let mut s = set(vec![peer(1), peer(2)]);
        s.peers.push(Peer { addr: "[2001:db8::9]:1984".into(), ..peer(3) });
        let d = DesiredPeers::try_from(&s).unwrap();
        assert_eq!(d.epoch, 7);
        assert_eq!(d.timing, Timing::from_millis(1000, 3000, 5000));
        assert_eq!(d.peers[1].node_id, NodeId([2; 16]));
        assert_eq!(d.peers[2].addr, "[2001:db8::9]:1984".parse().unwrap());
        d.validate().unwrap();
        assert_eq!(d.to_wire(), s);
    }

    #[test]
    fn empty_set_is_valid() {
        let d = DesiredPeers::try_from(&set(vec![])).unwrap();
        assert!(d.peers.is_empty());
    }

    #[test]
    fn rejects_bad_node_id() {
        let s = set(vec![peer(1), Peer { node_id: vec![2; 15], ..peer(2) }]);
        assert_eq!(err(&s), PeerSetError::BadNodeId { index: 1, len: 15 });
    }

    #[test]
    fn rejects_bad_addr() {
        for bad in ["", "10.0.0.1", "host.example:1984", "10.0.0.1:99999", "::1:1984"] {
            let s = set(vec![Peer { addr: bad.into(), ..peer(1) }]);
            match err(&s) {
                PeerSetError::BadAddr { index: 0, addr, .. } => assert_eq!(addr, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_unusable_addr() {
        for bad in ["0.0.0.0:1984", "[::]:1984", "10.0.0.1:0"] {
            let s = set(vec![Peer { addr: bad.into(), ..peer(1) }]);
            assert!(matches!(err(&s), PeerSetError::UnusableAddr { index: 0, .. }), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_public_key() {
        let s = set(vec![Peer { public_key: vec![1; 33], ..peer(1) }]);
        assert_eq!(err(&s), PeerSetError::BadPublicKey { index: 0, len: 33 });
        let s = set(vec![Peer { public_key: vec![], ..peer(1) }]);
        assert_eq!(err(&s), PeerSetError::BadPublicKey { index: 0, len: 0 });
    }

    #[test]
    fn rejects_duplicates() {
        let s = set(vec![peer(1), peer(2), Peer { addr: "10.9.9.9:1".into(), ..peer(1) }]);
        assert_eq!(err(&s), PeerSetError::DuplicatePeer { index: 2, node_id: NodeId([1; 16]) });
    }

    #[test]
    fn rejects_too_many_peers() {
        let s = set((1..=65).map(peer).collect());
        assert_eq!(err(&s), PeerSetError::TooManyPeers { count: 65, max: MAX_PEERS });
        let s = set((1..=64).map(peer).collect());
        assert_eq!(DesiredPeers::try_from(&s).unwrap().peers.len(), 64);
    }

    #[test]
    fn rejects_bad_timing() {
        let mut s = set(vec![peer(1)]);
        s.interval_ms = 0;
        assert_eq!(err(&s), PeerSetError::ZeroInterval);
        let s = PeerSet { warn_ms: 500, ..set(vec![]) };
        assert!(matches!(err(&s), PeerSetError::WarnBeforeInterval { .. }));
        let s = PeerSet { dead_ms: 3000, ..set(vec![]) };
        assert!(matches!(err(&s), PeerSetError::DeadNotAfterWarn { .. }));
        let s = PeerSet { dead_ms: 3_600_001, ..set(vec![]) };
        assert!(matches!(err(&s), PeerSetError::DeadTooLong { .. }));
        // The all-zero timing of a `PeerSet::default()` is refused, not silently defaulted.
        assert_eq!(err(&PeerSet::default()), PeerSetError::ZeroInterval);
    }

    #[test]
    fn messages_name_the_problem() {
        let s = set(vec![Peer { addr: "nope".into(), ..peer(1) }]);
        let msg = err(&s).to_string();
        assert!(msg.contains("peer #0") && msg.contains("\"nope\""), "{msg}");
    }

    #[test]
    fn validate_catches_hand_built_mistakes() {
        let info = PeerInfo {
            node_id: NodeId([1; 16]),
            addr: "10.0.0.1:1".parse().unwrap(),
            public_key: [0; 32],
        };
        let d =
            DesiredPeers { epoch: 1, peers: vec![info.clone(), info], timing: Timing::default() };
        assert!(matches!(d.validate(), Err(PeerSetError::DuplicatePeer { index: 1, .. })));
    }
}
