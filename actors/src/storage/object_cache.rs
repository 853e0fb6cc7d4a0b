//! A vnode's bounded cache of current objects, so reads of hot keys skip the file's B-tree and
//! the decoding of what it stores.
//!
//! The vnode, the only writer, puts every object it commits and removes what it reaps. Readers
//! admit what they read from the file only if no write reached the cache since they started
//! looking, so a slow reader never installs an object older than one the vnode wrote meanwhile.
//! When full, the cache drops a quarter of its entries in hash order: eviction without any
//! per-read bookkeeping, close to random, which suits uniform and skewed access alike.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::core::version::Object;

/// Bytes counted per entry beyond its key and encoding (map slot, object, allocations).
const ENTRY_OVERHEAD: usize = 96;

/// A cached object with its encoding (replica reads send the encoding as it is) and digest
/// (replica reads compare it with the coordinator's).
#[derive(Debug)]
struct Entry {
    object: Object,
    encoded: Vec<u8>,
    digest: u64,
}

impl Entry {
    fn size(key: &[u8], encoded: &[u8]) -> usize {
        // The decoded object holds about as many bytes as its encoding.
        key.len() + 2 * encoded.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Vec<u8>, Entry>,
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

    /// Applies `f` to `key`'s cached object, its encoding and its digest.
    pub fn peek<T>(&self, key: &[u8], f: impl FnOnce(&Object, &[u8], u64) -> T) -> Option<T> {
        if self.capacity == 0 {
            return None;
        }
        self.read()
            .map
            .get(key)
            .map(|e| f(&e.object, &e.encoded, e.digest))
    }

    /// The cached object of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Object> {
        self.peek(key, |o, _, _| o.clone())
    }

    /// Marks the start of a read that may [`ObjectCache::admit`] what it finds in the file.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Caches an object a reader found in the file (with its encoding and digest), unless a write arrived since the reader
    /// took `generation` (the object may then be stale).
    pub fn admit(&self, key: &[u8], entry: (Object, Vec<u8>, u64), generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let (object, encoded, digest) = entry;
        let mut inner = self.write();
        if inner.generation == generation {
            let entry = Entry {
                object,
                encoded,
                digest,
            };
            self.insert(&mut inner, key.to_vec(), entry);
        }
    }

    /// Caches an object the vnode just committed, with its digest (the writer's path).
    pub fn put(&self, key: Vec<u8>, object: Object, encoded: Vec<u8>, digest: u64) {
        let mut inner = self.write();
        inner.generation += 1;
        if self.capacity > 0 {
            let entry = Entry {
                object,
                encoded,
                digest,
            };
            self.insert(&mut inner, key, entry);
        }
    }

    /// Forgets `key` (the writer's path, when a key is removed from the file).
    pub fn remove(&self, key: &[u8]) {
        let mut inner = self.write();
        inner.generation += 1;
        if let Some(old) = inner.map.remove(key) {
            inner.bytes -= Entry::size(key, &old.encoded);
        }
    }

