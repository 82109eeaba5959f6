//! Network-aware rings and the disambiguation of switch, host and path failures (issue 13),
//! through the core's inputs: wiring from discovery, heartbeat reports, probe replies, time.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use assim_cma::{Action, Authority, AuthorityConfig, EventKind, NodeState, Output, Severity};
use assim_cma::{DesiredSnapshot, Snapshot};
use assim_discovery::wiring::L2Link;
use assim_wire::NodeId;
use assim_wire::msg::{CheckState, CheckStateChange, DiscoveryResult, ReportKind};
use support::*;

fn link(chassis: &str) -> L2Link {
    L2Link {
        nic: "eth0".into(),
        mac: None,
        protocol: "lldp".into(),
        chassis_id: chassis.into(),
        port_id: "p1".into(),
        port_description: None,
        vlan: None,
        system_name: Some(chassis.to_uppercase()),
        system_description: None,
        platform: None,
        capabilities: vec![],
        management_addresses: vec![],
    }
}

/// Nodes 1..=switches*per, node n on switch `sw{(n-1)/per}`.
fn fabric(switches: u32, per: u32) -> Harness {
    fabric_with(assim_cma::CmaConfig::default(), switches, per, |_, _| {})
}

/// [`fabric`] with this configuration; `announce(n, link)` may change what node n hears its
/// switch announce.
fn fabric_with(
    config: assim_cma::CmaConfig,
    switches: u32,
    per: u32,
    announce: impl Fn(u32, &mut L2Link),
) -> Harness {
    let mut h = Harness::with(config, assim_cma::Snapshot::default(), T0);
    for n in 1..=switches * per {
        h.join(n);
        let mut l = link(&format!("sw{}", (n - 1) / per));
        announce(n, &mut l);
        h.cma.handle_wiring(h.now, id(n), Some(vec![l]), None);
        h.drain();
    }
    h.advance(Duration::from_secs(2));
    h.take();
    h
}

fn on_switch(h: &Harness, sw: u32) -> Vec<NodeId> {
    let key = format!("switch:sw{sw}");
    h.cma.rings().ring(&key).unwrap().order()
}

/// Every live node answers the probes the CMA sent since the last `take` (all but `dead`).
fn answer_all(h: &mut Harness, dead: &[NodeId]) {
    h.drain();
    let mut asked: Vec<NodeId> = h
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Probe { node, .. } => Some(*node),
            _ => None,
        })
        .collect();
    asked.sort();
    asked.dedup();
    for n in asked {
        if !dead.contains(&n) {
            h.answer_probe(n);
        }
    }
}

/// Every neighbour outside `members` reports each member it watches dead.
fn outside_reports(h: &mut Harness, members: &[NodeId]) {
    for &m in members {
        for w in h.cma.neighbours(m) {
            if !members.contains(&w) {
                h.report(w, ReportKind::Dead, m, 5000);
            }
        }
    }
    // The suspects miss the CMA's first probe: their ring's check opens with the second.
    let gap = assim_cma::model::confirm_gap(&h.cma.config().timing);
    h.advance(gap);
}

#[test]
fn rings_follow_the_switches_and_heartbeats_cross_only_between_representatives() {
    let h = fabric(3, 4);
    let rings = h.cma.rings();
    assert_eq!(rings.home_rings().count(), 3);
    assert_eq!(rings.upper_order().len(), 6);
    let mut crossing = 0;
    for rec in h.cma.nodes() {
        let home = rings.home_of(rec.id).unwrap();
        let mut peers = rec.peers.clone();
        peers.sort();
        let mut want = rings.neighbours(rec.id);
        want.sort();
        assert_eq!(peers, want, "stored peers are the ring neighbours");
        crossing += rec.peers.iter().filter(|p| rings.home_of(**p) != Some(home)).count();
    }
    assert_eq!(crossing, 6, "one crossing pair per switch ring");
    let rec = rings.record(&assim_cma::ring::RingKey::switch("sw1"));
    assert_eq!((rec.members.len(), rec.representatives.len(), rec.watchers.len()), (4, 2, 2));
}

