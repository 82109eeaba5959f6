//! Side by side with Serf (HashiCorp's SWIM gossip failure detector, Debian package `serf`).
//!
//! For each size N (default 30 and 60; env `ASSIM_BENCH_SIZES=30,60`) this runs, one after the
//! other, on loopback only:
//!
//! * N real `serf agent` processes, LAN profile (the defaults), each on its own address
//!   127.0.1.(1+i):7946 with its RPC on 127.0.1.(1+i):7373, all joining agent 1. Agent 1 (never
//!   killed) runs a `member-failed` event handler that appends a nanosecond timestamp and the
//!   member line to a file: that is Serf's failure event.
//! * N real nanoprobes and a CMA through [`Cluster`] (127.0.0.11+, the default timing,
//!   1 s / 1.5 s / 2.5 s); the failure event is the CMA's `host.down` (its own timestamp).
//!
//! For both it measures, in a steady window (env `ASSIM_BENCH_STEADY_SECS`, default 20) after the
//! cluster formed: packets and bytes sent per node per second, the agents' mean RSS and CPU; then
//! it kills (SIGKILL) `ASSIM_BENCH_KILLS` (default 5) agents one at a time and measures crash →
//! failure-event latency. It prints one table with both systems and the ratios.
//!
//! Traffic is counted by nftables in the `output` hook, where every locally sent packet passes
//! exactly once (on loopback the same packet then passes `input` too, which we do not count):
//! one named counter per system matching packets whose source *and* destination address are in
//! that system's address set (agents ↔ agents, and for assim nanoprobes ↔ CMA, UDP only). So
//! the benchmark's own RPC/API polling, which comes from 127.0.0.1 to other ports, is not
//! counted. Per-process socket counters do not exist in /proc (`/proc/<pid>/net/snmp` is per
//! network namespace), hence the firewall counters. Bytes are IP packet lengths (IP + UDP/TCP
//! headers + payload). The table `inet assim_bench_serf` is deleted at the end (and at start, if
//! a previous run left it). Without nft (or without CAP_NET_ADMIN) traffic is reported as n/a.
//!
//! Run: `cargo bench -p assim --bench serf` (installs `serf` and `nftables` with apt-get when
//! they are missing).

mod common;

use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assim::cluster::{Cluster, ClusterSpec};
use assim_cma::EventKind;
use common::env_or;

const TABLE: &str = "assim_bench_serf";
/// /proc/<pid>/stat times are in USER_HZ, which is 100 on Linux.
const USER_HZ: f64 = 100.0;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs the Debian packages this benchmark needs, if missing.
fn ensure_packages() {
    let mut missing = Vec::new();
    if !have("serf") {
        missing.push("serf");
    }
    if !have("nft") {
        missing.push("nftables");
    }
    if missing.is_empty() {
        return;
    }
    println!("installing {} with apt-get …", missing.join(" "));
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}) >/dev/null",
                missing.join(" ")
            ),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("apt-get install {} failed", missing.join(" "));
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic counters (nftables)

struct Counters {
    ok: bool,
}

fn nft(script: &str) -> bool {
    let Ok(mut child) = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    child.wait().map(|s| s.success()).unwrap_or(false)
}

