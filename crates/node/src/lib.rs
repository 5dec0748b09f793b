//! The node agent: the process on each host that runs instances.
//!
//! A node accepts framed TCP connections (see `handoff-wire`). A steer connection binds route
//! ids to instances and then streams signals; the node applies each instance's signals in seq
//! order on that instance's own task (instances run in parallel) and streams the outputs back on
//! the same connection. An admin connection asks for stats, state dumps, instance creation and
//! ruleset changes. A node can also serve one instance directly on a UDP port with no steer (the
//! *direct path*, the benchmark baseline).

#![warn(missing_docs)]

mod admin;
pub mod client;
mod conn;
pub mod copy;
pub mod copy_core;
mod direct;
mod frames;
mod instance;
pub mod instance_core;
pub mod ops;
mod peer;
pub mod push;
pub mod sys;

pub use admin::AdminRequest;
pub use direct::{serve_direct, DirectStats};
pub use instance::{InstanceHandle, Reply};
pub use ops::{DirectInfo, InstanceInfo, NodeStats};

use handoff_function::runtime::Catalog;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A node's settings file (see `docs/node.example.toml`); flags override it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name.
    pub name: Option<String>,
    /// TCP address for steer, admin and peer connections.
    pub listen: Option<std::net::SocketAddr>,
    /// Shared token.
    #[serde(default)]
    pub token: String,
    /// Instances hosted from the start.
    #[serde(default)]
    pub instances: Vec<NodeInstance>,
}

/// An instance in a node's settings file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInstance {
    /// Its name.
    pub name: String,
    /// Its function.
    pub function: String,
}

/// Limits of a node (every queue is bounded).
#[derive(Clone, Debug)]
pub struct NodeLimits {
    /// Batches of signals queued per instance before readers wait (backpressure to the steer).
    pub instance_queue: usize,
    /// Batches of frames queued per connection writer.
    pub conn_queue: usize,
    /// Concurrent connections accepted.
    pub max_connections: usize,
    /// How long a frame may take from its first byte to its last on any connection, and how
    /// long an admin or peer connection may wait for its next frame before it is closed (a
    /// steer's connection is never closed for idleness). See `docs/wire.md`, "Timeouts".
    pub deadlines: handoff_wire::deadline::Deadlines,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            instance_queue: 1024,
            conn_queue: 1024,
            max_connections: 256,
            deadlines: handoff_wire::deadline::Deadlines::CONTROL,
        }
    }
}

/// Errors of node operations, each with a stable wire code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No instance of that name is hosted here.
    #[error("instance {0} is not hosted on this node")]
    UnknownInstance(String),
    /// The function is not in this node's catalog.
    #[error("function {0} is not known to this node")]
    UnknownFunction(String),
    /// An instance of that name already exists.
    #[error("instance {0} already exists")]
    Exists(String),
    /// The request names a move or incarnation that did not create the instance.
    #[error("{0}")]
    Foreign(String),
}

impl NodeError {
    /// The stable code sent in `Frame::Error`.
    pub fn code(&self) -> u16 {
        use handoff_wire::code;
        match self {
            NodeError::UnknownInstance(_) => code::UNKNOWN_INSTANCE,
            NodeError::UnknownFunction(_) => code::UNKNOWN_FUNCTION,
            NodeError::Exists(_) => code::EXISTS,
            NodeError::Foreign(_) => code::FOREIGN,
        }
    }
}

