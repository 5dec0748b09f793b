use super::*;
use std::collections::BTreeMap;

fn key(i: u32) -> SessionKey {
    SessionKey::from(i.to_be_bytes().to_vec())
}

type Table = BTreeMap<SessionKey, (u64, Bytes)>;

fn table(n: u32) -> Table {
    (0..n)
        .map(|i| (key(i), (u64::from(i) + 1, Bytes::from(vec![1, i as u8]))))
        .collect()
}

/// Streams one round from `t` as the node does; `corrupt` flips the record of one key on the
/// way (as a faulty link would).
fn stream(
    t: &Table,
    keys: &[SessionKey],
    skip: &HashSet<SessionKey>,
    log: &DeletionLog,
    subset: bool,
    rx: &mut CopyReceiver,
    corrupt: Option<&SessionKey>,
) -> (Streamed, CopyVerdict, bool) {
    let mut round = Outgoing::new(subset);
    for k in keys.iter().filter(|k| !skip.contains(*k)) {
        match t.get(k) {
            Some((seq, bytes)) => {
                round.record(k, *seq, bytes);
                let sent = if Some(k) == corrupt {
                    Bytes::from_static(&[9, 9])
                } else {
                    bytes.clone()
                };
                rx.record(k.clone(), *seq, Some(sent)).unwrap();
            }
            None => {
                let seq = round.tombstone(k, log).unwrap();
                rx.record(k.clone(), seq, None).unwrap();
            }
        }
    }
    let (sent, digest) = round.end();
    let (_, verdict, more) = rx.end(sent.records, digest).unwrap();
    (sent, verdict, more)
}

fn taken(at_seq: u64) -> ManifestTaken {
    ManifestTaken {
        at_seq,
        epoch: 1,
        ..ManifestTaken::default()
    }
}

#[test]
fn a_copy_whose_digests_match_ends_after_one_round() {
    let t = table(50);
    let log = DeletionLog::default();
    let (mut tx, step) = CopySender::new(7, None);
    assert_eq!(
        step,
        SenderStep::WaitApplied(7),
        "the manifest waits for after_seq"
    );
    assert_eq!(tx.applied().unwrap(), SenderStep::TakeManifest);
    let keys: Vec<SessionKey> = t.keys().cloned().collect();
    let SenderStep::SendManifest(m) = tx.manifest(keys.clone()).unwrap() else {
        panic!("a manifest to send")
    };
    let mut rx = CopyReceiver::new(8);
    let Some(ManifestStep::Take(m)) = rx.manifest_chunk(m, true).unwrap() else {
        panic!("the instance takes the manifest")
    };
    let a = rx.taken(taken(3), m.len());
    assert_eq!(tx.ready(a).unwrap(), SenderStep::WaitApplied(3));
    let SenderStep::Stream { keys, skip } = tx.applied().unwrap() else {
        panic!("a round to stream")
    };
    let (sent, v, more) = stream(&t, &keys, &skip, &log, false, &mut rx, None);
    assert_eq!(sent.records, 50);
    assert!(v.digest_match && !more);
    tx.streamed(sent, 0).unwrap();
    assert_eq!(tx.verdict(v).unwrap(), SenderStep::Done);
    assert!(tx.resends.is_empty());
    assert_eq!(tx.first.records, 50);
}

