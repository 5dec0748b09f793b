//! A controller restarted in the middle of a move reports what the move had done already:
//! its copy's figures come from the store, in `figures` and in the live `progress`.

use handoff_controller::daemon::{Controller, ControllerConfig, NodeEntry};
use handoff_controller::machine::{CopyOutcome, MoveMachine, MoveSpec, Phase};
use handoff_controller::store::Store;
use std::net::SocketAddr;
use std::time::Duration;

/// A node that accepts connections and never answers (a hung source): every request of the
/// resumed move waits for its timeout.
async fn hung_node() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_reports_the_copy_it_resumed_a_move_after() {
    let (a, b, steer) = (hung_node().await, hung_node().await, hung_node().await);
    let path = std::env::temp_dir().join(format!("handoff-restart-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // What the previous run left: a move past its cutover (draining), its copy done.
    let copy = CopyOutcome {
        sessions_at_start: 5_000,
        records_copied: 5_000,
        tombstones: 12,
        bytes_copied: 2_600_000,
        digest_match: true,
        ..CopyOutcome::default()
    };
    {
        let mut m = MoveMachine::new(
            MoveSpec {
                id: 1,
                instance: "mme-1".into(),
                function: "vmme".into(),
                source: a,
                destination: b,
                steer,
                order: handoff_state::CopyOrder::HotFirst,
                plan: handoff_state::CopyPlan::default(),
                abort_safe: false,
                lead_ms: 0,
                origin: "controller".into(),
            },
            0,
        )
        .unwrap();
        m.phase = Phase::Drain;
        m.figures.first_seq = 10;
        m.figures.cutover_seq = 900;
        m.figures.copy = copy.clone();
        m.figures.shadow.buffered_peak = 7;
        m.figures.phases_ms.insert("copy".into(), 1_200);
        m.phase_started_ms = 1_300;
        m.start_action();
        Store::open(&path).unwrap().put_move(&m).unwrap();
    }
    let c = Controller::start(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: path.clone(),
        nodes: vec![
            NodeEntry {
                name: "node-a".into(),
                addr: a,
            },
            NodeEntry {
                name: "node-b".into(),
                addr: b,
            },
        ],
        ..ControllerConfig::default()
    })
    .unwrap();
    // The resumed move waits on its hung source for a while; meanwhile it reports the copy.
    for _ in 0..20 {
        let s = c.move_status(1).unwrap();
        assert_eq!(s.phase, Phase::Drain);
        assert_eq!(s.figures.copy, copy, "{s:?}");
        let p = s.progress.expect("the move runs");
        assert_eq!(
            (p.sessions_at_start, p.records, p.bytes, p.buffered_peak),
            (5_000, 5_000, 2_600_000, 7),
            "{p:?}"
        );
        assert!(p.elapsed_ms >= 1_200, "{p:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    c.shutdown();
    drop(c);
    let _ = std::fs::remove_file(&path);
}
