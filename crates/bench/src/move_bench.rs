//! `handoff bench move`: the live move side by side with stop-and-copy, iterative pre-copy, a
//! raw TCP transfer of the same bytes and Redis `MIGRATE`, in one run on the same sessions.
//!
//! Each contender with load runs on a freshly started pair of nodes behind a fresh steer: the
//! load generator attaches every UE, starts procedures open-loop, and the contender moves the
//! subject from node-a to node-b `move_at` seconds into the measured phase. The pause is the
//! longest gap between answers the clients saw while the move ran; afterwards the oracle checks
//! the destination's state. The raw TCP transfer and Redis receive the records the live move's
//! destination ended with (no load: there is nobody to answer).
//!
//! The movers take any [`Subject`]; the load generator and its oracle speak S1AP-lite, so a
//! loaded run needs a `vmme` subject ([`MoveBenchOptions::validate`] says so).
//!
//! # Steps
//!
//! 1–4: the loaded contenders of [`plan`]; 5: raw TCP; 6: Redis. Progress is reported as
//! [`Event`]s to an observer; nothing here prints.

use crate::cluster::{start_steer, NodeLauncher, NodeProcess};
use crate::moves::{baseline_move, live_move, PreCopyRule};
use crate::report::{
    id, mb_s, BenchConfig, BufferedSamples, Contender, Detail, LoadedDetail, Machine,
    MoveBenchReport, MoveDetail,
};
use crate::transfer::{raw_tcp_contender, records_bytes, redis_contender};
use crate::{BenchError, Subject};
use handoff_function::runtime::Catalog;
use handoff_loadgen::oracle::{self, OracleReport};
use handoff_loadgen::{LoadConfig, LoadReport, Progress};
use handoff_node::client::AdminClient;
use handoff_state::{CopyOrder, RecordView};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Steps of a run: the four loaded contenders, raw TCP, Redis.
pub const STEPS: usize = 8;
/// The function the load generator and the oracle speak.
pub const LOAD_FUNCTION: &str = "vmme";
/// How long the move window stays open after a move returns: answers to signals held during
/// the move arrive just after it and must count towards its pause.
const WINDOW_GRACE: Duration = Duration::from_millis(300);
/// How often the destination's buffered signals are sampled during a live move.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Most samples taken (20 minutes' worth).
const MAX_SAMPLES: usize = 60_000;
/// How long past its own attach deadline the load may take to reach its measured phase.
const ATTACH_SLACK: Duration = Duration::from_secs(30);
/// The first progress report of the measured phase comes up to this long into it.
const PROGRESS_LAG_S: f64 = 0.5;

/// A run's settings as given (e.g. by flags); [`MoveBenchOptions::validate`] turns them into
/// the [`BenchConfig`] the run uses and reports.
#[derive(Clone, Debug)]
pub struct MoveBenchOptions {
    /// Sessions (UEs) each contender moves; each attaches first.
    pub sessions: u32,
    /// New procedures per second during each contender's measured phase (open loop).
    pub rate: f64,
    /// Length of each measured phase, s; `None`: [`default_duration`].
    pub duration: Option<f64>,
    /// When each move starts, s into the measured phase.
    pub move_at: f64,
    /// Zipf exponent of UE popularity.
    pub zipf: f64,
    /// Seed of the load generator (the same for every contender).
    pub seed: u64,
    /// First retransmission timeout, ms (doubles per retry).
    pub timeout_ms: u64,
    /// Pre-copy pauses after a round that moved fewer than this fraction of the sessions…
    pub precopy_stop_fraction: f64,
    /// …or after this many rounds while serving (the full first copy included).
    pub precopy_max_rounds: u32,
    /// Keys per Redis `MIGRATE … KEYS` command.
    pub redis_batch: usize,
}

/// A setting out of its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `option` (named as the CLI flag without its dashes) is not `expected`.
    #[error("{option} must be {expected}")]
    OutOfRange {
        /// The setting, e.g. `move-at`.
        option: &'static str,
        /// What it must be, e.g. `within [0, duration)`.
        expected: &'static str,
    },
    /// The load generator cannot drive this function.
    #[error("the load generator speaks S1AP-lite: a loaded run needs a {LOAD_FUNCTION} instance, not {function}")]
    NoLoadFor {
        /// The subject's function.
        function: String,
    },
}

