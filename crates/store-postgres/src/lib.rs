//! The CMA's store on PostgreSQL: the same seams as the embedded SQLite store
//! (`assim-store-sqlite`) — [`assim_store::EngineStore`], [`assim_store::Tokens`],
//! [`assim_store::Queries`] and [`assim_store::EventLog`] — with the same schema meaning and the
//! same answers, on a PostgreSQL 15 server several CMA processes can share (issue 14).
//!
//! # What is transactional
//! - [`Store::apply`] (the engine's batch: its changes, its events, the discovery results with
//!   the topology graph derived from them, service state, and the inbox position) is **one**
//!   PostgreSQL transaction. After a crash the engine resumes exactly after the last batch
//!   whose effects are stored.
//! - When the store holds a **fencing term** ([`Store::acquire_lease`]), every batch first
//!   reads the lease row `engine_lease` with `FOR SHARE` inside its transaction and fails with
//!   [`StoreError::Deposed`] (writing nothing) if another engine took the lease since. The row
//!   lock orders a takeover and a commit: either the commit finishes before the new term is
//!   written, or it sees the new term. The lease's expiry is computed on the database's clock,
//!   so engines on machines whose clocks disagree still agree on it. Why a PostgreSQL row and
//!   not JetStream KV: the term must be checked in the same transaction as the effects it
//!   guards; a KV revision checked before a PostgreSQL commit leaves a window between the check
//!   and the commit in which a deposed engine still writes.
//! - Every read-side call ([`assim_store::Queries`], [`assim_store::EventLog`]) is one
//!   statement or a few; each event-log write is its own transaction.
//!
//! # Types
//! Times are `bigint` µs since the epoch (what every answer carries); counters and ids
//! `bigint` (u64 bit patterns, as in SQLite); keys and secrets `bytea`; flags `boolean`;
//! structured values (node addresses, peers, event tags and body, check sets, wiring, rings,
//! history details) `jsonb`, read back as text and parsed. Three things stay `text` on
//! purpose: node ids and IP addresses (the answers are those exact strings; `inet` would
//! print some addresses differently), raw discovery payloads (kept byte for byte, since their
//! hash names them and a payload that is not JSON is still stored, as on SQLite), and the
//! bus's sink configuration (opaque to the store). Every `text` column uses the `"C"`
//! collation, so orderings are byte orderings, as on SQLite, whatever the database's locale.
//! PostgreSQL cannot store the NUL character in `text` or `jsonb`; a NUL from outside (a
//! plugin's output, a hostile payload) is stored as U+FFFD instead of failing the batch — the
//! one place where the answers differ from SQLite's.
//!
//! # Threads
//! The `postgres` client owns a small tokio runtime per connection: a [`Store`] must never be
//! used or dropped on a thread that drives a tokio runtime. [`Handle`] (module [`handle`]) runs
//! a store on a thread of its own and is safe anywhere; `cma --store postgres://…` uses only
//! handles, and the openers ([`query::queries_opener`], [`bus::event_log_opener`]) return them.
//!
//! # The engine lease
//! [`Store::try_acquire_lease`] takes the lease (a standby calls it until it succeeds),
//! [`Store::renew_lease`] extends it without ever changing the term, [`Store::release_lease`]
//! ends it at a clean stop, [`Store::claim_inbox`] records whose inbox the stored position
//! counts in. When to call which is decided by `assim_cma_shell::lease`.
//!
//! # Not built yet (issue 14)
//! No separate packet readers (the active engine reads the datagrams; the JetStream inbox and
//! event stream are in `assim-inbox-jetstream` and `assim-bus`), no topology backfill.
//!
//! # Tests
//! `cargo nextest run -p assim-store-postgres` runs the conformance suite
//! (`tests/conformance.rs`): the same cases against SQLite and against a throwaway PostgreSQL
//! cluster (`assim_util::testing::Postgres`, made with Debian's `initdb`), comparing every
//! answer. Without PostgreSQL installed it prints `SKIP:` (a failure under `CI=true`).
//! `cargo bench -p assim-store-postgres --profile test` compares batch commits per second.
//!
//! Layout:
//! - this file: [`Store`], connection, schema and migrations, the batch, the snapshot, tokens,
//!   the engine lease.
//! - [`topology`]: the topology graph's writes (rows derived by `assim-store-sqlite`'s pure
//!   `topology::derive`).
//! - [`query`]: [`assim_store::Queries`] — status, discovery, services, rings, switches and the
//!   topology's canned queries.
//! - [`bus`]: [`assim_store::EventLog`] — events, subscriptions, dead letters, retention.
//! - [`import`]: an embedded CMA's SQLite store copied into an empty PostgreSQL store.
//! - [`statistics`]: the durable queue of statistics for Graphite
//!   ([`assim_store::StatisticsOutbox`]).

pub mod bus;
pub mod handle;
pub mod import;
pub mod query;
pub mod statistics;
pub mod topology;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use assim_cma::{Change, Event, EventKind, NodeRecord, Snapshot};
use assim_store::{DiscoveryRecord, InboxProgress, TokenRecord};
use assim_wire::{NodeId, Timestamp};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

/// Errors from the store. No variant leaves a half-applied batch behind: batches are
/// transactions.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server refused or the connection failed (down, restarted, disk full, a constraint);
    /// the batch was rolled back. The next call reconnects.
    #[error("PostgreSQL error ({what}): {source}")]
    Postgres {
        what: &'static str,
        #[source]
        source: postgres::Error,
    },
    /// The connection string does not parse; nothing was done.
    #[error("invalid PostgreSQL connection string: {0}")]
    Config(#[source] postgres::Error),
    /// A row could not be decoded into a record (edited by hand, or from a newer version);
    /// nothing was changed.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The database's schema is newer than this build understands; nothing was changed.
    #[error(
        "database schema version {found} is newer than this build supports ({supported}); upgrade assim"
    )]
    TooNew { found: i64, supported: i64 },
    /// A read would answer with more than [`assim_store::MAX_ANSWER_ROWS`] rows; reading
    /// stopped at the bound.
    #[error("the answer has more than {} rows", assim_store::MAX_ANSWER_ROWS)]
    TooLarge,
    /// Another engine took the lease (term `current`) since this one got term `held`: this
    /// engine is deposed, and the batch was not written. Stop applying; stand by.
    #[error(
        "this engine's lease (term {held}) was taken over (term {current}); it must stop writing"
    )]
    Deposed { held: u64, current: u64 },
    /// The thread of a [`Handle`] ended (a panic inside a store call); nothing more can be
    /// done through it.
    #[error("the PostgreSQL store's thread ended: {0}")]
    Gone(String),
}

