//! The node's write-counter sequence: every dot this node mints has a counter never issued
//! before, even across crashes.
//!
//! Why: reads can observe a write before its commit-log fsync, so a client may hold a context
//! naming counter c for a write a crash then loses. If the node issued c again for a new
//! write, that stale context would supersede the new write unseen. Counters therefore come
//! from one node-wide sequence whose high-water mark is made durable before any counter under
//! it is used; after a restart the sequence resumes above the mark. Per key, a node's counters
//! still increase, which is all version vectors need.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::storage::durable_u64;

/// Counters reserved per durable write of the mark.
const CHUNK: u64 = 1 << 20;

/// A crash-safe, node-wide source of dot counters.
#[derive(Debug)]
pub struct DotSequence {
    next: AtomicU64,
    reserved: AtomicU64,
    path: PathBuf,
    persist: Mutex<()>,
}

impl DotSequence {
    /// Opens the sequence stored at `path`, resuming above every counter issued before.
    pub fn open(path: &Path) -> io::Result<DotSequence> {
        let start = durable_u64::read(path)?.unwrap_or(1);
        let seq = DotSequence {
            next: AtomicU64::new(start),
            reserved: AtomicU64::new(start),
            path: path.to_path_buf(),
            persist: Mutex::new(()),
        };
        seq.reserve_through(start.saturating_add(CHUNK))?;
        Ok(seq)
    }

    /// Every counter this node has ever issued is below this value.
    pub fn issued_below(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// A fresh counter of at least `floor`.
    pub fn next_at_least(&self, floor: u64) -> io::Result<u64> {
        let mut current = self.next.load(Ordering::SeqCst);
        let counter = loop {
            let c = current.max(floor);
            let after = c
                .checked_add(1)
                .ok_or_else(|| io::Error::other("dot counter space exhausted"))?;
            match self
                .next
                .compare_exchange(current, after, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break c,
                Err(actual) => current = actual,
            }
        };
        if counter >= self.reserved.load(Ordering::SeqCst) {
            self.reserve_through(counter.saturating_add(CHUNK))?;
        }
        Ok(counter)
    }

    /// Makes `mark` durable as the point the sequence resumes from after a restart.
    fn reserve_through(&self, mark: u64) -> io::Result<()> {
        let _guard = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        if mark <= self.reserved.load(Ordering::SeqCst) && self.path.exists() {
            return Ok(());
        }
        durable_u64::write(&self.path, mark)?;
        self.reserved.fetch_max(mark, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_above_everything_issued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dots");
        let seq = DotSequence::open(&path).unwrap();
        let a = seq.next_at_least(0).unwrap();
        let b = seq.next_at_least(0).unwrap();
        assert!(b > a);
        assert_eq!(seq.next_at_least(500).unwrap(), 500);
        assert!(seq.issued_below() > 500);
        let c = seq.next_at_least(CHUNK + 10).unwrap();
        drop(seq);
        // A crash loses nothing durable: the reopened sequence starts above every issued counter.
        let seq = DotSequence::open(&path).unwrap();
        assert!(seq.next_at_least(0).unwrap() > c);
    }

    #[test]
    fn refuses_to_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let seq = DotSequence::open(&dir.path().join("dots")).unwrap();
        assert!(seq.next_at_least(u64::MAX).is_err());
    }
}
