//! Causal versions: dotted version vectors with siblings.
//!
//! A stored [`Object`] is the set of values that are causally concurrent for one key, each tagged
//! with the [`Dot`] (node, counter) of the write that created it, plus the object's clock: the
//! join of every dot it has seen. A client's causal context is that clock. A write carrying a
//! context removes exactly the siblings the context covers, so sequential writers never produce
//! siblings and concurrent ones always do (Preguiça et al., "Dotted Version Vectors").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

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

/// What a client has seen of a key: a version vector plus individual writes beyond it.
///
/// A read returns the object's whole clock. A write returns what it superseded plus its own
/// dot, and nothing else: the clock may also cover concurrent siblings the writer never saw,
/// which a later write with that context must not remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    /// Every write up to these counters has been seen.
    pub seen: VersionVector,
    /// Single writes seen beyond `seen`.
    pub dots: Vec<Dot>,
}

impl CausalContext {
    /// True when the context has seen the write `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.seen.covers(dot) || self.dots.contains(dot)
    }

    /// The highest counter of `node` this context mentions.
    pub fn max_counter(&self, node: &str) -> u64 {
        self.dots
            .iter()
            .filter(|d| d.node == node)
            .map(|d| d.counter)
            .fold(self.seen.get(node), u64::max)
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
    /// Dots seen (superseded by a write that named them) beyond the clock: a replica may learn
    /// that a write was superseded before the write itself arrives.
    #[serde(default)]
    pub cloud: Vec<Dot>,
    /// Concurrent versions, none of which is covered by another's write; never two with one dot.
    pub siblings: Vec<Sibling>,
}

