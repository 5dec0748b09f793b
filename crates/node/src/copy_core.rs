//! The pure cores of a move's copy stream (DESIGN.md "Live move", steps 3 to 5): the source's
//! [`CopySender`], the per-record [`Outgoing`] digest, and the destination's [`CopyReceiver`].
//! No I/O and no clock: the node's copy tasks (`copy.rs`) and the simulation drive these very
//! types and carry out the steps they ask for.
//!
//! ```text
//!  source (CopySender)                                   destination (CopyReceiver)
//!  WaitApplied(after_seq) ─▶ TakeManifest ─▶ SendManifest ──Manifest*──▶ manifest_chunk → Take
//!                                                        ◀──ManifestAnswer{at_seq}── taken
//!  WaitApplied(at_seq) ─▶ Stream(keys) ──CopyRecord/Tombstone*, CopyEnd──▶ record*, end
//!                                                        ◀──CopyVerdict{match, buckets}──
//!  verdict: match → Done; else (≤ MAX_RESEND_ROUNDS) SendManifest(keys of the differing
//!  buckets) ──▶ Reawait ◀──ManifestAnswer{at_seq, excluded}── ─▶ WaitApplied(at_seq) ─▶ Stream …
//! ```
//!
//! Invariants:
//! - The manifest is taken only once the source applied `after_seq` (every session created
//!   before move mode is in it), and records are read only once it applied the destination's
//!   `at_seq` (a re-awaited session's record includes every signal the destination applied to
//!   the state it dropped).
//! - Exactly one record or tombstone per manifest key per round; a tombstone carries the
//!   deleting seq from the deletion log (0 for a key of a subset copy never held here); a
//!   full copy's key gone without a logged deletion fails the copy.
//! - Both ends digest exactly what was streamed; equal digests over unequal counts count as a
//!   mismatch of every bucket. Re-send rounds are bounded.
//! - Every answer is a typed message whose fields are all required: a missing field is an
//!   error, never a default.

use bytes::Bytes;
use handoff_function::runtime::shadow::Reawaited;
use handoff_function::runtime::{DeletionLog, ManifestTaken};
use handoff_function::SessionKey;
use handoff_state::{bucket_of, Digest};
use std::collections::HashSet;

/// Most re-send rounds after a digest mismatch before the copy gives up (the move aborts).
pub const MAX_RESEND_ROUNDS: usize = 3;
/// Most sessions a move's manifest may name (bounds the destination's memory).
pub const MAX_MANIFEST_TOTAL: usize = 50_000_000;

/// The destination's answer to a manifest (the first, or a re-send round's).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestAnswer {
    /// Sessions in the manifest.
    pub sessions: u64,
    /// The seq the source must have applied before it reads the records it streams.
    pub at_seq: u64,
    /// The re-send round this answers (0: the first manifest).
    pub resend: u64,
    /// Sessions of the differing buckets the destination owns by now (created there during
    /// the move): not re-sent. Hex keys.
    pub excluded: Vec<String>,
    /// Sessions the destination still awaits from an earlier, superseded manifest that this
    /// one does not list (hex keys): a full copy sends their tombstones at `unlisted_seq`.
    pub unlisted: Vec<String>,
    /// The seq of those tombstones (the destination's last applied seq when it took the
    /// manifest: every signal it buffered for them is superseded by their deletion).
    pub unlisted_seq: u64,
}

/// The destination's verdict on a round of records.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyVerdict {
    /// Records and tombstones received in the round.
    pub records: u64,
    /// Whether the digests (and counts) match.
    pub digest_match: bool,
    /// The digest buckets that differ (empty when they match).
    pub differing_buckets: Vec<usize>,
}

/// What one round of records sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streamed {
    /// Records and tombstones.
    pub records: u64,
    /// Of which tombstones.
    pub tombstones: u64,
    /// Record bytes (keys and values).
    pub bytes: u64,
    /// Of the records, those sent on demand for sessions the round's list does not name
    /// (asked for before the manifest: a session this source does not hold gets a tombstone).
    pub unlisted: u64,
}

/// Why a copy cannot go on (the move aborts).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyCoreError {
    /// A manifest session vanished without a logged deletion (or the log overflowed).
    #[error("session deleted during the copy without a tombstone; the copy cannot be exact")]
    MissingTombstone,
    /// The destination answered something that does not fit the copy.
    #[error("bad answer from the destination: {0}")]
    BadAnswer(String),
    /// A step was asked for out of turn (a bug in the shell).
    #[error("copy step out of turn: {0}")]
    OutOfTurn(&'static str),
}

