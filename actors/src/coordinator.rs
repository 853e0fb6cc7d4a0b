//! Request coordination: one short-lived task per client request fans out to the key's N
//! replicas, answers after R (reads) or W (writes) replies, and repairs stale replicas.
//!
//! Writes are coordinated by a replica: its vnode mints the new version (so dots are always
//! minted where the object lives), then the resulting object is merged into the other
//! replicas. Merging is a join, so a retried or late replica write never creates a false
//! sibling or brings back a superseded value. A node that receives a write for a key it does
//! not replicate forwards it to the first replica that is up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use ractor::rpc::CallResult;
use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use crate::context::NodeContext;
use crate::core::codec::encode_object;
use crate::core::placement::{Placement, SetTally, SetVerdict};
use crate::core::quorum::{Consistency, Tally, Verdict};
use crate::core::read_order::read_order;
use crate::core::version::{ConflictPolicy, Object};
use crate::protocol::{
    GetReply, GetRequest, KvError, PutReply, PutRequest, ReplicaMessage, Wire, decode_context,
    encode_context,
};
use crate::replica_io::{Fetched, read_remote, remaining, replicate, write_replica};
use crate::storage::stored::Stored;
use crate::vnode::{VnodeMessage, WriteOp, WriteOutcome};

impl NodeContext {
    fn deadline(&self, timeout_ms: Option<u64>) -> Instant {
        let t = timeout_ms.map_or(self.policy.default_timeout, Duration::from_millis);
        Instant::now() + t.min(Duration::from_secs(300))
    }

    fn required(&self, level: Consistency) -> Result<usize, KvError> {
        let n = self.ring.load().replicas();
        level.required(n).ok_or_else(|| {
            KvError::BadRequest(format!(
                "consistency {level} asks for more than the {n} replicas"
            ))
        })
    }

    fn overloaded(&self) -> bool {
        self.stats.in_flight() > self.policy.max_coordinating
    }
}

/// The error to report when a quorum could not be met: the failures say why.
fn shortfall(needed: usize, got: usize, errors: &[KvError]) -> KvError {
    if let Some(stale) = errors
        .iter()
        .find(|e| matches!(e, KvError::StaleRing { .. }))
    {
        stale.clone()
    } else if errors.contains(&KvError::Timeout) {
        KvError::Timeout
    } else if errors.contains(&KvError::Overloaded) {
        KvError::Overloaded
    } else if let Some(e) = errors
        .iter()
        .find(|e| matches!(e, KvError::Storage(_) | KvError::BadContext(_)))
    {
        e.clone()
    } else {
        KvError::Unavailable { needed, got }
    }
}

/// The copies a read gathered: this node's own (with its digest, which lets remote replicas
/// holding the same object answer with a flag) and the join of every copy, made only once a
/// differing copy arrives.
#[derive(Default)]
struct Gathered {
    local: Option<Arc<Stored>>,
    joined: Option<Object>,
}

impl Gathered {
    /// Joins a copy that differs from the local one (or was sent in full).
    fn absorb(&mut self, copy: &Option<Object>, policy: ConflictPolicy) {
        if let Some(o) = copy {
            self.joined
                .get_or_insert_with(|| {
                    self.local
                        .as_ref()
                        .map(|s| s.object.clone())
                        .unwrap_or_default()
                })
                .merge(o, policy);
        }
    }

    /// The join of every copy gathered so far.
    fn result(&self) -> &Object {
        static EMPTY: std::sync::LazyLock<Object> = std::sync::LazyLock::new(Object::default);
        self.joined
            .as_ref()
            .or(self.local.as_ref().map(|s| &s.object))
            .unwrap_or(&EMPTY)
    }

    /// The digest of [`Gathered::result`], hashed only when copies were joined.
    fn result_digest(&self) -> u64 {
        match (&self.joined, &self.local) {
            (Some(j), _) => j.digest(),
            (None, Some(s)) => s.digest,
            (None, None) => Object::default().digest(),
        }
    }

