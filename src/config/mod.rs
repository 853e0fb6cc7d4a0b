//! `cluster.toml`: reading (file plus `RINGKV__SECTION__KEY` environment overrides) and
//! validation with messages that say what to fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringkv_actors::core::limits::Limits;
use ringkv_actors::core::quorum::Consistency;
use ringkv_actors::core::version::ConflictPolicy;
use ringkv_actors::membership::transfer::TransferSettings;
use ringkv_actors::settings::{Member, NodeSettings, RepairSettings, RestartBudget};
use ringkv_actors::storage::commit_log::LogDurability;
use ringkv_actors::tls::Tls;
use ringkv_actors::transport::Transport;
use serde::{Deserialize, Serialize};

pub mod metrics;
pub mod resp;
pub mod tls;

/// A configuration problem, phrased as what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster-wide settings fixed at creation.
    pub cluster: ClusterSection,
    /// Every member node.
    pub members: Vec<MemberConfig>,
    /// Storage engine settings.
    #[serde(default)]
    pub storage: StorageSection,
    /// Size limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// How concurrent writes are kept.
    #[serde(default)]
    pub conflicts: ConflictsSection,
    /// Per-node process settings.
    #[serde(default)]
    pub node: NodeSection,
    /// Default consistency of requests.
    #[serde(default)]
    pub consistency: ConsistencySection,
    /// Client defaults (SDK, CLI, bench).
    #[serde(default)]
    pub client: ClientSection,
    /// Hinted handoff, anti-entropy and tombstone reaping.
    #[serde(default)]
    pub repair: RepairSection,
    /// Runtime membership changes: ownership handoff throttle and limits.
    #[serde(default)]
    pub membership: MembershipSection,
    /// Automatic scaling from traffic.
    #[serde(default)]
    pub autoscale: crate::autoscale::config::AutoscaleSection,
    /// The Redis-protocol listener.
    #[serde(default)]
    pub resp: resp::RespSection,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: metrics::MetricsSection,
    /// Mutual TLS between nodes and from clients.
    #[serde(default)]
    pub tls: tls::TlsSection,
}

/// `[membership]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSection {
    /// Most MB per second one ownership transfer receives (0 = unthrottled).
    pub handoff_mb_per_sec: f64,
    /// Partitions one node streams in at once.
    pub max_inbound_per_node: usize,
    /// Partitions one node serves to new replicas at once.
    pub max_outbound_per_node: usize,
    /// Most keys per handoff chunk.
    pub chunk_keys: u32,
    /// Most KiB per handoff chunk.
    pub chunk_kb: u32,
}

impl Default for MembershipSection {
    fn default() -> Self {
        MembershipSection {
            handoff_mb_per_sec: 50.0,
            max_inbound_per_node: 4,
            max_outbound_per_node: 2,
            chunk_keys: 4096,
            chunk_kb: 256,
        }
    }
}

/// `[repair]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairSection {
    /// How often waiting hints are offered back to owners that are up again, ms.
    pub handoff_interval_ms: u64,
    /// Most hints a node hands back per second.
    pub handoff_keys_per_sec: u32,
    /// Keys per handoff or anti-entropy chunk.
    pub chunk_keys: usize,
    /// How often each partition is exchanged with its replicas, ms; 0 turns anti-entropy off.
    pub aae_interval_ms: u64,
    /// Most keys anti-entropy repairs per second, per node.
    pub aae_keys_per_sec: u32,
    /// Age a tombstone held by every replica must reach before it is removed, seconds.
    pub tombstone_grace_secs: u64,
}

impl Default for RepairSection {
    fn default() -> Self {
        let r = RepairSettings::default();
        RepairSection {
            handoff_interval_ms: r.handoff_interval.as_millis() as u64,
            handoff_keys_per_sec: r.handoff_keys_per_sec,
            chunk_keys: r.chunk_keys,
            aae_interval_ms: r.aae_interval.as_millis() as u64,
            aae_keys_per_sec: r.aae_keys_per_sec,
            tombstone_grace_secs: r.tombstone_grace.as_secs(),
        }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Shared secret of nodes and clients (ractor_cluster magic cookie).
    pub cookie: String,
    /// Ring size Q: a power of two, fixed for the cluster's life.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Replication factor N.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Data folder; relative paths are relative to the configuration file's folder.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

/// One `[[members]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id: letters, digits, `-` and `_`.
    pub id: String,
    /// `ip:port` the node listens on.
    pub addr: String,
}

/// When writes are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Durability {
    /// After the commit log's fsync.
    Sync,
    /// After the in-memory commit; fsync every `flush_interval_ms`.
    Buffered,
}

