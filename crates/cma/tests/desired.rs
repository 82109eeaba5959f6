//! Desired state decided by the core ([`Authority`]): the discovery schedule and its epoch,
//! check sets from rules and discovery (with the memory of stopped services), hand-set checks,
//! run-now — and that all of it survives a restart through what the core asked to store.

mod support;

use std::time::Duration;

use assim_cma::check_sets::ManualChange;
use assim_cma::schedule::default_schedule_config;
use assim_cma::{
    Action, Authority, AuthorityConfig, ChecksError, DesiredChange, DesiredSnapshot, Output,
};
use assim_wire::msg::{Body, CheckSpec, CheckStateChange, CommandResult, DiscoveryResult};
use assim_wire::{NodeId, Timestamp};
use support::{ModelStore, T0, hello, id, key};

/// What a store holds after applying every persist output, in order.
#[derive(Debug, Default, Clone)]
struct Store {
    core: ModelStore,
    desired: DesiredSnapshot,
}

impl Store {
    fn apply(&mut self, o: &Output) {
        match o {
            Output::Core(a) => self.core.apply(a),
            Output::Persist(c) => {
                let d = &mut self.desired;
                if let DesiredChange::Discovery(r) = c {
                    for w in d.host_new.iter_mut().filter(|w| w.node == r.node) {
                        match r.name.as_str() {
                            "os" => w.os = Some(r.payload.clone()),
                            "ssh_host_keys" => w.ssh_host_keys = Some(r.payload.clone()),
                            _ => {}
                        }
                    }
                }
                match c.clone() {
                    DesiredChange::Schedule(s) => d.schedule = Some(s),
                    DesiredChange::CheckSet(s) => {
                        d.check_sets.retain(|x| x.node != s.node);
                        d.check_sets.push(s);
                    }
                    DesiredChange::ServiceState(s) => {
                        d.states.retain(|x| (x.node, &x.check) != (s.node, &s.check));
                        d.states.push(s);
                    }
                    DesiredChange::Manual(ManualChange::Put(m)) => {
                        d.manual.retain(|x| (x.node, &x.check.name) != (m.node, &m.check.name));
                        d.manual.push(m);
                    }
                    DesiredChange::Manual(ManualChange::Remove { node, name }) => {
                        d.manual.retain(|x| (x.node, &x.check.name) != (node, &name));
                    }
                    DesiredChange::Remembered { node, services } => {
                        d.remembered.retain(|x| x.0 != node);
                        d.remembered.push((node, services));
                    }
                    DesiredChange::Discovery(r) if r.name == "sockets" => {
                        d.sockets.retain(|x| x.0 != r.node);
                        d.sockets.push((r.node, r.payload.into_bytes()));
                    }
                    DesiredChange::Discovery(r) if r.name == "ssh_host_keys" => {
                        d.host_keys.retain(|x| x.0 != r.node);
                        d.host_keys.push((r.node, r.payload.into_bytes()));
                    }
                    DesiredChange::Discovery(_) => {}
                    DesiredChange::HostNew(assim_cma::host_new::HostNewChange::Waiting {
                        node,
                        due_at,
                    }) => {
                        d.host_new.retain(|w| w.node != node);
                        d.host_new.push(assim_cma::host_new::StoredWaiting {
                            node,
                            due_at,
                            ..Default::default()
                        });
                    }
                    DesiredChange::HostNew(assim_cma::host_new::HostNewChange::Raised(node)) => {
                        d.host_new.retain(|w| w.node != node);
                    }
                }
            }
            Output::Send { .. } => {}
        }
    }
}

struct H {
    a: Authority,
    now: Timestamp,
    store: Store,
    config: AuthorityConfig,
}

impl H {
    fn new() -> H {
        Self::start(AuthorityConfig::default(), Store::default(), T0).0
    }