#[test]
fn a_mismatch_re_sends_only_the_differing_buckets_except_the_destinations_own() {
    let t = table(400);
    let log = DeletionLog::default();
    let (mut tx, _) = CopySender::new(0, None);
    tx.applied().unwrap();
    let keys: Vec<SessionKey> = t.keys().cloned().collect();
    let SenderStep::SendManifest(m) = tx.manifest(keys).unwrap() else {
        panic!()
    };
    let mut rx = CopyReceiver::new(1000);
    let Some(ManifestStep::Take(m)) = rx.manifest_chunk(m, true).unwrap() else {
        panic!()
    };
    tx.ready(rx.taken(taken(0), m.len())).unwrap();
    let SenderStep::Stream { keys, skip } = tx.applied().unwrap() else {
        panic!()
    };
    let bad = key(17);
    let (sent, v, more) = stream(&t, &keys, &skip, &log, false, &mut rx, Some(&bad));
    assert!(!v.digest_match && more);
    assert_eq!(v.differing_buckets, vec![bucket_of(&bad)]);
    tx.streamed(sent, 0).unwrap();
    let SenderStep::SendManifest(again) = tx.verdict(v).unwrap() else {
        panic!("a re-send round")
    };
    assert!(again.contains(&bad));
    assert!(again.iter().all(|k| bucket_of(k) == bucket_of(&bad)));
    assert!(
        again.len() < 400 / 4,
        "only the differing bucket's sessions"
    );
    let Some(ManifestStep::Reawait(keys)) = rx.manifest_chunk(again.clone(), true).unwrap() else {
        panic!("the destination re-awaits them")
    };
    let own = keys
        .iter()
        .find(|k| **k != bad)
        .cloned()
        .expect("another key");
    let a = rx.reawaited(Reawaited {
        excluded: vec![own.clone()],
        at_seq: 9,
        awaited: keys.len() - 1,
        epoch: 2,
    });
    assert_eq!((a.resend, a.at_seq), (1, 9));
    assert_eq!(tx.ready(a).unwrap(), SenderStep::WaitApplied(9));
    let SenderStep::Stream { keys, skip } = tx.applied().unwrap() else {
        panic!()
    };
    assert!(
        skip.contains(&own),
        "the destination's own session is not re-sent"
    );
    let (sent, v, _) = stream(&t, &keys, &skip, &log, false, &mut rx, None);
    assert_eq!(sent.records, again.len() as u64 - 1);
    assert!(v.digest_match);
    tx.streamed(sent, skip.len()).unwrap();
    assert_eq!(tx.verdict(v).unwrap(), SenderStep::Done);
    assert_eq!(tx.resends.len(), 1);
    assert_eq!(tx.resends[0].excluded, 1);
    assert_eq!(rx.epoch(), 2, "records now belong to the re-await's epoch");
}

#[test]
fn re_send_rounds_are_bounded() {
    let (mut tx, _) = CopySender::new(0, None);
    tx.applied().unwrap();
    tx.manifest(vec![key(1)]).unwrap();
    let bad = CopyVerdict {
        records: 1,
        digest_match: false,
        differing_buckets: vec![bucket_of(&key(1))],
    };
    for round in 0..=MAX_RESEND_ROUNDS {
        tx.ready(ManifestAnswer {
            sessions: 1,
            at_seq: 0,
            resend: round as u64,
            ..ManifestAnswer::default()
        })
        .unwrap();
        tx.applied().unwrap();
        tx.streamed(Streamed::default(), 0).unwrap();
        let step = tx.verdict(bad.clone()).unwrap();
        if round == MAX_RESEND_ROUNDS {
            assert_eq!(step, SenderStep::Done, "gives up after the last round");
            assert!(!tx.verdict.digest_match);
        } else {
            assert!(matches!(step, SenderStep::SendManifest(_)));
        }
    }
}

#[test]
fn tombstones_carry_the_deleting_seq_or_zero_for_a_subset_key_never_held() {
    let log = DeletionLog::default();
    let mut full = Outgoing::new(false);
    assert_eq!(
        full.tombstone(&key(1), &log),
        Err(CopyCoreError::MissingTombstone),
        "a full copy's session vanished without a logged deletion"
    );
    let mut subset = Outgoing::new(true);
    assert_eq!(subset.tombstone(&key(1), &log), Ok(0));
    let (sent, _) = subset.end();
    assert_eq!((sent.records, sent.tombstones), (1, 1));
}

#[test]
fn equal_digests_over_unequal_counts_differ_in_every_bucket() {
    let mut rx = CopyReceiver::new(8);
    rx.manifest_chunk(vec![key(1)], true).unwrap();
    rx.taken(taken(0), 1);
    let (_, v, _) = rx.end(1, Digest::default().buckets().to_vec()).unwrap();
    assert!(!v.digest_match, "one record announced, none received");
    assert_eq!(v.differing_buckets.len(), handoff_state::BUCKETS);
}

