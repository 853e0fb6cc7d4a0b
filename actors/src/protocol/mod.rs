//! Wire protocol: the typed messages clients and nodes exchange over ractor_cluster.
//!
//! Every payload travels as a [`Wire`] value: MessagePack inside, decoded without panicking.
//! A frame that does not decode reaches the handler as `Wire(Err(..))`, which logs it and
//! answers `BadRequest` instead of letting ractor drop it silently.

use ractor::{BytesConvertable, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

use crate::core::codec::{DecodeError, decode_wire, encode_wire};
use crate::core::placement::{MemberAddr, Placement};
use crate::core::quorum::Consistency;
use crate::core::version::CausalContext;

/// A MessagePack payload that decodes to an error rather than panicking.
#[derive(Debug)]
pub struct Wire<T>(pub Result<T, DecodeError>);

impl<T> Wire<T> {
    /// Wraps a value to send.
    pub fn new(value: T) -> Self {
        Wire(Ok(value))
    }
}

impl<T: Serialize + DeserializeOwned> BytesConvertable for Wire<T> {
    fn into_bytes(self) -> Vec<u8> {
        match &self.0 {
            Ok(v) => encode_wire(v),
            // Only decoded inbound payloads are ever Err, and those are never re-sent.
            Err(_) => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Wire(decode_wire(&bytes))
    }
}

/// A request's typed failure, carried in replies and surfaced by the SDK and CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The key has no bytes.
    #[error("empty key: keys must have at least one byte")]
    EmptyKey,
    /// The key is longer than the configured limit.
    #[error("key too large: {size} bytes, limit {limit}")]
    KeyTooLarge {
        /// Key length in bytes.
        size: usize,
        /// Configured `max_key_bytes`.
        limit: usize,
    },
    /// Key plus value reach the configured pair limit.
    #[error("pair too large: {size} bytes, limit {limit}")]
    PairTooLarge {
        /// Key plus value length in bytes.
        size: usize,
        /// Configured `max_pair_bytes` (pairs must be strictly smaller).
        limit: usize,
    },
    /// The causal context passed with a write is not one this cluster produced.
    #[error("bad context: {0}")]
    BadContext(String),
    /// Not enough replicas could be reached for the requested consistency.
    #[error("unavailable: needed {needed} replicas, got {got}")]
    Unavailable {
        /// Replies the request needed.
        needed: usize,
        /// Replicas that were reachable.
        got: usize,
    },
    /// No reply within the deadline: the write may or may not have been applied.
    #[error("timeout: no reply within the deadline, outcome unknown")]
    Timeout,
    /// The node is shedding load; retry later.
    #[error("overloaded: retry later")]
    Overloaded,
    /// The request could not be decoded or makes no sense.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The storage engine failed; nothing was acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
    /// The client's configuration is unusable (client side only).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// No member of the cluster could be reached.
    #[error("not connected: {0}")]
    NotConnected(String),
    /// The replica is at a newer ring epoch than the asking coordinator: refresh and retry.
    #[error("stale ring: the replica is at epoch {epoch}")]
    StaleRing {
        /// The replica's epoch.
        epoch: u64,
    },
    /// A membership change was refused; the text says why and what to do.
    #[error("membership: {0}")]
    Membership(String),
}

/// An opaque causal context as clients see it: a format byte and the encoded context.
pub fn encode_context(ctx: &CausalContext) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend(encode_wire(ctx));
    out
}

/// Decodes a context a client passed back; rejects anything this cluster did not produce.
pub fn decode_context(bytes: &[u8]) -> Result<CausalContext, KvError> {
    match bytes.split_first() {
        Some((1, body)) => decode_wire(body).map_err(|e| KvError::BadContext(e.to_string())),
        _ => Err(KvError::BadContext("unknown context format".into())),
    }
}

/// Asks for a reply and nothing else: the transport's round trip.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PingRequest {}

/// Answer to a ping: which node answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingReply {
    /// Id of the node that answered.
    pub node: String,
}

/// Reads one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    /// The key bytes.
    pub key: ByteBuf,
    /// Replicas that must answer; the node's default when absent.
    #[serde(default)]
    pub r: Option<Consistency>,
    /// The client's deadline for the whole request, ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What a read found: every live sibling and the context that supersedes them all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetReply {
    /// Live values, one per concurrent version; empty when the key is absent or deleted.
    pub values: Vec<ByteBuf>,
    /// Opaque causal context covering every version read (tombstones included).
    pub context: ByteBuf,
}

