//! Durable hints: objects a node holds as a fallback for a replica that was down when they were
//! written (sloppy quorum), until they are handed back to that replica.
//!
//! One redb file per node, keyed by (owner, partition, key). Several hints for one key merge
//! into one object (merging is a join), so a fallback holds at most one entry per key and
//! owner however many writes it took. Every store is one durable commit: a hint counts toward
//! W, so it must survive a crash of the fallback.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::core::codec::{decode_object, encode_object};
use crate::core::version::ConflictPolicy;
use crate::storage::vnode_store::StoreError;

const HINTS: TableDefinition<(&str, u32, &[u8]), &[u8]> = TableDefinition::new("hints");

/// One hint: an encoded object of `key` in `partition`, kept for `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The replica the object belongs to.
    pub owner: String,
    /// The key's partition.
    pub partition: u32,
    /// The key bytes.
    pub key: Vec<u8>,
    /// The encoded object.
    pub object: Vec<u8>,
}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("hints {context}: {e}"))
}

/// A node's hint file. All methods block (redb I/O): call them off the async workers.
#[derive(Debug)]
pub struct HintStore {
    db: Database,
    conflict: ConflictPolicy,
    /// Hints per (owner, partition), kept in step with the file so that questions about them
    /// (asked every handoff tick and before every reap) never scan it.
    counts: Mutex<BTreeMap<(String, u32), u64>>,
}

