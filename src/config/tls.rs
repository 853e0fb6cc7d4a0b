//! `[tls]`: mutual TLS on every link between nodes and from clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringkv_actors::tls::TlsSettings;
use serde::{Deserialize, Serialize};

/// Stands for the process's id in the certificate and key paths: the node's member id, or
/// [`CLIENT_ID`] for clients.
pub const ID_PLACEHOLDER: &str = "{id}";

/// The id clients put in the certificate and key paths.
pub const CLIENT_ID: &str = "client";

/// `[tls]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Links run over mutual TLS; every process needs the three files below.
    pub enabled: bool,
    /// PEM bundle of the CAs whose certificates peers may present (old and new while one is
    /// rotated out).
    pub ca: PathBuf,
    /// PEM certificate chain of this process; `{id}` is replaced by its id. A node's
    /// certificate must name its member id as a DNS subject alternative name.
    pub cert: PathBuf,
    /// PEM private key of that certificate; `{id}` as in `cert`.
    pub key: PathBuf,
    /// Longest a TLS handshake may take, ms (0: the default, 5000).
    pub handshake_timeout_ms: u64,
}

/// `path` with `{id}` replaced by `id`, resolved against `base` when relative.
fn resolve(path: &Path, id: &str, base: &Path) -> PathBuf {
    let text = path.to_string_lossy().replace(ID_PLACEHOLDER, id);
    let p = PathBuf::from(text);
    if p.is_relative() { base.join(p) } else { p }
}

impl TlsSection {
    /// Checks the section; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        for (name, p) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if p.as_os_str().is_empty() {
                return Err(format!(
                    "tls.enabled is true but tls.{name} is not set: give the PEM file's path (ringkv tls init makes a CA and certificates)"
                ));
            }
        }
        Ok(())
    }

    /// Makes relative paths relative to `base` (the configuration file's folder).
    pub fn resolve_against(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The settings of process `id`, when TLS is on.
    pub fn settings_for(&self, id: &str) -> Option<TlsSettings> {
        self.enabled.then(|| TlsSettings {
            ca: self.ca.clone(),
            cert: resolve(&self.cert, id, Path::new("")),
            key: resolve(&self.key, id, Path::new("")),
            handshake_timeout: Duration::from_millis(if self.handshake_timeout_ms == 0 {
                5000
            } else {
                self.handshake_timeout_ms
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_the_process_id_and_the_config_folder() {
        let mut t = TlsSection {
            enabled: true,
            ca: "tls/ca.crt".into(),
            cert: "tls/{id}.crt".into(),
            key: "/etc/ringkv/{id}.key".into(),
            handshake_timeout_ms: 0,
        };
        t.resolve_against(Path::new("/srv/ringkv"));
        let s = t.settings_for("n2").unwrap();
        assert_eq!(s.ca, PathBuf::from("/srv/ringkv/tls/ca.crt"));
        assert_eq!(s.cert, PathBuf::from("/srv/ringkv/tls/n2.crt"));
        assert_eq!(s.key, PathBuf::from("/etc/ringkv/n2.key"));
        assert_eq!(s.handshake_timeout, Duration::from_secs(5));
        assert!(TlsSection::default().settings_for("n1").is_none());
    }

    #[test]
    fn enabled_without_files_says_which_is_missing() {
        let t = TlsSection {
            enabled: true,
            ca: "ca.crt".into(),
            ..TlsSection::default()
        };
        assert!(t.validate().unwrap_err().contains("tls.cert"));
    }
}
