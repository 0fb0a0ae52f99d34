//! Email over SMTP with lettre.
//!
//! The SMTP conversation is driven step by step (connect, EHLO, optional
//! STARTTLS and AUTH, MAIL, RCPT, DATA, message) so that a failure can be
//! placed exactly: anything before the message's final "." cannot have been
//! accepted and is safe to retry; a 4xx or 5xx reply to the message is an
//! explicit refusal; but a connection that drops or times out after the
//! message was written leaves the outcome unknown. SMTP offers no way to ask
//! afterwards, so such an attempt is not resent: it goes to staff as
//! "delivery unknown" with its Message-ID, which the relay's log will show if
//! it was accepted (see DESIGN.md).

use std::time::{Duration, UNIX_EPOCH};

use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailParameter};
use lettre::transport::smtp::response::Response;
use lettre::Message;
use serde::{Deserialize, Serialize};

use crate::letter::file_stem;
use crate::message::{email_text, Sender};
use crate::model::{Channel, OutboxItem, Receipt};
use crate::outbox::{Adapter, BoxFuture, Check, SendError};

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpSecurity {
    /// Plain SMTP: for a relay on the local network or loopback.
    #[default]
    None,
    /// STARTTLS, required (port 587). Needs the `rustls` feature.
    StartTls,
    /// Implicit TLS (port 465). Needs the `rustls` feature.
    Tls,
}

/// Where and how to send email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `From:`, e.g. `Hale General Hospital <appointments@hale.example>`.
    pub from: String,
    pub reply_to: Option<String>,
    /// The EHLO name.
    pub hello_name: String,
    /// The right-hand side of Message-IDs: `<hale-notify.{key}@{domain}>`.
    pub message_id_domain: String,
    /// Each step of the conversation (connect, each command, the message).
    #[serde(with = "millis")]
    pub step_timeout: Duration,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl SmtpConfig {
    /// Plain SMTP to `host:port`, 30 s per step.
    pub fn plain(host: &str, port: u16, from: &str, message_id_domain: &str) -> SmtpConfig {
        SmtpConfig {
            host: host.to_string(),
            port,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            from: from.to_string(),
            reply_to: None,
            hello_name: message_id_domain.to_string(),
            message_id_domain: message_id_domain.to_string(),
            step_timeout: Duration::from_secs(30),
        }
    }
}

/// Sends [`Channel::Email`] items over SMTP.
#[derive(Debug, Clone)]
pub struct SmtpAdapter {
    config: SmtpConfig,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    sender: Sender,
}

/// An error from one step before the message was written: never delivered.
fn before_message(step: &str, e: lettre::transport::smtp::Error) -> SendError {
    let message = format!("SMTP {step}: {e}");
    if e.is_permanent() {
        SendError::permanent(message)
    } else {
        SendError::transient(message)
    }
}

/// Runs one step of the conversation before the message: on failure or
/// timeout, drops the connection and returns from the enclosing function.
macro_rules! step {
    ($timeout:expr, $conn:ident, $name:expr, $fut:expr) => {{
        let result = tokio::time::timeout($timeout, $fut).await;
        match result {
            Err(_) => {
                $conn.abort().await;
                return Err(SendError::transient(format!("SMTP {}: timed out", $name)));
            }
            Ok(Err(e)) => {
                $conn.abort().await;
                return Err(before_message($name, e));
            }
            Ok(Ok(v)) => v,
        }
    }};
}

fn reply_text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    format!("{} {}", r.code(), lines.join(" "))
}

