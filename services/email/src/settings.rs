//! How the platform sends mail: `MICRO_SMTP` and friends, read once at start-up.

use lettre::message::Mailbox;
use std::time::Duration;

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain text (`smtp://…?tls=none`): only for a relay on this machine or a trusted network.
    None,
    /// STARTTLS, required (`smtp://`, port 587 by default).
    StartTls,
    /// TLS from the first byte (`smtps://`, port 465 by default).
    Implicit,
}

/// An SMTP server to send through.
#[derive(Clone, PartialEq)]
pub struct Smtp {
    /// Its host name (also the name its certificate must show).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How the connection is secured.
    pub security: Security,
    /// The user and password to log in with, if any.
    pub login: Option<(String, String)>,
    /// A PEM certificate of an extra authority to trust (`MICRO_SMTP_CA`), for a private relay.
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Smtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.login.as_ref().map(|l| &l.0))
            .finish()
    }
}

/// Where mail goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Transport {
    /// Nowhere: `Email.Send` says the platform has no mail configured.
    Off,
    /// Into the service's log, marked sent (`MICRO_SMTP=log`): for development.
    Log,
    /// Through an SMTP server.
    Smtp(Smtp),
}

/// The email service's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Where mail goes (`MICRO_SMTP`).
    pub transport: Transport,
    /// Who the platform's mail is from (`MICRO_EMAIL_FROM`, default `Micro <no-reply@localhost>`);
    /// tenants choose the display name and the Reply-To, never the address.
    pub from: Mailbox,
    /// How many recipients a namespace other than `micro` may send to per UTC day
    /// (`MICRO_EMAIL_DAILY_LIMIT`, default 500; 0 for no limit).
    pub daily_limit: u32,
    /// The first retry's delay; each next one doubles, up to an hour (`MICRO_EMAIL_RETRY`,
    /// seconds, default 5).
    pub retry: Duration,
}

/// Recipients per namespace per day when `MICRO_EMAIL_DAILY_LIMIT` is not set.
const DEFAULT_DAILY_LIMIT: u32 = 500;

