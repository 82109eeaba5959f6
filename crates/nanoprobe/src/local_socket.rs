//! The nanoprobe's local socket: any program on the host submits events and heartbeats through
//! `DATA_DIR/events.sock` (a Unix stream socket, mode 0660: root and the data directory's
//! group). Events are spooled for the CMA like everything else the nanoprobe owes it;
//! heartbeats are decided here, on the host (see [`assim_probe_shell::apps`]).
//!
//! Protocol: one request per line in, one answer per line out, any number per connection.
//! A request is a JSON object, whose `op` says what it is (`event` when absent), or a
//! plain-text command for scripts (any line that does not start with `{`).
//!
//! ```text
//! → {"text": "RAID STATUS CHANGE for VolumeID 2", "severity": "critical", "type": "raid",
//!    "tags": {"cluster": "Compute1"}, "confirm": true}
//! ← {"ok": true, "id": 17, "confirmed": true}
//! ← {"ok": false, "error": "unknown severity \"loud\" (use debug, info, …)"}
//! → {"op": "app.heartbeat", "name": "backup", "ttl": "30s"}
//! ← {"ok": true}
//! → {"op": "app.done", "name": "backup"}
//! → {"op": "app.list"}
//! ← {"ok": true, "apps": [{"name": "backup", "ttl_s": 30.0, "state": "ok", "left_s": 21.5}]}
//! → heartbeat backup 30s            (plain text: `heartbeat NAME TTL`, `done NAME`, `list`)
//! ← ok
//! ← error: application name "a b" is not valid: …
//! ```
//!
//! Events: only `text` is required; `severity` defaults to `info`. `id` is the record number
//! in this nanoprobe's spool. Without `confirm` the reply comes once the event is in the spool
//! *and the spool's fsync covering it has returned* (it survives a nanoprobe crash and reaches
//! the CMA when it is back); with `confirm` the reply waits until the CMA acknowledged the
//! record, i.e. holds it in its own durable inbox — the client chooses how long to wait. Both
//! waits are kept in [`Confirmations`], which the driver settles after every group commit with
//! the spool's durable and acknowledged positions ([`Confirmations::settle`]). A client that
//! disconnects while it waits frees its connection slot at once (its wait is dropped at the
//! next settle).
//!
//! Heartbeats: a program names itself and a TTL (1 s to 7 days) and beats again before the TTL
//! runs out; a registration is saved to disk ([`crate::local_state`]) before its "ok". Beats
//! send nothing anywhere. `app.list` (plain `list`) shows the registrations.
//!
//! Lines are at most [`MAX_LINE`] bytes; a longer line, bad JSON, an unknown field or op, or an
//! invalid value gets an error reply, and the connection stays usable (a too-long line closes
//! it). A plain-text request gets a plain-text answer (`ok`, `ok ID`, `error: …`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use assim_wire::msg::{LocalEvent, Tag};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "events.sock";
/// The longest request line, in bytes.
pub const MAX_LINE: usize = 16 * 1024;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// One submitted event, as it arrives on the socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub confirm: bool,
}

/// `{"op": "app.heartbeat", "name": …, "ttl": "30s"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppBeat {
    pub name: String,
    /// A duration in the one grammar (`30`, `30s`, `5m`, `1m30s`).
    pub ttl: String,
}

/// `{"op": "app.done", "name": …}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppName {
    pub name: String,
}

/// A request without arguments (`{"op": "app.list"}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// One registered local program, as `app.list` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub ttl_s: f64,
    /// `ok`, or `missed` (reported CRITICAL, waiting for the next beat).
    pub state: String,
    /// Seconds left before the deadline (0 once missed).
    pub left_s: f64,
}

/// The answer to one request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `app.list`: the registered programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<AppStatus>>,
    /// `check.list`: the declared checks (name without `local:`, as declared, with the uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<crate::local_checks::Declared>>,
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(e.into()), ..Reply::default() }
    }

    pub fn ok() -> Reply {
        Reply { ok: true, ..Reply::default() }
    }

    /// The plain-text form (answers to plain-text requests): `ok`, `ok ID`, or `error: …`.
    pub fn plain(&self) -> String {
        match (&self.error, self.id) {
            (Some(e), _) if !self.ok => format!("error: {e}\n"),
            (_, Some(id)) => format!("ok {id}\n"),
            _ => "ok\n".to_owned(),
        }
    }
}

