//! NodeSupervisor: the root of a node. Opens the commit log, replays it into the vnodes,
//! starts the vnode supervisor, the routers, the admin actor and the cluster listener, and
//! shuts them down in an order that loses no acknowledged write.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::{NodeServer, NodeServerMessage, RactorMessage};

use crate::context::{NodeContext, RepairState, RequestPolicy, Transfers};
use crate::core::placement::{MemberAddr, Placement};
use crate::core::ring::Ring;
use crate::gateway::admin::{Admin, AdminArgs};
use crate::gateway::client::Router;
use crate::gateway::peer::{Replica, ReplicaArgs};
use crate::membership::actor::{Membership, MembershipArgs, MembershipMessage, NAME as MEMBERSHIP};
use crate::membership::links::{Cluster, ClusterArgs, ClusterMessage};
use crate::membership::ring_cell::RingCell;
use crate::partition_table::PartitionTable;
use crate::peer_link::PeerLink;
use crate::peer_table::PeerTable;
use crate::protocol::{ReplicaMessage, RouterMessage, admin_group, replica_group, router_group};
use crate::repair::aae::{AaeScheduler, AaeSchedulerMessage};
use crate::repair::hints::{Handoff, HandoffArgs, HandoffMessage};
use crate::request_stats::RequestStats;
use crate::settings::NodeSettings;
use crate::storage::commit_log::{CommitLog, LogDurability};
use crate::storage::disk_guard::DiskGuard;
use crate::storage::dot_sequence::DotSequence;
use crate::storage::hint_store::HintStore;
use crate::storage::incarnation::Incarnation;
use crate::storage::log_record::read_entries;
use crate::storage::vnode_store::EncodedPairs;
use crate::vnode::VnodeMessage;
use crate::vnode::supervisor::{VnodeSupervisor, VnodeSupervisorArgs, VnodeSupervisorMessage};

/// Messages the node supervisor accepts (local only).
#[derive(RactorMessage)]
pub enum NodeSupervisorMessage {
    /// The commit log writer stopped on an I/O error: no write can be made durable any more.
    LogStopped,
    /// Stop accepting requests, make every acknowledged write durable, stop every child.
    Shutdown(RpcReplyPort<()>),
}

/// The node supervisor actor.
#[derive(Debug, Default)]
pub struct NodeSupervisor;

/// The node supervisor's state.
pub struct NodeSupervisorState {
    settings: NodeSettings,
    ctx: Arc<NodeContext>,
    table: Arc<PartitionTable>,
    log: CommitLog,
    log_thread: Option<JoinHandle<()>>,
    vnodes: ActorRef<VnodeSupervisorMessage>,
    routers: Vec<ActorRef<RouterMessage>>,
    server: ActorRef<NodeServerMessage>,
    /// Accepts connections on the member address; `None` once shutting down.
    accept: Option<crate::transport::Accepting>,
    /// The Redis-protocol listener, when on; aborted at shutdown.
    resp: Option<tokio::task::JoinHandle<()>>,
    /// The metrics listener, when on; aborted at shutdown.
    metrics: Option<tokio::task::JoinHandle<()>>,
    admin: ActorRef<crate::protocol::AdminMessage>,
    replica: ActorRef<ReplicaMessage>,
    cluster: ActorRef<ClusterMessage>,
    membership: ActorRef<MembershipMessage>,
    handoff: ActorRef<HandoffMessage>,
    aae: ActorRef<AaeSchedulerMessage>,
    stopping: bool,
}

