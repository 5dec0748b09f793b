//! The copy between nodes: the real copy sender and receiver over a node-to-node link.

use super::*;

impl Sim {
    // --- nodes: copy ------------------------------------------------------------------------

    pub(super) fn send_peer(&mut self, from: usize, to: usize, copy: u64, msg: PeerMsg) {
        let at = self.link(Ep::Node(from), Ep::Node(to));
        self.at(
            at,
            Ev::Peer {
                from,
                to,
                copy,
                msg,
            },
        );
    }

    pub(super) fn copy_fail(&mut self, n: usize, id: u64, why: String) {
        let Some(task) = self.nodes[n].copies.remove(&id) else {
            return;
        };
        if let (Some(log), Some(i)) = (&task.log, self.nodes[n].inst.as_mut()) {
            i.end_source_copy(log);
        }
        self.trace(format!("{}: copy {id} fails: {why}", node_name(n)));
        self.reply(task.reply, Err(Failure::Refused(why)));
    }

    /// A copy waiting for its source to apply a seq: fails with `why` once `overdue`,
    /// otherwise looks again in a millisecond (as `handoff_node::copy::wait_applied` does).
    pub(super) fn copy_wait(&mut self, n: usize, id: u64, overdue: bool, why: String) {
        if overdue {
            self.copy_fail(n, id, why);
        } else {
            self.at(self.now + 1_000, Ev::CopyStep { node: n, copy: id });
        }
    }

    /// The source side of a copy, one step at a time: the real copy sender decides, this
    /// carries out its steps as `handoff_node::copy::copy_to` does.
    pub(super) fn copy_step(&mut self, n: usize, id: u64) {
        if !self.nodes[n].alive {
            return;
        }
        let now = self.now;
        let order = self.sc.order;
        let Some(task) = self.nodes[n].copies.get_mut(&id) else {
            return;
        };
        let Some(inst) = self.nodes[n].inst.as_mut() else {
            self.copy_fail(n, id, "unknown instance counter-1".into());
            return;
        };
        let to = task.to;
        let step = match task.step.take() {
            Some(SenderStep::WaitApplied(seq)) => {
                let applied = inst.stats().runtime.last_seq;
                if applied < seq {
                    task.step = Some(SenderStep::WaitApplied(seq));
                    let overdue = now - task.waiting_since > COPY_WAIT_US;
                    let why = format!("the source never applied seq {seq} (at {applied})");
                    self.copy_wait(n, id, overdue, why);
                    return;
                }
                match task.core.applied() {
                    Ok(s) => s,
                    Err(e) => return self.copy_fail(n, id, e.to_string()),
                }
            }
            Some(other) => other,
            None => return,
        };
        match step {
            SenderStep::TakeManifest => {
                let log = DeletionLog::default();
                if let Err(e) = inst.begin_source_copy(log.clone(), !task.core.subset()) {
                    return self.copy_fail(n, id, e.to_string());
                }
                task.log = Some(log);
                let keys = if task.core.subset() {
                    task.core.keys().to_vec()
                } else {
                    handoff_state::manifest(inst.hosted().table(), order, now).keys
                };
                task.sessions = keys.len() as u64;
                let applied = inst.stats().runtime.last_seq;
                self.trace(format!(
                    "{}: copy {id} manifest of {} keys at seq {applied}",
                    node_name(n),
                    keys.len()
                ));
                let task = self.nodes[n].copies.get_mut(&id).expect("present");
                match task.core.manifest(keys) {
                    Ok(step) => {
                        task.step = Some(step);
                        self.copy_step(n, id);
                    }
                    Err(e) => self.copy_fail(n, id, e.to_string()),
                }
            }
            SenderStep::SendManifest(keys) => {
                if !self.nodes[to].alive {
                    return self.copy_fail(n, id, format!("{}: connection refused", node_name(to)));
                }
                task.connected = true;
                self.send_peer(n, to, id, PeerMsg::Manifest(keys));
            }
            SenderStep::Stream { keys, skip } => {
                let first = task.rounds_streamed == 0;
                task.round = Some((keys, skip, 0, task.core.outgoing()));
                let lead = if first { task.lead_us } else { 0 };
                self.at(now + lead, Ev::CopyStep { node: n, copy: id });
            }
            SenderStep::Done => self.copy_done(n, id),
            SenderStep::WaitApplied(_) => unreachable!("handled above"),
        }
    }

