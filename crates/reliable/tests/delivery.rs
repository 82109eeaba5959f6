//! Delivery over a lossy, duplicating, reordering network in virtual time.

mod common;

use std::time::{Duration, Instant};

use assim_reliable::Config;
use common::{Net, Pair, Side, seed_or};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MAX_STEPS: u64 = 1_000_000;

/// 300 messages each way, from empty to 4 fragments, half at once and half spread over two
/// seconds, across 20 % loss, 10 % duplication and reordering. Prints the wall time.
#[test]
fn lossy_network_delivers_everything_exactly_once_in_order() {
    let seed = seed_or(0x5eed_0001);
    let wall = Instant::now();
    let mut pair = Pair::new(seed, Net::lossy());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..600u32 {
        let side = if i % 2 == 0 { Side::A } else { Side::B };
        let mut m = vec![0u8; rng.gen_range(0..4000)];
        rng.fill_bytes(&mut m);
        if i < 300 {
            pair.send(side, m);
        } else {
            pair.send_at(Duration::from_millis(rng.gen_range(0..2000)), side, m);
        }
    }
    pair.run_until_idle(MAX_STEPS);
    let took = wall.elapsed();
    pair.assert_all_delivered_and_acked();
    let (a, b) = (pair.a.stats(), pair.b.stats());
    println!(
        "20% loss harness: 600 messages, {} steps, {:?} virtual, {:?} wall; \
         A: {} frames sent, {} retransmits, {} duplicates, srtt {:?}; B: {} frames, {} retransmits",
        pair.steps,
        pair.elapsed(),
        took,
        a.frames_sent,
        a.retransmits,
        a.duplicates,
        a.srtt,
        b.frames_sent,
        b.retransmits,
    );
    assert!(a.retransmits > 0 && b.duplicates > 0, "the network was lossy");
    assert!(pair.elapsed() < Duration::from_secs(30), "took {:?} virtual", pair.elapsed());
}

/// A 10-minute blackout in both directions: the RTO backs off to max_rto and stays there
/// (retries continue, never give up), and after the network returns everything is delivered,
/// within about one max_rto.
#[test]
fn outage_of_ten_minutes_then_recovery_delivers_everything() {
    let seed = seed_or(0x5eed_0002);
    let mut pair = Pair::new(seed, Net::lossy());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..100u32 {
        let side = if i % 2 == 0 { Side::A } else { Side::B };
        pair.send(side, vec![i as u8; rng.gen_range(1..3000)]);
    }
    pair.run_until_time(Duration::from_millis(30), MAX_STEPS);
    let outage_start = Duration::from_millis(30);
    let outage_end = outage_start + Duration::from_secs(600);
    pair.blackout = Some((pair.start + outage_start, pair.start + outage_end));
    for i in 0..100u32 {
        let side = if i % 2 == 0 { Side::A } else { Side::B };
        let at = outage_start + Duration::from_secs(rng.gen_range(1..590));
        pair.send_at(at, side, vec![i as u8; rng.gen_range(1..3000)]);
    }
    pair.run_until_time(outage_end, MAX_STEPS);
    let max_rto = Config::default().max_rto;
    for side in [Side::A, Side::B] {
        let s = pair.conn(side).stats().clone();
        assert_eq!(s.rto, max_rto, "{side:?} backed off to the cap");
        // Capped exponential backoff: about 600 s / (10 s - 20 % jitter) timeouts, not fewer
        // (no give-up) and not many more (the cap holds).
        assert!((55..=90).contains(&s.timeouts), "{side:?}: {} timeouts", s.timeouts);
        assert!(pair.conn(side).poll_timeout().is_some(), "{side:?} still retrying");
    }
    pair.run_until_idle(MAX_STEPS);
    pair.assert_all_delivered_and_acked();
    let recovery = pair.elapsed() - outage_end;
    println!("recovered {recovery:?} after a 600 s outage");
    assert!(recovery < max_rto + Duration::from_secs(5), "recovery took {recovery:?}");
    println!("A {:?}\nB {:?}", pair.a.stats(), pair.b.stats());
    assert!(pair.a.stats().rto < max_rto, "backoff undone after recovery");
}

