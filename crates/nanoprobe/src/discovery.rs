//! The nanoprobe's discovery.
//!
//! [`DiscoveryDriver`] runs the collectors on the [`Schedule`] (built-in defaults
//! until the CMA's `DiscoverySchedule` arrives), each on a blocking thread so heartbeats never
//! wait for `/proc` or an agent, and hands back only results whose content hash changed
//! ([`ChangeFilter`]). It also owns the passive LLDP/CDP listener (`l2neighbors`, reported
//! whenever the neighbour table changes) and the external agents in the agents directory.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use assim_capture::{L2Report, Listener};
use assim_discovery::agents::{AgentContext, AgentLimits, list_agents, run_agent};
use assim_discovery::schedule::{Applied, Entry};
use assim_discovery::{ChangeFilter, Collector, Discovery, L2_COLLECTOR, Schedule};
use assim_wire::Timestamp;
use assim_wire::msg::{self, Body};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// How often the agents directory is listed again.
const AGENT_RESCAN: Duration = Duration::from_secs(60);

/// Nanoprobe discovery settings.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// The directory of external discovery agents (default `<data-dir>/discovery.d`).
    pub agents_dir: PathBuf,
    /// Limits per agent run.
    pub agent_limits: AgentLimits,
}

impl DiscoveryOptions {
    /// The defaults for a data directory.
    pub fn for_data_dir(data_dir: &std::path::Path) -> Self {
        DiscoveryOptions {
            agents_dir: data_dir.join("discovery.d"),
            agent_limits: AgentLimits::default(),
        }
    }
}

/// A finished collector run, or a new LLDP/CDP table.
#[derive(Debug)]
pub struct Collected {
    name: String,
    result: Result<Discovery, String>,
}

/// The nanoprobe's discovery. See the module doc.
#[derive(Debug)]
pub struct DiscoveryDriver {
    opts: DiscoveryOptions,
    ctx: AgentContext,
    schedule: Schedule,
    filter: ChangeFilter,
    tx: mpsc::UnboundedSender<Collected>,
    rx: mpsc::UnboundedReceiver<Collected>,
    running: HashSet<String>,
    agents: BTreeMap<String, PathBuf>,
    next_agent_scan: Instant,
    l2: Option<watch::Receiver<L2Report>>,
    l2_task: Option<tokio::task::AbortHandle>,
    l2_unavailable: bool,
}

