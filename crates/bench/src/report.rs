//! The `handoff bench move` report: one [`Contender`] per contender, the [`Ratios`] between
//! them, and what the run was configured with. Everything here is pure: it is built from
//! figures the runner measured, so its shaping is tested without running anything.
//!
//! The report's JSON is read by scripts and later checks: the field names and nesting of
//! every type here are the `handoff bench move --json` format and must not change
//! (`the_json_report_keeps_its_field_names` pins them).

use crate::moves::{BaselineReport, MoveReport, PreCopyRule};
use handoff_loadgen::LoadReport;

/// Contender ids, as they appear in the report (`contenders[].id`), in run order.
pub mod id {
    /// (a) The live move, hot sessions first.
    pub const HANDOFF: &str = "handoff";
    /// (a') The live move, random copy order.
    pub const HANDOFF_RANDOM: &str = "handoff_random";
    /// The live move, hot-first, in abort-safe mode (every create and update to both nodes).
    pub const HANDOFF_ABORT_SAFE: &str = "handoff_abort_safe";
    /// (a''') The live move in the load's true popularity order, the limit for any ordering:
    /// the load generator makes UE i the i-th most popular and the vMME's keys are IMSIs in
    /// big-endian, ascending with i, so this is key order too.
    pub const HANDOFF_CLAIRVOYANT: &str = "handoff_clairvoyant";
    /// (b) Stop-and-copy.
    pub const STOP_AND_COPY: &str = "stop_and_copy";
    /// (c) Iterative pre-copy.
    pub const PRE_COPY: &str = "pre_copy";
    /// (d) The same records over one raw TCP connection.
    pub const RAW_TCP: &str = "raw_tcp";
    /// (e) Redis `MIGRATE` of the same records.
    pub const REDIS: &str = "redis";
}

/// What machine a report was measured on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub kernel: String,
}

impl Machine {
    /// Reads this machine's figures from `/proc` (unknown ones are empty or 0).
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self::parse(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            &read("/proc/cpuinfo"),
            &read("/proc/meminfo"),
            &read("/proc/sys/kernel/osrelease"),
        )
    }

    fn parse(cpus: usize, cpuinfo: &str, meminfo: &str, osrelease: &str) -> Self {
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Self {
            cpus,
            cpu_model,
            memory_bytes,
            kernel: osrelease.trim().to_owned(),
        }
    }
}

/// A latency tail, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TailLatency {
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl From<&handoff_loadgen::LatencyReport> for TailLatency {
    fn from(l: &handoff_loadgen::LatencyReport) -> Self {
        Self {
            p99: l.p99,
            p999: l.p999,
            max: l.max,
        }
    }
}

/// One contender's figures. Load figures are `None` for contenders run without load.
#[derive(Debug, Default, serde::Serialize)]
pub struct Contender {
    /// One of [`id`].
    pub id: &'static str,
    pub name: &'static str,
    pub under_load: bool,
    /// Time of the move (or transfer), ms.
    pub total_ms: f64,
    /// Longest gap between answers clients saw during the move, ms.
    pub pause_ms: Option<f64>,
    /// The same statistic outside the move, ms.
    pub baseline_gap_ms: Option<f64>,
    /// Record bytes sent (keys and values; a tombstone counts its key).
    pub bytes_sent: u64,
    /// Records sent (tombstones included).
    pub records: u64,
    /// `bytes_sent` per second of `total_ms`, in 10^6 bytes.
    pub throughput_mb_s: f64,
    pub lost: Option<u64>,
    pub duplicated: Option<u64>,
    pub reordered: Option<u64>,
    pub wrong_answers: Option<u64>,
    pub stray: Option<u64>,
    pub retransmissions: Option<u64>,
    /// Of those, retransmissions of transactions started or answered during the move: the
    /// clients' own timer firing because the move held their answer.
    pub move_retransmissions: Option<u64>,
    /// Latency of transactions started or answered during the move, µs.
    pub latency_during_move_us: Option<TailLatency>,
    /// Latency of the other measured transactions, µs.
    pub latency_outside_move_us: Option<TailLatency>,
    /// How long the destination held buffered signals before applying them (µs of steer
    /// time; live move only).
    pub buffered_wait_us: Option<crate::moves::WaitLatency>,
    /// Sessions the destination asked for ahead of their place (live move only).
    pub demanded: Option<u64>,
    /// The oracle on the destination after the move.
    pub oracle_checked: Option<u64>,
    pub oracle_mismatches: Option<u64>,
    pub answer_mismatches: Option<u64>,
    pub unverifiable: Option<u64>,
    /// Records the receiver did not end up with (no-load contenders).
    pub records_missing: Option<u64>,
    /// Most signals the destination buffered at once (live move only).
    pub buffered_peak: Option<u64>,
    /// Most signals it buffered at once waiting for their session's record, after the
    /// manifest arrived: the part the copy order decides (live move only).
    pub buffered_for_records_peak: Option<u64>,
    /// Signals the destination held buffered on average while it was a shadow, sampled every
    /// 20 ms (live move only).
    pub buffered_mean: Option<f64>,
    /// The move was still running when the measured phase ended (lengthen the duration).
    pub move_outlasted_load: bool,
    pub error: Option<String>,
    pub note: &'static str,
    pub detail: Detail,
}