#[test]
fn the_receiver_refuses_frames_out_of_turn() {
    let mut rx = CopyReceiver::new(2);
    assert_eq!(
        rx.record(key(1), 1, None),
        Err(Refusal::BeforeManifest("records"))
    );
    assert_eq!(rx.manifest_chunk(vec![key(1)], false), Ok(None), "a chunk");
    assert!(matches!(
        rx.manifest_chunk(vec![key(2)], true),
        Ok(Some(ManifestStep::Take(k))) if k.len() == 2
    ));
    rx.taken(taken(0), 2);
    assert_eq!(rx.record(key(1), 1, None), Ok(None));
    assert_eq!(
        rx.record(key(2), 1, None).unwrap().map(|b| b.len()),
        Some(2),
        "a full batch is handed over"
    );
    assert_eq!(
        rx.manifest_chunk(vec![key(3)], true),
        Err(Refusal::ManifestAfterStart),
        "no manifest while a round runs"
    );
}

#[test]
fn answers_with_a_missing_field_are_refused_not_defaulted() {
    let v: Result<CopyVerdict, _> = serde_json::from_str(r#"{"records":1,"differing_buckets":[]}"#);
    assert!(v.is_err(), "digest_match is required");
    let a: Result<ManifestAnswer, _> =
        serde_json::from_str(r#"{"sessions":1,"resend":0,"excluded":[]}"#);
    assert!(a.is_err(), "at_seq is required");
    let (mut tx, _) = CopySender::new(0, None);
    assert_eq!(
        tx.verdict(CopyVerdict::default()),
        Err(CopyCoreError::OutOfTurn("verdict"))
    );
}

#[test]
fn a_repeated_full_copy_sends_tombstones_for_what_its_manifest_no_longer_lists() {
    let log = DeletionLog::default();
    for subset in [false, true] {
        let only = subset.then(|| vec![key(1)]);
        let (mut tx, _) = CopySender::new(0, only);
        tx.applied().unwrap();
        tx.manifest(vec![key(1)]).unwrap();
        let answer = ManifestAnswer {
            sessions: 1,
            at_seq: 4,
            resend: 0,
            excluded: Vec::new(),
            unlisted: vec![hex::encode(key(2))],
            unlisted_seq: 9,
        };
        tx.ready(answer).unwrap();
        let SenderStep::Stream { keys, .. } = tx.applied().unwrap() else {
            panic!()
        };
        if subset {
            assert_eq!(
                keys,
                vec![key(1)],
                "a subset copy leaves them to their own copy"
            );
            continue;
        }
        assert_eq!(keys, vec![key(1), key(2)]);
        let mut out = tx.outgoing();
        assert_eq!(
            out.tombstone(&key(2), &log),
            Ok(9),
            "at the destination's seq: every signal it buffered for it is superseded"
        );
    }
}

/// Streams one round as the node does, serving `demands` (position in the order → keys the
/// destination asks for) as they come; returns how often each key reached the destination.
fn stream_with_demands(
    t: &Table,
    keys: &[SessionKey],
    demands: &BTreeMap<usize, Vec<SessionKey>>,
    rx: &mut CopyReceiver,
) -> (Streamed, CopyVerdict, BTreeMap<SessionKey, u32>, Outgoing) {
    let mut round = Outgoing::new(false);
    let mut got: BTreeMap<SessionKey, u32> = BTreeMap::new();
    let mut send = |k: &SessionKey, round: &mut Outgoing, rx: &mut CopyReceiver| {
        let (seq, bytes) = t.get(k).expect("the table holds every key");
        round.record(k, *seq, bytes);
        rx.record(k.clone(), *seq, Some(bytes.clone())).unwrap();
        *got.entry(k.clone()).or_default() += 1;
    };
    for (i, k) in keys.iter().enumerate() {
        for d in demands.get(&i).into_iter().flatten() {
            if round.demand(d, t.contains_key(d)) {
                send(d, &mut round, rx);
            }
        }
        if !round.sent_early(k) {
            send(k, &mut round, rx);
        }
    }
    let digest = round.digest.buckets().to_vec();
    let sent = round.sent;
    let (_, verdict, _) = rx.end(sent.records, digest).unwrap();
    (sent, verdict, got, round)
}

proptest::proptest! {
    /// Demands for keys not sent yet, already sent (in flight), asked twice, or never listed:
    /// every listed key still reaches the destination exactly once and the digests match.
    #[test]
    fn every_key_is_sent_once_whatever_the_destination_demands(
        n in 1u32..200,
        asks in proptest::collection::vec((0usize..200, 0u32..260), 0..80),
    ) {
        let t = table(n + 60);
        let keys: Vec<SessionKey> = (0..n).map(key).collect();
        let mut demands: BTreeMap<usize, Vec<SessionKey>> = BTreeMap::new();
        for (at, k) in asks {
            // Keys n..n+60 are held but not listed (a session the source got after its
            // manifest); keys above n+60 it never held.
            demands.entry(at % n as usize).or_default().push(key(k));
        }
        let mut rx = CopyReceiver::new(1000);
        rx.taken(taken(0), keys.len());
        let (sent, verdict, got, round) = stream_with_demands(&t, &keys, &demands, &mut rx);
        for k in &keys {
            proptest::prop_assert_eq!(got.get(k).copied(), Some(1), "key {:?}", k);
        }
        proptest::prop_assert!(verdict.digest_match, "{:?}", verdict);
        // Only listed keys were asked for here, so only they went (once each).
        let unlisted = got.keys().filter(|k| !keys.contains(k)).count() as u64;
        proptest::prop_assert_eq!(sent.records, n as u64 + unlisted);
        proptest::prop_assert!(round.early() <= got.len());
    }
}

#[test]
fn a_demand_for_a_key_already_on_its_way_is_not_served_again() {
    let mut round = Outgoing::new(false);
    round.record(&key(1), 1, b"x");
    assert!(
        !round.demand(&key(1), true),
        "key 1 was sent in order already"
    );
    assert!(round.demand(&key(2), true), "key 2 goes early");
    assert!(round.sent_early(&key(2)));
    assert!(!round.demand(&key(2), true), "asked twice, sent once");
    assert!(
        !round.demand(&key(3), false),
        "a key the round cannot send stays put"
    );
    assert_eq!(round.demands_ignored, 3);
}

#[test]
fn the_receiver_hands_over_a_batch_at_its_byte_bound_too() {
    let mut rx = CopyReceiver::new(100).with_batch_bytes(20);
    rx.taken(taken(0), 3);
    let body = Bytes::from(vec![7u8; 8]);
    // 4-byte keys: 12 bytes, then 24 (at the bound: handed over), then a fresh batch.
    assert_eq!(rx.record(key(1), 1, Some(body.clone())), Ok(None));
    let batch = rx.record(key(2), 1, Some(body.clone())).unwrap();
    assert_eq!(batch.map(|b| b.len()), Some(2));
    assert_eq!(rx.record(key(3), 1, Some(body)), Ok(None));
}

#[test]
fn the_first_round_streams_in_the_ranked_order_with_unlisted_keys_last() {
    let (mut tx, _) = CopySender::new(0, None);
    tx.applied().unwrap();
    tx.manifest(vec![key(1), key(2), key(3)]).unwrap();
    assert!(tx.order(vec![key(1)]).is_err(), "not a permutation");
    tx.order(vec![key(3), key(1), key(2)]).unwrap();
    let answer = ManifestAnswer {
        unlisted: vec![hex::encode(key(9))],
        unlisted_seq: 4,
        ..ManifestAnswer::default()
    };
    tx.ready(answer).unwrap();
    let Ok(SenderStep::Stream { keys, .. }) = tx.applied() else {
        panic!("stream next")
    };
    assert_eq!(keys, vec![key(3), key(1), key(2), key(9)]);
    assert!(tx.order(vec![key(1), key(2), key(3)]).is_err(), "too late");
}
