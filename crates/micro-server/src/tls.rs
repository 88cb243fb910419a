//! TLS on every listener (`MICRO_TLS`): off, `auto` (a local CA in the data dir issues the
//! server's certificate at every start) or a certificate and key from PEM files, reread
//! when they change ([`micro::tls::Certificates`]).

use crate::Error;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the server's certificate comes from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum TlsMode {
    /// Plain HTTP and h2c (the default).
    #[default]
    Off,
    /// A local CA in `<data dir>/tls` issues the server's certificate.
    Auto,
    /// A certificate chain and its key, PEM files (reread when they change).
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(v: &str) -> Result<TlsMode, String> {
        match v.trim() {
            "" | "off" => Ok(TlsMode::Off),
            "auto" => Ok(TlsMode::Auto),
            files => match files.split_once(',') {
                Some((c, k)) if !c.trim().is_empty() && !k.trim().is_empty() => {
                    Ok(TlsMode::Files { cert: c.trim().into(), key: k.trim().into() })
                }
                _ => Err(format!("{v:?}: use off, auto, or cert.pem,key.pem")),
            },
        }
    }
}

/// The TLS a server serves with.
pub(crate) struct Tls {
    /// The server's own certificate (reread when its files change).
    pub(crate) certs: Arc<micro::tls::Certificates>,
    /// The local CA's certificate file (`auto`), for clients to trust.
    pub(crate) ca: Option<PathBuf>,
    /// In a cluster: this node's certificate from the cluster's CA, which it presents to
    /// the other nodes and serves to those asking for [`crate::cluster::NODE_NAME`].
    pub(crate) node: Option<NodeTls>,
}

/// A node's certificate in a cluster, and the cluster's CA.
pub(crate) struct NodeTls {
    pub(crate) certs: Arc<micro::tls::Certificates>,
    pub(crate) ca: rustls::pki_types::CertificateDer<'static>,
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// The CA's subject: also how its issuer is rebuilt from its key alone.
const CA_NAME: &str = "Micro local CA";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::DataDir { path: path.display().to_string(), source }
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::Config(format!("making the TLS certificate: {e}"))
}

/// Writes `text` to `path` whole (a reader sees the old file or the new one), readable by
/// its owner only.
pub(crate) fn write(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// The year now (for certificate validity).
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// A CA: its certificate and its key, PEM.
#[derive(Clone)]
pub(crate) struct Ca {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl Ca {
    /// A new CA.
    pub(crate) fn new() -> Result<Ca, Error> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = ca_params().self_signed(&key).map_err(cert_error)?;
        Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The CA's certificate, DER.
    pub(crate) fn der(&self) -> Result<rustls::pki_types::CertificateDer<'static>, Error> {
        let mut certs = micro::tls::certificates_pem(self.cert_pem.as_bytes(), "the CA certificate")
            .map_err(|e| Error::Config(e.detail().to_string()))?;
        Ok(certs.remove(0))
    }

    /// Issues a certificate for `hosts` (a node's, for server and client use, with
    /// `node`); returns the chain (the certificate, then the CA's) and the key, PEM.
    pub(crate) fn issue(&self, hosts: &[String], node: bool) -> Result<(String, String), Error> {
        let issuer = Issuer::new(ca_params(), KeyPair::from_pem(&self.key_pem).map_err(cert_error)?);
        let mut p = CertificateParams::new(hosts.to_vec()).map_err(cert_error)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, hosts.first().map(String::as_str).unwrap_or("localhost"));
        p.distinguished_name = dn;
        let year = this_year();
        p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        p.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if node {
            p.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = p.signed_by(&key, &issuer).map_err(cert_error)?;
        let chain = if node { format!("{}{}", cert.pem(), self.cert_pem) } else { cert.pem() };
        Ok((chain, key.serialize_pem()))
    }
}

/// This node's local CA in `<dir>/tls`, if it has one.
pub(crate) fn local_ca(dir: &Path) -> Result<Option<Ca>, Error> {
    let tls = dir.join("tls");
    let (ca_cert, ca_key) = (tls.join("ca.pem"), tls.join("ca.key"));
    match (std::fs::read_to_string(&ca_cert), std::fs::read_to_string(&ca_key)) {
        (Ok(cert_pem), Ok(key_pem)) => Ok(Some(Ca { cert_pem, key_pem })),
        // Unreadable is not missing: a new CA would strand every client trusting the old.
        (Err(e), _) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&ca_cert)(e)),
        (_, Err(e)) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&ca_key)(e)),
        _ => Ok(None),
    }
}