/// A validated request.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// A local event for the CMA (`confirm`: answer once the CMA holds it).
    Event { event: LocalEvent, confirm: bool },
    /// A heartbeat from a local program, registering it if new.
    AppHeartbeat { name: String, ttl: Duration },
    /// A local program finished cleanly.
    AppDone { name: String },
    /// The registered local programs.
    AppList,
    /// Declare (or replace) a local check; the user is the caller's.
    CheckDeclare(crate::local_checks::Declared),
    /// Remove a declared check.
    CheckRemove { name: String },
    /// The declared checks.
    CheckList,
    /// A statistic (issue 17 item 5).
    StatPut(assim_probe_shell::stats::Sample),
}

/// `{"op": "stat.put", "name": "backup.bytes", "value": 1234, "kind": "counter",
/// "tags": {"role": "db"}}` (`kind` defaults to gauge).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatPut {
    pub name: String,
    pub value: f64,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The operations, for error messages.
const OPS: &str =
    "event, app.heartbeat, app.done, app.list, check.declare, check.remove, check.list, stat.put";

/// `{"op": "check.declare", "name": …, "plugin": …, "args": […], "interval": "60s",
/// "retry_interval": "15s", "attempts": 3, "timeout": "10s"}` (the last four optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDecl {
    pub name: String,
    pub plugin: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub interval: String,
    #[serde(default)]
    pub retry_interval: Option<String>,
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub timeout: Option<String>,
}

fn secs(what: &str, s: &str) -> Result<u64, String> {
    assim_util::duration::parse_duration(s).map(|d| d.as_secs()).map_err(|e| format!("{what}: {e}"))
}

fn declared(d: CheckDecl) -> Result<Request, String> {
    Ok(Request::CheckDeclare(crate::local_checks::Declared {
        name: app_name(d.name).map_err(|e| e.replace("application name", "check name"))?,
        plugin: d.plugin,
        args: d.args,
        interval_s: secs("interval", &d.interval)?,
        retry_interval_s: d
            .retry_interval
            .as_deref()
            .map(|s| secs("retry_interval", s))
            .transpose()?
            .unwrap_or(0),
        max_attempts: d.attempts.unwrap_or(0),
        timeout_s: d.timeout.as_deref().map(|s| secs("timeout", s)).transpose()?.unwrap_or(0),
        uid: 0,
        gid: 0,
    }))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = assim_util::duration::parse_duration(s).map_err(|e| format!("ttl: {e}"))?;
    assim_probe_shell::apps::validate_ttl(ttl).map_err(|e| e.to_string())?;
    Ok(ttl)
}

