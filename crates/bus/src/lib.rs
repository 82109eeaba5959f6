//! The event bus: which events a subscriber wants, tags added by rule, and delivery to sinks.
//!
//! Events are produced by the CMA core (`assim_cma::Event`: id, time, type, severity, host,
//! tags, text, body) and stored by the CMA driver in the store's `events` table, which is the
//! bus's durable log. This crate owns what happens around that log:
//!
//! - the **filter language** subscribers use (`type:host.* and cluster=Compute1`,
//!   `severity>=warning`, `/RAID STATUS CHANGE/`): a pure parser with positioned errors and an
//!   evaluator over events;
//! - **tagging rules** the CMA applies to each event before it is stored;
//! - the `[bus]` **configuration** (retention, rules, sinks, NATS);
//! - **sinks** (webhook, exec, Nagios external commands, NATS) and the **runner** task that
//!   delivers durable subscriptions to them with retries, backoff and dead letters, and prunes
//!   old events.
//!
//! - the **live fan-out** of committed events to many subscribers (compiled filters, an index
//!   by type, severity and tag, each event encoded once, one delivery per batch).
//!
//! Layout:
//! - [`filter`]: grammar, parser, [`Filter`] and its evaluator.
//! - [`fanout`]: [`Fanout`], [`CompiledFilter`] and the delivery to live subscribers.
//! - [`tagging`]: [`Tagger`] and its rules.
//! - [`config`]: [`BusConfig`], [`SinkConfig`].
//! - [`sink`]: one delivery attempt per sink kind.
//! - [`runner`]: the CMA's bus task (retention, sink workers).
//! - [`nats`]: subject mapping and the NATS publisher.

#![forbid(unsafe_code)]

pub mod config;
pub mod fanout;
pub mod filter;
pub mod nats;
pub mod runner;
pub mod sink;
pub mod tagging;

pub use crate::config::{BusConfig, SinkConfig, SinkKind};
pub use crate::fanout::{CompiledFilter, Fanout};
pub use crate::filter::{Filter, FilterError};
pub use crate::tagging::Tagger;

/// Checks a durable subscription's name: 1–64 of `[A-Za-z0-9_.-]`.
pub fn valid_subscription_name(name: &str) -> Result<(), String> {
    if tagging::valid_tag_key(name) {
        Ok(())
    } else {
        Err(format!(
            "subscription name {name:?} is not valid: use 1 to 64 letters, digits, '_', '.' or '-'"
        ))
    }
}
