//! The task that runs one instance: the shell around its [`InstanceCore`]. It takes batches,
//! binds and commands off one queue in order, hands them to the core and delivers the outputs
//! the core produces.

pub use crate::instance_core::TaskStats;
use crate::instance_core::{Emit, InstanceCore};
use bytes::Bytes;
use handoff_function::runtime::shadow::{Reawaited, ShadowStats};
use handoff_function::runtime::ManifestTaken;
use handoff_function::runtime::{DeletionLog, Hosted, MoveStepError};
use handoff_function::RulesetHandle;
use handoff_function::SessionKey;
use handoff_state::SessionTable;
use handoff_wire::{Frame, OutputFrame, SignalFrame};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;
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
        manifest: handoff_function::runtime::shadow::KeySet,
        /// Where the copy's progress and the sessions the shadow asks for next go (the copy
        /// connection's demand lane); replaces any earlier one.
        demands: Option<mpsc::Sender<Demands>>,
        /// The answer (see `Hosted::take_manifest`).
        done: oneshot::Sender<Result<ManifestTaken, MoveStepError>>,
    },
    /// A copy connection opened whose source answers demands before its manifest: a shadow
    /// still waiting for one sends its demands to `demands` from here on (see
    /// `Hosted::open_copy`) and answers true; anything else answers false and keeps its lane.
    OpenCopy {
        /// The copy connection's demand lane.
        demands: mpsc::Sender<Demands>,
        /// The answer.
        done: oneshot::Sender<bool>,
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
    /// Give up on the records still awaited (their sender is gone), then leave shadow mode;
    /// answered with the sessions given up.
    AbandonAndFinish(oneshot::Sender<Result<Vec<SessionKey>, MoveStepError>>),
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
    Bind(oneshot::Sender<(u64, u64)>),
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
    applied: watch::Receiver<u64>,
    push_log: Arc<Mutex<Option<DeletionLog>>>,
    stop: CancellationToken,
    incarnation: u64,
    marks: Arc<Mutex<Marks>>,
}

/// Which moves may clean an instance up: a node drops an instance for a move only if that
/// move created it (prepared it as its shadow) or copied from it (its source).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// The move that created this instance as its empty shadow (or made an empty instance
    /// its shadow).
    pub prepared_by: Option<String>,
    /// The move that took a full copy of this instance (it is that move's source).
    pub leaving: Option<String>,
}

impl Reply {
    /// Whether both go to the same place.
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Tcp(a), Self::Tcp(b)) => a.same_channel(b),
            (Self::Udp(a), Self::Udp(b)) => a.same_channel(b),
            _ => false,
        }
    }
}

impl InstanceHandle {
    pub(crate) fn spawn(
        name: String,
        hosted: Box<dyn Hosted>,
        queue: usize,
        stop: CancellationToken,
        incarnation: u64,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (applied_tx, applied_rx) = watch::channel(0);
        let stop = stop.child_token();
        let handle = Self {
            name: name.into(),
            function: hosted.function_name(),
            tx,
            table: hosted.table().clone(),
            ruleset: hosted.ruleset().clone(),
            stats: Arc::new(Mutex::new(TaskStats::default())),
            applied: applied_rx,
            push_log: Arc::new(Mutex::new(None)),
            stop: stop.clone(),
            incarnation,
            marks: Arc::new(Mutex::new(Marks::default())),
        };
        let shared = Shared {
            stats: handle.stats.clone(),
            applied: applied_tx,
        };
        tokio::spawn(run(InstanceCore::new(hosted), rx, shared, stop));
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

    /// Its incarnation: unique to this creation of the instance (a restarted node, or a
    /// dropped and re-created instance, has another), never 0.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The last seq it applied (0: it has never been sent a signal, not even a tick).
    pub fn applied_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The moves that may clean it up.
    pub fn marks(&self) -> Marks {
        self.marks.lock().clone()
    }

    /// Changes the marks.
    pub(crate) fn mark(&self, f: impl FnOnce(&mut Marks)) {
        f(&mut self.marks.lock());
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
    pub async fn bind(&self) -> Option<(u64, u64)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Work::Bind(tx)).await.is_err() {
            return None;
        }
        rx.await.ok()
    }

