//! The log on a real filesystem (a temporary directory): torn tails, bit rot, rollover,
//! removal, positions and the size limit, as an operator would meet them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use assim_log::{FileStorage, Log, LogConfig, LogError, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

fn open(dir: &Path, config: LogConfig) -> Result<Log<FileStorage>, LogError> {
    Log::open(FileStorage::open(dir).unwrap(), config)
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as u8).wrapping_mul(31) ^ (j as u8)).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn read_all(log: &Log<FileStorage>, from: u64) -> Vec<(u64, Vec<u8>)> {
    log.read_from(from).unwrap().collect::<Result<_, _>>().unwrap()
}

/// A log of `n` synced records of `len` bytes, LSNs 1..=n.
fn filled(dir: &Path, config: LogConfig, n: u64, len: usize) -> Log<FileStorage> {
    let mut log = open(dir, config).unwrap();
    for i in 1..=n {
        assert_eq!(log.append(&payload(i, len)).unwrap(), i);
    }
    assert_eq!(log.sync().unwrap(), n);
    log
}

fn assert_records(log: &Log<FileStorage>, lsns: std::ops::RangeInclusive<u64>, len: usize) {
    let got = read_all(log, *lsns.start());
    let want: Vec<(u64, Vec<u8>)> = lsns.map(|i| (i, payload(i, len))).collect();
    assert_eq!(got, want);
}

#[test]
fn torn_tail_mid_record_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), LogConfig::default(), 10, 100));
    let seg = &segments(dir.path())[0];
    let len = fs::metadata(seg).unwrap().len();
    assert_eq!(len, SEGMENT_HEADER_LEN + 10 * (RECORD_HEADER_LEN + 100));
    // The crash tore record 10: only 50 of its 108 bytes reached the disk.
    OpenOptions::new().write(true).open(seg).unwrap().set_len(len - 58).unwrap();

    let mut log = open(dir.path(), LogConfig::default()).unwrap();
    let r = log.last_recovery().expect("recovery is reported").clone();
    assert!(r.segment.ends_with("00000000000000000001.seg"), "{r:?}");
    assert_eq!(r.truncated_bytes, 50);
    assert_eq!(r.offset, len - 108);
    assert_eq!(r.dropped_records_estimate, 1);
    assert!(r.detail.contains("cut short"), "{}", r.detail);
    assert_eq!((log.next_lsn(), log.durable_lsn()), (10, 9));
    assert_records(&log, 1..=9, 100);
    assert_eq!(fs::metadata(seg).unwrap().len(), len - 108);

    // LSN 10 is handed out again and the log is clean from now on.
    assert_eq!(log.append(b"again").unwrap(), 10);
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.last_recovery(), None);
    assert_eq!(read_all(&log, 10), vec![(10, b"again".to_vec())]);
}

#[test]
fn garbage_after_last_record_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), LogConfig::default(), 10, 100));
    let seg = &segments(dir.path())[0];
    let len = fs::metadata(seg).unwrap().len();
    // A plausible header (length 20) with a wrong CRC, then junk.
    let mut junk = vec![20, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    junk.extend((0..29u8).map(|i| i.wrapping_mul(97)));
    OpenOptions::new().append(true).open(seg).unwrap().write_all(&junk).unwrap();

    let log = open(dir.path(), LogConfig::default()).unwrap();
    let r = log.last_recovery().unwrap();
    assert_eq!((r.offset, r.truncated_bytes), (len, 37));
    assert!(r.detail.contains("CRC mismatch"), "{}", r.detail);
    assert!(r.dropped_records_estimate >= 1);
    assert_eq!(log.next_lsn(), 11);
    assert_records(&log, 1..=10, 100);
}

#[test]
fn incomplete_record_header_at_the_end_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), LogConfig::default(), 3, 10));
    let seg = &segments(dir.path())[0];
    OpenOptions::new().append(true).open(seg).unwrap().write_all(&[5, 0, 0]).unwrap();
    let log = open(dir.path(), LogConfig::default()).unwrap();
    let r = log.last_recovery().unwrap();
    assert_eq!(r.truncated_bytes, 3);
    assert!(r.detail.contains("incomplete record header"), "{}", r.detail);
    assert_records(&log, 1..=3, 10);
}

