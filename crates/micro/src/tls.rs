//! TLS for servers and clients (rustls with the ring provider).
//!
//! A server serves a certificate read from PEM files ([`Certificates`]), reread when
//! either file changes, so a renewed certificate is served without a restart. A client
//! trusts the public web roots and, besides, the CAs named by `MICRO_CA` (a PEM file's
//! path, or the PEM text itself), which is how the CLI and services trust the local CA
//! that `micro server` makes with `MICRO_TLS=auto`.

use micro_core::{Code, Status};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

pub use rustls::ServerConfig;

/// The environment variable naming the extra CAs a client trusts: a PEM file's path, or
/// PEM text.
pub const CA_ENV: &str = "MICRO_CA";

/// How often a server looks at its certificate files for a change, at most.
const RECHECK: Duration = Duration::from_secs(1);

fn bad(detail: String) -> Status {
    Status::new(Code::InvalidArgument, "tls", detail)
}

/// The crypto provider every TLS config here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The servers' provider: [`provider`] with AES-128-GCM first. Servers pick by their own
/// order, so a handshake's key schedule runs on SHA-256, which CPUs accelerate, instead
/// of SHA-384 (the ring provider's first choice, and most clients'), which they do not:
/// about a tenth of a full handshake's CPU on the benchmark machine (docs/BENCHMARKS.md,
/// E2). AES-128-GCM is what Go's and Caddy's servers prefer as well.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS13_AES_128_GCM_SHA256,
    };
    let mut p = rustls::crypto::ring::default_provider();
    let first = |s: &rustls::SupportedCipherSuite| {
        ![TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
            .contains(&s.suite())
    };
    // A stable sort: the preferred ones first, the rest in the provider's order.
    p.cipher_suites.sort_by_key(first);
    Arc::new(p)
}

/// The certificates of a PEM text (`what` names it in errors).
pub fn certificates_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Status> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("{what}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(format!("{what}: no certificate in it")));
    }
    Ok(certs)
}

/// A certificate chain and its key, from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, Status> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| bad(format!("{}: {e}", p.display())).with_source(e));
    let names = format!("{} and {}", cert.display(), key.display());
    certified_pem(&read(cert)?, &read(key)?, &names)
}