    /// Waits until the instance has applied `seq`, at most `within`; the error is the last
    /// seq applied by then.
    pub async fn wait_applied(&self, seq: u64, within: Duration) -> Result<(), u64> {
        let mut rx = self.applied.clone();
        let reached =
            tokio::time::timeout(within, async { rx.wait_for(|s| *s >= seq).await.is_ok() }).await;
        match reached {
            Ok(true) => Ok(()),
            _ => Err(*self.applied.borrow()),
        }
    }

    /// The deletion log of a push sequence in progress (the stop-and-copy and pre-copy
    /// baselines), kept between its rounds.
    pub(crate) fn push_log(&self) -> &Mutex<Option<DeletionLog>> {
        &self.push_log
    }

    /// Current counters.
    pub fn stats(&self) -> TaskStats {
        *self.stats.lock()
    }

    /// A summary for admin replies.
    pub fn info(&self) -> crate::InstanceInfo {
        let marks = self.marks();
        crate::InstanceInfo {
            instance: self.name.to_string(),
            function: self.function.to_owned(),
            sessions: self.table.len() as u64,
            incarnation: self.incarnation,
            prepared_by: marks.prepared_by,
            leaving: marks.leaving,
            stats: self.stats(),
        }
    }
}

/// What a shadow tells its copy's source: the record bytes applied so far (cumulative, of
/// the records handed over since the lane was set) and the sessions it asks for next.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Demands {
    /// Record bytes (keys and values; a tombstone counts its key) applied.
    pub applied: u64,
    /// Sessions to send next.
    pub keys: Vec<SessionKey>,
}

/// Where a shadow's demands go, and what a full lane could not take yet.
#[derive(Default)]
struct DemandLane {
    tx: Option<mpsc::Sender<Demands>>,
    /// Demands not yet taken by the lane (bounded: each awaited session is demanded once
    /// until its record arrives).
    pending: Vec<SessionKey>,
    applied: u64,
    /// `applied` moved since the lane last took it.
    moved: bool,
}

impl DemandLane {
    /// Counts a batch of records applied.
    fn applied(&mut self, records: &[(SessionKey, u64, Option<Bytes>)]) {
        if self.tx.is_none() {
            return;
        }
        self.applied += records
            .iter()
            .map(|(k, _, b)| (k.len() + b.as_ref().map_or(0, Bytes::len)) as u64)
            .sum::<u64>();
        self.moved = true;
    }

    /// Moves the progress and the core's new demands to the lane, without waiting: a full lane
    /// keeps them for the next round (progress is cumulative, so nothing is lost), a closed or
    /// missing one drops them (they only reorder and pace a copy).
    fn forward(&mut self, core: &mut InstanceCore<Reply>) {
        let new = core.take_demands();
        let Some(tx) = &self.tx else { return };
        self.pending.extend(new);
        if self.pending.is_empty() && !self.moved {
            return;
        }
        let d = Demands {
            applied: self.applied,
            keys: std::mem::take(&mut self.pending),
        };
        match tx.try_send(d) {
            Ok(()) => self.moved = false,
            Err(mpsc::error::TrySendError::Full(d)) => self.pending = d.keys,
            Err(mpsc::error::TrySendError::Closed(_)) => self.tx = None,
        }
    }
}

