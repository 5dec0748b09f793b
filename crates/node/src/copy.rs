//! A move's copy stream between nodes (DESIGN.md "Live move", steps 3 and 5).
//!
//! The source sends the manifest (every session it held when the copy began, in copy order),
//! then exactly one record per manifest key (a tombstone, with the deleting seq, if the session
//! was deleted meanwhile), then `CopyEnd` with the count and digest of exactly what it sent.
//! The destination hands everything to its instance in order (the shadow's apply rule does
//! the rest), digests what it received, and answers whether the digests match.

use crate::conn::{error, send, Reader};
use crate::instance::Control;
use crate::InstanceHandle;
use crate::{Node, NodeError};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use handoff_function::runtime::shadow::Reawaited;
use handoff_function::runtime::{DeletionLog, MoveStepError};
use handoff_function::SessionKey;
use handoff_state::{bucket_of, manifest, CopyOrder, CopyPlan, Digest, Infeasible, Pacer};
use handoff_wire::{code, Frame, FrameCodec, FrameError, Role, MAX_MANIFEST_KEYS, VERSION};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

/// Most sessions a move's manifest may name (bounds the destination's memory).
const MAX_MANIFEST_TOTAL: usize = 50_000_000;
/// Records handed to the destination instance at once.
const RECORD_BATCH: usize = 256;
/// Most bytes of hex session keys one JSON answer lists: half a frame body, so the answer is
/// never cut short by the frame limit (a longer list is refused instead).
const MAX_JSON_KEY_BYTES: usize = handoff_wire::MAX_BODY / 2;

/// Whether `keys`, hex-encoded, fit in one JSON answer (see [`MAX_JSON_KEY_BYTES`]).
pub(crate) fn keys_fit_in_json(keys: &[SessionKey]) -> bool {
    keys.iter().map(|k| 2 * k.len() + 3).sum::<usize>() <= MAX_JSON_KEY_BYTES
}
/// Most re-send rounds after a digest mismatch before the copy gives up (the move aborts).
pub const MAX_RESEND_ROUNDS: usize = 3;
/// What one core is taken to copy per second when planning (bytes/s); conservative.
pub const CORE_COPY_BPS: u64 = 200_000_000;

/// The outcome of a copy, as the source saw it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CopyReport {
    /// Keys in the manifest.
    pub sessions_at_start: u64,
    /// Records sent (records and tombstones; equals `sessions_at_start`).
    pub records_copied: u64,
    /// Of which tombstones.
    pub tombstones: u64,
    /// Record bytes sent (keys and values).
    pub bytes_copied: u64,
    /// Whether the destination's digest of what it received equals the source's.
    pub digest_match: bool,
    /// Digest buckets that differ (empty when they match).
    pub differing_buckets: Vec<usize>,
    /// Re-send rounds after a digest mismatch, in order (empty when the first digests
    /// matched).
    pub resends: Vec<ResendRound>,
    /// Time from the manifest to the destination's answer.
    pub elapsed_ms: u64,
    /// Time to rank the sessions into the manifest (before `elapsed_ms` starts).
    pub manifest_ms: u64,
    /// Time from the connection to the destination's answer to the manifest.
    pub ready_ms: u64,
    /// Time to stream the records (the first round), after any lead.
    pub stream_ms: u64,
    /// The rate the copy was paced at (bytes/s; 0: not paced, the plan set no cap).
    pub paced_bps: u64,
}

/// One re-send of the differing digest buckets (DESIGN.md "Verify", seed 000 R12).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResendRound {
    /// The buckets re-sent.
    pub buckets: Vec<usize>,
    /// Records and tombstones re-sent.
    pub records: u64,
    /// Sessions of those buckets the destination owns by now (created there during the move),
    /// so not re-sent.
    pub excluded: u64,
    /// Record bytes re-sent.
    pub bytes: u64,
}

