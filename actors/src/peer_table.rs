//! What this node knows about every member: up or down (the failure detector's verdict), the
//! ring each last reported, and how many requests this node has in flight to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use ractor::ActorRef;

use crate::protocol::{MemberView, ReplicaMessage, replica_group};
use crate::settings::Member;

struct Peer {
    addr: String,
    up: AtomicBool,
    ring_hash: AtomicU64,
    in_flight: AtomicUsize,
}

/// Shared per-member state; this node is always up in its own table.
pub struct PeerTable {
    me: String,
    my_ring_hash: u64,
    max_in_flight: usize,
    peers: HashMap<String, Peer>,
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable").field("me", &self.me).finish()
    }
}

/// A slot of a peer's in-flight budget, returned on drop.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PeerTable {
    /// A table for `members`, seen from `me`; peers start down until they answer.
    pub fn new(me: &str, my_ring_hash: u64, members: &[Member], max_in_flight: usize) -> PeerTable {
        let peers = members
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    Peer {
                        addr: m.addr.to_string(),
                        up: AtomicBool::new(m.id == me),
                        ring_hash: AtomicU64::new(if m.id == me { my_ring_hash } else { 0 }),
                        in_flight: AtomicUsize::new(0),
                    },
                )
            })
            .collect();
        PeerTable {
            me: me.to_string(),
            my_ring_hash,
            max_in_flight,
            peers,
        }
    }

    /// True when `node` is this node or the detector considers it up.
    pub fn is_up(&self, node: &str) -> bool {
        node == self.me
            || self
                .peers
                .get(node)
                .is_some_and(|p| p.up.load(Ordering::Relaxed))
    }

    /// Records the detector's verdict; returns true when it changed.
    pub fn set_up(&self, node: &str, up: bool) -> bool {
        self.peers
            .get(node)
            .filter(|_| node != self.me)
            .is_some_and(|p| p.up.swap(up, Ordering::Relaxed) != up)
    }

    /// Records the ring hash `node` reported.
    pub fn set_ring_hash(&self, node: &str, hash: u64) {
        if let Some(p) = self.peers.get(node) {
            p.ring_hash.store(hash, Ordering::Relaxed);
        }
    }

    /// True when every member is up and reported this node's ring.
    pub fn ring_agreed(&self) -> bool {
        self.peers.iter().all(|(id, p)| {
            self.is_up(id) && p.ring_hash.load(Ordering::Relaxed) == self.my_ring_hash
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
    pub fn acquire(&self, node: &str) -> Option<InFlight<'_>> {
        let p = self.peers.get(node)?;
        if p.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            p.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlight(&p.in_flight))
    }

    /// Every member as this node sees it, in id order.
    pub fn view(&self) -> Vec<MemberView> {
        let mut v: Vec<MemberView> = self
            .peers
            .iter()
            .map(|(id, p)| MemberView {
                id: id.clone(),
                addr: p.addr.clone(),
                up: self.is_up(id),
                ring_hash: Some(p.ring_hash.load(Ordering::Relaxed)).filter(|&h| h != 0),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Ids of every other member.
    pub fn others(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .peers
            .keys()
            .filter(|id| **id != self.me)
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}
