//! The switch lab (issue 13, needs root, lldpd and nftables, as in CI): Linux bridges as
//! switches, Debian's `lldpd` announcing each switch's chassis on its ports, one real nanoprobe
//! per host namespace and a real CMA, all driven through the real `assim` CLI.
//!
//! ```text
//!                       [core] bridge up0 10.78.0.1/16, cma (UDP :1984), API 127.0.0.1:1985
//!                              nft: bridge forward counter "hb" (udp dport 1990 = heartbeats
//!                              between switches), input counter "to_cma" (udp dport 1984)
//!            ┌───────────────────────────┼───────────────────────────┐
//!          uplink                      uplink                      uplink
//!   [sw1] bridge br0             [sw2] bridge br0            [sw3] bridge br0
//!   lldpd -I p1,p2,p3            lldpd -I p1,p2,p3           lldpd -I p1,p2,p3
//!    p1     p2     p3             p1     p2     p3            p1     p2     p3
//!    │      │      │              │      │      │             │      │      │
//!  [s1h1] [s1h2] [s1h3]         [s2h1] [s2h2] [s2h3]        [s3h1] [s3h2] [s3h3]
//!  eth0 10.78.S.(10+H)/16, one nanoprobe each, listening on :1990
//!  each switch's br0 has its management address 10.78.S.1/16, which lldpd announces
//! ```
//!
//! One L2 segment (one subnet) spans every bridge, so only LLDP tells the switches apart.
//! Linux bridges do not forward LLDP's 01:80:c2:00:00:0e, and lldpd sends on the ports it is
//! given: each switch's lldpd runs in the switch's namespace with `-I p1,p2,…` (the bridge's
//! port veths; not the uplink), its own control socket and pid file, and `configure system
//! hostname swN` as its chassis name; its chassis id is the MAC of one of its ports.
//! Timings are short (`--heartbeat-interval 300ms --warn-time 900ms --dead-time 1500ms`), and
//! the packages and SSH-key collectors are off, to keep each run at a few tens of seconds.
//!
//! Scenarios:
//! - the wiring of every host reaches the CMA (`assim ports`, `assim switch SW`), the rings form
//!   and `assim rings` shows them, the cross-switch heartbeat traffic is measured on the uplink
//!   (`ASSIM_LAB_MEASURE_SECS`, default 5 s, prints the figure), and a SIGKILLed host gives
//!   exactly one `host.down` and nothing else;
//! - one host's outgoing heartbeats dropped with nftables (what it sends the CMA passes) for
//!   10 dead times (`ASSIM_LAB_DROP_SECS`, 120 for the issue's two minutes): `path.suspect`,
//!   no `host.down`, the host never Down, no `host.up` (no revive/rejoin flapping);
//! - every link of one switch down, then up again: one `switch.down` (its management address,
//!   on the bridge behind the cut uplink, silent too), its hosts Unreachable, no `host.down`,
//!   then one `switch.up`; in that run a real `nagios4` (Debian nagios4-core) fed by the CMA's
//!   Nagios sink shows the switch DOWN and its hosts UNREACHABLE, and a local check behind the
//!   switch is suppressed, then raised once; then, in the same lab, only the host ports of
//!   another switch down: its management address answers the CMA's ping, so one
//!   `switch.unreachable` ("alive but forwards for none of its hosts"), then one `switch.up`.
//!
//! Every namespace has a name unique to this run and is deleted on drop, panics included
//! (`netns::Lab`). `ASSIM_KEEP_LAB=1` keeps the logs directory.

use std::time::{Duration, Instant};

use serde_json::Value;

mod netns;
use netns::{Lab, have, ip, nft_json, nft_load, query, wait_for, write};

const CMA_IP: &str = "10.78.0.1";
const CMA_PORT: u16 = 1984;
const PROBE_PORT: u16 = 1990;
const API: &str = "127.0.0.1:1985";
const INTERVAL: &str = "300ms";
const WARN: &str = "900ms";
const DEAD: &str = "1500ms";
/// Dead time: the quiet windows below are several of these.
const DEAD_TIME: Duration = Duration::from_millis(1500);

/// One host namespace behind a switch.
struct Host {
    name: String,
    ns: String,
    ip: String,
}

/// One switch: a bridge in its own namespace, its lldpd, its hosts.
struct Switch {
    /// The chassis name lldpd announces.
    name: String,
    ns: String,
    /// Its management address (on the bridge; lldpd announces it).
    mgmt: String,
    hosts: Vec<Host>,
}

/// The running lab.
struct SwitchLab {
    lab: Lab,
    core: String,
    api_url: String,
    switches: Vec<Switch>,
}

impl SwitchLab {
    /// Builds `switches` switches with `hosts` hosts each, starts the CMA, lldpd and the
    /// nanoprobes, and waits until every host is up, in the ring, and wired to its switch.
    fn start(switches: usize, hosts: usize) -> SwitchLab {
        Self::start_with_cma_config(switches, hosts, None)
    }

