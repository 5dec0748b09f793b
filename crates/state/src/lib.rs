//! The session table every instance keeps its state in.
//!
//! A function's state is a set of *sessions*, each serialised to a *record*: the session key, the
//! seq of the last signal applied to it, its bytes, and a change-frequency estimate. The framework
//! owns the table, which is why it can snapshot, stream, digest and persist sessions without
//! knowing the function, and why it can copy the hottest sessions first during a move.
//!
//! The table is split into [`SHARDS`] independently locked shards. The instance that owns the
//! table is its only writer; readers (a state dump, a copy stream) visit one shard at a time and
//! hold its read lock only while cloning that shard's records (a refcount bump per record, since
//! record bytes are [`Bytes`]), so a writer never waits longer than one shard's clone.

#![warn(missing_docs)]

mod copy;
mod digest;
mod freq;

pub use copy::{manifest, CopyOrder, CopyPlan, Infeasible, Manifest, Pacer, Plan, MAX_LEAD_MS};
pub use digest::{bucket_of, Digest, BUCKETS};

pub use freq::ChangeFrequency;

use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// Name of a session (opaque to the framework).
pub type SessionKey = Bytes;

/// Number of shards in a [`SessionTable`].
pub const SHARDS: usize = 64;

/// One session's record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Seq of the last signal applied to the session.
    pub seq: u64,
    /// The session, serialised by its function.
    pub bytes: Bytes,
    /// When the session's next timer fires (µs, steer clock); `u64::MAX` when it has none.
    /// Derived from `bytes` by the function and kept here so timers need no decoding.
    pub deadline_us: u64,
    /// How often the session changes (decayed count).
    pub freq: ChangeFrequency,
}

/// A record as it leaves the table: what a dump, a copy stream or a digest sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView {
    /// The session key.
    pub key: SessionKey,
    /// Seq of the last signal applied.
    pub seq: u64,
    /// The serialised session.
    pub bytes: Bytes,
}

/// One shard's map. Its hash needs no agreement between processes (only the shard choice
/// does, [`key_hash`]), so it is seeded per process: session keys are chosen by clients, and
/// a public seed would let them pick keys that collide.
type Shard = HashMap<SessionKey, Record, SeededState>;

/// XXH3 with a fixed seed, as a [`BuildHasher`]: the same in every process and with every
/// toolchain (std's `DefaultHasher` promises neither), for maps whose layout two processes
/// must agree on. The session table itself uses [`SeededState`] inside its shards.
#[derive(Clone, Copy, Default, Debug)]
pub struct FixedState;

/// Seed of [`key_hash`] (shards, digest buckets).
const KEY_SEED: u64 = 0x6861_6e64_6f66_6621;
/// Seed of the hash inside a shard: it must differ from [`KEY_SEED`], or every key of a shard
/// would share the low bits the map indexes by.
const MAP_SEED: u64 = 0x7368_6172_645f_6d61;

impl BuildHasher for FixedState {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> Self::Hasher {
        KeyHasher(MAP_SEED)
    }
}

/// The [`std::hash::Hasher`] of [`FixedState`]: each write is hashed with XXH3, seeded by what
/// came before (a key hashes as its length, then its bytes).
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A [`BuildHasher`] for in-memory sets of session keys that no other process needs to agree
/// with (a move's awaited and buffered sessions): [`KeyHasher`] with a seed drawn once per
/// process, so keys chosen to collide cannot be precomputed.
#[derive(Clone, Copy, Debug)]
pub struct SeededState(u64);

impl Default for SeededState {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        Self(*SEED.get_or_init(|| std::hash::RandomState::new().hash_one(KEY_SEED)))
    }
}

impl BuildHasher for SeededState {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> Self::Hasher {
        KeyHasher(self.0)
    }
}

/// Which shard and which digest bucket a key belongs to. Stable across processes and builds.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, KEY_SEED)
}

/// Sessions of one instance, sharded for concurrent readers.
pub struct SessionTable {
    shards: Box<[RwLock<Shard>]>,
    half_life_us: u64,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("len", &self.len())
            .finish()
    }
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new(freq::DEFAULT_HALF_LIFE_US)
    }
}

/// What [`SessionTable::put`] replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// The previous record's deadline, if there was a record.
    pub old_deadline_us: Option<u64>,
}

