//! The clients: one per session key, each sending its next operation once it got the answer
//! to the previous one (or gave up on it).

use super::*;

impl Sim {
    // --- clients ----------------------------------------------------------------------------

    pub(super) fn next_op(&mut self, c: usize) {
        let think = if self.rng.gen_bool(0.1) {
            self.rng.gen_range(30_000..120_000)
        } else {
            self.rng.gen_range(0..12_000)
        };
        self.at(self.now + think, Ev::ClientSend(c));
    }

    pub(super) fn client_send(&mut self, c: usize) {
        if !self.traffic || self.clients[c].outstanding.is_some() {
            return;
        }
        let op = if self.clients[c].ops == 0 {
            OP_CREATE
        } else {
            match self.rng.gen_range(0..100) {
                0..=17 => OP_CREATE,
                18..=75 => OP_UPDATE,
                76..=84 => OP_DELETE,
                _ => OP_PING,
            }
        };
        let cl = &mut self.clients[c];
        cl.ops += 1;
        let n = cl.ops;
        cl.outstanding = Some(n);
        let payload = Bytes::copy_from_slice(&[op, cl.key_id]);
        let at = self.link(Ep::Client(c), Ep::Steer);
        self.at(
            at,
            Ev::Datagram {
                client: c,
                op: n,
                payload: payload.clone(),
            },
        );
        self.at(self.now + CLIENT_TIMEOUT_US, Ev::ClientTimeout(c, n));
        self.arm_retransmit(c, n, 0, payload);
    }

    pub(super) fn answer(&mut self, client: usize, seq: u64, payload: Bytes) {
        let entry = self.answers.entry(seq).or_default();
        entry.push((client, payload));
        let twice = entry.len() > 1;
        if twice {
            self.violation(
                "single_answer",
                format!("seq {seq} answered again (client {client})"),
            );
        }
        // Seqs are dense but for a split steer crash's gap: look the seq up.
        let found = self.log.binary_search_by_key(&seq, |a| a.seq).ok();
        let Some(adm) = found.and_then(|i| self.log.get(i)) else {
            self.violation(
                "single_answer",
                format!("answer for seq {seq}, never admitted"),
            );
            return;
        };
        let (kind, key, auth) = (adm.kind, adm.key.clone(), adm.auth);
        let (owner, op) = match adm.client {
            Some(c) => c,
            None => {
                self.violation("single_answer", format!("answer for tick seq {seq}"));
                return;
            }
        };
        if owner != client {
            self.violation(
                "single_answer",
                format!("seq {seq} of client {owner} answered to client {client}"),
            );
        }
        if kind != SignalKind::Stateless {
            // A retransmitting client has several signals of a key in flight: only the answers
            // of one node (one connection) keep their order.
            let via = if self.sc.retransmit.is_some() {
                auth
            } else {
                0
            };
            let last = self.key_last_answer.entry((key.clone(), via)).or_default();
            if seq <= *last && !twice {
                let l = *last;
                self.violation(
                    "answer_order",
                    format!("key {key:?}: answer for seq {seq} after one for seq {l}"),
                );
            } else {
                *last = seq;
            }
        }
        if self.clients[owner].outstanding == Some(op) {
            self.clients[owner].outstanding = None;
            self.next_op(owner);
        }
    }
}
