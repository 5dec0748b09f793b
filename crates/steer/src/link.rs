//! The framed TCP link from the steer to the node hosting a service's instance. It reports
//! when it binds (with the node's last applied seq) and when it fails to the service loop,
//! which hands both to the service core.
//!
//! Its writer and its output relay run on the service's own thread (see [`crate::service`]):
//! the writer takes every frame queued when it runs (so a burst the receive loop drained
//! leaves in one write) and writes without arming a timer when the socket takes it all at
//! once; the relay sends each output as soon as its frame is decoded.

use crate::service_core::{LinkId, ROUTE};
use crate::stats::SteerStats;
use futures::{SinkExt, StreamExt};
use handoff_wire::{Frame, FrameCodec, FrameError, Role, SignalFrame, VERSION};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// Bytes gathered before one socket write.
const WRITE_BATCH_BYTES: usize = 128 * 1024;
/// Longest wait for a connection or a handshake answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a write to the node may take before the link is declared stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A link's news for the service loop.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LinkEvent {
    /// Bound; the node had applied `base` (second), its instance is this incarnation (third).
    Up(LinkId, u64, u64),
    /// The connection failed (the link reconnects by itself).
    Down(LinkId),
}

/// What every link of a service shares.
#[derive(Clone)]
pub(crate) struct LinkContext {
    pub(crate) instance: String,
    pub(crate) identity: Arc<crate::Identity>,
    pub(crate) queue: usize,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) stats: Arc<SteerStats>,
    pub(crate) events: mpsc::Sender<LinkEvent>,
    pub(crate) stop: CancellationToken,
    /// How long a frame from the node may take once begun (the link is never idle-closed).
    pub(crate) frame_timeout: Duration,
}

pub(crate) struct Link {
    pub(crate) tx: mpsc::Sender<SignalFrame>,
    stop: CancellationToken,
}

impl Link {
    pub(crate) fn spawn(id: LinkId, node: SocketAddr, cx: &LinkContext) -> Self {
        let stop = cx.stop.child_token();
        let (tx, rx) = mpsc::channel(cx.queue.max(1));
        tokio::spawn(maintain(id, node, cx.clone(), rx, stop.clone()));
        Self { tx, stop }
    }

    /// Closes the link (its queue is dropped; outputs still in flight are lost).
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }
}

async fn maintain(
    id: LinkId,
    node: SocketAddr,
    cx: LinkContext,
    mut rx: mpsc::Receiver<SignalFrame>,
    stop: CancellationToken,
) {
    let LinkContext {
        instance,
        identity,
        socket,
        stats,
        events,
        frame_timeout,
        ..
    } = cx;
    let report = |e: LinkEvent| {
        let events = events.clone();
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = events.send(e) => {}
            }
        }
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect(node, &instance, &identity) => r,
        };
        match attempt {
            Ok((stream, last_seq, incarnation)) => {
                backoff = Duration::from_millis(50);
                stats.link_connects.fetch_add(1, Relaxed);
                tracing::info!(%node, instance, last_seq, incarnation, "node link up");
                // Frames still queued from before the last failure were stamped while the
                // batch the failure cut short was lost: sending them now would put them ahead
                // of the retransmissions of what was lost. They are dropped and counted (their
                // clients retransmit); the service sends nothing more until it hears `Up`.
                let mut stale = 0u64;
                while rx.try_recv().is_ok() {
                    stale += 1;
                }
                stats.lost_in_link.fetch_add(stale, Relaxed);
                report(LinkEvent::Up(id, last_seq, incarnation)).await;
                let reason = serve(stream, &mut rx, &socket, &stats, &stop, frame_timeout).await;
                if stop.is_cancelled() {
                    return;
                }
                report(LinkEvent::Down(id)).await;
                tracing::warn!(%node, instance, %reason, "node link down");
            }
            Err(e) => tracing::debug!(%node, instance, error = %e, "node link attempt failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects, says hello and binds the route; returns the node's last applied seq and the
/// instance's incarnation.
async fn connect(
    node: SocketAddr,
    instance: &str,
    identity: &crate::Identity,
) -> Result<(TcpStream, u64, u64), FrameError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(node))
        .await
        .map_err(|_| FrameError::Io("connect timed out".into()))??;
    let _ = stream.set_nodelay(true);
    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new());
    framed
        .send(Frame::Hello {
            role: Role::Steer,
            name: identity.name.clone(),
            min_version: VERSION,
            max_version: VERSION,
            token: identity.token.clone(),
        })
        .await?;
    framed
        .send(Frame::Bind {
            route: ROUTE,
            instance: instance.to_owned(),
        })
        .await?;
    let mut last_seq = None;
    while last_seq.is_none() {
        let next = tokio::time::timeout(CONNECT_TIMEOUT, framed.next())
            .await
            .map_err(|_| FrameError::Io("handshake timed out".into()))?;
        match next {
            Some(Ok(Frame::HelloAck { .. })) => {}
            Some(Ok(Frame::Bound {
                last_seq: s,
                incarnation,
                ..
            })) => last_seq = Some((s, incarnation)),
            Some(Ok(Frame::Error { code, message })) => {
                return Err(FrameError::Io(format!("node refused ({code}): {message}")))
            }
            Some(Ok(other)) => return Err(FrameError::Io(format!("unexpected {other:?}"))),
            Some(Err(e)) => return Err(e),
            None => return Err(FrameError::Io("closed during handshake".into())),
        }
    }
    let stream = framed.into_inner();
    let (last_seq, incarnation) = last_seq.unwrap_or((0, 0));
    Ok((stream, last_seq, incarnation))
}

