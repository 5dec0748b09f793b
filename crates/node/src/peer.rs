//! Connections this node opens to another node (a copy's or a push's destination): connect,
//! say hello as a peer, and read typed answers. A leaf module.

use futures::{SinkExt, StreamExt};
use handoff_wire::{Frame, FrameCodec, Role, VERSION};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A connection to a peer node.
pub(crate) type PeerFramed = Framed<TcpStream, FrameCodec>;

/// Socket buffer of a copy connection at either end (bytes): what the kernel queues between
/// the source's writes and the destination's reads (the copy's own window bounds what is in
/// flight, `copy::COPY_WINDOW`).
pub(crate) const COPY_SOCKET_BUFFER: usize = 1024 * 1024;

/// Longest wait for the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `destination` and says hello as the peer `name` offering `token` (its
/// acknowledgement is skipped by [`answer`]).
pub(crate) async fn connect(
    destination: SocketAddr,
    name: &str,
    token: &str,
) -> Result<PeerFramed, String> {
    let socket = if destination.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    // What the kernel queues ahead of a record the destination asks for is bounded.
    let _ = socket.set_send_buffer_size(COPY_SOCKET_BUFFER as u32);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(destination))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut f = Framed::new(stream, FrameCodec::new());
    f.send(Frame::Hello {
        role: Role::Peer,
        name: name.to_owned(),
        min_version: VERSION,
        max_version: VERSION,
        token: token.to_owned(),
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(f)
}

/// Why a peer's answer is not the expected one.
#[derive(Debug)]
pub(crate) enum PeerError {
    /// The peer refused, with its stable code.
    Refused {
        /// See `handoff_wire::code`.
        code: u16,
        /// For people.
        message: String,
    },
    /// No answer, a broken connection, or an answer that does not parse.
    Failed(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { code, message } => write!(f, "refused ({code}): {message}"),
            Self::Failed(m) => f.write_str(m),
        }
    }
}

/// Reads the peer's typed answer to `what` within `within` (a refusal, a missing field or
/// anything else is an error).
pub(crate) async fn answer<T: serde::de::DeserializeOwned>(
    f: &mut PeerFramed,
    within: Duration,
    what: &str,
) -> Result<T, PeerError> {
    let failed = PeerError::Failed;
    let got = tokio::time::timeout(within, async {
        loop {
            match f.next().await {
                // A copy's destination may still ask for records after the last was sent.
                Some(Ok(Frame::HelloAck { .. } | Frame::Demand { .. })) => continue,
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| failed(format!("no answer to {what}")))?;
    parse_answer(got, what)
}

/// The typed answer to `what` in the frame read (see [`answer`]).
pub(crate) fn parse_answer<T: serde::de::DeserializeOwned>(
    got: Option<Result<Frame, handoff_wire::FrameError>>,
    what: &str,
) -> Result<T, PeerError> {
    let failed = PeerError::Failed;
    match got {
        Some(Ok(Frame::AdminReply(b))) => {
            serde_json::from_slice(&b).map_err(|e| failed(format!("bad answer to {what}: {e}")))
        }
        Some(Ok(Frame::Error { code, message })) => Err(PeerError::Refused { code, message }),
        other => Err(failed(format!("unexpected answer to {what}: {other:?}"))),
    }
}