#[test]
fn wiring_comes_from_the_l2neighbors_discovery_result_and_a_moved_host_changes_ring() {
    let mut a = Authority::new(
        AuthorityConfig::default(),
        Snapshot::default(),
        DesiredSnapshot::default(),
        T0,
    );
    for n in 1..=4 {
        a.handle_hello(T0, id(n), key(n), &hello(n)).unwrap();
    }
    let l2 = |chassis: &str| DiscoveryResult {
        name: "l2neighbors".into(),
        content_hash: vec![1],
        payload: format!(
            r#"{{"neighbors":[{{"interface":"eth0","protocol":"lldp","chassis_id":"{chassis}",
               "port_id":"swp1","system_name":"{chassis}"}}]}}"#
        )
        .into_bytes(),
        collected_at: 1,
        delta: false,
    };
    for n in 1..=4 {
        a.handle_discovery(T0, id(n), &l2(if n <= 2 { "aa" } else { "bb" })).unwrap();
    }
    while a.poll_output().is_some() {}
    let rings = a.cma().rings();
    assert_eq!(rings.home_of(id(1)).unwrap().0, "switch:aa");
    assert_eq!(rings.home_of(id(3)).unwrap().0, "switch:bb");
    assert_eq!(a.cma().wiring(id(1)).unwrap().wiring.switch.as_ref().unwrap().port_id, "swp1");
    // Host 2 is re-cabled to switch bb: it leaves one ring and joins the other, and the move is
    // persisted.
    a.handle_discovery(T0, id(2), &l2("bb")).unwrap();
    let outs: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(o,
        Output::Core(Action::Persist(assim_cma::Change::Wiring(w))) if w.node == id(2))));
    assert_eq!(a.cma().rings().home_of(id(2)).unwrap().0, "switch:bb");
    assert_eq!(a.cma().rings().ring("switch:aa").unwrap().len(), 1);
    assert_eq!(a.cma().stats().rewired, 5);
    // The same result again changes nothing.
    a.handle_discovery(T0, id(2), &l2("bb")).unwrap();
    let again: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    assert!(!again.iter().any(|o| matches!(o, Output::Core(Action::SendPeerSet { .. }))));
}

#[test]
fn a_dead_switch_is_one_switch_down_and_its_hosts_unreachable_not_down() {
    let mut h = fabric(4, 5);
    let gone = on_switch(&h, 1);
    outside_reports(&mut h, &gone);
    // Nothing behind the switch answers the CMA's probes.
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let ks = kinds(&acts);
    assert_eq!(ks.iter().filter(|k| **k == EventKind::SwitchDown).count(), 1, "{ks:?}");
    assert!(!ks.contains(&EventKind::HostDown), "{ks:?}");
    for n in &gone {
        assert_eq!(h.state(*n), NodeState::Unreachable);
    }
    let e = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchDown).unwrap();
    assert_eq!(e.tags["switch"], "sw1");
    assert_eq!(e.body.as_ref().unwrap()["hosts"].as_array().unwrap().len(), 5);
    assert!(e.text.contains("down or cut off"), "{}", e.text);
    check_ring(&h.cma);
    // The switch comes back with four of its five hosts: one switch.up, one host.down.
    let back: Vec<NodeId> = gone[..4].to_vec();
    h.cma.handle_alive(h.now, back[0]);
    h.advance(Duration::from_millis(1));
    for n in &back[1..] {
        assert!(h.answer_probe(*n), "the others are probed at once");
    }
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let ks = kinds(&acts);
    assert_eq!(ks.iter().filter(|k| **k == EventKind::SwitchUp).count(), 1, "{ks:?}");
    assert_eq!(ks.iter().filter(|k| **k == EventKind::HostDown).count(), 1, "{ks:?}");
    assert!(!ks.contains(&EventKind::HostUp), "hosts back with their switch are in switch.up");
    assert_eq!(h.state(gone[4]), NodeState::Down);
    assert!(back.iter().all(|n| h.state(*n) == NodeState::Up));
    check_ring(&h.cma);
}

/// Hosts cut off from their switch may lose its LLDP announcement and come back wired to no
/// switch (lldpd drops a neighbour whose link went down); `switch.up` still names the switch
/// that `switch.down` named (a Nagios sink turns the two into DOWN and UP of one host).
#[test]
fn switch_up_names_the_switch_even_when_its_hosts_lost_its_announcement() {
    let mut h = fabric(3, 3);
    let gone = on_switch(&h, 1);
    outside_reports(&mut h, &gone);
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let down = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchDown).unwrap();
    let named = down.body.as_ref().unwrap()["switch"].clone();
    assert_eq!(named["chassis_id"], "sw1", "{named}");
    assert_eq!(named["system_name"], "SW1", "{named}");
    // Back, each host reporting no LLDP neighbour (its wiring leaves the switch).
    h.cma.handle_alive(h.now, gone[0]);
    h.advance(Duration::from_millis(1));
    for n in &gone[1..] {
        assert!(h.answer_probe(*n), "the others are probed at once");
    }
    for n in &gone {
        h.cma.handle_wiring(h.now, *n, Some(vec![]), None);
    }
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let up = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchUp).expect("switch.up");
    assert_eq!(up.body.as_ref().unwrap()["switch"], named, "{:?}", up.body);
    assert_eq!(up.body.as_ref().unwrap()["hosts"].as_array().unwrap().len(), 3);
}

