//! A client for a node's admin connection (used by the CLI, the demo and tests).

use crate::AdminRequest;
use futures::{SinkExt, StreamExt};
use handoff_state::RecordView;
use handoff_wire::{Frame, FrameCodec, Role, VERSION};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the node failed.
    #[error("node {addr}: {reason}")]
    Transport {
        /// The node.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The node refused the request.
    #[error("node refused the request (code {code}): {message}")]
    Refused {
        /// Stable code.
        code: u16,
        /// Message.
        message: String,
    },
}

/// Longest wait for any one answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// An open admin connection to a node.
pub struct AdminClient {
    addr: SocketAddr,
    framed: Framed<TcpStream, FrameCodec>,
}

impl AdminClient {
    /// Connects and says hello, offering no token.
    pub async fn connect(addr: SocketAddr, name: &str) -> Result<Self, ClientError> {
        Self::connect_with(addr, name, "").await
    }

    /// Connects and says hello, offering `token`.
    pub async fn connect_with(
        addr: SocketAddr,
        name: &str,
        token: &str,
    ) -> Result<Self, ClientError> {
        let t = |reason: String| ClientError::Transport { addr, reason };
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| t("connect timed out".into()))?
            .map_err(|e| t(e.to_string()))?;
        let mut c = Self {
            addr,
            framed: Framed::new(stream, FrameCodec),
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
            Frame::HelloAck { .. } => Ok(c),
            other => Err(c.unexpected(other)),
        }
    }

    fn unexpected(&self, f: Frame) -> ClientError {
        match f {
            Frame::Error { code, message } => ClientError::Refused { code, message },
            other => ClientError::Transport {
                addr: self.addr,
                reason: format!("unexpected frame {other:?}"),
            },
        }
    }

    async fn next(&mut self) -> Result<Frame, ClientError> {
        let addr = self.addr;
        let t = |reason: String| ClientError::Transport { addr, reason };
        match tokio::time::timeout(REPLY_TIMEOUT, self.framed.next()).await {
            Err(_) => Err(t("no reply within the timeout".into())),
            Ok(None) => Err(t("connection closed".into())),
            Ok(Some(Err(e))) => Err(t(e.to_string())),
            Ok(Some(Ok(f))) => Ok(f),
        }
    }

    async fn send(&mut self, req: &AdminRequest) -> Result<(), ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Transport {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        self.framed
            .send(Frame::Admin(body.into()))
            .await
            .map_err(|e| ClientError::Transport {
                addr: self.addr,
                reason: e.to_string(),
            })
    }

    /// Sends a request answered by one JSON reply.
    pub async fn request(&mut self, req: &AdminRequest) -> Result<serde_json::Value, ClientError> {
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

    /// Every record of an instance, sorted by key.
    pub async fn dump(&mut self, instance: &str) -> Result<Vec<RecordView>, ClientError> {
        self.send(&AdminRequest::Dump {
            instance: instance.to_owned(),
        })
        .await?;
        let mut out = Vec::new();
        loop {
            match self.next().await? {
                Frame::DumpRecord { key, seq, bytes } => out.push(RecordView { key, seq, bytes }),
                Frame::DumpEnd { count } => {
                    if count != out.len() as u64 {
                        return Err(ClientError::Transport {
                            addr: self.addr,
                            reason: format!("dump announced {count} records, sent {}", out.len()),
                        });
                    }
                    return Ok(out);
                }
                other => return Err(self.unexpected(other)),
            }
        }
    }
}
