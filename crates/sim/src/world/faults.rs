//! The faults added to the first classes: a node restarting, client retransmission, bounded
//! steer queues (shedding), a steer crash between a signal's two copies, and a controller whose
//! view is stale; and the invariants that check them (see [`super::SimReport::checked`]).
//!
//! Each is seeded and bounded like the rest of the world: a restart happens once, after a
//! bounded delay; a client retransmits at most `max_tries` times; a queue holds at most
//! `queue_depth` frames; the split is one signal; a stale view is set up at the start. None of
//! them draws from the world's RNG unless its scenario asks for it, so the runs of the earlier
//! classes are unchanged.
//!
//! The reference of a run with a restarted node applies only the signals whose answering copy
//! (the frame without a shadow or hand-over flag) reached an instance: a frame written to a
//! connection that died with its node never reached anything, and its client got no answer.

use super::*;

/// What a crashed node comes back with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comeback {
    /// No instance: its state is gone and nothing re-creates it by itself (a steer bind is
    /// refused until something does).
    Nothing,
    /// An empty instance, re-created from the node's configuration (as the real node does at
    /// start): it binds, at seq 0, and serves.
    Empty,
    /// Its instance as it was at the crash, move state included (persistence: every signal it
    /// applied before the crash is kept). Answers it owed on the dead connections are lost.
    Kept,
}

/// A crashed node restarting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    /// How long it stays down, µs (longer than the steer takes to notice its link is down).
    pub down_us: u64,
    /// What it comes back with.
    pub comes_back: Comeback,
}

impl Restart {
    pub(super) fn random(r: &mut SmallRng) -> Self {
        Self {
            down_us: r.gen_range(LINK_DETECT_US..200_000),
            comes_back: match r.gen_range(0..3) {
                0 => Comeback::Nothing,
                1 => Comeback::Empty,
                _ => Comeback::Kept,
            },
        }
    }
}

/// Clients retransmitting: a client that got no answer within `timeout_us` sends the same
/// datagram again (the same op, the same bytes), at most `max_tries` times, then waits for
/// the give-up time-out. To the steer each copy is a new signal (a new seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    /// Wait for an answer before sending again, µs.
    pub timeout_us: u64,
    /// Retransmissions of one operation at most.
    pub max_tries: u32,
}

impl Retransmit {
    pub(super) fn random(r: &mut SmallRng) -> Self {
        Self {
            timeout_us: r.gen_range(20_000..150_000),
            max_tries: r.gen_range(1..=4),
        }
    }
}

/// What the added faults keep during a run.
#[derive(Default)]
pub(super) struct Extra {
    /// The instance a crashed node keeps for its restart (persistence).
    kept: [Option<InstanceCore<Conn>>; 2],
    /// The node that restarted, what it came back with, and the phase it crashed in.
    pub(super) restarted: Option<(usize, Comeback, Phase)>,
    /// Seqs whose answering frame reached a live instance.
    pub(super) reached: BTreeSet<u64>,
    /// Seqs a restarted incarnation answered.
    pub(super) answered_after_restart: BTreeSet<u64>,
    /// Datagrams shed because a link queue was full.
    pub(super) queue_shed: u64,
    /// Arrival times of the frames each link's queue holds.
    queues: BTreeMap<LinkId, VecDeque<u64>>,
    /// Retransmitted datagrams.
    pub(super) retransmissions: u64,
    /// The datagram each client's outstanding operation sent.
    sent: BTreeMap<usize, Bytes>,
    /// A split steer crash: (run, node written to, seq).
    split: Option<(u32, usize, u64)>,
    /// Since when the health watch has found each side's node down (source, destination).
    pub(super) down_since: [Option<u64>; 2],
}

impl Sim {
    // --- node restart -----------------------------------------------------------------------

    /// Before node `n` crashes: the instance it keeps for its restart, if it persists it.
    pub(super) fn before_node_crash(&mut self, n: usize) -> Option<InstanceCore<Conn>> {
        match self.sc.restart {
            Some(r) if r.comes_back == Comeback::Kept && self.nodes[n].alive => {
                self.nodes[n].inst.take()
            }
            _ => None,
        }
    }

