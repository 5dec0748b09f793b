//! The UE context: the vMME's per-subscriber session state, a simplified version of the MME MM
//! context and EPS bearer context of TS 23.401 §5.7.2, plus the transaction-layer cache (the
//! last signal's txn id and type and the exact bytes answered to it).
//!
//! A context serialises to a versioned, big-endian record ([`UeContext::encode`]) that
//! [`UeContext::decode`] reads back exactly; decoding arbitrary bytes never panics. The only
//! clock-derived field is [`UeContext::last_activity_us`]; [`UeContext::without_clock`] zeroes
//! it for oracles that do not know the steer's timestamps.

use crate::codec::{
    put_guti, put_str8, put_tai, put_tai_list, put_u16, put_u32, put_u64, Guti, PdnType, Reader,
    Tai, MAX_APN_LEN,
};
use handoff_function::{BadRecord, MalformedSignal};

/// Version of the context record format.
pub const RECORD_VERSION: u8 = 1;
/// Most PDN connections (and most bearers per PDN) a record may hold: one per EBI 5..=15.
pub const MAX_BEARERS: usize = 11;
/// Longest cached response a record may hold, in bytes.
pub const MAX_CACHED_RESPONSE: usize = 1024;

/// EMM state of the UE (with the attach procedure's intermediate steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MmState {
    /// Attach Request seen; Authentication Request sent, waiting for RES.
    AuthPending = 1,
    /// Authenticated; Security Mode Command sent.
    SecurityPending = 2,
    /// Attach Accept sent, waiting for Attach Complete.
    AttachAcceptSent = 3,
    /// EMM-REGISTERED.
    Registered = 4,
}

impl MmState {
    /// Decodes the record value; `None` if unknown.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::AuthPending,
            2 => Self::SecurityPending,
            3 => Self::AttachAcceptSent,
            4 => Self::Registered,
            _ => return None,
        })
    }
}

/// ECM state of the UE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EcmState {
    /// ECM-IDLE: no S1 connection.
    Idle = 1,
    /// ECM-CONNECTED.
    Connected = 2,
}

impl EcmState {
    /// Decodes the record value; `None` if unknown.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Idle),
            2 => Some(Self::Connected),
            _ => None,
        }
    }
}

/// An EPS bearer context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpsBearer {
    /// EPS bearer identity (5..=15).
    pub ebi: u8,
    /// NAS transaction identifier of the bearer's ESM procedure.
    pub ti: u8,
    /// QoS class identifier.
    pub qci: u8,
    /// Allocation and retention priority level.
    pub arp: u8,
    /// S-GW S1-U address.
    pub sgw_s1u_address: u32,
    /// S-GW S1-U TEID.
    pub sgw_s1u_teid: u32,
    /// eNB S1-U TEID (0 while ECM-IDLE).
    pub enb_s1u_teid: u32,
    /// P-GW S5/S8 user-plane address.
    pub pgw_s5u_address: u32,
    /// P-GW S5/S8 user-plane TEID.
    pub pgw_s5u_teid: u32,
    /// Charging id of the bearer.
    pub charging_id: u32,
    /// Guaranteed bit rate uplink, bps (0 for non-GBR).
    pub gbr_ul: u64,
    /// Guaranteed bit rate downlink, bps.
    pub gbr_dl: u64,
    /// Maximum bit rate uplink, bps.
    pub mbr_ul: u64,
    /// Maximum bit rate downlink, bps.
    pub mbr_dl: u64,
}

/// A PDN connection and its bearers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdnConnection {
    /// APN in use.
    pub apn: String,
    /// PDN type.
    pub pdn_type: PdnType,
    /// UE IPv4 address (0 for IPv6-only).
    pub ue_ip: u32,
    /// UE IPv6 interface identifier (0 for IPv4-only).
    pub ue_ipv6_iid: u64,
    /// S-GW S11 TEID for this PDN.
    pub sgw_s11_teid: u32,
    /// P-GW address in use (control plane).
    pub pgw_address: u32,
    /// P-GW S5/S8 control-plane TEID.
    pub pgw_s5c_teid: u32,
    /// APN-AMBR uplink, bps.
    pub apn_ambr_ul: u64,
    /// APN-AMBR downlink, bps.
    pub apn_ambr_dl: u64,
    /// EPS PDN charging characteristics.
    pub charging_characteristics: u16,
    /// Subscribed QCI of the default bearer.
    pub subscribed_qci: u8,
    /// Subscribed ARP of the default bearer.
    pub subscribed_arp: u8,
    /// APN restriction.
    pub apn_restriction: u8,
    /// EBI of the default bearer.
    pub default_ebi: u8,
    /// Default bearer first, then dedicated bearers.
    pub bearers: Vec<EpsBearer>,
}

