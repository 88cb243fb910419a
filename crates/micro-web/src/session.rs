//! Sessions: in memory, a random id in a cookie, the account's tokens on the server side.

use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "micro_session";
/// The pre-session cookie of the sign-in form (login CSRF).
pub(crate) const LOGIN_COOKIE: &str = "micro_login";
/// At most this many sessions are kept (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// A signed-in browser.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) id: String,
    /// The namespace the pages show.
    pub(crate) namespace: String,
    /// The account's own namespace.
    pub(crate) home: String,
    pub(crate) account: String,
    pub(crate) admin: bool,
    pub(crate) token: String,
    pub(crate) refresh: String,
    /// Unix seconds when the access token expires.
    pub(crate) expiry: u64,
    pub(crate) csrf: String,
    started: u64,
    /// The person's own session while they work in a team's namespace (`Sessions::enter`).
    pub(crate) away_from: Option<Box<Started>>,
}

impl Session {
    /// Takes on `who`'s identity and tokens; returns the ones it had.
    fn assume(&mut self, who: Started) -> Started {
        Started {
            namespace: std::mem::replace(&mut self.namespace, who.namespace),
            home: std::mem::replace(&mut self.home, who.home),
            account: std::mem::replace(&mut self.account, who.account),
            admin: std::mem::replace(&mut self.admin, who.admin),
            token: std::mem::replace(&mut self.token, who.token),
            refresh: std::mem::replace(&mut self.refresh, who.refresh),
            expiry: std::mem::replace(&mut self.expiry, who.expiry),
        }
    }

    /// Whether a submitted CSRF token is this session's (compared in constant time).
    pub(crate) fn csrf_ok(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.csrf.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

/// What a new session starts with.
#[derive(Clone, Debug)]
pub(crate) struct Started {
    pub(crate) namespace: String,
    pub(crate) home: String,
    pub(crate) account: String,
    pub(crate) admin: bool,
    pub(crate) token: String,
    pub(crate) refresh: String,
    pub(crate) expiry: u64,
}

/// Every session of this node.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 256 random bits as hex.
pub(crate) fn random_id() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

impl Sessions {
    pub(crate) fn start(&self, s: Started) -> Session {
        let session = Session {
            id: random_id(),
            namespace: s.namespace,
            home: s.home,
            account: s.account,
            admin: s.admin,
            token: s.token,
            refresh: s.refresh,
            expiry: s.expiry,
            csrf: random_id(),
            started: now(),
            away_from: None,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            let t = now();
            map.retain(|_, s| s.expiry > t);
            if map.len() >= MAX_SESSIONS
                && let Some(oldest) = map.values().min_by_key(|s| s.started).map(|s| s.id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// The session of a request's cookie, if any.
    pub(crate) fn of(&self, headers: &http::HeaderMap) -> Option<Session> {
        let id = micro::auth::cookie(headers, SESSION_COOKIE)?;
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// Replaces a session's tokens after a refresh.
    pub(crate) fn renew(&self, id: &str, token: String, refresh: String, expiry: u64) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        s.token = token;
        s.refresh = refresh;
        s.expiry = expiry;
        Some(s.clone())
    }

    /// The session of `id` works as `team` (an account in a team's namespace) until
    /// [`Sessions::leave`]; the person's own account is kept aside (the first one, when
    /// they go from one team to another).
    pub(crate) fn enter(&self, id: &str, team: Started) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        let own = s.assume(team);
        s.away_from.get_or_insert(Box::new(own));
        Some(s.clone())
    }

    /// Back to the person's own account after [`Sessions::enter`].
    pub(crate) fn leave(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        let own = s.away_from.take()?;
        s.assume(*own);
        Some(s.clone())
    }

    pub(crate) fn set_namespace(&self, id: &str, ns: &str) {
        if let Some(s) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get_mut(id) {
            s.namespace = ns.to_string();
        }
    }

    pub(crate) fn end(&self, id: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// A `Set-Cookie` value: the cookie is the server's alone (`HttpOnly`), goes only with
/// requests from the dashboard's own pages (`SameSite=Strict`), and only over HTTPS when
/// the browser came over HTTPS (`Secure`).
fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> http::HeaderValue {
    let mut c = cookie::Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure);
    if let Some(age) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(i64::try_from(age).unwrap_or(i64::MAX)));
    }
    http::HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

pub(crate) fn session_cookie(s: &Session, secure: bool) -> http::HeaderValue {
    set_cookie(SESSION_COOKIE, &s.id, None, secure)
}

pub(crate) fn clear_cookie(secure: bool) -> http::HeaderValue {
    set_cookie(SESSION_COOKIE, "", Some(0), secure)
}

pub(crate) fn login_cookie(token: &str, secure: bool) -> http::HeaderValue {
    set_cookie(LOGIN_COOKIE, token, Some(3600), secure)
}

pub(crate) fn clear_login_cookie(secure: bool) -> http::HeaderValue {
    set_cookie(LOGIN_COOKIE, "", Some(0), secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_in_teams_keeps_the_persons_own_session_aside() {
        let who = |ns: &str, token: &str| Started {
            namespace: ns.into(),
            home: ns.into(),
            account: "ann@example.com".into(),
            admin: true,
            token: token.into(),
            refresh: format!("r-{token}"),
            expiry: 1,
        };
        let sessions = Sessions::default();
        let s = sessions.start(who("ann", "own"));
        assert!(sessions.leave(&s.id).is_none(), "not away: nothing to go back to");
        let a = sessions.enter(&s.id, who("crew", "crew-token")).unwrap();
        assert_eq!((a.namespace.as_str(), a.token.as_str()), ("crew", "crew-token"));
        assert_eq!(a.away_from.as_ref().map(|o| o.token.as_str()), Some("own"));
        // From one team to another: home is still the person's own.
        let b = sessions.enter(&s.id, who("acme", "acme-token")).unwrap();
        assert_eq!((b.home.as_str(), b.away_from.as_ref().map(|o| o.namespace.as_str())), ("acme", Some("ann")));
        let back = sessions.leave(&s.id).unwrap();
        assert_eq!((back.namespace.as_str(), back.token.as_str(), back.refresh.as_str()), ("ann", "own", "r-own"));
        assert!(back.away_from.is_none());
        assert_eq!(back.csrf, s.csrf, "the same session");
    }

    #[test]
    fn cookies_and_csrf() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; micro_session=abc; b=2".parse().unwrap());
        let sessions = Sessions::default();
        assert!(sessions.of(&h).is_none());
        let s = sessions.start(Started {
            namespace: "micro".into(),
            home: "micro".into(),
            account: "admin".into(),
            admin: true,
            token: "t".into(),
            refresh: "r".into(),
            expiry: now() + 60,
        });
        assert!(s.csrf_ok(&s.csrf.clone()) && !s.csrf_ok("nope") && !s.csrf_ok(""));
        h.insert(http::header::COOKIE, format!("a=1; micro_session={}; b=2", s.id).parse().unwrap());
        assert_eq!(sessions.of(&h).map(|found| found.id), Some(s.id.clone()));
        let v = session_cookie(&s, false);
        assert_eq!(v.to_str().unwrap(), format!("micro_session={}; HttpOnly; SameSite=Strict; Path=/", s.id));
        assert_eq!(
            clear_login_cookie(true).to_str().unwrap(),
            "micro_login=; HttpOnly; SameSite=Strict; Secure; Path=/; Max-Age=0"
        );
        assert!(login_cookie("t", false).to_str().unwrap().ends_with("; Max-Age=3600"));
    }
}
