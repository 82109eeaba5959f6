//! The event bus against real processes: durable subscriptions across a CMA restart, local
//! events through a CMA outage, the webhook sink through a failing receiver, and the Nagios
//! sink into a real nagios4.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterSpec};
use assim_api::Event;
use assim_api::SubscriptionBatch;
use assim_cma::EventKind;

fn spec(nodes: usize, cma_args: Vec<String>) -> ClusterSpec {
    ClusterSpec {
        interval: Duration::from_millis(300),
        warn: Duration::from_millis(900),
        dead: Duration::from_millis(1500),
        cma_args,
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), nodes)
    }
}

/// `assim …` against the cluster's API; returns (success, stdout, stderr).
fn assim(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    c.run_cli(env!("CARGO_BIN_EXE_assim"), args)
}

fn send(c: &Cluster, node: usize, extra: &[&str], text: &str) -> (bool, String, String) {
    let dir = c.nodes[node].data_dir.to_str().unwrap().to_owned();
    let mut args = vec!["event", "send", "--data-dir", &dir];
    args.extend_from_slice(extra);
    args.push(text);
    assim(c, &args)
}

fn wait_socket(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("events.sock").exists() {
        assert!(Instant::now() < deadline, "no events.sock in {}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn started(nodes: usize, cma_args: Vec<String>) -> Cluster {
    let mut c = Cluster::new(spec(nodes, cma_args), false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    for n in &c.nodes {
        wait_socket(&n.data_dir);
    }
    c
}

fn local_events(c: &Cluster) -> Vec<Event> {
    c.events_since(0).unwrap().into_iter().filter(|e| e.kind == EventKind::LocalEvent).collect()
}

fn sub_events(c: &Cluster, name: &str, wait: u64) -> SubscriptionBatch {
    c.client_get_json(&format!("/api/v1/subscriptions/{name}/events?wait={wait}"))
}

trait ClientExt {
    fn client_get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T;
    fn client_send(&self, method: &str, path: &str, body: serde_json::Value) -> (u16, String);
}

impl ClientExt for Cluster {
    fn client_get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        ureq::get(&format!("http://{}{path}", self.api)).call().unwrap().into_json().unwrap()
    }
    fn client_send(&self, method: &str, path: &str, body: serde_json::Value) -> (u16, String) {
        // Requests that change state carry the CMA's operator token (issue 16, item 6).
        let token = format!("Bearer {}", self.api_token().unwrap());
        match ureq::request(method, &format!("http://{}{path}", self.api))
            .set("Authorization", &token)
            .send_json(body)
        {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn durable_cursor_resumes_exactly_after_the_last_ack_across_a_cma_restart() {
    let mut c = started(1, vec![]);
    let (code, body) = c.client_send(
        "PUT",
        "/api/v1/subscriptions/ops",
        serde_json::json!({"filter": "type:local.event and cluster=A"}),
    );
    assert_eq!(code, 201, "{body}");
    // A filter error is a 400 that points at the problem.
    let (code, body) = c.client_send(
        "PUT",
        "/api/v1/subscriptions/bad",
        serde_json::json!({"filter": "cluster=A and ("}),
    );
    assert_eq!(code, 400);
    assert!(body.contains("ends too early"), "{body}");

    for i in 1..=6 {
        let cluster = if i % 2 == 0 { "B" } else { "A" };
        let (ok, out, err) = send(
            &c,
            0,
            &["--tag", &format!("cluster={cluster}"), "--confirm"],
            &format!("event {i}"),
        );
        assert!(ok, "send failed: {out} {err}");
        assert!(out.ends_with("confirmed\n"), "{out}");
    }
    // Six local events stored; the subscription sees the three of cluster A.
    c.wait_event(0, Duration::from_secs(20), "event 6", |e| e.text == "event 6").unwrap();
    let batch = sub_events(&c, "ops", 0);
    let texts: Vec<&str> = batch.events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["event 1", "event 3", "event 5"]);
    assert!(batch.events.iter().all(|e| e.tags["cluster"] == "A" && e.tags["host"] == "n1"));
    // Acknowledge up to "event 3" only; then the CMA dies.
    let ack_to = batch.events[1].id;
    let (code, body) = c.client_send(
        "POST",
        "/api/v1/subscriptions/ops/ack",
        serde_json::json!({"through": ack_to}),
    );
    assert_eq!(code, 200, "{body}");
    c.stop_cma(true).unwrap();
    c.start_cma().unwrap();
    let batch = sub_events(&c, "ops", 0);
    assert_eq!(batch.cursor, ack_to);
    let texts: Vec<&str> = batch.events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["event 5"], "resumes exactly after the acknowledged event");
    // An ack of an event that does not exist is refused; the cursor never goes back.
    let (code, _) = c.client_send(
        "POST",
        "/api/v1/subscriptions/ops/ack",
        serde_json::json!({"through": 1_000_000}),
    );
    assert_eq!(code, 400);
    c.client_send(
        "POST",
        "/api/v1/subscriptions/ops/ack",
        serde_json::json!({"through": batch.through}),
    );
    c.client_send("POST", "/api/v1/subscriptions/ops/ack", serde_json::json!({"through": 1}));
    assert!(sub_events(&c, "ops", 0).events.is_empty());

    // The CLI: `assim subscribe` prints what is new since its last run and acknowledges it.
    let (ok, out, err) =
        assim(&c, &["subscribe", "cli", "--filter", "/^later/", "--start", "beginning"]);
    assert!(ok && out.is_empty(), "{out} {err}");
    assert!(send(&c, 0, &["--confirm"], "later one").0);
    c.wait_event(0, Duration::from_secs(20), "later one", |e| e.text == "later one").unwrap();
    let (ok, out, err) = assim(&c, &["subscribe", "cli", "--json"]);
    assert!(ok, "{err}");
    let got: Vec<Event> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 1, "{out}");
    assert_eq!(got[0].text, "later one");
    let (ok, out, _) = assim(&c, &["subscribe", "cli"]);
    assert!(ok && out.is_empty(), "already acknowledged: {out}");
    // And the ad-hoc filter on `assim events`.
    let (ok, out, err) = assim(&c, &["events", "--filter", "cluster=B and /event [46]/", "--json"]);
    assert!(ok, "{err}");
    let got: Vec<Event> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["event 4", "event 6"]);
}

#[test]
fn local_events_survive_a_cma_outage_and_arrive_once() {
    let mut c = started(1, vec![]);
    // Bad input is refused with a reason, and the nanoprobe keeps serving.
    let (ok, _, err) = send(&c, 0, &["--severity", "loud"], "x");
    assert!(!ok && err.contains("unknown severity"), "{err}");
    let (ok, _, err) = send(&c, 0, &["--tag", "host=forged"], "x");
    assert!(!ok && err.contains("set by the CMA"), "{err}");

    c.stop_cma(false).unwrap();
    let (ok, out, err) = send(
        &c,
        0,
        &["--severity", "critical", "--tag", "cluster=Compute1"],
        "RAID STATUS CHANGE while the CMA is away",
    );
    assert!(ok && out.ends_with("spooled\n"), "{out} {err}");
    // --confirm cannot succeed while the CMA is away.
    let (ok, _, err) = send(&c, 0, &["--confirm", "--timeout", "1s"], "second while away");
    assert!(!ok && err.contains("did not confirm"), "{err}");
    c.start_cma().unwrap();
    let e = c
        .wait_event(0, Duration::from_secs(30), "the spooled event", |e| {
            e.text == "RAID STATUS CHANGE while the CMA is away"
        })
        .unwrap();
    assert_eq!(e.severity, assim_cma::Severity::Critical);
    assert_eq!(e.tags["cluster"], "Compute1");
    assert_eq!(e.hostname, "n1");
    // A later confirmed event proves everything before it was applied; each arrived once.
    let (ok, out, err) = send(&c, 0, &["--confirm"], "after the outage");
    assert!(ok && out.ends_with("confirmed\n"), "{out} {err}");
    c.wait_event(0, Duration::from_secs(20), "after the outage", |e| e.text == "after the outage")
        .unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in local_events(&c) {
        *counts.entry(e.text).or_default() += 1;
    }
    assert_eq!(counts.get("RAID STATUS CHANGE while the CMA is away"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("second while away"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("after the outage"), Some(&1), "{counts:?}");

    // The SSE stream replays from `since` with the filter, one `event:`/`id:`/`data:` each.
    let resp = ureq::get(&format!(
        "http://{}/api/v1/events/stream?since=0&filter=cluster%3DCompute1",
        c.api
    ))
    .call()
    .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(resp.into_reader()));
    let mut frame = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.is_empty() && !frame.is_empty() {
            break;
        }
        if !line.starts_with(':') && !line.is_empty() {
            frame.push(line);
        }
    }
    let fields: BTreeMap<&str, &str> = frame.iter().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(fields.get("event"), Some(&"local.event"), "{frame:?}");
    assert_eq!(fields.get("id"), Some(&e.id.to_string().as_str()));
    let data: Event = serde_json::from_str(fields["data"]).unwrap();
    assert_eq!(data.text, "RAID STATUS CHANGE while the CMA is away");
}

/// A webhook receiver that fails the first `fail_first` requests with 500.
#[derive(Default)]
struct Receiver {
    requests: usize,
    fail_first: usize,
    /// Accepted (2xx) deliveries: (event id, body, signature header).
    accepted: Vec<(u64, serde_json::Value, String)>,
}

fn start_receiver(fail_first: usize) -> (std::net::SocketAddr, Arc<Mutex<Receiver>>) {
    use axum::http::{HeaderMap, StatusCode};
    let state = Arc::new(Mutex::new(Receiver { fail_first, ..Receiver::default() }));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let st = state.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let st = st.clone();
                    async move {
                        let mut r = st.lock().unwrap();
                        r.requests += 1;
                        if r.requests <= r.fail_first {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        let sig = headers
                            .get("x-assim-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let id = v["id"].as_u64().unwrap();
                        // Check the signature over the exact body here, with our own HMAC.
                        use hmac::Mac as _;
                        let mut mac =
                            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
                        mac.update(&body);
                        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                        if sig != want {
                            return StatusCode::UNAUTHORIZED;
                        }
                        r.accepted.push((id, v, sig));
                        StatusCode::NO_CONTENT
                    }
                }),
            );
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (addr, state)
}

