//! Handoff: hands the hints this node keeps as a fallback back to their owners once those are
//! up again, in chunks, throttled, and drops each hint once its owner has it durably.
//!
//! Resumable by construction: a hint leaves the file only after its owner acknowledged it (and
//! only if no newer write for the key arrived meanwhile), so a crash or a failed chunk just
//! means the next round sends it again; a repeated delivery is a harmless merge.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use serde_bytes::ByteBuf;

use crate::context::NodeContext;
use crate::protocol::ReplicaWrite;
use crate::storage::hint_store::Hint;

/// The handoff actor.
#[derive(Debug, Default)]
pub struct Handoff;

/// What the handoff actor is started with.
pub struct HandoffArgs {
    /// The node's coordination context (peers, links, the hint file).
    pub ctx: Arc<NodeContext>,
    /// How often waiting hints are looked at.
    pub interval: Duration,
    /// Hints per chunk.
    pub chunk: usize,
    /// Most hints handed back per second.
    pub keys_per_sec: u32,
}

/// The handoff actor's state.
pub struct HandoffState {
    args: HandoffArgs,
    busy: HashSet<String>,
}

/// Messages of the handoff actor (local only).
#[derive(RactorMessage)]
pub enum HandoffMessage {
    /// Look for owners that are up and have hints waiting.
    Tick,
    /// A handoff to this owner ended (done, or stopped by an error; the next tick resumes).
    Finished(String),
}

impl Actor for Handoff {
    type Msg = HandoffMessage;
    type State = HandoffState;
    type Arguments = HandoffArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HandoffMessage>,
        args: HandoffArgs,
    ) -> Result<HandoffState, ActorProcessingErr> {
        myself.send_interval(args.interval, || HandoffMessage::Tick);
        Ok(HandoffState {
            args,
            busy: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HandoffMessage>,
        message: HandoffMessage,
        state: &mut HandoffState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HandoffMessage::Tick => {
                let store = state.args.ctx.hints.clone();
                let owners = match tokio::task::spawn_blocking(move || store.owners()).await? {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list hints");
                        return Ok(());
                    }
                };
                for (owner, waiting) in owners {
                    if state.busy.contains(&owner) || !state.args.ctx.peers.is_up(&owner) {
                        continue;
                    }
                    tracing::info!(%owner, waiting, "handing hints back");
                    state.busy.insert(owner.clone());
                    let job = Job {
                        ctx: state.args.ctx.clone(),
                        owner: owner.clone(),
                        chunk: state.args.chunk,
                        keys_per_sec: state.args.keys_per_sec,
                    };
                    let me = myself.clone();
                    tokio::spawn(async move {
                        job.run().await;
                        let _ = me.cast(HandoffMessage::Finished(owner));
                    });
                }
            }
            HandoffMessage::Finished(owner) => {
                state.busy.remove(&owner);
            }
        }
        Ok(())
    }
}

/// One owner's handoff.
struct Job {
    ctx: Arc<NodeContext>,
    owner: String,
    chunk: usize,
    keys_per_sec: u32,
}

impl Job {
    /// One pass over the owner's hints, in chunks: each chunk starts after the previous one,
    /// so hints that fail (say, for a partition whose vnode is stopped on the owner) are
    /// skipped rather than blocking every hint behind them; they are retried next pass. The
    /// pass ends early when the owner goes down or a whole chunk fails.
    async fn run(self) {
        let Some(link) = self.ctx.links.get(&self.owner) else {
            return;
        };
        let started = Instant::now();
        let mut moved: u64 = 0;
        let mut cursor: Option<(u32, Vec<u8>)> = None;
        while self.ctx.peers.is_up(&self.owner) {
            let (store, owner, chunk) = (self.ctx.hints.clone(), self.owner.clone(), self.chunk);
            let after = cursor.clone();
            let hints = match tokio::task::spawn_blocking(move || {
                store.chunk(&owner, after.as_ref(), chunk)
            })
            .await
            {
                Ok(Ok(h)) if !h.is_empty() => h,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(owner = %self.owner, error = %e, "cannot read hints");
                    break;
                }
                Err(_) => break,
            };
            cursor = hints.last().map(|h| (h.partition, h.key.clone()));
            let deadline = Instant::now() + self.ctx.policy.default_timeout;
            let sends = hints.iter().map(|h| {
                link.write(
                    ReplicaWrite {
                        partition: h.partition,
                        key: ByteBuf::from(h.key.clone()),
                        object: ByteBuf::from(h.object.clone()),
                        hint_for: None,
                    },
                    deadline,
                )
            });
            let results = futures::future::join_all(sends).await;
            let none_ok = results.iter().all(Result::is_err);
            let done: Vec<Hint> = hints
                .into_iter()
                .zip(results)
                .filter_map(|(h, r)| r.is_ok().then_some(h))
                .collect();
            let n = done.len() as u64;
            let store = self.ctx.hints.clone();
            match tokio::task::spawn_blocking(move || store.remove_delivered(&done)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(owner = %self.owner, error = %e, "cannot drop delivered hints");
                    break;
                }
                Err(_) => break,
            }
            moved += n;
            self.ctx
                .repair
                .hints_delivered
                .fetch_add(n, Ordering::Relaxed);
            if none_ok {
                break;
            }
            // Throttle: this chunk's share of a second at the configured rate.
            let due = Duration::from_secs_f64(moved as f64 / f64::from(self.keys_per_sec));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if moved > 0 {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                owner = %self.owner,
                hints = moved,
                keys_per_sec = (moved as f64 / secs.max(1e-3)) as u64,
                "hints handed back"
            );
        }
    }
}
