use super::*;

fn spec() -> MoveSpec {
    MoveSpec {
        id: 1,
        instance: "mme-1".into(),
        function: "vmme".into(),
        source: "127.0.0.1:1".parse().unwrap(),
        destination: "127.0.0.1:2".parse().unwrap(),
        steer: "127.0.0.1:3".parse().unwrap(),
        order: CopyOrder::HotFirst,
        plan: CopyPlan::default(),
        abort_safe: false,
        lead_ms: 0,
        origin: "controller".into(),
    }
}

fn settled() -> Outcome {
    Outcome::Shadow(Some(ShadowView::default()))
}

/// A cluster that answers every action as a healthy one would; `created` sessions appear on
/// the destination during the move.
fn healthy(action: &Action, created: &[Bytes]) -> Outcome {
    match action {
        Action::BeginMove { .. } => Outcome::FirstSeq {
            first: 10,
            last_sent: 9,
        },
        Action::Copy { keys, .. } => {
            let n = keys.as_ref().map_or(100, |k| k.len() as u64);
            Outcome::Copied(CopyOutcome {
                sessions_at_start: n,
                records_copied: n,
                digest_match: true,
                ..CopyOutcome::default()
            })
        }
        Action::ShadowStats { .. } => settled(),
        Action::Cutover | Action::AbortCommit => Outcome::Boundary {
            boundary: 50,
            last_sent: 49,
        },
        Action::AppliedSeq { .. } => Outcome::Applied(49),
        Action::AbortBegin => Outcome::Keys(created.to_vec()),
        _ => Outcome::Done,
    }
}

/// Runs the machine against `answer` until it ends; returns the actions taken.
fn run(
    m: &mut MoveMachine,
    mut answer: impl FnMut(&Action, &MoveMachine) -> Result<Outcome, Failure>,
) -> Vec<Action> {
    let mut taken = Vec::new();
    let mut now = 0;
    while let Some(a) = m.action() {
        assert!(taken.len() < 10_000, "the machine does not end: {m:?}");
        m.start_action();
        let r = answer(&a, m);
        taken.push(a);
        now += 1;
        m.complete(r, now);
    }
    taken
}

#[test]
fn a_healthy_move_walks_every_phase_in_order() {
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let taken = run(&mut m, |a, _| Ok(healthy(a, &[])));
    assert_eq!(m.phase, Phase::Done, "{m:?}");
    let names: Vec<&str> = taken
        .iter()
        .map(|a| match a {
            Action::PrepareShadow => "prepare",
            Action::BeginMove { .. } => "begin",
            Action::Copy { .. } => "copy",
            Action::ShadowStats { .. } => "stats",
            Action::Cutover => "cutover",
            Action::AppliedSeq { .. } => "applied",
            Action::FinishShadow { .. } => "finish_shadow",
            Action::FinishMove => "finish_move",
            Action::DropInstance { .. } => "drop",
            _ => "other",
        })
        .collect();
    assert_eq!(
        names,
        [
            "prepare",
            "begin",
            "copy",
            "stats",
            "cutover",
            "applied",
            "applied",
            "finish_shadow",
            "finish_move",
            "applied",
            "drop"
        ]
    );
    assert_eq!(
        taken[2],
        Action::Copy {
            from: Side::Source,
            keys: None,
            after_seq: 9,
            lead_ms: 0
        },
        "the copy waits for every seq before move mode"
    );
    assert_eq!(m.figures.cutover_seq, 50);
    assert_eq!(
        (&taken[5], &taken[6]),
        (
            &Action::AppliedSeq { at: Side::Source },
            &Action::AppliedSeq {
                at: Side::Destination
            }
        ),
        "drain waits for the source, then for the destination to have every seq below the boundary"
    );
}

