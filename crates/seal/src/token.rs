//! Join tokens: how a new nanoprobe finds the CMA, pins its key, and proves it was invited.
//!
//! The CMA creates a token (its addresses, node id and public key, plus a 32-byte random
//! secret) and the operator hands the string to the new host. The nanoprobe then trusts only the
//! pinned CMA key, and its first `Hello` carries a [`TokenProof`]: the token's id (derived from
//! the secret, not secret itself), an HMAC keyed by the secret over the node's id and public
//! key, and the secret itself. The secret travels only inside that sealed `Hello`, encrypted to
//! the pinned CMA key, so only the CMA that made the token sees it; the CMA keeps only the
//! secret's SHA-256 ([`secret_hash`]) and checks a presented secret against it, so a copy of
//! its database cannot enroll anyone.
//!
//! # Text form
//!
//! `"assim1."` followed by the unpadded base64url encoding of:
//!
//! ```text
//! offset size field
//!  0      1   layout version (1)
//!  1     16   CMA node id
//! 17     32   CMA X25519 public key
//! 49     32   token secret
//! 81      1   number of CMA addresses n (0..=16)
//! 82      …   n addresses, each:
//!               1  family: 4 or 6
//!               4  IPv4 address (family 4)   or   16  IPv6 address (family 6)
//!               2  UDP port (big endian)
//! ```
//!
//! IPv6 flow labels and scope ids are not carried (a scope id names an interface of the CMA's
//! host and means nothing on another). Nothing may follow the last address.
//!
//! # Derivations
//!
//! ```text
//! token id    = SHA-256("assim token id" || secret)[..16]
//! proof       = HMAC-SHA256(key = secret, "assim enroll v1" || node id (16) || node public key (32))
//! stored hash = SHA-256(secret)                      what the CMA keeps (`secret_hash`)
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use assim_wire::NodeId;
use assim_wire::msg::TokenProof;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use rand::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};

use crate::identity::{Identity, fingerprint};

/// The text prefix of every version-1 token.
pub const PREFIX: &str = "assim1.";
/// The binary layout version.
const LAYOUT_VERSION: u8 = 1;
/// The most CMA addresses one token carries.
pub const MAX_ADDRS: usize = 16;
/// Fixed part of the binary layout (before the addresses).
const FIXED_LEN: usize = 1 + 16 + 32 + 32 + 1;
/// Largest binary layout: every address IPv6.
const MAX_BINARY_LEN: usize = FIXED_LEN + MAX_ADDRS * (1 + 16 + 2);
/// Largest text form, checked before decoding anything.
const MAX_TEXT_LEN: usize = PREFIX.len() + MAX_BINARY_LEN.div_ceil(3) * 4;

const TOKEN_ID_LABEL: &[u8] = b"assim token id";
const PROOF_LABEL: &[u8] = b"assim enroll v1";

/// An invitation to join one CMA.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Where the CMA listens (both address families allowed).
    pub cma_addrs: Vec<SocketAddr>,
    pub cma_node_id: NodeId,
    /// The CMA's key, pinned by the joining node.
    pub cma_public_key: [u8; 32],
    /// Proves the holder was invited; never leaves the token.
    pub secret: [u8; 32],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("cma_addrs", &self.cma_addrs)
            .field("cma_node_id", &self.cma_node_id)
            .field("cma_fingerprint", &self.fingerprint())
            .field("token_id", &hex::encode(self.token_id()))
            .finish_non_exhaustive()
    }
}

/// Why a token string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an assim join token: it must start with `{PREFIX}`; copy the whole token")]
    WrongPrefix,
    #[error("join token is {0} characters long, more than any valid token; copy just the token")]
    TooLong(usize),
    #[error("join token is not valid base64url after `{PREFIX}` ({0}); was it cut or altered?")]
    BadBase64(String),
    #[error("join token is truncated ({have} bytes, needs at least {need}); copy the whole token")]
    Truncated { have: usize, need: usize },
    #[error("join token layout version {0} is not supported by this build; upgrade assim")]
    UnsupportedVersion(u8),
    #[error("join token names address family {0}, expected 4 or 6; the token is corrupt")]
    BadAddressFamily(u8),
    #[error("join token lists {0} CMA addresses, at most {MAX_ADDRS} are allowed")]
    TooManyAddresses(usize),
    #[error("join token has {0} unexpected bytes after its last address; the token is corrupt")]
    TrailingBytes(usize),
}

