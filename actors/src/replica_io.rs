//! Talking to one replica of a key, local or remote: reads, merges and hints. Local replicas
//! are reached through the partition table, remote ones through the peer's batching link.

use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use crate::context::NodeContext;
use crate::core::codec::decode_object;
use crate::core::version::Object;
use crate::protocol::{KvError, ReplicaMessage, ReplicaObject, ReplicaRead, ReplicaWrite, Wire};
use crate::storage::hint_store::Hint;
use crate::vnode::{MergeOp, VnodeMessage};

/// One call to `peer`'s replica actor for background work (anti-entropy, reaping), with a
/// fixed deadline; transport failures read as `Unavailable`.
pub async fn call_replica<T: Send + 'static>(
    ctx: &NodeContext,
    peer: &str,
    msg: impl FnOnce(ractor::RpcReplyPort<Wire<Result<T, KvError>>>) -> ReplicaMessage,
) -> Result<T, KvError> {
    let replica = ctx
        .peers
        .replica(peer)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?;
    match replica.call(msg, Some(BACKGROUND_CALL_TIMEOUT)).await {
        Ok(CallResult::Success(Wire(Ok(r)))) => r,
        Ok(CallResult::Success(Wire(Err(e)))) => Err(KvError::BadRequest(e.to_string())),
        Ok(CallResult::Timeout) => Err(KvError::Timeout),
        _ => Err(KvError::Unavailable { needed: 1, got: 0 }),
    }
}

/// Deadline of one background call to a peer.
pub const BACKGROUND_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Time left until `deadline`.
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// One replica's answer to a read: its object, or why it gave none.
pub type ReadAnswer = (String, Result<Option<Object>, KvError>);

