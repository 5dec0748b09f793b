//! `handoff bench steer`: the steer against the node's direct path (no relay) and against
//! nginx's UDP proxy in front of that direct path, on the same node and load, in one run:
//!
//! 1. the highest rate each contender sustains, found by the same [`RateSearch`];
//! 2. each contender's latency at every fixed rate of `latency_rates` (5k and 50k procedures
//!    per second by default), and the median the relay adds over the direct path;
//! 3. the relay's CPU time per signal (the steer's and nginx's, each its own process, read
//!    from `/proc` around every trial; see [`crate::cpu`]).
//!
//! A rate is sustained when nothing is lost or duplicated, p99 latency stays under a bound
//! and at least 95% of the offered rate was started. The search is a pure state machine
//! (a doubling ladder, then bisection), tested without a network.
//!
//! The load generator must not be the limit: it runs as several tasks, each with its own
//! socket (`load_shards`), in this process, apart from the node, the steer and nginx (child
//! processes). Every trial reports how late the generator sent against its schedule and how
//! many cores it used; a search whose failures include a late generator is named in
//! `limited_by_load_generator`. Latency is measured from when a datagram left (the
//! generator's timer wakes at millisecond granularity, which would otherwise add up to a
//! millisecond to every contender alike and drown a hop of microseconds).

use crate::cluster::NodeProcess;
use crate::cpu::{cpu_ns, own_cpu_ns, spent};
use crate::hops::{NginxProcess, SteerProcess};
use crate::instructions::Callgrind;
use crate::move_bench::{ConfigError, LOAD_FUNCTION};
use crate::report::Machine;
use crate::{BenchError, NodeLauncher, Subject};
use handoff_loadgen::{LatencyReport, LoadConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// The first IMSI of the first trial; each trial uses fresh UEs above the last one's.
const FIRST_IMSI: u64 = 1_010_000_000_001;
/// A trial's retransmission timeout and retries.
const TRIAL_TIMEOUT: Duration = Duration::from_millis(100);
const TRIAL_RETRIES: u32 = 3;
/// Share of the offered rate a sustained trial must start.
const SUSTAINED_SHARE: f64 = 0.95;
/// Issue 10's goals, checked in [`Goals`]: the steer's sustained rate against the direct
/// path's, and the median latency it may add at each latency rate.
pub const RATE_RATIO_GOAL: f64 = 0.8;
pub const ADDED_P50_GOAL_US: i64 = 50;

/// A run's settings.
#[derive(Clone, Debug)]
pub struct SteerBenchOptions {
    /// UEs per trial (each trial uses fresh UEs that attach first).
    pub sessions: u32,
    /// Measured seconds per trial.
    pub trial_secs: f64,
    /// A rate is sustained when nothing is lost and p99 latency stays under this bound (ms).
    pub p99_bound_ms: f64,
    /// First rate tried (procedures per second); the ladder doubles from here.
    pub start_rate: f64,
    /// Highest rate tried.
    pub max_rate: f64,
    /// Bisection steps between the last sustained and the first failed rate.
    pub refine: u32,
    /// Zipf exponent.
    pub zipf: f64,
    /// Fixed rates at which every contender's latency is measured.
    pub latency_rates: Vec<f64>,
    /// Load-generator tasks, each with its own socket.
    pub load_shards: u32,
    /// Run nginx's UDP proxy as a contender.
    pub nginx: bool,
    /// Count each relay's instructions per signal under callgrind (a trial of its own at
    /// [`INSTRUCTION_RATE`], after the timed ones).
    pub instructions: bool,
}

/// The rate of the trial each relay runs under callgrind: well within what a relay slowed
/// by valgrind's instrumentation carries.
pub const INSTRUCTION_RATE: f64 = 500.0;

/// Most fixed latency rates one run measures.
const MAX_LATENCY_RATES: usize = 8;

impl SteerBenchOptions {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        let out = |option, expected| Err(ConfigError::OutOfRange { option, expected });
        if !(finite_pos(self.start_rate)
            && finite_pos(self.max_rate)
            && self.start_rate <= self.max_rate)
        {
            return out("start-rate", "positive and at most max-rate");
        }
        if !(finite_pos(self.trial_secs) && self.trial_secs <= 3600.0) {
            return out("trial-secs", "within (0, 3600]");
        }
        if !finite_pos(self.p99_bound_ms) {
            return out("p99-bound-ms", "positive");
        }
        if self.latency_rates.len() > MAX_LATENCY_RATES
            || !self
                .latency_rates
                .iter()
                .all(|r| finite_pos(*r) && *r <= self.max_rate)
        {
            return out(
                "latency-rates",
                "at most 8 rates, each positive and at most max-rate",
            );
        }
        if !(1..=handoff_loadgen::MAX_SHARDS).contains(&self.load_shards) {
            return out("load-shards", "within 1..=16");
        }
        Ok(())
    }
}

