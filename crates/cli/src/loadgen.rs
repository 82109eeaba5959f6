//! Simulated senders: many nanoprobe shells in one process pushing spooled reports at a CMA.
//!
//! Each sender is the real nanoprobe shell (`assim_probe_shell::Shell`: identity, sealing,
//! reliable delivery, the disk spool, hello after a CMA restart) with its own UDP socket and
//! data directory, without heartbeats, checks or collectors; it registers with a hello
//! and then spools `LocalEvent`
//! reports numbered 1..=N (the spool record number is the report number, so a restarted sender
//! continues where its spool ends). It finishes when the CMA has acknowledged all N. Used by the
//! crash test (kill the CMA or the senders at random moments: nothing may be lost or applied
//! twice) and by the ingest benchmark.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assim_seal::{Identity, Sealer};
use assim_wire::Timestamp;
use assim_wire::msg::{self, Body};
use tokio::net::UdpSocket;

use assim_nanoprobe::nanoprobe::{CmaPin, fetch_cma_key, open_shell, read_pin, write_pin};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The CMA's addresses (its packet readers'); sender i starts at the (i mod n)-th.
    pub cma: Vec<SocketAddr>,
    pub senders: usize,
    /// Reports per sender.
    pub reports: u64,
    /// Each sender keeps at most this many reports unacknowledged.
    pub window: u64,
    /// Reports spooled per sender per loop turn (one fsync each turn).
    pub batch: u64,
    pub data_dir: PathBuf,
}

/// What happened, summed over the senders of this run.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub senders: usize,
    /// Reports spooled in this run (a restarted run continues after what was spooled before).
    pub spooled: u64,
    /// Reports acknowledged by the CMA in this run.
    pub acked: u64,
    pub resent: u64,
    pub elapsed: Duration,
    /// Spool-append → CMA-ack latency of the reports spooled in this run, sorted, µs.
    pub latencies_us: Vec<u64>,
}

impl LoadReport {
    /// A latency percentile in µs.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i]
    }
}

/// Runs every sender to completion.
pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..opts.senders {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move { sender(i, opts).await }));
    }
    let mut total = LoadReport { senders: opts.senders, ..LoadReport::default() };
    for t in tasks {
        let r = t.await.context("a sender task panicked")??;
        total.spooled += r.spooled;
        total.acked += r.acked;
        total.resent += r.resent;
        total.latencies_us.extend(r.latencies_us);
    }
    total.latencies_us.sort_unstable();
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn sender(i: usize, opts: LoadOptions) -> anyhow::Result<LoadReport> {
    let dir = opts.data_dir.join(format!("sender-{i}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let identity = Identity::load_or_create(&dir)?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let session = assim_seal::next_session(&dir)?;
    let mut sealer = Sealer::new(identity.clone(), session);
    anyhow::ensure!(!opts.cma.is_empty(), "no CMA address");
    let mut cma = opts.cma.clone();
    let first = i % cma.len();
    cma.rotate_left(first);
    let pin: CmaPin = match read_pin(&dir)? {
        Some(p) => p,
        None => {
            let p = fetch_cma_key(&socket, &mut sealer, &cma).await?;
            write_pin(&dir, &p)?;
            p
        }
    };
    sealer.add_peer(pin.node_id, pin.key()?);
    let now = Instant::now();
    let hello = msg::Hello {
        version: assim_wire::VERSION.to_string(),
        hostname: format!("sender-{i}"),
        listen_addr: socket.local_addr()?.to_string(),
        addresses: Vec::new(),
        started_at: Timestamp::now().micros(),
        token_proof: None,
        peer_epoch: 0,
        spool_incarnation: 0,
        acked_through: 0,
    };
    // No heartbeats, collectors or checks: the sender's spool holds only its reports.
    let mut shell = open_shell(sealer, (pin.node_id, cma[0]), hello, &dir, 1 << 30, false, now)?
        .without_heartbeats()
        .with_cma_addrs(cma)
        .map_err(|e| anyhow::anyhow!("--cma: {e}"))?;
    shell.start(now);

    let mut report = LoadReport { senders: 1, ..LoadReport::default() };
    let resent_before = shell.spool().stats().resent;
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut acked_through = shell.spool().stats().acked_through;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        // Spool the next batch, within the window.
        let mut n = 0;
        while n < opts.batch
            && shell.spool().next_record() <= opts.reports
            && shell.spool().next_record().saturating_sub(1 + shell.spool().stats().acked_through)
                < opts.window
        {
            let number = shell.spool().next_record();
            let body = Body::LocalEvent(msg::LocalEvent {
                event_type: "load.report".into(),
                severity: "info".into(),
                text: format!("report {number} from sender-{i}"),
                tags: Vec::new(),
                at: Timestamp::now().micros(),
            });
            shell.send_spooled(body, now);
            pending.push_back((number, now));
            report.spooled += 1;
            n += 1;
        }
        // Nothing to carry out: the shell runs no checks or collectors here.
        while shell.poll_event().is_some() {}
        while let Some(d) = shell.poll_datagram(now) {
            let _ = socket.send_to(&d.bytes, d.addr).await;
        }
        if shell.spool().next_record() > opts.reports && shell.spool().unacked() == 0 {
            break;
        }
        let wait = shell
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_millis(200));
        if let Ok(Ok((len, src))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            shell.handle_datagram(&buf[..len], src, Instant::now());
            // Drain what else is queued.
            while let Ok((len, src)) = socket.try_recv_from(&mut buf) {
                shell.handle_datagram(&buf[..len], src, Instant::now());
            }
        }
        shell.handle_timeout(Instant::now());
        let now = Instant::now();
        if shell.spool().stats().acked_through > acked_through {
            acked_through = shell.spool().stats().acked_through;
            while let Some(&(number, at)) = pending.front() {
                if number > acked_through {
                    break;
                }
                report.latencies_us.push(now.duration_since(at).as_micros() as u64);
                report.acked += 1;
                pending.pop_front();
            }
        }
    }
    report.resent = shell.spool().stats().resent - resent_before;
    Ok(report)
}
