//! Vnode: the single writer of one partition's data.
//!
//! Writes and replica merges are group-committed: a change is queued, and a `Drain` the vnode
//! sends itself runs after every change already in the mailbox, so one step applies them all.
//! The new objects go to the vnode's memtable and to the node's commit log, which answers the
//! coordinators after its fsync in `sync` mode; the memtable is written to the redb file about
//! once a second in one in-memory transaction, and made durable at checkpoints. Reads never
//! come here: readers use the memtable and file snapshot published in the
//! [`PartitionTable`](crate::partition_table::PartitionTable).
//!
//! This file holds what senders use (the messages); `actor.rs` the vnode itself, `ops.rs` its
//! queued changes and their answers, `apply.rs` how one write is applied to an object, and
//! `supervisor.rs` the actor that starts, restarts and releases vnodes.

mod actor;
mod apply;
mod ops;
pub mod supervisor;

pub use actor::{UNUSABLE_FILE, Vnode, VnodeArgs, VnodeState};

use ractor::RpcReplyPort;
use ractor_cluster::RactorMessage;
use tokio::sync::oneshot;

use crate::core::version::{CausalContext, Object};
use crate::protocol::KvError;

/// What a coordinated write produced, handed out as soon as the version is minted (before it is
/// durable), so replication runs in parallel with the local fsync.
#[derive(Debug)]
pub struct WriteOutcome {
    /// Context covering what the write superseded and the write itself.
    pub context: CausalContext,
    /// The key's encoded object after the commit, to replicate.
    pub object: Vec<u8>,
}

/// One client write waiting for the next commit.
#[derive(Debug)]
pub struct WriteOp {
    /// The key bytes.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
    /// What the client had seen; `None` for a blind write.
    pub context: Option<CausalContext>,
    /// Wall-clock Unix ms after which the write is refused with `Timeout` instead of applied.
    pub not_after_ms: Option<u64>,
    /// Gets the minted version, or why the write was refused, before the commit is durable.
    pub minted: oneshot::Sender<Result<WriteOutcome, KvError>>,
    /// Answered once the write is durable (or failed to become so).
    pub durable: oneshot::Sender<Result<(), KvError>>,
}

/// A replica's object to merge (replication, read repair), waiting for the next commit.
#[derive(Debug)]
pub struct MergeOp {
    /// The key bytes.
    pub key: Vec<u8>,
    /// The object to join into the stored one.
    pub object: Object,
    /// Answered once the merge is durable.
    pub reply: oneshot::Sender<Result<(), KvError>>,
}

/// Objects to ingest: key, decoded object, its encoding.
pub type IngestChunk = Vec<(Vec<u8>, Object, Vec<u8>)>;

/// Messages a vnode accepts (local only).
#[derive(RactorMessage)]
pub enum VnodeMessage {
    /// Apply a client write in the next group commit.
    Write(WriteOp),
    /// Merge a replica's object in the next group commit.
    Merge(MergeOp),
    /// Merge many objects, each with its encoding (an ownership transfer's chunk); answered
    /// once all are durable.
    Ingest(IngestChunk, oneshot::Sender<Result<(), KvError>>),
    /// Commit every queued write now.
    Drain,
    /// Write the memtable to the vnode's file (in memory until the next checkpoint).
    FlushMemtable,
    /// The memtable flush in flight finished (sent by the vnode to itself).
    Flushed,
    /// Make every committed write durable in the vnode's own file (commit log checkpoint).
    Flush(RpcReplyPort<Result<(), String>>),
    /// A checkpoint's durable commit finished (sent by the vnode to itself).
    CheckpointDone(Result<(), String>),
    /// Fail on purpose so the supervisor restarts this vnode (fault injection).
    Crash,
    /// Remove these tombstones, each only if its object still has the given digest; answers
    /// how many were removed.
    Reap(Vec<(Vec<u8>, u64)>, oneshot::Sender<u64>),
}
