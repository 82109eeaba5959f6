//! Automatic monitoring rules: which discovered listening process gets which check.
//!
//! Pure: rules files are parsed from text, and [`RuleSet::desired`] maps a host's listeners to
//! its check set. The CMA calls it whenever a host's `sockets` discovery changes. The format is
//! documented in `docs/checks.md`; in short, a rules file is TOML with three kinds of tables:
//!
//! ```toml
//! [[rule]]                        # matches listening processes
//! name = "ssh"                    # the check is named "ssh:{port}" unless `check` says otherwise
//! exe = ["*/sshd"]                # globs on the executable path (or on its basename if no '/')
//! args = "*"                      # glob on the command line (arguments joined by spaces)
//! ports = [22]                    # listening ports
//! user = "root"                   # the socket owner's user name
//! protocol = "tcp"                # "tcp" (default) or "udp"
//! kind = "nagios"
//! argv = ["check_ssh", "-H", "{ip}", "-p", "{port}"]
//! interval = "60s"                # also retry_interval, max_attempts, timeout
//!
//! [[host_check]]                  # applies to every host
//! name = "load"
//! kind = "nagios"
//! argv = ["check_load", "-w", "5,4,3", "-c", "10,8,6"]
//!
//! [[check]]                       # set by hand for one host
//! host = "db1"
//! name = "replication"
//! kind = "nagios"
//! argv = ["/usr/local/lib/nagios/check_repl"]
//! ```
//!
//! Placeholders in `argv`, `check` and params: `{port}`, `{ip}` (the listening address; a
//! wildcard listener gives the loopback address of its family), `{host}` (the host name),
//! `{exe}`, `{user}`. A rule, host check or hand-set check with the same name as an earlier one
//! replaces it (operator files override the shipped defaults); `disabled = true` removes it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use assim_util::duration::parse_whole_seconds;
use assim_util::glob::matches as glob;
use assim_wire::msg::{CheckSpec, Tag};
use serde::Deserialize;

use crate::spec::Check;

/// The rules shipped in the binary.
pub const DEFAULT_RULES: &str = include_str!("default-rules.toml");

/// A listening socket with its owner, as the `sockets` discovery collector reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    /// "tcp" or "udp".
    pub protocol: String,
    pub ip: IpAddr,
    pub port: u16,
    /// The owner's executable path, if readable.
    pub exe: Option<String>,
    /// The owner's command line.
    pub cmdline: Vec<String>,
    /// The socket owner's user name, if it resolves.
    pub user: Option<String>,
}

/// Why a rules file was refused. A refused file changes nothing.
#[derive(thiserror::Error, Debug)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rules file {path} is not valid: {detail}")]
    Invalid { path: String, detail: String },
}

/// One string or several.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// What to run and how often; shared by rules, host checks and hand-set checks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    kind: String,
    argv: Vec<String>,
    params: BTreeMap<String, String>,
    interval: Option<String>,
    retry_interval: Option<String>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    disabled: bool,
    /// Check name template (default `"{name}:{port}"`).
    check: Option<String>,
    exe: Option<OneOrMany>,
    args: Option<String>,
    ports: Option<Vec<u16>>,
    port: Option<u16>,
    user: Option<String>,
    protocol: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    interval: Option<String>,
    retry_interval: Option<String>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    host: Option<String>,
    #[serde(default)]
    disabled: bool,
    kind: Option<String>,
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    interval: Option<String>,
    retry_interval: Option<String>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    host_check: Vec<RawCheck>,
    #[serde(default)]
    check: Vec<RawCheck>,
}

/// A matching rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    check: String,
    exe: Vec<String>,
    args: Option<String>,
    ports: Vec<u16>,
    user: Option<String>,
    protocol: String,
    spec: CheckSpec,
}

/// A check with placeholders still in it.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckTemplate {
    pub host: Option<String>,
    pub spec: CheckSpec,
}

/// Every rule, host check and hand-set check, in order of precedence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub host_checks: Vec<CheckTemplate>,
    pub checks: Vec<CheckTemplate>,
}

fn secs(path: &str, what: &str, v: &Option<String>) -> Result<u64, RulesError> {
    match v {
        None => Ok(0),
        Some(s) => parse_whole_seconds(s).map_err(|e| RulesError::Invalid {
            path: path.to_owned(),
            detail: format!("{what}: {e}"),
        }),
    }
}

