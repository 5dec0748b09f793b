//! The steer's control listener: a controller (or a move's source node, in the source-driven
//! variant) drives moves over TCP. Hello with the shared token, then one JSON request per
//! `Admin` frame, answered by an `AdminReply` or an `Error`. Never on the signal path.

use crate::service_core::{Answer, Command, RouteStatus};
use crate::{MoveCommand, ServiceHandle, SteerStatsSnapshot};
use futures::SinkExt;
use handoff_wire::deadline::{next_within, Deadlines, StallCounters};
use handoff_wire::{code, Frame, FrameCodec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// A request to the steer's control listener: one variant per operation, each carrying the
/// operation's request type (see [`ops`]); the JSON is `{"op": …, fields…}`. Unknown fields
/// are refused (`BAD_REQUEST`), `status` included.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SteerRequest {
    /// See [`ops::Status`].
    Status(ops::Status),
    /// See [`ops::BeginMove`].
    BeginMove(ops::BeginMove),
    /// See [`ops::Cutover`].
    Cutover(ops::Cutover),
    /// See [`ops::FinishMove`].
    FinishMove(ops::FinishMove),
    /// See [`ops::AbortBegin`].
    AbortBegin(ops::AbortBegin),
    /// See [`ops::AbortCommit`].
    AbortCommit(ops::AbortCommit),
    /// See [`ops::Hold`].
    Hold(ops::Hold),
    /// See [`ops::Release`].
    Release(ops::Release),
    /// See [`ops::Rebind`].
    Rebind(ops::Rebind),
    /// See [`ops::Serve`].
    Serve(ops::Serve),
    /// See [`ops::Recover`].
    Recover(ops::Recover),
}

/// The steer's control operations: each request type, its reply type
/// ([`handoff_wire::rpc::Operation`]) and what it does. Refusal codes: `UNKNOWN_INSTANCE`
/// (no service for the instance), `BAD_REQUEST` (malformed, unknown field, the service
/// stopped), `WRONG_PHASE` (not in this route phase), `ROUTE_LOST`/`ROUTE_LOST_CUT_OVER`
/// (the steer restarted during a move; see `docs/wire.md`).
pub mod ops {
    use super::ServiceStatus;
    use crate::service_core::Boundary;
    use bytes::Bytes;
    use std::net::SocketAddr;

    /// Every service's route and counters.
    #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Status {}

    /// The answer to [`Status`].
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub struct StatusReply {
        /// The steer's run (bumped at every start).
        pub incarnation: u64,
        /// One entry per service.
        pub services: Vec<ServiceStatus>,
        /// Control connections closed because they stalled (`docs/wire.md`, "Timeouts").
        pub control: handoff_wire::deadline::ClosedConnections,
    }

    /// Enters move mode towards `destination` (which must be a prepared shadow).
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BeginMove {
        /// The instance.
        pub instance: String,
        /// The destination node.
        pub destination: SocketAddr,
        /// Duplicate creates too, so an abort needs nothing moved back (default false).
        #[serde(default)]
        pub abort_safe: bool,
        /// The incarnation of the destination's shadow (the one the move prepared): the steer
        /// binds no other. Default: whichever binds first.
        #[serde(default)]
        pub destination_incarnation: Option<u64>,
    }

