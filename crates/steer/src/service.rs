//! One service: its UDP receive loop, seq stamping and tick injection.

use crate::link::Link;
use crate::route::{Delivery, Route};
use bytes::Bytes;
use handoff_function::runtime::Classifier;
use handoff_function::SignalKind;
use handoff_wire::{SignalFrame, SIGNAL_HANDOVER, SIGNAL_SHADOW};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// One service address and the instance behind it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The instance served, e.g. `mme-1`.
    pub instance: String,
    /// Its function, e.g. `vmme`.
    pub function: String,
    /// The UDP service address clients send to.
    pub listen: SocketAddr,
    /// The node hosting the instance (its TCP address).
    pub node: SocketAddr,
}

/// Counters of one service. Relaxed atomics: each is only ever added to.
#[derive(Debug, Default)]
pub struct SteerStats {
    /// Datagrams classified, stamped and queued for the node.
    pub admitted: AtomicU64,
    /// Datagrams dropped because the classifier refused them.
    pub malformed: AtomicU64,
    /// Datagrams dropped because the node link's queue was full.
    pub shed: AtomicU64,
    /// Datagrams dropped because the node link was down.
    pub no_link: AtomicU64,
    /// Ticks injected.
    pub ticks: AtomicU64,
    /// Outputs relayed to clients.
    pub outputs_relayed: AtomicU64,
    /// Outputs that could not be sent to their client.
    pub outputs_failed: AtomicU64,
    /// Error frames received from the node.
    pub node_errors: AtomicU64,
    /// Stamped signals lost because the link failed while writing them (clients retransmit).
    pub lost_in_link: AtomicU64,
    /// Successful (re)connections to the node.
    pub link_connects: AtomicU64,
    /// Last seq stamped.
    pub last_seq: AtomicU64,
    /// Datagrams dropped unstamped because the steer restarted during a move and the route is
    /// not installed again yet (clients retransmit).
    pub unrouted: AtomicU64,
}

/// A plain copy of [`SteerStats`] for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub struct SteerStatsSnapshot {
    pub admitted: u64,
    pub malformed: u64,
    pub shed: u64,
    pub no_link: u64,
    pub ticks: u64,
    pub outputs_relayed: u64,
    pub outputs_failed: u64,
    pub node_errors: u64,
    pub lost_in_link: u64,
    pub link_connects: u64,
    pub last_seq: u64,
    #[serde(default)]
    pub unrouted: u64,
}

