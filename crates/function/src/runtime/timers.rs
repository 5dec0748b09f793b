//! The timer index of an [`Instance`](super::Instance): whose timer fires next.
//!
//! A lazy min-heap of (deadline, key) entries. Arming a session pushes its new deadline and
//! leaves the entry of the old one where it is; an entry counts only while it matches the
//! session's current deadline (the session table holds the truth, asked through the closure
//! [`TimerQueue::next_due`] takes) and the session was not disarmed after it was armed. An arm
//! costs one heap push, O(1) on average because a new deadline mostly lies behind the older
//! ones, where the B-tree of (deadline, key) this replaces paid a removal and an insertion that
//! compared session keys: a tenth of a million-record copy's CPU, and two tree walks on every
//! signal of a function whose deadline moves with each signal (the vMME's implicit detach).
//!
//! Stale entries are bounded: once the heap holds more than twice the entries it held after
//! its last rebuild (and at least [`COMPACT_MIN`]), the owner rebuilds it from the armed
//! sessions ([`TimerQueue::compact`]), so the heap stays within a constant factor of the armed
//! sessions and the rebuilds cost O(1) per arm, amortized.
//!
//! What fires, and in which order, is exactly what the B-tree gave: every armed session whose
//! deadline has come, in (deadline, key) order. Equal entries (a session armed at a deadline,
//! moved away, and armed at it again) fire once: the owner moves the deadline of a session
//! that fired, or disarms it ([`TimerQueue::disarm`]: a stuck timer), so the second is stale.

use crate::SessionKey;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

/// The heap is not rebuilt below this many entries.
pub const COMPACT_MIN: usize = 4096;

/// A lazy (deadline, key) min-heap. See the module docs.
#[derive(Debug)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(u64, SessionKey)>>,
    /// Sessions whose timer was taken away ([`TimerQueue::disarm`]) without a new deadline:
    /// their entries no longer count. Arming or forgetting a session takes it out.
    disarmed: HashSet<SessionKey, handoff_state::SeededState>,
    /// Heap length past which [`TimerQueue::needs_compaction`] says rebuild.
    compact_above: usize,
    /// The bound's floor ([`COMPACT_MIN`]; smaller in tests, so that they rebuild).
    compact_min: usize,
}

impl Default for TimerQueue {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            disarmed: HashSet::default(),
            compact_above: COMPACT_MIN,
            compact_min: COMPACT_MIN,
        }
    }
}

impl TimerQueue {
    /// A queue whose bound never drops below `min` entries (tests use a small one).
    pub fn with_compact_min(min: usize) -> Self {
        Self {
            compact_above: min,
            compact_min: min,
            ..Self::default()
        }
    }

    /// `key`'s deadline goes from `old` to `new` (`None`: no timer). Equal deadlines change
    /// nothing, so a disarmed session stays disarmed until its deadline moves.
    pub fn arm(&mut self, key: &SessionKey, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if !self.disarmed.is_empty() {
            self.disarmed.remove(key);
        }
        if let Some(d) = new {
            self.heap.push(Reverse((d, key.clone())));
        }
    }

    /// Takes `key`'s timer away until its deadline next changes.
    pub fn disarm(&mut self, key: &SessionKey) {
        self.disarmed.insert(key.clone());
    }

    /// The session `key` is gone: nothing of it is kept (its entries no longer match).
    pub fn forget(&mut self, key: &[u8]) {
        if !self.disarmed.is_empty() {
            self.disarmed.remove(key);
        }
    }

    /// Takes the next armed timer whose deadline is at or before `now`, in (deadline, key)
    /// order: `deadline_of` gives a session's current deadline (`None`: no session or no
    /// timer). Stale entries met on the way are dropped.
    pub fn next_due(
        &mut self,
        now: u64,
        deadline_of: impl Fn(&[u8]) -> Option<u64>,
    ) -> Option<(u64, SessionKey)> {
        loop {
            let Reverse((deadline, _)) = self.heap.peek()?;
            if *deadline > now {
                return None;
            }
            let Reverse((deadline, key)) = self.heap.pop()?;
            if self.disarmed.contains(&key) || deadline_of(&key) != Some(deadline) {
                continue;
            }
            return Some((deadline, key));
        }
    }

    /// Whether the heap has grown past its bound and should be rebuilt ([`TimerQueue::compact`]).
    pub fn needs_compaction(&self) -> bool {
        self.heap.len() > self.compact_above
    }

