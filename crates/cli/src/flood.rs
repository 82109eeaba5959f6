//! `assim flood`: a first-contact flood, the attack issue 16 item 3 is about, for the flood
//! benchmark (`cargo bench -p assim --bench flood`).
//!
//! The sender does what an attacker who can reach the CMA's port can do cheaply: it fetches the
//! CMA's public key with one `KeyRequest` (anyone may), seals one valid first contact to it
//! (a `Reliable` datagram carrying a key, so the CMA must derive keys to open it), and then sends
//! copies of it at a fixed rate, each under a new random node id and a new random public key
//! with the mac1 recomputed: a valid-looking first contact from a new identity, for one HMAC per
//! datagram on the sender's side. Every copy passes the CMA's mac1 check and would cost it one
//! X25519 operation without the first-contact budget (the AEAD then fails, but only after the
//! DH). Datagrams leave from a pool of sockets bound to random addresses in 127.0.0.0/8, and the
//! pool is rebound to new addresses every `rotate`, so the sources vary as a spoofing attacker's
//! would (on loopback any local user can do this).
//!
//! With `garbage`, the copies are random bytes of the same length behind a valid header start
//! instead (the cheap flood: refused at the mac1).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use assim_seal::{Identity, Mac1Key, Sealer};
use assim_wire::{DatagramKind, NodeId};
use rand::{RngCore as _, SeedableRng as _};

/// What to send.
#[derive(Clone, Debug)]
pub struct FloodOptions {
    pub cma: SocketAddr,
    /// Datagrams per second.
    pub rate: u64,
    pub duration: Duration,
    /// Source sockets at once, each on its own random 127.0.0.0/8 address.
    pub sockets: usize,
    /// How often the source pool moves to new random addresses.
    pub rotate: Duration,
    /// Random bytes after a valid header start instead of valid-mac1 first contacts.
    pub garbage: bool,
    pub seed: u64,
}

impl FloodOptions {
    /// 50,000 first contacts per second for `duration` at `cma`, 256 sources rotated every second.
    pub fn new(cma: SocketAddr, duration: Duration) -> FloodOptions {
        FloodOptions {
            cma,
            rate: 50_000,
            duration,
            sockets: 256,
            rotate: Duration::from_secs(1),
            garbage: false,
            seed: 1,
        }
    }
}

/// What was sent.
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    pub sent: u64,
    pub send_errors: u64,
    /// Distinct source addresses used.
    pub sources: u64,
    pub datagram_len: usize,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Asks `cma` for its node id and public key (the attacker's first step).
pub fn fetch_key(cma: SocketAddr, sealer: &mut Sealer) -> anyhow::Result<(NodeId, [u8; 32])> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("bind")?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let (mut req, mut buf) = (Vec::new(), vec![0u8; 2048]);
    for _ in 0..20 {
        sealer.key_request(&mut req);
        socket.send_to(&req, cma).with_context(|| format!("cannot send to {cma}"))?;
        let Ok((len, _)) = socket.recv_from(&mut buf) else { continue };
        if let Ok(o) = sealer.open(&buf[..len])
            && o.header.kind == DatagramKind::KeyReply
            && let Some(key) = o.header.sender_key
        {
            return Ok((o.header.sender, key));
        }
    }
    bail!("the CMA at {cma} did not answer a key request")
}

