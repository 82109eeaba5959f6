//! The enrolment decision: may an unknown node that says hello join?
//!
//! Yes with a valid join-token proof (the token exists, is usable now, and the proof binds it to
//! the node's id and key), or without a token when open enrollment is on. Nothing about a
//! refused node is kept.
//!
//! A refusal must cost little, because anyone who fetched the CMA's key can send hellos (within
//! the first-contact budget, `assim_seal::admission`): a proof that is not even consistent with
//! itself (the secret it carries must give its token id and its HMAC over the node's id and key)
//! is refused before the token store is asked ([`proof_is_consistent`]), and refusals are
//! logged by [`RefusalLog`]: the first of a quiet period as one WARN line naming the host, the
//! rest as one summary line per [`RefusalLog::INTERVAL`] with their count by cause.

use std::time::Duration;

use assim_seal::verify_proof;
use assim_wire::msg::{Hello, TokenProof};
use assim_wire::{NodeId, Timestamp};
use tracing::{error, info, warn};

use assim_store::Tokens;

/// How a node was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    Token,
    Open,
}

/// Why a node was refused (the reject counter's label is [`Refused::reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its proof names no token we hold, or does not verify.
    InvalidProof,
    /// The token expired or was used up.
    TokenUnusable,
    /// No token, and open enrollment is off.
    NoToken,
    /// The tokens could not be read.
    StoreFailed,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        "enrollment"
    }

    fn index(self) -> usize {
        match self {
            Refused::InvalidProof => 0,
            Refused::TokenUnusable => 1,
            Refused::NoToken => 2,
            Refused::StoreFailed => 3,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Refused::InvalidProof => "invalid join token proof",
            Refused::TokenUnusable => "join token expired or used up",
            Refused::NoToken => "no join token (create one with `cma token create`)",
            Refused::StoreFailed => "join tokens unreadable",
        }
    }
}

/// Rate-limited logging of refused enrolments: one line, then one summary per interval.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Start of the current summary interval (None: quiet, the next refusal is logged in full).
    since: Option<Timestamp>,
    /// Refusals since `since` not yet logged, by [`Refused::index`].
    counts: [u64; 4],
    /// Lines written (for tests).
    lines: u64,
}

impl RefusalLog {
    /// At most one summary line per interval.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// Records a refusal at `now`; logs it in full if the log was quiet.
    pub fn refused(&mut self, now: Timestamp, why: Refused, node: NodeId, host: &str) {
        self.tick(now);
        if self.since.is_none() {
            self.since = Some(now);
            self.lines += 1;
            warn!(node = %node, host = %host, cause = why.describe(), "enrollment refused");
            return;
        }
        self.counts[why.index()] += 1;
    }

    /// Writes the summary of a finished interval, if any (the shell calls it every turn).
    pub fn tick(&mut self, now: Timestamp) {
        let Some(since) = self.since else { return };
        if now.since(since) < Self::INTERVAL {
            return;
        }
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            self.since = None;
            return;
        }
        let [invalid, unusable, none, store] = self.counts;
        self.lines += 1;
        warn!(
            refused = total,
            invalid_proof = invalid,
            token_unusable = unusable,
            no_token = none,
            store_failed = store,
            seconds = now.since(since).as_secs(),
            "more enrollments refused (one line per interval)"
        );
        self.counts = [0; 4];
        self.since = Some(now);
    }

    /// Log lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

/// Whether `proof` is consistent with itself for this node: it carries a 32-byte secret whose
/// token id it names, and its HMAC over the node's id and key verifies under that secret. Two
/// hashes and an HMAC, no store: a random or mangled proof fails here. (Whether the secret is
/// one of our tokens is the store's question, asked only afterwards.)
pub fn proof_is_consistent(node: NodeId, key: &[u8; 32], proof: &TokenProof) -> bool {
    let Ok(secret) = <[u8; 32]>::try_from(proof.secret.as_slice()) else { return false };
    verify_proof(&assim_seal::secret_hash(&secret), node, key, proof)
}

