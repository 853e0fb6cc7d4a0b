//! Replica: a node's peer-facing actor (pg group `ringkv.replica.<node>`). Serves replica reads
//! and merges for the coordinators of other nodes, coordinates writes forwarded to it, and
//! answers failure-detector heartbeats with this node's ring view.

use std::sync::Arc;

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_bytes::ByteBuf;

use crate::context::NodeContext;
use crate::coordinator;
use crate::membership::{self, transfer};
use crate::partition_table::PeerCopy;
use crate::protocol::{
    Heartbeat, KvError, ReadAnswer, ReplicaMessage, ReplicaObject, ReplicaRead, ReplicaWrite, Wire,
    WriteAnswer,
};
use crate::repair::exchange;
use crate::repair::reaper;
use crate::replica_io;
use crate::storage::hint_store::Hint;

/// The replica actor.
#[derive(Debug, Default)]
pub struct Replica;

/// What the replica actor is started with.
pub struct ReplicaArgs {
    /// The node's coordination context.
    pub ctx: Arc<NodeContext>,
}

fn malformed(what: &str, e: impl std::fmt::Display) -> KvError {
    tracing::warn!(request = what, error = %e, "dropped a malformed replica message");
    KvError::BadRequest(format!("malformed {what} message: {e}"))
}

