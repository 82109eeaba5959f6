//! [`CmaAddrs`]: the addresses a nanoprobe knows for its CMA, and when to move to the next one
//! (issue 14). Sans-IO: `now` in, a decision out.
//!
//! Several `cma` engines on one database run one at a time (the engine lease); each listens at
//! its own address, and only the active one binds it. A nanoprobe knows up to
//! [`MAX_CMA_ADDRS`] of them (from the join token, its pin file or its configuration) and
//! sends to one, the *current* address:
//!
//! - **An answer makes its source current.** A reliable frame from the CMA that the sealer
//!   authenticated and the connection accepted, of the CMA's newest session, makes its source
//!   address current, listed or not ([`CmaAddrs::heard`]). A new engine that took over tells
//!   the ring members their peer sets at once, so they follow it on its first frame. Frames
//!   of an older session (a deposed engine woken from SIGSTOP, a packet reader the node left)
//!   move nothing; nor does a datagram that fails authentication, or one from another node.
//!   After a move, the first frame from the new current address is taken whatever its session
//!   (packet readers each have their own, older or newer; the shell's connection treats it as
//!   a restart and registers again).
//! - **Silence moves to the next address.** When something sent to the CMA stays
//!   unacknowledged and nothing is heard from it for the dwell time, the current address is
//!   left for the next one in the list, round robin ([`CmaAddrs::handle_timeout`]); the shell
//!   then sends everything unacknowledged there at once. Nothing outstanding, nothing owed:
//!   in steady state the CMA hears nothing from a nanoprobe, so there is no silence to judge
//!   (no news is good news), and a nanoprobe finds the new engine the first time it has
//!   something to say, or when the new engine writes to it. What counts is the transport's
//!   acknowledgement, not the inbox's `Ack { through }`: an engine whose store is down
//!   acknowledges no records for minutes but is alive, and must not be left. Records a dying
//!   engine acknowledged on the transport but never applied are sent again after
//!   `RESEND_AFTER` (10 s) of no progress, and then judged like anything else.
//! - **The dwell.** [`FAILOVER_AFTER`] (3 s) at first. The reliable layer's first RTO is
//!   300 ms, doubled at each expiry with ±20 % jitter, so a frame to an address where nobody
//!   answers has been retransmitted at about 0.3, 0.9 and 2.1 s: after 3 s, four
//!   transmissions went unanswered, not one lost datagram (at 5 % loss each way all four round
//!   trips fail with odds of about 1 in 10,000). A live engine acknowledges within its ack
//!   delay (5 ms) — its acknowledgements are transport acknowledgements, sent while its
//!   store is slow or down too, so a stalled but live engine is never left. And 3 s is short
//!   against the engine lease (default 10 s) that a takeover waits out: meanwhile the
//!   nanoprobe tries each address a few times, and finds the new engine within about one
//!   dwell of its start. After each full round of the list without an answer the dwell
//!   doubles, up to [`FAILOVER_MAX_DWELL`] (30 s, three retransmissions at the reliable
//!   layer's 10 s `max_rto`), so a fleet whose every engine is down moves (and logs) at most
//!   once per 30 s per nanoprobe, and its retransmissions stay near the reliable layer's own
//!   pace.
//! - **One address**, the embedded default: nothing to move to, nothing changes.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The most CMA addresses a nanoprobe keeps: as many as a join token carries.
pub const MAX_CMA_ADDRS: usize = assim_seal::token::MAX_ADDRS;
/// How long the CMA may stay silent at one address, with something unacknowledged, before the
/// nanoprobe tries the next (see the module doc for why 3 s).
pub const FAILOVER_AFTER: Duration = Duration::from_secs(3);
/// The longest dwell at one address, reached after rounds of the list without an answer.
pub const FAILOVER_MAX_DWELL: Duration = Duration::from_secs(30);

/// Why a list of CMA addresses was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmaAddrsError {
    /// No address at all.
    Empty,
    /// More than [`MAX_CMA_ADDRS`].
    TooMany(usize),
    /// The same address twice.
    Duplicate(SocketAddr),
    /// An address nobody can send to (an unspecified IP such as 0.0.0.0, or port 0).
    Unusable(SocketAddr),
}

