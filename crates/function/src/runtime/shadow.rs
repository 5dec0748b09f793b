//! The destination of a live move: DESIGN.md "Live move", step 4 (the apply rule).
//!
//! At move start the source sends the *manifest*: the keys of every session it held, each of
//! which it will stream exactly once (a record, or a tombstone if the session was deleted
//! meanwhile). From then on the steer sends the destination, in seq order, the creates, the
//! updates of sessions created during the move, copies of every other update and delete, and
//! every tick. The [`Shadow`] applies them so that, once every manifest key has arrived, each
//! session is exactly what one instance applying every signal in seq order would hold:
//!
//! - A signal for a key outside the manifest, or whose record has arrived, applies at once
//!   if its seq is above the record's (a record may already include an update the steer
//!   duplicated to both copies).
//! - A signal for a manifest key whose record has not arrived is parsed (preprocessed) and
//!   buffered per key. Creates are buffered too: a create may read the session it replaces
//!   (a retransmitted Attach answered from the old context's transaction cache).
//! - When a record with seq `s` arrives, the key's buffered signals with seq > `s` and every
//!   tick with seq > `s` are applied on it, merged in seq order; the rest are discarded. A
//!   tombstone does the same on an absent session.
//!
//! - Before the manifest, once the copy connection is open ([`Shadow::open_copy`]), a signal
//!   buffered for a session asks the source for it at once: the source answers with its
//!   record, or with a tombstone when it does not hold it (seq 0: never held, so every signal
//!   buffered for it applies on nothing). Such a session is *resolved* and needs no manifest:
//!   its later signals apply at once, and the manifest's listing of it is ignored. A
//!   re-attach therefore waits one demand round trip, not for the manifest.
//!
//! Outputs produced here are those the steer routed to the destination alone (creates and
//! updates of new sessions) and shadow outputs; the caller knows which is which by route and
//! never lets a shadow output reach a client.

use super::{Applied, ClassifiedOutput, Instance};
use crate::{Function, SessionKey, SignalKind, Stamp};
use bytes::Bytes;
use handoff_state::SeededState;
use std::collections::{HashMap, HashSet};

/// A set of session keys (a manifest, once the copy's receiver has collected it: building a
/// set of a million keys is work for the receiver, not for the instance serving signals).
pub type KeySet = HashSet<SessionKey, SeededState>;

/// Limits of a shadow: a move that would exceed one is aborted, never left to grow memory.
#[derive(Clone, Copy, Debug)]
pub struct ShadowLimits {
    /// Buffered signals in all, across keys.
    pub max_buffered: usize,
    /// Ticks remembered for replay (one per tick interval of the copy's duration).
    pub max_ticks: usize,
}

impl Default for ShadowLimits {
    fn default() -> Self {
        Self {
            max_buffered: 1_000_000,
            max_ticks: 100_000,
        }
    }
}

/// Why the shadow cannot go on; the move must abort.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShadowError {
    /// More signals wait for their sessions than [`ShadowLimits::max_buffered`].
    #[error("buffered updates exceed the limit of {0}")]
    BufferFull(usize),
    /// The copy outlasted [`ShadowLimits::max_ticks`] ticks.
    #[error("tick log exceeds the limit of {0}")]
    TickLogFull(usize),
    /// A record from the source does not decode.
    #[error("record for a session does not decode: {0}")]
    BadRecord(String),
    /// More sessions were claimed by creates routed here than the shadow can remember, so it
    /// can no longer tell which sessions a re-sent record may replace.
    #[error("more than {0} sessions created here during the move")]
    ClaimsFull(usize),
    /// A re-send was asked of a shadow that has no manifest yet.
    #[error("a re-send needs the manifest first")]
    NoManifest,
    /// A re-send was asked of sessions coming back after an aborted move: their sender no
    /// longer gets their signals, so its records could miss what this copy applied.
    #[error("sessions coming back after an abort cannot be re-sent")]
    Returning,
}

