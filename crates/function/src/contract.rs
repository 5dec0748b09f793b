//! The [`Function`] trait and the types it speaks in.

use bytes::Bytes;
use std::fmt;

/// Name of a session inside an instance (an IMSI, an accounting session id, a SIP AoR), as the
/// function's classifier extracts it. Opaque bytes to the framework.
pub type SessionKey = Bytes;

/// What a signal does to session state. The steer routes on this during a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum SignalKind {
    /// Creates the session named by the key (e.g. Attach Request). May also replace an old one.
    Create = 1,
    /// Changes an existing session (e.g. Tracking Area Update).
    Update = 2,
    /// Removes the session (e.g. Detach Request).
    Delete = 3,
    /// Reads or writes no session state (e.g. Echo). Has no key.
    Stateless = 4,
    /// A timer tick injected by the steer; never produced by a classifier.
    Tick = 5,
}

impl SignalKind {
    /// Decodes the wire value; `None` for 0 (reserved as invalid) or unknown values.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Create,
            2 => Self::Update,
            3 => Self::Delete,
            4 => Self::Stateless,
            5 => Self::Tick,
            _ => return None,
        })
    }
}

/// The result of classifying one datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// What the signal does to state.
    pub kind: SignalKind,
    /// The session it concerns; empty for [`SignalKind::Stateless`].
    pub key: SessionKey,
}

/// Why a datagram could not be classified or prepared. Counted and dropped by the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedSignal {
    /// Fewer bytes than the fixed header or a declared field needs.
    #[error("signal truncated: needed {needed} bytes, had {had}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        had: usize,
    },
    /// The encoding version is not one this function supports.
    #[error("unsupported encoding version {0}")]
    Version(u8),
    /// The message type is unknown or not a signal (e.g. a response sent to the service address).
    #[error("unknown message type {0}")]
    UnknownType(u16),
    /// A field holds a value outside its domain.
    #[error("invalid field {field}")]
    InvalidField {
        /// Which field.
        field: &'static str,
    },
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// A stored session could not be decoded (a corrupt or foreign record).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("session record undecodable: {reason}")]
pub struct BadRecord {
    /// What was wrong.
    pub reason: String,
}

/// Output message type, as the function numbers its outputs. The [`Ruleset`] maps it to a class.
pub type MsgType = u16;

/// A message the function emits in answer to a signal or a timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The function's message type, used for classification.
    pub msg_type: MsgType,
    /// The encoded message, sent as one datagram to the client that sent the signal.
    pub bytes: Bytes,
}

/// The steer's stamp on a signal: its sequence number within the instance and the time it was
/// admitted (microseconds since the Unix epoch, as read by the steer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Strictly increasing per instance.
    pub seq: u64,
    /// The only clock a function may read.
    pub now_us: u64,
}

/// A network function type. See the crate docs for the rules; `docs/nf-contract.md` for a guide.
pub trait Function: Send + Sync + 'static {
    /// One session's state, e.g. a UE context.
    type Session: Clone + fmt::Debug + Send + Sync + 'static;
    /// A signal parsed into the shape of the change it makes (the preprocessing result).
    type Prepared: fmt::Debug + Send + Sync + 'static;

    /// The function's name, e.g. `"vmme"`.
    fn name(&self) -> &'static str;

    /// Classifies one inbound datagram. Pure: no state, no clock. Must never panic.
    fn classify(&self, datagram: &[u8]) -> Result<Classified, MalformedSignal>;

    /// Parses a classified datagram into its prepared form. Pure. Must never panic.
    fn prepare(&self, datagram: &[u8]) -> Result<Self::Prepared, MalformedSignal>;

    /// Applies one prepared signal to `session` (`None` when the session does not exist; set it
    /// to `None` to delete, to `Some` to create) and pushes the outputs to `out`. Deterministic.
    fn process(
        &self,
        session: &mut Option<Self::Session>,
        signal: &Self::Prepared,
        stamp: Stamp,
        out: &mut Vec<Output>,
    );

    /// When the session's next timer fires (microseconds, the same clock as [`Stamp::now_us`]),
    /// or `None` if it has none. Derived from the session alone.
    fn deadline_us(&self, session: &Self::Session) -> Option<u64>;

    /// Runs the session's timer because a `Tick` stamped `stamp` reached its deadline. May delete
    /// the session (set `None`) and emit outputs (which have no client to go to and are counted).
    fn on_timer(&self, session: &mut Option<Self::Session>, stamp: Stamp, out: &mut Vec<Output>);

    /// Serialises a session; the framework stores these bytes as the record.
    fn encode_session(&self, session: &Self::Session, buf: &mut Vec<u8>);

    /// Deserialises a record. Must never panic on arbitrary bytes.
    fn decode_session(&self, bytes: &[u8]) -> Result<Self::Session, BadRecord>;

    /// The output classification the function ships with.
    fn default_ruleset(&self) -> crate::Ruleset;

    /// A human name for an output message type, for logs and the ruleset's display.
    fn msg_type_name(&self, msg_type: MsgType) -> &'static str;
}
