//! The web page in a real browser: Debian's headless `chromium` driven over WebDriver
//! (`chromedriver`, spoken to with a few JSON requests), against a CMA and four nanoprobes as
//! real processes on loopback.
//!
//! - The problems view shows nothing red; SIGKILL of one nanoprobe shows it down **without a
//!   reload** (a mark set in the page survives) within dead time + a few seconds; its restart
//!   moves it to "recovered".
//! - The host page lists a service found by discovery and its check's state.
//! - The topology draws every host and every ring edge (SVG elements counted against the API's
//!   rings).
//! - The event filter narrows the list.
//! - No console errors in any view; a PNG of each view under `target/web-screenshots/`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};
use assim_api::RingView;
use base64::Engine as _;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHECK_TCP: &str = "/usr/lib/nagios/plugins/check_tcp";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WebDriver session: the few commands the test needs.
struct Browser {
    base: String,
    session: String,
    shots: PathBuf,
    _driver: Proc,
}

impl Browser {
    fn start(shots: PathBuf) -> Browser {
        let port = free_port();
        let driver = Proc(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        wait_port(port, "chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--no-first-run", "--disable-extensions"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let v = post(&format!("{base}/session"), &caps);
        let session = v["value"]["sessionId"].as_str().expect("a session id").to_string();
        std::fs::create_dir_all(&shots).unwrap();
        Browser { base, session, shots, _driver: driver }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn goto(&self, url: &str) {
        post(&self.url("/url"), &json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        post(&self.url("/execute/sync"), &json!({ "script": script, "args": [] }))["value"].clone()
    }

    fn count(&self, selector: &str) -> u64 {
        let script = format!("return document.querySelectorAll({}).length;", json!(selector));
        self.js(&script).as_u64().unwrap_or(0)
    }

    /// Waits until `selector` matches at least one element.
    fn wait_for(&self, selector: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while self.count(selector) == 0 {
            assert!(start.elapsed() < within, "no {selector:?} after {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    fn wait_gone(&self, selector: &str, within: Duration) {
        let start = Instant::now();
        while self.count(selector) > 0 {
            assert!(start.elapsed() < within, "{selector:?} still there after {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, name: &str) {
        let v =
            ureq::get(&self.url("/screenshot")).call().expect("screenshot").into_json::<Value>();
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.unwrap()["value"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Console messages at level SEVERE since the last call.
    fn console_errors(&self) -> Vec<String> {
        let v = post(&self.url("/se/log"), &json!({"type": "browser"}));
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

fn post(url: &str, body: &Value) -> Value {
    match ureq::post(url).send_json(body.clone()) {
        Ok(r) => r.into_json().expect("WebDriver answers JSON"),
        Err(ureq::Error::Status(code, r)) => {
            panic!("WebDriver {url}: {code} {}", r.into_string().unwrap_or_default())
        }
        Err(e) => panic!("WebDriver {url}: {e}"),
    }
}

/// Where screenshots go: `target/web-screenshots` of this build.
fn shots_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/web-HASH → target
    let target = exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    target.join("web-screenshots")
}

/// Heartbeat edges in the rings (not the upper ring): a ring of n ≥ 3 has n, of 2 one.
fn ring_edges(rings: &[RingView]) -> u64 {
    rings
        .iter()
        .filter(|r| r.kind != "upper")
        .map(|r| match r.members.len() {
            0 | 1 => 0,
            2 => 1,
            n => n as u64,
        })
        .sum()
}

#[test]
fn the_web_page_in_chromium() {
    for need in [CHROMIUM, CHROMEDRIVER, CHECK_TCP] {
        if !Path::new(need).exists() {
            assim_util::testing::skip(format!("{need} is not installed (scripts/install-deps)"));
            return;
        }
    }
    // A server for discovery to find and a rule to watch it.
    let port = free_port();
    let _server = Proc(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for this test"),
    );
    wait_port(port, "the test web server");
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("web.toml"),
        format!(
            r#"
            [[rule]]
            name = "web"
            args = "*http.server*"
            ports = [{port}]
            kind = "nagios"
            argv = ["check_tcp", "-H", "{{ip}}", "-p", "{{port}}"]
            interval = "1s"
            [[host_check]]
            name = "load"
            disabled = true
            [[host_check]]
            name = "disk:/"
            disabled = true
            "#
        ),
    )
    .unwrap();
    let dead = Duration::from_millis(1500);
    let spec = ClusterSpec {
        interval: Duration::from_millis(300),
        warn: Duration::from_millis(900),
        dead,
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        cma_args: vec![
            "--check-rules".into(),
            rules.path().display().to_string(),
            "--discovery".into(),
            "sockets=2s".into(),
        ],
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 4)
    };
    let mut c = Cluster::new(spec, false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let site = format!("http://{}", c.api);
    let b = Browser::start(shots_dir());
    let sees_events = "#live.on";

    // 1. Problems: nothing red, and the page listens to the event stream.
    b.goto(&format!("{site}/"));
    b.wait_for(sees_events, Duration::from_secs(10));
    assert_eq!(b.count("tr.problem.sev-crit"), 0, "nothing red in a healthy cluster");
    assert_eq!(b.count("#summary .allclear"), 1);
    b.screenshot("problems");

    // 2. SIGKILL n3: it shows down without a reload.
    b.js("window.__notReloaded = true;");
    c.kill_node(2).unwrap();
    let took = b.wait_for(
        "tr.problem.sev-crit[data-kind='host.down'][data-subject='n3']",
        dead + Duration::from_secs(8),
    );
    assert_eq!(b.js("return window.__notReloaded === true;"), Value::Bool(true), "no reload");
    println!("n3 shown down {took:?} after SIGKILL (dead time {dead:?})");
    b.screenshot("problems-down");

    // 3. Restart it: it moves to recovered.
    c.start_node(2).unwrap();
    b.wait_for("#recovered tr.recovery[data-subject='n3']", Duration::from_secs(20));
    b.wait_gone("tr.problem[data-subject='n3']", Duration::from_secs(5));
    assert_eq!(b.js("return window.__notReloaded === true;"), Value::Bool(true), "no reload");
    b.screenshot("problems-recovered");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors on the problems view: {errors:?}");

    // 4. The host page lists the discovered server and its check's state. (A check's first OK
    // raises no event, so the page is reloaded while waiting for it: live updates are shown
    // above.)
    let host_page = format!("{site}/hosts/n1");
    let wanted = [
        format!("#service-table tr.service[data-port='{port}']"),
        format!("#check-table tr[data-check='web:{port}'][data-state='ok']"),
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        b.goto(&host_page);
        if wanted.iter().all(|w| b.count(w) > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1's page lacks {wanted:?}; logs in {}",
            c.dir().display()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    b.screenshot("host");

    // 5. Hosts table.
    b.goto(&format!("{site}/hosts"));
    assert_eq!(b.count("#hosts tr.host"), 4);
    b.screenshot("hosts");

    // 6. Topology: every host, every ring edge.
    let rings: Vec<RingView> = c.client.get_json("/api/v1/topology/rings", "rings").unwrap();
    b.goto(&format!("{site}/topology"));
    assert_eq!(b.count("#topology-svg circle.host"), 4, "every host drawn once");
    assert_eq!(b.count("#topology-svg line.ring-edge"), ring_edges(&rings), "rings: {rings:?}");
    assert!(ring_edges(&rings) >= 3, "a ring of four has edges: {rings:?}");
    b.screenshot("topology");

    // 7. Events: the filter narrows the list.
    b.goto(&format!("{site}/events"));
    let all = b.count("#event-table tr.event");
    b.goto(&format!("{site}/events?filter=type%3Ahost.down"));
    let down = b.count("#event-table tr.event");
    assert_eq!(down, b.count("#event-table tr.event[data-kind='host.down']"));
    assert!(down >= 1 && down < all, "the filter narrows {all} events to {down}");
    b.screenshot("events");

    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    println!("screenshots in {}", shots_dir().display());
}
