//! The canned topology queries, as [`Store`] methods returning the `assim-api` row types; the
//! `assim_store::Queries` impl ([`crate::queries`]) hands them to the HTTP API, which serves
//! them under `/api/v1/topology/…`, and `assim` prints them as tables or JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rusqlite::{Connection, OptionalExtension, Row as SqlRow, params};

use crate::{Store, StoreError};

pub use assim_api::topology::{
    Dependency, DownHost, HistoryEntry, IpSighting, MacSighting, PackageHit, Service, Subnet,
    SwitchPortLink, UnknownIp,
};
pub use assim_store::queries::{HostRef, PackagePattern, normalize_mac};
pub use assim_store::services::MonitorRecord;

/// Replaces the monitors of `node` (for use inside a caller's transaction).
pub fn replace_monitors(
    conn: &Connection,
    node: &str,
    monitors: &[MonitorRecord],
) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM monitors WHERE node = ?1")?.execute([node])?;
    let mut put = conn.prepare_cached(
        "INSERT OR IGNORE INTO monitors (node, protocol, service_ip, port, check_name)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for m in monitors {
        put.execute(params![
            node,
            m.protocol,
            m.service_ip.map(|ip| super::derive::canonical_ip(ip).to_string()),
            m.port,
            m.check_name
        ])?;
    }
    Ok(())
}

fn ip_key(s: &str) -> (u8, Option<IpAddr>, String) {
    match s.parse::<IpAddr>() {
        Ok(ip) => (if ip.is_ipv4() { 0 } else { 1 }, Some(ip), String::new()),
        Err(_) => (2, None, s.to_string()),
    }
}

pub(crate) fn split_list(s: String) -> Vec<String> {
    s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()
}

