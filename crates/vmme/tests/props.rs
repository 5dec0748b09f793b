//! Property tests of the vMME: decoders never panic, encodings round-trip, and processing is
//! deterministic (two independent instances fed the same signals end byte-identical).

use handoff_function::{Function, Output, SignalKind, Stamp};
use handoff_vmme::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn arb_tai() -> impl Strategy<Value = Tai> {
    (0..=MAX_MCC_MNC, any::<u16>()).prop_map(|(mcc_mnc, tac)| Tai { mcc_mnc, tac })
}

fn arb_guti() -> impl Strategy<Value = Guti> {
    (0..=MAX_MCC_MNC, any::<u16>(), any::<u8>(), any::<u32>()).prop_map(
        |(mcc_mnc, mme_group_id, mme_code, m_tmsi)| Guti {
            mcc_mnc,
            mme_group_id,
            mme_code,
            m_tmsi,
        },
    )
}

fn arb_pdn_type() -> impl Strategy<Value = PdnType> {
    prop_oneof![
        Just(PdnType::Ipv4),
        Just(PdnType::Ipv6),
        Just(PdnType::Ipv4v6)
    ]
}

fn arb_apn() -> impl Strategy<Value = String> {
    "[!-~]{0,100}"
}

fn arb_header() -> impl Strategy<Value = Header> {
    (0..=MAX_IMSI, any::<u32>()).prop_map(|(imsi, txn_id)| Header { imsi, txn_id })
}

fn arb_ecgi() -> impl Strategy<Value = u64> {
    0..ECGI_LIMIT
}

fn arb_signal_body() -> impl Strategy<Value = SignalBody> {
    prop_oneof![
        (
            (0..=MAX_MSISDN, 0..=MAX_IMEISV, any::<u32>(), any::<u32>()),
            (
                any::<u16>(),
                arb_tai(),
                arb_ecgi(),
                arb_apn(),
                arb_pdn_type()
            )
        )
            .prop_map(
                |(
                    (msisdn, imeisv, ue_network_capability, ms_network_capability),
                    (drx, tai, ecgi, apn, pdn_type),
                )| SignalBody::AttachRequest {
                    msisdn,
                    imeisv,
                    ue_network_capability,
                    ms_network_capability,
                    drx,
                    tai,
                    ecgi,
                    apn,
                    pdn_type,
                }
            ),
        any::<[u8; 8]>().prop_map(|res| SignalBody::AuthenticationResponse { res }),
        Just(SignalBody::SecurityModeComplete),
        Just(SignalBody::AttachComplete),
        (arb_tai(), arb_ecgi(), any::<bool>()).prop_map(|(tai, ecgi, active_flag)| {
            SignalBody::TrackingAreaUpdateRequest {
                tai,
                ecgi,
                active_flag,
            }
        }),
        (arb_ecgi(), any::<u32>())
            .prop_map(|(ecgi, enb_s1u_teid)| SignalBody::ServiceRequest { ecgi, enb_s1u_teid }),
        any::<u8>().prop_map(|cause| SignalBody::UeContextRelease { cause }),
        (MIN_EBI..=MAX_EBI, 1u8..=9, 1u8..=15, any::<bool>()).prop_map(|(ebi, qci, arp, add)| {
            SignalBody::BearerResourceModification { ebi, qci, arp, add }
        }),
        any::<bool>().prop_map(|switch_off| SignalBody::DetachRequest { switch_off }),
        any::<u64>().prop_map(|nonce| SignalBody::Echo { nonce }),
    ]
}

fn arb_signal() -> impl Strategy<Value = Signal> {
    (arb_header(), arb_signal_body()).prop_map(|(header, body)| Signal { header, body })
}

