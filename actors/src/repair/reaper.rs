//! Tombstone reaping: a deleted key's tombstone is removed only once every replica holds the
//! same tombstone, no node keeps a hint for the partition, and both the tombstone and that
//! agreement (seen by an earlier round and seen again unchanged) are older than the grace
//! period. The second observation matters: a request that read an older copy before the
//! agreement could still write it back (read repair); a grace longer than the longest request
//! deadline plus `request_timeout_ms` outlives every such request.
//!
//! Why every condition: a tombstone is what stops an older copy of the value from coming back
//! through anti-entropy or handoff. Every replica holding the identical tombstone means no
//! replica holds an older value; no hints anywhere means no fallback holds one either; and
//! requiring every member up means no unreachable node can hold one. Each replica removes the
//! key only if its object is still that tombstone, so a write racing the reap is kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use crate::context::NodeContext;
use crate::protocol::{HintsQuery, KeyDigest, KvError, ReapRequest, ReplicaMessage, Wire};
use crate::replica_io::{call_replica, read_replica};
use crate::vnode::VnodeMessage;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Reaps eligible tombstones of `partition` when this node is its first replica (one reaper
/// per partition); returns how many keys were removed on every replica.
pub async fn reap_partition(ctx: &Arc<NodeContext>, partition: u32) -> Result<u64, KvError> {
    let placement = ctx.ring.load();
    // A moving partition keeps its tombstones: a replica streaming in may not have them yet.
    if placement.is_moving(partition) {
        return Ok(0);
    }
    let prefs = placement.ring.preference_list(partition).to_vec();
    if prefs.first() != Some(&ctx.node_id) {
        return Ok(0);
    }
    let members = ctx.peers.view();
    if members.iter().any(|m| !m.up) {
        return Ok(0);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let older_than = now.saturating_sub(ctx.repair.settings.tombstone_grace.as_millis() as u64);
    let (table, chunk) = (ctx.table.clone(), ctx.repair.settings.chunk_keys);
    let candidates =
        tokio::task::spawn_blocking(move || table.tombstones(partition, older_than, chunk))
            .await
            .map_err(|e| KvError::Storage(e.to_string()))??;
    if candidates.is_empty() {
        return Ok(0);
    }
    // No hint for this partition anywhere: a fallback might hold an older value.
    let local_hints = ctx
        .hints
        .count_for_partition(partition)
        .map_err(|e| KvError::Storage(e.to_string()))?;
    if local_hints > 0 {
        return Ok(0);
    }
    for m in members.iter().filter(|m| m.id != ctx.node_id) {
        let q = HintsQuery { partition };
        if call_replica(ctx, &m.id, |p| ReplicaMessage::HintsFor(Wire::new(q), p)).await? > 0 {
            return Ok(0);
        }
    }
    // Every other replica holds the very same tombstone.
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut agreed = Vec::new();
    for (key, digest) in candidates {
        let mut same = true;
        for peer in prefs.iter().filter(|n| **n != ctx.node_id) {
            let (_, r) = read_replica(ctx, peer.clone(), partition, &key, deadline).await;
            if !r?.is_some_and(|o| o.is_deleted() && o.digest() == digest) {
                same = false;
                break;
            }
        }
        if same {
            agreed.push((key, digest));
        }
    }
    let agreed = settled(ctx, partition, agreed);
    if agreed.is_empty() {
        return Ok(0);
    }
    let req = ReapRequest {
        partition,
        keys: agreed
            .iter()
            .map(|(k, d)| KeyDigest {
                key: ByteBuf::from(k.clone()),
                digest: *d,
            })
            .collect(),
    };
    for peer in prefs.iter().filter(|n| **n != ctx.node_id) {
        let r = req.clone();
        call_replica(ctx, peer, |p| ReplicaMessage::Reap(Wire::new(r), p)).await?;
    }
    reap_local(ctx, req).await
}

/// Agreements first seen at least the grace period ago with the same digest; records the new
/// ones and forgets those of `partition` that no longer hold.
fn settled(ctx: &NodeContext, partition: u32, agreed: Vec<(Vec<u8>, u64)>) -> Vec<(Vec<u8>, u64)> {
    let grace = ctx.repair.settings.tombstone_grace;
    let now = Instant::now();
    let mut seen = ctx
        .repair
        .reap_agreements
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let current: HashMap<&[u8], u64> = agreed.iter().map(|(k, d)| (k.as_slice(), *d)).collect();
    seen.retain(|(p, k), (d, _)| *p != partition || current.get(k.as_slice()) == Some(d));
    let mut ready = Vec::new();
    for (key, digest) in agreed {
        match seen.get(&(partition, key.clone())) {
            Some((_, since)) if now.duration_since(*since) >= grace => {
                seen.remove(&(partition, key.clone()));
                ready.push((key, digest));
            }
            Some(_) => {}
            None => {
                seen.insert((partition, key), (digest, now));
            }
        }
    }
    ready
}

/// Removes the named tombstones from this node's vnode of the partition.
pub async fn reap_local(ctx: &NodeContext, req: ReapRequest) -> Result<u64, KvError> {
    let (tx, rx) = oneshot::channel();
    let keys = req
        .keys
        .into_iter()
        .map(|k| (k.key.into_vec(), k.digest))
        .collect();
    ctx.table
        .vnode(req.partition)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?
        .cast(VnodeMessage::Reap(keys, tx))
        .map_err(|_| KvError::Unavailable { needed: 1, got: 0 })?;
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) => Err(KvError::Unavailable { needed: 1, got: 0 }),
        Err(_) => Err(KvError::Timeout),
    }
}
