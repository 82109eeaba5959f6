//! Configuration of `nanoprobe`: every key comes from a flag, else its environment variable,
//! else the TOML file given with `--config`, else the built-in default. `--print-config` prints
//! the result as TOML, ready to be saved as a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use assim_util::daemon::{Threads, block_on_shutdown, init_logging, read_config_file};
use assim_util::duration::{format_duration, parse_duration};
use clap::Args;
use serde::{Deserialize, Serialize};

/// `nanoprobe` flags.
#[derive(Args, Debug, Clone, Default)]
pub struct NanoprobeFlags {
    /// TOML config file; flags and environment variables override its keys.
    #[arg(long, env = "ASSIM_NANOPROBE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The CMA's UDP address. Repeat it (or separate addresses with commas, as in ASSIM_CMA)
    /// for several CMA engines on one database, at most 16: the nanoprobe sends to the first
    /// and moves to the next when the CMA stays silent there (3 s at first), round robin; it
    /// also follows the CMA to wherever its answers come from [default: the addresses in the
    /// join token or pin file].
    #[arg(long, env = "ASSIM_CMA", value_delimiter = ',')]
    pub cma: Vec<SocketAddr>,
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
    /// Prefer `--token-file` or `ASSIM_TOKEN`: other local users can read a command line.
    #[arg(
        long,
        env = "ASSIM_TOKEN",
        hide_env_values = true,
        conflicts_with = "trust_on_first_use"
    )]
    pub token: Option<String>,
    /// File holding the join token (first line; it must not be readable by group or others).
    #[arg(long, env = "ASSIM_TOKEN_FILE", conflicts_with_all = ["token", "trust_on_first_use"])]
    pub token_file: Option<PathBuf>,
    /// Trust whatever key the CMA presents on first contact and pin it (labs and demos only).
    #[arg(long, env = "ASSIM_TRUST_ON_FIRST_USE")]
    pub trust_on_first_use: bool,
    /// Host name to report [default: the kernel's host name].
    #[arg(long, env = "ASSIM_HOSTNAME")]
    pub hostname: Option<String>,
    /// Size limit of the spool (records waiting for the CMA's acknowledgement), in MiB
    /// [default: 64]. When full, reports, peer status and check and discovery results wait in
    /// memory, the latest per subject; local events are refused (the submitter is told).
    #[arg(long, env = "ASSIM_SPOOL_MAX_MB")]
    pub spool_max_mb: Option<u64>,
    /// Directory of external discovery agents: every executable file in it is a collector
    /// named `agent.<file>` that must print one JSON value (docs/discovery.md)
    /// [default: DATA_DIR/discovery.d].
    #[arg(long, env = "ASSIM_DISCOVERY_AGENTS")]
    pub discovery_agents: Option<PathBuf>,
    /// The root the collectors that take one (`raid`, `block_devices`) read `proc/`, `sys/`
    /// and `etc/` under, instead of `/` (for tests against a fake tree) [default: /].
    #[arg(long, env = "ASSIM_DISCOVERY_ROOT")]
    pub discovery_root: Option<PathBuf>,
    /// Time limit of one discovery agent run; then its whole process group is killed and the
    /// run reported as an error [default: 30s].
    #[arg(long, env = "ASSIM_AGENT_TIMEOUT", value_parser = parse_duration)]
    pub agent_timeout: Option<Duration>,
    /// Output limit of one discovery agent run, in KiB; more is reported as an error
    /// [default: 1024].
    #[arg(long, env = "ASSIM_AGENT_MAX_OUTPUT_KB")]
    pub agent_max_output_kb: Option<u64>,
    /// A directory where the plugins of checks declared by local programs may live
    /// (repeatable) [default: /usr/lib/nagios/plugins, /usr/lib64/nagios/plugins,
    /// /usr/local/lib/nagios/plugins].
    #[arg(long = "check-plugin-dir", env = "ASSIM_CHECK_PLUGIN_DIRS", value_delimiter = ':')]
    pub check_plugin_dirs: Vec<PathBuf>,
    /// Accept statistics from local programs (`assim stat put`, `put …` on events.sock) and
    /// send them to the CMA, one batch per interval [default: off: nothing is sent].
    #[arg(long, env = "ASSIM_STATISTICS")]
    pub statistics: bool,
    /// The statistics batch interval [default: 60s].
    #[arg(long, env = "ASSIM_STATISTICS_INTERVAL", value_parser = parse_duration)]
    pub statistics_interval: Option<Duration>,
    /// Also send each check's performance data as gauges, named `check.<check>.<label>` with
    /// the tag `unit=<unit>` (`time=0.25s` of check `http:80` → `check.http_80.time`,
    /// unit=s); `U` values and items that do not parse are left out, at most 32 items per
    /// result. Needs --statistics [default: off].
    #[arg(long, env = "ASSIM_STATISTICS_PERFDATA")]
    pub statistics_perfdata: bool,
    /// Also send host figures once per interval: `host.load.{1,5,15}`,
    /// `host.memory.{total,available}_bytes` (/proc/meminfo) and
    /// `host.fs.root.{size,free,available}_bytes` (the root filesystem). Needs --statistics
    /// [default: off].
    #[arg(long, env = "ASSIM_STATISTICS_HOST")]
    pub statistics_host: bool,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The `nanoprobe` config file.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NanoprobeFile {
    /// One address (`cma = "192.0.2.10:1984"`) or a list (`cma = ["…", "…"]`).
    pub cma: Option<CmaSetting>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub trust_on_first_use: Option<bool>,
    pub hostname: Option<String>,
    pub spool_max_mb: Option<u64>,
    pub discovery_agents: Option<PathBuf>,
    pub discovery_root: Option<PathBuf>,
    pub agent_timeout: Option<String>,
    pub agent_max_output_kb: Option<u64>,
    pub check_plugin_dirs: Option<Vec<PathBuf>>,
    pub statistics: Option<bool>,
    pub statistics_interval: Option<String>,
    pub statistics_perfdata: Option<bool>,
    pub statistics_host: Option<bool>,
}

