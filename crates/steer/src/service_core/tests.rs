use super::*;

type Core = ServiceCore<u32>;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7001))
}

fn signal(kind: SignalKind, key: u8) -> Inbound {
    Inbound {
        kind,
        key: Bytes::copy_from_slice(&[key]),
        payload: Bytes::from_static(b"p"),
        client: SocketAddr::from(([10, 1, 0, 1], 9000)),
    }
}

fn tick() -> Inbound {
    Inbound {
        kind: SignalKind::Tick,
        key: Bytes::new(),
        payload: Bytes::new(),
        client: addr(9),
    }
}

/// The links the core opened so far, by node.
fn opened(effects: &[Effect<u32>]) -> Vec<(LinkId, SocketAddr)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::OpenLink { id, node } => Some((*id, *node)),
            _ => None,
        })
        .collect()
}

fn replies(effects: Vec<Effect<u32>>) -> Vec<(u32, Result<Answer, CommandError>)> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Reply(to, r) => Some((to, r)),
            _ => None,
        })
        .collect()
}

/// A core serving from node 1 whose source link is up at `base`.
fn serving(base: u64) -> (Core, LinkId) {
    let mut c = Core::new("mme-1", addr(1), Kept::Nothing, Timeouts::default());
    let links = opened(&c.take_effects());
    assert_eq!(links.len(), 1, "the source link is opened at start");
    assert_eq!(links[0].1, addr(1));
    c.link_up(links[0].0, base, 1);
    (c, links[0].0)
}

fn routed(a: Admission) -> (u64, Vec<(LinkId, SignalFrame)>) {
    match a {
        Admission::Routed { seq, frames, .. } => (seq, frames.into_iter().collect()),
        other => panic!("not routed: {other:?}"),
    }
}

/// A core in move mode towards node 2: (core, source link, destination link, first seq).
fn moving(abort_safe: bool) -> (Core, LinkId, LinkId, u64) {
    let (mut c, src) = serving(0);
    for _ in 0..3 {
        routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    }
    c.command(
        Command::Begin {
            destination: addr(2),
            abort_safe,
            incarnation: None,
        },
        1,
        0,
    );
    let dst = opened(&c.take_effects())[0].0;
    c.link_up(dst, 0, 1);
    c.poll(1, |_| 0);
    let r = replies(c.take_effects());
    let Ok(Answer::Boundary(b)) = &r[0].1 else {
        panic!("begin answered {r:?}")
    };
    (c, src, dst, b.boundary)
}

#[test]
fn a_serving_route_stamps_dense_seqs_above_what_the_source_applied() {
    let (mut c, src) = serving(41);
    let (seq, frames) = routed(c.admit(signal(SignalKind::Update, 1), 7, |_| true));
    assert_eq!(seq, 42, "the first seq lies above the source's base");
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, src);
    assert_eq!(frames[0].1.flags, 0);
    assert_eq!(frames[0].1.now_us, 7);
    assert_eq!(frames[0].1.route, ROUTE);
    assert_eq!(routed(c.admit(tick(), 8, |_| true)).0, 43);
}

#[test]
fn a_signal_with_no_room_or_no_link_takes_no_seq() {
    let (mut c, src) = serving(0);
    assert!(matches!(
        c.admit(signal(SignalKind::Update, 1), 0, |_| false),
        Admission::Dropped(Dropped::Shed)
    ));
    c.link_down(src);
    assert!(matches!(
        c.admit(signal(SignalKind::Update, 1), 0, |_| true),
        Admission::Dropped(Dropped::NoLink)
    ));
    assert_eq!(
        Dropped::NoLink.counter(SignalKind::Tick),
        None,
        "a tick no link carries is not a dropped datagram"
    );
    c.link_up(src, 0, 1);
    assert_eq!(
        routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true)).0,
        1
    );
}

