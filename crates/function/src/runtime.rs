//! The pure instance runtime: applies stamped signals to a function's session table.
//!
//! No I/O happens here. The node feeds an [`Instance`] the signals of one instance in seq order
//! and sends the outputs it returns; the simulator and the tests drive the same code directly.

use crate::{
    Classified, Function, MalformedSignal, Output, OutputClass, Ruleset, RulesetHandle, SessionKey,
    SignalKind, Stamp,
};
use bytes::Bytes;
use handoff_state::{RecordView, SessionTable};
use std::collections::HashMap;
use std::sync::Arc;

pub mod shadow;
pub mod timers;

/// An output with the class the ruleset gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifiedOutput {
    /// Seq of the signal that produced it (a buffered signal's outputs appear only when it is
    /// replayed, so callers match them to their client by this).
    pub seq: u64,
    /// The output.
    pub output: Output,
    /// Immediate or Gated.
    pub class: OutputClass,
}

/// What happened to one signal handed to [`Hosted::apply`]. Expected outcomes, not errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Processed; its outputs were pushed.
    Processed,
    /// Its seq was not above the last applied one: a duplicate delivery, ignored.
    StaleSeq,
    /// The payload did not parse (the steer classified it, so this means a bug or corruption).
    Malformed,
    /// A move's destination buffered it until its session's record arrives; its outputs
    /// appear when it is replayed, tagged with its seq.
    Buffered,
}

/// Counters of one instance, readable at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceStats {
    /// Signals processed.
    pub processed: u64,
    /// Signals ignored because their seq was not above the last applied.
    pub stale: u64,
    /// Signals that failed to parse.
    pub malformed: u64,
    /// Records that failed to decode (each is treated as an absent session and counted).
    pub bad_records: u64,
    /// Timers fired by ticks.
    pub timers_fired: u64,
    /// Outputs produced by timers (they have no client and are dropped).
    pub timer_outputs: u64,
    /// Timers that left their own deadline in the past (a function bug); disarmed.
    pub timers_stuck: u64,
    /// Last seq applied.
    pub last_seq: u64,
}

/// One running copy of a function, with its session table and timer index.
pub struct Instance<F: Function> {
    function: Arc<F>,
    table: Arc<SessionTable>,
    ruleset: RulesetHandle,
    /// The timer of every session that has one; kept in step with the records.
    timers: timers::TimerQueue,
    stats: InstanceStats,
    scratch: Vec<Output>,
    encode_buf: Vec<u8>,
    deletions: Option<DeletionLog>,
    /// Sessions handed over to a move's destination (a create for the key went there): no
    /// timer fires on them here any more, so their record stays as it was at the hand-over.
    frozen: std::collections::HashSet<SessionKey>,
}

/// Most deletions a [`DeletionLog`] remembers; past it the log is marked overflowed and the
/// move using it must abort.
pub const MAX_LOGGED_DELETIONS: usize = 1_000_000;

/// The seqs at which sessions were deleted while a move's copy runs: the source's tombstones.
/// Shared between the instance (writer) and the copy stream (reader). A deletion is logged
/// before the record disappears, so a reader that finds a record absent finds its tombstone.
#[derive(Clone, Debug, Default)]
pub struct DeletionLog(Arc<std::sync::Mutex<(HashMap<SessionKey, u64>, bool)>>);

impl DeletionLog {
    /// Whether `other` is this very log (not an equal one).
    pub fn is(&self, other: &DeletionLog) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn record(&self, key: &SessionKey, seq: u64) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= MAX_LOGGED_DELETIONS && !g.0.contains_key(key) {
            g.1 = true;
            return;
        }
        g.0.insert(key.clone(), seq);
    }

    /// The seq that deleted `key`, if logged.
    pub fn seq_of(&self, key: &[u8]) -> Option<u64> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(key).copied()
    }

    /// Whether deletions were dropped for lack of room.
    pub fn overflowed(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Every logged deletion whose seq is above `seq` (a pre-copy round's tombstones).
    pub fn deleted_after(&self, seq: u64) -> Vec<(SessionKey, u64)> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0.iter()
            .filter(|(_, s)| **s > seq)
            .map(|(k, s)| (k.clone(), *s))
            .collect()
    }
}

