//! The invariant checks at the end of a run, against a reference instance that applied every
//! admitted signal in seq order.

use super::*;

impl Sim {
    // --- the end ----------------------------------------------------------------------------

    pub(super) fn finish(mut self) -> SimReport {
        let m = self.ctl.m.clone();
        let phase = m.phase;
        let dest_crash = self.destination_crashed.is_some();
        let source_crash = self.source_crashed.is_some();
        let crashed = dest_crash || source_crash;

        self.checked.push("terminates");
        if self.cut_off || !phase.is_terminal() || !self.ctl.ended {
            self.violation(
                "terminates",
                format!(
                    "the run did not end (phase {phase:?}, cut off {}, {} events, {} µs)",
                    self.cut_off, self.events, self.now
                ),
            );
        }
        self.checked.push("persist_roundtrip");
        self.checked.push("single_answer");
        self.checked.push("answer_order");

        let failed_allowed = phase == Phase::Failed
            && m.reason
                .as_deref()
                .is_some_and(|r| r.contains("unreachable"))
            && (self.sc.control_loss > 0.0 || crashed);
        // A node restarted without its state: a failed move tells the operator (never silent).
        let failed_allowed = failed_allowed
            || (phase == Phase::Failed
                && self
                    .ext
                    .restarted
                    .is_some_and(|(_, c, _)| c != Comeback::Kept));
        // The source lost during an abort: the destination's copy is kept, never dropped, and
        // the move stops for the operator.
        let failed_allowed = failed_allowed
            || (phase == Phase::Failed
                && source_crash
                && m.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("the destination's copy is kept")));
        self.checked.push("ends_done_or_aborted");
        if phase == Phase::Failed && !failed_allowed {
            self.violation(
                "ends_done_or_aborted",
                format!("the move failed: {:?}", m.reason),
            );
        }

        // The reference: one instance applying every admitted signal in seq order.
        let mut reference = Instance::new(self.func.clone());
        let mut expected: BTreeMap<u64, Bytes> = BTreeMap::new();
        for a in self.log.iter().filter(|a| self.effective(a)) {
            let mut out = Vec::new();
            reference.apply_signal(
                Stamp {
                    seq: a.seq,
                    now_us: a.now_us,
                },
                a.kind,
                &a.key,
                &a.payload,
                &mut out,
            );
            for o in out {
                expected.insert(o.seq, o.output.bytes);
            }
        }
        let reference = reference.table().dump();

        let signals: Vec<&Admitted> = self.log.iter().filter(|a| a.client.is_some()).collect();
        let unanswered = signals
            .iter()
            .filter(|a| !self.answers.contains_key(&a.seq))
            .count() as u64;
        let answers = self.answers.values().map(Vec::len).sum::<usize>() as u64;

        let mut found = Vec::new();
        // Checks exactly-once answers for the admitted signals `which` selects.
        let exactly_once = |which: &dyn Fn(&Admitted) -> bool, found: &mut Vec<String>| {
            for a in signals.iter().filter(|a| which(a)) {
                let n = self.answers.get(&a.seq).map_or(0, Vec::len);
                // An answer that reached the steer while it was down is lost (the client
                // retransmits); it must not arrive later too.
                let want = usize::from(!self.lost_answers.contains(&a.seq));
                if n != want && found.len() < 10 {
                    found.push(format!(
                        "seq {} ({:?} {:?}, {:?} to {}) answered {n} times (want {want})",
                        a.seq,
                        a.kind,
                        a.key,
                        a.delivery,
                        node_name(a.auth)
                    ));
                }
            }
        };
        let ok_state =
            |node: &Node, except: &BTreeSet<Bytes>| faults::compare_state(node, &reference, except);

