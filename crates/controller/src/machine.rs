//! The move machine: the phases of a live move (DESIGN.md "Live move") as a pure state
//! machine. It does no I/O: [`MoveMachine::action`] says what to do next, the driver does it
//! and hands the result to [`MoveMachine::complete`]. The whole state is serialisable, so the
//! controller persists it before every action and a restarted controller resumes (after
//! cutover) or aborts cleanly (before it) with [`MoveMachine::recover`]. The same machine runs
//! in the controller daemon, in a source node (the source-driven variant) and in the
//! deterministic simulation.
//!
//! ```text
//! Prepare → Steer → Copy (manifest, lead K, records) → Verify → Cutover → Drain → Finish → Retire → Done
//!    │         │                  │       │
//!    └─────────┴──────── abort ───┴───────┴─▶ AbortBegin → Expect → AbortCommit → Settle
//!                                             → CopyBack → Return → DropDestination → Aborted
//! ```

use bytes::Bytes;
use handoff_state::{CopyOrder, CopyPlan};
use std::net::SocketAddr;

/// Which node of a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The node the instance leaves.
    Source,
    /// The node the instance goes to.
    Destination,
}

/// What a move is asked to do.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoveSpec {
    /// Move id (unique per controller).
    pub id: u64,
    /// The instance.
    pub instance: String,
    /// Its function.
    pub function: String,
    /// The source node's address.
    pub source: SocketAddr,
    /// The destination node's address.
    pub destination: SocketAddr,
    /// The steer's control address.
    pub steer: SocketAddr,
    /// Copy order.
    pub order: CopyOrder,
    /// Copy limits.
    pub plan: CopyPlan,
    /// Duplicate creates too, so an abort needs nothing moved back.
    pub abort_safe: bool,
    /// Lead between steering and copy start, ms (0 < K ≤ 5000; 0: none).
    pub lead_ms: u64,
    /// Who drives it (`controller`, or the source node's name): with `id`, the move's tag
    /// that the shadow it prepares and the source it copies from carry, so its cleanup drops
    /// only what it created. Moves stored before it existed read "".
    #[serde(default)]
    pub origin: String,
}

impl MoveSpec {
    /// The move's tag: what the nodes record on the instances it may clean up.
    pub fn tag(&self) -> String {
        format!("{}#{}", self.origin, self.id)
    }
}

/// The incarnations of the instance a move works with (see `handoff_wire::Frame::Bound`):
/// nothing is copied from, dropped on or routed to another one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Incarnations {
    /// The source's (checked against the steer's route when the move starts).
    pub source: Option<u64>,
    /// The destination's shadow (from its prepare).
    pub destination: Option<u64>,
}

pub use handoff_state::MAX_LEAD_MS;

/// The next I/O a driver performs for the machine.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Destination: create (if absent) an empty instance and make it a pending shadow.
    PrepareShadow,
    /// Steer: enter move mode. Answer: [`Outcome::FirstSeq`].
    BeginMove {
        /// Duplicate creates too.
        abort_safe: bool,
    },
    /// Wait this long, then report [`Outcome::Done`].
    Wait {
        /// Milliseconds.
        ms: u64,
    },
    /// Copy sessions from one side to the other once it applied `after_seq`. Answer:
    /// [`Outcome::Copied`].
    Copy {
        /// The sender.
        from: Side,
        /// Only these sessions (an abort's way back); `None`: all of them.
        keys: Option<Vec<Bytes>>,
        /// The sender takes its manifest only once it applied this seq.
        after_seq: u64,
        /// Lead K: the records follow the manifest after this long, ms.
        lead_ms: u64,
    },
    /// A side's shadow counters. Answer: [`Outcome::Shadow`].
    ShadowStats {
        /// Which side.
        at: Side,
    },
    /// Steer: flip the route. Answer: [`Outcome::Boundary`].
    Cutover,
    /// A side's last applied seq. Answer: [`Outcome::Applied`].
    AppliedSeq {
        /// Which side.
        at: Side,
    },
    /// End a side's shadow mode (`force`: giving up on records never received).
    FinishShadow {
        /// Which side.
        at: Side,
        /// Give up on awaited records first.
        force: bool,
    },
    /// Steer: make the destination the owner.
    FinishMove,
    /// Stop and remove the instance on a side.
    DropInstance {
        /// Which side.
        at: Side,
    },
    /// Steer: first abort step. Answer: [`Outcome::Keys`].
    AbortBegin,
    /// Source: expect the records of these sessions.
    ExpectSessions {
        /// The sessions.
        keys: Vec<Bytes>,
    },
    /// Steer: second abort step. Answer: [`Outcome::Boundary`].
    AbortCommit,
    /// Steer (restarted, route lost): link both nodes again and learn what each applied;
    /// signals of the instance stay unrouted. Answer: [`Outcome::Rebound`].
    RebindRoute,
    /// A side's keys it got a create for while a shadow (the sessions created on the
    /// destination during the move). Answer: [`Outcome::Keys`].
    CreatedKeys {
        /// Which side.
        at: Side,
    },
    /// Steer (restarted, route rebound): serve the instance from `owner`, at seqs above
    /// everything either node applied. Answer: [`Outcome::Boundary`].
    ServeRoute {
        /// The side that owns the instance from now on.
        owner: Side,
    },
    /// Steer: make `owner` the instance's owner at once, whatever the route's phase (a
    /// crash's way out). Answer: [`Outcome::Boundary`].
    Recover {
        /// The side that owns the instance from now on.
        owner: Side,
    },
}

impl Outcome {
    /// `Keys` with at least one key, else `Done`.
    fn filter_keys(self) -> Self {
        match self {
            Outcome::Keys(k) if k.is_empty() => Outcome::Done,
            o => o,
        }
    }
}

