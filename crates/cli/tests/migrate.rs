//! `handoff migrate` against a controller that goes away: it says what happens to the move
//! and how to follow it, and `--follow ID` re-attaches to a move, also across a controller
//! restart. The controller here is a stand-in speaking the real protocol, scripted to close.

use futures::{SinkExt, StreamExt};
use handoff_controller::daemon::ControllerRequest;
use handoff_controller::machine::{MoveFigures, Phase};
use handoff_controller::ops;
use handoff_wire::{Frame, FrameCodec};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::codec::Framed;

/// A move's status as the stand-in reports it.
fn status(phase: Phase) -> ops::MoveStatus {
    ops::MoveStatus {
        id: 7,
        instance: "mme-1".into(),
        from: "node-a".into(),
        to: "node-b".into(),
        phase,
        ended: phase.is_terminal(),
        reason: None,
        progress: (!phase.is_terminal()).then(Default::default),
        figures: MoveFigures::default(),
    }
}

/// Serves one control connection: answers `migrate` with move 7 and each `move_status` with
/// the next of `phases`; closes once they are used up.
async fn serve_one(stream: tokio::net::TcpStream, mut phases: Vec<Phase>) {
    let mut f = Framed::new(stream, FrameCodec::unauthenticated());
    let ok =
        handoff_wire::client::accept_admin_hello(&mut f, "", "controller", Duration::from_secs(5))
            .await
            .unwrap();
    assert!(ok);
    phases.reverse();
    while let Some(Ok(Frame::Admin(body))) = f.next().await {
        let reply = match serde_json::from_slice::<ControllerRequest>(&body).unwrap() {
            ControllerRequest::Migrate(_) => serde_json::to_vec(&ops::MoveStarted {
                id: 7,
                instance: "mme-1".into(),
                from: "node-a".into(),
                to: "node-b".into(),
            }),
            ControllerRequest::MoveStatus(_) => match phases.pop() {
                Some(p) => serde_json::to_vec(&status(p)),
                None => return,
            },
            other => panic!("unexpected {other:?}"),
        }
        .unwrap();
        f.send(Frame::AdminReply(reply.into())).await.unwrap();
    }
}

async fn handoff(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_handoff"))
        .args(args)
        .env_remove("HANDOFF_TOKEN")
        .output()
        .await
        .expect("run handoff")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_controller_is_explained_with_its_own_exit_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    // One connection, two status answers in the copy, then the controller is gone for good.
    let controller = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_one(stream, vec![Phase::Copy, Phase::Copy]).await;
    });
    let out = handoff(&[
        "migrate",
        "mme-1",
        "--to",
        "node-b",
        "--controller",
        &addr.to_string(),
    ])
    .await;
    controller.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for said in [
        "lost the connection to the controller",
        "move 7 (mme-1 node-a → node-b, phase copy)",
        "the restarted controller aborts it",
        "the source node-a keeps serving mme-1",
        "handoff migrate --follow 7",
        "handoff status",
    ] {
        assert!(err.contains(said), "missing {said:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reattaches_to_a_move_across_a_controller_restart() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    // The first run answers once (after the cutover) and dies; the restarted one reports
    // the move done.
    let controller = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_one(stream, vec![Phase::Drain]).await;
        let (stream, _) = listener.accept().await.unwrap();
        serve_one(stream, vec![Phase::Done]).await;
    });
    let out = handoff(&[
        "migrate",
        "--follow",
        "7",
        "--json",
        "--controller",
        &addr.to_string(),
    ])
    .await;
    controller.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(err.contains("reconnected to the controller"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["id"], 7);
    assert_eq!(report["phase"], "done");
}
