//! The SDK's membership calls: stage joins, leaves and replacements, show the plan, commit it,
//! and follow the ownership transfers it starts. Any member answers: a node that is not the
//! claimant passes the command on to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::rpc::CallResult;
use ringkv_actors::core::placement::Change;
use ringkv_actors::core::ring::Ring;
use ringkv_actors::protocol::{
    AdminMessage, MembershipRequest, MembershipView, PingRequest, TransferView, Wire,
};

use super::{Client, KvError};

/// A commit waits for a majority of members to store the new placement.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a client asks a member for its ring epoch.
const RING_REFRESH: Duration = Duration::from_secs(2);

impl Client {
    /// Asks a reachable member for its ring and routes on it from now on (its members and
    /// addresses, and which replica coordinates each key); returns its epoch.
    pub async fn refresh_ring(&self) -> Result<u64, KvError> {
        let node = self
            .reachable_nodes()
            .into_iter()
            .next()
            .ok_or_else(|| KvError::NotConnected("no member is reachable".into()))?;
        let view = self.ring(&node).await?;
        if view.version <= self.inner.epoch.load(Ordering::Relaxed) {
            return Ok(view.version);
        }
        let members: Vec<(String, SocketAddr)> = view
            .members
            .iter()
            .filter_map(|m| m.addr.parse().ok().map(|a| (m.id.clone(), a)))
            .collect();
        if members.is_empty() {
            return Err(KvError::NotConnected(format!(
                "{node} did not report its members"
            )));
        }
        let ids: Vec<String> = members.iter().map(|(id, _)| id.clone()).collect();
        // Members this client was given but the ring does not hold yet (a node waiting for
        // its join) stay reachable for admin calls; keys route on the ring's members first.
        let mut members = members;
        for (id, addr) in &self.inner.config.members {
            if !ids.contains(id) {
                members.push((id.clone(), *addr));
            }
        }
        let ring =
            Ring::from_preference_lists(&ids, view.partitions, view.replicas, &view.read_lists)
                .ok();
        self.set_routing(members, ring);
        self.inner.epoch.store(view.version, Ordering::Relaxed);
        Ok(view.version)
    }

    /// Refreshes the ring in the background every [`RING_REFRESH`] while this client lives.
    pub(crate) fn follow_ring(&self) {
        let weak = Arc::downgrade(&self.inner);
        self.inner.node.runtime.spawn(async move {
            loop {
                tokio::time::sleep(RING_REFRESH).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let _ = Client { inner }.refresh_ring().await;
            }
        });
    }

    /// Runs a membership command on the first member that answers.
    pub async fn membership(&self, req: MembershipRequest) -> Result<MembershipView, KvError> {
        let mut last = KvError::NotConnected("no member is reachable".into());
        for node in self.member_ids() {
            let deadline = std::time::Instant::now() + self.timeout(None);
            let Ok(admin) = self.admin(&node, deadline).await else {
                continue;
            };
            match admin
                .call(
                    |port| AdminMessage::Membership(Wire::new((req.clone(), false)), port),
                    Some(MEMBERSHIP_TIMEOUT),
                )
                .await
            {
                Ok(CallResult::Success(Wire(Ok(r)))) => return r,
                Ok(CallResult::Success(Wire(Err(e)))) => {
                    return Err(KvError::BadRequest(e.to_string()));
                }
                Ok(CallResult::Timeout) => last = KvError::Timeout,
                _ => last = KvError::NotConnected(format!("node {node} did not answer")),
            }
        }
        Err(last)
    }

    /// Stages a change for the next plan; answers with the plan it would make.
    pub async fn stage(&self, change: Change) -> Result<MembershipView, KvError> {
        self.membership(MembershipRequest::Stage(change)).await
    }

    /// What committing the staged changes would move.
    pub async fn plan(&self) -> Result<MembershipView, KvError> {
        self.membership(MembershipRequest::Plan).await
    }

    /// Commits the staged changes; refused unless the plan still hashes to `plan` (0: the plan
    /// last shown by `plan`).
    pub async fn commit(&self, plan: u64) -> Result<MembershipView, KvError> {
        self.membership(MembershipRequest::Commit { plan }).await
    }

    /// The transfers `node` streams in.
    pub async fn transfers(&self, node: &str) -> Result<Vec<TransferView>, KvError> {
        self.admin_call(node, |p| {
            AdminMessage::Transfers(Wire::new(PingRequest {}), p)
        })
        .await
    }
}
