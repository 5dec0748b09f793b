//! Unit tests of the vMME's procedures.

use super::*;

const IMSI: u64 = 1_001_010_000_000_042;
const IMSI_OK: u64 = 1_010_000_000_042;
const TAI: Tai = Tai {
    mcc_mnc: 1_001,
    tac: 100,
};

struct Harness {
    vmme: Vmme,
    session: Option<UeContext>,
    txn: u32,
    now: u64,
    seq: u64,
}

impl Harness {
    fn new() -> Self {
        Self {
            vmme: Vmme::default(),
            session: None,
            txn: 0,
            now: 1_000_000,
            seq: 0,
        }
    }

    /// Sends a signal with a fresh txn id through encode → classify → prepare → process.
    fn send(&mut self, body: SignalBody) -> Response {
        self.txn += 1;
        self.send_txn(self.txn, body)
    }

    fn send_txn(&mut self, txn_id: u32, body: SignalBody) -> Response {
        let out = self.send_raw(txn_id, body);
        assert_eq!(out.len(), 1);
        let resp = Response::decode(&out[0].bytes).expect("response decodes");
        assert_eq!(resp.msg_type(), out[0].msg_type);
        assert_eq!(resp.header.txn_id, txn_id);
        assert_eq!(resp.header.imsi, IMSI_OK);
        resp
    }

    fn send_raw(&mut self, txn_id: u32, body: SignalBody) -> Vec<Output> {
        let sig = Signal {
            header: Header {
                imsi: IMSI_OK,
                txn_id,
            },
            body,
        };
        let bytes = sig.to_bytes();
        let c = self.vmme.classify(&bytes).expect("classifies");
        assert_eq!(c.kind, sig.kind());
        let prepared = self.vmme.prepare(&bytes).expect("prepares");
        assert_eq!(prepared, sig);
        self.seq += 1;
        self.now += 1_000;
        let mut out = Vec::new();
        self.vmme.process(
            &mut self.session,
            &prepared,
            Stamp {
                seq: self.seq,
                now_us: self.now,
            },
            &mut out,
        );
        out
    }

    fn ctx(&self) -> &UeContext {
        self.session.as_ref().expect("context exists")
    }

    fn encoded(&self) -> Vec<u8> {
        self.ctx().to_bytes()
    }

    fn attach_request() -> SignalBody {
        SignalBody::AttachRequest {
            msisdn: 33_612_345_678,
            imeisv: 3_534_900_698_733_190,
            ue_network_capability: 0xE0E0_0606, // EIA1+EIA2, EEA1+EEA2
            ms_network_capability: 0x1234_5678,
            drx: 0x0A00,
            tai: TAI,
            ecgi: 0x00F1_1000_0001,
            apn: "ims.example".to_owned(),
            pdn_type: PdnType::Ipv4v6,
        }
    }

    /// Runs the whole attach; returns the Attach Accept body.
    fn attach(&mut self) -> ResponseBody {
        let r = self.send(Self::attach_request());
        let ResponseBody::AuthenticationRequest { rand, .. } = r.body else {
            panic!("expected AuthenticationRequest, got {r:?}");
        };
        let res = usim_res(IMSI_OK, &rand);
        let r = self.send(SignalBody::AuthenticationResponse { res });
        assert_eq!(
            r.body,
            ResponseBody::SecurityModeCommand {
                integrity_alg: 2,
                ciphering_alg: 2
            }
        );
        let accept = self.send(SignalBody::SecurityModeComplete).body;
        let r = self.send(SignalBody::AttachComplete);
        assert_eq!(
            r.body,
            ResponseBody::EmmInformation {
                network_name: "handoff".to_owned()
            }
        );
        accept
    }
}

