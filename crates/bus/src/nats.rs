//! NATS: the JetStream backend (`cma --bus nats://HOST:PORT`) and the NATS sink.
//!
//! **Subjects.** An event goes to `assim.events.<type>.<host>`: `<type>` is its dotted type (two
//! tokens, e.g. `host.down`, `local.event`) and `<host>` its host name with `.`, `*`, `>` and
//! blanks replaced by `_` (`-` for events without a host). So:
//!
//! | subscribe to | gets |
//! |---|---|
//! | `assim.events.>` | everything |
//! | `assim.events.host.>` | every host event |
//! | `assim.events.host.down.*` | every `host.down` |
//! | `assim.events.*.*.db1` | everything about db1 |
//!
//! The payload is the event as JSON, exactly as the HTTP API and sinks give it (`assim_api::Event`).
//!
//! **Stream.** The CMA keeps a JetStream stream `ASSIM_EVENTS` on `assim.events.>` with the
//! bus's retention (max age, max messages) and publishes every stored event to it in id order,
//! with `Nats-Msg-Id` = the event id: after a CMA restart it resumes from its stored position
//! (`nats_published` in the store) and anything published twice is dropped by JetStream's
//! de-duplication window (10 minutes).
//!
//! **Consumers.** Every durable subscription also gets a durable JetStream pull consumer named
//! `assim-<NAME>` (explicit acks), filtered by subject when the subscription's filter starts
//! with a `type:` condition that maps to one (`type:host.*` → `assim.events.host.*.*`); the
//! rest of the filter is for the consumer to apply. External subscribers read NATS directly with
//! it; its position is NATS's own (the HTTP subscription's cursor lives in the CMA's store).
//!
//! **The NATS sink** publishes each matching event to `<subject>.<type>.<host>` on core NATS
//! (default subject `assim.events`), without JetStream.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use assim_cma::Event;
use async_nats::jetstream::{self, consumer, stream};

use crate::filter::{Expr, Filter};

/// The stream's name.
pub const STREAM: &str = "ASSIM_EVENTS";
/// The subject prefix of the stream.
pub const PREFIX: &str = "assim.events";
/// JetStream's de-duplication window for `Nats-Msg-Id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// A subject token for a host name.
fn host_token(h: &str) -> String {
    if h.is_empty() {
        return "-".into();
    }
    h.chars()
        .map(|c| if matches!(c, '.' | '*' | '>') || c.is_whitespace() { '_' } else { c })
        .collect()
}

/// The subject of `e` under `prefix`.
pub fn subject(prefix: &str, e: &Event) -> String {
    format!("{prefix}.{}.{}", e.kind.name(), host_token(&e.hostname))
}

/// The subject a JetStream consumer for `filter` can be narrowed to.
pub fn consumer_subject(filter: &Filter) -> String {
    fn type_glob(x: &Expr) -> Option<&str> {
        match x {
            Expr::Type(g) => Some(g.as_str()),
            Expr::And(a, _) => type_glob(a),
            _ => None,
        }
    }
    if let Some(g) = type_glob(filter.expr()) {
        let tokens: Vec<&str> = g.split('.').collect();
        let plain =
            |t: &str| !t.is_empty() && !t.contains(['?', '>']) && (t == "*" || !t.contains('*'));
        if tokens.len() == 2 && tokens.iter().all(|t| plain(t)) {
            return format!("{PREFIX}.{}.{}.*", tokens[0], tokens[1]);
        }
    }
    format!("{PREFIX}.>")
}

/// The JSON payload of an event.
pub fn payload(e: &Event) -> bytes::Bytes {
    serde_json::to_vec(&crate::sink::event_json(e)).expect("events serialize").into()
}

