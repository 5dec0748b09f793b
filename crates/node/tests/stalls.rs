//! What a node does with connections and datagrams that go nowhere: a frame begun and never
//! finished, an admin or peer connection that stays silent, a copy whose requester hung up,
//! malformed datagrams on the direct path. Each is closed, stopped or dropped, and counted in
//! the `stats` reply.

use futures::{SinkExt, StreamExt};
use handoff_function::SignalKind;
use handoff_node::client::AdminClient;
use handoff_node::{ops, Node, NodeLimits};
use handoff_vmme::{Header, Signal, SignalBody};
use handoff_wire::client::ControlClient;
use handoff_wire::deadline::Deadlines;
use handoff_wire::{Frame, FrameCodec, Role, SignalFrame, VERSION};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const FRAME_MS: u64 = 300;
const IDLE_MS: u64 = 1_000;

/// A node hosting `mme-1` whose connections have short limits.
async fn node_with_short_limits() -> (Arc<Node>, SocketAddr) {
    let limits = NodeLimits {
        deadlines: Deadlines::control_ms(FRAME_MS, IDLE_MS),
        ..NodeLimits::default()
    };
    let node = Node::with_token("node-s", handoff_testkit::catalog(), limits, String::new());
    node.create_instance("mme-1", "vmme").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(handoff_node::serve(node.clone(), listener));
    (node, addr)
}

/// A connection that said hello as `role` and got its ack.
async fn hello(addr: SocketAddr, role: Role) -> Framed<TcpStream, FrameCodec> {
    let mut f = Framed::new(TcpStream::connect(addr).await.unwrap(), FrameCodec::new());
    f.send(Frame::Hello {
        role,
        name: "t".into(),
        min_version: VERSION,
        max_version: VERSION,
        token: String::new(),
    })
    .await
    .unwrap();
    assert!(matches!(
        f.next().await.unwrap().unwrap(),
        Frame::HelloAck { .. }
    ));
    f
}