impl<F: Function> Instance<F> {
    /// An empty instance of `function`, classifying outputs with its default ruleset.
    pub fn new(function: Arc<F>) -> Self {
        let ruleset = RulesetHandle::new(function.default_ruleset());
        Self {
            function,
            table: Arc::new(SessionTable::default()),
            ruleset,
            timers: timers::TimerQueue::default(),
            stats: InstanceStats::default(),
            scratch: Vec::new(),
            encode_buf: Vec::new(),
            deletions: None,
            frozen: std::collections::HashSet::new(),
        }
    }

    /// A move's destination took over `key` at `seq` (the steer routed a create for it there):
    /// the session here is frozen as it is (its timer disarmed), so the copy streams its state
    /// from before the create and the destination applies the create on top.
    pub fn hand_over(&mut self, key: &SessionKey, seq: u64) {
        self.stats.last_seq = self.stats.last_seq.max(seq);
        if self.table.with(key, |_| ()).is_some() {
            self.timers.disarm(key);
        }
        self.frozen.insert(key.clone());
    }

    /// Starts (`Some`) or stops (`None`) logging deletions for a copy stream. Stopping also
    /// forgets the sessions handed over (their records have been streamed).
    pub fn set_deletion_log(&mut self, log: Option<DeletionLog>) {
        if log.is_none() {
            self.frozen.clear();
        }
        self.deletions = log;
    }

    /// The function this instance runs.
    pub fn function(&self) -> &Arc<F> {
        &self.function
    }

    fn load(&mut self, key: &[u8]) -> Option<(F::Session, Bytes)> {
        let rec = self.table.get(key)?;
        match self.function.decode_session(&rec.bytes) {
            Ok(s) => Some((s, rec.bytes)),
            Err(_) => {
                self.stats.bad_records += 1;
                None
            }
        }
    }

    /// Writes `session` back under `key` after the signal stamped `stamp` (or removes it).
    fn store(
        &mut self,
        key: &SessionKey,
        before: Option<Bytes>,
        session: Option<F::Session>,
        stamp: Stamp,
    ) {
        match session {
            Some(s) => {
                self.encode_buf.clear();
                self.function.encode_session(&s, &mut self.encode_buf);
                let changed = before.as_deref() != Some(self.encode_buf.as_slice());
                let bytes = if changed {
                    Bytes::copy_from_slice(&self.encode_buf)
                } else {
                    before.unwrap_or_default()
                };
                let deadline = self.function.deadline_us(&s).unwrap_or(u64::MAX);
                let replaced = self.table.put(
                    key.clone(),
                    stamp.seq,
                    bytes,
                    deadline,
                    stamp.now_us,
                    changed,
                );
                self.rearm(key, replaced.old_deadline_us, Some(deadline));
            }
            None => {
                if let Some(log) = &self.deletions {
                    log.record(key, stamp.seq);
                }
                if let Some(old) = self.table.remove(key) {
                    self.rearm(key, Some(old.deadline_us), None);
                }
                self.timers.forget(key);
            }
        }
    }

    fn rearm(&mut self, key: &SessionKey, old: Option<u64>, new: Option<u64>) {
        let old = old.filter(|d| *d != u64::MAX);
        let new = new.filter(|d| *d != u64::MAX);
        self.timers.arm(key, old, new);
        if self.timers.needs_compaction() && self.timers.must_compact(self.table.len()) {
            let mut armed = Vec::new();
            self.table.scan(|k, r| {
                if r.deadline_us != u64::MAX {
                    armed.push((r.deadline_us, k.clone()));
                }
            });
            self.timers.compact(armed);
        }
    }

