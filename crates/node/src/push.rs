//! Pushing records between serving instances: the stop-and-copy and iterative pre-copy
//! baselines that `handoff bench move` runs beside the live move (DESIGN.md "Testing and
//! measurement").
//!
//! The source streams a tombstone for every session deleted after `since_seq`, then every
//! record whose seq is above `since_seq`, to a plain serving instance of the same name on the
//! destination, which overwrites its sessions with them in order. There is no manifest, shadow
//! or apply rule: the caller keeps signals away from the destination, and holds them back at
//! the steer for the last round, or the copy is not exact.
//!
//! Deletions are logged from the first push of a sequence (`since_seq` 0) until its last one
//! (`last`), so each later round can send tombstones for sessions deleted since the previous.

use crate::conn::{error, send, Reader};
use crate::instance::Control;
use crate::{Node, NodeError};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use handoff_function::runtime::DeletionLog;
use handoff_function::SessionKey;
use handoff_wire::{code, Frame, FrameCodec, FrameError, Role, VERSION};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

/// Records handed to the destination instance at once.
const IMPORT_BATCH: usize = 256;
/// Longest wait for the source to apply the seq a push must include.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the destination's answer to a push's end.
const END_TIMEOUT: Duration = Duration::from_secs(120);

/// What one push sent, as the source saw it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PushReport {
    /// Records sent (seq above `since_seq`).
    pub records: u64,
    /// Tombstones sent (sessions deleted after `since_seq`).
    pub tombstones: u64,
    /// Record bytes sent (keys and values; a tombstone counts its key).
    pub bytes: u64,
    /// The source's applied seq when the scan began: every change above it is left for the
    /// next round (pass it as that round's `since_seq`).
    pub max_seq: u64,
    /// Records the destination refused (a record that does not decode; should be 0).
    pub refused: u64,
    /// Time from the scan's start to the destination's answer.
    pub elapsed_ms: u64,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The instance is not hosted here.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The destination could not be reached or failed.
    #[error("destination {addr}: {reason}")]
    Destination {
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The source did not apply the seq it was asked to include.
    #[error("the source never applied seq {wanted} (at {at})")]
    NotApplied {
        /// The seq waited for.
        wanted: u64,
        /// The last seq applied.
        at: u64,
    },
    /// A later round without a first one (`since_seq` 0) before it, or a deletion log that
    /// overflowed: tombstones would be missing.
    #[error("deletions since seq {0} are not known; start again with since_seq 0")]
    NoDeletionLog(u64),
}

/// Deletion logs of push sequences in progress, by instance (its table's address, unique while
/// it lives). At most one per instance.
static LOGS: Mutex<Vec<(usize, DeletionLog)>> = Mutex::new(Vec::new());

fn log_key(h: &crate::InstanceHandle) -> usize {
    std::sync::Arc::as_ptr(h.table()) as usize
}

fn registered_log(key: usize) -> Option<DeletionLog> {
    let g = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    g.iter().find(|(k, _)| *k == key).map(|(_, l)| l.clone())
}

fn register_log(key: usize, log: Option<DeletionLog>) {
    let mut g = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    g.retain(|(k, _)| *k != key);
    if let Some(l) = log {
        g.push((key, l));
    }
}

/// Waits until the instance task has carried out everything queued before.
async fn barrier(h: &crate::InstanceHandle) -> bool {
    let (done, answer) = oneshot::channel();
    h.control(Control::ShadowStats(done)).await && answer.await.is_ok()
}

