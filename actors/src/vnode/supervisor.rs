//! VnodeSupervisor: starts one vnode per local partition, restarts a failed vnode within its
//! budget, and checkpoints vnodes so sealed commit log segments can be released.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::RactorMessage;

use crate::core::version::ConflictPolicy;
use crate::partition_table::PartitionTable;
use crate::protocol::VnodeHealth;
use crate::settings::RestartBudget;
use crate::storage::commit_log::{CommitLog, LogDurability};
use crate::storage::disk_guard::DiskGuard;
use crate::storage::dot_sequence::DotSequence;
use crate::storage::incarnation::Incarnation;
use crate::storage::vnode_store::EncodedPairs;
use crate::vnode::{UNUSABLE_FILE, Vnode, VnodeArgs, VnodeMessage};

/// Messages the vnode supervisor accepts (local only).
#[derive(RactorMessage)]
pub enum VnodeSupervisorMessage {
    /// A commit log segment was sealed: checkpoint every vnode, then release it.
    SegmentSealed(u64),
    /// A checkpoint round finished; `ok` is false when some vnode could not checkpoint.
    CheckpointDone {
        /// The segment the round was for.
        segment: u64,
        /// Whether every local vnode checkpointed.
        ok: bool,
    },
    /// Run vnodes for exactly these partitions: start the missing ones, checkpoint, stop and
    /// move aside the files of the others (released by the placement of `epoch`).
    Host {
        /// Partitions this node holds in its current placement.
        partitions: Vec<u32>,
        /// That placement's epoch, stamped on released files.
        epoch: u64,
    },
    /// Try again to start a vnode that could not start for a reason other than damage.
    Retry(u32),
}

/// The first wait before a vnode that could not start (a full disk, a busy file: nothing
/// wrong with its data) is tried again; each failure doubles it, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two tries to start a vnode.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The vnode supervisor actor.
#[derive(Debug, Default)]
pub struct VnodeSupervisor;

/// What the vnode supervisor is started with.
pub struct VnodeSupervisorArgs {
    /// This node's id.
    pub node_id: String,
    /// Folder holding `vnode-<p>.redb` files.
    pub node_dir: PathBuf,
    /// Partitions this node holds at start.
    pub partitions: Vec<u32>,
    /// Page cache per vnode file.
    pub cache_bytes: usize,
    /// Object cache per vnode.
    pub object_cache_bytes: usize,
    /// The node's commit log.
    pub log: CommitLog,
    /// The node's dot counter sequence.
    pub dots: Arc<DotSequence>,
    /// When writes are acknowledged.
    pub durability: LogDurability,
    /// Sibling bound or last-write-wins.
    pub conflict: ConflictPolicy,
    /// Most writes per vnode commit.
    pub batch_max_writes: usize,
    /// Most payload bytes per vnode commit.
    pub batch_max_bytes: usize,
    /// Restart budget per vnode.
    pub budget: RestartBudget,
    /// Replication factor: a damaged file is only moved aside when replicas can refill it.
    pub replicas: usize,
    /// The node's incarnation, raised before a vnode restarts after a failure.
    pub incarnation: Arc<Incarnation>,
    /// The node's partition registry.
    pub table: Arc<PartitionTable>,
    /// Refuses changes while the disk is nearly full.
    pub disk: Arc<DiskGuard>,
    /// Commit log entries recovered at startup, per partition.
    pub replay: HashMap<u32, EncodedPairs>,
}

/// The vnode supervisor's state.
pub struct VnodeSupervisorState {
    args: VnodeSupervisorArgs,
    by_actor: HashMap<ractor::ActorId, u32>,
    restarts: HashMap<u32, VecDeque<Instant>>,
    checkpointing: bool,
    next_segment: Option<u64>,
    /// Partitions waiting to be started again, with the wait before their next try.
    retrying: HashMap<u32, Duration>,
}

fn vnode_path(dir: &std::path::Path, p: u32) -> PathBuf {
    dir.join(format!("vnode-{p}.redb"))
}

