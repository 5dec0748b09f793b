//! S1AP-lite: the vMME's compact, versioned, big-endian wire encoding of signals (UE → MME)
//! and responses (MME → UE). The byte layout is documented in `docs/s1ap-lite.md`.
//!
//! Every message starts with a 15-byte header (`version`, `msg_type`, `imsi`, `txn_id`) followed
//! by a body specific to the message type. Decoders never panic: short input, a wrong version,
//! an unknown type, an out-of-domain value or trailing bytes are reported as
//! [`MalformedSignal`]. Encoders are total; they clamp over-long strings and lists to the
//! decoder's limits so that whatever they write decodes.

use handoff_function::{MalformedSignal, SessionKey, SignalKind};

/// The only encoding version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the common header: version (1) + msg_type (2) + imsi (8) + txn_id (4).
pub const HEADER_LEN: usize = 15;
/// Largest IMSI (15 decimal digits).
pub const MAX_IMSI: u64 = 999_999_999_999_999;
/// Largest MSISDN (15 decimal digits, E.164).
pub const MAX_MSISDN: u64 = 999_999_999_999_999;
/// Largest IMEISV (16 decimal digits).
pub const MAX_IMEISV: u64 = 9_999_999_999_999_999;
/// Largest MCC+MNC, written as the decimal number `mcc * 1000 + mnc` (6 digits).
pub const MAX_MCC_MNC: u32 = 999_999;
/// ECGI values are below `1 << 52` (24-bit PLMN + 28-bit cell identity).
pub const ECGI_LIMIT: u64 = 1 << 52;
/// Longest APN, in bytes (printable ASCII).
pub const MAX_APN_LEN: usize = 100;
/// Longest network name in EMM Information, in bytes (UTF-8).
pub const MAX_NAME_LEN: usize = 100;
/// Most entries in a TAI list.
pub const MAX_TAI_LIST: usize = 16;
/// Most entries in an EBI list.
pub const MAX_EBI_LIST: usize = 16;
/// Lowest EPS bearer identity.
pub const MIN_EBI: u8 = 5;
/// Highest EPS bearer identity.
pub const MAX_EBI: u8 = 15;

/// Message type numbers. 0 is reserved as invalid; signals are 0x0001..=0x00FF, responses
/// 0x0100..=0x01FF.
pub mod msg {
    /// UE → MME: Attach Request (creates the UE context).
    pub const ATTACH_REQUEST: u16 = 0x0001;
    /// UE → MME: Authentication Response (RES).
    pub const AUTHENTICATION_RESPONSE: u16 = 0x0002;
    /// UE → MME: Security Mode Complete.
    pub const SECURITY_MODE_COMPLETE: u16 = 0x0003;
    /// UE → MME: Attach Complete.
    pub const ATTACH_COMPLETE: u16 = 0x0004;
    /// UE → MME: Tracking Area Update Request.
    pub const TRACKING_AREA_UPDATE_REQUEST: u16 = 0x0005;
    /// UE → MME: Service Request.
    pub const SERVICE_REQUEST: u16 = 0x0006;
    /// eNB → MME: UE Context Release Request.
    pub const UE_CONTEXT_RELEASE: u16 = 0x0007;
    /// UE → MME: Bearer Resource Modification Request.
    pub const BEARER_RESOURCE_MODIFICATION: u16 = 0x0008;
    /// UE → MME: Detach Request (deletes the UE context).
    pub const DETACH_REQUEST: u16 = 0x0009;
    /// UE → MME: Echo (stateless keepalive).
    pub const ECHO: u16 = 0x000A;