impl SteerStats {
    /// Counts a signal (or tick) stamped `seq`.
    fn stamped(&self, seq: u64, kind: SignalKind) {
        self.last_seq.store(seq, Relaxed);
        if kind == SignalKind::Tick {
            self.ticks.fetch_add(1, Relaxed);
        } else {
            self.admitted.fetch_add(1, Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> SteerStatsSnapshot {
        SteerStatsSnapshot {
            admitted: self.admitted.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            shed: self.shed.load(Relaxed),
            no_link: self.no_link.load(Relaxed),
            ticks: self.ticks.load(Relaxed),
            outputs_relayed: self.outputs_relayed.load(Relaxed),
            outputs_failed: self.outputs_failed.load(Relaxed),
            node_errors: self.node_errors.load(Relaxed),
            lost_in_link: self.lost_in_link.load(Relaxed),
            link_connects: self.link_connects.load(Relaxed),
            last_seq: self.last_seq.load(Relaxed),
            unrouted: self.unrouted.load(Relaxed),
        }
    }
}

/// Microseconds since the Unix epoch: the only clock instances see.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The frame for a signal stamped `seq` now (flags are set per copy when it is sent).
fn stamped(
    seq: u64,
    kind: SignalKind,
    client: SocketAddr,
    key: Bytes,
    payload: Bytes,
) -> SignalFrame {
    SignalFrame {
        route: crate::link::ROUTE,
        seq,
        now_us: now_us(),
        kind: kind as u8,
        flags: 0,
        client,
        key,
        payload,
    }
}

/// A move command for one service, answered once the service loop has carried it out.
#[derive(Debug)]
pub enum MoveCommand {
    /// Opens a link to the destination node (which must host an empty instance of the same
    /// name) and enters move mode once it is up; answers with the first seq under move mode
    /// (`boundary`) and the last seq sent to the source before it (the copy's manifest waits
    /// until the source applied it).
    Begin {
        /// The destination node.
        destination: SocketAddr,
        /// Duplicate creates and every update to both copies.
        abort_safe: bool,
        /// The answer.
        done: oneshot::Sender<Result<Boundary, String>>,
    },
    /// Flips the route at the next seq; answers with the boundary and the last seq sent to the
    /// source (it has drained once it applied that one).
    Cutover {
        /// The answer.
        done: oneshot::Sender<Result<Boundary, String>>,
    },
    /// Makes the destination the owner; the source link closes after a grace period that
    /// lets the source's last outputs through.
    Finish {
        /// The answer.
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Returns the route to the source in one step; answers with the sessions created on the
    /// destination meanwhile (lost unless the move was abort-safe: use the two-step abort to
    /// move them back).
    Abort {
        /// The answer.
        done: oneshot::Sender<Result<Vec<Bytes>, String>>,
    },
    /// First step of an abort that moves the sessions created on the destination back: from
    /// now on only they go to the destination. Answers with their keys.
    AbortBegin {
        /// The answer.
        done: oneshot::Sender<Result<Vec<Bytes>, String>>,
    },
    /// Second step: every signal goes to the source again, from the answered boundary seq;
    /// also answers the last seq sent to the destination (its copy back waits for it).
    AbortCommit {
        /// The answer.
        done: oneshot::Sender<Result<Boundary, String>>,
    },
    /// Stops sending: stamped signals wait at the steer (bounded; beyond it they are shed and
    /// the client retransmits). Answers with the last seq sent to the node. For stop-and-copy
    /// comparisons; a live move never holds.
    Hold {
        /// The answer.
        done: oneshot::Sender<Result<u64, String>>,
    },
    /// Ends a hold by making `to` the instance's node: held signals go there in order, then
    /// the service routes there. Answers once the held signals are queued on the new link.
    Release {
        /// The new node.
        to: SocketAddr,
        /// The answer.
        done: oneshot::Sender<Result<(), String>>,
    },
    /// After a restart that lost a move's route: links both nodes again (fencing off what the
    /// previous run had in flight) and answers the last seq each had applied when bound.
    Rebind {
        /// The move's source.
        source: SocketAddr,
        /// The move's destination.
        destination: SocketAddr,
        /// The answer.
        done: oneshot::Sender<Result<Rebound, String>>,
    },
    /// After [`MoveCommand::Rebind`]: `node` owns the instance and signals flow again, at
    /// seqs above everything either node applied. Answers the boundary (and, as `last_sent`,
    /// the other node's last applied seq). Repeatable.
    Serve {
        /// The owner (one of the two rebound nodes).
        node: SocketAddr,
        /// The answer.
        done: oneshot::Sender<Result<Boundary, String>>,
    },
    /// The route's state.
    Status {
        /// The answer.
        done: oneshot::Sender<RouteStatus>,
    },
}

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
    pub source: Option<u64>,
    /// The move's destination.
    pub destination: Option<u64>,
}

/// The start of the refusal a service gives every move command while its route is lost (the
/// control listener answers it with `code::ROUTE_LOST`).
pub const ROUTE_LOST: &str = "route lost: the steer restarted during a move";
/// As [`ROUTE_LOST`], the route having cut over to the destination (`code::ROUTE_LOST_CUT_OVER`).
pub const ROUTE_LOST_CUT_OVER: &str =
    "route lost after the cutover: the steer restarted during a move";

/// What a route file says at start.
#[derive(Debug, PartialEq, Eq)]
enum Kept {
    /// No file: serve from the configured node.
    Nothing,
    /// The file's route.
    Route(RouteFile),
    /// A file that cannot be read or parsed: its route is lost, as if a move had been in
    /// progress (the controller installs it again), never silently the configured node.
    Unreadable,
}

/// A service's route as kept on disk across restarts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RouteFile {
    /// The node serving (a move's source).
    node: SocketAddr,
    /// `serving`, `moving`, `aborting` or `cut over`.
    phase: String,
}

fn read_route_file(path: &std::path::Path) -> Kept {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Kept::Nothing,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the route file: the route counts as lost");
            return Kept::Unreadable;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(r) => Kept::Route(r),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "route file does not parse: the route counts as lost");
            Kept::Unreadable
        }
    }
}

