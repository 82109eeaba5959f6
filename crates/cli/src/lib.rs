//! The three assim programs and what they share.
//!
//! - `cma`: the Collective Monitoring Authority daemon, and `cma token create`.
//! - `nanoprobe`: the per-host agent.
//! - `assim`: the operator's CLI: `status`, `events`, `demo`; it also runs `assim cma …` and
//!   `assim nanoprobe …`, the same code as the standalone binaries, so one binary is enough for
//!   the demo.
//!
//! The binaries are thin: configuration (flags, environment, TOML file), logging and signals;
//! the work is done by `assim-daemon`.
//!
//! Layout:
//! - [`settings`]: flags/env/file resolution for `cma` and `nanoprobe`, `--print-config`.
//! - [`client`]: the HTTP client behind `assim status` and `assim events`.
//! - [`cluster`]: starts and stops a CMA and nanoprobes as real processes on loopback (the demo,
//!   the integration tests and the ring benchmark).
//! - [`demo`]: `assim demo`.
//! - [`bus`]: the event bus commands (`event send`, `events --filter`, `subscribe`,
//!   `subscriptions`).
//! - [`checks_cli`]: `assim services` and `assim check run`.
//! - [`query`]: the topology queries (`assim hosts`, `host`, `find`, `ports`, `packages`, …).

pub mod bus;
pub mod checks_cli;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod listen_l2;
pub mod query;
pub mod settings;

/// Sets up logging to stderr (`RUST_LOG` or `ASSIM_LOG` select the level; default `info`).
pub fn init_logging() {
    let filter = std::env::var("ASSIM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs a future on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the tokio runtime")
        .block_on(f)
}