impl Default for Settings {
    fn default() -> Settings {
        let address = lettre::Address::new("no-reply", "localhost").expect("a valid address");
        Settings {
            transport: Transport::Off,
            from: Mailbox::new(Some("Micro".into()), address),
            daily_limit: DEFAULT_DAILY_LIMIT,
            retry: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// Reads the settings from environment-style variables (`MICRO_SMTP`,
    /// `MICRO_SMTP_CA`, `MICRO_EMAIL_FROM`, `MICRO_EMAIL_DAILY_LIMIT`,
    /// `MICRO_EMAIL_RETRY`), with the variable's name in any error.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let mut s = Settings::default();
        let ca = match get("MICRO_SMTP_CA").filter(|v| !v.is_empty()) {
            Some(path) => Some(std::fs::read(&path).map_err(|e| format!("MICRO_SMTP_CA: cannot read {path}: {e}"))?),
            None => None,
        };
        if let Some(url) = get("MICRO_SMTP").filter(|v| !v.trim().is_empty()) {
            s.transport = parse_url(url.trim(), ca).map_err(|e| format!("MICRO_SMTP: {e}"))?;
        }
        if let Some(from) = get("MICRO_EMAIL_FROM").filter(|v| !v.trim().is_empty()) {
            s.from = from
                .trim()
                .parse()
                .map_err(|e| format!("MICRO_EMAIL_FROM: {from:?} is not an address like \"Name <a@b.c>\": {e}"))?;
        }
        if let Some(v) = get("MICRO_EMAIL_DAILY_LIMIT").filter(|v| !v.is_empty()) {
            s.daily_limit =
                v.trim().parse().map_err(|_| format!("MICRO_EMAIL_DAILY_LIMIT: {v:?} is not a whole number"))?;
        }
        if let Some(v) = get("MICRO_EMAIL_RETRY").filter(|v| !v.is_empty()) {
            let secs = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                .ok_or_else(|| format!("MICRO_EMAIL_RETRY: {v:?} is not a number of seconds from 0 to 3600"))?;
            s.retry = Duration::from_secs_f64(secs);
        }
        Ok(s)
    }

    /// Reads the settings from the process's environment.
    pub fn from_env() -> Result<Settings, String> {
        Settings::from_vars(|k| std::env::var(k).ok())
    }
}

/// Parses `log`, `smtp://[user:password@]host[:port][?tls=none]` or
/// `smtps://[user:password@]host[:port]`.
fn parse_url(v: &str, ca: Option<Vec<u8>>) -> Result<Transport, String> {
    if v == "log" {
        return Ok(Transport::Log);
    }
    let url = url::Url::parse(v).map_err(|e| format!("{e}: use smtp://user:password@host:587, smtps://… or log"))?;
    let mut security = match url.scheme() {
        "smtp" => Security::StartTls,
        "smtps" => Security::Implicit,
        other => return Err(format!("unknown scheme {other:?}: use smtp://, smtps:// or log")),
    };
    for (k, val) in url.query_pairs() {
        match (k.as_ref(), val.as_ref(), security) {
            ("tls", "none", Security::StartTls) => security = Security::None,
            ("tls", "starttls" | "required", Security::StartTls) => {}
            _ => return Err(format!("unknown option {k}={val}: the one option is tls=none (smtp:// only)")),
        }
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL names no host")?.to_string();
    let port = url.port().unwrap_or(match security {
        Security::Implicit => 465,
        Security::StartTls => 587,
        Security::None => 25,
    });
    let login = if url.username().is_empty() {
        None
    } else {
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Some((decode(url.username()), decode(url.password().unwrap_or(""))))
    };
    // A password is never sent in plain text off this machine.
    if login.is_some() && security == Security::None && !loopback(&host) {
        return Err(format!("tls=none would send the password in plain text to {host}: use STARTTLS or smtps://"));
    }
    Ok(Transport::Smtp(Smtp { host, port, security, login, ca }))
}

fn loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_vars(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn urls() {
        let Transport::Smtp(s) = vars(&[("MICRO_SMTP", "smtp://me%40x.org:p%3Ass@mail.x.org")]).unwrap().transport
        else {
            panic!("smtp")
        };
        assert_eq!((s.host.as_str(), s.port, s.security), ("mail.x.org", 587, Security::StartTls));
        assert_eq!(s.login, Some(("me@x.org".into(), "p:ss".into())));
        assert!(!format!("{s:?}").contains("p:ss"), "the password is never printed");
        let Transport::Smtp(s) = vars(&[("MICRO_SMTP", "smtps://mail.x.org")]).unwrap().transport else {
            panic!("smtps")
        };
        assert_eq!((s.port, s.security), (465, Security::Implicit));
        let Transport::Smtp(s) = vars(&[("MICRO_SMTP", "smtp://u:p@127.0.0.1:2525?tls=none")]).unwrap().transport
        else {
            panic!("plain")
        };
        assert_eq!((s.port, s.security), (2525, Security::None));
        assert!(matches!(vars(&[("MICRO_SMTP", "log")]).unwrap().transport, Transport::Log));
        assert!(matches!(vars(&[]).unwrap().transport, Transport::Off));
    }

    #[test]
    fn bad_settings() {
        let e = vars(&[("MICRO_SMTP", "smtp://u:p@mail.x.org?tls=none")]).unwrap_err();
        assert!(e.contains("plain text"), "{e}");
        assert!(vars(&[("MICRO_SMTP", "http://x")]).unwrap_err().contains("unknown scheme"));
        assert!(vars(&[("MICRO_SMTP", "smtps://x?tls=none")]).unwrap_err().contains("unknown option"));
        assert!(vars(&[("MICRO_EMAIL_FROM", "nobody")]).unwrap_err().starts_with("MICRO_EMAIL_FROM"));
        assert!(vars(&[("MICRO_EMAIL_DAILY_LIMIT", "-1")]).unwrap_err().starts_with("MICRO_EMAIL_DAILY_LIMIT"));
        assert!(vars(&[("MICRO_EMAIL_RETRY", "0")]).unwrap_err().starts_with("MICRO_EMAIL_RETRY"));
        assert!(vars(&[("MICRO_SMTP_CA", "/nonexistent/ca.pem")]).unwrap_err().starts_with("MICRO_SMTP_CA"));
    }
}
