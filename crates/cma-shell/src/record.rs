//! The inbox record: who sent a message, with which key, and the message as received.
//!
//! ```text
//! offset size
//!  0     16   sender node id
//! 16     32   sender public key (so a replay after a crash can apply a first hello)
//! 48      n   the encoded reliable message (its `record` field is the sender's spool record)
//! ```
//!
//! A packet reader of a cluster (issue 14) appends protobuf field 2 (varint) to the message's
//! bytes: its reader id ([`with_via`]). Field 2 is reserved in `assim_wire::msg::Message`, so
//! the message decodes the same, and the appended value wins over any a sender put there
//! (protobuf keeps the last value of a field), so a nanoprobe cannot name another reader.

use assim_wire::NodeId;
use assim_wire::msg::Message;

/// Encodes one inbox record.
pub fn encode(node: NodeId, key: &[u8; 32], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + message.len());
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(message);
    out
}

/// Encodes one inbox record taken by packet reader `via` (see the module doc).
pub fn with_via(node: NodeId, key: &[u8; 32], message: &[u8], via: u64) -> Vec<u8> {
    let mut out = encode(node, key, message);
    prost::encoding::uint64::encode(VIA_TAG, &via, &mut out);
    out
}

/// The reader that took a record, if a reader did (0 or absent: none named).
pub fn via(bytes: &[u8]) -> Option<u64> {
    use prost::Message as _;
    let v = Via::decode(bytes.get(48..)?).ok()?.via;
    (v != 0).then_some(v)
}

const VIA_TAG: u32 = 2;

/// Only field 2 of a message's bytes (every other field is skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct Via {
    #[prost(uint64, tag = "2")]
    via: u64,
}

/// Decodes one inbox record; `None` if it is malformed.
pub fn decode(bytes: &[u8]) -> Option<(NodeId, [u8; 32], Message)> {
    let node = NodeId::from_slice(bytes.get(..16)?)?;
    let key: [u8; 32] = bytes.get(16..48)?.try_into().ok()?;
    let m = Message::from_bytes(bytes.get(48..)?).ok()?;
    Some((node, key, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_wire::msg::{Body, Goodbye};
    use proptest::prelude::*;

    proptest! {
        /// A reader's id rides along without changing the message, whatever id the sender
        /// tried to put in field 2 itself.
        #[test]
        fn the_reader_id_rides_along_and_wins(record in any::<u64>(), via in 1u64.., forged in any::<u64>()) {
            let node = NodeId([3; 16]);
            let m = Message { record, body: Some(Body::Goodbye(Goodbye::default())) };
            let mut bytes = m.to_bytes();
            prost::encoding::uint64::encode(VIA_TAG, &forged, &mut bytes);
            let r = with_via(node, &[9; 32], &bytes, via);
            prop_assert_eq!(decode(&r), Some((node, [9; 32], m.clone())));
            prop_assert_eq!(super::via(&r), Some(via));
            prop_assert_eq!(super::via(&encode(node, &[9; 32], &m.to_bytes())), None);
        }

        /// Any bytes: no panic.
        #[test]
        fn any_bytes_decode_or_not(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = super::via(&bytes);
        }
    }
}