/// The highest sustained rate: a ladder doubling from `start` up to `max`, then `refine`
/// bisection steps between the last sustained and the first failed rate. Ask
/// [`RateSearch::next_rate`], try it, [`RateSearch::record`] the verdict, until
/// [`RateSearch::result`] is known.
#[derive(Clone, Debug, PartialEq)]
pub struct RateSearch {
    max: f64,
    refine: u32,
    /// The highest rate sustained so far (0: none).
    good: f64,
    phase: SearchPhase,
}

#[derive(Clone, Debug, PartialEq)]
enum SearchPhase {
    Ladder { rate: f64 },
    Bisect { lo: f64, hi: f64, left: u32 },
    Done,
}

impl RateSearch {
    /// A search from `start` to `max` with `refine` bisection steps.
    pub fn new(start: f64, max: f64, refine: u32) -> Self {
        let phase = if start <= max {
            SearchPhase::Ladder { rate: start }
        } else {
            SearchPhase::Done
        };
        Self {
            max,
            refine,
            good: 0.0,
            phase,
        }
    }

    /// The rate to try next; `None` once the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        match self.phase {
            SearchPhase::Ladder { rate } => Some(rate),
            SearchPhase::Bisect { lo, hi, .. } => Some((lo + hi) / 2.0),
            SearchPhase::Done => None,
        }
    }

    /// Whether [`RateSearch::next_rate`] was sustained.
    pub fn record(&mut self, sustained: bool) {
        self.phase = match self.phase {
            SearchPhase::Ladder { rate } if sustained => {
                self.good = rate;
                if rate * 2.0 <= self.max {
                    SearchPhase::Ladder { rate: rate * 2.0 }
                } else {
                    SearchPhase::Done
                }
            }
            SearchPhase::Ladder { rate } if self.refine > 0 => SearchPhase::Bisect {
                lo: self.good,
                hi: rate,
                left: self.refine,
            },
            SearchPhase::Ladder { .. } => SearchPhase::Done,
            SearchPhase::Bisect { lo, hi, left } => {
                let mid = (lo + hi) / 2.0;
                let (lo, hi) = if sustained { (mid, hi) } else { (lo, mid) };
                self.good = lo;
                if left > 1 {
                    SearchPhase::Bisect {
                        lo,
                        hi,
                        left: left - 1,
                    }
                } else {
                    SearchPhase::Done
                }
            }
            SearchPhase::Done => SearchPhase::Done,
        };
    }

    /// The highest sustained rate (0 if none was), once the search is over.
    pub fn result(&self) -> Option<f64> {
        (self.phase == SearchPhase::Done).then_some(self.good)
    }
}

/// One trial at one rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Trial {
    /// `via_steer`, `direct` or `via_nginx`.
    pub contender: &'static str,
    pub offered_rate: f64,
    pub measured_rate: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub skipped_busy: u64,
    /// Latency from a transaction's datagram leaving to its first answer.
    pub latency_us: LatencyReport,
    /// How late the load generator sent against its schedule.
    pub schedule_lag_us: LatencyReport,
    /// Datagrams sent to the contender (transactions and their retransmissions), attach
    /// phase included: what the relay's CPU time is divided by.
    pub signals: u64,
    /// The relay's (steer's or nginx's) CPU time per signal; `None` for the direct path or
    /// when `/proc` could not say.
    pub relay_cpu_ns_per_signal: Option<f64>,
    /// The relay's CPU use over the trial, in cores.
    pub relay_cpu_cores: Option<f64>,
    /// The node process's CPU time per signal.
    pub node_cpu_ns_per_signal: Option<f64>,
    /// The load generator's (this process's) CPU use over the trial, in cores.
    pub load_generator_cpu_cores: Option<f64>,
    /// Wall time of the whole trial (attach, measured phase, drain).
    pub wall_ms: u64,
    pub sustained: bool,
    /// Why it was not sustained: `lost`, `duplicated`, `p99`, `started_share`, and
    /// `load_generator_late` when the generator's own p99 lateness passed the p99 bound.
    pub failed_on: Vec<&'static str>,
}

