//! The nodes: signals applied by the real instance core, and the admin requests the
//! controller sends them, answered with the bodies the node sends.

use super::*;

impl Sim {
    // --- nodes: signals ---------------------------------------------------------------------

    /// One signal at a node: the real instance core applies it.
    pub(super) fn node_signal(&mut self, n: usize, s: Frame) {
        if s.seq > self.steer.cuts[s.inc as usize] && !self.written_by_split(n, &s) {
            // Still in the crashed steer's queues: never written out.
            self.verbose(|| format!("{}: seq {} died with the steer", node_name(n), s.seq));
            return;
        }
        if s.conn != self.nodes[n].inc || !self.nodes[n].alive {
            // Written to a connection that died with the node.
            self.verbose(|| format!("{}: seq {} died with its connection", node_name(n), s.seq));
            return;
        }
        if s.inc == self.steer.inc {
            self.steer.delivered = self.steer.delivered.max(s.seq);
        }
        let node = &mut self.nodes[n];
        if !node.alive {
            return;
        }
        // A link this node never bound cannot carry signals (the steer routes only to bound
        // links); should one, the core fences it off.
        let binding = node
            .bindings
            .get(&(s.inc, s.link))
            .copied()
            .unwrap_or(u64::MAX);
        let conn = (s.inc, node.inc);
        let Some(inst) = node.inst.as_mut() else {
            self.verbose(|| format!("{}: seq {} for no instance", node_name(n), s.seq));
            return;
        };
        let before = inst.stats();
        let mut out = Vec::new();
        inst.signals(
            Some(binding),
            std::slice::from_ref(&s.frame),
            &conn,
            &mut out,
        );
        let after = inst.stats();
        if s.flags == 0 && after.fenced == before.fenced {
            self.ext.reached.insert(s.seq);
        }
        if after.fenced > before.fenced {
            self.trace(format!(
                "{}: seq {} of an earlier steer binding fenced off",
                node_name(n),
                s.seq
            ));
        } else if after.move_errors > before.move_errors {
            self.trace(format!("{}: move error on seq {}", node_name(n), s.seq));
        } else if self.sc.verbose {
            let line = format!(
                "{}: applies seq {} {:?} {:?} flags {} ({} outputs, handovers {})",
                node_name(n),
                s.seq,
                s.kind,
                s.key,
                s.flags,
                out.len(),
                after.handovers
            );
            self.trace(line);
        }
        self.emit(n, out);
    }

    /// Outputs of node `n` on their way to the steer run whose connection they belong to.
    pub(super) fn emit(&mut self, n: usize, out: Vec<Emit<Conn>>) {
        for e in out {
            let Some(client) = client_of(e.client) else {
                continue;
            };
            if e.to != (self.steer.inc, self.nodes[n].inc) {
                // That connection died with the steer run or the node: so did the answer.
                self.lost_answers.insert(e.seq);
                continue;
            }
            if self.nodes[n].inc > 0 {
                self.ext.answered_after_restart.insert(e.seq);
            }
            let at = self.link(Ep::Node(n), Ep::Steer);
            self.at(
                at,
                Ev::Output {
                    seq: e.seq,
                    client,
                    payload: e.payload,
                },
            );
        }
    }

    // --- nodes: admin -----------------------------------------------------------------------

