//! The ring manager: which nodes heartbeat which.
//!
//! A [`Ring`] is one cycle. Its order is fixed by a keyed hash of the node id — the first 8
//! bytes of SHA-256(placement key ‖ id) as a big-endian `u64`, ties broken by the id — so
//! consecutive joins land at spread-out positions and a join or leave disturbs only the two
//! nodes next to it. The placement key is the CMA's secret (issue 16 item 4): a node that
//! chooses its own id cannot choose where it lands, so two colluding identities cannot make
//! themselves the neighbours of a host they want to report dead or hide. Members are
//! kept in a `BTreeSet<(position, id)>`: insert, remove and neighbour lookups are O(log n).
//!
//! Neighbours in one ring: none for a ring of one, the other node for a ring of two, the
//! predecessor and the successor otherwise.
//!
//! The [`RingManager`] owns rings by [`RingKey`]. Today there is one ring, [`RingKey::ALL`],
//! holding every Up and Suspect node. Topology-aware rings (one per switch plus an inter-switch
//! ring of one representative per switch) slot in as more keys: a node's heartbeat peers are
//! the union of its neighbours in every ring it belongs to, and a membership change reports the
//! nodes whose neighbours may have changed in each ring it touched.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use assim_wire::NodeId;
use sha2::{Digest, Sha256};

/// A node's fixed position on every ring: hash first, id as the tie-breaker.
pub type Position = (u64, NodeId);

/// The CMA's secret that keys ring positions.
pub type PlacementKey = [u8; 32];

/// The ring position of a node under `key`.
pub fn position(key: &PlacementKey, id: NodeId) -> Position {
    let mut h = Sha256::new();
    h.update(key);
    h.update(id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first), id)
}

/// One cycle of nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ring {
    key: PlacementKey,
    members: BTreeSet<Position>,
}

impl Ring {
    /// An empty ring under the all-zero key (tests).
    pub fn new() -> Self {
        Ring::default()
    }

    /// An empty ring whose positions are keyed by `key`.
    pub fn with_key(key: PlacementKey) -> Self {
        Ring { key, members: BTreeSet::new() }
    }

    /// A ring holding `ids` (duplicates collapse), under the all-zero key.
    pub fn from_ids(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let mut ring = Ring::new();
        for id in ids {
            ring.insert(id);
        }
        ring
    }

    fn position(&self, id: NodeId) -> Position {
        position(&self.key, id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains(&self.position(id))
    }

    /// Adds `id`; false if it was already a member.
    pub fn insert(&mut self, id: NodeId) -> bool {
        self.members.insert(self.position(id))
    }

    /// Removes `id`; false if it was not a member.
    pub fn remove(&mut self, id: NodeId) -> bool {
        self.members.remove(&self.position(id))
    }

    /// The member before `id` in ring order (wrapping), other than `id` itself. `id` need not be
    /// a member: for a non-member this is where it would sit.
    pub fn predecessor(&self, id: NodeId) -> Option<NodeId> {
        self.before(&self.position(id))
    }

    /// The member after `id` in ring order (wrapping), other than `id` itself.
    pub fn successor(&self, id: NodeId) -> Option<NodeId> {
        self.after(&self.position(id))
    }

    fn before(&self, p: &Position) -> Option<NodeId> {
        let before = self.members.range(..*p).next_back();
        let found = before.or_else(|| self.members.last())?;
        (found.1 != p.1).then_some(found.1)
    }

    fn after(&self, p: &Position) -> Option<NodeId> {
        let after = self.members.range((Bound::Excluded(*p), Bound::Unbounded)).next();
        let found = after.or_else(|| self.members.first())?;
        (found.1 != p.1).then_some(found.1)
    }

    /// The nodes `id` heartbeats in this ring: predecessor first, then successor if different.
    /// Empty when `id` is not a member or alone.
    pub fn neighbours(&self, id: NodeId) -> Vec<NodeId> {
        let p = self.position(id);
        if !self.members.contains(&p) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(2);
        out.extend(self.before(&p));
        if let Some(s) = self.after(&p)
            && !out.contains(&s)
        {
            out.push(s);
        }
        out
    }

    /// Members in ring order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = NodeId> + '_ {
        self.members.iter().map(|p| p.1)
    }

    /// Members in ring order, collected.
    pub fn order(&self) -> Vec<NodeId> {
        self.iter().collect()
    }
}

/// Names a ring.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RingKey(pub String);

impl RingKey {
    /// The ring of every Up and Suspect node.
    pub const ALL: &'static str = "all";

    pub fn all() -> Self {
        RingKey(Self::ALL.to_owned())
    }
}

/// What a membership change did to one ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingChange {
    pub ring: RingKey,
    /// The node that joined or left.
    pub node: NodeId,
    pub joined: bool,
    /// Its predecessor and successor at the change (after a join, before a leave).
    pub predecessor: Option<NodeId>,
    pub successor: Option<NodeId>,
    /// Members after the change.
    pub members: usize,
}

impl RingChange {
    /// Nodes (other than the one that joined or left) whose neighbours in this ring may have
    /// changed: at most its predecessor and successor.
    pub fn disturbed(&self) -> impl Iterator<Item = NodeId> + '_ {
        let succ = self.successor.filter(|s| Some(*s) != self.predecessor);
        self.predecessor.into_iter().chain(succ)
    }
}

/// Owns the rings by key and answers "whom does this node heartbeat".
#[derive(Clone, Debug)]
pub struct RingManager {
    rings: BTreeMap<RingKey, Ring>,
}

