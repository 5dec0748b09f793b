//! A client for a node's admin connection (used by the CLI, the demo and tests).

use crate::AdminRequest;
use handoff_state::RecordView;
pub use handoff_wire::client::ClientError;
use handoff_wire::client::ControlClient;
use handoff_wire::Frame;
use std::net::SocketAddr;

/// An open admin connection to a node.
pub struct AdminClient {
    inner: ControlClient,
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
        Ok(Self {
            inner: ControlClient::connect(addr, name, token).await?,
        })
    }

    /// The node's name, from its hello ack.
    pub fn node_name(&self) -> &str {
        self.inner.peer_name()
    }

    /// Sets the longest wait for any one reply (a long copy may need more than the default).
    pub fn set_reply_timeout(&mut self, timeout: std::time::Duration) {
        self.inner.set_reply_timeout(timeout);
    }

    /// Sends a typed request and reads its typed reply (see [`crate::ops`]).
    pub async fn call<O: handoff_wire::rpc::Operation>(
        &mut self,
        req: &O,
    ) -> Result<O::Reply, ClientError> {
        self.inner.call(req).await
    }

    /// Sends a request answered by one JSON reply (untyped; for tools that print it).
    pub async fn request(&mut self, req: &AdminRequest) -> Result<serde_json::Value, ClientError> {
        self.inner.request(req).await
    }

    /// Every record of an instance, sorted by key.
    pub async fn dump(&mut self, instance: &str) -> Result<Vec<RecordView>, ClientError> {
        self.inner
            .send(&AdminRequest::Dump(crate::ops::Dump {
                instance: instance.to_owned(),
            }))
            .await?;
        let mut out = Vec::new();
        loop {
            match self.inner.next().await? {
                Frame::DumpRecord { key, seq, bytes } => out.push(RecordView { key, seq, bytes }),
                Frame::DumpEnd { count } => {
                    if count != out.len() as u64 {
                        return Err(ClientError::Transport {
                            addr: self.inner.addr(),
                            reason: format!("dump announced {count} records, sent {}", out.len()),
                        });
                    }
                    return Ok(out);
                }
                other => return Err(self.inner.unexpected(other)),
            }
        }
    }
}
