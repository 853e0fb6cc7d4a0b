//! Per-node batching of the SDK's reads and writes.
//!
//! Every message through the cluster link costs both processes several actor hops, a spawned
//! reply task and a timer: about as much CPU as a node spends serving a cached read. The
//! client therefore queues its requests per node, and one task per node and kind sends
//! whatever is queued as one [`RouterMessage::Batch`], with a few batches in flight. Under
//! load one message carries many requests; a request alone leaves at once, so batching adds
//! no wait. Reads and writes travel apart, so a read never waits on a write's fsync, and a
//! batch is answered as a whole, so its requests should take alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor::rpc::CallResult;
use ringkv_actors::protocol::{BatchReply, BatchRequest, KvError, RouterMessage, Wire};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most requests one batch carries.
const MAX_BATCH: usize = 128;
/// Read batches in flight per node: while they are out the next one fills.
const READS_IN_FLIGHT: usize = 2;
/// Write batches in flight per node: each waits on the replicas' fsyncs.
const WRITES_IN_FLIGHT: usize = 4;

/// One queued request: what to send, where, until when, and where its answer goes.
pub(crate) struct Job {
    /// The request.
    pub request: BatchRequest,
    /// The node's router it goes to (a batch uses its first job's).
    pub router: ActorRef<RouterMessage>,
    /// When the requester gives up on this attempt.
    pub deadline: Instant,
    /// The answer, or why there is none.
    pub reply: oneshot::Sender<Result<BatchReply, KvError>>,
}

/// The queues of one client, by node and kind.
#[derive(Default)]
pub(crate) struct Batchers {
    queues: Mutex<HashMap<(String, bool), mpsc::UnboundedSender<Job>>>,
}

impl Batchers {
    /// Queues `job` for `node` (`write` picks the queue), starting that queue's sender task on
    /// `runtime` if it has none. The task ends once this `Batchers` is dropped.
    pub fn submit(&self, runtime: &tokio::runtime::Handle, node: &str, write: bool, job: Job) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let key = (node.to_string(), write);
        let job = match queues.get(&key) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        let in_flight = if write {
            WRITES_IN_FLIGHT
        } else {
            READS_IN_FLIGHT
        };
        runtime.spawn(drain(rx, in_flight));
        queues.insert(key, tx);
    }
}

/// Sends the queue's jobs as batches, `in_flight` at most at once, until the queue closes.
async fn drain(mut rx: mpsc::UnboundedReceiver<Job>, in_flight: usize) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // A slot first: while every batch is out, requests gather for the next one.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        tokio::spawn(async move {
            send(jobs).await;
            drop(slot);
        });
    }
}

