//! The CMA's embedded store: one SQLite file in the CMA's data directory.
//! It is the embedded engine behind the seams of `assim-store`, and the only crate that names
//! rusqlite.
//!
//! It keeps what a restarted CMA must still know — nodes with their state, the ring, the epoch
//! and event counters — plus the event history and the enrollment tokens. The CMA core emits
//! [`assim_cma::Change`]s and [`assim_cma::Event`]s as actions; the driver hands a batch of them
//! to [`Store::apply`], which writes them in one transaction (one fsync for the whole batch).
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed batch survives a crash
//! or power loss, and readers (the HTTP API, `cma token create`) work beside the writer.
//!
//! Layout:
//! - [`Store`]: open/migrate, load a [`Snapshot`], apply batches, read nodes and events.
//! - [`TokenRecord`]: enrollment tokens (SHA-256 of the secret, expiry, uses).
//! - [`bus`]: the event bus's tables — durable subscriptions with their cursors, dead letters,
//!   retention.
//! - [`services`]: service monitoring — check sets with epochs, service states.
//! - [`topology`]: the topology graph derived from discovery results, and its queries.
//! - [`queries`]: the read side of the API and the CLI (`assim_store::Queries`) over all of it,
//!   and [`queries::queries_opener`].
//! - [`retention`]: the bound on the topology history.
//! - [`statistics`]: the durable queue of statistics for Graphite (`stat_outbox`) with its cap.
//! - [`rings`]: the network-aware rings — each node's wiring, each ring's members, representatives
//!   and watchers (issue 13).

pub mod bus;
pub mod queries;
pub mod retention;
pub mod rings;
pub mod services;
pub mod statistics;
pub mod topology;

use std::collections::BTreeMap;
use std::path::Path;

use assim_cma::{Change, Event, EventKind, NodeRecord, Snapshot};
use assim_wire::{NodeId, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};

pub use assim_store::{DiscoveryRecord, InboxProgress, TokenRecord};

/// Errors from the store. No variant leaves a half-applied batch behind: batches are
/// transactions.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation (disk full, permissions, corruption); the batch was rolled back.
    #[error("database error in {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The database file could not be created or its permissions could not be tightened to
    /// 0600; nothing was changed.
    #[error("cannot create {path} or make it private (mode 0600): {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A row could not be decoded into a record (the file was edited by hand or is from a newer
    /// version); nothing was changed.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The file's schema is newer than this build understands; nothing was changed.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); upgrade assim"
    )]
    TooNew { found: i64, supported: i64 },
    /// A read would answer with more than [`assim_store::MAX_ANSWER_ROWS`] rows; reading
    /// stopped at the bound.
    #[error("the answer has more than {} rows", assim_store::MAX_ANSWER_ROWS)]
    TooLarge,
}

impl From<StoreError> for assim_store::QueryError {
    fn from(e: StoreError) -> assim_store::QueryError {
        match e {
            StoreError::TooLarge => assim_store::QueryError::TooLarge,
            e => assim_store::QueryError::backend(e),
        }
    }
}

/// The schema version this build writes (the file's `user_version`).
pub const SCHEMA_VERSION: i64 = 7;