    /// The answer to [`BeginMove`], once the destination accepted the route.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct BeginMoveReply {
        /// The first seq stamped in move mode.
        pub first_seq: u64,
        /// The last seq sent to the source before it.
        pub last_sent: u64,
    }

    macro_rules! instance_op {
        ($(#[$doc:meta])* $name:ident) => {
            $(#[$doc])*
            #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $name {
                /// The instance.
                pub instance: String,
            }
        };
    }

    instance_op!(
        /// Flips the route at the next seq; asked again after the flip, the same answer.
        Cutover
    );
    instance_op!(
        /// Makes the destination the owner.
        FinishMove
    );
    instance_op!(
        /// First step of an abort: answers the sessions created on the destination; from now
        /// on only these go there.
        AbortBegin
    );
    instance_op!(
        /// Second step of an abort: every signal goes to the source from the answered
        /// boundary (repeatable).
        AbortCommit
    );
    instance_op!(
        /// Holds signals at the steer (stop-and-copy baselines only).
        Hold
    );

    /// The answer to [`FinishMove`].
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct FinishedReply {
        /// The instance.
        pub finished: String,
    }

    /// The answer to [`AbortBegin`]: any number of keys (long lists go as continuations).
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct CreatedReply {
        /// The sessions created on the destination during the move, sorted, as hex.
        #[serde(with = "handoff_wire::rpc::hex_keys")]
        pub created: Vec<Bytes>,
    }

    /// The answer to [`Hold`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct HeldReply {
        /// The last seq stamped.
        pub last_seq: u64,
    }

    /// Ends a hold, making `to` the instance's node.
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Release {
        /// The instance.
        pub instance: String,
        /// The new node.
        pub to: SocketAddr,
    }

    /// The answer to [`Release`].
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct ReleasedReply {
        /// The instance.
        pub released: String,
    }

    /// After a restart that lost a move's route: links `source` and `destination` again
    /// (which fences off whatever the previous run still had in flight) and answers the last
    /// seq each had applied. Signals stay unrouted.
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rebind {
        /// The instance.
        pub instance: String,
        /// The move's source.
        pub source: SocketAddr,
        /// The move's destination.
        pub destination: SocketAddr,
        /// Bind only this incarnation at the source (the one the move worked with). Default:
        /// the first that binds.
        #[serde(default)]
        pub source_incarnation: Option<u64>,
        /// Bind only this incarnation at the destination (the move's shadow). Default: the
        /// first that binds.
        #[serde(default)]
        pub destination_incarnation: Option<u64>,
    }

    /// The answer to [`Rebind`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct ReboundReply {
        /// The last seq the source applied when bound again (`null`: not bound within 10 s).
        #[serde(deserialize_with = "handoff_wire::rpc::required")]
        pub source: Option<u64>,
        /// The same for the destination.
        #[serde(deserialize_with = "handoff_wire::rpc::required")]
        pub destination: Option<u64>,
        /// The steer's run.
        pub incarnation: u64,
    }

    /// After [`Rebind`]: `node` (one of the two) owns the instance; signals go there again,
    /// at seqs above everything either node applied (repeatable).
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Serve {
        /// The instance.
        pub instance: String,
        /// The owner.
        pub node: SocketAddr,
    }

    /// Makes `node` (the route's node, or a move's destination) the owner at once, in any
    /// phase, restarted or not: a crash's way out (see `docs/moves.md`, "When a process
    /// crashes"). `incarnation` accepts a new incarnation of the instance on `node` (what it
    /// holds is all there is); without it only the incarnation the route is bound to. Answers
    /// the boundary and, as `last_sent`, the last seq sent to the side given up. Refusals:
    /// `OFFLINE` (another incarnation, not accepted), `NOT_REACHABLE`, `BAD_REQUEST`.
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Recover {
        /// The instance.
        pub instance: String,
        /// The new owner.
        pub node: SocketAddr,
        /// Accept this incarnation on `node`. Default: only the bound one.
        #[serde(default)]
        pub incarnation: Option<u64>,
    }

    handoff_wire::operations! {
        Status => StatusReply = "status",
        BeginMove => BeginMoveReply = "begin_move",
        Cutover => Boundary = "cutover",
        FinishMove => FinishedReply = "finish_move",
        AbortBegin => CreatedReply = "abort_begin",
        AbortCommit => Boundary = "abort_commit",
        Hold => HeldReply = "hold",
        Release => ReleasedReply = "release",
        Rebind => ReboundReply = "rebind",
        Serve => Boundary = "serve",
        Recover => Boundary = "recover",
    }

    macro_rules! into_request {
        ($($name:ident),*) => {
            $(impl From<$name> for super::SteerRequest {
                fn from(r: $name) -> Self {
                    Self::$name(r)
                }
            })*
        };
    }
    into_request!(
        Status,
        BeginMove,
        Cutover,
        FinishMove,
        AbortBegin,
        AbortCommit,
        Hold,
        Release,
        Rebind,
        Serve,
        Recover
    );
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
    deadlines: Deadlines,
    stop: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let ctx = Arc::new((name, token, services, incarnation));
    let conns = Arc::new(Connections {
        deadlines,
        stalls: StallCounters::default(),
    });
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
        let conns = conns.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = session(stream, &ctx.0, &ctx.1, &ctx.2, ctx.3, &conns) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "control connection closed");
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The limits of control connections and the closes they caused.
struct Connections {
    deadlines: Deadlines,
    stalls: StallCounters,
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
    conns: &Connections,
) -> Result<(), handoff_wire::FrameError> {
    let mut f = Framed::new(stream, FrameCodec::unauthenticated());
    if !handoff_wire::client::accept_admin_hello(&mut f, token, name, HELLO_TIMEOUT).await? {
        return Ok(());
    }
    // Authenticated: requests may now be continued over several frames.
    f.codec_mut()
        .set_max_continued(handoff_wire::MAX_CONTINUED_BODY);
    while let Some(frame) = conns
        .stalls
        .closes(next_within(&mut f, conns.deadlines).await)?
    {
        let Frame::Admin(body) = frame? else {
            return f
                .send(error(code::WRONG_FRAME, "expected an admin request"))
                .await;
        };
        let reply = match serde_json::from_slice::<SteerRequest>(&body) {
            Ok(req) => {
                tracing::info!(?req, "control request");
                handle(req, services, incarnation, conns).await
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
            Self::Status(_) => return None,
            Self::BeginMove(r) => (
                &r.instance,
                Command::Begin {
                    destination: r.destination,
                    abort_safe: r.abort_safe,
                    incarnation: r.destination_incarnation,
                },
            ),
            Self::Cutover(r) => (&r.instance, Command::Cutover),
            Self::FinishMove(r) => (&r.instance, Command::Finish),
            Self::AbortBegin(r) => (&r.instance, Command::AbortBegin),
            Self::AbortCommit(r) => (&r.instance, Command::AbortCommit),
            Self::Hold(r) => (&r.instance, Command::Hold),
            Self::Release(r) => (&r.instance, Command::Release { to: r.to }),
            Self::Rebind(r) => (
                &r.instance,
                Command::Rebind {
                    source: r.source,
                    destination: r.destination,
                    incarnations: (r.source_incarnation, r.destination_incarnation),
                },
            ),
            Self::Serve(r) => (&r.instance, Command::Serve { node: r.node }),
            Self::Recover(r) => (
                &r.instance,
                Command::Recover {
                    node: r.node,
                    incarnation: r.incarnation,
                },
            ),
        })
    }
}

