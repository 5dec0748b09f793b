//! The controller daemon: the cluster view from its config and store, a control listener
//! (hello with the shared token, then JSON requests) and the moves it drives.

use crate::driver::{drive, NetDriver, Progress};
use crate::machine::{MoveMachine, MoveSpec, Phase};
use crate::ops;
use crate::store::Store;
use futures::SinkExt;
use handoff_wire::{code, Frame, FrameCodec};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// A node the controller knows.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Its name.
    pub name: String,
    /// Its TCP address.
    pub addr: SocketAddr,
}

/// A steer the controller knows.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerEntry {
    /// Its name.
    pub name: String,
    /// Its control address.
    pub control: SocketAddr,
}

/// An instance the controller manages.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceEntry {
    /// Its name.
    pub name: String,
    /// Its function.
    pub function: String,
    /// The node it starts on (the store remembers where moves took it).
    pub node: String,
    /// The steer in front of it.
    pub steer: String,
}

/// The controller's settings (TOML; see `docs/controller.example.toml`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Control listener address.
    pub listen: SocketAddr,
    /// Shared token required of clients and offered to nodes and steers (empty: none).
    pub token: String,
    /// The store's file.
    pub store: PathBuf,
    /// Nodes.
    pub nodes: Vec<NodeEntry>,
    /// Steers.
    pub steers: Vec<SteerEntry>,
    /// Instances.
    pub instances: Vec<InstanceEntry>,
    /// How long a request frame may take from its first byte to its last (ms; see
    /// `docs/wire.md`, "Timeouts").
    pub frame_timeout_ms: u64,
    /// How long a control connection may wait for its next request before it is closed (ms).
    pub idle_timeout_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            token: String::new(),
            store: PathBuf::from("handoff-controller.redb"),
            nodes: Vec::new(),
            steers: Vec::new(),
            instances: Vec::new(),
            frame_timeout_ms: handoff_wire::deadline::FRAME_TIMEOUT.as_millis() as u64,
            idle_timeout_ms: handoff_wire::deadline::IDLE_TIMEOUT.as_millis() as u64,
        }
    }
}

impl ControllerConfig {
    /// Checks that every name an instance uses is defined.
    pub fn validate(&self) -> Result<(), String> {
        for i in &self.instances {
            if !self.nodes.iter().any(|n| n.name == i.node) {
                return Err(format!("instance {}: unknown node {}", i.name, i.node));
            }
            if !self.steers.iter().any(|s| s.name == i.steer) {
                return Err(format!("instance {}: unknown steer {}", i.name, i.steer));
            }
        }
        Ok(())
    }
}

/// A request to the controller: one variant per operation, carrying its request type (see
/// [`crate::ops`]). Unknown fields are refused, `status` included.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControllerRequest {
    /// See [`ops::Status`].
    Status(ops::Status),
    /// See [`ops::Migrate`].
    Migrate(ops::Migrate),
    /// See [`ops::GetMoveStatus`].
    MoveStatus(ops::GetMoveStatus),
    /// See [`ops::Abort`].
    Abort(ops::Abort),
}

struct Running {
    abort: watch::Sender<Option<String>>,
    progress: watch::Receiver<Progress>,
}

/// The running controller.
pub struct Controller {
    cfg: ControllerConfig,
    store: Arc<Mutex<Store>>,
    running: Mutex<BTreeMap<u64, Running>>,
    driver: Arc<NetDriver>,
    stop: CancellationToken,
    /// Control connections closed because they stalled.
    stalls: handoff_wire::deadline::StallCounters,
}

type Reply = Result<serde_json::Value, (u16, String)>;

fn bad(m: impl Into<String>) -> (u16, String) {
    (code::BAD_REQUEST, m.into())
}

