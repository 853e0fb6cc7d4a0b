//! The SDK's membership calls: stage joins, leaves and replacements, show the plan, commit it,
//! and follow the ownership transfers it starts. Any member answers: a node that is not the
//! claimant passes the command on to it.

use std::time::Duration;

use ractor::rpc::CallResult;
use ringkv_actors::core::placement::Change;
use ringkv_actors::protocol::{
    AdminMessage, MembershipRequest, MembershipView, PingRequest, TransferView, Wire,
};

use super::{Client, KvError};

/// A commit waits for a majority of members to store the new placement.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    /// Runs a membership command on the first member that answers.
    pub async fn membership(&self, req: MembershipRequest) -> Result<MembershipView, KvError> {
        let mut last = KvError::NotConnected("no member is reachable".into());
        for node in self.member_ids() {
            let Ok(admin) = self.admin(&node) else {
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
