//! Who may use a real CMA's HTTP API (issue 16, item 6): requests that change state need the
//! operator's token even on loopback, the `assim` CLI finds that token by itself, a foreign
//! `Host` header (DNS rebinding) is refused, checks set through the API run only programs from
//! the configured plugin directories, and `exec` sinks cannot be created through the API.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use assim::cluster::{Cluster, ClusterEnrollment, ClusterSpec};

fn cma_only() -> Cluster {
    let spec = ClusterSpec {
        interval: Duration::from_millis(300),
        warn: Duration::from_millis(900),
        dead: Duration::from_millis(1500),
        enrollment: ClusterEnrollment::TrustOnFirstUse,
        cma_args: vec!["--api-host".into(), "cma.example.com".into()],
        ..ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 0)
    };
    Cluster::new(spec, false).unwrap()
}

/// One raw HTTP/1.1 request; the status code and body.
fn raw(
    c: &Cluster,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(c.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[test]
fn item_6_the_api_needs_the_operator_token_a_known_host_and_allowed_programs() {
    let c = cma_only();
    let host = c.api.to_string();
    let file = c.api_token_file();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let auth = format!("Authorization: Bearer {}\r\n", c.api_token().unwrap());
    let sub = r#"{"filter": "type:host.*"}"#;

    // Changing state without the token: refused, on loopback too; reads stay open.
    let (code, body) = raw(&c, "PUT", "/api/v1/subscriptions/ops", &host, "", sub);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("api.token"), "{body}");
    let (code, _) =
        raw(&c, "PUT", "/api/v1/subscriptions/ops", &host, "Authorization: Bearer 0000\r\n", sub);
    assert_eq!(code, 401);
    assert_eq!(raw(&c, "GET", "/api/v1/status", &host, "", "").0, 200);
    let (code, body) = raw(&c, "PUT", "/api/v1/subscriptions/ops", &host, &auth, sub);
    assert_eq!(code, 201, "{body}");

    // DNS rebinding: a page at http://evil.example:PORT whose name now points at 127.0.0.1.
    let port = c.api.port();
    let (code, body) = raw(&c, "GET", "/api/v1/status", &format!("evil.example:{port}"), "", "");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--api-host"), "{body}");
    for ok in [format!("localhost:{port}"), format!("cma.example.com:{port}")] {
        assert_eq!(raw(&c, "GET", "/api/v1/status", &ok, "", "").0, 200, "{ok}");
    }

    // Check programs only from the plugin directories (checked before the host is looked up).
    let evil = r#"{"host": "n1", "check": {"name": "x", "kind": "nagios", "argv": ["/tmp/evil"],
        "interval_s": 60, "retry_interval_s": 15, "max_attempts": 3, "timeout_s": 10}}"#;
    let (code, body) = raw(&c, "POST", "/api/v1/checks", &host, &auth, evil);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("check_plugin_dirs") && body.contains("--check-plugin-dir"), "{body}");
    let fine = evil.replace("/tmp/evil", "check_tcp");
    let (code, body) = raw(&c, "POST", "/api/v1/checks", &host, &auth, &fine);
    assert_eq!(code, 404, "passes the program check, then the host is unknown: {body}");

    // Exec sinks only from the config file.
    let exec = r#"{"filter": "", "sink": {"type": "exec", "dir": "/tmp"}}"#;
    let (code, body) = raw(&c, "PUT", "/api/v1/subscriptions/run", &host, &auth, exec);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("config file"), "{body}");

    // The CLI sends the token by itself (Cluster::run_cli points it at the token file) ...
    let (ok, _, err) = c.run_cli(env!("CARGO_BIN_EXE_assim"), &["subscribe", "cli", "--json"]);
    assert!(ok, "{err}");
    // ... and says where the token was looked for when it cannot read it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["--api", &format!("http://{}", c.api), "subscribe", "cli2"])
        .env_remove("ASSIM_API_TOKEN")
        .env("ASSIM_API_TOKEN_FILE", c.dir().join("nowhere"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("401") && err.contains("nowhere"), "{err}");
}