impl JoinToken {
    /// A new token for `cma` reachable at `cma_addrs`, with a fresh secret from `rng`.
    ///
    /// `encode` refuses nothing, so keep `cma_addrs` to at most [`MAX_ADDRS`]; extra addresses
    /// are dropped here.
    pub fn generate<R: RngCore + CryptoRng>(
        cma: &Identity,
        mut cma_addrs: Vec<SocketAddr>,
        rng: &mut R,
    ) -> JoinToken {
        cma_addrs.truncate(MAX_ADDRS);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        JoinToken {
            cma_addrs,
            cma_node_id: cma.node_id(),
            cma_public_key: cma.public_key(),
            secret,
        }
    }

    /// The text form, `assim1.` + base64url (see the module doc). At most [`MAX_ADDRS`]
    /// addresses are written.
    pub fn encode(&self) -> String {
        let addrs = &self.cma_addrs[..self.cma_addrs.len().min(MAX_ADDRS)];
        let mut b = Vec::with_capacity(MAX_BINARY_LEN);
        b.push(LAYOUT_VERSION);
        b.extend_from_slice(self.cma_node_id.as_bytes());
        b.extend_from_slice(&self.cma_public_key);
        b.extend_from_slice(&self.secret);
        b.push(addrs.len() as u8);
        for addr in addrs {
            match addr.ip() {
                IpAddr::V4(ip) => {
                    b.push(4);
                    b.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    b.push(6);
                    b.extend_from_slice(&ip.octets());
                }
            }
            b.extend_from_slice(&addr.port().to_be_bytes());
        }
        let mut s = String::from(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&b, &mut s);
        s
    }

    /// Parses the text form; surrounding whitespace is ignored.
    pub fn decode(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        if s.len() > MAX_TEXT_LEN {
            return Err(TokenError::TooLong(s.len()));
        }
        let b64 = s.strip_prefix(PREFIX).ok_or(TokenError::WrongPrefix)?;
        let bytes =
            URL_SAFE_NO_PAD.decode(b64).map_err(|e| TokenError::BadBase64(e.to_string()))?;
        let mut r = Reader { bytes: &bytes, pos: 0 };
        let version = r.take::<1>()?[0];
        if version != LAYOUT_VERSION {
            return Err(TokenError::UnsupportedVersion(version));
        }
        let cma_node_id = NodeId(r.take::<16>()?);
        let cma_public_key = r.take::<32>()?;
        let secret = r.take::<32>()?;
        let count = usize::from(r.take::<1>()?[0]);
        if count > MAX_ADDRS {
            return Err(TokenError::TooManyAddresses(count));
        }
        let mut cma_addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let ip = match r.take::<1>()?[0] {
                4 => IpAddr::V4(Ipv4Addr::from(r.take::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.take::<16>()?)),
                other => return Err(TokenError::BadAddressFamily(other)),
            };
            let port = u16::from_be_bytes(r.take::<2>()?);
            cma_addrs.push(SocketAddr::new(ip, port));
        }
        if r.pos != bytes.len() {
            return Err(TokenError::TrailingBytes(bytes.len() - r.pos));
        }
        Ok(JoinToken { cma_addrs, cma_node_id, cma_public_key, secret })
    }

    /// Identifies the token (not secret): [`token_id_for_secret`] of its secret.
    pub fn token_id(&self) -> [u8; 16] {
        token_id_for_secret(&self.secret)
    }

    /// The enrollment proof a node with `node_id` and `node_public_key` sends in its `Hello`.
    pub fn proof(&self, node_id: NodeId, node_public_key: &[u8; 32]) -> TokenProof {
        TokenProof {
            token_id: self.token_id().to_vec(),
            mac: proof_mac(&self.secret, node_id, node_public_key).finalize().into_bytes().to_vec(),
            secret: self.secret.to_vec(),
        }
    }

    /// The fingerprint of the pinned CMA key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cma_public_key)
    }
}

