//! Where mail goes: an SMTP relay (lettre) when configured, else an outbox
//! directory of `.eml` files (RFC 5322, readable by any mail client).

use futures::future::BoxFuture;
use lettre::message::{Mailbox, Message, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use protocol::email::EmailJob;
use std::path::PathBuf;
use std::time::Duration;

/// Delivers one mail. Errors are transient: the mail is tried again.
pub trait Transport: Send + Sync + std::fmt::Debug {
    fn send<'a>(&'a self, mail: &'a EmailJob) -> BoxFuture<'a, Result<(), String>>;
}

/// Builds the RFC 5322 message for a job. Its `Message-ID` is
/// [`protocol::email::message_id`] of the job's id: the same for every
/// delivery of the mail, so a second copy (see the crate docs for when one
/// can happen) can be recognised by the receiver.
pub fn message(from: &Mailbox, job: &EmailJob) -> Result<Message, String> {
    let to: Mailbox = job
        .to
        .parse()
        .map_err(|e| format!("bad recipient {:?}: {e}", job.to))?;
    Message::builder()
        .message_id(Some(protocol::email::message_id(&job.id)))
        .from(from.clone())
        .to(to)
        .subject(job.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(job.body.clone())
        .map_err(|e| format!("building the message: {e}"))
}

/// `<dir>/<id>.eml`, written atomically (temp file, then rename). A mail
/// whose file exists is not written again, so a redelivery sends nothing twice.
#[derive(Debug)]
pub struct Outbox {
    pub dir: PathBuf,
    pub from: Mailbox,
}

impl Outbox {
    pub fn new(dir: PathBuf, from: Mailbox) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, from })
    }
}

impl Transport for Outbox {
    fn send<'a>(&'a self, mail: &'a EmailJob) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let path = self.dir.join(format!("{}.eml", mail.id));
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Ok(());
            }
            let bytes = message(&self.from, mail)?.formatted();
            let temp = self.dir.join(format!(".{}.eml.tmp", mail.id));
            tokio::fs::write(&temp, &bytes)
                .await
                .map_err(|e| format!("writing {}: {e}", temp.display()))?;
            tokio::fs::rename(&temp, &path)
                .await
                .map_err(|e| format!("moving {} into place: {e}", path.display()))
        })
    }
}

/// An SMTP relay from a URL such as `smtp://user:pass@relay:587?tls=required`.
/// A new connection per mail (no pool), each send bounded by `timeout` from
/// connect to the relay's reply to the mail's data.
#[derive(Debug)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl Smtp {
    pub fn new(url: &str, from: Mailbox, timeout: Duration) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("email.smtp_url is not a usable SMTP URL: {e}"))?
            // lettre bounds the connect with it; the whole send is bounded below.
            .timeout(Some(timeout))
            .build();
        Ok(Self {
            transport,
            from,
            timeout,
        })
    }
}

impl Transport for Smtp {
    fn send<'a>(&'a self, mail: &'a EmailJob) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let message = message(&self.from, mail)?;
            match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
                Ok(sent) => sent.map(|_| ()).map_err(|e| format!("SMTP: {e}")),
                Err(_) => Err(format!(
                    "SMTP: no answer from the relay within {:?}",
                    self.timeout
                )),
            }
        })
    }
}
