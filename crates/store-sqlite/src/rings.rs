//! The network-aware rings as stored (issue 13): each node's wiring and each ring's
//! description, written by the engine's batches ([`assim_cma::Change::Wiring`],
//! [`assim_cma::Change::Rings`]) and read back for the CMA's restart ([`crate::Store::wiring`])
//! and for `assim rings` / `assim switch` ([`crate::Store::rings`]).
//!
//! | table | key | columns |
//! |---|---|---|
//! | `node_wiring` | node | `ring` (e.g. `switch:00:11:22:33:44:55`), `source` (`lldp`, `cdp`, `segment`, `pinned`, `unknown`), `wiring` (JSON [`assim_cma::wiring::Wiring`]), `inputs` (JSON [`assim_cma::wiring::WiringInputs`]) |
//! | `rings` | key | `kind` (`switch`, `segment`, `pinned`, `unwired`, `upper`), `members`, `representatives`, `watchers` (JSON arrays of node ids, members in ring order) |
//!
//! A ring description is write-behind (at most one heartbeat interval old); a node's wiring is
//! written with the input that derived it. A ring written with no members is deleted.

use assim_cma::ring::{RingKey, RingKind, RingRecord};
use assim_cma::wiring::NodeWiring;
use rusqlite::{Transaction, params};

use crate::{Store, StoreError};

/// Store schema migration 7: the two tables above.
pub(crate) const MIGRATION_7: &str = "
CREATE TABLE IF NOT EXISTS node_wiring (
    node TEXT PRIMARY KEY,
    ring TEXT NOT NULL,
    source TEXT NOT NULL,
    wiring TEXT NOT NULL,
    inputs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS node_wiring_ring ON node_wiring (ring);
CREATE TABLE IF NOT EXISTS rings (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    members TEXT NOT NULL,
    representatives TEXT NOT NULL,
    watchers TEXT NOT NULL
);
";

/// Writes wiring and ring changes inside the batch's transaction.
pub(crate) fn apply(
    tx: &Transaction<'_>,
    wiring: &[&NodeWiring],
    rings: &[&RingRecord],
) -> rusqlite::Result<()> {
    if !wiring.is_empty() {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO node_wiring (node, ring, source, wiring, inputs)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for w in wiring {
            put.execute(params![
                w.node.to_string(),
                w.wiring.ring.as_str(),
                w.wiring.source.name(),
                serde_json::to_string(&w.wiring).expect("wiring serializes"),
                serde_json::to_string(&w.inputs).expect("inputs serialize"),
            ])?;
        }
    }
    if !rings.is_empty() {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO rings (key, kind, members, representatives, watchers)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM rings WHERE key = ?1")?;
        for r in rings {
            if r.members.is_empty() {
                del.execute(params![r.key.as_str()])?;
                continue;
            }
            let ids = |v: &Vec<assim_wire::NodeId>| serde_json::to_string(v).expect("ids");
            put.execute(params![
                r.key.as_str(),
                r.kind.name(),
                ids(&r.members),
                ids(&r.representatives),
                ids(&r.watchers),
            ])?;
        }
    }
    Ok(())
}

impl Store {
    /// Every node's stored wiring, by node id.
    pub fn wiring(&self) -> Result<Vec<NodeWiring>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT node, wiring, inputs FROM node_wiring ORDER BY node")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, wiring, inputs) = row.map_err(|e| self.sql(e))?;
            let corrupt = |detail: String| StoreError::Corrupt { table: "node_wiring", detail };
            out.push(NodeWiring {
                node: node.parse().map_err(|e| corrupt(format!("node {node:?}: {e}")))?,
                wiring: serde_json::from_str(&wiring)
                    .map_err(|e| corrupt(format!("wiring of {node}: {e}")))?,
                inputs: serde_json::from_str(&inputs)
                    .map_err(|e| corrupt(format!("inputs of {node}: {e}")))?,
            });
        }
        Ok(out)
    }

    /// Every stored ring, by key (as of the last write-behind: at most one heartbeat interval
    /// old).
    pub fn rings(&self) -> Result<Vec<RingRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, kind, members, representatives, watchers FROM rings ORDER BY key",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, kind, members, reps, watchers) = row.map_err(|e| self.sql(e))?;
            let corrupt = |detail: String| StoreError::Corrupt { table: "rings", detail };
            let ids = |what: &str, v: &str| {
                serde_json::from_str(v).map_err(|e| corrupt(format!("{what} of {key}: {e}")))
            };
            let kind: RingKind = serde_json::from_value(serde_json::Value::String(kind.clone()))
                .map_err(|_| corrupt(format!("kind {kind:?} of {key}")))?;
            out.push(RingRecord {
                key: RingKey(key.clone()),
                kind,
                members: ids("members", &members)?,
                representatives: ids("representatives", &reps)?,
                watchers: ids("watchers", &watchers)?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_cma::Change;
    use assim_cma::wiring::{Wiring, WiringInputs, WiringSource};
    use assim_store::InboxProgress;
    use assim_wire::NodeId;

    #[test]
    fn wiring_and_rings_round_trip_and_a_ring_without_members_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        let w = NodeWiring {
            node: a,
            wiring: Wiring {
                ring: RingKey::switch("tor1"),
                source: WiringSource::Lldp,
                nic: Some("eth0".into()),
                switch: None,
                segment: None,
            },
            inputs: WiringInputs::default(),
        };
        let ring = RingRecord {
            key: RingKey::switch("tor1"),
            kind: RingKind::Switch,
            members: vec![a, b],
            representatives: vec![a],
            watchers: vec![],
        };
        let changes = [Change::Wiring(w.clone()), Change::Rings(vec![ring.clone()])];
        s.apply(&changes, &[], &InboxProgress::default()).unwrap();
        assert_eq!(s.wiring().unwrap(), vec![w.clone()]);
        assert_eq!(s.rings().unwrap(), vec![ring.clone()]);
        assert_eq!(s.load_snapshot().unwrap().wiring, vec![w]);
        let gone = RingRecord { members: vec![], ..ring };
        s.apply(&[Change::Rings(vec![gone])], &[], &InboxProgress::default()).unwrap();
        assert!(s.rings().unwrap().is_empty());
    }
}
