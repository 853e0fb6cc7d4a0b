//! A vnode's bounded cache of current objects, so reads of hot keys skip the file's B-tree and
//! the decoding of what it stores.
//!
//! The vnode, the only writer, puts every object it commits and removes what it reaps. Readers
//! admit what they read from the file only if no write reached the cache since they started
//! looking, so a slow reader never installs an object older than one the vnode wrote meanwhile.
//! When full, the cache drops a quarter of its entries in hash order: eviction without any
//! per-read bookkeeping, close to random, which suits uniform and skewed access alike.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::storage::stored::Stored;

/// Bytes counted per entry beyond its key and encoding (map slot, object, allocations).
const ENTRY_OVERHEAD: usize = 96;

fn entry_size(key: &[u8], stored: &Stored) -> usize {
    // The decoded object, and the read context a client read memoizes, each hold at most
    // about as many bytes as the encoding.
    key.len() + 3 * stored.encoded.len() + ENTRY_OVERHEAD
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Vec<u8>, Arc<Stored>>,
    bytes: usize,
    /// Writes seen so far; a reader's admission is refused if this moved since it started.
    generation: u64,
}

/// Current objects of some of a vnode's keys, at most about `capacity` bytes.
#[derive(Debug)]
pub struct ObjectCache {
    capacity: usize,
    inner: RwLock<Inner>,
}

impl ObjectCache {
    /// An empty cache of about `capacity` bytes; 0 turns caching off.
    pub fn new(capacity: usize) -> ObjectCache {
        ObjectCache {
            capacity,
            inner: RwLock::new(Inner::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached object of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Arc<Stored>> {
        if self.capacity == 0 {
            return None;
        }
        self.read().map.get(key).cloned()
    }

    /// Marks the start of a read that may [`ObjectCache::admit`] what it finds in the file.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Caches an object a reader found in the file, unless a write arrived since the reader
    /// took `generation` (the object may then be stale).
    pub fn admit(&self, key: &[u8], stored: Arc<Stored>, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.write();
        if inner.generation == generation {
            self.insert(&mut inner, key.to_vec(), stored);
        }
    }

    /// Caches an object the vnode just committed (the writer's path).
    pub fn put(&self, key: Vec<u8>, stored: Arc<Stored>) {
        let mut inner = self.write();
        inner.generation += 1;
        if self.capacity > 0 {
            self.insert(&mut inner, key, stored);
        }
    }

    /// Forgets `key` (the writer's path, when a key is removed from the file).
    pub fn remove(&self, key: &[u8]) {
        let mut inner = self.write();
        inner.generation += 1;
        if let Some(old) = inner.map.remove(key) {
            inner.bytes -= entry_size(key, &old);
        }
    }

    fn insert(&self, inner: &mut Inner, key: Vec<u8>, stored: Arc<Stored>) {
        let size = entry_size(&key, &stored);
        if size > self.capacity {
            if let Some(old) = inner.map.remove(&key) {
                inner.bytes -= entry_size(&key, &old);
            }
            return;
        }
        if let Some(old) = inner.map.insert(key.clone(), stored) {
            inner.bytes -= entry_size(&key, &old);
        }
        inner.bytes += size;
        let mut all = false;
        while inner.bytes > self.capacity {
            let (mut i, mut freed) = (0usize, 0usize);
            inner.map.retain(|k, e| {
                i += 1;
                let keep = k == &key || (!all && i % 4 != 0);
                if !keep {
                    freed += entry_size(k, e);
                }
                keep
            });
            inner.bytes -= freed;
            all = freed == 0;
        }
    }

    /// Keys cached.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes accounted to the cached entries.
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::codec::encode_object;
    use crate::core::version::{ConflictPolicy, Object};

    fn entry(v: &[u8]) -> Arc<Stored> {
        let mut o = Object::default();
        o.update(
            "n1",
            1,
            None,
            Some(v.to_vec()),
            0,
            ConflictPolicy::default(),
        );
        let e = encode_object(&o);
        Stored::new(o, e)
    }

    #[test]
    fn a_write_between_a_readers_start_and_its_admission_keeps_the_stale_copy_out() {
        let cache = ObjectCache::new(1 << 20);
        let g = cache.generation();
        let new = entry(b"new");
        cache.put(b"k".to_vec(), new.clone());
        cache.admit(b"k", entry(b"old"), g);
        assert_eq!(cache.get(b"k"), Some(new));
    }

    #[test]
    fn a_reader_admits_when_no_write_intervened() {
        let cache = ObjectCache::new(1 << 20);
        let g = cache.generation();
        let o = entry(b"v");
        cache.admit(b"k", o.clone(), g);
        assert_eq!(cache.get(b"k"), Some(o));
    }

    #[test]
    fn removal_forgets_and_blocks_older_readers() {
        let cache = ObjectCache::new(1 << 20);
        let o = entry(b"v");
        cache.put(b"k".to_vec(), o.clone());
        let g = cache.generation();
        cache.remove(b"k");
        assert_eq!(cache.get(b"k"), None);
        cache.admit(b"k", o, g);
        assert_eq!(cache.get(b"k"), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn stays_within_capacity_and_keeps_the_newest_entry() {
        let cap = 16 << 10;
        let cache = ObjectCache::new(cap);
        for i in 0..2000u32 {
            let key = i.to_be_bytes().to_vec();
            cache.put(key.clone(), entry(&[7u8; 50]));
            assert!(cache.bytes() <= cap, "{} > {cap}", cache.bytes());
            assert!(cache.get(&key).is_some());
        }
        assert!(cache.len() > 10);
        let counted: usize = cache.read().map.iter().map(|(k, e)| entry_size(k, e)).sum();
        assert_eq!(counted, cache.bytes());
    }

    #[test]
    fn an_object_too_big_to_cache_evicts_the_older_copy_of_its_key() {
        let cache = ObjectCache::new(1024);
        cache.put(b"k".to_vec(), entry(b"small"));
        cache.put(b"k".to_vec(), entry(&[1u8; 2048]));
        assert_eq!(cache.get(b"k"), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn a_few_large_entries_still_respect_the_capacity() {
        let cap = 1024;
        let cache = ObjectCache::new(cap);
        for i in 0..6u8 {
            cache.put(vec![i], entry(&[i; 200]));
            assert!(cache.bytes() <= cap, "{} > {cap}", cache.bytes());
            assert!(cache.get(&[i]).is_some(), "the newest entry stays");
        }
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = ObjectCache::new(0);
        cache.put(b"k".to_vec(), entry(b"v"));
        assert!(cache.is_empty());
        assert_eq!(cache.get(b"k"), None);
    }
}