/// Reads `node`'s copy of a key, local or remote.
pub async fn read_replica(
    ctx: &NodeContext,
    node: String,
    partition: u32,
    key: &[u8],
    deadline: Instant,
) -> ReadAnswer {
    if node == ctx.node_id {
        return (node, ctx.table.read(partition, key));
    }
    let read = read_remote(ctx, &node, partition, key, None, deadline);
    let r = match tokio::time::timeout(remaining(deadline), read).await {
        Ok(Ok(Fetched::Object(o))) => Ok(o),
        Ok(Ok(Fetched::Same)) => Err(KvError::Storage("digest answer to a full read".into())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(KvError::Timeout),
    };
    (node, r)
}

/// A remote replica's answer to a read.
#[derive(Debug)]
pub enum Fetched {
    /// Its object has the digest the read named.
    Same,
    /// Its object, `None` when it holds nothing for the key.
    Object(Option<Object>),
}

/// Reads a remote replica's copy of a key; with `unless`, a replica holding an object of that
/// digest answers [`Fetched::Same`] instead of sending it. Bounded by the peer link's deadline
/// handling only: callers wait under their own deadline.
pub async fn read_remote(
    ctx: &NodeContext,
    node: &str,
    partition: u32,
    key: &[u8],
    unless: Option<u64>,
    deadline: Instant,
) -> Result<Fetched, KvError> {
    let _slot = ctx.peers.acquire(node).ok_or(KvError::Overloaded)?;
    let link = ctx
        .links
        .get(node)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?;
    let req = ReplicaRead {
        partition,
        key: ByteBuf::from(key.to_vec()),
        unless,
    };
    let ReplicaObject { object, same } = link.read(req, deadline).await?;
    if same {
        return Ok(Fetched::Same);
    }
    object
        .map(|bytes| decode_object(&bytes).map_err(|e| KvError::Storage(e.to_string())))
        .transpose()
        .map(Fetched::Object)
}

/// Merges `object` into this node's vnode of `partition`; `Ok` once durable.
pub async fn merge_local(
    ctx: &NodeContext,
    partition: u32,
    key: &[u8],
    object: &[u8],
    deadline: Instant,
) -> Result<(), KvError> {
    let rx = start_merge(ctx, partition, key, object)?;
    match tokio::time::timeout(remaining(deadline), rx).await {
        Ok(r) => r,
        Err(_) => Err(KvError::Timeout),
    }
}

/// Longest a merge waits for a vnode this node hosts but is still starting (a partition it
/// just took on): coordinators start sending as soon as they adopt the placement.
const VNODE_START_WAIT: Duration = Duration::from_secs(3);

/// Hands `object` to this node's vnode of `partition` to merge; the future resolves once the
/// merge is durable, with no deadline of its own.
pub fn start_merge(
    ctx: &NodeContext,
    partition: u32,
    key: &[u8],
    object: &[u8],
) -> Result<impl Future<Output = Result<(), KvError>> + use<>, KvError> {
    let decoded = decode_object(object).map_err(|e| KvError::BadRequest(e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let merge = VnodeMessage::Merge(MergeOp {
        key: key.to_vec(),
        object: decoded,
        reply: tx,
    });
    let table = ctx.table.clone();
    let starting =
        table.vnode(partition).is_none() && ctx.ring.load().hosts(&ctx.node_id, partition);
    Ok(async move {
        if starting {
            table.wait_serving(partition, VNODE_START_WAIT).await;
        }
        table
            .send(partition, merge)
            .map_err(|_| KvError::Unavailable { needed: 1, got: 0 })?;
        rx.await
            .unwrap_or(Err(KvError::Unavailable { needed: 1, got: 0 }))
    })
}

/// Hands a chunk of encoded objects to this node's vnode of `partition` to merge in one go; the
/// future resolves once every one is durable. Refuses the whole chunk if any is undecodable.
pub fn start_ingest(
    ctx: &NodeContext,
    partition: u32,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<impl Future<Output = Result<(), KvError>> + use<>, KvError> {
    let decoded = pairs
        .into_iter()
        .map(|(k, v)| {
            decode_object(&v)
                .map(|o| (k, o, v))
                .map_err(|e| KvError::BadRequest(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = oneshot::channel();
    ctx.table
        .send(partition, VnodeMessage::Ingest(decoded, tx))
        .map_err(|_| KvError::Unavailable { needed: 1, got: 0 })?;
    Ok(async move {
        rx.await
            .unwrap_or(Err(KvError::Unavailable { needed: 1, got: 0 }))
    })
}

/// Merges `object` into `node`'s replica, or with `hint_for` has `node` keep it as a hint for
/// that down replica; `Ok` once it is durable there, a timeout at `deadline`.
pub async fn write_replica(
    ctx: &NodeContext,
    node: &str,
    partition: u32,
    key: &[u8],
    object: &[u8],
    hint_for: Option<&str>,
    deadline: Instant,
) -> Result<(), KvError> {
    let write = replicate(ctx, node, partition, key, object, hint_for, deadline);
    tokio::time::timeout(remaining(deadline), write)
        .await
        .unwrap_or(Err(KvError::Timeout))
}

/// Like [`write_replica`], for callers that wait under their own deadline: a remote write
/// is bounded only by the peer link (see [`PeerLink::read`](crate::peer_link::PeerLink::read)).
pub async fn replicate(
    ctx: &NodeContext,
    node: &str,
    partition: u32,
    key: &[u8],
    object: &[u8],
    hint_for: Option<&str>,
    deadline: Instant,
) -> Result<(), KvError> {
    if node == ctx.node_id {
        return match hint_for {
            None => merge_local(ctx, partition, key, object, deadline).await,
            Some(owner) => {
                let hint = Hint {
                    owner: owner.to_string(),
                    partition,
                    key: key.to_vec(),
                    object: object.to_vec(),
                };
                store_hints(ctx, vec![hint])
                    .await
                    .pop()
                    .unwrap_or(Err(KvError::Timeout))
            }
        };
    }
    let _slot = ctx.peers.acquire(node).ok_or(KvError::Overloaded)?;
    let link = ctx
        .links
        .get(node)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?;
    let req = ReplicaWrite {
        partition,
        key: ByteBuf::from(key.to_vec()),
        object: ByteBuf::from(object.to_vec()),
        hint_for: hint_for.map(str::to_string),
    };
    link.write(req, deadline).await
}

/// Stores hints in this node's hint file (one durable commit); one result per hint.
pub async fn store_hints(ctx: &NodeContext, hints: Vec<Hint>) -> Vec<Result<(), KvError>> {
    let n = hints.len();
    if let Err(e) = ctx.disk.check() {
        return vec![Err(KvError::Storage(e)); n];
    }
    let store = ctx.hints.clone();
    match tokio::task::spawn_blocking(move || store.store(&hints)).await {
        Ok(Ok(results)) => results
            .into_iter()
            .map(|r| r.map_err(KvError::BadRequest))
            .collect(),
        Ok(Err(e)) => vec![Err(KvError::Storage(e.to_string())); n],
        Err(e) => vec![Err(KvError::Storage(e.to_string())); n],
    }
}
