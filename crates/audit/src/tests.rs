use std::collections::BTreeMap;

use assim_discovery::security::{FileMode, Security, Sudoers};
use proptest::prelude::*;

use super::*;

/// A Debian 12 host as installed: sshd's defaults with Debian's shipped config, the stock
/// login.defs, sysctl defaults, sudo with `use_pty`.
fn debian() -> Security {
    let mut s = Security { sshd_source: "sshd -T".into(), ..Security::default() };
    for (k, v) in assim_discovery::security::SSHD_DEFAULTS {
        s.sshd.insert((*k).into(), (*v).into());
    }
    s.sshd.insert("usepam".into(), "yes".into());
    s.sshd.insert("x11forwarding".into(), "yes".into());
    s.sshd.insert("kbdinteractiveauthentication".into(), "no".into());
    s.login_defs =
        BTreeMap::from([("PASS_MAX_DAYS".into(), "99999".into()), ("UMASK".into(), "022".into())]);
    for (k, v) in [
        ("kernel.randomize_va_space", "2"),
        ("fs.suid_dumpable", "0"),
        ("kernel.kptr_restrict", "0"),
        ("kernel.dmesg_restrict", "1"),
        ("fs.protected_symlinks", "1"),
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv4.conf.all.accept_redirects", "1"),
        ("net.ipv4.conf.all.accept_source_route", "0"),
        ("net.ipv4.tcp_syncookies", "1"),
    ] {
        s.sysctl.insert(k.into(), v.into());
    }
    s.pam.insert(
        "common-auth".into(),
        vec!["auth [success=1 default=ignore] pam_unix.so nullok".into()],
    );
    s.sudoers =
        Some(Sudoers { defaults: vec!["env_reset".into(), "use_pty".into()], nopasswd_rules: 0 });
    for (f, mode, gid) in [
        ("/etc/shadow", 0o640, 42),
        ("/etc/passwd", 0o644, 0),
        ("/etc/ssh/sshd_config", 0o644, 0),
        ("/etc/ssh/ssh_host_ed25519_key", 0o600, 0),
    ] {
        s.files.insert(f.into(), FileMode { mode, uid: 0, gid });
    }
    s
}

fn results(set: &RuleSet, doc: &Security) -> BTreeMap<String, &'static str> {
    set.evaluate(doc).into_iter().map(|(r, o)| (r.id.clone(), o.word())).collect()
}

#[test]
fn the_shipped_rules_load() {
    let set = RuleSet::defaults();
    assert!(set.rules().len() >= 25, "{}", set.rules().len());
    for r in set.rules() {
        assert!(!r.reference.is_empty() && !r.reason.is_empty(), "{}", r.id);
    }
}

#[test]
fn a_stock_host_and_a_hardened_one() {
    let set = RuleSet::defaults();
    let stock = results(&set, &debian());
    assert_eq!(stock["ssh.root-login"], "fail");
    assert_eq!(stock["ssh.x11-forwarding"], "fail");
    assert_eq!(stock["ssh.empty-passwords"], "pass");
    assert_eq!(stock["accounts.pass-max-days"], "fail");
    assert_eq!(stock["pam.nullok"], "fail");
    assert_eq!(stock["sudo.use-pty"], "pass");
    assert_eq!(stock["files.shadow"], "pass");
    assert_eq!(stock["files.gshadow"], "n/a");
    assert_eq!(stock["audit.auditd-installed"], "fail");

    let mut hard = debian();
    for (k, v) in [
        ("permitrootlogin", "no"),
        ("x11forwarding", "no"),
        ("passwordauthentication", "no"),
        ("maxauthtries", "3"),
        ("logingracetime", "1m"),
    ] {
        hard.sshd.insert(k.into(), v.into());
    }
    let hardened = results(&set, &hard);
    for id in [
        "ssh.root-login",
        "ssh.x11-forwarding",
        "ssh.password-auth",
        "ssh.max-auth-tries",
        "ssh.login-grace-time",
    ] {
        assert_eq!((id, stock[id]), (id, "fail"));
        assert_eq!((id, hardened[id]), (id, "pass"));
    }
    let diff: Vec<_> = stock.iter().filter(|(id, w)| hardened[*id] != **w).collect();
    assert_eq!(diff.len(), 5, "{diff:?}");
}

