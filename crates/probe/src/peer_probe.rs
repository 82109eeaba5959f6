//! Probes of other nodes that the CMA asks for (`ProbeRequest`, issue 13), with no IO.
//!
//! When most of a switch ring goes silent, the CMA asks nanoprobes on other switches to probe
//! members of that ring directly: an answer proves the host alive and the switch forwarding,
//! whatever the CMA itself can reach. This module keeps the requests in flight.
//!
//! ```text
//! request(r)  --invalid target id / address / key, or our own id-----> Err (nothing queued)
//! request(r)  --same command_id already in flight---------------------> Ok, ignored (redelivery)
//! request(r)  --MAX_PENDING in flight--------------------------------> Err(Full)
//! request(r)  --otherwise--> PENDING: Send(probe, fresh nonce) now;
//!                            again every timeout/ATTEMPTS until ATTEMPTS sent
//! PENDING     --reply from the target with one of its nonces----------> Result(answered, rtt)
//! PENDING     --deadline = start + timeout----------------------------> Result(unanswered)
//! reply       --unknown nonce, or from another node---------------------> ignored (counted)
//! ```
//!
//! The timeout is the request's, clamped to [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`]
//! ([`DEFAULT_TIMEOUT`] when 0). Nonces count up from a seed the driver supplies. Sealing (the
//! probe carries our key, since the target may not know us) is the driver's business.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_wire::NodeId;
use assim_wire::msg::{ProbeRequest, ProbeResult};

/// The most requests in flight; more are refused.
pub const MAX_PENDING: usize = 64;
/// Probes sent per request.
pub const ATTEMPTS: u32 = 3;
/// The timeout of a request that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest timeout honoured.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(30);
/// The longest timeout honoured.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request was refused. Nothing was queued.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    #[error("probe request {0}: the target id is not 16 bytes")]
    BadTarget(u64),
    #[error("probe request {0}: the target is this node")]
    SelfTarget(u64),
    #[error("probe request {id}: address {addr:?} is not a usable ip:port")]
    BadAddr { id: u64, addr: String },
    #[error("probe request {0}: the target's public key is not 32 bytes")]
    BadKey(u64),
    #[error("probe request {0}: {MAX_PENDING} requests are in flight already")]
    Full(u64),
}

/// A validated request, for the driver (its sealer needs the target's key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub public_key: [u8; 32],
}

/// What to do ([`PeerProbes::poll_output`]).
#[derive(Clone, Debug, PartialEq)]
pub enum PeerProbeOutput {
    /// Send a probe with this nonce to the target.
    Send { to: NodeId, addr: SocketAddr, nonce: u64 },
    /// Tell the CMA.
    Result(ProbeResult),
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerProbeStats {
    pub requests: u64,
    pub refused: u64,
    pub duplicates: u64,
    pub probes_sent: u64,
    pub answered: u64,
    pub unanswered: u64,
    pub replies_unmatched: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    command_id: u64,
    target: NodeId,
    addr: SocketAddr,
    /// When each nonce was sent.
    sent: Vec<(u64, Instant)>,
    deadline: Instant,
    next_send: Option<Instant>,
    every: Duration,
}

impl Pending {
    fn wake(&self) -> Instant {
        self.next_send.map_or(self.deadline, |s| s.min(self.deadline))
    }
}

/// The requests in flight. See the module doc.
#[derive(Debug)]
pub struct PeerProbes {
    own: NodeId,
    pending: BTreeMap<u64, Pending>,
    /// nonce → command id.
    nonces: BTreeMap<u64, u64>,
    timers: BTreeSet<(Instant, u64)>,
    next_nonce: u64,
    out: VecDeque<PeerProbeOutput>,
    stats: PeerProbeStats,
}

impl PeerProbes {
    /// `own`: this node's id; nonces count up from `seed`.
    pub fn new(own: NodeId, seed: u64) -> PeerProbes {
        PeerProbes {
            own,
            pending: BTreeMap::new(),
            nonces: BTreeMap::new(),
            timers: BTreeSet::new(),
            next_nonce: seed,
            out: VecDeque::new(),
            stats: PeerProbeStats::default(),
        }
    }

