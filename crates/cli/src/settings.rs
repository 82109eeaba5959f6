//! Configuration of the daemons: every key comes from a flag, else its environment variable,
//! else the TOML file given with `--config`, else the built-in default. `--print-config` prints
//! the result as TOML, ready to be saved as a config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

/// Parses "1s", "250ms", "2m", "1h", or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 =
        num.parse().map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 1s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

fn read_file<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

// ---------------------------------------------------------------------------------------------
// cma

/// `cma` flags.
#[derive(Args, Debug, Clone, Default)]
pub struct CmaFlags {
    /// TOML config file; flags and environment variables override its keys.
    #[arg(long, env = "ASSIM_CMA_CONFIG")]
    pub config: Option<PathBuf>,
    /// UDP address nanoprobes talk to [default: 0.0.0.0:1984].
    #[arg(long, env = "ASSIM_CMA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP API and /metrics address [default: 127.0.0.1:1985]. Any non-loopback address
    /// requires --api-token.
    #[arg(long, env = "ASSIM_CMA_API")]
    pub api: Option<SocketAddr>,
    /// Bearer token the HTTP API requires.
    #[arg(long, env = "ASSIM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Directory for the CMA's identity and database [default: /var/lib/assim/cma].
    #[arg(long, env = "ASSIM_CMA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How often nanoprobes heartbeat their neighbours [default: 1s].
    #[arg(long, env = "ASSIM_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Silence after which a neighbour is reported late [default: 3s].
    #[arg(long, env = "ASSIM_WARN_TIME", value_parser = parse_duration)]
    pub warn_time: Option<Duration>,
    /// Silence after which a neighbour is reported dead [default: 5s].
    #[arg(long, env = "ASSIM_DEAD_TIME", value_parser = parse_duration)]
    pub dead_time: Option<Duration>,
    /// Accept nanoprobes without a join token (labs and demos only).
    #[arg(long, env = "ASSIM_OPEN_ENROLLMENT")]
    pub open_enrollment: bool,
    /// Also publish every event to NATS JetStream at this address (nats://HOST:PORT); see
    /// docs/bus.md. Retention, tagging rules and sinks are set in the config file's [bus]
    /// section.
    #[arg(long, env = "ASSIM_BUS")]
    pub bus: Option<String>,
    /// How often nanoprobes run a discovery collector, NAME=INTERVAL (repeatable or
    /// comma-separated; 0 disables it). Overrides the config file's [discovery] table, which
    /// overrides the defaults; `--print-config` shows them all. Names: interfaces, neighbours,
    /// sockets, l2neighbors, mounts, os, cpu, memory, packages, ssh_host_keys, agent.<file>,
    /// agent.* (every agent without its own entry).
    #[arg(
        long = "discovery",
        value_name = "NAME=INTERVAL",
        env = "ASSIM_DISCOVERY",
        value_delimiter = ','
    )]
    pub discovery: Vec<String>,
    /// Directory of service-check rules files (*.toml), added to the built-in rules and
    /// overriding them by name: which discovered process gets which check, host-level checks,
    /// hand-set checks per host. Format: docs/checks.md.
    #[arg(long, value_name = "DIR", env = "ASSIM_CHECK_RULES")]
    pub check_rules: Option<PathBuf>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `cma` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum CmaCommand {
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `cma token …`
#[derive(Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Create a join token and print it. Give it to nanoprobes with `nanoprobe --token TOKEN`.
    Create {
        /// Address(es) nanoprobes should use to reach this CMA [default: the CMA's --listen
        /// address, which must then not be a wildcard].
        #[arg(long = "advertise")]
        advertise: Vec<SocketAddr>,
        /// How long the token stays valid for new enrollments.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many nodes may enroll with it (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        uses: u64,
    },
}

/// The resolved `cma` configuration.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CmaFile {
    pub listen: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub api_token: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub heartbeat_interval: Option<String>,
    pub warn_time: Option<String>,
    pub dead_time: Option<String>,
    pub open_enrollment: Option<bool>,
    /// Service-check rules directory (plain value: before the tables below).
    pub check_rules: Option<PathBuf>,
    pub bus: Option<assim_bus::BusConfig>,
    pub discovery: Option<std::collections::BTreeMap<String, DiscoveryValue>>,
}

