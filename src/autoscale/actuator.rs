//! Acting on a decision, through this node's admin path: read every member's signals, and add
//! or remove one node. A scale-out starts a node through the provisioner, waits until it
//! answers, then stages and commits its join and waits until it holds its partitions. A
//! scale-in stages and commits a leave, waits until the node handed every partition and hint
//! off, and only then has the provisioner stop it: a node is never stopped holding the only
//! copy of anything. Whatever fails before the join is committed releases the new node again,
//! so no half-joined member is left behind.

use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use ringkv_actors::core::placement::Change;
use ringkv_actors::protocol::{
    AdminMessage, MembershipRequest, MembershipView, NodeStats, NodeStatus, PingRequest,
    SignalsView, Wire, admin_group,
};

use super::provision::{NodeSpec, ProvisionRequest, Provisioner};

/// Longest one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A commit waits for a majority of members to store the new placement.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a committed change may take to become stable.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a running change is looked at.
const POLL: Duration = Duration::from_millis(500);

fn admin(node: &str) -> Option<ActorRef<AdminMessage>> {
    ractor::pg::get_members(&admin_group(node))
        .into_iter()
        .next()
        .map(Into::into)
}

async fn call<T: Send + 'static>(
    node: &str,
    msg: impl FnOnce(RpcReplyPort<Wire<T>>) -> AdminMessage,
    timeout: Duration,
) -> Result<T, String> {
    let a = admin(node).ok_or_else(|| format!("{node} is not reachable"))?;
    match a.call(msg, Some(timeout)).await {
        Ok(CallResult::Success(Wire(Ok(v)))) => Ok(v),
        Ok(CallResult::Timeout) => Err(format!("{node} did not answer within {timeout:?}")),
        Ok(CallResult::Success(Wire(Err(e)))) => Err(format!("{node} sent a bad answer: {e}")),
        _ => Err(format!("{node} did not answer")),
    }
}

/// Runs a membership command through this node's admin actor (passed on to the claimant).
pub async fn membership(me: &str, req: MembershipRequest) -> Result<MembershipView, String> {
    call(
        me,
        |p| AdminMessage::Membership(Wire::new((req, false)), p),
        MEMBERSHIP_TIMEOUT,
    )
    .await?
    .map_err(|e| e.to_string())
}

async fn status(node: &str) -> Result<NodeStatus, String> {
    call(
        node,
        |p| AdminMessage::Status(Wire::new(PingRequest {}), p),
        CALL_TIMEOUT,
    )
    .await
}

async fn stats(node: &str) -> Result<NodeStats, String> {
    call(
        node,
        |p| AdminMessage::Stats(Wire::new(PingRequest {}), p),
        CALL_TIMEOUT,
    )
    .await
}