    /// Applies one signal: `kind` and `key` as the steer classified it, `payload` the datagram.
    pub fn apply_signal(
        &mut self,
        stamp: Stamp,
        kind: SignalKind,
        key: &SessionKey,
        payload: &[u8],
        out: &mut Vec<ClassifiedOutput>,
    ) -> Applied {
        if stamp.seq <= self.stats.last_seq {
            self.stats.stale += 1;
            return Applied::StaleSeq;
        }
        if kind == SignalKind::Tick {
            self.tick(stamp);
            return Applied::Processed;
        }
        let prepared = match self.function.prepare(payload) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                return Applied::Malformed;
            }
        };
        self.stats.last_seq = stamp.seq;
        self.apply_prepared(stamp, kind, key, &prepared, out);
        Applied::Processed
    }

    /// Applies one prepared, non-tick signal to its session, whatever the instance's last seq
    /// (the caller keeps order: the move's destination replays buffered updates with this).
    pub fn apply_prepared(
        &mut self,
        stamp: Stamp,
        kind: SignalKind,
        key: &SessionKey,
        prepared: &F::Prepared,
        out: &mut Vec<ClassifiedOutput>,
    ) {
        self.stats.processed += 1;
        let mut outputs = std::mem::take(&mut self.scratch);
        outputs.clear();
        if kind == SignalKind::Stateless {
            self.function
                .process(&mut None, prepared, stamp, &mut outputs);
        } else {
            let loaded = self.load(key);
            let (mut session, before) = match loaded {
                Some((s, b)) => (Some(s), Some(b)),
                None => (None, None),
            };
            self.function
                .process(&mut session, prepared, stamp, &mut outputs);
            if session.is_some() || before.is_some() {
                self.store(key, before, session, stamp);
            }
        }
        out.extend(outputs.drain(..).map(|output| ClassifiedOutput {
            seq: stamp.seq,
            class: self.ruleset.classify(output.msg_type),
            output,
        }));
        self.scratch = outputs;
    }

    /// Parses a signal (the preprocessing step); counts a failure.
    pub fn prepare(&mut self, payload: &[u8]) -> Option<F::Prepared> {
        match self.function.prepare(payload) {
            Ok(p) => Some(p),
            Err(_) => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    /// Fires one session's timer for a tick stamped `stamp`, if its deadline has come.
    /// The move's destination replays ticks on a session that arrived after them with this.
    pub fn fire_timer(&mut self, key: &SessionKey, stamp: Stamp) {
        let Some(rec) = self.table.get(key) else {
            return;
        };
        if rec.deadline_us > stamp.now_us {
            return;
        }
        let Some((session, before)) = self.load(key) else {
            return;
        };
        let mut session = Some(session);
        let mut outputs = std::mem::take(&mut self.scratch);
        outputs.clear();
        self.function.on_timer(&mut session, stamp, &mut outputs);
        self.stats.timers_fired += 1;
        self.stats.timer_outputs += outputs.len() as u64;
        self.store(key, Some(before), session, stamp);
        self.scratch = outputs;
    }

    /// Inserts a copied record as it is, arming its timer. A record that does not decode is
    /// refused (and nothing changes).
    pub fn import_record(
        &mut self,
        key: SessionKey,
        seq: u64,
        bytes: Bytes,
    ) -> Result<(), crate::BadRecord> {
        let session = self.function.decode_session(&bytes)?;
        // The session comes back (an aborted move): it is live here again. (Most imports are
        // a destination's, with nothing frozen: skip hashing the key.)
        if !self.frozen.is_empty() {
            self.frozen.remove(&key);
        }
        let deadline = self.function.deadline_us(&session).unwrap_or(u64::MAX);
        let old = self.table.insert_record(
            key.clone(),
            handoff_state::Record {
                seq,
                bytes,
                deadline_us: deadline,
                freq: handoff_state::ChangeFrequency::default(),
            },
        );
        self.rearm(&key, old.map(|r| r.deadline_us), Some(deadline));
        Ok(())
    }

    /// Removes a session (a tombstone from a copy), disarming its timer.
    pub fn remove_session(&mut self, key: &SessionKey) {
        self.frozen.remove(key);
        if let Some(old) = self.table.remove(key) {
            self.rearm(key, Some(old.deadline_us), None);
        }
        self.timers.forget(key);
    }

    /// Seq of the record of `key`, if present.
    pub fn record_seq(&self, key: &[u8]) -> Option<u64> {
        self.table.get(key).map(|r| r.seq)
    }

    /// Notes that every signal up to `seq` has been applied (ticks and signals handled
    /// outside [`Instance::apply_signal`]).
    pub fn advance_seq(&mut self, seq: u64) {
        self.stats.last_seq = self.stats.last_seq.max(seq);
    }

    /// Makes room for `additional` more sessions (a move's destination learning how many
    /// records are coming), so the copy neither rehashes the table nor regrows the timers.
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional);
        self.timers.reserve(additional);
    }

    /// The session table.
    pub fn table(&self) -> &Arc<SessionTable> {
        &self.table
    }

    /// Counters.
    pub fn stats(&self) -> InstanceStats {
        self.stats
    }

    /// Fires every timer whose deadline is at or before the tick's time, in (deadline, key) order.
    /// A session a timer changes takes the tick's seq.
    fn tick(&mut self, stamp: Stamp) {
        self.stats.last_seq = stamp.seq;
        self.stats.processed += 1;
        let mut outputs = std::mem::take(&mut self.scratch);
        loop {
            let table = &self.table;
            let Some((_, key)) = self
                .timers
                .next_due(stamp.now_us, |k| table.with(k, |r| r.deadline_us))
            else {
                break;
            };
            if self.frozen.contains(&key) {
                self.timers.disarm(&key);
                continue;
            }
            let Some((session, before)) = self.load(&key) else {
                self.timers.disarm(&key);
                continue;
            };
            let mut session = Some(session);
            outputs.clear();
            self.function.on_timer(&mut session, stamp, &mut outputs);
            self.stats.timers_fired += 1;
            self.stats.timer_outputs += outputs.len() as u64;
            self.store(&key, Some(before), session, stamp);
            // A timer that leaves its deadline at or before now would fire forever: disarm it.
            if self
                .table
                .with(&key, |r| r.deadline_us <= stamp.now_us)
                .unwrap_or(false)
            {
                self.timers.disarm(&key);
                self.stats.timers_stuck += 1;
            }
        }
        self.scratch = outputs;
    }
}