#[test]
fn full_attach_then_procedures_then_detach() {
    let mut h = Harness::new();
    let accept = h.attach();
    let ResponseBody::AttachAccept {
        guti,
        tai_list,
        t3412_s,
        ue_ip,
        ebi,
    } = accept
    else {
        panic!("expected AttachAccept, got {accept:?}");
    };
    assert_eq!(guti.mcc_mnc, 1_001);
    assert_eq!(guti.mme_group_id, 0x8001);
    assert_eq!(
        tai_list,
        vec![TAI, Tai { tac: 101, ..TAI }, Tai { tac: 99, ..TAI }]
    );
    assert_eq!(t3412_s, T3412_S);
    assert_eq!(ue_ip >> 22, 0x0A40_0000 >> 22);
    assert_eq!(ebi, 5);
    let ctx = h.ctx();
    assert_eq!(ctx.mm_state, MmState::Registered);
    assert_eq!(ctx.ecm_state, EcmState::Connected);
    assert_eq!(ctx.guti, Some(guti));
    assert_ne!(ctx.kasme, [0; 32]);
    assert_eq!(ctx.nas_ul_count, 4);
    assert_eq!(ctx.nas_dl_count, 4);
    assert_eq!(ctx.pdns.len(), 1);
    assert_eq!(ctx.pdns[0].apn, "ims.example");
    assert_eq!(ctx.pdns[0].ue_ip, ue_ip);
    assert_eq!(ctx.pdns[0].bearers.len(), 1);
    assert_eq!(
        (ctx.pdns[0].bearers[0].qci, ctx.pdns[0].bearers[0].arp),
        (9, 8)
    );
    assert_eq!(ctx.last_activity_us, h.now);

    // TAU into a TAI inside the list keeps it; outside makes a new one.
    let r = h.send(SignalBody::TrackingAreaUpdateRequest {
        tai: Tai { tac: 101, ..TAI },
        ecgi: 7,
        active_flag: false,
    });
    assert_eq!(
        r.body,
        ResponseBody::TauAccept {
            guti,
            tai_list: tai_list.clone()
        }
    );
    let far = Tai {
        mcc_mnc: 1_001,
        tac: 500,
    };
    let r = h.send(SignalBody::TrackingAreaUpdateRequest {
        tai: far,
        ecgi: 8,
        active_flag: true,
    });
    assert_eq!(
        r.body,
        ResponseBody::TauAccept {
            guti,
            tai_list: tai_list_for(far)
        }
    );
    assert_eq!(h.ctx().last_visited_tai, far);
    assert_eq!(h.ctx().ecgi, 8);

    // Release to idle, then a service request.
    let r = h.send(SignalBody::UeContextRelease { cause: 20 });
    assert_eq!(r.body, ResponseBody::ReleaseComplete);
    assert_eq!(h.ctx().ecm_state, EcmState::Idle);
    assert_eq!(h.ctx().last_release_cause, 20);
    let r = h.send(SignalBody::ServiceRequest {
        ecgi: 9,
        enb_s1u_teid: 0xABCD,
    });
    assert_eq!(r.body, ResponseBody::ServiceAccept { ebis: vec![5] });
    assert_eq!(h.ctx().ecm_state, EcmState::Connected);
    assert_eq!(h.ctx().pdns[0].bearers[0].enb_s1u_teid, 0xABCD);

    // Bearer modification: add, modify, unknown, full.
    let add = |ebi, qci| SignalBody::BearerResourceModification {
        ebi,
        qci,
        arp: 2,
        add: true,
    };
    let r = h.send(add(5, 1));
    assert_eq!(r.body, ResponseBody::BearerModifyAccept { ebi: 6, qci: 1 });
    assert_eq!(h.ctx().pdns[0].bearers[1].gbr_ul, 64_000);
    let r = h.send(SignalBody::BearerResourceModification {
        ebi: 6,
        qci: 7,
        arp: 3,
        add: false,
    });
    assert_eq!(r.body, ResponseBody::BearerModifyAccept { ebi: 6, qci: 7 });
    assert_eq!(
        (
            h.ctx().pdns[0].bearers[1].qci,
            h.ctx().pdns[0].bearers[1].arp
        ),
        (7, 3)
    );
    let r = h.send(SignalBody::BearerResourceModification {
        ebi: 9,
        qci: 7,
        arp: 3,
        add: false,
    });
    assert_eq!(r.body, ResponseBody::BearerModifyReject { cause: 43 });
    let r = h.send(add(12, 5));
    assert_eq!(r.body, ResponseBody::BearerModifyReject { cause: 43 });
    for expect in 7..=15 {
        let r = h.send(add(5, 8));
        assert_eq!(
            r.body,
            ResponseBody::BearerModifyAccept {
                ebi: expect,
                qci: 8
            }
        );
    }
    let r = h.send(add(5, 8));
    assert_eq!(r.body, ResponseBody::BearerModifyReject { cause: 65 });
    let r = h.send(SignalBody::ServiceRequest {
        ecgi: 9,
        enb_s1u_teid: 100,
    });
    assert_eq!(
        r.body,
        ResponseBody::ServiceAccept {
            ebis: (5..=15).collect()
        }
    );
    assert_eq!(h.ctx().pdns[0].bearers[10].enb_s1u_teid, 110);

    // Detach deletes; a second detach is idempotent.
    let r = h.send(SignalBody::DetachRequest { switch_off: false });
    assert_eq!(r.body, ResponseBody::DetachAccept);
    assert!(h.session.is_none());
    let r = h.send(SignalBody::DetachRequest { switch_off: true });
    assert_eq!(r.body, ResponseBody::DetachAccept);
    assert!(h.session.is_none());
}