impl fmt::Display for CmaAddrsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmaAddrsError::Empty => write!(f, "no CMA address is given"),
            CmaAddrsError::TooMany(n) => write!(
                f,
                "{n} CMA addresses are given, at most {MAX_CMA_ADDRS} are allowed; \
                 list only the addresses the CMA engines listen on"
            ),
            CmaAddrsError::Duplicate(a) => {
                write!(f, "the CMA address {a} is given twice; list each address once")
            }
            CmaAddrsError::Unusable(a) => write!(
                f,
                "the CMA address {a} cannot be sent to (unspecified IP or port 0); \
                 give the address the CMA is reached at"
            ),
        }
    }
}

impl std::error::Error for CmaAddrsError {}

/// Checks a list of CMA addresses: 1 to [`MAX_CMA_ADDRS`], each usable, none twice.
pub fn validate(addrs: &[SocketAddr]) -> Result<(), CmaAddrsError> {
    if addrs.is_empty() {
        return Err(CmaAddrsError::Empty);
    }
    if addrs.len() > MAX_CMA_ADDRS {
        return Err(CmaAddrsError::TooMany(addrs.len()));
    }
    for (i, a) in addrs.iter().enumerate() {
        if a.ip().is_unspecified() || a.port() == 0 {
            return Err(CmaAddrsError::Unusable(*a));
        }
        if addrs[..i].contains(a) {
            return Err(CmaAddrsError::Duplicate(*a));
        }
    }
    Ok(())
}

/// A move to the next address ([`CmaAddrs::handle_timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// How long the CMA had been silent at `from`.
    pub silent: Duration,
    /// The dwell at `to`, before the next move if it stays silent too.
    pub next_dwell: Duration,
}

/// The CMA's addresses, the current one, and the failover decision. See the module doc.
#[derive(Clone, Debug)]
pub struct CmaAddrs {
    list: Vec<SocketAddr>,
    /// The list entry last moved to or heard from; the next move goes to the one after it.
    index: usize,
    current: SocketAddr,
    /// Since when the CMA has owed an answer: something sent is unacknowledged and nothing
    /// was heard since (or since the last move). `None` while nothing is owed.
    silent_since: Option<Instant>,
    /// Moves since the CMA was last heard (sets the dwell).
    unanswered_moves: u32,
    failovers: u64,
}

impl CmaAddrs {
    /// The addresses, in order of preference; the first is current.
    pub fn new(list: Vec<SocketAddr>) -> Result<CmaAddrs, CmaAddrsError> {
        validate(&list)?;
        Ok(CmaAddrs {
            current: list[0],
            list,
            index: 0,
            silent_since: None,
            unanswered_moves: 0,
            failovers: 0,
        })
    }

    /// One address: never moves (unless an answer came from another source, then it moves
    /// back to this one when that source falls silent).
    pub fn single(addr: SocketAddr) -> CmaAddrs {
        CmaAddrs {
            list: vec![addr],
            index: 0,
            current: addr,
            silent_since: None,
            unanswered_moves: 0,
            failovers: 0,
        }
    }

    /// Where the CMA is sent to now.
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// The known addresses, in order.
    pub fn list(&self) -> &[SocketAddr] {
        &self.list
    }

    /// Moves to another address so far.
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    /// The CMA answered from `src` (an authenticated frame of its newest session): `src` is
    /// current, and nothing is owed any more until the caller says so again.
    pub fn heard(&mut self, src: SocketAddr) {
        self.current = src;
        if let Some(i) = self.list.iter().position(|a| *a == src) {
            self.index = i;
        }
        self.silent_since = None;
        self.unanswered_moves = 0;
    }

    /// Whether something sent to the CMA is unacknowledged now; the silence is timed from the
    /// first call that says so.
    pub fn set_waiting(&mut self, waiting: bool, now: Instant) {
        if !waiting {
            self.silent_since = None;
        } else if self.silent_since.is_none() {
            self.silent_since = Some(now);
        }
    }

