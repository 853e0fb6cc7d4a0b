//! The versioned placement: which nodes hold each partition at one ring epoch, and the staged
//! membership changes that lead from one epoch to the next.
//!
//! A change never switches ownership in one step. Committing a plan makes epoch e+1 with two
//! live rings, the previous and the target one, in stage [`Stage::ReadOld`]: writes go to both
//! replica sets (W in each), reads to the previous set while new replicas stream their data.
//! Once every transfer is done the claimant commits [`Stage::ReadNew`] (still writing both,
//! reading the new set), and once every live node has adopted that, [`Stage::Stable`] drops the
//! previous ring. Every node that reads under an epoch at most one stage apart from another
//! node's therefore meets at least one replica set both wrote to.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::ring::{NodeId, Ring, RingError};

/// A member id with the address peers dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddr {
    /// Node id.
    pub id: NodeId,
    /// Listen address, `ip:port`.
    pub addr: String,
}

/// Where a placement is in a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// One ring; nothing moves.
    Stable,
    /// Two rings: writes to both, reads from the previous one; new replicas stream.
    ReadOld,
    /// Two rings: writes to both, reads from the target one; old replicas still written.
    ReadNew,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Stable => "stable",
            Stage::ReadOld => "write-both-read-old",
            Stage::ReadNew => "write-both-read-new",
        })
    }
}

/// The cluster's placement at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Epoch: raised by one per committed change, never reused.
    pub epoch: u64,
    /// Every node of either ring, with its address, sorted by id.
    pub members: Vec<MemberAddr>,
    /// The target ring (the only one once stable).
    pub ring: Ring,
    /// The ring being left, while a change is in progress.
    pub previous: Option<Ring>,
    /// Stage of the change.
    pub stage: Stage,
}

/// One staged membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add a node.
    Join {
        /// New node's id.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Remove a node after it handed its partitions off.
    Leave {
        /// The leaving node.
        id: NodeId,
    },
    /// Hand every partition of `old` to a new node.
    Replace {
        /// The node to retire.
        old: NodeId,
        /// The node taking its place.
        new: NodeId,
        /// The new node's address.
        addr: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Join { id, addr } => write!(f, "join {id} {addr}"),
            Change::Leave { id } => write!(f, "leave {id}"),
            Change::Replace { old, new, addr } => write!(f, "replace {old} {new} {addr}"),
        }
    }
}

/// Why a change cannot be staged or planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PlanError {
    /// Joining an id that already is a member.
    #[error("{0} is already a member")]
    AlreadyMember(NodeId),
    /// Leaving or replacing an id that is not a member.
    #[error("{0} is not a member")]
    NotMember(NodeId),
    /// Two staged changes name the same node.
    #[error("{0} is already named by a staged change; commit or clear first")]
    AlreadyStaged(NodeId),
    /// The id is not letters, digits, '-' and '_'.
    #[error("node id {0:?} is invalid: use letters, digits, '-' and '_'")]
    BadId(String),
    /// The address is not `ip:port`, or another member uses it.
    #[error("bad address {0:?}: give ip:port, not used by another member")]
    BadAddress(String),
    /// A leave would leave fewer members than replicas.
    #[error("leaving would leave {left} members, fewer than the {replicas} replicas of every key")]
    TooFewMembers {
        /// Members after the change.
        left: usize,
        /// Replication factor N.
        replicas: usize,
    },
    /// A change is in progress: its partitions must finish moving first.
    #[error("epoch {epoch} is still moving partitions ({stage}); wait until it is stable")]
    InProgress {
        /// The epoch in progress.
        epoch: u64,
        /// Its stage.
        stage: Stage,
    },
    /// Nothing is staged.
    #[error("nothing is staged")]
    NothingStaged,
    /// The ring rejected the new member set.
    #[error("{0}")]
    Ring(String),
}

impl From<RingError> for PlanError {
    fn from(e: RingError) -> Self {
        PlanError::Ring(e.to_string())
    }
}

