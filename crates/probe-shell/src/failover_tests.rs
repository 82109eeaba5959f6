//! Issue 14: a nanoprobe shell with several CMA addresses, sealed, against CMA engines of one
//! identity at different addresses, in virtual time. Each engine is a real sealer and reliable
//! connection that acknowledges what it gets (the inbox's `Ack { through }` included); an
//! engine that is down receives nothing and sends nothing.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use assim_log::MemStorage;
use assim_reliable::{Config as RelConfig, Connection, Event as RelEvent};
use assim_seal::{Identity, Sealer};
use assim_wire::DatagramKind;
use assim_wire::msg::{self, Body, Direct, DirectBody, Message};

use crate::cma_addrs::{FAILOVER_AFTER, FAILOVER_MAX_DWELL};
use crate::{Shell, ShellConfig, Spool, WallClock};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 1984))
}

/// One CMA engine: the CMA's identity, its own session, its own address.
struct Engine {
    addr: SocketAddr,
    up: bool,
    sealer: Sealer,
    conn: Connection,
    session: u64,
    hellos: usize,
    /// Spool records applied (next-record rule), and datagrams that reached this address.
    seen: u64,
    datagrams: usize,
    /// Packet readers: the inbox they share (the node's applied mark, every record delivered),
    /// instead of `seen`.
    inbox: Option<Rc<RefCell<Inbox>>>,
    /// Nonces of the probe replies this address got.
    probe_replies: Vec<u64>,
}

/// What packet readers share behind them (the inbox stream): the node's next-record mark and
/// every record any reader delivered, duplicates included.
#[derive(Default)]
struct Inbox {
    applied: u64,
    delivered: Vec<u64>,
}

impl Engine {
    fn new(cma: &Identity, node: &Identity, addr: SocketAddr, session: u64) -> Engine {
        let mut sealer = Sealer::new(cma.clone(), session);
        sealer.add_peer(node.node_id(), node.public_key());
        Engine {
            addr,
            up: false,
            sealer,
            conn: Connection::new(RelConfig::default(), session, session),
            session,
            hellos: 0,
            seen: 0,
            datagrams: 0,
            inbox: None,
            probe_replies: Vec::new(),
        }
    }

    fn receive(&mut self, bytes: &[u8], now: Instant) {
        self.datagrams += 1;
        let Ok(opened) = self.sealer.open(bytes) else { return };
        if opened.header.kind == DatagramKind::Direct
            && let Ok(Direct { body: Some(DirectBody::ProbeReply(p)) }) =
                Direct::from_bytes(&opened.plaintext)
        {
            self.probe_replies.push(p.nonce);
        }
        if opened.header.kind != DatagramKind::Reliable {
            return;
        }
        let _ = self.conn.handle_frame(&opened.plaintext, now);
        let mut records = false;
        while let Some(ev) = self.conn.poll_event() {
            let RelEvent::Delivered(b) = ev else { continue };
            let m = Message::from_bytes(&b).unwrap();
            if matches!(m.body, Some(Body::Hello(_))) {
                self.hellos += 1;
            }
            if m.record > 0 {
                records = true;
                if let Some(inbox) = &self.inbox {
                    let mut inbox = inbox.borrow_mut();
                    inbox.delivered.push(m.record);
                    if m.record == inbox.applied + 1 {
                        inbox.applied = m.record;
                    }
                    self.seen = inbox.applied;
                } else if m.record == self.seen + 1 {
                    self.seen = m.record;
                }
            }
        }
        if records {
            let ack = msg::Ack { through: self.seen, incarnation: 0 };
            self.conn.send(Message::new(Body::Ack(ack)).to_bytes(), now).unwrap();
        }
    }

    /// Sealed frames for the node.
    fn transmit(&mut self, node: &Identity, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = self.conn.poll_transmit(now) {
            let mut b = Vec::new();
            self.sealer
                .seal(node.node_id(), DatagramKind::Reliable, false, &frame, &mut b)
                .unwrap();
            out.push(b);
        }
        out
    }