/// First 16 bytes of SHA-256(`"assim token id"` || secret).
pub fn token_id_for_secret(secret: &[u8; 32]) -> [u8; 16] {
    let digest = Sha256::new().chain_update(TOKEN_ID_LABEL).chain_update(secret).finalize();
    digest[..16].try_into().expect("16 bytes")
}

/// What the CMA stores of a token's secret: SHA-256(secret).
pub fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Whether `proof` proves knowledge of the secret whose [`secret_hash`] is `stored_hash`, for
/// this node id and key: the presented secret must hash to `stored_hash` (compared in constant
/// time), the token id must be the secret's, and the HMAC must verify. A proof without the
/// secret (from a nanoprobe older than the field) is refused.
pub fn verify_proof(
    stored_hash: &[u8; 32],
    node_id: NodeId,
    node_public_key: &[u8; 32],
    proof: &TokenProof,
) -> bool {
    let Ok(secret) = <[u8; 32]>::try_from(proof.secret.as_slice()) else { return false };
    let diff = secret_hash(&secret).iter().zip(stored_hash).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    diff == 0
        && proof.token_id.as_slice() == token_id_for_secret(&secret).as_slice()
        && proof_mac(&secret, node_id, node_public_key).verify_slice(&proof.mac).is_ok()
}

