//! Runs a [`MoveMachine`] against real nodes and a steer over the control protocol.

use crate::machine::{
    Action, CopyOutcome, Failure, MoveMachine, Outcome, ShadowView, Side, POLL_MS,
};
use bytes::Bytes;
use handoff_node::AdminRequest;
use handoff_steer::SteerRequest;
use handoff_wire::client::{ClientError, ControlClient};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What a move looks like while it runs (for progress bars and `handoff status`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Phase name.
    pub phase: String,
    /// Sessions the copy must send (known once the copy reports; 0 before).
    pub sessions_at_start: u64,
    /// Records the destination received so far.
    pub records: u64,
    /// Bytes the destination received so far.
    pub bytes: u64,
    /// Signals buffered at the destination now.
    pub buffered: u64,
    /// Most signals buffered at once.
    pub buffered_peak: u64,
    /// Milliseconds since the move began.
    pub elapsed_ms: u64,
    /// Whether the move has ended.
    pub ended: bool,
    /// Why it aborted or failed.
    pub reason: Option<String>,
}

/// Carries out actions over the network.
pub struct NetDriver {
    /// Name in hellos.
    pub name: String,
    /// Shared token offered in hellos.
    pub token: String,
}

fn failure(e: ClientError) -> Failure {
    if let ClientError::Refused { code, .. } = &e {
        if *code == handoff_wire::code::ROUTE_LOST {
            return Failure::RouteLost { cut_over: false };
        }
        if *code == handoff_wire::code::ROUTE_LOST_CUT_OVER {
            return Failure::RouteLost { cut_over: true };
        }
    }
    if e.is_refusal() {
        Failure::Refused(e.to_string())
    } else {
        Failure::Unreachable(e.to_string())
    }
}

impl NetDriver {
    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<ControlClient, Failure> {
        let mut c = ControlClient::connect(addr, &self.name, &self.token)
            .await
            .map_err(failure)?;
        c.set_reply_timeout(timeout);
        Ok(c)
    }

    async fn node(
        &self,
        addr: SocketAddr,
        req: &AdminRequest,
        timeout: Duration,
    ) -> Result<serde_json::Value, Failure> {
        let mut c = self.connect(addr, timeout).await?;
        c.request(req).await.map_err(failure)
    }

    async fn steer(
        &self,
        addr: SocketAddr,
        req: &SteerRequest,
    ) -> Result<serde_json::Value, Failure> {
        let mut c = self.connect(addr, Duration::from_secs(30)).await?;
        c.request(req).await.map_err(failure)
    }

