//! The steer's routing decision for one instance: the pure core of move mode (DESIGN.md
//! "Live move", steps 2 and 6). No I/O; the service loop asks it where each stamped signal goes.
//!
//! ```text
//!            begin_move(seq)                cutover(C)
//!  Serving ─────────────────▶ Moving ──────────────────▶ CutOver{C} ──finish──▶ Serving (dest)
//!                               │ abort_begin()            abort_commit()
//!                               └──────────▶ Aborting{K} ─────────────────▶ Serving (source)
//! ```
//!
//! An abort is two steps so the sessions created on the destination during the move (`K`) can
//! go back without a pause: while `Aborting`, new creates go to the source and `K`'s signals
//! still go to the destination; the source is then told to expect `K` (it buffers their signals
//! until their records arrive), and `abort_commit` flips `K` to the source at a seq boundary.

use bytes::Bytes;
use handoff_function::SignalKind;
use std::collections::HashSet;

/// Where a signal goes and which copy's outputs reach the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The instance's current owner only (outside a move; the source during one).
    Source,
    /// The destination only; its outputs reach the client.
    Destination,
    /// Both copies: the source is authoritative, the destination's outputs are shadow outputs
    /// that never reach a client.
    Both,
    /// A create during a move: the destination processes it and answers; the source gets only
    /// a hand-over marker, freezing any session it holds under the key so the copy streams it
    /// as it was before the create.
    HandOver,
}

/// A route's phase, as reported in status and kept in the route file (the serialised names
/// are stable: route files written by earlier versions still parse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RoutePhase {
    /// No move: the instance's owner gets everything.
    #[serde(rename = "serving")]
    Serving,
    /// Move mode (step 2 to 5).
    #[serde(rename = "moving")]
    Moving,
    /// Flipped at a boundary; the destination owns the signals from it.
    #[serde(rename = "cut over")]
    CutOver,
    /// The first step of a two-step abort.
    #[serde(rename = "aborting")]
    Aborting,
    /// A stop-and-copy hold at the steer (status only: the route itself is serving).
    #[serde(rename = "held")]
    Held,
}

impl RoutePhase {
    /// The phase's stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Moving => "moving",
            Self::CutOver => "cut over",
            Self::Aborting => "aborting",
            Self::Held => "held",
        }
    }
}

impl std::fmt::Display for RoutePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a route refused a step (the move must abort or the command is refused).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The command does not fit the route's phase.
    #[error("route is {actual}, expected {expected}")]
    WrongPhase {
        /// The phase the command needs.
        expected: RoutePhase,
        /// The phase the route is in.
        actual: RoutePhase,
    },
    /// More sessions were created during the move than the steer may remember.
    #[error("more than {0} sessions created during the move")]
    TooManyCreated(usize),
    /// The cutover boundary is not above every seq already stamped.
    #[error("cutover boundary {boundary} is not above the last seq stamped ({last})")]
    BoundaryInPast {
        /// The boundary asked for.
        boundary: u64,
        /// The last seq stamped.
        last: u64,
    },
}

#[derive(Clone, Debug)]
enum Phase {
    Serving,
    Moving {
        created: HashSet<Bytes>,
        abort_safe: bool,
    },
    CutOver {
        boundary: u64,
    },
    Aborting {
        created: HashSet<Bytes>,
    },
}

/// The route of one instance.
#[derive(Clone, Debug)]
pub struct Route {
    phase: Phase,
    max_created: usize,
    move_started_at: u64,
}

impl Route {
    /// A route serving from the instance's current owner; a move may remember at most
    /// `max_created` sessions created during it.
    pub fn new(max_created: usize) -> Self {
        Self {
            phase: Phase::Serving,
            max_created,
            move_started_at: 0,
        }
    }

    fn phase_name(&self) -> RoutePhase {
        match self.phase {
            Phase::Serving => RoutePhase::Serving,
            Phase::Moving { .. } => RoutePhase::Moving,
            Phase::CutOver { .. } => RoutePhase::CutOver,
            Phase::Aborting { .. } => RoutePhase::Aborting,
        }
    }

    /// Enters move mode; `first_seq` is the first seq stamped under it (reported to the
    /// controller: replication must not start before it). In `abort_safe` mode creates and
    /// every update go to both copies, so an abort loses nothing without moving sessions back.
    pub fn begin_move(&mut self, first_seq: u64, abort_safe: bool) -> Result<(), RouteError> {
        match self.phase {
            Phase::Serving => {
                self.phase = Phase::Moving {
                    created: HashSet::new(),
                    abort_safe,
                };
                self.move_started_at = first_seq;
                Ok(())
            }
            _ => Err(RouteError::WrongPhase {
                expected: RoutePhase::Serving,
                actual: self.phase_name(),
            }),
        }
    }

    /// Where the signal stamped `seq` goes; records the sessions created during a move.
    pub fn decide(
        &mut self,
        seq: u64,
        kind: SignalKind,
        key: &Bytes,
    ) -> Result<Delivery, RouteError> {
        let delivery = self.preview(seq, kind, key);
        if delivery == Delivery::HandOver {
            if let Phase::Moving { created, .. } = &mut self.phase {
                if created.len() >= self.max_created && !created.contains(key) {
                    return Err(RouteError::TooManyCreated(self.max_created));
                }
                created.insert(key.clone());
            }
        }
        Ok(delivery)
    }