/// Sends one batch and hands each job its answer.
async fn send(jobs: Vec<Job>) {
    let now = Instant::now();
    // A job whose requester already gave up is not sent: its attempt may be retried elsewhere.
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| !j.reply.is_closed() && j.deadline > now)
        .collect();
    let Some(latest) = jobs.iter().map(|j| j.deadline).max() else {
        return;
    };
    let timeout = latest
        .saturating_duration_since(now)
        .max(Duration::from_millis(1));
    let router = jobs[0].router.clone();
    let (requests, replies): (Vec<_>, Vec<_>) =
        jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
    let count = requests.len();
    let started = Instant::now();
    let sent = router
        .call(
            |port| RouterMessage::Batch(Wire::new(requests), port),
            Some(timeout),
        )
        .await;
    let failed = |e: KvError| {
        move |reply: oneshot::Sender<Result<BatchReply, KvError>>| {
            let _ = reply.send(Err(e.clone()));
        }
    };
    match sent {
        Ok(CallResult::Success(Wire(Ok(Ok(answers))))) if answers.len() == count => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(CallResult::Success(Wire(Ok(Ok(answers))))) => {
            replies
                .into_iter()
                .for_each(failed(KvError::BadRequest(format!(
                    "the node answered {} of a batch of {count}",
                    answers.len()
                ))))
        }
        Ok(CallResult::Success(Wire(Ok(Err(e))))) => replies.into_iter().for_each(failed(e)),
        Ok(CallResult::Success(Wire(Err(e)))) => {
            replies
                .into_iter()
                .for_each(failed(KvError::BadRequest(format!(
                    "undecodable reply from the node: {e}"
                ))))
        }
        Ok(CallResult::Timeout) => replies.into_iter().for_each(failed(KvError::Timeout)),
        // ractor_cluster races two timers: a dropped reply near the deadline is a timeout.
        Ok(CallResult::SenderError) if started.elapsed() >= timeout.mul_f32(0.9) => {
            replies.into_iter().for_each(failed(KvError::Timeout))
        }
        Ok(CallResult::SenderError) | Err(_) => replies.into_iter().for_each(failed(
            KvError::NotConnected("the connection to the node was lost; outcome unknown".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use ringkv_actors::protocol::{GetReply, GetRequest, PutReply, PutRequest};
    use serde_bytes::ByteBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A router that answers each batch after `delay` (never, with `None`: it holds the
    /// reply until it stops), echoing every key, and counts batches.
    struct Echo;

    type BatchPort = ractor::RpcReplyPort<Wire<Result<Vec<BatchReply>, KvError>>>;

    struct EchoState {
        batches: Arc<AtomicUsize>,
        sizes: Arc<Mutex<Vec<usize>>>,
        delay: Option<Duration>,
        held: Vec<BatchPort>,
    }

    impl Actor for Echo {
        type Msg = RouterMessage;
        type State = EchoState;
        type Arguments = EchoState;

        async fn pre_start(
            &self,
            _: ActorRef<RouterMessage>,
            s: EchoState,
        ) -> Result<EchoState, ActorProcessingErr> {
            Ok(s)
        }

        async fn handle(
            &self,
            _: ActorRef<RouterMessage>,
            msg: RouterMessage,
            s: &mut EchoState,
        ) -> Result<(), ActorProcessingErr> {
            if let RouterMessage::Batch(Wire(Ok(items)), reply) = msg {
                s.batches.fetch_add(1, Ordering::SeqCst);
                s.sizes.lock().unwrap().push(items.len());
                let Some(delay) = s.delay else {
                    s.held.push(reply);
                    return Ok(());
                };
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let answers = items
                        .into_iter()
                        .map(|item| match item {
                            BatchRequest::Get(g) => BatchReply::Get(Ok(GetReply {
                                values: vec![g.key],
                                context: ByteBuf::new(),
                            })),
                            BatchRequest::Put(p) => {
                                BatchReply::Put(Ok(PutReply { context: p.key }))
                            }
                        })
                        .collect();
                    let _ = reply.send(Wire::new(Ok(answers)));
                });
            }
            Ok(())
        }
    }

    async fn echo(
        delay: Option<Duration>,
    ) -> (
        ActorRef<RouterMessage>,
        Arc<AtomicUsize>,
        Arc<Mutex<Vec<usize>>>,
    ) {
        let (batches, sizes) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let state = EchoState {
            batches: batches.clone(),
            sizes: sizes.clone(),
            delay,
            held: Vec::new(),
        };
        let (actor, _) = Actor::spawn(None, Echo, state).await.unwrap();
        (actor, batches, sizes)
    }

    fn get(key: &str) -> BatchRequest {
        BatchRequest::Get(GetRequest {
            key: ByteBuf::from(key.as_bytes().to_vec()),
            r: None,
            timeout_ms: None,
        })
    }

    fn submit(
        b: &Batchers,
        router: &ActorRef<RouterMessage>,
        request: BatchRequest,
        within: Duration,
        write: bool,
    ) -> oneshot::Receiver<Result<BatchReply, KvError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            router: router.clone(),
            deadline: Instant::now() + within,
            reply,
        };
        b.submit(&tokio::runtime::Handle::current(), "n1", write, job);
        rx
    }

    #[tokio::test]
    async fn requests_queued_behind_batches_in_flight_share_one_message_and_get_their_own_answers()
    {
        let (router, batches, sizes) = echo(Some(Duration::from_millis(200))).await;
        let b = Batchers::default();
        let mut rxs = Vec::new();
        // Each of the first requests leaves alone, at once, while a slot is free.
        for i in 0..READS_IN_FLIGHT {
            rxs.push(submit(
                &b,
                &router,
                get(&format!("k{i}")),
                Duration::from_secs(5),
                false,
            ));
            let deadline = Instant::now() + Duration::from_secs(5);
            while batches.load(Ordering::SeqCst) <= i {
                assert!(Instant::now() < deadline, "request {i} was held back");
                tokio::task::yield_now().await;
            }
        }
        // With every slot taken, the rest gather into the next batch.
        for i in READS_IN_FLIGHT..50 {
            rxs.push(submit(
                &b,
                &router,
                get(&format!("k{i}")),
                Duration::from_secs(5),
                false,
            ));
        }
        for (i, rx) in rxs.into_iter().enumerate() {
            match rx.await.unwrap().unwrap() {
                BatchReply::Get(Ok(g)) => assert_eq!(g.values, [format!("k{i}").into_bytes()]),
                other => panic!("{other:?}"),
            }
        }
        let mut expected = vec![1; READS_IN_FLIGHT];
        expected.push(50 - READS_IN_FLIGHT);
        assert_eq!(*sizes.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn reads_and_writes_travel_in_separate_batches() {
        let (router, batches, sizes) = echo(Some(Duration::ZERO)).await;
        let b = Batchers::default();
        let read = submit(&b, &router, get("r"), Duration::from_secs(5), false);
        let put = BatchRequest::Put(PutRequest {
            key: ByteBuf::from(b"w".to_vec()),
            value: Some(ByteBuf::from(b"v".to_vec())),
            context: None,
            w: None,
            timeout_ms: None,
            not_after_ms: None,
        });
        let write = submit(&b, &router, put, Duration::from_secs(5), true);
        assert!(matches!(read.await.unwrap(), Ok(BatchReply::Get(Ok(_)))));
        match write.await.unwrap() {
            Ok(BatchReply::Put(Ok(p))) => assert_eq!(p.context.as_ref(), b"w"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            batches.load(Ordering::SeqCst),
            2,
            "{:?}",
            sizes.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn a_router_that_stops_fails_its_batch_as_lost_and_an_expired_job_is_never_sent() {
        let (router, batches, _) = echo(None).await;
        let b = Batchers::default();
        // Expired before it is sent: the requester moved on, so it must not reach the node.
        let expired = submit(&b, &router, get("late"), Duration::ZERO, false);
        assert!(
            expired.await.is_err(),
            "an expired job is dropped unanswered"
        );
        let pending = submit(&b, &router, get("k"), Duration::from_secs(5), false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while batches.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the batch never reached the router"
            );
            tokio::task::yield_now().await;
        }
        router.stop(None);
        match pending.await.unwrap() {
            Err(KvError::NotConnected(_)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(batches.load(Ordering::SeqCst), 1);
    }
}
