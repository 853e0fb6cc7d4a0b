//! The node's incarnation: a durable number raised at every node start and before a vnode
//! restarts after a failure. Dots are minted under `<node>~<incarnation>`.
//!
//! Why: a clock entry `(author, c)` claims that every dot of that author up to `c` was seen. A
//! vnode that lost some of its own dots (a crash after another replica took a write it minted
//! but before its own fsync, a damaged file moved aside) would otherwise mint a new dot under
//! the same author whose clock covers the lost ones, and merging it into the other replicas
//! would silently drop those writes. A fresh author per incarnation claims nothing about the
//! dots of earlier ones. The cost is one version-vector entry per incarnation that wrote a key.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::storage::durable_u64;

/// A node's incarnation counter.
#[derive(Debug)]
pub struct Incarnation {
    path: PathBuf,
    current: Mutex<u64>,
}

impl Incarnation {
    /// Opens the counter at `path` and raises it (a new incarnation of the node).
    pub fn start(path: &Path) -> io::Result<Incarnation> {
        let last = durable_u64::read(path)?.unwrap_or(0);
        let me = Incarnation {
            path: path.to_path_buf(),
            current: Mutex::new(last),
        };
        me.bump()?;
        Ok(me)
    }

    /// The current incarnation.
    pub fn current(&self) -> u64 {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises the incarnation durably and returns the new one.
    pub fn bump(&self) -> io::Result<u64> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let next = *current + 1;
        durable_u64::write(&self.path, next)?;
        *current = next;
        Ok(next)
    }

    /// The dot author of `node` in incarnation `n`.
    pub fn author(node: &str, n: u64) -> String {
        format!("{node}~{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_and_bump_is_a_new_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incarnation");
        let a = Incarnation::start(&path).unwrap();
        assert_eq!(a.current(), 1);
        assert_eq!(a.bump().unwrap(), 2);
        drop(a);
        let b = Incarnation::start(&path).unwrap();
        assert_eq!(b.current(), 3);
        assert_eq!(Incarnation::author("n1", 3), "n1~3");
    }
}