    /// MME → UE: Authentication Request (RAND, AUTN).
    pub const AUTHENTICATION_REQUEST: u16 = 0x0101;
    /// MME → UE: Authentication Reject.
    pub const AUTHENTICATION_REJECT: u16 = 0x0102;
    /// MME → UE: Security Mode Command.
    pub const SECURITY_MODE_COMMAND: u16 = 0x0103;
    /// MME → UE: Attach Accept.
    pub const ATTACH_ACCEPT: u16 = 0x0104;
    /// MME → UE: Attach Reject.
    pub const ATTACH_REJECT: u16 = 0x0105;
    /// MME → UE: EMM Information.
    pub const EMM_INFORMATION: u16 = 0x0106;
    /// MME → UE: Tracking Area Update Accept.
    pub const TAU_ACCEPT: u16 = 0x0107;
    /// MME → UE: Tracking Area Update Reject.
    pub const TAU_REJECT: u16 = 0x0108;
    /// MME → UE: Service Accept.
    pub const SERVICE_ACCEPT: u16 = 0x0109;
    /// MME → UE: Service Reject.
    pub const SERVICE_REJECT: u16 = 0x010A;
    /// MME → eNB: UE Context Release Complete.
    pub const RELEASE_COMPLETE: u16 = 0x010B;
    /// MME → UE: bearer modification accepted.
    pub const BEARER_MODIFY_ACCEPT: u16 = 0x010C;
    /// MME → UE: bearer modification rejected.
    pub const BEARER_MODIFY_REJECT: u16 = 0x010D;
    /// MME → UE: Detach Accept.
    pub const DETACH_ACCEPT: u16 = 0x010E;
    /// MME → UE: Echo Response.
    pub const ECHO_RESPONSE: u16 = 0x010F;

    /// Whether `t` is a known signal (UE → MME) type.
    pub fn is_signal(t: u16) -> bool {
        (ATTACH_REQUEST..=ECHO).contains(&t)
    }

    /// Whether `t` is a known response (MME → UE) type.
    pub fn is_response(t: u16) -> bool {
        (AUTHENTICATION_REQUEST..=ECHO_RESPONSE).contains(&t)
    }

    /// A human name for any known message type; `"Unknown"` otherwise.
    pub fn name(t: u16) -> &'static str {
        match t {
            ATTACH_REQUEST => "AttachRequest",
            AUTHENTICATION_RESPONSE => "AuthenticationResponse",
            SECURITY_MODE_COMPLETE => "SecurityModeComplete",
            ATTACH_COMPLETE => "AttachComplete",
            TRACKING_AREA_UPDATE_REQUEST => "TrackingAreaUpdateRequest",
            SERVICE_REQUEST => "ServiceRequest",
            UE_CONTEXT_RELEASE => "UeContextRelease",
            BEARER_RESOURCE_MODIFICATION => "BearerResourceModification",
            DETACH_REQUEST => "DetachRequest",
            ECHO => "Echo",
            AUTHENTICATION_REQUEST => "AuthenticationRequest",
            AUTHENTICATION_REJECT => "AuthenticationReject",
            SECURITY_MODE_COMMAND => "SecurityModeCommand",
            ATTACH_ACCEPT => "AttachAccept",
            ATTACH_REJECT => "AttachReject",
            EMM_INFORMATION => "EmmInformation",
            TAU_ACCEPT => "TauAccept",
            TAU_REJECT => "TauReject",
            SERVICE_ACCEPT => "ServiceAccept",
            SERVICE_REJECT => "ServiceReject",
            RELEASE_COMPLETE => "ReleaseComplete",
            BEARER_MODIFY_ACCEPT => "BearerModifyAccept",
            BEARER_MODIFY_REJECT => "BearerModifyReject",
            DETACH_ACCEPT => "DetachAccept",
            ECHO_RESPONSE => "EchoResponse",
            _ => "Unknown",
        }
    }
}

/// The common header fields every message carries (besides version and type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The subscriber, as a 15-digit integer (at most [`MAX_IMSI`]).
    pub imsi: u64,
    /// The NAS transaction the message belongs to; a response echoes its signal's.
    pub txn_id: u32,
}

/// A tracking area identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tai {
    /// `mcc * 1000 + mnc`, at most [`MAX_MCC_MNC`].
    pub mcc_mnc: u32,
    /// Tracking area code.
    pub tac: u16,
}

/// The PDN type a UE requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PdnType {
    /// IPv4 only.
    Ipv4 = 1,
    /// IPv6 only.
    Ipv6 = 2,
    /// Dual stack.
    Ipv4v6 = 3,
}

impl PdnType {
    /// Decodes the wire value; `None` outside 1..=3.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Ipv4),
            2 => Some(Self::Ipv6),
            3 => Some(Self::Ipv4v6),
            _ => None,
        }
    }
}

/// A globally unique temporary identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Guti {
    /// `mcc * 1000 + mnc`, at most [`MAX_MCC_MNC`].
    pub mcc_mnc: u32,
    /// MME group identity.
    pub mme_group_id: u16,
    /// MME code.
    pub mme_code: u8,
    /// M-TMSI.
    pub m_tmsi: u32,
}