fn out_of_range(option: &'static str, expected: &'static str) -> ConfigError {
    ConfigError::OutOfRange { option, expected }
}

fn secs_ok(v: f64, max: f64) -> bool {
    v.is_finite() && (0.0..=max).contains(&v)
}

/// 8 s, plus 1 s per 100k sessions above 100k (a 1M-session move takes several seconds).
pub fn default_duration(sessions: u32) -> f64 {
    8.0 + (f64::from(sessions) / 100_000.0 - 1.0).max(0.0)
}

impl MoveBenchOptions {
    /// Checks every setting (and that the load generator can drive `subject`) and fills in
    /// the defaults.
    pub fn validate(&self, subject: &Subject) -> Result<BenchConfig, ConfigError> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(out_of_range("rate", "positive"));
        }
        let duration = self
            .duration
            .unwrap_or_else(|| default_duration(self.sessions));
        if !secs_ok(duration, 3600.0) || duration == 0.0 {
            return Err(out_of_range("duration", "within (0, 3600] seconds"));
        }
        if !(secs_ok(self.move_at, 3600.0) && self.move_at < duration) {
            return Err(out_of_range("move-at", "within [0, duration)"));
        }
        if !(self.precopy_stop_fraction.is_finite()
            && (0.0..=1.0).contains(&self.precopy_stop_fraction))
        {
            return Err(out_of_range("precopy-stop-fraction", "within [0, 1]"));
        }
        if !(1..=100).contains(&self.precopy_max_rounds) {
            return Err(out_of_range("precopy-max-rounds", "within 1..=100"));
        }
        if !(1..=100_000).contains(&self.redis_batch) {
            return Err(out_of_range("redis-batch", "within 1..=100000"));
        }
        if self.sessions == 0 {
            return Err(out_of_range("sessions", "at least 1"));
        }
        if subject.function != LOAD_FUNCTION {
            return Err(ConfigError::NoLoadFor {
                function: subject.function.clone(),
            });
        }
        Ok(BenchConfig {
            sessions: self.sessions,
            rate: self.rate,
            duration_s: duration,
            move_at_s: self.move_at,
            zipf: self.zipf,
            seed: self.seed,
            timeout_ms: self.timeout_ms,
            precopy: PreCopyRule {
                stop_fraction: self.precopy_stop_fraction,
                max_rounds: self.precopy_max_rounds,
            },
            redis_batch: self.redis_batch,
        })
    }
}

/// How a loaded contender moves the instance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mover {
    /// The live move, in this copy order.
    Live {
        /// Copy order.
        order: CopyOrder,
        /// Every create and update to both nodes (the default of `handoff migrate`).
        abort_safe: bool,
    },
    /// Stop-and-copy (`None`) or iterative pre-copy.
    Baseline(Option<PreCopyRule>),
}

/// One loaded contender of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanStep {
    /// Its step, 1-based, of [`STEPS`].
    pub step: usize,
    /// One of [`id`].
    pub id: &'static str,
    pub name: &'static str,
    pub mover: Mover,
}

/// The loaded contenders, in run order: the hot-first live move runs first because its
/// destination's records are what raw TCP and Redis move afterwards.
pub fn plan(config: &BenchConfig) -> [PlanStep; 6] {
    let step = |step, id, name, mover| PlanStep {
        step,
        id,
        name,
        mover,
    };
    [
        step(
            1,
            id::HANDOFF,
            "(a) handoff live move, hot-first",
            Mover::Live {
                order: CopyOrder::HotFirst,
                abort_safe: false,
            },
        ),
        step(
            2,
            id::HANDOFF_RANDOM,
            "(a') handoff live move, random order",
            Mover::Live {
                order: CopyOrder::Random { seed: config.seed },
                abort_safe: false,
            },
        ),
        step(
            3,
            id::HANDOFF_ABORT_SAFE,
            "(a'') handoff live move, hot-first, abort-safe",
            Mover::Live {
                order: CopyOrder::HotFirst,
                abort_safe: true,
            },
        ),
        step(
            4,
            id::HANDOFF_CLAIRVOYANT,
            "(a''') handoff live move, clairvoyant (key) order",
            Mover::Live {
                order: CopyOrder::Key,
                abort_safe: false,
            },
        ),
        step(
            5,
            id::STOP_AND_COPY,
            "(b) stop-and-copy",
            Mover::Baseline(None),
        ),
        step(
            6,
            id::PRE_COPY,
            "(c) iterative pre-copy",
            Mover::Baseline(Some(config.precopy)),
        ),
    ]
}

