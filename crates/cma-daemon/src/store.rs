//! Which storage engine the CMA runs on (`--store`, config key `store`), and the handles every
//! part of the daemon opens on it.
//!
//! - No `--store`: the embedded default, the SQLite file `DATA_DIR/cma.sqlite`.
//! - `sqlite:PATH`: an SQLite file elsewhere.
//! - `postgres://…` or `postgresql://…`: PostgreSQL (`assim-store-postgres`), which several
//!   `cma` processes can share; one of them applies records at a time (the engine lease,
//!   [`assim_cma_shell::lease`]).
//!
//! Every PostgreSQL handle is an [`assim_store_postgres::Handle`], a store on a thread of its
//! own, so it can be called and dropped from the async driver, the API and the bus alike. A
//! password in the URL is never printed: [`StoreUrl`]'s `Display` and `--print-config` show it
//! as `(set)`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use assim_store::{DiscoveryRecord, EngineStore, OpenEventLog, OpenQueries, Pruned, Tokens};
use assim_wire::Timestamp;

/// Where the CMA keeps its state.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL, as given (with its password, if any).
    Postgres(String),
}

/// How the engine names itself in the lease, when none is given: the host name and a random
/// id kept in `DATA_DIR/engine-id`, so a restarted engine is the same holder (it gets its lease
/// back at once) and two engines never share a name unless their data directory was copied.
pub const ENGINE_ID_FILE: &str = "engine-id";

impl StoreUrl {
    /// The default: `DATA_DIR/cma.sqlite`.
    pub fn default_for(data_dir: &Path) -> StoreUrl {
        StoreUrl::Sqlite(crate::cma::store_path(data_dir))
    }

