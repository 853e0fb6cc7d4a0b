//! The process's dials to members. Sessions and the groups they publish are process-wide, so
//! one table serves every `Client` of the process: a member being dialled by one client is not
//! dialled again by the next, and a client can tell a member that may still appear (its dial
//! is under way) from one that cannot (its dial failed).
//!
//! A member that accepts TCP but never completes ractor_cluster's handshake (a SIGSTOPped
//! process: the kernel accepts for it) looks like a dial under way until the connect timeout;
//! nothing on the keyed request path waits for one (see `Client::send`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorId, ActorRef};
use ractor_cluster::node::{NodeEventSubscription, NodeServerSessionInformation};
use ractor_cluster::{NodeServerMessage, NodeSessionMessage};

/// Least time between two dials to one member: a session may take a moment to authenticate,
/// and a second session to a member makes both ends elect one and close the other.
pub(super) const REDIAL_EVERY: Duration = Duration::from_secs(1);

/// Where a member's latest dial stands.
#[derive(Debug, Clone)]
enum State {
    /// The TCP connect is under way; it gives up at this instant.
    Connecting(Instant),
    /// A session exists (made by this dial or found up): authenticated, or still handshaking.
    Opened,
    /// The dial failed: this is why.
    Failed(String),
}

/// A member's latest dial.
#[derive(Debug)]
struct Dial {
    /// When it began; also its identity, so a late outcome cannot overwrite a newer dial.
    started: Instant,
    state: State,
}

/// Outgoing sessions that have opened but not authenticated yet: peer address and session.
type Handshakes = Arc<Mutex<HashMap<ActorId, (String, ActorRef<NodeSessionMessage>)>>>;

/// Every member's latest dial, by member id, and the handshakes under way.
#[derive(Debug, Default)]
pub(super) struct Dials {
    table: Mutex<HashMap<String, Dial>>,
    handshakes: Handshakes,
}

/// Keeps [`Dials`]' handshakes current from the node server's session events.
struct HandshakeWatch(Handshakes);

