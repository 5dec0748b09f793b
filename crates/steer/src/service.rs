//! One service's shell: its UDP receive loop, tick injection, node links, the route file and
//! move commands. Every decision (seqs, where a signal goes, what a command does) is the
//! service core's ([`crate::service_core`]); this loop only carries out its effects.
//!
//! # The signal path (a hot path: look harder at changes here)
//!
//! Each service runs on its own thread with a current-thread runtime ([`spawn`]): the receive
//! loop, its link writers and its output relays share that thread, so handing a frame to a
//! link is a local wake-up, never a wake-up of another worker thread, and a datagram costs
//! no cross-thread hop from the socket to the node's TCP connection and back.
//!
//! 1. One wake-up of the socket drains it: the first datagram is awaited, then up to
//!    [`RECV_BATCH`] more are taken with non-blocking receives while the socket has them and
//!    every link has room. Nothing ever waits for a second datagram: a lone signal is routed
//!    at once (no batching that waits for company).
//! 2. Datagrams are received into an arena ([`ARENA_BYTES`]) and handed on as shared slices
//!    of it, so a signal's payload costs no allocation of its own: a new arena is taken only
//!    when the spare room falls below one maximal datagram, and the old one is reused in place
//!    once every signal in it has been written to its node. Memory pinned this way is bounded
//!    by what the link queues and a hold keep (both in arrival order, so dense) plus one arena.
//! 3. The link writer runs when the loop yields, so a burst drained in step 1 leaves in one
//!    TCP write (see [`crate::link`]).

use crate::link::{Link, LinkContext, LinkEvent};
use crate::service_core::{
    Admission, Answer, Command, CommandError, Effect, Inbound, Kept, KeptRoute, LinkId,
    ServiceCore, Timeouts,
};
use crate::stats::SteerStats;
use bytes::{Bytes, BytesMut};
use handoff_function::runtime::Classifier;
use handoff_function::SignalKind;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
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

/// A move command for one service and where its answer goes.
#[derive(Debug)]
pub struct MoveCommand {
    /// The command.
    pub command: Command,
    /// The answer, once the service core has carried it out.
    pub done: oneshot::Sender<Result<Answer, CommandError>>,
}

