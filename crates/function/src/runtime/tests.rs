//! The runtime against a toy function: a per-key counter with an expiry timer.
//!
//! Signal bytes: `[op, key]`; op 1 = create (counter 0), 2 = add one, 3 = delete, 4 = stateless
//! ping, 5 = no-op update (answers, changes nothing). The session is the counter (u32) and the
//! time of its last change; its timer fires 1000 µs after that and deletes it.

use super::*;
use crate::{BadRecord, MalformedSignal, Output, OutputClass, Ruleset};
use proptest::prelude::*;
use std::collections::HashMap;

struct Counter;

impl Function for Counter {
    type Session = (u32, u64);
    type Prepared = (u8, u8);
    fn name(&self) -> &'static str {
        "counter"
    }
    fn classify(&self, d: &[u8]) -> Result<Classified, MalformedSignal> {
        let (op, key) = self.prepare(d)?;
        let kind = match op {
            1 => SignalKind::Create,
            2 | 5 => SignalKind::Update,
            3 => SignalKind::Delete,
            _ => SignalKind::Stateless,
        };
        let key = if kind == SignalKind::Stateless {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&[key])
        };
        Ok(Classified { kind, key })
    }
    fn prepare(&self, d: &[u8]) -> Result<(u8, u8), MalformedSignal> {
        match d {
            [op @ 1..=5, key] => Ok((*op, *key)),
            [_, _] => Err(MalformedSignal::InvalidField { field: "op" }),
            _ => Err(MalformedSignal::Truncated {
                needed: 2,
                had: d.len(),
            }),
        }
    }
    fn process(
        &self,
        s: &mut Option<(u32, u64)>,
        p: &(u8, u8),
        stamp: Stamp,
        out: &mut Vec<Output>,
    ) {
        match p.0 {
            1 => *s = Some((0, stamp.now_us)),
            2 => {
                if let Some(v) = s.as_mut() {
                    *v = (v.0 + 1, stamp.now_us);
                }
            }
            3 => *s = None,
            _ => {}
        }
        let value = s.map_or(u32::MAX, |v| v.0);
        out.push(Output {
            msg_type: u16::from(p.0),
            bytes: Bytes::copy_from_slice(&value.to_be_bytes()),
        });
    }
    fn deadline_us(&self, s: &(u32, u64)) -> Option<u64> {
        Some(s.1 + 1000)
    }
    fn on_timer(&self, s: &mut Option<(u32, u64)>, _stamp: Stamp, out: &mut Vec<Output>) {
        *s = None;
        out.push(Output {
            msg_type: 99,
            bytes: Bytes::new(),
        });
    }
    fn encode_session(&self, s: &(u32, u64), buf: &mut Vec<u8>) {
        buf.extend_from_slice(&s.0.to_be_bytes());
        buf.extend_from_slice(&s.1.to_be_bytes());
    }
    fn decode_session(&self, b: &[u8]) -> Result<(u32, u64), BadRecord> {
        let b: &[u8; 12] = b.try_into().map_err(|_| BadRecord {
            reason: "length".into(),
        })?;
        let (v, t) = b.split_at(4);
        Ok((
            u32::from_be_bytes(v.try_into().unwrap_or_default()),
            u64::from_be_bytes(t.try_into().unwrap_or_default()),
        ))
    }
    fn default_ruleset(&self) -> Ruleset {
        Ruleset::default().with(4, OutputClass::Immediate, "ping")
    }
    fn msg_type_name(&self, _: u16) -> &'static str {
        "counter"
    }
}

fn apply(
    i: &mut Instance<Counter>,
    seq: u64,
    now_us: u64,
    d: [u8; 2],
) -> (Applied, Vec<ClassifiedOutput>) {
    let c = Function::classify(&Counter, &d).unwrap();
    let mut out = Vec::new();
    let a = i.apply_signal(Stamp { seq, now_us }, c.kind, &c.key, &d, &mut out);
    (a, out)
}

fn tick(i: &mut Instance<Counter>, seq: u64, now_us: u64) {
    let mut out = Vec::new();
    i.apply_signal(
        Stamp { seq, now_us },
        SignalKind::Tick,
        &Bytes::new(),
        &[],
        &mut out,
    );
    assert!(out.is_empty(), "timer outputs have no client");
}

#[test]
fn records_carry_the_seq_of_the_last_signal_applied() {
    let mut i = Instance::new(Arc::new(Counter));
    apply(&mut i, 1, 0, [1, 7]);
    apply(&mut i, 2, 0, [2, 7]);
    let (_, out) = apply(&mut i, 3, 0, [2, 7]);
    assert_eq!(out[0].output.bytes.as_ref(), &2u32.to_be_bytes());
    assert_eq!(out[0].class, OutputClass::Gated);
    let rec = i.table.get(&[7]).unwrap();
    assert_eq!((rec.seq, rec.deadline_us), (3, 1000));
    apply(&mut i, 4, 0, [3, 7]);
    assert!(i.table.is_empty());
}

#[test]
fn a_seq_at_or_below_the_last_applied_is_ignored() {
    let mut i = Instance::new(Arc::new(Counter));
    apply(&mut i, 5, 0, [1, 1]);
    let (a, out) = apply(&mut i, 5, 0, [2, 1]);
    assert_eq!(a, Applied::StaleSeq);
    assert!(out.is_empty());
    let (a, _) = apply(&mut i, 4, 0, [2, 1]);
    assert_eq!(a, Applied::StaleSeq);
    assert_eq!(i.stats.stale, 2);
    assert_eq!(i.table.get(&[1]).unwrap().bytes[..4], 0u32.to_be_bytes());
}

#[test]
fn stateless_signals_see_no_session_and_use_the_ruleset() {
    let mut i = Instance::new(Arc::new(Counter));
    apply(&mut i, 1, 0, [1, 1]);
    let (_, out) = apply(&mut i, 2, 0, [4, 1]);
    assert_eq!(out[0].output.bytes.as_ref(), &u32::MAX.to_be_bytes());
    assert_eq!(out[0].class, OutputClass::Immediate);
    i.ruleset.replace(Ruleset::default());
    let (_, out) = apply(&mut i, 3, 0, [4, 1]);
    assert_eq!(
        out[0].class,
        OutputClass::Gated,
        "a replaced ruleset applies to the next output"
    );
}

