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
    let mut source = spawn_link(cfg.node);
    let mut addrs = Addrs {
        source: cfg.node,
        dest: None,
    };
    let mut dest: Option<Link> = None;
    let mut hold: Option<Hold> = None;
    // The last seq sent on each link (what a side must apply before it has drained).
    let mut sent = Sent::default();
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
                    };
                    st.command(c, &cfg.instance, &spawn_link);
                }
                continue;
            }
            _ = housekeeping.tick(), if pending.is_some() || !retiring.is_empty() || hold.as_ref().is_some_and(|h| h.target.is_some()) => {
                let now = tokio::time::Instant::now();
                if let Some(h) = hold.as_mut() {
                    if release_step(h, now) {
                        let h = hold.take().expect("hold present");
                        if let Some((link, to, _)) = h.target {
                            let old = std::mem::replace(&mut source, link);
                            retiring.push((old, now + RETIRE_GRACE));
                            addrs.source = to;
                            tracing::info!(instance = %cfg.instance, node = %to, "hold released");
                        }
                        if let Some(d) = h.done {
                            let _ = d.send(Ok(()));
                        }
                    }
                }
                retiring.retain(|(l, until)| if now >= *until { l.close(); false } else { true });
                if let Some(p) = pending.take() {
                    if dest.as_ref().is_some_and(Link::is_up) {
                        let first = seq + 1;
                        let last_sent = sent.source;
                        let r = route
                            .begin_move(first, p.abort_safe)
                            .map(|()| Boundary { boundary: first, last_sent })
                            .map_err(|e| e.to_string());
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
            _ = ticker.tick() => (SignalKind::Tick, Bytes::new(), Bytes::new(), local),
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
        match c {
            MoveCommand::Begin {
                destination,
                abort_safe,
                done,
            } => {
                if self.dest.is_some() || self.pending.is_some() || self.hold.is_some() {
                    let _ = done.send(Err("a move is already in progress".into()));
                    return;
                }
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
