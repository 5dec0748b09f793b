use super::*;
use handoff_function::runtime::Hosting;
use handoff_vmme::{session_key, Header, Signal, SignalBody, Vmme};
use std::sync::Arc;

type Core = InstanceCore<u8>;

fn core() -> Core {
    InstanceCore::new(Box::new(Hosting::new(Arc::new(Vmme::default()))))
}

fn client() -> SocketAddr {
    SocketAddr::from(([10, 1, 0, 1], 9000))
}

/// A stamped signal of UE `imsi` with `flags`.
fn frame(seq: u64, imsi: u64, body: SignalBody, flags: u8) -> SignalFrame {
    let s = Signal {
        header: Header {
            imsi,
            txn_id: seq as u32,
        },
        body,
    };
    let mut buf = Vec::new();
    s.encode(&mut buf);
    SignalFrame {
        route: 1,
        seq,
        now_us: 1_000 + seq,
        kind: s.kind() as u8,
        flags,
        client: client(),
        key: session_key(imsi),
        payload: Bytes::from(buf),
    }
}

fn attach(seq: u64, imsi: u64, flags: u8) -> SignalFrame {
    frame(seq, imsi, handoff_testkit::attach_body(), flags)
}

fn echo(seq: u64, imsi: u64, flags: u8) -> SignalFrame {
    frame(seq, imsi, SignalBody::Echo { nonce: seq }, flags)
}

#[test]
fn an_authoritative_signal_is_answered_to_the_target_it_came_with() {
    let mut c = core();
    let (binding, last) = c.bind();
    assert_eq!(last, 0);
    let mut out = Vec::new();
    c.signals(Some(binding), &[attach(1, 1, 0)], &7, &mut out);
    assert!(!out.is_empty(), "an attach is answered");
    assert!(out
        .iter()
        .all(|e| e.to == 7 && e.seq == 1 && e.client == client()));
    assert_eq!(c.stats().outputs, out.len() as u64);
    assert_eq!(c.stats().runtime.last_seq, 1);
}

#[test]
fn a_newer_binding_fences_off_the_older_one() {
    let mut c = core();
    let (old, _) = c.bind();
    let mut out = Vec::new();
    c.signals(Some(old), &[attach(1, 1, 0)], &1, &mut out);
    let (new, last) = c.bind();
    assert_eq!(last, 1, "the new steer resumes above what was applied");
    out.clear();
    c.signals(Some(old), &[echo(2, 1, 0)], &1, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.stats().fenced, 1);
    assert_eq!(c.stats().runtime.last_seq, 1);
    c.signals(Some(new), &[echo(2, 1, 0)], &2, &mut out);
    assert_eq!(c.stats().runtime.last_seq, 2);
    out.clear();
    c.signals(None, &[echo(3, 1, 0)], &3, &mut out);
    assert!(!out.is_empty(), "the direct path is never fenced");
}

#[test]
fn a_shadow_signal_is_applied_but_never_answered() {
    let mut c = core();
    let mut out = Vec::new();
    c.signals(None, &[attach(1, 1, SIGNAL_SHADOW)], &1, &mut out);
    assert!(out.is_empty());
    assert!(c.stats().shadow_suppressed > 0);
    assert_eq!(
        c.hosted().table().len(),
        1,
        "the shadow copy holds the session"
    );
}

#[test]
fn a_hand_over_marker_freezes_the_session_and_answers_nothing() {
    let mut c = core();
    let mut out = Vec::new();
    c.signals(None, &[attach(1, 1, 0)], &1, &mut out);
    out.clear();
    let mut marker = attach(2, 1, SIGNAL_HANDOVER);
    marker.payload = Bytes::new();
    c.signals(None, &[marker], &1, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.stats().handovers, 1);
}

#[test]
fn a_buffered_signal_is_answered_once_when_its_record_arrives() {
    // The source: one attached UE, whose record the destination copies.
    let mut src = core();
    let mut out = Vec::new();
    src.signals(None, &[attach(1, 1, 0)], &1, &mut out);
    let rec = src.hosted().table().get(&session_key(1)).expect("record");
    // The destination: a shadow that awaits UE 1.
    let mut dst = core();
    dst.prepare_shadow().unwrap();
    let taken = dst
        .take_manifest([session_key(1)].into_iter().collect(), &mut out)
        .unwrap();
    out.clear();
    // A shadow copy of seq 2 and an authoritative one of seq 3 (as after a re-attach routed
    // here): both wait for the record.
    dst.signals(None, &[echo(2, 1, SIGNAL_SHADOW)], &4, &mut out);
    dst.signals(None, &[attach(3, 1, 0)], &5, &mut out);
    assert!(out.is_empty(), "buffered signals answer nothing yet");
    dst.records(
        vec![(session_key(1), rec.seq, Some(rec.bytes.clone()))],
        taken.epoch + 1,
        &mut out,
    );
    assert!(out.is_empty(), "records of another copy epoch are dropped");
    assert_eq!(dst.stats().stale_copy_records, 1);
    dst.records(
        vec![(session_key(1), rec.seq, Some(rec.bytes))],
        taken.epoch,
        &mut out,
    );
    assert!(
        !out.is_empty(),
        "the authoritative signal is answered when replayed"
    );
    assert!(out.iter().all(|e| e.seq == 3 && e.to == 5));
    let answered = out.len();
    out.clear();
    dst.finish_shadow(false, &mut out).unwrap();
    assert!(out.is_empty(), "answered once");
    assert_eq!(dst.stats().outputs, answered as u64);
}

/// A finish asked too early (the shadow still awaits a record) is refused and forgets no
/// answer owed: the buffered signal is answered once its record arrives.
#[test]
fn a_refused_finish_keeps_the_answers_owed() {
    let mut src = core();
    let mut out = Vec::new();
    src.signals(None, &[attach(1, 1, 0)], &1, &mut out);
    let rec = src.hosted().table().get(&session_key(1)).expect("record");
    let mut dst = core();
    dst.prepare_shadow().unwrap();
    let taken = dst
        .take_manifest([session_key(1)].into_iter().collect(), &mut out)
        .unwrap();
    out.clear();
    dst.signals(None, &[attach(3, 1, 0)], &5, &mut out);
    assert!(dst.finish_shadow(false, &mut out).is_err(), "not settled");
    dst.records(
        vec![(session_key(1), rec.seq, Some(rec.bytes))],
        taken.epoch,
        &mut out,
    );
    assert!(!out.is_empty(), "the buffered signal is still answered");
    assert!(out.iter().all(|e| e.seq == 3 && e.to == 5));
}
