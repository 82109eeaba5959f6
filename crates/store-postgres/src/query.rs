//! The read side on PostgreSQL ([`assim_store::Queries`] for [`Store`]) and the batch's
//! service-monitoring and ring writes. Every query is the SQLite store's (its `topology::query`,
//! `topology::switches`, `services` and `rings` modules are the spec) in PostgreSQL's dialect,
//! with the same orderings (every `text` column is `COLLATE "C"`), so the answers are equal; the
//! conformance suite (`tests/conformance.rs`) compares them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use assim_api::{
    Dependency, DiscoveryView, DownHost, HistoryEntry, IpSighting, MacSighting, NodeView,
    PackageHit, RingView, Service, ServiceView, Subnet, SwitchHost, SwitchPortLink, SwitchView,
    UnknownIp,
};
use assim_cma::ring::{RingKey, RingKind, RingRecord};
use assim_cma::wiring::NodeWiring;
use assim_store::queries::discovery_view;
use assim_store::services::{
    CheckSetRecord, ManualChange, ManualCheck, MonitorRecord, RememberedService,
    ServiceStateRecord, ServicesBatch,
};
use assim_store::{
    HostRef, OpenQueries, PackagePattern, Queries, QueryError, RingDesc, ring_views,
};
use assim_store_sqlite::topology::derive::canonical_ip;
use assim_wire::NodeId;
use postgres::{Error, Row};

use crate::{Store, StoreError, Tx, json, node_id, t};

/// Most switches one `switches` answer lists (as on SQLite).
pub use assim_store_sqlite::topology::switches::MAX_SWITCHES;

/// Writes a batch's service monitoring inside its transaction.
pub(crate) fn apply_services(tx: &mut Tx<'_>, b: &ServicesBatch) -> Result<(), Error> {
    for s in &b.check_sets {
        let node = s.node.to_string();
        tx.exec(
            "INSERT INTO check_sets (node, epoch, checks) VALUES ($1, $2, $3::text::jsonb)
             ON CONFLICT (node) DO UPDATE SET epoch = EXCLUDED.epoch, checks = EXCLUDED.checks",
            &[&node, &(s.epoch as i64), &json(&s.checks)],
        )?;
        let names: Vec<String> = s.checks.iter().map(|c| t(&c.name).into_owned()).collect();
        tx.exec(
            "DELETE FROM service_states WHERE node = $1 AND NOT (check_name = ANY($2))",
            &[&node, &names],
        )?;
        replace_monitors(tx, &node, &s.monitors)?;
    }
    for s in &b.states {
        tx.exec(
            "INSERT INTO service_states AS o
             (node, check_name, state, output, perfdata, flapping, since, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (node, check_name) DO UPDATE SET
                since = CASE WHEN o.state = EXCLUDED.state THEN o.since ELSE EXCLUDED.since END,
                state = EXCLUDED.state, output = EXCLUDED.output, perfdata = EXCLUDED.perfdata,
                flapping = EXCLUDED.flapping, updated_at = EXCLUDED.updated_at",
            &[
                &s.node.to_string(),
                &t(&s.check),
                &t(&s.state),
                &t(&s.output),
                &t(&s.perfdata),
                &s.flapping,
                &(s.since as i64),
                &(s.updated_at as i64),
            ],
        )?;
    }
    for m in &b.manual {
        match m {
            ManualChange::Put(m) => tx.exec(
                "INSERT INTO manual_checks (node, name, spec, added_at)
                 VALUES ($1, $2, $3::text::jsonb, $4)
                 ON CONFLICT (node, name) DO UPDATE SET
                    spec = EXCLUDED.spec, added_at = EXCLUDED.added_at",
                &[&m.node.to_string(), &t(&m.check.name), &json(&m.check), &(m.added_at as i64)],
            )?,
            ManualChange::Remove { node, name } => tx.exec(
                "DELETE FROM manual_checks WHERE node = $1 AND name = $2",
                &[&node.to_string(), &t(name)],
            )?,
        };
    }
    for (node, list) in &b.remembered {
        let node = node.to_string();
        tx.exec("DELETE FROM remembered_services WHERE node = $1", &[&node])?;
        for r in list {
            tx.exec(
                "INSERT INTO remembered_services (node, protocol, ip, port, listener, seen)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)
                 ON CONFLICT (node, protocol, ip, port) DO UPDATE SET
                    listener = EXCLUDED.listener, seen = EXCLUDED.seen",
                &[
                    &node,
                    &t(&r.protocol),
                    &r.ip.to_string(),
                    &i64::from(r.port),
                    &json(r),
                    &(r.seen as i64),
                ],
            )?;
        }
    }
    Ok(())
}

/// Replaces the monitors of `node` inside a transaction.
fn replace_monitors(tx: &mut Tx<'_>, node: &str, monitors: &[MonitorRecord]) -> Result<(), Error> {
    tx.exec("DELETE FROM monitors WHERE node = $1", &[&node])?;
    for m in monitors {
        tx.exec(
            "INSERT INTO monitors (node, protocol, service_ip, port, check_name)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &node,
                &t(&m.protocol),
                &m.service_ip.map(|ip| canonical_ip(ip).to_string()),
                &i64::from(m.port),
                &t(&m.check_name),
            ],
        )?;
    }
    Ok(())
}

