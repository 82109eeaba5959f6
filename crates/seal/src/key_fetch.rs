//! Trust-on-first-use key fetch, sans-IO: a nanoprobe asks the CMA for its public key
//! (`KeyRequest`) until a `KeyReply` comes, at the pace the CMA sets.
//!
//! Rules:
//! - The first request is due at once. Without any answer the next one follows after
//!   [`FIRST_WAIT`], doubling up to [`MAX_WAIT`], each plus up to 50 % random jitter (a storm of
//!   nanoprobes started together spreads out on its own).
//! - A `Busy` from the CMA ("ask again after N ms", sent when a registration storm is beyond
//!   its budget) sets the next request to N from now, clamped to [`MIN_BUSY_WAIT`] ..=
//!   [`MAX_BUSY_WAIT`], plus up to an eighth of N (at most [`MAX_BUSY_JITTER`]) of jitter. The
//!   CMA spaces the waits it hands out at its registration rate, so the requests come back at
//!   that rate and never overflow its socket. The backoff starts again from [`FIRST_WAIT`]:
//!   the CMA is alive.
//! - With several CMA addresses (engines on several hosts), a request that went unanswered
//!   sends the next one to the next address, round robin; the one that answers (a key or a
//!   `Busy`) is asked from then on ([`KeyFetch::target`]).
//! - Only datagrams from the CMA's addresses count, and only while no key is known; a `Busy`
//!   must carry a mac1 made for our key. `Busy` is clear text (nobody holds a shared key yet),
//!   so a sender that saw our key could forge one: the clamp bounds what that costs to one
//!   [`MAX_BUSY_WAIT`] per forged datagram (a sender that can do that can also drop our
//!   datagrams), and the lower bound keeps a stream of forged zero waits from turning us into
//!   a fast sender.
//! - The `KeyReply`'s key is what trust on first use pins; judging it is the caller's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_wire::{DatagramKind, NodeId};

use crate::seal::Sealer;

/// The wait after the first unanswered request.
pub const FIRST_WAIT: Duration = Duration::from_millis(500);
/// The longest wait between unanswered requests.
pub const MAX_WAIT: Duration = Duration::from_secs(8);
/// The shortest wait a `Busy` can impose.
pub const MIN_BUSY_WAIT: Duration = Duration::from_millis(50);
/// The longest wait a `Busy` can impose.
pub const MAX_BUSY_WAIT: Duration = Duration::from_secs(60);
/// The most jitter added to a `Busy`'s wait.
pub const MAX_BUSY_JITTER: Duration = Duration::from_millis(250);

/// What an incoming datagram meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The CMA's id and public key.
    Key { id: NodeId, key: [u8; 32] },
    /// The CMA asked us to wait; the next request is due after this long.
    Busy(Duration),
    /// Not an answer for us (another source, unauthenticated, another kind, or already done).
    Ignored,
}

/// The key fetch's state. See the module doc.
#[derive(Debug)]
pub struct KeyFetch {
    cmas: Vec<SocketAddr>,
    /// The address the next request goes to.
    at: usize,
    /// The last request went unanswered so far.
    waiting: bool,
    /// When the next request is due.
    next: Instant,
    /// Unanswered requests in a row (for the backoff).
    unanswered: u32,
    requests: u64,
    busy: u64,
    done: bool,
    rng: u64,
}

impl KeyFetch {
    /// A fetch from the CMA at `cma`; the first request is due at `now`. `seed` drives the
    /// jitter.
    pub fn new(cma: SocketAddr, now: Instant, seed: u64) -> KeyFetch {
        KeyFetch::with_addresses(vec![cma], now, seed)
    }

    /// A fetch from a CMA reachable at any of `cmas` (at least one; the first is asked
    /// first).
    pub fn with_addresses(cmas: Vec<SocketAddr>, now: Instant, seed: u64) -> KeyFetch {
        assert!(!cmas.is_empty(), "a key fetch needs a CMA address");
        KeyFetch {
            cmas,
            at: 0,
            waiting: false,
            next: now,
            unanswered: 0,
            requests: 0,
            busy: 0,
            done: false,
            rng: seed | 1,
        }
    }

    /// Where the request [`KeyFetch::poll_request`] returned goes.
    pub fn target(&self) -> SocketAddr {
        self.cmas[self.at]
    }

