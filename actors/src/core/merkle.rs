//! Merkle trees for anti-entropy: a fixed-shape hash tree over one vnode's keys.
//!
//! Keys fall into `segments` leaves by hash ([`segment_of`]). A leaf is the XOR of its keys'
//! [`key_hash`]es and an inner node the XOR of its up to [`FANOUT`] children, so a node hashes
//! a set, independent of the order writes arrived in, and a write updates the tree in O(depth):
//! XOR out the key's old hash, XOR in the new one. The vnode keeps its tree current on every
//! commit, so an exchange never rescans the store. Two replicas compare trees top-down with an
//! [`Exchange`], descending only into nodes that differ, then compare the (key, digest) lists of
//! the differing leaves with [`diff_keys`].
//!
//! XOR of independent 64-bit hashes makes two different leaves collide with probability about
//! 2^-64; a collision hides that leaf's difference until one of its keys changes again. It is
//! no defence against an adversary choosing keys, which replicas trusting each other do not need.

use std::cmp::Ordering;
use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Leaves per tree unless configured otherwise.
pub const DEFAULT_SEGMENTS: u32 = 1024;

/// Children per inner node.
pub const FANOUT: u32 = 32;

/// Seed of the segment hash: [`partition_of`](super::ring::partition_of) uses seed 0, and a
/// vnode's keys all share a partition, so its segments must come from an unrelated hash.
const SEGMENT_SEED: u64 = 0x5345_474D_454E_5453;

/// The leaf holding `key`: the top bits of a seeded xxh3_64 of the key; `segments` is a power
/// of two.
pub fn segment_of(key: &[u8], segments: u32) -> u32 {
    debug_assert!(segments.is_power_of_two());
    let hash = xxh3_64_with_seed(key, SEGMENT_SEED);
    // One segment keeps no bits, and shifting a u64 by 64 would overflow.
    let top = hash
        .checked_shr(64 - segments.trailing_zeros())
        .unwrap_or(0);
    top as u32
}

/// A key's contribution to its leaf: xxh3_64 of the key seeded with its object digest.
///
/// Key and digest must mix: with a separable `h(key) ^ g(digest)`, two replicas whose digests
/// are swapped between two keys of a leaf would hash alike.
pub fn key_hash(key: &[u8], object_digest: u64) -> u64 {
    xxh3_64_with_seed(key, object_digest)
}

/// A hash tree over one vnode's keys; the shape depends only on the segment count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[0]` is the root alone, the last level the leaves; node i of level d has children
    /// `i * FANOUT ..` on level d + 1, and an inner level is ceil(level below / FANOUT) long.
    levels: Vec<Vec<u64>>,
}

impl MerkleTree {
    /// An empty tree (every node 0) with `segments` leaves, a power of two.
    ///
    /// Panics otherwise: both replicas must build the same shape, so it is a fixed setting.
    pub fn new(segments: u32) -> Self {
        assert!(
            segments.is_power_of_two(),
            "segments must be a power of two, got {segments}"
        );
        let mut levels = vec![vec![0; segments as usize]];
        while let Some(len) = levels.last().map(Vec::len).filter(|&len| len > 1) {
            levels.push(vec![0; len.div_ceil(FANOUT as usize)]);
        }
        levels.reverse();
        MerkleTree { levels }
    }

    /// Records a change of `key` from digest `old` to `new`, where `None` means absent.
    ///
    /// `old` must be what the tree last saw for the key, or its leaf stays wrong.
    pub fn update(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let contribution = |digest: Option<u64>| digest.map_or(0, |d| key_hash(key, d));
        let delta = contribution(old) ^ contribution(new);
        let mut i = segment_of(key, self.segments()) as usize;
        for level in self.levels.iter_mut().rev() {
            level[i] ^= delta;
            i /= FANOUT as usize;
        }
    }

    /// The number of leaves.
    pub fn segments(&self) -> u32 {
        self.levels[self.levels.len() - 1].len() as u32
    }

    /// The root hash: XOR of every key's hash.
    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    /// The number of levels, root and leaves included (1 for a single segment).
    pub fn depth(&self) -> u32 {
        self.levels.len() as u32
    }

    /// The hashes of level `d`: 0 is the root, `depth() - 1` the leaves.
    pub fn level(&self, d: u32) -> &[u64] {
        &self.levels[d as usize]
    }

    /// The hash of node `i` of level `d`.
    pub fn node(&self, d: u32, i: u32) -> u64 {
        self.levels[d as usize][i as usize]
    }