impl Counters {
    /// `serf`: agent → agent, UDP and TCP. `assim`: nanoprobe → nanoprobe; `assim_cma_in`:
    /// nanoprobe → CMA (the only UDP listener on 127.0.0.1 during the run); `assim_cma_out`:
    /// CMA → nanoprobe. All UDP.
    fn install(serf_range: &str, assim_range: &str) -> Counters {
        let _ = nft(&format!("delete table inet {TABLE}\n"));
        let script = format!(
            "table inet {TABLE} {{
  counter serf {{ }}
  counter assim {{ }}
  counter assim_cma_in {{ }}
  counter assim_cma_out {{ }}
  chain out {{
    type filter hook output priority 0; policy accept;
    ip saddr {serf_range} ip daddr {serf_range} counter name serf
    ip saddr {assim_range} ip daddr {assim_range} meta l4proto udp counter name assim
    ip saddr {assim_range} ip daddr 127.0.0.1 meta l4proto udp counter name assim_cma_in
    ip saddr 127.0.0.1 ip daddr {assim_range} meta l4proto udp counter name assim_cma_out
  }}
}}
"
        );
        let ok = nft(&script);
        if !ok {
            println!("nft is not usable here: traffic will be reported as n/a");
        }
        Counters { ok }
    }

    /// (packets, bytes) of a named counter.
    fn read(&self, name: &str) -> Option<(u64, u64)> {
        if !self.ok {
            return None;
        }
        let out =
            Command::new("nft").args(["list", "counter", "inet", TABLE, name]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        let field = |k: &str| {
            words.iter().position(|w| *w == k).and_then(|p| words.get(p + 1)?.parse().ok())
        };
        Some((field("packets")?, field("bytes")?))
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        if self.ok {
            let _ = nft(&format!("delete table inet {TABLE}\n"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-process resources

/// utime + stime in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / USER_HZ
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Default, Clone)]
struct Figures {
    /// Sent per node per second (None without counters).
    pkts: Option<f64>,
    bytes: Option<f64>,
    /// Central traffic (assim only): CMA datagrams in/out per node per second.
    central: Option<(f64, f64)>,
    rss_mib: f64,
    /// Percent of one core per agent.
    cpu_pct: f64,
    /// The CMA (assim only): RSS MiB and CPU %.
    centre: Option<(f64, f64)>,
    formed_s: f64,
    /// Crash → failure event, ms.
    latencies: Vec<f64>,
}

impl Figures {
    fn median(&self) -> f64 {
        let mut l = self.latencies.clone();
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        l.get(l.len() / 2).copied().unwrap_or(f64::NAN)
    }
    fn max(&self) -> f64 {
        self.latencies.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// Samples counters, CPU and RSS of `pids` over `secs`.
fn steady(
    counters: &Counters,
    names: &[&str],
    pids: &[u32],
    secs: u64,
) -> (Option<(f64, f64)>, f64, f64) {
    let sum = |names: &[&str]| -> Option<(u64, u64)> {
        names.iter().try_fold((0, 0), |acc, n| {
            let (p, b) = counters.read(n)?;
            Some((acc.0 + p, acc.1 + b))
        })
    };
    let c0 = sum(names);
    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = sum(names);
    let cpu1: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let dt = t0.elapsed().as_secs_f64();
    let n = pids.len().max(1) as f64;
    let rss = pids.iter().map(|p| rss_kib(*p)).sum::<u64>() as f64 / n / 1024.0;
    let cpu = (cpu1 - cpu0) / n / dt * 100.0;
    let traffic = match (c0, c1) {
        (Some(a), Some(b)) => Some(((b.0 - a.0) as f64 / n / dt, (b.1 - a.1) as f64 / n / dt)),
        _ => None,
    };
    (traffic, rss, cpu)
}

// ---------------------------------------------------------------------------------------------
// Serf

struct Serf {
    dir: PathBuf,
    agents: Vec<Option<Child>>,
}

fn serf_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, 1 + i as u8)
}

impl Serf {
    fn rpc(i: usize) -> String {
        SocketAddrV4::new(serf_ip(i), 7373).to_string()
    }

    fn start(n: usize) -> anyhow::Result<Serf> {
        let dir = std::env::temp_dir().join(format!("assim-serf-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let handler = dir.join("failed.sh");
        std::fs::write(
            &handler,
            format!(
                "#!/bin/sh\nts=$(date +%s%N)\nwhile read -r line; do echo \"$ts $line\" >> {}; done\n",
                dir.join("failed.log").display()
            ),
        )?;
        std::fs::set_permissions(&handler, std::fs::Permissions::from_mode(0o755))?;
        let mut s = Serf { dir, agents: Vec::new() };
        for i in 0..n {
            let log = File::create(s.dir.join(format!("s{}.log", i + 1)))?;
            let mut cmd = Command::new("serf");
            cmd.arg("agent")
                .arg(format!("-node=s{}", i + 1))
                .arg(format!("-bind={}", SocketAddrV4::new(serf_ip(i), 7946)))
                .arg(format!("-rpc-addr={}", Self::rpc(i)))
                .arg("-log-level=warn");
            if i == 0 {
                cmd.arg(format!("-event-handler=member-failed={}", handler.display()));
            } else {
                cmd.arg(format!("-join={}", SocketAddrV4::new(serf_ip(0), 7946)));
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start serf: {e}"))?;
            s.agents.push(Some(child));
            if i == 0 {
                // Agent 1 must listen before the others join it.
                let deadline = Instant::now() + Duration::from_secs(10);
                while s.alive_count().is_none() {
                    anyhow::ensure!(Instant::now() < deadline, "serf agent 1 did not start");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(s)
    }

    /// Alive members as agent 1 sees them.
    fn alive_count(&self) -> Option<usize> {
        let out = Command::new("serf")
            .args(["members", &format!("-rpc-addr={}", Self::rpc(0)), "-status=alive"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().count())
    }

    fn wait_alive(&self, want: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.alive_count() == Some(want) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "serf: {want} members not alive in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.agents.iter().flatten().map(|c| c.id()).collect()
    }

    /// Waits for the member-failed line for `name`; returns its timestamp in µs.
    fn wait_failed(&self, name: &str, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.dir.join("failed.log")).unwrap_or_default();
            for line in text.lines() {
                let mut w = line.split_whitespace();
                let ts: u64 = w.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                if w.next() == Some(name) {
                    return Ok(ts / 1000);
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "serf: no member-failed for {name}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serf {
    fn drop(&mut self) {
        for c in self.agents.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_serf(n: usize, kills: usize, secs: u64, counters: &Counters) -> anyhow::Result<Figures> {
    let t = Instant::now();
    let mut s = Serf::start(n)?;
    s.wait_alive(n, Duration::from_secs(60))?;
    let formed_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let (traffic, rss_mib, cpu_pct) = steady(counters, &["serf"], &s.pids(), secs);
    let mut f = Figures {
        pkts: traffic.map(|t| t.0),
        bytes: traffic.map(|t| t.1),
        rss_mib,
        cpu_pct,
        formed_s,
        ..Figures::default()
    };
    for k in 0..kills {
        let i = 1 + k * ((n - 1) / kills.max(1));
        let name = format!("s{}", i + 1);
        let killed = now_us();
        if let Some(mut c) = s.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let ts = s.wait_failed(&name, Duration::from_secs(60))?;
        let ms = ts.saturating_sub(killed) as f64 / 1000.0;
        println!("  serf  N={n}: crash of {name}: member-failed after {ms:.0} ms");
        f.latencies.push(ms);
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// assim

fn run_assim(n: usize, kills: usize, secs: u64, counters: &Counters) -> anyhow::Result<Figures> {
    let spec = ClusterSpec {
        name_prefix: "b".into(),
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), n)
    };
    let mut c = Cluster::new(spec, false)?;
    let t = Instant::now();
    c.start_all()?;
    c.wait_ring(Duration::from_secs(90))?;
    let formed_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let pids: Vec<u32> = c.nodes.iter().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect();
    let cma = c.cma.as_ref().map(|c| c.id()).unwrap_or(0);
    let cma_cpu0 = cpu_secs(cma);
    let (ci0, co0) = (counters.read("assim_cma_in"), counters.read("assim_cma_out"));
    let t0 = Instant::now();
    let (traffic, rss_mib, cpu_pct) = steady(counters, &["assim", "assim_cma_in"], &pids, secs);
    let dt = t0.elapsed().as_secs_f64();
    let (ci1, co1) = (counters.read("assim_cma_in"), counters.read("assim_cma_out"));
    let central = match (ci0, ci1, co0, co1) {
        (Some(a), Some(b), Some(x), Some(y)) => {
            Some(((b.0 - a.0) as f64 / n as f64 / dt, (y.0 - x.0) as f64 / n as f64 / dt))
        }
        _ => None,
    };
    let centre = Some((rss_kib(cma) as f64 / 1024.0, (cpu_secs(cma) - cma_cpu0) / dt * 100.0));
    // Sent per node: to neighbours and to the CMA.
    let mut f = Figures {
        pkts: traffic.map(|t| t.0),
        bytes: traffic.map(|t| t.1),
        central,
        rss_mib,
        cpu_pct,
        centre,
        formed_s,
        latencies: Vec::new(),
    };
    for k in 0..kills {
        let i = k * (n / kills.max(1));
        let name = c.nodes[i].name.clone();
        let since = c.last_event_id()?;
        let killed = now_us();
        c.kill_node(i)?;
        let e = c.wait_event(since, Duration::from_secs(60), "host.down", |e| {
            e.kind == EventKind::HostDown && e.hostname == name
        })?;
        let ms = e.time.0.saturating_sub(killed) as f64 / 1000.0;
        println!("  assim N={n}: crash of {name}: host.down after {ms:.0} ms");
        f.latencies.push(ms);
        c.wait_ring(Duration::from_secs(60))?;
    }
    Ok(f)
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "n/a".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("ASSIM_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![30, 60]);
    let kills = env_or("ASSIM_BENCH_KILLS", 5) as usize;
    let secs = env_or("ASSIM_BENCH_STEADY_SECS", 20);
    ensure_packages();
    if !have("serf") {
        eprintln!("serf is not installed and could not be installed");
        std::process::exit(1);
    }
    let max = sizes.iter().copied().max().unwrap_or(0);
    assert!(max <= 200, "at most 200 nodes (one loopback address each)");
    let t = assim_cma::Timing::default();
    println!(
        "serf vs assim: sizes {sizes:?}, {kills} crashes each, {secs} s steady window; serf LAN \
         profile, assim interval/warn/dead {:?}/{:?}/{:?}",
        t.interval, t.warn, t.dead
    );
    let serf_range = format!("127.0.1.1-{}", serf_ip(max - 1));
    let assim_range = format!("127.0.0.11-127.0.0.{}", 10 + max);
    let counters = Counters::install(&serf_range, &assim_range);
    let mut rows = Vec::new();
    for &n in &sizes {
        let k = kills.min(n.saturating_sub(3));
        // Serf first, then assim (both use their own address ranges; one at a time).
        let serf = match run_serf(n, k, secs, &counters) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("serf N={n} failed: {e:#}");
                drop(counters);
                std::process::exit(1);
            }
        };
        let assim = match run_assim(n, k, secs, &counters) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("assim N={n} failed: {e:#}");
                drop(counters);
                std::process::exit(1);
            }
        };
        rows.push((n, serf, assim));
    }
    drop(counters);
    print_table(&rows);
}

fn print_table(rows: &[(usize, Figures, Figures)]) {
    println!();
    println!(
        "{:<5} {:<6} {:>9} {:>9} {:>11} {:>10} {:>8} {:>8} {:>9}",
        "N", "system", "formed s", "pkts/n/s", "bytes/n/s", "RSS MiB", "CPU %", "med ms", "max ms"
    );
    for (n, s, a) in rows {
        for (name, f) in [("serf", s), ("assim", a)] {
            println!(
                "{:<5} {:<6} {:>9.1} {:>9} {:>11} {:>10.1} {:>8.2} {:>8.0} {:>9.0}",
                n,
                name,
                f.formed_s,
                fmt_opt(f.pkts, 2),
                fmt_opt(f.bytes, 0),
                f.rss_mib,
                f.cpu_pct,
                f.median(),
                f.max()
            );
        }
        println!(
            "{:<5} {:<6} {:>9} {:>9} {:>11} {:>10} {:>8} {:>8} {:>9}",
            n,
            "s/a",
            ratio(Some(s.formed_s), Some(a.formed_s)),
            ratio(s.pkts, a.pkts),
            ratio(s.bytes, a.bytes),
            ratio(Some(s.rss_mib), Some(a.rss_mib)),
            ratio(Some(s.cpu_pct), Some(a.cpu_pct)),
            ratio(Some(s.median()), Some(a.median())),
            ratio(Some(s.max()), Some(a.max()))
        );
        if let (Some((cin, cout)), Some((rss, cpu))) = (a.central, a.centre) {
            println!(
                "{:<5} assim CMA: {cin:.3} datagrams in and {cout:.3} out per node per second; CMA RSS {rss:.1} MiB, CPU {cpu:.2} %",
                n
            );
        }
    }
    println!();
    println!(
        "pkts/n/s and bytes/n/s: packets and IP bytes sent per node per second in steady state (nftables output-hook counters; assim includes node -> CMA); RSS: mean VmRSS per agent; CPU: mean utime+stime per agent as % of one core over the steady window; med/max: SIGKILL -> failure event (serf member-failed at agent 1, assim host.down at the CMA); s/a: serf / assim."
    );
}