/// The reply body of a move request's answer: the operation's typed reply as JSON (`None`:
/// an answer that does not fit the request, a bug). The shell and the simulation both use it.
pub fn reply_body(
    req: &SteerRequest,
    answer: Answer,
    incarnation: u64,
) -> Option<serde_json::Value> {
    use serde_json::to_value;
    let v = match (req, answer) {
        (SteerRequest::BeginMove(_), Answer::Boundary(b)) => to_value(ops::BeginMoveReply {
            first_seq: b.boundary,
            last_sent: b.last_sent,
        }),
        (
            SteerRequest::Cutover(_)
            | SteerRequest::AbortCommit(_)
            | SteerRequest::Serve(_)
            | SteerRequest::Recover(_),
            Answer::Boundary(b),
        ) => to_value(b),
        (SteerRequest::FinishMove(r), Answer::Done) => to_value(ops::FinishedReply {
            finished: r.instance.clone(),
        }),
        (SteerRequest::Release(r), Answer::Done) => to_value(ops::ReleasedReply {
            released: r.instance.clone(),
        }),
        (SteerRequest::AbortBegin(_), Answer::Keys(created)) => {
            to_value(ops::CreatedReply { created })
        }
        (SteerRequest::Hold(_), Answer::LastSeq(last_seq)) => to_value(ops::HeldReply { last_seq }),
        (SteerRequest::Rebind(_), Answer::Rebound(r)) => to_value(ops::ReboundReply {
            source: r.source,
            destination: r.destination,
            incarnation,
        }),
        _ => return None,
    };
    v.ok()
}