/// A node: its name, catalog of functions and hosted instances.
pub struct Node {
    name: String,
    catalog: Catalog,
    limits: NodeLimits,
    instances: Mutex<BTreeMap<String, InstanceHandle>>,
    shutdown: CancellationToken,
    token: String,
    mover: std::sync::OnceLock<Arc<dyn MoveDriver>>,
    /// Hashes incarnations: its keys are random per process, so two runs of a node never
    /// give out the same incarnation.
    incarnations: std::collections::hash_map::RandomState,
    created: std::sync::atomic::AtomicU64,
    /// Connections closed because they stalled.
    conns: handoff_wire::deadline::StallCounters,
    /// The counters of each instance served on a direct UDP port.
    direct: Mutex<BTreeMap<String, Arc<direct::DirectStats>>>,
    /// Copied records still to corrupt on arrival (fault injection for tests).
    #[cfg(feature = "faults")]
    corrupt_copy_records: std::sync::atomic::AtomicU64,
    #[cfg(feature = "faults")]
    corrupt_offset: std::sync::atomic::AtomicU64,
}

/// Runs a whole move from this node (the source-driven variant, seed 000 Fig. 7a): the node
/// binary installs one (the move machine lives in the controller crate, above this one).
pub trait MoveDriver: Send + Sync + 'static {
    /// Moves `req.instance` from this node as asked; answers with the move's final report.
    fn migrate(
        &self,
        req: MigrateRequest,
    ) -> futures::future::BoxFuture<'static, Result<ops::MigrateReport, String>>;

    /// Asks the move of `instance` this driver runs to abort (honoured before its cutover);
    /// `false` when none runs.
    fn abort(&self, instance: &str, reason: String) -> bool {
        let _ = (instance, reason);
        false
    }
}

/// Answers `abort_migrate` (a leaf of the admin session, kept here beside the driver).
pub(crate) fn abort_migrate(node: &Node, instance: String) -> handoff_wire::Frame {
    use crate::frames::{error, reply};
    let asked = node
        .move_driver()
        .is_some_and(|d| d.abort(&instance, "aborted by the operator".into()));
    if asked {
        reply(&ops::AbortingMigrate { aborting: instance })
    } else {
        error(
            handoff_wire::code::BAD_REQUEST,
            format!("no source-driven move of {instance} runs on this node"),
        )
    }
}

/// Answers `plan_copy`: the plan checked against the instance's bytes now, as `copy_to`
/// checks it.
pub(crate) fn plan_copy(node: &Node, req: &ops::PlanCopy) -> handoff_wire::Frame {
    use crate::frames::{error, reply};
    let h = match node.instance(&req.instance) {
        Ok(h) => h,
        Err(e) => return error(e.code(), e.to_string()),
    };
    let bytes = h.table().payload_bytes();
    match req.plan.check(bytes, copy::CORE_COPY_BPS) {
        Ok(rate_bps) => reply(&ops::CopyPlanned {
            sessions: h.table().len() as u64,
            bytes,
            rate_bps,
        }),
        Err(e) => error(handoff_wire::code::BAD_REQUEST, e.to_string()),
    }
}

/// A source-driven move, as asked of the source node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The instance (hosted here).
    pub instance: String,
    /// Its function (filled in by the node from the instance it hosts).
    #[serde(default)]
    pub function: String,
    /// The destination node.
    pub destination: std::net::SocketAddr,
    /// The steer's control address.
    pub steer: std::net::SocketAddr,
    /// Copy order.
    #[serde(default = "hot_first")]
    pub order: handoff_state::CopyOrder,
    /// Copy limits.
    #[serde(default)]
    pub plan: handoff_state::CopyPlan,
    /// Duplicate creates too.
    #[serde(default)]
    pub abort_safe: bool,
    /// Lead K, ms.
    #[serde(default)]
    pub lead_ms: u64,
}

fn hot_first() -> handoff_state::CopyOrder {
    handoff_state::CopyOrder::HotFirst
}

impl Node {
    /// A node with no instances.
    pub fn new(name: impl Into<String>, catalog: Catalog, limits: NodeLimits) -> Arc<Self> {
        Self::with_token(name, catalog, limits, String::new())
    }