impl VnodeSupervisorState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<VnodeSupervisorMessage>,
        partition: u32,
        replay: Option<EncodedPairs>,
        verify: bool,
    ) -> Result<(), ActorProcessingErr> {
        let a = &self.args;
        let args = VnodeArgs {
            partition,
            node_id: Incarnation::author(&a.node_id, a.incarnation.current()),
            path: vnode_path(&a.node_dir, partition),
            cache_bytes: a.cache_bytes,
            object_cache_bytes: a.object_cache_bytes,
            log: a.log.clone(),
            dots: a.dots.clone(),
            durability: a.durability,
            conflict: a.conflict,
            batch_max_writes: a.batch_max_writes,
            batch_max_bytes: a.batch_max_bytes,
            table: a.table.clone(),
            disk: a.disk.clone(),
            replay,
            verify,
        };
        let cell: ActorCell = myself.get_cell();
        let (vnode, _) = Actor::spawn_linked(None, Vnode, args, cell).await?;
        self.by_actor.insert(vnode.get_id(), partition);
        Ok(())
    }

    /// Starts `partition`'s vnode. When its file is unusable (will not open, fails its
    /// integrity check, cannot be read), the file is moved aside, kept for inspection, and the
    /// vnode starts on an empty one: the commit log restores its latest writes and
    /// anti-entropy the rest, while every other partition keeps serving. Returns whether it
    /// serves.
    async fn start(
        &mut self,
        myself: &ActorRef<VnodeSupervisorMessage>,
        partition: u32,
        replay: Option<EncodedPairs>,
        verify: bool,
    ) -> bool {
        let error = match self.spawn(myself, partition, replay.clone(), verify).await {
            Ok(()) => {
                if self.retrying.remove(&partition).is_some() {
                    tracing::warn!(partition, "vnode started again");
                }
                return true;
            }
            Err(e) => e.to_string(),
        };
        self.args.table.withdraw(partition, VnodeHealth::Starting);
        if error.contains(UNUSABLE_FILE) && self.args.replicas < 2 {
            tracing::error!(partition, %error, "vnode file damaged and no other replica can refill it; left stopped with the file in place");
            self.args.table.withdraw(partition, VnodeHealth::Failed);
            return false;
        }
        if !error.contains(UNUSABLE_FILE) {
            self.args.table.withdraw(partition, VnodeHealth::Failed);
            self.retry_later(myself, partition, &error);
            return false;
        }
        let path = vnode_path(&self.args.node_dir, partition);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let aside = path.with_extension(format!("redb.quarantined-{stamp}"));
        if let Err(e) = std::fs::rename(&path, &aside) {
            tracing::error!(partition, %error, rename_error = %e, "vnode file unusable and cannot be moved aside; left stopped");
            self.args.table.withdraw(partition, VnodeHealth::Failed);
            return false;
        }
        if let Err(e) = tokio::task::block_in_place(|| self.args.incarnation.bump()) {
            tracing::error!(partition, error = %e, "cannot raise the incarnation; vnode left stopped");
            self.args.table.withdraw(partition, VnodeHealth::Failed);
            return false;
        }
        tracing::error!(
            partition,
            %error,
            moved_to = %aside.display(),
            "vnode file unusable: moved aside; starting empty, anti-entropy refills it from replicas"
        );
        self.args
            .table
            .note_quarantine(partition, aside.display().to_string());
        match self.spawn(myself, partition, replay, false).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(partition, error = %e, "vnode failed to start on an empty file; left stopped");
                self.args.table.withdraw(partition, VnodeHealth::Failed);
                false
            }
        }
    }

    /// Starts vnodes for `partitions` not yet held; stops the held ones not listed, after a
    /// checkpoint, and moves their files aside as `vnode-<p>.redb.released-<epoch>`.
    async fn host(
        &mut self,
        myself: &ActorRef<VnodeSupervisorMessage>,
        partitions: &[u32],
        epoch: u64,
    ) {
        let held = self.args.table.local();
        for &p in partitions.iter().filter(|p| !held.contains(p)) {
            self.args.table.set_local(p, true);
            if self.start(myself, p, None, false).await {
                tracing::info!(
                    partition = p,
                    epoch,
                    "vnode started for a partition moving here"
                );
            }
        }
        for p in held.into_iter().filter(|p| !partitions.contains(p)) {
            let vnode = self.args.table.vnode(p);
            self.args.table.withdraw(p, VnodeHealth::Starting);
            self.args.table.set_local(p, false);
            if let Some(v) = vnode {
                let _ = v
                    .call(VnodeMessage::Flush, Some(Duration::from_secs(30)))
                    .await;
                self.by_actor.remove(&v.get_id());
                v.stop(Some("partition released".into()));
            }
            let path = vnode_path(&self.args.node_dir, p);
            let aside = path.with_extension(format!("redb.released-{epoch}"));
            match std::fs::rename(&path, &aside) {
                Ok(()) => {
                    tracing::info!(partition = p, epoch, moved_to = %aside.display(), "partition released")
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot move a released vnode file aside")
                }
            }
        }
    }

    /// Schedules another start of `partition`, which failed for `error`: nothing says its data
    /// is damaged, so it is tried until it starts (or the partition leaves this node).
    fn retry_later(
        &mut self,
        myself: &ActorRef<VnodeSupervisorMessage>,
        partition: u32,
        error: &str,
    ) {
        let wait = self
            .retrying
            .get(&partition)
            .map_or(RETRY_FIRST, |w| (*w * 2).min(RETRY_MAX));
        self.retrying.insert(partition, wait);
        tracing::error!(partition, %error, retry_in_ms = wait.as_millis() as u64, "vnode cannot start; trying again later");
        myself.send_after(wait, move || VnodeSupervisorMessage::Retry(partition));
    }

    /// Counts a restart and says whether the budget still allows it.
    fn within_budget(&mut self, partition: u32) -> bool {
        let budget = self.args.budget;
        let now = Instant::now();
        let times = self.restarts.entry(partition).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > budget.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        times.len() as u32 <= budget.max_restarts
    }

    fn start_checkpoint(&mut self, myself: &ActorRef<VnodeSupervisorMessage>, segment: u64) {
        self.checkpointing = true;
        let vnodes = self.args.table.serving();
        let complete = vnodes.len() == self.args.table.local().len();
        let me = myself.clone();
        tokio::spawn(async move {
            let mut ok = complete;
            for (p, v) in vnodes {
                let r = v
                    .call(VnodeMessage::Flush, Some(Duration::from_secs(30)))
                    .await;
                if !matches!(r, Ok(ractor::rpc::CallResult::Success(Ok(())))) {
                    tracing::warn!(
                        partition = p,
                        "vnode checkpoint did not complete; keeping the log segment"
                    );
                    ok = false;
                }
            }
            let _ = me.cast(VnodeSupervisorMessage::CheckpointDone { segment, ok });
        });
    }
}

