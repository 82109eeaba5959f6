//! The topology graph's writes on PostgreSQL: the same tables, rows, dependency edges and
//! history as the SQLite store's `topology` module (whose module doc is the spec), from the
//! same pure derivation (`assim_store_sqlite::topology::derive`), inside the batch's
//! transaction.

use std::collections::BTreeSet;

use assim_store::DiscoveryRecord;
use assim_store_sqlite::topology::HISTORY_LABELS;
use assim_store_sqlite::topology::derive::{self, Derived, KindDiff, Part};
use postgres::Error;

use crate::{Tx, json, t};

/// Updates the graph for one discovery result; runs before the result itself replaces the
/// previous one in `discovery`.
pub(crate) fn apply_discovery(tx: &mut Tx<'_>, d: &DiscoveryRecord) -> Result<(), Error> {
    let Some(part) = Part::of(&d.name) else { return Ok(()) };
    let node = d.node.to_string();
    let previous = tx
        .query(
            "SELECT hash, payload FROM discovery WHERE node = $1 AND name = $2",
            &[&node, &t(&d.name)],
        )?
        .first()
        .map(|r| Ok::<_, Error>((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
        .transpose()?;
    if previous.as_ref().is_some_and(|(hash, _)| *hash == *t(&d.hash)) {
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
    for c in changes {
        let detail = serde_json::json!({
            "added": c.added.iter().take(HISTORY_LABELS).collect::<Vec<_>>(),
            "removed": c.removed.iter().take(HISTORY_LABELS).collect::<Vec<_>>(),
        });
        tx.exec(
            "INSERT INTO topo_history (time, node, collector, kind, added, removed, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)",
            &[
                &now,
                &node,
                &t(&d.name),
                &c.kind,
                &(c.added.len() as i64),
                &(c.removed.len() as i64),
                &json(&detail),
            ],
        )?;
    }
    Ok(())
}

fn opt<T: Copy + Into<i64>>(v: Option<T>) -> Option<i64> {
    v.map(Into::into)
}

fn opt_text(v: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
    v.as_deref().map(t)
}

/// Replaces the node's rows of one part with `d`'s.
fn write_part(tx: &mut Tx<'_>, node: &str, part: Part, d: &Derived, now: i64) -> Result<(), Error> {
    let delete = |tx: &mut Tx<'_>, table: &str| {
        tx.exec(&format!("DELETE FROM {table} WHERE node = $1"), &[&node]).map(drop)
    };
    match part {
        Part::Os => {
            delete(tx, "topo_os")?;
            for r in &d.os {
                tx.exec(
                    "INSERT INTO topo_os (node, os_name, os_version, kernel, machine, fqdn,
                     machine_id, virtualisation, boot_time)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &node,
                        &opt_text(&r.os_name),
                        &opt_text(&r.os_version),
                        &t(&r.kernel),
                        &t(&r.machine),
                        &opt_text(&r.fqdn),
                        &opt_text(&r.machine_id),
                        &t(&r.virtualisation),
                        &r.boot_time_unix.map(|b| b as i64),
                    ],
                )?;
            }
        }
        Part::Cpu => {
            delete(tx, "topo_cpu")?;
            for r in &d.cpu {
                tx.exec(
                    "INSERT INTO topo_cpu (node, model, logical_cpus) VALUES ($1, $2, $3)",
                    &[&node, &opt_text(&r.model), &(r.logical_cpus as i64)],
                )?;
            }
        }
        Part::Memory => {
            delete(tx, "topo_memory")?;
            for r in &d.memory {
                tx.exec(
                    "INSERT INTO topo_memory (node, mem_total_kib, swap_total_kib)
                     VALUES ($1, $2, $3)",
                    &[
                        &node,
                        &r.mem_total_kib.map(|v| v as i64),
                        &r.swap_total_kib.map(|v| v as i64),
                    ],
                )?;
            }
        }
        Part::Interfaces => {
            delete(tx, "topo_nics")?;
            for r in &d.nics {
                tx.exec(
                    "INSERT INTO topo_nics (node, name, mac, mtu, speed_mbps, duplex, state)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &node,
                        &t(&r.name),
                        &opt_text(&r.mac),
                        &opt(r.mtu),
                        &opt(r.speed_mbps),
                        &opt_text(&r.duplex),
                        &opt_text(&r.state),
                    ],
                )?;
            }
            delete(tx, "topo_ips")?;
            for r in &d.ips {
                tx.exec(
                    "INSERT INTO topo_ips (node, nic, ip, family, prefix_len, subnet, scope)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &node,
                        &t(&r.nic),
                        &r.ip.to_string(),
                        &(if r.ip.is_ipv4() { 4i64 } else { 6 }),
                        &i64::from(r.prefix_len),
                        &r.subnet,
                        &r.scope.name(),
                    ],
                )?;
            }
        }
        Part::Neighbours => {
            delete(tx, "topo_arp")?;
            for r in &d.arp {
                tx.exec(
                    "INSERT INTO topo_arp (node, interface, ip, mac) VALUES ($1, $2, $3, $4)",
                    &[&node, &t(&r.interface), &r.ip.to_string(), &t(&r.mac)],
                )?;
            }
        }
        Part::Sockets => {
            delete(tx, "topo_processes")?;
            for r in &d.processes {
                tx.exec(
                    "INSERT INTO topo_processes (node, pid, exe, cmdline, \"user\")
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &node,
                        &i64::from(r.pid),
                        &opt_text(&r.exe),
                        &t(&r.cmdline),
                        &opt_text(&r.user),
                    ],
                )?;
            }
            delete(tx, "topo_services")?;
            for r in &d.services {
                tx.exec(
                    "INSERT INTO topo_services (node, protocol, ip, port, pid, exe, cmdline,
                     \"user\", loopback) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &node,
                        &r.protocol,
                        &r.ip.to_string(),
                        &i64::from(r.port),
                        &opt(r.pid),
                        &opt_text(&r.exe),
                        &t(&r.cmdline),
                        &opt_text(&r.user),
                        &r.ip.is_loopback(),
                    ],
                )?;
            }
            delete(tx, "topo_connections")?;
            for r in &d.connections {
                tx.exec(
                    "INSERT INTO topo_connections (node, local_ip, local_port, remote_ip,
                     remote_port, pid, exe, inbound) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &node,
                        &r.local_ip.to_string(),
                        &i64::from(r.local_port),
                        &r.remote_ip.to_string(),
                        &i64::from(r.remote_port),
                        &opt(r.pid),
                        &opt_text(&r.exe),
                        &r.inbound,
                    ],
                )?;
            }
        }
        Part::Packages => {
            delete(tx, "topo_packages")?;
            for r in &d.packages {
                // The derivation yields each key once; a repeat would be the same row.
                tx.exec(
                    "INSERT INTO topo_packages (node, name, version, arch, manager)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &node,
                        &t(&r.name),
                        &t(&r.version),
                        &t(r.arch.as_deref().unwrap_or("")),
                        &t(&r.manager),
                    ],
                )?;
            }
        }
        Part::SshKeys => {
            delete(tx, "topo_ssh_keys")?;
            for r in &d.ssh_keys {
                tx.exec(
                    "INSERT INTO topo_ssh_keys (node, key_type, fingerprint, key, file)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&node, &t(&r.key_type), &t(&r.fingerprint), &t(&r.key), &t(&r.file)],
                )?;
            }
        }
        Part::L2 => write_wiring(tx, node, d, now)?,
    }
    Ok(())
}

