//! A move's copy stream between nodes (DESIGN.md "Live move", steps 3 and 5).
//!
//! The source sends the manifest (every session it held when the copy began, in copy order),
//! then exactly one record per manifest key (a tombstone, with the deleting seq, if the session
//! was deleted meanwhile), then `CopyEnd` with the count and digest of exactly what it sent.
//! The destination hands everything to its instance in order (the shadow's apply rule does
//! the rest), digests what it received, and answers whether the digests match.
//!
//! This is the shell: sockets, waits and pacing. Every protocol decision is the copy cores'
//! ([`crate::copy_core`]).

use crate::copy_core::{
    CopyCoreError, CopyReceiver, CopySender, CopyVerdict, ManifestAnswer, ManifestStep, Outgoing,
    RecordBatch, Refusal, SenderStep, Streamed,
};
use crate::frames::{error, reply, send, Reader};
use crate::instance::{Control, Demands};
use crate::peer::{self, PeerFramed};
use crate::InstanceHandle;
use crate::{Node, NodeError};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use handoff_function::runtime::shadow::{KeySet, Reawaited};
use handoff_function::runtime::{DeletionLog, MoveStepError};
use handoff_function::SessionKey;
use handoff_state::{CopyOrder, CopyPlan, Infeasible, Pacer, Plan};
use handoff_wire::{code, Frame, FrameError, MAX_MANIFEST_KEYS};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Records handed to the destination instance at once.
const RECORD_BATCH: usize = 256;
/// Record bytes handed to the destination instance at once (whichever bound comes first):
/// a partial batch waits for the next record, so this stays well below [`COPY_WINDOW`].
const RECORD_BATCH_BYTES: usize = 64 * 1024;
pub use crate::copy_core::{ResendRound, MAX_RESEND_ROUNDS};
/// Longest wait for the source to apply a seq the copy must include.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// What one core is taken to copy per second when planning (bytes/s); conservative.
pub const CORE_COPY_BPS: u64 = 200_000_000;

/// The outcome of a copy, as the source saw it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CopyReport {
    /// Sessions the copy delivers: the keys in the manifest, and those sent on demand that it
    /// does not list (asked for before it; a tombstone for one this source never held).
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
    /// Time to list the sessions for the manifest (one table scan, before `elapsed_ms`
    /// starts; the copy order is ranked while the manifest is on its way).
    pub manifest_ms: u64,
    /// Time from the connection to the destination's answer to the manifest.
    pub ready_ms: u64,
    /// Time to stream the records (the first round), after any lead.
    pub stream_ms: u64,
    /// The rate the copy was paced at (bytes/s; 0: not paced, the plan set no cap).
    pub paced_bps: u64,
}

