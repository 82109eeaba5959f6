//! Simulated senders: many nanoprobe links in one process pushing spooled reports at a CMA.
//!
//! Each sender is a real [`CmaLink`] (identity, sealing, reliable delivery, disk spool) with its
//! own UDP socket and data directory; it registers with a hello and then spools `LocalEvent`
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
use assim_wire::msg::{self, Body};
use assim_wire::{DatagramKind, Timestamp};
use tokio::net::UdpSocket;

use assim_nanoprobe::link::{CmaLink, FromCma};
use assim_nanoprobe::nanoprobe::{CmaPin, fetch_cma_key, read_pin, write_pin};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub cma: SocketAddr,
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
    let pin: CmaPin = match read_pin(&dir)? {
        Some(p) => p,
        None => {
            let p = fetch_cma_key(&socket, &mut sealer, opts.cma).await?;
            write_pin(&dir, &p)?;
            p
        }
    };
    sealer.add_peer(pin.node_id, pin.key()?);
    let now = Instant::now();
    let mut link = CmaLink::open(sealer, pin.node_id, opts.cma, &dir, 1 << 30, now)?;
    let hello = msg::Hello {
        version: assim_wire::VERSION.to_string(),
        hostname: format!("sender-{i}"),
        listen_addr: socket.local_addr()?.to_string(),
        addresses: Vec::new(),
        started_at: Timestamp::now().micros(),
        token_proof: None,
        peer_epoch: 0,
    };
    link.send_control(Body::Hello(hello.clone()), now);
    link.resend_unacked(now);

    let mut report = LoadReport { senders: 1, ..LoadReport::default() };
    let resent_before = link.stats.resent;
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut acked_through = link.stats.acked_through;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        // Spool the next batch, within the window.
        let mut n = 0;
        while n < opts.batch
            && link.next_record() <= opts.reports
            && link.next_record() - 1 - link.stats.acked_through < opts.window
        {
            let number = link.next_record();
            let body = Body::LocalEvent(msg::LocalEvent {
                event_type: "load.report".into(),
                severity: "info".into(),
                text: format!("report {number} from sender-{i}"),
                tags: Vec::new(),
                at: Timestamp::now().micros(),
            });
            link.send_spooled(body, now);
            pending.push_back((number, now));
            report.spooled += 1;
            n += 1;
        }
        link.commit(now);
        for d in link.poll_datagrams(now) {
            let _ = socket.send_to(&d, link.cma_addr).await;
        }
        if link.next_record() > opts.reports && link.unacked() == 0 {
            break;
        }
        let wait = link
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_millis(200));
        if let Ok(Ok((len, src))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            handle(&mut link, &buf[..len], src, &hello);
            // Drain what else is queued.
            while let Ok((len, src)) = socket.try_recv_from(&mut buf) {
                handle(&mut link, &buf[..len], src, &hello);
            }
        } else {
            link.handle_timeout(Instant::now());
        }
        let now = Instant::now();
        if link.stats.acked_through > acked_through {
            acked_through = link.stats.acked_through;
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
    report.resent = link.stats.resent - resent_before;
    Ok(report)
}

fn handle(link: &mut CmaLink, datagram: &[u8], src: SocketAddr, hello: &msg::Hello) {
    let Ok(opened) = link.sealer.open(datagram) else { return };
    if opened.header.kind != DatagramKind::Reliable || opened.header.sender != link.cma_id {
        return;
    }
    let now = Instant::now();
    for ev in link.handle_frame(&opened.plaintext, src, now) {
        if let FromCma::Restarted = ev {
            link.send_control(Body::Hello(hello.clone()), now);
        }
    }
}
