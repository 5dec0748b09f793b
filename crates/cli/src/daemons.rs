//! `handoff node` and `handoff steer`: the long-running processes.

use anyhow::{bail, Context};
use clap::Args;
use handoff_node::{Node, NodeConfig, NodeLimits};
use handoff_steer::{ServiceConfig, Steer, SteerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// A TOML file with the node's settings (see `docs/node.example.toml`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node's name (default node-a).
    #[arg(long)]
    pub name: Option<String>,
    /// TCP address for steer and admin connections (port 0 picks one; default 127.0.0.1:7600).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// An instance to host, as NAME:FUNCTION (repeatable), e.g. `mme-1:vmme`.
    #[arg(long = "instance", value_name = "NAME:FUNCTION")]
    pub instances: Vec<String>,
    /// Serve an instance directly on a UDP address with no steer, as NAME@ADDR.
    #[arg(long, value_name = "NAME@ADDR")]
    pub direct: Option<String>,
    /// Tick interval of the direct path, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub tick_ms: u64,
    /// Print one JSON line with the bound addresses on stdout once serving.
    #[arg(long)]
    pub ready: bool,
    /// Shared secret every connection must offer in its hello (empty: none required).
    #[arg(
        long,
        env = "HANDOFF_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub token: String,
}

pub async fn node(a: NodeArgs) -> anyhow::Result<ExitCode> {
    let file = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<NodeConfig>(&text)
                .with_context(|| format!("invalid node config {}", path.display()))?
        }
        None => NodeConfig::default(),
    };
    let name = a
        .name
        .clone()
        .or(file.name)
        .unwrap_or_else(|| "node-a".into());
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7600)));
    let token = if a.token.is_empty() {
        file.token
    } else {
        a.token.clone()
    };
    let node = Node::with_token(
        name.clone(),
        crate::catalog(),
        NodeLimits::default(),
        token.clone(),
    );
    for i in &file.instances {
        node.create_instance(&i.name, &i.function)?;
    }
    for spec in &a.instances {
        let Some((name, function)) = spec.split_once(':') else {
            bail!("--instance {spec}: expected NAME:FUNCTION");
        };
        node.create_instance(name, function)?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listen = listener.local_addr()?;
    // The source-driven variant: this node can run a whole move itself when asked.
    node.set_move_driver(Arc::new(handoff_controller::source::SourceDriven::new(
        listen, &name, &token,
    )));
    let mut direct_addr = None;
    if let Some(spec) = &a.direct {
        let Some((name, addr)) = spec.split_once('@') else {
            bail!("--direct {spec}: expected NAME@ADDR");
        };
        let addr: SocketAddr = addr.parse().with_context(|| format!("--direct {spec}"))?;
        let handle = node.instance(name)?;
        let classifier = node.classifier(name)?;
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        direct_addr = Some(socket.local_addr()?);
        tokio::spawn(handoff_node::serve_direct(
            handle,
            classifier,
            socket,
            Duration::from_millis(a.tick_ms.max(1)),
            node.shutdown_token(),
            node.direct_stats(name),
        ));
    }
    tracing::info!(node = %name, %listen, direct = ?direct_addr, "node serving");
    if a.ready {
        out!(
            "{}",
            serde_json::json!({ "event": "ready", "listen": listen, "direct": direct_addr })
        );
    }
    let serving = tokio::spawn(handoff_node::serve(node.clone(), listener));
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Clone, Debug)]
pub struct SteerArgs {
    /// A TOML file with the steer's settings and services (see `docs/steer.example.toml`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A service, as INSTANCE:FUNCTION@LISTEN=NODE (repeatable), e.g.
    /// `mme-1:vmme@127.0.0.1:36412=127.0.0.1:7600`.
    #[arg(long = "service", value_name = "SPEC")]
    pub services: Vec<String>,
    /// Print one JSON line with the bound service addresses on stdout once serving.
    #[arg(long)]
    pub ready: bool,
    /// Control listener for the controller (or a source node driving a move), e.g.
    /// `127.0.0.1:7650`. Overrides the config file's `control`.
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// Shared token offered to nodes and required of control clients. Overrides the config
    /// file's `token`.
    #[arg(long, env = "HANDOFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory where each service's route is kept across restarts, so a steer restarted
    /// during a move recovers with the controller (see `docs/moves.md`). Overrides the config
    /// file's `state_dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

pub fn parse_service(spec: &str) -> anyhow::Result<ServiceConfig> {
    let err = || anyhow::anyhow!("--service {spec}: expected INSTANCE:FUNCTION@LISTEN=NODE");
    let (head, node) = spec.split_once('=').ok_or_else(err)?;
    let (names, listen) = head.split_once('@').ok_or_else(err)?;
    let (instance, function) = names.split_once(':').ok_or_else(err)?;
    Ok(ServiceConfig {
        instance: instance.to_owned(),
        function: function.to_owned(),
        listen: listen
            .parse()
            .with_context(|| format!("--service {spec}: listen"))?,
        node: node
            .parse()
            .with_context(|| format!("--service {spec}: node"))?,
    })
}

pub fn load_steer_config(a: &SteerArgs) -> anyhow::Result<SteerConfig> {
    let mut cfg = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<SteerConfig>(&text)
                .with_context(|| format!("invalid steer config {}", path.display()))?
        }
        None => SteerConfig::default(),
    };
    for s in &a.services {
        cfg.services.push(parse_service(s)?);
    }
    if let Some(c) = a.control {
        cfg.control = Some(c);
    }
    if let Some(t) = &a.token {
        cfg.token = t.clone();
    }
    if let Some(d) = &a.state_dir {
        cfg.state_dir = Some(d.clone());
    }
    if cfg.services.is_empty() {
        bail!("no service configured: give --service or a --config with [[services]]");
    }
    Ok(cfg)
}

