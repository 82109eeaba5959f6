//! A peer restarts mid-stream: its `Connection` is replaced by a new one with a larger session.

mod common;

use std::time::Duration;

use assim_reliable::{Config, Connection, Event};
use common::{Net, Pair, SESSION_B, Side, tagged};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MAX_STEPS: u64 = 1_000_000;

/// (incarnation, index) from a `tagged` message.
fn tag(m: &[u8]) -> (u8, u32) {
    (m[1], u32::from_be_bytes(m[2..6].try_into().unwrap()))
}

/// B restarts after a random time. Message lengths are 9..`max_len` bytes (below about 1100
/// several share one packed frame). A sees `PeerRestarted`, gets the new incarnation's
/// messages in order and nothing from the old incarnation after noticing the restart; A's
/// own messages all reach B (old or new incarnation), the new incarnation's share in order
/// and without gaps up to the last, and A gets one `Acked` per message.
fn check_restart(
    seed: u64,
    old_count: u32,
    new_count: u32,
    a_count: u32,
    restart_after_ms: u64,
    max_len: usize,
) -> Result<(), TestCaseError> {
    let mut pair = Pair::new(seed, Net::lossy());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut times: Vec<u64> = (0..a_count).map(|_| rng.gen_range(0..400)).collect();
    times.sort_unstable(); // so that A's index order is its send order
    for (i, at) in (0..a_count).zip(times) {
        let m = tagged(Side::A, 0, i, rng.gen_range(9..max_len), &mut rng);
        pair.send_at(Duration::from_millis(at), Side::A, m);
    }
    for i in 0..old_count {
        let m = tagged(Side::B, 0, i, rng.gen_range(9..max_len), &mut rng);
        pair.send(Side::B, m);
    }
    // Restart only once A knows the old session, so that it has something to notice.
    pair.run_until(MAX_STEPS, |p| p.a.peer_session() == Some(SESSION_B));
    let at = pair.elapsed() + Duration::from_millis(restart_after_ms);
    pair.run_until_time(at, MAX_STEPS);

    let old_b_events = std::mem::take(&mut pair.b_events);
    let old_b_sent = std::mem::take(&mut pair.b_sent);
    pair.b = Connection::new(Config::default(), SESSION_B + 1, seed ^ 0xBB);
    for i in 0..new_count {
        let m = tagged(Side::B, 1, i, rng.gen_range(9..max_len), &mut rng);
        pair.send(Side::B, m);
    }
    pair.run_until_idle(MAX_STEPS);

    // A noticed the restart exactly once, if the new incarnation ever sent it anything: it
    // must have if it had messages, or if A had messages it had not acknowledged yet.
    let restarts: Vec<&Event> =
        pair.a_events.iter().filter(|e| matches!(e, Event::PeerRestarted { .. })).collect();
    if pair.a.peer_session() == Some(SESSION_B + 1) {
        prop_assert_eq!(
            restarts,
            vec![&Event::PeerRestarted { old: SESSION_B, new: SESSION_B + 1 }]
        );
    } else {
        prop_assert!(restarts.is_empty());
        prop_assert_eq!(new_count, 0);
        prop_assert!(pair.b_events.is_empty(), "the new incarnation heard nothing");
    }
    let new_b_restarts =
        pair.b_events.iter().filter(|e| matches!(e, Event::PeerRestarted { .. })).count();
    prop_assert_eq!(new_b_restarts, 0);

    // B -> A: old messages form an in-order prefix delivered before the restart was noticed;
    // new messages all arrive, in order, after it.
    let mut noticed = false;
    let (mut old_seen, mut new_seen) = (0u32, 0u32);
    for e in &pair.a_events {
        match e {
            Event::PeerRestarted { .. } => noticed = true,
            Event::Delivered(m) => match tag(m) {
                (0, i) => {
                    prop_assert!(!noticed, "old message {} delivered after the restart", i);
                    prop_assert_eq!(i, old_seen);
                    old_seen += 1;
                }
                (1, i) => {
                    prop_assert!(noticed);
                    prop_assert_eq!(i, new_seen);
                    new_seen += 1;
                }
                other => prop_assert!(false, "unexpected tag {:?}", other),
            },
            Event::Acked(_) => {}
        }
    }
    prop_assert!(old_seen <= old_count);
    prop_assert_eq!(new_seen, new_count);
    prop_assert_eq!(pair.acked(Side::B), (1..=u64::from(new_count)).collect::<Vec<_>>());
    // Old B's acks: a prefix of its ids, in order.
    let old_acked: Vec<u64> = old_b_events
        .iter()
        .filter_map(|e| if let Event::Acked(id) = e { Some(*id) } else { None })
        .collect();
    prop_assert_eq!(&old_acked, &(1..=old_acked.len() as u64).collect::<Vec<_>>());
    prop_assert!(old_acked.len() <= old_b_sent.len());

    // A -> B: the old incarnation got an in-order prefix. The new one gets, in increasing
    // order, everything the old one did not (no gap), and may get again some messages the old
    // one delivered (a stale frame can make it start low; it then skips ahead to the sender's
    // `base`): delivery is exactly once per receiver incarnation, not across a restart.
    let old_delivered: Vec<u32> = old_b_events
        .iter()
        .filter_map(|e| if let Event::Delivered(m) = e { Some(tag(m).1) } else { None })
        .collect();
    prop_assert_eq!(&old_delivered, &(0..old_delivered.len() as u32).collect::<Vec<_>>());
    let new_delivered: Vec<u32> = pair.delivered(Side::B).iter().map(|m| tag(m).1).collect();
    prop_assert!(new_delivered.windows(2).all(|w| w[0] < w[1]), "new: {:?}", new_delivered);
    for i in old_delivered.len() as u32..a_count {
        prop_assert!(
            new_delivered.contains(&i),
            "message {} lost across the restart: old {:?} new {:?}",
            i,
            old_delivered,
            new_delivered
        );
    }
    for (m, i) in pair.delivered(Side::B).iter().zip(&new_delivered) {
        prop_assert!(m == &pair.a_sent[*i as usize].1.as_slice(), "content of message {}", i);
    }
    prop_assert_eq!(pair.acked(Side::A), (1..=u64::from(a_count)).collect::<Vec<_>>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn peer_restart_mid_stream(
        seed in any::<u64>(),
        old_count in 1u32..30,
        new_count in 0u32..30,
        a_count in 1u32..40,
        restart_after_ms in 0u64..200,
    ) {
        check_restart(seed, old_count, new_count, a_count, restart_after_ms, 3000)?;
    }

    /// The same with mostly small messages, many of them packed: a restart can cut between
    /// packed frames, and resent packed frames carry whole messages only.
    #[test]
    fn peer_restart_mid_stream_small_messages(
        seed in any::<u64>(),
        old_count in 1u32..120,
        new_count in 0u32..120,
        a_count in 1u32..160,
        restart_after_ms in 0u64..200,
    ) {
        check_restart(seed, old_count, new_count, a_count, restart_after_ms, 300)?;
    }
}

/// Found by the property test: the new incarnation started at a stale `base`, selectively
/// acknowledged a fragment above the sender's cumulative point, and the sender must not count
/// that as delivered.
#[test]
fn peer_restart_regression_selective_ack_below_stale_base() {
    check_restart(15757845887341862080, 19, 0, 17, 146, 3000).unwrap();
}

/// Found by the property test: the new incarnation had nothing to send and A nothing left to
/// resend, so A never hears of the restart (and need not).
#[test]
fn peer_restart_regression_silent_new_incarnation() {
    check_restart(1324838613447958269, 7, 0, 1, 55, 3000).unwrap();
}

/// Found by the property test: a stale frame made the new incarnation start low; it delivered
/// one message again, then skipped ahead to the sender's `base`.
#[test]
fn peer_restart_regression_redelivery_then_skip() {
    check_restart(2139689249250647225, 15, 0, 38, 161, 3000).unwrap();
}
