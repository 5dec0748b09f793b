//! The pure core of one service: seq stamping, where each signal goes, and the move commands.
//! No I/O and no clock: the service loop (`service.rs`) and the simulation (`handoff-sim`)
//! drive this very type, feeding it datagrams, link events, commands and the time, and carrying
//! out the [`Effect`]s it asks for.
//!
//! ```text
//!  datagram/tick ──admit──▶ Admission::Routed{seq, frames for ≤ 2 links} | Held | Dropped(why)
//!  command ───────command──▶ Effect::Reply(now or later), OpenLink, CloseLink, RetireLink,
//!                            PersistRoute, Send (held signals on release)
//!  link event ──link_up/down──▶ (answers a pending begin or rebind on the next poll)
//!  time ──────────poll──────▶ time-outs of a pending begin, rebind or release
//! ```
//!
//! Invariants:
//! - A seq is taken only once the signal has room on every link it goes to, so the seqs each
//!   copy receives are dense; the next seq lies above everything the source reported applied
//!   when it bound (a restarted steer never reuses a seq).
//! - Move mode starts only once both links are bound (the source's last applied seq is known:
//!   the copy's manifest waits for it), and is answered with the first seq under it.
//! - Every step a controller may repeat after a lost answer (begin, cutover, finish, abort
//!   commit, serve) answers the repeat with the first answer.
//! - A service restarted during a move (its route file says so, or cannot be read) routes
//!   nothing and refuses every move command with [`CommandError::RouteLost`] until `rebind`
//!   then `serve` install the route again.
//! - Links are named by [`LinkId`]s the core hands out; events of a link it has replaced are
//!   ignored.
//! - A link is bound to one incarnation of the instance (the first it binds, or the one a
//!   command names). A node that binds again with another incarnation (it restarted, or the
//!   instance was created again) is never taken for the old one: the link counts as down, the
//!   instance is *offline* on that side, and its signals are dropped and counted
//!   ([`Dropped::Offline`]) until [`Command::Recover`] names an owner.

use crate::route::{Delivery, Route, RouteError, RoutePhase};
use bytes::Bytes;
use handoff_function::SignalKind;
use handoff_wire::{SignalFrame, SIGNAL_HANDOVER, SIGNAL_SHADOW};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// The route id a service binds its instance to (one instance per link).
pub const ROUTE: u32 = 1;
/// Sessions a move may create before the steer refuses further creates (the move must abort).
pub const MAX_CREATED_DURING_MOVE: usize = 10_000_000;
/// Signals a hold keeps before shedding.
pub const MAX_HELD: usize = 262_144;

/// Time limits of the core, in microseconds of the shell's clock (the simulation scales them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a destination (or a release target, or a rebound pair) may take to bind.
    pub link_up_us: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            link_up_us: 10_000_000,
        }
    }
}

/// A link the core asked the shell to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

/// Where a route flipped: signals stamped `boundary` and later go to the new side; the old
/// side was last sent `last_sent` (it has drained once it applied that seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Boundary {
    /// The first seq under the new route.
    pub boundary: u64,
    /// The last seq sent to the side the route left.
    pub last_sent: u64,
}

/// What a rebind found: the last seq each node had applied when bound (`None`: not bound in
/// time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rebound {
    /// The move's source.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub source: Option<u64>,
    /// The move's destination.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub destination: Option<u64>,
}

/// A service's route, as reported to a controller.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteStatus {
    /// The instance.
    pub instance: String,
    /// The route's phase (`held` during a stop-and-copy hold).
    pub phase: RoutePhase,
    /// The node serving the instance (a move's source).
    pub node: SocketAddr,
    /// A move's destination, if one is linked.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub destination: Option<SocketAddr>,
    /// Whether the node link is up.
    pub node_up: bool,
    /// The incarnation of the instance the route is bound to on `node` (`null`: not bound
    /// yet).
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub incarnation: Option<u64>,
    /// The incarnation of a move's destination shadow.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub destination_incarnation: Option<u64>,
    /// Why the instance is offline (a side lost the incarnation the route is bound to), or
    /// `null`. An alarm: its signals are dropped and counted (`offline`) until recovered.
    #[serde(deserialize_with = "handoff_wire::rpc::required")]
    pub offline: Option<String>,
    /// Last seq stamped.
    pub last_seq: u64,
    /// Sessions created during the current move.
    pub created_during_move: usize,
    /// Signals held (stop-and-copy only).
    pub held: usize,
    /// The steer restarted during a move and the route is not installed again yet.
    pub route_lost: bool,
}

/// A service's route as kept across restarts (the shell stores it; see [`Effect::PersistRoute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptRoute {
    /// The node serving (a move's source).
    pub node: SocketAddr,
    /// The route's phase.
    pub phase: RoutePhase,
    /// The last seq stamped when the route was kept: a restarted steer stamps above it, so no
    /// seq that reached the other side of a flip (a move's destination before an abort, its
    /// source before a finish) is given out again. Files written before it existed read 0.
    #[serde(default)]
    pub floor: u64,
    /// The incarnation of the instance on `node` the route is bound to (a restarted steer
    /// binds only that one). Files written before it existed read `null`: the first bound.
    #[serde(default)]
    pub incarnation: Option<u64>,
}

/// What the shell found of the kept route at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Nothing kept: serve from the configured node.
    Nothing,
    /// The kept route.
    Route(KeptRoute),
    /// Something kept that cannot be read: the route counts as lost, as if a move had been in
    /// progress (the controller installs it again), never silently the configured node.
    Unreadable,
}

