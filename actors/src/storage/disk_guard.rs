//! Refuses new writes while the data folder's file system is nearly full.
//!
//! Why: a write that reaches the disk and fails there is already half applied (the vnode's
//! memtable has it, the log does not), and redb fails every later read of a file whose commit
//! hit a full disk until it is reopened. Refusing writes while `min_free` bytes are still free
//! leaves room for what the node must still write to stay readable and durable: the vnodes'
//! checkpoint of what the log holds, hints, the small state files. A write that slips past
//! the guard (another process filled the disk between two readings) fails in the commit log
//! with the I/O error; that path loses nothing acknowledged either.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the free space is read.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Whether writes are refused, given the free bytes now and before: refused below `min_free`,
/// and once refused, until a sixteenth more than that is free, so writes do not flap at the line.
pub fn refuses(free: u64, min_free: u64, refusing: bool) -> bool {
    if min_free == 0 {
        return false;
    }
    let reopen = min_free.saturating_add(min_free / 16);
    if refusing {
        free < reopen
    } else {
        free < min_free
    }
}

/// The `statvfs` figures of the file system holding `dir`, or `None` when the call fails.
pub fn fs_stats(dir: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s)
}

/// Bytes available to this process on the file system holding `dir`, or `None` when
/// `statvfs` fails.
pub fn available_bytes(dir: &Path) -> Option<u64> {
    fs_stats(dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// The node's view of its free disk space, read by every vnode before it takes a change.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    free: AtomicU64,
    refusing: AtomicBool,
    refused: AtomicU64,
}

impl DiskGuard {
    /// A guard for `dir` refusing writes below `min_free` bytes (0: never), read once now and
    /// then every [`WATCH_EVERY`] by a thread that ends with the guard.
    pub fn watch(dir: &Path, min_free: u64) -> std::io::Result<Arc<DiskGuard>> {
        let guard = Arc::new(DiskGuard {
            dir: dir.to_path_buf(),
            min_free,
            free: AtomicU64::new(u64::MAX),
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        });
        guard.refresh();
        if min_free > 0 {
            let weak: Weak<DiskGuard> = Arc::downgrade(&guard);
            std::thread::Builder::new()
                .name("disk-guard".into())
                .spawn(move || {
                    while let Some(g) = weak.upgrade() {
                        g.refresh();
                        drop(g);
                        std::thread::sleep(WATCH_EVERY);
                    }
                })?;
        }
        Ok(guard)
    }

    /// Reads the free space now and logs when writes stop or resume being refused. A reading
    /// that fails keeps the last state.
    pub fn refresh(&self) {
        if self.min_free == 0 {
            return;
        }
        let Some(free) = available_bytes(&self.dir) else {
            return;
        };
        self.free.store(free, Ordering::Relaxed);
        let was = self.refusing.load(Ordering::Relaxed);
        let now = refuses(free, self.min_free, was);
        if now != was {
            self.refusing.store(now, Ordering::Relaxed);
            let (free_mb, min_mb) = (free >> 20, self.min_free >> 20);
            if now {
                tracing::error!(
                    free_mb,
                    min_free_mb = min_mb,
                    dir = %self.dir.display(),
                    "disk nearly full: refusing writes until space is freed"
                );
            } else {
                tracing::warn!(
                    free_mb,
                    refused = self.refused.load(Ordering::Relaxed),
                    "disk space freed: taking writes again"
                );
            }
        }
    }

    /// `Ok` when a change may be taken, else the reason to give its writer.
    pub fn check(&self) -> Result<(), String> {
        if !self.refusing.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(format!(
            "disk full: {} MiB free for {}, under storage.min_free_mb = {}; writes are refused until space is freed",
            self.free.load(Ordering::Relaxed) >> 20,
            self.dir.display(),
            self.min_free >> 20
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_below_the_line_and_reopens_above_it_with_margin() {
        assert!(!refuses(100, 100, false));
        assert!(refuses(99, 100, false));
        assert!(refuses(100, 100, true));
        assert!(refuses(105, 100, true));
        assert!(!refuses(106, 100, true));
        assert!(!refuses(0, 0, true), "0 turns the guard off");
    }

    #[test]
    fn a_real_folder_reports_space_and_an_ample_guard_takes_writes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).is_some_and(|b| b > 0));
        let g = DiskGuard::watch(dir.path(), 1).unwrap();
        assert!(g.check().is_ok());
        let g = DiskGuard::watch(dir.path(), u64::MAX).unwrap();
        let e = g.check().unwrap_err();
        assert!(e.contains("disk full") && e.contains("min_free_mb"), "{e}");
        assert_eq!(g.refused.load(Ordering::Relaxed), 1);
    }

    proptest! {
        #[test]
        fn never_refuses_with_room_to_spare_and_always_refuses_without(free: u64, min in 1u64..u64::MAX / 2, was: bool) {
            let r = refuses(free, min, was);
            if free >= min + min / 16 { prop_assert!(!r); }
            if free < min { prop_assert!(r); }
        }
    }
}