/// The records of one round, digested as they are streamed.
#[derive(Debug)]
pub struct Outgoing {
    subset: bool,
    /// Keys gone before the copy began whose tombstone seq the destination gave
    /// ([`ManifestAnswer::unlisted`]).
    gone: std::collections::HashMap<SessionKey, u64>,
    digest: Digest,
    sent: Streamed,
    /// Keys sent ahead of their place because the destination asked for them: their place in
    /// the order is skipped, so each key is still sent once.
    early: HashSet<SessionKey>,
    /// Keys of the round's list found sent early (the rest of `early` was not listed).
    early_listed: u64,
    /// Hashes of the keys sent so far: a demand for a key already on its way (sent, not yet
    /// applied there) is not served again. A hash shared by two keys only ever keeps a key
    /// from going early, never from going at all.
    sent_hashes: HashSet<u64, handoff_state::FixedState>,
    /// Demands for keys this round does not send (not in it, excluded, or sent already).
    pub demands_ignored: u64,
}

impl Outgoing {
    /// A round of a copy (`subset`: of given keys, an aborted move's sessions going back).
    pub fn new(subset: bool) -> Self {
        Self {
            subset,
            gone: std::collections::HashMap::new(),
            digest: Digest::default(),
            sent: Streamed::default(),
            early: HashSet::new(),
            early_listed: 0,
            sent_hashes: HashSet::default(),
            demands_ignored: 0,
        }
    }

    /// The destination asks for `key` next: whether to send it now. Only a key of this round
    /// (`in_round`: the shell knows whether it is listed and not skipped) not sent yet is;
    /// once sent early, [`Outgoing::sent_early`] says to skip its place in the order.
    pub fn demand(&mut self, key: &SessionKey, in_round: bool) -> bool {
        if in_round
            && !self.sent_hashes.contains(&handoff_state::key_hash(key))
            && self.early.insert(key.clone())
        {
            return true;
        }
        self.demands_ignored += 1;
        false
    }

    /// Whether `key`, in its place in the round's order, was already sent on demand (so its
    /// place is skipped). Call it once per key of the round's list.
    pub fn sent_early(&mut self, key: &SessionKey) -> bool {
        let early = !self.early.is_empty() && self.early.contains(key);
        self.early_listed += u64::from(early);
        early
    }

    /// Keys sent on demand so far.
    pub fn early(&self) -> usize {
        self.early.len()
    }

    /// A record the table holds: digest it (the shell encodes it).
    pub fn record(&mut self, key: &SessionKey, seq: u64, bytes: &[u8]) -> u64 {
        self.sent_hashes.insert(handoff_state::key_hash(key));
        self.digest.add(key, seq, bytes);
        let size = (key.len() + bytes.len()) as u64;
        self.sent.records += 1;
        self.sent.bytes += size;
        size
    }

    /// A key the table no longer holds: its tombstone's seq (the shell encodes it).
    pub fn tombstone(&mut self, key: &SessionKey, log: &DeletionLog) -> Result<u64, CopyCoreError> {
        let seq = match (log.seq_of(key), self.gone.get(key)) {
            (Some(s), _) => s,
            (None, Some(s)) => *s,
            // Never created here (or long gone): below every signal buffered for it.
            (None, None) if self.subset => 0,
            (None, None) => return Err(CopyCoreError::MissingTombstone),
        };
        self.sent_hashes.insert(handoff_state::key_hash(key));
        self.digest.add(key, seq, TOMBSTONE_BODY);
        self.sent.records += 1;
        self.sent.tombstones += 1;
        Ok(seq)
    }

    /// A key the table does not hold, asked for before the manifest (the destination could not
    /// tell it from one still on its way): its tombstone's seq, the logged deletion's, else 0
    /// (never held here since the copy began: below every signal buffered for it). The shell
    /// encodes it.
    pub fn absent(&mut self, key: &SessionKey, log: &DeletionLog) -> u64 {
        let seq = log
            .seq_of(key)
            .or_else(|| self.gone.get(key).copied())
            .unwrap_or(0);
        self.sent_hashes.insert(handoff_state::key_hash(key));
        self.digest.add(key, seq, TOMBSTONE_BODY);
        self.sent.records += 1;
        self.sent.tombstones += 1;
        seq
    }

