//! One simulated UE: what it sends next, and how answers move it along.

use handoff_vmme::{
    msg, usim_res, Header, PdnType, Response, ResponseBody, Signal, SignalBody, Tai,
};
use rand::Rng;

/// One answered transaction, as the UE saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The transaction id.
    pub txn_id: u32,
    /// The signal's bytes (identical on every retransmission).
    pub signal: Vec<u8>,
    /// The first answer's bytes.
    pub answer: Vec<u8>,
}

/// Everything one UE sent that was answered, in order; the oracle's input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UeHistory {
    /// The UE's IMSI.
    pub imsi: u64,
    /// Answered transactions in the order they were sent.
    pub txns: Vec<Transaction>,
    /// A transaction went unanswered: whether it was applied is unknown, so the oracle cannot
    /// compute this UE's state and reports it as unverifiable.
    pub tainted: bool,
}

/// Where the UE is in its procedures, as far as the answers it got tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UeState {
    Detached,
    /// Got the challenge; next: Authentication Response.
    Challenged([u8; 16]),
    /// Got Security Mode Command; next: Security Mode Complete.
    Secured,
    /// Got Attach Accept; next: Attach Complete.
    Accepted,
    Registered {
        connected: bool,
        dedicated: u8,
    },
}

impl UeState {
    /// Whether the next signal continues a procedure (sent at once, as a UE would) rather
    /// than starting a new one (sent when the schedule picks the UE).
    pub(crate) fn mid_procedure(self) -> bool {
        matches!(self, Self::Challenged(_) | Self::Secured | Self::Accepted)
    }
}

pub(crate) struct Ue {
    pub(crate) imsi: u64,
    pub(crate) index: u32,
    pub(crate) next_txn: u32,
    pub(crate) state: UeState,
    pub(crate) history: UeHistory,
}

/// Highest dedicated bearers a simulated UE asks for.
const MAX_DEDICATED: u8 = 3;

impl Ue {
    pub(crate) fn new(imsi: u64, index: u32) -> Self {
        Self {
            imsi,
            index,
            next_txn: 1,
            state: UeState::Detached,
            history: UeHistory {
                imsi,
                ..UeHistory::default()
            },
        }
    }

    fn home_tai(&self) -> Tai {
        Tai {
            mcc_mnc: 1001,
            tac: (self.index % 500) as u16 + 1,
        }
    }

    /// The UE's next signal: a procedure continuation if one is under way, else a new
    /// procedure drawn from the mix for its state.
    pub(crate) fn next_signal(&mut self, rng: &mut impl Rng) -> Signal {
        let txn_id = self.next_txn;
        self.next_txn = self.next_txn.wrapping_add(1).max(1);
        let header = Header {
            imsi: self.imsi,
            txn_id,
        };
        let body = match self.state {
            UeState::Detached => SignalBody::AttachRequest {
                msisdn: 46_700_000_000 + u64::from(self.index),
                imeisv: 3_534_900_000_000_000 + u64::from(self.index),
                ue_network_capability: 0x0F0E,
                ms_network_capability: 0xE500,
                drx: 0x0A00,
                tai: self.home_tai(),
                ecgi: 0x1_0000 + u64::from(self.index % 4096),
                apn: "internet".into(),
                pdn_type: PdnType::Ipv4,
            },
            UeState::Challenged(rand) => SignalBody::AuthenticationResponse {
                res: usim_res(self.imsi, &rand),
            },
            UeState::Secured => SignalBody::SecurityModeComplete,
            UeState::Accepted => SignalBody::AttachComplete,
            UeState::Registered {
                connected,
                dedicated,
            } => {
                let roll: u32 = rng.gen_range(0..100);
                let tau = |rng: &mut dyn rand::RngCore| SignalBody::TrackingAreaUpdateRequest {
                    tai: Tai {
                        mcc_mnc: 1001,
                        tac: rng.gen_range(1..=500),
                    },
                    ecgi: 0x1_0000 + rng.gen_range(0..4096u64),
                    active_flag: connected,
                };
                match (connected, roll) {
                    (_, 0..=3) => SignalBody::DetachRequest { switch_off: false },
                    (_, 4..=13) => SignalBody::Echo { nonce: rng.gen() },
                    (_, 14..=33) => tau(rng),
                    (true, 34..=69) => SignalBody::UeContextRelease { cause: 20 },
                    (true, _) => {
                        if dedicated < MAX_DEDICATED && rng.gen_bool(0.5) {
                            SignalBody::BearerResourceModification {
                                ebi: 5,
                                qci: rng.gen_range(1..=8),
                                arp: rng.gen_range(1..=15),
                                add: true,
                            }
                        } else {
                            SignalBody::BearerResourceModification {
                                ebi: 5,
                                qci: rng.gen_range(5..=9),
                                arp: rng.gen_range(1..=15),
                                add: false,
                            }
                        }
                    }
                    (false, _) => SignalBody::ServiceRequest {
                        ecgi: 0x1_0000 + rng.gen_range(0..4096u64),
                        enb_s1u_teid: rng.gen(),
                    },
                }
            }
        };
        Signal { header, body }
    }

