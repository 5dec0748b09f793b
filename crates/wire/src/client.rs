//! The client side of a control connection: hello (with token), then JSON requests in
//! `Admin` frames answered by `AdminReply` or `Error`. Nodes, steers and the controller all
//! speak it; [`ControlClient::call`] sends one typed [`Operation`] and reads its typed reply.
//!
//! Which errors close the connection: a [`ClientError::Refused`] leaves it open (the peer
//! answered; the next request may follow), except the hello's refusals (`UNAUTHORIZED`,
//! `VERSION`, `WRONG_FRAME` before the hello), after which the peer closes. A
//! [`ClientError::Transport`] (timeout, framing error, a reply that does not parse as the
//! operation's reply) leaves the connection unusable: drop it and connect again.

use crate::rpc::{request_body, Operation};
use crate::{Frame, FrameCodec, Role, VERSION};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the peer failed.
    #[error("{addr}: {reason}")]
    Transport {
        /// The peer.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The peer refused the request.
    #[error("{addr} refused the request (code {code}): {message}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Stable code (see [`crate::code`]).
        code: u16,
        /// Message.
        message: String,
    },
}

impl ClientError {
    /// Whether the peer answered (as opposed to the connection failing): a refused request
    /// is not worth retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// The stable code of a refusal (see [`crate::code`]); `None` for a transport failure.
    /// Callers match on it, never on the message.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            Self::Transport { .. } => None,
        }
    }
}

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open control connection.
pub struct ControlClient {
    addr: SocketAddr,
    peer: String,
    framed: Framed<TcpStream, FrameCodec>,
    reply_timeout: Duration,
}

impl ControlClient {
    /// Connects, says hello as an admin named `name` offering `token`, and waits for the ack.
    pub async fn connect(addr: SocketAddr, name: &str, token: &str) -> Result<Self, ClientError> {
        let t = |reason: String| ClientError::Transport { addr, reason };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| t("connect timed out".into()))?
            .map_err(|e| t(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let mut c = Self {
            addr,
            peer: String::new(),
            framed: Framed::new(stream, FrameCodec::new()),
            reply_timeout: Duration::from_secs(30),
        };
        c.framed
            .send(Frame::Hello {
                role: Role::Admin,
                name: name.to_owned(),
                min_version: VERSION,
                max_version: VERSION,
                token: token.to_owned(),
            })
            .await
            .map_err(|e| t(e.to_string()))?;
        match c.next().await? {
            Frame::HelloAck { node } => {
                c.peer = node;
                Ok(c)
            }
            other => Err(c.unexpected(other)),
        }
    }

    /// The longest wait for any one reply (default 30 s).
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name the peer gave in its ack.
    pub fn peer_name(&self) -> &str {
        &self.peer
    }

    /// The error for a frame that is not the expected answer.
    pub fn unexpected(&self, f: Frame) -> ClientError {
        match f {
            Frame::Error { code, message } => ClientError::Refused {
                addr: self.addr,
                code,
                message,
            },
            other => ClientError::Transport {
                addr: self.addr,
                reason: format!("unexpected frame {other:?}"),
            },
        }
    }

    /// The next frame from the peer.
    pub async fn next(&mut self) -> Result<Frame, ClientError> {
        let addr = self.addr;
        let t = |reason: String| ClientError::Transport { addr, reason };
        match tokio::time::timeout(self.reply_timeout, self.framed.next()).await {
            Err(_) => Err(t("no reply within the timeout".into())),
            Ok(None) => Err(t("connection closed".into())),
            Ok(Some(Err(e))) => Err(t(e.to_string())),
            Ok(Some(Ok(f))) => Ok(f),
        }
    }

    /// Sends one JSON request without waiting for its answer.
    pub async fn send(&mut self, req: &impl serde::Serialize) -> Result<(), ClientError> {
        let body = serde_json::to_vec(req);
        self.send_body(body).await
    }

    /// Sends one typed request without waiting for its answer.
    pub async fn send_op<O: Operation>(&mut self, req: &O) -> Result<(), ClientError> {
        let body = request_body(req);
        self.send_body(body).await
    }

    async fn send_body(
        &mut self,
        body: Result<Vec<u8>, serde_json::Error>,
    ) -> Result<(), ClientError> {
        let addr = self.addr;
        let t = |reason: String| ClientError::Transport { addr, reason };
        let body = body.map_err(|e| t(e.to_string()))?;
        self.framed
            .send(Frame::Admin(body.into()))
            .await
            .map_err(|e| t(e.to_string()))
    }

    /// Reads the reply of an operation sent with [`Self::send_op`].
    pub async fn reply<O: Operation>(&mut self) -> Result<O::Reply, ClientError> {
        match self.next().await? {
            Frame::AdminReply(b) => {
                serde_json::from_slice(&b).map_err(|e| ClientError::Transport {
                    addr: self.addr,
                    reason: format!("bad reply to {}: {e}", O::OP),
                })
            }
            other => Err(self.unexpected(other)),
        }
    }

    /// Sends a typed request and reads its typed reply: every field of the reply is
    /// required, a refusal carries its stable code.
    pub async fn call<O: Operation>(&mut self, req: &O) -> Result<O::Reply, ClientError> {
        self.send_op(req).await?;
        self.reply::<O>().await
    }

    /// Sends a request answered by one JSON reply (untyped; for tools that print the reply).
    pub async fn request(
        &mut self,
        req: &impl serde::Serialize,
    ) -> Result<serde_json::Value, ClientError> {
        self.send(req).await?;
        match self.next().await? {
            Frame::AdminReply(b) => {
                serde_json::from_slice(&b).map_err(|e| ClientError::Transport {
                    addr: self.addr,
                    reason: format!("bad reply: {e}"),
                })
            }
            other => Err(self.unexpected(other)),
        }
    }
}

/// The server side of a control connection's hello: waits up to `timeout` for an admin hello,
/// checks its token against `required` and its version range, and acks as `name`. `Ok(true)`:
/// the connection may go on; `Ok(false)`: it was refused (the error frame is sent) or closed.
pub async fn accept_admin_hello(
    f: &mut Framed<TcpStream, FrameCodec>,
    required: &str,
    name: &str,
    timeout: Duration,
) -> Result<bool, crate::FrameError> {
    let refuse = |code: u16, message: &str| Frame::Error {
        code,
        message: message.to_owned(),
    };
    let hello = tokio::time::timeout(timeout, f.next())
        .await
        .map_err(|_| crate::FrameError::Io("no hello within the timeout".into()))?;
    let refusal = match hello {
        Some(Ok(Frame::Hello {
            role: Role::Admin,
            token,
            min_version,
            max_version,
            name: peer,
        })) => {
            if !crate::token_matches(required, &token) {
                tracing::warn!(%peer, "control hello refused: wrong token");
                refuse(crate::code::UNAUTHORIZED, "wrong or missing token")
            } else if !(min_version..=max_version).contains(&VERSION) {
                refuse(crate::code::VERSION, "no common protocol version")
            } else {
                f.send(Frame::HelloAck {
                    node: name.to_owned(),
                })
                .await?;
                return Ok(true);
            }
        }
        Some(Ok(_)) => refuse(crate::code::WRONG_FRAME, "expected an admin hello"),
        Some(Err(e)) => return Err(e),
        None => return Ok(false),
    };
    f.send(refusal).await?;
    Ok(false)
}
