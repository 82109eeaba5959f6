//! Admission control for the work a stranger's datagram can cause: token buckets per source
//! address and one global bucket, sans-IO (time comes in as `now`).
//!
//! Two budgets use it in [`crate::Sealer::open_from`]: **first contacts** (a sealed datagram
//! from a sender whose key we do not hold, which costs an X25519 operation to open) and **key
//! requests** (each answered with a `KeyReply`). Datagrams between peers that hold each other's
//! keys never meet a budget, so a flood of first contacts cannot delay the known nanoprobes'
//! reports.
//!
//! # Rules
//!
//! - The **global** bucket holds at most `burst` tokens and refills at `rate` per second; every
//!   admission takes one. When it is empty the datagram is refused (`Refusal::Budget`): a flood
//!   costs at most `burst + rate × seconds` DH operations, whatever its sources.
//! - Each **source** (an IPv4 address, or an IPv6 /64) has its own bucket (`source_burst`,
//!   `source_rate`); a source over its allowance is refused (`Refusal::Source`) without taking
//!   a global token, so one sender cannot take the whole budget from the others.
//! - **Loopback** sources (127.0.0.0/8, ::1) meet only the global bucket: any local user can
//!   send from every one of the 16 million loopback addresses, so a per-address allowance there
//!   protects nothing, and labs run thousands of nanoprobes on 127.0.0.1.
//! - The source table holds at most `sources` entries; a new source beyond that evicts the
//!   oldest entry (first in, first out). Memory is bounded by `sources` whatever the number of
//!   sources seen; an evicted source starts again with a full bucket, which gives it no more than
//!   a fresh address would (the global bucket still bounds the total).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

/// The limits of one budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Admissions per second, all sources together.
    pub rate: f64,
    /// Admissions at once (the global bucket's size).
    pub burst: f64,
    /// Admissions per second per source.
    pub source_rate: f64,
    /// A source's bucket size.
    pub source_burst: f64,
    /// Source entries kept at most.
    pub sources: usize,
}

impl Limits {
    /// First contacts at the CMA: 4,000 X25519 operations per second at most (about a fifth of
    /// one core), 8 per second (32 at once) per source address. The rate is the CMA's
    /// registration rate for nanoprobes it does not know yet: 100,000 in 25 s (issue 18).
    pub const FIRST_CONTACT: Limits =
        Limits { rate: 4000.0, burst: 4000.0, source_rate: 8.0, source_burst: 32.0, sources: 4096 };
    /// Key requests answered: 4,000 per second (352 KB/s of replies, each no larger than its
    /// request), 4 per second (16 at once) per source address. The CMA paces the requests it
    /// refuses below this rate (`Busy`, see `assim_cma_shell::pace`), so the first contacts
    /// that follow the replies stay within [`Limits::FIRST_CONTACT`].
    pub const KEY_REQUEST: Limits =
        Limits { rate: 4000.0, burst: 4000.0, source_rate: 4.0, source_burst: 16.0, sources: 4096 };
}

/// Why a datagram was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source used up its own allowance.
    Source,
    /// The global budget is used up.
    Budget,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = self.at.max(now);
    }
}

/// One budget: the global bucket and the bounded table of source buckets.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    global: Option<Bucket>,
    sources: HashMap<IpAddr, Bucket>,
    /// Insertion order of `sources`, for eviction of the oldest.
    order: VecDeque<IpAddr>,
    admitted: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            global: None,
            sources: HashMap::new(),
            order: VecDeque::new(),
            admitted: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admissions so far.
    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    /// Source entries held now (never more than [`Limits::sources`]).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Takes one token for a datagram from `src` at `now`, or says why not. A refusal changes
    /// nothing but the refill of the buckets.
    pub fn admit(&mut self, now: Instant, src: IpAddr) -> Result<(), Refusal> {
        let l = self.limits;
        let global = self.global.get_or_insert_with(|| Bucket::full(l.burst, now));
        global.refill(now, l.rate, l.burst);
        if global.tokens < 1.0 {
            return Err(Refusal::Budget);
        }
        if src.is_loopback() || src.to_canonical().is_loopback() {
            global.tokens -= 1.0;
            self.admitted += 1;
            return Ok(());
        }
        let key = source_key(src);
        let source = match self.sources.get_mut(&key) {
            Some(b) => {
                b.refill(now, l.source_rate, l.source_burst);
                b
            }
            None => {
                while self.sources.len() >= l.sources.max(1) {
                    let Some(old) = self.order.pop_front() else { break };
                    self.sources.remove(&old);
                }
                self.order.push_back(key);
                self.sources.entry(key).or_insert(Bucket::full(l.source_burst, now))
            }
        };
        if source.tokens < 1.0 {
            return Err(Refusal::Source);
        }
        source.tokens -= 1.0;
        global.tokens -= 1.0;
        self.admitted += 1;
        Ok(())
    }
}

