//! The email notifier.
//!
//! ```text
//! services.notification.email-send (queue group email-notifier; publish or request)
//!   validate ─▶ JetStream publish to EMAILS (Nats-Msg-Id: id or idem.<key>) ─▶ reply {accepted, id, scheduled_for}
//!     now:    email.outbox
//!     later:  email.scheduled.<id> with Nats-Schedule: @at <time> → the server moves it to email.outbox then
//! durable consumer email-sender on email.outbox (fixed ack wait, progress acks while a send runs)
//!   sent before? (KV email-sent, read from its stream leader) ─ yes ─▶ events.email.sent, ack
//!   no ─▶ transport (SMTP or .eml outbox) ─▶ record in email-sent ─▶ events.email.sent ─▶ double ack
//!     transport error ─▶ nak with backoff … last delivery ─▶ events.email.failed, term
//!     event not published ─▶ nak with backoff; the redelivery finds the record and only publishes
//! durable consumer email-receipts on EVENTS events.payment.completed ─▶ a receipt job in email.outbox
//! ```
//!
//! **Each mail once, where SMTP allows it.** SMTP has no idempotency key, so
//! a mail id is sent at most once except when the relay accepted it (its
//! 250) and the notifier could not record that: it died in between, or the
//! record could not be written to JetStream within `email.publish_budget_ms`.
//! Then the mail is redelivered and sent again, with the same `Message-ID`
//! (`<id@switchyard>`), so the receiver can drop the copy. The same holds for
//! a send that is cut off after the relay took the data: a relay that does
//! not answer within `email.smtp_timeout_ms`, or a stop whose shutdown grace
//! ends mid-send.

mod accept;
mod assets;
mod receipts;
mod sender;
mod settings;
pub mod transport;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use lettre::message::Mailbox;
use protocol::names::{queue_groups, services};
use protocol::subjects;
use runtime::{App, CancellationToken, Settings};
pub use settings::EmailSettings;
use std::sync::Arc;
use std::time::Duration;
use transport::{Outbox, Smtp, Transport};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Durable and scheduled email; receipts for completed payments";

/// Receipts queued at once by this instance.
const RECEIPT_CONCURRENCY: usize = 8;

/// The notifier's state, shared by the endpoint, the sender and the receipts.
#[derive(Debug)]
pub(crate) struct Notifier {
    pub(crate) js: jetstream::Context,
    pub(crate) settings: EmailSettings,
    pub(crate) transport: Arc<dyn Transport>,
    /// Bucket `email-sent`: the record of mail the relay accepted.
    pub(crate) sent: kv::Store,
    /// This instance's id, kept in the records it writes.
    pub(crate) instance: String,
}

impl Notifier {
    /// How long JetStream publishes are retried.
    pub(crate) fn budget(&self) -> Duration {
        self.settings.publish_budget()
    }
}

/// Runs the notifier with the transport the settings choose.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let email: EmailSettings = settings.section("email")?;
    let from: Mailbox = email
        .from
        .parse()
        .with_context(|| format!("email.from {:?} is not a mailbox", email.from))?;
    let transport: Arc<dyn Transport> = match &email.smtp_url {
        Some(url) => Arc::new(Smtp::new(url, from, email.smtp_timeout())?),
        None => Arc::new(
            Outbox::new(email.outbox_dir.clone(), from)
                .with_context(|| format!("creating the outbox {}", email.outbox_dir.display()))?,
        ),
    };
    run_with_transport(settings, shutdown, transport).await
}

/// Runs the notifier with any transport.
pub async fn run_with_transport(
    settings: Settings,
    shutdown: CancellationToken,
    transport: Arc<dyn Transport>,
) -> anyhow::Result<()> {
    let email: EmailSettings = settings.section("email")?;
    email.check()?;
    let grace = settings.service.shutdown_grace();
    if email.smtp_url.is_some() && email.smtp_timeout() > grace {
        tracing::info!(
            smtp_timeout = ?email.smtp_timeout(),
            ?grace,
            "email.smtp_timeout_ms is longer than service.shutdown_grace_ms: a stop can cut off \
             a send the relay then accepts, and the mail is sent again (same Message-ID)"
        );
    }
    let app = App::connect(services::EMAIL_NOTIFIER, settings, shutdown).await?;
    let assets = assets::ensure(&app.jetstream, app.replicas(), app.assets(), &email).await?;
    let concurrency = email.concurrency;
    let state = Arc::new(Notifier {
        js: app.jetstream.clone(),
        settings: email,
        transport,
        sent: assets.sent,
        instance: app.id().to_owned(),
    });
    app.service(VERSION, DESCRIPTION)
        .with_state(state)
        .queue_group(queue_groups::EMAIL_NOTIFIER)
        // A published (fire-and-forget) send that is refused says why here.
        .rejections_to(subjects::EVENT_EMAIL_REJECTED)
        .endpoint("email-send", subjects::EMAIL_SEND, accept::accept)
        .pull_worker("email-sender", assets.outbox, concurrency, sender::send)
        .pull_worker(
            "email-receipts",
            assets.receipts,
            RECEIPT_CONCURRENCY,
            receipts::receipt,
        )
        .serve()
        .await
}