    /// The client's reply: when only the local copy was gathered, with its memoized context.
    fn reply(&self) -> GetReply {
        match (&self.joined, &self.local) {
            (None, Some(s)) => {
                let context = s.read_context(|o| encode_context(&o.read_context()));
                reply_with(&s.object, context.to_vec())
            }
            _ => reply_of(self.result()),
        }
    }

    /// The local copy's digest, when it holds the key.
    fn local_digest(&self) -> Option<u64> {
        self.local.as_ref().map(|s| s.digest)
    }
}

/// Serves a client read: `respond` gets the answer as soon as R replicas replied; the task
/// then waits for the rest (up to the deadline) and repairs replicas that are behind.
pub async fn get(
    ctx: Arc<NodeContext>,
    req: GetRequest,
    respond: impl FnOnce(Result<GetReply, KvError>),
) {
    let mut respond = Some(respond);
    let mut answer = |r: Result<GetReply, KvError>| {
        if let Some(f) = respond.take() {
            f(r);
        }
    };
    if let Err(e) = ctx.policy.limits.check_key(&req.key) {
        return answer(Err(e));
    }
    if ctx.overloaded() {
        ctx.stats.refused();
        return answer(Err(KvError::Overloaded));
    }
    let request = ctx.stats.start();
    let needed = match ctx.required(req.r.unwrap_or(ctx.policy.default_r)) {
        Ok(n) => n,
        Err(e) => return answer(Err(e)),
    };
    let me = ctx.node_id.as_str();
    let placement = ctx.ring.load();
    let partition = placement.ring.partition_of(&req.key);
    let up: Vec<&str> = placement
        .read_set(partition)
        .iter()
        .map(String::as_str)
        .filter(|n| ctx.peers.is_up(n))
        .collect();
    if up.len() < needed {
        return answer(Err(KvError::Unavailable {
            needed,
            got: up.len(),
        }));
    }
    let deadline = ctx.deadline(req.timeout_ms);
    let key = req.key.into_vec();
    // Ask the first R replicas of the read order (this node first when it is one), keeping
    // the rest as spares for failed replies; a share of reads asks all N so replicas outside
    // the first R get repaired too.
    let mut order = read_order(placement.read_ring().members(), me, &up);
    let ask_all = rand::random::<f64>() < ctx.policy.read_repair_chance;
    let first = if ask_all { order.len() } else { needed };
    let mut spares = order.split_off(first).into_iter();
    let mut tally = Tally::new(needed, up.len());
    let mut errors = Vec::new();
    let mut copies = Gathered::default();
    // Replicas known to hold exactly the local copy, and those that sent their own.
    let mut holding_local: Vec<&str> = Vec::new();
    let mut sent: Vec<(&str, Option<Object>)> = Vec::new();
    let mut verdict = Verdict::Pending;
    let mut remote: Vec<&str> = Vec::new();
    // The local copy first, in place: a cached read takes microseconds, and its digest spares
    // the remote replicas sending an object this node already has.
    for n in order {
        if n != me {
            remote.push(n);
            continue;
        }
        verdict = match ctx.table.read_stored(partition, &key) {
            Ok(copy) => {
                copies.local = copy;
                holding_local.push(n);
                tally.success()
            }
            Err(e) => {
                errors.push(e);
                remote.extend(spares.next());
                tally.failure()
            }
        };
    }
    let unless = copies.local_digest();
    let (key_ref, ctx_ref) = (key.as_slice(), &*ctx);
    let read = move |n| async move {
        let r = read_remote(ctx_ref, n, partition, key_ref, unless, deadline).await;
        (n, r)
    };
    let mut pending: FuturesUnordered<_> = remote.into_iter().map(read).collect();
    let mut request = Some(request);
    // A replica that hangs before the detector knows would hold the read until its deadline:
    // when the first R replies are late, the spares are asked too.
    // The threshold follows the node's own recent p99, so a saturated node does not send
    // every read to every replica; capped, since reads held by a hung replica raise the p99.
    let base = ctx.policy.speculative_read_after;
    let after = (ctx.stats.recent_p99() * 2).clamp(base, base * 10);
    let mut speculating = spares.len() > 0;
    let first_wake = if speculating {
        (Instant::now() + after).min(deadline)
    } else {
        deadline
    };
    let timer = tokio::time::sleep_until(first_wake.into());
    tokio::pin!(timer);
    loop {
        if request.is_some() {
            match verdict {
                Verdict::Met => answer(Ok(copies.reply())),
                Verdict::Impossible => answer(Err(shortfall(needed, tally.successes(), &errors))),
                Verdict::Pending => {}
            }
            if verdict != Verdict::Pending {
                request.take();
            }
        }
        if pending.is_empty() {
            break;
        }
        let (node, fetched) = tokio::select! {
            biased;
            next = pending.next() => match next {
                Some(a) => a,
                None => break,
            },
            () = &mut timer => {
                if speculating && Instant::now() < deadline {
                    speculating = false;
                    for spare in spares.by_ref() {
                        pending.push(read(spare));
                    }
                    timer.as_mut().reset(deadline.into());
                    continue;
                }
                break;
            }
        };
        verdict = match fetched {
            Ok(Fetched::Same) => {
                holding_local.push(node);
                tally.success()
            }
            Ok(Fetched::Object(o)) => {
                copies.absorb(&o, ctx.policy.conflict);
                sent.push((node, o));
                tally.success()
            }
            Err(e) => {
                if let KvError::StaleRing { epoch } = e {
                    crate::membership::observed(node, epoch);
                }
                errors.push(e);
                if let Some(spare) = spares.next() {
                    pending.push(read(spare));
                }
                tally.failure()
            }
        };
    }
    answer(Err(KvError::Timeout));
    drop(request);
    // Unanswered reads give their peers' in-flight slots back before repairs start.
    drop(pending);
    // Every reply is in (or the deadline passed): repair the replicas that are behind,
    // comparing digests (canonical, unlike the objects' field order).
    let result = copies.result();
    if *result == Object::default() {
        return;
    }
    let target = copies.result_digest();
    let mut stale: Vec<&str> = sent
        .iter()
        .filter(|(_, o)| o.as_ref().map(Object::digest) != Some(target))
        .map(|(n, _)| *n)
        .collect();
    if copies.local_digest() != Some(target) {
        stale.extend(holding_local);
    }
    if !stale.is_empty() {
        let bytes = encode_object(result);
        let deadline = Instant::now() + ctx.policy.default_timeout;
        for node in stale {
            if let Err(e) = write_replica(&ctx, node, partition, &key, &bytes, None, deadline).await
            {
                tracing::debug!(%node, error = %e, "read repair failed");
            }
        }
    }
}