    /// A CMA probe of the node from this address, sealed.
    fn probe(&mut self, node: &Identity, nonce: u64) -> Vec<u8> {
        let d = Direct { body: Some(DirectBody::Probe(msg::Probe { nonce })) }.to_bytes();
        let mut b = Vec::new();
        self.sealer.seal(node.node_id(), DatagramKind::Direct, false, &d, &mut b).unwrap();
        b
    }

    /// Tells the node something (a peer set), as a new engine does for ring members.
    fn command(&mut self, now: Instant) {
        let set = msg::PeerSet { epoch: self.session, ..Default::default() };
        self.conn.send(Message::new(Body::PeerSet(set)).to_bytes(), now).unwrap();
    }
}

struct Rig {
    node: Identity,
    cma: Identity,
    shell: Shell<MemStorage>,
    engines: Vec<Engine>,
    now: Instant,
    /// Where each datagram for the CMA went, in order (consecutive repeats collapsed).
    sent_to: Vec<SocketAddr>,
    /// Datagrams for the CMA, to any address, up or down.
    attempts: usize,
}

impl Rig {
    /// A node that knows the addresses 192.0.2.1..=n; engine `i` listens at address `i + 1`,
    /// all down.
    fn new(n: u8) -> Rig {
        let sessions: Vec<u64> = (1..=n).map(|i| 100 + u64::from(i)).collect();
        Rig::with_sessions(&sessions)
    }

    /// Packet readers: one per session given, reader `i` at address `i + 1`, all up, sharing
    /// one inbox.
    fn readers(sessions: &[u64]) -> (Rig, Rc<RefCell<Inbox>>) {
        let mut r = Rig::with_sessions(sessions);
        let inbox = Rc::new(RefCell::new(Inbox::default()));
        for e in &mut r.engines {
            e.up = true;
            e.inbox = Some(inbox.clone());
        }
        (r, inbox)
    }

    fn with_sessions(sessions: &[u64]) -> Rig {
        let n = sessions.len() as u8;
        let mut rng = rand::rngs::OsRng;
        let (node, cma) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let now = Instant::now();
        let cfg = ShellConfig {
            node_id: node.node_id(),
            cma_id: cma.node_id(),
            cma_addr: addr(1),
            session: 1,
            seed: 1,
            hello: msg::Hello { hostname: "n1".into(), ..Default::default() },
            reliable: RelConfig::default(),
            discovery_defaults: false,
            wall_clock: WallClock::new(now, 1_700_000_000_000_000),
        };
        let spool = Spool::open(MemStorage::new(1), 1 << 20, crate::limits::MAX_MESSAGE).unwrap();
        let mut sealer = Sealer::new(node.clone(), 1);
        sealer.add_peer(cma.node_id(), cma.public_key());
        let shell = Shell::new(cfg, spool, Some(sealer), now)
            .with_cma_addrs((1..=n).map(addr).collect())
            .unwrap();
        let engines =
            (1..=n).map(|i| Engine::new(&cma, &node, addr(i), sessions[i as usize - 1])).collect();
        Rig { node, cma, shell, engines, now, sent_to: Vec::new(), attempts: 0 }
    }

    fn engine(&mut self, a: SocketAddr) -> &mut Engine {
        self.engines.iter_mut().find(|e| e.addr == a).unwrap()
    }

