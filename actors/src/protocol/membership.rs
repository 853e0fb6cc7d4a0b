//! Membership messages: what operators send the claimant (stage, plan, commit) and what nodes
//! send each other while a partition streams to a new replica.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::core::placement::Change;

/// An operator's membership command, answered by the claimant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipRequest {
    /// Stage one change for the next plan.
    Stage(Change),
    /// Drop every staged change.
    Clear,
    /// Show what committing the staged changes would move.
    Plan,
    /// Commit the staged changes, refused unless the plan's hash still is `plan`.
    Commit {
        /// Hash of the plan the operator saw.
        plan: u64,
    },
    /// The claimant's view of the change in progress, if any.
    Show,
}

/// One partition that gains replicas, with estimates of what moves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MoveView {
    /// Partition id.
    pub partition: u32,
    /// Nodes that stream the partition in.
    pub targets: Vec<String>,
    /// Current replicas, where targets stream from.
    pub sources: Vec<String>,
    /// Replicas that let go once stable.
    pub released: Vec<String>,
    /// Estimated keys to send to each target.
    pub keys: u64,
    /// Estimated bytes to send to each target.
    pub bytes: u64,
    /// True once every target reported the partition streamed in.
    pub done: bool,
}

/// The claimant's answer to a [`MembershipRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MembershipView {
    /// The node that answered (the claimant).
    pub claimant: String,
    /// Its current epoch.
    pub epoch: u64,
    /// Stage of its current placement.
    pub stage: String,
    /// Members of its current target ring.
    pub members: Vec<String>,
    /// Changes staged for the next plan.
    pub staged: Vec<String>,
    /// The epoch the plan would commit (0 when nothing is planned).
    pub plan_epoch: u64,
    /// Hash of the plan (pass it to commit).
    pub plan_hash: u64,
    /// Members of the planned ring.
    pub plan_members: Vec<String>,
    /// Partitions that move in the plan, or in the change in progress.
    pub moves: Vec<MoveView>,
    /// Replica slots that move (each a partition copy streamed to a new node).
    pub replicas_moved: usize,
    /// The ideal for this change: the joining or leaving nodes' share of Q*N.
    pub replicas_ideal: usize,
    /// Estimated bytes to stream in all.
    pub bytes: u64,
    /// Estimated seconds at the configured throttle.
    pub eta_secs: f64,
    /// What happened (committed, cleared, why nothing moves…).
    pub note: String,
}

/// Asks a source for the next chunk of a partition, after `after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// The asking target.
    pub from: String,
    /// Partition streamed.
    pub partition: u32,
    /// Last key already received; `None` from the start.
    pub after: Option<ByteBuf>,
    /// Most keys in the chunk.
    pub max_keys: u32,
    /// Most payload bytes in the chunk (the last pair may pass it).
    pub max_bytes: u32,
    /// The asker's ring epoch.
    pub epoch: u64,
}

/// One chunk of a partition, in key order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferChunk {
    /// Keys and encoded objects, ascending by key.
    pub pairs: Vec<(ByteBuf, ByteBuf)>,
    /// More keys follow the last one.
    pub more: bool,
    /// The source's key count estimate for the whole partition.
    pub total_keys: u64,
}

/// A target's report that it holds a partition of the change at `epoch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferReport {
    /// The target node.
    pub node: String,
    /// The partition.
    pub partition: u32,
    /// Epoch of the change (the ReadOld placement).
    pub epoch: u64,
}

/// One partition a node streams in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransferView {
    /// Partition id.
    pub partition: u32,
    /// Source node.
    pub from: String,
    /// Target node (the node reporting).
    pub to: String,
    /// `waiting`, `streaming`, `verifying`, `done` or `stalled`.
    pub state: String,
    /// Keys received so far (since the transfer began, across restarts).
    pub keys: u64,
    /// Bytes received so far.
    pub bytes: u64,
    /// The source's estimate of the partition's keys.
    pub total_keys: u64,
    /// Bytes per second over the transfer's running time.
    pub rate: f64,
    /// Seconds left at that rate, when known.
    pub eta_secs: Option<f64>,
    /// Why it waits or stalls, when it does.
    pub why: String,
}