/// Why a copy failed (the move aborts).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The instance is not hosted here.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The plan cannot be met; refused before anything was sent.
    #[error(transparent)]
    Infeasible(#[from] Infeasible),
    /// The destination could not be reached or failed.
    #[error("destination {addr}: {reason}")]
    Destination {
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The instance cannot be copied from now (a full copy from a source that already
    /// expects an aborted move's sessions back).
    #[error("copy refused: {0}")]
    WrongPhase(MoveStepError),
    /// A manifest session vanished without a logged deletion (or the log overflowed).
    #[error("session deleted during the copy without a tombstone; the copy cannot be exact")]
    MissingTombstone,
}

fn tombstone_digest_bytes() -> &'static [u8] {
    // Tombstones enter the digest as a record with this marker body (no real record is empty:
    // every function's encoding carries at least a version byte).
    &[]
}

/// Streams `instance`'s sessions to the node at `destination`, which must host an empty
/// instance of the same name.
#[allow(clippy::too_many_arguments)]
pub async fn copy_to(
    node: &Node,
    instance: &str,
    destination: SocketAddr,
    order: CopyOrder,
    plan: CopyPlan,
    after_seq: u64,
    only: Option<Vec<SessionKey>>,
    lead: Duration,
    now_us: u64,
) -> Result<CopyReport, CopyError> {
    let h = node.instance(instance)?;
    // The manifest must include every session created before the steer switched to move mode:
    // wait until every signal stamped before the switch (seq <= after_seq) is applied.
    wait_applied(&h, after_seq, destination).await?;
    let dest_err = |reason: String| CopyError::Destination {
        addr: destination,
        reason,
    };
    // Log deletions before taking the manifest: a listed session deleted later has a tombstone.
    let log = DeletionLog::default();
    let (done, begun) = oneshot::channel();
    let control = Control::BeginSourceCopy {
        log: log.clone(),
        full: only.is_none(),
        done,
    };
    if !h.control(control).await {
        return Err(NodeError::UnknownInstance(instance.to_owned()).into());
    }
    match begun.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CopyError::WrongPhase(e)),
        Err(_) => return Err(NodeError::UnknownInstance(instance.to_owned()).into()),
    }
    let result = async {
        let began = Instant::now();
        // A subset (sessions going back after an abort) is final: no signal for them reaches
        // this instance any more, so an absent one is gone for good (a tombstone).
        let subset = only.is_some();
        let m = match only {
            Some(keys) => handoff_state::Manifest {
                bytes: keys
                    .iter()
                    .filter_map(|k| h.table().get(k).map(|r| (k.len() + r.bytes.len()) as u64))
                    .sum(),
                keys,
            },
            None => {
                // Ranking every session (hot-first sorts them all) is long, synchronous work:
                // off the async workers, so the serving path keeps its threads meanwhile.
                let table = h.table().clone();
                tokio::task::spawn_blocking(move || manifest(&table, order, now_us))
                    .await
                    .map_err(|e| dest_err(format!("manifest task failed: {e}")))?
            }
        };
        let manifest_ms = began.elapsed().as_millis() as u64;
        let rate = plan.check(m.bytes, CORE_COPY_BPS)?;
        let start = Instant::now();
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(destination))
            .await
            .map_err(|_| dest_err("connect timed out".into()))?
            .map_err(|e| dest_err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let mut f = Framed::new(stream, FrameCodec);
        let io = |e: FrameError| dest_err(e.to_string());
        f.send(Frame::Hello {
            role: Role::Peer,
            name: node.name().to_owned(),
            min_version: VERSION,
            max_version: VERSION,
            token: node.token().to_owned(),
        })
        .await
        .map_err(io)?;
        send_manifest(&mut f, instance, &m.keys, destination).await?;
        // The destination answers the manifest once its shadow is ready (or refuses).
        let ready = answer(&mut f, destination, Duration::from_secs(30), "the manifest").await?;
        // A destination that had a manifest already (this copy repeats one whose answer was
        // lost) re-awaits the sessions at its seq: read them only once this copy has applied
        // as much.
        wait_applied(&h, ready["at_seq"].as_u64().unwrap_or(0), destination).await?;
        let ready_ms = start.elapsed().as_millis() as u64;
        // Lead K (seed 000 R3): the destination knows its manifest, so it already serves the
        // sessions created since the switch; the records follow after the lead.
        if !lead.is_zero() {
            tokio::time::sleep(lead).await;
        }
        // The core-speed estimate only decides whether a deadline is feasible; the copy is
        // paced only when the plan caps bandwidth or CPU.
        let paced = plan.max_bandwidth_bps.is_some() || plan.max_cpu_percent.is_some();
        let mut report = CopyReport {
            sessions_at_start: m.keys.len() as u64,
            paced_bps: if paced { rate } else { 0 },
            manifest_ms,
            ready_ms,
            ..CopyReport::default()
        };
        let mut out = Outbound {
            f: &mut f,
            paced,
            pacer: Pacer::new(if paced { rate } else { u64::MAX }, 256 * 1024, 0),
            epoch: Instant::now(),
            destination,
        };
        let sent = out
            .stream(&h, &m.keys, &HashSet::new(), &log, subset)
            .await?;
        report.records_copied = sent.records;
        report.tombstones = sent.tombstones;
        report.bytes_copied = sent.bytes;
        report.stream_ms = out.epoch.elapsed().as_millis() as u64;
        let mut verdict = answer(
            out.f,
            destination,
            Duration::from_secs(60),
            "the copy's end",
        )
        .await?;
        // Verify (R11-R13): on a mismatch only the differing buckets are re-sent, then the
        // digests of what was re-sent are compared again, a bounded number of times.
        loop {
            report.digest_match = verdict["digest_match"].as_bool().unwrap_or(false);
            report.differing_buckets =
                serde_json::from_value(verdict["differing_buckets"].clone()).unwrap_or_default();
            if report.digest_match
                || report.differing_buckets.is_empty()
                || report.resends.len() >= MAX_RESEND_ROUNDS
            {
                break;
            }
            let buckets: HashSet<usize> = report.differing_buckets.iter().copied().collect();
            let keys: Vec<SessionKey> = m
                .keys
                .iter()
                .filter(|k| buckets.contains(&bucket_of(k)))
                .cloned()
                .collect();
            tracing::warn!(
                instance,
                buckets = buckets.len(),
                sessions = keys.len(),
                "digests differ; re-sending the differing buckets"
            );
            send_manifest(out.f, instance, &keys, destination).await?;
            let ready = answer(out.f, destination, Duration::from_secs(30), "the re-send").await?;
            let at_seq = ready["at_seq"].as_u64().unwrap_or(u64::MAX);
            let excluded: HashSet<SessionKey> = ready["excluded"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| hex::decode(k.as_str()?).ok())
                        .map(SessionKey::from)
                        .collect()
                })
                .unwrap_or_default();
            // Every signal the destination applied to the state it dropped must be in the
            // records re-sent: read them only once this copy has applied as much.
            wait_applied(&h, at_seq, destination).await?;
            let sent = out.stream(&h, &keys, &excluded, &log, subset).await?;
            report.resends.push(ResendRound {
                buckets: report.differing_buckets.clone(),
                records: sent.records,
                excluded: excluded.len() as u64,
                bytes: sent.bytes,
            });
            verdict = answer(
                out.f,
                destination,
                Duration::from_secs(60),
                "the re-send's end",
            )
            .await?;
        }
        if log.overflowed() {
            return Err(CopyError::MissingTombstone);
        }
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            instance,
            records = report.records_copied,
            bytes = report.bytes_copied,
            manifest_ms = report.manifest_ms,
            ready_ms = report.ready_ms,
            stream_ms = report.stream_ms,
            elapsed_ms = report.elapsed_ms,
            resends = report.resends.len(),
            digest_match = report.digest_match,
            "copy sent"
        );
        Ok(report)
    }
    .await;
    let _ = h.control(Control::EndSourceCopy(log)).await;
    result
}

