//! Configuration of `cma`: every key comes from a flag, else its environment variable, else the
//! TOML file given with `--config`, else the built-in default. `--print-config` prints the result
//! as TOML, ready to be saved as a config file. Also `cma token create`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use assim_util::daemon::{Threads, block_on_shutdown, init_logging, read_config_file};
use assim_util::duration::{format_duration, parse_duration};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

/// `cma` flags.
#[derive(Args, Debug, Clone, Default)]
pub struct CmaFlags {
    /// TOML config file; flags and environment variables override its keys.
    #[arg(long, env = "ASSIM_CMA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// UDP address nanoprobes talk to [default: 0.0.0.0:1984].
    #[arg(long, env = "ASSIM_CMA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP API and /metrics address [default: 127.0.0.1:1985]. Any non-loopback address
    /// requires --api-token.
    #[arg(long, env = "ASSIM_CMA_API")]
    pub api: Option<SocketAddr>,
    /// Bearer token the HTTP API accepts, and then requires for reads too. Requests that change
    /// state (checks, run-now, subscriptions) always need a token, on loopback too: this one or
    /// the one the CMA keeps in DATA_DIR/api.token (created at the first start, mode 0600),
    /// which the `assim` CLI reads.
    #[arg(long, env = "ASSIM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Host names clients use to reach the HTTP API, besides localhost and IP addresses
    /// (repeatable or comma-separated). Requests with any other Host header are refused, so a
    /// web page cannot reach the API by rebinding its DNS name.
    #[arg(long = "api-host", value_name = "NAME", env = "ASSIM_API_HOSTS", value_delimiter = ',')]
    pub api_hosts: Vec<String>,
    /// Directories whose programs checks set through the API may name by path (Nagios plugins,
    /// LSB scripts; repeatable or comma-separated) [default: /usr/lib/nagios/plugins,
    /// /usr/lib64/nagios/plugins, /etc/init.d]. A name without / runs from the nanoprobe's
    /// plugin directory. Checks from --check-rules files are not restricted.
    #[arg(
        long = "check-plugin-dir",
        value_name = "DIR",
        env = "ASSIM_CHECK_PLUGIN_DIRS",
        value_delimiter = ','
    )]
    pub check_plugin_dirs: Vec<PathBuf>,
    /// Directory for the CMA's identity, inbox and (by default) database
    /// [default: /var/lib/assim/cma].
    #[arg(long, env = "ASSIM_CMA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Where the CMA keeps its state [default: the SQLite file DATA_DIR/cma.sqlite].
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (or postgresql://…; a Unix socket:
    /// postgres://USER@/DATABASE?host=/run/postgresql) uses PostgreSQL, which several `cma`
    /// processes can share: one applies records, the others stand by and take over when its
    /// engine lease lapses (see --engine-lease and docs/cluster.md). They must share the CMA
    /// identity (copy DATA_DIR/node_id and DATA_DIR/node.key). sqlite:PATH uses another SQLite
    /// file. Put a password in the config file (mode 0600) or ASSIM_CMA_STORE rather than on
    /// the command line, where other users can see it; the CMA never prints it.
    #[arg(
        long,
        value_name = "URL",
        env = "ASSIM_CMA_STORE",
        hide_env_values = true,
        global = true
    )]
    pub store: Option<String>,
    /// How long the engine lease lasts with --store postgres://…: a standby takes over at most
    /// this long (plus a fifth of it) after the active CMA died; the active one renews it every
    /// third of it [default: 10s; 1s to 10m].
    #[arg(long, env = "ASSIM_CMA_ENGINE_LEASE", value_parser = parse_duration)]
    pub engine_lease: Option<Duration>,
    /// Keep the inbox on NATS JetStream instead of DATA_DIR/inbox: nats://HOST:PORT, several
    /// servers comma-separated. Every engine on the --store postgres://… database reads this
    /// one replicated inbox, so a takeover loses no record the dead engine acknowledged (see
    /// docs/cluster.md). Needs --store postgres://… and nats-server 2.10 or later with
    /// JetStream; the stream ASSIM_INBOX is created if missing.
    #[arg(long, value_name = "URL", env = "ASSIM_CMA_QUEUE", hide_env_values = true)]
    pub queue: Option<String>,
    /// Copies JetStream keeps of each inbox record (--queue): 3 survives the loss of any one
    /// NATS server; 1 for a single server [default: 3; 1 to 5].
    #[arg(long, env = "ASSIM_CMA_QUEUE_REPLICAS")]
    pub queue_replicas: Option<usize>,
    /// What this process does in a cluster (needs --queue): `whole` reads the nanoprobes'
    /// datagrams and, holding the engine lease, applies them (the default, one process per
    /// engine); `reader` is a packet reader — it authenticates datagrams on --listen, appends
    /// them to the JetStream inbox and acknowledges, and applies nothing (run two or more, each
    /// with its own --listen, all listed in the nanoprobes' --cma); `engine` reads no datagrams
    /// and applies what the readers appended, sending to nanoprobes through them. See
    /// docs/cluster.md [default: whole].
    #[arg(long, env = "ASSIM_CMA_ROLE", value_parser = ["whole", "reader", "engine"])]
    pub role: Option<String>,
    /// How often nanoprobes heartbeat their neighbours [default: 1s].
    #[arg(long, env = "ASSIM_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Silence after which a neighbour counts as late (kept at the nanoprobe, not reported)
    /// [default: 1.5s].
    #[arg(long, env = "ASSIM_WARN_TIME", value_parser = parse_duration)]
    pub warn_time: Option<Duration>,
    /// Silence after which a neighbour is reported dead [default: 2.5s].
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
    /// sockets, l2neighbors, mounts, os, cpu, memory, packages, ssh_host_keys, raid,
    /// block_devices, file_integrity, agent.<file>,
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
    /// Topology history (`assim host H history`) older than this is deleted [default: 90d].
    #[arg(long, env = "ASSIM_TOPOLOGY_HISTORY_MAX_AGE", value_parser = parse_duration)]
    pub topology_history_max_age: Option<Duration>,
    /// At most this many topology history rows are kept, the oldest deleted first
    /// [default: 1000000].
    #[arg(long, env = "ASSIM_TOPOLOGY_HISTORY_MAX_ROWS")]
    pub topology_history_max_rows: Option<u64>,
    /// Pin a host to a ring, HOST=NAME (host name or node id; repeatable or comma-separated):
    /// it heartbeats in the ring `pinned:NAME` whatever LLDP/CDP or its subnet say — for
    /// networks that announce nothing. Overrides the config file's [pins] table.
    #[arg(long = "pin", value_name = "HOST=NAME", env = "ASSIM_PIN", value_delimiter = ',')]
    pub pins: Vec<String>,
    /// A file of extra security audit rules (repeatable; same format as the shipped rules, a
    /// rule with a shipped id replaces it; see docs/audit.md).
    #[arg(
        long = "audit-rules",
        value_name = "FILE",
        env = "ASSIM_AUDIT_RULES",
        value_delimiter = ','
    )]
    pub audit_rules: Vec<PathBuf>,
    /// Silence an audit rule by id (repeatable or comma-separated): no results, score or events.
    #[arg(
        long = "audit-silence",
        value_name = "ID",
        env = "ASSIM_AUDIT_SILENCE",
        value_delimiter = ','
    )]
    pub audit_silence: Vec<String>,
    /// Where the IEEE MAC vendor registry is (`assim macs`) [default: /usr/share/ieee-data,
    /// Debian's ieee-data package].
    #[arg(long, value_name = "DIR", env = "ASSIM_OUI_DIR")]
    pub oui_dir: Option<PathBuf>,
    /// Do not look up the DNS names of host addresses (`assim addresses`).
    #[arg(long, env = "ASSIM_NO_REVERSE_DNS")]
    pub no_reverse_dns: bool,
    /// A DNS server for reverse lookups, ADDR or ADDR:PORT (repeatable or comma-separated)
    /// [default: the nameservers of /etc/resolv.conf].
    #[arg(long = "dns-server", value_name = "ADDR", env = "ASSIM_DNS_SERVERS", value_delimiter = ',', value_parser = parse_dns_server)]
    pub dns_servers: Vec<SocketAddr>,
    /// How long the `host.new` event of a host registering for the first time waits for its
    /// OS and SSH host keys (the `os` and `ssh_host_keys` discovery results); after that it is
    /// raised with what arrived, tagged `complete=false` [default: 60s]. See docs/automation.md.
    #[arg(long, env = "ASSIM_HOST_NEW_WAIT", value_parser = parse_duration)]
    pub host_new_wait: Option<Duration>,
    /// Forward the statistics programs put on the hosts (`assim stat put`, nanoprobes with
    /// --statistics) to Graphite: carbon's plaintext receiver, HOST:PORT (usually port 2003).
    /// Each value is sent as PREFIX.HOST.NAME[.TAGKEY.TAGVALUE...] with the time of its batch;
    /// while carbon is unreachable values wait in the CMA's database (bounded by
    /// --graphite-queue-max) and go out with their original times once it is back. Without
    /// it nothing is queued; the latest values are always at /api/v1/statistics/prometheus.
    /// See docs/automation.md.
    #[arg(long, value_name = "HOST:PORT", env = "ASSIM_GRAPHITE")]
    pub graphite: Option<String>,
    /// The first segment(s) of every Graphite path [default: assim].
    #[arg(long, value_name = "PATH", env = "ASSIM_GRAPHITE_PREFIX")]
    pub graphite_prefix: Option<String>,
    /// Values kept at most while carbon is unreachable; beyond it the oldest are dropped,
    /// counted in assim_cma_statistics_dropped_total and logged [default: 1000000].
    #[arg(long, value_name = "N", env = "ASSIM_GRAPHITE_QUEUE_MAX")]
    pub graphite_queue_max: Option<u64>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `ADDR` (port 53) or `ADDR:PORT` / `[V6]:PORT`.
fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            format!("{text:?} is not an address (192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)")
        })
}

/// `cma` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum CmaCommand {
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Move an embedded CMA to PostgreSQL: copy its SQLite store (nodes, rings, events,
    /// topology, services, tokens, subscriptions, queued statistics) into the empty database
    /// --store names. Stop the embedded CMA cleanly first.
    ///
    /// Example: cma import --from /var/lib/assim/cma --store postgres://cma@db1/assim
    #[command(verbatim_doc_comment)]
    Import {
        /// The embedded CMA's data directory (holding cma.sqlite) [default: --data-dir].
        #[arg(long = "from", value_name = "DIR")]
        from: Option<std::path::PathBuf>,
    },
}

/// Enrollments a join token allows unless `--uses` says otherwise: a leaked token admits a
/// bounded number of identities (issue 16 item 4).
pub const DEFAULT_TOKEN_USES: u64 = 100;

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
        /// How many nodes may enroll with it (0 = unlimited, which you must ask for).
        #[arg(long, default_value_t = DEFAULT_TOKEN_USES)]
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
    pub api_hosts: Option<Vec<String>>,
    pub check_plugin_dirs: Option<Vec<PathBuf>>,
    pub data_dir: Option<PathBuf>,
    /// `--store`: a PostgreSQL URL or sqlite:PATH.
    pub store: Option<String>,
    /// `--engine-lease`.
    pub engine_lease: Option<String>,
    /// `--queue`: NATS URLs of the JetStream inbox.
    pub queue: Option<String>,
    /// `--queue-replicas`.
    pub queue_replicas: Option<usize>,
    /// `--role`: whole, reader or engine.
    pub role: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub warn_time: Option<String>,
    pub dead_time: Option<String>,
    pub open_enrollment: Option<bool>,
    /// Service-check rules directory (plain value: before the tables below).
    pub check_rules: Option<PathBuf>,
    pub topology_history_max_age: Option<String>,
    pub topology_history_max_rows: Option<u64>,
    pub host_new_wait: Option<String>,
    pub bus: Option<assim_bus::BusConfig>,
    pub discovery: Option<std::collections::BTreeMap<String, DiscoveryValue>>,
    /// Ring pins: host name or node id → ring name (`[pins]`, issue 13).
    pub pins: Option<std::collections::BTreeMap<String, String>>,
    /// The fleet questions: MAC registry and reverse DNS (`[fleet]`).
    pub fleet: Option<FleetFile>,
    /// The security audit: extra rule files and silenced rules (`[audit]`).
    pub audit: Option<AuditFile>,
    /// Prometheus exporter rules added to (or replacing, by name) the built-in ones
    /// (`[[exporters]]`, issue 17; `/api/v1/export/prometheus-sd`).
    pub exporters: Option<Vec<assim_export::prometheus::ExporterRule>>,
    /// Statistics forwarding (`[statistics]`, issue 17 item 5).
    pub statistics: Option<StatisticsFile>,
}

