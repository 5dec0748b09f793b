//! End to end, on loopback, with every component authenticated by a shared token: the
//! controller moves `mme-1` while the load generator signals, or aborts the move and returns
//! the sessions created meanwhile. The oracle checks the surviving copy.

use handoff_controller::daemon::{
    Controller, ControllerConfig, ControllerRequest, InstanceEntry, NodeEntry, SteerEntry,
};
use handoff_loadgen::{oracle, LoadConfig};
use handoff_node::client::AdminClient;
use handoff_vmme::Vmme;
use handoff_wire::client::ControlClient;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "s3cret";

struct Cluster {
    a: SocketAddr,
    b: SocketAddr,
    service: SocketAddr,
    controller: Arc<Controller>,
    _steer: handoff_steer::Steer,
    _nodes: Vec<Arc<handoff_node::Node>>,
    _store: std::path::PathBuf,
}

async fn cluster(name: &str) -> Cluster {
    let (na, a) = handoff_testkit::must_start_node_with("node-a", true, TOKEN).await;
    let (nb, b) = handoff_testkit::must_start_node_with("node-b", false, TOKEN).await;
    let (steer, service) = handoff_testkit::must_start_steer_with(a, 20, TOKEN).await;
    let store = std::env::temp_dir().join(format!("handoff-{name}-{}.redb", std::process::id()));
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
            control: steer.control_addr().unwrap(),
        }],
        instances: vec![InstanceEntry {
            name: "mme-1".into(),
            function: "vmme".into(),
            node: "node-a".into(),
            steer: "steer-1".into(),
        }],
    })
    .unwrap();
    Cluster {
        a,
        b,
        service,
        controller,
        _steer: steer,
        _nodes: vec![na, nb],
        _store: store,
    }
}

