//! The stream and consumers the notifier needs, created or updated
//! idempotently at start-up.

use crate::EmailSettings;
use async_nats::jetstream::{self, consumer, stream};
use protocol::email;
use protocol::names::{consumers, streams};
use runtime::js::{ensure_stream, retry};
use std::time::Duration;

/// The consumers of `email.outbox` (the sender) and of completed payments
/// (the receipts).
pub(crate) struct Assets {
    pub(crate) outbox: consumer::PullConsumer,
    pub(crate) receipts: consumer::PullConsumer,
}

pub(crate) async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
    settings: &EmailSettings,
) -> anyhow::Result<Assets> {
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
    Ok(Assets { outbox, receipts })
}