/// A successful answer to an [`Action`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Done, nothing to report.
    Done,
    /// The destination's shadow is ready; its incarnation.
    Prepared {
        /// The shadow's incarnation.
        incarnation: u64,
    },
    /// Move mode is on from seq `first`; the source was last sent `last_sent` before it.
    FirstSeq {
        /// The first seq under move mode.
        first: u64,
        /// The last seq sent to the source before it.
        last_sent: u64,
    },
    /// A copy's report.
    Copied(CopyOutcome),
    /// Shadow counters (`None`: the instance is not a shadow).
    Shadow(Option<ShadowView>),
    /// A route flip: the first seq under the new route, the last sent to the old side.
    Boundary {
        /// First seq under the new route.
        boundary: u64,
        /// Last seq sent to the side the route left.
        last_sent: u64,
    },
    /// A side's last applied seq.
    Applied(u64),
    /// Session keys.
    Keys(Vec<Bytes>),
    /// A restarted steer linked both nodes again: the last seq each had applied when bound
    /// (`None`: that node could not be bound).
    Rebound {
        /// The source's last applied seq.
        source: Option<u64>,
        /// The destination's last applied seq.
        destination: Option<u64>,
    },
}

/// What a copy reported.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CopyOutcome {
    /// Keys in the manifest.
    pub sessions_at_start: u64,
    /// Records and tombstones sent.
    pub records_copied: u64,
    /// Of which tombstones.
    pub tombstones: u64,
    /// Bytes sent.
    pub bytes_copied: u64,
    /// Whether the digests matched.
    pub digest_match: bool,
    /// Buckets that differ.
    pub differing_buckets: Vec<usize>,
    /// Re-send rounds of differing buckets before the digests matched (seed 000 R12).
    #[serde(default)]
    pub resends: Vec<handoff_node::copy::ResendRound>,
}

/// A shadow's counters, as the machine needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowView {
    /// Records still awaited.
    pub awaiting: u64,
    /// Signals buffered now.
    pub buffered: u64,
    /// Most signals buffered at once.
    pub buffered_peak: u64,
    /// Most signals buffered at once while waiting for their session's record (after the
    /// manifest: the figure the copy order decides).
    #[serde(default)]
    pub buffered_for_records_peak: u64,
    /// Records received.
    pub records: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Signals the destination could not take (buffer or tick log full): a move with any
    /// aborts, since the destination's state lacks them.
    pub refused: u64,
    /// Whether the whole manifest arrived (`awaiting` then names every missing session).
    #[serde(default)]
    pub manifest_known: bool,
    /// Sessions the destination asked for ahead of their place.
    #[serde(default)]
    pub demanded: u64,
    /// Wait of the signals it buffered (µs of steer time): median, 99th percentile, max.
    #[serde(default)]
    pub buffered_wait_us: [u64; 3],
}

impl ShadowView {
    fn settled(&self) -> bool {
        self.awaiting == 0 && self.buffered == 0
    }
}

/// Why an action failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Failure {
    /// The peer answered and refused.
    Refused(String),
    /// The peer could not be reached, or the connection broke.
    Unreachable(String),
    /// The steer restarted during the move and lost the instance's route (it routes none of
    /// its signals until the route is installed again); `cut_over`: the route had flipped to
    /// the destination before the restart.
    RouteLost {
        /// Whether the flip had happened.
        cut_over: bool,
    },
    /// A node of the move no longer hosts the incarnation the move works with (it answered
    /// so): it restarted, or the instance was created again.
    NodeLost(Side, String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(m) => write!(f, "refused: {m}"),
            Failure::Unreachable(m) => write!(f, "unreachable: {m}"),
            Failure::NodeLost(_, m) => write!(f, "lost: {m}"),
            Failure::RouteLost { cut_over } => {
                write!(
                    f,
                    "the steer restarted and lost the route (cut over: {cut_over})"
                )
            }
        }
    }
}

/// Where a move is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Destination readiness.
    Prepare,
    /// Steer switch to move mode.
    Steer,
    /// Source → destination copy.
    Copy,
    /// Waiting for the destination to settle (conditions 1 and 2).
    Verify,
    /// The route flip.
    Cutover,
    /// The source applies what it was sent before the flip; then the destination has received
    /// every signal below the boundary (so no shadow copy reaches it once it left shadow mode).
    Drain,
    /// The destination leaves shadow mode; the steer makes it the owner.
    Finish,
    /// The source's copy goes offline.
    Retire,
    /// Moved.
    Done,
    /// Abort: the steer sends only the sessions created meanwhile to the destination.
    AbortBegin,
    /// Abort: the source expects those sessions back.
    AbortExpect,
    /// Abort: the route returns to the source.
    AbortCommit,
    /// Abort before the copy ran: the destination still waits for its manifest, so the source
    /// sends it the records of the returning sessions first (a re-attached session's old
    /// state, or a tombstone), which resolves what the destination buffered for them.
    AbortPrime,
    /// Abort: the destination has every record it awaited (so it can send them back).
    AbortSettle,
    /// Abort: the destination sends the sessions back.
    AbortCopyBack,
    /// Abort: the source has them and serves again (once it applied every seq below the abort's
    /// boundary, so no hand-over marker still in flight reaches it afterwards).
    AbortReturn,
    /// Abort: the destination's copy is removed.
    AbortDrop,
    /// Aborted: the source serves.
    Aborted,
    /// The steer restarted and lost the route: it links both nodes again (fencing off what
    /// its previous run still had in flight) and learns what each applied.
    SteerRebind,
    /// Route lost before the cutover: the destination names the sessions created on it.
    LostKeys,
    /// Route lost: the steer serves the instance again, from the source (before the cutover,
    /// then the abort goes on) or the destination (after it, then the move finishes).
    SteerServe,
    /// Stopped with the cluster needing an operator (the reason says why).
    Failed,
    /// The source was lost before the cutover: the destination gives up the records it still
    /// awaited and the steer makes it the owner (it holds more than a restarted source).
    RollForward,
    /// Moved by rolling forward after the source was lost (the figures say what was lost).
    RolledForward,
    /// The destination was lost before the cutover: the steer serves from the source again.
    AbortRecover,
    /// The destination was lost after the cutover, before the move finished: the instance is
    /// offline (its signals are dropped and counted by the steer) until an operator recovers
    /// it on the source (`handoff recover`), giving up the signals stamped since the cutover.
    Offline,
    /// Recovering an offline instance on the source.
    RecoverSource,
    /// Recovered on the source after the destination was lost past the cutover.
    Recovered,
}