impl Actor for Replica {
    type Msg = ReplicaMessage;
    type State = ReplicaArgs;
    type Arguments = ReplicaArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ReplicaMessage>,
        args: ReplicaArgs,
    ) -> Result<ReplicaArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ReplicaMessage>,
        message: ReplicaMessage,
        state: &mut ReplicaArgs,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = state.ctx.clone();
        ctx.metrics.replica(kind(&message));
        match message {
            ReplicaMessage::Heartbeat(Wire(beat), reply) => {
                let placement = ctx.ring.load();
                if let Ok(b) = beat {
                    ctx.peers.set_ring(&b.from, b.ring_version, b.ring_hash);
                    if b.ring_version > placement.epoch {
                        membership::observed(&b.from, b.ring_version);
                    }
                }
                let _ = reply.send(Wire::new(Heartbeat {
                    from: ctx.node_id.clone(),
                    ring_version: placement.epoch,
                    ring_hash: ctx.ring.hash(),
                }));
            }
            ReplicaMessage::ReadAsk(Wire(req)) => match req {
                Ok(ask) => {
                    let results = match stale(&ctx, &ask.from, ask.epoch) {
                        Some(e) => vec![Err(e); ask.reads.len()],
                        None => ask.reads.iter().map(|r| read_local(&ctx, r)).collect(),
                    };
                    let answer = ReadAnswer {
                        from: ctx.node_id.clone(),
                        batch: ask.batch,
                        results,
                    };
                    answer_to(
                        &ctx,
                        &ask.from,
                        ReplicaMessage::ReadAnswer(Wire::new(answer)),
                    );
                }
                // Undecodable: the asker's batch expires at its deadline.
                Err(e) => drop(malformed("read ask", e)),
            },
            ReplicaMessage::ReadAnswer(Wire(answer)) => match answer {
                Ok(a) => {
                    if let Some(link) = ctx.links.get(&a.from) {
                        link.answered_reads(a.batch, a.results);
                    }
                }
                Err(e) => drop(malformed("read answer", e)),
            },
            ReplicaMessage::WriteAsk(Wire(req)) => match req {
                // Merges wait for the vnodes' durable commits: never block this mailbox.
                Ok(ask) => {
                    if let Some(e) = stale(&ctx, &ask.from, ask.epoch) {
                        let answer = WriteAnswer {
                            from: ctx.node_id.clone(),
                            batch: ask.batch,
                            results: vec![Err(e); ask.writes.len()],
                        };
                        answer_to(
                            &ctx,
                            &ask.from,
                            ReplicaMessage::WriteAnswer(Wire::new(answer)),
                        );
                        return Ok(());
                    }
                    tokio::spawn(async move {
                        let deadline = std::time::Instant::now() + ctx.policy.default_timeout;
                        let results = apply_writes(&ctx, ask.writes, deadline).await;
                        let answer = WriteAnswer {
                            from: ctx.node_id.clone(),
                            batch: ask.batch,
                            results,
                        };
                        let answer = ReplicaMessage::WriteAnswer(Wire::new(answer));
                        answer_to(&ctx, &ask.from, answer);
                    });
                }
                // Undecodable: the asker's batch expires at its deadline.
                Err(e) => drop(malformed("write ask", e)),
            },
            ReplicaMessage::WriteAnswer(Wire(answer)) => match answer {
                Ok(a) => {
                    if let Some(link) = ctx.links.get(&a.from) {
                        link.answered_writes(a.batch, a.results);
                    }
                }
                Err(e) => drop(malformed("write answer", e)),
            },
            ReplicaMessage::AaeTree(Wire(req), reply) => {
                let r = req
                    .map_err(|e| malformed("merkle tree", e))
                    .and_then(|r| exchange::answer_tree(&ctx, &r));
                let _ = reply.send(Wire::new(r));
            }
            ReplicaMessage::AaeKeys(Wire(req), reply) => match req {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(malformed("key listing", e))));
                }
                // Listing scans the vnode's file: off this mailbox.
                Ok(req) => {
                    tokio::spawn(async move {
                        let r = exchange::answer_keys(&ctx, req).await;
                        let _ = reply.send(Wire::new(r));
                    });
                }
            },
            ReplicaMessage::HintsFor(Wire(req), reply) => {
                let r = match req {
                    Err(e) => Err(malformed("hint query", e)),
                    Ok(q) => ctx
                        .hints
                        .count_for_partition(q.partition)
                        .map_err(|e| KvError::Storage(e.to_string())),
                };
                let _ = reply.send(Wire::new(r));
            }
            ReplicaMessage::Reap(Wire(req), reply) => match req {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(malformed("reap", e))));
                }
                Ok(req) => {
                    tokio::spawn(async move {
                        let r = reaper::reap_local(&ctx, req).await;
                        let _ = reply.send(Wire::new(r));
                    });
                }
            },
            ReplicaMessage::FetchPlacement(_, reply) => {
                let _ = reply.send(Wire::new((*ctx.ring.load()).clone()));
            }
            ReplicaMessage::StorePlacement(Wire(req), reply) => match req {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(malformed("store placement", e))));
                }
                Ok(p) => {
                    tokio::spawn(async move {
                        let cell = ctx.ring.clone();
                        let r = tokio::task::spawn_blocking(move || cell.store_proposal(&p))
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r)
                            .map_err(KvError::Membership);
                        let _ = reply.send(Wire::new(r));
                    });
                }
            },
            ReplicaMessage::AdoptPlacement(Wire(req)) => match req {
                Ok(p) => membership::adopt(p),
                Err(e) => drop(malformed("adopt placement", e)),
            },
            ReplicaMessage::TransferChunk(Wire(req), reply) => match req {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(malformed("transfer chunk", e))));
                }
                Ok(req) => {
                    tokio::spawn(async move {
                        let r = transfer::answer_chunk(&ctx, req).await;
                        let _ = reply.send(Wire::new(r));
                    });
                }
            },
            ReplicaMessage::TransferDone(Wire(req)) => match req {
                Ok(r) => membership::transfer_done(r),
                Err(e) => drop(malformed("transfer done", e)),
            },
            ReplicaMessage::Coordinate(Wire(req), reply) => match req {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(malformed("coordinate", e))));
                }
                Ok(put) => {
                    tokio::spawn(async move {
                        let r = coordinator::put(ctx, put, false).await;
                        let _ = reply.send(Wire::new(r));
                    });
                }
            },
        }
        Ok(())
    }
}

/// The error a replica message from `from` at `epoch` gets when this node is at a newer
/// epoch: the coordinator routed it under a placement that may no longer hold (a node waiting
/// for its join is at epoch 0). When the asker is newer, this node catches up.
fn stale(ctx: &NodeContext, from: &str, epoch: u64) -> Option<KvError> {
    let mine = ctx.ring.epoch();
    if epoch > mine {
        membership::observed(from, epoch);
    }
    (epoch < mine).then_some(KvError::StaleRing { epoch: mine })
}

