//! Issue 14: packet readers as processes of their own (`cma --role reader`) in front of engines
//! that read no datagrams (`cma --role engine`), with real processes — a throwaway PostgreSQL
//! 15, three clustered `nats-server`s, two readers, an active engine and a standby.
//!
//! 50 senders (`assim loadgen`: the real nanoprobe shell with its disk spool, each given both
//! readers' addresses) push 100,000 reports while the active engine is killed with SIGKILL
//! three times, a reader twice and one NATS server once, in an order and at moments drawn from
//! a printed seed (`ASSIM_TEST_SEED` replays it). Every report is applied exactly once —
//! through and count 2,000 for every sender in PostgreSQL — with one event each, and the event
//! ids run without gap or repeat.
//!
//! Without PostgreSQL or nats-server installed the test prints `SKIP:` (a failure under
//! `CI=true`). `ASSIM_KEEP=1` keeps the directory (the processes' logs).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assim::client::Client;
use assim_util::testing::{Nats, Postgres};
use engines::wait_for;

mod engines;

/// One `cma` process of the cluster, restartable with the same arguments.
struct Proc {
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// The engines' API.
    client: Option<Client>,
}

impl Proc {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_assim"))
            .arg("cma")
            .args(&self.args)
            .env("ASSIM_LOG", "info")
            .env_remove("ASSIM_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again if it exited (what systemd's `Restart=always` does): a
    /// reader that cannot reach a NATS quorum at its start exits with an error.
    fn keep_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && c.try_wait().unwrap().is_some()
        {
            self.child = None;
            self.start();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    fn active(&self) -> bool {
        self.child.is_some()
            && self.client.as_ref().is_some_and(|c| {
                c.status().ok().and_then(|s| s.engine).is_some_and(|e| e.role == "active")
            })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Setup {
    base: PathBuf,
    store: String,
    queue: String,
    keep: bool,
}

impl Setup {
    fn proc(&self, name: &str, role: &str, extra: &[String]) -> Proc {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let dir = self.base.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let first = self.base.join("engine-1");
        if dir != first {
            // Every process of the cluster shares the CMA's identity.
            for f in ["node_id", "node.key"] {
                std::fs::copy(first.join(f), dir.join(f)).unwrap();
                std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }
        }
        let mut args: Vec<String> = vec![
            "--role".into(),
            role.into(),
            "--data-dir".into(),
            dir.to_str().unwrap().into(),
            "--store".into(),
            self.store.clone(),
            "--queue".into(),
            self.queue.clone(),
            "--engine-lease".into(),
            "2s".into(),
            "--open-enrollment".into(),
        ];
        args.extend(extra.iter().cloned());
        Proc { name: name.into(), dir, args, child: None, client: None }
    }

    fn engine(&self, name: &str) -> Proc {
        let api = free_tcp();
        let listen = free_udp();
        let mut p = self.proc(
            name,
            "engine",
            &["--api".into(), api.to_string(), "--listen".into(), listen.to_string()],
        );
        p.start();
        let client = Client::new(&format!("http://{api}"), None);
        wait_for(&format!("{name}'s API"), Duration::from_secs(30), || client.status().is_ok());
        p.client = Some(client.with_token_file(&p.dir.join("api.token")));
        p
    }

    fn reader(&self, name: &str, listen: SocketAddr) -> Proc {
        let mut p = self.proc(name, "reader", &["--listen".into(), listen.to_string()]);
        p.start();
        wait_for(&format!("{name} to start"), Duration::from_secs(30), || {
            p.log().contains("CMA packet reader started")
        });
        p
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if self.keep {
            println!("kept {}", self.base.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

fn events_since(c: &Client, since: u64) -> anyhow::Result<Vec<assim_api::Event>> {
    let mut out = Vec::new();
    let mut cursor = since;
    loop {
        let batch = c.events(cursor, 1000, None)?;
        let Some(last) = batch.last() else { return Ok(out) };
        cursor = last.id;
        out.extend(batch);
    }
}

/// Starts the cluster's processes: an engine that is active, a standby, and two readers.
fn start(setup: &Setup) -> (Vec<Proc>, Vec<Proc>, [SocketAddr; 2]) {
    let mut engines = vec![setup.engine("engine-1")];
    wait_for("engine-1 to be active", Duration::from_secs(30), || engines[0].active());
    engines.push(setup.engine("engine-2"));
    let addrs = [free_udp(), free_udp()];
    let readers = vec![setup.reader("reader-1", addrs[0]), setup.reader("reader-2", addrs[1])];
    (engines, readers, addrs)
}

fn setup(pg: &Postgres, nats: &Nats, name: &str) -> Setup {
    pg.create_database(name);
    let base = std::env::temp_dir().join(format!("assim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    Setup {
        base,
        store: pg.url(name),
        queue: nats.url(),
        keep: std::env::var_os("ASSIM_KEEP").is_some(),
    }
}

/// `assim loadgen` with both readers' addresses: sender i starts at reader i mod 2.
fn loadgen(
    setup: &Setup,
    addrs: &[SocketAddr; 2],
    senders: usize,
    reports: u64,
    window: u64,
) -> Child {
    let cma = addrs.map(|a| a.to_string()).join(",");
    Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["loadgen", "--cma", &cma])
        .args(["--senders", &senders.to_string(), "--reports", &reports.to_string()])
        .args(["--window", &window.to_string(), "--batch", &(window / 2).to_string()])
        .arg("--data-dir")
        .arg(setup.base.join("senders"))
        .env("ASSIM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(setup.base.join("senders.log")).unwrap())
        .spawn()
        .expect("start the senders")
}

/// Every sender's reports applied exactly once (PostgreSQL's count per sender) with one event
/// each, and event ids without gap or repeat.
fn check_applied_once(setup: &Setup, engines: &[Proc], senders: usize, reports: u64) {
    let db = assim_store_postgres::Store::open(&setup.store).unwrap();
    let applied = wait_for("every report applied", Duration::from_secs(60), || {
        db.applied().unwrap().values().filter(|a| a.through == reports).count() == senders
    });
    println!("the last reports applied {} ms after their acknowledgement", applied.as_millis());
    engines::assert_applied_once(&db.applied().unwrap(), senders, reports);
    // An engine that took over while a NATS election held up its start may be taken over in
    // turn: read from whichever engine answers.
    let mut events = Vec::new();
    wait_for("the events from an active engine", Duration::from_secs(60), || {
        engines
            .iter()
            .filter(|e| e.active())
            .any(|e| events_since(e.client.as_ref().unwrap(), 0).map(|ev| events = ev).is_ok())
    });
    let last = db.last_event_id().unwrap();
    assert_eq!(events.len() as u64, last);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1, "event ids 1, 2, 3, … with no gap or repeat");
    }
    let n = events.iter().filter(|e| e.kind == assim_cma::EventKind::LocalEvent).count();
    assert_eq!(n as u64, senders as u64 * reports, "one event per report");
}

fn wait_senders(senders: Child, within: Duration) {
    let mut senders = senders;
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = senders.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the senders did not finish within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = senders.wait_with_output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(status.success(), "the senders failed: {status}");
}

/// The readers take the senders' reports, the engine without a socket applies them once, and
/// its acknowledgements of a killed reader's senders come from the other reader after they
/// moved there.
#[test]
fn two_readers_feed_one_engine_and_a_killed_readers_senders_move_to_the_other() {
    let Some(pg) = Postgres::start() else { return };
    let Some(nats) = Nats::cluster() else { return };
    let setup = setup(&pg, &nats, "readers_small");
    let (engines, mut readers, addrs) = start(&setup);
    const SENDERS: usize = 10;
    const REPORTS: u64 = 4000;
    let senders = loadgen(&setup, &addrs, SENDERS, REPORTS, 32);
    let db = assim_store_postgres::Store::open(&setup.store).unwrap();
    wait_for("a tenth of the reports applied", Duration::from_secs(60), || {
        db.applied().unwrap().values().map(|a| a.count).sum::<u64>() >= REPORTS
    });
    readers[0].kill();
    let killed_at = Instant::now();
    wait_senders(senders, Duration::from_secs(120));
    println!("the senders finished {} ms after reader-1's kill", killed_at.elapsed().as_millis());
    check_applied_once(&setup, &engines, SENDERS, REPORTS);
    for p in engines.iter().chain(&readers) {
        assert!(!p.log().contains("panicked"), "{}: {}", p.name, p.log());
    }
}

#[test]
fn reader_engine_and_nats_kills_under_load_lose_nothing_and_apply_nothing_twice() {
    use rand::Rng as _;
    use rand::seq::SliceRandom as _;
    const SENDERS: usize = 50;
    const REPORTS: u64 = 2000;
    let Some(pg) = Postgres::start() else { return };
    let Some(mut nats) = Nats::cluster() else { return };
    let mut rng = engines::seeded_rng();
    let setup = setup(&pg, &nats, "readers");
    let (mut engines, mut readers, addrs) = start(&setup);
    // A small window: the load outlasts the kills (each takeover waits out the 2 s lease).
    let mut senders = loadgen(&setup, &addrs, SENDERS, REPORTS, 16);

    #[derive(Clone, Copy, Debug)]
    enum Kill {
        Engine,
        Reader,
        Nats,
    }
    let mut schedule =
        vec![Kill::Engine, Kill::Engine, Kill::Engine, Kill::Reader, Kill::Reader, Kill::Nats];
    schedule.shuffle(&mut rng);
    println!("kill schedule: {schedule:?}");
    let started = Instant::now();
    let mut reader_kills = 0;
    let mut down: Option<usize> = None;
    for (k, kill) in schedule.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..800)));
        assert!(
            senders.try_wait().unwrap().is_none(),
            "the senders finished before kill {k}: make the load larger"
        );
        for p in engines.iter_mut().chain(&mut readers) {
            p.keep_running();
        }
        match kill {
            Kill::Engine => {
                let active = engines.iter().position(Proc::active).expect("an active engine");
                engines[active].kill();
                let standby = engines.iter().position(|e| e.child.is_some()).expect("a standby");
                let took = wait_for("the standby to take over", Duration::from_secs(30), || {
                    engines[standby].active()
                });
                println!(
                    "{:>5.1}s {} killed; {} took over in {} ms",
                    started.elapsed().as_secs_f64(),
                    engines[active].name,
                    engines[standby].name,
                    took.as_millis()
                );
                let n = engines.len() + 1;
                engines.push(setup.engine(&format!("engine-{n}")));
            }
            Kill::Reader => {
                // The other reader is up again first: one always answers.
                if let Some(d) = down.take() {
                    readers[d].start();
                }
                let r = reader_kills % 2;
                reader_kills += 1;
                readers[r].kill();
                down = Some(r);
                println!("{:>5.1}s {} killed", started.elapsed().as_secs_f64(), readers[r].name);
            }
            Kill::Nats => {
                let server = rng.gen_range(0..nats.len());
                nats.kill(server);
                println!("{:>5.1}s NATS server {server} killed", started.elapsed().as_secs_f64());
            }
        }
    }
    if let Some(d) = down.take() {
        readers[d].start();
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = senders.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the senders did not finish in 10 minutes");
        for p in engines.iter_mut().chain(&mut readers) {
            p.keep_running();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = senders.wait_with_output().unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(status.success(), "the senders failed: {status}");
    println!("all reports acknowledged {:.1} s after the start", started.elapsed().as_secs_f64());
    check_applied_once(&setup, &engines, SENDERS, REPORTS);
    for p in engines.iter().chain(&readers) {
        let log = p.log();
        assert!(!log.contains("panicked"), "{}: {log}", p.name);
    }
    let starts: usize =
        readers.iter().map(|r| r.log().matches("packet reader started").count()).sum();
    assert!(starts >= 4, "each reader started, and again after its kill: {starts} starts");
}