impl Phase {
    /// Whether the move has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Done | Phase::Aborted | Phase::Failed | Phase::RolledForward | Phase::Recovered
        )
    }

    /// Whether the move waits for an operator (`handoff recover`): not ended, no action.
    pub fn is_parked(self) -> bool {
        self == Phase::Offline
    }

    /// Whether the move is on a crash's way out (rolling forward or recovering).
    pub fn is_crash_path(self) -> bool {
        matches!(
            self,
            Phase::RollForward | Phase::AbortRecover | Phase::Offline | Phase::RecoverSource
        )
    }

    /// Whether the route has flipped: from here on the move only goes forward.
    pub fn past_cutover(self) -> bool {
        matches!(
            self,
            Phase::Drain | Phase::Finish | Phase::Retire | Phase::Done
        )
    }

    fn is_abort(self) -> bool {
        matches!(
            self,
            Phase::AbortBegin
                | Phase::AbortExpect
                | Phase::AbortCommit
                | Phase::AbortPrime
                | Phase::AbortSettle
                | Phase::AbortCopyBack
                | Phase::AbortReturn
                | Phase::AbortDrop
                | Phase::Aborted
        )
    }

    /// Whether the move is re-installing a route a restarted steer lost.
    pub fn is_route_recovery(self) -> bool {
        matches!(
            self,
            Phase::SteerRebind | Phase::LostKeys | Phase::SteerServe
        )
    }
}

/// Tries of one action that cannot reach its peer before the machine gives up on it.
pub const MAX_ATTEMPTS: u32 = 5;
/// Polls of a condition (settling, draining) before the machine gives up waiting.
pub const MAX_POLLS: u32 = 15_000;
/// Interval between polls, ms.
pub const POLL_MS: u64 = 2;

/// Figures a finished move reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoveFigures {
    /// The first seq under move mode.
    pub first_seq: u64,
    /// The cutover boundary.
    pub cutover_seq: u64,
    /// The copy's report.
    pub copy: CopyOutcome,
    /// The destination's shadow counters at cutover.
    pub shadow: ShadowView,
    /// Sessions created on the destination during an aborted move.
    pub created_during_move: u64,
    /// Of those, sessions that could not be brought back (their node was gone).
    pub lost_on_abort: u64,
    /// Milliseconds spent per phase.
    pub phases_ms: std::collections::BTreeMap<String, u64>,
    /// A roll forward: sessions the destination still awaited from the lost source (lost
    /// with it). Stored moves without it read 0.
    #[serde(default)]
    pub lost_sessions: u64,
    /// A roll forward before the manifest arrived: the destination did not know which
    /// sessions the source held, so every session not created during the move is lost.
    #[serde(default)]
    pub manifest_lost: bool,
    /// A roll forward: exactly which sessions were lost (the destination's records never
    /// received), as hex keys. Stored moves without it read none.
    #[serde(default, with = "handoff_wire::rpc::hex_keys")]
    pub lost_keys: Vec<Bytes>,
    /// A recovery on the source after the cutover: seqs stamped for the lost destination
    /// from the boundary on (signals and ticks) that the source never applied.
    #[serde(default)]
    pub given_up_seqs: u64,
}

/// The state of one move.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoveMachine {
    /// What was asked.
    pub spec: MoveSpec,
    /// Where it is.
    pub phase: Phase,
    /// Whether the action of the current phase may have been sent (persisted before sending:
    /// a restart knows the peer may have carried it out).
    pub in_flight: bool,
    /// Tries of the current action that failed to reach the peer.
    pub attempts: u32,
    /// Polls of the current condition.
    pub polls: u32,
    /// Why the move is aborting or failed.
    pub reason: Option<String>,
    /// An abort was asked for (acted on at the next step boundary before cutover).
    pub abort_requested: bool,
    /// The cutover was asked of the steer at least once: from then on the flip may have
    /// happened (a lost answer), so an operator's abort is no longer honoured.
    #[serde(default)]
    pub cutover_sent: bool,
    /// Keys to send back on abort.
    pub created: Vec<Bytes>,
    /// The last seq the steer sent to the side a route flip left.
    pub last_sent: u64,
    /// The last seq the steer sent to the source before move mode (the copy waits for it).
    #[serde(default)]
    pub source_fence: u64,
    /// Whether the source's copy reached the destination (its manifest is known there).
    #[serde(default)]
    pub copied: bool,
    /// Drain: the source has applied everything it was sent; the destination is waited for.
    /// AbortReturn: the source has applied every seq below the abort's boundary.
    #[serde(default)]
    pub source_drained: bool,
    /// The first seq an abort's route flip sent to the source alone (0: none).
    #[serde(default)]
    pub abort_boundary: u64,
    /// AbortReturn: the source awaits no more returning records (or waiting gave up).
    #[serde(default)]
    pub source_settled: bool,
    /// The steer lost the route (restarted): `Some(forward)`, forward meaning it had cut over
    /// (the move finishes) rather than not (it aborts).
    #[serde(default)]
    pub route_lost: Option<bool>,
    /// Route lost: the last seqs the source and the destination had applied when the
    /// restarted steer bound them again.
    #[serde(default)]
    pub rebound: (u64, u64),
    /// Figures.
    pub figures: MoveFigures,
    /// When the current phase began (driver's clock, ms).
    pub phase_started_ms: u64,
    /// The incarnations the move works with. Stored moves without it read none (unchecked).
    #[serde(default)]
    pub incarnations: Incarnations,
}

impl MoveMachine {
    /// A new move at `Prepare`. The spec is checked: a bad lead or identical nodes are refused.
    pub fn new(spec: MoveSpec, now_ms: u64) -> Result<Self, String> {
        if spec.source == spec.destination {
            return Err("source and destination are the same node".into());
        }
        if spec.lead_ms > MAX_LEAD_MS {
            return Err(format!(
                "lead {} ms is above the {MAX_LEAD_MS} ms allowed",
                spec.lead_ms
            ));
        }
        Ok(Self {
            spec,
            phase: Phase::Prepare,
            in_flight: false,
            attempts: 0,
            polls: 0,
            reason: None,
            abort_requested: false,
            cutover_sent: false,
            created: Vec::new(),
            last_sent: 0,
            source_fence: 0,
            copied: false,
            source_drained: false,
            abort_boundary: 0,
            source_settled: false,
            route_lost: None,
            rebound: (0, 0),
            figures: MoveFigures::default(),
            phase_started_ms: now_ms,
            incarnations: Incarnations::default(),
        })
    }

