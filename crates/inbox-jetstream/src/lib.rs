//! The CMA's inbox on a NATS JetStream stream (`cma --queue nats://…`): one replicated inbox
//! that every engine of a cluster reads, so an engine that dies after acknowledging records
//! but before committing their effects loses nothing — the next engine applies them from the
//! stream.
//!
//! [`JetStreamInbox`] implements [`assim_store::Inbox`]:
//!
//! - **Positions are stream sequence numbers.** Each record is published with
//!   `Nats-Expected-Last-Sequence` = its position − 1, so it lands exactly where the engine
//!   numbered it, or not at all. Two writers therefore never interleave silently: when another
//!   writer (a deposed engine that woke up) or a sync that failed yet reached the server put
//!   records in the stream, the next publish fails, the inbox learns the stream's end and
//!   reports the records it did not expect through [`Inbox::appended_elsewhere`]; the engine
//!   applies them in order before anything new, and nothing acknowledged by anyone is skipped.
//!   A record the engine refuses as a gap (the sender's previous record is one it never saw)
//!   makes the inbox look at the stream's end too, at most once a second: the previous record
//!   may be one another writer acknowledged.
//! - **`Nats-Msg-Id`** = node id, spool incarnation and record number: a record published twice
//!   within the stream's duplicate window is stored once.
//! - **Group commit.** `append` buffers; `sync` publishes the turn's records pipelined and waits
//!   for every acknowledgement (each one means the record is stored on a quorum of the stream's
//!   replicas). Only then does the engine acknowledge the records to their senders.
//! - **Bounded.** The stream discards *new* records beyond its byte limit: a full inbox refuses
//!   appends (the senders keep the records in their spools) instead of dropping old ones.
//!   Applied records are purged (at most once a second).
//!
//! - **Packet readers** (issue 14, [`QueueConfig::shared_writers`]): several reader processes
//!   append to one stream at once, so a record cannot be published at a position its writer
//!   chose. A reader publishes with `Nats-Msg-Id` only; JetStream numbers the records, and the
//!   engine (which then appends nothing) follows the stream with [`JetStreamInbox::tail`] and
//!   applies every record in stream order. The positions `append` returns are then only
//!   provisional counts, which a reader does not use.
//!
//! The `async-nats` client runs on a thread of its own (a current-thread tokio runtime); each
//! call is a request over a channel, and the caller blocks on the answer like on a local
//! fsync, so the engine's code is the same over both inboxes.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use assim_store::{Inbox, InboxError, RecordId};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, ServerAddr};
use futures_util::StreamExt as _;

/// Where the inbox lives and how it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// One or more `nats://HOST:PORT` URLs, comma-separated (any server of the cluster).
    pub url: String,
    /// The stream's name.
    pub stream: String,
    /// Copies of each record; an acknowledged record survives the loss of any one machine with
    /// 3 (a quorum of 2 holds it). 1 only for a single server.
    pub replicas: usize,
    /// The stream's size limit in bytes; beyond it appends are refused.
    pub max_bytes: u64,
    /// How long one call may take (connect, publish acknowledgements, reads). The engine waits
    /// this long for a sync before it gives up on the turn's records (their senders resend).
    pub timeout: Duration,
    /// Several writers append at once (packet readers, issue 14): records go where JetStream
    /// puts them, deduplicated by `Nats-Msg-Id` only. `false`: one writer, the engine, which
    /// fences every record to the position it numbered.
    pub shared_writers: bool,
}

impl QueueConfig {
    /// The default stream name.
    pub const STREAM: &'static str = "ASSIM_INBOX";
    /// The default replica count.
    pub const REPLICAS: usize = 3;
    /// The default size limit: 4 GiB.
    pub const MAX_BYTES: u64 = 4 << 30;

    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> QueueConfig {
        QueueConfig {
            url: url.into(),
            stream: Self::STREAM.into(),
            replicas: Self::REPLICAS,
            max_bytes: Self::MAX_BYTES,
            timeout: Duration::from_secs(2),
            shared_writers: false,
        }
    }

    /// The URL list as logs and errors show it: passwords replaced by `(set)`.
    pub fn redacted_url(&self) -> String {
        self.url.split(',').map(assim_util::redact_url).collect::<Vec<_>>().join(",")
    }

    /// The subject the stream holds.
    pub fn subject(&self) -> String {
        format!("assim.inbox.{}", self.stream)
    }