    /// After node `n` crashed: its restart is scheduled, if the scenario has one.
    pub(super) fn after_node_crash(&mut self, n: usize, kept: Option<InstanceCore<Conn>>) {
        let Some(r) = self.sc.restart else { return };
        if self.nodes[n].alive || self.ext.restarted.is_some() {
            return;
        }
        self.ext.kept[n] = kept;
        self.ext.restarted = Some((n, r.comes_back, self.ctl.m.phase));
        self.at(self.now + r.down_us, Ev::NodeRestart(n));
    }

    /// Node `n` comes back as its next incarnation; the steer's links to it reconnect (each
    /// after some of its back-off) and bind again.
    pub(super) fn node_restart(&mut self, n: usize) {
        let Some((_, comes_back, _)) = self.ext.restarted else {
            return;
        };
        let func = self.func.clone();
        let kept = self.ext.kept[n].take();
        let node = &mut self.nodes[n];
        node.alive = true;
        node.inc += 1;
        // Whatever it comes back with is a new incarnation: the process restarted, and what
        // its connections had in flight died with it.
        node.create(match comes_back {
            Comeback::Nothing => None,
            Comeback::Empty => Some(InstanceCore::new(Box::new(Hosting::new(func)))),
            Comeback::Kept => kept,
        });
        let inc = node.inc;
        self.trace(format!(
            "{} restarts (incarnation {inc}) with {comes_back:?}",
            node_name(n)
        ));
        if !self.steer.alive {
            // The restarted steer opens its links itself.
            return;
        }
        let links: Vec<LinkId> = (self.steer.links.iter())
            .filter(|(_, to)| **to == n)
            .map(|(id, _)| *id)
            .collect();
        for link in links {
            let d = self.rng.gen_range(0..BIND_RETRY_MAX_US);
            let inc = self.steer.inc;
            self.at(
                self.now + d,
                Ev::Bind {
                    node: n,
                    inc,
                    link,
                    retry_us: BIND_RETRY_US,
                },
            );
        }
    }

    // --- client retransmission --------------------------------------------------------------

    /// Client `c` sent operation `op` as `payload` (try `tries`): it retransmits after the
    /// scenario's time-out, if it retransmits at all.
    pub(super) fn arm_retransmit(&mut self, c: usize, op: u64, tries: u32, payload: Bytes) {
        let Some(rt) = self.sc.retransmit else { return };
        if tries == 0 {
            self.ext.sent.insert(c, payload);
        }
        if tries < rt.max_tries {
            let at = self.now + rt.timeout_us;
            self.at(
                at,
                Ev::Retransmit {
                    client: c,
                    op,
                    tries: tries + 1,
                },
            );
        }
    }

    /// Client `c` still waits for `op`: it sends the same datagram again.
    pub(super) fn retransmit(&mut self, c: usize, op: u64, tries: u32) {
        if !self.traffic || self.clients[c].outstanding != Some(op) {
            return;
        }
        let Some(payload) = self.ext.sent.get(&c).cloned() else {
            return;
        };
        self.ext.retransmissions += 1;
        self.verbose(|| format!("client {c} retransmits op {op} (try {tries})"));
        let at = self.link(Ep::Client(c), Ep::Steer);
        self.at(
            at,
            Ev::Datagram {
                client: c,
                op,
                payload: payload.clone(),
            },
        );
        self.arm_retransmit(c, op, tries, payload);
    }

    // --- queue limits -----------------------------------------------------------------------

    /// The links whose queue is full now (a frame leaves its queue when it reaches its node).
    pub(super) fn full_links(&mut self) -> BTreeSet<LinkId> {
        let Some(depth) = self.sc.queue_depth else {
            return BTreeSet::new();
        };
        let now = self.now;
        let mut full = BTreeSet::new();
        for (id, q) in &mut self.ext.queues {
            while q.front().is_some_and(|&t| t <= now) {
                q.pop_front();
            }
            if q.len() >= depth {
                full.insert(*id);
            }
        }
        full
    }

    /// A frame on `link` reaches its node at `at`.
    pub(super) fn queued(&mut self, link: LinkId, at: u64) {
        if self.sc.queue_depth.is_some() {
            self.ext.queues.entry(link).or_default().push_back(at);
        }
    }

    // --- split steer crash ------------------------------------------------------------------