/// Why a move step was refused by a hosted instance.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoveStepError {
    /// The instance is not in the state the step needs.
    #[error("instance is {actual}, expected {expected}")]
    WrongPhase {
        /// What the step needs.
        expected: &'static str,
        /// What the instance is.
        actual: &'static str,
    },
    /// A shadow must start empty.
    #[error("a shadow must start empty; this instance holds {0} sessions")]
    NotEmpty(usize),
    /// The shadow cannot go on.
    #[error(transparent)]
    Shadow(#[from] shadow::ShadowError),
    /// The shadow still waits for records or holds buffered signals.
    #[error("shadow not settled: {awaiting} records awaited, {buffered} signals buffered")]
    NotSettled {
        /// Records still awaited.
        awaiting: usize,
        /// Signals still buffered.
        buffered: usize,
    },
}

/// An instance as a node hosts it: serving, or being filled as a move's destination.
// One per hosted instance, and it changes variant only at a move's edges: the size gap costs
// nothing worth a box on every signal.
#[allow(clippy::large_enum_variant)]
pub enum Hosting<F: Function> {
    /// Serving (or a move's source).
    Serving(Instance<F>),
    /// A move's destination.
    Shadow(shadow::Shadow<F>),
}

impl<F: Function> Hosting<F> {
    /// A new, empty, serving instance.
    pub fn new(function: Arc<F>) -> Self {
        Self::Serving(Instance::new(function))
    }

    fn instance(&self) -> &Instance<F> {
        match self {
            Self::Serving(i) => i,
            Self::Shadow(s) => s.instance(),
        }
    }

    fn phase(&self) -> &'static str {
        match self {
            Self::Serving(_) => "serving",
            Self::Shadow(..) => "shadow",
        }
    }
}

/// What [`Hosted::take_manifest`] answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestTaken {
    /// The seq the sender must have applied before it reads the records it streams (0: none).
    pub at_seq: u64,
    /// The copy epoch the records of this copy belong to.
    pub epoch: u64,
    /// Sessions still awaited from an earlier manifest that this one does not list: a full
    /// copy repeated after a partial one (its records superseded) no longer holds them, so it
    /// sends their tombstones ([`ManifestTaken::applied`] as their seq); a subset copy ignores
    /// them (they come with another copy).
    pub unlisted: Vec<SessionKey>,
    /// The last seq applied here when the manifest was taken.
    pub applied: u64,
}

