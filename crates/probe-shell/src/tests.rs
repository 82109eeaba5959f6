//! The shell against a fake CMA in virtual time (the quinn `Pair` pattern): the CMA side is a
//! real reliable connection with the inbox's next-record rule and `Ack { through }`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_log::MemStorage;
use assim_reliable::{Config as RelConfig, Connection, Event as RelEvent};
use assim_wire::NodeId;
use assim_wire::msg::{self, Body, Message};

use crate::{Event, LEAVE_WAIT, NotSpooled, Shell, ShellConfig, Spool, Transmit, WallClock};

/// The nanoprobe's wall clock at the test's start, µs.
const WALL0: u64 = 1_700_000_000_000_000;

const NODE: NodeId = NodeId([1; 16]);
const CMA: NodeId = NodeId([2; 16]);

fn cma_addr() -> SocketAddr {
    "127.0.0.1:1984".parse().unwrap()
}

#[derive(Debug)]
struct FakeCma {
    conn: Connection,
    generation: u64,
    /// The inbox's high-water mark (survives CMA restarts, as the durable inbox does).
    seen: u64,
    applied: Vec<Message>,
    hellos: usize,
    goodbyes: usize,
    up: bool,
    ack: bool,
    /// The spool incarnation of the latest hello (the CMA's next-record rule restarts at a new
    /// one, issue 16 item 9), and every hello's.
    incarnation: u64,
    hello_incarnations: Vec<u64>,
}

impl FakeCma {
    fn new() -> FakeCma {
        FakeCma {
            conn: Connection::new(RelConfig::default(), 1000, 7),
            generation: 1,
            seen: 0,
            applied: Vec::new(),
            hellos: 0,
            goodbyes: 0,
            up: true,
            ack: true,
            incarnation: 0,
            hello_incarnations: Vec::new(),
        }
    }

    fn restart(&mut self) {
        self.generation += 1;
        self.conn = Connection::new(RelConfig::default(), 1000 + self.generation, 7);
        self.up = true;
    }

    fn receive(&mut self, frame: &[u8], now: Instant) {
        let _ = self.conn.handle_frame(frame, now);
        let mut spooled = false;
        while let Some(ev) = self.conn.poll_event() {
            let RelEvent::Delivered(bytes) = ev else { continue };
            let m = Message::from_bytes(&bytes).unwrap();
            if m.record == 0 {
                match &m.body {
                    Some(Body::Hello(h)) => {
                        self.hellos += 1;
                        self.hello_incarnations.push(h.spool_incarnation);
                        if h.spool_incarnation != self.incarnation {
                            if self.incarnation != 0 {
                                self.seen = 0;
                            }
                            self.incarnation = h.spool_incarnation;
                        }
                    }
                    Some(Body::Goodbye(_)) => self.goodbyes += 1,
                    _ => {}
                }
                self.applied.push(m);
                continue;
            }
            spooled = true;
            if m.record == self.seen + 1 {
                self.seen = m.record;
                self.applied.push(m);
            }
        }
        if spooled && self.ack {
            let ack = msg::Ack { through: self.seen, incarnation: self.incarnation };
            let ack = Message::new(Body::Ack(ack)).to_bytes();
            self.conn.send(ack, now).unwrap();
        }
    }

    fn records(&self) -> Vec<(u64, &'static str)> {
        self.applied
            .iter()
            .filter(|m| m.record > 0)
            .map(|m| (m.record, m.body.as_ref().map_or("none", Body::name)))
            .collect()
    }
}

#[derive(Debug)]
struct Pair {
    shell: Shell<MemStorage>,
    storage: MemStorage,
    cma: FakeCma,
    now: Instant,
    events: Vec<Event>,
    incarnation: u64,
    /// Frames the nanoprobe sent to the CMA.
    frames_to_cma: usize,
}

fn shell(storage: &MemStorage, incarnation: u64, now: Instant) -> Shell<MemStorage> {
    shell_with(storage, incarnation, now, 64 << 20)
}

fn shell_with(
    storage: &MemStorage,
    incarnation: u64,
    now: Instant,
    spool_bytes: u64,
) -> Shell<MemStorage> {
    let cfg = ShellConfig {
        node_id: NODE,
        cma_id: CMA,
        cma_addr: cma_addr(),
        session: incarnation,
        seed: incarnation,
        hello: msg::Hello { hostname: "n1".into(), ..Default::default() },
        reliable: RelConfig::default(),
        discovery_defaults: false,
        wall_clock: WallClock::new(now, WALL0),
    };
    let spool = Spool::open(storage.clone(), spool_bytes, crate::limits::MAX_MESSAGE).unwrap();
    let mut s = Shell::new(cfg, spool, None, now);
    s.start(now);
    s
}

impl Pair {
    fn new() -> Pair {
        let storage = MemStorage::new(1);
        let now = Instant::now();
        let shell = shell(&storage, 1, now);
        Pair {
            shell,
            storage,
            cma: FakeCma::new(),
            now,
            events: Vec::new(),
            incarnation: 1,
            frames_to_cma: 0,
        }
    }

    /// The nanoprobe process restarts (kill -9: the page cache survives).
    fn restart_node(&mut self) {
        self.incarnation += 1;
        self.shell = shell(&self.storage, self.incarnation, self.now);
    }

