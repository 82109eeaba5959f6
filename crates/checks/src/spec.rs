//! A validated check: what to run and on which schedule, built from a wire [`CheckSpec`].
//!
//! How each kind uses `argv` and `params`:
//!
//! | kind | argv | params |
//! |---|---|---|
//! | `nagios` | plugin and arguments; a plugin name without `/` is looked up in the plugin directory | — |
//! | `ocf` | `[provider, agent]` (or `["provider:agent"]`) | `OCF_RESKEY_<name>` values |
//! | `lsb` | `[script]` (a name in `/etc/init.d` or a path) | — |
//! | `systemd` | `[unit]` | — |
//! | `tcp` | `[host, port]` | — |
//! | `process` | `[pattern]`: matches a process's comm, exe path or basename, or a cmdline substring | — |

use std::collections::BTreeMap;
use std::time::Duration;

use assim_wire::msg::{CheckSpec, Tag};

/// The most checks one check set may hold.
pub const MAX_CHECKS: usize = 10_000;
/// The longest check name.
pub const MAX_NAME: usize = 128;

/// What kind of check, with its kind-specific arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A Nagios plugin: argv\[0] is the plugin.
    Nagios { argv: Vec<String> },
    /// An OCF resource agent, run with the `monitor` action.
    Ocf { provider: String, agent: String, params: BTreeMap<String, String> },
    /// An LSB init script, run with `status`.
    Lsb { script: String },
    /// A systemd unit, asked with `systemctl is-active`.
    Systemd { unit: String },
    /// Built in: a TCP connect to `host:port`.
    Tcp { host: String, port: u16 },
    /// Built in: at least one process matches `pattern`.
    Process { pattern: String },
}

impl Kind {
    /// The kind's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Nagios { .. } => "nagios",
            Kind::Ocf { .. } => "ocf",
            Kind::Lsb { .. } => "lsb",
            Kind::Systemd { .. } => "systemd",
            Kind::Tcp { .. } => "tcp",
            Kind::Process { .. } => "process",
        }
    }
}

/// A validated check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub kind: Kind,
    /// Time between runs while the state is HARD.
    pub interval: Duration,
    /// Time between runs while the state is SOFT (re-checking a problem).
    pub retry_interval: Duration,
    /// Consecutive non-OK results before a problem becomes HARD (1 = at once).
    pub max_attempts: u32,
    /// How long one run may take before its process group is killed.
    pub timeout: Duration,
}

/// Defaults for fields a [`CheckSpec`] leaves at 0.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a [`CheckSpec`] was refused. Nothing is changed by a refused spec.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    #[error("check name {0:?} is empty, longer than 128 bytes, or has control characters")]
    BadName(String),
    #[error("check {name}: unknown kind {kind:?} (use nagios, ocf, lsb, systemd, tcp or process)")]
    UnknownKind { name: String, kind: String },
    #[error("check {name}: {detail}")]
    BadArgs { name: String, detail: String },
    #[error("check {name}: the timeout must be between 1 s and 1 h, and shorter than the interval")]
    BadTimeout { name: String },
    #[error("check {0} appears twice in the check set")]
    Duplicate(String),
    #[error("the check set has {0} checks; at most 10000 are allowed")]
    TooMany(usize),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control)
}

impl TryFrom<&CheckSpec> for Check {
    type Error = SpecError;

    fn try_from(s: &CheckSpec) -> Result<Check, SpecError> {
        let name = s.name.clone();
        if !valid_name(&name) {
            return Err(SpecError::BadName(name));
        }
        let bad = |detail: &str| SpecError::BadArgs { name: name.clone(), detail: detail.into() };
        if s.argv.iter().any(|a| a.contains('\0')) {
            return Err(bad("an argument contains a NUL byte"));
        }
        let one = |what: &str| -> Result<String, SpecError> {
            match s.argv.as_slice() {
                [x] if !x.is_empty() => Ok(x.clone()),
                _ => Err(bad(&format!("argv must be exactly one {what}"))),
            }
        };
        let kind = match s.kind.as_str() {
            "nagios" => {
                if s.argv.first().is_none_or(String::is_empty) {
                    return Err(bad("argv must start with the plugin"));
                }
                Kind::Nagios { argv: s.argv.clone() }
            }
            "ocf" => {
                let (provider, agent) = match s.argv.as_slice() {
                    [pa] => pa.split_once(':').map(|(p, a)| (p.to_owned(), a.to_owned())),
                    [p, a] => Some((p.clone(), a.clone())),
                    _ => None,
                }
                .ok_or_else(|| bad("argv must be [provider, agent] or [\"provider:agent\"]"))?;
                let safe = |x: &str| {
                    !x.is_empty()
                        && x.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                        && x != "."
                        && x != ".."
                };
                if !safe(&provider) || !safe(&agent) {
                    return Err(bad("OCF provider and agent names may use letters, digits, -_."));
                }
                let mut params = BTreeMap::new();
                for Tag { key, value } in &s.params {
                    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(bad(&format!(
                            "OCF parameter name {key:?} is not [A-Za-z0-9_]"
                        )));
                    }
                    if value.contains('\0') {
                        return Err(bad("an OCF parameter contains a NUL byte"));
                    }
                    params.insert(key.clone(), value.clone());
                }
                Kind::Ocf { provider, agent, params }
            }
            "lsb" => Kind::Lsb { script: one("init script")? },
            "systemd" => Kind::Systemd { unit: one("unit")? },
            "tcp" => match s.argv.as_slice() {
                [host, port] if !host.is_empty() => Kind::Tcp {
                    host: host.clone(),
                    port: port
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad(&format!("port {port:?} is not 1-65535")))?,
                },
                _ => return Err(bad("argv must be [host, port]")),
            },
            "process" => Kind::Process { pattern: one("process pattern")? },
            other => return Err(SpecError::UnknownKind { name, kind: other.to_owned() }),
        };
        let secs = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_secs(v) };
        let interval = secs(s.interval_s, DEFAULT_INTERVAL).min(Duration::from_secs(86_400));
        let retry_interval =
            secs(s.retry_interval_s, DEFAULT_RETRY_INTERVAL).min(Duration::from_secs(86_400));
        let timeout = secs(s.timeout_s, DEFAULT_TIMEOUT.min(interval));
        if timeout > Duration::from_secs(3600) || timeout > interval {
            return Err(SpecError::BadTimeout { name });
        }
        let max_attempts =
            if s.max_attempts == 0 { DEFAULT_MAX_ATTEMPTS } else { s.max_attempts.min(100) };
        Ok(Check { name, kind, interval, retry_interval, max_attempts, timeout })
    }
}

