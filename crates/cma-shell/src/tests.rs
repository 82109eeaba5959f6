//! Virtual-time tests of the shell against real sealed nanoprobe connections: an in-memory
//! harness that delivers datagrams both ways and jumps time to the next deadline, with a bounded
//! step count.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use assim_cma::{CmaConfig, NodeState, Timing};
use assim_log::{LogConfig, MemStorage};
use assim_reliable::Connection;
use assim_seal::{Identity, JoinToken, Sealer};
use assim_wire::msg::{self, Body, Direct, DirectBody, Message};
use assim_wire::{DatagramKind, NodeId, Timestamp};

use super::*;
use assim_store::{InboxError, RecordId, TokenRecord};

const EPOCH: u64 = 1_767_225_600_000_000;

type TestShell = Shell<Sealer, TestInbox, MemStore>;

/// The local inbox, plus what a shared inbox (JetStream, issue 14) adds: records another writer
/// put in it, which [`Inbox::appended_elsewhere`] reports when the shell asks it to look.
#[derive(Debug)]
struct TestInbox {
    log: LogInbox<MemStorage>,
    elsewhere: Option<u64>,
}

impl TestInbox {
    /// Another writer appends `record` (made durable) and the inbox notices.
    fn append_elsewhere(&mut self, record: &[u8]) -> u64 {
        let at = self.log.append(record, None).unwrap();
        self.log.sync().unwrap();
        self.elsewhere.get_or_insert(at);
        at
    }
}

impl Inbox for TestInbox {
    fn append(&mut self, record: &[u8], id: Option<RecordId>) -> Result<u64, InboxError> {
        self.log.append(record, id)
    }
    fn sync(&mut self) -> Result<(), InboxError> {
        self.log.sync()
    }
    fn read_from(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, InboxError> {
        self.log.read_from(from)
    }
    fn remove_through(&mut self, position: u64) -> Result<(), InboxError> {
        self.log.remove_through(position)
    }
    fn appended_elsewhere(&mut self, look: bool) -> Option<u64> {
        if look { self.elsewhere.take() } else { None }
    }
}

fn ident(n: u8) -> Identity {
    let mut id = [0u8; 16];
    id[0] = n;
    id[6] = 0x70;
    id[8] = 0x80;
    id[15] = n;
    Identity::from_parts(NodeId(id), [n.wrapping_mul(7).wrapping_add(1); 32])
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(10, 0, 0, n).into(), 1984)
}

/// A nanoprobe's side: its sealer and reliable connection to the CMA.
struct Probe {
    id: Identity,
    sealer: Sealer,
    conn: Connection,
    addr: SocketAddr,
    cma: NodeId,
    /// Messages the CMA sent, in order.
    received: Vec<Message>,
    /// CMA probes answered.
    probes_answered: u64,
}

impl Probe {
    fn new(n: u8, cma: &Identity, session: u64) -> Probe {
        let id = ident(n);
        let mut sealer = Sealer::new(id.clone(), session);
        sealer.add_peer(cma.node_id(), cma.public_key());
        Probe {
            conn: Connection::new(assim_reliable::Config::default(), session, u64::from(n)),
            sealer,
            id,
            addr: addr(n),
            cma: cma.node_id(),
            received: Vec::new(),
            probes_answered: 0,
        }
    }

    fn hello(&self, token: Option<&JoinToken>) -> Body {
        Body::Hello(msg::Hello {
            version: "test".into(),
            hostname: format!("host{}", self.id.node_id().0[15]),
            listen_addr: self.addr.to_string(),
            addresses: vec![],
            started_at: EPOCH,
            token_proof: token.map(|t| t.proof(self.id.node_id(), &self.id.public_key())),
            peer_epoch: 0,
            spool_incarnation: 0,
            acked_through: 0,
        })
    }

    /// A hello announcing spool incarnation `inc` (issue 16 item 9).
    fn hello_inc(&self, inc: u64) -> Body {
        let Body::Hello(mut h) = self.hello(None) else { unreachable!() };
        h.spool_incarnation = inc;
        Body::Hello(h)
    }

    /// The acknowledgements as (through, incarnation).
    fn acks_inc(&self) -> Vec<(u64, u64)> {
        self.received
            .iter()
            .filter_map(|m| match &m.body {
                Some(Body::Ack(a)) => Some((a.through, a.incarnation)),
                _ => None,
            })
            .collect()
    }

    fn send(&mut self, record: u64, body: Body, now: Instant) {
        self.conn.send(Message { record, body: Some(body) }.to_bytes(), now).unwrap();
    }

    fn datagrams(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = self.conn.poll_transmit(now) {
            let mut d = Vec::new();
            self.sealer.seal(self.cma, DatagramKind::Reliable, true, &frame, &mut d).unwrap();
            out.push(d);
        }
        out
    }

    fn receive(&mut self, datagram: &[u8], now: Instant) {
        let Ok(o) = self.sealer.open(datagram) else { return };
        if o.header.kind == DatagramKind::Reliable {
            let _ = self.conn.handle_frame(&o.plaintext, now);
            while let Some(ev) = self.conn.poll_event() {
                if let assim_reliable::Event::Delivered(b) = ev {
                    self.received.push(Message::from_bytes(&b).unwrap());
                }
            }
        }
    }

    fn acks(&self) -> Vec<u64> {
        self.received
            .iter()
            .filter_map(|m| match &m.body {
                Some(Body::Ack(a)) => Some(a.through),
                _ => None,
            })
            .collect()
    }
}

struct World {
    base: Instant,
    t: u64,
    cma: Identity,
    storage: MemStorage,
    shell: Option<TestShell>,
    probes: Vec<Probe>,
    notes: Vec<Note>,
}

fn config(open: bool, commit_interval: Duration) -> ShellConfig {
    let mut c =
        ShellConfig::new(CmaConfig { timing: Timing::default(), ..CmaConfig::default() }, 7);
    c.open_enrollment = open;
    c.commit_interval = commit_interval;
    c
}

impl World {
    fn new(open: bool, store: MemStore) -> World {
        World::with(config(open, Duration::ZERO), store)
    }

    fn with(cfg: ShellConfig, store: MemStore) -> World {
        let storage = MemStorage::new(1);
        let mut w = World {
            base: Instant::now(),
            t: 0,
            cma: ident(200),
            storage,
            shell: None,
            probes: Vec::new(),
            notes: Vec::new(),
        };
        w.start(cfg, store, 1);
        w
    }

    fn now(&self) -> Now {
        Now { mono: self.base + Duration::from_micros(self.t), wall: Timestamp(EPOCH + self.t) }
    }

