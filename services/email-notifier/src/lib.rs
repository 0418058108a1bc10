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
mod receipts;
mod sender;
pub mod transport;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use lettre::message::Mailbox;
use protocol::email;
use protocol::names::{consumers, services, streams};
use runtime::js::{ensure_stream, retry};
use runtime::{App, CancellationToken, Settings};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use transport::{Outbox, Smtp, Transport};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Durable and scheduled email; receipts for completed payments";

/// `[email]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailSettings {
    /// The From: mailbox.
    pub from: String,
    /// Where `.eml` files go when no SMTP relay is configured.
    pub outbox_dir: PathBuf,
    /// `smtp://user:pass@host:port` (or `smtps://`); unset: the outbox.
    pub smtp_url: Option<String>,
    /// Requests with the same `idempotency_key` within this window send once.
    pub idempotency_window_s: u64,
    /// Deliveries of one mail before it is given up (`events.email.failed`).
    pub max_deliver: u32,
    /// Delays before the 2nd, 3rd, ... delivery after a transport error.
    pub backoff_ms: Vec<u64>,
    /// Mails sent at once by this instance.
    pub concurrency: usize,
    /// How far ahead `send_at` may be.
    pub max_schedule_days: u64,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            from: "Switchyard <noreply@switchyard.local>".into(),
            outbox_dir: PathBuf::from(".switchyard/outbox"),
            smtp_url: None,
            idempotency_window_s: 600,
            max_deliver: 5,
            backoff_ms: vec![1_000, 5_000, 15_000, 30_000],
            concurrency: 16,
            max_schedule_days: 366,
        }
    }
}

impl EmailSettings {
    fn backoff_after(&self, delivered: u32) -> Duration {
        runtime::worker::backoff_after(&self.backoff_ms, delivered)
    }
}

/// Shared by the endpoint, the sender and the receipts.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) js: jetstream::Context,
    pub(crate) settings: EmailSettings,
    pub(crate) transport: Arc<dyn Transport>,
}

impl Ctx {
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
    let Some(app) = App::start(services::EMAIL_NOTIFIER, settings, shutdown).await? else {
        return Ok(());
    };
    let (outbox, receipts) = ensure_assets(&app.jetstream, app.replicas(), &email).await?;
    let ctx = Arc::new(Ctx {
        js: app.jetstream.clone(),
        settings: email,
        transport,
    });
    let stop_work = CancellationToken::new();
    let sender = tokio::spawn(sender::run(
        ctx.clone(),
        outbox,
        app.maintenance(),
        stop_work.clone(),
    ));
    let receipts = tokio::spawn(receipts::run(
        ctx.clone(),
        receipts,
        app.maintenance(),
        stop_work.clone(),
    ));
    let service = accept::service(&app, ctx.clone()).start().await?;

    app.shutdown_token().cancelled().await;
    stop_work.cancel();
    let _ = sender.await;
    let _ = receipts.await;
    app.serve(vec![service]).await
}

async fn ensure_assets(
    js: &jetstream::Context,
    replicas: usize,
    settings: &EmailSettings,
) -> anyhow::Result<(consumer::PullConsumer, consumer::PullConsumer)> {
    let window = Duration::from_secs(settings.idempotency_window_s.max(120));
    let emails = ensure_stream(
        js,
        stream::Config {
            name: streams::EMAILS.into(),
            description: Some("Accepted mail: ready (email.outbox) or scheduled".into()),
            subjects: email::subjects::ALL
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: window,
            allow_message_schedules: true,
            max_age: Duration::from_secs((settings.max_schedule_days + 7) * 24 * 3600),
            ..Default::default()
        },
        true,
    )
    .await?;
    let events = ensure_stream(
        js,
        runtime::js::events_stream_config(replicas, Duration::from_secs(120)),
        false,
    )
    .await?;
    let sender = consumer::pull::Config {
        durable_name: Some(consumers::EMAIL_SENDER.into()),
        description: Some("Sends mail from email.outbox".into()),
        filter_subject: email::subjects::OUTBOX.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: i64::from(settings.max_deliver),
        ..Default::default()
    };
    let outbox = retry(
        "creating the email-sender consumer",
        Duration::from_secs(30),
        || emails.create_consumer(sender.clone()),
    )
    .await?;
    let receipts = consumer::pull::Config {
        durable_name: Some(consumers::EMAIL_RECEIPTS.into()),
        description: Some("Receipts for completed payments".into()),
        filter_subject: protocol::subjects::EVENT_PAYMENT_COMPLETED.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: 10,
        ..Default::default()
    };
    let receipts = retry(
        "creating the email-receipts consumer",
        Duration::from_secs(30),
        || events.create_consumer(receipts.clone()),
    )
    .await?;
    Ok((outbox, receipts))
}
