//! Issue 17 item 5 against real peers: a private `carbon-cache` (Debian graphite-carbon), a real
//! CMA with `--graphite`, a real nanoprobe with `--statistics` (batches every second), values
//! put with `assim stat put`, read back from carbon's whisper files with `whisper-fetch`
//! (python3-whisper).
//!
//! What it shows: the values land under `assim.<host>.<name>.<tagkey>.<tagvalue>` with the
//! time of their batch (counters summed, gauges last); the Prometheus exposition at
//! `/api/v1/statistics/prometheus` shows them and passes `promtool check metrics`; values put
//! while the CMA is stopped reach carbon after its restart with their original times; values
//! put while carbon is stopped wait (one WARN), and reach it when it is back (one INFO), with
//! their original times.
//!
//! On PostgreSQL (issue 14) the queue is in the database: a value queued while carbon is down
//! survives a SIGKILL of the active engine and is sent by the standby that takes over.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assim::cluster::{Cluster, ClusterSpec};

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private carbon-cache: its own config, storage and ports.
struct Carbon {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Carbon {
    fn new(dir: &Path) -> Carbon {
        let (line, pickle, query) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        std::fs::create_dir_all(dir.join("storage/whisper")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("carbon.conf"),
            format!(
                "[cache]\nSTORAGE_DIR = {d}/storage/\nLOCAL_DATA_DIR = {d}/storage/whisper/\n\
                 WHITELISTS_DIR = {d}/storage/lists/\nCONF_DIR = {d}/\nLOG_DIR = {d}/log/\n\
                 PID_DIR = {d}/\nENABLE_LOGROTATION = False\nUSER =\nMAX_CACHE_SIZE = inf\n\
                 MAX_UPDATES_PER_SECOND = inf\nMAX_CREATES_PER_MINUTE = inf\n\
                 LINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {line}\n\
                 ENABLE_UDP_LISTENER = False\nPICKLE_RECEIVER_INTERFACE = 127.0.0.1\n\
                 PICKLE_RECEIVER_PORT = {pickle}\nCACHE_QUERY_INTERFACE = 127.0.0.1\n\
                 CACHE_QUERY_PORT = {query}\nENABLE_TAGS = False\nWHISPER_AUTOFLUSH = True\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage-schemas.conf"),
            "[all]\npattern = .*\nretentions = 1s:1d\n",
        )
        .unwrap();
        Carbon { dir: dir.to_owned(), port: line, child: None, starts: 0 }
    }

