//! Prometheus service discovery (issue 17 item 4): per host, the exporters discovery found
//! listening, as Prometheus's HTTP SD (and `file_sd`) document — a JSON list of
//! `{"targets": ["ADDR:PORT"], "labels": {…}}`.
//!
//! Rules:
//! - A listener is an exporter by the [`ExporterRule`] table ([`default_rules`], extended and
//!   overridden by the CMA's `[[exporters]]`): its program (the executable's file name, when
//!   discovery saw it) is one of a rule's `programs`, on whatever port; or, when discovery did
//!   not see its program, its port is a rule's `port`. A known program that no rule names is
//!   not an exporter, whatever its port (`9100` is not node_exporter just because of it).
//! - The target address: the listener's own address; for a wildcard listener (`0.0.0.0`,
//!   `::`) the host's first address (IPv4 first). Loopback, link-local and other unreachable
//!   addresses are left out: Prometheus could not scrape them. IPv6 as `[ADDR]:PORT`.
//! - One group per (host, exporter, target), sorted, so the document changes only when what
//!   was discovered did.
//! - Labels: `host`, `node`, `exporter`, and when known `os` (os-release `ID`), `switch` (the
//!   first switch its NICs are wired to, reduced to `[A-Za-z0-9._-]` as in the Nagios export),
//!   `subnet` (the one the target address is in); `__metrics_path__` when the rule has one.
//!   Host names are plain names already ([`crate::inventory`]); nothing else a host chooses
//!   becomes a label value unreduced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use assim_api::InventoryHost;
use serde::{Deserialize, Serialize};

use crate::monitoring::object_name;
use crate::names::{subnet_of, usable_address};

/// The most exporter rules accepted.
pub const MAX_RULES: usize = 256;

/// One kind of exporter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterRule {
    /// The `exporter` label (`node`, `mysqld`). A rule replaces the earlier one of its name.
    pub name: String,
    /// Its usual port: a listener there whose program discovery did not see is this exporter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Program names (the executable's file name) that are this exporter on any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    /// `__metrics_path__`, when it is not `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    /// `true` removes the rule of this name (a built-in one, say).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// Why a rule table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(
        "exporter rule {0:?}: the name must be 1-64 letters, digits, '_', '.' or '-' (it becomes the `exporter` label)"
    )]
    Name(String),
    #[error("exporter rule {0:?}: give a port, programs, or both (or disabled = true)")]
    Empty(String),
    #[error(
        "exporter rule {0:?}: programs are executable file names (1-64 bytes, no '/', no spaces)"
    )]
    Program(String),
    #[error(
        "exporter rule {0:?}: metrics_path must start with '/' and be at most 256 printable characters"
    )]
    Path(String),
    #[error("exporter rule {0:?}: port 0 is no port")]
    Port(String),
    #[error("{0} exporter rules: at most {MAX_RULES}")]
    TooMany(usize),
}

fn rule(name: &str, port: u16, programs: &[&str]) -> ExporterRule {
    ExporterRule {
        name: name.into(),
        port: Some(port),
        programs: programs.iter().map(|p| p.to_string()).collect(),
        metrics_path: None,
        disabled: false,
    }
}

/// The built-in table: the Prometheus project's and Debian's exporters at their registered
/// default ports, under their upstream and Debian program names.
pub fn default_rules() -> Vec<ExporterRule> {
    vec![
        rule("node", 9100, &["node_exporter", "prometheus-node-exporter"]),
        rule("process", 9256, &["process-exporter", "prometheus-process-exporter"]),
        rule("mysqld", 9104, &["mysqld_exporter", "prometheus-mysqld-exporter"]),
        rule("postgres", 9187, &["postgres_exporter", "prometheus-postgres-exporter"]),
        rule("redis", 9121, &["redis_exporter", "prometheus-redis-exporter"]),
        rule("apache", 9117, &["apache_exporter", "prometheus-apache-exporter"]),
        rule("nginx", 9113, &["nginx-prometheus-exporter", "prometheus-nginx-exporter"]),
        rule("haproxy", 9101, &["haproxy_exporter", "prometheus-haproxy-exporter"]),
        rule("bind", 9119, &["bind_exporter", "prometheus-bind-exporter"]),
        rule("blackbox", 9115, &["blackbox_exporter", "prometheus-blackbox-exporter"]),
        rule("snmp", 9116, &["snmp_exporter", "prometheus-snmp-exporter"]),
        rule("ipmi", 9290, &["ipmi_exporter", "prometheus-ipmi-exporter"]),
        rule("libvirt", 9177, &["libvirt_exporter", "prometheus-libvirt-exporter"]),
        rule("pushgateway", 9091, &["pushgateway", "prometheus-pushgateway"]),
        rule("alertmanager", 9093, &["alertmanager", "prometheus-alertmanager"]),
        rule("prometheus", 9090, &["prometheus"]),
    ]
}

