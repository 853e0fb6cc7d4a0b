//! TLS for the links between nodes and from clients: mutual, against one CA, with each node's
//! certificate naming its member id (a DNS subject alternative name).
//!
//! Every connection presents a certificate the CA signed, and the dialling side checks that
//! the node it reached holds a certificate for the member it meant to reach. On an accepted
//! connection the peer's certificate is kept by peer address ([`CertBook`]) until its session
//! authenticates, when the name the session claims is checked against it ([`IdentityCheck`]):
//! a node that claims another member's id is disconnected. Clients (session names starting
//! [`CLIENT_PREFIX`]) may hold any certificate the CA signed.
//!
//! The files are re-read when any of them changes (by modification time, checked at each new
//! connection), so certificates rotate without a restart; sessions already up keep theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ractor_cluster::node::{NodeEventSubscription, NodeServerSessionInformation};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// The name prefix of client processes' sessions (`ringkv-client-<pid>`).
pub const CLIENT_PREFIX: &str = "ringkv-client-";

/// Where a process's TLS material is, and how long a handshake may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM bundle of the certificate authorities trusted for peers (old and new during a
    /// rotation).
    pub ca: PathBuf,
    /// PEM certificate chain of this process, leaf first.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// Longest a TLS handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
}

/// The configurations built from one reading of the files.
#[derive(Clone)]
struct Loaded {
    stamps: Vec<Option<SystemTime>>,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// For listeners whose clients need no certificate (Redis clients, scrapers).
    open_acceptor: TlsAcceptor,
    /// For a node whose member id is not known yet (the one a new node joins through): any
    /// certificate the CA signed; its session is then checked by [`IdentityCheck`].
    seed_connector: TlsConnector,
}

/// Accepts a server certificate the CA signed whatever name it holds.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A process's TLS setup, re-read when its files change.
pub struct Tls {
    files: TlsSettings,
    current: Mutex<Loaded>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn stamps(files: &TlsSettings) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn load(files: &TlsSettings) -> Result<Loaded, String> {
    let stamps = stamps(files);
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.ca)? {
        roots
            .add(ca)
            .map_err(|e| format!("bad CA certificate in {}: {e}", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "cannot read a private key from {}: {e}",
            files.key.display()
        )
    })?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| format!("CA in {}: {e}", files.ca.display()))?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            format!(
                "certificate {} with key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    let open = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("certificate {}: {e}", files.cert.display()))?;
    let bad_pair = |e: rustls::Error| {
        format!(
            "certificate {} with key {}: {e}",
            files.cert.display(),
            files.key.display()
        )
    };
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(bad_pair)?;
    let chain_only = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("CA in {}: {e}", files.ca.display()))?;
    let seed = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyName(chain_only)))
        .with_client_auth_cert(chain, key)
        .map_err(bad_pair)?;
    Ok(Loaded {
        stamps,
        acceptor: TlsAcceptor::from(Arc::new(server)),
        open_acceptor: TlsAcceptor::from(Arc::new(open)),
        connector: TlsConnector::from(Arc::new(client)),
        seed_connector: TlsConnector::from(Arc::new(seed)),
    })
}

impl Tls {
    /// Reads the files; the error names the one at fault.
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, String> {
        let loaded = load(&settings)?;
        Ok(Arc::new(Tls {
            files: settings,
            current: Mutex::new(loaded),
        }))
    }

    /// The settings this setup was loaded from.
    pub fn settings(&self) -> &TlsSettings {
        &self.files
    }

    /// The current acceptor and connector, re-read first if a file changed; a change that
    /// does not load keeps the previous ones (and says why).
    fn current(&self) -> Loaded {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamps(&self.files) != current.stamps {
            match load(&self.files) {
                Ok(loaded) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS files re-read");
                    *current = loaded;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                    current.stamps = stamps(&self.files);
                }
            }
        }
        current.clone()
    }

    /// Completes the server side of a handshake within the handshake timeout, returning the
    /// stream and the peer's leaf certificate.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(server::TlsStream<TcpStream>, CertificateDer<'static>), String> {
        let acceptor = self.current().acceptor;
        let tls = tokio::time::timeout(self.files.handshake_timeout, acceptor.accept(stream))
            .await
            .map_err(|_| format!("no TLS handshake within {:?}", self.files.handshake_timeout))?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let leaf = first(tls.get_ref().1.peer_certificates())
            .ok_or("the peer presented no certificate")?;
        Ok((tls, leaf))
    }

    /// Completes the client side of a handshake within the handshake timeout, with member
    /// `member`, whose certificate must name it, or (`None`) with any node the CA certified;
    /// returns the stream and the node's leaf certificate.
    pub async fn connect(
        &self,
        stream: TcpStream,
        member: Option<&str>,
    ) -> Result<(client::TlsStream<TcpStream>, CertificateDer<'static>), String> {
        let Loaded {
            connector: named,
            seed_connector: any,
            ..
        } = self.current();
        let (connector, shown) = match member {
            Some(m) => (named, m),
            None => (any, "the node"),
        };
        let name = ServerName::try_from(member.unwrap_or("ringkv-seed").to_string())
            .map_err(|e| format!("member id {shown:?} cannot be a certificate name: {e}"))?;
        let tls = tokio::time::timeout(
            self.files.handshake_timeout,
            connector.connect(name, stream),
        )
        .await
        .map_err(|_| {
            format!(
                "no TLS handshake with {shown} within {:?}",
                self.files.handshake_timeout
            )
        })?
        .map_err(|e| format!("TLS handshake with {shown} failed: {e}"))?;
        let leaf = first(tls.get_ref().1.peer_certificates())
            .ok_or("the node presented no certificate")?;
        Ok((tls, leaf))
    }
}