#[test]
fn one_setting_moves_the_score() {
    let set = RuleSet::defaults();
    let tally = |doc: &Security| {
        let mut t = Tally::default();
        for (r, o) in set.evaluate(doc) {
            t.add(r.severity, &o);
        }
        t
    };
    let before = tally(&debian());
    let mut doc = debian();
    doc.sshd.insert("permitrootlogin".into(), "no".into());
    let after = tally(&doc);
    assert_eq!(after.passed, before.passed + 1);
    assert!(after.score() > before.score(), "{} -> {}", before.score(), after.score());
    assert_eq!(Tally::default().score(), 100);
}

#[test]
fn no_sshd_is_not_applicable_not_failed() {
    let mut doc = debian();
    doc.sshd.clear();
    doc.sshd_source = "absent".into();
    let set = RuleSet::defaults();
    for (r, o) in set.evaluate(&doc) {
        if r.check.sshd.is_some() {
            assert_eq!(o.word(), "n/a", "{}", r.id);
        }
    }
}

#[test]
fn operators_add_replace_and_silence() {
    let extra = r#"
[[rule]]
id = "ssh.root-login"
category = "ssh"
severity = "warning"
reference = "site policy 4.2"
reason = "We allow keys for root, never passwords."
check = { sshd = "permitrootlogin", is = ["no", "without-password"] }

[[rule]]
id = "site.no-telnet"
category = "site"
severity = "error"
reference = "site policy 1.1"
reason = "Telnet sends passwords in clear."
check = { file = "/usr/sbin/in.telnetd", owner = 4294967295 }
"#;
    let set = RuleSet::build(&[("/etc/assim/audit.toml", extra)], &["pam.nullok".into()]).unwrap();
    assert_eq!(set.rule("ssh.root-login").unwrap().severity, RuleSeverity::Warning);
    assert!(set.rule("pam.nullok").is_none());
    assert_eq!(results(&set, &debian())["ssh.root-login"], "pass");
    assert_eq!(results(&set, &debian())["site.no-telnet"], "n/a");
    // The order stays: shipped ids first.
    assert_eq!(set.rules()[0].id, "ssh.root-login");
    assert_eq!(set.rules().last().unwrap().id, "site.no-telnet");
}

#[test]
fn bad_rules_are_named() {
    let rule = |check: &str| {
        format!(
            "[[rule]]\nid = \"x\"\ncategory = \"c\"\nseverity = \"info\"\nreference = \"r\"\nreason = \"y\"\ncheck = {check}\n"
        )
    };
    let err = |text: String| RuleSet::build(&[("f.toml", &text)], &[]).unwrap_err().to_string();
    assert!(err(rule("{ sshd = \"a\", sysctl = \"b\", is = [\"1\"] }")).contains("exactly one"));
    assert!(err(rule("{ sshd = \"a\" }")).contains("no condition"));
    assert!(err(rule("{ file = \"/x\", max_mode = \"0999\" }")).contains("octal"));
    assert!(err(rule("{ sshd = \"a\", max_mode = \"0600\" }")).contains("file checks only"));
    assert!(err(rule("{ sshd = \"a\", is = [\"1\"], typo = 1 }")).contains("f.toml"));
    assert!(err("[[rule]]\nid = \"bad id!\"\n".into()).contains("f.toml"));
    let bad_id = rule("{ sshd = \"a\", is = [\"1\"] }").replace("id = \"x\"", "id = \"a b\"");
    assert!(err(bad_id).contains("letters"));
}

#[test]
fn sshd_times() {
    assert_eq!(number("120"), Some(120));
    assert_eq!(number("1m30s"), Some(90));
    assert_eq!(number("2h"), Some(7200));
    assert_eq!(number("1x"), None);
    assert_eq!(number("99999999999999999999w"), None);
}

proptest! {
    #[test]
    fn any_rules_text_is_refused_or_taken_without_panic(text in ".{0,300}") {
        let _ = RuleSet::build(&[("fuzz", &text)], &[]);
    }

    #[test]
    fn any_values_are_judged_without_panic(v in ".{0,40}", key in "[a-z_.]{1,20}") {
        let mut doc = debian();
        doc.sshd.insert("maxauthtries".into(), v.clone());
        doc.sysctl.insert(key, v);
        let _ = RuleSet::defaults().evaluate(&doc);
        let _ = number(&doc.sshd["maxauthtries"]);
    }
}
