//! A deterministic, seeded simulation of a whole live move (DESIGN.md "Live move", "Testing").
//!
//! A discrete-event simulation with a virtual clock (µs) and one seeded RNG: no tokio, no
//! sockets, no wall clock. It runs the project's REAL pure cores and models only the I/O
//! around them:
//!
//! - the steer's decisions are [`Route`]'s; the service loop around it (dense seq stamping,
//!   `Both` with a shadow flag to the destination, `HandOver` = marker to the source and
//!   signal to the destination, last seq sent per link, the repeated boundary of a repeated
//!   flip, the pending `BeginMove` until the destination link is up) mirrors
//!   `handoff_steer::service`;
//! - both nodes host [`Hosting`] instances of a small test function ([`SimCounter`]) through
//!   the [`Hosted`] trait, applying their link's signals in order as `handoff_node::instance`
//!   does (hand-over markers, shadow-flag output suppression, answers of buffered
//!   authoritative signals sent when replayed);
//! - the copy is `handoff_node::copy`'s protocol over a node-to-node FIFO link (manifest after
//!   the source applied `after_seq`, deletion log → tombstones, subset copies, records read
//!   from the table one at a time while signals keep being applied, digests compared);
//! - the controller is a [`MoveMachine`] driven as `driver::drive` drives it (persisted as
//!   JSON before and after every action; a restart deserialises the last persisted copy and
//!   calls [`MoveMachine::recover`]).
//!
//! Links are TCP-like: FIFO per (sender, receiver) with random delays, any interleaving
//! across links. Faults are chosen by seed ([`FaultClass`]): delays, lost control requests
//! or replies (a lost reply means the action happened; the driver sees `Unreachable` and
//! backs off), controller crashes (the action in flight is lost; the peer may still carry it
//! out), a destination or source node crash (its instance, copies and links vanish; the
//! steer notices its link is down a little later and from then on drops, unstamped, the
//! signals that need it), an operator's abort (either API). After every run the invariants are
//! checked against a reference [`Instance`] that applied every admitted signal in seq order
//! (see [`SimReport::checked`]); every run ends within bounded events and virtual time.
//!
//! Clients: one per session key, each sending its next operation (create — a re-attach when
//! the session exists —, update, delete or a stateless ping, chosen by the RNG) once it got
//! the answer to the previous one; the steer injects a tick every 5 ms.
//!
//! A steer crash ([`FaultClass::SteerCrash`]) loses the steer's route state, its pending
//! answers, the outputs that reach it while it is down, and the signals it stamped above a
//! random cut (the same on every link: those still in its queues); what it wrote arrives.
//! It restarts from its route file. If a move was in progress it routes nothing and refuses
//! move commands with `RouteLost` until the machine rebinds both nodes (a bind fences off the
//! earlier run's frames) and serves the route again. Lost signals leave the reference; an
//! answer lost at the dead steer must never arrive.
//!
//! Added faults (see the `faults` module): a crashed node that restarts after a delay as a
//! new incarnation ([`FaultClass::NodeRestart`], [`Restart`]) with no instance, with an empty
//! one re-created from its configuration, or with its instance as it was at the crash
//! (persistence); frames written to the dead connection never reach the new incarnation,
//! answers owed on it are lost, and the steer's links reconnect and bind again (retrying with
//! back-off while the node hosts nothing). Clients that retransmit the same datagram after a
//! time-out, a bounded number of times ([`FaultClass::Retransmit`], [`Retransmit`]): each copy
//! is a new signal to the steer and the reference applies it too. Bounded steer link queues
//! ([`FaultClass::QueueShed`]): a frame occupies its link's queue until it reaches its node, a
//! full queue sheds the datagram unstamped (`Dropped::Shed`), the client retransmits. A steer
//! crash between a signal's two copies ([`FaultClass::SplitCrash`]): the cut of one link is one
//! above the other's, on a signal routed to both nodes. A controller whose view is stale
//! ([`FaultClass::StaleView`]): the instance starts on B, where the steer routes, while the
//! move names A as its source. All but the stale view are mixed into [`FaultClass::Mixed`].
//! Their invariants: `restarted_answers`, `restart_not_silent`, `op_answered`, `stale_view_*`
//! (see [`SimReport::checked`]).
//!
//! Not modelled: the standby/failover protocol, memory limits, a retired link's close after
//! its grace period, the copy's pacing plans and re-sending of differing digest buckets (the
//! machine aborts on a mismatch), several controllers, more than one node crash or restart per
//! run, and a persisting node that keeps only its table (a kept instance keeps its move state
//! too). Time-outs and back-offs are scaled down (see the constants) so a run covers a whole
//! move in a few hundred milliseconds of virtual time.

use bytes::Bytes;
use handoff_controller::driver::{outcome_of, refusal, request_for, Request};
use handoff_controller::machine::{
    Action, Failure, MoveMachine, MoveSpec, Outcome, Phase, Side, POLL_MS,
};
use handoff_function::runtime::MoveStepError;
use handoff_function::runtime::{DeletionLog, Hosting, Instance};
use handoff_function::{
    BadRecord, Classified, Function, MalformedSignal, Output, Ruleset, SignalKind, Stamp,
};
use handoff_node::copy::CopyReport;
use handoff_node::copy_core::{
    CopyReceiver, CopySender, CopyVerdict, ManifestAnswer, ManifestStep, Outgoing, RecordBatch,
    SenderStep,
};
use handoff_node::instance_core::{Emit, InstanceCore};
use handoff_state::{CopyOrder, CopyPlan};
use handoff_steer::control::{keys_to_hex, reply_body};
use handoff_steer::route::{Delivery, RoutePhase};
use handoff_steer::service_core::{
    Admission, Answer, CommandError, Dropped, Effect, Inbound, Kept, KeptRoute, LinkId,
    ServiceCore, Timeouts,
};
use handoff_steer::SteerRequest;
use handoff_wire::code;
use handoff_wire::SignalFrame;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

mod faults;
pub use faults::{Comeback, Restart, Retransmit};

// ---------------------------------------------------------------------------------------------
// The test function
// ---------------------------------------------------------------------------------------------

/// Op byte of a create (a re-attach when the session exists: it reads the old counter).
pub const OP_CREATE: u8 = 1;
/// Op byte of an update (adds one).
pub const OP_UPDATE: u8 = 2;
/// Op byte of a delete.
pub const OP_DELETE: u8 = 3;
/// Op byte of a stateless ping.
pub const OP_PING: u8 = 4;
/// A session goes idle this long after its last change, and expires as long after that.
pub const EXPIRY_US: u64 = 40_000;

/// The simulation's function: a per-key counter. A signal is `[op, key]`; a create starts the
/// counter at 0 (or re-attaches: old value + 1000), an update adds one, a delete removes it, a
/// ping is stateless. Every signal answers `[op, key, value (u32 BE, u32::MAX if none)]`. The
/// timer marks a session idle [`EXPIRY_US`] after its last change and deletes it as long
/// after that, so ticks change sessions (taking the tick's seq) and delete them.
pub struct SimCounter;

/// A [`SimCounter`] session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The counter.
    pub value: u32,
    /// Steer time of the last change (µs).
    pub last_us: u64,
    /// Whether the timer fired once already.
    pub idle: bool,
}

/// The session key of key number `id`.
pub fn key_of(id: u8) -> Bytes {
    Bytes::copy_from_slice(&[b'k', id])
}

impl Function for SimCounter {
    type Session = Counter;
    type Prepared = (u8, u8);

    fn name(&self) -> &'static str {
        "sim-counter"
    }

    fn classify(&self, d: &[u8]) -> Result<Classified, MalformedSignal> {
        let (op, key) = self.prepare(d)?;
        let kind = match op {
            OP_CREATE => SignalKind::Create,
            OP_UPDATE => SignalKind::Update,
            OP_DELETE => SignalKind::Delete,
            _ => SignalKind::Stateless,
        };
        let key = if kind == SignalKind::Stateless {
            Bytes::new()
        } else {
            key_of(key)
        };
        Ok(Classified { kind, key })
    }

    fn prepare(&self, d: &[u8]) -> Result<(u8, u8), MalformedSignal> {
        match d {
            [op @ 1..=4, key] => Ok((*op, *key)),
            [_, _] => Err(MalformedSignal::InvalidField { field: "op" }),
            _ => Err(MalformedSignal::Truncated {
                needed: 2,
                had: d.len(),
            }),
        }
    }

    fn process(&self, s: &mut Option<Counter>, p: &(u8, u8), stamp: Stamp, out: &mut Vec<Output>) {
        match p.0 {
            OP_CREATE => {
                let value = s.map_or(0, |c| c.value.wrapping_add(1000));
                *s = Some(Counter {
                    value,
                    last_us: stamp.now_us,
                    idle: false,
                });
            }
            OP_UPDATE => {
                if let Some(c) = s.as_mut() {
                    c.value = c.value.wrapping_add(1);
                    c.last_us = stamp.now_us;
                    c.idle = false;
                }
            }
            OP_DELETE => *s = None,
            _ => {}
        }
        let value = s.map_or(u32::MAX, |c| c.value);
        let mut b = vec![p.0, p.1];
        b.extend_from_slice(&value.to_be_bytes());
        out.push(Output {
            msg_type: u16::from(p.0),
            bytes: b.into(),
        });
    }

    fn deadline_us(&self, c: &Counter) -> Option<u64> {
        Some(c.last_us + EXPIRY_US)
    }

    fn on_timer(&self, s: &mut Option<Counter>, stamp: Stamp, out: &mut Vec<Output>) {
        match s {
            Some(c) if !c.idle => {
                c.idle = true;
                c.last_us = stamp.now_us;
            }
            _ => *s = None,
        }
        out.push(Output {
            msg_type: 99,
            bytes: Bytes::new(),
        });
    }

    fn encode_session(&self, c: &Counter, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&c.value.to_be_bytes());
        buf.extend_from_slice(&c.last_us.to_be_bytes());
        buf.push(u8::from(c.idle));
    }

    fn decode_session(&self, b: &[u8]) -> Result<Counter, BadRecord> {
        let bad = || BadRecord {
            reason: format!("{} bytes, expected 13", b.len()),
        };
        if b.len() != 13 {
            return Err(bad());
        }
        let value = u32::from_be_bytes(b[0..4].try_into().map_err(|_| bad())?);
        let last_us = u64::from_be_bytes(b[4..12].try_into().map_err(|_| bad())?);
        Ok(Counter {
            value,
            last_us,
            idle: b[12] != 0,
        })
    }

    fn default_ruleset(&self) -> Ruleset {
        Ruleset::default()
    }

    fn msg_type_name(&self, _: u16) -> &'static str {
        "sim-counter"
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario, faults and report
// ---------------------------------------------------------------------------------------------

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultClass {
    /// Small, calm delays; nothing fails.
    None,
    /// Heavy-tailed delays on every link.
    Delays,
    /// Control requests and replies lost (the driver sees `Unreachable`).
    ControlLoss,
    /// The controller crashes (once or twice) and restarts from its persisted machine.
    ControllerCrash,
    /// The destination node crashes for good.
    DestinationCrash,
    /// The source node crashes for good.
    SourceCrash,
    /// The operator asks for an abort at a random point.
    OperatorAbort,
    /// The steer crashes (losing its route state and the signals it had not written yet) and
    /// restarts a little later; the controller installs the route again.
    SteerCrash,
    /// A node crashes and comes back after a delay as a new incarnation: with no instance,
    /// with an empty instance re-created from its configuration, or with its instance as it
    /// was at the crash (persistence); the steer's links bind it again.
    NodeRestart,
    /// Clients retransmit a datagram that got no answer in time (a bounded number of times);
    /// some control loss makes answers go missing.
    Retransmit,
    /// Bounded link queues at the steer: a burst finds a queue full and is shed unstamped;
    /// clients retransmit.
    QueueShed,
    /// The steer crashes between writing a signal's two copies: one node gets it, the other
    /// does not (the cuts per link differ by one).
    SplitCrash,
    /// The controller's view is stale: its move names a source the instance left (an earlier
    /// move put it on the move's destination, where the steer routes).
    StaleView,
    /// A random mix of the above (at most one node crash, possibly restarted; a steer crash,
    /// possibly split, only without one; retransmission and queue limits; never a stale view).
    Mixed,
}

impl FaultClass {
    /// Every class, in the order [`soak`] cycles through them.
    pub const ALL: [FaultClass; 14] = [
        FaultClass::None,
        FaultClass::Delays,
        FaultClass::ControlLoss,
        FaultClass::ControllerCrash,
        FaultClass::DestinationCrash,
        FaultClass::SourceCrash,
        FaultClass::OperatorAbort,
        FaultClass::SteerCrash,
        FaultClass::NodeRestart,
        FaultClass::Retransmit,
        FaultClass::QueueShed,
        FaultClass::SplitCrash,
        FaultClass::StaleView,
        FaultClass::Mixed,
    ];