    fn start(&mut self, cfg: ShellConfig, store: MemStore, session: u64) {
        let mut sealer = Sealer::new(self.cma.clone(), session);
        sealer.set_accept_unknown(true);
        let storage = self.storage.clone();
        let log = LogInbox::open(move || Ok(storage.clone()), LogConfig::default()).unwrap();
        let inbox = TestInbox { log, elsewhere: None };
        let shell = Shell::start(cfg, sealer, inbox, store, self.now()).unwrap();
        self.shell = Some(shell);
        self.pump();
    }

    fn shell(&mut self) -> &mut TestShell {
        self.shell.as_mut().unwrap()
    }

    fn add_probe(&mut self, n: u8) -> usize {
        let p = Probe::new(n, &self.cma, 1);
        self.probes.push(p);
        self.probes.len() - 1
    }

    /// Delivers every queued datagram both ways until quiet (bounded).
    fn pump(&mut self) {
        for _ in 0..100 {
            let now = self.now();
            let mut moved = false;
            for i in 0..self.probes.len() {
                let (src, ds) = (self.probes[i].addr, self.probes[i].datagrams(now.mono));
                for d in ds {
                    moved = true;
                    self.shell().handle_datagram(now, src, &d);
                }
            }
            self.shell().flush(now);
            while let Some(n) = self.shell().poll_note() {
                self.notes.push(n);
            }
            while let Some(t) = self.shell().poll_transmit() {
                moved = true;
                if let Some(p) = self.probes.iter_mut().find(|p| p.addr == t.to) {
                    p.receive(&t.datagram, now.mono);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence after 100 rounds");
    }

    /// Jumps to the next deadline of anyone, `steps` times at most, stopping at `until`.
    fn run_until(&mut self, until: u64) {
        for _ in 0..10_000 {
            let base = self.base;
            let of = |i: Instant| i.saturating_duration_since(base).as_micros() as u64;
            let mut next = self.shell().poll_timeout().map(of);
            for p in &self.probes {
                if let Some(d) = p.conn.poll_timeout().map(of) {
                    next = Some(next.map_or(d, |n: u64| n.min(d)));
                }
            }
            let Some(next) = next.filter(|&n| n <= until) else {
                self.t = until;
                return;
            };
            self.t = next.max(self.t);
            let now = self.now();
            for p in &mut self.probes {
                p.conn.handle_timeout(now.mono);
            }
            self.shell().handle_timeout(now);
            self.pump();
        }
        panic!("livelock: 10000 steps before {until}");
    }

    fn send(&mut self, i: usize, record: u64, body: Body) {
        let now = self.now().mono;
        self.probes[i].send(record, body, now);
        self.pump();
    }

    fn applied(&self, node: NodeId) -> Vec<u64> {
        applied_records(&self.notes, node)
    }

    fn crash(&mut self) -> MemStore {
        let shell = self.shell.take().unwrap();
        let (_, _, store) = shell.into_parts();
        self.storage.crash(false);
        store
    }
}

/// The spool records of `node` the notes say were applied, in order.
fn applied_records(notes: &[Note], node: NodeId) -> Vec<u64> {
    notes
        .iter()
        .filter_map(|n| match n {
            Note::Applied { node: m, record, .. } if *m == node && *record > 0 => Some(*record),
            _ => None,
        })
        .collect()
}

fn status(n: u64) -> Body {
    Body::PeerStatus(msg::PeerStatus { epoch: n, ..Default::default() })
}

#[test]
fn open_enrollment_registers_a_hello() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    assert_eq!(w.shell().core().node(id).map(|n| n.state), Some(NodeState::Up));
    // Registered nodes are stored with the batch.
    assert!(w.shell().store().nodes.contains_key(&id));
}

#[test]
fn enrolment_with_a_valid_token_is_accepted_and_counted() {
    let cma = ident(200);
    let token = JoinToken::generate(&cma, vec![], &mut rand::thread_rng());
    let mut store = MemStore::default();
    store.tokens.insert(
        token.token_id(),
        TokenRecord {
            id: token.token_id(),
            secret_hash: assim_seal::secret_hash(&token.secret),
            created_at: Timestamp(EPOCH),
            expires_at: Timestamp(EPOCH + 3_600_000_000),
            max_uses: 1,
            uses: 0,
        },
    );
    let mut w = World::new(false, store);
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(Some(&token));
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    assert!(w.shell().core().node(id).is_some());
    assert_eq!(w.shell().store().tokens[&token.token_id()].uses, 1);

    // The token is used up: a second node with it is refused and leaves nothing behind.
    let q = w.add_probe(2);
    let hello = w.probes[q].hello(Some(&token));
    w.send(q, 0, hello);
    let id2 = w.probes[q].id.node_id();
    assert!(w.shell().core().node(id2).is_none());
    assert_eq!(w.shell().seal().peer_key(id2), None);
    assert!(
        w.notes
            .iter()
            .any(|n| matches!(n, Note::Refused { node, reason: "enrollment", .. } if *node == id2))
    );
}

#[test]
fn enrolment_without_a_token_or_with_a_bad_proof_is_refused_and_forgotten() {
    let cma = ident(200);
    let token = JoinToken::generate(&cma, vec![], &mut rand::thread_rng());
    let mut w = World::new(false, MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    // A proof for a token the CMA does not hold.
    let q = w.add_probe(2);
    let hello = w.probes[q].hello(Some(&token));
    w.send(q, 0, hello);
    // Reports before any hello.
    let r = w.add_probe(3);
    w.send(r, 1, status(1));
    for i in [p, q, r] {
        let id = w.probes[i].id.node_id();
        assert!(w.shell().core().node(id).is_none());
        assert_eq!(w.shell().seal().peer_key(id), None, "an unenrolled sender's key is kept");
    }
    assert_eq!(w.shell().seal().peer_count(), 0);
    assert!(w.probes[r].acks().is_empty(), "an unregistered node's record was acknowledged");
    assert_eq!(w.shell().metrics().rejects.get("enrollment"), Some(&2));
}

#[test]
fn next_record_rule_takes_only_the_next_record() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    w.send(p, 1, status(1));
    w.send(p, 3, status(3)); // a gap: waits for the resend of 2
    w.send(p, 1, status(1)); // a duplicate: dropped, acknowledged again
    w.send(p, 2, status(2));
    w.send(p, 3, status(3));
    w.send(p, 3, status(3));
    assert_eq!(w.applied(id), vec![1, 2, 3]);
    let m = w.shell().metrics();
    assert_eq!(m.rejects.get("record_gap"), Some(&1));
    assert_eq!(m.rejects.get("duplicate_record"), Some(&2));
    // Acks never run ahead of what the inbox holds.
    assert_eq!(w.probes[p].acks(), vec![1, 1, 1, 2, 3, 3]);
}

#[test]
fn acks_only_after_the_inbox_sync_and_a_failed_sync_acknowledges_nothing() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    let syncs = w.storage.syncs();
    w.send(p, 1, status(1));
    assert!(w.storage.syncs() > syncs, "acknowledged without a sync");
    assert_eq!(w.probes[p].acks(), vec![1]);

    w.storage.fail_next_syncs(1);
    w.send(p, 2, status(2));
    assert_eq!(w.probes[p].acks(), vec![1], "acknowledged a record whose sync failed");
    assert_eq!(w.applied(id), vec![1], "applied a record whose sync failed");
    // The sender resends (its spool still holds it): now it is taken.
    w.send(p, 2, status(2));
    assert_eq!(w.probes[p].acks(), vec![1, 2]);
    assert_eq!(w.applied(id), vec![1, 2]);
    assert!(w.shell().metrics().store_errors >= 1);
}

#[test]
fn restart_replays_the_inbox_exactly_once() {
    // The store lags the inbox (a long commit interval), so a crash leaves records to replay.
    let cfg = config(true, Duration::from_secs(3600));
    let mut w = World::with(cfg.clone(), MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    for r in 1..=5 {
        w.send(p, r, status(r));
    }
    assert_eq!(w.applied(id), vec![1, 2, 3, 4, 5]);
    let store = w.crash();
    let stored = store.applied.get(&id).copied().unwrap_or(0);
    assert!(stored < 5, "the store did not lag; nothing to replay");

    w.notes.clear();
    w.t += 1_000_000;
    w.start(cfg.clone(), store, 2);
    // Exactly the records whose effects were not stored, once each, in order.
    let want: Vec<u64> = (stored + 1..=5).collect();
    assert_eq!(w.applied(id), want);
    assert_eq!(w.shell().store().applied.get(&id), Some(&5));
    assert!(w.shell().core().node(id).is_some());
    // Resends of replayed records are duplicates now.
    w.send(p, 5, status(5));
    assert_eq!(w.applied(id), want);

    // After a graceful stop (everything stored) a restart finds nothing to replay.
    let now = w.now();
    w.shell().stop(now);
    let store = w.crash();
    w.notes.clear();
    w.start(cfg, store, 3);
    assert!(w.applied(id).is_empty());
    assert_eq!(w.shell().metrics().replayed, 0);
}

#[test]
fn restart_resends_desired_peer_sets() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    w.run_until(5_000_000);
    let store = w.crash();
    w.start(config(true, Duration::ZERO), store, 2);
    assert!(w.shell().metrics().datagrams_out > 0, "no desired state sent after the start");
}

/// Issue 16, item 1: a `Direct` datagram under a fresh node id must not leave the sender in the
/// CMA's peer table (only the `Reliable` branch used to forget it).
#[test]
fn hardening_item_1_unknown_senders_do_not_grow_the_peer_table() {
    let mut w = World::new(false, MemStore::default());
    let now = w.now();
    for n in 1..=50u8 {
        let id = ident(n);
        let mut s = Sealer::new(id.clone(), 1);
        s.add_peer(w.cma.node_id(), w.cma.public_key());
        let reply = Direct { body: Some(DirectBody::ProbeReply(msg::Probe { nonce: 1 })) };
        let mut d = Vec::new();
        s.seal(w.cma.node_id(), DatagramKind::Direct, true, &reply.to_bytes(), &mut d).unwrap();
        w.shell().handle_datagram(now, addr(n), &d);
        // And one Reliable frame that is not a hello.
        let mut p = Probe::new(n, &w.cma, 1);
        p.send(1, status(1), now.mono);
        for d in p.datagrams(now.mono) {
            w.shell().handle_datagram(now, addr(n), &d);
        }
    }
    w.shell().flush(now);
    assert_eq!(w.shell().seal().peer_count(), 0, "unauthenticated senders left lasting state");

    // A node whose id was tried by someone else first can still enrol (no squatting).
    let cma = w.cma.clone();
    let mut w2 = World::new(true, MemStore::default());
    let mut squat = Sealer::new(Identity::from_parts(ident(1).node_id(), [99; 32]), 1);
    squat.add_peer(cma.node_id(), cma.public_key());
    let reply = Direct { body: Some(DirectBody::ProbeReply(msg::Probe { nonce: 1 })) };
    let mut d = Vec::new();
    squat.seal(cma.node_id(), DatagramKind::Direct, true, &reply.to_bytes(), &mut d).unwrap();
    let now = w2.now();
    w2.shell().handle_datagram(now, addr(1), &d);
    w2.shell().flush(now);
    let p = w2.add_probe(1);
    let hello = w2.probes[p].hello(None);
    w2.send(p, 0, hello);
    assert!(w2.shell().core().node(ident(1).node_id()).is_some(), "the squatted id cannot enrol");
}

/// Issue 16, item 5: a hello (no record number) whose inbox sync fails was already acknowledged
/// by the transport and is never resent; it must still register the node.
#[test]
fn hardening_item_5_a_hello_is_not_lost_when_the_inbox_fails() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    w.storage.fail_next_syncs(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    assert!(w.shell().core().node(id).is_some(), "the hello was lost with the inbox sync");
    assert!(w.shell().store().nodes.contains_key(&id), "the registration was not stored");

    // The same with a full inbox: the append itself fails.
    let q = w.add_probe(2);
    w.storage.set_capacity(Some(w.storage.used_bytes()));
    let hello = w.probes[q].hello(None);
    w.send(q, 0, hello);
    w.storage.clear_faults();
    let id = w.probes[q].id.node_id();
    assert!(w.shell().core().node(id).is_some(), "the hello was lost with the inbox append");
}

#[test]
fn a_failed_store_commit_is_retried_and_the_inbox_kept() {
    let mut w = World::new(true, MemStore::default());
    w.shell().store_mut().fail_next = 1;
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    assert_eq!(w.shell().metrics().store_errors, 1);
    assert!(w.shell().store().nodes.contains_key(&id), "the batch was not retried");
    // The inbox kept the hello until its effects were stored, then let it go.
    let store = w.crash();
    w.notes.clear();
    w.start(config(true, Duration::ZERO), store, 2);
    assert_eq!(w.shell().metrics().replayed, 0);
}

/// Issue 16 item 9: a node that lost its spool numbers its records from 1 again. The CMA used to
/// drop them all as duplicates up to the old high-water mark; a hello with a new spool
/// incarnation now restarts the next-record rule for that node, at that point of its stream,
/// across a CMA restart at the worst moment (the reset only in the inbox, not yet stored), and
/// late datagrams of the old process are not applied after the reset.
#[test]
fn item_9_a_new_spool_incarnation_restarts_the_next_record_rule() {
    // The store lags the inbox (long commit interval) so a crash leaves the reset to replay.
    let cfg = config(true, Duration::from_secs(3600));
    let mut w = World::with(cfg.clone(), MemStore::default());
    let p = w.add_probe(1);
    let id = w.probes[p].id.node_id();
    let hello = w.probes[p].hello_inc(0xa);
    w.send(p, 0, hello);
    for r in 1..=5 {
        w.send(p, r, status(r));
    }
    let now = w.now();
    w.shell().stop(now);
    assert_eq!(w.shell().store().applied.get(&id), Some(&5));
    assert_eq!(w.shell().store().incarnations.get(&id), Some(&0xa));
    assert_eq!(w.probes[p].acks_inc().last(), Some(&(5, 0xa)));

    // The nanoprobe restarts on an empty spool: a new session, a new incarnation, records
    // from 1. The old process still has a record in flight.
    let mut old = std::mem::replace(&mut w.probes[p], Probe::new(1, &w.cma, 2));
    w.notes.clear();
    let hello = w.probes[p].hello_inc(0xb);
    w.send(p, 0, hello);
    w.send(p, 1, status(101));
    w.send(p, 2, status(102));
    assert_eq!(w.applied(id), vec![1, 2], "the new spool's records were dropped");
    assert_eq!(w.probes[p].acks_inc().last(), Some(&(2, 0xb)));
    // The old process's late record 6: refused (its session is over), never applied.
    let now = w.now();
    old.send(6, status(6), now.mono);
    for d in old.datagrams(now.mono) {
        w.shell().handle_datagram(now, old.addr, &d);
    }
    w.pump();
    assert_eq!(w.applied(id), vec![1, 2]);

    // The CMA dies before the batch with the reset is stored.
    let store = w.crash();
    assert_eq!(store.incarnations.get(&id), Some(&0xa), "the store did not lag");
    assert_eq!(store.applied.get(&id), Some(&5));
    w.notes.clear();
    w.t += 1_000_000;
    w.start(cfg.clone(), store, 2);
    assert_eq!(w.applied(id), vec![1, 2], "the replay did not reset at the hello");
    // The node goes on: record 3 is the next, 2 a duplicate.
    w.send(p, 2, status(102));
    w.send(p, 3, status(103));
    assert_eq!(w.applied(id), vec![1, 2, 3]);
    let now = w.now();
    w.shell().stop(now);
    assert_eq!(w.shell().store().applied.get(&id), Some(&3));
    assert_eq!(w.shell().store().incarnations.get(&id), Some(&0xb));

    // Stored reset: a restart from it keeps counting in the new incarnation.
    let store = w.crash();
    w.notes.clear();
    w.start(cfg.clone(), store, 3);
    w.send(p, 3, status(103));
    w.send(p, 4, status(104));
    assert_eq!(w.applied(id), vec![4]);
    // A hello with the same incarnation (a CMA restart, a nanoprobe restart with its spool)
    // resets nothing, and neither does one without an incarnation (an older nanoprobe).
    for inc in [0xb, 0] {
        let hello = w.probes[p].hello_inc(inc);
        w.send(p, 0, hello);
        w.send(p, 4, status(104));
    }
    assert_eq!(w.applied(id), vec![4]);
}

/// Issue 16 item 9: a node first seen without an incarnation (an upgrade) adopts the one its
/// next hello brings without a reset: its numbers go on.
#[test]
fn item_9_an_upgraded_node_adopts_its_incarnation_without_a_reset() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let id = w.probes[p].id.node_id();
    let hello = w.probes[p].hello_inc(0);
    w.send(p, 0, hello);
    w.send(p, 1, status(1));
    w.send(p, 2, status(2));
    let hello = w.probes[p].hello_inc(0xc);
    w.send(p, 0, hello);
    w.send(p, 2, status(2));
    w.send(p, 3, status(3));
    assert_eq!(w.applied(id), vec![1, 2, 3]);
    assert_eq!(w.shell().store().incarnations.get(&id), Some(&0xc));
    assert_eq!(w.shell().store().applied.get(&id), Some(&3));
}