/// The config key `cma`: one address or a list of them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum CmaSetting {
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

impl CmaSetting {
    fn into_vec(self) -> Vec<SocketAddr> {
        match self {
            CmaSetting::One(a) => vec![a],
            CmaSetting::Many(v) => v,
        }
    }

    /// One address as a string, several as a list (as a config file would say it).
    fn from_slice(addrs: &[SocketAddr]) -> Option<CmaSetting> {
        match addrs {
            [] => None,
            [a] => Some(CmaSetting::One(*a)),
            many => Some(CmaSetting::Many(many.to_vec())),
        }
    }
}

impl NanoprobeFlags {
    /// Flags > environment > file > defaults.
    pub fn resolve(&self) -> anyhow::Result<crate::nanoprobe::NanoprobeOptions> {
        use crate::nanoprobe::Enrollment;
        let file: NanoprobeFile = read_config_file(self.config.as_deref())?;
        let token = match &self.token_file {
            Some(path) => Some(read_token_file(path)?),
            None => self.token.clone().or(file.token),
        };
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
        let mut discovery = crate::discovery::DiscoveryOptions::for_data_dir(&data_dir);
        if let Some(dir) = self.discovery_agents.clone().or(file.discovery_agents) {
            discovery.agents_dir = dir;
        }
        if let Some(root) = self.discovery_root.clone().or(file.discovery_root) {
            if !root.is_dir() {
                bail!("discovery_root {} is not a directory", root.display());
            }
            discovery.root = root;
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
        let statistics = self.statistics || file.statistics.unwrap_or(false);
        let statistics_perfdata =
            self.statistics_perfdata || file.statistics_perfdata.unwrap_or(false);
        let statistics_host = self.statistics_host || file.statistics_host.unwrap_or(false);
        for (on, key) in
            [(statistics_perfdata, "statistics_perfdata"), (statistics_host, "statistics_host")]
        {
            if on && !statistics {
                bail!(
                    "{key} is on but statistics are off: turn statistics on too \
                     (statistics = true, or --statistics), or turn {key} off"
                );
            }
        }
        let (cma, from) = if self.cma.is_empty() {
            (file.cma.map(CmaSetting::into_vec).unwrap_or_default(), "the config key cma")
        } else {
            (self.cma.clone(), "--cma (or ASSIM_CMA)")
        };
        if !cma.is_empty() {
            assim_probe_shell::cma_addrs::validate(&cma)
                .map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
        }
        Ok(crate::nanoprobe::NanoprobeOptions {
            cma,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "0.0.0.0:1986".parse().expect("valid")),
            advertise: self.advertise.or(file.advertise),
            data_dir,
            discovery,
            enrollment,
            hostname: self.hostname.clone().or(file.hostname),
            statistics,
            statistics_perfdata,
            statistics_host,
            statistics_interval: match (self.statistics_interval, &file.statistics_interval) {
                (Some(d), _) => d,
                (None, Some(s)) => parse_duration(s)
                    .map_err(|e| anyhow::anyhow!("config key statistics_interval: {e}"))?,
                (None, None) => assim_probe_shell::stats::DEFAULT_INTERVAL,
            },
            check_plugin_dirs: if self.check_plugin_dirs.is_empty() {
                file.check_plugin_dirs.unwrap_or_default()
            } else {
                self.check_plugin_dirs.clone()
            },
            spool_max_bytes: match self.spool_max_mb.or(file.spool_max_mb) {
                Some(0) => bail!("spool_max_mb must be at least 1"),
                Some(mb) => mb * 1024 * 1024,
                None => crate::nanoprobe::DEFAULT_SPOOL_MAX_BYTES,
            },
        })
    }
}