impl TryFrom<String> for Durability {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "sync" => Ok(Durability::Sync),
            "buffered" => Ok(Durability::Buffered),
            _ => Err(format!("durability must be sync or buffered, got '{s}'")),
        }
    }
}

impl TryFrom<String> for ConflictMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "siblings" => Ok(ConflictMode::Siblings),
            "lww" => Ok(ConflictMode::Lww),
            _ => Err(format!("conflict mode must be siblings or lww, got '{s}'")),
        }
    }
}

/// Longest group-commit window accepted, µs.
const MAX_GROUP_COMMIT_US: u64 = 100_000;

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `sync` or `buffered`.
    pub durability: Durability,
    /// Longest time a `buffered` write stays only in the OS cache.
    pub flush_interval_ms: u64,
    /// Page cache of each vnode file, MiB.
    pub vnode_cache_mb: usize,
    /// Cache of decoded objects per node, MiB, shared out among its vnodes (0 = off).
    pub object_cache_mb: usize,
    /// Most writes one vnode commit takes.
    pub batch_max_writes: usize,
    /// Most payload bytes one vnode commit takes.
    pub batch_max_bytes: usize,
    /// Commit log segment size, MiB; a full segment triggers a vnode checkpoint.
    pub log_segment_mb: u64,
    /// With `sync`, how long (µs) the commit log lets concurrent writes gather before one
    /// fdatasync covers them all; 0 syncs at once.
    pub group_commit_us: u64,
    /// Free space of the data folder's file system, MiB, under which writes are refused
    /// (0: never); at least twice `log_segment_mb`, room for the checkpoint of a full segment.
    pub min_free_mb: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            durability: Durability::Sync,
            flush_interval_ms: 50,
            vnode_cache_mb: 8,
            object_cache_mb: 64,
            batch_max_writes: 512,
            batch_max_bytes: 1 << 20,
            log_segment_mb: 64,
            group_commit_us: 1000,
            min_free_mb: 256,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Longest key, bytes.
    pub max_key_bytes: usize,
    /// Key plus value must be strictly smaller, bytes.
    pub max_pair_bytes: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            max_key_bytes: l.max_key_bytes,
            max_pair_bytes: l.max_pair_bytes,
        }
    }
}

/// Conflict handling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ConflictMode {
    /// Keep concurrent writes as siblings.
    Siblings,
    /// Last write wins: concurrent writes are silently lost.
    Lww,
}

/// `[conflicts]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictsSection {
    /// `siblings` or `lww`.
    pub mode: ConflictMode,
    /// Most siblings kept per key; the oldest are pruned beyond it.
    pub max_siblings: usize,
}

impl Default for ConflictsSection {
    fn default() -> Self {
        ConflictsSection {
            mode: ConflictMode::Siblings,
            max_siblings: 8,
        }
    }
}

/// `[node]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Router actors per node.
    pub routers: usize,
    /// Restarts a vnode may have within the window before it is left stopped.
    pub vnode_max_restarts: u32,
    /// The restart budget's window, seconds.
    pub vnode_restart_window_secs: u64,
    /// Interval between failure-detector heartbeats, ms.
    pub heartbeat_ms: u64,
    /// Consecutive missed heartbeats before a peer is marked down.
    pub missed_heartbeats: u32,
    /// Most requests in flight from one node to one peer; beyond it that peer counts as overloaded.
    pub max_in_flight_per_peer: usize,
    /// Most requests one node coordinates at once; beyond it requests get `Overloaded`.
    pub max_coordinating: u64,
    /// Runtime worker threads of a node process; 0 means one per core.
    pub worker_threads: usize,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            routers: 4,
            vnode_max_restarts: 5,
            vnode_restart_window_secs: 60,
            heartbeat_ms: 200,
            missed_heartbeats: 3,
            max_in_flight_per_peer: 2048,
            max_coordinating: 16384,
            worker_threads: 0,
        }
    }
}

