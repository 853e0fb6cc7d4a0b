//! Which replica of each partition comes first in its preference list.
//!
//! The first replica coordinates the partition's writes (one node orders a key's writes) and
//! reaps its tombstones, so it does noticeably more work than the others. Rendezvous order
//! alone gives some nodes several more first places than others (24, 20 and 20 of 64 on the
//! default three-node ring), and the busiest node sets the pace of the whole cluster. This
//! moves first places between the replicas of a partition until they are as even as the
//! replica sets allow; the replica sets themselves never change.

use std::cmp::Reverse;
use std::collections::VecDeque;

/// Per partition, the index of its first replica. `held[p * s + i]` says whether node i holds
/// partition p and `weight` is laid out the same way; every partition must have a holder.
///
/// Starts from each partition's heaviest holder, then, while some node has at least two first
/// places more than another node it can pass one to (directly, or along a chain of partitions
/// whose first place moves one step each), moves one along the shortest such chain. Each move
/// lowers the sum of squared counts, so it ends; the result depends only on the inputs.
pub fn first_replicas(held: &[bool], weight: &[u64], s: usize) -> Vec<usize> {
    let q = held.len().checked_div(s).unwrap_or(0);
    let mut first: Vec<usize> = (0..q)
        .map(|p| {
            (0..s)
                .filter(|&i| held[p * s + i])
                .max_by_key(|&i| (weight[p * s + i], Reverse(i)))
                .expect("every partition has a holder")
        })
        .collect();
    // The partitions each node is first for, in no particular order.
    let mut firsts: Vec<Vec<usize>> = vec![Vec::new(); s];
    for (p, &i) in first.iter().enumerate() {
        firsts[i].push(p);
    }
    loop {
        let mut sources: Vec<usize> = (0..s).collect();
        sources.sort_by_key(|&i| (Reverse(firsts[i].len()), i));
        let Some(chain) = sources
            .into_iter()
            .find_map(|u| chain_from(u, &firsts, held, s))
        else {
            return first;
        };
        for (p, j) in chain {
            let old = &mut firsts[first[p]];
            old.swap_remove(old.iter().position(|&x| x == p).expect("listed"));
            firsts[j].push(p);
            first[p] = j;
        }
    }
}

/// The shortest chain passing one first place from node `u` to a node with at least two
/// fewer: (partition, its new first replica) per step, each step starting where the previous
/// one ended. `None` when no such node is reachable.
fn chain_from(
    u: usize,
    firsts: &[Vec<usize>],
    held: &[bool],
    s: usize,
) -> Option<Vec<(usize, usize)>> {
    let count = |i: usize| firsts[i].len();
    // Breadth-first over nodes; `via[j]` is (the partition whose first place reaches j, the
    // node it moves from).
    let mut via: Vec<Option<(usize, usize)>> = vec![None; s];
    let mut seen = vec![false; s];
    seen[u] = true;
    let mut queue = VecDeque::from([u]);
    while let Some(i) = queue.pop_front() {
        if count(i) + 2 <= count(u) {
            let mut chain = Vec::new();
            let mut j = i;
            while let Some((p, from)) = via[j] {
                chain.push((p, j));
                j = from;
            }
            chain.reverse();
            return Some(chain);
        }
        // Partitions in ascending order, so the chain found depends only on the inputs.
        let mut mine = firsts[i].clone();
        mine.sort_unstable();
        for p in mine {
            for j in (0..s).filter(|&j| held[p * s + j]) {
                if !seen[j] {
                    seen[j] = true;
                    via[j] = Some((p, i));
                    queue.push_back(j);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `held` for partitions given as lists of holders among `s` nodes.
    fn layout(sets: &[&[usize]], s: usize) -> Vec<bool> {
        let mut held = vec![false; sets.len() * s];
        for (p, set) in sets.iter().enumerate() {
            for &i in *set {
                held[p * s + i] = true;
            }
        }
        held
    }

    #[test]
    fn first_places_move_along_a_chain() {
        // Node 0 is heaviest everywhere. Partitions 0 and 1 are held by 0 and 1 only, and
        // partition 2 by 1 and 2: node 2 gets a first place only if 1 passes its own on.
        let held = layout(&[&[0, 1], &[0, 1], &[1, 2]], 3);
        let weight: Vec<u64> = (0..9).map(|k| if k % 3 == 0 { 9 } else { 1 }).collect();
        let first = first_replicas(&held, &weight, 3);
        let mut count = [0; 3];
        first.iter().for_each(|&i| count[i] += 1);
        assert_eq!(count, [1, 1, 1], "{first:?}");
        assert!(first.iter().enumerate().all(|(p, &i)| held[p * 3 + i]));
    }

    #[test]
    fn heaviest_holder_stays_first_when_already_even() {
        let held = layout(&[&[0, 1], &[0, 1]], 2);
        let weight = vec![5, 7, 8, 2];
        assert_eq!(first_replicas(&held, &weight, 2), vec![1, 0]);
    }

    proptest! {
        #[test]
        fn every_node_holding_everything_ends_within_one(
            s in 1usize..=8,
            q in 1usize..=96,
            seed in any::<u64>(),
        ) {
            let held = vec![true; q * s];
            let weight: Vec<u64> = (0..q * s)
                .map(|k| xxhash_rust::xxh3::xxh3_64_with_seed(&k.to_le_bytes(), seed))
                .collect();
            let first = first_replicas(&held, &weight, s);
            let mut count = vec![0; s];
            first.iter().for_each(|&i| count[i] += 1);
            let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "{count:?}");
        }

        #[test]
        fn the_busiest_node_has_as_few_first_places_as_possible(
            s in 2usize..=4,
            q in 1usize..=6,
            subsets in proptest::collection::vec(1u8..16, 6),
            weights in proptest::collection::vec(any::<u64>(), 24),
        ) {
            // Each partition held by a non-empty subset of the nodes.
            let mut held = vec![false; q * s];
            for p in 0..q {
                let bits = subsets[p] as usize % ((1 << s) - 1) + 1;
                for i in 0..s {
                    held[p * s + i] = bits >> i & 1 == 1;
                }
            }
            let first = first_replicas(&held, &weights[..q * s], s);
            prop_assert!(first.iter().enumerate().all(|(p, &i)| held[p * s + i]));
            let busiest = |first: &[usize]| (0..s).map(|i| first.iter().filter(|&&f| f == i).count()).max();
            // Every assignment of first places to holders, exhaustively.
            let mut best = usize::MAX;
            for code in 0..s.pow(q as u32) {
                let pick: Vec<usize> = (0..q).map(|p| code / s.pow(p as u32) % s).collect();
                if pick.iter().enumerate().all(|(p, &i)| held[p * s + i]) {
                    best = best.min(busiest(&pick).unwrap());
                }
            }
            prop_assert_eq!(busiest(&first).unwrap(), best, "{:?}", first);
        }
    }
}
