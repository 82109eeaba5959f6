//! The JetStream inbox against real `nats-server`s (`assim_util::testing::Nats`): positions,
//! reading back, purging, two writers on one stream, de-duplication, a full stream, a lost
//! server of three, and the errors for a bad configuration.
//!
//! Without nats-server installed the tests print `SKIP:` (a failure under `CI=true`).

use std::time::Duration;

use assim_inbox_jetstream::{JetStreamInbox, QueueConfig};
use assim_store::{Inbox, InboxError, RecordId};
use assim_util::testing::Nats;
use assim_wire::NodeId;

fn config(nats: &Nats, replicas: usize) -> QueueConfig {
    QueueConfig { replicas, timeout: Duration::from_secs(3), ..QueueConfig::new(nats.url()) }
}

fn id(record: u64) -> Option<RecordId> {
    Some(RecordId { node: NodeId::from_slice(&[7; 16]).unwrap(), incarnation: 1, record })
}

/// After a failed sync the inbox refuses appends for a moment (its back-off).
fn wait_out_backoff() {
    std::thread::sleep(Duration::from_millis(600));
}

fn payloads(records: &[(u64, Vec<u8>)]) -> Vec<(u64, &[u8])> {
    records.iter().map(|(p, b)| (*p, b.as_slice())).collect()
}

#[test]
fn records_get_dense_positions_and_read_back_after_a_reopen() {
    let Some(nats) = Nats::single() else { return };
    let mut inbox = JetStreamInbox::open(config(&nats, 1)).expect("open");
    assert_eq!(inbox.opened().last, 0);
    assert_eq!(inbox.append(b"one", id(1)).unwrap(), 1);
    assert_eq!(inbox.append(b"two", None).unwrap(), 2);
    assert_eq!(inbox.append(b"three", id(2)).unwrap(), 3);
    inbox.sync().unwrap();
    assert_eq!(inbox.appended_elsewhere(false), None);
    assert_eq!(payloads(&inbox.read_from(2).unwrap()), vec![(2, &b"two"[..]), (3, &b"three"[..])]);
    assert!(inbox.read_from(4).unwrap().is_empty());

    // Another process (a new engine) sees the same records and appends after them.
    drop(inbox);
    let mut again = JetStreamInbox::open(config(&nats, 1)).expect("reopen");
    assert_eq!(again.opened().last, 3);
    assert_eq!(again.read_from(1).unwrap().len(), 3);
    assert_eq!(again.append(b"four", id(3)).unwrap(), 4);
    again.sync().unwrap();

    // Applied records are purged; positions go on.
    again.remove_through(2).unwrap(); // the first purge waits a second after opening
    std::thread::sleep(Duration::from_millis(1100));
    again.remove_through(3).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = again.read_from(1).unwrap();
        if left.iter().map(|r| r.0).collect::<Vec<_>>() == vec![4] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not purged: {:?}", payloads(&left));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(again.append(b"five", id(4)).unwrap(), 5);
    again.sync().unwrap();
}