/// One partition that gains replicas in a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The partition.
    pub partition: u32,
    /// Nodes in the target set but not the previous one: they stream the partition in.
    pub targets: Vec<NodeId>,
    /// The previous set, in preference order: where targets stream from.
    pub sources: Vec<NodeId>,
    /// Nodes in the previous set but not the target one: they let go when stable.
    pub released: Vec<NodeId>,
}

impl Placement {
    /// Epoch 1: the ring a configuration seeds, stable.
    pub fn seed(members: Vec<MemberAddr>, ring: Ring) -> Placement {
        let mut members = members;
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Placement {
            epoch: 1,
            members,
            ring,
            previous: None,
            stage: Stage::Stable,
        }
    }

    /// Replication factor N.
    pub fn replicas(&self) -> usize {
        self.ring.replicas()
    }

    /// Ring size Q.
    pub fn partitions(&self) -> u32 {
        self.ring.partitions()
    }

    /// A hash of the whole placement: equal hashes mean equal placements.
    pub fn hash(&self) -> u64 {
        let bytes = rmp_serde::to_vec(self).unwrap_or_default();
        xxh3_64(&bytes).max(1)
    }

    /// The address of `node`, when it is a member.
    pub fn addr_of(&self, node: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == node)
            .map(|m| m.addr.as_str())
    }

    /// The ring reads use: the previous one until the new replicas have the data.
    pub fn read_ring(&self) -> &Ring {
        match (&self.previous, self.stage) {
            (Some(previous), Stage::ReadOld) => previous,
            _ => &self.ring,
        }
    }

    /// The replicas a read of `partition` asks, in preference order (also who mints versions).
    pub fn read_set(&self, partition: u32) -> &[NodeId] {
        self.read_ring().preference_list(partition)
    }

    /// Every replica set a write of `partition` must reach W of: the read set first.
    pub fn write_sets(&self, partition: u32) -> Vec<&[NodeId]> {
        let mut sets = vec![self.read_set(partition)];
        if let Some(previous) = &self.previous {
            let other = if self.stage == Stage::ReadOld {
                self.ring.preference_list(partition)
            } else {
                previous.preference_list(partition)
            };
            if !same_set(other, sets[0]) {
                sets.push(other);
            }
        }
        sets
    }

    /// Every node of any write set of `partition`, read set first, without repeats.
    pub fn write_nodes(&self, partition: u32) -> Vec<&NodeId> {
        let mut nodes: Vec<&NodeId> = Vec::new();
        for set in self.write_sets(partition) {
            for n in set {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
        }
        nodes
    }

    /// Fallbacks of `partition` for a sloppy quorum: members outside every write set.
    pub fn fallbacks(&self, partition: u32) -> Vec<&NodeId> {
        let held = self.write_nodes(partition);
        self.ring
            .fallbacks(partition)
            .iter()
            .filter(|n| !held.contains(n))
            .collect()
    }

    /// True when `node` holds a replica of `partition` in either live ring.
    pub fn hosts(&self, node: &str, partition: u32) -> bool {
        self.ring.is_replica(partition, node)
            || self
                .previous
                .as_ref()
                .is_some_and(|r| r.is_replica(partition, node))
    }

    /// The partitions `node` keeps a vnode for, ascending.
    pub fn hosted_by(&self, node: &str) -> Vec<u32> {
        (0..self.partitions())
            .filter(|&p| self.hosts(node, p))
            .collect()
    }

    /// True while `partition`'s replica set changes.
    pub fn is_moving(&self, partition: u32) -> bool {
        self.write_sets(partition).len() > 1
    }

    /// Ids of every member, sorted.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id.clone()).collect()
    }

    /// The partitions whose replica set changes, with who streams them in and who lets go.
    pub fn moves(&self) -> Vec<Move> {
        let Some(previous) = &self.previous else {
            return Vec::new();
        };
        moves_between(previous, &self.ring)
    }

    /// The next stage of an in-progress change: ReadOld → ReadNew → Stable (previous dropped,
    /// members pruned to the ring's). `None` when already stable.
    pub fn advanced(&self) -> Option<Placement> {
        let mut next = self.clone();
        next.epoch += 1;
        match self.stage {
            Stage::Stable => return None,
            Stage::ReadOld => next.stage = Stage::ReadNew,
            Stage::ReadNew => {
                next.stage = Stage::Stable;
                next.previous = None;
                let keep = next.ring.members().to_vec();
                next.members.retain(|m| keep.contains(&m.id));
            }
        }
        Some(next)
    }

    /// The placement committing `changes` would make: epoch + 1, stage ReadOld (or straight to
    /// Stable when no replica moves).
    pub fn plan(&self, changes: &[Change]) -> Result<Placement, PlanError> {
        if self.stage != Stage::Stable {
            return Err(PlanError::InProgress {
                epoch: self.epoch,
                stage: self.stage,
            });
        }
        if changes.is_empty() {
            return Err(PlanError::NothingStaged);
        }
        let mut members = self.members.clone();
        for c in changes {
            apply_change(&mut members, c)?;
        }
        let n = self.replicas();
        if members.len() < n {
            return Err(PlanError::TooFewMembers {
                left: members.len(),
                replicas: n,
            });
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<NodeId> = members.iter().map(|m| m.id.clone()).collect();
        let ring = self.ring.rebalanced(&ids)?;
        let moving = !moves_between(&self.ring, &ring).is_empty();
        let mut all = self.members.clone();
        for m in &members {
            if !all.iter().any(|x| x.id == m.id) {
                all.push(m.clone());
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Placement {
            epoch: self.epoch + 1,
            members: if moving { all } else { members },
            previous: moving.then(|| self.ring.clone()),
            stage: if moving {
                Stage::ReadOld
            } else {
                Stage::Stable
            },
            ring,
        })
    }
}

/// Validates one change against the member list so far and applies it.
fn apply_change(members: &mut Vec<MemberAddr>, change: &Change) -> Result<(), PlanError> {
    let known = |members: &[MemberAddr], id: &str| members.iter().any(|m| m.id == id);
    let check_addr = |members: &[MemberAddr], addr: &str| {
        if addr.parse::<std::net::SocketAddr>().is_err() || members.iter().any(|m| m.addr == addr) {
            Err(PlanError::BadAddress(addr.to_string()))
        } else {
            Ok(())
        }
    };
    match change {
        Change::Join { id, addr } => {
            check_id(id)?;
            if known(members, id) {
                return Err(PlanError::AlreadyMember(id.clone()));
            }
            check_addr(members, addr)?;
            members.push(MemberAddr {
                id: id.clone(),
                addr: addr.clone(),
            });
        }
        Change::Leave { id } => {
            if !known(members, id) {
                return Err(PlanError::NotMember(id.clone()));
            }
            members.retain(|m| m.id != *id);
        }
        Change::Replace { old, new, addr } => {
            if !known(members, old) {
                return Err(PlanError::NotMember(old.clone()));
            }
            check_id(new)?;
            if known(members, new) {
                return Err(PlanError::AlreadyMember(new.clone()));
            }
            check_addr(members, addr)?;
            members.retain(|m| m.id != *old);
            members.push(MemberAddr {
                id: new.clone(),
                addr: addr.clone(),
            });
        }
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), PlanError> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadId(id.to_string()))
    }
}

