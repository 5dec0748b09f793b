//! Loopback clusters for benchmarks and the demo: `handoff node` child processes and an
//! in-process steer in front of one instance.
//!
//! Nodes run as separate processes so that a benchmark measures what an operator runs: the
//! node's copy and apply work does not share a runtime with the steer and the load generator.
//! The in-process clusters of integration tests live in `handoff-testkit`, which keeps the
//! [`handoff_node::Node`] handle so tests can look inside it; see the crate docs for why the
//! two are not one.

use crate::{BenchError, Subject};
use handoff_function::runtime::Catalog;
use handoff_node::client::AdminClient;
use handoff_steer::{ServiceConfig, Steer, SteerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a node process may take to report that it serves.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped node process may take to exit.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a steer may take to reach its node.
const STEER_LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the steer's link is checked while waiting for it.
const STEER_LINK_POLL: Duration = Duration::from_millis(10);

/// How to start `handoff node` processes: which executable, with which log filter.
#[derive(Clone, Debug)]
pub struct NodeLauncher {
    /// The `handoff` executable (the CLI passes itself).
    pub exe: PathBuf,
    /// The nodes' log filter (`tracing` `EnvFilter` syntax), e.g. `warn`.
    pub log: String,
}

/// The addresses a node prints once it serves (`handoff node --ready`).
#[derive(Debug, serde::Deserialize)]
struct Ready {
    listen: SocketAddr,
    #[serde(default)]
    direct: Option<SocketAddr>,
}

/// A `handoff node` child process on loopback. Dropping it kills the process.
pub struct NodeProcess {
    child: Child,
    /// Its TCP address for steer, admin and peer connections.
    pub addr: SocketAddr,
    /// Its direct UDP path (no steer), when one was asked for.
    pub direct: Option<SocketAddr>,
}

impl NodeProcess {
    /// Starts a node named `name` hosting `instances`, optionally serving one of them directly
    /// (by instance name) on a loopback UDP port, and waits until it reports its addresses.
    pub async fn spawn(
        launcher: &NodeLauncher,
        name: &str,
        instances: &[&Subject],
        direct: Option<&str>,
    ) -> Result<Self, BenchError> {
        let not_ready = |reason: String| BenchError::NodeNotReady {
            node: name.to_owned(),
            reason,
        };
        let mut cmd = Command::new(&launcher.exe);
        cmd.args(["--log", &launcher.log, "node", "--name", name])
            .args(["--listen", "127.0.0.1:0", "--ready"]);
        for s in instances {
            cmd.args(["--instance", &s.spec()]);
        }
        if let Some(d) = direct {
            cmd.args(["--direct", &format!("{d}@127.0.0.1:0")]);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| BenchError::NodeSpawn {
            node: name.to_owned(),
            source,
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| not_ready("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(NODE_READY_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| not_ready(format!("not ready within {NODE_READY_TIMEOUT:?}")))?
            .map_err(|e| not_ready(e.to_string()))?
            .ok_or_else(|| not_ready("exited before becoming ready".into()))?;
        let ready: Ready =
            serde_json::from_str(&line).map_err(|e| not_ready(format!("said {line:?}: {e}")))?;
        Ok(Self {
            child,
            addr: ready.listen,
            direct: ready.direct,
        })
    }

    /// The node's resident set size, asked of the node itself.
    pub async fn rss_bytes(&self) -> Result<u64, BenchError> {
        let mut c = AdminClient::connect(self.addr, "bench").await?;
        Ok(c.call(&handoff_node::ops::Stats {}).await?.rss_bytes)
    }

    /// The process id (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the process (killed; waited for at most 5 s).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(NODE_STOP_TIMEOUT, self.child.wait()).await;
    }
}

/// Starts an in-process steer with one service for `subject` on `node`, with a control
/// listener (moves are driven over it, as the controller does), and waits until its link to
/// the node is up. Returns the steer and the service address.
pub async fn start_steer(
    catalog: &Catalog,
    subject: &Subject,
    node: SocketAddr,
) -> Result<(Steer, SocketAddr), BenchError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = SteerConfig {
        services: vec![ServiceConfig {
            instance: subject.instance.clone(),
            function: subject.function.clone(),
            listen: loopback,
            node,
        }],
        control: Some(loopback),
        ..SteerConfig::default()
    };
    let steer = Steer::start(cfg, |f| catalog.classifier(f)).await?;
    let (Some(addr), Some(stats)) = (
        steer.service_addr(&subject.instance),
        steer.stats(&subject.instance),
    ) else {
        steer.shutdown();
        return Err(BenchError::SteerUnlinked { node });
    };
    let deadline = tokio::time::Instant::now() + STEER_LINK_TIMEOUT;
    while stats.snapshot().link_connects == 0 {
        if tokio::time::Instant::now() > deadline {
            steer.shutdown();
            return Err(BenchError::SteerUnlinked { node });
        }
        tokio::time::sleep(STEER_LINK_POLL).await;
    }
    Ok((steer, addr))
}