impl Controller {
    /// Opens the store and resumes (or cleanly aborts) the moves a previous run left.
    pub fn start(cfg: ControllerConfig) -> anyhow::Result<Arc<Self>> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let store = Store::open(&cfg.store)?;
        for i in &cfg.instances {
            if store.placement(&i.name)?.is_none() {
                store.set_placement(&i.name, &i.node)?;
            }
        }
        let unfinished: Vec<MoveMachine> = store
            .moves()?
            .into_iter()
            .filter(|m| !m.phase.is_terminal())
            .collect();
        let c = Arc::new(Self {
            driver: Arc::new(NetDriver {
                name: "controller".into(),
                token: cfg.token.clone(),
            }),
            cfg,
            store: Arc::new(Mutex::new(store)),
            running: Mutex::new(BTreeMap::new()),
            stop: CancellationToken::new(),
            stalls: Default::default(),
        });
        for mut m in unfinished {
            let before = m.phase;
            m.recover(m.phase_started_ms);
            tracing::warn!(id = m.spec.id, instance = %m.spec.instance, ?before, after = ?m.phase,
                "resuming a move left by the previous run");
            c.launch(m);
        }
        Ok(c)
    }

    fn node_addr(&self, name: &str) -> Option<SocketAddr> {
        self.cfg
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.addr)
    }

    fn node_name(&self, addr: SocketAddr) -> String {
        self.cfg
            .nodes
            .iter()
            .find(|n| n.addr == addr)
            .map_or_else(|| addr.to_string(), |n| n.name.clone())
    }

    fn launch(self: &Arc<Self>, m: MoveMachine) {
        let id = m.spec.id;
        let (abort_tx, abort_rx) = watch::channel(None);
        // From the persisted figures: a move resumed after a restart does not read 0.
        let (progress_tx, progress_rx) = watch::channel(Progress::of(&m, m.phase_started_ms));
        self.running.lock().insert(
            id,
            Running {
                abort: abort_tx,
                progress: progress_rx,
            },
        );
        let this = self.clone();
        tokio::spawn(async move {
            let store = this.store.clone();
            let persist = move |m: &MoveMachine| {
                if let Err(e) = store.lock().put_move(m) {
                    tracing::error!(error = %e, "cannot persist the move");
                }
            };
            let done = tokio::select! {
                m = drive(m, &this.driver, persist, abort_rx, progress_tx) => m,
                _ = this.stop.cancelled() => return,
            };
            let store = this.store.lock();
            if let Err(e) = store.put_move(&done) {
                tracing::error!(error = %e, "cannot persist the move");
            }
            if done.phase == Phase::Done {
                let to = this.node_name(done.spec.destination);
                if let Err(e) = store.set_placement(&done.spec.instance, &to) {
                    tracing::error!(error = %e, "cannot record the placement");
                }
            }
            drop(store);
            // Ended moves are read from the store; the running table stays bounded.
            this.running.lock().remove(&id);
            tracing::info!(id, instance = %done.spec.instance, phase = ?done.phase,
                reason = ?done.reason, "move ended");
        });
    }

    /// Handles one request; the reply is the operation's typed reply as JSON.
    pub async fn handle(self: &Arc<Self>, req: ControllerRequest) -> Reply {
        fn json<T: serde::Serialize>(r: Result<T, (u16, String)>) -> Reply {
            r.and_then(|v| serde_json::to_value(v).map_err(|e| bad(e.to_string())))
        }
        match req {
            ControllerRequest::Status(ops::Status {}) => json(Ok(self.status().await)),
            ControllerRequest::Migrate(r) => json(self.migrate(r).await),
            ControllerRequest::MoveStatus(ops::GetMoveStatus { id }) => json(self.move_status(id)),
            ControllerRequest::Abort(ops::Abort { id }) => json(self.abort(id)),
        }
    }

    /// Starts a move (see [`ops::Migrate`]).
    pub async fn migrate(
        self: &Arc<Self>,
        req: ops::Migrate,
    ) -> Result<ops::MoveStarted, (u16, String)> {
        let ops::Migrate {
            instance,
            to,
            order,
            plan,
            abort_safe,
            lead_ms,
        } = req;
        let entry = self
            .cfg
            .instances
            .iter()
            .find(|i| i.name == instance)
            .ok_or_else(|| {
                (
                    code::UNKNOWN_INSTANCE,
                    format!("unknown instance {instance}"),
                )
            })?;
        let from = self
            .store
            .lock()
            .placement(&instance)
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or_else(|| entry.node.clone());
        let source = self
            .node_addr(&from)
            .ok_or_else(|| bad(format!("unknown node {from}")))?;
        let destination = self
            .node_addr(&to)
            .ok_or_else(|| bad(format!("unknown node {to}")))?;
        let steer = self
            .cfg
            .steers
            .iter()
            .find(|s| s.name == entry.steer)
            .map(|s| s.control)
            .ok_or_else(|| bad(format!("unknown steer {}", entry.steer)))?;
        plan.check(0, 1).map_err(|e| bad(e.to_string()))?;
        // The plan against what the source holds now, before anything changes (the steer
        // is not switched for a move its copy could not make).
        self.check_plan(source, &from, &instance, plan).await?;
        let busy = self.store.lock().moves().map_err(|e| bad(e.to_string()))?;
        if busy
            .iter()
            .any(|m| m.spec.instance == instance && !m.phase.is_terminal())
        {
            return Err(bad(format!("{instance} is already moving")));
        }
        let id = self
            .store
            .lock()
            .next_move_id()
            .map_err(|e| bad(e.to_string()))?;
        let m = MoveMachine::new(
            MoveSpec {
                id,
                instance: instance.clone(),
                function: entry.function.clone(),
                source,
                destination,
                steer,
                order,
                plan,
                abort_safe,
                lead_ms,
            },
            0,
        )
        .map_err(bad)?;
        self.store
            .lock()
            .put_move(&m)
            .map_err(|e| bad(e.to_string()))?;
        tracing::info!(id, %instance, %from, %to, "move started");
        self.launch(m);
        Ok(ops::MoveStarted {
            id,
            instance,
            from,
            to,
        })
    }

    /// Asks the source node whether the copy plan can be met for what `instance` holds
    /// there now: `BAD_REQUEST` with the reason when not, `NOT_REACHABLE` when the node
    /// does not answer, the node's own code for another refusal.
    async fn check_plan(
        &self,
        source: SocketAddr,
        from: &str,
        instance: &str,
        plan: handoff_state::CopyPlan,
    ) -> Result<(), (u16, String)> {
        use handoff_wire::client::ClientError;
        match self.driver.check_plan(source, instance, plan).await {
            Ok(_) => Ok(()),
            Err(ClientError::Refused {
                code: code::BAD_REQUEST,
                message,
                ..
            }) => Err(bad(format!(
                "the copy plan cannot be met for {instance} on {from}: {message}"
            ))),
            Err(ClientError::Refused { code, message, .. }) => {
                Err((code, format!("source node {from}: {message}")))
            }
            Err(e) => Err((
                code::NOT_REACHABLE,
                format!("source node {from} cannot be asked about the copy plan: {e}"),
            )),
        }
    }

    /// A move's status (see [`ops::GetMoveStatus`]).
    pub fn move_status(&self, id: u64) -> Result<ops::MoveStatus, (u16, String)> {
        let progress = self
            .running
            .lock()
            .get(&id)
            .map(|r| r.progress.borrow().clone());
        let stored = self
            .store
            .lock()
            .get_move(id)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad(format!("no move {id}")))?;
        Ok(ops::MoveStatus {
            id,
            from: self.node_name(stored.spec.source),
            to: self.node_name(stored.spec.destination),
            phase: stored.phase,
            ended: stored.phase.is_terminal(),
            instance: stored.spec.instance,
            reason: stored.reason,
            progress,
            figures: stored.figures,
        })
    }

    /// Asks a running move to abort (see [`ops::Abort`]).
    pub fn abort(&self, id: u64) -> Result<ops::Aborting, (u16, String)> {
        let running = self.running.lock();
        let r = running
            .get(&id)
            .ok_or_else(|| bad(format!("no running move {id}")))?;
        r.abort.send_replace(Some("aborted by the operator".into()));
        Ok(ops::Aborting { aborting: id })
    }

    /// The cluster view (see [`ops::Status`]).
    pub async fn status(&self) -> ops::StatusReply {
        let mut nodes = Vec::new();
        for n in &self.cfg.nodes {
            let r = async {
                let mut c = handoff_wire::client::ControlClient::connect(
                    n.addr,
                    "controller",
                    &self.cfg.token,
                )
                .await?;
                c.set_reply_timeout(Duration::from_secs(3));
                c.call(&handoff_node::ops::Stats {}).await
            }
            .await;
            nodes.push(ops::NodeView {
                name: n.name.clone(),
                addr: n.addr,
                up: r.is_ok(),
                state: match r {
                    Ok(s) => ops::NodeState::Up {
                        instances: s.instances,
                        rss_bytes: s.rss_bytes,
                    },
                    Err(e) => ops::NodeState::Down {
                        error: e.to_string(),
                    },
                },
            });
        }
        let mut steers = Vec::new();
        for s in &self.cfg.steers {
            let r = async {
                let mut c = handoff_wire::client::ControlClient::connect(
                    s.control,
                    "controller",
                    &self.cfg.token,
                )
                .await?;
                c.set_reply_timeout(Duration::from_secs(3));
                c.call(&handoff_steer::control::ops::Status {}).await
            }
            .await;
            steers.push(ops::SteerView {
                name: s.name.clone(),
                control: s.control,
                up: r.is_ok(),
                state: match r {
                    Ok(st) => ops::SteerState::Up {
                        services: st.services,
                    },
                    Err(e) => ops::SteerState::Down {
                        error: e.to_string(),
                    },
                },
            });
        }
        let store = self.store.lock();
        let instances = self
            .cfg
            .instances
            .iter()
            .map(|i| ops::InstanceView {
                name: i.name.clone(),
                function: i.function.clone(),
                node: store
                    .placement(&i.name)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| i.node.clone()),
                steer: i.steer.clone(),
            })
            .collect();
        let moves = store
            .moves()
            .unwrap_or_default()
            .iter()
            .rev()
            .take(20)
            .map(|m| ops::MoveSummary {
                id: m.spec.id,
                instance: m.spec.instance.clone(),
                from: self.node_name(m.spec.source),
                to: self.node_name(m.spec.destination),
                phase: m.phase,
                reason: m.reason.clone(),
            })
            .collect();
        ops::StatusReply {
            nodes,
            steers,
            instances,
            moves,
            control: self.stalls.snapshot(),
        }
    }

    /// Stops driving moves (their state stays in the store for the next run).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

