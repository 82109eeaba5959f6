//! The simulator without the rest of the CLI: `cargo run --release -p assim-sim --example sim --
//! --nodes 10000 --crash 100`. Same flags as `assim sim`.

use clap::Parser;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: assim_sim::SimArgs,
}

fn main() -> anyhow::Result<()> {
    assim_sim::run_cli(Cli::parse().args)?;
    Ok(())
}
