//! The consistent-hash ring: Q fixed partitions, each replicated on N of the S members.
//!
//! Keys map to partitions by hash alone ([`partition_of`]), so a key never changes partition;
//! membership changes only move partitions between nodes. [`claim`] decides which nodes hold
//! each partition. It is a pure function of the member set, Q and N, so every node that knows
//! the same members computes the same ring without coordination.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Identifier of a cluster member, e.g. "n1".
pub type NodeId = String;

/// Largest partition count a ring accepts.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Maps a key to its partition: xxh3_64 (seed 0) of the key masked to `partitions`, a power of two.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions.is_power_of_two(), "partitions must be a power of two");
    // The mask keeps the low bits, which equals `% partitions` for a power of two.
    (xxh3_64(key) & u64::from(partitions.wrapping_sub(1))) as u32
}

/// Why a ring could not be built from the given members, partition count and replica count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The partition count is zero, too large or not a power of two.
    #[error("partitions must be a power of two between 1 and 65536, got {0}")]
    PartitionsNotPowerOfTwo(u32),
    /// The member list is empty.
    #[error("a ring needs at least one member; list at least one node id")]
    NoMembers,
    /// The replication factor is zero.
    #[error("replicas must be at least 1")]
    ReplicasZero,
    /// The replication factor is larger than the number of distinct members.
    #[error("replicas ({replicas}) exceeds the number of members ({members}); add members or lower replicas")]
    ReplicasExceedMembers {
        /// The requested replication factor.
        replicas: usize,
        /// The number of distinct members.
        members: usize,
    },
    /// A node id appears more than once in the member list.
    #[error("member {0:?} is listed more than once; node ids must be unique")]
    DuplicateMember(NodeId),
}

/// The ring: members, Q, N and, per partition, the full ranking of members (first N = preference list).
///
/// Only (members, Q, N) are serialized; decoding re-runs [`claim`], so a decoded ring always
/// satisfies the invariants, and all nodes must run the same claim version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RingSpec", try_from = "RingSpec")]
pub struct Ring {
    /// Distinct member ids, sorted.
    members: Vec<NodeId>,
    /// Q, a power of two.
    partitions: u32,
    /// N, between 1 and the member count.
    replicas: usize,
    /// Per partition, a permutation of `members`: preference list first, then fallbacks.
    rankings: Vec<Vec<NodeId>>,
}

/// Wire form of a [`Ring`]: the inputs of [`claim`].
#[derive(Serialize, Deserialize)]
struct RingSpec {
    members: Vec<NodeId>,
    partitions: u32,
    replicas: usize,
}

impl From<Ring> for RingSpec {
    fn from(ring: Ring) -> Self {
        RingSpec { members: ring.members, partitions: ring.partitions, replicas: ring.replicas }
    }
}

impl TryFrom<RingSpec> for Ring {
    type Error = RingError;

    fn try_from(spec: RingSpec) -> Result<Self, RingError> {
        Ring::new(&spec.members, spec.partitions, spec.replicas)
    }
}

impl Ring {
    /// Validates the inputs and runs [`claim`]; member order does not matter.
    pub fn new(members: &[NodeId], partitions: u32, replicas: usize) -> Result<Ring, RingError> {
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(RingError::PartitionsNotPowerOfTwo(partitions));
        }
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(RingError::DuplicateMember(pair[0].clone()));
        }
        if sorted.is_empty() {
            return Err(RingError::NoMembers);
        }
        if replicas == 0 {
            return Err(RingError::ReplicasZero);
        }
        if replicas > sorted.len() {
            return Err(RingError::ReplicasExceedMembers { replicas, members: sorted.len() });
        }
        let rankings = claim(&sorted, partitions, replicas);
        Ok(Ring { members: sorted, partitions, replicas, rankings })
    }

    /// Number of partitions Q.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Replication factor N.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The partition `key` belongs to.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        partition_of(key, self.partitions)
    }

    /// The N distinct nodes that hold `partition`, in rendezvous order. Panics if out of range.
    pub fn preference_list(&self, partition: u32) -> &[NodeId] {
        &self.rankings[partition as usize][..self.replicas]
    }

    /// The other members, in the order a sloppy quorum should try them. Panics if out of range.
    pub fn fallbacks(&self, partition: u32) -> &[NodeId] {
        &self.rankings[partition as usize][self.replicas..]
    }

    /// The partitions `node` holds a replica of, ascending.
    pub fn partitions_of(&self, node: &str) -> Vec<u32> {
        (0..self.partitions).filter(|&p| self.is_replica(p, node)).collect()
    }

    /// True when `node` is in the preference list of `partition`. Panics if out of range.
    pub fn is_replica(&self, partition: u32, node: &str) -> bool {
        self.preference_list(partition).iter().any(|m| m == node)
    }
}

