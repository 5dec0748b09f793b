//! `handoff bench move`: flags in, [`handoff_bench::MoveBench`] runs the contenders, the
//! report out (a JSON file, and a table or the JSON on stdout).

use crate::report::{human_bytes, progress_bar, write_json};
use anyhow::Context;
use handoff_bench::move_bench::STEPS;
use handoff_bench::report::{Contender, Detail, MoveDetail};
use handoff_bench::{Event, MoveBench, MoveBenchOptions, MoveBenchReport, Subject};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct MoveBenchArgs {
    /// UEs (sessions) each contender moves; each attaches first.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: u32,
    /// New procedures per second during each contender's measured phase (open loop).
    #[arg(long, default_value_t = 5_000.0)]
    pub rate: f64,
    /// Length of each contender's measured phase, in seconds (the move must fit in it).
    /// Default: 8 s, plus 1 s per 100k sessions above 100k.
    #[arg(long)]
    pub duration: Option<f64>,
    /// When each move starts, in seconds into the measured phase.
    #[arg(long, default_value_t = 1.0)]
    pub move_at: f64,
    /// Zipf exponent of UE popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Seed of the load generator (the same for every contender).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// First retransmission timeout in milliseconds (doubles per retry).
    #[arg(long, default_value_t = 250)]
    pub timeout_ms: u64,
    /// Pre-copy pauses after a round that moved fewer than this fraction of the sessions…
    #[arg(long, default_value_t = 0.01)]
    pub precopy_stop_fraction: f64,
    /// …or after this many rounds while serving (the full first copy included).
    #[arg(long, default_value_t = 5)]
    pub precopy_max_rounds: u32,
    /// Keys per Redis `MIGRATE … KEYS` command.
    #[arg(long, default_value_t = 1_000)]
    pub redis_batch: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-reports")]
    pub out: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The instance each contender moves (hosted on node-a at the start).
    #[arg(long, default_value = "mme-1")]
    pub instance: String,
    /// Its function (the load generator speaks S1AP-lite: `vmme`).
    #[arg(long, default_value = "vmme")]
    pub function: String,
}

impl MoveBenchArgs {
    fn options(&self) -> MoveBenchOptions {
        MoveBenchOptions {
            sessions: self.sessions,
            rate: self.rate,
            duration: self.duration,
            move_at: self.move_at,
            zipf: self.zipf,
            seed: self.seed,
            timeout_ms: self.timeout_ms,
            precopy_stop_fraction: self.precopy_stop_fraction,
            precopy_max_rounds: self.precopy_max_rounds,
            redis_batch: self.redis_batch,
        }
    }
}

/// A run's progress, on the progress bar.
fn show(pb: &indicatif::ProgressBar, e: Event<'_>) {
    match e {
        Event::Starting { step, name } => {
            pb.set_message(format!("{step}/{STEPS} {name}: starting nodes"))
        }
        Event::Load {
            step,
            name,
            progress: p,
        } => pb.set_message(format!(
            "{step}/{STEPS} {name}: {} sent {} answered {} lost {} attached {}",
            p.phase, p.sent, p.answered, p.lost, p.attached
        )),
        Event::Moving {
            name,
            subject,
            from,
            to,
        } => pb.println(format!(
            "{name}: moving {} from {from} to {to}",
            subject.instance
        )),
        Event::Oracle { step, name } => {
            pb.set_message(format!("{step}/{STEPS} {name}: oracle on the destination"))
        }
        Event::RawTcp { records, bytes } => pb.set_message(format!(
            "{}/{STEPS} raw TCP: {records} records, {}",
            STEPS - 1,
            human_bytes(bytes)
        )),
        Event::Redis { records } => pb.set_message(format!(
            "{STEPS}/{STEPS} redis MIGRATE: {records} records into redis A, then A -> B"
        )),
    }
}

