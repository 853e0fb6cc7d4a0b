//! What a node needs to run, already validated by the edge that read the configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::core::limits::Limits;
use crate::core::quorum::Consistency;
use crate::core::version::ConflictPolicy;
use crate::storage::commit_log::LogDurability;

/// One cluster member as the configuration lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id, e.g. `n1`.
    pub id: String,
    /// Address its cluster listener binds and peers dial.
    pub addr: SocketAddr,
}

/// How many failures a supervisor tolerates before it gives a child up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBudget {
    /// Restarts allowed within `window`.
    pub max_restarts: u32,
    /// Sliding window the restarts are counted in.
    pub window: Duration,
}

/// Everything a node process needs; built from `cluster.toml` by the `ringkv` binary.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node's id.
    pub node_id: String,
    /// The members the configuration lists: they seed the placement on a node's first start
    /// (a node that joins later fetches it from `join` instead).
    pub members: Vec<Member>,
    /// Address this node listens on and peers dial.
    pub addr: SocketAddr,
    /// A member to join the cluster through, for a node that is not in the placement yet.
    pub join: Option<SocketAddr>,
    /// How links to peers and clients run: plain, or mutual TLS.
    pub transport: crate::transport::Transport,
    /// Serve `/metrics` over TLS, with the transport's certificate.
    pub metrics_tls: bool,
    /// The Redis-protocol listener, when on.
    pub resp: Option<crate::gateway::resp::RespSettings>,
    /// Where `GET /metrics` is served, when on.
    pub metrics: Option<SocketAddr>,
    /// How ownership transfers run: throttle, concurrency, chunk sizes.
    pub transfer: crate::membership::transfer::TransferSettings,
    /// Shared secret peers and clients authenticate with.
    pub cookie: String,
    /// Ring size Q.
    pub partitions: u32,
    /// Replication factor N.
    pub replicas: usize,
    /// This node's own folder: vnode files and the commit log live here.
    pub node_dir: PathBuf,
    /// When writes are acknowledged.
    pub durability: LogDurability,
    /// Page cache of each vnode's redb file, in bytes.
    pub vnode_cache_bytes: usize,
    /// Object cache of the whole node, in bytes, shared out among its vnodes.
    pub object_cache_bytes: usize,
    /// Most writes one vnode commit takes.
    pub batch_max_writes: usize,
    /// Most payload bytes one vnode commit takes.
    pub batch_max_bytes: usize,
    /// Commit log segment size; a full segment triggers a vnode checkpoint.
    pub log_segment_bytes: u64,
    /// Free space under which the node refuses writes, bytes (0: never).
    pub min_free_bytes: u64,
    /// How long the commit log lets concurrent appends gather before a sync.
    pub group_commit_window: Duration,
    /// Key and pair size limits.
    pub limits: Limits,
    /// Sibling bound or last-write-wins.
    pub conflict: ConflictPolicy,
    /// Number of router actors.
    pub routers: usize,
    /// Restart budget of each vnode.
    pub vnode_restarts: RestartBudget,
    /// Interval between failure-detector heartbeats.
    pub heartbeat: Duration,
    /// Consecutive missed heartbeats before a peer is marked down.
    pub missed_heartbeats: u32,
    /// Read consistency when a request names none.
    pub default_r: Consistency,
    /// Write consistency when a request names none.
    pub default_w: Consistency,
    /// Deadline of a request that names none.
    pub request_timeout: Duration,
    /// Most requests in flight from this node to one peer.
    pub max_in_flight_per_peer: usize,
    /// Most requests this node coordinates at once.
    pub max_coordinating: u64,
    /// Share of reads that ask every replica, not only R, so all get read-repaired.
    pub read_repair_chance: f64,
    /// A read whose first R replies take longer than this also asks the remaining replicas.
    pub speculative_read_after: Duration,
    /// Sloppy quorum, hinted handoff, anti-entropy and tombstone reaping.
    pub repair: RepairSettings,
}

/// How a node keeps replicas converged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepairSettings {
    /// Writes for a down replica go to fallback nodes as hints, which count toward W.
    pub sloppy_quorum: bool,
    /// How often waiting hints are offered to owners that are up again.
    pub handoff_interval: Duration,
    /// Most hints handed back per second, per node.
    pub handoff_keys_per_sec: u32,
    /// Keys per handoff or repair chunk.
    pub chunk_keys: usize,
    /// Each local partition is exchanged with its replicas about this often; zero disables.
    pub aae_interval: Duration,
    /// Most keys anti-entropy repairs per second, per node.
    pub aae_keys_per_sec: u32,
    /// Age a tombstone must reach, once every replica holds it, before it is removed.
    pub tombstone_grace: Duration,
}

impl Default for RepairSettings {
    fn default() -> Self {
        RepairSettings {
            sloppy_quorum: true,
            handoff_interval: Duration::from_secs(1),
            handoff_keys_per_sec: 20_000,
            chunk_keys: 256,
            aae_interval: Duration::from_secs(60),
            aae_keys_per_sec: 20_000,
            tombstone_grace: Duration::from_secs(3600),
        }
    }
}
