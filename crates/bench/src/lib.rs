//! Benchmarks as a library: the contenders `handoff bench` runs side by side, the loopback
//! clusters they run on, and the reports with their ratios (DESIGN.md "Testing and
//! measurement": benchmarks are programs that print ratios measured in one run). The
//! `handoff` binary only parses flags, calls [`MoveBench::run`] or [`steer_bench`], and prints.
//!
//! # Layout
//!
//! - [`moves`]: moving a [`Subject`] between nodes: the live move (the controller's own move
//!   machine and driver), stop-and-copy and iterative pre-copy.
//! - [`transfer`]: the contenders without load (raw TCP, Redis `MIGRATE`) over the records a
//!   live move ended with.
//! - [`resp`]: the small Redis client the Redis contender needs.
//! - [`cluster`]: `handoff node` child processes and an in-process steer on loopback.
//! - [`move_bench`]: `handoff bench move`: settings, plan, the loaded runs, progress events.
//! - [`report`]: the move report (its JSON is a stable format) and the ratio computation.
//! - [`steer_bench`]: `handoff bench steer`: the steer's sustainable rate, latency and CPU
//!   per signal against the node's direct path and an nginx UDP proxy.
//! - [`hops`]: the relay processes `bench steer` starts (a `handoff steer`, nginx).
//! - [`cpu`]: a process's CPU time from `/proc`.
//!
//! # Why testkit's clusters are separate
//!
//! `handoff-testkit` runs nodes in process and hands tests the [`handoff_node::Node`], so
//! they can look inside it; benchmarks run nodes as child processes so the node's work does
//! not share a runtime with the steer and the load. Only the "start a one-service steer and
//! wait for its link" part is the same, and testkit cannot borrow it from here: testkit is a
//! dev-dependency of the steer, node, controller and loadgen crates, all of which this crate
//! depends on, so every low-level crate's tests would build the controller and the load
//! generator. That wait belongs in `handoff-steer` (a `Steer::wait_linked`), where both can
//! call it.

pub mod cluster;
pub mod cpu;
pub mod hops;
pub mod instructions;
pub mod move_bench;
pub mod moves;
pub mod report;
pub mod resp;
pub mod steer_bench;
pub mod transfer;

pub use cluster::{start_steer, NodeLauncher, NodeProcess};
pub use move_bench::{ConfigError, Event, MoveBench, MoveBenchOptions, Observer};
pub use moves::{baseline_move, live_move, BaselineReport, MoveReport, PreCopyRule};
pub use report::{Machine, MoveBenchReport};

use std::net::SocketAddr;

/// The instance a benchmark moves or loads, and its function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The instance's name, e.g. `mme-1`.
    pub instance: String,
    /// Its function, e.g. `vmme`.
    pub function: String,
}

impl Subject {
    /// `instance` of `function`.
    pub fn new(instance: impl Into<String>, function: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            function: function.into(),
        }
    }

    /// `INSTANCE:FUNCTION`, as `handoff node --instance` takes it.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.instance, self.function)
    }
}

/// Why a benchmark step failed. A contender's failure is reported in its row (its `error`);
/// only what stops a whole run before it starts reaches the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// No `redis-server` executable on `PATH`.
    #[error(
        "redis-server not found on PATH: `handoff bench move` runs Redis MIGRATE as a \
         contender; install it with scripts/setup (Debian package redis-server)"
    )]
    RedisNotFound,
    /// A `redis-server` did not start.
    #[error("redis-server {name}: {reason}")]
    RedisStart { name: String, reason: String },
    /// A Redis command failed.
    #[error(transparent)]
    Redis(#[from] resp::RespError),
    /// Redis A does not hold what was loaded into it.
    #[error("redis A holds {loaded} keys after loading {expected}")]
    RedisLoad { loaded: i64, expected: usize },
    /// An `INFO` reply lacks a field.
    #[error("redis INFO has no {0}")]
    RedisInfo(&'static str),
    /// A node process could not be started.
    #[error("cannot start node {node}: {source}")]
    NodeSpawn {
        node: String,
        source: std::io::Error,
    },
    /// A node process started but did not report its addresses.
    #[error("node {node} did not become ready: {reason}")]
    NodeNotReady { node: String, reason: String },
    /// The steer did not start.
    #[error(transparent)]
    Steer(#[from] handoff_steer::SteerError),
    /// No nginx executable, or no stream module.
    #[error(
        "nginx not found: `handoff bench steer` runs nginx's UDP proxy as a contender; install \
         it with scripts/setup (Debian packages nginx-light and libnginx-mod-stream)"
    )]
    NginxNotFound,
    /// A relay process (the steer, nginx) did not start serving.
    #[error("cannot start the {relay}: {reason}")]
    RelayStart { relay: &'static str, reason: String },
    /// The steer did not reach its node in time.
    #[error("the steer could not reach node {node} within 10 s")]
    SteerUnlinked { node: SocketAddr },
    /// The steer has no control listener to drive a move over.
    #[error("the steer has no control listener")]
    NoControlListener,
    /// The steer refused a hold or a release.
    #[error("the steer refused for {instance}: {reason}")]
    SteerRefused { instance: String, reason: String },
    /// A node's admin request failed.
    #[error(transparent)]
    Admin(#[from] handoff_wire::client::ClientError),
    /// A node's answer did not decode.
    #[error("{request}: unexpected answer: {reason}")]
    BadAnswer {
        request: &'static str,
        reason: String,
    },
    /// The move machine refused the move's spec.
    #[error("the move was refused: {0}")]
    MoveRefused(String),
    /// The live move ended in another phase than done.
    #[error("the move ended {phase}: {reason}")]
    MoveEnded { phase: String, reason: String },
    /// The load generator refused its settings.
    #[error("load generator: {0}")]
    LoadConfig(String),
    /// The load generator failed.
    #[error("load generator: {0}")]
    Load(std::io::Error),
    /// The load never reached its measured phase, so nothing was moved.
    #[error("the load never reached its measured phase")]
    NeverMeasured,
    /// A task of the run panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// A record key longer than the raw TCP framing carries (255 bytes).
    #[error("a key of {0} bytes is longer than 255 bytes")]
    KeyTooLong(usize),
    /// The raw TCP reader thread panicked.
    #[error("the raw TCP reader thread panicked")]
    ReaderPanicked,
    /// Local I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_given_to_nodes_as_instance_colon_function() {
        let s = Subject::new("radius-7", "radius-acct");
        assert_eq!(s.spec(), "radius-7:radius-acct");
        assert_eq!(
            (s.instance.as_str(), s.function.as_str()),
            ("radius-7", "radius-acct")
        );
    }
}
