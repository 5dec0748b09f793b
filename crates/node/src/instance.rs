//! The task that runs one instance: applies its signals in seq order and emits outputs.

use bytes::Bytes;
use handoff_function::runtime::shadow::{Reawaited, ShadowLimits, ShadowStats};
use handoff_function::runtime::ManifestTaken;
use handoff_function::runtime::{
    Applied, ClassifiedOutput, DeletionLog, Hosted, InstanceStats, MoveStepError,
};
use handoff_function::SessionKey;
use handoff_function::{RulesetHandle, SignalKind, Stamp};
use handoff_state::SessionTable;
use handoff_wire::{Frame, OutputFrame, SignalFrame, SIGNAL_HANDOVER, SIGNAL_SHADOW};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Where the outputs of a batch of signals go.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Back over the steer connection that sent the signals, as output frames.
    Tcp(mpsc::Sender<Vec<Frame>>),
    /// Straight to the clients, through the direct path's sender task and its UDP socket.
    Udp(mpsc::Sender<Vec<(Bytes, SocketAddr)>>),
}

/// A batch of signals of one instance and where their outputs go.
#[derive(Debug)]
pub struct Batch {
    /// Signals in seq order.
    pub signals: Vec<SignalFrame>,
    /// Output destination.
    pub reply: Reply,
    /// Answered with the last seq applied once this batch (and all before it) is done.
    pub drained: Option<tokio::sync::oneshot::Sender<u64>>,
    /// The steer binding that sent it (`None`: the direct path). Batches of an older binding
    /// than the instance's current one are fenced off: dropped and counted.
    pub binding: Option<u64>,
}

/// A command for an instance task, queued in order with its signals.
pub enum Control {
    /// Start (`Some`) or stop logging deletions for a copy stream.
    DeletionLog(Option<DeletionLog>),
    /// A copy from this instance ended: stop the deletion log it installed.
    EndSourceCopy(DeletionLog),
    /// A copy from this instance begins: log deletions (see `Hosted::begin_source_copy`).
    BeginSourceCopy {
        /// The log.
        log: DeletionLog,
        /// A full copy (not a key subset).
        full: bool,
        /// The answer.
        done: oneshot::Sender<Result<(), MoveStepError>>,
    },
    /// Become a move's destination, before the manifest is known (prepare phase).
    PrepareShadow(oneshot::Sender<Result<(), MoveStepError>>),
    /// The source's manifest arrived: a prepared shadow takes it; a serving (empty) instance
    /// becomes a shadow with it.
    Manifest {
        /// The source's manifest.
        manifest: Vec<SessionKey>,
        /// The answer (see `Hosted::take_manifest`).
        done: oneshot::Sender<Result<ManifestTaken, MoveStepError>>,
    },
    /// Expect the records of these sessions from another node (an aborted move's sessions
    /// coming back); their signals are buffered until they arrive.
    ExpectRecords {
        /// The sessions.
        keys: Vec<SessionKey>,
        /// The answer.
        done: oneshot::Sender<Result<(), MoveStepError>>,
    },
    /// Copied records (`None` bytes: a tombstone); `done` is dropped once they are applied
    /// (the copy's reader keeps only a few batches ahead of the instance, so signals queued
    /// behind them never wait long).
    Records {
        /// The records, in stream order.
        records: Vec<(SessionKey, u64, Option<Bytes>)>,
        /// The copy epoch they belong to (records of a superseded copy are dropped).
        epoch: u64,
        /// Dropped when applied.
        done: Option<oneshot::Sender<()>>,
    },
    /// A digest mismatch: drop these sessions' copied state and await their records again.
    Reawait {
        /// The sessions of the differing buckets.
        keys: Vec<SessionKey>,
        /// What the shadow did.
        done: oneshot::Sender<Result<Reawaited, MoveStepError>>,
    },
    /// Shadow counters, once everything queued before is applied.
    ShadowStats(oneshot::Sender<Option<ShadowStats>>),
    /// The keys a shadow got a create it answers for (`Hosted::created_during_move`; `None`:
    /// more than it could remember).
    CreatedKeys(oneshot::Sender<Option<Vec<SessionKey>>>),
    /// Leave shadow mode (when settled).
    FinishShadow(oneshot::Sender<Result<(), MoveStepError>>),
    /// Give up on the records still awaited (their sender is gone), then leave shadow mode.
    AbandonAndFinish(oneshot::Sender<Result<(), MoveStepError>>),
    /// Pushed records (`None` bytes: a deletion) overwriting sessions of a serving instance
    /// (the stop-and-copy and pre-copy baselines); answered with how many were refused.
    Import {
        /// The records, in order.
        records: Vec<(SessionKey, u64, Option<Bytes>)>,
        /// The answer, once applied.
        done: Option<oneshot::Sender<u64>>,
    },
}