/// Writes (or, with no value, deletes) one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key bytes.
    pub key: ByteBuf,
    /// The value, or `None` to delete.
    pub value: Option<ByteBuf>,
    /// Context from an earlier read; `None` is a blind write (see the README).
    pub context: Option<ByteBuf>,
    /// Replicas that must acknowledge; the node's default when absent.
    #[serde(default)]
    pub w: Option<Consistency>,
    /// The client's deadline for the whole request, ms.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Wall-clock Unix ms after which the write must not be applied: the client has given up
    /// on this attempt and may send it through another node.
    #[serde(default)]
    pub not_after_ms: Option<u64>,
}

/// Acknowledgement of a write, with the context of the version it created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutReply {
    /// Context to pass to the next write of this key to supersede this one.
    pub context: ByteBuf,
}

/// Reply port of a get, as routers and vnodes receive it.
pub type GetReplyPort = RpcReplyPort<Wire<Result<GetReply, KvError>>>;
/// Reply port of a put or delete.
pub type PutReplyPort = RpcReplyPort<Wire<Result<PutReply, KvError>>>;

/// Messages a node's router actors accept from clients (pg group `ringkv.router.<node>`).
#[derive(RactorClusterMessage)]
pub enum RouterMessage {
    /// Bare round trip, for the benchmark's transport ceiling and readiness checks.
    #[rpc]
    Ping(Wire<PingRequest>, RpcReplyPort<Wire<PingReply>>),
    /// Read a key.
    #[rpc]
    Get(
        Wire<GetRequest>,
        RpcReplyPort<Wire<Result<GetReply, KvError>>>,
    ),
    /// Write or delete a key.
    #[rpc]
    Put(
        Wire<PutRequest>,
        RpcReplyPort<Wire<Result<PutReply, KvError>>>,
    ),
    /// Several reads or writes at once, answered together in their order: the SDK's batching
    /// of the requests it has in flight to one node, since every message through the cluster
    /// link costs about as much CPU as serving a read.
    #[rpc]
    Batch(
        Wire<Vec<BatchRequest>>,
        RpcReplyPort<Wire<Result<Vec<BatchReply>, KvError>>>,
    ),
}

/// One request of a [`RouterMessage::Batch`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BatchRequest {
    /// Read a key.
    Get(GetRequest),
    /// Write or delete a key.
    Put(PutRequest),
}

/// One answer of a [`RouterMessage::Batch`], at its request's position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BatchReply {
    /// A read's answer.
    Get(Result<GetReply, KvError>),
    /// A write's answer.
    Put(Result<PutReply, KvError>),
}

/// Reads a replica's stored object for a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaRead {
    /// The key's partition.
    pub partition: u32,
    /// The key bytes.
    pub key: ByteBuf,
    /// Digest of the copy the reader already holds: a replica whose object has it answers
    /// `same` instead of sending the object (a digest read).
    #[serde(default)]
    pub unless: Option<u64>,
}

/// A replica's stored object (encoded), absent when it holds nothing for the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaObject {
    /// The encoded object; `None` when absent or when `same` is set.
    pub object: Option<ByteBuf>,
    /// The replica's object has the digest the read named in `unless`.
    #[serde(default)]
    pub same: bool,
}

/// Merges an object into a replica (replication and read repair); idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaWrite {
    /// The key's partition.
    pub partition: u32,
    /// The key bytes.
    pub key: ByteBuf,
    /// The encoded object to merge.
    pub object: ByteBuf,
    /// Set when the receiver is a fallback: keep the object as a hint for this down replica.
    #[serde(default)]
    pub hint_for: Option<String>,
}

/// A failure detector probe, carrying the sender's ring view (gossip).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's node id.
    pub from: String,
    /// Sender's ring epoch.
    pub ring_version: u64,
    /// Hash of the sender's placement at that epoch.
    pub ring_hash: u64,
}

/// Many replica reads sent one way; the replica casts a [`ReadAnswer`] back to `from`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadAsk {
    /// The asking node's id.
    pub from: String,
    /// The asker's id of this batch, echoed in the answer.
    pub batch: u64,
    /// The reads, answered in order.
    pub reads: Vec<ReplicaRead>,
    /// The asker's ring epoch: a replica at a newer one answers [`KvError::StaleRing`].
    #[serde(default)]
    pub epoch: u64,
}

