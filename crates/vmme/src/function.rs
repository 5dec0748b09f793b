//! The vMME as a [`Function`]: attach (AKA, security mode, default bearer), tracking area
//! update, service request, S1 release, bearer resource modification, detach, echo, and the
//! implicit-detach timer.
//!
//! Processing is deterministic: everything the MME allocates (RAND, AUTN, K_ASME and NAS keys,
//! GUTI M-TMSI, S1AP id, TEIDs, UE IP) is derived with blake3 from the session's own data (IMSI,
//! the signal's txn id, RAND) and a label; nothing reads a clock, a counter or an RNG. The only
//! time used is the steer's stamp, stored in [`UeContext::last_activity_us`].
//!
//! A transaction layer runs first: a signal whose txn id and type equal the last one processed
//! for the session is a retransmission and gets the cached response bytes, changing nothing.

use crate::codec::{
    clamp_str, msg, peek_header, session_key, usim_res, Guti, Header, PdnType, Response,
    ResponseBody, Signal, SignalBody, Tai, MAX_EBI, MAX_NAME_LEN, MIN_EBI,
};
use crate::context::{EcmState, EpsBearer, MmState, PdnConnection, UeContext};
use bytes::Bytes;
use handoff_function::{
    BadRecord, Classified, Function, MalformedSignal, MsgType, Output, OutputClass, Ruleset,
    SessionKey, SignalKind, Stamp,
};

/// Periodic TAU timer T3412 sent in Attach Accept: 54 minutes.
pub const T3412_S: u32 = 54 * 60;
/// Default implicit detach time: T3412 + 4 minutes, in microseconds.
pub const DEFAULT_IMPLICIT_DETACH_US: u64 = (54 + 4) * 60 * 1_000_000;
/// APN used when the Attach Request names none.
pub const DEFAULT_APN: &str = "internet";
/// EBI of the default bearer of the first PDN connection.
pub const DEFAULT_EBI: u8 = 5;

/// EMM and ESM cause values the vMME sends.
pub mod cause {
    /// EMM #10: implicitly detached (no context for an update).
    pub const IMPLICITLY_DETACHED: u8 = 10;
    /// EMM #23: UE security capabilities mismatch (no supported EIA1..3).
    pub const UE_SECURITY_CAPABILITIES_MISMATCH: u8 = 23;
    /// ESM #43: invalid EPS bearer identity.
    pub const INVALID_EBI: u8 = 43;
    /// ESM #65: maximum number of EPS bearers reached.
    pub const MAX_BEARERS_REACHED: u8 = 65;
    /// EMM #98: message type not compatible with the protocol state.
    pub const NOT_COMPATIBLE_WITH_STATE: u8 = 98;
}

/// Configuration of a vMME instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmeConfig {
    /// Time without any signal after which a UE is implicitly detached (µs).
    pub implicit_detach_us: u64,
    /// Network name sent in EMM Information (clamped to 100 bytes).
    pub network_name: String,
    /// PLMN of the GUTIs this MME allocates (`mcc * 1000 + mnc`, at most 999 999).
    pub mcc_mnc: u32,
    /// MME group id of the GUTIs.
    pub mme_group_id: u16,
    /// MME code of the GUTIs.
    pub mme_code: u8,
}

impl Default for VmmeConfig {
    fn default() -> Self {
        Self {
            implicit_detach_us: DEFAULT_IMPLICIT_DETACH_US,
            network_name: "handoff".to_owned(),
            mcc_mnc: 1_001,
            mme_group_id: 0x8001,
            mme_code: 1,
        }
    }
}

/// The vMME function.
#[derive(Clone, Debug, Default)]
pub struct Vmme {
    config: VmmeConfig,
}

impl Vmme {
    /// A vMME with this configuration (the network name is clamped to 100 bytes and the PLMN
    /// to 999 999 so every response encodes validly).
    pub fn new(mut config: VmmeConfig) -> Self {
        config.network_name = clamp_str(&config.network_name, MAX_NAME_LEN).to_owned();
        config.mcc_mnc = config.mcc_mnc.min(crate::codec::MAX_MCC_MNC);
        Self { config }
    }