/// Waits (at most 5 s) for the node to close `f`; returns how long that took.
async fn closed_within(f: &mut Framed<TcpStream, FrameCodec>) -> Duration {
    let t = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), f.next()).await {
            Err(_) => panic!("the node did not close the connection within 5 s"),
            Ok(None | Some(Err(_))) => return t.elapsed(),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Half of an admin request's header: what a stalled peer leaves behind.
async fn half_a_frame(f: &mut Framed<TcpStream, FrameCodec>) {
    let mut buf = bytes::BytesMut::new();
    Frame::Admin(bytes::Bytes::from_static(br#"{"op":"stats"}"#)).encode(&mut buf);
    f.get_mut().write_all(&buf[..5]).await.unwrap();
}

async fn stats(addr: SocketAddr) -> ops::NodeStats {
    let mut a = AdminClient::connect(addr, "stats").await.unwrap();
    a.call(&ops::Stats {}).await.unwrap()
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
async fn a_stalled_frame_or_a_silent_admin_connection_is_closed_and_counted() {
    let (_node, addr) = node_with_short_limits().await;

    // Half a frame after the hello: closed once the frame limit has passed.
    let mut admin = hello(addr, Role::Admin).await;
    half_a_frame(&mut admin).await;
    let took = closed_within(&mut admin).await;
    assert!(took >= Duration::from_millis(FRAME_MS - 50), "{took:?}");
    assert!(took < Duration::from_millis(FRAME_MS + 1_000), "{took:?}");

    // An admin and a peer connection that say nothing: closed once idle for the limit.
    for role in [Role::Admin, Role::Peer] {
        let mut silent = hello(addr, role).await;
        let took = closed_within(&mut silent).await;
        assert!(
            took >= Duration::from_millis(IDLE_MS - 50),
            "{role:?}: {took:?}"
        );
        assert!(
            took < Duration::from_millis(IDLE_MS + 1_000),
            "{role:?}: {took:?}"
        );
    }

    // A steer's link may be silent (no traffic) for longer than the idle limit: kept.
    let mut steer = handoff_testkit::must_connect_as_steer(addr, "mme-1").await;
    assert!(matches!(
        steer.next().await.unwrap().unwrap(),
        Frame::HelloAck { .. }
    ));
    assert!(matches!(
        steer.next().await.unwrap().unwrap(),
        Frame::Bound { .. }
    ));
    let quiet = tokio::time::timeout(Duration::from_millis(IDLE_MS * 2), steer.next()).await;
    assert!(
        quiet.is_err(),
        "the steer's silent link was closed: {quiet:?}"
    );
    steer.send(echo(1)).await.unwrap();
    assert!(matches!(
        steer.next().await.unwrap().unwrap(),
        Frame::Output(_)
    ));
    // ... but not a frame begun and never finished on it.
    half_a_frame(&mut steer).await;
    let took = closed_within(&mut steer).await;
    assert!(took < Duration::from_millis(FRAME_MS + 1_000), "{took:?}");

    let s = stats(addr).await;
    assert_eq!(
        s.connections,
        handoff_wire::deadline::ClosedConnections {
            closed_partial_frame: 2,
            closed_idle: 2,
        },
        "{s:?}"
    );
}

/// Attaches `n` UEs on the node through a steer connection; waits for every answer.
async fn populate(addr: SocketAddr, n: u64) {
    let mut f = handoff_testkit::must_connect_as_steer(addr, "mme-1").await;
    for i in 0..n {
        let s = Signal {
            header: Header {
                imsi: 1_010_000_000_000 + i,
                txn_id: 1,
            },
            body: handoff_testkit::attach_body(),
        };
        f.feed(Frame::Signal(SignalFrame {
            route: 1,
            seq: i + 1,
            now_us: 1,
            kind: SignalKind::Create as u8,
            flags: 0,
            client: "127.0.0.1:9".parse().unwrap(),
            key: handoff_vmme::session_key(1_010_000_000_000 + i),
            payload: s.to_bytes().into(),
        }))
        .await
        .unwrap();
    }
    SinkExt::<Frame>::flush(&mut f).await.unwrap();
    let mut outputs = 0;
    while outputs < n {
        if let Frame::Output(_) = f.next().await.unwrap().unwrap() {
            outputs += 1;
        }
    }
}

async fn records_at(b: SocketAddr) -> u64 {
    let mut admin = AdminClient::connect(b, "t").await.unwrap();
    admin
        .call(&ops::ShadowStats {
            instance: "mme-1".into(),
        })
        .await
        .unwrap()
        .map_or(0, |s| s.records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_stops_when_its_requester_hangs_up() {
    let (_na, a) = handoff_testkit::must_start_node("node-a", true).await;
    let (_nb, b) = handoff_testkit::must_start_node("node-b", true).await;
    populate(a, 3_000).await;
    let copy = |plan| ops::CopyTo {
        instance: "mme-1".into(),
        destination: b,
        order: handoff_state::CopyOrder::HotFirst,
        plan,
        after_seq: 0,
        keys: None,
        lead_ms: 0,
        move_tag: None,
        incarnation: None,
    };
    // Paced so that the copy takes several seconds (past its first burst).
    let slow = handoff_state::CopyPlan {
        max_bandwidth_bps: Some(100_000),
        ..handoff_state::CopyPlan::default()
    };
    let mut requester = ControlClient::connect(a, "mover", "").await.unwrap();
    requester.send_op(&copy(slow)).await.unwrap();
    let mut started = 0;
    for _ in 0..100 {
        started = records_at(b).await;
        if started > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started > 0, "the copy never started");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(requester);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_hang_up = records_at(b).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let later = records_at(b).await;
    assert!(
        after_hang_up < 3_000,
        "the copy ended before the hang-up: the test needs a slower plan"
    );
    assert_eq!(
        later, after_hang_up,
        "records kept arriving after the requester hung up"
    );
    // The source is free to copy again (its cancelled copy ended): a repeat completes.
    let mut admin = AdminClient::connect(a, "t").await.unwrap();
    let r = admin
        .call(&copy(handoff_state::CopyPlan::default()))
        .await
        .unwrap();
    assert!(r.digest_match, "{r:?}");
    assert_eq!(r.records_copied, 3_000, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datagram_on_the_direct_path_is_counted_in_stats() {
    let (node, addr) = handoff_testkit::must_start_node("node-d", true).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let direct = socket.local_addr().unwrap();
    let classifier = node.classifier("mme-1").unwrap();
    tokio::spawn(handoff_node::serve_direct(
        node.instance("mme-1").unwrap(),
        classifier,
        socket,
        Duration::from_secs(3_600),
        node.shutdown_token(),
        node.direct_stats("mme-1"),
    ));
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(direct).await.unwrap();
    for junk in [&b""[..], b"\x00", b"not a signal at all", &[0xff; 300]] {
        client.send(junk).await.unwrap();
    }
    let mut buf = vec![0u8; 65_536];
    for i in 0..3u64 {
        let s = Signal {
            header: Header {
                imsi: 1_010_000_000_001,
                txn_id: i as u32,
            },
            body: SignalBody::Echo { nonce: i },
        };
        client.send(&s.to_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
    }
    let s = stats(addr).await;
    assert_eq!(s.direct.len(), 1, "{s:?}");
    let d = &s.direct[0];
    assert_eq!(d.instance, "mme-1");
    assert_eq!((d.admitted, d.malformed), (3, 4), "{d:?}");
    // Datagrams that reach a stopped instance are counted too (one sent while its task winds
    // down may still count as admitted): every datagram sent is counted exactly once.
    node.drop_instance("mme-1").unwrap();
    let mut sent = 7u64;
    let mut d = stats(addr).await.direct[0].clone();
    for txn in 10..110u32 {
        let s = Signal {
            header: Header {
                imsi: 1_010_000_000_001,
                txn_id: txn,
            },
            body: SignalBody::Echo { nonce: 9 },
        };
        client.send(&s.to_bytes()).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        d = stats(addr).await.direct[0].clone();
        if d.instance_stopped > 0 && d.admitted + d.malformed + d.instance_stopped == sent {
            break;
        }
    }
    assert!(d.instance_stopped > 0, "{d:?}");
    assert_eq!(d.admitted + d.malformed + d.instance_stopped, sent, "{d:?}");
    // The path goes on reading (and counting) what still arrives for the stopped instance.
    for junk in [&b"late"[..], b"later", b"latest"] {
        client.send(junk).await.unwrap();
        sent += 1;
    }
    for _ in 0..100 {
        d = stats(addr).await.direct[0].clone();
        if d.admitted + d.malformed + d.instance_stopped == sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.admitted + d.malformed + d.instance_stopped, sent, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_listed_sessions_runs_to_its_end_when_its_requester_hangs_up() {
    // An abort's way back: cancelling it would strand the sessions (a repeat is refused while
    // it runs), so it goes on.
    let (_na, a) = handoff_testkit::must_start_node("node-a", true).await;
    let (_nb, b) = handoff_testkit::must_start_node("node-b", true).await;
    populate(a, 1_500).await;
    let keys = (0..1_500)
        .map(|i| handoff_vmme::session_key(1_010_000_000_000 + i))
        .collect();
    let copy = ops::CopyTo {
        instance: "mme-1".into(),
        destination: b,
        order: handoff_state::CopyOrder::HotFirst,
        plan: handoff_state::CopyPlan {
            max_bandwidth_bps: Some(300_000),
            ..handoff_state::CopyPlan::default()
        },
        after_seq: 0,
        keys: Some(keys),
        lead_ms: 0,
        move_tag: None,
        incarnation: None,
    };
    let mut requester = ControlClient::connect(a, "mover", "").await.unwrap();
    requester.send_op(&copy).await.unwrap();
    let mut records = 0;
    for _ in 0..100 {
        records = records_at(b).await;
        if records > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(records > 0 && records < 1_500, "{records}");
    drop(requester);
    for _ in 0..500 {
        records = records_at(b).await;
        if records == 1_500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(records, 1_500, "the copy back stopped with its requester");
}