    /// Streams the next record of the current round (or its end).
    pub(super) fn copy_record(&mut self, n: usize, id: u64) {
        let now = self.now;
        let Some(task) = self.nodes[n].copies.get_mut(&id) else {
            return;
        };
        let Some(inst) = self.nodes[n].inst.as_mut() else {
            return self.copy_fail(n, id, "unknown instance counter-1".into());
        };
        let to = task.to;
        let Some((keys, skip, next, out)) = task.round.as_mut() else {
            return;
        };
        while *next < keys.len() && skip.contains(&keys[*next]) {
            *next += 1;
        }
        if *next >= keys.len() {
            let Some((_, skip, _, out)) = task.round.take() else {
                return;
            };
            let (sent, digest) = out.end();
            task.rounds_streamed += 1;
            if let Err(e) = task.core.streamed(sent, skip.len()) {
                return self.copy_fail(n, id, e.to_string());
            }
            let msg = PeerMsg::End {
                records: sent.records,
                digest,
            };
            self.send_peer(n, to, id, msg);
            return;
        }
        let key = keys[*next].clone();
        *next += 1;
        let msg = match inst.hosted().table().get(&key) {
            Some(r) => {
                out.record(&key, r.seq, &r.bytes);
                PeerMsg::Record {
                    key,
                    seq: r.seq,
                    bytes: Some(r.bytes),
                }
            }
            None => {
                let log = task.log.clone().unwrap_or_default();
                match out.tombstone(&key, &log) {
                    Ok(seq) => PeerMsg::Record {
                        key,
                        seq,
                        bytes: None,
                    },
                    Err(e) => return self.copy_fail(n, id, e.to_string()),
                }
            }
        };
        if self.sc.verbose {
            let line = format!("{}: copy {id} sends {msg:?}", node_name(n));
            self.trace(line);
        }
        self.send_peer(n, to, id, msg);
        let pace = if self.rng.gen_bool(0.3) {
            0
        } else {
            self.rng.gen_range(50..1_500)
        };
        self.at(now + pace, Ev::CopyStep { node: n, copy: id });
    }

    /// A copy ended: its report, as the node sends it, read by the driver.
    pub(super) fn copy_done(&mut self, n: usize, id: u64) {
        let Some(task) = self.nodes[n].copies.remove(&id) else {
            return;
        };
        if let (Some(log), Some(i)) = (&task.log, self.nodes[n].inst.as_mut()) {
            i.end_source_copy(log);
        }
        if task.log.as_ref().is_some_and(DeletionLog::overflowed) {
            self.trace(format!(
                "{}: copy {id} fails: deletion log overflowed",
                node_name(n)
            ));
            self.reply(
                task.reply,
                Err(Failure::Refused("deletion log overflowed".into())),
            );
            return;
        }
        let report = CopyReport::of(&task.core, task.sessions, CopyReport::default());
        self.trace(format!("{}: copy {id} ends: {report:?}", node_name(n)));
        let action = Action::Copy {
            from: Side::Source,
            keys: None,
            after_seq: 0,
            lead_ms: 0,
        };
        let body = serde_json::to_value(&report).unwrap_or_default();
        let r = outcome_of(&self.ctl.m, &action, body);
        self.reply(task.reply, r);
    }