/// Answers to a [`ReadAsk`], in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadAnswer {
    /// The answering node's id.
    pub from: String,
    /// The batch id the ask carried.
    pub batch: u64,
    /// One result per read.
    pub results: Vec<Result<ReplicaObject, KvError>>,
}

/// Many replica merges sent one way; the replica casts a [`WriteAnswer`] back to `from` once
/// all are durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteAsk {
    /// The asking node's id.
    pub from: String,
    /// The asker's id of this batch, echoed in the answer.
    pub batch: u64,
    /// The merges, answered in order.
    pub writes: Vec<ReplicaWrite>,
    /// The asker's ring epoch: a replica at a newer one answers [`KvError::StaleRing`].
    #[serde(default)]
    pub epoch: u64,
}

/// Answers to a [`WriteAsk`], in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteAnswer {
    /// The answering node's id.
    pub from: String,
    /// The batch id the ask carried.
    pub batch: u64,
    /// One result per merge.
    pub results: Vec<Result<(), KvError>>,
}

/// Messages between nodes for one partition's replicas (pg group `ringkv.replica.<node>`).
#[derive(RactorClusterMessage)]
pub enum ReplicaMessage {
    /// Read many keys, one way: answered with a [`ReplicaMessage::ReadAnswer`] cast back to the
    /// asking node (a call costs ractor_cluster a spawned reply task and a timer per message).
    ReadAsk(Wire<ReadAsk>),
    /// The answers to a [`ReplicaMessage::ReadAsk`].
    ReadAnswer(Wire<ReadAnswer>),
    /// Merge many objects, one way: answered with a [`ReplicaMessage::WriteAnswer`] cast back
    /// once all are durable.
    WriteAsk(Wire<WriteAsk>),
    /// The answers to a [`ReplicaMessage::WriteAsk`].
    WriteAnswer(Wire<WriteAnswer>),
    /// Coordinate a client write this node received but does not replicate.
    #[rpc]
    Coordinate(
        Wire<PutRequest>,
        RpcReplyPort<Wire<Result<PutReply, KvError>>>,
    ),
    /// Failure detector probe; answered with this node's ring view.
    #[rpc]
    Heartbeat(Wire<Heartbeat>, RpcReplyPort<Wire<Heartbeat>>),
    /// Hashes of some nodes of one level of a partition's merkle tree (anti-entropy).
    #[rpc]
    AaeTree(
        Wire<TreeRequest>,
        RpcReplyPort<Wire<Result<Vec<u64>, KvError>>>,
    ),
    /// Keys and object digests of some merkle segments of a partition (anti-entropy).
    #[rpc]
    AaeKeys(
        Wire<SegmentRequest>,
        RpcReplyPort<Wire<Result<KeyListing, KvError>>>,
    ),
    /// How many hints this node keeps for any replica of a partition (tombstone reaping).
    #[rpc]
    HintsFor(Wire<HintsQuery>, RpcReplyPort<Wire<Result<u64, KvError>>>),
    /// Remove tombstones that every replica holds; each only if its digest still matches.
    #[rpc]
    Reap(Wire<ReapRequest>, RpcReplyPort<Wire<Result<u64, KvError>>>),
    /// This node's current (committed) placement.
    #[rpc]
    FetchPlacement(Wire<PingRequest>, RpcReplyPort<Wire<Placement>>),
    /// Store a claimant's proposed placement durably; answered once stored (a vote).
    #[rpc]
    StorePlacement(Wire<Placement>, RpcReplyPort<Wire<Result<(), KvError>>>),
    /// A placement a majority stored: adopt it.
    AdoptPlacement(Wire<Placement>),
    /// The next chunk of a partition for a replica streaming it in.
    #[rpc]
    TransferChunk(
        Wire<ChunkRequest>,
        RpcReplyPort<Wire<Result<TransferChunk, KvError>>>,
    ),
    /// A target finished streaming a partition in (sent to the claimant).
    TransferDone(Wire<TransferReport>),
}

/// Asks how many hints a node keeps for a partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HintsQuery {
    /// The partition.
    pub partition: u32,
}

/// Tombstones to remove from one partition, with the digests checked on every replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReapRequest {
    /// The partition.
    pub partition: u32,
    /// The tombstones.
    pub keys: Vec<KeyDigest>,
}