impl Object {
    /// The live values (tombstones excluded), in dot order.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.siblings.iter().filter_map(|s| s.value.as_deref())
    }

    /// True when nothing live remains: never written, or every sibling is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(|s| s.value.is_none())
    }

    /// The context a read of this object returns: everything it holds, superseded or not.
    pub fn read_context(&self) -> CausalContext {
        CausalContext {
            seen: self.clock.clone(),
            dots: self.cloud.clone(),
        }
    }

    /// True when this object has seen the write `dot`.
    pub fn has_seen(&self, dot: &Dot) -> bool {
        self.clock.covers(dot) || self.cloud.contains(dot)
    }

    /// A canonical 64-bit xxh3 digest of the logical state, equal on every replica holding the
    /// same object however its parts were merged; anti-entropy compares these.
    ///
    /// Parts are hashed in a canonical order: clock entries by node (zero counters skipped, as
    /// [`VersionVector::get`] reads them as absent), cloud dots sorted and unique (dots the clock
    /// covers skipped), siblings by dot. Lists are count-prefixed, byte strings length-prefixed
    /// and integers fixed-width, so two different states never feed the hash the same bytes.
    /// Replicas compare digests across nodes, so changing this encoding makes every key differ
    /// between old and new versions.
    pub fn digest(&self) -> u64 {
        let mut h = Xxh3Default::new();
        let clock: Vec<_> = self.clock.0.iter().filter(|&(_, &c)| c > 0).collect();
        h.update(&(clock.len() as u64).to_le_bytes());
        for (node, &counter) in clock {
            hash_dot(&mut h, node, counter);
        }
        let mut cloud: Vec<&Dot> = self
            .cloud
            .iter()
            .filter(|d| !self.clock.covers(d))
            .collect();
        cloud.sort_unstable();
        cloud.dedup();
        h.update(&(cloud.len() as u64).to_le_bytes());
        for d in cloud {
            hash_dot(&mut h, &d.node, d.counter);
        }
        let mut siblings: Vec<&Sibling> = self.siblings.iter().collect();
        // The whole sibling, not just its dot, so even a broken invariant hashes deterministically.
        siblings.sort_unstable_by(|a, b| {
            (&a.dot, a.timestamp_ms, &a.value).cmp(&(&b.dot, b.timestamp_ms, &b.value))
        });
        h.update(&(siblings.len() as u64).to_le_bytes());
        for s in siblings {
            hash_dot(&mut h, &s.dot.node, s.dot.counter);
            h.update(&s.timestamp_ms.to_le_bytes());
            match &s.value {
                Some(v) => {
                    h.update(&[1]);
                    h.update(&(v.len() as u64).to_le_bytes());
                    h.update(v);
                }
                None => h.update(&[0]),
            }
        }
        h.digest()
    }

    /// Drops cloud dots the clock now covers, keeping the cloud sorted and unique.
    fn compact(&mut self) {
        let clock = &self.clock;
        self.cloud.retain(|d| !clock.covers(d));
        self.cloud.sort();
        self.cloud.dedup();
    }

    /// The smallest counter `node` may use for its next write here: above every counter of
    /// `node` this object or `context` mentions (`None` only if that would overflow).
    pub fn next_counter_floor(&self, node: &str, context: Option<&CausalContext>) -> Option<u64> {
        let seen = context.map_or(0, |c| c.max_counter(node));
        self.clock.get(node).max(seen).checked_add(1)
    }

    /// Applies a client write coordinated by replica `node`, as dot (`node`, `counter`).
    ///
    /// With a context, exactly the siblings that context covers are superseded. Without one
    /// (a blind write) the write supersedes everything this replica holds, so sequential blind
    /// writes through one replica never create siblings. `counter` must be at least
    /// [`Object::next_counter_floor`] and never reused by `node` (the caller's sequence
    /// guarantees it across crashes). Returns the context covering exactly what this write
    /// superseded and the write itself.
    pub fn update(
        &mut self,
        node: &str,
        counter: u64,
        context: Option<&CausalContext>,
        value: Option<Vec<u8>>,
        timestamp_ms: u64,
        policy: ConflictPolicy,
    ) -> CausalContext {
        debug_assert!(Some(counter) >= self.next_counter_floor(node, context));
        let seen = context.cloned().unwrap_or_else(|| self.read_context());
        // Order after every version this write follows or competes with, even if the wall
        // clock stepped back, so pruning and last-write-wins never drop the write being made.
        let timestamp_ms = self
            .siblings
            .iter()
            .map(|s| s.timestamp_ms.saturating_add(1))
            .fold(timestamp_ms, u64::max);
        self.siblings.retain(|s| !seen.covers(&s.dot));
        let dot = Dot {
            node: node.to_string(),
            counter,
        };
        // Only the vector part joins the clock: a lone dot does not imply its predecessors,
        // so seen dots beyond it go to the cloud.
        self.clock.join(&seen.seen);
        self.clock.0.insert(node.to_string(), counter);
        self.cloud.extend(seen.dots.iter().cloned());
        self.compact();
        self.siblings.push(Sibling {
            dot: dot.clone(),
            timestamp_ms,
            value,
        });
        self.resolve(policy);
        let mut reply = seen;
        reply.dots.retain(|d| !reply.seen.covers(d));
        reply.dots.push(dot);
        reply
    }

    /// Merges a replica's copy of the same key: keeps every sibling the other side has not
    /// superseded, from both sides. Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &Object, policy: ConflictPolicy) {
        let mut kept: Vec<Sibling> = self
            .siblings
            .iter()
            .filter(|s| !other.has_seen(&s.dot) || other.siblings.iter().any(|o| o.dot == s.dot))
            .cloned()
            .collect();
        for s in &other.siblings {
            let known_here = self.siblings.iter().any(|m| m.dot == s.dot);
            if !known_here && !self.has_seen(&s.dot) {
                kept.push(s.clone());
            }
        }
        self.clock.join(&other.clock);
        self.cloud.extend(other.cloud.iter().cloned());
        self.compact();
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