/// The body of a signal (UE → MME).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalBody {
    /// Attach Request: creates (or replaces) the UE context.
    AttachRequest {
        /// MSISDN, at most [`MAX_MSISDN`].
        msisdn: u64,
        /// IMEISV, at most [`MAX_IMEISV`].
        imeisv: u64,
        /// UE network capability: bit `i` of the low byte = EIA`i` supported, bit `i` of the
        /// second byte = EEA`i` supported; the upper bytes are carried opaquely.
        ue_network_capability: u32,
        /// MS network capability (opaque).
        ms_network_capability: u32,
        /// DRX parameter (opaque).
        drx: u16,
        /// Tracking area the UE attaches in.
        tai: Tai,
        /// Cell the UE attaches in (below [`ECGI_LIMIT`]).
        ecgi: u64,
        /// Requested APN: printable ASCII, at most [`MAX_APN_LEN`] bytes; empty = default.
        apn: String,
        /// Requested PDN type.
        pdn_type: PdnType,
    },
    /// Authentication Response carrying the USIM's RES.
    AuthenticationResponse {
        /// RES, see [`usim_res`].
        res: [u8; 8],
    },
    /// Security Mode Complete.
    SecurityModeComplete,
    /// Attach Complete.
    AttachComplete,
    /// Tracking Area Update Request.
    TrackingAreaUpdateRequest {
        /// The tracking area the UE is now in.
        tai: Tai,
        /// The cell the UE is now in (below [`ECGI_LIMIT`]).
        ecgi: u64,
        /// Whether the UE wants its bearers re-established (ECM-CONNECTED).
        active_flag: bool,
    },
    /// Service Request.
    ServiceRequest {
        /// The serving cell (below [`ECGI_LIMIT`]).
        ecgi: u64,
        /// The eNB's S1-U TEID for the first bearer (later bearers take the next values).
        enb_s1u_teid: u32,
    },
    /// UE Context Release (S1 release to ECM-IDLE).
    UeContextRelease {
        /// S1AP cause.
        cause: u8,
    },
    /// Bearer Resource Modification.
    BearerResourceModification {
        /// `add`: the linked bearer; otherwise the bearer to modify (5..=15).
        ebi: u8,
        /// QoS class identifier (1..=9).
        qci: u8,
        /// Allocation and retention priority level (1..=15).
        arp: u8,
        /// `true`: add a dedicated bearer; `false`: modify bearer `ebi`.
        add: bool,
    },
    /// Detach Request (deletes the UE context).
    DetachRequest {
        /// Whether the UE is switching off.
        switch_off: bool,
    },
    /// Stateless keepalive.
    Echo {
        /// Echoed back.
        nonce: u64,
    },
}

/// A decoded signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Common header.
    pub header: Header,
    /// Type-specific body.
    pub body: SignalBody,
}

/// The body of a response (MME → UE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// Authentication Request (challenge).
    AuthenticationRequest {
        /// RAND.
        rand: [u8; 16],
        /// AUTN.
        autn: [u8; 16],
    },
    /// Authentication Reject (wrong RES; the context is gone).
    AuthenticationReject,
    /// Security Mode Command.
    SecurityModeCommand {
        /// Selected EIA (0..=7).
        integrity_alg: u8,
        /// Selected EEA (0..=7).
        ciphering_alg: u8,
    },
    /// Attach Accept.
    AttachAccept {
        /// The allocated GUTI.
        guti: Guti,
        /// The TAI list (at most [`MAX_TAI_LIST`]).
        tai_list: Vec<Tai>,
        /// Periodic TAU timer, seconds.
        t3412_s: u32,
        /// The UE's IPv4 address (0 for an IPv6-only PDN).
        ue_ip: u32,
        /// The default bearer's EBI.
        ebi: u8,
    },
    /// Attach Reject.
    AttachReject {
        /// EMM cause.
        cause: u8,
    },
    /// EMM Information.
    EmmInformation {
        /// Full network name (UTF-8, at most [`MAX_NAME_LEN`] bytes).
        network_name: String,
    },
    /// Tracking Area Update Accept.
    TauAccept {
        /// The UE's GUTI.
        guti: Guti,
        /// The (possibly new) TAI list.
        tai_list: Vec<Tai>,
    },
    /// Tracking Area Update Reject.
    TauReject {
        /// EMM cause.
        cause: u8,
    },
    /// Service Accept.
    ServiceAccept {
        /// The bearers re-established (each 5..=15, at most [`MAX_EBI_LIST`]).
        ebis: Vec<u8>,
    },
    /// Service Reject.
    ServiceReject {
        /// EMM cause.
        cause: u8,
    },
    /// UE Context Release Complete.
    ReleaseComplete,
    /// Bearer modification accepted.
    BearerModifyAccept {
        /// The bearer added or modified.
        ebi: u8,
        /// Its QCI.
        qci: u8,
    },
    /// Bearer modification rejected.
    BearerModifyReject {
        /// ESM cause.
        cause: u8,
    },
    /// Detach Accept.
    DetachAccept,
    /// Echo Response.
    EchoResponse {
        /// The Echo's nonce.
        nonce: u64,
    },
}