    /// The class [`soak`] runs `seed` with (round-robin).
    pub fn for_seed(seed: u64) -> Self {
        Self::ALL[(seed % Self::ALL.len() as u64) as usize]
    }

    /// Kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::None => "none",
            FaultClass::Delays => "delays",
            FaultClass::ControlLoss => "control-loss",
            FaultClass::ControllerCrash => "controller-crash",
            FaultClass::DestinationCrash => "destination-crash",
            FaultClass::SourceCrash => "source-crash",
            FaultClass::OperatorAbort => "operator-abort",
            FaultClass::SteerCrash => "steer-crash",
            FaultClass::NodeRestart => "node-restart",
            FaultClass::Retransmit => "retransmit",
            FaultClass::QueueShed => "queue-shed",
            FaultClass::SplitCrash => "split-crash",
            FaultClass::StaleView => "stale-view",
            FaultClass::Mixed => "mixed",
        }
    }
}

impl std::fmt::Display for FaultClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FaultClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown fault class {s:?}"))
    }
}

/// When a fault fires: when the controller starts its `action`-th action (Waits not
/// counted; 1-based, across restarts) or, if `phase` is set, its first action in that phase;
/// then after `after_us` of virtual time (0: at once, before the action's request is sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// Action number.
    pub action: u32,
    /// Phase (overrides `action`).
    pub phase: Option<Phase>,
    /// Delay after the action started, µs.
    pub after_us: u64,
}

impl Trigger {
    /// At the first action of `phase`, after `after_us`.
    pub fn at_phase(phase: Phase, after_us: u64) -> Self {
        Self {
            action: 0,
            phase: Some(phase),
            after_us,
        }
    }

    fn random(r: &mut SmallRng) -> Self {
        Self {
            action: r.gen_range(1..=14),
            phase: None,
            after_us: if r.gen_bool(0.25) {
                0
            } else {
                r.gen_range(1..20_000)
            },
        }
    }
}

/// Everything a run does, derived from its seed by [`Scenario::new`]; tests may change fields
/// to force a particular case.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// The fault class the scenario was drawn for.
    pub faults: FaultClass,
    /// Clients, one per session key.
    pub keys: usize,
    /// The move duplicates creates too.
    pub abort_safe: bool,
    /// Lead K, ms.
    pub lead_ms: u64,
    /// Copy order.
    pub order: CopyOrder,
    /// Traffic before the move starts, µs.
    pub warmup_us: u64,
    /// Heavy-tailed delays (else calm ones).
    pub jitter: bool,
    /// Probability that a control request, or its reply, is lost.
    pub control_loss: f64,
    /// Controller crashes.
    pub controller_crashes: Vec<Trigger>,
    /// How long a crashed controller stays down, µs.
    pub controller_down_us: u64,
    /// Destination node crash.
    pub destination_crash: Option<Trigger>,
    /// Source node crash.
    pub source_crash: Option<Trigger>,
    /// Operator's abort; `true`: [`MoveMachine::request_abort`] (honoured when the action in
    /// flight completes), `false`: the driver's [`MoveMachine::abort_now`] between actions.
    pub operator_abort: Option<(Trigger, bool)>,
    /// Steer crash.
    pub steer_crash: Option<Trigger>,
    /// How long a crashed steer stays down, µs.
    pub steer_down_us: u64,
    /// The reply to the first request for this action is lost (a scripted control loss; the
    /// peer carried the request out).
    pub lose_reply_to: Option<Action>,
    /// The crashed node (source or destination crash) comes back (see [`Restart`]).
    pub restart: Option<Restart>,
    /// Clients retransmit (see [`Retransmit`]).
    pub retransmit: Option<Retransmit>,
    /// Frames each steer link's queue holds (a frame leaves it when it reaches its node);
    /// `None`: unbounded.
    pub queue_depth: Option<usize>,
    /// A steer crash writes one copy of a signal routed to both nodes but not the other.
    pub split_crash: bool,
    /// The instance starts on the destination (an earlier move put it there; the steer routes
    /// to it) while the move's spec names the other node as its source.
    pub stale_view: bool,
    /// Trace every signal too (long; for replaying a failing seed).
    pub verbose: bool,
}

impl Scenario {
    /// The scenario of `seed` under `faults`.
    pub fn new(seed: u64, faults: FaultClass) -> Self {
        let mut r = SmallRng::seed_from_u64(seed ^ 0x5CE7_A410_D00D_F00D);
        let order = match r.gen_range(0..4) {
            0 | 1 => CopyOrder::HotFirst,
            2 => CopyOrder::Key,
            _ => CopyOrder::Random { seed: r.gen() },
        };
        let mut sc = Self {
            seed,
            faults,
            keys: r.gen_range(20..=60),
            abort_safe: r.gen_bool(0.25),
            lead_ms: if r.gen_bool(0.5) {
                0
            } else {
                r.gen_range(1..=8)
            },
            order,
            warmup_us: r.gen_range(20_000..80_000),
            jitter: match faults {
                FaultClass::None => false,
                FaultClass::Delays => true,
                _ => r.gen_bool(0.5),
            },
            control_loss: 0.0,
            controller_crashes: Vec::new(),
            controller_down_us: r.gen_range(1_000..100_000),
            destination_crash: None,
            source_crash: None,
            operator_abort: None,
            steer_crash: None,
            steer_down_us: 0,
            lose_reply_to: None,
            restart: None,
            retransmit: None,
            queue_depth: None,
            split_crash: false,
            stale_view: false,
            verbose: false,
        };
        match faults {
            FaultClass::None | FaultClass::Delays => {}
            FaultClass::ControlLoss => sc.control_loss = r.gen_range(0.05..0.25),
            FaultClass::ControllerCrash => {
                sc.controller_crashes.push(Trigger::random(&mut r));
                if r.gen_bool(0.3) {
                    sc.controller_crashes.push(Trigger::random(&mut r));
                }
            }
            FaultClass::DestinationCrash => sc.destination_crash = Some(Trigger::random(&mut r)),
            FaultClass::SourceCrash => sc.source_crash = Some(Trigger::random(&mut r)),
            FaultClass::OperatorAbort => {
                sc.operator_abort = Some((Trigger::random(&mut r), r.gen_bool(0.5)))
            }
            FaultClass::Mixed => {
                if r.gen_bool(0.5) {
                    sc.control_loss = r.gen_range(0.02..0.15);
                }
                if r.gen_bool(0.4) {
                    sc.controller_crashes.push(Trigger::random(&mut r));
                }
                match r.gen_range(0..10) {
                    0 | 1 => sc.destination_crash = Some(Trigger::random(&mut r)),
                    2 | 3 => sc.source_crash = Some(Trigger::random(&mut r)),
                    _ => {}
                }
                if r.gen_bool(0.3) {
                    sc.operator_abort = Some((Trigger::random(&mut r), r.gen_bool(0.5)));
                }
                // Drawn last, so the other faults of a Mixed seed stay what they were.
                let node_crash = sc.destination_crash.is_some() || sc.source_crash.is_some();
                if !node_crash && r.gen_bool(0.3) {
                    sc.steer_crash = Some(Trigger::random(&mut r));
                    sc.steer_down_us = r.gen_range(500..60_000);
                }
                // The faults added later are drawn after all of the above, for the same reason.
                if node_crash && r.gen_bool(0.3) {
                    sc.restart = Some(Restart::random(&mut r));
                }
                if sc.steer_crash.is_some() && r.gen_bool(0.3) {
                    sc.split_crash = true;
                }
                if r.gen_bool(0.2) {
                    sc.retransmit = Some(Retransmit::random(&mut r));
                }
                if r.gen_bool(0.2) {
                    sc.queue_depth = Some(r.gen_range(2..=6));
                    sc.retransmit
                        .get_or_insert_with(|| Retransmit::random(&mut r));
                }
            }
            FaultClass::NodeRestart => {
                if r.gen_bool(0.5) {
                    sc.source_crash = Some(Trigger::random(&mut r));
                } else {
                    sc.destination_crash = Some(Trigger::random(&mut r));
                }
                sc.restart = Some(Restart::random(&mut r));
            }
            FaultClass::Retransmit => {
                sc.retransmit = Some(Retransmit::random(&mut r));
                sc.control_loss = r.gen_range(0.0..0.05);
            }
            FaultClass::QueueShed => {
                sc.jitter = true;
                sc.queue_depth = Some(r.gen_range(2..=6));
                sc.retransmit = Some(Retransmit::random(&mut r));
            }
            FaultClass::SplitCrash => {
                sc.steer_crash = Some(Trigger::random(&mut r));
                sc.steer_down_us = r.gen_range(500..60_000);
                sc.split_crash = true;
            }
            FaultClass::StaleView => {
                sc.stale_view = true;
                if r.gen_bool(0.3) {
                    sc.retransmit = Some(Retransmit::random(&mut r));
                }
            }
            FaultClass::SteerCrash => {
                sc.steer_crash = Some(Trigger::random(&mut r));
                sc.steer_down_us = r.gen_range(500..60_000);
            }
        }
        sc
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (see [`SimReport::checked`]).
    pub invariant: &'static str,
    /// What happened.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// What one run did and found.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The scenario run.
    pub scenario: Scenario,
    /// Signals (not ticks) the steer admitted, i.e. stamped.
    pub signals: u64,
    /// Ticks stamped.
    pub ticks: u64,
    /// Datagrams the steer dropped unstamped (a link it needed was down).
    pub shed: u64,
    /// Answers clients received.
    pub answers: u64,
    /// Admitted signals never answered.
    pub unanswered: u64,
    /// Operations a client gave up waiting for.
    pub client_timeouts: u64,
    /// Control requests and replies lost.
    pub control_lost: u64,
    /// Where the move ended.
    pub phase: Phase,
    /// The phases it went through, in order.
    pub phases: Vec<Phase>,
    /// Why it aborted or failed.
    pub reason: Option<String>,
    /// Whether the route flipped to the destination.
    pub cut_over: bool,
    /// A `Failed` end the faults explain (a peer unreachable for good).
    pub failed_allowed: bool,
    /// Controller crashes that happened.
    pub controller_crashes: u32,
    /// The phase the destination crashed in, if it did.
    pub destination_crashed: Option<Phase>,
    /// The phase the source crashed in, if it did.
    pub source_crashed: Option<Phase>,
    /// Whether the operator's abort was asked for.
    pub operator_abort: bool,
    /// The phase the steer crashed in, if it did.
    pub steer_crashed: Option<Phase>,
    /// Signals stamped by the steer but lost in its crash (never delivered, removed from the
    /// admitted ones), and datagrams it dropped unstamped while down or while its route was
    /// lost.
    pub lost_in_steer_crash: u64,
    /// Of the admitted signals, those whose answer reached the steer while it was down.
    pub answers_lost_in_steer_crash: u64,
    /// The node that crashed and restarted, what it came back with, and the phase it crashed
    /// in.
    pub restarted: Option<(Side, Comeback, Phase)>,
    /// Datagrams clients retransmitted.
    pub retransmissions: u64,
    /// Datagrams shed (unstamped) because a steer link's queue was full.
    pub queue_shed: u64,
    /// Sessions created on the destination during an aborted move.
    pub created_during_move: u64,
    /// Of which lost (their node was gone or unreachable).
    pub lost_on_abort: u64,
    /// Invariants checked. Always: `terminates` (the move ended within the bounds),
    /// `persist_roundtrip` (the persisted machine deserialises to itself), `single_answer` (no
    /// signal answered twice, or to another client), `answer_order` (a key's answers arrive in
    /// seq order), `ends_done_or_aborted` (`Failed` only with a peer unreachable for good under
    /// control loss or a node crash). With no node crashed: `every_answered` (every admitted
    /// signal answered exactly once), `answer_content` (each answer equals the reference's),
    /// and once Done/Aborted `final_state` (the owner serves and its records equal the
    /// reference's, sessions reported lost on abort excepted), `other_side_dropped`,
    /// `route_settled`. With one node crashed (and no control loss): `survivor_answers` (what
    /// the surviving node was to answer is answered exactly once), and
    /// `source_state_except_created` (destination crash, Aborted: the source equals the
    /// reference but for sessions that went to the destination alone) or `destination_state`
    /// (source crash, Done: the destination equals the reference). With a node restarted:
    /// `restarted_answers` (every answer of a restarted incarnation equals the reference's),
    /// `restart_not_silent` (a move that ends Done/Aborted during which a node restarted leaves
    /// its owner with the reference's sessions: a loss must end the move Failed, never
    /// silently); the reference then holds only the signals whose answering copy reached an
    /// instance. With retransmission and no node crash: `op_answered` (every operation with a
    /// stamped copy is answered at least once). With a stale view: `stale_view_not_done`,
    /// `stale_view_instance_kept` (B still serves every session), `stale_view_route_kept`.
    pub checked: Vec<&'static str>,
    /// Invariants broken.
    pub violations: Vec<Violation>,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end, µs.
    pub end_us: u64,
    /// The last lines of the trace.
    pub trace_tail: Vec<String>,
}

impl SimReport {
    /// `Ok` if no invariant broke; else a message with the seed, the violations, the trace tail
    /// and how to replay it.
    pub fn result(&self) -> Result<(), String> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(self.to_string())
        }
    }

    /// One line: the outcome.
    pub fn summary(&self) -> String {
        format!(
            "seed {} ({}): {:?} via {:?}{}; {} signals, {} ticks, {} shed, {} answers, {} unanswered, {} client timeouts; {} control messages lost, {} controller crash(es){}{}{}{}{}{}; {} events, {} µs",
            self.scenario.seed,
            self.scenario.faults,
            self.phase,
            self.phases,
            self.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            self.signals,
            self.ticks,
            self.shed,
            self.answers,
            self.unanswered,
            self.client_timeouts,
            self.control_lost,
            self.controller_crashes,
            self.destination_crashed
                .map(|p| format!(", destination crashed in {p:?}"))
                .unwrap_or_default(),
            self.source_crashed
                .map(|p| format!(", source crashed in {p:?}"))
                .unwrap_or_default(),
            if self.operator_abort {
                ", operator abort"
            } else {
                ""
            },
            self.steer_crashed
                .map(|p| format!(", steer crashed in {p:?} ({} signals lost, {} answers lost)", self.lost_in_steer_crash, self.answers_lost_in_steer_crash))
                .unwrap_or_default(),
            self.restarted
                .map(|(s, c, _)| format!(", {s:?} restarted with {c:?}"))
                .unwrap_or_default(),
            if self.retransmissions + self.queue_shed > 0 {
                format!(", {} retransmissions, {} queue-shed", self.retransmissions, self.queue_shed)
            } else {
                String::new()
            },
            self.events,
            self.end_us,
        )
    }
}

