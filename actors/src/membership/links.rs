//! Cluster: the node's links to its peers. Dials every member (isolated mode, full mesh) from
//! the node's own member IP, re-dials with backoff after a disconnect, and runs the failure
//! detector: a heartbeat to every peer each interval, down after `missed_beats` misses in a row
//! (or at once when the session drops), up again after it answers. Heartbeats carry each side's
//! ring hash, so every node knows whether all members agree on the ring.
//!
//! ractor_cluster has neither re-dial nor failure detection of its own; a peer marked down has
//! its session stopped so calls waiting on it fail at once instead of at their deadline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage, RactorMessage};

use crate::membership::{self, ring_cell::RingCell};
use crate::peer_table::PeerTable;
use crate::protocol::{Heartbeat, ReplicaMessage, Wire};

/// Messages the cluster actor accepts (local only).
#[derive(RactorMessage)]
pub enum ClusterMessage {
    /// Time to probe every peer and re-dial the unconnected ones.
    Tick,
    /// A heartbeat finished: the peer answered (with its epoch and placement hash) or not.
    Probed {
        /// The peer.
        node: String,
        /// Its epoch and placement hash when it answered.
        answer: Option<(u64, u64)>,
    },
    /// A session to a peer closed.
    SessionClosed(String),
    /// The members changed: link to exactly these peers (id, address).
    Peers(Vec<(String, SocketAddr)>),
    /// Dial this address whatever the ids (a joining node's first member).
    DialSeed(SocketAddr),
    /// A dial attempt finished.
    Dialed {
        /// The peer.
        node: String,
        /// Whether the TCP connection opened.
        ok: bool,
    },
}

/// The cluster actor.
#[derive(Debug, Default)]
pub struct Cluster;

/// What the cluster actor is started with.
pub struct ClusterArgs {
    /// This node's id.
    pub node_id: String,
    /// This node's own IP (its member address): outgoing links are bound to it.
    pub local_ip: IpAddr,
    /// Peers to link to: id and address.
    pub peers: Vec<(String, SocketAddr)>,
    /// The node's ractor_cluster server.
    pub server: ActorRef<NodeServerMessage>,
    /// Shared member state the detector writes.
    pub table: Arc<PeerTable>,
    /// Interval between heartbeats.
    pub heartbeat: Duration,
    /// Consecutive misses before a peer is marked down.
    pub missed_beats: u32,
    /// This node's placement, whose epoch and hash every heartbeat carries.
    pub ring: Arc<RingCell>,
    /// How links are dialled: plain or TLS.
    pub transport: crate::transport::Transport,
}

struct PeerLink {
    addr: SocketAddr,
    misses: u32,
    probing: bool,
    dialing: bool,
    next_dial: Instant,
    backoff: Duration,
}

/// The cluster actor's state.
pub struct ClusterState {
    args: ClusterArgs,
    links: HashMap<String, PeerLink>,
    last_tick: Instant,
}

struct Events(ActorRef<ClusterMessage>);

fn peer_id(ses: &NodeServerSessionInformation) -> Option<String> {
    ses.peer_name
        .as_ref()
        .and_then(|n| n.name.split('@').next().map(str::to_string))
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        if let Some(id) = peer_id(&ses) {
            let _ = self.0.cast(ClusterMessage::SessionClosed(id));
        }
    }
}

