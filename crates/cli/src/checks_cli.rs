//! `assim services` and `assim check run|add|remove|list`.

use anyhow::Context as _;
use assim_api::{CheckListEntry, ServiceView, StoredCheck};
use assim_util::duration::parse_whole_seconds;
use clap::Subcommand;

use crate::client::{Client, encode_component, format_time, print_table};

/// `assim check …`.
#[derive(Subcommand, Debug)]
pub enum CheckCommand {
    /// Ask HOST's nanoprobe to run CHECK now and print the result (the check's schedule and
    /// state are unchanged). Exits 0 for OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, like a plugin.
    ///
    /// Example: assim check run web1 http:80
    Run {
        /// Host name or node id (see `assim status`).
        host: String,
        /// Check name (see `assim services --host HOST`).
        check: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a check on HOST by hand (stored by the CMA; survives restarts). The check is sent to
    /// the host's nanoprobe at once. A hand-set check replaces a same-named check from the
    /// rules; adding a name again replaces the earlier hand-set check.
    ///
    /// The command comes after `--`; what it means depends on --kind:
    ///   nagios   plugin and arguments (a name without / is looked up in the plugin directory)
    ///   ocf      PROVIDER AGENT (parameters with --param name=value)
    ///   lsb      init script name or path
    ///   systemd  unit name
    ///   tcp      HOST PORT (a built-in connect check)
    ///   process  a pattern matched against process names, paths and command lines
    ///
    /// Examples:
    ///   assim check add web1 https --interval 30s -- check_http -H localhost -S
    ///   assim check add db1 pg-port --kind tcp -- 127.0.0.1 5432
    ///   assim check add web1 nginx --kind systemd -- nginx.service
    #[command(verbatim_doc_comment)]
    Add {
        /// Host name or node id (see `assim status`).
        host: String,
        /// Check name, unique on the host (it appears in events as the `service` tag).
        name: String,
        /// nagios, ocf, lsb, systemd, tcp or process.
        #[arg(long, default_value = "nagios")]
        kind: String,
        /// Time between runs while the state is steady: 30, 30s, 5m, 1h [default: 60s].
        #[arg(long, value_parser = parse_whole_seconds)]
        interval: Option<u64>,
        /// Time between runs while re-checking a problem [default: 15s].
        #[arg(long, value_parser = parse_whole_seconds)]
        retry_interval: Option<u64>,
        /// Consecutive failures before a problem counts (and raises an event) [default: 3].
        #[arg(long)]
        attempts: Option<u32>,
        /// How long one run may take before it is killed [default: 10s, at most the interval].
        #[arg(long, value_parser = parse_whole_seconds)]
        timeout: Option<u64>,
        /// A parameter NAME=VALUE (OCF agents get it as OCF_RESKEY_NAME); repeatable.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Print the stored check as JSON.
        #[arg(long)]
        json: bool,
        /// What to run (see above), after `--`.
        #[arg(last = true, required = true, value_name = "ARGV")]
        argv: Vec<String>,
    },
    /// Remove a check set by hand with `check add`. (Checks from rules and rules files are
    /// changed there: see docs/checks.md.)
    ///
    /// Example: assim check remove web1 https
    Remove {
        /// Host name or node id.
        host: String,
        /// Check name (see `assim check list --host HOST`).
        name: String,
    },
    /// Show each host's desired checks and where each came from: `rule:NAME` (a discovered
    /// service matched a rule), `host` (a host-level check), `config` (a `[[check]]` in a rules
    /// file) or `manual` (`assim check add`).
    ///
    /// Example: assim check list --host web1
    List {
        /// Only this host (name or node id).
        #[arg(long)]
        host: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Runs `assim check …`; returns the process exit code.
pub fn run_check(client: &Client, cmd: CheckCommand) -> anyhow::Result<i32> {
    match cmd {
        CheckCommand::Run { host, check, json } => {
            let body = serde_json::json!({ "host": host, "check": check });
            let r: assim_api::CheckRun =
                client.post_json("/api/v1/checks/run", &body, "the check result")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{} {} on {}: {}", r.state.to_uppercase(), r.check, r.host, r.output);
                if !r.long_output.is_empty() {
                    println!("{}", r.long_output);
                }
                if !r.perfdata.is_empty() {
                    println!("perfdata: {}", r.perfdata);
                }
                println!(
                    "took {} ms, exit code {}",
                    r.duration_ms,
                    r.exit_code.map_or("-".into(), |c| c.to_string())
                );
            }
            Ok(match r.state.as_str() {
                "ok" => 0,
                "warning" => 1,
                "critical" => 2,
                _ => 3,
            })
        }
        CheckCommand::Add {
            host,
            name,
            kind,
            interval,
            retry_interval,
            attempts,
            timeout,
            params,
            json,
            argv,
        } => {
            let check = StoredCheck {
                name,
                kind,
                argv,
                params: params.into_iter().collect(),
                interval_s: interval.unwrap_or(0),
                retry_interval_s: retry_interval.unwrap_or(0),
                max_attempts: attempts.unwrap_or(0),
                timeout_s: timeout.unwrap_or(0),
            };
            let body = serde_json::json!({ "host": host, "check": check });
            let e: CheckListEntry = client.post_json("/api/v1/checks", &body, "the new check")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!(
                    "added {} on {} (check set epoch {}): {} {}",
                    e.check.name,
                    e.host,
                    e.epoch,
                    e.check.kind,
                    e.check.argv.join(" ")
                );
            }
            Ok(0)
        }
        CheckCommand::Remove { host, name } => {
            let body = serde_json::json!({ "host": host, "name": name });
            let r: serde_json::Value =
                client.delete_json("/api/v1/checks", &body, "the removal")?;
            let host = r["host"].as_str().unwrap_or(&host);
            println!("removed {name} from {host} (check set epoch {})", r["epoch"]);
            Ok(0)
        }
        CheckCommand::List { host, json } => {
            let path = match &host {
                Some(h) => format!("/api/v1/checks?host={}", encode_component(h)),
                None => "/api/v1/checks".to_owned(),
            };
            let list: Vec<CheckListEntry> = client.get_json(&path, "the check sets")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            let mut rows = vec![[
                "HOST".to_owned(),
                "CHECK".to_owned(),
                "SOURCE".to_owned(),
                "KIND".to_owned(),
                "INTERVAL".to_owned(),
                "COMMAND".to_owned(),
            ]];
            for e in &list {
                let c = &e.check;
                let interval =
                    if c.interval_s == 0 { "60s".into() } else { format!("{}s", c.interval_s) };
                let mut command = c.argv.join(" ");
                if command.len() > 60 {
                    command = format!("{}…", clip(&command, 59));
                }
                rows.push([
                    e.host.clone(),
                    c.name.clone(),
                    e.source.clone(),
                    c.kind.clone(),
                    interval,
                    command,
                ]);
            }
            print_table(&rows);
            Ok(0)
        }
    }
}

/// `assim services`.
pub fn services(
    client: &Client,
    host: Option<&str>,
    state: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(h) = host {
        query.push(format!("host={}", encode_component(h)));
    }
    if let Some(s) = state {
        query.push(format!("state={}", encode_component(s)));
    }
    let path = format!("/api/v1/services?{}", query.join("&"));
    let list: Vec<ServiceView> = client.get_json(&path, "the services")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list).context("encode")?);
        return Ok(());
    }
    let mut rows = vec![[
        "HOST".to_owned(),
        "CHECK".to_owned(),
        "STATE".to_owned(),
        "SINCE".to_owned(),
        "OUTPUT".to_owned(),
    ]];
    for s in &list {
        let mut state = s.state.to_uppercase();
        if s.flapping {
            state.push_str(" (flapping)");
        }
        let since = if s.since == 0 { "-".to_owned() } else { format_time(s.since) };
        let mut output = s.output.clone();
        if output.len() > 80 {
            output = format!("{}…", crate::checks_cli::clip(&output, 79));
        }
        rows.push([s.host.clone(), s.check.clone(), state, since, output]);
    }
    print_table(&rows);
    Ok(())
}

fn clip(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