/// `[consistency]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencySection {
    /// Replicas a read waits for: `one`, `quorum`, `all` or a number.
    pub r: String,
    /// Replicas a write waits for: `one`, `quorum`, `all` or a number.
    pub w: String,
    /// Deadline of a request that names none, ms.
    pub request_timeout_ms: u64,
    /// Share of reads (0..=1) that ask every replica rather than R, so all get read-repaired.
    pub read_repair_chance: f64,
    /// Writes for a down replica go to fallback nodes as hints that count toward W.
    pub sloppy_quorum: bool,
    /// A read whose first R replica replies take longer than this also asks the others, ms.
    pub speculative_read_ms: u64,
}

impl Default for ConsistencySection {
    fn default() -> Self {
        ConsistencySection {
            r: "quorum".into(),
            w: "quorum".into(),
            request_timeout_ms: 5000,
            read_repair_chance: 0.0,
            sloppy_quorum: true,
            speculative_read_ms: 50,
        }
    }
}

impl ConsistencySection {
    /// The parsed (r, w), checked against the replication factor.
    pub fn levels(&self, replicas: usize) -> Result<(Consistency, Consistency), ConfigError> {
        let parse = |name: &str, text: &str| -> Result<Consistency, ConfigError> {
            let level: Consistency = text
                .parse()
                .map_err(|e| bad(format!("consistency.{name}: {e}")))?;
            if level.required(replicas).is_none() {
                return Err(bad(format!(
                    "consistency.{name} = {text} is more than cluster.replicas = {replicas}"
                )));
            }
            Ok(level)
        };
        Ok((parse("r", &self.r)?, parse("w", &self.w)?))
    }
}

/// `[client]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// Default per-request timeout, ms.
    pub timeout_ms: u64,
    /// How long connecting may take, ms.
    pub connect_timeout_ms: u64,
    /// Longest one node may hold a request before the client tries another node, ms.
    pub attempt_timeout_ms: u64,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            timeout_ms: 5000,
            connect_timeout_ms: 5000,
            attempt_timeout_ms: 1000,
        }
    }
}

