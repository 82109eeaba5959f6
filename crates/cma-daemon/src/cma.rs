//! The CMA driver: IO only. One loop owns the CMA shell and its timer
//! ([`assim_cma_shell::Shell`]: sealing, enrolment, the inbox's next-record rule and group
//! commit, acknowledgements after the inbox sync, the engine and its batches to the SQLite store,
//! the replay after a restart). Per loop turn: take a batch of datagrams (or wake for the
//! deadline) and hand them to the shell, flush it, send its datagrams, publish its notes (the
//! latest stored event for the API and the bus) and metrics.
//!
//! The **packet reader** ([`read_packets`]) is a task of its own on the runtime's workers: it
//! receives from the UDP socket into a bounded queue while the loop is in its fsync and
//! commit, which would otherwise leave the socket unread for as long as the disk takes (in a
//! 100,000-node registration storm the socket overflowed then, and the lost datagrams came back
//! as retransmissions). The queue holds at most [`READER_QUEUE`] batches of
//! [`READER_BATCH`] datagrams; beyond it the reader waits and the kernel's buffer fills, as
//! before. While more than half of the queue waits, the reader drops key requests instead of
//! queueing them (counted in `assim_cma_key_requests_shed_total`): in a registration storm they
//! are most of what arrives, each sender asks again (with backoff), and a socket full of them
//! loses the `Hello`s, acknowledgements and reports the loop needs (in a 100,000-node storm the
//! CMA's socket dropped 4.4 million datagrams).
//!
//! Every decision is the shell's core's (`assim_cma::Authority`: rings, failures, the
//! discovery schedule and its epoch, check sets, hand-set checks, run-now); the daemon gives it
//! configuration (timing, the `[discovery]` table, the check rules loaded from `--check-rules`,
//! the bus's tagging rules) and carries API requests to it ([`checks_cma`]: only the reply
//! channels live here).
//!
//! Blocking work: a shell turn ends with the inbox's fsync and the SQLite commit of its batch
//! (`Shell::flush`, `Shell::stop`). Those run through [`blocking`]: on a tokio worker thread it
//! is `block_in_place`, so the runtime moves the worker's other tasks (the API, the bus runner)
//! to another thread first; on the runtime's `block_on` thread (where `cma` runs this loop) or
//! outside a multi-threaded runtime it simply runs. The datagram handling between the flushes is
//! CPU only.
//!
//! Epochs: the discovery schedule's and every check set's epoch are the stored one + 1 on a
//! change (a store written by older daemons, whose check-set epochs were
//! `max(previous + 1, now in seconds)`, simply continues from its stored epochs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assim_api::EngineView;
use assim_checks::RuleSet;
use assim_cma::{AuthorityConfig, CmaConfig, NodeState, Timing};
use assim_cma_shell::lease::{
    Answer as LeaseAnswer, Decision as LeaseDecision, Lease, LeaseConfig, Request as LeaseRequest,
    Role,
};
use assim_cma_shell::{EventTagger, LogInbox, Note, Now, Shell, ShellConfig};
use assim_inbox_jetstream::JetStreamInbox;

use crate::inbox::EngineInbox;
use assim_log::{FileStorage, LogConfig};
use assim_seal::{Identity, Sealer};
use assim_wire::Timestamp;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::metrics::{CmaMetrics, SharedMetrics};

pub mod checks_cma;

/// Everything the CMA needs to run.
#[derive(Clone, Debug)]
pub struct CmaOptions {
    /// UDP address for nanoprobes.
    pub listen: SocketAddr,
    /// HTTP API address.
    pub api: SocketAddr,
    /// Bearer token the API accepts besides the token file's; with one set, reads need a token
    /// too (mandatory when `api` is not loopback). See [`crate::api_access`].
    pub api_token: Option<String>,
    /// Host names the API answers to besides localhost and its addresses (`--api-host`).
    pub api_hosts: Vec<String>,
    /// Where checks set through the API may run programs from (`--check-plugin-dir`).
    pub check_plugin_dirs: Vec<PathBuf>,
    pub data_dir: PathBuf,
    pub timing: Timing,
    /// Accept nanoprobes that present no join token (labs and the demo only).
    pub open_enrollment: bool,
    /// The event bus: retention, tagging rules, sinks, NATS (the `[bus]` config section).
    pub bus: assim_bus::BusConfig,
    /// Discovery intervals sent to every nanoprobe that registers (the `[discovery]` table).
    pub discovery: assim_cma::schedule::ScheduleConfig,
    /// Operator rules for automatic service checks (`--check-rules DIR`; see docs/checks.md).
    pub check_rules: Option<PathBuf>,
    /// Topology history rows older than this are deleted ([`crate::retention`]).
    pub topology_history_max_age: Duration,
    /// At most this many topology history rows are kept.
    pub topology_history_max_rows: u64,
    /// Ring pins: host name or node id → ring name (`[pins]`, `--pin`; issue 13).
    pub pins: std::collections::BTreeMap<String, String>,
    /// The fleet questions: MAC registry and reverse DNS (`[fleet]`, [`crate::api_fleet`]).
    pub fleet: crate::api_fleet::FleetConfig,
    /// Extra security audit rule files (`--audit-rules`, `[audit] rules`).
    pub audit_rules: Vec<PathBuf>,
    /// Audit rules silenced by id (`--audit-silence`, `[audit] silence`).
    pub audit_silence: Vec<String>,
    /// How long a new host's `host.new` waits for its OS and SSH host keys (issue 17).
    pub host_new_wait: Duration,
    /// Which listeners `/api/v1/export/prometheus-sd` lists: the built-in exporter rules with
    /// the configured `[[exporters]]` applied (issue 17).
    pub exporter_rules: Vec<assim_export::prometheus::ExporterRule>,
    /// Statistics forwarding to Graphite (issue 17 item 5; [`crate::graphite`]).
    pub statistics: crate::graphite::StatisticsOptions,
    /// Where the state lives (`--store`; default `DATA_DIR/cma.sqlite`; [`crate::store`]).
    pub store: crate::store::StoreUrl,
    /// How long the engine lease lasts on PostgreSQL (`--engine-lease`; issue 14).
    pub engine_lease: Duration,
    /// The inbox on NATS JetStream (`--queue`; issue 14); `None`: `DATA_DIR/inbox`.
    pub queue: Option<assim_inbox_jetstream::QueueConfig>,
    /// What this process does in a cluster (`--role`; issue 14).
    pub role: ProcessRole,
}