fn local_event(n: u64) -> Body {
    Body::LocalEvent(msg::LocalEvent {
        event_type: "app.test".into(),
        severity: "info".into(),
        text: format!("event {n}"),
        ..Default::default()
    })
}

/// Issue 16 item 15: a store that keeps failing used to keep every applied record's effects in
/// the batch (memory grew with the traffic, the inbox was never trimmed) while the CMA went on
/// acknowledging. Now it acknowledges nothing new (the nanoprobes keep their records), the
/// batch stays bounded, it says so, and it resumes by itself when the store works again.
#[test]
fn item_15_a_failing_store_stops_acknowledgement_and_keeps_memory_bounded() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let id = w.probes[p].id.node_id();
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    w.send(p, 1, local_event(1));
    assert_eq!(w.probes[p].acks(), vec![1]);
    let batches = w.shell().store().batches;

    // The store fails for good (a failing store double: every batch is refused).
    w.shell().store_mut().fail_next = u32::MAX;
    w.send(p, 2, local_event(2)); // taken before the failure is known: durable, acknowledged
    assert!(w.shell().store_unavailable().is_some(), "the failure was not noticed");
    let acks = w.probes[p].acks();
    let pending_at_start = w.shell().pending_batch();
    // A newcomer's hello (acknowledged by the transport) while the store fails.
    let q = w.add_probe(2);
    let hello = w.probes[q].hello(None);
    w.send(q, 0, hello);
    let q_id = w.probes[q].id.node_id();
    let mut pending = Vec::new();
    for r in 3..=400 {
        w.send(p, r, local_event(r));
        if r % 50 == 0 {
            w.t += 700_000; // retries and reminders come due
            let now = w.now();
            w.shell().handle_timeout(now);
            w.pump();
            pending.push(w.shell().pending_batch());
        }
    }
    assert!(
        pending.iter().all(|&n| n <= pending_at_start + 4),
        "the batch grows with the traffic while the store fails: {pending_at_start} then {pending:?}"
    );
    assert_eq!(w.probes[p].acks(), acks, "records acknowledged while the store fails");
    let st = w.shell().store_unavailable().unwrap().clone();
    assert!(st.failures >= 3, "{st:?}");
    assert!(st.refused >= 398, "{st:?}");
    assert_eq!(st.deferred, 1, "the newcomer's hello waits in the inbox");
    assert!(st.error.contains("injected"), "{st:?}");
    assert_eq!(w.shell().metrics().rejects.get("store_unavailable"), Some(&st.refused));
    assert_eq!(w.shell().store().batches, batches);

    // The store works again: the CMA resumes by itself, applies the deferred hello, and takes
    // the records the nanoprobe resends from its spool.
    w.shell().store_mut().fail_next = 0;
    w.run_until(w.t + 3_000_000);
    assert!(w.shell().store_unavailable().is_none(), "did not resume");
    assert!(w.shell().core().node(q_id).is_some(), "the deferred hello was lost");
    assert!(w.shell().store().nodes.contains_key(&q_id));
    for r in 3..=400 {
        w.send(p, r, local_event(r));
    }
    w.run_until(w.t + 10_000_000);
    assert_eq!(
        w.probes[p].acks().last(),
        Some(&400),
        "{:?} {:?}",
        w.shell().metrics().rejects,
        w.shell().store_unavailable()
    );
    assert_eq!(w.applied(id).last(), Some(&400));
    assert_eq!(w.shell().pending_batch(), 0, "the backlog was not stored");
    assert_eq!(w.shell().store().applied.get(&id), Some(&400));
}

