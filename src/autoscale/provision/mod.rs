//! Provisioners: what starts and stops the machines or processes behind a scale-out or a
//! scale-in. The autoscaler asks one for a node, stages that node's join itself, and releases a
//! node only after its drained leave: a provisioner never changes membership.

pub mod command;
pub mod kubernetes;
pub mod local;

use serde::{Deserialize, Serialize};

/// A node a provisioner started: the id it runs as and the address it listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Node id.
    pub id: String,
    /// Listen address, `ip:port`.
    pub addr: String,
}

/// What a provisioner is asked to start.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    /// The id the autoscaler suggests (the next free `nK`); a provisioner may choose its own.
    pub id: String,
    /// A live member's address the new node joins through.
    pub seed: String,
}

/// The configured provisioner.
#[derive(Debug)]
pub enum Provisioner {
    /// Processes on this machine, recorded in the launcher's state file.
    Local(local::Local),
    /// A user command per action.
    Command(command::Command),
    /// A StatefulSet's scale subresource.
    Kubernetes(kubernetes::Kubernetes),
}

impl Provisioner {
    /// Its name in `[autoscale] provisioner`.
    pub fn name(&self) -> &'static str {
        match self {
            Provisioner::Local(_) => "local",
            Provisioner::Command(_) => "command",
            Provisioner::Kubernetes(_) => "kubernetes",
        }
    }

    /// Starts one node that joins through `req.seed`; it is not a member until the
    /// autoscaler commits its join.
    pub async fn provision(&self, req: &ProvisionRequest) -> Result<NodeSpec, String> {
        match self {
            Provisioner::Local(p) => p.provision(req).await,
            Provisioner::Command(p) => p.provision(req).await,
            Provisioner::Kubernetes(p) => p.provision().await,
        }
    }

    /// Stops `id`, which has left the ring (or never joined it).
    pub async fn release(&self, id: &str) -> Result<(), String> {
        match self {
            Provisioner::Local(p) => p.release(id).await,
            Provisioner::Command(p) => p.release(id).await,
            Provisioner::Kubernetes(p) => p.release(id).await,
        }
    }

    /// Which member to drain next when shrinking; never `myself` (the claimant running the
    /// autoscaler).
    pub fn removal_candidate(&self, members: &[String], myself: &str) -> Option<String> {
        let others: Vec<String> = members.iter().filter(|m| *m != myself).cloned().collect();
        match self {
            Provisioner::Kubernetes(p) => p.removal_candidate(&others),
            Provisioner::Local(_) | Provisioner::Command(_) => newest(&others),
        }
    }
}

/// The member with the highest trailing number (`n7` over `n4`, `db-12` over `db-9`), ties
/// and unnumbered ids broken by name: autoscaled nodes get increasing numbers, so this is the
/// most recently added.
pub fn newest(members: &[String]) -> Option<String> {
    members
        .iter()
        .max_by_key(|m| (trailing_number(m), (*m).clone()))
        .cloned()
}

/// The number an id ends with, if any.
pub fn trailing_number(id: &str) -> Option<u64> {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    id[id.len() - digits..].parse().ok()
}

/// The next `nK` id after every id in `ids`.
pub fn next_id(ids: &[String]) -> String {
    let k = ids
        .iter()
        .filter_map(|id| id.strip_prefix('n').and_then(|k| k.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    format!("n{}", k + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_newest_member_has_the_highest_number_not_the_last_name() {
        assert_eq!(newest(&ids(&["n1", "n10", "n9"])), Some("n10".into()));
        assert_eq!(newest(&ids(&["db-2", "db-12", "x"])), Some("db-12".into()));
        assert_eq!(newest(&[]), None);
        assert_eq!(next_id(&ids(&["n1", "n10", "a7"])), "n11");
        assert_eq!(next_id(&[]), "n1");
    }
}
