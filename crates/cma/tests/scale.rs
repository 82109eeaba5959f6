//! Scale smoke test: 100,000 joins, then 1,000 nodes confirmed down by both neighbours.
//! Prints the time; asserts only behaviour. Debug builds use 10,000 nodes unless
//! `ASSIM_SCALE_NODES` says otherwise.
//!
//! `cargo test -p assim-cma --release --test scale -- --nocapture`

mod support;

use std::time::{Duration, Instant};

use assim_cma::{Action, Cma, CmaConfig, NodeState, Snapshot};
use assim_wire::NodeId;
use assim_wire::msg::ReportKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::*;

#[test]
fn hundred_thousand_joins_and_a_thousand_failures() {
    let nodes: u32 = std::env::var("ASSIM_SCALE_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 10_000 } else { 100_000 });
    let seed = 0x5CA1E;
    println!("scale seed {seed:#x}, {nodes} nodes");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut now = T0;
    let mut cma = Cma::new(CmaConfig::default(), Snapshot::default(), now);
    let mut actions = 0u64;
    let mut drain = |cma: &mut Cma| {
        while let Some(a) = cma.poll_action() {
            actions += 1;
            std::hint::black_box(&a);
            if let Action::Persist(assim_cma::Change::Ring(r)) = &a {
                std::hint::black_box(r.len());
            }
        }
    };

    let hellos: Vec<_> = (1..=nodes).map(hello).collect();
    let start = Instant::now();
    for (i, h) in hellos.iter().enumerate() {
        let n = i as u32 + 1;
        now = now + Duration::from_micros(50);
        cma.handle_hello(now, id(n), key(n), h).unwrap();
        drain(&mut cma);
    }
    let joins = start.elapsed();
    assert_eq!(cma.ring().len(), nodes as usize);

    let failures = 1_000.min(nodes as usize / 10);
    let start = Instant::now();
    let mut downed = 0;
    while downed < failures {
        let b = id(rng.gen_range(1..=nodes));
        if cma.node(b).unwrap().state != NodeState::Up {
            continue;
        }
        let nb: Vec<NodeId> = cma.neighbours(b);
        now = now + Duration::from_millis(1);
        for a in &nb {
            let r = assim_wire::msg::HeartbeatReport {
                kind: ReportKind::Dead as i32,
                peer: b.as_bytes().to_vec(),
                peer_addr: String::new(),
                silent_ms: 5000,
                epoch: 0,
                at: 0,
            };
            cma.handle_report(now, *a, &r);
            drain(&mut cma);
        }
        now = now + Duration::from_millis(500); // the CMA's own probe goes unanswered
        while let Some(t) = cma.poll_timeout().filter(|t| *t <= now) {
            cma.handle_timeout(t);
            drain(&mut cma);
        }
        assert_eq!(cma.node(b).unwrap().state, NodeState::Down);
        downed += 1;
    }
    let fails = start.elapsed();
    cma.handle_timeout(now + Duration::from_secs(10));
    drain(&mut cma);
    assert_eq!(cma.ring().len(), nodes as usize - failures);
    println!(
        "scale: {nodes} joins in {:.3} s ({:.1} µs/join); {failures} dead-report pairs in {:.3} s \
         ({:.1} µs/failure); {actions} actions; {} events",
        joins.as_secs_f64(),
        joins.as_secs_f64() * 1e6 / nodes as f64,
        fails.as_secs_f64(),
        fails.as_secs_f64() * 1e6 / failures as f64,
        cma.stats().events,
    );
    let s = cma.stats();
    assert_eq!(s.downs_corroborated, failures as u64);
    // One full ring write per second of virtual time at most, never one per join.
    assert!(s.ring_changes >= nodes as u64);
}
