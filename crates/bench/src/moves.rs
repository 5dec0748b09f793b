//! Moving an instance between nodes: the live move (`handoff demo`, `handoff bench move`) and
//! the baselines `handoff bench move` compares it with (stop-and-copy, iterative pre-copy).
//!
//! Every mover takes the [`Subject`] it moves, so any function the nodes host can be moved;
//! none of them looks inside a session.
//!
//! - [`live_move`] runs the controller's own move machine and driver (DESIGN.md "Live move")
//!   over the steer's control listener: no signal is paused.
//! - [`baseline_move`] uses the node's `push` (copy the records changed since a seq) and the
//!   steer's `hold`/`release`: stop-and-copy holds the signals for one full copy; pre-copy
//!   copies while serving, re-copies what changed until a [`PreCopyRule`] says pause, then
//!   holds for the rest.

use crate::{BenchError, Subject};
use handoff_node::client::AdminClient;
use handoff_node::push::PushReport;
use handoff_state::{CopyOrder, CopyPlan};
use handoff_steer::Steer;
use std::net::SocketAddr;
use std::time::Instant;

/// A wait distribution, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WaitLatency {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// What a live move did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MoveReport {
    pub instance: String,
    pub from: String,
    pub to: String,
    pub sessions_at_start: u64,
    pub records_copied: u64,
    pub tombstones: u64,
    pub bytes_copied: u64,
    pub digest_match: bool,
    /// Rounds that re-sent differing digest buckets, and the records they re-sent.
    pub resend_rounds: u64,
    pub records_resent: u64,
    pub buffered_peak: u64,
    /// Of those, buffered after the manifest (waiting for a record): the copy order's share.
    pub buffered_for_records_peak: u64,
    /// Sessions the destination asked for ahead of their place.
    pub demanded: u64,
    /// Wait of the signals it buffered (µs of steer time).
    pub buffered_wait_us: WaitLatency,
    pub first_seq: u64,
    pub cutover_seq: u64,
    pub phases_ms: PhasesMs,
    pub total_ms: u64,
    /// Longest gap between answers clients saw during the move (filled in by whoever ran the
    /// load: the mover does not see the clients).
    pub max_response_gap_ms: f64,
    /// The same statistic outside the move.
    pub baseline_response_gap_ms: f64,
}

/// Time spent in each phase of a live move, ms.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PhasesMs {
    pub prepare: u64,
    pub steer: u64,
    pub copy: u64,
    pub verify: u64,
    pub cutover: u64,
    /// Drain, finish and retire together.
    pub retire: u64,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Moves `subject` from node `a` to node `b` live (DESIGN.md "Live move") with the same move
