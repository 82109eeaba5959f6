//! The topology graph: hosts, NICs, IPs, subnets, switches and switch ports, processes,
//! services, client → service dependency edges, packages, SSH host keys and a history of
//! changes, derived from the discovery results as they are stored.
//!
//! # How it is kept
//!
//! Every collector result is a full snapshot of one part of one node (see [`derive::Part`]).
//! [`apply_discovery`] runs inside [`crate::Store::apply`]'s transaction, before the raw result
//! is written: it derives the rows of the new payload and of the payload it replaces (pure
//! functions in [`derive`]), replaces the node's rows of that part, and writes one history row
//! per kind of row that changed. An unchanged hash changes nothing. A payload that does not
//! parse leaves the node's rows as they were (the raw result is still stored).
//!
//! Dependency edges (`topo_deps`) are materialised. An edge is an established outbound TCP
//! connection on node A whose remote `ip:port` is a TCP listener of node B ≠ A: B owns the IP
//! (a non-loopback address of one of its NICs) and listens on the port on that IP or on a
//! wildcard (`0.0.0.0` for IPv4, `::` for both families). When A's sockets change, A's edges
//! as client and as server are recomputed; when A's interfaces change, its edges as server.
//! Either host may report first: whichever arrives second completes the edge. Every step
//! goes through indexes on the node, the IP or the port, never over all hosts.
//!
//! Switches and switch ports are shared by the hosts wired to them: they are upserted from each
//! host's `l2neighbors` result and removed when no host is wired to them any more.
//!
//! # Schema (tables owned here; `nodes` and `discovery` belong to the store)
//!
//! | table | key | from |
//! |---|---|---|
//! | `topo_os`, `topo_cpu`, `topo_memory` | node | os, cpu, memory |
//! | `topo_nics` | node, name | interfaces |
//! | `topo_ips` | node, nic, ip | interfaces (with `subnet`, `scope`) |
//! | `topo_arp` | node, interface, ip | neighbours |
//! | `topo_processes` | node, pid | sockets |
//! | `topo_services` | node, protocol, ip, port | sockets |
//! | `topo_connections` | node, local, remote | sockets |
//! | `topo_deps` | client_node, server_node, server_ip, port, client process | derived |
//! | `topo_packages` | node, name, arch, version | packages |
//! | `topo_ssh_keys` | node, fingerprint | ssh_host_keys |
//! | `topo_wiring` | node, nic, protocol, chassis_id, port_id | l2neighbors |
//! | `topo_switches` | chassis_id | l2neighbors (shared) |
//! | `topo_switch_ports` | chassis_id, port_id | l2neighbors (shared) |
//! | `topo_history` | id | every change: node, collector, kind, added, removed, labels |
//! | `monitors` | node, protocol, port, service_ip, check_name | filled by service checks |
//!
//! Views: `topo_hosts` (nodes with their OS, CPU and memory) and `topo_subnets`.
//!
//! Layout:
//! - [`derive`]: JSON → row structs, row labels and diffs (pure, unit-tested).
//! - [`query`]: the canned queries as [`crate::Store`] methods, answering with the
//!   `assim-api` topology rows (served through `assim_store::Queries`, [`crate::queries`]).
//! - [`switches`]: the ring and switch queries (`assim rings`, `assim switch SW`,
//!   `assim hosts --unreachable`).
//! - this file: schema, migration (with a backfill from stored results), writing rows.

pub mod derive;
pub mod query;
pub mod switches;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};

use crate::DiscoveryRecord;
use derive::{Derived, KindDiff, Part};

/// How many labels of one change the history keeps (the counts are always complete).
pub const HISTORY_LABELS: usize = 50;