/// What [`Shadow::reawait`] did: the sessions it will not take again and the seq it stood at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reawaited {
    /// Keys asked for that a create routed here has claimed since their record arrived: their
    /// state is this copy's own, so the source must not re-send them.
    pub excluded: Vec<SessionKey>,
    /// The last seq applied when the keys were dropped: the source must have applied it
    /// before it reads the records it re-sends.
    pub at_seq: u64,
    /// Keys now awaited again.
    pub awaited: usize,
    /// The shadow's copy epoch from here on (see [`Shadow::epoch`]).
    pub epoch: u64,
}

/// What happened to one copied record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Imported (or, for a tombstone, the session removed), then `replayed` signals and ticks
    /// applied on it and `discarded` buffered signals dropped as already included.
    Applied {
        /// Buffered signals and ticks applied after the record.
        replayed: usize,
        /// Buffered signals the record already included.
        discarded: usize,
    },
    /// The key is not in the manifest, or its record already arrived: ignored and counted.
    Unexpected,
}

/// Counters of a shadow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowStats {
    /// Signals buffered now.
    pub buffered: usize,
    /// Most signals buffered at once.
    pub buffered_peak: usize,
    /// Of the signals buffered now, those buffered after the manifest arrived: updates waiting
    /// for their session's record, the figure the copy order decides (before the manifest,
    /// every stateful signal is buffered whatever the order).
    pub buffered_for_records: usize,
    /// Most signals buffered for records at once.
    pub buffered_for_records_peak: usize,
    /// Records and tombstones imported.
    pub records: u64,
    /// Bytes of the records imported (keys and values).
    pub bytes: u64,
    /// Records for keys not in the manifest or already received.
    pub unexpected_records: u64,
    /// Records and tombstones that arrived before the manifest, asked for by this copy.
    pub early_records: u64,
    /// Buffered signals discarded because their record already included them.
    pub discarded: u64,
    /// Signals skipped because the session's record already included them.
    pub skipped: u64,
    /// Manifest keys whose record has not arrived.
    pub awaiting: usize,
    /// Sessions dropped to be re-sent after a digest mismatch (DESIGN.md "Verify").
    pub reawaited: u64,
    /// Signals this copy could not take (its buffer or tick log was full): its state lacks
    /// them, so it must never be cut over to (the move aborts).
    pub refused: u64,
    /// Whether the whole manifest arrived (so `awaiting` names every session still missing).
    pub manifest_known: bool,
    /// Sessions this copy asked its source to send next, because a signal for each was
    /// buffered here waiting for its record (DESIGN.md: the access pattern orders the copy).
    pub demanded: u64,
    /// Buffered signals applied once their record (or the manifest) arrived, whose wait is
    /// in the figures below.
    pub waited: u64,
    /// Median wait of those signals (µs of steer time: from the signal's stamp to the latest
    /// stamp this copy had seen when it applied the signal).
    pub buffered_wait_p50_us: u64,
    /// 99th percentile of that wait (µs).
    pub buffered_wait_p99_us: u64,
    /// Longest such wait (µs).
    pub buffered_wait_max_us: u64,
}

struct Buffered<P> {
    stamp: Stamp,
    kind: SignalKind,
    prepared: P,
    /// Buffered after the manifest arrived (waiting for the session's record).
    for_record: bool,
}

