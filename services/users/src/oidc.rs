//! Signing in through an OpenID Connect provider a namespace configured (Google, GitLab,
//! a company's Keycloak, …): the authorization code flow with PKCE, driven by the app.
//!
//! 1. The app asks for the provider's sign-in URL (`Users.OAuthStart`, with one of the
//!    redirect URLs the namespace listed for the provider: exact match only) and sends
//!    the browser there. The server keeps the flow's state, nonce and PKCE verifier for
//!    10 minutes, under a digest of the state.
//! 2. The provider sends the browser back to that URL with `code` and `state`.
//! 3. The app hands both over (`Users.OAuthFinish`): the server uses the state up,
//!    exchanges the code (with the verifier and the client's secret) for an ID token,
//!    checks its signature against the provider's keys, its issuer, audience, expiry and
//!    nonce, and signs in the user the provider's subject is linked to — or links the
//!    user with the address the provider confirmed, or signs a new one up.
//!
//! The server fetches only what the provider's discovery document names, over HTTPS, from
//! public addresses (a name that resolves to a private, loopback or link-local address is
//! refused when connecting, so a tenant cannot aim the server at the network it runs in),
//! with 10-second timeouts and 1 MiB answers at most. `MICRO_USERS_OIDC_PRIVATE=1` lets a
//! server reach providers on private networks and over plain HTTP (an on-premises
//! identity provider, a test).

use crate::{NAME, bad};
use base64::Engine as _;
use http_body_util::Full;
use micro::{Code, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest answer read from a provider.
const MAX_BODY: usize = 1024 * 1024;
/// How long a request to a provider may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a provider's discovery document and keys are kept.
const KEEP: Duration = Duration::from_secs(600);

/// A provider a namespace's users may sign in with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// What the app names it by (`google`, `corp`): 1–32 lowercase letters, digits, `-`.
    pub name: String,
    /// A well-known provider whose issuer is filled in: `google`, `gitlab` or `apple`.
    /// (Microsoft's multi-tenant endpoint names each tenant's issuer in its tokens, which
    /// the issuer check refuses: give a tenant's own issuer instead.)
    #[serde(default)]
    pub preset: Option<String>,
    /// The issuer (`https://accounts.example.com`): its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub issuer: String,
    /// The client id the provider gave the app.
    pub client_id: String,
    /// The client secret the provider gave the app (never shown again: settings show
    /// `"********"`; saving that keeps the secret as it was).
    #[serde(default)]
    pub client_secret: String,
    /// The scopes asked for (default `openid email profile`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The app's pages the provider may send the browser back to (exactly these).
    pub redirect_urls: Vec<String>,
}

/// What settings show in place of a secret.
pub const HIDDEN: &str = "********";

impl Provider {
    /// Checks it and fills in a preset's issuer and the default scopes.
    pub fn normalize(&mut self, private: bool) -> Result<(), Status> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(bad(format!("provider name {:?}: 1-32 lowercase letters, digits and -", self.name)));
        }
        if let Some(p) = &self.preset {
            let issuer = match p.as_str() {
                "google" => "https://accounts.google.com",
                "gitlab" => "https://gitlab.com",
                "apple" => "https://appleid.apple.com",
                other => return Err(bad(format!("unknown preset {other:?}: google, gitlab or apple"))),
            };
            if self.issuer.is_empty() {
                self.issuer = issuer.into();
            }
        }
        self.issuer = self.issuer.trim_end_matches('/').to_string();
        check_url(&format!("provider {}: issuer", self.name), &self.issuer, private)?;
        if self.client_id.is_empty() || self.client_id.len() > 500 || self.client_id.chars().any(char::is_control) {
            return Err(bad(format!("provider {}: client_id must be 1-500 characters", self.name)));
        }
        if self.client_secret.len() > 2000 || self.client_secret.chars().any(char::is_control) {
            return Err(bad(format!("provider {}: client_secret is at most 2000 characters", self.name)));
        }
        if self.scopes.is_empty() {
            self.scopes = ["openid", "email", "profile"].map(String::from).to_vec();
        }
        if !self.scopes.iter().any(|s| s == "openid")
            || self.scopes.len() > 20
            || self.scopes.iter().any(|s| s.is_empty() || s.len() > 100 || !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bad(format!("provider {}: scopes must include openid (at most 20 words)", self.name)));
        }
        if self.redirect_urls.is_empty() || self.redirect_urls.len() > 20 {
            return Err(bad(format!("provider {}: give 1 to 20 redirect_urls (the app's pages)", self.name)));
        }
        for u in &self.redirect_urls {
            let parsed = url::Url::parse(u).map_err(|e| bad(format!("redirect URL {u:?}: {e}")))?;
            if !matches!(parsed.scheme(), "https" | "http") || parsed.fragment().is_some() || u.len() > 500 {
                return Err(bad(format!("redirect URL {u:?}: an http(s) URL without a fragment")));
            }
        }
        Ok(())
    }
}