#[test]
fn ticks_fire_due_timers_only_and_take_the_ticks_seq() {
    let mut i = Instance::new(Arc::new(Counter));
    apply(&mut i, 1, 0, [1, 1]);
    apply(&mut i, 2, 500, [1, 2]);
    tick(&mut i, 3, 999);
    assert_eq!(i.table.len(), 2);
    tick(&mut i, 4, 1000);
    assert!(i.table.get(&[1]).is_none(), "deadline 1000 reached");
    assert!(i.table.get(&[2]).is_some());
    // An update moves the deadline; the old one must not fire.
    apply(&mut i, 5, 1400, [2, 2]);
    tick(&mut i, 6, 1600);
    assert_eq!(i.table.get(&[2]).unwrap().seq, 5);
    tick(&mut i, 7, 2400);
    assert!(i.table.is_empty());
    assert_eq!(i.stats.timers_fired, 2);
    assert_eq!(i.stats.timer_outputs, 2);
    assert!(i
        .timers
        .armed(|k| i.table.with(k, |r| r.deadline_us))
        .is_empty());
}

/// Updates that move the deadlines of few sessions again and again leave stale timer entries;
/// the instance rebuilds its timer index before they pass the bound, and each session's timer
/// still fires once, at its last deadline.
#[test]
fn moved_deadlines_leave_a_bounded_timer_index_that_fires_each_session_once() {
    let mut i = Instance::new(Arc::new(Counter));
    for key in 0..10u8 {
        apply(&mut i, u64::from(key) + 1, 0, [1, key]);
    }
    let updates = 10 * timers::COMPACT_MIN as u64;
    for n in 0..updates {
        apply(&mut i, 11 + n, n, [2, (n % 10) as u8]);
        assert!(i.timers.entries() <= timers::COMPACT_MIN + 1);
    }
    // Nothing is due before the last update's deadlines.
    tick(&mut i, 11 + updates, updates - 11 + 999);
    assert_eq!(i.stats.timers_fired, 0);
    assert_eq!(i.table.len(), 10);
    tick(&mut i, 12 + updates, updates + 1000);
    assert_eq!(i.stats.timers_fired, 10);
    assert!(i.table.is_empty());
}

#[test]
fn an_unchanged_session_updates_its_seq_but_not_its_change_frequency() {
    let mut i = Instance::new(Arc::new(Counter));
    apply(&mut i, 1, 0, [1, 1]);
    let before = i.table.get(&[1]).unwrap();
    apply(&mut i, 2, 0, [5, 1]);
    let after = i.table.get(&[1]).unwrap();
    assert_eq!(after.seq, 2);
    assert_eq!(after.freq, before.freq);
    assert_eq!(after.bytes, before.bytes);
}

#[test]
fn malformed_payloads_are_counted_not_applied() {
    let mut i = Instance::new(Arc::new(Counter));
    let mut out = Vec::new();
    let a = i.apply_signal(
        Stamp { seq: 1, now_us: 0 },
        SignalKind::Update,
        &Bytes::from_static(&[1]),
        &[9],
        &mut out,
    );
    assert_eq!(a, Applied::Malformed);
    assert_eq!(i.stats.malformed, 1);
    assert_eq!(i.stats.last_seq, 0);
}

proptest! {
    /// Two instances fed the same stamped signals end in byte-identical tables, with the timer
    /// index in step with the records.
    #[test]
    fn two_copies_fed_the_same_signals_agree(ops in proptest::collection::vec((0u8..6, 0u8..4, 0u64..300), 1..200)) {
        let mut a = Instance::new(Arc::new(Counter));
        let mut b = Instance::new(Arc::new(Counter));
        let mut now = 0;
        for (seq, (op, key, dt)) in ops.into_iter().enumerate() {
            now += dt;
            let seq = seq as u64 + 1;
            for i in [&mut a, &mut b] {
                if op == 0 {
                    tick(i, seq, now);
                } else {
                    apply(i, seq, now, [op, key]);
                }
            }
        }
        prop_assert_eq!(a.table.dump(), b.table.dump());
        let mut armed: Vec<(u64, SessionKey)> = (0..handoff_state::SHARDS)
            .flat_map(|s| a.table.shard_snapshot(s))
            .filter(|(_, r)| r.deadline_us != u64::MAX)
            .map(|(k, r)| (r.deadline_us, k))
            .collect();
        armed.sort_unstable();
        prop_assert_eq!(armed, a.timers.armed(|k| a.table.with(k, |r| r.deadline_us)));
    }
}

mod shadow {
    use super::*;
    use crate::runtime::shadow::{Shadow, ShadowLimits};
    use std::collections::HashSet;

    /// One step of a run: a signal `(op, key)` (op 0 = tick) after `dt` µs; then the source
    /// works through up to `src` of the signals queued for it (it may lag behind the
    /// destination, as the two copies run apart), then `copy` records are streamed from the
    /// source as it stands.
    pub(super) type Step = (u8, u8, u64, usize, usize);

    pub(super) fn steps(n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Step>> {
        // Copies are slow next to signals (mostly zero records per step), so timers fire and
        // sessions change many times while their records are still on the way.
        let copy = (0usize..10).prop_map(|c| c.saturating_sub(7));
        let src = (0usize..6).prop_map(|c| c.saturating_sub(2));
        proptest::collection::vec((0u8..6, 0u8..10, 0u64..600, copy, src), n)
    }

    /// Runs `before` on a source alone, then starts a move (manifest = the source's keys,
    /// copied in the order `order` gives), runs `during` with the steer's move-mode routing,
    /// streaming records as the steps say, and returns the destination's and a reference
    /// instance's tables (the reference applied every signal in seq order).
    pub(super) fn run_for_test(
        before: &[Step],
        during: &[Step],
        order: u64,
    ) -> (Shadow<Counter>, Instance<Counter>) {
        run(before, during, order)
    }

    fn run(before: &[Step], during: &[Step], order: u64) -> (Shadow<Counter>, Instance<Counter>) {
        run_resend(before, during, order, None).0
    }

    /// A digest-mismatch round (DESIGN.md "Verify"): the first record streamed arrives
    /// corrupted (a valid record of another value); once every first-round record has arrived
    /// and at least `after` steps ran, the destination drops the keys whose first byte has
    /// `mask`'s parity (and the corrupted one) and the source re-sends them once it has
    /// applied the seq the destination stood at.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Resend {
        after: usize,
        mask: u8,
    }