impl std::fmt::Display for SimReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.summary())?;
        writeln!(f, "scenario: {:?}", self.scenario)?;
        writeln!(f, "checked: {:?}", self.checked)?;
        if !self.violations.is_empty() {
            writeln!(f, "{} violation(s):", self.violations.len())?;
            for v in self.violations.iter().take(20) {
                writeln!(f, "  - {v}")?;
            }
        }
        writeln!(f, "trace tail:")?;
        for l in &self.trace_tail {
            writeln!(f, "  {l}")?;
        }
        write!(
            f,
            "replay: HANDOFF_SIM_SEED={} HANDOFF_SIM_FAULTS={} cargo test -p handoff-sim --test sim -- --ignored replay --nocapture",
            self.scenario.seed, self.scenario.faults
        )
    }
}

/// Runs `seed` under `faults`.
pub fn run(seed: u64, faults: FaultClass) -> SimReport {
    run_scenario(Scenario::new(seed, faults))
}

/// Runs a scenario.
pub fn run_scenario(sc: Scenario) -> SimReport {
    let mut sim = Sim::new(sc);
    sim.go();
    sim.finish()
}

/// Runs every seed of `seeds`, each under [`FaultClass::for_seed`], and returns every
/// violation found (a panic counts as one).
pub fn soak(seeds: Range<u64>) -> Vec<(u64, Violation)> {
    soak_with(seeds, FaultClass::for_seed)
}

/// As [`soak`], every seed under the class `class_of` gives it.
pub fn soak_with(seeds: Range<u64>, class_of: impl Fn(u64) -> FaultClass) -> Vec<(u64, Violation)> {
    let mut out = Vec::new();
    for seed in seeds {
        let class = class_of(seed);
        match std::panic::catch_unwind(|| run(seed, class)) {
            Ok(r) => out.extend(r.violations.into_iter().map(|v| (seed, v))),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                out.push((
                    seed,
                    Violation {
                        invariant: "no_panic",
                        detail: format!("{class}: {msg}"),
                    },
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Constants (virtual time, µs)
// ---------------------------------------------------------------------------------------------

/// The steer injects a tick this often.
const TICK_US: u64 = 5_000;
/// A client gives up on an answer after this long.
const CLIENT_TIMEOUT_US: u64 = 1_000_000;
/// Traffic stops this long after the move ended...
const TRAFFIC_AFTER_END_US: u64 = 20_000;
/// ... or at this time at the latest.
const TRAFFIC_CAP_US: u64 = 5_000_000;
/// A run is cut off (and reported as not ending) past this time...
const MAX_TIME_US: u64 = 900_000_000;
/// ... or this many events.
const MAX_EVENTS: u64 = 5_000_000;
/// A lost control message is noticed (the connection breaks) within this long.
const CONTROL_TIMEOUT_US: u64 = 100_000;
/// The driver's back-off after an unreachable peer: this << attempts (scaled from 200 ms).
const BACKOFF_US: u64 = 10_000;
/// The steer's wait for a destination link (scaled from 10 s).
const DEST_UP_TIMEOUT_US: u64 = 1_000_000;
/// A source's wait for `after_seq` before its copy gives up (scaled from 10 s).
const COPY_WAIT_US: u64 = 2_000_000;
/// How long the steer takes to notice a crashed node's link is down, at most.
const LINK_DETECT_US: u64 = 20_000;
/// Trace lines kept.
const TRACE_LINES: usize = 400;
/// Trace lines a report shows.
const TRACE_TAIL: usize = 80;

const A: usize = 0;
const B: usize = 1;
/// The steer's bind retries back off from this (scaled from 50 ms) ...
const BIND_RETRY_US: u64 = 5_000;
/// ... to at most this (scaled from 2 s).
const BIND_RETRY_MAX_US: u64 = 100_000;
/// How often the steer's core is polled while a command waits on a link.
const STEER_POLL_US: u64 = 5_000;

/// A node's address (as the move's spec names it).
fn node_addr(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n as u8 + 1], 7001))
}

/// The node at a spec's address.
fn node_at(a: SocketAddr) -> usize {
    if a == node_addr(A) {
        A
    } else {
        B
    }
}

/// The address client `c` sends from.
fn client_addr(c: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (c >> 8) as u8, c as u8], 9000))
}

/// The client behind an address (`None`: the steer's own, for ticks).
fn client_of(a: SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v) if v.ip().octets()[..2] == [10, 1] => {
            let o = v.ip().octets();
            Some(usize::from(o[2]) << 8 | usize::from(o[3]))
        }
        _ => None,
    }
}

/// The steer's service address (ticks come from it).
const SERVICE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 0, 0, 9),
    5000,
));

/// The steer's time limits, scaled like the other time-outs.
fn steer_timeouts() -> Timeouts {
    Timeouts {
        link_up_us: DEST_UP_TIMEOUT_US,
    }
}

fn node_name(n: usize) -> &'static str {
    if n == A {
        "A(source)"
    } else {
        "B(destination)"
    }
}

fn side_node(s: Side) -> usize {
    match s {
        Side::Source => A,
        Side::Destination => B,
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ep {
    Client(usize),
    Steer,
    Node(usize),
    Ctl,
}

#[derive(Clone, Debug)]
/// A signal frame on a steer link.
struct Frame {
    /// The frame the steer core stamped.
    frame: SignalFrame,
    /// The steer incarnation that stamped it.
    inc: u32,
    /// The steer link that carried it.
    link: LinkId,
    /// The incarnation of the node it was written to (a frame written to a connection that
    /// died with its node never reaches the node's next incarnation).
    conn: u32,
}

impl std::ops::Deref for Frame {
    type Target = SignalFrame;
    fn deref(&self) -> &SignalFrame {
        &self.frame
    }
}

#[derive(Clone, Copy, Debug)]
struct ReplyTo {
    inc: u32,
    req: u64,
    lose: bool,
    from: Ep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Steer,
    Node(usize),
}

#[derive(Clone, Debug)]
enum PeerMsg {
    Manifest(Vec<Bytes>),
    /// The destination's answer to a manifest.
    Ready(ManifestAnswer),
    Refuse(String),
    Record {
        key: Bytes,
        seq: u64,
        bytes: Option<Bytes>,
    },
    End {
        records: u64,
        digest: Vec<u128>,
    },
    /// The destination's verdict on a round.
    Verdict(CopyVerdict),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ControllerCrash,
    NodeCrash(usize),
    OperatorAbort { request: bool },
    SteerCrash,
}

#[derive(Debug)]
enum Ev {
    ClientSend(usize),
    ClientTimeout(usize, u64),
    Datagram {
        client: usize,
        op: u64,
        payload: Bytes,
    },
    Tick,
    Signal {
        node: usize,
        frame: Frame,
    },
    Output {
        seq: u64,
        client: usize,
        payload: Bytes,
    },
    Answer {
        client: usize,
        seq: u64,
        payload: Bytes,
    },
    Request {
        to: Target,
        action: Action,
        reply: ReplyTo,
    },
    Reply {
        inc: u32,
        req: u64,
        result: Result<Outcome, Failure>,
    },
    Complete {
        inc: u32,
        req: u64,
        result: Result<Outcome, Failure>,
    },
    Step {
        inc: u32,
    },
    SteerPoll {
        inc: u32,
    },
    Peer {
        from: usize,
        to: usize,
        copy: u64,
        msg: PeerMsg,
    },
    CopyStep {
        node: usize,
        copy: u64,
    },
    CopyPeerLost {
        node: usize,
        copy: u64,
    },
    Fault(Fault),
    Restart,
    SteerRestart,
    /// A (restarted) steer's link binds the instance at a node.
    Bind {
        node: usize,
        inc: u32,
        link: LinkId,
        /// The back-off before the next try if this one is refused.
        retry_us: u64,
    },
    /// The node's answer: its last applied seq (`None`: it hosts no instance).
    Bound {
        node: usize,
        inc: u32,
        link: LinkId,
        last_seq: Option<u64>,
        retry_us: u64,
    },
    LinkDown(usize),
    StopTraffic,
    /// A crashed node comes back (see [`Restart`]).
    NodeRestart(usize),
    /// A client's operation `op` got no answer yet: it sends the datagram again (try `tries`).
    Retransmit {
        client: usize,
        op: u64,
        tries: u32,
    },
}

struct Scheduled {
    at: u64,
    id: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.id) == (o.at, o.id)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Reversed: the heap pops the earliest (then the first scheduled).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.id).cmp(&(self.at, self.id))
    }
}

// ---------------------------------------------------------------------------------------------
// Actors
// ---------------------------------------------------------------------------------------------

struct Client {
    key_id: u8,
    /// The operation waited for.
    outstanding: Option<u64>,
    ops: u64,
}

/// One stamped signal, as the reference replays it.
struct Admitted {
    seq: u64,
    now_us: u64,
    kind: SignalKind,
    key: Bytes,
    payload: Bytes,
    client: Option<(usize, u64)>,
    delivery: Delivery,
    /// The node whose outputs reach the client.
    auth: usize,
}

/// The steer: the real service core ([`ServiceCore`]) and what the simulation adds around it
/// (its runs, the cut of a crash, its route file, its links).
struct Steer {
    core: ServiceCore<ReplyTo>,
    /// Move requests the core has not answered yet: their action and request (a crash breaks
    /// their connections).
    asked: BTreeMap<(u32, u64), (Action, SteerRequest)>,
    /// Whether it runs.
    alive: bool,
    /// Its run (incremented by a restart).
    inc: u32,
    /// Per run: the last seq whose frames were written out (the rest died with the run).
    cuts: Vec<u64>,
    /// What the route file says.
    disk: KeptRoute,
    /// The links the core opened, and the node each goes to.
    links: BTreeMap<LinkId, usize>,
    /// A poll of the core is scheduled.
    poll_due: bool,
    /// The highest seq of this run a node has received.
    delivered: u64,
}

/// A copy's source: the real copy sender ([`CopySender`]) and the step it waits on.
struct CopyTask {
    to: usize,
    lead_us: u64,
    reply: ReplyTo,
    core: CopySender,
    /// What the task does next (`None`: it waits for the destination's answer).
    step: Option<SenderStep>,
    /// When the current wait for an applied seq began.
    waiting_since: u64,
    log: Option<DeletionLog>,
    sessions: u64,
    /// Its connection to the destination is open (the manifest went out).
    connected: bool,
    /// The round being streamed: its keys, those skipped, the next index, its digest.
    round: Option<(Vec<Bytes>, HashSet<Bytes>, usize, Outgoing)>,
    rounds_streamed: usize,
}

/// The connection an output goes back on: the steer run and the node incarnation it joins
/// (an output for a connection that died with either is lost).
type Conn = (u32, u32);