/// Issue 16, item 3: a flood of first contacts (valid mac1: the attacker fetched the CMA's key)
/// from random identities and random loopback sources costs at most the first-contact budget in
/// X25519 operations, while a known nanoprobe's reports are still taken, in order; a key request
/// is answered with a reply no larger than itself.
#[test]
fn item_3_first_contact_flood_is_bounded_and_known_nodes_are_served() {
    use rand::{RngCore as _, SeedableRng as _};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    assert!(w.shell().core().node(id).is_some());
    let dh_before = w.shell().metrics().dh_ops;

    // The attacker's template: one valid first contact; each flood datagram rewrites the id and
    // recomputes the mac1.
    let mut attacker = Sealer::new(ident(77), 1);
    attacker.add_peer(w.cma.node_id(), w.cma.public_key());
    let mut template = Vec::new();
    let frame = b"not a real frame".to_vec();
    attacker.seal(w.cma.node_id(), DatagramKind::Reliable, true, &frame, &mut template).unwrap();
    let mac1 = assim_seal::Mac1Key::for_receiver(&w.cma.public_key());

    // 2 s of virtual time at 10,000 first contacts per second; the known probe sends a report
    // every 10 ms.
    let mut record = 0;
    for step in 0..200u64 {
        for _ in 0..100 {
            let mut d = template.clone();
            rng.fill_bytes(&mut d[8..24]);
            let n = d.len() - 16;
            let m = mac1.compute(&d[..n]);
            d[n..].copy_from_slice(&m);
            let r = rng.next_u32();
            let src = SocketAddr::new(
                Ipv4Addr::new(127, r as u8, (r >> 8) as u8, (r >> 16) as u8).into(),
                9,
            );
            let now = w.now();
            w.shell().handle_datagram(now, src, &d);
        }
        record += 1;
        w.send(p, record, status(record));
        w.t = (step + 1) * 10_000;
    }
    let m = w.shell().metrics();
    let flood_dh = m.dh_ops - dh_before;
    let l = assim_seal::Limits::FIRST_CONTACT;
    assert!(flood_dh as f64 <= l.burst + 2.0 * l.rate, "{flood_dh} DH operations");
    let refused = m.rejects.get("first_contact_budget").copied().unwrap_or(0);
    assert!(refused as f64 >= 20_000.0 - (l.burst + 2.0 * l.rate), "{:?}", m.rejects);
    assert_eq!(w.applied(id), (1..=record).collect::<Vec<_>>(), "the known node's reports");
    assert_eq!(w.shell().seal().peer_count(), 1, "the flood left peers behind");

    // A key request is answered, no larger than the request; a short (v1) one is not.
    let mut req = Vec::new();
    Sealer::new(ident(9), 1).key_request(&mut req);
    let now = w.now();
    w.shell().handle_datagram(now, addr(9), &req);
    w.shell().handle_datagram(now, addr(9), &req[..40]);
    let replies: Vec<_> = std::iter::from_fn(|| w.shell().poll_transmit()).collect();
    assert_eq!(replies.len(), 1);
    assert!(replies[0].datagram.len() <= req.len());
}

