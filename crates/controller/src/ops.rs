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
    /// The node it is placed on now.
    pub node: String,
    /// The steer routing it.
    pub steer: String,
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
    /// Duplicate creates too, so an abort needs nothing moved back (default false).
    #[serde(default)]
    pub abort_safe: bool,
    /// Lead between steering and copy, ms (default 0).
    #[serde(default)]
    pub lead_ms: u64,
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

handoff_wire::operations! {
    Status => StatusReply = "status",
    Migrate => MoveStarted = "migrate",
    GetMoveStatus => MoveStatus = "move_status",
    Abort => Aborting = "abort",
}
