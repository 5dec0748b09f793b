//! In-process clusters on loopback for integration tests: the same `serve` and `Steer::start`
//! the binary runs, with the vMME function.

use handoff_function::runtime::Catalog;
use handoff_node::{Node, NodeLimits};
use handoff_steer::{ServiceConfig, Steer, SteerConfig};
use handoff_vmme::{PdnType, SignalBody, Tai, Vmme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The functions test clusters know.
pub fn catalog() -> Catalog {
    Catalog::new().with(Vmme::default())
}

/// Starts a node on a loopback port, hosting `mme-1` when `host` is set.
pub async fn must_start_node(name: &str, host: bool) -> (Arc<Node>, SocketAddr) {
    must_start_node_with(name, host, "").await
}

/// [`must_start_node`] for a node that requires `token` in every hello.
pub async fn must_start_node_with(name: &str, host: bool, token: &str) -> (Arc<Node>, SocketAddr) {
    let node = Node::with_token(name, catalog(), NodeLimits::default(), token.to_owned());
    if host {
        node.create_instance("mme-1", "vmme").expect("create mme-1");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(handoff_node::serve(node.clone(), listener));
    (node, addr)
}

/// Starts a steer serving `mme-1` from `node` with ticks every `tick_ms`, and waits until its
/// link to the node is up. Returns the steer and its service address.
pub async fn must_start_steer(node: SocketAddr, tick_ms: u64) -> (Steer, SocketAddr) {
    must_start_steer_with(node, tick_ms, "").await
}

/// [`must_start_steer`] for a steer that offers `token` to nodes and requires it of control
/// clients, with a control listener on a loopback port ([`Steer::control_addr`]).
pub async fn must_start_steer_with(
    node: SocketAddr,
    tick_ms: u64,
    token: &str,
) -> (Steer, SocketAddr) {
    let cfg = SteerConfig {
        tick_ms,
        token: token.to_owned(),
        control: Some("127.0.0.1:0".parse().expect("literal address")),
        services: vec![ServiceConfig {
            instance: "mme-1".into(),
            function: "vmme".into(),
            listen: "127.0.0.1:0".parse().expect("literal address"),
            node,
        }],
        ..SteerConfig::default()
    };
    let catalog = catalog();
    let steer = Steer::start(cfg, |f| catalog.classifier(f))
        .await
        .expect("start the steer");
    let addr = steer.service_addr("mme-1").expect("service address");
    let stats = steer.stats("mme-1").expect("service stats");
    for _ in 0..1000 {
        if stats.snapshot().link_connects > 0 {
            return (steer, addr);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the steer never reached node {node}");
}

/// A valid Attach Request body (a UE offering EIA1–3 and EEA0–3, on the default APN).
pub fn attach_body() -> SignalBody {
    SignalBody::AttachRequest {
        msisdn: 46_700_000_001,
        imeisv: 3_534_900_000_000_001,
        ue_network_capability: 0x0F0E,
        ms_network_capability: 0,
        drx: 0,
        tai: Tai {
            mcc_mnc: 1001,
            tac: 1,
        },
        ecgi: 1,
        apn: "internet".into(),
        pdn_type: PdnType::Ipv4,
    }
}

/// Opens a connection to a node as a steer would: hello (no token), then a bind of route 1 to
/// `instance`. The node's `HelloAck` and `Bound` (or `Error`) are left for the caller to read.
pub async fn must_connect_as_steer(
    addr: SocketAddr,
    instance: &str,
) -> tokio_util::codec::Framed<tokio::net::TcpStream, handoff_wire::FrameCodec> {
    use futures::SinkExt;
    use handoff_wire::{Frame, Role, VERSION};
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the node");
    let mut f = tokio_util::codec::Framed::new(stream, handoff_wire::FrameCodec::new());
    f.send(Frame::Hello {
        role: Role::Steer,
        name: "test-steer".into(),
        min_version: VERSION,
        max_version: VERSION,
        token: String::new(),
    })
    .await
    .expect("send hello");
    f.send(Frame::Bind {
        route: 1,
        instance: instance.into(),
    })
    .await
    .expect("send bind");
    f
}