    /// The next action, or `None` once the move has ended.
    pub fn action(&self) -> Option<Action> {
        let poll = Action::Wait { ms: POLL_MS };
        Some(match self.phase {
            Phase::Prepare => Action::PrepareShadow,
            Phase::Steer => Action::BeginMove {
                abort_safe: self.spec.abort_safe,
            },
            Phase::Copy => Action::Copy {
                from: Side::Source,
                keys: None,
                after_seq: self.source_fence,
                lead_ms: self.spec.lead_ms,
            },
            Phase::Verify | Phase::AbortSettle if self.polls % 2 == 1 => poll,
            Phase::Verify => Action::ShadowStats {
                at: Side::Destination,
            },
            Phase::Cutover => Action::Cutover,
            Phase::Drain if self.polls % 2 == 1 => poll,
            Phase::Drain if self.source_drained => Action::AppliedSeq {
                at: Side::Destination,
            },
            Phase::Drain => Action::AppliedSeq { at: Side::Source },
            Phase::Finish if !self.in_flight_finish_done() => Action::FinishShadow {
                at: Side::Destination,
                force: false,
            },
            Phase::Finish => Action::FinishMove,
            // The new owner is checked (there, the incarnation cut over to) before the source's
            // copy, the last one, is dropped.
            Phase::Retire if self.polls == 0 => Action::AppliedSeq {
                at: Side::Destination,
            },
            Phase::Retire => Action::DropInstance { at: Side::Source },
            Phase::AbortBegin => Action::AbortBegin,
            Phase::AbortExpect => Action::ExpectSessions {
                keys: self.created.clone(),
            },
            Phase::AbortCommit => Action::AbortCommit,
            Phase::AbortPrime => Action::Copy {
                from: Side::Source,
                keys: Some(self.created.clone()),
                after_seq: self.source_fence,
                lead_ms: 0,
            },
            Phase::AbortSettle => Action::ShadowStats {
                at: Side::Destination,
            },
            Phase::AbortCopyBack => Action::Copy {
                from: Side::Destination,
                keys: Some(self.created.clone()),
                after_seq: self.last_sent,
                lead_ms: 0,
            },
            Phase::AbortReturn if !self.source_drained && self.polls % 2 == 1 => poll,
            Phase::AbortReturn if !self.source_drained => Action::AppliedSeq { at: Side::Source },
            Phase::AbortReturn if !self.source_settled && self.polls % 2 == 1 => poll,
            Phase::AbortReturn if !self.source_settled => Action::ShadowStats { at: Side::Source },
            Phase::AbortReturn => Action::FinishShadow {
                at: Side::Source,
                force: true,
            },
            // The source serves again: it is checked (there, its incarnation) before the
            // destination's copy is dropped, which may then be the only one.
            Phase::AbortDrop if self.polls == 0 && self.checks_source_before_drop() => {
                Action::AppliedSeq { at: Side::Source }
            }
            Phase::AbortDrop => Action::DropInstance {
                at: Side::Destination,
            },
            Phase::SteerRebind => Action::RebindRoute,
            Phase::LostKeys => Action::CreatedKeys {
                at: Side::Destination,
            },
            Phase::SteerServe => Action::ServeRoute {
                owner: if self.route_lost == Some(true) {
                    Side::Destination
                } else {
                    Side::Source
                },
            },
            Phase::RollForward => match self.polls {
                0 => Action::ShadowStats {
                    at: Side::Destination,
                },
                1 => Action::FinishShadow {
                    at: Side::Destination,
                    force: true,
                },
                _ => Action::Recover {
                    owner: Side::Destination,
                },
            },
            Phase::AbortRecover | Phase::RecoverSource => Action::Recover {
                owner: Side::Source,
            },
            Phase::Done
            | Phase::Aborted
            | Phase::Failed
            | Phase::RolledForward
            | Phase::Recovered
            | Phase::Offline => return None,
        })
    }

    /// A node of the move was lost (it crashed, restarted or no longer hosts the incarnation
    /// the move works with; `why` says how): the move takes the way out that loses the least
    /// (`docs/moves.md`, "When a process crashes"). `true` if it changed course.
    pub fn node_lost(&mut self, side: Side, why: &str, now_ms: u64) -> bool {
        if self.phase.is_terminal() || self.phase.is_crash_path() || self.route_lost.is_some() {
            return false;
        }
        let flip_unknown = self.phase == Phase::Cutover && (self.in_flight || self.cutover_sent);
        let before = !self.phase.past_cutover() && !flip_unknown;
        let what = match side {
            Side::Source => "source",
            Side::Destination => "destination",
        };
        tracing::warn!(id = self.spec.id, phase = ?self.phase, side = what, why, "a node of the move was lost");
        match (side, before) {
            (_, _) if self.phase == Phase::Prepare => self.start_abort(
                format!("the {what} was lost while preparing: {why}"),
                now_ms,
            ),
            (Side::Destination, true) if self.phase == Phase::AbortDrop => {
                // Nothing left to drop: the destination's copy died with it.
                self.enter(Phase::Aborted, now_ms);
            }
            (Side::Source, true) if self.phase == Phase::AbortDrop => return false,
            (Side::Destination, true) => {
                self.reason = Some(format!(
                    "the destination was lost before the cutover ({why}): the source serves again{}",
                    if self.spec.abort_safe {
                        " and lost nothing (abort-safe: it processed every signal)"
                    } else {
                        "; sessions created on the destination during the move are lost (not abort-safe)"
                    }
                ));
                self.abort_requested = false;
                self.enter(Phase::AbortRecover, now_ms);
            }
            (Side::Source, true) if self.phase.is_abort() => return false,
            (Side::Source, true) => {
                self.reason = Some(format!(
                    "the source was lost before the cutover ({why}): rolled forward to the destination"
                ));
                self.abort_requested = false;
                self.enter(Phase::RollForward, now_ms);
            }
            (Side::Source, false) => {
                // Past the flip the source only drains and is retired: nothing waits for it.
                if self.phase == Phase::Drain && !self.source_drained {
                    self.source_drained = true;
                    self.polls = 0;
                    self.attempts = 0;
                    self.in_flight = false;
                    return true;
                }
                if self.phase == Phase::Retire {
                    // Nothing left to retire: its copy of the instance died with it.
                    self.enter(Phase::Done, now_ms);
                    return true;
                }
                return false;
            }
            (Side::Destination, false) => {
                self.reason = Some(format!(
                    "the destination was lost after the cutover ({why}): the instance is offline; \
                     `handoff recover {}` serves it from the source again",
                    self.spec.instance
                ));
                self.enter(Phase::Offline, now_ms);
            }
        }
        true
    }

