//! Membership: adopts committed placements (from the claimant, or fetched from any peer that
//! reports a higher epoch in a heartbeat), applies them to the node (peers, links, vnodes,
//! transfers), and, on the claimant, stages changes, plans, commits and advances them.
//!
//! The claimant is the lowest id among the live members of the current placement. A placement
//! takes effect only once a majority of the current ring's members stored it durably; then it
//! is cast to every member, and any that missed the cast fetches it on its next heartbeat.
//! The claimant advances a change ReadOld → ReadNew once every new replica reported its
//! partitions streamed in, and ReadNew → Stable, each only after every live member reached the
//! current epoch, so no two live nodes are ever more than one stage apart.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use crate::context::NodeContext;
use crate::core::placement::{Change, Placement, PlanError, Stage, named};
use crate::membership::links::ClusterMessage;
use crate::membership::transfer::{self, TransferBoard};
use crate::peer_link::PeerLink;
use crate::protocol::{
    AdminMessage, KvError, MembershipRequest, MembershipView, MoveView, PingRequest,
    ReplicaMessage, TransferReport, Wire, admin_group,
};
use crate::vnode::supervisor::VnodeSupervisorMessage;

/// The registered name of a node's membership actor (one node per process).
pub const NAME: &str = "ringkv.membership";
/// How often transfers are driven and the claimant looks at the change in progress.
const TICK: Duration = Duration::from_millis(250);
/// Deadline of one vote (a peer storing a proposal durably) or one fetch.
const VOTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Messages of the membership actor (local only).
#[derive(RactorMessage)]
pub enum MembershipMessage {
    /// An operator command; `forwarded` when another node passed it on to this claimant.
    Request(
        MembershipRequest,
        bool,
        RpcReplyPort<Result<MembershipView, KvError>>,
    ),
    /// A peer reported a higher epoch: fetch its placement.
    Observed {
        /// The peer.
        peer: String,
        /// Its epoch.
        epoch: u64,
    },
    /// A committed placement (cast by the claimant or fetched): adopt it if newer.
    Adopt(Placement),
    /// A fetch from a peer ended.
    Fetched(Option<Placement>),
    /// A target streamed in a partition (the claimant counts these).
    TransferDone(TransferReport),
    /// A local transfer ended.
    TransferEnded {
        /// The partition.
        partition: u32,
        /// The change it belonged to.
        epoch: u64,
        /// Streamed and verified.
        ok: bool,
    },
    /// Drive transfers; on the claimant, advance the change in progress.
    Tick,
}

/// Casts `msg` to this process's membership actor, if it runs.
fn cast(msg: MembershipMessage) {
    if let Some(cell) = ractor::registry::where_is(NAME) {
        let _ = ActorRef::<MembershipMessage>::from(cell).cast(msg);
    }
}

/// Tells membership that `peer` is at `epoch` (higher than this node's).
pub fn observed(peer: &str, epoch: u64) {
    cast(MembershipMessage::Observed {
        peer: peer.to_string(),
        epoch,
    });
}

/// Hands membership a committed placement.
pub fn adopt(p: Placement) {
    cast(MembershipMessage::Adopt(p));
}

/// Hands the claimant's membership a target's report.
pub fn transfer_done(r: TransferReport) {
    cast(MembershipMessage::TransferDone(r));
}

/// What the membership actor is started with.
pub struct MembershipArgs {
    /// The node's shared services.
    pub ctx: Arc<NodeContext>,
    /// Starts and stops vnodes as partitions move.
    pub vnodes: ActorRef<VnodeSupervisorMessage>,
    /// Links to peers as members change.
    pub cluster: ActorRef<ClusterMessage>,
    /// A member to fetch the placement from, for a node started with `--join`.
    pub join: Option<SocketAddr>,
}

/// The membership actor.
#[derive(Debug, Default)]
pub struct Membership;