/// A move command (the control listener's requests, typed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Opens a link to the destination node (which must host an empty instance of the same
    /// name) and enters move mode once both links are bound; answers [`Answer::Boundary`]:
    /// the first seq under move mode and the last seq sent to the source before it.
    Begin {
        /// The destination node.
        destination: SocketAddr,
        /// Duplicate creates and every update to both copies.
        abort_safe: bool,
        /// The incarnation of the destination's shadow (the one the move prepared); `None`:
        /// whichever binds first.
        incarnation: Option<u64>,
    },
    /// Flips the route at the next seq; answers the boundary and the last seq sent to the source.
    Cutover,
    /// Makes the destination the owner; the source link is retired (closed after a grace
    /// period that lets its last outputs through). Answers [`Answer::Done`].
    Finish,
    /// Returns the route to the source in one step; answers the sessions created on the
    /// destination meanwhile (lost unless the move was abort-safe).
    Abort,
    /// First step of an abort that moves the sessions created on the destination back: from
    /// now on only they go to the destination. Answers their keys.
    AbortBegin,
    /// Second step: every signal goes to the source again; answers the boundary and the last
    /// seq sent to the destination.
    AbortCommit,
    /// Stops sending: stamped signals wait in the core (at most [`MAX_HELD`]). Answers the last
    /// seq stamped. For stop-and-copy comparisons; a live move never holds.
    Hold,
    /// Ends a hold by making `to` the instance's node: held signals go there in order, then the
    /// service routes there. Answered once the held signals are handed to the new link.
    Release {
        /// The new node.
        to: SocketAddr,
    },
    /// After a restart that lost a move's route: links both nodes again (binding fences off
    /// what the previous run had in flight) and answers the last seq each had applied.
    Rebind {
        /// The move's source.
        source: SocketAddr,
        /// The move's destination.
        destination: SocketAddr,
        /// The incarnations to bind at each (the ones the move worked with; `None`: the
        /// first that binds). Another one counts as not bound.
        incarnations: (Option<u64>, Option<u64>),
    },
    /// After a rebind: `node` owns the instance and signals flow again, at seqs above
    /// everything either node applied. Answers the boundary (and, as `last_sent`, the other
    /// node's last applied seq). Repeatable.
    Serve {
        /// The owner (one of the two rebound nodes).
        node: SocketAddr,
    },
    /// Makes `node` (the route's source or destination) the instance's owner at once, in any
    /// phase, restarted or not: the route serves from it at seqs above everything stamped or
    /// applied, the other side's link is retired, and a move in progress is over. A crash's
    /// way out: a move's destination lost after the cutover (recover on the source), its
    /// source lost before it (roll forward on the destination). `incarnation`: accept this
    /// incarnation on `node` (one that bound since and is not the one the route was bound
    /// to: the operator accepts whatever it holds); `None`: only the bound one. Answers the
    /// boundary and, as `last_sent`, the last seq sent to the side given up.
    Recover {
        /// The new owner.
        node: SocketAddr,
        /// Accept this (new) incarnation of the instance on `node`.
        incarnation: Option<u64>,
    },
    /// The route's state.
    Status,
}

/// A command's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `Begin`, `Cutover`, `AbortCommit`, `Serve`.
    Boundary(Boundary),
    /// `Finish`, `Release`.
    Done,
    /// `Abort`, `AbortBegin`: the sessions created on the destination during the move, sorted.
    Keys(Vec<Bytes>),
    /// `Hold`: the last seq stamped.
    LastSeq(u64),
    /// `Rebind`.
    Rebound(Rebound),
    /// `Status`.
    Status(RouteStatus),
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The steer restarted during a move and the route is not installed again yet.
    #[error("route lost{}: the steer restarted during a move", if *cut_over { " after the cutover" } else { "" })]
    RouteLost {
        /// The kept route said the move had cut over (only the destination may serve).
        cut_over: bool,
    },
    /// The route refused the step.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A move (or a hold) is already in progress.
    #[error("a move is already in progress")]
    InProgress,
    /// `Rebind` or `Serve` while the route is not lost.
    #[error("the route is not lost: nothing to {0}")]
    NotLost(&'static str),
    /// `Serve` before the rebind completed.
    #[error("the rebind has not completed")]
    RebindIncomplete,
    /// `Serve` of the source after a cutover.
    #[error("the route had cut over: only the destination may serve")]
    OnlyDestinationMayServe,
    /// `Serve` of a node that is not one of the rebound pair.
    #[error("{0} is not one of the rebound nodes")]
    NotRebound(SocketAddr),
    /// A link the command needs is down.
    #[error("the link to {0} is down")]
    LinkDown(SocketAddr),
    /// The node hosts another incarnation of the instance than the route is bound to.
    #[error("{node} hosts incarnation {found} of the instance, not {bound} (it restarted or the instance was created again); recover naming incarnation {found} to accept what it holds")]
    OtherIncarnation {
        /// The node.
        node: SocketAddr,
        /// The incarnation the route is bound to.
        bound: u64,
        /// The one the node hosts now.
        found: u64,
    },
    /// `Recover` of a node that is neither the route's source nor its destination.
    #[error("{0} is neither the route's node nor a move's destination")]
    NotOnRoute(SocketAddr),
    /// A node did not bind in time.
    #[error("node {0} did not accept the route in time")]
    NotBound(SocketAddr),
    /// A newer request of the same kind replaced this one.
    #[error("superseded by a newer {0}")]
    Superseded(&'static str),
    /// The move this answer waited for was aborted.
    #[error("aborted")]
    Aborted,
    /// `Hold` during a move or another hold.
    #[error("cannot hold during a move or another hold")]
    CannotHold,
    /// `Release` with nothing held, or a release already under way.
    #[error("nothing held, or a release is under way")]
    NothingHeld,
}

impl CommandError {
    /// The stable wire code of this refusal (`handoff_wire::code`).
    pub fn code(&self) -> u16 {
        use handoff_wire::code;
        match self {
            Self::RouteLost { cut_over: false } => code::ROUTE_LOST,
            Self::RouteLost { cut_over: true } => code::ROUTE_LOST_CUT_OVER,
            Self::Route(_)
            | Self::InProgress
            | Self::NotLost(_)
            | Self::RebindIncomplete
            | Self::OnlyDestinationMayServe
            | Self::NotRebound(_)
            | Self::CannotHold
            | Self::NothingHeld => code::WRONG_PHASE,
            Self::LinkDown(_) | Self::NotBound(_) => code::NOT_REACHABLE,
            Self::OtherIncarnation { .. } => code::OFFLINE,
            Self::NotOnRoute(_) => code::BAD_REQUEST,
            Self::Superseded(_) | Self::Aborted => code::SUPERSEDED,
        }
    }
}

/// Which counter a dropped signal adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCounter {
    /// `SteerStats::shed`.
    Shed,
    /// `SteerStats::no_link`.
    NoLink,
    /// `SteerStats::unrouted`.
    Unrouted,
    /// `SteerStats::offline`.
    Offline,
}