/// Refuses an URL the server will not fetch (see [`micro::outbound`]).
fn check_url(what: &str, u: &str, private: bool) -> Result<url::Url, Status> {
    micro::outbound::check_url(what, u, private).map_err(bad)
}

/// The provider's endpoints, from its discovery document.
#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
}

/// A flow between its start and its finish.
#[derive(Serialize, Deserialize)]
pub(crate) struct Flow {
    pub(crate) provider: String,
    pub(crate) redirect_url: String,
    pub(crate) verifier: String,
    pub(crate) nonce: String,
}

/// Who the provider says signed in.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) subject: String,
    pub(crate) email: Option<String>,
    pub(crate) email_verified: bool,
    pub(crate) name: String,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
}

/// A provider's discovery document and keys.
type Found = (Discovery, jsonwebtoken::jwk::JwkSet);

/// What the flows share: an HTTPS client and the providers' documents and keys.
pub(crate) struct Oidc {
    client: micro::outbound::Outbound,
    /// Whether private addresses and plain HTTP are allowed (`MICRO_USERS_OIDC_PRIVATE`).
    pub(crate) private: bool,
    cache: Mutex<HashMap<String, (Instant, Arc<Found>)>>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::warn!(service = NAME, error = %e, "{what}");
    Status::new(Code::Unavailable, NAME, format!("{what}: the provider did not answer as expected"))
}

impl Oidc {
    pub(crate) fn new(private: bool) -> Oidc {
        Oidc { client: micro::outbound::Outbound::new(private, TIMEOUT), private, cache: Mutex::new(HashMap::new()) }
    }

