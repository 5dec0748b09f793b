//! Push rounds between two serving instances (the stop-and-copy and pre-copy baselines):
//! everything first, then only what changed, with tombstones for deleted sessions.

use futures::{SinkExt, StreamExt};
use handoff_function::SignalKind;
use handoff_node::client::AdminClient;
use handoff_node::ops;
use handoff_node::push::PushReport;
use handoff_vmme::{Header, Signal, SignalBody};
use handoff_wire::{Frame, FrameCodec, SignalFrame};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const IMSI: u64 = 1_010_000_000_000;

/// A steer stand-in: one bound route, signals with dense seqs, waits for their answers.
struct Feeder {
    f: Framed<TcpStream, FrameCodec>,
    seq: u64,
}

impl Feeder {
    async fn connect(addr: SocketAddr) -> Self {
        let f = handoff_testkit::must_connect_as_steer(addr, "mme-1").await;
        Self { f, seq: 0 }
    }

    /// Sends one signal per `(imsi offset, kind, body)` and waits for every answer.
    async fn send(&mut self, signals: Vec<(u64, SignalKind, SignalBody)>) {
        let n = signals.len();
        for (i, kind, body) in signals {
            self.seq += 1;
            let s = Signal {
                header: Header {
                    imsi: IMSI + i,
                    txn_id: self.seq as u32,
                },
                body,
            };
            self.f
                .feed(Frame::Signal(SignalFrame {
                    route: 1,
                    seq: self.seq,
                    now_us: self.seq * 1000,
                    kind: kind as u8,
                    flags: 0,
                    client: "127.0.0.1:9".parse().unwrap(),
                    key: handoff_vmme::session_key(IMSI + i),
                    payload: s.to_bytes().into(),
                }))
                .await
                .unwrap();
        }
        SinkExt::<Frame>::flush(&mut self.f).await.unwrap();
        let mut outputs = 0;
        while outputs < n {
            if let Frame::Output(_) = self.f.next().await.unwrap().unwrap() {
                outputs += 1;
            }
        }
    }
}

fn attach(i: u64) -> (u64, SignalKind, SignalBody) {
    (i, SignalKind::Create, handoff_testkit::attach_body())
}

fn detach(i: u64) -> (u64, SignalKind, SignalBody) {
    (
        i,
        SignalKind::Delete,
        SignalBody::DetachRequest { switch_off: false },
    )
}

async fn push(admin: &mut AdminClient, to: SocketAddr, since_seq: u64, last: bool) -> PushReport {
    admin
        .call(&ops::Push {
            instance: "mme-1".into(),
            destination: to,
            since_seq,
            after_seq: 0,
            last,
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rounds_leave_the_destination_equal_to_the_source() {
    let (_na, a) = handoff_testkit::must_start_node("node-a", true).await;
    let (_nb, b) = handoff_testkit::must_start_node("node-b", true).await;
    let mut feed = Feeder::connect(a).await;
    feed.send((0..300).map(attach).collect()).await;
    let mut admin_a = AdminClient::connect(a, "t").await.unwrap();
    let mut admin_b = AdminClient::connect(b, "t").await.unwrap();

    let first = push(&mut admin_a, b, 0, false).await;
    assert_eq!(
        (first.records, first.tombstones, first.refused),
        (300, 0, 0)
    );
    assert_eq!(first.max_seq, 300);
    assert_eq!(
        admin_a.dump("mme-1").await.unwrap(),
        admin_b.dump("mme-1").await.unwrap()
    );

    // Detach every tenth UE, re-attach one of them; only those changes travel next.
    let mut changes: Vec<_> = (0..300).step_by(10).map(detach).collect();
    changes.push(attach(0));
    feed.send(changes).await;
    let second = push(&mut admin_a, b, first.max_seq, false).await;
    assert_eq!(second.records, 1, "{second:?}");
    assert_eq!(second.tombstones, 30, "{second:?}");
    assert_eq!(second.max_seq, 331);
    let (da, db) = (
        admin_a.dump("mme-1").await.unwrap(),
        admin_b.dump("mme-1").await.unwrap(),
    );
    assert_eq!(da.len(), 271);
    assert_eq!(da, db, "the destination holds exactly the source's records");

    // Nothing changed: the last round sends nothing and ends the sequence.
    let last = push(&mut admin_a, b, second.max_seq, true).await;
    assert_eq!((last.records, last.tombstones), (0, 0), "{last:?}");
    // A later round without a first one is refused: its tombstones would be unknown.
    let err = admin_a
        .call(&ops::Push {
            instance: "mme-1".into(),
            destination: b,
            since_seq: last.max_seq,
            after_seq: 0,
            last: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(handoff_wire::code::WRONG_PHASE), "{err}");
    assert!(err.to_string().contains("start again"), "{err}");
}
