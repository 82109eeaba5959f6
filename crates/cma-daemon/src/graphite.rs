//! The Graphite forwarder (issue 17 item 5): IO only. It empties the durable statistics queue
//! (`assim_store::StatisticsOutbox`, filled by the engine's batches) into carbon's plaintext
//! receiver, oldest first, with each value's original time.
//!
//! One thread with its own store handle. Per round: read up to [`BATCH`] of the oldest points,
//! open a TCP connection to carbon, write their lines (`assim_cma::statistics::carbon_line`),
//! half-close, and wait for carbon to close its side — carbon closes only after it has read
//! everything up to our end of stream, so then, and only then, the points are removed from the
//! queue. A failure anywhere keeps them queued; the next attempt follows the backoff of
//! `assim_cma::statistics::CarbonLink` (1 s doubling to 60 s), with one WARN when carbon goes
//! away and one INFO when it is back. A crash between carbon's read and the removal sends the
//! same points again, which carbon stores as the same values at the same times.
//!
//! The queue is bounded by `graphite_queue_max` in the engine's store: beyond it the oldest
//! points are dropped there and counted; the forwarder logs each new drop count as a WARN and
//! publishes it ([`ForwarderStatus`]).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assim_cma::statistics::{CarbonLink, LinkNote, carbon_line};
use assim_store::StatisticsOutbox;
use tracing::{error, info, warn};

/// Points written per connection at most.
pub const BATCH: usize = 5_000;
/// How long a connection, a write or carbon's closing may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an empty queue is looked at again.
pub const POLL: Duration = Duration::from_millis(500);

/// Statistics settings of the CMA (`--graphite`, `[statistics]`).
#[derive(Clone, Debug)]
pub struct StatisticsOptions {
    /// carbon's plaintext receiver, HOST:PORT; `None`: no forwarding and nothing queued.
    pub graphite: Option<String>,
    /// The first segment(s) of every Graphite path.
    pub prefix: String,
    /// The queue's cap while carbon is unreachable.
    pub queue_max: u64,
}

impl Default for StatisticsOptions {
    fn default() -> Self {
        StatisticsOptions {
            graphite: None,
            prefix: "assim".into(),
            queue_max: assim_store::statistics::DEFAULT_QUEUE_MAX,
        }
    }
}

/// What the forwarder publishes for `/metrics`.
#[derive(Debug, Default)]
pub struct ForwarderStatus {
    /// Points carbon took.
    pub sent: AtomicU64,
    /// Failed attempts (connect, write, close).
    pub failures: AtomicU64,
    /// Points waiting in the queue.
    pub queued: AtomicU64,
    /// Points dropped because the queue was full (since the store was created).
    pub dropped: AtomicU64,
    /// Whether the last attempt failed.
    pub down: AtomicBool,
}

/// Opens the forwarder's own handle on the queue.
pub type OpenOutbox = Box<dyn Fn() -> anyhow::Result<Box<dyn StatisticsOutbox>> + Send>;

/// Starts the forwarder thread; it stops soon after `stop` is set.
pub fn spawn(
    open: OpenOutbox,
    target: String,
    status: Arc<ForwarderStatus>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("graphite".into())
        .spawn(move || run(open, &target, &status, &stop))
}

/// Sleeps up to `d`, in short steps, unless `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

fn run(open: OpenOutbox, target: &str, status: &ForwarderStatus, stop: &AtomicBool) {
    let mut outbox = None;
    let mut link = CarbonLink::default();
    let mut dropped_seen: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let ob = match &mut outbox {
            Some(ob) => ob,
            None => match open() {
                Ok(ob) => outbox.insert(ob),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "the Graphite forwarder cannot open the statistics queue; retrying");
                    nap(Duration::from_secs(5), stop);
                    continue;
                }
            },
        };
        match ob.state() {
            Ok(st) => {
                status.queued.store(st.queued, Ordering::Relaxed);
                status.dropped.store(st.dropped, Ordering::Relaxed);
                if let Some(seen) = dropped_seen
                    && st.dropped > seen
                {
                    warn!(
                        dropped = st.dropped - seen,
                        dropped_total = st.dropped,
                        queued = st.queued,
                        "the statistics queue for Graphite is full; its oldest values were dropped (raise --graphite-queue-max or bring carbon back)"
                    );
                }
                dropped_seen = Some(st.dropped);
            }
            Err(e) => warn!(error = %e, "cannot read the statistics queue's state"),
        }
        if let Some(t) = link.next_try() {
            let now = Instant::now();
            if t > now {
                nap((t - now).min(POLL), stop);
                continue;
            }
        }
        let points = match ob.oldest(BATCH) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read the statistics queue; retrying");
                outbox = None;
                nap(Duration::from_secs(1), stop);
                continue;
            }
        };
        let Some(last) = points.last().map(|q| q.id) else {
            nap(POLL, stop);
            continue;
        };
        let mut text = String::with_capacity(points.len() * 64);
        for q in &points {
            text.push_str(&carbon_line(&q.point));
        }
        match send(target, text.as_bytes()) {
            Ok(()) => {
                if let Err(e) = ob.remove_through(last) {
                    // Sent but still queued: sent again later, which carbon absorbs.
                    warn!(error = %e, "cannot remove sent statistics from the queue; they will be sent again");
                    outbox = None;
                    continue;
                }
                status.sent.fetch_add(points.len() as u64, Ordering::Relaxed);
                status.down.store(false, Ordering::Relaxed);
                if let LinkNote::Back { down, failures } = link.succeeded(Instant::now()) {
                    info!(
                        graphite = target,
                        down_s = down.as_secs(),
                        failures,
                        "carbon is reachable again; sending the statistics that waited, with their original times"
                    );
                }
            }
            Err(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                status.down.store(true, Ordering::Relaxed);
                if link.failed(Instant::now()) == LinkNote::Down {
                    warn!(
                        graphite = target, error = %e, queued = points.len(),
                        "cannot send statistics to carbon; they wait in the CMA's database and are retried with backoff"
                    );
                }
            }
        }
    }
}

/// One connection: write `lines`, half-close, wait for carbon to close (it has read them).
fn send(target: &str, lines: &[u8]) -> std::io::Result<()> {
    let mut last = None;
    let mut stream = None;
    for addr in target.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut s) = stream else {
        return Err(last.unwrap_or_else(|| std::io::Error::other("the name has no address")));
    };
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(lines)?;
    s.flush()?;
    s.shutdown(std::net::Shutdown::Write)?;
    // Carbon answers nothing; read (bounded) until it closes.
    let mut buf = [0u8; 512];
    let mut total = 0usize;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => {
                total += n;
                if total > 1 << 20 {
                    return Err(std::io::Error::other("the peer talks back; is it carbon?"));
                }
            }
        }
    }
}
