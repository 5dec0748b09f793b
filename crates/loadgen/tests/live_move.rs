//! A live move of `mme-1` from node A to node B while the load generator signals: nothing lost,
//! duplicated or reordered, and the destination's state equals the reference.

use handoff_loadgen::{oracle, LoadConfig};
use handoff_node::client::AdminClient;
use handoff_node::AdminRequest;
use handoff_vmme::Vmme;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_move_mid_run_loses_nothing_and_the_destination_matches_the_reference() {
    let (_a, a) = handoff_testkit::must_start_node("node-a", true).await;
    let (_b, b) = handoff_testkit::must_start_node("node-b", false).await;
    let (steer, service) = handoff_testkit::must_start_steer(a, 20).await;
    let load = tokio::spawn(handoff_loadgen::run(
        LoadConfig {
            target: service,
            sessions: 600,
            rate: 1500.0,
            duration: Duration::from_millis(2500),
            seed: 11,
            ..LoadConfig::default()
        },
        |_| {},
    ));
    // Let the attach phase finish and the measured phase run a little, then move.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut admin_a = AdminClient::connect(a, "t").await.unwrap();
    let mut admin_b = AdminClient::connect(b, "t").await.unwrap();
    admin_b
        .request(&AdminRequest::PrepareShadow {
            instance: "mme-1".into(),
            function: "vmme".into(),
        })
        .await
        .unwrap();
    let first = steer.begin_move("mme-1", b, false).await.unwrap();
    assert!(first > 0);
    let copy = admin_a
        .request(&AdminRequest::CopyTo {
            instance: "mme-1".into(),
            destination: b,
            order: handoff_state::CopyOrder::HotFirst,
            plan: handoff_state::CopyPlan::default(),
            after_seq: first - 1,
            keys: None,
            lead_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(copy["digest_match"], true, "{copy}");
    assert_eq!(copy["records_copied"], copy["sessions_at_start"]);
    let shadow = admin_b
        .request(&AdminRequest::ShadowStats {
            instance: "mme-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(shadow["awaiting"], 0, "{shadow}");
    assert_eq!(shadow["buffered"], 0, "{shadow}");
    let boundary = steer.cutover("mme-1").await.unwrap().boundary;
    assert!(boundary > first);
    admin_b
        .request(&AdminRequest::FinishShadow {
            instance: "mme-1".into(),
            force: false,
        })
        .await
        .unwrap();
    steer.finish_move("mme-1").await.unwrap();

    let (report, histories) = load.await.unwrap().unwrap();
    assert_eq!(report.answered, report.signals_sent, "{report:?}");
    assert_eq!(
        (report.lost, report.duplicated, report.reordered),
        (0, 0, 0),
        "{report:?}"
    );
    assert_eq!((report.wrong_answers, report.stray), (0, 0), "{report:?}");

    let dump = admin_b.dump("mme-1").await.unwrap();
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(r.checked, 600, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
    // Signals kept flowing to the destination after the cutover.
    let b_stats = admin_b.request(&AdminRequest::Stats).await.unwrap();
    assert!(
        b_stats["instances"][0]["stats"]["last_seq"]
            .as_u64()
            .unwrap()
            >= boundary
    );
}