    /// What a resend round did: whether it ran, and whether the corrupted key was excluded
    /// (claimed by a create routed to the destination, so its state is the destination's).
    #[derive(Debug, Default)]
    pub(super) struct ResendOutcome {
        ran: bool,
        corrupted_excluded: bool,
    }

    #[allow(clippy::type_complexity)]
    fn run_resend(
        before: &[Step],
        during: &[Step],
        order: u64,
        resend: Option<Resend>,
    ) -> ((Shadow<Counter>, Instance<Counter>), ResendOutcome) {
        let mut reference = Instance::new(Arc::new(Counter));
        let mut source = Instance::new(Arc::new(Counter));
        let mut now = 0;
        let mut seq = 0;
        for &(op, key, dt, _, _) in before {
            now += dt;
            seq += 1;
            for i in [&mut reference, &mut source] {
                if op == 0 {
                    tick(i, seq, now)
                } else {
                    apply(i, seq, now, [op, key]);
                }
            }
        }
        let mut queue: Vec<SessionKey> = source.table.dump().into_iter().map(|r| r.key).collect();
        // A deterministic shuffle stands in for hot-first, random or key order.
        let n = queue.len().max(1);
        for i in 0..queue.len() {
            queue.swap(
                i,
                (order as usize)
                    .wrapping_mul(i + 3)
                    .wrapping_add(order as usize >> 7)
                    % n,
            );
        }
        let mut shadow = Shadow::new(
            Instance::new(Arc::new(Counter)),
            queue.clone(),
            ShadowLimits::default(),
        );
        let mut queue = std::collections::VecDeque::from(queue);
        let mut created: HashSet<SessionKey> = HashSet::new();
        let mut tombstones: HashMap<SessionKey, u64> = HashMap::new();
        let mut out = Vec::new();
        let manifest: Vec<SessionKey> = queue.iter().cloned().collect();
        let corrupt = std::cell::Cell::new(resend.is_some());
        let corrupted: std::cell::RefCell<Option<SessionKey>> = Default::default();
        let stream = |n: usize,
                      queue: &mut std::collections::VecDeque<SessionKey>,
                      source: &Instance<Counter>,
                      tombstones: &HashMap<SessionKey, u64>,
                      shadow: &mut Shadow<Counter>| {
            for _ in 0..n {
                let Some(key) = queue.pop_front() else { return };
                let mut out = Vec::new();
                match source.table.get(&key) {
                    Some(r) if corrupt.get() => {
                        corrupt.set(false);
                        *corrupted.borrow_mut() = Some(key.clone());
                        let mut bad = Vec::new();
                        let (v, t) = Counter.decode_session(&r.bytes).unwrap();
                        Counter.encode_session(&(v.wrapping_add(7), t), &mut bad);
                        shadow
                            .on_record(key, r.seq, Some(bad.into()), &mut out)
                            .unwrap()
                    }
                    Some(r) => shadow
                        .on_record(key, r.seq, Some(r.bytes), &mut out)
                        .unwrap(),
                    None => {
                        let seq = tombstones[&key];
                        shadow.on_record(key, seq, None, &mut out).unwrap()
                    }
                };
            }
        };
        // Signals routed to the source, applied when the source catches up.
        // (seq, now, op, key); op 0 = tick, op 255 = hand-over marker for a create routed to
        // the destination.
        let mut backlog: std::collections::VecDeque<(u64, u64, u8, u8)> = Default::default();
        let source_applied = std::cell::Cell::new(seq);
        let catch_up = |n: usize,
                        backlog: &mut std::collections::VecDeque<(u64, u64, u8, u8)>,
                        source: &mut Instance<Counter>,
                        tombstones: &mut HashMap<SessionKey, u64>| {
            for _ in 0..n {
                let Some((seq, now, op, key)) = backlog.pop_front() else {
                    return;
                };
                source_applied.set(seq);
                let present: Vec<SessionKey> =
                    source.table.dump().into_iter().map(|r| r.key).collect();
                match op {
                    0 => tick(source, seq, now),
                    255 => source.hand_over(&Bytes::copy_from_slice(&[key]), seq),
                    _ => {
                        apply(source, seq, now, [op, key]);
                    }
                }
                for k in present {
                    if source.table.get(&k).is_none() {
                        tombstones.insert(k, seq);
                    }
                }
            }
        };
        let mut outcome = ResendOutcome::default();
        // The re-sent keys, and the seq the source must have applied before reading them.
        let mut resend_queue: std::collections::VecDeque<SessionKey> = Default::default();
        let mut resend_at = u64::MAX;
        let round = |step: usize,
                     queue: &std::collections::VecDeque<SessionKey>,
                     corrupted: &Option<SessionKey>,
                     shadow: &mut Shadow<Counter>,
                     resend_queue: &mut std::collections::VecDeque<SessionKey>,
                     resend_at: &mut u64,
                     outcome: &mut ResendOutcome| {
            let Some(r) = resend else { return };
            if outcome.ran || step < r.after || !queue.is_empty() {
                return;
            }
            outcome.ran = true;
            let keys: Vec<SessionKey> = manifest
                .iter()
                .filter(|k| k[0] % 2 == r.mask % 2 || Some(*k) == corrupted.as_ref())
                .cloned()
                .collect();
            let done = shadow.reawait(&keys).unwrap();
            outcome.corrupted_excluded = corrupted
                .as_ref()
                .is_some_and(|c| done.excluded.contains(c));
            resend_queue.extend(keys.into_iter().filter(|k| !done.excluded.contains(k)));
            *resend_at = done.at_seq;
        };
        for (step, &(op, key, dt, copy, src)) in during.iter().enumerate() {
            round(
                step,
                &queue,
                &corrupted.borrow(),
                &mut shadow,
                &mut resend_queue,
                &mut resend_at,
                &mut outcome,
            );
            now += dt;
            seq += 1;
            let stamp = Stamp { seq, now_us: now };
            let d = [op, key];
            if op == 0 {
                tick(&mut reference, seq, now);
                backlog.push_back((seq, now, 0, 0));
                shadow
                    .on_signal(stamp, SignalKind::Tick, &Bytes::new(), &[], &mut out)
                    .unwrap();
            } else {
                apply(&mut reference, seq, now, d);
                let c = Function::classify(&Counter, &d).unwrap();
                // The steer's move-mode routing.
                let (to_source, to_dest) = match c.kind {
                    SignalKind::Create => {
                        created.insert(c.key.clone());
                        (false, true)
                    }
                    SignalKind::Stateless => (true, false),
                    _ if created.contains(&c.key) => (false, true),
                    _ => (true, true),
                };
                if to_source {
                    backlog.push_back((seq, now, op, key));
                } else if c.kind == SignalKind::Create {
                    // The steer tells the source the session is handed over at this seq.
                    backlog.push_back((seq, now, 255, key));
                }
                if to_dest {
                    if !to_source && c.kind == SignalKind::Create {
                        shadow.claim(&c.key);
                    }
                    shadow
                        .on_signal(stamp, c.kind, &c.key, &d, &mut out)
                        .unwrap();
                }
            }
            catch_up(src, &mut backlog, &mut source, &mut tombstones);
            stream(copy, &mut queue, &source, &tombstones, &mut shadow);
            if source_applied.get() >= resend_at {
                stream(copy, &mut resend_queue, &source, &tombstones, &mut shadow);
            }
        }
        let pending = backlog.len();
        catch_up(pending, &mut backlog, &mut source, &mut tombstones);
        let rest = queue.len();
        stream(rest, &mut queue, &source, &tombstones, &mut shadow);
        round(
            usize::MAX,
            &queue,
            &corrupted.borrow(),
            &mut shadow,
            &mut resend_queue,
            &mut resend_at,
            &mut outcome,
        );
        let rest = resend_queue.len();
        stream(rest, &mut resend_queue, &source, &tombstones, &mut shadow);
        ((shadow, reference), outcome)
    }

