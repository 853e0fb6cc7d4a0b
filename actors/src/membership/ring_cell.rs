//! The node's one copy of the current placement: read by every request (one snapshot each),
//! replaced only by adopting a committed placement of a higher epoch, and kept durably in the
//! node's folder so a restart resumes at the epoch it left, whatever `cluster.toml` says.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::core::placement::Placement;

/// File holding the adopted placement.
const CURRENT: &str = "placement.rmp";
/// File holding a placement a claimant proposed, stored before it may be committed.
const PROPOSED: &str = "placement-proposed.rmp";

/// The current placement, shared by everything on the node.
#[derive(Debug)]
pub struct RingCell {
    /// The placement and its hash, computed once per adoption (every heartbeat carries it).
    current: RwLock<(Arc<Placement>, u64)>,
    dir: PathBuf,
    /// Serialises file writes; readers never take it.
    writing: Mutex<()>,
    changed: watch::Sender<u64>,
}

/// Writes `bytes` to `dir/name` durably: a temporary file, fsynced, renamed over, dir fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

fn read_placement(path: &Path) -> std::io::Result<Option<Placement>> {
    match std::fs::read(path) {
        Ok(bytes) => rmp_serde::from_slice(&bytes).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn encode(p: &Placement) -> std::io::Result<Vec<u8>> {
    rmp_serde::to_vec(p).map_err(|e| std::io::Error::other(e.to_string()))
}

impl RingCell {
    /// The placement stored in `dir`, or `seed` (stored at once) on a node's first start.
    pub fn open(dir: &Path, seed: impl FnOnce() -> Placement) -> std::io::Result<RingCell> {
        std::fs::create_dir_all(dir)?;
        let placement = match read_placement(&dir.join(CURRENT))? {
            Some(p) => p,
            None => {
                let p = seed();
                write_durably(dir, CURRENT, &encode(&p)?)?;
                p
            }
        };
        let (changed, _) = watch::channel(placement.epoch);
        Ok(RingCell {
            current: RwLock::new((Arc::new(placement.clone()), placement.hash())),
            dir: dir.to_path_buf(),
            writing: Mutex::new(()),
            changed,
        })
    }

    /// The current placement: take it once per request and use that snapshot throughout.
    pub fn load(&self) -> Arc<Placement> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The current placement's hash ([`Placement::hash`]).
    pub fn hash(&self) -> u64 {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// The node's folder, where the placement and transfer cursors are kept.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.load().epoch
    }

    /// Tells of every adopted epoch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Stores a proposed placement durably (the claimant counts this node's vote only after).
    /// Refused when this node already adopted that epoch or a later one.
    pub fn store_proposal(&self, p: &Placement) -> Result<(), String> {
        let _w = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.load().epoch;
        if p.epoch <= current {
            return Err(format!(
                "this node is already at epoch {current}, the proposal is for {}",
                p.epoch
            ));
        }
        let bytes = encode(p).map_err(|e| e.to_string())?;
        write_durably(&self.dir, PROPOSED, &bytes).map_err(|e| e.to_string())
    }

    /// Makes `p` current, durably first; false (and nothing changes) unless its epoch is
    /// higher than the current one.
    pub fn adopt(&self, p: Placement) -> std::io::Result<bool> {
        let _w = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if p.epoch <= self.load().epoch {
            return Ok(false);
        }
        write_durably(&self.dir, CURRENT, &encode(&p)?)?;
        let (epoch, hash) = (p.epoch, p.hash());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(p), hash);
        self.changed.send_replace(epoch);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::placement::{Change, MemberAddr};
    use crate::core::ring::Ring;

    fn seed() -> Placement {
        let members: Vec<MemberAddr> = (1..=3)
            .map(|i| MemberAddr {
                id: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7400 + i),
            })
            .collect();
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        Placement::seed(members, Ring::new(&ids, 16, 3).unwrap())
    }

    #[test]
    fn an_adopted_epoch_survives_a_reopen_and_lower_epochs_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cell = RingCell::open(dir.path(), seed).unwrap();
        assert_eq!(cell.epoch(), 1);
        let next = cell
            .load()
            .plan(&[Change::Join {
                id: "n4".into(),
                addr: "127.0.0.1:7404".into(),
            }])
            .unwrap();
        cell.store_proposal(&next).unwrap();
        assert!(cell.adopt(next.clone()).unwrap());
        assert!(!cell.adopt(next.clone()).unwrap());
        assert!(cell.store_proposal(&next).is_err());
        drop(cell);
        let reopened = RingCell::open(dir.path(), || panic!("seeded twice")).unwrap();
        assert_eq!(*reopened.load(), next);
    }
}
