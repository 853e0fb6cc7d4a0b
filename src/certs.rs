//! A local certificate authority for `ringkv tls init` and `cluster up --tls`: one CA in a
//! folder (`ca.crt`, `ca.key`), and per process `ID.crt` and `ID.key`, a certificate naming
//! its id (a DNS subject alternative name, as `[tls]` requires of a node) plus `localhost`
//! and the addresses it listens on, valid for both ends of a link.
//!
//! The CA's key stays in the folder so that nodes added later (`cluster add`, the autoscaler's
//! local provisioner) get certificates too; for production, issue certificates from your own
//! CA and keep its key elsewhere.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::config::ClusterConfig;

/// The CA's subject; a re-opened CA signs under the same name, so certificates it issues
/// later chain to the `ca.crt` written first.
const CA_NAME: &str = "ringkv local CA";
/// Years a generated certificate is valid.
const VALID_YEARS: i64 = 5;

/// A CA whose key is at hand.
pub struct Authority {
    dir: PathBuf,
    cert: Certificate,
    key: KeyPair,
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p);
    Ok(p)
}

fn validity(p: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // A day's slack for clocks behind this one.
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(365 * VALID_YEARS);
}

/// Writes `text` to `path`, readable by the owner only when `secret`.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    // A rename, so a process re-reading its files on a change never sees half of one.
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl Authority {
    /// Opens the CA in `dir`, creating it (and `dir`) if it has none.
    pub fn open_or_create(dir: &Path) -> Result<Authority, String> {
        let key_path = dir.join("ca.key");
        if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path)
                .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
            let key = KeyPair::from_pem(&pem)
                .map_err(|e| format!("{} is not a private key: {e}", key_path.display()))?;
            let cert = ca_params()?.self_signed(&key).map_err(|e| e.to_string())?;
            return Ok(Authority {
                dir: dir.to_path_buf(),
                cert,
                key,
            });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = ca_params()?.self_signed(&key).map_err(|e| e.to_string())?;
        write(&dir.join("ca.crt"), &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            cert,
            key,
        })
    }

    /// The CA certificate's path.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues `ID.crt` and `ID.key` for `id`, naming it, `localhost` and `ips`.
    pub fn issue(&self, id: &str, ips: &[IpAddr]) -> Result<(PathBuf, PathBuf), String> {
        let mut p = CertificateParams::new(vec![id.to_string(), "localhost".to_string()])
            .map_err(|e| format!("{id:?} cannot be a certificate name: {e}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        p.distinguished_name = dn;
        for ip in ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut p);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| e.to_string())?;
        let (crt, k) = (
            self.dir.join(format!("{id}.crt")),
            self.dir.join(format!("{id}.key")),
        );
        write(&crt, &cert.pem(), false)?;
        write(&k, &key.serialize_pem(), true)?;
        Ok((crt, k))
    }
}

/// Gives node `id` (listening on `ip`) a certificate if the cluster runs TLS, it has none yet,
/// and the CA's key is beside the configured CA certificate (a launcher-made CA).
pub fn ensure_for_node(cfg: &ClusterConfig, id: &str, ip: IpAddr) -> Result<(), String> {
    let Some(s) = cfg.tls.settings_for(id) else {
        return Ok(());
    };
    if s.cert.exists() {
        return Ok(());
    }
    let dir = s.ca.parent().unwrap_or(Path::new("."));
    if !dir.join("ca.key").exists() {
        return Err(format!(
            "node {id} has no certificate ({}): issue one from the cluster's CA",
            s.cert.display()
        ));
    }
    Authority::open_or_create(dir)?.issue(id, &[ip]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_actors::tls::{Tls, TlsSettings, leaf_certificate, names};

    #[test]
    fn issued_certificates_name_their_id_and_chain_to_a_reopened_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path()).unwrap();
        ca.issue("n1", &["127.0.0.1".parse().unwrap()]).unwrap();
        // A later process re-opens the CA from its key and issues under the same name.
        let again = Authority::open_or_create(dir.path()).unwrap();
        again.issue("n2", &[]).unwrap();
        for id in ["n1", "n2"] {
            let der = leaf_certificate(&dir.path().join(format!("{id}.crt"))).unwrap();
            assert!(names(&der, id));
            assert!(!names(&der, if id == "n1" { "n2" } else { "n1" }));
            let settings = TlsSettings {
                ca: dir.path().join("ca.crt"),
                cert: dir.path().join(format!("{id}.crt")),
                key: dir.path().join(format!("{id}.key")),
                handshake_timeout: std::time::Duration::from_secs(5),
            };
            Tls::load(settings).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("n1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "a key must be private to its owner");
    }

    #[tokio::test]
    async fn a_handshake_needs_the_named_member_and_a_certificate_from_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path()).unwrap();
        ca.issue("n1", &[]).unwrap();
        ca.issue("n2", &[]).unwrap();
        let other = tempfile::tempdir().unwrap();
        Authority::open_or_create(other.path())
            .unwrap()
            .issue("n2", &[])
            .unwrap();
        let load = |d: &Path, id: &str| {
            Tls::load(TlsSettings {
                ca: dir.path().join("ca.crt"),
                cert: d.join(format!("{id}.crt")),
                key: d.join(format!("{id}.key")),
                handshake_timeout: std::time::Duration::from_secs(2),
            })
            .unwrap()
        };
        let server = load(dir.path(), "n1");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..3 {
                let (s, _) = listener.accept().await.unwrap();
                results.push(server.accept(s).await.map(|(_, cert)| names(&cert, "n2")));
            }
            results
        });
        let dial = |tls: std::sync::Arc<Tls>, member: &'static str| async move {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            tls.connect(s, Some(member)).await.map(|_| ())
        };
        // n2 reaching n1 by name works, and n1 sees n2's certificate.
        dial(load(dir.path(), "n2"), "n1").await.unwrap();
        // Expecting n3 at n1's address fails: its certificate does not name n3.
        let e = dial(load(dir.path(), "n2"), "n3").await.unwrap_err();
        assert!(e.contains("TLS handshake with n3 failed"), "{e}");
        // A certificate from another CA is refused by n1.
        let _ = dial(load(other.path(), "n2"), "n1").await;
        let results = accepting.await.unwrap();
        assert_eq!(results[0], Ok(true));
        assert!(results[2].is_err(), "{:?}", results[2]);
    }
}