fn arb_response_body() -> impl Strategy<Value = ResponseBody> {
    let cause = any::<u8>();
    prop_oneof![
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(rand, autn)| ResponseBody::AuthenticationRequest { rand, autn }),
        Just(ResponseBody::AuthenticationReject),
        (0u8..=7, 0u8..=7).prop_map(|(integrity_alg, ciphering_alg)| {
            ResponseBody::SecurityModeCommand {
                integrity_alg,
                ciphering_alg,
            }
        }),
        (
            arb_guti(),
            vec(arb_tai(), 0..=MAX_TAI_LIST),
            any::<u32>(),
            any::<u32>(),
            MIN_EBI..=MAX_EBI
        )
            .prop_map(|(guti, tai_list, t3412_s, ue_ip, ebi)| {
                ResponseBody::AttachAccept {
                    guti,
                    tai_list,
                    t3412_s,
                    ue_ip,
                    ebi,
                }
            }),
        cause.prop_map(|cause| ResponseBody::AttachReject { cause }),
        "\\PC{0,25}".prop_map(|network_name| ResponseBody::EmmInformation { network_name }),
        (arb_guti(), vec(arb_tai(), 0..=MAX_TAI_LIST))
            .prop_map(|(guti, tai_list)| ResponseBody::TauAccept { guti, tai_list }),
        cause.prop_map(|cause| ResponseBody::TauReject { cause }),
        vec(MIN_EBI..=MAX_EBI, 0..=MAX_EBI_LIST)
            .prop_map(|ebis| ResponseBody::ServiceAccept { ebis }),
        cause.prop_map(|cause| ResponseBody::ServiceReject { cause }),
        Just(ResponseBody::ReleaseComplete),
        (MIN_EBI..=MAX_EBI, 1u8..=9)
            .prop_map(|(ebi, qci)| ResponseBody::BearerModifyAccept { ebi, qci }),
        cause.prop_map(|cause| ResponseBody::BearerModifyReject { cause }),
        Just(ResponseBody::DetachAccept),
        any::<u64>().prop_map(|nonce| ResponseBody::EchoResponse { nonce }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    (arb_header(), arb_response_body()).prop_map(|(header, body)| Response { header, body })
}

fn arb_bearer() -> impl Strategy<Value = EpsBearer> {
    (any::<[u8; 4]>(), any::<[u32; 6]>(), any::<[u64; 4]>()).prop_map(|(b, w, q)| EpsBearer {
        ebi: b[0],
        ti: b[1],
        qci: b[2],
        arp: b[3],
        sgw_s1u_address: w[0],
        sgw_s1u_teid: w[1],
        enb_s1u_teid: w[2],
        pgw_s5u_address: w[3],
        pgw_s5u_teid: w[4],
        charging_id: w[5],
        gbr_ul: q[0],
        gbr_dl: q[1],
        mbr_ul: q[2],
        mbr_dl: q[3],
    })
}

fn arb_pdn() -> impl Strategy<Value = PdnConnection> {
    (
        arb_apn(),
        arb_pdn_type(),
        any::<[u32; 4]>(),
        any::<[u64; 3]>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        vec(arb_bearer(), 0..=4),
    )
        .prop_map(|(apn, pdn_type, w, q, cc, b, bearers)| PdnConnection {
            apn,
            pdn_type,
            ue_ip: w[0],
            ue_ipv6_iid: q[0],
            sgw_s11_teid: w[1],
            pgw_address: w[2],
            pgw_s5c_teid: w[3],
            apn_ambr_ul: q[1],
            apn_ambr_dl: q[2],
            charging_characteristics: cc,
            subscribed_qci: b[0],
            subscribed_arp: b[1],
            apn_restriction: b[2],
            default_ebi: b[3],
            bearers,
        })
}

fn arb_mm_state() -> impl Strategy<Value = MmState> {
    prop_oneof![
        Just(MmState::AuthPending),
        Just(MmState::SecurityPending),
        Just(MmState::AttachAcceptSent),
        Just(MmState::Registered)
    ]
}

fn arb_context() -> impl Strategy<Value = UeContext> {
    (
        any::<[u64; 9]>(),
        any::<[u32; 15]>(),
        any::<[u16; 5]>(),
        any::<[u8; 6]>(),
        any::<([u8; 32], [u8; 32], [u8; 32], [u8; 32])>(),
        any::<([u8; 16], [u8; 16], [u8; 8])>(),
        (arb_mm_state(), any::<bool>()),
        option::of(arb_guti()),
        (vec(arb_tai(), 0..=MAX_TAI_LIST), arb_tai()),
        (arb_apn(), arb_pdn_type()),
        vec(arb_pdn(), 0..=3),
        vec(any::<u8>(), 0..=200),
    )
        .prop_map(
            |(q, w, s, b, keys, auth, (mm_state, idle), guti, (tai_list, tai), apn, pdns, resp)| {
                UeContext {
                    imsi: q[0],
                    msisdn: q[1],
                    imeisv: q[2],
                    mm_state,
                    ecm_state: if idle {
                        EcmState::Idle
                    } else {
                        EcmState::Connected
                    },
                    guti,
                    tai_list,
                    last_visited_tai: tai,
                    ecgi: q[3],
                    ue_network_capability: w[0],
                    ms_network_capability: w[1],
                    drx: s[0],
                    requested_apn: apn.0,
                    requested_pdn_type: apn.1,
                    eksi: b[0],
                    integrity_alg: b[1],
                    ciphering_alg: b[2],
                    kasme: keys.0,
                    k_nas_int: keys.1,
                    k_nas_enc: keys.2,
                    next_hop: keys.3,
                    ncc: b[3],
                    nas_ul_count: w[2],
                    nas_dl_count: w[3],
                    auth_rand: auth.0,
                    auth_autn: auth.1,
                    auth_xres: auth.2,
                    ue_ambr_ul: q[4],
                    ue_ambr_dl: q[5],
                    ue_ambr_used_ul: q[6],
                    ue_ambr_used_dl: q[7],
                    subscribed_charging_characteristics: s[1],
                    subscribed_periodic_tau_s: w[4],
                    rfsp_index: s[2],
                    rfsp_index_in_use: s[3],
                    ue_usage_type: b[4],
                    access_restriction: w[5],
                    odb_ps: w[6],
                    selected_plmn: w[7],
                    mme_ue_s1ap_id: w[8],
                    enb_ue_s1ap_id: w[9],
                    enb_id: w[10],
                    mme_s11_address: w[11],
                    mme_s11_teid: w[12],
                    sgw_s11_address: w[13],
                    last_release_cause: b[5],
                    last_activity_us: q[8],
                    pdns,
                    last_txn_id: w[14],
                    last_signal_type: s[4],
                    last_response: resp,
                }
            },
        )
}

/// A valid encoding with a few bytes overwritten and possibly truncated: reaches deeper into
/// the decoders than uniformly random bytes.
fn mutated(valid: Vec<u8>, edits: Vec<(usize, u8)>, cut: usize) -> Vec<u8> {
    let mut v = valid;
    for (i, b) in edits {
        if !v.is_empty() {
            let n = v.len();
            v[i % n] = b;
        }
    }
    v.truncate(v.len().saturating_sub(cut % 4));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..400)) {
        let vmme = Vmme::default();
        let _ = Signal::decode(&bytes);
        let _ = Response::decode(&bytes);
        let _ = peek_header(&bytes);
        let _ = vmme.classify(&bytes);
        let _ = vmme.prepare(&bytes);
        let _ = UeContext::decode(&bytes);
        let _ = vmme.decode_session(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_encodings(
        sig in arb_signal(),
        resp in arb_response(),
        ctx in arb_context(),
        edits in vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
    ) {
        let vmme = Vmme::default();
        let s = mutated(sig.to_bytes(), edits.clone(), cut);
        let _ = Signal::decode(&s);
        let _ = peek_header(&s);
        let _ = vmme.classify(&s);
        if let Ok(p) = vmme.prepare(&s) {
            // Whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(p.to_bytes(), s);
        }
        let r = mutated(resp.to_bytes(), edits.clone(), cut);
        if let Ok(d) = Response::decode(&r) {
            prop_assert_eq!(d.to_bytes(), r);
        }
        let c = mutated(ctx.to_bytes(), edits, cut);
        if let Ok(d) = UeContext::decode(&c) {
            prop_assert_eq!(d.to_bytes(), c);
        }
    }

    #[test]
    fn signal_round_trips(sig in arb_signal()) {
        let bytes = sig.to_bytes();
        prop_assert_eq!(Signal::decode(&bytes), Ok(sig.clone()));
        let (t, h) = peek_header(&bytes).expect("header");
        prop_assert_eq!(t, sig.msg_type());
        prop_assert_eq!(h, sig.header);
        let c = Vmme::default().classify(&bytes).expect("classifies");
        prop_assert_eq!(c.kind, sig.kind());
        if sig.kind() == SignalKind::Stateless {
            prop_assert!(c.key.is_empty());
        } else {
            prop_assert_eq!(c.key, session_key(sig.header.imsi));
        }
        // Responses are not signals, and vice versa.
        prop_assert_eq!(
            Response::decode(&bytes),
            Err(handoff_function::MalformedSignal::UnknownType(sig.msg_type()))
        );
    }

    #[test]
    fn response_round_trips(resp in arb_response()) {
        let bytes = resp.to_bytes();
        prop_assert_eq!(Response::decode(&bytes), Ok(resp.clone()));
        prop_assert_eq!(
            Vmme::default().classify(&bytes),
            Err(handoff_function::MalformedSignal::UnknownType(resp.msg_type()))
        );
    }

    #[test]
    fn context_round_trips(ctx in arb_context()) {
        let bytes = ctx.to_bytes();
        let back = UeContext::decode(&bytes).expect("decodes");
        prop_assert_eq!(&back, &ctx);
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(ctx.without_clock().last_activity_us, 0);
        prop_assert_eq!(
            UeContext { last_activity_us: 0, ..ctx.clone() },
            ctx.without_clock()
        );
    }
}

/// One step of a UE's life, as the determinism test drives it.
#[derive(Clone, Debug)]
enum Action {
    Attach {
        apn: u8,
        cap: u32,
        pdn_type: PdnType,
    },
    AuthOk,
    AuthBad,
    SecurityModeComplete,
    AttachComplete,
    Tau {
        tac: u16,
        active: bool,
    },
    Service {
        teid: u32,
    },
    Release,
    BearerAdd {
        qci: u8,
    },
    BearerModify {
        ebi: u8,
        qci: u8,
    },
    Detach,
    Echo {
        nonce: u64,
    },
    /// Resend the UE's previous signal with the same txn id.
    Retransmit,
    /// Inject a timer tick.
    Tick,
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => (0u8..3, prop_oneof![Just(0xFFFFu32), any::<u32>()], arb_pdn_type())
            .prop_map(|(apn, cap, pdn_type)| Action::Attach { apn, cap, pdn_type }),
        3 => Just(Action::AuthOk),
        1 => Just(Action::AuthBad),
        3 => Just(Action::SecurityModeComplete),
        3 => Just(Action::AttachComplete),
        2 => (0u16..8, any::<bool>()).prop_map(|(tac, active)| Action::Tau { tac, active }),
        2 => any::<u32>().prop_map(|teid| Action::Service { teid }),
        2 => Just(Action::Release),
        2 => (1u8..=9).prop_map(|qci| Action::BearerAdd { qci }),
        1 => (MIN_EBI..=MAX_EBI, 1u8..=9).prop_map(|(ebi, qci)| Action::BearerModify { ebi, qci }),
        1 => Just(Action::Detach),
        1 => any::<u64>().prop_map(|nonce| Action::Echo { nonce }),
        2 => Just(Action::Retransmit),
        1 => Just(Action::Tick),
    ]
}