/// Schema migrations: `(version, sql)` brings a file at `version - 1` to `version`. [`SCHEMA`]
/// creates missing tables in their first shape first (so a new table needs no migration), then
/// every migration above the file's `user_version` runs in order, in one transaction with the
/// version bump. Append new steps (and raise [`SCHEMA_VERSION`]); never edit a released one.
const MIGRATIONS: &[(i64, &str)] = &[
    // 2: the event bus — severity and body on events, subscriptions, dead letters.
    (2, bus::MIGRATION_2),
    // 3: the topology graph (filled from the stored discovery results, see below).
    (3, topology::MIGRATION_3),
    // 4: service monitoring — check sets and service states.
    (4, services::MIGRATION_4),
    // 5: hand-set checks and remembered (stopped) services.
    (5, services::MIGRATION_5),
    // 6: join-token secrets kept only as SHA-256 (the rows are rewritten in Rust, see `open`).
    (6, "ALTER TABLE tokens RENAME COLUMN secret TO secret_sha256;"),
    // 7: network-aware rings (issue 13) — each node's wiring, each ring's description.
    (7, rings::MIGRATION_7),
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    version TEXT NOT NULL,
    listen_addr TEXT NOT NULL,
    public_key TEXT NOT NULL,
    addresses TEXT NOT NULL,
    state TEXT NOT NULL,
    since INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    peer_epoch INTEGER NOT NULL,
    peers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    host TEXT,
    hostname TEXT NOT NULL,
    tags TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (
    node TEXT PRIMARY KEY,
    through INTEGER NOT NULL,
    count INTEGER NOT NULL
);
-- Issue 16 item 9, new in schema 6 without a version bump (a missing table is simply created):
-- each node's spool incarnation (u64 stored as its i64 bit pattern).
CREATE TABLE IF NOT EXISTS spool_incarnations (
    node TEXT PRIMARY KEY,
    incarnation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS discovery (
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    collected_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (node, name)
);
-- Issue 17, new without a version bump (a missing table is simply created): nodes whose
-- host.new is not raised yet, and when it is due (µs). Older stores have none: their nodes
-- are not new.
CREATE TABLE IF NOT EXISTS host_new_pending (
    node TEXT PRIMARY KEY,
    due_at INTEGER NOT NULL
);
-- Issue 17 item 5, new without a version bump (a missing table is simply created): the durable
-- queue of statistics points on their way to Graphite (see assim_store::statistics); ids grow
-- and are never reused (AUTOINCREMENT), rows leave from the oldest end only.
CREATE TABLE IF NOT EXISTS stat_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    value REAL NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL
);
";

/// Per-node application record: the highest spool record applied and how many were applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub through: u64,
    pub count: u64,
}

/// Migration 6: replaces every stored plaintext token secret by its SHA-256 (the same as
/// `assim_seal::secret_hash`), in the migration's transaction.
fn hash_token_secrets(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    use sha2::Digest as _;
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT id, secret_sha256 FROM tokens")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, secret) in rows {
        // A row that is not 32 bytes of hex cannot be a secret this build wrote; it can never
        // match a presented secret either way, so it is hashed as text and so disabled.
        let hash: [u8; 32] = match hex_decode32(&secret) {
            Some(s) => sha2::Sha256::digest(s).into(),
            None => sha2::Sha256::digest(secret.as_bytes()).into(),
        };
        tx.execute(
            "UPDATE tokens SET secret_sha256 = ?1 WHERE id = ?2",
            params![hex_encode(&hash), id],
        )?;
    }
    Ok(())
}

/// Creates the database file with mode 0600 if it is missing (SQLite gives its `-wal` and `-shm`
/// files the database file's mode), and takes group and other access away from an existing
/// database and its `-wal`/`-shm` files, which older versions created 0644: the database holds
/// join-token material and the whole inventory.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let mut name = path.as_os_str().to_owned();
    for suffix in ["", "-wal", "-shm"] {
        name.push(suffix);
        let p = Path::new(&name);
        match std::fs::metadata(p) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        name = path.as_os_str().to_owned();
    }
    Ok(())
}

