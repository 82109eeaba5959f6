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
//! - "Run now": an anonymous viewer gets no button; signing in with the operator token (typed
//!   into `/login`) shows one per check, clicking it runs the check and shows the fresh result;
//!   the session cookie is `HttpOnly` (the page's script cannot read it).
//! - No console errors in any view; a PNG of each view under `target/web-screenshots/`.
//! - Every view's HTML (with and without a session, the run result, the sign-in page, a 404)
//!   parses without a single error in html5lib (Debian's `python3-html5lib`, the WHATWG
//!   parsing algorithm).

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
/// Debian's Python, which has `python3-html5lib` (not a `python3` earlier on the PATH).
const PYTHON: &str = "/usr/bin/python3";

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

    /// The WebDriver id of the first element matching `selector`.
    fn element(&self, selector: &str) -> String {
        let v = post(&self.url("/element"), &json!({"using": "css selector", "value": selector}));
        v["value"]["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector:?}: {v}"))
            .to_string()
    }

    /// Clicks the first element matching `selector`, like a user.
    fn click(&self, selector: &str) {
        let id = self.element(selector);
        post(&self.url(&format!("/element/{id}/click")), &json!({}));
    }

    /// Types `text` into the first element matching `selector`.
    fn type_into(&self, selector: &str, text: &str) {
        let id = self.element(selector);
        post(&self.url(&format!("/element/{id}/value")), &json!({ "text": text }));
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

/// Parses each page with html5lib (the WHATWG parsing algorithm) and fails on any parse
/// error, naming the page, the position and the error.
fn assert_valid_html(pages: &[(String, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for (i, (name, html)) in pages.iter().enumerate() {
        let path = dir.path().join(format!("{i}.html"));
        std::fs::write(&path, html).unwrap();
        args.push(name.clone());
        args.push(path.display().to_string());
    }
    let script = r#"
import sys, html5lib
bad = 0
it = iter(sys.argv[1:])
for name, path in zip(it, it):
    parser = html5lib.HTMLParser(strict=False)
    parser.parse(open(path, "rb").read())
    for pos, code, data in parser.errors:
        print(f"{name}: line {pos[0]} col {pos[1]}: {code} {data}")
        bad += 1
sys.exit(1 if bad else 0)
"#;
    let out = Command::new(PYTHON).arg("-c").arg(script).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "HTML parse errors:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GETs `path` from the site (with `cookie` if any): (status, body).
fn fetch(site: &str, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(&format!("{site}{path}"));
    if let Some(c) = cookie {
        req = req.set("Cookie", c);
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// Established TCP connections to the API's port on loopback (server side), from
/// `/proc/net/tcp`.
fn api_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "01"
        })
        .count()
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
    for need in [CHROMIUM, CHROMEDRIVER, CHECK_TCP, PYTHON] {
        if !Path::new(need).exists() {
            assim_util::testing::skip(format!("{need} is not installed (scripts/install-deps)"));
            return;
        }
    }
    if !Command::new(PYTHON).args(["-c", "import html5lib"]).status().is_ok_and(|s| s.success()) {
        assim_util::testing::skip("python3-html5lib is not installed (scripts/install-deps)");
        return;
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
    let t0 = Instant::now();
    let step = |what: &str| println!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let mut c = Cluster::new(spec, false).unwrap();
    c.start_all().unwrap();
    c.wait_ring(Duration::from_secs(30)).unwrap();
    let site = format!("http://{}", c.api);
    let b = Browser::start(shots_dir());
    let sees_events = "#live.on";

    step("cluster up");
    // 1. Problems: nothing red, and the page listens to the event stream.
    b.goto(&format!("{site}/"));
    b.wait_for(sees_events, Duration::from_secs(10));
    assert_eq!(b.count("tr.problem.sev-crit"), 0, "nothing red in a healthy cluster");
    assert_eq!(b.count("#summary .allclear"), 1);
    b.screenshot("problems");

    step("problems");
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

    step("down shown");
    // 3. Restart it: it moves to recovered.
    c.start_node(2).unwrap();
    b.wait_for("#recovered tr.recovery[data-subject='n3']", Duration::from_secs(20));
    b.wait_gone("tr.problem[data-subject='n3']", Duration::from_secs(5));
    assert_eq!(b.js("return window.__notReloaded === true;"), Value::Bool(true), "no reload");
    b.screenshot("problems-recovered");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors on the problems view: {errors:?}");

    step("recovered");
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

    step("host page");
    // 4b. Run now: no button for an anonymous viewer; sign in with the operator token, click
    // the check's button, see its fresh result.
    assert_eq!(b.count("form.run"), 0, "no Run now before signing in");
    b.click("#signin");
    b.wait_for("form.login #token", Duration::from_secs(5));
    b.type_into("#token", &c.api_token().unwrap());
    b.click("form.login button[type=submit]");
    let run = format!("#check-table tr[data-check='web:{port}'] form.run button");
    b.wait_for(&run, Duration::from_secs(5));
    assert_eq!(b.js("return location.pathname;"), Value::String("/hosts/n1".into()));
    assert_eq!(
        b.js("return document.cookie.indexOf('assim_session') < 0;"),
        Value::Bool(true),
        "the session cookie is HttpOnly"
    );
    step("signed in");
    b.click(&run);
    let took = b.wait_for(
        &format!("#run-result[data-check='web:{port}'][data-state='ok']"),
        Duration::from_secs(15),
    );
    println!("Run now answered in {took:?}");
    b.screenshot("run-now");
    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors while signing in and running: {errors:?}");
    b.click(".signout button");
    b.wait_for("#signin", Duration::from_secs(5));
    step("signed out");

    step("run now");
    // 5. Hosts table.
    b.goto(&format!("{site}/hosts"));
    assert_eq!(b.count("#hosts tr.host"), 4);
    b.screenshot("hosts");

    step("hosts");
    // 6. Topology: every host, every ring edge.
    let rings: Vec<RingView> = c.client.get_json("/api/v1/topology/rings", "rings").unwrap();
    b.goto(&format!("{site}/topology"));
    assert_eq!(b.count("#topology-svg circle.host"), 4, "every host drawn once");
    assert_eq!(b.count("#topology-svg line.ring-edge"), ring_edges(&rings), "rings: {rings:?}");
    assert!(ring_edges(&rings) >= 3, "a ring of four has edges: {rings:?}");
    b.screenshot("topology");

    step("topology");
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
    // Pages left behind (by links, form posts, sign-in and out) let their event streams go:
    // only the current page's stream, and perhaps an idle keep-alive, stay open. (Chromium
    // holds at most 6 connections per server; a leak stalls the next page for a minute.)
    let open = api_connections(c.api.port());
    assert!(open <= 3, "{open} connections to the API are open after the walk through the views");

    step("topology, events");
    // 8. Every view's HTML parses without an error, signed in and not.
    let mut pages = Vec::new();
    for path in [
        "/",
        "/hosts",
        "/hosts/n1",
        "/topology",
        "/events",
        "/events?filter=(",
        "/login",
        "/hosts/nosuch",
    ] {
        let (_, html) = fetch(&site, path, None);
        pages.push((path.to_string(), html));
    }
    // Sign in without following the 303: the cookie is on the answer that sets it.
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = match agent
        .post(&format!("{site}/login"))
        .set("Origin", &site)
        .send_form(&[("token", &c.api_token().unwrap()), ("next", "/")])
    {
        Ok(r) => r,
        Err(e) => panic!("sign-in: {e}"),
    };
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let (_, html) = fetch(&site, "/hosts/n1", Some(&cookie));
    assert!(html.contains("Run now"));
    pages.push(("/hosts/n1 (signed in)".into(), html));
    let result = agent
        .post(&format!("{site}/hosts/n1/run"))
        .set("Origin", &site)
        .set("Cookie", &cookie)
        .send_form(&[("check", &format!("web:{port}"))])
        .unwrap()
        .into_string()
        .unwrap();
    pages.push(("run result".into(), result));
    assert_valid_html(&pages);
    step("html parsed");
    println!("screenshots in {}", shots_dir().display());
}