    /// The hashes of nodes `indices` of level `d`, or `None` if one is out of range: how a peer
    /// answers an [`Exchange`] step without trusting the request.
    pub fn hashes(&self, d: u32, indices: &[u32]) -> Option<Vec<u64>> {
        let level = self.levels.get(d as usize)?;
        let hash = |&i: &u32| level.get(i as usize).copied();
        indices.iter().map(hash).collect()
    }

    /// The indices on level `d + 1` of node `i`'s children on level `d`; empty for a leaf.
    pub fn children_range(&self, d: u32, i: u32) -> Range<u32> {
        let below = self.levels.get(d as usize + 1).map_or(0, Vec::len) as u32;
        let start = i.saturating_mul(FANOUT).min(below);
        start..i.saturating_add(1).saturating_mul(FANOUT).min(below)
    }
}

/// One side of a tree comparison, driven a step at a time so an actor can interleave it with
/// other messages: send the peer (`segments()`, `level()`, `indices()`), get back the peer's
/// hashes of those nodes, and feed them to [`Exchange::answer`].
///
/// Writes may land on either tree between steps. The walk stays well-formed, since the shape is
/// fixed; a difference created meanwhile may go unnoticed until the next exchange, and a
/// spurious segment only costs a [`diff_keys`] that finds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    segments: u32,
    level: u32,
    indices: Vec<u32>,
}

/// What an [`Exchange`] needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask the peer for the hashes the exchange names.
    Ask(Exchange),
    /// The walk is over: the leaf segments that differ, ascending.
    Done(Vec<u32>),
}

/// Why an [`Exchange`] step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The peer answered a different number of hashes than were asked for.
    #[error("asked for {asked} hashes, the peer answered {answered}")]
    WrongCount {
        /// Nodes asked about.
        asked: usize,
        /// Hashes answered.
        answered: usize,
    },
    /// The tree answering the step does not have the shape the exchange started with.
    #[error("the exchange is over {expected} segments, the tree has {actual}")]
    ShapeMismatch {
        /// Segments of the tree the exchange started from.
        expected: u32,
        /// Segments of the tree given now.
        actual: u32,
    },
}

impl Exchange {
    /// Starts a comparison of `tree` with a peer's tree of the same shape: ask for the root.
    pub fn start(tree: &MerkleTree) -> Exchange {
        Exchange {
            segments: tree.segments(),
            level: 0,
            indices: vec![0],
        }
    }

    /// The segment count both trees must have; the peer refuses a request that differs.
    pub fn segments(&self) -> u32 {
        self.segments
    }

    /// The level the pending question is about.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The nodes of [`Exchange::level`] whose hashes the peer is asked for, ascending.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Takes the peer's hashes of [`Exchange::indices`], in order, and compares them with
    /// `tree`'s: asks next about the children of the nodes that differ, or finishes at the
    /// leaves or when nothing differs.
    pub fn answer(self, tree: &MerkleTree, theirs: &[u64]) -> Result<Step, ExchangeError> {
        if tree.segments() != self.segments {
            return Err(ExchangeError::ShapeMismatch {
                expected: self.segments,
                actual: tree.segments(),
            });
        }
        if theirs.len() != self.indices.len() {
            return Err(ExchangeError::WrongCount {
                asked: self.indices.len(),
                answered: theirs.len(),
            });
        }
        let mine = tree.level(self.level);
        let differing = (self.indices.iter().zip(theirs))
            .filter(|&(&i, &h)| mine[i as usize] != h)
            .map(|(&i, _)| i);
        if self.level + 1 == tree.depth() {
            return Ok(Step::Done(differing.collect()));
        }
        let indices: Vec<u32> = differing
            .flat_map(|i| tree.children_range(self.level, i))
            .collect();
        Ok(if indices.is_empty() {
            Step::Done(Vec::new())
        } else {
            Step::Ask(Exchange {
                level: self.level + 1,
                indices,
                ..self
            })
        })
    }
}

/// Runs a whole [`Exchange`] of `tree` against `peer`, which returns the peer's hashes for
/// (level, indices); returns the differing leaf segments, ascending.
pub fn diff_walk(
    tree: &MerkleTree,
    mut peer: impl FnMut(u32, &[u32]) -> Vec<u64>,
) -> Result<Vec<u32>, ExchangeError> {
    let mut exchange = Exchange::start(tree);
    loop {
        let theirs = peer(exchange.level(), exchange.indices());
        match exchange.answer(tree, &theirs)? {
            Step::Ask(next) => exchange = next,
            Step::Done(segments) => return Ok(segments),
        }
    }
}

