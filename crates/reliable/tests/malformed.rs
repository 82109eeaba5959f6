//! Malformed frames are rejected with an error, never panic, and change nothing.

mod common;

use std::time::{Duration, Instant};

use assim_reliable::{Config, Connection, DATA_HEADER_LEN, FrameError};
use assim_wire::limits::MAX_FRAGMENTS;
use common::{Net, Pair, SESSION_A, SESSION_B};
use proptest::prelude::*;

fn data(session: u64, base: u64, seq: u64, index: u16, count: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![1u8];
    for v in [session, base, seq] {
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&index.to_be_bytes());
    f.extend_from_slice(&count.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A packed data frame (type 3) declaring `count` messages, with `entries` as given.
fn packed_raw(session: u64, base: u64, seq: u64, count: u16, entries: &[u8]) -> Vec<u8> {
    let mut f = vec![3u8];
    for v in [session, base, seq] {
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&count.to_be_bytes());
    f.extend_from_slice(entries);
    f
}

/// A well-formed packed data frame of `messages`.
fn packed(session: u64, base: u64, seq: u64, messages: &[&[u8]]) -> Vec<u8> {
    let mut entries = Vec::new();
    for m in messages {
        entries.extend_from_slice(&(m.len() as u16).to_be_bytes());
        entries.extend_from_slice(m);
    }
    packed_raw(session, base, seq, messages.len() as u16, &entries)
}

/// Length of a packed frame's header.
const PACKED_HEADER_LEN: usize = 27;

fn ack(acked: u64, acker: u64, cumulative: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut f = vec![2u8];
    for v in [acked, acker, cumulative] {
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.push(ranges.len() as u8);
    for &(s, e) in ranges {
        f.extend_from_slice(&s.to_be_bytes());
        f.extend_from_slice(&e.to_be_bytes());
    }
    f
}

/// Everything observable about a connection, to show a rejected frame changed nothing.
fn snapshot(c: &Connection) -> String {
    format!("{:?} {:?} {:?} {}", c.stats(), c.peer_session(), c.poll_timeout(), c.is_idle())
}

/// A receiver that has state: it got fragments 0 and 2 of a 4-fragment message from session
/// 100, and has 3 single-fragment messages of its own in flight.
fn busy_receiver(now: Instant) -> Connection {
    let mut c = Connection::new(Config::default(), SESSION_B, 1);
    for i in 0..3u8 {
        c.send(vec![i; 10], now).unwrap();
        while c.poll_transmit(now).is_some() {} // one frame each, not packed together
    }
    c.handle_frame(&data(SESSION_A, 0, 0, 0, 4, &[7; 1099]), now).unwrap();
    c.handle_frame(&data(SESSION_A, 0, 2, 2, 4, &[7; 1099]), now).unwrap();
    c
}

fn assert_rejected(frame: &[u8], expected: FrameError) {
    let now = Instant::now();
    let mut c = busy_receiver(now);
    let before = snapshot(&c);
    assert_eq!(c.handle_frame(frame, now), Err(expected));
    assert_eq!(snapshot(&c), before, "state changed");
    assert!(c.poll_event().is_none());
}

#[test]
fn specific_malformed_frames_are_rejected_without_change() {
    let p = [0u8; 4];
    assert_rejected(&[], FrameError::Truncated);
    assert_rejected(&[7, 1, 2], FrameError::UnknownType(7));
    assert_rejected(&data(SESSION_A, 0, 1, 0, 0, &p), FrameError::Malformed("frag_count is zero"));
    assert_rejected(
        &data(SESSION_A, 0, 5, 3, 3, &p),
        FrameError::Malformed("frag_index is not below frag_count"),
    );
    assert_rejected(
        &data(SESSION_A, 0, 5, 0, u16::MAX, &p),
        FrameError::TooManyFragments(u16::MAX),
    );
    // Within MAX_FRAGMENTS, but more fragments than a max_message_size message needs:
    // refused before any reassembly buffer is allocated.
    assert_rejected(
        &data(SESSION_A, 0, 4, 0, MAX_FRAGMENTS as u16, &p),
        FrameError::TooLarge("frag_count implies a message above max_message_size"),
    );
    assert_rejected(
        &data(SESSION_A, 0, 4, 0, 1, &[0; 1116]),
        FrameError::TooLarge("frame exceeds max_frame_size"),
    );
    assert_rejected(
        &data(SESSION_A, 0, 2, 3, 5, &p),
        FrameError::Malformed("seq is below frag_index"),
    );
    assert_rejected(
        &data(SESSION_A, 9, 9, 1, 2, &p),
        FrameError::Malformed("base is above the fragment's message"),
    );
    // Contradicts the 4-fragment message 0..4 being reassembled.
    assert_rejected(
        &data(SESSION_A, 0, 1, 0, 1, &p),
        FrameError::Malformed("fragment disagrees with the message being reassembled"),
    );
    assert_rejected(
        &data(SESSION_A, 0, 2, 1, 2, &p),
        FrameError::Malformed("fragment disagrees with the message being reassembled"),
    );
    // Packed data frames.
    assert_rejected(&packed(SESSION_A, 0, 4, &[b"ab"])[..26], FrameError::Truncated);
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 0, &[]),
        FrameError::Malformed("packed frame holds no message"),
    );
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 0, &[0, 1, 7]),
        FrameError::Malformed("packed frame holds no message"),
    );
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 2, &[0, 1, 7]),
        FrameError::Malformed("packed entries overrun the frame"),
    );
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 2, &[0, 1, 7, 0]),
        FrameError::Malformed("packed entries overrun the frame"),
    );
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 1, &[0, 10, 7, 7, 7]),
        FrameError::Malformed("packed entries overrun the frame"),
    );
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 1, &[0xff, 0xff]),
        FrameError::Malformed("packed entries overrun the frame"),
    );
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 1, &[0, 1, 7, 9]),
        FrameError::Malformed("bytes after the last packed entry"),
    );
    assert_rejected(
        &packed_raw(SESSION_A, 0, 4, 1, &[0, 1, 7, 0, 0]),
        FrameError::Malformed("bytes after the last packed entry"),
    );
    assert_rejected(
        &packed(SESSION_A, 5, 4, &[b"a", b"b"]),
        FrameError::Malformed("base is above the fragment's message"),
    );
    assert_rejected(
        &packed(SESSION_A, 0, u64::MAX, &[b"a", b"b"]),
        FrameError::Malformed("message extends past the last seq"),
    );
    assert_rejected(
        &packed(SESSION_A, 0, 4, &[&[0; 600], &[0; 600]]),
        FrameError::TooLarge("frame exceeds max_frame_size"),
    );
    // Inside the 4-fragment message 0..4 being reassembled.
    for seq in [1, 3] {
        assert_rejected(
            &packed(SESSION_A, 0, seq, &[b"a", b"b"]),
            FrameError::Malformed("fragment disagrees with the message being reassembled"),
        );
    }
    // Acks.
    assert_rejected(&ack(SESSION_B, SESSION_A, 0, &[])[..20], FrameError::Truncated);
    let mut short = ack(SESSION_B, SESSION_A, 0, &[(2, 3)]);
    short.pop();
    assert_rejected(&short, FrameError::Truncated);
    assert_rejected(
        &ack(SESSION_B, SESSION_A, 0, &[(3, 2)]),
        FrameError::Malformed("empty or inverted ack range"),
    );
    assert_rejected(
        &ack(SESSION_B, SESSION_A, 1, &[(2, 3), (3, 4)]),
        FrameError::Malformed(
            "ack ranges not ascending, overlapping, adjacent, or not above cumulative",
        ),
    );
    assert_rejected(
        &ack(SESSION_B, SESSION_A, 4, &[]),
        FrameError::Malformed("ack covers fragments never sent"),
    );
}

