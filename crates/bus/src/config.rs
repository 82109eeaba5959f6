//! The `[bus]` section of the CMA's config file.
//!
//! ```toml
//! [bus]
//! retention_max_age = "30d"      # delete events older than this (12h, 30d, …)
//! retention_max_events = 1000000 # and keep at most this many
//!
//! [[bus.tag_rules]]              # see `tagging`
//! text = "RAID"
//! add = { subsystem = "storage" }
//!
//! [[bus.sinks]]                  # a durable subscription the CMA delivers itself
//! name = "pager"
//! filter = "severity>=critical"
//! type = "webhook"               # webhook | exec | nagios | nats
//! url = "https://pager.example.com/hook"
//! secret = "s3cret"              # HMAC-SHA256 key for X-Assim-Signature
//! ```

use std::path::PathBuf;
use std::time::Duration;

use assim_util::parse_duration;
use serde::{Deserialize, Serialize};

use crate::tagging::TagRuleConfig;

/// The `[bus]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Events older than this are deleted ("30d").
    pub retention_max_age: String,
    /// At most this many events are kept.
    pub retention_max_events: u64,
    pub tag_rules: Vec<TagRuleConfig>,
    pub sinks: Vec<SinkSubscription>,
    /// `nats://HOST:PORT`: also publish every event to NATS JetStream (see `nats`).
    pub nats: Option<String>,
    /// Copies JetStream keeps of each event in the `ASSIM_EVENTS` stream: 1 on a single
    /// server, 3 in a cluster of three, so the stream survives the loss of any one server.
    pub nats_replicas: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            retention_max_age: "30d".into(),
            retention_max_events: 1_000_000,
            tag_rules: Vec::new(),
            sinks: Vec::new(),
            nats: None,
            nats_replicas: 1,
        }
    }
}

impl BusConfig {
    /// Checks everything that can be checked without IO: durations, rules, filters, sinks.
    pub fn validate(&self) -> Result<(), String> {
        parse_duration(&self.retention_max_age)
            .map_err(|e| format!("bus.retention_max_age: {e}"))?;
        if self.retention_max_events == 0 {
            return Err("bus.retention_max_events must be at least 1".into());
        }
        crate::tagging::Tagger::new(&self.tag_rules).map_err(|e| format!("bus.tag_rules: {e}"))?;
        let mut names = std::collections::BTreeSet::new();
        for s in &self.sinks {
            crate::valid_subscription_name(&s.name).map_err(|e| format!("bus.sinks: {e}"))?;
            if !names.insert(&s.name) {
                return Err(format!("bus.sinks: the name {:?} is used twice", s.name));
            }
            crate::filter::Filter::parse(&s.filter)
                .map_err(|e| format!("bus.sinks {:?}: filter: {e}", s.name))?;
            s.sink.validate().map_err(|e| format!("bus.sinks {:?}: {e}", s.name))?;
        }
        if let Some(url) = &self.nats
            && !url.starts_with("nats://")
        {
            return Err(format!("bus.nats: {url:?} is not a nats://HOST:PORT address"));
        }
        if !(1..=5).contains(&self.nats_replicas) {
            return Err(format!(
                "bus.nats_replicas must be 1 to 5 (3 survives the loss of any one NATS server), not {}",
                self.nats_replicas
            ));
        }
        Ok(())
    }

    /// The retention age.
    pub fn max_age(&self) -> Duration {
        parse_duration(&self.retention_max_age).unwrap_or(Duration::from_secs(30 * 86_400))
    }
}

/// A sink declared in the config file: created (or updated) as a durable subscription at
/// start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkSubscription {
    pub name: String,
    #[serde(default)]
    pub filter: String,
    #[serde(flatten)]
    pub sink: SinkConfig,
}

/// Where a subscription's events go, and how hard to try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkConfig {
    #[serde(flatten)]
    pub kind: SinkKind,
    /// Attempts per event before it becomes a dead letter (default 8).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first retry delay; it doubles per attempt up to `max_backoff` (default "1s").
    #[serde(default = "default_backoff")]
    pub backoff: String,
    /// Default "5m".
    #[serde(default = "default_max_backoff")]
    pub max_backoff: String,
    /// Per attempt (default "10s").
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_attempts() -> u32 {
    8
}
fn default_backoff() -> String {
    "1s".into()
}
fn default_max_backoff() -> String {
    "5m".into()
}
fn default_timeout() -> String {
    "10s".into()
}

