//! The CMA driver: IO only. One task owns the UDP socket, its timer and the CMA shell
//! ([`assim_cma_shell::Shell`]: sealing, enrolment, the inbox's next-record rule and group
//! commit, acknowledgements after the inbox sync, the engine and its batches to the SQLite store,
//! the replay after a restart). Per loop turn: receive a batch of datagrams (or wake for the
//! deadline) and hand them to the shell, flush it, send its datagrams, publish its notes (the
//! latest stored event for the API and the bus) and metrics.
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
use assim_checks::RuleSet;
use assim_cma::{AuthorityConfig, CmaConfig, NodeState, Timing};
use assim_cma_shell::{EventTagger, LogInbox, Note, Now, Shell, ShellConfig};
use assim_log::{FileStorage, LogConfig};
use assim_seal::{Identity, Sealer};
use assim_store_sqlite::Store;
use assim_wire::Timestamp;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

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
pub async fn run(
    opts: CmaOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // 0700 before anything is written into it (the identity, the database, the inbox).
    assim_seal::create_private_dir(&opts.data_dir)?;
    let identity = Identity::load_or_create(&opts.data_dir)?;
    let mut store = Store::open(&store_path(&opts.data_dir))?;
    store.set_statistics_queue_max(opts.statistics.queue_max);
    let tagger = assim_bus::Tagger::new(&opts.bus.tag_rules).context("invalid [bus] tag_rules")?;
    let rules = load_rules(opts.check_rules.as_deref())?;
    assim_bus::runner::install_config_sinks(&mut store, &opts.bus)
        .context("cannot install the [bus] sinks")?;
    store.set_meta("listen", &opts.listen.to_string())?;
    let (run_tx, mut run_rx) = tokio::sync::mpsc::channel::<checks_cma::ChecksRequest>(64);
    let socket = UdpSocket::bind(opts.listen)
        .await
        .with_context(|| format!("cannot bind UDP {}: is another CMA running?", opts.listen))?;
    // A large receive buffer absorbs registration storms and report bursts between turns.
    // SO_RCVBUFFORCE (root) may exceed net.core.rmem_max; otherwise the kernel caps SO_RCVBUF.
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&socket, sockopt::RcvBufForce, &RECV_BUFFER).is_err()
        && let Err(e) = setsockopt(&socket, sockopt::RcvBuf, &RECV_BUFFER)
    {
        debug!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    let session = assim_seal::next_session(&opts.data_dir)?;
    let mut sealer = Sealer::new(identity.clone(), session);
    sealer.set_accept_unknown(true);
    let inbox_dir = opts.data_dir.join("inbox");
    let inbox = LogInbox::open(
        move || {
            FileStorage::open(&inbox_dir).map_err(|e| assim_log::LogError::Io {
                file: inbox_dir.display().to_string(),
                op: "opening",
                source: e,
            })
        },
        LogConfig::default(),
    )
    .with_context(|| {
        format!("cannot open the inbox in {}", opts.data_dir.join("inbox").display())
    })?;
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
    let audit = load_audit_rules(&opts.audit_rules, &opts.audit_silence)?;
    config.authority = AuthorityConfig {
        core,
        discovery: opts.discovery.clone(),
        rules,
        audit: audit.clone(),
        host_new_wait: opts.host_new_wait,
    };
    config.open_enrollment = opts.open_enrollment;
    config.graphite_prefix =
        opts.statistics.graphite.as_ref().map(|_| opts.statistics.prefix.clone());
    config.tagger = Some(EventTagger::new(move |e| {
        tagger.apply(e);
    }));
    let shell =
        Shell::start(config, sealer, inbox, store, now()).context("cannot start the CMA engine")?;
    let nodes = shell.core().nodes().count();
    let (last_event, last_event_rx) = watch::channel(last_id);
    let shared = Arc::new(SharedMetrics::default());

    let api_listener = tokio::net::TcpListener::bind(opts.api)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {}", opts.api))?;
    let api_state = crate::api::ApiState::new(
        store_path(&opts.data_dir),
        shared.clone(),
        last_event_rx,
        crate::api_access::ApiAccess::load(&opts)?,
        crate::api::CmaInfo {
            node_id: identity.node_id(),
            fingerprint: identity.fingerprint(),
            listen: opts.listen,
            version: assim_wire::VERSION.to_string(),
        },
    )?;
    info!(
        listen = %opts.listen, api = %opts.api, node = %identity.node_id(),
        key = %identity.fingerprint(), nodes, open_enrollment = opts.open_enrollment,
        "CMA started"
    );
    if opts.api_token.is_some() {
        info!(api = %opts.api, "the HTTP API requires a bearer token (Authorization: Bearer …)");
    }
    let api_state = api_state
        .with_check_runner(run_tx)
        .with_fleet(opts.fleet.clone())
        .with_audit(audit)
        .with_exporter_rules(opts.exporter_rules.clone());
    let latest = crate::api_statistics::SharedLatest::default();
    let fanout = assim_bus::Fanout::default();
    let api_state = api_state.with_statistics(latest.clone()).with_fanout(fanout.clone());
    let graphite = Arc::new(crate::graphite::ForwarderStatus::default());
    let graphite_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(target) = &opts.statistics.graphite {
        let path = store_path(&opts.data_dir);
        let open: crate::graphite::OpenOutbox = Box::new(move || {
            Ok(Box::new(Store::open(&path)?) as Box<dyn assim_store::StatisticsOutbox>)
        });
        crate::graphite::spawn(open, target.clone(), graphite.clone(), graphite_stop.clone())
            .context("cannot start the Graphite forwarder")?;
        info!(graphite = %target, prefix = %opts.statistics.prefix, "forwarding statistics to Graphite");
    }
    let api_task = tokio::spawn(crate::api::serve(api_listener, api_state));
    let retention_task = tokio::spawn(crate::retention::run(
        store_path(&opts.data_dir),
        opts.topology_history_max_age,
        opts.topology_history_max_rows,
    ));
    let bus_task = tokio::spawn(assim_bus::runner::run(
        assim_store_sqlite::bus::event_log_opener(store_path(&opts.data_dir)),
        opts.bus.clone(),
        last_event.subscribe(),
    ));

    let (pings_tx, mut pings_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    let mut d = Driver {
        shell,
        socket: Arc::new(socket),
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
    };
    d.send_all().await;
    tokio::pin!(shutdown);
    let mut rbuf = vec![0u8; 65536];
    loop {
        let deadline = d.shell.poll_timeout();
        let publish = d.last_publish + Duration::from_secs(1);
        let deadline = Some(deadline.map_or(publish, |t| t.min(publish)));
        tokio::select! {
            r = d.socket.recv_from(&mut rbuf) => {
                match r {
                    Ok((len, src)) => {
                        let t = now();
                        d.shell.handle_datagram(t, src, &rbuf[..len]);
                        // Drain whatever else is already queued, bounded, before acting:
                        // bigger turns mean fewer fsyncs per record.
                        for _ in 0..MAX_DATAGRAMS_PER_TURN {
                            match d.socket.try_recv_from(&mut rbuf) {
                                Ok((len, src)) => d.shell.handle_datagram(t, src, &rbuf[..len]),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "UDP receive failed"),
                }
            }
            Some(req) = run_rx.recv() => d.replies.request(&mut d.shell, req),
            Some((id, answered)) = pings_rx.recv() => {
                d.pings_in_flight = d.pings_in_flight.saturating_sub(1);
                d.shell.management_probe_result(now(), id, answered);
            }
            _ = sleep_until(deadline) => {}
            _ = &mut shutdown => break,
        }
        // Timers run every turn, so a steady stream of datagrams cannot starve them.
        let t = now();
        blocking(|| {
            d.shell.handle_timeout(t);
            d.shell.flush(t);
        });
        d.replies.flushed();
        d.send_all().await;
    }
    info!("CMA stopping");
    blocking(|| d.shell.stop(now()));
    d.send_all().await;
    graphite_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    api_task.abort();
    bus_task.abort();
    retention_task.abort();
    Ok(())
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
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The current time in both clocks.
fn now() -> Now {
    Now { mono: Instant::now(), wall: Timestamp::now() }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Datagrams handled per loop turn at most (one inbox fsync and one store commit per turn).
const MAX_DATAGRAMS_PER_TURN: usize = 4096;

/// The UDP receive buffer the CMA asks for (bytes).
const RECV_BUFFER: usize = 32 << 20;

type CmaShell = Shell<Sealer, LogInbox<FileStorage>, Store>;

struct Driver {
    shell: CmaShell,
    socket: Arc<UdpSocket>,
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
}

impl Driver {
    /// Sends the shell's datagrams, publishes the last stored event and the metrics.
    async fn send_all(&mut self) {
        while let Some(t) = self.shell.poll_transmit() {
            if let Err(e) = self.socket.try_send_to(&t.datagram, t.to) {
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
            applied_other: s.applied_other,
            retransmits: s.retransmits,
            dh_ops: s.dh_ops,
            busy_sent: s.busy_sent,
            busy_dropped: s.busy_dropped,
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