/// A signal as the shell classified it.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// Its kind.
    pub kind: SignalKind,
    /// Its session key (empty for stateless signals and ticks).
    pub key: Bytes,
    /// The datagram (empty for ticks).
    pub payload: Bytes,
    /// Where it came from (the service address for ticks).
    pub client: SocketAddr,
}

/// Why a signal was not stamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The steer restarted during a move and the route is not installed again.
    Unrouted,
    /// A link it must go to is down.
    NoLink,
    /// The instance is offline on a side it must go to: the node there lost the incarnation
    /// the route is bound to.
    Offline,
    /// A link it must go to has no room (or a hold is full).
    Shed,
    /// The route refused it (too many sessions created during the move).
    Refused(RouteError),
    /// A node claims to have applied `u64::MAX`: no seq is left.
    SeqExhausted,
}

impl Dropped {
    /// The counter a drop of a signal of `kind` adds to (`None`: not counted; a tick no link
    /// carries reaches no instance and no client waits for it).
    pub fn counter(&self, kind: SignalKind) -> Option<DropCounter> {
        let tick = kind == SignalKind::Tick;
        match self {
            Self::Unrouted if tick => None,
            Self::Unrouted => Some(DropCounter::Unrouted),
            Self::NoLink | Self::Offline if tick => None,
            Self::Offline => Some(DropCounter::Offline),
            Self::NoLink | Self::SeqExhausted => Some(DropCounter::NoLink),
            Self::Shed | Self::Refused(_) => Some(DropCounter::Shed),
        }
    }
}

/// What became of a signal.
#[derive(Clone, Debug)]
// Returned by value once per signal: boxing the large variant would allocate per signal,
// which is what the fixed two-slot `Frames` avoids.
#[allow(clippy::large_enum_variant)]
pub enum Admission {
    /// Stamped `seq`: each frame goes to its link, in order.
    Routed {
        /// The seq.
        seq: u64,
        /// Where it went.
        delivery: Delivery,
        /// One or two frames (no allocation per signal).
        frames: Frames,
    },
    /// Stamped `seq` and held (stop-and-copy).
    Held {
        /// The seq.
        seq: u64,
    },
    /// Not stamped.
    Dropped(Dropped),
}

/// The one or two frames a routed signal becomes, each with its link, in sending order.
#[derive(Clone, Debug)]
pub struct Frames {
    first: (LinkId, SignalFrame),
    second: Option<(LinkId, SignalFrame)>,
}

impl IntoIterator for Frames {
    type Item = (LinkId, SignalFrame);
    type IntoIter = std::iter::Chain<
        std::iter::Once<(LinkId, SignalFrame)>,
        std::option::IntoIter<(LinkId, SignalFrame)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self.first).chain(self.second)
    }
}

/// What the core asks its shell to do.
#[derive(Debug)]
pub enum Effect<R> {
    /// Answer a command (now, or one that waited for a link).
    Reply(R, Result<Answer, CommandError>),
    /// Open a link to `node`, bind the instance, and report [`ServiceCore::link_up`] with the
    /// node's last applied seq (and [`ServiceCore::link_down`] when it fails).
    OpenLink {
        /// Its id.
        id: LinkId,
        /// The node.
        node: SocketAddr,
    },
    /// Close a link now (its queue is dropped).
    CloseLink(LinkId),
    /// Close a link after a grace period that lets its last outputs through.
    RetireLink(LinkId),
    /// Keep the route (durably, before the answer that follows it leaves).
    PersistRoute(KeptRoute),
    /// Queue a held signal on a link (the core only asks while the link has room).
    Send(LinkId, SignalFrame),
}

