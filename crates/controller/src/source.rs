//! The source-driven variant (seed 000 Fig. 7a): a source node runs the whole move itself,
//! with the same machine and driver as the controller, and no controller involved.

use crate::driver::{drive, NetDriver, Progress};
use crate::machine::{MoveMachine, MoveSpec};
use handoff_node::ops::MigrateReport;
use handoff_node::{MigrateRequest, MoveDriver};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// The abort switches of the moves running, by instance.
type Running = std::sync::Arc<Mutex<HashMap<String, watch::Sender<Option<String>>>>>;

/// Drives moves from the node at `self_addr`.
pub struct SourceDriven {
    self_addr: SocketAddr,
    driver: std::sync::Arc<NetDriver>,
    next_id: AtomicU64,
    origin: String,
    running: Running,
}

/// Takes a move off the running table when it ends (or is dropped).
struct Registered {
    running: Running,
    instance: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.running.lock().remove(&self.instance);
    }
}

impl SourceDriven {
    /// For the node listening at `self_addr`, offering `token` to its peers and the steer.
    pub fn new(self_addr: SocketAddr, node_name: &str, token: &str) -> Self {
        Self {
            self_addr,
            driver: std::sync::Arc::new(NetDriver {
                name: format!("{node_name}-mover"),
                token: token.to_owned(),
            }),
            next_id: AtomicU64::new(1),
            // Ids restart with the process: the start time keeps the tags of two runs apart.
            origin: format!(
                "{node_name}@{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            ),
            running: Running::default(),
        }
    }
}

/// A move's final report, as both variants print it.
pub fn report(m: &MoveMachine) -> MigrateReport {
    MigrateReport {
        id: m.spec.id,
        instance: m.spec.instance.clone(),
        from: m.spec.source,
        to: m.spec.destination,
        phase: m.phase_name(),
        ended: m.phase.is_terminal(),
        reason: m.reason.clone(),
        figures: serde_json::to_value(&m.figures).unwrap_or_default(),
    }
}

impl MoveDriver for SourceDriven {
    fn migrate(
        &self,
        req: MigrateRequest,
    ) -> futures::future::BoxFuture<'static, Result<MigrateReport, String>> {
        let spec = MoveSpec {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            instance: req.instance,
            function: req.function,
            source: self.self_addr,
            destination: req.destination,
            steer: req.steer,
            order: req.order,
            plan: req.plan,
            abort_safe: req.abort_safe,
            lead_ms: req.lead_ms,
            origin: self.origin.clone(),
        };
        let driver = self.driver.clone();
        let running = self.running.clone();
        Box::pin(async move {
            let m = MoveMachine::new(spec, 0)?;
            // Refused before anything changes (the steer is not switched) when the plan
            // cannot be met for what the instance holds now.
            driver
                .check_plan(m.spec.source, &m.spec.instance, m.spec.plan)
                .await
                .map_err(|e| match e {
                    handoff_wire::client::ClientError::Refused { message, .. } => {
                        format!("the copy plan cannot be met: {message}")
                    }
                    other => format!("the copy plan cannot be checked: {other}"),
                })?;
            let (abort_tx, abort_rx) = watch::channel(None);
            let instance = m.spec.instance.clone();
            {
                let mut r = running.lock();
                if r.contains_key(&instance) {
                    return Err(format!("{instance} is already moving"));
                }
                r.insert(instance.clone(), abort_tx);
            }
            let _registered = Registered { running, instance };
            tracing::info!(instance = %m.spec.instance, to = %m.spec.destination, "source-driven move");
            let (progress, _rx) = watch::channel(Progress::default());
            let end = drive(m, &driver, |_| {}, abort_rx, progress).await;
            Ok(report(&end))
        })
    }

    fn abort(&self, instance: &str, reason: String) -> bool {
        match self.running.lock().get(instance) {
            Some(tx) => {
                tx.send_replace(Some(reason));
                true
            }
            None => false,
        }
    }
}
