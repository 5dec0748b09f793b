//! The pure core of one hosted instance: applies a steer binding's signals in seq order, fences
//! off older bindings, routes outputs (suppressing a shadow's, holding the answers of signals a
//! move's destination buffered until they are replayed), and carries out move steps on the
//! instance. No I/O and no clock: the instance task (`instance.rs`) and the simulation
//! (`handoff-sim`) drive this very type and deliver the [`Emit`]s it produces.
//!
//! Invariants:
//! - A signal is applied only if it comes from the current steer binding (or from the direct
//!   path, which has none); a bind answers the last seq applied, so the new steer resumes
//!   exactly above it.
//! - A hand-over marker freezes the session it names and produces nothing.
//! - A create this copy answers (no shadow flag) claims the session for it (a move's
//!   destination owns sessions created there).
//! - A shadow signal's outputs never leave; an authoritative signal a move's destination
//!   buffered is answered once, when it is replayed, to the reply target it came with.
//! - Records of a superseded copy (another epoch) are dropped and counted, never applied.

use bytes::Bytes;
use handoff_function::runtime::shadow::{Reawaited, ShadowLimits, ShadowStats};
use handoff_function::runtime::{
    Applied, ClassifiedOutput, DeletionLog, Hosted, InstanceStats, ManifestTaken, MoveStepError,
};
use handoff_function::{SessionKey, SignalKind, Stamp};
use handoff_wire::{SignalFrame, SIGNAL_HANDOVER, SIGNAL_SHADOW};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Counters the instance core adds to those of the runtime.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
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
    /// Signals a move's destination could not take, and copied records it refused (the move
    /// must abort).
    pub move_errors: u64,
    /// Outputs of shadow signals, never sent (the authoritative copy answers).
    pub shadow_suppressed: u64,
    /// Outputs that could not be delivered (reply channel closed or UDP send error).
    pub outputs_undeliverable: u64,
}

/// An output on its way to a client, through the reply target `to`.
#[derive(Clone, Debug)]
pub struct Emit<R> {
    /// Where it goes (the connection, or the direct path, the signal came from).
    pub to: R,
    /// The route id of the signal.
    pub route: u32,
    /// The seq of the signal that produced it.
    pub seq: u64,
    /// `OutputClass` as its wire value.
    pub class: u8,
    /// The client.
    pub client: SocketAddr,
    /// The output.
    pub payload: Bytes,
}

/// Where the answer of a signal a move's destination buffered goes once it is replayed.
#[derive(Clone, Debug)]
struct Pending<R> {
    to: R,
    route: u32,
    client: SocketAddr,
}

/// Most buffered authoritative signals whose answers a destination keeps track of.
pub const MAX_PENDING_REPLIES: usize = 1_000_000;

/// The core of one instance; `R` is a reply target (a connection's sender, or the
/// simulation's link to the steer).
pub struct InstanceCore<R> {
    hosted: Box<dyn Hosted>,
    pending: HashMap<u64, Pending<R>>,
    binding: u64,
    stats: TaskStats,
    outputs: Vec<ClassifiedOutput>,
}

impl<R: Clone> InstanceCore<R> {
    /// A core around a hosted instance.
    pub fn new(hosted: Box<dyn Hosted>) -> Self {
        Self {
            hosted,
            pending: HashMap::new(),
            binding: 0,
            stats: TaskStats::default(),
            outputs: Vec::new(),
        }
    }

    /// The hosted instance.
    pub fn hosted(&self) -> &dyn Hosted {
        self.hosted.as_ref()
    }

    /// Counters (the runtime's as of now).
    pub fn stats(&self) -> TaskStats {
        TaskStats {
            runtime: self.hosted.stats(),
            ..self.stats
        }
    }

    /// Counts outputs the shell could not deliver.
    pub fn undeliverable(&mut self, n: u64) {
        self.stats.outputs = self.stats.outputs.saturating_sub(n);
        self.stats.outputs_undeliverable += n;
    }

    /// A new steer binding: every earlier one is fenced off from now on. Returns it and the
    /// last seq applied (the new steer stamps above it).
    pub fn bind(&mut self) -> (u64, u64) {
        self.binding += 1;
        (self.binding, self.hosted.stats().last_seq)
    }

    /// Applies signals that arrived in seq order from `binding` (`None`: the direct path) with
    /// outputs going to `to`; the outputs to send are pushed to `out`.
    pub fn signals(
        &mut self,
        binding: Option<u64>,
        signals: &[SignalFrame],
        to: &R,
        out: &mut Vec<Emit<R>>,
    ) {
        if binding.is_some_and(|b| b != self.binding) {
            self.stats.fenced += signals.len() as u64;
            return;
        }
        for s in signals {
            self.signal(s, to, out);
        }
    }

