//! Sealing throughput on one core: what one heartbeat and one typical report cost to encode and
//! seal, and to open and decode.
//!
//! Run with `cargo bench -p assim-seal`. Each case runs for about one second after a warm-up and
//! prints: name, bytes per datagram, messages/s, MB/s (datagram bytes, 10^6 bytes per MB).

use std::hint::black_box;
use std::time::{Duration, Instant};

use assim_seal::{Identity, Sealer};
use assim_wire::msg;
use assim_wire::{DatagramKind, NodeId};

const TARGET: Duration = Duration::from_secs(1);
/// Datagrams sealed ahead of each timed open batch.
const BATCH: usize = 1 << 15;

fn main() {
    let a_id = Identity::from_parts(NodeId([1; 16]), [0x21; 32]);
    let b_id = Identity::from_parts(NodeId([2; 16]), [0x42; 32]);
    let sender = |session: u64| {
        let mut s = Sealer::new(a_id.clone(), session);
        s.add_peer(b_id.node_id(), b_id.public_key());
        s
    };
    let mut b = Sealer::new(b_id.clone(), 2 << 16);
    b.add_peer(a_id.node_id(), a_id.public_key());

    let heartbeat = msg::Direct {
        body: Some(msg::DirectBody::Heartbeat(msg::Heartbeat { epoch: 17, interval_ms: 1000 })),
    };
    // A typical report: a ~300-byte discovery result.
    let payload = [
        r#"{"os":{"name":"Debian GNU/Linux","version":"13 (trixie)","kernel":"6.12.9-amd64"},"#,
        r#""listen":[{"addr":"0.0.0.0:22","proc":"sshd"},{"addr":"[::]:5432","proc":"postgres"}],"#,
        r#""packages":{"openssh-server":"1:9.9p1-3","postgresql-17":"17.2-1","nginx":"1.26.3-2"}}"#,
    ]
    .concat()
    .into_bytes();
    let report = msg::Message {
        record: 4711,
        body: Some(msg::Body::DiscoveryResult(msg::DiscoveryResult {
            name: "host.os".into(),
            content_hash: vec![0xab; 32],
            payload,
            collected_at: 1_760_000_000_000_000,
            delta: false,
        })),
    };

    println!("assim-seal, one core, ~{}s per case", TARGET.as_secs());
    let cases: [(&str, &str, DatagramKind, Vec<u8>); 2] = [
        ("heartbeat", "Direct{Heartbeat}", DatagramKind::Direct, heartbeat.to_bytes()),
        ("report", "Message{DiscoveryResult}", DatagramKind::Reliable, report.to_bytes()),
    ];
    let mut session = 1u64 << 16;
    for (name, what, kind, plaintext) in &cases {
        // Encode + seal.
        let mut a = sender(session);
        let mut out = Vec::with_capacity(1232);
        let per_sec = rate(|| {
            let pt = match kind {
                DatagramKind::Direct => black_box(&heartbeat).to_bytes(),
                _ => black_box(&report).to_bytes(),
            };
            a.seal(b_id.node_id(), *kind, false, &pt, &mut out).unwrap();
            black_box(&out);
        });
        print_line(&format!("{name} encode+seal"), what, out.len(), per_sec);

        // Open + decode. Every datagram must be fresh (a replay is refused before the AEAD), so
        // batches are sealed outside the timed region, each by a "restarted" sender with a
        // larger session.
        let len = out.len();
        let mut opened = 0u64;
        let mut timed = Duration::ZERO;
        let mut warm = true;
        while timed < TARGET {
            session += 1;
            let mut a = sender(session);
            let batch: Vec<Vec<u8>> = (0..BATCH)
                .map(|_| {
                    let mut dg = Vec::with_capacity(len);
                    a.seal(b_id.node_id(), *kind, false, plaintext, &mut dg).unwrap();
                    dg
                })
                .collect();
            let start = Instant::now();
            for dg in &batch {
                let o = b.open(dg).unwrap();
                match kind {
                    DatagramKind::Direct => {
                        black_box(msg::Direct::from_bytes(&o.plaintext).unwrap());
                    }
                    _ => {
                        black_box(msg::Message::from_bytes(&o.plaintext).unwrap());
                    }
                }
            }
            if warm {
                warm = false;
                continue;
            }
            timed += start.elapsed();
            opened += BATCH as u64;
        }
        print_line(&format!("{name} open+decode"), what, len, opened as f64 / timed.as_secs_f64());
        session += 1;
    }
    assert_eq!(b.rejects().total(), 0);
}

/// Runs `f` in batches of 1000 until about [`TARGET`] elapsed (after a warm-up batch); returns
/// calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let mut iters: u64 = 0;
    let start = Instant::now();
    loop {
        for _ in 0..1000 {
            f();
        }
        iters += 1000;
        let elapsed = start.elapsed();
        if elapsed >= TARGET {
            return iters as f64 / elapsed.as_secs_f64();
        }
    }
}

fn print_line(name: &str, what: &str, bytes: usize, per_sec: f64) {
    println!(
        "{name:<22} {what:<25} {bytes:>5} B/datagram {per_sec:>11.0} msg/s {:>8.1} MB/s",
        per_sec * bytes as f64 / 1e6
    );
}
