//! Counters shared between the CMA task (the only writer) and the HTTP API (readers).
//!
//! The CMA task publishes a fresh [`CmaMetrics`] value after each batch of work; the API renders
//! the latest one in the Prometheus text format. Label sets are bounded: reject reasons and event
//! kinds are fixed lists, node states are four.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// What `/metrics` shows.
#[derive(Clone, Debug, Default)]
pub struct CmaMetrics {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Rejected datagrams and messages by reason.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Nodes by state name.
    pub nodes: BTreeMap<&'static str, u64>,
    /// Events emitted by kind since start.
    pub events: BTreeMap<&'static str, u64>,
    pub ring_changes: u64,
    pub ring_members: u64,
    /// Hosts registered for the first time whose `host.new` waits for their OS and keys.
    pub host_new_waiting: u64,
    pub reports: u64,
    pub reports_ignored: u64,
    pub retransmits: u64,
    pub retransmits_held: u64,
    /// X25519 operations done by the CMA's sealer (first contacts admitted, key derivations).
    pub dh_ops: u64,
    /// `Busy` answers to key requests beyond the budget, and refused requests left unanswered
    /// beyond the `Busy` budget (`assim_cma_shell::pace`).
    pub busy_sent: u64,
    pub busy_dropped: u64,
    /// Key requests the packet reader dropped unread while the loop was behind.
    pub key_requests_shed: u64,
    pub store_errors: u64,
    /// Set while the store refuses batches (issue 16 item 15): why, since when, what it cost;
    /// the CMA then acknowledges no new records. `/healthz` answers 503 with it.
    pub store_unavailable: Option<String>,
    /// Seconds since the store last worked (0 while it works).
    pub store_unavailable_seconds: u64,
    /// Inbox group commits, records made durable, and total fsync time (ns).
    pub inbox_syncs: u64,
    pub inbox_records: u64,
    pub inbox_sync_nanos: u64,
    /// Stored messages with no further effect yet, by kind.
    pub applied_other: BTreeMap<&'static str, u64>,
    /// Statistics (issue 17 item 5): see the shell's metrics and [`crate::graphite`].
    pub statistics: StatisticsMetrics,
}

/// The statistics part of [`CmaMetrics`].
#[derive(Clone, Debug, Default)]
pub struct StatisticsMetrics {
    pub batches: u64,
    pub series: u64,
    pub invalid: u64,
    pub clamped: u64,
    pub refused: u64,
    pub exposed: u64,
    pub exposed_refused: u64,
    pub graphite_sent: u64,
    pub graphite_failures: u64,
    pub graphite_queued: u64,
    pub graphite_dropped: u64,
    pub graphite_down: bool,
}

/// The latest published metrics.
#[derive(Debug, Default)]
pub struct SharedMetrics(Mutex<CmaMetrics>);

impl SharedMetrics {
    /// Replaces the published value.
    pub fn publish(&self, m: CmaMetrics) {
        *self.0.lock().expect("metrics lock") = m;
    }