impl From<StoreError> for assim_store::StoreFailed {
    fn from(e: StoreError) -> assim_store::StoreFailed {
        assim_store::StoreFailed(Box::new(e))
    }
}

/// What [`Store::claim_inbox`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxClaim {
    /// Who owned the stored inbox position before (`None`: nobody yet).
    pub previous: Option<String>,
    /// When the claimer owned it once and another engine took it since: the position the
    /// claimer had stored by then.
    pub mine_through: Option<u64>,
}

/// Who holds the engine lease, as [`Store::try_acquire_lease`] and [`Store::renew_lease`]
/// found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// This holder has it, with this term.
    Mine { term: u64 },
    /// Another holder has it (or had it: `expires_in_ms` is 0 once it lapsed and nobody took
    /// it yet); `term` is its term (0: nobody ever held it).
    Other { term: u64, holder: String, expires_in_ms: u64 },
}

impl From<StoreError> for assim_store::QueryError {
    fn from(e: StoreError) -> assim_store::QueryError {
        match e {
            StoreError::TooLarge => assim_store::QueryError::TooLarge,
            e => assim_store::QueryError::backend(e),
        }
    }
}

fn pg(what: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { what, source }
}

const SCHEMA_VERSION: i64 = 2;

/// How long connecting may take unless the connection string says otherwise.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks a connection string without connecting (the error never repeats the password).
pub fn check_conninfo(conninfo: &str) -> Result<(), StoreError> {
    conninfo.parse::<postgres::Config>().map(drop).map_err(StoreError::Config)
}

/// Schema migrations: `(version, sql)` brings a database at `version - 1` to `version`; each
/// runs in one transaction with the version bump, under an advisory lock so two CMAs starting
/// together do not both migrate. Append new steps (and raise [`SCHEMA_VERSION`]); never edit a
/// released one. Version 1 is the SQLite store's schema 7 in PostgreSQL types (`TEXT` below
/// is replaced by `text COLLATE "C"`). Version 2 adds the statistics queue for Graphite
/// ([`statistics`]).
const MIGRATIONS: &[(i64, &str)] = &[(1, SCHEMA_1), (2, SCHEMA_2)];

/// The durable queue of statistics points on their way to Graphite (see [`statistics`]); ids
/// are given by the engine's batch from `meta.stat_outbox_next`, never reused.
const SCHEMA_2: &str = "
CREATE TABLE stat_outbox (
    id bigint PRIMARY KEY, path TEXT NOT NULL, value double precision NOT NULL, at bigint NOT NULL
);
";

/// The advisory lock key migrations hold (any fixed number; "assim" in ASCII).
const MIGRATION_LOCK: i64 = 0x61_73_73_69_6d;