/// Runs a command on the core; the outputs of signals it replayed go to `out`.
fn control(
    core: &mut InstanceCore<Reply>,
    c: Control,
    out: &mut Vec<Emit<Reply>>,
    lane: &mut DemandLane,
) {
    match c {
        Control::DeletionLog(log) => core.set_deletion_log(log),
        Control::EndSourceCopy(log) => core.end_source_copy(&log),
        Control::BeginSourceCopy { log, full, done } => {
            let _ = done.send(core.begin_source_copy(log, full));
        }
        Control::PrepareShadow(done) => {
            let _ = done.send(core.prepare_shadow());
        }
        Control::ExpectRecords { keys, done } => {
            let _ = done.send(core.expect_records(keys));
        }
        Control::OpenCopy { demands, done } => {
            let open = core.open_copy();
            if open {
                *lane = DemandLane {
                    tx: Some(demands),
                    ..DemandLane::default()
                };
            }
            let _ = done.send(open);
        }
        Control::Manifest {
            manifest,
            demands,
            done,
        } => {
            if demands.is_some() {
                *lane = DemandLane {
                    tx: demands,
                    ..DemandLane::default()
                };
            }
            let _ = done.send(core.take_manifest(manifest, out));
        }
        Control::Records {
            records,
            epoch,
            done: _done,
        } => {
            lane.applied(&records);
            core.records(records, epoch, out)
        }
        Control::Reawait { keys, done } => {
            let _ = done.send(core.reawait(&keys));
        }
        Control::ShadowStats(done) => {
            let _ = done.send(core.shadow_stats());
        }
        Control::CreatedKeys(done) => {
            let _ = done.send(core.created_keys());
        }
        Control::FinishShadow(done) => {
            let _ = done.send(core.finish_shadow(false, out).map(|_| ()));
        }
        Control::AbandonAndFinish(done) => {
            let _ = done.send(core.finish_shadow(true, out));
        }
        Control::Import { records, done } => {
            let refused = core.import(records);
            if let Some(done) = done {
                let _ = done.send(refused);
            }
        }
    }
}

/// Sends outputs, one message per run of outputs with the same reply target; returns how
/// many could not be delivered.
async fn deliver(out: &mut Vec<Emit<Reply>>) -> u64 {
    let mut failed = 0u64;
    let mut it = out.drain(..).peekable();
    while let Some(first) = it.next() {
        let mut run = vec![first];
        while let Some(next) = it.next_if(|e| e.to.same(&run[0].to)) {
            run.push(next);
        }
        let n = run.len() as u64;
        let ok = match run[0].to.clone() {
            Reply::Tcp(tx) => {
                let frames = run
                    .into_iter()
                    .map(|e| {
                        Frame::Output(OutputFrame {
                            route: e.route,
                            seq: e.seq,
                            class: e.class,
                            client: e.client,
                            payload: e.payload,
                        })
                    })
                    .collect();
                tx.send(frames).await.is_ok()
            }
            Reply::Udp(tx) => {
                let datagrams = run.into_iter().map(|e| (e.payload, e.client)).collect();
                tx.send(datagrams).await.is_ok()
            }
        };
        if !ok {
            failed += n;
        }
    }
    failed
}

/// What the task publishes to its handles.
struct Shared {
    stats: Arc<Mutex<TaskStats>>,
    applied: watch::Sender<u64>,
}

async fn run(
    mut core: InstanceCore<Reply>,
    mut rx: mpsc::Receiver<Work>,
    shared: Shared,
    stop: CancellationToken,
) {
    let mut out: Vec<Emit<Reply>> = Vec::new();
    let mut lane = DemandLane::default();
    loop {
        let work = tokio::select! {
            _ = stop.cancelled() => break,
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
        };
        let mut drained = None;
        match work {
            Work::Bind(done) => {
                let _ = done.send(core.bind());
            }
            Work::Control(c) => control(&mut core, c, &mut out, &mut lane),
            Work::Batch(b) => {
                core.signals(b.binding, &b.signals, &b.reply, &mut out);
                drained = b.drained;
            }
        }
        lane.forward(&mut core);
        let failed = deliver(&mut out).await;
        core.undeliverable(failed);
        let stats = core.stats();
        *shared.stats.lock() = stats;
        let last = stats.runtime.last_seq;
        shared.applied.send_if_modified(|s| {
            let moved = *s != last;
            *s = last;
            moved
        });
        if let Some(ack) = drained {
            let _ = ack.send(stats.runtime.last_seq);
        }
    }
    tracing::debug!("instance task stopped");
}