    /// Whether a key the table no longer holds has a tombstone this round can send (a logged
    /// deletion, or a key gone before the copy began).
    pub fn knows_tombstone(&self, key: &SessionKey, log: &DeletionLog) -> bool {
        log.seq_of(key).is_some() || self.gone.contains_key(key)
    }

    /// The round's end: what was sent, and the `CopyEnd` count and digest buckets.
    pub fn end(mut self) -> (Streamed, Vec<u128>) {
        self.sent.unlisted = (self.early.len() as u64).saturating_sub(self.early_listed);
        (self.sent, self.digest.buckets().to_vec())
    }
}

/// Tombstones enter the digest as a record with this body (no real record is empty: every
/// function's encoding carries at least a version byte).
pub const TOMBSTONE_BODY: &[u8] = &[];

/// What the source's shell does next.
#[derive(Debug, PartialEq, Eq)]
pub enum SenderStep {
    /// Wait until the instance applied this seq (bounded), then [`CopySender::applied`].
    WaitApplied(u64),
    /// Start logging deletions (`Hosted::begin_source_copy`), rank the sessions, then
    /// [`CopySender::manifest`] (a subset copy ranks nothing: its keys are given).
    TakeManifest,
    /// Send these keys as the manifest; read a [`ManifestAnswer`], then [`CopySender::ready`].
    SendManifest(Vec<SessionKey>),
    /// Stream one record or tombstone per key (in order) except those skipped, through an
    /// [`Outgoing`], then `CopyEnd`; then [`CopySender::streamed`] and read a [`CopyVerdict`]
    /// for [`CopySender::verdict`].
    Stream {
        /// The keys.
        keys: Vec<SessionKey>,
        /// Keys not to send (the destination's own).
        skip: HashSet<SessionKey>,
    },
    /// The copy ended (the digests matched, or the re-send rounds ran out).
    Done,
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

#[derive(Debug, PartialEq, Eq)]
enum SenderStage {
    /// Waiting for `after_seq` before the manifest.
    Start,
    /// Waiting for the manifest's keys.
    Manifest,
    /// Waiting for the destination's answer to a manifest.
    AwaitReady,
    /// Waiting for the source to apply the destination's `at_seq`.
    AwaitApplied,
    /// Streaming a round.
    Streaming,
    /// Waiting for the verdict.
    AwaitVerdict,
    Done,
}

/// The source's side of one copy: which step comes next, and the figures of what was sent.
#[derive(Debug)]
pub struct CopySender {
    stage: SenderStage,
    subset: bool,
    manifest: Vec<SessionKey>,
    /// The keys and exclusions of the round about to stream.
    round: (Vec<SessionKey>, HashSet<SessionKey>),
    /// The buckets the current re-send round re-sends.
    resending: Vec<usize>,
    /// Keys a superseded manifest left awaited at the destination, with their tombstone seq.
    gone: Vec<(SessionKey, u64)>,
    /// Records and tombstones of the first round.
    pub first: Streamed,
    /// Re-send rounds, in order.
    pub resends: Vec<ResendRound>,
    /// The last verdict.
    pub verdict: CopyVerdict,
}

impl CopySender {
    /// A copy of every session (`only` `None`) or of the given keys, whose manifest waits for
    /// `after_seq`. Returns it and its first step.
    pub fn new(after_seq: u64, only: Option<Vec<SessionKey>>) -> (Self, SenderStep) {
        let s = Self {
            stage: SenderStage::Start,
            subset: only.is_some(),
            manifest: only.unwrap_or_default(),
            round: (Vec::new(), HashSet::new()),
            resending: Vec::new(),
            gone: Vec::new(),
            first: Streamed::default(),
            resends: Vec::new(),
            verdict: CopyVerdict::default(),
        };
        (s, SenderStep::WaitApplied(after_seq))
    }

    /// Whether this copies given keys (an aborted move's sessions going back).
    pub fn subset(&self) -> bool {
        self.subset
    }

    /// The digest of a round about to stream (it knows the tombstones of sessions gone before
    /// the copy began).
    pub fn outgoing(&self) -> Outgoing {
        let mut o = Outgoing::new(self.subset);
        o.gone = self.gone.iter().cloned().collect();
        o
    }

    /// The first round's digest again, once the destination answered the manifest (it may
    /// already hold records sent on demand before the manifest): it learns the tombstones of
    /// sessions gone before the copy began, as [`CopySender::outgoing`] does.
    pub fn resume(&self, mut round: Outgoing) -> Outgoing {
        round.gone = self.gone.iter().cloned().collect();
        round
    }