fn spec_of(path: &str, name: &str, t: &Template) -> Result<CheckSpec, RulesError> {
    let spec = CheckSpec {
        name: name.to_owned(),
        kind: t.kind.clone(),
        argv: t.argv.clone(),
        params: t.params.iter().map(|(k, v)| Tag { key: k.clone(), value: v.clone() }).collect(),
        interval_s: secs(path, "interval", &t.interval)?,
        retry_interval_s: secs(path, "retry_interval", &t.retry_interval)?,
        max_attempts: t.max_attempts.unwrap_or(0),
        timeout_s: secs(path, "timeout", &t.timeout)?,
    };
    // Validate with placeholders filled by plausible values.
    let probe = fill_spec(&spec, &Vars::sample());
    Check::try_from(&probe)
        .map_err(|e| RulesError::Invalid { path: path.to_owned(), detail: e.to_string() })?;
    Ok(spec)
}

impl RuleSet {
    /// The shipped defaults.
    pub fn defaults() -> RuleSet {
        let mut r = RuleSet::default();
        r.add_text("(built-in defaults)", DEFAULT_RULES).expect("the built-in rules are valid");
        r
    }

    /// Adds the rules of one file's text; same-named entries replace earlier ones.
    pub fn add_text(&mut self, path: &str, text: &str) -> Result<(), RulesError> {
        let invalid = |detail: String| RulesError::Invalid { path: path.to_owned(), detail };
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut next = self.clone();
        for r in raw.rule {
            next.rules.retain(|x| x.name != r.name);
            if r.disabled {
                continue;
            }
            let kind =
                r.kind.clone().ok_or_else(|| invalid(format!("rule {}: no kind", r.name)))?;
            let protocol = r.protocol.clone().unwrap_or_else(|| "tcp".into());
            if protocol != "tcp" && protocol != "udp" {
                return Err(invalid(format!("rule {}: protocol must be tcp or udp", r.name)));
            }
            let mut ports = r.ports.clone().unwrap_or_default();
            ports.extend(r.port);
            if r.exe.is_none() && ports.is_empty() && r.args.is_none() && r.user.is_none() {
                return Err(invalid(format!(
                    "rule {} matches every listener: give exe, args, port(s) or user",
                    r.name
                )));
            }
            let t = Template {
                kind,
                argv: r.argv.clone(),
                params: r.params.clone(),
                interval: r.interval.clone(),
                retry_interval: r.retry_interval.clone(),
                max_attempts: r.max_attempts,
                timeout: r.timeout.clone(),
            };
            let check = r.check.clone().unwrap_or_else(|| format!("{}:{{port}}", r.name));
            let spec = spec_of(path, &check, &t)?;
            next.rules.push(Rule {
                name: r.name,
                check,
                exe: r.exe.as_ref().map(OneOrMany::list).unwrap_or_default(),
                args: r.args,
                ports,
                user: r.user,
                protocol,
                spec,
            });
        }
        for (list, raw, per_host) in
            [(&mut next.host_checks, raw.host_check, false), (&mut next.checks, raw.check, true)]
        {
            for c in raw {
                if per_host != c.host.is_some() {
                    return Err(invalid(format!(
                        "{} {}: {}",
                        if per_host { "check" } else { "host_check" },
                        c.name,
                        if per_host { "needs host = \"NAME\"" } else { "takes no host" }
                    )));
                }
                list.retain(|x| !(x.spec.name == c.name && x.host == c.host));
                if c.disabled {
                    continue;
                }
                let kind = c.kind.clone().ok_or_else(|| invalid(format!("{}: no kind", c.name)))?;
                let t = Template {
                    kind,
                    argv: c.argv.clone(),
                    params: c.params.clone(),
                    interval: c.interval.clone(),
                    retry_interval: c.retry_interval.clone(),
                    max_attempts: c.max_attempts,
                    timeout: c.timeout.clone(),
                };
                let spec = spec_of(path, &c.name, &t)?;
                list.push(CheckTemplate { host: c.host, spec });
            }
        }
        *self = next;
        Ok(())
    }