#[test]
fn an_abort_sends_the_created_sessions_back_before_dropping_the_destination() {
    let created = vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")];
    // An abort requested during verify.
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let mut taken = Vec::new();
    let mut now = 0;
    while let Some(a) = m.action() {
        m.start_action();
        if matches!(
            a,
            Action::ShadowStats {
                at: Side::Destination
            }
        ) && m.phase == Phase::Verify
        {
            m.request_abort("operator");
        }
        let r = Ok(healthy(&a, &created));
        taken.push(a);
        now += 1;
        m.complete(r, now);
    }
    assert_eq!(m.phase, Phase::Aborted, "{m:?}");
    assert_eq!(m.reason.as_deref(), Some("operator"));
    let tail: Vec<Action> = taken
        .into_iter()
        .skip_while(|a| *a != Action::AbortBegin)
        .collect();
    assert_eq!(
        tail,
        vec![
            Action::AbortBegin,
            Action::ExpectSessions {
                keys: created.clone()
            },
            Action::AbortCommit,
            Action::ShadowStats {
                at: Side::Destination
            },
            Action::Copy {
                from: Side::Destination,
                keys: Some(created.clone()),
                after_seq: 49,
                lead_ms: 0
            },
            // Every seq below the abort's boundary (50) reached the source.
            Action::AppliedSeq { at: Side::Source },
            // And every returning record arrived there.
            Action::ShadowStats { at: Side::Source },
            Action::FinishShadow {
                at: Side::Source,
                force: true
            },
            Action::DropInstance {
                at: Side::Destination
            },
        ]
    );
    assert_eq!(m.figures.created_during_move, 2);
    assert_eq!(m.figures.lost_on_abort, 0);
}

#[test]
fn a_refused_copy_back_waits_for_the_records_already_streaming_before_giving_up() {
    let created = vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")];
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let mut awaiting = 2u64;
    let mut now = 0;
    while let Some(a) = m.action() {
        m.start_action();
        if m.phase == Phase::Verify {
            m.request_abort("operator");
        }
        let r = match &a {
            // A first copy back still streams: the repeated one is refused.
            Action::Copy {
                from: Side::Destination,
                ..
            } => Err(Failure::Refused("manifest after the copy began".into())),
            Action::ShadowStats { at: Side::Source } => {
                let view = ShadowView {
                    awaiting,
                    ..ShadowView::default()
                };
                awaiting = awaiting.saturating_sub(1);
                Ok(Outcome::Shadow(Some(view)))
            }
            _ => Ok(healthy(&a, &created)),
        };
        now += 1;
        m.complete(r, now);
    }
    assert_eq!(m.phase, Phase::Aborted, "{m:?}");
    assert_eq!(awaiting, 0, "polled until the records arrived");
    assert_eq!(m.figures.lost_on_abort, 0);
}

#[test]
fn no_abort_after_cutover() {
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let taken = run(&mut m, |a, m| {
        let mut m = m.clone();
        if *a == Action::FinishMove {
            m.request_abort("too late");
            assert!(!m.abort_requested, "ignored past the cutover");
        }
        Ok(healthy(a, &[]))
    });
    assert_eq!(m.phase, Phase::Done);
    assert!(!taken.contains(&Action::AbortBegin));
}

#[test]
fn a_failure_before_cutover_aborts_and_after_it_goes_forward() {
    // The destination refuses the copy: abort, nothing created, so no copy back.
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    run(&mut m, |a, _| match a {
        Action::Copy {
            from: Side::Source, ..
        } => Err(Failure::Refused("not empty".into())),
        _ => Ok(healthy(a, &[])),
    });
    assert_eq!(m.phase, Phase::Aborted);
    assert!(m.reason.as_deref().unwrap().contains("not empty"));

    // The source is gone after the flip: the move still completes.
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    run(&mut m, |a, _| match a {
        Action::AppliedSeq { at: Side::Source } | Action::DropInstance { at: Side::Source } => {
            Err(Failure::Unreachable("connection refused".into()))
        }
        _ => Ok(healthy(a, &[])),
    });
    assert_eq!(m.phase, Phase::Done, "{m:?}");

    // The destination is gone once the flip happened: the move parks offline (the source
    // still holds everything below the boundary), it never drops the source.
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    run(&mut m, |a, _| match a {
        Action::AppliedSeq {
            at: Side::Destination,
        } => Err(Failure::Unreachable("connection refused".into())),
        Action::FinishShadow { .. } => Err(Failure::Refused("unknown instance".into())),
        _ => Ok(healthy(a, &[])),
    });
    assert_eq!(m.phase, Phase::Offline, "{m:?}");
    assert!(
        m.action().is_none(),
        "parked: nothing to do until an operator recovers"
    );
    m.recover_on_source(0).unwrap();
    assert_eq!(
        m.action(),
        Some(Action::Recover {
            owner: Side::Source
        })
    );

    // An unreachable peer is retried before giving up.
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let mut fails = 2;
    let taken = run(&mut m, |a, _| match a {
        Action::BeginMove { .. } if fails > 0 => {
            fails -= 1;
            Err(Failure::Unreachable("timeout".into()))
        }
        _ => Ok(healthy(a, &[])),
    });
    assert_eq!(m.phase, Phase::Done);
    assert_eq!(
        taken
            .iter()
            .filter(|a| matches!(a, Action::BeginMove { .. }))
            .count(),
        3
    );
}