/// One `[discovery]` entry: `name = 60`, `name = "1h"`, or
/// `name = { interval = "5m", params = { KEY = "value" } }` (params reach agents as
/// `ASSIM_PARAM_KEY`).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum DiscoveryValue {
    Seconds(u64),
    Duration(String),
    Full {
        interval: DiscoveryInterval,
        #[serde(default)]
        params: std::collections::BTreeMap<String, String>,
    },
}

/// An interval in seconds or as a duration string.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum DiscoveryInterval {
    Seconds(u64),
    Duration(String),
}

fn discovery_seconds(name: &str, v: &DiscoveryInterval) -> anyhow::Result<u64> {
    match v {
        DiscoveryInterval::Seconds(s) => Ok(*s),
        DiscoveryInterval::Duration(s) => parse_duration(s)
            .map(|d| d.as_secs())
            .map_err(|e| anyhow::anyhow!("[discovery] {name}: {e}")),
    }
}

/// Defaults, then the file's `[discovery]` table, then `--discovery NAME=INTERVAL` flags.
fn resolve_discovery(
    file: Option<&std::collections::BTreeMap<String, DiscoveryValue>>,
    flags: &[String],
) -> anyhow::Result<assim_daemon::discovery::ScheduleConfig> {
    use assim_discovery::schedule::{AGENT_PREFIX, DEFAULT_INTERVALS, Entry};
    let mut config = assim_daemon::discovery::default_schedule_config();
    let check_name = |name: &str| -> anyhow::Result<()> {
        let known = DEFAULT_INTERVALS.iter().any(|(n, _)| *n == name)
            || (name.starts_with(AGENT_PREFIX) && name.len() > AGENT_PREFIX.len());
        if !known {
            let names: Vec<&str> = DEFAULT_INTERVALS.iter().map(|(n, _)| *n).collect();
            bail!(
                "[discovery]: no collector named {name:?}; known: {}, agent.<file>, agent.*",
                names.join(", ")
            );
        }
        Ok(())
    };
    for (name, v) in file.into_iter().flatten() {
        check_name(name)?;
        let entry = match v {
            DiscoveryValue::Seconds(s) => Entry { interval_s: *s, params: Default::default() },
            DiscoveryValue::Duration(d) => Entry {
                interval_s: discovery_seconds(name, &DiscoveryInterval::Duration(d.clone()))?,
                params: Default::default(),
            },
            DiscoveryValue::Full { interval, params } => {
                Entry { interval_s: discovery_seconds(name, interval)?, params: params.clone() }
            }
        };
        config.insert(name.clone(), entry);
    }
    for flag in flags {
        let Some((name, interval)) = flag.split_once('=') else {
            bail!("--discovery {flag:?}: expected NAME=INTERVAL, for example sockets=30s");
        };
        let (name, interval) = (name.trim(), interval.trim());
        check_name(name)?;
        let secs = parse_duration(interval)
            .map_err(|e| anyhow::anyhow!("--discovery {name}: {e}"))?
            .as_secs();
        config.entry(name.to_string()).or_default().interval_s = secs;
    }
    Ok(config)
}

impl CmaFlags {
    /// Flags > environment > file > defaults, validated.
    pub fn resolve(&self) -> anyhow::Result<assim_daemon::cma::CmaOptions> {
        let file: CmaFile = read_file(self.config.as_deref())?;
        let dur = |flag: Option<Duration>,
                   file: &Option<String>,
                   default: u64,
                   key: &str|
         -> anyhow::Result<Duration> {
            match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(s)) => {
                    parse_duration(s).map_err(|e| anyhow::anyhow!("config key {key}: {e}"))
                }
                (None, None) => Ok(Duration::from_millis(default)),
            }
        };
        let timing = assim_cma::Timing {
            interval: dur(
                self.heartbeat_interval,
                &file.heartbeat_interval,
                1000,
                "heartbeat_interval",
            )?,
            warn: dur(self.warn_time, &file.warn_time, 3000, "warn_time")?,
            dead: dur(self.dead_time, &file.dead_time, 5000, "dead_time")?,
        };
        if let Err(e) = timing.validate() {
            bail!(
                "heartbeat timing must satisfy 0 < interval <= warn time < dead time <= 1h \
                 (got {} / {} / {}): {e}",
                format_duration(timing.interval),
                format_duration(timing.warn),
                format_duration(timing.dead)
            );
        }
        let api = self.api.or(file.api).unwrap_or_else(|| "127.0.0.1:1985".parse().expect("valid"));
        let api_token = self.api_token.clone().or(file.api_token);
        if !api.ip().is_loopback() && api_token.is_none() {
            bail!(
                "the HTTP API on {api} is not loopback: set --api-token (or ASSIM_API_TOKEN) so it is not open to the network"
            );
        }
        Ok(assim_daemon::cma::CmaOptions {
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "0.0.0.0:1984".parse().expect("valid")),
            api,
            api_token,
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| "/var/lib/assim/cma".into()),
            timing,
            open_enrollment: self.open_enrollment || file.open_enrollment.unwrap_or(false),
            bus: {
                let mut bus = file.bus.unwrap_or_default();
                if let Some(url) = &self.bus {
                    bus.nats = Some(url.clone());
                }
                bus.validate().map_err(|e| anyhow::anyhow!("config: {e}"))?;
                bus
            },
            discovery: resolve_discovery(file.discovery.as_ref(), &self.discovery)?,
            check_rules: self.check_rules.clone().or(file.check_rules),
        })
    }
}