    /// [`SwitchLab::start`] with the CMA reading `cma_config` (`--config`: sinks are declared
    /// only there).
    fn start_with_cma_config(
        switches: usize,
        hosts: usize,
        cma_config: Option<&std::path::Path>,
    ) -> SwitchLab {
        let mut lab = Lab::new();
        let core = lab.add_ns("core");
        ip(&["-n", &core, "link", "add", "up0", "type", "bridge"]);
        ip(&["-n", &core, "addr", "add", &format!("{CMA_IP}/16"), "dev", "up0"]);
        ip(&["-n", &core, "link", "set", "up0", "up"]);
        let mut sws = Vec::new();
        for s in 1..=switches {
            let ns = lab.add_ns(&format!("sw{s}"));
            ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
            // The switch's management address (in band, behind its uplink), which lldpd
            // announces and the CMA pings when it checks the switch's ring.
            let mgmt = format!("10.78.{s}.1");
            ip(&["-n", &ns, "addr", "add", &format!("{mgmt}/16"), "dev", "br0"]);
            ip(&["-n", &ns, "link", "set", "br0", "up"]);
            let core_port = format!("sw{s}");
            ip(&[
                "link", "add", "uplink", "netns", &ns, "type", "veth", "peer", "name", &core_port,
                "netns", &core,
            ]);
            ip(&["-n", &ns, "link", "set", "uplink", "master", "br0", "up"]);
            ip(&["-n", &core, "link", "set", &core_port, "master", "up0", "up"]);
            let mut hs = Vec::new();
            for h in 1..=hosts {
                let name = format!("s{s}h{h}");
                let hns = lab.add_ns(&name);
                let port = format!("p{h}");
                ip(&[
                    "link", "add", "eth0", "netns", &hns, "type", "veth", "peer", "name", &port,
                    "netns", &ns,
                ]);
                ip(&["-n", &ns, "link", "set", &port, "master", "br0", "up"]);
                let addr = format!("10.78.{s}.{}", 10 + h);
                ip(&["-n", &hns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"]);
                ip(&["-n", &hns, "link", "set", "eth0", "up"]);
                hs.push(Host { name, ns: hns, ip: addr });
            }
            sws.push(Switch { name: format!("lab-sw{s}"), ns, mgmt, hosts: hs });
        }
        // ARP at the lab's time scale: the kernel re-asks an unanswered neighbour after 1 s,
        // longer than the lab's window for a returning switch's hosts (750 ms). After a cut,
        // a host whose first ARP request went out before its peer's port was up again would
        // stay silent for that second and be judged apart from its switch.
        for ns in std::iter::once(&core)
            .chain(sws.iter().map(|s| &s.ns))
            .chain(sws.iter().flat_map(|s| s.hosts.iter().map(|h| &h.ns)))
        {
            ip(&[
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "for f in /proc/sys/net/ipv4/neigh/*/retrans_time_ms; do echo 100 > $f; done",
            ]);
        }
        // Counters on the uplink bridge: heartbeats that cross switches, packets to the CMA.
        nft_load(
            &core,
            &format!(
                "table bridge lab {{\n\
                   counter hb {{}}\n\
                   chain uplink_fwd {{ type filter hook forward priority 0; policy accept;\n\
                     udp dport {PROBE_PORT} counter name \"hb\"\n }}\n\
                 }}\n\
                 table inet labcma {{\n\
                   counter to_cma {{}}\n\
                   chain cma_in {{ type filter hook input priority 0; policy accept;\n\
                     udp dport {CMA_PORT} counter name \"to_cma\"\n }}\n\
                 }}\n"
            ),
        );
        let mut lab = SwitchLab { lab, core, api_url: format!("http://{API}"), switches: sws };
        lab.start_cma(cma_config);
        lab.start_lldpd();
        for s in 0..lab.switches.len() {
            for h in 0..lab.switches[s].hosts.len() {
                lab.start_probe(s, h);
            }
        }
        lab.wait_ring();
        lab.wait_wiring();
        lab
    }

    fn all_hosts(&self) -> impl Iterator<Item = &Host> {
        self.switches.iter().flat_map(|s| s.hosts.iter())
    }

    fn start_cma(&mut self, config: Option<&std::path::Path>) {
        let data = self.lab.dir.join("cma");
        let listen = format!("{CMA_IP}:{CMA_PORT}");
        let core = self.core.clone();
        let config = config.map(|c| ["--config", c.to_str().unwrap()]);
        self.lab.spawn(
            "cma",
            &core,
            &[
                env!("CARGO_BIN_EXE_assim"),
                "cma",
                "--listen",
                &listen,
                "--api",
                API,
                "--data-dir",
                data.to_str().unwrap(),
                "--open-enrollment",
                "--heartbeat-interval",
                INTERVAL,
                "--warn-time",
                WARN,
                "--dead-time",
                DEAD,
                "--discovery",
                "packages=0,ssh_host_keys=0",
            ]
            .into_iter()
            .chain(config.iter().flatten().copied())
            .collect::<Vec<_>>(),
            false,
        );
        wait_for(&self.lab, "the CMA's API", Duration::from_secs(30), || self.q(&["status"]));
    }

    fn start_lldpd(&mut self) {
        for i in 0..self.switches.len() {
            let (name, ns) = (self.switches[i].name.clone(), self.switches[i].ns.clone());
            let ports: Vec<String> =
                (1..=self.switches[i].hosts.len()).map(|h| format!("p{h}")).collect();
            let dir = self.lab.dir.clone();
            let conf = dir.join(format!("{name}.conf"));
            write(
                &conf,
                &format!(
                    "configure lldp tx-interval 1\nconfigure system hostname {name}\n\
                     configure lldp portidsubtype ifname\n"
                ),
            );
            let sock = dir.join(format!("{name}.sock"));
            let pid = dir.join(format!("{name}.pid"));
            self.lab.spawn(
                &format!("lldpd-{name}"),
                &ns,
                &[
                    "lldpd",
                    "-d",
                    "-l",
                    "-I",
                    &ports.join(","),
                    "-u",
                    sock.to_str().unwrap(),
                    "-p",
                    pid.to_str().unwrap(),
                    "-O",
                    conf.to_str().unwrap(),
                ],
                false,
            );
        }
    }

    /// Starts (or restarts) the nanoprobe of host `h` of switch `s`.
    fn start_probe(&mut self, s: usize, h: usize) {
        let host = &self.switches[s].hosts[h];
        let (name, ns) = (host.name.clone(), host.ns.clone());
        let listen = format!("{}:{PROBE_PORT}", host.ip);
        let cma = format!("{CMA_IP}:{CMA_PORT}");
        let data = self.lab.dir.join(&name);
        self.lab.spawn(
            &name,
            &ns,
            &[
                env!("CARGO_BIN_EXE_assim"),
                "nanoprobe",
                "--cma",
                &cma,
                "--listen",
                &listen,
                "--data-dir",
                data.to_str().unwrap(),
                "--hostname",
                &name,
                "--trust-on-first-use",
            ],
            false,
        );
    }

    /// `assim ARGS --json` against the CMA.
    fn q(&self, args: &[&str]) -> Result<Value, String> {
        query(&self.core, &self.api_url, args)
    }

    /// The status rows (`assim status --json`'s `nodes`).
    fn nodes(&self) -> Result<Vec<Value>, String> {
        let v = self.q(&["status"])?;
        v["nodes"].as_array().cloned().ok_or_else(|| format!("no nodes in {v}"))
    }

    /// Every event after `since` (`assim events --since N --json`, one object per line).
    fn events_since(&self, since: u64) -> Vec<Value> {
        let out = netns::assim_in(
            &self.core,
            &self.api_url,
            &["events", "--since", &since.to_string(), "--limit", "100000", "--json"],
        )
        .unwrap_or_else(|e| panic!("assim events: {e}"));
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn last_event_id(&self) -> u64 {
        self.events_since(0).last().and_then(|e| e["id"].as_u64()).unwrap_or(0)
    }

    /// Waits for the first event after `since` matching `pred`.
    fn wait_event(&self, since: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&self.lab, what, Duration::from_secs(30), || {
            let evs = self.events_since(since);
            evs.iter().find(|e| pred(e)).cloned().ok_or_else(|| {
                let kinds: Vec<String> =
                    evs.iter().map(|e| format!("{} {}", e["type"], e["hostname"])).collect();
                format!("events so far: {kinds:?}")
            })
        })
    }

    /// Waits until `assim rings` shows one switch ring per switch holding exactly its hosts
    /// (named by the switch's LLDP name), and the upper ring holding two representatives of
    /// each, every switch ring watched by hosts outside it; returns the rings.
    fn wait_switch_rings(&self) -> Vec<Value> {
        let v = wait_for(
            &self.lab,
            "the rings to follow the switches",
            Duration::from_secs(60),
            || {
                let rings = self.q(&["rings"])?;
                let list = rings.as_array().cloned().unwrap_or_default();
                let hosts = |r: &Value, field: &str| -> Vec<String> {
                    let mut v: Vec<String> = r[field]
                        .as_array()
                        .map(|a| {
                            a.iter().filter_map(|m| m["host"].as_str().map(String::from)).collect()
                        })
                        .unwrap_or_default();
                    v.sort();
                    v
                };
                let mut upper_want = Vec::new();
                for sw in &self.switches {
                    let want: Vec<String> = sw.hosts.iter().map(|h| h.name.clone()).collect();
                    let Some(r) = list.iter().find(|r| r["switch_name"] == sw.name.as_str()) else {
                        return Err(format!("no ring for {}: {rings}", sw.name));
                    };
                    if r["kind"] != "switch" || hosts(r, "members") != want {
                        return Err(format!("{}'s ring is not its hosts: {r}", sw.name));
                    }
                    let reps = hosts(r, "representatives");
                    let watchers = hosts(r, "watchers");
                    if reps.len() != 2
                        || watchers.is_empty()
                        || watchers.iter().any(|w| want.contains(w))
                    {
                        return Err(format!("{}'s ring is not watched from outside: {r}", sw.name));
                    }
                    upper_want.extend(reps);
                }
                upper_want.sort();
                let Some(upper) = list.iter().find(|r| r["kind"] == "upper") else {
                    return Err(format!("no upper ring: {rings}"));
                };
                if hosts(upper, "members") != upper_want {
                    return Err(format!("the upper ring is not the representatives: {upper}"));
                }
                if list.len() != self.switches.len() + 1 {
                    return Err(format!(
                        "rings other than the switches' and the upper one: {rings}"
                    ));
                }
                Ok(rings)
            },
        );
        v.as_array().unwrap().clone()
    }

    /// Waits until every running host is up with at least two heartbeat peers.
    fn wait_ring(&self) -> Vec<Value> {
        let want: Vec<&str> = self.all_hosts().map(|h| h.name.as_str()).collect();
        let v = wait_for(&self.lab, "every host up in the ring", Duration::from_secs(60), || {
            let nodes = self.nodes()?;
            let ok = want.iter().all(|name| {
                nodes.iter().any(|n| {
                    n["hostname"] == *name
                        && n["state"] == "up"
                        && n["neighbours"].as_array().is_some_and(|a| a.len() >= 2)
                })
            });
            if ok {
                Ok(Value::Array(nodes))
            } else {
                let summary: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("{}={} {}", n["hostname"], n["state"], n["neighbours"]))
                    .collect();
                Err(summary.join(", "))
            }
        });
        v.as_array().unwrap().clone()
    }

    /// Waits until `assim ports` shows every host's eth0 wired (LLDP) to its own switch.
    fn wait_wiring(&self) -> Vec<Value> {
        let v =
            wait_for(&self.lab, "every host wired to its switch", Duration::from_secs(60), || {
                let ports = self.q(&["ports"])?;
                let rows = ports.as_array().cloned().unwrap_or_default();
                for sw in &self.switches {
                    for h in &sw.hosts {
                        let wired = rows.iter().any(|p| {
                            p["host"] == h.name.as_str()
                                && p["nic"] == "eth0"
                                && p["protocol"] == "lldp"
                                && p["switch_name"] == sw.name.as_str()
                        });
                        if !wired {
                            return Err(format!(
                                "{} not yet wired to {}: {ports}",
                                h.name, sw.name
                            ));
                        }
                    }
                }
                Ok(ports)
            });
        v.as_array().unwrap().clone()
    }

    /// (host, state) of every host `assim switch NAME` lists, in its order.
    fn switch_hosts(&self, name: &str) -> Vec<(String, String)> {
        let v = self.q(&["switch", name]).unwrap_or_else(|e| panic!("assim switch {name}: {e}"));
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v[0]["name"], name, "{v}");
        v[0]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["host"].as_str().unwrap().into(), h["state"].as_str().unwrap().into()))
            .collect()
    }

    /// (packets crossing switches on UDP :1990, packets to the CMA) so far.
    fn counters(&self) -> (u64, u64) {
        let read = |family: &str, table: &str, name: &str| {
            let v = nft_json(&self.core, &["list", "counter", family, table, name]);
            v["nftables"]
                .as_array()
                .and_then(|a| a.iter().find_map(|x| x["counter"]["packets"].as_u64()))
                .unwrap_or_else(|| panic!("no counter {name} in {v}"))
        };
        (read("bridge", "lab", "hb"), read("inet", "labcma", "to_cma"))
    }

    /// Measures the steady state for `window`: (cross-switch heartbeats, packets to the CMA),
    /// each per node per second.
    fn measure(&self, window: Duration) -> (f64, f64) {
        let nodes = self.all_hosts().count() as f64;
        let (hb0, cma0) = self.counters();
        let t0 = Instant::now();
        std::thread::sleep(window);
        let (hb1, cma1) = self.counters();
        let secs = t0.elapsed().as_secs_f64();
        ((hb1 - hb0) as f64 / nodes / secs, (cma1 - cma0) as f64 / nodes / secs)
    }
}