/// Writes what the socket takes at once, without waiting or arming a timer (the common case:
/// a loopback or LAN connection with room in its send buffer). A socket that is not ready
/// took 0 bytes; any other error is left to the waiting write that follows, which sees it
/// again.
fn write_now(wr: &tokio::net::tcp::OwnedWriteHalf, buf: &[u8]) -> std::io::Result<usize> {
    match wr.try_write(buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        r => r,
    }
}

/// Streams queued signals out and relays outputs back until the connection fails.
async fn serve(
    stream: TcpStream,
    rx: &mut mpsc::Receiver<SignalFrame>,
    socket: &Arc<UdpSocket>,
    stats: &Arc<SteerStats>,
    stop: &CancellationToken,
    frame_timeout: Duration,
) -> String {
    let (rd, wr) = stream.into_split();
    // Outputs are never continued: a node cannot make the steer buffer a continued body.
    let mut reader = FramedRead::new(rd, FrameCodec::unauthenticated());
    let relay_socket = socket.clone();
    let relay_stats = stats.clone();
    // Outputs may stop for as long as no signal flows (never idle), but a frame begun must
    // finish.
    let limits = handoff_wire::deadline::Deadlines {
        frame: frame_timeout,
        idle: None,
    };
    let mut relay = tokio::spawn(async move {
        loop {
            let frame = match handoff_wire::deadline::next_within(&mut reader, limits).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(stall) => {
                    relay_stats.link_stalled.fetch_add(1, Relaxed);
                    return format!("the node's connection stalled: {stall}");
                }
            };
            match frame {
                Ok(Frame::Output(o)) => match relay_socket.send_to(&o.payload, o.client).await {
                    Ok(_) => relay_stats.outputs_relayed.fetch_add(1, Relaxed),
                    Err(_) => relay_stats.outputs_failed.fetch_add(1, Relaxed),
                },
                Ok(Frame::Error { code, message }) => {
                    tracing::warn!(code, message, "node reported an error");
                    relay_stats.node_errors.fetch_add(1, Relaxed)
                }
                Ok(other) => return format!("unexpected frame from node: {other:?}"),
                Err(e) => return e.to_string(),
            };
        }
        "node closed the connection".to_owned()
    });
    let mut writer = FramedWrite::new(wr, FrameCodec::new());
    let mut buf = bytes::BytesMut::with_capacity(WRITE_BATCH_BYTES);
    let reason = loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break "stopping".to_owned(),
            r = &mut relay => break r.unwrap_or_else(|e| e.to_string()),
            s = rx.recv() => match s {
                Some(s) => s,
                None => break "service stopped".to_owned(),
            },
        };
        Frame::Signal(first).encode(&mut buf);
        let mut frames = 1u64;
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(s) => {
                    Frame::Signal(s).encode(&mut buf);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        let failed = match write_now(writer.get_mut(), &buf) {
            Ok(n) if n == buf.len() => None,
            // The socket took part of it (or nothing, or failed): the rest is written with a
            // deadline, the ordinary way.
            first => {
                let done = first.unwrap_or(0);
                tokio::select! {
                    _ = stop.cancelled() => Some("stopping".to_owned()),
                    r = tokio::time::timeout(WRITE_TIMEOUT, writer.get_mut().write_all(&buf[done..])) => match r {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some("node stopped reading (write timed out)".to_owned()),
                    },
                }
            }
        };
        if let Some(reason) = failed {
            stats.lost_in_link.fetch_add(frames, Relaxed);
            break reason;
        }
        buf.clear();
    };
    relay.abort();
    reason
}
