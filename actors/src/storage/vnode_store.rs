//! One vnode's redb file: a single table from key bytes to encoded [`Object`]s.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::core::codec::{decode_object, encode_object};
use crate::core::version::{ConflictPolicy, Object};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another handle still holds the file open (a reader that outlived the previous vnode).
    #[error("vnode file is still open elsewhere")]
    Locked,
    /// The file's contents are damaged (redb found a bad checksum, header or page).
    #[error("file damaged: {0}")]
    Corrupt(String),
    /// Anything else, as text for logs and clients.
    #[error("{0}")]
    Other(String),
}

fn err(context: &str, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(format!("{context}: {msg}")),
        // A bad magic number or a truncated file surface as I/O errors of these kinds.
        redb::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Corrupt(format!("{context}: {e}"))
        }
        e => StoreError::Other(format!("{context}: {e}")),
    }
}

/// An open vnode file. Reads go through [`VnodeStore::reader`] handles so they never queue
/// behind the vnode's writer.
#[derive(Debug)]
pub struct VnodeStore {
    db: Arc<Database>,
}

/// A page of (key, object digest) pairs in key order, and whether more keys follow.
pub type DigestPage = (Vec<(Vec<u8>, u64)>, bool);

/// A key whose object changed, with its digest before (`None`: absent) and after.
pub type DigestChange = (Vec<u8>, Option<u64>, u64);

/// Keys with their encoded objects, as written to the file and the commit log.
pub type EncodedPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Whether `o` is a tombstone whose newest version was written before `older_than_ms`.
pub fn is_old_tombstone(o: &Object, older_than_ms: u64) -> bool {
    let newest = o.siblings.iter().map(|s| s.timestamp_ms).max();
    o.is_deleted() && newest.is_some_and(|t| t < older_than_ms)
}

