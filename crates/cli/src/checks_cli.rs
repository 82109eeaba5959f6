//! `assim services` and `assim check run`.

use anyhow::Context as _;
use assim_store::services::ServiceView;
use clap::Subcommand;

use crate::client::{Client, format_time, print_table};

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
}

/// The result of `check run`, as the API returns it.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct RunResult {
    pub host: String,
    pub check: String,
    pub state: String,
    pub output: String,
    #[serde(default)]
    pub long_output: String,
    #[serde(default)]
    pub perfdata: String,
    pub duration_ms: u64,
    pub exit_code: Option<i32>,
}

/// Runs `assim check …`; returns the process exit code.
pub fn run_check(client: &Client, cmd: CheckCommand) -> anyhow::Result<i32> {
    match cmd {
        CheckCommand::Run { host, check, json } => {
            let body = serde_json::json!({ "host": host, "check": check });
            let r: RunResult = client.post_json("/api/v1/checks/run", &body, "the check result")?;
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
        query.push(format!("host={}", encode(h)));
    }
    if let Some(s) = state {
        query.push(format!("state={}", encode(s)));
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

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