    pub(super) fn peer(&mut self, from: usize, to: usize, copy: u64, msg: PeerMsg) {
        if !self.nodes[to].alive {
            return;
        }
        match msg {
            // Answers to a copy's source.
            PeerMsg::Ready(answer) => {
                let Some(t) = self.nodes[to].copies.get_mut(&copy) else {
                    return;
                };
                match t.core.ready(answer) {
                    Ok(step) => {
                        t.step = Some(step);
                        t.waiting_since = self.now;
                        self.copy_step(to, copy);
                    }
                    Err(e) => self.copy_fail(to, copy, e.to_string()),
                }
            }
            PeerMsg::Refuse(why) => self.copy_fail(to, copy, format!("refused: {why}")),
            PeerMsg::Verdict(v) => {
                let Some(t) = self.nodes[to].copies.get_mut(&copy) else {
                    return;
                };
                match t.core.verdict(v) {
                    Ok(step) => {
                        t.step = Some(step);
                        self.copy_step(to, copy);
                    }
                    Err(e) => self.copy_fail(to, copy, e.to_string()),
                }
            }
            // A copy's destination (`handoff_node::copy::peer_session`).
            PeerMsg::Manifest(keys) => {
                let batch_max = self.rng.gen_range(1..=8);
                let count = keys.len();
                let rx = self.nodes[to]
                    .incoming
                    .entry((from, copy))
                    .or_insert_with(|| CopyReceiver::new(batch_max));
                let step = match rx.manifest_chunk(keys, true) {
                    Ok(Some(step)) => step,
                    Ok(None) => return,
                    Err(r) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        return self.send_peer(to, from, copy, PeerMsg::Refuse(r.to_string()));
                    }
                };
                let mut out = Vec::new();
                let node = &mut self.nodes[to];
                let answer = match (node.inst.as_mut(), step) {
                    (None, _) => Err("unknown instance counter-1".to_owned()),
                    (Some(i), ManifestStep::Take(keys)) => i
                        .take_manifest(keys.into_iter().collect(), &mut out)
                        .map(|t| (t, count))
                        .map_err(|e| e.to_string())
                        .map(|(t, c)| {
                            node.incoming
                                .get_mut(&(from, copy))
                                .map(|rx| rx.taken(t, c))
                        }),
                    (Some(i), ManifestStep::Reawait(keys)) => {
                        i.reawait(&keys).map_err(|e| e.to_string()).map(|r| {
                            node.incoming
                                .get_mut(&(from, copy))
                                .map(|rx| rx.reawaited(r))
                        })
                    }
                };
                self.emit(to, out);
                self.trace(format!(
                    "{}: manifest of copy {copy} ({count} keys) → {answer:?}",
                    node_name(to)
                ));
                match answer {
                    Ok(Some(a)) => self.send_peer(to, from, copy, PeerMsg::Ready(a)),
                    Ok(None) => {}
                    Err(e) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        self.send_peer(to, from, copy, PeerMsg::Refuse(e));
                    }
                }
            }
            PeerMsg::Record { key, seq, bytes } => {
                let Some(rx) = self.nodes[to].incoming.get_mut(&(from, copy)) else {
                    return;
                };
                match rx.record(key, seq, bytes) {
                    Ok(Some(batch)) => {
                        let epoch = rx.epoch();
                        self.hand_records(to, from, copy, batch, epoch);
                    }
                    Ok(None) => {}
                    Err(r) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        self.send_peer(to, from, copy, PeerMsg::Refuse(r.to_string()));
                    }
                }
            }
            PeerMsg::End { records, digest } => {
                let Some(rx) = self.nodes[to].incoming.get_mut(&(from, copy)) else {
                    return;
                };
                let (rest, verdict, more) = match rx.end(records, digest) {
                    Ok(v) => v,
                    Err(r) => {
                        self.nodes[to].incoming.remove(&(from, copy));
                        return self.send_peer(to, from, copy, PeerMsg::Refuse(r.to_string()));
                    }
                };
                let epoch = rx.epoch();
                if !self.hand_records(to, from, copy, rest, epoch) {
                    return;
                }
                if !more {
                    self.nodes[to].incoming.remove(&(from, copy));
                }
                self.send_peer(to, from, copy, PeerMsg::Verdict(verdict));
            }
        }
    }

    /// Hands a batch of copied records to the instance; `false` if it is gone.
    pub(super) fn hand_records(
        &mut self,
        n: usize,
        from: usize,
        copy: u64,
        batch: RecordBatch,
        epoch: u64,
    ) -> bool {
        let mut out = Vec::new();
        let Some(i) = self.nodes[n].inst.as_mut() else {
            self.nodes[n].incoming.remove(&(from, copy));
            self.send_peer(n, from, copy, PeerMsg::Refuse("instance stopped".into()));
            return false;
        };
        let before = i.stats();
        let count = batch.len();
        if self.sc.verbose {
            let line = format!(
                "{}: {count} records of copy {copy} from {}: {batch:?}",
                node_name(n),
                node_name(from)
            );
            self.trace(line);
        }
        let i = self.nodes[n].inst.as_mut().expect("checked above");
        i.records(batch, epoch, &mut out);
        let after = i.stats();
        if after.stale_copy_records > before.stale_copy_records {
            self.trace(format!(
                "{}: {count} records of copy {copy} (epoch {epoch}) dropped: superseded",
                node_name(n)
            ));
        }
        if after.move_errors > before.move_errors {
            self.trace(format!("{}: records of copy {copy} refused", node_name(n)));
        }
        self.emit(n, out);
        true
    }
}