#[test]
fn retransmission_returns_cached_bytes_and_changes_nothing() {
    let mut h = Harness::new();
    let first = h.send_raw(7, Harness::attach_request());
    let before = h.encoded();
    let again = h.send_raw(7, Harness::attach_request());
    assert_eq!(first, again);
    assert_eq!(h.encoded(), before, "retransmission changed the context");

    let Ok(Response {
        body: ResponseBody::AuthenticationRequest { rand, .. },
        ..
    }) = Response::decode(&first[0].bytes)
    else {
        panic!("expected AuthenticationRequest");
    };
    let res = usim_res(IMSI_OK, &rand);
    let first = h.send_raw(8, SignalBody::AuthenticationResponse { res });
    let before = h.encoded();
    // Even a retransmission carrying a different RES is answered from the cache.
    let again = h.send_raw(8, SignalBody::AuthenticationResponse { res: [0; 8] });
    assert_eq!(first, again);
    assert_eq!(h.encoded(), before);
    assert_eq!(first[0].msg_type, msg::SECURITY_MODE_COMMAND);

    // Same txn id but another type is not a retransmission.
    let other = h.send_raw(8, SignalBody::SecurityModeComplete);
    assert_eq!(other[0].msg_type, msg::ATTACH_ACCEPT);
    assert_ne!(h.encoded(), before);
}

#[test]
fn wrong_res_rejects_and_deletes() {
    let mut h = Harness::new();
    let r = h.send(Harness::attach_request());
    assert_eq!(r.msg_type(), msg::AUTHENTICATION_REQUEST);
    let r = h.send_txn(50, SignalBody::AuthenticationResponse { res: [1; 8] });
    assert_eq!(r.body, ResponseBody::AuthenticationReject);
    assert!(h.session.is_none());
    // With the context gone, the retransmission is answered as for an unknown UE.
    let r = h.send_txn(50, SignalBody::AuthenticationResponse { res: [1; 8] });
    assert_eq!(r.body, ResponseBody::AttachReject { cause: 10 });
    assert!(h.session.is_none());
}

#[test]
fn updates_without_context_reject_and_create_nothing() {
    let mut h = Harness::new();
    let cases = [
        (
            SignalBody::AuthenticationResponse { res: [0; 8] },
            ResponseBody::AttachReject { cause: 10 },
        ),
        (
            SignalBody::SecurityModeComplete,
            ResponseBody::AttachReject { cause: 10 },
        ),
        (
            SignalBody::AttachComplete,
            ResponseBody::AttachReject { cause: 10 },
        ),
        (
            SignalBody::TrackingAreaUpdateRequest {
                tai: TAI,
                ecgi: 1,
                active_flag: true,
            },
            ResponseBody::TauReject { cause: 10 },
        ),
        (
            SignalBody::ServiceRequest {
                ecgi: 1,
                enb_s1u_teid: 1,
            },
            ResponseBody::ServiceReject { cause: 10 },
        ),
        (
            SignalBody::BearerResourceModification {
                ebi: 5,
                qci: 9,
                arp: 1,
                add: true,
            },
            ResponseBody::BearerModifyReject { cause: 10 },
        ),
        (
            SignalBody::UeContextRelease { cause: 1 },
            ResponseBody::ReleaseComplete,
        ),
    ];
    for (signal, expected) in cases {
        let r = h.send(signal);
        assert_eq!(r.body, expected);
        assert!(h.session.is_none());
    }
}

#[test]
fn wrong_state_rejects_and_keeps_context() {
    let mut h = Harness::new();
    h.send(Harness::attach_request());
    let r = h.send_txn(
        99,
        SignalBody::TrackingAreaUpdateRequest {
            tai: TAI,
            ecgi: 1,
            active_flag: true,
        },
    );
    assert_eq!(r.body, ResponseBody::TauReject { cause: 98 });
    let r2 = h.send(SignalBody::AttachComplete);
    assert_eq!(r2.body, ResponseBody::AttachReject { cause: 98 });
    let ctx = h.ctx();
    assert_eq!(ctx.mm_state, MmState::AuthPending);
    assert_eq!(ctx.last_txn_id, 2);
    assert_eq!(ctx.last_signal_type, msg::ATTACH_COMPLETE);
    assert_eq!(ctx.nas_ul_count, 3);
    assert_eq!(Response::decode(&ctx.last_response), Ok(r2));
}