impl Default for RingManager {
    fn default() -> Self {
        RingManager::new()
    }
}

impl RingManager {
    /// A manager with one empty ring, [`RingKey::ALL`], under the all-zero key (tests).
    pub fn new() -> Self {
        RingManager::with_key([0; 32])
    }

    /// A manager with one empty ring, [`RingKey::ALL`], keyed by `key`.
    pub fn with_key(key: PlacementKey) -> Self {
        let mut rings = BTreeMap::new();
        rings.insert(RingKey::all(), Ring::with_key(key));
        RingManager { rings }
    }

    /// A ring by key.
    pub fn ring(&self, key: &str) -> Option<&Ring> {
        self.rings.get(&RingKey(key.to_owned()))
    }

    /// The "all" ring.
    pub fn all(&self) -> &Ring {
        self.rings.get(&RingKey::all()).expect("the all ring always exists")
    }

    fn all_mut(&mut self) -> &mut Ring {
        self.rings.get_mut(&RingKey::all()).expect("the all ring always exists")
    }

    /// Whether `id` is in any ring.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.rings.values().any(|r| r.contains(id))
    }

    /// Adds `id` to the rings it belongs to (today: "all"). Empty when it already was a member.
    pub fn join(&mut self, id: NodeId) -> Vec<RingChange> {
        let ring = self.all_mut();
        if !ring.insert(id) {
            return Vec::new();
        }
        vec![RingChange {
            ring: RingKey::all(),
            node: id,
            joined: true,
            predecessor: ring.predecessor(id),
            successor: ring.successor(id),
            members: ring.len(),
        }]
    }

    /// Removes `id` from every ring. Empty when it was not a member.
    pub fn leave(&mut self, id: NodeId) -> Vec<RingChange> {
        let mut changes = Vec::new();
        for (key, ring) in &mut self.rings {
            if !ring.contains(id) {
                continue;
            }
            let predecessor = ring.predecessor(id);
            let successor = ring.successor(id);
            ring.remove(id);
            changes.push(RingChange {
                ring: key.clone(),
                node: id,
                joined: false,
                predecessor,
                successor,
                members: ring.len(),
            });
        }
        changes
    }

    /// The nodes `id` heartbeats: the union of its neighbours in every ring, in ring-key order,
    /// predecessor before successor, without duplicates.
    pub fn neighbours(&self, id: NodeId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::with_capacity(2);
        for ring in self.rings.values() {
            for n in ring.neighbours(id) {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    #[test]
    fn small_rings() {
        let mut r = Ring::new();
        assert!(r.neighbours(id(1)).is_empty());
        r.insert(id(1));
        assert!(r.neighbours(id(1)).is_empty(), "alone: nobody to heartbeat");
        r.insert(id(2));
        assert_eq!(r.neighbours(id(1)), vec![id(2)]);
        assert_eq!(r.neighbours(id(2)), vec![id(1)]);
        r.insert(id(3));
        for n in 1..=3 {
            let mut got = r.neighbours(id(n));
            got.sort();
            let mut want: Vec<_> = (1..=3).filter(|&m| m != n).map(id).collect();
            want.sort();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn item_4_ring_placement_is_keyed_by_the_cma_secret() {
        let ids: Vec<NodeId> = (0..64).map(id).collect();
        let order = |key: PlacementKey| {
            let mut r = Ring::with_key(key);
            ids.iter().for_each(|n| {
                r.insert(*n);
            });
            r.order()
        };
        let (a, b) = (order([1; 32]), order([2; 32]));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b, "another CMA secret puts the same ids in another order");
        assert_eq!(a, order([1; 32]), "the same secret gives the same order");
        // Without the key, the unkeyed hash does not predict the order.
        let mut unkeyed = ids.clone();
        unkeyed.sort_by_key(|n| {
            let d = Sha256::digest(n.as_bytes());
            u64::from_be_bytes(d[..8].try_into().unwrap())
        });
        assert_ne!(a, unkeyed);
    }

    #[test]
    fn order_follows_hash_not_id() {
        let r = Ring::from_ids((0..50).map(id));
        let order = r.order();
        let mut by_hash = order.clone();
        by_hash.sort_by_key(|n| position(&[0; 32], *n));
        assert_eq!(order, by_hash);
        let mut by_id = order.clone();
        by_id.sort();
        assert_ne!(order, by_id, "ids 0..50 should not hash into id order");
    }

    #[test]
    fn predecessor_and_successor_wrap() {
        let r = Ring::from_ids((0..10).map(id));
        let order = r.order();
        let first = order[0];
        let last = *order.last().unwrap();
        assert_eq!(r.predecessor(first), Some(last));
        assert_eq!(r.successor(last), Some(first));
        assert_eq!(r.successor(order[3]), Some(order[4]));
    }

    #[test]
    fn manager_join_reports_neighbours() {
        let mut m = RingManager::new();
        assert_eq!(m.join(id(1))[0].disturbed().count(), 0);
        let c = m.join(id(2));
        assert_eq!(c[0].disturbed().collect::<Vec<_>>(), vec![id(1)]);
        assert!(m.join(id(2)).is_empty(), "joining twice changes nothing");
        let c = m.join(id(3));
        assert_eq!(c[0].disturbed().count(), 2);
        assert_eq!(c[0].members, 3);
        let c = m.leave(id(3));
        assert_eq!(c[0].members, 2);
        assert!(m.leave(id(3)).is_empty());
        assert_eq!(m.neighbours(id(1)), vec![id(2)]);
        assert!(m.is_member(id(1)) && !m.is_member(id(3)));
    }
}
