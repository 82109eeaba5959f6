//! Node identities.

use std::fmt;
use std::str::FromStr;

/// The permanent identity of a node: a UUIDv7, created once on first start and kept in the data
/// directory. Everything in assim names nodes by this id, never by address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// A fresh UUIDv7 from the system clock and OS randomness.
    pub fn new_v7() -> Self {
        NodeId(*uuid::Uuid::now_v7().as_bytes())
    }

    /// Reads an id from exactly 16 bytes (as carried in messages).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(NodeId(bytes.try_into().ok()?))
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id as a UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.uuid().hyphenated(), f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(NodeId(*uuid::Uuid::parse_str(s)?.as_bytes()))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let id = NodeId::new_v7();
        assert_eq!(id.uuid().get_version_num(), 7);
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert!(NodeId::from_slice(&[0; 15]).is_none());
    }
}
