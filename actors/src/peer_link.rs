//! Per-peer batching of replica traffic.
//!
//! Every remote message through ractor_cluster costs several actor hops on each side, about
//! as much CPU as a whole local request. Coordinators therefore queue replica reads and merges
//! per peer; one task per peer and kind sends whatever is queued as a single message, with a
//! few merge batches (one read batch) in flight. Under load one message carries many
//! requests; at rest a request leaves alone at once, so batching adds no waiting. Reads and merges travel separately so a
//! read never waits behind a merge's fsync.
//!
//! Batches go one way and their answers come back as a cast (a call costs ractor_cluster a
//! spawned reply task and a timer on top of its two messages). A sweep fails the batches whose
//! deadline passed or whose peer left, so requesters move on and in-flight slots come back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::membership::ring_cell::RingCell;
use crate::peer_table::PeerTable;
use crate::protocol::{
    KvError, ReadAsk, ReplicaMessage, ReplicaObject, ReplicaRead, ReplicaWrite, Wire, WriteAsk,
};

/// Most requests one batch carries.
const MAX_BATCH: usize = 256;
/// Read batches in flight per peer. A peer answers reads from memory in microseconds, so while
/// one batch is out the next fills: one at a time sent fewer, fuller messages and served 8-10%
/// more quorum reads (at lower p99) than four.
const READS_IN_FLIGHT: usize = 1;
/// Merge batches in flight per peer: each waits for the peer's fsync, so more than one keeps
/// merges flowing meanwhile.
const WRITES_IN_FLIGHT: usize = 4;

/// A queued request: what to send, its deadline, and where its answer goes.
type Job<Q, A> = (Q, Instant, oneshot::Sender<Result<A, KvError>>);
type ReadJob = Job<ReplicaRead, ReplicaObject>;
type WriteJob = Job<ReplicaWrite, ()>;

/// How often a link fails the batches whose deadline passed or whose peer is gone.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// A batch sent and not yet answered.
struct AskedBatch<A> {
    replies: Vec<oneshot::Sender<Result<A, KvError>>>,
    /// The latest deadline of its jobs.
    deadline: Instant,
    sent: Instant,
    /// Its in-flight slot, given back after [`SLOT_HOLD`] even while it waits on.
    permit: Option<OwnedSemaphorePermit>,
}

/// Longest a batch keeps its in-flight slot: answers normally come within milliseconds, so one
/// answer lost (a peer session replaced between sweeps) holds up the link's next batches for
/// this long, not until its requesters' deadline.
const SLOT_HOLD: Duration = Duration::from_millis(50);

/// Batches of one kind awaiting their answer casts, by batch id.
type Asked<A> = Arc<Mutex<HashMap<u64, AskedBatch<A>>>>;

/// Batching queues to one peer.
#[derive(Clone)]
pub struct PeerLink {
    reads: mpsc::UnboundedSender<ReadJob>,
    writes: mpsc::UnboundedSender<WriteJob>,
    asked_reads: Asked<ReplicaObject>,
    asked_writes: Asked<()>,
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

impl PeerLink {
    /// Starts the batching tasks from node `me` to `peer`.
    pub fn start(me: &str, peer: &str, peers: Arc<PeerTable>, ring: Arc<RingCell>) -> PeerLink {
        let (reads, read_rx) = mpsc::unbounded_channel::<ReadJob>();
        let (writes, write_rx) = mpsc::unbounded_channel::<WriteJob>();
        let link = PeerLink {
            reads,
            writes,
            asked_reads: Arc::default(),
            asked_writes: Arc::default(),
        };
        let asker = Asker {
            me: me.to_string(),
            peer: peer.to_string(),
            table: peers,
            ring,
        };
        asker.spawn(
            read_rx,
            &link.asked_reads,
            READS_IN_FLIGHT,
            |j| j.0.key.len() + 16,
            |from, batch, reads, epoch| {
                ReplicaMessage::ReadAsk(Wire::new(ReadAsk {
                    from,
                    batch,
                    reads,
                    epoch,
                }))
            },
        );
        asker.spawn(
            write_rx,
            &link.asked_writes,
            WRITES_IN_FLIGHT,
            |j| j.0.key.len() + j.0.object.len() + 32,
            |from, batch, writes, epoch| {
                ReplicaMessage::WriteAsk(Wire::new(WriteAsk {
                    from,
                    batch,
                    writes,
                    epoch,
                }))
            },
        );
        link
    }

    /// Hands the peer's answers to a read batch to their requesters.
    pub fn answered_reads(&self, batch: u64, results: Vec<Result<ReplicaObject, KvError>>) {
        settle(&self.asked_reads, batch, results);
    }

    /// Hands the peer's answers to a merge batch to their requesters.
    pub fn answered_writes(&self, batch: u64, results: Vec<Result<(), KvError>>) {
        settle(&self.asked_writes, batch, results);
    }