/// An instance as the framework would hold it: a session table keyed by IMSI.
struct Instance {
    vmme: Vmme,
    sessions: BTreeMap<u64, UeContext>,
}

impl Instance {
    fn new() -> Self {
        Self {
            vmme: Vmme::new(VmmeConfig {
                implicit_detach_us: 30_000_000,
                ..VmmeConfig::default()
            }),
            sessions: BTreeMap::new(),
        }
    }

    fn signal(&mut self, bytes: &[u8], stamp: Stamp) -> Vec<Output> {
        let c = self.vmme.classify(bytes).expect("valid signal");
        let p = self.vmme.prepare(bytes).expect("valid signal");
        let mut out = Vec::new();
        if c.kind == SignalKind::Stateless {
            let mut none = None;
            self.vmme.process(&mut none, &p, stamp, &mut out);
            assert!(none.is_none());
        } else {
            let imsi = p.header.imsi;
            let mut s = self.sessions.remove(&imsi);
            self.vmme.process(&mut s, &p, stamp, &mut out);
            if let Some(ctx) = s {
                self.sessions.insert(imsi, ctx);
            }
        }
        out
    }

    fn tick(&mut self, stamp: Stamp) -> Vec<Output> {
        let mut out = Vec::new();
        let due: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, c)| self.vmme.deadline_us(c).is_some_and(|d| d <= stamp.now_us))
            .map(|(k, _)| *k)
            .collect();
        for imsi in due {
            let mut s = self.sessions.remove(&imsi);
            self.vmme.on_timer(&mut s, stamp, &mut out);
            if let Some(ctx) = s {
                self.sessions.insert(imsi, ctx);
            }
        }
        out
    }

    fn encoded(&self) -> BTreeMap<u64, Vec<u8>> {
        self.sessions
            .iter()
            .map(|(k, c)| (*k, c.to_bytes()))
            .collect()
    }
}

