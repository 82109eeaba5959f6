//! Issue 14: nanoprobes that know several CMA addresses follow the active engine without a
//! floating address — real processes: a throwaway PostgreSQL 15 cluster
//! (`assim_util::testing::Postgres`), two `cma --store postgres://…` engines listening on
//! different loopback addresses (127.0.0.2 and 127.0.0.3, same port; Linux routes all of
//! 127/8 to `lo`), a join token made with `--advertise` for both, and nanoprobes given only
//! the token (no `--cma`).
//!
//! The active engine is killed with SIGKILL; the standby takes over at its own address; the
//! running nanoprobes go on with it (the ring stays, a crash gives `host.down` from the new
//! engine, event ids without gap or repeat); a nanoprobe restarted from its pin file and a new
//! one enrolled with the token, both sending first to the dead engine's address, fail over to
//! the new one by themselves and join the ring.
//!
//! Without PostgreSQL installed the test prints `SKIP:` (a failure under `CI=true`).
//! `ASSIM_KEEP=1` keeps the directory (the processes' logs).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assim::client::Client;
use assim_api::StatusView;
use assim_util::testing::Postgres;
use engines::wait_for;

mod engines;

const ASSIM: &str = env!("CARGO_BIN_EXE_assim");
const LEASE: Duration = Duration::from_secs(2);