impl NodeSupervisorState {
    async fn spawn_router(
        &mut self,
        myself: &ActorRef<NodeSupervisorMessage>,
    ) -> Result<(), ActorProcessingErr> {
        let (router, _) =
            Actor::spawn_linked(None, Router, self.ctx.clone(), myself.get_cell()).await?;
        ractor::pg::join(
            router_group(&self.settings.node_id),
            vec![router.get_cell()],
        );
        self.routers.push(router);
        Ok(())
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMessage;
    type State = NodeSupervisorState;
    type Arguments = NodeSettings;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeSupervisorMessage>,
        settings: NodeSettings,
    ) -> Result<NodeSupervisorState, ActorProcessingErr> {
        std::fs::create_dir_all(&settings.node_dir)?;
        let ids: Vec<String> = settings.members.iter().map(|m| m.id.clone()).collect();
        let seed_ring = Ring::new(&ids, settings.partitions, settings.replicas)?;
        let seed_members: Vec<MemberAddr> = settings
            .members
            .iter()
            .map(|m| MemberAddr {
                id: m.id.clone(),
                addr: m.addr.to_string(),
            })
            .collect();
        let joining = settings.join.is_some();
        // The configuration seeds the placement once; after that the node's own copy rules. A
        // node that joins seeds epoch 0 (outranked by any committed placement) and holds nothing
        // until a placement names it.
        let ring = Arc::new(RingCell::open(&settings.node_dir, || {
            let mut p = Placement::seed(seed_members, seed_ring);
            if joining {
                p.epoch = 0;
            }
            p
        })?);
        let placement = ring.load();
        if placement.partitions() != settings.partitions
            || placement.replicas() != settings.replicas
        {
            return Err(format!(
                "this node's data was made with partitions = {} and replicas = {}; the configuration says {} and {}",
                placement.partitions(),
                placement.replicas(),
                settings.partitions,
                settings.replicas
            )
            .into());
        }
        let local = if placement.epoch == 0 {
            Vec::new()
        } else {
            placement.hosted_by(&settings.node_id)
        };
        let table = Arc::new(PartitionTable::new(settings.partitions, &local));

        let dots = Arc::new(DotSequence::open(&settings.node_dir.join("dot-sequence"))?);
        let incarnation = Arc::new(Incarnation::start(&settings.node_dir.join("incarnation"))?);
        let log_dir = settings.node_dir.join("commitlog");
        let (log, sealed, log_thread) = CommitLog::open(
            &log_dir,
            settings.durability,
            settings.log_segment_bytes,
            settings.group_commit_window,
        )?;
        let recovered = tokio::task::block_in_place(|| read_entries(&log_dir, None))?;
        if !recovered.is_empty() {
            tracing::info!(entries = recovered.len(), "replaying commit log");
        }
        let mut replay: HashMap<u32, EncodedPairs> = HashMap::new();
        for e in recovered {
            replay
                .entry(e.partition)
                .or_default()
                .push((e.key, e.object));
        }

        let disk = DiskGuard::watch(&settings.node_dir, settings.min_free_bytes)?;
        let vnode_args = VnodeSupervisorArgs {
            node_id: settings.node_id.clone(),
            node_dir: settings.node_dir.clone(),
            partitions: local.clone(),
            cache_bytes: settings.vnode_cache_bytes,
            // Shared out over the partitions a balanced member holds, however many it holds now.
            object_cache_bytes: settings.object_cache_bytes
                / (settings.partitions as usize * settings.replicas)
                    .div_ceil(placement.ring.members().len().max(1))
                    .max(1),
            log: log.clone(),
            dots,
            durability: settings.durability,
            conflict: settings.conflict,
            batch_max_writes: settings.batch_max_writes,
            batch_max_bytes: settings.batch_max_bytes,
            budget: settings.vnode_restarts,
            replicas: settings.replicas,
            incarnation,
            table: table.clone(),
            disk: disk.clone(),
            replay,
        };
        let (vnodes, _) =
            Actor::spawn_linked(None, VnodeSupervisor, vnode_args, myself.get_cell()).await?;
        let (sealed_to, me) = (vnodes.clone(), myself.clone());
        // The writer thread reports sealed segments on a blocking channel; relay them. The
        // channel closes when the writer exits, which outside shutdown means it failed.
        std::thread::Builder::new()
            .name("log-sealed".into())
            .spawn(move || {
                while let Ok(id) = sealed.recv() {
                    let _ = sealed_to.cast(VnodeSupervisorMessage::SegmentSealed(id));
                }
                let _ = me.cast(NodeSupervisorMessage::LogStopped);
            })?;

        // A small cache: hints are written once and read back once, in key order.
        let hints = Arc::new(HintStore::open(
            &settings.node_dir.join("hints.redb"),
            4 << 20,
            settings.conflict,
        )?);
        let members: Vec<(String, String)> = placement
            .members
            .iter()
            .map(|m| (m.id.clone(), m.addr.clone()))
            .collect();
        let peers = Arc::new(PeerTable::new(
            &settings.node_id,
            &members,
            settings.max_in_flight_per_peer,
        ));
        let ctx = Arc::new(NodeContext {
            node_id: settings.node_id.clone(),
            ring: ring.clone(),
            table: table.clone(),
            peers: peers.clone(),
            links: Default::default(),
            hints: hints.clone(),
            disk,
            policy: RequestPolicy {
                limits: settings.limits,
                conflict: settings.conflict,
                default_r: settings.default_r,
                default_w: settings.default_w,
                default_timeout: settings.request_timeout,
                max_coordinating: settings.max_coordinating,
                read_repair_chance: settings.read_repair_chance,
                speculative_read_after: settings.speculative_read_after,
                sloppy_quorum: settings.repair.sloppy_quorum,
            },
            stats: RequestStats::default(),
            metrics: Default::default(),
            repair: RepairState::new(settings.repair),
            transfers: Transfers::new(settings.transfer),
        });
        for (id, _) in members.iter().filter(|(id, _)| *id != settings.node_id) {
            ctx.links.ensure(id, || {
                PeerLink::start(&settings.node_id, id, peers.clone(), ring.clone())
            });
        }
        let replica_args = ReplicaArgs { ctx: ctx.clone() };
        let (replica, _) =
            Actor::spawn_linked(None, Replica, replica_args, myself.get_cell()).await?;
        ractor::pg::join(replica_group(&settings.node_id), vec![replica.get_cell()]);
        let admin_args = AdminArgs {
            ctx: ctx.clone(),
            durability: match settings.durability {
                LogDurability::Sync => "sync".into(),
                LogDurability::Buffered(_) => "buffered".into(),
            },
            resources: crate::node::resources::ResourceSampler::new(&settings.node_dir),
        };
        let (admin, _) = Actor::spawn_linked(None, Admin, admin_args, myself.get_cell()).await?;
        let handoff_args = HandoffArgs {
            ctx: ctx.clone(),
            interval: settings.repair.handoff_interval,
            chunk: settings.repair.chunk_keys,
            keys_per_sec: settings.repair.handoff_keys_per_sec,
        };
        let (handoff, _) =
            Actor::spawn_linked(None, Handoff, handoff_args, myself.get_cell()).await?;
        let (aae, _) =
            Actor::spawn_linked(None, AaeScheduler, ctx.clone(), myself.get_cell()).await?;
        ractor::pg::join(admin_group(&settings.node_id), vec![admin.get_cell()]);

        let me_addr = settings.addr;
        // The member address is accepted on here, not by the node server, so that sessions
        // read through a buffer (see `transport`); the server's own listener takes an unused
        // ephemeral port.
        let listener = tokio::net::TcpListener::bind(me_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", me_addr))?;
        let server = NodeServer::new(
            0,
            settings.cookie.clone(),
            settings.node_id.clone(),
            me_addr.ip().to_string(),
            settings.transport.node_server_mode(),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(me_addr.ip());
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        if let Some(check) = settings.transport.identity_check() {
            server.cast(ractor_cluster::NodeServerMessage::SubscribeToEvents {
                id: "ringkv-tls-identity".into(),
                subscription: check,
            })?;
        }
        let accept = Some(settings.transport.accept(listener, server.clone()));
        let cluster_args = ClusterArgs {
            node_id: settings.node_id.clone(),
            local_ip: me_addr.ip(),
            peers: members
                .iter()
                .filter(|(id, _)| *id != settings.node_id)
                .filter_map(|(id, a)| a.parse().ok().map(|a| (id.clone(), a)))
                .collect(),
            server: server.clone(),
            table: peers,
            heartbeat: settings.heartbeat,
            missed_beats: settings.missed_heartbeats,
            ring: ring.clone(),
            transport: settings.transport.clone(),
        };
        let (cluster, _) =
            Actor::spawn_linked(None, Cluster, cluster_args, myself.get_cell()).await?;
        let membership_args = MembershipArgs {
            ctx: ctx.clone(),
            vnodes: vnodes.clone(),
            cluster: cluster.clone(),
            join: settings.join,
        };
        let (membership, _) = Actor::spawn_linked(
            Some(MEMBERSHIP.to_string()),
            Membership,
            membership_args,
            myself.get_cell(),
        )
        .await?;

        let resp = match &settings.resp {
            Some(r) => {
                let listener = crate::gateway::resp::bind(r).await?;
                tracing::info!(addr = %r.addr, "listening for Redis clients (RESP)");
                Some(tokio::spawn(crate::gateway::resp::serve(
                    listener,
                    ctx.clone(),
                    r.clone(),
                )))
            }
            None => None,
        };
        let metrics = match settings.metrics {
            Some(addr) => {
                let listener = crate::gateway::metrics::bind(addr).await?;
                tracing::info!(%addr, "serving Prometheus metrics at /metrics");
                Some(tokio::spawn(crate::gateway::metrics::serve(
                    listener,
                    ctx.clone(),
                    log.clone(),
                    settings.node_dir.clone(),
                    settings
                        .metrics_tls
                        .then(|| settings.transport.tls_setup())
                        .flatten(),
                )))
            }
            None => None,
        };
        let mut state = NodeSupervisorState {
            settings,
            ctx,
            resp,
            metrics,
            table,
            log,
            log_thread: Some(log_thread),
            vnodes,
            routers: Vec::new(),
            server,
            accept,
            admin,
            replica,
            cluster,
            membership,
            handoff,
            aae,
            stopping: false,
        };
        for _ in 0..state.settings.routers.max(1) {
            state.spawn_router(&myself).await?;
        }
        tracing::info!(
            node = %state.settings.node_id,
            addr = %me_addr,
            vnodes = local.len(),
            "node ready"
        );
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeSupervisorMessage>,
        message: NodeSupervisorMessage,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeSupervisorMessage::LogStopped => {
                if !state.stopping {
                    tracing::error!("commit log writer stopped; stopping the node");
                    myself.stop(Some("commit log failed".into()));
                }
            }
            NodeSupervisorMessage::Shutdown(reply) => {
                state.stopping = true;
                tracing::info!("shutting down");
                state.accept = None;
                for task in [state.resp.take(), state.metrics.take()]
                    .into_iter()
                    .flatten()
                {
                    task.abort();
                }
                state.membership.stop(None);
                state.cluster.stop(None);
                state.handoff.stop(None);
                state.aae.stop(None);
                state.server.stop(None);
                state.replica.stop(None);
                for r in &state.routers {
                    r.stop(None);
                }
                state.admin.stop(None);
                for (p, v) in state.table.serving() {
                    let flushed = v
                        .call(VnodeMessage::Flush, Some(Duration::from_secs(30)))
                        .await;
                    if !matches!(flushed, Ok(ractor::rpc::CallResult::Success(Ok(())))) {
                        tracing::warn!(
                            partition = p,
                            "vnode did not checkpoint at shutdown; the commit log keeps its writes"
                        );
                    }
                    v.stop(None);
                }
                state.vnodes.stop(None);
                state.log.shutdown();
                if let Some(t) = state.log_thread.take() {
                    let _ = tokio::task::spawn_blocking(move || t.join()).await;
                }
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeSupervisorMessage>,
        event: SupervisionEvent,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if state.stopping {
            return Ok(());
        }
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_default())
            }
            _ => return Ok(()),
        };
        if let Some(i) = state
            .routers
            .iter()
            .position(|r| r.get_id() == cell.get_id())
        {
            // Routers hold no state of their own: replace the one that died.
            state.routers.remove(i);
            tracing::warn!(reason = %why, "router stopped; replacing it");
            state.spawn_router(&myself).await?;
            return Ok(());
        }
        tracing::error!(actor = %cell.get_id(), reason = %why, "a core node actor stopped; stopping the node");
        myself.stop(Some(format!("core actor stopped: {why}")));
        Ok(())
    }
}
