//! Starting and stopping a whole node from a process's `main`; the node supervisor, which starts
//! every other actor in order, lives in [`supervisor`].

pub mod resources;
pub mod supervisor;

use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::node::supervisor::{NodeSupervisor, NodeSupervisorMessage};
use crate::settings::NodeSettings;

/// A running node.
#[derive(Debug)]
pub struct Node {
    supervisor: ActorRef<NodeSupervisorMessage>,
    join: JoinHandle<()>,
}

impl Node {
    /// Starts every actor of the node; returns once it serves requests.
    pub async fn start(settings: NodeSettings) -> Result<Node, String> {
        let (supervisor, join) = Actor::spawn(None, NodeSupervisor, settings)
            .await
            .map_err(|e| format!("node failed to start: {e}"))?;
        Ok(Node { supervisor, join })
    }

    /// Waits until the node stops by itself (a core actor failed).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.join).await;
    }

    /// Stops the node, making every acknowledged write durable first.
    pub async fn shutdown(self, deadline: Duration) -> Result<(), String> {
        let r = self
            .supervisor
            .call(NodeSupervisorMessage::Shutdown, Some(deadline))
            .await;
        match r {
            Ok(ractor::rpc::CallResult::Success(())) => {
                let _ = self.join.await;
                Ok(())
            }
            _ => Err("node did not shut down cleanly within the deadline".into()),
        }
    }
}