/// Writes the route file (write, sync, rename) before the command is answered.
fn write_route_file(path: Option<&std::path::Path>, node: SocketAddr, phase: &str) {
    let Some(path) = path else { return };
    let body = RouteFile {
        node,
        phase: phase.to_owned(),
    };
    let tmp = path.with_extension("tmp");
    let r = serde_json::to_vec(&body)
        .map_err(std::io::Error::other)
        .and_then(|b| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&b)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        // The rename is durable only once the directory is synced.
        .and_then(|()| match path.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        });
    if let Err(e) = r {
        tracing::error!(path = %path.display(), error = %e, "cannot write the route file: a restart now would lose the route");
    }
}

/// A rebind waiting for both links.
struct PendingRebind {
    since: tokio::time::Instant,
    done: oneshot::Sender<Result<Rebound, String>>,
}

/// A service's route, as reported to a controller.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteStatus {
    /// The instance.
    pub instance: String,
    /// `serving`, `moving`, `cut over`, `aborting`, or `held`.
    pub phase: String,
    /// The node serving the instance (a move's source).
    pub node: SocketAddr,
    /// A move's destination, if one is linked.
    pub destination: Option<SocketAddr>,
    /// Whether the node link is up.
    pub node_up: bool,
    /// Last seq stamped.
    pub last_seq: u64,
    /// Sessions created during the current move.
    pub created_during_move: usize,
    /// Signals held (stop-and-copy only).
    pub held: usize,
    /// The steer restarted during a move and the route is not installed again yet.
    #[serde(default)]
    pub route_lost: bool,
}

/// Signals a hold keeps before shedding.
pub const MAX_HELD: usize = 262_144;