/// Renders resolved CMA options as a config file.
pub fn cma_config_toml(o: &assim_daemon::cma::CmaOptions) -> String {
    let f = CmaFile {
        listen: Some(o.listen),
        api: Some(o.api),
        api_token: o.api_token.as_ref().map(|_| "(set)".to_string()),
        data_dir: Some(o.data_dir.clone()),
        heartbeat_interval: Some(format_duration(o.timing.interval)),
        warn_time: Some(format_duration(o.timing.warn)),
        dead_time: Some(format_duration(o.timing.dead)),
        open_enrollment: Some(o.open_enrollment),
        bus: Some({
            let mut bus = o.bus.clone();
            for s in &mut bus.sinks {
                if let assim_bus::SinkKind::Webhook { secret: Some(secret), .. } = &mut s.sink.kind
                {
                    *secret = "(set)".into();
                }
            }
            bus
        }),
        discovery: Some(
            o.discovery
                .iter()
                .map(|(n, e)| {
                    let v = if e.params.is_empty() {
                        DiscoveryValue::Seconds(e.interval_s)
                    } else {
                        DiscoveryValue::Full {
                            interval: DiscoveryInterval::Seconds(e.interval_s),
                            params: e.params.clone(),
                        }
                    };
                    (n.clone(), v)
                })
                .collect(),
        ),
        check_rules: o.check_rules.clone(),
    };
    toml::to_string(&f).expect("config serializes")
}

// ---------------------------------------------------------------------------------------------
// nanoprobe

/// `nanoprobe` flags.
#[derive(Args, Debug, Clone, Default)]
pub struct NanoprobeFlags {
    /// TOML config file; flags and environment variables override its keys.
    #[arg(long, env = "ASSIM_NANOPROBE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The CMA's UDP address [default: the first address in the join token or pin file].
    #[arg(long, env = "ASSIM_CMA")]
    pub cma: Option<SocketAddr>,
    /// Local UDP address for heartbeats and CMA traffic [default: 0.0.0.0:1986].
    #[arg(long, env = "ASSIM_NANOPROBE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address to announce to the CMA and peers [default: derived from the route to the CMA].
    #[arg(long, env = "ASSIM_NANOPROBE_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// Directory for the node's identity and CMA pin [default: /var/lib/assim/nanoprobe].
    #[arg(long, env = "ASSIM_NANOPROBE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Join token from `cma token create`: pins the CMA's key and proves we may enroll.
    #[arg(
        long,
        env = "ASSIM_TOKEN",
        hide_env_values = true,
        conflicts_with = "trust_on_first_use"
    )]
    pub token: Option<String>,
    /// Trust whatever key the CMA presents on first contact and pin it (labs and demos only).
    #[arg(long, env = "ASSIM_TRUST_ON_FIRST_USE")]
    pub trust_on_first_use: bool,
    /// Host name to report [default: the kernel's host name].
    #[arg(long, env = "ASSIM_HOSTNAME")]
    pub hostname: Option<String>,
    /// Size limit of the spool (records waiting for the CMA's acknowledgement), in MiB
    /// [default: 64]. When full, peer status is dropped first; reports are never dropped.
    #[arg(long, env = "ASSIM_SPOOL_MAX_MB")]
    pub spool_max_mb: Option<u64>,
    /// Directory of external discovery agents: every executable file in it is a collector
    /// named `agent.<file>` that must print one JSON value (docs/discovery.md)
    /// [default: DATA_DIR/discovery.d].
    #[arg(long, env = "ASSIM_DISCOVERY_AGENTS")]
    pub discovery_agents: Option<PathBuf>,
    /// Time limit of one discovery agent run; then its whole process group is killed and the
    /// run reported as an error [default: 30s].
    #[arg(long, env = "ASSIM_AGENT_TIMEOUT", value_parser = parse_duration)]
    pub agent_timeout: Option<Duration>,
    /// Output limit of one discovery agent run, in KiB; more is reported as an error
    /// [default: 1024].
    #[arg(long, env = "ASSIM_AGENT_MAX_OUTPUT_KB")]
    pub agent_max_output_kb: Option<u64>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The `nanoprobe` config file.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NanoprobeFile {
    pub cma: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub trust_on_first_use: Option<bool>,
    pub hostname: Option<String>,
    pub spool_max_mb: Option<u64>,
    pub discovery_agents: Option<PathBuf>,
    pub agent_timeout: Option<String>,
    pub agent_max_output_kb: Option<u64>,
}

