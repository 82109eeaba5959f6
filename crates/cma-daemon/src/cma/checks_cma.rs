//! The API's service-monitoring requests to the CMA task ([`ChecksRequest`]) and their reply
//! channels. No decisions here: every request is a call on the CMA shell (which asks
//! `assim_cma::Authority`: check sets, hand-set checks, run-now); this module only converts the
//! answers to the API's types and keeps the `RunNow` reply channels, keyed by command id, until
//! the shell reports the node's answer ([`assim_cma_shell::Note::CommandAnswer`]).

use std::collections::HashMap;

use assim_cma::CommandAnswer;
use assim_store_sqlite::services::{CheckListEntry, StoredCheck};
use tokio::sync::{mpsc, oneshot};

pub use assim_cma::ChecksError;

use super::{CmaShell, now};

/// A `check run` request from the API.
#[derive(Debug)]
pub struct RunRequest {
    /// Host name or node id.
    pub host: String,
    pub check: String,
    /// The node's answer (JSON payload), or why there is none.
    pub reply: oneshot::Sender<Result<serde_json::Value, String>>,
}

/// A request from the API to the CMA task's service monitoring.
#[derive(Debug)]
pub enum ChecksRequest {
    /// `assim check run`.
    Run(RunRequest),
    /// `assim check add`: add or replace a hand-set check.
    Add {
        host: String,
        check: StoredCheck,
        reply: oneshot::Sender<Result<CheckListEntry, ChecksError>>,
    },
    /// `assim check remove`: remove a hand-set check.
    /// Answers `{"host", "name", "epoch"}` (the node's new set epoch).
    Remove {
        host: String,
        name: String,
        reply: oneshot::Sender<Result<serde_json::Value, ChecksError>>,
    },
    /// `assim check list`: the desired check sets with where each check came from.
    List { host: Option<String>, reply: oneshot::Sender<Result<Vec<CheckListEntry>, ChecksError>> },
}

/// The sending half the API holds.
pub type RunSender = mpsc::Sender<ChecksRequest>;

/// An answer to send once the turn's batch is stored.
type Deferred = Box<dyn FnOnce() + Send>;

/// The reply channels of requests in flight.
#[derive(Default)]
pub(super) struct Replies {
    /// `RunNow`s waiting for their node, by command id.
    runs: HashMap<u64, oneshot::Sender<Result<serde_json::Value, String>>>,
    /// Answers to send after the shell's next flush (hand-set checks: stored first).
    after_flush: Vec<Deferred>,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("runs", &self.runs.len())
            .field("after_flush", &self.after_flush.len())
            .finish()
    }
}

/// The store's list entry (the API's answer) for the core's.
fn entry(e: assim_cma::check_sets::CheckListEntry) -> CheckListEntry {
    CheckListEntry {
        host: e.host,
        node: e.node,
        epoch: e.epoch,
        source: e.source,
        check: StoredCheck::from_spec(&e.check),
    }
}

/// The checks local programs declared on the nodes (all, or the one named `host`), from the
/// latest `local_checks` result each nanoprobe sent (issue 17 item 6), with source `local`.
/// A result that is not in the expected shape lists nothing (it is logged).
fn local_checks(shell: &CmaShell, host: Option<&str>) -> Vec<CheckListEntry> {
    #[derive(serde::Deserialize)]
    struct Payload {
        checks: Vec<StoredCheck>,
    }
    let records = match shell.store().discovery_named(assim_checks::LOCAL_CHECKS_RESULT) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the nodes' local checks");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for rec in records {
        let Some(node) = shell.core().node(rec.node) else { continue };
        let name = node.display_name();
        if host.is_some_and(|h| h != node.hostname && h != rec.node.to_string() && h != name) {
            continue;
        }
        match serde_json::from_str::<Payload>(&rec.payload) {
            Ok(p) => out.extend(p.checks.into_iter().map(|check| CheckListEntry {
                host: name.clone(),
                node: rec.node,
                epoch: 0,
                source: "local".into(),
                check,
            })),
            Err(e) => {
                tracing::warn!(node = %rec.node, error = %e, "a local_checks result is not a list of checks; ignored")
            }
        }
    }
    out
}

impl Replies {
    /// Hands a request to the shell; call the shell's `flush`, then [`Replies::flushed`].
    pub(super) fn request(&mut self, shell: &mut CmaShell, req: ChecksRequest) {
        // Whoever gave up waiting (the API's timeout) needs no answer.
        self.runs.retain(|id, tx| {
            let open = !tx.is_closed();
            if !open {
                shell.cancel_command(*id);
            }
            open
        });
        match req {
            ChecksRequest::Run(r) => match shell.run_check(now(), &r.host, &r.check) {
                Ok(id) => {
                    self.runs.insert(id, r.reply);
                }
                Err(e) => {
                    let _ = r.reply.send(Err(e));
                }
            },
            ChecksRequest::Add { host, check, reply } => {
                let r = shell.add_manual_check(now(), &host, check.to_spec()).map(entry);
                self.after_flush.push(Box::new(move || {
                    let _ = reply.send(r);
                }));
            }
            ChecksRequest::Remove { host, name, reply } => {
                let r = shell.remove_manual_check(now(), &host, &name).map(|(host, epoch)| {
                    serde_json::json!({ "host": host, "name": name, "epoch": epoch })
                });
                self.after_flush.push(Box::new(move || {
                    let _ = reply.send(r);
                }));
            }
            ChecksRequest::List { host, reply } => {
                let r = shell.list_checks(host.as_deref()).map(|l| {
                    let mut l: Vec<CheckListEntry> = l.into_iter().map(entry).collect();
                    l.extend(local_checks(shell, host.as_deref()));
                    l.sort_by(|a, b| (&a.host, &a.check.name).cmp(&(&b.host, &b.check.name)));
                    l
                });
                let _ = reply.send(r);
            }
        }
    }

    /// The shell flushed (the batch of hand-set checks is stored): sends the waiting answers.
    pub(super) fn flushed(&mut self) {
        for f in self.after_flush.drain(..) {
            f();
        }
    }

    /// A node answered a `RunNow`.
    pub(super) fn answer(&mut self, a: CommandAnswer) {
        if let Some(tx) = self.runs.remove(&a.command_id) {
            let _ = tx.send(a.answer);
        }
    }
}