    /// Once [`TimerQueue::needs_compaction`]: whether to rebuild the heap, given that at most
    /// `sessions` timers are armed. Yes when the heap holds more than twice that (and more
    /// than [`COMPACT_MIN`]); otherwise its entries are mostly live (a table filling up) and the
    /// bound moves up to twice `sessions`, so a growing table is not scanned again and again.
    pub fn must_compact(&mut self, sessions: usize) -> bool {
        let bound = (2 * sessions).max(self.compact_min);
        if self.heap.len() > bound {
            return true;
        }
        self.compact_above = bound;
        false
    }

    /// Makes room for `additional` more timers (a move's destination learning how many
    /// records are coming).
    pub fn reserve(&mut self, additional: usize) {
        self.heap.reserve(additional);
    }

    /// Rebuilds the heap from `armed`: every session with a timer, at its current deadline
    /// (the disarmed ones among them are left out).
    pub fn compact(&mut self, armed: impl IntoIterator<Item = (u64, SessionKey)>) {
        let entries: Vec<_> = armed
            .into_iter()
            .filter(|(_, k)| !self.disarmed.contains(k))
            .map(Reverse)
            .collect();
        self.heap = BinaryHeap::from(entries);
        self.compact_above = (2 * self.heap.len()).max(self.compact_min);
    }

    /// The armed timers, in (deadline, key) order: the entries that still count, given each
    /// session's current deadline (for checks: it walks the whole heap).
    pub fn armed(&self, deadline_of: impl Fn(&[u8]) -> Option<u64>) -> Vec<(u64, SessionKey)> {
        let mut armed: Vec<_> = self
            .heap
            .iter()
            .map(|Reverse(e)| e)
            .filter(|(d, k)| !self.disarmed.contains(k) && deadline_of(k) == Some(*d))
            .cloned()
            .collect();
        armed.sort_unstable();
        armed.dedup();
        armed
    }

