//! Anti-entropy exchanges: compare one partition's merkle tree with another replica's, walk
//! down only the differing subtrees, list the keys of the differing segments on both sides,
//! and repair only the differing keys, in bounded chunks at a bounded rate.
//!
//! A repair merges both copies and writes the join back to whichever side lacked something,
//! so it is idempotent and never revives a superseded value or a deleted key: a tombstone is
//! an ordinary version that wins over what it superseded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_bytes::ByteBuf;

use crate::context::NodeContext;
use crate::core::codec::encode_object;
use crate::core::merkle::{Exchange, MerkleTree, Step, diff_keys};
use crate::core::version::Object;
use crate::protocol::{
    AaePartition, AaeRound, KeyDigest, KeyListing, KvError, ReplicaMessage, SegmentRequest,
    TreeRequest, Wire,
};
use crate::repair::reaper;
use crate::replica_io::{call_replica, merge_local, read_replica, write_replica};
use crate::storage::vnode_store::DigestPage;

/// Keys per page of a key listing, bounding one message whatever the partition's size.
const LISTING_PAGE: usize = 4096;
/// Deadline of one anti-entropy message.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-partition exchange figures, shared by the scheduler, the admin actor and rounds.
#[derive(Debug, Default)]
pub struct AaeStatus {
    parts: Mutex<HashMap<u32, AaePartition>>,
}

impl AaeStatus {
    fn record(&self, partition: u32, repaired: u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let e = parts.entry(partition).or_default();
        e.partition = partition;
        e.last_exchange_ms = Some(now);
        e.exchanges += 1;
        e.keys_repaired += repaired;
    }

    /// The figures of `partition`, with the root hash filled in by the caller.
    pub fn of(&self, partition: u32) -> AaePartition {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        parts.get(&partition).cloned().unwrap_or(AaePartition {
            partition,
            ..Default::default()
        })
    }
}

/// The replicas this node exchanges `partition` with: those up with a higher id, so each pair
/// of replicas is exchanged by exactly one of its two nodes.
/// A moving partition has none: its new replicas end their transfer with an exchange of
/// their own.
pub fn partners(ctx: &NodeContext, partition: u32) -> Vec<String> {
    let placement = ctx.ring.load();
    if placement.is_moving(partition) {
        return Vec::new();
    }
    placement
        .ring
        .preference_list(partition)
        .iter()
        .filter(|n| n.as_str() > ctx.node_id.as_str() && ctx.peers.is_up(n))
        .cloned()
        .collect()
}

/// The merkle segments of `partition` whose leaves differ between this node and `peer`.
async fn differing_segments(
    ctx: &NodeContext,
    partition: u32,
    peer: &str,
    tree: &MerkleTree,
) -> Result<Vec<u32>, KvError> {
    let mut exchange = Exchange::start(tree);
    loop {
        let req = TreeRequest {
            partition,
            segments: exchange.segments(),
            level: exchange.level(),
            indices: exchange.indices().to_vec(),
        };
        let theirs =
            call_replica(ctx, peer, |p| ReplicaMessage::AaeTree(Wire::new(req), p)).await?;
        match exchange.answer(tree, &theirs) {
            Ok(Step::Ask(next)) => exchange = next,
            Ok(Step::Done(segments)) => return Ok(segments),
            Err(e) => return Err(KvError::BadRequest(e.to_string())),
        }
    }
}

/// A page of keys and digests of `wanted` segments on this node, strictly after `after`.
async fn local_listing(
    ctx: &Arc<NodeContext>,
    partition: u32,
    segments: u32,
    wanted: Vec<u32>,
    after: Option<Vec<u8>>,
) -> Result<DigestPage, KvError> {
    let table = ctx.table.clone();
    tokio::task::spawn_blocking(move || {
        table.segment_digests(partition, segments, &wanted, after.as_deref(), LISTING_PAGE)
    })
    .await
    .map_err(|e| KvError::Storage(e.to_string()))?
}

/// The end of a page pair: the smaller last key of the pages that have more to come (`None`
/// when neither has: the pair covers the rest of the key space).
fn page_end(
    mine: &(Vec<(Vec<u8>, u64)>, bool),
    theirs: &(Vec<(Vec<u8>, u64)>, bool),
) -> Option<Vec<u8>> {
    [mine, theirs]
        .into_iter()
        .filter(|(keys, more)| *more && !keys.is_empty())
        .filter_map(|(keys, _)| keys.last().map(|(k, _)| k.clone()))
        .min()
}

