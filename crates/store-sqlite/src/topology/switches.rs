//! The ring and switch queries (`assim rings`, `assim switches`, `assim switch SW`,
//! `assim hosts --unreachable`) as [`Store`] methods answering with the `assim-api` rows.
//!
//! - Rings: the ring layout the CMA wrote (`rings`: each ring's members in order,
//!   representatives and watchers; the single ring in `meta.ring` for a store written before
//!   network-aware rings), node ids named from `nodes`, a switch ring's name from
//!   `topo_switches`.
//! - Switches: `topo_switches` with the hosts `topo_wiring` puts on them (one row per host NIC
//!   and port; LLDP and CDP for one port merge into one row), each host's state from `nodes`
//!   and whether the switch is its ring's (`node_wiring`); the switch's state is the CMA's
//!   last `switch.*` event for its ring (tag `ring`), found through the `events_host` index
//!   (switch events have no host, so only host-less events are read).
//! - Unreachable hosts: `nodes` in state `unreachable`, with the text of the last event about
//!   them that made them so.

use std::collections::{BTreeMap, HashMap};

use assim_api::{DownHost, RingView, SwitchHost, SwitchView};
use assim_cma::ring::RingKey;
use assim_store::{RingDesc, ring_views};
use assim_wire::NodeId;
use rusqlite::params;

use super::query::split_list;
use crate::{Store, StoreError};

/// Most switches one `switches` answer lists (a bound on the answer, not on the graph).
pub const MAX_SWITCHES: usize = 10_000;

impl Store {
    /// Hosts in state `unreachable`, newest first, with their last `host.unreachable` or
    /// `switch.*` event's text.
    pub fn unreachable_hosts(&self) -> Result<Vec<DownHost>, StoreError> {
        self.rows(
            "SELECT n.hostname, n.id, n.state, n.since,
               (SELECT e.text FROM events e WHERE e.host = n.id
                  AND e.kind IN ('host.unreachable', 'switch.down', 'switch.unreachable')
                  ORDER BY e.id DESC LIMIT 1)
             FROM nodes n WHERE n.state = 'unreachable' ORDER BY n.since DESC, n.hostname",
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

    /// Every ring as `assim rings` shows it; [`StoreError::TooLarge`] when the rings list more
    /// than [`assim_store::MAX_ANSWER_ROWS`] hosts in all.
    pub fn ring_views(&self) -> Result<Vec<RingView>, StoreError> {
        let rings = self.ring_descs()?;
        let listed: usize = rings
            .iter()
            .map(|r| r.members.len() + r.representatives.len() + r.watchers.len())
            .sum();
        if listed > assim_store::MAX_ANSWER_ROWS {
            return Err(StoreError::TooLarge);
        }
        // Every node's name and state (like the status, not bounded by the answer's rows: the
        // answer is, above).
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, hostname, state FROM nodes")
            .map_err(|e| self.sql(e))?;
        let nodes: HashMap<NodeId, (String, String)> = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .map_err(|e| self.sql(e))?
            .filter_map(|row| {
                let (id, host, state) = row.ok()?;
                Some((id.parse().ok()?, (host, state)))
            })
            .collect();
        let names: HashMap<String, String> = self
            .rows(
                "SELECT chassis_id, system_name FROM topo_switches WHERE system_name IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .into_iter()
            .collect();
        Ok(ring_views(rings, &nodes, &names))
    }

    /// The stored ring layout: the network-aware rings, or the single ring (`meta.ring`, in
    /// ring order) of a store written before them.
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

    /// Switches with the hosts behind them: all, or those whose chassis id or announced name
    /// is `switch`; by chassis id, at most [`MAX_SWITCHES`]; [`StoreError::TooLarge`] when
    /// switches and hosts make more than [`assim_store::MAX_ANSWER_ROWS`] rows in all.
    pub fn switch_views(&self, switch: Option<&str>) -> Result<Vec<SwitchView>, StoreError> {
        let mut switches: Vec<SwitchView> = self.rows(
            &format!(
                "SELECT chassis_id, system_name, system_description, platform,
                        management_addresses, last_seen
                 FROM topo_switches WHERE ?1 IS NULL OR chassis_id = ?1 OR system_name = ?1
                 ORDER BY chassis_id LIMIT {MAX_SWITCHES}"
            ),
            [switch],
            |r| {
                Ok(SwitchView {
                    chassis_id: r.get(0)?,
                    name: r.get(1)?,
                    description: r.get(2)?,
                    platform: r.get(3)?,
                    management_addresses: split_list(r.get(4)?),
                    last_seen: r.get::<_, i64>(5)? as u64,
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
            let ring_stored =
                !self.rows("SELECT 1 FROM rings WHERE key = ?1", [&key], |_| Ok(()))?.is_empty();
            sw.ring = ring_stored.then(|| key.clone());
            sw.state = self.switch_state(&key)?;
        }
        Ok(switches)
    }

    /// The CMA's last verdict on the switch whose ring is `ring`: `down`, `unreachable` or `up`
    /// from its last `switch.*` event; `None` without one.
    fn switch_state(&self, ring: &str) -> Result<Option<String>, StoreError> {
        let kinds = self.rows(
            "SELECT kind FROM events WHERE host IS NULL
               AND kind IN ('switch.down', 'switch.unreachable', 'switch.up')
               AND json_extract(tags, '$.ring') = ?1
             ORDER BY id DESC LIMIT 1",
            [ring],
            |r| r.get::<_, String>(0),
        )?;
        Ok(kinds.into_iter().next().map(|k| k.trim_start_matches("switch.").to_string()))
    }

    /// The host NICs wired to one chassis; LLDP and CDP for one (host, NIC, port) merge into
    /// one row whose protocol lists both.
    fn switch_hosts(&self, chassis: &str, ring: &str) -> Result<Vec<SwitchHost>, StoreError> {
        let rows = self.rows(
            "SELECT n.hostname, w.node, n.state, w.nic, w.port_id, p.description, w.protocol,
                    nw.ring = ?2
             FROM topo_wiring w JOIN nodes n ON n.id = w.node
             LEFT JOIN topo_switch_ports p ON p.chassis_id = w.chassis_id
                  AND p.port_id = w.port_id
             LEFT JOIN node_wiring nw ON nw.node = w.node
             WHERE w.chassis_id = ?1
             ORDER BY n.hostname, w.node, w.nic, w.port_id, w.protocol",
            params![chassis, ring],
            |r| {
                Ok(SwitchHost {
                    host: r.get(0)?,
                    node: r.get(1)?,
                    state: r.get(2)?,
                    nic: r.get(3)?,
                    port_id: r.get(4)?,
                    port_description: r.get(5)?,
                    protocol: r.get(6)?,
                    in_ring: r.get::<_, Option<bool>>(7)?.unwrap_or(false),
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
}