/// Issue 18: a suspicion that the first probe answers (a neighbour lost heartbeats by chance)
/// opens no check of its ring, even when it is reported from outside it; one that misses the
/// first probe opens the check with the second probe, one probe gap later.
#[test]
fn a_suspect_that_answers_the_first_probe_opens_no_ring_check() {
    let mut h = fabric(3, 5);
    let x = h.cma.rings().representatives(&assim_cma::ring::RingKey::switch("sw2"))[0];
    for w in h.cma.neighbours(x) {
        h.report(w, ReportKind::Dead, x, 5000);
    }
    assert_eq!(h.state(x), NodeState::Suspect);
    assert!(h.answer_probe(x));
    h.advance(Duration::from_secs(3));
    assert_eq!(h.cma.stats().ring_checks, 0);
    assert_eq!(h.state(x), NodeState::Up);
    assert!(peer_requests(&mut h).is_empty(), "no nanoprobe was asked to probe");

    let y = h.cma.rings().representatives(&assim_cma::ring::RingKey::switch("sw1"))[0];
    for w in h.cma.neighbours(y) {
        h.report(w, ReportKind::Dead, y, 5000);
    }
    let gap = assim_cma::model::confirm_gap(&h.cma.config().timing);
    h.advance(gap - Duration::from_millis(1));
    assert_eq!(h.cma.stats().ring_checks, 0, "not before the first probe went unanswered");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.cma.stats().ring_checks, 1, "with the second probe");
}

#[test]
fn a_crashed_host_is_host_down_and_no_switch_event() {
    let mut h = fabric(3, 5);
    // A representative, so the check of its switch opens too (reported from outside).
    let x = h.cma.rings().representatives(&assim_cma::ring::RingKey::switch("sw2"))[0];
    outside_reports(&mut h, &[x]);
    assert_eq!(h.cma.stats().ring_checks, 1);
    answer_all(&mut h, &[x]);
    h.advance(Duration::from_secs(3));
    let ks = kinds(&h.take());
    assert_eq!(ks.iter().filter(|k| **k == EventKind::HostDown).count(), 1, "{ks:?}");
    assert!(!ks.iter().any(|k| k.name().starts_with("switch.")), "{ks:?}");
    assert_eq!(h.state(x), NodeState::Down);
    check_ring(&h.cma);
}

#[test]
fn path_trouble_is_path_suspect_without_host_down_or_flapping() {
    let mut h = fabric(2, 5);
    let x = on_switch(&h, 0)[2];
    let nb = h.cma.neighbours(x);
    let mut seen = HashSet::new();
    // For two minutes the neighbours cannot hear x, but x answers the CMA; they repeat their
    // dead reports every 10 s (as after a peer-set change they would).
    for _ in 0..12 {
        for &w in &nb {
            h.report(w, ReportKind::Dead, x, 5000);
        }
        answer_all(&mut h, &[]);
        h.advance(Duration::from_secs(10));
        for e in events(&h.take()) {
            seen.insert(e.kind);
        }
        assert_eq!(h.state(x), NodeState::Up);
    }
    assert!(seen.contains(&EventKind::PathSuspect));
    assert!(!seen.contains(&EventKind::HostDown));
    assert_eq!(h.cma.stats().path_suspects as usize, nb.len(), "once per reporter, no flapping");
    assert_eq!(h.cma.stats().suspicions, 1);
}

#[test]
fn an_operator_pin_wins_over_discovery() {
    let mut config = assim_cma::CmaConfig::default();
    config.pins.insert(hostname(2), "rack7".into());
    let mut h = Harness::with(config, Snapshot::default(), T0);
    h.join_all(1..=3);
    assert_eq!(h.cma.rings().home_of(id(2)).unwrap().0, "pinned:rack7");
    h.cma.handle_wiring(h.now, id(2), Some(vec![link("sw0")]), None);
    h.cma.handle_wiring(h.now, id(1), Some(vec![link("sw0")]), None);
    h.drain();
    assert_eq!(h.cma.rings().home_of(id(2)).unwrap().0, "pinned:rack7");
    assert_eq!(h.cma.rings().home_of(id(1)).unwrap().0, "switch:sw0");
    assert_eq!(h.cma.rings().home_of(id(3)).unwrap().0, "unwired");
    check_ring(&h.cma);
    // The wiring survives a restart through what the core asked to store.
    let r = assim_cma::Cma::new(h.cma.config().clone(), h.store.snapshot(), h.now);
    assert_eq!(r.rings().home_of(id(1)).unwrap().0, "switch:sw0");
    assert_eq!(r.rings().home_of(id(2)).unwrap().0, "pinned:rack7");
}