    /// Delivers everything queued on both sides, without loss or delay.
    fn exchange(&mut self) {
        for _ in 0..1000 {
            let mut progressed = false;
            while self.shell.poll_event().is_some() {}
            while let Some(d) = self.shell.poll_datagram(self.now) {
                progressed = true;
                if d.to != self.cma.node_id() {
                    continue;
                }
                self.attempts += 1;
                if self.sent_to.last() != Some(&d.addr) {
                    self.sent_to.push(d.addr);
                }
                let now = self.now;
                if let Some(e) = self.engines.iter_mut().find(|e| e.addr == d.addr && e.up) {
                    e.receive(&d.bytes, now);
                }
            }
            for i in 0..self.engines.len() {
                if !self.engines[i].up {
                    continue;
                }
                let (src, frames) = {
                    let e = &mut self.engines[i];
                    (e.addr, e.transmit(&self.node, self.now))
                };
                for f in frames {
                    progressed = true;
                    self.shell.handle_datagram(&f, src, self.now);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("livelock");
    }

    /// Runs virtual time forward by `d`, from deadline to deadline.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        self.exchange();
        for _ in 0..100_000 {
            let mut next = self.shell.poll_timeout();
            for e in self.engines.iter().filter(|e| e.up) {
                next = [next, e.conn.poll_timeout()].into_iter().flatten().min();
            }
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.shell.handle_timeout(self.now);
                    let now = self.now;
                    for e in self.engines.iter_mut().filter(|e| e.up) {
                        e.conn.handle_timeout(now);
                    }
                    self.exchange();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("too many steps");
    }

    /// A heartbeat report through the spool: something the CMA owes an acknowledgement for.
    fn report(&mut self) {
        let body = Body::HeartbeatReport(msg::HeartbeatReport {
            peer: vec![9; 16],
            kind: msg::ReportKind::Dead as i32,
            ..Default::default()
        });
        self.shell.send_spooled(body, self.now).unwrap();
    }

    fn current(&self) -> SocketAddr {
        self.shell.cma().1
    }
}

/// The first address is dead: after [`FAILOVER_AFTER`] of silence the hello goes to the next
/// one, which registers the node; the move is counted once.
#[test]
fn a_silent_cma_address_is_left_for_the_next_one() {
    let mut r = Rig::new(2);
    r.engine(addr(2)).up = true;
    let t0 = r.now;
    r.shell.start(r.now);
    r.run(FAILOVER_AFTER - Duration::from_millis(10));
    assert_eq!(r.current(), addr(1), "not before the dwell");
    assert!(r.engine(addr(2)).datagrams == 0);
    r.run(Duration::from_millis(200));
    assert_eq!(r.current(), addr(2));
    assert_eq!(r.engine(addr(2)).hellos, 1, "the hello went to the second address");
    assert_eq!(r.shell.stats().cma_failovers, 1);
    assert_eq!(r.shell.cma_addrs().failovers(), 1);
    assert_eq!(r.sent_to, [addr(1), addr(2)]);
    // At once: the hello went out at the move, not at the backed-off RTO.
    assert!(r.shell.connection().stats().queued_messages == 0);
    // Reports from now on go there and are acknowledged; no further move.
    for _ in 0..5 {
        r.report();
        r.run(Duration::from_secs(20));
    }
    assert_eq!(r.engine(addr(2)).seen, 5);
    assert_eq!(r.shell.spool().unacked(), 0);
    assert_eq!(r.shell.stats().cma_failovers, 1);
    assert_eq!(r.sent_to, [addr(1), addr(2)]);
    println!("registered at the second address {:?} after start", r.now - t0);
}

/// An engine that answers keeps its address, however long and however busy; the other
/// address never hears from the node.
#[test]
fn an_answering_cma_keeps_its_address() {
    let mut r = Rig::new(3);
    for e in &mut r.engines {
        e.up = true;
    }
    r.shell.start(r.now);
    for _ in 0..60 {
        r.report();
        r.run(Duration::from_secs(1));
    }
    r.run(Duration::from_secs(600)); // idle: nothing owed, nothing judged
    assert_eq!(r.current(), addr(1));
    assert_eq!(r.engine(addr(1)).seen, 60);
    assert_eq!(r.shell.stats().cma_failovers, 0);
    assert_eq!((r.engine(addr(2)).datagrams, r.engine(addr(3)).datagrams), (0, 0));
}

/// Nobody answers: round robin through the list and back to the first, the dwell doubling
/// after each full round; when the first comes up, the node registers there and stays.
#[test]
fn moves_wrap_around_the_list() {
    let mut r = Rig::new(3);
    r.shell.start(r.now);
    let t0 = r.now;
    let mut moves = Vec::new();
    let mut last = r.current();
    while moves.len() < 7 {
        r.run(Duration::from_millis(100));
        if r.current() != last {
            last = r.current();
            moves.push((last, (r.now - t0).as_millis().div_ceil(100) as u64 * 100));
        }
        assert!(r.now - t0 < Duration::from_secs(120));
    }
    // 3 s per address in the first round, 6 s in the second, 12 s in the third.
    let want = [
        (addr(2), 3000),
        (addr(3), 6000),
        (addr(1), 9000),
        (addr(2), 15000),
        (addr(3), 21000),
        (addr(1), 27000),
        (addr(2), 39000),
    ];
    assert_eq!(moves, want);
    assert_eq!(r.shell.stats().cma_failovers, 7);
    // A few datagrams per dwell, not a storm: the one at each move, then one per RTO expiry
    // (300 ms, doubling, ±20 %): 3 to 5 per dwell of 3 to 12 s.
    println!("{} datagrams in {:?} over {} moves", r.attempts, r.now - t0, moves.len());
    assert!((7 * 3..=8 * 5).contains(&r.attempts), "{} datagrams", r.attempts);
    r.engine(addr(1)).up = true;
    r.run(Duration::from_secs(80));
    assert_eq!(r.current(), addr(1));
    assert_eq!(r.engine(addr(1)).hellos, 1);
    let n = r.shell.stats().cma_failovers;
    r.report();
    r.run(FAILOVER_MAX_DWELL * 4);
    assert_eq!(r.shell.stats().cma_failovers, n, "no move once it answers");
    assert_eq!(r.engine(addr(1)).seen, 1);
}

/// Datagrams from another address that are not the CMA's newest word never move the node:
/// garbage, a tampered copy of a real frame, a replayed real frame, a frame sealed by another
/// identity, and a frame of an older (deposed) engine session. An authenticated frame of a new
/// session does (a new engine writing to its ring members).
#[test]
fn only_an_authenticated_frame_of_the_newest_session_moves_the_node() {
    let mut r = Rig::new(2);
    r.engine(addr(1)).up = true;
    r.shell.start(r.now);
    r.run(Duration::from_secs(1));
    assert_eq!(r.engine(addr(1)).hellos, 1);
    let rejected = r.shell.stats().rejected;
    let stranger: SocketAddr = "198.51.100.9:1984".parse().unwrap();

    // A real frame from the engine, captured.
    let now = r.now;
    r.engine(addr(1)).command(now);
    let node = r.node.clone();
    let real = r.engine(addr(1)).transmit(&node, now);
    assert_eq!(real.len(), 1);
    // Garbage, then the frame tampered with, from the stranger's address.
    r.shell.handle_datagram(&[0x55; 120], stranger, r.now);
    let mut tampered = real[0].clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 1;
    r.shell.handle_datagram(&tampered, stranger, r.now);
    // A frame sealed by another identity under the CMA's... own name it cannot take: another
    // node's reliable frame.
    let mut other = Sealer::new(Identity::generate(&mut rand::rngs::OsRng), 5);
    other.add_peer(r.node.node_id(), r.node.public_key());
    let mut forged = Vec::new();
    let frame = {
        let mut c = Connection::new(RelConfig::default(), 5, 5);
        c.send(Message::new(Body::PeerSet(Default::default())).to_bytes(), r.now).unwrap();
        c.poll_transmit(r.now).unwrap()
    };
    other.seal(r.node.node_id(), DatagramKind::Reliable, true, &frame, &mut forged).unwrap();
    r.shell.handle_datagram(&forged, stranger, r.now);
    // A heartbeat sealed by that stranger.
    let mut hb = Vec::new();
    let d = Direct { body: Some(DirectBody::Heartbeat(msg::Heartbeat::default())) }.to_bytes();
    other.seal(r.node.node_id(), DatagramKind::Direct, false, &d, &mut hb).unwrap();
    r.shell.handle_datagram(&hb, stranger, r.now);
    // The real frame, from its own address, then replayed from the stranger's.
    r.shell.handle_datagram(&real[0], addr(1), r.now);
    r.shell.handle_datagram(&real[0], stranger, r.now);
    assert_eq!(r.current(), addr(1));
    assert_eq!(r.shell.stats().rejected - rejected, 5, "all five refused");

    // A new engine (a larger session) at the second address writes: it is current now.
    let now = r.now;
    r.engine(addr(2)).up = true;
    r.engine(addr(2)).command(now);
    r.run(Duration::from_secs(1));
    assert_eq!(r.current(), addr(2));
    assert_eq!(r.engine(addr(2)).hellos, 1, "registered again with the new engine");
    assert_eq!(r.shell.stats().cma_failovers, 0, "followed, not failed over");
    // The deposed engine (older session) wakes and writes: the sealer refuses its stale
    // session, and nothing moves.
    let rejected = r.shell.stats().rejected;
    let now = r.now;
    r.engine(addr(1)).command(now);
    r.run(Duration::from_secs(1));
    assert_eq!(r.current(), addr(2));
    assert!(r.shell.stats().rejected > rejected, "the old session's frames are refused");
    // And silence at the second address moves to the first, as the list says.
    r.engine(addr(2)).up = false;
    r.report();
    r.run(FAILOVER_AFTER + Duration::from_millis(500));
    assert_eq!(r.current(), addr(1));
    assert_eq!(r.shell.stats().cma_failovers, 1);
}

/// The embedded default: one address, a CMA down for minutes: no move, the reliable layer's
/// retransmissions go on at its own pace.
#[test]
fn one_address_never_fails_over() {
    let mut r = Rig::new(1);
    r.shell.start(r.now);
    r.report();
    r.run(Duration::from_secs(300));
    assert_eq!(r.current(), addr(1));
    assert_eq!(r.shell.stats().cma_failovers, 0);
    assert_eq!(r.shell.cma_addrs().poll_timeout(), None);
    r.engine(addr(1)).up = true;
    r.run(Duration::from_secs(15));
    assert_eq!(r.engine(addr(1)).seen, 1, "delivered once the CMA is back");
}

#[test]
fn a_list_that_is_not_valid_is_refused() {
    let spool = Spool::open(MemStorage::new(1), 1 << 20, crate::limits::MAX_MESSAGE).unwrap();
    let now = Instant::now();
    let cfg = ShellConfig {
        node_id: assim_wire::NodeId([1; 16]),
        cma_id: assim_wire::NodeId([2; 16]),
        cma_addr: addr(1),
        session: 1,
        seed: 1,
        hello: msg::Hello::default(),
        reliable: RelConfig::default(),
        discovery_defaults: false,
        wall_clock: WallClock::new(now, 0),
    };
    let shell = Shell::new(cfg, spool, None, now);
    let e = shell.with_cma_addrs(vec![addr(1), addr(2), addr(1)]).unwrap_err();
    assert_eq!(e, crate::cma_addrs::CmaAddrsError::Duplicate(addr(1)));
}

/// Without a sealer (the simulator's path, which checks no sessions before the connection): a
/// frame of the CMA's newest session makes its source current, one of an older session (a
/// deposed engine) moves nothing.
#[test]
fn unsealed_a_frame_of_an_older_cma_session_moves_nothing() {
    let now = Instant::now();
    let cfg = ShellConfig {
        node_id: assim_wire::NodeId([1; 16]),
        cma_id: assim_wire::NodeId([2; 16]),
        cma_addr: addr(1),
        session: 1,
        seed: 1,
        hello: msg::Hello::default(),
        reliable: RelConfig::default(),
        discovery_defaults: false,
        wall_clock: WallClock::new(now, 0),
    };
    let spool = Spool::open(MemStorage::new(1), 1 << 20, crate::limits::MAX_MESSAGE).unwrap();
    let mut shell =
        Shell::new(cfg, spool, None, now).with_cma_addrs(vec![addr(1), addr(2)]).unwrap();
    shell.start(now);
    let frame_of = |session: u64| {
        let mut c = Connection::new(RelConfig::default(), session, session);
        c.send(Message::new(Body::PeerSet(Default::default())).to_bytes(), now).unwrap();
        c.poll_transmit(now).unwrap()
    };
    shell.handle_cma_frame(&frame_of(200), addr(2), now);
    assert_eq!(shell.cma().1, addr(2));
    shell.handle_cma_frame(&frame_of(100), addr(1), now);
    assert_eq!(shell.cma().1, addr(2), "a deposed engine's frame moves nothing");
    assert_eq!(shell.connection().stats().stale_frames, 1);
    shell.handle_cma_frame(&frame_of(300), addr(1), now);
    assert_eq!(shell.cma().1, addr(1), "a newer engine's does");
    assert_eq!(shell.stats().cma_failovers, 0);
}

// ------------------------------------------------------------------------------------------
// Packet readers (issue 14, docs/cluster.md "Sessions"): one identity, a session per reader,
// an address per reader, an inbox behind them all.

/// X (newer session) → Y (older) → X, each move after a silence with records in flight: the
/// older reader's frames are taken after the move (a restart: hello, everything resent), and
/// every record the spool held reaches the inbox (duplicates allowed, none lost).
#[test]
fn a_node_fails_over_between_readers_of_any_session_and_loses_nothing() {
    let (mut r, inbox) = Rig::readers(&[200, 100]);
    r.shell.start(r.now);
    r.run(Duration::from_secs(1));
    assert_eq!((r.engine(addr(1)).hellos, r.engine(addr(2)).hellos), (1, 0));
    let mut sent = 0;
    for _ in 0..3 {
        r.report();
        sent += 1;
        r.run(Duration::from_secs(1));
    }
    assert_eq!(r.shell.spool().unacked(), 0);

    // X dies with records in flight: the node moves to Y, whose session is older.
    r.engine(addr(1)).up = false;
    for _ in 0..4 {
        r.report();
        sent += 1;
    }
    r.run(FAILOVER_AFTER + Duration::from_secs(1));
    assert_eq!(r.current(), addr(2));
    assert_eq!(r.engine(addr(2)).hellos, 1, "a hello to the older reader");
    assert_eq!(r.shell.connection().peer_session(), Some(100));
    assert_eq!(r.shell.spool().unacked(), 0, "Y acknowledged what X never did");
    r.report();
    sent += 1;
    r.run(Duration::from_secs(1));
    assert_eq!(r.shell.spool().unacked(), 0);

    // Y dies, X is back (same session): the node moves back with records in flight.
    r.engine(addr(2)).up = false;
    r.engine(addr(1)).up = true;
    for _ in 0..2 {
        r.report();
        sent += 1;
    }
    r.run(FAILOVER_AFTER + Duration::from_secs(1));
    assert_eq!(r.current(), addr(1));
    assert_eq!(r.engine(addr(1)).hellos, 2, "a hello after each move");
    assert_eq!(r.shell.connection().peer_session(), Some(200));
    assert_eq!(r.shell.spool().unacked(), 0);
    assert_eq!(r.shell.stats().cma_failovers, 2);
    assert_eq!(r.shell.stats().rehellos, 2);
    let inbox = inbox.borrow();
    assert_eq!(inbox.applied, sent, "every record applied in order");
    for rec in 1..=sent {
        assert!(inbox.delivered.contains(&rec), "record {rec} lost");
    }
    assert!(inbox.delivered.iter().all(|rec| (1..=sent).contains(rec)));
}

/// While the node talks to one reader, CMA probes from every reader (older and newer
/// sessions) are answered to their source, and move nothing.
#[test]
fn probes_from_every_reader_are_answered() {
    let (mut r, _) = Rig::readers(&[200, 100, 300]);
    r.shell.start(r.now);
    r.run(Duration::from_secs(1));
    assert_eq!(r.current(), addr(1));
    let node = r.node.clone();
    for round in 0..3u64 {
        for (i, a) in [addr(1), addr(2), addr(3)].into_iter().enumerate() {
            let nonce = round * 10 + i as u64;
            let p = r.engine(a).probe(&node, nonce);
            r.shell.handle_datagram(&p, a, r.now);
        }
        r.run(Duration::from_millis(100));
    }
    for (i, a) in [addr(1), addr(2), addr(3)].into_iter().enumerate() {
        let want: Vec<u64> = (0..3).map(|round| round * 10 + i as u64).collect();
        assert_eq!(r.engine(a).probe_replies, want, "{a}");
    }
    assert_eq!(r.current(), addr(1));
    assert_eq!(r.shell.connection().peer_session(), Some(200));
    assert_eq!(r.shell.stats().rejected, 0);
    assert_eq!(r.shell.stats().rehellos, 0);
    let sessions = r.shell.sealer().unwrap().peer_sessions(r.cma.node_id()).unwrap();
    assert_eq!(sessions, [Some(200), Some(100), Some(300), None], "a window per reader");
}

/// A datagram captured from reader X and replayed, from X's address, from Y's or from an
/// unlisted one, is refused (a reliable frame and a probe alike); so is one of a session X
/// gave up when it restarted. Frames of the reader the node left (an older session) do not
/// move it back nor disturb its connection.
#[test]
fn replays_are_refused_and_the_reader_left_behind_cannot_pull_back() {
    let (mut r, _) = Rig::readers(&[100, 200]);
    let stranger: SocketAddr = "198.51.100.9:1984".parse().unwrap();
    r.shell.start(r.now);
    r.run(Duration::from_secs(1));
    let node = r.node.clone();
    // Captured from X: a command frame and a probe, each delivered once.
    let now = r.now;
    r.engine(addr(1)).command(now);
    let frame = r.engine(addr(1)).transmit(&node, now).remove(0);
    let probe = r.engine(addr(1)).probe(&node, 7);
    let y_probe = r.engine(addr(2)).probe(&node, 8);
    r.shell.handle_datagram(&frame, addr(1), r.now);
    r.shell.handle_datagram(&probe, addr(1), r.now);
    r.shell.handle_datagram(&y_probe, addr(2), r.now);
    r.run(Duration::from_millis(100));
    assert_eq!(r.engine(addr(1)).probe_replies, [7]);
    assert_eq!(r.engine(addr(2)).probe_replies, [8]);
    let rejected = r.shell.stats().rejected;
    let replays = r.shell.sealer().unwrap().rejects().get("replayed");
    for from in [addr(1), addr(2), stranger] {
        r.shell.handle_datagram(&frame, from, r.now);
        r.shell.handle_datagram(&probe, from, r.now);
        r.shell.handle_datagram(&y_probe, from, r.now);
    }
    r.run(Duration::from_millis(100));
    assert_eq!(r.shell.stats().rejected - rejected, 9, "all nine refused");
    assert_eq!(r.shell.sealer().unwrap().rejects().get("replayed") - replays, 9);
    assert_eq!(r.engine(addr(1)).probe_replies, [7], "no second answer");
    assert_eq!(r.engine(addr(2)).probe_replies, [8]);
    assert_eq!(r.current(), addr(1));

    // X restarts at its address (newer session): a datagram of its old session that never
    // reached the node (withheld by an attacker) is refused, from any address.
    let withheld = r.engine(addr(1)).probe(&node, 9);
    let cma = r.cma.clone();
    r.engines[0] = Engine::new(&cma, &node, addr(1), 150);
    r.engines[0].up = true;
    let now = r.now;
    r.engine(addr(1)).command(now);
    r.run(Duration::from_secs(1));
    assert_eq!(r.engine(addr(1)).hellos, 1, "the restarted reader got a hello");
    assert_eq!(r.shell.connection().peer_session(), Some(150));
    let stale = r.shell.sealer().unwrap().rejects().get("stale_session");
    for from in [addr(1), addr(2), stranger] {
        r.shell.handle_datagram(&withheld, from, r.now);
    }
    assert_eq!(r.shell.sealer().unwrap().rejects().get("stale_session") - stale, 3);

    // X falls silent: the node moves to Y (newer). X wakes and writes (its retransmissions,
    // a command): older than Y's session, so nothing moves and the connection is undisturbed.
    r.engine(addr(1)).up = false;
    r.report();
    r.run(FAILOVER_AFTER + Duration::from_secs(1));
    assert_eq!(r.current(), addr(2));
    assert_eq!(r.shell.connection().peer_session(), Some(200));
    let (rehellos, rejected) = (r.shell.stats().rehellos, r.shell.stats().rejected);
    let stale_frames = r.shell.connection().stats().stale_frames;
    let now = r.now;
    r.engine(addr(1)).up = true;
    r.engine(addr(1)).command(now);
    r.run(Duration::from_secs(5));
    assert_eq!(r.current(), addr(2));
    assert_eq!(r.shell.connection().peer_session(), Some(200));
    assert_eq!(r.shell.stats().rehellos, rehellos, "no hello to the reader left behind");
    assert!(r.shell.stats().rejected > rejected, "its frames are refused");
    assert!(r.shell.connection().stats().stale_frames > stale_frames);
    assert_eq!(r.shell.stats().cma_failovers, 1);
    r.report();
    r.run(Duration::from_secs(1));
    assert_eq!(r.shell.spool().unacked(), 0, "Y still serves the node");
}

/// While a move waits for the new reader's first frame (which may be of any session), a frame
/// of a reader left earlier, from its own address, is not that frame: X (100) → Y (200) → Z
/// (300, not yet answering); X's late command is stale and moves nothing; Z's answer is taken.
#[test]
fn a_reader_left_behind_does_not_take_the_place_of_the_next() {
    let (mut r, inbox) = Rig::readers(&[100, 200, 300]);
    r.shell.start(r.now);
    r.run(Duration::from_secs(1));
    r.engine(addr(1)).up = false;
    r.report();
    r.run(FAILOVER_AFTER + Duration::from_secs(1));
    assert_eq!((r.current(), r.shell.connection().peer_session()), (addr(2), Some(200)));
    r.engine(addr(2)).up = false;
    r.engine(addr(3)).up = false;
    r.report();
    r.run(FAILOVER_AFTER + Duration::from_millis(100));
    assert_eq!(r.current(), addr(3), "moved; Z has not answered yet");
    let rejected = r.shell.stats().rejected;
    let now = r.now;
    r.engine(addr(1)).up = true;
    r.engine(addr(1)).command(now);
    r.run(Duration::from_millis(500));
    assert_eq!(r.current(), addr(3), "X's frame is not the one the move waits for");
    assert_eq!(r.shell.connection().peer_session(), Some(200));
    assert!(r.shell.stats().rejected > rejected);
    assert_eq!(r.engine(addr(1)).hellos, 1, "no hello to X again");
    r.engine(addr(3)).up = true;
    r.run(Duration::from_secs(1));
    assert_eq!((r.current(), r.shell.connection().peer_session()), (addr(3), Some(300)));
    assert_eq!(r.engine(addr(3)).hellos, 1);
    assert_eq!(r.shell.spool().unacked(), 0);
    assert_eq!(inbox.borrow().applied, 2);
}