    proptest! {
        /// The heart of the move: whatever the interleaving of copied records with signals, the
        /// copy order and the timers firing meanwhile, the destination ends with exactly the
        /// sessions (bytes and seqs) of an instance that applied every signal in seq order.
        #[test]
        fn destination_equals_the_reference(before in steps(0..60), during in steps(0..150), order in any::<u64>()) {
            let (shadow, reference) = run(&before, &during, order);
            prop_assert!(shadow.is_settled(), "{:?}", shadow.stats());
            prop_assert_eq!(shadow.instance().table.dump(), reference.table.dump());
            prop_assert_eq!(shadow.stats().unexpected_records, 0);
        }

        /// A digest mismatch repaired by re-sending only some keys: a corrupted record, then
        /// the keys of some buckets dropped and re-sent while signals keep flowing, ends with
        /// the reference's sessions all the same. Keys a create routed to the destination has
        /// claimed are never replaced by the source's (the destination owns them).
        #[test]
        fn a_resend_round_repairs_a_corrupted_record(
            before in steps(1..60),
            during in steps(0..150),
            order in any::<u64>(),
            after in 0usize..150,
            mask in any::<u8>(),
        ) {
            let ((shadow, reference), outcome) =
                run_resend(&before, &during, order, Some(Resend { after, mask }));
            prop_assert!(outcome.ran);
            prop_assert!(shadow.is_settled(), "{:?}", shadow.stats());
            prop_assert_eq!(shadow.stats().unexpected_records, 0);
            if !outcome.corrupted_excluded {
                prop_assert_eq!(shadow.instance().table.dump(), reference.table.dump());
            }
        }
    }

    #[test]
    fn a_resend_round_after_the_copy_replaces_only_the_corrupted_record() {
        // One session, corrupted in the first round; the round runs after the last signal and
        // its mask covers no key but the corrupted one.
        let before = [(1, 2, 0, 0, 0), (2, 2, 5, 0, 0)];
        let during = [(2, 2, 5, 1, 1), (2, 2, 5, 0, 1)];
        let ((shadow, reference), outcome) = run_resend(
            &before,
            &during,
            0,
            Some(Resend {
                after: usize::MAX,
                mask: 1,
            }),
        );
        assert!(outcome.ran && !outcome.corrupted_excluded);
        assert_eq!(shadow.instance().table.dump(), reference.table.dump());
        assert_eq!(shadow.stats().reawaited, 1);
    }

    #[test]
    fn updates_wait_for_their_record_and_a_record_including_one_skips_it() {
        let mut source = Instance::new(Arc::new(Counter));
        apply(&mut source, 1, 0, [1, 1]);
        let key = Bytes::from_static(&[1]);
        let mut shadow = Shadow::new(
            Instance::new(Arc::new(Counter)),
            [key.clone()],
            ShadowLimits::default(),
        );
        let mut out = Vec::new();
        // Seq 2 reaches the destination before the record: buffered.
        shadow
            .on_signal(
                Stamp { seq: 2, now_us: 0 },
                SignalKind::Update,
                &key,
                &[2, 1],
                &mut out,
            )
            .unwrap();
        assert_eq!(shadow.stats().buffered, 1);
        assert_eq!(shadow.stats().buffered_for_records, 1);
        assert!(!shadow.is_settled());
        apply(&mut source, 2, 0, [2, 1]);
        apply(&mut source, 3, 0, [2, 1]);
        // The record already includes seqs 2 and 3.
        let r = source.table.get(&key).unwrap();
        shadow
            .on_record(key.clone(), r.seq, Some(r.bytes.clone()), &mut out)
            .unwrap();
        assert_eq!(shadow.stats().discarded, 1);
        // Seq 3 arrives late from the steer: skipped, not applied twice.
        shadow
            .on_signal(
                Stamp { seq: 3, now_us: 0 },
                SignalKind::Update,
                &key,
                &[2, 1],
                &mut out,
            )
            .unwrap();
        assert_eq!(shadow.stats().skipped, 1);
        assert_eq!(shadow.instance().table.get(&key).unwrap().bytes, r.bytes);
        assert!(shadow.is_settled());
    }