/// A report as a nanoprobe spools it: made under the peer set it ran then.
fn report_under(h: &mut Harness, reporter: NodeId, about: NodeId, epoch: u64) {
    let r = assim_wire::msg::HeartbeatReport {
        kind: ReportKind::Dead as i32,
        peer: about.as_bytes().to_vec(),
        peer_addr: String::new(),
        silent_ms: 5000,
        epoch,
        at: 0,
    };
    h.cma.handle_report(h.now, reporter, &r);
    h.drain();
}

#[test]
fn reports_made_inside_an_outage_are_discounted_after_the_switch_returns() {
    let mut h = fabric(3, 4);
    let gone = on_switch(&h, 1);
    // What each host of the switch ran before the cut: the dead words it will spool about
    // every peer (its ring neighbours, and the watchers outside for a representative).
    let before: Vec<(NodeId, u64, Vec<NodeId>)> = gone
        .iter()
        .map(|n| {
            let rec = h.cma.node(*n).unwrap();
            (*n, rec.peer_epoch, rec.peers.clone())
        })
        .collect();
    // The watchers' words about the representatives, made before the cut was decided.
    let mut watcher_words = Vec::new();
    for &m in &gone {
        for w in h.cma.neighbours(m) {
            if !gone.contains(&w) {
                watcher_words.push((w, m, h.cma.node(w).unwrap().peer_epoch));
            }
        }
    }
    outside_reports(&mut h, &gone);
    h.advance(Duration::from_secs(3));
    // The rings next to it are checked when it goes down; their hosts answer.
    answer_all(&mut h, &gone);
    h.advance(Duration::from_secs(3));
    let ks = kinds(&h.take());
    assert_eq!(ks.iter().filter(|k| **k == EventKind::SwitchDown).count(), 1, "{ks:?}");
    h.advance(Duration::from_secs(30));
    h.take();
    // The switch returns: every host is heard again, then delivers its spooled dead words;
    // a watcher's word about a representative arrives late too (retransmitted).
    for (n, _, _) in &before {
        h.cma.handle_alive(h.now, *n);
    }
    h.drain();
    for (n, epoch, peers) in &before {
        for p in peers {
            report_under(&mut h, *n, *p, *epoch);
        }
    }
    for (w, m, epoch) in &watcher_words {
        report_under(&mut h, *w, *m, *epoch);
    }
    for _ in 0..10 {
        answer_all(&mut h, &[]);
        h.advance(Duration::from_millis(500));
    }
    let ks = kinds(&h.take());
    let alarms: Vec<&EventKind> =
        ks.iter().filter(|k| !matches!(k, EventKind::RingChanged | EventKind::HostUp)).collect();
    assert_eq!(alarms, vec![&EventKind::SwitchUp], "nothing but switch.up after the return");
    assert!(h.cma.stats().reports_before_return > 0);
    assert!(gone.iter().all(|n| h.state(*n) == NodeState::Up));
    // Words made after the return still count: a returned host's neighbour reports it under
    // its current set, and the CMA suspects it.
    let x = gone[0];
    let w = h.cma.neighbours(x)[0];
    h.report(w, ReportKind::Dead, x, 5000);
    assert_eq!(h.state(x), NodeState::Suspect);
    check_ring(&h.cma);
}