/// How long `handoff steer --ready` waits for its node links before saying it is ready.
const READY_LINK_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn steer(a: SteerArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_steer_config(&a)?;
    if cfg.control.is_some() && cfg.state_dir.is_none() {
        tracing::warn!(
            "no --state-dir: routes are not kept, so a restart of this steer during a move is not safe"
        );
    }
    let names: Vec<String> = cfg.services.iter().map(|s| s.instance.clone()).collect();
    let catalog = crate::catalog();
    let steer = Steer::start(cfg, |f| catalog.classifier(f)).await?;
    if a.ready {
        // Ready means serving: wait (bounded) until every service's node link is up, and say
        // whether it came up.
        let deadline = tokio::time::Instant::now() + READY_LINK_TIMEOUT;
        let linked = |s: &Steer| {
            names
                .iter()
                .all(|n| s.stats(n).is_some_and(|st| st.snapshot().link_connects > 0))
        };
        while !linked(&steer) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let linked = linked(&steer);
        let addrs: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|n| (n.clone(), serde_json::json!(steer.service_addr(n))))
            .collect();
        out!(
            "{}",
            serde_json::json!({ "event": "ready", "services": addrs, "control": steer.control_addr(), "linked": linked })
        );
    }
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.tick().await;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => {
                for n in &names {
                    if let Some(s) = steer.stats(n) {
                        let s = s.snapshot();
                        tracing::info!(instance = %n, admitted = s.admitted, malformed = s.malformed,
                            shed = s.shed, no_link = s.no_link, relayed = s.outputs_relayed, "steer counters");
                    }
                }
            }
        }
    }
    steer.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_steer_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../../docs/steer.example.toml");
        let cfg: SteerConfig = toml::from_str(text).expect("example config parses");
        let d = SteerConfig::default();
        assert_eq!(
            (cfg.name.as_str(), cfg.tick_ms, cfg.link_queue),
            (d.name.as_str(), d.tick_ms, d.link_queue)
        );
        assert_eq!(cfg.services.len(), 1);
        assert_eq!(cfg.services[0].instance, "mme-1");
        assert!(cfg.state_dir.is_some() && d.state_dir.is_none());
    }

    #[test]
    fn the_example_node_config_parses() {
        let text = include_str!("../../../docs/node.example.toml");
        let cfg: NodeConfig = toml::from_str(text).expect("example config parses");
        assert_eq!(cfg.name.as_deref(), Some("node-a"));
        assert_eq!(cfg.instances[0].function, "vmme");
        assert!(toml::from_str::<NodeConfig>("lsten = \"x\"").is_err());
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        let err = toml::from_str::<SteerConfig>("tick_msec = 5").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn service_specs_parse() {
        let s = parse_service("mme-1:vmme@127.0.0.1:36412=127.0.0.1:7600").unwrap();
        assert_eq!(
            (s.instance.as_str(), s.function.as_str()),
            ("mme-1", "vmme")
        );
        assert_eq!(s.listen.port(), 36412);
        assert_eq!(s.node.port(), 7600);
        assert!(parse_service("mme-1@127.0.0.1:1=127.0.0.1:2").is_err());
    }
}