/// What the driver remembers per UE to build meaningful signals.
#[derive(Default)]
struct UeDriver {
    txn: u32,
    last: Option<Vec<u8>>,
    rand: Option<[u8; 16]>,
}

const IMSIS: [u64; 3] = [1_010_000_000_001, 1_010_000_000_002, 999_999_999_999_999];

/// Feeds the steps to two independent instances, checking after every step that they answer
/// identically and hold byte-identical records. Returns whether any UE reached Registered.
fn run_steps(steps: Vec<(usize, Action, u64)>) -> Result<bool, TestCaseError> {
    let mut a = Instance::new();
    let mut b = Instance::new();
    let mut drivers: BTreeMap<u64, UeDriver> = BTreeMap::new();
    let mut now = 1_700_000_000_000_000u64;
    let mut registered_seen = false;
    for (seq, (who, action, dt)) in (1u64..).zip(steps) {
        now += dt;
        let stamp = Stamp { seq, now_us: now };
        let imsi = IMSIS[who];
        let d = drivers.entry(imsi).or_default();
        if let Action::Tick = action {
            prop_assert_eq!(a.tick(stamp), b.tick(stamp));
            continue;
        }
        let bytes = if let Action::Retransmit = action {
            match &d.last {
                Some(l) => l.clone(),
                None => continue,
            }
        } else {
            let body = match action {
                Action::Attach { apn, cap, pdn_type } => SignalBody::AttachRequest {
                    msisdn: imsi % 1_000_000_000,
                    imeisv: 3_534_900_698_733_190,
                    ue_network_capability: cap,
                    ms_network_capability: 7,
                    drx: 0,
                    tai: Tai {
                        mcc_mnc: 1_001,
                        tac: 3,
                    },
                    ecgi: 0x1234,
                    apn: ["", "internet", "ims"][usize::from(apn)].to_owned(),
                    pdn_type,
                },
                Action::AuthOk => SignalBody::AuthenticationResponse {
                    res: d.rand.map_or([0; 8], |r| usim_res(imsi, &r)),
                },
                Action::AuthBad => SignalBody::AuthenticationResponse { res: [0xEE; 8] },
                Action::SecurityModeComplete => SignalBody::SecurityModeComplete,
                Action::AttachComplete => SignalBody::AttachComplete,
                Action::Tau { tac, active } => SignalBody::TrackingAreaUpdateRequest {
                    tai: Tai {
                        mcc_mnc: 1_001,
                        tac,
                    },
                    ecgi: u64::from(tac) << 8,
                    active_flag: active,
                },
                Action::Service { teid } => SignalBody::ServiceRequest {
                    ecgi: 0x1234,
                    enb_s1u_teid: teid,
                },
                Action::Release => SignalBody::UeContextRelease { cause: 20 },
                Action::BearerAdd { qci } => SignalBody::BearerResourceModification {
                    ebi: 5,
                    qci,
                    arp: 9,
                    add: true,
                },
                Action::BearerModify { ebi, qci } => SignalBody::BearerResourceModification {
                    ebi,
                    qci,
                    arp: 4,
                    add: false,
                },
                Action::Detach => SignalBody::DetachRequest { switch_off: false },
                Action::Echo { nonce } => SignalBody::Echo { nonce },
                Action::Retransmit | Action::Tick => unreachable!(),
            };
            d.txn = d.txn.wrapping_add(1);
            Signal {
                header: Header {
                    imsi,
                    txn_id: d.txn,
                },
                body,
            }
            .to_bytes()
        };
        d.last = Some(bytes.clone());
        let before = a.sessions.get(&imsi).map(UeContext::to_bytes);
        let out_a = a.signal(&bytes, stamp);
        let out_b = b.signal(&bytes, stamp);
        prop_assert_eq!(&out_a, &out_b);
        prop_assert_eq!(out_a.len(), 1);
        let resp = Response::decode(&out_a[0].bytes).expect("response decodes");
        prop_assert_eq!(resp.msg_type(), out_a[0].msg_type);
        if let ResponseBody::AuthenticationRequest { rand, .. } = resp.body {
            d.rand = Some(rand);
        }
        // A retransmission of the last signal changes nothing.
        if let (Action::Retransmit, Some(before)) = (&action, before) {
            let after = a.sessions.get(&imsi).map(UeContext::to_bytes);
            prop_assert_eq!(after, Some(before));
        }
        if let Some(ctx) = a.sessions.get(&imsi) {
            registered_seen |= ctx.mm_state == MmState::Registered;
            let enc = ctx.to_bytes();
            let dec = UeContext::decode(&enc).expect("own record decodes");
            prop_assert_eq!(&dec, ctx);
            prop_assert!(enc.len() <= 2048);
            prop_assert_eq!(dec.to_bytes(), enc);
        }
        prop_assert_eq!(a.encoded(), b.encoded());
    }
    prop_assert_eq!(a.encoded(), b.encoded());
    Ok(registered_seen)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn processing_is_deterministic(
        steps in vec((0usize..IMSIS.len(), arb_action(), 0u64..5_000_000), 1..120)
    ) {
        run_steps(steps)?;
    }
}

#[test]
fn scripted_run_reaches_every_procedure() {
    use Action::*;
    let attach = Attach {
        apn: 1,
        cap: 0xFFFF,
        pdn_type: PdnType::Ipv4,
    };
    let mut steps = Vec::new();
    for ue in 0..IMSIS.len() {
        for a in [
            attach.clone(),
            Retransmit,
            AuthOk,
            SecurityModeComplete,
            AttachComplete,
            Retransmit,
            Tau {
                tac: 7,
                active: false,
            },
            Release,
            Service { teid: 9 },
            BearerAdd { qci: 1 },
            BearerModify { ebi: 6, qci: 2 },
            Echo { nonce: 1 },
        ] {
            steps.push((ue, a, 1_000));
        }
    }
    steps.push((0, Detach, 1_000));
    steps.push((1, Tick, 40_000_000));
    steps.push((1, attach, 1_000));
    steps.push((1, AuthBad, 1_000));
    match run_steps(steps) {
        Ok(registered) => assert!(registered, "the script never reached Registered"),
        Err(e) => panic!("{e}"),
    }
}