fn stat_batch(at_micros: u64, values: &[(&str, f64)]) -> Body {
    Body::Statistics(msg::Statistics {
        counters: vec![],
        series: values
            .iter()
            .map(|(n, v)| msg::StatSeries {
                name: (*n).into(),
                tags: vec![msg::Tag { key: "role".into(), value: "db".into() }],
                counter: false,
                value: *v,
            })
            .collect(),
        at: at_micros,
        interval_s: 60,
    })
}

#[test]
fn issue_17_item_5_statistics_are_queued_for_graphite_once_across_a_crash() {
    // The store lags the inbox, so the crash leaves the statistics records to replay.
    let mut cfg = config(true, Duration::from_secs(3600));
    cfg.graphite_prefix = Some("assim".into());
    let mut w = World::with(cfg.clone(), MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    let host = w.shell().core().node(id).unwrap().hostname.clone();
    let old = EPOCH - 3_600_000_000; // an hour old: spooled through an outage
    w.send(p, 1, stat_batch(old, &[("queue.depth", 17.0), ("bad..name", 1.0)]));
    w.send(p, 2, stat_batch(EPOCH + 86_400_000_000, &[("future.value", 3.0)]));
    assert!(w.notes.iter().any(|n| matches!(n, Note::Statistics(b) if b.node == id)));
    assert_eq!(w.shell().metrics().statistics_invalid, 1);
    assert_eq!(w.shell().metrics().statistics_clamped, 1);
    let store = w.crash();
    assert!(store.statistics.is_empty(), "the store lagged; nothing queued yet");
    w.t += 1_000_000;
    w.start(cfg.clone(), store, 2);
    let now = w.now();
    w.shell().stop(now);
    let store = w.crash();
    let host = assim_cma::statistics::host_segment(&host, id);
    let got: Vec<(String, f64, u64)> =
        store.statistics.iter().map(|(_, p)| (p.path.clone(), p.value, p.at_s)).collect();
    assert_eq!(
        got,
        [
            (format!("assim.{host}.queue.depth.role.db"), 17.0, old / 1_000_000),
            (format!("assim.{host}.future.value.role.db"), 3.0, (EPOCH + 1_000_000) / 1_000_000),
        ],
        "once each, the old batch with its own time, the future one clamped to the CMA's"
    );

    // Without Graphite nothing is queued.
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(2);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    w.send(p, 1, stat_batch(EPOCH, &[("x", 1.0)]));
    assert!(w.shell().store().statistics.is_empty());
    assert_eq!(w.shell().metrics().statistics_series, 1);
}

/// Issue 18: a storm of key requests is paced by the CMA. While `pace::WINDOW` registrations
/// are in flight, and beyond the key-request budget, a request gets a `Busy` (no larger than
/// the request) whose waits are the pacer's consecutive slots; the window opens again as
/// registrations complete.
#[test]
fn issue_18_a_key_request_storm_is_answered_at_the_cmas_pace() {
    let mut w = World::new(true, MemStore::default());
    // Loopback: only the global budgets apply (labs run thousands of nanoprobes there).
    let lo = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9);
    let now = w.now();
    let mut requesters = Vec::new();
    let mut req = Vec::new();
    let total = crate::pace::WINDOW + 500;
    for i in 0..total {
        let id = NodeId((0x7000_0000u128 + i as u128).to_be_bytes());
        let mut s = Sealer::new(Identity::from_parts(id, [(i % 251) as u8 | 1; 32]), 1);
        s.key_request(&mut req);
        w.shell().handle_datagram(now, lo, &req);
        requesters.push(s);
    }
    let answers: Vec<_> = std::iter::from_fn(|| w.shell().poll_transmit()).collect();
    assert_eq!(answers.len(), total, "every request is answered");
    let mut replies = 0;
    let mut waits = Vec::new();
    for (a, s) in answers.iter().zip(requesters.iter_mut()) {
        assert!(a.datagram.len() <= assim_wire::header::KEY_REQUEST_LEN);
        let opened = s.open(&a.datagram).expect("made for this requester");
        match opened.header.kind {
            DatagramKind::KeyReply => replies += 1,
            DatagramKind::Busy => waits.push(Sealer::busy_wait(&opened).unwrap()),
            k => panic!("unexpected {k:?}"),
        }
    }
    assert_eq!(replies, crate::pace::WINDOW, "the window's worth get the key");
    assert_eq!(waits.len(), 500);
    // Consecutive slots at the pace (whole milliseconds on the wire): 500 of them span
    // 500 / (0.9 × the budget's rate).
    assert!(waits.windows(2).all(|p| p[1] >= p[0]), "consecutive slots");
    let span = 500.0 / (crate::pace::PACE_SHARE * assim_seal::Limits::KEY_REQUEST.rate);
    let last = waits.last().unwrap().as_secs_f64();
    assert!((last - span).abs() < 0.002, "last wait {last} s, span {span} s");
    assert_eq!(w.shell().metrics().busy_sent, 500);
    // A node in flight whose reply was lost asks again and gets the key; a newcomer waits
    // (nothing completed: those nodes never said hello). A millisecond later, so that the
    // key-request budget has a few tokens again (the window is its burst).
    w.t += 1_000;
    let now = w.now();
    requesters[0].key_request(&mut req);
    w.shell().handle_datagram(now, lo, &req);
    let a = w.shell().poll_transmit().unwrap();
    assert_eq!(requesters[0].open(&a.datagram).unwrap().header.kind, DatagramKind::KeyReply);
    let mut newcomer = Sealer::new(Identity::from_parts(NodeId([0x90; 16]), [5; 32]), 1);
    newcomer.key_request(&mut req);
    w.shell().handle_datagram(now, lo, &req);
    let a = w.shell().poll_transmit().unwrap();
    assert_eq!(newcomer.open(&a.datagram).unwrap().header.kind, DatagramKind::Busy);
    // After `pace::STALE` the places of registrations that never completed are given again.
    w.t += crate::pace::STALE.as_micros() as u64;
    let now = w.now();
    w.shell().handle_datagram(now, lo, &req);
    let a = w.shell().poll_transmit().unwrap();
    assert_eq!(newcomer.open(&a.datagram).unwrap().header.kind, DatagramKind::KeyReply);
}