impl Contender {
    /// A contender that could not run at all.
    pub fn failed(id: &'static str, name: &'static str, under_load: bool, error: String) -> Self {
        Self {
            id,
            name,
            under_load,
            error: Some(error),
            ..Self::default()
        }
    }

    /// Ran, and neither lost, duplicated, reordered nor corrupted anything.
    pub fn clean(&self) -> bool {
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

/// What a contender did in detail; its JSON is `null` when the contender did not run.
#[derive(Debug, Default, serde::Serialize)]
#[serde(untagged)]
pub enum Detail {
    #[default]
    None,
    /// A move under load (boxed: it holds the whole load report).
    Loaded(Box<LoadedDetail>),
    /// The raw TCP transfer.
    RawTcp(RawTcpDetail),
    /// Redis `MIGRATE`.
    Redis(RedisDetail),
}

/// A move under load: the mover's report (`null` if the move failed), the load's, and a few
/// of the oracle's mismatches.
#[derive(Debug, serde::Serialize)]
pub struct LoadedDetail {
    #[serde(rename = "move")]
    pub move_: Option<MoveDetail>,
    pub load: LoadReport,
    pub oracle_examples: Vec<String>,
}

/// The mover's own report.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum MoveDetail {
    /// A live move, with the destination's buffered signals sampled over it.
    Live {
        #[serde(flatten)]
        report: MoveReport,
        buffered_samples: BufferedSamples,
    },
    /// Stop-and-copy or pre-copy.
    Baseline(BaselineReport),
}

/// The raw TCP transfer's wire figures.
#[derive(Debug, serde::Serialize)]
pub struct RawTcpDetail {
    /// Bytes written, framing included.
    pub wire_bytes: u64,
    /// Record bytes the reader received.
    pub bytes_received: u64,
}

/// Redis `MIGRATE`'s figures.
#[derive(Debug, serde::Serialize)]
pub struct RedisDetail {
    /// What redis B read from its clients during the move.
    pub wire_bytes: u64,
    pub keys_on_b: u64,
    pub keys_left_on_a: u64,
    pub migrate_commands: u64,
    /// Time to load redis A (not part of the move).
    pub load_ms: f64,
    /// `redis_version` of the server.
    pub version: String,
}

/// The destination's buffered signals over a live move, sampled from its shadow counters.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BufferedSamples {
    pub interval_ms: u64,
    /// Largest `buffered` sampled.
    pub peak: u64,
    /// Mean `buffered` over the samples taken while the destination was a shadow.
    pub mean: f64,
    /// `[ms since sampling began, buffered, awaiting]`.
    pub samples: Vec<[u64; 3]>,
}

impl BufferedSamples {
    /// Sets `peak` and `mean` from `samples`.
    pub fn summarize(&mut self) {
        self.peak = self.samples.iter().map(|s| s[1]).max().unwrap_or(0);
        self.mean = if self.samples.is_empty() {
            0.0
        } else {
            self.samples.iter().map(|s| s[1] as f64).sum::<f64>() / self.samples.len() as f64
        };
    }
}