/// Renders resolved nanoprobe options as a config file.
pub fn nanoprobe_config_toml(o: &crate::nanoprobe::NanoprobeOptions) -> String {
    use crate::nanoprobe::Enrollment;
    let f = NanoprobeFile {
        cma: CmaSetting::from_slice(&o.cma),
        listen: Some(o.listen),
        advertise: o.advertise,
        data_dir: Some(o.data_dir.clone()),
        token: matches!(o.enrollment, Enrollment::Token(_)).then(|| "(set)".to_string()),
        trust_on_first_use: Some(matches!(o.enrollment, Enrollment::TrustOnFirstUse)),
        hostname: o.hostname.clone(),
        spool_max_mb: Some(o.spool_max_bytes / (1024 * 1024)),
        discovery_agents: Some(o.discovery.agents_dir.clone()),
        discovery_root: Some(o.discovery.root.clone()),
        agent_timeout: Some(format_duration(o.discovery.agent_limits.timeout)),
        agent_max_output_kb: Some(o.discovery.agent_limits.max_output as u64 / 1024),
        check_plugin_dirs: Some(crate::local_checks::plugin_dirs(&o.check_plugin_dirs)),
        statistics: Some(o.statistics),
        statistics_interval: Some(format_duration(o.statistics_interval)),
        statistics_perfdata: Some(o.statistics_perfdata),
        statistics_host: Some(o.statistics_host),
    };
    toml::to_string(&f).expect("config serializes")
}

/// Runs `nanoprobe`.
pub fn run_nanoprobe(flags: NanoprobeFlags) -> anyhow::Result<()> {
    let opts = flags.resolve()?;
    if flags.print_config {
        print!("{}", nanoprobe_config_toml(&opts));
        return Ok(());
    }
    crate::memory::tune_allocator();
    init_logging();
    block_on_shutdown(Threads::One, |s| crate::nanoprobe::run(opts, s))
}