/// The `[statistics]` table of the config file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatisticsFile {
    /// carbon's plaintext receiver, HOST:PORT.
    pub graphite: Option<String>,
    pub graphite_prefix: Option<String>,
    pub graphite_queue_max: Option<u64>,
}

/// `HOST:PORT` with a port (a name is resolved at each connection).
fn check_host_port(text: &str) -> anyhow::Result<()> {
    let ok = text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && !host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/')
    });
    if !ok {
        bail!("graphite {text:?}: expected HOST:PORT, for example graphite.example.com:2003");
    }
    Ok(())
}

/// The `[audit]` table of the config file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    pub rules: Option<Vec<PathBuf>>,
    pub silence: Option<Vec<String>>,
}

/// The `[fleet]` table of the config file (every key optional).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    pub oui_dir: Option<PathBuf>,
    pub reverse_dns: Option<bool>,
    pub dns_servers: Option<Vec<String>>,
}

/// The most pins accepted.
pub const MAX_PINS: usize = 100_000;

/// Ring pins from the file's `[pins]` table, replaced by `--pin HOST=NAME` flags when given.
/// Names: 1–128 bytes, no whitespace or control characters.
fn resolve_pins(
    file: Option<&std::collections::BTreeMap<String, String>>,
    flags: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut pins = std::collections::BTreeMap::new();
    if flags.is_empty() {
        pins.extend(file.cloned().unwrap_or_default());
    } else {
        for f in flags {
            let Some((host, name)) = f.split_once('=') else {
                bail!("--pin {f:?}: expected HOST=NAME, for example web1=rack7");
            };
            pins.insert(host.trim().to_owned(), name.trim().to_owned());
        }
    }
    if pins.len() > MAX_PINS {
        bail!("{} ring pins: at most {MAX_PINS}", pins.len());
    }
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 128 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    for (host, name) in &pins {
        if !ok(host) || !ok(name) {
            bail!(
                "ring pin {host:?} = {name:?}: host and ring name must be 1–128 bytes without \
                 spaces or control characters"
            );
        }
    }
    Ok(pins)
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
) -> anyhow::Result<assim_cma::schedule::ScheduleConfig> {
    use assim_discovery::schedule::{AGENT_PREFIX, DEFAULT_INTERVALS, Entry};
    let mut config = assim_cma::schedule::default_schedule_config();
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
    pub fn resolve(&self) -> anyhow::Result<crate::cma::CmaOptions> {
        let file: CmaFile = read_config_file(self.config.as_deref())?;
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
        let default = assim_cma::Timing::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let timing = assim_cma::Timing {
            interval: dur(
                self.heartbeat_interval,
                &file.heartbeat_interval,
                ms(default.interval),
                "heartbeat_interval",
            )?,
            warn: dur(self.warn_time, &file.warn_time, ms(default.warn), "warn_time")?,
            dead: dur(self.dead_time, &file.dead_time, ms(default.dead), "dead_time")?,
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
        let topology_history_max_age = dur(
            self.topology_history_max_age,
            &file.topology_history_max_age,
            assim_store_sqlite::retention::DEFAULT_MAX_AGE_DAYS * 86_400_000,
            "topology_history_max_age",
        )?;
        let topology_history_max_rows = self
            .topology_history_max_rows
            .or(file.topology_history_max_rows)
            .unwrap_or(assim_store_sqlite::retention::DEFAULT_MAX_ROWS);
        if topology_history_max_age.is_zero() || topology_history_max_rows == 0 {
            bail!("topology_history_max_age and topology_history_max_rows must be above 0");
        }
        let api_hosts = if self.api_hosts.is_empty() {
            file.api_hosts.unwrap_or_default()
        } else {
            self.api_hosts.clone()
        };
        crate::api_access::validate_hosts(&api_hosts)?;
        let check_plugin_dirs = if !self.check_plugin_dirs.is_empty() {
            self.check_plugin_dirs.clone()
        } else if let Some(dirs) = file.check_plugin_dirs {
            dirs
        } else {
            crate::api_access::DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect()
        };
        crate::api_access::validate_plugin_dirs(&check_plugin_dirs)?;
        let host_new_wait = dur(
            self.host_new_wait,
            &file.host_new_wait,
            assim_cma::host_new::DEFAULT_WAIT.as_millis() as u64,
            "host_new_wait",
        )?;
        if host_new_wait > Duration::from_secs(86_400) {
            bail!("host_new_wait must be at most 24h (got {})", format_duration(host_new_wait));
        }
        let data_dir: PathBuf =
            self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| "/var/lib/assim/cma".into());
        let store = match self.store.as_deref().or(file.store.as_deref()) {
            Some(url) if !url.trim().is_empty() => crate::store::StoreUrl::parse(url)?,
            _ => crate::store::StoreUrl::default_for(&data_dir),
        };
        let on_postgres = matches!(store, crate::store::StoreUrl::Postgres(_));
        let engine_lease = dur(self.engine_lease, &file.engine_lease, 10_000, "engine_lease")?;
        assim_cma_shell::lease::LeaseConfig { ttl: engine_lease }
            .validate()
            .map_err(|e| anyhow::anyhow!("engine_lease: {e}"))?;
        let mut queue = match self.queue.as_deref().or(file.queue.as_deref()) {
            Some(url) if !url.trim().is_empty() => {
                let mut q = assim_inbox_jetstream::QueueConfig::new(url.trim());
                if let Some(r) = self.queue_replicas.or(file.queue_replicas) {
                    q.replicas = r;
                }
                q.servers().map_err(|e| anyhow::anyhow!("--queue: {e}"))?;
                if !on_postgres {
                    bail!(
                        "--queue needs --store postgres://…: the engines that share the \
                         JetStream inbox share their state through PostgreSQL (docs/cluster.md)"
                    );
                }
                Some(q)
            }
            _ => {
                if self.queue_replicas.or(file.queue_replicas).is_some() {
                    bail!("queue_replicas is set without --queue nats://…; set both or neither");
                }
                None
            }
        };
        let role = match self.role.as_deref().or(file.role.as_deref()).map(str::trim) {
            None | Some("whole") => crate::cma::ProcessRole::Whole,
            Some("reader") => crate::cma::ProcessRole::Reader,
            Some("engine") => crate::cma::ProcessRole::Engine,
            Some(other) => bail!("invalid role {other:?}: expected whole, reader or engine"),
        };
        if role != crate::cma::ProcessRole::Whole && queue.is_none() {
            bail!(
                "role = {} needs --queue nats://… and --store postgres://…: packet readers and \
                 engines meet only in the JetStream inbox (docs/cluster.md)",
                role.name()
            );
        }
        if let Some(q) = queue.as_mut() {
            // Readers append side by side; so must every writer of their stream.
            q.shared_writers = role != crate::cma::ProcessRole::Whole;
        }
        Ok(crate::cma::CmaOptions {
            store,
            engine_lease,
            role,
            queue,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "0.0.0.0:1984".parse().expect("valid")),
            api,
            api_token,
            api_hosts,
            check_plugin_dirs,
            data_dir,
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
            topology_history_max_age,
            topology_history_max_rows,
            pins: resolve_pins(file.pins.as_ref(), &self.pins)?,
            audit_rules: if self.audit_rules.is_empty() {
                file.audit.as_ref().and_then(|a| a.rules.clone()).unwrap_or_default()
            } else {
                self.audit_rules.clone()
            },
            audit_silence: if self.audit_silence.is_empty() {
                file.audit.as_ref().and_then(|a| a.silence.clone()).unwrap_or_default()
            } else {
                self.audit_silence.clone()
            },
            fleet: {
                let f = file.fleet.unwrap_or_default();
                let dns_servers = if self.dns_servers.is_empty() {
                    f.dns_servers
                        .unwrap_or_default()
                        .iter()
                        .map(|t| {
                            parse_dns_server(t)
                                .map_err(|e| anyhow::anyhow!("config: [fleet] dns_servers: {e}"))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?
                } else {
                    self.dns_servers.clone()
                };
                crate::api_fleet::FleetConfig {
                    oui_dir: self
                        .oui_dir
                        .clone()
                        .or(f.oui_dir)
                        .unwrap_or_else(|| assim_export::oui::DEFAULT_DIR.into()),
                    reverse_dns: !self.no_reverse_dns && f.reverse_dns.unwrap_or(true),
                    dns_servers,
                }
            },
            host_new_wait,
            exporter_rules: assim_export::prometheus::rules_with(
                file.exporters.as_deref().unwrap_or_default(),
            )
            .map_err(|e| anyhow::anyhow!("config [[exporters]]: {e}"))?,
            statistics: {
                let f = file.statistics.unwrap_or_default();
                let graphite = self.graphite.clone().or(f.graphite).filter(|g| !g.is_empty());
                if let Some(g) = &graphite {
                    check_host_port(g)?;
                }
                let prefix = self
                    .graphite_prefix
                    .clone()
                    .or(f.graphite_prefix)
                    .unwrap_or_else(|| "assim".into());
                if !assim_wire::stat_rules::valid_name(&prefix) || prefix.len() > 64 {
                    bail!(
                        "graphite_prefix {prefix:?}: use dot-separated segments of letters, \
                         digits, '_' and '-', at most 64 bytes (for example assim or prod.assim)"
                    );
                }
                let queue_max = self
                    .graphite_queue_max
                    .or(f.graphite_queue_max)
                    .unwrap_or(assim_store::statistics::DEFAULT_QUEUE_MAX);
                if queue_max == 0 {
                    bail!("graphite_queue_max must be above 0");
                }
                crate::graphite::StatisticsOptions { graphite, prefix, queue_max }
            },
        })
    }
}

/// Renders resolved CMA options as a config file.
pub fn cma_config_toml(o: &crate::cma::CmaOptions) -> String {
    let f = CmaFile {
        listen: Some(o.listen),
        api: Some(o.api),
        api_token: o.api_token.as_ref().map(|_| "(set)".to_string()),
        api_hosts: Some(o.api_hosts.clone()),
        check_plugin_dirs: Some(o.check_plugin_dirs.clone()),
        data_dir: Some(o.data_dir.clone()),
        store: Some(o.store.redacted()),
        engine_lease: Some(format_duration(o.engine_lease)),
        queue: o.queue.as_ref().map(|q| q.redacted_url()),
        queue_replicas: o.queue.as_ref().map(|q| q.replicas),
        role: Some(o.role.name().into()),
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
        topology_history_max_age: Some(format_duration(o.topology_history_max_age)),
        topology_history_max_rows: Some(o.topology_history_max_rows),
        host_new_wait: Some(format_duration(o.host_new_wait)),
        pins: Some(o.pins.clone()),
        audit: Some(AuditFile {
            rules: Some(o.audit_rules.clone()),
            silence: Some(o.audit_silence.clone()),
        }),
        fleet: Some(FleetFile {
            oui_dir: Some(o.fleet.oui_dir.clone()),
            reverse_dns: Some(o.fleet.reverse_dns),
            dns_servers: Some(o.fleet.dns_servers.iter().map(ToString::to_string).collect()),
        }),
        exporters: Some({
            // The effective table, and the built-ins it lacks as disabled, so the printed file
            // reads back to the same rules.
            let mut rules = o.exporter_rules.clone();
            for d in assim_export::prometheus::default_rules() {
                if !rules.iter().any(|r| r.name == d.name) {
                    rules.push(assim_export::prometheus::ExporterRule {
                        disabled: true,
                        port: None,
                        programs: Vec::new(),
                        metrics_path: None,
                        ..d
                    });
                }
            }
            rules
        }),
        statistics: Some(StatisticsFile {
            graphite: o.statistics.graphite.clone(),
            graphite_prefix: Some(o.statistics.prefix.clone()),
            graphite_queue_max: Some(o.statistics.queue_max),
        }),
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
            init_logging();
            block_on_shutdown(Threads::Two, |s| crate::cma::run(opts, s))
        }
        Some(CmaCommand::Token(TokenCommand::Create { advertise, ttl, uses })) => {
            token_create(&opts, advertise, ttl, uses)
        }
        Some(CmaCommand::Import { from }) => crate::import::run(&opts, from),
    }
}