impl HintStore {
    /// Opens (or creates) the hint file.
    pub fn open(
        path: &Path,
        cache_bytes: usize,
        conflict: ConflictPolicy,
    ) -> Result<HintStore, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| err("open", e))?;
        let txn = db.begin_write().map_err(|e| err("begin", e))?;
        txn.open_table(HINTS).map_err(|e| err("table", e))?;
        txn.commit().map_err(|e| err("commit", e))?;
        let mut counts: BTreeMap<(String, u32), u64> = BTreeMap::new();
        {
            let txn = db.begin_read().map_err(|e| err("begin read", e))?;
            let table = txn.open_table(HINTS).map_err(|e| err("table", e))?;
            for entry in table.iter().map_err(|e| err("iter", e))? {
                let (k, _) = entry.map_err(|e| err("iter", e))?;
                let (owner, partition, _) = k.value();
                *counts.entry((owner.to_string(), partition)).or_default() += 1;
            }
        }
        Ok(HintStore {
            db,
            conflict,
            counts: Mutex::new(counts),
        })
    }

    /// Merges every hint into the file in one durable commit. A hint whose object cannot be
    /// decoded is refused (its slot says why); the others are stored.
    pub fn store(&self, hints: &[Hint]) -> Result<Vec<Result<(), String>>, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| err("begin", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err("durability", e))?;
        let mut results = Vec::with_capacity(hints.len());
        let mut added: Vec<(String, u32)> = Vec::new();
        {
            let mut table = txn.open_table(HINTS).map_err(|e| err("table", e))?;
            for h in hints {
                let Ok(mut incoming) = decode_object(&h.object) else {
                    results.push(Err("malformed object".to_string()));
                    continue;
                };
                let id = (h.owner.as_str(), h.partition, h.key.as_slice());
                let existing = table
                    .get(id)
                    .map_err(|e| err("get", e))?
                    .map(|v| decode_object(v.value()));
                let merged = match existing {
                    None => {
                        added.push((h.owner.clone(), h.partition));
                        h.object.clone()
                    }
                    Some(Ok(stored)) => {
                        incoming.merge(&stored, self.conflict);
                        encode_object(&incoming)
                    }
                    // An unreadable hint must not be lost either: keep it, refuse the new one.
                    Some(Err(e)) => {
                        results.push(Err(format!("stored hint unreadable: {e}")));
                        continue;
                    }
                };
                table
                    .insert(id, merged.as_slice())
                    .map_err(|e| err("insert", e))?;
                results.push(Ok(()));
            }
        }
        txn.commit().map_err(|e| err("commit", e))?;
        let mut counts = self.lock_counts();
        for k in added {
            *counts.entry(k).or_default() += 1;
        }
        Ok(results)
    }

    /// Owners with hints waiting, with how many each.
    pub fn owners(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut owners: Vec<(String, u64)> = Vec::new();
        for ((owner, _), n) in self.lock_counts().iter() {
            match owners.last_mut() {
                Some((o, total)) if o == owner => *total += n,
                _ => owners.push((owner.clone(), *n)),
            }
        }
        Ok(owners)
    }

    /// Hints waiting for any owner in `partition`.
    pub fn count_for_partition(&self, partition: u32) -> Result<u64, StoreError> {
        let counts = self.lock_counts();
        Ok(counts
            .iter()
            .filter(|((_, p), _)| *p == partition)
            .map(|(_, n)| n)
            .sum())
    }

    /// Hints waiting in total.
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.lock_counts().values().sum())
    }

    /// True when no hint waits.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u32), u64>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `limit` of `owner`'s hints in key order, starting after `after` (a partition and
    /// key already handled in this pass) or at the first.
    pub fn chunk(
        &self,
        owner: &str,
        after: Option<&(u32, Vec<u8>)>,
        limit: usize,
    ) -> Result<Vec<Hint>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(HINTS).map_err(|e| err("table", e))?;
        let start: (&str, u32, &[u8]) = match after {
            Some((p, k)) => (owner, *p, k.as_slice()),
            None => (owner, 0, &[]),
        };
        let mut out = Vec::new();
        for entry in table.range(start..).map_err(|e| err("range", e))? {
            let (k, v) = entry.map_err(|e| err("range", e))?;
            let (o, partition, key) = k.value();
            if o != owner || out.len() >= limit {
                break;
            }
            if after.is_some_and(|(p, k)| *p == partition && k.as_slice() == key) {
                continue;
            }
            out.push(Hint {
                owner: o.to_string(),
                partition,
                key: key.to_vec(),
                object: v.value().to_vec(),
            });
        }
        Ok(out)
    }

    /// Removes the hints that were delivered, unless one changed since it was read (a newer
    /// write arrived meanwhile: it stays for the next round). Returns how many were removed.
    pub fn remove_delivered(&self, delivered: &[Hint]) -> Result<usize, StoreError> {
        if delivered.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(|e| err("begin", e))?;
        let mut gone: Vec<(String, u32)> = Vec::new();
        {
            let mut table = txn.open_table(HINTS).map_err(|e| err("table", e))?;
            for h in delivered {
                let id = (h.owner.as_str(), h.partition, h.key.as_slice());
                let unchanged = table
                    .get(id)
                    .map_err(|e| err("get", e))?
                    .is_some_and(|v| v.value() == h.object.as_slice());
                if unchanged {
                    table.remove(id).map_err(|e| err("remove", e))?;
                    gone.push((h.owner.clone(), h.partition));
                }
            }
        }
        txn.commit().map_err(|e| err("commit", e))?;
        let removed = gone.len();
        let mut counts = self.lock_counts();
        for k in gone {
            if let Some(n) = counts.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&k);
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::version::Object;

    fn object(node: &str, counter: u64, value: &str) -> Vec<u8> {
        let mut o = Object::default();
        o.update(
            node,
            counter,
            None,
            Some(value.as_bytes().to_vec()),
            counter,
            ConflictPolicy::Siblings { max_siblings: 8 },
        );
        encode_object(&o)
    }

    fn hint(owner: &str, key: &str, obj: Vec<u8>) -> Hint {
        Hint {
            owner: owner.into(),
            partition: 3,
            key: key.as_bytes().to_vec(),
            object: obj,
        }
    }

    fn open(dir: &tempfile::TempDir) -> HintStore {
        HintStore::open(
            &dir.path().join("hints.redb"),
            1 << 20,
            ConflictPolicy::Siblings { max_siblings: 8 },
        )
        .unwrap()
    }

    #[test]
    fn hints_merge_per_key_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir);
            let r = s
                .store(&[
                    hint("b", "k", object("a", 1, "one")),
                    hint("b", "k", object("c", 1, "two")),
                    hint("d", "k", object("a", 2, "three")),
                ])
                .unwrap();
            assert!(r.iter().all(Result::is_ok));
        }
        let s = open(&dir);
        assert_eq!(s.owners().unwrap(), vec![("b".into(), 1), ("d".into(), 1)]);
        let b = s.chunk("b", None, 10).unwrap();
        assert_eq!(b.len(), 1);
        let mut values = decode_object(&b[0].object).unwrap().values().count();
        assert_eq!(
            values, 2,
            "concurrent hints for one key are kept as siblings"
        );
        values = s.chunk("d", None, 10).unwrap().len();
        assert_eq!(values, 1);
    }

    #[test]
    fn only_unchanged_delivered_hints_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.store(&[
            hint("b", "k1", object("a", 1, "x")),
            hint("b", "k2", object("a", 2, "y")),
        ])
        .unwrap();
        let sent = s.chunk("b", None, 10).unwrap();
        // A newer write for k2 arrives while the chunk is in flight.
        s.store(&[hint("b", "k2", object("c", 1, "z"))]).unwrap();
        assert_eq!(s.remove_delivered(&sent).unwrap(), 1);
        assert_eq!(s.len().unwrap(), 1, "counts follow removals");
        assert_eq!(s.count_for_partition(3).unwrap(), 1);
        assert_eq!(s.count_for_partition(4).unwrap(), 0);
        let left = s.chunk("b", None, 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, b"k2".to_vec());
    }

    #[test]
    fn malformed_objects_are_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let r = s
            .store(&[
                hint("b", "bad", vec![0xff, 1, 2]),
                hint("b", "good", object("a", 1, "v")),
            ])
            .unwrap();
        assert!(r[0].is_err() && r[1].is_ok());
        assert_eq!(s.len().unwrap(), 1);
    }

    #[test]
    fn chunks_stop_at_the_owner_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let hints: Vec<Hint> = (0..5)
            .map(|i| hint("b", &format!("k{i}"), object("a", i + 1, "v")))
            .chain([hint("c", "k", object("a", 9, "v"))])
            .collect();
        s.store(&hints).unwrap();
        assert_eq!(s.chunk("b", None, 3).unwrap().len(), 3);
        assert_eq!(s.chunk("b", None, 10).unwrap().len(), 5);
        assert_eq!(s.chunk("a", None, 10).unwrap().len(), 0);
        let first = s.chunk("b", None, 3).unwrap();
        let last = first.last().map(|h| (h.partition, h.key.clone())).unwrap();
        let rest = s.chunk("b", Some(&last), 10).unwrap();
        assert_eq!(
            rest.len(),
            2,
            "a pass resumes after the last hint it handled"
        );
        assert!(rest.iter().all(|h| !first.contains(h)));
    }
}