    /// Where the signal stamped `seq` would go, without recording anything (so the caller can
    /// reserve queue room first and then [`Route::decide`]).
    pub fn preview(&self, seq: u64, kind: SignalKind, key: &Bytes) -> Delivery {
        match &self.phase {
            Phase::Serving => Delivery::Source,
            Phase::CutOver { boundary } if seq >= *boundary => Delivery::Destination,
            Phase::CutOver { .. } => Delivery::Source,
            Phase::Aborting { created } => match kind {
                SignalKind::Tick => Delivery::Both,
                SignalKind::Stateless => Delivery::Source,
                _ if created.contains(key) => Delivery::Destination,
                _ => Delivery::Source,
            },
            Phase::Moving {
                created,
                abort_safe,
            } => match kind {
                SignalKind::Tick => Delivery::Both,
                SignalKind::Stateless => Delivery::Source,
                _ if *abort_safe => Delivery::Both,
                SignalKind::Create => Delivery::HandOver,
                _ if created.contains(key) => Delivery::Destination,
                _ => Delivery::Both,
            },
        }
    }

    /// Flips the route at `boundary`: signals stamped at or after it go to the destination only.
    /// `last_stamped` is the last seq already given out; the boundary must lie above it, so no
    /// signal is held back or re-routed.
    pub fn cutover(&mut self, boundary: u64, last_stamped: u64) -> Result<(), RouteError> {
        if !matches!(self.phase, Phase::Moving { .. }) {
            return Err(RouteError::WrongPhase {
                expected: RoutePhase::Moving,
                actual: self.phase_name(),
            });
        }
        if boundary <= last_stamped {
            return Err(RouteError::BoundaryInPast {
                boundary,
                last: last_stamped,
            });
        }
        self.phase = Phase::CutOver { boundary };
        Ok(())
    }

    /// Ends a move that was cut over: the destination is now the owner (`Source` from here on
    /// means it).
    pub fn finish(&mut self) -> Result<(), RouteError> {
        match self.phase {
            Phase::CutOver { .. } => {
                self.phase = Phase::Serving;
                Ok(())
            }
            _ => Err(RouteError::WrongPhase {
                expected: RoutePhase::CutOver,
                actual: self.phase_name(),
            }),
        }
    }

    /// Starts abandoning a move before cutover: from now on only the sessions created on the
    /// destination during the move (returned, sorted) go there; everything else goes to the
    /// source, creates included. Empty in abort-safe mode, where the source processed
    /// everything too. Repeating it while aborting returns the same keys.
    pub fn abort_begin(&mut self) -> Result<Vec<Bytes>, RouteError> {
        let created = match std::mem::replace(&mut self.phase, Phase::Serving) {
            Phase::Moving {
                created,
                abort_safe,
            } => {
                if abort_safe {
                    HashSet::new()
                } else {
                    created
                }
            }
            Phase::Aborting { created } => created,
            other => {
                self.phase = other;
                return Err(RouteError::WrongPhase {
                    expected: RoutePhase::Moving,
                    actual: self.phase_name(),
                });
            }
        };
        let mut keys: Vec<Bytes> = created.iter().cloned().collect();
        keys.sort();
        self.phase = Phase::Aborting { created };
        Ok(keys)
    }

    /// Ends an abort: every signal goes to the source again. The source must by now expect the
    /// returned sessions' records (it buffers their signals until they arrive).
    pub fn abort_commit(&mut self) -> Result<(), RouteError> {
        match self.phase {
            Phase::Aborting { .. } => {
                self.phase = Phase::Serving;
                Ok(())
            }
            _ => Err(RouteError::WrongPhase {
                expected: RoutePhase::Aborting,
                actual: self.phase_name(),
            }),
        }
    }

    /// Both abort steps at once: for a move with nothing to send back (abort-safe, or no
    /// session created yet). Returns the keys that would have had to go back.
    pub fn abort(&mut self) -> Result<Vec<Bytes>, RouteError> {
        let keys = self.abort_begin()?;
        self.abort_commit()?;
        Ok(keys)
    }

    /// The phase, for status reports and the route file.
    pub fn phase(&self) -> RoutePhase {
        self.phase_name()
    }