/// The SQLite store. One writer (the CMA's core task); readers open their own [`Store`].
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: String,
    /// The statistics queue's cap ([`Store::set_statistics_queue_max`]).
    statistics_max: u64,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let spath = path.display().to_string();
        let err = |source| StoreError::Sqlite { path: spath.clone(), source };
        make_private(path).map_err(|source| StoreError::Io { path: spath.clone(), source })?;
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found: version, supported: SCHEMA_VERSION });
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        let mut conn = conn;
        let tx = conn.transaction().map_err(err)?;
        for (to, sql) in MIGRATIONS {
            if *to > version {
                tx.execute_batch(sql).map_err(err)?;
            }
        }
        if version < 3 {
            topology::backfill(&tx).map_err(err)?;
        }
        if (1..6).contains(&version) {
            hash_token_secrets(&tx).map_err(err)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Store { conn, path: spath, statistics_max: assim_store::statistics::DEFAULT_QUEUE_MAX })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }

    /// Loads everything the CMA core needs to resume.
    pub fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        let nodes = self.nodes()?;
        let ring: Vec<NodeId> = match self.meta("ring")? {
            Some(s) => serde_json::from_str(&s)
                .map_err(|e| StoreError::Corrupt { table: "meta", detail: format!("ring: {e}") })?,
            None => Vec::new(),
        };
        let next_epoch = self.meta_u64("next_epoch")?.unwrap_or(1);
        let next_event_id = self.meta_u64("next_event_id")?.unwrap_or(1);
        let wiring = self.wiring()?;
        Ok(Snapshot { nodes, ring, next_epoch, next_event_id, wiring })
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.meta(key)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| StoreError::Corrupt {
                table: "meta",
                detail: format!("{key} is not a number: {s:?}"),
            }),
        }
    }

    /// Writes a metadata value (its own transaction).
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Applies a batch of core changes and events, and the inbox progress that produced them, in
    /// one transaction. Of several ring or counter changes in one batch only the last is
    /// written; each node is written once with its last state.
    pub fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), StoreError> {
        let mut nodes: BTreeMap<NodeId, &NodeRecord> = BTreeMap::new();
        let mut ring = None;
        let mut counters = None;
        let mut wiring = Vec::new();
        let mut rings = Vec::new();
        for c in changes {
            match c {
                Change::Node(n) => {
                    nodes.insert(n.id, n);
                }
                Change::Ring(r) => ring = Some(r),
                Change::Counters { next_epoch, next_event_id } => {
                    counters = Some((*next_epoch, *next_event_id))
                }
                Change::Wiring(w) => wiring.push(w),
                Change::Rings(r) => rings.extend(r),
            }
        }
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut put_node = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO nodes (id, hostname, version, listen_addr, public_key,
                     addresses, state, since, registered_at, peer_epoch, peers)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(err)?;
            for n in nodes.values() {
                put_node
                    .execute(params![
                        n.id.to_string(),
                        n.hostname,
                        n.version,
                        n.listen_addr.to_string(),
                        hex_encode(&n.public_key),
                        serde_json::to_string(&n.addresses).expect("strings serialize"),
                        n.state.name(),
                        n.since.0 as i64,
                        n.registered_at.0 as i64,
                        n.peer_epoch as i64,
                        serde_json::to_string(&n.peers).expect("ids serialize"),
                    ])
                    .map_err(err)?;
            }
            let mut put_meta = tx
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                )
                .map_err(err)?;
            if let Some(r) = ring {
                put_meta
                    .execute(params!["ring", serde_json::to_string(r).expect("ids serialize")])
                    .map_err(err)?;
            }
            if let Some((e, ev)) = counters {
                put_meta.execute(params!["next_epoch", e.to_string()]).map_err(err)?;
                put_meta.execute(params!["next_event_id", ev.to_string()]).map_err(err)?;
            }
            if let Some(pos) = progress.position {
                put_meta.execute(params!["inbox_position", pos.to_string()]).map_err(err)?;
            }
            if let Some(s) = &progress.schedule {
                put_meta.execute(params!["discovery_schedule", s.canonical]).map_err(err)?;
                put_meta.execute(params!["discovery_epoch", s.epoch.to_string()]).map_err(err)?;
            }
            let mut put_applied = tx
                .prepare_cached(
                    "INSERT INTO applied (node, through, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT(node) DO UPDATE SET through = MAX(through, excluded.through),
                     count = count + excluded.count",
                )
                .map_err(err)?;
            for (node, (through, count)) in &progress.applied {
                put_applied
                    .execute(params![node.to_string(), *through as i64, *count as i64])
                    .map_err(err)?;
            }
            // A new spool incarnation replaces the node's applied record (issue 16 item 9).
            let mut put_incarnation = tx
                .prepare_cached(
                    "INSERT INTO spool_incarnations (node, incarnation) VALUES (?1, ?2)
                     ON CONFLICT(node) DO UPDATE SET incarnation = excluded.incarnation",
                )
                .map_err(err)?;
            let mut reset_applied = tx
                .prepare_cached("UPDATE applied SET through = ?2 WHERE node = ?1")
                .map_err(err)?;
            for (node, inc) in &progress.incarnations {
                put_incarnation
                    .execute(params![node.to_string(), inc.incarnation as i64])
                    .map_err(err)?;
                if inc.reset {
                    let through = progress.applied.get(node).map_or(0, |a| a.0);
                    reset_applied
                        .execute(params![node.to_string(), through as i64])
                        .map_err(err)?;
                }
            }
            let mut put_discovery = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO discovery
                     (node, name, hash, payload, collected_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            for d in &progress.discovery {
                // Before the result replaces the previous one: the graph diffs against it.
                topology::apply_discovery(&tx, d).map_err(err)?;
                put_discovery
                    .execute(params![
                        d.node.to_string(),
                        d.name,
                        d.hash,
                        d.payload,
                        d.collected_at as i64,
                        d.updated_at as i64
                    ])
                    .map_err(err)?;
            }
            services::apply(&tx, &progress.services).map_err(err)?;
            for c in &progress.host_new {
                use assim_cma::host_new::HostNewChange;
                match c {
                    HostNewChange::Waiting { node, due_at } => tx.execute(
                        "INSERT OR REPLACE INTO host_new_pending (node, due_at) VALUES (?1, ?2)",
                        params![node.to_string(), *due_at as i64],
                    ),
                    HostNewChange::Raised(node) => tx.execute(
                        "DELETE FROM host_new_pending WHERE node = ?1",
                        params![node.to_string()],
                    ),
                }
                .map_err(err)?;
            }
            rings::apply(&tx, &wiring, &rings).map_err(err)?;
            if !progress.statistics.is_empty() {
                statistics::append(&tx, &progress.statistics, self.statistics_max).map_err(err)?;
            }
            let mut put_event = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events
                     (id, time, kind, host, hostname, tags, text, severity, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(err)?;
            for e in events {
                put_event
                    .execute(params![
                        e.id as i64,
                        e.time.0 as i64,
                        e.kind.name(),
                        e.host.map(|h| h.to_string()),
                        e.hostname,
                        serde_json::to_string(&e.tags).expect("tags serialize"),
                        e.text,
                        e.severity.name(),
                        e.body.as_ref().map(|b| b.to_string()),
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// The last inbox LSN whose effects are stored (0 if none).
    pub fn inbox_position(&self) -> Result<u64, StoreError> {
        Ok(self.meta_u64("inbox_position")?.unwrap_or(0))
    }

    /// Per node, the spool records applied so far.
    pub fn applied(&self) -> Result<BTreeMap<NodeId, Applied>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT node, through, count FROM applied")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (node, through, count) = row.map_err(|e| self.sql(e))?;
            let id = node.parse().map_err(|_| StoreError::Corrupt {
                table: "applied",
                detail: format!("node {node:?}"),
            })?;
            out.insert(id, Applied { through: through as u64, count: count as u64 });
        }
        Ok(out)
    }

    /// Per node, the spool incarnation (issue 16 item 9).
    pub fn spool_incarnations(&self) -> Result<BTreeMap<NodeId, u64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT node, incarnation FROM spool_incarnations")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.sql(e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (node, incarnation) = row.map_err(|e| self.sql(e))?;
            let id = node.parse().map_err(|_| StoreError::Corrupt {
                table: "spool_incarnations",
                detail: format!("node {node:?}"),
            })?;
            out.insert(id, incarnation as u64);
        }
        Ok(out)
    }

    /// The latest discovery results of one node, by collector name.
    pub fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, hash, payload, collected_at, updated_at FROM discovery
                 WHERE node = ?1 ORDER BY name",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([node.to_string()], |r| {
                Ok(DiscoveryRecord {
                    node,
                    name: r.get(0)?,
                    hash: r.get(1)?,
                    payload: r.get(2)?,
                    collected_at: r.get::<_, i64>(3)? as u64,
                    updated_at: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Every node's latest result of collector `name`, by node (the exports read
    /// `ssh_host_keys`, `os` and `sockets` of every host at once).
    pub fn discovery_named(&self, name: &str) -> Result<Vec<DiscoveryRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT node, hash, payload, collected_at, updated_at FROM discovery
                 WHERE name = ?1 ORDER BY node",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, i64>(4)? as u64,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, hash, payload, collected_at, updated_at) = row.map_err(|e| self.sql(e))?;
            let node: NodeId = node.parse().map_err(|_| StoreError::Corrupt {
                table: "discovery",
                detail: format!("node id {node:?}"),
            })?;
            out.push(DiscoveryRecord {
                node,
                name: name.to_owned(),
                hash,
                payload,
                collected_at,
                updated_at,
            });
        }
        Ok(out)
    }

    /// All nodes, ordered by hostname.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, hostname, version, listen_addr, public_key, addresses, state, since,
                 registered_at, peer_epoch, peers FROM nodes ORDER BY hostname, id",
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
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, String>(10)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, hostname, version, listen, key, addrs, state, since, reg, epoch, peers) =
                row.map_err(|e| self.sql(e))?;
            let corrupt = |detail: String| StoreError::Corrupt { table: "nodes", detail };
            out.push(NodeRecord {
                id: id.parse().map_err(|e| corrupt(format!("id {id:?}: {e}")))?,
                hostname,
                version,
                listen_addr: listen
                    .parse()
                    .map_err(|e| corrupt(format!("listen_addr {listen:?}: {e}")))?,
                public_key: hex_decode32(&key)
                    .ok_or_else(|| corrupt(format!("public_key of {id}")))?,
                addresses: serde_json::from_str(&addrs)
                    .map_err(|e| corrupt(format!("addresses of {id}: {e}")))?,
                state: state.parse().map_err(|_| corrupt(format!("state {state:?} of {id}")))?,
                since: Timestamp(since as u64),
                registered_at: Timestamp(reg as u64),
                peer_epoch: epoch as u64,
                peers: serde_json::from_str(&peers)
                    .map_err(|e| corrupt(format!("peers of {id}: {e}")))?,
            });
        }
        Ok(out)
    }

    /// Events with id greater than `since`, oldest first, at most `limit`.
    pub fn events_since(&self, since: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, time, kind, host, hostname, tags, text, severity, body FROM events
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![since as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, time, kind, host, hostname, tags, text, severity, body) =
                row.map_err(|e| self.sql(e))?;
            let corrupt = |detail: String| StoreError::Corrupt { table: "events", detail };
            let kind: EventKind =
                kind.parse().map_err(|_| corrupt(format!("kind {kind:?} of event {id}")))?;
            let host = match host {
                Some(h) => {
                    Some(h.parse().map_err(|_| corrupt(format!("host {h:?} of event {id}")))?)
                }
                None => None,
            };
            out.push(Event {
                id: id as u64,
                time: Timestamp(time as u64),
                kind,
                host,
                hostname,
                tags: serde_json::from_str(&tags)
                    .map_err(|e| corrupt(format!("tags of event {id}: {e}")))?,
                text,
                severity: severity
                    .parse()
                    .map_err(|_| corrupt(format!("severity {severity:?} of event {id}")))?,
                body: match body {
                    Some(b) => Some(
                        serde_json::from_str(&b)
                            .map_err(|e| corrupt(format!("body of event {id}: {e}")))?,
                    ),
                    None => None,
                },
            });
        }
        Ok(out)
    }

    /// The id of the newest event (0 if none).
    pub fn last_event_id(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.sql(e))
    }

    /// Stores a new enrollment token.
    pub fn add_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO tokens (id, secret_sha256, created_at, expires_at, max_uses, uses)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    hex_encode(&t.id),
                    hex_encode(&t.secret_hash),
                    t.created_at.0 as i64,
                    t.expires_at.0 as i64,
                    t.max_uses as i64,
                    t.uses as i64
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Looks a token up by id.
    pub fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, secret_sha256, created_at, expires_at, max_uses, uses FROM tokens WHERE id = ?1",
                [hex_encode(id)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some((id, secret, created, expires, max_uses, uses)) = row else { return Ok(None) };
        let corrupt = || StoreError::Corrupt { table: "tokens", detail: format!("token {id}") };
        let id_bytes = hex_decode(&id).and_then(|v| v.try_into().ok()).ok_or_else(corrupt)?;
        Ok(Some(TokenRecord {
            id: id_bytes,
            secret_hash: hex_decode32(&secret).ok_or_else(corrupt)?,
            created_at: Timestamp(created as u64),
            expires_at: Timestamp(expires as u64),
            max_uses: max_uses as u64,
            uses: uses as u64,
        }))
    }

    /// Counts one use of a token.
    pub fn use_token(&mut self, id: &[u8]) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE tokens SET uses = uses + 1 WHERE id = ?1", [hex_encode(id)])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Number of nodes in each state, by state name.
    pub fn count_by_state(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM nodes GROUP BY state")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

fn hex_decode32(s: &str) -> Option<[u8; 32]> {
    hex_decode(s)?.try_into().ok()
}

impl Store {
    /// The desired state the core restores from: the schedule's meta keys, check sets, states,
    /// hand-set checks, remembered services and each node's latest `sockets` result.
    pub fn load_desired(&self) -> Result<assim_cma::DesiredSnapshot, StoreError> {
        let schedule = match (self.meta("discovery_schedule")?, self.meta_u64("discovery_epoch")?) {
            (Some(canonical), epoch) => {
                Some(assim_cma::schedule::StoredSchedule { canonical, epoch: epoch.unwrap_or(0) })
            }
            (None, _) => None,
        };
        let sockets = self.latest_payloads(assim_store::desired::SOCKETS)?;
        let host_keys = self.latest_payloads(assim_cma::host_keys::COLLECTOR)?;
        let security = self.latest_payloads(assim_cma::audit_watch::COLLECTOR)?;
        let host_new = self.host_new_pending()?;
        Ok(assim_store::desired::snapshot(assim_store::desired::StoredDesired {
            schedule,
            check_sets: self.check_sets()?,
            states: self.service_states()?,
            manual: self.manual_checks()?,
            remembered: self.remembered_services()?.into_iter().collect(),
            sockets,
            host_keys,
            security,
            host_new,
        }))
    }

    /// The nodes whose `host.new` is not raised yet, with their stored `os` and
    /// `ssh_host_keys` results.
    fn host_new_pending(&self) -> Result<Vec<assim_cma::host_new::StoredWaiting>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.node, p.due_at,
                   (SELECT payload FROM discovery d WHERE d.node = p.node AND d.name = 'os'),
                   (SELECT payload FROM discovery d WHERE d.node = p.node AND d.name = 'ssh_host_keys')
                 FROM host_new_pending p ORDER BY p.node",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (node, due_at, os, ssh_host_keys) = row.map_err(|e| self.sql(e))?;
            let node: NodeId = node.parse().map_err(|_| StoreError::Corrupt {
                table: "host_new_pending",
                detail: format!("node id {node:?}"),
            })?;
            out.push(assim_cma::host_new::StoredWaiting {
                node,
                due_at: due_at.max(0) as u64,
                os,
                ssh_host_keys,
            });
        }
        Ok(out)
    }

    /// Each node's latest payload of collector `name`, by node.
    fn latest_payloads(&self, name: &str) -> Result<Vec<(NodeId, String)>, StoreError> {
        let mut sockets = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT node, payload FROM discovery WHERE name = ?1 ORDER BY node")
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(|e| self.sql(e))?;
            for row in rows {
                let (node, payload) = row.map_err(|e| self.sql(e))?;
                let id: NodeId = node.parse().map_err(|_| StoreError::Corrupt {
                    table: "discovery",
                    detail: format!("node id {node:?}"),
                })?;
                sockets.push((id, payload));
            }
        }
        Ok(sockets)
    }
}

