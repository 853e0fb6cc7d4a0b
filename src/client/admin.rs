//! The SDK's admin calls: node status, members, ring, load figures, anti-entropy and fault
//! injection, answered by each node's admin actor.

use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor::RpcReplyPort;
use ractor::rpc::CallResult;
use ringkv_actors::protocol::{
    AaeRound, AaeView, AdminMessage, AutoscaleMessage, AutoscaleView, CrashVnodeRequest,
    MemberView, NodeStats, NodeStatus, PingRequest, RingView, Wire, admin_group, autoscale_group,
};

use super::{Client, KvError};

/// True when an admin actor of `node` is visible.
fn has_admin(node: &str) -> bool {
    !ractor::pg::get_members(&admin_group(node)).is_empty()
}

impl Client {
    /// The admin actor of `node`, waiting until `deadline` while a dial to it is under way
    /// (a client serves before every member's handshake is done); otherwise re-dials it in
    /// the background and fails.
    pub(crate) async fn admin(
        &self,
        node: &str,
        deadline: Instant,
    ) -> Result<ActorRef<AdminMessage>, KvError> {
        self.wait_visible(node, deadline, has_admin).await;
        match ractor::pg::get_members(&admin_group(node))
            .into_iter()
            .next()
        {
            Some(a) => Ok(a.into()),
            None => Err(KvError::NotConnected(format!(
                "node {node} is not reachable"
            ))),
        }
    }

    pub(crate) async fn admin_call<T, F>(&self, node: &str, msg: F) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: FnOnce(RpcReplyPort<Wire<T>>) -> AdminMessage,
    {
        let timeout = self.timeout(None);
        let admin = self.admin(node, Instant::now() + timeout).await?;
        match admin.call(msg, Some(timeout)).await {
            Ok(CallResult::Success(Wire(Ok(v)))) => Ok(v),
            Ok(CallResult::Timeout) => Err(KvError::Timeout),
            _ => Err(KvError::NotConnected(format!("node {node} did not answer"))),
        }
    }

    /// A node's anti-entropy view: per local partition, merkle root, last exchange, repairs.
    pub async fn aae(&self, node: &str) -> Result<AaeView, KvError> {
        self.admin_call(node, |p| AdminMessage::Aae(Wire::new(PingRequest {}), p))
            .await
    }

    /// Runs one anti-entropy round on `node` now (every local partition with each replica);
    /// answers when it is done, so the timeout should allow for the repairs.
    pub async fn aae_run(&self, node: &str, timeout: Duration) -> Result<AaeRound, KvError> {
        let admin = self
            .admin(node, Instant::now() + self.timeout(None))
            .await?;
        match admin
            .call(
                |p| AdminMessage::AaeRun(Wire::new(PingRequest {}), p),
                Some(timeout),
            )
            .await
        {
            Ok(CallResult::Success(Wire(Ok(v)))) => Ok(v),
            Ok(CallResult::Timeout) => Err(KvError::Timeout),
            _ => Err(KvError::NotConnected(format!("node {node} did not answer"))),
        }
    }

    /// A node's autoscaler: whether it is on and decides, the signals it read, its decisions.
    pub async fn autoscale(&self, node: &str) -> Result<AutoscaleView, KvError> {
        let timeout = self.timeout(None);
        self.wait_visible(node, Instant::now() + timeout, |n| {
            !ractor::pg::get_members(&autoscale_group(n)).is_empty()
        })
        .await;
        let Some(cell) = ractor::pg::get_members(&autoscale_group(node))
            .into_iter()
            .next()
        else {
            return Err(KvError::NotConnected(format!(
                "node {node} runs no autoscaler (an older ringkv, or not reachable)"
            )));
        };
        let a: ActorRef<AutoscaleMessage> = cell.into();
        match a
            .call(
                |p| AutoscaleMessage::Status(Wire::new(PingRequest {}), p),
                Some(timeout),
            )
            .await
        {
            Ok(CallResult::Success(Wire(Ok(v)))) => Ok(v),
            Ok(CallResult::Timeout) => Err(KvError::Timeout),
            _ => Err(KvError::NotConnected(format!("node {node} did not answer"))),
        }
    }

    /// A node's status from its admin actor.
    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, KvError> {
        self.admin_call(node, |p| AdminMessage::Status(Wire::new(PingRequest {}), p))
            .await
    }

    /// The members as `node`'s failure detector sees them.
    pub async fn members(&self, node: &str) -> Result<Vec<MemberView>, KvError> {
        self.admin_call(node, |p| {
            AdminMessage::Members(Wire::new(PingRequest {}), p)
        })
        .await
    }

    /// The ring as `node` sees it.
    pub async fn ring(&self, node: &str) -> Result<RingView, KvError> {
        self.admin_call(node, |p| AdminMessage::Ring(Wire::new(PingRequest {}), p))
            .await
    }

    /// `node`'s load figures.
    pub async fn stats(&self, node: &str) -> Result<NodeStats, KvError> {
        self.admin_call(node, |p| AdminMessage::Stats(Wire::new(PingRequest {}), p))
            .await
    }

    /// Ids of the members requests route on (the configuration's unless replaced), in order.
    pub fn member_ids(&self) -> Vec<String> {
        self.routing()
            .members
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Makes one vnode of `node` fail so its supervisor restarts it (fault drills and tests).
    pub async fn crash_vnode(&self, node: &str, partition: u32) -> Result<(), KvError> {
        let admin = self
            .admin(node, Instant::now() + self.timeout(None))
            .await?;
        match admin
            .call(
                |port| AdminMessage::CrashVnode(Wire::new(CrashVnodeRequest { partition }), port),
                Some(self.timeout(None)),
            )
            .await
        {
            Ok(CallResult::Success(Wire(Ok(result)))) => result,
            Ok(CallResult::Timeout) => Err(KvError::Timeout),
            _ => Err(KvError::NotConnected(format!(
                "crash-vnode on {node} failed"
            ))),
        }
    }
}