impl NanoprobeFlags {
    /// Flags > environment > file > defaults.
    pub fn resolve(&self) -> anyhow::Result<assim_daemon::nanoprobe::NanoprobeOptions> {
        use assim_daemon::nanoprobe::Enrollment;
        let file: NanoprobeFile = read_file(self.config.as_deref())?;
        let token = self.token.clone().or(file.token);
        let tofu = self.trust_on_first_use || file.trust_on_first_use.unwrap_or(false);
        let enrollment = match (token, tofu) {
            (Some(_), true) => bail!("give either a join token or --trust-on-first-use, not both"),
            (Some(t), false) => Enrollment::Token(t),
            (None, true) => Enrollment::TrustOnFirstUse,
            (None, false) => Enrollment::PinnedOnly,
        };
        let data_dir: PathBuf = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| "/var/lib/assim/nanoprobe".into());
        let mut discovery = assim_daemon::discovery::DiscoveryOptions::for_data_dir(&data_dir);
        if let Some(dir) = self.discovery_agents.clone().or(file.discovery_agents) {
            discovery.agents_dir = dir;
        }
        match (self.agent_timeout, &file.agent_timeout) {
            (Some(d), _) => discovery.agent_limits.timeout = d,
            (None, Some(s)) => {
                discovery.agent_limits.timeout = parse_duration(s)
                    .map_err(|e| anyhow::anyhow!("config key agent_timeout: {e}"))?
            }
            (None, None) => {}
        }
        if discovery.agent_limits.timeout.is_zero() {
            bail!("agent_timeout must be more than 0 (for example 30s)");
        }
        match self.agent_max_output_kb.or(file.agent_max_output_kb) {
            Some(0) => bail!("agent_max_output_kb must be at least 1"),
            Some(kb) => discovery.agent_limits.max_output = (kb as usize).saturating_mul(1024),
            None => {}
        }
        Ok(assim_daemon::nanoprobe::NanoprobeOptions {
            cma: self.cma.or(file.cma),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "0.0.0.0:1986".parse().expect("valid")),
            advertise: self.advertise.or(file.advertise),
            data_dir,
            discovery,
            enrollment,
            hostname: self.hostname.clone().or(file.hostname),
            spool_max_bytes: match self.spool_max_mb.or(file.spool_max_mb) {
                Some(0) => bail!("spool_max_mb must be at least 1"),
                Some(mb) => mb * 1024 * 1024,
                None => assim_daemon::nanoprobe::DEFAULT_SPOOL_MAX_BYTES,
            },
        })
    }
}

/// Renders resolved nanoprobe options as a config file.
pub fn nanoprobe_config_toml(o: &assim_daemon::nanoprobe::NanoprobeOptions) -> String {
    use assim_daemon::nanoprobe::Enrollment;
    let f = NanoprobeFile {
        cma: o.cma,
        listen: Some(o.listen),
        advertise: o.advertise,
        data_dir: Some(o.data_dir.clone()),
        token: matches!(o.enrollment, Enrollment::Token(_)).then(|| "(set)".to_string()),
        trust_on_first_use: Some(matches!(o.enrollment, Enrollment::TrustOnFirstUse)),
        hostname: o.hostname.clone(),
        spool_max_mb: Some(o.spool_max_bytes / (1024 * 1024)),
        discovery_agents: Some(o.discovery.agents_dir.clone()),
        agent_timeout: Some(format_duration(o.discovery.agent_limits.timeout)),
        agent_max_output_kb: Some(o.discovery.agent_limits.max_output as u64 / 1024),
    };
    toml::to_string(&f).expect("config serializes")
}

