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
    /// The steer against the node's direct path (no relay) and nginx's UDP proxy: highest
    /// sustained rate, latency at fixed rates, CPU per signal.
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
    /// Fixed rates (procedures per second, comma-separated) at which every contender's
    /// latency is measured.
    #[arg(long, value_delimiter = ',', default_value = "5000,50000")]
    pub latency_rates: Vec<f64>,
    /// Load-generator tasks, each with its own socket and share of the UEs and rate.
    #[arg(long, default_value_t = 2)]
    pub load_shards: u32,
    /// Leave out the nginx UDP proxy contender (when nginx is not installed).
    #[arg(long)]
    pub no_nginx: bool,
    /// Skip counting each relay's instructions per signal under valgrind's callgrind (counted
    /// when valgrind is installed).
    #[arg(long)]
    pub no_instructions: bool,
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
        latency_rates: args.latency_rates.clone(),
        load_shards: args.load_shards,
        nginx: !args.no_nginx,
        instructions: !args.no_instructions && handoff_bench::instructions::valgrind().is_some(),
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
    let report = steer_bench(&options, &crate::node_launcher()?, &show).await;
    pb.finish_and_clear();
    let report = report?;
    let path = write_json(&args.out, "bench-steer", &report).context("cannot write the report")?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_steer(&report, args.p99_bound_ms);
        out!("  report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_steer(r: &handoff_bench::steer_bench::SteerBenchReport, p99_bound_ms: f64) {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    out!("handoff bench steer  (sustained = no loss, p99 <= {p99_bound_ms} ms)");
    out!("  highest sustained rate, procedures/s");
    out!("    direct      {:>9.0}", r.direct_rate);
    out!(
        "    via steer   {:>9.0}   x{:.2} of direct",
        r.via_steer_rate,
        r.ratio
    );
    if let Some(n) = r.via_nginx_rate {
        out!(
            "    via nginx   {:>9.0}   x{} of direct",
            n,
            opt(r.nginx_ratio, 2)
        );
    }
    for p in &r.latency_points {
        let (d, s) = (&p.direct_latency_us, &p.via_steer_latency_us);
        out!("  at {:.0}/s  latency p50/p99/max us", p.rate);
        out!("    direct      {}/{}/{}", d.p50, d.p99, d.max);
        out!(
            "    via steer   {}/{}/{}   adds {} us at p50   cpu {} ns/signal",
            s.p50,
            s.p99,
            s.max,
            p.steer_added_p50_us,
            opt(p.steer_cpu_ns_per_signal, 0)
        );
        if let (Some(n), Some(a)) = (&p.via_nginx_latency_us, p.nginx_added_p50_us) {
            out!(
                "    via nginx   {}/{}/{}   adds {} us at p50   cpu {} ns/signal",
                n.p50,
                n.p99,
                n.max,
                a,
                opt(p.nginx_cpu_ns_per_signal, 0)
            );
            out!(
                "    steer / nginx: added p50 x{}, cpu per signal x{}",
                opt(p.steer_vs_nginx_added_p50, 2),
                opt(p.steer_vs_nginx_cpu, 2)
            );
        }
        out!(
            "    node on the direct path: cpu {} ns/signal",
            opt(p.direct_node_cpu_ns_per_signal, 0)
        );
    }
    match &r.instructions {
        Some(i) => {
            out!(
                "  instructions per signal (callgrind, user space, at {:.0}/s): steer {}, nginx {}, steer / nginx x{}",
                i.rate,
                opt(i.steer_per_signal, 0),
                opt(i.nginx_per_signal, 0),
                opt(i.steer_vs_nginx, 2)
            );
            for e in &i.errors {
                out!("    not counted: {e}");
            }
        }
        None => out!(
            "  instructions per signal: not counted (valgrind not installed, or --no-instructions)"
        ),
    }
    out!(
        "  load generator: {} tasks, {} cores in the highest-rate trial, {}",
        r.load_shards,
        opt(r.load_generator_cpu_cores_at_max, 2),
        if r.limited_by_load_generator.is_empty() {
            "never late when a trial failed".to_owned()
        } else {
            format!("late in failed trials of {:?}", r.limited_by_load_generator)
        }
    );
    let g = &r.goals;
    let yes = |b: bool| if b { "met" } else { "NOT met" };
    out!(
        "  goals: rate >= {} x direct {}; steer adds <= {} us at p50 {}; load generator not the limit {}",
        g.rate_ratio_at_least,
        yes(g.rate_ratio_met),
        g.added_p50_at_most_us,
        yes(g.added_p50_met),
        yes(g.load_generator_not_the_limit)
    );
}