    fn signal(&mut self, s: &SignalFrame, to: &R, out: &mut Vec<Emit<R>>) {
        let Some(kind) = SignalKind::from_u8(s.kind) else {
            self.stats.bad_kind += 1;
            return;
        };
        if s.flags & SIGNAL_HANDOVER != 0 {
            self.hosted.hand_over(&s.key, s.seq);
            self.stats.handovers += 1;
            return;
        }
        let shadow = s.flags & SIGNAL_SHADOW != 0;
        if kind == SignalKind::Create && !shadow {
            // A create this copy answers: a move's destination owns the session from here.
            self.hosted.claim(&s.key);
        }
        self.outputs.clear();
        let stamp = Stamp {
            seq: s.seq,
            now_us: s.now_us,
        };
        match self
            .hosted
            .apply(stamp, kind, &s.key, &s.payload, &mut self.outputs)
        {
            Ok(Applied::Processed) => {}
            Ok(Applied::Buffered) => {
                // An authoritative signal buffered by a move's destination: answer it when it
                // is replayed.
                if !shadow && self.pending.len() < MAX_PENDING_REPLIES {
                    let p = Pending {
                        to: to.clone(),
                        route: s.route,
                        client: s.client,
                    };
                    self.pending.insert(s.seq, p);
                }
                return;
            }
            Ok(Applied::StaleSeq | Applied::Malformed) => return,
            Err(e) => {
                // The shadow cannot go on: the move must abort. Counted and reported.
                self.stats.move_errors += 1;
                tracing::error!(error = %e, "move destination failed; the move must abort");
                return;
            }
        }
        if shadow {
            // A shadow copy applies the signal; the authoritative copy answers the client.
            self.stats.shadow_suppressed += self.outputs.len() as u64;
            return;
        }
        for o in self.outputs.drain(..) {
            self.stats.outputs += 1;
            out.push(Emit {
                to: to.clone(),
                route: s.route,
                seq: s.seq,
                class: o.class as u8,
                client: s.client,
                payload: o.output.bytes,
            });
        }
    }

    /// The outputs of buffered signals a move step replayed: answers of authoritative ones go
    /// to their clients, the rest (shadow signals, answered by the source) are suppressed.
    fn replayed(&mut self, replayed: Vec<ClassifiedOutput>, out: &mut Vec<Emit<R>>) {
        let mut answered = Vec::new();
        for o in replayed {
            answered.push(o.seq);
            match self.pending.get(&o.seq) {
                Some(p) => {
                    self.stats.outputs += 1;
                    out.push(Emit {
                        to: p.to.clone(),
                        route: p.route,
                        seq: o.seq,
                        class: o.class as u8,
                        client: p.client,
                        payload: o.output.bytes,
                    });
                }
                None => self.stats.shadow_suppressed += 1,
            }
        }
        // One answer stream per signal: a replayed signal's entry is done once replayed; a
        // settled shadow has replayed or discarded everything it buffered.
        for seq in answered {
            self.pending.remove(&seq);
        }
        self.prune();
    }

    /// A settled shadow has replayed or discarded everything it buffered: no answer is owed.
    fn prune(&mut self) {
        let settled = self
            .hosted
            .shadow_stats()
            .is_some_and(|s| s.awaiting == 0 && s.buffered == 0);
        if settled && !self.pending.is_empty() {
            tracing::debug!(
                forgotten = self.pending.len(),
                "settled shadow forgets pending answers"
            );
            self.pending.clear();
        }
    }

    /// Answers a move step may owe are delivered even when it fails.
    fn step<T>(
        &mut self,
        out: &mut Vec<Emit<R>>,
        f: impl FnOnce(&mut dyn Hosted, &mut Vec<ClassifiedOutput>) -> T,
    ) -> T {
        let mut replayed = Vec::new();
        let r = f(self.hosted.as_mut(), &mut replayed);
        self.replayed(replayed, out);
        r
    }

    /// Starts (`Some`) or stops logging deletions for a copy stream.
    pub fn set_deletion_log(&mut self, log: Option<DeletionLog>) {
        self.hosted.set_deletion_log(log);
    }

    /// A copy from this instance begins (see `Hosted::begin_source_copy`).
    pub fn begin_source_copy(&mut self, log: DeletionLog, full: bool) -> Result<(), MoveStepError> {
        self.hosted.begin_source_copy(log, full)
    }

