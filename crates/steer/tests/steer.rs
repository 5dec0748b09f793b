//! The steer against a real node on loopback: malformed input is counted and dropped while
//! valid traffic keeps being answered.

use handoff_node::Node;
use handoff_steer::Steer;
use handoff_vmme::{Header, Response, ResponseBody, Signal, SignalBody};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

async fn cluster() -> (Arc<Node>, Steer, SocketAddr) {
    let (node, node_addr) = handoff_testkit::must_start_node("node-t", true).await;
    let (steer, addr) = handoff_testkit::must_start_steer(node_addr, 1000).await;
    (node, steer, addr)
}

async fn ask(sock: &UdpSocket, to: SocketAddr, s: &Signal) -> Response {
    sock.send_to(&s.to_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    assert_eq!(from, to, "answers must come from the service address");
    Response::decode(&buf[..n]).unwrap()
}

fn echo(imsi: u64, txn_id: u32) -> Signal {
    Signal {
        header: Header { imsi, txn_id },
        body: SignalBody::Echo {
            nonce: u64::from(txn_id) * 7,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_counted_and_dropped_while_valid_ones_are_answered() {
    let (node, steer, service) = cluster().await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let valid = echo(1_010_000_000_001, 1).to_bytes();
    let answer_type = Response {
        header: Header {
            imsi: 1_010_000_000_001,
            txn_id: 1,
        },
        body: ResponseBody::DetachAccept,
    }
    .to_bytes();
    let mut trailing = valid.clone();
    trailing.push(0);
    let mut bad_version = valid.clone();
    bad_version[0] = 9;
    let malformed: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        valid[..valid.len() - 1].to_vec(),
        trailing,
        bad_version,
        answer_type,
        b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n".to_vec(),
        vec![0u8; 1500],
    ];
    let rounds = 20u32;
    let mut txn = 1;
    for _ in 0..rounds {
        for m in &malformed {
            client.send_to(m, service).await.unwrap();
        }
        txn += 1;
        let r = ask(&client, service, &echo(1_010_000_000_001, txn)).await;
        assert_eq!(r.header.txn_id, txn);
        assert_eq!(
            r.body,
            ResponseBody::EchoResponse {
                nonce: u64::from(txn) * 7
            }
        );
    }
    // A stateful procedure still works after the flood.
    let attach = Signal {
        header: Header {
            imsi: 1_010_000_000_002,
            txn_id: 1,
        },
        body: handoff_testkit::attach_body(),
    };
    let r = ask(&client, service, &attach).await;
    assert!(
        matches!(r.body, ResponseBody::AuthenticationRequest { .. }),
        "{r:?}"
    );

    // The relay counts an output just after sending it: give the counter a moment.
    let stats = steer.stats("mme-1").unwrap();
    for _ in 0..200 {
        if stats.snapshot().outputs_relayed == u64::from(rounds) + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = stats.snapshot();
    assert_eq!(s.malformed, u64::from(rounds) * malformed.len() as u64);
    assert_eq!(s.admitted, u64::from(rounds) + 1);
    assert_eq!(s.outputs_relayed, u64::from(rounds) + 1);
    // The one attach created one session; nothing else touched the table.
    let h = node.instance("mme-1").unwrap();
    assert_eq!(h.table().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_take_seqs_and_signals_keep_strictly_increasing_seqs() {
    let (node, steer, service) = cluster().await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for txn in 1..=50 {
        ask(&client, service, &echo(1_010_000_000_009, txn)).await;
    }
    let h = node.instance("mme-1").unwrap().stats();
    let s = steer.stats("mme-1").unwrap().snapshot();
    // Every stamped signal (50 echoes and the ticks so far) was applied, none twice, and the
    // instance never saw a seq the steer had not stamped.
    assert_eq!(h.runtime.stale, 0);
    assert!(h.runtime.processed >= 50);
    assert!(h.runtime.last_seq >= 50 && h.runtime.last_seq <= s.last_seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datagram_the_service_reads_is_counted_once() {
    // A service whose node is not there: every valid datagram is dropped for want of a link.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_node = nowhere.local_addr().unwrap();
    drop(nowhere);
    let catalog = handoff_testkit::catalog();
    let steer = Steer::start(
        handoff_steer::SteerConfig {
            tick_ms: 3_600_000,
            services: vec![handoff_steer::ServiceConfig {
                instance: "mme-1".into(),
                function: "vmme".into(),
                listen: "127.0.0.1:0".parse().unwrap(),
                node: dead_node,
            }],
            ..handoff_steer::SteerConfig::default()
        },
        |f| catalog.classifier(f),
    )
    .await
    .unwrap();
    let service = steer.service_addr("mme-1").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for txn in 0..30u32 {
        client
            .send_to(&echo(1_010_000_000_001, txn).to_bytes(), service)
            .await
            .unwrap();
        client.send_to(b"junk", service).await.unwrap();
    }
    let stats = steer.stats("mme-1").unwrap();
    let mut s = stats.snapshot();
    for _ in 0..400 {
        s = stats.snapshot();
        if s.admitted + s.malformed + s.shed + s.no_link + s.unrouted == 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (s.admitted, s.malformed, s.no_link, s.shed, s.unrouted),
        (0, 30, 30, 0, 0),
        "{s:?}"
    );
}

/// A node stand-in that accepts the steer's links (hello, bind), answers as a node would,
/// and hands each connection to the test.
async fn fake_node() -> (
    SocketAddr,
    tokio::sync::mpsc::Receiver<tokio::net::TcpStream>,
) {
    use futures::{SinkExt, StreamExt};
    use handoff_wire::{Frame, FrameCodec};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut f = tokio_util::codec::Framed::new(stream, FrameCodec::new());
            let mut route = 0;
            for _ in 0..2 {
                match f.next().await {
                    Some(Ok(Frame::Bind { route: r, .. })) => route = r,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            let _ = f
                .send(Frame::HelloAck {
                    node: "fake".into(),
                })
                .await;
            let _ = f
                .send(Frame::Bound {
                    route,
                    last_seq: 0,
                    incarnation: 1,
                })
                .await;
            let _ = tx.send(f.into_inner()).await;
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_control_and_link_connections_are_closed_and_counted_a_quiet_link_is_kept() {
    use futures::{SinkExt, StreamExt};
    use handoff_wire::{Frame, FrameCodec, Role, VERSION};
    use tokio::io::AsyncWriteExt;
    let (node, mut links) = fake_node().await;
    let catalog = handoff_testkit::catalog();
    let steer = Steer::start(
        handoff_steer::SteerConfig {
            tick_ms: 3_600_000,
            control: Some("127.0.0.1:0".parse().unwrap()),
            frame_timeout_ms: 300,
            idle_timeout_ms: 1_000,
            services: vec![handoff_steer::ServiceConfig {
                instance: "mme-1".into(),
                function: "vmme".into(),
                listen: "127.0.0.1:0".parse().unwrap(),
                node,
            }],
            ..handoff_steer::SteerConfig::default()
        },
        |f| catalog.classifier(f),
    )
    .await
    .unwrap();
    let stats = steer.stats("mme-1").unwrap();
    let mut link = links.recv().await.unwrap();
    // The link stays up while nothing flows, well past the control idle limit.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        stats.snapshot().link_connects,
        1,
        "a quiet link was dropped"
    );
    // Half an output frame from the node, then nothing: the steer gives the connection up
    // and links again.
    let mut out = bytes::BytesMut::new();
    Frame::Error {
        code: 1,
        message: "x".into(),
    }
    .encode(&mut out);
    link.write_all(&out[..6]).await.unwrap();
    let relinked = tokio::time::timeout(Duration::from_secs(5), links.recv()).await;
    assert!(relinked.is_ok(), "the stalled link was not given up");
    let s = stats.snapshot();
    assert_eq!(s.link_stalled, 1, "{s:?}");

    // Control connections: half a request, or silence, closes them.
    let control = steer.control_addr().unwrap();
    let hello = || async move {
        let stream = tokio::net::TcpStream::connect(control).await.unwrap();
        let mut f = tokio_util::codec::Framed::new(stream, FrameCodec::new());
        f.send(Frame::Hello {
            role: Role::Admin,
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
    };
    let closed = |mut f: tokio_util::codec::Framed<tokio::net::TcpStream, FrameCodec>| async move {
        let t = std::time::Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(5), f.next()).await;
        assert!(
            matches!(end, Ok(None | Some(Err(_)))),
            "not closed: {end:?}"
        );
        t.elapsed()
    };
    let mut half = hello().await;
    let mut req = bytes::BytesMut::new();
    Frame::Admin(bytes::Bytes::from_static(br#"{"op":"status"}"#)).encode(&mut req);
    half.get_mut().write_all(&req[..10]).await.unwrap();
    let took = closed(half).await;
    assert!(took < Duration::from_millis(1_300), "{took:?}");
    let took = closed(hello().await).await;
    assert!(took >= Duration::from_millis(950), "{took:?}");
    let mut c = handoff_wire::client::ControlClient::connect(control, "t", "")
        .await
        .unwrap();
    let st = c
        .call(&handoff_steer::control::ops::Status {})
        .await
        .unwrap();
    assert_eq!(
        st.control,
        handoff_wire::deadline::ClosedConnections {
            closed_partial_frame: 1,
            closed_idle: 1,
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_spanning_many_receive_arenas_reach_the_node_intact_and_are_answered_once() {
    // Some 40 bytes each, 12 000 echoes fill several 256 KiB receive arenas: an arena reused
    // or replaced while a queued signal still pointed into it would corrupt that signal, and
    // its answer would be missing, wrong, or counted malformed.
    let (_node, steer, service) = cluster().await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let total = 12_000u32;
    let burst = 400u32;
    let base = 1_010_000_000_001u64;
    let mut seen = vec![false; total as usize];
    let mut buf = vec![0u8; 65_536];
    let mut txn = 0u32;
    while txn < total {
        let end = (txn + burst).min(total);
        for t in txn..end {
            let s = echo(base + u64::from(t % 1000), t);
            client.send_to(&s.to_bytes(), service).await.unwrap();
        }
        for _ in txn..end {
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .expect("every echo of a burst is answered within 5 s")
                    .unwrap();
            assert_eq!(from, service);
            let r = Response::decode(&buf[..n]).unwrap();
            let t = r.header.txn_id;
            assert!(t < total, "{r:?}");
            assert_eq!(r.header.imsi, base + u64::from(t % 1000), "{r:?}");
            assert_eq!(
                r.body,
                ResponseBody::EchoResponse {
                    nonce: u64::from(t) * 7
                }
            );
            assert!(!seen[t as usize], "echo {t} answered twice");
            seen[t as usize] = true;
        }
        txn = end;
    }
    assert!(seen.iter().all(|s| *s));
    let s = steer.stats("mme-1").unwrap().snapshot();
    assert_eq!(
        (s.admitted, s.malformed, s.shed, s.recv_errors),
        (u64::from(total), 0, 0, 0),
        "{s:?}"
    );
}