fn plain(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b) || extra.contains(&b))
}

/// The built-in rules with `configured` applied in order (same name: replaced; `disabled`:
/// removed), validated.
pub fn rules_with(configured: &[ExporterRule]) -> Result<Vec<ExporterRule>, RuleError> {
    if configured.len() > MAX_RULES {
        return Err(RuleError::TooMany(configured.len()));
    }
    let mut rules = default_rules();
    for r in configured {
        let err = || r.name.clone();
        if !plain(&r.name, 64, b"") {
            return Err(RuleError::Name(err()));
        }
        rules.retain(|x| x.name != r.name);
        if r.disabled {
            continue;
        }
        if r.port.is_none() && r.programs.is_empty() {
            return Err(RuleError::Empty(err()));
        }
        if r.port == Some(0) {
            return Err(RuleError::Port(err()));
        }
        if !r.programs.iter().all(|p| plain(p, 64, b"+@")) {
            return Err(RuleError::Program(err()));
        }
        if let Some(p) = &r.metrics_path
            && (!p.starts_with('/')
                || p.len() > 256
                || p.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(RuleError::Path(err()));
        }
        rules.push(r.clone());
    }
    Ok(rules)
}

/// One target group of the HTTP SD document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The rule a listener matches (see the module doc).
fn matching<'a>(
    rules: &'a [ExporterRule],
    port: u16,
    exe: Option<&str>,
) -> Option<&'a ExporterRule> {
    let program = exe.map(|e| e.rsplit('/').next().unwrap_or(e));
    match program {
        Some(p) if !p.is_empty() => rules.iter().find(|r| r.programs.iter().any(|x| x == p)),
        _ => rules.iter().find(|r| r.port == Some(port)),
    }
}

