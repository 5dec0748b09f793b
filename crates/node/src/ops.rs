//! The node's admin operations: each request type, its reply type
//! ([`handoff_wire::rpc::Operation`]) and what it does. [`crate::AdminRequest`] has one
//! variant per operation, carrying its request; the JSON is `{"op": …, fields…}` and unknown
//! fields are refused with `BAD_REQUEST` (every operation is a struct, `stats` included).
//!
//! Refusal codes (see `docs/wire.md`): `UNKNOWN_INSTANCE` (not hosted here, or its task
//! stopped), `BAD_REQUEST` (malformed request, unknown field, a plan that cannot be met),
//! `WRONG_PHASE` (a move step the instance is not in the state for), `NOT_REACHABLE` (a
//! copy's or push's destination did not answer), `UNKNOWN_FUNCTION`, `EXISTS`; a copy the
//! destination refused carries the destination's code. None of them closes the connection.

use crate::copy::CopyReport;
use crate::push::PushReport;
use bytes::Bytes;
use handoff_function::Ruleset;
use std::net::SocketAddr;

/// One instance in a stats reply.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct InstanceInfo {
    /// Name.
    pub instance: String,
    /// Function.
    pub function: String,
    /// Sessions held.
    pub sessions: u64,
    /// Its incarnation (changes whenever the instance is created again; never 0).
    pub incarnation: u64,
    /// The move that created it as its shadow (`null`: none).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub prepared_by: Option<String>,
    /// The move that took a full copy of it, as its source (`null`: none).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub leaving: Option<String>,
    /// Counters.
    pub stats: crate::instance_core::TaskStats,
}

/// The reply to [`Stats`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// Node name.
    pub node: String,
    /// Resident set size of the node process.
    pub rss_bytes: u64,
    /// Hosted instances.
    pub instances: Vec<InstanceInfo>,
    /// Connections closed because they stalled (`docs/wire.md`, "Timeouts").
    pub connections: handoff_wire::deadline::ClosedConnections,
    /// Each instance served on a direct UDP port (none without `--direct`).
    pub direct: Vec<DirectInfo>,
}

/// One instance's direct UDP path in a stats reply: every datagram it took is counted once,
/// as admitted or as dropped for one reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectInfo {
    /// The instance.
    pub instance: String,
    /// Datagrams classified and handed to the instance.
    pub admitted: u64,
    /// Datagrams dropped because the function's classifier refused them.
    pub malformed: u64,
    /// Datagrams (and ticks) dropped because the instance had stopped when they were handed
    /// over.
    pub instance_stopped: u64,
    /// Receive calls that failed (no datagram was read).
    pub recv_errors: u64,
    /// Answers the socket refused to send.
    pub send_failed: u64,
}

/// Node and instance counters. Answer: [`NodeStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {}

macro_rules! instance_op {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The instance.
            pub instance: String,
        }
    };
}

/// Creates an instance. Answer: [`Created`]; `UNKNOWN_FUNCTION`, `EXISTS`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// Its name.
    pub instance: String,
    /// Its function.
    pub function: String,
}

/// The answer to [`CreateInstance`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Created {
    /// The instance.
    pub created: String,
}

instance_op!(
    /// Streams every record of an instance: `DumpRecord` frames, then `DumpEnd{count}` (not
    /// an [`handoff_wire::rpc::Operation`]: its answer is a stream; see
    /// [`crate::client::AdminClient::dump`]).
    Dump
);
instance_op!(
    /// The instance's output ruleset. Answer: the [`Ruleset`].
    GetRuleset
);

/// Streams the instance's sessions to another node hosting an empty instance of the same
/// name (a move's copy). Answer: the [`CopyReport`] (an infeasible plan is refused before
/// anything is sent).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyTo {
    /// The instance.
    pub instance: String,
    /// The destination node's address.
    pub destination: SocketAddr,
    /// Copy order (default hot-first).
    #[serde(default = "default_order")]
    pub order: handoff_state::CopyOrder,
    /// Limits (default none).
    #[serde(default)]
    pub plan: handoff_state::CopyPlan,
    /// The manifest is taken only once every seq up to this one is applied (the last seq
    /// the steer stamped before switching to move mode). Default 0.
    #[serde(default)]
    pub after_seq: u64,
    /// Copy only these sessions (hex keys, any number; an absent one is sent as a
    /// tombstone): an aborted move's sessions going back. Default: every session.
    #[serde(default, with = "opt_hex_keys")]
    pub keys: Option<Vec<Bytes>>,
    /// Lead K (ms, at most 5000): the manifest goes at once, the records only after this
    /// long. Default 0.
    #[serde(default)]
    pub lead_ms: u64,
    /// The move this copy belongs to: a full copy marks the instance as that move's source,
    /// so the move (and only it) may retire it later. Default: none.
    #[serde(default)]
    pub move_tag: Option<String>,
    /// Copy only from this incarnation of the instance (`WRONG_PHASE` otherwise: the node
    /// restarted, or the instance was created again). Default: any.
    #[serde(default)]
    pub incarnation: Option<u64>,
}