#[test]
fn a_restart_aborts_before_cutover_and_resumes_after_it() {
    for stop_at in [Phase::Steer, Phase::Copy, Phase::Verify] {
        let mut m = MoveMachine::new(spec(), 0).unwrap();
        while m.phase != stop_at {
            let a = m.action().unwrap();
            m.complete(Ok(healthy(&a, &[])), 1);
        }
        m.start_action();
        let mut restarted: MoveMachine =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        restarted.recover(2);
        assert_eq!(restarted.phase, Phase::AbortBegin, "stopped at {stop_at:?}");
        run(&mut restarted, |a, _| Ok(healthy(a, &[])));
        assert_eq!(restarted.phase, Phase::Aborted);
    }
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    while m.phase != Phase::Finish {
        let a = m.action().unwrap();
        m.complete(Ok(healthy(&a, &[])), 1);
    }
    m.start_action();
    m.recover(2);
    assert_eq!(m.phase, Phase::Finish);
    run(&mut m, |a, _| Ok(healthy(a, &[])));
    assert_eq!(m.phase, Phase::Done);
}

#[test]
fn bad_specs_are_refused() {
    let mut s = spec();
    s.lead_ms = 6_000;
    assert!(MoveMachine::new(s, 0).is_err());
    let mut s = spec();
    s.destination = s.source;
    assert!(MoveMachine::new(s, 0).is_err());
}

/// A steer that restarted during the copy refuses the cutover with `RouteLost`: the machine
/// rebinds, asks the destination for the sessions created there, has the source expect them,
/// serves the route from the source at the rebind's fence and then brings them back.
#[test]
fn a_route_lost_before_the_cutover_aborts_through_a_rebind() {
    let k = Bytes::from_static(b"k1");
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let mut lost_once = false;
    let taken = run(&mut m, |a, _| match a {
        Action::Cutover if !lost_once => {
            lost_once = true;
            Err(Failure::RouteLost { cut_over: false })
        }
        Action::RebindRoute => Ok(Outcome::Rebound {
            source: Some(70),
            destination: Some(75),
        }),
        Action::CreatedKeys { .. } => Ok(Outcome::Keys(vec![k.clone()])),
        Action::ServeRoute { owner } => {
            assert_eq!(*owner, Side::Source);
            Ok(Outcome::Boundary {
                boundary: 76,
                last_sent: 75,
            })
        }
        Action::AppliedSeq { .. } => Ok(Outcome::Applied(75)),
        other => Ok(healthy(other, &[])),
    });
    assert_eq!(m.phase, Phase::Aborted, "{m:?}");
    assert_eq!(m.figures.created_during_move, 1);
    assert!(taken.contains(&Action::ExpectSessions {
        keys: vec![k.clone()]
    }));
    assert!(taken.contains(&Action::Copy {
        from: Side::Destination,
        keys: Some(vec![k]),
        after_seq: 75,
        lead_ms: 0,
    }));
    assert!(
        !taken.contains(&Action::AbortBegin),
        "the steer lost its keys"
    );
    assert_eq!(
        m.abort_boundary, 71,
        "the source's fence, not the new boundary"
    );
}

/// Lost after the flip: the route is served from the destination and the move finishes.
#[test]
fn a_route_lost_after_the_cutover_finishes_on_the_destination() {
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let mut lost_once = false;
    let taken = run(&mut m, |a, _| match a {
        Action::FinishMove if !lost_once => {
            lost_once = true;
            Err(Failure::RouteLost { cut_over: true })
        }
        Action::RebindRoute => Ok(Outcome::Rebound {
            source: Some(49),
            destination: Some(80),
        }),
        Action::ServeRoute { .. } => Ok(Outcome::Boundary {
            boundary: 81,
            last_sent: 49,
        }),
        other => Ok(healthy(other, &[])),
    });
    assert_eq!(m.phase, Phase::Done, "{m:?}");
    assert!(taken.contains(&Action::ServeRoute {
        owner: Side::Destination
    }));
    assert!(!taken.contains(&Action::CreatedKeys {
        at: Side::Destination
    }));
}

