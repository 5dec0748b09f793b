//! Runs a [`MoveMachine`] against real nodes and a steer over the control protocol.

use crate::machine::{
    Action, CopyOutcome, Failure, MoveMachine, MoveSpec, Outcome, Phase, ShadowView, Side, POLL_MS,
};
use handoff_node::ops as node_ops;
use handoff_node::AdminRequest;
use handoff_steer::control::ops as steer_ops;
use handoff_steer::SteerRequest;
use handoff_wire::client::{ClientError, ControlClient};
use handoff_wire::rpc::Operation;
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

impl Progress {
    /// What `m`'s persisted state says of its progress at `now_ms` (the machine's clock): its
    /// phase, its copy's figures once reported, the destination's buffered peak, the time
    /// spent so far. A controller restarted mid-move starts from here, so the figures of a
    /// copy that already ran do not read 0 (the live counters of the copy's destination were
    /// only ever in the watch of the controller that ran it).
    pub fn of(m: &MoveMachine, now_ms: u64) -> Self {
        let mut p = Progress::default();
        p.absorb(m, now_ms);
        p
    }

    /// Takes in what `m` knows (never lowering a live counter read meanwhile).
    fn absorb(&mut self, m: &MoveMachine, now_ms: u64) {
        let fig = &m.figures;
        self.phase = m.phase_name();
        if fig.copy.sessions_at_start > 0 {
            self.sessions_at_start = fig.copy.sessions_at_start;
            self.records = self.records.max(fig.copy.records_copied);
            self.bytes = self.bytes.max(fig.copy.bytes_copied);
        }
        self.buffered_peak = self.buffered_peak.max(fig.shadow.buffered_peak);
        self.elapsed_ms =
            fig.phases_ms.values().sum::<u64>() + now_ms.saturating_sub(m.phase_started_ms);
        self.reason = m.reason.clone();
    }
}

/// Carries out actions over the network.
pub struct NetDriver {
    /// Name in hellos.
    pub name: String,
    /// Shared token offered in hellos.
    pub token: String,
}

fn failure(e: ClientError) -> Failure {
    if let ClientError::Refused { code, message, .. } = &e {
        if let f @ Failure::RouteLost { .. } = refusal(*code, message) {
            return f;
        }
    }
    if e.is_refusal() {
        Failure::Refused(e.to_string())
    } else {
        Failure::Unreachable(e.to_string())
    }
}