fn app_name(name: String) -> Result<String, String> {
    assim_probe_shell::apps::validate_name(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

/// Parses and validates one request line (pure): a JSON object, or a plain-text command (a
/// line that does not start with `{`; see the module doc).
pub fn parse_request(line: &[u8], now_micros: u64) -> Result<Request, String> {
    if line.len() > MAX_LINE {
        return Err(format!(
            "the request is {} bytes; at most {MAX_LINE} are accepted",
            line.len()
        ));
    }
    let trimmed = line.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        return parse_plain(trimmed);
    }
    let mut v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        format!(
            "not a valid request ({e}); send one JSON object per line: \
             {{\"text\": …, \"severity\": …, \"type\": …, \"tags\": {{…}}, \"confirm\": bool}}"
        )
    })?;
    let op = match v.as_object_mut().map(|o| o.remove("op")) {
        None => return Err("not a valid request: send one JSON object per line".into()),
        Some(None) => "event".to_owned(),
        Some(Some(serde_json::Value::String(op))) => op,
        Some(Some(_)) => return Err(format!("\"op\" must be a string: one of {OPS}")),
    };
    fn typed<T: serde::de::DeserializeOwned>(op: &str, v: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| format!("not a valid {op} request ({e})"))
    }
    match op.as_str() {
        "event" => {
            let s: Submission = serde_json::from_value(v).map_err(|e| {
                format!(
                    "not a valid request ({e}); send one JSON object per line: \
                     {{\"text\": …, \"severity\": …, \"type\": …, \"tags\": {{…}}, \"confirm\": bool}}"
                )
            })?;
            let event = LocalEvent {
                event_type: s.event_type.unwrap_or_default(),
                severity: s.severity.unwrap_or_default(),
                text: s.text,
                tags: s.tags.into_iter().map(|(key, value)| Tag { key, value }).collect(),
                at: now_micros,
            };
            assim_cma::local_events::validate_local_event(&event)?;
            Ok(Request::Event { event, confirm: s.confirm })
        }
        "app.heartbeat" => {
            let b: AppBeat = typed(&op, v)?;
            Ok(Request::AppHeartbeat { ttl: parse_ttl(&b.ttl)?, name: app_name(b.name)? })
        }
        "app.done" => Ok(Request::AppDone { name: app_name(typed::<AppName>(&op, v)?.name)? }),
        "app.list" => typed::<NoArgs>(&op, v).map(|_| Request::AppList),
        "check.declare" => declared(typed::<CheckDecl>(&op, v)?),
        "check.remove" => {
            Ok(Request::CheckRemove { name: app_name(typed::<AppName>(&op, v)?.name)? })
        }
        "check.list" => typed::<NoArgs>(&op, v).map(|_| Request::CheckList),
        "stat.put" => {
            use assim_probe_shell::stats::{Kind, Sample, validate};
            let p: StatPut = typed(&op, v)?;
            let kind = match p.kind.as_deref() {
                None | Some("gauge") => Kind::Gauge,
                Some("counter") => Kind::Counter,
                Some(k) => return Err(format!("kind {k:?}: use counter or gauge")),
            };
            let sample = Sample { name: p.name, tags: p.tags, kind, value: p.value };
            validate(&sample).map_err(|e| e.to_string())?;
            Ok(Request::StatPut(sample))
        }
        other => Err(format!(
            "unknown op {:?}: use one of {OPS}",
            other.chars().take(40).collect::<String>()
        )),
    }
}

/// The plain-text commands, for scripts (`echo 'heartbeat backup 30s' | nc -U events.sock`):
/// `heartbeat NAME TTL`, `done NAME`, `list`, `check NAME INTERVAL PLUGIN [ARG…]`,
/// `uncheck NAME`, `checks` (words separated by spaces or tabs; arguments cannot contain
/// spaces here: use JSON for those).
fn parse_plain(line: &[u8]) -> Result<Request, String> {
    let line = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_owned())?;
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let usage = "not a valid request: plain-text requests are `heartbeat NAME TTL`, `done NAME`, \
                 `list`, `check NAME INTERVAL PLUGIN [ARG...]`, `uncheck NAME`, `checks` or \
                 `put NAME VALUE [counter|gauge] [KEY=VALUE...]` \
                 (or send a JSON object)";
    match words.as_slice() {
        ["heartbeat", name, ttl] => {
            Ok(Request::AppHeartbeat { ttl: parse_ttl(ttl)?, name: app_name((*name).to_owned())? })
        }
        ["done", name] => Ok(Request::AppDone { name: app_name((*name).to_owned())? }),
        ["list"] => Ok(Request::AppList),
        ["check", name, interval, plugin, args @ ..] => declared(CheckDecl {
            name: (*name).to_owned(),
            plugin: (*plugin).to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            interval: (*interval).to_owned(),
            ..CheckDecl::default()
        }),
        ["uncheck", name] => Ok(Request::CheckRemove { name: app_name((*name).to_owned())? }),
        ["checks"] => Ok(Request::CheckList),
        ["put", ..] => assim_probe_shell::stats::parse_line(line)
            .map(Request::StatPut)
            .map_err(|e| e.to_string()),
        _ => Err(usage.to_owned()),
    }
}

/// A validated request handed to the nanoprobe's main task.
#[derive(Debug)]
pub struct LocalRequest {
    pub request: Request,
    /// The caller's (uid, gid) from the socket (SO_PEERCRED); `None` if unknown.
    pub peer: Option<(u32, u32)>,
    pub reply: oneshot::Sender<Reply>,
}

