//! Injected faults, one at a time, on the in-memory storage: what the caller sees and what
//! survives.

use assim_log::{Log, LogConfig, LogError, MemStorage, Storage};

fn config() -> LogConfig {
    LogConfig { segment_size: 4096, write_buffer_size: 0, ..LogConfig::default() }
}

fn records(log: &Log<MemStorage>) -> Vec<(u64, Vec<u8>)> {
    log.read_from(log.first_lsn()).unwrap().collect::<Result<_, _>>().unwrap()
}

#[test]
fn fsync_failure_poisons_and_reopen_keeps_exactly_the_durable_prefix() {
    let mem = MemStorage::new(7);
    let mut log = Log::open(mem.clone(), config()).unwrap();
    for i in 0..3u8 {
        log.append(&[i; 50]).unwrap();
    }
    assert_eq!(log.sync().unwrap(), 3);
    log.append(&[3; 50]).unwrap();
    log.append(&[4; 50]).unwrap();
    mem.fail_next_syncs(1);
    match log.sync() {
        Err(LogError::SyncFailed { durable_lsn: 3, file, .. }) => assert!(file.ends_with(".seg")),
        r => panic!("expected SyncFailed, got {r:?}"),
    }
    assert!(log.is_poisoned());
    assert_eq!(log.durable_lsn(), 3);
    assert!(matches!(log.append(b"x"), Err(LogError::Poisoned { .. })));
    assert!(matches!(log.sync(), Err(LogError::Poisoned { .. })));
    assert!(matches!(log.remove_through(1), Err(LogError::Poisoned { .. })));
    // Durable records are still readable.
    assert_eq!(records(&log).len(), 3);
    drop(log);

    // The kernel "forgot" the error: a later fsync would succeed without writing those pages.
    // The log cut them off when it was poisoned, so a reopen does not trust them.
    let mut log = Log::open(mem.clone(), config()).unwrap();
    assert_eq!(log.next_lsn(), 4);
    assert_eq!(
        records(&log),
        (0..3u8).map(|i| (u64::from(i) + 1, vec![i; 50])).collect::<Vec<_>>()
    );
    log.append(b"after").unwrap();
    log.sync().unwrap();
    drop(log);
    mem.crash(false);
    let log = Log::open(mem, config()).unwrap();
    assert_eq!(log.verify().unwrap(), 4);
}

#[test]
fn disk_full_during_sync_changes_nothing_and_is_retriable() {
    let mem = MemStorage::new(3);
    let mut log = Log::open(mem.clone(), config()).unwrap();
    log.append(&[1; 100]).unwrap();
    log.sync().unwrap();
    let used = mem.used_bytes();
    mem.set_capacity(Some(used + 150)); // room for one more 108-byte record, not two
    assert_eq!(log.append(&[2; 100]).unwrap(), 2); // buffered
    assert_eq!(log.append(&[3; 100]).unwrap(), 3); // writes out record 2, buffers record 3
    let err = log.sync().unwrap_err(); // 42 bytes of record 3 fit, then ENOSPC
    assert!(matches!(err, LogError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    // The partial write was cut off again; nothing is durable that was not, nothing is lost.
    assert_eq!(mem.used_bytes(), used + 108);
    assert_eq!((log.durable_lsn(), log.next_lsn(), log.is_poisoned()), (1, 4, false));
    mem.set_capacity(None);
    assert_eq!(log.sync().unwrap(), 3);
    drop(log);
    mem.crash(true);
    let log = Log::open(mem, config()).unwrap();
    assert_eq!(records(&log), vec![(1, vec![1; 100]), (2, vec![2; 100]), (3, vec![3; 100])]);
}

#[test]
fn short_writes_are_completed() {
    let mem = MemStorage::new(11);
    mem.set_short_writes(true);
    let mut log = Log::open(mem.clone(), LogConfig { segment_size: 512, ..config() }).unwrap();
    for i in 0..100u64 {
        log.append(&i.to_le_bytes().repeat(5)).unwrap();
    }
    assert_eq!(log.sync().unwrap(), 100);
    drop(log);
    mem.crash(true);
    let log = Log::open(mem, config()).unwrap();
    let got = records(&log);
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|(l, p)| *p == (l - 1).to_le_bytes().repeat(5)));
}

#[test]
fn crash_tears_unsynced_tail_and_recovery_reports_it() {
    let mut cut = 0;
    for seed in 0..40 {
        let mem = MemStorage::new(seed);
        let mut log = Log::open(mem.clone(), config()).unwrap();
        for i in 0..5u8 {
            log.append(&[i; 64]).unwrap();
        }
        log.sync().unwrap();
        for i in 5..10u8 {
            log.append(&[i; 64]).unwrap(); // written (write_buffer_size 0), not synced
        }
        drop(log);
        mem.crash(true);
        let log = Log::open(mem, config()).unwrap();
        let n = log.next_lsn();
        assert!((6..=10).contains(&n), "{n}");
        if let Some(r) = log.last_recovery() {
            cut += 1;
            assert!(r.truncated_bytes > 0 && r.truncated_bytes < 72);
            assert_eq!(r.dropped_records_estimate, 1);
            assert_eq!(r.offset, 16 + (n - 1) * 72);
        }
        let got = records(&log);
        assert_eq!(got.len() as u64, n - 1);
        assert!(got.iter().all(|(l, p)| *p == vec![(*l - 1) as u8; 64]));
    }
    assert!(cut > 10, "only {cut} of 40 crashes tore a record");
}

#[test]
fn failed_directory_sync_while_rolling_over_poisons() {
    let mem = MemStorage::new(5);
    let mut log = Log::open(mem.clone(), LogConfig { segment_size: 200, ..config() }).unwrap();
    log.append(&[1; 150]).unwrap();
    mem.fail_next_dir_syncs(1);
    assert!(matches!(log.append(&[2; 150]), Err(LogError::SyncFailed { .. })));
    assert!(log.is_poisoned());
    // The rollover synced record 1 before creating the next segment.
    assert_eq!(log.durable_lsn(), 1);
    drop(log);
    mem.crash(true);
    let mut log = Log::open(mem.clone(), config()).unwrap();
    assert_eq!(records(&log), vec![(1, vec![1; 150])]);
    assert_eq!(log.append(b"next").unwrap(), 2);
}

#[test]
fn errors_name_the_file_the_cause_and_the_remedy() {
    let mem = MemStorage::new(1);
    let mut log = Log::open(mem.clone(), config()).unwrap();
    log.append(b"a").unwrap();
    mem.fail_next_syncs(1);
    let msg = log.sync().unwrap_err().to_string();
    assert!(msg.contains("mem:00000000000000000001.seg"), "{msg}");
    assert!(msg.contains("fsync failed") && msg.contains("reopen"), "{msg}");
    let msg = log.append(b"b").unwrap_err().to_string();
    assert!(msg.contains("poisoned") && msg.contains("reopen"), "{msg}");
    assert!(mem.file_names().contains(&"00000000000000000001.seg".to_owned()));
    assert_eq!(mem.file_len("00000000000000000001.seg").unwrap(), 16);
}