/// The membership actor's state.
pub struct MembershipState {
    args: MembershipArgs,
    /// Changes staged on this node (meaningful on the claimant).
    staged: Vec<Change>,
    /// Hash of the plan last shown to an operator: a commit that names none must match it.
    shown: Option<u64>,
    /// The claimant's record of (partition, target) pairs streamed in, for the change `done_for`.
    done: HashSet<(u32, String)>,
    done_for: u64,
    /// Local transfers running, by partition.
    running: HashMap<u32, tokio::task::JoinHandle<()>>,
    /// Local transfers finished for the change `completed_for`.
    completed: HashSet<u32>,
    completed_for: u64,
    fetching: bool,
    board: Arc<TransferBoard>,
}

/// The change a placement belongs to: the epoch of its ReadOld placement.
fn change_of(p: &Placement) -> u64 {
    match p.stage {
        Stage::ReadNew => p.epoch - 1,
        _ => p.epoch,
    }
}

/// The claimant: the lowest member id that is up.
fn claimant(ctx: &NodeContext, p: &Placement) -> Option<String> {
    p.members
        .iter()
        .map(|m| m.id.clone())
        .find(|id| ctx.peers.is_up(id))
}

impl MembershipState {
    fn ctx(&self) -> &Arc<NodeContext> {
        &self.args.ctx
    }

    /// Makes `p` this node's placement and applies it: peers, links, vnodes.
    fn apply(&mut self, p: Placement) -> Result<bool, ActorProcessingErr> {
        let ctx = self.args.ctx.clone();
        let epoch = p.epoch;
        if !tokio::task::block_in_place(|| ctx.ring.adopt(p))? {
            return Ok(false);
        }
        let p = ctx.ring.load();
        let members: Vec<(String, String)> = p
            .members
            .iter()
            .map(|m| (m.id.clone(), m.addr.clone()))
            .collect();
        ctx.peers.set_members(&members);
        ctx.peers.set_ring(&ctx.node_id, epoch, ctx.ring.hash());
        let mut dial = Vec::new();
        for m in p.members.iter().filter(|m| m.id != ctx.node_id) {
            let (peers, ring) = (ctx.peers.clone(), ctx.ring.clone());
            ctx.links
                .ensure(&m.id, || PeerLink::start(&ctx.node_id, &m.id, peers, ring));
            match m.addr.parse::<SocketAddr>() {
                Ok(a) => dial.push((m.id.clone(), a)),
                Err(e) => {
                    tracing::error!(member = %m.id, addr = %m.addr, error = %e, "bad member address")
                }
            }
        }
        let _ = self.args.cluster.cast(ClusterMessage::Peers(dial));
        let _ = self.args.vnodes.cast(VnodeSupervisorMessage::Host {
            partitions: p.hosted_by(&ctx.node_id),
            epoch,
        });
        if change_of(&p) != self.completed_for {
            self.completed_for = change_of(&p);
            self.completed.clear();
            // A new change starts: the last one's lines go (they stay visible until then).
            if p.stage == Stage::ReadOld {
                let mine: Vec<u32> = p
                    .moves()
                    .iter()
                    .filter(|m| m.targets.contains(&ctx.node_id))
                    .map(|m| m.partition)
                    .collect();
                self.board.retain(&mine);
            }
        }
        if p.stage != Stage::ReadOld {
            for (_, t) in self.running.drain() {
                t.abort();
            }
        }
        tracing::info!(epoch, stage = %p.stage, members = ?p.member_ids(), "adopted placement");
        Ok(true)
    }