/// Issue 14: records another writer put in a shared inbox (a deposed engine acknowledged them)
/// are applied in inbox order before what this engine appended after them; their senders'
/// resends count as duplicates, and a node that enrolled there is known here.
#[test]
fn issue_14_records_appended_elsewhere_are_applied_first_in_inbox_order() {
    let mut w = World::new(true, MemStore::default());
    let p = w.add_probe(1);
    let hello = w.probes[p].hello(None);
    w.send(p, 0, hello);
    let id = w.probes[p].id.node_id();
    w.send(p, 1, status(1));
    assert_eq!(w.applied(id), vec![1]);

    // The other writer took record 2 of node 1 and a new node's hello with its record 1.
    let q = Probe::new(2, &w.cma, 1);
    let (q_id, q_key) = (q.id.node_id(), q.id.public_key());
    let encode = |node: NodeId, key: &[u8; 32], record: u64, body: Body| {
        record::encode(node, key, &Message { record, body: Some(body) }.to_bytes())
    };
    let key = w.probes[p].id.public_key();
    let first = w.shell().reader.inbox.append_elsewhere(&encode(id, &key, 2, status(2)));
    w.shell().reader.inbox.append_elsewhere(&encode(q_id, &q_key, 0, q.hello(None)));
    w.shell().reader.inbox.append_elsewhere(&encode(q_id, &q_key, 1, status(1)));
    assert!(w.shell().core().node(q_id).is_none());

    // Node 1 goes on with record 3 (the other writer acknowledged 2). To this engine it is a
    // gap, so the inbox looks: the records elsewhere are applied, in inbox order, each once.
    w.send(p, 3, status(3));
    assert_eq!(w.applied(id), vec![1, 2]);
    assert_eq!(w.applied(q_id), vec![1]);
    assert!(w.shell().core().node(q_id).is_some(), "the node enrolled elsewhere is known");
    // The spool resends record 3: now it is the next one.
    w.send(p, 3, status(3));
    assert_eq!(w.applied(id), vec![1, 2, 3]);
    assert_eq!(w.shell().store().applied.get(&id), Some(&3));
    assert!(w.shell().store().position >= first + 3, "{}", w.shell().store().position);
    // A resend of a record applied from elsewhere is a duplicate: acknowledged, not applied.
    w.send(p, 2, status(2));
    assert_eq!(w.applied(id), vec![1, 2, 3]);
    assert_eq!(w.probes[p].acks().last(), Some(&3));
}

/// One inbox shared by several shells (the JetStream inbox of a cluster, issue 14); appends
/// fail while `failing` is set (NATS unreachable).
#[derive(Clone, Debug)]
struct SharedInbox(
    std::rc::Rc<std::cell::RefCell<LogInbox<MemStorage>>>,
    std::rc::Rc<std::cell::Cell<bool>>,
);