async fn wait_end(c: &Arc<Controller>, id: u64) -> serde_json::Value {
    for _ in 0..3000 {
        let s = c
            .handle(ControllerRequest::MoveStatus { id })
            .await
            .unwrap();
        if s["ended"] == true {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("move {id} did not end within 30 s");
}

fn migrate(lead_ms: u64) -> ControllerRequest {
    ControllerRequest::Migrate {
        instance: "mme-1".into(),
        to: "node-b".into(),
        order: handoff_state::CopyOrder::HotFirst,
        plan: handoff_state::CopyPlan::default(),
        abort_safe: false,
        lead_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_moves_an_instance_under_load_and_loses_nothing() {
    let c = cluster("move").await;
    let load = tokio::spawn(handoff_loadgen::run(
        LoadConfig {
            target: c.service,
            sessions: 500,
            rate: 1500.0,
            duration: Duration::from_millis(2500),
            seed: 21,
            ..LoadConfig::default()
        },
        |_| {},
    ));
    tokio::time::sleep(Duration::from_millis(900)).await;
    let started = c.controller.handle(migrate(200)).await.unwrap();
    let id = started["id"].as_u64().unwrap();
    let end = wait_end(&c.controller, id).await;
    assert_eq!(end["phase"], "done", "{end}");
    let f = &end["figures"];
    assert_eq!(f["copy"]["digest_match"], true, "{end}");
    assert_eq!(
        f["copy"]["records_copied"], f["copy"]["sessions_at_start"],
        "{end}"
    );
    assert!(f["cutover_seq"].as_u64().unwrap() > f["first_seq"].as_u64().unwrap());
    let status = c
        .controller
        .handle(ControllerRequest::Status)
        .await
        .unwrap();
    assert_eq!(status["instances"][0]["node"], "node-b", "{status}");
    // And back again while the load goes on: the new owner is the source now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = c
        .controller
        .handle(ControllerRequest::Migrate {
            instance: "mme-1".into(),
            to: "node-a".into(),
            order: handoff_state::CopyOrder::Random { seed: 3 },
            plan: handoff_state::CopyPlan::default(),
            abort_safe: false,
            lead_ms: 0,
        })
        .await
        .unwrap();
    let end = wait_end(&c.controller, back["id"].as_u64().unwrap()).await;
    assert_eq!(end["phase"], "done", "{end}");
    assert!(
        end["figures"]["phases_ms"]["copy"].as_u64().unwrap() < 500,
        "the copy did not wait for a seq the new source never gets: {end}"
    );

    let (report, histories) = load.await.unwrap().unwrap();
    assert_eq!(
        (report.lost, report.duplicated, report.reordered),
        (0, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.answered, report.signals_sent, "{report:?}");
    let mut admin_a = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    let dump = admin_a.dump("mme-1").await.unwrap();
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(r.checked, 500, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
    // The second move's source went offline; the cluster view follows the instance.
    let mut admin_b = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    assert!(admin_b.dump("mme-1").await.is_err(), "source retired");
    let status = c
        .controller
        .handle(ControllerRequest::Status)
        .await
        .unwrap();
    assert_eq!(status["instances"][0]["node"], "node-a", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_move_returns_the_sessions_created_meanwhile_to_the_source() {
    let c = cluster("abort").await;
    // Every UE starts detached: attaches (creates) keep coming during the move.
    let load = tokio::spawn(handoff_loadgen::run(
        LoadConfig {
            target: c.service,
            sessions: 400,
            rate: 1200.0,
            duration: Duration::from_millis(3000),
            skip_attach: true,
            seed: 5,
            ..LoadConfig::default()
        },
        |_| {},
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A long lead keeps the move in move mode (creates going to the destination) while the
    // operator changes their mind.
    let id = c.controller.handle(migrate(1500)).await.unwrap()["id"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.controller
        .handle(ControllerRequest::Abort { id })
        .await
        .unwrap();
    let end = wait_end(&c.controller, id).await;
    assert_eq!(end["phase"], "aborted", "{end}");
    let created = end["figures"]["created_during_move"].as_u64().unwrap();
    assert!(created > 0, "the test needs creates during the move: {end}");
    assert_eq!(end["figures"]["lost_on_abort"], 0, "{end}");

    let (report, histories) = load.await.unwrap().unwrap();
    assert_eq!(
        (report.lost, report.duplicated, report.reordered),
        (0, 0, 0),
        "{report:?}"
    );
    let mut admin_a = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    let dump = admin_a.dump("mme-1").await.unwrap();
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(r.checked, 400, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
    let mut admin_b = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    assert!(admin_b.dump("mme-1").await.is_err(), "destination removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_everywhere() {
    let c = cluster("token").await;
    for addr in [c.a, c.b] {
        let e = ControlClient::connect(addr, "t", "guess")
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("code 7"), "{e}");
    }
    let steer = c._steer.control_addr().unwrap();
    let e = ControlClient::connect(steer, "t", "").await.err().unwrap();
    assert!(e.to_string().contains("code 7"), "{e}");
    // A bad request gets a clear error, not a dropped connection.
    let mut ok = ControlClient::connect(steer, "t", TOKEN).await.unwrap();
    let e = ok
        .request(&serde_json::json!({ "op": "cutover", "instance": "nope" }))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no service"), "{e}");
    let e = c
        .controller
        .handle(ControllerRequest::Migrate {
            instance: "mme-9".into(),
            to: "node-b".into(),
            order: handoff_state::CopyOrder::HotFirst,
            plan: handoff_state::CopyPlan::default(),
            abort_safe: false,
            lead_ms: 0,
        })
        .await
        .unwrap_err();
    assert!(e.1.contains("unknown instance"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_node_can_drive_the_move_itself_with_no_controller() {
    let c = cluster("source-driven").await;
    c._nodes[0].set_move_driver(Arc::new(handoff_controller::source::SourceDriven::new(
        c.a, "node-a", TOKEN,
    )));
    let load = tokio::spawn(handoff_loadgen::run(
        LoadConfig {
            target: c.service,
            sessions: 400,
            rate: 1500.0,
            duration: Duration::from_millis(2500),
            seed: 33,
            ..LoadConfig::default()
        },
        |_| {},
    ));
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut admin_a = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    let report = admin_a.request(&source_driven(&c, c.b)).await.unwrap();
    assert_eq!(report["phase"], "done", "{report}");
    assert_eq!(report["figures"]["copy"]["digest_match"], true, "{report}");
    // No controller took part.
    let status = c
        .controller
        .handle(ControllerRequest::Status)
        .await
        .unwrap();
    assert_eq!(status["moves"].as_array().unwrap().len(), 0, "{status}");

    let (load, histories) = load.await.unwrap().unwrap();
    assert_eq!(
        (load.lost, load.duplicated, load.reordered),
        (0, 0, 0),
        "{load:?}"
    );
    let mut admin_b = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    let dump = admin_b.dump("mme-1").await.unwrap();
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(r.checked, 400, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
    // A node without a driver refuses clearly.
    let mut admin_b2 = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    let e = admin_b2.request(&source_driven(&c, c.a)).await.unwrap_err();
    assert!(e.to_string().contains("cannot drive moves"), "{e}");
}

/// A source-driven move of `mme-1` to `destination`, as asked of a node.
fn source_driven(c: &Cluster, destination: SocketAddr) -> handoff_node::AdminRequest {
    handoff_node::AdminRequest::Migrate(handoff_node::MigrateRequest {
        instance: "mme-1".into(),
        function: String::new(),
        destination,
        steer: c._steer.control_addr().unwrap(),
        order: handoff_state::CopyOrder::HotFirst,
        plan: handoff_state::CopyPlan::default(),
        abort_safe: false,
        lead_ms: 0,
    })
}
