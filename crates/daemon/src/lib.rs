//! The tokio drivers that put the sans-IO cores on the network.
//!
//! Each driver is one task that owns its cores outright (no mutex around protocol state): it
//! reads datagrams, opens them with `assim-seal`, feeds frames to `assim-reliable` connections
//! and messages to the core, drains the core's actions, writes what must be durable, and sends
//! what must be sent. Timers are the cores' `poll_timeout`s.
//!
//! Layout:
//! - [`cma`]: the CMA driver: UDP endpoint, enrollment, the CMA core, the SQLite store.
//! - [`nanoprobe`]: the nanoprobe driver: CMA pinning, registration, heartbeats, graceful leave.
//! - [`local_socket`]: the nanoprobe's `events.sock`, where local programs submit events.
//! - [`api_topology`]: the topology query routes of the HTTP API.
//! - [`api_checks`]: the service routes of the HTTP API (`services`, `checks/run`).
//! - [`api_bus`]: the event bus routes of the HTTP API (filters, SSE, durable subscriptions).
//! - [`discovery`]: the nanoprobe's discovery driver (schedule, collectors, agents, LLDP/CDP
//!   listener) and the CMA's discovery schedule.
//! - [`checks_probe`]: the nanoprobe's service checks (schedule, runs, state changes, run-now);
//!   `cma::checks_cma`: the CMA's side (rules → check sets, service states, run-now commands).
//! - [`api`]: the CMA's HTTP API (status, events with long-poll) and Prometheus `/metrics`.
//! - [`metrics`]: counters shared between the CMA task and the API.
//! - [`timers`]: a small deadline set keyed by peer, used for many reliable connections.

pub mod api;
pub mod api_bus;
pub mod api_checks;
pub mod api_topology;
pub mod checks_probe;
pub mod cma;
pub mod discovery;
pub mod link;
pub mod loadgen;
pub mod local_socket;
pub mod metrics;
pub mod nanoprobe;
pub mod timers;

/// This build's version, reported in hello messages and by the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Picks this run's session number and records it in `data_dir/session`.
///
/// Peers accept only sessions larger than the last one they saw from us, so a restart must never
/// go backwards, even when the wall clock did: the new session is the larger of a fresh
/// clock-based one and the previous run's plus one.
pub fn next_session(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let path = data_dir.join("session");
    let previous = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let fresh = assim_seal::new_session(assim_wire::Timestamp::now().millis(), rand::random());
    let session = previous.map_or(fresh, |p| fresh.max(p.saturating_add(1)));
    let tmp = data_dir.join("session.tmp");
    std::fs::write(&tmp, format!("{session}\n"))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(session)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sessions_never_go_backwards() {
        let dir = std::env::temp_dir().join(format!("assim-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = super::next_session(&dir).unwrap();
        // A previous run from "the future" (clock stepped back since).
        std::fs::write(dir.join("session"), format!("{}\n", a + 1_000_000_000)).unwrap();
        let b = super::next_session(&dir).unwrap();
        assert_eq!(b, a + 1_000_000_001);
        assert!(super::next_session(&dir).unwrap() > b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