fn labels(detail: &str, key: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(detail)
        .ok()
        .and_then(|v| v.get(key).cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

const DEP_COLUMNS: &str = "
    SELECT COALESCE(cn.hostname, d.client_node), d.client_node, COALESCE(cn.state, '?'),
           d.client_pid, d.client_exe, COALESCE(sn.hostname, d.server_node), d.server_node,
           COALESCE(sn.state, '?'), d.server_ip, d.port, d.service_ip, d.server_pid,
           d.server_exe, d.connections
    FROM topo_deps d LEFT JOIN nodes cn ON cn.id = d.client_node
    LEFT JOIN nodes sn ON sn.id = d.server_node";

fn dependency(r: &SqlRow<'_>) -> rusqlite::Result<Dependency> {
    Ok(Dependency {
        client_host: r.get(0)?,
        client_node: r.get(1)?,
        client_state: r.get(2)?,
        client_pid: r.get(3)?,
        client_exe: r.get(4)?,
        server_host: r.get(5)?,
        server_node: r.get(6)?,
        server_state: r.get(7)?,
        server_ip: r.get(8)?,
        port: r.get(9)?,
        service_ip: r.get(10)?,
        server_pid: r.get(11)?,
        server_exe: r.get(12)?,
        connections: r.get::<_, i64>(13)? as u64,
    })
}

const SERVICE_COLUMNS: &str = "
    SELECT n.hostname, s.node, s.protocol, s.ip, s.port, s.pid, s.exe, s.cmdline, s.user,
           (SELECT COUNT(DISTINCT d.client_node) FROM topo_deps d
            WHERE d.server_node = s.node AND d.port = s.port AND d.service_ip = s.ip
              AND s.protocol = 'tcp'),
           (SELECT GROUP_CONCAT(m.check_name, ',') FROM monitors m
            WHERE m.node = s.node AND m.protocol = s.protocol AND m.port = s.port
              AND (m.service_ip IS NULL OR m.service_ip = s.ip))
    FROM topo_services s JOIN nodes n ON n.id = s.node";

fn service(r: &SqlRow<'_>) -> rusqlite::Result<Service> {
    Ok(Service {
        host: r.get(0)?,
        node: r.get(1)?,
        protocol: r.get(2)?,
        ip: r.get(3)?,
        port: r.get(4)?,
        pid: r.get(5)?,
        exe: r.get(6)?,
        cmdline: r.get(7)?,
        user: r.get(8)?,
        client_hosts: r.get::<_, i64>(9)? as u64,
        monitors: split_list(r.get::<_, Option<String>>(10)?.unwrap_or_default()),
    })
}

impl Store {
    pub(crate) fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnMut(&SqlRow<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql(e))?;
        let rows = stmt.query_map(params, f).map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            if out.len() == assim_store::MAX_ANSWER_ROWS {
                return Err(StoreError::TooLarge);
            }
            out.push(row.map_err(|e| self.sql(e))?);
        }
        Ok(out)
    }

    /// Finds a node by host name or node id. Several nodes with one host name: the most recently
    /// registered wins.
    pub fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, hostname, state FROM nodes WHERE id = ?1 OR hostname = ?1
                 ORDER BY id = ?1 DESC, registered_at DESC LIMIT 1",
                [name],
                |r| Ok(HostRef { node: r.get(0)?, hostname: r.get(1)?, state: r.get(2)? }),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Hosts that are not running: crashed (`down`) and, unless `crashed_only`, those that said
    /// goodbye (`left`). Newest first.
    pub fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, StoreError> {
        let states = if crashed_only { "('down')" } else { "('down', 'left')" };
        self.rows(
            &format!(
                "SELECT n.hostname, n.id, n.state, n.since,
                   (SELECT e.text FROM events e WHERE e.host = n.id
                      AND e.kind IN ('host.down', 'host.left') ORDER BY e.id DESC LIMIT 1)
                 FROM nodes n WHERE n.state IN {states} ORDER BY n.since DESC, n.hostname"
            ),
            [],
            |r| {
                Ok(DownHost {
                    host: r.get(0)?,
                    node: r.get(1)?,
                    state: r.get(2)?,
                    since: r.get::<_, i64>(3)? as u64,
                    last_event: r.get(4)?,
                })
            },
        )
    }

    /// The listening sockets of one node, by protocol and port.
    pub fn host_services(&self, node: &str) -> Result<Vec<Service>, StoreError> {
        self.rows(
            &format!("{SERVICE_COLUMNS} WHERE s.node = ?1 ORDER BY s.protocol, s.port, s.ip"),
            [node],
            service,
        )
    }

    /// What `node` depends on: its edges as a client.
    pub fn dependencies(&self, node: &str) -> Result<Vec<Dependency>, StoreError> {
        self.rows(
            &format!("{DEP_COLUMNS} WHERE d.client_node = ?1 ORDER BY 6, d.port, d.server_ip"),
            [node],
            dependency,
        )
    }

    /// Who depends on `node`: its edges as a server.
    pub fn dependents(&self, node: &str) -> Result<Vec<Dependency>, StoreError> {
        self.rows(
            &format!("{DEP_COLUMNS} WHERE d.server_node = ?1 ORDER BY d.port, 1, d.client_exe"),
            [node],
            dependency,
        )
    }

    /// Every edge (for exports and tests).
    pub fn all_dependencies(&self) -> Result<Vec<Dependency>, StoreError> {
        self.rows(&format!("{DEP_COLUMNS} ORDER BY 1, 6, d.port"), [], dependency)
    }

    /// Where an address is configured, and which hosts have it in their ARP cache.
    pub fn find_ip(&self, ip: IpAddr) -> Result<Vec<IpSighting>, StoreError> {
        let ip = super::derive::canonical_ip(ip).to_string();
        let mut out = self.rows(
            "SELECT i.ip, n.hostname, i.node, i.nic, k.mac, i.prefix_len, i.subnet
             FROM topo_ips i JOIN nodes n ON n.id = i.node
             LEFT JOIN topo_nics k ON k.node = i.node AND k.name = i.nic
             WHERE i.ip = ?1 ORDER BY n.hostname, i.nic",
            [&ip],
            |r| {
                Ok(IpSighting {
                    ip: r.get(0)?,
                    how: "address".into(),
                    host: r.get(1)?,
                    node: r.get(2)?,
                    interface: r.get(3)?,
                    mac: r.get(4)?,
                    prefix_len: Some(r.get(5)?),
                    subnet: Some(r.get(6)?),
                })
            },
        )?;
        out.extend(self.rows(
            "SELECT a.ip, n.hostname, a.node, a.interface, a.mac
             FROM topo_arp a JOIN nodes n ON n.id = a.node WHERE a.ip = ?1
             ORDER BY n.hostname, a.interface",
            [&ip],
            |r| {
                Ok(IpSighting {
                    ip: r.get(0)?,
                    how: "arp".into(),
                    host: r.get(1)?,
                    node: r.get(2)?,
                    interface: r.get(3)?,
                    mac: r.get(4)?,
                    prefix_len: None,
                    subnet: None,
                })
            },
        )?);
        Ok(out)
    }

    /// Where a MAC is: a host NIC, ARP caches, a switch chassis. `mac` must be normalised
    /// ([`normalize_mac`]).
    pub fn find_mac(&self, mac: &str) -> Result<Vec<MacSighting>, StoreError> {
        let mut out = self.rows(
            "SELECT k.mac, n.hostname, k.node, k.name,
               (SELECT GROUP_CONCAT(i.ip || '/' || i.prefix_len, ', ') FROM topo_ips i
                WHERE i.node = k.node AND i.nic = k.name)
             FROM topo_nics k JOIN nodes n ON n.id = k.node WHERE k.mac = ?1
             ORDER BY n.hostname, k.name",
            [mac],
            |r| {
                Ok(MacSighting {
                    mac: r.get(0)?,
                    how: "nic".into(),
                    host: Some(r.get(1)?),
                    node: Some(r.get(2)?),
                    interface: Some(r.get(3)?),
                    detail: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                })
            },
        )?;
        out.extend(self.rows(
            "SELECT a.mac, n.hostname, a.node, a.interface, a.ip
             FROM topo_arp a JOIN nodes n ON n.id = a.node WHERE a.mac = ?1
             ORDER BY n.hostname, a.interface",
            [mac],
            |r| {
                Ok(MacSighting {
                    mac: r.get(0)?,
                    how: "arp".into(),
                    host: Some(r.get(1)?),
                    node: Some(r.get(2)?),
                    interface: Some(r.get(3)?),
                    detail: r.get(4)?,
                })
            },
        )?);
        out.extend(self.rows(
            "SELECT chassis_id, system_name FROM topo_switches WHERE lower(chassis_id) = ?1",
            [mac],
            |r| {
                Ok(MacSighting {
                    mac: r.get(0)?,
                    how: "switch".into(),
                    host: None,
                    node: None,
                    interface: None,
                    detail: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                })
            },
        )?);
        Ok(out)
    }

    /// Host NICs and the switch ports they are wired to; one node or all.
    pub fn switch_ports(&self, node: Option<&str>) -> Result<Vec<SwitchPortLink>, StoreError> {
        self.rows(
            "SELECT n.hostname, w.node, w.nic, w.mac, w.protocol, w.chassis_id, s.system_name,
                    s.system_description, s.platform, s.management_addresses, w.port_id,
                    p.description, p.vlan, s.last_seen
             FROM topo_wiring w JOIN nodes n ON n.id = w.node
             LEFT JOIN topo_switches s ON s.chassis_id = w.chassis_id
             LEFT JOIN topo_switch_ports p ON p.chassis_id = w.chassis_id
                  AND p.port_id = w.port_id
             WHERE ?1 IS NULL OR w.node = ?1
             ORDER BY n.hostname, w.nic, w.protocol, w.chassis_id",
            [node],
            |r| {
                Ok(SwitchPortLink {
                    host: r.get(0)?,
                    node: r.get(1)?,
                    nic: r.get(2)?,
                    mac: r.get(3)?,
                    protocol: r.get(4)?,
                    chassis_id: r.get(5)?,
                    switch_name: r.get(6)?,
                    switch_description: r.get(7)?,
                    platform: r.get(8)?,
                    management_addresses: split_list(
                        r.get::<_, Option<String>>(9)?.unwrap_or_default(),
                    ),
                    port_id: r.get(10)?,
                    port_description: r.get(11)?,
                    vlan: r.get(12)?,
                    last_seen: r.get::<_, Option<i64>>(13)?.unwrap_or(0) as u64,
                })
            },
        )
    }

    /// Services reachable from other hosts (not bound to loopback) that no check watches:
    /// the services left-joined with `monitors`, keeping those without a match. A monitor
    /// matches on node, protocol and port, and on the address unless its `service_ip` is NULL.
    pub fn unmonitored_services(&self) -> Result<Vec<Service>, StoreError> {
        self.rows(
            &format!(
                "{SERVICE_COLUMNS}
                 LEFT JOIN monitors m ON m.node = s.node AND m.protocol = s.protocol
                      AND m.port = s.port AND (m.service_ip IS NULL OR m.service_ip = s.ip)
                 WHERE s.loopback = 0 AND m.node IS NULL
                 ORDER BY n.hostname, s.protocol, s.port, s.ip"
            ),
            [],
            service,
        )
    }

    /// Replaces the checks recorded for `node` (its own transaction).
    pub fn set_monitors(
        &mut self,
        node: &str,
        monitors: &[MonitorRecord],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        replace_monitors(&tx, node, monitors).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Installed packages matching `pattern`, with the hosts and versions, by name then host.
    pub fn search_packages(
        &self,
        pattern: PackagePattern<'_>,
    ) -> Result<Vec<PackageHit>, StoreError> {
        const COLS: &str = "SELECT p.name, p.version, p.arch, p.manager, n.hostname, p.node
                            FROM topo_packages p JOIN nodes n ON n.id = p.node";
        let hit = |r: &SqlRow<'_>| {
            Ok(PackageHit {
                name: r.get(0)?,
                version: r.get(1)?,
                arch: r.get(2)?,
                manager: r.get(3)?,
                host: r.get(4)?,
                node: r.get(5)?,
            })
        };
        let order = "ORDER BY p.name, n.hostname, p.version, p.arch";
        match pattern {
            PackagePattern::Exact(name) => {
                self.rows(&format!("{COLS} WHERE p.name = ?1 {order}"), [name], hit)
            }
            PackagePattern::Prefix(prefix) => {
                // A range on the name index: every string starting with `prefix` sorts between
                // it and `prefix` followed by the highest code point.
                let upper = format!("{prefix}\u{10FFFF}");
                self.rows(
                    &format!("{COLS} WHERE p.name >= ?1 AND p.name < ?2 {order}"),
                    params![prefix, upper],
                    hit,
                )
            }
            PackagePattern::Regex(re) => {
                let names: Vec<String> =
                    self.rows("SELECT DISTINCT name FROM topo_packages ORDER BY name", [], |r| {
                        r.get(0)
                    })?;
                let mut out = Vec::new();
                for name in names.iter().filter(|n| re.is_match(n)) {
                    out.extend(self.rows(
                        &format!("{COLS} WHERE p.name = ?1 {order}"),
                        [name],
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
            "SELECT a.ip, a.mac, n.hostname, a.node, a.interface
             FROM topo_arp a JOIN nodes n ON n.id = a.node
             WHERE NOT EXISTS (SELECT 1 FROM topo_ips i WHERE i.ip = a.ip)",
            [],
            |r| {
                Ok(UnknownIp {
                    ip: r.get(0)?,
                    mac: r.get(1)?,
                    seen_by: r.get(2)?,
                    node: r.get(3)?,
                    interface: r.get(4)?,
                })
            },
        )?;
        out.sort_by(|a, b| (ip_key(&a.ip), &a.seen_by).cmp(&(ip_key(&b.ip), &b.seen_by)));
        Ok(out)
    }

    /// Subnets with the number of hosts that have an address in them (loopback left out).
    pub fn subnets(&self) -> Result<Vec<Subnet>, StoreError> {
        let mut out =
            self.rows("SELECT subnet, family, hosts, addresses FROM topo_subnets", [], |r| {
                Ok(Subnet {
                    subnet: r.get(0)?,
                    family: r.get(1)?,
                    hosts: r.get::<_, i64>(2)? as u64,
                    addresses: r.get::<_, i64>(3)? as u64,
                })
            })?;
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
            "SELECT h.id, h.time, COALESCE(n.hostname, h.node), h.node, h.collector, h.kind,
                    h.added, h.removed, h.detail
             FROM topo_history h LEFT JOIN nodes n ON n.id = h.node
             WHERE ?1 IS NULL OR h.node = ?1 ORDER BY h.id DESC LIMIT ?2",
            params![node, limit as i64],
            |r| {
                let detail: String = r.get(8)?;
                Ok(HistoryEntry {
                    id: r.get::<_, i64>(0)? as u64,
                    time: r.get::<_, i64>(1)? as u64,
                    host: r.get(2)?,
                    node: r.get(3)?,
                    collector: r.get(4)?,
                    kind: r.get(5)?,
                    added: r.get::<_, i64>(6)? as u64,
                    removed: r.get::<_, i64>(7)? as u64,
                    added_labels: labels(&detail, "added"),
                    removed_labels: labels(&detail, "removed"),
                })
            },
        )
    }

    /// Row counts per topology table (tests, `/metrics`-style summaries).
    pub fn topology_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for t in [
            "topo_nics",
            "topo_ips",
            "topo_arp",
            "topo_processes",
            "topo_services",
            "topo_connections",
            "topo_deps",
            "topo_packages",
            "topo_ssh_keys",
            "topo_wiring",
            "topo_switches",
            "topo_switch_ports",
            "topo_history",
        ] {
            let n: i64 = self
                .conn
                .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            out.insert(t.to_string(), n as u64);
        }
        Ok(out)
    }
}
