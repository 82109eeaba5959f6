//! The nanoprobe's local event socket: any program on the host submits events through
//! `DATA_DIR/events.sock` (a Unix stream socket, mode 0660), and the nanoprobe spools them for
//! the CMA like everything else it owes it.
//!
//! Protocol: one JSON object per line in, one JSON object per line out, any number per
//! connection.
//!
//! ```text
//! → {"text": "RAID STATUS CHANGE for VolumeID 2", "severity": "critical", "type": "raid",
//!    "tags": {"cluster": "Compute1"}, "confirm": true}
//! ← {"ok": true, "id": 17, "confirmed": true}
//! ← {"ok": false, "error": "unknown severity \"loud\" (use debug, info, …)"}
//! ```
//!
//! Only `text` is required; `severity` defaults to `info`. `id` is the record number in this
//! nanoprobe's spool. Without `confirm` the reply comes once the event is in the spool *and the
//! spool's fsync covering it has returned* (it survives a nanoprobe crash and reaches the CMA
//! when it is back); with `confirm` the reply waits until the CMA acknowledged the record, i.e.
//! holds it in its own durable inbox — the client chooses how long to wait. Both waits are kept
//! in [`Confirmations`], which the driver settles after every group commit with the spool's
//! durable and acknowledged positions ([`Confirmations::settle`]). A client that disconnects
//! while it waits frees its connection slot at once (its wait is dropped at the next settle).
//! Lines are at most [`MAX_LINE`] bytes; a longer line, bad JSON, an unknown field or an invalid
//! value gets an error reply, and the connection stays usable (a too-long line closes it).

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

/// The answer to one submission.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(e.into()), ..Reply::default() }
    }
}

/// Parses and validates one request line (pure). Returns the wire message and `confirm`.
pub fn parse_request(line: &[u8], now_micros: u64) -> Result<(LocalEvent, bool), String> {
    if line.len() > MAX_LINE {
        return Err(format!(
            "the request is {} bytes; at most {MAX_LINE} are accepted",
            line.len()
        ));
    }
    let s: Submission = serde_json::from_slice(line).map_err(|e| {
        format!(
            "not a valid request ({e}); send one JSON object per line: \
             {{\"text\": …, \"severity\": …, \"type\": …, \"tags\": {{…}}, \"confirm\": bool}}"
        )
    })?;
    let ev = LocalEvent {
        event_type: s.event_type.unwrap_or_default(),
        severity: s.severity.unwrap_or_default(),
        text: s.text,
        tags: s.tags.into_iter().map(|(key, value)| Tag { key, value }).collect(),
        at: now_micros,
    };
    assim_cma::local_events::validate_local_event(&ev)?;
    Ok((ev, s.confirm))
}

/// A validated submission handed to the nanoprobe's main task.
#[derive(Debug)]
pub struct LocalRequest {
    pub event: LocalEvent,
    pub confirm: bool,
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
                    error: None,
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

/// Spools a request's event; its answer comes from [`Confirmations::settle`] once the record is
/// durable, or (with `confirm`) once the CMA has acknowledged it. A refusal is answered at once.
pub fn submit(
    link: &mut crate::nanoprobe::ProbeShell,
    confirmations: &mut Confirmations,
    req: LocalRequest,
    now: std::time::Instant,
) {
    let text_len = req.event.text.len();
    use assim_probe_shell::NotSpooled;
    match link.submit_spooled(assim_wire::msg::Body::LocalEvent(req.event), now) {
        Ok(record) if req.confirm => {
            debug!(record, text_len, "local event spooled; waiting for the CMA");
            confirmations.add(record, req.reply);
        }
        Ok(record) => {
            debug!(record, text_len, "local event spooled; waiting for the fsync");
            confirmations.add_unsynced(record, req.reply);
        }
        Err(NotSpooled::Unspooled) => {
            let _ = req.reply.send(Reply::error(
                "the nanoprobe's spool is unavailable (its disk failed): the event was sent \
                 without disk protection and cannot be confirmed (see the nanoprobe's log)",
            ));
        }
        Err(NotSpooled::Refused(_) | NotSpooled::Backlogged) => {
            let _ = req.reply.send(Reply::error(
                "spool full: the nanoprobe's spool is full (the CMA has not acknowledged its \
                 records), so the event was refused and not sent; submit it again later, and \
                 check the CMA or raise --spool-max-mb",
            ));
        }
        Err(NotSpooled::Empty) => {
            let _ = req.reply.send(Reply::error("the event is too large to send"));
        }
    }
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
        let reply = if too_long {
            Reply::error(format!("the request line is longer than {MAX_LINE} bytes"))
        } else {
            match parse_request(body, assim_wire::Timestamp::now().micros()) {
                Ok((event, confirm)) => {
                    let (rtx, rrx) = oneshot::channel();
                    if tx.send(LocalRequest { event, confirm, reply: rtx }).await.is_err() {
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
        if write.write_all(reply_line(&reply).as_bytes()).await.is_err() {
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
        let (ev, confirm) = parse_request(
            br#"{"text":"RAID STATUS CHANGE","severity":"critical","type":"raid","tags":{"cluster":"Compute1"},"confirm":true}"#,
            7,
        )
        .unwrap();
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
        ] {
            let e = parse_request(bad, 0).unwrap_err();
            assert!(e.contains(why), "{} -> {e}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(MAX_LINE));
        assert!(parse_request(long.as_bytes(), 0).unwrap_err().contains("at most"));
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
            if req.confirm {
                held.push(req.reply);
                let _ = seen.send(());
            } else {
                let _ = req.reply.send(Reply {
                    ok: true,
                    id: Some(1),
                    confirmed: Some(false),
                    error: None,
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