/// A decoded response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Common header (the signal's imsi and txn_id).
    pub header: Header,
    /// Type-specific body.
    pub body: ResponseBody,
}

/// The session key of a subscriber: the IMSI as 8 big-endian bytes.
pub fn session_key(imsi: u64) -> SessionKey {
    SessionKey::copy_from_slice(&imsi.to_be_bytes())
}

/// The USIM side of AKA: a stand-in for Milenage f2, derived with blake3 from the IMSI and
/// RAND. The MME computes XRES with it; the load generator computes RES.
pub fn usim_res(imsi: u64, rand: &[u8; 16]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(b"handoff-vmme/usim-res/v1");
    h.update(&imsi.to_be_bytes());
    h.update(rand);
    let mut out = [0u8; 8];
    h.finalize_xof().fill(&mut out);
    out
}

/// Decodes only the common header: checks the length, version, that the type is a known signal
/// or response type, and the IMSI's domain. Returns the type and the header.
pub fn peek_header(b: &[u8]) -> Result<(u16, Header), MalformedSignal> {
    let mut r = Reader::new(b);
    read_header(&mut r)
}

fn read_header(r: &mut Reader<'_>) -> Result<(u16, Header), MalformedSignal> {
    if let Some(&v) = r.b.first() {
        if v != VERSION {
            return Err(MalformedSignal::Version(v));
        }
    }
    if r.b.len() < HEADER_LEN {
        return Err(MalformedSignal::Truncated {
            needed: HEADER_LEN,
            had: r.b.len(),
        });
    }
    let _version = r.u8()?;
    let msg_type = r.u16()?;
    if !msg::is_signal(msg_type) && !msg::is_response(msg_type) {
        return Err(MalformedSignal::UnknownType(msg_type));
    }
    let imsi = r.u64()?;
    if imsi > MAX_IMSI {
        return Err(MalformedSignal::InvalidField { field: "imsi" });
    }
    let txn_id = r.u32()?;
    Ok((msg_type, Header { imsi, txn_id }))
}

fn write_header(buf: &mut Vec<u8>, msg_type: u16, h: &Header) {
    buf.push(VERSION);
    buf.extend_from_slice(&msg_type.to_be_bytes());
    buf.extend_from_slice(&h.imsi.to_be_bytes());
    buf.extend_from_slice(&h.txn_id.to_be_bytes());
}

impl SignalBody {
    /// This body's message type.
    pub fn msg_type(&self) -> u16 {
        match self {
            Self::AttachRequest { .. } => msg::ATTACH_REQUEST,
            Self::AuthenticationResponse { .. } => msg::AUTHENTICATION_RESPONSE,
            Self::SecurityModeComplete => msg::SECURITY_MODE_COMPLETE,
            Self::AttachComplete => msg::ATTACH_COMPLETE,
            Self::TrackingAreaUpdateRequest { .. } => msg::TRACKING_AREA_UPDATE_REQUEST,
            Self::ServiceRequest { .. } => msg::SERVICE_REQUEST,
            Self::UeContextRelease { .. } => msg::UE_CONTEXT_RELEASE,
            Self::BearerResourceModification { .. } => msg::BEARER_RESOURCE_MODIFICATION,
            Self::DetachRequest { .. } => msg::DETACH_REQUEST,
            Self::Echo { .. } => msg::ECHO,
        }
    }
}

impl Signal {
    /// This signal's message type.
    pub fn msg_type(&self) -> u16 {
        self.body.msg_type()
    }

