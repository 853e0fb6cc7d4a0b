//! What a node's actors share, split by responsibility: the services every request path uses
//! (placement, vnodes, peers, links, hints), the request policy from config, request figures,
//! repair state, and ownership transfers. Built once by the node supervisor and handed out
//! behind an `Arc`; nothing here is an actor.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::core::limits::Limits;
use crate::core::quorum::Consistency;
use crate::core::version::ConflictPolicy;
use crate::membership::ring_cell::RingCell;
use crate::membership::transfer::{Outbound, TransferBoard, TransferSettings};
use crate::partition_table::PartitionTable;
use crate::peer_link::PeerLink;
use crate::peer_table::PeerTable;
use crate::repair::exchange::AaeStatus;
use crate::request_stats::RequestStats;
use crate::settings::RepairSettings;
use crate::storage::hint_store::HintStore;

/// A node's shared state.
#[derive(Debug)]
pub struct NodeContext {
    /// This node's id.
    pub node_id: String,
    /// The current placement; each request takes one snapshot of it.
    pub ring: Arc<RingCell>,
    /// Local vnodes.
    pub table: Arc<PartitionTable>,
    /// Members and the failure detector's view of them.
    pub peers: Arc<PeerTable>,
    /// Batching queues to every peer, one added per member as members join.
    pub links: Links,
    /// Hints this node keeps as a fallback.
    pub hints: Arc<HintStore>,
    /// Refuses changes while the disk is nearly full.
    pub disk: Arc<crate::storage::disk_guard::DiskGuard>,
    /// How requests are served, from config.
    pub policy: RequestPolicy,
    /// Client request figures.
    pub stats: RequestStats,
    /// Counters for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Hinted handoff, anti-entropy and reaping.
    pub repair: RepairState,
    /// Ownership transfers, in and out.
    pub transfers: Transfers,
}

/// How this node serves client requests.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    /// Key and pair limits.
    pub limits: Limits,
    /// Conflict policy for merging replica copies.
    pub conflict: ConflictPolicy,
    /// Default read consistency.
    pub default_r: Consistency,
    /// Default write consistency.
    pub default_w: Consistency,
    /// Deadline of a request that names none.
    pub default_timeout: Duration,
    /// Most requests this node coordinates at once before answering `Overloaded`.
    pub max_coordinating: u64,
    /// Share of reads that ask every replica instead of R, for read repair.
    pub read_repair_chance: f64,
    /// A read whose first R replies take longer than this also asks the remaining replicas.
    pub speculative_read_after: Duration,
    /// Writes for down replicas go to fallbacks as hints.
    pub sloppy_quorum: bool,
}

/// Repair settings and what the repair paths keep between rounds.
#[derive(Debug)]
pub struct RepairState {
    /// Handoff and anti-entropy settings.
    pub settings: RepairSettings,
    /// Anti-entropy figures per local partition.
    pub aae: AaeStatus,
    /// Tombstones every replica was seen to hold, per (partition, key): digest and since when.
    pub reap_agreements: ReapAgreements,
    /// Hints handed back to their owners since start.
    pub hints_delivered: AtomicU64,
}

impl RepairState {
    /// Fresh state under `settings`.
    pub fn new(settings: RepairSettings) -> RepairState {
        RepairState {
            settings,
            aae: AaeStatus::default(),
            reap_agreements: ReapAgreements::default(),
            hints_delivered: AtomicU64::new(0),
        }
    }
}

/// Ownership transfers: how they run, the streams served, the streams received.
#[derive(Debug)]
pub struct Transfers {
    /// How ownership transfers run.
    pub settings: TransferSettings,
    /// Transfers this node serves as a source, bounded by `settings.max_outbound`.
    pub outbound: Outbound,
    /// Progress of the transfers this node streams in.
    pub board: Arc<TransferBoard>,
    /// Bytes streamed in since the node started.
    pub received_bytes: std::sync::atomic::AtomicU64,
}

impl Transfers {
    /// No transfer yet, under `settings`.
    pub fn new(settings: TransferSettings) -> Transfers {
        Transfers {
            settings,
            outbound: Outbound::default(),
            board: Arc::default(),
            received_bytes: Default::default(),
        }
    }
}

/// Batching queues per peer id.
#[derive(Debug, Default)]
pub struct Links(RwLock<HashMap<String, Arc<PeerLink>>>);

impl Links {
    /// The queue to `peer`, if it is a member.
    pub fn get(&self, peer: &str) -> Option<Arc<PeerLink>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }

    /// Starts a queue to `peer` unless one runs.
    pub fn ensure(&self, peer: &str, start: impl FnOnce() -> PeerLink) {
        let mut links = self.0.write().unwrap_or_else(|p| p.into_inner());
        links
            .entry(peer.to_string())
            .or_insert_with(|| Arc::new(start()));
    }
}

/// Tombstone agreements awaiting their second look, for the reaper.
pub type ReapAgreements = Mutex<HashMap<(u32, Vec<u8>), (u64, Instant)>>;