/// Replies waiting for their spool record: to be durable (fsync'd), or acknowledged by the CMA.
#[derive(Debug, Default)]
pub struct Confirmations {
    /// Without `confirm`: answered (`confirmed: false`) once the record is durable.
    unsynced: Vec<(u64, oneshot::Sender<Reply>)>,
    /// With `confirm`: answered (`confirmed: true`) once the CMA acknowledged the record.
    pending: Vec<(u64, oneshot::Sender<Reply>)>,
}

impl Confirmations {
    /// Waits for the CMA's acknowledgement of `record`.
    pub fn add(&mut self, record: u64, reply: oneshot::Sender<Reply>) {
        self.pending.push((record, reply));
    }

    /// Waits for `record` to be durable in the spool.
    pub fn add_unsynced(&mut self, record: u64, reply: oneshot::Sender<Reply>) {
        self.unsynced.push((record, reply));
    }

    /// Answers every waiter whose record is durable (`durable_through` and below: the spool's
    /// fsync'd position) or acknowledged by the CMA (`acked_through` and below), and forgets the
    /// waiters whose client has gone. Call after every group commit and acknowledgement.
    pub fn settle(&mut self, durable_through: u64, acked_through: u64) {
        for (list, through, confirmed) in [
            (&mut self.unsynced, durable_through.max(acked_through), false),
            (&mut self.pending, acked_through, true),
        ] {
            let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .filter(|(_, tx)| !tx.is_closed())
                .partition(|(r, _)| *r <= through);
            *list = keep;
            for (record, tx) in done {
                let _ = tx.send(Reply {
                    ok: true,
                    id: Some(record),
                    confirmed: Some(confirmed),
                    ..Reply::default()
                });
            }
        }
    }

    /// Waiters of both kinds.
    pub fn len(&self) -> usize {
        self.unsynced.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Carries out a request. Events are spooled and answered later by
/// [`Confirmations::settle`] (once durable, or with `confirm` once the CMA acknowledged them);
/// a refusal and every other request are returned to be answered by the driver, after it has
/// saved the local registrations if they changed ([`crate::local_state`]).
pub fn handle(
    link: &mut crate::nanoprobe::ProbeShell,
    confirmations: &mut Confirmations,
    local: &mut crate::local_checks::LocalChecks,
    req: LocalRequest,
    now: std::time::Instant,
) -> Option<(oneshot::Sender<Reply>, Reply)> {
    let reply = match req.request {
        Request::CheckDeclare(mut d) => {
            let Some((uid, gid)) = req.peer else {
                return Some((
                    req.reply,
                    Reply::error("cannot tell who is asking (no peer credentials)"),
                ));
            };
            (d.uid, d.gid) = (uid, gid);
            let r = crate::local_checks::build(&d, &local.dirs, local.own_uid)
                .and_then(|check| link.declare_local_check(check, now));
            match r {
                Ok(()) => {
                    local.declared.insert(d.name.clone(), d);
                    Reply::ok()
                }
                Err(e) => Reply::error(e),
            }
        }
        Request::CheckRemove { name } => {
            let full = format!("{}{name}", assim_probe_shell::LOCAL_CHECK_PREFIX);
            match local.declared.get(&name) {
                // Only root or the user who declared a check may remove it.
                Some(d) if !req.peer.is_some_and(|(uid, _)| uid == 0 || uid == d.uid) => {
                    Reply::error(format!(
                        "check {name} was declared by uid {}; only that user or root may remove it",
                        d.uid
                    ))
                }
                Some(_) => {
                    local.declared.remove(&name);
                    link.remove_local_check(&full, now);
                    Reply::ok()
                }
                None => Reply::error(format!(
                    "no local check named {name:?} on this host (`assim app checks` lists them)"
                )),
            }
        }
        Request::StatPut(sample) => match link.stat_put(sample) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::error(e.to_string()),
        },
        Request::CheckList => Reply {
            ok: true,
            checks: Some(local.declared.values().cloned().collect()),
            ..Reply::default()
        },
        Request::Event { event, confirm } => {
            return submit(link, confirmations, event, confirm, req.reply, now);
        }
        Request::AppHeartbeat { name, ttl } => match link.app_heartbeat(&name, ttl, now) {
            Ok(_) => Reply::ok(),
            Err(e) => Reply::error(e.to_string()),
        },
        Request::AppDone { name } => match link.app_done(&name, now) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::error(e.to_string()),
        },
        Request::AppList => {
            let apps = link
                .apps()
                .list(now)
                .into_iter()
                .map(|(r, left)| AppStatus {
                    name: r.name,
                    ttl_s: r.ttl.as_secs_f64(),
                    state: if r.missed { "missed" } else { "ok" }.to_owned(),
                    left_s: left.as_secs_f64(),
                })
                .collect();
            Reply { ok: true, apps: Some(apps), ..Reply::default() }
        }
    };
    Some((req.reply, reply))
}

