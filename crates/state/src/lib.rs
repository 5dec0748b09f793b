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

pub use copy::{manifest, CopyOrder, CopyPlan, Infeasible, Manifest, Pacer, MAX_LEAD_MS};
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

type Shard = HashMap<SessionKey, Record, FixedState>;

/// A hasher with fixed keys: shard choice and iteration order must not depend on the process
/// (two copies of an instance must agree on which shard holds a key).
#[derive(Clone, Copy, Default, Debug)]
pub struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = std::collections::hash_map::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        std::collections::hash_map::DefaultHasher::new()
    }
}

/// Which shard (and, later, which digest bucket) a key belongs to. Stable across processes.
pub fn key_hash(key: &[u8]) -> u64 {
    FixedState.hash_one(key)
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
            .map(|_| RwLock::new(HashMap::with_hasher(FixedState)))
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