#[test]
fn a_registering_host_is_placed_in_its_ring_with_one_ring_changed() {
    let mut h = Harness::new();
    let mut acts = Vec::new();
    for n in 1..=8 {
        h.join(n);
        let sw = format!("sw{}", (n - 1) / 4);
        h.cma.handle_wiring(h.now, id(n), Some(vec![link(&sw)]), None);
        acts.extend(h.take());
    }
    let evs = events(&acts);
    for n in 1..=8 {
        let node = id(n).to_string();
        // Its own changes of home ring: the registration into the fallback ring, then one
        // placement into its switch's ring (no leave of the fallback ring of its own).
        let home: Vec<String> = evs
            .iter()
            .filter(|e| e.kind == EventKind::RingChanged)
            .filter(|e| e.tags.get("node") == Some(&node) && e.tags["ring"] != "upper")
            .map(|e| format!("{} {} {}", e.tags["change"], e.tags["ring"], e.tags["reason"]))
            .collect();
        let want = format!("join switch:sw{} placed", (n - 1) / 4);
        assert_eq!(home, vec!["join unwired join".to_string(), want], "host {n}");
    }
    let placed = evs.iter().find(|e| e.tags.get("reason").map(String::as_str) == Some("placed"));
    assert!(placed.unwrap().text.contains("placed by its wiring"), "{placed:?}");
    check_ring(&h.cma);
    // A later move (re-cabled) is still a leave and a join.
    h.cma.handle_wiring(h.now, id(1), Some(vec![link("sw1")]), None);
    let moved: Vec<String> = events(&h.take())
        .iter()
        .filter(|e| e.kind == EventKind::RingChanged)
        .filter(|e| e.tags.get("node") == Some(&id(1).to_string()) && e.tags["ring"] != "upper")
        .map(|e| format!("{} {}", e.tags["change"], e.tags["ring"]))
        .collect();
    assert_eq!(moved, vec!["leave switch:sw0".to_string(), "join switch:sw1".to_string()]);
}

fn dead_report(about: NodeId) -> assim_wire::msg::HeartbeatReport {
    assim_wire::msg::HeartbeatReport {
        kind: ReportKind::Dead as i32,
        peer: about.as_bytes().to_vec(),
        silent_ms: 5000,
        ..Default::default()
    }
}

/// The whole core (Authority) under virtual time: every probe of a live node is answered.
struct Core {
    a: Authority,
    now: assim_wire::Timestamp,
    log: Vec<Output>,
}