#[test]
fn a_second_writer_fails_and_learns_what_the_first_one_appended() {
    let Some(nats) = Nats::single() else { return };
    let mut a = JetStreamInbox::open(config(&nats, 1)).expect("open a");
    // b opened before a wrote anything: a deposed engine's view.
    let mut b = JetStreamInbox::open(config(&nats, 1)).expect("open b");
    assert_eq!(a.append(b"a1", id(1)).unwrap(), 1);
    assert_eq!(a.append(b"a2", id(2)).unwrap(), 2);
    a.sync().unwrap();

    // b numbers its record 1 as well: refused, nothing of it stored, and b is told where the
    // records it did not write begin.
    assert_eq!(b.append(b"b1", None).unwrap(), 1);
    assert!(matches!(b.sync(), Err(InboxError::SyncFailed(_))));
    assert_eq!(b.appended_elsewhere(false), Some(1));
    assert_eq!(b.appended_elsewhere(false), None, "told once");
    assert_eq!(payloads(&b.read_from(1).unwrap()), vec![(1, &b"a1"[..]), (2, &b"a2"[..])]);
    assert!(b.append(b"b1", None).is_err(), "refused during the back-off");
    wait_out_backoff();
    // b now appends after them; a, in turn, is refused and learns of b's record.
    assert_eq!(b.append(b"b1", None).unwrap(), 3);
    b.sync().unwrap();
    assert_eq!(a.append(b"a3", id(3)).unwrap(), 3);
    assert!(a.sync().is_err());
    assert_eq!(a.appended_elsewhere(false), Some(3));
    assert_eq!(payloads(&a.read_from(3).unwrap()), vec![(3, &b"b1"[..])]);
    wait_out_backoff();
    assert_eq!(a.append(b"a3", id(3)).unwrap(), 4);
    a.sync().unwrap();

    // Without a failed sync, a record gap at the engine makes the inbox look (at most once a
    // second): b learns of a's record 4.
    assert_eq!(b.appended_elsewhere(false), None, "not asked to look");
    assert_eq!(b.appended_elsewhere(true), Some(4));
    assert_eq!(payloads(&b.read_from(4).unwrap()), vec![(4, &b"a3"[..])]);
    assert_eq!(b.append(b"b2", None).unwrap(), 5);
    b.sync().unwrap();
    let all = a.read_from(1).unwrap();
    assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_record_published_twice_is_stored_once() {
    let Some(nats) = Nats::single() else { return };
    let mut a = JetStreamInbox::open(config(&nats, 1)).expect("open");
    a.append(b"r1", id(1)).unwrap();
    a.sync().unwrap();
    // A writer whose view is right but that sends record 1 again (its reader forgot it was
    // stored): JetStream drops the copy, the sync fails, and no position is skipped.
    a.append(b"r1 again", id(1)).unwrap();
    assert!(a.sync().is_err());
    assert_eq!(a.appended_elsewhere(false), None, "nothing new in the stream");
    assert_eq!(payloads(&a.read_from(1).unwrap()), vec![(1, &b"r1"[..])]);
    wait_out_backoff();
    // The same record number in another spool incarnation is another record.
    let other =
        Some(RecordId { node: NodeId::from_slice(&[7; 16]).unwrap(), incarnation: 2, record: 1 });
    assert_eq!(a.append(b"r1 of a new spool", other).unwrap(), 2);
    a.sync().unwrap();
}

#[test]
fn a_full_stream_refuses_new_records_and_keeps_the_old_ones() {
    let Some(nats) = Nats::single() else { return };
    let mut inbox =
        JetStreamInbox::open(QueueConfig { max_bytes: 4096, ..config(&nats, 1) }).expect("open");
    let record = vec![0x5a; 500];
    let mut stored = 0;
    for i in 1..=40 {
        inbox.append(&record, id(i)).unwrap();
        match inbox.sync() {
            Ok(()) => stored += 1,
            Err(e) => {
                assert!(matches!(e, InboxError::SyncFailed(_)), "{e}");
                break;
            }
        }
    }
    assert!((1..40).contains(&stored), "{stored} records of 500 bytes in a 4 KiB stream");
    let held = inbox.read_from(1).unwrap();
    assert_eq!(held.len(), stored, "the old records stay");
    assert_eq!(held[0].0, 1);
}

#[test]
fn an_acknowledged_record_survives_the_loss_of_one_server_of_three() {
    let Some(mut nats) = Nats::cluster() else { return };
    let mut inbox = open_retrying(config(&nats, 3));
    assert_eq!(inbox.append(b"before", id(1)).unwrap(), 1);
    inbox.sync().unwrap();
    let t0 = std::time::Instant::now();
    nats.kill(0);
    // The client reconnects to another server; the stream keeps a quorum of two.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let synced = inbox.append(b"after", id(2)).and_then(|_| inbox.sync());
        match synced {
            Ok(()) => break,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}\n{}", nats.logs());
                // A sync that timed out may have stored the record after all: then the
                // inbox says so, as the engine would learn it.
                if inbox.appended_elsewhere(false).is_some()
                    && inbox.read_from(2).is_ok_and(|r| r.iter().any(|(_, b)| b == b"after"))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    println!("stored again {} ms after the server was killed", t0.elapsed().as_millis());
    // Whatever failed on the way reached the stream once, after the first record.
    let held = inbox.read_from(1).unwrap();
    assert_eq!(payloads(&held)[0], (1, &b"before"[..]));
    assert_eq!(held.iter().filter(|(_, b)| b == b"after").count(), 1, "{:?}", payloads(&held));
    nats.start_server(0);
}

/// A fresh cluster may still be electing its JetStream leader.
fn open_retrying(config: QueueConfig) -> JetStreamInbox {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match JetStreamInbox::open(config.clone()) {
            Ok(i) => return i,
            Err(e) if std::time::Instant::now() < deadline => {
                println!("retrying: {e}");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn bad_configurations_are_refused_with_the_fix() {
    let err = |c: QueueConfig| c.servers().unwrap_err();
    assert!(err(QueueConfig::new("")).contains("empty"));
    assert!(err(QueueConfig::new("http://x:1")).contains("nats://HOST:PORT"));
    assert!(
        err(QueueConfig { stream: "a.b".into(), ..QueueConfig::new("nats://x:1") })
            .contains("stream name")
    );
    assert!(err(QueueConfig { replicas: 0, ..QueueConfig::new("nats://x:1") }).contains("1 to 5"));
    let many = vec!["nats://h:1"; 17].join(",");
    assert!(err(QueueConfig::new(many)).contains("at most 16"));
    assert_eq!(QueueConfig::new("nats://a:1, nats://b:2").servers().unwrap().len(), 2);

    let Some(nats) = Nats::single() else { return };
    let e = JetStreamInbox::open(config(&nats, 3)).unwrap_err();
    assert!(e.contains("replicas to 1"), "{e}");
    let e = JetStreamInbox::open(QueueConfig::new("nats://127.0.0.1:1")).unwrap_err();
    assert!(e.contains("cannot connect to NATS"), "{e}");
}
