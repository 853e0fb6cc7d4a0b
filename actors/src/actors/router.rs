//! Router: the client-facing actor. Maps a key to its partition and that partition's vnode,
//! serves reads from the vnode file's latest snapshot, and forwards writes to the vnode.
//!
//! A node runs a small pool of routers (pg group `ringkv.router.<node>`); clients spread their
//! requests over it so decoding and reads use every core.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_bytes::ByteBuf;

use crate::actors::vnode::{VnodeMessage, WriteOp};
use crate::core::limits::Limits;
use crate::core::ring::Ring;
use crate::partition_table::PartitionTable;
use crate::protocol::{
    GetReply, GetRequest, KvError, PingReply, PutReplyPort, PutRequest, RouterMessage, Wire,
    decode_context, encode_context,
};
use crate::storage::vnode_store::VnodeStore;

/// The router actor.
#[derive(Debug, Default)]
pub struct Router;

/// What a router is started with.
pub struct RouterArgs {
    /// This node's id.
    pub node_id: String,
    /// The ring this node serves.
    pub ring: Arc<Ring>,
    /// Local partitions and their vnodes.
    pub table: Arc<PartitionTable>,
    /// Key and pair limits.
    pub limits: Limits,
}

impl Actor for Router {
    type Msg = RouterMessage;
    type State = RouterArgs;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMessage>,
        args: RouterArgs,
    ) -> Result<RouterArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMessage>,
        message: RouterMessage,
        state: &mut RouterArgs,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMessage::Ping(_, reply) => {
                let _ = reply.send(Wire::new(PingReply {
                    node: state.node_id.clone(),
                }));
            }
            RouterMessage::Get(Wire(request), reply) => {
                let result = match request {
                    // A snapshot read of cached pages takes microseconds: cheaper inline than
                    // handing the worker's other tasks to another thread.
                    Ok(req) => get(state, &req),
                    Err(e) => Err(bad_frame("get", e)),
                };
                let _ = reply.send(Wire::new(result));
            }
            RouterMessage::Put(Wire(request), reply) => match request {
                Ok(req) => put(state, req, reply),
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(bad_frame("put", e))));
                }
            },
        }
        Ok(())
    }
}

fn bad_frame(what: &str, e: impl std::fmt::Display) -> KvError {
    tracing::warn!(request = what, error = %e, "dropped a malformed request");
    KvError::BadRequest(format!("malformed {what} request: {e}"))
}

fn get(state: &RouterArgs, req: &GetRequest) -> Result<GetReply, KvError> {
    state.limits.check_key(&req.key)?;
    let partition = state.ring.partition_of(&req.key);
    let db = state
        .table
        .reader(partition)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?;
    let object = VnodeStore::read(&db, &req.key)
        .map_err(|e| KvError::Storage(e.to_string()))?
        .unwrap_or_default();
    Ok(GetReply {
        values: object.values().map(|v| ByteBuf::from(v.to_vec())).collect(),
        context: ByteBuf::from(encode_context(&object.read_context())),
    })
}

fn put(state: &RouterArgs, req: PutRequest, reply: PutReplyPort) {
    let checked = match &req.value {
        Some(v) => state.limits.check_pair(&req.key, v),
        None => state.limits.check_key(&req.key),
    }
    .and_then(|()| req.context.as_ref().map(|c| decode_context(c)).transpose());
    let context = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = reply.send(Wire::new(Err(e)));
            return;
        }
    };
    let partition = state.ring.partition_of(&req.key);
    let Some(vnode) = state.table.vnode(partition) else {
        let _ = reply.send(Wire::new(Err(KvError::Unavailable { needed: 1, got: 0 })));
        return;
    };
    let op = WriteOp {
        key: req.key.into_vec(),
        value: req.value.map(ByteBuf::into_vec),
        context,
        reply,
    };
    if let Err(ractor::MessagingErr::SendErr(VnodeMessage::Write(op))) =
        vnode.cast(VnodeMessage::Write(op))
    {
        let _ = op
            .reply
            .send(Wire::new(Err(KvError::Unavailable { needed: 1, got: 0 })));
    }
}