/// The unit a source bucket is kept for: an IPv4 address, or the /64 of an IPv6 address (one
/// host usually holds a whole /64). IPv4-mapped IPv6 addresses count as their IPv4 address.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    /// A non-loopback source (10.0.0.0/8).
    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))
    }

    fn lo(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (n & 0x00ff_ffff)))
    }

    const SMALL: Limits =
        Limits { rate: 100.0, burst: 100.0, source_rate: 5.0, source_burst: 10.0, sources: 64 };

    #[test]
    fn the_global_budget_bounds_admissions_whatever_the_sources() {
        let t0 = Instant::now();
        let mut b = Budget::new(SMALL);
        let mut ok = 0;
        // 10 s of 10,000 datagrams per second, each from a new source.
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            if b.admit(now, v4(i)).is_ok() {
                ok += 1;
            }
        }
        // burst + rate × 10 s.
        assert!(ok <= 100 + 100 * 10, "{ok}");
        assert!(ok >= 1000, "{ok}");
        assert!(b.tracked_sources() <= SMALL.sources);
    }

    #[test]
    fn a_busy_source_is_held_to_its_allowance() {
        let t0 = Instant::now();
        let mut b = Budget::new(SMALL);
        for _ in 0..10 {
            b.admit(t0, v4(1)).unwrap();
        }
        // Over its own allowance; another source is not.
        assert_eq!(b.admit(t0, v4(1)), Err(Refusal::Source));
        for _ in 0..10 {
            b.admit(t0, v4(2)).unwrap();
        }
        assert_eq!(b.admit(t0, v4(2)), Err(Refusal::Source));
        // A second later it has source_rate more.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..5 {
            b.admit(t1, v4(1)).unwrap();
        }
        assert_eq!(b.admit(t1, v4(1)), Err(Refusal::Source));
        // Loopback meets only the global bucket; draining it gives Budget refusals.
        let mut refusals = 0;
        for _ in 0..300 {
            if b.admit(t1, lo(1)) == Err(Refusal::Budget) {
                refusals += 1;
            }
        }
        assert!(refusals > 0);
        assert_eq!(b.admitted(), 10 + 10 + 5 + (300 - refusals));
        assert_eq!(b.admit(t1, v4(3)), Err(Refusal::Budget));
    }

    #[test]
    fn the_table_evicts_the_oldest_source() {
        let t0 = Instant::now();
        let mut b = Budget::new(Limits { rate: 1e9, burst: 1e9, ..SMALL });
        for i in 0..10_000 {
            b.admit(t0, v4(i)).unwrap();
            assert!(b.tracked_sources() <= SMALL.sources);
        }
        assert_eq!(b.tracked_sources(), SMALL.sources);
        assert_eq!(b.order.len(), SMALL.sources);
        assert!(b.sources.contains_key(&v4(9_999)));
        assert!(!b.sources.contains_key(&v4(0)));
    }

    #[test]
    fn ipv6_sources_are_kept_per_64() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a.into()), source_key(b.into()));
        assert_ne!(source_key(a.into()), source_key(c.into()));
        let mapped: Ipv6Addr = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        assert_eq!(source_key(mapped.into()), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn time_going_backwards_does_not_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = Budget::new(SMALL);
        for i in 0..100 {
            b.admit(t0, v4(i)).unwrap();
        }
        assert_eq!(b.admit(t0 - Duration::from_secs(3), v4(500)), Err(Refusal::Budget));
        assert!(b.admit(t0 - Duration::from_secs(3), "::1".parse().unwrap()).is_err());
    }
}
