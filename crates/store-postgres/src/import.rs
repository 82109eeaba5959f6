//! Moving an embedded CMA to PostgreSQL (`cma import --from FILE`, issue 14): copies every
//! table of an SQLite store into an empty PostgreSQL store, in one transaction.
//!
//! The copy is driven by the PostgreSQL schema: for each of its tables (but the engine lease)
//! every column is read from the SQLite table of the same name and converted to the column's
//! PostgreSQL type — integers to `bigint`, JSON text to `jsonb` (checked, a NUL becomes U+FFFD as
//! on every write of this store), hex text or blobs to `bytea`, 0/1 to `boolean`. A column the
//! SQLite store lacks fails the import, unless PostgreSQL has a default for it. Afterwards every
//! sequence behind a column default (`bigserial`) and the statistics queue's id counter continue
//! after the imported rows, and every table's row count is compared with the source's.
//!
//! Refused, with nothing written: a PostgreSQL store that already holds a CMA's state (nodes,
//! events or metadata), and an SQLite store whose schema is not this build's (open it with this
//! build's `cma` once). The caller checks that the embedded CMA is stopped and that its inbox
//! holds nothing unapplied (`cma import` does).

use std::path::Path;

use crate::{Store, StoreError, pg, t};

/// Rows inserted per statement.
const CHUNK: usize = 1000;

/// Tables that belong to a running PostgreSQL cluster, not to the state being moved.
const NOT_COPIED: &[&str] = &["engine_lease", "schema_version"];

/// Why an import stopped (nothing was written to PostgreSQL).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the SQLite store {path}: {detail}")]
    Sqlite { path: String, detail: String },
    #[error(
        "the PostgreSQL store already holds a CMA's state ({nodes} nodes, {events} events, \
         {meta} metadata rows); import into an empty database (createdb a new one)"
    )]
    NotEmpty { nodes: i64, events: i64, meta: i64 },
    #[error("{table}.{column}: {detail}")]
    Value { table: String, column: String, detail: String },
    #[error(
        "the SQLite store has no column {table}.{column}; open it once with this build's `cma` \
         (which brings its schema up to date), stop it cleanly, and import again"
    )]
    MissingColumn { table: String, column: String },
    #[error("{table}: {copied} rows written but {found} found in PostgreSQL afterwards")]
    Count { table: String, copied: u64, found: i64 },
    #[error(transparent)]
    Postgres(#[from] StoreError),
}

/// What was copied: each table with its row count, in copy order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub tables: Vec<(String, u64)>,
}