impl Core {
    /// Hosts 1..=switches*per, host n on switch `sw{(n-1)/per}` (from `l2neighbors`).
    fn fabric(switches: u32, per: u32) -> Core {
        let a = Authority::new(
            AuthorityConfig::default(),
            Snapshot::default(),
            DesiredSnapshot::default(),
            T0,
        );
        let mut c = Core { a, now: T0, log: Vec::new() };
        for n in 1..=switches * per {
            c.a.handle_hello(T0, id(n), key(n), &hello(n)).unwrap();
            let sw = format!("sw{}", (n - 1) / per);
            let l2 = DiscoveryResult {
                name: "l2neighbors".into(),
                content_hash: vec![1],
                payload: format!(
                    r#"{{"neighbors":[{{"interface":"eth0","protocol":"lldp","chassis_id":"{sw}",
                       "port_id":"p1","system_name":"{sw}"}}]}}"#
                )
                .into_bytes(),
                collected_at: 1,
                delta: false,
            };
            c.a.handle_discovery(T0, id(n), &l2).unwrap();
        }
        c.advance(Duration::from_secs(2), &[]);
        c.log.clear();
        c
    }

    fn ring(&self, sw: u32) -> Vec<NodeId> {
        self.a.cma().rings().ring(&format!("switch:sw{sw}")).unwrap().order()
    }

    /// Drains outputs, answering the probes of every node not in `silent`.
    fn drain(&mut self, silent: &[NodeId]) {
        while let Some(o) = self.a.poll_output() {
            if let Output::Core(Action::Probe { node, nonce, .. }) = &o
                && !silent.contains(node)
            {
                let (node, nonce) = (*node, *nonce);
                self.log.push(o);
                self.a.handle_probe_reply(self.now, node, nonce);
                continue;
            }
            self.log.push(o);
        }
    }

    fn advance(&mut self, d: Duration, silent: &[NodeId]) {
        let end = self.now + d;
        self.drain(silent);
        while let Some(t) = self.a.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.a.handle_timeout(self.now);
            self.drain(silent);
        }
        self.now = end;
    }

    fn events(&mut self) -> Vec<assim_cma::Event> {
        std::mem::take(&mut self.log)
            .into_iter()
            .filter_map(|o| match o {
                Output::Core(Action::Emit(e)) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn check(&mut self, n: NodeId, check: &str, state: CheckState, at: assim_wire::Timestamp) {
        let c = CheckStateChange {
            check: check.into(),
            state: state as i32,
            output: format!("{check} is {}", state.name()),
            at: at.micros(),
            ..Default::default()
        };
        self.a.handle_check_state_change(self.now, n, &c).unwrap();
        self.drain(&[]);
    }
}

#[test]
fn service_alarms_of_unreachable_hosts_are_suppressed_and_what_is_still_wrong_is_raised_at_switch_up()
 {
    let mut c = Core::fabric(3, 4);
    let gone = c.ring(1);
    let other = c.ring(2)[0];
    c.check(gone[0], "http", CheckState::Ok, c.now);
    c.check(gone[1], "disk", CheckState::Ok, c.now);
    c.events();
    // The switch goes silent: its watchers report it, nobody behind it answers.
    let cut_at = c.now;
    for &m in &gone {
        for w in c.a.cma().neighbours(m) {
            if !gone.contains(&w) {
                c.a.handle_report(c.now, w, &dead_report(m));
            }
        }
    }
    c.advance(Duration::from_secs(3), &gone);
    let ev = c.events();
    assert_eq!(ev.iter().filter(|e| e.kind == EventKind::SwitchDown).count(), 1);
    assert!(gone.iter().all(|n| c.a.cma().node(*n).unwrap().state == NodeState::Unreachable));
    c.advance(Duration::from_secs(20), &gone);
    // The switch returns: its hosts are heard, then deliver the check results they spooled
    // during the outage (made at the nanoprobes' time, inside it).
    for &g in &gone {
        c.a.handle_alive(c.now, g);
    }
    let during = cut_at + Duration::from_secs(10);
    c.check(gone[0], "http", CheckState::Critical, during);
    c.check(gone[1], "disk", CheckState::Warning, during);
    c.check(gone[1], "disk", CheckState::Ok, during + Duration::from_secs(5));
    // A host on another switch is judged as usual.
    c.check(other, "http", CheckState::Critical, c.now);
    let ev = c.events();
    let svc: Vec<&assim_cma::Event> =
        ev.iter().filter(|e| e.kind.name().starts_with("service.")).collect();
    assert_eq!(svc.len(), 4, "every change is recorded as an event: {svc:#?}");
    for e in &svc[..3] {
        assert_eq!(e.severity, Severity::Info, "suppressed: {}", e.text);
        assert_eq!(e.tags["suppressed"], "sw1");
        assert!(e.text.contains("alarm suppressed"), "{}", e.text);
    }
    assert_eq!(svc[3].severity, EventKind::ServiceCritical.default_severity());
    assert!(!svc[3].tags.contains_key("suppressed"));
    assert_eq!(c.a.held_alarms(gone[0]), vec!["http".to_string()]);
    assert!(c.a.held_alarms(gone[1]).is_empty(), "recovered during the outage");
    // switch.up, then the alarm that is still wrong, once, at its own severity.
    c.advance(Duration::from_secs(3), &[]);
    let ev = c.events();
    let ks: Vec<EventKind> = ev.iter().map(|e| e.kind).collect();
    let up = ks.iter().position(|k| *k == EventKind::SwitchUp).expect("switch.up");
    let held: Vec<&assim_cma::Event> =
        ev.iter().filter(|e| e.kind.name().starts_with("service.")).collect();
    assert_eq!(held.len(), 1, "{ks:?}");
    let e = held[0];
    assert_eq!((e.kind, e.host), (EventKind::ServiceCritical, Some(gone[0])));
    assert_eq!(e.severity, EventKind::ServiceCritical.default_severity());
    assert_eq!(e.tags["held_while"], "sw1");
    assert!(e.text.contains("still CRITICAL"), "{}", e.text);
    assert!(ks.iter().position(|k| *k == EventKind::ServiceCritical).unwrap() > up);
    assert!(c.a.held_alarms(gone[0]).is_empty());
    // A result made inside the outage that arrives after switch.up is raised, and says so.
    c.check(gone[2], "ntp", CheckState::Warning, during);
    let ev = c.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].severity, EventKind::ServiceWarning.default_severity());
    assert_eq!(ev[0].tags["made_while_unreachable"], "sw1");
    assert!(ev[0].text.contains("delivered late"), "{}", ev[0].text);
    // Results made after the return are plain.
    c.check(gone[2], "ntp", CheckState::Critical, c.now);
    let ev = c.events();
    assert!(!ev[0].tags.contains_key("made_while_unreachable"), "{:?}", ev[0].tags);
}

/// The `ProbeRequest`s the CMA sent since the last `take`: (prober, target, command id).
fn peer_requests(h: &mut Harness) -> Vec<(NodeId, NodeId, u64)> {
    h.drain();
    h.log
        .iter()
        .filter_map(|a| match a {
            Action::ProbeRequest { to, request, .. } => {
                Some((*to, NodeId::from_slice(&request.target).unwrap(), request.command_id))
            }
            _ => None,
        })
        .collect()
}

