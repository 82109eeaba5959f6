//! `assim app heartbeat|done|list|check|uncheck|checks`: heartbeats and checks from local
//! programs, through the local nanoprobe's `events.sock` (issue 17 item 6). The nanoprobe decides alone: a program that
//! misses its TTL becomes one `service.critical` for the check `app:NAME` at the CMA, its next
//! beat one `service.ok`; nothing travels while it beats.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use assim_nanoprobe::local_socket::Reply;
use clap::{Args, Subcommand};

use crate::bus::DEFAULT_NANOPROBE_DATA_DIR;

/// Where the local nanoprobe is.
#[derive(Args, Debug, Clone)]
pub struct Local {
    /// The nanoprobe's data directory; its `events.sock` takes the request.
    #[arg(long, env = "ASSIM_NANOPROBE_DATA_DIR", default_value = DEFAULT_NANOPROBE_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// `assim app …`
#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// One heartbeat from the program NAME; the first registers it. Beat again before the TTL
    /// runs out (e.g. every TTL/3): a missed TTL raises `service.critical` for `app:NAME`.
    ///
    /// Example (in a cron job or a loop): assim app heartbeat backup --ttl 30s
    Heartbeat {
        /// The program's name: 1-64 letters, digits, '.', '_' or '-'.
        name: String,
        /// How long the nanoprobe waits for the next beat (1s to 7d; 30s, 5m, 1h).
        #[arg(long, value_parser = assim_util::duration::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        local: Local,
    },
    /// The program NAME finished cleanly: its registration ends without an alarm.
    Done {
        name: String,
        #[command(flatten)]
        local: Local,
    },
    /// Declare a check on this host: the nanoprobe runs the Nagios plugin every INTERVAL as
    /// you (your user), and `assim check list` shows it with source `local` as `local:NAME`.
    /// The plugin must lie in the nanoprobe's plugin directories (--check-plugin-dir).
    ///
    /// Example: assim app check raid --interval 5m -- check_raid -w 80
    Check {
        /// The check's name (shown as `local:NAME`).
        name: String,
        /// How often it runs (5s to 1d).
        #[arg(long, value_parser = assim_util::duration::parse_duration)]
        interval: Duration,
        /// How often a problem is re-checked before it is HARD [default: 15s].
        #[arg(long, value_parser = assim_util::duration::parse_duration)]
        retry_interval: Option<Duration>,
        /// Consecutive problems before the state is HARD [default: 3].
        #[arg(long)]
        attempts: Option<u32>,
        /// Time limit of one run [default: 10s, or half the interval if shorter].
        #[arg(long, value_parser = assim_util::duration::parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        local: Local,
        /// The plugin (a name in the plugin directories, or a path inside them) and its
        /// arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Remove a check declared with `assim app check` (yours, or any as root).
    Uncheck {
        name: String,
        #[command(flatten)]
        local: Local,
    },
    /// The checks declared on this host: NAME INTERVAL UID COMMAND.
    Checks {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
    /// The programs registered on this host: NAME TTL STATE LEFT.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
}

/// Sends one JSON request to the nanoprobe at `data_dir` and returns its answer (an error if
/// it refused the request).
pub fn request(
    data_dir: &Path,
    req: &serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let path = data_dir.join("events.sock");
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot connect to {} (is the nanoprobe running with --data-dir {}? \
             do you have permission to use its socket?)",
            path.display(),
            data_dir.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(0) => bail!("the nanoprobe closed the connection without an answer"),
        Ok(_) => {}
        Err(e) => return Err(e).context("no answer from the nanoprobe"),
    }
    let reply: Reply =
        serde_json::from_str(&line).context("the nanoprobe's answer is not valid JSON")?;
    if !reply.ok {
        bail!("the nanoprobe refused: {}", reply.error.unwrap_or_default());
    }
    Ok(reply)
}

/// Runs `assim app …`.
pub fn run(cmd: AppCommand) -> anyhow::Result<()> {
    let t = Duration::from_secs(10);
    match cmd {
        AppCommand::Heartbeat { name, ttl, local } => {
            let req = serde_json::json!({
                "op": "app.heartbeat",
                "name": name,
                "ttl": format!("{}s", ttl.as_secs()),
            });
            request(&local.data_dir, &req, t)?;
        }
        AppCommand::Done { name, local } => {
            request(&local.data_dir, &serde_json::json!({"op": "app.done", "name": name}), t)?;
        }
        AppCommand::Check { name, interval, retry_interval, attempts, timeout, local, argv } => {
            let secs = |d: Duration| format!("{}s", d.as_secs());
            let mut req = serde_json::json!({
                "op": "check.declare",
                "name": name,
                "plugin": argv[0],
                "args": argv[1..],
                "interval": secs(interval),
            });
            if let Some(d) = retry_interval {
                req["retry_interval"] = secs(d).into();
            }
            if let Some(n) = attempts {
                req["attempts"] = n.into();
            }
            if let Some(d) = timeout {
                req["timeout"] = secs(d).into();
            }
            request(&local.data_dir, &req, t)?;
        }
        AppCommand::Uncheck { name, local } => {
            request(&local.data_dir, &serde_json::json!({"op": "check.remove", "name": name}), t)?;
        }
        AppCommand::Checks { json, local } => {
            let reply = request(&local.data_dir, &serde_json::json!({"op": "check.list"}), t)?;
            let checks = reply.checks.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                let mut rows =
                    vec![["NAME".to_string(), "INTERVAL".into(), "UID".into(), "COMMAND".into()]];
                for c in checks {
                    let mut cmd = vec![c.plugin];
                    cmd.extend(c.args);
                    rows.push([
                        format!("local:{}", c.name),
                        format!("{}s", c.interval_s),
                        c.uid.to_string(),
                        cmd.join(" "),
                    ]);
                }
                crate::client::print_table(&rows);
            }
        }
        AppCommand::List { json, local } => {
            let reply = request(&local.data_dir, &serde_json::json!({"op": "app.list"}), t)?;
            let apps = reply.apps.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else {
                let mut rows =
                    vec![["NAME".to_string(), "TTL".into(), "STATE".into(), "LEFT".into()]];
                for a in apps {
                    rows.push([
                        a.name,
                        format!("{}s", a.ttl_s),
                        a.state,
                        format!("{:.1}s", a.left_s),
                    ]);
                }
                crate::client::print_table(&rows);
            }
        }
    }
    Ok(())
}