/// A certificate chain and its key, from PEM texts (`what` names them in errors).
pub fn certified_pem(chain: &[u8], key: &[u8], what: &str) -> Result<CertifiedKey, Status> {
    let chain = certificates_pem(chain, what)?;
    let key_der = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(format!("{what}: not a PEM private key: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad(format!("{what}: unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| bad(format!("{what}: the certificate and the key do not belong together: {e}")))?;
    Ok(certified)
}

/// A server config whose certificates `resolver` picks (by SNI, say), offering HTTP/2
/// and HTTP/1.1 by ALPN.
pub fn server_config_with(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<rustls::ServerConfig>, Status> {
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Status::internal("tls", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Like [`server_config_with`], and besides, clients may present a certificate issued
/// by one of `client_cas` (a cluster's nodes do); one that presents another fails its
/// handshake, and one that presents none is served as usual. Requests of a verified
/// client carry [`crate::server::ClientCertified`].
pub fn server_config_verifying_clients(
    resolver: Arc<dyn ResolvesServerCert>,
    client_cas: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ServerConfig>, Status> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_cas {
        roots.add(ca.clone()).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Status::internal("tls", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// A client config trusting `cas` alone (no public roots), presenting `identity` (a
/// certificate chain and its key, PEM) when given: how a cluster's nodes call each other.
pub fn private_client_config(
    cas: &[CertificateDer<'static>],
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, Status> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Status::internal("tls", e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => {
            let chain = certificates_pem(chain, "the client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(format!("the client key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad(format!("the client certificate: {e}")))
        }
    }
}

/// A server's certificate from PEM files, reread when either file changes (looked at on
/// a handshake, at most once a second); a change that does not load is logged and the
/// last good certificate stays.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// When the files were looked at, and their modification times then.
    seen: Mutex<(Instant, Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Certificates {
    /// Loads the certificate chain at `cert` and its key at `key`.
    pub fn open(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Arc<Certificates>, Status> {
        let (cert, key) = (cert.into(), key.into());
        let stamps = (Instant::now(), modified(&cert), modified(&key));
        let current = RwLock::new(Arc::new(load(&cert, &key)?));
        Ok(Arc::new(Certificates { cert, key, current, seen: Mutex::new(stamps) }))
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.recheck();
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn recheck(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0.elapsed() < RECHECK {
            return;
        }
        let stamps = (modified(&self.cert), modified(&self.key));
        seen.0 = Instant::now();
        if (seen.1, seen.2) == stamps {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(k) => {
                (seen.1, seen.2) = stamps;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(k);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            // Half written, say: tried again on a later handshake.
            Err(e) => tracing::warn!(error = %e, "the changed TLS certificate does not load; serving the last one"),
        }
    }

    /// A server config serving these certificates, offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, Status> {
        server_config_with(self.clone())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The extra CAs `MICRO_CA` names: the PEM text itself, or a file's path.
pub fn extra_roots_from_env() -> Result<Vec<CertificateDer<'static>>, Status> {
    match std::env::var(CA_ENV) {
        Ok(v) if !v.trim().is_empty() => extra_roots(&v),
        _ => Ok(Vec::new()),
    }
}

/// The CAs of `ca`: PEM text, or the path of a PEM file.
pub fn extra_roots(ca: &str) -> Result<Vec<CertificateDer<'static>>, Status> {
    if ca.contains("-----BEGIN") {
        return certificates_pem(ca.as_bytes(), CA_ENV);
    }
    let pem = std::fs::read(ca).map_err(|e| bad(format!("{CA_ENV}: {ca}: {e}")).with_source(e))?;
    certificates_pem(&pem, ca)
}

/// A client config trusting the public web roots and `extra` CAs.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, Status> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for ca in extra {
        roots.add(ca.clone()).map_err(|e| bad(format!("{CA_ENV}: not a usable CA certificate: {e}")))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Status::internal("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> Vec<u8> {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
        c.cert.der().to_vec()
    }

    #[test]
    fn a_changed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_cert(dir.path(), "one.example");
        let certs = Certificates::open(dir.path().join("cert.pem"), dir.path().join("key.pem")).unwrap();
        assert_eq!(certs.current().cert[0].as_ref(), first.as_slice());
        std::thread::sleep(Duration::from_millis(1100));
        let second = write_cert(dir.path(), "two.example");
        std::thread::sleep(RECHECK + Duration::from_millis(100));
        assert_eq!(certs.current().cert[0].as_ref(), second.as_slice(), "reloaded");
        // A half-written file: the last good certificate stays.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(dir.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(100));
        assert_eq!(certs.current().cert[0].as_ref(), second.as_slice(), "kept");
    }

    #[test]
    fn servers_prefer_aes_128_gcm() {
        let p = server_provider();
        assert_eq!(p.cipher_suites[0].suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(p.cipher_suites.len(), provider().cipher_suites.len(), "none dropped");
    }

    #[test]
    fn bad_files_and_cas_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Certificates::open(dir.path().join("no.pem"), dir.path().join("no.key")).unwrap_err();
        assert!(missing.detail().contains("no.pem"), "{missing}");
        write_cert(dir.path(), "a.example");
        let other = rcgen::generate_simple_self_signed(vec!["b.example".to_string()]).unwrap();
        std::fs::write(dir.path().join("other.key"), other.signing_key.serialize_pem()).unwrap();
        let mismatched = Certificates::open(dir.path().join("cert.pem"), dir.path().join("other.key")).unwrap_err();
        assert!(mismatched.detail().contains("do not belong together"), "{mismatched}");
        assert!(extra_roots("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----").is_err());
        assert!(extra_roots(dir.path().join("none.pem").to_str().unwrap()).is_err());
        let ca = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
        assert_eq!(extra_roots(&ca).unwrap().len(), 1);
    }
}