/// A connection to JetStream with the events stream in place.
#[derive(Debug, Clone)]
pub struct JetStream {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl JetStream {
    /// Connects and creates (or updates) the stream with the given retention.
    pub async fn connect(
        url: &str,
        max_age: Duration,
        max_messages: u64,
        replicas: usize,
    ) -> Result<JetStream, String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{PREFIX}.>")],
            max_age,
            max_messages: max_messages.min(i64::MAX as u64) as i64,
            duplicate_window: DUPLICATE_WINDOW.min(max_age.max(Duration::from_secs(1))),
            num_replicas: replicas,
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| format!("cannot create the JetStream stream {STREAM} at {url}: {e} (is nats-server running with -js?)"))?;
        Ok(JetStream { client, js })
    }

    /// Publishes a batch in order, pipelined, and waits for every acknowledgement. Returns how
    /// many JetStream reported as duplicates.
    pub async fn publish(&self, events: &[Event]) -> Result<u64, String> {
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let p = jetstream::context::Publish::build()
                .payload(payload(e))
                .message_id(e.id.to_string());
            let ack = self
                .js
                .send_publish(subject(PREFIX, e), p)
                .await
                .map_err(|err| format!("publish of event {}: {err}", e.id))?;
            acks.push((e.id, ack));
        }
        let mut dups = 0;
        for (id, ack) in acks {
            let a = ack.await.map_err(|err| format!("no JetStream ack for event {id}: {err}"))?;
            dups += u64::from(a.duplicate);
        }
        Ok(dups)
    }

    /// Creates (or updates) the durable pull consumer `assim-<name>` for a subscription.
    pub async fn ensure_consumer(&self, name: &str, filter: &Filter) -> Result<(), String> {
        let stream =
            self.js.get_stream(STREAM).await.map_err(|e| format!("stream {STREAM}: {e}"))?;
        let durable = format!("assim-{name}");
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: consumer_subject(filter),
            ack_policy: consumer::AckPolicy::Explicit,
            description: Some(format!("assim subscription {name}: {}", filter.text())),
            ..Default::default()
        };
        match stream.get_consumer::<consumer::pull::Config>(&durable).await {
            Ok(c) if c.cached_info().config.filter_subject == config.filter_subject => Ok(()),
            Ok(_) => {
                stream
                    .delete_consumer(&durable)
                    .await
                    .map_err(|e| format!("consumer {durable}: {e}"))?;
                stream
                    .create_consumer(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("consumer {durable}: {e}"))
            }
            Err(_) => stream
                .create_consumer(config)
                .await
                .map(|_| ())
                .map_err(|e| format!("consumer {durable}: {e}")),
        }
    }
}

/// Core NATS clients of the NATS sink, one per server URL.
static CLIENTS: Mutex<Option<HashMap<String, async_nats::Client>>> = Mutex::new(None);

/// One publish of `e` to core NATS at `url` (the NATS sink).
pub async fn publish_core(
    url: &str,
    prefix: &str,
    e: &Event,
    timeout: Duration,
) -> Result<(), crate::sink::DeliveryError> {
    let cached =
        CLIENTS.lock().expect("clients").get_or_insert_with(HashMap::new).get(url).cloned();
    let client = match cached {
        Some(c) => c,
        None => {
            let c = async_nats::ConnectOptions::new()
                .connection_timeout(timeout)
                .connect(url)
                .await
                .map_err(|err| format!("cannot connect to NATS at {url}: {err}"))?;
            CLIENTS
                .lock()
                .expect("clients")
                .get_or_insert_with(HashMap::new)
                .insert(url.to_owned(), c.clone());
            c
        }
    };
    client
        .publish(subject(prefix, e), payload(e))
        .await
        .map_err(|err| format!("publish to {url}: {err}"))?;
    tokio::time::timeout(timeout, client.flush())
        .await
        .map_err(|_| format!("NATS at {url} did not take the event within {timeout:?}"))?
        .map_err(|err| format!("flush to {url}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let f = |s: &str| consumer_subject(&Filter::parse(s).unwrap());
        assert_eq!(f("type:host.* and severity>=warning"), "assim.events.host.*.*");
        assert_eq!(f("type:host.down"), "assim.events.host.down.*");
        assert_eq!(f("type:host*"), "assim.events.>");
        assert_eq!(f("cluster=A"), "assim.events.>");
        assert_eq!(host_token("db1.example.com"), "db1_example_com");
        assert_eq!(host_token(""), "-");
    }
}