/// Waits (at most a second) until this node adopted `epoch` or a later one.
async fn caught_up(ctx: &NodeContext, epoch: u64) -> bool {
    let mut changes = ctx.ring.subscribe();
    tokio::time::timeout(Duration::from_secs(1), changes.wait_for(|e| *e >= epoch))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// [`get`], run once more under the newer placement when a replica answered that this node's
/// ring is stale (a membership change committed meanwhile).
pub async fn get_fenced(
    ctx: Arc<NodeContext>,
    req: GetRequest,
    respond: impl FnOnce(Result<GetReply, KvError>) + Send + 'static,
) {
    let (retry_ctx, retry_req) = (ctx.clone(), req.clone());
    get(ctx, req, move |r| match r {
        // The first attempt goes on with its read repair; the retry runs beside it.
        Err(KvError::StaleRing { epoch }) => {
            tokio::spawn(async move {
                if caught_up(&retry_ctx, epoch).await {
                    get(retry_ctx, retry_req, respond).await;
                } else {
                    respond(Err(KvError::StaleRing { epoch }));
                }
            });
        }
        r => respond(r),
    })
    .await;
}

/// The client's view of a merged object: distinct live values and a context covering all.
pub fn reply_of(merged: &Object) -> GetReply {
    reply_with(merged, encode_context(&merged.read_context()))
}

/// The client's view of `merged` with its already encoded read context.
fn reply_with(merged: &Object, context: Vec<u8>) -> GetReply {
    let mut values: Vec<ByteBuf> = Vec::new();
    for v in merged.values() {
        // Two versions with the same bytes (a retried write) read as one value.
        if !values.iter().any(|x| x.as_slice() == v) {
            values.push(ByteBuf::from(v.to_vec()));
        }
    }
    GetReply {
        values,
        context: ByteBuf::from(context),
    }
}

/// Serves a client write (or delete); `forward` allows handing it to a replica when this node
/// is not one.
pub async fn put(
    ctx: Arc<NodeContext>,
    req: PutRequest,
    forward: bool,
) -> Result<PutReply, KvError> {
    match &req.value {
        Some(v) => ctx.policy.limits.check_pair(&req.key, v)?,
        None => ctx.policy.limits.check_key(&req.key)?,
    }
    let context = req
        .context
        .as_ref()
        .map(|c| decode_context(c))
        .transpose()?;
    if ctx.overloaded() {
        ctx.stats.refused();
        return Err(KvError::Overloaded);
    }
    let _req = ctx.stats.start();
    let needed = ctx.required(req.w.unwrap_or(ctx.policy.default_w))?;
    let placement = ctx.ring.load();
    let partition = placement.ring.partition_of(&req.key);
    // Versions are minted by a replica of the read set: it holds every acknowledged write.
    let prefs = placement.read_set(partition).to_vec();
    let targets = write_targets(&ctx, &placement, partition);
    let sets: Vec<Vec<String>> = placement
        .write_sets(partition)
        .into_iter()
        .map(<[String]>::to_vec)
        .collect();
    let reachable = |set: &Vec<String>| {
        targets
            .iter()
            .filter(|(n, hint)| set.contains(hint.as_ref().unwrap_or(n)))
            .count()
    };
    if let Some(short) = sets.iter().map(reachable).find(|&got| got < needed) {
        tracing::debug!(
            partition,
            epoch = placement.epoch,
            ?sets,
            ?targets,
            "write refused: a write set is short of live replicas"
        );
        return Err(KvError::Unavailable { needed, got: short });
    }
    let deadline = ctx.deadline(req.timeout_ms);
    if !prefs.contains(&ctx.node_id) {
        if !forward {
            return Err(KvError::BadRequest(
                "this node does not replicate the key".into(),
            ));
        }
        // Versions are minted where the object lives: by a replica that is up.
        let Some((first, _)) = targets.iter().find(|(_, hint)| hint.is_none()) else {
            return Err(KvError::Unavailable { needed, got: 0 });
        };
        return forward_put(&ctx, first, req, deadline).await;
    }
    // The local replica mints the version; replication starts while its commit is made durable,
    // and the local replica counts toward W only once it is.
    let (minted_tx, minted_rx) = oneshot::channel();
    let (durable_tx, durable_rx) = oneshot::channel();
    let op = WriteOp {
        key: req.key.to_vec(),
        value: req.value.map(ByteBuf::into_vec),
        context,
        not_after_ms: req.not_after_ms,
        minted: minted_tx,
        durable: durable_tx,
    };
    ctx.table
        .send(partition, VnodeMessage::Write(op))
        .map_err(|_| KvError::Unavailable { needed, got: 0 })?;
    // One timer for the whole request.
    let expired = tokio::time::sleep_until(deadline.into());
    tokio::pin!(expired);
    let WriteOutcome { context, object } = tokio::select! {
        biased;
        minted = minted_rx => match minted {
            Ok(r) => r?,
            Err(_) => return Err(KvError::Unavailable { needed, got: 0 }),
        },
        () = &mut expired => return Err(KvError::Timeout),
    };
    let reply = PutReply {
        context: ByteBuf::from(encode_context(&context)),
    };
    let key = req.key.into_vec();
    // Shared, so a second round of replication (after a stale-ring answer) still learns when
    // the local commit is durable.
    let local = async move {
        match durable_rx.await {
            Ok(r) => r,
            Err(_) => Err(KvError::Storage("the local commit was lost".into())),
        }
    }
    .boxed()
    .shared();
    let me = ctx.node_id.clone();
    let (mut sets, mut targets) = (sets, targets);
    let mut errors = Vec::new();
    // The version is minted once. A replica at a newer epoch refuses it with StaleRing; then
    // the same object is replicated once more under the newer placement, never minted again
    // (a second mint would be a second version with the same bytes, which a reader may
    // supersede only half of).
    for round in 0..2 {
        let mut tally = SetTally::new(sets.clone(), needed);
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .filter(|(n, _)| *n != me)
            .map(|(n, hint)| {
                let stands_for = hint.clone().unwrap_or_else(|| n.clone());
                replicate(&ctx, n, partition, &key, &object, hint.as_deref(), deadline)
                    .map(move |r| (stands_for, r))
                    .boxed()
            })
            .collect();
        let local = local.clone();
        let mine = me.clone();
        pending.push(async move { (mine, local.await) }.boxed());
        let mut stale = None;
        // Returning at the quorum drops the waits, not the writes: each was sent on first poll.
        loop {
            let (node, r) = tokio::select! {
                biased;
                next = pending.next() => match next {
                    Some(r) => r,
                    None => break,
                },
                () = &mut expired => return Err(KvError::Timeout),
            };
            let verdict = match r {
                Ok(()) => tally.record(&node, true),
                Err(e) => {
                    if let KvError::StaleRing { epoch } = e {
                        crate::membership::observed(&node, epoch);
                        stale = Some(epoch);
                    }
                    errors.push(e);
                    tally.record(&node, false)
                }
            };
            match verdict {
                SetVerdict::Met => return Ok(reply),
                SetVerdict::Impossible => break,
                SetVerdict::Pending => {}
            }
        }
        drop(pending);
        match stale {
            Some(epoch) if round == 0 && caught_up(&ctx, epoch).await => {
                let placement = ctx.ring.load();
                sets = placement
                    .write_sets(partition)
                    .into_iter()
                    .map(<[String]>::to_vec)
                    .collect();
                targets = write_targets(&ctx, &placement, partition);
                errors.clear();
            }
            _ => {
                tracing::debug!(
                    partition,
                    round,
                    ?sets,
                    ?errors,
                    "write short of W in a write set"
                );
                return Err(shortfall(needed, tally.successes(), &errors));
            }
        }
    }
    Err(shortfall(needed, 0, &errors))
}

/// Where a write of `partition` goes: every node of every write set that is up, and with a
/// sloppy quorum, for each one that is down, the next healthy node outside the write sets to
/// keep a hint for it (at most one fallback per down replica, never a node already written to).
fn write_targets(
    ctx: &NodeContext,
    placement: &Placement,
    partition: u32,
) -> Vec<(String, Option<String>)> {
    let nodes = placement.write_nodes(partition);
    let mut targets: Vec<(String, Option<String>)> = nodes
        .iter()
        .filter(|n| ctx.peers.is_up(n))
        .map(|n| ((*n).clone(), None))
        .collect();
    if ctx.policy.sloppy_quorum {
        let fallbacks = placement.fallbacks(partition);
        let mut fallbacks = fallbacks.iter().filter(|n| ctx.peers.is_up(n));
        for down in nodes.iter().filter(|n| !ctx.peers.is_up(n)) {
            match fallbacks.next() {
                Some(f) => targets.push(((*f).clone(), Some((*down).clone()))),
                None => break,
            }
        }
    }
    targets
}

async fn forward_put(
    ctx: &NodeContext,
    target: &str,
    req: PutRequest,
    deadline: Instant,
) -> Result<PutReply, KvError> {
    let replica = ctx
        .peers
        .replica(target)
        .ok_or(KvError::Unavailable { needed: 1, got: 0 })?;
    let _slot = ctx.peers.acquire(target).ok_or(KvError::Overloaded)?;
    match replica
        .call(
            |port| ReplicaMessage::Coordinate(Wire::new(req), port),
            Some(remaining(deadline)),
        )
        .await
    {
        Ok(CallResult::Success(Wire(Ok(r)))) => r,
        Ok(CallResult::Timeout) => Err(KvError::Timeout),
        other => {
            tracing::debug!(%target, failed = ?other.err(), "forwarded write failed");
            Err(KvError::Unavailable { needed: 1, got: 0 })
        }
    }
}
