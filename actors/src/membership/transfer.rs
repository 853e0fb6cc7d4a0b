//! Ownership transfer: a new replica pulls a whole partition from a current one, in key order,
//! in bounded chunks, each merged durably before the next cursor is saved; then a merkle
//! exchange with the source catches whatever the stream could not see.
//!
//! The target drives: it asks for the chunk after its cursor (one more is fetched while one is
//! merged), so the source keeps no state but an outbound-stream count, and a crash of either
//! side resumes at the cursor, re-sending at most the chunks in flight. Merges are joins, so a
//! re-sent chunk, or a key also written by a coordinator's double write, is harmless.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::context::NodeContext;
use crate::protocol::{ChunkRequest, KvError, ReplicaMessage, TransferChunk, TransferView, Wire};
use crate::repair::exchange;
use crate::replica_io::{call_replica, start_ingest};

/// Deadline of one chunk request (a chunk is at most `chunk_bytes` plus one pair).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// A source stream not asked for a chunk this long no longer counts against its limit.
const STREAM_IDLE: Duration = Duration::from_secs(5);

/// How transfers run on a node.
#[derive(Debug, Clone, Copy)]
pub struct TransferSettings {
    /// Bytes per second this node receives per transfer at most (0: unthrottled).
    pub bytes_per_sec: u64,
    /// Transfers this node streams in at once.
    pub max_inbound: usize,
    /// Transfers this node serves as a source at once.
    pub max_outbound: usize,
    /// Most keys per chunk.
    pub chunk_keys: u32,
    /// Most payload bytes per chunk.
    pub chunk_bytes: u32,
}

/// Where a transfer stands, kept durably beside the partition's file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The change (epoch of its write-both-read-old placement) the transfer belongs to.
    pub epoch: u64,
    /// Last key merged durably.
    pub last_key: Option<Vec<u8>>,
    /// Keys merged so far.
    pub keys: u64,
    /// Bytes merged so far.
    pub bytes: u64,
    /// The source's key count for the partition, as its last chunk reported it.
    #[serde(default)]
    pub total_keys: u64,
    /// Streamed and verified.
    pub done: bool,
}

fn cursor_path(dir: &std::path::Path, partition: u32) -> PathBuf {
    dir.join(format!("transfer-{partition}.cursor"))
}

/// The cursor of `partition` for the change at `epoch`; a fresh one if none or another change's.
pub fn load_cursor(dir: &std::path::Path, partition: u32, epoch: u64) -> Cursor {
    std::fs::read(cursor_path(dir, partition))
        .ok()
        .and_then(|b| rmp_serde::from_slice::<Cursor>(&b).ok())
        .filter(|c| c.epoch == epoch)
        .unwrap_or(Cursor {
            epoch,
            ..Cursor::default()
        })
}

/// Saves `cursor` (temporary file, rename), with an fsync when `sync`.
///
/// A cursor is written only after everything it covers is durable, so whichever version a
/// crash leaves (an older one, or none after a power loss) lies at or behind the merged data:
/// resuming from it re-sends chunks, which merge as no-ops, and never skips any. Only the final
/// `done` needs the fsync, since the claimant is told of it.
fn save_cursor(
    dir: &std::path::Path,
    partition: u32,
    cursor: &Cursor,
    sync: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let path = cursor_path(dir, partition);
    let tmp = path.with_extension("cursor.tmp");
    let bytes = rmp_serde::to_vec(cursor).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    if sync {
        f.sync_data()?;
    }
    std::fs::rename(tmp, path)
}

/// Progress of the transfers this node streams in, for `transfers`.
#[derive(Debug, Default)]
pub struct TransferBoard(Mutex<BTreeMap<u32, TransferView>>);

impl TransferBoard {
    /// Updates (or adds) `partition`'s line.
    pub fn update(&self, partition: u32, f: impl FnOnce(&mut TransferView)) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let line = lines.entry(partition).or_insert_with(|| TransferView {
            partition,
            ..TransferView::default()
        });
        f(line);
    }

    /// Every line, by partition.
    pub fn lines(&self) -> Vec<TransferView> {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.values().cloned().collect()
    }

    /// Drops the lines of partitions not in `keep`.
    pub fn retain(&self, keep: &[u32]) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.retain(|p, _| keep.contains(p));
    }
}

/// Outbound streams this node serves, by (target, partition), with when each last asked.
#[derive(Debug, Default)]
pub struct Outbound(Mutex<HashMap<(String, u32), Instant>>);