    /// Exchanges everything queued, with no loss and no delay.
    fn exchange(&mut self) {
        for _ in 0..1000 {
            let mut progressed = false;
            while let Some(e) = self.shell.poll_event() {
                self.events.push(e);
            }
            while let Some(t) = self.shell.poll_transmit(self.now) {
                progressed = true;
                if matches!(t, Transmit::Cma { .. }) {
                    self.frames_to_cma += 1;
                }
                if let Transmit::Cma { frame, .. } = t
                    && self.cma.up
                {
                    self.cma.receive(&frame, self.now);
                }
            }
            if self.cma.up {
                while let Some(frame) = self.cma.conn.poll_transmit(self.now) {
                    progressed = true;
                    self.shell.handle_cma_frame(&frame, cma_addr(), self.now);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("livelock");
    }

    /// Runs virtual time forward by `d`, jumping from deadline to deadline.
    fn run(&mut self, d: Duration) {
        self.run_with(d, |_, _| {});
    }

    /// [`Pair::run`], calling `before` ahead of each of the shell's timer turns (as the daemon
    /// reads the host figures before its turn).
    fn run_with(&mut self, d: Duration, mut before: impl FnMut(&mut Shell<MemStorage>, Instant)) {
        let end = self.now + d;
        self.exchange();
        for _ in 0..100_000 {
            let next = [
                self.shell.poll_timeout(),
                self.cma.up.then(|| self.cma.conn.poll_timeout()).flatten(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    before(&mut self.shell, self.now);
                    self.shell.handle_timeout(self.now);
                    if self.cma.up {
                        self.cma.conn.handle_timeout(self.now);
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

    fn report(&mut self, n: u32) -> Option<u64> {
        let body = Body::HeartbeatReport(msg::HeartbeatReport {
            peer: NodeId([9; 16]).0.to_vec(),
            kind: msg::ReportKind::Dead as i32,
            silent_ms: n.into(),
            ..Default::default()
        });
        self.shell.send_spooled(body, self.now)
    }
}

#[test]
fn hello_on_start() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    assert_eq!(p.cma.hellos, 1);
    assert!(p.events.iter().any(|e| matches!(e, Event::HelloSent { restart: false, .. })));
}

#[test]
fn ack_deletes_spooled_records() {
    let mut p = Pair::new();
    for i in 0..3 {
        assert_eq!(p.report(i), Some(u64::from(i) + 1));
    }
    p.run(Duration::from_secs(1));
    assert_eq!(p.cma.records().len(), 3);
    assert_eq!(p.shell.spool().stats().acked_through, 3);
    assert_eq!(p.shell.spool().unacked(), 0);
    let log = p.shell.spool().log().unwrap();
    assert!(log.read_from(log.first_lsn()).unwrap().next().is_none(), "acked records removed");
}

#[test]
fn spool_resent_after_restart() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    p.cma.up = false; // the CMA is down: nothing is acknowledged
    for i in 0..3 {
        p.report(i);
    }
    p.run(Duration::from_secs(2));
    assert_eq!(p.shell.spool().unacked(), 3);
    p.restart_node();
    p.cma.restart();
    p.run(Duration::from_secs(2));
    assert_eq!(p.cma.records().iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(p.shell.spool().unacked(), 0);
    // Numbers go on where the spool left off.
    assert_eq!(p.report(9), Some(4));
}

#[test]
fn cma_restart_sends_hello_again_and_resends() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    p.cma.ack = false;
    p.report(1);
    p.run(Duration::from_secs(1));
    assert_eq!(p.cma.records().len(), 1);
    p.cma.restart();
    p.cma.ack = true;
    // Anything from the CMA's new session reveals the restart; a peer set, say.
    let set = msg::PeerSet { epoch: 1, ..Default::default() };
    p.cma.conn.send(Message::new(Body::PeerSet(set)).to_bytes(), p.now).unwrap();
    p.run(Duration::from_secs(1));
    assert_eq!(p.cma.hellos, 2, "a hello to the restarted CMA");
    assert_eq!(p.shell.stats().rehellos, 1);
    assert_eq!(p.shell.spool().unacked(), 0, "the record was resent and acknowledged");
}

#[test]
fn goodbye_acknowledged_then_left() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    p.shell.leave(p.now);
    p.run(Duration::from_secs(1));
    assert_eq!(p.cma.goodbyes, 1);
    assert!(p.events.contains(&Event::Left));
    assert!(!p.events.contains(&Event::LeaveTimedOut));
}

#[test]
fn goodbye_times_out_when_the_cma_is_down() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    p.cma.up = false;
    p.shell.leave(p.now);
    p.run(LEAVE_WAIT + Duration::from_secs(1));
    assert!(p.events.contains(&Event::LeaveTimedOut));
    assert!(!p.events.contains(&Event::Left));
}

/// Issue 16 item 2: a discovery result between the reliable layer's limit (2 MiB) and the
/// spool's old one (4 MiB) was spooled, could never be sent, and blocked every later record.
#[test]
fn item2_oversized_record_does_not_wedge_the_spool() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    let big = Body::DiscoveryResult(msg::DiscoveryResult {
        name: "sockets".into(),
        payload: vec![b'x'; 3 << 20],
        ..Default::default()
    });
    assert_eq!(p.shell.send_spooled(big, p.now), Some(1));
    p.report(1);
    p.run(Duration::from_secs(2));
    assert_eq!(p.cma.records(), [(1, "discovery_result"), (2, "heartbeat_report")]);
    let Some(Body::DiscoveryResult(d)) =
        &p.cma.applied.iter().find(|m| m.record == 1).unwrap().body
    else {
        unreachable!()
    };
    let v: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
    assert!(v["error"].as_str().unwrap().contains("exceeds"), "{v}");
    assert_eq!(p.shell.stats().oversized, 1);
    assert_eq!(p.shell.spool().unacked(), 0);
}

/// Issue 16 item 8: one failed fsync poisoned the spool until the nanoprobe restarted; every
/// later record then went out without disk protection.
#[test]
fn item8_spool_fsync_failure_reopens_the_spool() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    p.storage.fail_next_syncs(1);
    assert_eq!(p.report(1), Some(1));
    p.run(Duration::from_secs(3));
    assert_eq!(p.shell.spool().stats().reopened, 1);
    assert_eq!(p.report(2), Some(2), "the spool takes records again");
    p.run(Duration::from_secs(1));
    assert_eq!(p.cma.records().iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(p.shell.spool().stats().unspooled, 0);
    assert_eq!(p.shell.spool().unacked(), 0);
    // And what was acknowledged is durable: a power loss keeps the position.
    p.storage.crash(false);
    p.restart_node();
    assert_eq!(p.shell.spool().stats().acked_through, 2);
}

/// Issue 16 item 9: the spool's incarnation is kept with its segments, made anew when they are
/// gone, and survives crashes.
#[test]
fn item_9_spool_incarnation_lives_and_dies_with_the_spool() {
    use assim_log::Storage as _;
    let open = |s: &MemStorage, seed| {
        Spool::open_seeded(s.clone(), 64 << 20, crate::limits::MAX_MESSAGE, seed).unwrap()
    };
    let a = MemStorage::new(1);
    let first = open(&a, 1).incarnation();
    assert_ne!(first, 0);
    a.crash(false);
    assert_eq!(open(&a, 2).incarnation(), first, "a restart keeps the incarnation");
    // Another (lost, new) spool gets another one.
    let b = MemStorage::new(1);
    assert_ne!(open(&b, 3).incarnation(), first);
    // Segments gone, incarnation file left: a new incarnation (numbers restart at 1).
    let mut c = a.clone();
    for name in c.list().unwrap().into_iter().filter(|n| n.ends_with(".seg")) {
        c.remove(&name).unwrap();
    }
    let again = open(&c, 8);
    assert_eq!(again.next_record(), 1);
    assert_ne!(again.incarnation(), first);
    // A spool from before incarnations gets one, and keeps it.
    let d = MemStorage::new(4);
    let mut sp = open(&d, 4);
    sp.append(Message::new(Body::Statistics(msg::Statistics::default()))).unwrap();
    sp.commit(Instant::now());
    drop(sp);
    let mut dd = d.clone();
    dd.remove("incarnation").unwrap();
    let adopted = open(&d, 5).incarnation();
    assert_eq!(open(&d, 6).incarnation(), adopted);
    assert_eq!(open(&d, 7).next_record(), 2, "the old records keep their numbers");
}

/// Issue 16 item 9: the hello carries the spool's incarnation, and an acknowledgement counted
/// in another incarnation (the CMA's reliable layer resends old acks to a restarted node)
/// deletes nothing.
#[test]
fn item_9_acks_of_another_spool_incarnation_delete_nothing() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    let inc = p.shell.spool().incarnation();
    assert_eq!(p.cma.hello_incarnations, [inc]);
    p.cma.ack = false;
    for i in 0..3 {
        p.report(i);
    }
    p.run(Duration::from_secs(1));
    assert_eq!(p.shell.spool().unacked(), 3);
    let send_ack = |p: &mut Pair, incarnation| {
        let ack = Message::new(Body::Ack(msg::Ack { through: 3, incarnation })).to_bytes();
        p.cma.conn.send(ack, p.now).unwrap();
        p.exchange();
    };
    send_ack(&mut p, inc ^ 1);
    assert_eq!(p.shell.spool().unacked(), 3, "an ack of another incarnation deleted records");
    send_ack(&mut p, inc);
    assert_eq!(p.shell.spool().unacked(), 0);
    // A CMA without the field (0) is believed, as before.
    p.report(4);
    p.run(Duration::from_secs(1));
    let ack = Message::new(Body::Ack(msg::Ack { through: 4, incarnation: 0 })).to_bytes();
    p.cma.conn.send(ack, p.now).unwrap();
    p.exchange();
    assert_eq!(p.shell.spool().unacked(), 0);
}

/// Issue 16 item 9: a nanoprobe that loses its spool (a new disk, a wiped directory) numbers
/// its records from 1 again; a CMA that applies the next-record rule per incarnation takes them.
#[test]
fn item_9_a_lost_spool_starts_a_new_incarnation_the_cma_takes() {
    let mut p = Pair::new();
    for i in 0..5 {
        p.report(i);
    }
    p.run(Duration::from_secs(1));
    assert_eq!(p.cma.seen, 5);
    let old = p.shell.spool().incarnation();
    // The node restarts on an empty spool.
    p.storage = MemStorage::new(9);
    p.restart_node();
    assert_ne!(p.shell.spool().incarnation(), old);
    p.report(10);
    p.report(11);
    p.run(Duration::from_secs(1));
    let records: Vec<u64> = p.cma.records().iter().map(|r| r.0).collect();
    assert_eq!(records, [1, 2, 3, 4, 5, 1, 2], "the new spool's records did not arrive");
    assert_eq!(p.shell.spool().unacked(), 0);

    // The spool directory vanishes under the running nanoprobe: the reopen after the failed
    // write finds it empty, makes a new incarnation and says hello before record 1.
    let mut st = p.storage.clone();
    {
        use assim_log::Storage as _;
        for name in st.list().unwrap() {
            st.remove(&name).unwrap();
        }
    }
    let before = p.shell.spool().incarnation();
    p.report(20);
    p.run(Duration::from_secs(3));
    let now_inc = p.shell.spool().incarnation();
    assert_ne!(now_inc, before);
    assert_eq!(p.cma.hello_incarnations.last(), Some(&now_inc));
    let records: Vec<u64> = p.cma.records().iter().map(|r| r.0).collect();
    assert_eq!(records, [1, 2, 3, 4, 5, 1, 2, 1], "the record of the reopened spool was lost");
    assert_eq!(p.shell.spool().unacked(), 0);
}

fn peer_report(peer: u8, n: u64) -> Body {
    Body::HeartbeatReport(msg::HeartbeatReport {
        peer: NodeId([peer; 16]).0.to_vec(),
        kind: msg::ReportKind::Dead as i32,
        silent_ms: n,
        ..Default::default()
    })
}

fn check_change(name: &str, n: u64) -> Body {
    Body::CheckStateChange(msg::CheckStateChange {
        check: name.into(),
        state: (n % 3) as i32,
        output: format!("output {n}"),
        at: WALL0 + n,
        ..Default::default()
    })
}

fn event(n: u64) -> Body {
    Body::LocalEvent(msg::LocalEvent { text: format!("event {n}"), ..Default::default() })
}

/// Issue 16 item 10: with the spool full (and the CMA away, so the reliable queue fills too),
/// reports used to be sent without the spool and dropped on `QueueFull`, and peer status was
/// dropped. Now state waits in a bounded backlog, the latest word per subject; local events are
/// refused with an error the submitter sees; once the CMA acknowledges, the backlog goes
/// through the spool and the latest word on every subject arrives.
#[test]
fn item_10_a_full_spool_coalesces_state_and_refuses_events() {
    let storage = MemStorage::new(1);
    let now = Instant::now();
    let mut p = Pair {
        shell: shell_with(&storage, 1, now, 4096),
        storage,
        cma: FakeCma::new(),
        now,
        events: Vec::new(),
        incarnation: 1,
        frames_to_cma: 0,
    };
    p.run(Duration::from_secs(1));
    p.cma.up = false;
    let mut refused_events = 0;
    let mut last_event_ok = 0;
    for n in 1..=3000u64 {
        let t = p.now;
        let body = match n % 5 {
            0 | 1 => peer_report((n % 3) as u8 + 10, n),
            2 => Body::PeerStatus(msg::PeerStatus { epoch: n, ..Default::default() }),
            3 => check_change(if n % 2 == 0 { "disk" } else { "http" }, n),
            _ => event(n),
        };
        match p.shell.submit_spooled(body, t) {
            Ok(_) if n % 5 == 4 => last_event_ok = n,
            Err(NotSpooled::Refused(why)) => {
                assert_eq!(n % 5, 4, "state refused: {why}");
                assert!(why.contains("full"), "{why}");
                refused_events += 1;
            }
            Err(NotSpooled::Unspooled | NotSpooled::Empty) => panic!("sent without the spool"),
            _ => {}
        }
        if n % 100 == 0 {
            p.run(Duration::from_millis(200));
        }
    }
    let st = *p.shell.spool().stats();
    assert!(refused_events > 0 && st.refused == refused_events, "{st:?}");
    assert!(st.coalesced > 1000, "{st:?}");
    assert_eq!((st.unspooled, st.dropped), (0, 0), "{st:?}");
    // One entry per subject: 3 peers, the status, 2 checks.
    let (len, bytes) = p.shell.backlog();
    assert!(len <= 6 && bytes < 4096, "backlog {len} entries, {bytes} bytes");

    // The CMA comes back: everything still held arrives, the latest word on every subject.
    p.cma.restart();
    p.run(Duration::from_secs(30));
    assert_eq!(p.shell.backlog().0, 0, "the backlog was not drained");
    assert_eq!(p.shell.spool().unacked(), 0);
    let got = |p: &Pair, f: &dyn Fn(&Body) -> Option<u64>| -> Vec<u64> {
        p.cma.applied.iter().filter_map(|m| m.body.as_ref().and_then(f)).collect()
    };
    for peer in 10..13u8 {
        let last = (1..=3000u64).filter(|n| n % 5 <= 1 && (n % 3) as u8 + 10 == peer).max();
        let seen = got(&p, &|b| match b {
            Body::HeartbeatReport(r) if r.peer == vec![peer; 16] => Some(r.silent_ms),
            _ => None,
        });
        assert_eq!(seen.last().copied(), last, "peer {peer}: the latest report did not arrive");
    }
    let statuses = got(&p, &|b| match b {
        Body::PeerStatus(s) => Some(s.epoch),
        _ => None,
    });
    assert_eq!(statuses.last(), Some(&2997), "the latest peer status did not arrive");
    for check in ["disk", "http"] {
        let seen = got(&p, &|b| match b {
            Body::CheckStateChange(c) if c.check == check => Some(c.at - WALL0),
            _ => None,
        });
        let last = (1..=3000u64).filter(|n| n % 5 == 3 && (n % 2 == 0) == (check == "disk")).max();
        assert_eq!(seen.last().copied(), last, "check {check}: the latest state did not arrive");
    }
    // Every event either arrived or was refused to its submitter.
    let events = got(&p, &|b| match b {
        Body::LocalEvent(_) => Some(0),
        _ => None,
    });
    assert_eq!(events.len() as u64 + refused_events, 600);
    assert!(last_event_ok > 0);
}

#[test]
fn run_now_of_an_unknown_check_is_answered_at_once() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    let r = msg::RunNow { command_id: 5, check: "nope".into() };
    p.cma.conn.send(Message::new(Body::RunNow(r)).to_bytes(), p.now).unwrap();
    p.run(Duration::from_secs(1));
    let answer = p.cma.applied.iter().find_map(|m| match &m.body {
        Some(Body::CommandResult(c)) => Some(c.clone()),
        _ => None,
    });
    let answer = answer.expect("a command result");
    assert!(!answer.ok && answer.command_id == 5 && answer.error.contains("no check"));
}

/// The cost of the seal step the simulator skips (`cargo test -p assim-probe-shell --release
/// seal_cost -- --ignored --nocapture`): one heartbeat sealed and opened.
#[test]
#[ignore = "a measurement, not a test"]
fn seal_cost() {
    use assim_seal::{Identity, Sealer};
    use assim_wire::DatagramKind;
    use assim_wire::msg::{Direct, DirectBody};
    let mut rng = rand::rngs::OsRng;
    let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let (mut sa, mut sb) = (Sealer::new(a.clone(), 1), Sealer::new(b.clone(), 2));
    let t = Instant::now();
    sa.add_peer(b.node_id(), b.public_key());
    sb.add_peer(a.node_id(), a.public_key());
    let setup = t.elapsed() / 2;
    let hb = Direct { body: Some(DirectBody::Heartbeat(msg::Heartbeat::default())) }.to_bytes();
    let n = 100_000u32;
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        out.clear();
        sa.seal(b.node_id(), DatagramKind::Direct, false, &hb, &mut out).unwrap();
        sb.open(&out).unwrap();
    }
    let per = t.elapsed() / n;
    println!("seal+open of a heartbeat: {per:?}; adding a peer (X25519): {setup:?}");
}