impl DiscoveryDriver {
    /// A driver on the built-in schedule. Must be created inside the tokio runtime.
    pub fn new(opts: DiscoveryOptions, node_id: String, hostname: String, now: Instant) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        DiscoveryDriver {
            opts,
            ctx: AgentContext { node_id, hostname },
            schedule: Schedule::new(now),
            filter: ChangeFilter::new(),
            tx,
            rx,
            running: HashSet::new(),
            agents: BTreeMap::new(),
            next_agent_scan: now,
            l2: None,
            l2_task: None,
            l2_unavailable: false,
        }
    }

    /// The next time [`DiscoveryDriver::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.schedule.poll_timeout(), Some(self.next_agent_scan)].into_iter().flatten().min()
    }

    /// Rescans agents when due and starts every collector that is due (and not still running).
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_agent_scan {
            self.scan_agents(now);
            self.next_agent_scan = now + AGENT_RESCAN;
        }
        self.sync_l2();
        for name in self.schedule.due(now) {
            if name == L2_COLLECTOR {
                // The listener reports changes itself; the tick re-reads its table, which the
                // change filter drops when nothing changed.
                if let Some(rx) = &self.l2 {
                    let report = rx.borrow().clone();
                    let _ = self.tx.send(l2_collected(&report));
                }
                continue;
            }
            if !self.running.insert(name.clone()) {
                debug!(collector = %name, "still running from its last turn; skipped");
                continue;
            }
            let tx = self.tx.clone();
            if let Some(path) = self.agents.get(&name).cloned() {
                let (params, ctx, limits) =
                    (self.schedule.params(&name), self.ctx.clone(), self.opts.agent_limits);
                tokio::task::spawn_blocking(move || {
                    let run = run_agent(&name, &path, &params, &ctx, limits);
                    if let Some(e) = &run.error {
                        warn!(collector = %name, path = %path.display(), error = %e, stderr = %run.stderr, "discovery agent failed");
                    } else if !run.stderr.is_empty() {
                        debug!(collector = %name, stderr = %run.stderr, "discovery agent stderr");
                    }
                    let _ = tx.send(Collected { name, result: Ok(run.discovery) });
                });
            } else if let Some(c) = Collector::from_name(&name) {
                tokio::task::spawn_blocking(move || {
                    let result = c.collect().map_err(|e| e.to_string());
                    let _ = tx.send(Collected { name, result });
                });
            } else {
                self.running.remove(&name);
            }
        }
    }

    /// Waits for the next finished run or LLDP/CDP table change (cancel-safe).
    pub async fn next(&mut self) -> Collected {
        loop {
            let l2 = async {
                match self.l2.as_mut() {
                    Some(rx) => match rx.changed().await {
                        Ok(()) => Some(rx.borrow_and_update().clone()),
                        Err(_) => None,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = self.rx.recv() => return c.expect("the driver holds a sender"),
                r = l2 => match r {
                    Some(report) => return l2_collected(&report),
                    None => {
                        warn!("the LLDP/CDP listener stopped");
                        self.l2 = None;
                        self.l2_task = None;
                    }
                },
            }
        }
    }

    /// The message to spool for a finished run, if its content changed.
    pub fn accept(&mut self, c: Collected) -> Option<Body> {
        self.running.remove(&c.name);
        if c.name != L2_COLLECTOR && !self.schedule.enabled(&c.name) {
            return None; // disabled (or the agent vanished) while it ran
        }
        let d = match c.result {
            Ok(d) => d,
            Err(e) => {
                warn!(collector = %c.name, error = %e, "discovery collector failed");
                return None;
            }
        };
        if !self.filter.changed(&d) {
            return None;
        }
        let payload = match serde_json::to_vec(&d.payload) {
            Ok(p) => p,
            Err(e) => {
                warn!(collector = %d.name, error = %e, "cannot encode a discovery result");
                return None;
            }
        };
        debug!(collector = %d.name, bytes = payload.len(), "discovery changed; sending");
        Some(Body::DiscoveryResult(msg::DiscoveryResult {
            name: d.name,
            content_hash: d.hash.to_vec(),
            payload,
            collected_at: Timestamp::now().micros(),
            delta: false,
        }))
    }

    /// Applies the CMA's schedule (desired state: a newer epoch wins).
    pub fn apply_schedule(&mut self, s: msg::DiscoverySchedule, now: Instant) {
        let entries: BTreeMap<String, Entry> = s
            .entries
            .into_iter()
            .map(|e| {
                let params = e.params.into_iter().map(|t| (t.key, t.value)).collect();
                (e.name, Entry { interval_s: e.interval_s, params })
            })
            .collect();
        let n = entries.len();
        match self.schedule.apply(s.epoch, entries, now) {
            Applied::Applied { unknown } => {
                info!(epoch = s.epoch, entries = n, "discovery schedule from the CMA applied");
                for name in unknown {
                    warn!(collector = %name, "the CMA schedules a discovery collector this nanoprobe does not have; ignored");
                }
                self.sync_l2();
            }
            Applied::Stale { current } => {
                debug!(epoch = s.epoch, current, "an older discovery schedule; ignored")
            }
        }
    }

    fn scan_agents(&mut self, now: Instant) {
        let found: BTreeMap<String, PathBuf> =
            list_agents(&self.opts.agents_dir).into_iter().collect();
        if found.keys().ne(self.agents.keys()) {
            let before: BTreeSet<&String> = self.agents.keys().collect();
            for name in found.keys().filter(|n| !before.contains(n)) {
                info!(collector = %name, dir = %self.opts.agents_dir.display(), "discovery agent found");
            }
            self.agents = found;
            self.schedule.set_agents(self.agents.keys().map(String::as_str), now);
        }
    }

    /// Starts or stops the LLDP/CDP listener to match the schedule.
    fn sync_l2(&mut self) {
        let interval = self.schedule.interval(L2_COLLECTOR);
        match (interval, self.l2_task.is_some()) {
            (Some(every), false) if !self.l2_unavailable => match Listener::open() {
                Ok(listener) => {
                    let (tx, rx) = watch::channel(L2Report::default());
                    let rescan = every.min(Duration::from_secs(60));
                    self.l2_task = Some(tokio::spawn(listener.run(rescan, tx)).abort_handle());
                    self.l2 = Some(rx);
                }
                Err(e) => {
                    self.l2_unavailable = true;
                    warn!(error = %e, "LLDP/CDP listening disabled: needs CAP_NET_RAW or root; the other collectors carry on");
                }
            },
            (None, true) => {
                info!("LLDP/CDP listening stopped: disabled by the discovery schedule");
                if let Some(t) = self.l2_task.take() {
                    t.abort();
                }
                self.l2 = None;
            }
            _ => {}
        }
    }
}

fn l2_collected(report: &L2Report) -> Collected {
    let result = serde_json::to_value(report)
        .map(|v| Discovery::from_value(L2_COLLECTOR, v))
        .map_err(|e| e.to_string());
    Collected { name: L2_COLLECTOR.to_string(), result }
}