    /// What the signal does to session state: Attach creates, Detach deletes, Echo is
    /// stateless, everything else updates.
    pub fn kind(&self) -> SignalKind {
        match self.body {
            SignalBody::AttachRequest { .. } => SignalKind::Create,
            SignalBody::DetachRequest { .. } => SignalKind::Delete,
            SignalBody::Echo { .. } => SignalKind::Stateless,
            _ => SignalKind::Update,
        }
    }

    /// Appends the encoding to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        write_header(buf, self.msg_type(), &self.header);
        match &self.body {
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
            } => {
                put_u64(buf, *msisdn);
                put_u64(buf, *imeisv);
                put_u32(buf, *ue_network_capability);
                put_u32(buf, *ms_network_capability);
                put_u16(buf, *drx);
                put_tai(buf, tai);
                put_u64(buf, *ecgi);
                put_str8(buf, apn, MAX_APN_LEN);
                buf.push(*pdn_type as u8);
            }
            SignalBody::AuthenticationResponse { res } => buf.extend_from_slice(res),
            SignalBody::SecurityModeComplete | SignalBody::AttachComplete => {}
            SignalBody::TrackingAreaUpdateRequest {
                tai,
                ecgi,
                active_flag,
            } => {
                put_tai(buf, tai);
                put_u64(buf, *ecgi);
                buf.push(u8::from(*active_flag));
            }
            SignalBody::ServiceRequest { ecgi, enb_s1u_teid } => {
                put_u64(buf, *ecgi);
                put_u32(buf, *enb_s1u_teid);
            }
            SignalBody::UeContextRelease { cause } => buf.push(*cause),
            SignalBody::BearerResourceModification { ebi, qci, arp, add } => {
                buf.extend_from_slice(&[*ebi, *qci, *arp, u8::from(*add)]);
            }
            SignalBody::DetachRequest { switch_off } => buf.push(u8::from(*switch_off)),
            SignalBody::Echo { nonce } => put_u64(buf, *nonce),
        }
    }

    /// Encodes into a fresh vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }

    /// Decodes one whole datagram. A response type is [`MalformedSignal::UnknownType`].
    pub fn decode(b: &[u8]) -> Result<Signal, MalformedSignal> {
        let mut r = Reader::new(b);
        let (t, header) = read_header(&mut r)?;
        let body = match t {
            msg::ATTACH_REQUEST => {
                let msisdn = r.u64()?;
                if msisdn > MAX_MSISDN {
                    return Err(invalid("msisdn"));
                }
                let imeisv = r.u64()?;
                if imeisv > MAX_IMEISV {
                    return Err(invalid("imeisv"));
                }
                let ue_network_capability = r.u32()?;
                let ms_network_capability = r.u32()?;
                let drx = r.u16()?;
                let tai = r.tai()?;
                let ecgi = r.ecgi()?;
                let apn = r.str8(MAX_APN_LEN, "apn", true)?;
                let pdn_type = PdnType::from_u8(r.u8()?).ok_or(invalid("pdn_type"))?;
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
                }
            }
            msg::AUTHENTICATION_RESPONSE => SignalBody::AuthenticationResponse { res: r.array()? },
            msg::SECURITY_MODE_COMPLETE => SignalBody::SecurityModeComplete,
            msg::ATTACH_COMPLETE => SignalBody::AttachComplete,
            msg::TRACKING_AREA_UPDATE_REQUEST => SignalBody::TrackingAreaUpdateRequest {
                tai: r.tai()?,
                ecgi: r.ecgi()?,
                active_flag: r.bool("active_flag")?,
            },
            msg::SERVICE_REQUEST => SignalBody::ServiceRequest {
                ecgi: r.ecgi()?,
                enb_s1u_teid: r.u32()?,
            },
            msg::UE_CONTEXT_RELEASE => SignalBody::UeContextRelease { cause: r.u8()? },
            msg::BEARER_RESOURCE_MODIFICATION => SignalBody::BearerResourceModification {
                ebi: r.ebi()?,
                qci: r.ranged(1, 9, "qci")?,
                arp: r.ranged(1, 15, "arp")?,
                add: r.bool("add")?,
            },
            msg::DETACH_REQUEST => SignalBody::DetachRequest {
                switch_off: r.bool("switch_off")?,
            },
            msg::ECHO => SignalBody::Echo { nonce: r.u64()? },
            other => return Err(MalformedSignal::UnknownType(other)),
        };
        r.finish()?;
        Ok(Signal { header, body })
    }
}