    /// A node with no instances that requires `token` in every hello (empty: none required)
    /// and offers it to the nodes it copies to.
    pub fn with_token(
        name: impl Into<String>,
        catalog: Catalog,
        limits: NodeLimits,
        token: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            catalog,
            limits,
            instances: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
            token,
            mover: std::sync::OnceLock::new(),
            incarnations: std::collections::hash_map::RandomState::new(),
            created: std::sync::atomic::AtomicU64::new(0),
            conns: handoff_wire::deadline::StallCounters::default(),
            direct: Mutex::new(BTreeMap::new()),
            #[cfg(feature = "faults")]
            corrupt_copy_records: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "faults")]
            corrupt_offset: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Fault injection (feature `faults`, tests only): the next `n` records a copy brings to
    /// this node arrive with the byte at `offset` flipped (records shorter than that are left
    /// alone), as if corrupted on the way, so the digest check and the re-send of differing
    /// buckets can be exercised end to end.
    #[cfg(feature = "faults")]
    pub fn corrupt_copy_records(&self, n: u64, offset: usize) {
        use std::sync::atomic::Ordering;
        self.corrupt_offset.store(offset as u64, Ordering::SeqCst);
        self.corrupt_copy_records.store(n, Ordering::SeqCst);
    }

    /// Applies any injected corruption to a record arriving by a copy.
    #[cfg(feature = "faults")]
    pub(crate) fn fault_on_copy_record(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        use std::sync::atomic::Ordering;
        let offset = self.corrupt_offset.load(Ordering::SeqCst) as usize;
        if offset >= bytes.len() {
            return bytes;
        }
        let take =
            self.corrupt_copy_records
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match take {
            Ok(_) => {
                let mut b = bytes.to_vec();
                b[offset] ^= 0x01;
                b.into()
            }
            Err(_) => bytes,
        }
    }

    #[cfg(not(feature = "faults"))]
    #[inline]
    pub(crate) fn fault_on_copy_record(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        bytes
    }

    /// Installs the driver of source-driven moves (once; later calls are ignored).
    pub fn set_move_driver(&self, driver: Arc<dyn MoveDriver>) {
        let _ = self.mover.set(driver);
    }

    /// The driver of source-driven moves, if installed.
    pub fn move_driver(&self) -> Option<Arc<dyn MoveDriver>> {
        self.mover.get().cloned()
    }

    /// Whether a hello's token is the one this node requires (compared in constant time).
    pub fn admits(&self, token: &str) -> bool {
        handoff_wire::token_matches(&self.token, token)
    }

    /// The shared secret this node offers to peers.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new incarnation: random per process and per creation, never 0.
    fn next_incarnation(&self) -> u64 {
        use std::hash::BuildHasher;
        let n = self
            .created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.incarnations
            .hash_one((n, nanos, std::process::id()))
            .max(1)
    }

    /// Creates an instance of `function` named `instance` and starts its task.
    pub fn create_instance(&self, instance: &str, function: &str) -> Result<(), NodeError> {
        self.create_instance_marked(instance, function, None)
            .map(|_| ())
    }

    /// Creates an instance as a move's shadow (`prepared_by`: the move) and returns its handle.
    pub(crate) fn create_instance_marked(
        &self,
        instance: &str,
        function: &str,
        prepared_by: Option<String>,
    ) -> Result<InstanceHandle, NodeError> {
        let mut map = self.instances.lock();
        if map.contains_key(instance) {
            return Err(NodeError::Exists(instance.to_owned()));
        }
        let hosted = self
            .catalog
            .instantiate(function)
            .ok_or_else(|| NodeError::UnknownFunction(function.to_owned()))?;
        let incarnation = self.next_incarnation();
        let handle = InstanceHandle::spawn(
            instance.to_owned(),
            hosted,
            self.limits.instance_queue,
            self.shutdown.child_token(),
            incarnation,
        );
        handle.mark(|m| m.prepared_by = prepared_by);
        tracing::info!(instance, function, incarnation, "instance created");
        map.insert(instance.to_owned(), handle.clone());
        Ok(handle)
    }

    /// Stops and removes an instance; signals still queued for it are dropped (a drained
    /// move source has none).
    pub fn drop_instance(&self, instance: &str) -> Result<(), NodeError> {
        self.drop_instance_for(instance, None, None)
    }

    /// Stops and removes an instance for a move's cleanup: naming a move (`move_tag`), only
    /// if that move created it or fully copied from it, and naming an incarnation, only that
    /// one; otherwise [`NodeError::Foreign`] and the instance is left alone.
    pub fn drop_instance_for(
        &self,
        instance: &str,
        move_tag: Option<&str>,
        incarnation: Option<u64>,
    ) -> Result<(), NodeError> {
        let mut map = self.instances.lock();
        let h = map
            .get(instance)
            .ok_or_else(|| NodeError::UnknownInstance(instance.to_owned()))?;
        if let Some(want) = incarnation.filter(|i| *i != h.incarnation()) {
            return Err(NodeError::Foreign(format!(
                "instance {instance} is incarnation {}, not {want}: left alone",
                h.incarnation()
            )));
        }
        if let Some(tag) = move_tag {
            let m = h.marks();
            let ours = m.prepared_by.as_deref() == Some(tag) || m.leaving.as_deref() == Some(tag);
            if !ours {
                return Err(NodeError::Foreign(format!(
                    "instance {instance} was not created by move {tag} nor copied from by it \
                     (created by {}, source of {}): left alone",
                    m.prepared_by.as_deref().unwrap_or("no move"),
                    m.leaving.as_deref().unwrap_or("no move"),
                )));
            }
        }
        let h = map.remove(instance).expect("present");
        drop(map);
        h.stop();
        tracing::info!(
            instance,
            incarnation = h.incarnation(),
            move_tag,
            "instance dropped"
        );
        Ok(())
    }

    /// The handle of a hosted instance.
    pub fn instance(&self, instance: &str) -> Result<InstanceHandle, NodeError> {
        self.instances
            .lock()
            .get(instance)
            .cloned()
            .ok_or_else(|| NodeError::UnknownInstance(instance.to_owned()))
    }

    /// The catalog's classifier for an instance's function.
    pub fn classifier(
        &self,
        instance: &str,
    ) -> Result<Arc<dyn handoff_function::runtime::Classifier>, NodeError> {
        let h = self.instance(instance)?;
        self.catalog
            .classifier(h.function())
            .ok_or_else(|| NodeError::UnknownFunction(h.function().to_owned()))
    }

    /// Stats of the node and each instance.
    pub fn stats(&self) -> NodeStats {
        let instances = self
            .instances
            .lock()
            .values()
            .map(InstanceHandle::info)
            .collect();
        NodeStats {
            node: self.name.clone(),
            rss_bytes: sys::rss_bytes(),
            instances,
            connections: self.conns.snapshot(),
            direct: self
                .direct
                .lock()
                .iter()
                .map(|(instance, s)| s.info(instance))
                .collect(),
        }
    }

    /// The counters of `instance`'s direct UDP path, reported in [`Node::stats`] from now on
    /// (hand them to [`serve_direct`]).
    pub fn direct_stats(&self, instance: &str) -> Arc<direct::DirectStats> {
        self.direct
            .lock()
            .entry(instance.to_owned())
            .or_default()
            .clone()
    }

    /// The connection counters.
    pub(crate) fn conns(&self) -> &handoff_wire::deadline::StallCounters {
        &self.conns
    }

    /// The limits.
    pub(crate) fn limits(&self) -> &NodeLimits {
        &self.limits
    }

    /// Stops every instance task and connection.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token cancelled when the node shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Accepts connections on `listener` until the node shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let permits = Arc::new(tokio::sync::Semaphore::new(node.limits.max_connections));
    let stop = node.shutdown_token();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = conn::handle(node, stream).await {
                        tracing::debug!(%peer, error = %e, "connection closed with error");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