const SCHEMA_1: &str = "
CREATE TABLE nodes (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, version TEXT NOT NULL,
    listen_addr TEXT NOT NULL, public_key bytea NOT NULL, addresses jsonb NOT NULL,
    state TEXT NOT NULL, since bigint NOT NULL, registered_at bigint NOT NULL,
    peer_epoch bigint NOT NULL, peers jsonb NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    id bigint PRIMARY KEY, time bigint NOT NULL, kind TEXT NOT NULL, host TEXT,
    hostname TEXT NOT NULL, tags jsonb NOT NULL, text TEXT NOT NULL,
    severity TEXT NOT NULL DEFAULT 'info', body jsonb
);
CREATE INDEX events_host ON events (host, id);
CREATE TABLE applied (node TEXT PRIMARY KEY, through bigint NOT NULL, count bigint NOT NULL);
CREATE TABLE spool_incarnations (node TEXT PRIMARY KEY, incarnation bigint NOT NULL);
CREATE TABLE discovery (
    node TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL, payload TEXT NOT NULL,
    collected_at bigint NOT NULL, updated_at bigint NOT NULL,
    PRIMARY KEY (node, name)
);
CREATE INDEX discovery_name ON discovery (name, node);
CREATE TABLE host_new_pending (node TEXT PRIMARY KEY, due_at bigint NOT NULL);
CREATE TABLE tokens (
    id bytea PRIMARY KEY, secret_sha256 bytea NOT NULL, created_at bigint NOT NULL,
    expires_at bigint NOT NULL, max_uses bigint NOT NULL, uses bigint NOT NULL
);
CREATE TABLE subscriptions (
    name TEXT PRIMARY KEY, filter TEXT NOT NULL, sink TEXT, cursor bigint NOT NULL,
    created_at bigint NOT NULL, updated_at bigint NOT NULL
);
CREATE TABLE dead_letters (
    id bigserial PRIMARY KEY, subscription TEXT NOT NULL, event_id bigint NOT NULL,
    attempts bigint NOT NULL, error TEXT NOT NULL, at bigint NOT NULL
);
CREATE INDEX dead_letters_by_subscription ON dead_letters (subscription, id);
CREATE TABLE check_sets (node TEXT PRIMARY KEY, epoch bigint NOT NULL, checks jsonb NOT NULL);
CREATE TABLE service_states (
    node TEXT NOT NULL, check_name TEXT NOT NULL, state TEXT NOT NULL, output TEXT NOT NULL,
    perfdata TEXT NOT NULL, flapping boolean NOT NULL, since bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (node, check_name)
);
CREATE TABLE manual_checks (
    node TEXT NOT NULL, name TEXT NOT NULL, spec jsonb NOT NULL, added_at bigint NOT NULL,
    PRIMARY KEY (node, name)
);
CREATE TABLE remembered_services (
    node TEXT NOT NULL, protocol TEXT NOT NULL, ip TEXT NOT NULL, port bigint NOT NULL,
    listener jsonb NOT NULL, seen bigint NOT NULL,
    PRIMARY KEY (node, protocol, ip, port)
);
CREATE TABLE node_wiring (
    node TEXT PRIMARY KEY, ring TEXT NOT NULL, source TEXT NOT NULL, wiring jsonb NOT NULL,
    inputs jsonb NOT NULL
);
CREATE INDEX node_wiring_ring ON node_wiring (ring);
CREATE TABLE rings (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, members jsonb NOT NULL,
    representatives jsonb NOT NULL, watchers jsonb NOT NULL
);
-- The engine lease (issue 14, leader election with fencing): one row; `term` rises at every
-- takeover; `expires_at` is µs on the database's clock.
CREATE TABLE engine_lease (
    id integer PRIMARY KEY CHECK (id = 1), term bigint NOT NULL, holder TEXT NOT NULL,
    expires_at bigint NOT NULL
);
CREATE TABLE topo_os (
    node TEXT PRIMARY KEY, os_name TEXT, os_version TEXT, kernel TEXT NOT NULL,
    machine TEXT NOT NULL, fqdn TEXT, machine_id TEXT, virtualisation TEXT NOT NULL,
    boot_time bigint
);
CREATE TABLE topo_cpu (node TEXT PRIMARY KEY, model TEXT, logical_cpus bigint NOT NULL);
CREATE TABLE topo_memory (node TEXT PRIMARY KEY, mem_total_kib bigint, swap_total_kib bigint);
CREATE TABLE topo_nics (
    node TEXT NOT NULL, name TEXT NOT NULL, mac TEXT, mtu bigint, speed_mbps bigint,
    duplex TEXT, state TEXT,
    PRIMARY KEY (node, name)
);
CREATE INDEX topo_nics_mac ON topo_nics (mac);
CREATE TABLE topo_ips (
    node TEXT NOT NULL, nic TEXT NOT NULL, ip TEXT NOT NULL, family bigint NOT NULL,
    prefix_len bigint NOT NULL, subnet TEXT NOT NULL, scope TEXT NOT NULL,
    PRIMARY KEY (node, nic, ip)
);
CREATE INDEX topo_ips_ip ON topo_ips (ip);
CREATE INDEX topo_ips_subnet ON topo_ips (subnet);
CREATE TABLE topo_arp (
    node TEXT NOT NULL, interface TEXT NOT NULL, ip TEXT NOT NULL, mac TEXT NOT NULL,
    PRIMARY KEY (node, interface, ip)
);
CREATE INDEX topo_arp_ip ON topo_arp (ip);
CREATE INDEX topo_arp_mac ON topo_arp (mac);
CREATE TABLE topo_processes (
    node TEXT NOT NULL, pid bigint NOT NULL, exe TEXT, cmdline TEXT NOT NULL, \"user\" TEXT,
    PRIMARY KEY (node, pid)
);
CREATE TABLE topo_services (
    node TEXT NOT NULL, protocol TEXT NOT NULL, ip TEXT NOT NULL, port bigint NOT NULL,
    pid bigint, exe TEXT, cmdline TEXT NOT NULL, \"user\" TEXT, loopback boolean NOT NULL,
    PRIMARY KEY (node, protocol, ip, port)
);
CREATE INDEX topo_services_port ON topo_services (port, protocol);
CREATE TABLE topo_connections (
    node TEXT NOT NULL, local_ip TEXT NOT NULL, local_port bigint NOT NULL,
    remote_ip TEXT NOT NULL, remote_port bigint NOT NULL, pid bigint, exe TEXT,
    inbound boolean NOT NULL,
    PRIMARY KEY (node, local_ip, local_port, remote_ip, remote_port)
);
CREATE INDEX topo_connections_remote ON topo_connections (remote_ip, remote_port);
CREATE TABLE topo_deps (
    client_node TEXT NOT NULL, client_pid bigint, client_exe TEXT,
    server_node TEXT NOT NULL, server_ip TEXT NOT NULL, port bigint NOT NULL,
    service_ip TEXT NOT NULL, server_pid bigint, server_exe TEXT, connections bigint NOT NULL
);
CREATE INDEX topo_deps_client ON topo_deps (client_node);
CREATE INDEX topo_deps_server ON topo_deps (server_node);
CREATE TABLE topo_packages (
    node TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, arch TEXT NOT NULL,
    manager TEXT NOT NULL,
    PRIMARY KEY (node, name, arch, version)
);
CREATE INDEX topo_packages_name ON topo_packages (name);
CREATE TABLE topo_ssh_keys (
    node TEXT NOT NULL, key_type TEXT NOT NULL, fingerprint TEXT NOT NULL, key TEXT NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (node, fingerprint)
);
CREATE INDEX topo_ssh_keys_fp ON topo_ssh_keys (fingerprint);
CREATE TABLE topo_wiring (
    node TEXT NOT NULL, nic TEXT NOT NULL, mac TEXT, protocol TEXT NOT NULL,
    chassis_id TEXT NOT NULL, port_id TEXT NOT NULL,
    PRIMARY KEY (node, nic, protocol, chassis_id, port_id)
);
CREATE INDEX topo_wiring_port ON topo_wiring (chassis_id, port_id);
CREATE TABLE topo_switches (
    chassis_id TEXT PRIMARY KEY, system_name TEXT, system_description TEXT, platform TEXT,
    capabilities TEXT NOT NULL, management_addresses TEXT NOT NULL, last_seen bigint NOT NULL
);
CREATE TABLE topo_switch_ports (
    chassis_id TEXT NOT NULL, port_id TEXT NOT NULL, description TEXT, vlan TEXT,
    last_seen bigint NOT NULL,
    PRIMARY KEY (chassis_id, port_id)
);
CREATE TABLE topo_history (
    id bigserial PRIMARY KEY, time bigint NOT NULL, node TEXT NOT NULL, collector TEXT NOT NULL,
    kind TEXT NOT NULL, added bigint NOT NULL, removed bigint NOT NULL, detail jsonb NOT NULL
);
CREATE INDEX topo_history_node ON topo_history (node, id);
CREATE TABLE monitors (
    node TEXT NOT NULL, protocol TEXT NOT NULL DEFAULT 'tcp', service_ip TEXT,
    port bigint NOT NULL, check_name TEXT NOT NULL
);
CREATE UNIQUE INDEX monitors_key
    ON monitors (node, protocol, port, COALESCE(service_ip, ''), check_name);
CREATE VIEW topo_subnets AS
    SELECT subnet, family, COUNT(DISTINCT node) AS hosts, COUNT(*) AS addresses
    FROM topo_ips WHERE scope <> 'host' GROUP BY subnet, family;
";

/// A text parameter as PostgreSQL can store it: NUL (which `text` and `jsonb` refuse) becomes
/// U+FFFD.
pub(crate) fn t(s: &str) -> Cow<'_, str> {
    if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(s) }
}

/// A value as `jsonb` text, NUL in its strings and keys replaced like [`t`].
pub(crate) fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    fn scrub(v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
            Value::Array(a) => a.iter_mut().for_each(scrub),
            Value::Object(m) => {
                let entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
                for (k, mut v) in entries {
                    scrub(&mut v);
                    m.insert(t(&k).into_owned(), v);
                }
            }
            _ => {}
        }
    }
    let text = serde_json::to_string(v).expect("store records serialize");
    if !text.contains("\\u0000") {
        return text;
    }
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("just serialized");
    scrub(&mut value);
    value.to_string()
}

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    cache: HashMap<String, Statement>,
}