    pub fn stats(&self) -> &PeerProbeStats {
        &self.stats
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// A `ProbeRequest` from the CMA: validated, and its first probe queued. `Ok(None)` for a
    /// redelivered request already in flight.
    pub fn request(
        &mut self,
        r: &ProbeRequest,
        now: Instant,
    ) -> Result<Option<Target>, RequestError> {
        let id = r.command_id;
        let refuse = |s: &mut Self, e| {
            s.stats.refused += 1;
            Err(e)
        };
        let Some(node) = NodeId::from_slice(&r.target) else {
            return refuse(self, RequestError::BadTarget(id));
        };
        if node == self.own {
            return refuse(self, RequestError::SelfTarget(id));
        }
        let addr = match r.addr.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast() => a,
            _ => return refuse(self, RequestError::BadAddr { id, addr: clip(&r.addr) }),
        };
        let Ok(public_key) = <[u8; 32]>::try_from(r.public_key.as_slice()) else {
            return refuse(self, RequestError::BadKey(id));
        };
        if self.pending.contains_key(&id) {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        if self.pending.len() >= MAX_PENDING {
            return refuse(self, RequestError::Full(id));
        }
        self.stats.requests += 1;
        let timeout = match r.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms).clamp(MIN_TIMEOUT, MAX_TIMEOUT),
        };
        let p = Pending {
            command_id: id,
            target: node,
            addr,
            sent: Vec::with_capacity(ATTEMPTS as usize),
            deadline: now + timeout,
            next_send: Some(now),
            every: timeout / ATTEMPTS,
        };
        self.timers.insert((p.wake(), id));
        self.pending.insert(id, p);
        self.handle_timeout(now);
        Ok(Some(Target { node, addr, public_key }))
    }

    /// A probe reply from `from` carrying `nonce`. True if it answered a request (whose result
    /// is queued).
    pub fn reply(&mut self, from: NodeId, nonce: u64, now: Instant) -> bool {
        let Some(&id) = self.nonces.get(&nonce) else {
            self.stats.replies_unmatched += 1;
            return false;
        };
        if self.pending.get(&id).is_none_or(|p| p.target != from) {
            self.stats.replies_unmatched += 1;
            return false;
        }
        let p = self.remove(id);
        let sent_at = p.sent.iter().find(|s| s.0 == nonce).map_or(now, |s| s.1);
        self.stats.answered += 1;
        self.out.push_back(PeerProbeOutput::Result(ProbeResult {
            command_id: id,
            target: p.target.as_bytes().to_vec(),
            answered: true,
            rtt_us: now.saturating_duration_since(sent_at).as_micros() as u64,
            attempts: p.sent.len() as u32,
        }));
        true
    }

    fn remove(&mut self, id: u64) -> Pending {
        let p = self.pending.remove(&id).expect("pending");
        self.timers.remove(&(p.wake(), id));
        for (n, _) in &p.sent {
            self.nonces.remove(n);
        }
        p
    }