#[test]
fn flipped_byte_in_an_earlier_record_is_corrupt_with_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), LogConfig::default(), 10, 100));
    let seg = &segments(dir.path())[0];
    let mut bytes = fs::read(seg).unwrap();
    let record3 = SEGMENT_HEADER_LEN + 2 * (RECORD_HEADER_LEN + 100);
    bytes[record3 as usize + 8 + 40] ^= 0x01;
    fs::write(seg, &bytes).unwrap();

    let err = open(dir.path(), LogConfig::default()).unwrap_err();
    match &err {
        LogError::Corrupt { segment, offset, detail } => {
            assert!(segment.ends_with("00000000000000000001.seg"), "{segment}");
            assert_eq!(*offset, record3);
            assert!(
                detail.contains("CRC mismatch") && detail.contains("valid record follows"),
                "{detail}"
            );
        }
        e => panic!("expected Corrupt, got {e:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("00000000000000000001.seg") && msg.contains("restore"), "{msg}");
    // Nothing was truncated.
    assert_eq!(fs::read(seg).unwrap(), bytes);
}

#[test]
fn damaged_length_in_the_middle_is_corrupt_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), LogConfig::default(), 10, 100));
    let seg = &segments(dir.path())[0];
    let mut bytes = fs::read(seg).unwrap();
    let record4 = (SEGMENT_HEADER_LEN + 3 * (RECORD_HEADER_LEN + 100)) as usize;
    // Length 100 → 1124: runs past the end of the file, like a torn record would.
    bytes[record4 + 1] ^= 0x04;
    fs::write(seg, &bytes).unwrap();
    match open(dir.path(), LogConfig::default()).unwrap_err() {
        LogError::Corrupt { offset, .. } => assert_eq!(offset, record4 as u64),
        e => panic!("expected Corrupt, got {e:?}"),
    }
    assert_eq!(fs::read(seg).unwrap().len(), bytes.len());
}

#[test]
fn flipped_byte_in_a_closed_segment_is_corrupt_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_size: 1024, ..LogConfig::default() };
    drop(filled(dir.path(), config.clone(), 20, 200));
    let first = &segments(dir.path())[0];
    let mut bytes = fs::read(first).unwrap();
    let record2 = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 200;
    bytes[record2 as usize + 100] ^= 0x80;
    fs::write(first, &bytes).unwrap();

    // Only the last segment is scanned on open; the damage shows when read.
    let log = open(dir.path(), config).unwrap();
    let got: Vec<_> = log.read_from(1).unwrap().collect();
    assert_eq!(got.len(), 2, "record 1, then the error, then nothing");
    assert_eq!(got[0].as_ref().unwrap(), &(1, payload(1, 200)));
    match &got[1] {
        Err(LogError::Corrupt { segment, offset, .. }) => {
            assert!(segment.ends_with("00000000000000000001.seg"));
            assert_eq!(*offset, record2);
        }
        r => panic!("expected Corrupt, got {r:?}"),
    }
    assert!(matches!(log.verify(), Err(LogError::Corrupt { .. })));
    // Records in later segments are still readable.
    assert_records(&log, 5..=20, 200);
}