/// The claim function: per partition, the full ranking of the members, preference list first.
///
/// Depends only on the member set (order and duplicates are ignored), Q and N; `replicas` is
/// capped at the member count. Guarantees, for S members:
/// * every ranking is a permutation of the members, so the first N entries are distinct;
/// * every node holds between floor(Q*N/S) and ceil(Q*N/S) replicas;
/// * the replica sets are the heaviest balanced assignment under rendezvous weights
///   xxh3(node, seed = partition); this optimum is unique for distinct weights and shifts little
///   when one member joins or leaves (see the movement tests for the measured bound).
///
/// Within a partition, chosen nodes come first, then the rest, each group by descending weight.
pub fn claim(members: &[NodeId], partitions: u32, replicas: usize) -> Vec<Vec<NodeId>> {
    let mut nodes: Vec<&str> = members.iter().map(String::as_str).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let s = nodes.len();
    let weight: Vec<u64> = (0..partitions)
        .flat_map(|p| nodes.iter().map(move |id| xxh3_64_with_seed(id.as_bytes(), u64::from(p))))
        .collect();
    let held = Balancer::new(&weight, s, replicas.min(s)).solve();
    (0..partitions as usize)
        .map(|p| {
            let mut order: Vec<usize> = (0..s).collect();
            order.sort_unstable_by_key(|&i| (Reverse(held[p * s + i]), Reverse(weight[p * s + i]), i));
            order.into_iter().map(|i| nodes[i].to_owned()).collect()
        })
        .collect()
}

/// Min-cost flow over a node-level residual graph, solved by successive shortest paths.
///
/// Vertices are the S nodes plus a pool vertex `s` that absorbs exactly `extra = Q*N mod S`
/// units, at most one from each node. A node's quota is `floor` plus the unit it sends to the
/// pool, so loads end in {floor, floor + 1} and the optimizer, not a fixed rule, picks which
/// nodes carry the extra replica. Moving a replica of partition p from node i to node j costs
/// w(p,i) - w(p,j); we start from the unconstrained optimum (each partition takes its N
/// heaviest nodes), where every such cost is >= 0, and only ever augment along shortest paths,
/// so the residual graph never has a negative cycle and the final assignment is optimal.
struct Balancer<'a> {
    weight: &'a [u64],
    s: usize,
    held: Vec<bool>,
    load: Vec<usize>,
    pooled: Vec<bool>,
    floor: usize,
    extra: usize,
}

/// Sentinel for "no partition": an edge to or from the pool vertex.
const POOL_EDGE: usize = usize::MAX;

impl<'a> Balancer<'a> {
    fn new(weight: &'a [u64], s: usize, n: usize) -> Self {
        let q = weight.len().checked_div(s).unwrap_or(0);
        let mut held = vec![false; weight.len()];
        let mut load = vec![0; s];
        for p in 0..q {
            let mut order: Vec<usize> = (0..s).collect();
            order.sort_unstable_by_key(|&i| (Reverse(weight[p * s + i]), i));
            for &i in &order[..n] {
                held[p * s + i] = true;
                load[i] += 1;
            }
        }
        let (floor, extra) = if s == 0 { (0, 0) } else { (q * n / s, q * n % s) };
        let pooled = load.iter().map(|&l| extra > 0 && l > floor).collect();
        Balancer { weight, s, held, load, pooled, floor, extra }
    }