impl Slot {
    /// The refusal of a step onto this side, if it lost the incarnation it was bound to.
    fn lost_incarnation(&self) -> Option<CommandError> {
        self.foreign
            .map(|(found, _)| CommandError::OtherIncarnation {
                node: self.node,
                bound: self.incarnation.unwrap_or_default(),
                found,
            })
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    id: LinkId,
    node: SocketAddr,
    up: bool,
    /// The last seq the node had applied when the link last bound.
    base: u64,
    /// The incarnation the link is bound to (`None`: the first that binds).
    incarnation: Option<u64>,
    /// Another incarnation bound since (the node lost the one the route is bound to), and
    /// its last applied seq.
    foreign: Option<(u64, u64)>,
}

/// The last seq sent on each link and the answers a repeated command gets.
#[derive(Clone, Copy, Debug, Default)]
struct Sent {
    source: u64,
    dest: u64,
    /// The current move's route flip (cutover, abort commit or serve).
    flip: Option<Boundary>,
    /// The last move finished (a repeated finish is answered, not refused).
    finished: bool,
    /// The current move's answer to `begin`.
    begun: Option<Boundary>,
}

struct PendingBegin<R> {
    abort_safe: bool,
    since_us: u64,
    reply: R,
}

struct PendingRebind<R> {
    since_us: u64,
    reply: R,
}

struct PendingRecover<R> {
    slot: Slot,
    since_us: u64,
    reply: R,
}

struct Hold<R> {
    queue: VecDeque<SignalFrame>,
    target: Option<(Slot, u64)>,
    reply: Option<R>,
}

/// The core of one service; `R` is how the shell answers a command (a channel, or the
/// simulation's request id).
pub struct ServiceCore<R> {
    instance: String,
    timeouts: Timeouts,
    route: Route,
    seq: u64,
    next_link: u64,
    source: Slot,
    dest: Option<Slot>,
    sent: Sent,
    pending: Option<PendingBegin<R>>,
    rebind: Option<PendingRebind<R>>,
    /// A recovery onto a node off the route, waiting for its link to bind.
    recovering: Option<PendingRecover<R>>,
    /// `Some(cut_over)` while the route is lost.
    lost: Option<bool>,
    hold: Option<Hold<R>>,
    effects: Vec<Effect<R>>,
}

impl<R> ServiceCore<R> {
    /// A service for `instance`, configured to be served by `node`, starting from what was
    /// kept of its route. The first effect opens the source link.
    pub fn new(instance: impl Into<String>, node: SocketAddr, kept: Kept, t: Timeouts) -> Self {
        let first = match kept {
            Kept::Route(k) => k.node,
            Kept::Nothing | Kept::Unreadable => node,
        };
        let lost = match kept {
            Kept::Nothing => None,
            Kept::Route(k) if k.phase == RoutePhase::Serving => None,
            Kept::Route(k) => Some(k.phase == RoutePhase::CutOver),
            // Unknown: the controller decides from its own record of the move.
            Kept::Unreadable => Some(false),
        };
        let instance = instance.into();
        if let Some(cut_over) = lost {
            tracing::warn!(%instance, cut_over, "restarted during a move: signals are not routed until the route is installed again");
        }
        let mut core = Self {
            instance,
            timeouts: t,
            route: Route::new(MAX_CREATED_DURING_MOVE),
            seq: match kept {
                Kept::Route(k) => k.floor,
                Kept::Nothing | Kept::Unreadable => 0,
            },
            next_link: 0,
            source: Slot {
                id: LinkId(0),
                node: first,
                up: false,
                base: 0,
                incarnation: None,
                foreign: None,
            },
            dest: None,
            sent: Sent {
                // A route kept as serving: any move it was part of has finished, so a finish
                // asked again (its answer lost in the restart) is answered, not refused.
                finished: matches!(kept, Kept::Route(k) if k.phase == RoutePhase::Serving),
                ..Sent::default()
            },
            pending: None,
            rebind: None,
            recovering: None,
            lost,
            hold: None,
            effects: Vec::new(),
        };
        core.source = core.open(first);
        if let Kept::Route(k) = kept {
            core.source.incarnation = k.incarnation;
        }
        core
    }

    /// The effects asked for since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect<R>> {
        std::mem::take(&mut self.effects)
    }

    /// The last seq stamped.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Whether a command or a hold waits on a link or a time-out ([`ServiceCore::poll`] has
    /// work).
    pub fn needs_poll(&self) -> bool {
        self.pending.is_some()
            || self.rebind.is_some()
            || self.recovering.is_some()
            || self.hold.as_ref().is_some_and(|h| h.target.is_some())
    }

    /// Whether the route is lost (nothing is routed; ticks need not be injected).
    pub fn route_lost(&self) -> bool {
        self.lost.is_some()
    }

    /// The route's phase.
    pub fn phase(&self) -> RoutePhase {
        if self.hold.is_some() {
            RoutePhase::Held
        } else {
            self.route.phase()
        }
    }

    fn open(&mut self, node: SocketAddr) -> Slot {
        self.next_link += 1;
        let id = LinkId(self.next_link);
        self.effects.push(Effect::OpenLink { id, node });
        Slot {
            id,
            node,
            up: false,
            base: 0,
            incarnation: None,
            foreign: None,
        }
    }

    fn persist(&mut self, node: SocketAddr, phase: RoutePhase) {
        let floor = self.seq;
        let incarnation = if node == self.source.node {
            self.source.incarnation
        } else {
            self.dest
                .filter(|d| d.node == node)
                .and_then(|d| d.incarnation)
        };
        self.effects.push(Effect::PersistRoute(KeptRoute {
            node,
            phase,
            floor,
            incarnation,
        }));
    }

    fn reply(&mut self, to: R, r: Result<Answer, CommandError>) {
        self.effects.push(Effect::Reply(to, r));
    }

    fn slot_mut(&mut self, id: LinkId) -> Option<&mut Slot> {
        if let Some(p) = self.recovering.as_mut().filter(|p| p.slot.id == id) {
            return Some(&mut p.slot);
        }
        if self.source.id == id {
            return Some(&mut self.source);
        }
        if let Some(d) = self.dest.as_mut().filter(|d| d.id == id) {
            return Some(d);
        }
        match self.hold.as_mut().and_then(|h| h.target.as_mut()) {
            Some((t, _)) if t.id == id => Some(t),
            _ => None,
        }
    }

    /// A link bound its instance; `base` is the last seq the node had applied, `incarnation`
    /// the instance's incarnation. Another incarnation than the one the link is bound to is
    /// never taken for it: the link stays down and the instance is offline on that side.
    pub fn link_up(&mut self, id: LinkId, base: u64, incarnation: u64) {
        let instance = self.instance.clone();
        let is_source = self.source.id == id;
        let Some(s) = self.slot_mut(id) else { return };
        match s.incarnation {
            Some(bound) if bound != incarnation => {
                if s.foreign.map(|f| f.0) != Some(incarnation) {
                    tracing::error!(%instance, node = %s.node, bound, found = incarnation,
                        "ALARM: the node lost the incarnation the route is bound to (it restarted \
                         or the instance was created again); the instance is offline there until \
                         it is recovered");
                }
                s.up = false;
                s.foreign = Some((incarnation, base));
            }
            first => {
                s.up = true;
                s.base = base;
                s.foreign = None;
                s.incarnation = Some(incarnation);
                if first.is_none() && is_source && self.lost.is_none() {
                    // Keep it, so a restarted steer binds this incarnation only.
                    let (node, phase) = (self.source.node, self.route.phase());
                    if self.hold.is_none() && phase == RoutePhase::Serving {
                        self.persist(node, phase);
                    }
                }
            }
        }
    }