/// What a `cma` process does (`--role`; issue 14; see docs/cluster.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProcessRole {
    /// Reads datagrams and, holding the engine lease, applies them.
    #[default]
    Whole,
    /// A packet reader ([`crate::reader`]).
    Reader,
    /// An engine that reads no datagrams: it follows the JetStream inbox.
    Engine,
}

impl ProcessRole {
    pub fn name(self) -> &'static str {
        match self {
            ProcessRole::Whole => "whole",
            ProcessRole::Reader => "reader",
            ProcessRole::Engine => "engine",
        }
    }
}

/// The audit rules in force: the shipped ones, the operator's files, without the silenced.
pub fn load_audit_rules(
    files: &[PathBuf],
    silence: &[String],
) -> anyhow::Result<assim_audit::RuleSet> {
    let mut texts = Vec::new();
    for f in files {
        let meta = std::fs::metadata(f)
            .with_context(|| format!("cannot read the audit rules {}", f.display()))?;
        anyhow::ensure!(
            meta.len() <= 4 << 20,
            "{} is larger than 4 MiB; is it an audit rules file?",
            f.display()
        );
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the audit rules {}", f.display()))?;
        texts.push((f.display().to_string(), text));
    }
    let refs: Vec<(&str, &str)> = texts.iter().map(|(o, t)| (o.as_str(), t.as_str())).collect();
    let all =
        assim_audit::RuleSet::build(&refs, &[]).map_err(|e| anyhow::anyhow!("audit rules: {e}"))?;
    if let Some(id) = silence.iter().find(|id| all.rule(id).is_none()) {
        anyhow::bail!("--audit-silence {id}: no audit rule has that id (see `assim audit rules`)");
    }
    assim_audit::RuleSet::build(&refs, silence).map_err(|e| anyhow::anyhow!("audit rules: {e}"))
}

/// The CMA's database file inside its data directory.
pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("cma.sqlite")
}

