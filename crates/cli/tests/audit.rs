//! Issue 19: the security audit end to end. A real nanoprobe audits a test root (its
//! `--discovery-root`) holding Debian's shipped sshd configuration
//! (`/usr/share/openssh/sshd_config`, package openssh-server); a real CMA judges it. Then a
//! hardened drop-in arrives: the rules that changed each raise one event, and every sshd rule's
//! result agrees with what the real `sshd -T` says of the same files. Last, one setting is
//! changed back: the score drops and exactly one event is raised.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterSpec, Program};
use assim_cma::{EventKind, Severity};
use serde_json::Value;

const SHIPPED: &str = "/usr/share/openssh/sshd_config";
const HARDENED: &str = "PermitRootLogin no\nPasswordAuthentication no\nX11Forwarding no\n\
    MaxAuthTries 3\nLoginGraceTime 1m\n";

fn assim_json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = c.run_cli(env!("CARGO_BIN_EXE_assim"), &a);
    assert!(ok, "assim {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("assim {args:?}: {e}: {out}"))
}

/// The host's results by rule id, once `pred` holds for them.
fn wait_results(
    c: &Cluster,
    what: &str,
    pred: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) -> std::collections::BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, _) = c.run_cli(env!("CARGO_BIN_EXE_assim"), &["audit", "n1", "--json"]);
        if ok {
            let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
            let map = rows
                .iter()
                .map(|r| {
                    (
                        r["rule"]["id"].as_str().unwrap().to_string(),
                        r["result"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            if pred(&map) {
                return map;
            }
            assert!(Instant::now() < deadline, "{what}: last {map:?}");
        } else {
            assert!(Instant::now() < deadline, "{what}: no audit of n1 yet: {out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `sshd -T` of the test root's files (the include pointed into the root).
fn sshd_t(root: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(root.join("etc/ssh/sshd_config")).unwrap();
    let d = root.join("etc/ssh/sshd_config.d");
    let file = root.join("sshd_config.for-sshd");
    std::fs::write(&file, text.replace("/etc/ssh/sshd_config.d", &d.display().to_string()))
        .unwrap();
    // sshd refuses to start, even for -T, without its privilege separation directory, which
    // only exists while Debian's ssh service runs (install-deps stops it; /run is a tmpfs).
    std::fs::create_dir_all("/run/sshd").unwrap();
    let out = Command::new("/usr/sbin/sshd")
        .arg("-T")
        .arg("-f")
        .arg(&file)
        .args(["-C", "user=root,host=localhost,addr=127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assim_discovery::security::parse_sshd_t(&String::from_utf8_lossy(&out.stdout))
}

fn audit_events(c: &Cluster, since: u64) -> Vec<assim_api::Event> {
    c.events_since(since)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.name().starts_with("audit."))
        .collect()
}

#[test]
fn stock_and_hardened_sshd_and_one_changed_setting() {
    if !Path::new("/usr/sbin/sshd").exists() || !Path::new(SHIPPED).exists() {
        assim_util::testing::skip(
            "openssh-server is not installed (scripts/install-deps installs it)",
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/ssh/sshd_config.d")).unwrap();
    std::fs::copy(SHIPPED, r.join("etc/ssh/sshd_config")).unwrap();

    let mut spec = ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1);
    spec.cma_args = vec!["--discovery".into(), "security=1s".into()];
    spec.nanoprobe = Program {
        path: env!("CARGO_BIN_EXE_assim").into(),
        prefix: vec!["nanoprobe".into(), "--discovery-root".into(), r.display().to_string()],
    };
    let mut c = Cluster::new(spec, false).unwrap();
    c.start_all().unwrap();

    // Debian as shipped: root may log in with a key, passwords allowed, X11 forwarding on.
    let stock = wait_results(&c, "the stock audit", |m| m.contains_key("ssh.root-login"));
    for (rule, want) in [
        ("ssh.root-login", "fail"),
        ("ssh.password-auth", "fail"),
        ("ssh.x11-forwarding", "fail"),
        ("ssh.empty-passwords", "pass"),
        ("ssh.hostbased-auth", "pass"),
        ("kernel.aslr", "n/a"),
    ] {
        assert_eq!((rule, stock[rule].as_str()), (rule, want), "{stock:?}");
    }
    let summary = assim_json(&c, &["audit"]);
    let stock_score = summary["hosts"][0]["score"].as_u64().unwrap();
    let since = c.last_event_id().unwrap();

    // The hardened drop-in: each rule it fixes is one audit.passed.
    std::fs::write(r.join("etc/ssh/sshd_config.d/50-hardening.conf"), HARDENED).unwrap();
    let hard = wait_results(&c, "the hardened audit", |m| m["ssh.root-login"] == "pass");
    let flipped: Vec<&String> = stock.keys().filter(|k| stock[*k] != hard[*k]).collect();
    assert_eq!(flipped.len(), 5, "{flipped:?}");
    // Correct per rule: what sshd itself makes of these files.
    let real = sshd_t(r);
    assert_eq!(real["permitrootlogin"], "no");
    assert_eq!(hard["ssh.root-login"], "pass");
    assert_eq!(real["x11forwarding"], "no");
    assert_eq!(hard["ssh.x11-forwarding"], "pass");
    assert_eq!(real["maxauthtries"], "3");
    assert_eq!(hard["ssh.max-auth-tries"], "pass");
    assert_eq!(real["logingracetime"], "60");
    assert_eq!(hard["ssh.login-grace-time"], "pass");
    assert_eq!(real["permitemptypasswords"], "no");
    assert_eq!(hard["ssh.empty-passwords"], "pass");
    let deadline = Instant::now() + Duration::from_secs(30);
    while audit_events(&c, since).len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", audit_events(&c, since));
        std::thread::sleep(Duration::from_millis(200));
    }
    let passed = audit_events(&c, since);
    assert!(
        passed.iter().all(|e| e.kind == EventKind::AuditPassed && e.severity == Severity::Info),
        "{passed:?}"
    );
    let hard_score = assim_json(&c, &["audit"])["hosts"][0]["score"].as_u64().unwrap();
    assert!(hard_score > stock_score, "{stock_score} -> {hard_score}");

    // One setting back: one audit.failed, warning (the rule's severity), and the score drops.
    let since = passed.last().unwrap().id;
    std::fs::write(
        r.join("etc/ssh/sshd_config.d/50-hardening.conf"),
        HARDENED.replace("X11Forwarding no", "X11Forwarding yes"),
    )
    .unwrap();
    wait_results(&c, "x11 forwarding on again", |m| m["ssh.x11-forwarding"] == "fail");
    // Several more collector runs (1 s apart) must add nothing.
    std::thread::sleep(Duration::from_secs(4));
    let one = audit_events(&c, since);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0].kind, EventKind::AuditFailed);
    assert_eq!(one[0].severity, Severity::Warning);
    assert_eq!(one[0].tags.get("rule").map(String::as_str), Some("ssh.x11-forwarding"));
    assert!(one[0].text.contains("X11"), "{}", one[0].text);
    let score = assim_json(&c, &["audit"])["hosts"][0]["score"].as_u64().unwrap();
    assert!(score < hard_score, "{hard_score} -> {score}");
    // The rule view and the rules list.
    let rule = assim_json(&c, &["audit", "rule", "ssh.x11-forwarding"]);
    assert_eq!(rule[0]["result"], "fail");
    let rules = assim_json(&c, &["audit", "rules"]);
    assert!(rules.as_array().unwrap().len() >= 25);
    let (ok, _, err) = c.run_cli(env!("CARGO_BIN_EXE_assim"), &["audit", "rule", "no.such"]);
    assert!(!ok && err.contains("assim audit rules"), "{err}");
}
