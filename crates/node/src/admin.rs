//! Admin requests (JSON in `Frame::Admin`) and their replies.

use crate::frames::{error, reply, send, Reader};
use crate::instance::{Control, TaskStats};
use crate::Node;
use futures::StreamExt;
use handoff_function::Ruleset;
use handoff_wire::{code, Frame, FrameError};
use std::time::Duration;
use tokio::sync::mpsc;

/// Records per frame batch in a dump.
const DUMP_BATCH: usize = 256;

/// An operator's request to a node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Node and instance counters.
    Stats,
    /// Creates an instance.
    CreateInstance {
        /// Its name.
        instance: String,
        /// Its function.
        function: String,
    },
    /// Streams every record of an instance (`DumpRecord`… `DumpEnd`).
    Dump {
        /// The instance.
        instance: String,
    },
    /// The instance's output ruleset.
    GetRuleset {
        /// The instance.
        instance: String,
    },
    /// Streams the instance's sessions to another node hosting an empty instance of the same
    /// name (a move's copy); answers with the copy report.
    CopyTo {
        /// The instance.
        instance: String,
        /// The destination node's address.
        destination: std::net::SocketAddr,
        /// Copy order (default hot-first).
        #[serde(default = "default_order")]
        order: handoff_state::CopyOrder,
        /// Limits (default none).
        #[serde(default)]
        plan: handoff_state::CopyPlan,
        /// The manifest is taken only once every seq up to this one is applied (the last seq
        /// the steer stamped before switching to move mode).
        #[serde(default)]
        after_seq: u64,
        /// Copy only these sessions (hex keys; an absent one is sent as a tombstone): an
        /// aborted move's sessions going back. Default: every session.
        #[serde(default)]
        keys: Option<Vec<String>>,
        /// Lead K (ms): the manifest goes at once, the records only after this long (the
        /// destination then already applies creates of new sessions directly).
        #[serde(default)]
        lead_ms: u64,
    },
    /// A serving instance starts expecting the records of these sessions (hex keys) from
    /// another node, buffering their signals until each arrives (an aborted move's sessions
    /// coming back). Answers `{"expecting": n}`.
    ExpectSessions {
        /// The instance.
        instance: String,
        /// The sessions, as hex keys.
        keys: Vec<String>,
    },
    /// Moves an instance hosted here to another node, driven by this node (the source-driven
    /// variant: no controller). Answers with the move's report once it ends.
    Migrate(crate::MigrateRequest),
    /// Stops and removes an instance (a move's drained source, or an aborted destination).
    DropInstance {
        /// The instance.
        instance: String,
    },
    /// Makes an empty instance (created if absent) a move's destination, before the steer
    /// switches: it buffers stateful signals until the source's manifest arrives.
    PrepareShadow {
        /// The instance.
        instance: String,
        /// Its function.
        function: String,
    },
    /// A move destination's counters (null when the instance is not a shadow).
    ShadowStats {
        /// The instance.
        instance: String,
    },
    /// The sessions a move destination got a create for (hex keys; what an abort must bring
    /// back when the steer restarted and lost its own list).
    CreatedKeys {
        /// The instance.
        instance: String,
    },
    /// Ends a move destination's shadow mode once settled; it serves from then on.
    FinishShadow {
        /// The instance.
        instance: String,
        /// Give up on records still awaited first (their sender is gone): those sessions are
        /// taken as absent.
        #[serde(default)]
        force: bool,
    },
    /// Streams the instance's records with seq above `since_seq` (and tombstones of sessions
    /// deleted after it) to a serving instance of the same name on another node, overwriting
    /// its sessions: the stop-and-copy and pre-copy baselines. Answers with the push report.
    Push {
        /// The instance.
        instance: String,
        /// The destination node's address.
        destination: std::net::SocketAddr,
        /// Only records changed after this seq (0: everything; starts logging deletions).
        since_seq: u64,
        /// Wait until the source has applied this seq first.
        #[serde(default)]
        after_seq: u64,
        /// The sequence's last push (stops logging deletions).
        #[serde(default)]
        last: bool,
    },
    /// Replaces the instance's output ruleset; takes effect with the next output.
    SetRuleset {
        /// The instance.
        instance: String,
        /// The new ruleset.
        ruleset: Ruleset,
    },
}