/// Microseconds since the Unix epoch: the only clock instances see.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Reads a route file (`<instance>.route.json`: a [`KeptRoute`] as JSON).
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
fn write_route_file(path: Option<&std::path::Path>, body: KeptRoute) {
    let Some(path) = path else { return };
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

/// How long a retired link stays open for its last outputs.
const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// How often a waiting command, a release or a retired link is looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(5);
/// Link events queued for the service loop.
const LINK_EVENTS: usize = 64;
/// Datagrams taken from the socket per wake-up at most, before the loop looks at its other
/// sources again (commands, link events, ticks) and lets the link writers run.
pub(crate) const RECV_BATCH: usize = 64;
/// Bytes of one receive arena.
const ARENA_BYTES: usize = 256 * 1024;
/// The largest UDP datagram: the spare room an arena must have before each receive, so no
/// datagram is ever truncated.
const MAX_DATAGRAM: usize = 65_536;

/// What a service needs to run.
pub(crate) struct ServiceRun {
    pub(crate) cfg: ServiceConfig,
    pub(crate) route_file: Option<std::path::PathBuf>,
    pub(crate) identity: Arc<crate::Identity>,
    pub(crate) tick: Duration,
    pub(crate) queue: usize,
    pub(crate) classifier: Arc<dyn Classifier>,
    /// The bound service socket (non-blocking), registered with the service's own runtime.
    pub(crate) socket: std::net::UdpSocket,
    pub(crate) stats: Arc<SteerStats>,
    pub(crate) commands: mpsc::Receiver<MoveCommand>,
    pub(crate) stop: CancellationToken,
    /// How long a frame from a node may take once begun.
    pub(crate) frame_timeout: Duration,
}

/// The links the core opened, and those retired until their grace period ends.
struct Links {
    cx: LinkContext,
    open: HashMap<LinkId, Link>,
    retiring: Vec<(Link, tokio::time::Instant)>,
    route_file: Option<std::path::PathBuf>,
}

impl Links {
    fn has_room(&self, id: LinkId) -> bool {
        self.open.get(&id).is_some_and(|l| l.tx.capacity() > 0)
    }

    fn room(&self, id: LinkId) -> usize {
        self.open.get(&id).map_or(0, |l| l.tx.capacity())
    }

    /// Whether every open link can take one more frame: the receive loop drains its socket
    /// only while this holds, so a burst it drains is not shed for want of a writer's turn.
    fn room_everywhere(&self) -> bool {
        self.open.values().all(|l| l.tx.capacity() > 0)
    }

    /// Queues a frame the core routed; the core checked there is room, so only a link whose
    /// task has ended can refuse it (counted as lost in the link; the client retransmits).
    fn send(&self, id: LinkId, frame: handoff_wire::SignalFrame) {
        let sent = self
            .open
            .get(&id)
            .is_some_and(|l| l.tx.try_send(frame).is_ok());
        if !sent {
            self.cx.stats.lost_in_link.fetch_add(1, Relaxed);
        }
    }

    fn carry_out(&mut self, effects: Vec<Effect<oneshot::Sender<Result<Answer, CommandError>>>>) {
        for e in effects {
            match e {
                Effect::Reply(done, r) => {
                    let _ = done.send(r);
                }
                Effect::OpenLink { id, node } => {
                    self.open.insert(id, Link::spawn(id, node, &self.cx));
                }
                Effect::CloseLink(id) => {
                    if let Some(l) = self.open.remove(&id) {
                        l.close();
                    }
                }
                Effect::RetireLink(id) => {
                    if let Some(l) = self.open.remove(&id) {
                        self.retiring
                            .push((l, tokio::time::Instant::now() + RETIRE_GRACE));
                    }
                }
                Effect::PersistRoute(k) => write_route_file(self.route_file.as_deref(), k),
                Effect::Send(id, frame) => self.send(id, frame),
            }
        }
    }
}

/// Starts a service on its own thread (named after its instance) with a current-thread
/// runtime: its receive loop, link writers and output relays all run there, apart from the
/// control plane and from other services. The thread ends when the service stops.
pub(crate) fn spawn(s: ServiceRun) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let name = format!("steer-{}", s.cfg.instance);
    let span = tracing::info_span!("service", instance = %s.cfg.instance);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || rt.block_on(tracing::Instrument::instrument(run(s), span)))?;
    Ok(())
}

async fn run(s: ServiceRun) {
    let ServiceRun {
        cfg,
        route_file,
        identity,
        tick,
        queue,
        classifier,
        socket,
        stats,
        mut commands,
        stop,
        frame_timeout,
    } = s;
    let socket = match UdpSocket::from_std(socket) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(instance = %cfg.instance, error = %e, "cannot register the service socket: the service does not run");
            return;
        }
    };
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (events_tx, mut events) = mpsc::channel(LINK_EVENTS);
    let mut links = Links {
        cx: LinkContext {
            instance: cfg.instance.clone(),
            identity,
            queue,
            socket: socket.clone(),
            stats: stats.clone(),
            events: events_tx,
            stop: stop.clone(),
            frame_timeout,
        },
        open: HashMap::new(),
        retiring: Vec::new(),
        route_file: route_file.clone(),
    };
    // A route kept from a previous run: serve from the node it last served from, or, if a
    // move was in progress, route nothing until the controller installs the route again.
    let kept = route_file.as_deref().map_or(Kept::Nothing, read_route_file);
    let mut core = ServiceCore::new(cfg.instance.clone(), cfg.node, kept, Timeouts::default());
    links.carry_out(core.take_effects());
    let start = tokio::time::Instant::now();
    let mono_us = move || start.elapsed().as_micros() as u64;
    let mut arena = BytesMut::with_capacity(ARENA_BYTES);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut path = SignalPath {
        core: &mut core,
        links: &mut links,
        stats: &stats,
        classifier: classifier.as_ref(),
    };
    loop {
        make_room(&mut arena);
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            c = commands.recv() => {
                let Some(c) = c else { return };
                path.core.command(c.command, c.done, mono_us());
                let effects = path.core.take_effects();
                path.links.carry_out(effects);
                continue;
            }
            Some(e) = events.recv() => {
                match e {
                    LinkEvent::Up(id, base, incarnation) => path.core.link_up(id, base, incarnation),
                    LinkEvent::Down(id) => path.core.link_down(id),
                }
                path.poll(mono_us());
                continue;
            }
            _ = housekeeping.tick(), if path.core.needs_poll() || !path.links.retiring.is_empty() => {
                path.poll(mono_us());
                let now = tokio::time::Instant::now();
                path.links.retiring.retain(|(l, until)| if now >= *until { l.close(); false } else { true });
                continue;
            }
            _ = ticker.tick() => {
                if !path.core.route_lost() {
                    path.admit(Inbound { kind: SignalKind::Tick, key: Bytes::new(), payload: Bytes::new(), client: local });
                }
                continue;
            }
            r = socket.recv_buf_from(&mut arena) => r,
        };
        // Drain what the socket holds now, without waiting for more.
        let mut next = Some(first);
        let mut taken = 0usize;
        while let Some(r) = next {
            match r {
                Ok((_, client)) => path.datagram(arena.split().freeze(), client),
                Err(_) => {
                    stats.recv_errors.fetch_add(1, Relaxed);
                    arena.clear();
                }
            }
            taken += 1;
            if taken >= RECV_BATCH || !path.links.room_everywhere() {
                break;
            }
            make_room(&mut arena);
            next = match socket.try_recv_buf_from(&mut arena) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                r => Some(r),
            };
        }
    }
}