impl Imported {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// A PostgreSQL column: name, type (as `information_schema` names it), its default if any.
struct Column {
    name: String,
    ty: String,
    default: Option<String>,
}

impl Column {
    /// A `bigserial` column: its default draws from a sequence.
    fn is_serial(&self) -> bool {
        self.default.as_deref().is_some_and(|d| d.starts_with("nextval("))
    }
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> ImportError + '_ {
    move |e| ImportError::Sqlite { path: path.display().to_string(), detail: e.to_string() }
}

/// The rows of `table`.
fn count(tx: &mut crate::Tx<'_>, table: &str) -> Result<i64, postgres::Error> {
    tx.query(&format!("SELECT COUNT(*) FROM \"{table}\""), &[])?[0].try_get(0)
}

/// `NotEmpty` if the store already holds a CMA's state (nodes, events or metadata).
fn holds_state(tx: &mut crate::Tx<'_>) -> Result<Option<ImportError>, postgres::Error> {
    let (nodes, events, meta) = (count(tx, "nodes")?, count(tx, "events")?, count(tx, "meta")?);
    Ok((nodes + events + meta > 0).then_some(ImportError::NotEmpty { nodes, events, meta }))
}

/// Refuses a store that already holds a CMA's state (nodes, events or metadata).
pub fn check_empty(store: &Store) -> Result<(), ImportError> {
    let what = "checking the import's target";
    match store.transaction(what, |tx| holds_state(tx).map_err(pg(what)))? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies the SQLite store at `sqlite` into `store`, which must be empty. `progress` is told
/// each table and its row count as it is copied.
pub fn import_sqlite(
    sqlite: &Path,
    store: &Store,
    mut progress: impl FnMut(&str, u64),
) -> Result<Imported, ImportError> {
    let src = rusqlite::Connection::open_with_flags(
        sqlite,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(sqlite))?;
    let version: i64 =
        src.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sqlite_err(sqlite))?;
    if version != assim_store_sqlite::SCHEMA_VERSION {
        return Err(ImportError::Sqlite {
            path: sqlite.display().to_string(),
            detail: format!(
                "its schema is version {version}, this build's is {}; open it once with this \
                 build's `cma` (which brings it up to date), stop it cleanly, and import again",
                assim_store_sqlite::SCHEMA_VERSION
            ),
        });
    }
    let what = "importing an SQLite store";
    // A refusal inside the transaction is kept here and the transaction rolled back.
    let mut refused = None;
    let done = store.transaction(what, |tx| {
        let mut refuse = |e: ImportError| {
            refused = Some(e);
            Err(StoreError::Gone("the import was refused; nothing was written".into()))
        };
        if let Some(e) = holds_state(tx).map_err(pg(what))? {
            return refuse(e);
        }
        let tables: Vec<String> = tx
            .query(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
                 ORDER BY table_name",
                &[],
            )
            .map_err(pg(what))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg(what))?;
        let mut out = Imported::default();
        for table in tables.iter().filter(|t| !NOT_COPIED.contains(&t.as_str())) {
            let columns: Vec<Column> = tx
                .query(
                    "SELECT column_name::text, data_type::text, column_default::text
                     FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1
                     ORDER BY ordinal_position",
                    &[table],
                )
                .map_err(pg(what))?
                .iter()
                .map(|r| {
                    Ok(Column { name: r.try_get(0)?, ty: r.try_get(1)?, default: r.try_get(2)? })
                })
                .collect::<Result<_, postgres::Error>>()
                .map_err(pg(what))?;
            let copied = match copy_table(&src, sqlite, tx, table, &columns) {
                Ok(n) => n,
                Err(ImportError::Postgres(e)) => return Err(e),
                Err(e) => return refuse(e),
            };
            let found = count(tx, table).map_err(pg(what))?;
            if found != copied as i64 {
                return refuse(ImportError::Count { table: table.clone(), copied, found });
            }
            // Sequences go on after the imported ids.
            for c in columns.iter().filter(|c| c.is_serial()) {
                tx.exec(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('\"{table}\"', '{col}'),
                                       COALESCE((SELECT MAX(\"{col}\") FROM \"{table}\"), 0) + 1,
                                       false)",
                        col = c.name
                    ),
                    &[],
                )
                .map_err(pg(what))?;
            }
            progress(table, copied);
            out.tables.push((table.clone(), copied));
        }
        // So does the statistics queue's counter (kept in meta, see `statistics`).
        tx.exec(
            "INSERT INTO meta (key, value)
             SELECT 'stat_outbox_next', (MAX(id) + 1)::text FROM stat_outbox HAVING COUNT(*) > 0",
            &[],
        )
        .map_err(pg(what))?;
        Ok(out)
    });
    match (done, refused) {
        (_, Some(e)) => Err(e),
        (Ok(out), None) => Ok(out),
        (Err(e), None) => Err(e.into()),
    }
}

/// Copies one table; returns the rows copied.
fn copy_table(
    src: &rusqlite::Connection,
    path: &Path,
    tx: &mut crate::Tx<'_>,
    table: &str,
    columns: &[Column],
) -> Result<u64, ImportError> {
    let exists: bool = src
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .map_err(sqlite_err(path))?;
    if !exists {
        return Ok(0);
    }
    let have: Vec<String> = src
        .prepare(&format!("PRAGMA table_info(\"{table}\")"))
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(1))?.collect())
        .map_err(sqlite_err(path))?;
    let mut used = Vec::new();
    for c in columns {
        if have.contains(&c.name) {
            used.push(c);
        } else if c.default.is_none() {
            return Err(ImportError::MissingColumn { table: table.into(), column: c.name.clone() });
        }
    }
    if used.is_empty() {
        return Ok(0);
    }
    let names: Vec<String> = used.iter().map(|c| format!("\"{}\"", c.name)).collect();
    let mut select = src
        .prepare(&format!("SELECT {} FROM \"{table}\"", names.join(", ")))
        .map_err(sqlite_err(path))?;
    let casts: Vec<String> =
        used.iter().enumerate().map(|(i, c)| format!("u.c{i}::{}", c.ty)).collect();
    let params: Vec<String> = (1..=used.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..used.len()).map(|i| format!("c{i}")).collect();
    let insert = format!(
        "INSERT INTO \"{table}\" ({}) SELECT {} FROM unnest({}) AS u({})",
        names.join(", "),
        casts.join(", "),
        params.join(", "),
        aliases.join(", ")
    );
    let mut chunk: Vec<Vec<Option<String>>> = vec![Vec::new(); used.len()];
    let mut copied = 0u64;
    let mut rows = select.query([]).map_err(sqlite_err(path))?;
    let flush = |tx: &mut crate::Tx<'_>, chunk: &mut Vec<Vec<Option<String>>>| {
        if chunk[0].is_empty() {
            return Ok(());
        }
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            chunk.iter().map(|c| c as &(dyn postgres::types::ToSql + Sync)).collect();
        tx.exec(&insert, &refs).map_err(pg("importing an SQLite store"))?;
        for c in chunk.iter_mut() {
            c.clear();
        }
        Ok::<(), StoreError>(())
    };
    while let Some(row) = rows.next().map_err(sqlite_err(path))? {
        for (i, c) in used.iter().enumerate() {
            let v = row.get_ref(i).map_err(sqlite_err(path))?;
            let text = convert(v, &c.ty).map_err(|detail| ImportError::Value {
                table: table.into(),
                column: c.name.clone(),
                detail,
            })?;
            chunk[i].push(text);
        }
        copied += 1;
        if chunk[0].len() == CHUNK {
            flush(tx, &mut chunk)?;
        }
    }
    flush(tx, &mut chunk)?;
    Ok(copied)
}

