//! Anti-entropy scheduler: walks this node's partitions in turn, so that each is exchanged
//! with its replicas about once per configured interval, one exchange at a time (repairs are
//! background work and must not compete with requests for more than one task's worth of CPU).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;

use crate::context::NodeContext;
use crate::repair::exchange;
use crate::repair::reaper;

/// The anti-entropy scheduler actor.
#[derive(Debug, Default)]
pub struct AaeScheduler;

/// The scheduler's state.
pub struct AaeSchedulerState {
    ctx: Arc<NodeContext>,
    next: usize,
    busy: bool,
}

/// Messages of the scheduler (local only).
#[derive(RactorMessage)]
pub enum AaeSchedulerMessage {
    /// Exchange the next partition unless the previous exchange is still running.
    Tick,
    /// The running exchange ended.
    Done,
}

/// Tells the scheduler its exchange ended when dropped.
struct Finished(ActorRef<AaeSchedulerMessage>);

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.0.cast(AaeSchedulerMessage::Done);
    }
}

impl Actor for AaeScheduler {
    type Msg = AaeSchedulerMessage;
    type State = AaeSchedulerState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<AaeSchedulerMessage>,
        ctx: Arc<NodeContext>,
    ) -> Result<AaeSchedulerState, ActorProcessingErr> {
        let interval = ctx.repair.settings.aae_interval;
        // Paced for the share of partitions a node holds when balanced, whatever it holds now.
        let placement = ctx.ring.load();
        let share = (placement.partitions() as usize * placement.replicas())
            .div_ceil(placement.ring.members().len().max(1))
            .max(1);
        if !interval.is_zero() {
            let every = (interval / share as u32).max(Duration::from_millis(10));
            myself.send_interval(every, || AaeSchedulerMessage::Tick);
        }
        Ok(AaeSchedulerState {
            ctx,
            next: 0,
            busy: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AaeSchedulerMessage>,
        message: AaeSchedulerMessage,
        state: &mut AaeSchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AaeSchedulerMessage::Tick if !state.busy => {
                let partitions = state.ctx.ring.load().ring.partitions_of(&state.ctx.node_id);
                if partitions.is_empty() {
                    return Ok(());
                }
                let partition = partitions[state.next % partitions.len()];
                state.next += 1;
                let partners = exchange::partners(&state.ctx, partition);
                state.busy = true;
                let ctx = state.ctx.clone();
                tokio::spawn(async move {
                    // Reports the end even if the exchange panics, or the scheduler would stay
                    // busy for good.
                    let _done = Finished(myself);
                    let (chunk, rate) = (
                        ctx.repair.settings.chunk_keys,
                        ctx.repair.settings.aae_keys_per_sec,
                    );
                    for peer in partners {
                        match exchange::exchange(&ctx, partition, &peer, chunk, rate).await {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::info!(partition, %peer, keys = n, "anti-entropy repaired keys")
                            }
                            Err(e) => {
                                tracing::debug!(partition, %peer, error = %e, "anti-entropy exchange failed")
                            }
                        }
                    }
                    match reaper::reap_partition(&ctx, partition).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(partition, tombstones = n, "tombstones reaped"),
                        Err(e) => {
                            tracing::debug!(partition, error = %e, "tombstone reaping failed")
                        }
                    }
                });
            }
            AaeSchedulerMessage::Tick => {}
            AaeSchedulerMessage::Done => state.busy = false,
        }
        Ok(())
    }
}