    /// Moves the UE along after the first answer to one of its transactions.
    pub(crate) fn on_answer(&mut self, sent: &Signal, answer: &Response) {
        use ResponseBody as R;
        self.state = match (&answer.body, self.state) {
            (R::AuthenticationRequest { rand, .. }, _) => UeState::Challenged(*rand),
            (R::SecurityModeCommand { .. }, _) => UeState::Secured,
            (R::AttachAccept { .. }, _) => UeState::Accepted,
            (R::EmmInformation { .. }, _) => UeState::Registered {
                connected: true,
                dedicated: 0,
            },
            (R::AuthenticationReject | R::AttachReject { .. } | R::DetachAccept, _) => {
                UeState::Detached
            }
            (R::TauReject { .. } | R::ServiceReject { .. }, _) => UeState::Detached,
            (R::BearerModifyReject { cause }, s) => {
                if *cause == 10 {
                    UeState::Detached
                } else {
                    s
                }
            }
            (R::TauAccept { .. }, UeState::Registered { dedicated, .. }) => {
                let connected = matches!(
                    sent.body,
                    SignalBody::TrackingAreaUpdateRequest {
                        active_flag: true,
                        ..
                    }
                );
                UeState::Registered {
                    connected,
                    dedicated,
                }
            }
            (R::ServiceAccept { .. }, UeState::Registered { dedicated, .. }) => {
                UeState::Registered {
                    connected: true,
                    dedicated,
                }
            }
            (R::ReleaseComplete, UeState::Registered { dedicated, .. }) => UeState::Registered {
                connected: false,
                dedicated,
            },
            (
                R::BearerModifyAccept { .. },
                UeState::Registered {
                    connected,
                    dedicated,
                },
            ) => {
                let added = matches!(
                    sent.body,
                    SignalBody::BearerResourceModification { add: true, .. }
                );
                UeState::Registered {
                    connected,
                    dedicated: dedicated + u8::from(added),
                }
            }
            (_, s) => s,
        };
    }

    /// The UE gave up on a transaction: its context may or may not reflect it, so it starts
    /// over with a fresh attach and is marked unverifiable.
    pub(crate) fn on_lost(&mut self) {
        self.history.tainted = true;
        self.state = UeState::Detached;
    }
}

/// Whether `answer` is the kind of message `signal` can be answered with.
pub(crate) fn answers(signal: u16, answer: u16) -> bool {
    use msg::*;
    match signal {
        ATTACH_REQUEST => answer == AUTHENTICATION_REQUEST || answer == ATTACH_REJECT,
        AUTHENTICATION_RESPONSE => matches!(
            answer,
            SECURITY_MODE_COMMAND | AUTHENTICATION_REJECT | ATTACH_REJECT
        ),
        SECURITY_MODE_COMPLETE => answer == ATTACH_ACCEPT || answer == ATTACH_REJECT,
        ATTACH_COMPLETE => answer == EMM_INFORMATION || answer == ATTACH_REJECT,
        TRACKING_AREA_UPDATE_REQUEST => answer == TAU_ACCEPT || answer == TAU_REJECT,
        SERVICE_REQUEST => answer == SERVICE_ACCEPT || answer == SERVICE_REJECT,
        UE_CONTEXT_RELEASE => answer == RELEASE_COMPLETE || answer == SERVICE_REJECT,
        BEARER_RESOURCE_MODIFICATION => {
            answer == BEARER_MODIFY_ACCEPT || answer == BEARER_MODIFY_REJECT
        }
        DETACH_REQUEST => answer == DETACH_ACCEPT,
        ECHO => answer == ECHO_RESPONSE,
        _ => false,
    }
}