    /// Starts (or restarts) from what `store` holds; returns the start's outputs too.
    fn start(config: AuthorityConfig, store: Store, now: Timestamp) -> (H, Vec<Output>) {
        let a = Authority::new(config.clone(), store.core.snapshot(), store.desired.clone(), now);
        let mut h = H { a, now, store, config };
        let out = h.take();
        (h, out)
    }

    fn restart(&mut self, config: AuthorityConfig, later: Duration) -> Vec<Output> {
        let (h, out) = H::start(config, self.store.clone(), self.now + later);
        *self = h;
        out
    }

    fn take(&mut self) -> Vec<Output> {
        let out: Vec<Output> = std::iter::from_fn(|| self.a.poll_output()).collect();
        for o in &out {
            self.store.apply(o);
        }
        out
    }

    fn hello(&mut self, n: u32) -> Vec<Output> {
        self.a.handle_hello(self.now, id(n), key(n), &hello(n)).unwrap();
        self.take()
    }

    fn sockets(&mut self, n: u32, listeners: &[(&str, u16)]) -> Vec<Output> {
        let d = DiscoveryResult {
            name: "sockets".into(),
            content_hash: vec![1, 2],
            payload: sockets_payload(listeners).into_bytes(),
            collected_at: 5,
            delta: false,
        };
        self.a.handle_discovery(self.now, id(n), &d).unwrap();
        self.take()
    }
}

fn sockets_payload(listeners: &[(&str, u16)]) -> String {
    let listening: Vec<serde_json::Value> = listeners
        .iter()
        .map(|(exe, port)| {
            serde_json::json!({
                "protocol": "tcp", "local": format!("0.0.0.0:{port}"), "remote": "0.0.0.0:0",
                "uid": 0, "user": "root", "inode": 1,
                "owner": {"pid": 10, "exe": format!("/usr/sbin/{exe}"), "cmdline": [exe]}
            })
        })
        .collect();
    serde_json::json!({ "listening": listening, "established": [] }).to_string()
}

/// The check sets sent, as (to, epoch, check names).
fn check_sets(out: &[Output]) -> Vec<(NodeId, u64, Vec<String>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, body: Body::CheckSet(s), .. } => {
                Some((*to, s.epoch, s.checks.iter().map(|c| c.name.clone()).collect()))
            }
            _ => None,
        })
        .collect()
}

fn schedules(out: &[Output]) -> Vec<(NodeId, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, body: Body::DiscoverySchedule(s), .. } => Some((*to, s.epoch)),
            _ => None,
        })
        .collect()
}

fn persisted(out: &[Output]) -> Vec<&DesiredChange> {
    out.iter()
        .filter_map(|o| match o {
            Output::Persist(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn hello_sends_schedule_and_check_set_after_persisting_them() {
    let mut h = H::new();
    assert!(matches!(
        persisted(&h.take())[..],
        [] // already taken at start
    ));
    let out = h.hello(1);
    assert_eq!(schedules(&out), vec![(id(1), 1)]);
    let sets = check_sets(&out);
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].1, 1, "a first set has epoch 1");
    assert!(sets[0].2.contains(&"load".to_owned()), "host checks: {:?}", sets[0].2);
    // Persist before send.
    let first_send = out.iter().position(|o| matches!(o, Output::Send { .. })).unwrap();
    let last_persist = out.iter().rposition(|o| matches!(o, Output::Persist(_))).unwrap();
    assert!(last_persist < first_send, "{out:#?}");
}

#[test]
fn schedule_epoch_survives_a_restart_and_grows_on_a_config_change() {
    let mut h = H::new();
    assert_eq!(h.store.desired.schedule.as_ref().map(|s| s.epoch), Some(1));
    h.hello(1);
    let out = h.restart(h.config.clone(), Duration::from_secs(60));
    assert!(persisted(&out).is_empty(), "same configuration, nothing to store: {out:#?}");
    assert_eq!(schedules(&h.hello(1)), vec![(id(1), 1)]);

    let mut changed =
        AuthorityConfig { discovery: default_schedule_config(), ..Default::default() };
    changed.discovery.get_mut("sockets").unwrap().interval_s = 5;
    let out = h.restart(changed.clone(), Duration::from_secs(60));
    assert!(
        matches!(persisted(&out)[..], [DesiredChange::Schedule(s)] if s.epoch == 2),
        "{out:#?}"
    );
    assert_eq!(schedules(&h.hello(1)), vec![(id(1), 2)]);
    h.restart(changed, Duration::from_secs(60));
    assert_eq!(schedules(&h.hello(1)), vec![(id(1), 2)], "and it stays 2");
}

#[test]
fn a_restart_resends_every_member_its_peer_set() {
    let mut h = H::new();
    for n in 1..=3 {
        h.hello(n);
    }
    let out = h.restart(h.config.clone(), Duration::from_secs(5));
    let mut to: Vec<NodeId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Core(Action::SendPeerSet { to, .. }) => Some(*to),
            _ => None,
        })
        .collect();
    to.sort();
    assert_eq!(to, vec![id(1), id(2), id(3)]);
}

