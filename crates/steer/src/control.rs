//! The steer's control listener: a controller (or a move's source node, in the source-driven
//! variant) drives moves over TCP. Hello with the shared token, then one JSON request per
//! `Admin` frame, answered by an `AdminReply` or an `Error`. Never on the signal path.

use crate::service_core::{Answer, Command, RouteStatus};
use crate::{MoveCommand, ServiceHandle, SteerStatsSnapshot};
use futures::{SinkExt, StreamExt};
use handoff_wire::{code, Frame, FrameCodec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// A request to the steer's control listener.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum SteerRequest {
    /// Every service's route and counters.
    Status,
    /// Enters move mode towards `destination` (which must be a prepared shadow).
    BeginMove {
        /// The instance.
        instance: String,
        /// The destination node.
        destination: SocketAddr,
        /// Duplicate creates too, so an abort needs nothing moved back.
        #[serde(default)]
        abort_safe: bool,
    },
    /// Flips the route at the next seq.
    Cutover {
        /// The instance.
        instance: String,
    },
    /// Makes the destination the owner.
    FinishMove {
        /// The instance.
        instance: String,
    },
    /// First step of an abort: answers with the sessions created on the destination.
    AbortBegin {
        /// The instance.
        instance: String,
    },
    /// Second step of an abort: every signal goes to the source from the answered boundary.
    AbortCommit {
        /// The instance.
        instance: String,
    },
    /// Holds signals at the steer (stop-and-copy comparisons only).
    Hold {
        /// The instance.
        instance: String,
    },
    /// Ends a hold, making `to` the instance's node.
    Release {
        /// The instance.
        instance: String,
        /// The new node.
        to: SocketAddr,
    },
    /// After a restart that lost a move's route: links `source` and `destination` again
    /// (which fences off whatever the previous run still had in flight) and answers the last
    /// seq each had applied (null: not reachable in time). Signals stay unrouted.
    Rebind {
        /// The instance.
        instance: String,
        /// The move's source.
        source: SocketAddr,
        /// The move's destination.
        destination: SocketAddr,
    },
    /// After `rebind`: `node` (one of the two) owns the instance; signals go there again, at
    /// seqs above everything either node applied. Answers the boundary.
    Serve {
        /// The instance.
        instance: String,
        /// The owner.
        node: SocketAddr,
    },
}

/// One service in a status reply.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    /// The UDP service address.
    pub listen: SocketAddr,
    /// The route.
    pub route: RouteStatus,
    /// Counters.
    pub stats: SteerStatsSnapshot,
}

/// Most control connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts control connections until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    name: String,
    token: String,
    services: Arc<Vec<ServiceHandle>>,
    incarnation: u64,
    stop: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let ctx = Arc::new((name, token, services, incarnation));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many control connections; refused");
            continue;
        };
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = session(stream, &ctx.0, &ctx.1, &ctx.2, ctx.3) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "control connection closed");
                    }
                }
            }
            drop(permit);
        });
    }
}

fn error(code: u16, message: impl Into<String>) -> Frame {
    Frame::Error {
        code,
        message: message.into(),
    }
}

async fn session(
    stream: TcpStream,
    name: &str,
    token: &str,
    services: &[ServiceHandle],
    incarnation: u64,
) -> Result<(), handoff_wire::FrameError> {
    let mut f = Framed::new(stream, FrameCodec);
    if !handoff_wire::client::accept_admin_hello(&mut f, token, name, HELLO_TIMEOUT).await? {
        return Ok(());
    }
    while let Some(frame) = f.next().await {
        let Frame::Admin(body) = frame? else {
            return f
                .send(error(code::WRONG_FRAME, "expected an admin request"))
                .await;
        };
        let reply = match serde_json::from_slice::<SteerRequest>(&body) {
            Ok(req) => {
                tracing::info!(?req, "control request");
                handle(req, services, incarnation).await
            }
            Err(e) => Err((code::BAD_REQUEST, format!("bad request: {e}"))),
        };
        let frame = match reply {
            Ok(v) => Frame::AdminReply(serde_json::to_vec(&v).unwrap_or_default().into()),
            Err((c, m)) => error(c, m),
        };
        f.send(frame).await?;
    }
    Ok(())
}