    #[test]
    fn a_reawait_bumps_the_copy_epoch_only_when_it_drops_state_and_keeps_claimed_sessions() {
        let a = Bytes::from_static(&[1]);
        let b = Bytes::from_static(&[2]);
        let c = Bytes::from_static(&[3]);
        let mut source = Instance::new(Arc::new(Counter));
        apply(&mut source, 1, 0, [1, 1]);
        apply(&mut source, 2, 0, [1, 2]);
        let mut shadow = Shadow::new(
            Instance::new(Arc::new(Counter)),
            [a.clone(), b.clone(), c.clone()],
            ShadowLimits::default(),
        );
        let first = shadow.epoch();
        let mut out = Vec::new();
        let ra = source.table.get(&a).unwrap();
        shadow
            .on_record(a.clone(), ra.seq, Some(ra.bytes), &mut out)
            .unwrap();
        // b's record does not decode: b stays awaited.
        assert!(shadow
            .on_record(b.clone(), 2, Some(Bytes::from_static(b"x")), &mut out)
            .is_err());
        // Creates routed here claim a and b.
        shadow.claim(&a);
        shadow.claim(&b);
        // Sessions this copy owns, or still awaits, drop nothing: the epoch stays.
        let r = shadow.reawait(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            r.excluded,
            vec![a.clone()],
            "a is this copy's own; b still needs a record"
        );
        assert_eq!((r.epoch, shadow.epoch()), (first, first));
        // c's record arrives, then c is re-awaited: its state is dropped, the epoch moves on.
        shadow.on_record(c.clone(), 0, None, &mut out).unwrap();
        let r = shadow.reawait(std::slice::from_ref(&c)).unwrap();
        assert!(r.excluded.is_empty());
        assert_eq!((r.epoch, shadow.epoch()), (first + 1, first + 1));
        assert!(shadow.awaits(&b) && shadow.awaits(&c) && !shadow.awaits(&a));
    }

    #[test]
    fn a_returning_shadow_refuses_to_reawait() {
        let k = Bytes::from_static(&[1]);
        let mut s = Shadow::returning(
            Instance::new(Arc::new(Counter)),
            [k.clone()],
            ShadowLimits::default(),
        );
        assert!(s.reawait(&[k]).is_err());
    }

    #[test]
    fn signals_before_the_manifest_do_not_count_as_waiting_for_records() {
        let key = Bytes::from_static(&[1]);
        let other = Bytes::from_static(&[2]);
        let mut shadow = Shadow::pending(Instance::new(Arc::new(Counter)), ShadowLimits::default());
        let mut out = Vec::new();
        let update = |seq, k: &Bytes| (Stamp { seq, now_us: 0 }, [2, k[0]]);
        let (s1, d1) = update(1, &key);
        shadow
            .on_signal(s1, SignalKind::Update, &key, &d1, &mut out)
            .unwrap();
        assert_eq!(shadow.stats().buffered, 1);
        assert_eq!(shadow.stats().buffered_for_records, 0);
        // The manifest names `key` only; a later update of it waits for its record.
        shadow.set_manifest([key.clone()].into_iter().collect(), &mut out);
        let (s2, d2) = update(2, &key);
        shadow
            .on_signal(s2, SignalKind::Update, &key, &d2, &mut out)
            .unwrap();
        let (s3, d3) = update(3, &other);
        shadow
            .on_signal(s3, SignalKind::Update, &other, &d3, &mut out)
            .unwrap();
        let st = shadow.stats();
        assert_eq!((st.buffered, st.buffered_for_records), (2, 1), "{st:?}");
        shadow.on_record(key, 0, None, &mut out).unwrap();
        let st = shadow.stats();
        assert_eq!((st.buffered, st.buffered_for_records), (0, 0), "{st:?}");
        assert_eq!(
            (st.buffered_peak, st.buffered_for_records_peak),
            (2, 1),
            "{st:?}"
        );
    }

    #[test]
    fn a_shadow_asks_once_for_each_session_it_buffers_for_and_times_the_wait() {
        let (a, b, c) = (
            Bytes::from_static(&[1]),
            Bytes::from_static(&[2]),
            Bytes::from_static(&[3]),
        );
        let mut shadow = Shadow::pending(Instance::new(Arc::new(Counter)), ShadowLimits::default());
        let mut out = Vec::new();
        let mut signal = |shadow: &mut Shadow<Counter>, seq: u64, now_us: u64, k: &Bytes| {
            shadow
                .on_signal(
                    Stamp { seq, now_us },
                    SignalKind::Update,
                    k,
                    &[2, k[0]],
                    &mut out,
                )
                .unwrap();
        };
        // Before the manifest nothing is asked for: the shadow cannot tell which keys it
        // lists. b, then a, wait.
        signal(&mut shadow, 1, 1_000, &b);
        signal(&mut shadow, 2, 2_000, &a);
        assert!(shadow.take_demands().is_empty());
        // The manifest lists a and b (not c): both are asked for, oldest signal first.
        shadow.set_manifest(
            [a.clone(), b.clone()].into_iter().collect(),
            &mut Vec::new(),
        );
        assert_eq!(shadow.take_demands(), vec![b.clone(), a.clone()]);
        // More updates for a: asked for once only; c is no manifest key: applied, not asked.
        signal(&mut shadow, 3, 3_000, &a);
        signal(&mut shadow, 4, 4_000, &c);
        assert!(shadow.take_demands().is_empty());
        assert_eq!(shadow.stats().demanded, 2);
        // a's record arrives at steer time 10 ms: its two signals waited 8 and 7 ms.
        signal(&mut shadow, 5, 10_000, &c);
        shadow
            .on_record(a.clone(), 0, None, &mut Vec::new())
            .unwrap();
        let st = shadow.stats();
        assert_eq!(st.waited, 2, "{st:?}");
        // (The histogram keeps 2 significant digits.)
        assert!((7_900..=8_100).contains(&st.buffered_wait_max_us), "{st:?}");
        assert!((6_900..=7_100).contains(&st.buffered_wait_p50_us), "{st:?}");
        // Once its record came, a buffered signal for a is no longer possible; b's record
        // ends the asking too.
        shadow.on_record(b, 0, None, &mut Vec::new()).unwrap();
        signal(&mut shadow, 6, 11_000, &a);
        assert!(shadow.take_demands().is_empty());
        assert!(shadow.is_settled());
    }

