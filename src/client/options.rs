//! What a client is configured with and what requests carry and return: the SDK's plain
//! data types.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use ringkv_actors::core::quorum::Consistency;

use super::KvError;
use crate::config::ClusterConfig;

/// Where the cluster is and how to talk to it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Members to dial: (node id, address).
    pub members: Vec<(String, SocketAddr)>,
    /// The cluster's cookie.
    pub cookie: String,
    /// Default per-request timeout.
    pub timeout: Duration,
    /// How long [`Client::connect`] waits for the members to answer.
    pub connect_timeout: Duration,
    /// Ring size and replication factor, when known: requests then go straight to a replica.
    pub ring: Option<(u32, usize)>,
    /// Longest one node may hold a request before it is tried elsewhere (once) and suspected.
    pub attempt_timeout: Duration,
    /// Mutual TLS to the nodes, as the cluster's `[tls]` sets it up; `None`: plain TCP.
    pub tls: Option<ringkv_actors::tls::TlsSettings>,
}

impl ClientConfig {
    /// Reads the members, cookie and client defaults from a `cluster.toml`.
    pub fn from_file(path: &Path) -> Result<ClientConfig, KvError> {
        let cfg = ClusterConfig::load(path).map_err(|e| KvError::InvalidConfig(e.0))?;
        Ok(ClientConfig::from_cluster(&cfg))
    }

    /// Takes the client's view of a loaded configuration.
    pub fn from_cluster(cfg: &ClusterConfig) -> ClientConfig {
        ClientConfig {
            members: cfg
                .member_addrs()
                .into_iter()
                .map(|m| (m.id, m.addr))
                .collect(),
            cookie: cfg.cluster.cookie.clone(),
            timeout: Duration::from_millis(cfg.client.timeout_ms),
            connect_timeout: Duration::from_millis(cfg.client.connect_timeout_ms),
            ring: Some((cfg.cluster.partitions, cfg.cluster.replicas)),
            attempt_timeout: Duration::from_millis(cfg.client.attempt_timeout_ms),
            tls: cfg.tls.settings_for(crate::config::tls::CLIENT_ID),
        }
    }
}

/// An opaque causal context: pass the one a read returned to the next write of that key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context(pub(crate) Vec<u8>);

impl Context {
    /// The context as text, for the CLI (`--context`).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses what [`Context::to_base64`] printed.
    pub fn from_base64(text: &str) -> Result<Context, KvError> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map(Context)
            .map_err(|e| KvError::BadContext(format!("not a context printed by ringkv: {e}")))
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// Every live version: one value normally, several when concurrent writes are siblings;
    /// empty when the key does not exist or was deleted.
    pub values: Vec<Vec<u8>>,
    /// Covers every version read; pass it to a write to supersede them all.
    pub context: Context,
}

impl GetResult {
    /// True when the key has at least one live value.
    pub fn found(&self) -> bool {
        !self.values.is_empty()
    }

    /// The value when there is exactly one version.
    pub fn value(&self) -> Option<&[u8]> {
        match self.values.as_slice() {
            [v] => Some(v),
            _ => None,
        }
    }
}

/// Per-request options.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Causal context from an earlier read (writes only); `None` is a blind write.
    pub context: Option<Context>,
    /// Overrides the client's default timeout.
    pub timeout: Option<Duration>,
    /// Replicas a read waits for (`None`: the cluster's default).
    pub r: Option<Consistency>,
    /// Replicas a write waits for (`None`: the cluster's default).
    pub w: Option<Consistency>,
    /// Send the request to this node only (it coordinates, or forwards a write to a replica).
    pub via: Option<String>,
}

impl RequestOptions {
    /// Options carrying a context.
    pub fn with_context(context: Context) -> RequestOptions {
        RequestOptions {
            context: Some(context),
            ..Default::default()
        }
    }
}