/// machine and driver the controller runs, over `steer`'s control listener, timing each phase.
pub async fn live_move(
    steer: &Steer,
    subject: &Subject,
    a: SocketAddr,
    b: SocketAddr,
    order: CopyOrder,
    abort_safe: bool,
) -> Result<MoveReport, BenchError> {
    use handoff_controller::driver::{drive, NetDriver, Progress};
    use handoff_controller::machine::{MoveMachine, MoveSpec, Phase};
    let start = Instant::now();
    let control = steer.control_addr().ok_or(BenchError::NoControlListener)?;
    let m = MoveMachine::new(
        MoveSpec {
            id: 1,
            instance: subject.instance.clone(),
            function: subject.function.clone(),
            source: a,
            destination: b,
            steer: control,
            order,
            plan: CopyPlan::default(),
            abort_safe,
            lead_ms: 0,
            origin: "bench".into(),
        },
        0,
    )
    .map_err(BenchError::MoveRefused)?;
    let driver = NetDriver {
        name: "bench".into(),
        token: String::new(),
    };
    let (_abort, abort_rx) = tokio::sync::watch::channel(None);
    let (progress, _) = tokio::sync::watch::channel(Progress::default());
    let end = drive(m, &driver, |_| {}, abort_rx, progress).await;
    if end.phase != Phase::Done {
        return Err(BenchError::MoveEnded {
            phase: end.phase_name(),
            reason: end
                .reason
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        });
    }
    let f = &end.figures;
    let phase = |names: &[&str]| -> u64 {
        names
            .iter()
            .map(|n| f.phases_ms.get(*n).copied().unwrap_or(0))
            .sum()
    };
    Ok(MoveReport {
        instance: end.spec.instance.clone(),
        from: a.to_string(),
        to: b.to_string(),
        sessions_at_start: f.copy.sessions_at_start,
        records_copied: f.copy.records_copied,
        tombstones: f.copy.tombstones,
        bytes_copied: f.copy.bytes_copied,
        digest_match: f.copy.digest_match,
        resend_rounds: f.copy.resends.len() as u64,
        records_resent: f.copy.resends.iter().map(|r| r.records).sum(),
        buffered_peak: f.shadow.buffered_peak,
        buffered_for_records_peak: f.shadow.buffered_for_records_peak,
        demanded: f.shadow.demanded,
        buffered_wait_us: WaitLatency {
            p50: f.shadow.buffered_wait_us[0],
            p99: f.shadow.buffered_wait_us[1],
            max: f.shadow.buffered_wait_us[2],
        },
        first_seq: f.first_seq,
        cutover_seq: f.cutover_seq,
        phases_ms: PhasesMs {
            prepare: phase(&["prepare"]),
            steer: phase(&["steer"]),
            copy: phase(&["copy"]),
            verify: phase(&["verify"]),
            cutover: phase(&["cutover"]),
            retire: phase(&["drain", "finish", "retire"]),
        },
        total_ms: ms(start),
        ..MoveReport::default()
    })
}

/// When iterative pre-copy stops re-copying and pauses: after a round that moved fewer than
/// `stop_fraction` of the sessions, or after `max_rounds` rounds while serving (the first,
/// full copy included).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PreCopyRule {
    pub stop_fraction: f64,
    pub max_rounds: u32,
}

impl Default for PreCopyRule {
    fn default() -> Self {
        Self {
            stop_fraction: 0.01,
            max_rounds: 5,
        }
    }
}

impl PreCopyRule {
    /// Whether to pause after round `round` (0: the full copy) moved `moved` of `sessions`.
    pub fn pause_now(&self, round: u32, moved: u64, sessions: u64) -> bool {
        round + 1 >= self.max_rounds || (moved as f64) < self.stop_fraction * sessions as f64
    }
}

/// One push round of a baseline.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Round {
    /// Whether signals were held at the steer during it.
    pub held: bool,
    pub since_seq: u64,
    pub records: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub ms: u64,
}

/// What a baseline move (stop-and-copy or pre-copy) did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BaselineReport {
    pub instance: String,
    pub from: String,
    pub to: String,
    pub rounds: Vec<Round>,
    pub records_copied: u64,
    pub tombstones: u64,
    pub bytes_copied: u64,
    pub refused: u64,
    /// The last seq the steer sent to the source before holding.
    pub held_after_seq: u64,
    /// From the hold to the release's answer: how long signals waited at the steer.
    pub held_ms: u64,
    pub total_ms: u64,
    /// Longest gap between answers clients saw during the move (filled in by the load's owner).
    pub max_response_gap_ms: f64,
    /// The same statistic outside the move.
    pub baseline_response_gap_ms: f64,
}

impl BaselineReport {
    /// Counts one push round.
    pub fn add(&mut self, held: bool, since_seq: u64, p: &PushReport, ms: u64) {
        self.records_copied += p.records;
        self.tombstones += p.tombstones;
        self.bytes_copied += p.bytes;
        self.refused += p.refused;
        self.rounds.push(Round {
            held,
            since_seq,
            records: p.records,
            tombstones: p.tombstones,
            bytes: p.bytes,
            ms,
        });
    }
}

/// One `push` from the source: every record with a seq above `since_seq` (and, when `last`,
/// everything up to `after_seq`) to `to`.
async fn push(
    admin: &mut AdminClient,
    instance: &str,
    to: SocketAddr,
    since_seq: u64,
    after_seq: u64,
    last: bool,
) -> Result<PushReport, BenchError> {
    Ok(admin
        .call(&handoff_node::ops::Push {
            instance: instance.into(),
            destination: to,
            since_seq,
            after_seq,
            last,
        })
        .await?)
}