    /// Checks the URL list and the stream's name; the error names the fix.
    pub fn servers(&self) -> Result<Vec<ServerAddr>, String> {
        if self.stream.is_empty()
            || self.stream.len() > 64
            || !self.stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "invalid JetStream stream name {:?}: use 1 to 64 letters, digits, `_` or `-`",
                self.stream
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "invalid queue replica count {}: JetStream keeps 1 to 5 copies (3 survives the \
                 loss of any one server)",
                self.replicas
            ));
        }
        let servers: Vec<ServerAddr> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let shown = assim_util::redact_url(s);
                if !s.starts_with("nats://") && !s.starts_with("tls://") {
                    return Err(format!(
                        "invalid queue URL {shown:?}: expected nats://HOST:PORT (several \
                         comma-separated)"
                    ));
                }
                s.parse::<ServerAddr>().map_err(|e| format!("invalid queue URL {shown:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err("the queue URL is empty: expected nats://HOST:PORT".into());
        }
        if servers.len() > 16 {
            return Err(format!("the queue URL lists {} servers, at most 16", servers.len()));
        }
        Ok(servers)
    }
}

/// The state of the stream when the inbox opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The last position ever appended (0: none).
    pub last: u64,
    /// The first position still held (the ones before were applied and purged).
    pub first: u64,
    /// When the stream was created (µs since the epoch): a stream deleted and made again is
    /// another inbox, whose positions mean nothing to an engine's stored position.
    pub created_micros: i64,
}

/// One record on its way to the stream.
#[derive(Debug)]
struct Outgoing {
    position: u64,
    bytes: Vec<u8>,
    id: Option<RecordId>,
}

type Reply<T> = mpsc::SyncSender<Result<T, String>>;

enum Request {
    Publish(Vec<Outgoing>, Reply<()>),
    Read(u64, Reply<Vec<(u64, Vec<u8>)>>),
    State(Reply<StreamState>),
    /// Deletes every record below the position; nobody waits for it.
    Purge(u64),
    /// Sends every record from the position on, as it is stored, until the receiver is gone.
    Tail(u64, tokio::sync::mpsc::Sender<(u64, Vec<u8>)>),
}

/// The inbox on a JetStream stream (see the crate doc).
pub struct JetStreamInbox {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    config: QueueConfig,
    /// The position the next append gets, as far as this inbox knows.
    next: u64,
    /// A failure left the stream's end unknown: learn it before the next append.
    end_unknown: bool,
    pending: Vec<Outgoing>,
    elsewhere: Option<u64>,
    /// Applied records not purged yet: through this position.
    purge_due: u64,
    purged: u64,
    last_purge: Instant,
    opened: StreamState,
    /// For a cheap look at the connection before each turn's first append.
    client: async_nats::Client,
    /// After a failed sync, appends are refused until then (no call to a failing server
    /// stalls every turn); the wait doubles up to [`MAX_BACKOFF`].
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When a record gap last made the inbox look at the stream's end.
    last_look: Instant,
}

/// How often a record gap makes the inbox look for records appended elsewhere, at most.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The longest pause between tries after failed syncs.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The first pause after a failed sync.
const MIN_BACKOFF: Duration = Duration::from_millis(500);