/// `auto`: the CA (the cluster's, else the local one, made once) and a certificate for
/// `hosts` (made at every start), in `<dir>/tls`; returns (certificate, key, CA) paths.
fn auto(dir: &Path, hosts: &[String], cluster: Option<&Ca>) -> Result<(PathBuf, PathBuf, PathBuf), Error> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(io(&tls))?;
    let (ca_cert, ca_key) = (tls.join("ca.pem"), tls.join("ca.key"));
    let ca = match (cluster, local_ca(dir)?) {
        (Some(c), local) => {
            // In a cluster, the cluster's CA is this node's too: clients trust one CA for all.
            if local.is_none_or(|l| l.cert_pem != c.cert_pem) {
                write(&ca_key, &c.key_pem)?;
                write(&ca_cert, &c.cert_pem)?;
            }
            c.clone()
        }
        (None, Some(local)) => local,
        (None, None) => {
            let ca = Ca::new()?;
            write(&ca_key, &ca.key_pem)?;
            write(&ca_cert, &ca.cert_pem)?;
            tracing::info!(ca = %ca_cert.display(), "made a local CA for TLS");
            ca
        }
    };
    let (chain, key) = ca.issue(hosts, false)?;
    let (cert_path, key_path) = (tls.join("server.pem"), tls.join("server.key"));
    write(&key_path, &key)?;
    write(&cert_path, &chain)?;
    Ok((cert_path, key_path, ca_cert))
}

/// The names an `auto` certificate is for: this host by every name it is reached by here.
fn hosts(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].iter().map(|s| s.to_string()).collect();
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        names.push(h.trim().to_string());
    }
    names.extend(extra.iter().cloned());
    names.retain(|n| !n.is_empty() && n != "0.0.0.0" && n != "::");
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The answer of the plain-HTTP redirect listener: `308` to the same host, path and query
/// on the gateway's HTTPS port `port`.
pub(crate) fn redirect<B>(req: &http::Request<B>, port: u16) -> http::Response<tonic::body::Body> {
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    // The host without its port (an IPv6 literal keeps its brackets).
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) => h,
        _ => host,
    };
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = if port == 443 { format!("https://{host}{pq}") } else { format!("https://{host}:{port}{pq}") };
    let mut res = http::Response::new(tonic::body::Body::empty());
    *res.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    match http::HeaderValue::from_str(&location) {
        Ok(v) => {
            res.headers_mut().insert(http::header::LOCATION, v);
        }
        Err(_) => *res.status_mut() = http::StatusCode::BAD_REQUEST,
    }
    res
}

/// The TLS of `mode` (`None` when off); `extra_hosts` are more names for `auto`;
/// `cluster`: the cluster's CA, which issues this node's certificate.
pub(crate) fn setup(
    mode: &TlsMode,
    data_dir: &Path,
    extra_hosts: &[String],
    cluster: Option<&Ca>,
) -> Result<Option<Tls>, Error> {
    let names = hosts(extra_hosts);
    let (cert, key, ca) = match mode {
        TlsMode::Off => return Ok(None),
        TlsMode::Auto => {
            let (c, k, ca) = auto(data_dir, &names, cluster)?;
            (c, k, Some(ca))
        }
        TlsMode::Files { cert, key } => (cert.clone(), key.clone(), None),
    };
    let open =
        |c: &Path, k: &Path| micro::tls::Certificates::open(c, k).map_err(|e| Error::Config(e.detail().to_string()));
    let certs = open(&cert, &key)?;
    let node = match cluster {
        None => None,
        Some(ca) => {
            let tls = data_dir.join("tls");
            std::fs::create_dir_all(&tls).map_err(io(&tls))?;
            let (cert, key) = (tls.join("node.pem"), tls.join("node.key"));
            let mut names = names.clone();
            names.push(crate::cluster::NODE_NAME.to_string());
            let (chain_pem, key_pem) = ca.issue(&names, true)?;
            write(&key, &key_pem)?;
            write(&cert, &chain_pem)?;
            Some(NodeTls { certs: open(&cert, &key)?, ca: ca.der()?, chain_pem, key_pem })
        }
    };
    Ok(Some(Tls { certs, ca, node }))
}
