//! `[resp]`: the Redis-protocol listener every node can run beside its member address.

use std::net::SocketAddr;
use std::sync::Arc;

use ringkv_actors::gateway::resp::auth::Password;
use ringkv_actors::gateway::resp::{RespSettings, SiblingReply};
use ringkv_actors::tls::Tls;
use serde::{Deserialize, Serialize};

/// `[resp]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RespSection {
    /// Listen for Redis clients.
    pub enabled: bool,
    /// The RESP port is the node's member port plus this (same IP): 7401 → 8401.
    pub port_offset: u16,
    /// Connections served at once per node.
    pub max_connections: usize,
    /// What plain `GET` answers for a key with siblings: `pick` (the greatest value, the same
    /// on every node) or `error`.
    pub siblings: String,
    /// The password Redis clients must `AUTH` with (as Redis's `requirepass`); empty: none.
    /// Better set through `RINGKV__RESP__PASSWORD` than written into a shared file.
    pub password: String,
    /// Serve over TLS with the node's `[tls]` certificate (`redis-cli --tls --cacert CA`);
    /// clients need no certificate of their own.
    pub tls: bool,
}

impl Default for RespSection {
    fn default() -> Self {
        RespSection {
            enabled: false,
            port_offset: 1000,
            max_connections: 1024,
            siblings: "pick".into(),
            password: String::new(),
            tls: false,
        }
    }
}

impl RespSection {
    /// Checks the section; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !["pick", "error"].contains(&self.siblings.as_str()) {
            return Err(format!(
                "resp.siblings = \"{}\": use pick or error",
                self.siblings
            ));
        }
        if self.max_connections == 0 {
            return Err("resp.max_connections must be at least 1".into());
        }
        Ok(())
    }

    /// The RESP address of a node listening on `member`, when enabled.
    pub fn addr_for(&self, member: SocketAddr) -> Result<Option<SocketAddr>, String> {
        if !self.enabled {
            return Ok(None);
        }
        super::offset_addr("resp", member, self.port_offset).map(Some)
    }

    /// A node's listener settings, when enabled; `tls` is the node's setup when `[tls]` is on.
    pub fn settings_for(
        &self,
        member: SocketAddr,
        tls: Option<Arc<Tls>>,
    ) -> Result<Option<RespSettings>, String> {
        Ok(self.addr_for(member)?.map(|addr| RespSettings {
            addr,
            max_connections: self.max_connections,
            siblings: if self.siblings == "error" {
                SiblingReply::Error
            } else {
                SiblingReply::Pick
            },
            password: Password::new(Some(&self.password)),
            tls: if self.tls { tls } else { None },
        }))
    }
}
