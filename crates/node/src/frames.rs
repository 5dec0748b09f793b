//! Helpers every session on an accepted connection uses to read and answer: the reader type,
//! the next request within the node's limits (`docs/wire.md`, "Timeouts"), a long request
//! cancelled when its requester hangs up, and the `Error`/`AdminReply` frames queued on the
//! connection's writer. A leaf module: it imports
//! none of its siblings, so the sessions that use it (admin, copy, push, steer) do not import
//! each other through it.

use handoff_wire::deadline::Stall;
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

/// The next frame of an admin or peer connection within the node's limits
/// ([`crate::NodeLimits::deadlines`]): `Ok(None)` when the peer closed, an error (the
/// connection is closed, the close counted) when a frame begun stalls or the connection
/// stays idle too long.
pub(crate) async fn next_request(
    node: &crate::Node,
    reader: &mut Reader,
) -> Result<Option<Result<Frame, FrameError>>, FrameError> {
    let limits = node.limits().deadlines;
    watched(
        node,
        handoff_wire::deadline::next_within(reader, limits).await,
    )
}

/// Runs `work`, a long request (a copy), while watching the connection it came on: a client
/// that closes the connection (or breaks it) before the answer cancels the work, which is
/// dropped wherever it waits (`None`). A client that sends more meanwhile is alive: the
/// connection is no longer watched for this request.
pub(crate) async fn unless_hung_up<T>(
    reader: &mut Reader,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let hung_up = async {
        let mut byte = [0u8; 1];
        match reader.get_mut().peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = work => Some(r),
        () = hung_up => None,
    }
}

/// Counts a stall's close.
pub(crate) fn watched<T>(node: &crate::Node, r: Result<T, Stall>) -> Result<T, FrameError> {
    node.conns().closes(r)
}