/// One instance in a stats reply.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceInfo {
    /// Name.
    pub instance: String,
    /// Function.
    pub function: String,
    /// Sessions held.
    pub sessions: u64,
    /// Counters.
    pub stats: TaskStats,
}

/// The reply to [`AdminRequest::Stats`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeStats {
    /// Node name.
    pub node: String,
    /// Resident set size of the node process.
    pub rss_bytes: u64,
    /// Hosted instances.
    pub instances: Vec<InstanceInfo>,
}

fn default_order() -> handoff_state::CopyOrder {
    handoff_state::CopyOrder::HotFirst
}

/// Decodes hex session keys from a request.
fn parse_keys(keys: &[String]) -> Result<Vec<handoff_function::SessionKey>, Frame> {
    keys.iter()
        .map(|k| {
            hex::decode(k)
                .map(bytes::Bytes::from)
                .map_err(|e| error(code::BAD_REQUEST, format!("key {k:?}: {e}")))
        })
        .collect()
}

/// Runs a move step on an instance's task and turns its answer into a reply frame.
async fn move_step(
    node: &Node,
    instance: &str,
    make: impl FnOnce(
        tokio::sync::oneshot::Sender<Result<(), handoff_function::runtime::MoveStepError>>,
    ) -> crate::instance::Control,
    ok: serde_json::Value,
) -> Frame {
    let h = match node.instance(instance) {
        Ok(h) => h,
        Err(e) => return error(e.code(), e.to_string()),
    };
    let (done, answer) = tokio::sync::oneshot::channel();
    if !h.control(make(done)).await {
        return error(code::UNKNOWN_INSTANCE, "instance stopped");
    }
    match answer.await {
        Ok(Ok(())) => reply(&ok),
        Ok(Err(e)) => error(code::WRONG_FRAME, e.to_string()),
        Err(_) => error(code::UNKNOWN_INSTANCE, "instance stopped"),
    }
}