/// One UE's context in the MME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UeContext {
    /// IMSI.
    pub imsi: u64,
    /// MSISDN.
    pub msisdn: u64,
    /// IMEISV (ME identity).
    pub imeisv: u64,
    /// EMM state.
    pub mm_state: MmState,
    /// ECM state.
    pub ecm_state: EcmState,
    /// GUTI, once allocated (Security Mode Complete).
    pub guti: Option<Guti>,
    /// Tracking area list.
    pub tai_list: Vec<Tai>,
    /// TAI of the last attach or TAU.
    pub last_visited_tai: Tai,
    /// Last known cell.
    pub ecgi: u64,
    /// UE network capability.
    pub ue_network_capability: u32,
    /// MS network capability.
    pub ms_network_capability: u32,
    /// DRX parameters.
    pub drx: u16,
    /// APN requested at attach (empty = default APN).
    pub requested_apn: String,
    /// PDN type requested at attach.
    pub requested_pdn_type: PdnType,
    /// Key set identifier of the current security context.
    pub eksi: u8,
    /// Selected NAS integrity algorithm (EIA).
    pub integrity_alg: u8,
    /// Selected NAS ciphering algorithm (EEA).
    pub ciphering_alg: u8,
    /// K_ASME.
    pub kasme: [u8; 32],
    /// K_NASint.
    pub k_nas_int: [u8; 32],
    /// K_NASenc.
    pub k_nas_enc: [u8; 32],
    /// Next hop (NH) for handover key derivation.
    pub next_hop: [u8; 32],
    /// Next hop chaining count.
    pub ncc: u8,
    /// Uplink NAS COUNT.
    pub nas_ul_count: u32,
    /// Downlink NAS COUNT.
    pub nas_dl_count: u32,
    /// RAND of the current authentication vector.
    pub auth_rand: [u8; 16],
    /// AUTN of the current authentication vector.
    pub auth_autn: [u8; 16],
    /// XRES of the current authentication vector.
    pub auth_xres: [u8; 8],
    /// Subscribed UE-AMBR uplink, bps.
    pub ue_ambr_ul: u64,
    /// Subscribed UE-AMBR downlink, bps.
    pub ue_ambr_dl: u64,
    /// UE-AMBR in use uplink, bps.
    pub ue_ambr_used_ul: u64,
    /// UE-AMBR in use downlink, bps.
    pub ue_ambr_used_dl: u64,
    /// Subscribed EPS charging characteristics.
    pub subscribed_charging_characteristics: u16,
    /// Subscribed periodic TAU timer, seconds.
    pub subscribed_periodic_tau_s: u32,
    /// Subscribed RFSP index.
    pub rfsp_index: u16,
    /// RFSP index in use.
    pub rfsp_index_in_use: u16,
    /// UE usage type (dedicated core network selection).
    pub ue_usage_type: u8,
    /// Access restriction data.
    pub access_restriction: u32,
    /// Operator determined barring for PS.
    pub odb_ps: u32,
    /// Selected core network operator (`mcc * 1000 + mnc`).
    pub selected_plmn: u32,
    /// MME UE S1AP ID.
    pub mme_ue_s1ap_id: u32,
    /// eNB UE S1AP ID of the current S1 connection.
    pub enb_ue_s1ap_id: u32,
    /// Global eNB id of the serving eNB (from the ECGI).
    pub enb_id: u32,
    /// MME S11 address.
    pub mme_s11_address: u32,
    /// MME S11 TEID.
    pub mme_s11_teid: u32,
    /// S-GW S11 address.
    pub sgw_s11_address: u32,
    /// Cause of the last S1 release.
    pub last_release_cause: u8,
    /// Stamp time of the last signal processed (µs). The only clock-derived field.
    pub last_activity_us: u64,
    /// PDN connections.
    pub pdns: Vec<PdnConnection>,
    /// Transaction cache: txn id of the last signal processed.
    pub last_txn_id: u32,
    /// Transaction cache: message type of the last signal processed.
    pub last_signal_type: u16,
    /// Transaction cache: the exact encoded response to the last signal.
    pub last_response: Vec<u8>,
}

