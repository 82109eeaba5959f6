//! `nanoprobe`: the per-host agent.

use assim_nanoprobe::settings::NanoprobeFlags;
use clap::Parser;

/// The assim nanoprobe: heartbeats the ring neighbours its CMA assigns and reports only
/// failures and changes. Enroll once with a join token; later starts reuse the pinned CMA key.
///
/// Examples:
///   nanoprobe --token assim1.…                       first start (token from `cma token create`)
///   nanoprobe                                        later starts
///   nanoprobe --cma 127.0.0.1:1984 --trust-on-first-use   a lab without tokens
///   nanoprobe --cma 192.0.2.10:1984 --cma 192.0.2.11:1984   two CMA engines (instead of the
///                                                    token's addresses): the next one is
///                                                    tried when the CMA is silent
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    flags: NanoprobeFlags,
}

fn main() {
    // Statically linked with glibc (the installed build, README "Installing"): keep name
    // lookups off NSS modules, which crash a static process (src/memory.rs).
    #[cfg(target_feature = "crt-static")]
    if let Err(e) = assim_nanoprobe::memory::use_builtin_name_services() {
        eprintln!("nanoprobe: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    if let Err(e) = assim_nanoprobe::settings::run_nanoprobe(cli.flags) {
        eprintln!("nanoprobe: {e:#}");
        std::process::exit(1);
    }
}
