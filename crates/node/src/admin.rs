//! Admin requests (JSON in `Frame::Admin`) and their replies.

use crate::frames::{error, reply, send, Reader};
use crate::instance::Control;
use crate::ops;
use crate::Node;
use handoff_wire::{code, Frame, FrameError};
use std::time::Duration;
use tokio::sync::mpsc;

/// Records per frame batch in a dump.
const DUMP_BATCH: usize = 256;

/// An operator's request to a node: one variant per operation, carrying its request type
/// (see [`crate::ops`]). The JSON is `{"op": …, fields…}`; unknown fields are refused.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// See [`ops::Stats`].
    Stats(ops::Stats),
    /// See [`ops::CreateInstance`].
    CreateInstance(ops::CreateInstance),
    /// See [`ops::Dump`].
    Dump(ops::Dump),
    /// See [`ops::GetRuleset`].
    GetRuleset(ops::GetRuleset),
    /// See [`ops::CopyTo`].
    CopyTo(ops::CopyTo),
    /// See [`ops::ExpectSessions`].
    ExpectSessions(ops::ExpectSessions),
    /// See [`ops::Migrate`].
    Migrate(ops::Migrate),
    /// See [`ops::DropInstance`].
    DropInstance(ops::DropInstance),
    /// See [`ops::PrepareShadow`].
    PrepareShadow(ops::PrepareShadow),
    /// See [`ops::ShadowStats`].
    ShadowStats(ops::ShadowStats),
    /// See [`ops::CreatedKeysOf`].
    CreatedKeys(ops::CreatedKeysOf),
    /// See [`ops::FinishShadow`].
    FinishShadow(ops::FinishShadow),
    /// See [`ops::Push`].
    Push(ops::Push),
    /// See [`ops::SetRuleset`].
    SetRuleset(ops::SetRuleset),
    /// See [`ops::AbortMigrate`].
    AbortMigrate(ops::AbortMigrate),
    /// See [`ops::PlanCopy`].
    PlanCopy(ops::PlanCopy),
}

macro_rules! into_request {
    ($($variant:ident($name:ty)),* $(,)?) => {
        $(impl From<$name> for AdminRequest {
            fn from(r: $name) -> Self {
                Self::$variant(r)
            }
        })*
    };
}
into_request!(
    Stats(ops::Stats),
    CreateInstance(ops::CreateInstance),
    Dump(ops::Dump),
    GetRuleset(ops::GetRuleset),
    CopyTo(ops::CopyTo),
    ExpectSessions(ops::ExpectSessions),
    Migrate(ops::Migrate),
    DropInstance(ops::DropInstance),
    PrepareShadow(ops::PrepareShadow),
    ShadowStats(ops::ShadowStats),
    CreatedKeys(ops::CreatedKeysOf),
    FinishShadow(ops::FinishShadow),
    Push(ops::Push),
    SetRuleset(ops::SetRuleset),
    AbortMigrate(ops::AbortMigrate),
    PlanCopy(ops::PlanCopy),
);

/// Gives up on a shadow's awaited records and ends its shadow mode; the reply names the
/// sessions given up (lost with the move's source).
async fn abandon_and_finish(node: &Node, instance: &str) -> Frame {
    let h = match node.instance(instance) {
        Ok(h) => h,
        Err(e) => return error(e.code(), e.to_string()),
    };
    let (done, answer) = tokio::sync::oneshot::channel();
    if !h.control(Control::AbandonAndFinish(done)).await {
        return error(code::UNKNOWN_INSTANCE, "instance stopped");
    }
    match answer.await {
        Ok(Ok(abandoned)) => reply(&ops::Serving {
            serving: instance.to_owned(),
            abandoned,
        }),
        Ok(Err(e)) => error(code::WRONG_PHASE, e.to_string()),
        Err(_) => error(code::UNKNOWN_INSTANCE, "instance stopped"),
    }
}

/// Runs a move step on an instance's task and turns its answer into a reply frame.
async fn move_step(
    node: &Node,
    instance: &str,
    make: impl FnOnce(
        tokio::sync::oneshot::Sender<Result<(), handoff_function::runtime::MoveStepError>>,
    ) -> crate::instance::Control,
    ok: impl serde::Serialize,
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
        Ok(Err(e)) => error(code::WRONG_PHASE, e.to_string()),
        Err(_) => error(code::UNKNOWN_INSTANCE, "instance stopped"),
    }
}