#[test]
fn check_set_is_sent_once_per_change_and_again_on_registration() {
    let mut h = H::new();
    h.hello(1);
    let out = h.sockets(1, &[("sshd", 22)]);
    let sets = check_sets(&out);
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].1, 2);
    assert!(sets[0].2.contains(&"ssh:22".to_owned()), "{:?}", sets[0].2);
    assert!(persisted(&out).iter().any(|c| matches!(c, DesiredChange::CheckSet(s) if s.epoch == 2
        && s.monitors.iter().any(|m| m.port == 22 && m.check_name == "ssh:22"))));
    // The same sockets again: nothing new to send.
    assert!(check_sets(&h.sockets(1, &[("sshd", 22)])).is_empty());
    // Re-registration: the current set again, same epoch, nothing stored.
    let out = h.hello(1);
    assert_eq!(check_sets(&out), vec![(id(1), 2, sets[0].2.clone())]);
    assert!(!persisted(&out).iter().any(|c| matches!(c, DesiredChange::CheckSet(_))));
}

#[test]
fn check_set_epoch_survives_a_restart_and_grows_from_the_stored_one() {
    let mut h = H::new();
    h.hello(1);
    h.sockets(1, &[("sshd", 22)]);
    h.restart(h.config.clone(), Duration::from_secs(60));
    let out = h.hello(1);
    let sets = check_sets(&out);
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].1, 2, "same set, same epoch after a restart");
    assert!(sets[0].2.contains(&"ssh:22".to_owned()));
    let out = h.sockets(1, &[("sshd", 22), ("nginx", 80)]);
    assert_eq!(check_sets(&out)[0].1, 3);
}

#[test]
fn a_stopped_service_keeps_its_check_across_a_restart_until_forgotten() {
    let mut h = H::new();
    h.hello(1);
    h.sockets(1, &[("sshd", 22), ("nginx", 80)]);
    // nginx stops listening: its check stays (that is what it is for).
    let out = h.sockets(1, &[("sshd", 22)]);
    assert!(check_sets(&out).is_empty(), "the set is unchanged: {out:#?}");
    // A restart remembers it too, although the stored sockets no longer list it.
    h.restart(h.config.clone(), Duration::from_secs(60));
    let sets = check_sets(&h.hello(1));
    assert!(sets[0].2.contains(&"http:80".to_owned()), "{:?}", sets[0].2);
    let epoch = sets[0].1;
    // A day later it is forgotten.
    h.now = h.now + Duration::from_secs(25 * 3600);
    let out = h.sockets(1, &[("sshd", 22)]);
    let sets = check_sets(&out);
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].1, epoch + 1);
    assert!(!sets[0].2.contains(&"http:80".to_owned()));
    assert!(sets[0].2.contains(&"ssh:22".to_owned()));
}

