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
//! The [`RingManager`] owns the network-aware rings of issue 13:
//!
//! ```text
//!  switch:A ring: a1 → a2 → a3 → a1        switch:B ring: b1 → b2 → b3 → b1
//!           \ representatives a1, a2 ──── upper ring ──── b1, b2 /
//!  upper ring order: … z2 │ a1 a2 │ b1 b2 │ c1 …   (each ring's representatives side by side)
//! ```
//!
//! - **Home rings.** Every member (Up or Suspect node) is in exactly one home ring, the one its
//!   wiring names ([`crate::wiring`]: `switch:<chassis>`, `segment:<subnet>@<gw>`,
//!   `pinned:<name>`); a node whose wiring is not known yet is in the fallback ring `unwired`,
//!   so it is watched from its first second. Home rings are ordered by the keyed hash.
//! - **The upper ring** exists while there are two home rings or more. Each home ring sends
//!   its **representatives** — two members (one if it has one) — into it. The upper ring is
//!   ordered by (keyed hash of the ring key, node position), so a ring's representatives sit
//!   next to each other and each has one neighbour outside its ring: heartbeats cross switches
//!   only there (one pair of directions per home ring), and a whole switch going silent is
//!   seen from outside it.
//! - **Watchers** of a ring are the upper-ring neighbours of its representatives that are not
//!   in it. A ring of one or two hosts has all its hosts as representatives, so every one of
//!   them is watched from outside; no host is ever unwatched (unless it is the only node).
//! - **Minimal churn.** Representatives change only when one leaves its ring (the earliest
//!   joined remaining member not yet a representative replaces it); a rewired host leaves one
//!   home ring and joins another; nothing else moves.
//!
//! A node's heartbeat peers are the union of its neighbours in its home ring and, for a
//! representative, in the upper ring. Every mutation returns [`RingChange`]s naming each node
//! whose peers may have changed; the manager keeps the set of rings whose description
//! ([`RingRecord`]) changed, for the write-behind persistence ([`RingManager::take_dirty`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use assim_wire::NodeId;
use serde::{Deserialize, Serialize};
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

/// Names a ring: `switch:<chassis id>`, `segment:<subnet>@<gateway>`, `pinned:<name>`,
/// `unwired` (the fallback ring) or `upper`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RingKey(pub String);

impl RingKey {
    /// The old name of the single ring (before issue 13); kept for stored events.
    pub const ALL: &'static str = "all";
    /// The fallback ring of nodes whose wiring is not known yet.
    pub const UNWIRED: &'static str = "unwired";
    /// The ring of every home ring's representatives.
    pub const UPPER: &'static str = "upper";

    /// The fallback ring.
    pub fn unwired() -> Self {
        RingKey(Self::UNWIRED.to_owned())
    }

    /// The upper ring.
    pub fn upper() -> Self {
        RingKey(Self::UPPER.to_owned())
    }

    /// The ring of a switch, by its chassis id.
    pub fn switch(chassis_id: &str) -> Self {
        RingKey(format!("switch:{}", clip(chassis_id)))
    }

    /// The ring of an L2 segment (`subnet@gateway` or `subnet`).
    pub fn segment(segment: &str) -> Self {
        RingKey(format!("segment:{}", clip(segment)))
    }

    /// A ring an operator pinned hosts to.
    pub fn pinned(name: &str) -> Self {
        RingKey(format!("pinned:{}", clip(name)))
    }

    /// What kind of ring this is.
    pub fn kind(&self) -> RingKind {
        match self.0.split_once(':').map(|p| p.0) {
            Some("switch") => RingKind::Switch,
            Some("segment") => RingKind::Segment,
            Some("pinned") => RingKind::Pinned,
            _ if self.0 == Self::UPPER => RingKind::Upper,
            _ => RingKind::Unwired,
        }
    }