fn default_partitions() -> u32 {
    64
}
fn default_replicas() -> usize {
    1
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

impl ClusterConfig {
    /// Reads `path` and the environment, resolves `data_dir` against the file's folder, and
    /// validates the result.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        if !path.exists() {
            return Err(bad(format!(
                "configuration file {} not found (pass --config FILE)",
                path.display()
            )));
        }
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("RINGKV")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let mut cfg: ClusterConfig = raw
            .try_deserialize()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        let base = base.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        if cfg.cluster.data_dir.is_relative() {
            cfg.cluster.data_dir = base.join(&cfg.cluster.data_dir);
        }
        cfg.tls.resolve_against(&base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule a node relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.cookie.trim().is_empty() {
            return Err(bad("cluster.cookie is empty: set a shared secret"));
        }
        if !c.partitions.is_power_of_two() || c.partitions > 65536 {
            return Err(bad(format!(
                "cluster.partitions must be a power of two between 1 and 65536, got {} (try {})",
                c.partitions,
                c.partitions.clamp(1, 65536).next_power_of_two().min(65536)
            )));
        }
        if self.members.is_empty() {
            return Err(bad("no [[members]] listed: add at least one node"));
        }
        let mut seen_ids = std::collections::HashSet::new();
        let mut seen_addrs = std::collections::HashSet::new();
        for m in &self.members {
            if !valid_id(&m.id) {
                return Err(bad(format!(
                    "member id '{}' is invalid: use letters, digits, '-' and '_'",
                    m.id
                )));
            }
            if !seen_ids.insert(m.id.as_str()) {
                return Err(bad(format!("member id '{}' is listed twice", m.id)));
            }
            let addr = parse_addr(&m.addr)?;
            if !seen_addrs.insert(addr) {
                return Err(bad(format!("address {} is used by two members", m.addr)));
            }
        }
        if c.replicas == 0 {
            return Err(bad("cluster.replicas must be at least 1"));
        }
        if c.replicas > self.members.len() {
            return Err(bad(format!(
                "cluster.replicas = {} is larger than the {} member(s) listed: add members or lower replicas",
                c.replicas,
                self.members.len()
            )));
        }
        self.autoscale.validate(c.replicas).map_err(bad)?;
        self.resp.validate().map_err(bad)?;
        self.tls.validate().map_err(bad)?;
        for (on, name) in [
            (self.resp.tls, "resp.tls"),
            (self.metrics.tls, "metrics.tls"),
        ] {
            if on && !self.tls.enabled {
                return Err(bad(format!(
                    "{name} = true needs [tls] enabled: the listener serves the node's certificate"
                )));
            }
        }
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_pair_bytes <= l.max_key_bytes {
            return Err(bad(format!(
                "limits: max_key_bytes ({}) must be at least 1 and below max_pair_bytes ({})",
                l.max_key_bytes, l.max_pair_bytes
            )));
        }
        if self.storage.vnode_cache_mb == 0 || self.storage.batch_max_writes == 0 {
            return Err(bad(
                "storage.vnode_cache_mb and storage.batch_max_writes must be at least 1",
            ));
        }
        if self.storage.log_segment_mb == 0 {
            return Err(bad("storage.log_segment_mb must be at least 1"));
        }
        let s = &self.storage;
        if s.min_free_mb != 0 && s.min_free_mb < 2 * s.log_segment_mb {
            return Err(bad(format!(
                "storage.min_free_mb ({}) must be 0 or at least twice storage.log_segment_mb ({}): a full disk must still hold the checkpoint of a full log segment",
                s.min_free_mb, s.log_segment_mb
            )));
        }
        if self.storage.group_commit_us > MAX_GROUP_COMMIT_US {
            return Err(bad(format!(
                "storage.group_commit_us ({}) must be at most {MAX_GROUP_COMMIT_US}: every concurrent write waits that long",
                self.storage.group_commit_us
            )));
        }
        self.consistency.levels(c.replicas)?;
        if self.node.heartbeat_ms == 0 || self.node.missed_heartbeats == 0 {
            return Err(bad(
                "node.heartbeat_ms and node.missed_heartbeats must be at least 1",
            ));
        }
        if self.conflicts.max_siblings == 0 {
            return Err(bad("conflicts.max_siblings must be at least 1"));
        }
        let m = &self.membership;
        if !(m.handoff_mb_per_sec >= 0.0 && m.handoff_mb_per_sec.is_finite()) {
            return Err(bad(format!(
                "membership.handoff_mb_per_sec must be 0 (unthrottled) or a positive number, got {}",
                m.handoff_mb_per_sec
            )));
        }
        if m.max_inbound_per_node == 0 || m.max_outbound_per_node == 0 {
            return Err(bad(
                "membership.max_inbound_per_node and max_outbound_per_node must be at least 1",
            ));
        }
        if !(1..=4096).contains(&m.chunk_keys) || !(1..=4096).contains(&m.chunk_kb) {
            return Err(bad(format!(
                "membership.chunk_keys ({}) and chunk_kb ({}) must be between 1 and 4096",
                m.chunk_keys, m.chunk_kb
            )));
        }
        Ok(())
    }

    /// The members with parsed addresses.
    pub fn member_addrs(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|m| Member {
                id: m.id.clone(),
                addr: parse_addr(&m.addr).expect("validated"),
            })
            .collect()
    }

    /// How process `id` (a member id, or [`tls::CLIENT_ID`]) makes its links; with TLS, its
    /// files are read now, so a missing or bad one is reported before anything starts.
    pub fn transport_for(&self, id: &str) -> Result<Transport, ConfigError> {
        match self.tls.settings_for(id) {
            None => Ok(Transport::plain()),
            Some(s) => Tls::load(s)
                .map(Transport::tls)
                .map_err(|e| bad(format!("tls: {e}"))),
        }
    }

    /// The settings node `node_id` runs with; checks the id and the data folder.
    pub fn node_settings(&self, node_id: &str) -> Result<NodeSettings, ConfigError> {
        self.node_settings_for(node_id, None, None)
    }

    /// Like [`ClusterConfig::node_settings`] for a node that may not be listed: `addr` is the
    /// address it listens on (else its `[[members]]` entry's), `join` a member to join through.
    pub fn node_settings_for(
        &self,
        node_id: &str,
        addr: Option<SocketAddr>,
        join: Option<SocketAddr>,
    ) -> Result<NodeSettings, ConfigError> {
        let listed = self.member_addrs().into_iter().find(|m| m.id == node_id);
        let addr = match (addr, &listed) {
            (Some(a), _) => a,
            (None, Some(m)) => m.addr,
            (None, None) => {
                let ids: Vec<&str> = self.members.iter().map(|m| m.id.as_str()).collect();
                return Err(bad(format!(
                    "unknown node id '{node_id}': members are {} (a node joining a running cluster needs --addr and --join)",
                    ids.join(", ")
                )));
            }
        };
        if !valid_id(node_id) {
            return Err(bad(format!(
                "node id '{node_id}' is invalid: use letters, digits, '-' and '_'"
            )));
        }
        if listed.is_none() && join.is_none() {
            return Err(bad(format!(
                "node '{node_id}' is not in [[members]]: start it with --join ADDR of a running member"
            )));
        }
        let m = &self.membership;
        let transport = self.transport_for(node_id)?;
        let node_dir = self.cluster.data_dir.join(node_id);
        check_writable(&node_dir)?;
        let (default_r, default_w) = self.consistency.levels(self.cluster.replicas)?;
        let s = &self.storage;
        Ok(NodeSettings {
            node_id: node_id.to_string(),
            members: self.member_addrs(),
            addr,
            join,
            resp: self
                .resp
                .settings_for(addr, transport.tls_setup())
                .map_err(bad)?,
            metrics_tls: self.metrics.tls,
            transport,
            metrics: self.metrics.addr_for(addr).map_err(bad)?,
            transfer: TransferSettings {
                bytes_per_sec: (m.handoff_mb_per_sec * 1e6) as u64,
                max_inbound: m.max_inbound_per_node,
                max_outbound: m.max_outbound_per_node,
                chunk_keys: m.chunk_keys,
                chunk_bytes: m.chunk_kb * 1024,
            },
            cookie: self.cluster.cookie.clone(),
            partitions: self.cluster.partitions,
            replicas: self.cluster.replicas,
            node_dir,
            durability: match s.durability {
                Durability::Sync => LogDurability::Sync,
                Durability::Buffered => {
                    LogDurability::Buffered(Duration::from_millis(s.flush_interval_ms.max(1)))
                }
            },
            vnode_cache_bytes: s.vnode_cache_mb << 20,
            object_cache_bytes: s.object_cache_mb << 20,
            batch_max_writes: s.batch_max_writes,
            batch_max_bytes: s.batch_max_bytes,
            log_segment_bytes: s.log_segment_mb << 20,
            min_free_bytes: s.min_free_mb << 20,
            group_commit_window: Duration::from_micros(s.group_commit_us),
            limits: Limits {
                max_key_bytes: self.limits.max_key_bytes,
                max_pair_bytes: self.limits.max_pair_bytes,
            },
            conflict: match self.conflicts.mode {
                ConflictMode::Siblings => ConflictPolicy::Siblings {
                    max_siblings: self.conflicts.max_siblings,
                },
                ConflictMode::Lww => ConflictPolicy::LastWriteWins,
            },
            routers: self.node.routers.max(1),
            vnode_restarts: RestartBudget {
                max_restarts: self.node.vnode_max_restarts,
                window: Duration::from_secs(self.node.vnode_restart_window_secs),
            },
            heartbeat: Duration::from_millis(self.node.heartbeat_ms),
            missed_heartbeats: self.node.missed_heartbeats,
            default_r,
            default_w,
            request_timeout: Duration::from_millis(self.consistency.request_timeout_ms.max(1)),
            max_in_flight_per_peer: self.node.max_in_flight_per_peer.max(1),
            max_coordinating: self.node.max_coordinating.max(1),
            read_repair_chance: self.consistency.read_repair_chance.clamp(0.0, 1.0),
            speculative_read_after: Duration::from_millis(self.consistency.speculative_read_ms),
            repair: RepairSettings {
                sloppy_quorum: self.consistency.sloppy_quorum,
                handoff_interval: Duration::from_millis(self.repair.handoff_interval_ms.max(10)),
                handoff_keys_per_sec: self.repair.handoff_keys_per_sec.max(1),
                chunk_keys: self.repair.chunk_keys.clamp(1, 4096),
                aae_interval: Duration::from_millis(self.repair.aae_interval_ms),
                aae_keys_per_sec: self.repair.aae_keys_per_sec.max(1),
                tombstone_grace: Duration::from_secs(self.repair.tombstone_grace_secs),
            },
        })
    }

    /// Writes this configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configuration serializes")
    }
}