fn peer_answer(h: &mut Harness, (prober, target, command_id): (NodeId, NodeId, u64), yes: bool) {
    let r = assim_wire::msg::ProbeResult {
        command_id,
        target: target.as_bytes().to_vec(),
        answered: yes,
        rtt_us: if yes { 300 } else { 0 },
        attempts: 1,
    };
    h.cma.handle_probe_result(h.now, prober, &r);
    h.drain();
}

#[test]
fn a_checked_ring_is_probed_by_nanoprobes_on_other_switches_and_their_silence_confirms_the_switch()
{
    let mut h = fabric(4, 5);
    let gone = on_switch(&h, 1);
    outside_reports(&mut h, &gone);
    let asked = peer_requests(&mut h);
    let ring = assim_cma::ring::RingKey::switch("sw1");
    let probers: HashSet<NodeId> = asked.iter().map(|a| a.0).collect();
    assert_eq!(probers.len(), 2, "two probers: {asked:?}");
    for p in &probers {
        let home = h.cma.rings().home_of(*p).unwrap();
        assert_ne!(home, &ring, "probers are outside the silent ring");
        assert_eq!(h.state(*p), NodeState::Up);
    }
    let targets: HashSet<NodeId> = asked.iter().map(|a| a.1).collect();
    assert_eq!(targets, gone.iter().copied().collect(), "every member (5 ≤ the sample size)");
    // Each request names the target's address and key, for the prober to seal to it.
    let Some(Action::ProbeRequest { request, .. }) =
        h.log.iter().find(|a| matches!(a, Action::ProbeRequest { .. }))
    else {
        unreachable!()
    };
    let t = NodeId::from_slice(&request.target).unwrap();
    assert_eq!(request.addr, h.cma.node(t).unwrap().listen_addr.to_string());
    assert_eq!(request.public_key, h.cma.node(t).unwrap().public_key.to_vec());
    // Nobody reaches the switch's hosts; a forged result (wrong prober) is not evidence.
    let forged = (gone[0], asked[0].1, asked[0].2);
    peer_answer(&mut h, forged, true);
    assert_eq!(h.cma.stats().peer_probe_unmatched, 1);
    for a in &asked {
        peer_answer(&mut h, *a, false);
    }
    peer_answer(&mut h, asked[0], false);
    assert_eq!(h.cma.stats().peer_probe_unmatched, 2, "a repeated result is not news");
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let e = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchDown).expect("down");
    assert!(e.text.contains("nor probes from"), "{}", e.text);
    assert_eq!(e.tags["peer_answered"], "0");
    assert_eq!(e.tags["peer_tried"], "5");
    assert_eq!(e.body.as_ref().unwrap()["peer_probes"]["probers"].as_array().unwrap().len(), 2);
    assert!(!kinds(&acts).contains(&EventKind::HostDown));
}

#[test]
fn hosts_that_answer_a_peer_but_not_the_cma_make_the_switch_unreachable_not_down() {
    let mut h = fabric(4, 5);
    let gone = on_switch(&h, 1);
    outside_reports(&mut h, &gone);
    let asked = peer_requests(&mut h);
    // The CMA reaches none of them, but a nanoprobe on another switch reaches them all.
    for a in &asked {
        peer_answer(&mut h, *a, true);
    }
    assert_eq!(h.cma.stats().peer_probe_answered as usize, asked.len());
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let ks = kinds(&acts);
    assert!(!ks.contains(&EventKind::SwitchDown), "{ks:?}");
    assert!(!ks.contains(&EventKind::HostDown), "{ks:?}");
    let e = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchUnreachable).unwrap();
    assert!(e.text.contains("cut off from the CMA"), "{}", e.text);
    assert_eq!(e.tags["peer_answered"], "5");
    for n in &gone {
        assert_eq!(h.state(*n), NodeState::Unreachable);
    }
}

#[test]
fn a_host_only_a_peer_on_another_switch_reaches_is_path_suspect_not_down() {
    let mut h = fabric(3, 5);
    let x = h.cma.rings().representatives(&assim_cma::ring::RingKey::switch("sw2"))[0];
    outside_reports(&mut h, &[x]);
    let asked: Vec<_> = peer_requests(&mut h).into_iter().filter(|a| a.1 == x).collect();
    assert!(!asked.is_empty());
    // Its ring answers the CMA, x does not; but a prober reaches it.
    answer_all(&mut h, &[x]);
    peer_answer(&mut h, asked[0], true);
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let ks = kinds(&acts);
    assert!(!ks.contains(&EventKind::HostDown), "{ks:?}");
    assert!(!ks.iter().any(|k| k.name().starts_with("switch.")), "{ks:?}");
    let e = events(&acts).into_iter().find(|e| e.kind == EventKind::PathSuspect).unwrap();
    assert_eq!(e.tags["proof"], "peer-probe");
    assert_eq!(h.state(x), NodeState::Up);
    check_ring(&h.cma);
}