/// Ids a change names, to refuse two staged changes about one node.
pub fn named(change: &Change) -> Vec<&str> {
    match change {
        Change::Join { id, .. } | Change::Leave { id } => vec![id],
        Change::Replace { old, new, .. } => vec![old, new],
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Per partition whose set differs between `from` and `to`: targets, sources and released.
pub fn moves_between(from: &Ring, to: &Ring) -> Vec<Move> {
    (0..to.partitions())
        .filter_map(|p| {
            let (old, new) = (from.preference_list(p), to.preference_list(p));
            if same_set(old, new) {
                return None;
            }
            Some(Move {
                partition: p,
                targets: new.iter().filter(|n| !old.contains(n)).cloned().collect(),
                sources: old.to_vec(),
                released: old.iter().filter(|n| !new.contains(n)).cloned().collect(),
            })
        })
        .collect()
}

/// Quorum accounting for a write that must reach `needed` replicas in each of several sets.
#[derive(Debug, Clone)]
pub struct SetTally {
    sets: Vec<Vec<NodeId>>,
    needed: usize,
    acked: Vec<NodeId>,
    failed: Vec<NodeId>,
}

/// Where a [`SetTally`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetVerdict {
    /// Every set has `needed` successes.
    Met,
    /// Some set can no longer reach `needed`.
    Impossible,
    /// Still waiting.
    Pending,
}

impl SetTally {
    /// A tally over `sets`, each needing `needed` of its members (or of fallbacks standing in).
    pub fn new(sets: Vec<Vec<NodeId>>, needed: usize) -> SetTally {
        SetTally {
            sets,
            needed,
            acked: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Records the answer for the replica `for_node` (the node itself, or the down node a
    /// fallback's hint stands in for).
    pub fn record(&mut self, for_node: &str, ok: bool) -> SetVerdict {
        let list = if ok {
            &mut self.acked
        } else {
            &mut self.failed
        };
        if !list.iter().any(|n| n == for_node) {
            list.push(for_node.to_string());
        }
        self.verdict()
    }

    /// The verdict so far.
    pub fn verdict(&self) -> SetVerdict {
        let mut met = true;
        for set in &self.sets {
            let acked = set.iter().filter(|n| self.acked.contains(n)).count();
            let failed = set
                .iter()
                .filter(|n| self.failed.contains(n) && !self.acked.contains(n))
                .count();
            if set.len() - failed < self.needed {
                return SetVerdict::Impossible;
            }
            met &= acked >= self.needed;
        }
        if met {
            SetVerdict::Met
        } else {
            SetVerdict::Pending
        }
    }

    /// Successes counted in the set that has fewest.
    pub fn successes(&self) -> usize {
        self.sets
            .iter()
            .map(|s| s.iter().filter(|n| self.acked.contains(n)).count())
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(n: usize) -> Vec<MemberAddr> {
        (1..=n)
            .map(|i| MemberAddr {
                id: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7400 + i),
            })
            .collect()
    }

    fn seed(n: usize, q: u32, r: usize) -> Placement {
        let m = members(n);
        let ids: Vec<NodeId> = m.iter().map(|m| m.id.clone()).collect();
        Placement::seed(m, Ring::new(&ids, q, r).unwrap())
    }

    fn join(id: &str, port: u16) -> Change {
        Change::Join {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
        }
    }

    #[test]
    fn a_join_reads_old_then_new_and_writes_both_until_stable() {
        let p0 = seed(3, 64, 3);
        let p1 = p0.plan(&[join("n4", 7404)]).unwrap();
        assert_eq!((p1.epoch, p1.stage), (2, Stage::ReadOld));
        let moves = p1.moves();
        assert!(!moves.is_empty());
        for m in &moves {
            assert_eq!(m.targets, vec!["n4".to_string()]);
            assert_eq!(
                p1.read_set(m.partition),
                p0.ring.preference_list(m.partition)
            );
            assert_eq!(p1.write_sets(m.partition).len(), 2);
            assert!(p1.hosts("n4", m.partition));
        }
        let p2 = p1.advanced().unwrap();
        assert_eq!(p2.stage, Stage::ReadNew);
        for m in &moves {
            assert_eq!(
                p2.read_set(m.partition),
                p1.ring.preference_list(m.partition)
            );
            assert_eq!(p2.write_sets(m.partition).len(), 2);
        }
        let p3 = p2.advanced().unwrap();
        assert_eq!(
            (p3.epoch, p3.stage, p3.previous.is_none()),
            (4, Stage::Stable, true)
        );
        assert!(p3.advanced().is_none());
        for m in &moves {
            assert_eq!(p3.write_sets(m.partition).len(), 1);
        }
    }

    #[test]
    fn a_leave_below_n_is_refused_and_members_are_pruned_after_a_leave() {
        let p0 = seed(3, 64, 3);
        assert_eq!(
            p0.plan(&[Change::Leave { id: "n3".into() }]),
            Err(PlanError::TooFewMembers {
                left: 2,
                replicas: 3
            })
        );
        let p4 = p0.plan(&[join("n4", 7404)]).unwrap();
        let p4 = p4.advanced().unwrap().advanced().unwrap();
        let left = p4.plan(&[Change::Leave { id: "n2".into() }]).unwrap();
        assert!(
            left.moves()
                .iter()
                .all(|m| m.released == vec!["n2".to_string()])
        );
        let done = left.advanced().unwrap().advanced().unwrap();
        assert_eq!(done.member_ids(), vec!["n1", "n3", "n4"]);
        assert!(done.hosted_by("n2").is_empty());
    }

    #[test]
    fn bad_changes_are_refused_with_their_reason() {
        let p0 = seed(3, 64, 3);
        assert_eq!(
            p0.plan(&[join("n1", 7499)]),
            Err(PlanError::AlreadyMember("n1".into()))
        );
        assert_eq!(
            p0.plan(&[join("n9", 7401)]),
            Err(PlanError::BadAddress("127.0.0.1:7401".into()))
        );
        assert_eq!(
            p0.plan(&[Change::Leave { id: "n9".into() }]),
            Err(PlanError::NotMember("n9".into()))
        );
        assert_eq!(p0.plan(&[]), Err(PlanError::NothingStaged));
        let moving = p0.plan(&[join("n4", 7404)]).unwrap();
        assert!(matches!(
            moving.plan(&[join("n5", 7405)]),
            Err(PlanError::InProgress { epoch: 2, .. })
        ));
    }

    #[test]
    fn set_tally_needs_w_in_every_set() {
        let sets = vec![
            vec!["a".to_string(), "b".into(), "c".into()],
            vec!["a".to_string(), "b".into(), "d".into()],
        ];
        let mut t = SetTally::new(sets, 2);
        assert_eq!(t.record("a", true), SetVerdict::Pending);
        assert_eq!(t.record("c", true), SetVerdict::Pending);
        assert_eq!(t.record("d", true), SetVerdict::Met);
        let mut t = SetTally::new(
            vec![
                vec!["a".into(), "b".into(), "c".into()],
                vec!["d".into(), "e".into(), "f".into()],
            ],
            2,
        );
        t.record("d", false);
        assert_eq!(t.record("e", false), SetVerdict::Impossible);
    }

    proptest! {
        #[test]
        fn every_stage_writes_a_set_both_neighbouring_stages_read(
            s in 3usize..8, joins in 1usize..3, n in 1usize..4,
        ) {
            let p0 = seed(s, 64, n.min(s));
            let changes: Vec<Change> =
                (0..joins).map(|i| join(&format!("x{i}"), 7500 + i as u16)).collect();
            let mut stages = vec![p0.clone()];
            let mut p = p0.plan(&changes).unwrap();
            stages.push(p.clone());
            while let Some(next) = p.advanced() {
                stages.push(next.clone());
                p = next;
            }
            for pair in stages.windows(2) {
                for q in 0..64 {
                    // A write under either epoch reaches the read set of the other.
                    let (a, b) = (&pair[0], &pair[1]);
                    let reads_a = a.read_set(q).to_vec();
                    let reads_b = b.read_set(q).to_vec();
                    prop_assert!(b.write_sets(q).iter().any(|w| same_set(w, &reads_a)));
                    prop_assert!(a.write_sets(q).iter().any(|w| same_set(w, &reads_b)));
                }
            }
            let last = stages.last().unwrap();
            prop_assert_eq!(last.stage, Stage::Stable);
            prop_assert_eq!(last.member_ids().len(), s + joins);
        }
    }
}
