//! The HTTP client behind `assim status` and `assim events`.

use std::time::Duration;

use anyhow::Context as _;
use assim_api::Event;
use assim_api::StatusView;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Talks to one CMA's HTTP API.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    /// Why no token could be read from the token file (said when the CMA answers 401).
    token_problem: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("token_problem", &self.token_problem)
            .finish()
    }
}

/// Reads an API token file (the CMA's `DATA_DIR/api.token`): the trimmed text, or why not.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() && t.len() <= 1024 => Ok(t.trim().to_string()),
        Ok(_) => Err(format!("{} does not hold a token", path.display())),
        Err(e) => Err(format!("cannot read the API token file {}: {e}", path.display())),
    }
}

impl Client {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:1985`).
    pub fn new(base: &str, token: Option<String>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(90))
            .build();
        Client { base: base.trim_end_matches('/').to_string(), token, token_problem: None, agent }
    }

    /// Without a token yet, takes the one in `path` (the CMA's `DATA_DIR/api.token`); if it
    /// cannot be read, requests go without one and a refusal says why.
    pub fn with_token_file(mut self, path: &std::path::Path) -> Client {
        if self.token.is_none() {
            match read_token_file(path) {
                Ok(t) => self.token = Some(t),
                Err(why) => self.token_problem = Some(why),
            }
        }
        self
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<ureq::Response> {
        self.send("GET", path, None)
    }

    /// One request with an optional JSON body; non-2xx answers become errors with their text.
    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<ureq::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                let hint = match (code, &self.token_problem) {
                    (401, Some(why)) => format!(" ({why}; or pass --api-token)"),
                    _ => String::new(),
                };
                anyhow::bail!("the CMA API at {} answered {code}: {}{hint}", self.base, body.trim())
            }
            Err(e) => Err(anyhow::anyhow!(e)).with_context(|| {
                format!(
                    "cannot reach the CMA API at {} (is `cma` running? is --api right?)",
                    self.base
                )
            }),
        }
    }

    /// `GET path` and decode the JSON answer; `what` names it in errors ("the dependencies").
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> anyhow::Result<T> {
        self.get(path)?
            .into_json()
            .with_context(|| format!("the CMA's answer for {what} is not valid JSON"))
    }

    /// `POST path` with a JSON body and decode the JSON answer; `what` names it in errors.
    pub fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> anyhow::Result<T> {
        self.send_json("POST", path, body, what)
    }

    /// `DELETE path` with a JSON body and decode the JSON answer; `what` names it in errors.
    pub fn delete_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> anyhow::Result<T> {
        self.send_json("DELETE", path, body, what)
    }

    fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> anyhow::Result<T> {
        self.send(method, path, Some(body.clone()))?
            .into_json()
            .with_context(|| format!("the CMA's answer for {what} is not valid JSON"))
    }

    /// `GET /api/v1/status`.
    pub fn status(&self) -> anyhow::Result<StatusView> {
        self.get("/api/v1/status")?.into_json().context("the CMA's status answer is not valid JSON")
    }

    /// `GET /api/v1/events`: events after `since`; with `wait`, long-polls up to that long.
    pub fn events(
        &self,
        since: u64,
        limit: usize,
        wait: Option<Duration>,
    ) -> anyhow::Result<Vec<Event>> {
        let mut path = format!("/api/v1/events?since={since}&limit={limit}");
        if let Some(w) = wait {
            path.push_str(&format!("&wait={}", w.as_secs().max(1)));
        }
        self.get(&path)?.into_json().context("the CMA's events answer is not valid JSON")
    }

    /// `GET /api/v1/discovery?host=…`.
    pub fn discovery(&self, host: &str) -> anyhow::Result<Vec<assim_api::DiscoveryView>> {
        self.get(&format!("/api/v1/discovery?host={}", encode_component(host)))?
            .into_json()
            .context("the CMA's discovery answer is not valid JSON")
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.get("/metrics")?.into_string()?)
    }
}

/// Formats µs since the epoch as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn format_time(micros: u64) -> String {
    let (y, m, d, hh, mm, ss) = assim_api::events::utc_fields(micros);
    let ms = (micros / 1000) % 1000;
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}.{ms:03}")
}

/// Prints the status table.
pub fn print_status(s: &StatusView) {
    println!(
        "CMA {} (key {}) listening on {}, version {}",
        s.cma.node_id, s.cma.fingerprint, s.cma.listen, s.cma.version
    );
    let mut rows = vec![[
        "HOST".to_string(),
        "STATE".into(),
        "SINCE (UTC)".into(),
        "RING NEIGHBOURS".into(),
        "VERSION".into(),
        "ADDRESS".into(),
    ]];
    for n in &s.nodes {
        rows.push([
            n.hostname.clone(),
            n.state.clone(),
            format_time(n.since),
            if n.neighbours.is_empty() { "-".into() } else { n.neighbours.join(", ") },
            n.version.clone(),
            n.listen_addr.clone(),
        ]);
    }
    print_table(&rows);
    let up = s.nodes.iter().filter(|n| n.state == "up").count();
    println!("{} node(s), {up} up", s.nodes.len());
}

/// Prints rows as aligned columns.
pub fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    for r in rows {
        let line: Vec<String> =
            r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// One event as a line.
pub fn format_event(e: &Event) -> String {
    format!(
        "{:>6}  {}  {:<13} {:<12} {}",
        e.id,
        format_time(e.time.0),
        e.kind.name(),
        e.hostname,
        e.text
    )
}

/// What stays as it is in a URL path segment or query value: RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes one path segment or query value (UTF-8, then every byte outside
/// `A-Z a-z 0-9 - . _ ~`).
pub(crate) fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00.000");
        assert_eq!(super::format_time(1_795_267_815_123_000), "2026-11-21 13:30:15.123");
    }

    #[test]
    fn encodes_components() {
        assert_eq!(super::encode_component("web-1.example_~"), "web-1.example_~");
        assert_eq!(super::encode_component("^(a|b)$"), "%5E%28a%7Cb%29%24");
        assert_eq!(super::encode_component("fe80::1"), "fe80%3A%3A1");
        assert_eq!(super::encode_component("type:host.* and é"), "type%3Ahost.%2A%20and%20%C3%A9");
    }
}
