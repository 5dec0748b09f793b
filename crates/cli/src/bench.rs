//! `handoff bench …`: programs that run contenders side by side and print ratios. The
//! contenders and reports live in `handoff-bench`; this module parses flags and prints.

use crate::report::{config_error, progress_bar, write_json};
use anyhow::Context;
use clap::Subcommand;
use handoff_bench::steer_bench::{steer_bench, SteerBenchOptions, SteerEvent};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand, Clone, Debug)]
pub enum BenchCmd {
    /// Highest sustainable rate through the steer vs the node's direct path (no steer).
    Steer(SteerBenchArgs),
    /// The live move side by side with stop-and-copy, iterative pre-copy, raw TCP and Redis
    /// MIGRATE on the same sessions and load.
    Move(crate::bench_move::MoveBenchArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct SteerBenchArgs {
    /// UEs per trial (each trial uses fresh UEs that attach first).
    #[arg(long, default_value_t = 5_000)]
    pub sessions: u32,
    /// Measured seconds per trial.
    #[arg(long, default_value_t = 3.0)]
    pub trial_secs: f64,
    /// A rate is sustained when nothing is lost and p99 latency stays under this bound (ms).
    #[arg(long, default_value_t = 10.0)]
    pub p99_bound_ms: f64,
    /// First rate tried (procedures per second); the ladder doubles from here.
    #[arg(long, default_value_t = 4_000.0)]
    pub start_rate: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 256_000.0)]
    pub max_rate: f64,
    /// Bisection steps between the last sustained and the first failed rate.
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-reports")]
    pub out: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs a benchmark.
pub async fn run(b: BenchCmd) -> anyhow::Result<ExitCode> {
    match b {
        BenchCmd::Steer(a) => steer(a).await,
        BenchCmd::Move(a) => crate::bench_move::run(a).await,
    }
}

async fn steer(args: SteerBenchArgs) -> anyhow::Result<ExitCode> {
    let options = SteerBenchOptions {
        sessions: args.sessions,
        trial_secs: args.trial_secs,
        p99_bound_ms: args.p99_bound_ms,
        start_rate: args.start_rate,
        max_rate: args.max_rate,
        refine: args.refine,
        zipf: args.zipf,
    };
    options.validate().map_err(config_error)?;
    let pb = progress_bar(0, "{spinner} trial {pos} {msg} [{elapsed_precise}]");
    pb.enable_steady_tick(Duration::from_millis(200));
    let show = |e: SteerEvent| match e {
        SteerEvent::Trial { contender, rate } => {
            pb.set_message(format!("{contender} at {rate:.0}/s"))
        }
        SteerEvent::TrialDone => pb.inc(1),
    };
    let report = steer_bench(&options, &crate::node_launcher()?, &crate::catalog(), &show).await;
    pb.finish_and_clear();
    let report = report?;
    let path = write_json(&args.out, "bench-steer", &report).context("cannot write the report")?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let (s, d) = (&report.via_steer_latency_us, &report.direct_latency_us);
        out!(
            "handoff bench steer  (sustained = no loss, p99 <= {} ms)",
            args.p99_bound_ms
        );
        out!("  via steer   {:>9.0} procedures/s", report.via_steer_rate);
        out!("  direct      {:>9.0} procedures/s", report.direct_rate);
        out!("  ratio       {:>9.2}", report.ratio);
        out!(
            "  at {:.0}/s   p50/p99/max us: steer {}/{}/{}  direct {}/{}/{}",
            report.common_rate,
            s.p50,
            s.p99,
            s.max,
            d.p50,
            d.p99,
            d.max
        );
        out!("  report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
