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
