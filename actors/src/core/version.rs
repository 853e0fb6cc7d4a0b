//! Causal versions: dotted version vectors with siblings.
//!
//! A stored [`Object`] is the set of values that are causally concurrent for one key, each tagged
//! with the [`Dot`] (node, counter) of the write that created it, plus the object's clock: the
//! join of every dot it has seen. A client's causal context is that clock. A write carrying a
//! context removes exactly the siblings the context covers, so sequential writers never produce
//! siblings and concurrent ones always do (Preguiça et al., "Dotted Version Vectors").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A version vector: for each node id, the highest write counter seen from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<String, u64>);

impl VersionVector {
    /// The counter recorded for `node` (0 when absent).
    pub fn get(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// True when this vector has seen the write identified by `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.node) >= dot.counter
    }

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for (node, &counter) in &other.0 {
            let entry = self.0.entry(node.clone()).or_insert(0);
            *entry = (*entry).max(counter);
        }
    }

    /// True when every entry of `other` is at most the matching entry here.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(node, &c)| self.get(node) >= c)
    }
}

/// The identity of one write: the coordinating replica's node id and its counter there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Node id of the replica that accepted the write.
    pub node: String,
    /// That node's write counter for this key.
    pub counter: u64,
}

/// One concurrent version of a key: a value, or a tombstone when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that created this version.
    pub dot: Dot,
    /// Wall-clock milliseconds at the coordinator; orders siblings for last-write-wins and pruning.
    pub timestamp_ms: u64,
    /// The value bytes; `None` marks a delete.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// How concurrent versions are resolved when they meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictPolicy {
    /// Keep concurrent versions as siblings, at most this many (oldest by timestamp pruned first).
    Siblings {
        /// Upper bound on siblings per key.
        max_siblings: usize,
    },
    /// Keep only the version with the greatest (timestamp, dot); concurrent writes are lost.
    LastWriteWins,
}

impl Default for ConflictPolicy {
    fn default() -> Self {
        ConflictPolicy::Siblings { max_siblings: 8 }
    }
}

/// Everything stored for one key: the causal clock and the concurrent versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Join of every dot this object has seen, including superseded ones.
    pub clock: VersionVector,
    /// Concurrent versions, none of which is covered by another's write; never two with one dot.
    pub siblings: Vec<Sibling>,
}

impl Object {
    /// The causal context a client passes back to supersede what it read.
    pub fn context(&self) -> &VersionVector {
        &self.clock
    }

