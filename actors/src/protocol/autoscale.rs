//! Autoscaler messages: what the console and tests ask a node's autoscaler (pg group
//! `ringkv.autoscale.<node>`), and the report it answers with.

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use super::{PingRequest, Wire};

/// One node's signals as the autoscaler last read them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignalsView {
    /// Node id.
    pub node: String,
    /// False when the node did not answer the last reading (its figures are zero).
    pub answered: bool,
    /// CPU use, percent of the node's cores.
    pub cpu_pct: f64,
    /// Resident memory, percent of the limit.
    pub mem_pct: f64,
    /// Data file system used, percent.
    pub disk_pct: f64,
    /// Client requests coordinated per second.
    pub ops_per_sec: f64,
    /// Requests refused as `Overloaded` per second.
    pub overloaded_per_sec: f64,
}

/// One decision: what it saw, what it chose and how acting on it went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DecisionView {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Members then.
    pub members: usize,
    /// Size the load asked for, within the limits.
    pub desired: usize,
    /// Smoothed load over target of the most loaded signal.
    pub ratio: f64,
    /// `hold`, `scale-out` or `scale-in`.
    pub action: String,
    /// Why, in words.
    pub reason: String,
    /// For actions: what happened (`n5 joined and serves in 12.3 s`, or the error).
    pub result: String,
}

/// A node's autoscaler, as `ringkv console -c autoscale` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AutoscaleView {
    /// The node answering.
    pub node: String,
    /// `[autoscale] enabled`.
    pub enabled: bool,
    /// True on the one node whose autoscaler decides (the claimant); the others stand by.
    pub active: bool,
    /// The provisioner's name.
    pub provisioner: String,
    /// Fewest members.
    pub min_nodes: usize,
    /// Most members.
    pub max_nodes: usize,
    /// Members of the ring now.
    pub members: usize,
    /// What it is doing now (`watching`, `scaling out: starting n5`, …).
    pub state: String,
    /// Smoothed load over target of the most loaded signal, at the last reading.
    pub ratio: f64,
    /// The size the load asked for at the last reading.
    pub desired: usize,
    /// Seconds left of the cooldown after the last action.
    pub cooldown_left_secs: f64,
    /// The last reading of every member.
    pub signals: Vec<SignalsView>,
    /// Recent decisions, oldest first: every action, and a hold whenever its reason changes.
    pub decisions: Vec<DecisionView>,
}

/// Messages a node's autoscaler accepts.
#[derive(RactorClusterMessage)]
pub enum AutoscaleMessage {
    /// Report the autoscaler's state.
    #[rpc]
    Status(Wire<PingRequest>, RpcReplyPort<Wire<AutoscaleView>>),
}

/// The pg group holding a node's autoscaler.
pub fn autoscale_group(node: &str) -> String {
    format!("ringkv.autoscale.{node}")
}
