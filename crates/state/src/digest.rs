//! An order-independent digest of a set of records, split into buckets by key hash.
//!
//! Used to verify a copy (DESIGN.md "Verify"): source and destination each digest exactly the
//! records streamed; equal digests mean equal sets, and when they differ only the differing
//! buckets need re-sending. Each record contributes `xxh3_128(key, seq, bytes)` to its bucket
//! by wrapping addition, so the order records are added in does not matter and a record added
//! twice is not mistaken for one never added (as XOR would).

use crate::{key_hash, RecordView};

/// Buckets in a [`Digest`].
pub const BUCKETS: usize = 256;

/// A bucketed, order-independent digest of records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    buckets: Box<[u128]>,
    records: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            records: 0,
        }
    }
}

/// The bucket a key belongs to.
pub fn bucket_of(key: &[u8]) -> usize {
    (key_hash(key) % BUCKETS as u64) as usize
}

fn record_hash(key: &[u8], seq: u64, bytes: &[u8]) -> u128 {
    // XXH3-128: the digest detects records that differ between two cooperating nodes on an
    // authenticated link (a bug, a corruption), not records forged to collide, so a fast
    // 128-bit hash is enough, and several times cheaper than blake3 on a 500-byte record
    // (the digest runs once per record on each side of a copy).
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(&seq.to_be_bytes());
    h.update(bytes);
    h.digest128()
}

impl Digest {
    /// Adds one record.
    pub fn add(&mut self, key: &[u8], seq: u64, bytes: &[u8]) {
        let b = bucket_of(key);
        self.buckets[b] = self.buckets[b].wrapping_add(record_hash(key, seq, bytes));
        self.records += 1;
    }

    /// Adds a record view.
    pub fn add_view(&mut self, r: &RecordView) {
        self.add(&r.key, r.seq, &r.bytes);
    }

    /// Records added.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The buckets whose contents differ between `self` and `other`, in ascending order.
    pub fn differing_buckets(&self, other: &Digest) -> Vec<usize> {
        self.buckets
            .iter()
            .zip(other.buckets.iter())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect()
    }

    /// The bucket values, for sending to a peer.
    pub fn buckets(&self) -> &[u128] {
        &self.buckets
    }

    /// Rebuilds a digest received from a peer; `None` if it has the wrong number of buckets.
    pub fn from_parts(buckets: Vec<u128>, records: u64) -> Option<Self> {
        (buckets.len() == BUCKETS).then(|| Self {
            buckets: buckets.into_boxed_slice(),
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn recs() -> impl Strategy<Value = Vec<(Vec<u8>, u64, Vec<u8>)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 1..8),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..32),
            ),
            0..64,
        )
    }

    proptest! {
        #[test]
        fn order_does_not_matter(mut rs in recs(), seed in any::<u64>()) {
            let mut a = Digest::default();
            rs.iter().for_each(|(k, s, b)| a.add(k, *s, b));
            // A deterministic shuffle.
            let n = rs.len().max(1);
            for i in 0..rs.len() {
                rs.swap(i, (seed as usize).wrapping_mul(i + 7) % n);
            }
            let mut b = Digest::default();
            rs.iter().for_each(|(k, s, b2)| b.add(k, *s, b2));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn any_change_shows_in_exactly_its_bucket(rs in recs(), which in any::<usize>(), flip in any::<u8>()) {
            prop_assume!(!rs.is_empty());
            let i = which % rs.len();
            let mut a = Digest::default();
            let mut b = Digest::default();
            for (j, (k, s, bytes)) in rs.iter().enumerate() {
                a.add(k, *s, bytes);
                if j == i {
                    let mut changed = bytes.clone();
                    changed.push(flip);
                    b.add(k, *s, &changed);
                } else {
                    b.add(k, *s, bytes);
                }
            }
            prop_assert_eq!(a.differing_buckets(&b), vec![bucket_of(&rs[i].0)]);
        }
    }

    #[test]
    fn a_record_added_twice_differs_from_once_and_from_never() {
        let mut once = Digest::default();
        once.add(b"k", 1, b"v");
        let mut twice = once.clone();
        twice.add(b"k", 1, b"v");
        assert_ne!(once.differing_buckets(&twice), Vec::<usize>::new());
        assert_ne!(
            twice.differing_buckets(&Digest::default()),
            Vec::<usize>::new()
        );
    }
}