/// One SQLite value as the text form of PostgreSQL type `ty` (cast in the INSERT).
fn convert(v: rusqlite::types::ValueRef<'_>, ty: &str) -> Result<Option<String>, String> {
    use rusqlite::types::ValueRef;
    let text = |b: &[u8]| {
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| "text that is not UTF-8".to_owned())
    };
    Ok(Some(match (v, ty) {
        (ValueRef::Null, _) => return Ok(None),
        (ValueRef::Integer(i), "bigint" | "integer" | "double precision" | "text") => i.to_string(),
        (ValueRef::Integer(i), "boolean") => match i {
            0 => "false".into(),
            1 => "true".into(),
            _ => return Err(format!("{i} is not a boolean (0 or 1)")),
        },
        (ValueRef::Real(f), "double precision") => format!("{f:?}"),
        (ValueRef::Text(b), "bigint" | "integer") => {
            let s = text(b)?;
            s.trim().parse::<i64>().map_err(|_| format!("{s:?} is not an integer"))?;
            s
        }
        (ValueRef::Text(b), "text") => t(&text(b)?).into_owned(),
        (ValueRef::Text(b), "jsonb" | "json") => {
            let s = text(b)?;
            let value: serde_json::Value =
                serde_json::from_str(&s).map_err(|e| format!("not JSON ({e})"))?;
            crate::json(&value)
        }
        (ValueRef::Text(b), "bytea") => {
            let s = text(b)?;
            if s.len() % 2 != 0 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err("text that is not hex, for a bytea column".into());
            }
            format!("\\x{s}")
        }
        (ValueRef::Blob(b), "bytea") => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        (v, ty) => return Err(format!("a {:?} value for a {ty} column", v.data_type())),
    }))
}
