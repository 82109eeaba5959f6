//! The inbox record: who sent a message, with which key, and the message as received.
//!
//! ```text
//! offset size
//!  0     16   sender node id
//! 16     32   sender public key (so a replay after a crash can apply a first hello)
//! 48      n   the encoded reliable message (its `record` field is the sender's spool record)
//! ```

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

/// Decodes one inbox record; `None` if it is malformed.
pub fn decode(bytes: &[u8]) -> Option<(NodeId, [u8; 32], Message)> {
    let node = NodeId::from_slice(bytes.get(..16)?)?;
    let key: [u8; 32] = bytes.get(16..48)?.try_into().ok()?;
    let m = Message::from_bytes(bytes.get(48..)?).ok()?;
    Some((node, key, m))
}
