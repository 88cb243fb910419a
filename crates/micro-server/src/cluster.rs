//! A cluster's own certificates, and how a machine joins one (docs/deploy.md).
//!
//! The nodes of a cluster with TLS on call each other over mutual TLS, with certificates
//! from the cluster's CA. The CA is made once, by the first node (which adopts its local
//! CA when it has one), and kept in the shared auth database with its key sealed under
//! `MICRO_CONFIG_KEY`; every node issues its own certificate from it at start. A node's
//! proxy refuses a forwarded runtime call from a caller without one.
//!
//! A machine without the cluster's secrets joins with a one-time token (`micro cluster
//! token`): it checks the node it joins through against the CA fingerprint in the token,
//! and trades the token for the cluster's backends and config key, which it keeps in
//! `<data dir>/cluster.json` (owner-only) for its later starts.

use crate::Error;
use crate::sealed::Sealer;
use micro::proto::cluster as pb;
use micro_core::Status;
use micro_core::store::{Query, Record, Store, Table};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The name every node's certificate carries and node-to-node calls ask for (SNI).
pub(crate) const NODE_NAME: &str = "node.micro-cluster.internal";

/// Where the CA and the join tokens are kept, in the auth database.
fn table() -> Table {
    Table::new(micro_core::namespace::DEFAULT, "cluster")
}

/// The file a joined node keeps the cluster's environment in.
pub(crate) const JOINED_FILE: &str = "cluster.json";

const TOKEN_PREFIX: &str = "micro-join1";
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);

/// The SHA-256 of a certificate (DER), hex.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    crate::sha256_hex(der)
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    /// The certificate and the key, sealed together (a database writer without the
    /// config key can swap neither).
    sealed: serde_json::Value,
}

fn sealed_path() -> Vec<String> {
    vec!["ca".to_string()]
}