    /// Reads a key's object on the peer. A job past `deadline` when its batch is cut is
    /// answered `Timeout`; a sent batch left unanswered fails `Timeout` at the latest deadline
    /// of its jobs, or `Unavailable` once the peer is gone. Callers keep their own deadline.
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

fn lock<A>(asked: &Asked<A>) -> std::sync::MutexGuard<'_, HashMap<u64, AskedBatch<A>>> {
    asked.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail<A>(replies: Vec<oneshot::Sender<Result<A, KvError>>>, why: fn() -> KvError) {
    for tx in replies {
        let _ = tx.send(Err(why()));
    }
}

/// Answers a batch's requesters with the peer's results, in order.
fn settle<A>(asked: &Asked<A>, batch: u64, results: Vec<Result<A, KvError>>) {
    let Some(b) = lock(asked).remove(&batch) else {
        return;
    };
    if results.len() == b.replies.len() {
        for (tx, r) in b.replies.into_iter().zip(results) {
            let _ = tx.send(r);
        }
    } else {
        fail(b.replies, unreachable);
    }
}

/// What one link's batching tasks share: who asks, whom, and where to find the peer.
#[derive(Clone)]
struct Asker {
    me: String,
    peer: String,
    table: Arc<PeerTable>,
    /// Stamps each batch with the epoch current when it is sent.
    ring: Arc<RingCell>,
}

impl Asker {
    /// Starts the task that batches one kind of job and its sweep.
    fn spawn<Q, A>(
        &self,
        mut rx: mpsc::UnboundedReceiver<Job<Q, A>>,
        asked: &Asked<A>,
        in_flight: usize,
        size: fn(&Job<Q, A>) -> usize,
        message: fn(String, u64, Vec<Q>, u64) -> ReplicaMessage,
    ) where
        Q: Send + 'static,
        A: Send + 'static,
    {
        let (me, pending) = (self.clone(), asked.clone());
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(in_flight));
            let mut held = None;
            // Random, so an answer meant for an earlier incarnation of this node (a peer that
            // resumes after this node restarted) matches no batch of this one.
            let mut next_id: u64 = rand::random();
            loop {
                // The slot first: what queues while every slot is taken joins the batch that
                // takes the next one, so a busy link sends fewer, fuller messages.
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let Some(batch) = next_batch(&mut rx, &mut held, size).await else {
                    break;
                };
                next_id = next_id.wrapping_add(1);
                me.ask(&pending, next_id, batch, permit, message);
            }
        });
        tokio::spawn(self.clone().sweep(Arc::downgrade(asked)));
    }

    /// Sends a batch one way; [`settle`] or the sweep answers its requesters.
    fn ask<Q, A>(
        &self,
        asked: &Asked<A>,
        id: u64,
        batch: Vec<Job<Q, A>>,
        permit: OwnedSemaphorePermit,
        message: fn(String, u64, Vec<Q>, u64) -> ReplicaMessage,
    ) {
        let Some(replica) = self.table.replica(&self.peer) else {
            return fail(batch.into_iter().map(|j| j.2).collect(), unreachable);
        };
        // A job whose deadline passed while it queued is answered, not sent: its requester has
        // given up, and applying it late could undo what came after.
        let now = Instant::now();
        let (batch, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| j.1 > now);
        fail(expired.into_iter().map(|j| j.2).collect(), || {
            KvError::Timeout
        });
        let Some(deadline) = batch.iter().map(|j| j.1).max() else {
            return;
        };
        let (items, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|(q, _, tx)| (q, tx)).unzip();
        // Registered before sending, so an answer can never arrive first.
        lock(asked).insert(
            id,
            AskedBatch {
                replies,
                deadline,
                sent: now,
                permit: Some(permit),
            },
        );
        if replica
            .cast(message(self.me.clone(), id, items, self.ring.epoch()))
            .is_err()
            && let Some(b) = lock(asked).remove(&id)
        {
            fail(b.replies, unreachable);
        }
    }

    /// Fails the batches whose deadline passed, and all of them once the peer is gone (its
    /// answers can no longer come). Ends with the link.
    async fn sweep<A>(self, asked: Weak<Mutex<HashMap<u64, AskedBatch<A>>>>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(asked) = asked.upgrade() else {
                return;
            };
            if lock(&asked).is_empty() {
                continue;
            }
            let now = Instant::now();
            let gone = self.table.replica(&self.peer).is_none();
            let settled: Vec<AskedBatch<A>> = {
                let mut map = lock(&asked);
                let ids: Vec<u64> = map
                    .iter()
                    .filter(|(_, b)| gone || b.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                let settled = ids.into_iter().filter_map(|id| map.remove(&id)).collect();
                for b in map.values_mut().filter(|b| b.sent + SLOT_HOLD <= now) {
                    b.permit = None;
                }
                settled
            };
            let why: fn() -> KvError = if gone {
                unreachable
            } else {
                || KvError::Timeout
            };
            for b in settled {
                fail(b.replies, why);
            }
        }
    }
}
