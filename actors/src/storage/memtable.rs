//! A vnode's recent writes, held in memory until the vnode flushes them to its redb file.
//!
//! Why: with writes spread over many vnodes each redb commit carried about one write, and redb
//! commits were the largest share of a node's CPU. Durability comes from the node's commit log,
//! so a vnode can collect writes here and commit them to redb in one transaction every so
//! often. Readers look here first, then in the file.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::storage::stored::Stored;

/// Objects written since the last flush.
#[derive(Debug, Default)]
pub struct Memtable {
    entries: RwLock<HashMap<Vec<u8>, Arc<Stored>>>,
}

impl Memtable {
    /// The latest object of `key` if it was written since the last flush.
    pub fn get(&self, key: &[u8]) -> Option<Arc<Stored>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Records new objects (the vnode is the only writer).
    pub fn insert_all(&self, objects: impl IntoIterator<Item = (Vec<u8>, Arc<Stored>)>) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for (k, o) in objects {
            map.insert(k, o);
        }
    }

    /// Every entry, to write to the file.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Arc<Stored>)> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect()
    }

    /// Forgets the entries of `flushed` that still hold the very object flushed (a key
    /// written again since keeps its newer one); returns the bytes the remaining entries hold.
    pub fn remove_flushed(&self, flushed: &[(Vec<u8>, Arc<Stored>)]) -> usize {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for (k, o) in flushed {
            if map.get(k).is_some_and(|now| Arc::ptr_eq(now, o)) {
                map.remove(k);
            }
        }
        map.values().map(|o| o.encoded.len()).sum()
    }

    /// Forgets every entry; call once they are committed to the file.
    pub fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Digests of the held objects whose key `wanted` accepts.
    pub fn digests(&self, wanted: impl Fn(&[u8]) -> bool) -> Vec<(Vec<u8>, u64)> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, _)| wanted(k))
            .map(|(k, o)| (k.clone(), o.digest))
            .collect()
    }

    /// Forgets one key.
    pub fn remove(&self, key: &[u8]) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::codec::encode_object;
    use crate::core::version::Object;

    fn stored(tag: u8) -> Arc<Stored> {
        let mut o = Object::default();
        o.update(
            "n1~1",
            1,
            None,
            Some(vec![tag]),
            1,
            crate::core::version::ConflictPolicy::LastWriteWins,
        );
        let bytes = encode_object(&o);
        Stored::new(o, bytes)
    }

    #[test]
    fn a_flush_forgets_only_what_it_wrote() {
        let m = Memtable::default();
        let (a1, b1) = (stored(1), stored(2));
        m.insert_all([(b"a".to_vec(), a1.clone()), (b"b".to_vec(), b1.clone())]);
        let flushed = m.snapshot();
        // Written again while the flush ran: the newer object stays.
        let a2 = stored(3);
        m.insert_all([(b"a".to_vec(), a2.clone())]);
        let left = m.remove_flushed(&flushed);
        assert!(m.get(b"b").is_none());
        assert!(Arc::ptr_eq(&m.get(b"a").unwrap(), &a2));
        assert_eq!(left, a2.encoded.len());
    }
}