/// Store schema migration 3: the topology tables (see the module doc), created empty;
/// [`backfill`] then fills them from the stored discovery results.
pub(crate) const MIGRATION_3: &str = "
CREATE TABLE IF NOT EXISTS topo_os (
    node TEXT PRIMARY KEY, os_name TEXT, os_version TEXT, kernel TEXT NOT NULL,
    machine TEXT NOT NULL, fqdn TEXT, machine_id TEXT, virtualisation TEXT NOT NULL,
    boot_time INTEGER
);
CREATE TABLE IF NOT EXISTS topo_cpu (
    node TEXT PRIMARY KEY, model TEXT, logical_cpus INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS topo_memory (
    node TEXT PRIMARY KEY, mem_total_kib INTEGER, swap_total_kib INTEGER
);
CREATE TABLE IF NOT EXISTS topo_nics (
    node TEXT NOT NULL, name TEXT NOT NULL, mac TEXT, mtu INTEGER, speed_mbps INTEGER,
    duplex TEXT, state TEXT,
    PRIMARY KEY (node, name)
);
CREATE INDEX IF NOT EXISTS topo_nics_mac ON topo_nics (mac);
CREATE TABLE IF NOT EXISTS topo_ips (
    node TEXT NOT NULL, nic TEXT NOT NULL, ip TEXT NOT NULL, family INTEGER NOT NULL,
    prefix_len INTEGER NOT NULL, subnet TEXT NOT NULL, scope TEXT NOT NULL,
    PRIMARY KEY (node, nic, ip)
);
CREATE INDEX IF NOT EXISTS topo_ips_ip ON topo_ips (ip);
CREATE INDEX IF NOT EXISTS topo_ips_subnet ON topo_ips (subnet);
CREATE TABLE IF NOT EXISTS topo_arp (
    node TEXT NOT NULL, interface TEXT NOT NULL, ip TEXT NOT NULL, mac TEXT NOT NULL,
    PRIMARY KEY (node, interface, ip)
);
CREATE INDEX IF NOT EXISTS topo_arp_ip ON topo_arp (ip);
CREATE INDEX IF NOT EXISTS topo_arp_mac ON topo_arp (mac);
CREATE TABLE IF NOT EXISTS topo_processes (
    node TEXT NOT NULL, pid INTEGER NOT NULL, exe TEXT, cmdline TEXT NOT NULL, user TEXT,
    PRIMARY KEY (node, pid)
);
CREATE TABLE IF NOT EXISTS topo_services (
    node TEXT NOT NULL, protocol TEXT NOT NULL, ip TEXT NOT NULL, port INTEGER NOT NULL,
    pid INTEGER, exe TEXT, cmdline TEXT NOT NULL, user TEXT, loopback INTEGER NOT NULL,
    PRIMARY KEY (node, protocol, ip, port)
);
CREATE INDEX IF NOT EXISTS topo_services_port ON topo_services (port, protocol);
CREATE TABLE IF NOT EXISTS topo_connections (
    node TEXT NOT NULL, local_ip TEXT NOT NULL, local_port INTEGER NOT NULL,
    remote_ip TEXT NOT NULL, remote_port INTEGER NOT NULL, pid INTEGER, exe TEXT,
    inbound INTEGER NOT NULL,
    PRIMARY KEY (node, local_ip, local_port, remote_ip, remote_port)
);
CREATE INDEX IF NOT EXISTS topo_connections_remote ON topo_connections (remote_ip, remote_port);
CREATE TABLE IF NOT EXISTS topo_deps (
    client_node TEXT NOT NULL, client_pid INTEGER, client_exe TEXT,
    server_node TEXT NOT NULL, server_ip TEXT NOT NULL, port INTEGER NOT NULL,
    service_ip TEXT NOT NULL, server_pid INTEGER, server_exe TEXT,
    connections INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS topo_deps_client ON topo_deps (client_node);
CREATE INDEX IF NOT EXISTS topo_deps_server ON topo_deps (server_node);
CREATE TABLE IF NOT EXISTS topo_packages (
    node TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, arch TEXT NOT NULL,
    manager TEXT NOT NULL,
    PRIMARY KEY (node, name, arch, version)
);
CREATE INDEX IF NOT EXISTS topo_packages_name ON topo_packages (name);
CREATE TABLE IF NOT EXISTS topo_ssh_keys (
    node TEXT NOT NULL, key_type TEXT NOT NULL, fingerprint TEXT NOT NULL, key TEXT NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (node, fingerprint)
);
CREATE INDEX IF NOT EXISTS topo_ssh_keys_fp ON topo_ssh_keys (fingerprint);
CREATE TABLE IF NOT EXISTS topo_wiring (
    node TEXT NOT NULL, nic TEXT NOT NULL, mac TEXT, protocol TEXT NOT NULL,
    chassis_id TEXT NOT NULL, port_id TEXT NOT NULL,
    PRIMARY KEY (node, nic, protocol, chassis_id, port_id)
);
CREATE INDEX IF NOT EXISTS topo_wiring_port ON topo_wiring (chassis_id, port_id);
CREATE TABLE IF NOT EXISTS topo_switches (
    chassis_id TEXT PRIMARY KEY, system_name TEXT, system_description TEXT, platform TEXT,
    capabilities TEXT NOT NULL, management_addresses TEXT NOT NULL, last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS topo_switch_ports (
    chassis_id TEXT NOT NULL, port_id TEXT NOT NULL, description TEXT, vlan TEXT,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (chassis_id, port_id)
);
CREATE TABLE IF NOT EXISTS topo_history (
    id INTEGER PRIMARY KEY, time INTEGER NOT NULL, node TEXT NOT NULL, collector TEXT NOT NULL,
    kind TEXT NOT NULL, added INTEGER NOT NULL, removed INTEGER NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS topo_history_node ON topo_history (node, id);
-- Filled by the service checks: one row per check watching a service. `service_ip` NULL means
-- the check covers the port on every address of the node. See query::MonitorRecord.
CREATE TABLE IF NOT EXISTS monitors (
    node TEXT NOT NULL, protocol TEXT NOT NULL DEFAULT 'tcp', service_ip TEXT,
    port INTEGER NOT NULL, check_name TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS monitors_key
    ON monitors (node, protocol, port, COALESCE(service_ip, ''), check_name);
CREATE INDEX IF NOT EXISTS events_host ON events (host, id);
CREATE VIEW IF NOT EXISTS topo_hosts AS
    SELECT n.id AS node, n.hostname, n.state, n.since, o.os_name, o.os_version, o.kernel,
           o.machine, o.fqdn, o.machine_id, o.virtualisation, o.boot_time, c.model AS cpu_model,
           c.logical_cpus, m.mem_total_kib
    FROM nodes n LEFT JOIN topo_os o ON o.node = n.id LEFT JOIN topo_cpu c ON c.node = n.id
    LEFT JOIN topo_memory m ON m.node = n.id;
CREATE VIEW IF NOT EXISTS topo_subnets AS
    SELECT subnet, family, COUNT(DISTINCT node) AS hosts, COUNT(*) AS addresses
    FROM topo_ips WHERE scope != 'host' GROUP BY subnet, family;
";

/// Fills the topology tables from the stored discovery results: one pass over all of them, in
/// the migration's transaction, once per database.
pub(crate) fn backfill(tx: &Connection) -> rusqlite::Result<()> {
    let results: Vec<(String, String, String, i64)> = {
        let mut stmt = tx.prepare("SELECT node, name, payload, updated_at FROM discovery")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?
    };
    let mut nodes = BTreeSet::new();
    for (node, name, payload, updated_at) in &results {
        let Some(part) = Part::of(name) else { continue };
        let Ok(rows) = derive::derive(name, payload) else { continue };
        write_part(tx, node, part, &rows, *updated_at)?;
        nodes.insert(node.clone());
    }
    for node in &nodes {
        recompute_deps(tx, node, true, true)?;
    }
    Ok(())
}

/// Updates the graph for one discovery result; call it inside the store's transaction, before
/// the result itself replaces the previous one in `discovery`.
pub(crate) fn apply_discovery(tx: &Connection, d: &DiscoveryRecord) -> rusqlite::Result<()> {
    let Some(part) = Part::of(&d.name) else { return Ok(()) };
    let node = d.node.to_string();
    let previous: Option<(String, String)> = tx
        .prepare_cached("SELECT hash, payload FROM discovery WHERE node = ?1 AND name = ?2")?
        .query_row(params![node, d.name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if previous.as_ref().is_some_and(|(hash, _)| *hash == d.hash) {
        return Ok(());
    }
    let Ok(new) = derive::derive(&d.name, &d.payload) else {
        // Keep the node's rows as they were; the raw result is still stored for inspection.
        return Ok(());
    };
    let old = previous
        .and_then(|(_, payload)| derive::derive(&d.name, &payload).ok())
        .unwrap_or_default();
    let now = d.updated_at as i64;
    let mut changes = new.diff(&old, part);
    let (client, server) = match part {
        Part::Sockets => (true, true),
        Part::Interfaces => (false, true),
        _ => (false, false),
    };
    let deps_before = if client || server { dep_labels(tx, &node)? } else { BTreeSet::new() };
    write_part(tx, &node, part, &new, now)?;
    if client || server {
        recompute_deps(tx, &node, client, server)?;
        let after = dep_labels(tx, &node)?;
        let change = KindDiff {
            kind: "dependency",
            added: after.difference(&deps_before).cloned().collect(),
            removed: deps_before.difference(&after).cloned().collect(),
        };
        if !change.added.is_empty() || !change.removed.is_empty() {
            changes.push(change);
        }
    }
    let mut put = tx.prepare_cached(
        "INSERT INTO topo_history (time, node, collector, kind, added, removed, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for c in changes {
        let detail = serde_json::json!({
            "added": c.added.iter().take(HISTORY_LABELS).collect::<Vec<_>>(),
            "removed": c.removed.iter().take(HISTORY_LABELS).collect::<Vec<_>>(),
        });
        put.execute(params![
            now,
            node,
            d.name,
            c.kind,
            c.added.len() as i64,
            c.removed.len() as i64,
            detail.to_string()
        ])?;
    }
    Ok(())
}

fn opt_u32(v: Option<u32>) -> Option<i64> {
    v.map(i64::from)
}

/// Deletes a node's rows of `table` and inserts `rows` with `insert`.
fn replace<T>(
    tx: &Connection,
    node: &str,
    table: &str,
    rows: &[T],
    insert_sql: &str,
    mut bind: impl FnMut(&mut rusqlite::CachedStatement<'_>, &str, &T) -> rusqlite::Result<usize>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!("DELETE FROM {table} WHERE node = ?1"))?.execute([node])?;
    let mut stmt = tx.prepare_cached(insert_sql)?;
    for r in rows {
        bind(&mut stmt, node, r)?;
    }
    Ok(())
}

/// Replaces the node's rows of one part with `d`'s.
fn write_part(
    tx: &Connection,
    node: &str,
    part: Part,
    d: &Derived,
    now: i64,
) -> rusqlite::Result<()> {
    match part {
        Part::Os => replace(
            tx,
            node,
            "topo_os",
            &d.os,
            "INSERT INTO topo_os (node, os_name, os_version, kernel, machine, fqdn, machine_id,
             virtualisation, boot_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            |s, n, r| {
                s.execute(params![
                    n,
                    r.os_name,
                    r.os_version,
                    r.kernel,
                    r.machine,
                    r.fqdn,
                    r.machine_id,
                    r.virtualisation,
                    r.boot_time_unix.map(|b| b as i64)
                ])
            },
        ),
        Part::Cpu => replace(
            tx,
            node,
            "topo_cpu",
            &d.cpu,
            "INSERT INTO topo_cpu (node, model, logical_cpus) VALUES (?1, ?2, ?3)",
            |s, n, r| s.execute(params![n, r.model, r.logical_cpus as i64]),
        ),
        Part::Memory => replace(
            tx,
            node,
            "topo_memory",
            &d.memory,
            "INSERT INTO topo_memory (node, mem_total_kib, swap_total_kib) VALUES (?1, ?2, ?3)",
            |s, n, r| {
                s.execute(params![
                    n,
                    r.mem_total_kib.map(|v| v as i64),
                    r.swap_total_kib.map(|v| v as i64)
                ])
            },
        ),
        Part::Interfaces => {
            replace(
                tx,
                node,
                "topo_nics",
                &d.nics,
                "INSERT INTO topo_nics (node, name, mac, mtu, speed_mbps, duplex, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                |s, n, r| {
                    s.execute(params![
                        n,
                        r.name,
                        r.mac,
                        opt_u32(r.mtu),
                        opt_u32(r.speed_mbps),
                        r.duplex,
                        r.state
                    ])
                },
            )?;
            replace(
                tx,
                node,
                "topo_ips",
                &d.ips,
                "INSERT INTO topo_ips (node, nic, ip, family, prefix_len, subnet, scope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                |s, n, r| {
                    s.execute(params![
                        n,
                        r.nic,
                        r.ip.to_string(),
                        if r.ip.is_ipv4() { 4 } else { 6 },
                        r.prefix_len,
                        r.subnet,
                        r.scope.name()
                    ])
                },
            )
        }
        Part::Neighbours => replace(
            tx,
            node,
            "topo_arp",
            &d.arp,
            "INSERT INTO topo_arp (node, interface, ip, mac) VALUES (?1, ?2, ?3, ?4)",
            |s, n, r| s.execute(params![n, r.interface, r.ip.to_string(), r.mac]),
        ),
        Part::Sockets => {
            replace(
                tx,
                node,
                "topo_processes",
                &d.processes,
                "INSERT INTO topo_processes (node, pid, exe, cmdline, user)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                |s, n, r| s.execute(params![n, r.pid, r.exe, r.cmdline, r.user]),
            )?;
            replace(
                tx,
                node,
                "topo_services",
                &d.services,
                "INSERT INTO topo_services (node, protocol, ip, port, pid, exe, cmdline, user,
                 loopback) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                |s, n, r| {
                    s.execute(params![
                        n,
                        r.protocol,
                        r.ip.to_string(),
                        r.port,
                        r.pid,
                        r.exe,
                        r.cmdline,
                        r.user,
                        r.ip.is_loopback()
                    ])
                },
            )?;
            replace(
                tx,
                node,
                "topo_connections",
                &d.connections,
                "INSERT INTO topo_connections (node, local_ip, local_port, remote_ip, remote_port,
                 pid, exe, inbound) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                |s, n, r| {
                    s.execute(params![
                        n,
                        r.local_ip.to_string(),
                        r.local_port,
                        r.remote_ip.to_string(),
                        r.remote_port,
                        r.pid,
                        r.exe,
                        r.inbound
                    ])
                },
            )
        }
        Part::Packages => replace(
            tx,
            node,
            "topo_packages",
            &d.packages,
            "INSERT INTO topo_packages (node, name, version, arch, manager)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            |s, n, r| {
                s.execute(params![n, r.name, r.version, r.arch.as_deref().unwrap_or(""), r.manager])
            },
        ),
        Part::SshKeys => replace(
            tx,
            node,
            "topo_ssh_keys",
            &d.ssh_keys,
            "INSERT INTO topo_ssh_keys (node, key_type, fingerprint, key, file)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            |s, n, r| s.execute(params![n, r.key_type, r.fingerprint, r.key, r.file]),
        ),
        Part::L2 => write_wiring(tx, node, d, now),
    }
}

fn write_wiring(tx: &Connection, node: &str, d: &Derived, now: i64) -> rusqlite::Result<()> {
    let old_chassis: Vec<String> = tx
        .prepare_cached("SELECT DISTINCT chassis_id FROM topo_wiring WHERE node = ?1")?
        .query_map([node], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    replace(
        tx,
        node,
        "topo_wiring",
        &d.wiring,
        "INSERT INTO topo_wiring (node, nic, mac, protocol, chassis_id, port_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        |s, n, r| s.execute(params![n, r.nic, r.mac, r.protocol, r.chassis_id, r.port_id]),
    )?;
    let mut put_switch = tx.prepare_cached(
        "INSERT INTO topo_switches (chassis_id, system_name, system_description, platform,
         capabilities, management_addresses, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(chassis_id) DO UPDATE SET
           system_name = COALESCE(excluded.system_name, system_name),
           system_description = COALESCE(excluded.system_description, system_description),
           platform = COALESCE(excluded.platform, platform),
           capabilities = CASE WHEN excluded.capabilities = '' THEN capabilities
                               ELSE excluded.capabilities END,
           management_addresses = CASE WHEN excluded.management_addresses = ''
                               THEN management_addresses ELSE excluded.management_addresses END,
           last_seen = excluded.last_seen",
    )?;
    let mut put_port = tx.prepare_cached(
        "INSERT INTO topo_switch_ports (chassis_id, port_id, description, vlan, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(chassis_id, port_id) DO UPDATE SET
           description = COALESCE(excluded.description, description),
           vlan = COALESCE(excluded.vlan, vlan), last_seen = excluded.last_seen",
    )?;
    for w in &d.wiring {
        put_switch.execute(params![
            w.chassis_id,
            w.system_name,
            w.system_description,
            w.platform,
            w.capabilities.join(","),
            w.management_addresses.join(","),
            now
        ])?;
        put_port.execute(params![w.chassis_id, w.port_id, w.port_description, w.vlan, now])?;
    }
    // Switches and ports nobody is wired to any more go away.
    let mut gc_ports = tx.prepare_cached(
        "DELETE FROM topo_switch_ports WHERE chassis_id = ?1 AND NOT EXISTS (
           SELECT 1 FROM topo_wiring w
           WHERE w.chassis_id = topo_switch_ports.chassis_id
             AND w.port_id = topo_switch_ports.port_id)",
    )?;
    let mut gc_switch = tx.prepare_cached(
        "DELETE FROM topo_switches WHERE chassis_id = ?1
         AND NOT EXISTS (SELECT 1 FROM topo_wiring w WHERE w.chassis_id = ?1)",
    )?;
    for c in old_chassis.iter().chain(d.wiring.iter().map(|w| &w.chassis_id)) {
        gc_ports.execute([c])?;
        gc_switch.execute([c])?;
    }
    Ok(())
}

/// The columns every edge query selects, from connection `c`, IP `i` and service `s`.
const EDGE_SELECT: &str = "
    INSERT INTO topo_deps (client_node, client_pid, client_exe, server_node, server_ip, port,
                           service_ip, server_pid, server_exe, connections)
    SELECT c.node, c.pid, c.exe, s.node, c.remote_ip, c.remote_port, s.ip, s.pid, s.exe,
           COUNT(DISTINCT c.local_ip || ' ' || c.local_port)";

/// Listener `s` accepts connections to address `i`.
const ACCEPTS: &str = "(s.ip = i.ip OR (s.ip = '0.0.0.0' AND i.family = 4) OR s.ip = '::')";

/// Recomputes the edges where `node` is the client and/or the server.
pub(crate) fn recompute_deps(
    tx: &Connection,
    node: &str,
    client: bool,
    server: bool,
) -> rusqlite::Result<()> {
    let group = "GROUP BY c.node, c.pid, c.exe, s.node, c.remote_ip, c.remote_port, s.ip";
    if client {
        tx.prepare_cached("DELETE FROM topo_deps WHERE client_node = ?1")?.execute([node])?;
        tx.prepare_cached(&format!(
            "{EDGE_SELECT}
             FROM topo_connections c
             JOIN topo_ips i ON i.ip = c.remote_ip AND i.scope != 'host'
             JOIN topo_services s ON s.node = i.node AND s.port = c.remote_port
                  AND s.protocol = 'tcp' AND {ACCEPTS}
             WHERE c.node = ?1 AND c.inbound = 0 AND s.node != c.node
             {group}"
        ))?
        .execute([node])?;
    }
    if server {
        tx.prepare_cached("DELETE FROM topo_deps WHERE server_node = ?1")?.execute([node])?;
        tx.prepare_cached(&format!(
            "{EDGE_SELECT}
             FROM topo_services s
             JOIN topo_ips i ON i.node = s.node AND i.scope != 'host' AND {ACCEPTS}
             JOIN topo_connections c ON c.remote_ip = i.ip AND c.remote_port = s.port
             WHERE s.node = ?1 AND s.protocol = 'tcp' AND c.inbound = 0 AND c.node != s.node
             {group}"
        ))?
        .execute([node])?;
    }
    Ok(())
}

/// Labels of the edges `node` takes part in, for the history.
fn dep_labels(tx: &Connection, node: &str) -> rusqlite::Result<BTreeSet<String>> {
    let mut stmt = tx.prepare_cached(
        "SELECT COALESCE(cn.hostname, d.client_node), COALESCE(d.client_exe, '?'),
                COALESCE(sn.hostname, d.server_node), d.server_ip, d.port
         FROM topo_deps d LEFT JOIN nodes cn ON cn.id = d.client_node
         LEFT JOIN nodes sn ON sn.id = d.server_node
         WHERE d.client_node = ?1
         UNION
         SELECT COALESCE(cn.hostname, d.client_node), COALESCE(d.client_exe, '?'),
                COALESCE(sn.hostname, d.server_node), d.server_ip, d.port
         FROM topo_deps d LEFT JOIN nodes cn ON cn.id = d.client_node
         LEFT JOIN nodes sn ON sn.id = d.server_node
         WHERE d.server_node = ?1",
    )?;
    let rows = stmt.query_map([node], |r| {
        let (c, exe, s, ip, port): (String, String, String, String, i64) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let addr = match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, port as u16).to_string(),
            Err(_) => format!("{ip}:{port}"),
        };
        Ok(format!("{c} ({exe}) -> {s} {addr}"))
    })?;
    rows.collect()
}