impl std::fmt::Debug for JetStreamInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamInbox")
            .field("stream", &self.config.stream)
            .field("next", &self.next)
            .field("end_unknown", &self.end_unknown)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl JetStreamInbox {
    /// Connects, creates the stream (or updates its limits) and learns where it ends. The error
    /// says what to check.
    pub fn open(config: QueueConfig) -> Result<JetStreamInbox, String> {
        let servers = config.servers()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let worker_config = config.clone();
        std::thread::Builder::new()
            .name("jetstream-inbox".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the NATS client: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (client, js) = match connect(&worker_config, servers).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(client));
                    serve(js, worker_config, rx).await;
                });
            })
            .map_err(|e| format!("cannot start the NATS client thread: {e}"))?;
        let wait = config.timeout * (READ_PATIENCE + 3);
        let client = ready_rx.recv_timeout(wait).map_err(|_| {
            format!("no answer from NATS at {} within {wait:?}", config.redacted_url())
        })??;
        let mut inbox = JetStreamInbox {
            requests: tx,
            config,
            next: 1,
            end_unknown: false,
            pending: Vec::new(),
            elsewhere: None,
            purge_due: 0,
            purged: 0,
            last_purge: Instant::now(),
            opened: StreamState { last: 0, first: 0, created_micros: 0 },
            client,
            retry_at: None,
            backoff: MIN_BACKOFF,
            last_look: Instant::now() - LOOK_EVERY,
        };
        let state = inbox.call(Request::State)?;
        inbox.next = state.last + 1;
        inbox.purged = state.first.saturating_sub(1);
        inbox.opened = state;
        Ok(inbox)
    }

    /// The stream as it was when the inbox opened.
    pub fn opened(&self) -> &StreamState {
        &self.opened
    }

    /// What the store records as the owner of its inbox position: the stream and when it was
    /// created (a stream deleted and made again is another inbox, whose positions mean nothing
    /// to a stored position).
    pub fn owner(&self) -> String {
        format!("jetstream:{}@{}", self.config.stream, self.opened.created_micros)
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Follows the stream from position `from` on: every record, in stream order, as it is
    /// stored (an engine fed by packet readers, issue 14). The channel is bounded (a slow
    /// engine slows the follower, never the readers) and closes only when the client thread
    /// stops; a lost server or consumer is recreated from the next position.
    pub fn tail(&self, from: u64) -> Result<tokio::sync::mpsc::Receiver<(u64, Vec<u8>)>, String> {
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_QUEUE);
        self.requests
            .send(Request::Tail(from, tx))
            .map_err(|_| "the NATS client thread has stopped".to_owned())?;
        Ok(rx)
    }

    fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let request = request(tx);
        // The worker's own calls time out after `timeout`; a publish waits for each of its
        // acknowledgements in turn, so allow for a slow batch; a read retries for longer.
        let wait = match request {
            Request::Read(..) => self.config.timeout * (READ_PATIENCE + 2),
            _ => self.config.timeout * 4,
        };
        self.requests.send(request).map_err(|_| "the NATS client thread has stopped".to_owned())?;
        rx.recv_timeout(wait)
            .map_err(|_| format!("no answer from the NATS client within {wait:?}"))?
    }

    /// Learns where the stream ends: records at `expected` (the first position this inbox
    /// has not seen stored) and beyond were put there by someone else, or by a failed sync
    /// after all. If the end cannot be learnt, the next append tries again from `expected`.
    fn resync(&mut self, expected: u64) {
        match self.call(Request::State) {
            Ok(state) => {
                if state.last >= expected {
                    self.elsewhere = Some(self.elsewhere.map_or(expected, |e| e.min(expected)));
                }
                self.next = state.last + 1;
                self.end_unknown = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot learn where the JetStream inbox ends; will retry");
                self.next = expected;
                self.end_unknown = true;
            }
        }
    }
}

fn storage(e: String) -> InboxError {
    InboxError::Storage(e.into())
}