/// The CMA engine's store seam over SQLite: the snapshot, inbox position and applied records at
/// start; one transaction per batch.
impl assim_store::EngineStore for Store {
    fn load(&mut self) -> Result<assim_store::Loaded, assim_store::StoreFailed> {
        let failed = |e: StoreError| assim_store::StoreFailed(Box::new(e));
        Ok(assim_store::Loaded {
            snapshot: self.load_snapshot().map_err(failed)?,
            position: self.inbox_position().map_err(failed)?,
            applied: self
                .applied()
                .map_err(failed)?
                .into_iter()
                .map(|(n, a)| (n, a.through))
                .collect(),
            incarnations: self.spool_incarnations().map_err(failed)?,
            desired: self.load_desired().map_err(failed)?,
        })
    }

    fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), assim_store::StoreFailed> {
        Store::apply(self, changes, events, progress)
            .map_err(|e| assim_store::StoreFailed(Box::new(e)))
    }
}

/// Join tokens for the enrolment decision.
impl assim_store::Tokens for Store {
    fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, assim_store::StoreFailed> {
        Store::token(self, id).map_err(|e| assim_store::StoreFailed(Box::new(e)))
    }

    fn use_token(&mut self, id: &[u8]) -> Result<(), assim_store::StoreFailed> {
        Store::use_token(self, id).map_err(|e| assim_store::StoreFailed(Box::new(e)))
    }