/// A node: the real instance core ([`InstanceCore`]; its reply target is the steer run whose
/// connection a signal came on) and the copies it runs.
struct Node {
    alive: bool,
    /// Its incarnation (a restart starts the next one).
    inc: u32,
    inst: Option<InstanceCore<Conn>>,
    copies: BTreeMap<u64, CopyTask>,
    /// The destination's side of each copy connection: the real copy receiver.
    incoming: BTreeMap<(usize, u64), CopyReceiver>,
    /// The instance's binding for each steer link that bound it (frames of a link bound
    /// before another are fenced off by the core).
    bindings: BTreeMap<(u32, LinkId), u64>,
}

struct Controller {
    m: MoveMachine,
    stored: String,
    inc: u32,
    alive: bool,
    waiting: Option<(u64, Action)>,
    next_req: u64,
    operator: Option<String>,
    ended: bool,
}

// ---------------------------------------------------------------------------------------------
// The simulation
// ---------------------------------------------------------------------------------------------

struct Sim {
    sc: Scenario,
    rng: SmallRng,
    now: u64,
    next_id: u64,
    events: u64,
    queue: BinaryHeap<Scheduled>,
    fifo: BTreeMap<(Ep, Ep), u64>,
    func: Arc<SimCounter>,
    clients: Vec<Client>,
    steer: Steer,
    nodes: [Node; 2],
    ctl: Controller,
    log: Vec<Admitted>,
    ticks: u64,
    shed: u64,
    client_timeouts: u64,
    control_lost: u64,
    answers: BTreeMap<u64, Vec<(usize, Bytes)>>,
    key_last_answer: BTreeMap<(Bytes, usize), u64>,
    violations: Vec<Violation>,
    trace: VecDeque<String>,
    traffic: bool,
    cut_off: bool,
    actions_started: u32,
    fired: BTreeSet<(u8, usize)>,
    controller_crashes: u32,
    destination_crashed: Option<Phase>,
    source_crashed: Option<Phase>,
    operator_abort: bool,
    steer_crashed: Option<Phase>,
    lost_in_steer_crash: u64,
    lost_answers: BTreeSet<u64>,
    phases: Vec<Phase>,
    next_copy: u64,
    checked: Vec<&'static str>,
    /// What the faults added with node restarts, retransmission, queue limits, split steer
    /// crashes and stale views keep (see `faults`).
    ext: faults::Extra,
}

impl Sim {
    fn new(sc: Scenario) -> Self {
        let func = Arc::new(SimCounter);
        let spec = MoveSpec {
            id: 1,
            instance: "counter-1".into(),
            function: "sim-counter".into(),
            source: "10.0.0.1:7001".parse().expect("literal address"),
            destination: "10.0.0.2:7001".parse().expect("literal address"),
            steer: "10.0.0.9:7000".parse().expect("literal address"),
            order: sc.order,
            plan: CopyPlan::default(),
            abort_safe: sc.abort_safe,
            lead_ms: sc.lead_ms,
        };
        let m = MoveMachine::new(spec, sc.warmup_us / 1000).expect("a valid spec");
        let rng = SmallRng::seed_from_u64(sc.seed);
        let clients = (0..sc.keys)
            .map(|i| Client {
                key_id: (i + 1) as u8,
                outstanding: None,
                ops: 0,
            })
            .collect();
        let node = |inst: Option<InstanceCore<Conn>>| Node {
            alive: true,
            inc: 0,
            inst,
            copies: BTreeMap::new(),
            incoming: BTreeMap::new(),
            bindings: BTreeMap::new(),
        };
        let source = InstanceCore::new(Box::new(Hosting::new(func.clone())));
        // A stale view: an earlier move put the instance on B, where the steer routes it.
        let (serving, nodes) = if sc.stale_view {
            (B, [node(None), node(Some(source))])
        } else {
            (A, [node(Some(source)), node(None)])
        };
        let mut sim = Self {
            rng,
            now: 0,
            next_id: 0,
            events: 0,
            queue: BinaryHeap::new(),
            fifo: BTreeMap::new(),
            func,
            clients,
            steer: Steer {
                core: ServiceCore::new(
                    "counter-1",
                    node_addr(serving),
                    Kept::Nothing,
                    steer_timeouts(),
                ),
                asked: BTreeMap::new(),
                alive: true,
                inc: 0,
                cuts: vec![u64::MAX],
                disk: KeptRoute {
                    node: node_addr(serving),
                    phase: RoutePhase::Serving,
                    floor: 0,
                },
                links: BTreeMap::new(),
                poll_due: false,
                delivered: 0,
            },
            nodes,
            ctl: Controller {
                stored: String::new(),
                m,
                inc: 0,
                alive: true,
                waiting: None,
                next_req: 0,
                operator: None,
                ended: false,
            },
            log: Vec::new(),
            ticks: 0,
            shed: 0,
            client_timeouts: 0,
            control_lost: 0,
            answers: BTreeMap::new(),
            key_last_answer: BTreeMap::new(),
            violations: Vec::new(),
            trace: VecDeque::new(),
            traffic: true,
            cut_off: false,
            actions_started: 0,
            fired: BTreeSet::new(),
            controller_crashes: 0,
            destination_crashed: None,
            source_crashed: None,
            operator_abort: false,
            steer_crashed: None,
            lost_in_steer_crash: 0,
            lost_answers: BTreeSet::new(),
            phases: Vec::new(),
            next_copy: 0,
            checked: Vec::new(),
            ext: faults::Extra::default(),
            sc,
        };
        // The first run's source link is bound from the start (the node has applied nothing).
        for e in sim.steer.core.take_effects() {
            if let Effect::OpenLink { id, node } = e {
                sim.steer.links.insert(id, node_at(node));
                let n = node_at(node);
                if let Some((binding, last_seq)) = sim.nodes[n].inst.as_mut().map(|i| i.bind()) {
                    sim.nodes[n].bindings.insert((0, id), binding);
                    sim.steer.core.link_up(id, last_seq);
                }
            }
        }
        sim.phases.push(sim.ctl.m.phase);
        sim.persist();
        for c in 0..sim.clients.len() {
            let at = sim.rng.gen_range(0..sim.sc.warmup_us / 2);
            sim.at(at, Ev::ClientSend(c));
        }
        sim.at(TICK_US, Ev::Tick);
        sim.at(sim.sc.warmup_us, Ev::Step { inc: 0 });
        sim
    }

    // --- plumbing ---------------------------------------------------------------------------