/// Moves `subject` from `a` to `b` by stop-and-copy (`rule` `None`) or iterative pre-copy:
/// copy everything while serving, re-copy what changed until `rule` says pause; then hold
/// signals at the steer, wait until the source applied every one sent, copy the rest, and
/// release the held signals to `b`.
pub async fn baseline_move(
    steer: &Steer,
    subject: &Subject,
    a: SocketAddr,
    b: SocketAddr,
    rule: Option<PreCopyRule>,
) -> Result<BaselineReport, BenchError> {
    let instance = subject.instance.as_str();
    let mut admin_a = AdminClient::connect(a, "bench").await?;
    let mut admin_b = AdminClient::connect(b, "bench").await?;
    let start = Instant::now();
    let mut report = BaselineReport {
        instance: instance.into(),
        from: a.to_string(),
        to: b.to_string(),
        ..BaselineReport::default()
    };
    admin_b
        .call(&handoff_node::ops::CreateInstance {
            instance: instance.into(),
            function: subject.function.clone(),
        })
        .await?;
    let mut since = 0;
    if let Some(rule) = rule {
        for round in 0..rule.max_rounds {
            let t = Instant::now();
            let p = push(&mut admin_a, instance, b, since, 0, false).await?;
            report.add(false, since, &p, ms(t));
            since = p.max_seq;
            let sessions = report.rounds[0].records;
            if rule.pause_now(round, p.records + p.tombstones, sessions) {
                break;
            }
        }
    }
    let held_at = Instant::now();
    let steer_refused = |e: handoff_steer::AskError| BenchError::SteerRefused {
        instance: instance.to_owned(),
        reason: e.to_string(),
    };
    let last_sent = steer.hold(instance).await.map_err(steer_refused)?;
    report.held_after_seq = last_sent;
    let t = Instant::now();
    let p = match push(&mut admin_a, instance, b, since, last_sent, true).await {
        Ok(p) => p,
        Err(e) => {
            // Give the signals back to the source rather than leave them held.
            let _ = steer.release(instance, a).await;
            return Err(e);
        }
    };
    report.add(true, since, &p, ms(t));
    steer.release(instance, b).await.map_err(steer_refused)?;
    report.held_ms = ms(held_at);
    report.total_ms = ms(start);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_copy_pauses_when_a_round_moves_little_or_rounds_run_out() {
        let rule = PreCopyRule {
            stop_fraction: 0.01,
            max_rounds: 5,
        };
        // The full first copy never counts as small.
        assert!(!rule.pause_now(0, 100_000, 100_000));
        assert!(
            !rule.pause_now(1, 1_000, 100_000),
            "1% is not fewer than 1%"
        );
        assert!(rule.pause_now(1, 999, 100_000));
        assert!(!rule.pause_now(3, 50_000, 100_000));
        assert!(
            rule.pause_now(4, 50_000, 100_000),
            "five rounds while serving at most"
        );
        let one = PreCopyRule {
            stop_fraction: 0.0,
            max_rounds: 1,
        };
        assert!(one.pause_now(0, 100_000, 100_000));
    }

    #[test]
    fn a_baseline_report_sums_its_rounds_and_keeps_them_in_order() {
        let mut r = BaselineReport::default();
        let push = |records, tombstones, bytes, refused| PushReport {
            records,
            tombstones,
            bytes,
            refused,
            ..PushReport::default()
        };
        r.add(false, 0, &push(100, 0, 10_000, 0), 7);
        r.add(true, 40, &push(3, 2, 316, 1), 2);
        assert_eq!(
            (r.records_copied, r.tombstones, r.bytes_copied, r.refused),
            (103, 2, 10_316, 1)
        );
        assert_eq!(
            r.rounds,
            vec![
                Round {
                    held: false,
                    since_seq: 0,
                    records: 100,
                    tombstones: 0,
                    bytes: 10_000,
                    ms: 7
                },
                Round {
                    held: true,
                    since_seq: 40,
                    records: 3,
                    tombstones: 2,
                    bytes: 316,
                    ms: 2
                },
            ]
        );
    }
}
