//! Model-based property test: random appends, syncs, crashes, reopens, removals, position
//! updates, reads and injected faults against the fault-injecting `MemStorage`, checked after
//! every step against a trivial in-memory model of what the log promises.

use std::collections::BTreeMap;

use assim_log::{Log, LogConfig, LogError, MemStorage, SEGMENT_HEADER_LEN, Storage};
use proptest::prelude::*;

const NAMES: [&str; 3] = ["sender", "engine", "audit"];
const MAX_RECORD: usize = 300;

#[derive(Debug, Clone)]
enum Op {
    Append {
        len: usize,
        fill: u8,
    },
    Sync,
    /// Power loss: drop the log, keep only what the storage made durable (`torn`: plus a random
    /// prefix of the rest), reopen.
    Crash {
        torn: bool,
    },
    /// Process restart without power loss: drop the log and reopen the same storage.
    Reopen,
    RemoveThrough {
        frac: u8,
        beyond: bool,
    },
    SetPosition {
        name: usize,
        frac: u8,
    },
    Read {
        frac: u8,
    },
    ShortWrites(bool),
    FailSync,
    FailDirSync,
    DiskSpace {
        extra: u16,
    },
    ClearFaults,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..=MAX_RECORD + 1, any::<u8>()).prop_map(|(len, fill)| Op::Append { len, fill }),
        5 => Just(Op::Sync),
        2 => any::<bool>().prop_map(|torn| Op::Crash { torn }),
        1 => Just(Op::Reopen),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(frac, b)| Op::RemoveThrough { frac, beyond: b }),
        2 => (0..NAMES.len(), any::<u8>()).prop_map(|(name, frac)| Op::SetPosition { name, frac }),
        2 => any::<u8>().prop_map(|frac| Op::Read { frac }),
        1 => any::<bool>().prop_map(Op::ShortWrites),
        1 => Just(Op::FailSync),
        1 => Just(Op::FailDirSync),
        1 => (0..1500u16).prop_map(|extra| Op::DiskSpace { extra }),
        1 => Just(Op::ClearFaults),
    ]
}

/// What the log promises, tracked the simplest way possible.
#[derive(Debug)]
struct Model {
    /// Payload of LSN `i + 1`, for every LSN below `next`.
    records: Vec<Vec<u8>>,
    durable: u64,
    first: u64,
    positions: BTreeMap<String, u64>,
    /// Position maps the positions file may hold after a crash.
    on_disk_positions: Vec<BTreeMap<String, u64>>,
    poisoned: bool,
    appended: u64,
}

impl Model {
    fn next(&self) -> u64 {
        self.records.len() as u64 + 1
    }
}

fn payload(counter: u64, len: usize, fill: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (counter as u8).wrapping_mul(7).wrapping_add(fill) ^ (i as u8).wrapping_mul(13))
        .collect()
}

fn config(limited: bool, write_buffer_size: usize) -> LogConfig {
    LogConfig {
        segment_size: 600,
        max_record_size: MAX_RECORD,
        max_disk_bytes: limited.then_some(2400),
        write_buffer_size,
    }
}

fn segment_bytes(mem: &MemStorage) -> u64 {
    mem.file_names().iter().filter(|n| n.ends_with(".seg")).map(|n| mem.file_len(n).unwrap()).sum()
}

/// Drops nothing: reopens and reconciles the model with what survived.
fn reopen(
    mem: &MemStorage,
    cfg: &LogConfig,
    m: &mut Model,
) -> Result<Log<MemStorage>, TestCaseError> {
    mem.clear_faults();
    let log = match Log::open(mem.clone(), cfg.clone()) {
        Ok(log) => log,
        Err(e) => return Err(TestCaseError::fail(format!("reopen after a crash failed: {e}"))),
    };
    let n = log.next_lsn();
    prop_assert!(
        n > m.durable && n <= m.next(),
        "recovered next LSN {n} outside {}..={} (durable {})",
        m.durable + 1,
        m.next(),
        m.durable
    );
    m.records.truncate(n as usize - 1);
    m.durable = n - 1;
    prop_assert_eq!(log.durable_lsn(), n - 1);
    prop_assert!(
        log.first_lsn() <= m.first,
        "removed data lost: first {} > {}",
        log.first_lsn(),
        m.first
    );
    m.first = log.first_lsn();
    let positions: BTreeMap<String, u64> =
        log.positions().map(|(k, v)| (k.to_owned(), v)).collect();
    prop_assert!(
        m.on_disk_positions.contains(&positions),
        "positions {positions:?} not among {:?}",
        m.on_disk_positions
    );
    m.positions = positions.clone();
    m.on_disk_positions = vec![positions];
    m.poisoned = false;
    prop_assert_eq!(log.verify().map_err(|e| TestCaseError::fail(e.to_string()))?, n - m.first);
    check_read(&log, m, m.first)?;
    prop_assert_eq!(log.disk_bytes(), segment_bytes(mem));
    Ok(log)
}

fn check_read(log: &Log<MemStorage>, m: &Model, from: u64) -> Result<(), TestCaseError> {
    let got: Vec<(u64, Vec<u8>)> = log
        .read_from(from)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want: Vec<(u64, Vec<u8>)> =
        (from..=m.durable).map(|l| (l, m.records[l as usize - 1].clone())).collect();
    prop_assert_eq!(got.len(), want.len(), "read from {} (durable {})", from, m.durable);
    for (g, w) in got.iter().zip(&want) {
        prop_assert_eq!(g, w);
    }
    Ok(())
}