/// What a run reports while it goes.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A loaded contender starts its nodes.
    Starting { step: usize, name: &'a str },
    /// The load generator's counters.
    Load {
        step: usize,
        name: &'a str,
        progress: &'a Progress,
    },
    /// The move starts.
    Moving {
        name: &'a str,
        subject: &'a Subject,
        from: &'a str,
        to: &'a str,
    },
    /// The oracle checks the owner's state.
    Oracle { step: usize, name: &'a str },
    /// The raw TCP transfer starts.
    RawTcp { records: usize, bytes: u64 },
    /// Redis `MIGRATE` starts.
    Redis { records: usize },
}

/// Receives a run's [`Event`]s (from several tasks).
pub type Observer = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// What a run needs besides its settings.
pub struct MoveBench {
    /// The settings.
    pub config: BenchConfig,
    /// The instance moved, hosted on node-a at the start of every loaded contender.
    pub subject: Subject,
    /// How to start node processes.
    pub launcher: NodeLauncher,
    /// The functions the steer can classify.
    pub catalog: Arc<Catalog>,
    /// The `redis-server` executable (see [`crate::transfer::find_redis`]).
    pub redis: PathBuf,
}

/// What a loaded run produced.
struct Loaded {
    contender: Contender,
    dump: Vec<RecordView>,
    copy_ms: Option<u64>,
}

/// The node names of a loaded run.
const SOURCE: &str = "node-a";
const DESTINATION: &str = "node-b";

impl MoveBench {
    /// Runs every contender and shapes the report. A contender that fails is reported with
    /// its error; the run itself does not fail.
    pub async fn run(&self, observe: Observer) -> MoveBenchReport {
        let mut contenders = Vec::new();
        let mut records: Option<Vec<RecordView>> = None;
        let mut handoff_copy_ms = None;
        for step in plan(&self.config) {
            observe(Event::Starting {
                step: step.step,
                name: step.name,
            });
            match self.loaded_run(step, &observe).await {
                Ok(l) => {
                    if step.id == id::HANDOFF {
                        handoff_copy_ms = l.copy_ms;
                    }
                    if records.is_none() && l.contender.error.is_none() && !l.dump.is_empty() {
                        records = Some(l.dump);
                    }
                    contenders.push(l.contender);
                }
                Err(e) => {
                    contenders.push(Contender::failed(step.id, step.name, true, e.to_string()))
                }
            }
        }
        let records = records.unwrap_or_default();
        let bytes = records_bytes(&records);
        observe(Event::RawTcp {
            records: records.len(),
            bytes,
        });
        contenders.push(raw_tcp_contender(&records).await);
        observe(Event::Redis {
            records: records.len(),
        });
        contenders.push(redis_contender(&self.redis, &records, self.config.redis_batch).await);
        MoveBenchReport::new(
            contenders,
            handoff_copy_ms,
            bytes,
            self.config.clone(),
            Machine::read(),
        )
    }

    /// Runs one contender under load on fresh nodes.
    async fn loaded_run(&self, step: PlanStep, observe: &Observer) -> Result<Loaded, BenchError> {
        let (cfg, subject) = (&self.config, &self.subject);
        let node_a = NodeProcess::spawn(&self.launcher, SOURCE, &[subject], None).await?;
        let node_b = NodeProcess::spawn(&self.launcher, DESTINATION, &[], None).await?;
        let (steer, service) = start_steer(&self.catalog, subject, node_a.addr).await?;
        let window = Arc::new(AtomicBool::new(false));
        let load_cfg = LoadConfig {
            target: service,
            sessions: cfg.sessions,
            rate: cfg.rate,
            duration: Duration::from_secs_f64(cfg.duration_s),
            zipf: cfg.zipf,
            seed: cfg.seed,
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            move_window: Some(window.clone()),
            ..LoadConfig::default()
        };
        load_cfg.validate().map_err(BenchError::LoadConfig)?;
        let attach_deadline = load_cfg.attach_deadline;
        let (phase_tx, mut phase_rx) = tokio::sync::watch::channel("attach");
        let observer = observe.clone();
        let load = tokio::spawn(handoff_loadgen::run(load_cfg, move |p: Progress| {
            observer(Event::Load {
                step: step.step,
                name: step.name,
                progress: &p,
            });
            let _ = phase_tx.send(p.phase);
        }));
        // Wait for the measured phase (bounded by the attach deadline), then for `move_at`.
        let waited = tokio::time::timeout(attach_deadline + ATTACH_SLACK, async {
            while *phase_rx.borrow() == "attach" {
                if phase_rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let measure_seen = Instant::now();
        let mut outcome = Err(BenchError::NeverMeasured);
        let mut move_ms = 0.0;
        if waited.is_ok() && *phase_rx.borrow() == "measure" {
            tokio::time::sleep(Duration::from_secs_f64(cfg.move_at_s)).await;
            observe(Event::Moving {
                name: step.name,
                subject,
                from: SOURCE,
                to: DESTINATION,
            });
            window.store(true, Ordering::Relaxed);
            let t = Instant::now();
            outcome = self
                .move_once(step.mover, &steer, node_a.addr, node_b.addr)
                .await;
            move_ms = t.elapsed().as_secs_f64() * 1e3;
            tokio::time::sleep(WINDOW_GRACE).await;
            window.store(false, Ordering::Relaxed);
        }
        let outlasted = measure_seen.elapsed().as_secs_f64() > cfg.duration_s - PROGRESS_LAG_S
            && outcome.is_ok();
        let (load, histories) = load.await?.map_err(BenchError::Load)?;
        let moved = outcome.is_ok();
        let owner = if moved { node_b.addr } else { node_a.addr };
        observe(Event::Oracle {
            step: step.step,
            name: step.name,
        });
        let dump = AdminClient::connect(owner, "bench")
            .await?
            .dump(&subject.instance)
            .await?;
        let oracle = oracle::check(&handoff_vmme::Vmme::default(), &histories, &dump);
        steer.shutdown();
        node_a.stop().await;
        node_b.stop().await;
        let (move_, fig, error) = match outcome {
            Ok((d, f)) => (Some(d.with_gaps(&load)), f, None),
            Err(e) => (None, MoveFigures::default(), Some(e.to_string())),
        };
        let copy_ms = fig.copy_ms;
        let contender = Measured {
            load,
            oracle,
            move_ms,
            fig,
            outlasted,
        }
        .contender(step, error, move_);
        Ok(Loaded {
            contender,
            dump: if moved { dump } else { Vec::new() },
            copy_ms,
        })
    }

    /// Moves the subject from `a` to `b` with `mover`.
    async fn move_once(
        &self,
        mover: Mover,
        steer: &handoff_steer::Steer,
        a: SocketAddr,
        b: SocketAddr,
    ) -> Result<(MoveDetail, MoveFigures), BenchError> {
        let subject = &self.subject;
        match mover {
            Mover::Live { order, abort_safe } => {
                let stop = Arc::new(AtomicBool::new(false));
                let sampler = tokio::spawn(sample_buffered(b, subject.clone(), stop.clone()));
                let moved = live_move(steer, subject, a, b, order, abort_safe).await;
                stop.store(true, Ordering::Relaxed);
                let samples = sampler.await.unwrap_or_default();
                let m = moved?;
                let fig = MoveFigures {
                    bytes: m.bytes_copied + m.tombstones * key_len(),
                    records: m.records_copied,
                    buffered_peak: Some(m.buffered_peak),
                    buffered_for_records_peak: Some(m.buffered_for_records_peak),
                    buffered_mean: Some(samples.mean),
                    copy_ms: Some(m.phases_ms.copy),
                    buffered_wait_us: Some(m.buffered_wait_us),
                    demanded: Some(m.demanded),
                };
                let detail = MoveDetail::Live {
                    report: m,
                    buffered_samples: samples,
                };
                Ok((detail, fig))
            }
            Mover::Baseline(rule) => {
                let m = baseline_move(steer, subject, a, b, rule).await?;
                let fig = MoveFigures {
                    bytes: m.bytes_copied,
                    records: m.records_copied + m.tombstones,
                    ..MoveFigures::default()
                };
                Ok((MoveDetail::Baseline(m), fig))
            }
        }
    }
}

impl MoveDetail {
    /// The mover's report with the client-side gaps the load measured (the movers do not see
    /// the clients).
    fn with_gaps(mut self, load: &LoadReport) -> Self {
        let (during, outside) = (load.move_response_gap_ms, load.baseline_response_gap_ms);
        match &mut self {
            MoveDetail::Live { report, .. } => {
                report.max_response_gap_ms = during;
                report.baseline_response_gap_ms = outside;
            }
            MoveDetail::Baseline(report) => {
                report.max_response_gap_ms = during;
                report.baseline_response_gap_ms = outside;
            }
        }
        self
    }
}

/// What a mover's report contributes to its contender's row.
#[derive(Debug, Default, PartialEq)]
struct MoveFigures {
    bytes: u64,
    records: u64,
    buffered_peak: Option<u64>,
    buffered_for_records_peak: Option<u64>,
    buffered_mean: Option<f64>,
    copy_ms: Option<u64>,
    buffered_wait_us: Option<crate::moves::WaitLatency>,
    demanded: Option<u64>,
}

/// Everything a loaded contender measured.
struct Measured {
    load: LoadReport,
    oracle: OracleReport,
    move_ms: f64,
    fig: MoveFigures,
    outlasted: bool,
}

impl Measured {
    /// The contender's row: `error` if the move failed, else `move_` holds its report.
    fn contender(
        self,
        step: PlanStep,
        error: Option<String>,
        move_: Option<MoveDetail>,
    ) -> Contender {
        let Self {
            load,
            oracle,
            move_ms,
            fig,
            outlasted,
        } = self;
        Contender {
            id: step.id,
            name: step.name,
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
            move_retransmissions: Some(load.move_retransmissions),
            latency_during_move_us: Some((&load.latency_during_move_us).into()),
            latency_outside_move_us: Some((&load.latency_outside_move_us).into()),
            buffered_wait_us: fig.buffered_wait_us,
            demanded: fig.demanded,
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
            note: mover_note(step.mover),
            detail: Detail::Loaded(Box::new(LoadedDetail {
                move_,
                load,
                oracle_examples: oracle.examples,
            })),
        }
    }
}

/// How a mover treats the signals, in a sentence.
fn mover_note(mover: Mover) -> &'static str {
    match mover {
        Mover::Live { .. } => "no pause: signals keep flowing; hot sessions first unless random",
        Mover::Baseline(None) => "signals held at the steer while everything is copied",
        Mover::Baseline(Some(_)) => {
            "copy everything while serving, re-copy what changed, then hold and copy the rest"
        }
    }
}

/// Bytes of a tombstone: the key of a vMME session (the live move's `bytes_copied` leaves
/// tombstones out; the baselines' pushes count them).
fn key_len() -> u64 {
    handoff_vmme::session_key(0).len() as u64
}

/// Samples the shadow counters of `subject` on `node` until `stop` (bounded by
/// [`MAX_SAMPLES`]).
async fn sample_buffered(
    node: SocketAddr,
    subject: Subject,
    stop: Arc<AtomicBool>,
) -> BufferedSamples {
    let mut out = BufferedSamples {
        interval_ms: SAMPLE_EVERY.as_millis() as u64,
        ..BufferedSamples::default()
    };
    let Ok(mut admin) = AdminClient::connect(node, "bench-sampler").await else {
        return out;
    };
    let start = Instant::now();
    let ask = handoff_node::ops::ShadowStats {
        instance: subject.instance,
    };
    for _ in 0..MAX_SAMPLES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Before the prepare the instance is unknown, after the finish it is no shadow: skip.
        if let Ok(Some(s)) = admin.call(&ask).await {
            let (b, a) = (s.buffered as u64, s.awaiting as u64);
            out.samples.push([start.elapsed().as_millis() as u64, b, a]);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    out.summarize();
    out
}

#[cfg(test)]
mod tests;
