//! mac1: the cheap pre-authentication every datagram carries when opening it may cost its
//! receiver an X25519 operation (see `assim_wire::header` for where it sits and which kinds
//! carry it).
//!
//! ```text
//! mac1 key = SHA-256("assim mac1" || receiver public key)                32 bytes
//! mac1     = first 16 bytes of HMAC-SHA256(mac1 key, every datagram byte before the mac1)
//! ```
//!
//! As in WireGuard, the key is the receiver's *public* key: anyone who knows it can compute a
//! valid mac1, so mac1 is no authentication. It proves only that the sender knows who it is
//! talking to, which random garbage, scans and datagrams meant for another receiver do not. The
//! check costs one HMAC over at most 1,232 bytes (about a microsecond) instead of an X25519
//! (tens of microseconds) and is compared in constant time. What still gets through (a sender
//! that fetched the CMA's key with a `KeyRequest`) meets the first-contact budget
//! ([`crate::admission`]).

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

pub use assim_wire::header::MAC1_LEN;

const LABEL: &[u8] = b"assim mac1";

/// The keyed MAC for datagrams to one receiver (the HMAC's key schedule is done once).
#[derive(Clone)]
pub struct Mac1Key(Hmac<Sha256>);

impl std::fmt::Debug for Mac1Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac1Key")
    }
}

impl Mac1Key {
    /// The mac1 key of datagrams sent to the holder of `receiver_public`.
    pub fn for_receiver(receiver_public: &[u8; 32]) -> Mac1Key {
        let key = Sha256::new().chain_update(LABEL).chain_update(receiver_public).finalize();
        Mac1Key(Hmac::new_from_slice(&key).expect("HMAC takes any key length"))
    }

    /// The mac1 of `covered` (every byte before the mac1).
    pub fn compute(&self, covered: &[u8]) -> [u8; MAC1_LEN] {
        let mut m = self.0.clone();
        m.update(covered);
        let full = m.finalize().into_bytes();
        full[..MAC1_LEN].try_into().expect("16 bytes")
    }

    /// Whether `mac` is the mac1 of `covered`, compared in constant time.
    pub fn verify(&self, covered: &[u8], mac: &[u8; MAC1_LEN]) -> bool {
        let mut m = self.0.clone();
        m.update(covered);
        m.verify_truncated_left(mac).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_its_own_and_nothing_else() {
        let k = Mac1Key::for_receiver(&[7; 32]);
        let mac = k.compute(b"datagram bytes");
        assert!(k.verify(b"datagram bytes", &mac));
        assert!(!k.verify(b"datagram byteS", &mac));
        let mut bad = mac;
        bad[15] ^= 1;
        assert!(!k.verify(b"datagram bytes", &bad));
        // Keyed by the receiver: another receiver's key does not verify it.
        assert!(!Mac1Key::for_receiver(&[8; 32]).verify(b"datagram bytes", &mac));
        assert!(format!("{k:?}").contains("Mac1Key"));
    }
}