fn preconditions() -> bool {
    if !nix::unistd::geteuid().is_root() {
        assim_util::testing::skip("needs root for network namespaces (CI runs as root)");
        return false;
    }
    for (cmd, pkg) in [("lldpd", "lldpd"), ("nft", "nftables")] {
        assert!(have(cmd), "{cmd} is missing: run scripts/install-deps (Debian package {pkg})");
    }
    true
}

/// The types of event that are alarms about hosts, paths or switches.
fn is_alarm(e: &Value) -> bool {
    let t = e["type"].as_str().unwrap_or("");
    t.starts_with("switch.") || t == "path.suspect" || t == "link.suspect" || {
        t.starts_with("host.") && t != "host.up"
    }
}

#[test]
fn switch_lab_wiring_rings_traffic_and_one_crash() {
    if !preconditions() {
        return;
    }
    let lab = SwitchLab::start(3, 3);

    // The rings follow the switches: one ring per switch with exactly its hosts, an upper ring
    // of two representatives per switch, every switch ring watched from outside it.
    let rings = lab.wait_switch_rings();
    println!("switch lab rings: {}", serde_json::to_string(&rings).unwrap());
    let nodes = lab.nodes().unwrap();
    for sw in &lab.switches {
        let mine: Vec<&str> = sw.hosts.iter().map(|h| h.name.as_str()).collect();
        for h in &sw.hosts {
            let n = nodes.iter().find(|n| n["hostname"] == h.name.as_str()).unwrap();
            let outside: Vec<&str> = n["neighbours"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .filter(|p| !mine.contains(p))
                .collect();
            // Heartbeats leave the switch only between representatives, one peer outside each.
            assert!(outside.len() <= 1, "{} heartbeats {outside:?} outside {}", h.name, sw.name);
        }
    }
    let table = netns::assim_in(&lab.core, &lab.api_url, &["rings"]).unwrap();
    assert!(table.contains("MEMBERS"), "{table}");

    // `assim switches` and `assim switch SW`: each switch with exactly its hosts, all up.
    let all = lab.q(&["switches"]).unwrap();
    assert_eq!(all.as_array().unwrap().len(), lab.switches.len(), "{all}");
    for sw in &lab.switches {
        assert_eq!(
            lab.switch_hosts(&sw.name),
            sw.hosts.iter().map(|h| (h.name.clone(), "up".to_string())).collect::<Vec<_>>()
        );
    }

    // Cross-switch heartbeat traffic in steady state.
    let secs: u64 =
        std::env::var("ASSIM_LAB_MEASURE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let (cross, to_cma) = lab.measure(Duration::from_secs(secs));
    println!(
        "switch lab: {} hosts on {} switches, interval {INTERVAL}: cross-switch heartbeats \
         {cross:.3} packets/node/s, to the CMA {to_cma:.3} packets/node/s ({secs} s window)",
        lab.all_hosts().count(),
        lab.switches.len()
    );

    // SIGKILL one host: exactly one host.down, for it, and no other alarm.
    let start = lab.last_event_id();
    let victim = lab.switches[1].hosts[1].name.clone();
    let mut lab = lab;
    lab.lab.kill(&victim);
    lab.wait_event(start, &format!("host.down {victim}"), |e| {
        e["type"] == "host.down" && e["hostname"] == victim.as_str()
    });
    wait_for(&lab.lab, "the ring healed without the victim", Duration::from_secs(20), || {
        let nodes = lab.nodes()?;
        let healed = nodes.iter().filter(|n| n["state"] == "up").all(|n| {
            n["neighbours"]
                .as_array()
                .is_some_and(|a| !a.is_empty() && !a.contains(&victim.as_str().into()))
        });
        if healed { Ok(Value::Null) } else { Err(format!("{nodes:?}")) }
    });
    // A quiet window of several dead times: nothing else may follow.
    std::thread::sleep(DEAD_TIME * 3);
    let alarms: Vec<(String, String)> = lab
        .events_since(start)
        .iter()
        .filter(|e| is_alarm(e))
        .filter(|e| !(e["type"] == "host.suspect" && e["hostname"] == victim.as_str()))
        .map(|e| {
            (e["type"].as_str().unwrap().to_string(), e["hostname"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(alarms, vec![("host.down".to_string(), victim.clone())], "{}", lab.lab.logs());
    let behind = lab.switch_hosts(&lab.switches[1].name);
    assert!(behind.contains(&(victim.clone(), "down".to_string())), "{behind:?}");
    assert_eq!(behind.iter().filter(|(_, s)| s == "up").count(), 2, "{behind:?}");
}

impl SwitchLab {
    /// Sets every link of switch `s` (its host ports and its uplink) down or up.
    fn set_switch_links(&self, s: usize, up: bool) {
        let sw = &self.switches[s];
        let state = if up { "up" } else { "down" };
        for h in 1..=sw.hosts.len() {
            ip(&["-n", &sw.ns, "link", "set", &format!("p{h}"), state]);
        }
        ip(&["-n", &sw.ns, "link", "set", "uplink", state]);
    }

    /// Sets the host ports of switch `s` down or up; its uplink (and management address)
    /// stay up.
    fn set_host_ports(&self, s: usize, up: bool) {
        let sw = &self.switches[s];
        let state = if up { "up" } else { "down" };
        for h in 1..=sw.hosts.len() {
            ip(&["-n", &sw.ns, "link", "set", &format!("p{h}"), state]);
        }
    }

    /// The state of every host of switch `s` in the status.
    fn states_behind(&self, s: usize) -> Result<Vec<String>, String> {
        let nodes = self.nodes()?;
        Ok(self.switches[s]
            .hosts
            .iter()
            .map(|h| {
                nodes
                    .iter()
                    .find(|n| n["hostname"] == h.name.as_str())
                    .and_then(|n| n["state"].as_str())
                    .unwrap_or("?")
                    .to_string()
            })
            .collect())
    }
}

/// (type, host name) of the alarms after `since`, `host.suspect` left out (a suspicion is
/// the step before every verdict).
fn alarms_since(lab: &SwitchLab, since: u64) -> Vec<(String, String)> {
    lab.events_since(since)
        .iter()
        .filter(|e| is_alarm(e) && e["type"] != "host.suspect")
        .map(|e| {
            (e["type"].as_str().unwrap().to_string(), e["hostname"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Cuts every link of switch 2, checks the incident, runs `while_cut`, restores the links,
/// checks the recovery; returns the alarms and switch events after the links came back
/// (`host.suspect` left out).
fn cut_and_restore_a_switch(lab: &SwitchLab, while_cut: &dyn Fn()) -> Vec<(String, String)> {
    let cut = 1;
    let name = lab.switches[cut].name.clone();
    let start = lab.last_event_id();
    lab.set_switch_links(cut, false);
    let incident = lab.wait_event(start, &format!("switch.down/unreachable for {name}"), |e| {
        e["type"] == "switch.down" || e["type"] == "switch.unreachable"
    });
    // Nanoprobes on the other switches were asked to probe its hosts (ProbeRequest); with
    // every link of the switch down, none reached them.
    let probers = incident["tags"]["probers"].as_str().unwrap_or_default();
    assert!(!probers.is_empty(), "peer probers named: {incident}");
    assert_eq!(incident["tags"]["peer_answered"], "0", "{incident}");
    // The CMA pinged the switch's management address too (behind the same cut uplink).
    assert_eq!(incident["type"], "switch.down", "{incident}");
    assert_eq!(incident["tags"]["management"], "silent", "{incident}");
    assert_eq!(incident["body"]["management_probe"]["address"], lab.switches[cut].mgmt.as_str());
    wait_for(&lab.lab, "its hosts unreachable", Duration::from_secs(20), || {
        let states = lab.states_behind(cut)?;
        if states.iter().all(|s| s == "unreachable") {
            Ok(Value::Null)
        } else {
            Err(format!("{states:?}"))
        }
    });
    let listed = lab.q(&["hosts", "--unreachable"]).unwrap();
    let mut listed: Vec<&str> =
        listed.as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    listed.sort();
    let want: Vec<&str> = lab.switches[cut].hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(listed, want, "assim hosts --unreachable");
    // A quiet window of several dead times: still one incident, no host.down.
    std::thread::sleep(DEAD_TIME * 4);
    let alarms = alarms_since(lab, start);
    assert_eq!(alarms.len(), 1, "exactly one incident: {alarms:?}\n{incident}");
    assert!(alarms[0].0.starts_with("switch."), "{alarms:?}");
    let behind = lab.switch_hosts(&name);
    assert!(behind.iter().all(|(_, s)| s == "unreachable"), "{behind:?}");
    let sw = lab.q(&["switch", &name]).unwrap();
    assert!(matches!(sw[0]["state"].as_str(), Some("down" | "unreachable")), "{sw}");
    while_cut();

    // It comes back: one recovery event, every host up, still no host.down.
    let back = lab.last_event_id();
    lab.set_switch_links(cut, true);
    lab.wait_event(back, &format!("switch.up for {name}"), |e| e["type"] == "switch.up");
    wait_for(&lab.lab, "its hosts up again", Duration::from_secs(30), || {
        let states = lab.states_behind(cut)?;
        if states.iter().all(|s| s == "up") { Ok(Value::Null) } else { Err(format!("{states:?}")) }
    });
    std::thread::sleep(DEAD_TIME * 3);
    let after: Vec<(String, String)> = lab
        .events_since(back)
        .iter()
        .filter(|e| is_alarm(e) || e["type"] == "switch.up")
        .map(|e| {
            (e["type"].as_str().unwrap().to_string(), e["hostname"].as_str().unwrap().to_string())
        })
        .filter(|(t, _)| t != "host.suspect")
        .collect();
    let verdicts: Vec<&(String, String)> =
        after.iter().filter(|(t, _)| t.starts_with("switch.") || t.starts_with("host.")).collect();
    assert_eq!(verdicts.len(), 1, "exactly one recovery event: {after:?}");
    assert_eq!(verdicts[0].0, "switch.up", "{after:?}");
    let sw = lab.q(&["switch", &name]).unwrap();
    assert_eq!(sw[0]["state"], "up", "{sw}");
    let all = alarms_since(lab, start);
    assert!(all.iter().all(|(t, _)| t != "host.down"), "no host.down: {all:?}");
    after
}

/// A private nagios4 fed by the lab CMA's Nagios sink (issue 17): its objects are what
/// `assim export nagios` writes from the lab's CMA, its command FIFO is the sink's
/// `command_file`, its `status.dat` is rewritten every second. A process of the lab (killed
/// with it); its directory is removed on drop.
struct LabNagios {
    dir: std::path::PathBuf,
}

impl Drop for LabNagios {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("ASSIM_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Nagios host states in `status.dat`.
const NAGIOS_UP: &str = "0";
const NAGIOS_DOWN: &str = "1";
const NAGIOS_UNREACHABLE: &str = "2";

impl LabNagios {
    /// A new directory for it, and the CMA config that points a Nagios sink at its FIFO (the
    /// sink is config-only, so it exists before the CMA starts; until nagios4 runs, deliveries
    /// fail and are retried every 200 ms). Returns (directory, config file).
    fn prepare() -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "assim-lab-nagios-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(dir.join("checkresults")).unwrap();
        let config = dir.join("cma.toml");
        write(
            &config,
            &format!(
                "[[bus.sinks]]\nname = \"nagios\"\n\
                 filter = \"type:host.* or type:switch.* or type:service.*\"\n\
                 type = \"nagios\"\ncommand_file = \"{}\"\nbackoff = \"100ms\"\n\
                 max_backoff = \"200ms\"\nmax_attempts = 1000\n",
                dir.join("nagios.cmd").display()
            ),
        );
        (dir, config)
    }

    /// Exports the lab CMA's objects into `dir` and starts nagios4 on them (stock
    /// `translate_passive_host_checks=0`: the states are the sink's, not recomputed).
    fn start(lab: &mut SwitchLab, dir: std::path::PathBuf) -> LabNagios {
        let d = dir.display().to_string();
        netns::assim_in(
            &lab.core,
            &lab.api_url,
            &["export", "nagios", &d, "--contact-group", "ops"],
        )
        .unwrap_or_else(|e| panic!("assim export nagios: {e}"));
        // One contact (group `ops`, as exported) whose service notifications are appended to
        // notifications.log: which alarms Nagios itself held back, and which it sent.
        write(
            &dir.join("contacts.cfg"),
            &format!(
                "define command {{\n command_name notify-log\n command_line /bin/echo \
                 \"$NOTIFICATIONTYPE$ $HOSTNAME$ $SERVICEDESC$ $SERVICESTATE$ host=$HOSTSTATE$\" \
                 >> {d}/notifications.log\n}}\n\
                 define contactgroup {{\n contactgroup_name ops\n alias ops\n members ops1\n}}\n\
                 define contact {{\n contact_name ops1\n host_notifications_enabled 0\n\
                 service_notifications_enabled 1\n host_notification_period assim-24x7\n\
                 service_notification_period assim-24x7\n host_notification_options n\n\
                 service_notification_options w,u,c,r\n host_notification_commands notify-log\n\
                 service_notification_commands notify-log\n}}\n"
            ),
        );
        write(
            &dir.join("nagios.cfg"),
            &format!(
                "cfg_file={d}/assim.cfg\ncfg_file={d}/contacts.cfg\nlog_file={d}/nagios.log\n\
                 status_file={d}/status.dat\nstatus_update_interval=1\n\
                 object_cache_file={d}/objects.cache\nprecached_object_file={d}/objects.precache\n\
                 command_file={d}/nagios.cmd\ncheck_external_commands=1\n\
                 query_socket={d}/nagios.qh\nlock_file={d}/nagios.lock\n\
                 temp_file={d}/nagios.tmp\ntemp_path={d}\ncheck_result_path={d}/checkresults\n\
                 retain_state_information=0\nnagios_user=root\nnagios_group=root\n\
                 enable_notifications=1\nlog_passive_checks=1\nuse_syslog=0\n\
                 translate_passive_host_checks=0\npassive_host_checks_are_soft=0\n"
            ),
        );
        let core = lab.core.clone();
        lab.lab.spawn("nagios4", &core, &["nagios4", &format!("{d}/nagios.cfg")], false);
        let n = LabNagios { dir };
        wait_for(&lab.lab, "nagios4's command FIFO", Duration::from_secs(20), || {
            if n.dir.join("nagios.cmd").exists() {
                Ok(Value::Null)
            } else {
                Err(format!("no {d}/nagios.cmd yet"))
            }
        });
        n
    }

    /// The `KIND {` blocks of `status.dat` (`hoststatus`, `servicestatus`) as key=value maps.
    fn blocks(
        &self,
        kind: &str,
    ) -> Result<Vec<std::collections::BTreeMap<String, String>>, String> {
        let path = self.dir.join("status.dat");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(text
            .split(&format!("{kind} {{"))
            .skip(1)
            .map(|b| {
                b.split('}')
                    .next()
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect())
    }

    /// Waits until every host in `want` has that `current_state` in `status.dat`, checked
    /// (a passive result arrived) unless its state is "pending".
    fn wait_hosts(&self, lab: &SwitchLab, what: &str, want: &[(String, &str)]) {
        wait_for(&lab.lab, what, Duration::from_secs(30), || {
            let hosts = self.blocks("hoststatus")?;
            let mut wrong = Vec::new();
            for (name, state) in want {
                let h = hosts.iter().find(|h| h.get("host_name") == Some(name));
                let (got, checked) = h
                    .map(|h| (h["current_state"].as_str(), h["has_been_checked"].as_str()))
                    .unwrap_or(("missing", "0"));
                let ok = match *state {
                    "pending" => got == NAGIOS_UP && checked == "0",
                    s => got == s && checked == "1",
                };
                if !ok {
                    wrong.push(format!("{name}={got} (checked {checked}, want {state})"));
                }
            }
            if wrong.is_empty() { Ok(Value::Null) } else { Err(wrong.join(", ")) }
        });
    }
}

/// The switch cut of `cut_and_restore_a_switch`, watched by a real nagios4 fed by the CMA's
/// Nagios sink (issue 17): while the switch is cut Nagios shows it DOWN and its hosts
/// UNREACHABLE, every other host UP; after it returns, UP again. And a check on a host behind
/// the switch that breaks while it is cut off (issue 13's suppression): the CMA raises its
/// alarm at info with `suppressed=` and again once the switch is back (or, when the spooled
/// result arrives after `switch.up`, once, saying it was made while unreachable); Nagios sends
/// exactly one notification for it, with the host UP.
#[test]
fn switch_lab_a_cut_switch_is_one_incident_and_one_recovery() {
    if !preconditions() {
        return;
    }
    assert!(have("nagios4"), "nagios4 is missing: run scripts/install-deps (nagios4-core)");
    let (dir, cma_config) = LabNagios::prepare();
    let mut lab = SwitchLab::start_with_cma_config(3, 3, Some(&cma_config));
    let cut = 1;
    // A local check on a host of the switch to be cut: OK while the flag file exists.
    let watched = lab.switches[cut].hosts[0].name.clone();
    let flag = lab.lab.dir.join("flag");
    write(&flag, "ok");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["app", "check", "flag", "--interval", "5s", "--attempts", "1", "--data-dir"])
        .arg(lab.lab.dir.join(&watched))
        .args(["--", "check_file_age", "-w", "86400", "-c", "86400", "-f"])
        .arg(&flag)
        .output()
        .unwrap();
    assert!(out.status.success(), "assim app check: {}", String::from_utf8_lossy(&out.stderr));
    wait_for(&lab.lab, "the CMA to know local:flag", Duration::from_secs(30), || {
        let v = lab.q(&["check", "list", "--host", &watched])?;
        let known = v
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["name"] == "local:flag" && c["source"] == "local"));
        if known { Ok(v) } else { Err(format!("{v}")) }
    });
    let nagios = LabNagios::start(&mut lab, dir);
    // The switch's Nagios host is the export's name for it: `switch-` and its LLDP name.
    let switch_host = |s: usize| format!("switch-{}", lab.switches[s].name);
    let hosts_of = |s: usize, state: &'static str| -> Vec<(String, &'static str)> {
        lab.switches[s].hosts.iter().map(|h| (h.name.clone(), state)).collect()
    };
    // Before: every host UP (its host.up at registration); the switches are pending (no
    // event concerns a switch until its first incident).
    let mut before: Vec<(String, &str)> = Vec::new();
    for s in 0..lab.switches.len() {
        before.extend(hosts_of(s, NAGIOS_UP));
        before.push((switch_host(s), "pending"));
    }
    nagios.wait_hosts(&lab, "nagios4: every host UP", &before);
    let start = lab.last_event_id();
    let after = cut_and_restore_a_switch(&lab, &|| {
        // The check breaks while its host is cut off; it runs (every 5 s) before the return.
        let broke = Instant::now();
        std::fs::remove_file(&flag).unwrap();
        let mut cut_off = vec![(switch_host(cut), NAGIOS_DOWN)];
        cut_off.extend(hosts_of(cut, NAGIOS_UNREACHABLE));
        for s in (0..lab.switches.len()).filter(|s| *s != cut) {
            cut_off.extend(hosts_of(s, NAGIOS_UP));
        }
        nagios.wait_hosts(&lab, "nagios4: the switch DOWN, its hosts UNREACHABLE", &cut_off);
        std::thread::sleep(Duration::from_secs(7).saturating_sub(broke.elapsed()));
    });
    println!("after the switch returned: {after:?}");
    let mut back = vec![(switch_host(cut), NAGIOS_UP)];
    for s in 0..lab.switches.len() {
        back.extend(hosts_of(s, NAGIOS_UP));
    }
    nagios.wait_hosts(&lab, "nagios4: the switch and its hosts UP again", &back);
    let log = std::fs::read_to_string(nagios.dir.join("nagios.log")).unwrap_or_default();
    for h in &lab.switches[cut].hosts {
        assert!(
            log.contains(&format!("HOST ALERT: {};UNREACHABLE;HARD;", h.name)),
            "nagios.log has no UNREACHABLE alert for {}:\n{log}",
            h.name
        );
    }

    // The check that broke while cut off. Its result waited in the host's spool; delivered
    // before `switch.up` it is suppressed (info, `suppressed=`) and raised again after it,
    // delivered later it is raised once, marked as made while unreachable.
    let flag_alarms = |evs: &[Value]| -> Vec<Value> {
        evs.iter()
            .filter(|e| e["type"] == "service.critical" && e["tags"]["service"] == "local:flag")
            .cloned()
            .collect()
    };
    lab.wait_event(start, "service.critical for local:flag", |e| {
        !flag_alarms(std::slice::from_ref(e)).is_empty()
    });
    let first = flag_alarms(&lab.events_since(start)).remove(0);
    assert_eq!(first["hostname"], watched.as_str(), "{first}");
    if first["tags"]["suppressed"].is_string() {
        assert_eq!(first["severity"], "info", "a suppressed alarm: {first}");
        let again = lab.wait_event(start, "local:flag raised again after switch.up", |e| {
            !flag_alarms(std::slice::from_ref(e)).is_empty() && e["tags"]["held_while"].is_string()
        });
        assert_eq!(again["severity"], "critical", "{again}");
        println!("local:flag: suppressed while cut off, raised again after switch.up");
    } else {
        assert!(first["tags"]["made_while_unreachable"].is_string(), "{first}");
        assert_eq!(first["severity"], "critical", "{first}");
        println!("local:flag: delivered after switch.up, raised once");
    }
    // Nagios: the service CRITICAL, one notification, sent with its host UP.
    wait_for(
        &lab.lab,
        "nagios4: local:flag CRITICAL, one notification",
        Duration::from_secs(30),
        || {
            let svc = nagios.blocks("servicestatus")?;
            let state = svc
                .iter()
                .find(|s| {
                    s.get("host_name") == Some(&watched)
                        && s.get("service_description").map(String::as_str) == Some("local:flag")
                })
                .map(|s| s["current_state"].clone());
            let sent =
                std::fs::read_to_string(nagios.dir.join("notifications.log")).unwrap_or_default();
            let flag_lines: Vec<&str> =
                sent.lines().filter(|l| l.contains(" local:flag ")).collect();
            if state.as_deref() == Some("2") && flag_lines.len() == 1 {
                Ok(Value::String(flag_lines[0].to_owned()))
            } else {
                Err(format!("state {state:?}, notifications: {sent:?}"))
            }
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let sent = std::fs::read_to_string(nagios.dir.join("notifications.log")).unwrap_or_default();
    let flag_lines: Vec<&str> = sent.lines().filter(|l| l.contains(" local:flag ")).collect();
    assert_eq!(
        flag_lines,
        vec![format!("PROBLEM {watched} local:flag CRITICAL host=UP")],
        "{sent}"
    );
    // The same lab, another failure: only the switch's host ports go down, so it still
    // answers on its management address.
    cut_host_ports_of_a_live_switch(&lab);
}

/// Sets the host ports of switch 3 down (its uplink stays up): its hosts are silent but its
/// management address answers the CMA, so the incident is `switch.unreachable` ("alive but
/// forwards for none of its hosts"), never `switch.down` or `host.down`; then one `switch.up`.
fn cut_host_ports_of_a_live_switch(lab: &SwitchLab) {
    let cut = 2;
    let name = lab.switches[cut].name.clone();
    let start = lab.last_event_id();
    lab.set_host_ports(cut, false);
    let incident = lab.wait_event(start, &format!("switch.down/unreachable for {name}"), |e| {
        e["type"] == "switch.down" || e["type"] == "switch.unreachable"
    });
    assert_eq!(incident["type"], "switch.unreachable", "{incident}");
    assert_eq!(incident["tags"]["management"], "answered", "{incident}");
    let text = incident["text"].as_str().unwrap_or_default();
    assert!(text.contains("alive but forwards for none of its hosts"), "{incident}");
    assert_eq!(incident["body"]["management_probe"]["address"], lab.switches[cut].mgmt.as_str());
    wait_for(&lab.lab, "its hosts unreachable", Duration::from_secs(20), || {
        let states = lab.states_behind(cut)?;
        if states.iter().all(|s| s == "unreachable") {
            Ok(Value::Null)
        } else {
            Err(format!("{states:?}"))
        }
    });
    let back = lab.last_event_id();
    lab.set_host_ports(cut, true);
    lab.wait_event(back, &format!("switch.up for {name}"), |e| e["type"] == "switch.up");
    let alarms: Vec<String> = alarms_since(lab, start).into_iter().map(|(t, _)| t).collect();
    assert_eq!(alarms, ["switch.unreachable", "switch.up"], "one incident, one recovery");
}

/// The strict form of the recovery: nothing but the `switch.up`. The hosts of the returning
/// switch deliver the dead reports they spooled about the peers they could not hear while cut
/// off; the CMA discounts them (made under a peer set older than their return), where they
/// used to raise one to three `path.suspect` for hosts the CMA reaches.
#[test]
fn switch_lab_a_returning_switch_raises_nothing_but_switch_up() {
    if !preconditions() {
        return;
    }
    let lab = SwitchLab::start(3, 3);
    let after = cut_and_restore_a_switch(&lab, &|| {});
    assert_eq!(after.len(), 1, "only switch.up after the return: {after:?}");
}

#[test]
fn switch_lab_one_way_heartbeat_drop_is_a_path_suspect_without_flapping() {
    if !preconditions() {
        return;
    }
    let lab = SwitchLab::start(3, 3);
    // The issue asks for 2 minutes; the suite holds the drop for 10 dead times (15 s) and
    // `ASSIM_LAB_DROP_SECS=120` runs the full length.
    let secs: u64 =
        std::env::var("ASSIM_LAB_DROP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let victim = &lab.switches[0].hosts[1];
    let start = lab.last_event_id();
    // The victim's heartbeats (to its peers' :1990) are dropped on the way out; what it sends
    // to the CMA (:1984) and everything it receives pass.
    nft_load(
        &victim.ns,
        &format!(
            "table inet labdrop {{\n\
               chain out {{ type filter hook output priority 0; policy accept;\n\
                 udp dport {PROBE_PORT} drop\n }}\n\
             }}\n"
        ),
    );
    let until = Instant::now() + Duration::from_secs(secs);
    let mut seen = std::collections::BTreeSet::new();
    while Instant::now() < until {
        let nodes = lab.nodes().unwrap();
        let state = nodes.iter().find(|n| n["hostname"] == victim.name.as_str()).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string();
        seen.insert(state);
        std::thread::sleep(Duration::from_millis(250));
    }
    ip(&["netns", "exec", &victim.ns, "nft", "delete", "table", "inet", "labdrop"]);
    let alarms = alarms_since(&lab, start);
    let suspects = alarms.iter().filter(|(t, _)| t == "path.suspect").count();
    // At least one, and not a stream: at most one per heartbeat peer of the victim (two ring
    // neighbours, two more in the upper ring for a representative).
    assert!((1..=4).contains(&suspects), "path.suspect events: {alarms:?}");
    assert!(
        alarms.iter().all(|(t, _)| t == "path.suspect" || t == "link.suspect"),
        "nothing but path/link suspicions: {alarms:?}"
    );
    let ups = lab.events_since(start).iter().filter(|e| e["type"] == "host.up").count();
    assert_eq!(ups, 0, "no revive/rejoin flapping");
    assert!(!seen.contains("down"), "the victim's states during the drop: {seen:?}");
    println!(
        "one-way drop of {}'s heartbeats for {secs} s: {} alarm(s) {alarms:?}, states {seen:?}",
        victim.name,
        alarms.len()
    );
}
