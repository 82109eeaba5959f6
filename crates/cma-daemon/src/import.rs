//! `cma import`: moves an embedded CMA's state (the SQLite store in its data directory) into
//! the empty PostgreSQL store that `--store postgres://…` names, the first step from one
//! process to the cluster mode (docs/cluster.md, "From an embedded CMA").
//!
//! Before copying it makes sure nothing is lost or changes meanwhile: the embedded CMA must be
//! stopped (its inbox directory's lock is taken and held for the whole import, so it cannot
//! start either), and its inbox must hold no record beyond the store's position (records
//! acknowledged to nanoprobes but not applied yet, which a clean stop applies). The copy itself
//! is `assim_store_postgres::import`: one transaction, refused into a database that already
//! holds a CMA's state.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use assim_log::{FileStorage, LogConfig};
use assim_store::{Inbox as _, LogInbox};

use crate::cma::CmaOptions;
use crate::store::StoreUrl;

/// Runs `cma import`: `from` is the embedded CMA's data directory (default: `--data-dir`).
pub fn run(opts: &CmaOptions, from: Option<PathBuf>) -> anyhow::Result<()> {
    let StoreUrl::Postgres(url) = &opts.store else {
        bail!(
            "cma import copies an embedded CMA's SQLite store into PostgreSQL: name the target \
             with --store postgres://USER@HOST/DATABASE (an empty database) and the embedded \
             CMA's data directory with --from DIR"
        );
    };
    let dir = from.unwrap_or_else(|| opts.data_dir.clone());
    let file = crate::cma::store_path(&dir);
    if !file.is_file() {
        bail!(
            "{} does not exist: --from must name the data directory of the embedded CMA to move \
             (the one holding cma.sqlite)",
            file.display()
        );
    }
    let target = assim_store_postgres::Store::open(url).map_err(|e| opts.store.unreachable(e))?;
    assim_store_postgres::import::check_empty(&target)?;
    let _inbox = check_inbox_applied(&dir, &file)?;
    eprintln!("importing {} into {}", file.display(), opts.store.redacted());
    let imported = assim_store_postgres::import::import_sqlite(&file, &target, |table, rows| {
        if rows > 0 {
            eprintln!("  {table}: {rows} rows");
        }
    })?;
    eprintln!(
        "imported {} rows from {} tables. Next: copy {dir}/node_id and {dir}/node.key (mode \
         0600) into every engine's data directory (the nanoprobes trust that identity), then \
         start the engines with --store {} (docs/cluster.md)",
        imported.rows(),
        imported.tables.iter().filter(|(_, n)| *n > 0).count(),
        opts.store.redacted(),
        dir = dir.display(),
    );
    Ok(())
}

/// Takes the embedded CMA's inbox (its lock: the CMA is not running and cannot start) and
/// checks that every record in it is applied. Returns the inbox, to be held while importing.
fn check_inbox_applied(dir: &Path, file: &Path) -> anyhow::Result<Option<LogInbox<FileStorage>>> {
    let inbox_dir = dir.join("inbox");
    if !inbox_dir.exists() {
        return Ok(None);
    }
    let storage = FileStorage::open(&inbox_dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ResourceBusy {
            anyhow::anyhow!(
                "the embedded CMA in {} is running (its inbox is locked): stop it cleanly first \
                 (a clean stop applies every record it acknowledged), then import",
                dir.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot open the inbox {}", inbox_dir.display()))
        }
    })?;
    let mut storage = Some(storage);
    let mut inbox = LogInbox::open(
        move || {
            storage.take().ok_or_else(|| assim_log::LogError::Io {
                file: "inbox".into(),
                op: "reopening",
                source: std::io::Error::other("the inbox is opened once by cma import"),
            })
        },
        LogConfig::default(),
    )
    .with_context(|| format!("cannot read the inbox {}", inbox_dir.display()))?;
    let position = assim_store_sqlite::Store::open(file)
        .and_then(|s| s.inbox_position())
        .with_context(|| format!("cannot read {}", file.display()))?;
    let waiting = inbox
        .read_from(position + 1)
        .with_context(|| format!("cannot read the inbox {}", inbox_dir.display()))?
        .len();
    if waiting > 0 {
        bail!(
            "the embedded CMA's inbox holds {waiting} records it acknowledged but has not applied \
             yet: start it once and stop it cleanly (a clean stop applies them), then import"
        );
    }
    Ok(Some(inbox))
}