impl CopyReport {
    /// The protocol's figures of an ended copy of `sessions` sessions, with the timings of
    /// `timed`.
    pub fn of(core: &CopySender, sessions: u64, timed: CopyReport) -> Self {
        Self {
            sessions_at_start: sessions + core.first.unlisted,
            records_copied: core.first.records,
            tombstones: core.first.tombstones,
            bytes_copied: core.first.bytes,
            digest_match: core.verdict.digest_match,
            differing_buckets: core.verdict.differing_buckets.clone(),
            resends: core.resends.clone(),
            ..timed
        }
    }
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
    /// The destination refused the copy (it is not an empty shadow, ...), with its code.
    #[error("destination {addr} refused ({code}): {message}")]
    Refused {
        /// Its address.
        addr: SocketAddr,
        /// The destination's stable code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// The instance cannot be copied from now (a full copy from a source that already
    /// expects an aborted move's sessions back).
    #[error("copy refused: {0}")]
    WrongPhase(MoveStepError),
    /// The copy's protocol failed (a tombstone missing, a bad answer).
    #[error(transparent)]
    Protocol(#[from] CopyCoreError),
}

impl CopyError {
    /// The stable code a `copy_to` refusal carries: the node's own, `BAD_REQUEST` for an
    /// infeasible plan or a protocol failure, `NOT_REACHABLE` when the destination did not
    /// answer, the destination's code when it refused, `WRONG_PHASE` when the source cannot
    /// copy now.
    pub fn code(&self) -> u16 {
        match self {
            Self::Node(e) => e.code(),
            Self::Infeasible(_) | Self::Protocol(_) => code::BAD_REQUEST,
            Self::Destination { .. } => code::NOT_REACHABLE,
            Self::Refused { code, .. } => *code,
            Self::WrongPhase(_) => code::WRONG_PHASE,
        }
    }
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
    let dest_err = |reason: String| CopyError::Destination {
        addr: destination,
        reason,
    };
    let (mut core, mut step) = CopySender::new(after_seq, only);
    // The manifest must include every session created before the steer switched to move mode:
    // wait until every signal stamped before the switch (seq <= after_seq) is applied.
    if let SenderStep::WaitApplied(seq) = step {
        wait_applied(&h, seq, destination).await?;
    }
    step = core.applied()?;
    debug_assert_eq!(step, SenderStep::TakeManifest);
    // Log deletions before taking the manifest: a listed session deleted later has a tombstone.
    let log = DeletionLog::default();
    let (done, begun) = oneshot::channel();
    let control = Control::BeginSourceCopy {
        log: log.clone(),
        full: !core.subset(),
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
    // The deletion log is switched off when the copy ends, and also when it is cancelled (its
    // requester hung up: the future is dropped wherever it waits).
    let mut ending = EndCopy {
        h: h.clone(),
        log: Some(log.clone()),
    };
    let result = async {
        let began = Instant::now();
        let mut f = peer::connect(destination, node.name(), node.token())
            .await
            .map_err(dest_err)?;
        let mut out = Outbound::new(&mut f, destination);
        // The first round's records: those the destination asks for before the manifest
        // are sent (and digested) with it.
        let mut first = Some(core.outgoing());
        let mut ranked = None;
        let m = if core.subset() {
            // A subset (sessions going back after an abort) is final: no signal for them
            // reaches this instance any more, so an absent one is gone for good (a tombstone).
            let keys = core.keys().to_vec();
            handoff_state::Manifest {
                bytes: keys
                    .iter()
                    .filter_map(|k| h.table().get(k).map(|r| (k.len() + r.bytes.len()) as u64))
                    .sum(),
                keys,
            }
        } else {
            // The copy opens before the manifest: a destination still waiting for one asks at
            // once for the sessions it buffers signals for, and gets their records (or a
            // tombstone for a session this source does not hold) while the table is scanned.
            // The manifest then goes out in table order as soon as one scan has listed it;
            // ranking (hot-first sorts every session) runs meanwhile. Both are long,
            // synchronous work: off the async workers, so the serving path keeps its threads.
            out.open(instance).await?;
            let table = h.table().clone();
            let scan = tokio::task::spawn_blocking(move || Plan::scan(&table, order, now_us));
            let round = first.as_mut().expect("the first round is not streamed yet");
            let plan = out
                .serve_until(&h, &log, round, scan)
                .await?
                .map_err(|e| dest_err(format!("manifest task failed: {e}")))?;
            let m = handoff_state::Manifest {
                keys: plan.keys.clone(),
                bytes: plan.bytes,
            };
            ranked = Some(tokio::task::spawn_blocking(move || plan.ordered()));
            m
        };
        let manifest_ms = began.elapsed().as_millis() as u64;
        let rate = plan.check(m.bytes, CORE_COPY_BPS)?;
        let sessions = m.keys.len() as u64;
        let start = Instant::now();
        // The core-speed estimate only decides whether a deadline is feasible; the copy is
        // paced only when the plan caps bandwidth or CPU.
        let paced = plan.max_bandwidth_bps.is_some() || plan.max_cpu_percent.is_some();
        let mut report = CopyReport {
            sessions_at_start: sessions,
            paced_bps: if paced { rate } else { 0 },
            manifest_ms,
            ..CopyReport::default()
        };
        if paced {
            out.pace(rate);
        }
        let mut step = core.manifest(m.keys)?;
        let mut first_round = true;
        loop {
            step = match step {
                SenderStep::SendManifest(keys) => {
                    send_manifest(out.f, instance, &keys, destination).await?;
                    // The destination answers the manifest once its shadow is ready (or
                    // refuses); until then it may still ask for sessions.
                    let within = Duration::from_secs(30);
                    let ready: ManifestAnswer = match first.as_mut() {
                        Some(round) => {
                            out.answer_serving(&h, &log, round, within, "the manifest")
                                .await?
                        }
                        None => answer(out.f, destination, within, "the manifest").await?,
                    };
                    core.ready(ready)?
                }
                SenderStep::WaitApplied(seq) => {
                    // A destination that re-awaits sessions (a repeated copy, or a re-send
                    // round) needs records that include every signal it applied to the state
                    // it dropped: read them only once this copy has applied as much.
                    wait_applied(&h, seq, destination).await?;
                    if let Some(ranked) = ranked.take() {
                        let keys = ranked
                            .await
                            .map_err(|e| dest_err(format!("ranking task failed: {e}")))?;
                        core.order(keys)?;
                    }
                    if first_round {
                        report.ready_ms = start.elapsed().as_millis() as u64;
                        // Lead K (seed 000 R3): the destination knows its manifest, so it
                        // already serves the sessions created since the switch; the records
                        // follow after the lead.
                        if !lead.is_zero() {
                            tokio::time::sleep(lead).await;
                        }
                        out.epoch = Instant::now();
                    }
                    core.applied()?
                }
                SenderStep::Stream { keys, skip } => {
                    let round = match first.take() {
                        Some(round) => core.resume(round),
                        None => core.outgoing(),
                    };
                    let sent = out.stream(&h, &keys, &skip, &log, round).await?;
                    if first_round {
                        report.stream_ms = out.epoch.elapsed().as_millis() as u64;
                        first_round = false;
                    }
                    core.streamed(sent, skip.len())?;
                    let v: CopyVerdict = answer(
                        out.f,
                        destination,
                        Duration::from_secs(60),
                        "the copy's end",
                    )
                    .await?;
                    core.verdict(v)?
                }
                SenderStep::TakeManifest => {
                    return Err(CopyCoreError::OutOfTurn("take manifest").into())
                }
                SenderStep::Done => break,
            };
        }
        if log.overflowed() {
            return Err(CopyCoreError::MissingTombstone.into());
        }
        report = CopyReport::of(&core, sessions, report);
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
    if let Some(log) = ending.log.take() {
        let _ = h.control(Control::EndSourceCopy(log)).await;
    }
    result
}

/// Ends a source copy's deletion log if the copy is dropped before it ends (cancelled).
struct EndCopy {
    h: InstanceHandle,
    log: Option<DeletionLog>,
}

impl Drop for EndCopy {
    fn drop(&mut self) {
        let Some(log) = self.log.take() else { return };
        tracing::info!(instance = self.h.name(), "copy cancelled");
        let h = self.h.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // A later copy's log is never switched off by this one (the log is compared).
            rt.spawn(async move {
                let _ = h.control(Control::EndSourceCopy(log)).await;
            });
        }
    }
}

/// Waits until the instance has applied `seq` (bounded).
async fn wait_applied(
    h: &InstanceHandle,
    seq: u64,
    destination: SocketAddr,
) -> Result<(), CopyError> {
    h.wait_applied(seq, APPLY_TIMEOUT)
        .await
        .map_err(|at| CopyError::Destination {
            addr: destination,
            reason: format!("the source never applied seq {seq} (at {at})"),
        })
}

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

/// Reads the destination's typed answer to `what`.
async fn answer<T: serde::de::DeserializeOwned>(
    f: &mut PeerFramed,
    destination: SocketAddr,
    within: Duration,
    what: &str,
) -> Result<T, CopyError> {
    peer::answer(f, within, what)
        .await
        .map_err(|e| peer_error(destination, e))
}

/// A peer's refusal or failure as the copy's error.
fn peer_error(destination: SocketAddr, e: peer::PeerError) -> CopyError {
    match e {
        peer::PeerError::Refused { code, message } => CopyError::Refused {
            addr: destination,
            code,
            message,
        },
        peer::PeerError::Failed(reason) => CopyError::Destination {
            addr: destination,
            reason,
        },
    }
}

/// The source's side of a copy connection, with its pace.
struct Outbound<'a> {
    f: &'a mut PeerFramed,
    /// Whether the plan caps the rate (otherwise the pacer is not consulted).
    paced: bool,
    pacer: Pacer,
    epoch: Instant,
    destination: SocketAddr,
    /// Record bytes written on this connection (every round), and those the destination says
    /// it applied: at most [`COPY_WINDOW`] apart.
    sent_bytes: u64,
    applied_bytes: u64,
    /// The destination stopped reporting its progress within [`WINDOW_WAIT`]: the window is
    /// off, TCP's own backpressure paces the rest.
    window_off: bool,
    /// Before the first round streams: a demanded session this source does not hold is
    /// answered with a tombstone (the destination, still without the manifest, cannot tell
    /// it from one on its way).
    early: bool,
}

impl<'a> Outbound<'a> {
    /// An unpaced copy on `f`.
    fn new(f: &'a mut PeerFramed, destination: SocketAddr) -> Self {
        Self {
            f,
            paced: false,
            pacer: Pacer::new(u64::MAX, FLUSH_BYTES as u64, 0),
            epoch: Instant::now(),
            destination,
            sent_bytes: 0,
            applied_bytes: 0,
            window_off: false,
            early: false,
        }
    }

    /// Caps the copy at `rate` bytes per second.
    fn pace(&mut self, rate: u64) {
        self.paced = true;
        self.pacer = Pacer::new(rate, Pacer::burst_for(rate, FLUSH_BYTES as u64), 0);
    }

    /// Opens the copy before its manifest (an empty first chunk): from here on the destination
    /// may ask for sessions, answered at once ([`Outbound::serve_until`]).
    async fn open(&mut self, instance: &str) -> Result<(), CopyError> {
        self.early = true;
        self.f
            .send(Frame::Manifest {
                instance: instance.to_owned(),
                keys: Vec::new(),
                last: false,
            })
            .await
            .map_err(|e| CopyError::Destination {
                addr: self.destination,
                reason: e.to_string(),
            })
    }

    /// Answers the destination's demands until `work` is done; returns its result.
    async fn serve_until<T>(
        &mut self,
        h: &InstanceHandle,
        log: &DeletionLog,
        round: &mut Outgoing,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, CopyError> {
        tokio::pin!(work);
        let none = HashSet::new();
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Ok(done),
                frame = self.f.next() => {
                    if self.on_frame(frame, h, &none, log, round)? > 0 {
                        self.flush().await?;
                    }
                }
            }
        }
    }

    /// Reads the destination's typed answer to `what` within `within`, answering its demands
    /// meanwhile.
    async fn answer_serving<T: serde::de::DeserializeOwned>(
        &mut self,
        h: &InstanceHandle,
        log: &DeletionLog,
        round: &mut Outgoing,
        within: Duration,
        what: &str,
    ) -> Result<T, CopyError> {
        let deadline = tokio::time::Instant::now() + within;
        let none = HashSet::new();
        loop {
            let frame = tokio::time::timeout_at(deadline, self.f.next())
                .await
                .map_err(|_| CopyError::Destination {
                    addr: self.destination,
                    reason: format!("no answer to {what}"),
                })?;
            match frame {
                Some(Ok(Frame::Demand { .. } | Frame::HelloAck { .. })) => {
                    if self.on_frame(frame, h, &none, log, round)? > 0 {
                        self.flush().await?;
                    }
                }
                other => {
                    return peer::parse_answer(other, what)
                        .map_err(|e| peer_error(self.destination, e))
                }
            }
        }
    }
}

/// Bytes a copy's source buffers before writing them to the connection.
const FLUSH_BYTES: usize = 64 * 1024;
/// Record bytes a copy keeps in flight beyond what the destination applied. Everything in
/// flight is ahead of a record the destination asks for, so this bounds a demand's wait
/// (512 KiB at 130 MB/s: 4 ms) while keeping the destination busy.
const COPY_WINDOW: u64 = 512 * 1024;
/// Longest wait for the destination's progress while the window is full.
const WINDOW_WAIT: Duration = Duration::from_millis(500);

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
        outgoing: Outgoing,
    ) -> Result<Streamed, CopyError> {
        let destination = self.destination;
        let io = |e: FrameError| CopyError::Destination {
            addr: destination,
            reason: e.to_string(),
        };
        let paced = self.paced;
        self.early = false;
        let mut round = outgoing;
        for (i, key) in keys.iter().enumerate() {
            if i % DEMAND_POLL_RECORDS == 0 {
                self.serve_demands(h, skip, log, &mut round).await?;
            }
            if skip.contains(key) || round.sent_early(key) {
                continue;
            }
            let size = self.encode(h, key, log, &mut round)?;
            if self.sent_bytes.saturating_sub(self.applied_bytes) > COPY_WINDOW {
                self.await_window(h, skip, log, &mut round).await?;
            }
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
        if round.early() > 0 || round.demands_ignored > 0 {
            tracing::info!(
                demanded = round.early(),
                ignored = round.demands_ignored,
                "records sent on demand"
            );
        }
        let (sent, digest) = round.end();
        self.f
            .send(Frame::CopyEnd {
                records: sent.records,
                digest,
            })
            .await
            .map_err(io)?;
        Ok(sent)
    }
}