/// A UDP port free on every one of `ips`.
fn common_udp_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let first = UdpSocket::bind(SocketAddrV4::new(ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| UdpSocket::bind(SocketAddrV4::new(*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no UDP port free on all of {ips:?}");
}

/// The processes of the test; dropping it kills them all and removes the directory.
struct Lab {
    dir: PathBuf,
    keep: bool,
    store: String,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn spawn(&mut self, name: &str, args: &[String]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(ASSIM)
            .args(args)
            .env_remove("ASSIM_API_TOKEN")
            .env_remove("ASSIM_TOKEN")
            .env_remove("ASSIM_CMA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_owned(), child));
    }

    fn kill(&mut self, name: &str) {
        let i = self.children.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut child) = self.children.remove(i);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// Starts an engine listening on `listen`, its API on a free loopback port; returns its
    /// client once the API answers.
    fn engine(&mut self, name: &str, listen: SocketAddr) -> Client {
        let api = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let data = self.dir.join(name);
        let store = self.store.clone();
        let args: Vec<String> = [
            "cma",
            "--listen",
            &listen.to_string(),
            "--api",
            &api.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
            "--store",
            &store,
            "--engine-lease",
            "2s",
        ]
        .map(String::from)
        .to_vec();
        self.spawn(name, &args);
        let client = Client::new(&format!("http://{api}"), None);
        wait_for(&format!("the API of {name}"), Duration::from_secs(20), || {
            client.status().is_ok()
        });
        client.with_token_file(&data.join("api.token"))
    }

    /// Starts nanoprobe `name` on 127.0.0.`ip`, with the join token or (None) its pin only.
    fn nanoprobe(&mut self, name: &str, ip: u8, token: Option<&str>) {
        let ip = Ipv4Addr::new(127, 0, 0, ip);
        let listen = UdpSocket::bind(SocketAddrV4::new(ip, 0)).unwrap().local_addr().unwrap();
        let data = self.dir.join(name);
        let mut args: Vec<String> = [
            "nanoprobe",
            "--listen",
            &listen.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
            "--hostname",
            name,
        ]
        .map(String::from)
        .to_vec();
        if let Some(t) = token {
            args.extend(["--token".to_owned(), t.to_owned()]);
        }
        self.spawn(name, &args);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn copy_identity(from: &Path, to: &Path) {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new().mode(0o700).create(to).unwrap();
    for f in ["node_id", "node.key"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
        std::fs::set_permissions(to.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn role(c: &Client) -> String {
    c.status().ok().and_then(|s| s.engine).map(|e| e.role).unwrap_or_default()
}

/// Every host in `names` up, with two neighbours (a ring of three or more).
fn ring_of(s: &StatusView, names: &[&str]) -> bool {
    names.iter().all(|name| {
        s.nodes.iter().any(|n| n.hostname == *name && n.state == "up" && n.neighbours.len() == 2)
    })
}

fn events_since(c: &Client, since: u64) -> Vec<assim_api::Event> {
    let mut out: Vec<assim_api::Event> = Vec::new();
    loop {
        let batch = c.events(out.last().map_or(since, |e| e.id), 1000, None).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Waits for the first event after `since` that matches `pred`.
fn wait_event(
    c: &Client,
    since: u64,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&assim_api::Event) -> bool,
) -> assim_api::Event {
    let t0 = Instant::now();
    let mut cursor = since;
    loop {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        for e in c.events(cursor, 1000, Some(Duration::from_secs(1))).unwrap() {
            cursor = e.id;
            if pred(&e) {
                return e;
            }
        }
    }
}

#[test]
fn nanoprobes_fail_over_to_a_standby_cma_at_another_address() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("addrs");
    let dir = std::env::temp_dir().join(format!("assim-addrs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        dir: dir.clone(),
        keep: std::env::var_os("ASSIM_KEEP").is_some(),
        store: pg.url("addrs"),
        children: Vec::new(),
    };
    let (ip_a, ip_b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let port = common_udp_port(&[ip_a, ip_b]);
    let (addr_a, addr_b) = (SocketAddr::from((ip_a, port)), SocketAddr::from((ip_b, port)));

    // Engine A first (it takes the lease), then B with A's identity: it stands by.
    let a = lab.engine("cma-a", addr_a);
    wait_for("engine A to be active", Duration::from_secs(10), || role(&a) == "active");
    copy_identity(&dir.join("cma-a"), &dir.join("cma-b"));
    let b = lab.engine("cma-b", addr_b);
    assert_eq!(role(&b), "standby");

    // One token, both addresses, A's first.
    let out = Command::new(ASSIM)
        .args(["cma", "--data-dir", dir.join("cma-a").to_str().unwrap(), "--store", &lab.store])
        .args(["token", "create", "--ttl", "1h"])
        .args(["--advertise", &addr_a.to_string(), "--advertise", &addr_b.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let decoded = assim_seal::JoinToken::decode(&token).unwrap();
    assert_eq!(decoded.cma_addrs, [addr_a, addr_b]);

    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        lab.nanoprobe(name, 11 + i as u8, Some(&token));
    }
    let ring = |c: &Client, names: &[&str], what: &str| {
        wait_for(what, Duration::from_secs(30), || c.status().is_ok_and(|s| ring_of(&s, names)))
    };
    ring(&a, &["n1", "n2", "n3"], "a ring of three with engine A");
    // Each has heard from engine A (its check set), so each has a session with it to lose.
    wait_for("the nanoprobes to hear from engine A", Duration::from_secs(20), || {
        ["n1", "n2", "n3"].iter().all(|n| lab.log(n).contains("check set applied"))
    });

    // SIGKILL the active engine: B takes over at its own address, and writes to the ring
    // members (their peer sets): each follows it there (its log says so, with B's address)
    // and registers with it as with a restarted CMA. Timed from the kill, polled every 50 ms.
    lab.kill("cma-a");
    let killed = Instant::now();
    let follows =
        format!("the CMA answers from another address; sending there from={addr_a} to={addr_b}");
    let (mut took, mut followed) = (None, [None; 3]);
    wait_for(
        "engine B to take over and the nanoprobes to follow it",
        Duration::from_secs(30),
        || {
            if took.is_none() && role(&b) == "active" {
                took = Some(killed.elapsed());
            }
            for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
                let log = lab.log(n);
                if followed[i].is_none()
                    && log.contains(&follows)
                    && log.contains("the CMA restarted; registering again")
                {
                    followed[i] = Some(killed.elapsed());
                }
            }
            took.is_some() && followed.iter().all(Option::is_some)
        },
    );
    let took = took.unwrap();
    let last = *followed.iter().flatten().max().unwrap();
    println!("takeover: {} ms after SIGKILL (lease {} ms)", took.as_millis(), LEASE.as_millis());
    println!(
        "the three nanoprobes followed engine B to its address {} ms after SIGKILL",
        last.as_millis()
    );
    assert!(took < LEASE * 3, "the takeover took {took:?}");
    ring(&b, &["n1", "n2", "n3"], "the ring of three under engine B");
    let before = events_since(&b, 0).last().map_or(0, |e| e.id);

    // A crash is detected by the new engine: the neighbours' reports reach it.
    lab.kill("n2");
    let crashed = Instant::now();
    let down = wait_event(&b, before, Duration::from_secs(20), "host.down of n2 from B", |e| {
        e.kind.name() == "host.down" && e.hostname == "n2"
    });
    println!(
        "host.down of n2 {} ms after its crash, event {}",
        crashed.elapsed().as_millis(),
        down.id
    );

    // n2 restarted from its pin file (no token, no --cma) and a new n4 enrolled with the token:
    // both send first to A's dead address, move to B by themselves and join the ring.
    lab.nanoprobe("n2", 12, None);
    lab.nanoprobe("n4", 14, Some(&token));
    let joined = ring(&b, &["n1", "n2", "n3", "n4"], "n2 and n4 in the ring under engine B");
    println!(
        "n2 (pin file) and n4 (token) joined via failover {} ms after start",
        joined.as_millis()
    );
    assert!(joined >= Duration::from_secs(2), "they had to wait out A's silence: {joined:?}");
    for n in ["n2", "n4"] {
        let log = lab.log(n);
        let moves = log.matches("the CMA does not answer at this address").count();
        assert_eq!(moves, 1, "{n} moved once, logged once: {log}");
        assert!(log.contains(&format!("from={addr_a}")) && log.contains(&format!("to={addr_b}")));
    }
    // The metrics file names the current address and counts the move (written every 10 s).
    let prom = dir.join("n4").join("nanoprobe.prom");
    wait_for("n4's metrics to show the failover", Duration::from_secs(15), || {
        std::fs::read_to_string(&prom).is_ok_and(|t| {
            t.contains("assim_nanoprobe_cma_failovers_total 1")
                && t.contains(&format!("assim_nanoprobe_cma_address{{address=\"{addr_b}\"}} 1"))
                && t.contains("assim_nanoprobe_cma_addresses 2")
        })
    });

    // Event ids run on from A's without gap or repeat.
    let events = events_since(&b, 0);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1, "event ids 1, 2, 3, … across the takeover");
    }
    let log = lab.log("cma-b");
    assert!(log.contains("taking over") && !log.contains("panicked"), "{log}");
}
