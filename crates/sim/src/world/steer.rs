//! The steer: the real service core, its effects carried out over the modelled links, its
//! crashes and restarts.

use super::*;

impl Sim {
    // --- steer ------------------------------------------------------------------------------

    pub(super) fn datagram(&mut self, client: usize, op: u64, payload: Bytes) {
        match Function::classify(self.func.as_ref(), &payload) {
            Ok(c) => self.admit(c.kind, c.key, payload, Some((client, op))),
            Err(e) => self.violation("classify", format!("client {client}: {e}")),
        }
    }

    /// One signal at the steer: the real service core stamps and routes it.
    pub(super) fn admit(
        &mut self,
        kind: SignalKind,
        key: Bytes,
        payload: Bytes,
        client: Option<(usize, u64)>,
    ) {
        if !self.steer.alive {
            if kind != SignalKind::Tick {
                self.lost_in_steer_crash += 1;
            }
            return;
        }
        let inbound = Inbound {
            kind,
            key: key.clone(),
            payload: payload.clone(),
            client: client.map_or(SERVICE, |c| client_addr(c.0)),
        };
        // Links have room unless the scenario bounds their queues.
        let full = self.full_links();
        let admission = self
            .steer
            .core
            .admit(inbound, self.now, |l| !full.contains(&l));
        let (seq, delivery, frames) = match admission {
            Admission::Routed {
                seq,
                delivery,
                frames,
            } => (seq, delivery, frames),
            Admission::Dropped(why) => {
                if kind != SignalKind::Tick {
                    if why == Dropped::Unrouted {
                        // Restarted during a move and its route not installed again.
                        self.lost_in_steer_crash += 1;
                    } else {
                        self.shed += 1;
                        if why == Dropped::Shed {
                            self.ext.queue_shed += 1;
                        }
                    }
                    self.verbose(|| format!("steer: {kind:?} {key:?} dropped: {why:?}"));
                }
                return;
            }
            Admission::Held { seq } => {
                self.violation(
                    "steer_hold",
                    format!("seq {seq} held: no hold was asked for"),
                );
                return;
            }
        };
        if self.log.last().is_some_and(|a| a.seq >= seq) {
            self.violation(
                "seq_reuse",
                format!("seq {seq} stamped again after a steer restart"),
            );
        }
        let inc = self.steer.inc;
        let mut auth = A;
        for (link, f) in frames {
            let Some(&node) = self.steer.links.get(&link) else {
                self.violation(
                    "steer_link",
                    format!("seq {seq} routed to unknown {link:?}"),
                );
                continue;
            };
            if f.flags == 0 {
                auth = node;
            }
            let frame = Frame {
                frame: f,
                inc,
                link,
                conn: self.nodes[node].inc,
            };
            self.send_signal(node, frame);
        }
        if kind == SignalKind::Tick {
            self.ticks += 1;
        }
        self.verbose(|| {
            format!("steer: seq {seq} {kind:?} {key:?} client {client:?} → {delivery:?}")
        });
        self.log.push(Admitted {
            seq,
            now_us: self.now,
            kind,
            key,
            payload,
            client,
            delivery,
            auth,
        });
    }

    pub(super) fn send_signal(&mut self, node: usize, frame: Frame) {
        let at = self.link(Ep::Steer, Ep::Node(node));
        self.queued(frame.link, at);
        self.at(at, Ev::Signal { node, frame });
    }

    /// A move request at the steer: the request the driver sends for `action`
    /// ([`request_for`]), carried out by the real service core.
    pub(super) fn steer_request(&mut self, action: Action, reply: ReplyTo) {
        if !self.steer.alive {
            let d = self.rng.gen_range(100..3_000);
            self.at(
                self.now + d,
                Ev::Reply {
                    inc: reply.inc,
                    req: reply.req,
                    result: Err(Failure::Unreachable("the steer is down".into())),
                },
            );
            return;
        }
        let req = match request_for(&self.ctl.m, &action) {
            Request::Steer(r) => r,
            other => {
                let why = format!("not a steer request: {other:?}");
                self.reply(reply, Err(Failure::Refused(why)));
                return;
            }
        };
        let Some((_, command)) = req.command() else {
            self.reply(
                reply,
                Err(Failure::Refused("status is no move request".into())),
            );
            return;
        };
        self.steer
            .asked
            .insert((reply.inc, reply.req), (action, req.clone()));
        self.steer.core.command(command, reply, self.now);
        self.steer_effects();
    }

    /// Carries out the steer core's effects.
    pub(super) fn steer_effects(&mut self) {
        for e in self.steer.core.take_effects() {
            match e {
                Effect::Reply(to, r) => self.steer_answer(to, r),
                Effect::OpenLink { id, node } => {
                    let n = node_at(node);
                    self.steer.links.insert(id, n);
                    self.steer_bind(n, id, BIND_RETRY_US);
                }
                Effect::CloseLink(id) | Effect::RetireLink(id) => {
                    // Frames already on their way still arrive (FIFO links).
                    self.steer.links.remove(&id);
                }
                Effect::PersistRoute(k) => self.steer.disk = k,
                Effect::Send(id, f) => {
                    self.violation("steer_hold", format!("held seq {} sent on {id:?}", f.seq));
                }
            }
        }
        if self.steer.core.needs_poll() && !self.steer.poll_due {
            self.steer.poll_due = true;
            let inc = self.steer.inc;
            self.at(self.now + STEER_POLL_US, Ev::SteerPoll { inc });
        }
    }

    /// The steer core's answer, as its control listener sends it and the driver reads it.
    pub(super) fn steer_answer(&mut self, to: ReplyTo, r: Result<Answer, CommandError>) {
        let Some((action, req)) = self.steer.asked.remove(&(to.inc, to.req)) else {
            self.violation("steer_answer", format!("answer to unknown request {to:?}"));
            return;
        };
        let result = match r {
            Ok(answer) => match reply_body(&req, answer, u64::from(self.steer.inc)) {
                Some(v) => outcome_of(&self.ctl.m, &action, v),
                None => Err(Failure::Refused(format!("answer out of turn to {req:?}"))),
            },
            Err(e) => Err(refusal(e.code(), &e.to_string())),
        };
        let line = format!(
            "steer: answers {action:?} → {result:?} (route {})",
            self.steer.core.phase()
        );
        self.trace(line);
        self.reply(to, result);
    }

    /// The steer's link `link` binds the instance at node `n`.
    pub(super) fn steer_bind(&mut self, n: usize, link: LinkId, retry_us: u64) {
        let inc = self.steer.inc;
        let at = self.link(Ep::Steer, Ep::Node(n));
        self.at(
            at,
            Ev::Bind {
                node: n,
                inc,
                link,
                retry_us,
            },
        );
    }
}