    /// The defaults, then every `*.toml` file in `dir` in name order.
    pub fn load(dir: Option<&Path>) -> Result<RuleSet, RulesError> {
        let mut r = RuleSet::defaults();
        let Some(dir) = dir else { return Ok(r) };
        let read = |source| RulesError::Read { path: dir.display().to_string(), source };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for f in files {
            let path = f.display().to_string();
            let text = std::fs::read_to_string(&f)
                .map_err(|source| RulesError::Read { path: path.clone(), source })?;
            r.add_text(&path, &text)?;
        }
        Ok(r)
    }

    /// The desired check set of `host` with these listeners: per listener the first matching
    /// rule (operator rules before defaults: later files win), then host checks, then hand-set
    /// checks for this host. Sorted by name; a name produced twice keeps the first.
    pub fn desired(&self, host: &str, listeners: &[Listener]) -> Vec<CheckSpec> {
        let mut out: BTreeMap<String, CheckSpec> = BTreeMap::new();
        let mut sorted = listeners.to_vec();
        // IPv4 first, then by port, so "ssh:22" uses the IPv4 address when both exist.
        sorted.sort_by_key(|l| (l.ip.is_ipv6(), l.port, l.ip, l.protocol.clone()));
        for l in &sorted {
            // Later rules (operator files) take precedence over earlier ones (defaults).
            if let Some(rule) = self.rules.iter().rev().find(|r| r.matches(l)) {
                let vars = Vars::of(host, l);
                let spec = fill_spec(&rule.spec, &vars);
                out.entry(spec.name.clone()).or_insert(spec);
            }
        }
        let vars = Vars { host: host.to_owned(), ..Vars::default() };
        for t in &self.host_checks {
            let spec = fill_spec(&t.spec, &vars);
            out.entry(spec.name.clone()).or_insert(spec);
        }
        for t in self.checks.iter().filter(|t| t.host.as_deref() == Some(host)) {
            out.insert(t.spec.name.clone(), fill_spec(&t.spec, &vars));
        }
        out.into_values().filter(|s| Check::try_from(s).is_ok()).collect()
    }
}

impl Rule {
    /// Does this rule match the listener?
    pub fn matches(&self, l: &Listener) -> bool {
        if l.protocol != self.protocol {
            return false;
        }
        if !self.ports.is_empty() && !self.ports.contains(&l.port) {
            return false;
        }
        if let Some(u) = &self.user
            && l.user.as_deref() != Some(u.as_str())
        {
            return false;
        }
        if !self.exe.is_empty() {
            let Some(exe) = l.exe.as_deref().map(|e| e.strip_suffix(" (deleted)").unwrap_or(e))
            else {
                return false;
            };
            let base = exe.rsplit('/').next().unwrap_or(exe);
            let hit =
                self.exe.iter().any(|p| if p.contains('/') { glob(p, exe) } else { glob(p, base) });
            if !hit {
                return false;
            }
        }
        if let Some(a) = &self.args
            && !glob(a, &l.cmdline.join(" "))
        {
            return false;
        }
        true
    }
}

#[derive(Clone, Debug, Default)]
struct Vars {
    host: String,
    ip: String,
    port: String,
    exe: String,
    user: String,
}

impl Vars {
    fn of(host: &str, l: &Listener) -> Vars {
        let ip = match l.ip {
            IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(a) if a.is_unspecified() => "::1".to_owned(),
            ip => ip.to_string(),
        };
        Vars {
            host: host.to_owned(),
            ip,
            port: l.port.to_string(),
            exe: l.exe.clone().unwrap_or_default(),
            user: l.user.clone().unwrap_or_default(),
        }
    }

    fn sample() -> Vars {
        Vars {
            host: "host".into(),
            ip: "127.0.0.1".into(),
            port: "1".into(),
            exe: "/bin/true".into(),
            user: "root".into(),
        }
    }
}

fn fill(s: &str, v: &Vars) -> String {
    s.replace("{port}", &v.port)
        .replace("{ip}", &v.ip)
        .replace("{host}", &v.host)
        .replace("{exe}", &v.exe)
        .replace("{user}", &v.user)
}

