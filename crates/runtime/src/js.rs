//! JetStream helpers every service uses the same way: create-or-update
//! streams and buckets at start-up, retry infrastructure calls through a
//! leader election, and publish durably with a `Nats-Msg-Id`.

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, kv, stream};
use bytes::Bytes;
use protocol::names::headers;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Creates the stream, or updates it to `config` when `update` is set and
/// it exists (an update the server refuses is logged and the existing
/// stream kept). Safe to call from many instances at once.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    update: bool,
) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    retry(&format!("ensuring stream {name}"), Duration::from_secs(30), || {
        let config = config.clone();
        let name = name.clone();
        async move {
            match js.get_stream(&name).await {
                Ok(existing) => {
                    if update && let Err(err) = js.update_stream(config).await {
                        tracing::warn!(stream = %name, error = %err, "keeping the existing stream config");
                    }
                    Ok(existing)
                }
                Err(lookup_err) => match js.create_stream(config).await {
                    Ok(created) => {
                        tracing::info!(stream = %name, "stream ready (created)");
                        Ok(created)
                    }
                    // Created by another instance in between, or really unreachable.
                    Err(create_err) => js.get_stream(&name).await.map_err(|_| {
                        anyhow::anyhow!("stream {name}: lookup failed ({lookup_err}), create failed ({create_err})")
                    }),
                },
            }
        }
    })
    .await
}

/// `EVENTS`: everything on `events.>`, kept a week. Every publisher of
/// events ensures it exists (without changing an existing one).
pub fn events_stream_config(replicas: usize, duplicate_window: Duration) -> stream::Config {
    stream::Config {
        name: protocol::names::streams::EVENTS.into(),
        description: Some("Every event published on events.>".into()),
        subjects: vec![protocol::subjects::EVENTS_ALL.into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    }
}

/// Opens a KV bucket, creating it with `config` when missing.
pub async fn ensure_kv(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    let bucket = config.bucket.clone();
    retry(
        &format!("ensuring KV bucket {bucket}"),
        Duration::from_secs(30),
        || {
            let config = config.clone();
            let bucket = bucket.clone();
            async move {
                if let Ok(store) = js.get_key_value(&bucket).await {
                    return Ok(store);
                }
                match js.create_key_value(config).await {
                    Ok(store) => {
                        tracing::debug!(%bucket, "KV bucket ready (created or already there)");
                        Ok(store)
                    }
                    Err(err) => js
                        .get_key_value(&bucket)
                        .await
                        .with_context(|| format!("creating KV bucket {bucket}: {err}")),
                }
            }
        },
    )
    .await
}

/// Runs `op` until it succeeds or `budget` is spent, backing off from 50 ms
/// to 1 s. For calls that fail while a stream leader is being elected.
pub async fn retry<T, E, F, Fut>(what: &str, budget: Duration, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + budget;
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match op().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(what, attempts, "succeeded after retrying");
                }
                return Ok(value);
            }
            Err(err) if Instant::now() + delay >= deadline => {
                anyhow::bail!("{what}: still failing after {attempts} attempts: {err}")
            }
            Err(err) => {
                tracing::debug!(what, attempts, error = %err, "retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Publishes to a stream with `Nats-Msg-Id: msg_id` and waits for the
/// stream's ack, retrying with the same id (so a retry after a lost ack is
/// dropped as a duplicate by the server) until acked or `budget` is spent.
pub async fn publish_durable(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    extra_headers: Option<&HeaderMap>,
    body: Bytes,
    budget: Duration,
) -> anyhow::Result<jetstream::publish::PublishAck> {
    retry(&format!("publishing {msg_id} to {subject}"), budget, || {
        let mut h = extra_headers.cloned().unwrap_or_default();
        h.insert(headers::MSG_ID, msg_id);
        let body = body.clone();
        async move {
            let ack: PublishAckFuture = js
                .publish_with_headers(subject.to_owned(), h, body)
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        }
    })
    .await
}
