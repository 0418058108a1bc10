//! R3 buckets for tests, made the way services make them: with
//! [`runtime::js::ensure_kv`], which returns only once the bucket answers a
//! put from this connection, so a test's first put needs no retry. (For a
//! stream, call [`runtime::js::ensure_stream`] itself.)

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt as _;
use std::time::Duration;

/// Creates (or opens) KV bucket `bucket` with 3 replicas, usable from `js`'s
/// connection when it returns.
pub async fn r3_kv(js: &jetstream::Context, bucket: &str) -> anyhow::Result<kv::Store> {
    runtime::js::ensure_kv(
        js,
        kv::Config {
            bucket: bucket.to_owned(),
            num_replicas: 3,
            ..Default::default()
        },
        runtime::settings::AssetMode::Create,
    )
    .await
}

/// How many messages stream `stream` holds now.
#[allow(
    clippy::expect_used,
    reason = "a test harness fails the test by panicking"
)]
pub async fn message_count(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("opening the stream")
        .info()
        .await
        .expect("reading the stream's info")
        .state
        .messages
}

#[allow(
    clippy::expect_used,
    reason = "a test harness fails the test by panicking"
)]
/// Every message on `subject_filter` in `stream`, oldest first. Retries
/// through leader elections, as any client must.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    subject_filter: &str,
) -> Vec<jetstream::Message> {
    let budget = Duration::from_secs(60);
    let consumer = runtime::js::retry("opening a reader", budget, || async {
        let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
        stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject_filter.into(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("opening a reader on the stream");
    let mut out = Vec::new();
    let mut messages = consumer.messages().await.expect("reading the stream");
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        out.push(m);
        if pending == 0 {
            break;
        }
    }
    out
}