fn source_pool(n: usize, rng: &mut impl rand::Rng) -> Vec<UdpSocket> {
    (0..n)
        .filter_map(|_| {
            let ip =
                Ipv4Addr::new(127, rng.gen_range(1..=254), rng.r#gen(), rng.gen_range(1..=254));
            let s = UdpSocket::bind((ip, 0)).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        })
        .collect()
}

/// Sends the flood; returns when `duration` is over.
pub fn run(opts: &FloodOptions) -> anyhow::Result<FloodReport> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut attacker = Sealer::new(Identity::generate(&mut rand::rngs::OsRng), 1);
    let (cma_id, cma_key) = fetch_key(opts.cma, &mut attacker)?;
    attacker.add_peer(cma_id, cma_key);
    let mut template = Vec::new();
    attacker
        .seal(cma_id, DatagramKind::Reliable, true, &[], &mut template)
        .context("cannot seal the first contact")?;
    let mac1 = Mac1Key::for_receiver(&cma_key);
    let n = template.len() - assim_wire::header::MAC1_LEN;

    let mut report = FloodReport { datagram_len: template.len(), ..FloodReport::default() };
    let mut pool = source_pool(opts.sockets.max(1), &mut rng);
    if pool.is_empty() {
        bail!("cannot bind any source socket in 127.0.0.0/8");
    }
    report.sources += pool.len() as u64;
    let start = Instant::now();
    let mut rotated = start;
    let mut d = template.clone();
    let mut k = 0usize;
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed >= opts.duration {
            break;
        }
        if now - rotated >= opts.rotate {
            pool = source_pool(opts.sockets.max(1), &mut rng);
            report.sources += pool.len() as u64;
            rotated = now;
        }
        let due = (elapsed.as_secs_f64() * opts.rate as f64) as u64;
        if report.sent + report.send_errors >= due {
            let ahead = Duration::from_secs_f64(
                (report.sent + report.send_errors + 1) as f64 / opts.rate as f64,
            )
            .saturating_sub(elapsed);
            std::thread::sleep(ahead.min(Duration::from_millis(2)));
            continue;
        }
        // Catch up in bursts of at most 256.
        for _ in 0..(due - report.sent - report.send_errors).min(256) {
            if opts.garbage {
                rng.fill_bytes(&mut d[8..]);
            } else {
                rng.fill_bytes(&mut d[8..24]);
                rng.fill_bytes(&mut d[40..72]);
                let m = mac1.compute(&d[..n]);
                d[n..].copy_from_slice(&m);
            }
            k = (k + 1) % pool.len();
            match pool[k].send_to(&d, opts.cma) {
                Ok(_) => report.sent += 1,
                Err(_) => report.send_errors += 1,
            }
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Smoke test: against a stand-in CMA (a real sealer behind a socket), the flood's
    /// datagrams pass the mac1 and reach the first-contact budget; garbage does not.
    #[test]
    fn flood_datagrams_pass_the_mac1_and_meet_the_budget() {
        let cma_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        cma_socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let cma_addr = cma_socket.local_addr().unwrap();
        let mut cma = Sealer::new(Identity::generate(&mut rand::rngs::OsRng), 1);
        cma.set_accept_unknown(true);
        let small =
            assim_seal::Limits { rate: 100.0, burst: 100.0, ..assim_seal::Limits::FIRST_CONTACT };
        cma.set_limits(small, assim_seal::Limits::KEY_REQUEST);
        let server = std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            let mut out = Vec::new();
            let t0 = Instant::now();
            while let Ok((len, src)) = cma_socket.recv_from(&mut buf) {
                if let Ok(o) = cma.open_from(t0, src, &buf[..len])
                    && o.header.kind == DatagramKind::KeyRequest
                {
                    cma.key_reply(&o.header.sender_key.unwrap(), &mut out);
                    cma_socket.send_to(&out, src).unwrap();
                }
            }
            cma
        });
        for garbage in [false, true] {
            let opts = FloodOptions {
                rate: 2_000,
                duration: Duration::from_millis(300),
                sockets: 8,
                rotate: Duration::from_millis(100),
                garbage,
                ..FloodOptions::new(cma_addr, Duration::ZERO)
            };
            let r = run(&opts).unwrap();
            assert!(r.sent >= 400, "{r:?}");
            assert!(r.sources >= 16, "{r:?}");
        }
        let cma = server.join().unwrap();
        // All at one `now`: the budget's burst is what got through to a DH.
        let budget = cma.rejects().get("first_contact_budget");
        assert!(budget > 0, "{:?}", cma.rejects());
        assert!(cma.dh_ops() <= 100, "{}", cma.dh_ops());
        assert!(cma.rejects().get("bad_mac1") >= 400, "{:?}", cma.rejects());
    }
}