/// A destination that could not take a signal (its buffer or tick log was full) lacks it:
/// settled or not, it is never cut over to, and the move aborts.
#[test]
fn a_destination_that_refused_signals_is_never_cut_over_to() {
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let taken = run(&mut m, |a, m| {
        Ok(match a {
            Action::ShadowStats {
                at: Side::Destination,
            } if m.phase == Phase::Verify => Outcome::Shadow(Some(ShadowView {
                refused: 3,
                ..ShadowView::default()
            })),
            _ => healthy(a, &[]),
        })
    });
    assert_eq!(m.phase, Phase::Aborted, "{m:?}");
    assert!(!taken.contains(&Action::Cutover));
    assert_eq!(m.figures.shadow.refused, 3, "the report shows them");
    assert!(m
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("could not take 3 signals"));
}

/// Regression (seed 110 under operator-abort): the source left shadow mode before every
/// signal below the abort's boundary had reached it; a hand-over marker still on its link then
/// froze a session it served again. It now leaves only once it applied boundary - 1.
#[test]
fn an_aborted_source_serves_again_only_after_every_seq_below_the_abort() {
    let created = vec![Bytes::from_static(b"k1")];
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    let mut applied = vec![47, 48, 49].into_iter();
    let mut asked_below_boundary = 0;
    let mut now = 0;
    while let Some(a) = m.action() {
        m.start_action();
        if m.phase == Phase::Verify {
            m.request_abort("operator");
        }
        let r = match &a {
            Action::AppliedSeq { at: Side::Source } if m.phase == Phase::AbortReturn => {
                let seq = applied.next().unwrap_or(49);
                if seq < 49 {
                    asked_below_boundary += 1;
                }
                Ok(Outcome::Applied(seq))
            }
            Action::FinishShadow {
                at: Side::Source, ..
            } => {
                assert_eq!(
                    applied.len(),
                    0,
                    "the source left shadow mode before applying boundary - 1 (50 - 1)"
                );
                Ok(Outcome::Done)
            }
            _ => Ok(healthy(&a, &created)),
        };
        now += 1;
        m.complete(r, now);
    }
    assert_eq!(m.phase, Phase::Aborted, "{m:?}");
    assert_eq!(asked_below_boundary, 2);
}

#[test]
fn a_crash_way_out_is_never_aborted_and_an_abort_keeps_the_destination_if_the_source_is_gone() {
    // Rolling forward (the source is dead): an operator's abort would put the route back on
    // the dead source and drop the destination, the only copy left.
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    m.phase = Phase::Copy;
    assert!(m.node_lost(Side::Source, "gone", 1));
    assert_eq!(m.phase, Phase::RollForward);
    assert!(!m.abort_now("operator", 2));
    m.request_abort("operator");
    assert!(!m.abort_requested);
    assert_eq!(m.phase, Phase::RollForward);

    // An abort's last step checks the source before dropping the destination's copy.
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    m.incarnations.source = Some(7);
    m.figures.first_seq = 10;
    m.phase = Phase::AbortDrop;
    assert_eq!(m.action(), Some(Action::AppliedSeq { at: Side::Source }));
    m.complete(Err(Failure::Refused("incarnation 8, not 7".into())), 3);
    assert_eq!(m.phase, Phase::Failed, "{m:?}");
    assert!(m.reason.as_deref().unwrap().contains("kept"), "{m:?}");
}

#[test]
fn a_copy_refused_because_its_source_restarted_rolls_forward_at_once() {
    // The retried copy reached the restarted source, which named another incarnation: that is
    // the source lost, not a reason to abort (the abort would end on a dead source).
    let mut m = MoveMachine::new(spec(), 0).unwrap();
    m.phase = Phase::Copy;
    m.complete(
        Err(Failure::NodeLost(
            Side::Source,
            "incarnation 8, not 7".into(),
        )),
        5,
    );
    assert_eq!(m.phase, Phase::RollForward, "{m:?}");
}