/// Spools an event; its answer comes from [`Confirmations::settle`] once the record is
/// durable, or (with `confirm`) once the CMA has acknowledged it. A refusal is returned.
fn submit(
    link: &mut crate::nanoprobe::ProbeShell,
    confirmations: &mut Confirmations,
    event: LocalEvent,
    confirm: bool,
    reply: oneshot::Sender<Reply>,
    now: std::time::Instant,
) -> Option<(oneshot::Sender<Reply>, Reply)> {
    let text_len = event.text.len();
    use assim_probe_shell::NotSpooled;
    let refusal = match link.submit_spooled(assim_wire::msg::Body::LocalEvent(event), now) {
        Ok(record) if confirm => {
            debug!(record, text_len, "local event spooled; waiting for the CMA");
            confirmations.add(record, reply);
            return None;
        }
        Ok(record) => {
            debug!(record, text_len, "local event spooled; waiting for the fsync");
            confirmations.add_unsynced(record, reply);
            return None;
        }
        Err(NotSpooled::Unspooled) => {
            "the nanoprobe's spool is unavailable (its disk failed): the event was sent \
             without disk protection and cannot be confirmed (see the nanoprobe's log)"
        }
        Err(NotSpooled::Refused(_) | NotSpooled::Backlogged) => {
            "spool full: the nanoprobe's spool is full (the CMA has not acknowledged its \
             records), so the event was refused and not sent; submit it again later, and \
             check the CMA or raise --spool-max-mb"
        }
        Err(NotSpooled::Empty) => "the event is too large to send",
    };
    Some((reply, Reply::error(refusal)))
}

/// The running socket server; dropping it stops the server and removes the socket file.
#[derive(Debug)]
pub struct Server {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket and starts serving it; requests arrive on the returned channel.
pub fn start(data_dir: &Path) -> anyhow::Result<(Server, mpsc::Receiver<LocalRequest>)> {
    let listener = bind(data_dir)?;
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(serve(listener, tx));
    Ok((Server { task, path: socket_path(data_dir) }, rx))
}

/// The socket path for a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds `DATA_DIR/events.sock` (replacing a stale socket from an earlier run) with mode 0660.
pub fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let path = socket_path(data_dir);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it so the nanoprobe can accept local events",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// Accepts connections until the task is aborted; each request goes to `tx`.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<LocalRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot accept on the local event socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("too many local event connections; refusing one");
            let mut s = stream;
            let _ = s
                .write_all(reply_line(&Reply::error("too many connections; retry")).as_bytes())
                .await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            connection(stream, tx).await;
            drop(permit);
        });
    }
}

fn reply_line(r: &Reply) -> String {
    let mut s = serde_json::to_string(r).expect("replies serialize");
    s.push('\n');
    s
}

async fn connection(stream: UnixStream, tx: mpsc::Sender<LocalRequest>) {
    let peer = stream.peer_cred().ok().map(|c| (c.uid(), c.gid()));
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut read).take(MAX_LINE as u64 + 1);
        let n = match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!(error = %e, "local event connection failed");
                return;
            }
        };
        let too_long = n > MAX_LINE && line.last() != Some(&b'\n');
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.iter().all(u8::is_ascii_whitespace) && !too_long {
            continue;
        }
        let plain = !body.trim_ascii_start().starts_with(b"{");
        let reply = if too_long {
            Reply::error(format!("the request line is longer than {MAX_LINE} bytes"))
        } else {
            match parse_request(body, assim_wire::Timestamp::now().micros()) {
                Ok(request) => {
                    let (rtx, rrx) = oneshot::channel();
                    if tx.send(LocalRequest { request, peer, reply: rtx }).await.is_err() {
                        Reply::error("the nanoprobe is stopping")
                    } else {
                        // A client that hangs up while it waits (for the CMA, possibly for
                        // hours) gives its slot back at once.
                        tokio::select! {
                            r = rrx => r.unwrap_or_else(|_| Reply::error("the nanoprobe is stopping")),
                            () = peer_closed(&mut read) => {
                                debug!("local event client left before its answer");
                                return;
                            }
                        }
                    }
                }
                Err(e) => Reply::error(e),
            }
        };
        let line = if plain && !too_long { reply.plain() } else { reply_line(&reply) };
        if write.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        if too_long {
            return;
        }
    }
}