    /// The next list entry, if it is not where we send already.
    fn next(&self) -> Option<(usize, SocketAddr)> {
        let i = (self.index + 1) % self.list.len();
        (self.list[i] != self.current).then_some((i, self.list[i]))
    }

    /// How long the current address may stay silent.
    fn dwell(&self) -> Duration {
        let rounds = self.unanswered_moves / self.list.len() as u32;
        FAILOVER_AFTER.saturating_mul(1 << rounds.min(8)).min(FAILOVER_MAX_DWELL)
    }

    /// When [`CmaAddrs::handle_timeout`] would move, if the silence goes on.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next()?;
        Some(self.silent_since? + self.dwell())
    }

    /// Moves to the next address if the current one has been silent for the dwell time.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Moved> {
        let due = self.poll_timeout()?;
        if now < due {
            return None;
        }
        let (i, to) = self.next()?;
        let from = self.current;
        let silent = now.saturating_duration_since(self.silent_since.unwrap_or(now));
        self.index = i;
        self.current = to;
        self.unanswered_moves = self.unanswered_moves.saturating_add(1);
        self.failovers += 1;
        self.silent_since = Some(now);
        Some(Moved { from, to, silent, next_dwell: self.dwell() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_are_bounded_usable_and_without_repeats() {
        assert_eq!(validate(&[]), Err(CmaAddrsError::Empty));
        let many: Vec<SocketAddr> = (1..=17).map(|i| a(&format!("192.0.2.{i}:1984"))).collect();
        assert_eq!(validate(&many[..16]), Ok(()));
        assert_eq!(validate(&many), Err(CmaAddrsError::TooMany(17)));
        let dup = [a("192.0.2.1:1984"), a("[2001:db8::1]:1984"), a("192.0.2.1:1984")];
        assert_eq!(validate(&dup), Err(CmaAddrsError::Duplicate(a("192.0.2.1:1984"))));
        assert!(validate(&[a("192.0.2.1:1984"), a("192.0.2.1:1985")]).is_ok());
        for bad in ["0.0.0.0:1984", "[::]:1984", "192.0.2.1:0"] {
            assert_eq!(validate(&[a(bad)]), Err(CmaAddrsError::Unusable(a(bad))));
        }
        let e = CmaAddrs::new(many).unwrap_err().to_string();
        assert!(e.contains("at most 16"), "{e}");
        let e = CmaAddrsError::Duplicate(a("192.0.2.1:1984")).to_string();
        assert!(e.contains("192.0.2.1:1984") && e.contains("once"), "{e}");
    }

    /// Round robin with a dwell that doubles after each unanswered round, capped; an answer
    /// resets both and makes its source current.
    #[test]
    fn the_dwell_doubles_per_unanswered_round_and_an_answer_resets_it() {
        let list = vec![a("192.0.2.1:1984"), a("192.0.2.2:1984")];
        let mut c = CmaAddrs::new(list.clone()).unwrap();
        let t0 = Instant::now();
        assert_eq!(c.poll_timeout(), None, "nothing owed");
        c.set_waiting(true, t0);
        let mut now = t0;
        let mut dwells = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..12 {
            let due = c.poll_timeout().unwrap();
            assert_eq!(c.handle_timeout(due - Duration::from_millis(1)), None, "not yet");
            dwells.push((due - now).as_secs());
            now = due;
            c.set_waiting(true, now); // still owed: the clock keeps running from the move
            let m = c.handle_timeout(now).unwrap();
            seen.push(m.to);
        }
        assert_eq!(dwells, [3, 3, 6, 6, 12, 12, 24, 24, 30, 30, 30, 30]);
        assert_eq!(seen.iter().step_by(2).collect::<Vec<_>>(), vec![&list[1]; 6]);
        assert_eq!(c.failovers(), 12);
        c.heard(a("198.51.100.7:1984")); // an answer from an unlisted source
        assert_eq!(c.current(), a("198.51.100.7:1984"));
        assert_eq!(c.poll_timeout(), None);
        c.set_waiting(true, now);
        assert_eq!(c.poll_timeout(), Some(now + FAILOVER_AFTER), "the dwell is reset");
        // From an unlisted source, the next move goes on from the list entry last used.
        assert_eq!(c.handle_timeout(now + FAILOVER_AFTER).unwrap().to, list[1]);
    }

    proptest::proptest! {
        /// Any schedule of sends, answers and time: the current address is a list entry or
        /// the last answer's source; a move happens only while something is owed, only after
        /// at least [`FAILOVER_AFTER`] without an answer or move, exactly when the dwell
        /// (doubling per unanswered round, capped) ends, always to the list entry after the
        /// last one used; an answer resets the dwell.
        #[test]
        fn moves_follow_the_rules(
            n in 1usize..=4,
            steps in proptest::collection::vec((0u8..4, 0usize..5, 0u64..40_000), 1..200),
        ) {
            let list: Vec<SocketAddr> =
                (0..n).map(|i| a(&format!("192.0.2.{}:1984", i + 1))).collect();
            let other = a("198.51.100.1:1984");
            let mut c = CmaAddrs::new(list.clone()).unwrap();
            let mut now = Instant::now();
            let mut owed = false;
            let mut last_heard: Option<SocketAddr> = None;
            // The model: when the current silence (or dwell) started, the last list index
            // used, the moves since the last answer.
            let mut quiet_from: Option<Instant> = None;
            let mut index = 0usize;
            let mut moves_unanswered = 0u32;
            for (op, arg, ms) in steps {
                match op {
                    0 => {
                        owed = arg % 2 == 0;
                        c.set_waiting(owed, now);
                        if !owed {
                            quiet_from = None;
                        } else if quiet_from.is_none() {
                            quiet_from = Some(now);
                        }
                    }
                    1 => {
                        let src = if arg < n { list[arg] } else { other };
                        c.heard(src);
                        if let Some(i) = list.iter().position(|x| *x == src) {
                            index = i;
                        }
                        last_heard = Some(src);
                        quiet_from = None;
                        moves_unanswered = 0;
                        if owed {
                            c.set_waiting(true, now);
                            quiet_from = Some(now);
                        }
                    }
                    _ => {
                        let later = now + Duration::from_millis(ms);
                        let due = c.poll_timeout();
                        match c.handle_timeout(later) {
                            Some(m) => {
                                let q = quiet_from.expect("a move only while something is owed");
                                proptest::prop_assert!(owed);
                                proptest::prop_assert!(later - q >= FAILOVER_AFTER);
                                proptest::prop_assert_eq!(
                                    Some(q + model_dwell(moves_unanswered, n)),
                                    due
                                );
                                let next = (index + 1) % n;
                                proptest::prop_assert_eq!(m.to, list[next]);
                                index = next;
                                moves_unanswered += 1;
                                quiet_from = Some(later);
                            }
                            None => {
                                if let Some(q) = quiet_from.filter(|_| owed) {
                                    let can_move = list[(index + 1) % n] != c.current();
                                    proptest::prop_assert!(
                                        !can_move || later < q + model_dwell(moves_unanswered, n)
                                    );
                                }
                            }
                        }
                        now = later;
                    }
                }
                let cur = c.current();
                proptest::prop_assert!(list.contains(&cur) || Some(cur) == last_heard);
            }
        }
    }

    /// The dwell after `moves` unanswered moves over a list of `n` (the model's copy).
    fn model_dwell(moves: u32, n: usize) -> Duration {
        let rounds = moves / n as u32;
        let mut d = FAILOVER_AFTER;
        for _ in 0..rounds {
            d = (d * 2).min(FAILOVER_MAX_DWELL);
        }
        d
    }

    #[test]
    fn one_address_never_moves_unless_an_answer_came_from_elsewhere() {
        let mut c = CmaAddrs::single(a("192.0.2.1:1984"));
        let t0 = Instant::now();
        c.set_waiting(true, t0);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.handle_timeout(t0 + Duration::from_secs(3600)), None);
        c.heard(a("192.0.2.9:1984"));
        c.set_waiting(true, t0);
        let m = c.handle_timeout(t0 + FAILOVER_AFTER).unwrap();
        assert_eq!((m.from, m.to), (a("192.0.2.9:1984"), a("192.0.2.1:1984")));
        assert_eq!(c.poll_timeout(), None, "back at the one address");
    }
}
