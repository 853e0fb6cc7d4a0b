//! Admin: answers operators, the console and tests about this node (pg group
//! `ringkv.admin.<node>`).

use std::sync::Arc;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::context::NodeContext;
use crate::membership::actor::{MembershipMessage, NAME};
use crate::node::resources::ResourceSampler;
use crate::protocol::{
    AaePartition, AaeView, AdminMessage, KvError, NodeStats, NodeStatus, RingView, VnodeHealth,
    Wire,
};
use crate::repair::exchange;
use crate::vnode::VnodeMessage;

/// The admin actor.
#[derive(Debug, Default)]
pub struct Admin;

/// What the admin actor is started with.
pub struct AdminArgs {
    /// The node's coordination context.
    pub ctx: Arc<NodeContext>,
    /// `sync` or `buffered`.
    pub durability: String,
    /// Reads the process's CPU, memory and disk use for `Stats`.
    pub resources: ResourceSampler,
}

impl Actor for Admin {
    type Msg = AdminMessage;
    type State = AdminArgs;
    type Arguments = AdminArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AdminMessage>,
        args: AdminArgs,
    ) -> Result<AdminArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AdminMessage>,
        message: AdminMessage,
        state: &mut AdminArgs,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &state.ctx;
        match message {
            AdminMessage::Status(_, reply) => {
                let placement = ctx.ring.load();
                let _ = reply.send(Wire::new(NodeStatus {
                    node: ctx.node_id.clone(),
                    partitions: placement.partitions(),
                    vnodes: ctx.table.report(),
                    durability: state.durability.clone(),
                    ring_version: placement.epoch,
                    ring_hash: ctx.ring.hash(),
                    ring_agreed: ctx.peers.ring_agreed(ctx.ring.hash()),
                    stage: placement.stage.to_string(),
                    hints_waiting: ctx.hints.len().unwrap_or(0),
                    hints_delivered: ctx
                        .repair
                        .hints_delivered
                        .load(std::sync::atomic::Ordering::Relaxed),
                    pid: std::process::id(),
                }));
            }
            AdminMessage::Aae(_, reply) => {
                let partitions = ctx
                    .table
                    .local()
                    .into_iter()
                    .map(|p| AaePartition {
                        root: ctx.table.tree(p).map(|t| t.root()),
                        ..ctx.repair.aae.of(p)
                    })
                    .collect();
                let _ = reply.send(Wire::new(AaeView {
                    node: ctx.node_id.clone(),
                    partitions,
                }));
            }
            AdminMessage::AaeRun(_, reply) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let (chunk, rate) = (
                        ctx.repair.settings.chunk_keys,
                        ctx.repair.settings.aae_keys_per_sec,
                    );
                    let r = exchange::round(&ctx, chunk, rate).await;
                    let _ = reply.send(Wire::new(r));
                });
            }
            AdminMessage::Members(_, reply) => {
                let _ = reply.send(Wire::new(ctx.peers.view()));
            }
            AdminMessage::Ring(_, reply) => {
                let placement = ctx.ring.load();
                let ring = &placement.ring;
                let _ = reply.send(Wire::new(RingView {
                    version: placement.epoch,
                    stage: placement.stage.to_string(),
                    members: placement.members.clone(),
                    read_lists: (0..ring.partitions())
                        .map(|p| placement.read_set(p).to_vec())
                        .collect(),
                    partitions: ring.partitions(),
                    replicas: ring.replicas(),
                    preference_lists: (0..ring.partitions())
                        .map(|p| ring.preference_list(p).to_vec())
                        .collect(),
                }));
            }
            AdminMessage::Membership(Wire(req), reply) => match req {
                Err(e) => {
                    let _ = reply.send(Wire::new(Err(KvError::BadRequest(e.to_string()))));
                }
                Ok((req, forwarded)) => {
                    let Some(cell) = ractor::registry::where_is(NAME) else {
                        let _ = reply.send(Wire::new(Err(KvError::Membership(
                            "membership is not running on this node".into(),
                        ))));
                        return Ok(());
                    };
                    let membership = ActorRef::<MembershipMessage>::from(cell);
                    // A commit waits for votes: off this mailbox.
                    tokio::spawn(async move {
                        let r = match membership
                            .call(
                                |port| MembershipMessage::Request(req, forwarded, port),
                                Some(Duration::from_secs(60)),
                            )
                            .await
                        {
                            Ok(CallResult::Success(r)) => r,
                            _ => Err(KvError::Timeout),
                        };
                        let _ = reply.send(Wire::new(r));
                    });
                }
            },
            AdminMessage::Transfers(_, reply) => {
                let _ = reply.send(Wire::new(ctx.transfers.board.lines()));
            }
            AdminMessage::Stats(_, reply) => {
                let (ops_per_sec, p99_ms) = ctx.stats.summary();
                let vnodes = ctx
                    .table
                    .report()
                    .iter()
                    .filter(|v| v.health == VnodeHealth::Serving)
                    .count();
                let usage = state.resources.sample(ctx.stats.refused_total());
                let _ = reply.send(Wire::new(NodeStats {
                    node: ctx.node_id.clone(),
                    ops_per_sec,
                    p99_ms,
                    vnodes,
                    mailbox_depth: ctx.table.mailbox_depth(),
                    in_flight: ctx.stats.in_flight(),
                    cpu_pct: usage.cpu_pct,
                    mem_pct: usage.mem_pct,
                    disk_pct: usage.disk_pct,
                    overloaded_per_sec: usage.refused_per_sec,
                }));
            }
            AdminMessage::CrashVnode(Wire(request), reply) => {
                let result = match request {
                    Err(e) => Err(KvError::BadRequest(e.to_string())),
                    Ok(req) => match ctx.table.vnode(req.partition) {
                        Some(v) => v
                            .cast(VnodeMessage::Crash)
                            .map_err(|_| KvError::Unavailable { needed: 1, got: 0 }),
                        None => Err(KvError::BadRequest(format!(
                            "partition {} has no serving vnode on this node",
                            req.partition
                        ))),
                    },
                };
                let _ = reply.send(Wire::new(result));
            }
        }
        Ok(())
    }
}
