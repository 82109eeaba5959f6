//! Service monitoring state: each node's desired check set (with its epoch) and the last
//! reported state of each check. Also keeps the topology's `monitors` table in step with the
//! check sets, so "services with no monitor" reflects the rules.
//!
//! | table | key | what |
//! |---|---|---|
//! | `check_sets` | node | epoch, the checks as JSON ([`StoredCheck`]) |
//! | `service_states` | node, check_name | HARD state, output, perfdata, flapping, since |
//! | `manual_checks` | node, name | a check set by hand (`assim check add`), as JSON |
//! | `remembered_services` | node, protocol, ip, port | a monitored listener and when it was last seen |
//!
//! Both are written in the CMA's batch transaction ([`crate::Store::apply`] via
//! [`ServicesBatch`] in [`crate::InboxProgress`]), so they always match the inbox position.

use std::collections::BTreeMap;

use assim_wire::NodeId;
use rusqlite::{Connection, params};

pub use assim_api::{CheckListEntry, ServiceView};
pub use assim_store::services::{
    CheckSetRecord, ManualChange, ManualCheck, RememberedService, ServiceStateRecord,
    ServicesBatch, StoredCheck,
};

use crate::topology::query::replace_monitors;
use crate::{Store, StoreError};
#[cfg(test)]
use assim_store::services::MonitorRecord;