    /// A copy of the published value.
    pub fn get(&self) -> CmaMetrics {
        self.0.lock().expect("metrics lock").clone()
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn labelled(
    out: &mut String,
    kind: &str,
    name: &str,
    help: &str,
    label: &str,
    values: &BTreeMap<&'static str, u64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (k, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
    }
}

/// Renders `m` in the Prometheus text exposition format (version 0.0.4).
pub fn render(m: &CmaMetrics) -> String {
    let mut out = String::new();
    counter(
        &mut out,
        "assim_cma_datagrams_received_total",
        "UDP datagrams received by the CMA.",
        m.datagrams_in,
    );
    counter(
        &mut out,
        "assim_cma_datagrams_sent_total",
        "UDP datagrams sent by the CMA.",
        m.datagrams_out,
    );
    counter(
        &mut out,
        "assim_cma_received_bytes_total",
        "UDP payload bytes received by the CMA.",
        m.bytes_in,
    );
    counter(
        &mut out,
        "assim_cma_sent_bytes_total",
        "UDP payload bytes sent by the CMA.",
        m.bytes_out,
    );
    labelled(
        &mut out,
        "counter",
        "assim_cma_rejected_total",
        "Datagrams and messages the CMA refused, by reason.",
        "reason",
        &m.rejects,
    );
    labelled(&mut out, "gauge", "assim_cma_nodes", "Known nodes by state.", "state", &m.nodes);
    labelled(
        &mut out,
        "counter",
        "assim_cma_events_total",
        "Events emitted since start, by type.",
        "type",
        &m.events,
    );
    counter(
        &mut out,
        "assim_cma_ring_changes_total",
        "Ring membership changes since start.",
        m.ring_changes,
    );
    gauge(
        &mut out,
        "assim_cma_ring_members",
        "Nodes currently in the heartbeat ring.",
        m.ring_members,
    );
    gauge(
        &mut out,
        "assim_cma_host_new_waiting",
        "Hosts registered for the first time whose host.new waits for their OS and SSH host keys.",
        m.host_new_waiting,
    );
    counter(
        &mut out,
        "assim_cma_heartbeat_reports_total",
        "Heartbeat reports received from nanoprobes.",
        m.reports,
    );
    counter(
        &mut out,
        "assim_cma_heartbeat_reports_ignored_total",
        "Heartbeat reports ignored (reporter not a neighbour, unknown node).",
        m.reports_ignored,
    );
    counter(
        &mut out,
        "assim_cma_retransmits_total",
        "Reliable-delivery frames the CMA retransmitted.",
        m.retransmits,
    );
    counter(
        &mut out,
        "assim_cma_retransmits_held_total",
        "Retransmissions the CMA held back because all its connections together were over their budget.",
        m.retransmits_held,
    );
    counter(
        &mut out,
        "assim_cma_dh_operations_total",
        "X25519 operations (first contacts within the budget, key derivations).",
        m.dh_ops,
    );
    counter(
        &mut out,
        "assim_cma_busy_sent_total",
        "Busy answers (ask again later, at the CMA's registration pace) to key requests beyond the budget.",
        m.busy_sent,
    );
    counter(
        &mut out,
        "assim_cma_busy_dropped_total",
        "Key requests beyond the budget left unanswered because the Busy budget was used up too.",
        m.busy_dropped,
    );
    counter(
        &mut out,
        "assim_cma_key_requests_shed_total",
        "Key requests dropped unread because the CMA's loop was behind (they are asked again).",
        m.key_requests_shed,
    );
    counter(
        &mut out,
        "assim_cma_store_errors_total",
        "Failed writes to the store (an operator must act).",
        m.store_errors,
    );
    gauge(
        &mut out,
        "assim_cma_store_unavailable",
        "1 while the store refuses writes: the CMA acknowledges no new records (see /healthz).",
        u64::from(m.store_unavailable.is_some()),
    );
    gauge(
        &mut out,
        "assim_cma_store_unavailable_seconds",
        "How long the store has been refusing writes (0 while it works).",
        m.store_unavailable_seconds,
    );
    labelled(
        &mut out,
        "counter",
        "assim_cma_messages_stored_total",
        "Messages stored with no further effect yet (discovery results, local events, …), by kind.",
        "kind",
        &m.applied_other,
    );
    counter(
        &mut out,
        "assim_cma_inbox_syncs_total",
        "Inbox group commits (one fsync each).",
        m.inbox_syncs,
    );
    counter(
        &mut out,
        "assim_cma_inbox_records_total",
        "Records made durable in the inbox.",
        m.inbox_records,
    );
    let _ = writeln!(
        out,
        "# HELP assim_cma_inbox_sync_seconds_total Time spent in inbox fsyncs.\n\
         # TYPE assim_cma_inbox_sync_seconds_total counter\n\
         assim_cma_inbox_sync_seconds_total {:.9}",
        m.inbox_sync_nanos as f64 / 1e9
    );
    let st = &m.statistics;
    for (name, help, v) in [
        (
            "assim_cma_statistics_batches_total",
            "Statistics batches taken from nanoprobes.",
            st.batches,
        ),
        (
            "assim_cma_statistics_series_total",
            "Statistics series taken (one value each).",
            st.series,
        ),
        ("assim_cma_statistics_invalid_total", "Statistics series dropped as invalid.", st.invalid),
        (
            "assim_cma_statistics_clamped_total",
            "Statistics batches stamped in the future, sent with the CMA's time.",
            st.clamped,
        ),
        ("assim_cma_statistics_refused_total", "Statistics batches refused whole.", st.refused),
        (
            "assim_cma_statistics_graphite_sent_total",
            "Statistics values carbon took.",
            st.graphite_sent,
        ),
        (
            "assim_cma_statistics_graphite_failures_total",
            "Failed attempts to send statistics to carbon.",
            st.graphite_failures,
        ),
        (
            "assim_cma_statistics_dropped_total",
            "Statistics values dropped because the Graphite queue was full.",
            st.graphite_dropped,
        ),
        (
            "assim_cma_statistics_exposed_refused_total",
            "New series not exposed for Prometheus because the exposition was full.",
            st.exposed_refused,
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    gauge(
        &mut out,
        "assim_cma_statistics_graphite_queued",
        "Statistics values waiting for carbon.",
        st.graphite_queued,
    );
    gauge(
        &mut out,
        "assim_cma_statistics_graphite_down",
        "1 while the last attempt to reach carbon failed.",
        u64::from(st.graphite_down),
    );
    gauge(
        &mut out,
        "assim_cma_statistics_exposed",
        "Series at /api/v1/statistics/prometheus.",
        st.exposed,
    );
    out
}