#[test]
fn hand_set_checks_are_added_listed_removed_and_survive_a_restart() {
    let mut h = H::new();
    h.hello(1);
    let spec = CheckSpec {
        name: "replication".into(),
        kind: "tcp".into(),
        argv: vec!["127.0.0.1".into(), "5432".into()],
        interval_s: 30,
        ..Default::default()
    };
    let entry = h.a.add_manual_check(h.now, "web1", spec.clone()).unwrap();
    assert_eq!((entry.source.as_str(), entry.epoch), ("manual", 2));
    let out = h.take();
    assert!(check_sets(&out)[0].2.contains(&"replication".to_owned()));
    h.restart(h.config.clone(), Duration::from_secs(60));
    let list = h.a.list_checks(Some("web1")).unwrap();
    assert!(list.iter().any(|e| e.check.name == "replication" && e.source == "manual"));
    assert!(list.iter().any(|e| e.check.name == "load" && e.source == "host"));
    // Only hand-set checks can be removed.
    let err = h.a.remove_manual_check(h.now, "web1", "load").unwrap_err();
    assert!(matches!(&err, ChecksError::NotFound(m) if m.contains("comes from host")), "{err}");
    let (host, epoch) = h.a.remove_manual_check(h.now, "web1", "replication").unwrap();
    assert_eq!((host.as_str(), epoch), ("web1", 3));
    assert!(!check_sets(&h.take())[0].2.contains(&"replication".to_owned()));
    assert!(matches!(h.a.add_manual_check(h.now, "nobody", spec), Err(ChecksError::NotFound(_))));
}

#[test]
fn run_now_goes_to_the_node_and_its_answer_to_the_asker() {
    let mut h = H::new();
    h.hello(1);
    h.hello(2);
    let err = h.a.run_check(h.now, "web1", "nope").unwrap_err();
    assert!(err.contains("has no check named"), "{err}");
    let cid = h.a.run_check(h.now, "web1", "load").unwrap();
    let out = h.take();
    assert!(out.iter().any(|o| matches!(o, Output::Send { to, body: Body::RunNow(r), .. }
        if *to == id(1) && r.command_id == cid && r.check == "load")));
    let answer = CommandResult {
        command_id: cid,
        ok: true,
        error: String::new(),
        payload: b"{\"state\":\"ok\"}".to_vec(),
    };
    assert_eq!(h.a.command_result(id(2), &answer), None, "only the node asked may answer");
    let got = h.a.command_result(id(1), &answer).unwrap();
    assert_eq!(got.answer.unwrap()["state"], "ok");
    assert_eq!(h.a.command_result(id(1), &answer), None, "answered once");
}

#[test]
fn check_states_are_stored_and_repeats_raise_nothing_after_a_restart() {
    let mut h = H::new();
    h.hello(1);
    let change = |state: i32| CheckStateChange {
        check: "load".into(),
        state,
        output: "LOAD CRITICAL".into(),
        ..Default::default()
    };
    let k = h.a.handle_check_state_change(h.now, id(1), &change(2)).unwrap();
    assert!(k.is_some());
    let out = h.take();
    assert!(
        persisted(&out)
            .iter()
            .any(|c| matches!(c, DesiredChange::ServiceState(s) if s.state == "critical"))
    );
    h.restart(h.config.clone(), Duration::from_secs(60));
    h.hello(1);
    assert_eq!(h.a.handle_check_state_change(h.now, id(1), &change(2)).unwrap(), None);
}

#[test]
fn invalid_discovery_results_change_nothing() {
    let mut h = H::new();
    h.hello(1);
    let bad =
        DiscoveryResult { name: "os".into(), payload: b"not json".to_vec(), ..Default::default() };
    assert!(h.a.handle_discovery(h.now, id(1), &bad).is_err());
    assert!(h.a.handle_discovery(h.now, id(9), &DiscoveryResult::default()).is_err());
    assert!(h.take().is_empty());
}