    /// Proposes `next` to every member it names and adopts it once a majority of the current
    /// ring's members stored it durably; then casts it to all.
    async fn commit(&mut self, next: Placement) -> Result<(), KvError> {
        let ctx = self.args.ctx.clone();
        let current = ctx.ring.load();
        if next.epoch != current.epoch + 1 {
            return Err(KvError::Membership(format!(
                "the proposal is for epoch {} but this node is at {}",
                next.epoch, current.epoch
            )));
        }
        let voters: Vec<String> = current.ring.members().to_vec();
        let cell = ctx.ring.clone();
        let proposal = next.clone();
        tokio::task::spawn_blocking(move || cell.store_proposal(&proposal))
            .await
            .map_err(|e| KvError::Membership(e.to_string()))?
            .map_err(KvError::Membership)?;
        let others: Vec<String> = next
            .member_ids()
            .into_iter()
            .chain(voters.iter().cloned())
            .filter(|id| *id != ctx.node_id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let votes = others.iter().map(|id| {
            let (ctx, p, id) = (ctx.clone(), next.clone(), id.clone());
            async move {
                let Some(replica) = ctx.peers.replica(&id) else {
                    return (id, false);
                };
                let r = replica
                    .call(
                        |port| ReplicaMessage::StorePlacement(Wire::new(p), port),
                        Some(VOTE_TIMEOUT),
                    )
                    .await;
                (id, matches!(r, Ok(CallResult::Success(Wire(Ok(Ok(())))))))
            }
        });
        let stored: Vec<String> = futures::future::join_all(votes)
            .await
            .into_iter()
            .filter_map(|(id, ok)| ok.then_some(id))
            .chain(std::iter::once(ctx.node_id.clone()))
            .collect();
        let yes = voters.iter().filter(|v| stored.contains(v)).count();
        if yes * 2 <= voters.len() {
            return Err(KvError::Membership(format!(
                "only {yes} of the {} members stored epoch {} (a majority must); nothing changed",
                voters.len(),
                next.epoch
            )));
        }
        self.apply(next.clone())
            .map_err(|e| KvError::Membership(e.to_string()))?;
        for id in &others {
            if let Some(replica) = ctx.peers.replica(id) {
                let _ = replica.cast(ReplicaMessage::AdoptPlacement(Wire::new(next.clone())));
            }
        }
        tracing::info!(epoch = next.epoch, stage = %next.stage, votes = yes, "placement committed");
        Ok(())
    }

    /// The claimant's view: its placement, the staged changes and, with `plan`, what they move.
    async fn view(&self, plan: Option<&Placement>, note: String) -> MembershipView {
        let ctx = self.ctx();
        let p = ctx.ring.load();
        let shown = plan.unwrap_or(&p);
        let moves = shown.moves();
        let (keys, pair_bytes) = estimate(ctx).await;
        let moved: usize = moves.iter().map(|m| m.targets.len()).sum();
        let old_members = shown.previous.as_ref().map_or(0, |r| r.members().len());
        let new_members = shown.ring.members().len();
        let changed = shown
            .ring
            .members()
            .iter()
            .filter(|m| {
                !shown
                    .previous
                    .as_ref()
                    .is_some_and(|r| r.members().contains(m))
            })
            .count()
            .max(shown.previous.as_ref().map_or(0, |r| {
                r.members()
                    .iter()
                    .filter(|m| !shown.ring.members().contains(m))
                    .count()
            }));
        let slots = shown.partitions() as usize * shown.replicas();
        let ideal = if moves.is_empty() {
            0
        } else {
            (slots * changed).div_ceil(new_members.max(old_members).max(1))
        };
        let bytes = moved as u64 * keys * pair_bytes;
        let rate = ctx.transfers.settings.bytes_per_sec as f64
            * ctx.transfers.settings.max_inbound.max(1) as f64;
        MembershipView {
            claimant: ctx.node_id.clone(),
            epoch: p.epoch,
            stage: p.stage.to_string(),
            members: p.ring.members().to_vec(),
            staged: self.staged.iter().map(ToString::to_string).collect(),
            plan_epoch: plan.map_or(0, |x| x.epoch),
            plan_hash: plan.map_or(0, Placement::hash),
            plan_members: plan.map_or_else(Vec::new, |x| x.ring.members().to_vec()),
            replicas_moved: moved,
            replicas_ideal: ideal,
            bytes,
            eta_secs: if rate > 0.0 { bytes as f64 / rate } else { 0.0 },
            moves: moves
                .into_iter()
                .map(|m| MoveView {
                    done: plan.is_none()
                        && m.targets
                            .iter()
                            .all(|t| self.done.contains(&(m.partition, t.clone()))),
                    partition: m.partition,
                    targets: m.targets,
                    sources: m.sources,
                    released: m.released,
                    keys,
                    bytes: keys * pair_bytes,
                })
                .collect(),
            note,
        }
    }

    /// Handles an operator command on the claimant.
    async fn request(&mut self, req: MembershipRequest) -> Result<MembershipView, KvError> {
        let current = self.ctx().ring.load();
        let refuse = |e: PlanError| KvError::Membership(e.to_string());
        match req {
            MembershipRequest::Show => Ok(self.view(None, String::new()).await),
            MembershipRequest::Clear => {
                self.staged.clear();
                self.shown = None;
                Ok(self.view(None, "staged changes cleared".into()).await)
            }
            MembershipRequest::Stage(change) => {
                for id in named(&change) {
                    if self.staged.iter().any(|c| named(c).contains(&id)) {
                        return Err(refuse(PlanError::AlreadyStaged(id.to_string())));
                    }
                }
                let mut staged = self.staged.clone();
                staged.push(change.clone());
                let plan = current.plan(&staged).map_err(refuse)?;
                self.staged = staged;
                self.shown = Some(plan.hash());
                Ok(self.view(Some(&plan), format!("staged: {change}")).await)
            }
            MembershipRequest::Plan => {
                let plan = current.plan(&self.staged).map_err(refuse)?;
                self.shown = Some(plan.hash());
                Ok(self.view(Some(&plan), String::new()).await)
            }
            MembershipRequest::Commit { plan: seen } => {
                let plan = current.plan(&self.staged).map_err(refuse)?;
                let seen = match (seen, self.shown) {
                    (0, Some(shown)) => shown,
                    (0, None) => {
                        return Err(KvError::Membership(
                            "no plan was shown since the last change; run plan, check it, then commit".into(),
                        ));
                    }
                    (seen, _) => seen,
                };
                if plan.hash() != seen {
                    return Err(KvError::Membership(format!(
                        "the plan changed since it was shown (it is now {:016x}); run plan again and commit that",
                        plan.hash()
                    )));
                }
                let view = self.view(Some(&plan), String::new()).await;
                self.commit(plan.clone()).await?;
                self.staged.clear();
                self.shown = None;
                Ok(MembershipView {
                    note: format!("committed epoch {} ({})", plan.epoch, plan.stage),
                    ..view
                })
            }
        }
    }

    /// Starts the transfers this node owes the change in progress, within its inbound limit,
    /// once every live member reached the change's epoch (so every write since is doubled).
    fn drive_transfers(&mut self, myself: &ActorRef<MembershipMessage>) {
        let ctx = self.args.ctx.clone();
        let p = ctx.ring.load();
        self.running.retain(|_, t| !t.is_finished());
        if p.stage != Stage::ReadOld {
            return;
        }
        let epoch = p.epoch;
        let barrier = ctx.peers.all_up_reached(epoch);
        for m in p
            .moves()
            .into_iter()
            .filter(|m| m.targets.contains(&ctx.node_id))
        {
            let part = m.partition;
            if self.completed.contains(&part) || self.running.contains_key(&part) {
                continue;
            }
            if !barrier {
                self.board.update(part, |l| {
                    l.to = ctx.node_id.clone();
                    l.state = "waiting".into();
                    l.why = format!("barrier: a live member is behind epoch {epoch}");
                });
                continue;
            }
            if self.running.len() >= ctx.transfers.settings.max_inbound.max(1) {
                self.board.update(part, |l| {
                    l.to = ctx.node_id.clone();
                    if l.state.is_empty() || l.state == "waiting" {
                        l.state = "waiting".into();
                        l.why = format!("inbound limit ({})", ctx.transfers.settings.max_inbound);
                    }
                });
                continue;
            }
            let (ctx2, board, me) = (ctx.clone(), self.board.clone(), myself.clone());
            let task = tokio::spawn(async move {
                let r = transfer::run(ctx2, part, epoch, m.sources, board.clone()).await;
                if let Err(e) = &r {
                    tracing::debug!(partition = part, error = %e, "transfer paused; retrying");
                }
                let _ = me.cast(MembershipMessage::TransferEnded {
                    partition: part,
                    epoch,
                    ok: r.is_ok(),
                });
            });
            self.running.insert(part, task);
        }
        // Reports are repeated every tick: a claimant that changed or restarted re-learns them.
        if let Some(c) = claimant(&ctx, &p) {
            let completed: Vec<u32> = self.completed.iter().copied().collect();
            for part in completed {
                let report = TransferReport {
                    node: ctx.node_id.clone(),
                    partition: part,
                    epoch,
                };
                if c == ctx.node_id {
                    self.record_done(report);
                } else if let Some(r) = ctx.peers.replica(&c) {
                    let _ = r.cast(ReplicaMessage::TransferDone(Wire::new(report)));
                }
            }
        }
    }

    fn record_done(&mut self, r: TransferReport) {
        let change = change_of(&self.ctx().ring.load());
        if r.epoch != change {
            return;
        }
        if self.done_for != change {
            self.done_for = change;
            self.done.clear();
        }
        self.done.insert((r.partition, r.node));
    }

    /// On the claimant: commits the next stage when the current one is finished.
    async fn advance(&mut self) {
        let ctx = self.args.ctx.clone();
        let p = ctx.ring.load();
        if claimant(&ctx, &p).as_deref() != Some(ctx.node_id.as_str()) {
            return;
        }
        let ready = match p.stage {
            Stage::Stable => false,
            Stage::ReadOld => {
                self.done_for == p.epoch
                    && p.moves().iter().all(|m| {
                        m.targets
                            .iter()
                            .all(|t| self.done.contains(&(m.partition, t.clone())))
                    })
            }
            Stage::ReadNew => true,
        };
        if !ready || !ctx.peers.all_up_reached(p.epoch) {
            return;
        }
        if let Some(next) = p.advanced()
            && let Err(e) = self.commit(next).await
        {
            tracing::warn!(error = %e, "could not advance the membership change; retrying");
        }
    }

    fn fetch(&mut self, myself: &ActorRef<MembershipMessage>, peer: String) {
        if self.fetching {
            return;
        }
        self.fetching = true;
        let (ctx, me) = (self.args.ctx.clone(), myself.clone());
        tokio::spawn(async move {
            let got = match ctx.peers.replica(&peer) {
                Some(r) => match r
                    .call(
                        |port| ReplicaMessage::FetchPlacement(Wire::new(PingRequest {}), port),
                        Some(VOTE_TIMEOUT),
                    )
                    .await
                {
                    Ok(CallResult::Success(Wire(Ok(p)))) => Some(p),
                    _ => None,
                },
                None => None,
            };
            let _ = me.cast(MembershipMessage::Fetched(got));
        });
    }
}

/// Keys per partition and bytes per pair, estimated from this node's own vnodes.
async fn estimate(ctx: &Arc<NodeContext>) -> (u64, u64) {
    let table = ctx.table.clone();
    tokio::task::spawn_blocking(move || {
        let local = table.local();
        let (mut keys, mut sampled, mut sample_bytes, mut parts) = (0u64, 0u64, 0u64, 0u64);
        for p in local {
            if let Ok((pairs, _, total)) = table.chunk_after(p, None, 64, 1 << 20) {
                keys += total;
                parts += 1;
                sampled += pairs.len() as u64;
                sample_bytes += pairs
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
            }
        }
        (keys / parts.max(1), sample_bytes / sampled.max(1))
    })
    .await
    .unwrap_or((0, 0))
}

/// Asks the claimant's admin actor to run `req` (a forwarded request is not forwarded again).
async fn forward(claimant: &str, req: MembershipRequest) -> Result<MembershipView, KvError> {
    let admin: Option<ActorRef<AdminMessage>> = ractor::pg::get_members(&admin_group(claimant))
        .into_iter()
        .next()
        .map(Into::into);
    let Some(admin) = admin else {
        return Err(KvError::Membership(format!(
            "the claimant {claimant} is not reachable from this node"
        )));
    };
    match admin
        .call(
            |port| AdminMessage::Membership(Wire::new((req, true)), port),
            Some(Duration::from_secs(30)),
        )
        .await
    {
        Ok(CallResult::Success(Wire(Ok(r)))) => r,
        Ok(CallResult::Success(Wire(Err(e)))) => Err(KvError::BadRequest(e.to_string())),
        _ => Err(KvError::Timeout),
    }
}

impl Actor for Membership {
    type Msg = MembershipMessage;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMessage>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        myself.send_interval(TICK, || MembershipMessage::Tick);
        if let Some(seed) = args.join {
            let _ = args.cluster.cast(ClusterMessage::DialSeed(seed));
        }
        let ctx = &args.ctx;
        let p = ctx.ring.load();
        ctx.peers.set_ring(&ctx.node_id, p.epoch, ctx.ring.hash());
        Ok(MembershipState {
            board: ctx.transfers.board.clone(),
            args,
            staged: Vec::new(),
            shown: None,
            done: HashSet::new(),
            done_for: 0,
            running: HashMap::new(),
            completed: HashSet::new(),
            completed_for: change_of(&p),
            fetching: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMessage>,
        message: MembershipMessage,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MembershipMessage::Request(req, forwarded, reply) => {
                let ctx = state.args.ctx.clone();
                let p = ctx.ring.load();
                let c = claimant(&ctx, &p);
                if c.as_deref() == Some(ctx.node_id.as_str()) {
                    let r = state.request(req).await;
                    let _ = reply.send(r);
                } else if forwarded || c.is_none() {
                    let _ = reply.send(Err(KvError::Membership(format!(
                        "{} is not the claimant (it sees {}); retry",
                        ctx.node_id,
                        c.unwrap_or_else(|| "none".into())
                    ))));
                } else if let Some(c) = c {
                    tokio::spawn(async move {
                        let _ = reply.send(forward(&c, req).await);
                    });
                }
            }
            MembershipMessage::Observed { peer, epoch } => {
                if epoch > state.ctx().ring.epoch() {
                    state.fetch(&myself, peer);
                }
            }
            MembershipMessage::Adopt(p) => {
                state.apply(p)?;
            }
            MembershipMessage::Fetched(p) => {
                state.fetching = false;
                if let Some(p) = p {
                    state.apply(p)?;
                }
            }
            MembershipMessage::TransferDone(r) => state.record_done(r),
            MembershipMessage::TransferEnded {
                partition,
                epoch,
                ok,
            } => {
                state.running.remove(&partition);
                if ok && epoch == state.completed_for {
                    state.completed.insert(partition);
                    // The freed inbound slot is taken at once rather than at the next tick.
                    state.drive_transfers(&myself);
                }
            }
            MembershipMessage::Tick => {
                // A joining node learns the placement from the member it dialled.
                if state.args.join.is_some()
                    && state
                        .ctx()
                        .ring
                        .load()
                        .addr_of(&state.ctx().node_id)
                        .is_none()
                {
                    let peer = state
                        .ctx()
                        .peers
                        .others()
                        .into_iter()
                        .next()
                        .or_else(|| session_peer(&state.args.ctx.node_id));
                    if let Some(peer) = peer {
                        state.fetch(&myself, peer);
                    }
                }
                state.drive_transfers(&myself);
                state.advance().await;
            }
        }
        Ok(())
    }
}

/// A node whose replica group this process sees (a joining node knows only its seed's address,
/// not its id): any other node will do to fetch the placement from.
fn session_peer(me: &str) -> Option<String> {
    ractor::pg::which_groups()
        .into_iter()
        .filter_map(|g| g.strip_prefix("ringkv.replica.").map(str::to_string))
        .find(|id| id != me)
}