impl Outbound {
    /// Admits a chunk request of stream (`from`, `partition`) unless `limit` other streams
    /// are active.
    fn admit(&self, from: &str, partition: u32, limit: usize) -> bool {
        let mut streams = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        streams.retain(|_, seen| now.duration_since(*seen) < STREAM_IDLE);
        let key = (from.to_string(), partition);
        if !streams.contains_key(&key) && streams.len() >= limit.max(1) {
            return false;
        }
        streams.insert(key, now);
        true
    }

    /// Ends stream (`from`, `partition`): its last chunk was served.
    fn finish(&self, from: &str, partition: u32) {
        let mut streams = self.0.lock().unwrap_or_else(|p| p.into_inner());
        streams.remove(&(from.to_string(), partition));
    }
}

/// Serves a target's chunk request from this node's vnode of the partition.
pub async fn answer_chunk(
    ctx: &Arc<NodeContext>,
    req: ChunkRequest,
) -> Result<TransferChunk, KvError> {
    if !ctx.transfers.outbound.admit(
        &req.from,
        req.partition,
        ctx.transfers.settings.max_outbound,
    ) {
        return Err(KvError::Overloaded);
    }
    let table = ctx.table.clone();
    let (max_keys, max_bytes) = (
        req.max_keys.clamp(1, 4096) as usize,
        req.max_bytes.clamp(1024, 4 << 20) as usize,
    );
    let after = req.after.map(ByteBuf::into_vec);
    let partition = req.partition;
    let (pairs, more, total_keys) = tokio::task::spawn_blocking(move || {
        table.chunk_after(partition, after.as_deref(), max_keys, max_bytes)
    })
    .await
    .map_err(|e| KvError::Storage(e.to_string()))??;
    if !more {
        ctx.transfers.outbound.finish(&req.from, partition);
    }
    Ok(TransferChunk {
        pairs: pairs
            .into_iter()
            .map(|(k, v)| (ByteBuf::from(k), ByteBuf::from(v)))
            .collect(),
        more,
        total_keys,
    })
}

