//! Node identities and datagram sealing for assim.
//!
//! This crate owns everything that makes an assim datagram trustworthy: the node's long-term
//! identity (a node id and a static X25519 key pair kept in the data directory), the sealing and
//! opening of datagrams with keys bound to both node identities (X25519 + HKDF-SHA256 +
//! XChaCha20-Poly1305, the header authenticated as associated data), the per-peer replay window,
//! the counters of everything it refused, and the join tokens that let a new nanoprobe pin the
//! CMA's key and prove it was invited. It does no IO except [`Identity::load_or_create`], which
//! reads and writes the two identity files, and [`next_session`], which keeps the session file.
//!
//! Layout:
//! - [`identity`]: [`Identity`], its on-disk form, [`fingerprint`], [`new_session`] and
//!   [`next_session`] (the session file kept beside the identity).
//! - [`seal`]: [`Sealer`], the key schedule, AEAD and byte layout of a sealed datagram, and
//!   [`OpenError`] / [`RejectCounters`].
//! - [`mac1`]: [`Mac1Key`], the cheap pre-authentication keyed by the receiver's public key,
//!   checked before any X25519 operation.
//! - [`admission`]: [`Budget`], the first-contact and key-request budgets (token buckets per
//!   source and global, bounded memory).
//! - [`replay`]: [`ReplayWindow`], the sliding anti-replay window kept per peer, and
//!   [`SourceWindows`], a window per sender session for an identity that sends from several
//!   addresses with a session each (the CMA's packet readers, [`Sealer::set_peer_sources`]).
//! - [`key_fetch`]: [`KeyFetch`], a nanoprobe's trust-on-first-use key request loop, at the
//!   pace the CMA's `Busy` answers set.
//! - [`token`]: [`JoinToken`] (`assim1.…` strings) and enrollment proofs.

pub mod admission;
pub mod identity;
pub mod key_fetch;
pub mod mac1;
pub mod replay;
pub mod seal;
pub mod token;

pub use admission::{Budget, Limits, Refusal};
pub use identity::{
    Identity, IdentityError, create_private_dir, fingerprint, new_session, next_session,
};
pub use key_fetch::KeyFetch;
pub use mac1::Mac1Key;
pub use replay::{ReplayWindow, SourceWindows};
pub use seal::{OpenError, Opened, RejectCounters, SealError, Sealer, Throttle, TooManySources};
pub use token::{JoinToken, TokenError, secret_hash, token_id_for_secret, verify_proof};