/// The keys that need repair, ascending: present on one side only or with different object
/// digests. Both inputs are (key, object digest) lists sorted by key, without repeated keys.
pub fn diff_keys(mine: &[(Vec<u8>, u64)], theirs: &[(Vec<u8>, u64)]) -> Vec<Vec<u8>> {
    debug_assert!(mine.is_sorted_by(|a, b| a.0 < b.0) && theirs.is_sorted_by(|a, b| a.0 < b.0));
    let (mut i, mut j) = (0, 0);
    let mut keys = Vec::new();
    loop {
        let order = match (mine.get(i), theirs.get(j)) {
            (Some(a), Some(b)) => a.0.cmp(&b.0),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => return keys,
        };
        match order {
            Ordering::Less => keys.push(mine[i].0.clone()),
            Ordering::Greater => keys.push(theirs[j].0.clone()),
            Ordering::Equal if mine[i].1 != theirs[j].1 => keys.push(mine[i].0.clone()),
            Ordering::Equal => {}
        }
        i += usize::from(order != Ordering::Greater);
        j += usize::from(order != Ordering::Less);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::ring::partition_of;
    use proptest::prelude::*;
    use proptest::sample::select;

    type Entries = BTreeMap<Vec<u8>, u64>;

    /// Segment counts the properties draw from: depths 1 to 4, full and partial inner levels.
    const SEGMENTS: [u32; 6] = [1, 2, 32, 64, 1024, 2048];

    /// A tree computed from scratch, independently of `update`: leaves summed directly, then
    /// each inner node from its children.
    fn rebuilt(segments: u32, entries: &Entries) -> MerkleTree {
        let mut levels = vec![vec![0u64; segments as usize]];
        for (key, &digest) in entries {
            levels[0][segment_of(key, segments) as usize] ^= key_hash(key, digest);
        }
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let up = last
                .chunks(FANOUT as usize)
                .map(|c| c.iter().fold(0, |a, h| a ^ h));
            levels.push(up.collect());
        }
        levels.reverse();
        MerkleTree { levels }
    }

    /// Keys and digests from small spaces, so two maps share keys, some with equal digests.
    fn arb_entries() -> impl Strategy<Value = Entries> {
        prop::collection::btree_map(prop::collection::vec(0u8..8, 0..3), 0u64..4, 0..40)
    }

    #[test]
    fn shape_follows_the_fanout() {
        let sizes = |s| {
            let t = MerkleTree::new(s);
            (0..t.depth()).map(|d| t.level(d).len()).collect::<Vec<_>>()
        };
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(32), [1, 32]);
        assert_eq!(sizes(64), [1, 2, 64]);
        assert_eq!(sizes(DEFAULT_SEGMENTS), [1, 32, 1024]);
        assert_eq!(sizes(2048), [1, 2, 64, 2048]);
        let t = MerkleTree::new(2048);
        assert_eq!(t.children_range(0, 0), 0..2);
        assert_eq!(t.children_range(1, 1), 32..64);
        assert_eq!(t.children_range(3, 5), 0..0);
        assert!(MerkleTree::new(1).children_range(0, 0).is_empty());
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn segments_must_be_a_power_of_two() {
        MerkleTree::new(48);
    }

    #[test]
    fn hash_format_is_pinned() {
        // Replicas on different builds compare these, so a change must be deliberate.
        assert_eq!(segment_of(b"abc", 1), 0);
        assert_eq!(segment_of(b"abc", 1024), 0x21E);
        assert_eq!(key_hash(b"abc", 0), 0x78AF_5F94_892F_3950);
        assert_eq!(key_hash(b"abc", 1), 0x6B44_67B4_43C7_6228);
    }

    #[test]
    fn segments_use_top_bits_independent_of_the_partition() {
        let keys: Vec<Vec<u8>> = (0..20_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        for key in &keys[..64] {
            assert_eq!(segment_of(key, 512), segment_of(key, 1024) >> 1);
        }
        // All keys of one partition must still spread over the segments.
        let mut hit = vec![0u32; 64];
        for key in keys.iter().filter(|k| partition_of(k, 64) == 5) {
            hit[segment_of(key, 64) as usize] += 1;
        }
        assert!(hit.iter().all(|&n| n > 0), "{hit:?}");
    }

    #[test]
    fn updates_are_incremental_and_reversible() {
        let mut t = MerkleTree::new(64);
        t.update(b"k", None, Some(7));
        assert_eq!(t.root(), key_hash(b"k", 7));
        let leaf = segment_of(b"k", 64);
        assert_eq!(t.node(2, leaf), t.root());
        assert_eq!(t.node(1, leaf / FANOUT), t.root());
        let before = t.clone();
        t.update(b"k", Some(7), Some(7));
        assert_eq!(t, before, "an unchanged digest is a no-op");
        t.update(b"k", Some(7), Some(8));
        assert_eq!(t.root(), key_hash(b"k", 8));
        t.update(b"k", Some(8), None);
        assert_eq!(t, MerkleTree::new(64));
    }

    #[test]
    fn equal_trees_stop_at_the_root() {
        let mut t = MerkleTree::new(1024);
        t.update(b"k", None, Some(1));
        let mut asks = 0;
        let found = diff_walk(&t, |d, i| {
            asks += 1;
            t.hashes(d, i).unwrap()
        });
        assert_eq!((found, asks), (Ok(vec![]), 1));
    }

    #[test]
    fn bad_answers_are_refused() {
        let t = MerkleTree::new(64);
        let wrong_count = ExchangeError::WrongCount {
            asked: 1,
            answered: 2,
        };
        assert_eq!(Exchange::start(&t).answer(&t, &[0, 0]), Err(wrong_count));
        let shape = ExchangeError::ShapeMismatch {
            expected: 64,
            actual: 32,
        };
        let other = MerkleTree::new(32);
        assert_eq!(Exchange::start(&t).answer(&other, &[0]), Err(shape));
        assert_eq!(t.hashes(1, &[1, 2]), None);
        assert_eq!(t.hashes(3, &[0]), None);
        assert_eq!(t.hashes(1, &[1, 0]), Some(vec![0, 0]));
    }

    proptest! {
        #[test]
        fn incremental_updates_match_a_rebuild(
            segments in select(&SEGMENTS[..]),
            ops in prop::collection::vec((0u8..24, prop::option::of(0u64..4)), 0..120),
        ) {
            let mut tree = MerkleTree::new(segments);
            let mut model = Entries::new();
            for (key, digest) in ops {
                let key = vec![key];
                let old = match digest {
                    Some(d) => model.insert(key.clone(), d),
                    None => model.remove(&key),
                };
                tree.update(&key, old, digest);
            }
            prop_assert_eq!(tree, rebuilt(segments, &model));
        }

        #[test]
        fn operation_order_is_irrelevant(
            segments in select(&SEGMENTS[..]),
            (entries, order) in arb_entries().prop_flat_map(|e| {
                let order = Just(e.clone().into_iter().collect::<Vec<_>>()).prop_shuffle();
                (Just(e), order)
            }),
        ) {
            let mut forward = MerkleTree::new(segments);
            for (key, &digest) in &entries {
                forward.update(key, None, Some(digest));
            }
            let mut shuffled = MerkleTree::new(segments);
            for (key, digest) in &order {
                // A detour through another digest must cancel out.
                shuffled.update(key, None, Some(digest + 1));
                shuffled.update(key, Some(digest + 1), Some(*digest));
            }
            prop_assert_eq!(forward.root(), shuffled.root());
            prop_assert_eq!(forward, shuffled);
        }

        #[test]
        fn exchange_finds_exactly_the_differing_leaves(
            segments in select(&SEGMENTS[..]),
            base in arb_entries(),
            (mine, theirs) in (arb_entries(), arb_entries()),
        ) {
            // Both sides start from a common base, then each overwrites some keys.
            let a = rebuilt(segments, &base.clone().into_iter().chain(mine).collect());
            let b = rebuilt(segments, &base.into_iter().chain(theirs).collect());
            let mut asked: Vec<(u32, Vec<u32>)> = Vec::new();
            let found = diff_walk(&a, |d, i| {
                asked.push((d, i.to_vec()));
                b.hashes(d, i).unwrap()
            }).unwrap();
            let leaves = a.depth() - 1;
            let expected: Vec<u32> = (0..segments)
                .filter(|&s| a.node(leaves, s) != b.node(leaves, s))
                .collect();
            prop_assert_eq!(found, expected);
            prop_assert_eq!(&asked[0], &(0, vec![0]));
            prop_assert!(asked.len() <= a.depth() as usize);
            // Each later question names exactly the children of the nodes that differed.
            for pair in asked.windows(2) {
                let ((d, prev), (next_d, next)) = (&pair[0], &pair[1]);
                let children: Vec<u32> = prev.iter()
                    .filter(|&&i| a.node(*d, i) != b.node(*d, i))
                    .flat_map(|&i| a.children_range(*d, i))
                    .collect();
                prop_assert_eq!((*next_d, next), (d + 1, &children));
            }
        }

        #[test]
        fn diff_keys_is_the_symmetric_difference(a in arb_entries(), b in arb_entries()) {
            let list = |e: &Entries| e.iter().map(|(k, &d)| (k.clone(), d)).collect::<Vec<_>>();
            let mut expected: Vec<Vec<u8>> = a.keys().chain(b.keys())
                .filter(|&k| a.get(k) != b.get(k))
                .cloned()
                .collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(diff_keys(&list(&a), &list(&b)), expected);
        }
    }
}