    /// The manifest (the keys given, for a subset copy, until [`CopySender::manifest`]).
    pub fn keys(&self) -> &[SessionKey] {
        &self.manifest
    }

    /// The seq waited for is applied.
    pub fn applied(&mut self) -> Result<SenderStep, CopyCoreError> {
        match self.stage {
            SenderStage::Start => {
                self.stage = SenderStage::Manifest;
                Ok(SenderStep::TakeManifest)
            }
            SenderStage::AwaitApplied => {
                self.stage = SenderStage::Streaming;
                let (keys, skip) = std::mem::take(&mut self.round);
                Ok(SenderStep::Stream { keys, skip })
            }
            _ => Err(CopyCoreError::OutOfTurn("applied")),
        }
    }

    /// The manifest, in copy order (a subset copy passes its keys back).
    pub fn manifest(&mut self, keys: Vec<SessionKey>) -> Result<SenderStep, CopyCoreError> {
        if self.stage != SenderStage::Manifest {
            return Err(CopyCoreError::OutOfTurn("manifest"));
        }
        self.manifest = keys;
        self.round = (self.manifest.clone(), HashSet::new());
        self.stage = SenderStage::AwaitReady;
        Ok(SenderStep::SendManifest(self.manifest.clone()))
    }

    /// The copy order of the first round, ranked while the manifest (sent in table order: the
    /// destination needs the set, not the order) was on its way: a permutation of the
    /// manifest's keys. Only before the first round streams.
    pub fn order(&mut self, keys: Vec<SessionKey>) -> Result<(), CopyCoreError> {
        let first = self.resends.is_empty() && self.resending.is_empty();
        if !matches!(
            self.stage,
            SenderStage::AwaitReady | SenderStage::AwaitApplied
        ) || !first
        {
            return Err(CopyCoreError::OutOfTurn("order"));
        }
        if keys.len() != self.manifest.len() {
            return Err(CopyCoreError::OutOfTurn(
                "order of other keys than the manifest's",
            ));
        }
        // Keys a superseded manifest left awaited ([`CopySender::ready`]) follow the manifest.
        let unlisted = self
            .round
            .0
            .split_off(self.manifest.len().min(self.round.0.len()));
        self.round.0 = keys;
        self.round.0.extend(unlisted);
        Ok(())
    }

    /// The destination's answer to the manifest (or to a re-send round's).
    pub fn ready(&mut self, a: ManifestAnswer) -> Result<SenderStep, CopyCoreError> {
        if self.stage != SenderStage::AwaitReady {
            return Err(CopyCoreError::OutOfTurn("ready"));
        }
        let want = self.resends.len() as u64 + u64::from(!self.resending.is_empty());
        if a.resend != want {
            return Err(CopyCoreError::BadAnswer(format!(
                "answer to round {} while round {want} was asked",
                a.resend
            )));
        }
        let keys = |list: &[String]| {
            list.iter()
                .map(|k| hex::decode(k).map(SessionKey::from))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CopyCoreError::BadAnswer(format!("key: {e}")))
        };
        self.round.1 = keys(&a.excluded)?.into_iter().collect();
        if want == 0 && !self.subset {
            // A full copy repeated after a partial one: sessions the first manifest listed and
            // this source no longer holds are still awaited there; their tombstones end the
            // wait (a subset copy leaves them to the copy they come with).
            let unlisted = keys(&a.unlisted)?;
            self.round.0.extend(unlisted.iter().cloned());
            self.gone = unlisted.into_iter().map(|k| (k, a.unlisted_seq)).collect();
        }
        self.stage = SenderStage::AwaitApplied;
        Ok(SenderStep::WaitApplied(a.at_seq))
    }

    /// The round streamed (its `CopyEnd` sent).
    pub fn streamed(&mut self, s: Streamed, excluded: usize) -> Result<(), CopyCoreError> {
        if self.stage != SenderStage::Streaming {
            return Err(CopyCoreError::OutOfTurn("streamed"));
        }
        if self.resending.is_empty() {
            self.first = s;
        } else {
            self.resends.push(ResendRound {
                buckets: std::mem::take(&mut self.resending),
                records: s.records,
                excluded: excluded as u64,
                bytes: s.bytes,
            });
        }
        self.stage = SenderStage::AwaitVerdict;
        Ok(())
    }