    /// When the next request is due (`None` once the key is known).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then_some(self.next)
    }

    /// The next `KeyRequest` to send to the CMA, if one is due at `now`.
    pub fn poll_request(&mut self, now: Instant, sealer: &mut Sealer) -> Option<Vec<u8>> {
        if self.done || now < self.next {
            return None;
        }
        if self.waiting {
            // The last request went unanswered: try the next address.
            self.at = (self.at + 1) % self.cmas.len();
        }
        self.waiting = true;
        let base = FIRST_WAIT.saturating_mul(1 << self.unanswered.min(4)).min(MAX_WAIT);
        self.next = now + base + self.jitter(base / 2);
        self.unanswered = self.unanswered.saturating_add(1);
        self.requests += 1;
        let mut out = Vec::new();
        sealer.key_request(&mut out);
        Some(out)
    }

    /// A datagram from `src`.
    pub fn handle(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        sealer: &mut Sealer,
    ) -> Answer {
        let Some(from) = self.cmas.iter().position(|a| *a == src) else { return Answer::Ignored };
        if self.done {
            return Answer::Ignored;
        }
        let Ok(opened) = sealer.open(datagram) else { return Answer::Ignored };
        match opened.header.kind {
            DatagramKind::KeyReply => match opened.header.sender_key {
                Some(key) => {
                    self.done = true;
                    Answer::Key { id: opened.header.sender, key }
                }
                None => Answer::Ignored,
            },
            DatagramKind::Busy => {
                let Some(wait) = Sealer::busy_wait(&opened) else { return Answer::Ignored };
                let wait = wait.clamp(MIN_BUSY_WAIT, MAX_BUSY_WAIT);
                // This address answers: ask it again.
                self.at = from;
                self.waiting = false;
                self.next = now + wait + self.jitter((wait / 8).min(MAX_BUSY_JITTER));
                self.unanswered = 0;
                self.busy += 1;
                Answer::Busy(self.next - now)
            }
            _ => Answer::Ignored,
        }
    }

    /// Requests sent and `Busy` answers honoured so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.requests, self.busy)
    }

    /// Uniform in `[0, max]` (xorshift64*).
    fn jitter(&mut self, max: Duration) -> Duration {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let nanos = max.as_nanos() as u64;
        if nanos == 0 { Duration::ZERO } else { Duration::from_nanos(r % (nanos + 1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    /// Several addresses: an unanswered request moves the next one on, round robin; the
    /// address that answers is kept; a datagram from elsewhere counts for nothing.
    #[test]
    fn unanswered_requests_go_round_the_addresses_and_an_answer_keeps_its_address() {
        let (mut cma, mut node) = (sealer(2), sealer(1));
        let addrs: Vec<SocketAddr> = ["127.0.0.2:7000", "127.0.0.3:7000", "127.0.0.4:7000"]
            .map(|a| a.parse().unwrap())
            .into();
        let t0 = Instant::now();
        let mut f = KeyFetch::with_addresses(addrs.clone(), t0, 5);
        let mut now = t0;
        let mut asked = Vec::new();
        for _ in 0..4 {
            f.poll_request(now, &mut node).expect("due");
            asked.push(f.target());
            now = f.poll_timeout().unwrap();
        }
        assert_eq!(asked, vec![addrs[0], addrs[1], addrs[2], addrs[0]]);
        // A Busy from the second address: it is asked again, not the next one.
        let mut out = Vec::new();
        cma.busy(&node.public_key(), Duration::from_millis(100), &mut out);
        let stranger: SocketAddr = "127.0.0.9:7000".parse().unwrap();
        assert_eq!(f.handle(now, stranger, &out, &mut node), Answer::Ignored);
        assert!(matches!(f.handle(now, addrs[1], &out, &mut node), Answer::Busy(_)));
        let due = f.poll_timeout().unwrap();
        f.poll_request(due, &mut node).expect("due");
        assert_eq!(f.target(), addrs[1]);
    }

    fn sealer(n: u8) -> Sealer {
        Sealer::new(Identity::from_parts(NodeId([n; 16]), [n.wrapping_mul(37) | 1; 32]), 7)
    }

    fn cma_addr() -> SocketAddr {
        "127.0.0.1:7000".parse().unwrap()
    }

    #[test]
    fn unanswered_requests_back_off_with_jitter_up_to_the_cap() {
        let mut node = sealer(1);
        let t0 = Instant::now();
        let mut f = KeyFetch::new(cma_addr(), t0, 3);
        assert_eq!(f.poll_timeout(), Some(t0));
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            let req = f.poll_request(now, &mut node).expect("due");
            assert_eq!(req.len(), assim_wire::header::KEY_REQUEST_LEN);
            assert!(f.poll_request(now, &mut node).is_none(), "one request per wait");
            let next = f.poll_timeout().unwrap();
            gaps.push(next - now);
            now = next;
        }
        for (i, g) in gaps.iter().enumerate() {
            let base = FIRST_WAIT.saturating_mul(1 << i.min(4)).min(MAX_WAIT);
            assert!(*g >= base && *g <= base + base / 2, "gap {i}: {g:?} for base {base:?}");
        }
        assert_eq!(f.counts(), (8, 0));
    }

    #[test]
    fn busy_sets_the_next_request_within_bounds() {
        let (mut cma, mut node) = (sealer(2), sealer(1));
        let t0 = Instant::now();
        let mut f = KeyFetch::new(cma_addr(), t0, 9);
        f.poll_request(t0, &mut node).unwrap();
        let mut out = Vec::new();
        for (asked, lo, hi) in [
            (Duration::from_millis(1500), 1500, 1500 + 187),
            (Duration::ZERO, 50, 50 + 6),
            (Duration::from_secs(3600), 60_000, 60_250),
            (Duration::from_secs(20), 20_000, 20_250),
        ] {
            cma.busy(&node.public_key(), asked, &mut out);
            let Answer::Busy(wait) = f.handle(t0, cma_addr(), &out, &mut node) else {
                panic!("a Busy from the CMA is honoured")
            };
            let ms = wait.as_millis() as u64;
            assert!((lo..=hi).contains(&ms), "asked {asked:?}: waits {ms} ms");
            assert_eq!(f.poll_timeout(), Some(t0 + wait));
            assert!(f.poll_request(t0 + wait - Duration::from_millis(1), &mut node).is_none());
        }
        // After a Busy the backoff starts again: the CMA is alive.
        let due = f.poll_timeout().unwrap();
        f.poll_request(due, &mut node).unwrap();
        let gap = f.poll_timeout().unwrap() - due;
        assert!(gap >= FIRST_WAIT && gap <= FIRST_WAIT * 3 / 2, "{gap:?}");
        assert_eq!(f.counts(), (2, 4));
    }

    #[test]
    fn only_the_cma_can_answer_and_only_once() {
        let (mut cma, mut node) = (sealer(2), sealer(1));
        let t0 = Instant::now();
        let mut f = KeyFetch::new(cma_addr(), t0, 1);
        f.poll_request(t0, &mut node).unwrap();
        let due = f.poll_timeout();
        let mut out = Vec::new();
        // From another address: ignored, nothing changes.
        cma.busy(&node.public_key(), Duration::from_secs(30), &mut out);
        let other: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        assert_eq!(f.handle(t0, other, &out, &mut node), Answer::Ignored);
        // Made for someone else's key (a forger who did not see ours): ignored.
        cma.busy(&sealer(3).public_key(), Duration::from_secs(30), &mut out);
        assert_eq!(f.handle(t0, cma_addr(), &out, &mut node), Answer::Ignored);
        // Garbage and other kinds: ignored.
        assert_eq!(f.handle(t0, cma_addr(), b"garbage", &mut node), Answer::Ignored);
        let mut req = Vec::new();
        cma.key_request(&mut req);
        assert_eq!(f.handle(t0, cma_addr(), &req, &mut node), Answer::Ignored);
        assert_eq!(f.poll_timeout(), due);
        // The reply: the key, then nothing more.
        cma.key_reply(&node.public_key(), &mut out);
        let want = Answer::Key { id: cma.node_id(), key: cma.public_key() };
        assert_eq!(f.handle(t0, cma_addr(), &out, &mut node), want);
        assert_eq!(f.poll_timeout(), None);
        assert!(f.poll_request(t0 + MAX_BUSY_WAIT, &mut node).is_none());
        cma.busy(&node.public_key(), Duration::from_secs(1), &mut out);
        assert_eq!(f.handle(t0, cma_addr(), &out, &mut node), Answer::Ignored);
    }
}
