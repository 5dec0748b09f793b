//! End to end, on loopback, with every component authenticated by a shared token: the
//! controller moves `mme-1` while the load generator signals, or aborts the move and returns
//! the sessions created meanwhile. The oracle checks the surviving copy.

use handoff_controller::daemon::{
    Controller, ControllerConfig, InstanceEntry, NodeEntry, SteerEntry,
};
use handoff_controller::driver::NetDriver;
use handoff_controller::machine::{Action, MoveMachine, MoveSpec, Phase, Side};
use handoff_controller::ops;
use handoff_loadgen::{oracle, LoadConfig, Transaction, UeHistory};
use handoff_node::client::AdminClient;
use handoff_vmme::Vmme;
use handoff_wire::client::ControlClient;
use handoff_wire::code;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "s3cret";

struct Cluster {
    a: SocketAddr,
    b: SocketAddr,
    service: SocketAddr,
    steer_control: SocketAddr,
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
        ..ControllerConfig::default()
    })
    .unwrap();
    Cluster {
        a,
        b,
        service,
        steer_control: steer.control_addr().unwrap(),
        controller,
        _steer: steer,
        _nodes: vec![na, nb],
        _store: store,
    }
}

async fn wait_end(c: &Arc<Controller>, id: u64) -> ops::MoveStatus {
    for _ in 0..3000 {
        let s = c.move_status(id).unwrap();
        if s.ended {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("move {id} did not end within 30 s");
}

fn migrate(lead_ms: u64) -> ops::Migrate {
    ops::Migrate {
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
    let started = c.controller.migrate(migrate(200)).await.unwrap();
    assert_eq!(
        (started.from.as_str(), started.to.as_str()),
        ("node-a", "node-b")
    );
    let end = wait_end(&c.controller, started.id).await;
    assert_eq!(end.phase, Phase::Done, "{end:?}");
    let f = &end.figures;
    assert!(f.copy.digest_match, "{end:?}");
    assert_eq!(f.copy.records_copied, f.copy.sessions_at_start, "{end:?}");
    assert!(f.cutover_seq > f.first_seq);
    let status = c.controller.status().await;
    assert_eq!(status.instances[0].node, "node-b", "{status:?}");
    // And back again while the load goes on: the new owner is the source now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = c
        .controller
        .migrate(ops::Migrate {
            to: "node-a".into(),
            order: handoff_state::CopyOrder::Random { seed: 3 },
            ..migrate(0)
        })
        .await
        .unwrap();
    let end = wait_end(&c.controller, back.id).await;
    assert_eq!(end.phase, Phase::Done, "{end:?}");
    assert!(
        end.figures.phases_ms["copy"] < 500,
        "the copy did not wait for a seq the new source never gets: {end:?}"
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
    let status = c.controller.status().await;
    assert_eq!(status.instances[0].node, "node-a", "{status:?}");
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
    let id = c.controller.migrate(migrate(1500)).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(c.controller.abort(id).unwrap().aborting, id);
    let end = wait_end(&c.controller, id).await;
    assert_eq!(end.phase, Phase::Aborted, "{end:?}");
    let created = end.figures.created_during_move;
    assert!(
        created > 0,
        "the test needs creates during the move: {end:?}"
    );
    assert_eq!(end.figures.lost_on_abort, 0, "{end:?}");

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
        assert_eq!(e.code(), Some(code::UNAUTHORIZED), "{e}");
    }
    let steer = c._steer.control_addr().unwrap();
    let e = ControlClient::connect(steer, "t", "").await.err().unwrap();
    assert_eq!(e.code(), Some(code::UNAUTHORIZED), "{e}");
    // A bad request gets a clear error, not a dropped connection.
    let mut ok = ControlClient::connect(steer, "t", TOKEN).await.unwrap();
    let e = ok
        .call(&handoff_steer::control::ops::Cutover {
            instance: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(code::UNKNOWN_INSTANCE), "{e}");
    let e = c
        .controller
        .migrate(ops::Migrate {
            instance: "mme-9".into(),
            ..migrate(0)
        })
        .await
        .unwrap_err();
    assert_eq!(e.0, code::UNKNOWN_INSTANCE, "{e:?}");
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
    let report = admin_a.call(&source_driven(&c, c.b)).await.unwrap();
    assert_eq!(report.phase, "done", "{report:?}");
    assert_eq!(report.figures["copy"]["digest_match"], true, "{report:?}");
    // No controller took part.
    let status = c.controller.status().await;
    assert!(status.moves.is_empty(), "{status:?}");

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
    let e = admin_b2.call(&source_driven(&c, c.a)).await.unwrap_err();
    assert_eq!(e.code(), Some(code::BAD_REQUEST), "{e}");
    assert!(e.to_string().contains("cannot drive moves"), "{e}");
}

/// A source-driven move of `mme-1` to `destination`, as asked of a node.
fn source_driven(c: &Cluster, destination: SocketAddr) -> handoff_node::ops::Migrate {
    handoff_node::MigrateRequest {
        instance: "mme-1".into(),
        function: String::new(),
        destination,
        steer: c._steer.control_addr().unwrap(),
        order: handoff_state::CopyOrder::HotFirst,
        plan: handoff_state::CopyPlan::default(),
        abort_safe: false,
        lead_ms: 0,
    }
}

/// Sessions the destination creates during the move in the many-creates tests: at least
/// 50,000, and enough that every key list of the move is longer than one frame. A vMME key is
/// the IMSI's 8 bytes, 19 bytes of JSON as hex: 50,000 of them (950 kB) were already above the
/// old cap of half a frame on `created_keys` and the re-send's `excluded`, 60,000 (1.14 MB)
/// are above a whole frame, so the steer's `abort_begin` answer and the `expect_sessions` and
/// `copy_to` requests of the abort all travel as continuations.
const MANY: u64 = 60_000;
/// Sessions on the source before the move (what the paced copy carries).
const PRELOADED: u64 = 2_000;
const FIRST_IMSI: u64 = 1_010_000_000_000;

/// A UE's attach request: a create, keyed as the vMME keys its sessions (by IMSI).
fn attach_request(imsi: u64) -> Vec<u8> {
    handoff_vmme::Signal {
        header: handoff_vmme::Header { imsi, txn_id: 1 },
        body: handoff_testkit::attach_body(),
    }
    .to_bytes()
}

/// Attaches the UEs `imsis` through the steer, at most `WINDOW` unanswered at once, resending
/// what is unanswered after a quiet spell as a UE would (the function answers a retransmission
/// from its cache). Returns each UE's history for the oracle.
async fn attach_all(service: SocketAddr, imsis: std::ops::Range<u64>) -> Vec<UeHistory> {
    const WINDOW: usize = 256;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(service).await.unwrap();
    let mut pending = std::collections::HashMap::new();
    let mut histories = Vec::with_capacity((imsis.end - imsis.start) as usize);
    let mut next = imsis.start;
    let mut quiet = 0;
    let mut buf = vec![0u8; 65_536];
    while next < imsis.end || !pending.is_empty() {
        while pending.len() < WINDOW && next < imsis.end {
            let signal = attach_request(next);
            sock.send(&signal).await.unwrap();
            pending.insert(next, signal);
            next += 1;
        }
        match tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await {
            Ok(r) => {
                let n = r.unwrap();
                let answer = handoff_vmme::Response::decode(&buf[..n]).unwrap();
                if let Some(signal) = pending.remove(&answer.header.imsi) {
                    histories.push(UeHistory {
                        imsi: answer.header.imsi,
                        txns: vec![Transaction {
                            txn_id: 1,
                            signal,
                            answer: buf[..n].to_vec(),
                        }],
                        tainted: false,
                    });
                }
            }
            Err(_) => {
                quiet += 1;
                assert!(quiet < 50, "{} attaches unanswered for 15 s", pending.len());
                for signal in pending.values() {
                    sock.send(signal).await.unwrap();
                }
            }
        }
    }
    histories
}

/// Moves `mme-1` from node-a to node-b by driving the controller's move machine step by step
/// with its network driver (the daemon's `drive` without its loop): once the copy has
/// ended, and before anything else (so before the cutover), [`MANY`] sessions are created
/// through the steer, all routed to the destination alone; the steer must count every one
/// as created during the move. Then the operator aborts (`abort`) or the move goes on.
async fn move_with_many_creates(c: &Cluster, abort: bool) -> (MoveMachine, Vec<UeHistory>) {
    let spec = MoveSpec {
        id: 1,
        instance: "mme-1".into(),
        function: "vmme".into(),
        source: c.a,
        destination: c.b,
        steer: c.steer_control,
        order: handoff_state::CopyOrder::HotFirst,
        plan: handoff_state::CopyPlan::default(),
        abort_safe: false,
        lead_ms: 0,
        origin: "test".into(),
    };
    let driver = NetDriver {
        name: "test".into(),
        token: TOKEN.into(),
    };
    let epoch = std::time::Instant::now();
    let now = || epoch.elapsed().as_millis() as u64;
    let mut m = MoveMachine::new(spec, 0).unwrap();
    let mut created = Vec::new();
    while let Some(action) = m.action() {
        if !matches!(action, Action::Wait { .. }) {
            m.start_action();
        }
        let r = driver.perform(&m, &action).await;
        m.complete(r, now());
        let copied = matches!(
            action,
            Action::Copy {
                from: Side::Source,
                ..
            }
        );
        if copied && created.is_empty() {
            assert_eq!(m.phase, Phase::Verify, "the copy went through");
            let t = std::time::Instant::now();
            created = attach_all(
                c.service,
                FIRST_IMSI + PRELOADED..FIRST_IMSI + PRELOADED + MANY,
            )
            .await;
            eprintln!("{MANY} creates in {:?}", t.elapsed());
            let mut steer = ControlClient::connect(c.steer_control, "t", TOKEN)
                .await
                .unwrap();
            let status = steer
                .call(&handoff_steer::control::ops::Status {})
                .await
                .unwrap();
            assert_eq!(
                status.services[0].route.created_during_move as u64, MANY,
                "{status:?}"
            );
            // The destination's own list (what an abort uses when the steer lost its list)
            // names every one of them too, in one answer.
            let mut dest = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
            let own = dest
                .call(&handoff_node::ops::CreatedKeysOf {
                    instance: "mme-1".into(),
                })
                .await
                .unwrap();
            let wanted: std::collections::BTreeSet<_> = created
                .iter()
                .map(|h| handoff_vmme::session_key(h.imsi))
                .collect();
            let got: std::collections::BTreeSet<_> = own.created.into_iter().collect();
            assert_eq!(got, wanted);
            if abort {
                assert!(m.abort_now("aborted by the operator", now()));
            }
        }
    }
    assert_eq!(created.len() as u64, MANY, "the move ran its copy");
    (m, created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_brings_back_sixty_thousand_sessions_the_destination_created() {
    let c = cluster("many-abort").await;
    let mut histories = attach_all(c.service, FIRST_IMSI..FIRST_IMSI + PRELOADED).await;
    let (m, created) = move_with_many_creates(&c, true).await;
    assert_eq!(m.phase, Phase::Aborted, "{:?}", m.reason);
    assert_eq!(m.figures.created_during_move, MANY);
    assert_eq!(m.figures.lost_on_abort, 0);
    // The source holds every session, the 60,000 with the state the destination gave them.
    histories.extend(created);
    let mut admin_a = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    let dump = admin_a.dump("mme-1").await.unwrap();
    assert_eq!(dump.len() as u64, PRELOADED + MANY);
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(r.checked, PRELOADED + MANY, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
    let mut admin_b = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    assert!(admin_b.dump("mme-1").await.is_err(), "destination removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_completes_while_the_destination_creates_sixty_thousand_sessions() {
    let c = cluster("many-done").await;
    let mut histories = attach_all(c.service, FIRST_IMSI..FIRST_IMSI + PRELOADED).await;
    let (m, created) = move_with_many_creates(&c, false).await;
    assert_eq!(m.phase, Phase::Done, "{:?}", m.reason);
    assert!(m.figures.cutover_seq > m.figures.first_seq);
    histories.extend(created);
    let mut admin_b = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    let dump = admin_b.dump("mme-1").await.unwrap();
    assert_eq!(dump.len() as u64, PRELOADED + MANY);
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(r.checked, PRELOADED + MANY, "{r:?}");
    assert_eq!(
        (r.mismatches, r.answer_mismatches, r.unknown_records),
        (0, 0, 0),
        "{r:?}"
    );
}

/// The steer's route of `mme-1`: its phase and the node it serves from.
async fn route(c: &Cluster) -> (handoff_steer::RoutePhase, SocketAddr) {
    let mut steer = ControlClient::connect(c.steer_control, "t", TOKEN)
        .await
        .unwrap();
    let st = steer
        .call(&handoff_steer::control::ops::Status {})
        .await
        .unwrap();
    (st.services[0].route.phase, st.services[0].route.node)
}

/// A copy plan slow enough that a copy of [`SLOW_SESSIONS`] sessions takes several seconds
/// past its first burst.
fn slow_plan() -> handoff_state::CopyPlan {
    handoff_state::CopyPlan {
        max_bandwidth_bps: Some(100_000),
        ..handoff_state::CopyPlan::default()
    }
}
const SLOW_SESSIONS: u64 = 3_000;

/// Records the destination has received of the copy so far.
async fn records_at(addr: SocketAddr) -> u64 {
    let mut admin = AdminClient::connect_with(addr, "t", TOKEN).await.unwrap();
    admin
        .call(&handoff_node::ops::ShadowStats {
            instance: "mme-1".into(),
        })
        .await
        .ok()
        .flatten()
        .map_or(0, |s| s.records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_interrupts_a_copy_in_flight_at_once() {
    abort_a_copy_in_flight(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_interrupts_a_copy_in_flight_and_brings_back_what_was_created() {
    abort_a_copy_in_flight(200).await;
}

/// Moves `mme-1` with a slow copy and aborts it while the copy runs, once `creates` sessions
/// were created (on the destination) during the copy: the abort must start at once and the
/// move end soon after, every session back on the source.
async fn abort_a_copy_in_flight(creates: u64) {
    use handoff_controller::driver::{drive, Progress};
    let c = cluster(&format!("abort-copy-{creates}")).await;
    let mut histories = attach_all(c.service, FIRST_IMSI..FIRST_IMSI + SLOW_SESSIONS).await;
    let spec = MoveSpec {
        id: 1,
        instance: "mme-1".into(),
        function: "vmme".into(),
        source: c.a,
        destination: c.b,
        steer: c.steer_control,
        order: handoff_state::CopyOrder::HotFirst,
        plan: slow_plan(),
        abort_safe: false,
        lead_ms: 0,
        origin: "test".into(),
    };
    let driver = NetDriver {
        name: "test".into(),
        token: TOKEN.into(),
    };
    let (abort_tx, abort_rx) = tokio::sync::watch::channel(None);
    let (progress_tx, progress) = tokio::sync::watch::channel(Progress::default());
    let m = MoveMachine::new(spec, 0).unwrap();
    let run = tokio::spawn(async move { drive(m, &driver, |_| {}, abort_rx, progress_tx).await });
    // Wait until the copy is under way.
    let mut copied = 0;
    for _ in 0..500 {
        copied = records_at(c.b).await;
        if copied > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(copied > 0, "the copy never started");
    let new = FIRST_IMSI + SLOW_SESSIONS..FIRST_IMSI + SLOW_SESSIONS + creates;
    histories.extend(attach_all(c.service, new).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(progress.borrow().phase, "copy");
    let asked = std::time::Instant::now();
    abort_tx.send_replace(Some("aborted by the operator".into()));
    let mut left_copy = None;
    while asked.elapsed() < Duration::from_secs(10) {
        if progress.borrow().phase != "copy" {
            left_copy = Some(asked.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left_copy = left_copy.expect("the move never left the copy");
    assert!(
        left_copy < Duration::from_secs(1),
        "the abort waited {left_copy:?} for the copy"
    );
    let m = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the aborted move ends")
        .unwrap();
    let ended = asked.elapsed();
    assert_eq!(m.phase, Phase::Aborted, "{:?}", m.reason);
    assert_eq!(m.reason.as_deref(), Some("aborted by the operator"));
    assert!(
        m.figures.copy.records_copied < SLOW_SESSIONS,
        "the copy was not interrupted: {:?}",
        m.figures
    );
    assert!(ended < Duration::from_secs(3), "the abort took {ended:?}");
    assert_eq!(m.figures.created_during_move, creates, "{:?}", m.figures);
    assert_eq!(m.figures.lost_on_abort, 0, "{:?}", m.figures);
    // The route is back on the source, which serves every session; the destination's copy
    // is gone.
    assert_eq!(route(&c).await, (handoff_steer::RoutePhase::Serving, c.a));
    let mut admin_a = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    let dump = admin_a.dump("mme-1").await.unwrap();
    assert_eq!(dump.len() as u64, SLOW_SESSIONS + creates);
    let r = oracle::check(&Vmme::default(), &histories, &dump);
    assert_eq!(
        (
            r.checked,
            r.mismatches,
            r.answer_mismatches,
            r.unknown_records
        ),
        (SLOW_SESSIONS + creates, 0, 0, 0),
        "{r:?}"
    );
    let mut admin_b = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    assert!(admin_b.dump("mme-1").await.is_err(), "destination removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_driven_move_aborts_at_once_when_asked() {
    let c = cluster("source-abort").await;
    c._nodes[0].set_move_driver(Arc::new(handoff_controller::source::SourceDriven::new(
        c.a, "node-a", TOKEN,
    )));
    attach_all(c.service, FIRST_IMSI..FIRST_IMSI + SLOW_SESSIONS).await;
    let mut admin_a = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    admin_a.set_reply_timeout(Duration::from_secs(60));
    let req = handoff_node::ops::Migrate {
        plan: slow_plan(),
        ..source_driven(&c, c.b)
    };
    let run = tokio::spawn(async move { admin_a.call(&req).await });
    let mut copied = 0;
    for _ in 0..500 {
        copied = records_at(c.b).await;
        if copied > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(copied > 0, "the copy never started");
    let asked = std::time::Instant::now();
    let mut other = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    let abort = handoff_node::ops::AbortMigrate {
        instance: "mme-1".into(),
    };
    assert_eq!(other.call(&abort).await.unwrap().aborting, "mme-1");
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the move answers")
        .unwrap()
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(report.phase, "aborted", "{report:?}");
    assert!(took < Duration::from_secs(3), "the abort took {took:?}");
    assert_eq!(route(&c).await, (handoff_steer::RoutePhase::Serving, c.a));
    // No move runs any more: nothing to abort.
    let e = other.call(&abort).await.unwrap_err();
    assert_eq!(e.code(), Some(code::BAD_REQUEST), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_cannot_be_met_is_refused_before_the_steer_changes() {
    let c = cluster("plan-check").await;
    attach_all(c.service, FIRST_IMSI..FIRST_IMSI + 2_000).await;
    let tight = handoff_state::CopyPlan {
        deadline_ms: Some(1),
        ..handoff_state::CopyPlan::default()
    };
    // The controller variant.
    let e = c
        .controller
        .migrate(ops::Migrate {
            plan: tight,
            ..migrate(0)
        })
        .await
        .unwrap_err();
    assert_eq!(e.0, code::BAD_REQUEST, "{e:?}");
    assert!(e.1.contains("cannot be met"), "{e:?}");
    assert!(e.1.contains("within 1 ms"), "{e:?}");
    assert!(
        c.controller.status().await.moves.is_empty(),
        "a move was created"
    );
    assert_eq!(route(&c).await, (handoff_steer::RoutePhase::Serving, c.a));
    // The source-driven variant.
    c._nodes[0].set_move_driver(Arc::new(handoff_controller::source::SourceDriven::new(
        c.a, "node-a", TOKEN,
    )));
    let mut admin_a = AdminClient::connect_with(c.a, "t", TOKEN).await.unwrap();
    let e = admin_a
        .call(&handoff_node::ops::Migrate {
            plan: tight,
            ..source_driven(&c, c.b)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(code::BAD_REQUEST), "{e}");
    assert!(e.to_string().contains("cannot be met"), "{e}");
    assert_eq!(route(&c).await, (handoff_steer::RoutePhase::Serving, c.a));
    // Nothing reached the destination either.
    let mut admin_b = AdminClient::connect_with(c.b, "t", TOKEN).await.unwrap();
    assert!(
        admin_b.dump("mme-1").await.is_err(),
        "no shadow was prepared"
    );
    // A plan that fits goes through.
    let ok = handoff_state::CopyPlan {
        deadline_ms: Some(60_000),
        ..handoff_state::CopyPlan::default()
    };
    let started = c
        .controller
        .migrate(ops::Migrate {
            plan: ok,
            ..migrate(0)
        })
        .await
        .unwrap();
    let end = wait_end(&c.controller, started.id).await;
    assert_eq!(end.phase, Phase::Done, "{end:?}");
}
