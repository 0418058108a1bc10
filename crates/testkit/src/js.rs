//! R3 streams and buckets for tests, made the way services make them: with
//! [`runtime::js::ensure_stream`] / [`runtime::js::ensure_kv`], which return
//! only once the stream answers a publish from this connection. A test's
//! first publish or put after these needs no retry.

use async_nats::jetstream::{self, kv, stream};

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
    )
    .await
}

/// Creates (or opens, unchanged) the stream `config` describes with 3
/// replicas, usable from `js`'s connection when it returns.
pub async fn r3_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> anyhow::Result<stream::Stream> {
    runtime::js::ensure_stream(
        js,
        stream::Config {
            num_replicas: 3,
            ..config
        },
        false,
    )
    .await
}