    #[test]
    fn the_buffer_limit_aborts_instead_of_growing() {
        let key = Bytes::from_static(&[1]);
        let limits = ShadowLimits {
            max_buffered: 2,
            max_ticks: 10,
        };
        let mut shadow = Shadow::new(Instance::new(Arc::new(Counter)), [key.clone()], limits);
        let mut out = Vec::new();
        for seq in 1..=2 {
            shadow
                .on_signal(
                    Stamp { seq, now_us: 0 },
                    SignalKind::Update,
                    &key,
                    &[2, 1],
                    &mut out,
                )
                .unwrap();
        }
        let err = shadow.on_signal(
            Stamp { seq: 3, now_us: 0 },
            SignalKind::Update,
            &key,
            &[2, 1],
            &mut out,
        );
        assert!(err.is_err());
    }
}

/// The copy opened before the manifest (DESIGN.md "Live move": no update waits for the
/// manifest): the destination asks for every session it buffers a signal for at once, and the
/// source answers from its table as it stands (a tombstone, seq 0, for a session it does not
/// hold), then lists its sessions later, streams the rest and answers later demands.
mod early {
    use super::shadow::Step;
    use super::*;
    use crate::runtime::shadow::{KeySet, Shadow, ShadowLimits};
    use std::collections::{HashSet, VecDeque};

    /// What the copy connection carries to the destination, in order.
    enum Item {
        Record(SessionKey, u64, Option<Bytes>),
        Manifest(KeySet),
    }

    /// When the copy's phases happen, in steps of the run.
    #[derive(Clone, Copy, Debug)]
    struct Phases {
        /// The connection opens (demands are answered from here on).
        open: usize,
        /// The source lists its sessions and sends the manifest.
        manifest: usize,
        /// The bulk stream starts (until then a demand for a session not held is answered
        /// with a tombstone, as while the source waits for the manifest's answer).
        stream: usize,
    }

    struct Source {
        inst: Instance<Counter>,
        /// Signals routed to the source, applied as it catches up: (seq, now, op, key); op 0 =
        /// tick, 255 = hand-over marker.
        backlog: VecDeque<(u64, u64, u8, u8)>,
        /// Deletion log: the seq that removed a session.
        deleted: HashMap<SessionKey, u64>,
        /// Keys sent (on demand or in the stream): each is sent once.
        sent: HashSet<SessionKey>,
        /// The bulk order not sent yet.
        queue: VecDeque<SessionKey>,
        listed: bool,
        streaming: bool,
    }

    impl Source {
        fn catch_up(&mut self, n: usize) {
            for _ in 0..n {
                let Some((seq, now, op, key)) = self.backlog.pop_front() else {
                    return;
                };
                let present: Vec<SessionKey> =
                    self.inst.table.dump().into_iter().map(|r| r.key).collect();
                match op {
                    0 => tick(&mut self.inst, seq, now),
                    255 => self.inst.hand_over(&Bytes::copy_from_slice(&[key]), seq),
                    _ => {
                        apply(&mut self.inst, seq, now, [op, key]);
                    }
                }
                for k in present {
                    if self.inst.table.get(&k).is_none() {
                        self.deleted.insert(k, seq);
                    }
                }
            }
        }

        /// The record (or tombstone) of `key` as the table has it now; `None` for a session
        /// neither held nor logged once the stream runs (a demand that keeps no place).
        fn read(&self, key: &SessionKey) -> Option<Item> {
            if let Some(r) = self.inst.table.get(key) {
                return Some(Item::Record(key.clone(), r.seq, Some(r.bytes)));
            }
            match self.deleted.get(key) {
                Some(&seq) => Some(Item::Record(key.clone(), seq, None)),
                None if !self.streaming => Some(Item::Record(key.clone(), 0, None)),
                None => None,
            }
        }

        fn serve(&mut self, demands: &mut VecDeque<SessionKey>, wire: &mut VecDeque<Item>) {
            while let Some(k) = demands.pop_front() {
                if self.sent.contains(&k) || (self.streaming && !self.queue.contains(&k)) {
                    continue;
                }
                if let Some(item) = self.read(&k) {
                    self.sent.insert(k.clone());
                    self.queue.retain(|q| q != &k);
                    wire.push_back(item);
                }
            }
        }

        fn list(&mut self, wire: &mut VecDeque<Item>) {
            self.listed = true;
            let keys: Vec<SessionKey> = self.inst.table.dump().into_iter().map(|r| r.key).collect();
            self.queue = keys
                .iter()
                .filter(|k| !self.sent.contains(*k))
                .cloned()
                .collect();
            wire.push_back(Item::Manifest(keys.into_iter().collect()));
        }

        fn stream(&mut self, n: usize, wire: &mut VecDeque<Item>) {
            if !self.streaming {
                return;
            }
            for _ in 0..n {
                let Some(k) = self.queue.pop_front() else {
                    return;
                };
                self.sent.insert(k.clone());
                wire.push_back(self.read(&k).expect("a listed session is held or logged"));
            }
        }
    }

    fn deliver(n: usize, wire: &mut VecDeque<Item>, shadow: &mut Shadow<Counter>) {
        for _ in 0..n {
            let Some(item) = wire.pop_front() else { return };
            let mut out = Vec::new();
            match item {
                Item::Record(k, seq, bytes) => {
                    shadow.on_record(k, seq, bytes, &mut out).unwrap();
                }
                Item::Manifest(keys) => shadow.set_manifest(keys, &mut out),
            }
        }
    }