fn expect_poisoned<T: std::fmt::Debug>(r: Result<T, LogError>) -> Result<(), TestCaseError> {
    prop_assert!(matches!(r, Err(LogError::Poisoned { .. })), "expected Poisoned, got {r:?}");
    Ok(())
}

fn run(seed: u64, limited: bool, write_buffer: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let cfg = config(limited, write_buffer);
    let mem = MemStorage::new(seed);
    let mut log = Log::open(mem.clone(), cfg.clone()).unwrap();
    let mut m = Model {
        records: Vec::new(),
        durable: 0,
        first: 1,
        positions: BTreeMap::new(),
        on_disk_positions: vec![BTreeMap::new()],
        poisoned: false,
        appended: 0,
    };
    for op in ops {
        let before_next = m.next();
        match op {
            Op::Append { len, fill } => {
                m.appended += 1;
                let p = payload(m.appended, len, fill);
                let r = log.append(&p);
                if m.poisoned {
                    expect_poisoned(r)?;
                    continue;
                }
                match r {
                    Ok(lsn) => {
                        prop_assert_eq!(lsn, before_next);
                        m.records.push(p);
                    }
                    Err(LogError::RecordTooLarge { .. }) => prop_assert!(len > MAX_RECORD),
                    Err(LogError::Full { disk_bytes, needed, limit, .. }) => {
                        prop_assert!(limited && disk_bytes + needed > limit);
                    }
                    Err(LogError::DiskFull { .. }) => {}
                    Err(LogError::SyncFailed { .. }) => m.poisoned = true,
                    Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                }
            }
            Op::Sync => {
                let r = log.sync();
                if m.poisoned {
                    expect_poisoned(r)?;
                    continue;
                }
                match r {
                    Ok(d) => {
                        prop_assert_eq!(d, before_next - 1);
                        m.durable = d;
                        m.on_disk_positions = vec![m.positions.clone()];
                    }
                    Err(LogError::DiskFull { .. }) => {}
                    Err(LogError::SyncFailed { durable_lsn, .. }) => {
                        prop_assert_eq!(durable_lsn, log.durable_lsn());
                        m.poisoned = true;
                        m.on_disk_positions.push(m.positions.clone());
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("sync: {e}"))),
                }
            }
            Op::Crash { torn } => {
                drop(log);
                mem.crash(torn);
                log = reopen(&mem, &cfg, &mut m)?;
            }
            Op::Reopen => {
                drop(log);
                log = reopen(&mem, &cfg, &mut m)?;
            }
            Op::RemoveThrough { frac, beyond } => {
                let span = m.durable + 1 - m.first;
                let lsn =
                    if beyond { m.next() + 3 } else { m.first - 1 + span * u64::from(frac) / 255 };
                let r = log.remove_through(lsn);
                if m.poisoned {
                    expect_poisoned(r)?;
                    continue;
                }
                m.first = m.first.max(lsn.min(m.durable) + 1);
                match r {
                    Ok(_) | Err(LogError::DiskFull { .. }) => {}
                    Err(LogError::SyncFailed { .. }) => m.poisoned = true,
                    Err(e) => return Err(TestCaseError::fail(format!("remove_through: {e}"))),
                }
            }
            Op::SetPosition { name, frac } => {
                let lsn = (m.next() - 1) * u64::from(frac) / 255;
                let r = log.set_position(NAMES[name], lsn);
                if m.poisoned {
                    expect_poisoned(r)?;
                    continue;
                }
                r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                m.positions.insert(NAMES[name].to_owned(), lsn);
            }
            Op::Read { frac } => {
                let from = m.first + (m.next() - m.first) * u64::from(frac) / 255;
                check_read(&log, &m, from)?;
            }
            Op::ShortWrites(on) => mem.set_short_writes(on),
            Op::FailSync => mem.fail_next_syncs(1),
            Op::FailDirSync => mem.fail_next_dir_syncs(1),
            Op::DiskSpace { extra } => mem.set_capacity(Some(mem.used_bytes() + u64::from(extra))),
            Op::ClearFaults => mem.clear_faults(),
        }
        // Invariants after every step.
        prop_assert_eq!(log.next_lsn(), m.next());
        let d = log.durable_lsn();
        prop_assert!(d >= m.durable && d < m.next(), "durable {} vs model {}", d, m.durable);
        m.durable = d;
        prop_assert_eq!(log.first_lsn(), m.first);
        prop_assert_eq!(log.is_poisoned(), m.poisoned);
        let positions: BTreeMap<String, u64> =
            log.positions().map(|(k, v)| (k.to_owned(), v)).collect();
        prop_assert_eq!(&positions, &m.positions);
        if limited {
            // A crash while a consumed active segment is replaced may leave one extra header.
            prop_assert!(log.disk_bytes() <= 2400 + SEGMENT_HEADER_LEN);
        }
    }
    // Finally: a clean sync (if possible) and a crash lose nothing that was synced.
    mem.clear_faults();
    if !m.poisoned {
        m.durable = log.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
        m.on_disk_positions = vec![m.positions.clone()];
        prop_assert_eq!(log.disk_bytes(), segment_bytes(&mem));
    }
    drop(log);
    mem.crash(true);
    reopen(&mem, &cfg, &mut m)?;
    Ok(())
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES overrides (a long hunt: PROPTEST_CASES=100000).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model_under_faults_and_crashes(
        seed in any::<u64>(),
        limited in any::<bool>(),
        write_buffer in prop_oneof![Just(0usize), 0..700usize],
        ops in prop::collection::vec(op(), 1..150),
    ) {
        run(seed, limited, write_buffer, ops)?;
    }
}