    /// A copy from this instance ended: stop the deletion log it installed.
    pub fn end_source_copy(&mut self, log: &DeletionLog) {
        self.hosted.end_source_copy(log);
    }

    /// Becomes a move's destination, before the manifest is known.
    pub fn prepare_shadow(&mut self) -> Result<(), MoveStepError> {
        self.hosted.begin_shadow(None, ShadowLimits::default())
    }

    /// Expects the records of these sessions from another node (an aborted move's sessions
    /// coming back).
    pub fn expect_records(&mut self, keys: Vec<SessionKey>) -> Result<(), MoveStepError> {
        self.hosted.expect_records(keys, ShadowLimits::default())
    }

    /// A copy's manifest arrives (see `Hosted::take_manifest`).
    pub fn take_manifest(
        &mut self,
        manifest: handoff_function::runtime::shadow::KeySet,
        out: &mut Vec<Emit<R>>,
    ) -> Result<ManifestTaken, MoveStepError> {
        self.step(out, |h, r| h.take_manifest(manifest, r))
    }

    /// A copy connection opened whose source answers demands before the manifest (see
    /// `Hosted::open_copy`): whether this is a shadow still waiting for its manifest.
    pub fn open_copy(&mut self) -> bool {
        self.hosted.open_copy()
    }

    /// The shadow's copy epoch (records of another epoch are dropped).
    pub fn copy_epoch(&self) -> u64 {
        self.hosted.copy_epoch()
    }

    /// Copied records of the copy `epoch`, in stream order (`None` bytes: a tombstone).
    pub fn records(
        &mut self,
        records: Vec<(SessionKey, u64, Option<Bytes>)>,
        epoch: u64,
        out: &mut Vec<Emit<R>>,
    ) {
        if epoch != self.hosted.copy_epoch() {
            self.stats.stale_copy_records += records.len() as u64;
            tracing::debug!(
                records = records.len(),
                "records of a superseded copy dropped"
            );
            return;
        }
        let mut refused = 0u64;
        self.step(out, |h, replayed| {
            for (key, seq, bytes) in records {
                if let Err(e) = h.on_record(key, seq, bytes, replayed) {
                    refused += 1;
                    tracing::error!(error = %e, "copied record refused; the move must abort");
                }
            }
        });
        self.stats.move_errors += refused;
    }

    /// A digest mismatch: drop these sessions' copied state and await their records again.
    pub fn reawait(&mut self, keys: &[SessionKey]) -> Result<Reawaited, MoveStepError> {
        self.hosted.reawait(keys)
    }

    /// The sessions a shadow asks its copy's source for next (see `Shadow::take_demands`).
    pub fn take_demands(&mut self) -> Vec<SessionKey> {
        self.hosted.take_demands()
    }

    /// A shadow's counters (`None`: not a shadow).
    pub fn shadow_stats(&self) -> Option<ShadowStats> {
        self.hosted.shadow_stats()
    }

    /// The keys a shadow got a create it answers for (`None`: more than it could remember).
    pub fn created_keys(&self) -> Option<Vec<SessionKey>> {
        self.hosted.created_during_move()
    }

    /// Leaves shadow mode, giving up first (`force`) on the records still awaited (their
    /// sender is gone: those sessions are taken as absent, and the move counts an error).
    /// Returns the sessions given up, sorted.
    pub fn finish_shadow(
        &mut self,
        force: bool,
        out: &mut Vec<Emit<R>>,
    ) -> Result<Vec<SessionKey>, MoveStepError> {
        let mut abandoned = Vec::new();
        if force {
            abandoned = self.step(out, |h, r| h.abandon_awaited(r));
            if !abandoned.is_empty() {
                self.stats.move_errors += 1;
                tracing::warn!(
                    sessions = abandoned.len(),
                    "gave up on records never received"
                );
            }
        }
        let r = self.hosted.finish_shadow();
        if r.is_ok() {
            // Serving now: every buffered signal was replayed or discarded.
            self.pending.clear();
        }
        r.map(|()| abandoned)
    }

    /// Pushed records overwriting sessions of a serving instance (the stop-and-copy and
    /// pre-copy baselines); returns how many were refused.
    pub fn import(&mut self, records: Vec<(SessionKey, u64, Option<Bytes>)>) -> u64 {
        let mut refused = 0u64;
        for (key, seq, bytes) in records {
            if let Err(e) = self.hosted.import(key, seq, bytes) {
                refused += 1;
                tracing::warn!(error = e, "pushed record refused");
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests;
