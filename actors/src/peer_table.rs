//! What this node knows about every member: up or down (the failure detector's verdict), the
//! ring epoch and placement hash each last reported, and how many requests this node has in
//! flight to it. Members are added as placements name them and removed once no live ring does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ractor::ActorRef;

use crate::protocol::{MemberView, ReplicaMessage, replica_group};

#[derive(Debug)]
struct Peer {
    addr: String,
    up: AtomicBool,
    ring_hash: AtomicU64,
    epoch: AtomicU64,
    in_flight: AtomicUsize,
}

/// Shared per-member state; this node is always up in its own table.
pub struct PeerTable {
    me: String,
    max_in_flight: usize,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable").field("me", &self.me).finish()
    }
}

/// A slot of a peer's in-flight budget, returned on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Peer>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PeerTable {
    /// A table seen from `me`, with `members` (id, address); peers start down until they answer.
    pub fn new(me: &str, members: &[(String, String)], max_in_flight: usize) -> PeerTable {
        let table = PeerTable {
            me: me.to_string(),
            max_in_flight,
            peers: RwLock::default(),
        };
        table.set_members(members);
        table
    }

    fn peer(&self, node: &str) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
    }

    /// Makes the table hold exactly `members`: new ones start down, kept ones keep their state.
    pub fn set_members(&self, members: &[(String, String)]) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        peers.retain(|id, _| members.iter().any(|(m, _)| m == id));
        for (id, addr) in members {
            peers.entry(id.clone()).or_insert_with(|| {
                Arc::new(Peer {
                    addr: addr.clone(),
                    up: AtomicBool::new(*id == self.me),
                    ring_hash: AtomicU64::new(0),
                    epoch: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                })
            });
        }
    }

    /// True when `node` is this node or the detector considers it up.
    pub fn is_up(&self, node: &str) -> bool {
        node == self.me
            || self
                .peer(node)
                .is_some_and(|p| p.up.load(Ordering::Relaxed))
    }

    /// Records the detector's verdict; returns true when it changed.
    pub fn set_up(&self, node: &str, up: bool) -> bool {
        self.peer(node)
            .filter(|_| node != self.me)
            .is_some_and(|p| p.up.swap(up, Ordering::Relaxed) != up)
    }

    /// Records the epoch and placement hash `node` reported.
    pub fn set_ring(&self, node: &str, epoch: u64, hash: u64) {
        if let Some(p) = self.peer(node) {
            p.ring_hash.store(hash, Ordering::Relaxed);
            p.epoch.store(epoch, Ordering::Relaxed);
        }
    }

    /// True when every member is up and reported the placement hash `mine`.
    pub fn ring_agreed(&self, mine: u64) -> bool {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.iter().all(|(id, p)| {
            *id == self.me || (self.is_up(id) && p.ring_hash.load(Ordering::Relaxed) == mine)
        })
    }

    /// True when every other member that is up reported at least `epoch` (down members are
    /// fenced by the epoch in every replica message when they return).
    pub fn all_up_reached(&self, epoch: u64) -> bool {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.iter().all(|(id, p)| {
            *id == self.me
                || !p.up.load(Ordering::Relaxed)
                || p.epoch.load(Ordering::Relaxed) >= epoch
        })
    }

    /// The replica actor of `node`, when a session to it is established (or it is this node).
    pub fn replica(&self, node: &str) -> Option<ActorRef<ReplicaMessage>> {
        ractor::pg::get_members(&replica_group(node))
            .into_iter()
            .next()
            .map(Into::into)
    }

    /// Takes one slot of `node`'s in-flight budget, or `None` when it is exhausted.
    pub fn acquire(&self, node: &str) -> Option<InFlight> {
        let p = self.peer(node)?;
        if p.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            p.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlight(p))
    }

    /// Every member as this node sees it, in id order.
    pub fn view(&self) -> Vec<MemberView> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<MemberView> = peers
            .iter()
            .map(|(id, p)| MemberView {
                id: id.clone(),
                addr: p.addr.clone(),
                up: self.is_up(id),
                ring_hash: Some(p.ring_hash.load(Ordering::Relaxed)).filter(|&h| h != 0),
                epoch: p.epoch.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Ids of every other member.
    pub fn others(&self) -> Vec<String> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = peers.keys().filter(|id| **id != self.me).cloned().collect();
        ids.sort();
        ids
    }
}