/// An instance being filled by a move.
pub struct Shadow<F: Function> {
    instance: Instance<F>,
    /// Whether the manifest has arrived; until then every stateful signal is buffered (except
    /// for sessions resolved already).
    manifest_known: bool,
    /// The copy connection is open and its source answers demands before the manifest.
    open: bool,
    /// Sessions whose record arrived before the manifest (see the module's notes).
    resolved: KeySet,
    awaiting: KeySet,
    buffers: HashMap<SessionKey, Vec<Buffered<F::Prepared>>, SeededState>,
    ticks: Vec<Stamp>,
    /// Sessions a create routed to this copy alone (not a shadow copy) has touched: this copy
    /// is their owner, so a re-send must never replace them with the source's.
    claimed: HashSet<SessionKey, SeededState>,
    claims_overflowed: bool,
    /// Sessions coming back to an aborted move's source (not a move's destination).
    returning: bool,
    /// Bumped by every manifest and re-await: records of an earlier copy still on their way
    /// must not be taken for the ones awaited now (see [`Shadow::epoch`]).
    epoch: u64,
    limits: ShadowLimits,
    stats: ShadowStats,
    /// Awaited sessions already asked for (each is asked for once, until its record arrives).
    demanded: HashSet<SessionKey, SeededState>,
    /// Sessions to ask the source for, not yet taken by the shell ([`Shadow::take_demands`]).
    demands: Vec<SessionKey>,
    /// The latest steer time stamped on a signal or tick seen here: the clock buffered
    /// signals' waits are measured by (the core reads no clock of its own).
    latest_us: u64,
    /// Waits of buffered signals, µs of steer time.
    waits: Waits,
}

/// A histogram of waits (µs), bounded in memory whatever the count: 2 significant digits up
/// to an hour.
struct Waits(hdrhistogram::Histogram<u64>);

impl Default for Waits {
    fn default() -> Self {
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("constant, valid histogram bounds"),
        )
    }
}

impl<F: Function> Shadow<F> {
    /// A shadow over `instance` (normally empty) expecting one record per manifest key.
    pub fn new(
        instance: Instance<F>,
        manifest: impl IntoIterator<Item = SessionKey>,
        limits: ShadowLimits,
    ) -> Self {
        let mut s = Self::pending(instance, limits);
        let mut out = Vec::new();
        s.set_manifest(manifest.into_iter().collect(), &mut out);
        s
    }

    /// A serving instance (an aborted move's source) expecting `keys` back from the move's
    /// destination; unlike a destination's, its sessions cannot be re-sent
    /// ([`Shadow::reawait`] refuses): after the abort's boundary their sender no longer gets
    /// their signals.
    pub fn returning(
        instance: Instance<F>,
        keys: impl IntoIterator<Item = SessionKey>,
        limits: ShadowLimits,
    ) -> Self {
        let mut s = Self::new(instance, keys, limits);
        s.returning = true;
        s
    }

    /// A shadow that does not know its manifest yet: the steer may already route signals to
    /// it (the source takes its manifest only after the switch), so until
    /// [`Shadow::set_manifest`] every stateful signal is buffered and every tick logged.
    pub fn pending(instance: Instance<F>, limits: ShadowLimits) -> Self {
        Self {
            instance,
            manifest_known: false,
            open: false,
            resolved: HashSet::default(),
            awaiting: HashSet::default(),
            buffers: HashMap::default(),
            ticks: Vec::new(),
            claimed: HashSet::default(),
            claims_overflowed: false,
            returning: false,
            epoch: 0,
            limits,
            stats: ShadowStats::default(),
            demanded: HashSet::default(),
            demands: Vec::new(),
            latest_us: 0,
            waits: Waits::default(),
        }
    }

    /// Takes the sessions to ask the source for next (see [`ShadowStats::demanded`]): the
    /// shell sends them on the copy connection; a shell with no copy connection may drop them
    /// (they only reorder the copy, never change what it delivers).
    pub fn take_demands(&mut self) -> Vec<SessionKey> {
        std::mem::take(&mut self.demands)
    }

    /// The copy connection opened and its source answers demands before the manifest: from
    /// here on a signal buffered before the manifest asks for its session at once, and those
    /// buffered so far are asked for now, oldest first. Whether this shadow still waits for
    /// its manifest (otherwise nothing changes: its demands wait for the manifest's answer).
    pub fn open_copy(&mut self) -> bool {
        if self.manifest_known {
            return false;
        }
        self.open = true;
        self.demand_buffered();
        true
    }

