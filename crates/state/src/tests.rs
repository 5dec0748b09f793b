use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn key(i: u32) -> SessionKey {
    Bytes::copy_from_slice(&i.to_be_bytes())
}

#[test]
fn frequency_halves_every_half_life_and_counts_changes() {
    let mut f = ChangeFrequency::default();
    f.touch(0, 1_000);
    f.touch(0, 1_000);
    assert!((f.at(0, 1_000) - 2.0).abs() < 1e-6);
    assert!((f.at(1_000, 1_000) - 1.0).abs() < 1e-6);
    assert!((f.at(2_000, 1_000) - 0.5).abs() < 1e-6);
    f.touch(1_000, 1_000);
    assert!((f.at(1_000, 1_000) - 2.0).abs() < 1e-6);
}

#[test]
fn hot_sessions_rank_above_cold_ones() {
    let t = SessionTable::new(1_000_000);
    for i in 0..100u64 {
        t.put(
            key(1),
            i,
            Bytes::from_static(b"hot"),
            u64::MAX,
            i * 1_000,
            true,
        );
    }
    t.put(key(2), 100, Bytes::from_static(b"cold"), u64::MAX, 0, true);
    let now = 100_000;
    let hot = t.get(&key(1)).unwrap().freq.at(now, t.half_life_us());
    let cold = t.get(&key(2)).unwrap().freq.at(now, t.half_life_us());
    assert!(hot > 50.0 * cold, "hot {hot} cold {cold}");
}

#[test]
fn unchanged_put_updates_seq_but_not_frequency() {
    let t = SessionTable::default();
    t.put(key(1), 1, Bytes::from_static(b"a"), 5, 0, true);
    let before = t.get(&key(1)).unwrap().freq;
    let r = t.put(key(1), 2, Bytes::from_static(b"a"), 7, 0, false);
    assert_eq!(r.old_deadline_us, Some(5));
    let rec = t.get(&key(1)).unwrap();
    assert_eq!((rec.seq, rec.deadline_us, rec.freq), (2, 7, before));
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u64, Vec<u8>),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(k, s, b)| Op::Put(k, s, b)),
        any::<u8>().prop_map(Op::Remove),
    ]
}

proptest! {
    /// The table behaves like a map from key to (seq, bytes), whatever the sharding.
    #[test]
    fn table_matches_a_btreemap_model(ops in proptest::collection::vec(op(), 0..200)) {
        let t = SessionTable::default();
        let mut model: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, s, b) => {
                    t.put(Bytes::copy_from_slice(&[k]), s, Bytes::from(b.clone()), u64::MAX, 0, true);
                    model.insert(vec![k], (s, b));
                }
                Op::Remove(k) => {
                    prop_assert_eq!(t.remove(&[k]).map(|r| (r.seq, r.bytes.to_vec())), model.remove(&vec![k]));
                }
            }
        }
        prop_assert_eq!(t.len(), model.len());
        let dump: Vec<(Vec<u8>, u64, Vec<u8>)> =
            t.dump().into_iter().map(|r| (r.key.to_vec(), r.seq, r.bytes.to_vec())).collect();
        let expected: Vec<(Vec<u8>, u64, Vec<u8>)> =
            model.into_iter().map(|(k, (s, b))| (k, s, b)).collect();
        prop_assert_eq!(dump, expected);
    }
}

/// Two nodes, or a node before and after an upgrade, must agree on shards and digest buckets:
/// the key hash is pinned to XXH3-64 with the table's seed, whatever the toolchain.
#[test]
fn the_key_hash_is_stable_across_builds() {
    // One key per length class of XXH3 (0, 1-3, 4-8, 9-16, 17-128, 129-240, above).
    let got: Vec<u64> = PINNED
        .iter()
        .map(|(len, _)| key_hash(&pinned_key(*len)))
        .collect();
    let want: Vec<u64> = PINNED.iter().map(|(_, h)| *h).collect();
    assert_eq!(got, want);
    assert_eq!(crate::bucket_of(b"abc"), (key_hash(b"abc") % 256) as usize);
}

fn pinned_key(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 1) as u8).collect()
}

/// `key_hash` of [`pinned_key`] of each length, as computed when the seed was chosen (a change
/// of hash or seed breaks compatibility between nodes and must be deliberate).
const PINNED: [(usize, u64); 7] = [
    (0, 5_073_774_845_862_215_975),
    (2, 10_034_101_181_813_373_220),
    (6, 16_467_504_764_968_512_778),
    (12, 4_532_215_427_553_091_364),
    (40, 2_757_918_229_831_701_295),
    (200, 9_976_349_091_935_489_074),
    (300, 10_142_945_516_226_462_230),
];

/// Keys of one shard must spread over the map inside it: the in-shard hash is not the shard
/// hash (which would put every key of a shard in the same few map slots).
#[test]
fn in_shard_hashes_are_independent_of_the_shard() {
    use std::hash::BuildHasher;
    let in_shard_0: Vec<SessionKey> = (0..100_000u32)
        .map(key)
        .filter(|k| key_hash(k).is_multiple_of(SHARDS as u64))
        .take(500)
        .collect();
    let low_bits: std::collections::HashSet<u64> = in_shard_0
        .iter()
        .map(|k| SeededState::default().hash_one(k) % 64)
        .collect();
    assert!(low_bits.len() > 48, "{} of 64 slots used", low_bits.len());
}