    /// Runs `before` on the source alone, then a move whose copy opens, lists and streams at
    /// `phases`; the steer's move-mode routing as in the other runs. Returns the destination
    /// and a reference that applied every signal in seq order.
    fn run(
        before: &[Step],
        during: &[Step],
        phases: Phases,
    ) -> (Shadow<Counter>, Instance<Counter>) {
        let mut reference = Instance::new(Arc::new(Counter));
        let mut source = Source {
            inst: Instance::new(Arc::new(Counter)),
            backlog: VecDeque::new(),
            deleted: HashMap::new(),
            sent: HashSet::new(),
            queue: VecDeque::new(),
            listed: false,
            streaming: false,
        };
        let (mut now, mut seq) = (0, 0);
        for &(op, key, dt, _, _) in before {
            now += dt;
            seq += 1;
            for i in [&mut reference, &mut source.inst] {
                if op == 0 {
                    tick(i, seq, now)
                } else {
                    apply(i, seq, now, [op, key]);
                }
            }
        }
        let mut shadow = Shadow::pending(Instance::new(Arc::new(Counter)), ShadowLimits::default());
        let mut created: HashSet<SessionKey> = HashSet::new();
        let mut demands: VecDeque<SessionKey> = VecDeque::new();
        let mut wire: VecDeque<Item> = VecDeque::new();
        let mut open = false;
        let mut out = Vec::new();
        let phase = |step: usize,
                     open: &mut bool,
                     source: &mut Source,
                     shadow: &mut Shadow<Counter>,
                     wire: &mut VecDeque<Item>| {
            if step >= phases.open && !*open {
                *open = true;
                assert!(shadow.open_copy());
            }
            if step >= phases.manifest.max(phases.open) && !source.listed {
                source.list(wire);
            }
            if step >= phases.stream.max(phases.manifest).max(phases.open) {
                source.streaming = true;
            }
        };
        for (step, &(op, key, dt, copy, src)) in during.iter().enumerate() {
            phase(step, &mut open, &mut source, &mut shadow, &mut wire);
            now += dt;
            seq += 1;
            let stamp = Stamp { seq, now_us: now };
            let d = [op, key];
            if op == 0 {
                tick(&mut reference, seq, now);
                source.backlog.push_back((seq, now, 0, 0));
                shadow
                    .on_signal(stamp, SignalKind::Tick, &Bytes::new(), &[], &mut out)
                    .unwrap();
            } else {
                apply(&mut reference, seq, now, d);
                let c = Function::classify(&Counter, &d).unwrap();
                let (to_source, to_dest) = match c.kind {
                    SignalKind::Create => {
                        created.insert(c.key.clone());
                        (false, true)
                    }
                    SignalKind::Stateless => (true, false),
                    _ if created.contains(&c.key) => (false, true),
                    _ => (true, true),
                };
                if to_source {
                    source.backlog.push_back((seq, now, op, key));
                } else if c.kind == SignalKind::Create {
                    source.backlog.push_back((seq, now, 255, key));
                }
                if to_dest {
                    if !to_source && c.kind == SignalKind::Create {
                        shadow.claim(&c.key);
                    }
                    shadow
                        .on_signal(stamp, c.kind, &c.key, &d, &mut out)
                        .unwrap();
                }
            }
            source.catch_up(src);
            if open {
                demands.extend(shadow.take_demands());
                source.serve(&mut demands, &mut wire);
            }
            source.stream(copy, &mut wire);
            deliver(copy + 1, &mut wire, &mut shadow);
        }
        // The rest of the move: every phase happens, the source catches up, and the copy
        // runs to its end.
        phase(usize::MAX, &mut open, &mut source, &mut shadow, &mut wire);
        let pending = source.backlog.len();
        source.catch_up(pending);
        for _ in 0..10_000 {
            demands.extend(shadow.take_demands());
            source.serve(&mut demands, &mut wire);
            source.stream(1, &mut wire);
            deliver(1, &mut wire, &mut shadow);
            if wire.is_empty() && source.queue.is_empty() && demands.is_empty() {
                break;
            }
        }
        (shadow, reference)
    }

    fn phases() -> impl Strategy<Value = Phases> {
        (0usize..40, 0usize..120, 0usize..40).prop_map(|(open, manifest, stream)| Phases {
            open,
            manifest,
            stream: manifest + stream,
        })
    }

    proptest! {
        /// Records and tombstones that come on demand before the manifest, whatever their
        /// interleaving with signals, ticks, the manifest and the stream, leave the
        /// destination with exactly the reference's sessions.
        #[test]
        fn a_copy_answering_demands_before_its_manifest_ends_equal_to_the_reference(
            before in super::shadow::steps(0..60),
            during in super::shadow::steps(0..150),
            phases in phases(),
        ) {
            let (shadow, reference) = run(&before, &during, phases);
            prop_assert!(shadow.is_settled(), "{:?}", shadow.stats());
            prop_assert_eq!(shadow.instance().table.dump(), reference.table.dump());
        }
    }

    /// A re-attach before the manifest waits for one demand round trip: the record of the
    /// session the source holds arrives on demand, the create applies on it, and the manifest
    /// that lists the session later does not make the destination await it again.
    #[test]
    fn a_reattach_before_the_manifest_is_answered_by_its_record_alone() {
        let before = [(1, 3, 0, 0, 0), (2, 3, 5, 0, 0)];
        // Open at once, manifest much later; no bulk stream records per step.
        let during = [(1, 3, 5, 0, 1), (2, 3, 5, 0, 1), (2, 4, 5, 0, 1)];
        let phases = Phases {
            open: 0,
            manifest: 100,
            stream: 100,
        };
        let (shadow, reference) = run(&before, &during, phases);
        assert!(shadow.is_settled());
        assert_eq!(shadow.instance().table.dump(), reference.table.dump());
        let stats = shadow.stats();
        assert_eq!(
            stats.early_records, 2,
            "key 3 by its record, key 4 by a tombstone"
        );
        assert_eq!(stats.unexpected_records, 0);
        assert_eq!(
            stats.records, 2,
            "the manifest's listing of key 3 is not awaited again"
        );
    }