impl SessionTable {
    /// An empty table whose change frequencies halve every `half_life_us` of steer time.
    pub fn new(half_life_us: u64) -> Self {
        let shards = (0..SHARDS)
            .map(|_| RwLock::new(HashMap::with_hasher(SeededState::default())))
            .collect();
        Self {
            shards,
            half_life_us: half_life_us.max(1),
        }
    }

    fn shard(&self, key: &[u8]) -> &RwLock<Shard> {
        // SHARDS is a power of two; the modulo keeps the index in range for any hash.
        &self.shards[(key_hash(key) % SHARDS as u64) as usize]
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether the table holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of one record (cheap: the bytes are shared).
    pub fn get(&self, key: &[u8]) -> Option<Record> {
        self.shard(key).read().get(key).cloned()
    }

    /// Visits every record, one shard at a time under that shard's read lock, with no copy of
    /// the records (keep `f` short: each shard's writer waits while it is visited).
    pub fn scan(&self, mut f: impl FnMut(&SessionKey, &Record)) {
        for shard in self.shards.iter() {
            for (key, rec) in shard.read().iter() {
                f(key, rec);
            }
        }
    }

    /// Runs `f` on one record under its shard's read lock, with no copy of it (keep `f` short:
    /// the shard's writer waits meanwhile).
    pub fn with<R>(&self, key: &[u8], f: impl FnOnce(&Record) -> R) -> Option<R> {
        self.shard(key).read().get(key).map(f)
    }

    /// Makes room for `additional` more sessions spread over the shards (a move's destination
    /// learning how many records are coming), so the copy does not rehash as it fills.
    pub fn reserve(&self, additional: usize) {
        let per_shard = additional.div_ceil(SHARDS);
        for shard in self.shards.iter() {
            shard.write().reserve(per_shard);
        }
    }

    /// The timer deadline of one session (`u64::MAX`: none), without copying its record.
    pub fn deadline_us(&self, key: &[u8]) -> Option<u64> {
        self.shard(key).read().get(key).map(|r| r.deadline_us)
    }

    /// Stores a session after a signal with `seq` changed it at steer time `now_us`.
    /// `changed` says whether the bytes differ from before (a retransmitted transaction applies
    /// but changes nothing, and must not count as a change).
    pub fn put(
        &self,
        key: SessionKey,
        seq: u64,
        bytes: Bytes,
        deadline_us: u64,
        now_us: u64,
        changed: bool,
    ) -> Replaced {
        let half_life = self.half_life_us;
        let mut shard = self.shard(&key).write();
        match shard.get_mut(&key) {
            Some(rec) => {
                let old = rec.deadline_us;
                rec.seq = seq;
                rec.bytes = bytes;
                rec.deadline_us = deadline_us;
                if changed {
                    rec.freq.touch(now_us, half_life);
                }
                Replaced {
                    old_deadline_us: Some(old),
                }
            }
            None => {
                let mut freq = ChangeFrequency::default();
                freq.touch(now_us, half_life);
                shard.insert(
                    key,
                    Record {
                        seq,
                        bytes,
                        deadline_us,
                        freq,
                    },
                );
                Replaced {
                    old_deadline_us: None,
                }
            }
        }
    }

    /// Inserts a record as it is (an imported copy), replacing any previous one.
    pub fn insert_record(&self, key: SessionKey, record: Record) -> Option<Record> {
        self.shard(&key).write().insert(key, record)
    }

    /// Removes a session.
    pub fn remove(&self, key: &[u8]) -> Option<Record> {
        self.shard(key).write().remove(key)
    }

    /// The records of shard `index` (`0..SHARDS`), cloned under the shard's read lock only.
    pub fn shard_snapshot(&self, index: usize) -> Vec<(SessionKey, Record)> {
        match self.shards.get(index) {
            Some(shard) => shard
                .read()
                .iter()
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Every record, sorted by key: what the oracle compares. Visits shards one at a time.
    pub fn dump(&self) -> Vec<RecordView> {
        let mut out: Vec<RecordView> = (0..SHARDS)
            .flat_map(|i| self.shard_snapshot(i))
            .map(|(key, r)| RecordView {
                key,
                seq: r.seq,
                bytes: r.bytes,
            })
            .collect();
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Total bytes of all records (keys and values), for reports.
    pub fn payload_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .iter()
                    .map(|(k, r)| (k.len() + r.bytes.len()) as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// The half-life the table decays change frequencies with.
    pub fn half_life_us(&self) -> u64 {
        self.half_life_us
    }
}

#[cfg(test)]
mod tests;
