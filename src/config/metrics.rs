//! `[metrics]`: the Prometheus endpoint every node can serve beside its member address.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// The metrics port is the node's member port plus this (same IP): 7401 → 9401.
    pub port_offset: u16,
    /// Serve over HTTPS with the node's `[tls]` certificate (scrapers need no certificate).
    pub tls: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: false,
            port_offset: 2000,
            tls: false,
        }
    }
}

impl MetricsSection {
    /// The metrics address of a node listening on `member`, when enabled.
    pub fn addr_for(&self, member: SocketAddr) -> Result<Option<SocketAddr>, String> {
        if !self.enabled {
            return Ok(None);
        }
        super::offset_addr("metrics", member, self.port_offset).map(Some)
    }
}