    fn start(&mut self) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("carbon{}.out", self.starts))).unwrap();
        let child = Command::new("carbon-cache")
            .arg(format!("--config={}", self.dir.join("carbon.conf").display()))
            .arg(format!(
                "--pidfile={}",
                self.dir.join(format!("carbon{}.pid", self.starts)).display()
            ))
            .args(["--nodaemon", "start"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start carbon-cache");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "carbon-cache did not listen; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The (time, value) points of `path`'s whisper file since `from`.
    fn points(&self, path: &str, from: u64) -> Vec<(u64, f64)> {
        let file = self.dir.join("storage/whisper").join(format!("{}.wsp", path.replace('.', "/")));
        if !file.exists() {
            return Vec::new();
        }
        let out = Command::new("whisper-fetch")
            .arg(format!("--from={}", from.saturating_sub(1)))
            .arg(format!("--until={}", unix_now() + 120))
            .arg(&file)
            .output()
            .expect("run whisper-fetch");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (t, v) = l.split_once('\t')?;
                Some((t.trim().parse().ok()?, v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Waits until `path` holds a point; returns the points.
    fn wait(&self, path: &str, from: u64, what: &str) -> Vec<(u64, f64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = self.points(path, from);
            if !p.is_empty() {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: carbon never got {path}; carbon in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Carbon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether carbon and whisper-fetch are installed; prints the skip (a failure under CI=true)
/// when not.
fn have_carbon() -> bool {
    for cmd in ["carbon-cache", "whisper-fetch"] {
        if !have(cmd) {
            assim_util::testing::skip(format!(
                "{cmd} is not installed (scripts/install-deps installs graphite-carbon and \
                 python3-whisper)"
            ));
            return false;
        }
    }
    true
}

/// Starts `spec`'s cluster with a nanoprobe that sends statistics every second; returns it
/// and the first node's host name, once the ring is formed.
fn start_with_statistics(mut spec: ClusterSpec) -> (Cluster, String) {
    spec.nanoprobe.prefix.extend(["--statistics", "--statistics-interval", "1s"].map(String::from));
    let mut c = Cluster::new(spec, false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let host = c.nodes[0].name.clone();
    (c, host)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn put(c: &Cluster, args: &[&str]) {
    let dir = c.nodes[0].data_dir.display().to_string();
    let mut all = vec!["stat", "put"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", &dir]);
    let (ok, out, err) = c.run_cli(env!("CARGO_BIN_EXE_assim"), &all);
    assert!(ok, "assim stat put {args:?}: {out}{err}");
}

fn cma_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.dir().join("cma.log")).unwrap_or_default()
}

fn metric(c: &Cluster, name: &str) -> u64 {
    let m = c.client.metrics().unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn issue_17_item_5_statistics_reach_a_real_carbon_and_prometheus_through_outages() {
    for cmd in ["carbon-cache", "whisper-fetch", "promtool"] {
        if !have(cmd) {
            assim_util::testing::skip(format!(
                "{cmd} is not installed (scripts/install-deps installs graphite-carbon, \
                 python3-whisper and prometheus)"
            ));
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut carbon = Carbon::new(&tmp.path().join("carbon"));
    carbon.start();
    let mut spec = ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1);
    spec.name_prefix = "stats".into();
    spec.cma_args = vec!["--graphite".into(), format!("127.0.0.1:{}", carbon.port)];
    let (mut c, host) = start_with_statistics(spec);

    // 1. Counters summed, gauges last, tags folded into the path, the batch's time.
    let t0 = unix_now();
    put(&c, &["queue.depth", "5", "--tag", "role=db"]);
    put(&c, &["queue.depth", "17", "--tag", "role=db"]);
    for _ in 0..3 {
        put(&c, &["jobs.done", "2", "--counter"]);
    }
    // (The puts may straddle two intervals: then two points, summing or ending the same.)
    let depth_path = format!("assim.{host}.queue.depth.role.db");
    let jobs_path = format!("assim.{host}.jobs.done");
    wait_until("the first batches in carbon", || {
        carbon.points(&depth_path, t0).last().map(|p| p.1) == Some(17.0)
            && carbon.points(&jobs_path, t0).iter().map(|p| p.1).sum::<f64>() == 6.0
    });
    let t1 = unix_now();
    let depth = carbon.points(&depth_path, t0);
    let jobs = carbon.points(&jobs_path, t0);
    assert!(depth.len() <= 2 && jobs.len() <= 2, "{depth:?} {jobs:?}");
    assert!(
        depth.iter().all(|p| p.1 == 5.0 || p.1 == 17.0),
        "a gauge sends its last value: {depth:?}"
    );
    for (t, _) in depth.iter().chain(&jobs) {
        assert!((t0..=t1).contains(t), "time {t} not within {t0}..{t1}");
    }

    // 2. Prometheus: the latest values, a valid exposition.
    let text = ureq::get(&format!("http://{}/api/v1/statistics/prometheus", c.api))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        text.contains(&format!("assim_stat_queue_depth{{host=\"{host}\",role=\"db\"}} 17\n")),
        "{text}"
    );
    assert!(text.contains(&format!("assim_stat_jobs_done_total{{host=\"{host}\"}} 6\n")), "{text}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    let report =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool: {report}\n{text}");

    // 3. The CMA is down: the batch waits in the nanoprobe's spool and arrives with its time.
    c.stop_cma(false).unwrap();
    let t2 = unix_now();
    put(&c, &["outage.cma", "42"]);
    // Let the interval close while the CMA is away (the batch is spooled, not sent).
    std::thread::sleep(Duration::from_millis(2500));
    let restarted = unix_now();
    c.start_cma().unwrap();
    let p = carbon.wait(
        &format!("assim.{host}.outage.cma"),
        t2,
        "the batch made during the CMA outage",
    );
    assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), [42.0]);
    assert!(
        (t2..restarted).contains(&p[0].0),
        "the spooled batch keeps its time: {} not within {t2}..{restarted}",
        p[0].0
    );

    // 4. Carbon is down: the values wait in the CMA's database, one WARN; carbon back: sent
    // with their original times, one INFO.
    carbon.stop();
    let t3 = unix_now();
    put(&c, &["outage.carbon", "7"]);
    wait_until("the CMA to find carbon down", || {
        metric(&c, "assim_cma_statistics_graphite_down") == 1
            && metric(&c, "assim_cma_statistics_graphite_queued") >= 1
    });
    std::thread::sleep(Duration::from_millis(1500));
    let back = unix_now();
    carbon.start();
    let p = carbon.wait(
        &format!("assim.{host}.outage.carbon"),
        t3,
        "the values that waited for carbon",
    );
    assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), [7.0]);
    assert!((t3..back).contains(&p[0].0), "original time: {} not within {t3}..{back}", p[0].0);
    wait_until("the queue to empty", || {
        metric(&c, "assim_cma_statistics_graphite_queued") == 0
            && metric(&c, "assim_cma_statistics_graphite_down") == 0
    });
    let log = cma_log(&c);
    assert_eq!(log.matches("cannot send statistics to carbon").count(), 1, "{log}");
    assert_eq!(log.matches("carbon is reachable again").count(), 1, "{log}");
    assert!(metric(&c, "assim_cma_statistics_graphite_sent_total") >= 1);
}

/// The entries of a whisper directory (`assim/HOST/check`), or none if it does not exist.
fn entries(carbon: &Carbon, path: &str) -> Vec<String> {
    let dir = carbon.dir.join("storage/whisper").join(path.replace('.', "/"));
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The last value of `path` once carbon has it.
fn last(carbon: &Carbon, path: &str, from: u64) -> f64 {
    carbon.wait(path, from, path).last().unwrap().1
}

#[test]
fn issue_17_item_5_check_perfdata_and_host_figures_reach_carbon_only_when_configured() {
    if !have_carbon() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut carbon = Carbon::new(&tmp.path().join("carbon"));
    carbon.start();
    // One host check on every host, a plugin that prints perfdata: three numbers (one with a
    // quoted label), an undetermined value and an item that does not parse. The shipped host
    // checks are off, so these are the only check series.
    let plugin = tmp.path().join("check_perf");
    std::fs::write(
        &plugin,
        "#!/bin/sh\necho \"OK - fine | time=0.25s;1;2;0 'used space'=42%;80;90 load1=0.5 gone=U junk\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("perf.toml"),
        format!(
            "[[host_check]]\nname = \"load\"\ndisabled = true\n\
             [[host_check]]\nname = \"disk:/\"\ndisabled = true\n\
             [[host_check]]\nname = \"perf:web\"\nkind = \"nagios\"\nargv = [\"{}\"]\n\
             interval = \"1s\"\n",
            plugin.display()
        ),
    )
    .unwrap();
    let mut spec = ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 2);
    spec.name_prefix = "perf".into();
    spec.cma_args = vec![
        "--graphite".into(),
        format!("127.0.0.1:{}", carbon.port),
        "--check-rules".into(),
        rules.display().to_string(),
    ];
    spec.nanoprobe.prefix.extend(["--statistics", "--statistics-interval", "1s"].map(String::from));
    let mut c = Cluster::new(spec, false).unwrap();
    // perf2: statistics on, the two sources off; perf1: both on.
    c.start_node(1).unwrap();
    c.spec
        .nanoprobe
        .prefix
        .extend(["--statistics-perfdata", "--statistics-host"].map(String::from));
    c.start_node(0).unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let (on, off) = (c.nodes[0].name.clone(), c.nodes[1].name.clone());
    let t0 = unix_now().saturating_sub(5);

    // The check's perfdata, one gauge per item, named check.<check>.<label>, unit as a tag.
    let check = format!("assim.{on}.check.perf_web");
    assert_eq!(last(&carbon, &format!("{check}.time.unit.s"), t0), 0.25);
    assert_eq!(last(&carbon, &format!("{check}.used_space.unit.percent"), t0), 42.0);
    assert_eq!(last(&carbon, &format!("{check}.load1"), t0), 0.5);
    // `gone=U` and `junk` are left out, and counted.
    assert_eq!(entries(&carbon, &check), ["load1.wsp", "time", "used_space"]);
    let metrics_file = c.nodes[0].data_dir.join("nanoprobe.prom");
    wait_until("the dropped items in the nanoprobe's metrics", || {
        let m = std::fs::read_to_string(&metrics_file).unwrap_or_default();
        let count = |reason: &str| {
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "assim_nanoprobe_statistics_dropped_total{{reason=\"{reason}\"}} "
                    ))
                })
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        count("undetermined") >= 1 && count("malformed") >= 1
    });

    // The host figures: the memory total and the root filesystem's size are this machine's.
    let host = format!("assim.{on}.host");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert_eq!(last(&carbon, &format!("{host}.memory.total_bytes"), t0), total_kb * 1024.0);
    let available = last(&carbon, &format!("{host}.memory.available_bytes"), t0);
    assert!(available > 0.0 && available <= total_kb * 1024.0, "{available}");
    let fs = nix::sys::statvfs::statvfs("/").unwrap();
    let size = fs.blocks() as f64 * fs.fragment_size() as f64;
    assert_eq!(last(&carbon, &format!("{host}.fs.root.size_bytes"), t0), size);
    let free = last(&carbon, &format!("{host}.fs.root.free_bytes"), t0);
    let avail = last(&carbon, &format!("{host}.fs.root.available_bytes"), t0);
    assert!(avail <= free && free <= size, "{avail} {free} {size}");
    for l in ["1", "5", "15"] {
        assert!(last(&carbon, &format!("{host}.load.{l}"), t0) >= 0.0);
    }
    assert_eq!(entries(&carbon, &format!("{host}.load")), ["1.wsp", "15.wsp", "5.wsp"]);

    // The other nanoprobe ran the same check (the CMA has its result) and sends statistics
    // (its own value arrives), but no check or host series.
    wait_until("perf2's check result at the CMA", || {
        let s: Vec<assim_api::ServiceView> = c
            .client
            .get_json(&format!("/api/v1/services?host={off}"), "services")
            .unwrap_or_default();
        s.iter().any(|s| s.check == "perf:web" && s.state == "ok")
    });
    let dir = c.nodes[1].data_dir.display().to_string();
    let (ok, out, err) = c.run_cli(
        env!("CARGO_BIN_EXE_assim"),
        &["stat", "put", "off.alive", "1", "--data-dir", &dir],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(last(&carbon, &format!("assim.{off}.off.alive"), t0), 1.0);
    // Two more intervals for anything that could still come.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(entries(&carbon, &format!("assim.{off}")), ["off"]);
}

/// Issue 14: on PostgreSQL the statistics queue is in the database. Values put while carbon is
/// down wait there; the active engine is SIGKILLed meanwhile; the standby that takes over sends
/// them once carbon is back, with their original times, and empties the queue in PostgreSQL.
#[test]
fn issue_14_statistics_queued_on_postgresql_reach_carbon_after_a_takeover() {
    if !have_carbon() {
        return;
    }
    let Some(pg) = assim_util::testing::Postgres::start() else { return };
    pg.create_database("stats");
    let store = pg.url("stats");
    let tmp = tempfile::tempdir().unwrap();
    let mut carbon = Carbon::new(&tmp.path().join("carbon"));
    carbon.start();
    let mut spec = ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1);
    spec.name_prefix = "pgstats".into();
    spec.cma_args = ["--store", &store, "--engine-lease", "2s", "--graphite"]
        .map(String::from)
        .into_iter()
        .chain([format!("127.0.0.1:{}", carbon.port)])
        .collect();
    // A takeover on a loaded machine must not look like a crash.
    spec.warn = Duration::from_secs(3);
    spec.dead = Duration::from_secs(5);
    let (mut c, host) = start_with_statistics(spec);

    // Forwarded from the PostgreSQL queue while all is well.
    let t0 = unix_now();
    put(&c, &["before.takeover", "3"]);
    let p = carbon.wait(&format!("assim.{host}.before.takeover"), t0, "the first value");
    assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), [3.0]);
    let mut b = c.spawn_engine("cma-b").unwrap();

    // Carbon down: the value waits in PostgreSQL (read there, not through the CMA).
    carbon.stop();
    let t1 = unix_now();
    put(&c, &["during.outage", "9"]);
    let db = assim_store_postgres::Store::open(&store).unwrap();
    wait_until("the value to wait in PostgreSQL's queue", || {
        db.statistics_oldest(100)
            .unwrap()
            .iter()
            .any(|q| q.point.path == format!("assim.{host}.during.outage"))
    });

    // The active engine dies; the standby takes over and forwards once carbon is back.
    c.stop_cma(true).unwrap();
    wait_until("the standby to take over", || {
        b.client.status().ok().and_then(|s| s.engine).is_some_and(|e| e.role == "active")
    });
    c.adopt_engine(&mut b);
    let back = unix_now();
    carbon.start();
    let p = carbon.wait(
        &format!("assim.{host}.during.outage"),
        t1,
        "the value queued before the takeover",
    );
    assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), [9.0]);
    assert!((t1..=back).contains(&p[0].0), "original time: {} not within {t1}..{back}", p[0].0);
    wait_until("PostgreSQL's queue to empty", || db.statistics_state().unwrap().queued == 0);
    let log = b.log();
    assert!(
        log.contains("forwarding statistics to Graphite") && !log.contains("panicked"),
        "{log}"
    );
}