#[test]
fn move_mode_starts_once_both_links_are_bound_and_a_repeat_gets_the_same_answer() {
    let (mut c, src) = serving(0);
    routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    c.link_down(src);
    let begin = Command::Begin {
        destination: addr(2),
        abort_safe: false,
        incarnation: None,
    };
    c.command(begin.clone(), 1, 0);
    let dst = opened(&c.take_effects())[0].0;
    c.link_up(dst, 0, 1);
    c.poll(10, |_| 0);
    assert!(
        replies(c.take_effects()).is_empty(),
        "no move mode while the source link is down"
    );
    c.link_up(src, 5, 1);
    c.poll(20, |_| 0);
    let effects = c.take_effects();
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::PersistRoute(KeptRoute {
            phase: RoutePhase::Moving,
            ..
        })
    )));
    let want = Boundary {
        boundary: 6,
        last_sent: 5,
    };
    assert_eq!(replies(effects), vec![(1, Ok(Answer::Boundary(want)))]);
    c.command(begin, 2, 30);
    assert_eq!(
        replies(c.take_effects()),
        vec![(2, Ok(Answer::Boundary(want)))]
    );
    c.command(
        Command::Begin {
            destination: addr(3),
            abort_safe: false,
            incarnation: None,
        },
        3,
        30,
    );
    assert_eq!(
        replies(c.take_effects()),
        vec![(3, Err(CommandError::InProgress))]
    );
}

#[test]
fn a_destination_that_never_binds_fails_the_begin_and_closes_its_link() {
    let (mut c, _) = serving(0);
    c.command(
        Command::Begin {
            destination: addr(2),
            abort_safe: false,
            incarnation: None,
        },
        1,
        0,
    );
    let dst = opened(&c.take_effects())[0].0;
    c.poll(Timeouts::default().link_up_us + 1, |_| 0);
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::CloseLink(id) if *id == dst)));
    assert_eq!(
        replies(effects),
        vec![(1, Err(CommandError::NotBound(addr(2))))]
    );
    assert_eq!(c.status().destination, None);
}

#[test]
fn move_mode_frames_carry_the_wire_flags() {
    let (mut c, src, dst, first) = moving(false);
    let (seq, f) = routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    assert_eq!(seq, first);
    assert_eq!(f[0].0, dst);
    assert_eq!(
        f[0].1.flags, SIGNAL_SHADOW,
        "the destination's copy is a shadow"
    );
    assert_eq!(f[1].0, src);
    assert_eq!(f[1].1.flags, 0, "the source is authoritative");
    let (_, f) = routed(c.admit(signal(SignalKind::Create, 9), 0, |_| true));
    assert_eq!(f[0].0, src);
    assert_eq!(f[0].1.flags, SIGNAL_HANDOVER, "the source gets a marker");
    assert!(f[0].1.payload.is_empty());
    assert_eq!((f[1].0, f[1].1.flags), (dst, 0), "the destination answers");
    let (_, f) = routed(c.admit(signal(SignalKind::Update, 9), 0, |_| true));
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].0, f[0].1.flags), (dst, 0));
}

#[test]
fn cutover_and_finish_are_repeatable_and_make_the_destination_the_source() {
    let (mut c, src, dst, _) = moving(false);
    routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    let last = c.last_seq();
    c.command(Command::Cutover, 1, 0);
    let r = replies(c.take_effects());
    let want = Boundary {
        boundary: last + 1,
        last_sent: last,
    };
    assert_eq!(r, vec![(1, Ok(Answer::Boundary(want)))]);
    routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    c.command(Command::Cutover, 2, 0);
    assert_eq!(
        replies(c.take_effects()),
        vec![(2, Ok(Answer::Boundary(want)))]
    );
    c.command(Command::Finish, 3, 0);
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::RetireLink(id) if *id == src)));
    assert_eq!(replies(effects), vec![(3, Ok(Answer::Done))]);
    c.command(Command::Finish, 4, 0);
    assert_eq!(replies(c.take_effects()), vec![(4, Ok(Answer::Done))]);
    let (_, f) = routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    assert_eq!(f[0].0, dst);
    assert_eq!(c.status().node, addr(2));
}