impl Inbox for SharedInbox {
    fn append(&mut self, record: &[u8], id: Option<RecordId>) -> Result<u64, InboxError> {
        if self.1.get() {
            return Err(InboxError::Storage("not connected".into()));
        }
        self.0.borrow_mut().append(record, id)
    }
    fn sync(&mut self) -> Result<(), InboxError> {
        self.0.borrow_mut().sync()
    }
    fn read_from(&mut self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, InboxError> {
        self.0.borrow_mut().read_from(from)
    }
    fn remove_through(&mut self, position: u64) -> Result<(), InboxError> {
        self.0.borrow_mut().remove_through(position)
    }
}

type RoleShell = Shell<Sealer, SharedInbox, MemStore>;

/// Two packet readers and an engine without a socket over one shared inbox; the readers'
/// stores are copies of the engine's nodes (one database in a real cluster).
struct Cluster {
    base: Instant,
    t: u64,
    cma: Identity,
    inbox: SharedInbox,
    readers: Vec<(RoleShell, SocketAddr)>,
    engine: RoleShell,
    notes: Vec<Note>,
}

impl Cluster {
    fn new() -> Cluster {
        let cma = ident(200);
        let storage = MemStorage::new(1);
        let log = LogInbox::open(move || Ok(storage.clone()), LogConfig::default()).unwrap();
        let inbox = SharedInbox(
            std::rc::Rc::new(std::cell::RefCell::new(log)),
            std::rc::Rc::new(std::cell::Cell::new(false)),
        );
        let base = Instant::now();
        let now = Now { mono: base, wall: Timestamp(EPOCH) };
        let shell = |role: Role, session: u64| {
            let mut cfg = config(true, Duration::ZERO);
            cfg.role = role;
            let mut sealer = Sealer::new(cma.clone(), session);
            sealer.set_accept_unknown(true);
            Shell::start(cfg, sealer, inbox.clone(), MemStore::default(), now).unwrap()
        };
        let readers = vec![
            (shell(Role::Reader { id: 11 }, 5), SocketAddr::from(([10, 9, 0, 1], 1984))),
            (shell(Role::Reader { id: 12 }, 6), SocketAddr::from(([10, 9, 0, 2], 1984))),
        ];
        let engine = shell(Role::Engine, 7);
        Cluster { base, t: 0, cma, inbox, readers, engine, notes: Vec::new() }
    }

    fn now(&self) -> Now {
        Now { mono: self.base + Duration::from_micros(self.t), wall: Timestamp(EPOCH + self.t) }
    }

