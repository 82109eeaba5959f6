//! One reliable connection per nanoprobe, with its address and deadline.
//!
//! Connections are created on the first frame from a node or the first message to it, and
//! dropped when the node is forgotten. Deadlines live in an ordered set, so a turn touches only
//! the connections that are due or dirty, never all of them.

use std::collections::{BTreeSet, HashMap};

use std::net::SocketAddr;
use std::time::Instant;

use assim_reliable::{Config, Connection};
use assim_wire::NodeId;

/// A set of deadlines keyed by node; at most one per node.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    by_time: BTreeSet<(Instant, NodeId)>,
    by_key: HashMap<NodeId, Instant>,
}

impl Timers {
    /// Sets (or clears, with `None`) the deadline of `key`.
    pub(crate) fn set(&mut self, key: NodeId, at: Option<Instant>) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
        if let Some(at) = at {
            self.by_key.insert(key, at);
            self.by_time.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns the keys whose deadline is at or before `now`, earliest first.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<NodeId> {
        let mut out = Vec::new();
        while let Some(&(t, k)) = self.by_time.first() {
            if t > now {
                break;
            }
            self.by_time.pop_first();
            self.by_key.remove(&k);
            out.push(k);
        }
        out
    }
}

#[derive(Debug)]
pub(crate) struct PeerConn {
    pub(crate) conn: Connection,
    pub(crate) addr: SocketAddr,
}

/// The reliable connections of the CMA.
#[derive(Debug)]
pub(crate) struct Conns {
    config: Config,
    session: u64,
    seed: u64,
    pub(crate) map: HashMap<NodeId, PeerConn>,
    timers: Timers,
    /// Connections touched since the last transmit (ordered: the simulator is deterministic).
    dirty: BTreeSet<NodeId>,
}

impl Conns {
    pub(crate) fn new(config: Config, session: u64, seed: u64) -> Conns {
        Conns {
            config,
            session,
            seed,
            map: HashMap::new(),
            timers: Timers::default(),
            dirty: BTreeSet::new(),
        }
    }

    /// The connection `node` just sent from `src` on (created if needed; its address follows
    /// the sender).
    pub(crate) fn from(&mut self, node: NodeId, src: SocketAddr) -> &mut Connection {
        let p = self.entry(node, src);
        p.addr = src;
        &mut p.conn
    }

    /// The connection to send to `node` on, created with `addr` if there is none.
    pub(crate) fn to(&mut self, node: NodeId, addr: SocketAddr) -> &mut Connection {
        &mut self.entry(node, addr).conn
    }

    fn entry(&mut self, node: NodeId, addr: SocketAddr) -> &mut PeerConn {
        let seed = self.seed ^ u64::from_le_bytes(node.0[8..16].try_into().expect("8 bytes"));
        let (config, session) = (&self.config, self.session);
        self.dirty.insert(node);
        self.map.entry(node).or_insert_with(|| PeerConn {
            conn: Connection::new(config.clone(), session, seed),
            addr,
        })
    }

    /// The address last seen for `node`.
    pub(crate) fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.map.get(&node).map(|p| p.addr)
    }

    /// Forgets `node`'s connection.
    pub(crate) fn remove(&mut self, node: NodeId) {
        self.map.remove(&node);
        self.timers.set(node, None);
        self.dirty.remove(&node);
    }

    /// Runs the timers that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for id in self.timers.expired(now) {
            if let Some(p) = self.map.get_mut(&id) {
                p.conn.handle_timeout(now);
                self.dirty.insert(id);
            }
        }
    }

    /// The earliest connection deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Drains the frames of every touched connection and re-arms their timers.
    pub(crate) fn transmit(
        &mut self,
        now: Instant,
        mut out: impl FnMut(NodeId, SocketAddr, Vec<u8>),
    ) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(p) = self.map.get_mut(&id) else { continue };
            while let Some(frame) = p.conn.poll_transmit(now) {
                out(id, p.addr, frame);
            }
            self.timers.set(id, p.conn.poll_timeout());
        }
    }

    /// Retransmissions over all connections (a metric).
    pub(crate) fn retransmits(&self) -> u64 {
        self.map.values().map(|p| p.conn.stats().retransmits).sum()
    }
}
