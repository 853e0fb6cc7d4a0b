//! The vnode actor: its mailbox, group commit, ingest and checkpoint; memtable flushes in `flush`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::apply::apply_op;
use super::ops::{IngestAck, Merge, MergeReply, Op};
use super::{IngestChunk, VnodeMessage, WriteOutcome};
use crate::core::codec::encode_object;
use crate::core::merkle::{DEFAULT_SEGMENTS, MerkleTree};
use crate::core::version::{CausalContext, ConflictPolicy, Object};
use crate::partition_table::{PartitionTable, ReadView};
use crate::protocol::{KvError, VnodeHealth};
use crate::storage::commit_log::{CommitLog, LogDurability};
use crate::storage::disk_guard::DiskGuard;
use crate::storage::dot_sequence::DotSequence;
use crate::storage::log_record::LogEntry;
use crate::storage::memtable::Memtable;
use crate::storage::object_cache::ObjectCache;
use crate::storage::stored::Stored;
use crate::storage::vnode_store::{EncodedPairs, StoreError, VnodeStore};

mod flush;

use flush::{
    CHECKPOINT_POLL, FlushOutcome, MEMTABLE_MAX_BYTES, MEMTABLE_MAX_KEYS, finish_flush,
    flush_memtable, myself_flush_after, start_flush,
};

/// The vnode actor.
#[derive(Debug, Default)]
pub struct Vnode;

/// What a vnode is started with.
pub struct VnodeArgs {
    /// Partition this vnode serves.
    pub partition: u32,
    /// Author of the dots this vnode mints: the node id and its incarnation.
    pub node_id: String,
    /// Its redb file.
    pub path: PathBuf,
    /// Page cache size for the file.
    pub cache_bytes: usize,
    /// Size of the vnode's object cache.
    pub object_cache_bytes: usize,
    /// The node's commit log.
    pub log: CommitLog,
    /// The node's dot counter sequence.
    pub dots: Arc<DotSequence>,
    /// When writes are acknowledged.
    pub durability: LogDurability,
    /// Sibling bound or last-write-wins.
    pub conflict: ConflictPolicy,
    /// Most writes per commit.
    pub batch_max_writes: usize,
    /// Most payload bytes per commit.
    pub batch_max_bytes: usize,
    /// Where the vnode publishes itself once serving.
    pub table: Arc<PartitionTable>,
    /// Refuses changes while the disk is nearly full.
    pub disk: Arc<DiskGuard>,
    /// Log entries to restore before serving; `None` reads this partition's from the log.
    pub replay: Option<EncodedPairs>,
    /// Check every page of the file before serving (a restart after a failure).
    pub verify: bool,
}

/// Start failures caused by damage to the vnode's file itself carry this prefix: the supervisor
/// moves such a file aside rather than retrying it.
pub const UNUSABLE_FILE: &str = "vnode file unusable";

/// A start failure; only damage (not a busy file, a full disk or missing permissions, which
/// say nothing about the data) is marked [`UNUSABLE_FILE`].
fn start_error(e: StoreError) -> ActorProcessingErr {
    match e {
        StoreError::Corrupt(_) => format!("{UNUSABLE_FILE}: {e}").into(),
        e => e.to_string().into(),
    }
}