/// A hold in progress: stamped signals wait here, then go to `target` once it is up.
struct Hold {
    queue: std::collections::VecDeque<SignalFrame>,
    target: Option<(Link, SocketAddr, tokio::time::Instant)>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// How long a retired source link stays open for its last outputs.
const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// How long a destination link may take to come up before `Begin` fails.
const DEST_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions a move may create before the steer forces an abort.
const MAX_CREATED_DURING_MOVE: usize = 10_000_000;

struct PendingBegin {
    abort_safe: bool,
    since: tokio::time::Instant,
    done: oneshot::Sender<Result<Boundary, String>>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    cfg: ServiceConfig,
    route_file: Option<std::path::PathBuf>,
    identity: Arc<crate::Identity>,
    tick: Duration,
    queue: usize,
    classifier: Arc<dyn Classifier>,
    socket: UdpSocket,
    stats: Arc<SteerStats>,
    mut commands: mpsc::Receiver<MoveCommand>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let spawn_link = |node: SocketAddr| {
        Link::spawn(
            node,
            cfg.instance.clone(),
            identity.clone(),
            queue,
            socket.clone(),
            stats.clone(),
            stop.clone(),
        )
    };
    // A route kept from a previous run: serve from the node it last served from, or, if a
    // move was in progress, route nothing until the controller installs the route again.
    let kept = route_file.as_deref().map_or(Kept::Nothing, read_route_file);
    let first_node = match &kept {
        Kept::Route(k) => k.node,
        Kept::Nothing | Kept::Unreadable => cfg.node,
    };
    let mut lost: Option<bool> = match &kept {
        Kept::Nothing => None,
        Kept::Route(k) if k.phase == "serving" => None,
        Kept::Route(k) => Some(k.phase == "cut over"),
        // Unknown: the controller decides from its own record of the move.
        Kept::Unreadable => Some(false),
    };
    if let Some(cut_over) = lost {
        tracing::warn!(instance = %cfg.instance, cut_over, "restarted during a move: signals are not routed until the route is installed again");
    }
    let mut rebind: Option<PendingRebind> = None;
    let mut source = spawn_link(first_node);
    let mut addrs = Addrs {
        source: first_node,
        dest: None,
    };
    let mut dest: Option<Link> = None;
    let mut hold: Option<Hold> = None;
    // The last seq sent on each link (what a side must apply before it has drained).
    let mut sent = Sent {
        // A route kept as serving: any move it was part of has finished, so a finish asked
        // again (its answer lost in the restart) is answered, not refused.
        finished: matches!(&kept, Kept::Route(k) if k.phase == "serving"),
        ..Sent::default()
    };
    let mut pending: Option<PendingBegin> = None;
    let mut retiring: Vec<(Link, tokio::time::Instant)> = Vec::new();
    let mut route = Route::new(MAX_CREATED_DURING_MOVE);
    let mut seq: u64 = 0;
    let mut buf = vec![0u8; 65_536];
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_millis(5));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (kind, key, payload, client) = tokio::select! {
            _ = stop.cancelled() => return,
            c = commands.recv() => {
                if let Some(c) = c {
                    let mut st = State {
                        route: &mut route,
                        source: &mut source,
                        dest: &mut dest,
                        addrs: &mut addrs,
                        hold: &mut hold,
                        pending: &mut pending,
                        retiring: &mut retiring,
                        last_seq: seq,
                        sent: &mut sent,
                        lost: &mut lost,
                        rebind: &mut rebind,
                        route_file: route_file.as_deref(),
                    };
                    st.command(c, &cfg.instance, &spawn_link);
                    seq = st.last_seq;
                }
                continue;
            }
            _ = housekeeping.tick(), if pending.is_some() || rebind.is_some() || !retiring.is_empty() || hold.as_ref().is_some_and(|h| h.target.is_some()) => {
                let now = tokio::time::Instant::now();
                if let Some(r) = rebind.take() {
                    let dest_up = dest.as_ref().is_some_and(Link::is_up);
                    if (source.is_up() && dest_up) || now - r.since > DEST_UP_TIMEOUT {
                        let b = Rebound {
                            source: source.is_up().then(|| source.base_seq()),
                            destination: dest.as_ref().filter(|d| d.is_up()).map(Link::base_seq),
                        };
                        tracing::info!(instance = %cfg.instance, ?b, "route rebound");
                        let _ = r.done.send(Ok(b));
                    } else {
                        rebind = Some(r);
                    }
                }
                if let Some(h) = hold.as_mut() {
                    if release_step(h, now) {
                        let h = hold.take().expect("hold present");
                        if let Some((link, to, _)) = h.target {
                            let old = std::mem::replace(&mut source, link);
                            retiring.push((old, now + RETIRE_GRACE));
                            addrs.source = to;
                            write_route_file(route_file.as_deref(), to, "serving");
                            tracing::info!(instance = %cfg.instance, node = %to, "hold released");
                        }
                        if let Some(d) = h.done {
                            let _ = d.send(Ok(()));
                        }
                    }
                }
                retiring.retain(|(l, until)| if now >= *until { l.close(); false } else { true });
                if let Some(p) = pending.take() {
                    // The source's link must be bound too: after a restart its last applied seq
                    // (what the copy's manifest must wait for) is known only then.
                    if dest.as_ref().is_some_and(Link::is_up) && source.is_up() {
                        let first = seq.max(source.base_seq()) + 1;
                        let last_sent = sent.source.max(source.base_seq());
                        let r = route
                            .begin_move(first, p.abort_safe)
                            .map(|()| Boundary { boundary: first, last_sent })
                            .map_err(|e| e.to_string());
                        if let Ok(b) = &r {
                            write_route_file(route_file.as_deref(), addrs.source, "moving");
                            sent.begun = Some(*b);
                        }
                        tracing::info!(instance = %cfg.instance, first_seq = first, "move mode on");
                        let _ = p.done.send(r);
                    } else if now - p.since > DEST_UP_TIMEOUT {
                        if let Some(d) = dest.take() {
                            d.close();
                        }
                        let _ = p.done.send(Err("the destination node did not accept the route in time".into()));
                    } else {
                        pending = Some(p);
                    }
                }
                continue;
            }
            _ = ticker.tick() => {
                if lost.is_some() {
                    continue;
                }
                (SignalKind::Tick, Bytes::new(), Bytes::new(), local)
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                let datagram = &buf[..n];
                match classifier.classify(datagram) {
                    Ok(c) => (c.kind, c.key, Bytes::copy_from_slice(datagram), client),
                    Err(e) => {
                        stats.malformed.fetch_add(1, Relaxed);
                        tracing::trace!(%client, error = %e, "malformed datagram dropped");
                        continue;
                    }
                }
            }
        };
        if lost.is_some() {
            // Restarted during a move: where this signal may go is unknown until the
            // controller installs the route again. Dropped unstamped; the client retransmits.
            stats.unrouted.fetch_add(1, Relaxed);
            continue;
        }
        let Some(next) = seq.max(source.base_seq()).checked_add(1) else {
            // The node claims to have applied u64::MAX: refuse to wrap, drop and count.
            stats.no_link.fetch_add(1, Relaxed);
            continue;
        };
        if let Some(h) = hold.as_mut() {
            if h.queue.len() >= MAX_HELD {
                if kind != SignalKind::Tick {
                    stats.shed.fetch_add(1, Relaxed);
                }
                continue;
            }
            seq = next;
            h.queue.push_back(stamped(seq, kind, client, key, payload));
            stats.stamped(seq, kind);
            continue;
        }
        let delivery = route.preview(next, kind, &key);
        let (to_source, to_dest) = match delivery {
            Delivery::Source => (true, false),
            Delivery::Destination => (false, true),
            Delivery::Both | Delivery::HandOver => (true, true),
        };
        let dest_link = dest.as_ref().filter(|_| to_dest);
        if (to_source && !source.is_up()) || (to_dest && !dest_link.is_some_and(Link::is_up)) {
            // A tick with no link reaches no instance; only datagrams count as dropped.
            if kind != SignalKind::Tick {
                stats.no_link.fetch_add(1, Relaxed);
            }
            continue;
        }
        // Take a seq only once the signal has a place in every queue it goes to: seqs stay
        // dense on each copy.
        let src_permit = if to_source {
            match source.tx.try_reserve() {
                Ok(p) => Some(p),
                Err(TrySendError::Full(())) => {
                    stats.shed.fetch_add(1, Relaxed);
                    continue;
                }
                Err(TrySendError::Closed(())) => return,
            }
        } else {
            None
        };
        let dst_permit = match dest_link {
            Some(d) => match d.tx.try_reserve() {
                Ok(p) => Some(p),
                Err(_) => {
                    stats.shed.fetch_add(1, Relaxed);
                    continue;
                }
            },
            None => None,
        };
        if let Err(e) = route.decide(next, kind, &key) {
            // Too many sessions created during the move: refuse the create (the operator's
            // controller aborts the move on this counter).
            stats.shed.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "move route refused a signal");
            continue;
        }
        seq = next;
        let frame = stamped(seq, kind, client, key, payload);
        match (src_permit, dst_permit) {
            (Some(s), Some(d)) if delivery == Delivery::HandOver => {
                s.send(SignalFrame {
                    flags: SIGNAL_HANDOVER,
                    payload: Bytes::new(),
                    ..frame.clone()
                });
                d.send(frame);
            }
            (Some(s), Some(d)) => {
                d.send(SignalFrame {
                    flags: SIGNAL_SHADOW,
                    ..frame.clone()
                });
                s.send(frame);
            }
            (Some(s), None) => s.send(frame),
            (None, Some(d)) => d.send(frame),
            (None, None) => {}
        }
        if to_source {
            sent.source = seq;
        }
        if to_dest {
            sent.dest = seq;
        }
        stats.stamped(seq, kind);
    }
}

