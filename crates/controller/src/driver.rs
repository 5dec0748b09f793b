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
#[derive(Clone)]
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
        copy_from: Option<Side>,
    ) -> Result<serde_json::Value, Failure> {
        let mut c = self.connect(addr, timeout).await?;
        c.request(req).await.map_err(|e| match (req, e.code()) {
            // The copy's sender hosts another incarnation than the move's: it restarted.
            (AdminRequest::CopyTo(_), Some(handoff_wire::code::FOREIGN)) => match copy_from {
                Some(side) => Failure::NodeLost(side, e.to_string()),
                None => failure(e),
            },
            // The copy's destination did not answer: not the source's refusal but a node that
            // may be gone, tried again like one (the health watch decides, within seconds).
            (AdminRequest::CopyTo(_), Some(handoff_wire::code::NOT_REACHABLE)) => {
                Failure::Unreachable(e.to_string())
            }
            _ => failure(e),
        })
    }

    async fn steer(
        &self,
        addr: SocketAddr,
        req: &SteerRequest,
    ) -> Result<serde_json::Value, Failure> {
        let mut c = self.connect(addr, Duration::from_secs(30)).await?;
        c.request(req).await.map_err(|e| match (req, e.code()) {
            // The new owner's link is down at the finish (a flap, a stall-close): tried again
            // like an unreachable peer before the move parks offline.
            (SteerRequest::FinishMove(_), Some(handoff_wire::code::NOT_REACHABLE)) => {
                Failure::Unreachable(e.to_string())
            }
            _ => failure(e),
        })
    }

    /// Performs one action of `m`: its request ([`request_for`]) to the peer that carries
    /// it out, and the peer's answer read back ([`outcome_of`]).
    pub async fn perform(&self, m: &MoveMachine, action: &Action) -> Result<Outcome, Failure> {
        let v = match request_for(m, action) {
            Request::Wait { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                serde_json::Value::Null
            }
            Request::Node { addr, req, timeout } => {
                let copy_from = match action {
                    Action::Copy { from, .. } => Some(*from),
                    _ => None,
                };
                self.node(addr, &req, timeout, copy_from).await?
            }
            Request::Steer(req) => self.steer(m.spec.steer, &req).await?,
        };
        outcome_of(m, action, v)
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

/// How often the steer's route and the move's nodes are looked at while a move runs.
const ROUTE_POLL: Duration = Duration::from_millis(250);
/// How long a node of a move may be unreachable before it counts as lost.
pub const NODE_LOST_AFTER: Duration = Duration::from_secs(2);

/// Something the health watch saw while a move runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incident {
    /// The steer restarted and lost the route.
    RouteLost,
    /// A node of the move lost the instance's incarnation, or cannot be reached.
    NodeLost(Side, String),
}

/// Whether the health watch may change the course of a move in `phase` (not while it
/// aborts, re-installs a lost route or takes a crash's way out: those handle their own
/// failures; an abort's last step, dropping the destination's copy, ends at once when the
/// destination is lost).
pub fn watched(phase: crate::machine::Phase) -> bool {
    !phase.is_terminal()
        && !phase.is_crash_path()
        && !phase.is_route_recovery()
        && !matches!(
            phase,
            crate::machine::Phase::AbortBegin
                | crate::machine::Phase::AbortExpect
                | crate::machine::Phase::AbortCommit
                | crate::machine::Phase::AbortPrime
                | crate::machine::Phase::AbortSettle
                | crate::machine::Phase::AbortCopyBack
                | crate::machine::Phase::AbortReturn
        )
}