/// Feeds one (node, counter) pair to `h`: the node length-prefixed, the counter fixed-width.
fn hash_dot(h: &mut Xxh3Default, node: &str, counter: u64) {
    h.update(&(node.len() as u64).to_le_bytes());
    h.update(node.as_bytes());
    h.update(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use xxhash_rust::xxh3::xxh3_64;

    const SIBS: ConflictPolicy = ConflictPolicy::Siblings { max_siblings: 64 };

    fn vals(o: &Object) -> Vec<Vec<u8>> {
        o.values().map(|v| v.to_vec()).collect()
    }

    /// A write with the smallest legal counter.
    fn put(
        o: &mut Object,
        node: &str,
        ctx: Option<&CausalContext>,
        value: Option<Vec<u8>>,
        ts: u64,
        policy: ConflictPolicy,
    ) -> CausalContext {
        let c = o.next_counter_floor(node, ctx).unwrap();
        o.update(node, c, ctx, value, ts, policy)
    }

    #[test]
    fn sequential_writes_with_context_never_make_siblings() {
        let mut o = Object::default();
        for i in 0..10u8 {
            let ctx = o.read_context();
            put(&mut o, "a", Some(&ctx), Some(vec![i]), 1, SIBS);
            assert_eq!(vals(&o), vec![vec![i]]);
        }
    }

    #[test]
    fn blind_writes_through_one_node_overwrite() {
        let mut o = Object::default();
        put(&mut o, "a", None, Some(b"1".to_vec()), 1, SIBS);
        put(&mut o, "a", None, Some(b"2".to_vec()), 2, SIBS);
        assert_eq!(vals(&o), vec![b"2".to_vec()]);
    }

    #[test]
    fn concurrent_writes_become_siblings_and_context_resolves_them() {
        let mut a = Object::default();
        put(&mut a, "a", None, Some(b"base".to_vec()), 1, SIBS);
        let mut b = a.clone();
        let ctx = a.read_context();
        put(&mut a, "a", Some(&ctx), Some(b"x".to_vec()), 2, SIBS);
        put(&mut b, "b", Some(&ctx), Some(b"y".to_vec()), 2, SIBS);
        a.merge(&b, SIBS);
        let mut v = vals(&a);
        v.sort();
        assert_eq!(v, vec![b"x".to_vec(), b"y".to_vec()]);
        let ctx = a.read_context();
        put(&mut a, "a", Some(&ctx), Some(b"z".to_vec()), 3, SIBS);
        assert_eq!(vals(&a), vec![b"z".to_vec()]);
    }

    #[test]
    fn stale_context_keeps_the_write_it_did_not_see() {
        let mut o = Object::default();
        let empty = CausalContext::default();
        put(&mut o, "a", Some(&empty), Some(b"1".to_vec()), 1, SIBS);
        put(&mut o, "a", Some(&empty), Some(b"2".to_vec()), 2, SIBS);
        assert_eq!(vals(&o).len(), 2);
    }

    #[test]
    fn a_put_reply_context_does_not_cover_a_concurrent_sibling() {
        let mut o = Object::default();
        put(&mut o, "n", None, Some(b"base".to_vec()), 1, SIBS);
        let read = o.read_context();
        put(&mut o, "n", Some(&read), Some(b"b".to_vec()), 2, SIBS);
        let a = put(&mut o, "n", Some(&read), Some(b"a".to_vec()), 3, SIBS);
        // Writer A continues from its own write's context: B's write was never seen by A.
        put(&mut o, "n", Some(&a), Some(b"a2".to_vec()), 4, SIBS);
        let mut v = vals(&o);
        v.sort();
        assert_eq!(v, vec![b"a2".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn a_write_superseded_before_it_arrives_never_comes_back() {
        let mut a = Object::default();
        put(&mut a, "a", None, Some(b"base".to_vec()), 1, SIBS);
        let mut b = a.clone();
        // A writes at replica a; the client continues at replica b before b got A's write.
        let read = a.read_context();
        let ctx = put(&mut a, "a", Some(&read), Some(b"one".to_vec()), 2, SIBS);
        put(&mut b, "b", Some(&ctx), Some(b"two".to_vec()), 3, SIBS);
        let mut late = b.clone();
        late.merge(&a, SIBS);
        assert_eq!(vals(&late), vec![b"two".to_vec()], "no false sibling at b");
        a.merge(&b, SIBS);
        assert_eq!(a, late, "replicas converge");
        assert!(
            a.cloud.is_empty(),
            "the cloud compacts once the clock covers it"
        );
    }

    #[test]
    fn counters_from_a_context_are_never_reused() {
        let mut o = Object::default();
        let mut ctx = CausalContext::default();
        ctx.dots.push(Dot {
            node: "n".into(),
            counter: 41,
        });
        assert_eq!(o.next_counter_floor("n", Some(&ctx)), Some(42));
        ctx.seen.0.insert("n".into(), u64::MAX);
        assert_eq!(
            o.next_counter_floor("n", Some(&ctx)),
            None,
            "overflow is refused, not wrapped"
        );
        put(&mut o, "n", None, Some(b"x".to_vec()), 1, SIBS);
        assert_eq!(o.next_counter_floor("n", None), Some(2));
    }

    #[test]
    fn a_clock_step_back_never_prunes_the_new_write() {
        let mut o = Object::default();
        let lww = ConflictPolicy::LastWriteWins;
        put(&mut o, "n", None, Some(b"old".to_vec()), 1_000, lww);
        let empty = CausalContext::default();
        put(&mut o, "n", Some(&empty), Some(b"new".to_vec()), 10, lww);
        assert_eq!(vals(&o), vec![b"new".to_vec()]);
    }

    #[test]
    fn delete_is_a_tombstone_that_merges() {
        let mut a = Object::default();
        put(&mut a, "a", None, Some(b"v".to_vec()), 1, SIBS);
        let old = a.clone();
        let ctx = a.read_context();
        put(&mut a, "a", Some(&ctx), None, 2, SIBS);
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
        let empty = CausalContext::default();
        let p = ConflictPolicy::Siblings { max_siblings: 3 };
        for i in 0..5u8 {
            put(&mut o, "a", Some(&empty), Some(vec![i]), i as u64, p);
        }
        let mut v = vals(&o);
        v.sort();
        assert_eq!(v, vec![vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn last_write_wins_keeps_the_newest() {
        let mut a = Object::default();
        let mut b = Object::default();
        put(
            &mut a,
            "a",
            None,
            Some(b"old".to_vec()),
            5,
            ConflictPolicy::LastWriteWins,
        );
        put(
            &mut b,
            "b",
            None,
            Some(b"new".to_vec()),
            9,
            ConflictPolicy::LastWriteWins,
        );
        a.merge(&b, ConflictPolicy::LastWriteWins);
        assert_eq!(vals(&a), vec![b"new".to_vec()]);
    }

    #[test]
    fn digest_format_is_pinned() {
        // Replicas on different builds compare digests, so a change must be deliberate.
        let empty = Object::default();
        assert_eq!(empty.digest(), xxh3_64(&[0; 24]), "three zero counts");
        assert_eq!(empty.digest(), 0x743D_F94E_E4C7_8A2A);
        let mut o = Object::default();
        put(&mut o, "a", None, Some(b"v".to_vec()), 1, SIBS);
        assert_eq!(o.digest(), 0x0B5E_4E6A_F6E8_BA89);
    }

    #[test]
    fn digest_tells_states_apart() {
        let mut base = Object::default();
        put(&mut base, "a", None, Some(b"v".to_vec()), 1, SIBS);
        let variants: [fn(&mut Object); 7] = [
            |o| o.siblings[0].value = None,
            |o| o.siblings[0].value = Some(Vec::new()),
            |o| o.siblings[0].timestamp_ms += 1,
            |o| o.siblings[0].dot.node = "b".into(),
            |o| {
                o.clock.0.insert("b".into(), 1);
            },
            |o| {
                o.cloud.push(Dot {
                    node: "b".into(),
                    counter: 2,
                })
            },
            |o| o.siblings.clear(),
        ];
        let mut seen = vec![Object::default().digest(), base.digest()];
        for change in variants {
            let mut o = base.clone();
            change(&mut o);
            let d = o.digest();
            assert!(!seen.contains(&d), "{o:?} collides");
            seen.push(d);
        }
        // Length prefixes: moving a byte between a node id and a value changes the digest.
        let mut split = base.clone();
        split.siblings[0].dot.node = "av".into();
        split.siblings[0].value = Some(Vec::new());
        assert_ne!(split.digest(), base.digest());
    }

    #[test]
    fn digest_ignores_representation() {
        let mut o = Object::default();
        let empty = CausalContext::default();
        for (node, ts) in [("a", 1), ("b", 2), ("c", 3)] {
            put(
                &mut o,
                node,
                Some(&empty),
                Some(node.as_bytes().to_vec()),
                ts,
                SIBS,
            );
        }
        o.cloud.push(Dot {
            node: "d".into(),
            counter: 7,
        });
        let mut shuffled = o.clone();
        shuffled.siblings.reverse();
        shuffled.clock.0.insert("z".into(), 0);
        shuffled.cloud.push(Dot {
            node: "a".into(),
            counter: 1,
        });
        shuffled.cloud.push(Dot {
            node: "d".into(),
            counter: 7,
        });
        assert_ne!(shuffled, o);
        assert_eq!(shuffled.digest(), o.digest());
    }

    /// A replica history: each step is a write at one of three replicas, optionally after a sync.
    /// Context modes: 0 blind, 1 the replica's read context, 2 the last write's reply context.
    fn arb_history() -> impl Strategy<Value = Vec<(usize, bool, u8)>> {
        prop::collection::vec((0usize..3, any::<bool>(), 0u8..3), 1..24)
    }

    fn replay(history: &[(usize, bool, u8)]) -> Vec<Object> {
        let names = ["a", "b", "c"];
        let mut reps = vec![Object::default(); 3];
        let mut last_reply = CausalContext::default();
        for (i, &(r, sync_first, mode)) in history.iter().enumerate() {
            if sync_first {
                let from = reps[(r + 1) % 3].clone();
                reps[r].merge(&from, SIBS);
            }
            let ctx = match mode {
                0 => None,
                1 => Some(reps[r].read_context()),
                _ => Some(last_reply.clone()),
            };
            let v = Some(vec![i as u8]);
            last_reply = put(&mut reps[r], names[r], ctx.as_ref(), v, i as u64, SIBS);
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
        fn digest_is_independent_of_merge_order(
            h in arb_history(),
            order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        ) {
            let r = replay(&h);
            let mut forward = Object::default();
            for o in &r {
                forward.merge(o, SIBS);
            }
            let mut shuffled = Object::default();
            for &i in &order {
                shuffled.merge(&r[i], SIBS);
            }
            prop_assert_eq!(forward.digest(), shuffled.digest());
            shuffled.siblings.reverse();
            shuffled.cloud.reverse();
            prop_assert_eq!(forward.digest(), shuffled.digest());
            // Replay keeps objects normalized, so equality there is logical equality.
            for a in &r {
                for b in &r {
                    prop_assert_eq!(a == b, a.digest() == b.digest());
                }
            }
        }

        #[test]
        fn merged_object_keeps_every_unsuperseded_write(h in arb_history()) {
            let r = replay(&h);
            let mut all = r[0].clone();
            all.merge(&r[1], SIBS);
            all.merge(&r[2], SIBS);
            // Every sibling surviving on some replica and not seen by another replica (unless
            // that replica holds the same dot) survives the merge.
            for (i, rep) in r.iter().enumerate() {
                for s in &rep.siblings {
                    let superseded = r.iter().enumerate().any(|(j, o)| {
                        j != i && o.has_seen(&s.dot) && !o.siblings.iter().any(|x| x.dot == s.dot)
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
            let ctx = all.read_context();
            let mut target = r[1].clone();
            put(&mut target, "b", Some(&ctx), Some(b"final".to_vec()), 99, SIBS);
            let mut end = all.clone();
            end.merge(&target, SIBS);
            prop_assert_eq!(vals(&end), vec![b"final".to_vec()]);
        }
    }
}