/// Dials `addr` (see [`crate::transport`]) with the socket bound to `local_ip` first: a node's links
/// leave from its own member address, so firewall rules between member addresses (partition
/// tests) cut exactly the links between those nodes. A local IP of the other family than the
/// peer (or unspecified) is not bound, leaving the choice to the kernel.
async fn connect_from(
    transport: &crate::transport::Transport,
    server: &ActorRef<NodeServerMessage>,
    local_ip: IpAddr,
    addr: SocketAddr,
    member: Option<&str>,
) -> Result<(), ractor_cluster::ClientConnectErr> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if !local_ip.is_unspecified() && local_ip.is_ipv4() == addr.is_ipv4() {
        socket.bind(SocketAddr::new(local_ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    transport.dialled(server, stream, member).await
}

fn new_link(addr: SocketAddr) -> PeerLink {
    PeerLink {
        addr,
        misses: 0,
        probing: false,
        dialing: false,
        next_dial: Instant::now(),
        backoff: MIN_BACKOFF,
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl ClusterState {
    /// Whether a session to `node` is still open.
    async fn has_session(&self, node: &str) -> bool {
        match self
            .args
            .server
            .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
            .await
        {
            Ok(CallResult::Success(sessions)) => sessions
                .values()
                .any(|s| peer_id(s).as_deref() == Some(node)),
            _ => false,
        }
    }

    /// Marks `node` down; `stop_session` also closes its session, failing every call waiting on
    /// it. A closed session is not stopped again: by then the peer may have dialled a new one.
    fn mark_down(&mut self, node: &str, why: &str, stop_session: bool) {
        if self.args.table.set_up(node, false) {
            tracing::warn!(peer = node, reason = why, "peer marked down");
            if !stop_session {
                return;
            }
            let server = self.args.server.clone();
            let node = node.to_string();
            // Stopping the session fails every call waiting on that peer at once.
            tokio::spawn(async move {
                if let Ok(CallResult::Success(sessions)) = server
                    .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(2)))
                    .await
                {
                    for s in sessions.values() {
                        if peer_id(s).as_deref() == Some(node.as_str()) {
                            s.actor.stop(Some("peer marked down".into()));
                        }
                    }
                }
            });
        }
    }

    /// Dials `node` unless it is the one to dial us: only the lower id of a pair dials, because
    /// simultaneous dials make duplicate sessions whose election closes one, which would read as
    /// the peer leaving and start the next pair of dials.
    fn dial(&mut self, myself: &ActorRef<ClusterMessage>, node: &str) {
        if self.args.node_id.as_str() > node {
            return;
        }
        let Some(link) = self.links.get_mut(node) else {
            return;
        };
        if link.dialing || Instant::now() < link.next_dial {
            return;
        }
        link.dialing = true;
        let (server, local_ip, addr, me, node) = (
            self.args.server.clone(),
            self.args.local_ip,
            link.addr,
            myself.clone(),
            node.to_string(),
        );
        let transport = self.args.transport.clone();
        tokio::spawn(async move {
            let ok = tokio::time::timeout(
                Duration::from_secs(2),
                connect_from(&transport, &server, local_ip, addr, Some(&node)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            let _ = me.cast(ClusterMessage::Dialed { node, ok });
        });
    }

    fn probe(&mut self, myself: &ActorRef<ClusterMessage>, node: &str) {
        let Some(link) = self.links.get_mut(node) else {
            return;
        };
        if link.probing {
            return;
        }
        let Some(replica) = self.args.table.replica(node) else {
            // No session: count a miss and (re-)dial.
            let _ = myself.cast(ClusterMessage::Probed {
                node: node.to_string(),
                answer: None,
            });
            self.dial(myself, node);
            return;
        };
        link.probing = true;
        let placement = self.args.ring.load();
        let beat = Heartbeat {
            from: self.args.node_id.clone(),
            ring_version: placement.epoch,
            ring_hash: self.args.ring.hash(),
        };
        let (timeout, me, node) = (self.args.heartbeat, myself.clone(), node.to_string());
        tokio::spawn(async move {
            let answer = match replica
                .call(
                    |port| ReplicaMessage::Heartbeat(Wire::new(beat), port),
                    Some(timeout),
                )
                .await
            {
                Ok(CallResult::Success(Wire(Ok(b)))) => Some((b.ring_version, b.ring_hash)),
                _ => None,
            };
            let _ = me.cast(ClusterMessage::Probed { node, answer });
        });
    }
}

impl Actor for Cluster {
    type Msg = ClusterMessage;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterMessage>,
        args: ClusterArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        args.server.cast(NodeServerMessage::SubscribeToEvents {
            id: "ringkv-cluster".into(),
            subscription: Box::new(Events(myself.clone())),
        })?;
        let links = args
            .peers
            .iter()
            .map(|(id, addr)| (id.clone(), new_link(*addr)))
            .collect();
        myself.send_interval(args.heartbeat, || ClusterMessage::Tick);
        let mut state = ClusterState {
            args,
            links,
            last_tick: Instant::now(),
        };
        for id in state.args.table.others() {
            state.dial(&myself, &id);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterMessage>,
        message: ClusterMessage,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ClusterMessage::Tick => {
                // A tick far behind schedule means this process stalled (SIGSTOP, starvation):
                // the probes that timed out meanwhile say nothing about the peers.
                let now = Instant::now();
                if now.duration_since(state.last_tick) > state.args.heartbeat * 2 {
                    for link in state.links.values_mut() {
                        link.misses = 0;
                    }
                }
                state.last_tick = now;
                for id in state.args.table.others() {
                    state.probe(&myself, &id);
                }
            }
            ClusterMessage::Probed { node, answer } => {
                let Some(link) = state.links.get_mut(&node) else {
                    return Ok(());
                };
                link.probing = false;
                match answer {
                    Some((epoch, hash)) => {
                        link.misses = 0;
                        state.args.table.set_ring(&node, epoch, hash);
                        let mine = state.args.ring.load();
                        if epoch > mine.epoch {
                            membership::observed(&node, epoch);
                        } else if epoch == mine.epoch && hash != state.args.ring.hash() {
                            tracing::error!(peer = %node, epoch, "peer holds a different placement at this epoch");
                        }
                        if state.args.table.set_up(&node, true) {
                            tracing::info!(peer = %node, "peer up");
                        }
                    }
                    None => {
                        link.misses += 1;
                        if link.misses >= state.args.missed_beats {
                            state.mark_down(&node, "missed heartbeats", true);
                        }
                    }
                }
            }
            ClusterMessage::SessionClosed(node) => {
                // A duplicate session losing ractor_cluster's election closes while another one
                // to the same peer lives on: that peer has not gone anywhere.
                if state.links.contains_key(&node) && !state.has_session(&node).await {
                    state.mark_down(&node, "session closed", false);
                    state.dial(&myself, &node);
                }
            }
            ClusterMessage::Peers(peers) => {
                state
                    .links
                    .retain(|id, _| peers.iter().any(|(p, _)| p == id));
                for (id, addr) in peers {
                    if id == state.args.node_id {
                        continue;
                    }
                    let known = state.links.contains_key(&id);
                    let link = state
                        .links
                        .entry(id.clone())
                        .or_insert_with(|| new_link(addr));
                    let moved = link.addr != addr;
                    link.addr = addr;
                    // Only new, moved or down peers: dialling a live session again makes
                    // ractor_cluster replace it, which drops the peer's groups for a moment and
                    // fails every batch in flight to it.
                    if !known || moved || !state.args.table.is_up(&id) {
                        state.dial(&myself, &id);
                    }
                }
            }
            ClusterMessage::DialSeed(addr) => {
                let (server, local_ip) = (state.args.server.clone(), state.args.local_ip);
                let transport = state.args.transport.clone();
                tokio::spawn(async move {
                    let dialed = tokio::time::timeout(
                        Duration::from_secs(2),
                        connect_from(&transport, &server, local_ip, addr, None),
                    )
                    .await;
                    if !matches!(dialed, Ok(Ok(()))) {
                        tracing::warn!(%addr, "could not dial the member to join through");
                    }
                });
            }
            ClusterMessage::Dialed { node, ok } => {
                if let Some(link) = state.links.get_mut(&node) {
                    link.dialing = false;
                    if ok {
                        link.backoff = MIN_BACKOFF;
                    } else {
                        link.next_dial = Instant::now() + link.backoff;
                        link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        Ok(())
    }
}