async fn handle(
    req: SteerRequest,
    services: &[ServiceHandle],
    incarnation: u64,
    conns: &Connections,
) -> Reply {
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
        return serde_json::to_value(ops::StatusReply {
            incarnation,
            services: out,
            control: conns.stalls.snapshot(),
        })
        .map_err(|e| (code::BAD_REQUEST, e.to_string()));
    };
    let answer = ask(services, instance, command).await?;
    reply_body(&req, answer, incarnation).ok_or_else(unexpected)
}

fn unexpected() -> (u16, String) {
    (code::BAD_REQUEST, "the service answered out of turn".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_wire::rpc::{request_body, Operation};

    #[test]
    fn every_request_refuses_unknown_fields_status_included() {
        for body in [
            r#"{"op":"status","verbose":true}"#,
            r#"{"op":"cutover","instance":"mme-1","now":true}"#,
            r#"{"op":"begin_move","instance":"mme-1","destination":"127.0.0.1:1","x":0}"#,
        ] {
            let e = serde_json::from_str::<SteerRequest>(body).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{body}: {e}");
        }
        assert_eq!(
            serde_json::from_str::<SteerRequest>(r#"{"op":"status"}"#).unwrap(),
            SteerRequest::Status(ops::Status {})
        );
    }

    #[test]
    fn a_typed_request_is_what_the_listener_reads() {
        let req = ops::Rebind {
            instance: "mme-1".into(),
            source: "127.0.0.1:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
            source_incarnation: None,
            destination_incarnation: None,
        };
        let body = request_body(&req).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["op"], ops::Rebind::OP);
        assert_eq!(
            serde_json::from_slice::<SteerRequest>(&body).unwrap(),
            SteerRequest::Rebind(req)
        );
    }

    #[test]
    fn a_reply_missing_a_field_is_an_error_not_a_default() {
        // `null` is an answer ("not bound in time"); a missing field is not.
        let ok = r#"{"source":5,"destination":null,"incarnation":2}"#;
        let r: ops::ReboundReply = serde_json::from_str(ok).unwrap();
        assert_eq!((r.source, r.destination), (Some(5), None));
        for bad in [
            r#"{"source":5,"incarnation":2}"#,
            r#"{"destination":5,"incarnation":2}"#,
        ] {
            assert!(
                serde_json::from_str::<ops::ReboundReply>(bad).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_str::<ops::BeginMoveReply>(r#"{"first_seq":1}"#).is_err());
        assert!(serde_json::from_str::<ops::CreatedReply>(r#"{"created":["zz"]}"#).is_err());
    }

    #[test]
    fn a_created_list_of_any_length_survives_the_reply_body() {
        let created: Vec<bytes::Bytes> = (0u32..50_000)
            .map(|i| bytes::Bytes::from(i.to_be_bytes().repeat(8)))
            .collect();
        let req = SteerRequest::AbortBegin(ops::AbortBegin {
            instance: "mme-1".into(),
        });
        let v = reply_body(&req, Answer::Keys(created.clone()), 1).unwrap();
        let body = serde_json::to_vec(&v).unwrap();
        assert!(
            body.len() > 3 * handoff_wire::MAX_BODY,
            "well above one frame"
        );
        let back: ops::CreatedReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.created, created);
    }
}