pub(crate) async fn session(
    node: &Node,
    mut reader: Reader,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    while let Some(frame) = reader.next().await {
        let Frame::Admin(body) = frame? else {
            send(
                tx,
                vec![error(code::WRONG_FRAME, "expected an admin request")],
            )
            .await?;
            return Ok(());
        };
        let req: AdminRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                send(tx, vec![error(code::BAD_REQUEST, e.to_string())]).await?;
                continue;
            }
        };
        match req {
            AdminRequest::Stats => send(tx, vec![reply(&node.stats())]).await?,
            AdminRequest::CreateInstance { instance, function } => {
                let f = match node.create_instance(&instance, &function) {
                    Ok(()) => reply(&serde_json::json!({ "created": instance })),
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::Dump { instance } => match node.instance(&instance) {
                Ok(h) => {
                    let records = h.table().dump();
                    let count = records.len() as u64;
                    let mut it = records.into_iter().peekable();
                    while it.peek().is_some() {
                        let frames = it
                            .by_ref()
                            .take(DUMP_BATCH)
                            .map(|r| Frame::DumpRecord {
                                key: r.key,
                                seq: r.seq,
                                bytes: r.bytes,
                            })
                            .collect();
                        send(tx, frames).await?;
                    }
                    send(tx, vec![Frame::DumpEnd { count }]).await?;
                }
                Err(e) => send(tx, vec![error(e.code(), e.to_string())]).await?,
            },
            AdminRequest::CopyTo {
                instance,
                destination,
                order,
                plan,
                after_seq,
                keys,
                lead_ms,
            } => {
                let only = match keys.as_deref().map(parse_keys).transpose() {
                    Ok(k) => k,
                    Err(f) => {
                        send(tx, vec![f]).await?;
                        continue;
                    }
                };
                let now = crate::direct::now_us();
                let f = match crate::copy::copy_to(
                    node,
                    &instance,
                    destination,
                    order,
                    plan,
                    after_seq,
                    only,
                    Duration::from_millis(lead_ms.min(handoff_state::MAX_LEAD_MS)),
                    now,
                )
                .await
                {
                    Ok(r) => reply(&r),
                    Err(e) => error(code::BAD_REQUEST, e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::PrepareShadow { instance, function } => {
                if node.instance(&instance).is_err() {
                    if let Err(e) = node.create_instance(&instance, &function) {
                        send(tx, vec![error(e.code(), e.to_string())]).await?;
                        continue;
                    }
                }
                let ok = serde_json::json!({ "prepared": instance });
                let f = move_step(node, &instance, Control::PrepareShadow, ok).await;
                send(tx, vec![f]).await?;
            }
            AdminRequest::ShadowStats { instance } => {
                let f = match node.instance(&instance) {
                    Ok(h) => {
                        let (done, answer) = tokio::sync::oneshot::channel();
                        if h.control(crate::instance::Control::ShadowStats(done)).await {
                            reply(&answer.await.ok().flatten())
                        } else {
                            error(code::UNKNOWN_INSTANCE, "instance stopped")
                        }
                    }
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::CreatedKeys { instance } => {
                let f = match node.instance(&instance) {
                    Ok(h) => {
                        let (done, answer) = tokio::sync::oneshot::channel();
                        if h.control(crate::instance::Control::CreatedKeys(done)).await {
                            match answer.await {
                                Ok(Some(keys)) => {
                                    let hex: Vec<String> = keys.iter().map(hex::encode).collect();
                                    reply(&serde_json::json!({ "created": hex }))
                                }
                                Ok(None) => error(
                                    code::BAD_REQUEST,
                                    "more sessions were created here than the shadow remembers",
                                ),
                                Err(_) => error(code::UNKNOWN_INSTANCE, "instance stopped"),
                            }
                        } else {
                            error(code::UNKNOWN_INSTANCE, "instance stopped")
                        }
                    }
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::FinishShadow { instance, force } => {
                let ok = serde_json::json!({ "serving": instance });
                let step = if force {
                    Control::AbandonAndFinish
                } else {
                    Control::FinishShadow
                };
                let f = move_step(node, &instance, step, ok).await;
                send(tx, vec![f]).await?;
            }
            AdminRequest::ExpectSessions { instance, keys } => {
                let f = match parse_keys(&keys) {
                    Ok(keys) => {
                        let ok = serde_json::json!({ "expecting": keys.len() });
                        move_step(
                            node,
                            &instance,
                            |done| Control::ExpectRecords { keys, done },
                            ok,
                        )
                        .await
                    }
                    Err(f) => f,
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::Migrate(req) => {
                let f = match (node.move_driver(), node.instance(&req.instance)) {
                    (None, _) => error(
                        code::BAD_REQUEST,
                        "this node cannot drive moves (no move driver installed)",
                    ),
                    (_, Err(e)) => error(e.code(), e.to_string()),
                    (Some(d), Ok(h)) => match d
                        .migrate(crate::MigrateRequest {
                            function: h.function().to_owned(),
                            ..req
                        })
                        .await
                    {
                        Ok(v) => reply(&v),
                        Err(e) => error(code::BAD_REQUEST, e),
                    },
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::DropInstance { instance } => {
                let f = match node.drop_instance(&instance) {
                    Ok(()) => reply(&serde_json::json!({ "dropped": instance })),
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::Push {
                instance,
                destination,
                since_seq,
                after_seq,
                last,
            } => {
                let f = match crate::push::push(
                    node,
                    &instance,
                    destination,
                    since_seq,
                    after_seq,
                    last,
                )
                .await
                {
                    Ok(r) => reply(&r),
                    Err(e) => error(code::BAD_REQUEST, e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::GetRuleset { instance } => {
                let f = match node.instance(&instance) {
                    Ok(h) => reply(&h.ruleset().current()),
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::SetRuleset { instance, ruleset } => {
                let f = match node.instance(&instance) {
                    Ok(h) => {
                        h.ruleset().replace(ruleset);
                        tracing::info!(instance, "output ruleset replaced");
                        reply(&serde_json::json!({ "replaced": instance }))
                    }
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
        }
    }
    Ok(())
}