/// Waits until the instance has applied `seq` (bounded).
async fn wait_applied(
    h: &InstanceHandle,
    seq: u64,
    destination: SocketAddr,
) -> Result<(), CopyError> {
    let waited = Instant::now();
    while h.stats().runtime.last_seq < seq {
        if waited.elapsed() > Duration::from_secs(10) {
            return Err(CopyError::Destination {
                addr: destination,
                reason: format!(
                    "the source never applied seq {seq} (at {})",
                    h.stats().runtime.last_seq
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

type PeerFramed = Framed<TcpStream, FrameCodec>;

/// Sends `keys` as manifest frames (chunked; an empty manifest is one empty last frame).
async fn send_manifest(
    f: &mut PeerFramed,
    instance: &str,
    keys: &[SessionKey],
    destination: SocketAddr,
) -> Result<(), CopyError> {
    let io = |e: FrameError| CopyError::Destination {
        addr: destination,
        reason: e.to_string(),
    };
    let chunks: Vec<&[SessionKey]> = keys.chunks(MAX_MANIFEST_KEYS).collect();
    if chunks.is_empty() {
        f.feed(Frame::Manifest {
            instance: instance.to_owned(),
            keys: Vec::new(),
            last: true,
        })
        .await
        .map_err(io)?;
    }
    for (i, c) in chunks.iter().enumerate() {
        f.feed(Frame::Manifest {
            instance: instance.to_owned(),
            keys: c.to_vec(),
            last: i + 1 == chunks.len(),
        })
        .await
        .map_err(io)?;
    }
    SinkExt::<Frame>::flush(f).await.map_err(io)
}

/// Reads the destination's JSON answer to `what` (a refusal or anything else is an error).
async fn answer(
    f: &mut PeerFramed,
    destination: SocketAddr,
    within: Duration,
    what: &str,
) -> Result<serde_json::Value, CopyError> {
    let dest_err = |reason: String| CopyError::Destination {
        addr: destination,
        reason,
    };
    let got = tokio::time::timeout(within, async {
        loop {
            match f.next().await {
                Some(Ok(Frame::HelloAck { .. })) => continue,
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| dest_err(format!("no answer to {what}")))?;
    match got {
        Some(Ok(Frame::AdminReply(b))) => {
            serde_json::from_slice(&b).map_err(|e| dest_err(e.to_string()))
        }
        Some(Ok(Frame::Error { code, message })) => {
            Err(dest_err(format!("refused ({code}): {message}")))
        }
        other => Err(dest_err(format!("unexpected answer to {what}: {other:?}"))),
    }
}

/// What one pass of records sent.
struct Streamed {
    records: u64,
    tombstones: u64,
    bytes: u64,
}

/// The source's side of a copy connection, with its pace.
struct Outbound<'a> {
    f: &'a mut PeerFramed,
    /// Whether the plan caps the rate (otherwise the pacer is not consulted).
    paced: bool,
    pacer: Pacer,
    epoch: Instant,
    destination: SocketAddr,
}

/// Bytes a copy's source buffers before writing them to the connection.
const FLUSH_BYTES: usize = 256 * 1024;

impl Outbound<'_> {
    /// Sends one record (or tombstone) per key not in `skip`, as the table has it now, then
    /// `CopyEnd` with their count and digest.
    ///
    /// Hot path of a move (one iteration per session): each record is digested and encoded
    /// straight from the table into the connection's buffer under its shard's read lock, with
    /// no record clone, and the buffer goes out in large writes.
    async fn stream(
        &mut self,
        h: &InstanceHandle,
        keys: &[SessionKey],
        skip: &HashSet<SessionKey>,
        log: &DeletionLog,
        subset: bool,
    ) -> Result<Streamed, CopyError> {
        let destination = self.destination;
        let io = |e: FrameError| CopyError::Destination {
            addr: destination,
            reason: e.to_string(),
        };
        let paced = self.paced;
        let mut digest = Digest::default();
        let mut sent = Streamed {
            records: 0,
            tombstones: 0,
            bytes: 0,
        };
        for key in keys.iter().filter(|k| !skip.contains(*k)) {
            let buf = self.f.write_buffer_mut();
            let written = h.table().with(key, |r| {
                digest.add(key, r.seq, &r.bytes);
                Frame::encode_copy_record(buf, key, r.seq, &r.bytes);
                (key.len() + r.bytes.len()) as u64
            });
            let size = match written {
                Some(size) => {
                    sent.bytes += size;
                    size
                }
                None => {
                    let seq = match log.seq_of(key) {
                        Some(s) => s,
                        // Never created here (or long gone): below every signal buffered for it.
                        None if subset => 0,
                        None => return Err(CopyError::MissingTombstone),
                    };
                    digest.add(key, seq, tombstone_digest_bytes());
                    sent.tombstones += 1;
                    Frame::Tombstone {
                        key: key.clone(),
                        seq,
                    }
                    .encode(buf);
                    key.len() as u64
                }
            };
            sent.records += 1;
            if paced {
                let wait = self
                    .pacer
                    .delay_us(size, self.epoch.elapsed().as_micros() as u64);
                if wait > 0 {
                    SinkExt::<Frame>::flush(self.f).await.map_err(io)?;
                    tokio::time::sleep(Duration::from_micros(wait)).await;
                    self.pacer
                        .delay_us(size, self.epoch.elapsed().as_micros() as u64);
                }
            }
            if self.f.write_buffer().len() >= FLUSH_BYTES {
                SinkExt::<Frame>::flush(self.f).await.map_err(io)?;
            }
        }
        self.f
            .send(Frame::CopyEnd {
                records: sent.records,
                digest: digest.buckets().to_vec(),
            })
            .await
            .map_err(io)?;
        Ok(sent)
    }
}

/// The destination side: a peer connection carrying one copy (and its re-send rounds).
pub(crate) async fn peer_session(
    node: &Node,
    mut reader: Reader,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    let mut manifest: Vec<SessionKey> = Vec::new();
    let mut target = None;
    let mut digest = Digest::default();
    let mut received = 0u64;
    let mut batch: Vec<(SessionKey, u64, Option<Bytes>)> = Vec::new();
    let mut in_flight = std::collections::VecDeque::new();
    // The shadow's copy epoch this connection's records belong to.
    let mut epoch = 0u64;
    // After a mismatch: the re-send rounds asked for so far, and whether one may begin.
    let mut rounds = 0usize;
    let mut resend_open = false;
    while let Some(frame) = reader.next().await {
        match frame? {
            Frame::Manifest {
                instance,
                keys,
                last,
            } => {
                if target.is_some() && !resend_open {
                    send(
                        tx,
                        vec![error(code::WRONG_FRAME, "manifest after the copy began")],
                    )
                    .await?;
                    return Ok(());
                }
                if manifest.len() + keys.len() > MAX_MANIFEST_TOTAL {
                    send(
                        tx,
                        vec![error(
                            code::BAD_REQUEST,
                            "manifest larger than the node accepts",
                        )],
                    )
                    .await?;
                    return Ok(());
                }
                manifest.extend(keys);
                if !last {
                    continue;
                }
                let keys = std::mem::take(&mut manifest);
                if let Some(h) = &target {
                    // A re-send round: drop the sessions of the differing buckets, await them.
                    resend_open = false;
                    rounds += 1;
                    let body = match reawait(h, keys).await? {
                        Ok(done) if !keys_fit_in_json(&done.excluded) => {
                            let why = format!(
                                "{} sessions of the differing buckets are this node's own: more than \
                                 a re-send answer can list",
                                done.excluded.len()
                            );
                            send(tx, vec![error(code::BAD_REQUEST, why)]).await?;
                            return Ok(());
                        }
                        Ok(done) => {
                            epoch = done.epoch;
                            serde_json::json!({
                            "resend": rounds,
                            "at_seq": done.at_seq,
                            "awaited": done.awaited,
                            "excluded": done.excluded.iter().map(hex::encode).collect::<Vec<_>>(),
                            })
                        }
                        Err(e) => {
                            send(tx, vec![error(code::WRONG_FRAME, e.to_string())]).await?;
                            return Ok(());
                        }
                    };
                    digest = Digest::default();
                    received = 0;
                    send(tx, vec![reply(&body)]).await?;
                    continue;
                }
                let h = match node.instance(&instance) {
                    Ok(h) => h,
                    Err(e) => {
                        send(tx, vec![error(e.code(), e.to_string())]).await?;
                        return Ok(());
                    }
                };
                let (done, answer) = oneshot::channel();
                let count = keys.len();
                if !h
                    .control(Control::Manifest {
                        manifest: keys,
                        done,
                    })
                    .await
                {
                    return Err(FrameError::Io("instance stopped".into()));
                }
                match answer.await {
                    Ok(Ok(taken)) => {
                        tracing::info!(instance, sessions = count, "move destination ready");
                        epoch = taken.epoch;
                        let body = serde_json::json!({
                            "ready": instance,
                            "sessions": count,
                            "at_seq": taken.at_seq,
                        });
                        send(tx, vec![reply(&body)]).await?;
                    }
                    Ok(Err(e)) => {
                        send(tx, vec![error(code::WRONG_FRAME, e.to_string())]).await?;
                        return Ok(());
                    }
                    Err(_) => return Err(FrameError::Io("instance stopped".into())),
                }
                target = Some(h);
            }
            Frame::CopyRecord { key, seq, bytes } => {
                let bytes = node.fault_on_copy_record(bytes);
                digest.add(&key, seq, &bytes);
                received += 1;
                batch.push((key, seq, Some(bytes)));
            }
            Frame::Tombstone { key, seq } => {
                digest.add(&key, seq, tombstone_digest_bytes());
                received += 1;
                batch.push((key, seq, None));
            }
            Frame::CopyEnd {
                records,
                digest: theirs,
            } => {
                let Some(h) = &target else {
                    send(
                        tx,
                        vec![error(code::WRONG_FRAME, "copy end before the manifest")],
                    )
                    .await?;
                    return Ok(());
                };
                hand_records(h, &mut batch, epoch, &mut in_flight).await?;
                // Every record is applied before the digests are answered.
                for applied in in_flight.drain(..) {
                    let _ = applied.await;
                }
                let mut differing = match Digest::from_parts(theirs, records) {
                    Some(theirs) => theirs.differing_buckets(&digest),
                    None => (0..handoff_state::BUCKETS).collect(),
                };
                if differing.is_empty() && records != received {
                    // Equal digests over unequal counts cannot be repaired bucket by bucket.
                    differing = (0..handoff_state::BUCKETS).collect();
                }
                let matched = differing.is_empty();
                tracing::info!(
                    records,
                    received,
                    round = rounds,
                    digest_match = matched,
                    "copy received"
                );
                let body = serde_json::json!({
                    "records": received,
                    "digest_match": matched,
                    "differing_buckets": differing,
                });
                send(tx, vec![reply(&body)]).await?;
                if matched || rounds >= MAX_RESEND_ROUNDS {
                    return Ok(());
                }
                // The source may re-send the differing buckets on this connection.
                resend_open = true;
            }
            // A push (stop-and-copy and pre-copy baselines) opens with an import header.
            Frame::Admin(header) if target.is_none() && manifest.is_empty() && received == 0 => {
                return crate::push::import_session(node, &header, &mut reader, tx).await;
            }
            other => {
                send(
                    tx,
                    vec![error(
                        code::WRONG_FRAME,
                        format!("frame not allowed on a peer connection: {other:?}"),
                    )],
                )
                .await?;
                return Ok(());
            }
        }
        if batch.len() >= RECORD_BATCH {
            let Some(h) = &target else {
                send(
                    tx,
                    vec![error(code::WRONG_FRAME, "records before the manifest")],
                )
                .await?;
                return Ok(());
            };
            hand_records(h, &mut batch, epoch, &mut in_flight).await?;
        }
    }
    Ok(())
}

/// Batches of copied records queued for the instance at once. The instance's queue is shared
/// with the steer's signals, so a deep backlog of records would delay the answers of creates
/// routed to this destination; a few batches keep it busy without that.
const RECORD_BATCHES_IN_FLIGHT: usize = 8;

/// Hands a batch of records to the instance, first waiting for the oldest batch in flight
/// when [`RECORD_BATCHES_IN_FLIGHT`] are (backpressure reaches the source through TCP).
async fn hand_records(
    h: &InstanceHandle,
    batch: &mut Vec<(SessionKey, u64, Option<Bytes>)>,
    epoch: u64,
    in_flight: &mut std::collections::VecDeque<oneshot::Receiver<()>>,
) -> Result<(), FrameError> {
    if batch.is_empty() {
        return Ok(());
    }
    while in_flight.len() >= RECORD_BATCHES_IN_FLIGHT {
        if let Some(oldest) = in_flight.pop_front() {
            let _ = oldest.await;
        }
    }
    let (done, applied) = oneshot::channel();
    let records = std::mem::take(batch);
    if !h
        .control(Control::Records {
            records,
            epoch,
            done: Some(done),
        })
        .await
    {
        return Err(FrameError::Io("instance stopped".into()));
    }
    in_flight.push_back(applied);
    Ok(())
}

/// Asks the destination instance to drop and await `keys` again.
async fn reawait(
    h: &InstanceHandle,
    keys: Vec<SessionKey>,
) -> Result<Result<Reawaited, MoveStepError>, FrameError> {
    let (done, answer) = oneshot::channel();
    if !h.control(Control::Reawait { keys, done }).await {
        return Err(FrameError::Io("instance stopped".into()));
    }
    answer
        .await
        .map_err(|_| FrameError::Io("instance stopped".into()))
}

fn reply(body: &serde_json::Value) -> Frame {
    Frame::AdminReply(serde_json::to_vec(body).unwrap_or_default().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_that_would_overflow_a_frame_do_not_fit_in_json() {
        let key = |i: u32| SessionKey::from(i.to_be_bytes().repeat(8));
        let few: Vec<SessionKey> = (0..100).map(key).collect();
        assert!(keys_fit_in_json(&few));
        // 32-byte keys are 67 bytes of JSON each: 10,000 of them exceed half a frame body.
        let many: Vec<SessionKey> = (0..10_000).map(key).collect();
        assert!(!keys_fit_in_json(&many));
        let answer = serde_json::to_vec(&many.iter().map(hex::encode).collect::<Vec<_>>()).unwrap();
        assert!(answer.len() > MAX_JSON_KEY_BYTES);
    }
}