/// Issue 12 item 6: heartbeat reports and peer status carry the reporter's own time, so the
/// CMA can order evidence that waited in the spool through an outage.
#[test]
fn reports_and_peer_status_are_stamped_with_the_reporters_time() {
    let mut p = Pair::new();
    let start = p.now;
    p.run(Duration::from_secs(5));
    let at = WALL0 + (p.now - start).as_micros() as u64;
    p.report(1);
    let stamped =
        msg::HeartbeatReport { at: 42, kind: msg::ReportKind::Late as i32, ..Default::default() };
    p.shell.send_spooled(Body::HeartbeatReport(stamped), p.now);
    p.shell
        .send_spooled(Body::PeerStatus(msg::PeerStatus { epoch: 1, ..Default::default() }), p.now);
    p.run(Duration::from_secs(1));
    let ats: Vec<u64> = p
        .cma
        .applied
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::HeartbeatReport(r)) => Some(r.at),
            Some(Body::PeerStatus(s)) => Some(s.at),
            _ => None,
        })
        .collect();
    assert_eq!(ats, [at, 42, at], "unstamped ones get the wall clock, stamped ones keep theirs");
    // The driver moves the clock (e.g. after an NTP step): later reports follow it.
    p.shell.set_wall_clock(p.now, 5_000_000);
    p.report(2);
    p.run(Duration::from_secs(1));
    let Some(Body::HeartbeatReport(r)) = &p.cma.applied.last().unwrap().body else {
        unreachable!()
    };
    assert_eq!(r.at, 5_000_000);
}