/// The last seq sent on each link.
#[derive(Default)]
struct Sent {
    source: u64,
    dest: u64,
    /// The current move's route flip (cutover or abort commit), repeated to a controller
    /// that asks again because it lost the first answer.
    flip: Option<Boundary>,
    /// The last move finished (a repeated finish is answered, not refused).
    finished: bool,
    /// The current move's answer to `begin_move`, repeated to a controller that asks again
    /// because it lost the first one.
    begun: Option<Boundary>,
}

/// Where the service's links point.
struct Addrs {
    source: SocketAddr,
    dest: Option<SocketAddr>,
}

/// The service loop's state a command may change.
struct State<'a> {
    route: &'a mut Route,
    source: &'a mut Link,
    dest: &'a mut Option<Link>,
    addrs: &'a mut Addrs,
    hold: &'a mut Option<Hold>,
    pending: &'a mut Option<PendingBegin>,
    retiring: &'a mut Vec<(Link, tokio::time::Instant)>,
    last_seq: u64,
    sent: &'a mut Sent,
    lost: &'a mut Option<bool>,
    rebind: &'a mut Option<PendingRebind>,
    route_file: Option<&'a std::path::Path>,
}

/// Moves held signals onto the release target's link as room allows; `true` once all are
/// queued there (or the target never came up: then the hold stays and the answer says so).
fn release_step(h: &mut Hold, now: tokio::time::Instant) -> bool {
    let Some((link, to, since)) = &h.target else {
        return false;
    };
    if !link.is_up() {
        if now - *since > DEST_UP_TIMEOUT {
            if let Some(d) = h.done.take() {
                let _ = d.send(Err(format!("node {to} did not accept the route in time")));
            }
            link.close();
            h.target = None;
        }
        return false;
    }
    while !h.queue.is_empty() {
        let Ok(permit) = link.tx.try_reserve() else {
            return false;
        };
        if let Some(f) = h.queue.pop_front() {
            permit.send(f);
        }
    }
    true
}

