//! Flood benchmark (issue 16, "Must show"): 50,000 first-contact datagrams per second from
//! random identities (valid mac1: the attacker fetched the CMA's key) and random 127.0.0.0/8
//! sources (`assim::flood`) at a real `cma` process while 20 real `nanoprobe` processes run on
//! loopback. During the flood one nanoprobe is SIGKILLed: it must be reported down within the
//! dead time + 2 intervals (5 s + 2 s), no other host may go down, and the CMA's RSS must stay
//! flat. Prints packets sent and processed per second, DH operations per second, the CMA's CPU,
//! its RSS samples, the kernel's UDP receive-buffer drops and the detection time.
//!
//! Run: `cargo bench -p assim --bench flood` (env: ASSIM_BENCH_NODES (20), ASSIM_FLOOD_RATE
//! (50000), ASSIM_FLOOD_SECS (40), ASSIM_FLOOD_KILL_AT_SECS (10), ASSIM_FLOOD_GARBAGE (0)).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assim::cluster::{Cluster, ClusterSpec};
use assim::flood::{FloodOptions, run};
use assim_cma::EventKind;
use assim_sim::wire::udp_rcvbuf_errors;
use common::{env_or, metric};

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct Sample {
    datagrams_in: f64,
    dh: f64,
    bad_mac1: f64,
    budget: f64,
    cpu: u64,
    drops: u64,
    at: Instant,
}

fn sample(c: &Cluster, pid: u32) -> Sample {
    let m = c.client.metrics().expect("metrics");
    Sample {
        datagrams_in: metric(&m, "assim_cma_datagrams_received_total"),
        dh: metric(&m, "assim_cma_dh_operations_total"),
        bad_mac1: metric(&m, "assim_cma_rejected_total{reason=\"bad_mac1\"}"),
        budget: metric(&m, "assim_cma_rejected_total{reason=\"first_contact_budget\"}"),
        cpu: cpu_ticks(pid),
        drops: udp_rcvbuf_errors(),
        at: Instant::now(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes = env_or("ASSIM_BENCH_NODES", 20usize);
    let rate = env_or("ASSIM_FLOOD_RATE", 50_000u64);
    let secs = env_or("ASSIM_FLOOD_SECS", 40u64);
    let kill_at = env_or("ASSIM_FLOOD_KILL_AT_SECS", 10u64);
    let garbage = env_or("ASSIM_FLOOD_GARBAGE", 0u8) == 1;
    let spec = ClusterSpec {
        name_prefix: "f".into(),
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), nodes)
    };
    let (dead, interval) = (spec.dead, spec.interval);
    println!(
        "flood benchmark: {nodes} nanoprobes (1 s / 3 s / 5 s), {rate} {} datagrams/s for {secs} s, \
         SIGKILL of one nanoprobe after {kill_at} s",
        if garbage { "garbage" } else { "first-contact" }
    );
    let mut c = Cluster::new(spec, false).expect("start the CMA");
    let pid = c.cma.as_ref().expect("cma").id();
    c.start_all().expect("start nanoprobes");
    c.wait_ring(Duration::from_secs(60)).expect("ring");
    std::thread::sleep(Duration::from_secs(3));
    let since = c.last_event_id().expect("events");
    let s0 = sample(&c, pid);
    let rss0 = rss_kib(pid);

    let opts = FloodOptions {
        rate,
        garbage,
        ..FloodOptions::new(c.cma_listen, Duration::from_secs(secs))
    };
    let flood = std::thread::spawn(move || run(&opts));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut rss = Vec::new();
            let t0 = Instant::now();
            while !done.load(Ordering::Relaxed) {
                rss.push((t0.elapsed().as_secs(), rss_kib(pid)));
                std::thread::sleep(Duration::from_secs(2));
            }
            rss
        })
    };

    std::thread::sleep(Duration::from_secs(kill_at));
    let victim = nodes / 2;
    let name = c.nodes[victim].name.clone();
    let killed_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    c.kill_node(victim).expect("kill");
    let detection = c
        .wait_event(since, Duration::from_secs(30), "host.down", |e| {
            e.kind == EventKind::HostDown && e.hostname == name
        })
        .map(|e| e.time.0.saturating_sub(killed_us) as f64 / 1000.0);

    let report = flood.join().expect("flood thread").expect("flood");
    let s1 = sample(&c, pid);
    done.store(true, Ordering::Relaxed);
    let rss = sampler.join().expect("sampler");
    let events = c.events_since(since).expect("events");
    let false_downs: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::HostDown && e.hostname != name)
        .map(|e| e.hostname.clone())
        .collect();

    let dt = s1.at.duration_since(s0.at).as_secs_f64();
    let tck =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    println!(
        "sent: {} datagrams of {} bytes in {:.1} s = {:.0}/s from {} source addresses ({} send errors)",
        report.sent,
        report.datagram_len,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.sources,
        report.send_errors
    );
    println!(
        "CMA processed: {:.0} datagrams/s over {dt:.1} s ({:.0} refused at the mac1, {:.0} over the first-contact budget); \
         DH operations {:.0} = {:.0}/s; kernel UDP receive-buffer drops {}",
        (s1.datagrams_in - s0.datagrams_in) / dt,
        s1.bad_mac1 - s0.bad_mac1,
        s1.budget - s0.budget,
        s1.dh - s0.dh,
        (s1.dh - s0.dh) / dt,
        s1.drops - s0.drops
    );
    println!("CMA CPU: {:.0} % of one core", (s1.cpu - s0.cpu) as f64 / tck / dt * 100.0);
    let samples: Vec<String> =
        rss.iter().map(|(t, k)| format!("{t}s:{:.1}", *k as f64 / 1024.0)).collect();
    println!(
        "CMA RSS: {:.1} MiB before the flood, then (MiB) {}; after {:.1} MiB",
        rss0 as f64 / 1024.0,
        samples.join(" "),
        rss_kib(pid) as f64 / 1024.0
    );
    let bound = (dead + 2 * interval).as_secs_f64() * 1000.0;
    match &detection {
        Ok(ms) => println!(
            "crash of {name} during the flood: host.down after {ms:.0} ms (bound: dead time + 2 intervals = {bound:.0} ms) {}",
            if *ms <= bound { "OK" } else { "TOO LATE" }
        ),
        Err(e) => println!("crash of {name} during the flood: NOT DETECTED ({e})"),
    }
    println!("false host.down during the run: {} {:?}", false_downs.len(), false_downs);
    let ok = detection.is_ok_and(|ms| ms <= bound) && false_downs.is_empty();
    if !ok {
        std::process::exit(1);
    }
}