    /// The name after the kind (`switch:tor1` → `tor1`); the whole key for `upper`/`unwired`.
    pub fn name(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |p| p.1)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a ring of this kind stands for a piece of network (switch, segment, pinned)
    /// whose failure is one incident.
    pub fn is_topological(&self) -> bool {
        matches!(self.kind(), RingKind::Switch | RingKind::Segment | RingKind::Pinned)
    }
}

impl std::fmt::Display for RingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn clip(s: &str) -> &str {
    let max = crate::wiring::MAX_RING_NAME;
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The kinds of ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RingKind {
    Switch,
    Segment,
    Pinned,
    Unwired,
    Upper,
}

impl RingKind {
    /// The stable lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            RingKind::Switch => "switch",
            RingKind::Segment => "segment",
            RingKind::Pinned => "pinned",
            RingKind::Unwired => "unwired",
            RingKind::Upper => "upper",
        }
    }
}

/// One ring as persisted ([`crate::Change::Rings`]) and as `assim rings` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingRecord {
    pub key: RingKey,
    pub kind: RingKind,
    /// Members in ring order; empty when the ring is gone.
    pub members: Vec<NodeId>,
    /// Its members in the upper ring (empty for the upper ring, and while there is only one
    /// home ring).
    pub representatives: Vec<NodeId>,
    /// Nodes outside it that heartbeat its representatives (their upper-ring neighbours).
    pub watchers: Vec<NodeId>,
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

/// The upper ring's position of a representative: its ring's keyed hash first, so a ring's
/// representatives are adjacent.
type UpperPos = (u64, Position);