/// Node ids are letters, digits, '-' and '_' (they name process groups and dot authors).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

fn parse_addr(addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.parse().map_err(|_| {
        bad(format!(
            "member address '{addr}' is not ip:port (for example 127.0.0.1:7401)"
        ))
    })
}

fn check_writable(dir: &Path) -> Result<(), ConfigError> {
    let fail = |e: std::io::Error| {
        bad(format!(
            "data folder {} is not writable: {e} (fix its permissions or set cluster.data_dir)",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok").map_err(fail)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The address of a listener beside a node's member address: the same IP, the member port plus
/// `offset`. `section` names the setting in errors.
fn offset_addr(section: &str, member: SocketAddr, offset: u16) -> Result<SocketAddr, String> {
    if offset == 0 {
        return Err(format!(
            "{section}.port_offset must not be 0: the member port is taken"
        ));
    }
    let port = member.port().checked_add(offset).ok_or_else(|| {
        format!("{section}.port_offset {offset} puts the {section} port of {member} past 65535")
    })?;
    Ok(SocketAddr::new(member.ip(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("cluster.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const ONE: &str =
        "[cluster]\ncookie = \"c\"\n[[members]]\nid = \"n1\"\naddr = \"127.0.0.1:7401\"\n";

    #[test]
    fn defaults_and_relative_data_dir() {
        let d = tempfile::tempdir().unwrap();
        let cfg = ClusterConfig::load(&write(d.path(), ONE)).unwrap();
        assert_eq!(cfg.cluster.partitions, 64);
        assert_eq!(cfg.cluster.data_dir, d.path().join("data"));
        assert_eq!(cfg.storage.durability, Durability::Sync);
    }

    #[test]
    fn rejects_with_a_message_that_says_what_to_fix() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("partitions = 60\n", "power of two"),
            ("replicas = 3\n", "larger than the 1 member"),
        ];
        for (extra, want) in cases {
            let body = ONE.replace("cookie = \"c\"\n", &format!("cookie = \"c\"\n{extra}"));
            let err = ClusterConfig::load(&write(d.path(), &body)).unwrap_err();
            assert!(err.0.contains(want), "{err} should mention {want}");
        }
        let cfg = ClusterConfig::load(&write(d.path(), ONE)).unwrap();
        let err = cfg.node_settings("n9").unwrap_err();
        assert!(err.0.contains("unknown node id 'n9'"), "{err}");
        let bad_member = ONE.replace("127.0.0.1:7401", "localhost");
        let err = ClusterConfig::load(&write(d.path(), &bad_member)).unwrap_err();
        assert!(err.0.contains("not ip:port"), "{err}");
    }

    #[test]
    fn unwritable_data_dir_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let body = ONE.replace(
            "cookie = \"c\"\n",
            &format!("cookie = \"c\"\ndata_dir = \"{}\"\n", file.display()),
        );
        let cfg = ClusterConfig::load(&write(d.path(), &body)).unwrap();
        let err = cfg.node_settings("n1").unwrap_err();
        assert!(err.0.contains("not writable"), "{err}");
    }
}