/// Every contender at one fixed rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatencyPoint {
    pub rate: f64,
    pub direct_latency_us: LatencyReport,
    pub via_steer_latency_us: LatencyReport,
    pub via_nginx_latency_us: Option<LatencyReport>,
    /// Median latency the steer adds over the direct path (may be negative within noise).
    pub steer_added_p50_us: i64,
    /// Median latency nginx adds over the direct path.
    pub nginx_added_p50_us: Option<i64>,
    /// The steer's added median over nginx's.
    pub steer_vs_nginx_added_p50: Option<f64>,
    pub steer_cpu_ns_per_signal: Option<f64>,
    pub nginx_cpu_ns_per_signal: Option<f64>,
    /// The steer's CPU per signal over nginx's.
    pub steer_vs_nginx_cpu: Option<f64>,
    /// The node's CPU per signal on the direct path (what the function itself costs).
    pub direct_node_cpu_ns_per_signal: Option<f64>,
    /// Whether the steer's added median is within [`ADDED_P50_GOAL_US`].
    pub steer_added_p50_within_goal: bool,
}

/// Each relay's instructions per signal, counted by callgrind on a trial of its own.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct InstructionCounts {
    /// The trial's rate (procedures per second).
    pub rate: f64,
    /// User-space instructions the steer ran per datagram sent to it (its answer included).
    pub steer_per_signal: Option<f64>,
    pub nginx_per_signal: Option<f64>,
    /// The steer's count over nginx's.
    pub steer_vs_nginx: Option<f64>,
    /// Why a count is missing.
    pub errors: Vec<String>,
    pub note: &'static str,
}

/// Issue 10's must-show checks, computed from this run's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Goals {
    /// Via-steer sustained rate >= [`RATE_RATIO_GOAL`] x direct.
    pub rate_ratio_at_least: f64,
    pub rate_ratio_met: bool,
    /// Median added by the steer <= [`ADDED_P50_GOAL_US`] at every latency rate.
    pub added_p50_at_most_us: i64,
    pub added_p50_met: bool,
    /// No trial of a rate search failed on the load generator alone.
    pub load_generator_not_the_limit: bool,
}

/// The `handoff bench steer` report (its JSON is a stable format; fields are only added).
#[derive(Debug, serde::Serialize)]
pub struct SteerBenchReport {
    pub via_steer_rate: f64,
    pub direct_rate: f64,
    /// `via_steer_rate / direct_rate`.
    pub ratio: f64,
    pub via_nginx_rate: Option<f64>,
    /// `via_nginx_rate / direct_rate`.
    pub nginx_ratio: Option<f64>,
    pub p99_bound_ms: f64,
    /// The last latency point's rate and latencies (kept for earlier readers).
    pub common_rate: f64,
    pub via_steer_latency_us: LatencyReport,
    pub direct_latency_us: LatencyReport,
    pub latency_points: Vec<LatencyPoint>,
    /// Contenders whose rate search saw a trial fail on the load generator alone (late, while
    /// the contender lost nothing and kept its p99): their sustained rate may be the
    /// generator's limit rather than theirs.
    pub limited_by_load_generator: Vec<&'static str>,
    /// The load generator's CPU use (cores) in the highest-rate trial of the run.
    pub load_generator_cpu_cores_at_max: Option<f64>,
    pub load_shards: u32,
    pub goals: Goals,
    /// Instructions per signal of each relay (`None`: not asked for).
    pub instructions: Option<InstructionCounts>,
    pub trials: Vec<Trial>,
    pub sessions_per_trial: u32,
    pub trial_secs: f64,
    pub note: &'static str,
    pub machine: Machine,
}

