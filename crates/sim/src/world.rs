//! The world: the processes (clients, steer, two nodes, controller), the event queue with its
//! virtual clock, the modelled links (FIFO per sender and receiver, random delays, any
//! interleaving across links) and the main loop. What each process does lives in the modules
//! below, one per concern; what a run injects and reports lives in `scenario`, the checks in
//! `checks`.

use bytes::Bytes;
use handoff_controller::driver::{
    on_incident, outcome_of, refusal, request_for, Incident, Request,
};
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

mod checks;
mod clients;
mod controller;
mod copy;
mod crashes;
mod faults;
mod function;
mod nodes;
mod scenario;
mod steer;

pub use faults::{Comeback, Restart, Retransmit};
pub use function::*;
pub use scenario::*;

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
/// The controller's health watch interval (`driver::drive`'s 250 ms, scaled like the other
/// control time-outs).
const HEALTH_US: u64 = 25_000;
/// How long a node of a move may be down before the health watch counts it lost (the
/// driver's 2 s, scaled).
const NODE_LOST_AFTER_US: u64 = 200_000;
/// How long after a move parks offline the operator recovers it.
const OPERATOR_RECOVERS_US: u64 = 300_000;
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
    /// The controller's health watch of the move's steer and nodes (as `driver::drive`'s).
    Health {
        inc: u32,
    },
    /// The operator recovers a move parked offline.
    OperatorRecover {
        inc: u32,
    },
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
    /// The node's answer: its last applied seq and the instance's incarnation (`None`: it
    /// hosts no instance).
    Bound {
        node: usize,
        inc: u32,
        link: LinkId,
        last_seq: Option<(u64, u64)>,
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
    /// Instances created on this node so far (the incarnation of the current one derives
    /// from it, the node's index and its restarts).
    created: u64,
    /// The moves that may clean the instance up: the one that prepared it, the one that
    /// copied from it (as the real node's `Marks`).
    prepared_by: Option<String>,
    leaving: Option<String>,
    copies: BTreeMap<u64, CopyTask>,
    /// The destination's side of each copy connection: the real copy receiver.
    incoming: BTreeMap<(usize, u64), CopyReceiver>,
    /// The instance's binding for each steer link that bound it (frames of a link bound
    /// before another are fenced off by the core).
    bindings: BTreeMap<(u32, LinkId), u64>,
}

impl Node {
    /// The incarnation of the instance node `n` hosts now (never 0; distinct for every
    /// creation and every restart).
    fn incarnation(&self, n: usize) -> u64 {
        ((n as u64 + 1) << 40) | (u64::from(self.inc) << 20) | self.created
    }

    /// A new instance replaces whatever the node hosted.
    fn create(&mut self, inst: Option<InstanceCore<Conn>>) {
        self.inst = inst;
        self.created += 1;
        self.prepared_by = None;
        self.leaving = None;
    }
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
            origin: "controller".into(),
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
            created: 1,
            prepared_by: None,
            leaving: None,
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
                    incarnation: None,
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
                let incarnation = sim.nodes[n].incarnation(n);
                if let Some((binding, last_seq)) = sim.nodes[n].inst.as_mut().map(|i| i.bind()) {
                    sim.nodes[n].bindings.insert((0, id), binding);
                    sim.steer.core.link_up(id, last_seq, incarnation);
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
        sim.at(sim.sc.warmup_us + HEALTH_US, Ev::Health { inc: 0 });
        // The controller checked where the steer routes before starting: the source's
        // incarnation is the one the route is bound to.
        sim.ctl.m.incarnations.source = Some(sim.nodes[A].incarnation(A));
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
            Ev::Health { inc } => self.ctl_health(inc),
            Ev::OperatorRecover { inc } => self.operator_recover(inc),
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
}