    /// Asks for the session of every buffered signal not asked for yet, oldest signal first.
    fn demand_buffered(&mut self) {
        let mut waiting: Vec<(u64, SessionKey)> = self
            .buffers
            .iter()
            .filter(|(k, _)| !self.demanded.contains(*k))
            .filter_map(|(k, b)| b.first().map(|b| (b.stamp.seq, k.clone())))
            .collect();
        waiting.sort();
        for (_, key) in waiting {
            self.demand(&key);
        }
    }

    /// Asks for `key` next unless already asked for.
    fn demand(&mut self, key: &SessionKey) {
        if self.demanded.insert(key.clone()) {
            self.demands.push(key.clone());
            self.stats.demanded += 1;
        }
    }

    /// A hand-over marker (see [`Instance::hand_over`]): freezes the old copy of a session
    /// whose record is still awaited; the seq counts as applied either way.
    pub fn hand_over(&mut self, key: &SessionKey, seq: u64) {
        if self.awaiting.contains(key) {
            self.instance.hand_over(key, seq);
        } else {
            self.instance.advance_seq(seq);
        }
    }

    /// Notes that a create routed to this copy alone (the steer's hand-over) touches `key`:
    /// from here on this copy owns the session, whatever the source streams. Call it before
    /// applying the create.
    pub fn claim(&mut self, key: &SessionKey) {
        if self.claimed.contains(key) {
            return;
        }
        if self.claimed.len() >= self.limits.max_buffered {
            self.claims_overflowed = true;
            return;
        }
        self.claimed.insert(key.clone());
    }

    /// The sessions claimed so far (see [`Shadow::claim`]), sorted: outside abort-safe mode,
    /// the sessions created on this destination during the move, which an abort must bring
    /// back when the steer lost its own list (it restarted). `None` if more were claimed than
    /// the shadow could remember, so the list would be incomplete.
    pub fn claimed_keys(&self) -> Option<Vec<SessionKey>> {
        if self.claims_overflowed {
            return None;
        }
        let mut keys: Vec<SessionKey> = self.claimed.iter().cloned().collect();
        keys.sort();
        Some(keys)
    }

    /// Drops the copied state of `keys` and awaits their records again (a digest mismatch:
    /// only the differing buckets are re-sent, DESIGN.md "Verify"). From here on their
    /// signals are buffered and ticks logged, as before their first record; the source re-sends
    /// each from a table that has applied at least [`Reawaited::at_seq`], so every signal this
    /// copy applied to the dropped state is in the new record, and every later one is buffered
    /// here and replayed on it. A tick at or below `at_seq` that the record does not include
    /// left the source's session unchanged, so it would leave this one unchanged too (the
    /// function is deterministic): only later ticks need logging.
    ///
    /// Keys a create routed here has claimed are excluded once their record has arrived (this
    /// copy owns them now); keys still awaited stay awaited, claimed or not. Only a re-await
    /// that drops state moves the copy epoch on ([`Shadow::epoch`]). Refused by a returning
    /// shadow ([`Shadow::returning`]).
    pub fn reawait(&mut self, keys: &[SessionKey]) -> Result<Reawaited, ShadowError> {
        if !self.manifest_known {
            return Err(ShadowError::NoManifest);
        }
        if self.returning {
            return Err(ShadowError::Returning);
        }
        if self.claims_overflowed {
            return Err(ShadowError::ClaimsFull(self.limits.max_buffered));
        }
        if self.awaiting.is_empty() {
            // No tick before this point is needed again (see above).
            self.ticks.clear();
        }
        let mut done = Reawaited {
            at_seq: self.instance.stats.last_seq,
            ..Reawaited::default()
        };
        let mut dropped = false;
        for key in keys {
            // A claimed session whose record never arrived (it did not decode) still needs
            // one: only a claimed session this copy holds is its own.
            if self.claimed.contains(key) && !self.awaiting.contains(key) {
                done.excluded.push(key.clone());
                continue;
            }
            if self.awaiting.insert(key.clone()) {
                self.instance.remove_session(key);
                self.stats.reawaited += 1;
                dropped = true;
            }
            done.awaited += 1;
        }
        // Only dropped state makes records already on their way stale: a re-await that
        // dropped nothing (an abort's prime of sessions this copy owns) leaves a copy still
        // streaming undisturbed.
        if dropped {
            self.epoch += 1;
        }
        done.epoch = self.epoch;
        self.stats.awaiting = self.awaiting.len();
        Ok(done)
    }