    /// The configuration in use.
    pub fn config(&self) -> &VmmeConfig {
        &self.config
    }
}

/// Deterministic derivation: blake3 over a domain label, the IMSI and a salt.
fn derive(label: &str, imsi: u64, salt: &[u8], out: &mut [u8]) {
    let mut h = blake3::Hasher::new();
    h.update(b"handoff-vmme/");
    h.update(label.as_bytes());
    h.update(&[0]);
    h.update(&imsi.to_be_bytes());
    h.update(salt);
    h.finalize_xof().fill(out);
}

fn derive_arr<const N: usize>(label: &str, imsi: u64, salt: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    derive(label, imsi, salt, &mut a);
    a
}

fn derive_u32(label: &str, imsi: u64, salt: &[u8]) -> u32 {
    u32::from_be_bytes(derive_arr(label, imsi, salt))
}

fn derive_u64(label: &str, imsi: u64, salt: &[u8]) -> u64 {
    u64::from_be_bytes(derive_arr(label, imsi, salt))
}

/// A TEID that is never 0 (0 means "none").
fn derive_teid(label: &str, imsi: u64, salt: &[u8]) -> u32 {
    derive_u32(label, imsi, salt).max(1)
}

/// Picks (EIA, EEA) from the UE network capability: integrity prefers EIA2, EIA1, EIA3 (none →
/// `None`, the attach is rejected); ciphering prefers EEA2, EEA1, EEA3, else EEA0.
pub fn select_algorithms(ue_network_capability: u32) -> Option<(u8, u8)> {
    let eia = ue_network_capability & 0xFF;
    let eea = (ue_network_capability >> 8) & 0xFF;
    let integrity = [2u8, 1, 3].into_iter().find(|a| eia & (1 << a) != 0)?;
    let ciphering = [2u8, 1, 3]
        .into_iter()
        .find(|a| eea & (1 << a) != 0)
        .unwrap_or(0);
    Some((integrity, ciphering))
}

/// The TAI list for a UE in `tai`: `tai` itself plus its neighbours `tac + 1` and `tac - 1`
/// (where they exist).
pub fn tai_list_for(tai: Tai) -> Vec<Tai> {
    let mut v = vec![tai];
    if let Some(tac) = tai.tac.checked_add(1) {
        v.push(Tai { tac, ..tai });
    }
    if let Some(tac) = tai.tac.checked_sub(1) {
        v.push(Tai { tac, ..tai });
    }
    v
}

/// The global eNB id serving a cell: the top 20 bits of the 28-bit cell identity.
fn enb_id(ecgi: u64) -> u32 {
    ((ecgi & 0x0FFF_FFFF) >> 8) as u32
}

/// The eNB UE S1AP id the serving eNB would have allocated (24 bits), derived deterministically.
fn enb_ue_s1ap_id(imsi: u64, ecgi: u64, txn_id: u32) -> u32 {
    let salt = [&ecgi.to_be_bytes()[..], &txn_id.to_be_bytes()].concat();
    derive_u32("enb-ue-s1ap-id", imsi, &salt) & 0x00FF_FFFF
}

/// Guaranteed/maximum bit rate of a QCI (bps): the GBR QCIs 1..=4 get a fixed rate, the others 0.
fn gbr_for(qci: u8) -> u64 {
    match qci {
        1 => 64_000,
        2 => 384_000,
        3 => 256_000,
        4 => 2_000_000,
        _ => 0,
    }
}

fn reject_for(signal: &SignalBody, cause: u8) -> ResponseBody {
    match signal {
        SignalBody::TrackingAreaUpdateRequest { .. } => ResponseBody::TauReject { cause },
        SignalBody::ServiceRequest { .. } => ResponseBody::ServiceReject { cause },
        SignalBody::BearerResourceModification { .. } => ResponseBody::BearerModifyReject { cause },
        _ => ResponseBody::AttachReject { cause },
    }
}