    /// The destination's verdict: done, or a re-send of the differing buckets' sessions.
    pub fn verdict(&mut self, v: CopyVerdict) -> Result<SenderStep, CopyCoreError> {
        if self.stage != SenderStage::AwaitVerdict {
            return Err(CopyCoreError::OutOfTurn("verdict"));
        }
        let differing = v.differing_buckets.clone();
        let done =
            v.digest_match || differing.is_empty() || self.resends.len() >= MAX_RESEND_ROUNDS;
        self.verdict = v;
        if done {
            self.stage = SenderStage::Done;
            return Ok(SenderStep::Done);
        }
        let buckets: HashSet<usize> = differing.iter().copied().collect();
        let keys: Vec<SessionKey> = self
            .manifest
            .iter()
            .filter(|k| buckets.contains(&bucket_of(k)))
            .cloned()
            .collect();
        tracing::warn!(
            buckets = buckets.len(),
            sessions = keys.len(),
            "digests differ; re-sending the differing buckets"
        );
        self.resending = differing;
        self.round = (keys.clone(), HashSet::new());
        self.stage = SenderStage::AwaitReady;
        Ok(SenderStep::SendManifest(keys))
    }
}

/// What a manifest (its last chunk) asks of the destination's instance.
#[derive(Debug, PartialEq, Eq)]
pub enum ManifestStep {
    /// The copy's manifest: the instance takes it (`Hosted::take_manifest`), then
    /// [`CopyReceiver::taken`].
    Take(Vec<SessionKey>),
    /// A re-send round: the instance drops and awaits these again (`Hosted::reawait`), then
    /// [`CopyReceiver::reawaited`].
    Reawait(Vec<SessionKey>),
}

/// Why the destination refuses a copy frame (the connection ends after the refusal).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A manifest after the copy began (and no re-send round is open).
    #[error("manifest after the copy began")]
    ManifestAfterStart,
    /// More keys than a node accepts.
    #[error("manifest larger than the node accepts")]
    ManifestTooLarge,
    /// Records or an end before the manifest was taken.
    #[error("{0} before the manifest")]
    BeforeManifest(&'static str),
}

/// A batch of copied records for the instance (`None` bytes: a tombstone).
pub type RecordBatch = Vec<(SessionKey, u64, Option<Bytes>)>;

/// The destination's side of one copy connection.
#[derive(Debug)]
pub struct CopyReceiver {
    manifest: Vec<SessionKey>,
    /// The manifest was taken by the instance (records may flow).
    taken: bool,
    /// The instance answers demands before the manifest ([`CopyReceiver::open_early`]):
    /// records may flow before it too.
    early: bool,
    /// The shadow's copy epoch the records belong to.
    epoch: u64,
    digest: Digest,
    received: u64,
    batch: RecordBatch,
    batch_max: usize,
    batch_bytes: usize,
    batch_bytes_max: usize,
    rounds: usize,
    resend_open: bool,
}

impl CopyReceiver {
    /// A receiver that hands records to its instance `batch_max` at a time.
    pub fn new(batch_max: usize) -> Self {
        Self {
            manifest: Vec::new(),
            taken: false,
            early: false,
            epoch: 0,
            digest: Digest::default(),
            received: 0,
            batch: Vec::new(),
            batch_max: batch_max.max(1),
            batch_bytes: 0,
            batch_bytes_max: usize::MAX,
            rounds: 0,
            resend_open: false,
        }
    }

    /// Hands batches over once they hold `max` record bytes too (keys and values), whichever
    /// bound comes first.
    pub fn with_batch_bytes(mut self, max: usize) -> Self {
        self.batch_bytes_max = max.max(1);
        self
    }

    /// The instance is a shadow still waiting for its manifest that asks this connection's
    /// source for sessions at once (DESIGN.md "Live move": no update waits for the manifest):
    /// the records and tombstones that answer it may arrive before the manifest, and are
    /// digested and counted with the first round's.
    pub fn open_early(&mut self) {
        if !self.taken {
            self.early = true;
        }
    }

    /// Whether records flow before the manifest now (opened early, manifest not taken): they
    /// trickle, one per demand, rather than stream.
    pub fn before_manifest(&self) -> bool {
        self.early && !self.taken
    }

    /// How many records are collected and not handed over yet.
    pub fn pending(&self) -> usize {
        self.batch.len()
    }