fn ring_hash(key: &PlacementKey, ring: &RingKey) -> u64 {
    let mut h = Sha256::new();
    h.update(key);
    h.update(b"ring:");
    h.update(ring.0.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Owns the rings and answers "whom does this node heartbeat". See the module doc.
#[derive(Clone, Debug)]
pub struct RingManager {
    key: PlacementKey,
    /// Every member, in keyed-hash order (the persisted order, [`crate::Change::Ring`]).
    all: Ring,
    /// Home rings by key (never empty).
    rings: BTreeMap<RingKey, Ring>,
    /// Each member's home ring.
    home: BTreeMap<NodeId, RingKey>,
    /// The ring each node belongs in, when its wiring is known (members or not).
    wired: BTreeMap<NodeId, RingKey>,
    /// Each home ring's representatives, in the order they became one (≤ 2). Empty while the
    /// upper ring is inactive (fewer than two home rings).
    reps: BTreeMap<RingKey, Vec<NodeId>>,
    /// When each member joined its home ring (a counter): the earliest non-representative
    /// replaces a representative that leaves.
    joined_at: BTreeMap<NodeId, u64>,
    next_join: u64,
    upper: BTreeSet<UpperPos>,
    upper_pos: BTreeMap<NodeId, UpperPos>,
    dirty: BTreeSet<RingKey>,
}

impl Default for RingManager {
    fn default() -> Self {
        RingManager::new()
    }
}

impl RingManager {
    /// An empty manager under the all-zero key (tests).
    pub fn new() -> Self {
        RingManager::with_key([0; 32])
    }

    /// An empty manager whose positions are keyed by `key`.
    pub fn with_key(key: PlacementKey) -> Self {
        RingManager {
            key,
            all: Ring::with_key(key),
            rings: BTreeMap::new(),
            home: BTreeMap::new(),
            wired: BTreeMap::new(),
            reps: BTreeMap::new(),
            joined_at: BTreeMap::new(),
            next_join: 0,
            upper: BTreeSet::new(),
            upper_pos: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// Every member (Up and Suspect nodes), in keyed-hash order.
    pub fn all(&self) -> &Ring {
        &self.all
    }

    /// A home ring by key.
    pub fn ring(&self, key: &str) -> Option<&Ring> {
        self.rings.get(&RingKey(key.to_owned()))
    }

    /// Every home ring, by key.
    pub fn home_rings(&self) -> impl Iterator<Item = (&RingKey, &Ring)> {
        self.rings.iter()
    }

    /// The home ring of a member.
    pub fn home_of(&self, id: NodeId) -> Option<&RingKey> {
        self.home.get(&id)
    }

    /// The ring a node belongs in by its wiring (`unwired` when unknown), member or not.
    pub fn wired_ring(&self, id: NodeId) -> RingKey {
        self.wired.get(&id).cloned().unwrap_or_else(RingKey::unwired)
    }

    /// Whether `id` is a member.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.home.contains_key(&id)
    }

    /// Whether the upper ring is active (two home rings or more).
    pub fn upper_active(&self) -> bool {
        self.rings.len() >= 2
    }

    /// The upper ring, in its order.
    pub fn upper_order(&self) -> Vec<NodeId> {
        self.upper.iter().map(|p| p.1.1).collect()
    }

    /// Whether `id` is a representative (in the upper ring).
    pub fn is_representative(&self, id: NodeId) -> bool {
        self.upper_pos.contains_key(&id)
    }

    /// A home ring's representatives.
    pub fn representatives(&self, key: &RingKey) -> &[NodeId] {
        self.reps.get(key).map_or(&[], Vec::as_slice)
    }

    /// The nodes outside `key` that heartbeat its representatives.
    pub fn watchers(&self, key: &RingKey) -> Vec<NodeId> {
        let mut out = Vec::new();
        for r in self.representatives(key) {
            for n in self.upper_neighbours(*r) {
                if self.home.get(&n) != Some(key) && !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// The description of one ring (home ring, or `upper`).
    pub fn record(&self, key: &RingKey) -> RingRecord {
        if key.0 == RingKey::UPPER {
            return RingRecord {
                key: key.clone(),
                kind: RingKind::Upper,
                members: self.upper_order(),
                representatives: Vec::new(),
                watchers: Vec::new(),
            };
        }
        RingRecord {
            key: key.clone(),
            kind: key.kind(),
            members: self.rings.get(key).map(Ring::order).unwrap_or_default(),
            representatives: self.representatives(key).to_vec(),
            watchers: self.watchers(key),
        }
    }

    /// Every ring's description: home rings by key, then `upper` when active.
    pub fn records(&self) -> Vec<RingRecord> {
        let mut out: Vec<RingRecord> = self.rings.keys().map(|k| self.record(k)).collect();
        if self.upper_active() {
            out.push(self.record(&RingKey::upper()));
        }
        out
    }

    /// The descriptions of the rings changed since the last call (a gone ring has no members).
    pub fn take_dirty(&mut self) -> Vec<RingRecord> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.iter().map(|k| self.record(k)).collect()
    }

    /// Whether some ring changed since the last [`RingManager::take_dirty`].
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Sets the ring `id` belongs in. A member moves at once (it leaves its old home ring and
    /// joins the new one); the changes say whose peers may have changed. Empty when nothing
    /// changed.
    pub fn set_ring(&mut self, id: NodeId, key: RingKey) -> Vec<RingChange> {
        if self.wired_ring(id) == key {
            return Vec::new();
        }
        if key.0 == RingKey::UNWIRED {
            self.wired.remove(&id);
        } else {
            self.wired.insert(id, key);
        }
        if !self.is_member(id) {
            return Vec::new();
        }
        let mut changes = self.leave_home(id);
        changes.extend(self.join_home(id));
        changes
    }

    /// Forgets a node's wiring (it is gone for good).
    pub fn forget(&mut self, id: NodeId) -> Vec<RingChange> {
        let changes = self.leave(id);
        self.wired.remove(&id);
        changes
    }

    /// Adds `id` to its home ring (and, if it becomes a representative, to the upper ring).
    /// Empty when it already was a member.
    pub fn join(&mut self, id: NodeId) -> Vec<RingChange> {
        if self.is_member(id) {
            return Vec::new();
        }
        self.all.insert(id);
        self.join_home(id)
    }

    /// Removes `id` from every ring. Empty when it was not a member.
    pub fn leave(&mut self, id: NodeId) -> Vec<RingChange> {
        if !self.is_member(id) {
            return Vec::new();
        }
        let changes = self.leave_home(id);
        self.all.remove(id);
        changes
    }

    /// The nodes `id` heartbeats: its home-ring neighbours, then (for a representative) its
    /// upper-ring neighbours, without duplicates.
    pub fn neighbours(&self, id: NodeId) -> Vec<NodeId> {
        let Some(home) = self.home.get(&id) else { return Vec::new() };
        let mut out = self.rings[home].neighbours(id);
        for n in self.upper_neighbours(id) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// `id`'s neighbours in the upper ring (empty if it is not a representative).
    pub fn upper_neighbours(&self, id: NodeId) -> Vec<NodeId> {
        let Some(p) = self.upper_pos.get(&id) else { return Vec::new() };
        let before = self.upper.range(..*p).next_back().or_else(|| self.upper.last());
        let after = self
            .upper
            .range((Bound::Excluded(*p), Bound::Unbounded))
            .next()
            .or_else(|| self.upper.first());
        let mut out = Vec::with_capacity(2);
        for n in [before, after].into_iter().flatten() {
            let n = n.1.1;
            if n != id && !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    // ------------------------------------------------------------------------------------------

    fn join_home(&mut self, id: NodeId) -> Vec<RingChange> {
        let key = self.wired_ring(id);
        let had = self.rings.len();
        let ring = self.rings.entry(key.clone()).or_insert_with(|| Ring::with_key(self.key));
        ring.insert(id);
        let change = RingChange {
            ring: key.clone(),
            node: id,
            joined: true,
            predecessor: ring.predecessor(id),
            successor: ring.successor(id),
            members: ring.len(),
        };
        self.home.insert(id, key.clone());
        self.joined_at.insert(id, self.next_join);
        self.next_join += 1;
        self.dirty.insert(key.clone());
        let mut changes = vec![change];
        if self.upper_active() && had < 2 {
            self.activate_upper(&mut changes);
        } else if self.upper_active() {
            self.fill_reps(&key, &mut changes);
        }
        changes
    }

    fn leave_home(&mut self, id: NodeId) -> Vec<RingChange> {
        let Some(key) = self.home.remove(&id) else { return Vec::new() };
        self.joined_at.remove(&id);
        let mut changes = Vec::new();
        if self.upper_pos.contains_key(&id) {
            self.upper_remove(id, &mut changes);
            if let Some(r) = self.reps.get_mut(&key) {
                r.retain(|n| *n != id);
            }
        }
        let ring = self.rings.get_mut(&key).expect("a member's home ring exists");
        let predecessor = ring.predecessor(id);
        let successor = ring.successor(id);
        ring.remove(id);
        let members = ring.len();
        changes.insert(
            0,
            RingChange {
                ring: key.clone(),
                node: id,
                joined: false,
                predecessor,
                successor,
                members,
            },
        );
        self.dirty.insert(key.clone());
        if members == 0 {
            self.rings.remove(&key);
            self.reps.remove(&key);
            if !self.upper_active() {
                self.deactivate_upper(&mut changes);
            }
        } else if self.upper_active() {
            self.fill_reps(&key, &mut changes);
        }
        changes
    }

    /// Two home rings now: every ring sends its representatives.
    fn activate_upper(&mut self, changes: &mut Vec<RingChange>) {
        let keys: Vec<RingKey> = self.rings.keys().cloned().collect();
        for k in keys {
            self.fill_reps(&k, changes);
        }
    }

    /// One home ring left: the upper ring dissolves.
    fn deactivate_upper(&mut self, changes: &mut Vec<RingChange>) {
        let reps: Vec<NodeId> = self.upper_pos.keys().copied().collect();
        for r in reps {
            self.upper_remove(r, changes);
        }
        for k in std::mem::take(&mut self.reps).into_keys() {
            self.dirty.insert(k);
        }
    }

    /// Tops a ring's representatives up to two (one for a ring of one): the earliest-joined
    /// members that are not representatives yet.
    fn fill_reps(&mut self, key: &RingKey, changes: &mut Vec<RingChange>) {
        let Some(ring) = self.rings.get(key) else { return };
        let want = ring.len().min(2);
        let have = self.reps.get(key).map_or(0, Vec::len);
        if have >= want {
            return;
        }
        let mut candidates: Vec<(u64, NodeId)> = ring
            .iter()
            .filter(|n| !self.upper_pos.contains_key(n))
            .map(|n| (self.joined_at.get(&n).copied().unwrap_or(u64::MAX), n))
            .collect();
        candidates.sort();
        for (_, n) in candidates.into_iter().take(want - have) {
            self.reps.entry(key.clone()).or_default().push(n);
            self.upper_insert(n, key, changes);
        }
    }

    fn upper_insert(&mut self, id: NodeId, key: &RingKey, changes: &mut Vec<RingChange>) {
        let p = (ring_hash(&self.key, key), position(&self.key, id));
        self.upper.insert(p);
        self.upper_pos.insert(id, p);
        let nb = self.upper_neighbours(id);
        self.mark_upper_dirty(&nb);
        self.dirty.insert(RingKey::upper());
        self.dirty.insert(key.clone());
        changes.push(RingChange {
            ring: RingKey::upper(),
            node: id,
            joined: true,
            predecessor: nb.first().copied(),
            successor: nb.get(1).or(nb.first()).copied(),
            members: self.upper.len(),
        });
    }

    fn upper_remove(&mut self, id: NodeId, changes: &mut Vec<RingChange>) {
        let nb = self.upper_neighbours(id);
        let Some(p) = self.upper_pos.remove(&id) else { return };
        self.upper.remove(&p);
        self.mark_upper_dirty(&nb);
        self.dirty.insert(RingKey::upper());
        if let Some(k) = self.home.get(&id) {
            self.dirty.insert(k.clone());
        }
        changes.push(RingChange {
            ring: RingKey::upper(),
            node: id,
            joined: false,
            predecessor: nb.first().copied(),
            successor: nb.get(1).or(nb.first()).copied(),
            members: self.upper.len(),
        });
    }

    /// The rings whose watchers may change when these representatives' upper neighbours do.
    fn mark_upper_dirty(&mut self, reps: &[NodeId]) {
        for r in reps {
            if let Some(k) = self.home.get(r) {
                self.dirty.insert(k.clone());
            }
        }
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

    fn sw(n: u8) -> RingKey {
        RingKey::switch(&format!("sw{n}"))
    }

    /// Invariants of a manager: every member in one home ring; neighbours symmetric; every
    /// member of a system of two nodes or more has a neighbour; representatives as documented;
    /// each ring's representatives adjacent in the upper ring.
    fn check(m: &RingManager) {
        let members = m.all().order();
        for &a in &members {
            let home = m.home_of(a).expect("a member has a home ring");
            assert!(m.ring(&home.0).unwrap().contains(a));
            let na = m.neighbours(a);
            if members.len() >= 2 {
                assert!(!na.is_empty(), "{a} is unwatched");
            }
            for b in na {
                assert!(m.neighbours(b).contains(&a), "{a} heartbeats {b} but not back");
            }
        }
        let homes: usize = m.home_rings().map(|(_, r)| r.len()).sum();
        assert_eq!(homes, members.len());
        for (k, r) in m.home_rings() {
            let reps = m.representatives(k);
            if m.upper_active() {
                assert_eq!(reps.len(), r.len().min(2), "{k}");
                if reps.len() == 2 {
                    let up = m.upper_neighbours(reps[0]);
                    assert!(up.contains(&reps[1]) || m.upper_order().len() == 2, "{k} reps apart");
                }
                assert!(!m.watchers(k).is_empty(), "{k} is not watched from outside");
            } else {
                assert!(reps.is_empty());
            }
        }
    }

    #[test]
    fn one_ring_per_switch_and_an_upper_ring_of_two_representatives_each() {
        let mut m = RingManager::new();
        for n in 1..=12u8 {
            m.set_ring(id(n), sw(n % 3));
            m.join(id(n));
            check(&m);
        }
        assert_eq!(m.home_rings().count(), 3);
        assert_eq!(m.upper_order().len(), 6);
        // A member's peers are inside its switch unless it is a representative.
        for n in 1..=12u8 {
            let home = m.home_of(id(n)).unwrap().clone();
            let outside: Vec<NodeId> =
                m.neighbours(id(n)).into_iter().filter(|p| m.home_of(*p) != Some(&home)).collect();
            if m.is_representative(id(n)) {
                assert_eq!(outside.len(), 1, "a representative has one neighbour outside");
            } else {
                assert!(outside.is_empty());
            }
        }
        let recs = m.records();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[3].key.0, "upper");
        assert_eq!(recs[0].kind, RingKind::Switch);
        assert_eq!(recs[0].members.len(), 4);
        assert_eq!(recs[0].watchers.len(), 2);
    }

    #[test]
    fn small_rings_are_watched_from_the_upper_ring() {
        let mut m = RingManager::new();
        m.set_ring(id(1), sw(1));
        m.join(id(1));
        assert!(m.neighbours(id(1)).is_empty(), "the only node");
        m.set_ring(id(2), sw(2));
        m.join(id(2));
        check(&m);
        assert_eq!(m.neighbours(id(1)), vec![id(2)], "two rings of one watch each other");
        for n in 3..=6 {
            m.set_ring(id(n), sw(3));
            m.join(id(n));
        }
        check(&m);
        assert_eq!(m.watchers(&sw(1)).len(), 2);
    }

    #[test]
    fn a_moved_host_leaves_one_ring_and_joins_another_with_minimal_churn() {
        let mut m = RingManager::new();
        for n in 1..=9u8 {
            m.set_ring(id(n), sw(n % 3));
            m.join(id(n));
        }
        let reps_before: Vec<Vec<NodeId>> =
            (0..3).map(|s| m.representatives(&sw(s)).to_vec()).collect();
        let mover = (1..=9u8)
            .map(id)
            .find(|n| m.home_of(*n) == Some(&sw(1)) && !m.is_representative(*n))
            .unwrap();
        let changes = m.set_ring(mover, sw(2));
        check(&m);
        assert_eq!(m.home_of(mover), Some(&sw(2)));
        assert_eq!(changes.iter().filter(|c| c.ring != RingKey::upper()).count(), 2);
        let reps_after: Vec<Vec<NodeId>> =
            (0..3).map(|s| m.representatives(&sw(s)).to_vec()).collect();
        assert_eq!(reps_before, reps_after, "no representative had to change");
        // A representative that leaves is replaced by the earliest-joined other member.
        let rep = m.representatives(&sw(0))[0];
        m.leave(rep);
        check(&m);
        assert_eq!(m.representatives(&sw(0)).len(), 2);
        assert!(!m.representatives(&sw(0)).contains(&rep));
        // Unwired nodes are in the fallback ring, watched like any other.
        m.join(id(50));
        check(&m);
        assert_eq!(m.home_of(id(50)).unwrap().0, "unwired");
        assert!(m.take_dirty().iter().any(|r| r.key.0 == "unwired"));
        assert!(m.take_dirty().is_empty());
    }

    #[test]
    fn random_joins_leaves_and_moves_keep_the_invariants() {
        let mut m = RingManager::with_key([9; 32]);
        let mut x: u64 = 0x1234_5678;
        for _ in 0..600 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = id((x >> 33) as u8 % 40);
            match (x >> 50) % 4 {
                0 | 1 => {
                    m.join(n);
                }
                2 => {
                    m.leave(n);
                }
                _ => {
                    m.set_ring(n, sw((x >> 20) as u8 % 5));
                }
            }
            check(&m);
        }
        // Down to one home ring: the upper ring dissolves.
        for n in 0..40u8 {
            m.set_ring(id(n), sw(0));
        }
        check(&m);
        assert!(m.upper_order().is_empty());
    }
}