/// Reads a join token from `path`: its first line, from a file only its owner can read.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the join token file {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the join token file {} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the join token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        bail!("the join token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod token_file_tests {
    use super::read_token_file;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn item_4_the_join_token_comes_from_a_private_file() {
        let dir = std::env::temp_dir().join(format!("assim-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "assim1.abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "assim1.abc");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_token_file(&path).unwrap_err().to_string().contains("empty"));
        assert!(read_token_file(&dir.join("none")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod statistics_tests {
    use super::NanoprobeFlags;

    #[test]
    fn perfdata_and_host_figures_need_statistics_on() {
        for flags in [
            NanoprobeFlags { statistics_perfdata: true, ..Default::default() },
            NanoprobeFlags { statistics_host: true, ..Default::default() },
        ] {
            let e = flags.resolve().unwrap_err().to_string();
            assert!(e.contains("statistics are off") && e.contains("--statistics"), "{e}");
        }
        let o = NanoprobeFlags {
            statistics: true,
            statistics_perfdata: true,
            statistics_host: true,
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(o.statistics && o.statistics_perfdata && o.statistics_host);
        let text = super::nanoprobe_config_toml(&o);
        assert!(
            text.contains("statistics_perfdata = true") && text.contains("statistics_host = true"),
            "{text}"
        );
        let off = NanoprobeFlags::default().resolve().unwrap();
        assert!(!off.statistics_perfdata && !off.statistics_host);
    }
}

#[cfg(test)]
mod cma_tests {
    use super::{NanoprobeFlags, nanoprobe_config_toml};
    use std::net::SocketAddr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn with_file(text: &str) -> anyhow::Result<crate::nanoprobe::NanoprobeOptions> {
        let dir = std::env::temp_dir().join(format!(
            "assim-np-addrs-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nanoprobe.toml");
        std::fs::write(&path, text).unwrap();
        let r = NanoprobeFlags { config: Some(path), ..Default::default() }.resolve();
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    /// Issue 14: `cma` in the config file is one address or a list; the flag is repeatable
    /// and wins; `--print-config` says it back the same way.
    #[test]
    fn the_cma_is_one_address_or_a_list() {
        let one = with_file("cma = \"192.0.2.10:1984\"\n").unwrap();
        assert_eq!(one.cma, [a("192.0.2.10:1984")]);
        assert!(nanoprobe_config_toml(&one).contains("cma = \"192.0.2.10:1984\""));
        let two = with_file("cma = [\"192.0.2.10:1984\", \"[2001:db8::2]:1984\"]\n").unwrap();
        assert_eq!(two.cma, [a("192.0.2.10:1984"), a("[2001:db8::2]:1984")]);
        let text = nanoprobe_config_toml(&two);
        assert!(text.contains("cma = [\"192.0.2.10:1984\", \"[2001:db8::2]:1984\"]"), "{text}");
        let none = NanoprobeFlags::default().resolve().unwrap();
        assert!(none.cma.is_empty(), "from the token or pin file");
        assert!(!nanoprobe_config_toml(&none).contains("cma ="));
        let flags = NanoprobeFlags {
            cma: vec![a("192.0.2.1:1984"), a("192.0.2.2:1984")],
            ..Default::default()
        };
        assert_eq!(flags.resolve().unwrap().cma.len(), 2);
    }

    #[test]
    fn a_cma_list_that_is_not_valid_is_refused_with_the_fix() {
        let dup = NanoprobeFlags {
            cma: vec![a("192.0.2.1:1984"), a("192.0.2.1:1984")],
            ..Default::default()
        };
        let e = dup.resolve().unwrap_err().to_string();
        assert!(e.contains("--cma") && e.contains("192.0.2.1:1984 is given twice"), "{e}");
        let many = NanoprobeFlags {
            cma: (1..=17).map(|i| a(&format!("192.0.2.{i}:1984"))).collect(),
            ..Default::default()
        };
        let e = many.resolve().unwrap_err().to_string();
        assert!(e.contains("17 CMA addresses") && e.contains("at most 16"), "{e}");
        let e = with_file("cma = [\"0.0.0.0:1984\"]\n").unwrap_err().to_string();
        assert!(e.contains("config key cma") && e.contains("0.0.0.0:1984"), "{e}");
        let e = with_file("cma = [\"192.0.2.1\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("cma = [\"192.0.2.1\"]"), "{e:#}");
    }

    /// The flag takes a comma-separated list, as ASSIM_CMA does (clap splits the variable with
    /// the same delimiter), and repeats.
    #[test]
    fn the_flag_repeats_and_takes_a_comma_separated_list() {
        use clap::Parser as _;
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            flags: NanoprobeFlags,
        }
        let cli =
            Cli::try_parse_from(["nanoprobe", "--cma", "192.0.2.1:1984,192.0.2.2:1984"]).unwrap();
        assert_eq!(cli.flags.cma, [a("192.0.2.1:1984"), a("192.0.2.2:1984")]);
        let cli = Cli::try_parse_from([
            "nanoprobe",
            "--cma",
            "192.0.2.1:1984",
            "--cma",
            "[2001:db8::1]:1984",
        ])
        .unwrap();
        assert_eq!(cli.flags.cma, [a("192.0.2.1:1984"), a("[2001:db8::1]:1984")]);
    }
}
