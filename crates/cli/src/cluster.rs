//! Local clusters for the demo and benchmarks: node child processes and an in-process steer.

use anyhow::{bail, Context};
use handoff_node::client::AdminClient;
use handoff_node::AdminRequest;
use handoff_steer::{ServiceConfig, Steer, SteerConfig};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `handoff node` child process on loopback.
pub struct NodeProcess {
    child: Child,
    pub addr: SocketAddr,
    pub direct: Option<SocketAddr>,
}

impl NodeProcess {
    /// Starts `handoff node` hosting `instances` (NAME:FUNCTION), optionally serving one of them
    /// directly (NAME), and waits until it reports its addresses.
    pub async fn spawn(
        name: &str,
        instances: &[&str],
        direct: Option<&str>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the handoff executable")?;
        let mut cmd = Command::new(exe);
        // The nodes' log filter: warnings only, unless HANDOFF_NODE_LOG says otherwise.
        let log = std::env::var("HANDOFF_NODE_LOG").unwrap_or_else(|_| "warn".into());
        cmd.args([
            "--log",
            &log,
            "node",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--ready",
        ]);
        for i in instances {
            cmd.args(["--instance", i]);
        }
        if let Some(d) = direct {
            cmd.args(["--direct", &format!("{d}@127.0.0.1:0")]);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start the node process")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("the node did not become ready within 20 s")??;
        let Some(line) = line else {
            bail!("the node exited before becoming ready");
        };
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("node said {line:?}"))?;
        let addr: SocketAddr = serde_json::from_value(ready["listen"].clone())
            .with_context(|| format!("node said {line:?}"))?;
        let direct = serde_json::from_value(ready["direct"].clone()).unwrap_or(None);
        Ok(Self {
            child,
            addr,
            direct,
        })
    }

    /// The node's resident set size, asked of the node itself.
    pub async fn rss_bytes(&self) -> anyhow::Result<u64> {
        let mut c = AdminClient::connect(self.addr, "cli").await?;
        let stats = c.request(&AdminRequest::Stats).await?;
        Ok(stats["rss_bytes"].as_u64().unwrap_or(0))
    }

    /// Stops the process.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Starts an in-process steer with one service for `instance` on `node`, and waits until its
/// link to the node is up.
pub async fn start_steer(instance: &str, node: SocketAddr) -> anyhow::Result<(Steer, SocketAddr)> {
    let cfg = SteerConfig {
        services: vec![ServiceConfig {
            instance: instance.to_owned(),
            function: "vmme".into(),
            listen: "127.0.0.1:0".parse().context("literal address")?,
            node,
        }],
        // Moves are driven over the control listener, as the controller does.
        control: Some("127.0.0.1:0".parse().context("literal address")?),
        ..SteerConfig::default()
    };
    let catalog = crate::catalog();
    let steer = Steer::start(cfg, |f| catalog.classifier(f)).await?;
    let addr = steer
        .service_addr(instance)
        .context("service address missing")?;
    let stats = steer.stats(instance).context("service stats missing")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats.snapshot().link_connects == 0 {
        if tokio::time::Instant::now() > deadline {
            bail!("the steer could not reach node {node} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((steer, addr))
}