/// Writes wiring and ring changes inside the batch's transaction; a ring without members is
/// deleted.
pub(crate) fn apply_rings(
    tx: &mut Tx<'_>,
    wiring: &[&NodeWiring],
    rings: &[&RingRecord],
) -> Result<(), Error> {
    for w in wiring {
        tx.exec(
            "INSERT INTO node_wiring (node, ring, source, wiring, inputs)
             VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb)
             ON CONFLICT (node) DO UPDATE SET ring = EXCLUDED.ring, source = EXCLUDED.source,
               wiring = EXCLUDED.wiring, inputs = EXCLUDED.inputs",
            &[
                &w.node.to_string(),
                &t(w.wiring.ring.as_str()),
                &w.wiring.source.name(),
                &json(&w.wiring),
                &json(&w.inputs),
            ],
        )?;
    }
    for r in rings {
        if r.members.is_empty() {
            tx.exec("DELETE FROM rings WHERE key = $1", &[&t(r.key.as_str())])?;
            continue;
        }
        tx.exec(
            "INSERT INTO rings (key, kind, members, representatives, watchers)
             VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb, $5::text::jsonb)
             ON CONFLICT (key) DO UPDATE SET kind = EXCLUDED.kind, members = EXCLUDED.members,
               representatives = EXCLUDED.representatives, watchers = EXCLUDED.watchers",
            &[
                &t(r.key.as_str()),
                &r.kind.name(),
                &json(&r.members),
                &json(&r.representatives),
                &json(&r.watchers),
            ],
        )?;
    }
    Ok(())
}

fn ip_key(s: &str) -> (u8, Option<IpAddr>, String) {
    match s.parse::<IpAddr>() {
        Ok(ip) => (if ip.is_ipv4() { 0 } else { 1 }, Some(ip), String::new()),
        Err(_) => (2, None, s.to_string()),
    }
}

fn split_list(s: String) -> Vec<String> {
    s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()
}