/// A batch's transaction and the connection's statement cache.
pub(crate) struct Tx<'a> {
    tx: postgres::Transaction<'a>,
    cache: &'a mut HashMap<String, Statement>,
}

impl Tx<'_> {
    fn stmt(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.cache.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(crate) fn exec(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let s = self.stmt(sql)?;
        self.tx.execute(&s, params)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        let s = self.stmt(sql)?;
        self.tx.query(&s, params)
    }
}

/// The PostgreSQL store. The engine writes through one [`Store`]; every reader (the HTTP API,
/// the bus) opens its own. Calls block: never call it from an async task.
pub struct Store {
    config: postgres::Config,
    conn: RefCell<Option<Conn>>,
    /// The lease term this store's engine holds, checked by every batch (see the crate doc).
    fence: Option<u64>,
    /// `idle_in_transaction_session_timeout` of every connection, if set
    /// ([`Store::set_idle_in_transaction_timeout`]).
    idle_tx_timeout: Option<std::time::Duration>,
    /// The statistics queue's cap ([`Store::set_statistics_queue_max`]).
    statistics_max: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dbname", &self.config.get_dbname())
            .field("fence", &self.fence)
            .finish()
    }
}

/// Per-node application record: the highest spool record applied and how many were applied.
pub use assim_store_sqlite::Applied;
pub use handle::Handle;

impl Store {
    /// Connects (a libpq connection string, key-value or `postgres://` URL) and brings the
    /// schema up to date.
    pub fn open(conninfo: &str) -> Result<Store, StoreError> {
        let mut config: postgres::Config = conninfo.parse().map_err(StoreError::Config)?;
        if config.get_connect_timeout().is_none() {
            // An unreachable server fails a call in this long rather than the TCP default (about
            // two minutes); `connect_timeout` in the connection string overrides it.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let store = Store {
            config,
            conn: RefCell::new(None),
            fence: None,
            idle_tx_timeout: None,
            statistics_max: assim_store::statistics::DEFAULT_QUEUE_MAX,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The connection, (re)connected if it is missing or was lost (a server restart).
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.borrow_mut();
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            let mut client = self.config.connect(NoTls).map_err(pg("connecting"))?;
            if let Some(d) = self.idle_tx_timeout {
                client
                    .batch_execute(&idle_tx_sql(d))
                    .map_err(pg("setting idle_in_transaction_session_timeout"))?;
            }
            *slot = Some(Conn { client, cache: HashMap::new() });
        }
        let conn = slot.as_mut().expect("just connected");
        let out = f(conn);
        if conn.client.is_closed() {
            *slot = None;
        }
        out
    }

