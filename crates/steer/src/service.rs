//! One service's shell: its UDP receive loop, tick injection, node links, the route file and
//! move commands. Every decision (seqs, where a signal goes, what a command does) is the
//! service core's ([`crate::service_core`]); this loop only carries out its effects.

use crate::link::{Link, LinkContext, LinkEvent};
use crate::service_core::{
    Admission, Answer, Command, CommandError, Effect, Inbound, Kept, KeptRoute, LinkId,
    ServiceCore, Timeouts,
};
use crate::stats::SteerStats;
use bytes::Bytes;
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

/// What a service needs to run.
pub(crate) struct ServiceRun {
    pub(crate) cfg: ServiceConfig,
    pub(crate) route_file: Option<std::path::PathBuf>,
    pub(crate) identity: Arc<crate::Identity>,
    pub(crate) tick: Duration,
    pub(crate) queue: usize,
    pub(crate) classifier: Arc<dyn Classifier>,
    pub(crate) socket: UdpSocket,
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

pub(crate) async fn run(s: ServiceRun) {
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
    let socket = Arc::new(socket);
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
    let mut buf = vec![0u8; 65_536];
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let inbound = tokio::select! {
            _ = stop.cancelled() => return,
            c = commands.recv() => {
                let Some(c) = c else { return };
                core.command(c.command, c.done, mono_us());
                links.carry_out(core.take_effects());
                continue;
            }
            Some(e) = events.recv() => {
                match e {
                    LinkEvent::Up(id, base, incarnation) => core.link_up(id, base, incarnation),
                    LinkEvent::Down(id) => core.link_down(id),
                }
                core.poll(mono_us(), |id| links.room(id));
                links.carry_out(core.take_effects());
                continue;
            }
            _ = housekeeping.tick(), if core.needs_poll() || !links.retiring.is_empty() => {
                core.poll(mono_us(), |id| links.room(id));
                links.carry_out(core.take_effects());
                let now = tokio::time::Instant::now();
                links.retiring.retain(|(l, until)| if now >= *until { l.close(); false } else { true });
                continue;
            }
            _ = ticker.tick() => {
                if core.route_lost() {
                    continue;
                }
                Inbound { kind: SignalKind::Tick, key: Bytes::new(), payload: Bytes::new(), client: local }
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                let datagram = &buf[..n];
                match classifier.classify(datagram) {
                    Ok(c) => Inbound { kind: c.kind, key: c.key, payload: Bytes::copy_from_slice(datagram), client },
                    Err(e) => {
                        stats.malformed.fetch_add(1, Relaxed);
                        tracing::trace!(%client, error = %e, "malformed datagram dropped");
                        continue;
                    }
                }
            }
        };
        let kind = inbound.kind;
        match core.admit(inbound, now_us(), |id| links.has_room(id)) {
            Admission::Routed { seq, frames, .. } => {
                for (id, f) in frames {
                    links.send(id, f);
                }
                stats.stamped(seq, kind);
            }
            Admission::Held { seq } => stats.stamped(seq, kind),
            Admission::Dropped(why) => stats.dropped(&why, kind),
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
