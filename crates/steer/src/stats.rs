//! Counters of one service, shared by its receive loop, its node links and status readers.

use crate::service_core::{DropCounter, Dropped};
use handoff_function::SignalKind;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one service. Relaxed atomics: each is only ever added to (or, for `last_seq`,
/// stored by the one receive loop).
#[derive(Debug, Default)]
pub struct SteerStats {
    /// Datagrams classified, stamped and queued for the node.
    pub admitted: AtomicU64,
    /// Datagrams dropped because the classifier refused them.
    pub malformed: AtomicU64,
    /// Datagrams dropped because the node link's queue was full.
    pub shed: AtomicU64,
    /// Datagrams dropped because the node link was down.
    pub no_link: AtomicU64,
    /// Ticks injected.
    pub ticks: AtomicU64,
    /// Outputs relayed to clients.
    pub outputs_relayed: AtomicU64,
    /// Outputs that could not be sent to their client.
    pub outputs_failed: AtomicU64,
    /// Error frames received from the node.
    pub node_errors: AtomicU64,
    /// Stamped signals lost because the link failed while writing them (clients retransmit).
    pub lost_in_link: AtomicU64,
    /// Successful (re)connections to the node.
    pub link_connects: AtomicU64,
    /// Times the node's connection was closed because a frame from it began and did not
    /// finish in time (the link reconnects).
    pub link_stalled: AtomicU64,
    /// Last seq stamped.
    pub last_seq: AtomicU64,
    /// Datagrams dropped unstamped because the steer restarted during a move and the route is
    /// not installed again yet (clients retransmit).
    pub unrouted: AtomicU64,
    /// Datagrams dropped because the instance is offline: the node the route is bound to lost
    /// that incarnation (a crash or restart), and nobody recovered it yet. An alarm.
    pub offline: AtomicU64,
    /// Receive calls on the service socket that failed (no datagram read).
    pub recv_errors: AtomicU64,
}

/// A plain copy of [`SteerStats`] for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub struct SteerStatsSnapshot {
    pub admitted: u64,
    pub malformed: u64,
    pub shed: u64,
    pub no_link: u64,
    pub ticks: u64,
    pub outputs_relayed: u64,
    pub outputs_failed: u64,
    pub node_errors: u64,
    pub lost_in_link: u64,
    pub link_connects: u64,
    pub link_stalled: u64,
    pub last_seq: u64,
    pub unrouted: u64,
    pub offline: u64,
    #[serde(default)]
    pub recv_errors: u64,
}

impl SteerStats {
    /// Counts a signal (or tick) stamped `seq`.
    pub fn stamped(&self, seq: u64, kind: SignalKind) {
        self.last_seq.store(seq, Relaxed);
        if kind == SignalKind::Tick {
            self.ticks.fetch_add(1, Relaxed);
        } else {
            self.admitted.fetch_add(1, Relaxed);
        }
    }

    /// Counts a signal the service core dropped (see [`Dropped::counter`]).
    pub fn dropped(&self, why: &Dropped, kind: SignalKind) {
        let counter = match why.counter(kind) {
            Some(DropCounter::Shed) => &self.shed,
            Some(DropCounter::NoLink) => &self.no_link,
            Some(DropCounter::Unrouted) => &self.unrouted,
            Some(DropCounter::Offline) => &self.offline,
            None => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> SteerStatsSnapshot {
        SteerStatsSnapshot {
            admitted: self.admitted.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            shed: self.shed.load(Relaxed),
            no_link: self.no_link.load(Relaxed),
            ticks: self.ticks.load(Relaxed),
            outputs_relayed: self.outputs_relayed.load(Relaxed),
            outputs_failed: self.outputs_failed.load(Relaxed),
            node_errors: self.node_errors.load(Relaxed),
            lost_in_link: self.lost_in_link.load(Relaxed),
            link_connects: self.link_connects.load(Relaxed),
            link_stalled: self.link_stalled.load(Relaxed),
            last_seq: self.last_seq.load(Relaxed),
            unrouted: self.unrouted.load(Relaxed),
            offline: self.offline.load(Relaxed),
            recv_errors: self.recv_errors.load(Relaxed),
        }
    }
}
