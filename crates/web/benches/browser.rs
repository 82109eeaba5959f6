//! The pages' render time and weight in a real browser with 1,000 and 10,000 hosts: the
//! in-memory fixture fleet (`assim_web::fixture::fleet`, as in the `pages` bench) served by the
//! page's own router on loopback, loaded by Debian's headless `chromium` over WebDriver
//! (`chromedriver`); the figures are the browser's Navigation Timing and Paint Timing entries,
//! read through WebDriver after each load:
//!
//! - `response`: `responseEnd` (the last byte of the HTML arrived), ms after navigation start;
//! - `DCL`: `domContentLoadedEventEnd` (HTML parsed, the deferred script run);
//! - `FCP`: first contentful paint; `load`: `loadEventEnd` (style sheet and icon too);
//! - `HTML KB`: the document's decoded body; `first load KB`: HTML + CSS + JS + icon on a cold
//!   cache (what the first screen transfers, uncompressed: the CMA does not compress).
//!
//! Each view is loaded five times after one warm-up load; medians are printed. The topology is
//! measured as its default (the summary above 2,000 hosts) and in full (`?full=1`); `elements`
//! counts the DOM elements of the page.
//! Run: `cargo bench -p assim-web --bench browser --profile test`. Opt-in: a bench, not a test,
//! and it prints a skip and does nothing when chromium or chromedriver is missing.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assim_web::fixture::{Fixture, fleet};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const LOADS: usize = 5;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

struct Browser {
    session: String,
    base: String,
    _driver: Proc,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Proc(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--no-first-run", "--disable-extensions"]
            }
        }}});
        let v = post(&format!("{base}/session"), &caps);
        let session = v["value"]["sessionId"].as_str().expect("a session id").to_string();
        Browser { session, base, _driver: driver }
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

    /// Clears the HTTP cache (a cold first load) through the DevTools protocol.
    fn clear_cache(&self) {
        post(
            &self.url("/goog/cdp/execute"),
            &json!({"cmd": "Network.clearBrowserCache", "params": {}}),
        );
    }

    /// The timing of the page just loaded (waits for `loadEventEnd`).
    fn timing(&self) -> Value {
        let script = r#"
            var n = performance.getEntriesByType('navigation')[0];
            if (!n || n.loadEventEnd === 0) { return null; }
            var fcp = performance.getEntriesByName('first-contentful-paint')[0];
            var res = performance.getEntriesByType('resource')
                .filter(function (r) { return r.name.indexOf('/static/') >= 0; })
                .reduce(function (s, r) { return s + r.decodedBodySize; }, 0);
            return { response: n.responseEnd, dcl: n.domContentLoadedEventEnd,
                     load: n.loadEventEnd, fcp: fcp ? fcp.startTime : 0,
                     html: n.decodedBodySize, assets: res,
                     elements: document.getElementsByTagName('*').length };
        "#;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.js(script);
            if !v.is_null() {
                return v;
            }
            assert!(Instant::now() < deadline, "the page did not finish loading");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    for need in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(need).exists() {
            println!("skipped: {need} is not installed (scripts/install-deps)");
            return;
        }
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let browser = Browser::start();
    println!(
        "{:>6} {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>13} {:>9}",
        "hosts", "view", "response", "DCL", "FCP", "load", "HTML KB", "first load KB", "elements"
    );
    for hosts in [1_000usize, 10_000] {
        let src = Fixture(Arc::new(fleet(hosts, 40)));
        // The live script's event stream: 204 tells EventSource not to reconnect.
        let app = assim_web::routes()
            .route("/api/v1/events/stream", get(|| async { StatusCode::NO_CONTENT }))
            .with_state(src);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let site = format!("http://{}", listener.local_addr().unwrap());
        let server = rt.spawn(async move { axum::serve(listener, app).await });
        for (view, path) in [
            ("problems", "/"),
            ("hosts", "/hosts"),
            ("topology (default)", "/topology"),
            ("topology (full)", "/topology?full=1"),
        ] {
            let url = format!("{site}{path}");
            browser.clear_cache();
            browser.goto(&url);
            let cold = browser.timing();
            let first_load = cold["html"].as_f64().unwrap() + cold["assets"].as_f64().unwrap();
            let mut t: [Vec<f64>; 4] = Default::default();
            for _ in 0..LOADS {
                browser.goto(&url);
                let v = browser.timing();
                for (i, k) in ["response", "dcl", "fcp", "load"].iter().enumerate() {
                    t[i].push(v[k].as_f64().unwrap_or(0.0));
                }
            }
            let [resp, dcl, fcp, load] = t.map(median);
            // Chromium records no paint entry for some loads in headless mode: "—".
            let fcp = if fcp > 0.0 { format!("{fcp:.0}") } else { "—".to_string() };
            println!(
                "{hosts:>6} {view:<20} {resp:>9.0} {dcl:>9.0} {fcp:>9} {load:>9.0} {:>9.0} {:>13.0} {:>9}",
                cold["html"].as_f64().unwrap() / 1000.0,
                first_load / 1000.0,
                cold["elements"],
            );
        }
        server.abort();
    }
    println!(
        "(ms after navigation start, median of {LOADS} loads; KB = 1,000 bytes, uncompressed)"
    );
}
