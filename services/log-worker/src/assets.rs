//! The stream, consumer and bucket the log-worker needs, created or updated
//! idempotently at start-up.

use crate::LogStoreSettings;
use async_nats::jetstream::{self, consumer, kv, stream};
use protocol::names::{buckets, consumers, streams};
use protocol::subjects;
use runtime::js::{ensure_consumer, ensure_kv, ensure_stream};
use runtime::settings::AssetMode;
use std::time::Duration;

pub(crate) struct Assets {
    pub(crate) stream: stream::Stream,
    pub(crate) consumer: consumer::PullConsumer,
    pub(crate) kv: kv::Store,
}

pub(crate) async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
    mode: AssetMode,
    settings: &LogStoreSettings,
) -> anyhow::Result<Assets> {
    let stream = ensure_stream(
        js,
        stream::Config {
            name: streams::LOGS.into(),
            description: Some("Structured logs of every service".into()),
            subjects: vec![subjects::LOGS_ALL.into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(settings.max_age_s),
            max_bytes: settings.max_bytes,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        },
        true,
        mode,
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: streams::LOGS_DLQ.into(),
            description: Some("Log records that could not be written, with the reason".into()),
            subjects: vec![subjects::LOGS_DLQ.into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: settings.max_bytes,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
        true,
        mode,
    )
    .await?;
    // A fixed ack wait and no server backoff list: redelivery happens on
    // purpose only (the worker naks with a delay; a batch being written gets
    // progress acks), and max_deliver bounds it.
    let config = consumer::pull::Config {
        durable_name: Some(consumers::LOG_WORKERS.into()),
        description: Some("Shared by every log-worker".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_millis(settings.ack_wait_ms.max(500)),
        max_deliver: i64::from(settings.max_deliver),
        max_ack_pending: 50_000,
        ..Default::default()
    };
    let consumer = ensure_consumer(&stream, config.clone(), mode).await?;
    let kv = ensure_kv(
        js,
        kv::Config {
            bucket: buckets::LOG_STATS.into(),
            description: "Cluster-wide log-worker counters".into(),
            history: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        mode,
    )
    .await?;
    Ok(Assets {
        stream,
        consumer,
        kv,
    })
}
