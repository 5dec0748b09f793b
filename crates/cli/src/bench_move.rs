//! `handoff bench move`: the live move side by side with stop-and-copy, iterative pre-copy, a
//! raw TCP transfer of the same bytes and Redis `MIGRATE`, in one run on the same sessions.
//!
//! Each contender with load runs on a freshly started pair of nodes behind a fresh steer: the
//! load generator attaches every UE, starts procedures open-loop, and the contender moves
//! `mme-1` from node-a to node-b `--move-at` seconds into the measured phase. The pause is the
//! longest gap between answers the clients saw while the move ran; afterwards the oracle checks
//! the destination's state. The raw TCP transfer and Redis receive the records the live move's
//! destination ended with (no load: there is nobody to answer).

use crate::cluster::{start_steer, NodeProcess};
use crate::moves::{baseline_move, live_move, PreCopyRule};
use crate::report::{human_bytes, progress_bar, write_json, Machine};
use crate::resp::{encode_command, Conn, Reply};
use anyhow::Context;
use handoff_loadgen::oracle::{self, OracleReport};
use handoff_loadgen::{LoadConfig, LoadReport, Progress};
use handoff_node::client::AdminClient;
use handoff_state::{CopyOrder, RecordView};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// One contender's figures. Load figures are `None` for contenders run without load.
#[derive(Debug, Default, serde::Serialize)]
struct Contender {
    id: &'static str,
    name: &'static str,
    under_load: bool,
    /// Time of the move (or transfer), ms.
    total_ms: f64,
    /// Longest gap between answers clients saw during the move, ms.
    pause_ms: Option<f64>,
    /// The same statistic outside the move, ms.
    baseline_gap_ms: Option<f64>,
    /// Record bytes sent (keys and values; a tombstone counts its key).
    bytes_sent: u64,
    /// Records sent (tombstones included).
    records: u64,
    /// `bytes_sent` per second of `total_ms`, in 10^6 bytes.
    throughput_mb_s: f64,
    lost: Option<u64>,
    duplicated: Option<u64>,
    reordered: Option<u64>,
    wrong_answers: Option<u64>,
    stray: Option<u64>,
    retransmissions: Option<u64>,
    /// The oracle on the destination after the move.
    oracle_checked: Option<u64>,
    oracle_mismatches: Option<u64>,
    answer_mismatches: Option<u64>,
    unverifiable: Option<u64>,
    /// Records the receiver did not end up with (no-load contenders).
    records_missing: Option<u64>,
    /// Most signals the destination buffered at once (live move only).
    buffered_peak: Option<u64>,
    /// Most signals it buffered at once waiting for their session's record, after the
    /// manifest arrived: the part the copy order decides (live move only).
    buffered_for_records_peak: Option<u64>,
    /// Signals the destination held buffered on average while it was a shadow, sampled every
    /// 20 ms (live move only).
    buffered_mean: Option<f64>,
    /// The move was still running when the measured phase ended (lengthen `--duration`).
    move_outlasted_load: bool,
    error: Option<String>,
    note: &'static str,
    detail: serde_json::Value,
}

impl Contender {
    fn clean(&self) -> bool {
        self.error.is_none()
            && [
                self.lost,
                self.duplicated,
                self.reordered,
                self.wrong_answers,
                self.oracle_mismatches,
                self.answer_mismatches,
                self.records_missing,
            ]
            .iter()
            .all(|v| v.unwrap_or(0) == 0)
    }
}

/// The ratios the issue asks for; `None` where a denominator is zero or missing.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
struct Ratios {
    /// Handoff's copy-phase throughput over the raw TCP transfer's.
    copy_throughput_handoff_over_raw_tcp: Option<f64>,
    /// Handoff's pause over stop-and-copy's.
    pause_handoff_over_stop_and_copy: Option<f64>,
    /// Handoff's pause over pre-copy's.
    pause_handoff_over_pre_copy: Option<f64>,
    /// Bytes handoff sent over bytes pre-copy sent.
    bytes_handoff_over_pre_copy: Option<f64>,
    /// Redis `MIGRATE` time over handoff's move time.
    redis_ms_over_handoff_ms: Option<f64>,
    /// Peak buffered updates with random copy order over hot-first.
    buffered_peak_random_over_hot_first: Option<f64>,
    /// Mean buffered updates (sampled) with random copy order over hot-first.
    buffered_mean_random_over_hot_first: Option<f64>,
    /// Peak updates buffered waiting for their session's record (after the manifest), random
    /// copy order over hot-first: the effect of the order alone.
    buffered_for_records_peak_random_over_hot_first: Option<f64>,
}

/// `num / den`, or `None` when that is not a finite number.
fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    let (n, d) = (num?, den?);
    (d > 0.0 && n.is_finite() && d.is_finite()).then(|| n / d)
}