impl NodeEventSubscription for HandshakeWatch {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        if !ses.is_server {
            let entry = (ses.peer_addr.clone(), ses.actor.clone());
            lock(&self.0).insert(ses.actor.get_id(), entry);
        }
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        lock(&self.0).remove(&ses.actor.get_id());
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        lock(&self.0).remove(&ses.actor.get_id());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dials {
    /// Subscribes to `server`'s session events, which tell which handshakes are under way.
    pub fn watch(&self, server: &ActorRef<NodeServerMessage>) {
        let _ = server.cast(NodeServerMessage::SubscribeToEvents {
            id: "ringkv-client-dials".into(),
            subscription: Box::new(HandshakeWatch(self.handshakes.clone())),
        });
    }

    /// Claims a new dial to `node` whose TCP connect may take `limit`, returning its identity;
    /// `None` when it must not be dialled now: a TCP connect to it is under way, or it was
    /// dialled less than [`REDIAL_EVERY`] ago. With `retry_failed`, a failed last dial does not
    /// count (a new client retries at once a member an earlier one found refused; requests
    /// re-dial a refused member at most once a second).
    pub fn begin(&self, node: &str, limit: Duration, retry_failed: bool) -> Option<Instant> {
        let mut table = self.lock();
        let now = Instant::now();
        if let Some(d) = table.get(node) {
            match d.state {
                State::Connecting(until) if now < until => return None,
                State::Failed(_) if retry_failed => {}
                _ if now.duration_since(d.started) < REDIAL_EVERY => return None,
                _ => {}
            }
        }
        table.insert(
            node.to_string(),
            Dial {
                started: now,
                state: State::Connecting(now + limit),
            },
        );
        Some(now)
    }

    /// Records how dial `started` to `node` ended, unless a newer dial has replaced it.
    pub fn finish(&self, node: &str, started: Instant, result: Result<(), String>) {
        if let Some(d) = self.lock().get_mut(node)
            && d.started == started
        {
            d.state = match result {
                Ok(()) => State::Opened,
                Err(e) => State::Failed(e),
            };
        }
    }

    /// True while `node`'s latest dial may still make it visible: its TCP connect is under way,
    /// or it opened a session less than `window` after it began (the handshake may be pending).
    pub fn in_flight(&self, node: &str, window: Duration) -> bool {
        self.lock().get(node).is_some_and(|d| match d.state {
            State::Connecting(until) => Instant::now() < until,
            State::Opened => d.started.elapsed() < window,
            State::Failed(_) => false,
        })
    }

    /// Why `node`'s latest dial failed, when it did.
    pub fn failure(&self, node: &str) -> Option<String> {
        match &self.lock().get(node)?.state {
            State::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Stops every outgoing session to `addr` still handshaking. ractor_cluster never times
    /// out a handshake: a member that accepts TCP but never answers (SIGSTOP) would otherwise
    /// keep every earlier dial's session and socket for the life of the process. Called just
    /// before a new dial to that member, at least [`REDIAL_EVERY`] after the previous one; a
    /// healthy handshake takes milliseconds.
    fn stop_stalled(&self, addr: SocketAddr) {
        let label = addr.to_string();
        let stalled: Vec<_> = lock(&self.handshakes)
            .values()
            .filter(|(peer, _)| *peer == label)
            .map(|(_, actor)| actor.clone())
            .collect();
        for actor in stalled {
            tracing::debug!(%addr, "stopping a stalled handshake before dialling again");
            actor.stop(Some("handshake stalled; dialling again".into()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Dial>> {
        lock(&self.table)
    }
}

/// The client node's authenticated sessions (empty when the node server does not answer).
async fn sessions(server: &ActorRef<NodeServerMessage>) -> Vec<NodeServerSessionInformation> {
    match server
        .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(5)))
        .await
    {
        Ok(CallResult::Success(sessions)) => sessions.into_values().collect(),
        _ => Vec::new(),
    }
}

/// Opens a session to member `node` at `addr` unless one to it is up, giving the TCP connect
/// `limit` (a member whose address drops packets would otherwise hold it for the kernel's SYN
/// retries, minutes). Ok once a session exists; authentication then goes on in the background.
pub(super) async fn open_session(
    dials: &Dials,
    transport: &ringkv_actors::transport::Transport,
    server: &ActorRef<NodeServerMessage>,
    node: &str,
    addr: SocketAddr,
    limit: Duration,
) -> Result<(), String> {
    let up = sessions(server)
        .await
        .iter()
        .any(|s| s.peer_name.as_ref().and_then(|n| n.name.split('@').next()) == Some(node));
    if up {
        return Ok(());
    }
    dials.stop_stalled(addr);
    match tokio::time::timeout(limit, transport.connect(server, addr, node)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_dial_under_way_is_not_repeated() {
        let d = Dials::default();
        let first = d.begin("a", LIMIT, true).expect("first dial");
        assert!(d.in_flight("a", LIMIT));
        assert_eq!(
            d.begin("a", LIMIT, true),
            None,
            "its TCP connect is under way"
        );
        d.finish("a", first, Ok(()));
        assert!(d.in_flight("a", LIMIT), "handshake may be pending");
        assert!(!d.in_flight("a", Duration::ZERO), "past the window");
        assert_eq!(
            d.begin("a", LIMIT, true),
            None,
            "opened less than a second ago"
        );
    }

    #[test]
    fn a_failed_dial_is_retried_by_a_new_client_only() {
        let d = Dials::default();
        let first = d.begin("a", LIMIT, false).unwrap();
        d.finish("a", first, Err("refused".into()));
        assert!(!d.in_flight("a", LIMIT));
        assert_eq!(d.failure("a").as_deref(), Some("refused"));
        assert_eq!(d.begin("a", LIMIT, false), None, "requests wait a second");
        let second = d.begin("a", LIMIT, true).expect("a new client retries");
        // The first dial's outcome, arriving late, must not overwrite the second's state.
        d.finish("a", first, Err("stale".into()));
        assert!(d.in_flight("a", LIMIT));
        d.finish("a", second, Ok(()));
        assert_eq!(d.failure("a"), None);
    }
}