/// Issue 17: a replaced SSH host key on the same node id is one critical `host.key_changed`;
/// the same keys after a CMA restart say nothing (the memory is restored from the store).
#[test]
fn a_changed_host_key_is_one_critical_event_and_a_restart_remembers_the_keys() {
    fn keys(h: &mut H, n: u32, key: &str) -> Vec<assim_cma::Event> {
        let payload = serde_json::json!({"keys": [{
            "file": "/etc/ssh/ssh_host_ed25519_key.pub", "key_type": "ssh-ed25519",
            "key": key, "fingerprint": "SHA256:x"}]});
        let d = DiscoveryResult {
            name: "ssh_host_keys".into(),
            content_hash: vec![1],
            payload: payload.to_string().into_bytes(),
            collected_at: 5,
            delta: false,
        };
        h.a.handle_discovery(h.now, id(n), &d).unwrap();
        h.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Core(Action::Emit(e)) => Some(e),
                _ => None,
            })
            .filter(|e| e.kind == assim_cma::EventKind::HostKeyChanged)
            .collect()
    }
    let mut h = H::new();
    h.hello(1);
    assert!(keys(&mut h, 1, "AAAA").is_empty(), "the first keys are no change");
    assert!(keys(&mut h, 1, "AAAA").is_empty());
    let config = h.config.clone();
    h.restart(config, Duration::from_secs(5));
    h.hello(1);
    assert!(keys(&mut h, 1, "AAAA").is_empty(), "a restart forgot the keys");
    let e = keys(&mut h, 1, "BBBB");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].severity, assim_cma::Severity::Critical);
    assert_eq!(e[0].tags["reason"], "replaced");
    assert_eq!(e[0].tags["removed"], "ssh-ed25519");
}

// ---------------------------------------------------------------------------------------------
// host.new (issue 17 item 3)

const OS_DOC: &str = r##"{"os_release":{"ID":"debian","VERSION_ID":"13","PRETTY_NAME":"Debian GNU/Linux 13 (trixie)"},
    "kernel_name":"Linux","kernel_release":"6.12.0","kernel_version":"#1","machine":"x86_64",
    "hostname":"h1","fqdn":"h1.example.com","machine_id":null,"virtualisation":"kvm","boot_time_unix":1}"##;
const KEYS_DOC: &str = r#"{"keys":[{"file":"/etc/ssh/ssh_host_ed25519_key.pub","key_type":"ssh-ed25519",
    "key":"AAAAC3NzaC1lZDI1NTE5AAAAIOdHnN7U","fingerprint":"SHA256:abc"}]}"#;

impl H {
    fn result(&mut self, n: u32, name: &str, payload: &str) -> Vec<Output> {
        let d = DiscoveryResult {
            name: name.into(),
            content_hash: vec![3],
            payload: payload.as_bytes().to_vec(),
            collected_at: 5,
            delta: false,
        };
        self.a.handle_discovery(self.now, id(n), &d).unwrap();
        self.take()
    }

    fn advance(&mut self, d: Duration) -> Vec<Output> {
        self.now = self.now + d;
        self.a.handle_timeout(self.now);
        self.take()
    }
}