#[test]
fn a_route_lost_in_a_restart_refuses_moves_until_rebind_and_serve() {
    let kept = Kept::Route(KeptRoute {
        node: addr(1),
        phase: RoutePhase::Moving,
        floor: 0,
        incarnation: None,
    });
    let mut c = Core::new("mme-1", addr(7), kept, Timeouts::default());
    let first = opened(&c.take_effects());
    assert_eq!(first[0].1, addr(1), "the kept node, not the configured one");
    assert!(matches!(
        c.admit(signal(SignalKind::Update, 1), 0, |_| true),
        Admission::Dropped(Dropped::Unrouted)
    ));
    c.command(Command::Cutover, 1, 0);
    assert_eq!(
        replies(c.take_effects()),
        vec![(1, Err(CommandError::RouteLost { cut_over: false }))]
    );
    c.command(
        Command::Rebind {
            source: addr(1),
            destination: addr(2),
            incarnations: (None, None),
        },
        2,
        0,
    );
    let links = opened(&c.take_effects());
    assert_eq!(links.len(), 2);
    c.command(Command::Serve { node: addr(1) }, 3, 0);
    assert_eq!(
        replies(c.take_effects()),
        vec![(3, Err(CommandError::RebindIncomplete))]
    );
    c.link_up(links[0].0, 30, 1);
    c.link_up(links[1].0, 40, 1);
    c.link_up(first[0].0, 99, 1); // the replaced link: ignored
    c.poll(1, |_| 0);
    let want = Rebound {
        source: Some(30),
        destination: Some(40),
    };
    assert_eq!(
        replies(c.take_effects()),
        vec![(2, Ok(Answer::Rebound(want)))]
    );
    c.command(Command::Serve { node: addr(1) }, 4, 0);
    let b = Boundary {
        boundary: 41,
        last_sent: 40,
    };
    assert_eq!(
        replies(c.take_effects()),
        vec![(4, Ok(Answer::Boundary(b)))]
    );
    let (seq, f) = routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    assert_eq!(
        (seq, f[0].0),
        (41, links[0].0),
        "above everything either applied"
    );
}

#[test]
fn a_route_lost_after_the_cutover_is_served_only_by_the_destination() {
    let kept = Kept::Route(KeptRoute {
        node: addr(1),
        phase: RoutePhase::CutOver,
        floor: 0,
        incarnation: None,
    });
    let mut c = Core::new("mme-1", addr(1), kept, Timeouts::default());
    c.take_effects();
    c.command(
        Command::Rebind {
            source: addr(1),
            destination: addr(2),
            incarnations: (None, None),
        },
        1,
        0,
    );
    for (id, _) in opened(&c.take_effects()) {
        c.link_up(id, 0, 1);
    }
    c.poll(0, |_| 0);
    c.take_effects();
    c.command(Command::Serve { node: addr(1) }, 2, 0);
    assert_eq!(
        replies(c.take_effects()),
        vec![(2, Err(CommandError::OnlyDestinationMayServe))]
    );
    assert_eq!(
        CommandError::OnlyDestinationMayServe.code(),
        handoff_wire::code::WRONG_PHASE
    );
    assert_eq!(
        CommandError::RouteLost { cut_over: true }.code(),
        handoff_wire::code::ROUTE_LOST_CUT_OVER
    );
}

#[test]
fn a_two_step_abort_returns_the_created_sessions_and_flips_back_at_a_boundary() {
    let (mut c, src, dst, _) = moving(false);
    routed(c.admit(signal(SignalKind::Create, 5), 0, |_| true));
    c.command(Command::AbortBegin, 1, 0);
    assert_eq!(
        replies(c.take_effects()),
        vec![(1, Ok(Answer::Keys(vec![Bytes::from_static(&[5])])))]
    );
    let (_, f) = routed(c.admit(signal(SignalKind::Update, 5), 0, |_| true));
    assert_eq!(
        f[0].0, dst,
        "the created session stays with the destination"
    );
    let last = c.last_seq();
    c.command(Command::AbortCommit, 2, 0);
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::RetireLink(id) if *id == dst)));
    let b = Boundary {
        boundary: last + 1,
        last_sent: last,
    };
    assert_eq!(replies(effects), vec![(2, Ok(Answer::Boundary(b)))]);
    c.command(Command::AbortCommit, 3, 0);
    assert_eq!(
        replies(c.take_effects()),
        vec![(3, Ok(Answer::Boundary(b)))],
        "repeatable"
    );
    let (_, f) = routed(c.admit(signal(SignalKind::Update, 5), 0, |_| true));
    assert_eq!(f[0].0, src);
}

