//! The source-driven variant (seed 000 Fig. 7a): a source node runs the whole move itself,
//! with the same machine and driver as the controller, and no controller involved.

use crate::driver::{drive, NetDriver, Progress};
use crate::machine::{MoveMachine, MoveSpec};
use handoff_node::ops::MigrateReport;
use handoff_node::{MigrateRequest, MoveDriver};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Drives moves from the node at `self_addr`.
pub struct SourceDriven {
    self_addr: SocketAddr,
    driver: std::sync::Arc<NetDriver>,
    next_id: AtomicU64,
    origin: String,
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
        Box::pin(async move {
            let m = MoveMachine::new(spec, 0)?;
            tracing::info!(instance = %m.spec.instance, to = %m.spec.destination, "source-driven move");
            let (_abort_tx, abort_rx) = watch::channel(None);
            let (progress, _rx) = watch::channel(Progress::default());
            let end = drive(m, &driver, |_| {}, abort_rx, progress).await;
            Ok(report(&end))
        })
    }
}