/// Streams `instance`'s records with seq above `since_seq` (and tombstones of the sessions
/// deleted after it) to the node at `destination`, which must host a serving instance of the
/// same name. Waits first until the source has applied `after_seq`. `last` ends the sequence
/// (stops logging deletions).
pub async fn push(
    node: &Node,
    instance: &str,
    destination: SocketAddr,
    since_seq: u64,
    after_seq: u64,
    last: bool,
) -> Result<PushReport, PushError> {
    let h = node.instance(instance)?;
    let waited = Instant::now();
    while h.stats().runtime.last_seq < after_seq {
        if waited.elapsed() > APPLY_TIMEOUT {
            return Err(PushError::NotApplied {
                wanted: after_seq,
                at: h.stats().runtime.last_seq,
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let key = log_key(&h);
    let log = if since_seq == 0 {
        // Log deletions from before the scan's seq on: a later round finds every one above it.
        let log = DeletionLog::default();
        if !h.control(Control::DeletionLog(Some(log.clone()))).await || !barrier(&h).await {
            return Err(NodeError::UnknownInstance(instance.to_owned()).into());
        }
        register_log(key, Some(log.clone()));
        log
    } else {
        registered_log(key).ok_or(PushError::NoDeletionLog(since_seq))?
    };
    let result = stream(node, &h, instance, destination, since_seq, &log).await;
    if last || result.is_err() {
        register_log(key, None);
        let _ = h.control(Control::DeletionLog(None)).await;
    }
    let report = result?;
    if log.overflowed() {
        return Err(PushError::NoDeletionLog(since_seq));
    }
    Ok(report)
}

async fn stream(
    node: &Node,
    h: &crate::InstanceHandle,
    instance: &str,
    destination: SocketAddr,
    since_seq: u64,
    log: &DeletionLog,
) -> Result<PushReport, PushError> {
    let dest_err = |reason: String| PushError::Destination {
        addr: destination,
        reason,
    };
    let io = |e: FrameError| dest_err(e.to_string());
    let start = Instant::now();
    let mut report = PushReport {
        max_seq: h.stats().runtime.last_seq,
        ..PushReport::default()
    };
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(destination))
        .await
        .map_err(|_| dest_err("connect timed out".into()))?
        .map_err(|e| dest_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut f = Framed::new(stream, FrameCodec);
    f.send(Frame::Hello {
        role: Role::Peer,
        name: node.name().to_owned(),
        min_version: VERSION,
        max_version: VERSION,
        token: node.token().to_owned(),
    })
    .await
    .map_err(io)?;
    let header = serde_json::json!({ "op": "import", "instance": instance });
    f.send(Frame::Admin(
        serde_json::to_vec(&header).unwrap_or_default().into(),
    ))
    .await
    .map_err(io)?;
    let ready = answer(&mut f, Duration::from_secs(10)).await;
    ready.map_err(dest_err)?;
    for (key, seq) in log.deleted_after(since_seq) {
        report.tombstones += 1;
        report.bytes += key.len() as u64;
        f.feed(Frame::Tombstone { key, seq }).await.map_err(io)?;
    }
    for shard in 0..handoff_state::SHARDS {
        for (key, r) in h.table().shard_snapshot(shard) {
            if r.seq <= since_seq {
                continue;
            }
            report.records += 1;
            report.bytes += (key.len() + r.bytes.len()) as u64;
            f.feed(Frame::CopyRecord {
                key,
                seq: r.seq,
                bytes: r.bytes,
            })
            .await
            .map_err(io)?;
        }
    }
    f.send(Frame::CopyEnd {
        records: report.records + report.tombstones,
        digest: Vec::new(),
    })
    .await
    .map_err(io)?;
    let v = answer(&mut f, END_TIMEOUT).await.map_err(dest_err)?;
    let received = v["records"].as_u64().unwrap_or(0);
    if received != report.records + report.tombstones {
        return Err(dest_err(format!(
            "received {received} of {} records",
            report.records + report.tombstones
        )));
    }
    report.refused = v["refused"].as_u64().unwrap_or(0);
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(report)
}

/// The destination's next answer (skipping its hello acknowledgement).
async fn answer(
    f: &mut Framed<TcpStream, FrameCodec>,
    within: Duration,
) -> Result<serde_json::Value, String> {
    let next = tokio::time::timeout(within, async {
        loop {
            match f.next().await {
                Some(Ok(Frame::HelloAck { .. })) => continue,
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| "no answer within the timeout".to_owned())?;
    match next {
        Some(Ok(Frame::AdminReply(b))) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
        Some(Ok(Frame::Error { code, message })) => Err(format!("refused ({code}): {message}")),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The destination side: a peer connection that opened with an import header (an admin body
/// `{"op": "import", "instance": …}`), then tombstones, records and the end.
pub(crate) async fn import_session(
    node: &Node,
    header: &[u8],
    reader: &mut Reader,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    #[derive(serde::Deserialize)]
    struct Header {
        op: String,
        instance: String,
    }
    let h = match serde_json::from_slice::<Header>(header) {
        Ok(hd) if hd.op == "import" => match node.instance(&hd.instance) {
            Ok(h) => h,
            Err(e) => {
                send(tx, vec![error(e.code(), e.to_string())]).await?;
                return Ok(());
            }
        },
        _ => {
            send(
                tx,
                vec![error(code::BAD_REQUEST, "expected an import header")],
            )
            .await?;
            return Ok(());
        }
    };
    send(tx, vec![reply(&serde_json::json!({ "ready": h.name() }))]).await?;
    let mut batch: Vec<(SessionKey, u64, Option<Bytes>)> = Vec::with_capacity(IMPORT_BATCH);
    let mut received = 0u64;
    let mut answers = Vec::new();
    while let Some(frame) = reader.next().await {
        match frame? {
            Frame::CopyRecord { key, seq, bytes } => {
                received += 1;
                batch.push((key, seq, Some(bytes)));
            }
            Frame::Tombstone { key, seq } => {
                received += 1;
                batch.push((key, seq, None));
            }
            Frame::CopyEnd { records, .. } => {
                let (done, refused) = oneshot::channel();
                let records_batch = std::mem::take(&mut batch);
                if !h
                    .control(Control::Import {
                        records: records_batch,
                        done: Some(done),
                    })
                    .await
                {
                    return Err(FrameError::Io("instance stopped".into()));
                }
                // Each batch answers once applied; the last answer comes after all of them.
                answers.push(refused);
                let mut refused_total = 0u64;
                for a in answers.drain(..) {
                    refused_total += a.await.unwrap_or(0);
                }
                tracing::info!(
                    instance = h.name(),
                    records,
                    received,
                    refused = refused_total,
                    "push received"
                );
                let body = serde_json::json!({ "records": received, "refused": refused_total });
                send(tx, vec![reply(&body)]).await?;
                return Ok(());
            }
            other => {
                send(
                    tx,
                    vec![error(
                        code::WRONG_FRAME,
                        format!("frame not allowed in a push: {other:?}"),
                    )],
                )
                .await?;
                return Ok(());
            }
        }
        if batch.len() >= IMPORT_BATCH {
            let (done, refused) = oneshot::channel();
            if !h
                .control(Control::Import {
                    records: std::mem::take(&mut batch),
                    done: Some(done),
                })
                .await
            {
                return Err(FrameError::Io("instance stopped".into()));
            }
            answers.push(refused);
        }
    }
    Ok(())
}

fn reply(v: &impl serde::Serialize) -> Frame {
    Frame::AdminReply(serde_json::to_vec(v).unwrap_or_default().into())
}