    /// Whether a side of the route lost the incarnation it was bound to: `(source,
    /// destination)`.
    pub fn offline(&self) -> (bool, bool) {
        (
            self.source.foreign.is_some(),
            self.dest.is_some_and(|d| d.foreign.is_some()),
        )
    }

    /// A link failed (it reconnects by itself and reports up again).
    pub fn link_down(&mut self, id: LinkId) {
        if let Some(s) = self.slot_mut(id) {
            s.up = false;
        }
    }

    /// Stamps and routes one signal (or tick) at `now_us` (the instance's clock: µs since the
    /// Unix epoch); `has_room` says whether a link's queue can take one more frame.
    pub fn admit(
        &mut self,
        s: Inbound,
        now_us: u64,
        has_room: impl Fn(LinkId) -> bool,
    ) -> Admission {
        if self.lost.is_some() {
            // Restarted during a move: where this signal may go is unknown until the
            // controller installs the route again. Dropped unstamped; the client retransmits.
            return Admission::Dropped(Dropped::Unrouted);
        }
        let Some(next) = self.seq.max(self.source.base).checked_add(1) else {
            return Admission::Dropped(Dropped::SeqExhausted);
        };
        if let Some(h) = self.hold.as_mut() {
            if h.queue.len() >= MAX_HELD {
                return Admission::Dropped(Dropped::Shed);
            }
            self.seq = next;
            h.queue.push_back(stamp(next, now_us, s));
            return Admission::Held { seq: next };
        }
        let delivery = self.route.preview(next, s.kind, &s.key);
        let (to_source, to_dest) = match delivery {
            Delivery::Source => (true, false),
            Delivery::Destination => (false, true),
            Delivery::Both | Delivery::HandOver => (true, true),
        };
        let dest = self.dest.filter(|_| to_dest);
        if (to_source && self.source.foreign.is_some())
            || (to_dest && dest.is_some_and(|d| d.foreign.is_some()))
        {
            return Admission::Dropped(Dropped::Offline);
        }
        if (to_source && !self.source.up) || (to_dest && !dest.is_some_and(|d| d.up)) {
            return Admission::Dropped(Dropped::NoLink);
        }
        // Take a seq only once the signal has a place in every queue it goes to: seqs stay
        // dense on each copy.
        if (to_source && !has_room(self.source.id)) || dest.is_some_and(|d| !has_room(d.id)) {
            return Admission::Dropped(Dropped::Shed);
        }
        if let Err(e) = self.route.decide(next, s.kind, &s.key) {
            // Too many sessions created during the move: the create is refused (the
            // operator's controller aborts the move on this counter).
            tracing::warn!(error = %e, "move route refused a signal");
            return Admission::Dropped(Dropped::Refused(e));
        }
        self.seq = next;
        let frame = stamp(next, now_us, s);
        let src = self.source.id;
        let frames = match (delivery, dest) {
            (Delivery::HandOver, Some(d)) => Frames {
                first: (
                    src,
                    SignalFrame {
                        flags: SIGNAL_HANDOVER,
                        payload: Bytes::new(),
                        ..frame.clone()
                    },
                ),
                second: Some((d.id, frame)),
            },
            (Delivery::Both, Some(d)) => Frames {
                first: (
                    d.id,
                    SignalFrame {
                        flags: SIGNAL_SHADOW,
                        ..frame.clone()
                    },
                ),
                second: Some((src, frame)),
            },
            (Delivery::Destination, Some(d)) => Frames {
                first: (d.id, frame),
                second: None,
            },
            _ => Frames {
                first: (src, frame),
                second: None,
            },
        };
        if to_source {
            self.sent.source = next;
        }
        if to_dest {
            self.sent.dest = next;
        }
        Admission::Routed {
            seq: next,
            delivery,
            frames,
        }
    }