    /// Parses `--store`. The error names the accepted forms and never repeats a password.
    pub fn parse(text: &str) -> anyhow::Result<StoreUrl> {
        let text = text.trim();
        if text.len() > 4096 {
            anyhow::bail!("--store is longer than 4096 bytes");
        }
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                anyhow::bail!(
                    "--store sqlite:PATH needs a file path, for example sqlite:/var/lib/assim/cma/cma.sqlite"
                );
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            assim_store_postgres::check_conninfo(text).map_err(|e| {
                anyhow::anyhow!(
                    "--store {}: {e}; expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE \
                     (a Unix socket: postgres://USER@/DATABASE?host=/run/postgresql)",
                    redact(text)
                )
            })?;
            return Ok(StoreUrl::Postgres(text.to_owned()));
        }
        anyhow::bail!(
            "--store {}: expected postgres://USER@HOST[:PORT]/DATABASE (or postgresql://…) for \
             PostgreSQL, or sqlite:PATH for an SQLite file; without --store the CMA uses \
             DATA_DIR/cma.sqlite",
            redact(text)
        )
    }

    /// `sqlite` or `postgresql`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreUrl::Sqlite(_) => "sqlite",
            StoreUrl::Postgres(_) => "postgresql",
        }
    }

    /// The URL as `--print-config` writes it: the password replaced by `(set)`.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            StoreUrl::Postgres(u) => redact(u),
        }
    }

    /// Opens a read handle on the store for every call (the API's readers).
    pub fn queries_opener(&self) -> OpenQueries {
        match self {
            StoreUrl::Sqlite(p) => assim_store_sqlite::queries::queries_opener(p.clone()),
            StoreUrl::Postgres(u) => assim_store_postgres::query::queries_opener(u.clone()),
        }
    }

    /// Opens an event-log handle for every call (the bus, the API's event routes).
    pub fn event_log_opener(&self) -> OpenEventLog {
        match self {
            StoreUrl::Sqlite(p) => assim_store_sqlite::bus::event_log_opener(p.clone()),
            StoreUrl::Postgres(u) => assim_store_postgres::bus::event_log_opener(u.clone()),
        }
    }

    /// Opens the Graphite forwarder's handle on the statistics queue, each time it is called
    /// (the forwarder opens it again after a failure).
    pub fn statistics_outbox_opener(&self) -> crate::graphite::OpenOutbox {
        match self {
            StoreUrl::Sqlite(p) => {
                let p = p.clone();
                Box::new(move || {
                    Ok(Box::new(assim_store_sqlite::Store::open(&p)?)
                        as Box<dyn assim_store::StatisticsOutbox>)
                })
            }
            StoreUrl::Postgres(u) => {
                let u = u.clone();
                let redacted = redact(&u);
                Box::new(move || {
                    let h = assim_store_postgres::Handle::open(&u)
                        .with_context(|| format!("cannot open the store {redacted}"))?;
                    Ok(Box::new(h) as Box<dyn assim_store::StatisticsOutbox>)
                })
            }
        }
    }

    /// Opens the engine's store. On PostgreSQL a failure names the fix.
    pub fn open_engine(&self) -> anyhow::Result<EngineDb> {
        match self {
            StoreUrl::Sqlite(p) => Ok(EngineDb::Sqlite(
                assim_store_sqlite::Store::open(p)
                    .with_context(|| format!("cannot open the store {}", p.display()))?,
            )),
            StoreUrl::Postgres(u) => Ok(EngineDb::Postgres(
                assim_store_postgres::Handle::open(u).map_err(|e| self.unreachable(e))?,
            )),
        }
    }

    /// The error for a PostgreSQL store that cannot be opened: what failed and what to check.
    pub fn unreachable(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot use the PostgreSQL store {}: {e}. Check that the server runs and accepts \
             connections from this host (pg_hba.conf), that the user, password and database \
             in the URL are right, and that the database exists (createdb)",
            self.redacted()
        )
    }

    /// A function that deletes old topology history, a bounded batch per call, through a
    /// handle of its own (opened at the first call). Call it from a blocking thread.
    pub fn history_pruner(&self) -> HistoryPruner {
        let url = self.clone();
        let mut opened: Option<Pruner> = None;
        Box::new(move |older_than: Timestamp, keep: u64, batch: usize| -> anyhow::Result<Pruned> {
            if opened.is_none() {
                opened = Some(match &url {
                    StoreUrl::Sqlite(p) => Pruner::Sqlite(assim_store_sqlite::Store::open(p)?),
                    StoreUrl::Postgres(u) => {
                        Pruner::Postgres(assim_store_postgres::Handle::open(u)?)
                    }
                });
            }
            Ok(match opened.as_mut().expect("just opened") {
                Pruner::Sqlite(s) => s.prune_topo_history(older_than, keep, batch)?,
                Pruner::Postgres(h) => {
                    h.call(move |s| s.prune_topo_history(older_than, keep, batch))?
                }
            })
        })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

/// Deletes topology history: `(older than, keep at most, batch)` → what it deleted.
pub type HistoryPruner =
    Box<dyn FnMut(Timestamp, u64, usize) -> anyhow::Result<Pruned> + Send + 'static>;

enum Pruner {
    Sqlite(assim_store_sqlite::Store),
    Postgres(assim_store_postgres::Handle),
}

pub use assim_util::redact_url as redact;

/// This engine's name in the lease: `HOST/ID` (see [`ENGINE_ID_FILE`]). Creates the id file
/// (mode 0600) at the first start.
pub fn engine_holder(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ENGINE_ID_FILE);
    let id = match std::fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim().to_owned();
            anyhow::ensure!(
                s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()),
                "{} does not hold an engine id (16 hex digits); delete it to get a new one",
                path.display()
            );
            s
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = format!("{:016x}", rand::random::<u64>());
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(f, "{s}").and_then(|()| f.sync_all())?;
            s
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    Ok(format!("{host}/{id}"))
}

/// The engine's store: the embedded SQLite file or a PostgreSQL handle.
#[derive(Debug)]
pub enum EngineDb {
    Sqlite(assim_store_sqlite::Store),
    Postgres(assim_store_postgres::Handle),
}

impl EngineDb {
    /// The latest result of collector `name` on every node.
    pub fn discovery_named(&self, name: &str) -> anyhow::Result<Vec<DiscoveryRecord>> {
        Ok(match self {
            EngineDb::Sqlite(s) => s.discovery_named(name)?,
            EngineDb::Postgres(h) => h.discovery_named(name)?,
        })
    }

    /// The newest stored event id.
    pub fn last_event_id(&self) -> anyhow::Result<u64> {
        Ok(match self {
            EngineDb::Sqlite(s) => s.last_event_id()?,
            EngineDb::Postgres(h) => h.call(|s| s.last_event_id())?,
        })
    }

    /// Writes a metadata value.
    pub fn set_meta(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        match self {
            EngineDb::Sqlite(s) => s.set_meta(key, value)?,
            EngineDb::Postgres(h) => {
                let (key, value) = (key.to_owned(), value.to_owned());
                h.call(move |s| s.set_meta(&key, &value))?
            }
        }
        Ok(())
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(match self {
            EngineDb::Sqlite(s) => s.meta(key)?,
            EngineDb::Postgres(h) => {
                let key = key.to_owned();
                h.call(move |s| s.meta(&key))?
            }
        })
    }