    /// Performs one action of `m`.
    pub async fn perform(&self, m: &MoveMachine, action: &Action) -> Result<Outcome, Failure> {
        let s = &m.spec;
        let at = |side: Side| match side {
            Side::Source => s.source,
            Side::Destination => s.destination,
        };
        let instance = s.instance.clone();
        let short = Duration::from_secs(10);
        let bad = |e: serde_json::Error| Failure::Refused(format!("bad reply: {e}"));
        let num = |v: &serde_json::Value, k: &str| {
            v[k].as_u64()
                .ok_or_else(|| Failure::Refused(format!("reply lacks {k}: {v}")))
        };
        Ok(match action {
            Action::PrepareShadow => {
                self.node(
                    s.destination,
                    &AdminRequest::PrepareShadow {
                        instance,
                        function: s.function.clone(),
                    },
                    short,
                )
                .await?;
                Outcome::Done
            }
            Action::BeginMove { abort_safe } => {
                let v = self
                    .steer(
                        s.steer,
                        &SteerRequest::BeginMove {
                            instance,
                            destination: s.destination,
                            abort_safe: *abort_safe,
                        },
                    )
                    .await?;
                Outcome::FirstSeq {
                    first: num(&v, "first_seq")?,
                    last_sent: num(&v, "last_sent")?,
                }
            }
            Action::Wait { ms } => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                Outcome::Done
            }
            Action::Copy {
                from,
                keys,
                after_seq,
                lead_ms,
            } => {
                let to = match from {
                    Side::Source => s.destination,
                    Side::Destination => s.source,
                };
                let req = AdminRequest::CopyTo {
                    instance,
                    destination: to,
                    order: s.order,
                    plan: s.plan,
                    after_seq: *after_seq,
                    keys: keys.as_ref().map(|k| k.iter().map(hex::encode).collect()),
                    lead_ms: *lead_ms,
                };
                // A copy takes as long as its plan allows: wait for its deadline, or long.
                let limit = match s.plan.deadline_ms {
                    Some(d) => Duration::from_millis(d.saturating_mul(2).max(60_000)),
                    None => Duration::from_secs(3_600),
                };
                let v = self.node(at(*from), &req, limit).await?;
                Outcome::Copied(serde_json::from_value::<CopyOutcome>(v).map_err(bad)?)
            }
            Action::ShadowStats { at: side } => {
                let v = self
                    .node(at(*side), &AdminRequest::ShadowStats { instance }, short)
                    .await?;
                Outcome::Shadow(if v.is_null() {
                    None
                } else {
                    Some(serde_json::from_value::<ShadowView>(v).map_err(bad)?)
                })
            }
            Action::Cutover => {
                let v = self
                    .steer(s.steer, &SteerRequest::Cutover { instance })
                    .await?;
                Outcome::Boundary {
                    boundary: num(&v, "boundary")?,
                    last_sent: num(&v, "last_sent")?,
                }
            }
            Action::AppliedSeq { at: side } => {
                let v = self.node(at(*side), &AdminRequest::Stats, short).await?;
                let seq = v["instances"]
                    .as_array()
                    .and_then(|a| a.iter().find(|i| i["instance"] == instance.as_str()))
                    .and_then(|i| i["stats"]["last_seq"].as_u64())
                    .ok_or_else(|| Failure::Refused(format!("{instance} is not hosted there")))?;
                Outcome::Applied(seq)
            }
            Action::FinishShadow { at: side, force } => {
                self.node(
                    at(*side),
                    &AdminRequest::FinishShadow {
                        instance,
                        force: *force,
                    },
                    short,
                )
                .await?;
                Outcome::Done
            }
            Action::FinishMove => {
                self.steer(s.steer, &SteerRequest::FinishMove { instance })
                    .await?;
                Outcome::Done
            }
            Action::DropInstance { at: side } => {
                self.node(at(*side), &AdminRequest::DropInstance { instance }, short)
                    .await?;
                Outcome::Done
            }
            Action::AbortBegin => {
                let v = self
                    .steer(s.steer, &SteerRequest::AbortBegin { instance })
                    .await?;
                Outcome::Keys(created_keys(&v)?)
            }
            Action::ExpectSessions { keys } => {
                self.node(
                    s.source,
                    &AdminRequest::ExpectSessions {
                        instance,
                        keys: keys.iter().map(hex::encode).collect(),
                    },
                    short,
                )
                .await?;
                Outcome::Done
            }
            Action::AbortCommit => {
                let v = self
                    .steer(s.steer, &SteerRequest::AbortCommit { instance })
                    .await?;
                Outcome::Boundary {
                    boundary: num(&v, "boundary")?,
                    last_sent: num(&v, "last_sent")?,
                }
            }
            Action::RebindRoute => {
                let v = self
                    .steer(
                        s.steer,
                        &SteerRequest::Rebind {
                            instance,
                            source: s.source,
                            destination: s.destination,
                        },
                    )
                    .await?;
                Outcome::Rebound {
                    source: v["source"].as_u64(),
                    destination: v["destination"].as_u64(),
                }
            }
            Action::CreatedKeys { at: side } => {
                let v = self
                    .node(at(*side), &AdminRequest::CreatedKeys { instance }, short)
                    .await?;
                Outcome::Keys(created_keys(&v)?)
            }
            Action::ServeRoute { owner } => {
                let v = self
                    .steer(
                        s.steer,
                        &SteerRequest::Serve {
                            instance,
                            node: at(*owner),
                        },
                    )
                    .await?;
                Outcome::Boundary {
                    boundary: num(&v, "boundary")?,
                    last_sent: num(&v, "last_sent")?,
                }
            }
        })
    }

    /// Polls the destination's shadow while a copy runs, for progress.
    async fn watch_copy(&self, m: &MoveMachine, progress: &watch::Sender<Progress>) {
        let Ok(mut c) = self
            .connect(m.spec.destination, Duration::from_secs(5))
            .await
        else {
            return;
        };
        loop {
            let req = AdminRequest::ShadowStats {
                instance: m.spec.instance.clone(),
            };
            if let Ok(v) = c.request(&req).await {
                if let Ok(s) = serde_json::from_value::<ShadowView>(v) {
                    progress.send_modify(|p| {
                        p.records = s.records;
                        p.bytes = s.bytes;
                        p.buffered = s.buffered;
                        p.buffered_peak = s.buffered_peak;
                        p.sessions_at_start = p.sessions_at_start.max(s.records + s.awaiting);
                    });
                }
            } else {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Drives `m` to its end: before every action the machine is handed to `persist` (so a
/// restart knows the action may have been sent); `abort` asks for an abort (honoured before
/// the cutover); `progress` is updated as the move goes.
pub async fn drive(
    mut m: MoveMachine,
    driver: &NetDriver,
    mut persist: impl FnMut(&MoveMachine),
    mut abort: watch::Receiver<Option<String>>,
    progress: watch::Sender<Progress>,
) -> MoveMachine {
    let epoch = Instant::now();
    let base = m.phase_started_ms;
    let now = move || base + epoch.elapsed().as_millis() as u64;
    while let Some(action) = m.action() {
        if let Some(reason) = abort.borrow_and_update().clone() {
            if m.abort_now(reason, now()) {
                persist(&m);
                continue;
            }
        }
        if !matches!(action, Action::Wait { .. }) {
            m.start_action();
            persist(&m);
        }
        progress.send_modify(|p| {
            p.phase = m.phase_name();
            p.elapsed_ms = epoch.elapsed().as_millis() as u64;
        });
        let is_copy = matches!(
            action,
            Action::Copy {
                from: Side::Source,
                ..
            }
        );
        let result = if is_copy {
            let watcher = driver.watch_copy(&m, &progress);
            tokio::pin!(watcher);
            let work = driver.perform(&m, &action);
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => r,
                // The watcher ended (its connection was lost): just wait for the copy.
                _ = &mut watcher => work.await,
            }
        } else {
            driver.perform(&m, &action).await
        };
        if let Err(f) = &result {
            tracing::warn!(id = m.spec.id, phase = %m.phase_name(), error = %f, "move action failed");
            if matches!(f, Failure::Unreachable(_)) {
                tokio::time::sleep(Duration::from_millis(200 << m.attempts.min(4))).await;
            }
        }
        m.complete(result, now());
        if let Action::Wait { .. } = action {
            // Polls are cheap; keep them off the store.
        } else {
            persist(&m);
        }
        if matches!(action, Action::ShadowStats { .. }) {
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        let fig = &m.figures;
        progress.send_modify(|p| {
            p.phase = m.phase_name();
            if fig.copy.sessions_at_start > 0 {
                p.sessions_at_start = fig.copy.sessions_at_start;
                p.records = p.records.max(fig.copy.records_copied);
                p.bytes = p.bytes.max(fig.copy.bytes_copied);
            }
            p.buffered_peak = p.buffered_peak.max(fig.shadow.buffered_peak);
            p.elapsed_ms = epoch.elapsed().as_millis() as u64;
            p.reason = m.reason.clone();
        });
    }
    progress.send_modify(|p| {
        p.phase = m.phase_name();
        p.ended = true;
        p.reason = m.reason.clone();
    });
    m
}

/// The `created` list of a steer's `abort_begin` or a node's `created_keys` answer: hex keys.
fn created_keys(v: &serde_json::Value) -> Result<Vec<Bytes>, Failure> {
    let keys: Vec<String> = serde_json::from_value(v["created"].clone())
        .map_err(|e| Failure::Refused(format!("bad reply: {e}")))?;
    keys.iter()
        .map(|k| hex::decode(k).map(Bytes::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Refused(format!("bad key: {e}")))
}