    /// An offline move whose destination is back with the move's incarnation (it was
    /// unreachable, not lost) goes on: drain, finish, retire.
    pub fn resume_forward(&mut self, now_ms: u64) -> Result<(), String> {
        if self.phase != Phase::Offline {
            return Err(format!(
                "move {} is {}, not offline",
                self.spec.id,
                self.phase_name()
            ));
        }
        self.reason = None;
        self.enter(Phase::Drain, now_ms);
        Ok(())
    }

    /// An operator recovers an offline instance (the destination lost after the cutover) on
    /// the source.
    pub fn recover_on_source(&mut self, now_ms: u64) -> Result<(), String> {
        if self.phase != Phase::Offline {
            return Err(format!(
                "move {} is {}, not offline: nothing to recover",
                self.spec.id,
                self.phase_name()
            ));
        }
        self.enter(Phase::RecoverSource, now_ms);
        Ok(())
    }

    /// Whether an abort checks the source before it drops the destination's copy: once move
    /// mode began, the destination may hold what the source lacks (before it, it got nothing).
    fn checks_source_before_drop(&self) -> bool {
        self.incarnations.source.is_some() && self.figures.first_seq > 0
    }

    /// `Finish` is two actions (destination, then steer); `polls` marks the first as done.
    fn in_flight_finish_done(&self) -> bool {
        self.phase == Phase::Finish && self.polls > 0
    }

    /// Marks the current action as about to be sent (persist the machine after this).
    pub fn start_action(&mut self) {
        self.in_flight = true;
        if self.phase == Phase::Cutover {
            self.cutover_sent = true;
        }
    }

    /// Asks for an abort: honoured at the next step before cutover; ignored after it.
    pub fn request_abort(&mut self, reason: impl Into<String>) {
        if !self.phase.past_cutover()
            && !self.phase.is_abort()
            && !self.phase.is_terminal()
            && !self.phase.is_crash_path()
            && self.route_lost.is_none()
        {
            self.abort_requested = true;
            if self.reason.is_none() {
                self.reason = Some(reason.into());
            }
        }
    }

    /// Aborts at once, between actions: `true` if the move entered its abort path (it is
    /// before the cutover and not already aborting).
    pub fn abort_now(&mut self, reason: impl Into<String>, now_ms: u64) -> bool {
        if self.phase.past_cutover()
            || self.phase.is_abort()
            || self.phase.is_terminal()
            || self.phase.is_crash_path()
            || self.route_lost.is_some()
        {
            // A crash's way out is never aborted: it may be all that keeps the state.
            return false;
        }
        if self.phase == Phase::Cutover && (self.in_flight || self.cutover_sent) {
            // The flip may have happened: only the steer's answer tells; go forward.
            return false;
        }
        self.start_abort(reason.into(), now_ms);
        true
    }

