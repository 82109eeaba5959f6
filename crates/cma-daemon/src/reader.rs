//! A packet reader process (`cma --role reader`, issue 14): the reader half of the CMA shell
//! ([`assim_cma_shell::Role::Reader`]) on a UDP socket of its own, beside any number of other
//! readers and the engines of one cluster.
//!
//! It authenticates the nanoprobes' datagrams with the CMA's identity (shared by every process
//! of the cluster; [`crate::cma::check_identity`] refuses another), enrols nodes (join tokens
//! and registered nodes come from PostgreSQL), applies the next-record rule, appends the
//! records to the JetStream inbox with its reader id, and acknowledges them only after
//! JetStream acknowledged the append. It applies nothing and keeps no state of its own: killed,
//! its nanoprobes move to another reader listed in their `--cma`.
//!
//! Between the processes, on core NATS (the servers of `--queue`), subjects named after the
//! inbox stream ([`Subjects`]):
//! - `assim.cma.STREAM.out.ID`: the engine's messages for the nodes whose latest record this
//!   reader took ([`assim_cma_shell::Outbound`]); `….out.any` for nodes the engine has no
//!   reader for yet (delivered by whichever reader holds a connection to the node);
//! - `assim.cma.STREAM.probe_reply`: nodes' answers to the engine's probes, 24 bytes each
//!   (node id, nonce).
//!
//! A message lost between the processes (a reader that died with it queued) is made good by
//! the node itself: when it moves to another reader it says hello again, with its peer and
//! check-set epochs, and the engine sends what is newer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assim_cma::{AuthorityConfig, CmaConfig};
use assim_cma_shell::{Note, Outbound, Role, Shell, ShellConfig};
use assim_inbox_jetstream::{JetStreamInbox, QueueConfig};
use assim_seal::{Identity, Sealer};
use assim_wire::NodeId;
use futures_util::StreamExt as _;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::cma::{CmaOptions, blocking, now, sleep_until};
use crate::inbox::EngineInbox;

/// The core NATS subjects of one cluster (see the module doc).
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(queue: &QueueConfig) -> Subjects {
        Subjects { prefix: format!("assim.cma.{}", queue.stream) }
    }

    /// Where the engine sends messages for reader `via` (`None`: any reader holding the node).
    pub fn out(&self, via: Option<u64>) -> String {
        match via {
            Some(id) => format!("{}.out.{id:016x}", self.prefix),
            None => format!("{}.out.any", self.prefix),
        }
    }

    pub fn probe_reply(&self) -> String {
        format!("{}.probe_reply", self.prefix)
    }
}

/// A node's answer to a probe as the readers send it to the engine.
pub fn encode_probe_reply(node: NodeId, nonce: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(&nonce.to_le_bytes());
    out
}

/// The inverse of [`encode_probe_reply`]; `None` unless exactly 24 bytes.
pub fn decode_probe_reply(bytes: &[u8]) -> Option<(NodeId, u64)> {
    if bytes.len() != 24 {
        return None;
    }
    Some((NodeId::from_slice(&bytes[..16])?, u64::from_le_bytes(bytes[16..].try_into().ok()?)))
}

/// Connects to the NATS servers of `--queue` for the messages between readers and engines.
pub async fn connect(queue: &QueueConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = queue.servers().map_err(|e| anyhow::anyhow!("--queue: {e}"))?;
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(queue.timeout)
        .connect(servers)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", queue.redacted_url()))
}

type ReaderShell = Shell<Sealer, EngineInbox, crate::store::EngineDb>;