/// 3000 small messages (1–300 bytes) from A and 1000 from B, queued in bursts across 20 % loss:
/// all delivered exactly once, in order, one Acked each; and the same run without coalescing
/// takes over four times as many frames (each side's count includes its acks and
/// retransmissions).
#[test]
fn small_messages_are_packed_under_loss() {
    let seed = seed_or(0x5eed_0003);
    let run = |coalesce: bool| {
        let config = Config { coalesce, ..Config::default() };
        let mut pair = Pair::with_config(seed, Net::lossy(), config);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in 0..4000u32 {
            let side = if i % 4 == 0 { Side::B } else { Side::A };
            let mut m = vec![0u8; rng.gen_range(1..=300)];
            rng.fill_bytes(&mut m);
            pair.send_at(Duration::from_millis(u64::from(i / 100) * 7), side, m);
        }
        pair.run_until_idle(MAX_STEPS);
        pair.assert_all_delivered_and_acked();
        let (a, b) = (pair.a.stats(), pair.b.stats());
        println!("coalesce {coalesce}: A {a:?}\nB {b:?}");
        assert!(a.retransmits > 0, "the network was lossy");
        (a.frames_sent, b.frames_sent)
    };
    let (packed_a, packed_b) = run(true);
    let (plain_a, plain_b) = run(false);
    assert!(packed_a * 4 < plain_a, "A: {packed_a} frames packed, {plain_a} not");
    assert!(packed_b * 4 < plain_b, "B: {packed_b} frames packed, {plain_b} not");
    assert!(packed_a < 3000 / 2, "A sent {packed_a} frames for 3000 messages");
}

/// Sends random payloads of the given lengths at the given times (ms) from A or B over the
/// lossy network, then checks every message was delivered and acknowledged exactly once, in
/// order.
fn run_schedule(seed: u64, msgs: Vec<(bool, usize, u64)>) {
    let mut pair = Pair::new(seed, Net::lossy());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (from_a, len, at) in msgs {
        let mut m = vec![0u8; len];
        rng.fill_bytes(&mut m);
        let side = if from_a { Side::A } else { Side::B };
        pair.send_at(Duration::from_millis(at), side, m);
    }
    pair.run_until_idle(MAX_STEPS);
    pair.assert_all_delivered_and_acked();
}

fn messages() -> impl Strategy<Value = Vec<(bool, usize, u64)>> {
    // (from A?, length, send time in ms)
    prop::collection::vec((any::<bool>(), 0usize..5000, 0u64..500), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random messages both ways at random times: every message delivered exactly once, in
    /// order, and acknowledged exactly once, in order.
    #[test]
    fn random_messages_both_directions_exactly_once_in_order(
        seed in any::<u64>(),
        msgs in messages(),
    ) {
        run_schedule(seed, msgs);
    }
}

/// Mostly small messages (1–300 bytes), some large (up to 5 fragments), in bursts.
fn mixed_messages() -> impl Strategy<Value = Vec<(bool, usize, u64)>> {
    let len = prop_oneof![8 => 1usize..=300, 1 => 0usize..1, 2 => 300usize..6000];
    // (from A?, length, send time in ms: a few distinct instants, so messages queue together)
    prop::collection::vec((any::<bool>(), len, (0u64..12).prop_map(|t| t * 40)), 0..250)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Many small messages interleaved with large ones, both ways, under 20 % loss: every
    /// message delivered exactly once, in order, and acknowledged exactly once, in order.
    #[test]
    fn small_and_large_messages_interleaved_exactly_once_in_order(
        seed in any::<u64>(),
        msgs in mixed_messages(),
    ) {
        run_schedule(seed, msgs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// A 1 MiB message (941 fragments) reassembles intact under the same loss, while small
    /// messages flow the other way.
    #[test]
    fn one_mib_payload_reassembles_under_loss(seed in any::<u64>()) {
        let mut pair = Pair::new(seed, Net::lossy());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut big = vec![0u8; 1 << 20];
        rng.fill_bytes(&mut big);
        pair.send(Side::A, b"before".to_vec());
        pair.send(Side::A, big);
        pair.send(Side::A, b"after".to_vec());
        for i in 0..20u8 {
            pair.send_at(Duration::from_millis(u64::from(i) * 10), Side::B, vec![i; 100]);
        }
        pair.run_until_idle(MAX_STEPS);
        pair.assert_all_delivered_and_acked();
    }
}
