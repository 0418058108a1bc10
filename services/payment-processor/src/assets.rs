//! The streams, bucket and consumer the processor needs, created or updated
//! idempotently at start-up (every instance does it; they agree).

use crate::PaymentSettings;
use async_nats::jetstream::{self, consumer, kv, stream};
use protocol::names::{buckets, consumers, streams};
use protocol::subjects;
use runtime::js::{ensure_consumer, ensure_kv, ensure_stream};
use runtime::settings::AssetMode;
use std::time::Duration;

pub(crate) struct Assets {
    pub(crate) payments: stream::Stream,
    pub(crate) consumer: consumer::PullConsumer,
    /// MAX_DELIVERIES advisories of `consumer`, kept in a stream.
    pub(crate) advisories: consumer::PullConsumer,
    pub(crate) kv: kv::Store,
}

pub(crate) async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
    mode: AssetMode,
    settings: &PaymentSettings,
) -> anyhow::Result<Assets> {
    let window = Duration::from_secs(settings.duplicate_window_s.max(120));
    let payments = ensure_stream(
        js,
        stream::Config {
            name: streams::PAYMENTS.into(),
            description: Some("Payments to process (work queue)".into()),
            subjects: vec![subjects::PAYMENT_PROCESS.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: window,
            ..Default::default()
        },
        true,
        mode,
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: streams::PAYMENTS_DLQ.into(),
            description: Some("Payments that could not be processed, with the reason".into()),
            subjects: vec![subjects::PAYMENT_DLQ.into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: window,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        },
        true,
        mode,
    )
    .await?;
    // The server publishes a MAX_DELIVERIES advisory whether or not anyone
    // listens; this stream keeps it until a processor has handled it.
    let advisories = ensure_stream(
        js,
        stream::Config {
            name: streams::PAYMENTS_ADVISORIES.into(),
            description: Some(
                "MAX_DELIVERIES advisories of the payment-processor consumer (work queue)".into(),
            ),
            subjects: vec![subjects::max_deliveries_advisory(
                streams::PAYMENTS,
                consumers::PAYMENT_PROCESSOR,
            )],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        },
        true,
        mode,
    )
    .await?;
    // Shared with other publishers of events: created if missing, not changed.
    ensure_stream(
        js,
        runtime::js::events_stream_config(replicas, window),
        false,
        mode,
    )
    .await?;
    let kv = ensure_kv(
        js,
        kv::Config {
            bucket: buckets::PAYMENTS.into(),
            description: "Payment status by payment_id".into(),
            history: 5,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        mode,
    )
    .await?;
    // A fixed ack wait and no server backoff list: redelivery happens only
    // when a process stops sending progress acks for that long; retries
    // after a failed charge are spaced by the processor's NAK delays.
    let config = consumer::pull::Config {
        durable_name: Some(consumers::PAYMENT_PROCESSOR.into()),
        description: Some("Shared by every payment-processor instance".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_millis(settings.ack_wait_ms),
        max_deliver: i64::from(settings.max_deliver),
        max_ack_pending: 10_000,
        ..Default::default()
    };
    let consumer = ensure_consumer(&payments, config.clone(), mode).await?;
    let config = consumer::pull::Config {
        durable_name: Some(consumers::PAYMENT_ADVISORIES.into()),
        description: Some("MAX_DELIVERIES advisories, shared by every payment-processor".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_millis(settings.ack_wait_ms),
        ..Default::default()
    };
    let advisories = ensure_consumer(&advisories, config.clone(), mode).await?;
    Ok(Assets {
        payments,
        consumer,
        advisories,
        kv,
    })
}