impl ResponseBody {
    /// This body's message type.
    pub fn msg_type(&self) -> u16 {
        match self {
            Self::AuthenticationRequest { .. } => msg::AUTHENTICATION_REQUEST,
            Self::AuthenticationReject => msg::AUTHENTICATION_REJECT,
            Self::SecurityModeCommand { .. } => msg::SECURITY_MODE_COMMAND,
            Self::AttachAccept { .. } => msg::ATTACH_ACCEPT,
            Self::AttachReject { .. } => msg::ATTACH_REJECT,
            Self::EmmInformation { .. } => msg::EMM_INFORMATION,
            Self::TauAccept { .. } => msg::TAU_ACCEPT,
            Self::TauReject { .. } => msg::TAU_REJECT,
            Self::ServiceAccept { .. } => msg::SERVICE_ACCEPT,
            Self::ServiceReject { .. } => msg::SERVICE_REJECT,
            Self::ReleaseComplete => msg::RELEASE_COMPLETE,
            Self::BearerModifyAccept { .. } => msg::BEARER_MODIFY_ACCEPT,
            Self::BearerModifyReject { .. } => msg::BEARER_MODIFY_REJECT,
            Self::DetachAccept => msg::DETACH_ACCEPT,
            Self::EchoResponse { .. } => msg::ECHO_RESPONSE,
        }
    }
}

impl Response {
    /// This response's message type.
    pub fn msg_type(&self) -> u16 {
        self.body.msg_type()
    }

    /// Appends the encoding to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        write_header(buf, self.msg_type(), &self.header);
        match &self.body {
            ResponseBody::AuthenticationRequest { rand, autn } => {
                buf.extend_from_slice(rand);
                buf.extend_from_slice(autn);
            }
            ResponseBody::AuthenticationReject
            | ResponseBody::ReleaseComplete
            | ResponseBody::DetachAccept => {}
            ResponseBody::SecurityModeCommand {
                integrity_alg,
                ciphering_alg,
            } => buf.extend_from_slice(&[*integrity_alg, *ciphering_alg]),
            ResponseBody::AttachAccept {
                guti,
                tai_list,
                t3412_s,
                ue_ip,
                ebi,
            } => {
                put_guti(buf, guti);
                put_tai_list(buf, tai_list);
                put_u32(buf, *t3412_s);
                put_u32(buf, *ue_ip);
                buf.push(*ebi);
            }
            ResponseBody::AttachReject { cause }
            | ResponseBody::TauReject { cause }
            | ResponseBody::ServiceReject { cause }
            | ResponseBody::BearerModifyReject { cause } => buf.push(*cause),
            ResponseBody::EmmInformation { network_name } => {
                put_str8(buf, network_name, MAX_NAME_LEN);
            }
            ResponseBody::TauAccept { guti, tai_list } => {
                put_guti(buf, guti);
                put_tai_list(buf, tai_list);
            }
            ResponseBody::ServiceAccept { ebis } => {
                let ebis = &ebis[..ebis.len().min(MAX_EBI_LIST)];
                buf.push(ebis.len() as u8);
                buf.extend_from_slice(ebis);
            }
            ResponseBody::BearerModifyAccept { ebi, qci } => buf.extend_from_slice(&[*ebi, *qci]),
            ResponseBody::EchoResponse { nonce } => put_u64(buf, *nonce),
        }
    }

    /// Encodes into a fresh vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }

    /// Decodes one whole datagram. A signal type is [`MalformedSignal::UnknownType`].
    pub fn decode(b: &[u8]) -> Result<Response, MalformedSignal> {
        let mut r = Reader::new(b);
        let (t, header) = read_header(&mut r)?;
        let body = match t {
            msg::AUTHENTICATION_REQUEST => ResponseBody::AuthenticationRequest {
                rand: r.array()?,
                autn: r.array()?,
            },
            msg::AUTHENTICATION_REJECT => ResponseBody::AuthenticationReject,
            msg::SECURITY_MODE_COMMAND => ResponseBody::SecurityModeCommand {
                integrity_alg: r.ranged(0, 7, "integrity_alg")?,
                ciphering_alg: r.ranged(0, 7, "ciphering_alg")?,
            },
            msg::ATTACH_ACCEPT => ResponseBody::AttachAccept {
                guti: r.guti()?,
                tai_list: r.tai_list()?,
                t3412_s: r.u32()?,
                ue_ip: r.u32()?,
                ebi: r.ebi()?,
            },
            msg::ATTACH_REJECT => ResponseBody::AttachReject { cause: r.u8()? },
            msg::EMM_INFORMATION => ResponseBody::EmmInformation {
                network_name: r.str8(MAX_NAME_LEN, "network_name", false)?,
            },
            msg::TAU_ACCEPT => ResponseBody::TauAccept {
                guti: r.guti()?,
                tai_list: r.tai_list()?,
            },
            msg::TAU_REJECT => ResponseBody::TauReject { cause: r.u8()? },
            msg::SERVICE_ACCEPT => {
                let n = usize::from(r.u8()?);
                if n > MAX_EBI_LIST {
                    return Err(invalid("ebis"));
                }
                let mut ebis = Vec::with_capacity(n);
                for _ in 0..n {
                    ebis.push(r.ebi()?);
                }
                ResponseBody::ServiceAccept { ebis }
            }
            msg::SERVICE_REJECT => ResponseBody::ServiceReject { cause: r.u8()? },
            msg::RELEASE_COMPLETE => ResponseBody::ReleaseComplete,
            msg::BEARER_MODIFY_ACCEPT => ResponseBody::BearerModifyAccept {
                ebi: r.ebi()?,
                qci: r.ranged(1, 9, "qci")?,
            },
            msg::BEARER_MODIFY_REJECT => ResponseBody::BearerModifyReject { cause: r.u8()? },
            msg::DETACH_ACCEPT => ResponseBody::DetachAccept,
            msg::ECHO_RESPONSE => ResponseBody::EchoResponse { nonce: r.u64()? },
            other => return Err(MalformedSignal::UnknownType(other)),
        };
        r.finish()?;
        Ok(Response { header, body })
    }
}

