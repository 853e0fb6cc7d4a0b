//! The Rust client SDK: typed messages to the cluster's router actors over ractor_cluster.
//!
//! The process runs one small ractor_cluster node for all its clients; a [`Client`] dials the
//! members listed in its configuration (cookie-authenticated), reusing live connections, and
//! sends each request to a router actor of a node. Clone a `Client` freely. One process talks
//! to one cluster: node ids name process-wide groups.
//!
//! A client serves as soon as enough members are reachable (see [`Client::connect`]) and
//! dials the rest in the background: a request goes to the members whose actors are visible
//! and skips the others, so a member that never completes its handshake (a SIGSTOPped process
//! accepts TCP but never answers) costs a keyed request nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};
use ringkv_actors::core::ring::Ring;
use ringkv_actors::protocol::{
    BatchReply, BatchRequest, GetReply, GetRequest, PingReply, PingRequest, PutReply, PutRequest,
    RouterMessage, Wire, admin_group, router_group,
};
use serde_bytes::ByteBuf;

pub use ringkv_actors::protocol::KvError;

mod admin;
mod batcher;
mod dials;
mod membership;
mod options;
mod suspects;

pub use options::{ClientConfig, Context, GetResult, RequestOptions};

/// Where requests go: the members and, when known, the ring placing keys on them.
#[derive(Debug)]
struct Routing {
    /// Members, in order: (node id, address).
    members: Vec<(String, SocketAddr)>,
    /// The ring over `members`; `None` sends every request to any member.
    ring: Option<Ring>,
}

struct Inner {
    /// Cookie, timeouts and the members first given; `routing` is what requests use.
    config: ClientConfig,
    /// Replaced whole by [`Client::set_routing`]; a request routes on one snapshot throughout.
    routing: RwLock<Arc<Routing>>,
    next: AtomicUsize,
    suspects: suspects::Suspects,
    node: &'static ClientNode,
    /// The ring epoch `routing` was learned at (0: from the configuration).
    epoch: std::sync::atomic::AtomicU64,
    /// Requests queued per node, sent as batches.
    batchers: batcher::Batchers,
}

/// A batch answer of the wrong kind: the node broke the protocol.
fn mismatched() -> KvError {
    KvError::BadRequest("the node answered a batched request with another kind of reply".into())
}

/// How long `connect` waits for a member's ring before serving on the configuration's.
const RING_FETCH: Duration = Duration::from_secs(1);

/// How long a background re-dial may wait for a member's TCP connect.
const REDIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a wait for members to become visible looks again (pg has no cheap wake-up).
const POLL: Duration = Duration::from_millis(2);

/// Least time [`Client::connect`] gives the other members, once one is visible, before it
/// serves with fewer than a majority; it gives them as long as the first one took when that
/// is longer (a healthy member's handshake takes about as long as another's).
const MIN_SETTLE: Duration = Duration::from_millis(20);

/// Handle on this process's one client node.
struct ClientNode {
    cookie: String,
    /// The TLS settings its links were made with (`None`: plain).
    tls: Option<ringkv_actors::tls::TlsSettings>,
    transport: ringkv_actors::transport::Transport,
    server: ActorRef<NodeServerMessage>,
    runtime: tokio::runtime::Handle,
    /// Every member's latest dial, shared by the process's clients as its sessions are.
    dials: dials::Dials,
}

/// The process's client node. ractor's registry and process groups are process-wide and a
/// second `NodeServer` would reuse the first one's session ids (so remote actor ids would
/// collide); every `Client` therefore shares one node, run on a runtime of its own so it
/// outlives the runtime of whichever caller connected first.
static CLIENT_NODE: std::sync::OnceLock<Result<ClientNode, String>> = std::sync::OnceLock::new();