pub(crate) async fn session(
    node: &Node,
    mut reader: Reader,
    tx: &mpsc::Sender<Vec<Frame>>,
) -> Result<(), FrameError> {
    while let Some(frame) = crate::frames::next_request(node, &mut reader).await? {
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
            AdminRequest::Stats(ops::Stats {}) => send(tx, vec![reply(&node.stats())]).await?,
            AdminRequest::CreateInstance(ops::CreateInstance { instance, function }) => {
                let f = match node.create_instance(&instance, &function) {
                    Ok(()) => reply(&ops::Created { created: instance }),
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::Dump(ops::Dump { instance }) => match node.instance(&instance) {
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
            AdminRequest::CopyTo(ops::CopyTo {
                instance,
                destination,
                order,
                plan,
                after_seq,
                keys: only,
                lead_ms,
                move_tag,
                incarnation,
            }) => {
                let now = crate::direct::now_us();
                let checked = match node.instance(&instance) {
                    Ok(h) if incarnation.is_some_and(|i| i != h.incarnation()) => Err(error(
                        code::FOREIGN,
                        format!(
                            "instance {instance} is incarnation {}, not {}: the node restarted or \
                             the instance was created again",
                            h.incarnation(),
                            incarnation.unwrap_or_default()
                        ),
                    )),
                    Ok(h) => {
                        if only.is_none() {
                            if let Some(tag) = move_tag.clone() {
                                h.mark(|m| m.leaving = Some(tag));
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(error(e.code(), e.to_string())),
                };
                if let Err(f) = checked {
                    send(tx, vec![f]).await?;
                    continue;
                }
                let full = only.is_none();
                let copy = crate::copy::copy_to(
                    node,
                    &instance,
                    destination,
                    order,
                    plan,
                    after_seq,
                    only,
                    Duration::from_millis(lead_ms.min(handoff_state::MAX_LEAD_MS)),
                    now,
                );
                // A requester that hangs up cancels a move's full copy (its driver aborting).
                // A copy of listed sessions (an abort's way back) runs to its end: a repeat
                // of it is refused while it runs, so only it can still bring them back.
                let copied = if full {
                    match crate::frames::unless_hung_up(&mut reader, copy).await {
                        Some(copied) => copied,
                        None => return Ok(()),
                    }
                } else {
                    copy.await
                };
                let f = match copied {
                    Ok(r) => reply(&r),
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::PrepareShadow(ops::PrepareShadow {
                instance,
                function,
                move_tag,
            }) => {
                let h = match node.instance(&instance) {
                    // A repeat of this move's prepare, or an instance that never served (no
                    // steer ever sent it a signal, not even a tick): it may become the shadow.
                    Ok(h)
                        if h.marks()
                            .prepared_by
                            .is_some_and(|t| Some(&t) == move_tag.as_ref())
                            || (h.applied_seq() == 0 && h.table().is_empty()) =>
                    {
                        h
                    }
                    Ok(h) => {
                        let f = error(
                            code::FOREIGN,
                            format!(
                                "{instance} is already hosted here (incarnation {}, {} sessions, \
                                 applied seq {}) and was not prepared by this move: a shadow \
                                 must start empty; left alone",
                                h.incarnation(),
                                h.table().len(),
                                h.applied_seq()
                            ),
                        );
                        send(tx, vec![f]).await?;
                        continue;
                    }
                    Err(_) => {
                        match node.create_instance_marked(&instance, &function, move_tag.clone()) {
                            Ok(h) => h,
                            Err(e) => {
                                send(tx, vec![error(e.code(), e.to_string())]).await?;
                                continue;
                            }
                        }
                    }
                };
                let ok = ops::Prepared {
                    prepared: instance.clone(),
                    incarnation: h.incarnation(),
                };
                let f = move_step(node, &instance, Control::PrepareShadow, ok).await;
                // An existing empty instance made this move's shadow is the move's to clean
                // up (it held nothing); one that refused stays unmarked.
                if matches!(f, Frame::AdminReply(_)) && move_tag.is_some() {
                    h.mark(|m| {
                        if m.prepared_by.is_none() {
                            m.prepared_by = move_tag.clone();
                        }
                    });
                }
                send(tx, vec![f]).await?;
            }
            AdminRequest::ShadowStats(ops::ShadowStats { instance }) => {
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
            AdminRequest::CreatedKeys(ops::CreatedKeysOf { instance }) => {
                let f = match node.instance(&instance) {
                    Ok(h) => {
                        let (done, answer) = tokio::sync::oneshot::channel();
                        if h.control(crate::instance::Control::CreatedKeys(done)).await {
                            match answer.await {
                                Ok(Some(created)) => reply(&ops::CreatedKeys { created }),
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
            AdminRequest::FinishShadow(ops::FinishShadow { instance, force }) => {
                let f = if force {
                    abandon_and_finish(node, &instance).await
                } else {
                    let ok = ops::Serving {
                        serving: instance.clone(),
                        abandoned: Vec::new(),
                    };
                    move_step(node, &instance, Control::FinishShadow, ok).await
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::ExpectSessions(ops::ExpectSessions { instance, keys }) => {
                let ok = ops::Expecting {
                    expecting: keys.len() as u64,
                };
                let f = move_step(
                    node,
                    &instance,
                    |done| Control::ExpectRecords { keys, done },
                    ok,
                )
                .await;
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
            AdminRequest::DropInstance(ops::DropInstance {
                instance,
                move_tag,
                incarnation,
            }) => {
                let f = match node.drop_instance_for(&instance, move_tag.as_deref(), incarnation) {
                    Ok(()) => reply(&ops::Dropped { dropped: instance }),
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::Push(ops::Push {
                instance,
                destination,
                since_seq,
                after_seq,
                last,
            }) => {
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
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::AbortMigrate(ops::AbortMigrate { instance }) => {
                let f = crate::abort_migrate(node, instance);
                send(tx, vec![f]).await?;
            }
            AdminRequest::PlanCopy(req) => {
                let f = crate::plan_copy(node, &req);
                send(tx, vec![f]).await?;
            }
            AdminRequest::GetRuleset(ops::GetRuleset { instance }) => {
                let f = match node.instance(&instance) {
                    Ok(h) => reply(&h.ruleset().current()),
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
            AdminRequest::SetRuleset(ops::SetRuleset { instance, ruleset }) => {
                let f = match node.instance(&instance) {
                    Ok(h) => {
                        h.ruleset().replace(ruleset);
                        tracing::info!(instance, "output ruleset replaced");
                        reply(&ops::Replaced { replaced: instance })
                    }
                    Err(e) => error(e.code(), e.to_string()),
                };
                send(tx, vec![f]).await?;
            }
        }
    }
    Ok(())
}
