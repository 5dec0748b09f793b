//! One TCP connection to the node: the hello exchange, then a steer or admin session.

use crate::admin;
use crate::frames::{error, send, watched, Reader};
use crate::instance::{Batch, InstanceHandle, Reply};
use crate::Node;
use futures::StreamExt;
use handoff_wire::deadline::{next_within, Deadlines};
use handoff_wire::{code, Frame, FrameCodec, FrameError, Role, SignalFrame, VERSION};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

/// How long a peer has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames taken from the socket at once when they are already buffered.
const READ_BATCH: usize = 256;
/// Bytes gathered before one socket write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Read buffer of a connection: large enough that a copy stream (about 500-byte records)
/// arrives in a few reads per hundred records.
const READ_BUFFER_BYTES: usize = 64 * 1024;

pub(crate) async fn handle(node: Arc<Node>, stream: TcpStream) -> Result<(), FrameError> {
    let (rd, wr) = stream.into_split();
    let mut reader =
        FramedRead::with_capacity(rd, FrameCodec::unauthenticated(), READ_BUFFER_BYTES);
    let (tx, rx) = mpsc::channel::<Vec<Frame>>(node.limits.conn_queue.max(1));
    let writer = tokio::spawn(write_loop(wr, rx));
    let result = async {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
            .await
            .map_err(|_| FrameError::Io("no hello within the timeout".into()))?;
        let role = match hello {
            Some(Ok(Frame::Hello {
                role,
                name,
                min_version,
                max_version,
                token,
            })) => {
                if !node.admits(&token) {
                    tracing::warn!(peer = %name, ?role, "hello refused: wrong token");
                    let _ = tx
                        .send(vec![error(code::UNAUTHORIZED, "wrong or missing token")])
                        .await;
                    return Ok(());
                }
                if !(min_version..=max_version).contains(&VERSION) {
                    let _ = tx
                        .send(vec![error(code::VERSION, "no common protocol version")])
                        .await;
                    return Ok(());
                }
                tracing::debug!(peer = %name, ?role, "hello");
                role
            }
            Some(Ok(_)) => {
                let _ = tx
                    .send(vec![error(code::WRONG_FRAME, "expected hello")])
                    .await;
                return Ok(());
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        };
        send(
            &tx,
            vec![Frame::HelloAck {
                node: node.name.clone(),
            }],
        )
        .await?;
        // Admin requests and peer answers may be continued over several frames once the peer
        // is authenticated; a steer's signals never are.
        if role != Role::Steer {
            reader
                .decoder_mut()
                .set_max_continued(handoff_wire::MAX_CONTINUED_BODY);
        }
        match role {
            Role::Steer => steer_session(&node, reader, &tx).await,
            Role::Admin => admin::session(&node, reader, &tx).await,
            Role::Peer => crate::copy::peer_session(&node, reader, &tx).await,
        }
    }
    .await;
    drop(tx);
    let _ = writer.await;
    result
}

/// Signals from a steer: bind routes, then batch consecutive signals per instance.
async fn steer_session(
    node: &Node,
    reader: Reader,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    let mut routes: HashMap<u32, (InstanceHandle, u64)> = HashMap::new();
    let mut chunks = reader.ready_chunks(READ_BATCH);
    let stop = node.shutdown_token();
    // A steer's link is legitimately silent while no traffic flows: never closed for
    // idleness, only for a frame begun and not finished.
    let limits = Deadlines {
        idle: None,
        ..node.limits().deadlines
    };
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = next_within(&mut chunks, limits) => match watched(node, c)? {
                Some(c) => c,
                None => return Ok(()),
            },
        };
        let mut pending: Option<(u32, Vec<SignalFrame>)> = None;
        for frame in chunk {
            match frame? {
                Frame::Signal(s) => match &mut pending {
                    Some((route, batch)) if *route == s.route => batch.push(s),
                    _ => {
                        flush(&routes, pending.take(), tx).await?;
                        pending = Some((s.route, vec![s]));
                    }
                },
                Frame::Bind { route, instance } => {
                    flush(&routes, pending.take(), tx).await?;
                    match node.instance(&instance) {
                        Ok(h) => {
                            // Answer only after everything queued before is applied: the
                            // steer resumes above this seq.
                            // This binding fences off any earlier one of the instance.
                            let Some((binding, last_seq)) = h.bind().await else {
                                return Err(FrameError::Io(format!("instance {instance} stopped")));
                            };
                            let incarnation = h.incarnation();
                            routes.insert(route, (h, binding));
                            tracing::info!(route, instance, last_seq, incarnation, "route bound");
                            send(
                                tx,
                                vec![Frame::Bound {
                                    route,
                                    last_seq,
                                    incarnation,
                                }],
                            )
                            .await?;
                        }
                        Err(e) => send(tx, vec![error(e.code(), e.to_string())]).await?,
                    }
                }
                other => {
                    send(
                        tx,
                        vec![error(
                            code::WRONG_FRAME,
                            format!("frame not allowed on a steer connection: {other:?}"),
                        )],
                    )
                    .await?;
                    return Ok(());
                }
            }
        }
        flush(&routes, pending.take(), tx).await?;
    }
}

async fn flush(
    routes: &HashMap<u32, (InstanceHandle, u64)>,
    pending: Option<(u32, Vec<SignalFrame>)>,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    let Some((route, signals)) = pending else {
        return Ok(());
    };
    let Some((h, binding)) = routes.get(&route) else {
        let n = signals.len();
        send(
            tx,
            vec![error(
                code::UNKNOWN_INSTANCE,
                format!("route {route} is not bound; {n} signals dropped"),
            )],
        )
        .await?;
        return Ok(());
    };
    let batch = Batch {
        signals,
        reply: Reply::Tcp(tx.clone()),
        drained: None,
        binding: Some(*binding),
    };
    if h.submit(batch).await {
        Ok(())
    } else {
        Err(FrameError::Io(format!("instance {} stopped", h.name())))
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<Frame>>) {
    let mut buf = bytes::BytesMut::with_capacity(WRITE_BATCH_BYTES);
    while let Some(frames) = rx.recv().await {
        for f in &frames {
            f.encode(&mut buf);
        }
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => more.iter().for_each(|f| f.encode(&mut buf)),
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = wr.shutdown().await;
}
