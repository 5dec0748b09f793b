//! The framed protocol spoken over TCP between the steer, nodes and operator tools.
//!
//! Every frame is an 8-byte header and a body (all integers big-endian):
//!
//! ```text
//!  0       2       3       4               8
//!  +-------+-------+-------+---------------+------------------+
//!  | magic | vers  | kind  | body length   | body ...         |
//!  | "hf"  | u8=2  | u8    | u32 (≤ 1 MiB) |                  |
//!  +-------+-------+-------+---------------+------------------+
//! ```
//!
//! Kind 0 is reserved as invalid, so a zeroed buffer is never taken for a frame. The version
//! policy: a peer speaks exactly [`VERSION`] and names the range it accepts in [`Frame::Hello`];
//! a frame with another version is rejected with [`FrameError::Version`], never guessed at.
//! An admin body longer than [`MAX_BODY`] travels as continuation frames (kind 16) that the
//! [`FrameCodec`] reassembles, up to [`MAX_CONTINUED_BODY`]; control operations are typed
//! request/reply pairs ([`rpc::Operation`]). See `docs/wire.md` for each body's layout, every
//! operation and its error codes, and the connection sequences.

#![warn(missing_docs)]

pub mod client;
mod codec;
pub mod deadline;
mod frame;
pub mod rpc;

pub use codec::*;
pub use frame::*;

#[cfg(test)]
mod tests;

/// Whether `offered` matches the `required` shared token (an empty `required` admits anyone).
/// The comparison takes the same time wherever the strings differ.
pub fn token_matches(required: &str, offered: &str) -> bool {
    required.is_empty() || blake3::hash(required.as_bytes()) == blake3::hash(offered.as_bytes())
}
