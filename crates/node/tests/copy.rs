//! A move's copy between two nodes on loopback: manifest, records, tombstones, digest.

use futures::{SinkExt, StreamExt};
use handoff_function::SignalKind;
use handoff_node::client::{AdminClient, ClientError};
use handoff_node::ops;
use handoff_vmme::{Header, Signal, SignalBody};
use handoff_wire::{Frame, SignalFrame};
use std::net::SocketAddr;

async fn node(name: &str) -> SocketAddr {
    handoff_testkit::must_start_node(name, true).await.1
}

fn signal(seq: u64, imsi: u64, kind: SignalKind, body: SignalBody) -> Frame {
    let s = Signal {
        header: Header {
            imsi,
            txn_id: seq as u32,
        },
        body,
    };
    Frame::Signal(SignalFrame {
        route: 1,
        seq,
        now_us: seq * 1000,
        kind: kind as u8,
        flags: 0,
        client: "127.0.0.1:9".parse().unwrap(),
        key: handoff_vmme::session_key(imsi),
        payload: s.to_bytes().into(),
    })
}

fn attach() -> SignalBody {
    handoff_testkit::attach_body()
}

/// Attaches `n` UEs on the node, then detaches every tenth; waits for every answer.
async fn populate(addr: SocketAddr, n: u64) {
    let mut f = handoff_testkit::must_connect_as_steer(addr, "mme-1").await;
    let mut seq = 0;
    let mut sent = 0;
    for i in 0..n {
        seq += 1;
        f.feed(signal(
            seq,
            1_010_000_000_000 + i,
            SignalKind::Create,
            attach(),
        ))
        .await
        .unwrap();
        sent += 1;
    }
    for i in (0..n).step_by(10) {
        seq += 1;
        let body = SignalBody::DetachRequest { switch_off: false };
        f.feed(signal(seq, 1_010_000_000_000 + i, SignalKind::Delete, body))
            .await
            .unwrap();
        sent += 1;
    }
    SinkExt::<Frame>::flush(&mut f).await.unwrap();
    let mut outputs = 0;
    while outputs < sent {
        if let Frame::Output(_) = f.next().await.unwrap().unwrap() {
            outputs += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_delivers_every_session_once_and_the_digests_match() {
    let (a, b) = (node("node-a").await, node("node-b").await);
    populate(a, 500).await;
    let mut admin_a = AdminClient::connect(a, "t").await.unwrap();
    let mut admin_b = AdminClient::connect(b, "t").await.unwrap();
    let copy = ops::CopyTo {
        instance: "mme-1".into(),
        destination: b,
        order: handoff_state::CopyOrder::HotFirst,
        plan: handoff_state::CopyPlan::default(),
        after_seq: 0,
        keys: None,
        lead_ms: 0,
        move_tag: None,
        incarnation: None,
    };
    let r = admin_a.call(&copy).await.unwrap();
    assert_eq!(r.sessions_at_start, 450);
    assert_eq!(r.records_copied, 450);
    assert!(r.digest_match, "{r:?}");
    let stats = admin_b
        .call(&ops::ShadowStats {
            instance: "mme-1".into(),
        })
        .await
        .unwrap()
        .expect("a shadow");
    assert_eq!((stats.awaiting, stats.buffered), (0, 0), "{stats:?}");
    admin_b
        .call(&ops::FinishShadow {
            instance: "mme-1".into(),
            force: false,
        })
        .await
        .unwrap();
    let (da, db) = (
        admin_a.dump("mme-1").await.unwrap(),
        admin_b.dump("mme-1").await.unwrap(),
    );
    assert_eq!(da.len(), 450);
    assert_eq!(da, db, "the destination holds exactly the source's records");

    // A second copy onto a destination that is no longer empty is refused.
    let err = admin_a.call(&copy).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err}");
    assert_eq!(err.code(), Some(handoff_wire::code::WRONG_PHASE), "{err}");
    assert!(err.to_string().contains("must start empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infeasible_plan_is_refused_before_anything_is_sent() {
    let (a, b) = (node("node-a").await, node("node-b").await);
    populate(a, 100).await;
    let mut admin_a = AdminClient::connect(a, "t").await.unwrap();
    let copy = ops::CopyTo {
        instance: "mme-1".into(),
        destination: b,
        order: handoff_state::CopyOrder::Key,
        plan: handoff_state::CopyPlan {
            max_bandwidth_bps: Some(1_000),
            max_cpu_percent: None,
            deadline_ms: Some(1_000),
        },
        after_seq: 0,
        keys: None,
        lead_ms: 0,
        move_tag: None,
        incarnation: None,
    };
    let err = admin_a.call(&copy).await.unwrap_err();
    assert_eq!(err.code(), Some(handoff_wire::code::BAD_REQUEST), "{err}");
    assert!(
        err.to_string().contains("cannot be copied within 1000 ms"),
        "{err}"
    );
    let mut admin_b = AdminClient::connect(b, "t").await.unwrap();
    let stats = admin_b
        .call(&ops::ShadowStats {
            instance: "mme-1".into(),
        })
        .await
        .unwrap();
    assert!(
        stats.is_none(),
        "the destination never became a shadow: {stats:?}"
    );
}