/// Asks for the hashes of `indices` at `level` of a partition's merkle tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeRequest {
    /// The partition.
    pub partition: u32,
    /// Leaf count of the asker's tree; a tree of another shape is refused.
    pub segments: u32,
    /// Tree level, 0 = root.
    pub level: u32,
    /// Node indices within the level.
    pub indices: Vec<u32>,
}

/// Asks for every key of some merkle segments of a partition, with object digests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRequest {
    /// The partition.
    pub partition: u32,
    /// Leaf count of the asker's tree.
    pub segments: u32,
    /// The segments wanted.
    pub wanted: Vec<u32>,
    /// List keys strictly after this one (the previous page's end).
    #[serde(default)]
    pub after: Option<ByteBuf>,
    /// About how many keys one answer may carry.
    #[serde(default)]
    pub limit: u32,
}

/// One page of a key listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyListing {
    /// Keys with their digests, in key order.
    pub keys: Vec<KeyDigest>,
    /// True when more keys follow the last one.
    pub more: bool,
}

/// A key with its object's digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyDigest {
    /// The key bytes.
    pub key: ByteBuf,
    /// Digest of its object ([`crate::core::version::Object::digest`]).
    pub digest: u64,
}

/// Anti-entropy state of one local partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AaePartition {
    /// The partition.
    pub partition: u32,
    /// Root hash of this replica's merkle tree; `None` when its vnode is not serving.
    pub root: Option<u64>,
    /// Unix ms of the last completed exchange with another replica.
    pub last_exchange_ms: Option<u64>,
    /// Exchanges completed since the node started.
    pub exchanges: u64,
    /// Keys repaired by those exchanges (on either side).
    pub keys_repaired: u64,
}

/// A node's anti-entropy view, for `ringkv console -c aae`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AaeView {
    /// The reporting node.
    pub node: String,
    /// Its local partitions.
    pub partitions: Vec<AaePartition>,
}

/// What one on-demand anti-entropy round did on a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AaeRound {
    /// The node that ran it.
    pub node: String,
    /// Exchanges completed.
    pub exchanges: u64,
    /// Keys repaired.
    pub keys_repaired: u64,
    /// Tombstones removed (every replica held them and the grace period had passed).
    #[serde(default)]
    pub tombstones_reaped: u64,
    /// Wall-clock duration, ms.
    pub millis: u64,
    /// Exchanges that failed, with why.
    pub errors: Vec<String>,
}

/// A vnode's health as the admin actor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VnodeHealth {
    /// Opening its file or replaying the commit log.
    Starting,
    /// Serving reads and writes.
    Serving,
    /// Restarted too often within the budget window (left stopped), or cannot start for now
    /// (tried again later).
    Failed,
}

pub mod autoscale;
pub use autoscale::{AutoscaleMessage, AutoscaleView, DecisionView, SignalsView, autoscale_group};
pub mod membership;
pub use membership::{
    ChunkRequest, MembershipRequest, MembershipView, MoveView, TransferChunk, TransferReport,
    TransferView,
};

/// One node's status, for `ringkv console` and tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's id.
    pub node: String,
    /// Ring size Q.
    pub partitions: u32,
    /// Partitions this node holds, with their health and restart counts.
    pub vnodes: Vec<VnodeInfo>,
    /// `sync` or `buffered`.
    pub durability: String,
    /// This node's ring version.
    pub ring_version: u64,
    /// Hash of this node's ring.
    pub ring_hash: u64,
    /// True when every member is up and reports the same ring.
    pub ring_agreed: bool,
    /// Stage of the membership change in progress at this node's epoch.
    #[serde(default)]
    pub stage: String,
    /// Hints this node keeps for down replicas, waiting to be handed back.
    #[serde(default)]
    pub hints_waiting: u64,
    /// Hints handed back to their owners since this node started.
    #[serde(default)]
    pub hints_delivered: u64,
    /// The node's process id (a launcher tells its own nodes from others on the same ports).
    #[serde(default)]
    pub pid: u32,
}

/// One member as a node's failure detector sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id.
    pub id: String,
    /// Listen address.
    pub addr: String,
    /// Whether the detector considers it up.
    pub up: bool,
    /// The ring hash it last reported (this node's own for itself).
    pub ring_hash: Option<u64>,
    /// The ring epoch it last reported (0 before it answered).
    #[serde(default)]
    pub epoch: u64,
}

