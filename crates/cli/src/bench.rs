//! `handoff bench …`: programs that run contenders side by side and print ratios.

use crate::cluster::{start_steer, NodeProcess};
use crate::report::{progress_bar, write_json, Machine};
use anyhow::Context;
use clap::Subcommand;
use handoff_loadgen::{LatencyReport, LoadConfig};
use std::net::SocketAddr;
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

#[derive(Clone, Debug, serde::Serialize)]
struct Trial {
    contender: &'static str,
    offered_rate: f64,
    measured_rate: f64,
    lost: u64,
    duplicated: u64,
    skipped_busy: u64,
    latency_us: LatencyReport,
    sustained: bool,
}

#[derive(Debug, serde::Serialize)]
struct SteerBenchReport {
    via_steer_rate: f64,
    direct_rate: f64,
    ratio: f64,
    p99_bound_ms: f64,
    common_rate: f64,
    via_steer_latency_us: LatencyReport,
    direct_latency_us: LatencyReport,
    trials: Vec<Trial>,
    sessions_per_trial: u32,
    trial_secs: f64,
    note: &'static str,
    machine: Machine,
}

struct Bench {
    args: SteerBenchArgs,
    trials: Vec<Trial>,
    next_imsi: u64,
    pb: indicatif::ProgressBar,
}

impl Bench {
    async fn trial(
        &mut self,
        contender: &'static str,
        target: SocketAddr,
        rate: f64,
    ) -> anyhow::Result<Trial> {
        self.pb.set_message(format!("{contender} at {rate:.0}/s"));
        let cfg = LoadConfig {
            target,
            sessions: self.args.sessions,
            rate,
            duration: Duration::from_secs_f64(self.args.trial_secs),
            zipf: self.args.zipf,
            seed: self.trials.len() as u64 + 1,
            imsi_base: self.next_imsi,
            timeout: Duration::from_millis(100),
            retries: 3,
            ..LoadConfig::default()
        };
        self.next_imsi += u64::from(self.args.sessions);
        let (r, _) = handoff_loadgen::run(cfg, |_| {}).await?;
        let sustained = r.lost == 0
            && r.duplicated == 0
            && (r.latency_us.p99 as f64) <= self.args.p99_bound_ms * 1e3
            && r.measured_rate >= 0.95 * rate;
        let t = Trial {
            contender,
            offered_rate: rate,
            measured_rate: r.measured_rate,
            lost: r.lost,
            duplicated: r.duplicated,
            skipped_busy: r.skipped_busy,
            latency_us: r.latency_us,
            sustained,
        };
        self.pb.inc(1);
        self.trials.push(t.clone());
        Ok(t)
    }

    /// The highest rate `target` sustains: a doubling ladder, then bisection.
    async fn max_rate(
        &mut self,
        contender: &'static str,
        target: SocketAddr,
    ) -> anyhow::Result<f64> {
        let mut good = 0.0;
        let mut bad = None;
        let mut rate = self.args.start_rate;
        while rate <= self.args.max_rate {
            if self.trial(contender, target, rate).await?.sustained {
                good = rate;
                rate *= 2.0;
            } else {
                bad = Some(rate);
                break;
            }
        }
        if let Some(mut hi) = bad {
            let mut lo = good;
            for _ in 0..self.args.refine {
                let mid = (lo + hi) / 2.0;
                if self.trial(contender, target, mid).await?.sustained {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            good = lo;
        }
        Ok(good)
    }
}

pub async fn run(b: BenchCmd) -> anyhow::Result<ExitCode> {
    match b {
        BenchCmd::Steer(a) => steer(a).await,
        BenchCmd::Move(a) => crate::bench_move::run(a).await,
    }
}

async fn steer(args: SteerBenchArgs) -> anyhow::Result<ExitCode> {
    let finite_pos = |v: f64| v.is_finite() && v > 0.0;
    if !(finite_pos(args.start_rate)
        && finite_pos(args.max_rate)
        && args.start_rate <= args.max_rate)
    {
        anyhow::bail!("--start-rate and --max-rate must be positive with start <= max");
    }
    if !(finite_pos(args.trial_secs) && args.trial_secs <= 3600.0) {
        anyhow::bail!("--trial-secs must be within (0, 3600]");
    }
    if !finite_pos(args.p99_bound_ms) {
        anyhow::bail!("--p99-bound-ms must be positive");
    }
    let node = NodeProcess::spawn(
        "node-bench",
        &["mme-steer:vmme", "mme-direct:vmme"],
        Some("mme-direct"),
    )
    .await?;
    let direct = node
        .direct
        .context("the node did not report its direct address")?;
    let (steer, via_steer) = start_steer("mme-steer", node.addr).await?;
    let pb = progress_bar(0, "{spinner} trial {pos} {msg} [{elapsed_precise}]");
    pb.enable_steady_tick(Duration::from_millis(200));
    let mut bench = Bench {
        args: args.clone(),
        trials: Vec::new(),
        next_imsi: 1_010_000_000_001,
        pb,
    };
    let via_steer_rate = bench.max_rate("via_steer", via_steer).await?;
    let direct_rate = bench.max_rate("direct", direct).await?;
    let common_rate = (via_steer_rate.min(direct_rate) / 2.0).max(args.start_rate / 2.0);
    let s = bench.trial("via_steer", via_steer, common_rate).await?;
    let d = bench.trial("direct", direct, common_rate).await?;
    bench.pb.finish_and_clear();
    steer.shutdown();
    node.stop().await;
    let report = SteerBenchReport {
        via_steer_rate,
        direct_rate,
        ratio: if direct_rate > 0.0 {
            via_steer_rate / direct_rate
        } else {
            0.0
        },
        p99_bound_ms: args.p99_bound_ms,
        common_rate,
        via_steer_latency_us: s.latency_us,
        direct_latency_us: d.latency_us,
        trials: bench.trials,
        sessions_per_trial: args.sessions,
        trial_secs: args.trial_secs,
        note: "rates are new procedures per second started open-loop by one load-generator task; \
               steer and load generator share this process, the node is a child process; \
               all on loopback",
        machine: Machine::read(),
    };
    let path = write_json(&args.out, "bench-steer", &report)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!(
            "handoff bench steer  (sustained = no loss, p99 <= {} ms)",
            args.p99_bound_ms
        );
        out!("  via steer   {:>9.0} procedures/s", report.via_steer_rate);
        out!("  direct      {:>9.0} procedures/s", report.direct_rate);
        out!("  ratio       {:>9.2}", report.ratio);
        out!(
            "  at {:.0}/s   p50/p99/max us: steer {}/{}/{}  direct {}/{}/{}",
            common_rate,
            s.latency_us.p50,
            s.latency_us.p99,
            s.latency_us.max,
            d.latency_us.p50,
            d.latency_us.p99,
            d.latency_us.max
        );
        out!("  report: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
