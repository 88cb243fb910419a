//! Handing one mail to the SMTP server (or the log).

use crate::settings::{Security, Settings, Smtp, Transport};
use crate::{Mail, NAME};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use micro::Status;
use std::time::Duration;

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a mail was not sent.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server refused it for good (a 5xx reply): a bounce.
    Permanent(String),
    /// Try again later: the server was unreachable, or answered 4xx.
    Transient(String),
    /// The mail cannot be written as a message (never expected: it was checked on Send).
    Invalid(String),
}

/// Sends mail as the settings say.
pub(crate) struct Sender {
    from: Mailbox,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

impl Sender {
    /// A sender for `settings`; `None` when mail is off.
    pub(crate) fn new(settings: &Settings) -> Result<Option<Sender>, String> {
        let smtp = match &settings.transport {
            Transport::Off => return Ok(None),
            Transport::Log => None,
            Transport::Smtp(s) => Some(transport(s)?),
        };
        Ok(Some(Sender { from: settings.from.clone(), smtp }))
    }

    /// The platform's name in the From line.
    pub(crate) fn platform_name(&self) -> &str {
        self.from.name.as_deref().unwrap_or("Micro")
    }

    /// The message `mail` of namespace `ns` becomes: from the platform's address, named
    /// "`<name> via <platform>`" for any namespace but the platform's own (so no tenant's
    /// mail reads as the platform's), with a Message-ID of its own id so a receiver can
    /// drop a repeat.
    pub(crate) fn message(&self, ns: &str, mail: &Mail) -> Result<Message, String> {
        let name = if ns == micro_core::namespace::DEFAULT {
            mail.from_name.clone().unwrap_or_else(|| self.platform_name().to_string())
        } else {
            format!("{} via {}", mail.from_name.as_deref().unwrap_or(ns), self.platform_name())
        };
        let from = Mailbox::new(Some(name), self.from.email.clone());
        let to: Mailbox = mail.to.parse().map_err(|e| format!("recipient {:?}: {e}", mail.to))?;
        let mut b = Message::builder().from(from).to(to).subject(mail.subject.clone()).message_id(Some(format!(
            "<{}@{}>",
            mail.id,
            self.from.email.domain()
        )));
        if let Some(r) = &mail.reply_to {
            b = b.reply_to(r.parse().map_err(|e| format!("reply-to {r:?}: {e}"))?);
        }
        if let Some(u) = &mail.unsubscribe {
            b = b.header(ListUnsubscribe(format!("<{u}>"))).header(ListUnsubscribePost);
        }
        let m = match &mail.html {
            Some(html) => b.multipart(MultiPart::alternative_plain_html(mail.text.clone(), html.clone())),
            None => b.singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(mail.text.clone())),
        };
        m.map_err(|e| e.to_string())
    }

    /// Sends `mail` of namespace `ns` once.
    pub(crate) async fn send(&self, ns: &str, mail: &Mail) -> Result<(), Failure> {
        let message = self.message(ns, mail).map_err(Failure::Invalid)?;
        match &self.smtp {
            None => {
                tracing::info!(
                    service = NAME,
                    id = %mail.id,
                    to = %mail.to,
                    subject = %mail.subject,
                    text = %mail.text,
                    "mail (MICRO_SMTP=log: logged, not sent)"
                );
                Ok(())
            }
            Some(smtp) => match smtp.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(Failure::Permanent(e.to_string())),
                Err(e) => Err(Failure::Transient(e.to_string())),
            },
        }
    }
}

fn transport(s: &Smtp) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = || -> Result<TlsParameters, String> {
        let mut p = TlsParameters::builder(s.host.clone());
        if let Some(pem) = &s.ca {
            p = p.add_root_certificate(Certificate::from_pem(pem).map_err(|e| format!("MICRO_SMTP_CA: {e}"))?);
        }
        p.build_rustls().map_err(|e| format!("TLS for {}: {e}", s.host))
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
        .port(s.port)
        .timeout(Some(SMTP_TIMEOUT))
        .tls(match s.security {
            Security::None => Tls::None,
            Security::StartTls => Tls::Required(tls()?),
            Security::Implicit => Tls::Wrapper(tls()?),
        });
    if let Some((user, password)) = &s.login {
        b = b.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(b.build())
}

/// The error `Email.Send` gives when the platform sends no mail.
pub(crate) fn off() -> Status {
    Status::new(
        micro_core::Code::FailedPrecondition,
        NAME,
        "this platform sends no mail: its operator sets MICRO_SMTP (see docs/email.md)",
    )
}

/// `List-Unsubscribe: <url>` (RFC 2369).
#[derive(Clone)]
struct ListUnsubscribe(String);

impl lettre::message::header::Header for ListUnsubscribe {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Clone)]
struct ListUnsubscribePost;

impl lettre::message::header::Header for ListUnsubscribePost {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_string())
    }
}