/// A vnode's running state.
pub struct VnodeState {
    args: VnodeArgs,
    store: VnodeStore,
    memtable: Arc<Memtable>,
    cache: Arc<ObjectCache>,
    flush_scheduled: bool,
    /// Encoded bytes written to the memtable since its last flush (overwrites count again).
    memtable_bytes: usize,
    /// A flush was asked for at once because the memtable is full.
    flush_asked: bool,
    /// A checkpoint's durable commit runs on a blocking thread; memtable flushes wait for it.
    checkpointing: bool,
    /// The memtable flush running on a blocking thread: what it writes and its outcome.
    flushing: Option<oneshot::Receiver<FlushOutcome>>,
    pending: Vec<Op>,
    pending_bytes: usize,
    drain_scheduled: bool,
    /// Merkle tree of the vnode's keys (file and memtable), updated at every commit.
    tree: Arc<Mutex<MerkleTree>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Opens the file, retrying while a reader that outlived the previous vnode still holds it.
fn open_store(args: &VnodeArgs) -> Result<VnodeStore, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match VnodeStore::open(&args.path, args.cache_bytes, args.verify) {
            Err(StoreError::Locked) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

impl Actor for Vnode {
    type Msg = VnodeMessage;
    type State = VnodeState;
    type Arguments = VnodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VnodeMessage>,
        mut args: VnodeArgs,
    ) -> Result<VnodeState, ActorProcessingErr> {
        let started = Instant::now();
        let store = tokio::task::block_in_place(|| -> Result<VnodeStore, ActorProcessingErr> {
            let store = open_store(&args).map_err(start_error)?;
            let replay = match args.replay.take() {
                Some(r) => r,
                None => {
                    // Includes writes this partition sent the log before a crash that are
                    // still queued there.
                    args.log
                        .entries_of(args.partition)
                        .map_err(|e| format!("cannot replay the commit log: {e}"))?
                        .into_iter()
                        .map(|e| (e.key, e.object))
                        .collect()
                }
            };
            if !replay.is_empty() {
                store.restore(&replay)?;
            }
            Ok(store)
        })?;
        let mut tree = MerkleTree::new(DEFAULT_SEGMENTS);
        let digests =
            tokio::task::block_in_place(|| VnodeStore::digests(&store.reader(), |_| true))
                .map_err(start_error)?;
        for (key, digest) in digests {
            tree.update(&key, None, Some(digest));
        }
        let tree = Arc::new(Mutex::new(tree));
        let memtable = Arc::new(Memtable::default());
        let cache = Arc::new(ObjectCache::new(args.object_cache_bytes));
        let view = ReadView {
            db: store.reader(),
            memtable: memtable.clone(),
            cache: cache.clone(),
        };
        args.table
            .serve(args.partition, myself.clone(), view, tree.clone());
        tracing::debug!(
            partition = args.partition,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vnode serving"
        );
        Ok(VnodeState {
            args,
            store,
            memtable,
            cache,
            flush_scheduled: false,
            memtable_bytes: 0,
            flush_asked: false,
            checkpointing: false,
            flushing: None,
            pending: Vec::new(),
            pending_bytes: 0,
            drain_scheduled: false,
            tree,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<VnodeMessage>,
        message: VnodeMessage,
        state: &mut VnodeState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VnodeMessage::Write(op) => {
                state.args.table.dequeued(state.args.partition);
                if let Err(e) = state.args.disk.check() {
                    Op::Write(op).fail(KvError::Storage(e));
                    return Ok(());
                }
                let bytes = op.key.len() + op.value.as_ref().map_or(0, Vec::len);
                enqueue(state, &myself, Op::Write(op), bytes)?;
            }
            VnodeMessage::Merge(op) => {
                state.args.table.dequeued(state.args.partition);
                if let Err(e) = state.args.disk.check() {
                    let _ = op.reply.send(Err(KvError::Storage(e)));
                    return Ok(());
                }
                let bytes = op.key.len() + 64;
                let merge = Merge {
                    key: op.key,
                    object: op.object,
                    reply: MergeReply::One(op.reply),
                };
                enqueue(state, &myself, Op::Merge(merge), bytes)?;
            }
            VnodeMessage::Ingest(pairs, reply) => {
                state.args.table.dequeued(state.args.partition);
                if let Err(e) = state.args.disk.check() {
                    let _ = reply.send(Err(KvError::Storage(e)));
                    return Ok(());
                }
                finish_flush(state).await?;
                ingest(state, &myself, pairs, reply).await?;
            }
            VnodeMessage::Drain => {
                state.drain_scheduled = false;
                commit(state)?;
            }
            VnodeMessage::FlushMemtable if state.checkpointing || state.flushing.is_some() => {
                // Its write transaction would wait for the other one, and the mailbox with it.
                myself.send_after(CHECKPOINT_POLL, || VnodeMessage::FlushMemtable);
            }
            VnodeMessage::FlushMemtable => {
                state.flush_scheduled = false;
                start_flush(state, &myself);
            }
            VnodeMessage::Flushed => {
                finish_flush(state).await?;
            }
            VnodeMessage::Flush(reply) => {
                commit(state)?;
                // After the flush in flight (its older snapshot must not land after this one).
                finish_flush(state).await?;
                flush_memtable(state).await?;
                // The durable commit (the file's fsync, which can take tens of milliseconds)
                // runs beside the mailbox: writes go on into the memtable and the log, whose
                // new segment covers them. Everything the sealed segment holds for this vnode
                // was flushed above.
                state.checkpointing = true;
                let (db, me) = (state.store.reader(), myself.clone());
                tokio::task::spawn_blocking(move || {
                    let result = VnodeStore::checkpoint_in(&db).map_err(|e| e.to_string());
                    let _ = reply.send(result.clone());
                    let _ = me.cast(VnodeMessage::CheckpointDone(result));
                });
            }
            VnodeMessage::CheckpointDone(result) => {
                state.checkpointing = false;
                if let Err(e) = result {
                    return Err(format!("vnode checkpoint failed: {e}").into());
                }
            }
            VnodeMessage::Reap(keys, reply) => {
                commit(state)?;
                finish_flush(state).await?;
                let removed = reap(state, keys)?;
                let _ = reply.send(removed);
            }
            VnodeMessage::Crash => {
                tracing::warn!(partition = state.args.partition, "vnode crash requested");
                return Err("crash requested".into());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<VnodeMessage>,
        state: &mut VnodeState,
    ) -> Result<(), ActorProcessingErr> {
        state
            .args
            .table
            .withdraw(state.args.partition, VnodeHealth::Starting);
        Ok(())
    }
}

/// Answers one logged change once the log says whether it is durable.
type DurableAck = Box<dyn FnOnce(Result<(), KvError>) + Send>;

/// Queues a change for the next group commit: at once when the batch is full, otherwise after
/// every message already in the mailbox (the `Drain` goes to the back of it).
fn enqueue(
    state: &mut VnodeState,
    myself: &ActorRef<VnodeMessage>,
    op: Op,
    bytes: usize,
) -> Result<(), ActorProcessingErr> {
    state.pending_bytes += bytes;
    state.pending.push(op);
    if state.pending.len() >= state.args.batch_max_writes
        || state.pending_bytes >= state.args.batch_max_bytes
    {
        commit(state)?;
    } else if !state.drain_scheduled {
        state.drain_scheduled = true;
        myself.cast(VnodeMessage::Drain)?;
    }
    Ok(())
}
/// Applies every queued write in one in-memory transaction and hands the results to the log.
fn commit(state: &mut VnodeState) -> Result<(), ActorProcessingErr> {
    if state.pending.is_empty() {
        return Ok(());
    }
    let ops = std::mem::take(&mut state.pending);
    state.pending_bytes = 0;
    let (node, dots) = (state.args.node_id.clone(), state.args.dots.clone());
    let (conflict, partition) = (state.args.conflict, state.args.partition);
    let now = now_ms();
    // Current objects: the memtable's, else the cache's, else the file's (one snapshot for the
    // batch).
    let mut latest: HashMap<Vec<u8>, Result<Object, KvError>> = HashMap::new();
    // Digest of each key's object before the batch (`None`: absent), for the merkle tree.
    let mut before: HashMap<Vec<u8>, Option<u64>> = HashMap::new();
    let missing: Vec<&[u8]> = {
        let mut seen = std::collections::HashSet::new();
        ops.iter()
            .map(Op::key)
            .filter(|k| seen.insert(*k))
            .filter(
                |k| match state.memtable.get(k).or_else(|| state.cache.get(k)) {
                    Some(s) => {
                        before.insert(k.to_vec(), Some(s.digest));
                        latest.insert(k.to_vec(), Ok(s.object.clone()));
                        false
                    }
                    None => true,
                },
            )
            .collect()
    };
    let stored = match state.store.read_many(&missing) {
        Ok(s) => s,
        Err(e) => {
            for op in ops {
                op.fail(KvError::Storage(e.to_string()));
            }
            return Err(format!("vnode {partition} cannot read its file: {e}").into());
        }
    };
    for (k, r) in missing.into_iter().zip(stored) {
        if let Ok(stored) = &r {
            before.insert(k.to_vec(), stored.as_ref().map(Object::digest));
        }
        latest.insert(
            k.to_vec(),
            r.map(Option::unwrap_or_default).map_err(|e| {
                // Never overwrite what cannot be read: its versions would be lost.
                tracing::error!(partition, error = %e, "unreadable stored object; change refused");
                KvError::Storage(format!("stored object unreadable: {e}"))
            }),
        );
    }
    // Per op: the write's context (merges have none), or why it was refused.
    let mut outcomes: Vec<Result<Option<CausalContext>, KvError>> = Vec::with_capacity(ops.len());
    let mut changed: Vec<Vec<u8>> = Vec::new();
    for op in &ops {
        let outcome = match latest.get_mut(op.key()).expect("looked up above") {
            Err(e) => Err(e.clone()),
            Ok(object) => {
                let r = match op {
                    Op::Write(w) => apply_op(object, w, &node, &dots, now, conflict).map(Some),
                    Op::Merge(m) => {
                        object.merge(&m.object, conflict);
                        Ok(None)
                    }
                };
                if r.is_ok() && !changed.iter().any(|k| k == op.key()) {
                    changed.push(op.key().to_vec());
                }
                r
            }
        };
        outcomes.push(outcome);
    }
    let written: Vec<(Vec<u8>, Arc<Stored>)> = changed
        .into_iter()
        .filter_map(|k| {
            let o = latest.remove(&k)?.ok()?;
            let bytes = encode_object(&o);
            Some((k, Stored::new(o, bytes)))
        })
        .collect();
    let entries: Vec<LogEntry> = written
        .iter()
        .map(|(key, stored)| LogEntry {
            partition,
            key: key.clone(),
            object: stored.encoded.clone(),
        })
        .collect();
    {
        let mut tree = state.tree.lock().unwrap_or_else(|p| p.into_inner());
        for (key, stored) in &written {
            let old = before.get(key).copied().flatten();
            tree.update(key, old, Some(stored.digest));
        }
    }
    // The memtable first: a reader that starts after the cache's update then finds the new
    // object there, so it can never admit the file's older copy.
    state.memtable_bytes += written.iter().map(|(_, s)| s.encoded.len()).sum::<usize>();
    state.memtable.insert_all(written.iter().cloned());
    for (key, stored) in written {
        state.cache.put(key, stored);
    }
    // A write's minted reply carries its key's new object, for the coordinator to replicate; the
    // dot sequence never reissues its counter even if this commit is lost in a crash.
    let index: HashMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.key.as_slice(), i))
        .collect();
    let mut acks: Vec<DurableAck> = Vec::with_capacity(ops.len());
    for (op, outcome) in ops.into_iter().zip(outcomes) {
        match (op, outcome) {
            // Refused changes touched nothing that needs the log: answer them now.
            (op, Err(e)) => op.fail(e),
            (Op::Write(w), Ok(ctx)) => {
                let object = index
                    .get(w.key.as_slice())
                    .map_or_else(Vec::new, |&i| entries[i].object.clone());
                let context = ctx.unwrap_or_default();
                let _ = w.minted.send(Ok(WriteOutcome { context, object }));
                acks.push(Box::new(move |r| {
                    let _ = w.durable.send(r);
                }));
            }
            (Op::Merge(m), Ok(_)) => acks.push(Box::new(move |r| m.reply.send(r))),
        }
    }
    let answer = move |r: Result<(), String>| {
        let r = r.map_err(KvError::Storage);
        for ack in acks {
            ack(r.clone());
        }
    };
    let logged = match state.args.durability {
        LogDurability::Sync => state.args.log.append(entries, Some(Box::new(answer))),
        LogDurability::Buffered(_) => {
            let ok = state.args.log.append(entries, None);
            if ok {
                answer(Ok(()));
            }
            ok
        }
    };
    if !logged {
        return Err("commit log stopped".into());
    }
    let full =
        state.memtable.len() >= MEMTABLE_MAX_KEYS || state.memtable_bytes >= MEMTABLE_MAX_BYTES;
    if full && !state.flush_asked {
        state.flush_asked = true;
        if let Some(me) = state.args.table.vnode(state.args.partition) {
            me.cast(VnodeMessage::FlushMemtable)?;
        }
    } else if !state.flush_scheduled && !state.memtable.is_empty() {
        state.flush_scheduled = true;
        myself_flush_after(state);
    }
    Ok(())
}

/// Ingests a chunk: keys the memtable holds (written since its last flush) are merged through
/// the next group commit like any replica's object; the rest are joined straight into the file
/// in one durable transaction, which skips the log, the memtable and a re-encoding of the keys
/// the file lacks. The one answer is given once both parts are durable.
async fn ingest(
    state: &mut VnodeState,
    myself: &ActorRef<VnodeMessage>,
    pairs: IngestChunk,
    reply: oneshot::Sender<Result<(), KvError>>,
) -> Result<(), ActorProcessingErr> {
    // Queued changes first, so the memtable shows every key newer than the file.
    commit(state)?;
    let (recent, bulk): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|(k, _, _)| state.memtable.get(k).is_some());
    let ack = Arc::new(IngestAck {
        parts: recent.len() + 1,
        durable: Default::default(),
        error: Mutex::new(None),
        reply: Mutex::new(Some(reply)),
    });
    for (key, object, _) in recent {
        let bytes = key.len() + 64;
        let merge = Merge {
            key,
            object,
            reply: MergeReply::Part(ack.clone()),
        };
        enqueue(state, myself, Op::Merge(merge), bytes)?;
    }
    let (db, policy) = (state.store.reader(), state.args.conflict);
    let done = tokio::task::spawn_blocking(move || VnodeStore::ingest_in(&db, &bulk, policy))
        .await
        .unwrap_or_else(|e| Err(StoreError::Other(e.to_string())));
    match done {
        Ok(changed) => {
            let mut tree = state.tree.lock().unwrap_or_else(|p| p.into_inner());
            for (key, before, after) in &changed {
                tree.update(key, *before, Some(*after));
            }
            drop(tree);
            // After the commit: each removal moves the cache's generation, so a reader that
            // took the file's older snapshot before it cannot admit that copy afterwards. A key
            // whose digest did not change reads the same from either snapshot.
            for (key, _, _) in &changed {
                state.cache.remove(key);
            }
            MergeReply::Part(ack).send(Ok(()));
            Ok(())
        }
        Err(e) => {
            MergeReply::Part(ack).send(Err(KvError::Storage(e.to_string())));
            Err(format!("vnode {} ingest failed: {e}", state.args.partition).into())
        }
    }
}

/// Removes the tombstones whose current object still has the digest the reaper checked on
/// every replica; anything written since is kept.
fn reap(state: &mut VnodeState, keys: Vec<(Vec<u8>, u64)>) -> Result<u64, ActorProcessingErr> {
    let mut gone = Vec::new();
    for (key, digest) in keys {
        let current = match state.memtable.get(&key) {
            Some(s) => Some(s.object.clone()),
            None => VnodeStore::read(&state.store.reader(), &key)?,
        };
        if current.is_some_and(|o| o.is_deleted() && o.digest() == digest) {
            gone.push((key, digest));
        }
    }
    if gone.is_empty() {
        return Ok(0);
    }
    let keys: Vec<Vec<u8>> = gone.iter().map(|(k, _)| k.clone()).collect();
    tokio::task::block_in_place(|| state.store.remove(&keys))?;
    let mut tree = state.tree.lock().unwrap_or_else(|p| p.into_inner());
    for (key, digest) in &gone {
        state.memtable.remove(key);
        state.cache.remove(key);
        tree.update(key, Some(*digest), None);
    }
    Ok(gone.len() as u64)
}
