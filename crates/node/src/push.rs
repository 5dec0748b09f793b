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

use crate::frames::{error, reply, send, Reader};
use crate::instance::Control;
use crate::peer;
use crate::{Node, NodeError};
use bytes::Bytes;
use futures::SinkExt;
use handoff_function::runtime::DeletionLog;
use handoff_function::SessionKey;
use handoff_wire::{code, Frame, FrameError};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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

impl PushError {
    /// The stable code a `push` refusal carries: the node's own, `NOT_REACHABLE` when the
    /// destination failed or the source did not apply the seq in time, `WRONG_PHASE` for a
    /// round whose deletions are unknown.
    pub fn code(&self) -> u16 {
        use handoff_wire::code;
        match self {
            Self::Node(e) => e.code(),
            Self::Destination { .. } | Self::NotApplied { .. } => code::NOT_REACHABLE,
            Self::NoDeletionLog(_) => code::WRONG_PHASE,
        }
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
    h.wait_applied(after_seq, APPLY_TIMEOUT)
        .await
        .map_err(|at| PushError::NotApplied {
            wanted: after_seq,
            at,
        })?;
    let log = if since_seq == 0 {
        // Log deletions from before the scan's seq on: a later round finds every one above it.
        let log = DeletionLog::default();
        if !h.control(Control::DeletionLog(Some(log.clone()))).await || !barrier(&h).await {
            return Err(NodeError::UnknownInstance(instance.to_owned()).into());
        }
        *h.push_log().lock() = Some(log.clone());
        log
    } else {
        let kept = h.push_log().lock().clone();
        kept.ok_or(PushError::NoDeletionLog(since_seq))?
    };
    let result = stream(node, &h, instance, destination, since_seq, &log).await;
    if last || result.is_err() {
        *h.push_log().lock() = None;
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
    let mut f = peer::connect(destination, node.name(), node.token())
        .await
        .map_err(dest_err)?;
    let header = ImportHeader {
        op: "import".into(),
        instance: instance.to_owned(),
    };
    f.send(Frame::Admin(
        serde_json::to_vec(&header).unwrap_or_default().into(),
    ))
    .await
    .map_err(io)?;
    let _: ImportReady = peer::answer(&mut f, Duration::from_secs(10), "the import header")
        .await
        .map_err(|e| dest_err(e.to_string()))?;
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
    let done: ImportDone = peer::answer(&mut f, END_TIMEOUT, "the push's end")
        .await
        .map_err(|e| dest_err(e.to_string()))?;
    if done.records != report.records + report.tombstones {
        return Err(dest_err(format!(
            "received {} of {} records",
            done.records,
            report.records + report.tombstones
        )));
    }
    report.refused = done.refused;
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(report)
}

/// The admin body a push opens its peer connection with.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportHeader {
    /// Always `import`.
    op: String,
    /// The instance whose sessions are overwritten.
    instance: String,
}

/// The destination's answer to the import header.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportReady {
    /// The instance.
    ready: String,
}

/// The destination's answer to a push's end.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportDone {
    /// Records and tombstones received.
    records: u64,
    /// Of which refused (a record that does not decode).
    refused: u64,
}

/// The destination side: a peer connection that opened with an import header (an admin body
/// `{"op": "import", "instance": …}`), then tombstones, records and the end.
pub(crate) async fn import_session(
    node: &Node,
    header: &[u8],
    reader: &mut Reader,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    let h = match serde_json::from_slice::<ImportHeader>(header) {
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
    send(
        tx,
        vec![reply(&ImportReady {
            ready: h.name().to_owned(),
        })],
    )
    .await?;
    let mut batch: Vec<(SessionKey, u64, Option<Bytes>)> = Vec::with_capacity(IMPORT_BATCH);
    let mut received = 0u64;
    let mut answers = Vec::new();
    while let Some(frame) = crate::frames::next_request(node, reader).await? {
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
                let body = ImportDone {
                    records: received,
                    refused: refused_total,
                };
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