    /// The copy epoch: it changes with every manifest and re-await. A copy's records are
    /// handed over with the epoch its manifest (or re-send) got; records of an older epoch
    /// come from a copy that was superseded (repeated after a lost answer, or re-sent) and
    /// were read from the source before this copy's seq, so they are dropped, never applied.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The keys whose records are awaited but that `listed` does not name (sorted): after a
    /// repeated full copy's manifest, sessions the source no longer held when it listed it.
    pub fn awaited_except(&self, listed: &KeySet) -> Vec<SessionKey> {
        let mut keys: Vec<SessionKey> = self
            .awaiting
            .iter()
            .filter(|k| !listed.contains(*k))
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// Whether the record of `key` is still awaited.
    pub fn awaits(&self, key: &[u8]) -> bool {
        self.awaiting.contains(key)
    }

    /// Whether the manifest has arrived.
    pub fn manifest_known(&self) -> bool {
        self.manifest_known
    }

    /// Takes the source's manifest. Buffered signals of keys outside it will never get a record:
    /// they are applied now, on absent sessions, with the ticks since, in seq order. Sessions
    /// resolved before it (their record came on demand) are not awaited again.
    pub fn set_manifest(&mut self, manifest: KeySet, out: &mut Vec<ClassifiedOutput>) {
        self.manifest_known = true;
        self.epoch += 1;
        self.awaiting = manifest;
        for key in std::mem::take(&mut self.resolved) {
            self.awaiting.remove(&key);
        }
        self.stats.awaiting = self.awaiting.len();
        self.instance.reserve(self.awaiting.len());
        let mut outside: Vec<SessionKey> = self
            .buffers
            .keys()
            .filter(|k| !self.awaiting.contains(*k))
            .cloned()
            .collect();
        outside.sort();
        for key in outside {
            self.replay(&key, 0, out);
        }
        // Signals buffered before the manifest whose session it lists have waited longest:
        // ask for those sessions first (unless asked for already), oldest signal first.
        self.demand_buffered();
        if self.awaiting.is_empty() {
            self.ticks.clear();
        }
    }

    /// Applies or buffers one signal from the steer (seq order).
    pub fn on_signal(
        &mut self,
        stamp: Stamp,
        kind: SignalKind,
        key: &SessionKey,
        payload: &[u8],
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<Applied, ShadowError> {
        if stamp.seq <= self.instance.stats.last_seq {
            self.instance.stats.stale += 1;
            return Ok(Applied::StaleSeq);
        }
        self.latest_us = self.latest_us.max(stamp.now_us);
        if kind == SignalKind::Tick {
            if !self.manifest_known || !self.awaiting.is_empty() {
                if self.ticks.len() >= self.limits.max_ticks {
                    self.stats.refused += 1;
                    return Err(ShadowError::TickLogFull(self.limits.max_ticks));
                }
                self.ticks.push(stamp);
            }
            return Ok(self.instance.apply_signal(stamp, kind, key, payload, out));
        }
        let Some(prepared) = self.instance.prepare(payload) else {
            return Ok(Applied::Malformed);
        };
        self.instance.advance_seq(stamp.seq);
        let awaited = if self.manifest_known {
            self.awaiting.contains(key)
        } else {
            self.resolved.is_empty() || !self.resolved.contains(key)
        };
        if kind != SignalKind::Stateless && awaited {
            if self.stats.buffered >= self.limits.max_buffered {
                self.stats.refused += 1;
                return Err(ShadowError::BufferFull(self.limits.max_buffered));
            }
            let for_record = self.manifest_known;
            self.buffers.entry(key.clone()).or_default().push(Buffered {
                stamp,
                kind,
                prepared,
                for_record,
            });
            self.stats.buffered += 1;
            self.stats.buffered_peak = self.stats.buffered_peak.max(self.stats.buffered);
            if self.open && !for_record {
                self.demand(key);
            }
            if for_record {
                self.demand(key);
                self.stats.buffered_for_records += 1;
                self.stats.buffered_for_records_peak = self
                    .stats
                    .buffered_for_records_peak
                    .max(self.stats.buffered_for_records);
            }
            return Ok(Applied::Buffered);
        }
        if self
            .instance
            .record_seq(key)
            .is_some_and(|s| s >= stamp.seq)
        {
            self.stats.skipped += 1;
            return Ok(Applied::Processed);
        }
        self.instance
            .apply_prepared(stamp, kind, key, &prepared, out);
        Ok(Applied::Processed)
    }

    /// Imports one copied record (`bytes = None`: a tombstone) with the seq of the last signal
    /// the source applied to it, then replays what the record does not include.
    pub fn on_record(
        &mut self,
        key: SessionKey,
        seq: u64,
        bytes: Option<Bytes>,
        out: &mut Vec<ClassifiedOutput>,
    ) -> Result<RecordOutcome, ShadowError> {
        let early = !self.manifest_known;
        let expected = if early {
            // Before the manifest, only a session this copy asked for (and has not resolved).
            self.open && self.demanded.contains(&key) && !self.resolved.contains(&key)
        } else {
            self.awaiting.remove(&key)
        };
        if !expected {
            self.stats.unexpected_records += 1;
            return Ok(RecordOutcome::Unexpected);
        }
        if !self.demanded.is_empty() {
            self.demanded.remove(&key);
        }
        let size = (key.len() + bytes.as_ref().map_or(0, Bytes::len)) as u64;
        match bytes {
            Some(b) => {
                if let Err(e) = self.instance.import_record(key.clone(), seq, b) {
                    // Still awaited: a re-send of its bucket may bring a good copy.
                    if !early {
                        self.awaiting.insert(key);
                    }
                    return Err(ShadowError::BadRecord(e.reason));
                }
            }
            None => self.instance.remove_session(&key),
        }
        if early {
            self.resolved.insert(key.clone());
            self.stats.early_records += 1;
        }
        self.stats.bytes += size;
        self.stats.awaiting = self.awaiting.len();
        self.stats.records += 1;
        let (replayed, discarded) = self.replay(&key, seq, out);
        // Before the manifest every session not resolved may still need the ticks.
        if !early && self.awaiting.is_empty() {
            self.ticks.clear();
        }
        Ok(RecordOutcome::Applied {
            replayed,
            discarded,
        })
    }

    /// Applies the key's buffered signals with seq above `seq` and the ticks above it, merged
    /// in seq order, on the session as it now stands; discards the rest. Returns (replayed,
    /// discarded).
    ///
    /// Hot path of the copy (one call per record): buffered signals are already in seq order
    /// (they were buffered as they came), so this merges them with the tick log in place, and
    /// a tick is only handed to the timer when the session's deadline has come (the others
    /// would leave it unchanged), which keeps a long tick log from costing a table lookup per
    /// tick per record.
    fn replay(
        &mut self,
        key: &SessionKey,
        seq: u64,
        out: &mut Vec<ClassifiedOutput>,
    ) -> (usize, usize) {
        let buffered = if self.buffers.is_empty() {
            Vec::new()
        } else {
            self.buffers.remove(key).unwrap_or_default()
        };
        self.stats.buffered -= buffered.len();
        self.stats.buffered_for_records -= buffered.iter().filter(|b| b.for_record).count();
        // Ticks are logged in seq order: those after the record are a suffix.
        let mut next_tick = self.ticks.partition_point(|t| t.seq <= seq);
        if buffered.is_empty() && next_tick == self.ticks.len() {
            return (0, 0);
        }
        let mut discarded = 0;
        let mut replayed = 0;
        let mut deadline = self.deadline(key);
        for b in buffered {
            if b.stamp.seq <= seq {
                discarded += 1;
                continue;
            }
            while let Some(t) = self.ticks.get(next_tick).copied() {
                if t.seq > b.stamp.seq {
                    break;
                }
                next_tick += 1;
                replayed += 1;
                if t.now_us >= deadline {
                    self.instance.fire_timer(key, t);
                    deadline = self.deadline(key);
                }
            }
            self.instance
                .apply_prepared(b.stamp, b.kind, key, &b.prepared, out);
            deadline = self.deadline(key);
            replayed += 1;
            let waited = self.latest_us.saturating_sub(b.stamp.now_us).max(1);
            self.waits.0.saturating_record(waited);
        }
        while let Some(t) = self.ticks.get(next_tick).copied() {
            next_tick += 1;
            replayed += 1;
            if t.now_us >= deadline {
                self.instance.fire_timer(key, t);
                deadline = self.deadline(key);
            }
        }
        self.stats.discarded += discarded as u64;
        (replayed, discarded)
    }

    /// The session's timer deadline (`u64::MAX`: absent or no timer).
    fn deadline(&self, key: &SessionKey) -> u64 {
        self.instance.table().deadline_us(key).unwrap_or(u64::MAX)
    }

    /// Gives up on every record still awaited (its sender is gone): each such session is taken
    /// as absent and its buffered signals apply on nothing, in seq order with the ticks, as the
    /// sender would have applied them to a session it no longer had. Returns their keys,
    /// sorted (the sessions lost with the sender).
    pub fn abandon_awaited(&mut self, out: &mut Vec<ClassifiedOutput>) -> Vec<SessionKey> {
        let mut keys: Vec<SessionKey> = self.awaiting.drain().collect();
        keys.sort();
        self.resolved.clear();
        self.demanded.clear();
        self.demands.clear();
        // With no manifest, nothing is awaited but every stateful signal was buffered: they
        // apply now too, on whatever this copy holds (its sender's sessions never came).
        let mut unlisted: Vec<SessionKey> = if self.manifest_known {
            Vec::new()
        } else {
            self.buffers.keys().cloned().collect()
        };
        unlisted.sort();
        self.manifest_known = true;
        for key in &keys {
            self.instance.remove_session(key);
            self.replay(key, 0, out);
        }
        for key in &unlisted {
            self.replay(key, 0, out);
        }
        self.stats.awaiting = 0;
        self.ticks.clear();
        keys
    }

    /// Whether every manifest key has arrived and nothing is buffered: the destination's part
    /// of the cutover condition.
    pub fn is_settled(&self) -> bool {
        self.manifest_known && self.awaiting.is_empty() && self.stats.buffered == 0
    }

    /// Counters.
    pub fn stats(&self) -> ShadowStats {
        let w = &self.waits.0;
        let quantile = |q: f64| {
            if w.is_empty() {
                0
            } else {
                w.value_at_quantile(q)
            }
        };
        ShadowStats {
            manifest_known: self.manifest_known,
            waited: w.len(),
            buffered_wait_p50_us: quantile(0.5),
            buffered_wait_p99_us: quantile(0.99),
            buffered_wait_max_us: if w.is_empty() { 0 } else { w.max() },
            ..self.stats
        }
    }

    /// The instance (for digests and dumps).
    pub fn instance(&self) -> &Instance<F> {
        &self.instance
    }

    /// The instance, once the move is done with it.
    pub fn into_instance(self) -> Instance<F> {
        self.instance
    }
}
