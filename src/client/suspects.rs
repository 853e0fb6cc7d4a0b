//! The SDK's own view of hung nodes. A node that holds a request past the attempt timeout is
//! suspected until it answers a probe: requests try other nodes first, so a node that hangs
//! (SIGSTOP, a stalled disk) costs a request at most one attempt timeout, and only the
//! requests that were already on their way to it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// How often a suspected node is probed, and how long a probe waits.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Nodes suspected of hanging.
#[derive(Debug, Default)]
pub struct Suspects {
    nodes: Mutex<HashSet<String>>,
}

impl Suspects {
    /// Suspects `node`; true when it was not suspected yet (the caller then starts probing).
    pub fn suspect(&self, node: &str) -> bool {
        self.lock().insert(node.to_string())
    }

    /// Clears a suspicion: `node` answered.
    pub fn clear(&self, node: &str) {
        let mut nodes = self.lock();
        if !nodes.is_empty() {
            nodes.remove(node);
        }
    }

    /// Moves suspected nodes to the end, keeping the order otherwise.
    pub fn order(&self, nodes: &mut [String]) {
        let suspects = self.lock();
        if suspects.is_empty() {
            return;
        }
        nodes.sort_by_key(|n| suspects.contains(n));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspected_nodes_go_last_until_cleared() {
        let s = Suspects::default();
        let mut nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert!(s.suspect("a"));
        assert!(!s.suspect("a"), "already suspected");
        s.order(&mut nodes);
        assert_eq!(nodes, ["b", "c", "a"]);
        s.clear("a");
        let mut fresh: Vec<String> = ["a", "b"].map(String::from).to_vec();
        s.order(&mut fresh);
        assert_eq!(fresh, ["a", "b"]);
    }
}
