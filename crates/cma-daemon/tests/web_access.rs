//! Who may press "Run now" on the web page: the API's guard over HTTP (the in-memory fixture
//! fleet of `assim-web` behind a real `ApiState`, a stand-in CMA task answering run-now).
//!
//! Without a session or token: no button, and the run post is refused (401; 403 from another
//! site). A wrong token opens no session; the right one opens a session whose cookie is not the
//! token; with it the button shows and runs the check through the API's code path, and the
//! answer is escaped. The session does not count for the JSON API's writes; a form posted from
//! another origin is refused with a session or a bearer token; sign-out ends the session; too
//! many wrong tokens block sign-in. With a configured token, the pages send a browser to sign
//! in, and a session reads them (and the event stream the page listens to).

use std::sync::{Arc, Mutex};

use assim_cma_daemon::api::{ApiState, CmaInfo};
use assim_cma_daemon::api_access::ApiAccess;
use assim_cma_daemon::cma::checks_cma::ChecksRequest;
use assim_cma_daemon::metrics::SharedMetrics;
use assim_store::{EventLog, OpenEventLog, OpenQueries, Queries};
use assim_wire::NodeId;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-operator";
const CONFIGURED: &str = "configured-token-for-reads";

/// Starts the API over a fixture fleet; `configured`: a token that makes reads need one.
/// Returns its base URL and the (host, check) pairs the stand-in CMA was asked to run.
async fn start(configured: Option<&str>) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let data = assim_web::fixture::fleet(8, 4);
    let d2 = data.clone();
    let queries: OpenQueries = Arc::new(move || Ok(Box::new(data.clone()) as Box<dyn Queries>));
    let events: OpenEventLog = Arc::new(move || Ok(Box::new(d2.clone()) as Box<dyn EventLog>));
    let (_tx, last_event) = tokio::sync::watch::channel(0);
    std::mem::forget(_tx);
    let info = CmaInfo {
        node_id: NodeId::from_slice(&[7; 16]).unwrap(),
        fingerprint: "fp".into(),
        listen: "127.0.0.1:1984".parse().unwrap(),
        version: "test".into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let access = ApiAccess::new(TOKEN, configured, addr, &[], &[]);
    let (runner, mut requests) = tokio::sync::mpsc::channel(4);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    // The CMA task's part of run-now: answers like a nanoprobe, with hostile output.
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            if let ChecksRequest::Run(r) = req {
                seen.lock().unwrap().push((r.host.clone(), r.check.clone()));
                let answer = if r.check == "ssh" {
                    Ok(serde_json::json!({
                        "state": "warning", "output": "fresh <b>result</b>", "long_output": "",
                        "perfdata": "time=0.002s", "duration_ms": 7, "exit_code": 1
                    }))
                } else {
                    Err(format!("host {} has no check {:?}", r.host, r.check))
                };
                let _ = r.reply.send(answer);
            }
        }
    });
    let state = ApiState::with_engine(
        queries,
        events,
        Arc::new(SharedMetrics::default()),
        last_event,
        access,
        info,
    )
    .unwrap()
    .with_check_runner(runner);
    tokio::spawn(assim_cma_daemon::api::serve(listener, state));
    (format!("http://{addr}"), asked)
}

/// One HTTP exchange without following redirects: (status, headers we look at, body).
struct Answer {
    status: u16,
    location: Option<String>,
    cookie: Option<String>,
    body: String,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    Answer {
        status: r.status(),
        location: r.header("location").map(str::to_owned),
        cookie: r.header("set-cookie").map(str::to_owned),
        body: r.into_string().unwrap(),
    }
}

fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().get(&format!("{base}{path}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    answer(req.call())
}

fn post(base: &str, path: &str, headers: &[(&str, &str)], form: &[(&str, &str)]) -> Answer {
    let mut req = agent().post(&format!("{base}{path}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    answer(req.send_form(form))
}

/// Signs in with `token` from the page's own origin.
fn sign_in(base: &str, token: &str, next: &str) -> Answer {
    post(base, "/login", &[("Origin", base)], &[("token", token), ("next", next)])
}

fn cookie_of(a: &Answer) -> String {
    let c = a.cookie.as_deref().expect("a session cookie");
    c.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_sees_and_uses_run_now() {
    let (base, asked) = start(None).await;
    tokio::task::spawn_blocking(move || {
        let host = "/hosts/h00001";
        let run = "/hosts/h00001/run";
        // Anonymous: the page reads, with no button and a way to sign in.
        let a = get(&base, host, &[]);
        assert_eq!(a.status, 200);
        assert!(!a.body.contains("Run now"), "no button for an anonymous viewer");
        assert!(a.body.contains("id=\"signin\""), "{}", a.body);
        let a = post(&base, run, &[("Origin", &base)], &[("check", "ssh")]);
        assert_eq!(a.status, 401, "{}", a.body);
        assert!(a.body.contains("/login?next="), "the refusal links to sign-in: {}", a.body);
        assert_eq!(post(&base, run, &[], &[("check", "ssh")]).status, 403, "no Origin");
        assert!(asked.lock().unwrap().is_empty(), "nothing ran");

        // A wrong token opens nothing; sign-in from another site is refused.
        let a = sign_in(&base, "wrong-token-wrong-token", host);
        assert_eq!(a.status, 401);
        assert!(a.cookie.is_none());
        assert!(a.body.contains("not the CMA's operator token"), "{}", a.body);
        let a = post(
            &base,
            "/login",
            &[("Origin", "http://evil.example")],
            &[("token", TOKEN), ("next", host)],
        );
        assert_eq!(a.status, 403);
        assert!(a.cookie.is_none());

        // The right token: a session cookie (not the token), back to the page asked for.
        let a = sign_in(&base, TOKEN, host);
        assert_eq!(a.status, 303, "{}", a.body);
        assert_eq!(a.location.as_deref(), Some(host));
        let set = a.cookie.clone().unwrap();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(!set.contains("Secure"), "plain http: no Secure flag");
        assert!(!set.contains(TOKEN), "the cookie is not the token: {set}");
        let cookie = cookie_of(&a);
        // An open redirect is not possible.
        let a = sign_in(&base, TOKEN, "//evil.example/");
        assert_eq!(a.location.as_deref(), Some("/"));
        // Posted over https (a TLS proxy in front): Secure.
        let https = base.replace("http://", "https://");
        let a = post(&base, "/login", &[("Origin", &https)], &[("token", TOKEN)]);
        assert_eq!(a.status, 303);
        assert!(a.cookie.unwrap().contains("; Secure"), "the Origin says https");

        // Signed in: the buttons, and a run through the API's code path, escaped.
        let a = get(&base, host, &[("Cookie", &cookie)]);
        assert_eq!(a.body.matches(">Run now</button>").count(), 2, "one per check");
        assert!(a.body.contains("Sign out"));
        let a = post(&base, run, &[("Cookie", &cookie), ("Origin", &base)], &[("check", "ssh")]);
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("id=\"run-result\" data-state=\"warning\""), "{}", a.body);
        assert!(a.body.contains("fresh &lt;b&gt;result&lt;/b&gt;"), "escaped: {}", a.body);
        assert!(!a.body.contains("<b>result"));
        assert_eq!(asked.lock().unwrap().last().unwrap(), &("h00001".into(), "ssh".into()));
        // An unknown check: the CMA's refusal, escaped.
        let a = post(
            &base,
            run,
            &[("Cookie", &cookie), ("Origin", &base)],
            &[("check", "<script>x</script>")],
        );
        assert_eq!(a.status, 404, "{}", a.body);
        assert!(a.body.contains("&lt;script&gt;x&lt;/script&gt;") && !a.body.contains("<script>x"));

        // The same session from another site: refused, nothing runs.
        let before = asked.lock().unwrap().len();
        let a = post(
            &base,
            run,
            &[("Cookie", &cookie), ("Origin", "http://evil.example")],
            &[("check", "ssh")],
        );
        assert_eq!(a.status, 403, "{}", a.body);
        let a = post(
            &base,
            run,
            &[("Cookie", &cookie), ("Referer", "http://evil.example/page")],
            &[("check", "ssh")],
        );
        assert_eq!(a.status, 403, "a Referer from elsewhere");
        // A bearer token (a proxy adds it to every request) does not lift the origin rule.
        let bearer = format!("Bearer {TOKEN}");
        let a = post(
            &base,
            run,
            &[("Authorization", &bearer), ("Origin", "http://evil.example")],
            &[("check", "ssh")],
        );
        assert_eq!(a.status, 403);
        assert_eq!(asked.lock().unwrap().len(), before, "nothing ran from another site");
        let a =
            post(&base, run, &[("Authorization", &bearer), ("Origin", &base)], &[("check", "ssh")]);
        assert_eq!(a.status, 200, "the bearer token from the page itself");

        // A session is not the operator for the JSON API's writes.
        let json = serde_json::json!({"host": "h00001", "check": "ssh"});
        let r = answer(
            agent()
                .post(&format!("{base}/api/v1/checks/run"))
                .set("Cookie", &cookie)
                .send_json(json.clone()),
        );
        assert_eq!(r.status, 401, "{}", r.body);
        let r = answer(
            agent()
                .post(&format!("{base}/api/v1/checks/run"))
                .set("Authorization", &bearer)
                .send_json(json),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["state"], "warning");
        assert_eq!(v["host"], "h00001");

        // A forged cookie is nobody.
        let forged = format!("assim_session={}", "a".repeat(64));
        assert!(!get(&base, host, &[("Cookie", &forged)]).body.contains("Run now"));

        // Sign-out ends the session; its cookie then counts for nothing.
        let a = post(&base, "/logout", &[("Cookie", &cookie), ("Origin", &base)], &[]);
        assert_eq!(a.status, 303);
        assert!(a.cookie.unwrap().contains("Max-Age=0"));
        assert!(!get(&base, host, &[("Cookie", &cookie)]).body.contains("Run now"));
        let a = post(&base, run, &[("Cookie", &cookie), ("Origin", &base)], &[("check", "ssh")]);
        assert_eq!(a.status, 401);

        // Too many wrong tokens: sign-in is refused for a while, even with the right one.
        // (One wrong token was tried above; nine more make ten within the minute.)
        for _ in 0..9 {
            assert_eq!(sign_in(&base, "wrong-token-wrong-token", "/").status, 401);
        }
        let a = sign_in(&base, TOKEN, "/");
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(a.cookie.is_none());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_configured_token_the_pages_need_a_sign_in() {
    let (base, _) = start(Some(CONFIGURED)).await;
    tokio::task::spawn_blocking(move || {
        let a = get(&base, "/hosts?q=h0", &[]);
        assert_eq!(a.status, 303);
        assert_eq!(a.location.as_deref(), Some("/login?next=%2Fhosts%3Fq%3Dh0"));
        assert_eq!(get(&base, "/api/v1/status", &[]).status, 401);
        assert_eq!(get(&base, "/login", &[]).status, 200, "the sign-in page is open");
        assert_eq!(get(&base, "/static/app.css", &[]).status, 200, "and its style sheet");
        // Either token signs in.
        let cookie = cookie_of(&sign_in(&base, CONFIGURED, "/"));
        let a = get(&base, "/hosts?q=h0", &[("Cookie", &cookie)]);
        assert_eq!(a.status, 200);
        assert!(a.body.contains("h00001"));
        assert_eq!(get(&base, "/api/v1/status", &[("Cookie", &cookie)]).status, 200);
        // The live script's event stream answers the session (first bytes only).
        let r = agent()
            .get(&format!("{base}/api/v1/events/stream"))
            .set("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.content_type().contains("event-stream"));
    })
    .await
    .unwrap();
}