/// Exchanges `partition` with `peer` and repairs what differs; returns the keys repaired.
pub async fn exchange(
    ctx: &Arc<NodeContext>,
    partition: u32,
    peer: &str,
    chunk: usize,
    keys_per_sec: u32,
) -> Result<u64, KvError> {
    let tree = ctx
        .table
        .tree(partition)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?;
    let segments = differing_segments(ctx, partition, peer, &tree).await?;
    let started = Instant::now();
    let mut repaired: u64 = 0;
    if segments.is_empty() {
        ctx.repair.aae.record(partition, 0);
        return Ok(0);
    }
    // Both sides list the differing segments in pages, in key order, resuming after the end
    // of the previous pair of pages: one pass over each file in all.
    let mut after: Option<Vec<u8>> = None;
    loop {
        let req = SegmentRequest {
            partition,
            segments: tree.segments(),
            wanted: segments.clone(),
            after: after.clone().map(ByteBuf::from),
            limit: LISTING_PAGE as u32,
        };
        let listing =
            call_replica(ctx, peer, |p| ReplicaMessage::AaeKeys(Wire::new(req), p)).await?;
        let theirs: DigestPage = (
            listing
                .keys
                .into_iter()
                .map(|KeyDigest { key, digest }| (key.into_vec(), digest))
                .collect(),
            listing.more,
        );
        let mine = local_listing(
            ctx,
            partition,
            tree.segments(),
            segments.clone(),
            after.clone(),
        )
        .await?;
        let end = page_end(&mine, &theirs);
        let within = |(k, _): &&(Vec<u8>, u64)| end.as_ref().is_none_or(|e| k <= e);
        let mine_page: Vec<(Vec<u8>, u64)> = mine.0.iter().filter(within).cloned().collect();
        let theirs_page: Vec<(Vec<u8>, u64)> = theirs.0.iter().filter(within).cloned().collect();
        let keys = diff_keys(&mine_page, &theirs_page);
        for batch in keys.chunks(chunk.max(1)) {
            repaired += repair_keys(ctx, partition, peer, batch).await?;
            // Bounded rate: this node's repairs so far may not run ahead of the budget.
            let due = Duration::from_secs_f64(repaired as f64 / f64::from(keys_per_sec.max(1)));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        match end {
            Some(e) => after = Some(e),
            None => break,
        }
    }
    ctx.repair.aae.record(partition, repaired);
    Ok(repaired)
}

/// Joins both copies of each key and writes the join to whichever side lacked part of it.
async fn repair_keys(
    ctx: &Arc<NodeContext>,
    partition: u32,
    peer: &str,
    keys: &[Vec<u8>],
) -> Result<u64, KvError> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    let reads = keys
        .iter()
        .map(|k| read_replica(ctx, peer.to_string(), partition, k, deadline));
    let remote = futures::future::join_all(reads).await;
    let mut writes = Vec::new();
    for (key, (_, theirs)) in keys.iter().zip(remote) {
        let theirs = theirs?.unwrap_or_default();
        let mine = ctx.table.read(partition, key)?.unwrap_or_default();
        let mut joined = mine.clone();
        joined.merge(&theirs, ctx.policy.conflict);
        if joined == Object::default() {
            continue;
        }
        let bytes = encode_object(&joined);
        let (to_peer, to_me) = (joined != theirs, joined != mine);
        if to_peer || to_me {
            writes.push((key.clone(), bytes, to_peer, to_me));
        }
    }
    let n = writes.len() as u64;
    let applied = writes
        .iter()
        .map(|(key, bytes, to_peer, to_me)| async move {
            if *to_peer {
                write_replica(ctx, peer, partition, key, bytes, None, deadline).await?;
            }
            if *to_me {
                merge_local(ctx, partition, key, bytes, deadline).await?;
            }
            Ok::<(), KvError>(())
        });
    for r in futures::future::join_all(applied).await {
        r?;
    }
    Ok(n)
}

/// Exchanges every local partition with each of its partners, one exchange at a time.
pub async fn round(ctx: &Arc<NodeContext>, chunk: usize, keys_per_sec: u32) -> AaeRound {
    let started = Instant::now();
    let mut out = AaeRound {
        node: ctx.node_id.clone(),
        ..Default::default()
    };
    for partition in ctx.ring.load().ring.partitions_of(&ctx.node_id) {
        for peer in partners(ctx, partition) {
            match exchange(ctx, partition, &peer, chunk, keys_per_sec).await {
                Ok(n) => {
                    out.exchanges += 1;
                    out.keys_repaired += n;
                }
                Err(e) => out
                    .errors
                    .push(format!("partition {partition} with {peer}: {e}")),
            }
        }
        match reaper::reap_partition(ctx, partition).await {
            Ok(n) => out.tombstones_reaped += n,
            Err(e) => out
                .errors
                .push(format!("partition {partition} tombstones: {e}")),
        }
    }
    out.millis = started.elapsed().as_millis() as u64;
    out
}

/// This node's answer to a peer's tree question.
pub fn answer_tree(ctx: &NodeContext, req: &TreeRequest) -> Result<Vec<u64>, KvError> {
    let tree = ctx
        .table
        .tree(req.partition)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?;
    if tree.segments() != req.segments {
        return Err(KvError::BadRequest(format!(
            "merkle tree shape differs: {} segments here, {} asked",
            tree.segments(),
            req.segments
        )));
    }
    tree.hashes(req.level, &req.indices)
        .ok_or_else(|| KvError::BadRequest("merkle node out of range".into()))
}

/// This node's answer to a peer's key listing.
pub async fn answer_keys(
    ctx: &Arc<NodeContext>,
    req: SegmentRequest,
) -> Result<KeyListing, KvError> {
    if req.wanted.len() > req.segments as usize {
        return Err(KvError::BadRequest(
            "more segments asked than the tree has".into(),
        ));
    }
    let after = req.after.map(ByteBuf::into_vec);
    let (keys, more) = local_listing(ctx, req.partition, req.segments, req.wanted, after).await?;
    Ok(KeyListing {
        keys: keys
            .into_iter()
            .map(|(key, digest)| KeyDigest {
                key: ByteBuf::from(key),
                digest,
            })
            .collect(),
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], more: bool) -> DigestPage {
        (
            keys.iter().map(|k| (k.as_bytes().to_vec(), 0)).collect(),
            more,
        )
    }

    #[test]
    fn a_page_pair_ends_at_the_first_side_that_has_more() {
        assert_eq!(
            page_end(&page(&["a", "c"], false), &page(&["b"], false)),
            None
        );
        assert_eq!(
            page_end(&page(&["a", "e"], true), &page(&["b", "c"], true)),
            Some(b"c".to_vec())
        );
        assert_eq!(
            page_end(&page(&["a", "e"], true), &page(&["b", "z"], false)),
            Some(b"e".to_vec()),
            "the side without more is cut at the other's end and listed again from there"
        );
    }
}