/// The `--advertise` list a token carries: at most [`assim_seal::token::MAX_ADDRS`], each once,
/// each one a nanoprobe can dial.
fn check_advertised(advertise: &[SocketAddr]) -> anyhow::Result<()> {
    let max = assim_seal::token::MAX_ADDRS;
    if advertise.len() > max {
        bail!(
            "{} --advertise addresses: a join token carries at most {max}; list the engines' \
             addresses only",
            advertise.len()
        );
    }
    for (i, a) in advertise.iter().enumerate() {
        if advertise[..i].contains(a) {
            bail!("--advertise {a} is given twice; give each CMA address once");
        }
        if a.ip().is_unspecified() || a.port() == 0 {
            bail!("--advertise {a} cannot be dialled by a nanoprobe: give a host address and port");
        }
    }
    Ok(())
}

fn token_create(
    opts: &crate::cma::CmaOptions,
    advertise: Vec<SocketAddr>,
    ttl: Duration,
    uses: u64,
) -> anyhow::Result<()> {
    use assim_wire::Timestamp;
    check_advertised(&advertise)?;
    // 0700 before anything is written into it (the identity, the database, the inbox).
    assim_seal::create_private_dir(&opts.data_dir)?;
    let identity = assim_seal::Identity::load_or_create(&opts.data_dir)?;
    let mut store = match &opts.store {
        crate::store::StoreUrl::Sqlite(p) => {
            TokenStore::Sqlite(assim_store_sqlite::Store::open(p)?)
        }
        // No async runtime here: the synchronous client may be used directly.
        crate::store::StoreUrl::Postgres(u) => TokenStore::Postgres(Box::new(
            assim_store_postgres::Store::open(u).map_err(|e| opts.store.unreachable(e))?,
        )),
    };
    let addrs = if advertise.is_empty() {
        let listen = match store.meta()? {
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
        secret_hash: assim_seal::secret_hash(&token.secret),
        created_at: now,
        expires_at: now + ttl,
        max_uses: uses,
        uses: 0,
    })?;
    eprintln!(
        "Join token for CMA {} (key {}), valid {}{}. Save it in a file only root can read \
         (chmod 600) and start a nanoprobe with:\n  nanoprobe --token-file FILE   \
         (or ASSIM_TOKEN=TOKEN in its environment; not --token, which other users can see)",
        identity.node_id(),
        identity.fingerprint(),
        format_duration(ttl),
        if uses > 0 { format!(" for {uses} enrollment(s)") } else { String::new() },
    );
    println!("{}", token.encode());
    Ok(())
}

