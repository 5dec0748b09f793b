//! Moving an instance between nodes: the live move (`handoff demo`, `handoff bench move`) and
//! the baselines `handoff bench move` compares it with (stop-and-copy, iterative pre-copy).

use handoff_node::client::AdminClient;

/// What the mid-run move did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct MoveReport {
    pub(crate) instance: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) sessions_at_start: u64,
    pub(crate) records_copied: u64,
    pub(crate) tombstones: u64,
    pub(crate) bytes_copied: u64,
    pub(crate) digest_match: bool,
    /// Rounds that re-sent differing digest buckets, and the records they re-sent.
    pub(crate) resend_rounds: u64,
    pub(crate) records_resent: u64,
    pub(crate) buffered_peak: u64,
    /// Of those, buffered after the manifest (waiting for a record): the copy order's share.
    pub(crate) buffered_for_records_peak: u64,
    pub(crate) first_seq: u64,
    pub(crate) cutover_seq: u64,
    pub(crate) phases_ms: PhasesMs,
    pub(crate) total_ms: u64,
    pub(crate) max_response_gap_ms: f64,
    pub(crate) baseline_response_gap_ms: f64,
}

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct PhasesMs {
    pub(crate) prepare: u64,
    pub(crate) steer: u64,
    pub(crate) copy: u64,
    pub(crate) verify: u64,
    pub(crate) cutover: u64,
    pub(crate) retire: u64,
}

fn ms(since: std::time::Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Moves `mme-1` from `a` to `b` (DESIGN.md "Live move") with the same move machine and driver
/// the controller runs, over the steer's control listener, timing each phase.
pub(crate) async fn live_move(
    steer: &handoff_steer::Steer,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    order: handoff_state::CopyOrder,
) -> anyhow::Result<MoveReport> {
    use handoff_controller::driver::{drive, NetDriver, Progress};
    use handoff_controller::machine::{MoveMachine, MoveSpec, Phase};
    let start = std::time::Instant::now();
    let control = steer
        .control_addr()
        .ok_or_else(|| anyhow::anyhow!("the steer has no control listener"))?;
    let m = MoveMachine::new(
        MoveSpec {
            id: 1,
            instance: "mme-1".into(),
            function: "vmme".into(),
            source: a,
            destination: b,
            steer: control,
            order,
            plan: handoff_state::CopyPlan::default(),
            abort_safe: false,
            lead_ms: 0,
        },
        0,
    )
    .map_err(anyhow::Error::msg)?;
    let driver = NetDriver {
        name: "demo".into(),
        token: String::new(),
    };
    let (_abort, abort_rx) = tokio::sync::watch::channel(None);
    let (progress, _) = tokio::sync::watch::channel(Progress::default());
    let end = drive(m, &driver, |_| {}, abort_rx, progress).await;
    if end.phase != Phase::Done {
        anyhow::bail!(
            "the move ended {}: {}",
            end.phase_name(),
            end.reason.as_deref().unwrap_or("no reason given")
        );
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
        total_ms: start.elapsed().as_millis() as u64,
        ..MoveReport::default()
    })
}

/// When iterative pre-copy stops re-copying and pauses: after a round that moved fewer than
/// `stop_fraction` of the sessions, or after `max_rounds` rounds while serving (the first,
/// full copy included).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct PreCopyRule {
    pub(crate) stop_fraction: f64,
    pub(crate) max_rounds: u32,
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
    pub(crate) fn pause_now(&self, round: u32, moved: u64, sessions: u64) -> bool {
        round + 1 >= self.max_rounds || (moved as f64) < self.stop_fraction * sessions as f64
    }
}

/// One push round of a baseline.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Round {
    /// Whether signals were held at the steer during it.
    pub(crate) held: bool,
    pub(crate) since_seq: u64,
    pub(crate) records: u64,
    pub(crate) tombstones: u64,
    pub(crate) bytes: u64,
    pub(crate) ms: u64,
}

/// What a baseline move (stop-and-copy or pre-copy) did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct BaselineReport {
    pub(crate) instance: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) rounds: Vec<Round>,
    pub(crate) records_copied: u64,
    pub(crate) tombstones: u64,
    pub(crate) bytes_copied: u64,
    pub(crate) refused: u64,
    /// The last seq the steer sent to the source before holding.
    pub(crate) held_after_seq: u64,
    /// From the hold to the release's answer: how long signals waited at the steer.
    pub(crate) held_ms: u64,
    pub(crate) total_ms: u64,
    pub(crate) max_response_gap_ms: f64,
    pub(crate) baseline_response_gap_ms: f64,
}

async fn push(
    admin: &mut AdminClient,
    instance: &str,
    to: std::net::SocketAddr,
    since_seq: u64,
    after_seq: u64,
    last: bool,
) -> anyhow::Result<handoff_node::push::PushReport> {
    let v = admin
        .request(&handoff_node::AdminRequest::Push {
            instance: instance.into(),
            destination: to,
            since_seq,
            after_seq,
            last,
        })
        .await?;
    Ok(serde_json::from_value(v)?)
}

impl BaselineReport {
    fn add(&mut self, held: bool, since_seq: u64, p: &handoff_node::push::PushReport, ms: u64) {
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

/// Moves `mme-1` from `a` to `b` by stop-and-copy (`rule` `None`) or iterative pre-copy: copy
/// everything while serving, re-copy what changed until `rule` says pause; then hold signals
/// at the steer, wait until the source applied every one sent, copy the rest, and release the
/// held signals to `b`.
pub(crate) async fn baseline_move(
    steer: &handoff_steer::Steer,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    rule: Option<PreCopyRule>,
) -> anyhow::Result<BaselineReport> {
    use handoff_node::AdminRequest;
    let instance = "mme-1";
    let mut admin_a = AdminClient::connect(a, "bench").await?;
    let mut admin_b = AdminClient::connect(b, "bench").await?;
    let start = std::time::Instant::now();
    let mut report = BaselineReport {
        instance: instance.into(),
        from: a.to_string(),
        to: b.to_string(),
        ..BaselineReport::default()
    };
    admin_b
        .request(&AdminRequest::CreateInstance {
            instance: instance.into(),
            function: "vmme".into(),
        })
        .await?;
    let mut since = 0;
    if let Some(rule) = rule {
        for round in 0..rule.max_rounds {
            let t = std::time::Instant::now();
            let p = push(&mut admin_a, instance, b, since, 0, false).await?;
            report.add(false, since, &p, ms(t));
            since = p.max_seq;
            let sessions = report.rounds[0].records;
            if rule.pause_now(round, p.records + p.tombstones, sessions) {
                break;
            }
        }
    }
    let held_at = std::time::Instant::now();
    let last_sent = steer.hold(instance).await.map_err(anyhow::Error::msg)?;
    report.held_after_seq = last_sent;
    let t = std::time::Instant::now();
    let pushed = push(&mut admin_a, instance, b, since, last_sent, true).await;
    let p = match pushed {
        Ok(p) => p,
        Err(e) => {
            // Give the signals back to the source rather than leave them held.
            let _ = steer.release(instance, a).await;
            return Err(e);
        }
    };
    report.add(true, since, &p, ms(t));
    steer
        .release(instance, b)
        .await
        .map_err(anyhow::Error::msg)?;
    report.held_ms = ms(held_at);
    report.total_ms = ms(start);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::PreCopyRule;

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
}