/// Like [`fabric`], with management probes on; each switch `swN` announces the management
/// address 192.0.2.(N+1), except that the first host of switch 1 claims 198.51.100.9 for it
/// (one host cannot out-vote its ring).
fn managed_fabric(switches: u32, per: u32) -> Harness {
    let config = assim_cma::CmaConfig { management_probes: true, ..Default::default() };
    fabric_with(config, switches, per, |n, l| {
        let sw = (n - 1) / per;
        l.management_addresses =
            vec![if n == per + 1 { "198.51.100.9".into() } else { format!("192.0.2.{}", sw + 1) }];
    })
}

/// The management pings asked since the last `take`: (id, address).
fn management_pings(h: &mut Harness) -> Vec<(u64, std::net::IpAddr)> {
    h.drain();
    h.log
        .iter()
        .filter_map(|a| match a {
            Action::ProbeManagement { id, address, .. } => Some((*id, *address)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_switch_whose_management_address_answers_is_alive_and_its_silent_hosts_unreachable() {
    let mut h = managed_fabric(4, 5);
    let gone = on_switch(&h, 1);
    outside_reports(&mut h, &gone);
    let pings = management_pings(&mut h);
    assert_eq!(pings.len(), 1, "one ping per check: {pings:?}");
    assert_eq!(pings[0].1.to_string(), "192.0.2.2", "the address most of the ring heard");
    h.cma.handle_management_probe(h.now, pings[0].0 + 1000, true);
    assert_eq!(h.cma.stats().management_unmatched, 1, "an id nobody asked for decides nothing");
    h.cma.handle_management_probe(h.now, pings[0].0, true);
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let ks = kinds(&acts);
    assert!(!ks.contains(&EventKind::SwitchDown), "{ks:?}");
    assert!(!ks.contains(&EventKind::HostDown), "{ks:?}");
    let e = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchUnreachable).unwrap();
    assert!(e.text.contains("alive but forwards for none of its hosts"), "{}", e.text);
    assert!(e.text.contains("192.0.2.2"), "{}", e.text);
    assert_eq!(e.tags["management"], "answered");
    let body = e.body.as_ref().unwrap();
    assert_eq!(body["management_probe"]["address"], "192.0.2.2");
    assert_eq!(body["management_probe"]["answered"], true);
    for n in &gone {
        assert_eq!(h.state(*n), NodeState::Unreachable);
    }
    // An answer after the check closed is late: counted, nothing decided.
    h.cma.handle_management_probe(h.now, pings[0].0, false);
    assert_eq!(h.cma.stats().management_unmatched, 2);
}

#[test]
fn a_switch_whose_management_address_is_silent_too_is_down_and_says_so() {
    let mut h = managed_fabric(4, 5);
    let gone = on_switch(&h, 2);
    outside_reports(&mut h, &gone);
    let pings = management_pings(&mut h);
    assert_eq!(pings.iter().map(|p| p.1.to_string()).collect::<Vec<_>>(), vec!["192.0.2.3"]);
    h.cma.handle_management_probe(h.now, pings[0].0, false);
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let e = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchDown).expect("down");
    assert!(e.text.contains("nor did its management address 192.0.2.3"), "{}", e.text);
    assert_eq!(e.tags["management"], "silent");
    assert!(!kinds(&acts).contains(&EventKind::HostDown));
}

#[test]
fn without_management_probes_or_an_answer_the_decision_is_unchanged() {
    // Off (the default, as in the simulator): no ping is asked for.
    let mut h = fabric(4, 5);
    let gone = on_switch(&h, 1);
    outside_reports(&mut h, &gone);
    assert!(management_pings(&mut h).is_empty());
    // On, but the ping does not come back before the deadline: as if not sent.
    let mut h = managed_fabric(4, 5);
    let gone = on_switch(&h, 3);
    outside_reports(&mut h, &gone);
    assert_eq!(management_pings(&mut h).len(), 1);
    h.advance(Duration::from_secs(3));
    let acts = h.take();
    let e = events(&acts).into_iter().find(|e| e.kind == EventKind::SwitchDown).expect("down");
    assert!(!e.text.contains("management"), "{}", e.text);
    assert!(!e.tags.contains_key("management"));
    assert_eq!(e.body.as_ref().unwrap()["management_probe"]["answered"], serde_json::Value::Null);
}