    fn registered_key(&self, node: NodeId) -> Result<Option<[u8; 32]>, assim_store::StoreFailed> {
        let key: Option<String> = self
            .conn
            .query_row("SELECT public_key FROM nodes WHERE id = ?1", [node.to_string()], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| assim_store::StoreFailed(Box::new(self.sql(e))))?;
        key.map(|k| {
            hex_decode32(&k).ok_or_else(|| {
                assim_store::StoreFailed(Box::new(StoreError::Corrupt {
                    table: "nodes",
                    detail: format!("public key of {node}"),
                }))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;
    use sha2::Digest as _;

    /// Issue 16 item 7: join-token secrets are kept only as SHA-256, and opening a database of
    /// an older version replaces the plaintext secrets it holds by their hashes.
    #[test]
    fn item7_token_secrets_are_stored_as_hashes_and_old_plaintext_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cma.sqlite");
        let secret = [0x5a; 32];
        let id = [7u8; 16];
        {
            // A version-5 database, as the previous release wrote it: the secret in clear.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to <= 5) {
                conn.execute_batch(sql).unwrap_or_else(|e| panic!("migration {to}: {e}"));
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute(
                "INSERT INTO tokens (id, secret, created_at, expires_at, max_uses, uses)
                 VALUES (?1, ?2, 1, 2, 0, 0)",
                params![hex_encode(&id), hex_encode(&secret)],
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let want: [u8; 32] = sha2::Sha256::digest(secret).into();
        assert_eq!(store.token(&id).unwrap().unwrap().secret_hash, want);
        store
            .add_token(&TokenRecord {
                id: [8; 16],
                secret_hash: [9; 32],
                created_at: Timestamp(1),
                expires_at: Timestamp(2),
                max_uses: 1,
                uses: 0,
            })
            .unwrap();
        drop(store);
        // Nothing in the file is the plaintext secret any more.
        let conn = Connection::open(&path).unwrap();
        let stored: Vec<String> = conn
            .prepare("SELECT secret_sha256 FROM tokens")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!stored.contains(&hex_encode(&secret)), "{stored:?}");
        assert!(stored.contains(&hex_encode(&want)), "{stored:?}");
    }

    /// Issue 16 item 7: the database file and its WAL and shared-memory files are 0600, also
    /// when an older version had created the database 0644.
    #[test]
    fn item7_database_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cma.sqlite");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let store = Store::open(&path).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.path().join(format!("cma.sqlite{suffix}"));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = Store::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}

#[cfg(test)]
mod incarnation_tests {
    use super::*;
    use assim_store::{EngineStore as _, SpoolIncarnation};

    /// Issue 16 item 9: a node's spool incarnation is stored with the batch, survives a reopen,
    /// and a reset replaces the node's applied record (which otherwise only rises).
    #[test]
    fn item_9_spool_incarnation_is_stored_and_a_reset_lowers_the_applied_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cma.sqlite");
        let node = NodeId([3; 16]);
        let mut store = Store::open(&path).unwrap();
        let batch = |through, inc, reset| {
            let mut p = InboxProgress::default();
            p.applied.insert(node, (through, 1));
            if inc != 0 {
                p.incarnations.insert(node, SpoolIncarnation { incarnation: inc, reset });
            }
            p
        };
        store.apply(&[], &[], &batch(500, u64::MAX - 1, false)).unwrap();
        // Without a reset a lower record does not lower the mark (a late duplicate batch).
        store.apply(&[], &[], &batch(7, 0, false)).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.applied[&node], 500);
        assert_eq!(loaded.incarnations[&node], u64::MAX - 1, "u64 survives the i64 column");
        store.apply(&[], &[], &batch(2, 0xb, true)).unwrap();
        drop(store);
        let mut store = Store::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.applied[&node], 2);
        assert_eq!(loaded.incarnations[&node], 0xb);
    }
}