fn host_new_events(out: &[Output]) -> Vec<&assim_cma::Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Core(Action::Emit(e)) if e.kind == assim_cma::EventKind::HostNew => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn host_new_is_raised_once_when_os_and_keys_arrived_and_never_on_a_re_registration() {
    let mut h = H::new();
    let out = h.hello(1);
    assert!(host_new_events(&out).is_empty(), "not before the OS and keys arrived");
    assert_eq!(h.store.desired.host_new.len(), 1, "the waiting node is stored: {out:#?}");
    assert!(host_new_events(&h.result(1, "os", OS_DOC)).is_empty());
    // A nanoprobe restart while it waits changes nothing.
    assert!(host_new_events(&h.hello(1)).is_empty());
    let out = h.result(1, "ssh_host_keys", KEYS_DOC);
    let ev = host_new_events(&out);
    assert_eq!(ev.len(), 1, "{out:#?}");
    let e = ev[0];
    assert_eq!(e.host, Some(id(1)));
    assert_eq!(e.tags["os"], "debian 13");
    assert_eq!(e.tags["complete"], "true");
    assert_eq!(e.tags["ssh_key_types"], "ssh-ed25519");
    assert_eq!(e.tags["addresses"], hello(1).addresses.join(","));
    let body = e.body.as_ref().unwrap();
    assert_eq!(body["hostname"], hello(1).hostname.as_str());
    assert_eq!(body["fqdn"], "h1.example.com");
    assert_eq!(body["os"]["pretty_name"], "Debian GNU/Linux 13 (trixie)");
    assert_eq!(body["ssh_host_keys"][0]["fingerprint"], "SHA256:abc");
    assert!(h.store.desired.host_new.is_empty(), "the row goes in the event's batch");
    // Never again: new results, a re-registration, a CMA restart, time passing.
    assert!(host_new_events(&h.result(1, "os", OS_DOC)).is_empty());
    assert!(host_new_events(&h.hello(1)).is_empty());
    let out = h.restart(h.config.clone(), Duration::from_secs(5));
    assert!(host_new_events(&out).is_empty());
    assert!(host_new_events(&h.hello(1)).is_empty());
    assert!(host_new_events(&h.result(1, "ssh_host_keys", KEYS_DOC)).is_empty());
    assert!(host_new_events(&h.advance(Duration::from_secs(3600))).is_empty());
    // A second node is new.
    h.hello(2);
    h.result(2, "os", OS_DOC);
    assert_eq!(host_new_events(&h.result(2, "ssh_host_keys", KEYS_DOC)).len(), 1);
}

#[test]
fn host_new_at_the_deadline_says_what_is_missing() {
    let mut h = H::new();
    h.hello(1);
    h.result(1, "os", OS_DOC);
    assert!(h.a.poll_timeout().is_some_and(|t| t <= T0 + assim_cma::host_new::DEFAULT_WAIT));
    assert!(host_new_events(&h.advance(Duration::from_secs(59))).is_empty());
    let out = h.advance(Duration::from_secs(1));
    let ev = host_new_events(&out);
    assert_eq!(ev.len(), 1, "{out:#?}");
    assert_eq!(ev[0].tags["complete"], "false");
    assert_eq!(ev[0].tags["missing"], "ssh_host_keys");
    assert!(ev[0].body.as_ref().unwrap()["ssh_host_keys"].is_null());
    assert!(h.store.desired.host_new.is_empty());
    assert!(host_new_events(&h.result(1, "ssh_host_keys", KEYS_DOC)).is_empty());
}

#[test]
fn host_new_survives_a_cma_restart_while_waiting() {
    let mut h = H::new();
    h.hello(1);
    h.result(1, "os", OS_DOC);
    // The CMA is down for 10 minutes, past the deadline: after the start the nanoprobe gets
    // `wait` to resend what its spool holds.
    let out = h.restart(h.config.clone(), Duration::from_secs(600));
    assert!(host_new_events(&out).is_empty());
    assert_eq!(h.a.host_new_waiting().len(), 1);
    assert!(host_new_events(&h.hello(1)).is_empty(), "a known node is not re-registered as new");
    let out = h.result(1, "ssh_host_keys", KEYS_DOC);
    let ev = host_new_events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].tags["complete"], "true");
    assert_eq!(ev[0].tags["os"], "debian 13", "the OS stored before the restart is used");
    // And once raised, a restart does not bring it back.
    h.restart(h.config.clone(), Duration::from_secs(600));
    assert!(h.a.host_new_waiting().is_empty());
}

#[test]
fn host_new_does_not_wait_for_a_disabled_collector() {
    let mut config = AuthorityConfig::default();
    config.discovery.get_mut("ssh_host_keys").unwrap().interval_s = 0;
    config.host_new_wait = Duration::from_secs(5);
    let (mut h, _) = H::start(config, Store::default(), T0);
    h.hello(1);
    let ev = h.result(1, "os", OS_DOC);
    let ev = host_new_events(&ev);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].tags["complete"], "true");
    assert!(!ev[0].tags.contains_key("ssh_key_types"));
}
