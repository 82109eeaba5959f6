//! One reliable connection per nanoprobe, with its address and deadline.
//!
//! Connections are created on the first frame from a node or the first message to it, and
//! dropped when the node is forgotten. Deadlines live in an ordered set, so a turn touches only
//! the connections that are due or dirty, never all of them.
//!
//! **Retransmissions are budgeted over all connections** ([`RESENDS_PER_S`]): each
//! connection's RTO only knows its own peer, so when the CMA falls behind (a registration
//! storm, a fleet back after a partition) every connection times out at once and the CMA
//! resends to all of them, which leaves it less time to read the acknowledgements that would
//! stop the resending. In a 100,000-node wire-mode storm without the budget, 2.56 M of the
//! CMA's 3.79 M datagrams were retransmissions and registrations slowed to 100 per second.
//! A connection whose retransmission is due beyond the budget waits in a queue, first in first
//! out, until the budget has a token for it; its delayed acknowledgements still go out.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_reliable::{Config, Connection};
use assim_wire::NodeId;

/// Retransmission timer firings per second over all connections (and at once): well above
/// what a fleet at rest needs (a lost datagram now and then), well below what the CMA's one
/// socket carries.
pub const RESENDS_PER_S: f64 = 2000.0;
/// A token bucket of [`RESENDS_PER_S`].
#[derive(Debug)]
struct ResendBudget {
    tokens: f64,
    at: Option<Instant>,
}

impl ResendBudget {
    fn refill(&mut self, now: Instant) {
        let at = self.at.get_or_insert(now);
        let dt = now.saturating_duration_since(*at).as_secs_f64();
        self.tokens = (self.tokens + dt * RESENDS_PER_S).min(RESENDS_PER_S);
        *at = now.max(*at);
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there (`None` before the first use: the bucket is full). A
    /// microsecond late rather than a rounding early: a simulator in virtual time wakes exactly
    /// then, and a token still short by a rounding error would wake it again at the same instant,
    /// for ever.
    fn next_token(&self) -> Option<Instant> {
        let missing = (1.0 - self.tokens).max(0.0);
        let wait = Duration::from_secs_f64(missing / RESENDS_PER_S) + Duration::from_micros(1);
        self.at.map(|at| at + wait)
    }
}

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
    resends: ResendBudget,
    /// Connections whose retransmission waits for the budget, first in first out.
    waiting: VecDeque<NodeId>,
    waiting_set: HashSet<NodeId>,
    /// Retransmissions held back so far (a metric).
    pub(crate) resends_held: u64,
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
            resends: ResendBudget { tokens: RESENDS_PER_S, at: None },
            waiting: VecDeque::new(),
            waiting_set: HashSet::new(),
            resends_held: 0,
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
        if self.waiting_set.remove(&node) {
            self.waiting.retain(|n| *n != node);
        }
    }

    /// Runs the timers that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        // Those waiting for the budget go first, in order.
        while !self.waiting.is_empty() && self.resends.take(now) {
            let Some(id) = self.waiting.pop_front() else { break };
            self.waiting_set.remove(&id);
            if let Some(p) = self.map.get_mut(&id) {
                p.conn.handle_timeout(now);
                self.dirty.insert(id);
            }
        }
        for id in self.timers.expired(now) {
            let Some(p) = self.map.get_mut(&id) else { continue };
            if p.conn.retransmission_due(now) {
                if self.waiting_set.contains(&id) {
                    // Already queued; a delayed acknowledgement may be due.
                    self.dirty.insert(id);
                    continue;
                }
                if !self.waiting.is_empty() || !self.resends.take(now) {
                    // Over the budget: it queues; its acknowledgements still go.
                    self.resends_held += 1;
                    self.waiting.push_back(id);
                    self.waiting_set.insert(id);
                    self.dirty.insert(id);
                    continue;
                }
            }
            p.conn.handle_timeout(now);
            self.dirty.insert(id);
        }
    }

    /// The earliest connection deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let budget = if self.waiting.is_empty() { None } else { self.resends.next_token() };
        match (self.timers.next(), budget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
            // A connection waiting for the budget is woken by the queue; only its delayed
            // acknowledgement keeps a timer.
            let due = if self.waiting_set.contains(&id) {
                p.conn.ack_due_at()
            } else {
                p.conn.poll_timeout()
            };
            self.timers.set(id, due);
        }
    }

    /// Retransmissions over all connections (a metric).
    pub(crate) fn retransmits(&self) -> u64 {
        self.map.values().map(|p| p.conn.stats().retransmits).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u32) -> NodeId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_be_bytes());
        NodeId(b)
    }

    /// 6,000 connections time out together (their peers went silent): the first second
    /// retransmits within the budget, the rest are held back, none is lost, and acknowledgements
    /// are not what the budget holds.
    #[test]
    fn retransmissions_over_all_connections_stay_within_the_budget() {
        let mut c = Conns::new(Config::default(), 1, 7);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let t0 = Instant::now();
        let n = 6000u32;
        for i in 0..n {
            c.to(node(i), addr).send(vec![1, 2, 3], t0).unwrap();
            c.dirty.insert(node(i));
        }
        let mut first = 0;
        c.transmit(t0, |_, _, _| first += 1);
        assert_eq!(first, n, "each message goes out once");
        // Nobody answers; step through four seconds 10 ms at a time.
        let mut resent_by = Vec::new();
        let mut total = 0u64;
        let mut t = t0;
        while t < t0 + Duration::from_secs(4) {
            t += Duration::from_millis(10);
            if c.poll_timeout().is_some_and(|d| d <= t) {
                c.handle_timeout(t);
            }
            c.transmit(t, |_, _, _| total += 1);
            resent_by.push((t, total));
        }
        // At most the burst plus the rate over the elapsed time, whatever the RTOs say.
        for (at, sent) in &resent_by {
            let allowed = RESENDS_PER_S * (1.0 + at.duration_since(t0).as_secs_f64()) + 1.0;
            assert!((*sent as f64) <= allowed, "{sent} by {:?}", at.duration_since(t0));
        }
        assert!(c.resends_held > 0, "the budget held some back");
        // Waking exactly when the driver is told to always finds a token (virtual time does
        // not move on by itself).
        let mut wakes = 0;
        while !c.waiting.is_empty() {
            let due = c.poll_timeout().expect("a waiting connection sets a deadline");
            c.handle_timeout(due);
            c.transmit(due, |_, _, _| {});
            wakes += 1;
            assert!(wakes < 100_000, "woken at the same instant without progress");
        }
        // Every connection got its retransmission in the end (held, not dropped).
        let resent = c.map.values().filter(|p| p.conn.stats().retransmits > 0).count();
        assert_eq!(resent as u32, n, "{} held so far", c.resends_held);
    }
}