/// Decides whether `node` (holding `key`) may enrol with `hello`; counts a token use if so.
pub fn decide(
    tokens: &mut dyn Tokens,
    log: &mut RefusalLog,
    open_enrollment: bool,
    now: Timestamp,
    node: NodeId,
    key: &[u8; 32],
    hello: &Hello,
) -> Result<Admitted, Refused> {
    let refuse = |log: &mut RefusalLog, why: Refused| {
        log.refused(now, why, node, &hello.hostname);
        Err(why)
    };
    let Some(proof) = &hello.token_proof else {
        if open_enrollment {
            info!(node = %node, host = %hello.hostname, "node enrolled (open enrollment)");
            return Ok(Admitted::Open);
        }
        return refuse(log, Refused::NoToken);
    };
    if !proof_is_consistent(node, key, proof) {
        return refuse(log, Refused::InvalidProof);
    }
    match tokens.token(&proof.token_id) {
        Ok(Some(t)) if t.usable(now) && verify_proof(&t.secret_hash, node, key, proof) => {
            if let Err(e) = tokens.use_token(&proof.token_id) {
                error!(error = %e, "cannot count a token use");
            }
            info!(node = %node, host = %hello.hostname, "node enrolled with a join token");
            Ok(Admitted::Token)
        }
        Ok(Some(t)) if !t.usable(now) => refuse(log, Refused::TokenUnusable),
        Ok(_) => refuse(log, Refused::InvalidProof),
        Err(e) => {
            error!(error = %e, "cannot read join tokens");
            refuse(log, Refused::StoreFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_store::{StoreFailed, TokenRecord};
    use std::cell::Cell;

    /// Counts store lookups; holds no token.
    #[derive(Default)]
    struct Counting(Cell<u64>);

    impl Tokens for Counting {
        fn token(&self, _: &[u8]) -> Result<Option<TokenRecord>, StoreFailed> {
            self.0.set(self.0.get() + 1);
            Ok(None)
        }
        fn use_token(&mut self, _: &[u8]) -> Result<(), StoreFailed> {
            Ok(())
        }
        fn registered_key(&self, _: NodeId) -> Result<Option<[u8; 32]>, StoreFailed> {
            Ok(None)
        }
    }

    fn hello(proof: Option<TokenProof>) -> Hello {
        Hello { hostname: "h".into(), token_proof: proof, ..Hello::default() }
    }

    #[test]
    fn item_3_invalid_token_hellos_cost_no_store_lookup_and_no_line_each() {
        let mut store = Counting::default();
        let mut log = RefusalLog::default();
        let t0 = Timestamp(1_000_000_000);
        let key = [5u8; 32];
        // 10,000 hellos with garbage proofs over 25 s.
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 2_500);
            let proof = TokenProof {
                token_id: i.to_be_bytes().repeat(2),
                mac: vec![i as u8; 32],
                secret: vec![(i >> 8) as u8; 32],
            };
            let node = NodeId([(i % 251) as u8; 16]);
            let r = decide(&mut store, &mut log, false, now, node, &key, &hello(Some(proof)));
            assert_eq!(r, Err(Refused::InvalidProof));
        }
        assert_eq!(store.0.get(), 0, "a garbage proof reached the token store");
        // One full line, then one summary per 10 s interval.
        assert!(log.lines() <= 3, "{} lines for 10,000 refusals", log.lines());
        log.tick(t0 + Duration::from_secs(60));
        assert!(log.lines() <= 4);
        // Quiet again: the next refusal is logged in full.
        let before = log.lines();
        let r = decide(
            &mut store,
            &mut log,
            false,
            t0 + Duration::from_secs(120),
            NodeId([1; 16]),
            &key,
            &hello(None),
        );
        assert_eq!(r, Err(Refused::NoToken));
        log.tick(t0 + Duration::from_secs(200));
        assert_eq!(log.lines(), before + 1);
    }

    #[test]
    fn a_self_consistent_proof_still_needs_the_store() {
        let token = assim_seal::JoinToken {
            cma_addrs: Vec::new(),
            cma_node_id: NodeId([9; 16]),
            cma_public_key: [1; 32],
            secret: [7; 32],
        };
        let node = NodeId([3; 16]);
        let key = [4u8; 32];
        let proof = token.proof(node, &key);
        assert!(proof_is_consistent(node, &key, &proof));
        assert!(!proof_is_consistent(NodeId([4; 16]), &key, &proof));
        let mut store = Counting::default();
        let mut log = RefusalLog::default();
        let r = decide(&mut store, &mut log, false, Timestamp(1), node, &key, &hello(Some(proof)));
        assert_eq!(r, Err(Refused::InvalidProof));
        assert_eq!(store.0.get(), 1);
    }
}