fn labels(detail: &str, key: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(detail)
        .ok()
        .and_then(|v| v.get(key).cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

fn u16_of(v: i64) -> u16 {
    v as u16
}

fn opt_u32(v: Option<i64>) -> Option<u32> {
    v.map(|v| v as u32)
}

const DEP_COLUMNS: &str = "
    SELECT COALESCE(cn.hostname, d.client_node), d.client_node, COALESCE(cn.state, '?'),
           d.client_pid, d.client_exe, COALESCE(sn.hostname, d.server_node), d.server_node,
           COALESCE(sn.state, '?'), d.server_ip, d.port, d.service_ip, d.server_pid,
           d.server_exe, d.connections
    FROM topo_deps d LEFT JOIN nodes cn ON cn.id = d.client_node
    LEFT JOIN nodes sn ON sn.id = d.server_node";

fn dependency(r: &Row) -> Result<Dependency, Error> {
    Ok(Dependency {
        client_host: r.try_get(0)?,
        client_node: r.try_get(1)?,
        client_state: r.try_get(2)?,
        client_pid: opt_u32(r.try_get(3)?),
        client_exe: r.try_get(4)?,
        server_host: r.try_get(5)?,
        server_node: r.try_get(6)?,
        server_state: r.try_get(7)?,
        server_ip: r.try_get(8)?,
        port: u16_of(r.try_get(9)?),
        service_ip: r.try_get(10)?,
        server_pid: opt_u32(r.try_get(11)?),
        server_exe: r.try_get(12)?,
        connections: r.try_get::<_, i64>(13)? as u64,
    })
}

// The monitors' names in the order SQLite's GROUP_CONCAT gives them: the order of the
// `monitors_key` index (node, protocol, port, service_ip, check_name).
const SERVICE_COLUMNS: &str = "
    SELECT n.hostname, s.node, s.protocol, s.ip, s.port, s.pid, s.exe, s.cmdline, s.\"user\",
           (SELECT COUNT(DISTINCT d.client_node) FROM topo_deps d
            WHERE d.server_node = s.node AND d.port = s.port AND d.service_ip = s.ip
              AND s.protocol = 'tcp'),
           (SELECT string_agg(m.check_name, ','
                              ORDER BY COALESCE(m.service_ip, ''), m.check_name)
            FROM monitors m
            WHERE m.node = s.node AND m.protocol = s.protocol AND m.port = s.port
              AND (m.service_ip IS NULL OR m.service_ip = s.ip))
    FROM topo_services s JOIN nodes n ON n.id = s.node";

fn service(r: &Row) -> Result<Service, Error> {
    Ok(Service {
        host: r.try_get(0)?,
        node: r.try_get(1)?,
        protocol: r.try_get(2)?,
        ip: r.try_get(3)?,
        port: u16_of(r.try_get(4)?),
        pid: opt_u32(r.try_get(5)?),
        exe: r.try_get(6)?,
        cmdline: r.try_get(7)?,
        user: r.try_get(8)?,
        client_hosts: r.try_get::<_, i64>(9)? as u64,
        monitors: split_list(r.try_get::<_, Option<String>>(10)?.unwrap_or_default()),
    })
}

fn down_host(r: &Row) -> Result<DownHost, Error> {
    Ok(DownHost {
        host: r.try_get(0)?,
        node: r.try_get(1)?,
        state: r.try_get(2)?,
        since: r.try_get::<_, i64>(3)? as u64,
        last_event: r.try_get(4)?,
    })
}

impl Store {
    /// Every node's stored check set.
    pub fn check_sets(&self) -> Result<Vec<CheckSetRecord>, StoreError> {
        let rows = self.rows(
            "reading check sets",
            "SELECT node, epoch, checks::text FROM check_sets ORDER BY node",
            &[],
            |r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    r.try_get::<_, i64>(1)?,
                    r.try_get::<_, String>(2)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(node, epoch, checks)| {
                Ok(CheckSetRecord {
                    node: node_id("check_sets", &node)?,
                    epoch: epoch as u64,
                    checks: serde_json::from_str(&checks).map_err(|e| StoreError::Corrupt {
                        table: "check_sets",
                        detail: format!("checks of {node}: {e}"),
                    })?,
                    monitors: Vec::new(),
                })
            })
            .collect()
    }

    /// Every hand-set check, by node and name.
    pub fn manual_checks(&self) -> Result<Vec<ManualCheck>, StoreError> {
        let rows = self.rows(
            "reading hand-set checks",
            "SELECT node, name, spec::text, added_at FROM manual_checks ORDER BY node, name",
            &[],
            |r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    r.try_get::<_, String>(1)?,
                    r.try_get::<_, String>(2)?,
                    r.try_get::<_, i64>(3)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(node, name, spec, added_at)| {
                Ok(ManualCheck {
                    node: node_id("manual_checks", &node)?,
                    check: serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                        table: "manual_checks",
                        detail: format!("check {name} of {node}: {e}"),
                    })?,
                    added_at: added_at as u64,
                })
            })
            .collect()
    }

    /// Every remembered service, by node.
    pub fn remembered_services(
        &self,
    ) -> Result<BTreeMap<NodeId, Vec<RememberedService>>, StoreError> {
        let rows = self.rows(
            "reading remembered services",
            "SELECT node, listener::text FROM remembered_services ORDER BY node, port",
            &[],
            |r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)),
        )?;
        let mut out: BTreeMap<NodeId, Vec<RememberedService>> = BTreeMap::new();
        for (node, listener) in rows {
            let id = node_id("remembered_services", &node)?;
            let r = serde_json::from_str(&listener).map_err(|e| StoreError::Corrupt {
                table: "remembered_services",
                detail: format!("listener of {node}: {e}"),
            })?;
            out.entry(id).or_default().push(r);
        }
        Ok(out)
    }

    /// Every stored check state.
    pub fn service_states(&self) -> Result<Vec<ServiceStateRecord>, StoreError> {
        let rows = self.rows(
            "reading service states",
            "SELECT node, check_name, state, output, perfdata, flapping, since, updated_at
             FROM service_states ORDER BY node, check_name",
            &[],
            |r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    ServiceStateRecord {
                        node: NodeId([0; 16]),
                        check: r.try_get(1)?,
                        state: r.try_get(2)?,
                        output: r.try_get(3)?,
                        perfdata: r.try_get(4)?,
                        flapping: r.try_get(5)?,
                        since: r.try_get::<_, i64>(6)? as u64,
                        updated_at: r.try_get::<_, i64>(7)? as u64,
                    },
                ))
            },
        )?;
        rows.into_iter()
            .map(|(node, s)| {
                Ok(ServiceStateRecord { node: node_id("service_states", &node)?, ..s })
            })
            .collect()
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

    /// Every node's stored wiring, by node id.
    pub fn wiring(&self) -> Result<Vec<NodeWiring>, StoreError> {
        let rows = self.rows(
            "reading wiring",
            "SELECT node, wiring::text, inputs::text FROM node_wiring ORDER BY node",
            &[],
            |r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    r.try_get::<_, String>(1)?,
                    r.try_get::<_, String>(2)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(node, wiring, inputs)| {
                let corrupt = |detail: String| StoreError::Corrupt { table: "node_wiring", detail };
                Ok(NodeWiring {
                    node: node_id("node_wiring", &node)?,
                    wiring: serde_json::from_str(&wiring)
                        .map_err(|e| corrupt(format!("wiring of {node}: {e}")))?,
                    inputs: serde_json::from_str(&inputs)
                        .map_err(|e| corrupt(format!("inputs of {node}: {e}")))?,
                })
            })
            .collect()
    }

    /// Every stored ring, by key.
    pub fn rings(&self) -> Result<Vec<RingRecord>, StoreError> {
        let rows = self.rows(
            "reading rings",
            "SELECT key, kind, members::text, representatives::text, watchers::text FROM rings
             ORDER BY key",
            &[],
            |r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    r.try_get::<_, String>(1)?,
                    r.try_get::<_, String>(2)?,
                    r.try_get::<_, String>(3)?,
                    r.try_get::<_, String>(4)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for (key, kind, members, reps, watchers) in rows {
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

    /// Finds a node by host name or node id; of several with one host name, the most recently
    /// registered.
    pub fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, StoreError> {
        self.row(
            "resolving a host",
            "SELECT id, hostname, state FROM nodes WHERE id = $1 OR hostname = $1
             ORDER BY id = $1 DESC, registered_at DESC LIMIT 1",
            &[&t(name)],
            |r| Ok(HostRef { node: r.try_get(0)?, hostname: r.try_get(1)?, state: r.try_get(2)? }),
        )
    }

    /// Hosts not running: crashed and, unless `crashed_only`, those that said goodbye.
    pub fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, StoreError> {
        let states = if crashed_only { "('down')" } else { "('down', 'left')" };
        self.rows(
            "reading down hosts",
            &format!(
                "SELECT n.hostname, n.id, n.state, n.since,
                   (SELECT e.text FROM events e WHERE e.host = n.id
                      AND e.kind IN ('host.down', 'host.left') ORDER BY e.id DESC LIMIT 1)
                 FROM nodes n WHERE n.state IN {states} ORDER BY n.since DESC, n.hostname"
            ),
            &[],
            down_host,
        )
    }

    /// Hosts in state `unreachable`, newest first, with the text of the event that made them so.
    pub fn unreachable_hosts(&self) -> Result<Vec<DownHost>, StoreError> {
        self.rows(
            "reading unreachable hosts",
            "SELECT n.hostname, n.id, n.state, n.since,
               (SELECT e.text FROM events e WHERE e.host = n.id
                  AND e.kind IN ('host.unreachable', 'switch.down', 'switch.unreachable')
                  ORDER BY e.id DESC LIMIT 1)
             FROM nodes n WHERE n.state = 'unreachable' ORDER BY n.since DESC, n.hostname",
            &[],
            down_host,
        )
    }

    /// Every ring as `assim rings` shows it.
    pub fn ring_views(&self) -> Result<Vec<RingView>, StoreError> {
        let rings = self.ring_descs()?;
        let listed: usize = rings
            .iter()
            .map(|r| r.members.len() + r.representatives.len() + r.watchers.len())
            .sum();
        if listed > assim_store::MAX_ANSWER_ROWS {
            return Err(StoreError::TooLarge);
        }
        // Every node's name and state: streamed, and not bounded by the answer's rows (the
        // answer is, above), as on SQLite.
        let nodes: HashMap<NodeId, (String, String)> = self.with_conn(|c| {
            use postgres::fallible_iterator::FallibleIterator as _;
            let e = crate::pg("reading nodes");
            let s = crate::prepare(c, "SELECT id, hostname, state FROM nodes").map_err(&e)?;
            let mut it = c.client.query_raw(&s, std::iter::empty::<&str>()).map_err(&e)?;
            let mut out = HashMap::new();
            while let Some(r) = it.next().map_err(&e)? {
                let (id, host, state): (String, String, String) = (
                    r.try_get(0).map_err(&e)?,
                    r.try_get(1).map_err(&e)?,
                    r.try_get(2).map_err(&e)?,
                );
                if let Ok(id) = id.parse() {
                    out.insert(id, (host, state));
                }
            }
            Ok(out)
        })?;
        let names: HashMap<String, String> = self
            .rows(
                "reading switches",
                "SELECT chassis_id, system_name FROM topo_switches WHERE system_name IS NOT NULL",
                &[],
                |r| Ok((r.try_get(0)?, r.try_get(1)?)),
            )?
            .into_iter()
            .collect();
        Ok(ring_views(rings, &nodes, &names))
    }

    fn ring_descs(&self) -> Result<Vec<RingDesc>, StoreError> {
        let rings = self.rings()?;
        if !rings.is_empty() {
            return Ok(rings.into_iter().map(RingDesc::from).collect());
        }
        let Some(text) = self.meta("ring")? else { return Ok(Vec::new()) };
        let members: Vec<NodeId> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt { table: "meta", detail: format!("ring: {e}") })?;
        Ok(if members.is_empty() { Vec::new() } else { vec![RingDesc::all(members)] })
    }

    /// Switches with the hosts behind them: all, or those whose chassis id or name is `switch`.
    pub fn switch_views(&self, switch: Option<&str>) -> Result<Vec<SwitchView>, StoreError> {
        let switch = switch.map(t);
        let mut switches: Vec<SwitchView> = self.rows(
            "reading switches",
            &format!(
                "SELECT chassis_id, system_name, system_description, platform,
                        management_addresses, last_seen
                 FROM topo_switches
                 WHERE $1::text IS NULL OR chassis_id = $1 OR system_name = $1
                 ORDER BY chassis_id LIMIT {MAX_SWITCHES}"
            ),
            &[&switch],
            |r| {
                Ok(SwitchView {
                    chassis_id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    description: r.try_get(2)?,
                    platform: r.try_get(3)?,
                    management_addresses: split_list(r.try_get(4)?),
                    last_seen: r.try_get::<_, i64>(5)? as u64,
                    state: None,
                    ring: None,
                    hosts: Vec::new(),
                })
            },
        )?;
        let mut listed = 0;
        for sw in &mut switches {
            let key = RingKey::switch(&sw.chassis_id).0;
            sw.hosts = self.switch_hosts(&sw.chassis_id, &key)?;
            listed += sw.hosts.len() + 1;
            if listed > assim_store::MAX_ANSWER_ROWS {
                return Err(StoreError::TooLarge);
            }
            let ring_stored = self
                .row("reading rings", "SELECT 1 FROM rings WHERE key = $1", &[&key], |_| Ok(()))?
                .is_some();
            sw.ring = ring_stored.then(|| key.clone());
            sw.state = self
                .row(
                    "reading switch events",
                    "SELECT kind FROM events WHERE host IS NULL
                       AND kind IN ('switch.down', 'switch.unreachable', 'switch.up')
                       AND tags->>'ring' = $1
                     ORDER BY id DESC LIMIT 1",
                    &[&key],
                    |r| r.try_get::<_, String>(0),
                )?
                .map(|k| k.trim_start_matches("switch.").to_string());
        }
        Ok(switches)
    }

    fn switch_hosts(&self, chassis: &str, ring: &str) -> Result<Vec<SwitchHost>, StoreError> {
        let rows = self.rows(
            "reading switch hosts",
            "SELECT n.hostname, w.node, n.state, w.nic, w.port_id, p.description, w.protocol,
                    nw.ring = $2
             FROM topo_wiring w JOIN nodes n ON n.id = w.node
             LEFT JOIN topo_switch_ports p ON p.chassis_id = w.chassis_id
                  AND p.port_id = w.port_id
             LEFT JOIN node_wiring nw ON nw.node = w.node
             WHERE w.chassis_id = $1
             ORDER BY n.hostname, w.node, w.nic, w.port_id, w.protocol",
            &[&chassis, &ring],
            |r| {
                Ok(SwitchHost {
                    host: r.try_get(0)?,
                    node: r.try_get(1)?,
                    state: r.try_get(2)?,
                    nic: r.try_get(3)?,
                    port_id: r.try_get(4)?,
                    port_description: r.try_get(5)?,
                    protocol: r.try_get(6)?,
                    in_ring: r.try_get::<_, Option<bool>>(7)?.unwrap_or(false),
                })
            },
        )?;
        let mut merged: BTreeMap<(String, String, String, String), SwitchHost> = BTreeMap::new();
        for h in rows {
            let key = (h.host.clone(), h.node.clone(), h.nic.clone(), h.port_id.clone());
            match merged.get_mut(&key) {
                Some(m) => {
                    m.protocol = format!("{},{}", m.protocol, h.protocol);
                    if m.port_description.is_none() {
                        m.port_description = h.port_description;
                    }
                }
                None => {
                    merged.insert(key, h);
                }
            }
        }
        Ok(merged.into_values().collect())
    }

    /// The listening sockets of one node, by protocol and port.
    pub fn host_services(&self, node: &str) -> Result<Vec<Service>, StoreError> {
        self.rows(
            "reading services",
            &format!("{SERVICE_COLUMNS} WHERE s.node = $1 ORDER BY s.protocol, s.port, s.ip"),
            &[&t(node)],
            service,
        )
    }

    /// What `node` depends on: its edges as a client.
    pub fn dependencies(&self, node: &str) -> Result<Vec<Dependency>, StoreError> {
        self.rows(
            "reading dependencies",
            &format!("{DEP_COLUMNS} WHERE d.client_node = $1 ORDER BY 6, d.port, d.server_ip"),
            &[&t(node)],
            dependency,
        )
    }

    /// Who depends on `node`: its edges as a server.
    pub fn dependents(&self, node: &str) -> Result<Vec<Dependency>, StoreError> {
        self.rows(
            "reading dependents",
            &format!("{DEP_COLUMNS} WHERE d.server_node = $1 ORDER BY d.port, 1, d.client_exe"),
            &[&t(node)],
            dependency,
        )
    }

    /// Every edge.
    pub fn all_dependencies(&self) -> Result<Vec<Dependency>, StoreError> {
        self.rows(
            "reading dependencies",
            &format!("{DEP_COLUMNS} ORDER BY 1, 6, d.port"),
            &[],
            dependency,
        )
    }

    /// Where an address is configured, and which hosts have it in their ARP cache.
    pub fn find_ip(&self, ip: IpAddr) -> Result<Vec<IpSighting>, StoreError> {
        let ip = canonical_ip(ip).to_string();
        let mut out = self.rows(
            "finding an address",
            "SELECT i.ip, n.hostname, i.node, i.nic, k.mac, i.prefix_len, i.subnet
             FROM topo_ips i JOIN nodes n ON n.id = i.node
             LEFT JOIN topo_nics k ON k.node = i.node AND k.name = i.nic
             WHERE i.ip = $1 ORDER BY n.hostname, i.nic",
            &[&ip],
            |r| {
                Ok(IpSighting {
                    ip: r.try_get(0)?,
                    how: "address".into(),
                    host: r.try_get(1)?,
                    node: r.try_get(2)?,
                    interface: r.try_get(3)?,
                    mac: r.try_get(4)?,
                    prefix_len: Some(r.try_get::<_, i64>(5)? as u8),
                    subnet: Some(r.try_get(6)?),
                })
            },
        )?;
        out.extend(self.rows(
            "finding an address",
            "SELECT a.ip, n.hostname, a.node, a.interface, a.mac
             FROM topo_arp a JOIN nodes n ON n.id = a.node WHERE a.ip = $1
             ORDER BY n.hostname, a.interface",
            &[&ip],
            |r| {
                Ok(IpSighting {
                    ip: r.try_get(0)?,
                    how: "arp".into(),
                    host: r.try_get(1)?,
                    node: r.try_get(2)?,
                    interface: r.try_get(3)?,
                    mac: r.try_get(4)?,
                    prefix_len: None,
                    subnet: None,
                })
            },
        )?);
        Ok(out)
    }

    /// Where a MAC is: a host NIC, ARP caches, a switch chassis (`mac` normalised).
    pub fn find_mac(&self, mac: &str) -> Result<Vec<MacSighting>, StoreError> {
        let mac = t(mac);
        let mut out = self.rows(
            "finding a MAC",
            "SELECT k.mac, n.hostname, k.node, k.name,
               (SELECT string_agg(i.ip || '/' || i.prefix_len, ', ' ORDER BY i.ip)
                FROM topo_ips i WHERE i.node = k.node AND i.nic = k.name)
             FROM topo_nics k JOIN nodes n ON n.id = k.node WHERE k.mac = $1
             ORDER BY n.hostname, k.name",
            &[&mac],
            |r| {
                Ok(MacSighting {
                    mac: r.try_get(0)?,
                    how: "nic".into(),
                    host: Some(r.try_get(1)?),
                    node: Some(r.try_get(2)?),
                    interface: Some(r.try_get(3)?),
                    detail: r.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
                })
            },
        )?;
        out.extend(self.rows(
            "finding a MAC",
            "SELECT a.mac, n.hostname, a.node, a.interface, a.ip
             FROM topo_arp a JOIN nodes n ON n.id = a.node WHERE a.mac = $1
             ORDER BY n.hostname, a.interface",
            &[&mac],
            |r| {
                Ok(MacSighting {
                    mac: r.try_get(0)?,
                    how: "arp".into(),
                    host: Some(r.try_get(1)?),
                    node: Some(r.try_get(2)?),
                    interface: Some(r.try_get(3)?),
                    detail: r.try_get(4)?,
                })
            },
        )?);
        out.extend(self.rows(
            "finding a MAC",
            "SELECT chassis_id, system_name FROM topo_switches WHERE lower(chassis_id) = $1",
            &[&mac],
            |r| {
                Ok(MacSighting {
                    mac: r.try_get(0)?,
                    how: "switch".into(),
                    host: None,
                    node: None,
                    interface: None,
                    detail: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                })
            },
        )?);
        Ok(out)
    }

    /// Host NICs and the switch ports they are wired to; one node or all.
    pub fn switch_ports(&self, node: Option<&str>) -> Result<Vec<SwitchPortLink>, StoreError> {
        self.rows(
            "reading switch ports",
            "SELECT n.hostname, w.node, w.nic, w.mac, w.protocol, w.chassis_id, s.system_name,
                    s.system_description, s.platform, s.management_addresses, w.port_id,
                    p.description, p.vlan, s.last_seen
             FROM topo_wiring w JOIN nodes n ON n.id = w.node
             LEFT JOIN topo_switches s ON s.chassis_id = w.chassis_id
             LEFT JOIN topo_switch_ports p ON p.chassis_id = w.chassis_id
                  AND p.port_id = w.port_id
             WHERE $1::text IS NULL OR w.node = $1
             ORDER BY n.hostname, w.nic, w.protocol, w.chassis_id",
            &[&node.map(t)],
            |r| {
                Ok(SwitchPortLink {
                    host: r.try_get(0)?,
                    node: r.try_get(1)?,
                    nic: r.try_get(2)?,
                    mac: r.try_get(3)?,
                    protocol: r.try_get(4)?,
                    chassis_id: r.try_get(5)?,
                    switch_name: r.try_get(6)?,
                    switch_description: r.try_get(7)?,
                    platform: r.try_get(8)?,
                    management_addresses: split_list(
                        r.try_get::<_, Option<String>>(9)?.unwrap_or_default(),
                    ),
                    port_id: r.try_get(10)?,
                    port_description: r.try_get(11)?,
                    vlan: r.try_get(12)?,
                    last_seen: r.try_get::<_, Option<i64>>(13)?.unwrap_or(0) as u64,
                })
            },
        )
    }

    /// Services reachable from other hosts that no check watches.
    pub fn unmonitored_services(&self) -> Result<Vec<Service>, StoreError> {
        self.rows(
            "reading unmonitored services",
            &format!(
                "{SERVICE_COLUMNS}
                 LEFT JOIN monitors m ON m.node = s.node AND m.protocol = s.protocol
                      AND m.port = s.port AND (m.service_ip IS NULL OR m.service_ip = s.ip)
                 WHERE NOT s.loopback AND m.node IS NULL
                 ORDER BY n.hostname, s.protocol, s.port, s.ip"
            ),
            &[],
            service,
        )
    }

    /// Replaces the checks recorded for `node` (its own transaction).
    pub fn set_monitors(
        &mut self,
        node: &str,
        monitors: &[MonitorRecord],
    ) -> Result<(), StoreError> {
        let what = "writing monitors";
        self.transaction(what, |tx| replace_monitors(tx, node, monitors).map_err(crate::pg(what)))
    }

    /// Installed packages matching `pattern`, with the hosts and versions, by name then host.
    pub fn search_packages(
        &self,
        pattern: PackagePattern<'_>,
    ) -> Result<Vec<PackageHit>, StoreError> {
        const COLS: &str = "SELECT p.name, p.version, p.arch, p.manager, n.hostname, p.node
                            FROM topo_packages p JOIN nodes n ON n.id = p.node";
        let hit = |r: &Row| {
            Ok(PackageHit {
                name: r.try_get(0)?,
                version: r.try_get(1)?,
                arch: r.try_get(2)?,
                manager: r.try_get(3)?,
                host: r.try_get(4)?,
                node: r.try_get(5)?,
            })
        };
        let order = "ORDER BY p.name, n.hostname, p.version, p.arch";
        let what = "searching packages";
        match pattern {
            PackagePattern::Exact(name) => {
                self.rows(what, &format!("{COLS} WHERE p.name = $1 {order}"), &[&t(name)], hit)
            }
            PackagePattern::Prefix(prefix) => {
                // A range on the name index (byte order, collation "C").
                let upper = format!("{prefix}\u{10FFFF}");
                self.rows(
                    what,
                    &format!("{COLS} WHERE p.name >= $1 AND p.name < $2 {order}"),
                    &[&t(prefix), &t(&upper)],
                    hit,
                )
            }
            PackagePattern::Regex(re) => {
                // Matched here with the caller's compiled regex (PostgreSQL's regex dialect
                // differs), name by name as on SQLite.
                let names: Vec<String> = self.rows(
                    what,
                    "SELECT DISTINCT name FROM topo_packages ORDER BY name",
                    &[],
                    |r| r.try_get(0),
                )?;
                let mut out = Vec::new();
                for name in names.iter().filter(|n| re.is_match(n)) {
                    out.extend(self.rows(
                        what,
                        &format!("{COLS} WHERE p.name = $1 {order}"),
                        &[name],
                        hit,
                    )?);
                    if out.len() > assim_store::MAX_ANSWER_ROWS {
                        return Err(StoreError::TooLarge);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Addresses in some host's ARP cache that are configured on no known host.
    pub fn unknown_ips(&self) -> Result<Vec<UnknownIp>, StoreError> {
        let mut out = self.rows(
            "reading unknown addresses",
            "SELECT a.ip, a.mac, n.hostname, a.node, a.interface
             FROM topo_arp a JOIN nodes n ON n.id = a.node
             WHERE NOT EXISTS (SELECT 1 FROM topo_ips i WHERE i.ip = a.ip)",
            &[],
            |r| {
                Ok(UnknownIp {
                    ip: r.try_get(0)?,
                    mac: r.try_get(1)?,
                    seen_by: r.try_get(2)?,
                    node: r.try_get(3)?,
                    interface: r.try_get(4)?,
                })
            },
        )?;
        out.sort_by(|a, b| (ip_key(&a.ip), &a.seen_by).cmp(&(ip_key(&b.ip), &b.seen_by)));
        Ok(out)
    }

    /// Subnets with the number of hosts that have an address in them (loopback left out).
    pub fn subnets(&self) -> Result<Vec<Subnet>, StoreError> {
        let mut out = self.rows(
            "reading subnets",
            "SELECT subnet, family, hosts, addresses FROM topo_subnets",
            &[],
            |r| {
                Ok(Subnet {
                    subnet: r.try_get(0)?,
                    family: r.try_get::<_, i64>(1)? as u8,
                    hosts: r.try_get::<_, i64>(2)? as u64,
                    addresses: r.try_get::<_, i64>(3)? as u64,
                })
            },
        )?;
        let key = |s: &Subnet| {
            let (ip, len) = s.subnet.split_once('/').unwrap_or((&s.subnet, "0"));
            (ip_key(ip), len.parse::<u8>().unwrap_or(0))
        };
        out.sort_by_key(key);
        Ok(out)
    }

    /// The newest `limit` changes of the graph, of one node or all, newest first.
    pub fn topology_history(
        &self,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.rows(
            "reading the topology history",
            "SELECT h.id, h.time, COALESCE(n.hostname, h.node), h.node, h.collector, h.kind,
                    h.added, h.removed, h.detail::text
             FROM topo_history h LEFT JOIN nodes n ON n.id = h.node
             WHERE $1::text IS NULL OR h.node = $1 ORDER BY h.id DESC LIMIT $2",
            &[&node.map(t), &(limit.min(i64::MAX as usize) as i64)],
            |r| {
                let detail: String = r.try_get(8)?;
                Ok(HistoryEntry {
                    id: r.try_get::<_, i64>(0)? as u64,
                    time: r.try_get::<_, i64>(1)? as u64,
                    host: r.try_get(2)?,
                    node: r.try_get(3)?,
                    collector: r.try_get(4)?,
                    kind: r.try_get(5)?,
                    added: r.try_get::<_, i64>(6)? as u64,
                    removed: r.try_get::<_, i64>(7)? as u64,
                    added_labels: labels(&detail, "added"),
                    removed_labels: labels(&detail, "removed"),
                })
            },
        )
    }
}

/// Status, discovery, services and the topology graph, read from PostgreSQL.
impl Queries for Store {
    fn nodes(&self) -> Result<Vec<NodeView>, QueryError> {
        Ok(NodeView::list(Store::nodes(self)?))
    }
    fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryView>, QueryError> {
        Ok(Store::discovery(self, node)?.into_iter().map(discovery_view).collect())
    }
    fn latest_discovery(&self, names: &[&str]) -> Result<Vec<(String, DiscoveryView)>, QueryError> {
        let mut out = Vec::new();
        for name in names {
            for d in Store::discovery_named(self, name)? {
                out.push((d.node.to_string(), discovery_view(d)));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        Ok(out)
    }
    fn services(
        &self,
        host: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<ServiceView>, QueryError> {
        Ok(Store::services(self, host, state)?)
    }
    fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, QueryError> {
        Ok(Store::resolve_host(self, name)?)
    }
    fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, QueryError> {
        Ok(Store::down_hosts(self, crashed_only)?)
    }
    fn unreachable_hosts(&self) -> Result<Vec<DownHost>, QueryError> {
        Ok(Store::unreachable_hosts(self)?)
    }
    fn rings(&self) -> Result<Vec<RingView>, QueryError> {
        Ok(Store::ring_views(self)?)
    }
    fn switches(&self, switch: Option<&str>) -> Result<Vec<SwitchView>, QueryError> {
        Ok(Store::switch_views(self, switch)?)
    }
    fn host_services(&self, node: &str) -> Result<Vec<Service>, QueryError> {
        Ok(Store::host_services(self, node)?)
    }
    fn dependencies(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        Ok(Store::dependencies(self, node)?)
    }
    fn dependents(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        Ok(Store::dependents(self, node)?)
    }
    fn all_dependencies(&self) -> Result<Vec<Dependency>, QueryError> {
        Ok(Store::all_dependencies(self)?)
    }
    fn find_ip(&self, ip: IpAddr) -> Result<Vec<IpSighting>, QueryError> {
        Ok(Store::find_ip(self, ip)?)
    }
    fn find_mac(&self, mac: &str) -> Result<Vec<MacSighting>, QueryError> {
        Ok(Store::find_mac(self, mac)?)
    }
    fn switch_ports(&self, node: Option<&str>) -> Result<Vec<SwitchPortLink>, QueryError> {
        Ok(Store::switch_ports(self, node)?)
    }
    fn unmonitored_services(&self) -> Result<Vec<Service>, QueryError> {
        Ok(Store::unmonitored_services(self)?)
    }
    fn search_packages(&self, pattern: PackagePattern<'_>) -> Result<Vec<PackageHit>, QueryError> {
        Ok(Store::search_packages(self, pattern)?)
    }
    fn unknown_ips(&self) -> Result<Vec<UnknownIp>, QueryError> {
        Ok(Store::unknown_ips(self)?)
    }
    fn subnets(&self) -> Result<Vec<Subnet>, QueryError> {
        Ok(Store::subnets(self)?)
    }
    fn topology_history(
        &self,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, QueryError> {
        Ok(Store::topology_history(self, node, limit)?)
    }
}

/// Opens a new connection, on a thread of its own ([`crate::Handle`]), for every read handle
/// asked for.
pub fn queries_opener(conninfo: String) -> OpenQueries {
    std::sync::Arc::new(move || {
        let store = crate::Handle::open(&conninfo)?;
        Ok(Box::new(store) as Box<dyn Queries>)
    })
}