/// The ratios the issue asks for; `None` where a denominator is zero or missing.
#[derive(Debug, Default, PartialEq, serde::Serialize)]
pub struct Ratios {
    /// Handoff's copy-phase throughput over the raw TCP transfer's.
    pub copy_throughput_handoff_over_raw_tcp: Option<f64>,
    /// Handoff's pause over stop-and-copy's.
    pub pause_handoff_over_stop_and_copy: Option<f64>,
    /// Handoff's pause over pre-copy's.
    pub pause_handoff_over_pre_copy: Option<f64>,
    /// Bytes handoff sent over bytes pre-copy sent.
    pub bytes_handoff_over_pre_copy: Option<f64>,
    /// Redis `MIGRATE` time over handoff's move time.
    pub redis_ms_over_handoff_ms: Option<f64>,
    /// Peak buffered updates with random copy order over hot-first.
    pub buffered_peak_random_over_hot_first: Option<f64>,
    /// Mean buffered updates (sampled) with random copy order over hot-first.
    pub buffered_mean_random_over_hot_first: Option<f64>,
    /// Peak updates buffered waiting for their session's record (after the manifest), random
    /// copy order over hot-first: the effect of the order alone.
    pub buffered_for_records_peak_random_over_hot_first: Option<f64>,
    /// The cost of abort-safe mode (the default): its move time over the plain hot-first
    /// move's.
    pub move_ms_abort_safe_over_handoff: Option<f64>,
    /// Its largest client response gap during the move over the plain move's.
    pub pause_abort_safe_over_handoff: Option<f64>,
}

/// `num / den`, or `None` when that is not a finite number.
pub fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    let (n, d) = (num?, den?);
    (d > 0.0 && n.is_finite() && d.is_finite()).then(|| n / d)
}

/// `bytes` per second of `ms`, in 10^6 bytes (0 for no time).
pub fn mb_s(bytes: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        bytes as f64 / 1e6 / (ms / 1e3)
    } else {
        0.0
    }
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
    safe_ms: Option<f64>,
    safe_pause: Option<f64>,
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
            move_ms_abort_safe_over_handoff: ratio(self.safe_ms, self.handoff_ms),
            pause_abort_safe_over_handoff: ratio(self.safe_pause, self.handoff_pause),
        }
    }
}

/// The live move's buffering with hot-first against random copy order.
#[derive(Debug, serde::Serialize)]
pub struct HotFirstVsRandom {
    pub hot_first_buffered_peak: Option<u64>,
    pub random_buffered_peak: Option<u64>,
    pub random_over_hot_first: Option<f64>,
    pub hot_first_buffered_mean: Option<f64>,
    pub random_buffered_mean: Option<f64>,
    pub mean_random_over_hot_first: Option<f64>,
    pub hot_first_buffered_for_records_peak: Option<u64>,
    pub random_buffered_for_records_peak: Option<u64>,
    pub for_records_peak_random_over_hot_first: Option<f64>,
    pub note: &'static str,
}

/// What a `handoff bench move` run was configured with (validated; see
/// [`crate::MoveBenchOptions::validate`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BenchConfig {
    /// Sessions each contender moves.
    pub sessions: u32,
    /// New procedures per second during each measured phase.
    pub rate: f64,
    /// Length of each measured phase, s.
    pub duration_s: f64,
    /// When each move starts, s into the measured phase.
    pub move_at_s: f64,
    /// Zipf exponent of session popularity.
    pub zipf: f64,
    /// Seed of the load (the same for every contender).
    pub seed: u64,
    /// First retransmission timeout, ms.
    pub timeout_ms: u64,
    /// When pre-copy pauses.
    pub precopy: PreCopyRule,
    /// Keys per Redis `MIGRATE … KEYS` command.
    pub redis_batch: usize,
}

/// The whole `handoff bench move` report.
#[derive(Debug, serde::Serialize)]
pub struct MoveBenchReport {
    pub contenders: Vec<Contender>,
    pub ratios: Ratios,
    pub hot_first_vs_random: HotFirstVsRandom,
    /// Handoff's copy phase alone (bytes over copy-phase time), 10^6 bytes/s.
    pub handoff_copy_throughput_mb_s: Option<f64>,
    pub records_bytes: u64,
    pub config: BenchConfig,
    pub notes: Vec<&'static str>,
    pub machine: Machine,
}

const HOT_FIRST_NOTE: &str = "the peak includes every signal the destination buffered before \
    the source's manifest reached it, whatever the copy order; the for-records peak counts only \
    updates buffered after it, waiting for their session's record (the order's effect); the mean \
    (sampled every 20 ms) also shows how fast each order drains the buffers";