    /// Without an open copy, nothing is asked for before the manifest and a record there is
    /// unexpected (the old order of a copy: manifest first).
    #[test]
    fn a_record_before_the_manifest_of_a_copy_not_opened_is_unexpected() {
        let mut shadow = Shadow::pending(Instance::new(Arc::new(Counter)), ShadowLimits::default());
        let mut out = Vec::new();
        let key = Bytes::from_static(&[3]);
        shadow
            .on_signal(
                Stamp { seq: 1, now_us: 1 },
                SignalKind::Update,
                &key,
                &[2, 3],
                &mut out,
            )
            .unwrap();
        assert!(shadow.take_demands().is_empty());
        let got = shadow.on_record(key.clone(), 0, None, &mut out).unwrap();
        assert_eq!(got, crate::runtime::shadow::RecordOutcome::Unexpected);
        assert!(shadow.open_copy());
        assert_eq!(shadow.take_demands(), vec![key]);
    }
}

/// Found by the property below: a re-attach (create) of a session the source still holds,
/// routed to the destination, followed by a tick that expires the source's stale copy. Without
/// the hand-over the source streamed a tombstone newer than the create and the destination
/// discarded the create.
#[test]
fn r_reattach_then_source_timer_keeps_the_create() {
    let before = [(1, 5, 0, 0, 0)];
    let during = [
        (0, 0, 169, 0, 0),
        (1, 5, 6, 0, 0),
        (0, 0, 308, 0, 0),
        (0, 0, 517, 0, 0),
    ];
    let (shadow, reference) = shadow::run_for_test(&before, &during, 0);
    assert_eq!(shadow.instance().table.dump(), reference.table.dump());
}

/// A full copy repeated after a partial one (its answer lost, its records superseded): the
/// new manifest no longer lists a session the source deleted in between, which the shadow
/// still awaits from the first manifest. The shadow names it, so the copy can end its wait
/// with a tombstone; without that the move could never settle.
#[test]
fn a_repeated_full_manifest_names_the_awaited_sessions_it_no_longer_lists() {
    let mut h: Box<dyn Hosted> = Box::new(Hosting::new(Arc::new(Counter)));
    let mut out = Vec::new();
    let k = |b: u8| Bytes::copy_from_slice(&[b]);
    let record = |v: u32| {
        let mut buf = Vec::new();
        Function::encode_session(&Counter, &(v, 0), &mut buf);
        Some(Bytes::from(buf))
    };
    let first = h
        .take_manifest([k(1), k(2), k(3)].into_iter().collect(), &mut out)
        .unwrap();
    assert!(first.unlisted.is_empty());
    h.on_record(k(1), 5, record(7), &mut out).unwrap();
    // Session 2 is deleted at the source; the copy is repeated with a new manifest.
    apply_hosted(h.as_mut(), 6, [3, 2]);
    let again = h
        .take_manifest([k(1), k(3)].into_iter().collect(), &mut out)
        .unwrap();
    assert_eq!(again.unlisted, vec![k(2)]);
    assert_eq!(again.applied, 6);
    assert!(h.finish_shadow().is_err(), "2 is still awaited");
    h.on_record(k(2), again.applied, None, &mut out).unwrap();
    h.on_record(k(1), 5, record(7), &mut out).unwrap();
    h.on_record(k(3), 4, record(1), &mut out).unwrap();
    h.finish_shadow().expect("nothing awaited any more");
    assert!(h.table().get(&k(2)).is_none());
    assert_eq!(h.table().len(), 2);
}

fn apply_hosted(h: &mut dyn Hosted, seq: u64, d: [u8; 2]) {
    let c = Function::classify(&Counter, &d).unwrap();
    let mut out = Vec::new();
    h.apply(Stamp { seq, now_us: 0 }, c.kind, &c.key, &d, &mut out)
        .unwrap();
}

/// A signal the shadow cannot buffer (its buffer is full) is refused and counted: the
/// controller reads the count and aborts rather than cut over to a copy that lacks it.
#[test]
fn a_full_buffer_refuses_and_counts_the_signal() {
    let mut h: Box<dyn Hosted> = Box::new(Hosting::new(Arc::new(Counter)));
    let k = |b: u8| Bytes::copy_from_slice(&[b]);
    let limits = crate::runtime::shadow::ShadowLimits {
        max_buffered: 1,
        ..crate::runtime::shadow::ShadowLimits::default()
    };
    h.begin_shadow(Some(vec![k(1)]), limits).unwrap();
    let mut out = Vec::new();
    let d = [2, 1];
    h.apply(
        Stamp { seq: 1, now_us: 0 },
        SignalKind::Update,
        &k(1),
        &d,
        &mut out,
    )
    .unwrap();
    let second = h.apply(
        Stamp { seq: 2, now_us: 0 },
        SignalKind::Update,
        &k(1),
        &d,
        &mut out,
    );
    assert!(second.is_err());
    let s = h.shadow_stats().unwrap();
    assert_eq!((s.buffered, s.refused), (1, 1));
}

/// Regression (bug g): a hand-over marker that reaches a source already expecting the
/// session back (an abort's, lagging on its link) freezes the old copy, as on a serving
/// source: its timer must not fire on it before the record arrives.
#[test]
fn a_late_hand_over_marker_freezes_a_session_the_source_expects_back() {
    let mut h: Box<dyn Hosted> = Box::new(Hosting::new(Arc::new(Counter)));
    let k = Bytes::copy_from_slice(&[1]);
    apply_hosted(h.as_mut(), 1, [1, 1]);
    let held = h.table().get(&k).expect("created");
    h.expect_records(
        vec![k.clone()],
        crate::runtime::shadow::ShadowLimits::default(),
    )
    .unwrap();
    h.hand_over(&k, 2);
    // Well past the session's expiry (1000 µs after its last change).
    let mut out = Vec::new();
    h.apply(
        Stamp {
            seq: 3,
            now_us: 10_000,
        },
        SignalKind::Tick,
        &Bytes::new(),
        &[],
        &mut out,
    )
    .unwrap();
    let now = h
        .table()
        .get(&k)
        .expect("the frozen copy is kept as it was");
    assert_eq!((now.seq, now.bytes), (held.seq, held.bytes));
}