type Reply = Result<serde_json::Value, (u16, String)>;

/// Carries out `command` on the service of `instance`; refusals carry their stable code.
async fn ask(
    services: &[ServiceHandle],
    instance: &str,
    command: Command,
) -> Result<Answer, (u16, String)> {
    let svc = services
        .iter()
        .find(|s| s.instance == instance)
        .ok_or_else(|| {
            (
                code::UNKNOWN_INSTANCE,
                format!("no service for instance {instance}"),
            )
        })?;
    let stopped = || (code::BAD_REQUEST, "the service stopped".to_owned());
    let (done, rx) = oneshot::channel();
    svc.commands
        .send(MoveCommand { command, done })
        .await
        .map_err(|_| stopped())?;
    rx.await
        .map_err(|_| stopped())?
        .map_err(|e| (e.code(), e.to_string()))
}

/// Session keys as hex strings (keys are bytes; JSON carries them as text).
pub fn keys_to_hex(keys: &[bytes::Bytes]) -> Vec<String> {
    keys.iter().map(hex::encode).collect()
}

impl SteerRequest {
    /// The instance and the service core's command for a move request (`None` for `status`,
    /// which spans every service).
    pub fn command(&self) -> Option<(&str, Command)> {
        Some(match self {
            Self::Status => return None,
            Self::BeginMove {
                instance,
                destination,
                abort_safe,
            } => (
                instance,
                Command::Begin {
                    destination: *destination,
                    abort_safe: *abort_safe,
                },
            ),
            Self::Cutover { instance } => (instance, Command::Cutover),
            Self::FinishMove { instance } => (instance, Command::Finish),
            Self::AbortBegin { instance } => (instance, Command::AbortBegin),
            Self::AbortCommit { instance } => (instance, Command::AbortCommit),
            Self::Hold { instance } => (instance, Command::Hold),
            Self::Release { instance, to } => (instance, Command::Release { to: *to }),
            Self::Rebind {
                instance,
                source,
                destination,
            } => (
                instance,
                Command::Rebind {
                    source: *source,
                    destination: *destination,
                },
            ),
            Self::Serve { instance, node } => (instance, Command::Serve { node: *node }),
        })
    }
}

/// The reply body of a move request's answer (`None`: an answer that does not fit the
/// request, a bug).
pub fn reply_body(
    req: &SteerRequest,
    answer: Answer,
    incarnation: u64,
) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match (req, answer) {
        (SteerRequest::BeginMove { .. }, Answer::Boundary(b)) => {
            json!({ "first_seq": b.boundary, "last_sent": b.last_sent })
        }
        (
            SteerRequest::Cutover { .. }
            | SteerRequest::AbortCommit { .. }
            | SteerRequest::Serve { .. },
            Answer::Boundary(b),
        ) => json!(b),
        (SteerRequest::FinishMove { instance }, Answer::Done) => json!({ "finished": instance }),
        (SteerRequest::Release { instance, .. }, Answer::Done) => json!({ "released": instance }),
        (SteerRequest::AbortBegin { .. }, Answer::Keys(keys)) => {
            json!({ "created": keys_to_hex(&keys) })
        }
        (SteerRequest::Hold { .. }, Answer::LastSeq(last)) => json!({ "last_seq": last }),
        (SteerRequest::Rebind { .. }, Answer::Rebound(r)) => {
            json!({ "source": r.source, "destination": r.destination, "incarnation": incarnation })
        }
        _ => return None,
    })
}

async fn handle(req: SteerRequest, services: &[ServiceHandle], incarnation: u64) -> Reply {
    let Some((instance, command)) = req.command() else {
        let mut out = Vec::new();
        for s in services {
            let Answer::Status(route) = ask(services, &s.instance, Command::Status).await? else {
                return Err(unexpected());
            };
            out.push(ServiceStatus {
                listen: s.listen,
                route,
                stats: s.stats.snapshot(),
            });
        }
        return Ok(serde_json::json!({ "services": out, "incarnation": incarnation }));
    };
    let answer = ask(services, instance, command).await?;
    reply_body(&req, answer, incarnation).ok_or_else(unexpected)
}

fn unexpected() -> (u16, String) {
    (code::BAD_REQUEST, "the service answered out of turn".into())
}