/// What a run reports while it goes.
#[derive(Clone, Copy, Debug)]
pub enum SteerEvent {
    /// A trial starts.
    Trial { contender: &'static str, rate: f64 },
    /// A trial ended.
    TrialDone,
}

/// A target of the load: its address and the process relaying for it, if any.
#[derive(Clone, Copy, Debug)]
struct Contender {
    name: &'static str,
    addr: SocketAddr,
    relay_pid: Option<u32>,
}

struct Trials<'a> {
    options: &'a SteerBenchOptions,
    trials: Vec<Trial>,
    next_imsi: u64,
    node_pid: Option<u32>,
    observe: &'a dyn Fn(SteerEvent),
}

/// Per signal, if both figures are known and there were signals.
fn per_signal(ns: Option<u64>, signals: u64) -> Option<f64> {
    (signals > 0).then_some(ns? as f64 / signals as f64)
}

/// In cores, over `wall`.
fn cores(ns: Option<u64>, wall: Duration) -> Option<f64> {
    let w = wall.as_nanos() as f64;
    (w > 0.0).then_some(ns? as f64 / w)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0).then_some(a / b)
}

/// Why a trial's figures fail the sustained bar (empty: sustained).
fn failures(r: &handoff_loadgen::LoadReport, rate: f64, p99_bound_ms: f64) -> Vec<&'static str> {
    let bound_us = p99_bound_ms * 1e3;
    let mut why = Vec::new();
    if r.lost > 0 {
        why.push("lost");
    }
    if r.duplicated > 0 {
        why.push("duplicated");
    }
    if r.latency_us.p99 as f64 > bound_us {
        why.push("p99");
    }
    if r.measured_rate < SUSTAINED_SHARE * rate {
        why.push("started_share");
    }
    if !why.is_empty() && r.schedule_lag_us.p99 as f64 > bound_us {
        why.push("load_generator_late");
    }
    why
}

/// Whether a failed trial failed on the load generator alone: it was late, and the contender
/// lost nothing, duplicated nothing and kept its p99 (only the started share fell short).
fn generator_only(failed_on: &[&'static str]) -> bool {
    failed_on.contains(&"load_generator_late")
        && failed_on
            .iter()
            .all(|r| matches!(*r, "started_share" | "load_generator_late"))
}

impl Trials<'_> {
    async fn trial(&mut self, c: Contender, rate: f64) -> Result<Trial, BenchError> {
        (self.observe)(SteerEvent::Trial {
            contender: c.name,
            rate,
        });
        let o = self.options;
        let cfg = LoadConfig {
            target: c.addr,
            sessions: o.sessions,
            rate,
            duration: Duration::from_secs_f64(o.trial_secs),
            zipf: o.zipf,
            seed: self.trials.len() as u64 + 1,
            imsi_base: self.next_imsi,
            timeout: TRIAL_TIMEOUT,
            retries: TRIAL_RETRIES,
            latency_from_send: true,
            ..LoadConfig::default()
        };
        self.next_imsi += u64::from(o.sessions);
        let read = |pid: Option<u32>| pid.and_then(cpu_ns);
        let (relay0, node0, own0) = (read(c.relay_pid), read(self.node_pid), own_cpu_ns());
        let wall = std::time::Instant::now();
        let (r, _) = handoff_loadgen::run_sharded(cfg, o.load_shards)
            .await
            .map_err(BenchError::Load)?;
        let wall = wall.elapsed();
        let relay = spent(relay0, read(c.relay_pid));
        let node = spent(node0, read(self.node_pid));
        let own = spent(own0, own_cpu_ns());
        let signals = r.signals_sent + r.retransmissions;
        let failed_on = failures(&r, rate, o.p99_bound_ms);
        let t = Trial {
            contender: c.name,
            offered_rate: rate,
            measured_rate: r.measured_rate,
            lost: r.lost,
            duplicated: r.duplicated,
            skipped_busy: r.skipped_busy,
            latency_us: r.latency_us,
            schedule_lag_us: r.schedule_lag_us,
            signals,
            relay_cpu_ns_per_signal: per_signal(relay, signals),
            relay_cpu_cores: cores(relay, wall),
            node_cpu_ns_per_signal: per_signal(node, signals),
            load_generator_cpu_cores: cores(own, wall),
            wall_ms: wall.as_millis() as u64,
            sustained: failed_on.is_empty(),
            failed_on,
        };
        tracing::debug!(
            contender = c.name,
            rate,
            p50 = t.latency_us.p50,
            sustained = t.sustained,
            "trial done"
        );
        (self.observe)(SteerEvent::TrialDone);
        self.trials.push(t.clone());
        Ok(t)
    }

    /// The highest rate `c` sustains, and whether a failure on the way had a late load
    /// generator.
    async fn max_rate(&mut self, c: Contender) -> Result<(f64, bool), BenchError> {
        let o = self.options;
        let mut search = RateSearch::new(o.start_rate, o.max_rate, o.refine);
        let mut late = false;
        while let Some(rate) = search.next_rate() {
            let t = self.trial(c, rate).await?;
            late |= generator_only(&t.failed_on);
            search.record(t.sustained);
        }
        Ok((search.result().unwrap_or(0.0), late))
    }
}