impl Inbox for JetStreamInbox {
    fn append(&mut self, record: &[u8], id: Option<RecordId>) -> Result<u64, InboxError> {
        if self.pending.is_empty() {
            if let Some(at) = self.retry_at {
                if Instant::now() < at {
                    return Err(storage(format!(
                        "the JetStream inbox failed; next try in {:?}",
                        at.saturating_duration_since(Instant::now())
                    )));
                }
                self.retry_at = None;
            }
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return Err(storage(format!(
                    "not connected to NATS at {} (reconnecting)",
                    self.config.redacted_url()
                )));
            }
        }
        if self.end_unknown {
            // Only before a turn's first append: a failure empties `pending`.
            self.resync(self.next);
            if self.end_unknown {
                return Err(storage("cannot learn where the JetStream inbox ends".into()));
            }
        }
        let position = self.next;
        self.pending.push(Outgoing { position, bytes: record.to_vec(), id });
        self.next += 1;
        Ok(position)
    }

    fn sync(&mut self) -> Result<(), InboxError> {
        let Some(first) = self.pending.first().map(|p| p.position) else { return Ok(()) };
        let records = std::mem::take(&mut self.pending);
        match self.call(|r| Request::Publish(records, r)) {
            Ok(()) => {
                self.backoff = MIN_BACKOFF;
                Ok(())
            }
            Err(e) => {
                if !self.config.shared_writers {
                    self.resync(first);
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Err(InboxError::SyncFailed(e.into()))
            }
        }
    }

    fn read_from(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, InboxError> {
        let records = self.call(|r| Request::Read(from, r)).map_err(storage)?;
        if self.pending.is_empty()
            && let Some((last, _)) = records.last()
            && *last >= self.next
        {
            self.next = last + 1;
            self.end_unknown = false;
        }
        Ok(records)
    }

    fn remove_through(&mut self, position: u64) -> Result<(), InboxError> {
        self.purge_due = self.purge_due.max(position);
        if self.purge_due > self.purged && self.last_purge.elapsed() >= Duration::from_secs(1) {
            self.last_purge = Instant::now();
            self.purged = self.purge_due;
            self.requests
                .send(Request::Purge(self.purge_due + 1))
                .map_err(|_| storage("the NATS client thread has stopped".into()))?;
        }
        Ok(())
    }

    fn appended_elsewhere(&mut self, look: bool) -> Option<u64> {
        if self.config.shared_writers {
            // Every record is someone else's: the engine follows the stream instead.
            return None;
        }
        if look
            && self.elsewhere.is_none()
            && self.pending.is_empty()
            && !self.end_unknown
            && self.last_look.elapsed() >= LOOK_EVERY
        {
            self.last_look = Instant::now();
            self.resync(self.next);
        }
        self.elsewhere.take()
    }
}

async fn connect(
    config: &QueueConfig,
    servers: Vec<ServerAddr>,
) -> Result<(async_nats::Client, jetstream::Context), String> {
    let url = &config.redacted_url();
    let client = async_nats::ConnectOptions::new()
        .name("assim-cma-inbox")
        .connection_timeout(config.timeout)
        .connect(servers)
        .await
        .map_err(|e| {
            format!("cannot connect to NATS at {url}: {e} (is nats-server running and reachable?)")
        })?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.timeout);
    let stream_config = stream::Config {
        name: config.stream.clone(),
        description: Some("assim: the CMA's inbox of authenticated nanoprobe records".into()),
        subjects: vec![config.subject()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        max_bytes: config.max_bytes.min(i64::MAX as u64) as i64,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    // A cluster that just started (or lost its meta leader) answers "no leader" or times out
    // for a few seconds: retried. One server asked for several replicas never will be.
    let clustered = !client.server_info().connect_urls.is_empty();
    let deadline = tokio::time::Instant::now() + config.timeout * READ_PATIENCE;
    let mut created = js.create_or_update_stream(stream_config.clone()).await.map(drop);
    while created.is_err()
        && (clustered || config.replicas == 1)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        created = js.create_or_update_stream(stream_config.clone()).await.map(drop);
    }
    created.map_err(|e| {
        let hint = if config.replicas > 1 {
            format!(
                " (with {} replicas the stream needs a cluster of at least {} JetStream \
                 servers; for a single server set the queue replicas to 1, and know that the \
                 inbox then dies with that server's disk)",
                config.replicas, config.replicas
            )
        } else {
            " (is nats-server running with JetStream enabled, -js?)".to_owned()
        };
        format!("cannot create the JetStream stream {} at {url}: {e}{hint}", config.stream)
    })?;
    Ok((client, js))
}

async fn serve(
    js: jetstream::Context,
    config: QueueConfig,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
) {
    let subject = config.subject();
    while let Some(request) = requests.recv().await {
        match request {
            Request::Publish(records, reply) => {
                let _ = reply.send(publish(&js, &subject, records, config.shared_writers).await);
            }
            Request::Tail(from, tx) => {
                tokio::spawn(tail(js.clone(), config.clone(), from, tx));
            }
            Request::Read(from, reply) => {
                let _ = reply.send(read(&js, &config, from).await);
            }
            Request::State(reply) => {
                let _ = reply.send(state(&js, &config.stream).await);
            }
            Request::Purge(below) => {
                let purged = async {
                    let stream = js.get_stream(&config.stream).await.map_err(|e| e.to_string())?;
                    stream.purge().sequence(below).await.map_err(|e| e.to_string())
                }
                .await;
                if let Err(e) = purged {
                    tracing::warn!(error = %e, below, "cannot purge applied records from the JetStream inbox");
                }
            }
        }
    }
}

/// Publishes in order, pipelined, and checks that each record landed at its position (one
/// writer) or was stored at all (`shared`: packet readers; a duplicate is stored already).
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    records: Vec<Outgoing>,
    shared: bool,
) -> Result<(), String> {
    let mut acks = Vec::with_capacity(records.len());
    for r in records {
        let mut headers = HeaderMap::new();
        if !shared {
            headers.insert("Nats-Expected-Last-Sequence", (r.position - 1).to_string().as_str());
        }
        if let Some(id) = r.id {
            headers.insert("Nats-Msg-Id", id.to_string().as_str());
        }
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, r.bytes.into())
            .await
            .map_err(|e| format!("cannot publish the record at position {}: {e}", r.position))?;
        acks.push((r.position, ack));
    }
    for (position, ack) in acks {
        let a = ack.await.map_err(|e| {
            format!("JetStream did not store the record at position {position}: {e}")
        })?;
        if !shared && (a.duplicate || a.sequence != position) {
            return Err(format!(
                "JetStream stored the record for position {position} at {} (duplicate: {})",
                a.sequence, a.duplicate
            ));
        }
    }
    Ok(())
}

async fn state(js: &jetstream::Context, name: &str) -> Result<StreamState, String> {
    let stream = js.get_stream(name).await.map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream.get_info().await.map_err(|e| format!("stream {name}: {e}"))?;
    Ok(StreamState {
        last: info.state.last_sequence,
        first: info.state.first_sequence,
        created_micros: (info.created.unix_timestamp_nanos() / 1000) as i64,
    })
}