#[test]
fn stale_and_foreign_frames_are_ignored_not_rejected() {
    let now = Instant::now();
    let mut c = busy_receiver(now);
    // An ack for a session that is not ours, and an ack with an unknown extension appended.
    c.handle_frame(&ack(SESSION_B - 1, SESSION_A, 3, &[]), now).unwrap();
    assert_eq!(c.stats().stale_frames, 1);
    assert_eq!(c.stats().messages_acked, 0);
    let mut extended = ack(SESSION_B, SESSION_A, 1, &[(2, 3)]);
    extended.extend_from_slice(b"unknown extension");
    c.handle_frame(&extended, now).unwrap();
    assert_eq!(c.stats().messages_acked, 1);
    // Data from an older session of the peer is dropped.
    c.handle_frame(&data(SESSION_A - 1, 0, 1, 0, 1, b"old"), now).unwrap();
    assert_eq!(c.stats().stale_frames, 2);
    assert_eq!(c.stats().messages_delivered, 0);
}

/// Issue 16 item 16: a peer whose base is within a receive window of `u64::MAX` neither
/// crashes the receiver (debug builds) nor has every frame refused as beyond the window
/// (release builds, where `floor + window` wrapped).
#[test]
fn item16_base_near_u64_max_is_delivered_not_overflowed() {
    let now = Instant::now();
    let mut c = Connection::new(Config::default(), SESSION_B, 1);
    let top = u64::MAX - 2;
    c.handle_frame(&data(SESSION_A, top, top, 0, 1, b"first"), now).unwrap();
    c.handle_frame(&data(SESSION_A, top, top + 1, 0, 1, b"second"), now).unwrap();
    let delivered: Vec<Vec<u8>> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            assim_reliable::Event::Delivered(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![b"first".to_vec(), b"second".to_vec()]);
}