    pub(super) fn reply(&mut self, to: ReplyTo, result: Result<Outcome, Failure>) {
        if to.lose {
            let d = self.rng.gen_range(1..CONTROL_TIMEOUT_US);
            self.control_lost += 1;
            self.trace(format!("control: reply to request {} lost", to.req));
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: to.inc,
                    req: to.req,
                    result: Err(Failure::Unreachable("the connection broke".into())),
                },
            );
        } else {
            let at = self.link(to.from, Ep::Ctl);
            self.at(
                at,
                Ev::Reply {
                    inc: to.inc,
                    req: to.req,
                    result,
                },
            );
        }
    }

    pub(super) fn node_request(&mut self, n: usize, action: Action, reply: ReplyTo) {
        if !self.nodes[n].alive {
            let d = self.rng.gen_range(100..3_000);
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: reply.inc,
                    req: reply.req,
                    result: Err(Failure::Unreachable(format!("{} is down", node_name(n)))),
                },
            );
            return;
        }
        let func = self.func.clone();
        let unknown = || {
            Err((
                code::UNKNOWN_INSTANCE,
                "instance counter-1 is not hosted here".into(),
            ))
        };
        let step = |r: Result<(), MoveStepError>, ok: serde_json::Value| {
            r.map(|()| ok)
                .map_err(|e| (code::WRONG_FRAME, e.to_string()))
        };
        let mut out = Vec::new();
        let node = &mut self.nodes[n];
        // The node's answer body, as its admin listener sends it (the driver reads it).
        let body: Result<serde_json::Value, (u16, String)> = match &action {
            Action::PrepareShadow => {
                // As the real node: a repeat of this move's prepare, or an instance that
                // never served, may become the shadow; anything else is left alone.
                let tag = self.ctl.m.spec.tag();
                let fresh = node.inst.is_none();
                if fresh {
                    node.create(Some(InstanceCore::new(Box::new(Hosting::new(func)))));
                    node.prepared_by = Some(tag.clone());
                }
                let incarnation = node.incarnation(n);
                let ours = node.prepared_by.as_deref() == Some(tag.as_str());
                let inst = node.inst.as_mut().expect("present");
                let never_served = inst.stats().runtime.last_seq == 0;
                if !ours && !never_served {
                    Err((
                        code::FOREIGN,
                        "already hosted here and not prepared by this move: left alone".into(),
                    ))
                } else {
                    let r = step(
                        inst.prepare_shadow(),
                        json!({ "prepared": "counter-1", "incarnation": incarnation }),
                    );
                    if r.is_ok() && node.prepared_by.is_none() {
                        node.prepared_by = Some(tag);
                    }
                    r
                }
            }
            Action::ShadowStats { .. } => match &node.inst {
                Some(i) => Ok(json!(i.shadow_stats())),
                None => unknown(),
            },
            Action::AppliedSeq { .. } => match &node.inst {
                Some(i) => Ok(json!({ "instances": [{
                    "instance": "counter-1",
                    "incarnation": node.incarnation(n),
                    "stats": i.stats(),
                }] })),
                None => unknown(),
            },
            Action::CreatedKeys { .. } => match &node.inst {
                Some(i) => match i.created_keys() {
                    Some(keys) => Ok(json!({ "created": keys_to_hex(&keys) })),
                    None => Err((code::BAD_REQUEST, "too many sessions created".into())),
                },
                None => unknown(),
            },
            Action::FinishShadow { force, .. } => match node.inst.as_mut() {
                Some(i) => i
                    .finish_shadow(*force, &mut out)
                    .map(|abandoned| {
                        json!({ "serving": "counter-1", "abandoned": keys_to_hex(&abandoned) })
                    })
                    .map_err(|e| (code::WRONG_FRAME, e.to_string())),
                None => unknown(),
            },
            Action::DropInstance { at } => {
                // As the real node: only what this move created or copied from, and only the
                // incarnation it names.
                let tag = self.ctl.m.spec.tag();
                let want = match at {
                    Side::Source => self.ctl.m.incarnations.source,
                    Side::Destination => self.ctl.m.incarnations.destination,
                };
                let ours = node.prepared_by.as_deref() == Some(tag.as_str())
                    || node.leaving.as_deref() == Some(tag.as_str());
                let same = want.is_none_or(|w| w == node.incarnation(n));
                match node.inst.as_ref() {
                    None => unknown(),
                    Some(_) if !ours || !same => Err((
                        code::FOREIGN,
                        format!("not created by move {tag} (or another incarnation): left alone"),
                    )),
                    Some(_) => {
                        node.create(None);
                        Ok(json!({ "dropped": "counter-1" }))
                    }
                }
            }
            Action::ExpectSessions { keys } => match node.inst.as_mut() {
                Some(i) => step(
                    i.expect_records(keys.clone()),
                    json!({ "expecting": keys.len() }),
                ),
                None => unknown(),
            },
            Action::Copy {
                from,
                keys,
                after_seq,
                lead_ms,
            } => {
                let to = side_node(match from {
                    Side::Source => Side::Destination,
                    Side::Destination => Side::Source,
                });
                if keys.is_none() && *from == Side::Source {
                    self.nodes[n].leaving = Some(self.ctl.m.spec.tag());
                }
                self.next_copy += 1;
                let id = self.next_copy;
                let (core, step) = CopySender::new(*after_seq, keys.clone());
                self.nodes[n].copies.insert(
                    id,
                    CopyTask {
                        to,
                        lead_us: lead_ms.min(&handoff_state::MAX_LEAD_MS) * 1000,
                        reply,
                        core,
                        step: Some(step),
                        waiting_since: self.now,
                        log: None,
                        sessions: 0,
                        connected: false,
                        round: None,
                        rounds_streamed: 0,
                    },
                );
                self.trace(format!(
                    "{}: copy {id} to {} starts (keys {:?}, after seq {after_seq})",
                    node_name(n),
                    node_name(to),
                    keys.as_ref().map(Vec::len)
                ));
                self.copy_step(n, id);
                return;
            }
            other => Err((code::BAD_REQUEST, format!("not a node request: {other:?}"))),
        };
        self.emit(n, out);
        let r = match body {
            Ok(v) => outcome_of(&self.ctl.m, &action, v),
            Err((c, m)) => Err(refusal(c, &m)),
        };
        self.trace(format!("{}: {action:?} → {r:?}", node_name(n)));
        self.reply(reply, r);
    }
}
