//! A live move of `mme-1` from node A to node B while the load generator signals: nothing lost,
//! duplicated or reordered, and the destination's state equals the reference.

use handoff_loadgen::{oracle, LoadConfig};
use handoff_node::client::AdminClient;
use handoff_node::copy::CopyReport;
use handoff_node::ops;
use handoff_vmme::Vmme;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_move_mid_run_loses_nothing_and_the_destination_matches_the_reference() {
    let copy = must_move_under_load(0, handoff_state::CopyOrder::HotFirst).await;
    assert!(copy.resends.is_empty(), "{copy:?}");
}

/// Seed 000 R12: records corrupted on the way make the digests differ; only the differing
/// buckets are re-sent (while signals keep flowing), the digests then match, and the
/// destination's state equals the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_mismatch_is_repaired_by_resending_only_the_differing_buckets() {
    // Random order: the first records are mostly cold sessions (Zipf), which the load leaves
    // alone afterwards, so an unrepaired corruption would still be there for the oracle.
    let copy = must_move_under_load(4, handoff_state::CopyOrder::Random { seed: 7 }).await;
    assert_eq!(copy.resends.len(), 1, "{copy:?}");
    let buckets = copy.resends[0].buckets.len();
    assert!((1..=4).contains(&buckets), "{copy:?}");
    let resent = copy.resends[0].records;
    let all = copy.sessions_at_start;
    // Only the differing buckets' sessions went again (256 buckets in all).
    assert!(resent > 0 && resent * 8 < all, "{copy:?}");
}

/// Moves mme-1 from a fresh node A to node B under load in `order` (the first `corrupt`
/// copied records arrive corrupted at B), checks the load generator's and the oracle's verdicts on B, and returns
/// the copy's report.
async fn must_move_under_load(corrupt: u64, order: handoff_state::CopyOrder) -> CopyReport {
    let (_a, a) = handoff_testkit::must_start_node("node-a", true).await;
    let (node_b, b) = handoff_testkit::must_start_node("node-b", false).await;
    // Byte 8 of a UE context record is the low byte of its IMSI (docs/s1ap-lite.md): a field
    // no later signal rewrites, so a corruption left in place shows in the oracle.
    node_b.corrupt_copy_records(corrupt, 8);
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
        .call(&ops::PrepareShadow {
            instance: "mme-1".into(),
            function: "vmme".into(),
            move_tag: None,
        })
        .await
        .unwrap();
    let first = steer.begin_move("mme-1", b, false).await.unwrap();
    assert!(first > 0);
    let copy = admin_a
        .call(&ops::CopyTo {
            instance: "mme-1".into(),
            destination: b,
            order,
            plan: handoff_state::CopyPlan::default(),
            after_seq: first - 1,
            keys: None,
            lead_ms: 0,
            move_tag: None,
            incarnation: None,
        })
        .await
        .unwrap();
    assert!(copy.digest_match, "{copy:?}");
    assert!(copy.differing_buckets.is_empty(), "{copy:?}");
    assert_eq!(copy.records_copied, copy.sessions_at_start);
    let shadow = admin_b
        .call(&ops::ShadowStats {
            instance: "mme-1".into(),
        })
        .await
        .unwrap()
        .expect("a shadow");
    assert_eq!(shadow.awaiting, 0, "{shadow:?}");
    assert_eq!(shadow.buffered, 0, "{shadow:?}");
    let boundary = steer.cutover("mme-1").await.unwrap().boundary;
    assert!(boundary > first);
    admin_b
        .call(&ops::FinishShadow {
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
    let b_stats = admin_b.call(&ops::Stats {}).await.unwrap();
    assert!(b_stats.instances[0].stats.runtime.last_seq >= boundary);
    copy
}