impl VnodeStore {
    /// Opens (or creates) the file with a bounded page cache and makes sure the table exists;
    /// with `verify`, first walks the whole file checking every page (redb repairs what it
    /// can; a file it cannot repair is an error).
    pub fn open(path: &Path, cache_bytes: usize, verify: bool) -> Result<VnodeStore, StoreError> {
        let mut db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked,
                e => err("open", e),
            })?;
        if verify {
            match db.check_integrity() {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    file = %path.display(),
                    "vnode file was damaged and repaired; anti-entropy restores what was lost"
                ),
                Err(e) => return Err(err("integrity check", e)),
            }
        }
        let txn = db.begin_write().map_err(|e| err("begin", e))?;
        txn.open_table(DATA).map_err(|e| err("table", e))?;
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(VnodeStore { db: Arc::new(db) })
    }

    /// A shared handle for snapshot reads outside the vnode's mailbox.
    pub fn reader(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Reads one key from the latest committed snapshot.
    pub fn read(db: &Database, key: &[u8]) -> Result<Option<Object>, StoreError> {
        let txn = db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(DATA).map_err(|e| err("table", e))?;
        match table.get(key).map_err(|e| err("get", e))? {
            None => Ok(None),
            Some(v) => decode_object(v.value())
                .map(Some)
                .map_err(|e| StoreError::Other(format!("decode: {e}"))),
        }
    }

    /// Reads one key's encoded object from the latest committed snapshot.
    pub fn read_raw(db: &Database, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(DATA).map_err(|e| err("table", e))?;
        Ok(table
            .get(key)
            .map_err(|e| err("get", e))?
            .map(|v| v.value().to_vec()))
    }

    /// Every stored key that `wanted` accepts with its object's digest, in key order, from one
    /// snapshot. An undecodable object gets a digest of its raw bytes, so it still differs.
    pub fn digests(
        db: &Database,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        Ok(Self::digests_after(db, None, usize::MAX, wanted)?.0)
    }

    /// Like [`VnodeStore::digests`], for keys strictly after `after`, at most `limit` of them;
    /// the flag says whether more keys follow. Resuming from the last key returned makes a
    /// listing in pages cost one pass over the file in all.
    pub fn digests_after(
        db: &Database,
        after: Option<&[u8]>,
        limit: usize,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<DigestPage, StoreError> {
        let txn = db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(DATA).map_err(|e| err("table", e))?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => {
                table.range::<&[u8]>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => table.iter(),
        };
        for entry in range.map_err(|e| err("iter", e))? {
            let (k, v) = entry.map_err(|e| err("iter", e))?;
            if !wanted(k.value()) {
                continue;
            }
            if out.len() >= limit {
                return Ok((out, true));
            }
            let digest = decode_object(v.value())
                .map_or_else(|_| xxhash_rust::xxh3::xxh3_64(v.value()), |o| o.digest());
            out.push((k.value().to_vec(), digest));
        }
        Ok((out, false))
    }

    /// Up to `max_keys` pairs (and about `max_bytes` of them) strictly after `after`, in key
    /// order, as stored (encoded objects); the flag says whether more keys follow.
    pub fn objects_after(
        db: &Database,
        after: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<(EncodedPairs, bool), StoreError> {
        let txn = db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(DATA).map_err(|e| err("table", e))?;
        let range = match after {
            Some(a) => {
                table.range::<&[u8]>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => table.iter(),
        };
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for entry in range.map_err(|e| err("iter", e))? {
            if out.len() >= max_keys.max(1) || bytes >= max_bytes {
                return Ok((out, true));
            }
            let (k, v) = entry.map_err(|e| err("iter", e))?;
            bytes += k.value().len() + v.value().len();
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok((out, false))
    }

    /// Number of keys in the file's latest snapshot.
    pub fn key_count(db: &Database) -> Result<u64, StoreError> {
        let txn = db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(DATA).map_err(|e| err("table", e))?;
        table.len().map_err(|e| err("len", e))
    }

    /// Reads many keys from one snapshot (the vnode's lookups before applying a batch).
    pub fn read_many(
        &self,
        keys: &[&[u8]],
    ) -> Result<Vec<Result<Option<Object>, StoreError>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(DATA).map_err(|e| err("table", e))?;
        Ok(keys
            .iter()
            .map(|k| match table.get(*k).map_err(|e| err("get", e))? {
                None => Ok(None),
                Some(v) => decode_object(v.value())
                    .map(Some)
                    .map_err(|e| StoreError::Other(format!("decode: {e}"))),
            })
            .collect())
    }

    /// Writes encoded objects in one transaction, durably only when `durable` is set; otherwise
    /// the commit lives in memory until the next durable one (the commit log covers it).
    pub fn put_encoded<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        durable: bool,
    ) -> Result<(), StoreError> {
        Self::put_encoded_in(&self.db, pairs, durable)
    }

    /// [`VnodeStore::put_encoded`] on a handle from [`VnodeStore::reader`], for another thread.
    pub fn put_encoded_in<'a>(
        db: &Database,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(|e| err("begin write", e))?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError::Other(format!("durability: {e}")))?;
        }
        {
            let mut table = txn.open_table(DATA).map_err(|e| err("table", e))?;
            for (k, v) in pairs {
                table.insert(k, v).map_err(|e| err("insert", e))?;
            }
        }
        txn.commit().map_err(|e| err("commit", e))
    }

    /// Joins a batch of objects into the file in one durable transaction, bypassing the commit
    /// log (the file is then their only copy, so the commit must be durable). A key the file
    /// lacks takes its given encoding as is. Returns, per key that changed, the digests before
    /// (`None`: absent) and after. The caller must hold the vnode's writer role and must not
    /// pass keys whose current object is newer than the file's (the memtable's), nor one key
    /// twice (a chunk comes from one scan of the source's file).
    pub fn ingest_in(
        db: &Database,
        pairs: &[(Vec<u8>, Object, Vec<u8>)],
        policy: ConflictPolicy,
    ) -> Result<Vec<DigestChange>, StoreError> {
        let txn = db.begin_write().map_err(|e| err("begin write", e))?;
        let mut changed = Vec::with_capacity(pairs.len());
        {
            let mut table = txn.open_table(DATA).map_err(|e| err("table", e))?;
            // One scan of the chunk's key span finds the keys the file already holds: a new
            // replica's file holds few of them, so this costs far less than a lookup per key.
            let mut present = std::collections::HashMap::new();
            let lo = pairs.iter().map(|(k, _, _)| k.as_slice()).min();
            let hi = pairs.iter().map(|(k, _, _)| k.as_slice()).max();
            if let (Some(lo), Some(hi)) = (lo, hi) {
                for entry in table.range(lo..=hi).map_err(|e| err("range", e))? {
                    let (k, v) = entry.map_err(|e| err("range", e))?;
                    present.insert(k.value().to_vec(), v.value().to_vec());
                }
            }
            for (key, object, encoded) in pairs {
                let current = present
                    .remove(key)
                    .map(|v| decode_object(&v))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("stored object: {e}")))?;
                match current {
                    None => {
                        table
                            .insert(key.as_slice(), encoded.as_slice())
                            .map_err(|e| err("insert", e))?;
                        changed.push((key.clone(), None, object.digest()));
                    }
                    Some(mut current) => {
                        let before = current.digest();
                        current.merge(object, policy);
                        let after = current.digest();
                        if after != before {
                            let bytes = encode_object(&current);
                            table
                                .insert(key.as_slice(), bytes.as_slice())
                                .map_err(|e| err("insert", e))?;
                            changed.push((key.clone(), Some(before), after));
                        }
                    }
                }
            }
        }
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(changed)
    }

    /// Replays commit-log objects, durably. A logged object replaces the stored one unless
    /// the stored one already descends from it (the file can be ahead of the log after a
    /// checkpoint); both come from this vnode's single history, so one always descends.
    pub fn restore(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
        {
            let mut table = txn.open_table(DATA).map_err(|e| err("table", e))?;
            for (k, v) in pairs {
                let Ok(logged) = decode_object(v) else {
                    tracing::warn!("skipping an undecodable commit log object");
                    continue;
                };
                let stored = table
                    .get(k.as_slice())
                    .map_err(|e| err("get", e))?
                    .and_then(|s| decode_object(s.value()).ok());
                if stored
                    .is_some_and(|s| s.clock != logged.clock && s.clock.descends(&logged.clock))
                {
                    continue;
                }
                table
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(|e| err("insert", e))?;
            }
        }
        txn.commit().map_err(|e| err("commit", e))
    }

    /// Tombstones (objects with nothing live) whose newest version is older than
    /// `older_than_ms` (wall clock), with their digests, in key order; at most `limit`.
    pub fn tombstones(
        db: &Database,
        older_than_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let txn = db.begin_read().map_err(|e| err("begin read", e))?;
        let table = txn.open_table(DATA).map_err(|e| err("table", e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err("iter", e))? {
            let (k, v) = entry.map_err(|e| err("iter", e))?;
            let Ok(o) = decode_object(v.value()) else {
                continue;
            };
            if is_old_tombstone(&o, older_than_ms) {
                out.push((k.value().to_vec(), o.digest()));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes keys in one in-memory transaction (durable with the next checkpoint; a crash
    /// before it brings the removed tombstones back, which is harmless).
    pub fn remove(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| err("begin write", e))?;
        txn.set_durability(Durability::None)
            .map_err(|e| StoreError::Other(format!("durability: {e}")))?;
        {
            let mut table = txn.open_table(DATA).map_err(|e| err("table", e))?;
            for k in keys {
                table.remove(k.as_slice()).map_err(|e| err("remove", e))?;
            }
        }
        txn.commit().map_err(|e| err("commit", e))
    }

    /// Makes every earlier in-memory commit durable with one empty durable commit.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        Self::checkpoint_in(&self.db)
    }

    /// [`VnodeStore::checkpoint`] through a shared handle, for a blocking thread.
    pub fn checkpoint_in(db: &Database) -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(|e| err("begin write", e))?;
        txn.commit().map_err(|e| err("commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::codec::encode_object;
    use crate::core::version::ConflictPolicy;

    fn object(i: u64) -> Vec<u8> {
        let mut o = Object::default();
        o.update(
            "n1~1",
            i + 1,
            None,
            Some(vec![i as u8]),
            i,
            ConflictPolicy::Siblings { max_siblings: 8 },
        );
        encode_object(&o)
    }

    #[test]
    fn ingest_keeps_absent_encodings_joins_present_ones_and_reports_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = VnodeStore::open(&dir.path().join("v.redb"), 1 << 20, false).unwrap();
        let policy = ConflictPolicy::Siblings { max_siblings: 8 };
        // k1 holds a version from another author; k2 already holds exactly what arrives.
        let mut theirs = Object::default();
        theirs.update("n2~1", 1, None, Some(b"x".to_vec()), 5, policy);
        let theirs = encode_object(&theirs);
        let refs = [(b"k1".as_slice(), theirs.as_slice()), (b"k2", &object(2))];
        store.put_encoded(refs, true).unwrap();
        let chunk: Vec<(Vec<u8>, Object, Vec<u8>)> =
            [(b"k0", object(0)), (b"k1", object(1)), (b"k2", object(2))]
                .into_iter()
                .map(|(k, v)| (k.to_vec(), decode_object(&v).unwrap(), v))
                .collect();
        let changed = VnodeStore::ingest_in(&store.reader(), &chunk, policy).unwrap();
        let keys: Vec<&[u8]> = changed.iter().map(|(k, _, _)| k.as_slice()).collect();
        assert_eq!(keys, [b"k0".as_slice(), b"k1"]);
        assert_eq!(changed[0].1, None);
        assert_eq!(changed[1].1, Some(decode_object(&theirs).unwrap().digest()));
        let db = store.reader();
        let k0 = VnodeStore::read(&db, b"k0").unwrap().unwrap();
        assert_eq!(encode_object(&k0), object(0));
        let k1 = VnodeStore::read(&db, b"k1").unwrap().unwrap();
        assert_eq!(k1.siblings.len(), 2, "both versions kept: {k1:?}");
        assert_eq!(k1.digest(), changed[1].2);
    }

    #[test]
    fn listing_in_pages_covers_every_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = VnodeStore::open(&dir.path().join("v.redb"), 1 << 20, false).unwrap();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..23u64)
            .map(|i| (format!("k{i:02}").into_bytes(), object(i)))
            .collect();
        let refs = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        store.put_encoded(refs, true).unwrap();
        let odd = |k: &[u8]| k.last().is_some_and(|b| b % 2 == 1);
        let whole = VnodeStore::digests(&store.reader(), odd).unwrap();
        let mut paged = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) =
                VnodeStore::digests_after(&store.reader(), after.as_deref(), 4, odd).unwrap();
            assert!(page.len() <= 4);
            after = page.last().map(|(k, _)| k.clone());
            paged.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(paged, whole);
        assert_eq!(whole.len(), 11);
    }
}
