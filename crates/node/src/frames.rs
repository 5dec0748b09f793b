//! Helpers every session on an accepted connection uses to answer: the reader type, and the
//! `Error`/`AdminReply` frames queued on the connection's writer. A leaf module: it imports
//! none of its siblings, so the sessions that use it (admin, copy, push, steer) do not import
//! each other through it.

use handoff_wire::{Frame, FrameCodec, FrameError};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

/// The read half of an accepted connection.
pub(crate) type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>;

/// A refusal with its stable code (`handoff_wire::code`).
pub(crate) fn error(code: u16, message: impl Into<String>) -> Frame {
    Frame::Error {
        code,
        message: message.into(),
    }
}

/// A JSON answer.
pub(crate) fn reply(v: &impl serde::Serialize) -> Frame {
    Frame::AdminReply(serde_json::to_vec(v).unwrap_or_default().into())
}

/// Queues frames on the connection's writer.
pub(crate) async fn send(
    tx: &mpsc::Sender<Vec<Frame>>,
    frames: Vec<Frame>,
) -> Result<(), FrameError> {
    tx.send(frames)
        .await
        .map_err(|_| FrameError::Io("connection writer closed".into()))
}