impl Check {
    /// Validates a whole check set: every spec valid, names unique, not too many.
    pub fn parse_set(specs: &[CheckSpec]) -> Result<Vec<Check>, SpecError> {
        if specs.len() > MAX_CHECKS {
            return Err(SpecError::TooMany(specs.len()));
        }
        let mut out: Vec<Check> = Vec::with_capacity(specs.len());
        let mut seen = std::collections::HashSet::new();
        for s in specs {
            let c = Check::try_from(s)?;
            if !seen.insert(c.name.clone()) {
                return Err(SpecError::Duplicate(c.name));
            }
            out.push(c);
        }
        Ok(out)
    }

    /// The check as a wire spec (the inverse of `try_from` for valid specs).
    pub fn to_spec(&self) -> CheckSpec {
        let (argv, params) = match &self.kind {
            Kind::Nagios { argv } => (argv.clone(), Vec::new()),
            Kind::Ocf { provider, agent, params } => (
                vec![provider.clone(), agent.clone()],
                params.iter().map(|(k, v)| Tag { key: k.clone(), value: v.clone() }).collect(),
            ),
            Kind::Lsb { script } => (vec![script.clone()], Vec::new()),
            Kind::Systemd { unit } => (vec![unit.clone()], Vec::new()),
            Kind::Tcp { host, port } => (vec![host.clone(), port.to_string()], Vec::new()),
            Kind::Process { pattern } => (vec![pattern.clone()], Vec::new()),
        };
        CheckSpec {
            name: self.name.clone(),
            kind: self.kind.name().to_owned(),
            argv,
            params,
            interval_s: self.interval.as_secs(),
            retry_interval_s: self.retry_interval.as_secs(),
            max_attempts: self.max_attempts,
            timeout_s: self.timeout.as_secs(),
        }
    }

    /// True when running `other` means running the same thing (command and arguments), so its
    /// state carries over when a new check set changes only the timing.
    pub fn same_command(&self, other: &Check) -> bool {
        self.kind == other.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, argv: &[&str]) -> CheckSpec {
        CheckSpec {
            name: "c".into(),
            kind: kind.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn kinds_parse_and_round_trip() {
        for (k, a) in [
            ("nagios", vec!["check_dummy", "0"]),
            ("ocf", vec!["heartbeat", "Dummy"]),
            ("lsb", vec!["ssh"]),
            ("systemd", vec!["ssh.service"]),
            ("tcp", vec!["127.0.0.1", "22"]),
            ("process", vec!["sshd"]),
        ] {
            let c = Check::try_from(&spec(k, &a)).unwrap();
            assert_eq!(c.kind.name(), k);
            assert_eq!(Check::try_from(&c.to_spec()).unwrap(), c);
        }
        let c = Check::try_from(&spec("ocf", &["heartbeat:Dummy"])).unwrap();
        assert!(matches!(c.kind, Kind::Ocf { ref agent, .. } if agent == "Dummy"));
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.max_attempts, DEFAULT_MAX_ATTEMPTS);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let e = Check::try_from(&spec("snmp", &["x"])).unwrap_err();
        assert!(e.to_string().contains("unknown kind \"snmp\""), "{e}");
        assert!(matches!(
            Check::try_from(&spec("tcp", &["h", "99999"])),
            Err(SpecError::BadArgs { .. })
        ));
        assert!(Check::try_from(&spec("ocf", &["..", "Dummy"])).is_err());
        assert!(Check::try_from(&spec("nagios", &[])).is_err());
        let mut s = spec("nagios", &["x"]);
        s.name = String::new();
        assert!(matches!(Check::try_from(&s), Err(SpecError::BadName(_))));
        let mut s = spec("nagios", &["x"]);
        s.interval_s = 10;
        s.timeout_s = 20;
        assert!(matches!(Check::try_from(&s), Err(SpecError::BadTimeout { .. })));
        let dup = [spec("nagios", &["x"]), spec("nagios", &["y"])];
        assert_eq!(Check::parse_set(&dup), Err(SpecError::Duplicate("c".into())));
    }
}
