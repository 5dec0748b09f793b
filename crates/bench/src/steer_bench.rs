//! `handoff bench steer`: the highest rate the steer sustains against the node's direct path
//! (no steer), found by the same [`RateSearch`] for both, then both at one common rate for
//! their latencies.
//!
//! A rate is sustained when nothing is lost or duplicated, p99 latency stays under a bound
//! and at least 95% of the offered rate was started. The search is a pure state machine
//! (a doubling ladder, then bisection), tested without a network.

use crate::cluster::{start_steer, NodeLauncher, NodeProcess};
use crate::move_bench::{ConfigError, LOAD_FUNCTION};
use crate::report::Machine;
use crate::{BenchError, Subject};
use handoff_function::runtime::Catalog;
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
}

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
    /// `via_steer` or `direct`.
    pub contender: &'static str,
    pub offered_rate: f64,
    pub measured_rate: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub skipped_busy: u64,
    pub latency_us: LatencyReport,
    pub sustained: bool,
}

/// The `handoff bench steer` report (its JSON is a stable format).
#[derive(Debug, serde::Serialize)]
pub struct SteerBenchReport {
    pub via_steer_rate: f64,
    pub direct_rate: f64,
    pub ratio: f64,
    pub p99_bound_ms: f64,
    pub common_rate: f64,
    pub via_steer_latency_us: LatencyReport,
    pub direct_latency_us: LatencyReport,
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

struct Trials<'a> {
    options: &'a SteerBenchOptions,
    trials: Vec<Trial>,
    next_imsi: u64,
    observe: &'a dyn Fn(SteerEvent),
}

impl Trials<'_> {
    async fn trial(
        &mut self,
        contender: &'static str,
        target: SocketAddr,
        rate: f64,
    ) -> Result<Trial, BenchError> {
        (self.observe)(SteerEvent::Trial { contender, rate });
        let o = self.options;
        let cfg = LoadConfig {
            target,
            sessions: o.sessions,
            rate,
            duration: Duration::from_secs_f64(o.trial_secs),
            zipf: o.zipf,
            seed: self.trials.len() as u64 + 1,
            imsi_base: self.next_imsi,
            timeout: TRIAL_TIMEOUT,
            retries: TRIAL_RETRIES,
            ..LoadConfig::default()
        };
        self.next_imsi += u64::from(o.sessions);
        let (r, _) = handoff_loadgen::run(cfg, |_| {})
            .await
            .map_err(BenchError::Load)?;
        let sustained = r.lost == 0
            && r.duplicated == 0
            && (r.latency_us.p99 as f64) <= o.p99_bound_ms * 1e3
            && r.measured_rate >= SUSTAINED_SHARE * rate;
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
        (self.observe)(SteerEvent::TrialDone);
        self.trials.push(t.clone());
        Ok(t)
    }

    /// The highest rate `target` sustains.
    async fn max_rate(
        &mut self,
        contender: &'static str,
        target: SocketAddr,
    ) -> Result<f64, BenchError> {
        let o = self.options;
        let mut search = RateSearch::new(o.start_rate, o.max_rate, o.refine);
        while let Some(rate) = search.next_rate() {
            let sustained = self.trial(contender, target, rate).await?.sustained;
            search.record(sustained);
        }
        Ok(search.result().unwrap_or(0.0))
    }
}

/// Runs the steer benchmark: one node process hosting two vMME instances, one behind an
/// in-process steer and one served directly.
pub async fn steer_bench(
    options: &SteerBenchOptions,
    launcher: &NodeLauncher,
    catalog: &Catalog,
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
    let direct_addr = node.direct.ok_or_else(|| BenchError::NodeNotReady {
        node: "node-bench".into(),
        reason: "no direct address reported".into(),
    })?;
    let (steer, via_steer) = start_steer(catalog, &via, node.addr).await?;
    let mut t = Trials {
        options,
        trials: Vec::new(),
        next_imsi: FIRST_IMSI,
        observe,
    };
    let result = async {
        let via_steer_rate = t.max_rate("via_steer", via_steer).await?;
        let direct_rate = t.max_rate("direct", direct_addr).await?;
        let common_rate = (via_steer_rate.min(direct_rate) / 2.0).max(options.start_rate / 2.0);
        let s = t.trial("via_steer", via_steer, common_rate).await?;
        let d = t.trial("direct", direct_addr, common_rate).await?;
        Ok::<_, BenchError>((via_steer_rate, direct_rate, common_rate, s, d))
    }
    .await;
    steer.shutdown();
    node.stop().await;
    let (via_steer_rate, direct_rate, common_rate, s, d) = result?;
    Ok(SteerBenchReport {
        via_steer_rate,
        direct_rate,
        ratio: if direct_rate > 0.0 {
            via_steer_rate / direct_rate
        } else {
            0.0
        },
        p99_bound_ms: options.p99_bound_ms,
        common_rate,
        via_steer_latency_us: s.latency_us,
        direct_latency_us: d.latency_us,
        trials: t.trials,
        sessions_per_trial: options.sessions,
        trial_secs: options.trial_secs,
        note: "rates are new procedures per second started open-loop by one load-generator task; \
               steer and load generator share this process, the node is a child process; \
               all on loopback",
        machine: Machine::read(),
    })
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
    }
}