/// Schema step 4: service monitoring tables.
pub const MIGRATION_4: &str = "
CREATE TABLE IF NOT EXISTS check_sets (
    node TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    checks TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS service_states (
    node TEXT NOT NULL,
    check_name TEXT NOT NULL,
    state TEXT NOT NULL,
    output TEXT NOT NULL,
    perfdata TEXT NOT NULL,
    flapping INTEGER NOT NULL,
    since INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (node, check_name)
);
";

/// Schema step 5: hand-set checks, and the monitored services that stopped listening (whose
/// checks keep running for a day, also across a CMA restart).
pub const MIGRATION_5: &str = "
CREATE TABLE IF NOT EXISTS manual_checks (
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (node, name)
);
CREATE TABLE IF NOT EXISTS remembered_services (
    node TEXT NOT NULL,
    protocol TEXT NOT NULL,
    ip TEXT NOT NULL,
    port INTEGER NOT NULL,
    listener TEXT NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (node, protocol, ip, port)
);
";

/// Writes a batch inside the caller's transaction.
pub(crate) fn apply(tx: &Connection, b: &ServicesBatch) -> rusqlite::Result<()> {
    if b.is_empty() {
        return Ok(());
    }
    let mut put_set = tx.prepare_cached(
        "INSERT INTO check_sets (node, epoch, checks) VALUES (?1, ?2, ?3)
         ON CONFLICT(node) DO UPDATE SET epoch = excluded.epoch, checks = excluded.checks",
    )?;
    let mut drop_states = tx.prepare_cached(
        "DELETE FROM service_states WHERE node = ?1 AND check_name NOT IN
         (SELECT value FROM json_each(?2))",
    )?;
    for s in &b.check_sets {
        let node = s.node.to_string();
        put_set.execute(params![
            node,
            s.epoch as i64,
            serde_json::to_string(&s.checks).expect("checks serialize")
        ])?;
        let names: Vec<&str> = s.checks.iter().map(|c| c.name.as_str()).collect();
        drop_states.execute(params![node, serde_json::to_string(&names).expect("names")])?;
        replace_monitors(tx, &node, &s.monitors)?;
    }
    let mut put_state = tx.prepare_cached(
        "INSERT INTO service_states
         (node, check_name, state, output, perfdata, flapping, since, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(node, check_name) DO UPDATE SET
            since = CASE WHEN service_states.state = excluded.state
                         THEN service_states.since ELSE excluded.since END,
            state = excluded.state, output = excluded.output, perfdata = excluded.perfdata,
            flapping = excluded.flapping, updated_at = excluded.updated_at",
    )?;
    for s in &b.states {
        put_state.execute(params![
            s.node.to_string(),
            s.check,
            s.state,
            s.output,
            s.perfdata,
            s.flapping,
            s.since as i64,
            s.updated_at as i64
        ])?;
    }
    for m in &b.manual {
        match m {
            ManualChange::Put(m) => {
                tx.prepare_cached(
                    "INSERT INTO manual_checks (node, name, spec, added_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(node, name) DO UPDATE SET
                        spec = excluded.spec, added_at = excluded.added_at",
                )?
                .execute(params![
                    m.node.to_string(),
                    m.check.name,
                    serde_json::to_string(&m.check).expect("check serializes"),
                    m.added_at as i64
                ])?;
            }
            ManualChange::Remove { node, name } => {
                tx.prepare_cached("DELETE FROM manual_checks WHERE node = ?1 AND name = ?2")?
                    .execute(params![node.to_string(), name])?;
            }
        }
    }
    for (node, list) in &b.remembered {
        let node = node.to_string();
        tx.prepare_cached("DELETE FROM remembered_services WHERE node = ?1")?
            .execute(params![node])?;
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO remembered_services (node, protocol, ip, port, listener, seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in list {
            put.execute(params![
                node,
                r.protocol,
                r.ip.to_string(),
                r.port,
                serde_json::to_string(r).expect("listener serializes"),
                r.seen as i64
            ])?;
        }
    }
    Ok(())
}

impl Store {
    /// Every node's stored check set.
    pub fn check_sets(&self) -> Result<Vec<CheckSetRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node, epoch, checks FROM check_sets ORDER BY node")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, epoch, checks) = row.map_err(|e| self.sql(e))?;
            let corrupt = |detail: String| StoreError::Corrupt { table: "check_sets", detail };
            out.push(CheckSetRecord {
                node: node.parse().map_err(|_| corrupt(format!("node id {node:?}")))?,
                epoch: epoch as u64,
                checks: serde_json::from_str(&checks)
                    .map_err(|e| corrupt(format!("checks of {node}: {e}")))?,
                monitors: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Every hand-set check, by node and name.
    pub fn manual_checks(&self) -> Result<Vec<ManualCheck>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node, name, spec, added_at FROM manual_checks ORDER BY node, name")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, name, spec, added_at) = row.map_err(|e| self.sql(e))?;
            let corrupt = |detail: String| StoreError::Corrupt { table: "manual_checks", detail };
            out.push(ManualCheck {
                node: node.parse().map_err(|_| corrupt(format!("node id {node:?}")))?,
                check: serde_json::from_str(&spec)
                    .map_err(|e| corrupt(format!("check {name} of {node}: {e}")))?,
                added_at: added_at as u64,
            });
        }
        Ok(out)
    }

    /// Every remembered service, by node.
    pub fn remembered_services(
        &self,
    ) -> Result<BTreeMap<NodeId, Vec<RememberedService>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node, listener FROM remembered_services ORDER BY node, port")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sql(e))?;
        let mut out: BTreeMap<NodeId, Vec<RememberedService>> = BTreeMap::new();
        for row in rows {
            let (node, listener) = row.map_err(|e| self.sql(e))?;
            let corrupt =
                |detail: String| StoreError::Corrupt { table: "remembered_services", detail };
            let id: NodeId = node.parse().map_err(|_| corrupt(format!("node id {node:?}")))?;
            let r = serde_json::from_str(&listener)
                .map_err(|e| corrupt(format!("listener of {node}: {e}")))?;
            out.entry(id).or_default().push(r);
        }
        Ok(out)
    }

    /// Every stored check state.
    pub fn service_states(&self) -> Result<Vec<ServiceStateRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node, check_name, state, output, perfdata, flapping, since, updated_at
                 FROM service_states ORDER BY node, check_name",
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
                    r.get::<_, bool>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, check, state, output, perfdata, flapping, since, updated_at) =
                row.map_err(|e| self.sql(e))?;
            out.push(ServiceStateRecord {
                node: node.parse().map_err(|_| StoreError::Corrupt {
                    table: "service_states",
                    detail: format!("node id {node:?}"),
                })?,
                check,
                state,
                output,
                perfdata,
                flapping,
                since: since as u64,
                updated_at: updated_at as u64,
            });
        }
        Ok(out)
    }

    /// Monitored services: every configured check with its last state ("pending" before the
    /// first report), optionally for one host (name or node id) and one state.
    pub fn services(
        &self,
        host: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<ServiceView>, StoreError> {
        let names: BTreeMap<String, String> =
            self.nodes()?.into_iter().map(|n| (n.id.to_string(), n.hostname)).collect();
        let states: BTreeMap<(String, String), ServiceStateRecord> = self
            .service_states()?
            .into_iter()
            .map(|s| ((s.node.to_string(), s.check.clone()), s))
            .collect();
        let mut out = Vec::new();
        for set in self.check_sets()? {
            let node = set.node.to_string();
            let hostname = names.get(&node).cloned().unwrap_or_else(|| node.clone());
            if let Some(h) = host
                && h != hostname
                && h != node
            {
                continue;
            }
            for c in set.checks {
                let s = states.get(&(node.clone(), c.name.clone()));
                let view = ServiceView {
                    host: hostname.clone(),
                    node: set.node,
                    check: c.name.clone(),
                    kind: c.kind.clone(),
                    state: s.map_or("pending".to_owned(), |s| s.state.clone()),
                    output: s.map(|s| s.output.clone()).unwrap_or_default(),
                    perfdata: s.map(|s| s.perfdata.clone()).unwrap_or_default(),
                    flapping: s.is_some_and(|s| s.flapping),
                    since: s.map_or(0, |s| s.since),
                    interval_s: c.interval_s,
                };
                if state.is_none_or(|want| want.eq_ignore_ascii_case(&view.state)) {
                    out.push(view);
                }
            }
        }
        out.sort_by(|a, b| (&a.host, &a.check).cmp(&(&b.host, &b.check)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InboxProgress;

    #[test]
    fn check_sets_states_and_the_services_query() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let node = NodeId::from_slice(&[3; 16]).unwrap();
        let check = |name: &str| StoredCheck {
            name: name.into(),
            kind: "tcp".into(),
            argv: vec!["127.0.0.1".into(), "80".into()],
            params: BTreeMap::new(),
            interval_s: 60,
            retry_interval_s: 10,
            max_attempts: 3,
            timeout_s: 5,
        };
        let state = |check: &str, state: &str, at: u64| ServiceStateRecord {
            node,
            check: check.into(),
            state: state.into(),
            output: format!("{state} output"),
            perfdata: String::new(),
            flapping: false,
            since: at,
            updated_at: at,
        };
        let batch = |services| InboxProgress { services, ..InboxProgress::default() };
        let set = CheckSetRecord {
            node,
            epoch: 4,
            checks: vec![check("http:80"), check("load")],
            monitors: vec![MonitorRecord {
                protocol: "tcp".into(),
                service_ip: None,
                port: 80,
                check_name: "http:80".into(),
            }],
        };
        store
            .apply(
                &[],
                &[],
                &batch(ServicesBatch {
                    check_sets: vec![set],
                    states: vec![state("http:80", "ok", 10)],
                    ..ServicesBatch::default()
                }),
            )
            .unwrap();
        store
            .apply(
                &[],
                &[],
                &batch(ServicesBatch {
                    check_sets: vec![],
                    states: vec![state("http:80", "ok", 20)],
                    ..ServicesBatch::default()
                }),
            )
            .unwrap();
        let sets = store.check_sets().unwrap();
        assert_eq!((sets[0].epoch, sets[0].checks.len()), (4, 2));
        assert_eq!(sets[0].checks[0].to_spec().name, "http:80");
        let all = store.services(None, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].state.as_str(), all[0].since), ("ok", 10), "since kept while OK");
        assert_eq!(all[1].state, "pending");
        store
            .apply(
                &[],
                &[],
                &batch(ServicesBatch {
                    check_sets: vec![],
                    states: vec![state("http:80", "critical", 30)],
                    ..ServicesBatch::default()
                }),
            )
            .unwrap();
        let crit = store.services(None, Some("critical")).unwrap();
        assert_eq!((crit.len(), crit[0].since), (1, 30));
        assert!(store.services(Some("other"), None).unwrap().is_empty());
        // A new set without the check drops its state.
        let set = CheckSetRecord { node, epoch: 5, checks: vec![check("load")], monitors: vec![] };
        store
            .apply(
                &[],
                &[],
                &batch(ServicesBatch { check_sets: vec![set], ..ServicesBatch::default() }),
            )
            .unwrap();
        assert!(store.service_states().unwrap().is_empty());
    }

    #[test]
    fn manual_checks_and_remembered_services_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let node = NodeId::from_slice(&[5; 16]).unwrap();
        let check = |name: &str, port: &str| StoredCheck {
            name: name.into(),
            kind: "tcp".into(),
            argv: vec!["127.0.0.1".into(), port.into()],
            params: BTreeMap::new(),
            interval_s: 5,
            retry_interval_s: 1,
            max_attempts: 1,
            timeout_s: 2,
        };
        let put = |name: &str, port: &str| {
            ManualChange::Put(ManualCheck { node, check: check(name, port), added_at: 7 })
        };
        let remembered = |port: u16, seen: u64| RememberedService {
            protocol: "tcp".into(),
            ip: "0.0.0.0".parse().unwrap(),
            port,
            exe: Some("/usr/sbin/sshd".into()),
            cmdline: vec!["sshd".into()],
            user: None,
            seen,
        };
        let batch = |services| InboxProgress { services, ..InboxProgress::default() };
        {
            let mut store = Store::open(&path).unwrap();
            let services = ServicesBatch {
                manual: vec![put("a", "1"), put("b", "2"), put("a", "3")],
                remembered: vec![(node, vec![remembered(22, 1), remembered(80, 2)])],
                ..ServicesBatch::default()
            };
            store.apply(&[], &[], &batch(services)).unwrap();
            let services = ServicesBatch {
                manual: vec![ManualChange::Remove { node, name: "b".into() }],
                remembered: vec![(node, vec![remembered(22, 9)])],
                ..ServicesBatch::default()
            };
            store.apply(&[], &[], &batch(services)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let manual = store.manual_checks().unwrap();
        assert_eq!(manual.len(), 1, "{manual:?}");
        assert_eq!(manual[0].check, check("a", "3"), "a later put replaces the check");
        let rem = store.remembered_services().unwrap();
        assert_eq!(rem[&node], vec![remembered(22, 9)], "a node's list is replaced whole");
    }

    /// The core's desired-state changes survive a reopen the same way in SQLite and in
    /// `MemStore`, through the one mapping in `assim_store::desired`.
    #[test]
    fn desired_changes_load_back_the_same_in_both_engines() {
        use assim_cma::check_sets as core;
        use assim_cma::schedule::StoredSchedule;
        use assim_cma::{DesiredChange, DesiredSnapshot};
        use assim_store::EngineStore;
        use assim_wire::msg::CheckSpec;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let node = NodeId::from_slice(&[6; 16]).unwrap();
        let spec = |name: &str| CheckSpec {
            name: name.into(),
            kind: "tcp".into(),
            argv: vec!["127.0.0.1".into(), "22".into()],
            params: vec![],
            interval_s: 5,
            retry_interval_s: 1,
            max_attempts: 1,
            timeout_s: 2,
        };
        let changes = vec![
            DesiredChange::Schedule(StoredSchedule { canonical: "sockets=60{}".into(), epoch: 3 }),
            DesiredChange::CheckSet(core::CheckSetRecord {
                node,
                epoch: 9,
                checks: vec![spec("ssh"), spec("hand")],
                monitors: vec![],
            }),
            DesiredChange::ServiceState(assim_cma::ServiceStateRecord {
                node,
                check: "ssh".into(),
                state: "critical".into(),
                output: "refused".into(),
                perfdata: String::new(),
                flapping: false,
                since: 10,
                updated_at: 11,
            }),
            DesiredChange::Manual(core::ManualChange::Put(core::ManualCheck {
                node,
                check: spec("hand"),
                added_at: 4,
            })),
            DesiredChange::Remembered {
                node,
                services: vec![core::RememberedService {
                    protocol: "tcp".into(),
                    ip: "0.0.0.0".parse().unwrap(),
                    port: 22,
                    exe: None,
                    cmdline: vec![],
                    user: None,
                    seen: 5,
                }],
            },
            DesiredChange::Discovery(assim_cma::DiscoveryRecord {
                node,
                name: "sockets".into(),
                hash: "00".into(),
                payload: "{\"listeners\":[]}".into(),
                collected_at: 1,
                updated_at: 2,
            }),
        ];
        let mut progress = InboxProgress::default();
        for c in changes {
            assim_store::desired::add_change(&mut progress, c);
        }
        let summary = |d: DesiredSnapshot| {
            (
                d.schedule,
                d.check_sets
                    .iter()
                    .map(|c| (c.node, c.epoch, c.checks.clone()))
                    .collect::<Vec<_>>(),
                d.states
                    .iter()
                    .map(|s| (s.check.clone(), s.state.clone(), s.since))
                    .collect::<Vec<_>>(),
                d.manual,
                d.remembered,
                d.sockets,
            )
        };
        {
            let mut store = Store::open(&path).unwrap();
            Store::apply(&mut store, &[], &[], &progress).unwrap();
        }
        let mut mem = assim_store::MemStore::default();
        mem.apply(&[], &[], &progress).unwrap();
        let from_sqlite = summary(Store::open(&path).unwrap().load().unwrap().desired);
        let from_mem = summary(mem.load().unwrap().desired);
        assert_eq!(from_sqlite, from_mem);
        assert_eq!(from_sqlite.0.as_ref().map(|s| s.epoch), Some(3));
        assert_eq!(from_sqlite.1, vec![(node, 9, vec![spec("ssh"), spec("hand")])]);
        assert_eq!(from_sqlite.2, vec![("ssh".into(), "critical".into(), 10)]);
        assert_eq!(from_sqlite.3.len(), 1);
        assert_eq!(from_sqlite.4.len(), 1);
        assert_eq!(from_sqlite.5, vec![(node, b"{\"listeners\":[]}".to_vec())]);
    }
}