fn client_node(
    cookie: &str,
    tls: Option<&ringkv_actors::tls::TlsSettings>,
) -> Result<&'static ClientNode, KvError> {
    let node = CLIENT_NODE.get_or_init(|| {
        let cookie = cookie.to_string();
        let tls = tls.cloned();
        let transport = match &tls {
            None => ringkv_actors::transport::Transport::plain(),
            Some(s) => match ringkv_actors::tls::Tls::load(s.clone()) {
                Ok(t) => ringkv_actors::transport::Transport::tls(t),
                Err(e) => return Err(format!("tls: {e}")),
            },
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ringkv-client".into())
            .spawn(move || {
                // One worker: the node only moves frames between sockets and callers, and a
                // second thread cost more in cross-thread wake-ups than it added (with the
                // bench's load on this runtime, one worker drove a 3-node local cluster to
                // 7-9% more quorum reads and 20% more pings than two).
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("ringkv-client-rt")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("client runtime failed to start: {e}")));
                        return;
                    }
                };
                let handle = rt.handle().clone();
                rt.block_on(async move {
                    let server = NodeServer::new(
                        0,
                        cookie.clone(),
                        format!("ringkv-client-{}", std::process::id()),
                        "127.0.0.1".into(),
                        transport.node_server_mode(),
                        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
                    )
                    .with_listen_addr([127, 0, 0, 1].into());
                    let started = Actor::spawn(None, server, ())
                        .await
                        .map(|(server, _)| {
                            let dials = dials::Dials::default();
                            dials.watch(&server);
                            ClientNode {
                                cookie,
                                tls,
                                transport,
                                server,
                                runtime: handle,
                                dials,
                            }
                        })
                        .map_err(|e| format!("client node failed to start: {e}"));
                    let _ = tx.send(started);
                    // Keep the runtime alive for the life of the process.
                    std::future::pending::<()>().await;
                });
            })
            .map_err(|e| format!("client thread failed to start: {e}"))
            .and_then(|_| rx.recv().map_err(|e| e.to_string())?)
    });
    let node = node
        .as_ref()
        .map_err(|e| KvError::NotConnected(e.clone()))?;
    if node.cookie != cookie || node.tls.as_ref() != tls {
        return Err(KvError::InvalidConfig(
            "this process is already connected to a cluster with another cookie or TLS setup; use one cluster per process".into(),
        ));
    }
    Ok(node)
}

/// True when `node`'s router and admin actors are visible, the groups a client uses.
fn published(node: &str) -> bool {
    has_router(node) && !ractor::pg::get_members(&admin_group(node)).is_empty()
}

/// True when a router actor of `node` is visible.
fn has_router(node: &str) -> bool {
    !ractor::pg::get_members(&router_group(node)).is_empty()
}

/// A connection to a ringkv cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("members", &self.routing().members)
            .finish()
    }
}

impl Client {
    /// Dials every member and returns as soon as enough serve requests, dialling the rest in
    /// the background: once every member still being dialled is visible, or a majority of the
    /// members are, or one is and the others have had a moment more (as long again as the
    /// first took, at least 20 ms). Fails with `NotConnected`, naming the members it tried,
    /// when none is visible within the connect timeout or every dial has failed.
    pub async fn connect(config: ClientConfig) -> Result<Client, KvError> {
        let node = client_node(&config.cookie, config.tls.as_ref())?;
        let ids: Vec<String> = config.members.iter().map(|(id, _)| id.clone()).collect();
        let ring = config.ring.and_then(|(q, n)| Ring::new(&ids, q, n).ok());
        let members = config.members.clone();
        let client = Client {
            inner: Arc::new(Inner {
                config,
                routing: RwLock::new(Arc::new(Routing {
                    members: Vec::new(),
                    ring: None,
                })),
                next: AtomicUsize::new(0),
                epoch: Default::default(),
                suspects: Default::default(),
                node,
                batchers: Default::default(),
            }),
        };
        client.set_routing(members, ring);
        client.wait_serving().await?;
        // The nodes' ring, not the configuration's, decides where requests go: members may
        // have joined or left since the file was written.
        let _ = tokio::time::timeout(RING_FETCH, client.refresh_ring()).await;
        client.follow_ring();
        Ok(client)
    }

