//! The client address the auth service limits failed logins by, vouched for at an edge.
//!
//! The proxy stamps [`CLIENT_ADDRESS`] from the connection, dropping whatever a caller
//! sent, so nobody picks the address its failures count under. The dashboard calls the
//! proxy for browsers, though, and its connections all come from this host: it vouches
//! for the browser's address with its process's [`EdgeKey`], a random secret that never
//! leaves the process (the proxy strips it from every request before anything else sees
//! it, and only the dashboard's sign-in calls carry it).

use crate::server::{CLIENT_ADDRESS, PeerAddr};
use std::net::IpAddr;
use std::sync::Arc;

/// The header carrying the [`EdgeKey`].
pub const EDGE_KEY: &str = "micro-edge-key";

/// A secret of this process, which lets its dashboard name the client address of a call
/// it makes for a browser. Cheap to clone.
#[derive(Clone)]
pub struct EdgeKey(Arc<str>);

impl EdgeKey {
    /// A new random key (244 random bits).
    pub fn random() -> EdgeKey {
        let key = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        EdgeKey(key.into())
    }

    /// At the proxy's edge: keeps a client address vouched for with this key, else stamps
    /// the connection's; the key goes no further either way. Returns whether the call was
    /// vouched for (it came from this process's gateway or dashboard).
    pub fn stamp<B>(&self, req: &mut http::Request<B>) -> bool {
        let vouched = req.headers().get(EDGE_KEY).is_some_and(|k| self.matches(k.as_bytes()))
            && req
                .headers()
                .get(CLIENT_ADDRESS)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.parse::<IpAddr>().is_ok());
        req.headers_mut().remove(EDGE_KEY);
        if !vouched {
            crate::server::stamp_client_address(req);
        }
        vouched
    }

    /// Vouches for `client` as the address a call of the dashboard is made for.
    pub fn vouch<T>(&self, req: &mut tonic::Request<T>, client: IpAddr) {
        let (Ok(key), Ok(address)) = (self.0.parse(), client.to_string().parse()) else { return };
        req.metadata_mut().insert(EDGE_KEY, key);
        req.metadata_mut().insert(CLIENT_ADDRESS, address);
    }

    /// The key, for the metadata of a call to the core (never to a service's node).
    pub fn value(&self) -> &str {
        &self.0
    }

    /// Whether `key` is this key, compared in constant time.
    fn matches(&self, key: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(key).into()
    }
}

/// The address of the client of a request served by [`crate::server::serve`].
pub fn peer<B>(req: &http::Request<B>) -> Option<IpAddr> {
    req.extensions().get::<PeerAddr>().map(|p| p.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut r = http::Request::new(());
        for (k, v) in headers {
            r.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        r.extensions_mut().insert(PeerAddr("192.0.2.9:4000".parse().unwrap()));
        r
    }

    fn stamped(key: &EdgeKey, headers: &[(&str, &str)]) -> (Option<String>, bool) {
        let mut r = request(headers);
        key.stamp(&mut r);
        let address = r.headers().get(CLIENT_ADDRESS).and_then(|v| v.to_str().ok()).map(str::to_string);
        (address, r.headers().contains_key(EDGE_KEY))
    }

    #[test]
    fn only_the_key_holder_names_the_address() {
        let key = EdgeKey::random();
        let own = key.0.to_string();
        let peer = Some("192.0.2.9".to_string());
        assert_eq!(stamped(&key, &[]), (peer.clone(), false));
        assert_eq!(stamped(&key, &[(CLIENT_ADDRESS, "10.0.0.1")]), (peer.clone(), false));
        let guessed = [(EDGE_KEY, "guess"), (CLIENT_ADDRESS, "10.0.0.1")];
        assert_eq!(stamped(&key, &guessed), (peer.clone(), false));
        let another = EdgeKey::random().0.to_string();
        assert_eq!(stamped(&key, &[(EDGE_KEY, &another), (CLIENT_ADDRESS, "10.0.0.1")]), (peer.clone(), false));
        assert_eq!(stamped(&key, &[(EDGE_KEY, &own), (CLIENT_ADDRESS, "not an address")]), (peer, false));
        assert_eq!(stamped(&key, &[(EDGE_KEY, &own), (CLIENT_ADDRESS, "10.0.0.1")]), (Some("10.0.0.1".into()), false));
    }

    #[test]
    fn vouching_sets_both_headers() {
        let key = EdgeKey::random();
        let mut req = tonic::Request::new(());
        key.vouch(&mut req, "2001:db8::1".parse().unwrap());
        let mut r = http::Request::new(());
        *r.headers_mut() = req.metadata().clone().into_headers();
        key.stamp(&mut r);
        assert_eq!(r.headers().get(CLIENT_ADDRESS).unwrap(), "2001:db8::1");
        assert!(!r.headers().contains_key(EDGE_KEY));
    }
}
