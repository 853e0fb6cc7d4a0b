//! Per-peer batching of replica traffic.
//!
//! Every remote message through ractor_cluster costs several actor hops on each side, about
//! as much CPU as a whole local request. Coordinators therefore queue replica reads and merges
//! per peer; one task per peer and kind sends whatever is queued as a single message, with a
//! few batches in flight. Under load one message carries many requests; at rest a request
//! leaves alone at once, so batching adds no waiting. Reads and merges travel separately so a
//! read never waits behind a merge's fsync. Reads go one way and come back as a cast (a call
//! costs ractor_cluster a spawned reply task and a timer on top of two messages); a sweep fails
//! the read batches whose deadline passed or whose peer left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ractor::RpcReplyPort;
use ractor::rpc::CallResult;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::peer_table::PeerTable;
use crate::protocol::{
    KvError, ReadAsk, ReplicaMessage, ReplicaObject, ReplicaRead, ReplicaWrite, Wire, WriteBatch,
    WriteBatchReply,
};

/// Most requests one batch carries.
const MAX_BATCH: usize = 256;
/// Batches in flight per peer and kind.
const MAX_IN_FLIGHT: usize = 4;

/// A queued request: what to send, its deadline, and where its answer goes.
type Job<Q, A> = (Q, Instant, oneshot::Sender<Result<A, KvError>>);
type ReadJob = Job<ReplicaRead, ReplicaObject>;
type WriteJob = Job<ReplicaWrite, ()>;

/// How often a link fails the read batches whose deadline passed or whose peer is gone.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// A read batch sent and not yet answered.
struct AskedBatch {
    replies: Vec<oneshot::Sender<Result<ReplicaObject, KvError>>>,
    deadline: Instant,
    _permit: OwnedSemaphorePermit,
}

/// Read batches awaiting their answer casts, by batch id.
type Asked = Arc<Mutex<HashMap<u64, AskedBatch>>>;

/// Batching queues to one peer.
#[derive(Clone)]
pub struct PeerLink {
    reads: mpsc::UnboundedSender<ReadJob>,
    writes: mpsc::UnboundedSender<WriteJob>,
    asked: Asked,
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink").finish_non_exhaustive()
    }
}

fn unreachable() -> KvError {
    KvError::Unavailable { needed: 1, got: 0 }
}

/// Most payload bytes one batch carries, far under ractor_cluster's 16 MiB frame limit (a
/// larger frame would close the session).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Takes the first job and whatever else is queued, up to a batch (by count and by bytes; a
/// job that would overflow the bytes starts the next batch).
async fn next_batch<J>(
    rx: &mut mpsc::UnboundedReceiver<J>,
    held: &mut Option<J>,
    size: impl Fn(&J) -> usize,
) -> Option<Vec<J>> {
    let first = match held.take() {
        Some(j) => j,
        None => rx.recv().await?,
    };
    // Coordinators already runnable on this worker enqueue their requests before the batch is
    // cut: one scheduling round's requests travel together, and an idle link waits no longer
    // than one pass of the run queue.
    tokio::task::yield_now().await;
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) if bytes + size(&j) > MAX_BATCH_BYTES => {
                *held = Some(j);
                break;
            }
            Ok(j) => {
                bytes += size(&j);
                batch.push(j);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

fn call_timeout(deadlines: impl Iterator<Item = Instant>) -> Duration {
    deadlines
        .max()
        .map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        })
        .max(Duration::from_millis(1))
}

impl PeerLink {
    /// Starts the batching tasks from node `me` to `peer`.
    pub fn start(me: &str, peer: &str, peers: Arc<PeerTable>) -> PeerLink {
        let (reads, mut read_rx) = mpsc::unbounded_channel::<ReadJob>();
        let (writes, mut write_rx) = mpsc::unbounded_channel::<WriteJob>();
        let asked: Asked = Arc::default();
        let (me, peer) = (me.to_string(), peer.to_string());
        let (p, table, pending) = (peer.clone(), peers.clone(), asked.clone());
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut held = None;
            let mut next_id = 0u64;
            let size = |j: &ReadJob| j.0.key.len() + 16;
            while let Some(batch) = next_batch(&mut read_rx, &mut held, size).await {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                next_id += 1;
                ask(&me, &p, &table, &pending, next_id, batch, permit);
            }
        });
        tokio::spawn(sweep(Arc::downgrade(&asked), peer.clone(), peers.clone()));
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut held = None;
            let size = |j: &WriteJob| j.0.key.len() + j.0.object.len() + 32;
            while let Some(batch) = next_batch(&mut write_rx, &mut held, size).await {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let (p, table) = (peer.clone(), peers.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    send_writes(&p, &table, batch).await;
                });
            }
        });
        PeerLink {
            reads,
            writes,
            asked,
        }
    }

    /// Hands the peer's answers to a read batch to their requesters.
    pub fn answered(&self, batch: u64, results: Vec<Result<ReplicaObject, KvError>>) {
        let Some(asked) = lock(&self.asked).remove(&batch) else {
            return;
        };
        if results.len() == asked.replies.len() {
            for (tx, r) in asked.replies.into_iter().zip(results) {
                let _ = tx.send(r);
            }
        } else {
            fail(asked.replies, unreachable);
        }
    }

    /// Reads a key's object on the peer. A job past `deadline` is answered `Timeout` when its
    /// batch is cut or expires unanswered; the caller keeps its own deadline too.
    pub async fn read(
        &self,
        req: ReplicaRead,
        deadline: Instant,
    ) -> Result<ReplicaObject, KvError> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .send((req, deadline, tx))
            .map_err(|_| unreachable())?;
        rx.await.unwrap_or_else(|_| Err(unreachable()))
    }

    /// Merges an object into the peer's replica; `Ok` once durable there. Deadlines as for
    /// [`PeerLink::read`].
    pub async fn write(&self, req: ReplicaWrite, deadline: Instant) -> Result<(), KvError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((req, deadline, tx))
            .map_err(|_| unreachable())?;
        rx.await.unwrap_or_else(|_| Err(unreachable()))
    }
}