/// A shell without heartbeats (`assim loadgen`'s senders) ignores peer sets, so its spool
/// holds only what its driver sends; a normal shell applies them and spools peer status.
#[test]
fn a_shell_without_heartbeats_spools_only_what_it_is_given() {
    let peer_set = || {
        Message::new(Body::PeerSet(msg::PeerSet {
            epoch: 1,
            peers: vec![msg::Peer {
                node_id: vec![9; 16],
                addr: "127.0.0.1:2000".into(),
                public_key: vec![7; 32],
            }],
            interval_ms: 1000,
            warn_ms: 3000,
            dead_ms: 5000,
        }))
        .to_bytes()
    };
    let spooled_kinds = |p: &Pair| -> Vec<&'static str> {
        p.events
            .iter()
            .filter_map(|e| match e {
                Event::Spooled { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect()
    };
    let mut normal = Pair::new();
    normal.cma.conn.send(peer_set(), normal.now).unwrap();
    normal.run(Duration::from_secs(10));
    assert!(spooled_kinds(&normal).contains(&"peer_status"), "{:?}", normal.events);

    let mut mute = Pair::new();
    let now = mute.now;
    mute.shell = shell(&mute.storage, 2, now).without_heartbeats();
    mute.cma.conn.send(peer_set(), mute.now).unwrap();
    mute.run(Duration::from_secs(10));
    assert!(spooled_kinds(&mute).is_empty(), "{:?}", mute.events);
    assert!(mute.events.contains(&Event::Ignored { kind: "peer_set" }));
    assert_eq!(mute.shell.heartbeats().stats().heartbeats_sent, 0);
}

/// Issue 19 item 3: a `raid` result that turns degraded spools one `raid.degraded` local event
/// next to the discovery result; the same result again spools nothing; healthy again spools
/// one `raid.recovered`.
#[test]
fn raid_results_raise_spooled_host_events() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    let raid = |mdstat: &str| {
        let r = assim_discovery::raid::Raid {
            md_available: true,
            arrays: assim_discovery::raid::parse_mdstat(mdstat),
        };
        Ok(assim_discovery::Discovery::from_value("raid", serde_json::to_value(r).unwrap()))
    };
    let ok = "md0 : active raid1 loop1[1] loop0[0]\n  1 blocks [2/2] [UU]\n";
    let failed = "md0 : active raid1 loop1[1](F) loop0[0]\n  1 blocks [2/1] [U_]\n";
    for mdstat in [ok, ok, failed, failed, ok] {
        p.shell.collector_done("raid", raid(mdstat), p.now);
        p.run(Duration::from_millis(100));
    }
    let events: Vec<(String, String)> = p
        .cma
        .applied
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::LocalEvent(e)) => Some((e.event_type.clone(), e.severity.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [("raid.degraded".into(), "critical".into()), ("raid.recovered".into(), "notice".into())]
    );
    let results = p
        .cma
        .applied
        .iter()
        .filter(|m| matches!(&m.body, Some(Body::DiscoveryResult(d)) if d.name == "raid"))
        .count();
    assert_eq!(results, 3, "only changed results are sent");
}

/// The `app:NAME` check reports the CMA applied: (check, state, output).
fn app_reports(cma: &FakeCma) -> Vec<(String, i32, String)> {
    cma.applied
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::CheckStateChange(c)) if c.check.starts_with("app:") => {
                Some((c.check.clone(), c.state, c.output.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The `local_apps` results the CMA applied, as (name, TTL s) lists.
fn app_lists(cma: &FakeCma) -> Vec<Vec<(String, f64)>> {
    cma.applied
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::DiscoveryResult(d)) if d.name == crate::apps::APPS_RESULT => {
                let v: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
                Some(
                    v["apps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| {
                            (a["name"].as_str().unwrap().to_owned(), a["ttl_s"].as_f64().unwrap())
                        })
                        .collect(),
                )
            }
            _ => None,
        })
        .collect()
}

