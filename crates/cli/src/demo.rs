//! `assim demo`: a CMA and eight nanoprobes as real processes on loopback, a crash, a graceful
//! leave and a rejoin, narrated. Exits 0 only if everything happened as expected. With
//! `--serve`, the cluster keeps running after the narration and the CMA's web page is served
//! (its URL printed) until Ctrl-C. `--cluster` runs [`crate::demo_cluster`] instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use assim_api::Event;
use assim_cma::EventKind;

use crate::client::print_status;
use crate::cluster::{Cluster, ClusterSpec};
use assim_util::duration::format_duration;

/// Options of `assim demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub nodes: usize,
    pub keep: bool,
    /// Keep the cluster running after the narration and serve the web page until Ctrl-C.
    pub serve: bool,
    /// The cluster mode instead ([`crate::demo_cluster`]): PostgreSQL, NATS JetStream, two
    /// engines, a takeover.
    pub cluster: bool,
}

struct Narrator {
    start: Instant,
    stop: Arc<AtomicBool>,
}

impl Narrator {
    fn say(&self, text: &str) {
        println!("[{:>5.1}s] {text}", self.start.elapsed().as_secs_f64());
    }

    fn check_stop(&self) -> anyhow::Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted; stopping every process and removing the working directory");
        }
        Ok(())
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Runs the demo.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    if !(4..=40).contains(&opts.nodes) {
        bail!("--nodes must be between 4 and 40 (got {})", opts.nodes);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
    }
    if opts.cluster {
        if opts.serve {
            bail!("--serve is for the one-CMA demo; run `assim demo --cluster` without it");
        }
        return crate::demo_cluster::run(opts.nodes, opts.keep, stop);
    }
    let n = Narrator { start: Instant::now(), stop };
    let spec = ClusterSpec::from_current_exe(opts.nodes)?;
    println!(
        "assim demo: one CMA and {} nanoprobes as real processes on loopback (127.0.0.11 and up).\n\
         Heartbeats every {}, a silent neighbour is late after {} and dead after {}.\n",
        opts.nodes,
        format_duration(spec.interval),
        format_duration(spec.warn),
        format_duration(spec.dead)
    );
    n.say("Starting the CMA and creating a join token for the nanoprobes ...");
    let mut c = Cluster::new(spec, opts.keep)?;
    n.say(&format!(
        "CMA up: nanoprobes talk to udp://{}, its API is http://{}",
        c.cma_listen, c.api
    ));
    n.say(&format!("Working directory (data and one log per process): {}", c.dir.display()));
    let result = script(&mut c, &n, opts.nodes);
    match &result {
        Ok(()) if opts.serve => {
            println!();
            n.say("All of it happened as expected.");
        }
        Ok(()) => {
            println!();
            n.say("All of it happened as expected. Stopping every process and cleaning up.");
        }
        Err(e) => {
            println!();
            n.say(&format!("The demo did not go as expected: {e:#}"));
            c.keep = true;
            n.say(&format!("Logs kept in {}", c.dir.display()));
        }
    }
    if opts.serve {
        serve(&c, &n);
    }
    drop(c);
    result
}

/// Keeps the cluster running and says where its web page is, until Ctrl-C.
fn serve(c: &Cluster, n: &Narrator) {
    println!();
    n.say(&format!("Web page: http://{}/ (problems, hosts, topology, events; live)", c.api));
    n.say("The cluster keeps running; try `kill -9` on a nanoprobe and watch the page. Ctrl-C stops it.");
    while !n.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    n.say("Ctrl-C: stopping every process and cleaning up.");
}