/// Sends one batch to `peer` and hands each waiting request its own result.
async fn send_batch<Q, A, R>(
    peer: &str,
    table: &PeerTable,
    batch: Vec<Job<Q, A>>,
    message: impl FnOnce(Vec<Q>, RpcReplyPort<Wire<R>>) -> ReplicaMessage,
    results: impl FnOnce(R) -> Vec<Result<A, KvError>>,
) where
    R: Send + 'static,
{
    let Some(replica) = table.replica(peer) else {
        return batch
            .into_iter()
            .for_each(|(_, _, tx)| drop(tx.send(Err(unreachable()))));
    };
    // A job whose deadline passed while it queued is answered, not sent: its requester has
    // given up, and applying it late could undo what came after.
    let now = Instant::now();
    let (batch, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| j.1 > now);
    for (_, _, tx) in expired {
        let _ = tx.send(Err(KvError::Timeout));
    }
    if batch.is_empty() {
        return;
    }
    let timeout = call_timeout(batch.iter().map(|j| j.1));
    let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|(q, _, tx)| (q, tx)).unzip();
    let n = items.len();
    match replica
        .call(|port| message(items, port), Some(timeout))
        .await
    {
        Ok(CallResult::Success(Wire(Ok(reply)))) => {
            let results = results(reply);
            if results.len() == n {
                for (tx, r) in replies.into_iter().zip(results) {
                    let _ = tx.send(r);
                }
            } else {
                replies
                    .into_iter()
                    .for_each(|tx| drop(tx.send(Err(unreachable()))));
            }
        }
        Ok(CallResult::Timeout) => replies
            .into_iter()
            .for_each(|tx| drop(tx.send(Err(KvError::Timeout)))),
        _ => replies
            .into_iter()
            .for_each(|tx| drop(tx.send(Err(unreachable())))),
    }
}

async fn send_writes(peer: &str, table: &PeerTable, batch: Vec<WriteJob>) {
    let message = |writes, port| ReplicaMessage::WriteMany(Wire::new(WriteBatch { writes }), port);
    send_batch(peer, table, batch, message, |r: WriteBatchReply| r.results).await;
}

fn lock(asked: &Asked) -> std::sync::MutexGuard<'_, HashMap<u64, AskedBatch>> {
    asked.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail<T>(replies: Vec<oneshot::Sender<Result<T, KvError>>>, why: fn() -> KvError) {
    for tx in replies {
        let _ = tx.send(Err(why()));
    }
}

/// Sends a read batch one way; [`PeerLink::answered`] or [`sweep`] settles it.
fn ask(
    me: &str,
    peer: &str,
    table: &PeerTable,
    asked: &Asked,
    id: u64,
    batch: Vec<ReadJob>,
    permit: OwnedSemaphorePermit,
) {
    let Some(replica) = table.replica(peer) else {
        return fail(batch.into_iter().map(|j| j.2).collect(), unreachable);
    };
    // As for calls: a job whose requester gave up is answered, not sent.
    let now = Instant::now();
    let (batch, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| j.1 > now);
    fail(expired.into_iter().map(|j| j.2).collect(), || {
        KvError::Timeout
    });
    let Some(deadline) = batch.iter().map(|j| j.1).max() else {
        return;
    };
    let (reads, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|(q, _, tx)| (q, tx)).unzip();
    // Registered before sending, so an answer can never arrive first.
    lock(asked).insert(
        id,
        AskedBatch {
            replies,
            deadline,
            _permit: permit,
        },
    );
    let message = ReplicaMessage::ReadAsk(Wire::new(ReadAsk {
        from: me.to_string(),
        batch: id,
        reads,
    }));
    if replica.cast(message).is_err()
        && let Some(b) = lock(asked).remove(&id)
    {
        fail(b.replies, unreachable);
    }
}

/// Fails the read batches whose deadline passed, and all of them once the peer is gone (its
/// answers can no longer come), so requesters move on and in-flight slots come back. Ends
/// with the link.
async fn sweep(asked: Weak<Mutex<HashMap<u64, AskedBatch>>>, peer: String, table: Arc<PeerTable>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(asked) = asked.upgrade() else {
            return;
        };
        let now = Instant::now();
        let gone = table.replica(&peer).is_none();
        let settled: Vec<AskedBatch> = {
            let mut map = lock(&asked);
            if map.is_empty() {
                continue;
            }
            let ids: Vec<u64> = map
                .iter()
                .filter(|(_, b)| gone || b.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| map.remove(&id)).collect()
        };
        for b in settled {
            fail(
                b.replies,
                if gone {
                    unreachable
                } else {
                    || KvError::Timeout
                },
            );
        }
    }
}