#[test]
fn attach_without_integrity_algorithm_is_rejected() {
    let mut h = Harness::new();
    let mut sig = Harness::attach_request();
    if let SignalBody::AttachRequest {
        ue_network_capability,
        ..
    } = &mut sig
    {
        *ue_network_capability = 0x0000_FF01; // only EIA0
    }
    let r = h.send(sig);
    assert_eq!(r.body, ResponseBody::AttachReject { cause: 23 });
    assert!(h.session.is_none());
}

#[test]
fn reattach_replaces_context_and_bumps_eksi() {
    let mut h = Harness::new();
    h.attach();
    assert_eq!(h.ctx().eksi, 0);
    let old_guti = h.ctx().guti;
    let r = h.send(Harness::attach_request());
    assert_eq!(r.msg_type(), msg::AUTHENTICATION_REQUEST);
    let ctx = h.ctx();
    assert_eq!(ctx.eksi, 1);
    assert_eq!(ctx.mm_state, MmState::AuthPending);
    assert!(ctx.pdns.is_empty());
    assert_eq!(ctx.guti, None);
    assert_eq!(ctx.nas_ul_count, 1);
    h.send(Harness::attach_request());
    let accept = {
        let ResponseBody::AuthenticationRequest { rand, .. } =
            Response::decode(&h.ctx().last_response)
                .expect("cached")
                .body
        else {
            panic!("expected a challenge")
        };
        h.send(SignalBody::AuthenticationResponse {
            res: usim_res(IMSI_OK, &rand),
        });
        h.send(SignalBody::SecurityModeComplete)
    };
    assert_eq!(accept.msg_type(), msg::ATTACH_ACCEPT);
    assert_ne!(h.ctx().guti, old_guti, "a new GUTI per attach transaction");
}

#[test]
fn implicit_detach_timer() {
    let mut h = Harness::new();
    h.attach();
    let last = h.ctx().last_activity_us;
    let deadline = h.vmme.deadline_us(h.ctx()).expect("has a deadline");
    assert_eq!(deadline, last + DEFAULT_IMPLICIT_DETACH_US);
    let mut out = Vec::new();
    let early = Stamp {
        seq: 1000,
        now_us: deadline - 1,
    };
    h.vmme.on_timer(&mut h.session, early, &mut out);
    assert!(h.session.is_some(), "timer fired before its deadline");
    let due = Stamp {
        seq: 1001,
        now_us: deadline,
    };
    h.vmme.on_timer(&mut h.session, due, &mut out);
    assert!(h.session.is_none());
    assert!(out.is_empty());

    // Saturates instead of overflowing.
    let vmme = Vmme::new(VmmeConfig {
        implicit_detach_us: u64::MAX,
        ..VmmeConfig::default()
    });
    let mut h2 = Harness::new();
    h2.send(Harness::attach_request());
    assert_eq!(vmme.deadline_us(h2.ctx()), Some(u64::MAX));
}

#[test]
fn encoded_size_is_realistic_and_grows_with_bearers() {
    let mut h = Harness::new();
    h.attach();
    let base = h.encoded().len();
    eprintln!("attached UE: {base} bytes");
    assert!((500..=2048).contains(&base), "attached UE is {base} bytes");
    let mut last = base;
    for _ in 0..10 {
        h.send(SignalBody::BearerResourceModification {
            ebi: 5,
            qci: 1,
            arp: 1,
            add: true,
        });
        let n = h.encoded().len();
        assert!(n > last, "{n} <= {last}");
        last = n;
    }
    eprintln!("UE with 11 bearers: {last} bytes");
    assert!(last <= 2048, "fully loaded UE is {last} bytes");
    assert_eq!(UeContext::decode(&h.encoded()).as_ref(), Ok(h.ctx()));
}

