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
    /// See [`ops::Recover`].
    Recover(ops::Recover),
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
    migrating: tokio::sync::Mutex<()>,
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
            migrating: tokio::sync::Mutex::new(()),
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
        // Reconcile at start and periodically: placements follow the truth, alarms are logged
        // (once each, until they change).
        let this = c.clone();
        tokio::spawn(async move {
            let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
            loop {
                let views = tokio::select! {
                    _ = this.stop.cancelled() => return,
                    v = this.reconcile() => v,
                };
                for v in views {
                    if last.get(&v.name) != Some(&v.alarm) {
                        match &v.alarm {
                            Some(a) => tracing::error!(instance = %v.name, alarm = %a, "ALARM"),
                            None if last.contains_key(&v.name) => {
                                tracing::info!(instance = %v.name, owner = ?v.owner, "alarm cleared")
                            }
                            None => {}
                        }
                        last.insert(v.name.clone(), v.alarm.clone());
                    }
                }
                tokio::select! {
                    _ = this.stop.cancelled() => return,
                    _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
            }
        });
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
            let owner = match done.phase {
                Phase::Done | Phase::RolledForward => Some(done.spec.destination),
                Phase::Aborted | Phase::Recovered => Some(done.spec.source),
                _ => None,
            };
            if let Some(owner) = owner {
                let to = this.node_name(owner);
                if let Err(e) = store.set_placement(&done.spec.instance, &to) {
                    tracing::error!(error = %e, "cannot record the placement");
                }
            }
            if done.phase == Phase::Offline {
                tracing::error!(id, instance = %done.spec.instance, reason = ?done.reason,
                    "ALARM: the instance is offline; `handoff recover` brings it back on the source");
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
            ControllerRequest::Recover(r) => json(self.recover(r).await),
        }
    }

    /// Starts a move (see [`ops::Migrate`]).
    pub async fn migrate(
        self: &Arc<Self>,
        req: ops::Migrate,
    ) -> Result<ops::MoveStarted, (u16, String)> {
        // One migrate at a time: its checks and the move's creation are one step, so two
        // requests for the same instance cannot both pass the "already moving" check.
        let _one = self.migrating.lock().await;
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
        let busy = self.store.lock().moves().map_err(|e| bad(e.to_string()))?;
        if let Some(m) = busy
            .iter()
            .find(|m| m.spec.instance == instance && !m.phase.is_terminal())
        {
            return Err(bad(format!(
                "{instance} is already moving (move {}, {}{})",
                m.spec.id,
                m.phase_name(),
                if m.phase.is_parked() {
                    format!(": offline; `handoff recover {instance}` first")
                } else {
                    String::new()
                }
            )));
        }
        // The controller acts only on a view it has checked: the source is where the steer
        // routes, and that node hosts the incarnation the route is bound to.
        let view = self.reconcile().await;
        let v = view
            .iter()
            .find(|v| v.name == instance)
            .ok_or_else(|| bad(format!("unknown instance {instance}")))?;
        if let Some(alarm) = &v.alarm {
            return Err((
                code::WRONG_PHASE,
                format!("{instance} cannot move: {alarm}"),
            ));
        }
        if v.route.as_deref() != Some("serving") {
            return Err((
                code::WRONG_PHASE,
                format!(
                    "{instance} cannot move: the steer's route is {} (a move the controller did not start is in progress?)",
                    v.route.as_deref().unwrap_or("unknown")
                ),
            ));
        }
        let Some(from) = v.owner.clone() else {
            return Err((
                code::WRONG_PHASE,
                format!("{instance} cannot move: no node owns it"),
            ));
        };
        if let Some(d) = v.disagreements.iter().find(|d| d.starts_with("stale view")) {
            return Err((
                code::WRONG_PHASE,
                format!("{d}; ask again to move it from {from}"),
            ));
        }
        if from == to {
            return Err((
                code::WRONG_PHASE,
                format!("{instance} is already on {to}: the steer routes it there"),
            ));
        }
        let source_incarnation = v.incarnation;
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
        let id = self
            .store
            .lock()
            .next_move_id()
            .map_err(|e| bad(e.to_string()))?;
        let mut m = MoveMachine::new(
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
                origin: "controller".into(),
            },
            0,
        )
        .map_err(bad)?;
        m.incarnations.source = source_incarnation;
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

    /// Recovers an instance after a crash (see [`ops::Recover`]).
    pub async fn recover(
        self: &Arc<Self>,
        req: ops::Recover,
    ) -> Result<ops::Recovering, (u16, String)> {
        let instance = req.instance;
        let parked = self
            .store
            .lock()
            .moves()
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .find(|m| m.spec.instance == instance && m.phase.is_parked());
        if let Some(mut m) = parked {
            // The destination may only have been unreachable: back with the move's
            // incarnation, recovering on the source would throw away what it served since the
            // cutover. The move goes on instead.
            let back = ask(
                m.spec.destination,
                &self.cfg.token,
                &handoff_node::ops::Stats {},
            )
            .await
            .ok()
            .is_some_and(|s| {
                s.instances.iter().any(|i| {
                    i.instance == instance && Some(i.incarnation) == m.incarnations.destination
                })
            });
            if back {
                m.resume_forward(m.phase_started_ms)
                    .map_err(|e| (code::WRONG_PHASE, e))?;
                self.store
                    .lock()
                    .put_move(&m)
                    .map_err(|e| bad(e.to_string()))?;
                let id = m.spec.id;
                tracing::warn!(id, %instance, "the offline move's destination is back: the move goes on");
                self.launch(m);
                return Ok(ops::Recovering {
                    instance,
                    move_id: Some(id),
                    message: format!(
                        "the destination is back with the move's incarnation: move {id} goes on to finish there (nothing given up)"
                    ),
                });
            }
            m.recover_on_source(m.phase_started_ms)
                .map_err(|e| (code::WRONG_PHASE, e))?;
            self.store
                .lock()
                .put_move(&m)
                .map_err(|e| bad(e.to_string()))?;
            let id = m.spec.id;
            let from = self.node_name(m.spec.source);
            tracing::warn!(id, %instance, %from, "recovering the offline instance on the move's source");
            self.launch(m);
            return Ok(ops::Recovering {
                instance,
                move_id: Some(id),
                message: format!(
                    "recovering on {from} (move {id}): the signals stamped since the cutover are given up; `handoff migrate --follow {id}` or `handoff status` shows the outcome"
                ),
            });
        }
        if self
            .store
            .lock()
            .moves()
            .map_err(|e| bad(e.to_string()))?
            .iter()
            .any(|m| m.spec.instance == instance && !m.phase.is_terminal())
        {
            return Err((
                code::WRONG_PHASE,
                format!("{instance} is moving: its move takes the crash's way out by itself"),
            ));
        }
        let view = self.reconcile().await;
        let v = view.iter().find(|v| v.name == instance).ok_or_else(|| {
            (
                code::UNKNOWN_INSTANCE,
                format!("unknown instance {instance}"),
            )
        })?;
        let entry = self.cfg.instances.iter().find(|i| i.name == instance);
        let steer = entry
            .and_then(|e| self.cfg.steers.iter().find(|s| s.name == e.steer))
            .map(|s| s.control)
            .ok_or_else(|| bad("no steer for the instance"))?;
        let stuck = v.route.as_deref().is_some_and(|r| r != "serving");
        if let (true, None, Some(owner)) = (stuck, &v.alarm, &v.owner) {
            // A move this controller does not drive (source-driven) left the route moving or
            // cut over, its driver gone: serve from the route's node, the incarnation bound.
            let node = self
                .node_addr(owner)
                .ok_or_else(|| bad(format!("{owner} is not a configured node")))?;
            let b = self
                .steer_recover(steer, &instance, node, v.incarnation)
                .await?;
            tracing::warn!(%instance, %owner, route = ?v.route, "route of a move this controller does not drive recovered on its node");
            return Ok(ops::Recovering {
                instance,
                move_id: None,
                message: format!(
                    "the route was {} with no move of this controller (a source-driven move?): now served from {owner} at seqs from {}; what the move's destination applied since the cutover, if any, is given up",
                    v.route.clone().unwrap_or_default(),
                    b.boundary
                ),
            });
        }
        let Some(alarm) = v.alarm.clone() else {
            return Err((
                code::WRONG_PHASE,
                format!(
                    "{instance} is served by {}: nothing to recover",
                    v.owner.clone().unwrap_or_default()
                ),
            ));
        };
        let node_name = v.routed_to.clone().unwrap_or_default();
        let node = self.node_addr(&node_name).ok_or_else(|| {
            bad(format!(
                "the steer routes to {node_name}, not a configured node"
            ))
        })?;
        // The incarnation the node hosts now.
        let hosted = ask(node, &self.cfg.token, &handoff_node::ops::Stats {})
            .await
            .ok()
            .and_then(|s| s.instances.into_iter().find(|i| i.instance == instance));
        let Some(hosted) = hosted else {
            return Err((
                code::OFFLINE,
                format!("{alarm}; {node_name} does not host {instance}: restart it with the instance (or create it), then `handoff recover {instance} --accept-empty`"),
            ));
        };
        if !req.accept_empty {
            return Err((
                code::OFFLINE,
                format!(
                    "{alarm}; {node_name} hosts a new incarnation {} with {} sessions: `handoff recover {instance} --accept-empty` serves from it, accepting that every session it lacks is lost",
                    hosted.incarnation, hosted.sessions
                ),
            ));
        }
        let b = self
            .steer_recover(steer, &instance, node, Some(hosted.incarnation))
            .await?;
        tracing::warn!(%instance, node = %node_name, incarnation = hosted.incarnation, sessions = hosted.sessions,
            "instance recovered from a new incarnation (the operator accepted the loss)");
        let _ = self.store.lock().set_placement(&instance, &node_name);
        Ok(ops::Recovering {
            instance,
            move_id: None,
            message: format!(
                "serving from {node_name}, incarnation {} ({} sessions), at seqs from {}",
                hosted.incarnation, hosted.sessions, b.boundary
            ),
        })
    }

    /// Asks the steer to serve `instance` from `node` (see `handoff_steer` `recover`).
    async fn steer_recover(
        &self,
        steer: SocketAddr,
        instance: &str,
        node: SocketAddr,
        incarnation: Option<u64>,
    ) -> Result<handoff_steer::Boundary, (u16, String)> {
        let req = handoff_steer::control::ops::Recover {
            instance: instance.to_owned(),
            node,
            incarnation,
        };
        ask(steer, &self.cfg.token, &req)
            .await
            .map_err(|e| (e.code().unwrap_or(code::NOT_REACHABLE), e.to_string()))
    }

    /// Reconciles the controller's record with what the steers and nodes report: corrects a
    /// placement the truth contradicts (when no move of the instance is in progress), logs
    /// alarms, and answers each instance's checked view.
    pub async fn reconcile(&self) -> Vec<ops::InstanceView> {
        let (nodes, steers) = self.observe().await;
        self.judge(&nodes, &steers)
    }

    /// Asks every node and steer for its state.
    async fn observe(&self) -> (Vec<ops::NodeView>, Vec<ops::SteerView>) {
        // Every peer at once, each bounded: a frozen node (it accepts connections and never
        // answers) makes neither `status` nor a move's check wait.
        let token = &self.cfg.token;
        let ask_node = |n: &NodeEntry| ask(n.addr, token, &handoff_node::ops::Stats {});
        let ask_steer =
            |s: &SteerEntry| ask(s.control, token, &handoff_steer::control::ops::Status {});
        let (node_answers, steer_answers) = tokio::join!(
            futures::future::join_all(self.cfg.nodes.iter().map(ask_node)),
            futures::future::join_all(self.cfg.steers.iter().map(ask_steer)),
        );
        let nodes = (self.cfg.nodes.iter().zip(node_answers))
            .map(|(n, r)| ops::NodeView {
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
            })
            .collect();
        let steers = (self.cfg.steers.iter().zip(steer_answers))
            .map(|(s, r)| ops::SteerView {
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
            })
            .collect();
        (nodes, steers)
    }

    /// Each instance's checked view from what the nodes and steers said.
    fn judge(&self, nodes: &[ops::NodeView], steers: &[ops::SteerView]) -> Vec<ops::InstanceView> {
        let store = self.store.lock();
        let unfinished: Vec<MoveMachine> = store
            .moves()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| !m.phase.is_terminal())
            .collect();
        let moving: Vec<String> = unfinished.iter().map(|m| m.spec.instance.clone()).collect();
        let mut out = Vec::new();
        for i in &self.cfg.instances {
            let recorded = store
                .placement(&i.name)
                .ok()
                .flatten()
                .unwrap_or_else(|| i.node.clone());
            let hosts: Vec<(&ops::NodeView, &handoff_node::InstanceInfo)> = nodes
                .iter()
                .filter_map(|n| match &n.state {
                    ops::NodeState::Up { instances, .. } => instances
                        .iter()
                        .find(|x| x.instance == i.name)
                        .map(|x| (n, x)),
                    ops::NodeState::Down { .. } => None,
                })
                .collect();
            let svc = steers
                .iter()
                .filter(|s| s.name == i.steer)
                .find_map(|s| match &s.state {
                    ops::SteerState::Up { services } => {
                        services.iter().find(|x| x.route.instance == i.name)
                    }
                    ops::SteerState::Down { .. } => None,
                });
            let mut disagreements = Vec::new();
            let mut alarm = None;
            let (mut owner, mut route, mut routed_to, mut incarnation, mut dropped) =
                (None, None, None, None, 0);
            match svc {
                None => alarm = Some(format!("the steer {} cannot be asked", i.steer)),
                Some(svc) => {
                    let r = &svc.route;
                    route = serde_json::to_value(r.phase)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned));
                    let to = self.node_name(r.node);
                    routed_to = Some(to.clone());
                    incarnation = r.incarnation;
                    dropped = svc.stats.offline + svc.stats.no_link + svc.stats.unrouted;
                    let host = hosts.iter().find(|(n, _)| n.addr == r.node);
                    let node_up = nodes.iter().any(|n| n.addr == r.node && n.up);
                    match (host, &r.offline) {
                        (_, Some(why)) => {
                            alarm = Some(format!(
                                "OFFLINE: {why}; the steer drops its signals ({} so far)",
                                svc.stats.offline
                            ))
                        }
                        (Some((_, x)), None) if r.incarnation.is_none_or(|b| b == x.incarnation) => {
                            owner = Some(to.clone())
                        }
                        (Some((_, x)), None) => {
                            alarm = Some(format!(
                                "OFFLINE: {to} hosts incarnation {} of {}, not {} the route is bound to",
                                x.incarnation,
                                i.name,
                                r.incarnation.unwrap_or_default()
                            ))
                        }
                        (None, None) if r.route_lost => {
                            alarm = Some("the steer restarted during a move and routes nothing until the move re-installs the route".into())
                        }
                        (None, None) => {
                            alarm = Some(format!(
                                "ON NO NODE: the steer routes {} to {to}, which {}; {} signals dropped",
                                i.name,
                                if node_up { "does not host it" } else { "is down" },
                                dropped
                            ))
                        }
                    }
                    for (n, x) in &hosts {
                        let routed = n.addr == r.node || r.destination == Some(n.addr);
                        if !routed {
                            disagreements.push(format!(
                                "{} also hosts {} (incarnation {}, {} sessions) that nothing routes to",
                                n.name, i.name, x.incarnation, x.sessions
                            ));
                        }
                    }
                }
            }
            if let Some(o) = &owner {
                if *o != recorded {
                    disagreements.push(format!(
                        "stale view: the steer routes {} to {o}, not {recorded} as the controller recorded (a move it did not drive?); view corrected",
                        i.name
                    ));
                    if !moving.contains(&i.name) {
                        tracing::warn!(instance = %i.name, recorded, owner = %o, "the controller's view was stale; corrected from the steer and nodes");
                        let _ = store.set_placement(&i.name, o);
                    }
                }
            }
            if let Some(r) = route.as_deref().filter(|r| *r != "serving") {
                if !moving.contains(&i.name) {
                    disagreements.push(format!(
                        "the route is {r} but this controller drives no move of {}: a source-driven move in progress, or one left behind (`handoff recover {}` serves it from {})",
                        i.name,
                        i.name,
                        owner.clone().unwrap_or_else(|| "its node".into())
                    ));
                }
            }
            if let Some(m) = unfinished
                .iter()
                .find(|m| m.spec.instance == i.name && m.phase.is_parked())
            {
                owner = None;
                alarm = Some(format!(
                    "OFFLINE: move {} parked: {}; the steer drops its signals ({} so far)",
                    m.spec.id,
                    m.reason.clone().unwrap_or_default(),
                    dropped
                ));
            }
            if let Some(a) = &alarm {
                tracing::debug!(instance = %i.name, alarm = %a, "instance alarm");
            }
            out.push(ops::InstanceView {
                name: i.name.clone(),
                function: i.function.clone(),
                node: owner.clone().unwrap_or(recorded),
                steer: i.steer.clone(),
                owner,
                route,
                routed_to,
                incarnation,
                dropped,
                alarm,
                disagreements,
            });
        }
        out
    }

    /// The cluster view (see [`ops::Status`]).
    pub async fn status(&self) -> ops::StatusReply {
        let (nodes, steers) = self.observe().await;
        let instances = self.judge(&nodes, &steers);
        let store = self.store.lock();
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

/// One operation on a node or steer, answered within [`OBSERVE_TIMEOUT`] (connecting
/// included): a peer that accepts and never answers fails it rather than stalling.
async fn ask<O: handoff_wire::rpc::Operation>(
    addr: SocketAddr,
    token: &str,
    req: &O,
) -> Result<O::Reply, handoff_wire::client::ClientError> {
    let r = tokio::time::timeout(OBSERVE_TIMEOUT, async {
        let mut c = handoff_wire::client::ControlClient::connect(addr, "controller", token).await?;
        c.set_reply_timeout(OBSERVE_TIMEOUT);
        c.call(req).await
    })
    .await;
    r.unwrap_or_else(|_| {
        Err(handoff_wire::client::ClientError::Transport {
            addr,
            reason: format!("no answer within {OBSERVE_TIMEOUT:?}"),
        })
    })
}

/// How long the controller waits for one node's or steer's answer when it looks at them.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the controller reconciles its view with the steers and nodes.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

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