    /// The event log through this handle (installing the `[bus]` sinks at start).
    pub fn event_log(&mut self) -> &mut dyn assim_store::EventLog {
        match self {
            EngineDb::Sqlite(s) => s,
            EngineDb::Postgres(h) => h,
        }
    }
}

impl EngineStore for EngineDb {
    fn load(&mut self) -> Result<assim_store::Loaded, assim_store::StoreFailed> {
        match self {
            EngineDb::Sqlite(s) => EngineStore::load(s),
            EngineDb::Postgres(h) => EngineStore::load(h),
        }
    }

    fn apply(
        &mut self,
        changes: &[assim_cma::Change],
        events: &[assim_cma::Event],
        progress: &assim_store::InboxProgress,
    ) -> Result<(), assim_store::StoreFailed> {
        match self {
            EngineDb::Sqlite(s) => EngineStore::apply(s, changes, events, progress),
            EngineDb::Postgres(h) => EngineStore::apply(h, changes, events, progress),
        }
    }
}

impl Tokens for EngineDb {
    fn token(
        &self,
        id: &[u8],
    ) -> Result<Option<assim_store::TokenRecord>, assim_store::StoreFailed> {
        match self {
            EngineDb::Sqlite(s) => Tokens::token(s, id),
            EngineDb::Postgres(h) => Tokens::token(h, id),
        }
    }

    fn use_token(&mut self, id: &[u8]) -> Result<(), assim_store::StoreFailed> {
        match self {
            EngineDb::Sqlite(s) => Tokens::use_token(s, id),
            EngineDb::Postgres(h) => Tokens::use_token(h, id),
        }
    }

    fn registered_key(
        &self,
        node: assim_wire::NodeId,
    ) -> Result<Option<[u8; 32]>, assim_store::StoreFailed> {
        match self {
            EngineDb::Sqlite(s) => Tokens::registered_key(s, node),
            EngineDb::Postgres(h) => Tokens::registered_key(h, node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn store_urls_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            StoreUrl::parse("sqlite:/var/lib/x.sqlite").unwrap(),
            StoreUrl::Sqlite("/var/lib/x.sqlite".into())
        );
        let pg = StoreUrl::parse("postgres://cma:s3cret@db.example.com:5433/assim").unwrap();
        assert_eq!(pg.kind(), "postgresql");
        assert_eq!(pg.to_string(), "postgres://cma:(set)@db.example.com:5433/assim");
        assert!(!format!("{pg:?}").contains("s3cret"));
        let sock = StoreUrl::parse("postgresql://assim@/cma?host=/run/postgresql&port=5432");
        assert_eq!(sock.unwrap().kind(), "postgresql");
        for bad in ["mysql://x/y", "cma.sqlite", "", "sqlite:"] {
            let e = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("postgres://") || e.contains("sqlite:PATH"), "{bad:?}: {e}");
        }
        // A URL that does not parse: the error names the form and hides the password.
        let e = StoreUrl::parse("postgres://cma:hunter2@db:notaport/assim").unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("postgres://USER") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn passwords_in_query_parameters_are_redacted_too() {
        assert_eq!(
            redact("postgresql://u@h/db?sslmode=disable&password=pw&Password=x"),
            "postgresql://u@h/db?sslmode=disable&password=(set)&Password=(set)"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h"), "postgres://h");
    }

    proptest! {
        /// Whatever the password (URL-safe or percent-encoded), the redacted URL does not
        /// contain it, and everything else is kept.
        #[test]
        fn redaction_never_shows_the_password(
            pw in "PW[A-Za-z0-9%._~!$*+,;=-]{1,40}",
            user in "[a-z]{1,8}",
            host in "[a-z]{1,12}(:[0-9]{1,5})?",
            db in "[a-z]{1,8}",
        ) {
            for url in [
                format!("postgres://{user}:{pw}@{host}/{db}"),
                format!("postgresql://{user}@{host}/{db}?password={pw}&sslmode=prefer"),
            ] {
                let r = redact(&url);
                prop_assert!(!r.contains(&pw), "{} → {}", url, r);
                prop_assert!(r.contains(&host) && r.contains(&db) && r.contains(&user), "{}", r);
            }
        }
    }
}
