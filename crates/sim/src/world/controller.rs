//! The controller: the real move machine, driven as `driver::drive` drives it (persisted
//! before and after every action; a restart restores the last persisted copy and recovers).

use super::*;

impl Sim {
    // --- controller -------------------------------------------------------------------------

    pub(super) fn persist(&mut self) {
        match serde_json::to_string(&self.ctl.m) {
            Ok(s) => {
                match serde_json::from_str::<MoveMachine>(&s) {
                    Ok(back) if back == self.ctl.m => {}
                    Ok(back) => self.violation(
                        "persist_roundtrip",
                        format!("{:?} came back as {back:?}", self.ctl.m),
                    ),
                    Err(e) => self.violation("persist_roundtrip", e.to_string()),
                }
                self.ctl.stored = s;
            }
            Err(e) => self.violation("persist_roundtrip", e.to_string()),
        }
    }

    pub(super) fn note_phase(&mut self) {
        let p = self.ctl.m.phase;
        if self.phases.last() != Some(&p) {
            self.phases.push(p);
            let reason = self.ctl.m.reason.clone();
            self.trace(format!("controller: phase {p:?} (reason {reason:?})"));
        }
    }

    pub(super) fn ctl_step(&mut self, inc: u32) {
        if inc != self.ctl.inc || !self.ctl.alive || self.ctl.waiting.is_some() {
            return;
        }
        let now_ms = self.now_ms();
        if let Some(reason) = self.ctl.operator.clone() {
            if self.ctl.m.abort_now(reason, now_ms) {
                self.persist();
                self.note_phase();
                self.at(self.now, Ev::Step { inc });
                return;
            }
        }
        let Some(action) = self.ctl.m.action() else {
            if self.ctl.m.phase.is_parked() {
                // Offline: an operator runs `handoff recover` a little later.
                self.trace(
                    "controller: the move is parked offline; the operator recovers it".into(),
                );
                self.at(self.now + OPERATOR_RECOVERS_US, Ev::OperatorRecover { inc });
                return;
            }
            if !self.ctl.ended {
                self.ctl.ended = true;
                self.trace(format!(
                    "controller: the move ended {:?} ({:?})",
                    self.ctl.m.phase, self.ctl.m.reason
                ));
                self.at(self.now + TRAFFIC_AFTER_END_US, Ev::StopTraffic);
            }
            return;
        };
        let req = self.ctl.next_req;
        self.ctl.next_req += 1;
        self.ctl.waiting = Some((req, action.clone()));
        if let Action::Wait { ms } = action {
            self.at(
                self.now + ms * 1000,
                Ev::Reply {
                    inc,
                    req,
                    result: Ok(Outcome::Done),
                },
            );
            return;
        }
        self.ctl.m.start_action();
        self.persist();
        self.actions_started += 1;
        let n = self.actions_started;
        self.trace(format!(
            "controller: action {n} {action:?} ({:?}, attempt {})",
            self.ctl.m.phase, self.ctl.m.attempts
        ));
        if self.triggers() {
            return;
        }
        // Where the driver sends it.
        let target = match request_for(&self.ctl.m, &action) {
            Request::Steer(_) => Target::Steer,
            Request::Node { addr, .. } => Target::Node(node_at(addr)),
            Request::Wait { .. } => unreachable!("handled above"),
        };
        let loss = self.sc.control_loss;
        let lose_request = loss > 0.0 && self.rng.gen_bool(loss);
        let scripted = self.sc.lose_reply_to.as_ref() == Some(&action);
        if scripted {
            self.sc.lose_reply_to = None;
        }
        let lose_reply = (loss > 0.0 && self.rng.gen_bool(loss)) || scripted;
        if lose_request {
            let d = self.rng.gen_range(1..CONTROL_TIMEOUT_US);
            self.control_lost += 1;
            self.trace(format!("control: request {req} lost"));
            self.at(
                self.now + d,
                Ev::Reply {
                    inc,
                    req,
                    result: Err(Failure::Unreachable("the request was lost".into())),
                },
            );
            return;
        }
        let ep = match target {
            Target::Steer => Ep::Steer,
            Target::Node(n) => Ep::Node(n),
        };
        let at = self.link(Ep::Ctl, ep);
        self.at(
            at,
            Ev::Request {
                to: target,
                action,
                reply: ReplyTo {
                    inc,
                    req,
                    lose: lose_reply,
                    from: ep,
                },
            },
        );
    }

    pub(super) fn ctl_reply(&mut self, inc: u32, req: u64, result: Result<Outcome, Failure>) {
        if inc != self.ctl.inc || !self.ctl.alive {
            return;
        }
        if self.ctl.waiting.as_ref().map(|w| w.0) != Some(req) {
            return;
        }
        if matches!(result, Err(Failure::Unreachable(_))) {
            // The driver backs off before it hands the failure to the machine.
            let d = BACKOFF_US << self.ctl.m.attempts.min(4);
            self.at(self.now + d, Ev::Complete { inc, req, result });
        } else {
            self.ctl_complete(inc, req, result);
        }
    }