    /// The cut of a split crash (in `floor..=seq`): just below a signal routed to both nodes,
    /// whose frame to one node (chosen by the RNG) is written and the other not. Without such
    /// a signal, an ordinary cut.
    pub(super) fn split_cut(&mut self, floor: u64, seq: u64) -> u64 {
        let both: Vec<u64> = (self.log.iter())
            .filter(|a| a.seq > floor && a.seq <= seq)
            .filter(|a| matches!(a.delivery, Delivery::Both | Delivery::HandOver))
            .map(|a| a.seq)
            .collect();
        if both.is_empty() {
            return self.rng.gen_range(floor..=seq);
        }
        let s = both[self.rng.gen_range(0..both.len())];
        let to = if self.rng.gen_bool(0.5) { A } else { B };
        self.ext.split = Some((self.steer.inc, to, s));
        s - 1
    }

    /// The seq a split crash at `cut` keeps among the admitted ones: the one written to a
    /// single node, if that was its answering copy (else it reached no client and leaves the
    /// reference like the rest of the cut).
    pub(super) fn split_keeps(&mut self, cut: u64) -> Option<u64> {
        let (run, to, seq) = self.ext.split?;
        if run != self.steer.inc || seq != cut + 1 {
            return None;
        }
        let a = self.log.iter().find(|a| a.seq == seq)?;
        let line = format!(
            "split: seq {seq} ({:?} {:?}) written to {} only",
            a.delivery,
            a.kind,
            node_name(to)
        );
        let keep = a.auth == to;
        self.trace(line);
        keep.then_some(seq)
    }

    /// Whether frame `s` to node `n` is the one copy a split crash wrote above its cut.
    pub(super) fn written_by_split(&self, n: usize, s: &Frame) -> bool {
        self.ext.split == Some((s.inc, n, s.seq))
    }

    // --- checks -----------------------------------------------------------------------------

    /// Whether an admitted signal belongs in the reference: always, unless a node restarted,
    /// then only if its answering copy reached an instance.
    pub(super) fn effective(&self, a: &Admitted) -> bool {
        self.ext.restarted.is_none() || self.ext.reached.contains(&a.seq)
    }