fn write_wiring(tx: &mut Tx<'_>, node: &str, d: &Derived, now: i64) -> Result<(), Error> {
    let old_chassis: Vec<String> = tx
        .query("SELECT DISTINCT chassis_id FROM topo_wiring WHERE node = $1", &[&node])?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    tx.exec("DELETE FROM topo_wiring WHERE node = $1", &[&node])?;
    for w in &d.wiring {
        tx.exec(
            "INSERT INTO topo_wiring (node, nic, mac, protocol, chassis_id, port_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &node,
                &t(&w.nic),
                &opt_text(&w.mac),
                &t(&w.protocol),
                &t(&w.chassis_id),
                &t(&w.port_id),
            ],
        )?;
    }
    for w in &d.wiring {
        tx.exec(
            "INSERT INTO topo_switches AS s (chassis_id, system_name, system_description,
             platform, capabilities, management_addresses, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (chassis_id) DO UPDATE SET
               system_name = COALESCE(EXCLUDED.system_name, s.system_name),
               system_description = COALESCE(EXCLUDED.system_description, s.system_description),
               platform = COALESCE(EXCLUDED.platform, s.platform),
               capabilities = CASE WHEN EXCLUDED.capabilities = '' THEN s.capabilities
                                   ELSE EXCLUDED.capabilities END,
               management_addresses = CASE WHEN EXCLUDED.management_addresses = ''
                                   THEN s.management_addresses
                                   ELSE EXCLUDED.management_addresses END,
               last_seen = EXCLUDED.last_seen",
            &[
                &t(&w.chassis_id),
                &opt_text(&w.system_name),
                &opt_text(&w.system_description),
                &opt_text(&w.platform),
                &t(&w.capabilities.join(",")),
                &t(&w.management_addresses.join(",")),
                &now,
            ],
        )?;
        tx.exec(
            "INSERT INTO topo_switch_ports AS p (chassis_id, port_id, description, vlan,
             last_seen) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (chassis_id, port_id) DO UPDATE SET
               description = COALESCE(EXCLUDED.description, p.description),
               vlan = COALESCE(EXCLUDED.vlan, p.vlan), last_seen = EXCLUDED.last_seen",
            &[
                &t(&w.chassis_id),
                &t(&w.port_id),
                &opt_text(&w.port_description),
                &opt_text(&w.vlan),
                &now,
            ],
        )?;
    }
    // Switches and ports nobody is wired to any more go away.
    let chassis: BTreeSet<String> = old_chassis
        .into_iter()
        .chain(d.wiring.iter().map(|w| t(&w.chassis_id).into_owned()))
        .collect();
    for c in &chassis {
        tx.exec(
            "DELETE FROM topo_switch_ports p WHERE p.chassis_id = $1 AND NOT EXISTS (
               SELECT 1 FROM topo_wiring w
               WHERE w.chassis_id = p.chassis_id AND w.port_id = p.port_id)",
            &[c],
        )?;
        tx.exec(
            "DELETE FROM topo_switches WHERE chassis_id = $1
             AND NOT EXISTS (SELECT 1 FROM topo_wiring w WHERE w.chassis_id = $1)",
            &[c],
        )?;
    }
    Ok(())
}

