//! In-memory test harness: two [`Connection`]s joined by a simulated network in virtual time
//! (after quinn's test `Pair`).
//!
//! The network delays every frame by a random latency, drops and duplicates frames at random
//! (duplicates get their own latency, so they also reorder), and can black out for an interval.
//! [`Pair::step`] jumps virtual time to the next deadline: the earliest of both connections'
//! `poll_timeout`, the next frame arrival and the next scheduled send. Every run is determined by
//! its seed, which is printed first so a failure replays (`ASSIM_TEST_SEED=<seed>` overrides the
//! seed of the non-property tests).

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use assim_reliable::{Config, Connection, Event};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Behaviour of the simulated network, the same in both directions.
#[derive(Clone, Debug)]
pub struct Net {
    pub loss: f64,
    pub duplicate: f64,
    pub min_latency: Duration,
    pub max_latency: Duration,
}

impl Net {
    /// 20 % loss, 10 % duplication, 1–20 ms latency (which reorders).
    pub fn lossy() -> Net {
        Net {
            loss: 0.2,
            duplicate: 0.1,
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(20),
        }
    }

    pub fn perfect() -> Net {
        Net {
            loss: 0.0,
            duplicate: 0.0,
            min_latency: Duration::from_millis(5),
            max_latency: Duration::from_millis(5),
        }
    }
}