/// Streams `partition` in from the first source that serves it, then verifies it with a merkle
/// exchange; resumes at the durable cursor of the change at `epoch`. Returns once done.
pub async fn run(
    ctx: Arc<NodeContext>,
    partition: u32,
    epoch: u64,
    sources: Vec<String>,
    board: Arc<TransferBoard>,
) -> Result<(), String> {
    let dir = ctx.ring.dir().to_path_buf();
    let mut cursor = load_cursor(&dir, partition, epoch);
    let me = ctx.node_id.clone();
    board.update(partition, |l| {
        l.to = me.clone();
        l.keys = cursor.keys;
        l.bytes = cursor.bytes;
        l.total_keys = cursor.total_keys;
    });
    if cursor.done {
        board.update(partition, |l| l.state = "done".into());
        return Ok(());
    }
    let settings = ctx.transfers.settings;
    let up: Vec<String> = sources
        .iter()
        .filter(|s| ctx.peers.is_up(s))
        .cloned()
        .collect();
    let Some(source) = up.first().cloned() else {
        let why = format!("every source is down ({})", sources.join(", "));
        board.update(partition, |l| {
            l.state = "stalled".into();
            l.why = why.clone();
        });
        return Err(why);
    };
    // Sources after the first are tried in turn when one refuses (outbound limit) or fails.
    let mut candidates = up.into_iter();
    let mut source = candidates.next().unwrap_or(source);
    board.update(partition, |l| {
        l.from = source.clone();
        l.state = "streaming".into();
        l.why.clear();
    });
    let started = Instant::now();
    let bytes_at_start = cursor.bytes;
    let ask = |source: String, after: Option<Vec<u8>>| {
        let ctx = ctx.clone();
        let req = ChunkRequest {
            from: ctx.node_id.clone(),
            partition,
            after: after.map(ByteBuf::from),
            max_keys: settings.chunk_keys,
            max_bytes: settings.chunk_bytes,
            epoch,
        };
        tokio::spawn(async move {
            let call = call_replica(&ctx, &source, |p| {
                ReplicaMessage::TransferChunk(Wire::new(req), p)
            });
            tokio::time::timeout(CHUNK_TIMEOUT, call)
                .await
                .unwrap_or(Err(KvError::Timeout))
        })
    };
    let mut next = ask(source.clone(), cursor.last_key.clone());
    // Where the stream's time went, for the log line at the end: waiting for chunks, merging
    // them, saving the cursor.
    let (mut waited, mut merging, mut saving) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    loop {
        let t = Instant::now();
        let fetched = (&mut next).await;
        waited += t.elapsed();
        let chunk = match fetched {
            Ok(Ok(c)) => c,
            failed => {
                let busy = matches!(&failed, Ok(Err(KvError::Overloaded)));
                let why = match &failed {
                    Ok(Err(KvError::Overloaded)) => {
                        format!("source {source} at its outbound limit")
                    }
                    Ok(Err(e)) => format!("source {source}: {e}"),
                    Err(e) => format!("chunk task: {e}"),
                    Ok(Ok(_)) => unreachable!(),
                };
                board.update(partition, |l| {
                    l.state = if busy { "waiting" } else { "stalled" }.into();
                    l.why = why.clone();
                });
                match candidates.next() {
                    Some(s) => source = s,
                    None => return Err(why),
                }
                board.update(partition, |l| l.from = source.clone());
                next = ask(source.clone(), cursor.last_key.clone());
                continue;
            }
        };
        let last = chunk.pairs.last().map(|(k, _)| k.to_vec());
        if chunk.more && last.is_some() {
            next = ask(source.clone(), last.clone());
        }
        let n = chunk.pairs.len() as u64;
        let bytes: u64 = chunk
            .pairs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        let t = Instant::now();
        if !chunk.pairs.is_empty() {
            let pairs = chunk
                .pairs
                .into_iter()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect();
            start_ingest(&ctx, partition, pairs)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| format!("merging a chunk: {e}"))?;
        }
        if let Some(k) = last.clone() {
            cursor.last_key = Some(k);
        }
        merging += t.elapsed();
        let t = Instant::now();
        cursor.keys += n;
        cursor.bytes += bytes;
        ctx.transfers
            .received_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        cursor.total_keys = chunk.total_keys;
        let (dir2, c2) = (dir.clone(), cursor.clone());
        tokio::task::spawn_blocking(move || save_cursor(&dir2, partition, &c2, false))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("saving the transfer cursor: {e}"))?;
        saving += t.elapsed();
        let elapsed = started.elapsed().as_secs_f64().max(1e-3);
        let rate = (cursor.bytes - bytes_at_start) as f64 / elapsed;
        let total = chunk.total_keys;
        board.update(partition, |l| {
            l.keys = cursor.keys;
            l.bytes = cursor.bytes;
            l.total_keys = total;
            l.rate = rate;
            let per_key = cursor.bytes as f64 / cursor.keys.max(1) as f64;
            l.eta_secs =
                (rate > 0.0).then(|| total.saturating_sub(cursor.keys) as f64 * per_key / rate);
        });
        if settings.bytes_per_sec > 0 {
            let due = Duration::from_secs_f64(
                (cursor.bytes - bytes_at_start) as f64 / settings.bytes_per_sec as f64,
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if !chunk.more || last.is_none() {
            break;
        }
    }
    board.update(partition, |l| l.state = "verifying".into());
    let repaired = exchange::exchange(&ctx, partition, &source, 512, u32::MAX)
        .await
        .map_err(|e| format!("merkle check with {source}: {e}"))?;
    cursor.done = true;
    let (dir2, c2) = (dir.clone(), cursor.clone());
    tokio::task::spawn_blocking(move || save_cursor(&dir2, partition, &c2, true))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("saving the transfer cursor: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        partition,
        %source,
        keys = cursor.keys,
        bytes = cursor.bytes,
        repaired,
        waited_ms = waited.as_millis() as u64,
        merging_ms = merging.as_millis() as u64,
        saving_ms = saving.as_millis() as u64,
        mb_per_sec = (cursor.bytes - bytes_at_start) as f64 / secs.max(1e-3) / 1e6,
        "partition streamed in"
    );
    board.update(partition, |l| {
        l.state = "done".into();
        l.eta_secs = Some(0.0);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_a_reopen_and_another_change_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cursor {
            epoch: 7,
            last_key: Some(b"k42".to_vec()),
            keys: 42,
            bytes: 4200,
            total_keys: 99,
            done: false,
        };
        save_cursor(dir.path(), 3, &c, true).unwrap();
        assert_eq!(load_cursor(dir.path(), 3, 7), c);
        assert_eq!(load_cursor(dir.path(), 3, 9).keys, 0);
        assert_eq!(load_cursor(dir.path(), 4, 7).keys, 0);
    }

    #[test]
    fn outbound_streams_are_bounded_and_idle_ones_expire() {
        let out = Outbound::default();
        assert!(out.admit("n4", 1, 2));
        assert!(out.admit("n4", 2, 2));
        assert!(!out.admit("n5", 3, 2));
        assert!(out.admit("n4", 1, 2));
        out.0
            .lock()
            .unwrap()
            .values_mut()
            .for_each(|t| *t -= STREAM_IDLE * 2);
        assert!(out.admit("n5", 3, 2));
    }
}