impl Vmme {
    fn guti_for(&self, imsi: u64, txn_id: u32) -> Guti {
        Guti {
            mcc_mnc: self.config.mcc_mnc,
            mme_group_id: self.config.mme_group_id,
            mme_code: self.config.mme_code,
            m_tmsi: derive_u32("m-tmsi", imsi, &txn_id.to_be_bytes()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attach(
        &self,
        session: &mut Option<UeContext>,
        h: Header,
        msisdn: u64,
        imeisv: u64,
        ue_network_capability: u32,
        ms_network_capability: u32,
        drx: u16,
        tai: Tai,
        ecgi: u64,
        apn: &str,
        pdn_type: PdnType,
    ) -> ResponseBody {
        let Some((integrity_alg, ciphering_alg)) = select_algorithms(ue_network_capability) else {
            *session = None;
            return ResponseBody::AttachReject {
                cause: cause::UE_SECURITY_CAPABILITIES_MISMATCH,
            };
        };
        let imsi = h.imsi;
        let txn = h.txn_id.to_be_bytes();
        let eksi = session.as_ref().map_or(0, |c| c.eksi.wrapping_add(1) % 7);
        let rand: [u8; 16] = derive_arr("rand", imsi, &txn);
        let autn: [u8; 16] = derive_arr("autn", imsi, &rand);
        let rfsp = (derive_u32("rfsp", imsi, &[]) % 256 + 1) as u16;
        let ctx = UeContext {
            imsi,
            msisdn,
            imeisv,
            mm_state: MmState::AuthPending,
            ecm_state: EcmState::Connected,
            guti: None,
            tai_list: Vec::new(),
            last_visited_tai: tai,
            ecgi,
            ue_network_capability,
            ms_network_capability,
            drx,
            requested_apn: apn.to_owned(),
            requested_pdn_type: pdn_type,
            eksi,
            integrity_alg,
            ciphering_alg,
            kasme: [0; 32],
            k_nas_int: [0; 32],
            k_nas_enc: [0; 32],
            next_hop: [0; 32],
            ncc: 0,
            nas_ul_count: 0,
            nas_dl_count: 0,
            auth_rand: rand,
            auth_autn: autn,
            auth_xres: usim_res(imsi, &rand),
            // The subscription, as an HSS would return it (derived from the IMSI alone).
            ue_ambr_ul: 50_000_000,
            ue_ambr_dl: 100_000_000,
            ue_ambr_used_ul: 50_000_000,
            ue_ambr_used_dl: 100_000_000,
            subscribed_charging_characteristics: 0x0800,
            subscribed_periodic_tau_s: T3412_S,
            rfsp_index: rfsp,
            rfsp_index_in_use: rfsp,
            ue_usage_type: 0,
            access_restriction: 0,
            odb_ps: 0,
            selected_plmn: tai.mcc_mnc,
            mme_ue_s1ap_id: derive_u32("mme-ue-s1ap-id", imsi, &txn),
            enb_ue_s1ap_id: enb_ue_s1ap_id(imsi, ecgi, h.txn_id),
            enb_id: enb_id(ecgi),
            mme_s11_address: 0x0A00_0001,
            mme_s11_teid: derive_teid("mme-s11", imsi, &txn),
            sgw_s11_address: 0x0A00_0010 | (imsi % 4) as u32,
            last_release_cause: 0,
            last_activity_us: 0,
            pdns: Vec::new(),
            last_txn_id: 0,
            last_signal_type: 0,
            last_response: Vec::new(),
        };
        *session = Some(ctx);
        ResponseBody::AuthenticationRequest { rand, autn }
    }

    fn authentication_response(
        &self,
        session: &mut Option<UeContext>,
        res: &[u8; 8],
    ) -> ResponseBody {
        let Some(ctx) = session.as_mut() else {
            return ResponseBody::AttachReject {
                cause: cause::IMPLICITLY_DETACHED,
            };
        };
        if ctx.mm_state != MmState::AuthPending {
            return ResponseBody::AttachReject {
                cause: cause::NOT_COMPATIBLE_WITH_STATE,
            };
        }
        if *res != ctx.auth_xres {
            *session = None;
            return ResponseBody::AuthenticationReject;
        }
        let imsi = ctx.imsi;
        ctx.kasme = derive_arr("kasme", imsi, &ctx.auth_rand);
        let algs = [ctx.integrity_alg, ctx.ciphering_alg];
        ctx.k_nas_int = derive_arr("k-nas-int", imsi, &[&ctx.kasme[..], &algs].concat());
        ctx.k_nas_enc = derive_arr("k-nas-enc", imsi, &[&ctx.kasme[..], &algs].concat());
        ctx.next_hop = derive_arr("next-hop", imsi, &ctx.kasme);
        ctx.ncc = 0;
        ctx.mm_state = MmState::SecurityPending;
        ResponseBody::SecurityModeCommand {
            integrity_alg: ctx.integrity_alg,
            ciphering_alg: ctx.ciphering_alg,
        }
    }

    fn security_mode_complete(&self, ctx: &mut UeContext, txn_id: u32) -> ResponseBody {
        let imsi = ctx.imsi;
        let txn = txn_id.to_be_bytes();
        let guti = self.guti_for(imsi, txn_id);
        ctx.guti = Some(guti);
        ctx.tai_list = tai_list_for(ctx.last_visited_tai);
        let apn = if ctx.requested_apn.is_empty() {
            DEFAULT_APN.to_owned()
        } else {
            ctx.requested_apn.clone()
        };
        let pdn_type = ctx.requested_pdn_type;
        let ue_ip = match pdn_type {
            PdnType::Ipv6 => 0,
            _ => 0x0A40_0000 | (derive_u32("ue-ip", imsi, &txn) & 0x003F_FFFF),
        };
        let ue_ipv6_iid = match pdn_type {
            PdnType::Ipv4 => 0,
            _ => derive_u64("ue-ipv6-iid", imsi, &txn) | 1,
        };
        let pgw_address = 0xAC10_0000 | (derive_u32("pgw", 0, apn.as_bytes()) & 0xFF);
        let salt = [&txn[..], &[DEFAULT_EBI]].concat();
        let bearer = EpsBearer {
            ebi: DEFAULT_EBI,
            ti: 0,
            qci: 9,
            arp: 8,
            sgw_s1u_address: ctx.sgw_s11_address,
            sgw_s1u_teid: derive_teid("sgw-s1u", imsi, &salt),
            enb_s1u_teid: 0,
            pgw_s5u_address: pgw_address,
            pgw_s5u_teid: derive_teid("pgw-s5u", imsi, &salt),
            charging_id: derive_u32("charging-id", imsi, &salt),
            gbr_ul: 0,
            gbr_dl: 0,
            mbr_ul: 0,
            mbr_dl: 0,
        };
        ctx.pdns = vec![PdnConnection {
            apn,
            pdn_type,
            ue_ip,
            ue_ipv6_iid,
            sgw_s11_teid: derive_teid("sgw-s11", imsi, &txn),
            pgw_address,
            pgw_s5c_teid: derive_teid("pgw-s5c", imsi, &txn),
            apn_ambr_ul: ctx.ue_ambr_ul,
            apn_ambr_dl: ctx.ue_ambr_dl,
            charging_characteristics: ctx.subscribed_charging_characteristics,
            subscribed_qci: 9,
            subscribed_arp: 8,
            apn_restriction: 0,
            default_ebi: DEFAULT_EBI,
            bearers: vec![bearer],
        }];
        ctx.mm_state = MmState::AttachAcceptSent;
        ResponseBody::AttachAccept {
            guti,
            tai_list: ctx.tai_list.clone(),
            t3412_s: T3412_S,
            ue_ip,
            ebi: DEFAULT_EBI,
        }
    }

    fn bearer_modification(
        &self,
        ctx: &mut UeContext,
        txn_id: u32,
        ebi: u8,
        qci: u8,
        arp: u8,
        add: bool,
    ) -> ResponseBody {
        let reject = |cause| ResponseBody::BearerModifyReject { cause };
        let rate = gbr_for(qci);
        if !add {
            let Some(b) = ctx
                .pdns
                .iter_mut()
                .flat_map(|p| p.bearers.iter_mut())
                .find(|b| b.ebi == ebi)
            else {
                return reject(cause::INVALID_EBI);
            };
            b.qci = qci;
            b.arp = arp;
            (b.gbr_ul, b.gbr_dl, b.mbr_ul, b.mbr_dl) = (rate, rate, rate, rate);
            return ResponseBody::BearerModifyAccept { ebi, qci };
        }
        let in_use = |e: u8, pdns: &[PdnConnection]| {
            pdns.iter()
                .flat_map(|p| p.bearers.iter())
                .any(|b| b.ebi == e)
        };
        let Some(pdn_index) = ctx
            .pdns
            .iter()
            .position(|p| p.bearers.iter().any(|b| b.ebi == ebi))
        else {
            return reject(cause::INVALID_EBI);
        };
        let Some(new_ebi) = (MIN_EBI..=MAX_EBI).find(|e| !in_use(*e, &ctx.pdns)) else {
            return reject(cause::MAX_BEARERS_REACHED);
        };
        let imsi = ctx.imsi;
        let salt = [&txn_id.to_be_bytes()[..], &[new_ebi]].concat();
        let pgw_s5u_address = ctx.pdns.get(pdn_index).map_or(0, |p| p.pgw_address);
        let bearer = EpsBearer {
            ebi: new_ebi,
            ti: (txn_id & 0x7F) as u8,
            qci,
            arp,
            sgw_s1u_address: ctx.sgw_s11_address,
            sgw_s1u_teid: derive_teid("sgw-s1u", imsi, &salt),
            enb_s1u_teid: 0,
            pgw_s5u_address,
            pgw_s5u_teid: derive_teid("pgw-s5u", imsi, &salt),
            charging_id: derive_u32("charging-id", imsi, &salt),
            gbr_ul: rate,
            gbr_dl: rate,
            mbr_ul: rate,
            mbr_dl: rate,
        };
        match ctx.pdns.get_mut(pdn_index) {
            Some(pdn) => pdn.bearers.push(bearer),
            None => return reject(cause::INVALID_EBI),
        }
        ResponseBody::BearerModifyAccept { ebi: new_ebi, qci }
    }

    /// Runs one signal's procedure; the transaction layer and bookkeeping are done by the caller.
    fn run(&self, session: &mut Option<UeContext>, signal: &Signal) -> ResponseBody {
        let h = signal.header;
        match &signal.body {
            SignalBody::AttachRequest {
                msisdn,
                imeisv,
                ue_network_capability,
                ms_network_capability,
                drx,
                tai,
                ecgi,
                apn,
                pdn_type,
            } => self.attach(
                session,
                h,
                *msisdn,
                *imeisv,
                *ue_network_capability,
                *ms_network_capability,
                *drx,
                *tai,
                *ecgi,
                apn,
                *pdn_type,
            ),
            SignalBody::AuthenticationResponse { res } => {
                self.authentication_response(session, res)
            }
            SignalBody::DetachRequest { .. } => {
                *session = None;
                ResponseBody::DetachAccept
            }
            SignalBody::Echo { nonce } => ResponseBody::EchoResponse { nonce: *nonce },
            SignalBody::UeContextRelease { cause } => {
                if let Some(ctx) = session.as_mut() {
                    ctx.ecm_state = EcmState::Idle;
                    ctx.last_release_cause = *cause;
                    ctx.enb_ue_s1ap_id = 0;
                    for b in ctx.pdns.iter_mut().flat_map(|p| p.bearers.iter_mut()) {
                        b.enb_s1u_teid = 0;
                    }
                }
                ResponseBody::ReleaseComplete
            }
            body => {
                let Some(ctx) = session.as_mut() else {
                    return reject_for(body, cause::IMPLICITLY_DETACHED);
                };
                let required = match body {
                    SignalBody::SecurityModeComplete => MmState::SecurityPending,
                    SignalBody::AttachComplete => MmState::AttachAcceptSent,
                    _ => MmState::Registered,
                };
                if ctx.mm_state != required {
                    return reject_for(body, cause::NOT_COMPATIBLE_WITH_STATE);
                }
                match body {
                    SignalBody::SecurityModeComplete => self.security_mode_complete(ctx, h.txn_id),
                    SignalBody::AttachComplete => {
                        ctx.mm_state = MmState::Registered;
                        ctx.ecm_state = EcmState::Connected;
                        ResponseBody::EmmInformation {
                            network_name: self.config.network_name.clone(),
                        }
                    }
                    SignalBody::TrackingAreaUpdateRequest {
                        tai,
                        ecgi,
                        active_flag,
                    } => {
                        ctx.last_visited_tai = *tai;
                        ctx.ecgi = *ecgi;
                        ctx.enb_id = enb_id(*ecgi);
                        if !ctx.tai_list.contains(tai) {
                            ctx.tai_list = tai_list_for(*tai);
                        }
                        if *active_flag {
                            ctx.ecm_state = EcmState::Connected;
                        }
                        let guti = *ctx
                            .guti
                            .get_or_insert_with(|| self.guti_for(h.imsi, h.txn_id));
                        ResponseBody::TauAccept {
                            guti,
                            tai_list: ctx.tai_list.clone(),
                        }
                    }
                    SignalBody::ServiceRequest { ecgi, enb_s1u_teid } => {
                        ctx.ecm_state = EcmState::Connected;
                        ctx.ecgi = *ecgi;
                        ctx.enb_id = enb_id(*ecgi);
                        ctx.enb_ue_s1ap_id = enb_ue_s1ap_id(h.imsi, *ecgi, h.txn_id);
                        let mut ebis = Vec::new();
                        let bearers = ctx.pdns.iter_mut().flat_map(|p| p.bearers.iter_mut());
                        for (i, b) in (0u32..).zip(bearers) {
                            b.enb_s1u_teid = enb_s1u_teid.wrapping_add(i);
                            ebis.push(b.ebi);
                        }
                        ResponseBody::ServiceAccept { ebis }
                    }
                    SignalBody::BearerResourceModification { ebi, qci, arp, add } => {
                        self.bearer_modification(ctx, h.txn_id, *ebi, *qci, *arp, *add)
                    }
                    // Handled above; kept total without panicking.
                    other => reject_for(other, cause::NOT_COMPATIBLE_WITH_STATE),
                }
            }
        }
    }
}

fn output(bytes: Vec<u8>, msg_type: MsgType) -> Output {
    Output {
        msg_type,
        bytes: Bytes::from(bytes),
    }
}

impl Function for Vmme {
    type Session = UeContext;
    type Prepared = Signal;

    fn name(&self) -> &'static str {
        "vmme"
    }

    fn classify(&self, datagram: &[u8]) -> Result<Classified, MalformedSignal> {
        let signal = Signal::decode(datagram)?;
        let kind = signal.kind();
        let key: SessionKey = match kind {
            SignalKind::Stateless => SessionKey::new(),
            _ => session_key(signal.header.imsi),
        };
        Ok(Classified { kind, key })
    }

    fn prepare(&self, datagram: &[u8]) -> Result<Signal, MalformedSignal> {
        Signal::decode(datagram)
    }

    fn process(
        &self,
        session: &mut Option<UeContext>,
        signal: &Signal,
        stamp: Stamp,
        out: &mut Vec<Output>,
    ) {
        let h = signal.header;
        let signal_type = signal.msg_type();
        if let SignalBody::Echo { nonce } = signal.body {
            let resp = Response {
                header: h,
                body: ResponseBody::EchoResponse { nonce },
            };
            out.push(output(resp.to_bytes(), msg::ECHO_RESPONSE));
            return;
        }
        // Transaction layer: a retransmission gets the cached bytes and changes nothing.
        if let Some(ctx) = session.as_ref() {
            if ctx.last_txn_id == h.txn_id && ctx.last_signal_type == signal_type {
                let t = peek_header(&ctx.last_response).map_or(0, |(t, _)| t);
                out.push(output(ctx.last_response.clone(), t));
                return;
            }
        }
        let body = self.run(session, signal);
        let resp = Response { header: h, body };
        let t = resp.msg_type();
        let bytes = resp.to_bytes();
        if let Some(ctx) = session.as_mut() {
            ctx.last_txn_id = h.txn_id;
            ctx.last_signal_type = signal_type;
            ctx.last_response.clone_from(&bytes);
            ctx.nas_ul_count = ctx.nas_ul_count.wrapping_add(1);
            ctx.nas_dl_count = ctx.nas_dl_count.wrapping_add(1);
            ctx.last_activity_us = stamp.now_us;
        }
        out.push(output(bytes, t));
    }

    fn deadline_us(&self, session: &UeContext) -> Option<u64> {
        Some(
            session
                .last_activity_us
                .saturating_add(self.config.implicit_detach_us),
        )
    }

    fn on_timer(&self, session: &mut Option<UeContext>, stamp: Stamp, _out: &mut Vec<Output>) {
        let due = session
            .as_ref()
            .and_then(|ctx| self.deadline_us(ctx))
            .is_some_and(|d| stamp.now_us >= d);
        if due {
            // Implicit detach: the UE has been silent past T3412 + 4 min.
            *session = None;
        }
    }

    fn encode_session(&self, session: &UeContext, buf: &mut Vec<u8>) {
        session.encode(buf);
    }

    fn decode_session(&self, bytes: &[u8]) -> Result<UeContext, BadRecord> {
        UeContext::decode(bytes)
    }

    fn default_ruleset(&self) -> Ruleset {
        use OutputClass::{Gated, Immediate};
        let reject = "reject reveals no new state";
        Ruleset::default()
            .with(msg::ECHO_RESPONSE, Immediate, "stateless keepalive")
            .with(
                msg::AUTHENTICATION_REQUEST,
                Immediate,
                "challenge is provisional",
            )
            .with(msg::AUTHENTICATION_REJECT, Immediate, reject)
            .with(msg::ATTACH_REJECT, Immediate, reject)
            .with(msg::TAU_REJECT, Immediate, reject)
            .with(msg::SERVICE_REJECT, Immediate, reject)
            .with(msg::BEARER_MODIFY_REJECT, Immediate, reject)
            .with(
                msg::SECURITY_MODE_COMMAND,
                Gated,
                "reveals the established security context",
            )
            .with(
                msg::ATTACH_ACCEPT,
                Gated,
                "reveals the allocated GUTI, IP and bearer",
            )
            .with(
                msg::EMM_INFORMATION,
                Gated,
                "acknowledges the completed attach",
            )
            .with(msg::TAU_ACCEPT, Gated, "reveals the new TAI list")
            .with(
                msg::SERVICE_ACCEPT,
                Gated,
                "acknowledges re-established bearers",
            )
            .with(
                msg::RELEASE_COMPLETE,
                Gated,
                "acknowledges the move to ECM-IDLE",
            )
            .with(
                msg::BEARER_MODIFY_ACCEPT,
                Gated,
                "reveals the added or modified bearer",
            )
            .with(
                msg::DETACH_ACCEPT,
                Gated,
                "acknowledges the deleted context",
            )
    }

    fn msg_type_name(&self, msg_type: MsgType) -> &'static str {
        msg::name(msg_type)
    }
}

#[cfg(test)]
mod tests;
