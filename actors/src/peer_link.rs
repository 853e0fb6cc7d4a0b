//! Per-peer batching of replica traffic.
//!
//! Every remote message through ractor_cluster costs several actor hops on each side, about
//! as much CPU as a whole local request. Coordinators therefore queue replica reads and merges
//! per peer; one task per peer and kind sends whatever is queued as a single message, with a
//! few batches in flight. Under load one message carries many requests; at rest a request
//! leaves alone at once, so batching adds no waiting. Reads and merges travel separately so a
//! read never waits behind a merge's fsync.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::RpcReplyPort;
use ractor::rpc::CallResult;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::peer_table::PeerTable;
use crate::protocol::{
    KvError, ReadBatch, ReadBatchReply, ReplicaMessage, ReplicaObject, ReplicaRead, ReplicaWrite,
    Wire, WriteBatch, WriteBatchReply,
};

/// Most requests one batch carries.
const MAX_BATCH: usize = 256;
/// Batches in flight per peer and kind.
const MAX_IN_FLIGHT: usize = 4;

/// A queued request: what to send, its deadline, and where its answer goes.
type Job<Q, A> = (Q, Instant, oneshot::Sender<Result<A, KvError>>);
type ReadJob = Job<ReplicaRead, ReplicaObject>;
type WriteJob = Job<ReplicaWrite, ()>;

/// Batching queues to one peer.
#[derive(Debug, Clone)]
pub struct PeerLink {
    reads: mpsc::UnboundedSender<ReadJob>,
    writes: mpsc::UnboundedSender<WriteJob>,
}

fn unreachable() -> KvError {
    KvError::Unavailable { needed: 1, got: 0 }
}

async fn answered<T>(
    rx: oneshot::Receiver<Result<T, KvError>>,
    deadline: Instant,
) -> Result<T, KvError> {
    match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(unreachable()),
        Err(_) => Err(KvError::Timeout),
    }
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
    /// Starts the batching tasks for `peer`.
    pub fn start(peer: String, peers: Arc<PeerTable>) -> PeerLink {
        let (reads, mut read_rx) = mpsc::unbounded_channel::<ReadJob>();
        let (writes, mut write_rx) = mpsc::unbounded_channel::<WriteJob>();
        let (p, table) = (peer.clone(), peers.clone());
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut held = None;
            let size = |j: &ReadJob| j.0.key.len() + 16;
            while let Some(batch) = next_batch(&mut read_rx, &mut held, size).await {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let (p, table) = (p.clone(), table.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    send_reads(&p, &table, batch).await;
                });
            }
        });
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
        PeerLink { reads, writes }
    }

    /// Reads a key's object on the peer. A job past `deadline` is answered `Timeout` when its
    /// batch is cut or its call times out; the caller keeps its own deadline too.
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

    /// Merges an object into the peer's replica; `Ok` once durable there.
    pub async fn write(&self, req: ReplicaWrite, deadline: Instant) -> Result<(), KvError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((req, deadline, tx))
            .map_err(|_| unreachable())?;
        answered(rx, deadline).await
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

async fn send_reads(peer: &str, table: &PeerTable, batch: Vec<ReadJob>) {
    let message = |reads, port| ReplicaMessage::ReadMany(Wire::new(ReadBatch { reads }), port);
    send_batch(peer, table, batch, message, |r: ReadBatchReply| r.results).await;
}

async fn send_writes(peer: &str, table: &PeerTable, batch: Vec<WriteJob>) {
    let message = |writes, port| ReplicaMessage::WriteMany(Wire::new(WriteBatch { writes }), port);
    send_batch(peer, table, batch, message, |r: WriteBatchReply| r.results).await;
}