/// The figures ratios are computed from, by contender.
#[derive(Default)]
struct RatioInputs {
    handoff_copy_mb_s: Option<f64>,
    raw_mb_s: Option<f64>,
    handoff_pause: Option<f64>,
    stop_pause: Option<f64>,
    pre_pause: Option<f64>,
    handoff_bytes: Option<f64>,
    pre_bytes: Option<f64>,
    handoff_ms: Option<f64>,
    redis_ms: Option<f64>,
    hot_peak: Option<f64>,
    random_peak: Option<f64>,
    hot_mean: Option<f64>,
    random_mean: Option<f64>,
    hot_for_records_peak: Option<f64>,
    random_for_records_peak: Option<f64>,
}

impl RatioInputs {
    fn ratios(&self) -> Ratios {
        Ratios {
            copy_throughput_handoff_over_raw_tcp: ratio(self.handoff_copy_mb_s, self.raw_mb_s),
            pause_handoff_over_stop_and_copy: ratio(self.handoff_pause, self.stop_pause),
            pause_handoff_over_pre_copy: ratio(self.handoff_pause, self.pre_pause),
            bytes_handoff_over_pre_copy: ratio(self.handoff_bytes, self.pre_bytes),
            redis_ms_over_handoff_ms: ratio(self.redis_ms, self.handoff_ms),
            buffered_peak_random_over_hot_first: ratio(self.random_peak, self.hot_peak),
            buffered_mean_random_over_hot_first: ratio(self.random_mean, self.hot_mean),
            buffered_for_records_peak_random_over_hot_first: ratio(
                self.random_for_records_peak,
                self.hot_for_records_peak,
            ),
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct HotFirstVsRandom {
    hot_first_buffered_peak: Option<u64>,
    random_buffered_peak: Option<u64>,
    random_over_hot_first: Option<f64>,
    hot_first_buffered_mean: Option<f64>,
    random_buffered_mean: Option<f64>,
    mean_random_over_hot_first: Option<f64>,
    hot_first_buffered_for_records_peak: Option<u64>,
    random_buffered_for_records_peak: Option<u64>,
    for_records_peak_random_over_hot_first: Option<f64>,
    note: &'static str,
}

#[derive(Debug, serde::Serialize)]
struct MoveBenchReport {
    contenders: Vec<Contender>,
    ratios: Ratios,
    hot_first_vs_random: HotFirstVsRandom,
    /// Handoff's copy phase alone (bytes over copy-phase time), 10^6 bytes/s.
    handoff_copy_throughput_mb_s: Option<f64>,
    records_bytes: u64,
    config: BenchConfig,
    notes: Vec<&'static str>,
    machine: Machine,
}

#[derive(Debug, serde::Serialize)]
struct BenchConfig {
    sessions: u32,
    rate: f64,
    duration_s: f64,
    move_at_s: f64,
    zipf: f64,
    seed: u64,
    timeout_ms: u64,
    precopy: PreCopyRule,
    redis_batch: usize,
}

const NO_LOAD_NOTE: &str = "no load: a bulk transfer of the same records with nobody to answer, \
                            so pause and answer counts do not apply (null)";

fn mb_s(bytes: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        bytes as f64 / 1e6 / (ms / 1e3)
    } else {
        0.0
    }
}

/// 8 s, plus 1 s per 100k sessions above 100k (a 1M-session move takes several seconds).
fn default_duration(sessions: u32) -> f64 {
    8.0 + (f64::from(sessions) / 100_000.0 - 1.0).max(0.0)
}

fn secs_ok(v: f64, max: f64) -> bool {
    v.is_finite() && (0.0..=max).contains(&v)
}

/// How long the move window stays open after a move returns.
const WINDOW_GRACE: Duration = Duration::from_millis(300);

/// How a loaded contender moves the instance.
#[derive(Clone, Copy)]
enum Mover {
    Live(CopyOrder),
    Baseline(Option<PreCopyRule>),
}

/// What a loaded run produced.
struct Loaded {
    contender: Contender,
    dump: Vec<RecordView>,
    copy_ms: Option<u64>,
}

pub async fn run(args: MoveBenchArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        anyhow::bail!("--rate must be positive");
    }
    let duration = args
        .duration
        .unwrap_or_else(|| default_duration(args.sessions));
    if !secs_ok(duration, 3600.0) || duration == 0.0 {
        anyhow::bail!("--duration must be within (0, 3600] seconds");
    }
    let args = MoveBenchArgs {
        duration: Some(duration),
        ..args
    };
    if !(secs_ok(args.move_at, 3600.0) && args.move_at < duration) {
        anyhow::bail!("--move-at must be within [0, --duration)");
    }
    if !(args.precopy_stop_fraction.is_finite()
        && (0.0..=1.0).contains(&args.precopy_stop_fraction))
    {
        anyhow::bail!("--precopy-stop-fraction must be within [0, 1]");
    }
    if !(1..=100).contains(&args.precopy_max_rounds) {
        anyhow::bail!("--precopy-max-rounds must be within 1..=100");
    }
    if !(1..=100_000).contains(&args.redis_batch) {
        anyhow::bail!("--redis-batch must be within 1..=100000");
    }
    if args.sessions == 0 {
        anyhow::bail!("--sessions must be at least 1");
    }
    let redis = find_redis()?;
    let rule = PreCopyRule {
        stop_fraction: args.precopy_stop_fraction,
        max_rounds: args.precopy_max_rounds,
    };
    let pb = progress_bar(0, "{spinner} {msg} [{elapsed_precise}]");
    pb.enable_steady_tick(Duration::from_millis(200));
    let plan: [(&'static str, &'static str, Mover); 4] = [
        (
            "handoff",
            "(a) handoff live move, hot-first",
            Mover::Live(CopyOrder::HotFirst),
        ),
        (
            "handoff_random",
            "(a') handoff live move, random order",
            Mover::Live(CopyOrder::Random { seed: args.seed }),
        ),
        ("stop_and_copy", "(b) stop-and-copy", Mover::Baseline(None)),
        (
            "pre_copy",
            "(c) iterative pre-copy",
            Mover::Baseline(Some(rule)),
        ),
    ];
    let mut contenders = Vec::new();
    let mut records: Option<Vec<RecordView>> = None;
    let mut handoff_copy_ms = None;
    for (i, (id, name, mover)) in plan.into_iter().enumerate() {
        pb.set_message(format!("{}/6 {name}: starting nodes", i + 1));
        let r = loaded_run(&args, id, name, mover, &pb).await;
        match r {
            Ok(l) => {
                if id == "handoff" {
                    handoff_copy_ms = l.copy_ms;
                }
                if records.is_none() && l.contender.error.is_none() && !l.dump.is_empty() {
                    records = Some(l.dump);
                }
                contenders.push(l.contender);
            }
            Err(e) => contenders.push(Contender {
                id,
                name,
                under_load: true,
                error: Some(format!("{e:#}")),
                ..Contender::default()
            }),
        }
    }
    let records = records.unwrap_or_default();
    let records_bytes: u64 = records
        .iter()
        .map(|r| (r.key.len() + r.bytes.len()) as u64)
        .sum();
    pb.set_message(format!(
        "5/6 raw TCP: {} records, {}",
        records.len(),
        human_bytes(records_bytes)
    ));
    contenders.push(raw_tcp_contender(&records).await);
    pb.set_message(format!(
        "6/6 redis MIGRATE: {} records into redis A, then A -> B",
        records.len()
    ));
    contenders.push(redis_contender(&redis, &records, args.redis_batch).await);
    pb.finish_and_clear();

    let by = |id: &str| contenders.iter().find(|c| c.id == id && c.error.is_none());
    let handoff_copy_mb_s = match (by("handoff"), handoff_copy_ms) {
        (Some(c), Some(ms)) => Some(mb_s(c.bytes_sent, ms.max(1) as f64)),
        _ => None,
    };
    let inputs = RatioInputs {
        handoff_copy_mb_s,
        raw_mb_s: by("raw_tcp").map(|c| c.throughput_mb_s),
        handoff_pause: by("handoff").and_then(|c| c.pause_ms),
        stop_pause: by("stop_and_copy").and_then(|c| c.pause_ms),
        pre_pause: by("pre_copy").and_then(|c| c.pause_ms),
        handoff_bytes: by("handoff").map(|c| c.bytes_sent as f64),
        pre_bytes: by("pre_copy").map(|c| c.bytes_sent as f64),
        handoff_ms: by("handoff").map(|c| c.total_ms),
        redis_ms: by("redis").map(|c| c.total_ms),
        hot_peak: by("handoff")
            .and_then(|c| c.buffered_peak)
            .map(|v| v as f64),
        random_peak: by("handoff_random")
            .and_then(|c| c.buffered_peak)
            .map(|v| v as f64),
        hot_mean: by("handoff").and_then(|c| c.buffered_mean),
        random_mean: by("handoff_random").and_then(|c| c.buffered_mean),
        hot_for_records_peak: by("handoff")
            .and_then(|c| c.buffered_for_records_peak)
            .map(|v| v as f64),
        random_for_records_peak: by("handoff_random")
            .and_then(|c| c.buffered_for_records_peak)
            .map(|v| v as f64),
    };
    let ratios = inputs.ratios();
    let hot_first_vs_random = HotFirstVsRandom {
        hot_first_buffered_peak: by("handoff").and_then(|c| c.buffered_peak),
        random_buffered_peak: by("handoff_random").and_then(|c| c.buffered_peak),
        random_over_hot_first: ratios.buffered_peak_random_over_hot_first,
        hot_first_buffered_mean: inputs.hot_mean,
        random_buffered_mean: inputs.random_mean,
        mean_random_over_hot_first: ratios.buffered_mean_random_over_hot_first,
        hot_first_buffered_for_records_peak: by("handoff")
            .and_then(|c| c.buffered_for_records_peak),
        random_buffered_for_records_peak: by("handoff_random")
            .and_then(|c| c.buffered_for_records_peak),
        for_records_peak_random_over_hot_first: ratios
            .buffered_for_records_peak_random_over_hot_first,
        note: "the peak includes every signal the destination buffered before the source's \
               manifest reached it, whatever the copy order; the for-records peak counts only \
               updates buffered after it, waiting for their session's record (the order's \
               effect); the mean (sampled every 20 ms) also shows how fast each order drains \
               the buffers",
    };
    let report = MoveBenchReport {
        contenders,
        ratios,
        hot_first_vs_random,
        handoff_copy_throughput_mb_s: handoff_copy_mb_s,
        records_bytes,
        config: BenchConfig {
            sessions: args.sessions,
            rate: args.rate,
            duration_s: duration,
            move_at_s: args.move_at,
            zipf: args.zipf,
            seed: args.seed,
            timeout_ms: args.timeout_ms,
            precopy: rule,
            redis_batch: args.redis_batch,
        },
        notes: vec![
            "every contender with load runs on a fresh pair of node processes behind a fresh \
             in-process steer, with the same sessions, seed and load; all on loopback",
            "pause_ms: the longest gap between consecutive answers the clients saw while the \
             move ran (open-loop load at `rate`); baseline_gap_ms is the same outside it",
            "bytes_sent counts record keys and values (a tombstone counts its key), not framing",
            "copy_throughput_handoff_over_raw_tcp uses handoff's copy phase alone",
            "raw_tcp and redis move the records the hot-first live move's destination ended with",
            "redis: records loaded into redis A with pipelined SET, then timed: pipelined \
             MIGRATE … KEYS in batches to redis B; detail.wire_bytes is what redis B read",
        ],
        machine: Machine::read(),
    };
    let path = write_json(&args.out, "bench-move", &report)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report, &path);
    }
    let handoff_clean = report
        .contenders
        .iter()
        .filter(|c| c.id.starts_with("handoff"))
        .all(Contender::clean);
    let all_ran = report.contenders.iter().all(|c| c.error.is_none());
    Ok(if handoff_clean && all_ran {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Runs one contender under load on fresh nodes.
async fn loaded_run(
    args: &MoveBenchArgs,
    id: &'static str,
    name: &'static str,
    mover: Mover,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<Loaded> {
    let duration = args
        .duration
        .unwrap_or_else(|| default_duration(args.sessions));
    let node_a = NodeProcess::spawn("node-a", &["mme-1:vmme"], None).await?;
    let node_b = NodeProcess::spawn("node-b", &[], None).await?;
    let (steer, service) = start_steer("mme-1", node_a.addr).await?;
    let window = Arc::new(AtomicBool::new(false));
    let cfg = LoadConfig {
        target: service,
        sessions: args.sessions,
        rate: args.rate,
        duration: Duration::from_secs_f64(duration),
        zipf: args.zipf,
        seed: args.seed,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        move_window: Some(window.clone()),
        ..LoadConfig::default()
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let attach_deadline = cfg.attach_deadline;
    let (phase_tx, mut phase_rx) = tokio::sync::watch::channel("attach");
    let pb2 = pb.clone();
    let step = plan_step(id);
    let load = tokio::spawn(handoff_loadgen::run(cfg, move |p: Progress| {
        pb2.set_message(format!(
            "{step}/6 {name}: {} sent {} answered {} lost {} attached {}",
            p.phase, p.sent, p.answered, p.lost, p.attached
        ));
        let _ = phase_tx.send(p.phase);
    }));
    // Wait for the measured phase (bounded by the attach deadline), then for `move_at`.
    let waited = tokio::time::timeout(attach_deadline + Duration::from_secs(30), async {
        while *phase_rx.borrow() == "attach" {
            if phase_rx.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    let measure_seen = Instant::now();
    let mut outcome: anyhow::Result<(serde_json::Value, MoveFigures)> =
        Err(anyhow::anyhow!("the load never reached its measured phase"));
    let mut move_ms = 0.0;
    if waited.is_ok() && *phase_rx.borrow() == "measure" {
        tokio::time::sleep(Duration::from_secs_f64(args.move_at)).await;
        pb.println(format!("{name}: moving mme-1 from node-a to node-b"));
        window.store(true, Ordering::Relaxed);
        let t = Instant::now();
        outcome = match mover {
            Mover::Live(order) => {
                let stop = Arc::new(AtomicBool::new(false));
                let sampler = tokio::spawn(sample_buffered(node_b.addr, stop.clone()));
                let moved = live_move(&steer, node_a.addr, node_b.addr, order).await;
                stop.store(true, Ordering::Relaxed);
                let samples = sampler.await.unwrap_or_default();
                moved.and_then(|m| {
                    let fig = MoveFigures {
                        bytes: m.bytes_copied + m.tombstones * key_len(),
                        records: m.records_copied,
                        buffered_peak: Some(m.buffered_peak),
                        buffered_for_records_peak: Some(m.buffered_for_records_peak),
                        buffered_mean: Some(samples.mean),
                        copy_ms: Some(m.phases_ms.copy),
                    };
                    let mut v = serde_json::to_value(&m)?;
                    v["buffered_samples"] = serde_json::to_value(&samples)?;
                    Ok((v, fig))
                })
            }
            Mover::Baseline(rule) => baseline_move(&steer, node_a.addr, node_b.addr, rule)
                .await
                .and_then(|m| {
                    let fig = MoveFigures {
                        bytes: m.bytes_copied,
                        records: m.records_copied + m.tombstones,
                        buffered_peak: None,
                        buffered_for_records_peak: None,
                        buffered_mean: None,
                        copy_ms: None,
                    };
                    Ok((serde_json::to_value(&m)?, fig))
                }),
        };
        move_ms = t.elapsed().as_secs_f64() * 1e3;
        // Answers to signals held during the move arrive just after it: keep the window open
        // long enough for them to count towards the move's pause.
        tokio::time::sleep(WINDOW_GRACE).await;
        window.store(false, Ordering::Relaxed);
    }
    // The first progress report of the measured phase comes up to 0.5 s into it.
    let outlasted = measure_seen.elapsed().as_secs_f64() > duration - 0.5 && outcome.is_ok();
    let (load, histories) = load.await??;
    let moved = outcome.is_ok();
    let owner = if moved { node_b.addr } else { node_a.addr };
    pb.set_message(format!("{step}/6 {name}: oracle on the destination"));
    let dump = AdminClient::connect(owner, "bench")
        .await?
        .dump("mme-1")
        .await?;
    let oracle = oracle::check(&handoff_vmme::Vmme::default(), &histories, &dump);
    steer.shutdown();
    node_a.stop().await;
    node_b.stop().await;
    let (detail, fig, error) = match outcome {
        Ok((mut d, f)) => {
            // The move reports leave the client-side gaps to whoever ran the load.
            d["max_response_gap_ms"] = load.move_response_gap_ms.into();
            d["baseline_response_gap_ms"] = load.baseline_response_gap_ms.into();
            (d, f, None)
        }
        Err(e) => (
            serde_json::Value::Null,
            MoveFigures::default(),
            Some(format!("{e:#}")),
        ),
    };
    let contender = loaded_contender(
        id, name, &load, &oracle, move_ms, &fig, outlasted, error, detail,
    );
    Ok(Loaded {
        contender,
        dump: if moved { dump } else { Vec::new() },
        copy_ms: fig.copy_ms,
    })
}

#[derive(Default)]
struct MoveFigures {
    bytes: u64,
    records: u64,
    buffered_peak: Option<u64>,
    buffered_for_records_peak: Option<u64>,
    buffered_mean: Option<f64>,
    copy_ms: Option<u64>,
}

/// How often the destination's buffered signals are sampled during a live move.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Most samples taken (20 minutes' worth).
const MAX_SAMPLES: usize = 60_000;

/// The destination's buffered signals over a live move, sampled from its shadow counters.
#[derive(Debug, Default, serde::Serialize)]
struct BufferedSamples {
    interval_ms: u64,
    /// Largest `buffered` sampled.
    peak: u64,
    /// Mean `buffered` over the samples taken while the destination was a shadow.
    mean: f64,
    /// `[ms since sampling began, buffered, awaiting]`.
    samples: Vec<[u64; 3]>,
}

impl BufferedSamples {
    fn summarize(&mut self) {
        self.peak = self.samples.iter().map(|s| s[1]).max().unwrap_or(0);
        self.mean = if self.samples.is_empty() {
            0.0
        } else {
            self.samples.iter().map(|s| s[1] as f64).sum::<f64>() / self.samples.len() as f64
        };
    }
}

/// Samples the shadow counters of `mme-1` on `node` until `stop` (bounded by [`MAX_SAMPLES`]).
async fn sample_buffered(node: SocketAddr, stop: Arc<AtomicBool>) -> BufferedSamples {
    let mut out = BufferedSamples {
        interval_ms: SAMPLE_EVERY.as_millis() as u64,
        ..BufferedSamples::default()
    };
    let Ok(mut admin) = AdminClient::connect(node, "bench-sampler").await else {
        return out;
    };
    let start = Instant::now();
    let ask = handoff_node::AdminRequest::ShadowStats {
        instance: "mme-1".into(),
    };
    for _ in 0..MAX_SAMPLES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Before the prepare the instance is unknown, after the finish it is no shadow: skip.
        if let Ok(v) = admin.request(&ask).await {
            if let (Some(b), Some(a)) = (v["buffered"].as_u64(), v["awaiting"].as_u64()) {
                out.samples.push([start.elapsed().as_millis() as u64, b, a]);
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    out.summarize();
    out
}

fn plan_step(id: &str) -> usize {
    match id {
        "handoff" => 1,
        "handoff_random" => 2,
        "stop_and_copy" => 3,
        _ => 4,
    }
}

fn key_len() -> u64 {
    handoff_vmme::session_key(0).len() as u64
}

#[allow(clippy::too_many_arguments)]
fn loaded_contender(
    id: &'static str,
    name: &'static str,
    load: &LoadReport,
    oracle: &OracleReport,
    move_ms: f64,
    fig: &MoveFigures,
    outlasted: bool,
    error: Option<String>,
    detail: serde_json::Value,
) -> Contender {
    Contender {
        id,
        name,
        under_load: true,
        total_ms: move_ms,
        pause_ms: Some(load.move_response_gap_ms),
        baseline_gap_ms: Some(load.baseline_response_gap_ms),
        bytes_sent: fig.bytes,
        records: fig.records,
        throughput_mb_s: mb_s(fig.bytes, move_ms),
        lost: Some(load.lost),
        duplicated: Some(load.duplicated),
        reordered: Some(load.reordered),
        wrong_answers: Some(load.wrong_answers),
        stray: Some(load.stray),
        retransmissions: Some(load.retransmissions),
        oracle_checked: Some(oracle.checked),
        oracle_mismatches: Some(oracle.mismatches),
        answer_mismatches: Some(oracle.answer_mismatches),
        unverifiable: Some(oracle.unverifiable),
        records_missing: None,
        buffered_peak: fig.buffered_peak,
        buffered_for_records_peak: fig.buffered_for_records_peak,
        buffered_mean: fig.buffered_mean,
        move_outlasted_load: outlasted,
        error,
        note: match id {
            "stop_and_copy" => "signals held at the steer while everything is copied",
            "pre_copy" => {
                "copy everything while serving, re-copy what changed, then hold and copy the rest"
            }
            _ => "no pause: signals keep flowing; hot sessions first unless random",
        },
        detail: serde_json::json!({ "move": detail, "load": load, "oracle_examples": oracle.examples }),
    }
}

/// (d) The same records over one loopback TCP connection: a plain write loop with a length
/// prefix per record (`u32` length, `u8` key length, key, value) and a read loop.
async fn raw_tcp_contender(records: &[RecordView]) -> Contender {
    let mut c = Contender {
        id: "raw_tcp",
        name: "(d) raw TCP, loopback",
        note: NO_LOAD_NOTE,
        ..Contender::default()
    };
    // Cheap: the record bytes are shared, not copied.
    let owned = records.to_vec();
    match tokio::task::spawn_blocking(move || raw_tcp(&owned)).await {
        Ok(Ok(r)) => {
            c.total_ms = r.ms;
            c.bytes_sent = r.bytes_sent;
            c.records = r.records_sent;
            c.throughput_mb_s = mb_s(r.bytes_sent, r.ms);
            c.records_missing = Some(r.records_sent - r.records_received);
            c.detail = serde_json::json!({
                "wire_bytes": r.wire_bytes,
                "bytes_received": r.bytes_received,
            });
        }
        Ok(Err(e)) => c.error = Some(format!("{e:#}")),
        Err(e) => c.error = Some(e.to_string()),
    }
    c
}

struct RawResult {
    ms: f64,
    records_sent: u64,
    records_received: u64,
    bytes_sent: u64,
    bytes_received: u64,
    wire_bytes: u64,
}

fn raw_tcp(records: &[RecordView]) -> anyhow::Result<RawResult> {
    use std::io::{BufReader, BufWriter, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let expected = records.len() as u64;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let (s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut r = BufReader::with_capacity(1 << 20, s);
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut body = Vec::new();
        let mut len = [0u8; 4];
        while count < expected {
            r.read_exact(&mut len)?;
            let n = u32::from_be_bytes(len) as usize;
            if n == 0 || n > 64 << 20 {
                return Err(std::io::Error::other("bad record length"));
            }
            body.resize(n, 0);
            r.read_exact(&mut body)?;
            count += 1;
            bytes += (n - 1) as u64;
        }
        Ok((count, bytes))
    });
    let start = Instant::now();
    let s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut w = BufWriter::with_capacity(1 << 20, s);
    let (mut bytes_sent, mut wire_bytes) = (0u64, 0u64);
    for RecordView {
        key, bytes: value, ..
    } in records
    {
        let key_len = u8::try_from(key.len()).context("key longer than 255 bytes")?;
        let n = 1 + key.len() + value.len();
        w.write_all(&(n as u32).to_be_bytes())?;
        w.write_all(&[key_len])?;
        w.write_all(key)?;
        w.write_all(value)?;
        bytes_sent += (key.len() + value.len()) as u64;
        wire_bytes += 4 + n as u64;
    }
    w.flush()?;
    let (records_received, bytes_received) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    Ok(RawResult {
        ms: start.elapsed().as_secs_f64() * 1e3,
        records_sent: expected,
        records_received,
        bytes_sent,
        bytes_received,
        wire_bytes,
    })
}

/// The `redis-server` executable on `PATH`, or a clear error.
fn find_redis() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .context(
            "redis-server not found on PATH: `handoff bench move` runs Redis MIGRATE as a \
             contender; install it with scripts/setup (Debian package redis-server)",
        )
}

/// A `redis-server` child process on a loopback port with its own temporary directory.
struct RedisServer {
    child: tokio::process::Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl RedisServer {
    async fn start(exe: &std::path::Path, name: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "handoff-bench-redis-{}-{name}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = tokio::process::Command::new(exe)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut server = Self {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = Conn::connect(server.addr, Duration::from_secs(2)).await {
                if matches!(c.call(&[b"PING"]).await, Ok(Reply::Simple(ref s)) if s == "PONG") {
                    return Ok(server);
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.stop().await;
                anyhow::bail!("redis-server {name} exited at start ({status})");
            }
            if Instant::now() > deadline {
                server.stop().await;
                anyhow::bail!("redis-server {name} did not answer PING within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn int_reply(c: &mut Conn, args: &[&[u8]]) -> anyhow::Result<i64> {
    match c.call(args).await? {
        Reply::Int(n) => Ok(n),
        other => anyhow::bail!("expected an integer, got {other:?}"),
    }
}

/// What the server has read from all its clients (`total_net_input_bytes`).
async fn net_input_bytes(c: &mut Conn) -> anyhow::Result<u64> {
    let Reply::Bulk(Some(info)) = c.call(&[b"INFO", b"stats"]).await? else {
        anyhow::bail!("INFO stats: unexpected reply");
    };
    let info = String::from_utf8_lossy(&info);
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_input_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO stats has no total_net_input_bytes")
}

/// (e) Two `redis-server`s on loopback: load the records into A with pipelined SET, then time
/// moving every key to B with pipelined `MIGRATE … KEYS`.
async fn redis_contender(exe: &std::path::Path, records: &[RecordView], batch: usize) -> Contender {
    let mut c = Contender {
        id: "redis",
        name: "(e) redis MIGRATE",
        note: NO_LOAD_NOTE,
        ..Contender::default()
    };
    let mut servers = Vec::new();
    let r = async {
        servers.push(RedisServer::start(exe, "a").await?);
        servers.push(RedisServer::start(exe, "b").await?);
        redis_move(servers[0].addr, servers[1].addr, records, batch).await
    }
    .await;
    for s in &mut servers {
        s.stop().await;
    }
    match r {
        Ok(r) => {
            c.total_ms = r.ms;
            c.bytes_sent = r.bytes;
            c.records = records.len() as u64;
            c.throughput_mb_s = mb_s(r.bytes, r.ms);
            c.records_missing = Some((records.len() as u64).saturating_sub(r.on_b));
            c.detail = serde_json::json!({
                "wire_bytes": r.wire_bytes,
                "keys_on_b": r.on_b,
                "keys_left_on_a": r.on_a,
                "migrate_commands": r.commands,
                "load_ms": r.load_ms,
                "version": r.version,
            });
        }
        Err(e) => c.error = Some(format!("{e:#}")),
    }
    c
}

struct RedisResult {
    ms: f64,
    bytes: u64,
    wire_bytes: u64,
    on_a: u64,
    on_b: u64,
    commands: u64,
    load_ms: f64,
    version: String,
}

/// Commands written before their replies are read.
const PIPELINE: usize = 1_000;
/// `MIGRATE` commands in flight at once.
const MIGRATE_WINDOW: usize = 8;

async fn redis_move(
    a: SocketAddr,
    b: SocketAddr,
    records: &[RecordView],
    batch: usize,
) -> anyhow::Result<RedisResult> {
    let mut ca = Conn::connect(a, Duration::from_secs(60)).await?;
    let mut cb = Conn::connect(b, Duration::from_secs(60)).await?;
    let version = match ca.call(&[b"INFO", b"server"]).await? {
        Reply::Bulk(Some(v)) => String::from_utf8_lossy(&v)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned(),
        _ => "unknown".into(),
    };
    // Load A (not timed).
    let t = Instant::now();
    for chunk in records.chunks(PIPELINE) {
        let mut out = Vec::new();
        for r in chunk {
            encode_command(&mut out, &[b"SET", &r.key, &r.bytes]);
        }
        ca.write(&out).await?;
        for _ in chunk {
            match ca.read().await? {
                Reply::Simple(s) if s == "OK" => {}
                other => anyhow::bail!("SET answered {other:?}"),
            }
        }
    }
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let loaded = int_reply(&mut ca, &[b"DBSIZE"]).await?;
    if loaded != records.len() as i64 {
        anyhow::bail!(
            "redis A holds {loaded} keys after loading {}",
            records.len()
        );
    }
    // What B reads during the move is what A's MIGRATE connection sent it (RESTORE commands
    // with serialized values), plus this bench's INFO commands.
    let in_before = net_input_bytes(&mut cb).await?;
    let port = b.port().to_string();
    let bytes: u64 = records
        .iter()
        .map(|r| (r.key.len() + r.bytes.len()) as u64)
        .sum();
    // Timed: every key A -> B.
    let t = Instant::now();
    let mut in_flight = 0usize;
    let mut commands = 0u64;
    for chunk in records.chunks(batch) {
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            port.as_bytes(),
            b"",
            b"0",
            b"30000",
            b"KEYS",
        ];
        args.extend(chunk.iter().map(|r| r.key.as_ref()));
        let mut out = Vec::new();
        encode_command(&mut out, &args);
        ca.write(&out).await?;
        commands += 1;
        in_flight += 1;
        if in_flight >= MIGRATE_WINDOW {
            migrate_reply(&mut ca).await?;
            in_flight -= 1;
        }
    }
    while in_flight > 0 {
        migrate_reply(&mut ca).await?;
        in_flight -= 1;
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let in_after = net_input_bytes(&mut cb).await?;
    let on_b = int_reply(&mut cb, &[b"DBSIZE"]).await?.max(0) as u64;
    let on_a = int_reply(&mut ca, &[b"DBSIZE"]).await?.max(0) as u64;
    Ok(RedisResult {
        ms,
        bytes,
        wire_bytes: in_after.saturating_sub(in_before),
        on_a,
        on_b,
        commands,
        load_ms,
        version,
    })
}

async fn migrate_reply(c: &mut Conn) -> anyhow::Result<()> {
    match c.read().await? {
        Reply::Simple(s) if s == "OK" || s == "NOKEY" => Ok(()),
        other => anyhow::bail!("MIGRATE answered {other:?}"),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// One line on how a contender went, from its detail.
fn summary(x: &Contender) -> Option<String> {
    let m = &x.detail["move"];
    let gap = x
        .baseline_gap_ms
        .map(|g| format!("; largest gap outside the move {g:.2} ms"))
        .unwrap_or_default();
    Some(match x.id {
        "handoff" | "handoff_random" => format!(
            "copy {} ms, digest match {}, buffered peak {} (mean {:.1}){gap}",
            m["phases_ms"]["copy"],
            m["digest_match"],
            m["buffered_peak"],
            x.buffered_mean.unwrap_or(0.0)
        ),
        "stop_and_copy" | "pre_copy" => {
            let rounds: Vec<String> = m["rounds"]
                .as_array()?
                .iter()
                .map(|r| {
                    let n =
                        r["records"].as_u64().unwrap_or(0) + r["tombstones"].as_u64().unwrap_or(0);
                    if r["held"] == true {
                        format!("{n} held")
                    } else {
                        n.to_string()
                    }
                })
                .collect();
            format!(
                "records per round {}; signals held {} ms{gap}",
                rounds.join(" -> "),
                m["held_ms"]
            )
        }
        "raw_tcp" => format!("{} bytes on the wire", x.detail["wire_bytes"]),
        "redis" => format!(
            "redis {}, {} MIGRATE commands, {} bytes read by redis B, {} keys on B",
            x.detail["version"].as_str().unwrap_or("?"),
            x.detail["migrate_commands"],
            x.detail["wire_bytes"],
            x.detail["keys_on_b"]
        ),
        _ => return None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_divide_and_refuse_zero_or_missing_denominators() {
        let inputs = RatioInputs {
            handoff_copy_mb_s: Some(100.0),
            raw_mb_s: Some(400.0),
            handoff_pause: Some(2.0),
            stop_pause: Some(200.0),
            pre_pause: Some(0.0),
            handoff_bytes: Some(1000.0),
            pre_bytes: None,
            handoff_ms: Some(500.0),
            redis_ms: Some(1500.0),
            hot_peak: Some(10.0),
            random_peak: Some(250.0),
            hot_mean: Some(0.0),
            random_mean: Some(3.0),
            hot_for_records_peak: Some(4.0),
            random_for_records_peak: Some(60.0),
        };
        assert_eq!(
            inputs.ratios(),
            Ratios {
                copy_throughput_handoff_over_raw_tcp: Some(0.25),
                pause_handoff_over_stop_and_copy: Some(0.01),
                pause_handoff_over_pre_copy: None,
                bytes_handoff_over_pre_copy: None,
                redis_ms_over_handoff_ms: Some(3.0),
                buffered_peak_random_over_hot_first: Some(25.0),
                buffered_mean_random_over_hot_first: None,
                buffered_for_records_peak_random_over_hot_first: Some(15.0),
            }
        );
        assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), Some(f64::INFINITY)), None);
    }

    #[test]
    fn a_contender_that_loses_answers_is_not_clean() {
        let ok = Contender {
            lost: Some(0),
            oracle_mismatches: Some(0),
            ..Contender::default()
        };
        assert!(ok.clean());
        let lossy = Contender {
            lost: Some(3),
            ..Contender::default()
        };
        assert!(!lossy.clean());
        let failed = Contender {
            error: Some("x".into()),
            ..Contender::default()
        };
        assert!(!failed.clean());
    }

    #[test]
    fn raw_tcp_moves_every_record() {
        let records: Vec<RecordView> = (0u64..1000)
            .map(|i| RecordView {
                key: i.to_be_bytes().to_vec().into(),
                seq: i,
                bytes: vec![i as u8; 100].into(),
            })
            .collect();
        let r = raw_tcp(&records).unwrap();
        assert_eq!((r.records_sent, r.records_received), (1000, 1000));
        assert_eq!((r.bytes_sent, r.bytes_received), (108_000, 108_000));
        assert_eq!(r.wire_bytes, 108_000 + 5 * 1000);
    }

    #[test]
    fn buffered_samples_summarize_to_peak_and_mean() {
        let mut b = BufferedSamples {
            samples: vec![[0, 4, 10], [20, 0, 5], [40, 2, 0]],
            ..BufferedSamples::default()
        };
        b.summarize();
        assert_eq!((b.peak, b.mean), (4, 2.0));
        let mut none = BufferedSamples::default();
        none.summarize();
        assert_eq!((none.peak, none.mean), (0, 0.0));
    }

    #[test]
    fn the_default_measured_phase_grows_with_the_sessions() {
        assert_eq!(default_duration(5_000), 8.0);
        assert_eq!(default_duration(100_000), 8.0);
        assert_eq!(default_duration(1_000_000), 17.0);
    }

    #[test]
    fn throughput_is_bytes_per_second_in_megabytes() {
        assert_eq!(mb_s(2_000_000, 1000.0), 2.0);
        assert_eq!(mb_s(5, 0.0), 0.0);
    }
}