fn invalid(field: &'static str) -> MalformedSignal {
    MalformedSignal::InvalidField { field }
}

pub(crate) fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_tai(buf: &mut Vec<u8>, t: &Tai) {
    put_u32(buf, t.mcc_mnc);
    put_u16(buf, t.tac);
}

pub(crate) fn put_guti(buf: &mut Vec<u8>, g: &Guti) {
    put_u32(buf, g.mcc_mnc);
    put_u16(buf, g.mme_group_id);
    buf.push(g.mme_code);
    put_u32(buf, g.m_tmsi);
}

pub(crate) fn put_tai_list(buf: &mut Vec<u8>, l: &[Tai]) {
    let l = &l[..l.len().min(MAX_TAI_LIST)];
    buf.push(l.len() as u8);
    for t in l {
        put_tai(buf, t);
    }
}

/// Writes a u8 length prefix and the string, clamped to `max` bytes at a char boundary.
pub(crate) fn put_str8(buf: &mut Vec<u8>, s: &str, max: usize) {
    let s = clamp_str(s, max.min(usize::from(u8::MAX)));
    buf.push(s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn clamp_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or("")
}

/// A bounds-checked big-endian reader. Every read fails with `Truncated` instead of panicking.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedSignal> {
        let end = self.pos.checked_add(n).ok_or(MalformedSignal::Truncated {
            needed: usize::MAX,
            had: self.b.len(),
        })?;
        let s = self
            .b
            .get(self.pos..end)
            .ok_or(MalformedSignal::Truncated {
                needed: end,
                had: self.b.len(),
            })?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], MalformedSignal> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MalformedSignal> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MalformedSignal> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MalformedSignal> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MalformedSignal> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, MalformedSignal> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(invalid(field)),
        }
    }

    pub(crate) fn ranged(
        &mut self,
        lo: u8,
        hi: u8,
        field: &'static str,
    ) -> Result<u8, MalformedSignal> {
        let v = self.u8()?;
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(field))
        }
    }

    pub(crate) fn ebi(&mut self) -> Result<u8, MalformedSignal> {
        self.ranged(MIN_EBI, MAX_EBI, "ebi")
    }

    pub(crate) fn mcc_mnc(&mut self) -> Result<u32, MalformedSignal> {
        let v = self.u32()?;
        if v > MAX_MCC_MNC {
            return Err(invalid("mcc_mnc"));
        }
        Ok(v)
    }

    pub(crate) fn ecgi(&mut self) -> Result<u64, MalformedSignal> {
        let v = self.u64()?;
        if v >= ECGI_LIMIT {
            return Err(invalid("ecgi"));
        }
        Ok(v)
    }

    pub(crate) fn tai(&mut self) -> Result<Tai, MalformedSignal> {
        Ok(Tai {
            mcc_mnc: self.mcc_mnc()?,
            tac: self.u16()?,
        })
    }

    pub(crate) fn guti(&mut self) -> Result<Guti, MalformedSignal> {
        Ok(Guti {
            mcc_mnc: self.mcc_mnc()?,
            mme_group_id: self.u16()?,
            mme_code: self.u8()?,
            m_tmsi: self.u32()?,
        })
    }

    pub(crate) fn tai_list(&mut self) -> Result<Vec<Tai>, MalformedSignal> {
        let n = usize::from(self.u8()?);
        if n > MAX_TAI_LIST {
            return Err(invalid("tai_list"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.tai()?);
        }
        Ok(v)
    }

    /// A u8-length-prefixed string of at most `max` bytes; `ascii` restricts it to printable
    /// ASCII (0x21..=0x7E), otherwise any UTF-8.
    pub(crate) fn str8(
        &mut self,
        max: usize,
        field: &'static str,
        ascii: bool,
    ) -> Result<String, MalformedSignal> {
        let n = usize::from(self.u8()?);
        if n > max {
            return Err(invalid(field));
        }
        let s = self.take(n)?;
        if ascii && !s.iter().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(field));
        }
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| invalid(field))
    }

    pub(crate) fn finish(&self) -> Result<(), MalformedSignal> {
        let rest = self.b.len().saturating_sub(self.pos);
        if rest == 0 {
            Ok(())
        } else {
            Err(MalformedSignal::Trailing(rest))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_documentation() {
        let sig = Signal {
            header: Header {
                imsi: 0x0102_0304_0506,
                txn_id: 0xAABB_CCDD,
            },
            body: SignalBody::AttachRequest {
                msisdn: 1,
                imeisv: 2,
                ue_network_capability: 3,
                ms_network_capability: 4,
                drx: 5,
                tai: Tai { mcc_mnc: 6, tac: 7 },
                ecgi: 8,
                apn: "ab".to_owned(),
                pdn_type: PdnType::Ipv4v6,
            },
        };
        let b = sig.to_bytes();
        assert_eq!(b.len(), HEADER_LEN + 42 + 2);
        assert_eq!(
            &b[..HEADER_LEN],
            &[1, 0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 0xAA, 0xBB, 0xCC, 0xDD]
        );
        assert_eq!(&b[HEADER_LEN + 40..], &[2, b'a', b'b', 3]);
        assert_eq!(peek_header(&b), Ok((msg::ATTACH_REQUEST, sig.header)));

        let echo = Response {
            header: sig.header,
            body: ResponseBody::EchoResponse { nonce: 9 },
        }
        .to_bytes();
        assert_eq!(echo.len(), HEADER_LEN + 8);
        assert_eq!(&echo[1..3], &msg::ECHO_RESPONSE.to_be_bytes());
    }

    #[test]
    fn domain_checks() {
        let mut b = Signal {
            header: Header { imsi: 1, txn_id: 1 },
            body: SignalBody::DetachRequest { switch_off: true },
        }
        .to_bytes();
        b[HEADER_LEN] = 2;
        assert_eq!(
            Signal::decode(&b),
            Err(MalformedSignal::InvalidField {
                field: "switch_off"
            })
        );
        let mut b = Signal {
            header: Header { imsi: 1, txn_id: 1 },
            body: SignalBody::AttachRequest {
                msisdn: 1,
                imeisv: 2,
                ue_network_capability: 3,
                ms_network_capability: 4,
                drx: 5,
                tai: Tai { mcc_mnc: 6, tac: 7 },
                ecgi: 8,
                apn: "a".to_owned(),
                pdn_type: PdnType::Ipv4,
            },
        }
        .to_bytes();
        let apn_byte = HEADER_LEN + 41;
        b[apn_byte] = b' ';
        assert_eq!(
            Signal::decode(&b),
            Err(MalformedSignal::InvalidField { field: "apn" })
        );
        assert_eq!(
            Signal::decode(&[1, 0]),
            Err(MalformedSignal::Truncated {
                needed: HEADER_LEN,
                had: 2
            })
        );
        assert_eq!(
            Signal::decode(&[]),
            Err(MalformedSignal::Truncated {
                needed: HEADER_LEN,
                had: 0
            })
        );
    }
}
