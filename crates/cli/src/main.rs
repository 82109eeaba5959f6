//! `assim`: the operator's command line.

use std::time::Duration;

use anyhow::Context as _;
use assim::client::{Client, format_event, print_status};
use assim_cma_daemon::settings::{CmaCommand, CmaFlags};
use assim_nanoprobe::settings::NanoprobeFlags;
use clap::{Parser, Subcommand};

/// assim: hyperscale host and service monitoring.
///
/// Examples:
///   assim demo                  start a CMA and 8 nanoprobes locally and show failure detection
///   assim demo --cluster        the same on PostgreSQL and NATS JetStream with two CMA engines: a takeover
///   assim status                the table of nodes from a running CMA
///   assim events --follow       stream events as they happen
///   assim events --filter 'severity>=warning and cluster=Compute1' --follow
///   assim event send --tag cluster=Compute1 --severity critical "RAID STATUS CHANGE"
///   assim app heartbeat backup --ttl 30s   a program's heartbeat; silence raises service.critical
///   assim subscribe ops --filter 'type:host.*'   the host events since the last run
///   assim host web1 deps        what web1 depends on (topology queries: hosts, host, find,
///                               ports, rings, switches, switch, deps, unmonitored, packages,
///                               unknown-ips, subnets)
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// The CMA's HTTP API.
    #[arg(long, env = "ASSIM_API", default_value = "http://127.0.0.1:1985")]
    api: String,
    /// Bearer token for the API: the CMA's --api-token. Without it, the token in
    /// --api-token-file is sent.
    #[arg(long, env = "ASSIM_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// The CMA's operator token file (DATA_DIR/api.token on the CMA host, mode 0600): requests
    /// that change state (check add/remove/run, subscriptions) need it, on loopback too.
    #[arg(long, env = "ASSIM_API_TOKEN_FILE", default_value = "/var/lib/assim/cma/api.token")]
    api_token_file: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Monitored services: every check with its HARD state, since when, and its output.
    ///
    /// Examples: assim services --state critical; assim services --host web1 --json
    Services {
        /// Only this host (name or node id).
        #[arg(long)]
        host: Option<String>,
        /// Only this state: ok, warning, critical, unknown or pending.
        #[arg(long)]
        state: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Service checks: run one now, set checks by hand (add, remove), list each host's checks.
    Check {
        #[command(subcommand)]
        command: assim::checks_cli::CheckCommand,
    },
    /// Show every node: state, since when, ring neighbours, version.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List events (host.*, path.suspect, ring.changed, service.*, local.event), optionally filtered.
    Events {
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many (without --follow).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Keep waiting for new events.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only events matching this filter, e.g. 'type:host.* and severity>=warning',
        /// 'cluster=Compute1', 'fqdn=*.example.com', 'has:rack', '/RAID STATUS CHANGE/'
        /// (and, or, not, parentheses; see docs/bus.md).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Submit an event from this host through the local nanoprobe (spooled until the CMA has it).
    #[command(subcommand)]
    Event(EventCommand),
    /// Heartbeats from programs on this host, through the local nanoprobe: a program that
    /// stops beating raises `service.critical` for `app:NAME`; nothing is sent while it beats.
    ///
    /// Examples: assim app heartbeat backup --ttl 30s; assim app done backup; assim app list
    App {
        #[command(subcommand)]
        command: assim::app_cli::AppCommand,
    },
    /// Statistics from programs on this host, through the local nanoprobe (opt-in: the
    /// nanoprobe must run with --statistics).
    ///
    /// Example: assim stat put backup.bytes 1234567 --counter --tag role=db
    Stat {
        #[command(subcommand)]
        command: assim::app_cli::StatCommand,
    },
    /// Read a durable subscription: the events since you last ran it (the position lives in
    /// the CMA and moves only after the events were printed).
    Subscribe(assim::bus::SubscribeArgs),
    /// List the durable subscriptions and their positions.
    Subscriptions {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a host's discovery collectors found (interfaces, sockets, OS, packages, …).
    Discovery {
        /// Host name or node id.
        host: String,
        /// Only this collector, printed in full (e.g. interfaces, sockets, os, packages).
        collector: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a CMA and nanoprobes on loopback, crash one, stop one, restart one, and narrate.
    Demo {
        /// How many nanoprobes.
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Keep the working directory (data and logs) afterwards.
        #[arg(long)]
        keep: bool,
        /// After the narration, keep the cluster running and serve its web page until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// The cluster mode instead: PostgreSQL, three NATS servers (the JetStream inbox), two
        /// CMA engines; the active one is killed while reports flow, then a NATS server (needs
        /// postgresql-15 and nats-server, which scripts/install-deps installs).
        #[arg(long)]
        cluster: bool,
    },
    /// Push spooled reports from simulated senders at a CMA (durability tests, ingest benchmark).
    /// Each sender enrolls by trust on first use, so the CMA needs --open-enrollment.
    #[command(hide = true)]
    Loadgen {
        /// The CMA's UDP addresses, comma-separated: with packet readers (cma --role reader),
        /// sender i starts at the (i mod n)-th and fails over to the others.
        #[arg(long, value_delimiter = ',', required = true)]
        cma: Vec<std::net::SocketAddr>,
        /// How many senders (each its own identity, socket and spool).
        #[arg(long, default_value_t = 50)]
        senders: usize,
        /// Reports per sender.
        #[arg(long, default_value_t = 2000)]
        reports: u64,
        /// Unacknowledged reports per sender at most.
        #[arg(long, default_value_t = 1024)]
        window: u64,
        /// Reports spooled per sender per turn (one fsync each).
        #[arg(long, default_value_t = 64)]
        batch: u64,
        /// Where the senders keep identities and spools (reuse it to resume).
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Flood a CMA with first contacts from random identities and random 127.0.0.0/8 sources
    /// (valid mac1: what an attacker who fetched the CMA's key can send). Benchmark use only.
    #[command(hide = true)]
    Flood {
        /// The CMA's UDP address.
        #[arg(long)]
        cma: std::net::SocketAddr,
        /// Datagrams per second.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// How long (e.g. 30s).
        #[arg(long, default_value = "30s", value_parser = assim_util::duration::parse_duration)]
        duration: std::time::Duration,
        /// Random bytes behind a valid header start instead of valid-mac1 first contacts.
        #[arg(long)]
        garbage: bool,
    },
    /// Run the CMA (same as the `cma` binary).
    Cma {
        #[command(flatten)]
        flags: CmaFlags,
        #[command(subcommand)]
        command: Option<CmaCommand>,
    },
    /// Run a nanoprobe (same as the `nanoprobe` binary).
    Nanoprobe {
        #[command(flatten)]
        flags: NanoprobeFlags,
    },
    #[command(flatten)]
    Query(assim::query::QueryCommand),
    /// Files for other systems from what the CMA discovered: ssh_known_hosts, SSHFP records,
    /// Nagios and Icinga 2 configuration.
    Export {
        #[command(subcommand)]
        what: assim::export_cli::ExportCommand,
    },
    /// Simulate N nanoprobes and a CMA in virtual time; check failure detection.
    Sim(assim_sim::SimArgs),
    /// Decode the LLDP and CDP frames of a pcap file, or listen live with --listen, one JSON
    /// object per frame.
    DecodeL2 {
        /// A pcap or pcapng capture with Ethernet frames.
        #[arg(required_unless_present = "listen", conflicts_with = "listen")]
        file: Option<std::path::PathBuf>,
        /// Listen live on this interface ("all": every up, non-loopback Ethernet interface),
        /// as the nanoprobe does. Needs CAP_NET_RAW (root). Sends nothing.
        #[arg(long, value_name = "IFACE")]
        listen: Option<String>,
        /// With --listen: stop after this many LLDP/CDP frames.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// With --listen: give up after this long (exit 1 if nothing arrived).
        #[arg(long, default_value = "60s", value_parser = assim_util::duration::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// `assim event …`
#[derive(Subcommand, Debug)]
enum EventCommand {
    /// Send one event, e.g.
    /// `assim event send --tag cluster=Compute1 --severity critical "RAID STATUS CHANGE for VolumeID 2"`.
    Send(assim::bus::SendArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("assim: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.api, cli.api_token.clone()).with_token_file(&cli.api_token_file);
    match cli.command {
        Command::Status { json } => {
            let s = client.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
        }
        Command::Events { since, limit, follow, json, filter: Some(filter) } => {
            assim::bus::events_filtered(&client, &filter, since, limit, follow, json)?
        }
        Command::Event(EventCommand::Send(a)) => assim::bus::send(&a)?,
        Command::App { command } => assim::app_cli::run(command)?,
        Command::Stat { command } => assim::app_cli::run_stat(command)?,
        Command::Subscribe(a) => assim::bus::subscribe(&client, &a)?,
        Command::Subscriptions { json } => assim::bus::list(&client, json)?,
        Command::Events { since, limit, follow, json, filter: None } => {
            let mut cursor = since;
            loop {
                let batch =
                    client.events(cursor, limit, follow.then(|| Duration::from_secs(30)))?;
                for e in &batch {
                    cursor = e.id;
                    if json {
                        println!("{}", serde_json::to_string(e).context("event to JSON")?);
                    } else {
                        println!("{}", format_event(e));
                    }
                }
                if !follow {
                    break;
                }
            }
        }
        Command::Services { host, state, json } => {
            assim::checks_cli::services(&client, host.as_deref(), state.as_deref(), json)?
        }
        Command::Check { command } => {
            let code = assim::checks_cli::run_check(&client, command)?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Discovery { host, collector, json } => {
            let list = client.discovery(&host)?;
            match collector {
                Some(name) => {
                    let Some(d) = list.iter().find(|d| d.name == name) else {
                        let known: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
                        anyhow::bail!(
                            "{host} has no {name:?} result (it has: {})",
                            known.join(", ")
                        );
                    };
                    println!("{}", serde_json::to_string_pretty(&d.payload)?);
                }
                None if json => println!("{}", serde_json::to_string_pretty(&list)?),
                None => {
                    let mut rows = vec![[
                        "COLLECTOR".to_string(),
                        "UPDATED (UTC)".into(),
                        "BYTES".into(),
                        "HASH".into(),
                    ]];
                    for d in &list {
                        rows.push([
                            d.name.clone(),
                            assim::client::format_time(d.updated_at),
                            d.payload.to_string().len().to_string(),
                            d.hash.chars().take(16).collect(),
                        ]);
                    }
                    assim::client::print_table(&rows);
                }
            }
        }
        Command::Demo { nodes, keep, serve, cluster } => {
            assim::demo::run(assim::demo::DemoOptions { nodes, keep, serve, cluster })?
        }
        Command::Loadgen { cma, senders, reports, window, batch, data_dir } => {
            let opts =
                assim::loadgen::LoadOptions { cma, senders, reports, window, batch, data_dir };
            let r = assim_util::daemon::block_on(assim::loadgen::run(opts))?;
            let secs = r.elapsed.as_secs_f64();
            println!(
                "{} senders: {} reports spooled, {} acknowledged in {secs:.2} s = {:.0} reports/s; \
                 ack latency p50 {} us, p99 {} us; {} resent",
                r.senders,
                r.spooled,
                r.acked,
                r.acked as f64 / secs.max(1e-9),
                r.percentile(0.5),
                r.percentile(0.99),
                r.resent
            );
        }
        Command::Flood { cma, rate, duration, garbage } => {
            let opts = assim::flood::FloodOptions {
                rate,
                garbage,
                ..assim::flood::FloodOptions::new(cma, duration)
            };
            let r = assim::flood::run(&opts)?;
            println!(
                "flood: {} datagrams of {} bytes in {:.1} s = {:.0}/s from {} source addresses; {} send errors",
                r.sent,
                r.datagram_len,
                r.elapsed.as_secs_f64(),
                r.rate(),
                r.sources,
                r.send_errors
            );
        }
        Command::Cma { flags, command } => assim_cma_daemon::settings::run_cma(flags, command)?,
        Command::Nanoprobe { flags } => assim_nanoprobe::settings::run_nanoprobe(flags)?,
        Command::Query(q) => assim::query::run(&client, q)?,
        Command::Export { what } => assim::export_cli::run(&client, what)?,
        Command::Sim(args) => assim_sim::run_cli(args)?,
        Command::DecodeL2 { listen: Some(iface), count, timeout, .. } => {
            let iface = (iface != "all").then_some(iface);
            assim::listen_l2::listen(iface, count, timeout)?;
        }
        Command::DecodeL2 { file: None, .. } => {
            anyhow::bail!("give a capture FILE or --listen IFACE")
        }
        Command::DecodeL2 { file: Some(file), .. } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let lines = assim_l2::decode_pcap_to_json_lines(&bytes)
                .with_context(|| format!("{} is not a usable capture file", file.display()))?;
            for line in lines {
                println!("{line}");
            }
        }
    }
    Ok(())
}
