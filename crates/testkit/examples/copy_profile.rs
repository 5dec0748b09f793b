//! Profiling aid: populate N UEs on an in-process node, then time one full copy to another.
use futures::{SinkExt, StreamExt};
use handoff_function::SignalKind;
use handoff_node::client::AdminClient;
use handoff_node::ops;
use handoff_vmme::{Header, Signal, SignalBody};
use handoff_wire::{Frame, SignalFrame};
use std::time::Instant;

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
        now_us: seq,
        kind: kind as u8,
        flags: 0,
        client: "127.0.0.1:9".parse().unwrap(),
        key: handoff_vmme::session_key(imsi),
        payload: s.to_bytes().into(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(100_000);
    let (_na, a) = handoff_testkit::must_start_node("node-a", true).await;
    let (_nb, b) = handoff_testkit::must_start_node("node-b", true).await;
    let f = handoff_testkit::must_connect_as_steer(a, "mme-1").await;
    let t = Instant::now();
    let (mut tx, mut rx) = f.split();
    let reader = tokio::spawn(async move {
        let mut outputs = 0;
        while outputs < n {
            if let Frame::Output(_) = rx.next().await.unwrap().unwrap() {
                outputs += 1;
            }
        }
    });
    for i in 0..n {
        tx.feed(signal(
            i + 1,
            1_010_000_000_000 + i,
            SignalKind::Create,
            handoff_testkit::attach_body(),
        ))
        .await
        .unwrap();
    }
    SinkExt::<Frame>::flush(&mut tx).await.unwrap();
    reader.await.unwrap();
    eprintln!("populated {n} in {:?}", t.elapsed());
    if let Some(secs) = std::env::var("COPY_PROFILE_SETTLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Lets a profiler started with a delay skip the population.
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
    let mut admin_a = AdminClient::connect(a, "").await.unwrap();
    if std::env::args().nth(2).as_deref() == Some("push") {
        // The pre-copy baseline's first round, for comparison (node-b hosts mme-1 too).
        let t = Instant::now();
        let p = admin_a
            .call(&ops::Push {
                instance: "mme-1".into(),
                destination: b,
                since_seq: 0,
                after_seq: 0,
                last: true,
            })
            .await
            .unwrap();
        eprintln!(
            "push {:?}: {} records {} bytes; {:.0} MB/s",
            t.elapsed(),
            p.records,
            p.bytes,
            p.bytes as f64 / t.elapsed().as_secs_f64() / 1e6
        );
        return;
    }
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
    let t = Instant::now();
    let r = admin_a.call(&copy).await.unwrap();
    eprintln!(
        "copy {:?}: {} records {} bytes manifest {} ms stream {} ms elapsed {} ms; {:.0} MB/s",
        t.elapsed(),
        r.records_copied,
        r.bytes_copied,
        r.manifest_ms,
        r.stream_ms,
        r.elapsed_ms,
        r.bytes_copied as f64 / t.elapsed().as_secs_f64() / 1e6
    );
}