fn fill_spec(s: &CheckSpec, v: &Vars) -> CheckSpec {
    CheckSpec {
        name: fill(&s.name, v),
        argv: s.argv.iter().map(|a| fill(a, v)).collect(),
        params: s
            .params
            .iter()
            .map(|t| Tag { key: t.key.clone(), value: fill(&t.value, v) })
            .collect(),
        ..s.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(exe: &str, port: u16) -> Listener {
        Listener {
            protocol: "tcp".into(),
            ip: "0.0.0.0".parse().unwrap(),
            port,
            exe: Some(exe.into()),
            cmdline: vec![exe.into()],
            user: Some("root".into()),
        }
    }

    #[test]
    fn defaults_match_sshd_nginx_and_postgres() {
        let r = RuleSet::defaults();
        let got = r.desired(
            "web1",
            &[
                listener("/usr/sbin/sshd", 22),
                Listener { ip: "::".parse().unwrap(), ..listener("/usr/sbin/sshd", 22) },
                listener("/usr/sbin/nginx", 80),
                listener("/usr/lib/postgresql/15/bin/postgres", 5432),
                listener("/usr/bin/unknown-daemon", 9999),
            ],
        );
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"ssh:22"), "{names:?}");
        assert!(names.contains(&"http:80"), "{names:?}");
        assert!(names.contains(&"postgres:5432"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("9999")), "{names:?}");
        let ssh = got.iter().find(|s| s.name == "ssh:22").unwrap();
        assert_eq!(ssh.argv, ["check_ssh", "-H", "127.0.0.1", "-p", "22"]);
        assert!(names.contains(&"load") && names.contains(&"disk:/"), "host checks: {names:?}");
    }

    #[test]
    fn operator_rules_override_defaults_and_add_hand_set_checks() {
        let mut r = RuleSet::defaults();
        r.add_text(
            "ops.toml",
            r#"
            [[rule]]
            name = "ssh"
            exe = "sshd"
            kind = "tcp"
            argv = ["{ip}", "{port}"]
            interval = "30s"

            [[rule]]
            name = "web"
            ports = [8000, 8080]
            user = "www"
            check = "web-{port}"
            kind = "nagios"
            argv = ["check_http", "-H", "{ip}", "-p", "{port}"]

            [[host_check]]
            name = "disk:/"
            disabled = true

            [[check]]
            host = "web1"
            name = "replication"
            kind = "nagios"
            argv = ["/usr/local/bin/check_repl", "{host}"]
            "#,
        )
        .unwrap();
        let mut www = listener("/usr/bin/python3", 8000);
        www.user = Some("www".into());
        let got = r.desired("web1", &[listener("/usr/sbin/sshd", 22), www.clone()]);
        let ssh = got.iter().find(|s| s.name == "ssh:22").unwrap();
        assert_eq!((ssh.kind.as_str(), ssh.interval_s), ("tcp", 30));
        assert!(got.iter().any(|s| s.name == "web-8000"));
        assert!(!got.iter().any(|s| s.name == "disk:/"));
        let repl = got.iter().find(|s| s.name == "replication").unwrap();
        assert_eq!(repl.argv[1], "web1");
        let other = r.desired("web2", &[www]);
        assert!(!other.iter().any(|s| s.name == "replication"));
        www_wrong_user(&r);
    }

    fn www_wrong_user(r: &RuleSet) {
        let got = r.desired("x", &[listener("/usr/bin/python3", 8000)]);
        assert!(!got.iter().any(|s| s.name == "web-8000"), "user must match");
    }

    #[test]
    fn bad_rules_are_refused_with_the_file_and_reason() {
        let mut r = RuleSet::defaults();
        let before = r.clone();
        for (text, want) in [
            ("[[rule]]\nname='x'\nkind='nagios'\nargv=['a']\n", "matches every listener"),
            ("[[rule]]\nname='x'\nport=1\nkind='bogus'\n", "unknown kind"),
            (
                "[[rule]]\nname='x'\nport=1\nkind='tcp'\nargv=['{ip}','{port}']\ninterval='soon'\n",
                "not a duration",
            ),
            ("[[check]]\nname='x'\nkind='tcp'\nargv=['a','1']\n", "needs host"),
            ("[[rule]]\nname='x'\nport=1\nkind='tcp'\nextra=1\n", "unknown field"),
        ] {
            let e = r.add_text("f.toml", text).unwrap_err().to_string();
            assert!(e.contains("f.toml") && e.contains(want), "{e}");
        }
        assert_eq!(r, before, "a refused file changes nothing");
    }
}