/// Every member's signals, read at once; a member that does not answer is marked so.
pub async fn read_signals(members: &[String]) -> Vec<SignalsView> {
    let mut set = tokio::task::JoinSet::new();
    for (i, m) in members.iter().enumerate() {
        let m = m.clone();
        set.spawn(async move { (i, m.clone(), stats(&m).await) });
    }
    let mut out: Vec<(usize, SignalsView)> = Vec::new();
    while let Some(Ok((i, node, r))) = set.join_next().await {
        let v = match r {
            Ok(s) => SignalsView {
                node,
                answered: true,
                cpu_pct: s.cpu_pct,
                mem_pct: s.mem_pct,
                disk_pct: s.disk_pct,
                ops_per_sec: s.ops_per_sec,
                overloaded_per_sec: s.overloaded_per_sec,
            },
            Err(_) => SignalsView {
                node,
                ..SignalsView::default()
            },
        };
        out.push((i, v));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

/// Waits until the claimant reports a stable ring after `epoch` for which `done` holds.
async fn settle(
    me: &str,
    epoch: u64,
    done: impl Fn(&MembershipView) -> bool,
) -> Result<MembershipView, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if let Ok(v) = membership(me, MembershipRequest::Show).await
            && v.epoch > epoch
            && v.stage == "stable"
            && done(&v)
        {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the change did not become stable within {SETTLE_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stages `change` and commits exactly the plan the stage answered with; on any failure the
/// staged change is cleared again.
async fn stage_and_commit(me: &str, change: Change) -> Result<MembershipView, String> {
    let what = change.to_string();
    let r = async {
        let plan = membership(me, MembershipRequest::Stage(change)).await?;
        membership(
            me,
            MembershipRequest::Commit {
                plan: plan.plan_hash,
            },
        )
        .await
    }
    .await;
    if let Err(e) = &r {
        let _ = membership(me, MembershipRequest::Clear).await;
        return Err(format!("{what}: {e}"));
    }
    r
}

/// Adds one node: provision, wait until it answers, join, wait until stable. Answers what
/// happened, in words, for the decision log.
pub async fn scale_out(
    me: &str,
    seed: &str,
    members: &[String],
    provisioner: &Provisioner,
    start_timeout: Duration,
    progress: &(dyn Fn(String) + Sync),
) -> Result<String, String> {
    let started = Instant::now();
    let req = ProvisionRequest {
        id: super::provision::next_id(members),
        seed: seed.to_string(),
    };
    progress(format!("scaling out: provisioning {}", req.id));
    let spec = provisioner
        .provision(&req)
        .await
        .map_err(|e| format!("provisioning failed: {e}"))?;
    let provisioned = started.elapsed();
    let release = |spec: NodeSpec, why: String| async move {
        match provisioner.release(&spec.id).await {
            Ok(()) => format!("{why}; {} released again", spec.id),
            Err(e) => format!(
                "{why}; releasing {} failed too ({e}): stop it by hand",
                spec.id
            ),
        }
    };
    if members.contains(&spec.id) {
        return Err(release(
            spec.clone(),
            format!("the provisioner started {}, already a member", spec.id),
        )
        .await);
    }
    progress(format!("scaling out: waiting for {} to answer", spec.id));
    let deadline = Instant::now() + start_timeout;
    loop {
        if status(&spec.id).await.is_ok_and(|s| s.ring_version > 0) {
            break;
        }
        if Instant::now() >= deadline {
            let why = format!(
                "{} did not answer within {start_timeout:?} of being started",
                spec.id
            );
            return Err(release(spec, why).await);
        }
        tokio::time::sleep(POLL).await;
    }
    progress(format!("scaling out: joining {}", spec.id));
    let committed = match stage_and_commit(
        me,
        Change::Join {
            id: spec.id.clone(),
            addr: spec.addr.clone(),
        },
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return Err(release(spec, format!("the join was refused: {e}")).await),
    };
    progress(format!(
        "scaling out: {} streams its partitions in (epoch {})",
        spec.id, committed.epoch
    ));
    let id = spec.id.clone();
    settle(me, committed.epoch, |v| v.members.contains(&id)).await?;
    Ok(format!(
        "{} joined and serves: started in {:.1} s, serving {:.1} s after the decision",
        spec.id,
        provisioned.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

/// Removes one node: leave, wait until it handed everything off, then stop it.
pub async fn scale_in(
    me: &str,
    members: &[String],
    provisioner: &Provisioner,
    progress: &(dyn Fn(String) + Sync),
) -> Result<String, String> {
    let started = Instant::now();
    let id = provisioner
        .removal_candidate(members, me)
        .ok_or("no member the provisioner can remove")?;
    progress(format!("scaling in: draining {id}"));
    let committed = stage_and_commit(me, Change::Leave { id: id.clone() }).await?;
    settle(me, committed.epoch, |v| !v.members.contains(&id)).await?;
    // Hints it keeps for down owners must reach them before it stops.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match status(&id).await {
            Ok(s) if s.hints_waiting > 0 && Instant::now() < deadline => {
                progress(format!(
                    "scaling in: {id} hands {} hints back",
                    s.hints_waiting
                ));
                tokio::time::sleep(POLL).await;
            }
            Ok(s) if s.hints_waiting > 0 => {
                return Err(format!(
                    "{id} left but still holds {} hints; it keeps running",
                    s.hints_waiting
                ));
            }
            _ => break,
        }
    }
    progress(format!("scaling in: stopping {id}"));
    provisioner
        .release(&id)
        .await
        .map_err(|e| format!("{id} left the ring but could not be stopped: {e}"))?;
    Ok(format!(
        "{id} drained and stopped in {:.1} s",
        started.elapsed().as_secs_f64()
    ))
}