    /// When [`PeerProbes::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|t| t.0)
    }

    /// Sends the probes due and gives up on requests past their deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(wake, id)) = self.timers.first() {
            if wake > now {
                break;
            }
            self.timers.pop_first();
            let p = self.pending.get_mut(&id).expect("timer of a pending request");
            if now >= p.deadline {
                let p = self.remove(id);
                self.stats.unanswered += 1;
                self.out.push_back(PeerProbeOutput::Result(ProbeResult {
                    command_id: id,
                    target: p.target.as_bytes().to_vec(),
                    answered: false,
                    rtt_us: 0,
                    attempts: p.sent.len() as u32,
                }));
                continue;
            }
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            p.sent.push((nonce, now));
            p.next_send = (p.sent.len() < ATTEMPTS as usize).then(|| now + p.every);
            self.nonces.insert(nonce, p.command_id);
            self.stats.probes_sent += 1;
            self.out.push_back(PeerProbeOutput::Send { to: p.target, addr: p.addr, nonce });
            self.timers.insert((p.wake(), id));
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<PeerProbeOutput> {
        self.out.pop_front()
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn req(cmd: u64, target: u8, timeout_ms: u64) -> ProbeRequest {
        ProbeRequest {
            command_id: cmd,
            target: id(target).as_bytes().to_vec(),
            addr: "192.0.2.7:1984".into(),
            public_key: vec![9; 32],
            timeout_ms,
        }
    }

    fn drain(p: &mut PeerProbes) -> Vec<PeerProbeOutput> {
        std::iter::from_fn(|| p.poll_output()).collect()
    }

    #[test]
    fn an_answered_probe_is_one_result_with_its_round_trip() {
        let t0 = Instant::now();
        let mut p = PeerProbes::new(id(1), 100);
        let t = p.request(&req(7, 2, 900), t0).unwrap().unwrap();
        assert_eq!((t.node, t.public_key), (id(2), [9; 32]));
        let out = drain(&mut p);
        let [PeerProbeOutput::Send { to, nonce, .. }] = out[..] else { panic!("{out:?}") };
        assert_eq!((to, nonce), (id(2), 100));
        // A redelivered request changes nothing.
        assert_eq!(p.request(&req(7, 2, 900), t0), Ok(None));
        assert!(drain(&mut p).is_empty());
        // Another node cannot answer for the target; the target can.
        assert!(!p.reply(id(3), 100, t0));
        assert!(p.reply(id(2), 100, t0 + Duration::from_millis(4)));
        let out = drain(&mut p);
        let [PeerProbeOutput::Result(r)] = &out[..] else { panic!("{out:?}") };
        assert!(r.answered);
        assert_eq!((r.command_id, r.rtt_us, r.attempts), (7, 4000, 1));
        assert_eq!(p.in_flight(), 0);
        assert!(p.poll_timeout().is_none());
        assert!(!p.reply(id(2), 100, t0), "answered once");
    }

    #[test]
    fn an_unanswered_request_sends_three_probes_then_reports_silence() {
        let t0 = Instant::now();
        let mut p = PeerProbes::new(id(1), 0);
        p.request(&req(1, 2, 900), t0).unwrap();
        let mut sends = drain(&mut p).len();
        let mut results = Vec::new();
        let mut now = t0;
        for _ in 0..20 {
            let Some(t) = p.poll_timeout() else { break };
            now = t;
            p.handle_timeout(now);
            for o in drain(&mut p) {
                match o {
                    PeerProbeOutput::Send { .. } => sends += 1,
                    PeerProbeOutput::Result(r) => results.push(r),
                }
            }
        }
        assert_eq!(sends, 3);
        assert_eq!(results.len(), 1);
        assert!(!results[0].answered);
        assert_eq!(results[0].attempts, 3);
        assert_eq!(now, t0 + Duration::from_millis(900));
        // A late reply to the first probe is not news.
        assert!(!p.reply(id(2), 0, now));
    }

    #[test]
    fn invalid_requests_and_a_full_table_are_refused() {
        let t0 = Instant::now();
        let mut p = PeerProbes::new(id(1), 0);
        let mut r = req(1, 2, 0);
        r.target = vec![1; 3];
        assert_eq!(p.request(&r, t0), Err(RequestError::BadTarget(1)));
        assert_eq!(p.request(&req(1, 1, 0), t0), Err(RequestError::SelfTarget(1)));
        let mut r = req(1, 2, 0);
        r.addr = "0.0.0.0:1984".into();
        assert!(matches!(p.request(&r, t0), Err(RequestError::BadAddr { .. })));
        let mut r = req(1, 2, 0);
        r.public_key = vec![1; 31];
        assert_eq!(p.request(&r, t0), Err(RequestError::BadKey(1)));
        for i in 0..MAX_PENDING as u64 {
            p.request(&req(i + 10, 2, 0), t0).unwrap();
        }
        assert_eq!(p.request(&req(5, 2, 0), t0), Err(RequestError::Full(5)));
        assert_eq!(p.stats().refused, 5);
    }

    proptest! {
        /// Whatever the CMA sends, a request is either refused or ends in exactly one result,
        /// within its (clamped) timeout.
        #[test]
        fn every_accepted_request_ends_in_one_result(
            target in proptest::collection::vec(any::<u8>(), 0..20),
            addr in "[0-9.:\\[\\]a-f]{0,24}",
            key_len in 0usize..40,
            timeout_ms in any::<u64>(),
        ) {
            let t0 = Instant::now();
            let mut p = PeerProbes::new(id(1), 0);
            let r = ProbeRequest { command_id: 1, target, addr, public_key: vec![0; key_len], timeout_ms };
            let accepted = p.request(&r, t0).is_ok();
            let mut results = 0;
            for _ in 0..10 {
                while let Some(o) = p.poll_output() {
                    results += usize::from(matches!(o, PeerProbeOutput::Result(_)));
                }
                let Some(t) = p.poll_timeout() else { break };
                prop_assert!(t <= t0 + MAX_TIMEOUT);
                p.handle_timeout(t);
            }
            while let Some(o) = p.poll_output() {
                results += usize::from(matches!(o, PeerProbeOutput::Result(_)));
            }
            prop_assert_eq!(results, usize::from(accepted));
        }
    }
}
