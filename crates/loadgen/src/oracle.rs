//! The oracle: recomputes every UE's expected context from the transactions it saw answered
//! and compares it with the owner's state dump.
//!
//! Processing is deterministic, so feeding the answered signals of one UE, in order, through
//! the vMME function gives exactly the context the owner must hold, except for fields derived
//! from the steer's clock, which the oracle cannot know and masks
//! ([`UeContext::without_clock`]). The answers are checked too: each recorded answer must be
//! byte-identical to the one the reference produces.

use crate::UeHistory;
use handoff_function::{Function, Output, SignalKind, Stamp};
use handoff_state::RecordView;
use handoff_vmme::{session_key, Signal, UeContext, Vmme};
use std::collections::HashMap;

/// What the oracle found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OracleReport {
    /// UEs whose state was checked (present or absent as expected, or not).
    pub checked: u64,
    /// UEs whose dumped state differs from the reference (wrong, missing or unexpected).
    pub mismatches: u64,
    /// UEs expected to hold a context.
    pub expected_present: u64,
    /// Answers that differ from the reference's answer to the same signal.
    pub answer_mismatches: u64,
    /// UEs skipped because a transaction went unanswered (its effect is unknown).
    pub unverifiable: u64,
    /// Records in the dump that belong to no simulated UE.
    pub unknown_records: u64,
    /// The first few mismatches, described.
    pub examples: Vec<String>,
}

const EXAMPLES: usize = 5;

/// Checks `dump` (the owner's records) against the histories.
pub fn check(function: &Vmme, histories: &[UeHistory], dump: &[RecordView]) -> OracleReport {
    let mut report = OracleReport::default();
    let mut by_key: HashMap<&[u8], &RecordView> =
        dump.iter().map(|r| (r.key.as_ref(), r)).collect();
    let mut out: Vec<Output> = Vec::new();
    for h in histories {
        let key = session_key(h.imsi);
        let actual = by_key.remove(key.as_ref());
        if h.tainted {
            report.unverifiable += 1;
            continue;
        }
        let mut session: Option<UeContext> = None;
        for (n, t) in h.txns.iter().enumerate() {
            let Ok(signal) = Signal::decode(&t.signal) else {
                report.answer_mismatches += 1;
                continue;
            };
            out.clear();
            let stamp = Stamp {
                seq: n as u64 + 1,
                now_us: 0,
            };
            // The runtime gives stateless signals no session; so does the reference.
            if signal.kind() == SignalKind::Stateless {
                function.process(&mut None, &signal, stamp, &mut out);
            } else {
                function.process(&mut session, &signal, stamp, &mut out);
            }
            if out.len() != 1 || out[0].bytes.as_ref() != t.answer.as_slice() {
                report.answer_mismatches += 1;
                if report.examples.len() < EXAMPLES {
                    report.examples.push(format!(
                        "imsi {} txn {}: answer differs from the reference",
                        h.imsi, t.txn_id
                    ));
                }
            }
        }
        report.checked += 1;
        let expected = session.map(|s| s.without_clock());
        report.expected_present += u64::from(expected.is_some());
        let got = actual.map(|r| UeContext::decode(&r.bytes).map(|c| c.without_clock()));
        let ok = match (&expected, &got) {
            (None, None) => true,
            (Some(e), Some(Ok(g))) => e == g,
            _ => false,
        };
        if !ok {
            report.mismatches += 1;
            if report.examples.len() < EXAMPLES {
                report.examples.push(describe(h.imsi, &expected, &got));
            }
        }
    }
    report.unknown_records = by_key.len() as u64;
    report
}

fn describe(
    imsi: u64,
    expected: &Option<UeContext>,
    got: &Option<Result<UeContext, handoff_function::BadRecord>>,
) -> String {
    match (expected, got) {
        (Some(_), None) => format!("imsi {imsi}: context missing on the owner"),
        (None, Some(_)) => format!("imsi {imsi}: owner holds a context the reference deleted"),
        (_, Some(Err(e))) => format!("imsi {imsi}: owner's record undecodable: {e}"),
        (Some(e), Some(Ok(g))) => format!(
            "imsi {imsi}: contexts differ (mm {:?}/{:?}, ecm {:?}/{:?}, ul {}/{}, txn {}/{})",
            e.mm_state,
            g.mm_state,
            e.ecm_state,
            g.ecm_state,
            e.nas_ul_count,
            g.nas_ul_count,
            e.last_txn_id,
            g.last_txn_id
        ),
        (None, None) => format!("imsi {imsi}: no difference"),
    }
}
