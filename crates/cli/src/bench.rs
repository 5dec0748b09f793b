//! `handoff bench …`: programs that run contenders side by side and print ratios.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand, Clone, Debug)]
pub enum BenchCmd {
    /// Highest sustainable rate through the steer vs the node's direct path.
    Steer(SteerBenchArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct SteerBenchArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(b: BenchCmd) -> anyhow::Result<ExitCode> {
    match b {
        BenchCmd::Steer(_) => anyhow::bail!("not yet"),
    }
}
