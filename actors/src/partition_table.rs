//! The node's registry of local partitions: which vnode actor serves each one, a read handle
//! on its file, and its health. Shared by routers, the admin actor and the vnode supervisor.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ractor::ActorRef;
use redb::Database;

use crate::core::codec::decode_object;
use crate::core::merkle::{MerkleTree, segment_of};
use crate::core::version::Object;
use crate::protocol::{KvError, VnodeHealth, VnodeInfo};
use crate::storage::memtable::Memtable;
use crate::storage::object_cache::ObjectCache;
use crate::storage::stored::Stored;
use crate::storage::vnode_store::{DigestPage, VnodeStore, is_old_tombstone};
use crate::vnode::VnodeMessage;

#[derive(Default)]
struct Slot {
    /// This node holds the partition in its current placement (changes as partitions move).
    local: AtomicBool,
    live: RwLock<Live>,
    restarts: AtomicU32,
    queued: AtomicU64,
    quarantined: Mutex<Vec<String>>,
}

struct Live {
    health: VnodeHealth,
    vnode: Option<ActorRef<VnodeMessage>>,
    reader: Option<ReadView>,
    tree: Option<Arc<Mutex<MerkleTree>>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            health: VnodeHealth::Starting,
            vnode: None,
            reader: None,
            tree: None,
        }
    }
}

/// What readers of a vnode use, all published by the vnode: its file, its memtable and its
/// object cache.
#[derive(Debug, Clone)]
pub struct ReadView {
    /// Handle on the vnode's file.
    pub db: Arc<Database>,
    /// Writes not yet in the file.
    pub memtable: Arc<Memtable>,
    /// Current objects of recently read or written keys.
    pub cache: Arc<ObjectCache>,
}

impl ReadView {
    /// `key`'s current object: from the memtable, the cache, else the file. What the file
    /// gives is cached unless a write raced the read.
    fn lookup(&self, key: &[u8]) -> Result<Option<Arc<Stored>>, KvError> {
        // Taken before the memtable is consulted, so a write racing this read is seen by one
        // of the two checks below or refuses the admission.
        let generation = self.cache.generation();
        if let Some(s) = self.memtable.get(key).or_else(|| self.cache.get(key)) {
            return Ok(Some(s));
        }
        let stored =
            VnodeStore::read_raw(&self.db, key).map_err(|e| KvError::Storage(e.to_string()))?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        let object = decode_object(&bytes).map_err(|e| KvError::Storage(format!("decode: {e}")))?;
        let stored = Stored::new(object, bytes);
        self.cache.admit(key, stored.clone(), generation);
        Ok(Some(stored))
    }
}

/// What a replica holds for a key, as a peer that already holds one copy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCopy {
    /// The object has the digest the peer named.
    Same,
    /// The encoded object, `None` when the key is absent.
    Differs(Option<Vec<u8>>),
}

/// No vnode serves the partition on this node (not held here, starting, or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotServing;

/// Per-partition vnode registry; slots of partitions this node does not hold stay empty.
pub struct PartitionTable {
    slots: Vec<Slot>,
    /// Woken whenever a vnode starts serving.
    served: tokio::sync::Notify,
}

impl std::fmt::Debug for PartitionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionTable")
            .field("partitions", &self.slots.len())
            .finish()
    }
}

impl PartitionTable {
    /// A table for `partitions` partitions, of which `local` are held by this node.
    pub fn new(partitions: u32, local: &[u32]) -> PartitionTable {
        let slots: Vec<Slot> = (0..partitions).map(|_| Slot::default()).collect();
        for &p in local {
            slots[p as usize].local.store(true, Ordering::Relaxed);
        }
        PartitionTable {
            slots,
            served: tokio::sync::Notify::new(),
        }
    }

    fn slot(&self, partition: u32) -> Option<&Slot> {
        self.slots
            .get(partition as usize)
            .filter(|s| s.local.load(Ordering::Relaxed))
    }

    /// Marks `partition` held here (before its vnode starts) or not (after it stopped).
    pub fn set_local(&self, partition: u32, local: bool) {
        if let Some(s) = self.slots.get(partition as usize) {
            s.local.store(local, Ordering::Relaxed);
        }
    }