impl NetDriver {
    /// Watches a move's steer and nodes every [`ROUTE_POLL`] until `stop`: reports the
    /// route lost, and a node that no longer hosts the incarnation the move works with (or
    /// is unreachable for [`NODE_LOST_AFTER`]). `incarnations` follows the machine's.
    async fn health(
        self,
        spec: MoveSpec,
        incarnations: watch::Receiver<crate::machine::Incarnations>,
        out: watch::Sender<Option<Incident>>,
    ) {
        use handoff_steer::control::ops;
        let mut down_since: [Option<Instant>; 2] = [None, None];
        loop {
            tokio::time::sleep(ROUTE_POLL).await;
            if out.is_closed() {
                return;
            }
            // Each round reports afresh: a loss that healed is no incident any more.
            let mut found: Option<Incident> = None;
            let asked = tokio::time::timeout(
                Duration::from_secs(1),
                self.steer(spec.steer, &SteerRequest::Status(ops::Status {})),
            );
            if let Ok(Ok(v)) = asked.await {
                match serde_json::from_value::<ops::StatusReply>(v) {
                    Ok(st) => {
                        let lost = (st.services.iter())
                            .any(|s| s.route.instance == spec.instance && s.route.route_lost);
                        if lost {
                            found = Some(Incident::RouteLost);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(id = spec.id, error = %e, "the steer's status does not parse")
                    }
                }
            }
            let inc = *incarnations.borrow();
            let probe = |addr: SocketAddr| {
                let this = &self;
                async move {
                    // A frozen node accepts connections and never answers: bounded.
                    let r = tokio::time::timeout(Duration::from_secs(1), async {
                        let mut c = this.connect(addr, Duration::from_secs(1)).await?;
                        c.call(&node_ops::Stats {}).await.map_err(failure)
                    })
                    .await;
                    match r {
                        Ok(r) => r,
                        Err(_) => Err(Failure::Unreachable("no answer within 1 s".into())),
                    }
                }
            };
            let (source_stats, dest_stats) =
                tokio::join!(probe(spec.source), probe(spec.destination));
            for (i, (side, addr, want, r)) in [
                (Side::Source, spec.source, inc.source, source_stats),
                (
                    Side::Destination,
                    spec.destination,
                    inc.destination,
                    dest_stats,
                ),
            ]
            .into_iter()
            .enumerate()
            {
                // Not prepared yet: the destination hosts nothing of the move's to check, but
                // a destination that stopped answering is lost all the same.
                let unprepared = side == Side::Destination && want.is_none();
                let lost = match r {
                    Ok(_) if unprepared => {
                        down_since[i] = None;
                        None
                    }
                    Ok(st) => {
                        down_since[i] = None;
                        match st.instances.iter().find(|x| x.instance == spec.instance) {
                            None => Some(format!(
                                "{addr} no longer hosts {} (it restarted, or the instance was dropped)",
                                spec.instance
                            )),
                            Some(x) if want.is_some_and(|w| w != x.incarnation) => Some(format!(
                                "{addr} hosts incarnation {} of {}, not {} (it restarted, or the instance was created again)",
                                x.incarnation,
                                spec.instance,
                                want.unwrap_or_default()
                            )),
                            Some(_) => None,
                        }
                    }
                    Err(e) => {
                        let since = *down_since[i].get_or_insert_with(Instant::now);
                        (since.elapsed() >= NODE_LOST_AFTER).then(|| {
                            format!("{addr} has been unreachable for {:?}: {e}", since.elapsed())
                        })
                    }
                };
                if let Some(why) = lost {
                    found = found.or(Some(Incident::NodeLost(side, why)));
                }
            }
            match found {
                Some(i) => {
                    out.send_replace(Some(i));
                }
                None => {
                    out.send_if_modified(|cur| cur.take().is_some());
                }
            }
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
    let (inc_tx, inc_rx) = watch::channel(m.incarnations);
    let (incident_tx, mut incidents) = watch::channel(None);
    let health = tokio::spawn(driver.clone().health(m.spec.clone(), inc_rx, incident_tx));
    // A move resumed after a restart reports what it had done already.
    progress.send_modify(|p| p.absorb(&m, now()));
    while let Some(action) = m.action() {
        if let Some(reason) = abort.borrow_and_update().clone() {
            if m.abort_now(reason, now()) {
                persist(&m);
                continue;
            }
        }
        // Only news: an incident the machine already had is not handed to it again.
        let news = incidents.has_changed().unwrap_or(false);
        if let Some(i) = incidents.borrow_and_update().clone().filter(|_| news) {
            if on_incident(&mut m, i, now()) {
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
        // Steer commands are never cut short: their answer says whether the route changed.
        let is_steer = matches!(request_for(&m, &action), Request::Steer(_));
        // An abort asked while the move's copy runs interrupts it: the request is dropped
        // (the source node cancels a copy whose requester hung up) and the abort starts now,
        // not after the whole copy.
        let abortable = m.phase == Phase::Copy;
        let snapshot = m.clone();
        let watcher = async {
            if is_copy {
                driver.watch_copy(&snapshot, &progress).await;
            }
            std::future::pending::<()>().await
        };
        let work = driver.perform(&snapshot, &action);
        tokio::pin!(work);
        let step = tokio::select! {
            r = &mut work => Step::Done(r),
            () = watcher => Step::Wait,
            reason = abort_asked(&mut abort, abortable) => Step::Aborted(reason),
            i = next_incident(&mut incidents, m.phase), if !is_steer => Step::Incident(i),
        };
        let result = match step {
            Step::Done(r) => r,
            Step::Aborted(reason) => {
                tracing::warn!(id = m.spec.id, %reason, "abort: the copy in flight is cancelled");
                if m.abort_now(reason, now()) {
                    persist(&m);
                }
                // Otherwise (not abortable after all) the action is simply asked again.
                continue;
            }
            // The action is cut short (a copy to a lost node, a poll): the machine takes the
            // crash's way out, or carries on with the action's own answer.
            Step::Incident(i) if on_incident(&mut m, i.clone(), now()) => {
                persist(&m);
                continue;
            }
            Step::Incident(_) | Step::Wait => work.await,
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
        inc_tx.send_if_modified(|i| {
            let changed = *i != m.incarnations;
            *i = m.incarnations;
            changed
        });
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
    health.abort();
    progress.send_modify(|p| {
        p.phase = m.phase_name();
        p.ended = true;
        p.reason = m.reason.clone();
    });
    m
}

/// The next incident that matters to a move in `phase` (pends otherwise).
async fn next_incident(
    incidents: &mut watch::Receiver<Option<Incident>>,
    phase: crate::machine::Phase,
) -> Incident {
    loop {
        if incidents.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if let Some(i) = incidents.borrow_and_update().clone() {
            if watched(phase) {
                return i;
            }
        }
    }
}

/// Hands an incident to the machine; `true` if it changed the move's course.
pub fn on_incident(m: &mut MoveMachine, i: Incident, now_ms: u64) -> bool {
    if !watched(m.phase) {
        return false;
    }
    match i {
        Incident::RouteLost => {
            if m.route_lost.is_some() {
                return false;
            }
            tracing::warn!(id = m.spec.id, "the steer lost the route during the move");
            let before = m.phase;
            m.complete(Err(Failure::RouteLost { cut_over: false }), now_ms);
            m.phase != before
        }
        Incident::NodeLost(side, why) => m.node_lost(side, &why, now_ms),
    }
}

/// How waiting for an action in flight ended.
enum Step {
    /// It was answered (or failed).
    Done(Result<Outcome, Failure>),
    /// An abort was asked for meanwhile; the action was dropped.
    Aborted(String),
    /// A node or the route was lost meanwhile.
    Incident(Incident),
    /// Nothing decided: wait for the answer.
    Wait,
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
pub fn request_for(m: &MoveMachine, action: &Action) -> Request {
    let s = &m.spec;
    let inc = m.incarnations;
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
                move_tag: Some(s.tag()),
            }),
        ),
        Action::BeginMove { abort_safe } => {
            Request::Steer(SteerRequest::BeginMove(steer_ops::BeginMove {
                instance,
                destination: s.destination,
                abort_safe: *abort_safe,
                destination_incarnation: inc.destination,
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
                move_tag: Some(s.tag()),
                incarnation: match from {
                    Side::Source => inc.source,
                    Side::Destination => inc.destination,
                },
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
            AdminRequest::DropInstance(node_ops::DropInstance {
                instance,
                move_tag: Some(s.tag()),
                incarnation: match side {
                    Side::Source => inc.source,
                    Side::Destination => inc.destination,
                },
            }),
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
        // Only the incarnations the move worked with: a node restarted meanwhile is not bound.
        Action::RebindRoute => Request::Steer(SteerRequest::Rebind(steer_ops::Rebind {
            instance,
            source: s.source,
            destination: s.destination,
            source_incarnation: inc.source,
            destination_incarnation: inc.destination,
        })),
        Action::CreatedKeys { at: side } => node(
            at(*side),
            AdminRequest::CreatedKeys(node_ops::CreatedKeysOf { instance }),
        ),
        Action::ServeRoute { owner } => Request::Steer(SteerRequest::Serve(steer_ops::Serve {
            instance,
            node: at(*owner),
        })),
        // Only the incarnation the move worked with (after a finish the route no longer names
        // the source: the steer links it again, bound to exactly that one).
        Action::Recover { owner } => Request::Steer(SteerRequest::Recover(steer_ops::Recover {
            instance,
            node: at(*owner),
            incarnation: match owner {
                Side::Source => inc.source,
                Side::Destination => inc.destination,
            },
        })),
    }
}

/// Reads the answer `v` to the request for `action` (see [`request_for`]) as its outcome.
pub fn outcome_of(
    m: &MoveMachine,
    action: &Action,
    v: serde_json::Value,
) -> Result<Outcome, Failure> {
    let s = &m.spec;
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
        Action::PrepareShadow => Outcome::Prepared {
            incarnation: typed::<node_ops::PrepareShadow>(v)?.incarnation,
        },
        Action::FinishShadow { force: true, .. } => {
            Outcome::Keys(typed::<node_ops::FinishShadow>(v)?.abandoned)
        }
        Action::Wait { .. }
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
        Action::Recover { .. } => boundary(typed::<steer_ops::Recover>(v)?),
        Action::AppliedSeq { at } => {
            let stats = serde_json::from_value::<AppliedView>(v)
                .map_err(|e| Failure::Refused(format!("bad reply to stats: {e}")))?;
            let i = stats
                .instances
                .iter()
                .find(|i| i.instance == s.instance)
                .ok_or_else(|| Failure::Refused(format!("{} is not hosted there", s.instance)))?;
            let want = match at {
                Side::Source => m.incarnations.source,
                Side::Destination => m.incarnations.destination,
            };
            if let Some(w) = want.filter(|w| *w != i.incarnation) {
                return Err(Failure::Refused(format!(
                    "{} there is incarnation {}, not {w} (it restarted)",
                    s.instance, i.incarnation
                )));
            }
            Outcome::Applied(i.stats.last_seq)
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
        manifest_known: r.manifest_known,
        demanded: r.demanded,
        buffered_wait_us: [
            r.buffered_wait_p50_us,
            r.buffered_wait_p99_us,
            r.buffered_wait_max_us,
        ],
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
    incarnation: u64,
    stats: AppliedStats,
}

#[derive(serde::Deserialize)]
struct AppliedStats {
    last_seq: u64,
}