    pub(super) fn ctl_complete(&mut self, inc: u32, req: u64, result: Result<Outcome, Failure>) {
        if inc != self.ctl.inc || !self.ctl.alive {
            return;
        }
        let Some((_, action)) = self.ctl.waiting.take_if(|w| w.0 == req) else {
            return;
        };
        let is_wait = matches!(action, Action::Wait { .. });
        if !is_wait {
            self.trace(format!("controller: {action:?} → {result:?}"));
        }
        let now_ms = self.now_ms();
        self.ctl.m.complete(result, now_ms);
        if !is_wait {
            self.persist();
        }
        self.note_phase();
        let pause = if matches!(action, Action::ShadowStats { .. }) {
            POLL_MS * 1000
        } else {
            0
        };
        self.at(self.now + pause, Ev::Step { inc });
    }

    pub(super) fn ctl_crash(&mut self) {
        if !self.ctl.alive || self.ctl.ended {
            return;
        }
        self.controller_crashes += 1;
        self.ctl.alive = false;
        self.ctl.inc += 1;
        self.ctl.waiting = None;
        self.ctl.operator = None;
        let phase = self.ctl.m.phase;
        self.trace(format!("CRASH of the controller in {phase:?}"));
        self.at(self.now + self.sc.controller_down_us, Ev::Restart);
    }

    pub(super) fn ctl_restart(&mut self) {
        match serde_json::from_str::<MoveMachine>(&self.ctl.stored) {
            Ok(mut m) => {
                let before = (m.phase, m.in_flight);
                m.recover(m.phase_started_ms);
                self.trace(format!(
                    "controller restarts: persisted {before:?}, recovered to {:?}",
                    m.phase
                ));
                self.ctl.m = m;
            }
            Err(e) => {
                self.violation("persist_roundtrip", format!("cannot restore: {e}"));
                return;
            }
        }
        self.ctl.alive = true;
        self.note_phase();
        let inc = self.ctl.inc;
        self.at(self.now, Ev::Step { inc });
        self.at(self.now + HEALTH_US, Ev::Health { inc });
    }

    /// The operator's `handoff recover` of a move parked offline (the controller daemon's
    /// `recover`: the machine goes on from its stored state).
    pub(super) fn operator_recover(&mut self, inc: u32) {
        if inc != self.ctl.inc || !self.ctl.alive || !self.ctl.m.phase.is_parked() {
            return;
        }
        let now_ms = self.now_ms();
        // As the daemon's `recover`: a destination back with the move's incarnation (it was
        // unreachable, not lost) takes the move forward; otherwise the source serves again.
        let b = &self.nodes[B];
        let back = b.alive
            && b.inst.is_some()
            && self.ctl.m.incarnations.destination == Some(b.incarnation(B));
        let r = if back {
            self.ctl.m.resume_forward(now_ms)
        } else {
            self.ctl.m.recover_on_source(now_ms)
        };
        match r {
            Ok(()) => {
                self.persist();
                self.note_phase();
                self.at(self.now, Ev::Step { inc });
            }
            Err(e) => self.violation("recover_works", e),
        }
    }

    /// The health watch (`driver::drive`'s, every [`HEALTH_US`]): the route lost at the steer,
    /// or a node of the move lost (it hosts another incarnation or none, or has been down for
    /// [`NODE_LOST_AFTER_US`]) cuts short what the controller waits for (never a steer
    /// command) and the machine takes the crash's way out (`driver::on_incident`).
    pub(super) fn ctl_health(&mut self, inc: u32) {
        if inc != self.ctl.inc || !self.ctl.alive || self.ctl.ended {
            return;
        }
        self.at(self.now + HEALTH_US, Ev::Health { inc });
        let mut incidents = Vec::new();
        if self.steer.alive && self.steer.core.route_lost() {
            incidents.push(Incident::RouteLost);
        }
        let inc_of = self.ctl.m.incarnations;
        for (i, side, want) in [
            (0, Side::Source, inc_of.source),
            (1, Side::Destination, inc_of.destination),
        ] {
            // Not prepared yet: only whether the destination answers at all.
            let unprepared = side == Side::Destination && want.is_none();
            let n = side_node(side);
            let node = &self.nodes[n];
            let lost = if node.alive {
                self.ext.down_since[i] = None;
                match &node.inst {
                    _ if unprepared => None,
                    None => Some(format!("{} no longer hosts the instance", node_name(n))),
                    Some(_) if want.is_some_and(|w| w != node.incarnation(n)) => Some(format!(
                        "{} hosts another incarnation of the instance",
                        node_name(n)
                    )),
                    Some(_) => None,
                }
            } else {
                let since = *self.ext.down_since[i].get_or_insert(self.now);
                (self.now - since >= NODE_LOST_AFTER_US)
                    .then(|| format!("{} has been unreachable", node_name(n)))
            };
            if let Some(why) = lost {
                incidents.push(Incident::NodeLost(side, why));
            }
        }
        for i in incidents {
            // Steer commands are never cut short: the next tick sees the incident again.
            let steer_waiting = self
                .ctl
                .waiting
                .as_ref()
                .is_some_and(|(_, a)| matches!(request_for(&self.ctl.m, a), Request::Steer(_)));
            if steer_waiting {
                return;
            }
            let now_ms = self.now_ms();
            let mut m = self.ctl.m.clone();
            if on_incident(&mut m, i.clone(), now_ms) {
                self.trace(format!("controller: health watch: {i:?}"));
                self.ctl.m = m;
                self.ctl.waiting = None;
                self.persist();
                self.note_phase();
                self.at(self.now, Ev::Step { inc });
                return;
            }
        }
    }
}