    fn enter(&mut self, phase: Phase, now_ms: u64) {
        let name = serde_json::to_value(self.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *self.figures.phases_ms.entry(name).or_default() +=
            now_ms.saturating_sub(self.phase_started_ms);
        self.phase = phase;
        self.phase_started_ms = now_ms;
        self.source_drained = false;
        self.in_flight = false;
        self.attempts = 0;
        self.polls = 0;
    }

    fn start_abort(&mut self, reason: String, now_ms: u64) {
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
        self.abort_requested = false;
        // Before the steer was asked to switch, nothing reached the destination.
        let next = match self.phase {
            Phase::Prepare => Phase::AbortDrop,
            _ => Phase::AbortBegin,
        };
        self.enter(next, now_ms);
    }

    fn fail(&mut self, reason: String, now_ms: u64) {
        self.reason = Some(reason);
        self.enter(Phase::Failed, now_ms);
    }

    /// Takes the result of the current action and moves on.
    pub fn complete(&mut self, result: Result<Outcome, Failure>, now_ms: u64) {
        let phase = self.phase;
        let outcome = match result {
            Ok(o) => o,
            Err(f) => return self.failed(f, now_ms),
        };
        self.in_flight = false;
        self.attempts = 0;
        match (phase, outcome) {
            (Phase::Steer, Outcome::FirstSeq { first, last_sent }) => {
                self.figures.first_seq = first;
                self.source_fence = last_sent;
                self.enter(Phase::Copy, now_ms);
            }
            (Phase::Copy, Outcome::Copied(c)) => {
                self.copied = true;
                let ok = c.digest_match && c.records_copied == c.sessions_at_start;
                let buckets = c.differing_buckets.clone();
                self.figures.copy = c;
                if ok {
                    self.enter(Phase::Verify, now_ms);
                } else {
                    self.start_abort(format!("the digests differ in buckets {buckets:?}"), now_ms);
                }
            }
            (Phase::Verify, Outcome::Shadow(Some(s))) => {
                self.figures.shadow = s;
                if s.refused > 0 {
                    let why = format!(
                        "the destination could not take {} signals (its buffer or tick log was full)",
                        s.refused
                    );
                    self.start_abort(why, now_ms);
                } else if s.settled() {
                    self.enter(Phase::Cutover, now_ms);
                } else {
                    self.poll_again("the destination did not settle", now_ms);
                }
            }
            (Phase::Verify | Phase::AbortSettle, Outcome::Done) => self.polls += 1,
            (Phase::Verify, Outcome::Shadow(None)) => {
                self.start_abort("the destination is no longer a shadow".into(), now_ms)
            }
            (
                Phase::Cutover,
                Outcome::Boundary {
                    boundary,
                    last_sent,
                },
            ) => {
                self.figures.cutover_seq = boundary;
                self.last_sent = last_sent;
                self.enter(Phase::Drain, now_ms);
            }
            (Phase::Drain, Outcome::Applied(seq)) if self.source_drained => {
                // The destination leaves shadow mode only once every signal below the boundary
                // reached it (FIFO: it applied boundary - 1 or a later seq): its shadow skips a
                // duplicated update its copied record already includes, a serving instance
                // would apply it a second time.
                if seq.saturating_add(1) >= self.figures.cutover_seq {
                    self.enter(Phase::Finish, now_ms);
                } else if self.polls + 1 >= MAX_POLLS {
                    tracing::warn!(
                        seq,
                        boundary = self.figures.cutover_seq,
                        "the destination did not receive every signal below the boundary"
                    );
                    self.enter(Phase::Finish, now_ms);
                } else {
                    self.polls += 1;
                }
            }
            (Phase::Drain, Outcome::Applied(seq)) => {
                if seq >= self.last_sent {
                    self.source_drained = true;
                    self.polls = 0;
                } else if self.polls + 1 >= MAX_POLLS {
                    // The source will not drain (it may be gone): its signals below the
                    // boundary were applied by the destination's shadow too; clients
                    // retransmit the answers they miss.
                    tracing::warn!(seq, last_sent = self.last_sent, "source did not drain");
                    self.source_drained = true;
                    self.polls = 0;
                } else {
                    self.polls += 1;
                }
            }
            (Phase::Drain, Outcome::Done) => self.polls += 1,
            (Phase::Finish, _) if self.polls == 0 => self.polls = 1,
            (Phase::Finish, _) => self.enter(Phase::Retire, now_ms),
            (Phase::Retire, Outcome::Applied(_)) if self.polls == 0 => self.polls = 1,
            (Phase::Retire, _) => self.enter(Phase::Done, now_ms),
            (Phase::AbortBegin, Outcome::Keys(keys)) => {
                self.figures.created_during_move = keys.len() as u64;
                self.created = keys;
                let next = if self.created.is_empty() {
                    Phase::AbortCommit
                } else {
                    Phase::AbortExpect
                };
                self.enter(next, now_ms);
            }
            (Phase::AbortExpect, _) => {
                let next = self.after_expect();
                self.enter(next, now_ms)
            }
            (
                Phase::SteerRebind,
                Outcome::Rebound {
                    source,
                    destination,
                },
            ) => {
                let forward = self.route_lost == Some(true);
                // The new owner must be linked; the other side only fences and reports.
                let (owner, other) = if forward {
                    (destination, source)
                } else {
                    (source, destination)
                };
                let Some(owner_seq) = owner else {
                    return self.fail(
                        "SteerRebind: unreachable: the steer could not link the instance's owner"
                            .into(),
                        now_ms,
                    );
                };
                let other_seq = other.unwrap_or(0);
                self.rebound = if forward {
                    (other_seq, owner_seq)
                } else {
                    (owner_seq, other_seq)
                };
                let next = if forward {
                    Phase::SteerServe
                } else if self.spec.abort_safe {
                    // Every create reached the source too: nothing to bring back.
                    self.created.clear();
                    Phase::SteerServe
                } else {
                    Phase::LostKeys
                };
                self.enter(next, now_ms);
            }
            (Phase::LostKeys, Outcome::Keys(keys)) => {
                self.figures.created_during_move = keys.len() as u64;
                self.created = keys;
                let next = if self.created.is_empty() {
                    Phase::SteerServe
                } else {
                    Phase::AbortExpect
                };
                self.enter(next, now_ms);
            }
            (
                Phase::SteerServe,
                Outcome::Boundary {
                    boundary,
                    last_sent: _,
                },
            ) => {
                let (source_seq, dest_seq) = self.rebound;
                if self.route_lost == Some(true) {
                    // Both nodes were bound again, which fenced off every signal the old run
                    // of the steer still had in flight: each has applied all it will ever get
                    // below `boundary`. The drain is done; the destination may leave shadow
                    // mode.
                    if self.figures.cutover_seq == 0 {
                        self.figures.cutover_seq = boundary;
                    }
                    self.last_sent = source_seq;
                    self.enter(Phase::Finish, now_ms);
                } else {
                    // As after an abort's commit, with the fence in place of the last seqs
                    // sent: the destination sends back what it applied by `dest_seq`, the
                    // source has applied every seq it will get from the old run.
                    self.last_sent = dest_seq;
                    self.abort_boundary = source_seq.saturating_add(1);
                    let next = self.after_commit();
                    self.enter(next, now_ms);
                }
            }
            (
                Phase::AbortCommit,
                Outcome::Boundary {
                    boundary,
                    last_sent,
                },
            ) => {
                self.last_sent = last_sent;
                self.abort_boundary = boundary;
                let next = self.after_commit();
                self.enter(next, now_ms);
            }
            // The prime resolved every returning session at the destination (its record
            // arrived, or the destination owns it), so none of them is awaited there any
            // more. Records of a full copy that was interrupted (an abort during the copy) may
            // stay awaited for good: settling would wait for them in vain.
            (Phase::AbortPrime, Outcome::Copied(c)) if c.digest_match => {
                self.enter(Phase::AbortCopyBack, now_ms)
            }
            (Phase::AbortPrime, _) => self.enter(Phase::AbortSettle, now_ms),
            (Phase::AbortSettle, Outcome::Shadow(s)) => {
                // The destination must not still await a record it is about to send back.
                if s.is_none_or(|s| s.awaiting == 0) || self.polls + 1 >= MAX_POLLS {
                    self.enter(Phase::AbortCopyBack, now_ms);
                } else {
                    self.polls += 1;
                }
            }
            (Phase::AbortCopyBack, _) => self.enter(Phase::AbortReturn, now_ms),
            // The source leaves shadow mode only once every signal below the abort's boundary
            // reached it: a hand-over marker arriving later would freeze a session it serves.
            (Phase::AbortReturn, Outcome::Applied(seq)) if !self.source_drained => {
                if seq.saturating_add(1) >= self.abort_boundary || self.polls + 1 >= MAX_POLLS {
                    self.source_drained = true;
                    self.polls = 0;
                } else {
                    self.polls += 1;
                }
            }
            (Phase::AbortReturn, Outcome::Done) if !self.source_drained => self.polls += 1,
            // Records of the returning sessions may still be streaming (a copy back repeated
            // after a restart is refused while the first one runs): wait for them before giving
            // up on any. Whatever is still awaited then is lost.
            (Phase::AbortReturn, Outcome::Shadow(s)) if !self.source_settled => {
                let awaiting = s.map_or(0, |s| s.awaiting);
                if awaiting == 0 || self.polls + 1 >= MAX_POLLS {
                    self.figures.lost_on_abort = awaiting;
                    self.source_settled = true;
                    self.polls = 0;
                } else {
                    self.polls += 1;
                }
            }
            (Phase::AbortReturn, Outcome::Done) if !self.source_settled => self.polls += 1,
            (Phase::AbortReturn, _) => self.enter(Phase::AbortDrop, now_ms),
            (Phase::AbortDrop, Outcome::Applied(_)) if self.polls == 0 => self.polls = 1,
            (Phase::AbortDrop, _) => self.enter(Phase::Aborted, now_ms),
            (Phase::RollForward, Outcome::Shadow(s)) if self.polls == 0 => {
                match s {
                    Some(s) if s.manifest_known => self.figures.lost_sessions = s.awaiting,
                    Some(_) => self.figures.manifest_lost = true,
                    // Already serving (a step repeated after a restart): what it gave up was
                    // recorded when it did.
                    None => {}
                }
                self.polls = 1;
            }
            (Phase::RollForward, o) if self.polls == 1 => {
                // A repeat after a restart answers no keys: the first answer's stand.
                if let Outcome::Keys(keys) = o.clone().filter_keys() {
                    self.figures.lost_sessions = keys.len() as u64;
                    self.figures.lost_keys = keys;
                }
                self.polls = 2;
            }
            (Phase::RollForward, Outcome::Boundary { .. }) => {
                let lost = if self.figures.manifest_lost {
                    "every session the source held before the move (its manifest never arrived)"
                        .to_owned()
                } else {
                    format!("{} sessions never copied", self.figures.lost_sessions)
                };
                self.reason = Some(format!(
                    "{}; lost: {lost}",
                    self.reason.clone().unwrap_or_default()
                ));
                self.enter(Phase::RolledForward, now_ms)
            }
            (Phase::AbortRecover, Outcome::Boundary { .. }) => self.enter(Phase::Aborted, now_ms),
            (Phase::RecoverSource, Outcome::Boundary { last_sent, .. }) => {
                // A repeat after a restart answers 0: the first answer's figure stands.
                if last_sent > 0 {
                    self.figures.given_up_seqs = last_sent
                        .saturating_add(1)
                        .saturating_sub(self.figures.cutover_seq);
                }
                self.reason = Some(format!(
                    "recovered on the source after the destination was lost past the cutover: \
                     {} seqs stamped since the cutover (signals and ticks) were given up",
                    self.figures.given_up_seqs
                ));
                self.enter(Phase::Recovered, now_ms)
            }
            (Phase::Prepare, Outcome::Prepared { incarnation }) => {
                self.incarnations.destination = Some(incarnation);
                self.enter(Phase::Steer, now_ms)
            }
            // A node that does not name the shadow's incarnation: the move goes on unchecked.
            (Phase::Prepare, Outcome::Done) => self.enter(Phase::Steer, now_ms),
            (p, o) => self.fail(format!("unexpected answer {o:?} in phase {p:?}"), now_ms),
        }
        if self.abort_requested && self.phase == Phase::Cutover && self.cutover_sent {
            // The flip was asked for and its answer is not in: it may have happened, and an
            // abort then would drop the instance's new owner. The move goes forward.
            tracing::warn!(
                id = self.spec.id,
                "abort requested while the flip may have happened: going forward"
            );
            self.abort_requested = false;
            self.reason = None;
        }
        if self.abort_requested && self.phase.past_cutover() {
            // Asked while the flip was in flight, and the flip happened: the move only goes
            // forward now (aborting would drop the instance's new owner).
            tracing::warn!(
                id = self.spec.id,
                "abort requested too late: the route flipped"
            );
            self.abort_requested = false;
            self.reason = None;
        }
        if self.abort_requested && !self.phase.is_abort() && !self.phase.is_terminal() {
            let reason = self
                .reason
                .clone()
                .unwrap_or_else(|| "abort requested".into());
            self.start_abort(reason, now_ms);
        }
    }

    /// Where an abort goes once the source expects the returning sessions.
    fn after_expect(&self) -> Phase {
        if self.route_lost.is_some() {
            Phase::SteerServe
        } else {
            Phase::AbortCommit
        }
    }

    /// The steer lost the route (it restarted). Before the cutover the move aborts, after it
    /// it finishes; either way the route is installed again first.
    fn lose_route(&mut self, cut_over: bool, now_ms: u64) {
        let forward = cut_over || self.phase.past_cutover();
        tracing::warn!(
            id = self.spec.id,
            phase = ?self.phase,
            forward,
            "the steer restarted and lost the route; installing it again"
        );
        self.route_lost = Some(forward);
        self.abort_requested = false;
        if !forward && self.reason.is_none() {
            self.reason = Some("the steer restarted during the move".into());
        }
        self.enter(Phase::SteerRebind, now_ms);
    }

    /// Where an abort goes once the route is back with the source.
    fn after_commit(&self) -> Phase {
        if self.created.is_empty() {
            Phase::AbortDrop
        } else if self.copied {
            Phase::AbortSettle
        } else {
            Phase::AbortPrime
        }
    }

    fn poll_again(&mut self, what: &str, now_ms: u64) {
        self.polls += 1;
        if self.polls >= MAX_POLLS {
            self.start_abort(format!("{what} in time"), now_ms);
        }
    }

    fn failed(&mut self, f: Failure, now_ms: u64) {
        self.in_flight = false;
        if let Failure::NodeLost(side, why) = &f {
            // Known at once, not after the health watch's next look: the crash's way out.
            if self.node_lost(*side, why, now_ms) {
                return;
            }
        }
        if let Failure::RouteLost { cut_over } = f {
            if self.route_lost.is_none() {
                return self.lose_route(cut_over, now_ms);
            }
            // Lost again while re-installing it (the steer restarted once more): rebind.
            self.route_lost = Some(self.route_lost == Some(true) || cut_over);
            return self.enter(Phase::SteerRebind, now_ms);
        }
        let retry = matches!(f, Failure::Unreachable(_)) && self.attempts + 1 < MAX_ATTEMPTS;
        if retry {
            self.attempts += 1;
            return;
        }
        let why = format!("{:?}: {f}", self.phase);
        match self.phase {
            // Before cutover, any failure aborts the move.
            Phase::Prepare | Phase::Steer | Phase::Copy | Phase::Verify => {
                self.start_abort(why, now_ms)
            }
            // A refused or lost flip: the route state is unknown to us; abort is safe only if
            // the flip did not happen, which the steer refuses to abort after (and then we
            // retry forward).
            Phase::Cutover => match f {
                Failure::Refused(_) => self.start_abort(why, now_ms),
                Failure::Unreachable(_) | Failure::RouteLost { .. } | Failure::NodeLost(..) => {
                    self.fail(why, now_ms)
                }
            },
            // Past the flip the move only goes forward: a source that cannot be asked has
            // stopped anyway (the destination is still waited for); the destination and steer
            // must be repaired by an operator.
            Phase::Drain if !self.source_drained => {
                self.source_drained = true;
                self.polls = 0;
                self.attempts = 0;
            }
            Phase::Drain => self.enter(Phase::Finish, now_ms),
            Phase::Retire if self.polls == 0 => {
                self.reason = Some(format!(
                    "the destination was lost before the source was retired ({why}): the instance is offline; `handoff recover {}` serves it from the source again",
                    self.spec.instance
                ));
                self.enter(Phase::Offline, now_ms)
            }
            Phase::Retire => {
                // Moved; what is left behind is said (the source's copy is not routed).
                self.reason = Some(format!(
                    "moved, but the source's copy could not be dropped ({why}): it stays on {}, routed to by nothing",
                    self.spec.source
                ));
                self.enter(Phase::Done, now_ms)
            }
            // The destination cannot leave shadow mode, or the steer will not make it the
            // owner (it lost its incarnation): offline, the source still holds everything
            // below the boundary.
            Phase::Finish => {
                self.reason = Some(format!(
                    "the destination could not take over after the cutover ({why}): the instance is offline; `handoff recover {}` serves it from the source again",
                    self.spec.instance
                ));
                self.enter(Phase::Offline, now_ms)
            }
            // The steer refused: the route is not moving (never switched, or already back).
            Phase::AbortBegin => match f {
                Failure::Refused(_) => self.enter(Phase::AbortDrop, now_ms),
                Failure::Unreachable(_) | Failure::RouteLost { .. } | Failure::NodeLost(..) => {
                    self.fail(why, now_ms)
                }
            },
            Phase::AbortExpect => {
                // The source cannot take them back: they stay lost with the destination.
                self.figures.lost_on_abort = self.created.len() as u64;
                self.created.clear();
                let next = self.after_expect();
                self.enter(next, now_ms);
            }
            Phase::SteerRebind | Phase::SteerServe => self.fail(why, now_ms),
            // The destination cannot name the sessions created on it: they are lost with it.
            Phase::LostKeys => self.fail(why, now_ms),
            Phase::AbortCommit => match f {
                Failure::Refused(_) => {
                    let next = self.after_commit();
                    self.enter(next, now_ms)
                }
                Failure::Unreachable(_) | Failure::RouteLost { .. } | Failure::NodeLost(..) => {
                    self.fail(why, now_ms)
                }
            },
            // The destination cannot learn the returning sessions' old state: it may still
            // send back what it has.
            Phase::AbortPrime => self.enter(Phase::AbortSettle, now_ms),
            Phase::AbortSettle => self.enter(Phase::AbortCopyBack, now_ms),
            // The copy back failed or was refused (a first one may still stream): the source's
            // awaited count, read in AbortReturn, says what is lost.
            Phase::AbortCopyBack => self.enter(Phase::AbortReturn, now_ms),
            Phase::AbortReturn if !self.source_drained => {
                self.source_drained = true;
                self.polls = 0;
                self.attempts = 0;
            }
            Phase::AbortReturn if !self.source_settled => {
                // The source cannot be asked: nothing more will arrive there either.
                self.figures.lost_on_abort = self.created.len() as u64;
                self.source_settled = true;
                self.polls = 0;
                self.attempts = 0;
            }
            Phase::AbortReturn => self.enter(Phase::AbortDrop, now_ms),
            Phase::AbortDrop if self.polls == 0 && self.checks_source_before_drop() => {
                // The source is gone too: the destination's copy is kept, never dropped.
                self.fail(
                    format!("the source was lost during the abort ({why}); the destination's copy is kept"),
                    now_ms,
                )
            }
            Phase::AbortDrop => self.enter(Phase::Aborted, now_ms),
            // A crash's way out that fails needs an operator (the reason says which step).
            Phase::RollForward | Phase::AbortRecover | Phase::RecoverSource => {
                self.fail(why, now_ms)
            }
            Phase::Done
            | Phase::Aborted
            | Phase::Failed
            | Phase::RolledForward
            | Phase::Recovered
            | Phase::Offline => {}
        }
    }

    /// After a restart: a move whose action may have been sent is resumed forward past the
    /// cutover (every step there is repeatable) and aborted before it.
    pub fn recover(&mut self, now_ms: u64) {
        if self.phase.is_terminal() {
            return;
        }
        self.attempts = 0;
        self.polls = 0;
        if self.phase.past_cutover()
            || self.phase.is_abort()
            || self.phase.is_route_recovery()
            || self.phase.is_crash_path()
        {
            // Every step from here is repeatable (re-binding and serving the route too).
            self.in_flight = false;
            return;
        }
        if self.phase == Phase::Cutover && self.in_flight {
            // The flip may have happened; the steer tells: cutover again is refused if it
            // did, and then abort_begin is refused too, so the move fails for the operator
            // with the route state in its reason. Retrying the flip is the safe first step.
            self.in_flight = false;
            return;
        }
        self.start_abort("the controller restarted during the move".into(), now_ms);
    }

    /// The phase's name as reports print it.
    pub fn phase_name(&self) -> String {
        serde_json::to_value(self.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