fn bad(reason: impl Into<String>) -> BadRecord {
    BadRecord {
        reason: reason.into(),
    }
}

fn from_malformed(e: MalformedSignal) -> BadRecord {
    bad(e.to_string())
}

impl UeContext {
    /// A copy with the clock-derived fields zeroed.
    pub fn without_clock(&self) -> UeContext {
        UeContext {
            last_activity_us: 0,
            ..self.clone()
        }
    }

    /// Encodes into a fresh vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(768);
        self.encode(&mut v);
        v
    }

    /// Appends the record to `buf`. Lists and strings longer than the record's limits are
    /// clamped (processing never produces such contexts).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(RECORD_VERSION);
        put_u64(buf, self.imsi);
        put_u64(buf, self.msisdn);
        put_u64(buf, self.imeisv);
        buf.push(self.mm_state as u8);
        buf.push(self.ecm_state as u8);
        match &self.guti {
            Some(g) => {
                buf.push(1);
                put_guti(buf, g);
            }
            None => buf.push(0),
        }
        put_tai_list(buf, &self.tai_list);
        put_tai(buf, &self.last_visited_tai);
        put_u64(buf, self.ecgi);
        put_u32(buf, self.ue_network_capability);
        put_u32(buf, self.ms_network_capability);
        put_u16(buf, self.drx);
        put_str8(buf, &self.requested_apn, MAX_APN_LEN);
        buf.push(self.requested_pdn_type as u8);
        buf.extend_from_slice(&[self.eksi, self.integrity_alg, self.ciphering_alg]);
        buf.extend_from_slice(&self.kasme);
        buf.extend_from_slice(&self.k_nas_int);
        buf.extend_from_slice(&self.k_nas_enc);
        buf.extend_from_slice(&self.next_hop);
        buf.push(self.ncc);
        put_u32(buf, self.nas_ul_count);
        put_u32(buf, self.nas_dl_count);
        buf.extend_from_slice(&self.auth_rand);
        buf.extend_from_slice(&self.auth_autn);
        buf.extend_from_slice(&self.auth_xres);
        put_u64(buf, self.ue_ambr_ul);
        put_u64(buf, self.ue_ambr_dl);
        put_u64(buf, self.ue_ambr_used_ul);
        put_u64(buf, self.ue_ambr_used_dl);
        put_u16(buf, self.subscribed_charging_characteristics);
        put_u32(buf, self.subscribed_periodic_tau_s);
        put_u16(buf, self.rfsp_index);
        put_u16(buf, self.rfsp_index_in_use);
        buf.push(self.ue_usage_type);
        put_u32(buf, self.access_restriction);
        put_u32(buf, self.odb_ps);
        put_u32(buf, self.selected_plmn);
        put_u32(buf, self.mme_ue_s1ap_id);
        put_u32(buf, self.enb_ue_s1ap_id);
        put_u32(buf, self.enb_id);
        put_u32(buf, self.mme_s11_address);
        put_u32(buf, self.mme_s11_teid);
        put_u32(buf, self.sgw_s11_address);
        buf.push(self.last_release_cause);
        put_u64(buf, self.last_activity_us);
        let pdns = &self.pdns[..self.pdns.len().min(MAX_BEARERS)];
        buf.push(pdns.len() as u8);
        for p in pdns {
            put_str8(buf, &p.apn, MAX_APN_LEN);
            buf.push(p.pdn_type as u8);
            put_u32(buf, p.ue_ip);
            put_u64(buf, p.ue_ipv6_iid);
            put_u32(buf, p.sgw_s11_teid);
            put_u32(buf, p.pgw_address);
            put_u32(buf, p.pgw_s5c_teid);
            put_u64(buf, p.apn_ambr_ul);
            put_u64(buf, p.apn_ambr_dl);
            put_u16(buf, p.charging_characteristics);
            buf.extend_from_slice(&[p.subscribed_qci, p.subscribed_arp, p.apn_restriction]);
            buf.push(p.default_ebi);
            let bearers = &p.bearers[..p.bearers.len().min(MAX_BEARERS)];
            buf.push(bearers.len() as u8);
            for b in bearers {
                buf.extend_from_slice(&[b.ebi, b.ti, b.qci, b.arp]);
                put_u32(buf, b.sgw_s1u_address);
                put_u32(buf, b.sgw_s1u_teid);
                put_u32(buf, b.enb_s1u_teid);
                put_u32(buf, b.pgw_s5u_address);
                put_u32(buf, b.pgw_s5u_teid);
                put_u32(buf, b.charging_id);
                put_u64(buf, b.gbr_ul);
                put_u64(buf, b.gbr_dl);
                put_u64(buf, b.mbr_ul);
                put_u64(buf, b.mbr_dl);
            }
        }
        put_u32(buf, self.last_txn_id);
        put_u16(buf, self.last_signal_type);
        let resp = &self.last_response[..self.last_response.len().min(MAX_CACHED_RESPONSE)];
        put_u16(buf, resp.len() as u16);
        buf.extend_from_slice(resp);
    }

    /// Decodes a record written by [`UeContext::encode`]. Never panics.
    pub fn decode(b: &[u8]) -> Result<UeContext, BadRecord> {
        Self::decode_inner(b).map_err(|e| match e {
            Inner::Malformed(m) => from_malformed(m),
            Inner::Bad(b) => b,
        })
    }

    fn decode_inner(b: &[u8]) -> Result<UeContext, Inner> {
        let mut r = Reader::new(b);
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(bad(format!("unknown record version {version}")).into());
        }
        let imsi = r.u64()?;
        let msisdn = r.u64()?;
        let imeisv = r.u64()?;
        let mm_state = MmState::from_u8(r.u8()?).ok_or_else(|| bad("mm_state"))?;
        let ecm_state = EcmState::from_u8(r.u8()?).ok_or_else(|| bad("ecm_state"))?;
        let guti = match r.u8()? {
            0 => None,
            1 => Some(r.guti()?),
            _ => return Err(bad("guti flag").into()),
        };
        let tai_list = r.tai_list()?;
        let last_visited_tai = r.tai()?;
        let ecgi = r.u64()?;
        let ue_network_capability = r.u32()?;
        let ms_network_capability = r.u32()?;
        let drx = r.u16()?;
        let requested_apn = r.str8(MAX_APN_LEN, "requested_apn", false)?;
        let requested_pdn_type = pdn_type(&mut r)?;
        let eksi = r.u8()?;
        let integrity_alg = r.u8()?;
        let ciphering_alg = r.u8()?;
        let kasme = r.array()?;
        let k_nas_int = r.array()?;
        let k_nas_enc = r.array()?;
        let next_hop = r.array()?;
        let ncc = r.u8()?;
        let nas_ul_count = r.u32()?;
        let nas_dl_count = r.u32()?;
        let auth_rand = r.array()?;
        let auth_autn = r.array()?;
        let auth_xres = r.array()?;
        let ue_ambr_ul = r.u64()?;
        let ue_ambr_dl = r.u64()?;
        let ue_ambr_used_ul = r.u64()?;
        let ue_ambr_used_dl = r.u64()?;
        let subscribed_charging_characteristics = r.u16()?;
        let subscribed_periodic_tau_s = r.u32()?;
        let rfsp_index = r.u16()?;
        let rfsp_index_in_use = r.u16()?;
        let ue_usage_type = r.u8()?;
        let access_restriction = r.u32()?;
        let odb_ps = r.u32()?;
        let selected_plmn = r.u32()?;
        let mme_ue_s1ap_id = r.u32()?;
        let enb_ue_s1ap_id = r.u32()?;
        let enb_id = r.u32()?;
        let mme_s11_address = r.u32()?;
        let mme_s11_teid = r.u32()?;
        let sgw_s11_address = r.u32()?;
        let last_release_cause = r.u8()?;
        let last_activity_us = r.u64()?;
        let npdn = usize::from(r.u8()?);
        if npdn > MAX_BEARERS {
            return Err(bad("too many PDN connections").into());
        }
        let mut pdns = Vec::with_capacity(npdn);
        for _ in 0..npdn {
            let apn = r.str8(MAX_APN_LEN, "apn", false)?;
            let pdn_type = pdn_type(&mut r)?;
            let ue_ip = r.u32()?;
            let ue_ipv6_iid = r.u64()?;
            let sgw_s11_teid = r.u32()?;
            let pgw_address = r.u32()?;
            let pgw_s5c_teid = r.u32()?;
            let apn_ambr_ul = r.u64()?;
            let apn_ambr_dl = r.u64()?;
            let charging_characteristics = r.u16()?;
            let subscribed_qci = r.u8()?;
            let subscribed_arp = r.u8()?;
            let apn_restriction = r.u8()?;
            let default_ebi = r.u8()?;
            let nb = usize::from(r.u8()?);
            if nb > MAX_BEARERS {
                return Err(bad("too many bearers").into());
            }
            let mut bearers = Vec::with_capacity(nb);
            for _ in 0..nb {
                bearers.push(EpsBearer {
                    ebi: r.u8()?,
                    ti: r.u8()?,
                    qci: r.u8()?,
                    arp: r.u8()?,
                    sgw_s1u_address: r.u32()?,
                    sgw_s1u_teid: r.u32()?,
                    enb_s1u_teid: r.u32()?,
                    pgw_s5u_address: r.u32()?,
                    pgw_s5u_teid: r.u32()?,
                    charging_id: r.u32()?,
                    gbr_ul: r.u64()?,
                    gbr_dl: r.u64()?,
                    mbr_ul: r.u64()?,
                    mbr_dl: r.u64()?,
                });
            }
            pdns.push(PdnConnection {
                apn,
                pdn_type,
                ue_ip,
                ue_ipv6_iid,
                sgw_s11_teid,
                pgw_address,
                pgw_s5c_teid,
                apn_ambr_ul,
                apn_ambr_dl,
                charging_characteristics,
                subscribed_qci,
                subscribed_arp,
                apn_restriction,
                default_ebi,
                bearers,
            });
        }
        let last_txn_id = r.u32()?;
        let last_signal_type = r.u16()?;
        let nresp = usize::from(r.u16()?);
        if nresp > MAX_CACHED_RESPONSE {
            return Err(bad("cached response too long").into());
        }
        let last_response = r.take(nresp)?.to_vec();
        r.finish()?;
        Ok(UeContext {
            imsi,
            msisdn,
            imeisv,
            mm_state,
            ecm_state,
            guti,
            tai_list,
            last_visited_tai,
            ecgi,
            ue_network_capability,
            ms_network_capability,
            drx,
            requested_apn,
            requested_pdn_type,
            eksi,
            integrity_alg,
            ciphering_alg,
            kasme,
            k_nas_int,
            k_nas_enc,
            next_hop,
            ncc,
            nas_ul_count,
            nas_dl_count,
            auth_rand,
            auth_autn,
            auth_xres,
            ue_ambr_ul,
            ue_ambr_dl,
            ue_ambr_used_ul,
            ue_ambr_used_dl,
            subscribed_charging_characteristics,
            subscribed_periodic_tau_s,
            rfsp_index,
            rfsp_index_in_use,
            ue_usage_type,
            access_restriction,
            odb_ps,
            selected_plmn,
            mme_ue_s1ap_id,
            enb_ue_s1ap_id,
            enb_id,
            mme_s11_address,
            mme_s11_teid,
            sgw_s11_address,
            last_release_cause,
            last_activity_us,
            pdns,
            last_txn_id,
            last_signal_type,
            last_response,
        })
    }
}

/// Decoding error before it is flattened into a [`BadRecord`].
enum Inner {
    Malformed(MalformedSignal),
    Bad(BadRecord),
}

impl From<MalformedSignal> for Inner {
    fn from(e: MalformedSignal) -> Self {
        Inner::Malformed(e)
    }
}

impl From<BadRecord> for Inner {
    fn from(e: BadRecord) -> Self {
        Inner::Bad(e)
    }
}

fn pdn_type(r: &mut Reader<'_>) -> Result<PdnType, Inner> {
    Ok(PdnType::from_u8(r.u8()?).ok_or_else(|| bad("pdn_type"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_version_and_truncation() {
        assert!(UeContext::decode(&[]).is_err());
        assert!(UeContext::decode(&[2, 0, 0]).is_err());
        assert!(UeContext::decode(&[RECORD_VERSION; 40]).is_err());
    }
}