/// The ring as a node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RingView {
    /// Ring epoch.
    pub version: u64,
    /// Stage of the membership change in progress (`stable` when none).
    #[serde(default)]
    pub stage: String,
    /// Every member of either live ring, with its address.
    #[serde(default)]
    pub members: Vec<MemberAddr>,
    /// Per partition, the replicas reads ask (and writes are coordinated by), in order.
    #[serde(default)]
    pub read_lists: Vec<Vec<String>>,
    /// Ring size Q.
    pub partitions: u32,
    /// Replication factor N.
    pub replicas: usize,
    /// Preference list of each partition in the target ring, in partition order.
    pub preference_lists: Vec<Vec<String>>,
}

/// Load figures of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStats {
    /// Node id.
    pub node: String,
    /// Client requests per second over the last window.
    pub ops_per_sec: f64,
    /// 99th percentile client request latency over the last window, ms.
    pub p99_ms: f64,
    /// Vnodes serving.
    pub vnodes: usize,
    /// Messages queued in vnode mailboxes.
    pub mailbox_depth: u64,
    /// Requests being coordinated now.
    pub in_flight: u64,
    /// CPU use of the node's process, percent of the cores it may use.
    #[serde(default)]
    pub cpu_pct: f64,
    /// Resident memory, percent of the memory limit.
    #[serde(default)]
    pub mem_pct: f64,
    /// Used space of the data folder's file system, percent.
    #[serde(default)]
    pub disk_pct: f64,
    /// Requests refused as `Overloaded` per second.
    #[serde(default)]
    pub overloaded_per_sec: f64,
}

/// One vnode's line in [`NodeStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VnodeInfo {
    /// Partition id.
    pub partition: u32,
    /// Current health.
    pub health: VnodeHealth,
    /// Restarts since the node started.
    pub restarts: u32,
    /// Unusable files of this partition moved aside since the node started (their new paths).
    #[serde(default)]
    pub quarantined: Vec<String>,
}

/// Which vnode to fail on purpose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrashVnodeRequest {
    /// Partition whose vnode should fail.
    pub partition: u32,
}

/// Messages a node's admin actor accepts (pg group `ringkv.admin.<node>`).
#[derive(RactorClusterMessage)]
pub enum AdminMessage {
    /// Report this node's status.
    #[rpc]
    Status(Wire<PingRequest>, RpcReplyPort<Wire<NodeStatus>>),
    /// This node's view of the members.
    #[rpc]
    Members(Wire<PingRequest>, RpcReplyPort<Wire<Vec<MemberView>>>),
    /// This node's ring.
    #[rpc]
    Ring(Wire<PingRequest>, RpcReplyPort<Wire<RingView>>),
    /// Load figures.
    #[rpc]
    Stats(Wire<PingRequest>, RpcReplyPort<Wire<NodeStats>>),
    /// Make one vnode fail so its supervisor restarts it (fault injection for tests and drills).
    #[rpc]
    CrashVnode(
        Wire<CrashVnodeRequest>,
        RpcReplyPort<Wire<Result<(), KvError>>>,
    ),
    /// Per local partition: merkle root, last exchange, keys repaired.
    #[rpc]
    Aae(Wire<PingRequest>, RpcReplyPort<Wire<AaeView>>),
    /// Exchange every local partition with its replicas now; answered when done.
    #[rpc]
    AaeRun(Wire<PingRequest>, RpcReplyPort<Wire<AaeRound>>),
    /// A membership command: staged changes, plan, commit (answered by the claimant).
    #[rpc]
    Membership(
        Wire<(MembershipRequest, bool)>,
        RpcReplyPort<Wire<Result<MembershipView, KvError>>>,
    ),
    /// The ownership transfers this node streams in.
    #[rpc]
    Transfers(Wire<PingRequest>, RpcReplyPort<Wire<Vec<TransferView>>>),
}

/// The pg group holding a node's router actors.
pub fn router_group(node: &str) -> String {
    format!("ringkv.router.{node}")
}

/// The pg group holding a node's replica actor.
pub fn replica_group(node: &str) -> String {
    format!("ringkv.replica.{node}")
}

/// The pg group holding a node's admin actor.
pub fn admin_group(node: &str) -> String {
    format!("ringkv.admin.{node}")
}
