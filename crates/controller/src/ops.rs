//! The controller's operations: each request type, its reply type
//! ([`handoff_wire::rpc::Operation`]) and what it does. [`crate::daemon::ControllerRequest`]
//! has one variant per operation; the JSON is `{"op": …, fields…}` and unknown fields are
//! refused with `BAD_REQUEST`. Refusals: `UNKNOWN_INSTANCE` (an instance not in the config),
//! `BAD_REQUEST` (anything else: unknown node or move, an instance already moving, an
//! infeasible plan (checked against what the source holds before anything changes), a store
//! error), `NOT_REACHABLE` (the source node cannot be asked about the plan).

use crate::driver::Progress;
use crate::machine::{MoveFigures, Phase};
use handoff_node::InstanceInfo;
use handoff_state::{CopyOrder, CopyPlan};
use handoff_steer::ServiceStatus;
use std::net::SocketAddr;

/// The cluster view: nodes, steers, instances, moves. Answer: [`StatusReply`] (what
/// `handoff status --json` prints).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {}

/// The answer to [`Status`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StatusReply {
    /// Every configured node, asked for its stats.
    pub nodes: Vec<NodeView>,
    /// Every configured steer, asked for its status.
    pub steers: Vec<SteerView>,
    /// Every configured instance and where it is placed now.
    pub instances: Vec<InstanceView>,
    /// The latest 20 moves, newest first.
    pub moves: Vec<MoveSummary>,
    /// Control connections this controller closed because they stalled (`docs/wire.md`,
    /// "Timeouts").
    pub control: handoff_wire::deadline::ClosedConnections,
}

/// A node in [`StatusReply`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it answered.
    pub up: bool,
    /// What it answered, or why not.
    #[serde(flatten)]
    pub state: NodeState,
}

/// A node's answer in [`NodeView`]: `instances` and `rss_bytes` when up, `error` when down.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum NodeState {
    /// It answered.
    Up {
        /// Its instances and their counters.
        instances: Vec<InstanceInfo>,
        /// Its resident set size.
        rss_bytes: u64,
    },
    /// It did not.
    Down {
        /// Why.
        error: String,
    },
}

/// A steer in [`StatusReply`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SteerView {
    /// Its name.
    pub name: String,
    /// Its control address.
    pub control: SocketAddr,
    /// Whether it answered.
    pub up: bool,
    /// What it answered, or why not.
    #[serde(flatten)]
    pub state: SteerState,
}

/// A steer's answer in [`SteerView`]: `services` when up, `error` when down.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SteerState {
    /// It answered.
    Up {
        /// Its services, routes and counters.
        services: Vec<ServiceStatus>,
    },
    /// It did not.
    Down {
        /// Why.
        error: String,
    },
}

/// An instance in [`StatusReply`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceView {
    /// Its name.
    pub name: String,
    /// Its function.
    pub function: String,
    /// The node the controller records it on (corrected from what the steer and the nodes
    /// report whenever they disagree and no move is in progress).
    pub node: String,
    /// The steer routing it.
    pub steer: String,
    /// Its real owner: the node the steer routes to, when that node hosts the incarnation
    /// the route is bound to (`null`: none, see `alarm`).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub owner: Option<String>,
    /// The route's phase at the steer (`null`: the steer cannot be asked).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub route: Option<String>,
    /// The node the steer routes to (name, or address if unknown).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub routed_to: Option<String>,
    /// The incarnation the route is bound to.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub incarnation: Option<u64>,
    /// Signals the steer dropped because the instance was offline or its node link down.
    pub dropped: u64,
    /// Something an operator must act on (the instance is offline or on no node), or `null`.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub alarm: Option<String>,
    /// Where the controller's record, the steer and the nodes disagree.
    pub disagreements: Vec<String>,
}

/// A move in [`StatusReply`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveSummary {
    /// Its id.
    pub id: u64,
    /// The instance.
    pub instance: String,
    /// The source node's name.
    pub from: String,
    /// The destination node's name.
    pub to: String,
    /// Where it is (see `docs/wire.md` for the phase names).
    pub phase: Phase,
    /// Why it aborted or failed (`null` otherwise).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub reason: Option<String>,
}

/// Starts a live move of `instance` to the node named `to`. Answer: [`MoveStarted`], at once.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migrate {
    /// The instance.
    pub instance: String,
    /// The destination node's name.
    pub to: String,
    /// Copy order (default hot-first).
    #[serde(default = "hot_first")]
    pub order: CopyOrder,
    /// Copy limits (default none).
    #[serde(default)]
    pub plan: CopyPlan,
    /// Duplicate creates and every update to both nodes, so a destination lost before the
    /// cutover costs nothing and an abort needs nothing moved back (default true; see
    /// `docs/moves.md` for its cost).
    #[serde(default = "yes")]
    pub abort_safe: bool,
    /// Lead between steering and copy, ms (default 0).
    #[serde(default)]
    pub lead_ms: u64,
}

fn yes() -> bool {
    true
}

fn hot_first() -> CopyOrder {
    CopyOrder::HotFirst
}

/// The answer to [`Migrate`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveStarted {
    /// The move's id (for `move_status` and `abort`).
    pub id: u64,
    /// The instance.
    pub instance: String,
    /// The source node's name.
    pub from: String,
    /// The destination node's name.
    pub to: String,
}

/// A move's progress and, once ended, its figures. Answer: [`MoveStatus`] (what
/// `handoff migrate --json` prints at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetMoveStatus {
    /// The move.
    pub id: u64,
}

/// The answer to [`GetMoveStatus`] (`move_status`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoveStatus {
    /// The move's id.
    pub id: u64,
    /// The instance.
    pub instance: String,
    /// The source node's name.
    pub from: String,
    /// The destination node's name.
    pub to: String,
    /// Where it is.
    pub phase: Phase,
    /// Whether it ended (`done`, `aborted` or `failed`).
    pub ended: bool,
    /// Why it aborted or failed (`null` otherwise).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub reason: Option<String>,
    /// Live progress while this controller drives it, a move it resumed after a restart
    /// included (from the persisted figures on); `null` once ended.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub progress: Option<Progress>,
    /// The move's figures so far.
    pub figures: MoveFigures,
}

/// Aborts a running move (honoured before its cutover). Answer: [`Aborting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// The move.
    pub id: u64,
}

/// The answer to [`Abort`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Aborting {
    /// The move.
    pub aborting: u64,
}

/// Brings an instance back after a crash: a move parked offline (its destination lost after
/// the cutover) is recovered on its source, giving up the signals stamped since the cutover;
/// an instance whose node lost it with no move in progress is served from that node's new
/// incarnation only with `accept_empty` (what it holds is all that is left). Answer:
/// [`Recovering`]; `WRONG_PHASE` when there is nothing to recover, `OFFLINE` when only an
/// `accept_empty` recovery is possible.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// The instance.
    pub instance: String,
    /// Accept the new (empty, or partial) incarnation on the node the steer routes to.
    #[serde(default)]
    pub accept_empty: bool,
}

/// The answer to [`Recover`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovering {
    /// The instance.
    pub instance: String,
    /// The move being recovered (follow it with `move_status`), or `null`.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub move_id: Option<u64>,
    /// What was done.
    pub message: String,
}

handoff_wire::operations! {
    Recover => Recovering = "recover",
    Status => StatusReply = "status",
    Migrate => MoveStarted = "migrate",
    GetMoveStatus => MoveStatus = "move_status",
    Abort => Aborting = "abort",
}