    /// Sessions created during the current move.
    pub fn created_during_move(&self) -> usize {
        match &self.phase {
            Phase::Moving { created, .. } | Phase::Aborting { created } => created.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: u8) -> Bytes {
        Bytes::copy_from_slice(&[k])
    }

    #[test]
    fn move_mode_sends_creates_ahead_and_duplicates_old_sessions() {
        let mut r = Route::new(10);
        assert_eq!(
            r.decide(1, SignalKind::Update, &key(1)).unwrap(),
            Delivery::Source
        );
        r.begin_move(2, false).unwrap();
        assert_eq!(
            r.decide(2, SignalKind::Update, &key(1)).unwrap(),
            Delivery::Both
        );
        assert_eq!(
            r.decide(3, SignalKind::Create, &key(2)).unwrap(),
            Delivery::HandOver
        );
        assert_eq!(
            r.decide(4, SignalKind::Update, &key(2)).unwrap(),
            Delivery::Destination
        );
        assert_eq!(
            r.decide(5, SignalKind::Delete, &key(2)).unwrap(),
            Delivery::Destination
        );
        // A re-attach of an old session: the destination gets it (and buffers it until the
        // old record arrives); from then on the session is the destination's.
        assert_eq!(
            r.decide(6, SignalKind::Create, &key(1)).unwrap(),
            Delivery::HandOver
        );
        assert_eq!(
            r.decide(7, SignalKind::Update, &key(1)).unwrap(),
            Delivery::Destination
        );
        assert_eq!(
            r.decide(8, SignalKind::Tick, &Bytes::new()).unwrap(),
            Delivery::Both
        );
        assert_eq!(
            r.decide(9, SignalKind::Stateless, &Bytes::new()).unwrap(),
            Delivery::Source
        );
    }

    #[test]
    fn cutover_is_a_flip_at_a_boundary_above_everything_stamped() {
        let mut r = Route::new(10);
        assert!(r.cutover(5, 4).is_err(), "no cutover outside a move");
        r.begin_move(1, false).unwrap();
        assert_eq!(
            r.cutover(4, 4),
            Err(RouteError::BoundaryInPast {
                boundary: 4,
                last: 4
            })
        );
        r.cutover(5, 4).unwrap();
        for (seq, kind) in [
            (5, SignalKind::Update),
            (6, SignalKind::Stateless),
            (7, SignalKind::Tick),
        ] {
            assert_eq!(r.decide(seq, kind, &key(1)).unwrap(), Delivery::Destination);
        }
        assert!(r.abort().is_err(), "no abort after cutover");
        r.finish().unwrap();
        assert_eq!(
            r.decide(8, SignalKind::Update, &key(1)).unwrap(),
            Delivery::Source
        );
    }

    #[test]
    fn abort_returns_the_sessions_to_move_back_unless_abort_safe() {
        let mut r = Route::new(10);
        r.begin_move(1, false).unwrap();
        r.decide(1, SignalKind::Create, &key(3)).unwrap();
        r.decide(2, SignalKind::Create, &key(1)).unwrap();
        assert_eq!(r.abort().unwrap(), vec![key(1), key(3)]);
        assert_eq!(
            r.decide(3, SignalKind::Update, &key(1)).unwrap(),
            Delivery::Source
        );

        r.begin_move(4, true).unwrap();
        assert_eq!(
            r.decide(4, SignalKind::Create, &key(5)).unwrap(),
            Delivery::Both
        );
        assert_eq!(
            r.decide(5, SignalKind::Update, &key(5)).unwrap(),
            Delivery::Both
        );
        assert_eq!(r.abort().unwrap(), Vec::<Bytes>::new());
    }

    #[test]
    fn a_two_step_abort_keeps_created_sessions_on_the_destination_until_commit() {
        let mut r = Route::new(10);
        r.begin_move(1, false).unwrap();
        r.decide(1, SignalKind::Create, &key(7)).unwrap();
        r.decide(2, SignalKind::Update, &key(1)).unwrap();
        assert_eq!(r.abort_begin().unwrap(), vec![key(7)]);
        assert_eq!(r.abort_begin().unwrap(), vec![key(7)], "repeatable");
        // Meanwhile: the created session still lives on the destination; new creates and old
        // sessions are the source's alone; ticks reach both.
        for (seq, kind, k, want) in [
            (3, SignalKind::Update, 7, Delivery::Destination),
            (4, SignalKind::Create, 7, Delivery::Destination),
            (5, SignalKind::Create, 8, Delivery::Source),
            (6, SignalKind::Update, 8, Delivery::Source),
            (7, SignalKind::Update, 1, Delivery::Source),
            (8, SignalKind::Tick, 0, Delivery::Both),
            (9, SignalKind::Stateless, 7, Delivery::Source),
        ] {
            assert_eq!(r.decide(seq, kind, &key(k)).unwrap(), want, "seq {seq}");
        }
        assert_eq!(r.created_during_move(), 1, "no key added while aborting");
        assert!(r.cutover(20, 9).is_err(), "no cutover while aborting");
        r.abort_commit().unwrap();
        assert_eq!(
            r.decide(10, SignalKind::Update, &key(7)).unwrap(),
            Delivery::Source
        );
        assert!(r.abort_commit().is_err());
    }

    #[test]
    fn the_created_set_is_bounded() {
        let mut r = Route::new(2);
        r.begin_move(1, false).unwrap();
        r.decide(1, SignalKind::Create, &key(1)).unwrap();
        r.decide(2, SignalKind::Create, &key(2)).unwrap();
        r.decide(3, SignalKind::Create, &key(2)).unwrap();
        assert_eq!(
            r.decide(4, SignalKind::Create, &key(3)),
            Err(RouteError::TooManyCreated(2))
        );
        assert_eq!(r.created_during_move(), 2);
    }
}