        let mut state_violation = None;
        let mut late: Vec<(&'static str, String)> = Vec::new();
        if !crashed {
            self.checked.push("every_answered");
            exactly_once(&|_| true, &mut found);
            self.checked.push("answer_content");
            let mut wrong = Vec::new();
            for (seq, got) in &self.answers {
                if let (Some(w), Some((_, g))) = (expected.get(seq), got.first()) {
                    if w != g && wrong.len() < 10 {
                        wrong.push(format!("seq {seq}: got {g:?}, reference {w:?}"));
                    }
                }
            }
            if !wrong.is_empty() {
                late.push(("answer_content", wrong.join("; ")));
            }
            // A stale view's move has its own checks (the instance started on B).
            let owner = match phase {
                _ if self.sc.stale_view => None,
                Phase::Done => Some(B),
                Phase::Aborted => Some(A),
                _ => None,
            };
            if let Some(owner) = owner {
                // Sessions that an abort could not bring back are excluded (and reported).
                let except: BTreeSet<Bytes> = if m.figures.lost_on_abort > 0 {
                    self.log
                        .iter()
                        .filter(|a| a.auth == B && a.kind != SignalKind::Tick)
                        .map(|a| a.key.clone())
                        .collect()
                } else {
                    BTreeSet::new()
                };
                self.checked.push("final_state");
                if let Err(e) = ok_state(&self.nodes[owner], &except) {
                    state_violation = Some(("final_state", format!("{}: {e}", node_name(owner))));
                }
                self.checked.push("other_side_dropped");
                let said = m
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("could not be dropped"));
                if self.nodes[1 - owner].inst.is_some() && !said {
                    late.push((
                        "other_side_dropped",
                        format!("{} still hosts the instance", node_name(1 - owner)),
                    ));
                }
                self.checked.push("route_settled");
                let st = self.steer.core.status();
                if st.phase != RoutePhase::Serving
                    || st.node != node_addr(owner)
                    || st.destination.is_some()
                {
                    let d = format!(
                        "route {} from {} (destination {:?})",
                        st.phase, st.node, st.destination
                    );
                    late.push(("route_settled", d));
                }
            }
        } else if self.sc.control_loss == 0.0 {
            // One data node crashed: what the survivor answered is still exactly once; its
            // state is exact where the crash cannot have touched it.
            let survivor = if dest_crash { A } else { B };
            if dest_crash || phase == Phase::Done {
                self.checked.push("survivor_answers");
                exactly_once(&|a| a.auth == survivor, &mut found);
            }
            if dest_crash && phase == Phase::Aborted {
                let except: BTreeSet<Bytes> = self
                    .log
                    .iter()
                    .filter(|a| a.auth == B && a.kind != SignalKind::Tick)
                    .map(|a| a.key.clone())
                    .collect();
                self.checked.push("source_state_except_created");
                if let Err(e) = ok_state(&self.nodes[A], &except) {
                    state_violation = Some(("source_state_except_created", e));
                }
            }
            if dest_crash && phase == Phase::Recovered {
                // Recovered on the source after the destination died past the cutover: the
                // source holds exactly what every admitted signal and tick but the given-up
                // ones (stamped from the boundary until the recovery) makes of the instance.
                let given_up =
                    m.figures.cutover_seq..m.figures.cutover_seq + m.figures.given_up_seqs;
                let mut kept = Instance::new(self.func.clone());
                for a in
                    (self.log.iter()).filter(|a| self.effective(a) && !given_up.contains(&a.seq))
                {
                    let stamp = Stamp {
                        seq: a.seq,
                        now_us: a.now_us,
                    };
                    kept.apply_signal(stamp, a.kind, &a.key, &a.payload, &mut Vec::new());
                }
                let kept = kept.table().dump();
                // Not abort-safe: the sessions created on the destination during the move
                // died with it too (the source holds what it had before their create).
                let created_there: BTreeSet<Bytes> = (self.log.iter())
                    .filter(|a| {
                        a.auth == B && a.kind != SignalKind::Tick && a.seq < m.figures.cutover_seq
                    })
                    .map(|a| a.key.clone())
                    .collect();
                self.checked.push("recovered_source_state");
                if let Err(e) = faults::compare_state(&self.nodes[A], &kept, &created_there) {
                    state_violation = Some(("recovered_source_state", e));
                }
            }
            if source_crash && phase == Phase::RolledForward {
                // Rolled forward: the destination is exact except for the sessions the move
                // names as lost with the source (every session that existed before the move
                // when its manifest never arrived).
                let except: BTreeSet<Bytes> = if m.figures.manifest_lost {
                    (self.log.iter())
                        .filter(|a| a.seq < m.figures.first_seq && a.kind != SignalKind::Tick)
                        .map(|a| a.key.clone())
                        .collect()
                } else {
                    m.figures.lost_keys.iter().cloned().collect()
                };
                self.checked.push("rolled_forward_state");
                if let Err(e) = ok_state(&self.nodes[B], &except) {
                    state_violation = Some(("rolled_forward_state", e));
                }
            }
            if source_crash && phase == Phase::Done {
                self.checked.push("destination_state");
                if let Err(e) = ok_state(&self.nodes[B], &BTreeSet::new()) {
                    state_violation = Some(("destination_state", e));
                }
            }
        }
        let n_signals = signals.len() as u64;
        let mut added = Vec::new();
        self.fault_checks(&reference, &expected, &mut added);
        late.extend(added);
        if !found.is_empty() {
            let inv = if crashed {
                "survivor_answers"
            } else {
                "every_answered"
            };
            self.violation(inv, found.join("; "));
        }
        if let Some((inv, d)) = state_violation {
            self.violation(inv, d);
        }
        for (inv, d) in late {
            self.violation(inv, d);
        }

        let tail = if self.sc.verbose {
            self.trace.len()
        } else {
            TRACE_TAIL
        };
        let trace_tail = self
            .trace
            .iter()
            .skip(self.trace.len().saturating_sub(tail))
            .cloned()
            .collect();
        SimReport {
            signals: n_signals,
            ticks: self.ticks,
            shed: self.shed,
            answers,
            unanswered,
            client_timeouts: self.client_timeouts,
            control_lost: self.control_lost,
            phase,
            phases: self.phases,
            reason: m.reason.clone(),
            cut_over: m.figures.cutover_seq > 0,
            failed_allowed,
            controller_crashes: self.controller_crashes,
            destination_crashed: self.destination_crashed,
            source_crashed: self.source_crashed,
            operator_abort: self.operator_abort,
            steer_crashed: self.steer_crashed,
            lost_in_steer_crash: self.lost_in_steer_crash,
            answers_lost_in_steer_crash: self.lost_answers.len() as u64,
            restarted: self.ext.restarted.map(|(n, c, p)| {
                let side = if n == A {
                    Side::Source
                } else {
                    Side::Destination
                };
                (side, c, p)
            }),
            retransmissions: self.ext.retransmissions,
            queue_shed: self.ext.queue_shed,
            created_during_move: m.figures.created_during_move,
            lost_on_abort: m.figures.lost_on_abort,
            checked: self.checked,
            violations: self.violations,
            events: self.events,
            end_us: self.now,
            trace_tail,
            scenario: self.sc,
        }
    }
}