    async fn request(&self, req: http::Request<Full<bytes::Bytes>>) -> Result<(u16, Vec<u8>), Status> {
        use micro::outbound::OutboundError;
        match self.client.send(req, MAX_BODY).await {
            Ok(answer) => Ok((answer.status.as_u16(), answer.body.to_vec())),
            Err(OutboundError::Refused(why)) => Err(bad(why)),
            Err(e @ OutboundError::Timeout(_)) => Err(failed("the provider timed out", e)),
            Err(e @ OutboundError::Unreachable(..)) => Err(failed("the provider cannot be reached", e)),
            Err(e @ OutboundError::Unreadable(..)) => {
                Err(failed("the provider's answer is unreadable or too large", e))
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Status> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| bad(format!("URL {url:?}: {e}")))?;
        let (status, body) = self.request(req).await?;
        if status != 200 {
            return Err(failed("the provider refused", format!("{url}: {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| failed("the provider's answer is not what OpenID Connect says", e))
    }

    /// The provider's discovery document and keys (fetched again after 10 minutes, or
    /// when a token names a key not among them).
    async fn provider(&self, issuer: &str, fresh: bool) -> Result<Arc<Found>, Status> {
        if !fresh
            && let Some((at, v)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(issuer)
            && at.elapsed() < KEEP
        {
            return Ok(v.clone());
        }
        let d: Discovery = self.get_json(&format!("{issuer}/.well-known/openid-configuration")).await?;
        if d.issuer.trim_end_matches('/') != issuer {
            return Err(failed("the provider's discovery names another issuer", &d.issuer));
        }
        for u in
            [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri].into_iter().chain(d.userinfo_endpoint.as_ref())
        {
            check_url("the provider's endpoint", u, self.private)?;
        }
        let keys: jsonwebtoken::jwk::JwkSet = self.get_json(&d.jwks_uri).await?;
        let v = Arc::new((d, keys));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(issuer.to_string(), (Instant::now(), v.clone()));
        Ok(v)
    }

    /// The URL that starts signing in with `p`, and the flow to keep under its state.
    pub(crate) async fn start(&self, p: &Provider, redirect_url: &str, state: &str) -> Result<(String, Flow), Status> {
        let found = self.provider(&p.issuer, false).await?;
        let verifier = crate::random_secret()?;
        let nonce = crate::random_secret()?;
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let mut url = url::Url::parse(&found.0.authorization_endpoint)
            .map_err(|e| failed("the provider's authorization endpoint is not a URL", e))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &p.client_id)
            .append_pair("redirect_uri", redirect_url)
            .append_pair("scope", &p.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let flow = Flow { provider: p.name.clone(), redirect_url: redirect_url.into(), verifier, nonce };
        Ok((url.to_string(), flow))
    }

    /// Exchanges `code` of `flow` for the provider's word on who signed in.
    pub(crate) async fn finish(&self, p: &Provider, flow: &Flow, code: &str) -> Result<Identity, Status> {
        let found = self.provider(&p.issuer, false).await?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &flow.redirect_url)
            .append_pair("code_verifier", &flow.verifier)
            .finish();
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&p.client_id),
            enc(&p.client_secret)
        ));
        let req = http::Request::post(&found.0.token_endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(bytes::Bytes::from(form)))
            .map_err(|e| failed("the token request", e))?;
        let (status, body) = self.request(req).await?;
        if status != 200 {
            // The provider's words (which may echo the code) go to the log only.
            tracing::info!(service = NAME, status, body = %String::from_utf8_lossy(&body[..body.len().min(300)]), "the provider refused a code");
            return Err(bad(
                "the provider refused the code (used, expired, or for another redirect URL): sign in again",
            ));
        }
        #[derive(Deserialize)]
        struct Tokens {
            id_token: String,
            #[serde(default)]
            access_token: Option<String>,
        }
        let tokens: Tokens =
            serde_json::from_slice(&body).map_err(|e| failed("the provider's token answer has no id_token", e))?;
        let header =
            jsonwebtoken::decode_header(&tokens.id_token).map_err(|e| failed("the ID token is malformed", e))?;
        use jsonwebtoken::Algorithm::*;
        if !matches!(header.alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA) {
            return Err(failed("the ID token's algorithm is not accepted", format!("{:?}", header.alg)));
        }
        let find = |set: &jsonwebtoken::jwk::JwkSet| match &header.kid {
            Some(kid) => set.find(kid).cloned(),
            None => set.keys.first().cloned(),
        };
        // A key not listed yet: the provider rotated its keys; fetch them once more.
        let (keys, key) = match find(&found.1) {
            Some(k) => (found, k),
            None => {
                let again = self.provider(&p.issuer, true).await?;
                let k =
                    find(&again.1).ok_or_else(|| failed("the ID token names a key the provider does not list", ""))?;
                (again, k)
            }
        };
        let decoding =
            jsonwebtoken::DecodingKey::from_jwk(&key).map_err(|e| failed("the provider's key is unusable", e))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_audience(&[&p.client_id]);
        validation.set_issuer(&[&keys.0.issuer, &p.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 60;
        let mut claims = jsonwebtoken::decode::<IdClaims>(&tokens.id_token, &decoding, &validation)
            .map_err(|e| failed("the ID token does not verify", e))?
            .claims;
        if claims.nonce.as_deref().is_none_or(|n| !crate::same(n, &flow.nonce)) {
            return Err(failed("the ID token is not this sign-in's (its nonce)", ""));
        }
        // A provider may give the address at its userinfo endpoint only (as OpenID
        // Connect says for claims asked for by scope): asked there, for the same subject.
        if claims.email.is_none()
            && let (Some(userinfo), Some(access)) = (&keys.0.userinfo_endpoint, &tokens.access_token)
        {
            let req = http::Request::get(userinfo)
                .header(http::header::ACCEPT, "application/json")
                .header(http::header::AUTHORIZATION, format!("Bearer {access}"))
                .body(Full::default())
                .map_err(|e| failed("the userinfo request", e))?;
            let (status, body) = self.request(req).await?;
            if status == 200
                && let Ok(info) = serde_json::from_slice::<IdClaims>(&body)
                && info.sub == claims.sub
            {
                claims.email = info.email;
                claims.email_verified = info.email_verified;
                claims.name = claims.name.or(info.name);
            }
        }
        let email_verified = match &claims.email_verified {
            Some(serde_json::Value::Bool(b)) => *b,
            // Some providers send "true".
            Some(serde_json::Value::String(s)) => s == "true",
            _ => false,
        };
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(failed("the ID token's subject is unusable", ""));
        }
        Ok(Identity {
            subject: claims.sub,
            email: claims.email,
            email_verified,
            name: claims.name.unwrap_or_default().chars().filter(|c| !c.is_control()).take(100).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("issuer", "http://accounts.example.com", false).is_err());
        assert!(check_url("issuer", "https://169.254.169.254/latest", false).is_err());
        assert!(check_url("issuer", "https://accounts.example.com", false).is_ok());
        assert!(check_url("issuer", "http://127.0.0.1:9000", true).is_ok());
    }

    #[test]
    fn providers_are_checked_and_presets_filled() {
        let mut p = Provider {
            name: "google".into(),
            preset: Some("google".into()),
            issuer: String::new(),
            client_id: "abc".into(),
            client_secret: "s".into(),
            scopes: vec![],
            redirect_urls: vec!["https://shop.example/auth".into()],
        };
        p.normalize(false).unwrap();
        assert_eq!(p.issuer, "https://accounts.google.com");
        assert_eq!(p.scopes, ["openid", "email", "profile"]);
        for broken in [
            Provider { name: "Google!".into(), ..p.clone() },
            Provider { preset: Some("myspace".into()), issuer: String::new(), ..p.clone() },
            Provider { redirect_urls: vec![], ..p.clone() },
            Provider { redirect_urls: vec!["javascript:alert(1)".into()], ..p.clone() },
            Provider { redirect_urls: vec!["https://shop.example/#x".into()], ..p.clone() },
            Provider { scopes: vec!["email".into()], ..p.clone() },
            Provider { preset: None, issuer: "http://10.0.0.1".into(), ..p.clone() },
        ] {
            assert!(broken.clone().normalize(false).is_err(), "{broken:?}");
        }
    }
}