#[test]
fn issue_17_item_6_a_beating_program_costs_no_traffic_and_a_silent_one_one_report() {
    use msg::CheckState;
    let mut p = Pair::new();
    let t0 = p.now;
    p.run(Duration::from_secs(2));
    let (ttl, interval) = (Duration::from_secs(3), Duration::from_secs(1));
    // The registration is news: the CMA hears the list once (for the Nagios/Icinga exports).
    p.shell.app_heartbeat("backup", ttl, p.now).unwrap();
    p.run(interval);
    assert_eq!(app_lists(&p.cma), [vec![("backup".to_owned(), 3.0)]]);
    let settled = p.frames_to_cma;
    // Beats every second for an hour of virtual time: not one frame to the CMA.
    for _ in 0..3600 {
        p.shell.app_heartbeat("backup", ttl, p.now).unwrap();
        p.run(interval);
    }
    assert_eq!(p.frames_to_cma, settled, "frames sent while the program beat");
    assert!(app_reports(&p.cma).is_empty());
    // It stops: exactly one CRITICAL, at the last beat + TTL (within TTL + one interval).
    let last_beat = p.now - interval;
    p.run(ttl + interval);
    assert_eq!(
        app_reports(&p.cma),
        vec![(
            "app:backup".into(),
            CheckState::Critical as i32,
            "backup sent no heartbeat within its TTL of 3 s (`assim app heartbeat`)".into()
        )]
    );
    let at = p.cma.applied.iter().rev().find_map(|m| match &m.body {
        Some(Body::CheckStateChange(c)) => Some(c.at),
        _ => None,
    });
    // Reported at the deadline itself (the nanoprobe's clock, stamped when spooled).
    assert_eq!(at, Some(WALL0 + (last_beat + ttl - t0).as_micros() as u64));
    // Silence goes on: still one.
    p.run(Duration::from_secs(600));
    assert_eq!(app_reports(&p.cma).len(), 1);
    // Beating again: one OK.
    p.shell.app_heartbeat("backup", ttl, p.now).unwrap();
    p.run(interval);
    let r = app_reports(&p.cma);
    assert_eq!(r.len(), 2);
    assert_eq!((r[1].1, r[1].2.as_str()), (CheckState::Ok as i32, "backup is beating again"));
    // Neither the miss nor the recovery changed the list: it was not sent again.
    assert_eq!(app_lists(&p.cma).len(), 1);
    // A clean `done` while healthy: no report, no alarm afterwards; the list, now empty.
    p.shell.app_done("backup", p.now).unwrap();
    p.run(Duration::from_secs(60));
    assert_eq!(app_reports(&p.cma).len(), 2);
    assert_eq!(app_lists(&p.cma).last(), Some(&vec![]));
    // `done` after a miss clears the alarm with an OK.
    p.shell.app_heartbeat("cron", ttl, p.now).unwrap();
    p.run(ttl + interval);
    p.shell.app_done("cron", p.now).unwrap();
    p.run(interval);
    let r = app_reports(&p.cma);
    assert_eq!(r.len(), 4);
    assert_eq!((r[2].0.as_str(), r[2].1), ("app:cron", CheckState::Critical as i32));
    assert_eq!((r[3].0.as_str(), r[3].1), ("app:cron", CheckState::Ok as i32));
    assert!(p.shell.apps().is_empty());
}

