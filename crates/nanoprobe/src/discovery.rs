//! The nanoprobe's discovery IO: what the shell's discovery schedule asks for, carried out.
//!
//! The schedule, the change filter and the "still running" rule live in the shell
//! (`assim_probe_shell`, [`Event::RunCollector`](assim_probe_shell::Event) and
//! `Shell::collector_done`). [`Collectors`] only runs what the shell asks for: built-in
//! collectors and external agents each on a blocking thread (heartbeats never wait for `/proc`
//! or an agent), the LLDP/CDP table of the passive listener (`l2neighbors`, handed to the shell
//! whenever it changes), and lists the agents directory (every [`AGENT_RESCAN`]) so the shell's
//! schedule covers the agents found there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use assim_capture::{L2Report, Listener};
use assim_discovery::agents::{AgentContext, AgentLimits, list_agents, run_agent};
use assim_discovery::{Collector, Discovery, L2_COLLECTOR, Schedule};
use assim_log::FileStorage;
use assim_probe_shell::Shell;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// How often the agents directory is listed again.
pub const AGENT_RESCAN: Duration = Duration::from_secs(60);

/// Nanoprobe discovery settings.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// The directory of external discovery agents (default `<data-dir>/discovery.d`).
    pub agents_dir: PathBuf,
    /// Limits per agent run.
    pub agent_limits: AgentLimits,
    /// Where the collectors that take a root read (`/`; a fake tree in tests).
    pub root: PathBuf,
}

impl DiscoveryOptions {
    /// The defaults for a data directory.
    pub fn for_data_dir(data_dir: &std::path::Path) -> Self {
        DiscoveryOptions {
            agents_dir: data_dir.join("discovery.d"),
            agent_limits: AgentLimits::default(),
            root: PathBuf::from("/"),
        }
    }
}

/// A finished collector run, or a new LLDP/CDP table: hand it to `Shell::collector_done`.
#[derive(Debug)]
pub struct Collected {
    pub name: String,
    pub result: Result<Discovery, String>,
}

/// Runs collectors for the shell. See the module doc.
#[derive(Debug)]
pub struct Collectors {
    opts: DiscoveryOptions,
    ctx: AgentContext,
    tx: mpsc::UnboundedSender<Collected>,
    rx: mpsc::UnboundedReceiver<Collected>,
    agents: BTreeMap<String, PathBuf>,
    next_agent_scan: Instant,
    l2: Option<watch::Receiver<L2Report>>,
    l2_task: Option<tokio::task::AbortHandle>,
    l2_unavailable: bool,
}

impl Collectors {
    /// Must be created inside the tokio runtime.
    pub fn new(opts: DiscoveryOptions, node_id: String, hostname: String, now: Instant) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Collectors {
            opts,
            ctx: AgentContext { node_id, hostname },
            tx,
            rx,
            agents: BTreeMap::new(),
            next_agent_scan: now,
            l2: None,
            l2_task: None,
            l2_unavailable: false,
        }
    }

    /// When the agents directory is listed next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_agent_scan
    }

    /// Lists the agents directory when due and tells the shell what it found; starts or stops
    /// the LLDP/CDP listener to match the shell's schedule.
    pub fn handle_timeout(&mut self, shell: &mut Shell<FileStorage>, now: Instant) {
        if now >= self.next_agent_scan {
            self.next_agent_scan = now + AGENT_RESCAN;
            let found: BTreeMap<String, PathBuf> =
                list_agents(&self.opts.agents_dir).into_iter().collect();
            if found.keys().ne(self.agents.keys()) {
                let before: BTreeSet<&String> = self.agents.keys().collect();
                for name in found.keys().filter(|n| !before.contains(n)) {
                    info!(collector = %name, dir = %self.opts.agents_dir.display(), "discovery agent found");
                }
                self.agents = found;
                shell.set_agents(self.agents.keys().map(String::as_str), now);
            }
        }
        self.sync_l2(shell.discovery_schedule());
    }

    /// Runs collector `name` as the shell asked ([`assim_probe_shell::Event::RunCollector`]).
    pub fn run(&mut self, name: String, params: BTreeMap<String, String>) {
        let tx = self.tx.clone();
        if name == L2_COLLECTOR {
            // The listener reports changes itself; the tick re-reads its table, which the
            // shell's change filter drops when nothing changed.
            if let Some(rx) = &self.l2 {
                let report = rx.borrow().clone();
                let _ = tx.send(l2_collected(&report));
            }
        } else if let Some(path) = self.agents.get(&name).cloned() {
            let (ctx, limits) = (self.ctx.clone(), self.opts.agent_limits);
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
            let root = self.opts.root.clone();
            tokio::task::spawn_blocking(move || {
                let result = c.collect_with(&root, &params).map_err(|e| e.to_string());
                let _ = tx.send(Collected { name, result });
            });
        } else {
            let result = Err(format!("this nanoprobe has no collector or agent named {name:?}"));
            let _ = tx.send(Collected { name, result });
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

    /// Starts or stops the LLDP/CDP listener to match the schedule.
    pub fn sync_l2(&mut self, schedule: &Schedule) {
        let interval = schedule.interval(L2_COLLECTOR);
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
