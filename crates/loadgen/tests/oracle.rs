//! End to end on loopback: load generator → steer → node, then the oracle on the node's dump.

use bytes::Bytes;
use handoff_loadgen::{oracle, LoadConfig};
use handoff_node::client::AdminClient;
use handoff_vmme::{UeContext, Vmme};
use std::net::SocketAddr;
use std::time::Duration;

async fn cluster() -> (SocketAddr, handoff_steer::Steer, SocketAddr) {
    let (_node, node_addr) = handoff_testkit::must_start_node("node-t", true).await;
    let (steer, service) = handoff_testkit::must_start_steer(node_addr, 20).await;
    (node_addr, steer, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signal_answered_once_and_the_owner_state_matches_the_reference() {
    let (node_addr, _steer, service) = cluster().await;
    let cfg = LoadConfig {
        target: service,
        sessions: 400,
        rate: 800.0,
        duration: Duration::from_millis(1500),
        seed: 7,
        ..LoadConfig::default()
    };
    let (report, histories) = handoff_loadgen::run(cfg, |_| {}).await.unwrap();
    assert_eq!(report.attached, 400);
    assert!(report.signals_sent > 400 * 4 + 1000, "{report:?}");
    assert_eq!(report.answered, report.signals_sent);
    assert_eq!(
        (report.lost, report.duplicated, report.reordered),
        (0, 0, 0)
    );
    assert_eq!(report.wrong_answers, 0);

    let mut admin = AdminClient::connect(node_addr, "test").await.unwrap();
    let mut dump = admin.dump("mme-1").await.unwrap();
    let vmme = Vmme::default();
    let r = oracle::check(&vmme, &histories, &dump);
    assert_eq!(r.checked, 400, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.expected_present as usize, dump.len());
    // Some UEs detached during the run, and the oracle expected exactly those to be absent.
    assert!(r.expected_present < 400);

    // The oracle is not vacuous: one changed field in one record is caught...
    let mut ctx = UeContext::decode(&dump[0].bytes).unwrap();
    ctx.nas_ul_count += 1;
    dump[0].bytes = Bytes::from(ctx.to_bytes());
    assert_eq!(oracle::check(&vmme, &histories, &dump).mismatches, 1);
    // ...and so is a lost session or one the reference does not know.
    let lost = dump.remove(0);
    assert_eq!(oracle::check(&vmme, &histories, &dump).mismatches, 1);
    let mut stray = lost.clone();
    stray.key = handoff_vmme::session_key(999_999_999_999_999);
    dump.push(stray);
    assert_eq!(oracle::check(&vmme, &histories, &dump).unknown_records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_load_merges_into_one_report_and_the_oracle_still_holds() {
    let (node_addr, _steer, service) = cluster().await;
    let cfg = LoadConfig {
        target: service,
        sessions: 301,
        rate: 900.0,
        duration: Duration::from_millis(1000),
        seed: 11,
        latency_from_send: true,
        ..LoadConfig::default()
    };
    let (report, histories) = handoff_loadgen::run_sharded(cfg, 3).await.unwrap();
    assert_eq!(report.shards, 3);
    assert_eq!((report.sessions, report.attached), (301, 301), "{report:?}");
    assert_eq!(histories.len(), 301);
    assert_eq!(report.answered, report.signals_sent);
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.reordered,
            report.stray
        ),
        (0, 0, 0, 0)
    );
    // Every measured transaction's first send was scheduled, so each has a lateness.
    assert!(report.schedule_lag_us.count > 0, "{report:?}");
    assert!(report.latency_us.count > 0, "{report:?}");
    // The three shards' UEs are one contiguous IMSI range: the oracle finds every one.
    let mut admin = AdminClient::connect(node_addr, "test").await.unwrap();
    let dump = admin.dump("mme-1").await.unwrap();
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(r.checked, 301, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
}
