//! Faults of the original classes: controller, node and steer crashes, operator aborts.

use super::*;

impl Sim {
    // --- faults -----------------------------------------------------------------------------

    pub(super) fn fault(&mut self, f: Fault) {
        match f {
            Fault::ControllerCrash => self.ctl_crash(),
            Fault::NodeCrash(n) => {
                let kept = self.before_node_crash(n);
                self.node_crash(n);
                self.after_node_crash(n, kept);
            }
            Fault::SteerCrash => self.steer_crash(),
            Fault::OperatorAbort { request } => {
                if self.ctl.ended {
                    return;
                }
                self.operator_abort = true;
                self.trace(format!(
                    "operator asks for an abort ({})",
                    if request {
                        "request_abort"
                    } else {
                        "abort_now"
                    }
                ));
                if !self.ctl.alive {
                    return;
                }
                if request {
                    self.ctl.m.request_abort("the operator asked for an abort");
                } else {
                    self.ctl.operator = Some("the operator asked for an abort".into());
                }
            }
        }
    }

    pub(super) fn node_crash(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return;
        }
        let phase = self.ctl.m.phase;
        self.trace(format!("CRASH of {} in {phase:?}", node_name(n)));
        if n == A {
            self.source_crashed = Some(phase);
        } else {
            self.destination_crashed = Some(phase);
        }
        let node = &mut self.nodes[n];
        node.alive = false;
        node.inst = None;
        node.bindings.clear();
        node.incoming.clear();
        let tasks = std::mem::take(&mut node.copies);
        for (_, t) in tasks {
            let d = self.rng.gen_range(100..5_000);
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: t.reply.inc,
                    req: t.reply.req,
                    result: Err(Failure::Unreachable(format!("{} crashed", node_name(n)))),
                },
            );
        }
        let other = 1 - n;
        let ids: Vec<u64> = self.nodes[other]
            .copies
            .iter()
            .filter(|(_, t)| t.to == n)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let d = self.rng.gen_range(100..10_000);
            self.at(
                self.now + d,
                Ev::CopyPeerLost {
                    node: other,
                    copy: id,
                },
            );
        }
        let d = self.rng.gen_range(1..LINK_DETECT_US);
        self.at(self.now + d, Ev::LinkDown(n));
    }

    /// The steer dies: its route state, its pending answers and every signal it stamped but
    /// had not written out yet (a random suffix, the same on every link: above `cut`) are
    /// gone; what it wrote still arrives. It restarts after `steer_down_us`.
    pub(super) fn steer_crash(&mut self) {
        if !self.steer.alive {
            return;
        }
        let phase = self.ctl.m.phase;
        self.steer_crashed = Some(phase);
        let route_phase = self.steer.core.phase();
        let seq = self.steer.core.last_seq();
        let floor = self.steer.delivered.min(seq);
        let cut = if self.sc.split_crash {
            self.split_cut(floor, seq)
        } else {
            self.rng.gen_range(floor..=seq)
        };
        let inc = self.steer.inc as usize;
        self.steer.cuts[inc] = cut;
        self.steer.alive = false;
        // A split crash wrote seq cut + 1 to one node: it stays if that is its answering copy.
        let kept = self.split_keeps(cut);
        let gone = |a: &Admitted| a.seq > cut && Some(a.seq) != kept;
        let lost = self.log.iter().filter(|a| gone(a)).count();
        let stamped_lost = (self.log.iter())
            .filter(|a| gone(a) && a.client.is_some())
            .count() as u64;
        self.log.retain(|a| !gone(a));
        self.lost_in_steer_crash += stamped_lost;
        self.trace(format!(
            "CRASH of the steer in {phase:?} (route {route_phase}, seq {seq}, cut at {cut}: {lost} stamped signals lost)"
        ));
        // Answers it owed die with it (the controller sees the connections break).
        let asked = std::mem::take(&mut self.steer.asked);
        for (inc, req) in asked.into_keys() {
            self.steer_conn_broke(inc, req);
        }
        let at = self.now + self.sc.steer_down_us.max(1);
        self.at(at, Ev::SteerRestart);
    }

    pub(super) fn steer_conn_broke(&mut self, inc: u32, req: u64) {
        let d = self.rng.gen_range(100..3_000);
        self.at(
            self.now + d,
            Ev::Reply {
                inc,
                req,
                result: Err(Failure::Unreachable("the steer connection broke".into())),
            },
        );
    }

    /// The steer starts again from its route file: serving from the node it names, or, if a
    /// move was in progress, routing nothing until the controller installs the route again.
    pub(super) fn steer_restart(&mut self) {
        let disk = self.steer.disk;
        let configured = if self.sc.stale_view { B } else { A };
        let st = &mut self.steer;
        st.alive = true;
        st.inc += 1;
        st.cuts.push(u64::MAX);
        st.core = ServiceCore::new(
            "counter-1",
            node_addr(configured),
            Kept::Route(disk),
            steer_timeouts(),
        );
        st.links.clear();
        st.poll_due = false;
        st.delivered = 0;
        let inc = st.inc;
        self.trace(format!(
            "steer restarts (run {inc}): route file says {} from {}",
            disk.phase,
            node_name(node_at(disk.node))
        ));
        self.steer_effects();
    }

    /// A steer's bind at a node: a new binding of the instance (fencing off earlier ones),
    /// answered with the last applied seq (`None`: no instance to bind).
    pub(super) fn node_bind(&mut self, n: usize, inc: u32, link: LinkId, retry_us: u64) {
        let node = &mut self.nodes[n];
        if !node.alive {
            return;
        }
        let incarnation = node.incarnation(n);
        let bound = node.inst.as_mut().map(|i| i.bind());
        if let Some((binding, _)) = bound {
            node.bindings.insert((inc, link), binding);
        }
        let at = self.link(Ep::Node(n), Ep::Steer);
        self.at(
            at,
            Ev::Bound {
                node: n,
                inc,
                link,
                last_seq: bound.map(|b| (b.1, incarnation)),
                retry_us,
            },
        );
    }

    pub(super) fn steer_bound(
        &mut self,
        n: usize,
        inc: u32,
        link: LinkId,
        last_seq: Option<(u64, u64)>,
        retry_us: u64,
    ) {
        if !self.steer.alive || inc != self.steer.inc || !self.steer.links.contains_key(&link) {
            return;
        }
        let Some((seq, incarnation)) = last_seq else {
            // As the real link does: try again after a back-off while anyone still cares.
            self.trace(format!("steer: {} refused the bind", node_name(n)));
            if !self.ctl.ended {
                let next = (retry_us * 2).min(BIND_RETRY_MAX_US);
                let at = self.now + retry_us;
                self.at(
                    at,
                    Ev::Bind {
                        node: n,
                        inc,
                        link,
                        retry_us: next,
                    },
                );
            }
            return;
        };
        self.steer.core.link_up(link, seq, incarnation);
        self.trace(format!(
            "steer: {} bound at seq {seq} (incarnation {incarnation:x})",
            node_name(n)
        ));
        self.steer.core.poll(self.now, |_| usize::MAX);
        self.steer_effects();
    }

    /// Called when the controller starts an action; `true` if the controller crashed at once.
    pub(super) fn triggers(&mut self) -> bool {
        let count = self.actions_started;
        let phase = self.ctl.m.phase;
        let hit = |t: &Trigger| match t.phase {
            Some(p) => p == phase,
            None => t.action == count,
        };
        let mut due: Vec<(Fault, u64)> = Vec::new();
        let crashes = self.sc.controller_crashes.clone();
        for (i, t) in crashes.iter().enumerate() {
            if hit(t) && self.fired.insert((0, i)) {
                due.push((Fault::ControllerCrash, t.after_us));
            }
        }
        if let Some(t) = self.sc.destination_crash {
            if hit(&t) && self.fired.insert((1, 0)) {
                due.push((Fault::NodeCrash(B), t.after_us));
            }
        }
        if let Some(t) = self.sc.source_crash {
            if hit(&t) && self.fired.insert((2, 0)) {
                due.push((Fault::NodeCrash(A), t.after_us));
            }
        }
        if let Some((t, request)) = self.sc.operator_abort {
            if hit(&t) && self.fired.insert((3, 0)) {
                due.push((Fault::OperatorAbort { request }, t.after_us));
            }
        }
        if let Some(t) = self.sc.steer_crash {
            if hit(&t) && self.fired.insert((4, 0)) {
                due.push((Fault::SteerCrash, t.after_us));
            }
        }
        let mut crashed = false;
        for (f, after) in due {
            if after == 0 {
                self.fault(f);
                crashed |= f == Fault::ControllerCrash;
            } else {
                self.at(self.now + after, Ev::Fault(f));
            }
        }
        crashed
    }
}