/// What a peer's refusal with a stable `code` means to the move machine.
pub fn refusal(code: u16, message: &str) -> Failure {
    match code {
        handoff_wire::code::ROUTE_LOST => Failure::RouteLost { cut_over: false },
        handoff_wire::code::ROUTE_LOST_CUT_OVER => Failure::RouteLost { cut_over: true },
        _ => Failure::Refused(format!("refused ({code}): {message}")),
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

    /// Performs one action of `m`: its request ([`request_for`]) to the peer that carries
    /// it out, and the peer's answer read back ([`outcome_of`]).
    pub async fn perform(&self, m: &MoveMachine, action: &Action) -> Result<Outcome, Failure> {
        let v = match request_for(&m.spec, action) {
            Request::Wait { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                serde_json::Value::Null
            }
            Request::Node { addr, req, timeout } => self.node(addr, &req, timeout).await?,
            Request::Steer(req) => self.steer(m.spec.steer, &req).await?,
        };
        outcome_of(&m.spec, action, v)
    }

    /// Checks `plan` against what `instance` holds on the node at `source` now (its
    /// `plan_copy`: the check `copy_to` makes before sending anything), before a move
    /// changes anything. A refusal carries the node's reason.
    pub async fn check_plan(
        &self,
        source: SocketAddr,
        instance: &str,
        plan: handoff_state::CopyPlan,
    ) -> Result<node_ops::CopyPlanned, ClientError> {
        let mut c = ControlClient::connect(source, &self.name, &self.token).await?;
        c.set_reply_timeout(Duration::from_secs(10));
        c.call(&node_ops::PlanCopy {
            instance: instance.to_owned(),
            plan,
        })
        .await
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
            let req = node_ops::ShadowStats {
                instance: m.spec.instance.clone(),
            };
            if let Ok(v) = c.call(&req).await {
                if let Some(s) = v.as_ref().map(shadow_view) {
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

impl NetDriver {
    /// Returns once the move's steer reports the instance's route lost (it restarted during
    /// the move): polled while a copy runs, so a lost route aborts the move then rather than
    /// at the cutover after the whole copy (signals are not routed meanwhile). Pends forever
    /// while the route is fine or the steer cannot be asked.
    async fn route_lost(&self, m: &MoveMachine) {
        use handoff_steer::control::ops;
        loop {
            tokio::time::sleep(ROUTE_POLL).await;
            let Ok(v) = self
                .steer(m.spec.steer, &SteerRequest::Status(ops::Status {}))
                .await
            else {
                continue;
            };
            let st = match serde_json::from_value::<ops::StatusReply>(v) {
                Ok(st) => st,
                Err(e) => {
                    tracing::warn!(id = m.spec.id, error = %e, "the steer's status does not parse");
                    continue;
                }
            };
            let lost = st
                .services
                .iter()
                .any(|s| s.route.instance == m.spec.instance && s.route.route_lost);
            if lost {
                tracing::warn!(id = m.spec.id, "the steer lost the route during the copy");
                return;
            }
        }
    }
}

/// How often the steer's route is looked at while a copy runs.
const ROUTE_POLL: Duration = Duration::from_millis(250);

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
    // A move resumed after a restart reports what it had done already.
    progress.send_modify(|p| p.absorb(&m, now()));
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
            p.elapsed_ms = Progress::of(&m, now()).elapsed_ms;
        });
        let is_copy = matches!(
            action,
            Action::Copy {
                from: Side::Source,
                ..
            }
        );
        // An abort asked while the move's copy runs interrupts it: the request is dropped
        // (the source node cancels a copy whose requester hung up) and the abort starts now,
        // not after the whole copy.
        let abortable = m.phase == Phase::Copy;
        let result = if is_copy {
            let watcher = driver.watch_copy(&m, &progress);
            tokio::pin!(watcher);
            let lost = driver.route_lost(&m);
            tokio::pin!(lost);
            let work = driver.perform(&m, &action);
            tokio::pin!(work);
            let asked = abort_asked(&mut abort, abortable);
            tokio::pin!(asked);
            tokio::select! {
                r = &mut work => Step::Done(r),
                // The steer restarted and routes nothing: abort now (through a rebind), not
                // after the copy.
                () = &mut lost => Step::Done(Err(Failure::RouteLost { cut_over: false })),
                reason = &mut asked => Step::Aborted(reason),
                // The watcher ended (its connection was lost): wait for the copy, still
                // watching the route and for an abort.
                _ = &mut watcher => tokio::select! {
                    r = &mut work => Step::Done(r),
                    () = &mut lost => Step::Done(Err(Failure::RouteLost { cut_over: false })),
                    reason = &mut asked => Step::Aborted(reason),
                },
            }
        } else {
            Step::Done(driver.perform(&m, &action).await)
        };
        let result = match result {
            Step::Done(r) => r,
            Step::Aborted(reason) => {
                tracing::warn!(id = m.spec.id, %reason, "abort: the copy in flight is cancelled");
                if m.abort_now(reason, now()) {
                    persist(&m);
                }
                // Otherwise (not abortable after all) the action is simply asked again.
                continue;
            }
        };
        if let Err(f) = &result {
            tracing::warn!(id = m.spec.id, phase = %m.phase_name(), error = %f, "move action failed");
            if matches!(f, Failure::Unreachable(_)) {
                // Backing off before a retry; an abort ends the wait (it is taken at the top
                // of the loop).
                let pause = tokio::time::sleep(Duration::from_millis(200 << m.attempts.min(4)));
                let abortable = matches!(
                    m.phase,
                    Phase::Prepare | Phase::Steer | Phase::Copy | Phase::Verify
                ) && m.route_lost.is_none();
                tokio::select! {
                    () = pause => {}
                    _ = abort_asked(&mut abort, abortable) => {}
                }
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
        progress.send_modify(|p| p.absorb(&m, now()));
    }
    progress.send_modify(|p| {
        p.phase = m.phase_name();
        p.ended = true;
        p.reason = m.reason.clone();
    });
    m
}

/// How an action in flight ended.
enum Step {
    /// It was answered (or failed).
    Done(Result<Outcome, Failure>),
    /// An abort was asked for meanwhile; the action was dropped.
    Aborted(String),
}

/// Returns the reason once an abort is asked for (at once if it already was); pends forever
/// when `abortable` is false or nobody can ask any more.
async fn abort_asked(abort: &mut watch::Receiver<Option<String>>, abortable: bool) -> String {
    if abortable {
        loop {
            if let Some(reason) = abort.borrow_and_update().clone() {
                return reason;
            }
            if abort.changed().await.is_err() {
                break;
            }
        }
    }
    std::future::pending().await
}

/// What carries out an action: a node's admin request, a steer's control request, or a wait.
#[derive(Clone, Debug)]
pub enum Request {
    /// Wait this long, then answer `Done`.
    Wait {
        /// Milliseconds.
        ms: u64,
    },
    /// A node's admin request.
    Node {
        /// The node.
        addr: SocketAddr,
        /// The request.
        req: AdminRequest,
        /// How long the answer may take.
        timeout: Duration,
    },
    /// A request to the move's steer.
    Steer(SteerRequest),
}

/// The request that carries out `action` of a move with `spec` (the daemon, the source-driven
/// variant and the simulation all send exactly this).
pub fn request_for(s: &MoveSpec, action: &Action) -> Request {
    let at = |side: Side| match side {
        Side::Source => s.source,
        Side::Destination => s.destination,
    };
    let instance = s.instance.clone();
    let short = Duration::from_secs(10);
    let node = |addr, req| Request::Node {
        addr,
        req,
        timeout: short,
    };
    match action {
        Action::PrepareShadow => node(
            s.destination,
            AdminRequest::PrepareShadow(node_ops::PrepareShadow {
                instance,
                function: s.function.clone(),
            }),
        ),
        Action::BeginMove { abort_safe } => {
            Request::Steer(SteerRequest::BeginMove(steer_ops::BeginMove {
                instance,
                destination: s.destination,
                abort_safe: *abort_safe,
            }))
        }
        Action::Wait { ms } => Request::Wait { ms: *ms },
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
            let req = AdminRequest::CopyTo(node_ops::CopyTo {
                instance,
                destination: to,
                order: s.order,
                plan: s.plan,
                after_seq: *after_seq,
                keys: keys.clone(),
                lead_ms: *lead_ms,
            });
            // A copy takes as long as its plan allows: wait for its deadline, or long.
            let timeout = match s.plan.deadline_ms {
                Some(d) => Duration::from_millis(d.saturating_mul(2).max(60_000)),
                None => Duration::from_secs(3_600),
            };
            Request::Node {
                addr: at(*from),
                req,
                timeout,
            }
        }
        Action::ShadowStats { at: side } => node(
            at(*side),
            AdminRequest::ShadowStats(node_ops::ShadowStats { instance }),
        ),
        Action::Cutover => Request::Steer(SteerRequest::Cutover(steer_ops::Cutover { instance })),
        Action::AppliedSeq { at: side } => node(at(*side), AdminRequest::Stats(node_ops::Stats {})),
        Action::FinishShadow { at: side, force } => node(
            at(*side),
            AdminRequest::FinishShadow(node_ops::FinishShadow {
                instance,
                force: *force,
            }),
        ),
        Action::FinishMove => {
            Request::Steer(SteerRequest::FinishMove(steer_ops::FinishMove { instance }))
        }
        Action::DropInstance { at: side } => node(
            at(*side),
            AdminRequest::DropInstance(node_ops::DropInstance { instance }),
        ),
        Action::AbortBegin => {
            Request::Steer(SteerRequest::AbortBegin(steer_ops::AbortBegin { instance }))
        }
        Action::ExpectSessions { keys } => node(
            s.source,
            AdminRequest::ExpectSessions(node_ops::ExpectSessions {
                instance,
                keys: keys.clone(),
            }),
        ),
        Action::AbortCommit => Request::Steer(SteerRequest::AbortCommit(steer_ops::AbortCommit {
            instance,
        })),
        Action::RebindRoute => Request::Steer(SteerRequest::Rebind(steer_ops::Rebind {
            instance,
            source: s.source,
            destination: s.destination,
        })),
        Action::CreatedKeys { at: side } => node(
            at(*side),
            AdminRequest::CreatedKeys(node_ops::CreatedKeysOf { instance }),
        ),
        Action::ServeRoute { owner } => Request::Steer(SteerRequest::Serve(steer_ops::Serve {
            instance,
            node: at(*owner),
        })),
    }
}

/// Reads the answer `v` to the request for `action` (see [`request_for`]) as its outcome.
pub fn outcome_of(s: &MoveSpec, action: &Action, v: serde_json::Value) -> Result<Outcome, Failure> {
    /// The reply of operation `O`, every field required.
    fn typed<O: Operation>(v: serde_json::Value) -> Result<O::Reply, Failure> {
        serde_json::from_value::<O::Reply>(v)
            .map_err(|e| Failure::Refused(format!("bad reply to {}: {e}", O::OP)))
    }
    let boundary = |b: handoff_steer::Boundary| Outcome::Boundary {
        boundary: b.boundary,
        last_sent: b.last_sent,
    };
    Ok(match action {
        Action::PrepareShadow
        | Action::Wait { .. }
        | Action::FinishShadow { .. }
        | Action::FinishMove
        | Action::DropInstance { .. }
        | Action::ExpectSessions { .. } => Outcome::Done,
        Action::BeginMove { .. } => {
            let r = typed::<steer_ops::BeginMove>(v)?;
            Outcome::FirstSeq {
                first: r.first_seq,
                last_sent: r.last_sent,
            }
        }
        Action::Copy { .. } => {
            let r = typed::<node_ops::CopyTo>(v)?;
            Outcome::Copied(CopyOutcome {
                sessions_at_start: r.sessions_at_start,
                records_copied: r.records_copied,
                tombstones: r.tombstones,
                bytes_copied: r.bytes_copied,
                digest_match: r.digest_match,
                differing_buckets: r.differing_buckets,
                resends: r.resends,
            })
        }
        Action::ShadowStats { .. } => {
            Outcome::Shadow(typed::<node_ops::ShadowStats>(v)?.as_ref().map(shadow_view))
        }
        Action::Cutover => boundary(typed::<steer_ops::Cutover>(v)?),
        Action::AbortCommit => boundary(typed::<steer_ops::AbortCommit>(v)?),
        Action::ServeRoute { .. } => boundary(typed::<steer_ops::Serve>(v)?),
        Action::AppliedSeq { .. } => {
            let stats = serde_json::from_value::<AppliedView>(v)
                .map_err(|e| Failure::Refused(format!("bad reply to stats: {e}")))?;
            let seq = stats
                .instances
                .iter()
                .find(|i| i.instance == s.instance)
                .map(|i| i.stats.last_seq)
                .ok_or_else(|| Failure::Refused(format!("{} is not hosted there", s.instance)))?;
            Outcome::Applied(seq)
        }
        Action::AbortBegin => Outcome::Keys(typed::<steer_ops::AbortBegin>(v)?.created),
        Action::CreatedKeys { .. } => Outcome::Keys(typed::<node_ops::CreatedKeysOf>(v)?.created),
        Action::RebindRoute => {
            let r = typed::<steer_ops::Rebind>(v)?;
            Outcome::Rebound {
                source: r.source,
                destination: r.destination,
            }
        }
    })
}

/// The machine's view of a shadow's counters.
fn shadow_view(r: &handoff_function::runtime::shadow::ShadowStats) -> ShadowView {
    ShadowView {
        awaiting: r.awaiting as u64,
        buffered: r.buffered as u64,
        buffered_peak: r.buffered_peak as u64,
        buffered_for_records_peak: r.buffered_for_records_peak as u64,
        records: r.records,
        bytes: r.bytes,
        refused: r.refused,
    }
}

/// What the machine reads of a node's `stats` answer ([`node_ops::NodeStats`]): each
/// instance's last applied seq. Every field named here is required (the simulation answers
/// with just these).
#[derive(serde::Deserialize)]
struct AppliedView {
    instances: Vec<AppliedInstance>,
}

#[derive(serde::Deserialize)]
struct AppliedInstance {
    instance: String,
    stats: AppliedStats,
}

#[derive(serde::Deserialize)]
struct AppliedStats {
    last_seq: u64,
}