/// Resolves when the client has closed its side (or the connection failed); never while it is
/// open, even when it already sent its next request (which stays buffered for the loop).
async fn peer_closed<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) {
    match read.fill_buf().await {
        Ok([]) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated() {
        let Request::Event { event: ev, confirm } = parse_request(
            br#"{"text":"RAID STATUS CHANGE","severity":"critical","type":"raid","tags":{"cluster":"Compute1"},"confirm":true}"#,
            7,
        )
        .unwrap() else {
            panic!("not an event")
        };
        assert!(confirm);
        assert_eq!(
            (ev.text.as_str(), ev.severity.as_str(), ev.at),
            ("RAID STATUS CHANGE", "critical", 7)
        );
        assert_eq!(ev.tags[0].key, "cluster");
        for (bad, why) in [
            (&b"not json"[..], "not a valid request"),
            (br#"{"txt":"x"}"#, "unknown field"),
            (br#"{"text":""}"#, "empty"),
            (br#"{"text":"x","severity":"loud"}"#, "unknown severity"),
            (br#"{"text":"x","tags":{"host":"y"}}"#, "set by the CMA"),
            (br#"{"text":"x","tags":{"a b":"y"}}"#, "tag name"),
            (br#"{"text":"x","type":"a/b"}"#, "type"),
            (br#"{"text":5}"#, "not a valid request"),
            (br#"{"op":"app.heartbeat","name":"x"}"#, "missing field `ttl`"),
            (br#"{"op":"app.heartbeat","name":"x","ttl":"0s"}"#, "out of range"),
            (br#"{"op":"app.heartbeat","name":"x","ttl":"9d"}"#, "out of range"),
            (br#"{"op":"app.heartbeat","name":"../x","ttl":"5s"}"#, "not valid"),
            (br#"{"op":"app.heartbeat","name":"x","ttl":"5s","extra":1}"#, "unknown field"),
            (br#"{"op":"app.done"}"#, "missing field `name`"),
            (br#"{"op":"reboot"}"#, "unknown op"),
            (br#"{"op":7}"#, "must be a string"),
            (b"[1,2]", "not a valid request"),
            (br#"{"op":"app.list","x":1}"#, "unknown field"),
            (b"heartbeat x", "plain-text requests are"),
            (b"heartbeat x 5q", "ttl"),
            (b"rm -rf /", "plain-text requests are"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let e = parse_request(bad, 0).unwrap_err();
            assert!(e.contains(why), "{} -> {e}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(MAX_LINE));
        assert!(parse_request(long.as_bytes(), 0).unwrap_err().contains("at most"));
    }

    #[test]
    fn app_requests_in_json_and_plain_text() {
        let beat = Request::AppHeartbeat { name: "backup".into(), ttl: Duration::from_secs(30) };
        assert_eq!(
            parse_request(br#"{"op":"app.heartbeat","name":"backup","ttl":"30s"}"#, 0),
            Ok(beat.clone())
        );
        assert_eq!(parse_request(b"heartbeat backup 30s", 0), Ok(beat.clone()));
        assert_eq!(parse_request(b"  heartbeat\tbackup   30 ", 0), Ok(beat));
        let done = Request::AppDone { name: "backup".into() };
        assert_eq!(parse_request(br#"{"op":"app.done","name":"backup"}"#, 0), Ok(done.clone()));
        assert_eq!(parse_request(b"done backup", 0), Ok(done));
        assert_eq!(parse_request(br#"{"op":"app.list"}"#, 0), Ok(Request::AppList));
        assert_eq!(parse_request(b"list", 0), Ok(Request::AppList));
        // An explicit "event" op is the default one.
        assert!(matches!(
            parse_request(br#"{"op":"event","text":"x"}"#, 0),
            Ok(Request::Event { .. })
        ));
        let d = crate::local_checks::Declared {
            name: "raid".into(),
            plugin: "check_raid".into(),
            args: vec!["-w".into(), "5".into()],
            interval_s: 60,
            retry_interval_s: 0,
            max_attempts: 0,
            timeout_s: 0,
            uid: 0,
            gid: 0,
        };
        assert_eq!(
            parse_request(br#"{"op":"check.declare","name":"raid","plugin":"check_raid","args":["-w","5"],"interval":"1m"}"#, 0),
            Ok(Request::CheckDeclare(d.clone()))
        );
        assert_eq!(
            parse_request(b"check raid 60s check_raid -w 5", 0),
            Ok(Request::CheckDeclare(d))
        );
        assert_eq!(
            parse_request(b"uncheck raid", 0),
            Ok(Request::CheckRemove { name: "raid".into() })
        );
        assert_eq!(parse_request(b"checks", 0), Ok(Request::CheckList));
        assert!(parse_request(b"check raid soon check_raid", 0).unwrap_err().contains("interval"));
        let put = parse_request(b"put backup.bytes 10 counter role=db", 0).unwrap();
        let Request::StatPut(p) = &put else { panic!("{put:?}") };
        assert_eq!((p.name.as_str(), p.value), ("backup.bytes", 10.0));
        assert_eq!(
            parse_request(br#"{"op":"stat.put","name":"backup.bytes","value":10,"kind":"counter","tags":{"role":"db"}}"#, 0),
            Ok(put)
        );
        assert!(parse_request(b"put a..b 1", 0).unwrap_err().contains("metric name"));
        assert!(
            parse_request(br#"{"op":"stat.put","name":"a","value":1,"kind":"timer"}"#, 0).is_err()
        );
        assert_eq!(Reply::ok().plain(), "ok\n");
        assert_eq!(Reply::error("no").plain(), "error: no\n");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: an answer (a request or an error), never a panic.
            #[test]
            fn any_line_is_answered(line in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_request(&line, 0);
            }

            /// Plain-text words in any mix: never a panic; a request only from a valid shape.
            #[test]
            fn plain_words(words in proptest::collection::vec(
                prop_oneof![
                    Just("heartbeat".to_owned()), Just("done".to_owned()), Just("list".to_owned()),
                    Just("check".to_owned()), Just("uncheck".to_owned()), Just("checks".to_owned()),
                    "[a-z0-9._-]{0,70}", "[0-9]{1,8}[smhd]?", ".{0,10}"
                ], 0..5),
                sep in prop_oneof![Just(" "), Just("\t"), Just("  ")]) {
                let line = words.join(sep);
                let n = line.split_ascii_whitespace().count();
                if let Ok(r) = parse_request(line.as_bytes(), 0) {
                    match r {
                        Request::AppHeartbeat { name, ttl } => {
                            prop_assert_eq!(n, 3);
                            prop_assert!(assim_probe_shell::apps::validate_name(&name).is_ok());
                            prop_assert!(assim_probe_shell::apps::validate_ttl(ttl).is_ok());
                        }
                        Request::AppDone { name } => {
                            prop_assert_eq!(n, 2);
                            prop_assert!(assim_probe_shell::apps::validate_name(&name).is_ok());
                        }
                        Request::AppList => prop_assert_eq!(n, 1),
                        Request::CheckDeclare(d) => {
                            prop_assert!(n >= 4);
                            prop_assert_eq!(d.args.len(), n - 4);
                            prop_assert!(assim_probe_shell::apps::validate_name(&d.name).is_ok());
                        }
                        Request::CheckRemove { .. } => prop_assert_eq!(n, 2),
                        Request::CheckList => prop_assert_eq!(n, 1),
                        Request::StatPut(_) => prop_assert!(n >= 3),
                        Request::Event { .. } => prop_assert!(false, "an event from plain text"),
                    }
                }
            }

            /// A valid heartbeat round-trips through both forms to the same request.
            #[test]
            fn heartbeat_forms_agree(name in "[a-z0-9][a-z0-9._-]{0,63}", secs in 1u64..=604_800) {
                let json = format!(r#"{{"op":"app.heartbeat","name":"{name}","ttl":"{secs}s"}}"#);
                let plain = format!("heartbeat {name} {secs}s");
                let want = Request::AppHeartbeat { name, ttl: Duration::from_secs(secs) };
                prop_assert_eq!(parse_request(json.as_bytes(), 0), Ok(want.clone()));
                prop_assert_eq!(parse_request(plain.as_bytes(), 0), Ok(want));
            }
        }
    }

    #[test]
    fn confirmations_settle_in_record_order() {
        let mut c = Confirmations::default();
        let (a, mut ra) = oneshot::channel();
        let (b, mut rb) = oneshot::channel();
        c.add(3, a);
        c.add(5, b);
        c.settle(9, 4);
        assert_eq!(ra.try_recv().unwrap().id, Some(3));
        assert!(rb.try_recv().is_err());
        assert_eq!(c.len(), 1);
        c.settle(9, 9);
        assert_eq!(rb.try_recv().unwrap().confirmed, Some(true));
        assert!(c.is_empty());
    }

    #[test]
    fn item_11_the_unconfirmed_answer_waits_for_the_fsync() {
        let mut c = Confirmations::default();
        let (a, mut ra) = oneshot::channel();
        c.add_unsynced(7, a);
        // Appended but not yet durable: no answer.
        c.settle(6, 0);
        assert!(ra.try_recv().is_err(), "answered before the fsync");
        c.settle(7, 0);
        let r = ra.try_recv().unwrap();
        assert_eq!((r.ok, r.id, r.confirmed), (true, Some(7), Some(false)));
        assert!(c.is_empty());
        // Waiters whose client left are forgotten, not kept until the CMA is back.
        let (b, rb) = oneshot::channel();
        c.add(8, b);
        drop(rb);
        c.settle(8, 0);
        assert!(c.is_empty());
    }

    /// A driver stand-in: answers requests without `confirm` at once, and keeps the others
    /// waiting for ever (a CMA that never acknowledges).
    async fn fake_driver(mut rx: mpsc::Receiver<LocalRequest>, seen: mpsc::UnboundedSender<()>) {
        let mut held = Vec::new();
        while let Some(req) = rx.recv().await {
            if matches!(req.request, Request::Event { confirm: true, .. }) {
                held.push(req.reply);
                let _ = seen.send(());
            } else {
                let _ = req.reply.send(Reply {
                    ok: true,
                    id: Some(1),
                    confirmed: Some(false),
                    ..Reply::default()
                });
            }
        }
    }

    #[test]
    fn item_11_confirm_waiters_that_hang_up_free_their_slots() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // (No tempfile dev-dependency here: a directory of our own, removed at the end.)
            let dir = std::env::temp_dir().join(format!("assim-item11-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let listener = bind(&dir).unwrap();
            let (tx, rx) = mpsc::channel(256);
            let (seen_tx, mut seen) = mpsc::unbounded_channel();
            tokio::spawn(serve(listener, tx));
            tokio::spawn(fake_driver(rx, seen_tx));
            let path = socket_path(&dir);
            // Every slot taken by a client waiting for a confirmation that never comes...
            let mut clients = Vec::new();
            for _ in 0..MAX_CONNECTIONS {
                let mut s = UnixStream::connect(&path).await.unwrap();
                s.write_all(b"{\"text\":\"x\",\"confirm\":true}\n").await.unwrap();
                clients.push(s);
            }
            for _ in 0..MAX_CONNECTIONS {
                tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap();
            }
            // ... and then every one of them hangs up.
            drop(clients);
            // A new client is served (within a deadline: the slots come back asynchronously).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let s = UnixStream::connect(&path).await.unwrap();
                let (r, mut w) = s.into_split();
                w.write_all(b"{\"text\":\"after\"}\n").await.unwrap();
                let mut line = String::new();
                BufReader::new(r).read_line(&mut line).await.unwrap();
                let reply: Reply = serde_json::from_str(&line).unwrap();
                if reply.ok {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "local events still refused after the waiting clients left: {line}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
