//! `assim export …`: the files other systems read, made from what the CMA discovered
//! (issue 17): known hosts, SSHFP, Nagios and Icinga 2 configuration, Prometheus targets, a
//! Graphviz picture. The CMA's `/api/v1/export/…` routes give the text or the inventory rows;
//! `assim-export` renders; this module writes the result to stdout or, with `-o FILE`,
//! atomically (a temporary file in the same directory, then a rename).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use crate::client::Client;

/// `assim export …`.
#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// An ssh_known_hosts file: every name and address of each host, one line per SSH host key.
    ///
    /// Hosts can fetch the same file from the CMA: GET /api/v1/export/known-hosts[?hashed=true].
    ///
    /// Examples:
    ///   assim export known-hosts -o /etc/ssh/ssh_known_hosts
    ///   assim export known-hosts --hashed > ~/.ssh/known_hosts2
    ///   ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/ssh/ssh_known_hosts web1
    #[command(verbatim_doc_comment)]
    KnownHosts {
        /// Hash the names as `ssh-keygen -H` does (`|1|salt|hmac`), one line per name and key.
        #[arg(long)]
        hashed: bool,
        /// Write to FILE (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// DNS SSHFP records (zone file lines, SHA-1 and SHA-256 of every host key), for
    /// `VerifyHostKeyDNS`.
    ///
    /// Example:
    ///   assim export sshfp >> /etc/bind/db.example.com
    #[command(verbatim_doc_comment)]
    Sshfp {
        /// Write to FILE (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Nagios objects (DIR/assim.cfg): every host with its address, `parents` from the LLDP
    /// wiring (the switches are hosts too), passive services named as the CMA's Nagios sink
    /// sends them, host groups by switch, subnet and OS.
    ///
    /// The file is replaced atomically, and only when it changed; then --reload-cmd runs. Feed
    /// it with the CMA's Nagios sink (docs/bus.md): it reports a switch that is down as DOWN
    /// (switch-NAME, the name written here) and the hosts behind it as UNREACHABLE.
    ///
    /// Example:
    ///   assim export nagios /etc/nagios4/conf.d --reload-cmd 'systemctl reload nagios4'
    #[command(verbatim_doc_comment)]
    Nagios(MonitoringArgs),
    /// Icinga 2 objects (DIR/assim.conf): hosts with address/address6, a Dependency on its
    /// switch for every host behind one, passive services, host groups by switch, subnet and OS.
    ///
    /// Replaced atomically, only when changed; then --reload-cmd runs.
    ///
    /// Example:
    ///   assim export icinga2 /etc/icinga2/conf.d --reload-cmd 'systemctl reload icinga2'
    #[command(verbatim_doc_comment)]
    Icinga2(MonitoringArgs),
    /// A Graphviz picture of switches, hosts (coloured by state), the switch port each NIC is
    /// wired to, and client → service dependencies; or only one host's neighbourhood.
    ///
    /// Examples:
    ///   assim export dot | dot -Tsvg > fleet.svg
    ///   assim export dot --host web1 --depth 2 -o web1.dot
    #[command(verbatim_doc_comment)]
    Dot {
        /// Only what lies within --depth steps of this host (name or node id).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Steps from --host over wires and dependencies (1–16).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
        depth: u8,
        /// Write to FILE (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Prometheus targets: the exporters discovery found listening on each host (node_exporter
    /// on 9100 and the others of the CMA's exporter rules), labelled host, node, exporter, os,
    /// switch and subnet — the JSON of Prometheus's file_sd_configs and http_sd_configs.
    ///
    /// Prometheus can read the same document from the CMA directly:
    /// GET /api/v1/export/prometheus-sd (see docs/automation.md for the scrape config).
    ///
    /// Example:
    ///   assim export prometheus-sd -o /etc/prometheus/file_sd/assim.json
    #[command(verbatim_doc_comment)]
    PrometheusSd {
        /// Write to FILE (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// The arguments of `assim export nagios|icinga2`.
#[derive(clap::Args, Debug)]
pub struct MonitoringArgs {
    /// The directory to write the file into (it must exist).
    pub dir: PathBuf,
    /// Run this (through `sh -c`) after the file changed, e.g. 'systemctl reload nagios4'.
    #[arg(long, value_name = "COMMAND")]
    pub reload_cmd: Option<String>,
    /// Contact group notified for the hosts and services (repeatable).
    #[arg(long, value_name = "NAME")]
    pub contact_group: Vec<String>,
}

/// Runs one `assim export` command.
pub fn run(client: &Client, cmd: ExportCommand) -> anyhow::Result<()> {
    match cmd {
        ExportCommand::KnownHosts { hashed, output } => {
            let path = if hashed {
                "/api/v1/export/known-hosts?hashed=true"
            } else {
                "/api/v1/export/known-hosts"
            };
            emit(&client.get(path)?.into_string()?, output.as_deref())
        }
        ExportCommand::Sshfp { output } => {
            emit(&client.get("/api/v1/export/sshfp")?.into_string()?, output.as_deref())
        }
        ExportCommand::PrometheusSd { output } => {
            let mut text = client.get("/api/v1/export/prometheus-sd")?.into_string()?;
            text.push('\n');
            emit(&text, output.as_deref())
        }
        ExportCommand::Nagios(a) => {
            monitoring(client, &a, "assim.cfg", assim_export::monitoring::nagios)
        }
        ExportCommand::Icinga2(a) => {
            monitoring(client, &a, "assim.conf", assim_export::monitoring::icinga2)
        }
        ExportCommand::Dot { host, depth, output } => {
            let path = match &host {
                Some(h) => format!(
                    "/api/v1/export/dot?host={}&depth={depth}",
                    crate::client::encode_component(h)
                ),
                None => "/api/v1/export/dot".into(),
            };
            emit(&client.get(&path)?.into_string()?, output.as_deref())
        }
    }
}

/// `assim export nagios|icinga2`: render, replace the file if it changed, then reload.
fn monitoring(
    client: &Client,
    a: &MonitoringArgs,
    file: &str,
    render: fn(&[assim_api::InventoryHost], &assim_export::monitoring::Options) -> String,
) -> anyhow::Result<()> {
    anyhow::ensure!(a.dir.is_dir(), "{} is not a directory", a.dir.display());
    let hosts: Vec<assim_api::InventoryHost> =
        client.get_json("/api/v1/export/inventory", "the inventory")?;
    let opts = assim_export::monitoring::Options { contact_groups: a.contact_group.clone() };
    let text = render(&hosts, &opts);
    let path = a.dir.join(file);
    if std::fs::read(&path).ok().as_deref() == Some(text.as_bytes()) {
        eprintln!("{}: unchanged ({} hosts); nothing reloaded", path.display(), hosts.len());
        return Ok(());
    }
    write_atomically(&path, text.as_bytes())?;
    eprintln!("{}: written ({} hosts)", path.display(), hosts.len());
    if let Some(cmd) = &a.reload_cmd {
        let status = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .with_context(|| format!("cannot run the reload command {cmd:?}"))?;
        anyhow::ensure!(status.success(), "the reload command {cmd:?} failed: {status}");
        eprintln!("reloaded: {cmd}");
    }
    Ok(())
}

fn emit(text: &str, output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => write_atomically(path, text.as_bytes()),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees the old file or the new one, never a part. The file is readable by everyone
/// (0644), as `ssh_known_hosts` and monitoring configuration are.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("the output path has no file name")?;
    let tmp = dir.join(format!(".{}.assim-tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