#[test]
fn issue_17_item_6_the_report_comes_at_the_deadline_through_the_spool() {
    let mut p = Pair::new();
    let t0 = p.now;
    p.run(Duration::from_secs(1));
    let ttl = Duration::from_secs(2);
    p.shell.app_heartbeat("job", ttl, p.now).unwrap();
    let deadline = p.now + ttl;
    assert_eq!(p.shell.poll_timeout().map(|t| t <= deadline), Some(true));
    // The registration's list reaches the CMA.
    p.run(Duration::from_millis(500));
    assert_eq!(p.shell.spool().unacked(), 0);
    // The CMA is away when the miss happens: the report waits in the spool.
    p.cma.up = false;
    p.run(ttl + Duration::from_millis(500));
    assert!(app_reports(&p.cma).is_empty());
    assert_eq!(p.shell.spool().unacked(), 1);
    p.cma.up = true;
    p.run(crate::RESEND_AFTER + Duration::from_secs(1));
    assert_eq!(app_reports(&p.cma).len(), 1);
    // Stamped with the nanoprobe's time of the miss, not of delivery.
    let at = p
        .cma
        .applied
        .iter()
        .find_map(|m| match &m.body {
            Some(Body::CheckStateChange(c)) => Some(c.at),
            _ => None,
        })
        .unwrap();
    assert_eq!(at, WALL0 + (deadline - t0).as_micros() as u64);
}

#[test]
fn issue_17_item_6_registrations_survive_a_restart_and_a_dead_program_still_alarms() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    let ttl = Duration::from_secs(5);
    p.shell.app_heartbeat("backup", ttl, p.now).unwrap();
    p.shell.app_heartbeat("web", ttl, p.now).unwrap();
    assert!(p.shell.take_local_changed());
    assert!(!p.shell.take_local_changed());
    let saved = p.shell.apps().registrations();
    // The nanoprobe restarts; "backup" died meanwhile, "web" keeps beating.
    p.run(Duration::from_secs(2));
    p.restart_node();
    p.shell.restore_apps(saved, p.now);
    for _ in 0..10 {
        p.shell.app_heartbeat("web", ttl, p.now).unwrap();
        p.run(Duration::from_secs(1));
    }
    let r = app_reports(&p.cma);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0, "app:backup");
    // The list went at each registration and once after the restart (a new run tells it
    // again); beats and the miss sent none.
    let backup = ("backup".to_owned(), 5.0);
    let both = vec![backup.clone(), ("web".to_owned(), 5.0)];
    assert_eq!(app_lists(&p.cma), [vec![backup], both.clone(), both]);
}

fn nagios_check(name: &str, interval_s: u64) -> assim_checks::Check {
    let spec = msg::CheckSpec {
        name: name.into(),
        kind: "nagios".into(),
        argv: vec!["/usr/lib/nagios/plugins/check_dummy".into(), "0".into()],
        interval_s,
        timeout_s: 1,
        ..Default::default()
    };
    assim_checks::Check::try_from(&spec).unwrap()
}

/// The `local_checks` results the CMA applied, as check-name lists.
fn local_check_lists(cma: &FakeCma) -> Vec<Vec<String>> {
    cma.applied
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::DiscoveryResult(d)) if d.name == crate::LOCAL_CHECKS_RESULT => {
                let v: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
                Some(
                    v["checks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c["name"].as_str().unwrap().to_owned())
                        .collect(),
                )
            }
            _ => None,
        })
        .collect()
}

#[test]
fn issue_17_item_6_local_checks_run_beside_the_cmas_set_and_the_cma_hears_the_list() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    // Only `local:` names are accepted here (the driver names them).
    assert!(p.shell.declare_local_check(nagios_check("raid", 10), p.now).is_err());
    p.shell.declare_local_check(nagios_check("local:raid", 10), p.now).unwrap();
    assert!(p.shell.take_local_changed());
    // The same declaration again changes nothing and sends nothing.
    p.shell.declare_local_check(nagios_check("local:raid", 10), p.now).unwrap();
    assert!(!p.shell.take_local_changed());
    // A CMA check set comes afterwards: the local check stays.
    let set = msg::CheckSet {
        epoch: 5,
        checks: vec![msg::CheckSpec {
            name: "load".into(),
            kind: "nagios".into(),
            argv: vec!["check_load".into()],
            interval_s: 10,
            timeout_s: 1,
            ..Default::default()
        }],
    };
    p.cma.conn.send(Message::new(Body::CheckSet(set)).to_bytes(), p.now).unwrap();
    p.run(Duration::from_secs(11));
    assert_eq!(p.shell.check_epoch(), 5);
    let ran: std::collections::BTreeSet<String> = p
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RunCheck(c) => Some(c.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ran.into_iter().collect::<Vec<_>>(), ["load", "local:raid"]);
    assert_eq!(local_check_lists(&p.cma), vec![vec!["local:raid".to_owned()]]);
    // Removed: the CMA hears the empty list; the CMA's set is untouched.
    assert!(p.shell.remove_local_check("local:raid", p.now));
    assert!(!p.shell.remove_local_check("local:raid", p.now));
    p.run(Duration::from_secs(1));
    assert_eq!(local_check_lists(&p.cma).last(), Some(&Vec::new()));
    assert_eq!(p.shell.local_checks().count(), 0);
    // Bounded.
    for i in 0..crate::MAX_LOCAL_CHECKS {
        p.shell.declare_local_check(nagios_check(&format!("local:c{i}"), 60), p.now).unwrap();
    }
    let e = p.shell.declare_local_check(nagios_check("local:one-more", 60), p.now).unwrap_err();
    assert!(e.contains("already"), "{e}");
}

