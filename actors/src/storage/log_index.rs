//! Which commit-log segments hold records of which partitions.
//!
//! A vnode that starts while the node runs (a partition it gains, or a restart after a crash)
//! replays its partition's records from the log. Reading every segment for that costs each
//! start a pass over the whole log, tens of MB, and a membership change starts dozens of vnodes
//! at once; with this index a start reads only the segments that hold its partition, none for a
//! partition new to the node.
//!
//! Invariant: a segment's set is a superset of the partitions whose records it holds. The
//! writer notes a batch's partitions before it writes the batch, and segments that existed
//! before the writer started hold anything.

use std::collections::BTreeMap;

/// Partitions a segment holds records of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// Written before this process: may hold any partition.
    Any,
    /// A bit per partition.
    Some(Vec<u64>),
}

impl Held {
    fn contains(&self, partition: u32) -> bool {
        match self {
            Held::Any => true,
            Held::Some(bits) => bits
                .get(partition as usize / 64)
                .is_some_and(|w| w & (1 << (partition % 64)) != 0),
        }
    }

    fn insert(&mut self, partition: u32) {
        if let Held::Some(bits) = self {
            let word = partition as usize / 64;
            if bits.len() <= word {
                bits.resize(word + 1, 0);
            }
            bits[word] |= 1 << (partition % 64);
        }
    }
}

/// The live segments, oldest first, each with the partitions it may hold.
#[derive(Debug, Default)]
pub struct SegmentIndex {
    segments: BTreeMap<u64, Held>,
}

impl SegmentIndex {
    /// Records that segment `id` predates this index, so it may hold any partition.
    pub fn note_existing(&mut self, id: u64) {
        self.segments.insert(id, Held::Any);
    }

    /// Records that segment `id` holds (or is about to hold) records of `partitions`.
    pub fn note(&mut self, id: u64, partitions: impl IntoIterator<Item = u32>) {
        let held = self
            .segments
            .entry(id)
            .or_insert_with(|| Held::Some(Vec::new()));
        for p in partitions {
            held.insert(p);
        }
    }

    /// Forgets segment `id`, deleted from the log.
    pub fn forget(&mut self, id: u64) {
        self.segments.remove(&id);
    }

    /// The segments that may hold records of `partition`, ascending.
    pub fn segments_with(&self, partition: u32) -> Vec<u64> {
        self.segments
            .iter()
            .filter(|(_, held)| held.contains(partition))
            .map(|(&id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_partition_new_to_the_log_has_no_segments_but_old_segments_count_for_all() {
        let mut index = SegmentIndex::default();
        index.note(4, [1, 70]);
        index.note(5, [2]);
        assert!(index.segments_with(3).is_empty());
        assert_eq!(index.segments_with(70), [4]);
        index.note_existing(2);
        assert_eq!(index.segments_with(3), [2]);
        assert_eq!(index.segments_with(1), [2, 4]);
        index.forget(4);
        assert_eq!(index.segments_with(1), [2]);
    }

    proptest! {
        #[test]
        fn every_segment_holding_a_partition_is_listed_for_it(
            writes in prop::collection::vec((0u64..6, 0u32..200), 0..60),
            gone in prop::collection::btree_set(0u64..6, 0..3),
            asked in 0u32..200,
        ) {
            let mut index = SegmentIndex::default();
            for &(seg, p) in &writes {
                index.note(seg, [p]);
            }
            for &seg in &gone {
                index.forget(seg);
            }
            let mut expected: Vec<u64> = writes
                .iter()
                .filter(|&&(seg, p)| p == asked && !gone.contains(&seg))
                .map(|&(seg, _)| seg)
                .collect();
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(index.segments_with(asked), expected);
        }
    }
}
