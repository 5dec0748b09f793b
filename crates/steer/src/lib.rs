//! The steer: the flow switch in front of instances.
//!
//! For each *service* (a UDP address clients send signals to, bound to one instance) the steer
//! classifies every datagram with the function's pure classifier, stamps it with the instance's
//! next seq and the current time, and queues it on the framed TCP link to the node hosting the
//! instance. Outputs come back on the same link and leave from the service address, so clients
//! only ever see that address. A `Tick` is injected into every instance's stream at a fixed
//! interval; ticks take seqs like any signal, so timers fire at the same point in every copy.
//!
//! Nothing here blocks the receive loop: when a node link's queue is full, the datagram is shed
//! and counted (the client retransmits), and malformed or unknown datagrams are counted and
//! dropped. A seq is only taken once the signal has a place in the queue, so seqs that reach the
//! node are dense.

#![warn(missing_docs)]

pub mod control;
mod link;
pub mod route;
mod service;
pub mod service_core;
mod stats;

pub use control::{ServiceStatus, SteerRequest};
pub use route::RoutePhase;
pub use service::{MoveCommand, ServiceConfig};
pub use service_core::{
    Answer, Boundary, Command, CommandError, DropCounter, Rebound, RouteStatus, ServiceCore,
};
pub use stats::{SteerStats, SteerStatsSnapshot};

use handoff_function::runtime::Classifier;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Steer-wide settings.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SteerConfig {
    /// Name used in hellos and logs.
    pub name: String,
    /// Interval between injected ticks, in milliseconds.
    pub tick_ms: u64,
    /// Signals queued per node link before new ones are shed.
    pub link_queue: usize,
    /// The services.
    pub services: Vec<ServiceConfig>,
    /// The shared secret offered to nodes and required of control clients (empty: none).
    pub token: String,
    /// Where the control listener (move commands from a controller or a source node) binds;
    /// none: in-process control only.
    pub control: Option<SocketAddr>,
    /// Where each service's route is kept across restarts (`<instance>.route.json`: its node,
    /// and whether a move was in progress). A service restarted in the middle of a move routes
    /// none of its signals until the controller installs the route again (`rebind`, then
    /// `serve`); one restarted between moves serves from the node it last served from. None:
    /// nothing is kept, and a restart during a move is not safe.
    pub state_dir: Option<std::path::PathBuf>,
    /// How long a frame may take from its first byte to its last, on the control listener's
    /// connections and on the links to nodes (ms; see `docs/wire.md`, "Timeouts").
    pub frame_timeout_ms: u64,
    /// How long a control connection may wait for its next request before it is closed (ms).
    /// The links to nodes are never closed for idleness.
    pub idle_timeout_ms: u64,
}

/// Who the steer says it is to nodes.
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) token: String,
}

/// A number that differs between two runs of a steer (start time and process id), reported
/// in status so a controller can tell the steer restarted.
fn new_incarnation() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 40)
}

impl Default for SteerConfig {
    fn default() -> Self {
        Self {
            name: "steer-1".into(),
            tick_ms: 1000,
            link_queue: 16_384,
            services: Vec::new(),
            token: String::new(),
            control: None,
            state_dir: None,
            frame_timeout_ms: handoff_wire::deadline::FRAME_TIMEOUT.as_millis() as u64,
            idle_timeout_ms: handoff_wire::deadline::IDLE_TIMEOUT.as_millis() as u64,
        }
    }
}

/// Why the steer could not start.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// A service names a function the steer does not know.
    #[error("service {service}: unknown function {function}")]
    UnknownFunction {
        /// The service's instance.
        service: String,
        /// The function named.
        function: String,
    },
    /// A service address could not be bound.
    #[error("service {service}: cannot bind {addr}: {source}")]
    Bind {
        /// The service's instance.
        service: String,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A service's thread (its data path's runtime) could not be started.
    #[error("service {service}: cannot start its thread: {source}")]
    Thread {
        /// The service's instance.
        service: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The state directory cannot be created or written.
    #[error("state directory {dir}: {source}")]
    StateDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why an in-process move command failed.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No service serves the instance.
    #[error("no service for instance {0}")]
    UnknownInstance(String),
    /// The service stopped before answering.
    #[error("the service stopped")]
    Stopped,
    /// The service refused the command.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// An answer of the wrong kind (a bug).
    #[error("unexpected answer {0:?}")]
    Unexpected(Answer),
}