impl SmtpAdapter {
    pub fn new(config: SmtpConfig, sender: Sender) -> Result<SmtpAdapter, String> {
        if config.security != SmtpSecurity::None && !cfg!(feature = "rustls") {
            return Err(format!(
                "SMTP security {:?} needs hale-notify's `rustls` feature",
                config.security
            ));
        }
        if config.username.is_some() != config.password.is_some() {
            return Err("SMTP username and password go together".into());
        }
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| format!("SMTP from {:?}: {e}", config.from))?;
        let reply_to = config
            .reply_to
            .as_deref()
            .map(|r| r.parse::<Mailbox>().map_err(|e| format!("SMTP reply-to {r:?}: {e}")))
            .transpose()?;
        if config.message_id_domain.trim().is_empty() || config.message_id_domain.contains(['<', '>', '@', ' ']) {
            return Err(format!("bad Message-ID domain {:?}", config.message_id_domain));
        }
        Ok(SmtpAdapter {
            config,
            from,
            reply_to,
            sender,
        })
    }

    /// The Message-ID for idempotency key `key`: `<hale-notify.{key}@{domain}>`.
    pub fn message_id(&self, key: &str) -> String {
        format!("<hale-notify.{}@{}>", file_stem(key), self.config.message_id_domain)
    }

    /// The message for `item`, dated `now_ms`.
    pub fn build_message(&self, item: &OutboxItem, now_ms: i64) -> Result<Message, SendError> {
        let to_addr = item
            .recipient
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| SendError::permanent("the patient has no email address"))?;
        let to = Mailbox::new(
            Some(item.recipient.name.trim().to_string()),
            to_addr
                .parse()
                .map_err(|e| SendError::permanent(format!("email address {to_addr:?}: {e}")))?,
        );
        let text = email_text(item, &self.sender);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(text.subject)
            .message_id(Some(self.message_id(&item.id)))
            .date(UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64))
            .header(ContentType::TEXT_PLAIN);
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        builder
            .body(text.body)
            .map_err(|e| SendError::permanent(format!("building the email: {e}")))
    }

    #[cfg(feature = "rustls")]
    fn tls(&self) -> Result<lettre::transport::smtp::client::TlsParameters, SendError> {
        lettre::transport::smtp::client::TlsParameters::new(self.config.host.clone())
            .map_err(|e| SendError::transient(format!("SMTP TLS parameters: {e}")))
    }

    async fn deliver(&self, envelope: &Envelope, bytes: &[u8]) -> Result<Response, SendError> {
        let t = self.config.step_timeout;
        let hello = ClientId::Domain(self.config.hello_name.clone());
        #[cfg(feature = "rustls")]
        let implicit_tls = match self.config.security {
            SmtpSecurity::Tls => Some(self.tls()?),
            _ => None,
        };
        #[cfg(not(feature = "rustls"))]
        let implicit_tls = None;
        let connect = AsyncSmtpConnection::connect_tokio1(
            (self.config.host.as_str(), self.config.port),
            Some(t),
            &hello,
            implicit_tls,
            None,
        );
        let mut conn = match tokio::time::timeout(t, connect).await {
            Err(_) => return Err(SendError::transient("SMTP connect: timed out")),
            Ok(Err(e)) => return Err(before_message("connect", e)),
            Ok(Ok(c)) => c,
        };
        #[cfg(feature = "rustls")]
        if self.config.security == SmtpSecurity::StartTls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(SendError::transient("SMTP server does not offer STARTTLS"));
            }
            let params = self.tls()?;
            step!(t, conn, "STARTTLS", conn.starttls(params, &hello));
        }
        if let (Some(u), Some(p)) = (&self.config.username, &self.config.password) {
            let creds = Credentials::new(u.clone(), p.clone());
            let r = tokio::time::timeout(t, conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds)).await;
            match r {
                Err(_) => {
                    conn.abort().await;
                    return Err(SendError::transient("SMTP AUTH: timed out"));
                }
                // Bad credentials are a configuration fault: retry (bounded) rather than give up on everyone.
                Ok(Err(e)) => {
                    conn.abort().await;
                    return Err(SendError::transient(format!("SMTP AUTH: {e}")));
                }
                Ok(Ok(_)) => {}
            }
        }
        let mut mail_params = Vec::new();
        let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
        let non_ascii = envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a));
        if non_ascii {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                conn.abort().await;
                return Err(SendError::permanent(
                    "the address is not ASCII and the SMTP server does not support SMTPUTF8",
                ));
            }
            mail_params.push(MailParameter::SmtpUtfEight);
        }
        let mail = Mail::new(envelope.from().cloned(), mail_params);
        step!(t, conn, "MAIL", conn.command(mail));
        for to in envelope.to() {
            let rcpt = Rcpt::new(to.clone(), vec![]);
            step!(t, conn, "RCPT", conn.command(rcpt));
        }
        step!(t, conn, "DATA", conn.command(Data));
        // The message and its final ".": from here a lost connection is ambiguous.
        let result = tokio::time::timeout(t, conn.message(bytes)).await;
        let reply = match result {
            Err(_) => {
                conn.abort().await;
                return Err(SendError::ambiguous(
                    "SMTP: no reply to the message within the timeout; it may have been accepted",
                ));
            }
            Ok(Err(e)) if e.is_permanent() => return Err(SendError::permanent(format!("SMTP message refused: {e}"))),
            Ok(Err(e)) if e.is_transient() => return Err(SendError::transient(format!("SMTP message deferred: {e}"))),
            Ok(Err(e)) => {
                conn.abort().await;
                return Err(SendError::ambiguous(format!(
                    "SMTP: the connection failed after the message was written ({e}); it may have been accepted"
                )));
            }
            Ok(Ok(r)) => r,
        };
        let _ = tokio::time::timeout(t, conn.quit()).await;
        Ok(reply)
    }

    async fn send_item(&self, item: &OutboxItem, channel: Channel, now_ms: i64) -> Result<Receipt, SendError> {
        if channel != Channel::Email {
            return Err(SendError::permanent(format!("SMTP cannot send {}", channel.code())));
        }
        let message = self.build_message(item, now_ms)?;
        let envelope = message.envelope().clone();
        let bytes = message.formatted();
        let reply = self.deliver(&envelope, &bytes).await?;
        Ok(Receipt {
            provider: "smtp".into(),
            id: Some(self.message_id(&item.id)),
            detail: format!(
                "accepted by {}:{}: {}",
                self.config.host,
                self.config.port,
                reply_text(&reply)
            ),
        })
    }
}

impl Adapter for SmtpAdapter {
    fn name(&self) -> &'static str {
        "smtp"
    }

    /// SMTP cannot be asked whether a message arrived.
    fn can_check(&self) -> bool {
        false
    }

    fn send<'a>(
        &'a self,
        item: &'a OutboxItem,
        channel: Channel,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Receipt, SendError>> {
        Box::pin(self.send_item(item, channel, now_ms))
    }

    fn check<'a>(&'a self, item: &'a OutboxItem, _now_ms: i64) -> BoxFuture<'a, Result<Check, SendError>> {
        let id = self.message_id(&item.id);
        Box::pin(async move {
            Ok(Check::Unknown(format!(
                "an earlier SMTP attempt was interrupted and SMTP cannot say whether it arrived; \
                 search the relay's log for Message-ID {id} before contacting the patient again"
            )))
        })
    }
}