#[test]
fn issue_17_item_5_statistics_go_as_one_spooled_batch_per_interval_and_nothing_when_off() {
    use crate::stats::{Kind, Sample};
    let sample = |name: &str, kind, value| Sample {
        name: name.into(),
        tags: Default::default(),
        kind,
        value,
    };
    let batches = |cma: &FakeCma| -> Vec<msg::Statistics> {
        cma.applied
            .iter()
            .filter_map(|m| match &m.body {
                Some(Body::Statistics(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    let mut p = Pair::new();
    let t0 = p.now;
    // Off by default: refused, and an hour later nothing was sent.
    assert!(p.shell.stat_put(sample("x", Kind::Gauge, 1.0)).is_err());
    p.run(Duration::from_secs(3600));
    assert!(batches(&p.cma).is_empty());
    // On, with a 60 s interval: 3 intervals with puts, one without.
    p.shell.set_statistics(true, Duration::from_secs(60), p.now);
    let on = p.now;
    for minute in 0..4u32 {
        if minute != 2 {
            for _ in 0..5 {
                p.shell.stat_put(sample("jobs", Kind::Counter, 2.0)).unwrap();
                p.shell.stat_put(sample("depth", Kind::Gauge, f64::from(minute))).unwrap();
            }
        }
        p.run(Duration::from_secs(60));
    }
    let b = batches(&p.cma);
    assert_eq!(b.len(), 3, "{b:?}");
    for s in &b {
        assert_eq!(s.interval_s, 60);
        assert_eq!(s.series.len(), 2);
        // Counters first, then gauges.
        assert_eq!((s.series[0].name.as_str(), s.series[0].value), ("jobs", 10.0));
        assert_eq!(s.series[1].name, "depth");
    }
    // Stamped with the end of each interval in the nanoprobe's clock.
    let end = |k: u64| WALL0 + (on - t0).as_micros() as u64 + k * 60_000_000;
    assert_eq!(b.iter().map(|s| s.at).collect::<Vec<_>>(), [end(1), end(2), end(4)]);
    // Spooled: a batch made while the CMA is away arrives after it is back.
    p.cma.up = false;
    p.shell.stat_put(sample("during.outage", Kind::Gauge, 7.0)).unwrap();
    p.run(Duration::from_secs(61));
    assert_eq!(batches(&p.cma).len(), 3);
    p.cma.up = true;
    p.run(crate::RESEND_AFTER + Duration::from_secs(1));
    let b = batches(&p.cma);
    assert_eq!(b.len(), 4);
    assert_eq!(b[3].series[0].name, "during.outage");
}

/// Issue 13: the CMA asks this nanoprobe to probe a node on another switch; it probes, and
/// sends the CMA one `ProbeResult` per request (answered, or not after its timeout).
#[test]
fn a_probe_request_is_probed_and_answered_with_one_result() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(1));
    let target = NodeId([9; 16]);
    let req = |id: u64| msg::ProbeRequest {
        command_id: id,
        target: target.as_bytes().to_vec(),
        addr: "192.0.2.9:1984".into(),
        public_key: vec![3; 32],
        timeout_ms: 600,
    };
    for id in [41, 42] {
        p.cma.conn.send(Message::new(Body::ProbeRequest(req(id))).to_bytes(), p.now).unwrap();
    }
    // Deliver the requests by hand, keeping the probes the shell sends.
    let mut probes = Vec::new();
    for _ in 0..10 {
        while let Some(frame) = p.cma.conn.poll_transmit(p.now) {
            p.shell.handle_cma_frame(&frame, cma_addr(), p.now);
        }
        while let Some(t) = p.shell.poll_transmit(p.now) {
            match t {
                Transmit::PeerProbe { to, addr, probe } => probes.push((to, addr, probe)),
                Transmit::Cma { frame, .. } => p.cma.receive(&frame, p.now),
                _ => {}
            }
        }
    }
    assert_eq!(probes.len(), 2, "{probes:?}");
    assert!(probes.iter().all(|(to, addr, _)| *to == target && addr.port() == 1984));
    // The target answers the first request's probe only; a reply from another node is no
    // answer.
    let first = probes[0].2.clone();
    p.shell.handle_peer_probe_reply(NodeId([8; 16]), first.clone(), p.now);
    p.shell.handle_peer_probe_reply(target, first, p.now + Duration::from_millis(3));
    p.run(Duration::from_secs(2));
    let results: Vec<&msg::ProbeResult> = p
        .cma
        .applied
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::ProbeResult(r)) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    let by_id = |id| results.iter().find(|r| r.command_id == id).unwrap();
    assert!(by_id(41).answered);
    assert!(!by_id(42).answered);
    assert_eq!(by_id(42).attempts, 3);
    assert!(
        p.cma
            .applied
            .iter()
            .all(|m| m.record == 0 || !matches!(m.body, Some(Body::ProbeResult(_)))),
        "results are not spooled"
    );
    assert_eq!(p.shell.peer_probe_stats().replies_unmatched, 1);
}

/// Issue 13, sealed: a probe from a node this nanoprobe holds no key for (a prober on another
/// switch) is opened as a first contact and answered, sealed to the prober; anything else from
/// such a node is refused and its key not kept.
#[test]
fn a_sealed_probe_from_an_unknown_prober_is_answered_and_nothing_else_is() {
    use assim_seal::{Identity, Sealer};
    use assim_wire::DatagramKind;
    use assim_wire::msg::{Direct, DirectBody};
    let mut rng = rand::rngs::OsRng;
    let (target, prober) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let now = Instant::now();
    let cfg = ShellConfig {
        node_id: target.node_id(),
        cma_id: CMA,
        cma_addr: cma_addr(),
        session: 1,
        seed: 1,
        hello: msg::Hello::default(),
        reliable: RelConfig::default(),
        discovery_defaults: false,
        wall_clock: WallClock::new(now, WALL0),
    };
    let spool = Spool::open(MemStorage::new(1), 1 << 20, crate::limits::MAX_MESSAGE).unwrap();
    let mut shell = Shell::new(cfg, spool, Some(Sealer::new(target.clone(), 1)), now);
    let mut sp = Sealer::new(prober.clone(), 7);
    sp.add_peer(target.node_id(), target.public_key());
    let src: SocketAddr = "192.0.2.8:1984".parse().unwrap();
    let seal = |sp: &mut Sealer, body: DirectBody| {
        let mut out = Vec::new();
        let plain = Direct { body: Some(body) }.to_bytes();
        sp.seal(target.node_id(), DatagramKind::Direct, true, &plain, &mut out).unwrap();
        out
    };
    // A heartbeat from the stranger: refused, its key not kept.
    let hb = seal(&mut sp, DirectBody::Heartbeat(msg::Heartbeat::default()));
    shell.handle_datagram(&hb, src, now);
    assert_eq!(shell.stats().rejected, 1);
    assert!(shell.sealer().unwrap().peer_key(prober.node_id()).is_none());
    // Its probe: answered, sealed to it.
    let probe = seal(&mut sp, DirectBody::Probe(msg::Probe { nonce: 77 }));
    shell.handle_datagram(&probe, src, now);
    let mut replies = Vec::new();
    while let Some(d) = shell.poll_datagram(now) {
        if d.to == prober.node_id() {
            replies.push(d);
        }
    }
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].addr, src);
    let opened = sp.open(&replies[0].bytes).unwrap();
    let reply = Direct::from_bytes(&opened.plaintext).unwrap();
    assert_eq!(reply.body, Some(DirectBody::ProbeReply(msg::Probe { nonce: 77 })));
    // A replayed probe is refused by the replay window.
    shell.handle_datagram(&probe, src, now);
    assert_eq!(shell.stats().rejected, 2);
}