const NOTES: [&str; 6] = [
    "every contender with load runs on a fresh pair of node processes behind a fresh \
     in-process steer, with the same sessions, seed and load; all on loopback",
    "pause_ms: the longest gap between consecutive answers the clients saw while the \
     move ran (open-loop load at `rate`); baseline_gap_ms is the same outside it",
    "bytes_sent counts record keys and values (a tombstone counts its key), not framing",
    "copy_throughput_handoff_over_raw_tcp uses handoff's copy phase alone",
    "raw_tcp and redis move the records the hot-first live move's destination ended with",
    "redis: records loaded into redis A with pipelined SET, then timed: pipelined \
     MIGRATE … KEYS in batches to redis B; detail.wire_bytes is what redis B read",
];

impl MoveBenchReport {
    /// Shapes the report from the contenders' figures: `handoff_copy_ms` is the hot-first live
    /// move's copy phase, `records_bytes` the size of the records moved. Contenders that
    /// failed count in no ratio.
    pub fn new(
        contenders: Vec<Contender>,
        handoff_copy_ms: Option<u64>,
        records_bytes: u64,
        config: BenchConfig,
        machine: Machine,
    ) -> Self {
        let by = |id: &str| contenders.iter().find(|c| c.id == id && c.error.is_none());
        let (hot, random) = (by(id::HANDOFF), by(id::HANDOFF_RANDOM));
        let handoff_copy_mb_s = match (hot, handoff_copy_ms) {
            (Some(c), Some(ms)) => Some(mb_s(c.bytes_sent, ms.max(1) as f64)),
            _ => None,
        };
        let float = |v: Option<u64>| v.map(|v| v as f64);
        let inputs = RatioInputs {
            handoff_copy_mb_s,
            raw_mb_s: by(id::RAW_TCP).map(|c| c.throughput_mb_s),
            handoff_pause: hot.and_then(|c| c.pause_ms),
            stop_pause: by(id::STOP_AND_COPY).and_then(|c| c.pause_ms),
            pre_pause: by(id::PRE_COPY).and_then(|c| c.pause_ms),
            handoff_bytes: hot.map(|c| c.bytes_sent as f64),
            pre_bytes: by(id::PRE_COPY).map(|c| c.bytes_sent as f64),
            handoff_ms: hot.map(|c| c.total_ms),
            redis_ms: by(id::REDIS).map(|c| c.total_ms),
            hot_peak: float(hot.and_then(|c| c.buffered_peak)),
            random_peak: float(random.and_then(|c| c.buffered_peak)),
            hot_mean: hot.and_then(|c| c.buffered_mean),
            random_mean: random.and_then(|c| c.buffered_mean),
            hot_for_records_peak: float(hot.and_then(|c| c.buffered_for_records_peak)),
            random_for_records_peak: float(random.and_then(|c| c.buffered_for_records_peak)),
            safe_ms: by(id::HANDOFF_ABORT_SAFE).map(|c| c.total_ms),
            safe_pause: by(id::HANDOFF_ABORT_SAFE).and_then(|c| c.pause_ms),
        };
        let ratios = inputs.ratios();
        let hot_first_vs_random = HotFirstVsRandom {
            hot_first_buffered_peak: hot.and_then(|c| c.buffered_peak),
            random_buffered_peak: random.and_then(|c| c.buffered_peak),
            random_over_hot_first: ratios.buffered_peak_random_over_hot_first,
            hot_first_buffered_mean: inputs.hot_mean,
            random_buffered_mean: inputs.random_mean,
            mean_random_over_hot_first: ratios.buffered_mean_random_over_hot_first,
            hot_first_buffered_for_records_peak: hot.and_then(|c| c.buffered_for_records_peak),
            random_buffered_for_records_peak: random.and_then(|c| c.buffered_for_records_peak),
            for_records_peak_random_over_hot_first: ratios
                .buffered_for_records_peak_random_over_hot_first,
            note: HOT_FIRST_NOTE,
        };
        Self {
            contenders,
            ratios,
            hot_first_vs_random,
            handoff_copy_throughput_mb_s: handoff_copy_mb_s,
            records_bytes,
            config,
            notes: NOTES.to_vec(),
            machine,
        }
    }

    /// Every contender ran and the live moves were clean: what `handoff bench move` exits 0
    /// on.
    pub fn succeeded(&self) -> bool {
        let live_clean = self
            .contenders
            .iter()
            .filter(|c| c.id.starts_with(id::HANDOFF))
            .all(Contender::clean);
        live_clean && self.contenders.iter().all(|c| c.error.is_none())
    }
}

#[cfg(test)]
mod tests;