/// The object-safe face of a hosted instance, so a node can host instances of any function.
pub trait Hosted: Send {
    /// The function's name.
    fn function_name(&self) -> &'static str;
    /// Applies one signal (see [`Instance::apply_signal`]; a shadow applies the move's
    /// destination rule). A shadow that cannot go on returns the error: abort the move.
    fn apply(
        &mut self,
        stamp: Stamp,
        kind: SignalKind,
        key: &SessionKey,
        payload: &[u8],
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<Applied, MoveStepError>;
    /// The session table (shared with readers such as dumps).
    fn table(&self) -> &Arc<SessionTable>;
    /// Every record, sorted by key.
    fn dump(&self) -> Vec<RecordView> {
        self.table().dump()
    }
    /// Counters.
    fn stats(&self) -> InstanceStats;
    /// The output ruleset, replaceable at run time.
    fn ruleset(&self) -> &RulesetHandle;
    /// Starts or stops logging deletions (a move's source, while its copy runs).
    fn set_deletion_log(&mut self, log: Option<DeletionLog>);
    /// Becomes a move's destination. Must be empty. With `None` the manifest follows later
    /// ([`Hosted::set_manifest`]); until then stateful signals are buffered.
    fn begin_shadow(
        &mut self,
        manifest: Option<Vec<SessionKey>>,
        limits: shadow::ShadowLimits,
    ) -> Result<(), MoveStepError>;
    /// A serving instance (sessions kept) starts expecting the records of `keys` from another
    /// node: their signals are buffered until each arrives (an aborted move's sessions coming
    /// back). Everything else keeps being served. No keys: nothing changes.
    fn expect_records(
        &mut self,
        keys: Vec<SessionKey>,
        limits: shadow::ShadowLimits,
    ) -> Result<(), MoveStepError>;
    /// Whether this is a shadow that awaits the records of every key in `keys` (a copy's
    /// manifest matching an earlier [`Hosted::expect_records`]).
    fn expects(&self, keys: &shadow::KeySet) -> bool;
    /// Gives a shadow that was begun without one its manifest.
    fn set_manifest(
        &mut self,
        manifest: shadow::KeySet,
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<(), MoveStepError>;
    /// A copy connection opened to a shadow still waiting for its manifest, whose source
    /// answers demands before it ([`shadow::Shadow::open_copy`]). Whether this is such a
    /// shadow (otherwise records may flow only once a manifest is taken).
    fn open_copy(&mut self) -> bool {
        false
    }
    /// Whether this is a shadow still waiting for its manifest.
    fn awaits_manifest(&self) -> bool;
    /// A copy's manifest arrives: a shadow waiting for one takes it; sessions announced by
    /// [`Hosted::expect_records`] (an aborted move's, coming back) need nothing more; a shadow
    /// that already knows a manifest takes this one as a repeated or overlapping copy (an
    /// answer to an earlier copy was lost, or an abort sends old state): the listed sessions
    /// it holds are dropped and awaited again, except those a create routed here claimed
    /// ([`shadow::Shadow::reawait`]); a serving, empty instance becomes a shadow with it.
    ///
    /// Answers with the seq the sender must have applied before it reads the records it
    /// streams: after a re-await, the last seq applied here (a re-awaited session's record
    /// must include every signal this copy applied to the state it dropped); otherwise 0.
    /// Also answers the sessions a shadow that knew a manifest still awaits but this one does
    /// not list ([`ManifestTaken::unlisted`]).
    fn take_manifest(
        &mut self,
        manifest: shadow::KeySet,
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<ManifestTaken, MoveStepError> {
        let mut at_seq = 0;
        let mut unlisted = Vec::new();
        if self.awaits_manifest() {
            self.set_manifest(manifest, out)?;
        } else if self.expects(&manifest) {
            unlisted = self.awaited_unlisted(&manifest);
        } else if self.shadow_stats().is_some() {
            unlisted = self.awaited_unlisted(&manifest);
            let keys: Vec<SessionKey> = manifest.into_iter().collect();
            at_seq = self.reawait(&keys)?.at_seq;
        } else {
            let keys: Vec<SessionKey> = manifest.into_iter().collect();
            self.begin_shadow(Some(keys), shadow::ShadowLimits::default())?;
        }
        Ok(ManifestTaken {
            at_seq,
            epoch: self.copy_epoch(),
            unlisted,
            applied: self.stats().last_seq,
        })
    }
    /// The keys a shadow awaits that `manifest` does not list (empty outside shadow mode).
    fn awaited_unlisted(&self, manifest: &shadow::KeySet) -> Vec<SessionKey>;
    /// The shadow's copy epoch ([`shadow::Shadow::epoch`]; 0 outside shadow mode): records
    /// handed over with another epoch are dropped.
    fn copy_epoch(&self) -> u64;
    /// Stops logging deletions for the copy that installed `log` (a copy that ends never
    /// switches off another copy's log).
    fn end_source_copy(&mut self, log: &DeletionLog);
    /// Starts logging deletions for a copy from this instance. A full copy (a move's source
    /// streaming everything) needs a serving instance: once an aborted move's sessions are
    /// expected back here it is refused, so a stale copy never takes a manifest.
    fn begin_source_copy(&mut self, log: DeletionLog, full: bool) -> Result<(), MoveStepError> {
        if full && self.shadow_stats().is_some() {
            return Err(MoveStepError::WrongPhase {
                expected: "serving (the move's source)",
                actual: "expecting sessions back (an abort began)",
            });
        }
        self.set_deletion_log(Some(log));
        Ok(())
    }
    /// See [`Instance::hand_over`] (a move's source; ignored by a shadow).
    fn hand_over(&mut self, key: &SessionKey, seq: u64);
    /// A create routed to this copy alone touches `key` (see [`shadow::Shadow::claim`]);
    /// nothing outside shadow mode.
    fn claim(&mut self, key: &SessionKey);
    /// Drops the copied state of `keys` to take their records again (see
    /// [`shadow::Shadow::reawait`]); only in shadow mode.
    fn reawait(&mut self, keys: &[SessionKey]) -> Result<shadow::Reawaited, MoveStepError>;
    /// Takes one copied record (`None`: a tombstone).
    fn on_record(
        &mut self,
        key: SessionKey,
        seq: u64,
        bytes: Option<Bytes>,
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<shadow::RecordOutcome, MoveStepError>;
    /// The shadow's counters, if this is a shadow.
    fn shadow_stats(&self) -> Option<shadow::ShadowStats>;
    /// Sessions a shadow asks its copy's source to send next ([`shadow::Shadow::take_demands`];
    /// empty outside shadow mode).
    fn take_demands(&mut self) -> Vec<SessionKey>;
    /// The keys a shadow got a create it answers for ([`Hosted::claim`]), sorted (empty if
    /// serving). Outside abort-safe mode these are the sessions created on a move's
    /// destination during the move: what an abort must bring back when the steer lost its own
    /// list (it restarted). `None` if the shadow could not remember them all.
    fn created_during_move(&self) -> Option<Vec<SessionKey>> {
        Some(Vec::new())
    }
    /// Ends shadow mode once settled: the instance serves from here on.
    fn finish_shadow(&mut self) -> Result<(), MoveStepError>;
    /// Gives up on the records a shadow still awaits (their sender is gone; see
    /// [`shadow::Shadow::abandon_awaited`]); returns their keys.
    fn abandon_awaited(&mut self, out: &mut Vec<ClassifiedOutput>) -> Vec<SessionKey>;
    /// Overwrites one session of a serving instance with a pushed record (`None`: removes it),
    /// as stop-and-copy and pre-copy baselines do; notes `seq` as applied. Refused by a shadow
    /// and for a record that does not decode.
    fn import(
        &mut self,
        key: SessionKey,
        seq: u64,
        bytes: Option<Bytes>,
    ) -> Result<(), &'static str> {
        let _ = (key, seq, bytes);
        Err("this instance cannot import records")
    }
}

impl<F: Function> Hosted for Hosting<F> {
    fn function_name(&self) -> &'static str {
        self.instance().function.name()
    }
    fn apply(
        &mut self,
        stamp: Stamp,
        kind: SignalKind,
        key: &SessionKey,
        payload: &[u8],
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<Applied, MoveStepError> {
        match self {
            Self::Serving(i) => Ok(i.apply_signal(stamp, kind, key, payload, out)),
            Self::Shadow(s) => Ok(s.on_signal(stamp, kind, key, payload, out)?),
        }
    }
    fn table(&self) -> &Arc<SessionTable> {
        &self.instance().table
    }
    fn stats(&self) -> InstanceStats {
        self.instance().stats
    }
    fn ruleset(&self) -> &RulesetHandle {
        &self.instance().ruleset
    }
    fn set_deletion_log(&mut self, log: Option<DeletionLog>) {
        if let Self::Serving(i) = self {
            i.set_deletion_log(log);
        }
    }
    fn begin_shadow(
        &mut self,
        manifest: Option<Vec<SessionKey>>,
        limits: shadow::ShadowLimits,
    ) -> Result<(), MoveStepError> {
        let Self::Serving(i) = self else {
            return Err(MoveStepError::WrongPhase {
                expected: "serving",
                actual: self.phase(),
            });
        };
        if !i.table.is_empty() {
            return Err(MoveStepError::NotEmpty(i.table.len()));
        }
        let fresh = Instance::new(i.function.clone());
        let old = std::mem::replace(i, fresh);
        *self = Self::Shadow(match manifest {
            Some(m) => shadow::Shadow::new(old, m, limits),
            None => shadow::Shadow::pending(old, limits),
        });
        Ok(())
    }
    fn expect_records(
        &mut self,
        keys: Vec<SessionKey>,
        limits: shadow::ShadowLimits,
    ) -> Result<(), MoveStepError> {
        if keys.is_empty()
            || matches!(self, Self::Shadow(s) if s.manifest_known() && keys.iter().all(|k| s.awaits(k)))
        {
            return Ok(());
        }
        let Self::Serving(i) = self else {
            return Err(MoveStepError::WrongPhase {
                expected: "serving",
                actual: self.phase(),
            });
        };
        let fresh = Instance::new(i.function.clone());
        let serving = std::mem::replace(i, fresh);
        *self = Self::Shadow(shadow::Shadow::returning(serving, keys, limits));
        Ok(())
    }
    fn expects(&self, keys: &shadow::KeySet) -> bool {
        matches!(self, Self::Shadow(s) if s.manifest_known() && keys.iter().all(|k| s.awaits(k)))
    }
    fn awaited_unlisted(&self, manifest: &shadow::KeySet) -> Vec<SessionKey> {
        match self {
            Self::Shadow(s) if s.manifest_known() => s.awaited_except(manifest),
            _ => Vec::new(),
        }
    }
    fn set_manifest(
        &mut self,
        manifest: shadow::KeySet,
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<(), MoveStepError> {
        match self {
            Self::Shadow(s) if !s.manifest_known() => {
                s.set_manifest(manifest, out);
                Ok(())
            }
            Self::Shadow(..) => Err(MoveStepError::WrongPhase {
                expected: "shadow awaiting its manifest",
                actual: "shadow with a manifest",
            }),
            Self::Serving(_) => Err(MoveStepError::WrongPhase {
                expected: "shadow",
                actual: "serving",
            }),
        }
    }
    fn awaits_manifest(&self) -> bool {
        matches!(self, Self::Shadow(s) if !s.manifest_known())
    }
    fn open_copy(&mut self) -> bool {
        match self {
            Self::Shadow(s) => s.open_copy(),
            Self::Serving(_) => false,
        }
    }
    fn hand_over(&mut self, key: &SessionKey, seq: u64) {
        match self {
            Self::Serving(i) => i.hand_over(key, seq),
            // A late marker reaching a source that already expects the session back: its
            // old copy must stay as it was until the record arrives.
            Self::Shadow(s) => s.hand_over(key, seq),
        }
    }
    fn claim(&mut self, key: &SessionKey) {
        if let Self::Shadow(s) = self {
            s.claim(key);
        }
    }
    fn copy_epoch(&self) -> u64 {
        match self {
            Self::Shadow(s) => s.epoch(),
            Self::Serving(_) => 0,
        }
    }
    fn end_source_copy(&mut self, log: &DeletionLog) {
        if let Self::Serving(i) = self {
            if i.deletions.as_ref().is_some_and(|d| d.is(log)) {
                i.set_deletion_log(None);
            }
        }
    }
    fn reawait(&mut self, keys: &[SessionKey]) -> Result<shadow::Reawaited, MoveStepError> {
        match self {
            Self::Shadow(s) => Ok(s.reawait(keys)?),
            Self::Serving(_) => Err(MoveStepError::WrongPhase {
                expected: "shadow",
                actual: "serving",
            }),
        }
    }
    fn on_record(
        &mut self,
        key: SessionKey,
        seq: u64,
        bytes: Option<Bytes>,
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<shadow::RecordOutcome, MoveStepError> {
        match self {
            Self::Shadow(s) => Ok(s.on_record(key, seq, bytes, out)?),
            Self::Serving(_) => Err(MoveStepError::WrongPhase {
                expected: "shadow",
                actual: "serving",
            }),
        }
    }
    fn take_demands(&mut self) -> Vec<SessionKey> {
        match self {
            Self::Shadow(s) => s.take_demands(),
            Self::Serving(_) => Vec::new(),
        }
    }
    fn shadow_stats(&self) -> Option<shadow::ShadowStats> {
        match self {
            Self::Shadow(s) => Some(s.stats()),
            Self::Serving(_) => None,
        }
    }
    fn created_during_move(&self) -> Option<Vec<SessionKey>> {
        match self {
            Self::Shadow(s) => s.claimed_keys(),
            Self::Serving(_) => Some(Vec::new()),
        }
    }
    fn abandon_awaited(&mut self, out: &mut Vec<ClassifiedOutput>) -> Vec<SessionKey> {
        match self {
            Self::Shadow(s) => s.abandon_awaited(out),
            Self::Serving(_) => Vec::new(),
        }
    }
    fn finish_shadow(&mut self) -> Result<(), MoveStepError> {
        let Self::Shadow(s) = self else {
            // Already serving: a repeated finish (its first answer was lost) is done.
            return Ok(());
        };
        if !s.is_settled() {
            let st = s.stats();
            return Err(MoveStepError::NotSettled {
                awaiting: st.awaiting,
                buffered: st.buffered,
            });
        }
        // Swap in a placeholder to take the shadow by value.
        let function = s.instance().function.clone();
        let Self::Shadow(s) = std::mem::replace(self, Self::new(function)) else {
            return Ok(());
        };
        *self = Self::Serving(s.into_instance());
        Ok(())
    }
    fn import(
        &mut self,
        key: SessionKey,
        seq: u64,
        bytes: Option<Bytes>,
    ) -> Result<(), &'static str> {
        let Self::Serving(i) = self else {
            return Err("a move's destination cannot import pushed records");
        };
        match bytes {
            Some(b) => i
                .import_record(key, seq, b)
                .map_err(|_| "pushed record does not decode")?,
            None => i.remove_session(&key),
        }
        i.advance_seq(seq);
        Ok(())
    }
}

/// The object-safe classifier the steer runs on the signal path.
pub trait Classifier: Send + Sync {
    /// The function's name.
    fn function_name(&self) -> &'static str;
    /// See [`Function::classify`].
    fn classify(&self, datagram: &[u8]) -> Result<Classified, MalformedSignal>;
}

impl<F: Function> Classifier for F {
    fn function_name(&self) -> &'static str {
        self.name()
    }
    fn classify(&self, datagram: &[u8]) -> Result<Classified, MalformedSignal> {
        Function::classify(self, datagram)
    }
}

type Factory = Box<dyn Fn() -> Box<dyn Hosted> + Send + Sync>;

/// The functions a process knows, by name: how the node creates instances and the steer finds
/// classifiers without either depending on a particular function.
#[derive(Default)]
pub struct Catalog {
    entries: Vec<(&'static str, Arc<dyn Classifier>, Factory)>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a function.
    pub fn with<F: Function>(mut self, function: F) -> Self {
        let function = Arc::new(function);
        let name = function.name();
        let f = function.clone();
        self.entries.push((
            name,
            function,
            Box::new(move || Box::new(Hosting::new(f.clone())) as Box<dyn Hosted>),
        ));
        self
    }

    /// The classifier of a function.
    pub fn classifier(&self, name: &str) -> Option<Arc<dyn Classifier>> {
        self.entries
            .iter()
            .find(|e| e.0 == name)
            .map(|e| e.1.clone())
    }

    /// A new, empty instance of a function.
    pub fn instantiate(&self, name: &str) -> Option<Box<dyn Hosted>> {
        self.entries.iter().find(|e| e.0 == name).map(|e| (e.2)())
    }

    /// The names of the known functions.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.0).collect()
    }

    /// The default ruleset of a function.
    pub fn ruleset(&self, name: &str) -> Option<Ruleset> {
        self.instantiate(name).map(|i| i.ruleset().current())
    }
}

#[cfg(test)]
mod tests;
