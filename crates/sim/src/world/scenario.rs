//! What a run does (fault classes, triggers, the scenario a seed draws), what it found (the
//! report), and how to run one.

use super::*;

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