/// A packed frame and an ordinary data frame for the same seq contradict each other, in
/// either order; the one buffered first stands.
#[test]
fn packed_and_unpacked_copies_of_one_seq_contradict() {
    let now = Instant::now();
    let mut c = busy_receiver(now);
    c.handle_frame(&packed(SESSION_A, 0, 4, &[b"a", b"b"]), now).unwrap();
    let before = snapshot(&c);
    assert_eq!(
        c.handle_frame(&data(SESSION_A, 0, 4, 0, 1, b"a"), now),
        Err(FrameError::Malformed("fragment disagrees with an earlier copy"))
    );
    assert_eq!(snapshot(&c), before);
    c.handle_frame(&packed(SESSION_A, 0, 4, &[b"a", b"b"]), now).unwrap();
    assert_eq!(c.stats().duplicates, 1, "the same packed frame again is a duplicate");

    let mut c = busy_receiver(now);
    c.handle_frame(&data(SESSION_A, 0, 4, 0, 1, b"a"), now).unwrap();
    let before = snapshot(&c);
    assert_eq!(
        c.handle_frame(&packed(SESSION_A, 0, 4, &[b"a", b"b"]), now),
        Err(FrameError::Malformed("fragment disagrees with an earlier copy"))
    );
    assert_eq!(snapshot(&c), before);
}

/// A packed frame of exactly max_frame_size bytes, and one with empty messages, are accepted
/// and deliver their messages in order.
#[test]
fn largest_packed_frame_is_accepted() {
    let now = Instant::now();
    let mut c = Connection::new(Config::default(), SESSION_B, 1);
    let big = packed(SESSION_A, 0, 0, &[&[1; 500], &[2; 597]]);
    assert_eq!(big.len(), Config::default().max_frame_size);
    c.handle_frame(&big, now).unwrap();
    c.handle_frame(&packed(SESSION_A, 0, 1, &[b"", b"x", b""]), now).unwrap();
    let delivered: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(
        delivered,
        [vec![1; 500], vec![2; 597], vec![], b"x".to_vec(), vec![]]
            .map(assim_reliable::Event::Delivered)
    );
    assert_eq!(c.stats().messages_delivered, 5);
}