async fn read_ca(store: &Arc<dyn Store>, table: &Table, sealer: &Sealer) -> Result<Option<crate::tls::Ca>, Status> {
    let records = match store.read(table, "ca", &Query::default()).await {
        Ok(r) => r,
        Err(e) if e.code() == micro_core::Code::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(r) = records.into_iter().next() else { return Ok(None) };
    let unreadable = |e: String| Status::internal("cluster", format!("the stored cluster CA is unreadable: {e}"));
    let stored: StoredCa = serde_json::from_slice(&r.value).map_err(|e| unreadable(e.to_string()))?;
    let opened = sealer.open(micro_core::namespace::DEFAULT, &sealed_path(), &stored.sealed).await?;
    let field = |k: &str| opened.get(k).and_then(|v| v.as_str()).map(str::to_string);
    match (field("cert"), field("key")) {
        (Some(cert_pem), Some(key_pem)) => Ok(Some(crate::tls::Ca { cert_pem, key_pem })),
        _ => Err(unreadable("no certificate or key in it".into())),
    }
}

/// The cluster's CA: read from the shared auth database, or, by the first node, made
/// there (`local`, this node's own CA, is adopted when given).
pub(crate) async fn ca(
    store: &Arc<dyn Store>,
    sealer: &Sealer,
    sync: &Arc<dyn micro_core::sync::Sync>,
    local: Option<crate::tls::Ca>,
) -> Result<crate::tls::Ca, Error> {
    Ok(stored_ca(store, sealer, sync, &table(), "server/cluster-ca", local).await?)
}

/// A CA kept sealed in `table` of `store` (record `ca`): read, or made by the first
/// node to look (under the lock `lock`), adopting `local` when given.
pub(crate) async fn sealed_ca(
    store: &Arc<dyn Store>,
    sealer: &Sealer,
    sync: &Arc<dyn micro_core::sync::Sync>,
    table: &Table,
    lock: &str,
) -> Result<crate::tls::Ca, Status> {
    stored_ca(store, sealer, sync, table, lock, None).await
}

async fn stored_ca(
    store: &Arc<dyn Store>,
    sealer: &Sealer,
    sync: &Arc<dyn micro_core::sync::Sync>,
    table: &Table,
    lock: &str,
    local: Option<crate::tls::Ca>,
) -> Result<crate::tls::Ca, Status> {
    if let Some(ca) = read_ca(store, table, sealer).await? {
        return Ok(ca);
    }
    let ns = micro_core::namespace::DEFAULT;
    let held = sync.lock(ns, lock, Duration::from_secs(30), Duration::from_secs(30)).await?;
    let made = async {
        if let Some(ca) = read_ca(store, table, sealer).await? {
            return Ok(ca);
        }
        let ca = match local {
            Some(l) => l,
            None => crate::tls::Ca::new().map_err(|e| Status::internal("cluster", e.to_string()))?,
        };
        let both = serde_json::json!({"cert": ca.cert_pem, "key": ca.key_pem});
        let stored = StoredCa { sealed: sealer.seal(ns, &sealed_path(), &both).await? };
        let value = serde_json::to_vec(&stored).map_err(|e| Status::internal("cluster", e.to_string()))?;
        store.write(table, &Record::new("ca", value), None).await?;
        tracing::info!(table = %table.table, "made a CA");
        Ok::<_, Status>(ca)
    }
    .await;
    let _ = sync.unlock(ns, &held).await;
    made
}

/// A join token's parts.
struct Token {
    fingerprint: String,
    secret: String,
}

impl Token {
    fn parse(token: &str) -> Result<Token, Status> {
        let bad =
            || Status::bad_request("cluster", "not a join token: it looks like micro-join1.<fingerprint>.<secret>");
        let mut parts = token.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hex_ok = fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok || secret.len() < 32 || secret.len() > 128 {
            return Err(bad());
        }
        Ok(Token { fingerprint: fp.to_ascii_lowercase(), secret: secret.to_string() })
    }

    /// The key the token is kept under: its secret's hash, never the secret.
    fn key(&self) -> String {
        format!("token/{}", crate::sha256_hex(self.secret.as_bytes()))
    }
}

/// The `cluster` core service. `ca` is `None` on a server that is not a cluster with TLS.
pub(crate) struct ClusterService {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ca_fingerprint: Option<String>,
    pub(crate) backends: crate::Backends,
}

fn t(s: Status) -> tonic::Status {
    micro::status::to_tonic(&s)
}

fn not_a_cluster() -> Status {
    Status::new(
        micro_core::Code::FailedPrecondition,
        "cluster",
        "this server is not a cluster with TLS: joining needs a shared database (MICRO_BACKEND), \
         MICRO_CONFIG_KEY and TLS (MICRO_TLS)",
    )
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn token(
        &self,
        req: tonic::Request<pb::TokenRequest>,
    ) -> Result<tonic::Response<pb::TokenReply>, tonic::Status> {
        let fp = self.ca_fingerprint.clone().ok_or_else(|| t(not_a_cluster()))?;
        let ttl = match req.get_ref().ttl_seconds {
            0 => DEFAULT_TTL,
            s if s < 0 || s as u64 > MAX_TTL.as_secs() => {
                return Err(t(Status::bad_request("cluster", "ttl: give 1 second to 7 days")));
            }
            s => Duration::from_secs(s as u64),
        };
        let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let token = Token { fingerprint: fp.clone(), secret };
        let expires = micro_core::store::now_ms() / 1000 + ttl.as_secs();
        let by =
            micro::auth::Caller::of(&req).and_then(|c| c.account.as_ref()).map(|a| a.id.clone()).unwrap_or_default();
        let record = Record::new(token.key(), serde_json::json!({ "by": by, "expires": expires }).to_string());
        self.store.write(&table(), &record, Some(ttl)).await.map_err(t)?;
        let text = format!("{TOKEN_PREFIX}.{}.{}", token.fingerprint, token.secret);
        tracing::info!(by = %by, expires, "made a join token");
        Ok(tonic::Response::new(pb::TokenReply { token: text, expires: expires as i64, ca_fingerprint: fp }))
    }

    async fn join(
        &self,
        req: tonic::Request<pb::JoinRequest>,
    ) -> Result<tonic::Response<pb::JoinReply>, tonic::Status> {
        let fp = self.ca_fingerprint.as_deref().ok_or_else(|| t(not_a_cluster()))?;
        let refused = || {
            t(Status::new(micro_core::Code::PermissionDenied, "cluster", "the join token is unknown, used or expired"))
        };
        let token = Token::parse(&req.get_ref().token).map_err(t)?;
        if token.fingerprint != fp {
            return Err(refused());
        }
        // One join per token: the delete is the redemption (the shared database deletes
        // a live record once, and says NotFound to a second, racing or later, delete and
        // for an expired one), so no lock is needed, and none can be held by callers.
        match self.store.delete(&table(), &token.key()).await {
            Ok(()) => {}
            Err(e) if e.code() == micro_core::Code::NotFound => return Err(refused()),
            Err(e) => {
                tracing::warn!(error = %e, "redeeming a join token failed");
                return Err(t(Status::unavailable("cluster", "the join failed; try again (the node's log says why)")));
            }
        }
        let peer = req.extensions().get::<micro::server::PeerAddr>().map(|p| p.0.to_string()).unwrap_or_default();
        tracing::info!(peer = %peer, "a node joined with a token");
        Ok(tonic::Response::new(pb::JoinReply { env: self.backends.to_env().into_iter().collect() }))
    }
}

/// Trusts a server whose chain includes the CA of `fingerprint` and whose certificate
/// that CA issued for [`NODE_NAME`]: how a joining machine, which has no CA yet, checks
/// the node it joins through.
#[derive(Debug)]
pub(crate) struct Pinned {
    pub(crate) fingerprint: String,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
    /// The name the server's certificate must be for.
    pub(crate) name: &'static str,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| fingerprint(c) == self.fingerprint).ok_or_else(|| {
            rustls::Error::General("the server is not a node of the token's cluster (its CA does not match)".into())
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(self.name).map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The environment a joined node keeps, if it has joined.
pub(crate) fn joined(data_dir: &Path) -> Result<Option<BTreeMap<String, String>>, Error> {
    let path = data_dir.join(JOINED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Config(format!("{}: unreadable ({e}); remove it and join again", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::DataDir { path: path.display().to_string(), source }),
    }
}

/// Joins the cluster through the node at `address` with `token`: checks the node
/// against the token's CA, trades the token for the cluster's environment, and keeps it
/// in the data dir (owner-only); returns it.
pub(crate) async fn join(data_dir: &Path, address: &str, token: &str) -> Result<BTreeMap<String, String>, Error> {
    let failed = |detail: String| Error::Config(format!("joining the cluster through {address}: {detail}"));
    let parsed = Token::parse(token).map_err(|e| failed(e.detail().to_string()))?;
    let provider = micro::tls::provider();
    let verifier = Pinned { fingerprint: parsed.fingerprint, provider: provider.clone(), name: NODE_NAME };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let transport = micro::Transport::with_client_config(tls, Some(NODE_NAME)).map_err(Error::Service)?;
    let host = address.strip_prefix("https://").unwrap_or(address);
    let channel = micro::Channel::on(&transport, &format!("https://{host}"), None).map_err(Error::Service)?;
    let mut client = pb::cluster_client::ClusterClient::new(channel);
    let req = pb::JoinRequest { token: token.trim().to_string() };
    let reply = tokio::time::timeout(Duration::from_secs(30), client.join(req))
        .await
        .map_err(|_| failed("no answer within 30 s".into()))?
        .map_err(|e| failed(e.message().to_string()))?;
    let env: BTreeMap<String, String> = reply.into_inner().env.into_iter().collect();
    let text = serde_json::to_string_pretty(&env).map_err(|e| failed(e.to_string()))?;
    crate::tls::write(&data_dir.join(JOINED_FILE), &text)?;
    tracing::info!(through = %address, "joined the cluster");
    Ok(env)
}

/// A transport for calls to the other nodes: mutual TLS with this node's certificate,
/// trusting the cluster's CA alone, asking for [`NODE_NAME`].
pub(crate) fn node_transport(node: &crate::tls::NodeTls) -> Result<micro::Transport, Error> {
    let tls = micro::tls::private_client_config(
        std::slice::from_ref(&node.ca),
        Some((node.chain_pem.as_bytes(), node.key_pem.as_bytes())),
    )?;
    Ok(micro::Transport::with_client_config(tls, Some(NODE_NAME))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_strictly() {
        let fp = "a".repeat(64);
        let ok = format!("micro-join1.{fp}.{}", "s".repeat(64));
        assert_eq!(Token::parse(&ok).unwrap().fingerprint, fp);
        for bad in [
            "",
            "micro-join1",
            &format!("micro-join2.{fp}.{}", "s".repeat(64)),
            &format!("micro-join1.{}.{}", "z".repeat(64), "s".repeat(64)),
            &format!("micro-join1.{fp}.short"),
            &format!("micro-join1.{fp}.{}.extra", "s".repeat(64)),
        ] {
            let e = Token::parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert!(e.detail().contains("not a join token"), "{e}");
        }
        // The key is the secret's hash, never the secret.
        let t = Token::parse(&ok).unwrap();
        assert!(!t.key().contains(&t.secret));
    }
}
