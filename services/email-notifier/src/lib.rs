//! The email notifier.
//!
//! ```text
//! services.notification.email-send (queue group email-notifier; publish or request)
//!   validate ─▶ JetStream publish to EMAILS (Nats-Msg-Id: id or idem.<key>) ─▶ reply {accepted, id, scheduled_for}
//!     now:    email.outbox
//!     later:  email.scheduled.<id> with Nats-Schedule: @at <time> → the server moves it to email.outbox then
//! durable consumer email-sender on email.outbox ─▶ transport (SMTP or .eml outbox) ─▶ events.email.sent, ack
//!     transport error ─▶ nak with backoff … last delivery ─▶ events.email.failed, term
//! durable consumer email-receipts on EVENTS events.payment.completed ─▶ a receipt job in email.outbox
//! ```

mod accept;
mod assets;
mod receipts;
mod sender;
mod settings;
pub mod transport;

use anyhow::Context as _;
use async_nats::jetstream;
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
}

impl Notifier {
    /// How long JetStream publishes are retried.
    pub(crate) fn budget(&self) -> Duration {
        Duration::from_secs(10)
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
        Some(url) => Arc::new(Smtp::new(url, from)?),
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
    anyhow::ensure!(
        email.max_deliver >= 1,
        "email.max_deliver must be at least 1"
    );
    let app = App::connect(services::EMAIL_NOTIFIER, settings, shutdown).await?;
    let assets = assets::ensure(&app.jetstream, app.replicas(), &email).await?;
    let concurrency = email.concurrency;
    let state = Arc::new(Notifier {
        js: app.jetstream.clone(),
        settings: email,
        transport,
    });
    app.service(VERSION, DESCRIPTION)
        .with_state(state)
        .queue_group(queue_groups::EMAIL_NOTIFIER)
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