/// Most control connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Accepts control connections until the controller stops.
pub async fn serve(c: Arc<Controller>, listener: TcpListener) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = c.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many control connections; refused");
            continue;
        };
        let c = c.clone();
        tokio::spawn(async move {
            if let Err(e) = session(&c, stream).await {
                tracing::debug!(%peer, error = %e, "control connection closed");
            }
            drop(permit);
        });
    }
}

fn error(code: u16, message: impl Into<String>) -> Frame {
    Frame::Error {
        code,
        message: message.into(),
    }
}

async fn session(c: &Arc<Controller>, stream: TcpStream) -> Result<(), handoff_wire::FrameError> {
    let mut f = Framed::new(stream, FrameCodec::unauthenticated());
    let hello_timeout = Duration::from_secs(5);
    if !handoff_wire::client::accept_admin_hello(&mut f, &c.cfg.token, "controller", hello_timeout)
        .await?
    {
        return Ok(());
    }
    // Authenticated: requests may now be continued over several frames.
    f.codec_mut()
        .set_max_continued(handoff_wire::MAX_CONTINUED_BODY);
    let limits = handoff_wire::deadline::Deadlines::control_ms(
        c.cfg.frame_timeout_ms,
        c.cfg.idle_timeout_ms,
    );
    while let Some(frame) = c
        .stalls
        .closes(handoff_wire::deadline::next_within(&mut f, limits).await)?
    {
        let Frame::Admin(body) = frame? else {
            return f.send(error(code::WRONG_FRAME, "expected a request")).await;
        };
        let reply = match serde_json::from_slice::<ControllerRequest>(&body) {
            Ok(req) => c.handle(req).await,
            Err(e) => Err(bad(format!("bad request: {e}"))),
        };
        f.send(match reply {
            Ok(v) => Frame::AdminReply(serde_json::to_vec(&v).unwrap_or_default().into()),
            Err((code, m)) => error(code, m),
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_refuses_unknown_fields_status_included() {
        for body in [
            r#"{"op":"status","verbose":true}"#,
            r#"{"op":"move_status","id":1,"x":0}"#,
            r#"{"op":"migrate","instance":"mme-1","to":"node-b","force":true}"#,
        ] {
            let e = serde_json::from_str::<ControllerRequest>(body).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{body}: {e}");
        }
        assert_eq!(
            serde_json::from_str::<ControllerRequest>(r#"{"op":"status"}"#).unwrap(),
            ControllerRequest::Status(ops::Status {})
        );
    }
}
