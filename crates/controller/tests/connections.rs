//! The controller's control listener closes connections that stall: half a request that never
//! ends, or a client that says nothing for the idle limit. Each close is counted in `status`.

use futures::{SinkExt, StreamExt};
use handoff_controller::daemon::{Controller, ControllerConfig};
use handoff_controller::ops;
use handoff_wire::client::ControlClient;
use handoff_wire::{Frame, FrameCodec, Role, VERSION};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_control_connections_are_closed_and_counted() {
    let store = std::env::temp_dir().join(format!("handoff-conns-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&store);
    let c = Controller::start(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.clone(),
        frame_timeout_ms: 300,
        idle_timeout_ms: 1_000,
        ..ControllerConfig::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(handoff_controller::daemon::serve(c.clone(), listener));
    let hello = || async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut f = Framed::new(stream, FrameCodec::new());
        f.send(Frame::Hello {
            role: Role::Admin,
            name: "t".into(),
            min_version: VERSION,
            max_version: VERSION,
            token: String::new(),
        })
        .await
        .unwrap();
        assert!(matches!(
            f.next().await.unwrap().unwrap(),
            Frame::HelloAck { .. }
        ));
        f
    };
    let closed = |mut f: Framed<tokio::net::TcpStream, FrameCodec>| async move {
        let t = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(5), f.next()).await;
        assert!(
            matches!(end, Ok(None | Some(Err(_)))),
            "not closed: {end:?}"
        );
        t.elapsed()
    };
    // Half a request, then nothing.
    let mut half = hello().await;
    let mut req = bytes::BytesMut::new();
    Frame::Admin(bytes::Bytes::from_static(br#"{"op":"status"}"#)).encode(&mut req);
    half.get_mut().write_all(&req[..12]).await.unwrap();
    let took = closed(half).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_millis(1_300), "{took:?}");
    // Nothing at all after the hello.
    let took = closed(hello().await).await;
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(took < Duration::from_millis(2_000), "{took:?}");
    // A client that asks in time is served.
    let mut client = ControlClient::connect(addr, "t", "").await.unwrap();
    let s = client.call(&ops::Status {}).await.unwrap();
    assert_eq!(
        s.control,
        handoff_wire::deadline::ClosedConnections {
            closed_partial_frame: 1,
            closed_idle: 1,
        }
    );
    c.shutdown();
    let _ = std::fs::remove_file(&store);
}