fn default_order() -> handoff_state::CopyOrder {
    handoff_state::CopyOrder::HotFirst
}

/// `Option<Vec<Bytes>>` as `null` or a list of hex keys.
mod opt_hex_keys {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Hex(#[serde(with = "handoff_wire::rpc::hex_keys")] Vec<Bytes>);

    pub fn serialize<S: Serializer>(keys: &Option<Vec<Bytes>>, s: S) -> Result<S::Ok, S::Error> {
        keys.as_ref().map(|k| Hex(k.clone())).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Bytes>>, D::Error> {
        Ok(Option::<Hex>::deserialize(d)?.map(|h| h.0))
    }
}

/// A serving instance starts expecting the records of these sessions from another node,
/// buffering their signals until each arrives (an aborted move's sessions coming back).
/// Answer: [`Expecting`]; `WRONG_PHASE` when not serving.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSessions {
    /// The instance.
    pub instance: String,
    /// The sessions, as hex keys (any number).
    #[serde(with = "handoff_wire::rpc::hex_keys")]
    pub keys: Vec<Bytes>,
}

/// The answer to [`ExpectSessions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expecting {
    /// Sessions now expected.
    pub expecting: u64,
}

/// The source-driven variant: this node runs the whole move and answers with its report.
pub type Migrate = crate::MigrateRequest;

/// The answer to [`Migrate`]: the move's report (the fields of `handoff migrate --json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MigrateReport {
    /// The move's id (per source node).
    pub id: u64,
    /// The instance.
    pub instance: String,
    /// The source node.
    pub from: SocketAddr,
    /// The destination node.
    pub to: SocketAddr,
    /// Whether it ended (always true in this answer).
    pub ended: bool,
    /// The phase it ended in (`done`, `aborted` or `failed`; see `docs/wire.md`).
    pub phase: String,
    /// Why it aborted or failed (`null` when done).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub reason: Option<String>,
    /// The move's figures (see `docs/wire.md`, `handoff migrate --json`).
    pub figures: serde_json::Value,
}

/// Stops and removes an instance (a move's drained source, or an aborted destination).
/// Answer: [`Dropped`]. A request naming a move drops only an instance that move created (its
/// shadow) or fully copied from (its source), and, naming an incarnation, only that one:
/// anything else is refused with `FOREIGN` and left alone, so no cleanup destroys what it did
/// not create. A request naming no move drops the instance whatever it is (an operator's or
/// a benchmark's drop).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropInstance {
    /// The instance.
    pub instance: String,
    /// The move whose cleanup this is. Default: none.
    #[serde(default)]
    pub move_tag: Option<String>,
    /// Only this incarnation. Default: any.
    #[serde(default)]
    pub incarnation: Option<u64>,
}

/// The answer to [`DropInstance`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dropped {
    /// The instance.
    pub dropped: String,
}

/// Makes an empty instance (created if absent) a move's destination, before the steer
/// switches: it buffers stateful signals until the source's manifest arrives. Answer:
/// [`Prepared`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareShadow {
    /// The instance.
    pub instance: String,
    /// Its function.
    pub function: String,
    /// The move preparing it: the shadow carries it, and only that move's cleanup may drop
    /// it. Default: none.
    #[serde(default)]
    pub move_tag: Option<String>,
}

/// The answer to [`PrepareShadow`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    /// The instance.
    pub prepared: String,
    /// The shadow's incarnation.
    pub incarnation: u64,
}