    /// Entries in the heap, stale ones included (for tests and bounds).
    pub fn entries(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    /// What a session's timer does when it fires.
    #[derive(Clone, Copy, Debug)]
    enum OnFire {
        /// Moves its deadline `0` µs past the tick (0: stays due: a stuck timer).
        Later(u64),
        /// Leaves its deadline where it is (due: stuck).
        Keep,
        /// Clears its timer.
        Clear,
        /// Deletes the session.
        Delete,
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A signal sets the session's deadline (`None`: no timer).
        Set(u8, Option<u64>),
        Delete(u8),
        /// A move hands the session over: its timer is taken away.
        HandOver(u8),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0u8..12;
        let deadline = prop_oneof![4 => (0u64..200).prop_map(Some), 1 => Just(None)];
        prop_oneof![
            6 => (key.clone(), deadline).prop_map(|(k, d)| Op::Set(k, d)),
            1 => key.clone().prop_map(Op::Delete),
            1 => key.prop_map(Op::HandOver),
            2 => (0u64..220).prop_map(Op::Tick),
        ]
    }

    fn on_fire(key: u8, now: u64) -> OnFire {
        match (key as u64 + now) % 5 {
            0 => OnFire::Keep,
            1 => OnFire::Clear,
            2 => OnFire::Delete,
            3 => OnFire::Later(0),
            _ => OnFire::Later(1 + (key as u64 * 7 + now) % 50),
        }
    }

    fn k(key: u8) -> SessionKey {
        SessionKey::from(vec![b'k', key])
    }

    /// What a tick fired, in order, and how many timers it found stuck.
    type Fired = (Vec<(u64, SessionKey)>, u64);

    /// What both timer indexes below are driven through: sessions set and deleted, and what a
    /// fired timer does to its session.
    trait Sessions {
        fn set(&mut self, key: &SessionKey, deadline: Option<u64>);
        fn delete(&mut self, key: &SessionKey);
        fn fire(&mut self, key: &SessionKey, now: u64) {
            match on_fire(key[1], now) {
                OnFire::Keep => {}
                OnFire::Later(by) => self.set(key, Some(now + by)),
                OnFire::Clear => self.set(key, None),
                OnFire::Delete => self.delete(key),
            }
        }
    }

    /// The B-tree index the queue replaces, as the instance drove it.
    #[derive(Default)]
    struct Model {
        table: HashMap<SessionKey, Option<u64>>,
        timers: BTreeSet<(u64, SessionKey)>,
    }

    impl Sessions for Model {
        fn set(&mut self, key: &SessionKey, new: Option<u64>) {
            let old = self.table.insert(key.clone(), new).flatten();
            self.rearm(key, old, new);
        }
        fn delete(&mut self, key: &SessionKey) {
            if let Some(old) = self.table.remove(key) {
                self.rearm(key, old, None);
            }
        }
    }

    impl Model {
        fn rearm(&mut self, key: &SessionKey, old: Option<u64>, new: Option<u64>) {
            if old == new {
                return;
            }
            if let Some(d) = old {
                self.timers.remove(&(d, key.clone()));
            }
            if let Some(d) = new {
                self.timers.insert((d, key.clone()));
            }
        }
        fn hand_over(&mut self, key: &SessionKey) {
            if let Some(Some(d)) = self.table.get(key) {
                self.timers.remove(&(*d, key.clone()));
            }
        }
        fn tick(&mut self, now: u64) -> Fired {
            let mut fired = (Vec::new(), 0);
            while let Some((d, key)) = self.timers.first().cloned() {
                if d > now {
                    break;
                }
                fired.0.push((d, key.clone()));
                self.fire(&key, now);
                if let Some(Some(d)) = self.table.get(&key).copied() {
                    if d <= now && self.timers.remove(&(d, key.clone())) {
                        fired.1 += 1;
                    }
                }
            }
            fired
        }
    }

    /// The queue driven the way the instance drives it.
    struct Queue {
        table: HashMap<SessionKey, Option<u64>>,
        timers: TimerQueue,
        peak: usize,
    }

    impl Sessions for Queue {
        fn set(&mut self, key: &SessionKey, new: Option<u64>) {
            let old = self.table.insert(key.clone(), new).flatten();
            self.timers.arm(key, old, new);
            if self.timers.needs_compaction() && self.timers.must_compact(self.table.len()) {
                let armed: Vec<_> = self
                    .table
                    .iter()
                    .filter_map(|(k, d)| d.map(|d| (d, k.clone())))
                    .collect();
                self.timers.compact(armed);
            }
            self.peak = self.peak.max(self.timers.entries());
        }
        fn delete(&mut self, key: &SessionKey) {
            if let Some(old) = self.table.remove(key) {
                self.timers.arm(key, old, None);
            }
            self.timers.forget(key);
        }
    }

    impl Queue {
        fn new(compact_min: usize) -> Self {
            Self {
                table: HashMap::new(),
                timers: TimerQueue::with_compact_min(compact_min),
                peak: 0,
            }
        }
        fn hand_over(&mut self, key: &SessionKey) {
            self.timers.disarm(key);
        }
        fn tick(&mut self, now: u64) -> Fired {
            let mut fired = (Vec::new(), 0);
            loop {
                let table = &self.table;
                let Some((d, key)) = self.timers.next_due(now, |k| table.get(k).copied()?) else {
                    break;
                };
                fired.0.push((d, key.clone()));
                self.fire(&key, now);
                if let Some(Some(d)) = self.table.get(&key).copied() {
                    if d <= now {
                        self.timers.disarm(&key);
                        fired.1 += 1;
                    }
                }
            }
            fired
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every tick fires the same timers, in the same order, with the same stuck count, as
        /// the B-tree index, across rebuilds (a floor of 8 entries makes them frequent); the
        /// heap stays within twice the sessions (12 keys) however many arms the run makes.
        #[test]
        fn fires_exactly_what_the_btree_fired(ops in proptest::collection::vec(op(), 0..400)) {
            let mut model = Model::default();
            let mut queue = Queue::new(8);
            for op in ops {
                match op {
                    Op::Set(key, d) => {
                        model.set(&k(key), d);
                        queue.set(&k(key), d);
                    }
                    Op::Delete(key) => {
                        model.delete(&k(key));
                        queue.delete(&k(key));
                    }
                    Op::HandOver(key) => {
                        model.hand_over(&k(key));
                        queue.hand_over(&k(key));
                    }
                    Op::Tick(now) => prop_assert_eq!(model.tick(now), queue.tick(now)),
                }
            }
            prop_assert_eq!(model.tick(10_000), queue.tick(10_000));
            prop_assert!(queue.peak <= 2 * 12 + 1, "peak {}", queue.peak);
        }
    }

    /// Many rearms of few sessions: the heap is rebuilt, never larger than its bound.
    #[test]
    fn stale_entries_are_bounded() {
        let mut q = Queue::new(COMPACT_MIN);
        for i in 0..100_000u64 {
            q.set(&k((i % 10) as u8), Some(i));
        }
        assert!(q.peak <= COMPACT_MIN + 1, "peak {}", q.peak);
        assert!(q.timers.entries() <= COMPACT_MIN + 1);
        let fired = q.tick(1_000_000);
        let keys: Vec<_> = fired.0.iter().map(|(_, k)| k[1]).collect();
        assert_eq!(keys, (0..10).collect::<Vec<u8>>());
    }
}
