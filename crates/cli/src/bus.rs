//! The event bus commands: `assim event send`, `assim events --filter`, `assim subscribe` and
//! `assim subscriptions`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use assim_api::Event;
use clap::Args;

use crate::client::{Client, encode_component, format_event};

/// The data directory of the system's nanoprobe (the default of `nanoprobe --data-dir`).
pub const DEFAULT_NANOPROBE_DATA_DIR: &str = "/var/lib/assim/nanoprobe";

/// `assim event send`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// The text of the event (one sentence; at most 8 KiB).
    pub text: String,
    /// The nanoprobe's data directory; its `events.sock` takes the event.
    #[arg(long, env = "ASSIM_NANOPROBE_DATA_DIR", default_value = DEFAULT_NANOPROBE_DATA_DIR)]
    pub data_dir: PathBuf,
    /// A tag, KEY=VALUE (repeatable). `host` and `node` are set by the CMA.
    #[arg(long = "tag", short = 't', value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// debug, info, notice, warning, error or critical.
    #[arg(long, short, default_value = "info")]
    pub severity: String,
    /// Your own type name for the event (stored as the tag `event_type`), e.g. raid.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Wait until the CMA has durably accepted the event (not just the local spool).
    #[arg(long)]
    pub confirm: bool,
    /// How long --confirm waits.
    #[arg(long, default_value = "30s", value_parser = assim_util::duration::parse_duration)]
    pub timeout: Duration,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Submits one event to the local nanoprobe; prints the spool record number.
pub fn send(a: &SendArgs) -> anyhow::Result<()> {
    let path = a.data_dir.join("events.sock");
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot connect to {} (is the nanoprobe running with --data-dir {}? \
             do you have permission to use its socket?)",
            path.display(),
            a.data_dir.display()
        )
    })?;
    stream.set_read_timeout(Some(a.timeout.max(Duration::from_secs(1))))?;
    let tags: BTreeMap<&str, &str> = a.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut req = serde_json::json!({
        "text": a.text,
        "severity": a.severity,
        "tags": tags,
        "confirm": a.confirm,
    });
    if let Some(t) = &a.event_type {
        req["type"] = t.clone().into();
    }
    stream.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    let n = BufReader::new(&stream).read_line(&mut line);
    match n {
        Ok(0) => bail!("the nanoprobe closed the connection without an answer"),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!(
                "the CMA did not confirm the event within {:?}; it stays in the nanoprobe's spool \
                 and will be delivered when the CMA is reachable",
                a.timeout
            )
        }
        Err(e) => return Err(e).context("cannot read the nanoprobe's answer"),
    }
    let reply: assim_nanoprobe::local_socket::Reply =
        serde_json::from_str(&line).context("the nanoprobe's answer is not valid JSON")?;
    if !reply.ok {
        bail!("the nanoprobe refused the event: {}", reply.error.unwrap_or_default());
    }
    let id = reply.id.unwrap_or(0);
    if reply.confirmed == Some(true) {
        println!("{id} confirmed");
    } else {
        println!("{id} spooled");
    }
    Ok(())
}

/// Prints an event as a line or JSON.
fn print(e: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e).context("event to JSON")?);
    } else {
        println!("{}", format_event(e));
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// `assim events --filter EXPR [--follow]`.
pub fn events_filtered(
    client: &Client,
    filter: &str,
    since: u64,
    limit: usize,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    assim_bus::Filter::parse(filter).map_err(|e| anyhow::anyhow!("{}", e.render(filter)))?;
    let mut cursor = since;
    let mut printed = 0;
    loop {
        let mut path = format!(
            "/api/v1/events?since={cursor}&limit={limit}&filter={}",
            encode_component(filter)
        );
        if follow {
            path.push_str("&wait=30");
        }
        let resp = client.get(&path)?;
        let next = resp.header("x-assim-cursor").and_then(|v| v.parse::<u64>().ok());
        let batch: Vec<Event> =
            resp.into_json().context("the CMA's events answer is not valid JSON")?;
        for e in &batch {
            print(e, json)?;
            cursor = e.id;
            printed += 1;
        }
        let advanced = next.is_some_and(|n| n > cursor);
        if let Some(n) = next {
            cursor = cursor.max(n);
        }
        if !follow && (printed >= limit || (batch.is_empty() && !advanced)) {
            return Ok(());
        }
    }
}

/// `assim subscribe`.
#[derive(Args, Debug, Clone)]
pub struct SubscribeArgs {
    /// The subscription's name (letters, digits, _ . -). Its position lives in the CMA.
    pub name: String,
    /// The filter (created with it, or changed to it). Without it, an existing subscription
    /// keeps its filter; a new one gets every event.
    #[arg(long)]
    pub filter: Option<String>,
    /// Where a new subscription starts: now, beginning, or an event id.
    #[arg(long, default_value = "now")]
    pub start: String,
    /// Keep waiting for new events.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Delete the subscription instead.
    #[arg(long, conflicts_with_all = ["filter", "follow"])]
    pub delete: bool,
}

/// Creates the subscription if needed, prints the events since the last run and acknowledges
/// them after printing.
pub fn subscribe(client: &Client, a: &SubscribeArgs) -> anyhow::Result<()> {
    assim_bus::valid_subscription_name(&a.name).map_err(anyhow::Error::msg)?;
    let base = format!("/api/v1/subscriptions/{}", a.name);
    if a.delete {
        client.send("DELETE", &base, None)?;
        eprintln!("subscription {} deleted", a.name);
        return Ok(());
    }
    let existing = client.get(&base).ok();
    if existing.is_none() || a.filter.is_some() {
        let filter = a.filter.clone().unwrap_or_default();
        assim_bus::Filter::parse(&filter).map_err(|e| anyhow::anyhow!("{}", e.render(&filter)))?;
        let start: serde_json::Value = match a.start.parse::<u64>() {
            Ok(id) => id.into(),
            Err(_) => a.start.clone().into(),
        };
        let body = serde_json::json!({ "filter": filter, "start": start });
        // Changing the filter must not drop a sink configured through the API or config.
        if let Some(r) = existing {
            let cur: serde_json::Value = r.into_json()?;
            if cur.get("sink").is_some() {
                bail!(
                    "subscription {} is delivered by the CMA to a sink; change it with \
                     PUT {base} instead",
                    a.name
                );
            }
        }
        client.send("PUT", &base, Some(body))?;
    }
    loop {
        let wait = if a.follow { 30 } else { 0 };
        let batch: assim_api::SubscriptionBatch = client
            .get(&format!("{base}/events?limit=1000&wait={wait}"))?
            .into_json()
            .context("the CMA's subscription answer is not valid JSON")?;
        for e in &batch.events {
            print(e, a.json)?;
        }
        if batch.through > batch.cursor {
            client.send(
                "POST",
                &format!("{base}/ack"),
                Some(serde_json::json!({"through": batch.through})),
            )?;
        }
        if !a.follow && batch.events.len() < 1000 {
            return Ok(());
        }
    }
}

/// `assim subscriptions`: the table of durable subscriptions.
pub fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let list: Vec<assim_api::SubscriptionView> =
        client.get("/api/v1/subscriptions")?.into_json()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "CURSOR".into(),
        "SINK".into(),
        "UPDATED (UTC)".into(),
        "FILTER".into(),
    ]];
    for s in &list {
        rows.push([
            s.name.clone(),
            s.cursor.to_string(),
            s.sink
                .as_ref()
                .and_then(|v| v.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("-")
                .to_owned(),
            crate::client::format_time(s.updated_at),
            s.filter.clone(),
        ]);
    }
    crate::client::print_table(&rows);
    Ok(())
}
