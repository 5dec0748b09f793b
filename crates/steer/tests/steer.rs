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