impl Tls {
    /// Completes the server side of a handshake within the handshake timeout without asking
    /// for a client certificate: for the Redis and metrics listeners, whose clients
    /// authenticate otherwise (`AUTH`) or not at all.
    pub async fn accept_open(
        &self,
        stream: TcpStream,
    ) -> Result<server::TlsStream<TcpStream>, String> {
        let acceptor = self.current().open_acceptor;
        tokio::time::timeout(self.files.handshake_timeout, acceptor.accept(stream))
            .await
            .map_err(|_| format!("no TLS handshake within {:?}", self.files.handshake_timeout))?
            .map_err(|e| format!("TLS handshake failed: {e}"))
    }
}

/// The leaf of a peer's certificate chain.
fn first(chain: Option<&[CertificateDer<'static>]>) -> Option<CertificateDer<'static>> {
    chain.and_then(|c| c.first()).cloned()
}

/// The first certificate in the PEM file at `path`.
pub fn leaf_certificate(path: &Path) -> Result<CertificateDer<'static>, String> {
    Ok(certs(path)?.swap_remove(0))
}

/// True when `cert` names `id` (as a DNS subject alternative name).
pub fn names(cert: &CertificateDer<'_>, id: &str) -> bool {
    let Ok(name) = ServerName::try_from(id) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// A certificate resolver with no certificate: every handshake fails.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// An acceptor that completes no handshake, for the listener ractor_cluster's node server
/// always opens: with TLS on, sessions come only through [`crate::transport`]'s checked
/// accept, never through that side door.
pub fn refusing_acceptor() -> TlsAcceptor {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    TlsAcceptor::from(Arc::new(config))
}

/// Lets one log line per key through every [`LOG_EVERY`], counting the ones held back: a
/// peer retrying a refused connection in a loop must not flood the node's log.
#[derive(Debug, Default)]
pub struct LogLimiter(Mutex<HashMap<String, (std::time::Instant, u64)>>);

/// Least time between two log lines of one [`LogLimiter`] key.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

impl LogLimiter {
    /// `Some(held back since the last line)` when a line for `key` may be written now.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if seen.len() > 4096 {
            // Many distinct keys (addresses) at once: forget the quiet ones.
            seen.retain(|_, (at, _)| now.duration_since(*at) < LOG_EVERY);
        }
        match seen.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < LOG_EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = std::mem::take(held);
                *at = now;
                Some(n)
            }
            None => {
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Accepted peers' certificates by peer address, until their sessions authenticate.
#[derive(Debug, Default)]
pub struct CertBook(Mutex<HashMap<String, CertificateDer<'static>>>);

impl CertBook {
    /// Keeps `cert` for the connection from `peer`.
    pub fn insert(&self, peer: String, cert: CertificateDer<'static>) {
        self.lock().insert(peer, cert);
    }

    fn take(&self, peer: &str) -> Option<CertificateDer<'static>> {
        self.lock().remove(peer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CertificateDer<'static>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a session claiming `claimed` may not use `cert`, if it may not.
pub fn refusal(claimed: &str, cert: Option<&CertificateDer<'_>>) -> Option<String> {
    let id = claimed.split('@').next().unwrap_or(claimed);
    match cert {
        None => Some(format!(
            "no certificate is known for the session claiming {id}"
        )),
        Some(_) if id.starts_with(CLIENT_PREFIX) => None,
        Some(c) if names(c, id) => None,
        Some(_) => Some(format!(
            "its certificate does not name {id}, the member it claims to be"
        )),
    }
}

/// Disconnects a session whose certificate does not name the member it claims.
pub struct IdentityCheck {
    /// Certificates of sessions not yet checked.
    pub book: Arc<CertBook>,
    /// Paces the refusal log lines, per claimed name.
    pub log: Arc<LogLimiter>,
}

impl NodeEventSubscription for IdentityCheck {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let cert = self.book.take(&ses.peer_addr);
        if !ses.is_server && cert.is_none() {
            // Dialled to a named member: the handshake already checked its certificate.
            return;
        }
        let claimed = ses
            .peer_name
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        if let Some(why) = refusal(&claimed, cert.as_ref()) {
            if let Some(held) = self.log.allow(&claimed) {
                tracing::warn!(peer = %ses.peer_addr, claimed = %claimed, since_last = held, "session refused: {why}");
            }
            ses.actor.stop(Some(format!("refused: {why}")));
        }
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.book.take(&ses.peer_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_key_gets_one_line_per_period_and_the_count_of_the_rest() {
        let log = LogLimiter::default();
        assert_eq!(log.allow("n1"), Some(0));
        assert_eq!(log.allow("n1"), None);
        assert_eq!(log.allow("n1"), None);
        assert_eq!(log.allow("n2"), Some(0));
        log.0.lock().unwrap().get_mut("n1").unwrap().0 -= LOG_EVERY;
        assert_eq!(log.allow("n1"), Some(2));
    }

    #[test]
    fn only_clients_may_use_a_certificate_that_does_not_name_them() {
        assert!(refusal("n1@127.0.0.1", None).is_some());
        // Any DER is enough for the client rule, which does not read it.
        let junk = CertificateDer::from(vec![0u8; 4]);
        assert_eq!(refusal("ringkv-client-42@127.0.0.1", Some(&junk)), None);
        let why = refusal("n1@127.0.0.1", Some(&junk)).unwrap();
        assert!(why.contains("does not name n1"), "{why}");
    }
}