    /// The live values (tombstones excluded), in dot order.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.siblings.iter().filter_map(|s| s.value.as_deref())
    }

    /// True when nothing live remains: never written, or every sibling is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(|s| s.value.is_none())
    }

    /// Applies a client write coordinated by replica `node`.
    ///
    /// With a context, exactly the siblings that context covers are superseded. Without one
    /// (a blind write) the write supersedes everything this replica holds, so sequential blind
    /// writes through one replica never create siblings. Returns the new write's dot.
    pub fn update(
        &mut self,
        node: &str,
        context: Option<&VersionVector>,
        value: Option<Vec<u8>>,
        timestamp_ms: u64,
        policy: ConflictPolicy,
    ) -> Dot {
        let seen = context.cloned().unwrap_or_else(|| self.clock.clone());
        self.siblings.retain(|s| !seen.covers(&s.dot));
        let counter = self.clock.get(node).max(seen.get(node)) + 1;
        let dot = Dot {
            node: node.to_string(),
            counter,
        };
        self.clock.join(&seen);
        self.clock.0.insert(node.to_string(), counter);
        self.siblings.push(Sibling {
            dot: dot.clone(),
            timestamp_ms,
            value,
        });
        self.resolve(policy);
        dot
    }

    /// Merges a replica's copy of the same key: keeps every sibling the other side has not
    /// superseded, from both sides. Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &Object, policy: ConflictPolicy) {
        let mut kept: Vec<Sibling> = self
            .siblings
            .iter()
            .filter(|s| {
                !other.clock.covers(&s.dot) || other.siblings.iter().any(|o| o.dot == s.dot)
            })
            .cloned()
            .collect();
        for s in &other.siblings {
            let known_here = self.siblings.iter().any(|m| m.dot == s.dot);
            if !known_here && !self.clock.covers(&s.dot) {
                kept.push(s.clone());
            }
        }
        self.clock.join(&other.clock);
        self.siblings = kept;
        self.resolve(policy);
    }

    /// Restores the invariants after a change: dot order, the sibling bound, or last-write-wins.
    fn resolve(&mut self, policy: ConflictPolicy) {
        match policy {
            ConflictPolicy::LastWriteWins => {
                if let Some(winner) = self
                    .siblings
                    .iter()
                    .max_by(|a, b| (a.timestamp_ms, &a.dot).cmp(&(b.timestamp_ms, &b.dot)))
                    .cloned()
                {
                    self.siblings = vec![winner];
                }
            }
            ConflictPolicy::Siblings { max_siblings } => {
                let bound = max_siblings.max(1);
                if self.siblings.len() > bound {
                    // Drop the oldest; the clock still covers their dots so they never return.
                    self.siblings
                        .sort_by(|a, b| (b.timestamp_ms, &b.dot).cmp(&(a.timestamp_ms, &a.dot)));
                    self.siblings.truncate(bound);
                }
            }
        }
        self.siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIBS: ConflictPolicy = ConflictPolicy::Siblings { max_siblings: 64 };

    fn vals(o: &Object) -> Vec<Vec<u8>> {
        o.values().map(|v| v.to_vec()).collect()
    }

    #[test]
    fn sequential_writes_with_context_never_make_siblings() {
        let mut o = Object::default();
        for i in 0..10u8 {
            let ctx = o.context().clone();
            o.update("a", Some(&ctx), Some(vec![i]), 1, SIBS);
            assert_eq!(vals(&o), vec![vec![i]]);
        }
    }

    #[test]
    fn blind_writes_through_one_node_overwrite() {
        let mut o = Object::default();
        o.update("a", None, Some(b"1".to_vec()), 1, SIBS);
        o.update("a", None, Some(b"2".to_vec()), 2, SIBS);
        assert_eq!(vals(&o), vec![b"2".to_vec()]);
    }

    #[test]
    fn concurrent_writes_become_siblings_and_context_resolves_them() {
        let mut a = Object::default();
        a.update("a", None, Some(b"base".to_vec()), 1, SIBS);
        let mut b = a.clone();
        let ctx = a.context().clone();
        a.update("a", Some(&ctx), Some(b"x".to_vec()), 2, SIBS);
        b.update("b", Some(&ctx), Some(b"y".to_vec()), 2, SIBS);
        a.merge(&b, SIBS);
        let mut v = vals(&a);
        v.sort();
        assert_eq!(v, vec![b"x".to_vec(), b"y".to_vec()]);
        let ctx = a.context().clone();
        a.update("a", Some(&ctx), Some(b"z".to_vec()), 3, SIBS);
        assert_eq!(vals(&a), vec![b"z".to_vec()]);
    }

    #[test]
    fn stale_context_keeps_the_write_it_did_not_see() {
        let mut o = Object::default();
        let empty = VersionVector::default();
        o.update("a", Some(&empty), Some(b"1".to_vec()), 1, SIBS);
        o.update("a", Some(&empty), Some(b"2".to_vec()), 2, SIBS);
        assert_eq!(vals(&o).len(), 2);
    }

    #[test]
    fn delete_is_a_tombstone_that_merges() {
        let mut a = Object::default();
        a.update("a", None, Some(b"v".to_vec()), 1, SIBS);
        let old = a.clone();
        let ctx = a.context().clone();
        a.update("a", Some(&ctx), None, 2, SIBS);
        assert!(a.is_deleted());
        let mut b = old;
        b.merge(&a, SIBS);
        assert!(
            b.is_deleted(),
            "an older replica copy must not resurrect the value"
        );
    }

    #[test]
    fn sibling_bound_prunes_oldest() {
        let mut o = Object::default();
        let empty = VersionVector::default();
        let p = ConflictPolicy::Siblings { max_siblings: 3 };
        for i in 0..5u8 {
            o.update("a", Some(&empty), Some(vec![i]), i as u64, p);
        }
        let mut v = vals(&o);
        v.sort();
        assert_eq!(v, vec![vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn last_write_wins_keeps_the_newest() {
        let mut a = Object::default();
        let mut b = Object::default();
        a.update(
            "a",
            None,
            Some(b"old".to_vec()),
            5,
            ConflictPolicy::LastWriteWins,
        );
        b.update(
            "b",
            None,
            Some(b"new".to_vec()),
            9,
            ConflictPolicy::LastWriteWins,
        );
        a.merge(&b, ConflictPolicy::LastWriteWins);
        assert_eq!(vals(&a), vec![b"new".to_vec()]);
    }

    /// A replica history: each step is a write at one of three replicas, optionally after a sync.
    fn arb_history() -> impl Strategy<Value = Vec<(usize, bool, bool)>> {
        prop::collection::vec((0usize..3, any::<bool>(), any::<bool>()), 1..24)
    }

    fn replay(history: &[(usize, bool, bool)]) -> Vec<Object> {
        let names = ["a", "b", "c"];
        let mut reps = vec![Object::default(); 3];
        for (i, &(r, sync_first, with_ctx)) in history.iter().enumerate() {
            if sync_first {
                let from = reps[(r + 1) % 3].clone();
                reps[r].merge(&from, SIBS);
            }
            let ctx = reps[r].context().clone();
            let ctx = if with_ctx { Some(&ctx) } else { None };
            reps[r].update(names[r], ctx, Some(vec![i as u8]), i as u64, SIBS);
        }
        reps
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(h in arb_history()) {
            let r = replay(&h);
            let mut ab = r[0].clone(); ab.merge(&r[1], SIBS);
            let mut ba = r[1].clone(); ba.merge(&r[0], SIBS);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&r[2], SIBS);
            let mut bc = r[1].clone(); bc.merge(&r[2], SIBS);
            let mut a_bc = r[0].clone(); a_bc.merge(&bc, SIBS);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut again = ab_c.clone(); again.merge(&ab_c, SIBS);
            prop_assert_eq!(&again, &ab_c);
        }

        #[test]
        fn merged_object_keeps_every_unsuperseded_write(h in arb_history()) {
            let r = replay(&h);
            let mut all = r[0].clone();
            all.merge(&r[1], SIBS);
            all.merge(&r[2], SIBS);
            // Every sibling surviving on some replica and not covered by another replica's
            // clock (unless that replica holds the same dot) survives the merge.
            for (i, rep) in r.iter().enumerate() {
                for s in &rep.siblings {
                    let superseded = r.iter().enumerate().any(|(j, o)| {
                        j != i && o.clock.covers(&s.dot) && !o.siblings.iter().any(|x| x.dot == s.dot)
                    });
                    prop_assert_eq!(all.siblings.iter().any(|x| x.dot == s.dot), !superseded);
                }
            }
            prop_assert!(all.clock.descends(&r[0].clock));
        }

        #[test]
        fn a_write_with_the_merged_context_resolves_everything(h in arb_history()) {
            let r = replay(&h);
            let mut all = r[0].clone();
            all.merge(&r[1], SIBS);
            all.merge(&r[2], SIBS);
            let ctx = all.context().clone();
            let mut target = r[1].clone();
            target.update("b", Some(&ctx), Some(b"final".to_vec()), 99, SIBS);
            let mut end = all.clone();
            end.merge(&target, SIBS);
            prop_assert_eq!(vals(&end), vec![b"final".to_vec()]);
        }
    }
}