/// Records a tail holds for its engine before it waits.
const TAIL_QUEUE: usize = 8192;
/// A tail that got nothing for this long looks whether records wait in the stream, and makes
/// its consumer anew if they do.
const TAIL_STALL: Duration = Duration::from_secs(2);

/// [`JetStreamInbox::tail`]'s task: an ordered consumer from `from`, recreated from the next
/// position after any failure, until the receiver is dropped.
async fn tail(
    js: jetstream::Context,
    config: QueueConfig,
    mut from: u64,
    tx: tokio::sync::mpsc::Sender<(u64, Vec<u8>)>,
) {
    let name = config.stream.clone();
    while !tx.is_closed() {
        let followed = async {
            let stream = js.get_stream(&name).await.map_err(|e| format!("stream {name}: {e}"))?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot follow stream {name}: {e}"))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| format!("cannot follow stream {name}: {e}"))?;
            loop {
                let m = match tokio::time::timeout(TAIL_STALL, messages.next()).await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => {
                        // Quiet, or the consumer's server is gone (the client notices only
                        // after two missed 15 s heartbeats): records waiting mean the latter.
                        let info = stream.get_info().await;
                        if info.is_ok_and(|i| i.state.last_sequence < from) {
                            continue;
                        }
                        return Err(format!("following stream {name}: stalled at {from}"));
                    }
                };
                let m = m.map_err(|e| format!("following stream {name}: {e}"))?;
                let seq = m.info().map_err(|e| format!("stream {name}: {e}"))?.stream_sequence;
                if seq < from {
                    continue;
                }
                if tx.send((seq, m.payload.to_vec())).await.is_err() {
                    return Ok(());
                }
                from = seq + 1;
            }
            Err::<(), String>(format!("following stream {name}: the consumer ended"))
        }
        .await;
        if let Err(e) = followed {
            tracing::debug!(error = %e, from, "following the JetStream inbox failed; again shortly");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// How many times longer than one call a read may take in all: it retries while the cluster
/// recovers (a consumer needs the JetStream meta leader, re-elected seconds after a server
/// loss), since an engine taking over cannot start without reading its replay.
const READ_PATIENCE: u32 = 10;

/// The records at `from` and above (see [`read_once`]), retried for up to [`READ_PATIENCE`]
/// call timeouts.
async fn read(
    js: &jetstream::Context,
    config: &QueueConfig,
    from: u64,
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let deadline = tokio::time::Instant::now() + config.timeout * READ_PATIENCE;
    loop {
        match read_once(js, config, from).await {
            Ok(records) => return Ok(records),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, from, "reading the JetStream inbox failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The records at `from` and above, through the stream's end as it was asked, through an
/// ordered (ephemeral, unacknowledged) consumer.
async fn read_once(
    js: &jetstream::Context,
    config: &QueueConfig,
    from: u64,
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let name = &config.stream;
    let stream = js.get_stream(name).await.map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream.get_info().await.map_err(|e| format!("stream {name}: {e}"))?;
    let last = info.state.last_sequence;
    let from = from.max(info.state.first_sequence).max(1);
    if from > last || info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read stream {name}: {e}"))?;
    let mut messages =
        consumer.messages().await.map_err(|e| format!("cannot read stream {name}: {e}"))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(config.timeout, messages.next())
            .await
            .map_err(|_| format!("reading stream {name} stalled at position {from}+"))?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| format!("cannot read stream {name}: {e}"))?;
        let seq = m.info().map_err(|e| format!("stream {name}: {e}"))?.stream_sequence;
        out.push((seq, m.payload.to_vec()));
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any `--queue` text is either refused with a message or gives 1 to 16 servers, and an
        /// error never shows a password.
        #[test]
        fn any_queue_url_is_refused_or_bounded(url in "[ -~]{0,200}", pw in "[a-z]{4,8}") {
            let mut config = QueueConfig::new(url.clone());
            match config.servers() {
                Ok(servers) => prop_assert!((1..=16).contains(&servers.len())),
                Err(e) => prop_assert!(!e.is_empty()),
            }
            config.url = format!("{url},nats://user:{pw}@host:4222,bad://user:{pw}@x");
            let secret = format!(":{pw}@");
            if let Err(e) = config.servers() {
                prop_assert!(!e.contains(&secret), "{}", e);
            }
            let shown = config.redacted_url();
            prop_assert!(!shown.contains(&secret), "{}", shown);
        }
    }
}
