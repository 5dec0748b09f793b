//! The framed TCP link from the steer to the node hosting a service's instance.

use crate::service::SteerStats;
use futures::{SinkExt, StreamExt};
use handoff_wire::{Frame, FrameCodec, FrameError, Role, SignalFrame, VERSION};
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// The route id a service binds its instance to (one instance per link).
pub(crate) const ROUTE: u32 = 1;
/// Bytes gathered before one socket write.
const WRITE_BATCH_BYTES: usize = 128 * 1024;
/// Longest wait for a connection or a handshake answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a write to the node may take before the link is declared stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct Link {
    pub(crate) tx: mpsc::Sender<SignalFrame>,
    up: Arc<AtomicBool>,
    base: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Link {
    pub(crate) fn spawn(
        node: SocketAddr,
        instance: String,
        identity: Arc<crate::Identity>,
        queue: usize,
        socket: Arc<UdpSocket>,
        stats: Arc<SteerStats>,
        stop: CancellationToken,
    ) -> Self {
        let stop = stop.child_token();
        let (tx, rx) = mpsc::channel(queue);
        let up = Arc::new(AtomicBool::new(false));
        let base = Arc::new(AtomicU64::new(0));
        tokio::spawn(maintain(
            node,
            instance,
            identity,
            rx,
            socket,
            stats,
            up.clone(),
            base.clone(),
            stop.clone(),
        ));
        Self { tx, up, base, stop }
    }

    /// Closes the link (its queue is dropped; outputs still in flight are lost).
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }

    /// Whether the link is connected and the route bound.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Acquire)
    }

    /// The last seq the node had applied when the route was last bound.
    pub(crate) fn base_seq(&self) -> u64 {
        self.base.load(Acquire)
    }
}

#[allow(clippy::too_many_arguments)]
async fn maintain(
    node: SocketAddr,
    instance: String,
    identity: Arc<crate::Identity>,
    mut rx: mpsc::Receiver<SignalFrame>,
    socket: Arc<UdpSocket>,
    stats: Arc<SteerStats>,
    up: Arc<AtomicBool>,
    base: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = connect(node, &instance, &identity) => r,
        };
        match attempt {
            Ok((stream, last_seq)) => {
                backoff = Duration::from_millis(50);
                base.store(last_seq, Release);
                up.store(true, Release);
                stats.link_connects.fetch_add(1, Relaxed);
                tracing::info!(%node, instance, last_seq, "node link up");
                let reason = serve(stream, &mut rx, &socket, &stats, &stop).await;
                up.store(false, Relaxed);
                if stop.is_cancelled() {
                    return;
                }
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

/// Connects, says hello and binds the route; returns the node's last applied seq.
async fn connect(
    node: SocketAddr,
    instance: &str,
    identity: &crate::Identity,
) -> Result<(TcpStream, u64), FrameError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(node))
        .await
        .map_err(|_| FrameError::Io("connect timed out".into()))??;
    let _ = stream.set_nodelay(true);
    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec);
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
            Some(Ok(Frame::Bound { last_seq: s, .. })) => last_seq = Some(s),
            Some(Ok(Frame::Error { code, message })) => {
                return Err(FrameError::Io(format!("node refused ({code}): {message}")))
            }
            Some(Ok(other)) => return Err(FrameError::Io(format!("unexpected {other:?}"))),
            Some(Err(e)) => return Err(e),
            None => return Err(FrameError::Io("closed during handshake".into())),
        }
    }
    let stream = framed.into_inner();
    Ok((stream, last_seq.unwrap_or(0)))
}

/// Streams queued signals out and relays outputs back until the connection fails.
async fn serve(
    stream: TcpStream,
    rx: &mut mpsc::Receiver<SignalFrame>,
    socket: &Arc<UdpSocket>,
    stats: &Arc<SteerStats>,
    stop: &CancellationToken,
) -> String {
    let (rd, wr) = stream.into_split();
    let mut reader = FramedRead::new(rd, FrameCodec);
    let relay_socket = socket.clone();
    let relay_stats = stats.clone();
    let mut relay = tokio::spawn(async move {
        while let Some(frame) = reader.next().await {
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
    let mut writer = FramedWrite::new(wr, FrameCodec);
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
        let failed = tokio::select! {
            _ = stop.cancelled() => Some("stopping".to_owned()),
            r = tokio::time::timeout(WRITE_TIMEOUT, writer.get_mut().write_all(&buf)) => match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("node stopped reading (write timed out)".to_owned()),
            },
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