    /// Time-outs and answers that waited for links, at `now_us` (the shell's monotonic clock);
    /// `room` says how many more frames a link's queue takes (for releasing a hold).
    pub fn poll(&mut self, now_us: u64, room: impl Fn(LinkId) -> usize) {
        if let Some(r) = self.rebind.take() {
            let dest_up = self.dest.is_some_and(|d| d.up);
            if (self.source.up && dest_up)
                || now_us.saturating_sub(r.since_us) > self.timeouts.link_up_us
            {
                let b = Rebound {
                    source: self.source.up.then_some(self.source.base),
                    destination: self.dest.filter(|d| d.up).map(|d| d.base),
                };
                tracing::info!(instance = %self.instance, ?b, "route rebound");
                self.reply(r.reply, Ok(Answer::Rebound(b)));
            } else {
                self.rebind = Some(r);
            }
        }
        self.release_step(now_us, room);
        if let Some(p) = self.recovering.take() {
            let slot = p.slot;
            if slot.up {
                let mut retire = vec![self.source];
                retire.extend(self.dest);
                let r = self.take_over(slot, retire, self.sent.source.max(self.sent.dest));
                self.reply(p.reply, r);
            } else if slot.foreign.is_some()
                || now_us.saturating_sub(p.since_us) > self.timeouts.link_up_us
            {
                self.effects.push(Effect::CloseLink(slot.id));
                let e = match slot.foreign {
                    Some((found, _)) => CommandError::OtherIncarnation {
                        node: slot.node,
                        bound: slot.incarnation.unwrap_or_default(),
                        found,
                    },
                    None => CommandError::NotBound(slot.node),
                };
                self.reply(p.reply, Err(e));
            } else {
                self.recovering = Some(p);
            }
        }
        if let Some(p) = self.pending.take() {
            // The source's link must be bound too: after a restart its last applied seq (what
            // the copy's manifest must wait for) is known only then.
            if self.dest.is_some_and(|d| d.up) && self.source.up {
                let first = self.seq.max(self.source.base) + 1;
                let last_sent = self.sent.source.max(self.source.base);
                let r = self
                    .route
                    .begin_move(first, p.abort_safe)
                    .map(|()| Boundary {
                        boundary: first,
                        last_sent,
                    });
                if let Ok(b) = r {
                    self.persist(self.source.node, RoutePhase::Moving);
                    self.sent.begun = Some(b);
                }
                tracing::info!(instance = %self.instance, first_seq = first, "move mode on");
                self.reply(p.reply, r.map(Answer::Boundary).map_err(CommandError::from));
            } else if now_us.saturating_sub(p.since_us) > self.timeouts.link_up_us {
                // Name the node that did not bind (the source's link may be the one down).
                let node = match self.dest {
                    Some(d) if !d.up => d.node,
                    _ => self.source.node,
                };
                if let Some(d) = self.dest.take() {
                    self.effects.push(Effect::CloseLink(d.id));
                }
                self.reply(p.reply, Err(CommandError::NotBound(node)));
            } else {
                self.pending = Some(p);
            }
        }
    }

    /// Moves held signals onto the release target's link as room allows; once all are there,
    /// the target becomes the source.
    fn release_step(&mut self, now_us: u64, room: impl Fn(LinkId) -> usize) {
        let Some(h) = self.hold.as_mut() else { return };
        let Some((target, since)) = h.target else {
            return;
        };
        if !target.up {
            if now_us.saturating_sub(since) > self.timeouts.link_up_us {
                // The hold stays; the answer says why.
                h.target = None;
                let reply = h.reply.take();
                self.effects.push(Effect::CloseLink(target.id));
                if let Some(r) = reply {
                    self.reply(r, Err(CommandError::NotBound(target.node)));
                }
            }
            return;
        }
        let n = room(target.id).min(h.queue.len());
        let frames: Vec<SignalFrame> = h.queue.drain(..n).collect();
        let done = h.queue.is_empty();
        for f in frames {
            self.effects.push(Effect::Send(target.id, f));
        }
        if !done {
            return;
        }
        let h = self.hold.take().expect("hold present");
        let old = std::mem::replace(&mut self.source, target);
        self.effects.push(Effect::RetireLink(old.id));
        self.persist(target.node, RoutePhase::Serving);
        tracing::info!(instance = %self.instance, node = %target.node, "hold released");
        if let Some(r) = h.reply {
            self.reply(r, Ok(Answer::Done));
        }
    }

    /// The route's state.
    pub fn status(&self) -> RouteStatus {
        RouteStatus {
            instance: self.instance.clone(),
            phase: self.phase(),
            node: self.source.node,
            destination: self.dest.map(|d| d.node),
            node_up: self.source.up,
            incarnation: self.source.incarnation,
            destination_incarnation: self.dest.and_then(|d| d.incarnation),
            offline: self.offline_reason(),
            last_seq: self.seq,
            created_during_move: self.route.created_during_move(),
            held: self.hold.as_ref().map_or(0, |h| h.queue.len()),
            route_lost: self.lost.is_some(),
        }
    }