/// The HTTP SD document for `hosts` under `rules`.
pub fn http_sd(hosts: &[InventoryHost], rules: &[ExporterRule]) -> Vec<TargetGroup> {
    let mut groups = BTreeSet::new();
    for h in hosts {
        let first: Option<IpAddr> = h.addresses.iter().find_map(|a| a.parse().ok());
        for l in &h.listeners {
            let Some(rule) = matching(rules, l.port, l.exe.as_deref()) else { continue };
            let Ok(bound) = l.ip.parse::<IpAddr>() else { continue };
            let ip = if bound.is_unspecified() {
                match first {
                    Some(ip) => ip,
                    None => continue,
                }
            } else {
                match usable_address(&l.ip) {
                    Some((ip, _)) => ip,
                    None => continue,
                }
            };
            let target = match ip {
                IpAddr::V4(v4) => format!("{v4}:{}", l.port),
                IpAddr::V6(v6) => format!("[{v6}]:{}", l.port),
            };
            let mut labels = BTreeMap::new();
            labels.insert("host".to_owned(), h.host.clone());
            labels.insert("node".to_owned(), h.node.clone());
            labels.insert("exporter".to_owned(), rule.name.clone());
            if let Some(os) = &h.os {
                labels.insert("os".to_owned(), object_name(os));
            }
            if let Some(s) = h.switches.first() {
                let name = s.switch_name.as_deref().unwrap_or(&s.chassis_id);
                labels.insert("switch".to_owned(), object_name(name));
            }
            let subnet = h.subnets.iter().find(|s| {
                s.split_once('/')
                    .and_then(|(_, p)| p.parse::<u8>().ok())
                    .is_some_and(|p| subnet_of(ip, p) == **s)
            });
            if let Some(s) = subnet {
                labels.insert("subnet".to_owned(), s.clone());
            }
            if let Some(p) = &rule.metrics_path {
                labels.insert("__metrics_path__".to_owned(), p.clone());
            }
            groups.insert(TargetGroup { targets: vec![target], labels });
        }
    }
    groups.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_api::{Listener, SwitchUplink};

    fn host(name: &str, listeners: &[(&str, u16, Option<&str>)]) -> InventoryHost {
        InventoryHost {
            host: name.into(),
            node: format!("node-{name}"),
            state: "up".into(),
            addresses: vec!["192.0.2.7".into(), "2001:db8::7".into()],
            subnets: vec!["192.0.2.0/24".into(), "2001:db8::/64".into()],
            os: Some("debian".into()),
            switches: vec![SwitchUplink {
                chassis_id: "00:11:22:33:44:55".into(),
                switch_name: Some("sw1 \"core\"".into()),
                management_addresses: vec![],
                port_id: "1".into(),
                nic: "eth0".into(),
            }],
            listeners: listeners
                .iter()
                .map(|(ip, port, exe)| Listener {
                    ip: ip.to_string(),
                    port: *port,
                    exe: exe.map(str::to_owned),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exporters_by_program_or_by_port_when_the_program_is_unknown() {
        let rules = default_rules();
        let hosts = [
            host(
                "web1",
                &[
                    ("0.0.0.0", 9100, Some("/usr/bin/prometheus-node-exporter")),
                    ("::", 9100, Some("/usr/bin/prometheus-node-exporter")),
                    ("127.0.0.1", 9104, Some("/usr/bin/prometheus-mysqld-exporter")),
                    ("0.0.0.0", 22, Some("/usr/sbin/sshd")),
                    ("2001:db8::7", 9999, Some("/opt/node_exporter")),
                ],
            ),
            // A program discovery could not see, on the node port; an sshd on 9100 is not one.
            host("db1", &[("192.0.2.7", 9100, None)]),
            host("odd", &[("0.0.0.0", 9100, Some("/usr/sbin/sshd"))]),
        ];
        let sd = http_sd(&hosts, &rules);
        let targets: Vec<(String, String, String)> = sd
            .iter()
            .map(|g| (g.labels["host"].clone(), g.labels["exporter"].clone(), g.targets[0].clone()))
            .collect();
        assert_eq!(
            targets,
            vec![
                ("db1".into(), "node".into(), "192.0.2.7:9100".into()),
                ("web1".into(), "node".into(), "192.0.2.7:9100".into()),
                ("web1".into(), "node".into(), "[2001:db8::7]:9999".into()),
            ],
            "{sd:#?}"
        );
        let g = &sd[1];
        assert_eq!(g.labels["os"], "debian");
        assert_eq!(g.labels["subnet"], "192.0.2.0/24");
        assert_eq!(g.labels["switch"], "sw1__core_", "reduced as the Nagios export does");
        assert_eq!(sd[2].labels["subnet"], "2001:db8::/64");
        // The document is what Prometheus reads.
        let json = serde_json::to_value(&sd).unwrap();
        assert!(json[0]["targets"].is_array() && json[0]["labels"].is_object());
    }

    #[test]
    fn configured_rules_extend_replace_and_disable() {
        let add = ExporterRule {
            name: "myapp".into(),
            port: Some(8080),
            programs: vec!["myapp".into()],
            metrics_path: Some("/admin/metrics".into()),
            disabled: false,
        };
        let off = ExporterRule {
            name: "node".into(),
            port: None,
            programs: vec![],
            metrics_path: None,
            disabled: true,
        };
        let rules = rules_with(&[add.clone(), off]).unwrap();
        assert!(rules.iter().all(|r| r.name != "node"));
        let sd = http_sd(
            &[host("a", &[("0.0.0.0", 8080, Some("/srv/myapp")), ("0.0.0.0", 9100, None)])],
            &rules,
        );
        assert_eq!(sd.len(), 1);
        assert_eq!(sd[0].labels["__metrics_path__"], "/admin/metrics");
        for bad in [
            ExporterRule { name: "a b".into(), ..add.clone() },
            ExporterRule { port: None, programs: vec![], ..add.clone() },
            ExporterRule { programs: vec!["../x".into()], ..add.clone() },
            ExporterRule { metrics_path: Some("metrics".into()), ..add.clone() },
            ExporterRule { port: Some(0), ..add.clone() },
        ] {
            assert!(rules_with(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unreachable_addresses_and_hosts_without_any_are_left_out() {
        let mut h = host("x", &[("0.0.0.0", 9100, None), ("fe80::1", 9100, None)]);
        h.addresses.clear();
        assert!(http_sd(&[h], &default_rules()).is_empty());
    }
}