#[test]
fn rollover_and_remove_through_delete_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_size: 1024, ..LogConfig::default() };
    // 4 records of 208 bytes fit in a segment (16 + 4 × 208 = 848; a fifth would make 1056).
    let mut log = filled(dir.path(), config.clone(), 40, 200);
    let names: Vec<String> = segments(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: Vec<String> = (0..10).map(|k| format!("{:020}.seg", 1 + 4 * k)).collect();
    assert_eq!(names, expected);
    assert_eq!(log.segment_count(), 10);
    let on_disk =
        |dir: &Path| segments(dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum::<u64>();
    assert_eq!(log.disk_bytes(), on_disk(dir.path()));
    assert_eq!(log.verify().unwrap(), 40);

    // Through 22: segments 1..=4, ..., 17..=20 go; 21..=24 stays (it still holds 23 and 24).
    let freed = log.remove_through(22).unwrap();
    assert_eq!(freed, 5 * 848);
    assert_eq!(segments(dir.path()).len(), 5);
    assert_eq!(log.first_lsn(), 23);
    assert_records(&log, 23..=40, 200);
    assert!(matches!(log.read_from(22), Err(LogError::LsnOutOfRange { lsn: 22, first: 23, .. })));
    assert_eq!(log.disk_bytes(), on_disk(dir.path()));
    drop(log);

    // After a restart the rest of the kept segment is readable again; LSNs continue.
    let mut log = open(dir.path(), config.clone()).unwrap();
    assert_eq!((log.first_lsn(), log.next_lsn()), (21, 41));
    assert_records(&log, 21..=40, 200);

    // Everything consumed: only the (replaced) active segment remains, and LSNs survive.
    log.remove_through(40).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(log.first_lsn(), 41);
    assert_eq!(read_all(&log, 41), vec![]);
    drop(log);
    let mut log = open(dir.path(), config).unwrap();
    assert_eq!(log.next_lsn(), 41);
    assert_eq!(log.append(b"x").unwrap(), 41);
}

#[test]
fn positions_survive_reopen_once_synced() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), LogConfig::default(), 10, 10);
    log.set_position("sender", 5).unwrap();
    log.set_position("engine", 7).unwrap();
    assert_eq!(log.position("sender"), Some(5));
    log.sync().unwrap();
    log.set_position("sender", 9).unwrap(); // not synced: lost with the process
    drop(log);

    let mut log = open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.position("sender"), Some(5));
    assert_eq!(log.position("engine"), Some(7));
    assert_eq!(log.position("audit"), None);
    assert!(!dir.path().join("positions.tmp").exists());
    assert!(matches!(log.set_position("", 1), Err(LogError::InvalidPositionName { .. })));
    assert!(matches!(log.set_position("sender", 11), Err(LogError::LsnOutOfRange { .. })));
    log.set_position("sender", 10).unwrap();
    log.sync().unwrap();
    drop(log);
    assert_eq!(open(dir.path(), LogConfig::default()).unwrap().position("sender"), Some(10));

    // A damaged positions file is reported, not ignored.
    let p = dir.path().join("positions");
    let mut bytes = fs::read(&p).unwrap();
    bytes[13] ^= 0xff;
    fs::write(&p, bytes).unwrap();
    assert!(matches!(
        open(dir.path(), LogConfig::default()),
        Err(LogError::Corrupt { segment, .. }) if segment.ends_with("positions")
    ));
}

#[test]
fn size_limit_rejects_appends_without_changing_state() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        LogConfig { segment_size: 1024, max_disk_bytes: Some(2048), ..LogConfig::default() };
    let mut log = open(dir.path(), config).unwrap();
    let mut appended = 0;
    let err = loop {
        match log.append(&payload(appended, 200)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
    };
    let LogError::Full { disk_bytes, needed, limit, .. } = err else { panic!("{err:?}") };
    assert!(disk_bytes + needed > limit && disk_bytes <= limit);
    // 848 + 848 + (16 + 208): a tenth record would need 208 more.
    assert_eq!(appended, 9);
    let (next, bytes) = (log.next_lsn(), log.disk_bytes());
    assert!(log.append(&payload(99, 200)).is_err());
    assert_eq!((log.next_lsn(), log.disk_bytes()), (next, bytes));
    // Consuming frees whole segments.
    log.sync().unwrap();
    assert_eq!(log.remove_through(8).unwrap(), 2 * 848);
    assert_eq!(log.disk_bytes(), 16 + 208);
    assert_eq!(log.append(&payload(10, 200)).unwrap(), 10);
}

#[test]
fn oversized_record_is_rejected_before_anything_happens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log =
        open(dir.path(), LogConfig { max_record_size: 64, ..LogConfig::default() }).unwrap();
    assert!(matches!(log.append(&[0; 65]), Err(LogError::RecordTooLarge { len: 65, max: 64 })));
    assert_eq!((log.next_lsn(), log.disk_bytes()), (1, SEGMENT_HEADER_LEN));
    assert_eq!(log.append(&[0; 64]).unwrap(), 1);
}

#[test]
fn readers_see_only_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = filled(dir.path(), LogConfig::default(), 3, 10);
    log.append(b"pending").unwrap();
    assert_eq!(read_all(&log, 1).len(), 3);
    assert_eq!(read_all(&log, 4), vec![]);
    assert!(matches!(log.read_from(6), Err(LogError::LsnOutOfRange { .. })));
    log.sync().unwrap();
    assert_eq!(read_all(&log, 4), vec![(4, b"pending".to_vec())]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path(), LogConfig::default()).unwrap();
    let err = FileStorage::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
}
