//! Router: the client-facing actor (pg group `ringkv.router.<node>`). Any node coordinates any
//! key: the router maps the key to its partition and replicas and hands the request to a
//! coordinator task, so no request ever waits behind another in this mailbox.
//!
//! A node runs a small pool of routers; clients spread their requests over it so decoding
//! uses every core.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::context::NodeContext;
use crate::coordinator;
use crate::metrics::Op;
use crate::protocol::{
    BatchReply, BatchRequest, GetReply, GetRequest, KvError, PingReply, PutReply, PutRequest,
    RouterMessage, Wire,
};
use std::time::Instant;

/// The router actor.
#[derive(Debug, Default)]
pub struct Router;

impl Actor for Router {
    type Msg = RouterMessage;
    type State = Arc<NodeContext>;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMessage>,
        ctx: Arc<NodeContext>,
    ) -> Result<Arc<NodeContext>, ActorProcessingErr> {
        Ok(ctx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMessage>,
        message: RouterMessage,
        ctx: &mut Arc<NodeContext>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMessage::Ping(_, reply) => {
                let _ = reply.send(Wire::new(PingReply {
                    node: ctx.node_id.clone(),
                }));
            }
            RouterMessage::Get(Wire(request), reply) => match request {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(bad_frame("get", e))));
                }
                Ok(req) => {
                    let started = Instant::now();
                    if let Some(result) = local_read(ctx, &req) {
                        ctx.metrics
                            .request(Op::Get, result.as_ref().err(), started.elapsed());
                        let _ = reply.send(Wire::new(result));
                    } else {
                        let (ctx, counted) = (ctx.clone(), ctx.clone());
                        tokio::spawn(coordinator::get_fenced(ctx, req, move |r| {
                            counted
                                .metrics
                                .request(Op::Get, r.as_ref().err(), started.elapsed());
                            let _ = reply.send(Wire::new(r));
                        }));
                    }
                }
            },
            RouterMessage::Put(Wire(request), reply) => match request {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(bad_frame("put", e))));
                }
                Ok(req) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(Wire::new(put(ctx, req).await));
                    });
                }
            },
            RouterMessage::Batch(Wire(request), reply) => match request {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(bad_frame("batch", e))));
                }
                Ok(items) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let answers = futures::future::join_all(items.into_iter().map(|item| {
                            let ctx = ctx.clone();
                            async move {
                                match item {
                                    BatchRequest::Get(req) => BatchReply::Get(get(ctx, req).await),
                                    BatchRequest::Put(req) => BatchReply::Put(put(ctx, req).await),
                                }
                            }
                        }))
                        .await;
                        let _ = reply.send(Wire::new(Ok(answers)));
                    });
                }
            },
        }
        Ok(())
    }
}

/// Serves one read of a batch, counted like a lone one.
async fn get(ctx: Arc<NodeContext>, req: GetRequest) -> Result<GetReply, KvError> {
    let started = Instant::now();
    let result = match local_read(&ctx, &req) {
        Some(result) => result,
        None => {
            // Its own task: the coordinator answers before its read repair ends.
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(coordinator::get_fenced(ctx.clone(), req, move |r| {
                let _ = tx.send(r);
            }));
            rx.await
                .unwrap_or(Err(KvError::Unavailable { needed: 1, got: 0 }))
        }
    };
    ctx.metrics
        .request(Op::Get, result.as_ref().err(), started.elapsed());
    result
}

/// Coordinates one write, counted.
async fn put(ctx: Arc<NodeContext>, req: PutRequest) -> Result<PutReply, KvError> {
    let (started, op) = (Instant::now(), Op::of(&req));
    let r = coordinator::put(ctx.clone(), req, true).await;
    ctx.metrics.request(op, r.as_ref().err(), started.elapsed());
    r
}

fn bad_frame(what: &str, e: impl std::fmt::Display) -> KvError {
    tracing::warn!(request = what, error = %e, "dropped a malformed request");
    KvError::BadRequest(format!("malformed {what} request: {e}"))
}

/// A read that needs one replica and finds it on this node is served inline: a snapshot read
/// of cached pages takes microseconds, less than handing it to a task.
fn local_read(ctx: &NodeContext, req: &GetRequest) -> Option<Result<GetReply, KvError>> {
    let level = req.r.unwrap_or(ctx.policy.default_r);
    let placement = ctx.ring.load();
    if level.required(placement.replicas()) != Some(1) {
        return None;
    }
    if let Err(e) = ctx.policy.limits.check_key(&req.key) {
        return Some(Err(e));
    }
    let partition = placement.ring.partition_of(&req.key);
    if !placement.read_set(partition).contains(&ctx.node_id) {
        return None;
    }
    let started = std::time::Instant::now();
    let result = match ctx.table.read(partition, &req.key) {
        // The local vnode is not serving: let the coordinator ask another replica.
        Err(KvError::Unavailable { .. }) => return None,
        r => r.map(|o| coordinator::reply_of(&o.unwrap_or_default())),
    };
    ctx.stats.record(started.elapsed());
    Some(result)
}