pub async fn run(args: MoveBenchArgs) -> anyhow::Result<ExitCode> {
    let subject = Subject::new(&args.instance, &args.function);
    let config = args
        .options()
        .validate(&subject)
        .map_err(crate::report::config_error)?;
    let redis = handoff_bench::transfer::find_redis(&std::env::var_os("PATH").unwrap_or_default())?;
    let bench = MoveBench {
        config,
        subject,
        launcher: crate::node_launcher()?,
        catalog: Arc::new(crate::catalog()),
        redis,
    };
    let pb = progress_bar(0, "{spinner} {msg} [{elapsed_precise}]");
    pb.enable_steady_tick(Duration::from_millis(200));
    let shown = pb.clone();
    let report = bench.run(Arc::new(move |e| show(&shown, e))).await;
    pb.finish_and_clear();
    let path = write_json(&args.out, "bench-move", &report).context("cannot write the report")?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report, &path);
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// One line on how a contender went, from its detail.
fn summary(x: &Contender) -> Option<String> {
    let gap = x
        .baseline_gap_ms
        .map(|g| format!("; largest gap outside the move {g:.2} ms"))
        .unwrap_or_default();
    let move_ = match &x.detail {
        Detail::Loaded(d) => d.move_.as_ref(),
        Detail::RawTcp(_) | Detail::Redis(_) | Detail::None => None,
    };
    let tails = match (x.latency_during_move_us, x.latency_outside_move_us) {
        (Some(d), Some(o)) => format!(
            "\n      latency p99/p99.9/max during the move {}/{}/{} us, outside {}/{}/{} us; \
             retransmissions during the move {}",
            d.p99,
            d.p999,
            d.max,
            o.p99,
            o.p999,
            o.max,
            opt(x.move_retransmissions)
        ),
        _ => String::new(),
    };
    Some(match (&x.detail, move_) {
        (_, Some(MoveDetail::Live { report: m, .. })) => format!(
            "copy {} ms, digest match {}, buffered peak {} (mean {:.1}){gap}{tails}\n      \
             buffered wait p50/p99/max {}/{}/{} us; {} sessions sent on demand",
            m.phases_ms.copy,
            m.digest_match,
            m.buffered_peak,
            x.buffered_mean.unwrap_or(0.0),
            m.buffered_wait_us.p50,
            m.buffered_wait_us.p99,
            m.buffered_wait_us.max,
            m.demanded
        ),
        (_, Some(MoveDetail::Baseline(m))) => {
            let rounds: Vec<String> = m
                .rounds
                .iter()
                .map(|r| {
                    let n = r.records + r.tombstones;
                    if r.held {
                        format!("{n} held")
                    } else {
                        n.to_string()
                    }
                })
                .collect();
            format!(
                "records per round {}; signals held {} ms{gap}{tails}",
                rounds.join(" -> "),
                m.held_ms
            )
        }
        (Detail::RawTcp(d), None) => format!("{} bytes on the wire", d.wire_bytes),
        (Detail::Redis(d), None) => format!(
            "redis {}, {} MIGRATE commands, {} bytes read by redis B, {} keys on B",
            d.version, d.migrate_commands, d.wire_bytes, d.keys_on_b
        ),
        (Detail::Loaded(_) | Detail::None, None) => return None,
    })
}

fn print_human(r: &MoveBenchReport, path: &std::path::Path) {
    let c = &r.config;
    out!(
        "handoff bench move: {} sessions ({} of records), zipf {}, {:.0} procedures/s during each move",
        c.sessions,
        human_bytes(r.records_bytes),
        c.zipf,
        c.rate
    );
    out!(
        "{:<38} {:>9} {:>9} {:>11} {:>8} {:>5} {:>4} {:>5} {:>7}",
        "contender",
        "total ms",
        "pause ms",
        "bytes",
        "MB/s",
        "lost",
        "dup",
        "reord",
        "oracle"
    );
    for x in &r.contenders {
        if let Some(e) = &x.error {
            out!("{:<38} failed: {e}", x.name);
            continue;
        }
        out!(
            "{:<38} {:>9.1} {:>9} {:>11} {:>8.1} {:>5} {:>4} {:>5} {:>7}",
            x.name,
            x.total_ms,
            opt_f(x.pause_ms, 2),
            human_bytes(x.bytes_sent),
            x.throughput_mb_s,
            opt(x.lost),
            opt(x.duplicated),
            opt(x.reordered),
            x.oracle_mismatches.map_or_else(
                || "-".into(),
                |m| if m == 0 {
                    "ok".into()
                } else {
                    format!("{m} bad")
                }
            ),
        );
        if let Some(line) = summary(x) {
            out!("{:<6}{line}", "");
        }
        if x.move_outlasted_load {
            out!(
                "{:<38} (the move outlasted the measured phase: raise --duration)",
                ""
            );
        }
    }
    out!("  pause: longest gap between answers clients saw during the move; - : no load (d, e)");
    let q = &r.ratios;
    out!("ratios");
    out!(
        "  copy throughput, handoff / raw TCP          {}",
        opt_f(q.copy_throughput_handoff_over_raw_tcp, 3)
    );
    out!(
        "  pause, handoff / stop-and-copy              {}",
        opt_f(q.pause_handoff_over_stop_and_copy, 3)
    );
    out!(
        "  pause, handoff / pre-copy                   {}",
        opt_f(q.pause_handoff_over_pre_copy, 3)
    );
    out!(
        "  bytes, handoff / pre-copy                   {}",
        opt_f(q.bytes_handoff_over_pre_copy, 3)
    );
    out!(
        "  time, redis MIGRATE / handoff               {}",
        opt_f(q.redis_ms_over_handoff_ms, 3)
    );
    out!(
        "  move time, abort-safe / plain hot-first     {}",
        opt_f(q.move_ms_abort_safe_over_handoff, 3)
    );
    out!(
        "  pause, abort-safe / plain hot-first         {}",
        opt_f(q.pause_abort_safe_over_handoff, 3)
    );
    let h = &r.hot_first_vs_random;
    out!(
        "  buffered peak, random / hot-first           {}  ({} vs {})",
        opt_f(h.random_over_hot_first, 2),
        opt(h.random_buffered_peak),
        opt(h.hot_first_buffered_peak)
    );
    out!(
        "  buffered mean, random / hot-first           {}  ({} vs {}, sampled every 20 ms)",
        opt_f(h.mean_random_over_hot_first, 2),
        opt_f(h.random_buffered_mean, 1),
        opt_f(h.hot_first_buffered_mean, 1)
    );
    out!(
        "  waiting for records peak, random / hot-first {}  ({} vs {}, after the manifest)",
        opt_f(h.for_records_peak_random_over_hot_first, 2),
        opt(h.random_buffered_for_records_peak),
        opt(h.hot_first_buffered_for_records_peak)
    );
    out!("  report: {}", path.display());
}
