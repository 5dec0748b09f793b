//! One service: its UDP receive loop, seq stamping and tick injection.

use crate::link::Link;
use bytes::Bytes;
use handoff_function::runtime::Classifier;
use handoff_function::SignalKind;
use handoff_wire::SignalFrame;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
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

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    cfg: ServiceConfig,
    steer_name: String,
    tick: Duration,
    queue: usize,
    classifier: Arc<dyn Classifier>,
    socket: UdpSocket,
    stats: Arc<SteerStats>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let link = Link::spawn(
        cfg.node,
        cfg.instance.clone(),
        steer_name,
        queue,
        socket.clone(),
        stats.clone(),
        stop.clone(),
    );
    let mut seq: u64 = 0;
    let mut buf = vec![0u8; 65_536];
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (kind, key, payload, client) = tokio::select! {
            _ = stop.cancelled() => return,
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
        if !link.is_up() {
            // A tick with no link reaches no instance; only datagrams count as dropped.
            if kind != SignalKind::Tick {
                stats.no_link.fetch_add(1, Relaxed);
            }
            continue;
        }
        // Take a seq only once the signal has a place in the queue: seqs stay dense.
        let permit = match link.tx.try_reserve() {
            Ok(p) => p,
            Err(TrySendError::Full(())) => {
                stats.shed.fetch_add(1, Relaxed);
                continue;
            }
            Err(TrySendError::Closed(())) => return,
        };
        let Some(next) = seq.max(link.base_seq()).checked_add(1) else {
            // The node claims to have applied u64::MAX: refuse to wrap, drop and count.
            stats.no_link.fetch_add(1, Relaxed);
            continue;
        };
        seq = next;
        permit.send(SignalFrame {
            route: crate::link::ROUTE,
            seq,
            now_us: now_us(),
            kind: kind as u8,
            flags: 0,
            client,
            key,
            payload,
        });
        stats.last_seq.store(seq, Relaxed);
        if kind == SignalKind::Tick {
            stats.ticks.fetch_add(1, Relaxed);
        } else {
            stats.admitted.fetch_add(1, Relaxed);
        }
    }
}