fn proof_mac(secret: &[u8; 32], node_id: NodeId, node_public_key: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(PROOF_LABEL);
    mac.update(node_id.as_bytes());
    mac.update(node_public_key);
    mac
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let end = self.pos + N;
        let chunk = self
            .bytes
            .get(self.pos..end)
            .ok_or(TokenError::Truncated { have: self.bytes.len(), need: end })?;
        self.pos = end;
        Ok(chunk.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng as _;

    fn cma() -> Identity {
        Identity::from_parts(NodeId([0xc0; 16]), [0x11; 32])
    }

    fn token(addrs: &[&str]) -> JoinToken {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        JoinToken::generate(&cma(), addrs.iter().map(|a| a.parse().unwrap()).collect(), &mut rng)
    }

    #[test]
    fn round_trip_dual_stack() {
        let t = token(&["192.0.2.7:1984", "[2001:db8::7]:1984", "[::1]:65535", "0.0.0.0:0"]);
        let s = t.encode();
        assert!(s.starts_with("assim1."));
        assert!(s[PREFIX.len()..].chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)));
        let back = JoinToken::decode(&format!("  {s}\n")).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.cma_addrs[1], "[2001:db8::7]:1984".parse::<SocketAddr>().unwrap());
        assert_eq!(back.fingerprint(), cma().fingerprint());
        assert_eq!(back.cma_public_key, cma().public_key());

        let empty = token(&[]);
        assert_eq!(JoinToken::decode(&empty.encode()).unwrap(), empty);
        let max: Vec<String> = (0..MAX_ADDRS).map(|i| format!("[2001:db8::{i}]:1")).collect();
        let full = token(&max.iter().map(String::as_str).collect::<Vec<_>>());
        let s = full.encode();
        assert!(s.len() <= MAX_TEXT_LEN);
        assert_eq!(JoinToken::decode(&s).unwrap(), full);
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = token(&["192.0.2.7:1984"]);
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&hex::encode(t.secret)), "{dbg}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("192.0.2.7:1984"), "{dbg}");
    }

    #[test]
    fn decode_errors_are_specific() {
        let t = token(&["192.0.2.7:1984", "[::1]:2"]);
        let s = t.encode();
        let raw = URL_SAFE_NO_PAD.decode(&s[PREFIX.len()..]).unwrap();
        let enc = |b: &[u8]| format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(b));

        assert_eq!(JoinToken::decode("assim2.AAAA"), Err(TokenError::WrongPrefix));
        assert_eq!(JoinToken::decode(&s[1..]), Err(TokenError::WrongPrefix));
        assert!(matches!(JoinToken::decode("assim1.!!!"), Err(TokenError::BadBase64(_))));
        let long = format!("{PREFIX}{}", "A".repeat(2000));
        assert_eq!(JoinToken::decode(&long), Err(TokenError::TooLong(long.len())));
        assert!(matches!(JoinToken::decode(&enc(&raw[..50])), Err(TokenError::Truncated { .. })));
        assert!(matches!(
            JoinToken::decode(&enc(&raw[..raw.len() - 1])),
            Err(TokenError::Truncated { .. })
        ));
        assert!(matches!(JoinToken::decode(PREFIX), Err(TokenError::Truncated { .. })));

        let mut bad = raw.clone();
        bad[0] = 2;
        assert_eq!(JoinToken::decode(&enc(&bad)), Err(TokenError::UnsupportedVersion(2)));
        let mut bad = raw.clone();
        bad[FIXED_LEN] = 5;
        assert_eq!(JoinToken::decode(&enc(&bad)), Err(TokenError::BadAddressFamily(5)));
        let mut bad = raw.clone();
        bad[FIXED_LEN - 1] = 17;
        assert_eq!(JoinToken::decode(&enc(&bad)), Err(TokenError::TooManyAddresses(17)));
        let mut bad = raw.clone();
        bad.extend_from_slice(&[0, 0, 0]);
        assert_eq!(JoinToken::decode(&enc(&bad)), Err(TokenError::TrailingBytes(3)));

        let msg = TokenError::WrongPrefix.to_string();
        assert!(msg.contains("assim1."), "{msg}");
    }

    #[test]
    fn proof_verifies_only_for_the_right_secret_node_and_key() {
        let t = token(&["192.0.2.7:1984"]);
        let node = Identity::from_parts(NodeId([5; 16]), [6; 32]);
        let proof = t.proof(node.node_id(), &node.public_key());
        assert_eq!(proof.token_id, t.token_id().to_vec());
        assert_eq!(proof.mac.len(), 32);
        let stored = secret_hash(&t.secret);
        assert!(verify_proof(&stored, node.node_id(), &node.public_key(), &proof));

        let other = secret_hash(&[0xee; 32]);
        assert!(!verify_proof(&other, node.node_id(), &node.public_key(), &proof));
        // The stored hash is not a credential: presenting it as the secret fails.
        let mut bad = proof.clone();
        bad.secret = stored.to_vec();
        assert!(!verify_proof(&stored, node.node_id(), &node.public_key(), &bad));
        // A proof from a nanoprobe that does not send the secret.
        let mut bad = proof.clone();
        bad.secret.clear();
        assert!(!verify_proof(&stored, node.node_id(), &node.public_key(), &bad));
        assert!(!verify_proof(&stored, NodeId([6; 16]), &node.public_key(), &proof));
        assert!(!verify_proof(&stored, node.node_id(), &[7; 32], &proof));
        let mut bad = proof.clone();
        bad.mac[31] ^= 1;
        assert!(!verify_proof(&stored, node.node_id(), &node.public_key(), &bad));
        let mut bad = proof.clone();
        bad.mac.truncate(16);
        assert!(!verify_proof(&stored, node.node_id(), &node.public_key(), &bad));
        let mut bad = proof.clone();
        bad.token_id[0] ^= 1;
        assert!(!verify_proof(&stored, node.node_id(), &node.public_key(), &bad));
        assert!(!verify_proof(&stored, node.node_id(), &node.public_key(), &Default::default()));
    }

    #[test]
    fn token_id_is_derived_from_the_secret() {
        let id = token_id_for_secret(&[1; 32]);
        assert_ne!(id, token_id_for_secret(&[2; 32]));
        assert_ne!(&id[..], &[1; 16][..]);
        let t = token(&[]);
        assert_eq!(t.token_id(), token_id_for_secret(&t.secret));
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,600}") {
            let _ = JoinToken::decode(&s);
            let _ = JoinToken::decode(&format!("{PREFIX}{s}"));
        }

        #[test]
        fn round_trips_arbitrary_tokens(
            v4 in proptest::collection::vec((any::<[u8; 4]>(), any::<u16>()), 0..8),
            v6 in proptest::collection::vec((any::<[u8; 16]>(), any::<u16>()), 0..8),
            id in any::<[u8; 16]>(), key in any::<[u8; 32]>(), secret in any::<[u8; 32]>(),
        ) {
            let mut cma_addrs: Vec<SocketAddr> =
                v4.into_iter().map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)).collect();
            cma_addrs.extend(v6.into_iter().map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)));
            let t = JoinToken { cma_addrs, cma_node_id: NodeId(id), cma_public_key: key, secret };
            prop_assert_eq!(JoinToken::decode(&t.encode()).unwrap(), t);
        }
    }
}