impl Outbound<'_> {
    /// Encodes `key`'s record (or tombstone) into the connection's buffer and digests it;
    /// returns its size. A key the table no longer holds is a tombstone; one this copy knows
    /// no deletion of fails the copy.
    fn encode(
        &mut self,
        h: &InstanceHandle,
        key: &SessionKey,
        log: &DeletionLog,
        round: &mut Outgoing,
    ) -> Result<u64, CopyError> {
        let buf = self.f.write_buffer_mut();
        let written = h.table().with(key, |r| {
            Frame::encode_copy_record(buf, key, r.seq, &r.bytes);
            round.record(key, r.seq, &r.bytes)
        });
        if let Some(size) = written {
            self.sent_bytes += size;
            return Ok(size);
        }
        let seq = if self.early {
            round.absent(key, log)
        } else {
            round.tombstone(key, log)?
        };
        Frame::Tombstone {
            key: key.clone(),
            seq,
        }
        .encode(self.f.write_buffer_mut());
        self.sent_bytes += key.len() as u64;
        Ok(key.len() as u64)
    }

    /// Sends at once the records the destination asked for since the last look (it buffers a
    /// signal for each until the record arrives), then flushes them past the batch buffer.
    /// Reads only what already arrived: never waits.
    async fn serve_demands(
        &mut self,
        h: &InstanceHandle,
        skip: &HashSet<SessionKey>,
        log: &DeletionLog,
        round: &mut Outgoing,
    ) -> Result<(), CopyError> {
        let mut sent = 0usize;
        while let Some(frame) = self.f.next().now_or_never() {
            sent += self.on_frame(frame, h, skip, log, round)?;
        }
        if sent > 0 {
            self.flush().await?;
        }
        Ok(())
    }

    /// The window is full: flushes, then waits for the destination's progress (serving its
    /// demands meanwhile). A destination silent for [`WINDOW_WAIT`] turns the window off.
    async fn await_window(
        &mut self,
        h: &InstanceHandle,
        skip: &HashSet<SessionKey>,
        log: &DeletionLog,
        round: &mut Outgoing,
    ) -> Result<(), CopyError> {
        if self.window_off {
            return Ok(());
        }
        self.flush().await?;
        while self.sent_bytes.saturating_sub(self.applied_bytes) > COPY_WINDOW {
            match tokio::time::timeout(WINDOW_WAIT, self.f.next()).await {
                Ok(frame) => {
                    if self.on_frame(frame, h, skip, log, round)? > 0 {
                        self.flush().await?;
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.sent_bytes - self.applied_bytes,
                        "the destination reports no progress; copy window off"
                    );
                    self.window_off = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// One frame from the destination while records stream: its progress and demands
    /// (returns how many records it sent for them), or why the copy must stop.
    fn on_frame(
        &mut self,
        frame: Option<Result<Frame, FrameError>>,
        h: &InstanceHandle,
        skip: &HashSet<SessionKey>,
        log: &DeletionLog,
        round: &mut Outgoing,
    ) -> Result<usize, CopyError> {
        let failed = |reason: String| CopyError::Destination {
            addr: self.destination,
            reason,
        };
        let (applied, keys) = match frame {
            Some(Ok(Frame::Demand { applied, keys })) => (applied, keys),
            // The acknowledgement of the connection's hello.
            Some(Ok(Frame::HelloAck { .. })) => return Ok(0),
            Some(Ok(Frame::Error { code, message })) => {
                return Err(peer_error(
                    self.destination,
                    peer::PeerError::Refused { code, message },
                ))
            }
            Some(Ok(other)) => {
                return Err(failed(format!(
                    "unexpected frame while streaming: {other:?}"
                )))
            }
            Some(Err(e)) => return Err(failed(e.to_string())),
            None => return Err(failed("connection closed while streaming".into())),
        };
        self.applied_bytes = self.applied_bytes.max(applied);
        let mut sent = 0;
        for key in keys {
            // Only a session this source can send (it holds it, or knows its deletion) is
            // sent early; anything else keeps its place (or was never listed). A deletion
            // racing this look is logged before the session leaves the table.
            // Before the first round, a session not held here is answered too (a tombstone).
            let sendable = !skip.contains(&key)
                && (self.early
                    || h.table().with(&key, |_| ()).is_some()
                    || round.knows_tombstone(&key, log));
            if round.demand(&key, sendable) {
                let size = self.encode(h, &key, log, round)?;
                if self.paced {
                    self.pacer.charge(size);
                }
                sent += 1;
            }
        }
        Ok(sent)
    }

    async fn flush(&mut self) -> Result<(), CopyError> {
        let destination = self.destination;
        SinkExt::<Frame>::flush(self.f)
            .await
            .map_err(|e| CopyError::Destination {
                addr: destination,
                reason: e.to_string(),
            })
    }
}

/// Records streamed between two looks for the destination's demands (a look that finds
/// nothing costs one non-blocking read).
const DEMAND_POLL_RECORDS: usize = 32;

/// The destination side: a peer connection carrying one copy (and its re-send rounds).
pub(crate) async fn peer_session(
    node: &Node,
    mut reader: Reader,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    let mut core = CopyReceiver::new(RECORD_BATCH).with_batch_bytes(RECORD_BATCH_BYTES);
    let mut target: Option<InstanceHandle> = None;
    let mut in_flight = InFlight::default();
    // Records queued in this socket wait ahead of any record the shadow asks for: a small
    // receive buffer keeps that queue (and the time a demanded record waits in it) short.
    let _ = socket2::SockRef::from(reader.get_ref().as_ref())
        .set_recv_buffer_size(peer::COPY_SOCKET_BUFFER);
    // The shadow's demands go back to the source on this connection's writer.
    let (demand_tx, mut demand_rx) = mpsc::channel::<Demands>(DEMAND_LANE);
    let writer = tx.clone();
    let forwarder = AbortOnDrop(tokio::spawn(async move {
        while let Some(d) = demand_rx.recv().await {
            let mut frames: Vec<Frame> = d
                .keys
                .chunks(MAX_MANIFEST_KEYS)
                .map(|c| Frame::Demand {
                    applied: d.applied,
                    keys: c.to_vec(),
                })
                .collect();
            if frames.is_empty() {
                frames.push(Frame::Demand {
                    applied: d.applied,
                    keys: Vec::new(),
                });
            }
            if writer.send(frames).await.is_err() {
                return;
            }
        }
    }));
    let mut demand_tx = Some(demand_tx);
    // The demand lane was handed to the instance when the copy opened (before the manifest).
    let mut early_lane = false;
    // When records last went to the instance.
    let mut handed = Instant::now();
    let refuse = |r: Refusal| {
        let c = match r {
            Refusal::ManifestTooLarge => code::BAD_REQUEST,
            Refusal::ManifestAfterStart | Refusal::BeforeManifest(_) => code::WRONG_FRAME,
        };
        vec![error(c, r.to_string())]
    };
    loop {
        let next = match crate::frames::next_request(node, &mut reader).now_or_never() {
            Some(next) => next,
            None => {
                // Nothing more to read now. Before the manifest records trickle, one per
                // demand: what was collected goes to the instance at once. Once the stream
                // runs, a batch fills in well under a millisecond at full speed (handing each
                // read over would multiply the instance's work per record), but a paced copy
                // fills one slowly: a batch older than IDLE_HAND goes over too, so a demanded
                // record never waits long for company.
                let stale = core.pending() > 0 && handed.elapsed() >= IDLE_HAND;
                if let (Some(h), true) = (&target, core.before_manifest() || stale) {
                    hand_records(h, core.take_batch(), core.epoch(), &mut in_flight).await?;
                    handed = Instant::now();
                }
                crate::frames::next_request(node, &mut reader).await
            }
        };
        let Some(frame) = next? else { break };
        let batch = match frame? {
            Frame::Manifest {
                instance,
                keys,
                last,
            } => {
                let fresh = core.is_fresh();
                let step = match core.manifest_chunk(keys, last) {
                    Ok(step) => step,
                    Err(r) => return send(tx, refuse(r)).await,
                };
                let h = match (&target, node.instance(&instance)) {
                    (Some(h), _) => h.clone(),
                    (None, Ok(h)) => h,
                    (None, Err(e)) => return send(tx, vec![error(e.code(), e.to_string())]).await,
                };
                let Some(step) = step else {
                    // The copy's first chunk: a shadow still waiting for its manifest asks this
                    // source for the sessions it buffers signals for at once, and takes their
                    // records before the manifest.
                    if fresh {
                        if let Some(lane) = &demand_tx {
                            let (done, open) = oneshot::channel();
                            let control = Control::OpenCopy {
                                demands: lane.clone(),
                                done,
                            };
                            if !h.control(control).await {
                                return Err(FrameError::Io("instance stopped".into()));
                            }
                            if open.await.unwrap_or(false) {
                                core.open_early();
                                early_lane = true;
                                target = Some(h);
                            }
                        }
                    }
                    continue;
                };
                let body = match step {
                    ManifestStep::Reawait(keys) => match reawait(&h, keys).await? {
                        Ok(done) => core.reawaited(done),
                        Err(e) => {
                            return send(tx, vec![error(code::WRONG_PHASE, e.to_string())]).await
                        }
                    },
                    ManifestStep::Take(keys) => {
                        // Records that came on demand go first.
                        hand_records(&h, core.take_batch(), core.epoch(), &mut in_flight).await?;
                        // A million keys make a set in a fraction of a second: work for this
                        // connection, not for the instance serving signals meanwhile. The
                        // source keeps answering demands until it hears the manifest is
                        // taken: those records go to the shadow as they come meanwhile.
                        let build = tokio::task::spawn_blocking(move || {
                            keys.into_iter().collect::<KeySet>()
                        });
                        let manifest =
                            match build_reading(node, &mut reader, &mut core, &h, build).await? {
                                Ok(m) => m,
                                Err(refusal) => return send(tx, refusal).await,
                            };
                        let (done, answer) = oneshot::channel();
                        let count = manifest.len();
                        // The lane opened with the copy already counts its progress.
                        let demands = demand_tx.take().filter(|_| !early_lane);
                        let control = Control::Manifest {
                            manifest,
                            demands,
                            done,
                        };
                        if !h.control(control).await {
                            return Err(FrameError::Io("instance stopped".into()));
                        }
                        match answer.await {
                            Ok(Ok(taken)) => {
                                tracing::info!(
                                    instance,
                                    sessions = count,
                                    "move destination ready"
                                );
                                core.taken(taken, count)
                            }
                            Ok(Err(e)) => {
                                return send(tx, vec![error(code::WRONG_PHASE, e.to_string())])
                                    .await
                            }
                            Err(_) => return Err(FrameError::Io("instance stopped".into())),
                        }
                    }
                };
                target = Some(h);
                send(tx, vec![reply(&body)]).await?;
                continue;
            }
            Frame::CopyRecord { key, seq, bytes } => {
                let bytes = node.fault_on_copy_record(bytes);
                match core.record(key, seq, Some(bytes)) {
                    Ok(b) => b,
                    Err(r) => return send(tx, refuse(r)).await,
                }
            }
            Frame::Tombstone { key, seq } => match core.record(key, seq, None) {
                Ok(b) => b,
                Err(r) => return send(tx, refuse(r)).await,
            },
            Frame::CopyEnd {
                records,
                digest: theirs,
            } => {
                let (rest, verdict, more) = match core.end(records, theirs) {
                    Ok(v) => v,
                    Err(r) => return send(tx, refuse(r)).await,
                };
                let Some(h) = &target else {
                    return send(tx, refuse(Refusal::BeforeManifest("copy end"))).await;
                };
                hand_records(h, rest, core.epoch(), &mut in_flight).await?;
                // Every record is applied before the digests are answered.
                in_flight.drain().await;
                tracing::info!(
                    records,
                    received = verdict.records,
                    digest_match = verdict.digest_match,
                    "copy received"
                );
                send(tx, vec![reply(&verdict)]).await?;
                if !more {
                    return Ok(());
                }
                // The source may re-send the differing buckets on this connection.
                continue;
            }
            // A push (stop-and-copy and pre-copy baselines) opens with an import header.
            Frame::Admin(header) if core.is_fresh() => {
                return crate::push::import_session(node, &header, &mut reader, tx).await;
            }
            other => {
                let why = format!("frame not allowed on a peer connection: {other:?}");
                return send(tx, vec![error(code::WRONG_FRAME, why)]).await;
            }
        };
        if let (Some(batch), Some(h)) = (batch, &target) {
            hand_records(h, batch, core.epoch(), &mut in_flight).await?;
            handed = Instant::now();
        }
    }
    drop(forwarder);
    Ok(())
}

/// Waits for the manifest's set (`build`) while the connection keeps bringing the records
/// the shadow asked for before it: each goes to the instance at once, so a buffered signal
/// does not wait for a million keys to be hashed. The error frames (`Err`) answer a frame not
/// allowed before the manifest is taken.
async fn build_reading(
    node: &Node,
    reader: &mut Reader,
    core: &mut CopyReceiver,
    h: &InstanceHandle,
    build: tokio::task::JoinHandle<KeySet>,
) -> Result<Result<KeySet, Vec<Frame>>, FrameError> {
    tokio::pin!(build);
    let mut in_flight = InFlight::default();
    loop {
        let frame = tokio::select! {
            biased;
            built = &mut build => {
                // Everything handed meanwhile is applied before the manifest.
                in_flight.drain().await;
                return built
                    .map(Ok)
                    .map_err(|e| FrameError::Io(format!("manifest task failed: {e}")));
            }
            f = crate::frames::next_request(node, reader) => f,
        };
        let Some(frame) = frame? else {
            return Err(FrameError::Io(
                "the source closed before the manifest was taken".into(),
            ));
        };
        let recorded = match frame? {
            Frame::CopyRecord { key, seq, bytes } => {
                core.record(key, seq, Some(node.fault_on_copy_record(bytes)))
            }
            Frame::Tombstone { key, seq } => core.record(key, seq, None),
            other => {
                let why = format!("frame not allowed before the manifest is answered: {other:?}");
                return Ok(Err(vec![error(code::WRONG_FRAME, why)]));
            }
        };
        if let Err(r) = recorded {
            return Ok(Err(vec![error(code::WRONG_FRAME, r.to_string())]));
        }
        hand_records(h, core.take_batch(), core.epoch(), &mut in_flight).await?;
    }
}

/// How long collected records wait for company while the socket is idle once the stream runs.
const IDLE_HAND: Duration = Duration::from_millis(1);

/// Batches of demands queued for the copy connection's writer.
const DEMAND_LANE: usize = 64;

/// Aborts a task when dropped (the demand forwarder holds a sender of the connection's
/// writer, which closes only once every sender is gone).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Record bytes queued for the instance at once. The instance's queue is shared with the
/// steer's signals, so a deep backlog of records would delay the answers of creates routed to
/// this destination (and a demanded record waits behind it); this budget keeps the instance
/// busy without that, and bounds the destination's memory by bytes, whatever the record size.
const RECORD_BYTES_IN_FLIGHT: usize = 256 * 1024;

/// Batches handed to the instance and not yet applied, with their bytes.
#[derive(Default)]
struct InFlight {
    batches: std::collections::VecDeque<(usize, oneshot::Receiver<()>)>,
    bytes: usize,
}

impl InFlight {
    /// Waits until every batch is applied.
    async fn drain(&mut self) {
        for (_, applied) in self.batches.drain(..) {
            let _ = applied.await;
        }
        self.bytes = 0;
    }
}

/// Hands a batch of records to the instance, first waiting for the oldest batches in flight
/// while [`RECORD_BYTES_IN_FLIGHT`] are (backpressure reaches the source through TCP).
async fn hand_records(
    h: &InstanceHandle,
    records: RecordBatch,
    epoch: u64,
    in_flight: &mut InFlight,
) -> Result<(), FrameError> {
    if records.is_empty() {
        return Ok(());
    }
    let size: usize = records
        .iter()
        .map(|(k, _, b)| k.len() + b.as_ref().map_or(0, Bytes::len))
        .sum();
    while in_flight.bytes >= RECORD_BYTES_IN_FLIGHT {
        match in_flight.batches.pop_front() {
            Some((bytes, oldest)) => {
                let _ = oldest.await;
                in_flight.bytes -= bytes;
            }
            None => in_flight.bytes = 0,
        }
    }
    let (done, applied) = oneshot::channel();
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
    in_flight.batches.push_back((size, applied));
    in_flight.bytes += size;
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
