//! Process plumbing shared by `cma`, `nanoprobe` and `assim`: logging, signals, the runtime and
//! config files.

use std::path::Path;

use anyhow::Context as _;

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

/// How many threads a daemon's runtime runs its tasks on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// Two workers: the CMA, whose HTTP API and bus runner must not wait behind the engine.
    Two,
    /// The calling thread only: the per-host agent, where a second worker thread (its stack
    /// and its allocator arena) costs more memory than it saves time. Blocking work still goes
    /// to `spawn_blocking`.
    One,
}

/// Runs a future on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    block_on_with(Threads::Two, f)
}

/// Runs a future on a fresh runtime with `threads` workers.
pub fn block_on_with<F: std::future::Future>(threads: Threads, f: F) -> F::Output {
    let mut builder = match threads {
        Threads::Two => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
        Threads::One => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().build().expect("start the tokio runtime").block_on(f)
}

/// A daemon's stop signal: resolves on SIGTERM or SIGINT.
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs a daemon on a fresh runtime until it returns; it gets [`shutdown_signal`] to stop on.
pub fn block_on_shutdown<F, Fut>(threads: Threads, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    block_on_with(threads, async move { f(Box::pin(shutdown_signal())).await })
}

/// Reads a TOML config file, or the defaults when there is none.
pub fn read_config_file<T: for<'de> serde::Deserialize<'de> + Default>(
    path: Option<&Path>,
) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}