/// The columns every edge query inserts, from connection `c`, IP `i` and service `s`.
const EDGE_SELECT: &str = "
    INSERT INTO topo_deps (client_node, client_pid, client_exe, server_node, server_ip, port,
                           service_ip, server_pid, server_exe, connections)
    SELECT c.node, c.pid, c.exe, s.node, c.remote_ip, c.remote_port, s.ip, s.pid, s.exe,
           COUNT(DISTINCT c.local_ip || ' ' || c.local_port)";

/// Listener `s` accepts connections to address `i`.
const ACCEPTS: &str = "(s.ip = i.ip OR (s.ip = '0.0.0.0' AND i.family = 4) OR s.ip = '::')";

/// Recomputes the edges where `node` is the client and/or the server.
fn recompute_deps(tx: &mut Tx<'_>, node: &str, client: bool, server: bool) -> Result<(), Error> {
    let group = "GROUP BY c.node, c.pid, c.exe, s.node, c.remote_ip, c.remote_port, s.ip, s.pid,
                 s.exe";
    if client {
        tx.exec("DELETE FROM topo_deps WHERE client_node = $1", &[&node])?;
        tx.exec(
            &format!(
                "{EDGE_SELECT}
                 FROM topo_connections c
                 JOIN topo_ips i ON i.ip = c.remote_ip AND i.scope <> 'host'
                 JOIN topo_services s ON s.node = i.node AND s.port = c.remote_port
                      AND s.protocol = 'tcp' AND {ACCEPTS}
                 WHERE c.node = $1 AND NOT c.inbound AND s.node <> c.node
                 {group}"
            ),
            &[&node],
        )?;
    }
    if server {
        tx.exec("DELETE FROM topo_deps WHERE server_node = $1", &[&node])?;
        tx.exec(
            &format!(
                "{EDGE_SELECT}
                 FROM topo_services s
                 JOIN topo_ips i ON i.node = s.node AND i.scope <> 'host' AND {ACCEPTS}
                 JOIN topo_connections c ON c.remote_ip = i.ip AND c.remote_port = s.port
                 WHERE s.node = $1 AND s.protocol = 'tcp' AND NOT c.inbound
                   AND c.node <> s.node
                 {group}"
            ),
            &[&node],
        )?;
    }
    Ok(())
}

/// Labels of the edges `node` takes part in, for the history.
fn dep_labels(tx: &mut Tx<'_>, node: &str) -> Result<BTreeSet<String>, Error> {
    let rows = tx.query(
        "SELECT COALESCE(cn.hostname, d.client_node), COALESCE(d.client_exe, '?'),
                COALESCE(sn.hostname, d.server_node), d.server_ip, d.port
         FROM topo_deps d LEFT JOIN nodes cn ON cn.id = d.client_node
         LEFT JOIN nodes sn ON sn.id = d.server_node
         WHERE d.client_node = $1 OR d.server_node = $1",
        &[&node],
    )?;
    let mut out = BTreeSet::new();
    for r in rows {
        let (c, exe, s, ip, port): (String, String, String, String, i64) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
        let addr = match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, port as u16).to_string(),
            Err(_) => format!("{ip}:{port}"),
        };
        out.insert(format!("{c} ({exe}) -> {s} {addr}"));
    }
    Ok(out)
}