/// Makes sure the arena has room for a maximal datagram: reuses it in place when every
/// signal received into it has been dropped, otherwise starts a new one (the old one is
/// freed with its last signal).
fn make_room(arena: &mut BytesMut) {
    if arena.capacity() - arena.len() < MAX_DATAGRAM {
        arena.reserve(ARENA_BYTES);
    }
}

/// What routing one signal needs: the core, the links it routes to, the counters, the
/// function's classifier.
struct SignalPath<'a> {
    core: &'a mut ServiceCore<oneshot::Sender<Result<Answer, CommandError>>>,
    links: &'a mut Links,
    stats: &'a SteerStats,
    classifier: &'a dyn Classifier,
}

impl SignalPath<'_> {
    /// Classifies one datagram and routes it; a malformed one is counted and dropped.
    fn datagram(&mut self, payload: Bytes, client: SocketAddr) {
        match self.classifier.classify(&payload) {
            Ok(c) => self.admit(Inbound {
                kind: c.kind,
                key: c.key,
                payload,
                client,
            }),
            Err(e) => {
                self.stats.malformed.fetch_add(1, Relaxed);
                tracing::trace!(%client, error = %e, "malformed datagram dropped");
            }
        }
    }

    /// Stamps and routes one signal (or tick) and counts what became of it.
    fn admit(&mut self, inbound: Inbound) {
        let kind = inbound.kind;
        let links = &*self.links;
        match self.core.admit(inbound, now_us(), |id| links.has_room(id)) {
            Admission::Routed { seq, frames, .. } => {
                for (id, f) in frames {
                    links.send(id, f);
                }
                self.stats.stamped(seq, kind);
            }
            Admission::Held { seq } => self.stats.stamped(seq, kind),
            Admission::Dropped(why) => self.stats.dropped(&why, kind),
        }
    }

    /// Lets the core look at its timers and carries out what it decided.
    fn poll(&mut self, mono_us: u64) {
        let links = &*self.links;
        self.core.poll(mono_us, |id| links.room(id));
        let effects = self.core.take_effects();
        self.links.carry_out(effects);
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
        let kept = KeptRoute {
            node,
            phase: crate::route::RoutePhase::CutOver,
            floor: 0,
            incarnation: None,
        };
        write_route_file(Some(&path), kept);
        assert_eq!(read_route_file(&path), Kept::Route(kept));
        // The phase names are stable: a file an earlier version wrote still parses.
        std::fs::write(&path, br#"{"node":"10.0.0.2:7001","phase":"moving"}"#).unwrap();
        assert_eq!(
            read_route_file(&path),
            Kept::Route(KeptRoute {
                node,
                phase: crate::route::RoutePhase::Moving,
                floor: 0,
                incarnation: None,
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
