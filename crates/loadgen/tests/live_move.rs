//! A live move of `mme-1` from node A to node B while the load generator signals: nothing lost,
//! duplicated or reordered, and the destination's state equals the reference.

use handoff_loadgen::{oracle, LoadConfig};
use handoff_node::client::AdminClient;
use handoff_node::AdminRequest;
use handoff_vmme::Vmme;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_move_mid_run_loses_nothing_and_the_destination_matches_the_reference() {
    let copy = must_move_under_load(0, handoff_state::CopyOrder::HotFirst).await;
    assert_eq!(copy["resends"].as_array().map(Vec::len), Some(0), "{copy}");
}

/// Seed 000 R12: records corrupted on the way make the digests differ; only the differing
/// buckets are re-sent (while signals keep flowing), the digests then match, and the
/// destination's state equals the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_mismatch_is_repaired_by_resending_only_the_differing_buckets() {
    // Random order: the first records are mostly cold sessions (Zipf), which the load leaves
    // alone afterwards, so an unrepaired corruption would still be there for the oracle.
    let copy = must_move_under_load(4, handoff_state::CopyOrder::Random { seed: 7 }).await;
    let resends = copy["resends"].as_array().expect("resends").clone();
    assert_eq!(resends.len(), 1, "{copy}");
    let buckets = resends[0]["buckets"].as_array().unwrap().len() as u64;
    assert!((1..=4).contains(&buckets), "{copy}");
    let resent = resends[0]["records"].as_u64().unwrap();
    let all = copy["sessions_at_start"].as_u64().unwrap();
    // Only the differing buckets' sessions went again (256 buckets in all).
    assert!(resent > 0 && resent * 8 < all, "{copy}");
}

/// Moves mme-1 from a fresh node A to node B under load in `order` (the first `corrupt`
/// copied records arrive corrupted at B), checks the load generator's and the oracle's verdicts on B, and returns
/// the copy's report.
async fn must_move_under_load(corrupt: u64, order: handoff_state::CopyOrder) -> serde_json::Value {
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
            order,
            plan: handoff_state::CopyPlan::default(),
            after_seq: first - 1,
            keys: None,
            lead_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(copy["digest_match"], true, "{copy}");
    assert_eq!(copy["differing_buckets"].as_array().map(Vec::len), Some(0));
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
    copy
}
