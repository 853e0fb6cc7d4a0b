//! Admin: answers operators and tests about this node (pg group `ringkv.admin.<node>`).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::actors::vnode::VnodeMessage;
use crate::partition_table::PartitionTable;
use crate::protocol::{AdminMessage, KvError, NodeStatus, Wire};

/// The admin actor.
#[derive(Debug, Default)]
pub struct Admin;

/// What the admin actor is started with.
pub struct AdminArgs {
    /// This node's id.
    pub node_id: String,
    /// Ring size Q.
    pub partitions: u32,
    /// `sync` or `buffered`.
    pub durability: String,
    /// Local partitions and their vnodes.
    pub table: Arc<PartitionTable>,
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
        match message {
            AdminMessage::Status(_, reply) => {
                let _ = reply.send(Wire::new(NodeStatus {
                    node: state.node_id.clone(),
                    partitions: state.partitions,
                    vnodes: state.table.report(),
                    durability: state.durability.clone(),
                }));
            }
            AdminMessage::CrashVnode(Wire(request), reply) => {
                let result = match request {
                    Err(e) => Err(KvError::BadRequest(e.to_string())),
                    Ok(req) => match state.table.vnode(req.partition) {
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