#[test]
fn issue_17_item_5_check_perfdata_and_host_figures_go_in_the_batch_by_config() {
    use crate::stat_sources::{FsUsage, HostFigures, Memory};
    let result = |perfdata: &str| assim_checks::CheckResult {
        state: msg::CheckState::Ok,
        output: "OK".into(),
        long_output: String::new(),
        perfdata: perfdata.into(),
        duration: Duration::from_millis(5),
        exit_code: Some(0),
        truncated: false,
        timed_out: false,
    };
    let figures = HostFigures {
        load: Some([0.25, 0.5, 0.75]),
        memory: Some(Memory { total_bytes: 8 << 30, available_bytes: 3 << 30 }),
        root_fs: FsUsage::from_statvfs(4096, 1000, 500, 400),
    };
    let batches = |cma: &FakeCma| -> Vec<msg::Statistics> {
        cma.applied
            .iter()
            .filter_map(|m| match &m.body {
                Some(Body::Statistics(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    // Runs one interval in which the check reports twice, offering the host figures when the
    // shell says they are due; returns the batch's series (name, unit tag, value).
    let interval = |p: &mut Pair, offered: &mut u32| -> Vec<(String, String, f64)> {
        let before = batches(&p.cma).len();
        p.shell.check_done("local:web", &result("time=0.5s;1;2 'used space'=40% x=U junk"), p.now);
        p.run(Duration::from_secs(20));
        p.shell.check_done("local:web", &result("time=0.25s;1;2 'used space'=41% x=U"), p.now);
        p.run_with(Duration::from_secs(40), |shell, now| {
            if shell.host_figures_due(now) {
                *offered += 1;
                shell.put_host_figures(&figures);
            }
        });
        let b = batches(&p.cma);
        assert_eq!(b.len(), before + 1, "one batch per interval: {b:?}");
        let last = b.last().unwrap();
        last.series
            .iter()
            .map(|s| {
                let unit = s.tags.iter().find(|t| t.key == "unit").map(|t| t.value.clone());
                (s.name.clone(), unit.unwrap_or_default(), s.value)
            })
            .collect()
    };
    let mut p = Pair::new();
    p.shell.declare_local_check(nagios_check("local:web", 60), p.now).unwrap();
    // Sources on but statistics off: nothing is made, nothing sent.
    p.shell.set_statistics_sources(true, true);
    p.shell.check_done("local:web", &result("time=0.5s"), p.now);
    assert!(!p.shell.host_figures_due(p.now + Duration::from_secs(3600)));
    p.run(Duration::from_secs(120));
    assert!(batches(&p.cma).is_empty());

    // Statistics on, sources off: a program's value goes, no check or host series.
    p.shell.set_statistics(true, Duration::from_secs(60), p.now);
    p.shell.set_statistics_sources(false, false);
    let mut offered = 0;
    p.shell
        .stat_put(crate::stats::Sample {
            name: "app.value".into(),
            tags: Default::default(),
            kind: crate::stats::Kind::Gauge,
            value: 1.0,
        })
        .unwrap();
    let s = interval(&mut p, &mut offered);
    assert_eq!(s, [("app.value".to_owned(), String::new(), 1.0)]);
    assert_eq!(offered, 0);

    // Both on: the last perfdata of the interval and the host figures, once each.
    p.shell.set_statistics_sources(true, true);
    let s = interval(&mut p, &mut offered);
    assert_eq!(offered, 1);
    let want: Vec<(String, String, f64)> = [
        ("check.local_web.time", "s", 0.25),
        ("check.local_web.used_space", "percent", 41.0),
        ("host.fs.root.available_bytes", "", 400.0 * 4096.0),
        ("host.fs.root.free_bytes", "", 500.0 * 4096.0),
        ("host.fs.root.size_bytes", "", 1000.0 * 4096.0),
        ("host.load.1", "", 0.25),
        ("host.load.15", "", 0.75),
        ("host.load.5", "", 0.5),
        ("host.memory.available_bytes", "", (3u64 << 30) as f64),
        ("host.memory.total_bytes", "", (8u64 << 30) as f64),
    ]
    .into_iter()
    .map(|(n, u, v)| (n.to_owned(), u.to_owned(), v))
    .collect();
    let mut got = s.clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    let d = *p.shell.statistics_dropped();
    assert_eq!((d.undetermined, d.malformed), (2, 1), "{d:?}");
}
