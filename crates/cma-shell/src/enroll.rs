//! The enrolment decision: may an unknown node that says hello join?
//!
//! Yes with a valid join-token proof (the token exists, is usable now, and the proof binds it to
//! the node's id and key), or without a token when open enrollment is on. Every refusal is one
//! WARN line naming the host, and nothing about the node is kept.

use assim_seal::verify_proof;
use assim_wire::msg::Hello;
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
}

/// Decides whether `node` (holding `key`) may enrol with `hello`; counts a token use if so.
pub fn decide(
    tokens: &mut dyn Tokens,
    open_enrollment: bool,
    now: Timestamp,
    node: NodeId,
    key: &[u8; 32],
    hello: &Hello,
) -> Result<Admitted, Refused> {
    let Some(proof) = &hello.token_proof else {
        if open_enrollment {
            info!(node = %node, host = %hello.hostname, "node enrolled (open enrollment)");
            return Ok(Admitted::Open);
        }
        warn!(
            node = %node, host = %hello.hostname,
            "node without a join token refused: create one with `cma token create`"
        );
        return Err(Refused::NoToken);
    };
    match tokens.token(&proof.token_id) {
        Ok(Some(t)) if t.usable(now) && verify_proof(&t.secret_hash, node, key, proof) => {
            if let Err(e) = tokens.use_token(&proof.token_id) {
                error!(error = %e, "cannot count a token use");
            }
            info!(node = %node, host = %hello.hostname, "node enrolled with a join token");
            Ok(Admitted::Token)
        }
        Ok(Some(t)) if !t.usable(now) => {
            warn!(node = %node, host = %hello.hostname, "join token expired or used up; node refused");
            Err(Refused::TokenUnusable)
        }
        Ok(_) => {
            warn!(node = %node, host = %hello.hostname, "invalid join token proof; node refused");
            Err(Refused::InvalidProof)
        }
        Err(e) => {
            error!(error = %e, "cannot read join tokens");
            Err(Refused::StoreFailed)
        }
    }
}