fn script(c: &mut Cluster, n: &Narrator, count: usize) -> anyhow::Result<()> {
    n.say(&format!("Starting {count} nanoprobes; each enrolls with the token and says hello ..."));
    c.start_all()?;
    let t0 = Instant::now();
    let status = c.wait_ring(Duration::from_secs(30))?;
    n.check_stop()?;
    n.say(&format!(
        "The ring is formed in {}: every node heartbeats exactly its two neighbours.",
        secs(t0.elapsed())
    ));
    println!();
    print_status(&status);
    println!();

    // 1. A crash.
    let victim = 2;
    let vname = c.nodes[victim].name.clone();
    let neighbours = status
        .nodes
        .iter()
        .find(|x| x.hostname == vname)
        .map(|x| x.neighbours.join(" and "))
        .unwrap_or_default();
    let since = c.last_event_id()?;
    n.say(&format!(
        "Crash: killing {vname} with SIGKILL (no goodbye). Its neighbours {neighbours} will stop hearing it."
    ));
    let killed = Instant::now();
    c.kill_node(victim)?;
    let suspect = wait(c, n, since, &format!("host.suspect for {vname}"), |e| {
        e.kind == EventKind::HostSuspect && e.hostname == vname
    })?;
    n.say(&format!("+{} host.suspect  {}", secs(killed.elapsed()), suspect.text));
    let down = wait(c, n, since, &format!("host.down for {vname}"), |e| {
        e.kind == EventKind::HostDown && e.hostname == vname
    })?;
    n.say(&format!("+{} host.down     {}", secs(killed.elapsed()), down.text));
    let ring = wait(c, n, down.id - 1, "the ring to heal", |e| e.kind == EventKind::RingChanged)?;
    n.say(&format!("+{} ring.changed  {}", secs(killed.elapsed()), ring.text));

    // 2. A graceful leave.
    let leaver = count - 1;
    let lname = c.nodes[leaver].name.clone();
    let since_leave = c.last_event_id()?;
    println!();
    n.say(&format!(
        "Leave: stopping {lname} with SIGTERM; it says goodbye, so nobody raises an alarm."
    ));
    let stopped = Instant::now();
    c.stop_node(leaver)?;
    let left = wait(c, n, since_leave, &format!("host.left for {lname}"), |e| {
        e.kind == EventKind::HostLeft && e.hostname == lname
    })?;
    n.say(&format!("+{} host.left     {}", secs(stopped.elapsed()), left.text));

    // 3. The crashed node comes back.
    println!();
    std::thread::sleep(Duration::from_secs(2));
    n.check_stop()?;
    n.say(&format!("Restart: starting {vname} again with its old identity ..."));
    let since_back = c.last_event_id()?;
    let restarted = Instant::now();
    c.start_node(victim)?;
    let up = wait(c, n, since_back, &format!("host.up for {vname}"), |e| {
        e.kind == EventKind::HostUp && e.hostname == vname
    })?;
    n.say(&format!("+{} host.up       {}", secs(restarted.elapsed()), up.text));
    let status = c.wait_ring(Duration::from_secs(20))?;
    n.say(&format!("+{} the ring has {} members again.", secs(restarted.elapsed()), count - 1));
    println!();
    print_status(&status);

    // 4. Nothing else may have gone down.
    let all = c.events_since(since)?;
    let false_downs: Vec<&Event> =
        all.iter().filter(|e| e.kind == EventKind::HostDown && e.hostname != vname).collect();
    let victim_downs =
        all.iter().filter(|e| e.kind == EventKind::HostDown && e.hostname == vname).count();
    if !false_downs.is_empty() {
        bail!(
            "unexpected host.down events: {:?}",
            false_downs.iter().map(|e| &e.hostname).collect::<Vec<_>>()
        );
    }
    if victim_downs != 1 {
        bail!("expected exactly one host.down for {vname}, saw {victim_downs}");
    }
    println!();
    n.say(&format!(
        "Checked: exactly one host.down ({vname}), a clean host.left for {lname} and no other alarm."
    ));
    Ok(())
}

fn wait(
    c: &Cluster,
    n: &Narrator,
    since: u64,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> anyhow::Result<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        n.check_stop()?;
        match c.wait_event(since, Duration::from_secs(1), what, &pred) {
            Ok(e) => return Ok(e),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
    }
}
