//! Typed control operations: one request type and one reply type per operation.
//!
//! A control request is a JSON object in a [`crate::Frame::Admin`] whose `"op"` names the
//! operation ([`Operation::OP`]) and whose other fields are the request type's; the answer is
//! a [`crate::Frame::AdminReply`] holding [`Operation::Reply`] as JSON, or a
//! [`crate::Frame::Error`] whose code is one of [`crate::code`]. Every field of a reply is
//! required: a reply missing one is a transport error, never read as a default. Servers
//! refuse unknown request fields (`deny_unknown_fields` on every request) with
//! [`crate::code::BAD_REQUEST`]. Bodies longer than a frame are carried as continuations (see
//! [`crate::FrameCodec`]), so no list in a request or reply is capped by the frame limit.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// One control operation: the request is `Self`, serialized as a JSON object without its
/// `"op"` tag (added by [`request_body`]); the reply is [`Operation::Reply`].
pub trait Operation: Serialize {
    /// The `"op"` tag naming the operation on the wire.
    const OP: &'static str;
    /// What a successful request answers.
    type Reply: Serialize + DeserializeOwned;
}

/// The JSON body of `req`: its fields and `"op": O::OP`.
pub fn request_body<O: Operation>(req: &O) -> Result<Vec<u8>, serde_json::Error> {
    let mut v = serde_json::to_value(req)?;
    match &mut v {
        serde_json::Value::Object(m) => {
            m.insert("op".into(), serde_json::Value::String(O::OP.into()));
        }
        _ => {
            return Err(serde::ser::Error::custom(format!(
                "the request of {} is not a JSON object",
                O::OP
            )))
        }
    }
    serde_json::to_vec(&v)
}

/// Declares request structs as operations: `operations! { Stats => StatsReply = "stats", … }`.
#[macro_export]
macro_rules! operations {
    ($($req:ty => $reply:ty = $op:literal),* $(,)?) => {
        $(impl $crate::rpc::Operation for $req {
            const OP: &'static str = $op;
            type Reply = $reply;
        })*
    };
}

/// For `#[serde(deserialize_with = "handoff_wire::rpc::required")]` on an `Option` field of a
/// reply: the field must be present (`null` for none); serde would otherwise read a missing
/// `Option` field as `None`.
pub fn required<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d)
}

/// Session keys as JSON: a list of lowercase hex strings (`#[serde(with = "handoff_wire::rpc::hex_keys")]`
/// on a `Vec<Bytes>`). A list of any length fits (continuations carry long bodies).
pub mod hex_keys {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes each key as hex.
    pub fn serialize<S: Serializer>(keys: &[Bytes], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(keys.iter().map(hex::encode))
    }

    /// Reads hex keys; a key that is not hex is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bytes>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|k| hex::decode(k).map(Bytes::from))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }
}