impl Actor for VnodeSupervisor {
    type Msg = VnodeSupervisorMessage;
    type State = VnodeSupervisorState;
    type Arguments = VnodeSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VnodeSupervisorMessage>,
        mut args: VnodeSupervisorArgs,
    ) -> Result<VnodeSupervisorState, ActorProcessingErr> {
        std::fs::create_dir_all(&args.node_dir)?;
        let mut replay = std::mem::take(&mut args.replay);
        let partitions = args.partitions.clone();
        let mut state = VnodeSupervisorState {
            args,
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
            checkpointing: false,
            next_segment: None,
            retrying: HashMap::new(),
        };
        for p in partitions {
            let entries = replay.remove(&p).unwrap_or_default();
            state.start(&myself, p, Some(entries), false).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<VnodeSupervisorMessage>,
        message: VnodeSupervisorMessage,
        state: &mut VnodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VnodeSupervisorMessage::SegmentSealed(id) => {
                if state.checkpointing {
                    state.next_segment = Some(state.next_segment.map_or(id, |s| s.max(id)));
                } else {
                    state.start_checkpoint(&myself, id);
                }
            }
            VnodeSupervisorMessage::Host { partitions, epoch } => {
                state.host(&myself, &partitions, epoch).await;
            }
            VnodeSupervisorMessage::CheckpointDone { segment, ok } => {
                state.checkpointing = false;
                if ok {
                    state.args.log.release_through(segment);
                    tracing::debug!(segment, "commit log segments released");
                } else {
                    // Retry with the next sealed segment; released ids are cumulative.
                    state.next_segment =
                        Some(state.next_segment.map_or(segment, |s| s.max(segment)));
                }
                if ok && let Some(next) = state.next_segment.take() {
                    state.start_checkpoint(&myself, next);
                }
            }
            VnodeSupervisorMessage::Retry(partition) => {
                let wanted = state.args.table.local().contains(&partition)
                    && state.args.table.vnode(partition).is_none()
                    && !state.by_actor.values().any(|&p| p == partition);
                if !wanted {
                    state.retrying.remove(&partition);
                    return Ok(());
                }
                // A vnode that failed may have lost dots it minted: it mints under a new
                // incarnation.
                if let Err(e) = tokio::task::block_in_place(|| state.args.incarnation.bump()) {
                    let error = format!("cannot raise the incarnation: {e}");
                    state.retry_later(&myself, partition, &error);
                    return Ok(());
                }
                state.start(&myself, partition, None, true).await;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<VnodeSupervisorMessage>,
        event: SupervisionEvent,
        state: &mut VnodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // A clean stop was asked for (node shutdown); only failures are restarted.
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.by_actor.remove(&cell.get_id());
                return Ok(());
            }
            _ => return Ok(()),
        };
        let Some(partition) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        // Release the file handle before reopening it.
        state.args.table.withdraw(partition, VnodeHealth::Starting);
        if !state.within_budget(partition) {
            state.args.table.withdraw(partition, VnodeHealth::Failed);
            tracing::error!(partition, %reason, "vnode exceeded its restart budget; left stopped");
            return Ok(());
        }
        state.args.table.note_restart(partition);
        tracing::warn!(partition, %reason, "vnode stopped; restarting");
        // The restarted vnode may have lost dots it minted (a repaired or replaced file): it
        // mints under a new incarnation.
        if let Err(e) = tokio::task::block_in_place(|| state.args.incarnation.bump()) {
            state.args.table.withdraw(partition, VnodeHealth::Failed);
            let error = format!("cannot raise the incarnation: {e}");
            state.retry_later(&myself, partition, &error);
            return Ok(());
        }
        // A restart after a failure checks the whole file first: a damaged file is the usual
        // reason for a vnode that keeps failing.
        state.start(&myself, partition, None, true).await;
        Ok(())
    }
}