    /// The partitions held here, ascending.
    pub fn local(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&p| self.slot(p).is_some())
            .collect()
    }

    /// Records a started vnode: reads and writes for its partition go to it from now on.
    pub fn serve(
        &self,
        partition: u32,
        vnode: ActorRef<VnodeMessage>,
        reader: ReadView,
        tree: Arc<Mutex<MerkleTree>>,
    ) {
        if let Some(s) = self.slot(partition) {
            *s.live.write().unwrap() = Live {
                health: VnodeHealth::Serving,
                vnode: Some(vnode),
                reader: Some(reader),
                tree: Some(tree),
            };
            self.served.notify_waiters();
        }
    }

    /// Waits until `partition`'s vnode serves, at most `within`; true if it does.
    pub async fn wait_serving(&self, partition: u32, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so a vnode that starts in between still wakes us.
            let notified = self.served.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.vnode(partition).is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Withdraws a partition's vnode (stopped or failed), releasing its file handle.
    pub fn withdraw(&self, partition: u32, health: VnodeHealth) {
        if let Some(s) = self.slot(partition) {
            let old = std::mem::replace(
                &mut *s.live.write().unwrap(),
                Live {
                    health,
                    vnode: None,
                    reader: None,
                    tree: None,
                },
            );
            // Dropping the last handle closes the file (a durable commit): not under the lock.
            drop(old);
        }
    }

    /// Records a vnode file moved aside as unusable.
    pub fn note_quarantine(&self, partition: u32, moved_to: String) {
        if let Some(s) = self.slot(partition) {
            s.quarantined
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(moved_to);
        }
    }

    /// Counts one restart of a partition's vnode.
    pub fn note_restart(&self, partition: u32) {
        if let Some(s) = self.slot(partition) {
            s.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The vnode serving `partition`, if one is.
    pub fn vnode(&self, partition: u32) -> Option<ActorRef<VnodeMessage>> {
        self.slot(partition)?.live.read().unwrap().vnode.clone()
    }

    /// Queues a write or merge on `partition`'s vnode, counting it in the mailbox depth. On
    /// failure the message is dropped, which answers its waiters with a closed channel.
    pub fn send(&self, partition: u32, msg: VnodeMessage) -> Result<(), NotServing> {
        let vnode = self.vnode(partition).ok_or(NotServing)?;
        let slot = self.slot(partition).expect("serving implies local");
        slot.queued.fetch_add(1, Ordering::Relaxed);
        vnode.cast(msg).map_err(|_| {
            slot.queued.fetch_sub(1, Ordering::Relaxed);
            NotServing
        })
    }

    /// Called by a vnode as it takes a queued write or merge.
    pub fn dequeued(&self, partition: u32) {
        if let Some(s) = self.slot(partition) {
            s.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Writes and merges waiting in vnode mailboxes.
    pub fn mailbox_depth(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.queued.load(Ordering::Relaxed))
            .sum()
    }

    fn view(&self, partition: u32) -> Result<ReadView, KvError> {
        self.slot(partition)
            .and_then(|s| s.live.read().unwrap().reader.clone())
            .ok_or(KvError::Unavailable { needed: 1, got: 0 })
    }

    /// Reads `key` from `partition`'s vnode: its memtable, its object cache, then its file's
    /// latest snapshot. Never enters the vnode's mailbox.
    pub fn read(&self, partition: u32, key: &[u8]) -> Result<Option<Object>, KvError> {
        Ok(self.read_stored(partition, key)?.map(|s| s.object.clone()))
    }

    /// Like [`PartitionTable::read`], shared with the vnode's memtable or cache.
    pub fn read_stored(&self, partition: u32, key: &[u8]) -> Result<Option<Arc<Stored>>, KvError> {
        self.view(partition)?.lookup(key)
    }

    /// A replica read for a peer: the encoded object, or only [`PeerCopy::Same`] when its digest
    /// is `unless` (the copy the peer already holds).
    pub fn read_for_peer(
        &self,
        partition: u32,
        key: &[u8],
        unless: Option<u64>,
    ) -> Result<PeerCopy, KvError> {
        let copy = self.view(partition)?.lookup(key)?.map(|s| {
            if unless == Some(s.digest) {
                PeerCopy::Same
            } else {
                PeerCopy::Differs(Some(s.encoded.clone()))
            }
        });
        Ok(copy.unwrap_or(PeerCopy::Differs(None)))
    }

    /// A copy of `partition`'s merkle tree, when its vnode is serving.
    pub fn tree(&self, partition: u32) -> Option<MerkleTree> {
        let tree = self.slot(partition)?.live.read().unwrap().tree.clone()?;
        let copy = tree.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(copy)
    }

    /// One page of the keys of `partition` in the given merkle segments, strictly after
    /// `after`, with their objects' digests, in key order: the file's snapshot overlaid with
    /// the memtable. About `limit` keys; the flag says whether more follow (the page then ends
    /// at its last key). Blocks on file I/O.
    pub fn segment_digests(
        &self,
        partition: u32,
        tree_segments: u32,
        wanted: &[u32],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<DigestPage, KvError> {
        let ReadView { db, memtable, .. } = self.view(partition)?;
        let wanted: std::collections::HashSet<u32> = wanted.iter().copied().collect();
        let keep = |k: &[u8]| wanted.contains(&segment_of(k, tree_segments));
        // The memtable first: a flush between the two reads then leaves keys in the file's
        // snapshot rather than in neither.
        let recent = memtable.digests(|k| keep(k) && after.is_none_or(|a| k > a));
        let (stored, more) = VnodeStore::digests_after(&db, after, limit, keep)
            .map_err(|e| KvError::Storage(e.to_string()))?;
        let end = more
            .then(|| stored.last().map(|(k, _)| k.clone()))
            .flatten();
        let mut merged: std::collections::BTreeMap<Vec<u8>, u64> = stored.into_iter().collect();
        merged.extend(
            recent
                .into_iter()
                .filter(|(k, _)| end.as_ref().is_none_or(|e| k <= e)),
        );
        Ok((merged.into_iter().collect(), more))
    }

    /// The next chunk of `partition` for a replica streaming it in: pairs strictly after
    /// `after`, in key order, the file's snapshot overlaid with the memtable, about
    /// `max_keys` / `max_bytes`; the flag says whether more follow. Also the file's key count.
    /// Blocks on file I/O.
    #[allow(clippy::type_complexity)]
    pub fn chunk_after(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool, u64), KvError> {
        let ReadView { db, memtable, .. } = self.view(partition)?;
        // The memtable first: a flush between the two reads then leaves keys in the file's
        // snapshot rather than in neither.
        let recent: Vec<(Vec<u8>, Arc<Stored>)> = memtable
            .snapshot()
            .into_iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
            .collect();
        let store = |e: crate::storage::vnode_store::StoreError| KvError::Storage(e.to_string());
        let (stored, more) =
            VnodeStore::objects_after(&db, after, max_keys, max_bytes).map_err(store)?;
        let total = VnodeStore::key_count(&db).map_err(store)?;
        let end = more
            .then(|| stored.last().map(|(k, _)| k.clone()))
            .flatten();
        let mut merged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        merged.extend(
            recent
                .into_iter()
                .filter(|(k, _)| end.as_ref().is_none_or(|e| k <= e))
                .map(|(k, s)| (k, s.encoded.clone())),
        );
        Ok((merged.into_iter().collect(), more, total))
    }

    /// Up to `limit` tombstones of `partition` older than `older_than_ms`, with their digests:
    /// the memtable's, then the file's for keys the memtable does not hold. Blocks on file I/O.
    pub fn tombstones(
        &self,
        partition: u32,
        older_than_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, KvError> {
        let ReadView { db, memtable, .. } = self.view(partition)?;
        // The memtable first: a flush between the two reads leaves a key in the file's
        // snapshot rather than in neither.
        let recent = memtable.snapshot();
        let mut out: Vec<(Vec<u8>, u64)> = recent
            .iter()
            .filter(|(_, s)| is_old_tombstone(&s.object, older_than_ms))
            .map(|(k, s)| (k.clone(), s.digest))
            .take(limit)
            .collect();
        let held: std::collections::HashSet<&[u8]> =
            recent.iter().map(|(k, _)| k.as_slice()).collect();
        let stored = VnodeStore::tombstones(&db, older_than_ms, limit)
            .map_err(|e| KvError::Storage(e.to_string()))?;
        out.extend(
            stored
                .into_iter()
                .filter(|(k, _)| !held.contains(k.as_slice())),
        );
        out.truncate(limit);
        Ok(out)
    }

    /// Every serving vnode, with its partition.
    pub fn serving(&self) -> Vec<(u32, ActorRef<VnodeMessage>)> {
        (0..self.slots.len() as u32)
            .filter_map(|p| self.vnode(p).map(|v| (p, v)))
            .collect()
    }

    /// Health and restart count of every local partition.
    pub fn report(&self) -> Vec<VnodeInfo> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.local.load(Ordering::Relaxed))
            .map(|(p, s)| VnodeInfo {
                partition: p as u32,
                health: s.live.read().unwrap().health,
                restarts: s.restarts.load(Ordering::Relaxed),
                quarantined: s
                    .quarantined
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            })
            .collect()
    }
}