/// Runs `cma` (daemon or subcommand).
pub fn run_cma(flags: CmaFlags, command: Option<CmaCommand>) -> anyhow::Result<()> {
    let opts = flags.resolve()?;
    if flags.print_config {
        print!("{}", cma_config_toml(&opts));
        return Ok(());
    }
    match command {
        None => {
            crate::init_logging();
            block_on_shutdown(|s| assim_daemon::cma::run(opts, s))
        }
        Some(CmaCommand::Token(TokenCommand::Create { advertise, ttl, uses })) => {
            token_create(&opts, advertise, ttl, uses)
        }
    }
}

fn token_create(
    opts: &assim_daemon::cma::CmaOptions,
    advertise: Vec<SocketAddr>,
    ttl: Duration,
    uses: u64,
) -> anyhow::Result<()> {
    use assim_wire::Timestamp;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let identity = assim_seal::Identity::load_or_create(&opts.data_dir)?;
    let mut store = assim_store::Store::open(&assim_daemon::cma::store_path(&opts.data_dir))?;
    let addrs = if advertise.is_empty() {
        let listen = match store.meta("listen")? {
            Some(s) => s.parse().unwrap_or(opts.listen),
            None => opts.listen,
        };
        if listen.ip().is_unspecified() {
            bail!(
                "the CMA listens on {listen}, which nanoprobes cannot dial: pass --advertise ADDR:PORT (repeatable)"
            );
        }
        vec![listen]
    } else {
        advertise
    };
    let token = assim_seal::JoinToken::generate(&identity, addrs, &mut rand::rngs::OsRng);
    let now = Timestamp::now();
    store.add_token(&assim_store::TokenRecord {
        id: token.token_id(),
        secret: token.secret,
        created_at: now,
        expires_at: now + ttl,
        max_uses: uses,
        uses: 0,
    })?;
    eprintln!(
        "Join token for CMA {} (key {}), valid {}{}. Start a nanoprobe with:\n  nanoprobe --token <TOKEN>",
        identity.node_id(),
        identity.fingerprint(),
        format_duration(ttl),
        if uses > 0 { format!(" for {uses} enrollment(s)") } else { String::new() },
    );
    println!("{}", token.encode());
    Ok(())
}

/// Runs `nanoprobe`.
pub fn run_nanoprobe(flags: NanoprobeFlags) -> anyhow::Result<()> {
    let opts = flags.resolve()?;
    if flags.print_config {
        print!("{}", nanoprobe_config_toml(&opts));
        return Ok(());
    }
    crate::init_logging();
    block_on_shutdown(|s| assim_daemon::nanoprobe::run(opts, s))
}

fn block_on_shutdown<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    crate::block_on(async move { f(Box::pin(crate::shutdown_signal())).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
    }

    #[test]
    fn flags_override_file_and_timing_is_checked() {
        let dir = std::env::temp_dir().join(format!("assim-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cma.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:7000\"\ndead_time = \"9s\"\n").unwrap();
        let flags = CmaFlags {
            config: Some(file.clone()),
            dead_time: Some(Duration::from_secs(7)),
            ..Default::default()
        };
        let o = flags.resolve().unwrap();
        assert_eq!(o.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(o.timing.dead, Duration::from_secs(7));
        let printed = cma_config_toml(&o);
        assert!(printed.contains("dead_time = \"7s\""), "{printed}");

        let bad = CmaFlags { warn_time: Some(Duration::from_secs(9)), ..Default::default() };
        assert!(
            bad.resolve().unwrap_err().to_string().contains("interval <= warn time < dead time")
        );
        let open = CmaFlags { api: Some("0.0.0.0:1985".parse().unwrap()), ..Default::default() };
        assert!(open.resolve().unwrap_err().to_string().contains("--api-token"));
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let typo = CmaFlags { config: Some(file), ..Default::default() };
        assert!(format!("{:#}", typo.resolve().unwrap_err()).contains("lisen"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