/// Valid frames captured from a lossy run, to mutate: fragments, a packed frame, acks.
fn captured_frames() -> Vec<Vec<u8>> {
    let mut pair = Pair::new(7, Net::lossy());
    pair.send(common::Side::A, vec![1; 5000]);
    for i in 0..5u8 {
        pair.send(common::Side::A, vec![i; 20 * usize::from(i)]);
    }
    pair.send(common::Side::B, vec![2; 10]);
    let mut frames = Vec::new();
    let now = pair.now;
    while let Some(f) = pair.a.poll_transmit(now) {
        frames.push(f);
    }
    for f in &frames {
        pair.b.handle_frame(f, now).unwrap();
    }
    while let Some(f) = pair.b.poll_transmit(now + Duration::from_millis(10)) {
        frames.push(f);
    }
    assert!(frames.iter().any(|f| f[0] == 3), "a packed frame was captured");
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes: accepted or rejected, never a panic; a rejection changes nothing.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1300), kind in 0u8..4) {
        let now = Instant::now();
        let mut c = busy_receiver(now);
        let mut frame = bytes;
        if let Some(b) = frame.first_mut() {
            *b = kind; // make data and ack frames likely
        }
        let before = snapshot(&c);
        if c.handle_frame(&frame, now).is_err() {
            prop_assert_eq!(snapshot(&c), before);
        }
        // Whatever happened, the connection still works.
        while c.poll_transmit(now).is_some() {}
        c.handle_timeout(now + Duration::from_secs(1));
    }

    /// Truncating a valid frame inside its header (or its ack ranges) is reported as truncated.
    #[test]
    fn truncated_frames_are_rejected(which in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let frames = captured_frames();
        let frame = which.get(&frames);
        let header = match frame[0] {
            1 => DATA_HEADER_LEN,
            3 => PACKED_HEADER_LEN,
            _ => frame.len(),
        };
        let len = cut.index(header);
        let now = Instant::now();
        let mut c = busy_receiver(now);
        let before = snapshot(&c);
        prop_assert_eq!(c.handle_frame(&frame[..len], now), Err(FrameError::Truncated));
        prop_assert_eq!(snapshot(&c), before);
    }

    /// Truncating a packed frame inside its entries is malformed (an entry overruns the frame).
    #[test]
    fn truncated_packed_entries_are_rejected(cut in any::<prop::sample::Index>()) {
        let frames = captured_frames();
        let frame = frames.iter().find(|f| f[0] == 3).expect("a packed frame");
        let len = PACKED_HEADER_LEN + cut.index(frame.len() - PACKED_HEADER_LEN);
        let now = Instant::now();
        let mut c = busy_receiver(now);
        let before = snapshot(&c);
        prop_assert!(matches!(c.handle_frame(&frame[..len], now), Err(FrameError::Malformed(_))));
        prop_assert_eq!(snapshot(&c), before);
    }

    /// Random packed frames (random count and entry bytes, valid header): accepted or
    /// rejected, never a panic; a rejection changes nothing.
    #[test]
    fn random_packed_frames_never_panic(
        seq in 0u64..8,
        count in any::<u16>(),
        entries in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let now = Instant::now();
        for mut c in [busy_receiver(now), Connection::new(Config::default(), SESSION_A, 3)] {
            let before = snapshot(&c);
            if c.handle_frame(&packed_raw(SESSION_A, 0, seq, count, &entries), now).is_err() {
                prop_assert_eq!(snapshot(&c), before);
            }
            while c.poll_transmit(now).is_some() {}
        }
    }

    /// Valid frames with a field overwritten by an arbitrary value: never a panic, and a
    /// rejection changes nothing.
    #[test]
    fn mutated_frames_never_panic(
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        value in any::<u64>(),
        width in prop::sample::select(vec![1usize, 2, 8]),
    ) {
        let frames = captured_frames();
        let mut frame = which.get(&frames).clone();
        let at = at.index(frame.len());
        let bytes = value.to_be_bytes();
        for (i, b) in bytes[8 - width..].iter().enumerate() {
            if let Some(slot) = frame.get_mut(at + i) {
                *slot = *b;
            }
        }
        let now = Instant::now();
        for mut c in [busy_receiver(now), Connection::new(Config::default(), SESSION_A, 3)] {
            let before = snapshot(&c);
            if c.handle_frame(&frame, now).is_err() {
                prop_assert_eq!(snapshot(&c), before);
            }
            while c.poll_transmit(now).is_some() {}
        }
    }
}
