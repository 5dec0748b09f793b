//! The direct path: one instance served on the node's own UDP port, with no steer.
//!
//! The node stamps seq and time itself and answers clients straight from its socket. This is
//! the baseline the steer is benchmarked against; it has no move or standby support.

use crate::instance::{Batch, InstanceHandle, Reply};
use bytes::Bytes;
use handoff_function::runtime::Classifier;
use handoff_function::SignalKind;
use handoff_wire::SignalFrame;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Datagrams taken into one batch at most.
const DIRECT_BATCH: usize = 256;

/// Counters of the direct path (reported by the node's `stats`: [`crate::Node::direct_stats`]).
/// Every datagram read is counted once: admitted, or dropped for one reason.
#[derive(Debug, Default)]
pub struct DirectStats {
    /// Datagrams classified and handed to the instance.
    pub admitted: AtomicU64,
    /// Datagrams dropped as malformed.
    pub malformed: AtomicU64,
    /// Datagrams dropped because the instance had stopped (the path stops too).
    pub instance_stopped: AtomicU64,
    /// Receive calls that failed (no datagram read).
    pub recv_errors: AtomicU64,
    /// Answers the socket refused to send.
    pub send_failed: AtomicU64,
}

impl DirectStats {
    /// The counters now, for `instance`.
    pub fn info(&self, instance: &str) -> crate::ops::DirectInfo {
        crate::ops::DirectInfo {
            instance: instance.to_owned(),
            admitted: self.admitted.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            instance_stopped: self.instance_stopped.load(Ordering::Relaxed),
            recv_errors: self.recv_errors.load(Ordering::Relaxed),
            send_failed: self.send_failed.load(Ordering::Relaxed),
        }
    }
}

/// Microseconds since the Unix epoch: the time the steer (here, the direct path) stamps.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Serves `instance` on `socket` until `stop` is cancelled; injects a tick every `tick`.
pub async fn serve_direct(
    instance: InstanceHandle,
    classifier: Arc<dyn Classifier>,
    socket: UdpSocket,
    tick: Duration,
    stop: CancellationToken,
    stats: Arc<DirectStats>,
) {
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    let socket = Arc::new(socket);
    // Sending runs on its own task, as the steer's relay does: processing never waits on it.
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<(Bytes, SocketAddr)>>(1024);
    let sender_socket = socket.clone();
    let sender_stats = stats.clone();
    tokio::spawn(async move {
        while let Some(batch) = out_rx.recv().await {
            for (payload, client) in batch {
                if sender_socket.send_to(&payload, client).await.is_err() {
                    sender_stats.send_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let mut seq = instance.stats().runtime.last_seq;
    let mut stopped = false;
    let mut buf = vec![0u8; 65_536];
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    loop {
        let mut signals = Vec::new();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                seq += 1;
                signals.push(SignalFrame {
                    route: 0,
                    seq,
                    now_us: now_us(),
                    kind: SignalKind::Tick as u8,
                    flags: 0,
                    client: local,
                    key: Bytes::new(),
                    payload: Bytes::new(),
                });
            }
            r = socket.recv_from(&mut buf) => {
                let mut next = match r {
                    Ok(got) => Some(got),
                    Err(e) => {
                        stats.recv_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "direct path: receive failed");
                        None
                    }
                };
                // Take what is already queued too: one batch per wakeup, as the steer does.
                while let Some((n, client)) = next {
                    let datagram = &buf[..n];
                    match classifier.classify(datagram) {
                        Ok(c) => {
                            seq += 1;
                            signals.push(SignalFrame {
                                route: 0,
                                seq,
                                now_us: now_us(),
                                kind: c.kind as u8,
                                flags: 0,
                                client,
                                key: c.key,
                                payload: Bytes::copy_from_slice(datagram),
                            });
                        }
                        Err(_) => {
                            stats.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if signals.len() >= DIRECT_BATCH {
                        break;
                    }
                    next = match socket.try_recv_from(&mut buf) {
                        Ok(got) => Some(got),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                        Err(_) => {
                            stats.recv_errors.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    };
                }
            }
        };
        if signals.is_empty() {
            continue;
        }
        let datagrams = signals
            .iter()
            .filter(|s| s.kind != SignalKind::Tick as u8)
            .count() as u64;
        if stopped {
            // The instance is gone: what still arrives is read and counted, never left
            // uncounted in the socket, until the path is stopped.
            stats
                .instance_stopped
                .fetch_add(datagrams, Ordering::Relaxed);
            continue;
        }
        let batch = Batch {
            signals,
            reply: Reply::Udp(out_tx.clone()),
            drained: None,
            binding: None,
        };
        if !instance.submit(batch).await {
            stats
                .instance_stopped
                .fetch_add(datagrams, Ordering::Relaxed);
            stopped = true;
            continue;
        }
        stats.admitted.fetch_add(datagrams, Ordering::Relaxed);
    }
}