    fn offline_reason(&self) -> Option<String> {
        let side = |what: &str, s: &Slot| {
            s.foreign.map(|(found, _)| {
                format!(
                    "the {what} {} lost incarnation {} (it hosts {found} now)",
                    s.node,
                    s.incarnation.unwrap_or_default()
                )
            })
        };
        let mut why: Vec<String> = Vec::new();
        why.extend(side("node", &self.source));
        if let Some(d) = &self.dest {
            why.extend(side("move destination", d));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn retire_dest(&mut self) {
        if let Some(d) = self.dest.take() {
            self.effects.push(Effect::RetireLink(d.id));
        }
    }

    /// Carries out a command at `now_us` (the shell's monotonic clock); its answer is an
    /// [`Effect::Reply`] to `reply`, now or once the links it waits for are up.
    pub fn command(&mut self, c: Command, reply: R, now_us: u64) {
        if let Some(cut_over) = self.lost {
            if !matches!(
                c,
                Command::Rebind { .. } | Command::Serve { .. } | Command::Status
            ) {
                self.reply(reply, Err(CommandError::RouteLost { cut_over }));
                return;
            }
        }
        let r = match c {
            Command::Rebind {
                source,
                destination,
                incarnations,
            } => {
                if self.lost.is_none() {
                    Err(CommandError::NotLost("rebind"))
                } else {
                    // Fresh links: binding fences off any earlier binding of the instance on
                    // each node, and each answers the last seq it applied.
                    self.effects.push(Effect::CloseLink(self.source.id));
                    self.source = self.open(source);
                    self.source.incarnation = incarnations.0;
                    if let Some(d) = self.dest.take() {
                        self.effects.push(Effect::CloseLink(d.id));
                    }
                    let mut d = self.open(destination);
                    d.incarnation = incarnations.1;
                    self.dest = Some(d);
                    if let Some(old) = self.rebind.take() {
                        self.reply(old.reply, Err(CommandError::Superseded("rebind")));
                    }
                    self.rebind = Some(PendingRebind {
                        since_us: now_us,
                        reply,
                    });
                    return;
                }
            }
            Command::Serve { node } => self.serve(node),
            Command::Recover { node, incarnation }
                if node != self.source.node && self.dest.is_none_or(|d| d.node != node) =>
            {
                // Off the route (a move's source the route already left): a new link, bound
                // only to the incarnation named.
                let Some(want) = incarnation else {
                    self.reply(reply, Err(CommandError::NotOnRoute(node)));
                    return;
                };
                let mut slot = self.open(node);
                slot.incarnation = Some(want);
                if let Some(old) = self.recovering.replace(PendingRecover {
                    slot,
                    since_us: now_us,
                    reply,
                }) {
                    self.effects.push(Effect::CloseLink(old.slot.id));
                    self.reply(old.reply, Err(CommandError::Superseded("recover")));
                }
                return;
            }
            Command::Recover { node, incarnation } => self.recover(node, incarnation),
            Command::Begin {
                destination,
                abort_safe,
                incarnation,
            } => {
                // A repeat of this very move (its answer was lost): the same answer, or, while
                // the destination link still comes up, the answer when it does.
                if self.dest.is_some_and(|d| d.node == destination) && self.hold.is_none() {
                    if let Some(p) = self.pending.as_mut() {
                        let old = std::mem::replace(&mut p.reply, reply);
                        self.reply(old, Err(CommandError::Superseded("begin")));
                        return;
                    }
                    if let (Some(b), RoutePhase::Moving) = (self.sent.begun, self.route.phase()) {
                        self.reply(reply, Ok(Answer::Boundary(b)));
                        return;
                    }
                }
                if self.dest.is_some() || self.pending.is_some() || self.hold.is_some() {
                    Err(CommandError::InProgress)
                } else {
                    self.sent.begun = None;
                    let mut d = self.open(destination);
                    d.incarnation = incarnation;
                    self.dest = Some(d);
                    self.sent.flip = None;
                    self.sent.finished = false;
                    self.pending = Some(PendingBegin {
                        abort_safe,
                        since_us: now_us,
                        reply,
                    });
                    return;
                }
            }
            Command::Cutover => {
                if let (Some(b), RoutePhase::CutOver) = (self.sent.flip, self.route.phase()) {
                    Ok(Answer::Boundary(b))
                } else if let Some(e) = self.dest.and_then(|d| d.lost_incarnation()) {
                    // Never flip onto an incarnation that is not the move's shadow.
                    Err(e)
                } else {
                    let boundary = self.seq + 1;
                    let r = self.route.cutover(boundary, self.seq).map(|()| Boundary {
                        boundary,
                        last_sent: self.sent.source,
                    });
                    self.sent.flip = r.as_ref().ok().copied();
                    if r.is_ok() {
                        self.persist(self.source.node, RoutePhase::CutOver);
                        tracing::info!(instance = %self.instance, boundary, "cutover");
                    }
                    r.map(Answer::Boundary).map_err(CommandError::from)
                }
            }
            Command::Finish => {
                if self.sent.finished
                    && self.route.phase() == RoutePhase::Serving
                    && self.dest.is_none()
                {
                    Ok(Answer::Done)
                } else if let Some(e) = self.dest.and_then(|d| d.lost_incarnation()) {
                    // Never make an incarnation the owner that is not the one cut over to.
                    Err(e)
                } else if let Some(d) = self.dest.filter(|d| !d.up) {
                    // Nor a node that is not there: the move waits (or goes offline).
                    Err(CommandError::LinkDown(d.node))
                } else {
                    let r = self.route.finish();
                    if r.is_ok() {
                        if let Some(d) = self.dest.take() {
                            let old = std::mem::replace(&mut self.source, d);
                            self.effects.push(Effect::RetireLink(old.id));
                        }
                        self.sent.source = self.sent.dest;
                        self.sent.flip = None;
                        self.sent.finished = true;
                        self.persist(self.source.node, RoutePhase::Serving);
                    }
                    r.map(|()| Answer::Done).map_err(CommandError::from)
                }
            }
            Command::Abort => {
                if let Some(p) = self.pending.take() {
                    self.reply(p.reply, Err(CommandError::Aborted));
                    self.retire_dest();
                    Ok(Answer::Keys(Vec::new()))
                } else {
                    let r = self.route.abort();
                    if r.is_ok() {
                        self.retire_dest();
                        self.persist(self.source.node, RoutePhase::Serving);
                    }
                    r.map(Answer::Keys).map_err(CommandError::from)
                }
            }
            Command::AbortBegin => {
                if let Some(p) = self.pending.take() {
                    // Move mode never started: nothing went to the destination.
                    self.reply(p.reply, Err(CommandError::Aborted));
                    self.retire_dest();
                    Ok(Answer::Keys(Vec::new()))
                } else {
                    self.route
                        .abort_begin()
                        .map(Answer::Keys)
                        .map_err(CommandError::from)
                }
            }
            Command::AbortCommit => {
                if let (Some(b), RoutePhase::Serving) = (self.sent.flip, self.route.phase()) {
                    Ok(Answer::Boundary(b))
                } else {
                    let r = self.route.abort_commit().map(|()| Boundary {
                        boundary: self.seq + 1,
                        last_sent: self.sent.dest,
                    });
                    self.sent.flip = r.as_ref().ok().copied();
                    if let Ok(b) = r {
                        tracing::info!(instance = %self.instance, boundary = b.boundary, "move aborted");
                        self.retire_dest();
                        self.persist(self.source.node, RoutePhase::Serving);
                    }
                    r.map(Answer::Boundary).map_err(CommandError::from)
                }
            }
            Command::Hold => {
                if self.route.phase() != RoutePhase::Serving
                    || self.hold.is_some()
                    || self.pending.is_some()
                {
                    Err(CommandError::CannotHold)
                } else {
                    self.hold = Some(Hold {
                        queue: VecDeque::new(),
                        target: None,
                        reply: None,
                    });
                    tracing::info!(instance = %self.instance, last_seq = self.seq, "holding signals");
                    Ok(Answer::LastSeq(self.seq))
                }
            }
            Command::Release { to } => {
                let free = self
                    .hold
                    .as_ref()
                    .is_some_and(|h| h.target.is_none() && h.reply.is_none());
                if free {
                    let slot = self.open(to);
                    if let Some(h) = self.hold.as_mut() {
                        h.target = Some((slot, now_us));
                        h.reply = Some(reply);
                    }
                    return;
                }
                Err(CommandError::NothingHeld)
            }
            Command::Status => Ok(Answer::Status(self.status())),
        };
        self.reply(reply, r);
    }

    fn recover(
        &mut self,
        node: SocketAddr,
        incarnation: Option<u64>,
    ) -> Result<Answer, CommandError> {
        let (mut owner, other) = if node == self.source.node {
            (self.source, self.dest)
        } else if let Some(d) = self.dest.filter(|d| d.node == node) {
            (d, Some(self.source))
        } else {
            return Err(CommandError::NotOnRoute(node));
        };
        match (owner.foreign, incarnation) {
            (Some((found, base)), Some(accept)) if found == accept => {
                owner.incarnation = Some(found);
                owner.base = base;
                owner.foreign = None;
                owner.up = true;
            }
            (Some((found, _)), _) => {
                return Err(CommandError::OtherIncarnation {
                    node,
                    bound: owner.incarnation.unwrap_or_default(),
                    found,
                })
            }
            (None, Some(accept)) if owner.incarnation != Some(accept) => {
                return Err(CommandError::OtherIncarnation {
                    node,
                    bound: owner.incarnation.unwrap_or_default(),
                    found: accept,
                })
            }
            (None, _) => {}
        }
        if !owner.up {
            return Err(CommandError::LinkDown(node));
        }
        let last_sent = match other {
            Some(o) if o.id == self.source.id => self.sent.source,
            Some(_) => self.sent.dest,
            None => 0,
        };
        self.take_over(owner, other.into_iter().collect(), last_sent)
    }

    /// Makes `owner` the instance's node at once: whatever waited is answered, `retire`d
    /// links close after their grace, a move in progress is over.
    fn take_over(
        &mut self,
        owner: Slot,
        retire: Vec<Slot>,
        last_sent: u64,
    ) -> Result<Answer, CommandError> {
        let node = owner.node;
        if let Some(p) = self.recovering.take() {
            // A recovery onto another node was waiting for its link: this one replaces it.
            if p.slot.id != owner.id {
                self.effects.push(Effect::CloseLink(p.slot.id));
            }
            self.reply(p.reply, Err(CommandError::Superseded("recover")));
        }
        if let Some(p) = self.pending.take() {
            self.reply(p.reply, Err(CommandError::Aborted));
        }
        if let Some(r) = self.rebind.take() {
            self.reply(r.reply, Err(CommandError::Superseded("rebind")));
        }
        if let Some(h) = self.hold.take() {
            if let Some(r) = h.reply {
                self.reply(r, Err(CommandError::Aborted));
            }
        }
        for o in retire.iter().filter(|o| o.id != owner.id) {
            self.effects.push(Effect::RetireLink(o.id));
        }
        let top = self.seq.max(owner.base);
        self.seq = top;
        self.source = owner;
        self.dest = None;
        self.route = Route::new(MAX_CREATED_DURING_MOVE);
        let b = Boundary {
            boundary: top + 1,
            last_sent,
        };
        self.sent.source = top;
        self.sent.dest = 0;
        self.sent.flip = Some(b);
        self.sent.begun = None;
        self.sent.finished = true;
        self.lost = None;
        self.persist(node, RoutePhase::Serving);
        tracing::warn!(instance = %self.instance, %node, boundary = b.boundary, incarnation = ?owner.incarnation,
            "route recovered: serving from this node");
        Ok(Answer::Boundary(b))
    }

    fn serve(&mut self, node: SocketAddr) -> Result<Answer, CommandError> {
        if self.lost.is_none() {
            // A repeat after a lost answer.
            return match self.sent.flip {
                Some(b) if self.source.node == node && self.dest.is_none() => {
                    Ok(Answer::Boundary(b))
                }
                _ => Err(CommandError::NotLost("serve")),
            };
        }
        let Some(dest) = self.dest.filter(|_| self.rebind.is_none()) else {
            return Err(CommandError::RebindIncomplete);
        };
        if self.lost == Some(true) && node != dest.node {
            return Err(CommandError::OnlyDestinationMayServe);
        }
        let (owner, other) = if node == dest.node {
            (dest, self.source)
        } else if node == self.source.node {
            (self.source, dest)
        } else {
            return Err(CommandError::NotRebound(node));
        };
        if !owner.up {
            return Err(CommandError::LinkDown(node));
        }
        self.effects.push(Effect::RetireLink(other.id));
        self.source = owner;
        self.dest = None;
        self.route = Route::new(MAX_CREATED_DURING_MOVE);
        let top = self.seq.max(self.source.base).max(other.base);
        self.seq = top;
        let b = Boundary {
            boundary: top + 1,
            last_sent: other.base,
        };
        self.sent.source = top;
        self.sent.dest = 0;
        self.sent.flip = Some(b);
        // A finish repeated by the controller is answered.
        self.sent.finished = true;
        self.lost = None;
        self.persist(node, RoutePhase::Serving);
        tracing::info!(instance = %self.instance, %node, boundary = b.boundary, "route installed again");
        Ok(Answer::Boundary(b))
    }
}

fn stamp(seq: u64, now_us: u64, s: Inbound) -> SignalFrame {
    SignalFrame {
        route: ROUTE,
        seq,
        now_us,
        kind: s.kind as u8,
        flags: 0,
        client: s.client,
        key: s.key,
        payload: s.payload,
    }
}

#[cfg(test)]
mod tests;