enum Work {
    Batch(Batch),
    Control(Control),
}

/// Counters the instance task adds to those of the runtime.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TaskStats {
    /// Runtime counters.
    #[serde(flatten)]
    pub runtime: InstanceStats,
    /// Signal frames whose kind byte was invalid.
    pub bad_kind: u64,
    /// Outputs sent.
    pub outputs: u64,
    /// Signals dropped because a newer steer binding fenced off the connection that sent them.
    pub fenced: u64,
    /// Sessions handed over to a move's destination (frozen here).
    pub handovers: u64,
    /// Copied records dropped because a later copy superseded theirs.
    pub stale_copy_records: u64,
    /// Whether the instance is a settled shadow (internal: lets answer bookkeeping be pruned).
    #[serde(skip)]
    pub settled_hint: bool,
    /// Signals a move's destination could not take (the move must abort).
    pub move_errors: u64,
    /// Outputs of shadow signals, never sent (the authoritative copy answers).
    pub shadow_suppressed: u64,
    /// Outputs that could not be delivered (reply channel closed or UDP send error).
    pub outputs_undeliverable: u64,
}

/// A cheap, cloneable handle to a running instance.
#[derive(Clone)]
pub struct InstanceHandle {
    name: Arc<str>,
    function: &'static str,
    tx: mpsc::Sender<Work>,
    table: Arc<SessionTable>,
    ruleset: RulesetHandle,
    stats: Arc<Mutex<TaskStats>>,
    binding: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl InstanceHandle {
    pub(crate) fn spawn(
        name: String,
        hosted: Box<dyn Hosted>,
        queue: usize,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stop = stop.child_token();
        let handle = Self {
            name: name.into(),
            function: hosted.function_name(),
            tx,
            table: hosted.table().clone(),
            ruleset: hosted.ruleset().clone(),
            stats: Arc::new(Mutex::new(TaskStats::default())),
            binding: Arc::new(AtomicU64::new(0)),
            stop: stop.clone(),
        };
        tokio::spawn(run(
            hosted,
            rx,
            handle.stats.clone(),
            handle.binding.clone(),
            stop,
        ));
        handle
    }

    /// Stops the instance's task (the instance is being dropped).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The function it runs.
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// Queues a batch; waits while the queue is full (backpressure). `false` if the task ended.
    pub async fn submit(&self, batch: Batch) -> bool {
        self.tx.send(Work::Batch(batch)).await.is_ok()
    }

    /// Queues a command behind everything queued so far. `false` if the task ended.
    pub async fn control(&self, control: Control) -> bool {
        self.tx.send(Work::Control(control)).await.is_ok()
    }

    /// The session table (for dumps; the task is its only writer).
    pub fn table(&self) -> &Arc<SessionTable> {
        &self.table
    }

    /// The output ruleset.
    pub fn ruleset(&self) -> &RulesetHandle {
        &self.ruleset
    }

    /// Makes a new steer binding current, fencing off every earlier one, and returns it with
    /// the last seq applied once everything queued before is done (`None` if the instance task
    /// has stopped). Signals an older binding still delivers are dropped, so the new steer
    /// resumes exactly above the returned seq.
    pub async fn bind(&self, reply: Reply) -> Option<(u64, u64)> {
        let binding = self.binding.fetch_add(1, Ordering::AcqRel) + 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let batch = Batch {
            signals: Vec::new(),
            reply,
            drained: Some(tx),
            binding: Some(binding),
        };
        if !self.submit(batch).await {
            return None;
        }
        rx.await.ok().map(|seq| (binding, seq))
    }

    /// Current counters.
    pub fn stats(&self) -> TaskStats {
        *self.stats.lock()
    }

    /// A summary for admin replies.
    pub fn info(&self) -> crate::InstanceInfo {
        crate::InstanceInfo {
            instance: self.name.to_string(),
            function: self.function.to_owned(),
            sessions: self.table.len() as u64,
            stats: self.stats(),
        }
    }
}

/// Where the answer of a signal a move's destination buffered goes once it is replayed.
struct PendingReply {
    route: u32,
    client: SocketAddr,
    reply: mpsc::Sender<Vec<Frame>>,
}

/// Most buffered authoritative signals whose answers a destination keeps track of.
const MAX_PENDING_REPLIES: usize = 1_000_000;

/// Runs a command; returns the outputs of signals it replayed (a move destination's).
fn control(hosted: &mut dyn Hosted, c: Control, local: &mut TaskStats) -> Vec<ClassifiedOutput> {
    let mut replayed = Vec::new();
    match c {
        Control::DeletionLog(log) => hosted.set_deletion_log(log),
        Control::EndSourceCopy(log) => hosted.end_source_copy(&log),
        Control::BeginSourceCopy { log, full, done } => {
            let _ = done.send(hosted.begin_source_copy(log, full));
        }
        Control::PrepareShadow(done) => {
            let _ = done.send(hosted.begin_shadow(None, ShadowLimits::default()));
        }
        Control::ExpectRecords { keys, done } => {
            let _ = done.send(hosted.expect_records(keys, ShadowLimits::default()));
        }
        Control::Manifest { manifest, done } => {
            let _ = done.send(hosted.take_manifest(manifest, &mut replayed));
        }
        Control::Records {
            records,
            epoch,
            done: _done,
        } => {
            if epoch != hosted.copy_epoch() {
                local.stale_copy_records += records.len() as u64;
                tracing::debug!(
                    records = records.len(),
                    "records of a superseded copy dropped"
                );
                return replayed;
            }
            for (key, seq, bytes) in records {
                if let Err(e) = hosted.on_record(key, seq, bytes, &mut replayed) {
                    local.move_errors += 1;
                    tracing::error!(error = %e, "copied record refused; the move must abort");
                }
            }
        }
        Control::Reawait { keys, done } => {
            let _ = done.send(hosted.reawait(&keys));
        }
        Control::ShadowStats(done) => {
            let _ = done.send(hosted.shadow_stats());
        }
        Control::CreatedKeys(done) => {
            let _ = done.send(hosted.created_during_move());
        }
        Control::FinishShadow(done) => {
            let _ = done.send(hosted.finish_shadow());
        }
        Control::AbandonAndFinish(done) => {
            let n = hosted.abandon_awaited(&mut replayed);
            if n > 0 {
                local.move_errors += 1;
                tracing::warn!(sessions = n, "gave up on records never received");
            }
            let _ = done.send(hosted.finish_shadow());
        }
        Control::Import { records, done } => {
            let mut refused = 0u64;
            for (key, seq, bytes) in records {
                if let Err(e) = hosted.import(key, seq, bytes) {
                    refused += 1;
                    tracing::warn!(error = e, "pushed record refused");
                }
            }
            if let Some(done) = done {
                let _ = done.send(refused);
            }
        }
    }
    replayed
}

/// Sends the replayed outputs of buffered authoritative signals to their clients; the rest
/// (replayed shadow signals, answered by the source) are suppressed.
async fn deliver_replayed(
    replayed: Vec<ClassifiedOutput>,
    pending: &mut std::collections::HashMap<u64, PendingReply>,
    local: &mut TaskStats,
) {
    let mut answered = Vec::new();
    for o in replayed {
        answered.push(o.seq);
        match pending.get(&o.seq) {
            Some(p) => {
                let frame = Frame::Output(OutputFrame {
                    route: p.route,
                    seq: o.seq,
                    class: o.class as u8,
                    client: p.client,
                    payload: o.output.bytes,
                });
                if p.reply.send(vec![frame]).await.is_ok() {
                    local.outputs += 1;
                } else {
                    local.outputs_undeliverable += 1;
                }
            }
            None => local.shadow_suppressed += 1,
        }
    }
    // One answer stream per signal: a replayed signal's entry is done once replayed; a settled
    // shadow has replayed or discarded everything it buffered.
    for seq in answered {
        pending.remove(&seq);
    }
    if local.settled_hint {
        pending.clear();
    }
}

async fn run(
    mut hosted: Box<dyn Hosted>,
    mut rx: mpsc::Receiver<Work>,
    shared: Arc<Mutex<TaskStats>>,
    binding: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut outputs: Vec<ClassifiedOutput> = Vec::new();
    let mut local = TaskStats::default();
    let mut pending: std::collections::HashMap<u64, PendingReply> =
        std::collections::HashMap::new();
    loop {
        let work = tokio::select! {
            _ = stop.cancelled() => break,
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
        };
        let batch = match work {
            Work::Batch(b) => b,
            Work::Control(c) => {
                let replayed = control(hosted.as_mut(), c, &mut local);
                local.runtime = hosted.stats();
                local.settled_hint = hosted
                    .shadow_stats()
                    .is_some_and(|s| s.awaiting == 0 && s.buffered == 0);
                deliver_replayed(replayed, &mut pending, &mut local).await;
                *shared.lock() = local;
                continue;
            }
        };
        let mut frames = Vec::new();
        let mut datagrams: Vec<(Bytes, SocketAddr)> = Vec::new();
        let fenced = batch
            .binding
            .is_some_and(|b| b != binding.load(Ordering::Acquire));
        if fenced {
            local.fenced += batch.signals.len() as u64;
        }
        for s in batch.signals.iter().filter(|_| !fenced) {
            let Some(kind) = SignalKind::from_u8(s.kind) else {
                local.bad_kind += 1;
                continue;
            };
            outputs.clear();
            let stamp = Stamp {
                seq: s.seq,
                now_us: s.now_us,
            };
            if s.flags & SIGNAL_HANDOVER != 0 {
                hosted.hand_over(&s.key, s.seq);
                local.handovers += 1;
                continue;
            }
            if kind == SignalKind::Create && s.flags & SIGNAL_SHADOW == 0 {
                // A create this copy answers: a move's destination owns the session from here.
                hosted.claim(&s.key);
            }
            match hosted.apply(stamp, kind, &s.key, &s.payload, &mut outputs) {
                Ok(Applied::Processed) => {}
                Ok(Applied::Buffered) => {
                    // An authoritative signal buffered by a move's destination: answer it
                    // when it is replayed.
                    if let (Reply::Tcp(tx), true) = (&batch.reply, s.flags & SIGNAL_SHADOW == 0) {
                        if pending.len() < MAX_PENDING_REPLIES {
                            pending.insert(
                                s.seq,
                                PendingReply {
                                    route: s.route,
                                    client: s.client,
                                    reply: tx.clone(),
                                },
                            );
                        }
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    // The shadow cannot go on: the move must abort. Counted and reported.
                    local.move_errors += 1;
                    tracing::error!(error = %e, "move destination failed; the move must abort");
                    continue;
                }
            }
            if s.flags & SIGNAL_SHADOW != 0 {
                // A shadow copy applies the signal; the authoritative copy answers the client.
                local.shadow_suppressed += outputs.len() as u64;
                continue;
            }
            for o in outputs.drain(..) {
                match &batch.reply {
                    Reply::Tcp(_) => frames.push(Frame::Output(OutputFrame {
                        route: s.route,
                        seq: s.seq,
                        class: o.class as u8,
                        client: s.client,
                        payload: o.output.bytes,
                    })),
                    Reply::Udp(_) => datagrams.push((o.output.bytes, s.client)),
                }
            }
        }
        let produced = (frames.len() + datagrams.len()) as u64;
        let delivered = match &batch.reply {
            Reply::Tcp(tx) => {
                if frames.is_empty() || tx.send(frames).await.is_ok() {
                    produced
                } else {
                    0
                }
            }
            Reply::Udp(tx) => {
                if datagrams.is_empty() || tx.send(datagrams).await.is_ok() {
                    produced
                } else {
                    0
                }
            }
        };
        local.outputs += delivered;
        local.outputs_undeliverable += produced - delivered;
        local.runtime = hosted.stats();
        *shared.lock() = local;
        if let Some(ack) = batch.drained {
            let _ = ack.send(local.runtime.last_seq);
        }
    }
    tracing::debug!("instance task stopped");
}
