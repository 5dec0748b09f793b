//! The node's connection protocol: binding, resuming after a reconnect, admin errors.

use futures::{SinkExt, StreamExt};
use handoff_function::SignalKind;
use handoff_node::client::{AdminClient, ClientError};
use handoff_node::{ops, Node};
use handoff_vmme::{Header, Signal, SignalBody};
use handoff_wire::{code, Frame, FrameCodec, Role, SignalFrame, VERSION};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

async fn node() -> (Arc<Node>, SocketAddr) {
    handoff_testkit::must_start_node("node-t", true).await
}

async fn steer_conn(addr: SocketAddr, instance: &str) -> (Framed<TcpStream, FrameCodec>, Frame) {
    let mut f = handoff_testkit::must_connect_as_steer(addr, instance).await;
    assert!(matches!(
        f.next().await.unwrap().unwrap(),
        Frame::HelloAck { .. }
    ));
    let bound = f.next().await.unwrap().unwrap();
    (f, bound)
}

fn attach(seq: u64, imsi: u64, flags: u8) -> Frame {
    let s = Signal {
        header: Header { imsi, txn_id: 1 },
        body: handoff_testkit::attach_body(),
    };
    Frame::Signal(SignalFrame {
        route: 1,
        seq,
        now_us: 1,
        kind: SignalKind::Create as u8,
        flags,
        client: "127.0.0.1:9".parse().unwrap(),
        key: handoff_vmme::session_key(imsi),
        payload: s.to_bytes().into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_signals_change_state_but_emit_nothing() {
    let (node, addr) = node().await;
    let (mut f, _) = steer_conn(addr, "mme-1").await;
    f.send(attach(1, 1_010_000_000_001, handoff_wire::SIGNAL_SHADOW))
        .await
        .unwrap();
    f.send(attach(2, 1_010_000_000_002, 0)).await.unwrap();
    match f.next().await.unwrap().unwrap() {
        Frame::Output(o) => assert_eq!(o.seq, 2, "only the authoritative signal is answered"),
        other => panic!("{other:?}"),
    }
    let h = node.instance("mme-1").unwrap();
    assert_eq!(h.table().len(), 2, "the shadow signal was applied");
    assert_eq!(h.stats().shadow_suppressed, 1);
}

fn echo(seq: u64) -> Frame {
    let s = Signal {
        header: Header {
            imsi: 1_010_000_000_001,
            txn_id: seq as u32,
        },
        body: SignalBody::Echo { nonce: seq },
    };
    Frame::Signal(SignalFrame {
        route: 1,
        seq,
        now_us: 1,
        kind: SignalKind::Stateless as u8,
        flags: 0,
        client: "127.0.0.1:9".parse().unwrap(),
        key: bytes::Bytes::new(),
        payload: s.to_bytes().into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebind_fences_the_old_connection_and_reports_the_exact_resume_point() {
    let (node, addr) = node().await;
    let (mut f, bound) = steer_conn(addr, "mme-1").await;
    let incarnation = node.instance("mme-1").unwrap().incarnation();
    assert_ne!(incarnation, 0);
    assert_eq!(
        bound,
        Frame::Bound {
            route: 1,
            last_seq: 0,
            incarnation,
        }
    );
    for seq in 1..=300 {
        f.feed(echo(seq)).await.unwrap();
    }
    SinkExt::<Frame>::flush(&mut f).await.unwrap();
    // A second steer binds while the first one's signals may still be in flight.
    let (mut g, bound) = steer_conn(addr, "mme-1").await;
    let Frame::Bound { last_seq, .. } = bound else {
        panic!("{bound:?}")
    };
    assert!(last_seq <= 300);
    // Whatever the old connection still delivers is fenced off: the new steer's next seq is
    // the next applied, and a seq at or below the resume point is ignored.
    g.send(echo(last_seq)).await.unwrap();
    g.send(echo(last_seq + 1)).await.unwrap();
    match g.next().await.unwrap().unwrap() {
        Frame::Output(o) => assert_eq!(o.seq, last_seq + 1),
        other => panic!("expected the output of seq {}, got {other:?}", last_seq + 1),
    }
    // The old connection stays open until its signals are counted: closing it with its
    // outputs unread would reset it and lose signals still in the node's socket buffer.
    let h = node.instance("mme-1").unwrap();
    for _ in 0..200 {
        let s = h.stats();
        if s.runtime.processed + s.fenced >= 301 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let s = h.stats();
    assert_eq!(
        s.runtime.last_seq,
        last_seq + 1,
        "nothing of the old binding applied after"
    );
    assert_eq!(s.runtime.processed, last_seq + 1);
    assert_eq!(
        s.fenced,
        300 - last_seq,
        "every signal of the old binding past the resume point"
    );
    drop(f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_frames_and_unknown_instances_get_coded_errors() {
    let (_node, addr) = node().await;
    let (_f, bound) = steer_conn(addr, "mme-404").await;
    assert!(
        matches!(
            bound,
            Frame::Error {
                code: code::UNKNOWN_INSTANCE,
                ..
            }
        ),
        "{bound:?}"
    );

    let mut admin = AdminClient::connect(addr, "t").await.unwrap();
    let err = admin.dump("mme-404").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: code::UNKNOWN_INSTANCE,
                ..
            }
        ),
        "{err}"
    );
    let err = admin
        .call(&ops::CreateInstance {
            instance: "x".into(),
            function: "nope".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: code::UNKNOWN_FUNCTION,
                ..
            }
        ),
        "{err}"
    );
    let stats = admin.call(&ops::Stats {}).await.unwrap();
    assert_eq!(stats.instances[0].instance, "mme-1");

    // Malformed JSON is refused and the connection stays usable.
    let mut raw = Framed::new(TcpStream::connect(addr).await.unwrap(), FrameCodec::new());
    raw.send(Frame::Hello {
        role: Role::Admin,
        name: "t".into(),
        min_version: VERSION,
        max_version: VERSION,
        token: String::new(),
    })
    .await
    .unwrap();
    assert!(matches!(
        raw.next().await.unwrap().unwrap(),
        Frame::HelloAck { .. }
    ));
    raw.send(Frame::Admin(bytes::Bytes::from_static(
        b"{\"op\":\"launch_missiles\"}",
    )))
    .await
    .unwrap();
    assert!(matches!(
        raw.next().await.unwrap().unwrap(),
        Frame::Error {
            code: code::BAD_REQUEST,
            ..
        }
    ));
    // One policy for unknown request fields: every operation refuses them (`stats`, which
    // has no field, and `get_ruleset` alike), and the connection stays usable.
    for req in [
        &b"{\"op\":\"stats\",\"verbose\":true}"[..],
        &b"{\"op\":\"get_ruleset\",\"instance\":\"mme-1\",\"verbose\":true}"[..],
        &b"{\"op\":\"shadow_stats\",\"instance\":\"mme-1\",\"x\":1}"[..],
    ] {
        raw.send(Frame::Admin(bytes::Bytes::copy_from_slice(req)))
            .await
            .unwrap();
        match raw.next().await.unwrap().unwrap() {
            Frame::Error { code, message } => {
                assert_eq!(code, code::BAD_REQUEST, "{message}");
                assert!(message.contains("unknown field"), "{message}");
            }
            other => panic!("accepted an unknown field: {other:?}"),
        }
    }
    raw.send(Frame::Admin(bytes::Bytes::from_static(
        b"{\"op\":\"stats\"}",
    )))
    .await
    .unwrap();
    assert!(matches!(
        raw.next().await.unwrap().unwrap(),
        Frame::AdminReply(_)
    ));
    // A signal on an admin connection is a wrong frame, and the node hangs up.
    raw.send(echo(1)).await.unwrap();
    assert!(matches!(
        raw.next().await.unwrap().unwrap(),
        Frame::Error {
            code: code::WRONG_FRAME,
            ..
        }
    ));
    assert!(raw.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_instance_binds_as_a_new_incarnation() {
    let (node, addr) = node().await;
    let (_f, first) = steer_conn(addr, "mme-1").await;
    let Frame::Bound {
        incarnation: before,
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    node.drop_instance("mme-1").unwrap();
    node.create_instance("mme-1", "vmme").unwrap();
    let (_g, again) = steer_conn(addr, "mme-1").await;
    let Frame::Bound {
        incarnation: after, ..
    } = again
    else {
        panic!("{again:?}")
    };
    assert_ne!(
        before, after,
        "a re-created instance must never pass for the old one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_drops_only_what_it_created_and_never_a_serving_instance() {
    let (node, addr) = node().await;
    let mut admin = AdminClient::connect(addr, "t").await.unwrap();
    let inc = node.instance("mme-1").unwrap().incarnation();
    // A stale move names mme-1 (serving here, created by no move) as the destination to drop.
    let refused = admin
        .call(&ops::DropInstance {
            instance: "mme-1".into(),
            move_tag: Some("controller#7".into()),
            incarnation: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(code::FOREIGN), "{refused}");
    assert_eq!(node.instance("mme-1").unwrap().incarnation(), inc);
    // A shadow the move prepared is its to drop; naming another incarnation is refused.
    let p = admin
        .call(&ops::PrepareShadow {
            instance: "mme-2".into(),
            function: "vmme".into(),
            move_tag: Some("controller#8".into()),
        })
        .await
        .unwrap();
    let wrong = admin
        .call(&ops::DropInstance {
            instance: "mme-2".into(),
            move_tag: Some("controller#8".into()),
            incarnation: Some(p.incarnation + 1),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some(code::FOREIGN), "{wrong}");
    let other = admin
        .call(&ops::DropInstance {
            instance: "mme-2".into(),
            move_tag: Some("controller#9".into()),
            incarnation: None,
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Some(code::FOREIGN), "{other}");
    admin
        .call(&ops::DropInstance {
            instance: "mme-2".into(),
            move_tag: Some("controller#8".into()),
            incarnation: Some(p.incarnation),
        })
        .await
        .unwrap();
    assert!(node.instance("mme-2").is_err());
    // Preparing a serving instance that holds state is refused, and leaves it alone.
    let (mut f, _) = steer_conn(addr, "mme-1").await;
    f.send(attach(1, 1_010_000_000_001, 0)).await.unwrap();
    node.instance("mme-1")
        .unwrap()
        .wait_applied(1, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let busy = admin
        .call(&ops::PrepareShadow {
            instance: "mme-1".into(),
            function: "vmme".into(),
            move_tag: Some("controller#10".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Some(code::FOREIGN), "{busy}");
    assert_eq!(node.instance("mme-1").unwrap().incarnation(), inc);
}