    /// Runs `f` in one transaction; commits if it returns `Ok`.
    pub(crate) fn transaction<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_conn(|c| {
            let tx = c.client.transaction().map_err(pg(what))?;
            let mut tx = Tx { tx, cache: &mut c.cache };
            let out = f(&mut tx)?;
            tx.tx.commit().map_err(pg(what))?;
            Ok(out)
        })
    }

    /// Runs one statement on its own (autocommit).
    pub(crate) fn exec(
        &self,
        what: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            let s = prepare(c, sql).map_err(pg(what))?;
            c.client.execute(&s, params).map_err(pg(what))
        })
    }

    /// The rows of one query, at most [`assim_store::MAX_ANSWER_ROWS`] ([`StoreError::TooLarge`]
    /// beyond: the rows are streamed and counted, never all held).
    pub(crate) fn rows<T>(
        &self,
        what: &'static str,
        sql: &str,
        params: Params<'_>,
        mut f: impl FnMut(&Row) -> Result<T, postgres::Error>,
    ) -> Result<Vec<T>, StoreError> {
        use postgres::fallible_iterator::FallibleIterator as _;
        self.with_conn(|c| {
            let s = prepare(c, sql).map_err(pg(what))?;
            let mut it = c.client.query_raw(&s, params.iter().copied()).map_err(pg(what))?;
            let mut out = Vec::new();
            while let Some(row) = it.next().map_err(pg(what))? {
                if out.len() == assim_store::MAX_ANSWER_ROWS {
                    return Err(StoreError::TooLarge);
                }
                out.push(f(&row).map_err(pg(what))?);
            }
            Ok(out)
        })
    }

    /// At most one row.
    pub(crate) fn row<T>(
        &self,
        what: &'static str,
        sql: &str,
        params: Params<'_>,
        f: impl FnMut(&Row) -> Result<T, postgres::Error>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(what, sql, params, f)?.into_iter().next())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let what = "migrating the schema";
        self.transaction(what, |tx| {
            tx.exec("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(pg(what))?;
            tx.exec("CREATE TABLE IF NOT EXISTS schema_version (version bigint NOT NULL)", &[])
                .map_err(pg(what))?;
            let found: i64 = tx
                .query("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
                .map_err(pg(what))?[0]
                .try_get(0)
                .map_err(pg(what))?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION });
            }
            for (to, sql) in MIGRATIONS {
                if *to > found {
                    let sql = sql.replace("TEXT", "text COLLATE \"C\"");
                    tx.tx.batch_execute(&sql).map_err(pg(what))?;
                }
            }
            if found < SCHEMA_VERSION {
                tx.exec("DELETE FROM schema_version", &[]).map_err(pg(what))?;
                tx.exec("INSERT INTO schema_version (version) VALUES ($1)", &[&SCHEMA_VERSION])
                    .map_err(pg(what))?;
            }
            Ok(())
        })
    }

    /// Makes the server end this store's session when it stays inside a transaction without a
    /// word for `d` (`idle_in_transaction_session_timeout`; now and at every reconnect). An
    /// engine sets it to its lease: a batch's transaction holds the lease row `FOR SHARE`, so
    /// an engine stopped (SIGSTOP) in the middle of one would otherwise block every takeover
    /// for as long as it stays stopped. When it runs again, its transaction fails and its next
    /// batch is fenced.
    pub fn set_idle_in_transaction_timeout(
        &mut self,
        d: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.idle_tx_timeout = Some(d);
        let mut slot = self.conn.borrow_mut();
        if let Some(c) = slot.as_mut().filter(|c| !c.client.is_closed()) {
            c.client
                .batch_execute(&idle_tx_sql(d))
                .map_err(pg("setting idle_in_transaction_session_timeout"))?;
        }
        Ok(())
    }

    /// Takes or renews the engine lease for `holder` for `ttl` (on the database's clock):
    /// the term this store now fences its batches with, or `None` while the lease runs for
    /// someone else. It is granted when nobody ever held it, when it lapsed, or as a renewal of
    /// the very term this store holds. Every grant that is not such a renewal raises the term,
    /// which deposes whoever held the previous one: its next batch fails with
    /// [`StoreError::Deposed`]. That includes another process of the same holder (a restart
    /// while the old process is stopped but alive, a lost answer to an earlier grant): a
    /// holder name alone never gets a running lease back, it waits for it to lapse like
    /// anyone else (a clean stop releases it at once, [`Store::release_lease`]).
    pub fn acquire_lease(
        &mut self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError> {
        let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        // Terms start at 1: 0 matches no row.
        let held = self.fence.map_or(0, |t| t as i64);
        let term = self.row(
            "taking the engine lease",
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us)
             INSERT INTO engine_lease AS l (id, term, holder, expires_at)
             SELECT 1, 1, $1, now.us + $2 FROM now
             ON CONFLICT (id) DO UPDATE SET
               term = CASE WHEN l.holder = EXCLUDED.holder AND l.term = $3 THEN l.term
                           ELSE l.term + 1 END,
               holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
             WHERE (l.holder = EXCLUDED.holder AND l.term = $3)
                OR l.expires_at < (SELECT us FROM now)
             RETURNING term",
            &[&t(holder), &ttl, &held],
            |r| r.try_get::<_, i64>(0),
        )?;
        match term {
            Some(t) => {
                self.fence = Some(t as u64);
                Ok(self.fence)
            }
            // A store that held a term keeps it: its batches must now fail with `Deposed`, not
            // go through unfenced.
            None => Ok(None),
        }
    }

    /// [`Store::acquire_lease`], and when another holder has the lease, who and for how long.
    pub fn try_acquire_lease(
        &mut self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseState, StoreError> {
        match self.acquire_lease(holder, ttl)? {
            Some(term) => Ok(LeaseState::Mine { term }),
            None => self.lease_state(),
        }
    }

    /// Extends the lease this store holds (its fencing term, for `holder`) by `ttl` from now on
    /// the database's clock. Never takes the lease and never changes the term: an engine that
    /// lost it, even if the lease lapsed again since, is told so (`Other`) rather than handed
    /// a new term with its old state. A store holding no term gets `Other`.
    pub fn renew_lease(
        &mut self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseState, StoreError> {
        let Some(held) = self.fence else { return self.lease_state() };
        let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        let renewed = self.row(
            "renewing the engine lease",
            "UPDATE engine_lease
             SET expires_at = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + $3
             WHERE id = 1 AND term = $1 AND holder = $2
             RETURNING term",
            &[&(held as i64), &t(holder), &ttl],
            |r| r.try_get::<_, i64>(0),
        )?;
        match renewed {
            Some(_) => Ok(LeaseState::Mine { term: held }),
            None => self.lease_state(),
        }
    }

    /// Ends this store's lease at once (a clean stop), so a standby need not wait for it to
    /// lapse. Only the term this store holds is ended; the store keeps fencing with it.
    pub fn release_lease(&mut self) -> Result<(), StoreError> {
        let Some(held) = self.fence else { return Ok(()) };
        self.exec(
            "releasing the engine lease",
            "UPDATE engine_lease SET expires_at = 0 WHERE id = 1 AND term = $1",
            &[&(held as i64)],
        )
        .map(drop)
    }

    /// Who holds the lease row now (`Other` whoever it is; `term` 0 when there is no row).
    pub fn lease_state(&self) -> Result<LeaseState, StoreError> {
        let row = self.row(
            "reading the engine lease",
            "SELECT term, holder, GREATEST(0, expires_at -
                 (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) / 1000
             FROM engine_lease WHERE id = 1",
            &[],
            |r| Ok((r.try_get::<_, i64>(0)?, r.try_get::<_, String>(1)?, r.try_get::<_, i64>(2)?)),
        )?;
        Ok(match row {
            Some((term, holder, ms)) => {
                LeaseState::Other { term: term as u64, holder, expires_in_ms: ms.max(0) as u64 }
            }
            None => LeaseState::Other { term: 0, holder: String::new(), expires_in_ms: 0 },
        })
    }

    /// Records `owner` as the owner of the inbox the stored inbox position counts in, fenced
    /// like a batch (fails with [`StoreError::Deposed`] once the lease was taken over). When
    /// the owner changes, the previous owner's last stored position is kept under its name and
    /// the stored position becomes `position` (the new owner's inbox position: everything
    /// before it is applied or dropped), since the old one counts records of another engine's
    /// inbox. The answer says who owned it before and, when `owner` owned it once, the position
    /// it had reached then: the records of its inbox after that one were acknowledged in its
    /// earlier term but never applied.
    pub fn claim_inbox(&mut self, owner: &str, position: u64) -> Result<InboxClaim, StoreError> {
        let what = "claiming the inbox position";
        let e = pg(what);
        let fence = self.fence;
        self.transaction(what, |tx| {
            check_fence(tx, fence, what)?;
            let get = |tx: &mut Tx<'_>, key: &str| -> Result<Option<String>, StoreError> {
                tx.query("SELECT value FROM meta WHERE key = $1", &[&key])
                    .map_err(&e)?
                    .first()
                    .map(|r| r.try_get::<_, String>(0))
                    .transpose()
                    .map_err(&e)
            };
            let previous = get(tx, "inbox_owner")?;
            let mine_key = format!("inbox_position_of:{}", t(owner));
            let mine_through = get(tx, &mine_key)?.and_then(|v| v.parse().ok());
            if previous.as_deref() != Some(owner) {
                let mut rows = vec![
                    ("inbox_owner".to_owned(), t(owner).into_owned()),
                    ("inbox_position".to_owned(), position.to_string()),
                ];
                if let (Some(p), Some(at)) = (&previous, get(tx, "inbox_position")?) {
                    rows.push((format!("inbox_position_of:{p}"), at));
                }
                tx.exec(
                    "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::text[])
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[
                        &rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
                        &rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
                    ],
                )
                .map_err(&e)?;
            }
            Ok(InboxClaim { previous, mine_through })
        })
    }

    /// The lease term this store fences its batches with, if any.
    pub fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.row("reading meta", "SELECT value FROM meta WHERE key = $1", &[&key], |r| r.try_get(0))
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
        self.exec(
            "writing meta",
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&t(key), &t(value)],
        )
        .map(drop)
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

    /// Applies a batch of core changes and events, and the inbox progress that produced them, in
    /// one transaction, fenced by the lease term if the store holds one. Of several ring or
    /// counter changes in one batch only the last is written; each node is written once with
    /// its last state.
    pub fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), StoreError> {
        let what = "applying a batch";
        let e = pg(what);
        let statistics_max = self.statistics_max;
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
        let fence = self.fence;
        self.transaction(what, |tx| {
            check_fence(tx, fence, what)?;
            // Rows of one kind go in one statement (arrays unnested server-side): one round
            // trip per kind, not per row.
            if !nodes.is_empty() {
                let ns: Vec<&NodeRecord> = nodes.values().copied().collect();
                tx.exec(
                    "INSERT INTO nodes (id, hostname, version, listen_addr, public_key, addresses,
                     state, since, registered_at, peer_epoch, peers)
                     SELECT u.id, u.hostname, u.version, u.listen_addr, u.public_key,
                            u.addresses::jsonb, u.state, u.since, u.registered_at, u.peer_epoch,
                            u.peers::jsonb
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                                 $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                                 $10::bigint[], $11::text[])
                          AS u(id, hostname, version, listen_addr, public_key, addresses, state,
                               since, registered_at, peer_epoch, peers)
                     ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname,
                       version = EXCLUDED.version, listen_addr = EXCLUDED.listen_addr,
                       public_key = EXCLUDED.public_key, addresses = EXCLUDED.addresses,
                       state = EXCLUDED.state, since = EXCLUDED.since,
                       registered_at = EXCLUDED.registered_at, peer_epoch = EXCLUDED.peer_epoch,
                       peers = EXCLUDED.peers",
                    &[
                        &ns.iter().map(|n| n.id.to_string()).collect::<Vec<_>>(),
                        &ns.iter().map(|n| t(&n.hostname)).collect::<Vec<_>>(),
                        &ns.iter().map(|n| t(&n.version)).collect::<Vec<_>>(),
                        &ns.iter().map(|n| n.listen_addr.to_string()).collect::<Vec<_>>(),
                        &ns.iter().map(|n| &n.public_key[..]).collect::<Vec<_>>(),
                        &ns.iter().map(|n| json(&n.addresses)).collect::<Vec<_>>(),
                        &ns.iter().map(|n| n.state.name()).collect::<Vec<_>>(),
                        &ns.iter().map(|n| n.since.0 as i64).collect::<Vec<_>>(),
                        &ns.iter().map(|n| n.registered_at.0 as i64).collect::<Vec<_>>(),
                        &ns.iter().map(|n| n.peer_epoch as i64).collect::<Vec<_>>(),
                        &ns.iter().map(|n| json(&n.peers)).collect::<Vec<_>>(),
                    ],
                )
                .map_err(&e)?;
            }
            // Each key at most once, so one upsert statement takes them all.
            let mut meta: Vec<(&str, String)> = Vec::new();
            if let Some(r) = ring {
                meta.push(("ring", json(r)));
            }
            if let Some((epoch, event_id)) = counters {
                meta.push(("next_epoch", epoch.to_string()));
                meta.push(("next_event_id", event_id.to_string()));
            }
            if let Some(pos) = progress.position {
                meta.push(("inbox_position", pos.to_string()));
            }
            if let Some(s) = &progress.schedule {
                meta.push(("discovery_schedule", t(&s.canonical).into_owned()));
                meta.push(("discovery_epoch", s.epoch.to_string()));
            }
            if !meta.is_empty() {
                tx.exec(
                    "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::text[])
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[
                        &meta.iter().map(|m| m.0).collect::<Vec<_>>(),
                        &meta.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
                    ],
                )
                .map_err(&e)?;
            }
            if !progress.applied.is_empty() {
                let applied = &progress.applied;
                tx.exec(
                    "INSERT INTO applied AS a (node, through, count)
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                     ON CONFLICT (node) DO UPDATE SET
                       through = GREATEST(a.through, EXCLUDED.through),
                       count = a.count + EXCLUDED.count",
                    &[
                        &applied.keys().map(|n| n.to_string()).collect::<Vec<_>>(),
                        &applied.values().map(|a| a.0 as i64).collect::<Vec<_>>(),
                        &applied.values().map(|a| a.1 as i64).collect::<Vec<_>>(),
                    ],
                )
                .map_err(&e)?;
            }
            // A new spool incarnation replaces the node's applied record (issue 16 item 9).
            for (node, inc) in &progress.incarnations {
                tx.exec(
                    "INSERT INTO spool_incarnations (node, incarnation) VALUES ($1, $2)
                     ON CONFLICT (node) DO UPDATE SET incarnation = EXCLUDED.incarnation",
                    &[&node.to_string(), &(inc.incarnation as i64)],
                )
                .map_err(&e)?;
                if inc.reset {
                    let through = progress.applied.get(node).map_or(0, |a| a.0);
                    tx.exec(
                        "UPDATE applied SET through = $2 WHERE node = $1",
                        &[&node.to_string(), &(through as i64)],
                    )
                    .map_err(&e)?;
                }
            }
            for d in &progress.discovery {
                // Before the result replaces the previous one: the graph diffs against it.
                topology::apply_discovery(tx, d).map_err(&e)?;
                tx.exec(
                    "INSERT INTO discovery (node, name, hash, payload, collected_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (node, name) DO UPDATE SET hash = EXCLUDED.hash,
                       payload = EXCLUDED.payload, collected_at = EXCLUDED.collected_at,
                       updated_at = EXCLUDED.updated_at",
                    &[
                        &d.node.to_string(),
                        &t(&d.name),
                        &t(&d.hash),
                        &t(&d.payload),
                        &(d.collected_at as i64),
                        &(d.updated_at as i64),
                    ],
                )
                .map_err(&e)?;
            }
            query::apply_services(tx, &progress.services).map_err(&e)?;
            statistics::append(tx, &progress.statistics, statistics_max).map_err(&e)?;
            for c in &progress.host_new {
                use assim_cma::host_new::HostNewChange;
                match c {
                    HostNewChange::Waiting { node, due_at } => tx.exec(
                        "INSERT INTO host_new_pending (node, due_at) VALUES ($1, $2)
                         ON CONFLICT (node) DO UPDATE SET due_at = EXCLUDED.due_at",
                        &[&node.to_string(), &(*due_at as i64)],
                    ),
                    HostNewChange::Raised(node) => tx
                        .exec("DELETE FROM host_new_pending WHERE node = $1", &[&node.to_string()]),
                }
                .map_err(&e)?;
            }
            query::apply_rings(tx, &wiring, &rings).map_err(&e)?;
            if !events.is_empty() {
                tx.exec(
                    "INSERT INTO events (id, time, kind, host, hostname, tags, text, severity, body)
                     SELECT u.id, u.time, u.kind, u.host, u.hostname, u.tags::jsonb, u.text,
                            u.severity, u.body::jsonb
                     FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::text[], $9::text[])
                          AS u(id, time, kind, host, hostname, tags, text, severity, body)
                     ON CONFLICT (id) DO NOTHING",
                    &[
                        &events.iter().map(|v| v.id as i64).collect::<Vec<_>>(),
                        &events.iter().map(|v| v.time.0 as i64).collect::<Vec<_>>(),
                        &events.iter().map(|v| v.kind.name()).collect::<Vec<_>>(),
                        &events.iter().map(|v| v.host.map(|h| h.to_string())).collect::<Vec<_>>(),
                        &events.iter().map(|v| t(&v.hostname)).collect::<Vec<_>>(),
                        &events.iter().map(|v| json(&v.tags)).collect::<Vec<_>>(),
                        &events.iter().map(|v| t(&v.text)).collect::<Vec<_>>(),
                        &events.iter().map(|v| v.severity.name()).collect::<Vec<_>>(),
                        &events.iter().map(|v| v.body.as_ref().map(json)).collect::<Vec<_>>(),
                    ],
                )
                .map_err(&e)?;
            }
            Ok(())
        })
    }

    /// The last inbox LSN whose effects are stored (0 if none).
    pub fn inbox_position(&self) -> Result<u64, StoreError> {
        Ok(self.meta_u64("inbox_position")?.unwrap_or(0))
    }

    /// Per node, the spool records applied so far.
    pub fn applied(&self) -> Result<BTreeMap<NodeId, Applied>, StoreError> {
        let rows = self.rows(
            "reading applied records",
            "SELECT node, through, count FROM applied",
            &[],
            |r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?, r.try_get::<_, i64>(2)?)),
        )?;
        let mut out = BTreeMap::new();
        for (node, through, count) in rows {
            out.insert(
                node_id("applied", &node)?,
                Applied { through: through as u64, count: count as u64 },
            );
        }
        Ok(out)
    }

    /// Per node, the spool incarnation (issue 16 item 9).
    pub fn spool_incarnations(&self) -> Result<BTreeMap<NodeId, u64>, StoreError> {
        let rows = self.rows(
            "reading spool incarnations",
            "SELECT node, incarnation FROM spool_incarnations",
            &[],
            |r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?)),
        )?;
        rows.into_iter().map(|(n, i)| Ok((node_id("spool_incarnations", &n)?, i as u64))).collect()
    }

    /// The latest discovery results of one node, by collector name.
    pub fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryRecord>, StoreError> {
        self.rows(
            "reading discovery results",
            "SELECT name, hash, payload, collected_at, updated_at FROM discovery
             WHERE node = $1 ORDER BY name",
            &[&node.to_string()],
            |r| {
                Ok(DiscoveryRecord {
                    node,
                    name: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    payload: r.try_get(2)?,
                    collected_at: r.try_get::<_, i64>(3)? as u64,
                    updated_at: r.try_get::<_, i64>(4)? as u64,
                })
            },
        )
    }

    /// Every node's latest result of collector `name`, by node.
    pub fn discovery_named(&self, name: &str) -> Result<Vec<DiscoveryRecord>, StoreError> {
        let rows = self.rows(
            "reading discovery results",
            "SELECT node, hash, payload, collected_at, updated_at FROM discovery
             WHERE name = $1 ORDER BY node",
            &[&name],
            |r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    r.try_get::<_, String>(1)?,
                    r.try_get::<_, String>(2)?,
                    r.try_get::<_, i64>(3)? as u64,
                    r.try_get::<_, i64>(4)? as u64,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(node, hash, payload, collected_at, updated_at)| {
                Ok(DiscoveryRecord {
                    node: node_id("discovery", &node)?,
                    name: name.to_owned(),
                    hash,
                    payload,
                    collected_at,
                    updated_at,
                })
            })
            .collect()
    }

    /// All nodes, ordered by hostname.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        type NodeRow =
            (String, String, String, String, Vec<u8>, String, String, i64, i64, i64, String);
        let rows: Vec<NodeRow> = self.rows(
            "reading nodes",
            "SELECT id, hostname, version, listen_addr, public_key, addresses::text, state,
                    since, registered_at, peer_epoch, peers::text
             FROM nodes ORDER BY hostname, id",
            &[],
            |r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                    r.try_get(8)?,
                    r.try_get(9)?,
                    r.try_get(10)?,
                ))
            },
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, hostname, version, listen, key, addrs, state, since, reg, epoch, peers) in rows {
            let corrupt = |detail: String| StoreError::Corrupt { table: "nodes", detail };
            out.push(NodeRecord {
                id: id.parse().map_err(|e| corrupt(format!("id {id:?}: {e}")))?,
                hostname,
                version,
                listen_addr: listen
                    .parse()
                    .map_err(|e| corrupt(format!("listen_addr {listen:?}: {e}")))?,
                public_key: key
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt(format!("public_key of {id}")))?,
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
        type EventRow =
            (i64, i64, String, Option<String>, String, String, String, String, Option<String>);
        let rows: Vec<EventRow> = self.rows(
            "reading events",
            "SELECT id, time, kind, host, hostname, tags::text, text, severity, body::text
             FROM events WHERE id > $1 ORDER BY id LIMIT $2",
            &[&(since as i64), &(limit.min(i64::MAX as usize) as i64)],
            |r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                    r.try_get(8)?,
                ))
            },
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, time, kind, host, hostname, tags, text, severity, body) in rows {
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
        let id =
            self.row("reading events", "SELECT COALESCE(MAX(id), 0) FROM events", &[], |r| {
                r.try_get::<_, i64>(0)
            })?;
        Ok(id.unwrap_or(0) as u64)
    }

    /// Stores a new enrollment token.
    pub fn add_token(&mut self, tk: &TokenRecord) -> Result<(), StoreError> {
        self.exec(
            "storing a join token",
            "INSERT INTO tokens (id, secret_sha256, created_at, expires_at, max_uses, uses)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &&tk.id[..],
                &&tk.secret_hash[..],
                &(tk.created_at.0 as i64),
                &(tk.expires_at.0 as i64),
                &(tk.max_uses as i64),
                &(tk.uses as i64),
            ],
        )
        .map(drop)
    }

    /// Looks a token up by id.
    pub fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        let row = self.row(
            "reading a join token",
            "SELECT id, secret_sha256, created_at, expires_at, max_uses, uses FROM tokens
             WHERE id = $1",
            &[&id],
            |r| {
                Ok((
                    r.try_get::<_, Vec<u8>>(0)?,
                    r.try_get::<_, Vec<u8>>(1)?,
                    r.try_get::<_, i64>(2)?,
                    r.try_get::<_, i64>(3)?,
                    r.try_get::<_, i64>(4)?,
                    r.try_get::<_, i64>(5)?,
                ))
            },
        )?;
        let Some((id, secret, created, expires, max_uses, uses)) = row else { return Ok(None) };
        let corrupt =
            || StoreError::Corrupt { table: "tokens", detail: format!("token {}", hex(&id)) };
        Ok(Some(TokenRecord {
            id: id.as_slice().try_into().map_err(|_| corrupt())?,
            secret_hash: secret.as_slice().try_into().map_err(|_| corrupt())?,
            created_at: Timestamp(created as u64),
            expires_at: Timestamp(expires as u64),
            max_uses: max_uses as u64,
            uses: uses as u64,
        }))
    }

    /// Counts one use of a token.
    pub fn use_token(&mut self, id: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "counting a join token's use",
            "UPDATE tokens SET uses = uses + 1 WHERE id = $1",
            &[&id],
        )
        .map(drop)
    }

    /// The desired state the core restores from (see `assim_store::desired`).
    pub fn load_desired(&self) -> Result<assim_cma::DesiredSnapshot, StoreError> {
        let schedule = match (self.meta("discovery_schedule")?, self.meta_u64("discovery_epoch")?) {
            (Some(canonical), epoch) => {
                Some(assim_cma::schedule::StoredSchedule { canonical, epoch: epoch.unwrap_or(0) })
            }
            (None, _) => None,
        };
        let latest = |name: &str| -> Result<Vec<(NodeId, String)>, StoreError> {
            Ok(self.discovery_named(name)?.into_iter().map(|d| (d.node, d.payload)).collect())
        };
        Ok(assim_store::desired::snapshot(assim_store::desired::StoredDesired {
            schedule,
            check_sets: self.check_sets()?,
            states: self.service_states()?,
            manual: self.manual_checks()?,
            remembered: self.remembered_services()?.into_iter().collect(),
            sockets: latest(assim_store::desired::SOCKETS)?,
            host_keys: latest(assim_cma::host_keys::COLLECTOR)?,
            security: latest(assim_cma::audit_watch::COLLECTOR)?,
            host_new: self.host_new_pending()?,
        }))
    }

    fn host_new_pending(&self) -> Result<Vec<assim_cma::host_new::StoredWaiting>, StoreError> {
        let rows = self.rows(
            "reading pending host.new",
            "SELECT p.node, p.due_at,
               (SELECT payload FROM discovery d WHERE d.node = p.node AND d.name = 'os'),
               (SELECT payload FROM discovery d WHERE d.node = p.node
                  AND d.name = 'ssh_host_keys')
             FROM host_new_pending p ORDER BY p.node",
            &[],
            |r| {
                Ok((
                    r.try_get::<_, String>(0)?,
                    r.try_get::<_, i64>(1)?,
                    r.try_get::<_, Option<String>>(2)?,
                    r.try_get::<_, Option<String>>(3)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(|(node, due_at, os, ssh_host_keys)| {
                Ok(assim_cma::host_new::StoredWaiting {
                    node: node_id("host_new_pending", &node)?,
                    due_at: due_at.max(0) as u64,
                    os,
                    ssh_host_keys,
                })
            })
            .collect()
    }

    /// Number of nodes in each state, by state name.
    pub fn count_by_state(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = self.rows(
            "counting nodes",
            "SELECT state, COUNT(*) FROM nodes GROUP BY state",
            &[],
            |r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)? as u64)),
        )?;
        Ok(rows.into_iter().collect())
    }
}