    /// Replaces the members and ring that requests route on, and dials (in the background)
    /// every member without a session. The seam for a client that learns a newer ring from the
    /// nodes: requests under way finish on the routing they started with, later ones use the
    /// new one. `ring`, when given, must place keys on `members`' ids (`None`: any member
    /// coordinates any key). Members no longer listed keep their sessions but get no requests.
    pub(crate) fn set_routing(&self, members: Vec<(String, SocketAddr)>, ring: Option<Ring>) {
        let routing = Arc::new(Routing { members, ring });
        *self
            .inner
            .routing
            .write()
            .unwrap_or_else(|p| p.into_inner()) = routing.clone();
        for (id, addr) in &routing.members {
            // A new routing retries at once a member an earlier dial found refused.
            self.dial(id, *addr, self.inner.config.connect_timeout, true);
        }
    }

    /// The routing requests use now.
    fn routing(&self) -> Arc<Routing> {
        self.inner
            .routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until enough members are visible to serve (see [`Client::connect`]).
    async fn wait_serving(&self) -> Result<(), KvError> {
        let cfg = &self.inner.config;
        let dials = &self.inner.node.dials;
        let routing = self.routing();
        let started = Instant::now();
        let deadline = started + cfg.connect_timeout;
        let majority = routing.members.len() / 2 + 1;
        let mut first_seen: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let ready = routing
                .members
                .iter()
                .filter(|(id, _)| published(id))
                .count();
            // Members that may still appear: their dial is under way or handshaking. A member
            // that accepted TCP but never answers stays here until the connect timeout.
            let pending = routing
                .members
                .iter()
                .filter(|(id, _)| !published(id) && dials.in_flight(id, cfg.connect_timeout))
                .count();
            if ready > 0 {
                let first = *first_seen.get_or_insert(now);
                let settle = first.duration_since(started).max(MIN_SETTLE);
                if pending == 0 || ready >= majority || now >= first + settle || now >= deadline {
                    return Ok(());
                }
            } else if pending == 0 || now >= deadline {
                let tried: Vec<String> = routing
                    .members
                    .iter()
                    .map(|(i, a)| format!("{i} at {a}"))
                    .collect();
                let failures: Vec<String> = routing
                    .members
                    .iter()
                    .filter_map(|(i, a)| dials.failure(i).map(|e| format!("{i} at {a}: {e}")))
                    .collect();
                let detail = if failures.is_empty() {
                    "connected but no node answered (wrong cookie, or TLS on one side only?)"
                        .to_string()
                } else {
                    failures.join("; ")
                };
                return Err(KvError::NotConnected(format!(
                    "no member reachable (tried {}): {detail}",
                    tried.join(", ")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `visible(node)`, dialling `node` when no dial to it is under way, for as
    /// long as the dial may still succeed (its connect timeout) and at most until `deadline`;
    /// false when it did not become visible. Only for requests that name their node (admin
    /// calls, `via`, pings): a keyed request never waits, it goes to a visible member.
    async fn wait_visible(&self, node: &str, deadline: Instant, visible: fn(&str) -> bool) -> bool {
        if visible(node) {
            return true;
        }
        self.redial(node);
        let dials = &self.inner.node.dials;
        loop {
            if visible(node) {
                return true;
            }
            if Instant::now() >= deadline
                || !dials.in_flight(node, self.inner.config.connect_timeout)
            {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Connects to the cluster a `cluster.toml` describes.
    pub async fn connect_file(path: &Path) -> Result<Client, KvError> {
        Client::connect(ClientConfig::from_file(path)?).await
    }

    /// Node ids that currently have reachable routers.
    pub fn reachable_nodes(&self) -> Vec<String> {
        self.routing()
            .members
            .iter()
            .filter(|(id, _)| has_router(id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A router of `node` (waiting for a dial to it under way, until `deadline`), or of any
    /// reachable member when `None`.
    async fn router(
        &self,
        node: Option<&str>,
        deadline: Instant,
    ) -> Result<ActorRef<RouterMessage>, KvError> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let candidates = match node {
            Some(id) => {
                self.wait_visible(id, deadline, has_router).await;
                vec![id.to_string()]
            }
            None => self.candidates(None, false),
        };
        for id in &candidates {
            if let Some(r) = self.router_of(id, n) {
                return Ok(r);
            }
        }
        Err(KvError::NotConnected(match node {
            Some(id) => format!("node {id} is not reachable"),
            None => "no member is reachable".into(),
        }))
    }

    /// A router of `node`, when connected; otherwise re-dials it in the background.
    fn router_of(&self, node: &str, n: usize) -> Option<ActorRef<RouterMessage>> {
        let routers = ractor::pg::get_members(&router_group(node));
        if routers.is_empty() {
            self.redial(node);
            return None;
        }
        Some(routers[n % routers.len()].clone().into())
    }

    /// Dials a member that has no session, at most once a second.
    fn redial(&self, node: &str) {
        let routing = self.routing();
        if let Some((_, addr)) = routing.members.iter().find(|(id, _)| id == node) {
            self.dial(node, *addr, REDIAL_TIMEOUT, false);
        }
    }

    /// Dials `node` at `addr` in the background on the client node's runtime (which serves the
    /// session), unless a dial to it is under way or was made less than a second ago (see
    /// `Dials::begin`); the TCP connect may take `limit`.
    fn dial(&self, node: &str, addr: SocketAddr, limit: Duration, retry_failed: bool) {
        let cn = self.inner.node;
        let Some(started) = cn.dials.begin(node, limit, retry_failed) else {
            return;
        };
        let node = node.to_string();
        cn.runtime.spawn(async move {
            let result =
                dials::open_session(&cn.dials, &cn.transport, &cn.server, &node, addr, limit).await;
            cn.dials.finish(&node, started, result);
        });
    }

    /// Nodes to try, best first: for a key, its replicas (a write's first replica first, so
    /// one node orders the writes of a key; reads spread over them), then everyone else.
    fn candidates(&self, key: Option<&[u8]>, write: bool) -> Vec<String> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let routing = self.routing();
        let mut order: Vec<String> = Vec::new();
        if let (Some(ring), Some(key)) = (&routing.ring, key) {
            let prefs = ring.preference_list(ring.partition_of(key));
            let start = if write { 0 } else { n % prefs.len() };
            order.extend((0..prefs.len()).map(|i| prefs[(start + i) % prefs.len()].clone()));
        }
        let members = &routing.members;
        for i in 0..members.len() {
            let id = &members[(n + i) % members.len()].0;
            if !order.contains(id) {
                order.push(id.clone());
            }
        }
        order
    }

    /// Sends a request to the best reachable node, moving to the next one (once) when the
    /// connection to a node is lost or the node holds the request past the attempt timeout
    /// (it is then suspected for a while and tried last), and for a read also when the node
    /// answers `Unavailable`. A write retried this way may be applied twice; both versions
    /// carry the same bytes and read back as one value.
    async fn send<R>(
        &self,
        key: &[u8],
        write: bool,
        via: Option<&str>,
        timeout: Duration,
        request: &(dyn Fn(u64) -> BatchRequest + Sync),
        answer: fn(BatchReply) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let deadline = Instant::now() + timeout;
        let n = self.inner.next.load(Ordering::Relaxed);
        let mut last = KvError::NotConnected("no member is reachable".into());
        let mut retried = false;
        let nodes = match via {
            Some(id) => vec![id.to_string()],
            None => {
                let mut nodes = self.candidates(Some(key), write);
                self.inner.suspects.order(&mut nodes);
                nodes
            }
        };
        for (i, node) in nodes.iter().enumerate() {
            // A member not visible yet is skipped (and re-dialled in the background): it may be
            // a process that accepts TCP but never answers. Only a request naming its node
            // waits for that node's dial under way.
            if via.is_some() {
                self.wait_visible(node, deadline, has_router).await;
            }
            let Some(router) = self.router_of(node, n) else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KvError::Timeout);
            }
            let may_retry = !retried && i + 1 < nodes.len();
            let attempt = if may_retry {
                left.min(self.inner.config.attempt_timeout)
            } else {
                left
            };
            // The node must not apply the request once this attempt is given up.
            let not_after = unix_ms() + attempt.as_millis() as u64;
            match self
                .batched(node, router, write, attempt, request(not_after), answer)
                .await
            {
                Err(KvError::NotConnected(m)) if !retried => {
                    retried = true;
                    last = KvError::NotConnected(m);
                }
                // A node that sees too few replicas up may only lag the others' view (just
                // resumed, its sessions still re-dialing); a read is safe to ask elsewhere. A
                // write is not: it may have reached some replicas, and a second coordinator
                // would mint a concurrent version of it.
                Err(e @ KvError::Unavailable { .. })
                    if may_retry && !write && Instant::now() < deadline =>
                {
                    retried = true;
                    last = e;
                }
                Err(KvError::Timeout) if may_retry && attempt < left => {
                    if self.inner.suspects.suspect(node) {
                        self.probe(node);
                    }
                    retried = true;
                    last = KvError::Timeout;
                }
                other => {
                    if other.is_ok() {
                        self.inner.suspects.clear(node);
                    }
                    return other;
                }
            }
        }
        Err(last)
    }

    fn timeout(&self, opts: Option<&RequestOptions>) -> Duration {
        opts.and_then(|o| o.timeout)
            .unwrap_or(self.inner.config.timeout)
    }

    /// Sends `request` to `router` through `node`'s batching queue and waits up to `attempt`
    /// for its answer.
    async fn batched<R>(
        &self,
        node: &str,
        router: ActorRef<RouterMessage>,
        write: bool,
        attempt: Duration,
        request: BatchRequest,
        answer: fn(BatchReply) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = batcher::Job {
            request,
            router,
            deadline: Instant::now() + attempt,
            reply,
        };
        self.inner
            .batchers
            .submit(&self.inner.node.runtime, node, write, job);
        match tokio::time::timeout(attempt, rx).await {
            Ok(Ok(Ok(reply))) => answer(reply),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(KvError::NotConnected(
                "the request's batch was dropped; outcome unknown".into(),
            )),
            Err(_) => Err(KvError::Timeout),
        }
    }

    /// Writes `value` under `key` (a blind write: it supersedes what the coordinating replica holds).
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Context, KvError> {
        self.put_with(key, value, &RequestOptions::default()).await
    }

    /// Writes with options; with a context, supersedes exactly the versions that context saw.
    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: &RequestOptions,
    ) -> Result<Context, KvError> {
        self.write(key.as_ref(), Some(value.as_ref()), opts).await
    }

    /// Deletes `key` (a tombstone; reads then find nothing).
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Context, KvError> {
        self.delete_with(key, &RequestOptions::default()).await
    }

    /// Deletes with options.
    pub async fn delete_with(
        &self,
        key: impl AsRef<[u8]>,
        opts: &RequestOptions,
    ) -> Result<Context, KvError> {
        self.write(key.as_ref(), None, opts).await
    }

    async fn write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        opts: &RequestOptions,
    ) -> Result<Context, KvError> {
        let timeout = self.timeout(Some(opts));
        let request = PutRequest {
            key: ByteBuf::from(key.to_vec()),
            value: value.map(|v| ByteBuf::from(v.to_vec())),
            context: opts.context.as_ref().map(|c| ByteBuf::from(c.0.clone())),
            w: opts.w,
            timeout_ms: Some(timeout.as_millis() as u64),
            not_after_ms: None,
        };
        let reply: PutReply = self
            .send(
                key,
                true,
                opts.via.as_deref(),
                timeout,
                &|not_after| {
                    BatchRequest::Put(PutRequest {
                        not_after_ms: Some(not_after),
                        ..request.clone()
                    })
                },
                |reply| match reply {
                    BatchReply::Put(r) => r,
                    BatchReply::Get(_) => Err(mismatched()),
                },
            )
            .await?;
        Ok(Context(reply.context.into_vec()))
    }

    /// Reads `key`: every live version and the context covering them.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<GetResult, KvError> {
        self.get_with(key, &RequestOptions::default()).await
    }

    /// The runtime the client's node runs on: one worker thread, shared by every `Client` of
    /// the process and never shut down (tasks spawned here outlive the caller's runtime).
    /// Requests made from tasks spawned here skip a wake-up across threads on the way out and
    /// back, which is what a load generator wants. Nothing that blocks may run here, nor a loop
    /// that retries failures without awaiting a pause (with no node reachable a request fails
    /// at once, and the loop would starve the re-dials): every request of the process runs on
    /// this thread.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.inner.node.runtime.clone()
    }

    /// Reads with options.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        opts: &RequestOptions,
    ) -> Result<GetResult, KvError> {
        let timeout = self.timeout(Some(opts));
        let request = GetRequest {
            key: ByteBuf::from(key.as_ref().to_vec()),
            r: opts.r,
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        let reply: GetReply = self
            .send(
                key.as_ref(),
                false,
                opts.via.as_deref(),
                timeout,
                &|_| BatchRequest::Get(request.clone()),
                |reply| match reply {
                    BatchReply::Get(r) => r,
                    BatchReply::Put(_) => Err(mismatched()),
                },
            )
            .await?;
        Ok(GetResult {
            values: reply.values.into_iter().map(ByteBuf::into_vec).collect(),
            context: Context(reply.context.into_vec()),
        })
    }

    /// Probes a suspected node until it answers a ping, then clears the suspicion. Holds the
    /// client weakly: probing ends with the last handle.
    fn probe(&self, node: &str) {
        let (inner, node) = (Arc::downgrade(&self.inner), node.to_string());
        self.inner.node.runtime.spawn(async move {
            loop {
                tokio::time::sleep(suspects::PROBE_EVERY).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let client = Client { inner };
                // A member the routing no longer lists gets no requests to hold.
                if !client.routing().members.iter().any(|(id, _)| *id == node) {
                    client.inner.suspects.clear(&node);
                    return;
                }
                let Some(router) = client.router_of(&node, 0) else {
                    continue;
                };
                let ping = router
                    .call(
                        |port| RouterMessage::Ping(Wire::new(PingRequest {}), port),
                        Some(suspects::PROBE_EVERY),
                    )
                    .await;
                if matches!(ping, Ok(CallResult::Success(_))) {
                    client.inner.suspects.clear(&node);
                    return;
                }
            }
        });
    }

    /// One bare round trip to a router of `node` (any node when `None`); returns who answered.
    pub async fn ping(&self, node: Option<&str>) -> Result<String, KvError> {
        let timeout = self.timeout(None);
        let router = self.router(node, Instant::now() + timeout).await?;
        match router
            .call(
                |port| RouterMessage::Ping(Wire::new(PingRequest {}), port),
                Some(timeout),
            )
            .await
        {
            Ok(CallResult::Success(Wire(Ok(PingReply { node })))) => Ok(node),
            Ok(CallResult::Timeout) => Err(KvError::Timeout),
            _ => Err(KvError::NotConnected("ping failed".into())),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