/// The kinds of sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
    /// JSON POST of each event; `X-Assim-Signature: sha256=HEX` (HMAC of the body with
    /// `secret`) when a secret is set; any 2xx is success.
    Webhook { url: String, secret: Option<String> },
    /// Every executable file in `dir` runs once per event, in name order: the event as JSON on
    /// stdin and as `ASSIM_EVENT_*` variables; exit 0 is success.
    Exec { dir: PathBuf },
    /// Nagios/Icinga passive check results written to the external command file.
    Nagios {
        command_file: PathBuf,
        /// The service for events without a `service` tag (default "assim").
        #[serde(default)]
        service: Option<String>,
    },
    /// Publish each event as JSON to `{subject}.{type}` on a NATS server (core NATS).
    Nats { url: String, subject: Option<String> },
}

impl SinkKind {
    /// Whether a subscription created through the HTTP API may use this kind. `exec` runs
    /// programs and `nagios` appends to a file on the CMA host, so both come only from the
    /// config file; the runner refuses them on any subscription the config did not declare.
    pub fn api_may_create(&self) -> bool {
        matches!(self, SinkKind::Webhook { .. } | SinkKind::Nats { .. })
    }
}

impl SinkConfig {
    /// Checks durations, URLs and limits.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("backoff", &self.backoff),
            ("max_backoff", &self.max_backoff),
            ("timeout", &self.timeout),
        ] {
            parse_duration(v).map_err(|e| format!("{name}: {e}"))?;
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return Err(format!("max_attempts must be 1..=1000 (got {})", self.max_attempts));
        }
        match &self.kind {
            SinkKind::Webhook { url, .. }
                if !(url.starts_with("http://") || url.starts_with("https://")) =>
            {
                Err(format!("webhook url {url:?} must start with http:// or https://"))
            }
            SinkKind::Nats { url, .. } if !url.starts_with("nats://") => {
                Err(format!("nats url {url:?} must start with nats://"))
            }
            SinkKind::Exec { dir } if !dir.is_absolute() => {
                Err(format!("exec dir {} must be an absolute path", dir.display()))
            }
            SinkKind::Nagios { command_file, .. } if !command_file.is_absolute() => Err(format!(
                "nagios command_file {} must be an absolute path",
                command_file.display()
            )),
            _ => Ok(()),
        }
    }

    /// A short name of the kind ("webhook", …).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Exec { .. } => "exec",
            SinkKind::Nagios { .. } => "nagios",
            SinkKind::Nats { .. } => "nats",
        }
    }

    pub(crate) fn durations(&self) -> (Duration, Duration, Duration) {
        let d = |s: &str, dflt: u64| parse_duration(s).unwrap_or(Duration::from_secs(dflt));
        (d(&self.backoff, 1), d(&self.max_backoff, 300), d(&self.timeout, 10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_section_parses_and_validates() {
        #[derive(Deserialize)]
        struct F {
            bus: BusConfig,
        }
        let f: F = toml::from_str(
            r#"
            [bus]
            retention_max_age = "7d"
            [[bus.tag_rules]]
            text = "RAID"
            add = { subsystem = "storage" }
            [[bus.sinks]]
            name = "pager"
            filter = "severity>=critical"
            type = "webhook"
            url = "http://127.0.0.1:9/hook"
            secret = "k"
            max_attempts = 3
            [[bus.sinks]]
            name = "nagios"
            type = "nagios"
            command_file = "/var/lib/nagios4/rw/nagios.cmd"
            "#,
        )
        .unwrap();
        f.bus.validate().unwrap();
        assert_eq!(f.bus.max_age(), Duration::from_secs(7 * 86_400));
        assert_eq!(f.bus.retention_max_events, 1_000_000);
        assert_eq!(f.bus.sinks[0].sink.max_attempts, 3);
        assert_eq!(f.bus.sinks[1].sink.kind_name(), "nagios");
        let json = serde_json::to_string(&f.bus.sinks[0].sink).unwrap();
        let back: SinkConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f.bus.sinks[0].sink);
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = BusConfig { retention_max_age: "30 parsecs".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().contains("retention_max_age"));
        c.retention_max_age = "1d".into();
        c.nats = Some("localhost:4222".into());
        assert!(c.validate().unwrap_err().contains("nats://"));
    }
}