    /// The records collected but not handed over yet (before the manifest is taken, so the
    /// instance applies them before it).
    pub fn take_batch(&mut self) -> RecordBatch {
        self.batch_bytes = 0;
        std::mem::take(&mut self.batch)
    }

    /// Whether nothing arrived yet (a push may still open the connection instead).
    pub fn is_fresh(&self) -> bool {
        !self.taken && !self.early && self.manifest.is_empty() && self.received == 0
    }

    /// The copy epoch records are handed over with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A manifest chunk; the last one says what the instance must do.
    pub fn manifest_chunk(
        &mut self,
        keys: Vec<SessionKey>,
        last: bool,
    ) -> Result<Option<ManifestStep>, Refusal> {
        if self.taken && !self.resend_open {
            return Err(Refusal::ManifestAfterStart);
        }
        if self.manifest.len() + keys.len() > MAX_MANIFEST_TOTAL {
            return Err(Refusal::ManifestTooLarge);
        }
        self.manifest.extend(keys);
        if !last {
            return Ok(None);
        }
        let keys = std::mem::take(&mut self.manifest);
        if self.taken {
            // A re-send round: drop the sessions of the differing buckets, await them.
            self.resend_open = false;
            self.rounds += 1;
            return Ok(Some(ManifestStep::Reawait(keys)));
        }
        Ok(Some(ManifestStep::Take(keys)))
    }

    /// The instance took the manifest of `sessions` keys: the answer for the source.
    pub fn taken(&mut self, t: ManifestTaken, sessions: usize) -> ManifestAnswer {
        self.taken = true;
        self.epoch = t.epoch;
        ManifestAnswer {
            sessions: sessions as u64,
            at_seq: t.at_seq,
            resend: 0,
            excluded: Vec::new(),
            unlisted: t.unlisted.iter().map(hex::encode).collect(),
            unlisted_seq: t.applied,
        }
    }

    /// The instance re-awaits a round's sessions: the answer for the source.
    pub fn reawaited(&mut self, r: Reawaited) -> ManifestAnswer {
        self.epoch = r.epoch;
        self.digest = Digest::default();
        self.received = 0;
        ManifestAnswer {
            sessions: r.awaited as u64,
            at_seq: r.at_seq,
            resend: self.rounds as u64,
            excluded: r.excluded.iter().map(hex::encode).collect(),
            unlisted: Vec::new(),
            unlisted_seq: 0,
        }
    }

    /// A record (`None` bytes: a tombstone); returns a full batch to hand to the instance.
    pub fn record(
        &mut self,
        key: SessionKey,
        seq: u64,
        bytes: Option<Bytes>,
    ) -> Result<Option<RecordBatch>, Refusal> {
        if !self.taken && !self.early {
            return Err(Refusal::BeforeManifest("records"));
        }
        self.digest
            .add(&key, seq, bytes.as_deref().unwrap_or(TOMBSTONE_BODY));
        self.received += 1;
        self.batch_bytes += key.len() + bytes.as_ref().map_or(0, Bytes::len);
        self.batch.push((key, seq, bytes));
        if self.batch.len() < self.batch_max && self.batch_bytes < self.batch_bytes_max {
            return Ok(None);
        }
        self.batch_bytes = 0;
        Ok(Some(std::mem::take(&mut self.batch)))
    }

    /// The round's end: the last batch to hand over (the verdict is sent once every record is
    /// applied), the verdict, and whether the source may re-send on this connection.
    pub fn end(
        &mut self,
        records: u64,
        theirs: Vec<u128>,
    ) -> Result<(RecordBatch, CopyVerdict, bool), Refusal> {
        if !self.taken {
            return Err(Refusal::BeforeManifest("copy end"));
        }
        let mut differing = match Digest::from_parts(theirs, records) {
            Some(theirs) => theirs.differing_buckets(&self.digest),
            None => (0..handoff_state::BUCKETS).collect(),
        };
        if differing.is_empty() && records != self.received {
            // Equal digests over unequal counts cannot be repaired bucket by bucket.
            differing = (0..handoff_state::BUCKETS).collect();
        }
        let matched = differing.is_empty();
        let verdict = CopyVerdict {
            records: self.received,
            digest_match: matched,
            differing_buckets: differing,
        };
        let more = !matched && self.rounds < MAX_RESEND_ROUNDS;
        self.resend_open = more;
        self.batch_bytes = 0;
        Ok((std::mem::take(&mut self.batch), verdict, more))
    }
}

#[cfg(test)]
mod tests;