#[test]
fn a_release_hands_the_held_signals_over_in_order_as_room_allows() {
    let (mut c, src) = serving(0);
    c.command(Command::Hold, 1, 0);
    assert_eq!(replies(c.take_effects()), vec![(1, Ok(Answer::LastSeq(0)))]);
    for k in 0..5 {
        assert!(matches!(
            c.admit(signal(SignalKind::Update, k), 0, |_| true),
            Admission::Held { .. }
        ));
    }
    assert_eq!(c.status().phase, RoutePhase::Held);
    c.command(Command::Release { to: addr(2) }, 2, 0);
    let to = opened(&c.take_effects())[0].0;
    c.poll(1, |_| 3);
    assert!(
        c.take_effects().is_empty(),
        "nothing sent before the link binds"
    );
    c.link_up(to, 0, 1);
    c.poll(2, |_| 3);
    let sent: Vec<u64> = c
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Send(id, f) if id == to => Some(f.seq),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![1, 2, 3], "only as many as the link has room for");
    c.poll(3, |_| 3);
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::RetireLink(id) if *id == src)));
    let seqs: Vec<u64> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(_, f) => Some(f.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    assert_eq!(replies(effects), vec![(2, Ok(Answer::Done))]);
    assert_eq!(c.status().node, addr(2));
    assert_eq!(c.status().phase, RoutePhase::Serving);
}

/// Regression (seed 223 under mixed): an abort committed at seq 65 sent 65 to the destination
/// only; the steer restarted serving from the source, which had applied 64, and stamped 65
/// again, so a session coming back with its record at 65 would have taken a new signal 65 as
/// already included. The kept route carries the last seq stamped.
#[test]
fn a_restart_after_a_flip_stamps_above_every_seq_given_out_before_it() {
    let (mut c, _, _, _) = moving(false);
    for k in 0..5 {
        routed(c.admit(signal(SignalKind::Create, 20 + k), 0, |_| true));
    }
    c.command(Command::AbortBegin, 1, 0);
    let (_, f) = routed(c.admit(signal(SignalKind::Update, 20), 0, |_| true));
    assert_eq!(f.len(), 1, "to the destination only");
    c.command(Command::AbortCommit, 2, 0);
    let last = c.last_seq();
    let kept = c
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::PersistRoute(k) => Some(k),
            _ => None,
        })
        .last()
        .expect("the route is kept");
    assert_eq!((kept.phase, kept.floor), (RoutePhase::Serving, last));
    let mut again = Core::new("mme-1", addr(1), Kept::Route(kept), Timeouts::default());
    let src = opened(&again.take_effects())[0].0;
    again.link_up(src, last - 1, 1);
    let (seq, _) = routed(again.admit(signal(SignalKind::Update, 1), 0, |_| true));
    assert_eq!(seq, last + 1);
}

#[test]
fn a_node_that_binds_another_incarnation_is_never_taken_for_the_old_one() {
    let (mut c, src) = serving(0);
    routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    // The node restarted: its link comes back bound to a new, empty incarnation.
    c.link_down(src);
    c.link_up(src, 0, 2);
    let a = c.admit(signal(SignalKind::Update, 1), 0, |_| true);
    assert!(
        matches!(a, Admission::Dropped(Dropped::Offline)),
        "an empty incarnation must not answer as if it held the sessions: {a:?}"
    );
    assert_eq!(
        Dropped::Offline.counter(SignalKind::Update),
        Some(DropCounter::Offline)
    );
    let st = c.status();
    assert!(st.offline.is_some(), "{st:?}");
    assert_eq!(st.incarnation, Some(1));
    // Recovering needs the operator to name the new incarnation.
    c.command(
        Command::Recover {
            node: addr(1),
            incarnation: None,
        },
        9,
        0,
    );
    let r = replies(c.take_effects());
    assert!(
        matches!(
            &r[0].1,
            Err(CommandError::OtherIncarnation { found: 2, .. })
        ),
        "{r:?}"
    );
    c.command(
        Command::Recover {
            node: addr(1),
            incarnation: Some(2),
        },
        10,
        0,
    );
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::PersistRoute(k) if k.incarnation == Some(2))));
    let r = replies(effects);
    let Ok(Answer::Boundary(b)) = &r[0].1 else {
        panic!("{r:?}")
    };
    assert_eq!(b.boundary, 2, "seqs go on above everything stamped");
    assert_eq!(
        routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true)).0,
        2
    );
    assert!(c.status().offline.is_none());
}

