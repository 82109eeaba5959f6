//! `cma`: the Collective Monitoring Authority.

use assim_cma_daemon::settings::{CmaCommand, CmaFlags};
use clap::Parser;

/// The assim CMA: registers nanoprobes, assigns their heartbeat rings, corroborates failures and
/// publishes events. Its HTTP API (status, events, /metrics) is on loopback by default.
///
/// Examples:
///   cma --data-dir /var/lib/assim/cma
///   cma token create --advertise 192.0.2.10:1984     print a join token for nanoprobes
///   cma --print-config                               show the resolved configuration
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    flags: CmaFlags,
    #[command(subcommand)]
    command: Option<CmaCommand>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = assim_cma_daemon::settings::run_cma(cli.flags, cli.command) {
        eprintln!("cma: {e:#}");
        std::process::exit(1);
    }
}