/// `assim stat …`
#[derive(Subcommand, Debug)]
pub enum StatCommand {
    /// Put one value: a gauge (the last value in each interval is sent) or, with --counter, an
    /// increment (the sum over each interval is sent). The nanoprobe must run with
    /// --statistics; it sends one batch per interval.
    ///
    /// Example: assim stat put backup.bytes 1234567 --counter --tag role=db
    Put {
        /// A Graphite path: dot-separated segments of letters, digits, '_' and '-'.
        name: String,
        value: f64,
        /// The value is an increment of a counter (else a gauge).
        #[arg(long)]
        counter: bool,
        /// A tag, KEY=VALUE (repeatable, at most 8).
        #[arg(long = "tag", short = 't')]
        tags: Vec<String>,
        #[command(flatten)]
        local: Local,
    },
}

/// Runs `assim stat …`.
pub fn run_stat(cmd: StatCommand) -> anyhow::Result<()> {
    match cmd {
        StatCommand::Put { name, value, counter, tags, local } => {
            let mut map = serde_json::Map::new();
            for t in tags {
                let Some((k, v)) = t.split_once('=') else { bail!("tag {t:?} is not KEY=VALUE") };
                map.insert(k.to_owned(), v.into());
            }
            let req = serde_json::json!({
                "op": "stat.put",
                "name": name,
                "value": value,
                "kind": if counter { "counter" } else { "gauge" },
                "tags": map,
            });
            request(&local.data_dir, &req, Duration::from_secs(10))?;
        }
    }
    Ok(())
}