/// One running service, as the steer's handle and its control listener see it.
pub(crate) struct ServiceHandle {
    pub(crate) instance: String,
    pub(crate) listen: SocketAddr,
    pub(crate) stats: Arc<SteerStats>,
    pub(crate) commands: tokio::sync::mpsc::Sender<MoveCommand>,
}

/// A running steer.
pub struct Steer {
    services: Arc<Vec<ServiceHandle>>,
    control: Option<SocketAddr>,
    incarnation: u64,
    stop: CancellationToken,
}

impl Steer {
    /// Binds every service address and starts serving. `classifier` looks a function up by name.
    pub async fn start(
        config: SteerConfig,
        classifier: impl Fn(&str) -> Option<Arc<dyn Classifier>>,
    ) -> Result<Self, SteerError> {
        let stop = CancellationToken::new();
        let incarnation = new_incarnation();
        if let Some(dir) = &config.state_dir {
            // Checked before serving: a route that could not be kept would make a restart
            // during a move unsafe without anyone knowing.
            let probe = dir.join(".write-probe");
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&probe, b"ok"))
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|source| SteerError::StateDir {
                    dir: dir.clone(),
                    source,
                })?;
        }
        let identity = Arc::new(Identity {
            name: config.name.clone(),
            token: config.token.clone(),
        });
        let deadlines = handoff_wire::deadline::Deadlines::control_ms(
            config.frame_timeout_ms,
            config.idle_timeout_ms,
        );
        let mut services = Vec::new();
        for svc in &config.services {
            let cls = classifier(&svc.function).ok_or_else(|| SteerError::UnknownFunction {
                service: svc.instance.clone(),
                function: svc.function.clone(),
            })?;
            let socket = UdpSocket::bind(svc.listen)
                .await
                .map_err(|source| SteerError::Bind {
                    service: svc.instance.clone(),
                    addr: svc.listen,
                    source,
                })?;
            size_buffers(&socket);
            let addr = socket.local_addr().unwrap_or(svc.listen);
            let stats = Arc::new(SteerStats::default());
            let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(16);
            let route_file = config
                .state_dir
                .as_ref()
                .map(|d| d.join(format!("{}.route.json", svc.instance)));
            let socket = socket.into_std().map_err(|source| SteerError::Bind {
                service: svc.instance.clone(),
                addr,
                source,
            })?;
            service::spawn(service::ServiceRun {
                cfg: svc.clone(),
                route_file,
                identity: identity.clone(),
                tick: Duration::from_millis(config.tick_ms.max(1)),
                queue: config.link_queue.max(1),
                classifier: cls,
                socket,
                stats: stats.clone(),
                commands: cmd_rx,
                stop: stop.child_token(),
                frame_timeout: deadlines.frame,
            })
            .map_err(|source| SteerError::Thread {
                service: svc.instance.clone(),
                source,
            })?;
            tracing::info!(instance = %svc.instance, %addr, node = %svc.node, "service up");
            services.push(ServiceHandle {
                instance: svc.instance.clone(),
                listen: addr,
                stats,
                commands: cmd_tx,
            });
        }
        let services = Arc::new(services);
        let mut control = None;
        if let Some(at) = config.control {
            let listener =
                tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|source| SteerError::Bind {
                        service: "control".into(),
                        addr: at,
                        source,
                    })?;
            let bound = listener.local_addr().unwrap_or(at);
            control = Some(bound);
            tracing::info!(addr = %bound, "control listener up");
            tokio::spawn(control::serve(
                listener,
                config.name.clone(),
                config.token.clone(),
                services.clone(),
                incarnation,
                deadlines,
                stop.child_token(),
            ));
        }
        tracing::info!(incarnation, "steer up");
        Ok(Self {
            services,
            control,
            incarnation,
            stop,
        })
    }

    /// This run's incarnation (differs after a restart).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The bound address of the control listener, if one was configured.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }

    /// The bound address of the service for `instance`.
    pub fn service_addr(&self, instance: &str) -> Option<SocketAddr> {
        self.services
            .iter()
            .find(|s| s.instance == instance)
            .map(|s| s.listen)
    }

    /// The counters of the service for `instance`.
    pub fn stats(&self, instance: &str) -> Option<Arc<SteerStats>> {
        self.services
            .iter()
            .find(|s| s.instance == instance)
            .map(|s| s.stats.clone())
    }

    /// Sends a move command to the service of `instance`; `false` if there is none.
    pub async fn command(&self, instance: &str, command: MoveCommand) -> bool {
        match self.services.iter().find(|s| s.instance == instance) {
            Some(s) => s.commands.send(command).await.is_ok(),
            None => false,
        }
    }

    /// Carries out `command` on the service of `instance` and returns its answer.
    pub async fn ask(&self, instance: &str, command: Command) -> Result<Answer, AskError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        if !self.command(instance, MoveCommand { command, done }).await {
            return Err(AskError::UnknownInstance(instance.to_owned()));
        }
        Ok(rx.await.map_err(|_| AskError::Stopped)??)
    }

    async fn boundary(&self, instance: &str, command: Command) -> Result<Boundary, AskError> {
        match self.ask(instance, command).await? {
            Answer::Boundary(b) => Ok(b),
            other => Err(AskError::Unexpected(other)),
        }
    }

    async fn keys(&self, instance: &str, command: Command) -> Result<Vec<bytes::Bytes>, AskError> {
        match self.ask(instance, command).await? {
            Answer::Keys(k) => Ok(k),
            other => Err(AskError::Unexpected(other)),
        }
    }

    async fn done(&self, instance: &str, command: Command) -> Result<(), AskError> {
        match self.ask(instance, command).await? {
            Answer::Done => Ok(()),
            other => Err(AskError::Unexpected(other)),
        }
    }

    /// Enters move mode towards `destination`; returns the first seq under it.
    pub async fn begin_move(
        &self,
        instance: &str,
        destination: SocketAddr,
        abort_safe: bool,
    ) -> Result<u64, AskError> {
        let c = Command::Begin {
            destination,
            abort_safe,
            incarnation: None,
        };
        Ok(self.boundary(instance, c).await?.boundary)
    }

    /// Flips the route; returns the boundary seq and the last seq sent to the source.
    pub async fn cutover(&self, instance: &str) -> Result<Boundary, AskError> {
        self.boundary(instance, Command::Cutover).await
    }

    /// Makes the destination the owner.
    pub async fn finish_move(&self, instance: &str) -> Result<(), AskError> {
        self.done(instance, Command::Finish).await
    }

    /// Returns the route to the source; returns the sessions created on the destination.
    pub async fn abort_move(&self, instance: &str) -> Result<Vec<bytes::Bytes>, AskError> {
        self.keys(instance, Command::Abort).await
    }

    /// Two-step abort, first step: only the sessions created during the move (returned) still
    /// go to the destination.
    pub async fn abort_begin(&self, instance: &str) -> Result<Vec<bytes::Bytes>, AskError> {
        self.keys(instance, Command::AbortBegin).await
    }

    /// Two-step abort, second step: everything goes to the source from the returned boundary.
    pub async fn abort_commit(&self, instance: &str) -> Result<Boundary, AskError> {
        self.boundary(instance, Command::AbortCommit).await
    }

    /// Holds the instance's signals at the steer; returns the last seq sent to its node.
    pub async fn hold(&self, instance: &str) -> Result<u64, AskError> {
        match self.ask(instance, Command::Hold).await? {
            Answer::LastSeq(s) => Ok(s),
            other => Err(AskError::Unexpected(other)),
        }
    }

    /// Ends a hold: `to` becomes the instance's node and gets the held signals first.
    pub async fn release(&self, instance: &str, to: SocketAddr) -> Result<(), AskError> {
        self.done(instance, Command::Release { to }).await
    }

    /// The route of `instance`.
    pub async fn route_status(&self, instance: &str) -> Result<RouteStatus, AskError> {
        match self.ask(instance, Command::Status).await? {
            Answer::Status(s) => Ok(s),
            other => Err(AskError::Unexpected(other)),
        }
    }

    /// Stops every service.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

/// Socket buffers of service sockets: a burst of this many bytes queues instead of dropping.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Asks for [`UDP_BUFFER_BYTES`] of kernel buffer each way (the kernel may cap it; a smaller
/// buffer only means earlier drops under bursts, which clients retransmit).
pub fn size_buffers(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(UDP_BUFFER_BYTES);
}

impl Drop for Steer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