/// Casts an answer back to the asking node. An asker that cannot be reached lets its batch
/// expire at its deadline (it has a sweep for exactly that).
fn answer_to(ctx: &NodeContext, asker: &str, answer: ReplicaMessage) {
    let sent = ctx
        .peers
        .replica(asker)
        .is_some_and(|r| r.cast(answer).is_ok());
    if !sent {
        tracing::warn!(%asker, "could not answer a peer's batch; it will time out there");
    }
}

/// This node's stored object for a replica read.
fn read_local(ctx: &NodeContext, r: &ReplicaRead) -> Result<ReplicaObject, KvError> {
    Ok(
        match ctx.table.read_for_peer(r.partition, &r.key, r.unless)? {
            PeerCopy::Same => ReplicaObject {
                object: None,
                same: true,
            },
            PeerCopy::Differs(object) => ReplicaObject {
                object: object.map(ByteBuf::from),
                same: false,
            },
        },
    )
}

/// Applies a batch of replica writes: merges into local vnodes, and hints (for a down replica
/// this node stands in for) into the hint file in one durable commit. Results in batch order.
async fn apply_writes(
    ctx: &NodeContext,
    writes: Vec<ReplicaWrite>,
    deadline: std::time::Instant,
) -> Vec<Result<(), KvError>> {
    let mut hints = Vec::new();
    let mut hint_slots = Vec::new();
    let mut merges = Vec::new();
    let mut refused = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        match &w.hint_for {
            Some(owner) => {
                hint_slots.push(i);
                hints.push(Hint {
                    owner: owner.clone(),
                    partition: w.partition,
                    key: w.key.to_vec(),
                    object: w.object.to_vec(),
                });
            }
            None => match replica_io::start_merge(ctx, w.partition, &w.key, &w.object) {
                Ok(merged) => merges.push((i, merged)),
                Err(e) => refused.push((i, Err(e))),
            },
        }
    }
    let mut results: Vec<Result<(), KvError>> = vec![Ok(()); writes.len()];
    let stored = async {
        if hints.is_empty() {
            Vec::new()
        } else {
            replica_io::store_hints(ctx, hints).await
        }
    };
    let (slots, futures): (Vec<usize>, Vec<_>) = merges.into_iter().unzip();
    // One timer for the batch: merges still pending at the deadline all report a timeout.
    let merged = async {
        match tokio::time::timeout(replica_io::remaining(deadline), join_all(futures)).await {
            Ok(merged) => merged,
            Err(_) => vec![Err(KvError::Timeout); slots.len()],
        }
    };
    let (merged, stored) = futures::join!(merged, stored);
    for (i, r) in slots.into_iter().zip(merged).chain(refused) {
        results[i] = r;
    }
    for (i, r) in hint_slots.into_iter().zip(stored) {
        results[i] = r;
    }
    results
}

/// The `kind` label of a replica message in `ringkv_replica_messages_received_total`.
fn kind(m: &ReplicaMessage) -> &'static str {
    match m {
        ReplicaMessage::ReadAsk(..) | ReplicaMessage::ReadAnswer(..) => "read",
        ReplicaMessage::WriteAsk(..) | ReplicaMessage::WriteAnswer(..) => "write",
        ReplicaMessage::Coordinate(..) => "coordinate",
        ReplicaMessage::Heartbeat(..) => "heartbeat",
        ReplicaMessage::AaeTree(..) | ReplicaMessage::AaeKeys(..) | ReplicaMessage::Reap(..) => {
            "anti_entropy"
        }
        ReplicaMessage::HintsFor(..) => "hints",
        ReplicaMessage::FetchPlacement(..)
        | ReplicaMessage::StorePlacement(..)
        | ReplicaMessage::AdoptPlacement(..) => "placement",
        ReplicaMessage::TransferChunk(..) | ReplicaMessage::TransferDone(..) => "transfer",
    }
}
