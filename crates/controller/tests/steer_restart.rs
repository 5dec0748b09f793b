//! A steer restarted while a move's copy runs routes nothing for the instance until the
//! controller installs the route again. The controller notices while the copy still runs
//! (it watches the steer's route beside the copy), not only at the cutover after the whole
//! copy: the move aborts through a rebind and the source keeps every session.

use handoff_controller::daemon::{
    Controller, ControllerConfig, InstanceEntry, NodeEntry, SteerEntry,
};
use handoff_controller::machine::Phase;
use handoff_controller::ops;
use handoff_loadgen::LoadConfig;
use handoff_node::client::AdminClient;
use handoff_steer::{ServiceConfig, Steer, SteerConfig};
use std::time::Duration;

const TOKEN: &str = "s3cret";
const SESSIONS: u32 = 300;

async fn start_steer(cfg: &SteerConfig) -> Steer {
    let catalog = handoff_testkit::catalog();
    let steer = Steer::start(cfg.clone(), |f| catalog.classifier(f))
        .await
        .expect("start the steer");
    let stats = steer.stats("mme-1").expect("service stats");
    for _ in 0..1000 {
        if stats.snapshot().link_connects > 0 {
            return steer;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the steer never reached its node");
}

fn move_status(c: &std::sync::Arc<Controller>, id: u64) -> ops::MoveStatus {
    c.move_status(id).expect("move status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steer_restarted_during_the_copy_aborts_the_move_before_the_copy_ends() {
    let (_na, a) = handoff_testkit::must_start_node_with("node-a", true, TOKEN).await;
    let (_nb, b) = handoff_testkit::must_start_node_with("node-b", false, TOKEN).await;
    let dir = std::env::temp_dir().join(format!("handoff-steer-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = SteerConfig {
        name: "steer-1".into(),
        tick_ms: 20,
        token: TOKEN.into(),
        control: Some("127.0.0.1:0".parse().unwrap()),
        state_dir: Some(dir.clone()),
        services: vec![ServiceConfig {
            instance: "mme-1".into(),
            function: "vmme".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            node: a,
        }],
        ..SteerConfig::default()
    };
    let steer = start_steer(&cfg).await;
    // The restarted steer comes back on the same addresses.
    cfg.control = steer.control_addr();
    cfg.services[0].listen = steer.service_addr("mme-1").unwrap();
    let (report, _) = handoff_loadgen::run(
        LoadConfig {
            target: cfg.services[0].listen,
            sessions: SESSIONS,
            rate: 100.0,
            duration: Duration::from_millis(200),
            seed: 5,
            ..LoadConfig::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    let store = std::env::temp_dir().join(format!("handoff-sr-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&store);
    let controller = Controller::start(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        store: store.clone(),
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
        steers: vec![SteerEntry {
            name: "steer-1".into(),
            control: cfg.control.unwrap(),
        }],
        instances: vec![InstanceEntry {
            name: "mme-1".into(),
            function: "vmme".into(),
            node: "node-a".into(),
            steer: "steer-1".into(),
        }],
        ..ControllerConfig::default()
    })
    .unwrap();
    // The records follow only after a lead of 5 s: the copy runs that long at least.
    let started = controller
        .migrate(ops::Migrate {
            instance: "mme-1".into(),
            to: "node-b".into(),
            order: handoff_state::CopyOrder::HotFirst,
            plan: handoff_state::CopyPlan::default(),
            abort_safe: false,
            lead_ms: handoff_state::MAX_LEAD_MS,
        })
        .await
        .unwrap();
    let id = started.id;
    let mut copying = false;
    for _ in 0..500 {
        if move_status(&controller, id).phase == Phase::Copy {
            copying = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(copying, "the move never reached its copy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    steer.shutdown();
    drop(steer);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _steer = start_steer(&cfg).await;
    let mut end = move_status(&controller, id);
    for _ in 0..1000 {
        if end.ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        end = move_status(&controller, id);
    }
    assert!(end.ended, "the move did not end within 10 s: {end:?}");
    assert_eq!(end.phase, Phase::Aborted, "{end:?}");
    assert!(
        end.reason
            .as_deref()
            .unwrap_or("")
            .contains("steer restarted"),
        "{end:?}"
    );
    // The copy never answered: the route was found lost while it ran, not after it.
    assert_eq!(end.figures.copy.records_copied, 0, "{end:?}");
    let mut admin_a = AdminClient::connect_with(a, "t", TOKEN).await.unwrap();
    let dump = admin_a.dump("mme-1").await.unwrap();
    assert_eq!(
        dump.len(),
        SESSIONS as usize,
        "the source kept every session"
    );
    let mut admin_b = AdminClient::connect_with(b, "t", TOKEN).await.unwrap();
    assert!(
        admin_b.dump("mme-1").await.is_err(),
        "the destination dropped its shadow"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&store);
}
