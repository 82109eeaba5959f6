//! A deterministic virtual-time harness for the heartbeat core.
//!
//! One core under test ("us") and any number of scripted remotes that heartbeat us at their own
//! pace. [`Harness::run_until`] jumps virtual time to the earliest of the core's `poll_timeout`
//! and the remotes' next heartbeat, with a bounded number of steps (a livelocked core fails the
//! test instead of hanging it). Every action is logged with its virtual time.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_probe::{Action, DesiredPeers, Heartbeats, PeerInfo, Timing};
use assim_wire::NodeId;
use assim_wire::msg::{Heartbeat, HeartbeatReport, PeerLiveness, ReportKind};

/// Most steps one `run_until` may take before the harness calls it a livelock.
pub const MAX_STEPS: usize = 100_000;

pub fn id(n: u8) -> NodeId {
    NodeId([n; 16])
}

pub fn addr(n: u8) -> SocketAddr {
    format!("10.0.0.{n}:1984").parse().unwrap()
}

pub fn info(n: u8) -> PeerInfo {
    PeerInfo { node_id: id(n), addr: addr(n), public_key: [n; 32] }
}

pub fn desired(epoch: u64, peers: &[u8], timing: Timing) -> DesiredPeers {
    DesiredPeers { epoch, peers: peers.iter().map(|&n| info(n)).collect(), timing }
}

/// A node that heartbeats us.
#[derive(Debug)]
pub struct Remote {
    pub id: NodeId,
    /// Source address of its heartbeats.
    pub from: SocketAddr,
    pub every: Duration,
    /// Its next heartbeat; `None` while it is silent.
    pub next: Option<Instant>,
}

#[derive(Debug)]
pub struct Harness {
    pub hb: Heartbeats,
    pub start: Instant,
    pub now: Instant,
    pub remotes: Vec<Remote>,
    /// Every action the core emitted, with when.
    pub log: Vec<(Instant, Action)>,
    pub steps: usize,
}

impl Harness {
    pub fn new(me: u8) -> Self {
        let start = Instant::now();
        Harness {
            hb: Heartbeats::new(id(me)),
            start,
            now: start,
            remotes: Vec::new(),
            log: Vec::new(),
            steps: 0,
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn at(&self, since_start: Duration) -> Instant {
        self.start + since_start
    }

    pub fn apply(&mut self, d: DesiredPeers) -> assim_probe::Applied {
        let r = self.hb.apply(d, self.now);
        self.drain();
        r
    }

    /// Adds remote `n`, heartbeating from its usual address every `every`, first at now+`first`.
    pub fn add_remote(&mut self, n: u8, every: Duration, first: Duration) {
        self.remotes.push(Remote { id: id(n), from: addr(n), every, next: Some(self.now + first) });
    }

    pub fn remote(&mut self, n: u8) -> &mut Remote {
        self.remotes.iter_mut().find(|r| r.id == id(n)).unwrap()
    }

    /// Stops remote `n` (it crashed).
    pub fn stop(&mut self, n: u8) {
        self.remote(n).next = None;
    }

    /// Remote `n` resumes with a heartbeat right now.
    pub fn resume(&mut self, n: u8) {
        let now = self.now;
        self.remote(n).next = Some(now);
    }

    fn drain(&mut self) {
        while let Some(a) = self.hb.poll_action() {
            self.log.push((self.now, a));
        }
    }

    /// Runs virtual time up to `since_start` (inclusive of events at exactly that time).
    pub fn run_until(&mut self, since_start: Duration) {
        let end = self.start + since_start;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps <= MAX_STEPS, "livelock: {MAX_STEPS} steps before {since_start:?}");
            let core = self.hb.poll_timeout();
            let remote = self.remotes.iter().filter_map(|r| r.next).min();
            let Some(next) = [core, remote].into_iter().flatten().min() else { break };
            if next > end {
                break;
            }
            // A deadline may lie in the past after an input (e.g. a shorter dead time applied to a
            // silent peer): the driver then acts at once.
            let next = next.max(self.now);
            self.now = next;
            for i in 0..self.remotes.len() {
                let r = &mut self.remotes[i];
                if r.next.is_some_and(|t| t <= next) {
                    r.next = Some(next + r.every);
                    let (from, from_addr) = (r.id, r.from);
                    let beat = Heartbeat { epoch: 1, interval_ms: r.every.as_millis() as u64 };
                    self.hb.heartbeat_received(from, from_addr, &beat, next);
                }
            }
            if core.is_some_and(|t| t <= next) {
                self.hb.handle_timeout(next);
                if let Some(t) = self.hb.poll_timeout() {
                    assert!(t > next, "poll_timeout {t:?} not after handle_timeout({next:?})");
                }
            }
            self.drain();
        }
        self.steps += steps;
        self.now = self.now.max(end);
    }

    /// Reports, with their virtual time since start.
    pub fn reports(&self) -> Vec<(Duration, HeartbeatReport)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Report(r) => Some((*t - self.start, r.clone())),
                _ => None,
            })
            .collect()
    }

    /// Times (since start) of reports of `kind` about node `n`.
    pub fn report_times(&self, kind: ReportKind, n: u8) -> Vec<Duration> {
        self.reports()
            .into_iter()
            .filter(|(_, r)| r.kind == kind as i32 && r.peer == id(n).as_bytes())
            .map(|(t, _)| t)
            .collect()
    }

    /// Times (since start) of heartbeats sent to node `n`.
    pub fn send_times(&self, n: u8) -> Vec<Duration> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::SendHeartbeat { to, .. } if *to == id(n) => Some(*t - self.start),
                _ => None,
            })
            .collect()
    }

    pub fn liveness(&self, n: u8) -> Option<PeerLiveness> {
        self.hb.peers().find(|(p, _)| p.node_id == id(n)).map(|(_, l)| l)
    }

    pub fn statuses(&self) -> Vec<(Duration, assim_wire::msg::PeerStatus)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Status(s) => Some((*t - self.start, s.clone())),
                _ => None,
            })
            .collect()
    }
}
