//! The node's connection protocol: binding, resuming after a reconnect, admin errors.

use futures::{SinkExt, StreamExt};
use handoff_function::runtime::Catalog;
use handoff_function::SignalKind;
use handoff_node::client::{AdminClient, ClientError};
use handoff_node::{AdminRequest, Node, NodeLimits};
use handoff_vmme::{Header, Signal, SignalBody, Vmme};
use handoff_wire::{code, Frame, FrameCodec, Role, SignalFrame, VERSION};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

async fn node() -> (Arc<Node>, SocketAddr) {
    let node = Node::new(
        "node-t",
        Catalog::new().with(Vmme::default()),
        NodeLimits::default(),
    );
    node.create_instance("mme-1", "vmme").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(handoff_node::serve(node.clone(), listener));
    (node, addr)
}

async fn steer_conn(addr: SocketAddr, instance: &str) -> (Framed<TcpStream, FrameCodec>, Frame) {
    let mut f = Framed::new(TcpStream::connect(addr).await.unwrap(), FrameCodec);
    f.send(Frame::Hello {
        role: Role::Steer,
        name: "t".into(),
        min_version: VERSION,
        max_version: VERSION,
    })
    .await
    .unwrap();
    f.send(Frame::Bind {
        route: 1,
        instance: instance.into(),
    })
    .await
    .unwrap();
    assert!(matches!(
        f.next().await.unwrap().unwrap(),
        Frame::HelloAck { .. }
    ));
    let bound = f.next().await.unwrap().unwrap();
    (f, bound)
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
        client: "127.0.0.1:9".parse().unwrap(),
        key: bytes::Bytes::new(),
        payload: s.to_bytes().into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebind_reports_the_last_seq_applied_including_batches_still_queued() {
    let (_node, addr) = node().await;
    let (mut f, bound) = steer_conn(addr, "mme-1").await;
    assert_eq!(
        bound,
        Frame::Bound {
            route: 1,
            last_seq: 0
        }
    );
    for seq in 1..=300 {
        f.feed(echo(seq)).await.unwrap();
    }
    SinkExt::<Frame>::flush(&mut f).await.unwrap();
    drop(f); // the steer goes away with outputs unread
    let (mut g, bound) = steer_conn(addr, "mme-1").await;
    assert_eq!(
        bound,
        Frame::Bound {
            route: 1,
            last_seq: 300
        }
    );
    // A seq at or below it is ignored (no output); the next one is answered.
    g.send(echo(300)).await.unwrap();
    g.send(echo(301)).await.unwrap();
    match g.next().await.unwrap().unwrap() {
        Frame::Output(o) => assert_eq!(o.seq, 301),
        other => panic!("expected the output of seq 301, got {other:?}"),
    }
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
        .request(&AdminRequest::CreateInstance {
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
    let stats = admin.request(&AdminRequest::Stats).await.unwrap();
    assert_eq!(stats["instances"][0]["instance"], "mme-1");

    // Malformed JSON is refused and the connection stays usable.
    let mut raw = Framed::new(TcpStream::connect(addr).await.unwrap(), FrameCodec);
    raw.send(Frame::Hello {
        role: Role::Admin,
        name: "t".into(),
        min_version: VERSION,
        max_version: VERSION,
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
