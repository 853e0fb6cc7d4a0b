//! The SDK's own view of hung nodes. A node that holds a request past the attempt timeout is
//! suspected for a while: requests try other nodes first, so a node that hangs (SIGSTOP, a
//! stalled disk) costs each request at most one attempt timeout, not its whole deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a node stays suspected after it held a request too long.
pub const SUSPECT_FOR: Duration = Duration::from_secs(2);

/// Nodes suspected of hanging, until when.
#[derive(Debug, Default)]
pub struct Suspects {
    until: Mutex<HashMap<String, Instant>>,
}

impl Suspects {
    /// Suspects `node` for [`SUSPECT_FOR`].
    pub fn suspect(&self, node: &str) {
        self.lock()
            .insert(node.to_string(), Instant::now() + SUSPECT_FOR);
    }

    /// Clears a suspicion: `node` answered.
    pub fn clear(&self, node: &str) {
        let mut until = self.lock();
        if !until.is_empty() {
            until.remove(node);
        }
    }

    /// Moves currently suspected nodes to the end, keeping the order otherwise.
    pub fn order(&self, nodes: &mut [String]) {
        let until = self.lock();
        if until.is_empty() {
            return;
        }
        let now = Instant::now();
        nodes.sort_by_key(|n| until.get(n).is_some_and(|t| *t > now));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspected_nodes_go_last_until_cleared() {
        let s = Suspects::default();
        let mut nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        s.suspect("a");
        s.order(&mut nodes);
        assert_eq!(nodes, ["b", "c", "a"]);
        s.clear("a");
        s.order(&mut nodes);
        assert_eq!(
            nodes,
            ["b", "c", "a"],
            "clearing does not reorder by itself"
        );
        let mut fresh: Vec<String> = ["a", "b"].map(String::from).to_vec();
        s.order(&mut fresh);
        assert_eq!(fresh, ["a", "b"]);
    }
}