/// The relays and the node a run uses, stopped together.
struct Bed {
    node: NodeProcess,
    steer: SteerProcess,
    nginx: Option<NginxProcess>,
}

impl Bed {
    async fn stop(self) {
        self.steer.stop().await;
        if let Some(n) = self.nginx {
            n.stop().await;
        }
        self.node.stop().await;
    }
}

/// Runs the steer benchmark: one node process hosting two vMME instances, one behind a
/// `handoff steer` process and one served directly (and through nginx, when asked).
pub async fn steer_bench(
    options: &SteerBenchOptions,
    launcher: &NodeLauncher,
    observe: &dyn Fn(SteerEvent),
) -> Result<SteerBenchReport, BenchError> {
    let via = Subject::new("mme-steer", LOAD_FUNCTION);
    let direct = Subject::new("mme-direct", LOAD_FUNCTION);
    let node = NodeProcess::spawn(
        launcher,
        "node-bench",
        &[&via, &direct],
        Some(&direct.instance),
    )
    .await?;
    let Some(direct_addr) = node.direct else {
        node.stop().await;
        return Err(BenchError::NodeNotReady {
            node: "node-bench".into(),
            reason: "no direct address reported".into(),
        });
    };
    let steer = match SteerProcess::spawn(launcher, &via, node.addr, None).await {
        Ok(s) => s,
        Err(e) => {
            node.stop().await;
            return Err(e);
        }
    };
    let nginx = if options.nginx {
        match NginxProcess::spawn(direct_addr, None).await {
            Ok(n) => Some(n),
            Err(e) => {
                steer.stop().await;
                node.stop().await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let bed = Bed { node, steer, nginx };
    let result = run_contenders(options, &bed, direct_addr, observe).await;
    let result = match result {
        Ok((mut report, mut t)) if options.instructions => {
            report.instructions =
                Some(instructions(&mut t, launcher, &via, &bed, direct_addr).await);
            report.trials = t.trials;
            Ok(report)
        }
        Ok((mut report, t)) => {
            report.trials = t.trials;
            Ok(report)
        }
        Err(e) => Err(e),
    };
    bed.stop().await;
    result
}

/// Runs a trial through each relay started anew under callgrind, counting its instructions.
/// A new steer binds the instance and fences off the bench's first one, which carries nothing
/// after the timed trials.
async fn instructions(
    t: &mut Trials<'_>,
    launcher: &NodeLauncher,
    via: &Subject,
    bed: &Bed,
    direct_addr: SocketAddr,
) -> InstructionCounts {
    let mut counts = InstructionCounts {
        rate: INSTRUCTION_RATE,
        note: "user-space instructions per datagram sent to the relay (its answer's relay \
               included), counted by valgrind's callgrind over a trial of its own; the \
               kernel's share (sends and receives) is in the CPU time per signal instead",
        ..InstructionCounts::default()
    };
    let mut run = async |name: &'static str, nginx: bool| -> Result<f64, String> {
        let cg = Callgrind::new()?;
        let (addr, pid, stop): (SocketAddr, Option<u32>, Relay) = if nginx {
            let n = NginxProcess::spawn(direct_addr, Some(&cg))
                .await
                .map_err(|e| e.to_string())?;
            (n.addr, n.pid(), Relay::Nginx(n))
        } else {
            let s = SteerProcess::spawn(launcher, via, bed.node.addr, Some(&cg))
                .await
                .map_err(|e| e.to_string())?;
            (s.addr, s.pid(), Relay::Steer(s))
        };
        let result = async {
            let pid = pid.ok_or("the relay has no pid")?;
            cg.start(pid).await?;
            let c = Contender {
                name,
                addr,
                relay_pid: Some(pid),
            };
            let trial = t
                .trial(c, INSTRUCTION_RATE)
                .await
                .map_err(|e| e.to_string())?;
            let ir = cg.dump(pid).await?;
            per_signal(Some(ir), trial.signals).ok_or_else(|| "no signals sent".to_owned())
        }
        .await;
        stop.stop().await;
        result
    };
    match run("via_steer_under_callgrind", false).await {
        Ok(v) => counts.steer_per_signal = Some(v),
        Err(e) => counts.errors.push(format!("steer: {e}")),
    }
    if bed.nginx.is_some() {
        match run("via_nginx_under_callgrind", true).await {
            Ok(v) => counts.nginx_per_signal = Some(v),
            Err(e) => counts.errors.push(format!("nginx: {e}")),
        }
    }
    counts.steer_vs_nginx = ratio(counts.steer_per_signal, counts.nginx_per_signal);
    counts
}

/// A relay started for a count, stopped after it.
enum Relay {
    Steer(SteerProcess),
    Nginx(NginxProcess),
}

impl Relay {
    async fn stop(self) {
        match self {
            Relay::Steer(s) => s.stop().await,
            Relay::Nginx(n) => n.stop().await,
        }
    }
}

/// The timed trials; the trials run so far come back beside the report (its `trials` are
/// left empty).
async fn run_contenders<'a>(
    options: &'a SteerBenchOptions,
    bed: &Bed,
    direct_addr: SocketAddr,
    observe: &'a dyn Fn(SteerEvent),
) -> Result<(SteerBenchReport, Trials<'a>), BenchError> {
    let via_steer = Contender {
        name: "via_steer",
        addr: bed.steer.addr,
        relay_pid: bed.steer.pid(),
    };
    let direct = Contender {
        name: "direct",
        addr: direct_addr,
        relay_pid: None,
    };
    let via_nginx = bed.nginx.as_ref().map(|n| Contender {
        name: "via_nginx",
        addr: n.addr,
        relay_pid: n.pid(),
    });
    let mut t = Trials {
        options,
        trials: Vec::new(),
        next_imsi: FIRST_IMSI,
        node_pid: bed.node.pid(),
        observe,
    };
    let mut limited = Vec::new();
    let (via_steer_rate, late) = t.max_rate(via_steer).await?;
    if late {
        limited.push("via_steer");
    }
    let (direct_rate, late) = t.max_rate(direct).await?;
    if late {
        limited.push("direct");
    }
    let mut via_nginx_rate = None;
    if let Some(n) = via_nginx {
        let (rate, late) = t.max_rate(n).await?;
        if late {
            limited.push("via_nginx");
        }
        via_nginx_rate = Some(rate);
    }
    let mut points = Vec::new();
    for &rate in &options.latency_rates {
        let d = t.trial(direct, rate).await?;
        let s = t.trial(via_steer, rate).await?;
        let n = match via_nginx {
            Some(n) => Some(t.trial(n, rate).await?),
            None => None,
        };
        let added = |x: &Trial| x.latency_us.p50 as i64 - d.latency_us.p50 as i64;
        let steer_added = added(&s);
        let nginx_added = n.as_ref().map(added);
        points.push(LatencyPoint {
            rate,
            direct_latency_us: d.latency_us,
            via_steer_latency_us: s.latency_us,
            via_nginx_latency_us: n.as_ref().map(|n| n.latency_us),
            steer_added_p50_us: steer_added,
            nginx_added_p50_us: nginx_added,
            steer_vs_nginx_added_p50: ratio(
                Some(steer_added as f64),
                nginx_added.map(|a| a as f64),
            ),
            steer_cpu_ns_per_signal: s.relay_cpu_ns_per_signal,
            nginx_cpu_ns_per_signal: n.as_ref().and_then(|n| n.relay_cpu_ns_per_signal),
            steer_vs_nginx_cpu: ratio(
                s.relay_cpu_ns_per_signal,
                n.as_ref().and_then(|n| n.relay_cpu_ns_per_signal),
            ),
            direct_node_cpu_ns_per_signal: d.node_cpu_ns_per_signal,
            steer_added_p50_within_goal: steer_added <= ADDED_P50_GOAL_US,
        });
    }
    let ratio_of = |a: f64| {
        if direct_rate > 0.0 {
            a / direct_rate
        } else {
            0.0
        }
    };
    let rate_ratio = ratio_of(via_steer_rate);
    let at_max = t
        .trials
        .iter()
        .max_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate))
        .and_then(|t| t.load_generator_cpu_cores);
    let last = points.last();
    Ok((
        SteerBenchReport {
            via_steer_rate,
            direct_rate,
            ratio: rate_ratio,
            via_nginx_rate,
            nginx_ratio: via_nginx_rate.map(ratio_of),
            p99_bound_ms: options.p99_bound_ms,
            common_rate: last.map_or(0.0, |p| p.rate),
            via_steer_latency_us: last.map(|p| p.via_steer_latency_us).unwrap_or_default(),
            direct_latency_us: last.map(|p| p.direct_latency_us).unwrap_or_default(),
            goals: Goals {
                rate_ratio_at_least: RATE_RATIO_GOAL,
                rate_ratio_met: rate_ratio >= RATE_RATIO_GOAL,
                added_p50_at_most_us: ADDED_P50_GOAL_US,
                added_p50_met: !points.is_empty()
                    && points.iter().all(|p| p.steer_added_p50_within_goal),
                load_generator_not_the_limit: limited.is_empty(),
            },
            latency_points: points,
            limited_by_load_generator: limited,
            load_generator_cpu_cores_at_max: at_max,
            load_shards: options.load_shards,
            instructions: None,
            trials: Vec::new(),
            sessions_per_trial: options.sessions,
            trial_secs: options.trial_secs,
            note: "rates are new procedures per second started open-loop by the load generator's \
               tasks (one socket each) in this process; the node, the steer and nginx (one \
               worker) are child processes; latency runs from a datagram leaving to its first \
               answer; CPU per signal is the relay process's CPU time over a whole trial \
               divided by the datagrams sent to it; all on loopback",
            machine: Machine::read(),
        },
        t,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a target that sustains every rate up to `capacity`.
    fn search(start: f64, max: f64, refine: u32, capacity: f64) -> (f64, Vec<f64>) {
        let mut s = RateSearch::new(start, max, refine);
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            tried.push(rate);
            s.record(rate <= capacity);
            assert!(tried.len() < 100, "the search ends");
        }
        (s.result().unwrap(), tried)
    }

    #[test]
    fn the_ladder_doubles_then_bisects_between_the_last_good_and_first_bad_rate() {
        let (rate, tried) = search(1000.0, 64_000.0, 3, 5000.0);
        assert_eq!(
            tried,
            [1000.0, 2000.0, 4000.0, 8000.0, 6000.0, 5000.0, 5500.0]
        );
        assert_eq!(rate, 5000.0);
    }

    #[test]
    fn a_target_that_sustains_everything_stops_at_the_highest_ladder_rate() {
        let (rate, tried) = search(1000.0, 5000.0, 3, f64::INFINITY);
        assert_eq!(tried, [1000.0, 2000.0, 4000.0]);
        assert_eq!(rate, 4000.0);
    }

    #[test]
    fn a_target_that_sustains_nothing_reports_zero() {
        let (rate, tried) = search(1000.0, 64_000.0, 2, 0.0);
        assert_eq!(tried, [1000.0, 500.0, 250.0]);
        assert_eq!(rate, 0.0);
        let (rate, tried) = search(1000.0, 64_000.0, 0, 0.0);
        assert_eq!((rate, tried), (0.0, vec![1000.0]));
    }

    #[test]
    fn the_result_is_unknown_until_the_search_is_over() {
        let mut s = RateSearch::new(1000.0, 4000.0, 1);
        assert_eq!(s.result(), None);
        s.record(true);
        assert_eq!(s.result(), None);
        assert_eq!(RateSearch::new(2.0, 1.0, 3).result(), Some(0.0));
    }

    fn load(lost: u64, p99: u64, measured: f64, lag_p99: u64) -> handoff_loadgen::LoadReport {
        handoff_loadgen::LoadReport {
            lost,
            measured_rate: measured,
            latency_us: LatencyReport {
                p99,
                ..LatencyReport::default()
            },
            schedule_lag_us: LatencyReport {
                p99: lag_p99,
                ..LatencyReport::default()
            },
            ..handoff_loadgen::LoadReport::default()
        }
    }

    #[test]
    fn a_trial_says_why_it_was_not_sustained_and_blames_a_late_generator_only_then() {
        assert!(failures(&load(0, 900, 1000.0, 50), 1000.0, 1.0).is_empty());
        assert_eq!(failures(&load(3, 900, 1000.0, 50), 1000.0, 1.0), ["lost"]);
        assert_eq!(
            failures(&load(0, 1500, 900.0, 50), 1000.0, 1.0),
            ["p99", "started_share"]
        );
        assert_eq!(
            failures(&load(0, 1500, 900.0, 5000), 1000.0, 1.0),
            ["p99", "started_share", "load_generator_late"]
        );
        assert!(!generator_only(&[
            "p99",
            "started_share",
            "load_generator_late"
        ]));
        assert!(generator_only(&["started_share", "load_generator_late"]));
        assert!(!generator_only(&["started_share"]));
        // A late generator on a sustained trial changes nothing.
        assert!(failures(&load(0, 900, 1000.0, 5000), 1000.0, 1.0).is_empty());
    }

    #[test]
    fn per_signal_and_core_figures_are_unknown_rather_than_divided_by_zero() {
        assert_eq!(per_signal(Some(1000), 10), Some(100.0));
        assert_eq!(per_signal(Some(1000), 0), None);
        assert_eq!(per_signal(None, 10), None);
        assert_eq!(cores(Some(500_000_000), Duration::from_secs(1)), Some(0.5));
        assert_eq!(cores(Some(1), Duration::ZERO), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
    }

    #[test]
    fn steer_settings_out_of_range_are_refused() {
        let ok = SteerBenchOptions {
            sessions: 10,
            trial_secs: 1.0,
            p99_bound_ms: 10.0,
            start_rate: 100.0,
            max_rate: 1000.0,
            refine: 1,
            zipf: 1.1,
            latency_rates: vec![500.0, 1000.0],
            load_shards: 2,
            nginx: true,
            instructions: false,
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: fn(&mut SteerBenchOptions)| {
            let mut o = ok.clone();
            f(&mut o);
            match o.validate() {
                Err(ConfigError::OutOfRange { option, .. }) => option,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(bad(|o| o.start_rate = 2000.0), "start-rate");
        assert_eq!(bad(|o| o.max_rate = f64::NAN), "start-rate");
        assert_eq!(bad(|o| o.trial_secs = 0.0), "trial-secs");
        assert_eq!(bad(|o| o.p99_bound_ms = -1.0), "p99-bound-ms");
        assert_eq!(bad(|o| o.latency_rates = vec![2000.0]), "latency-rates");
        assert_eq!(bad(|o| o.latency_rates = vec![f64::NAN]), "latency-rates");
        assert_eq!(bad(|o| o.latency_rates = vec![100.0; 9]), "latency-rates");
        assert_eq!(bad(|o| o.load_shards = 0), "load-shards");
        assert_eq!(bad(|o| o.load_shards = 17), "load-shards");
    }
}