/// The seed for a non-property test: `ASSIM_TEST_SEED` if set, else `default`.
pub fn seed_or(default: u64) -> u64 {
    std::env::var("ASSIM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

pub const SESSION_A: u64 = 100;
pub const SESSION_B: u64 = 200;

type InFlight = Reverse<(Instant, u64, Side, Vec<u8>)>;
type Scheduled = Reverse<(Instant, u64, Side, Vec<u8>)>;

pub struct Pair {
    pub a: Connection,
    pub b: Connection,
    /// Every event each side emitted, in order.
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
    /// (id, message) of every message each side queued, in order.
    pub a_sent: Vec<(u64, Vec<u8>)>,
    pub b_sent: Vec<(u64, Vec<u8>)>,
    pub net: Net,
    pub start: Instant,
    pub now: Instant,
    /// Frames sent during this interval are lost.
    pub blackout: Option<(Instant, Instant)>,
    pub steps: u64,
    pub frames_lost: u64,
    rng: ChaCha8Rng,
    in_flight: BinaryHeap<InFlight>,
    scheduled: BinaryHeap<Scheduled>,
    order: u64,
}

impl Pair {
    pub fn new(seed: u64, net: Net) -> Pair {
        Pair::with_config(seed, net, Config::default())
    }

    pub fn with_config(seed: u64, net: Net, config: Config) -> Pair {
        println!("pair seed = {seed}");
        let a = Connection::new(config.clone(), SESSION_A, seed ^ 0xA);
        let b = Connection::new(config, SESSION_B, seed ^ 0xB);
        let start = Instant::now();
        Pair {
            a,
            b,
            a_events: Vec::new(),
            b_events: Vec::new(),
            a_sent: Vec::new(),
            b_sent: Vec::new(),
            net,
            start,
            now: start,
            blackout: None,
            steps: 0,
            frames_lost: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_flight: BinaryHeap::new(),
            scheduled: BinaryHeap::new(),
            order: 0,
        }
    }

    pub fn conn(&mut self, side: Side) -> &mut Connection {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    pub fn events(&self, side: Side) -> &[Event] {
        match side {
            Side::A => &self.a_events,
            Side::B => &self.b_events,
        }
    }

    pub fn sent(&self, side: Side) -> &[(u64, Vec<u8>)] {
        match side {
            Side::A => &self.a_sent,
            Side::B => &self.b_sent,
        }
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Queues a message on `side` now.
    pub fn send(&mut self, side: Side, message: Vec<u8>) -> u64 {
        let now = self.now;
        let id = self.conn(side).send(message.clone(), now).expect("send accepted");
        match side {
            Side::A => self.a_sent.push((id, message)),
            Side::B => self.b_sent.push((id, message)),
        }
        id
    }

    /// Queues a message on `side` at virtual time `start + at`.
    pub fn send_at(&mut self, at: Duration, side: Side, message: Vec<u8>) {
        self.order += 1;
        self.scheduled.push(Reverse((self.start + at, self.order, side, message)));
    }

    /// Messages delivered at `side`, in order.
    pub fn delivered(&self, side: Side) -> Vec<&[u8]> {
        self.events(side)
            .iter()
            .filter_map(|e| match e {
                Event::Delivered(m) => Some(m.as_slice()),
                _ => None,
            })
            .collect()
    }

    /// Ids acknowledged at `side`, in order.
    pub fn acked(&self, side: Side) -> Vec<u64> {
        self.events(side)
            .iter()
            .filter_map(|e| match e {
                Event::Acked(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    pub fn network_empty(&self) -> bool {
        self.in_flight.is_empty() && self.scheduled.is_empty()
    }

    pub fn idle(&self) -> bool {
        self.a.is_idle() && self.b.is_idle() && self.network_empty()
    }

    fn transmit(&mut self, from: Side, frame: Vec<u8>) {
        let blacked_out = self.blackout.is_some_and(|(s, e)| self.now >= s && self.now < e);
        if blacked_out || self.rng.gen_bool(self.net.loss) {
            self.frames_lost += 1;
            return;
        }
        let copies = if self.rng.gen_bool(self.net.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let latency = self.rng.gen_range(self.net.min_latency..=self.net.max_latency);
            self.order += 1;
            self.in_flight.push(Reverse((
                self.now + latency,
                self.order,
                from.other(),
                frame.clone(),
            )));
        }
    }

    /// Drains both sides' transmits into the network and their events into the logs.
    pub fn flush(&mut self) {
        for side in [Side::A, Side::B] {
            let now = self.now;
            while let Some(frame) = self.conn(side).poll_transmit(now) {
                self.transmit(side, frame);
            }
            while let Some(e) = self.conn(side).poll_event() {
                match side {
                    Side::A => self.a_events.push(e),
                    Side::B => self.b_events.push(e),
                }
            }
        }
    }

    /// One step: flush, jump to the next deadline, deliver what arrives, fire timers, flush.
    /// Returns false when nothing will ever happen again.
    pub fn step(&mut self) -> bool {
        self.flush();
        let next = [
            self.a.poll_timeout(),
            self.b.poll_timeout(),
            self.in_flight.peek().map(|Reverse(f)| f.0),
            self.scheduled.peek().map(|Reverse(s)| s.0),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        self.steps += 1;
        while let Some(Reverse(s)) = self.scheduled.peek()
            && s.0 <= self.now
        {
            let Reverse((_, _, side, message)) = self.scheduled.pop().expect("peeked");
            self.send(side, message);
        }
        while let Some(Reverse(f)) = self.in_flight.peek()
            && f.0 <= self.now
        {
            let Reverse((_, _, to, frame)) = self.in_flight.pop().expect("peeked");
            let now = self.now;
            if let Err(e) = self.conn(to).handle_frame(&frame, now) {
                panic!("{to:?} rejected a frame from its peer: {e}");
            }
        }
        for side in [Side::A, Side::B] {
            let now = self.now;
            if self.conn(side).poll_timeout().is_some_and(|t| t <= now) {
                self.conn(side).handle_timeout(now);
            }
        }
        self.flush();
        true
    }

    /// Steps until `done`, panicking after `max_steps` (livelock) or if everything stops first.
    pub fn run_until(&mut self, max_steps: u64, done: impl Fn(&Pair) -> bool) {
        let limit = self.steps + max_steps;
        while !done(self) {
            assert!(
                self.steps < limit,
                "livelock: {max_steps} steps without reaching the goal at {:?} virtual",
                self.elapsed()
            );
            assert!(self.step(), "stalled at {:?} virtual", self.elapsed());
        }
    }

    /// Steps until both sides are idle and the network is empty.
    pub fn run_until_idle(&mut self, max_steps: u64) {
        self.run_until(max_steps, Pair::idle);
    }

    /// Steps until virtual time reaches `start + at` (or a step would pass it).
    pub fn run_until_time(&mut self, at: Duration, max_steps: u64) {
        let until = self.start + at;
        let limit = self.steps + max_steps;
        while self.now < until {
            assert!(self.steps < limit, "livelock before {at:?}");
            let next = [
                self.a.poll_timeout(),
                self.b.poll_timeout(),
                self.in_flight.peek().map(|Reverse(f)| f.0),
                self.scheduled.peek().map(|Reverse(s)| s.0),
            ]
            .into_iter()
            .flatten()
            .min();
            if next.is_none_or(|n| n > until) {
                self.now = until;
                break;
            }
            self.step();
        }
        self.flush();
    }

    /// Asserts that each side delivered exactly the other's messages, in order, and got one
    /// `Acked` per id, in order.
    pub fn assert_all_delivered_and_acked(&self) {
        for side in [Side::A, Side::B] {
            let sent: Vec<&[u8]> =
                self.sent(side.other()).iter().map(|(_, m)| m.as_slice()).collect();
            let delivered = self.delivered(side);
            assert_eq!(
                delivered.len(),
                sent.len(),
                "{side:?} delivered {} of {} messages",
                delivered.len(),
                sent.len()
            );
            for (i, (d, s)) in delivered.iter().zip(&sent).enumerate() {
                assert!(d == s, "{side:?}: message {i} differs or is out of order");
            }
            let ids: Vec<u64> = self.sent(side).iter().map(|(id, _)| *id).collect();
            assert_eq!(self.acked(side), ids, "{side:?}: Acked events");
        }
    }
}

/// A message that names its sender, incarnation and index, padded to `len` bytes (at least 9).
pub fn tagged(side: Side, incarnation: u8, index: u32, len: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut m = vec![side as u8, incarnation];
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    while m.len() < len {
        m.push(rng.r#gen());
    }
    m
}