impl State<'_> {
    fn status(&self, instance: &str) -> RouteStatus {
        RouteStatus {
            instance: instance.to_owned(),
            phase: if self.hold.is_some() {
                "held".into()
            } else {
                self.route.phase().into()
            },
            node: self.addrs.source,
            destination: self.addrs.dest,
            node_up: self.source.is_up(),
            last_seq: self.last_seq,
            created_during_move: self.route.created_during_move(),
            held: self.hold.as_ref().map_or(0, |h| h.queue.len()),
            route_lost: self.lost.is_some(),
        }
    }

    fn retire_dest(&mut self) {
        if let Some(d) = self.dest.take() {
            self.retiring
                .push((d, tokio::time::Instant::now() + RETIRE_GRACE));
        }
        self.addrs.dest = None;
    }

    fn command(
        &mut self,
        c: MoveCommand,
        instance: &str,
        spawn_link: &impl Fn(SocketAddr) -> Link,
    ) {
        let last_seq = self.last_seq;
        if let Some(cut_over) = *self.lost {
            let why = if cut_over {
                ROUTE_LOST_CUT_OVER
            } else {
                ROUTE_LOST
            };
            let why = why.to_owned();
            match c {
                MoveCommand::Rebind { .. }
                | MoveCommand::Serve { .. }
                | MoveCommand::Status { .. } => {}
                MoveCommand::Begin { done, .. }
                | MoveCommand::Cutover { done }
                | MoveCommand::AbortCommit { done } => {
                    let _ = done.send(Err(why));
                    return;
                }
                MoveCommand::Finish { done } | MoveCommand::Release { done, .. } => {
                    let _ = done.send(Err(why));
                    return;
                }
                MoveCommand::Abort { done } | MoveCommand::AbortBegin { done } => {
                    let _ = done.send(Err(why));
                    return;
                }
                MoveCommand::Hold { done } => {
                    let _ = done.send(Err(why));
                    return;
                }
            }
        }
        match c {
            MoveCommand::Rebind {
                source,
                destination,
                done,
            } => {
                if self.lost.is_none() {
                    let _ = done.send(Err("the route is not lost: nothing to rebind".into()));
                    return;
                }
                // Fresh links: binding fences off any earlier binding of the instance on each
                // node, and each answers the last seq it applied.
                self.source.close();
                *self.source = spawn_link(source);
                self.addrs.source = source;
                if let Some(d) = self.dest.take() {
                    d.close();
                }
                *self.dest = Some(spawn_link(destination));
                self.addrs.dest = Some(destination);
                if let Some(old) = self.rebind.take() {
                    let _ = old.done.send(Err("superseded by a newer rebind".into()));
                }
                *self.rebind = Some(PendingRebind {
                    since: tokio::time::Instant::now(),
                    done,
                });
            }
            MoveCommand::Serve { node, done } => {
                if self.lost.is_none() {
                    // A repeat after a lost answer.
                    let r = match self.sent.flip {
                        Some(b) if self.addrs.source == node && self.dest.is_none() => Ok(b),
                        _ => Err("the route is not lost: nothing to serve".into()),
                    };
                    let _ = done.send(r);
                    return;
                }
                if self.rebind.is_some() || self.addrs.dest.is_none() {
                    let _ = done.send(Err("the rebind has not completed".into()));
                    return;
                }
                if *self.lost == Some(true) && Some(node) != self.addrs.dest {
                    let _ = done.send(Err(
                        "the route had cut over: only the destination may serve".into(),
                    ));
                    return;
                }
                let dest_base = self.dest.as_ref().map_or(0, Link::base_seq);
                let src_base = self.source.base_seq();
                let (owner_up, other_base) = if Some(node) == self.addrs.dest {
                    (self.dest.as_ref().is_some_and(Link::is_up), src_base)
                } else if node == self.addrs.source {
                    (self.source.is_up(), dest_base)
                } else {
                    let _ = done.send(Err(format!("{node} is not one of the rebound nodes")));
                    return;
                };
                if !owner_up {
                    let _ = done.send(Err(format!("the link to {node} is down")));
                    return;
                }
                if Some(node) == self.addrs.dest {
                    if let Some(d) = self.dest.take() {
                        let old = std::mem::replace(self.source, d);
                        self.retiring
                            .push((old, tokio::time::Instant::now() + RETIRE_GRACE));
                    }
                } else {
                    self.retire_dest();
                }
                self.addrs.source = node;
                self.addrs.dest = None;
                *self.route = Route::new(MAX_CREATED_DURING_MOVE);
                let top = self.last_seq.max(src_base).max(dest_base);
                self.last_seq = top;
                let b = Boundary {
                    boundary: top + 1,
                    last_sent: other_base,
                };
                self.sent.source = top;
                self.sent.dest = 0;
                self.sent.flip = Some(b);
                // A finish repeated by the controller is answered.
                self.sent.finished = true;
                *self.lost = None;
                write_route_file(self.route_file, node, "serving");
                tracing::info!(instance, %node, boundary = b.boundary, "route installed again");
                let _ = done.send(Ok(b));
            }
            MoveCommand::Begin {
                destination,
                abort_safe,
                done,
            } => {
                // A repeat of this very move (its answer was lost): the same answer, or, while
                // the destination link still comes up, the answer when it does.
                if self.addrs.dest == Some(destination) && self.hold.is_none() {
                    if let Some(p) = self.pending.as_mut() {
                        let old = std::mem::replace(&mut p.done, done);
                        let _ = old.send(Err("superseded by a repeated begin_move".into()));
                        return;
                    }
                    if let (Some(b), "moving") = (self.sent.begun, self.route.phase()) {
                        let _ = done.send(Ok(b));
                        return;
                    }
                }
                if self.dest.is_some() || self.pending.is_some() || self.hold.is_some() {
                    let _ = done.send(Err("a move is already in progress".into()));
                    return;
                }
                self.sent.begun = None;
                *self.dest = Some(spawn_link(destination));
                self.addrs.dest = Some(destination);
                self.sent.flip = None;
                self.sent.finished = false;
                *self.pending = Some(PendingBegin {
                    abort_safe,
                    since: tokio::time::Instant::now(),
                    done,
                });
            }
            MoveCommand::Cutover { done } => {
                if let (Some(b), "cut over") = (self.sent.flip, self.route.phase()) {
                    let _ = done.send(Ok(b));
                    return;
                }
                let boundary = last_seq + 1;
                let r = self
                    .route
                    .cutover(boundary, last_seq)
                    .map(|()| Boundary {
                        boundary,
                        last_sent: self.sent.source,
                    })
                    .map_err(|e| e.to_string());
                self.sent.flip = r.as_ref().ok().copied();
                if r.is_ok() {
                    write_route_file(self.route_file, self.addrs.source, "cut over");
                    tracing::info!(instance, boundary, "cutover");
                }
                let _ = done.send(r);
            }
            MoveCommand::Finish { done } => {
                if self.sent.finished && self.route.phase() == "serving" && self.dest.is_none() {
                    let _ = done.send(Ok(()));
                    return;
                }
                let r = self.route.finish().map_err(|e| e.to_string());
                if r.is_ok() {
                    if let Some(d) = self.dest.take() {
                        let old = std::mem::replace(self.source, d);
                        self.retiring
                            .push((old, tokio::time::Instant::now() + RETIRE_GRACE));
                    }
                    if let Some(d) = self.addrs.dest.take() {
                        self.addrs.source = d;
                    }
                    self.sent.source = self.sent.dest;
                    self.sent.flip = None;
                    self.sent.finished = true;
                    write_route_file(self.route_file, self.addrs.source, "serving");
                }
                let _ = done.send(r);
            }
            MoveCommand::Abort { done } => {
                if let Some(p) = self.pending.take() {
                    let _ = p.done.send(Err("aborted".into()));
                    self.retire_dest();
                    let _ = done.send(Ok(Vec::new()));
                    return;
                }
                let r = self.route.abort().map_err(|e| e.to_string());
                if r.is_ok() {
                    self.retire_dest();
                    write_route_file(self.route_file, self.addrs.source, "serving");
                }
                let _ = done.send(r);
            }
            MoveCommand::AbortBegin { done } => {
                if let Some(p) = self.pending.take() {
                    // Move mode never started: nothing went to the destination.
                    let _ = p.done.send(Err("aborted".into()));
                    self.retire_dest();
                    let _ = done.send(Ok(Vec::new()));
                    return;
                }
                let _ = done.send(self.route.abort_begin().map_err(|e| e.to_string()));
            }
            MoveCommand::AbortCommit { done } => {
                if let (Some(b), "serving") = (self.sent.flip, self.route.phase()) {
                    let _ = done.send(Ok(b));
                    return;
                }
                let r = self
                    .route
                    .abort_commit()
                    .map(|()| Boundary {
                        boundary: last_seq + 1,
                        last_sent: self.sent.dest,
                    })
                    .map_err(|e| e.to_string());
                self.sent.flip = r.as_ref().ok().copied();
                if r.is_ok() {
                    tracing::info!(instance, boundary = last_seq + 1, "move aborted");
                    self.retire_dest();
                    write_route_file(self.route_file, self.addrs.source, "serving");
                }
                let _ = done.send(r);
            }
            MoveCommand::Hold { done } => {
                if self.route.phase() != "serving" || self.hold.is_some() || self.pending.is_some()
                {
                    let _ = done.send(Err("cannot hold during a move or another hold".into()));
                    return;
                }
                *self.hold = Some(Hold {
                    queue: std::collections::VecDeque::new(),
                    target: None,
                    done: None,
                });
                tracing::info!(instance, last_seq, "holding signals");
                let _ = done.send(Ok(last_seq));
            }
            MoveCommand::Release { to, done } => match self.hold.as_mut() {
                Some(h) if h.target.is_none() && h.done.is_none() => {
                    h.target = Some((spawn_link(to), to, tokio::time::Instant::now()));
                    h.done = Some(done);
                }
                _ => {
                    let _ = done.send(Err("nothing held, or a release is under way".into()));
                }
            },
            MoveCommand::Status { done } => {
                let _ = done.send(self.status(instance));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_file_survives_a_restart_and_a_bad_one_loses_the_route() {
        let dir = std::env::temp_dir().join(format!("handoff-steer-route-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mme-1.route.json");
        assert_eq!(
            read_route_file(&path),
            Kept::Nothing,
            "no file: serve from the config"
        );
        let node: SocketAddr = "10.0.0.2:7001".parse().unwrap();
        write_route_file(Some(&path), node, "cut over");
        assert_eq!(
            read_route_file(&path),
            Kept::Route(RouteFile {
                node,
                phase: "cut over".into()
            })
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(
            read_route_file(&path),
            Kept::Unreadable,
            "garbage loses the route (the controller installs it again), not a panic"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