#[test]
fn a_move_recovers_on_either_side_at_once_in_any_phase() {
    // The source lost before the cutover: roll forward to the destination.
    let (mut c, src, dst, _) = moving(true);
    routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    c.link_up(src, 0, 5);
    assert!(matches!(
        c.admit(signal(SignalKind::Update, 1), 0, |_| true),
        Admission::Dropped(Dropped::Offline)
    ));
    c.command(
        Command::Recover {
            node: addr(2),
            incarnation: None,
        },
        1,
        0,
    );
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::RetireLink(l) if *l == src)));
    let r = replies(effects);
    assert!(matches!(&r[0].1, Ok(Answer::Boundary(_))), "{r:?}");
    assert_eq!(c.phase(), RoutePhase::Serving);
    let (_, frames) = routed(c.admit(signal(SignalKind::Create, 9), 0, |_| true));
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, dst, "the destination owns the instance now");

    // The destination lost after the cutover: recover on the source, giving up what the
    // destination was sent since the boundary.
    let (mut c, src, dst, _) = moving(false);
    c.command(Command::Cutover, 2, 0);
    let r = replies(c.take_effects());
    let Ok(Answer::Boundary(cut)) = &r[0].1 else {
        panic!("{r:?}")
    };
    let cut = cut.boundary;
    for _ in 0..4 {
        routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    }
    c.link_down(dst);
    c.command(
        Command::Recover {
            node: addr(1),
            incarnation: None,
        },
        3,
        0,
    );
    let r = replies(c.take_effects());
    let Ok(Answer::Boundary(b)) = &r[0].1 else {
        panic!("{r:?}")
    };
    assert_eq!(
        b.last_sent,
        cut + 3,
        "the last seq sent to the lost destination"
    );
    let (_, frames) = routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    assert_eq!(frames[0].0, src);
    // A node on neither side is refused.
    c.command(
        Command::Recover {
            node: addr(7),
            incarnation: None,
        },
        4,
        0,
    );
    let r = replies(c.take_effects());
    assert!(matches!(&r[0].1, Err(CommandError::NotOnRoute(_))), "{r:?}");
}

#[test]
fn a_recovery_off_the_route_binds_only_the_named_incarnation() {
    // After a finish the route no longer names the old source: recovering there links it
    // again, bound to the incarnation the move worked with, and answers once it binds.
    let (mut c, src) = serving(0);
    routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    c.command(
        Command::Recover {
            node: addr(3),
            incarnation: None,
        },
        1,
        0,
    );
    let r = replies(c.take_effects());
    assert!(matches!(&r[0].1, Err(CommandError::NotOnRoute(_))), "{r:?}");
    c.command(
        Command::Recover {
            node: addr(3),
            incarnation: Some(5),
        },
        2,
        0,
    );
    let links = opened(&c.take_effects());
    assert_eq!(links.len(), 1);
    let (link, node) = links[0];
    assert_eq!(node, addr(3));
    // Another incarnation binds: refused, and the route is left as it was.
    c.link_up(link, 0, 6);
    c.poll(1, |_| 0);
    let r = replies(c.take_effects());
    assert!(
        matches!(
            &r[0].1,
            Err(CommandError::OtherIncarnation { found: 6, .. })
        ),
        "{r:?}"
    );
    assert_eq!(c.status().node, addr(1));
    // The named one: the node owns the instance from a seq above everything stamped.
    c.command(
        Command::Recover {
            node: addr(3),
            incarnation: Some(5),
        },
        3,
        0,
    );
    let link = opened(&c.take_effects())[0].0;
    c.link_up(link, 0, 5);
    c.poll(2, |_| 0);
    let effects = c.take_effects();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::RetireLink(l) if *l == src)));
    let r = replies(effects);
    let Ok(Answer::Boundary(b)) = &r[0].1 else {
        panic!("{r:?}")
    };
    assert_eq!(b.boundary, 2);
    let (_, frames) = routed(c.admit(signal(SignalKind::Update, 1), 0, |_| true));
    assert_eq!(frames[0].0, link);
    assert_eq!(c.status().node, addr(3));
}