    fn insert(&self, inner: &mut Inner, key: Vec<u8>, entry: Entry) {
        let size = Entry::size(&key, &entry.encoded);
        if size > self.capacity {
            // Too big to cache: the key's older copy must not stay behind as its current one.
            if let Some(old) = inner.map.remove(&key) {
                inner.bytes -= Entry::size(&key, &old.encoded);
            }
            return;
        }
        if let Some(old) = inner.map.insert(key.clone(), entry) {
            inner.bytes -= Entry::size(&key, &old.encoded);
        }
        inner.bytes += size;
        // Every fourth entry in hash order; once that frees nothing (a handful of large
        // entries), everything but the new key.
        let mut all = false;
        while inner.bytes > self.capacity {
            let (mut i, mut freed) = (0usize, 0usize);
            inner.map.retain(|k, e| {
                i += 1;
                let keep = k == &key || (!all && i % 4 != 0);
                if !keep {
                    freed += Entry::size(k, &e.encoded);
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
    use crate::core::version::ConflictPolicy;

    fn object(v: &[u8]) -> Object {
        let mut o = Object::default();
        o.update(
            "n1",
            1,
            None,
            Some(v.to_vec()),
            0,
            ConflictPolicy::default(),
        );
        o
    }

    fn entry(v: &[u8]) -> (Object, Vec<u8>) {
        let o = object(v);
        let e = encode_object(&o);
        (o, e)
    }

    #[test]
    fn a_write_between_a_readers_start_and_its_admission_keeps_the_stale_copy_out() {
        let cache = ObjectCache::new(1 << 20);
        let g = cache.generation();
        let (new, new_bytes) = entry(b"new");
        let d = new.digest();
        cache.put(b"k".to_vec(), new.clone(), new_bytes, d);
        let (old, old_bytes) = entry(b"old");
        cache.admit(b"k", (old, old_bytes, 0), g);
        assert_eq!(cache.get(b"k"), Some(new));
    }

    #[test]
    fn a_reader_admits_when_no_write_intervened() {
        let cache = ObjectCache::new(1 << 20);
        let g = cache.generation();
        let (o, bytes) = entry(b"v");
        cache.admit(b"k", (o.clone(), bytes.clone(), o.digest()), g);
        assert_eq!(cache.get(b"k"), Some(o.clone()));
        let seen = cache.peek(b"k", |_, e, d| (e.to_vec(), d));
        assert_eq!(seen, Some((bytes, o.digest())));
    }

    #[test]
    fn removal_forgets_and_blocks_older_readers() {
        let cache = ObjectCache::new(1 << 20);
        let (o, bytes) = entry(b"v");
        cache.put(b"k".to_vec(), o.clone(), bytes.clone(), 1);
        let g = cache.generation();
        cache.remove(b"k");
        assert_eq!(cache.get(b"k"), None);
        cache.admit(b"k", (o, bytes, 0), g);
        assert_eq!(cache.get(b"k"), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn stays_within_capacity_and_keeps_the_newest_entry() {
        let cap = 16 << 10;
        let cache = ObjectCache::new(cap);
        for i in 0..2000u32 {
            let (o, bytes) = entry(&[7u8; 50]);
            let key = i.to_be_bytes().to_vec();
            cache.put(key.clone(), o, bytes, 1);
            assert!(cache.bytes() <= cap, "{} > {cap}", cache.bytes());
            assert!(cache.get(&key).is_some());
        }
        assert!(cache.len() > 10);
        let counted: usize = cache
            .read()
            .map
            .iter()
            .map(|(k, e)| Entry::size(k, &e.encoded))
            .sum();
        assert_eq!(counted, cache.bytes());
    }

    #[test]
    fn an_object_too_big_to_cache_evicts_the_older_copy_of_its_key() {
        let cache = ObjectCache::new(1024);
        let (small, small_bytes) = entry(b"small");
        cache.put(b"k".to_vec(), small, small_bytes, 1);
        let (big, big_bytes) = entry(&[1u8; 2048]);
        cache.put(b"k".to_vec(), big, big_bytes, 2);
        assert_eq!(cache.get(b"k"), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn a_few_large_entries_still_respect_the_capacity() {
        let cap = 1024;
        let cache = ObjectCache::new(cap);
        for i in 0..6u8 {
            let (o, bytes) = entry(&[i; 300]);
            cache.put(vec![i], o, bytes, 1);
            assert!(cache.bytes() <= cap, "{} > {cap}", cache.bytes());
            assert!(cache.get(&[i]).is_some(), "the newest entry stays");
        }
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = ObjectCache::new(0);
        let (o, bytes) = entry(b"v");
        cache.put(b"k".to_vec(), o, bytes, 1);
        assert!(cache.is_empty());
        assert_eq!(cache.get(b"k"), None);
    }
}