    fn at(&mut self, at: u64, ev: Ev) {
        self.next_id += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            id: self.next_id,
            ev,
        });
    }

    fn delay(&mut self) -> u64 {
        if self.sc.jitter {
            match self.rng.gen_range(0..100) {
                0 => self.rng.gen_range(10_000..50_000),
                1..=9 => self.rng.gen_range(1_000..10_000),
                _ => self.rng.gen_range(20..1_000),
            }
        } else {
            self.rng.gen_range(50..300)
        }
    }

    /// When a message sent now from `from` to `to` arrives: TCP-like, never before the
    /// previous one on the same link.
    fn link(&mut self, from: Ep, to: Ep) -> u64 {
        let d = self.delay();
        let last = self.fifo.get(&(from, to)).copied().unwrap_or(0);
        let t = last.max(self.now + d);
        self.fifo.insert((from, to), t);
        t
    }

    fn trace(&mut self, line: String) {
        // A verbose run keeps (and reports) its whole trace.
        if self.trace.len() >= TRACE_LINES && !self.sc.verbose {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>10}us {line}", self.now));
    }

    fn verbose(&mut self, line: impl FnOnce() -> String) {
        if self.sc.verbose {
            let l = line();
            self.trace(l);
        }
    }

    fn violation(&mut self, invariant: &'static str, detail: String) {
        self.trace(format!("VIOLATION {invariant}: {detail}"));
        if self.violations.len() < 200 {
            self.violations.push(Violation { invariant, detail });
        }
    }

    fn now_ms(&self) -> u64 {
        self.now / 1000
    }

    // --- main loop --------------------------------------------------------------------------

    fn go(&mut self) {
        while let Some(s) = self.queue.pop() {
            if self.events >= MAX_EVENTS || s.at > MAX_TIME_US {
                self.cut_off = true;
                self.trace(format!(
                    "run cut off after {} events at {} µs",
                    self.events, s.at
                ));
                break;
            }
            self.now = s.at;
            self.events += 1;
            self.handle(s.ev);
        }
    }

    fn handle(&mut self, ev: Ev) {
        if self.traffic && self.now >= TRAFFIC_CAP_US {
            self.traffic = false;
            self.trace("traffic stops (cap)".into());
        }
        match ev {
            Ev::ClientSend(c) => self.client_send(c),
            Ev::ClientTimeout(c, op) => {
                if self.clients[c].outstanding == Some(op) {
                    self.clients[c].outstanding = None;
                    self.client_timeouts += 1;
                    self.verbose(|| format!("client {c} gave up on op {op}"));
                    self.next_op(c);
                }
            }
            Ev::Datagram {
                client,
                op,
                payload,
            } => self.datagram(client, op, payload),
            Ev::Tick => {
                if self.traffic {
                    self.admit(SignalKind::Tick, Bytes::new(), Bytes::new(), None);
                    self.at(self.now + TICK_US, Ev::Tick);
                }
            }
            Ev::Signal { node, frame } => self.node_signal(node, frame),
            Ev::Output {
                seq,
                client,
                payload,
            } => {
                if !self.steer.alive {
                    // The node's connection to the crashed steer is gone with its output.
                    self.lost_answers.insert(seq);
                    self.verbose(|| format!("steer down: answer of seq {seq} lost"));
                    return;
                }
                let at = self.link(Ep::Steer, Ep::Client(client));
                self.at(
                    at,
                    Ev::Answer {
                        client,
                        seq,
                        payload,
                    },
                );
            }
            Ev::Answer {
                client,
                seq,
                payload,
            } => self.answer(client, seq, payload),
            Ev::Request { to, action, reply } => match to {
                Target::Steer => self.steer_request(action, reply),
                Target::Node(n) => self.node_request(n, action, reply),
            },
            Ev::Reply { inc, req, result } => self.ctl_reply(inc, req, result),
            Ev::Complete { inc, req, result } => self.ctl_complete(inc, req, result),
            Ev::Step { inc } => self.ctl_step(inc),
            Ev::SteerPoll { inc } => {
                if inc == self.steer.inc && self.steer.alive {
                    self.steer.poll_due = false;
                    self.steer.core.poll(self.now, |_| usize::MAX);
                    self.steer_effects();
                }
            }
            Ev::Peer {
                from,
                to,
                copy,
                msg,
            } => self.peer(from, to, copy, msg),
            Ev::CopyStep { node, copy } => {
                let streaming = self.nodes[node]
                    .copies
                    .get(&copy)
                    .is_some_and(|t| t.round.is_some());
                if streaming {
                    self.copy_record(node, copy);
                } else {
                    self.copy_step(node, copy);
                }
            }
            Ev::CopyPeerLost { node, copy } => {
                let live = self.nodes[node]
                    .copies
                    .get(&copy)
                    .is_some_and(|t| t.connected);
                if live {
                    self.copy_fail(node, copy, "the destination connection broke".into());
                }
            }
            Ev::Fault(f) => self.fault(f),
            Ev::Restart => self.ctl_restart(),
            Ev::SteerRestart => self.steer_restart(),
            Ev::Bind {
                node,
                inc,
                link,
                retry_us,
            } => self.node_bind(node, inc, link, retry_us),
            Ev::Bound {
                node,
                inc,
                link,
                last_seq,
                retry_us,
            } => self.steer_bound(node, inc, link, last_seq, retry_us),
            Ev::LinkDown(n) => {
                let ids: Vec<LinkId> = (self.steer.links.iter())
                    .filter(|(_, to)| **to == n)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.steer.core.link_down(id);
                }
                self.trace(format!("steer: link to {} is down", node_name(n)));
            }
            Ev::StopTraffic => {
                if self.traffic {
                    self.traffic = false;
                    self.trace("traffic stops".into());
                }
            }
            Ev::NodeRestart(n) => self.node_restart(n),
            Ev::Retransmit { client, op, tries } => self.retransmit(client, op, tries),
        }
    }

    // --- clients ----------------------------------------------------------------------------

    fn next_op(&mut self, c: usize) {
        let think = if self.rng.gen_bool(0.1) {
            self.rng.gen_range(30_000..120_000)
        } else {
            self.rng.gen_range(0..12_000)
        };
        self.at(self.now + think, Ev::ClientSend(c));
    }

    fn client_send(&mut self, c: usize) {
        if !self.traffic || self.clients[c].outstanding.is_some() {
            return;
        }
        let op = if self.clients[c].ops == 0 {
            OP_CREATE
        } else {
            match self.rng.gen_range(0..100) {
                0..=17 => OP_CREATE,
                18..=75 => OP_UPDATE,
                76..=84 => OP_DELETE,
                _ => OP_PING,
            }
        };
        let cl = &mut self.clients[c];
        cl.ops += 1;
        let n = cl.ops;
        cl.outstanding = Some(n);
        let payload = Bytes::copy_from_slice(&[op, cl.key_id]);
        let at = self.link(Ep::Client(c), Ep::Steer);
        self.at(
            at,
            Ev::Datagram {
                client: c,
                op: n,
                payload: payload.clone(),
            },
        );
        self.at(self.now + CLIENT_TIMEOUT_US, Ev::ClientTimeout(c, n));
        self.arm_retransmit(c, n, 0, payload);
    }

    fn answer(&mut self, client: usize, seq: u64, payload: Bytes) {
        let entry = self.answers.entry(seq).or_default();
        entry.push((client, payload));
        let twice = entry.len() > 1;
        if twice {
            self.violation(
                "single_answer",
                format!("seq {seq} answered again (client {client})"),
            );
        }
        // Seqs are dense but for a split steer crash's gap: look the seq up.
        let found = self.log.binary_search_by_key(&seq, |a| a.seq).ok();
        let Some(adm) = found.and_then(|i| self.log.get(i)) else {
            self.violation(
                "single_answer",
                format!("answer for seq {seq}, never admitted"),
            );
            return;
        };
        let (kind, key, auth) = (adm.kind, adm.key.clone(), adm.auth);
        let (owner, op) = match adm.client {
            Some(c) => c,
            None => {
                self.violation("single_answer", format!("answer for tick seq {seq}"));
                return;
            }
        };
        if owner != client {
            self.violation(
                "single_answer",
                format!("seq {seq} of client {owner} answered to client {client}"),
            );
        }
        if kind != SignalKind::Stateless {
            // A retransmitting client has several signals of a key in flight: only the answers
            // of one node (one connection) keep their order.
            let via = if self.sc.retransmit.is_some() {
                auth
            } else {
                0
            };
            let last = self.key_last_answer.entry((key.clone(), via)).or_default();
            if seq <= *last && !twice {
                let l = *last;
                self.violation(
                    "answer_order",
                    format!("key {key:?}: answer for seq {seq} after one for seq {l}"),
                );
            } else {
                *last = seq;
            }
        }
        if self.clients[owner].outstanding == Some(op) {
            self.clients[owner].outstanding = None;
            self.next_op(owner);
        }
    }

    // --- steer ------------------------------------------------------------------------------

    fn datagram(&mut self, client: usize, op: u64, payload: Bytes) {
        match Function::classify(self.func.as_ref(), &payload) {
            Ok(c) => self.admit(c.kind, c.key, payload, Some((client, op))),
            Err(e) => self.violation("classify", format!("client {client}: {e}")),
        }
    }

    /// One signal at the steer: the real service core stamps and routes it.
    fn admit(
        &mut self,
        kind: SignalKind,
        key: Bytes,
        payload: Bytes,
        client: Option<(usize, u64)>,
    ) {
        if !self.steer.alive {
            if kind != SignalKind::Tick {
                self.lost_in_steer_crash += 1;
            }
            return;
        }
        let inbound = Inbound {
            kind,
            key: key.clone(),
            payload: payload.clone(),
            client: client.map_or(SERVICE, |c| client_addr(c.0)),
        };
        // Links have room unless the scenario bounds their queues.
        let full = self.full_links();
        let admission = self
            .steer
            .core
            .admit(inbound, self.now, |l| !full.contains(&l));
        let (seq, delivery, frames) = match admission {
            Admission::Routed {
                seq,
                delivery,
                frames,
            } => (seq, delivery, frames),
            Admission::Dropped(why) => {
                if kind != SignalKind::Tick {
                    if why == Dropped::Unrouted {
                        // Restarted during a move and its route not installed again.
                        self.lost_in_steer_crash += 1;
                    } else {
                        self.shed += 1;
                        if why == Dropped::Shed {
                            self.ext.queue_shed += 1;
                        }
                    }
                    self.verbose(|| format!("steer: {kind:?} {key:?} dropped: {why:?}"));
                }
                return;
            }
            Admission::Held { seq } => {
                self.violation(
                    "steer_hold",
                    format!("seq {seq} held: no hold was asked for"),
                );
                return;
            }
        };
        if self.log.last().is_some_and(|a| a.seq >= seq) {
            self.violation(
                "seq_reuse",
                format!("seq {seq} stamped again after a steer restart"),
            );
        }
        let inc = self.steer.inc;
        let mut auth = A;
        for (link, f) in frames {
            let Some(&node) = self.steer.links.get(&link) else {
                self.violation(
                    "steer_link",
                    format!("seq {seq} routed to unknown {link:?}"),
                );
                continue;
            };
            if f.flags == 0 {
                auth = node;
            }
            let frame = Frame {
                frame: f,
                inc,
                link,
                conn: self.nodes[node].inc,
            };
            self.send_signal(node, frame);
        }
        if kind == SignalKind::Tick {
            self.ticks += 1;
        }
        self.verbose(|| {
            format!("steer: seq {seq} {kind:?} {key:?} client {client:?} → {delivery:?}")
        });
        self.log.push(Admitted {
            seq,
            now_us: self.now,
            kind,
            key,
            payload,
            client,
            delivery,
            auth,
        });
    }

    fn send_signal(&mut self, node: usize, frame: Frame) {
        let at = self.link(Ep::Steer, Ep::Node(node));
        self.queued(frame.link, at);
        self.at(at, Ev::Signal { node, frame });
    }

    /// A move request at the steer: the request the driver sends for `action`
    /// ([`request_for`]), carried out by the real service core.
    fn steer_request(&mut self, action: Action, reply: ReplyTo) {
        if !self.steer.alive {
            let d = self.rng.gen_range(100..3_000);
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: reply.inc,
                    req: reply.req,
                    result: Err(Failure::Unreachable("the steer is down".into())),
                },
            );
            return;
        }
        let req = match request_for(&self.ctl.m.spec, &action) {
            Request::Steer(r) => r,
            other => {
                let why = format!("not a steer request: {other:?}");
                self.reply(reply, Err(Failure::Refused(why)));
                return;
            }
        };
        let Some((_, command)) = req.command() else {
            self.reply(
                reply,
                Err(Failure::Refused("status is no move request".into())),
            );
            return;
        };
        self.steer
            .asked
            .insert((reply.inc, reply.req), (action, req.clone()));
        self.steer.core.command(command, reply, self.now);
        self.steer_effects();
    }

    /// Carries out the steer core's effects.
    fn steer_effects(&mut self) {
        for e in self.steer.core.take_effects() {
            match e {
                Effect::Reply(to, r) => self.steer_answer(to, r),
                Effect::OpenLink { id, node } => {
                    let n = node_at(node);
                    self.steer.links.insert(id, n);
                    self.steer_bind(n, id, BIND_RETRY_US);
                }
                Effect::CloseLink(id) | Effect::RetireLink(id) => {
                    // Frames already on their way still arrive (FIFO links).
                    self.steer.links.remove(&id);
                }
                Effect::PersistRoute(k) => self.steer.disk = k,
                Effect::Send(id, f) => {
                    self.violation("steer_hold", format!("held seq {} sent on {id:?}", f.seq));
                }
            }
        }
        if self.steer.core.needs_poll() && !self.steer.poll_due {
            self.steer.poll_due = true;
            let inc = self.steer.inc;
            self.at(self.now + STEER_POLL_US, Ev::SteerPoll { inc });
        }
    }

    /// The steer core's answer, as its control listener sends it and the driver reads it.
    fn steer_answer(&mut self, to: ReplyTo, r: Result<Answer, CommandError>) {
        let Some((action, req)) = self.steer.asked.remove(&(to.inc, to.req)) else {
            self.violation("steer_answer", format!("answer to unknown request {to:?}"));
            return;
        };
        let result = match r {
            Ok(answer) => match reply_body(&req, answer, u64::from(self.steer.inc)) {
                Some(v) => outcome_of(&self.ctl.m.spec, &action, v),
                None => Err(Failure::Refused(format!("answer out of turn to {req:?}"))),
            },
            Err(e) => Err(refusal(e.code(), &e.to_string())),
        };
        let line = format!(
            "steer: answers {action:?} → {result:?} (route {})",
            self.steer.core.phase()
        );
        self.trace(line);
        self.reply(to, result);
    }

    /// The steer's link `link` binds the instance at node `n`.
    fn steer_bind(&mut self, n: usize, link: LinkId, retry_us: u64) {
        let inc = self.steer.inc;
        let at = self.link(Ep::Steer, Ep::Node(n));
        self.at(
            at,
            Ev::Bind {
                node: n,
                inc,
                link,
                retry_us,
            },
        );
    }

    // --- nodes: signals ---------------------------------------------------------------------

    /// One signal at a node: the real instance core applies it.
    fn node_signal(&mut self, n: usize, s: Frame) {
        if s.seq > self.steer.cuts[s.inc as usize] && !self.written_by_split(n, &s) {
            // Still in the crashed steer's queues: never written out.
            self.verbose(|| format!("{}: seq {} died with the steer", node_name(n), s.seq));
            return;
        }
        if s.conn != self.nodes[n].inc || !self.nodes[n].alive {
            // Written to a connection that died with the node.
            self.verbose(|| format!("{}: seq {} died with its connection", node_name(n), s.seq));
            return;
        }
        if s.inc == self.steer.inc {
            self.steer.delivered = self.steer.delivered.max(s.seq);
        }
        let node = &mut self.nodes[n];
        if !node.alive {
            return;
        }
        // A link this node never bound cannot carry signals (the steer routes only to bound
        // links); should one, the core fences it off.
        let binding = node
            .bindings
            .get(&(s.inc, s.link))
            .copied()
            .unwrap_or(u64::MAX);
        let conn = (s.inc, node.inc);
        let Some(inst) = node.inst.as_mut() else {
            self.verbose(|| format!("{}: seq {} for no instance", node_name(n), s.seq));
            return;
        };
        let before = inst.stats();
        let mut out = Vec::new();
        inst.signals(
            Some(binding),
            std::slice::from_ref(&s.frame),
            &conn,
            &mut out,
        );
        let after = inst.stats();
        if s.flags == 0 && after.fenced == before.fenced {
            self.ext.reached.insert(s.seq);
        }
        if after.fenced > before.fenced {
            self.trace(format!(
                "{}: seq {} of an earlier steer binding fenced off",
                node_name(n),
                s.seq
            ));
        } else if after.move_errors > before.move_errors {
            self.trace(format!("{}: move error on seq {}", node_name(n), s.seq));
        } else if self.sc.verbose {
            let line = format!(
                "{}: applies seq {} {:?} {:?} flags {} ({} outputs, handovers {})",
                node_name(n),
                s.seq,
                s.kind,
                s.key,
                s.flags,
                out.len(),
                after.handovers
            );
            self.trace(line);
        }
        self.emit(n, out);
    }

    /// Outputs of node `n` on their way to the steer run whose connection they belong to.
    fn emit(&mut self, n: usize, out: Vec<Emit<Conn>>) {
        for e in out {
            let Some(client) = client_of(e.client) else {
                continue;
            };
            if e.to != (self.steer.inc, self.nodes[n].inc) {
                // That connection died with the steer run or the node: so did the answer.
                self.lost_answers.insert(e.seq);
                continue;
            }
            if self.nodes[n].inc > 0 {
                self.ext.answered_after_restart.insert(e.seq);
            }
            let at = self.link(Ep::Node(n), Ep::Steer);
            self.at(
                at,
                Ev::Output {
                    seq: e.seq,
                    client,
                    payload: e.payload,
                },
            );
        }
    }

    // --- nodes: admin -----------------------------------------------------------------------

    fn reply(&mut self, to: ReplyTo, result: Result<Outcome, Failure>) {
        if to.lose {
            let d = self.rng.gen_range(1..CONTROL_TIMEOUT_US);
            self.control_lost += 1;
            self.trace(format!("control: reply to request {} lost", to.req));
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: to.inc,
                    req: to.req,
                    result: Err(Failure::Unreachable("the connection broke".into())),
                },
            );
        } else {
            let at = self.link(to.from, Ep::Ctl);
            self.at(
                at,
                Ev::Reply {
                    inc: to.inc,
                    req: to.req,
                    result,
                },
            );
        }
    }

    fn node_request(&mut self, n: usize, action: Action, reply: ReplyTo) {
        if !self.nodes[n].alive {
            let d = self.rng.gen_range(100..3_000);
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: reply.inc,
                    req: reply.req,
                    result: Err(Failure::Unreachable(format!("{} is down", node_name(n)))),
                },
            );
            return;
        }
        let func = self.func.clone();
        let unknown = || {
            Err((
                code::UNKNOWN_INSTANCE,
                "instance counter-1 is not hosted here".into(),
            ))
        };
        let step = |r: Result<(), MoveStepError>, ok: serde_json::Value| {
            r.map(|()| ok)
                .map_err(|e| (code::WRONG_FRAME, e.to_string()))
        };
        let mut out = Vec::new();
        let node = &mut self.nodes[n];
        // The node's answer body, as its admin listener sends it (the driver reads it).
        let body: Result<serde_json::Value, (u16, String)> = match &action {
            Action::PrepareShadow => {
                let inst = node
                    .inst
                    .get_or_insert_with(|| InstanceCore::new(Box::new(Hosting::new(func))));
                step(inst.prepare_shadow(), json!({ "prepared": "counter-1" }))
            }
            Action::ShadowStats { .. } => match &node.inst {
                Some(i) => Ok(json!(i.shadow_stats())),
                None => unknown(),
            },
            Action::AppliedSeq { .. } => match &node.inst {
                Some(i) => Ok(json!({ "instances": [{
                    "instance": "counter-1",
                    "stats": i.stats(),
                }] })),
                None => unknown(),
            },
            Action::CreatedKeys { .. } => match &node.inst {
                Some(i) => match i.created_keys() {
                    Some(keys) => Ok(json!({ "created": keys_to_hex(&keys) })),
                    None => Err((code::BAD_REQUEST, "too many sessions created".into())),
                },
                None => unknown(),
            },
            Action::FinishShadow { force, .. } => match node.inst.as_mut() {
                Some(i) => step(
                    i.finish_shadow(*force, &mut out),
                    json!({ "serving": "counter-1" }),
                ),
                None => unknown(),
            },
            Action::DropInstance { .. } => match node.inst.take() {
                Some(_) => Ok(json!({ "dropped": "counter-1" })),
                None => unknown(),
            },
            Action::ExpectSessions { keys } => match node.inst.as_mut() {
                Some(i) => step(
                    i.expect_records(keys.clone()),
                    json!({ "expecting": keys.len() }),
                ),
                None => unknown(),
            },
            Action::Copy {
                from,
                keys,
                after_seq,
                lead_ms,
            } => {
                let to = side_node(match from {
                    Side::Source => Side::Destination,
                    Side::Destination => Side::Source,
                });
                self.next_copy += 1;
                let id = self.next_copy;
                let (core, step) = CopySender::new(*after_seq, keys.clone());
                self.nodes[n].copies.insert(
                    id,
                    CopyTask {
                        to,
                        lead_us: lead_ms.min(&handoff_state::MAX_LEAD_MS) * 1000,
                        reply,
                        core,
                        step: Some(step),
                        waiting_since: self.now,
                        log: None,
                        sessions: 0,
                        connected: false,
                        round: None,
                        rounds_streamed: 0,
                    },
                );
                self.trace(format!(
                    "{}: copy {id} to {} starts (keys {:?}, after seq {after_seq})",
                    node_name(n),
                    node_name(to),
                    keys.as_ref().map(Vec::len)
                ));
                self.copy_step(n, id);
                return;
            }
            other => Err((code::BAD_REQUEST, format!("not a node request: {other:?}"))),
        };
        self.emit(n, out);
        let r = match body {
            Ok(v) => outcome_of(&self.ctl.m.spec, &action, v),
            Err((c, m)) => Err(refusal(c, &m)),
        };
        self.trace(format!("{}: {action:?} → {r:?}", node_name(n)));
        self.reply(reply, r);
    }

    // --- nodes: copy ------------------------------------------------------------------------

    fn send_peer(&mut self, from: usize, to: usize, copy: u64, msg: PeerMsg) {
        let at = self.link(Ep::Node(from), Ep::Node(to));
        self.at(
            at,
            Ev::Peer {
                from,
                to,
                copy,
                msg,
            },
        );
    }

    fn copy_fail(&mut self, n: usize, id: u64, why: String) {
        let Some(task) = self.nodes[n].copies.remove(&id) else {
            return;
        };
        if let (Some(log), Some(i)) = (&task.log, self.nodes[n].inst.as_mut()) {
            i.end_source_copy(log);
        }
        self.trace(format!("{}: copy {id} fails: {why}", node_name(n)));
        self.reply(task.reply, Err(Failure::Refused(why)));
    }

    /// A copy waiting for its source to apply a seq: fails with `why` once `overdue`,
    /// otherwise looks again in a millisecond (as `handoff_node::copy::wait_applied` does).
    fn copy_wait(&mut self, n: usize, id: u64, overdue: bool, why: String) {
        if overdue {
            self.copy_fail(n, id, why);
        } else {
            self.at(self.now + 1_000, Ev::CopyStep { node: n, copy: id });
        }
    }

    /// The source side of a copy, one step at a time: the real copy sender decides, this
    /// carries out its steps as `handoff_node::copy::copy_to` does.
    fn copy_step(&mut self, n: usize, id: u64) {
        if !self.nodes[n].alive {
            return;
        }
        let now = self.now;
        let order = self.sc.order;
        let Some(task) = self.nodes[n].copies.get_mut(&id) else {
            return;
        };
        let Some(inst) = self.nodes[n].inst.as_mut() else {
            self.copy_fail(n, id, "unknown instance counter-1".into());
            return;
        };
        let to = task.to;
        let step = match task.step.take() {
            Some(SenderStep::WaitApplied(seq)) => {
                let applied = inst.stats().runtime.last_seq;
                if applied < seq {
                    task.step = Some(SenderStep::WaitApplied(seq));
                    let overdue = now - task.waiting_since > COPY_WAIT_US;
                    let why = format!("the source never applied seq {seq} (at {applied})");
                    self.copy_wait(n, id, overdue, why);
                    return;
                }
                match task.core.applied() {
                    Ok(s) => s,
                    Err(e) => return self.copy_fail(n, id, e.to_string()),
                }
            }
            Some(other) => other,
            None => return,
        };
        match step {
            SenderStep::TakeManifest => {
                let log = DeletionLog::default();
                if let Err(e) = inst.begin_source_copy(log.clone(), !task.core.subset()) {
                    return self.copy_fail(n, id, e.to_string());
                }
                task.log = Some(log);
                let keys = if task.core.subset() {
                    task.core.keys().to_vec()
                } else {
                    handoff_state::manifest(inst.hosted().table(), order, now).keys
                };
                task.sessions = keys.len() as u64;
                let applied = inst.stats().runtime.last_seq;
                self.trace(format!(
                    "{}: copy {id} manifest of {} keys at seq {applied}",
                    node_name(n),
                    keys.len()
                ));
                let task = self.nodes[n].copies.get_mut(&id).expect("present");
                match task.core.manifest(keys) {
                    Ok(step) => {
                        task.step = Some(step);
                        self.copy_step(n, id);
                    }
                    Err(e) => self.copy_fail(n, id, e.to_string()),
                }
            }
            SenderStep::SendManifest(keys) => {
                if !self.nodes[to].alive {
                    return self.copy_fail(n, id, format!("{}: connection refused", node_name(to)));
                }
                task.connected = true;
                self.send_peer(n, to, id, PeerMsg::Manifest(keys));
            }
            SenderStep::Stream { keys, skip } => {
                let first = task.rounds_streamed == 0;
                task.round = Some((keys, skip, 0, task.core.outgoing()));
                let lead = if first { task.lead_us } else { 0 };
                self.at(now + lead, Ev::CopyStep { node: n, copy: id });
            }
            SenderStep::Done => self.copy_done(n, id),
            SenderStep::WaitApplied(_) => unreachable!("handled above"),
        }
    }

    /// Streams the next record of the current round (or its end).
    fn copy_record(&mut self, n: usize, id: u64) {
        let now = self.now;
        let Some(task) = self.nodes[n].copies.get_mut(&id) else {
            return;
        };
        let Some(inst) = self.nodes[n].inst.as_mut() else {
            return self.copy_fail(n, id, "unknown instance counter-1".into());
        };
        let to = task.to;
        let Some((keys, skip, next, out)) = task.round.as_mut() else {
            return;
        };
        while *next < keys.len() && skip.contains(&keys[*next]) {
            *next += 1;
        }
        if *next >= keys.len() {
            let Some((_, skip, _, out)) = task.round.take() else {
                return;
            };
            let (sent, digest) = out.end();
            task.rounds_streamed += 1;
            if let Err(e) = task.core.streamed(sent, skip.len()) {
                return self.copy_fail(n, id, e.to_string());
            }
            let msg = PeerMsg::End {
                records: sent.records,
                digest,
            };
            self.send_peer(n, to, id, msg);
            return;
        }
        let key = keys[*next].clone();
        *next += 1;
        let msg = match inst.hosted().table().get(&key) {
            Some(r) => {
                out.record(&key, r.seq, &r.bytes);
                PeerMsg::Record {
                    key,
                    seq: r.seq,
                    bytes: Some(r.bytes),
                }
            }
            None => {
                let log = task.log.clone().unwrap_or_default();
                match out.tombstone(&key, &log) {
                    Ok(seq) => PeerMsg::Record {
                        key,
                        seq,
                        bytes: None,
                    },
                    Err(e) => return self.copy_fail(n, id, e.to_string()),
                }
            }
        };
        if self.sc.verbose {
            let line = format!("{}: copy {id} sends {msg:?}", node_name(n));
            self.trace(line);
        }
        self.send_peer(n, to, id, msg);
        let pace = if self.rng.gen_bool(0.3) {
            0
        } else {
            self.rng.gen_range(50..1_500)
        };
        self.at(now + pace, Ev::CopyStep { node: n, copy: id });
    }

    /// A copy ended: its report, as the node sends it, read by the driver.
    fn copy_done(&mut self, n: usize, id: u64) {
        let Some(task) = self.nodes[n].copies.remove(&id) else {
            return;
        };
        if let (Some(log), Some(i)) = (&task.log, self.nodes[n].inst.as_mut()) {
            i.end_source_copy(log);
        }
        if task.log.as_ref().is_some_and(DeletionLog::overflowed) {
            self.trace(format!(
                "{}: copy {id} fails: deletion log overflowed",
                node_name(n)
            ));
            self.reply(
                task.reply,
                Err(Failure::Refused("deletion log overflowed".into())),
            );
            return;
        }
        let report = CopyReport::of(&task.core, task.sessions, CopyReport::default());
        self.trace(format!("{}: copy {id} ends: {report:?}", node_name(n)));
        let action = Action::Copy {
            from: Side::Source,
            keys: None,
            after_seq: 0,
            lead_ms: 0,
        };
        let body = serde_json::to_value(&report).unwrap_or_default();
        let r = outcome_of(&self.ctl.m.spec, &action, body);
        self.reply(task.reply, r);
    }

    fn peer(&mut self, from: usize, to: usize, copy: u64, msg: PeerMsg) {
        if !self.nodes[to].alive {
            return;
        }
        match msg {
            // Answers to a copy's source.
            PeerMsg::Ready(answer) => {
                let Some(t) = self.nodes[to].copies.get_mut(&copy) else {
                    return;
                };
                match t.core.ready(answer) {
                    Ok(step) => {
                        t.step = Some(step);
                        t.waiting_since = self.now;
                        self.copy_step(to, copy);
                    }
                    Err(e) => self.copy_fail(to, copy, e.to_string()),
                }
            }
            PeerMsg::Refuse(why) => self.copy_fail(to, copy, format!("refused: {why}")),
            PeerMsg::Verdict(v) => {
                let Some(t) = self.nodes[to].copies.get_mut(&copy) else {
                    return;
                };
                match t.core.verdict(v) {
                    Ok(step) => {
                        t.step = Some(step);
                        self.copy_step(to, copy);
                    }
                    Err(e) => self.copy_fail(to, copy, e.to_string()),
                }
            }
            // A copy's destination (`handoff_node::copy::peer_session`).
            PeerMsg::Manifest(keys) => {
                let batch_max = self.rng.gen_range(1..=8);
                let count = keys.len();
                let rx = self.nodes[to]
                    .incoming
                    .entry((from, copy))
                    .or_insert_with(|| CopyReceiver::new(batch_max));
                let step = match rx.manifest_chunk(keys, true) {
                    Ok(Some(step)) => step,
                    Ok(None) => return,
                    Err(r) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        return self.send_peer(to, from, copy, PeerMsg::Refuse(r.to_string()));
                    }
                };
                let mut out = Vec::new();
                let node = &mut self.nodes[to];
                let answer = match (node.inst.as_mut(), step) {
                    (None, _) => Err("unknown instance counter-1".to_owned()),
                    (Some(i), ManifestStep::Take(keys)) => i
                        .take_manifest(keys, &mut out)
                        .map(|t| (t, count))
                        .map_err(|e| e.to_string())
                        .map(|(t, c)| {
                            node.incoming
                                .get_mut(&(from, copy))
                                .map(|rx| rx.taken(t, c))
                        }),
                    (Some(i), ManifestStep::Reawait(keys)) => {
                        i.reawait(&keys).map_err(|e| e.to_string()).map(|r| {
                            node.incoming
                                .get_mut(&(from, copy))
                                .map(|rx| rx.reawaited(r))
                        })
                    }
                };
                self.emit(to, out);
                self.trace(format!(
                    "{}: manifest of copy {copy} ({count} keys) → {answer:?}",
                    node_name(to)
                ));
                match answer {
                    Ok(Some(a)) => self.send_peer(to, from, copy, PeerMsg::Ready(a)),
                    Ok(None) => {}
                    Err(e) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        self.send_peer(to, from, copy, PeerMsg::Refuse(e));
                    }
                }
            }
            PeerMsg::Record { key, seq, bytes } => {
                let Some(rx) = self.nodes[to].incoming.get_mut(&(from, copy)) else {
                    return;
                };
                match rx.record(key, seq, bytes) {
                    Ok(Some(batch)) => {
                        let epoch = rx.epoch();
                        self.hand_records(to, from, copy, batch, epoch);
                    }
                    Ok(None) => {}
                    Err(r) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        self.send_peer(to, from, copy, PeerMsg::Refuse(r.to_string()));
                    }
                }
            }
            PeerMsg::End { records, digest } => {
                let Some(rx) = self.nodes[to].incoming.get_mut(&(from, copy)) else {
                    return;
                };
                let (rest, verdict, more) = match rx.end(records, digest) {
                    Ok(v) => v,
                    Err(r) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        return self.send_peer(to, from, copy, PeerMsg::Refuse(r.to_string()));
                    }
                };
                let epoch = rx.epoch();
                if !self.hand_records(to, from, copy, rest, epoch) {
                    return;
                }
                if !more {
                    self.nodes[to].incoming.remove(&(from, copy));
                }
                self.send_peer(to, from, copy, PeerMsg::Verdict(verdict));
            }
        }
    }

    /// Hands a batch of copied records to the instance; `false` if it is gone.
    fn hand_records(
        &mut self,
        n: usize,
        from: usize,
        copy: u64,
        batch: RecordBatch,
        epoch: u64,
    ) -> bool {
        let mut out = Vec::new();
        let Some(i) = self.nodes[n].inst.as_mut() else {
            self.nodes[n].incoming.remove(&(from, copy));
            self.send_peer(n, from, copy, PeerMsg::Refuse("instance stopped".into()));
            return false;
        };
        let before = i.stats();
        let count = batch.len();
        if self.sc.verbose {
            let line = format!(
                "{}: {count} records of copy {copy} from {}: {batch:?}",
                node_name(n),
                node_name(from)
            );
            self.trace(line);
        }
        let i = self.nodes[n].inst.as_mut().expect("checked above");
        i.records(batch, epoch, &mut out);
        let after = i.stats();
        if after.stale_copy_records > before.stale_copy_records {
            self.trace(format!(
                "{}: {count} records of copy {copy} (epoch {epoch}) dropped: superseded",
                node_name(n)
            ));
        }
        if after.move_errors > before.move_errors {
            self.trace(format!("{}: records of copy {copy} refused", node_name(n)));
        }
        self.emit(n, out);
        true
    }

    // --- faults -----------------------------------------------------------------------------

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::ControllerCrash => self.ctl_crash(),
            Fault::NodeCrash(n) => {
                let kept = self.before_node_crash(n);
                self.node_crash(n);
                self.after_node_crash(n, kept);
            }
            Fault::SteerCrash => self.steer_crash(),
            Fault::OperatorAbort { request } => {
                if self.ctl.ended {
                    return;
                }
                self.operator_abort = true;
                self.trace(format!(
                    "operator asks for an abort ({})",
                    if request {
                        "request_abort"
                    } else {
                        "abort_now"
                    }
                ));
                if !self.ctl.alive {
                    return;
                }
                if request {
                    self.ctl.m.request_abort("the operator asked for an abort");
                } else {
                    self.ctl.operator = Some("the operator asked for an abort".into());
                }
            }
        }
    }

    fn node_crash(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return;
        }
        let phase = self.ctl.m.phase;
        self.trace(format!("CRASH of {} in {phase:?}", node_name(n)));
        if n == A {
            self.source_crashed = Some(phase);
        } else {
            self.destination_crashed = Some(phase);
        }
        let node = &mut self.nodes[n];
        node.alive = false;
        node.inst = None;
        node.bindings.clear();
        node.incoming.clear();
        let tasks = std::mem::take(&mut node.copies);
        for (_, t) in tasks {
            let d = self.rng.gen_range(100..5_000);
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: t.reply.inc,
                    req: t.reply.req,
                    result: Err(Failure::Unreachable(format!("{} crashed", node_name(n)))),
                },
            );
        }
        let other = 1 - n;
        let ids: Vec<u64> = self.nodes[other]
            .copies
            .iter()
            .filter(|(_, t)| t.to == n)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let d = self.rng.gen_range(100..10_000);
            self.at(
                self.now + d,
                Ev::CopyPeerLost {
                    node: other,
                    copy: id,
                },
            );
        }
        let d = self.rng.gen_range(1..LINK_DETECT_US);
        self.at(self.now + d, Ev::LinkDown(n));
    }

    /// The steer dies: its route state, its pending answers and every signal it stamped but
    /// had not written out yet (a random suffix, the same on every link: above `cut`) are
    /// gone; what it wrote still arrives. It restarts after `steer_down_us`.
    fn steer_crash(&mut self) {
        if !self.steer.alive {
            return;
        }
        let phase = self.ctl.m.phase;
        self.steer_crashed = Some(phase);
        let route_phase = self.steer.core.phase();
        let seq = self.steer.core.last_seq();
        let floor = self.steer.delivered.min(seq);
        let cut = if self.sc.split_crash {
            self.split_cut(floor, seq)
        } else {
            self.rng.gen_range(floor..=seq)
        };
        let inc = self.steer.inc as usize;
        self.steer.cuts[inc] = cut;
        self.steer.alive = false;
        // A split crash wrote seq cut + 1 to one node: it stays if that is its answering copy.
        let kept = self.split_keeps(cut);
        let gone = |a: &Admitted| a.seq > cut && Some(a.seq) != kept;
        let lost = self.log.iter().filter(|a| gone(a)).count();
        let stamped_lost = (self.log.iter())
            .filter(|a| gone(a) && a.client.is_some())
            .count() as u64;
        self.log.retain(|a| !gone(a));
        self.lost_in_steer_crash += stamped_lost;
        self.trace(format!(
            "CRASH of the steer in {phase:?} (route {route_phase}, seq {seq}, cut at {cut}: {lost} stamped signals lost)"
        ));
        // Answers it owed die with it (the controller sees the connections break).
        let asked = std::mem::take(&mut self.steer.asked);
        for (inc, req) in asked.into_keys() {
            self.steer_conn_broke(inc, req);
        }
        let at = self.now + self.sc.steer_down_us.max(1);
        self.at(at, Ev::SteerRestart);
    }

    fn steer_conn_broke(&mut self, inc: u32, req: u64) {
        let d = self.rng.gen_range(100..3_000);
        self.at(
            self.now + d,
            Ev::Reply {
                inc,
                req,
                result: Err(Failure::Unreachable("the steer connection broke".into())),
            },
        );
    }

    /// The steer starts again from its route file: serving from the node it names, or, if a
    /// move was in progress, routing nothing until the controller installs the route again.
    fn steer_restart(&mut self) {
        let disk = self.steer.disk;
        let configured = if self.sc.stale_view { B } else { A };
        let st = &mut self.steer;
        st.alive = true;
        st.inc += 1;
        st.cuts.push(u64::MAX);
        st.core = ServiceCore::new(
            "counter-1",
            node_addr(configured),
            Kept::Route(disk),
            steer_timeouts(),
        );
        st.links.clear();
        st.poll_due = false;
        st.delivered = 0;
        let inc = st.inc;
        self.trace(format!(
            "steer restarts (run {inc}): route file says {} from {}",
            disk.phase,
            node_name(node_at(disk.node))
        ));
        self.steer_effects();
    }

    /// A steer's bind at a node: a new binding of the instance (fencing off earlier ones),
    /// answered with the last applied seq (`None`: no instance to bind).
    fn node_bind(&mut self, n: usize, inc: u32, link: LinkId, retry_us: u64) {
        let node = &mut self.nodes[n];
        if !node.alive {
            return;
        }
        let bound = node.inst.as_mut().map(|i| i.bind());
        if let Some((binding, _)) = bound {
            node.bindings.insert((inc, link), binding);
        }
        let at = self.link(Ep::Node(n), Ep::Steer);
        self.at(
            at,
            Ev::Bound {
                node: n,
                inc,
                link,
                last_seq: bound.map(|b| b.1),
                retry_us,
            },
        );
    }

    fn steer_bound(
        &mut self,
        n: usize,
        inc: u32,
        link: LinkId,
        last_seq: Option<u64>,
        retry_us: u64,
    ) {
        if !self.steer.alive || inc != self.steer.inc || !self.steer.links.contains_key(&link) {
            return;
        }
        let Some(seq) = last_seq else {
            // As the real link does: try again after a back-off while anyone still cares.
            self.trace(format!("steer: {} refused the bind", node_name(n)));
            if !self.ctl.ended {
                let next = (retry_us * 2).min(BIND_RETRY_MAX_US);
                let at = self.now + retry_us;
                self.at(
                    at,
                    Ev::Bind {
                        node: n,
                        inc,
                        link,
                        retry_us: next,
                    },
                );
            }
            return;
        };
        self.steer.core.link_up(link, seq);
        self.trace(format!("steer: {} bound at seq {seq}", node_name(n)));
        self.steer.core.poll(self.now, |_| usize::MAX);
        self.steer_effects();
    }

    /// Called when the controller starts an action; `true` if the controller crashed at once.
    fn triggers(&mut self) -> bool {
        let count = self.actions_started;
        let phase = self.ctl.m.phase;
        let hit = |t: &Trigger| match t.phase {
            Some(p) => p == phase,
            None => t.action == count,
        };
        let mut due: Vec<(Fault, u64)> = Vec::new();
        let crashes = self.sc.controller_crashes.clone();
        for (i, t) in crashes.iter().enumerate() {
            if hit(t) && self.fired.insert((0, i)) {
                due.push((Fault::ControllerCrash, t.after_us));
            }
        }
        if let Some(t) = self.sc.destination_crash {
            if hit(&t) && self.fired.insert((1, 0)) {
                due.push((Fault::NodeCrash(B), t.after_us));
            }
        }
        if let Some(t) = self.sc.source_crash {
            if hit(&t) && self.fired.insert((2, 0)) {
                due.push((Fault::NodeCrash(A), t.after_us));
            }
        }
        if let Some((t, request)) = self.sc.operator_abort {
            if hit(&t) && self.fired.insert((3, 0)) {
                due.push((Fault::OperatorAbort { request }, t.after_us));
            }
        }
        if let Some(t) = self.sc.steer_crash {
            if hit(&t) && self.fired.insert((4, 0)) {
                due.push((Fault::SteerCrash, t.after_us));
            }
        }
        let mut crashed = false;
        for (f, after) in due {
            if after == 0 {
                self.fault(f);
                crashed |= f == Fault::ControllerCrash;
            } else {
                self.at(self.now + after, Ev::Fault(f));
            }
        }
        crashed
    }

    // --- controller -------------------------------------------------------------------------

    fn persist(&mut self) {
        match serde_json::to_string(&self.ctl.m) {
            Ok(s) => {
                match serde_json::from_str::<MoveMachine>(&s) {
                    Ok(back) if back == self.ctl.m => {}
                    Ok(back) => self.violation(
                        "persist_roundtrip",
                        format!("{:?} came back as {back:?}", self.ctl.m),
                    ),
                    Err(e) => self.violation("persist_roundtrip", e.to_string()),
                }
                self.ctl.stored = s;
            }
            Err(e) => self.violation("persist_roundtrip", e.to_string()),
        }
    }

    fn note_phase(&mut self) {
        let p = self.ctl.m.phase;
        if self.phases.last() != Some(&p) {
            self.phases.push(p);
            let reason = self.ctl.m.reason.clone();
            self.trace(format!("controller: phase {p:?} (reason {reason:?})"));
        }
    }

    fn ctl_step(&mut self, inc: u32) {
        if inc != self.ctl.inc || !self.ctl.alive || self.ctl.waiting.is_some() {
            return;
        }
        let now_ms = self.now_ms();
        if let Some(reason) = self.ctl.operator.clone() {
            if self.ctl.m.abort_now(reason, now_ms) {
                self.persist();
                self.note_phase();
                self.at(self.now, Ev::Step { inc });
                return;
            }
        }
        let Some(action) = self.ctl.m.action() else {
            if !self.ctl.ended {
                self.ctl.ended = true;
                self.trace(format!(
                    "controller: the move ended {:?} ({:?})",
                    self.ctl.m.phase, self.ctl.m.reason
                ));
                self.at(self.now + TRAFFIC_AFTER_END_US, Ev::StopTraffic);
            }
            return;
        };
        let req = self.ctl.next_req;
        self.ctl.next_req += 1;
        self.ctl.waiting = Some((req, action.clone()));
        if let Action::Wait { ms } = action {
            self.at(
                self.now + ms * 1000,
                Ev::Reply {
                    inc,
                    req,
                    result: Ok(Outcome::Done),
                },
            );
            return;
        }
        self.ctl.m.start_action();
        self.persist();
        self.actions_started += 1;
        let n = self.actions_started;
        self.trace(format!(
            "controller: action {n} {action:?} ({:?}, attempt {})",
            self.ctl.m.phase, self.ctl.m.attempts
        ));
        if self.triggers() {
            return;
        }
        // Where the driver sends it.
        let target = match request_for(&self.ctl.m.spec, &action) {
            Request::Steer(_) => Target::Steer,
            Request::Node { addr, .. } => Target::Node(node_at(addr)),
            Request::Wait { .. } => unreachable!("handled above"),
        };
        let loss = self.sc.control_loss;
        let lose_request = loss > 0.0 && self.rng.gen_bool(loss);
        let scripted = self.sc.lose_reply_to.as_ref() == Some(&action);
        if scripted {
            self.sc.lose_reply_to = None;
        }
        let lose_reply = (loss > 0.0 && self.rng.gen_bool(loss)) || scripted;
        if lose_request {
            let d = self.rng.gen_range(1..CONTROL_TIMEOUT_US);
            self.control_lost += 1;
            self.trace(format!("control: request {req} lost"));
            self.at(
                self.now + d,
                Ev::Reply {
                    inc,
                    req,
                    result: Err(Failure::Unreachable("the request was lost".into())),
                },
            );
            return;
        }
        let ep = match target {
            Target::Steer => Ep::Steer,
            Target::Node(n) => Ep::Node(n),
        };
        let at = self.link(Ep::Ctl, ep);
        self.at(
            at,
            Ev::Request {
                to: target,
                action,
                reply: ReplyTo {
                    inc,
                    req,
                    lose: lose_reply,
                    from: ep,
                },
            },
        );
    }

    fn ctl_reply(&mut self, inc: u32, req: u64, result: Result<Outcome, Failure>) {
        if inc != self.ctl.inc || !self.ctl.alive {
            return;
        }
        if self.ctl.waiting.as_ref().map(|w| w.0) != Some(req) {
            return;
        }
        if matches!(result, Err(Failure::Unreachable(_))) {
            // The driver backs off before it hands the failure to the machine.
            let d = BACKOFF_US << self.ctl.m.attempts.min(4);
            self.at(self.now + d, Ev::Complete { inc, req, result });
        } else {
            self.ctl_complete(inc, req, result);
        }
    }

    fn ctl_complete(&mut self, inc: u32, req: u64, result: Result<Outcome, Failure>) {
        if inc != self.ctl.inc || !self.ctl.alive {
            return;
        }
        let Some((_, action)) = self.ctl.waiting.take_if(|w| w.0 == req) else {
            return;
        };
        let is_wait = matches!(action, Action::Wait { .. });
        if !is_wait {
            self.trace(format!("controller: {action:?} → {result:?}"));
        }
        let now_ms = self.now_ms();
        self.ctl.m.complete(result, now_ms);
        if !is_wait {
            self.persist();
        }
        self.note_phase();
        let pause = if matches!(action, Action::ShadowStats { .. }) {
            POLL_MS * 1000
        } else {
            0
        };
        self.at(self.now + pause, Ev::Step { inc });
    }

    fn ctl_crash(&mut self) {
        if !self.ctl.alive || self.ctl.ended {
            return;
        }
        self.controller_crashes += 1;
        self.ctl.alive = false;
        self.ctl.inc += 1;
        self.ctl.waiting = None;
        self.ctl.operator = None;
        let phase = self.ctl.m.phase;
        self.trace(format!("CRASH of the controller in {phase:?}"));
        self.at(self.now + self.sc.controller_down_us, Ev::Restart);
    }

    fn ctl_restart(&mut self) {
        match serde_json::from_str::<MoveMachine>(&self.ctl.stored) {
            Ok(mut m) => {
                let before = (m.phase, m.in_flight);
                m.recover(m.phase_started_ms);
                self.trace(format!(
                    "controller restarts: persisted {before:?}, recovered to {:?}",
                    m.phase
                ));
                self.ctl.m = m;
            }
            Err(e) => {
                self.violation("persist_roundtrip", format!("cannot restore: {e}"));
                return;
            }
        }
        self.ctl.alive = true;
        self.note_phase();
        let inc = self.ctl.inc;
        self.at(self.now, Ev::Step { inc });
    }

    // --- the end ----------------------------------------------------------------------------

    fn finish(mut self) -> SimReport {
        let m = self.ctl.m.clone();
        let phase = m.phase;
        let dest_crash = self.destination_crashed.is_some();
        let source_crash = self.source_crashed.is_some();
        let crashed = dest_crash || source_crash;

        self.checked.push("terminates");
        if self.cut_off || !phase.is_terminal() || !self.ctl.ended {
            self.violation(
                "terminates",
                format!(
                    "the run did not end (phase {phase:?}, cut off {}, {} events, {} µs)",
                    self.cut_off, self.events, self.now
                ),
            );
        }
        self.checked.push("persist_roundtrip");
        self.checked.push("single_answer");
        self.checked.push("answer_order");

        let failed_allowed = phase == Phase::Failed
            && m.reason
                .as_deref()
                .is_some_and(|r| r.contains("unreachable"))
            && (self.sc.control_loss > 0.0 || crashed);
        // A node restarted without its state: a failed move tells the operator (never silent).
        let failed_allowed = failed_allowed
            || (phase == Phase::Failed
                && self
                    .ext
                    .restarted
                    .is_some_and(|(_, c, _)| c != Comeback::Kept));
        self.checked.push("ends_done_or_aborted");
        if phase == Phase::Failed && !failed_allowed {
            self.violation(
                "ends_done_or_aborted",
                format!("the move failed: {:?}", m.reason),
            );
        }

        // The reference: one instance applying every admitted signal in seq order.
        let mut reference = Instance::new(self.func.clone());
        let mut expected: BTreeMap<u64, Bytes> = BTreeMap::new();
        for a in self.log.iter().filter(|a| self.effective(a)) {
            let mut out = Vec::new();
            reference.apply_signal(
                Stamp {
                    seq: a.seq,
                    now_us: a.now_us,
                },
                a.kind,
                &a.key,
                &a.payload,
                &mut out,
            );
            for o in out {
                expected.insert(o.seq, o.output.bytes);
            }
        }
        let reference = reference.table().dump();

        let signals: Vec<&Admitted> = self.log.iter().filter(|a| a.client.is_some()).collect();
        let unanswered = signals
            .iter()
            .filter(|a| !self.answers.contains_key(&a.seq))
            .count() as u64;
        let answers = self.answers.values().map(Vec::len).sum::<usize>() as u64;

        let mut found = Vec::new();
        // Checks exactly-once answers for the admitted signals `which` selects.
        let exactly_once = |which: &dyn Fn(&Admitted) -> bool, found: &mut Vec<String>| {
            for a in signals.iter().filter(|a| which(a)) {
                let n = self.answers.get(&a.seq).map_or(0, Vec::len);
                // An answer that reached the steer while it was down is lost (the client
                // retransmits); it must not arrive later too.
                let want = usize::from(!self.lost_answers.contains(&a.seq));
                if n != want && found.len() < 10 {
                    found.push(format!(
                        "seq {} ({:?} {:?}, {:?} to {}) answered {n} times (want {want})",
                        a.seq,
                        a.kind,
                        a.key,
                        a.delivery,
                        node_name(a.auth)
                    ));
                }
            }
        };
        let ok_state =
            |node: &Node, except: &BTreeSet<Bytes>| faults::compare_state(node, &reference, except);

        let mut state_violation = None;
        let mut late: Vec<(&'static str, String)> = Vec::new();
        if !crashed {
            self.checked.push("every_answered");
            exactly_once(&|_| true, &mut found);
            self.checked.push("answer_content");
            let mut wrong = Vec::new();
            for (seq, got) in &self.answers {
                if let (Some(w), Some((_, g))) = (expected.get(seq), got.first()) {
                    if w != g && wrong.len() < 10 {
                        wrong.push(format!("seq {seq}: got {g:?}, reference {w:?}"));
                    }
                }
            }
            if !wrong.is_empty() {
                late.push(("answer_content", wrong.join("; ")));
            }
            // A stale view's move has its own checks (the instance started on B).
            let owner = match phase {
                _ if self.sc.stale_view => None,
                Phase::Done => Some(B),
                Phase::Aborted => Some(A),
                _ => None,
            };
            if let Some(owner) = owner {
                // Sessions that an abort could not bring back are excluded (and reported).
                let except: BTreeSet<Bytes> = if m.figures.lost_on_abort > 0 {
                    self.log
                        .iter()
                        .filter(|a| a.auth == B && a.kind != SignalKind::Tick)
                        .map(|a| a.key.clone())
                        .collect()
                } else {
                    BTreeSet::new()
                };
                self.checked.push("final_state");
                if let Err(e) = ok_state(&self.nodes[owner], &except) {
                    state_violation = Some(("final_state", format!("{}: {e}", node_name(owner))));
                }
                self.checked.push("other_side_dropped");
                if self.nodes[1 - owner].inst.is_some() {
                    late.push((
                        "other_side_dropped",
                        format!("{} still hosts the instance", node_name(1 - owner)),
                    ));
                }
                self.checked.push("route_settled");
                let st = self.steer.core.status();
                if st.phase != RoutePhase::Serving
                    || st.node != node_addr(owner)
                    || st.destination.is_some()
                {
                    let d = format!(
                        "route {} from {} (destination {:?})",
                        st.phase, st.node, st.destination
                    );
                    late.push(("route_settled", d));
                }
            }
        } else if self.sc.control_loss == 0.0 {
            // One data node crashed: what the survivor answered is still exactly once; its
            // state is exact where the crash cannot have touched it.
            let survivor = if dest_crash { A } else { B };
            if dest_crash || phase == Phase::Done {
                self.checked.push("survivor_answers");
                exactly_once(&|a| a.auth == survivor, &mut found);
            }
            if dest_crash && phase == Phase::Aborted {
                let except: BTreeSet<Bytes> = self
                    .log
                    .iter()
                    .filter(|a| a.auth == B && a.kind != SignalKind::Tick)
                    .map(|a| a.key.clone())
                    .collect();
                self.checked.push("source_state_except_created");
                if let Err(e) = ok_state(&self.nodes[A], &except) {
                    state_violation = Some(("source_state_except_created", e));
                }
            }
            if source_crash && phase == Phase::Done {
                self.checked.push("destination_state");
                if let Err(e) = ok_state(&self.nodes[B], &BTreeSet::new()) {
                    state_violation = Some(("destination_state", e));
                }
            }
        }
        let n_signals = signals.len() as u64;
        let mut added = Vec::new();
        self.fault_checks(&reference, &expected, &mut added);
        late.extend(added);
        if !found.is_empty() {
            let inv = if crashed {
                "survivor_answers"
            } else {
                "every_answered"
            };
            self.violation(inv, found.join("; "));
        }
        if let Some((inv, d)) = state_violation {
            self.violation(inv, d);
        }
        for (inv, d) in late {
            self.violation(inv, d);
        }

        let tail = if self.sc.verbose {
            self.trace.len()
        } else {
            TRACE_TAIL
        };
        let trace_tail = self
            .trace
            .iter()
            .skip(self.trace.len().saturating_sub(tail))
            .cloned()
            .collect();
        SimReport {
            signals: n_signals,
            ticks: self.ticks,
            shed: self.shed,
            answers,
            unanswered,
            client_timeouts: self.client_timeouts,
            control_lost: self.control_lost,
            phase,
            phases: self.phases,
            reason: m.reason.clone(),
            cut_over: m.figures.cutover_seq > 0,
            failed_allowed,
            controller_crashes: self.controller_crashes,
            destination_crashed: self.destination_crashed,
            source_crashed: self.source_crashed,
            operator_abort: self.operator_abort,
            steer_crashed: self.steer_crashed,
            lost_in_steer_crash: self.lost_in_steer_crash,
            answers_lost_in_steer_crash: self.lost_answers.len() as u64,
            restarted: self.ext.restarted.map(|(n, c, p)| {
                let side = if n == A {
                    Side::Source
                } else {
                    Side::Destination
                };
                (side, c, p)
            }),
            retransmissions: self.ext.retransmissions,
            queue_shed: self.ext.queue_shed,
            created_during_move: m.figures.created_during_move,
            lost_on_abort: m.figures.lost_on_abort,
            checked: self.checked,
            violations: self.violations,
            events: self.events,
            end_us: self.now,
            trace_tail,
            scenario: self.sc,
        }
    }
}