/// Where `cma token create` writes.
enum TokenStore {
    Sqlite(assim_store_sqlite::Store),
    Postgres(Box<assim_store_postgres::Store>),
}

impl TokenStore {
    /// The CMA's last `--listen` address.
    fn meta(&self) -> anyhow::Result<Option<String>> {
        Ok(match self {
            TokenStore::Sqlite(s) => s.meta("listen")?,
            TokenStore::Postgres(s) => s.meta("listen")?,
        })
    }

    fn add_token(&mut self, t: &assim_store::TokenRecord) -> anyhow::Result<()> {
        match self {
            TokenStore::Sqlite(s) => s.add_token(t)?,
            TokenStore::Postgres(s) => s.add_token(t)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn issue_17_item_5_graphite_settings_are_checked_and_printed() {
        let o = CmaFlags {
            graphite: Some("carbon.example.com:2003".into()),
            graphite_queue_max: Some(500),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.statistics.graphite.as_deref(), Some("carbon.example.com:2003"));
        assert_eq!((o.statistics.prefix.as_str(), o.statistics.queue_max), ("assim", 500));
        let printed = cma_config_toml(&o);
        assert!(
            printed.contains("[statistics]\ngraphite = \"carbon.example.com:2003\""),
            "{printed}"
        );
        for bad in ["carbon", "carbon:", "carbon:0", ":2003", "a b:2003", "carbon:99999"] {
            let e = CmaFlags { graphite: Some(bad.into()), ..Default::default() }.resolve();
            assert!(e.unwrap_err().to_string().contains("HOST:PORT"), "{bad}");
        }
        for bad in ["", "a..b", "a;b", "a b"] {
            let e = CmaFlags { graphite_prefix: Some(bad.into()), ..Default::default() }.resolve();
            assert!(e.unwrap_err().to_string().contains("graphite_prefix"), "{bad:?}");
        }
        let zero = CmaFlags { graphite_queue_max: Some(0), ..Default::default() }.resolve();
        assert!(zero.unwrap_err().to_string().contains("graphite_queue_max"));
    }

    #[test]
    fn issue_14_the_store_url_and_engine_lease_are_checked_and_the_password_never_printed() {
        let o =
            CmaFlags { data_dir: Some("/srv/cma".into()), ..Default::default() }.resolve().unwrap();
        assert_eq!(o.store, crate::store::StoreUrl::Sqlite("/srv/cma/cma.sqlite".into()));
        assert_eq!(o.engine_lease, Duration::from_secs(10));
        let o = CmaFlags {
            store: Some("postgres://cma:s3cret@db.example.com/assim".into()),
            engine_lease: Some(Duration::from_secs(4)),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.store.kind(), "postgresql");
        let printed = cma_config_toml(&o);
        assert!(
            printed.contains("store = \"postgres://cma:(set)@db.example.com/assim\""),
            "{printed}"
        );
        assert!(printed.contains("engine_lease = \"4s\""), "{printed}");
        assert!(!printed.contains("s3cret") && !format!("{o:?}").contains("s3cret"));
        // From the config file too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cma.toml");
        std::fs::write(&file, "store = \"postgresql://cma@/assim?host=/run/postgresql\"\n")
            .unwrap();
        let o = CmaFlags { config: Some(file), ..Default::default() }.resolve().unwrap();
        assert_eq!(o.store.kind(), "postgresql");
        for (flags, want) in [
            (CmaFlags { store: Some("mysql://x/y".into()), ..Default::default() }, "postgres://"),
            (
                CmaFlags { engine_lease: Some(Duration::from_millis(200)), ..Default::default() },
                "engine lease must be between",
            ),
        ] {
            let e = format!("{:#}", flags.resolve().unwrap_err());
            assert!(e.contains(want) && !e.contains(":pw@"), "{e}");
        }
        // Graphite forwarding works on either store (its queue is in the engine's database).
        let o = CmaFlags {
            store: Some("postgres://cma:pw@db/assim".into()),
            graphite: Some("carbon:2003".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(o.statistics.graphite.as_deref(), Some("carbon:2003"));
    }

    #[test]
    fn ring_pins_come_from_the_file_or_the_flags_and_are_checked() {
        let mut file = std::collections::BTreeMap::new();
        file.insert("web1".to_string(), "rack7".to_string());
        let p = resolve_pins(Some(&file), &[]).unwrap();
        assert_eq!(p["web1"], "rack7");
        let p = resolve_pins(Some(&file), &["db1=rack9".into()]).unwrap();
        assert_eq!((p.len(), p["db1"].as_str()), (1, "rack9"), "flags replace the table");
        assert!(resolve_pins(None, &["db1".into()]).unwrap_err().to_string().contains("HOST=NAME"));
        assert!(resolve_pins(None, &["db1=a b".into()]).is_err());
        assert!(resolve_pins(None, &["=x".into()]).is_err());
    }

    #[test]
    fn issue_14_a_token_advertises_each_address_once_and_at_most_sixteen() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_advertised(&[a("192.0.2.10:1984"), a("192.0.2.11:1984")]).is_ok());
        let twice = check_advertised(&[a("192.0.2.10:1984"), a("192.0.2.10:1984")]);
        assert!(twice.unwrap_err().to_string().contains("given twice"));
        let any = check_advertised(&[a("0.0.0.0:1984")]);
        assert!(any.unwrap_err().to_string().contains("cannot be dialled"));
        let many: Vec<_> = (1..=17).map(|i| a(&format!("192.0.2.{i}:1984"))).collect();
        assert!(check_advertised(&many).unwrap_err().to_string().contains("at most 16"));
    }
}