/// Runs a packet reader until `shutdown` (see the module doc).
pub async fn run(
    opts: CmaOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let queue = opts.queue.clone().context("a packet reader needs --queue nats://…")?;
    assim_seal::create_private_dir(&opts.data_dir)?;
    let identity = Identity::load_or_create(&opts.data_dir)?;
    let mut db = blocking(|| opts.store.open_engine())?;
    crate::cma::check_identity(&mut db, &identity)?;
    let inbox = blocking(|| JetStreamInbox::open(queue.clone()))
        .map_err(|e| anyhow::anyhow!("cannot open the JetStream inbox: {e}"))?;
    let socket = UdpSocket::bind(opts.listen).await.with_context(|| {
        format!("cannot bind UDP {}: is another reader or CMA running there?", opts.listen)
    })?;
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&socket, sockopt::RcvBufForce, &crate::cma::RECV_BUFFER).is_err()
        && let Err(e) = setsockopt(&socket, sockopt::RcvBuf, &crate::cma::RECV_BUFFER)
    {
        debug!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    let session = assim_seal::next_session(&opts.data_dir)?;
    // The session is unique per start of this reader and nonzero: its id in the records.
    let id = session.max(1);
    let mut sealer = Sealer::new(identity.clone(), session);
    sealer.set_accept_unknown(true);
    let core = CmaConfig {
        timing: opts.timing,
        placement_key: identity.derive_key("assim ring placement"),
        pins: opts.pins.clone(),
        management_probes: false,
    };
    let mut config = ShellConfig::new(core.clone(), session);
    config.role = Role::Reader { id };
    config.authority = AuthorityConfig { core, ..AuthorityConfig::default() };
    config.open_enrollment = opts.open_enrollment;
    let shell: ReaderShell =
        blocking(|| Shell::start(config, sealer, EngineInbox::JetStream(inbox), db, now()))
            .context("cannot start the packet reader")?;
    let subjects = Subjects::new(&queue);
    let nats = connect(&queue, "assim-cma-reader").await?;
    let mut mine = nats.subscribe(subjects.out(Some(id))).await.context("NATS subscribe")?;
    let mut any = nats.subscribe(subjects.out(None)).await.context("NATS subscribe")?;
    info!(
        listen = %opts.listen, reader = format_args!("{id:016x}"), node = %identity.node_id(),
        key = %identity.fingerprint(), queue = %queue.redacted_url(), store = %opts.store,
        "CMA packet reader started"
    );

    let socket = Arc::new(socket);
    let (packets_tx, mut packets) =
        tokio::sync::mpsc::channel::<crate::cma::Batch>(crate::cma::READER_QUEUE);
    let shed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader_task =
        tokio::spawn(crate::cma::read_packets(socket.clone(), packets_tx, shed.clone()));
    let mut r =
        Reader { shell, socket, nats, subjects, last_summary: Instant::now(), delivered: 0 };
    tokio::pin!(shutdown);
    loop {
        let deadline = r.shell.poll_timeout();
        tokio::select! {
            batch = packets.recv() => {
                let Some(batch) = batch else { break };
                let t = now();
                let mut taken = batch.len();
                for (src, datagram) in batch {
                    r.shell.handle_datagram(t, src, &datagram);
                }
                while taken < crate::cma::MAX_DATAGRAMS_PER_TURN {
                    let Ok(batch) = packets.try_recv() else { break };
                    taken += batch.len();
                    for (src, datagram) in batch {
                        r.shell.handle_datagram(t, src, &datagram);
                    }
                }
            }
            Some(m) = mine.next() => r.deliver(&m.payload),
            Some(m) = any.next() => r.deliver(&m.payload),
            _ = sleep_until(deadline) => {}
            _ = &mut shutdown => break,
        }
        let t = now();
        blocking(|| {
            r.shell.handle_timeout(t);
            r.shell.flush(t);
        });
        r.send_all().await;
    }
    reader_task.abort();
    info!("CMA packet reader stopping");
    let t = now();
    blocking(|| r.shell.flush(t));
    r.send_all().await;
    Ok(())
}

struct Reader {
    shell: ReaderShell,
    socket: Arc<UdpSocket>,
    nats: async_nats::Client,
    subjects: Subjects,
    last_summary: Instant,
    delivered: u64,
}

impl Reader {
    /// An engine's message: delivered if this reader holds the node (or is named to).
    fn deliver(&mut self, payload: &[u8]) {
        match Outbound::decode(payload) {
            Some(out) => {
                if self.shell.deliver(now(), out) {
                    self.delivered += 1;
                }
            }
            None => warn!(bytes = payload.len(), "a malformed message from an engine; dropped"),
        }
    }

    /// Sends the shell's datagrams, hands probe answers to the engine, and logs a summary
    /// every ten seconds.
    async fn send_all(&mut self) {
        while let Some(t) = self.shell.poll_transmit() {
            if let Err(e) = self.socket.try_send_to(&t.datagram, t.to) {
                debug!(addr = %t.to, error = %e, "UDP send failed");
            }
        }
        while let Some(n) = self.shell.poll_note() {
            if let Note::ProbeReply { node, nonce } = n {
                let bytes = encode_probe_reply(node, nonce);
                if let Err(e) = self.nats.publish(self.subjects.probe_reply(), bytes.into()).await {
                    debug!(error = %e, "cannot hand a probe answer to the engine");
                }
            }
        }
        if self.last_summary.elapsed() >= SUMMARY_EVERY {
            self.last_summary = Instant::now();
            let m = self.shell.metrics();
            info!(
                datagrams_in = m.datagrams_in,
                records = m.inbox_records,
                syncs = m.inbox_syncs,
                delivered = self.delivered,
                rejects = ?m.rejects,
                "packet reader"
            );
        }
    }
}

/// How often a reader logs its counters.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_replies_round_trip_and_junk_is_refused() {
        let node = NodeId([4; 16]);
        assert_eq!(decode_probe_reply(&encode_probe_reply(node, 99)), Some((node, 99)));
        assert_eq!(decode_probe_reply(&[0; 23]), None);
        assert_eq!(decode_probe_reply(&[0; 25]), None);
        let s = Subjects::new(&QueueConfig::new("nats://127.0.0.1:4222"));
        assert_eq!(s.out(Some(0xab)), "assim.cma.ASSIM_INBOX.out.00000000000000ab");
        assert_eq!(s.out(None), "assim.cma.ASSIM_INBOX.out.any");
    }
}