fn prepare(c: &mut Conn, sql: &str) -> Result<Statement, postgres::Error> {
    if let Some(s) = c.cache.get(sql) {
        return Ok(s.clone());
    }
    let s = c.client.prepare(sql)?;
    c.cache.insert(sql.to_owned(), s.clone());
    Ok(s)
}

pub(crate) fn node_id(table: &'static str, s: &str) -> Result<NodeId, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt { table, detail: format!("node id {s:?}") })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The statement that sets `idle_in_transaction_session_timeout` (whole milliseconds, at
/// least 1: 0 would turn it off).
fn idle_tx_sql(d: std::time::Duration) -> String {
    format!(
        "SET idle_in_transaction_session_timeout = {}",
        d.as_millis().clamp(1, i32::MAX as u128)
    )
}

/// Inside a transaction: fails with [`StoreError::Deposed`] unless the lease row still has the
/// term `fence` (no term: not fenced). The row is read `FOR SHARE`, so a takeover waits for
/// this transaction and this transaction sees a takeover that committed before it.
fn check_fence(tx: &mut Tx<'_>, fence: Option<u64>, what: &'static str) -> Result<(), StoreError> {
    let Some(held) = fence else { return Ok(()) };
    let e = pg(what);
    let rows = tx.query("SELECT term FROM engine_lease WHERE id = 1 FOR SHARE", &[]).map_err(&e)?;
    let current = match rows.first() {
        Some(r) => r.try_get::<_, i64>(0).map_err(&e)? as u64,
        None => 0,
    };
    if current != held {
        return Err(StoreError::Deposed { held, current });
    }
    Ok(())
}

/// The CMA engine's store seam over PostgreSQL: one transaction per batch.
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
        let failed = |e| assim_store::StoreFailed(Box::new(e));
        let key = self
            .row(
                "reading a node's key",
                "SELECT public_key FROM nodes WHERE id = $1",
                &[&node.to_string()],
                |r| r.try_get::<_, Vec<u8>>(0),
            )
            .map_err(failed)?;
        key.map(|k| {
            k.as_slice().try_into().map_err(|_| {
                failed(StoreError::Corrupt {
                    table: "nodes",
                    detail: format!("public key of {node}"),
                })
            })
        })
        .transpose()
    }
}