    /// The added invariants, checked at the end of a run (`late`: violations to report).
    pub(super) fn fault_checks(
        &mut self,
        reference: &[handoff_state::RecordView],
        expected: &BTreeMap<u64, Bytes>,
        late: &mut Vec<(&'static str, String)>,
    ) {
        let m = self.ctl.m.clone();
        if let Some((n, comes_back, crashed_in)) = self.ext.restarted {
            // A restarted incarnation is never taken for the old one: whatever it answers is
            // what the reference answers.
            self.checked.push("restarted_answers");
            let mut wrong = Vec::new();
            for seq in &self.ext.answered_after_restart {
                if let (Some(w), Some((_, g))) = (
                    expected.get(seq),
                    self.answers.get(seq).and_then(|v| v.first()),
                ) {
                    if w != g && wrong.len() < 10 {
                        wrong.push(format!("seq {seq}: got {g:?}, reference {w:?}"));
                    }
                }
            }
            if !wrong.is_empty() {
                late.push(("restarted_answers", wrong.join("; ")));
            }
            // A move that ends done or aborted names an owner: it must hold the sessions
            // (those of an aborted move's destination excepted when it lost them), or the loss
            // went unreported.
            let owner = match m.phase {
                Phase::Done => Some(B),
                Phase::Aborted => Some(A),
                _ => None,
            };
            // A crash once the move had ended loses what any crash without a standby loses; so
            // does the new owner's crash while the source is being retired (after the retire
            // checked the new owner): `docs/moves.md`, "When a process crashes".
            let retired_under_it = n == B && crashed_in == Phase::Retire && m.phase == Phase::Done;
            let during = !(crashed_in.is_terminal() || retired_under_it);
            // An aborted move whose source came back with no instance leaves the instance on no
            // node: what the controller's status raises as an alarm (ON NO NODE), and the
            // steer's link to it never binds (the chaos suite checks the alarm); the move
            // itself cannot bring back what died with its source.
            let on_no_node = m.phase == Phase::Aborted && n == A && comes_back == Comeback::Nothing;
            if let Some(owner) =
                owner.filter(|_| self.sc.control_loss == 0.0 && during && !on_no_node)
            {
                let except: BTreeSet<Bytes> =
                    if owner == A && (n == B || m.figures.lost_on_abort > 0) {
                        (self.log.iter())
                            .filter(|a| a.auth == B && a.kind != SignalKind::Tick)
                            .map(|a| a.key.clone())
                            .collect()
                    } else {
                        BTreeSet::new()
                    };
                self.checked.push("restart_not_silent");
                if let Err(e) = compare_state(&self.nodes[owner], reference, &except) {
                    late.push((
                        "restart_not_silent",
                        format!(
                            "{} restarted with {comes_back:?}; the move ended {:?} with {} owning: {e}",
                            node_name(n),
                            m.phase,
                            node_name(owner)
                        ),
                    ));
                }
            }
        }
        if self.sc.retransmit.is_some()
            && self.destination_crashed.is_none()
            && self.source_crashed.is_none()
        {
            // Each operation with a stamped copy is answered at least once (unless every
            // answer was lost in a steer crash).
            self.checked.push("op_answered");
            let mut ops: BTreeMap<(usize, u64), bool> = BTreeMap::new();
            for a in &self.log {
                if let Some(c) = a.client {
                    let got =
                        self.answers.contains_key(&a.seq) || self.lost_answers.contains(&a.seq);
                    *ops.entry(c).or_default() |= got;
                }
            }
            let never: Vec<_> = ops
                .iter()
                .filter(|(_, got)| !**got)
                .map(|(op, _)| *op)
                .take(10)
                .collect();
            if !never.is_empty() {
                late.push((
                    "op_answered",
                    format!("(client, op) never answered: {never:?}"),
                ));
            }
        }
        if self.sc.stale_view {
            self.stale_view_checks(reference, late);
        }
    }

    /// A move started from a stale view must leave the serving instance (on B) as it was: the
    /// machine does not end done, B still serves with every session, the route still points
    /// at B.
    fn stale_view_checks(
        &mut self,
        reference: &[handoff_state::RecordView],
        late: &mut Vec<(&'static str, String)>,
    ) {
        let m = &self.ctl.m;
        self.checked.push("stale_view_not_done");
        if m.phase == Phase::Done {
            late.push((
                "stale_view_not_done",
                "a move from a node that does not host the instance ended done".into(),
            ));
        }
        self.checked.push("stale_view_instance_kept");
        if let Err(e) = compare_state(&self.nodes[B], reference, &BTreeSet::new()) {
            late.push((
                "stale_view_instance_kept",
                format!(
                    "the move ended {:?} ({:?}); the serving instance on {}: {e}",
                    m.phase,
                    m.reason,
                    node_name(B)
                ),
            ));
        }
        self.checked.push("stale_view_route_kept");
        let st = self.steer.core.status();
        if st.phase != RoutePhase::Serving || st.node != node_addr(B) || st.destination.is_some() {
            late.push((
                "stale_view_route_kept",
                format!(
                    "route {} from {} (destination {:?})",
                    st.phase, st.node, st.destination
                ),
            ));
        }
    }
}

/// Whether `node` serves (not a shadow) exactly the `reference`'s records, `except` keys left
/// out; else what differs.
pub(super) fn compare_state(
    node: &Node,
    reference: &[handoff_state::RecordView],
    except: &BTreeSet<Bytes>,
) -> Result<(), String> {
    let Some(inst) = &node.inst else {
        return Err("the owner hosts no instance".into());
    };
    if inst.shadow_stats().is_some() {
        return Err("the owner is still a shadow".into());
    }
    let got: Vec<_> = (inst.hosted().dump().into_iter())
        .filter(|r| !except.contains(&r.key))
        .collect();
    let want: Vec<_> = (reference.iter())
        .filter(|r| !except.contains(&r.key))
        .cloned()
        .collect();
    if got == want {
        return Ok(());
    }
    let keys: BTreeSet<Bytes> = (got.iter().chain(want.iter()))
        .map(|r| r.key.clone())
        .collect();
    let mut diffs = Vec::new();
    for k in keys {
        let g = got.iter().find(|r| r.key == k);
        let w = want.iter().find(|r| r.key == k);
        if g != w && diffs.len() < 6 {
            let show = |r: Option<&handoff_state::RecordView>| {
                r.map(|r| format!("seq {} {:?}", r.seq, SimCounter.decode_session(&r.bytes)))
                    .unwrap_or_else(|| "absent".into())
            };
            diffs.push(format!("{k:?}: got {}, want {}", show(g), show(w)));
        }
    }
    Err(format!(
        "{} records, reference {}; first differences: {}",
        got.len(),
        want.len(),
        diffs.join("; ")
    ))
}