#[test]
fn webhook_sink_retries_through_a_failing_receiver_and_delivers_each_event_once() {
    let (addr, rx) = start_receiver(4);
    let dir = tempfile_dir("webhook");
    let config = dir.join("cma.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[bus]
[[bus.tag_rules]]
text = "RAID"
add = {{ subsystem = "storage" }}

[[bus.sinks]]
name = "hook"
filter = "type:local.event and severity>=warning"
type = "webhook"
url = "http://{addr}/hook"
secret = "s3cret"
backoff = "50ms"
max_backoff = "200ms"
max_attempts = 20

[[bus.sinks]]
name = "nowhere"
filter = "type:local.event"
type = "webhook"
url = "http://127.0.0.1:9/closed"
backoff = "10ms"
max_attempts = 2
"#
        ),
    )
    .unwrap();
    let mut c = started(1, vec!["--config".into(), config.to_str().unwrap().into()]);
    for (sev, text) in [
        ("critical", "RAID STATUS CHANGE 1"),
        ("info", "ignored"),
        ("warning", "disk 2"),
        ("error", "RAID 3"),
    ] {
        let (ok, out, err) = send(&c, 0, &["--severity", sev, "--confirm"], text);
        assert!(ok, "{out} {err}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = rx.lock().unwrap().accepted.len();
        if n >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} deliveries within 30 s; logs in {}",
            c.dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Restart the CMA: the stored cursor is past the delivered events, nothing is sent again.
    c.stop_cma(false).unwrap();
    c.start_cma().unwrap();
    let (ok, _, err) = send(&c, 0, &["--severity", "critical", "--confirm"], "after restart");
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.lock().unwrap().accepted.len() < 4 {
        assert!(Instant::now() < deadline, "the event after the restart was not delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = rx.lock().unwrap();
    assert!(r.requests >= 4 + 4, "the first 4 requests failed and were retried: {}", r.requests);
    let texts: Vec<&str> = r.accepted.iter().map(|(_, v, _)| v["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["RAID STATUS CHANGE 1", "disk 2", "RAID 3", "after restart"],
        "each once, in order"
    );
    let mut ids: Vec<u64> = r.accepted.iter().map(|(id, _, _)| *id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    assert_eq!(
        r.accepted[0].1["tags"]["subsystem"], "storage",
        "tagging rule applied before delivery"
    );
    assert_eq!(r.accepted[0].1["type"], "local.event");
    drop(r);
    // The sink to a closed port gave up on each event and left dead letters, without holding
    // anything else up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dl: Vec<serde_json::Value> =
            c.client_get_json("/api/v1/subscriptions/nowhere/dead-letters");
        if dl.len() >= 5 {
            assert!(dl[0]["error"].as_str().unwrap().contains("127.0.0.1:9"), "{dl:?}");
            break;
        }
        assert!(Instant::now() < deadline, "dead letters: {dl:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "assim-bus-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            % 1_000_000_000
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A nagios4 in a temporary directory with one host (n1) and one passive service (RAID);
/// killed when dropped.
struct Nagios {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Nagios {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_nagios() -> Option<Nagios> {
    let bin = ["/usr/sbin/nagios4", "/usr/sbin/nagios"].into_iter().find(|p| Path::new(p).exists());
    let Some(bin) = bin else {
        assim_util::testing::skip("nagios4 is not installed (scripts/install-deps installs it)");
        return None;
    };
    let dir = tempfile_dir("nagios");
    let d = dir.display();
    std::fs::create_dir_all(dir.join("checkresults")).unwrap();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().unwrap().name;
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid()).unwrap().unwrap().name;
    std::fs::write(
        dir.join("nagios.cfg"),
        format!(
            "log_file={d}/nagios.log\ncfg_file={d}/objects.cfg\nobject_cache_file={d}/objects.cache\n\
             precached_object_file={d}/objects.precache\nstatus_file={d}/status.dat\n\
             status_update_interval=1\ncommand_file={d}/nagios.cmd\ncheck_external_commands=1\n\
             query_socket={d}/nagios.qh\nlock_file={d}/nagios.lock\ntemp_file={d}/nagios.tmp\n\
             temp_path={d}\ncheck_result_path={d}/checkresults\nretain_state_information=0\n\
             nagios_user={user}\nnagios_group={group}\nenable_notifications=0\n\
             execute_service_checks=0\nexecute_host_checks=0\naccept_passive_service_checks=1\n\
             accept_passive_host_checks=1\ncheck_service_freshness=0\ncheck_host_freshness=0\n\
             log_passive_checks=1\nuse_syslog=0\n"
        ),
    )
    .unwrap();
    let week: String =
        ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
            .iter()
            .map(|d| format!("  {d} 00:00-24:00\n"))
            .collect();
    std::fs::write(
        dir.join("objects.cfg"),
        format!(
            "define command {{\n  command_name dummy\n  command_line /bin/true\n}}\n\
             define timeperiod {{\n  timeperiod_name 24x7\n  alias always\n{week}}}\n\
             define contact {{\n  contact_name nobody\n  host_notifications_enabled 0\n\
               service_notifications_enabled 0\n  host_notification_period 24x7\n\
               service_notification_period 24x7\n  host_notification_options n\n\
               service_notification_options n\n  host_notification_commands dummy\n\
               service_notification_commands dummy\n}}\n\
             define host {{\n  host_name n1\n  address 127.0.0.1\n  check_command dummy\n\
               max_check_attempts 1\n  check_period 24x7\n  active_checks_enabled 0\n\
               passive_checks_enabled 1\n  contacts nobody\n  notification_period 24x7\n}}\n\
             define service {{\n  host_name n1\n  service_description RAID\n  check_command dummy\n\
               max_check_attempts 1\n  check_interval 5\n  retry_interval 1\n  check_period 24x7\n\
               active_checks_enabled 0\n  passive_checks_enabled 1\n  contacts nobody\n\
               notification_period 24x7\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg(dir.join("nagios.cfg"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .spawn()
        .expect("start nagios4");
    let n = Nagios { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !n.dir.join("nagios.cmd").exists() {
        assert!(
            Instant::now() < deadline,
            "nagios4 did not create its command file; see {}",
            n.dir.join("run.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(n)
}

/// The `servicestatus` block of `service` on `host` in nagios's status file, as key=value.
fn nagios_service_status(
    dir: &Path,
    host: &str,
    service: &str,
) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("status.dat")).ok()?;
    for block in text.split("servicestatus {").skip(1) {
        let body = block.split('}').next()?;
        let kv: BTreeMap<String, String> = body
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if kv.get("host_name").map(String::as_str) == Some(host)
            && kv.get("service_description").map(String::as_str) == Some(service)
        {
            return Some(kv);
        }
    }
    None
}

#[test]
fn nagios_sink_result_is_accepted_by_a_real_nagios4() {
    let Some(nagios) = start_nagios() else { return };
    let dir = tempfile_dir("nagios-cma");
    let config = dir.join("cma.toml");
    std::fs::write(
        &config,
        format!(
            "[[bus.sinks]]\nname = \"nagios\"\nfilter = \"type:local.event and has:service\"\n\
             type = \"nagios\"\ncommand_file = \"{}\"\nbackoff = \"100ms\"\n",
            nagios.dir.join("nagios.cmd").display()
        ),
    )
    .unwrap();
    let c = started(1, vec!["--config".into(), config.to_str().unwrap().into()]);
    let (ok, out, err) = send(
        &c,
        0,
        &["--severity", "critical", "--tag", "service=RAID", "--confirm"],
        "RAID STATUS CHANGE for VolumeID 2",
    );
    assert!(ok, "{out} {err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = nagios_service_status(&nagios.dir, "n1", "RAID")
            && s.get("plugin_output").map(String::as_str)
                == Some("RAID STATUS CHANGE for VolumeID 2")
        {
            assert_eq!(s["current_state"], "2", "critical: {s:?}");
            assert_eq!(s["has_been_checked"], "1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nagios never showed the passive result; see {} and {}",
            nagios.dir.display(),
            c.dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A nats-server with JetStream on a free loopback port; killed when dropped.
struct NatsServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_nats() -> Option<NatsServer> {
    if Command::new("nats-server").arg("--version").output().is_err() {
        assim_util::testing::skip(
            "nats-server is not installed (scripts/install-deps installs it)",
        );
        return None;
    }
    let dir = tempfile_dir("nats");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("nats.log")).unwrap())
        .spawn()
        .expect("start nats-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(NatsServer { child, dir, url: format!("nats://127.0.0.1:{port}") })
}

#[test]
fn nats_backend_round_trips_events_through_a_real_nats_server() {
    use futures_util::StreamExt as _;
    let Some(nats) = start_nats() else { return };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // NATS handles spawn on drop: keep the runtime entered for the whole test.
    let _entered = rt.enter();
    let client = rt.block_on(async_nats::connect(&nats.url)).unwrap();
    let mut sink_sub = rt.block_on(client.subscribe("sinktest.>")).unwrap();
    let dir = tempfile_dir("nats-cma");
    let config = dir.join("cma.toml");
    std::fs::write(
        &config,
        format!(
            "[[bus.sinks]]\nname = \"to-nats\"\nfilter = \"type:local.event\"\ntype = \"nats\"\n\
             url = \"{}\"\nsubject = \"sinktest\"\n",
            nats.url
        ),
    )
    .unwrap();
    let mut c = started(
        1,
        vec!["--config".into(), config.to_str().unwrap().into(), "--bus".into(), nats.url.clone()],
    );
    let (code, body) = c.client_send(
        "PUT",
        "/api/v1/subscriptions/ops",
        serde_json::json!({"filter": "type:local.* and cluster=A"}),
    );
    assert_eq!(code, 201, "{body}");
    let mut ids = Vec::new();
    for i in 1..=3 {
        let (ok, _, err) = send(&c, 0, &["--tag", "cluster=A", "--confirm"], &format!("nats {i}"));
        assert!(ok, "{err}");
        ids.push(
            c.wait_event(0, Duration::from_secs(20), "the event", |e| {
                e.text == format!("nats {i}")
            })
            .unwrap()
            .id,
        );
    }
    let js = async_nats::jetstream::new(client.clone());
    rt.block_on(async {
        // The sink: core NATS, subject <prefix>.<type>.<host>.
        for i in 1..=3 {
            let m = tokio::time::timeout(Duration::from_secs(20), sink_sub.next())
                .await
                .expect("sink message")
                .unwrap();
            assert_eq!(m.subject.as_str(), "sinktest.local.event.n1");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(v["text"], format!("nats {i}"));
        }
        // The backend: the durable consumer of the subscription gets exactly the events.
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(s) = js.get_stream("ASSIM_EVENTS").await {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "no ASSIM_EVENTS stream; logs in {}",
                c.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let consumer = loop {
            if let Ok(cons) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("assim-ops")
                .await
            {
                break cons;
            }
            assert!(Instant::now() < deadline, "no consumer assim-ops");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(consumer.cached_info().config.filter_subject, "assim.events.local.*.*");
        let mut got = Vec::new();
        let mut msgs = consumer.messages().await.unwrap();
        while got.len() < 3 {
            let m = tokio::time::timeout(Duration::from_secs(20), msgs.next())
                .await
                .expect("a JetStream message")
                .unwrap()
                .unwrap();
            assert_eq!(m.subject.as_str(), "assim.events.local.event.n1");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let msg_id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned());
            assert_eq!(msg_id, Some(v["id"].to_string()));
            got.push(v["id"].as_u64().unwrap());
            m.ack().await.unwrap();
        }
        assert_eq!(got, ids);
    });
    // After a CMA crash and restart, the stream still holds each event once.
    c.stop_cma(true).unwrap();
    c.start_cma().unwrap();
    let (ok, _, err) = send(&c, 0, &["--confirm"], "after restart");
    assert!(ok, "{err}");
    c.wait_event(0, Duration::from_secs(20), "after restart", |e| e.text == "after restart")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = c.events_since(0).unwrap().len() as u64;
        let in_stream = rt.block_on(async {
            let mut s = js.get_stream("ASSIM_EVENTS").await.unwrap();
            s.info().await.unwrap().state.messages
        });
        if in_stream == stored {
            break;
        }
        assert!(in_stream <= stored, "duplicates in the stream: {in_stream} > {stored}");
        assert!(Instant::now() < deadline, "stream has {in_stream} of {stored} events");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