    /// Positive: units vertex `v` must give away; negative: units it still needs.
    fn surplus(&self, v: usize) -> isize {
        if v == self.s {
            self.pooled.iter().filter(|&&b| b).count() as isize - self.extra as isize
        } else {
            self.load[v] as isize - self.floor as isize - isize::from(self.pooled[v])
        }
    }

    /// Every residual edge (from, to, cost, partition), keeping the cheapest per node pair.
    fn edges(&self) -> Vec<(usize, usize, i128, usize)> {
        let s = self.s;
        let mut best: Vec<Option<(i128, usize)>> = vec![None; s * s];
        for (p, (held, weight)) in self.held.chunks(s).zip(self.weight.chunks(s)).enumerate() {
            for i in (0..s).filter(|&i| held[i]) {
                for j in (0..s).filter(|&j| !held[j]) {
                    let cost = i128::from(weight[i]) - i128::from(weight[j]);
                    let slot = &mut best[i * s + j];
                    if slot.is_none_or(|(c, _)| cost < c) {
                        *slot = Some((cost, p));
                    }
                }
            }
        }
        let mut edges: Vec<_> = best
            .iter()
            .enumerate()
            .filter_map(|(k, e)| e.map(|(cost, p)| (k / s, k % s, cost, p)))
            .collect();
        for i in 0..s {
            if self.pooled[i] {
                edges.push((s, i, 0, POOL_EDGE));
            } else if self.extra > 0 {
                edges.push((i, s, 0, POOL_EDGE));
            }
        }
        edges
    }

    /// Moves one unit along a shortest path from a surplus vertex to a deficit vertex.
    /// Returns false when every vertex is balanced.
    fn augment(&mut self) -> bool {
        let vertices = self.s + 1;
        let mut dist: Vec<Option<i128>> =
            (0..vertices).map(|v| (self.surplus(v) > 0).then_some(0)).collect();
        if dist.iter().all(Option::is_none) {
            return false;
        }
        let edges = self.edges();
        let mut pred: Vec<Option<(usize, usize)>> = vec![None; vertices];
        // Bellman-Ford: costs can be negative after earlier augmentations, cycles cannot.
        for _ in 0..vertices {
            let mut changed = false;
            for &(a, b, cost, p) in &edges {
                if let Some(d) = dist[a].map(|d| d + cost)
                    && dist[b].is_none_or(|old| d < old)
                {
                    dist[b] = Some(d);
                    pred[b] = Some((a, p));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // A balanced assignment exists (N <= S gives ceil(Q*N/S) <= Q), so by flow
        // decomposition some deficit vertex is reachable from the surplus ones.
        let mut v = (0..vertices)
            .filter(|&v| self.surplus(v) < 0)
            .filter_map(|v| dist[v].map(|d| (d, v)))
            .min()
            .expect("a deficit vertex is reachable from a surplus vertex")
            .1;
        while let Some((from, p)) = pred[v] {
            self.apply(from, v, p);
            v = from;
        }
        true
    }

    /// Applies one residual edge; edges of a simple path never conflict, so order is free.
    fn apply(&mut self, from: usize, to: usize, p: usize) {
        let s = self.s;
        if to == s {
            self.pooled[from] = true;
        } else if from == s {
            self.pooled[to] = false;
        } else {
            debug_assert!(self.held[p * s + from] && !self.held[p * s + to]);
            self.held[p * s + from] = false;
            self.held[p * s + to] = true;
            self.load[from] -= 1;
            self.load[to] += 1;
        }
    }

    /// Runs augmentations until balanced; returns `held[p * S + i]`.
    fn solve(mut self) -> Vec<bool> {
        while self.augment() {}
        self.held
    }
}
