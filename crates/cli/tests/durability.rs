//! Nothing lost, nothing applied twice: 50 senders push 100,000 spooled reports at a CMA that is
//! killed with SIGKILL at random moments (at least five times) and restarted; the senders'
//! process is killed mid-send once too and restarted on the same spools. At the end every report
//! was applied exactly once and the event ids have no gap and no duplicate.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use rand::{Rng, SeedableRng};

const SENDERS: usize = 50;
const REPORTS: u64 = 2000;

fn loadgen(c: &Cluster) -> Child {
    Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["loadgen", "--cma", &c.cma_listen.to_string()])
        .args(["--senders", &SENDERS.to_string(), "--reports", &REPORTS.to_string()])
        // A modest window per sender, as a real nanoprobe would have: the run then lasts long
        // enough for the kill schedule on a fast machine too.
        .args(["--window", "32", "--batch", "16"])
        .arg("--data-dir")
        .arg(c.dir.join("senders"))
        .env("ASSIM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the senders")
}

/// A CMA with open enrollment and no nanoprobes: the senders enroll themselves.
fn cma_only() -> Cluster {
    let spec = ClusterSpec {
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 0)
    };
    Cluster::new(spec, false).unwrap()
}

#[test]
fn cma_and_sender_crashes_lose_nothing_and_apply_nothing_twice() {
    let seed: u64 = std::env::var("ASSIM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (ASSIM_TEST_SEED={seed} replays the kill schedule)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = cma_only();
    let mut senders = loadgen(&c);
    let started = Instant::now();
    let mut cma_kills = 0;
    let mut sender_kills = 0;
    let finished = loop {
        if let Some(status) = senders.try_wait().unwrap() {
            assert!(status.success(), "the senders failed: {status}");
            if cma_kills >= 5 && sender_kills >= 1 {
                break senders;
            }
            // Finished before enough chaos: not what this test is about.
            panic!("the senders finished after only {cma_kills} CMA kills; make the load larger");
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the senders did not finish within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..300)));
        if cma_kills < 5 || rng.gen_bool(0.3) {
            c.stop_cma(true).unwrap();
            cma_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.gen_range(20..300)));
            c.start_cma().unwrap();
        }
        if cma_kills == 2 && sender_kills == 0 {
            let _ = senders.kill();
            let _ = senders.wait();
            sender_kills += 1;
            senders = loadgen(&c);
        }
        if cma_kills >= 5 && sender_kills >= 1 {
            let status = senders.wait().unwrap();
            assert!(status.success(), "the senders failed: {status}");
            break senders;
        }
    };
    let out = finished.wait_with_output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "CMA killed {cma_kills} times, senders killed {sender_kills} time(s), {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every event once, no gap: read before stopping the CMA.
    let events = c.events_since(0).unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1, "event ids must be 1, 2, 3, … with no gap or repeat");
    }
    c.stop_cma(false).unwrap();
    let store = assim_store_sqlite::Store::open(&c.dir.join("cma").join("cma.sqlite")).unwrap();
    let applied = store.applied().unwrap();
    assert_eq!(applied.len(), SENDERS, "every sender's reports were applied");
    for (node, a) in &applied {
        assert_eq!(
            (a.through, a.count),
            (REPORTS, REPORTS),
            "sender {node}: applied through {} in {} applications",
            a.through,
            a.count
        );
    }
}

#[test]
fn torn_inbox_tail_is_recovered_and_reported() {
    let mut c = cma_only();
    let status = Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["loadgen", "--cma", &c.cma_listen.to_string(), "--senders", "2", "--reports", "100"])
        .arg("--data-dir")
        .arg(c.dir.join("senders"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    c.stop_cma(true).unwrap();
    // A crash in the middle of an append: half a record at the end of the active segment.
    let inbox = c.dir.join("cma").join("inbox");
    let mut segments: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("an inbox segment");
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(last, &bytes).unwrap();
    c.start_cma().unwrap();
    let log = std::fs::read_to_string(c.dir.join("cma.log")).unwrap();
    assert!(log.contains("torn tail"), "the CMA should report the torn tail:\n{log}");
    assert_eq!(
        c.client.status().unwrap().nodes.len(),
        2,
        "the CMA serves its state after recovery"
    );
}

#[test]
fn full_inbox_disk_refuses_without_loss_and_recovers() {
    let mut c = cma_only();
    c.stop_cma(false).unwrap();
    // The inbox on a 256 KiB file system of its own, so it fills up long before the rest.
    let inbox = c.dir.join("cma").join("inbox");
    let mount = |opts: &str| {
        Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(&inbox).status()
    };
    if !mount("size=256k").map(|s| s.success()).unwrap_or(false) {
        assim_util::testing::skip(
            "full-disk test: cannot mount a tmpfs here (needs root, as in CI)",
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(inbox.clone());
    c.start_cma().unwrap();
    let mut senders = Command::new(env!("CARGO_BIN_EXE_assim"))
        .args([
            "loadgen",
            "--cma",
            &c.cma_listen.to_string(),
            "--senders",
            "4",
            "--reports",
            "3000",
        ])
        .arg("--data-dir")
        .arg(c.dir.join("senders"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The disk fills: the CMA says so, acknowledges nothing more, and keeps serving its API.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(c.dir.join("cma.log")).unwrap_or_default();
        if log.contains("cannot append to the inbox")
            || log.contains("cannot make the inbox durable")
        {
            break;
        }
        assert!(
            senders.try_wait().unwrap().is_none(),
            "the senders finished although the inbox disk is tiny"
        );
        assert!(Instant::now() < deadline, "the CMA never reported the full inbox disk:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.client.status().unwrap().nodes.len(), 4, "the API keeps serving");
    assert!(c.client.metrics().unwrap().contains("assim_cma_rejected_total"));
    // Space comes back: everything is delivered, once.
    let status =
        Command::new("mount").args(["-o", "remount,size=256m"]).arg(&inbox).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = senders.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the senders did not finish after the disk got space");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    c.stop_cma(false).unwrap();
    let store = assim_store_sqlite::Store::open(&c.dir.join("cma").join("cma.sqlite")).unwrap();
    for (node, a) in store.applied().unwrap() {
        assert_eq!((a.through, a.count), (3000, 3000), "sender {node}");
    }
}