instance_op!(
    /// A move destination's counters. Answer: `handoff_function::runtime::shadow::ShadowStats`, or `null` when the instance is
    /// not a shadow.
    ShadowStats
);
instance_op!(
    /// The sessions a move destination got a create for (what an abort must bring back when
    /// the steer restarted and lost its own list). Answer: [`CreatedKeys`].
    CreatedKeysOf
);

/// The answer to [`CreatedKeysOf`] (`created_keys`): any number of keys.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreatedKeys {
    /// The sessions, as hex keys.
    #[serde(with = "handoff_wire::rpc::hex_keys")]
    pub created: Vec<Bytes>,
}

/// Ends a move destination's shadow mode once settled; it serves from then on. Answer:
/// [`Serving`]; `WRONG_PHASE` while records are still awaited.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishShadow {
    /// The instance.
    pub instance: String,
    /// Give up on records still awaited first (their sender is gone): those sessions are
    /// taken as absent. Default false.
    #[serde(default)]
    pub force: bool,
}

/// The answer to [`FinishShadow`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Serving {
    /// The instance.
    pub serving: String,
    /// With `force`: the sessions whose records never arrived, given up (lost with the
    /// move's source), as hex keys; empty otherwise.
    #[serde(with = "handoff_wire::rpc::hex_keys")]
    pub abandoned: Vec<Bytes>,
}

/// Streams the instance's records with seq above `since_seq` (and tombstones of sessions
/// deleted after it) to a serving instance of the same name on another node, overwriting
/// its sessions: the stop-and-copy and pre-copy baselines. Answer: the [`PushReport`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// The instance.
    pub instance: String,
    /// The destination node's address.
    pub destination: SocketAddr,
    /// Only records changed after this seq (0: everything; starts logging deletions).
    pub since_seq: u64,
    /// Wait until the source has applied this seq first. Default 0.
    #[serde(default)]
    pub after_seq: u64,
    /// The sequence's last push (stops logging deletions). Default false.
    #[serde(default)]
    pub last: bool,
}

/// Replaces the instance's output ruleset; takes effect with the next output. Answer:
/// [`Replaced`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRuleset {
    /// The instance.
    pub instance: String,
    /// The new ruleset.
    pub ruleset: Ruleset,
}

/// The answer to [`SetRuleset`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replaced {
    /// The instance.
    pub replaced: String,
}

instance_op!(
    /// Aborts the source-driven move of the instance this node is running (see [`Migrate`]):
    /// honoured before its cutover, at once even while its copy runs; the `migrate` request
    /// is then answered with the aborted move's report. Answer: [`AbortingMigrate`];
    /// `BAD_REQUEST` when no such move runs here.
    AbortMigrate
);

/// The answer to [`AbortMigrate`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AbortingMigrate {
    /// The instance whose move is asked to abort.
    pub aborting: String,
}

/// Checks a copy plan against what the instance holds now, as `copy_to` would before
/// sending anything (`handoff_state::CopyPlan::check` with the node's copy speed). Nothing
/// changes. Answer: [`CopyPlanned`]; `BAD_REQUEST` with the reason when the plan cannot be
/// met (or is invalid).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCopy {
    /// The instance.
    pub instance: String,
    /// The plan.
    pub plan: handoff_state::CopyPlan,
}

/// The answer to [`PlanCopy`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyPlanned {
    /// Sessions the instance holds.
    pub sessions: u64,
    /// Their bytes (keys and records): what a full copy would send.
    pub bytes: u64,
    /// The rate the copy would be paced at (bytes/s).
    pub rate_bps: u64,
}

handoff_wire::operations! {
    Stats => NodeStats = "stats",
    CreateInstance => Created = "create_instance",
    GetRuleset => Ruleset = "get_ruleset",
    CopyTo => CopyReport = "copy_to",
    ExpectSessions => Expecting = "expect_sessions",
    Migrate => MigrateReport = "migrate",
    DropInstance => Dropped = "drop_instance",
    PrepareShadow => Prepared = "prepare_shadow",
    ShadowStats => Option<handoff_function::runtime::shadow::ShadowStats> = "shadow_stats",
    CreatedKeysOf => CreatedKeys = "created_keys",
    FinishShadow => Serving = "finish_shadow",
    Push => PushReport = "push",
    SetRuleset => Replaced = "set_ruleset",
    AbortMigrate => AbortingMigrate = "abort_migrate",
    PlanCopy => CopyPlanned = "plan_copy",
}