/// Runs the CMA until `shutdown` resolves.
///
/// On SQLite (the default) the engine starts at once. On PostgreSQL the HTTP API starts first
/// and the engine waits for the engine lease ([`assim_cma_shell::lease`]): while another `cma`
/// on the same database holds it, this one stands by (its API serves reads from the shared
/// database and `/api/v1/status` says `standby`), binds no UDP socket and applies nothing; it
/// takes over when the lease lapses. An active engine that loses the lease exits with an error
/// (restarted, it stands by).
pub async fn run(
    opts: CmaOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if opts.role == ProcessRole::Reader {
        return crate::reader::run(opts, shutdown).await;
    }
    // 0700 before anything is written into it (the identity, the database, the inbox).
    assim_seal::create_private_dir(&opts.data_dir)?;
    let identity = Identity::load_or_create(&opts.data_dir)?;
    let tagger = assim_bus::Tagger::new(&opts.bus.tag_rules).context("invalid [bus] tag_rules")?;
    let rules = load_rules(opts.check_rules.as_deref())?;
    let audit = load_audit_rules(&opts.audit_rules, &opts.audit_silence)?;
    let (run_tx, mut run_rx) = tokio::sync::mpsc::channel::<checks_cma::ChecksRequest>(64);
    let shared = Arc::new(SharedMetrics::default());
    let latest = crate::api_statistics::SharedLatest::default();
    let fanout = assim_bus::Fanout::default();
    let engine_view: crate::api::SharedEngineView = Arc::new(std::sync::Mutex::new(EngineView {
        store: opts.store.kind().into(),
        role: "active".into(),
        ..EngineView::default()
    }));
    tokio::pin!(shutdown);

    // PostgreSQL: the API at once, then stand by until this engine holds the lease.
    let mut api_task = None;
    let mut lease = None;
    let (last_event, last_event_rx) = watch::channel(0u64);
    let mut store = match &opts.store {
        crate::store::StoreUrl::Sqlite(_) => opts.store.open_engine()?,
        crate::store::StoreUrl::Postgres(_) => {
            let holder = crate::store::engine_holder(&opts.data_dir)?;
            let mut db = blocking(|| opts.store.open_engine())?;
            if let crate::store::EngineDb::Postgres(h) = &mut db {
                // An engine stopped inside a batch's transaction must not hold the lease row
                // (and so every takeover) for longer than the lease.
                blocking(|| h.set_idle_in_transaction_timeout(opts.engine_lease))
                    .map_err(|e| opts.store.unreachable(e))?;
            }
            check_identity(&mut db, &identity)?;
            let _ = last_event.send(db.last_event_id()?);
            {
                let mut v = engine_view.lock().expect("engine view lock");
                v.holder = Some(holder.clone());
                v.role = "standby".into();
            }
            let api = start_api(
                &opts,
                &identity,
                shared.clone(),
                last_event_rx.clone(),
                run_tx.clone(),
                &audit,
                latest.clone(),
                engine_view.clone(),
                // Standing by, the events come from another process's engine: the API's
                // streams follow the log.
                None,
            )
            .await?;
            api_task = Some(api);
            let config = LeaseConfig { ttl: opts.engine_lease };
            let mut election = Lease::new(config, Instant::now());
            let term = loop {
                if let Some(req) = election.poll(Instant::now()) {
                    let answer = blocking(|| ask_lease(&mut db, &holder, config.ttl, req));
                    let before = election.role().clone();
                    let was_failing = election.failing().is_some();
                    match election.handle(Instant::now(), answer) {
                        LeaseDecision::TakeOver { term } => break term,
                        LeaseDecision::Continue | LeaseDecision::Stop { .. } => {}
                    }
                    if let Role::Standby { holder: Some((active, term)) } = election.role()
                        && before != *election.role()
                    {
                        info!(active = %active, term, lease = ?config.ttl,
                            "standing by: another CMA engine holds the engine lease; this one \
                             applies nothing and takes over when the lease lapses");
                    }
                    log_store_trouble(&opts.store, was_failing, election.failing(), "standing by");
                    update_view(&engine_view, &election, Instant::now());
                    // The API's long-polls follow the active engine's events.
                    if let Ok(id) = blocking(|| db.last_event_id()) {
                        last_event.send_if_modified(|v| std::mem::replace(v, id) != id);
                    }
                }
                let next = election.poll_timeout();
                tokio::select! {
                    _ = sleep_until(next) => {}
                    _ = &mut shutdown => {
                        info!("CMA stopping (standby)");
                        if let Some(t) = api_task.take() { t.abort(); }
                        return Ok(());
                    }
                }
            };
            info!(%holder, term, store = %opts.store, "this CMA engine holds the engine lease; taking over");
            lease = Some((election, holder));
            update_view(&engine_view, &lease.as_ref().expect("just set").0, Instant::now());
            db
        }
    };
    match &mut store {
        crate::store::EngineDb::Sqlite(s) => s.set_statistics_queue_max(opts.statistics.queue_max),
        crate::store::EngineDb::Postgres(h) => h
            .set_statistics_queue_max(opts.statistics.queue_max)
            .map_err(|e| opts.store.unreachable(e))?,
    }
    assim_bus::runner::install_config_sinks(store.event_log(), &opts.bus)
        .context("cannot install the [bus] sinks")?;
    store.set_meta("listen", &opts.listen.to_string())?;
    // An engine fed by packet readers reads no datagrams (`--role engine`).
    let socket = if opts.role == ProcessRole::Engine {
        None
    } else {
        match bind_udp(&opts, &mut store, &mut lease, &engine_view, &mut shutdown).await? {
            Some(s) => Some(s),
            None => {
                if let Some(t) = api_task.take() {
                    t.abort();
                }
                return Ok(());
            }
        }
    };
    // A large receive buffer absorbs registration storms and report bursts between turns.
    // SO_RCVBUFFORCE (root) may exceed net.core.rmem_max; otherwise the kernel caps SO_RCVBUF.
    use nix::sys::socket::{setsockopt, sockopt};
    if let Some(socket) = &socket
        && setsockopt(socket, sockopt::RcvBufForce, &RECV_BUFFER).is_err()
        && let Err(e) = setsockopt(socket, sockopt::RcvBuf, &RECV_BUFFER)
    {
        debug!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    let session = assim_seal::next_session(&opts.data_dir)?;
    let mut sealer = Sealer::new(identity.clone(), session);
    sealer.set_accept_unknown(true);
    let mut inbox = open_inbox_holding_lease(&opts, &mut store, &mut lease, &engine_view).await?;
    if let Some((_, holder)) = &lease {
        match &mut inbox {
            EngineInbox::Local(local) => {
                // Whose inbox the stored position counts in: an engine taking over from another
                // one has nothing in its own inbox that the store's position refers to, so the
                // position becomes this inbox's end and what this inbox still holds (from an
                // earlier term) goes.
                let position = local.log().map_or(0, |l| l.next_lsn().saturating_sub(1));
                let claim = blocking(|| claim_inbox(&mut store, holder, position))?;
                if claim.previous.as_deref() != Some(holder.as_str()) {
                    discard_inbox(local, &claim)?;
                }
            }
            EngineInbox::JetStream(shared) => {
                // One inbox for every engine: the stored position counts in the stream, and
                // this engine replays from it what the last one acknowledged but had not
                // applied. Only a first use (or a stream made anew) starts at its end.
                let owner = shared.owner();
                let end = shared.opened().last;
                let claim = blocking(|| claim_inbox(&mut store, &owner, end))?;
                if claim.previous.as_deref() != Some(owner.as_str()) {
                    warn!(
                        stream = %shared.config().stream, position = end,
                        previous = claim.previous.as_deref().unwrap_or("(none)"),
                        "the inbox is now this JetStream stream; the stored position starts at \
                         its end (records an earlier inbox held but had not applied are not in it)"
                    );
                }
            }
        }
    }
    let last_id = store.last_event_id()?;
    // Switch checks ping the switch's management address when this process may (module
    // `ping`); otherwise they decide without it.
    let pinger = match crate::ping::Pinger::open() {
        Ok(p) => {
            info!(socket = ?p.kind, "switch management addresses will be pinged in switch checks");
            Some(p)
        }
        Err(why) => {
            info!("switch management addresses will not be pinged: {why}");
            None
        }
    };
    let core = CmaConfig {
        timing: opts.timing,
        placement_key: identity.derive_key("assim ring placement"),
        pins: opts.pins.clone(),
        management_probes: pinger.is_some(),
    };
    let mut config = ShellConfig::new(core.clone(), session);
    config.authority = AuthorityConfig {
        core,
        discovery: opts.discovery.clone(),
        rules,
        audit: audit.clone(),
        host_new_wait: opts.host_new_wait,
    };
    config.open_enrollment = opts.open_enrollment;
    if opts.role == ProcessRole::Engine {
        config.role = assim_cma_shell::Role::Engine;
    }
    config.graphite_prefix =
        opts.statistics.graphite.as_ref().map(|_| opts.statistics.prefix.clone());
    config.tagger = Some(EventTagger::new(move |e| {
        tagger.apply(e);
    }));
    let shell = blocking(|| Shell::start(config, sealer, inbox, store, now()))
        .context("cannot start the CMA engine")?;
    let nodes = shell.core().nodes().count();
    let _ = last_event.send(last_id);

    let api_task = match api_task {
        Some(t) => t,
        None => {
            start_api(
                &opts,
                &identity,
                shared.clone(),
                last_event_rx,
                run_tx,
                &audit,
                latest.clone(),
                engine_view.clone(),
                Some(fanout.clone()),
            )
            .await?
        }
    };
    info!(
        listen = %opts.listen, api = %opts.api, node = %identity.node_id(),
        key = %identity.fingerprint(), nodes, open_enrollment = opts.open_enrollment,
        store = %opts.store, "CMA started"
    );
    if opts.api_token.is_some() {
        info!(api = %opts.api, "the HTTP API requires a bearer token (Authorization: Bearer …)");
    }
    let graphite = Arc::new(crate::graphite::ForwarderStatus::default());
    let graphite_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(target) = &opts.statistics.graphite {
        // Only the active engine forwards: a standby reaches this point only once it holds
        // the lease.
        let open = opts.store.statistics_outbox_opener();
        crate::graphite::spawn(open, target.clone(), graphite.clone(), graphite_stop.clone())
            .context("cannot start the Graphite forwarder")?;
        info!(graphite = %target, prefix = %opts.statistics.prefix, "forwarding statistics to Graphite");
    }
    let retention_task = tokio::spawn(crate::retention::run(
        opts.store.history_pruner(),
        opts.topology_history_max_age,
        opts.topology_history_max_rows,
    ));
    let bus_task = tokio::spawn(assim_bus::runner::run(
        opts.store.event_log_opener(),
        opts.bus.clone(),
        last_event.subscribe(),
    ));

    let (pings_tx, mut pings_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    let mut d = Driver {
        shell,
        socket: socket.map(Arc::new),
        shared,
        last_event,
        fanout,
        last_publish: Instant::now() - Duration::from_secs(10),
        store_errors_seen: 0,
        replies: checks_cma::Replies::default(),
        pinger,
        pings_tx,
        pings_in_flight: 0,
        latest,
        graphite,
        shed: Arc::default(),
    };
    d.send_all().await;
    let (packets_tx, mut packets) = tokio::sync::mpsc::channel::<Batch>(READER_QUEUE);
    // An engine fed by packet readers: it follows the inbox, and talks to the readers on NATS.
    let (readers, mut tail, mut probe_replies) = match (&d.socket, d.shell.inbox(), &opts.queue) {
        (None, EngineInbox::JetStream(inbox), Some(queue)) => {
            let tail = inbox
                .tail(d.shell.next_position())
                .map_err(|e| anyhow::anyhow!("cannot follow the JetStream inbox: {e}"))?;
            let subjects = crate::reader::Subjects::new(queue);
            let nats = crate::reader::connect(queue, "assim-cma-engine").await?;
            let replies = nats.subscribe(subjects.probe_reply()).await.context("NATS subscribe")?;
            info!(
                from = d.shell.next_position(),
                "following the inbox the packet readers append to"
            );
            (Some(Readers { nats, subjects }), Some(tail), Some(replies))
        }
        _ => (None, None, None),
    };
    let reader_task = match &d.socket {
        Some(socket) => tokio::spawn(read_packets(socket.clone(), packets_tx, d.shed.clone())),
        // Kept open: the loop waits on it as on a socket that never receives.
        None => tokio::spawn(async move {
            let _open = packets_tx;
            std::future::pending::<()>().await
        }),
    };
    let mut reader_stopped = false;
    let mut lost = None;
    loop {
        let deadline = d.shell.poll_timeout();
        let publish = d.last_publish + Duration::from_secs(1);
        let mut deadline = deadline.map_or(publish, |t| t.min(publish));
        if let Some(t) = lease.as_ref().and_then(|(l, _)| l.poll_timeout()) {
            deadline = deadline.min(t);
        }
        let deadline = Some(deadline);
        tokio::select! {
            batch = packets.recv() => {
                let Some(batch) = batch else {
                    reader_stopped = true;
                    break;
                };
                let t = now();
                let mut taken = batch.len();
                for (src, datagram) in batch {
                    d.shell.handle_datagram(t, src, &datagram);
                }
                // Take whatever else is already queued, bounded, before acting: bigger turns
                // mean fewer fsyncs per record.
                while taken < MAX_DATAGRAMS_PER_TURN {
                    let Ok(batch) = packets.try_recv() else { break };
                    taken += batch.len();
                    for (src, datagram) in batch {
                        d.shell.handle_datagram(t, src, &datagram);
                    }
                }
            }
            records = next_records(&mut tail) => {
                let Some(records) = records else {
                    // The inbox's client thread is gone: as if the socket's reader stopped.
                    reader_stopped = true;
                    break;
                };
                let t = now();
                blocking(|| d.shell.apply_records(t, records));
            }
            Some((node, nonce)) = next_probe_reply(&mut probe_replies) => {
                d.shell.probe_reply(now(), node, nonce);
            }
            Some(req) = run_rx.recv() => d.replies.request(&mut d.shell, req),
            Some((id, answered)) = pings_rx.recv() => {
                d.pings_in_flight = d.pings_in_flight.saturating_sub(1);
                d.shell.management_probe_result(now(), id, answered);
            }
            _ = sleep_until(deadline) => {}
            _ = &mut shutdown => break,
        }
        // The lease first: an engine that lost it must not apply this turn.
        if let Some((election, holder)) = lease.as_mut()
            && let Some(req) = election.poll(Instant::now())
        {
            let db = d.shell.store_mut();
            let answer = blocking(|| ask_lease(db, holder, election.config().ttl, req));
            let was_failing = election.failing().is_some();
            if let LeaseDecision::Stop { reason } = election.handle(Instant::now(), answer) {
                update_view(&engine_view, election, Instant::now());
                lost = Some(reason);
                break;
            }
            log_store_trouble(&opts.store, was_failing, election.failing(), "active");
            update_view(&engine_view, election, Instant::now());
        }
        // Timers run every turn, so a steady stream of datagrams cannot starve them.
        let t = now();
        blocking(|| {
            d.shell.handle_timeout(t);
            d.shell.flush(t);
        });
        d.replies.flushed();
        d.send_all().await;
        if let Some(r) = &readers {
            r.send_outbound(&mut d.shell).await;
        }
    }
    graphite_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader_task.abort();
    api_task.abort();
    bus_task.abort();
    retention_task.abort();
    if reader_stopped {
        let what =
            if d.socket.is_some() { "packet reader" } else { "follower of the JetStream inbox" };
        error!("the CMA's {what} stopped; the CMA stops");
        blocking(|| d.shell.stop(now()));
        anyhow::bail!("the CMA's {what} stopped (see the log); restart the CMA");
    }
    if let Some(reason) = lost {
        // Nothing more is applied or stored (fencing would refuse it anyway).
        error!(%reason, "this CMA engine lost the engine lease and stops; restarted, it stands by");
        anyhow::bail!(
            "this CMA engine lost the engine lease: {reason}. Another engine applies records \
             now; restart this one to stand by"
        );
    }
    info!("CMA stopping");
    blocking(|| d.shell.stop(now()));
    d.send_all().await;
    if lease.is_some()
        && let crate::store::EngineDb::Postgres(h) = d.shell.store_mut()
    {
        // A standby need not wait for the lease to lapse.
        match blocking(|| h.release_lease()) {
            Ok(()) => info!("engine lease released"),
            Err(e) => warn!(error = %e, "cannot release the engine lease; it lapses by itself"),
        }
    }
    Ok(())
}

/// Binds the nanoprobes' UDP address. On SQLite an address in use is an error at once. An
/// engine that just took the lease over retries instead, renewing its lease meanwhile: on one
/// host the engine it replaced may still hold the address while stopped (SIGSTOP), and it
/// exits as soon as it runs again and finds its lease taken. `None`: shut down meanwhile.
async fn bind_udp(
    opts: &CmaOptions,
    db: &mut crate::store::EngineDb,
    lease: &mut Option<(Lease, String)>,
    view: &crate::api::SharedEngineView,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Option<UdpSocket>> {
    let mut warned = false;
    loop {
        let e = match UdpSocket::bind(opts.listen).await {
            Ok(s) => return Ok(Some(s)),
            Err(e) => e,
        };
        let Some((election, holder)) = lease.as_mut() else {
            return Err(e).with_context(|| {
                format!("cannot bind UDP {}: is another CMA running?", opts.listen)
            });
        };
        if e.kind() != std::io::ErrorKind::AddrInUse {
            return Err(e).with_context(|| format!("cannot bind UDP {}", opts.listen));
        }
        if !warned {
            warned = true;
            warn!(listen = %opts.listen, "the UDP address is in use (by the engine this one replaces, stopped but not dead?); retrying while holding the engine lease");
        }
        renew_before_start(db, election, holder, view)?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.as_mut() => return Ok(None),
        }
    }
}

/// Starts the HTTP API on its listener.
#[allow(clippy::too_many_arguments)]
async fn start_api(
    opts: &CmaOptions,
    identity: &Identity,
    shared: Arc<SharedMetrics>,
    last_event_rx: watch::Receiver<u64>,
    run_tx: checks_cma::RunSender,
    audit: &assim_audit::RuleSet,
    latest: crate::api_statistics::SharedLatest,
    engine_view: crate::api::SharedEngineView,
    fanout: Option<assim_bus::Fanout>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let api_listener = tokio::net::TcpListener::bind(opts.api)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {}", opts.api))?;
    let (queries, events) = (opts.store.queries_opener(), opts.store.event_log_opener());
    let access = crate::api_access::ApiAccess::load(opts)?;
    let info = crate::api::CmaInfo {
        node_id: identity.node_id(),
        fingerprint: identity.fingerprint(),
        listen: opts.listen,
        version: assim_wire::VERSION.to_string(),
    };
    // Opening the handles connects (PostgreSQL): on a blocking thread.
    let api_state = blocking(|| {
        crate::api::ApiState::with_engine(queries, events, shared, last_event_rx, access, info)
    })
    .map_err(|e| match &opts.store {
        crate::store::StoreUrl::Postgres(_) => opts.store.unreachable(format!("{e:#}")),
        crate::store::StoreUrl::Sqlite(_) => e,
    })?;
    let api_state = api_state
        .with_check_runner(run_tx)
        .with_fleet(opts.fleet.clone())
        .with_audit(audit.clone())
        .with_exporter_rules(opts.exporter_rules.clone())
        .with_statistics(latest)
        .with_engine_view(engine_view);
    let api_state = match fanout {
        Some(f) => api_state.with_fanout(f),
        None => api_state,
    };
    Ok(tokio::spawn(crate::api::serve(api_listener, api_state)))
}

/// The node id this CMA's identity has must be the one the database was made with: the
/// nanoprobes pinned that key. The first engine on a database records it.
pub(crate) fn check_identity(
    db: &mut crate::store::EngineDb,
    identity: &Identity,
) -> anyhow::Result<()> {
    let mine = identity.node_id().to_string();
    match db.meta(CMA_NODE_ID)? {
        None => db.set_meta(CMA_NODE_ID, &mine),
        Some(id) if id == mine => Ok(()),
        Some(id) => anyhow::bail!(
            "this CMA's identity (node {mine}) is not the one this database belongs to (node \
             {id}): every CMA on one database must share the identity the nanoprobes trust. \
             Copy the files {} and {} from the first CMA's data directory into this one's \
             (mode 0600), then start again",
            assim_seal::identity::NODE_ID_FILE,
            assim_seal::identity::KEY_FILE
        ),
    }
}

/// The metadata key under which the database records its CMA's node id.
const CMA_NODE_ID: &str = "cma_node_id";

/// Asks the store what `req` asks (the lease decision's IO).
fn ask_lease(
    db: &mut crate::store::EngineDb,
    holder: &str,
    ttl: Duration,
    req: LeaseRequest,
) -> LeaseAnswer {
    let crate::store::EngineDb::Postgres(h) = db else {
        return LeaseAnswer::Failed("the SQLite store has no engine lease".into());
    };
    let state = match req {
        LeaseRequest::Acquire => h.acquire_lease(holder, ttl),
        LeaseRequest::Renew { .. } => h.renew_lease(holder, ttl),
    };
    match state {
        Ok(assim_store_postgres::LeaseState::Mine { term }) => LeaseAnswer::Mine { term },
        Ok(assim_store_postgres::LeaseState::Other { term, holder, expires_in_ms }) => {
            LeaseAnswer::Other { holder, term, expires_in: Duration::from_millis(expires_in_ms) }
        }
        Err(e) => LeaseAnswer::Failed(e.to_string()),
    }
}

/// Renews the engine lease if it is due, while the engine is still starting; an error if the
/// lease was lost meanwhile.
fn renew_before_start(
    db: &mut crate::store::EngineDb,
    election: &mut Lease,
    holder: &str,
    view: &crate::api::SharedEngineView,
) -> anyhow::Result<()> {
    if let Some(req) = election.poll(Instant::now()) {
        let answer = blocking(|| ask_lease(db, holder, election.config().ttl, req));
        let decision = election.handle(Instant::now(), answer);
        update_view(view, election, Instant::now());
        if let LeaseDecision::Stop { reason } = decision {
            anyhow::bail!("this CMA engine lost the engine lease before it could start: {reason}");
        }
    }
    Ok(())
}

/// Opens the engine's inbox on a blocking thread while the engine lease is kept renewed: opening
/// the JetStream inbox waits out a NATS cluster's leader election (seconds), which may be longer
/// than the lease. Stops if the lease is lost meanwhile.
async fn open_inbox_holding_lease(
    opts: &CmaOptions,
    db: &mut crate::store::EngineDb,
    lease: &mut Option<(Lease, String)>,
    view: &crate::api::SharedEngineView,
) -> anyhow::Result<EngineInbox> {
    let (queue, data_dir) = (opts.queue.clone(), opts.data_dir.clone());
    let mut task = tokio::task::spawn_blocking(move || open_inbox(queue, data_dir));
    loop {
        let next = lease.as_ref().and_then(|(l, _)| l.poll_timeout());
        tokio::select! {
            opened = &mut task => return opened.context("opening the inbox panicked")?,
            _ = sleep_until(next) => {
                if let Some((election, holder)) = lease.as_mut() {
                    renew_before_start(db, election, holder, view)?;
                }
            }
        }
    }
}

/// Opens the engine's inbox (blocking): the local log in `DATA_DIR/inbox`, or the JetStream
/// stream of `--queue`.
fn open_inbox(
    queue: Option<assim_inbox_jetstream::QueueConfig>,
    data_dir: std::path::PathBuf,
) -> anyhow::Result<EngineInbox> {
    if let Some(queue) = queue {
        let shared = JetStreamInbox::open(queue.clone())
            .map_err(|e| anyhow::anyhow!("cannot open the JetStream inbox: {e}"))?;
        info!(
            queue = %queue.redacted_url(), stream = %queue.stream, replicas = queue.replicas,
            position = shared.opened().last, "the inbox is on NATS JetStream"
        );
        return Ok(EngineInbox::JetStream(shared));
    }
    let inbox_dir = data_dir.join("inbox");
    let shown = inbox_dir.display().to_string();
    let local = LogInbox::open(
        move || {
            FileStorage::open(&inbox_dir).map_err(|e| assim_log::LogError::Io {
                file: inbox_dir.display().to_string(),
                op: "opening",
                source: e,
            })
        },
        LogConfig::default(),
    )
    .with_context(|| format!("cannot open the inbox in {shown}"))?;
    Ok(EngineInbox::Local(local))
}

/// Records this engine as the owner of the stored inbox position (see
/// [`assim_store_postgres::Store::claim_inbox`]).
fn claim_inbox(
    db: &mut crate::store::EngineDb,
    holder: &str,
    position: u64,
) -> anyhow::Result<assim_store_postgres::InboxClaim> {
    let crate::store::EngineDb::Postgres(h) = db else {
        return Ok(assim_store_postgres::InboxClaim {
            previous: Some(holder.to_owned()),
            mine_through: None,
        });
    };
    let holder = holder.to_owned();
    Ok(h.call(move |s| s.claim_inbox(&holder, position))?)
}

/// Drops every record of this engine's inbox: the stored position counts in another engine's
/// inbox (it applied records since this one last did), so these are from an earlier term.
/// Those up to the position this engine had stored then were applied; those after it were
/// acknowledged to their nanoprobes but never applied, and are lost with this step (a warning
/// counts them); the JetStream inbox (one inbox for every engine) is what removes that window
/// (docs/cluster.md).
fn discard_inbox(
    inbox: &mut LogInbox<FileStorage>,
    claim: &assim_store_postgres::InboxClaim,
) -> anyhow::Result<()> {
    let (first, next) = inbox.log().map_or((0, 0), |l| (l.first_lsn(), l.next_lsn()));
    let unapplied = match claim.mine_through {
        Some(through) => next.saturating_sub(first.max(through + 1)),
        // Never owned the position: nothing in this inbox was applied to this database.
        None => next.saturating_sub(first),
    };
    if unapplied > 0 {
        warn!(
            records = unapplied,
            previous_owner = claim.previous.as_deref().unwrap_or("(none)"),
            "another engine applies records since this one last did: this engine's inbox held \
             records it had acknowledged but not applied before it lost the engine lease; they \
             are dropped (see docs/cluster.md, 'The inbox is still local')"
        );
    } else if next > first {
        debug!(
            records = next - first,
            "dropping this engine's applied inbox records of an earlier term"
        );
    }
    assim_store::Inbox::remove_through(inbox, u64::MAX)
        .context("cannot empty the inbox at the takeover")?;
    Ok(())
}

/// Logs when the store stops or starts answering the lease requests (not every retry).
fn log_store_trouble(
    store: &crate::store::StoreUrl,
    was_failing: bool,
    failing: Option<&str>,
    role: &str,
) {
    match (was_failing, failing) {
        (false, Some(why)) => warn!(
            %store, error = %why, role,
            "cannot reach the store for the engine lease; retrying (an active engine keeps its \
             state; fencing refuses its batches if another engine takes over meanwhile)"
        ),
        (true, None) => info!(%store, role, "the store answers the engine lease requests again"),
        _ => {}
    }
}

/// Shows the lease decision's state on `/api/v1/status`.
fn update_view(view: &crate::api::SharedEngineView, election: &Lease, now: Instant) {
    let mut v = view.lock().expect("engine view lock");
    v.detail = election.failing().map(|why| format!("cannot reach the store: {why}"));
    match election.role() {
        Role::Standby { holder } => {
            v.role = "standby".into();
            v.active = holder.as_ref().map(|(h, _)| h.clone());
            v.term = holder.as_ref().map(|(_, t)| *t);
        }
        Role::Active { term, .. } => {
            v.role = "active".into();
            v.active = v.holder.clone();
            v.term = Some(*term);
            if let Some(d) = election.in_doubt(now) {
                v.detail = Some(format!(
                    "the engine lease has not been renewed for {} s (the store cannot be \
                     reached); another engine may take over",
                    d.as_secs()
                ));
            }
        }
        Role::Stopped { reason } => {
            v.role = "stopped".into();
            v.detail = Some(reason.clone());
        }
    }
}

/// The shipped check rules plus the operator's (`--check-rules DIR`).
fn load_rules(dir: Option<&std::path::Path>) -> anyhow::Result<RuleSet> {
    let rules = RuleSet::load(dir).with_context(|| match dir {
        Some(d) => format!("cannot load the check rules in {} (see docs/checks.md)", d.display()),
        None => "the built-in check rules are invalid".to_owned(),
    })?;
    info!(
        rules = rules.rules.len(),
        host_checks = rules.host_checks.len(),
        hand_set = rules.checks.len(),
        dir = ?dir,
        "check rules loaded"
    );
    Ok(rules)
}

/// Runs `f`, which blocks on the store or the inbox, without stalling a tokio worker thread: on
/// a multi-threaded runtime through `block_in_place`; otherwise directly (a current-thread
/// runtime cannot hand its tasks elsewhere, and `block_in_place` would panic there).
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The current time in both clocks.
pub(crate) fn now() -> Now {
    Now { mono: Instant::now(), wall: Timestamp::now() }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Datagrams handled per loop turn at most (one inbox fsync and one store commit per turn).
pub(crate) const MAX_DATAGRAMS_PER_TURN: usize = 4096;
/// Datagrams the packet reader puts in one batch at most.
const READER_BATCH: usize = 256;
/// Batches the packet reader may hold for the loop (at most 16,384 datagrams, 20 MB).
pub(crate) const READER_QUEUE: usize = 64;

/// Datagrams received, with their senders.
pub(crate) type Batch = Vec<(SocketAddr, Vec<u8>)>;

/// The packet reader (see the module doc): receives from `socket` in batches until the loop
/// is gone.
pub(crate) async fn read_packets(
    socket: Arc<UdpSocket>,
    tx: tokio::sync::mpsc::Sender<Batch>,
    shed: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut batch = Vec::with_capacity(16);
        batch.push((src, buf[..len].to_vec()));
        while batch.len() < READER_BATCH {
            match socket.try_recv_from(&mut buf) {
                Ok((len, src)) => batch.push((src, buf[..len].to_vec())),
                Err(_) => break,
            }
        }
        if tx.capacity() < READER_QUEUE / 2 {
            // The loop is behind: keep the queue for what it needs (see the module doc).
            let before = batch.len();
            batch.retain(|(_, d)| !is_key_request(d));
            let dropped = (before - batch.len()) as u64;
            shed.fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
            if batch.is_empty() {
                continue;
            }
        }
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Whether a datagram is a key request (its header says so; nothing is opened).
fn is_key_request(datagram: &[u8]) -> bool {
    assim_wire::Header::decode(datagram)
        .is_ok_and(|(h, _)| h.kind == assim_wire::DatagramKind::KeyRequest)
}

/// The UDP receive buffer the CMA asks for (bytes).
pub(crate) const RECV_BUFFER: usize = 32 << 20;

type CmaShell = Shell<Sealer, EngineInbox, crate::store::EngineDb>;

/// An engine's links to the packet readers (`--role engine`): the inbox it follows, and NATS
/// for the messages both ways ([`crate::reader`]).
struct Readers {
    nats: async_nats::Client,
    subjects: crate::reader::Subjects,
}

impl Readers {
    /// Hands the engine's messages for nanoprobes to the readers.
    async fn send_outbound(&self, shell: &mut CmaShell) {
        while let Some(out) = shell.poll_outbound() {
            let subject = self.subjects.out(out.via);
            if let Err(e) = self.nats.publish(subject, out.encode().into()).await {
                warn!(node = %out.to, error = %e, "cannot hand a message to the packet readers");
            }
        }
    }
}

/// The next records the readers appended, as many as are there (at most a turn's worth);
/// never ready without readers; `None` once the follower stopped.
async fn next_records(
    tail: &mut Option<tokio::sync::mpsc::Receiver<(u64, Vec<u8>)>>,
) -> Option<Vec<(u64, Vec<u8>)>> {
    let Some(tail) = tail else { return std::future::pending().await };
    let first = tail.recv().await?;
    let mut records = vec![first];
    while records.len() < MAX_DATAGRAMS_PER_TURN {
        let Ok(next) = tail.try_recv() else { break };
        records.push(next);
    }
    Some(records)
}

/// The next node's answer to a probe from a reader; never ready without readers.
async fn next_probe_reply(
    replies: &mut Option<async_nats::Subscriber>,
) -> Option<(assim_wire::NodeId, u64)> {
    use futures_util::StreamExt as _;
    let Some(replies) = replies else { return std::future::pending().await };
    loop {
        let m = replies.next().await?;
        match crate::reader::decode_probe_reply(&m.payload) {
            Some(reply) => return Some(reply),
            None => debug!(bytes = m.payload.len(), "a malformed probe answer; dropped"),
        }
    }
}

struct Driver {
    shell: CmaShell,
    /// `None`: an engine fed by packet readers.
    socket: Option<Arc<UdpSocket>>,
    shared: Arc<SharedMetrics>,
    last_event: watch::Sender<u64>,
    /// Live delivery of stored events to the API's event streams.
    fanout: assim_bus::Fanout,
    last_publish: Instant,
    store_errors_seen: u64,
    /// The API's requests waiting for an answer.
    replies: checks_cma::Replies,
    /// Pings of switch management addresses: the pinger, answers (id, answered), in flight.
    pinger: Option<crate::ping::Pinger>,
    pings_tx: tokio::sync::mpsc::UnboundedSender<(u64, bool)>,
    pings_in_flight: usize,
    /// The latest statistics, for the API's Prometheus exposition.
    latest: crate::api_statistics::SharedLatest,
    /// What the Graphite forwarder reports.
    graphite: Arc<crate::graphite::ForwarderStatus>,
    /// Key requests the packet reader dropped while the loop was behind.
    shed: Arc<std::sync::atomic::AtomicU64>,
}

impl Driver {
    /// Sends the shell's datagrams, publishes the last stored event and the metrics.
    async fn send_all(&mut self) {
        while let Some(t) = self.shell.poll_transmit() {
            let Some(socket) = &self.socket else { continue };
            if let Err(e) = socket.try_send_to(&t.datagram, t.to) {
                debug!(addr = %t.to, error = %e, "UDP send failed");
            }
        }
        while let Some(n) = self.shell.poll_note() {
            match n {
                Note::Stored { last_event: Some(id), events } => {
                    // Live subscribers first, then the id: a stream that catches up from the
                    // log to this id and then listens misses nothing (see `api_bus::stream`).
                    self.fanout.publish(events);
                    let _ = self.last_event.send(id);
                }
                Note::CommandAnswer(a) => self.replies.answer(a),
                Note::ProbeManagement { id, address, timeout } => self.ping(id, address, timeout),
                Note::Statistics(b) => {
                    let now_s = Timestamp::now().micros() / 1_000_000;
                    self.latest.lock().expect("statistics lock").apply(&b, now_s);
                }
                _ => {}
            }
        }
        if self.last_publish.elapsed() >= Duration::from_secs(1) {
            self.publish_metrics();
        }
    }

    /// Pings a switch's management address on a blocking thread; the answer comes back
    /// through `pings_tx`. Beyond [`crate::ping::MAX_IN_FLIGHT`] the check goes without.
    fn ping(&mut self, id: u64, address: std::net::IpAddr, timeout: Duration) {
        let Some(pinger) = self.pinger else { return };
        if self.pings_in_flight >= crate::ping::MAX_IN_FLIGHT {
            debug!(%address, "too many management pings in flight; this check goes without");
            return;
        }
        self.pings_in_flight += 1;
        let tx = self.pings_tx.clone();
        tokio::task::spawn_blocking(move || {
            let answered = pinger.ping(address, timeout);
            debug!(%address, answered, "management address pinged");
            let _ = tx.send((id, answered));
        });
    }

    fn publish_metrics(&mut self) {
        self.last_publish = Instant::now();
        let s = self.shell.metrics();
        let _ = self.store_errors_seen;
        let mut m = CmaMetrics {
            datagrams_in: s.datagrams_in,
            datagrams_out: s.datagrams_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            rejects: s.rejects,
            events: s.events,
            ring_changes: s.ring_changes,
            reports: s.reports,
            store_errors: s.store_errors,
            inbox_syncs: s.inbox_syncs,
            inbox_records: s.inbox_records,
            inbox_sync_nanos: s.inbox_sync_nanos,
            applied_other: s.applied_other,
            retransmits: s.retransmits,
            retransmits_held: s.retransmits_held,
            dh_ops: s.dh_ops,
            busy_sent: s.busy_sent,
            busy_dropped: s.busy_dropped,
            key_requests_shed: self.shed.load(std::sync::atomic::Ordering::Relaxed),
            ..CmaMetrics::default()
        };
        {
            use std::sync::atomic::Ordering::Relaxed;
            let mut latest = self.latest.lock().expect("statistics lock");
            latest.expire(Timestamp::now().micros() / 1_000_000);
            let g = &self.graphite;
            m.statistics = crate::metrics::StatisticsMetrics {
                batches: s.statistics_batches,
                series: s.statistics_series,
                invalid: s.statistics_invalid,
                clamped: s.statistics_clamped,
                refused: s.statistics_refused,
                exposed: latest.len() as u64,
                exposed_refused: latest.refused,
                graphite_sent: g.sent.load(Relaxed),
                graphite_failures: g.failures.load(Relaxed),
                graphite_queued: g.queued.load(Relaxed),
                graphite_dropped: g.dropped.load(Relaxed),
                graphite_down: g.down.load(Relaxed),
            };
        }
        if let Some(st) = self.shell.store_unavailable() {
            let secs = st.since.elapsed().as_secs();
            m.store_unavailable_seconds = secs.max(1);
            m.store_unavailable = Some(format!(
                "the store refuses writes since {secs} s ({} attempts; the error is in the \
                 CMA's log); the CMA acknowledges no new records meanwhile ({} refused, kept in \
                 the nanoprobes' spools; {} waiting in the inbox) and resumes by itself once \
                 writes succeed",
                st.failures, st.refused, st.deferred
            ));
        }
        let core = self.shell.core();
        let mut nodes: BTreeMap<&'static str, u64> =
            NodeState::ALL.iter().map(|s| (s.name(), 0)).collect();
        for n in core.nodes() {
            *nodes.entry(n.state.name()).or_insert(0) += 1;
        }
        m.nodes = nodes;
        m.ring_members = core.ring().len() as u64;
        m.host_new_waiting = self.shell.authority().host_new_waiting().len() as u64;
        let stats = core.stats();
        m.reports_ignored = stats.reports_ignored_not_neighbour + stats.reports_ignored_unknown;
        self.shared.publish(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_reader_tells_key_requests_from_the_rest() {
        let identity = Identity::generate(&mut rand::rngs::OsRng);
        let mut node = Sealer::new(identity.clone(), 1);
        let mut request = Vec::new();
        node.key_request(&mut request);
        assert!(is_key_request(&request));
        let mut reply = Vec::new();
        node.key_reply(&identity.public_key(), &mut reply);
        assert!(!is_key_request(&reply), "a key reply is not a request");
        for junk in [&[][..], &[0u8; 3][..], &request[..10], &[0xff; 200][..]] {
            assert!(!is_key_request(junk), "{junk:?}");
        }
    }
}