#[test]
fn classification() {
    let vmme = Vmme::default();
    let sig = |body| {
        Signal {
            header: Header {
                imsi: IMSI_OK,
                txn_id: 1,
            },
            body,
        }
        .to_bytes()
    };
    let c = vmme.classify(&sig(Harness::attach_request())).expect("ok");
    assert_eq!(c.kind, SignalKind::Create);
    assert_eq!(c.key, session_key(IMSI_OK));
    assert_eq!(c.key.as_ref(), &IMSI_OK.to_be_bytes());
    let c = vmme
        .classify(&sig(SignalBody::DetachRequest { switch_off: true }))
        .expect("ok");
    assert_eq!(c.kind, SignalKind::Delete);
    let c = vmme.classify(&sig(SignalBody::AttachComplete)).expect("ok");
    assert_eq!(c.kind, SignalKind::Update);
    let c = vmme
        .classify(&sig(SignalBody::Echo { nonce: 3 }))
        .expect("ok");
    assert_eq!(c.kind, SignalKind::Stateless);
    assert!(c.key.is_empty());

    let resp = Response {
        header: Header {
            imsi: IMSI_OK,
            txn_id: 1,
        },
        body: ResponseBody::DetachAccept,
    }
    .to_bytes();
    assert_eq!(
        vmme.classify(&resp),
        Err(MalformedSignal::UnknownType(msg::DETACH_ACCEPT))
    );
    let mut bad = sig(SignalBody::AttachComplete);
    bad.push(0);
    assert_eq!(vmme.classify(&bad), Err(MalformedSignal::Trailing(1)));
    let bad = sig(Harness::attach_request());
    assert!(matches!(
        vmme.classify(&bad[..bad.len() - 1]),
        Err(MalformedSignal::Truncated { .. })
    ));
    let mut bad = sig(SignalBody::AttachComplete);
    bad[0] = 2;
    assert_eq!(vmme.classify(&bad), Err(MalformedSignal::Version(2)));
    let bad = Signal {
        header: Header {
            imsi: IMSI,
            txn_id: 1,
        },
        body: SignalBody::AttachComplete,
    }
    .to_bytes();
    assert_eq!(
        vmme.classify(&bad),
        Err(MalformedSignal::InvalidField { field: "imsi" })
    );
    let mut bad = sig(SignalBody::AttachComplete);
    bad[1..3].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(vmme.classify(&bad), Err(MalformedSignal::UnknownType(0)));
}

#[test]
fn echo_is_stateless() {
    let mut h = Harness::new();
    let out = h.send_raw(3, SignalBody::Echo { nonce: 77 });
    assert_eq!(out[0].msg_type, msg::ECHO_RESPONSE);
    assert_eq!(
        Response::decode(&out[0].bytes).map(|r| r.body),
        Ok(ResponseBody::EchoResponse { nonce: 77 })
    );
    assert!(h.session.is_none());
}

#[test]
fn ruleset_and_names() {
    let vmme = Vmme::default();
    assert_eq!(vmme.name(), "vmme");
    let rs = vmme.default_ruleset();
    assert_eq!(rs.default_class, OutputClass::Gated);
    for t in [
        msg::ECHO_RESPONSE,
        msg::AUTHENTICATION_REQUEST,
        msg::AUTHENTICATION_REJECT,
        msg::ATTACH_REJECT,
        msg::TAU_REJECT,
        msg::SERVICE_REJECT,
        msg::BEARER_MODIFY_REJECT,
    ] {
        assert_eq!(rs.classify(t), OutputClass::Immediate, "{}", msg::name(t));
    }
    for t in [
        msg::ATTACH_ACCEPT,
        msg::SECURITY_MODE_COMMAND,
        msg::TAU_ACCEPT,
        msg::SERVICE_ACCEPT,
        msg::RELEASE_COMPLETE,
        msg::BEARER_MODIFY_ACCEPT,
        msg::DETACH_ACCEPT,
        msg::EMM_INFORMATION,
    ] {
        assert_eq!(rs.classify(t), OutputClass::Gated, "{}", msg::name(t));
        assert!(rs.rules.contains_key(&t));
    }
    assert_eq!(vmme.msg_type_name(msg::ATTACH_ACCEPT), "AttachAccept");
    assert_eq!(vmme.msg_type_name(0), "Unknown");
}

#[test]
fn long_network_name_is_clamped_to_a_decodable_response() {
    let vmme = Vmme::new(VmmeConfig {
        network_name: "é".repeat(80),
        ..VmmeConfig::default()
    });
    assert!(vmme.config().network_name.len() <= MAX_NAME_LEN);
    let resp = Response {
        header: Header { imsi: 1, txn_id: 1 },
        body: ResponseBody::EmmInformation {
            network_name: vmme.config().network_name.clone(),
        },
    };
    assert_eq!(Response::decode(&resp.to_bytes()), Ok(resp));
}