    /// Moves everything until quiet: the node's datagrams to reader `r`, the readers' records
    /// to the engine, the engine's messages back through the readers, the node's answers to
    /// probes to the reader that probed.
    fn pump(&mut self, probe: &mut Probe, r: usize) {
        for _ in 0..100 {
            self.t += 1_000;
            let now = self.now();
            let mut moved = false;
            for d in probe.datagrams(now.mono) {
                moved = true;
                self.readers[r].0.handle_datagram(now, probe.addr, &d);
            }
            let mut replies = Vec::new();
            for i in 0..self.readers.len() {
                self.readers[i].0.handle_timeout(now);
                moved |= self.drain_reader(i, probe, &mut replies);
            }
            let next = self.engine.next_position();
            let records = self.inbox.0.borrow_mut().read_from(next).unwrap();
            moved |= !records.is_empty();
            self.engine.apply_records(now, records);
            for (node, nonce) in replies {
                moved = true;
                self.engine.probe_reply(now, node, nonce);
            }
            self.engine.handle_timeout(now);
            self.engine.flush(now);
            while let Some(n) = self.engine.poll_note() {
                self.notes.push(n);
            }
            // One database: the readers see the nodes the engine stored.
            let nodes = self.engine.store().nodes.clone();
            for (reader, _) in &mut self.readers {
                reader.store_mut().nodes = nodes.clone();
            }
            while let Some(out) = self.engine.poll_outbound() {
                let out = Outbound::decode(&out.encode()).expect("round trip");
                for (reader, _) in &mut self.readers {
                    reader.deliver(now, out.clone());
                }
            }
            let mut replies = Vec::new();
            for i in 0..self.readers.len() {
                moved |= self.drain_reader(i, probe, &mut replies);
            }
            for (node, nonce) in replies {
                moved = true;
                self.engine.probe_reply(now, node, nonce);
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence after 100 rounds");
    }

    /// Ends reader `i`'s turn and delivers what it sends to the node; a probe is answered at
    /// once to the reader that sent it. Returns whether anything moved.
    fn drain_reader(
        &mut self,
        i: usize,
        probe: &mut Probe,
        replies: &mut Vec<(NodeId, u64)>,
    ) -> bool {
        let now = self.now();
        let (reader, from) = &mut self.readers[i];
        let mut moved = false;
        for _ in 0..10 {
            reader.flush(now);
            while let Some(n) = reader.poll_note() {
                if let Note::ProbeReply { node, nonce } = n {
                    replies.push((node, nonce));
                }
            }
            let mut answers = Vec::new();
            while let Some(t) = reader.poll_transmit() {
                if t.to != probe.addr {
                    continue;
                }
                moved = true;
                if let Some(answer) = probe.receive_from(&t.datagram, *from, now.mono) {
                    answers.push(answer);
                }
            }
            if answers.is_empty() {
                break;
            }
            for a in answers {
                reader.handle_datagram(now, probe.addr, &a);
            }
        }
        moved
    }

    fn applied(&self, node: NodeId) -> Vec<u64> {
        applied_records(&self.notes, node)
    }
}

impl Probe {
    /// A datagram from the CMA at `from` (a packet reader's address): a reliable frame is
    /// taken, a probe answered (the sealed answer is returned; it goes back to `from`).
    fn receive_from(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) -> Option<Vec<u8>> {
        let _ = from;
        let o = self.sealer.open(datagram).ok()?;
        if o.header.kind == DatagramKind::Reliable {
            let _ = self.conn.handle_frame(&o.plaintext, now);
            while let Some(ev) = self.conn.poll_event() {
                if let assim_reliable::Event::Delivered(b) = ev {
                    self.received.push(Message::from_bytes(&b).unwrap());
                }
            }
            return None;
        }
        let Ok(Direct { body: Some(DirectBody::Probe(p)) }) = Direct::from_bytes(&o.plaintext)
        else {
            return None;
        };
        self.probes_answered += 1;
        let reply = Direct { body: Some(DirectBody::ProbeReply(p)) }.to_bytes();
        let mut d = Vec::new();
        self.sealer.seal(self.cma, DatagramKind::Direct, true, &reply, &mut d).unwrap();
        Some(d)
    }
}

/// Issue 14: two packet readers append to one inbox and acknowledge; an engine without a
/// socket applies every record once, in inbox order, and its messages reach the node through
/// the reader that took the node's latest record. The node moves to the other reader (as after
/// a failover): its hello says what the first reader acknowledged, so the second one takes the
/// next record instead of waiting for a gap to close, and a resend is a duplicate.
#[test]
fn issue_14_packet_readers_take_records_and_an_engine_without_a_socket_applies_them_once() {
    let mut c = Cluster::new();
    let mut p = Probe::new(1, &c.cma, 1);
    let id = p.id.node_id();
    let Body::Hello(hello) = p.hello(None) else { unreachable!() };
    let now = c.now().mono;
    p.send(0, Body::Hello(hello.clone()), now);
    for r in 1..=3 {
        p.send(r, status(r), now);
    }
    c.pump(&mut p, 0);
    assert_eq!(c.applied(id), vec![1, 2, 3]);
    assert_eq!(p.acks().last(), Some(&3));
    assert!(c.engine.core().node(id).is_some(), "the engine registered the node");
    assert_eq!(c.engine.via.get(&id), Some(&11));
    let from_engine =
        |p: &Probe| p.received.iter().filter(|m| !matches!(m.body, Some(Body::Ack(_)))).count();
    let before = from_engine(&p);
    assert!(before > 0, "the engine's messages reached the node through reader 11");
    // Neither reader applied anything itself.
    for (r, _) in &c.readers {
        assert!(r.core().node(id).is_none());
    }

    // The node moves to reader 12 with a new connection session.
    p.conn = Connection::new(assim_reliable::Config::default(), 2, 1);
    let moved = msg::Hello { acked_through: 3, ..hello };
    let now = c.now().mono;
    p.send(0, Body::Hello(moved), now);
    p.send(4, status(4), now);
    p.send(5, status(5), now);
    c.pump(&mut p, 1);
    assert_eq!(c.applied(id), vec![1, 2, 3, 4, 5]);
    assert_eq!(p.acks().last(), Some(&5));
    assert_eq!(c.engine.via.get(&id), Some(&12), "the engine now sends through reader 12");
    let now = c.now().mono;
    p.send(3, status(3), now);
    c.pump(&mut p, 1);
    assert_eq!(c.applied(id), vec![1, 2, 3, 4, 5], "a resend is not applied again");
    assert_eq!(p.acks().last(), Some(&5));

    // A probe the engine addresses through reader 12 is answered, and the answer comes back
    // as a note for the engine; reader 11, which the node left, may not open a connection.
    let probe_addr = p.addr;
    let probe = |via| Outbound {
        to: id,
        via: Some(via),
        addr: Some(probe_addr),
        what: OutboundKind::Probe { nonce: 77 },
    };
    let t = c.now();
    assert!(c.readers[1].0.deliver(t, probe(12)));
    let mut replies = Vec::new();
    c.drain_reader(1, &mut p, &mut replies);
    assert_eq!(replies, vec![(id, 77)]);
    assert_eq!(p.probes_answered, 1);
    let stranger = Outbound { to: NodeId([9; 16]), ..probe(11) };
    assert!(!c.readers[0].0.deliver(t, stranger), "no connection, no key: nothing sent");
}

/// Issue 14: a reader that does not know a node (another reader enrolled it) takes it only
/// with the key the store holds for it.
#[test]
fn issue_14_a_reader_admits_a_node_registered_elsewhere_only_with_its_stored_key() {
    let mut c = Cluster::new();
    let mut p = Probe::new(1, &c.cma, 1);
    let id = p.id.node_id();
    let now = c.now().mono;
    p.send(0, p.hello(None), now);
    c.pump(&mut p, 0);
    assert!(c.engine.core().node(id).is_some());
    // The store says the node has another key: reader 12 refuses its records as unregistered.
    for (r, _) in &mut c.readers {
        r.store_mut().nodes.get_mut(&id).unwrap().public_key = [1; 32];
    }
    p.conn = Connection::new(assim_reliable::Config::default(), 2, 1);
    let t = c.now();
    p.send(1, status(1), t.mono);
    for d in p.datagrams(t.mono) {
        c.readers[1].0.handle_datagram(t, p.addr, &d);
    }
    c.readers[1].0.flush(t);
    let refused: Vec<_> = std::iter::from_fn(|| c.readers[1].0.poll_note())
        .filter_map(|n| match n {
            Note::Refused { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec!["unregistered"]);
    assert_eq!(c.readers[1].0.seal().peer_key(id), None, "its key is forgotten again");
}

proptest::proptest! {
    /// The engine's messages for the readers survive their encoding, and any bytes either
    /// decode to a bounded message or to nothing.
    #[test]
    fn issue_14_outbound_round_trips(
        node in proptest::array::uniform16(proptest::prelude::any::<u8>()),
        via in proptest::option::of(1u64..),
        port in proptest::prelude::any::<u16>(),
        payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        probe in proptest::prelude::any::<bool>(),
        junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
    ) {
        let what = if probe {
            OutboundKind::Probe { nonce: payload.len() as u64 }
        } else {
            OutboundKind::Message(payload)
        };
        let addr = (port % 2 == 0).then(|| SocketAddr::from(([10, 1, 2, 3], port)));
        let out = Outbound { to: NodeId(node), via, addr, what };
        proptest::prop_assert_eq!(Outbound::decode(&out.encode()), Some(out));
        let _ = Outbound::decode(&junk);
    }
}

/// Issue 14: a hello a packet reader cannot append (NATS unreachable) is neither lost nor
/// overtaken: the reader takes its `acked_through` at once, keeps it, and appends it before the
/// node's next records once the inbox works again; the engine gets the hello, then the records.
#[test]
fn issue_14_a_readers_hello_that_the_inbox_refused_is_appended_again_first() {
    let mut c = Cluster::new();
    let mut p = Probe::new(1, &c.cma, 1);
    let id = p.id.node_id();
    let Body::Hello(hello) = p.hello(None) else { unreachable!() };
    let now = c.now().mono;
    p.send(0, Body::Hello(hello.clone()), now);
    p.send(1, status(1), now);
    c.pump(&mut p, 0);
    assert_eq!(c.applied(id), vec![1]);

    // The node moves to reader 12 while the inbox refuses appends: its hello (acked through
    // 1) is kept, record 2 is refused and stays in the node's spool.
    c.inbox.1.set(true);
    p.conn = Connection::new(assim_reliable::Config::default(), 2, 1);
    let now = c.now().mono;
    p.send(0, Body::Hello(msg::Hello { acked_through: 1, ..hello }), now);
    p.send(2, status(2), now);
    c.pump(&mut p, 1);
    assert_eq!(c.applied(id), vec![1]);
    assert_eq!(p.acks().last(), Some(&1), "nothing new acknowledged");

    // The inbox works again; the spool resends record 2: the kept hello goes in first, then
    // record 2 as the next one (not a gap), and the engine applies both in that order.
    c.inbox.1.set(false);
    let now = c.now().mono;
    p.send(2, status(2), now);
    c.pump(&mut p, 1);
    assert_eq!(c.applied(id), vec![1, 2]);
    assert_eq!(p.acks().last(), Some(&2));
    let kinds: Vec<_> = c
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::Applied { node, kind, .. } if *node == id => Some(*kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec!["hello", "peer_status", "hello", "peer_status"]);
}
